"""How much of the tracking is right, estimated from evidence the video itself provides.

The estimate is the expected share of *all* animal-frames (N animals × tracked frames) whose
identity is right, the share a lab measures when it proofreads a clip. Three pieces:

1. **How reliable one image's vote is on this video.** Every image of a fragment shows one animal,
   so the share of a fragment's images that vote for its majority identity measures the network's
   per-image accuracy ``a`` here; consecutive images are not independent, and the correlation ρ of
   consecutive wrong votes says how much: votes are worth ``n/τ`` independent ones, with
   ``τ = (1 + ρ)/(1 − ρ)`` as for an AR(1) series.
2. **How sure each assigned tracklet is.** With that confusion model, the log-likelihood of each
   network label is ``votes × log(a (N−1)/(1−a)) / τ``. Unlike idtracker.ai's base-2 P1, it does
   not grow certain from many correlated votes of a weak network. Identities are names mapped to
   animals once per video, so the tracklet carrying most of an identity's images is its reference,
   and any other tracklet is right with the posterior chance that it shows the reference's animal.
   Where motion alone is sure two fragments are one animal, the model must find "same animal"
   likely, and where two fragments share a frame, unlikely: τ is raised until it best explains
   those witnesses, which catches the errors a whole fragment shares (a look-alike, clusters that
   are not the animals), which no count of its own votes can. And a tracklet joined to its
   reference only by assignment is at most as sure as assignment is where the answer is known:
   motion-sure links held out one at a time show how often an identity breaks there.
3. **Frames without an own blob.** Animals interpolated through a crossing are right when both
   ends of the run are and the interpolation falls within half a body length of them; the chance
   for a gap of g frames is measured by interpolating over g held-out frames of the video's own
   individual fragments. Animal-frames with no position count as wrong.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from services.assembler.assignment import assign_tracklets
from services.assembler.fragments import Fragment
from services.assembler.motion import MIN_LINK_ODDS, tracklets
from shoal.blobs import BlobTable

#: per-image accuracy is never taken as perfect: the estimate must stay finite and honest
MAX_IMAGE_ACCURACY = 0.999
#: fragments shorter than this say little about the per-image accuracy (their majority is noise)
MIN_IMAGES_FOR_RELIABILITY = 8
#: motion-sure links needed before they calibrate the appearance model, and the τ values tried
MIN_CALIBRATION_LINKS = 3
LINK_ERROR = 1.0 / MIN_LINK_ODDS
TAU_GRID = (1.0, 1.5, 2.0, 3.0, 5.0, 8.0, 13.0, 20.0, 30.0, 50.0, 80.0)
#: motion-sure links held out, at most, to test assignment across a boundary
MAX_HELD_OUT_LINKS = 24
#: longest gap at which interpolation is tried out on held-out frames
MAX_MEASURED_GAP = 30


def vote_reliability(image_votes: list[np.ndarray], n_animals: int) -> tuple[float, float]:
    """(a, τ): per-image accuracy and vote correlation length from each fragment's votes in frame order."""
    long = [v for v in image_votes if len(v) >= MIN_IMAGES_FOR_RELIABILITY]
    if not long or n_animals < 2:
        return 1.0 / max(n_animals, 1), 1.0
    majority = sum(int(np.bincount(v, minlength=n_animals).max()) for v in long)
    total = sum(len(v) for v in long)
    a = min(majority / total, MAX_IMAGE_ACCURACY)
    # correlation of consecutive errors (an image off its fragment's majority): errors that come in
    # runs are worth fewer independent votes; with no errors at all there is nothing to correlate
    errors = [v != np.bincount(v, minlength=n_animals).argmax() for v in long]
    before = np.concatenate([e[:-1] for e in errors]).astype(np.float64)
    after = np.concatenate([e[1:] for e in errors]).astype(np.float64)
    rho = 0.0
    if before.std() > 0 and after.std() > 0:
        rho = float(np.clip(np.corrcoef(before, after)[0, 1], 0.0, 0.98))
    return a, (1 + rho) / (1 - rho)


