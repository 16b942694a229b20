"""Thresholds chosen from the video when the user gives none.

idtracker.ai asks the user for intensity and area thresholds in its GUI. Shoal's default is to
subtract a background (median of sampled frames) and read both thresholds off the video itself, so
that a lab's first run works on a new setup and the method adapts to the contrast, noise and animal
size of each video instead of relying on constants tuned to one kind of recording.
"""

from __future__ import annotations

import numpy as np

#: the foreground threshold sits this far from the background towards the animals' typical contrast
CONTRAST_FRACTION = 0.4
#: and at least this many noise standard deviations above the background
MIN_NOISE_SIGMAS = 6.0
#: blobs smaller than this fraction of a typical animal are noise
MIN_AREA_FRACTION = 0.15


def difference_threshold(differences: np.ndarray) -> float:
    """Threshold on ``|background - frame|`` values (uint8 array, any shape) of sampled frames.

    The noise s.d. comes from the median absolute difference (almost all pixels are background);
    pixels far above the noise are animals, and the threshold is a fraction of their median
    contrast, so blurred edges are split halfway rather than at the noise floor.
    """
    d = np.asarray(differences, np.float64).ravel()
    sigma = max(1.4826 * float(np.median(d)), 0.5)
    floor = MIN_NOISE_SIGMAS * sigma
    strong = d[d > 2 * floor]
    if len(strong) == 0:
        return floor
    return max(floor, CONTRAST_FRACTION * float(np.median(strong)))


def typical_animal_area(areas: np.ndarray, frames: np.ndarray, n_animals: int) -> float:
    """Median area of the ``n_animals`` largest blobs of each frame (all blobs if n is unknown)."""
    areas = np.asarray(areas, np.float64)
    if len(areas) == 0:
        return 0.0
    if n_animals <= 0:
        return float(np.median(areas[areas >= 0.1 * areas.max()]))
    order = np.lexsort((-areas, frames))
    sorted_frames = np.asarray(frames)[order]
    rank = np.arange(len(order)) - np.searchsorted(sorted_frames, sorted_frames)
    return float(np.median(areas[order][rank < n_animals]))


def minimum_area(typical_area: float) -> float:
    return max(MIN_AREA_FRACTION * typical_area, 4.0)
