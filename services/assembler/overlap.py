"""The overlap graph: blob a in frame t links to blob b in frame t+1 when their pixel masks intersect.

At a frame rate high enough for an animal to overlap itself between consecutive frames (the
method's one assumption, notes §3.3), a link means "possibly the same animal"; a blob with one link
each way that continues a blob with one link each way is surely the same animal.

Pairs are found with a vectorised bounding-box test per frame pair, then an exact test on the two
masks inside the boxes' intersection.
"""

from __future__ import annotations

import numpy as np

from shoal.blobs import BlobTable


def masks_intersect(table: BlobTable, a: int, b: int) -> bool:
    """Whether the pixel masks of rows ``a`` and ``b`` share a pixel (frame coordinates)."""
    ax0, ay0, ax1, ay1 = (int(v) for v in table.bbox[a])
    bx0, by0, bx1, by1 = (int(v) for v in table.bbox[b])
    x0, y0, x1, y1 = max(ax0, bx0), max(ay0, by0), min(ax1, bx1), min(ay1, by1)
    if x0 >= x1 or y0 >= y1:
        return False
    window_a = table.mask(a)[y0 - ay0:y1 - ay0, x0 - ax0:x1 - ax0]
    window_b = table.mask(b)[y0 - by0:y1 - by0, x0 - bx0:x1 - bx0]
    return bool(np.any(window_a & window_b))


def frame_pair_links(table: BlobTable, rows_t: np.ndarray, rows_next: np.ndarray) -> np.ndarray:
    """Links between the blobs ``rows_t`` of one frame and ``rows_next`` of the next: int64 [m, 2]."""
    if len(rows_t) == 0 or len(rows_next) == 0:
        return np.zeros((0, 2), np.int64)
    box_a, box_b = table.bbox[rows_t][:, None, :], table.bbox[rows_next][None, :, :]
    boxes_meet = (
        (np.maximum(box_a[..., 0], box_b[..., 0]) < np.minimum(box_a[..., 2], box_b[..., 2]))
        & (np.maximum(box_a[..., 1], box_b[..., 1]) < np.minimum(box_a[..., 3], box_b[..., 3]))
    )
    ia, ib = np.nonzero(boxes_meet)
    pairs = [
        (rows_t[i], rows_next[j])
        for i, j in zip(ia, ib, strict=True)
        if masks_intersect(table, rows_t[i], rows_next[j])
    ]
    return np.asarray(pairs, np.int64).reshape(-1, 2)


def overlap_links(table: BlobTable, row_offset: int = 0) -> np.ndarray:
    """All links (i, j), frame[j] == frame[i] + 1, of a table whose rows are sorted by frame.

    Returned row numbers are ``table row + row_offset``, so a caller that receives a job's blobs in
    chunks links each chunk together with the last frame of the chunk before it:
    ``overlap_links(concat([previous_last_frame, chunk]), row_offset=global row of that frame's
    first blob)``; concatenating the results gives the links of the whole video.
    """
    if len(table) == 0:
        return np.zeros((0, 2), np.int64)
    first = int(table.frame[0])
    starts = table.frame_slices(first, int(table.frame[-1]) - first + 1)
    links = []
    for t in range(len(starts) - 2):
        rows_t = np.arange(starts[t], starts[t + 1])
        rows_next = np.arange(starts[t + 1], starts[t + 2])
        if len(rows_t) and len(rows_next):
            links.append(frame_pair_links(table, rows_t, rows_next))
    if not links:
        return np.zeros((0, 2), np.int64)
    return np.concatenate(links) + row_offset


def link_degrees(links: np.ndarray, n_blobs: int) -> tuple[np.ndarray, np.ndarray]:
    """Number of previous and of next blobs of every blob: (n_previous [n], n_next [n])."""
    links = np.asarray(links, np.int64).reshape(-1, 2)
    n_previous = np.bincount(links[:, 1], minlength=n_blobs)
    n_next = np.bincount(links[:, 0], minlength=n_blobs)
    return n_previous, n_next