def tempered_p1(votes: np.ndarray, a: float, tau: float, q: float = 0.0) -> np.ndarray:
    """Posterior identity probabilities of each row of vote counts under the symmetric confusion model.

    ``q``: the chance that a row's label as a whole belongs to no particular animal, which no number
    of its votes can rule out.
    """
    votes = np.asarray(votes, np.float64)
    n_ids = votes.shape[1]
    a = float(np.clip(a, 1.0 / n_ids + 1e-6, MAX_IMAGE_ACCURACY))
    weight = np.log(a * (n_ids - 1) / (1 - a)) / tau
    log_p = votes * weight
    log_p -= log_p.max(axis=1, keepdims=True)
    p = np.exp(log_p)
    return (1 - q) * p / p.sum(axis=1, keepdims=True) + q / n_ids


def _witness_log_likelihood(p1: np.ndarray, pairs: tuple[np.ndarray, np.ndarray], together: bool) -> float:
    """Mean log-chance of fragment pairs being one animal (`together`) or two, under identities `p1`.

    A witness is wrong about 1 time in MIN_LINK_ODDS (a sure link that is not, a blob that is debris
    or half an animal): one such must not rule.
    """
    same = np.sum(p1[pairs[0]] * p1[pairs[1]], axis=1)
    return float(np.mean(np.log(LINK_ERROR + (1 - LINK_ERROR) * (same if together else 1 - same))))


def calibrate_to_evidence(next_fragment: np.ndarray, coexistence: list[np.ndarray], votes: np.ndarray,
                          a: float, tau: float) -> float:
    """The vote correlation τ (≥ ``tau``) that best explains what the video says without appearance.

    Two witnesses are independent of the network. Where motion alone is sure two fragments are one
    animal, "same animal" should be likely; two fragments seen in one frame are two animals, so
    "same animal" should be unlikely. Errors that all images of a fragment share (a look-alike, or
    clusters that are not the animals) make linked fragments vote confidently apart, or coexisting
    ones confidently together, which no count of a fragment's own votes reveals; the τ that
    maximises the likelihood of both kinds of witness tempers the votes just enough. A kind with
    fewer than MIN_CALIBRATION_LINKS witnesses is left out; with neither, τ is unchanged.
    """
    e = np.flatnonzero(next_fragment >= 0)
    same = (e, next_fragment[e]) if len(e) >= MIN_CALIBRATION_LINKS else None
    counted = np.asarray(votes).sum(axis=1) > 0
    pairs = np.array([(i, int(j)) for i, nb in enumerate(coexistence) if counted[i] for j in nb
                      if i < j and counted[j]], np.int64).reshape(-1, 2)
    apart = (pairs[:, 0], pairs[:, 1]) if len(pairs) >= MIN_CALIBRATION_LINKS else None
    if same is None and apart is None:
        return tau
    witnesses = [(pairs, together) for pairs, together in ((same, True), (apart, False)) if pairs is not None]
    best, best_tau = -np.inf, tau
    for candidate in [t for t in TAU_GRID if t >= tau] or [tau]:
        p1 = tempered_p1(votes, a, candidate)
        score = sum(_witness_log_likelihood(p1, pairs, together) for pairs, together in witnesses)
        if score > best + 1e-9:
            best, best_tau = score, candidate
    return best_tau


