"""Segmentation chosen from the video when the user gives no thresholds, or only some of them.

idtracker.ai asks the user to set the thresholds in its segmentation window: they try dark or light
animals, with or without the background, move the sliders until the frames show the N animals as N
blobs, and narrow the area range until debris is gone. Shoal does the same as a search over the
probe's sampled frames. Each candidate is a way of thresholding (raw intensity with dark animals
``[0, t]``, light animals ``[t, 255]`` or both extremes ``[0, t1]`` and ``[t2, 255]``, for a white
and a black mouse on grey bedding; distance to the background model, on either side or only
darker or only lighter, which drops a light animal's dark shadow and debris of the other sign) at
one threshold (a pair for both extremes), with the area range that suits it (a floor between debris
and the animals, a ceiling that no group of animals reaches). The winner makes the most sampled
frames show exactly N blobs of similar areas; per way, the middle of the best plateau of thresholds
is kept (a stable choice). Raw thresholds, fragile under uneven light, must do clearly better than
the background ones (as when animals sit still) and must find the animals that the background shows
moving. Both extremes are searched only when no way shows the N animals in most frames, and must
beat one extreme alone clearly: otherwise they only add debris of the other sign. What the user
gave is kept; only the rest is searched.

Speed: candidates are scored on every other sampled frame (fewer on large frames) by contour
tracing alone, areas from Pick's theorem; each way's pick is then scored on every sampled frame.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import cv2
import numpy as np

from shoal.segmentation import foreground_mask

from .threshold_ways import (
    GIANT_SHARE,
    MIN_AREA,
    MIN_NOISE_SIGMAS,
    PAIR_GRID_SIZE,
    WAYS,
    areas_per_threshold,
    blob_areas,
    foreground,
    histogram,
    histogram_median,
    strength,
    threshold_grids,
)

#: today's fallback (no number of animals): the threshold sits this far towards the animals' contrast
CONTRAST_FRACTION = 0.4
#: blobs smaller than this fraction of a typical animal are noise (the fallback's floor)
MIN_AREA_FRACTION = 0.15
#: floors tried between debris and animals, as fractions of a typical animal's area
AREA_FRACTIONS = (0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.6)
#: pixels (frames x ROI area) scored per candidate in the first round, and at most this many frames
SEARCH_PIXELS = 20e6
SEARCH_FRAMES = 25
#: raw blobs this many times larger or smaller than the moving animals that the background shows are
#: something else (a dark corner, a wall)
AREA_RATIO = 2.0
#: each animal's blob varies less than this in area (coefficient of variation per size rank); more costs score
MAX_AREA_CV = 0.35
#: a background way that shows N blobs this well witnesses against raw blobs of another size or place
WITNESS_SCORE = 0.25
#: ... unless the raw threshold shows the N animals in this share of the frames, with consistent sizes,
#: and beats the witness by DECISIVE_MARGIN or misses the animals in at most a third as many frames:
#: then the background way found shadows, ghosts of animals that sat still (a spider that never
#: moves), or compression noise (light flies on a dark mesh)
DECISIVE_EXACT = 0.9
DECISIVE_MARGIN = 0.2
#: ... and two in five of its blobs have moved by more than MIN_MOVE px from one sampled frame to the next
MOVING_PERCENTILE = 60
#: ... or, for both extremes, one in twenty (animals that rest most of the time, as a white and a black mouse)
RESTING_PERCENTILE = 95
MIN_MOVE = 3.0
#: a background way scoring less than this cannot tell still animals from steady dark patches (both extremes)
STRONG_WITNESS = 0.8
#: raw thresholds are chosen over background ones only when they score this much better
RAW_MARGIN = 0.1
#: scores this close count as equal
TIE = 0.02


@dataclass(frozen=True)
class Segmentation:
    """A segmentation in ``segment_frame``'s terms, and how well it fits the sampled frames."""

    intensity_ths: tuple[float, float]
    area_ths: tuple[float, float]
    background: bool  # thresholds apply to the distance to the background model
    sign: int = 0  # with background: -1 darker than it, +1 lighter, 0 either side
    exact_share: float = 0.0  # share of the sampled frames with exactly N blobs (search estimate)

    def describe(self) -> str:
        """e.g. "background difference > 23, area [40, 900] px" (the terms of --intensity/--area)."""
        lo, hi = self.intensity_ths
        if self.background:
            how = {0: "background difference", -1: "darker than the background by", 1: "lighter than the "
                   "background by"}[self.sign] + f" > {lo:g}"
        elif lo > hi:
            how = f"intensity in [0, {hi:g}] or [{lo:g}, 255]"
        else:
            how = f"intensity in [{lo:g}, {hi:g}]"
        amin, amax = self.area_ths
        return f"{how}, area [{amin:g}, {'inf' if math.isinf(amax) else f'{amax:g}'}] px"


