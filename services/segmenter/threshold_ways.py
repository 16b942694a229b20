"""Ways of thresholding a grey frame into foreground, and the thresholds worth trying for each.

A way turns a frame into a strength image whose pixels above a threshold are foreground: raw
intensity (``dark``: 255 - pixel, ``light``: pixel) or distance to the background model (either
side, only darker, only lighter); ``extremes`` is dark or light at a pair of thresholds, for a
white and a black animal together. ``threshold_grids`` reads the thresholds to try from histograms
of the sampled frames; ``areas_per_threshold`` gives, per threshold, each frame's blob areas, which
is all the search in ``auto_thresholds`` scores.
"""

from __future__ import annotations

import cv2
import numpy as np

#: a threshold sits at least this many noise standard deviations above the background
MIN_NOISE_SIGMAS = 6.0
#: no blob is smaller than this (pixels)
MIN_AREA = 4.0
#: a blob covering more than this share of the ROI is background or a wall, never an animal
GIANT_SHARE = 0.25
#: thresholds stop this far from the floor towards the animals' typical contrast (whole animals, not cores)
COMPLETE_FRACTION = 0.55
#: thresholds tried per way of thresholding
GRID_SIZE = 18
#: raw thresholds start beyond this share of the ROI's pixels (the floor, however unevenly lit)
FLOOR_SHARE = 0.9
#: light-animal thresholds are tried up to this fraction of the way from the floor to the brightest pixels
RAW_REACH = 0.8
#: thresholds tried per side when both extremes are foreground (a grid of pairs)
PAIR_GRID_SIZE = 6

#: name -> (subtracts the background, sign: -1 darker, +1 lighter, 0 either side)
WAYS = {"difference": (True, 0), "darker": (True, -1), "lighter": (True, 1), "dark": (False, 0), "light": (False, 0),
        "extremes": (False, 0)}


def strength(way: str, gray: np.ndarray, background: np.ndarray | None, roi_u8: np.ndarray | None) -> np.ndarray:
    """uint8 image whose values above a threshold are the foreground of ``way``; 0 outside the ROI."""
    if way == "dark":
        s = cv2.bitwise_not(gray)
    elif way == "light":
        s = gray
    elif way == "difference":
        s = cv2.absdiff(background, gray)
    elif way == "darker":
        s = cv2.subtract(background, gray)
    else:
        s = cv2.subtract(gray, background)
    return cv2.bitwise_and(s, roi_u8) if roi_u8 is not None else s


def foreground(way: str, threshold, gray: np.ndarray, background, roi_u8) -> np.ndarray:
    """Foreground of ``way`` at ``threshold`` (a (dark, light) pair for both extremes), 0/255."""
    if way == "extremes":
        dark, light = threshold
        return cv2.bitwise_or(foreground("dark", dark, gray, background, roi_u8),
                              foreground("light", light, gray, background, roi_u8))
    return cv2.threshold(strength(way, gray, background, roi_u8), float(threshold), 255, cv2.THRESH_BINARY)[1]


def blob_areas(mask: np.ndarray) -> np.ndarray:
    """Filled pixel counts of the mask's external contours of at least MIN_AREA, in decreasing order.

    Pick's theorem turns a contour's polygon area and boundary pixels into the pixel count of the
    filled blob (exact for simple outlines), without filling anything.
    """
    contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    if not contours:
        return np.zeros(0)
    lengths = np.fromiter(map(len, contours), np.int64, len(contours))
    big = np.flatnonzero(lengths >= 4)
    areas = np.array([cv2.contourArea(contours[i]) for i in big]) + lengths[big] / 2 + 1
    return -np.sort(-areas[areas >= MIN_AREA])