def held_out_break_rate(fragments: list[Fragment], votes: np.ndarray, assigned_next: np.ndarray | None,
                        witness_next: np.ndarray, coexistence: list[np.ndarray], n_animals: int) -> float:
    """How often assignment breaks an identity at a boundary that motion does not bridge for it.

    Motion-sure links (``witness_next``) show where the answer is known. Each one that assignment
    used (``assigned_next``; every one when assignment used no links) is held out in turn, at most
    MAX_HELD_OUT_LINKS of them spread over the video: the fragments are assigned again without it,
    and the link is broken when its two sides end up with different identities (or none). This
    tests the whole procedure, appearance and coexistence together, on sides with at least
    MIN_IMAGES_FOR_RELIABILITY images each, the tracklets that carry identities (a scrap of two
    images says little about them). A motion link that appearance vetoed is no witness: one of
    the two is wrong, and on a good video it is the motion. The share broken, beyond what wrong
    links explain, is the chance that an identity does not survive a boundary that only
    assignment joins; with fewer than MIN_CALIBRATION_LINKS such links it is taken as 0.
    """
    n_images = np.array([f.n_images for f in fragments], np.float64)
    chained = assigned_next if assigned_next is not None else np.full(len(fragments), -1, np.int64)
    e = np.flatnonzero(witness_next >= 0)
    if assigned_next is not None:
        e = e[assigned_next[e] == witness_next[e]]
    broken, held_out = [], None
    for i in e[np.unique(np.linspace(0, len(e) - 1, min(len(e), MAX_HELD_OUT_LINKS)).astype(np.int64))]:
        j = witness_next[i]
        cut = chained.copy()
        cut[i] = -1
        parts = tracklets(cut)
        if min(n_images[parts == parts[i]].sum(), n_images[parts == parts[j]].sum()) < MIN_IMAGES_FOR_RELIABILITY:
            continue
        if held_out is None or assigned_next is not None:  # without links, every cut leaves the same tracklets
            held_out = assign_tracklets(fragments, votes, parts, coexistence, n_animals).identity
        broken.append(held_out[i] < 0 or held_out[i] != held_out[j])
    if len(broken) < MIN_CALIBRATION_LINKS:
        return 0.0
    return max(float(np.mean(broken)) - LINK_ERROR, 0.0)


def tracklet_confidence(
    fragments: list[Fragment],
    identity: np.ndarray,
    tracklet: np.ndarray,
    votes: np.ndarray,
    coexistence: list[np.ndarray],
    a: float,
    tau: float,
    broken: float = 0.0,
) -> np.ndarray:
    """Probability that each fragment's identity is right (0 for crossings and unassigned): float [k].

    Identities are names, mapped to animals once for the whole video (by a lab, and by
    ``shoal evaluate``), so the tracklet that carries the most images of an identity *defines* the
    animal it names. Any other tracklet of that identity is right when it shows the same animal as
    that *reference*: under the confusion model its chance is ``Σ_j p_T(j) p_ref(j)``, normalised
    over the references of every identity it could be (not those it coexists with). A chance
    below one half counts as 0: the evidence does not back that identity. A reference is itself
    only as sure as it is another animal than the larger references it never meets. ``broken``
    (:func:`held_out_break_rate`) bounds both: a non-reference tracklet counts at most ``1 −
    broken`` times its reference's chance, and a share ``broken`` of labels is taken to name no
    particular animal when references are told apart.
    """
    k = len(fragments)
    individual = np.array([f.is_individual for f in fragments], bool)
    confidence = np.zeros(k)
    assigned = np.flatnonzero(individual & (identity >= 0))
    if len(assigned) == 0:
        return confidence
    n_ids = votes.shape[1]
    ids, member = np.unique(np.where(individual, tracklet, -1)[individual], return_inverse=True)
    t_of = np.full(k, -1, np.int64)
    t_of[individual] = member
    pooled = np.zeros((len(ids), n_ids))
    np.add.at(pooled, member, np.asarray(votes, np.float64)[individual])
    p1 = tempered_p1(pooled, a, tau)
    coexists: list[set[int]] = [set() for _ in ids]
    for i in np.flatnonzero(individual):
        coexists[t_of[i]].update(int(t_of[g]) for g in coexistence[i] if t_of[g] >= 0)
    carried = np.zeros((len(ids), n_ids))  # images each tracklet carries under each identity
    np.add.at(carried, (t_of[assigned], identity[assigned]), [fragments[i].n_images for i in assigned])
    reference = np.where(carried.max(axis=0) > 0, carried.argmax(axis=0), -1)
    has_reference = np.flatnonzero(reference >= 0)
    distinct = _distinct_references(reference, carried, tempered_p1(pooled, a, tau, broken), coexists)
    for i in assigned:
        t, ident = t_of[i], identity[i]
        if reference[ident] == t:
            confidence[i] = distinct[ident]
            continue
        candidates = [c for c in has_reference if reference[c] == t or reference[c] not in coexists[t]]
        same = {c: float(p1[t] @ p1[reference[c]]) for c in candidates}
        total = sum(same.values())
        chance = same.get(ident, 0.0) / total if total > 0 else 0.0
        # an identity the evidence makes less likely than not is no answer to vouch for
        confidence[i] = min(chance, 1 - broken) * distinct[ident] if chance > 0.5 else 0.0
    return confidence