@dataclass
class _Candidate:
    way: str
    threshold: float | tuple[float, float]  # foreground is strength > threshold; extremes: (dark, light)
    areas: list[np.ndarray]  # per frame, blob areas in decreasing order
    score: float = 0.0
    exact: float = 0.0
    area_ths: tuple[float, float] = (0.0, math.inf)
    cv: float = 0.0
    typical: float = 0.0  # median area of the n largest blobs per frame

    def segmentation(self) -> Segmentation:
        background, sign = WAYS[self.way]
        t = self.threshold
        if self.way == "extremes":  # a range that wraps: lighter than t[1] or darker than 255 - t[0]
            intensity = (t[1] + 1.0, 254.0 - t[0])
        else:
            intensity = {"dark": (0.0, 254.0 - t), "light": (t + 1.0, 255.0)}.get(self.way, (t, 255.0))
        return Segmentation(intensity, self.area_ths, background, sign, self.exact)


def choose_segmentation(
    frames: np.ndarray,
    n_animals: int,
    background: np.ndarray | None,
    roi: np.ndarray | None = None,
    intensity_ths: tuple[float, float] | None = None,
    use_bkg: bool = False,
    area_ths: tuple[float, float] | None = None,
) -> Segmentation:
    """The segmentation that makes the most ``frames`` (grey [k, H, W]) show exactly ``n_animals`` blobs.

    ``background`` is needed unless intensity_ths is given without use_bkg. Given thresholds are
    kept. Without a number of animals (0) there is nothing to count: the fallback is background
    difference at a fraction of the animals' contrast (``contrast_segmentation``).
    """
    frames, background, roi = _crop_to_roi(frames, background, roi)
    roi_area = float(roi.sum()) if roi is not None else float(frames[0].size)
    roi_u8 = roi.view(np.uint8) * np.uint8(255) if roi is not None else None
    step = max(1, len(frames) // min(SEARCH_FRAMES, max(8, int(SEARCH_PIXELS / roi_area))))
    search_rows = np.arange(0, len(frames), step)
    if intensity_ths is not None:  # only the area range is searched
        areas = [blob_areas(foreground_mask(gray, intensity_ths, background if use_bkg else None, roi))
                 for gray in frames]
        if n_animals <= 0:
            typical = typical_animal_area([a[a <= GIANT_SHARE * roi_area] for a in areas], 0)
            return Segmentation(tuple(intensity_ths), (round(max(MIN_AREA_FRACTION * typical, MIN_AREA), 1),
                                                       math.inf), use_bkg)
        best = _fit(_Candidate("given", intensity_ths[0], areas), n_animals, roi_area, area_ths)
        return Segmentation(tuple(intensity_ths), best.area_ths, use_bkg, 0, best.exact)
    if n_animals <= 0:
        return contrast_segmentation(frames, background, roi, area_ths)
    ways = threshold_grids(frames[search_rows], background, roi_u8, use_bkg)
    finals = []
    moving = None  # the best background way's fit: the size of the animals that move
    for way, (grid, contrast) in ways.items():  # per way, the middle of its best plateau of thresholds
        if way == "extremes" and max((c.exact for c, _ in finals), default=0.0) >= DECISIVE_EXACT:
            continue  # one side already shows the animals
        found = areas_per_threshold(frames[search_rows], background, roi_u8, roi_area, way, grid)
        row = [_fit(_Candidate(way, t if way == "extremes" else float(t), areas), n_animals, roi_area, area_ths)
               for t, areas in zip(grid, found, strict=True)]
        witness = not WAYS[way][0] and moving is not None and moving.score >= WITNESS_SCORE
        if witness:
            for c in row:  # raw blobs must be the animals the background shows, not dark corners or walls
                if not 1 / AREA_RATIO <= c.typical / moving.typical <= AREA_RATIO and not (
                        _decisive(c, moving) and _animal_like(frames[search_rows], background, roi_u8, c, moving)):
                    c.score = 0.0
        pick = _plateau_middle_2d(row, PAIR_GRID_SIZE) if way == "extremes" else _plateau_middle(row)
        if witness:
            # a decisive raw threshold must still show something that moves: four dark corners are four
            # steady blobs in every frame, and none of them is an animal
            if _decisive(pick, moving):
                if not _animal_like(frames[search_rows], background, roi_u8, pick, moving):
                    continue
            elif _covered_share(frames[search_rows], background, roi_u8, moving, pick) < 0.5:
                continue
        areas = areas_per_threshold(frames, background, roi_u8, roi_area, way, [pick.threshold])[0]
        full = _fit(_Candidate(way, pick.threshold, areas), n_animals, roi_area, area_ths)
        full.score = 0.5 * full.score + 0.5 * pick.score
        finals.append((full, contrast))
        if WAYS[way][0] and (moving is None or full.score > moving.score):
            moving = full
    one_side = max((c.score for c, _ in finals if c.way in ("dark", "light")), default=0.0)
    finals = [(c, contrast) for c, contrast in finals if c.way != "extremes" or c.score >= one_side + RAW_MARGIN]
    legacy = _legacy_candidate(frames, background, roi_u8, roi_area, n_animals, area_ths)
    if not finals:
        return legacy.segmentation()
    # Raw thresholds must do clearly better (animals that sit still, which the background model holds):
    # they are fragile under uneven light. Near ties: background ways first; among them, and among
    # raw ones, the animals are the strongest contrast (not their shadows, not debris).
    for c, _ in finals:
        c.score -= 0.0 if WAYS[c.way][0] else RAW_MARGIN
    top = max(c.score for c, _ in finals)
    ties = [(c, contrast) for c, contrast in finals if c.score >= top - TIE]
    group = [(c, contrast) for c, contrast in ties if WAYS[c.way][0]] or ties
    strongest = max(contrast for _, contrast in group)
    chosen = min((c for c, contrast in group if contrast >= strongest / 1.5), key=lambda c: list(WAYS).index(c.way))
    if legacy is not None and legacy.exact > chosen.exact:  # never worse than the contrast rule on these frames
        chosen = legacy
    return chosen.segmentation()


def _decisive(raw: _Candidate, moving: _Candidate) -> bool:
    """A raw candidate good enough to overrule the background way that witnesses against it: clearly
    better, or missing the N animals in at most a third as many frames."""
    return raw.exact >= DECISIVE_EXACT and raw.cv <= MAX_AREA_CV and (
        raw.score >= moving.score + DECISIVE_MARGIN or 1 - raw.exact <= (1 - moving.exact) / 3)


def _animal_like(frames, background, roi_u8, raw: _Candidate, moving: _Candidate) -> bool:
    """Whether a decisive raw candidate shows animals, not steady dark corners: its blobs move. Both
    extremes, tried only when nothing else shows the N animals, may show animals that rest most of the
    time: each side must show animal-sized blobs, and then one in twenty of them moving will do, or
    blobs that hold the parts of the animals that the background shows (whole resting animals around
    the traces of their last moves); a background way that shows the animals in few frames (animals
    that hardly move in a short clip) cannot witness against them at all."""
    if raw.way != "extremes":
        return _moves(frames, background, roi_u8, raw)
    if not _both_sides(frames, roi_u8, raw):
        return False
    if moving.score < STRONG_WITNESS:  # still animals and steady objects look alike to a weak witness
        return True
    return _moves(frames, background, roi_u8, raw, RESTING_PERCENTILE) or _covered_share(
        frames, background, roi_u8, moving, raw) >= 0.5


def _both_sides(frames, roi_u8, c: _Candidate) -> bool:
    """Whether both extremes of ``c`` show animal-sized blobs in most frames: one side alone (four dark
    corners with nothing lighter) is a one-sided way, judged as such."""
    for side, t in zip(("dark", "light"), c.threshold, strict=True):
        counts = [np.count_nonzero((a >= c.area_ths[0]) & (a <= c.area_ths[1]))
                  for a in areas_per_threshold(frames, None, roi_u8, math.inf, side, [t])[0]]
        if np.median(counts) < 1:
            return False
    return True


def _moves(frames, background, roi_u8, c: _Candidate, percentile: float = MOVING_PERCENTILE) -> bool:
    """Whether blobs of ``c`` are often elsewhere in the next sampled frame (animals move; corners do not)."""
    centres = []
    for gray in frames:
        mask = foreground(c.way, c.threshold, gray, background, roi_u8)
        _, _, stats, cents = cv2.connectedComponentsWithStats(mask, connectivity=8)
        keep = (stats[1:, cv2.CC_STAT_AREA] >= c.area_ths[0]) & (stats[1:, cv2.CC_STAT_AREA] <= c.area_ths[1])
        centres.append(cents[1:][keep])
    shifts = [np.min(np.linalg.norm(a[:, None] - b[None], axis=2), axis=1)
              for a, b in zip(centres[:-1], centres[1:], strict=True) if len(a) and len(b)]
    return bool(shifts) and float(np.percentile(np.concatenate(shifts), percentile)) > MIN_MOVE


def _covered_share(frames, background, roi_u8, moving: _Candidate, raw: _Candidate) -> float:
    """Share of the blobs of ``moving`` (a background way) whose centre is foreground for ``raw``."""
    inside = total = 0
    for gray in frames:
        mask = foreground(moving.way, moving.threshold, gray, background, roi_u8)
        raw_mask = foreground(raw.way, raw.threshold, gray, background, roi_u8)
        contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        for contour in contours:
            m = cv2.moments(contour)
            if m["m00"] > 0 and moving.area_ths[0] <= m["m00"] <= moving.area_ths[1]:
                total += 1
                inside += raw_mask[int(m["m01"] / m["m00"]), int(m["m10"] / m["m00"])] > 0
    return inside / total if total else 1.0


def _plateau_middle(row: list[_Candidate]) -> _Candidate:
    """Stability: scores smoothed along the thresholds, then the middle of the run of thresholds
    within TIE of the best (not its edge, where one step more merges or loses animals)."""
    scores = [c.score for c in row]
    smooth = [(scores[max(j - 1, 0)] + 2 * scores[j] + scores[min(j + 1, len(row) - 1)]) / 4 for j in range(len(row))]
    best = int(np.argmax(smooth))
    lo = hi = best
    while lo > 0 and smooth[lo - 1] >= smooth[best] - TIE:
        lo -= 1
    while hi < len(row) - 1 and smooth[hi + 1] >= smooth[best] - TIE:
        hi += 1
    middle = row[(lo + hi) // 2]
    middle.score = smooth[(lo + hi) // 2]
    return middle


def _plateau_middle_2d(grid: list[_Candidate], width: int) -> _Candidate:
    """``_plateau_middle`` on a grid of threshold pairs in row-major order, ``width`` to a row (both
    extremes): scores smoothed over each pair's neighbours, then the pair within TIE of the best that
    lies nearest the middle of all such pairs."""
    scores = np.array([c.score for c in grid]).reshape(-1, width)
    padded = np.pad(scores, 1, mode="edge")
    kernel = np.array([[1, 2, 1], [2, 4, 2], [1, 2, 1]]) / 16
    smooth = sum(kernel[i, j] * padded[i:i + scores.shape[0], j:j + width] for i in range(3) for j in range(3))
    near = np.argwhere(smooth >= smooth.max() - TIE)
    middle = near[np.argmin(np.linalg.norm(near - near.mean(axis=0), axis=1))]
    pick = grid[int(middle[0]) * width + int(middle[1])]
    pick.score = float(smooth[tuple(middle)])
    return pick


def contrast_segmentation(
    frames: np.ndarray, background: np.ndarray, roi: np.ndarray | None, area_ths: tuple[float, float] | None = None
) -> Segmentation:
    """Background difference at CONTRAST_FRACTION of the animals' contrast, floor MIN_AREA_FRACTION of
    a typical blob: the rule for when the number of animals is unknown."""
    frames, background, roi = _crop_to_roi(frames, background, roi)
    roi_u8 = roi.view(np.uint8) * np.uint8(255) if roi is not None else None
    roi_area = float(roi.sum()) if roi is not None else float(frames[0].size)
    return _legacy_candidate(frames, background, roi_u8, roi_area, 0, area_ths).segmentation()


def difference_threshold(histogram: np.ndarray) -> float:
    """Threshold on ``|background - frame|`` from its histogram (256 counts) over sampled frames.

    The noise s.d. comes from the median absolute difference (almost all pixels are background);
    pixels far above the noise are animals, and the threshold is a fraction of their median
    contrast, so blurred edges are split halfway rather than at the noise floor.
    """
    histogram = np.asarray(histogram, np.float64)
    sigma = max(1.4826 * histogram_median(histogram), 0.5)
    floor = MIN_NOISE_SIGMAS * sigma
    strong = histogram.copy()
    strong[: int(math.floor(2 * floor)) + 1] = 0
    if strong.sum() == 0:
        return floor
    return max(floor, CONTRAST_FRACTION * histogram_median(strong))


def typical_animal_area(areas: list[np.ndarray], n_animals: int) -> float:
    """Median area of the ``n_animals`` largest blobs of each frame (areas in decreasing order per
    frame); of all blobs of at least a tenth of the largest if n is unknown (0)."""
    if n_animals <= 0:
        every = np.concatenate(areas) if areas else np.zeros(0)
        return float(np.median(every[every >= 0.1 * every.max()])) if len(every) else 0.0
    top = np.concatenate([a[:n_animals] for a in areas]) if areas else np.zeros(0)
    return float(np.median(top)) if len(top) else 0.0


def _crop_to_roi(frames, background, roi):
    """Views of the ROI's bounding box: pixels outside it are never foreground."""
    if roi is None:
        return frames, background, None
    roi = np.asarray(roi, bool)
    ys, xs = np.nonzero(roi.any(axis=1))[0], np.nonzero(roi.any(axis=0))[0]
    if len(ys) == 0:
        return frames[:, :0, :0], None if background is None else background[:0, :0], roi[:0, :0]
    box = (slice(ys[0], ys[-1] + 1), slice(xs[0], xs[-1] + 1))
    return frames[(slice(None), *box)], None if background is None else background[box], np.ascontiguousarray(
        roi[box])


def _credit(counts: np.ndarray, n: int) -> np.ndarray:
    """Per frame: 1 for exactly n blobs; less for merged animals (n-1 half, ...), less still for extra blobs."""
    counts = np.asarray(counts, np.float64)
    fewer = (counts / n) * 0.5 ** np.clip(n - counts, 0, 60)
    more = 0.25 ** np.clip(counts - n, 0, 30)
    return np.where(counts == n, 1.0, np.where(counts < n, fewer, more))


def _fit(c: _Candidate, n: int, roi_area: float, area_ths) -> _Candidate:
    """The candidate with its area range (given, or the floor that best shows n blobs) and scores."""
    giant = GIANT_SHARE * roi_area
    c.typical = typical = typical_animal_area([a[a <= giant] for a in c.areas], n)
    if area_ths is not None:
        ranges = [tuple(area_ths)]
    else:
        if typical <= 0:
            c.score = c.exact = 0.0
            return c
        ceiling = min((n + 1) * typical, giant)
        # animals may differ in size (a female orb-weaver is 25 times her male): floors below the
        # smallest animal too, the n-th largest blob of the frames that show at least n
        smallest = [a[n - 1] for a in c.areas if n - 1 < len(a) and a[n - 1] <= giant]
        bases = {typical, float(np.median(smallest))} if smallest else {typical}
        ranges = sorted({(round(max(MIN_AREA, f * base), 1), round(ceiling, 1)) for base in bases
                         for f in AREA_FRACTIONS})
    tried = []
    for amin, amax in ranges:
        counts = np.array([np.count_nonzero((a >= amin) & (a <= amax)) for a in c.areas])
        tried.append((float(np.mean(_credit(counts, n))), (amin, amax), counts))
    top = max(t[0] for t in tried)
    ties = [t for t in tried if t[0] >= top - 1e-9]
    credit, (amin, amax), counts = ties[len(ties) // 2]  # the middle of equally good floors
    exact_frames = [a[(a >= amin) & (a <= amax)] for a, k in zip(c.areas, counts, strict=True) if k == n]
    # per size rank (largest blob of each frame, second largest, ...): animals may differ in size, as a
    # female and a male do, but each keeps hers from frame to frame
    ranks = np.array(exact_frames) if exact_frames else np.zeros((0, n))
    c.cv = float(np.mean(ranks.std(axis=0) / ranks.mean(axis=0))) if len(ranks) > 1 else 0.0
    c.area_ths, c.exact = (amin, amax), float(np.mean(counts == n))
    c.score = credit - max(0.0, c.cv - MAX_AREA_CV)
    return c


def _legacy_candidate(frames, background, roi_u8, roi_area, n, area_ths) -> _Candidate | None:
    """Background difference at a fraction of the contrast, floor at a fraction of a typical blob."""
    if background is None:
        return None
    hist = sum(histogram(strength("difference", gray, background, roi_u8), roi_u8)
               for gray in frames[:: max(1, len(frames) // 20)])
    threshold = round(difference_threshold(hist), 1)
    c = _Candidate("difference", threshold, areas_per_threshold(frames, background, roi_u8, roi_area, "difference",
                                                                 [threshold])[0])
    if area_ths is None:
        typical = typical_animal_area(c.areas, n)
        area_ths = (round(max(MIN_AREA_FRACTION * typical, MIN_AREA), 1), math.inf)
    return _fit(c, n, roi_area, area_ths) if n > 0 else replace(c, area_ths=tuple(area_ths))

