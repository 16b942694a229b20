"""Trajectories: per frame and identity, the centroid of the blob that wears the identity."""

from __future__ import annotations

import numpy as np

from shoal.blobs import BlobTable


def identity_rows(
    table: BlobTable,
    blob_identity: np.ndarray,
    n_frames: int,
    n_animals: int,
    first_frame: int = 0,
    blob_probability: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(frame - first_frame, identity, blob row) of the one blob shown for each identity and frame.

    When two blobs of one frame wear the same identity (possible only when assignment had no
    alternative), the one of higher probability, then larger area, is kept.
    """
    blob_identity = np.asarray(blob_identity, np.int64)
    probability = np.ones(len(table)) if blob_probability is None else np.asarray(blob_probability)
    frame = table.frame - first_frame
    wears = (blob_identity >= 0) & (blob_identity < n_animals)
    rows = np.flatnonzero(wears & (frame >= 0) & (frame < n_frames))
    best_first = rows[np.lexsort((-table.area[rows], -probability[rows]))]
    _, first = np.unique(frame[best_first] * n_animals + blob_identity[best_first], return_index=True)
    rows = best_first[first]
    return frame[rows], blob_identity[rows], rows


def build_trajectories(
    table: BlobTable,
    blob_identity: np.ndarray,
    n_frames: int,
    n_animals: int,
    first_frame: int = 0,
    blob_probability: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Positions float64 [F, N, 2] (NaN where unknown) and id_probabilities float64 [F, N, 1].

    ``blob_identity`` is int [n] (-1 = none); ``blob_probability`` (default 1) is the probability of
    each blob's identity, reported in ``id_probabilities``.
    """
    probability = np.ones(len(table)) if blob_probability is None else np.asarray(blob_probability, float)
    frame, identity, rows = identity_rows(table, blob_identity, n_frames, n_animals, first_frame, probability)
    trajectories = np.full((n_frames, n_animals, 2), np.nan)
    id_probabilities = np.full((n_frames, n_animals, 1), np.nan)
    trajectories[frame, identity] = table.centroid[rows]
    id_probabilities[frame, identity, 0] = probability[rows]
    return trajectories, id_probabilities


def identity_areas(
    table: BlobTable, blob_identity: np.ndarray, n_frames: int, n_animals: int, first_frame: int = 0
) -> np.ndarray:
    """Area (px) of each identity's blob per frame: float64 [F, N], NaN where unknown."""
    frame, identity, rows = identity_rows(table, blob_identity, n_frames, n_animals, first_frame)
    areas = np.full((n_frames, n_animals), np.nan)
    areas[frame, identity] = table.area[rows]
    return areas
