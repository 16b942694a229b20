"""Motion evidence at fragment boundaries: which fragment leaving a crossing continues which one entering it.

Appearance alone fails where the identity network cannot tell animals apart (short clips, tiny
crops), yet most crossings are short and clean: an animal that enters a crossing at speed leaves it
where its path predicts. At every *boundary* (a connected group of crossing blobs, or a split or
merge of individual blobs) the fragments that enter are matched one to one to those that leave,
maximising the joint log-likelihood of

- **motion**: each entering fragment's constant-velocity path, extrapolated over the gap, against
  where the leaving one appears (and the reverse), under the prediction error this video's own
  animals show over that many frames (measured on individual fragments, so it adapts to the
  species, frame rate and resolution);
- **appearance**: the chance that the two fragments' images show the same animal, from their
  smoothed vote shares (bounded, so weak votes barely count and strong ones can veto).

A match is *sure* when every alternative matching that breaks it is at least ``MIN_LINK_ODDS``
times less likely. Sure links chain fragments into *tracklets*; assignment then pools the votes of
a tracklet, so identities hold wherever either motion or appearance is sure. Pure arrays in and out.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import linear_sum_assignment

from services.assembler.fragments import Fragment
from shoal.blobs import BlobTable

#: a link is kept when breaking it costs at least this likelihood ratio (99:1)
MIN_LINK_ODDS = 99.0
#: frames of a fragment's end (or start) whose mean velocity is extrapolated
VELOCITY_FRAMES = 4
#: longest lag at which the prediction error is measured on individual fragments
MAX_MEASURED_LAG = 30
#: Student-t degrees of freedom of the motion error: heavier tails than a Gaussian, because animals
#: turn and stop inside crossings more than they do alone
MOTION_DOF = 3.0
#: in a boundary where fewer fragments leave than enter (or more), a fragment may have no
#: continuation there at all (lost in the dark, debris): a pair must then also beat a miss of this
#: many error scales
UNMATCHED_SIGMAS = 5.0
_IMPOSSIBLE = -1e9


@dataclass
class Boundary:
    """Fragments entering and leaving one crossing (or split, or merge)."""

    entering: np.ndarray  # int64 fragment indices
    leaving: np.ndarray


@dataclass
class Links:
    """Sure links between fragments, and what the motion model learnt from the video."""

    next_fragment: np.ndarray  # int64 [k]: the fragment that continues fragment i, -1 if none is sure
    log_odds: np.ndarray  # float64 [k]: how sure that link is (natural log of the likelihood ratio)
    n_boundaries: int
    n_candidates: int  # entering fragments that had somewhere to go
    sigma: np.ndarray  # float64 [MAX_MEASURED_LAG + 1]: prediction error scale (px) per lag

    @property
    def n_links(self) -> int:
        return int(np.sum(self.next_fragment >= 0))


def boundaries(fragments: list[Fragment], blob_fragment: np.ndarray, links: np.ndarray) -> list[Boundary]:
    """Group fragment ends and starts that the overlap graph joins through crossing blobs.

    Every individual fragment has an end port and a start port; a crossing fragment is one node.
    Overlap links between blobs of different fragments join ports and nodes; each connected group
    that holds at least one end and one start is a boundary.
    """
    k = len(fragments)
    if k == 0 or len(links) == 0:
        return []
    individual = np.array([f.is_individual for f in fragments], bool)
    parent = np.arange(2 * k)  # node 2i: end of i (or the crossing i), node 2i + 1: start of i

    def find(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    src, dst = blob_fragment[links[:, 0]], blob_fragment[links[:, 1]]
    between = src != dst
    for a, b in zip(src[between], dst[between], strict=True):
        out_port = 2 * a
        in_port = 2 * b + 1 if individual[b] else 2 * b
        ra, rb = find(int(out_port)), find(int(in_port))
        if ra != rb:
            parent[ra] = rb
    for i in np.flatnonzero(~individual):  # a crossing's start and end are one node
        ra, rb = find(2 * int(i)), find(2 * int(i) + 1)
        if ra != rb:
            parent[ra] = rb
    touched = np.zeros(2 * k, bool)
    touched[2 * src[between]] = True
    touched[np.where(individual[dst[between]], 2 * dst[between] + 1, 2 * dst[between])] = True
    groups: dict[int, tuple[list[int], list[int]]] = {}
    for i in np.flatnonzero(individual):
        if touched[2 * i]:
            groups.setdefault(find(2 * int(i)), ([], []))[0].append(int(i))
        if touched[2 * i + 1]:
            groups.setdefault(find(2 * int(i) + 1), ([], []))[1].append(int(i))
    return [Boundary(np.array(e, np.int64), np.array(s, np.int64)) for e, s in groups.values() if e and s]


def _end_state(fragment: Fragment, table: BlobTable, at_start: bool) -> tuple[np.ndarray, np.ndarray]:
    """Position and velocity (px/frame, pointing forward in time) at a fragment's start or end."""
    rows = fragment.rows[:VELOCITY_FRAMES + 1] if at_start else fragment.rows[-VELOCITY_FRAMES - 1:]
    points = table.centroid[rows].astype(np.float64)
    velocity = (points[-1] - points[0]) / (len(points) - 1) if len(points) > 1 else np.zeros(2)
    return (points[0] if at_start else points[-1]), velocity


