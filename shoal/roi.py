"""Region of interest: which pixels of the frame may hold animals.

The ROI is a list of strings in idtracker.ai's syntax, applied in order onto an empty mask, so
labs can reuse their parameter files (method notes §2.5)::

    "+ Polygon [[x0, y0], [x1, y1], ...]"                         add a polygon
    "- Polygon [[x0, y0], ...]"                                   remove a polygon
    "+ Ellipse {'center': [x, y], 'axes': [a, b], 'angle': deg}"  add (or "-" remove) an ellipse

Ellipse axes are semi-axes and the angle is in degrees, as in ``cv2.ellipse``. The payload is read
with ``ast.literal_eval`` (or JSON), never ``eval``, so a parameter file cannot run code.
"""

from __future__ import annotations

import ast
import json
import re
from dataclasses import dataclass

import cv2
import numpy as np

from shoal.blobs import BlobTable

_ROI_RE = re.compile(r"^\s*([+-])\s*([A-Za-z]+)\s*(.*?)\s*$", re.DOTALL)
_EXPECTED = {
    "Polygon": "[[x0, y0], [x1, y1], ...]",
    "Ellipse": "{'center': [x, y], 'axes': [a, b], 'angle': deg}",
}


class RoiError(ValueError):
    """A ROI string that cannot be used; the message names the ROI and the problem."""


@dataclass(frozen=True)
class RoiShape:
    """One parsed ROI entry.

    Attributes:
        sign: +1 adds the shape to the mask, -1 removes it.
        kind: "Polygon" or "Ellipse".
        points: float64 [k, 2] (x, y) polygon vertices (empty for ellipses).
        center: (x, y) of the ellipse.
        axes: (a, b) semi-axes of the ellipse, in pixels.
        angle: rotation of the ellipse in degrees (cv2.ellipse convention).
    """

    sign: int
    kind: str
    points: np.ndarray
    center: tuple[float, float] = (0.0, 0.0)
    axes: tuple[float, float] = (0.0, 0.0)
    angle: float = 0.0


def _literal(payload: str) -> object:
    try:
        return ast.literal_eval(payload)
    except (ValueError, SyntaxError):
        return json.loads(payload)


def _pair(value: object) -> tuple[float, float]:
    x, y = value  # type: ignore[misc]
    return float(x), float(y)


def _parse_one(number: int, text: str) -> RoiShape:
    where = f'ROI {number} ("{text}")'
    if not isinstance(text, str):
        raise RoiError(f'{where}: expected a string like "+ Polygon [[x, y], ...]"')
    match = _ROI_RE.match(text)
    if match is None:
        raise RoiError(f'{where}: must start with "+" (add) or "-" (remove), then Polygon or Ellipse')
    sign_text, kind, payload = match.groups()
    if kind not in _EXPECTED:
        raise RoiError(f'{where}: unknown shape "{kind}"; expected Polygon or Ellipse')
    sign = 1 if sign_text == "+" else -1
    try:
        value = _literal(payload)
    except ValueError:
        raise RoiError(f"{where}: cannot read the {kind} coordinates; expected {_EXPECTED[kind]}") from None

    if kind == "Polygon":
        try:
            points = np.asarray(value, dtype=np.float64)
        except (TypeError, ValueError):
            points = np.zeros((0,))
        if points.ndim != 2 or points.shape[1] != 2:
            raise RoiError(f"{where}: a Polygon needs a list of [x, y] points, {_EXPECTED['Polygon']}")
        if len(points) < 3:
            raise RoiError(f"{where}: a Polygon needs at least 3 points, got {len(points)}")
        if not np.all(np.isfinite(points)):
            raise RoiError(f"{where}: Polygon coordinates must be finite numbers")
        return RoiShape(sign, kind, points)

    if not isinstance(value, dict):
        raise RoiError(f"{where}: an Ellipse needs a dict {_EXPECTED['Ellipse']}")
    missing = [key for key in ("center", "axes", "angle") if key not in value]
    if missing:
        raise RoiError(f"{where}: Ellipse is missing {', '.join(repr(k) for k in missing)}")
    try:
        center, axes, angle = _pair(value["center"]), _pair(value["axes"]), float(value["angle"])
    except (TypeError, ValueError):
        raise RoiError(f"{where}: Ellipse center and axes must be [x, y] numbers, angle a number") from None
    if min(axes) <= 0:
        raise RoiError(f"{where}: Ellipse axes must be positive, got {list(axes)}")
    return RoiShape(sign, kind, np.zeros((0, 2)), center, axes, angle)


def parse_roi(strings: list[str]) -> list[RoiShape]:
    """Parse ROI strings (idtracker.ai syntax) into shapes; raises RoiError naming the bad entry.

    Entries are numbered from 1 in messages, as a person counts the lines of a parameter file.
    """
    return [_parse_one(i + 1, s) for i, s in enumerate(strings)]