def _distinct_references(reference: np.ndarray, carried: np.ndarray, p1: np.ndarray,
                          coexists: list[set[int]]) -> np.ndarray:
    """Chance that each identity's reference is an animal no larger reference already names.

    Two identities cannot name one animal (the mapping is one to one). A reference that coexists
    with every larger one is surely another animal; otherwise its chance of being its own animal is
    its self-similarity against its similarity to each larger reference it never meets.
    """
    distinct = np.ones(len(reference))
    size = np.array([carried[t, k] if t >= 0 else 0.0 for k, t in enumerate(reference)])
    order = [k for k in np.argsort(-size, kind="stable") if reference[k] >= 0]
    for rank, k in enumerate(order):
        t = reference[k]
        larger = [reference[j] for j in order[:rank] if reference[j] != t and reference[j] not in coexists[t]]
        if larger:
            own = float(p1[t] @ p1[t])
            distinct[k] = own / (own + sum(float(p1[t] @ p1[r]) for r in larger))
    return distinct


def interpolation_success(fragments: list[Fragment], table: BlobTable, radius: float,
                          max_gap: int = MAX_MEASURED_GAP) -> np.ndarray:
    """Share of positions interpolated across a gap of g frames that land within ``radius``: float [max_gap + 1].

    Measured by holding out g frames inside individual fragments, where the truth is seen, and
    interpolating linearly between the frames either side, as the crossings solver does. Gaps
    longer than any fragment allows take the longest measured gap's share (an animal inside a
    crossing is also held to its blob, so the share falls no further in practice).
    """
    success = np.full(max_gap + 1, np.nan)
    tracks = [table.centroid[f.rows].astype(np.float64) for f in fragments if f.is_individual and f.n_images > 2]
    for gap in range(1, max_gap + 1):
        hits = total = 0
        for p in tracks:
            if len(p) < gap + 2:
                continue
            a, b = p[:-gap - 1], p[gap + 1:]
            for j in range(1, gap + 1):
                guess = a + (b - a) * (j / (gap + 1))
                hits += int(np.sum(np.linalg.norm(guess - p[j:len(p) - gap - 1 + j], axis=1) < radius))
                total += len(a)
        if total >= 20:
            success[gap] = hits / total
    measured = np.flatnonzero(np.isfinite(success))
    if len(measured) == 0:
        return np.zeros(max_gap + 1)
    success[: measured[0]] = success[measured[0]]
    success = np.fmin.accumulate(np.where(np.isfinite(success), success, np.inf))  # longer gaps: no easier
    return np.where(np.isfinite(success), success, success[measured[-1]])


def estimated_accuracy(blob_confidence_frames: np.ndarray, filled: np.ndarray, success: np.ndarray) -> float:
    """Expected share of animal-frames that are right.

    ``blob_confidence_frames``: float [F, N], the confidence of the identity's own blob in that
    frame, NaN where the identity has no blob; ``filled``: bool [F, N], positions interpolated
    through crossings. An interpolated run is as right as the blobs at its two ends, each vouching
    more for the frames nearer it (a wrong end puts the run on another animal), times the share of
    interpolations that land for a gap that long (:func:`interpolation_success`); a run with one
    end seen takes that end's confidence, with none the identity's mean.
    """
    conf = np.asarray(blob_confidence_frames, np.float64)
    n_frames, n_ids = conf.shape
    if conf.size == 0:
        return float("nan")
    total = np.nansum(conf)
    for k in range(n_ids):
        own = conf[:, k]
        mean_conf = float(np.nanmean(own)) if np.isfinite(own).any() else 0.0
        for start, stop in _run_bounds(filled[:, k]):
            ends = [own[i] for i in (start - 1, stop) if 0 <= i < n_frames and np.isfinite(own[i])]
            gap = stop - start
            vouched = float(np.mean(ends)) if ends else mean_conf
            total += vouched * gap * float(success[min(gap, len(success) - 1)])
    return float(total / conf.size)