def prediction_error_scale(fragments: list[Fragment], table: BlobTable) -> np.ndarray:
    """Scale σ(lag) of the constant-velocity prediction error, lags 0..MAX_MEASURED_LAG (px).

    Measured inside individual fragments: the velocity of ``VELOCITY_FRAMES`` frames is extrapolated
    ``lag`` frames ahead and compared with where the animal really is. σ is the median error over
    √(2 ln 2) (the median of a 2-D Gaussian error's length is 1.18 σ); lags longer than any
    fragment grow linearly from the last measured ones.
    """
    sigma = np.full(MAX_MEASURED_LAG + 1, np.nan)
    tracks = [table.centroid[f.rows].astype(np.float64) for f in fragments
              if f.is_individual and f.n_images > VELOCITY_FRAMES + 1]
    for lag in range(1, MAX_MEASURED_LAG + 1):
        errors = []
        for p in tracks:
            if len(p) <= VELOCITY_FRAMES + lag:
                continue
            v = (p[VELOCITY_FRAMES:-lag] - p[:-lag - VELOCITY_FRAMES]) / VELOCITY_FRAMES
            predicted = p[VELOCITY_FRAMES:-lag] + lag * v
            errors.append(np.linalg.norm(predicted - p[VELOCITY_FRAMES + lag:], axis=1))
        errors = np.concatenate(errors) if errors else np.zeros(0)
        if len(errors) >= 20:
            sigma[lag] = np.median(errors) / np.sqrt(2 * np.log(2))
    measured = np.flatnonzero(np.isfinite(sigma))
    if len(measured) == 0:
        return np.full(MAX_MEASURED_LAG + 1, np.inf)  # no motion seen: motion evidence is void
    sigma = np.fmax.accumulate(np.where(np.isfinite(sigma), sigma, 0.0))  # error never shrinks with lag
    last = measured[-1]
    slope = sigma[last] / last
    sigma[last + 1:] = sigma[last] + slope * (np.arange(last + 1, MAX_MEASURED_LAG + 1) - last)
    sigma[0] = sigma[1]
    return np.maximum(sigma, 0.5)  # sub-pixel centroids are no more precise than that


def _sigma_at(sigma: np.ndarray, lag: np.ndarray) -> np.ndarray:
    lag = np.asarray(lag, np.int64)
    top = len(sigma) - 1
    slope = (sigma[top] - sigma[top - 1]) if top > 1 else sigma[top]
    return np.where(lag <= top, sigma[np.clip(lag, 0, top)], sigma[top] + slope * (lag - top))


def _motion_log_likelihood(d: np.ndarray, s: np.ndarray) -> np.ndarray:
    """2-D Student-t log density of a prediction error of length d at scale s (up to a constant)."""
    nu = MOTION_DOF
    return -2.0 * np.log(s) - (nu + 2) / 2 * np.log1p((d / s) ** 2 / nu)


def appearance_log_agreement(votes: np.ndarray) -> np.ndarray:
    """log P(same animal) for every pair of fragments from their vote counts: float [k, k].

    Each fragment's vote shares are smoothed by one vote per identity (Laplace), so a fragment with
    a handful of noisy votes barely constrains, and one with many unanimous votes vetoes a link to
    a fragment that votes unanimously for another identity. Images of one fragment are correlated,
    so votes count at most ``sqrt(n)`` strong (a fragment's images are not independent draws).
    """
    votes = np.asarray(votes, np.float64)
    n = votes.sum(axis=1, keepdims=True)
    effective = votes / np.maximum(n, 1) * np.sqrt(n)
    share = (effective + 1.0) / (effective.sum(axis=1, keepdims=True) + votes.shape[1])
    return np.log(np.clip(share @ share.T, 1e-12, None)) + np.log(votes.shape[1])