def threshold_grids(frames, background, roi_u8, use_bkg) -> dict[str, tuple[np.ndarray, float]]:
    """Thresholds to try and the animals' contrast for each way, from histograms of the sampled frames.

    Each way runs from a few noise s.d. past the floor to COMPLETE_FRACTION of the animals' typical
    contrast (the median strength of pixels far above the noise): stricter thresholds separate
    touching animals better but keep only their cores, and identification images need whole
    animals. A signed way is tried only when both sides of the background show contrast (else it is
    "difference"); a way without contrast above its noise is not tried.
    """
    names = ["difference", "darker", "lighter"] if background is not None else []
    if not use_bkg:
        names += ["dark", "light"]
    stats = {}
    for way in names:
        hist = np.zeros(256)
        peaks = []
        for gray in frames:
            s = strength(way, gray, background, roi_u8)
            hist += histogram(s, roi_u8)
            peaks.append(cv2.minMaxLoc(s, roi_u8)[1])
        stats[way] = (hist, float(np.median(peaks)))
    grids = {}
    sigma = max(1.4826 * histogram_median(stats["difference"][0]), 0.5) if background is not None else None
    if background is not None:
        low = max(2.5 * sigma, 3.0)
        sides = {w: stats[w][1] >= max(MIN_NOISE_SIGMAS * sigma, low + 6) for w in ("darker", "lighter")}
        for way in ("difference", "darker", "lighter"):
            if way == "difference" or all(sides.values()):
                contrast = typical_contrast(stats[way][0], 0.0, MIN_NOISE_SIGMAS * sigma)
                grids[way] = (grid(low, COMPLETE_FRACTION * contrast), contrast)
    ends = {}  # dark, light: (low, high, contrast) as the two ends of both extremes
    for way in ("dark", "light"):
        if way in stats:
            hist, peak = stats[way]
            level = histogram_median(hist)
            spread = np.abs(np.arange(256) - level)
            order = np.argsort(spread)
            mad = spread[order][np.searchsorted(np.cumsum(hist[order]), hist.sum() / 2)]  # noise and uneven light
            noise = sigma if sigma is not None else 1.4826 * mad
            cumulative = np.cumsum(hist)
            floor_top = float(np.searchsorted(cumulative, FLOOR_SHARE * cumulative[-1]))  # darkest/lightest floor
            low = max(level + 3 * noise, floor_top + 2 * noise, level + 3.0, level + 0.05 * (peak - level))
            contrast = typical_contrast(hist, level, max(MIN_NOISE_SIGMAS * noise, 3 * mad, 6.0))
            # light animals on a dark floor share it with lighter mesh, hair or glare: only thresholds
            # near the animals' own level isolate them, so those go most of the way to the brightest
            # pixels. Dark animals keep the short reach: deep into the dark, fish show only their markings
            whole, reach = COMPLETE_FRACTION * contrast, RAW_REACH * (peak - level)
            grids[way] = (grid(low, level + (max(whole, reach) if way == "light" else whole)), contrast)
            ends[way] = (low, level + max(whole, reach), contrast)
    grids = {w: g for w, g in grids.items() if len(g[0])}
    if len(ends) == 2 and all(high >= low + 3 for low, high, _ in ends.values()):
        # a white and a black animal, each at its own level: both ends reach far, in a grid of pairs
        dark, light = (np.linspace(low, high, PAIR_GRID_SIZE).round() for low, high, _ in ends.values())
        grids["extremes"] = ([(float(d), float(t)) for d in dark for t in light], min(c for *_, c in ends.values()))
    return grids


def histogram(image: np.ndarray, roi_u8: np.ndarray | None) -> np.ndarray:
    """256 counts of the values of every other row and column inside the ROI (plenty for quantiles)."""
    mask = roi_u8[::2, ::2] if roi_u8 is not None else None
    return cv2.calcHist([np.ascontiguousarray(image[::2, ::2])], [0], mask, [256], [0, 256]).ravel()


def typical_contrast(hist: np.ndarray, level: float, floor: float) -> float:
    """The animals' typical contrast: median strength above ``level`` (the floor's strength) of the
    pixels more than 2 ``floor`` above it; 0 if there are none."""
    strong = hist.copy()
    strong[: min(int(level + 2 * floor) + 1, 256)] = 0
    return histogram_median(strong) - level if strong.sum() else 0.0


def grid(low: float, high: float) -> np.ndarray:
    """Whole-number thresholds (foreground is > t) from low to high, at most GRID_SIZE of them."""
    if high < low + 3:
        return np.zeros(0)
    return np.unique(np.round(np.linspace(low, high, GRID_SIZE)))


def areas_per_threshold(frames, background, roi_u8, roi_area, way, thresholds) -> list[list[np.ndarray]]:
    """For each threshold, per frame the blob areas in decreasing order (a flooded frame: one giant blob)."""
    found = [[] for _ in thresholds]
    flood = GIANT_SHARE * roi_area
    pairs = way == "extremes"  # thresholds are (dark, light) pairs; the strength images are made once per frame
    for gray in frames:
        images = [strength(side, gray, background, roi_u8) for side in (("dark", "light") if pairs else (way,))]
        empty = False
        for j, t in enumerate(thresholds):
            if empty:  # higher thresholds of an empty mask are empty too
                found[j].append(np.zeros(0))
                continue
            masks = [cv2.threshold(s, float(v), 255, cv2.THRESH_BINARY)[1]
                     for s, v in zip(images, t if pairs else (t,), strict=True)]
            mask = cv2.bitwise_or(*masks) if pairs else masks[0]
            lit = cv2.countNonZero(mask)
            if lit > 2 * flood:
                found[j].append(np.array([float(lit)]))
                continue
            areas = blob_areas(mask)
            empty = len(areas) == 0 and not pairs  # pairs are not ordered: an empty one says nothing of the next
            found[j].append(areas)
    return found


def histogram_median(histogram: np.ndarray) -> float:
    cumulative = np.cumsum(histogram)
    return float(np.searchsorted(cumulative, cumulative[-1] / 2))