def _run_bounds(flags: np.ndarray) -> list[tuple[int, int]]:
    """[start, stop) of each run of True in a bool vector."""
    padded = np.concatenate([[0], np.asarray(flags, np.int8), [0]])
    edges = np.flatnonzero(np.diff(padded))
    return list(zip(edges[::2].tolist(), edges[1::2].tolist(), strict=True))


#: below this estimate a run is doubtful and says why
DOUBTFUL_BELOW = 0.99


@dataclass
class Evidence:
    """What the estimate rests on, to explain a doubtful run to its user."""

    n_frames: int
    n_global_fragments: int
    silhouette: float  # NaN when the route reports none
    image_accuracy: float  # a: share of images voting for their fragment's majority
    tau: float  # votes count as 1/τ of independent ones
    own_blob_share: float  # animal-frames where the identity has a blob of its own
    motion_raised_tau: bool  # motion-sure links showed appearance errors whole fragments share
    held_out_broken: float = 0.0  # share of motion-sure links held out at which identities broke


def doubt(estimate: float, apart: float, evidence: Evidence) -> str | None:
    """One warning line for a run whose estimate is below ``DOUBTFUL_BELOW``: the reasons and what to try.

    ``apart``: the estimate over animal-frames where each animal has a blob of its own.
    """
    if not np.isfinite(estimate) or estimate >= DOUBTFUL_BELOW:
        return None
    reasons, tries = [], []
    if evidence.n_frames < 500:
        reasons.append(f"a short clip ({evidence.n_frames} frames)")
        tries.append("track a longer recording of the same animals")
    if evidence.n_global_fragments < 3:
        reasons.append(f"few frames show every animal apart ({evidence.n_global_fragments} global fragments)")
        tries.append("a ROI that excludes walls and debris, or segmentation that separates touching animals")
    if evidence.image_accuracy < 0.9 or (np.isfinite(evidence.silhouette) and evidence.silhouette < 0.5):
        reasons.append(f"weak appearance (only {evidence.image_accuracy:.0%} of images vote with their fragment"
                       + (f", silhouette {evidence.silhouette:.2f}" if np.isfinite(evidence.silhouette) else "")
                       + ")")
        tries.append("a higher resolution or larger id_image_size, and less compression")
    if evidence.motion_raised_tau:
        reasons.append("motion contradicts appearance at some crossings (look-alike animals)")
    if evidence.held_out_broken >= 0.05:
        reasons.append(f"identities broke at {evidence.held_out_broken:.0%} of the crossings where motion shows "
                       "the truth (the network's labels change meaning over the clip)")
        tries.append("more even lighting and less compression")
    if evidence.own_blob_share < 0.8:
        reasons.append(f"animals are apart only {evidence.own_blob_share:.0%} of the time (many or long crossings)")
        tries.append("thresholds that split touching animals (a higher intensity threshold)")
    if not reasons:
        reasons.append("identities of some fragments are uncertain")
    advice = f"; try {', or '.join(dict.fromkeys(tries))}" if tries else ""
    where = f" ({apart:.3f} where the animals are apart)" if np.isfinite(apart) else ""
    return (f"doubtful run: estimated accuracy {estimate:.3f}{where} is below {DOUBTFUL_BELOW}, because of "
            f"{'; '.join(reasons)}{advice}. Check the doubtful stretches before using the identities")
