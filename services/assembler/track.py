"""The assembler's algorithm from blobs to trajectories, as the paper reads (design §1 steps 3–7).

Blobs linked frame to frame -> individual or crossing -> fragments (surely one animal) -> global
fragments (all animals seen apart) -> identities learned per video by the identifier -> per-fragment
votes, P1, P2 and greedy assignment -> impossible jumps corrected -> animals inside crossings
interpolated -> trajectories. Without identities, fragments take slots instead.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np

from services.assembler.assignment import Assignment, assign_tracklets
from services.assembler.crossings import classify_crossings
from services.assembler.estimate import (
    Evidence,
    calibrate_to_evidence,
    doubt,
    estimated_accuracy,
    held_out_break_rate,
    interpolation_success,
    tracklet_confidence,
    vote_reliability,
)
from services.assembler.fragments import Fragment, build_fragments, coexistence
from services.assembler.global_fragments import GlobalFragment, find_global_fragments
from services.assembler.motion import link_fragments, tracklets
from services.assembler.postprocess import correct_impossible_jumps, interpolate_crossings, velocity_threshold
from services.assembler.slots import assign_slots
from services.assembler.trajectories import build_trajectories, identity_areas
from shoal.blobs import BlobTable, blobs_per_frame_of_blob
from shoal.identity_requests import IdentifierClient, IdentityReply, IdentityRequest, Progress
from shoal.votes import fragment_votes


@dataclass
class TrackResult:
    trajectories: np.ndarray  # float64 [F, N, 2], NaN where unknown
    id_probabilities: np.ndarray  # float64 [F, N, 1], P2 of the blob's identity, NaN where none
    areas: np.ndarray  # float64 [F, N], area of each identity's own blob, NaN where none
    blob_identity: np.ndarray  # int64 [n blobs], -1 for crossings and unidentified blobs
    is_crossing: np.ndarray  # bool [n blobs]
    fragment_identity: np.ndarray  # int64 [n fragments]
    n_animals: int
    n_fragments: int
    n_global_fragments: int
    estimated_accuracy: float | None  # expected share of all animal-frames that are right; None without identities
    silhouette: float
    method: str  # identity route the identifier used, "single animal" or "no identities"
    velocity_threshold: float  # px/frame
    ratio_accumulated: float = float("nan")
    n_jumps_corrected: int = 0
    n_positions_interpolated: int = 0
    warnings: list[str] = field(default_factory=list)  # what the user should look at
    notes: list[str] = field(default_factory=list)  # how the run went
    timings: dict[str, float] = field(default_factory=dict)  # seconds per stage
    identity_model: np.ndarray = field(default_factory=lambda: np.zeros(0, np.uint8))  # shoal.knowledge bytes
    transfer_score: float = float("nan")  # knowledge transfer's matching score
    estimated_accuracy_apart: float = float("nan")  # the same, over animal-frames with a blob of their own
    doubtful: bool = False  # the estimate is below estimate.DOUBTFUL_BELOW; a warning says why


def track(
    table: BlobTable,
    links: np.ndarray,
    n_frames: int,
    n_animals: int,
    identifier: IdentifierClient | None,
    *,
    identities: bool = True,
    method: str = "contrastive",
    seed: int = 0,
    progress: Progress | None = None,
    first_frame: int = 0,
    knowledge: np.ndarray | None = None,
    motion: bool = True,
) -> TrackResult:
    """Track the blobs of frames ``[first_frame, first_frame + n_frames)`` of one video.

    ``links`` are the overlap-graph links (table rows, see :mod:`services.assembler.overlap`). Image
    ids sent to the identifier are table rows. ``identifier`` may be None when ``identities`` is
    False or there is one animal. ``knowledge``: an earlier session's identity model
    (:mod:`shoal.knowledge` bytes) that identity learning starts from and names identities after.
    ``motion=False`` assigns identities from appearance alone (idtracker.ai's way), for comparison.
    """
    warnings: list[str] = []
    notes: list[str] = []
    timings: dict[str, float] = {}

    @contextmanager
    def stage(name: str) -> Iterator[None]:
        start = time.perf_counter()
        yield
        timings[name] = time.perf_counter() - start
        if progress is not None:
            progress(name, 1.0, {})

    if n_animals < 1:
        raise ValueError("the number of animals must be at least 1")
    per_frame = blobs_per_frame_of_blob(table)
    if np.any(per_frame > n_animals):
        n_bad = len(np.unique(table.frame[per_frame > n_animals]))
        warnings.append(
            f"{n_bad} frames hold more blobs than the {n_animals} animals: check the segmentation "
            "(intensity and area thresholds, ROI)"
        )
    if identities and n_animals > 1 and identifier is None:
        raise ValueError("tracking with identities needs an identifier")

    with stage("Crossing detection"):
        is_crossing = classify_crossings(table, links, n_animals, identifier, seed, notes, progress)
    with stage("Fragmentation"):
        fragments, blob_fragment = build_fragments(table, links, is_crossing)
        neighbours = coexistence(fragments)
        global_fragments = find_global_fragments(
            fragments, blob_fragment, table, n_animals, n_frames, first_frame
        )
    threshold = velocity_threshold(fragments, table)
    k = len(fragments)
    chained = None
    assignment = Assignment(identity=np.full(k, -1, np.int64), p2=np.zeros((k, n_animals)))
    silhouette, ratio_accumulated = float("nan"), float("nan")
    corrected: list[int] = []
    reply = IdentityReply(probabilities=np.zeros((0, n_animals)), method=method)
    confidence = np.array([float(f.is_individual) for f in fragments])  # P(identity right), per fragment
    reliability, tau, tau_runs, broken = 1.0, 1.0, 1.0, 0.0

    if not identities:
        route = "no identities"
        with stage("Identification"):
            assignment.identity = assign_slots(fragments, n_animals)
            assignment.p2[assignment.identity >= 0, assignment.identity[assignment.identity >= 0]] = 1.0
    elif n_animals == 1:
        route = "single animal"
        with stage("Identification"):
            individual = np.array([f.is_individual for f in fragments], bool)
            assignment.identity[individual] = 0
            assignment.p2[individual, 0] = 1.0
    else:
        with stage("Tracking"):
            reply, route, votes, image_votes = _learn_identities(
                fragments, global_fragments, n_animals, identifier, method, seed, progress, warnings, notes,
                knowledge,
            )
            silhouette, ratio_accumulated = reply.silhouette, reply.ratio_accumulated
        with stage("Fragment identification"):
            if motion:
                chained = link_fragments(fragments, blob_fragment, links, table, votes)
            tracklet = tracklets(chained.next_fragment) if motion else np.arange(k)
            assignment = assign_tracklets(fragments, votes, tracklet, neighbours, n_animals)
            if chained is not None:
                notes.append(f"motion: {chained.n_links} sure links at {chained.n_boundaries} crossings "
                             f"({chained.n_candidates} fragments entered one)")
        with stage("Impossible jumps correction"):
            identity, corrected = correct_impossible_jumps(
                fragments, table, assignment.identity, assignment.p2, neighbours, threshold
            )
            assignment = Assignment(identity=identity, p2=assignment.p2)
            reliability, tau_runs = vote_reliability(image_votes, n_animals)
            # motion alone, whether or not it helped assign: an independent witness of appearance
            by_motion = link_fragments(fragments, blob_fragment, links, table).next_fragment
            tau = calibrate_to_evidence(by_motion, neighbours, votes, reliability, tau_runs)
            assigned_next = chained.next_fragment if chained is not None else None
            broken = held_out_break_rate(fragments, votes, assigned_next, by_motion, neighbours, n_animals)
            confidence = tracklet_confidence(fragments, identity, tracklet, votes, neighbours, reliability, tau,
                                             broken)
            notes.append(f"appearance: {reliability:.1%} of images vote for their fragment's majority; "
                         f"votes count as 1/{tau:g} of independent ones (vote runs, motion-sure links, "
                         f"coexisting fragments); identities broke at {broken:.0%} of motion-sure links held out")

    with stage("Trajectories creation"):
        identity = assignment.identity
        blob_identity = identity[blob_fragment] if k else np.zeros(0, np.int64)
        # per frame, the chance that the identity there is right (estimate.py): doubtful stretches show
        blob_probability = confidence[blob_fragment] if k else np.zeros(0)
        trajectories, id_probabilities = build_trajectories(
            table, blob_identity, n_frames, n_animals, first_frame, blob_probability
        )
        areas = identity_areas(table, blob_identity, n_frames, n_animals, first_frame)
    n_filled = 0
    filled = np.zeros((n_frames, n_animals), bool)
    body = _half_body_length(table, n_animals)  # snap reach, settling reach and interpolation's hit radius
    if identities and n_animals > 1:
        with stage("Crossings solver"):
            reach = max(threshold if np.isfinite(threshold) else 0.0, body)
            trajectories, filled = interpolate_crossings(
                trajectories, table, blob_identity, first_frame, max_snap_distance=reach, body_radius=body
            )
            n_filled = int(filled.sum())

    accuracy: float | None = None  # slots carry no identity to be right about
    apart = float("nan")
    doubtful = None
    if identities:
        own = np.flatnonzero(blob_identity >= 0)
        blob_confidence = np.full((n_frames, n_animals), np.nan)
        blob_confidence[table.frame[own] - first_frame, blob_identity[own]] = confidence[blob_fragment[own]]
        success = interpolation_success(fragments, table, body)
        accuracy = estimated_accuracy(blob_confidence, filled, success)
        evidence = Evidence(n_frames, len(global_fragments), silhouette, reliability, tau,
                            float(np.isfinite(blob_confidence).mean()) if blob_confidence.size else 0.0,
                            tau > tau_runs, broken)
        apart = float(np.nanmean(blob_confidence)) if np.isfinite(blob_confidence).any() else float("nan")
        doubtful = doubt(accuracy, apart, evidence) if n_animals > 1 else None
        if doubtful:
            warnings.append(doubtful)
    return TrackResult(
        trajectories=trajectories,
        id_probabilities=id_probabilities,
        areas=areas,
        blob_identity=blob_identity,
        is_crossing=is_crossing,
        fragment_identity=assignment.identity,
        n_animals=n_animals,
        n_fragments=k,
        n_global_fragments=len(global_fragments),
        estimated_accuracy=accuracy,
        silhouette=silhouette,
        method=route,
        velocity_threshold=threshold,
        ratio_accumulated=ratio_accumulated,
        n_jumps_corrected=len(corrected),
        n_positions_interpolated=n_filled,
        warnings=warnings,
        notes=notes,
        timings=timings,
        identity_model=np.asarray(reply.model, np.uint8),
        transfer_score=float(reply.transfer_score),
        estimated_accuracy_apart=apart if identities else float("nan"),
        doubtful=doubtful is not None,
    )


def identity_request(
    fragments: list[Fragment],
    global_fragments: list[GlobalFragment],
    n_animals: int,
    method: str,
    seed: int,
) -> tuple[IdentityRequest, np.ndarray]:
    """The request for every individual fragment (request fragment r is fragment ``order[r]``).

    Global fragments go in order of decreasing minimum distance travelled, so row 0 is the paper's
    first global fragment (the one whose animals moved most); only those whose shortest fragment has
    enough images to train on (accumulable) are sent.
    """
    order = np.array([f.index for f in fragments if f.is_individual], np.int64)
    position = np.full(len(fragments), -1, np.int64)
    position[order] = np.arange(len(order))
    rows = [fragments[i].rows for i in order]
    offsets = np.concatenate([[0], np.cumsum([len(r) for r in rows])]).astype(np.int64)
    frames = np.array([[fragments[i].start_frame, fragments[i].end_frame] for i in order], np.int64)
    ranked = sorted((g for g in global_fragments if g.accumulable), key=lambda g: -g.min_distance_travelled)
    members = np.array([position[list(g.fragments)] for g in ranked], np.int64)
    request = IdentityRequest(
        n_animals=n_animals,
        fragment_offsets=offsets,
        fragment_ids=np.concatenate(rows).astype(np.int64) if rows else np.zeros(0, np.int64),
        fragment_frames=frames.reshape(-1, 2),
        global_fragments=members.reshape(-1, n_animals),
        method=method,
        seed=seed,
    )
    return request, order


def _learn_identities(
    fragments: list[Fragment],
    global_fragments: list[GlobalFragment],
    n_animals: int,
    identifier: IdentifierClient,
    method: str,
    seed: int,
    progress: Progress | None,
    warnings: list[str],
    notes: list[str],
    knowledge: np.ndarray | None = None,
) -> tuple[IdentityReply, str, np.ndarray]:
    """Ask the identifier for per-image probabilities.

    Returns (reply, route, votes int [k, N] per fragment, each requested fragment's image votes in
    frame order).
    """
    request, order = identity_request(fragments, global_fragments, n_animals, method, seed)
    if knowledge is not None:
        request.knowledge = np.asarray(knowledge, np.uint8)
    votes = np.zeros((len(fragments), n_animals), np.int64)
    if len(order) == 0:
        warnings.append("no animal was ever seen alone: no identities")
        return IdentityReply(probabilities=np.zeros((0, n_animals)), method=method), method, votes, []
    if len(global_fragments) == 0:
        warnings.append("no frame shows every animal apart (no global fragment)")
    reply = identifier.learn_identities(request, progress)
    notes.extend(reply.notes)
    probabilities = np.asarray(reply.probabilities, np.float64)
    if probabilities.shape != (len(request.fragment_ids), n_animals):
        raise ValueError(
            f"identifier returned probabilities of shape {probabilities.shape}, "
            f"expected {(len(request.fragment_ids), n_animals)}"
        )
    votes[order], _ = fragment_votes(probabilities, request.fragment_offsets)
    image_votes = np.split(probabilities.argmax(axis=1), request.fragment_offsets[1:-1])
    return reply, reply.method, votes, image_votes


def _half_body_length(table: BlobTable, n_animals: int) -> float:
    """Half the median bounding-box diagonal of single animals: how far a snap may reach at least."""
    if len(table) == 0:
        return 0.0
    single = blobs_per_frame_of_blob(table) == n_animals
    boxes = table.bbox[single] if np.any(single) else table.bbox
    return 0.5 * float(np.median(np.hypot(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])))
