"""Identification images: one small square crop per blob, the input of every network (§3.1-3.2).

Each crop is centred on the blob's centroid and rotated so that the animal's major axis lies along
the image's main diagonal, which is why its side is body_length / sqrt(2): an animal of median
length just fits along the diagonal. Pixels outside the (slightly dilated) blob mask are 0, so the
network sees the animal and not its neighbours or the arena. Head and tail are not told apart:
the same animal facing the other way gives the crop rotated by 180 degrees, and training adds such
rotated copies (Romero-Ferrero et al. 2019).
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from shoal.blobs import BlobTable

_DILATE = np.ones((3, 3), np.uint8)


def _even(value: float) -> int:
    side = int(value + 0.5)
    return side + side % 2


def crop_geometry(
    body_length: float,
    id_image_size: int | None = None,
    resolution_reduction: float | None = None,
    max_side: int = 80,
) -> tuple[int, float]:
    """Side (pixels, even) and scale of the identification images, as idtracker.ai chooses them.

    Auto: side = body_length / sqrt(2) rounded up to even; above ``max_side`` the crop is scaled
    down to ``max_side`` (scale rounded to 2 decimals) so large animals do not slow the networks.
    A user-fixed ``resolution_reduction`` r scales the auto side; a user-fixed ``id_image_size``
    sets the side and the scale that makes the animal fit (1 when it nearly fits already).
    """
    if body_length <= 0 or not math.isfinite(body_length):
        raise ValueError(f"body length must be a positive number of pixels, got {body_length}")
    side = _even(body_length / math.sqrt(2))
    if id_image_size is not None:
        if id_image_size < 2:
            raise ValueError(f"id_image_size must be at least 2 pixels, got {id_image_size}")
        if resolution_reduction is None:
            scale = round(id_image_size / side, 2)
            resolution_reduction = scale if scale < 0.91 else 1.0
        return int(id_image_size), float(resolution_reduction)
    if resolution_reduction is not None:
        if resolution_reduction <= 0:
            raise ValueError(f"resolution_reduction must be positive, got {resolution_reduction}")
        return max(_even(side * resolution_reduction), 2), float(resolution_reduction)
    if side > max_side:
        return max_side, round(max_side / side, 2)
    return side, 1.0


def identification_images(
    gray: np.ndarray, table: BlobTable, rows: np.ndarray, side: int, scale: float
) -> np.ndarray:
    """uint8 [len(rows), side, side] crops of the given rows, all blobs of the frame ``gray``.

    Per blob, only a small patch around its box is touched: the box grown by one pixel is masked
    with the 3x3-dilated blob mask and warped (one cv2.warpAffine, bilinear, sub-pixel exact)
    so that the centroid lands on the crop's centre and the major axis on its main diagonal.
    """
    rows = np.asarray(rows, np.int64)
    out = np.zeros((len(rows), side, side), np.uint8)
    height, width = gray.shape
    centre = (side - 1) / 2.0
    for k, i in enumerate(rows):
        x0, y0, x1, y1 = (int(v) for v in table.bbox[i])
        # Patch = box grown by 1 px (room for the dilation), clipped to the frame.
        px0, py0, px1, py1 = max(x0 - 1, 0), max(y0 - 1, 0), min(x1 + 1, width), min(y1 + 1, height)
        mask = np.zeros((py1 - py0, px1 - px0), np.uint8)
        mask[y0 - py0 : y1 - py0, x0 - px0 : x1 - px0] = table.mask(i)
        mask = cv2.dilate(mask, _DILATE)
        patch = gray[py0:py1, px0:px1] * mask
        # dest = A (p - c) + centre, A = scale * rotation by (pi/4 - orientation) in image axes.
        phi = math.pi / 4 - float(table.orientation[i])
        cos, sin = scale * math.cos(phi), scale * math.sin(phi)
        cx, cy = table.centroid[i, 0] - px0, table.centroid[i, 1] - py0
        matrix = np.array(
            [
                [cos, -sin, centre - cos * cx + sin * cy],
                [sin, cos, centre - sin * cx - cos * cy],
            ]
        )
        out[k] = cv2.warpAffine(
            patch, matrix, (side, side), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT
        )
    return out
