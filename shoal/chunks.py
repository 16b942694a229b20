"""The chunk plan of a job: which frames each segmenter task covers."""

from __future__ import annotations

from itertools import pairwise

import numpy as np

from shoal.video import VideoInfo


def chunk_ranges(
    info: VideoInfo, frames_per_chunk: int = 500, intervals: list[tuple[int, int]] | None = None
) -> list[tuple[int, int]]:
    """Split the tracked frames into [start, stop) chunks of about `frames_per_chunk` frames.

    Chunk boundaries are the union of file boundaries and tracking-interval boundaries; each piece
    is then cut into n = int(len / (frames_per_chunk + 1)) + 1 near-equal parts, as idtracker.ai
    builds its episodes (method notes §2.1). Overlapping intervals are merged.
    """
    if frames_per_chunk < 1:
        raise ValueError(f"frames_per_chunk must be at least 1, got {frames_per_chunk}")
    if intervals is None:
        intervals = [(0, info.n_frames)]
    tracked = np.zeros(info.n_frames + 1, dtype=bool)
    for start, stop in intervals:
        if start < 0 or stop <= start:
            raise ValueError(f"tracking interval [{start}, {stop}) is empty or negative")
        tracked[start:min(stop, info.n_frames)] = True
    tracked[-1] = False
    edges = np.flatnonzero(np.diff(np.concatenate([[False], tracked]).astype(np.int8)))
    boundaries = set(info.file_starts[1:])
    chunks = []
    for start, stop in zip(edges[::2], edges[1::2], strict=True):
        cuts = sorted({int(start), int(stop)} | {b for b in boundaries if start < b < stop})
        for piece_start, piece_stop in pairwise(cuts):
            n = int((piece_stop - piece_start) / (frames_per_chunk + 1)) + 1
            bounds = np.linspace(piece_start, piece_stop, n + 1).astype(int)
            chunks.extend((int(a), int(b)) for a, b in pairwise(bounds))
    return chunks
