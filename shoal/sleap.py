"""Trajectories as SLEAP analysis HDF5 files, which SLEAP, sleap-io and movement open.

SLEAP's analysis export keeps one video per file, its arrays in SLEAP's own axis order (tracks
first, frames last; ``track_occupancy`` frames first). Shoal writes one file per video of the
session, each with one track per identity (named by its label) and a single ``centroid`` node.
SLEAP's scores are confidences; Shoal fills all three with the identity certainty
(``id_probabilities``), NaN where the animal is unknown. Written with h5py, so no extra is needed.
"""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np

import shoal
from shoal.atomic import replacing
from shoal.jsonsafe import json_safe

NODE = "centroid"


def sleap_paths(folder: Path, n_videos: int) -> list[Path]:
    """`trajectories.analysis.h5` for one video; `trajectories_<k>.analysis.h5` (k from 1) for several."""
    if n_videos == 1:
        return [Path(folder) / "trajectories.analysis.h5"]
    return [Path(folder) / f"trajectories_{k}.analysis.h5" for k in range(1, n_videos + 1)]


def video_spans(trajectories: dict, session: dict) -> list[tuple[str, int, int]]:
    """(path, first frame, frames) of each video in the session's frame numbering."""
    paths = trajectories["video_paths"]
    video = session.get("video") or {}
    starts, counts = video.get("file_starts"), video.get("file_frames")
    n_frames = len(trajectories["trajectories"])
    if len(paths) <= 1 or not starts or not counts or len(starts) != len(paths):
        return [(paths[0] if paths else "", 0, n_frames)]
    return [(path, int(start), int(count)) for path, start, count in zip(paths, starts, counts, strict=True)]


def write_sleap(folder: Path, trajectories: dict, session: dict) -> list[Path]:
    """Write the analysis files of a session's trajectories dict into `folder`; returns their paths."""
    spans = video_spans(trajectories, session)
    paths = sleap_paths(folder, len(spans))
    for path, (video_path, start, count) in zip(paths, spans, strict=True):
        positions = trajectories["trajectories"][start:start + count]
        known = np.isfinite(positions).all(axis=2)
        certainty = np.where(known, trajectories["id_probabilities"][start:start + count, :, 0], np.nan)
        provenance = {
            "software": "Shoal", "version": shoal.__version__, "first_frame_in_session": start,
            "frames_per_second": trajectories["frames_per_second"], "body_length_px": trajectories["body_length"],
            "estimated_accuracy": trajectories["estimated_accuracy"], "video_paths": trajectories["video_paths"],
            "scores": "identity certainty (Shoal's id_probabilities), not detection confidence",
        }
        with replacing(path) as temporary, h5py.File(temporary, "w") as h5:
            def dataset(name: str, data: np.ndarray) -> None:
                h5.create_dataset(name, data=data, compression="gzip")

            # SLEAP's order: tracks (track, xy, node, frame); scores (track, [node,] frame); occupancy (frame, track)
            dataset("tracks", positions.transpose(1, 2, 0)[:, :, None, :])
            dataset("track_occupancy", known.astype(np.uint8))
            dataset("point_scores", certainty.T[:, None, :])
            dataset("instance_scores", certainty.T)
            dataset("tracking_scores", certainty.T)
            h5["track_names"] = np.array([str(label).encode() for label in trajectories["identities_labels"]])
            h5["node_names"] = np.array([NODE.encode()])
            h5["edge_names"] = np.zeros((0, 2), dtype="S1")
            h5["edge_inds"] = np.zeros((0, 2), dtype=np.int64)
            h5["video_path"] = str(video_path)
            h5["video_ind"] = 0
            h5["labels_path"] = ""
            h5["provenance"] = json.dumps(json_safe(provenance))
            h5.attrs["format"] = "analysis"
    return paths

