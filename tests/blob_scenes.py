"""Hand-built blob tables for the assembler's tests: discs drawn per frame, segmented into blobs.

Discs that touch merge into one blob, exactly as two animals in a crossing do in a real video.
"""

from __future__ import annotations

import cv2
import numpy as np

from shoal.blobs import BlobTable

Disc = tuple[float, float, float]  # (x, y, radius)


def table_from_discs(frames: list[list[Disc]], size: tuple[int, int] = (200, 300)) -> BlobTable:
    """One blob per connected component of the discs drawn in each frame (frame index = list index)."""
    height, width = size
    names = ("frame", "area", "centroid", "bbox", "orientation", "mask", "contour")
    cols: dict[str, list] = {k: [] for k in names}
    for f, discs in enumerate(frames):
        canvas = np.zeros((height, width), np.uint8)
        yy, xx = np.mgrid[:height, :width]
        for x, y, r in discs:
            canvas[(xx - x) ** 2 + (yy - y) ** 2 <= r * r] = 1
        n, labels = cv2.connectedComponents(canvas, connectivity=8)
        for label in range(1, n):
            mask = labels == label
            ys, xs = np.nonzero(mask)
            x0, y0, x1, y1 = xs.min(), ys.min(), xs.max() + 1, ys.max() + 1
            cx, cy = xs.mean(), ys.mean()
            dx, dy = xs - cx, ys - cy
            mu20, mu02, mu11 = (dx * dx).mean(), (dy * dy).mean(), (dx * dy).mean()
            contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
            cols["frame"].append(f)
            cols["area"].append(float(mask.sum()))
            cols["centroid"].append((cx, cy))
            cols["bbox"].append((x0, y0, x1, y1))
            cols["orientation"].append(0.5 * np.arctan2(2 * mu11, mu20 - mu02))
            cols["mask"].append(mask[y0:y1, x0:x1].ravel())
            cols["contour"].append(contours[0].reshape(-1, 2))
    masks, contours = cols["mask"], cols["contour"]
    return BlobTable(
        frame=np.asarray(cols["frame"], np.int64),
        area=np.asarray(cols["area"], np.float64),
        centroid=np.asarray(cols["centroid"], np.float64).reshape(-1, 2),
        bbox=np.asarray(cols["bbox"], np.int32).reshape(-1, 4),
        orientation=np.asarray(cols["orientation"], np.float64),
        mask_offsets=np.concatenate([[0], np.cumsum([len(m) for m in masks])]).astype(np.int64),
        mask_bits=np.concatenate(masks) if masks else np.zeros(0, bool),
        contour_offsets=np.concatenate([[0], np.cumsum([len(c) for c in contours])]).astype(np.int64),
        contour_points=(np.concatenate(contours) if contours else np.zeros((0, 2))).astype(np.int32),
    )


def crossing_scene(
    n_frames: int = 80, speed: float = 2.5, radius: float = 7.0
) -> tuple[list[list[Disc]], int]:
    """Three discs: 0 and 1 swim towards each other on one line, meet (one merged blob), part; 2 swims
    alone. Returns the per-frame discs (disc j is animal j) and the number of animals."""
    frames = []
    for t in range(n_frames):
        a = (40 + speed * t, 60.0, radius)
        b = (40 + speed * (n_frames - 1) - speed * t, 62.0, radius)
        c = (60 + 1.5 * t, 150 + 10 * np.sin(t / 8), radius)
        frames.append([a, b, c])
    return frames, 3


def true_animals(frames: list[list[Disc]], table: BlobTable) -> list[set[int]]:
    """For each blob row, the set of discs (animals) whose centre lies inside its mask."""
    out = []
    for i in range(len(table)):
        x0, y0, _, _ = table.bbox[i]
        mask = table.mask(i)
        inside = set()
        for j, (x, y, _) in enumerate(frames[int(table.frame[i])]):
            px, py = int(round(x)) - x0, int(round(y)) - y0
            if 0 <= py < mask.shape[0] and 0 <= px < mask.shape[1] and mask[py, px]:
                inside.add(j)
        out.append(inside)
    return out
