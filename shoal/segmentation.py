"""Segmentation: from a grey frame to the table of its blobs (method notes §2.2-2.4).

A frame is thresholded into a foreground mask (intensity range, or distance to a background
model), restricted to the ROI, and every external contour whose filled area lies within the area
thresholds becomes a blob. Everything here is per frame and uses OpenCV on whole images or on
small per-blob boxes, so segmentation costs a fraction of decoding the frame.

Differences from idtracker.ai, on purpose:
- a blob's area is the pixel count of its filled mask (idtracker.ai uses the contour's polygon
  area, which undercounts by about half the perimeter); the area thresholds apply to this count;
- centroid and orientation come from the moments of the filled mask, not of the contour polygon;
- contours are always traced with CHAIN_APPROX_SIMPLE, which fills back to exactly the blob's pixels.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from shoal.blobs import BlobTable, concat, solo_frame_rows

BACKGROUND_STATS = ("median", "mean", "max", "min")


def background_sample_indices(n_frames: int, k: int = 50) -> np.ndarray:
    """Indices (into the tracked frames) of the k frames used for the background, evenly spaced."""
    if n_frames <= 0:
        return np.zeros(0, np.int64)
    return np.unique(np.linspace(0, n_frames - 1, min(k, n_frames)).round().astype(np.int64))


def compute_background(frames: np.ndarray, stat: str = "median", roi: np.ndarray | None = None) -> np.ndarray:
    """Per-pixel statistic of sampled grey frames [k, H, W] -> uint8 [H, W] background.

    Animals move, so at each pixel most samples see the empty arena and the median recovers it
    (§2.2). The median uses ``np.partition`` on the ROI's bounding box only; outside the ROI the
    background is 0 (those pixels are never foreground anyway).
    """
    if stat not in BACKGROUND_STATS:
        raise ValueError(f'background stat "{stat}" is not one of {", ".join(BACKGROUND_STATS)}')
    frames = np.asarray(frames)
    if frames.ndim != 3 or len(frames) == 0:
        raise ValueError(f"expected a stack of grey frames [k, H, W] with k >= 1, got shape {frames.shape}")
    _, height, width = frames.shape
    background = np.zeros((height, width), np.uint8)
    if roi is None:
        y0, y1, x0, x1 = 0, height, 0, width
    else:
        ys, xs = np.nonzero(np.asarray(roi).any(axis=1)), np.nonzero(np.asarray(roi).any(axis=0))
        if len(ys[0]) == 0:
            return background
        y0, y1, x0, x1 = ys[0][0], ys[0][-1] + 1, xs[0][0], xs[0][-1] + 1
    box = frames[:, y0:y1, x0:x1]
    if stat == "median":
        k = len(box)
        middle = np.partition(box, sorted({(k - 1) // 2, k // 2}), axis=0)
        value = (middle[(k - 1) // 2].astype(np.uint16) + middle[k // 2] + 1) // 2
    elif stat == "mean":
        value = np.round(box.mean(axis=0, dtype=np.float64))
    elif stat == "max":
        value = box.max(axis=0)
    else:
        value = box.min(axis=0)
    background[y0:y1, x0:x1] = value
    if roi is not None:
        background[~np.asarray(roi, bool)] = 0
    return background


def foreground_mask(
    gray: np.ndarray,
    intensity_ths: tuple[float, float],
    background: np.ndarray | None = None,
    roi: np.ndarray | None = None,
    sign: int = 0,
) -> np.ndarray:
    """uint8 0/255 mask of the pixels that may belong to animals (§2.3).

    Without background: ``lo <= pixel <= hi`` (inclusive, as cv2.inRange), or both extremes
    ``pixel >= lo or pixel <= hi`` when lo > hi (light and dark animals together). With background:
    ``|background - pixel| > lo``; the upper value is ignored, as in idtracker.ai >= 5.2.5.
    ``sign`` (Shoal's own) keeps one side only: -1 pixels darker than the background by more than
    ``lo``, +1 lighter, so that a light animal's dark shadow or dark debris is not foreground.
    """
    lo, hi = intensity_ths
    if background is None:
        lo_i, hi_i = max(math.ceil(lo), 0), min(math.floor(hi), 255)
        if lo <= hi:
            mask = cv2.inRange(gray, lo_i, hi_i) if lo_i <= hi_i else np.zeros(gray.shape, np.uint8)
        else:  # a range that wraps: both extremes, [lo, 255] and [0, hi]
            _, light = cv2.threshold(gray, lo_i - 1, 255, cv2.THRESH_BINARY)
            _, dark = cv2.threshold(gray, hi_i, 255, cv2.THRESH_BINARY_INV)
            mask = cv2.bitwise_or(light, dark)
    else:
        difference = {0: cv2.absdiff, -1: cv2.subtract, 1: lambda b, g: cv2.subtract(g, b)}[sign](background, gray)
        _, mask = cv2.threshold(difference, lo, 255, cv2.THRESH_BINARY)
    if roi is not None:
        mask = cv2.bitwise_and(mask, mask, mask=np.asarray(roi, bool).view(np.uint8))
    return mask


def find_blobs(
    gray: np.ndarray, mask: np.ndarray, frame_index: int, area_ths: tuple[float, float]
) -> BlobTable:
    """Blobs of one frame: external contours of ``mask`` whose filled pixel count is in area_ths.

    Each blob's mask is its external contour filled inside its bounding box, so holes are filled
    and two touching animals are one blob (they are split later, in post-processing). Rows are
    ordered by the (y, x) of the centroid, so the order does not depend on OpenCV's tracing order.
    ``gray`` is accepted for symmetry with the crops; blob geometry depends on the mask only.
    """
    area_min, area_max = area_ths
    contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    areas, centroids, bboxes, orientations, masks, kept = [], [], [], [], [], []
    for contour in contours:
        x, y, w, h = cv2.boundingRect(contour)
        # Cheap rejections before filling: pixel count <= box area, and >= polygon area.
        if w * h < area_min or cv2.contourArea(contour) > area_max:
            continue
        canvas = np.zeros((h, w), np.uint8)
        cv2.drawContours(canvas, [contour], -1, 1, thickness=cv2.FILLED, offset=(-x, -y))
        m = cv2.moments(canvas, binaryImage=True)
        area = m["m00"]
        if not area_min <= area <= area_max:
            continue
        areas.append(area)
        centroids.append((x + m["m10"] / area, y + m["m01"] / area))
        orientations.append(_orientation(m["mu20"], m["mu02"], m["mu11"]))
        bboxes.append((x, y, x + w, y + h))
        masks.append(canvas.view(bool).ravel())
        kept.append(contour.reshape(-1, 2))
    n = len(areas)
    if n == 0:
        return BlobTable.empty()
    centroid = np.array(centroids, np.float64)
    order = np.lexsort((centroid[:, 0], centroid[:, 1]))
    masks = [masks[i] for i in order]
    contours_kept = [kept[i] for i in order]
    return BlobTable(
        frame=np.full(n, frame_index, np.int64),
        area=np.array(areas, np.float64)[order],
        centroid=centroid[order],
        bbox=np.array(bboxes, np.int32)[order],
        orientation=np.array(orientations, np.float64)[order],
        mask_offsets=np.concatenate([[0], np.cumsum([len(b) for b in masks])]).astype(np.int64),
        mask_bits=np.concatenate(masks),
        contour_offsets=np.concatenate([[0], np.cumsum([len(c) for c in contours_kept])]).astype(np.int64),
        contour_points=np.concatenate(contours_kept).astype(np.int32),
    )


def _orientation(mu20: float, mu02: float, mu11: float) -> float:
    """Major-axis angle from second central moments, in (-pi/2, pi/2], from +x towards +y."""
    angle = 0.5 * math.atan2(2.0 * mu11, mu20 - mu02)
    return math.pi / 2 if angle <= -math.pi / 2 else angle


def segment_frame(
    gray: np.ndarray,
    frame_index: int,
    intensity_ths: tuple[float, float],
    area_ths: tuple[float, float],
    background: np.ndarray | None = None,
    roi: np.ndarray | None = None,
    sign: int = 0,
) -> BlobTable:
    """Blobs of one grey frame: threshold, restrict to the ROI, extract contours (§2.3-2.4)."""
    return find_blobs(gray, foreground_mask(gray, intensity_ths, background, roi, sign), frame_index, area_ths)


def segment_frames(
    frames: np.ndarray,
    first_frame: int,
    intensity_ths: tuple[float, float],
    area_ths: tuple[float, float],
    background: np.ndarray | None = None,
    roi: np.ndarray | None = None,
) -> BlobTable:
    """Blobs of a stack of grey frames [k, H, W] whose first frame has global index first_frame."""
    return concat(
        [
            segment_frame(gray, first_frame + i, intensity_ths, area_ths, background, roi)
            for i, gray in enumerate(frames)
        ]
    )


def body_length(table: BlobTable, n_animals: int) -> float:
    """Median bounding-box diagonal of single-animal blobs (§3.1), the unit of the crop size.

    Only frames with exactly ``n_animals`` blobs are used (there every blob is one animal); if no
    frame qualifies, the frames with the most blobs up to N (the fewest animals touching, so the
    median is still a single animal's). The diagonal joins the extreme pixel centres, (w-1, h-1),
    as in idtracker.ai's blob ``extension``.
    """
    if len(table) == 0:
        raise ValueError("cannot estimate the body length: no blobs were found; check the thresholds")
    rows, _ = solo_frame_rows(table, n_animals)
    w = table.bbox[rows, 2] - table.bbox[rows, 0] - 1
    h = table.bbox[rows, 3] - table.bbox[rows, 1] - 1
    return float(np.median(np.hypot(w, h)))
