"""One job's assembly, without sockets or files: chunk tables in, tracking result and session record out.

``services/assembler/main.py`` collects the chunks, reads the knowledge-transfer model, writes the
session folder and reports over ZeroMQ; everything it decides in between is here, so it can be
read (and tested) as the steps of the method: stitch the chunks, count the animals (per arena with
exclusive ROIs), track, and describe the run.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from shoal import __version__
from shoal.blobs import BlobTable, concat
from shoal.identity_requests import IdentifierClient, Progress
from shoal.params import TrackingParams
from shoal.roi import animals_per_region
from shoal.session import effective_parameters, timer_name, utc_iso
from shoal.v1 import INVALID_INPUT

from .regions import track_regions
from .slots import max_blobs_per_frame
from .track import TrackResult, track


class JobError(Exception):
    """The job cannot complete; the message says why in words a user can act on."""


def stitch(chunks: dict[int, BlobTable], n_chunks: int) -> BlobTable:
    """The chunks' tables in chunk order (a blob's row is its image id); no blob at all is an error."""
    table = concat([chunks[c] for c in range(n_chunks)])
    if len(table) == 0:
        raise JobError(f"{INVALID_INPUT}no animals were found in any frame: check intensity_ths, area_ths and the ROI")
    return table


def count_animals(table: BlobTable, n_frames: int, probe: dict, exclusive_rois: bool) -> tuple[int, list[int] | None]:
    """(number of animals, animals per exclusive region or None), as the probe recorded them.

    Only without a number (tracking without identities) does the whole video decide, since a slot
    is needed for the most blobs any frame (any region) holds.
    """
    n_regions, counts = int(probe.get("n_regions", 1)), probe.get("animals_per_region")
    if exclusive_rois and counts is None:
        counts = animals_per_region(table, n_frames, n_regions, 0)
    if counts is not None:
        return sum(counts), counts
    return probe.get("n_animals") or max(max_blobs_per_frame(table), 1), None


def crowded_frames(table: BlobTable, n_frames: int, n_animals: int) -> np.ndarray:
    """Frames with more blobs than animals (debris, or a segmentation that splits animals)."""
    return np.flatnonzero(np.bincount(table.frame, minlength=n_frames) > n_animals)


def track_job(table: BlobTable, links: np.ndarray, n_frames: int, n_animals: int, region_counts: list[int] | None,
              identifier: IdentifierClient, params: TrackingParams, knowledge: Any, progress: Progress,
              ) -> TrackResult:
    """Fragments, identities and trajectories of the whole video, or of each exclusive region."""
    how = dict(identities=not params.track_wo_identities, method=params.method, seed=params.seed, progress=progress)
    if region_counts is not None:
        return track_regions(table, links, n_frames, region_counts, identifier, **how)
    return track(table, links, n_frames, n_animals, identifier, knowledge=knowledge, **how)


def identity_groups(region_counts: list[int] | None) -> dict[str, list[int]]:
    """With exclusive regions, the 1-based identities of each (numbered region by region)."""
    if region_counts is None:
        return {}
    first = np.concatenate([[0], np.cumsum(region_counts)]).astype(int)
    return {f"region_{r}": list(range(first[r] + 1, first[r + 1] + 1)) for r in range(len(region_counts))}


def session_record(job: str, spec: dict, result: TrackResult, table: BlobTable, n_animals: int,
                   region_counts: list[int] | None, n_crowded: int, stitch_seconds: float,
                   background: str | None, warnings: list[str]) -> dict:
    """session.json of a finished tracking: what ran, on what, how long each stage took, how sure it is."""
    params, video, probe = spec["params"], spec["plan"]["video"], spec["plan"]["probe"]
    statistics = {
        "estimated_accuracy": result.estimated_accuracy,
        "estimated_accuracy_apart": finite_or_none(result.estimated_accuracy_apart),
        "silhouette_score": result.silhouette, "n_blobs": len(table), "n_fragments": result.n_fragments,
        "n_global_fragments": result.n_global_fragments,
        "identification_method": result.method, "velocity_threshold": result.velocity_threshold,
        "frames_with_more_blobs_than_animals": n_crowded,
        "probe_blobs_per_frame_median": probe.get("blobs_per_frame_median"),
    }
    session = {
        "shoal_version": __version__, "job_id": job,
        "started_utc": utc_iso(spec.get("started_unix")), "finished_utc": utc_iso(time.time()),
        "parameters": params,
        "effective_parameters": effective_parameters(params, probe, n_animals, background),
        "video": {k: v for k, v in video.items() if k != "warnings"},
        "timers_seconds": {"stitch": stitch_seconds, **{timer_name(s): t for s, t in result.timings.items()}},
        "statistics": statistics,
        # one list: the video's, the probe's and the tracking's (the job's videos add theirs)
        "warnings": list(dict.fromkeys([*video.get("warnings", []), *probe.get("warnings", []), *warnings])),
        "notes": result.notes,
    }
    if region_counts is not None:
        session["regions"] = {"animals_per_region": region_counts, "identities": identity_groups(region_counts)}
    if params.get("knowledge_transfer_folder"):
        session["knowledge_transfer"] = {"from": params["knowledge_transfer_folder"],
                                         "matching_score": finite_or_none(result.transfer_score)}
    return session


def job_figures(result: TrackResult, table: BlobTable, n_animals: int) -> dict[str, float]:
    """The numbers the gateway shows for the job."""
    figures = {"blobs": len(table), "fragments": result.n_fragments, "animals": n_animals,
               "global_fragments": result.n_global_fragments}
    if result.estimated_accuracy is not None and np.isfinite(result.estimated_accuracy):
        figures["estimated_accuracy"] = result.estimated_accuracy
    if np.isfinite(result.transfer_score):
        figures["transfer_score"] = result.transfer_score
    return figures


def area_statistics(areas: np.ndarray) -> dict[str, np.ndarray]:
    """Mean, median and s.d. of each identity's blob area ([F, N] with NaN where not seen)."""
    seen = np.isfinite(areas)
    filled = np.where(seen, areas, 0.0)
    count = np.maximum(seen.sum(0), 1)
    mean = filled.sum(0) / count
    std = np.sqrt((np.where(seen, (areas - mean) ** 2, 0.0)).sum(0) / count)
    median = np.array([np.median(areas[seen[:, i], i]) if seen[:, i].any() else np.nan
                       for i in range(areas.shape[1])])
    none = ~seen.any(0)
    mean[none] = std[none] = np.nan
    return {"mean": mean, "median": median, "std": std}


def finite_or_none(value: float) -> float | None:
    return float(value) if np.isfinite(value) else None