def link_fragments(
    fragments: list[Fragment],
    blob_fragment: np.ndarray,
    links: np.ndarray,
    table: BlobTable,
    votes: np.ndarray | None = None,
) -> Links:
    """Sure fragment-to-fragment links at every boundary (motion × appearance, solved per boundary).

    ``votes``: int [k, N] appearance votes per fragment (rows of crossings are ignored); None for
    motion alone.
    """
    k = len(fragments)
    sigma = prediction_error_scale(fragments, table)
    next_fragment = np.full(k, -1, np.int64)
    log_odds = np.zeros(k)
    found = boundaries(fragments, blob_fragment, links)
    agreement = appearance_log_agreement(votes) if votes is not None and k else None
    starts = np.array([f.start_frame for f in fragments])
    ends = np.array([f.end_frame for f in fragments])
    min_log_odds = np.log(MIN_LINK_ODDS)
    n_candidates = 0
    for boundary in found:
        entering, leaving = boundary.entering, boundary.leaving
        score, miss = _pair_scores(fragments, table, entering, leaving, sigma, starts, ends)
        if agreement is not None:
            score = score + agreement[np.ix_(entering, leaving)]
        score[score <= _IMPOSSIBLE / 2] = _IMPOSSIBLE
        n_candidates += int(np.sum((score > _IMPOSSIBLE).any(axis=1)))
        balanced = len(entering) == len(leaving)
        for e, x, odds in _sure_matches(score, None if balanced else miss, min_log_odds):
            next_fragment[entering[e]] = leaving[x]
            log_odds[entering[e]] = odds
    return Links(next_fragment, log_odds, len(found), n_candidates, sigma)


def _pair_scores(fragments, table, entering, leaving, sigma, starts, ends) -> np.ndarray:
    """Motion log-likelihood of every (entering, leaving) pair; impossible where time runs backwards."""
    end_pos, end_vel = zip(*(_end_state(fragments[i], table, False) for i in entering), strict=True)
    start_pos, start_vel = zip(*(_end_state(fragments[j], table, True) for j in leaving), strict=True)
    end_pos, end_vel = np.array(end_pos), np.array(end_vel)
    start_pos, start_vel = np.array(start_pos), np.array(start_vel)
    lag = starts[leaving][None, :] - (ends[entering][:, None] - 1)
    forward = end_pos[:, None] + end_vel[:, None] * lag[..., None] - start_pos[None]
    backward = start_pos[None] - start_vel[None] * lag[..., None] - end_pos[:, None]
    d = 0.5 * (np.linalg.norm(forward, axis=2) + np.linalg.norm(backward, axis=2))
    scale = _sigma_at(sigma, np.maximum(lag, 1))
    score = np.where(lag >= 1, _motion_log_likelihood(d, scale), _IMPOSSIBLE)
    return score, _motion_log_likelihood(UNMATCHED_SIGMAS * scale, scale)


def _sure_matches(score: np.ndarray, miss: np.ndarray | None, min_log_odds: float) -> list[tuple[int, int, float]]:
    """Pairs of the best one-to-one matching that beat every matching without them by ≥ min_log_odds.

    ``miss``: per pair, the log-likelihood of the entering fragment having no continuation here
    (None in a balanced boundary, where every animal that enters must leave).
    """
    if score.size == 0:
        return []
    rows, cols = linear_sum_assignment(score, maximize=True)
    feasible = score[rows, cols] > _IMPOSSIBLE
    best = score[rows, cols][feasible].sum()
    sure = []
    for r, c in zip(rows[feasible], cols[feasible], strict=True):
        without = score.copy()
        without[r, c] = _IMPOSSIBLE
        r2, c2 = linear_sum_assignment(without, maximize=True)
        kept = without[r2, c2] > _IMPOSSIBLE
        # an alternative that must leave one more fragment unmatched is no alternative where every
        # animal that enters must leave; elsewhere ``miss`` weighs that possibility
        odds = best - without[r2, c2][kept].sum() if kept.sum() == feasible.sum() else np.inf
        if miss is not None:
            odds = min(odds, score[r, c] - miss[r, c])
        if odds >= min_log_odds:
            sure.append((int(r), int(c), float(odds)))
    return sure


def tracklets(next_fragment: np.ndarray) -> np.ndarray:
    """Tracklet index of every fragment: chains of sure links, numbered by their first fragment."""
    k = len(next_fragment)
    has_previous = np.zeros(k, bool)
    has_previous[next_fragment[next_fragment >= 0]] = True
    label = np.full(k, -1, np.int64)
    count = 0
    for head in np.flatnonzero(~has_previous):
        i = int(head)
        while i >= 0 and label[i] < 0:
            label[i] = count
            i = int(next_fragment[i])
        count += 1
    for i in np.flatnonzero(label < 0):  # cycles cannot happen (links go forward in time); be safe
        label[i] = count
        count += 1
    return label