def _polygon(shape: RoiShape) -> np.ndarray:
    if shape.kind == "Polygon":
        return np.round(shape.points).astype(np.int32)
    # Same polygonisation as idtracker.ai (ellipse2Poly, 2 degree steps) so masks agree.
    return cv2.ellipse2Poly(
        (int(round(shape.center[0])), int(round(shape.center[1]))),
        (int(round(shape.axes[0])), int(round(shape.axes[1]))),
        int(round(shape.angle)),
        0,
        360,
        2,
    )


def roi_mask(strings: list[str] | None, width: int, height: int) -> np.ndarray:
    """Boolean [height, width] mask of the pixels inside the ROI; no ROI means the whole frame."""
    if not strings:
        return np.ones((height, width), bool)
    mask = np.zeros((height, width), np.uint8)
    shape_alone = np.zeros_like(mask)
    for i, shape in enumerate(parse_roi(strings)):
        polygon = _polygon(shape)
        if shape.sign > 0:
            shape_alone[:] = 0
            cv2.fillPoly(shape_alone, [polygon], 1)
            if not shape_alone.any():
                raise RoiError(
                    f'ROI {i + 1} ("{strings[i]}"): covers no pixel of the {width}x{height} frame; '
                    "check that coordinates are (x, y) in pixels"
                )
        cv2.fillPoly(mask, [polygon], 1 if shape.sign > 0 else 0)
    if not mask.any():
        raise RoiError(f"the ROI {strings} leaves no pixel of the {width}x{height} frame to track")
    return mask.astype(bool)


def roi_regions(mask: np.ndarray) -> np.ndarray:
    """Label the connected regions of a ROI mask 0..k-1 (raster order), -1 outside.

    Each region is an exclusive arena: its animals never leave it, so identities are assigned per
    region (idtracker.ai's ``exclusive_rois``). Regions are 8-connected, like contours.
    """
    _, labels = cv2.connectedComponents(np.asarray(mask, bool).view(np.uint8), connectivity=8)
    return labels.astype(np.int32) - 1


def blob_regions(table: BlobTable, regions: np.ndarray) -> np.ndarray:
    """int32 [n] region of each blob, read at the first point of its external contour.

    Foreground is cut by the ROI before contours are traced, so a blob never spans two regions and
    any of its contour pixels names its region; the centroid would not do (a bent body's centroid
    can lie outside the body, even outside the ROI).
    """
    if len(table) == 0:
        return np.zeros(0, np.int32)
    first = table.contour_points[table.contour_offsets[:-1]]
    return regions[first[:, 1], first[:, 0]].astype(np.int32)


class RegionError(ValueError):
    """The animals per region cannot be made to agree with the number of animals."""


def blobs_per_frame_and_region(table: BlobTable, n_frames: int, n_regions: int, first_frame: int = 0) -> np.ndarray:
    """int64 [n_frames, n_regions]: how many blobs each region holds in each frame."""
    cell = (table.frame - first_frame) * n_regions + table.region
    return np.bincount(cell, minlength=n_frames * n_regions).reshape(n_frames, n_regions)


def animals_per_region(
    table: BlobTable, n_frames: int, n_regions: int, n_animals: int, given: list[int] | None = None,
    first_frame: int = 0,
) -> list[int]:
    """How many animals live in each region.

    Given counts win. Otherwise the split seen most often among frames that show all
    ``n_animals`` apart is taken: in such a frame every animal is its own blob, so the split is
    exact there, while a single frame's maximum would count debris. Without such frames (or with
    ``n_animals`` unknown, tracking without identities) each region gets the count it shows most
    often when any of its animals is visible, or its maximum when ``n_animals`` is unknown.
    Raises :class:`RegionError` naming ``animals_per_roi`` when the counts cannot sum to ``n_animals``.
    """
    if given is not None:
        if len(given) != n_regions:
            raise RegionError(f"animals_per_roi: {len(given)} counts for {n_regions} regions")
        counts = [int(c) for c in given]
    else:
        per_frame = blobs_per_frame_and_region(table, n_frames, n_regions, first_frame)
        complete = per_frame[per_frame.sum(axis=1) == n_animals] if n_animals > 0 else per_frame[:0]
        if len(complete):
            splits, times = np.unique(complete, axis=0, return_counts=True)
            counts = [int(c) for c in splits[np.argmax(times)]]
        elif n_animals <= 0:
            counts = [int(c) for c in per_frame.max(axis=0)]
        else:
            counts = [int(np.bincount(col[col > 0]).argmax()) if np.any(col > 0) else 0 for col in per_frame.T]
    if n_animals > 0 and sum(counts) != n_animals:
        raise RegionError(
            f"animals_per_roi: the regions hold {counts} animals ({sum(counts)} in all), not number_of_animals = "
            f"{n_animals}; give animals_per_roi, one count per region")
    return counts
