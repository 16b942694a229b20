"""The blob table: every blob of a range of frames, one row per blob, as flat arrays.

A table is what the segmenter produces for a chunk of frames and what the assembler stitches
together for a whole video. Ragged per-blob data (the pixel mask inside the bounding box and
the external contour) is stored as one flat array plus offsets, so a table travels as a handful of
contiguous buffers and never as a list of Python objects (idtracker.ai's per-blob objects are the
main memory cost of long videos).
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np


@dataclass
class BlobTable:
    """Blobs sorted by frame.

    Attributes:
        frame: int64 [n] global frame index of each blob.
        area: float64 [n] number of pixels of the filled blob mask.
        centroid: float64 [n, 2] (x, y) centre of mass of the mask, in full-resolution pixels.
        bbox: int32 [n, 4] (x0, y0, x1, y1), x1/y1 exclusive.
        orientation: float64 [n] angle of the major axis in radians, in (-pi/2, pi/2],
            measured from the +x axis towards +y (image coordinates).
        mask_offsets: int64 [n + 1]; blob i's mask is
            ``mask_bits[mask_offsets[i]:mask_offsets[i+1]]`` reshaped to the bbox (h, w).
        mask_bits: bool [sum of h*w] filled masks (holes filled) in bbox coordinates.
        contour_offsets: int64 [n + 1] offsets into ``contour_points``.
        contour_points: int32 [m, 2] (x, y) vertices of the external contours, frame coordinates.
        region: int32 [n] exclusive arena (connected ROI region) holding the blob; all 0 unless the
            job has ``exclusive_rois``. Omitted (None) it is all 0, so older senders still decode.
    """

    frame: np.ndarray
    area: np.ndarray
    centroid: np.ndarray
    bbox: np.ndarray
    orientation: np.ndarray
    mask_offsets: np.ndarray
    mask_bits: np.ndarray
    contour_offsets: np.ndarray
    contour_points: np.ndarray
    region: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.region is None:
            self.region = np.zeros(len(self.frame), np.int32)

    def __len__(self) -> int:
        return len(self.frame)

    @classmethod
    def empty(cls) -> BlobTable:
        return cls(
            frame=np.zeros(0, np.int64),
            area=np.zeros(0, np.float64),
            centroid=np.zeros((0, 2), np.float64),
            bbox=np.zeros((0, 4), np.int32),
            orientation=np.zeros(0, np.float64),
            mask_offsets=np.zeros(1, np.int64),
            mask_bits=np.zeros(0, bool),
            contour_offsets=np.zeros(1, np.int64),
            contour_points=np.zeros((0, 2), np.int32),
        )

    def mask(self, i: int) -> np.ndarray:
        """Boolean mask of blob ``i`` inside its bounding box, shape (h, w)."""
        x0, y0, x1, y1 = self.bbox[i]
        return self.mask_bits[self.mask_offsets[i] : self.mask_offsets[i + 1]].reshape(y1 - y0, x1 - x0)

    def contour(self, i: int) -> np.ndarray:
        """External contour of blob ``i`` as int32 (k, 2) (x, y) points."""
        return self.contour_points[self.contour_offsets[i] : self.contour_offsets[i + 1]]

    def frame_slices(self, first_frame: int, n_frames: int) -> np.ndarray:
        """Row ranges per frame: int64 [n_frames + 1] so frame f's rows are ``[s[f-first], s[f-first+1])``."""
        return np.searchsorted(self.frame, np.arange(first_frame, first_frame + n_frames + 1)).astype(np.int64)

    def arrays(self) -> dict[str, np.ndarray]:
        """The table's columns by name (what the codec sends)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> BlobTable:
        return cls(**{f.name: arrays[f.name] for f in fields(cls) if f.name in arrays or f.name != "region"})

    def select(self, rows: np.ndarray) -> BlobTable:
        """A new table with the given rows (in the given order), vectorised over the ragged columns."""
        rows = np.asarray(rows, np.int64)
        mask_offsets, mask_bits = _take_ragged(self.mask_offsets, self.mask_bits, rows)
        contour_offsets, contour_points = _take_ragged(self.contour_offsets, self.contour_points, rows)
        return BlobTable(
            frame=self.frame[rows],
            area=self.area[rows],
            centroid=self.centroid[rows].reshape(-1, 2),
            bbox=self.bbox[rows].reshape(-1, 4),
            orientation=self.orientation[rows],
            mask_offsets=mask_offsets,
            mask_bits=mask_bits,
            contour_offsets=contour_offsets,
            contour_points=contour_points.reshape(-1, 2),
            region=self.region[rows],
        )


def blobs_per_frame_of_blob(table: BlobTable) -> np.ndarray:
    """For each blob, how many blobs its frame holds."""
    if len(table) == 0:
        return np.zeros(0, np.int64)
    _, inverse, counts = np.unique(table.frame, return_inverse=True, return_counts=True)
    return counts[inverse]


def solo_frame_rows(table: BlobTable, n_animals: int) -> tuple[np.ndarray, bool]:
    """(bool [n], exact): the blobs of the frames that best show the animals apart.

    Those are the frames with exactly ``n_animals`` blobs (``exact``: every blob there is one
    animal) or, in a video without such a frame (some animals always touch), the frames with the
    most blobs up to N: the fewest animals touching, though some blobs there are still merged.
    """
    per_frame = blobs_per_frame_of_blob(table)
    if np.any(per_frame == n_animals):
        return per_frame == n_animals, True
    return per_frame == per_frame[per_frame <= n_animals].max(initial=per_frame.min(initial=0)), False


def _take_ragged(offsets: np.ndarray, data: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(new offsets, data) of the ragged items ``rows``, gathered with one fancy index."""
    starts, lengths = offsets[rows], offsets[rows + 1] - offsets[rows]
    new_offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    index = np.repeat(starts - new_offsets[:-1], lengths) + np.arange(new_offsets[-1])
    return new_offsets, data[index]


def concat(tables: list[BlobTable]) -> BlobTable:
    """Concatenate tables (in the given order), fixing up the ragged offsets."""
    tables = [t for t in tables if len(t)]
    if not tables:
        return BlobTable.empty()

    def offsets(name: str) -> np.ndarray:
        parts, base = [np.zeros(1, np.int64)], 0
        for t in tables:
            o = getattr(t, name)
            parts.append(o[1:] - o[0] + base)
            base += int(o[-1] - o[0])
        return np.concatenate(parts)

    return BlobTable(
        frame=np.concatenate([t.frame for t in tables]),
        area=np.concatenate([t.area for t in tables]),
        centroid=np.concatenate([t.centroid for t in tables]),
        bbox=np.concatenate([t.bbox for t in tables]),
        orientation=np.concatenate([t.orientation for t in tables]),
        mask_offsets=offsets("mask_offsets"),
        mask_bits=np.concatenate([t.mask_bits[t.mask_offsets[0] : t.mask_offsets[-1]] for t in tables]),
        contour_offsets=offsets("contour_offsets"),
        contour_points=np.concatenate(
            [t.contour_points[t.contour_offsets[0] : t.contour_offsets[-1]] for t in tables]
        ),
        region=np.concatenate([t.region for t in tables]).astype(np.int32),
    )
