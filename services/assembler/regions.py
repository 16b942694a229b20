"""Exclusive arenas (idtracker.ai's ``exclusive_rois``): each connected ROI region is tracked alone.

Animals in separate tanks can never meet, so a fragment never joins blobs of two regions, and
identities are learned and assigned among a region's animals only: the problem splits into one
smaller tracking problem per region. Each region runs the whole of :func:`track.track` on its own
rows of the blob table; image ids sent to the identifier are translated back to rows of the job's
table, so the identifier's image store is shared. Identities are then numbered region by region:
region 0 holds identities ``0..n0-1``, region 1 ``n0..n0+n1-1``, and so on.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from shoal.blobs import BlobTable
from shoal.identity_requests import (
    CrossingReply,
    CrossingRequest,
    IdentifierClient,
    IdentityReply,
    IdentityRequest,
    Progress,
)

from .track import TrackResult, track


class _RegionIdentifier:
    """An identifier client that speaks region-table rows and forwards job-table rows."""

    def __init__(self, identifier: IdentifierClient, rows: np.ndarray):
        self.identifier, self.rows = identifier, rows

    def classify_crossings(self, request: CrossingRequest, progress: Progress | None = None) -> CrossingReply:
        request = dataclasses.replace(request, train_ids=self.rows[request.train_ids],
                                      predict_ids=self.rows[request.predict_ids])
        return self.identifier.classify_crossings(request, progress)

    def learn_identities(self, request: IdentityRequest, progress: Progress | None = None) -> IdentityReply:
        request = dataclasses.replace(request, fragment_ids=self.rows[request.fragment_ids])
        return self.identifier.learn_identities(request, progress)


def track_regions(
    table: BlobTable,
    links: np.ndarray,
    n_frames: int,
    counts: list[int],
    identifier: IdentifierClient | None,
    *,
    identities: bool = True,
    method: str = "contrastive",
    seed: int = 0,
    progress: Progress | None = None,
    first_frame: int = 0,
) -> TrackResult:
    """Track each region alone (``counts[r]`` animals in region r) and join the results.

    The joined result has ``sum(counts)`` identities, region r's first one being ``sum(counts[:r])``;
    links between blobs of different regions (impossible with a segmented ROI) are dropped.
    """
    n_animals = sum(counts)
    n_regions = len(counts)
    links = np.asarray(links, np.int64).reshape(-1, 2)
    local = np.full(len(table), -1, np.int64)
    trajectories = np.full((n_frames, n_animals, 2), np.nan)
    id_probabilities = np.full((n_frames, n_animals, 1), np.nan)
    areas = np.full((n_frames, n_animals), np.nan)
    blob_identity = np.full(len(table), -1, np.int64)
    is_crossing = np.zeros(len(table), bool)
    fragment_identity, parts = [], []
    warnings: list[str] = []
    notes: list[str] = []
    timings: dict[str, float] = {}
    first_identity = np.concatenate([[0], np.cumsum(counts)]).astype(int)
    for r, n in enumerate(counts):
        rows = np.flatnonzero(table.region == r)
        if n == 0:
            if len(rows):
                warnings.append(f"region {r}: {len(rows)} blobs in a region without animals are ignored")
            continue
        if len(rows) == 0:
            warnings.append(f"region {r}: no animal was found in this region")
            continue
        local[rows] = np.arange(len(rows))
        inside = (table.region[links[:, 0]] == r) & (table.region[links[:, 1]] == r)

        def region_progress(stage: str, fraction: float, figures: dict, r: int = r) -> None:
            if progress is not None:
                progress(stage, (r + fraction) / n_regions, figures)

        part = track(
            table.select(rows), local[links[inside]], n_frames, n,
            _RegionIdentifier(identifier, rows) if identifier is not None else None,
            identities=identities, method=method, seed=seed, progress=region_progress, first_frame=first_frame,
        )
        span = slice(first_identity[r], first_identity[r + 1])
        trajectories[:, span] = part.trajectories
        id_probabilities[:, span] = part.id_probabilities
        areas[:, span] = part.areas
        blob_identity[rows] = np.where(part.blob_identity >= 0, part.blob_identity + span.start, -1)
        is_crossing[rows] = part.is_crossing
        fragment_identity.append(np.where(part.fragment_identity >= 0, part.fragment_identity + span.start, -1))
        warnings += [f"region {r}: {w}" for w in part.warnings]
        notes += [f"region {r}: {note}" for note in part.notes]
        for stage, seconds in part.timings.items():
            timings[stage] = timings.get(stage, 0.0) + seconds
        parts.append((n, part))
    return TrackResult(
        trajectories=trajectories,
        id_probabilities=id_probabilities,
        areas=areas,
        blob_identity=blob_identity,
        is_crossing=is_crossing,
        fragment_identity=np.concatenate(fragment_identity) if fragment_identity else np.zeros(0, np.int64),
        n_animals=n_animals,
        n_fragments=sum(p.n_fragments for _, p in parts),
        n_global_fragments=sum(p.n_global_fragments for _, p in parts),
        estimated_accuracy=_weighted(parts, "estimated_accuracy") if identities else None,
        silhouette=_weighted(parts, "silhouette"),
        method=" / ".join(dict.fromkeys(p.method for _, p in parts)) or method,
        velocity_threshold=max((p.velocity_threshold for _, p in parts), default=float("nan")),
        ratio_accumulated=_weighted(parts, "ratio_accumulated"),
        n_jumps_corrected=sum(p.n_jumps_corrected for _, p in parts),
        n_positions_interpolated=sum(p.n_positions_interpolated for _, p in parts),
        warnings=warnings,
        notes=notes,
        timings=timings,
        estimated_accuracy_apart=_weighted(parts, "estimated_accuracy_apart") if identities else float("nan"),
        doubtful=any(p.doubtful for _, p in parts),
    )


def _weighted(parts: list[tuple[int, TrackResult]], name: str) -> float:
    """Animal-weighted mean of a per-region figure over the regions where it is a number."""
    values = [(n, getattr(p, name)) for n, p in parts]
    values = [(n, v) for n, v in values if v is not None and np.isfinite(v)]
    if not values:
        return float("nan")
    return float(sum(n * v for n, v in values) / sum(n for n, _ in values))
