"""Identity assignment of fragments from their P1 and their coexistence (method notes §5.1, §5.7).

P2 of a fragment multiplies its own P1 by how unlikely every coexisting fragment is to be each
identity, ``P2 ∝ P1 ⊙ Π_g (1 − P1_g)``: an identity held by a coexisting fragment is ruled out.
Fragments are then assigned greedily, the one whose P2 is most certain first; each assignment
turns that fragment's P1 into a one-hot vector and updates the P2 of its coexisting neighbours, so
certain fragments constrain uncertain ones (Romero-Ferrero et al. 2019).
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass

import numpy as np

from services.assembler.fragments import Fragment
from shoal.votes import p1_from_votes

#: Two identities whose P2 differ by less than this (relative) are a tie: the fragment stays unassigned.
TIE_TOLERANCE = 1e-9


@dataclass
class Assignment:
    identity: np.ndarray  # int64 [k], -1 = unassigned (crossing, ambiguous, or no identity left)
    p2: np.ndarray  # float64 [k, N], P2 at the moment each fragment was decided (zeros if never)


def _log_complement(p1: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore"):
        return np.log(np.clip(1.0 - p1, 0.0, 1.0))


def _normalise_log(log_p: np.ndarray) -> np.ndarray:
    log_p = np.atleast_2d(log_p)
    top = log_p.max(axis=1, keepdims=True)
    finite = np.isfinite(top[:, 0])
    out = np.zeros_like(log_p)
    out[finite] = np.exp(log_p[finite] - top[finite])
    out[finite] /= out[finite].sum(axis=1, keepdims=True)
    return out


def p2(p1: np.ndarray, coexistence: list[np.ndarray]) -> np.ndarray:
    """P2 of every fragment: float [k, N], rows of zeros where every identity is ruled out."""
    p1 = np.asarray(p1, np.float64)
    log_complement = _log_complement(p1)
    owner = np.repeat(np.arange(len(coexistence)), [len(nb) for nb in coexistence])
    neighbour = np.concatenate(coexistence).astype(np.int64) if len(owner) else np.zeros(0, np.int64)
    excluded = np.zeros_like(p1)
    np.add.at(excluded, owner, log_complement[neighbour])
    with np.errstate(divide="ignore"):
        return _normalise_log(np.log(p1) + excluded)


def _p2_row(p1: np.ndarray, neighbours: np.ndarray, i: int) -> np.ndarray:
    with np.errstate(divide="ignore"):
        log_p = np.log(p1[i]) + _log_complement(p1[neighbours]).sum(axis=0)
    return _normalise_log(log_p)[0]


def certainty_p2(row: np.ndarray) -> float:
    """Best P2 over second best (infinite when only one identity is possible, 0 when none is)."""
    if len(row) == 1:
        return float("inf") if row[0] > 0 else 0.0
    second, best = np.sort(row)[-2:]
    if best <= 0:
        return 0.0
    return float("inf") if second <= 0 else float(best / second)


def assign_identities(
    fragments: list[Fragment],
    p1: np.ndarray,
    coexistence: list[np.ndarray],
    n_animals: int,
    fixed: dict[int, int] | None = None,
) -> Assignment:
    """Greedy assignment, most certain P2 first (notes §5.7).

    ``fixed`` maps fragment index -> identity decided beforehand (e.g. fragments the identifier
    trained on); they keep it and constrain their neighbours. A fragment whose best P2 is tied, or
    for which every identity is held by a coexisting fragment, stays unassigned (-1): the method
    never gives two coexisting fragments the same identity while an alternative exists.
    """
    k = len(fragments)
    p1 = np.array(p1, np.float64, copy=True).reshape(k, n_animals)
    identity = np.full(k, -1, np.int64)
    decided_p2 = np.zeros((k, n_animals))
    for i, ident in (fixed or {}).items():
        identity[i] = ident
        p1[i] = np.eye(n_animals)[ident]
        decided_p2[i] = p1[i]

    pending = {f.index for f in fragments if f.is_individual and f.n_images > 0 and identity[f.index] < 0}
    version = dict.fromkeys(pending, 0)
    n_images = np.array([f.n_images for f in fragments])
    current = {}
    heap = []

    def push(i: int) -> None:
        current[i] = _p2_row(p1, coexistence[i], i)
        heapq.heappush(heap, (-certainty_p2(current[i]), -n_images[i], i, version[i]))

    for i in sorted(pending):
        push(i)
    while heap:
        _, _, i, v = heapq.heappop(heap)
        if i not in pending or v != version[i]:
            continue
        pending.discard(i)
        row = current[i]
        decided_p2[i] = row
        best = row.max()
        if best <= 0 or np.sum(row >= best * (1 - TIE_TOLERANCE)) > 1:
            continue
        identity[i] = int(row.argmax())
        p1[i] = np.eye(n_animals)[identity[i]]
        for g in coexistence[i]:
            if g in pending:
                version[g] += 1
                push(int(g))
    return Assignment(identity=identity, p2=decided_p2)


@dataclass
class _Tracklet:
    """A chain of fragments that motion says are one animal, as assignment sees a fragment."""

    index: int
    n_images: int
    is_individual: bool = True


def assign_tracklets(
    fragments: list[Fragment],
    votes: np.ndarray,
    tracklet: np.ndarray,
    coexistence: list[np.ndarray],
    n_animals: int,
) -> Assignment:
    """Greedy assignment of tracklets (fragments chained by sure motion links), their votes pooled.

    A tracklet's P1 comes from the summed votes of its fragments, so one long, well-voted fragment
    carries the identity through the short, ambiguous ones that motion ties to it. Two tracklets
    coexist when any of their fragments do. Every fragment gets its tracklet's identity and P2.
    """
    k = len(fragments)
    individual = np.array([f.is_individual for f in fragments], bool)
    if k == 0:
        return Assignment(identity=np.zeros(0, np.int64), p2=np.zeros((0, n_animals)))
    tracklet = np.where(individual, tracklet, -1)
    ids, member = np.unique(tracklet[individual], return_inverse=True)
    t_of = np.full(k, -1, np.int64)
    t_of[individual] = member
    m = len(ids)
    pooled = np.zeros((m, n_animals))
    np.add.at(pooled, member, np.asarray(votes, np.float64)[individual])
    sizes = np.bincount(member, weights=[f.n_images for f in fragments if f.is_individual], minlength=m)
    neighbours: list[set[int]] = [set() for _ in range(m)]
    for i in np.flatnonzero(individual):
        neighbours[t_of[i]].update(int(t_of[g]) for g in coexistence[i] if t_of[g] >= 0)
    pseudo = [_Tracklet(t, int(sizes[t])) for t in range(m)]
    graph = [np.array(sorted(nb - {t}), np.int64) for t, nb in enumerate(neighbours)]
    decided = assign_identities(pseudo, p1_from_votes(pooled), graph, n_animals)
    identity = np.full(k, -1, np.int64)
    p2_rows = np.zeros((k, n_animals))
    identity[individual] = decided.identity[member]
    p2_rows[individual] = decided.p2[member]
    return Assignment(identity=identity, p2=p2_rows)
