"""The segmenter's two tasks, free of any messaging: probe a video, and segment a chunk of it.

The probe looks at a sample of frames to fix what every chunk must share (background model,
body length, identification-image size); chunks are then independent and run on any worker.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from shoal.blobs import BlobTable, concat
from shoal.knowledge import check_compatible, model_info
from shoal.params import TrackingParams
from shoal.video import VideoInfo, read_frames, sample_frames

from .auto_thresholds import difference_threshold, minimum_area, typical_animal_area
from .crops import crop_geometry, identification_images
from .roi import blob_regions, roi_mask, roi_regions
from .segmentation import background_sample_indices, body_length, compute_background, segment_frame

#: frames looked at by the probe to estimate body length and crop size
PROBE_FRAMES = 50


class SegmentationError(Exception):
    """The parameters find nothing usable in this video; the message says what to change."""


@dataclass
class Probe:
    """What every chunk of a job shares; thresholds here are the effective ones (auto or given)."""

    body_length: float
    crop_side: int
    crop_scale: float
    intensity_ths: tuple[float, float]
    area_ths: tuple[float, float]
    background: str | None  # path of the background model (.npy) on the data volume, if subtracting
    blobs_per_frame_median: float
    warnings: list[str]
    n_regions: int = 1  # exclusive arenas (connected ROI regions) when exclusive_rois, else 1

    def to_dict(self) -> dict:
        d = dict(self.__dict__)
        d["area_ths"] = [self.area_ths[0], None if math.isinf(self.area_ths[1]) else self.area_ths[1]]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> Probe:
        lo, hi = d["area_ths"]
        return cls(**{**d, "area_ths": (lo, math.inf if hi is None else hi),
                      "intensity_ths": tuple(d["intensity_ths"])})


def tracked_frames(info: VideoInfo, params: TrackingParams) -> np.ndarray:
    intervals = params.tracking_intervals or [(0, info.n_frames)]
    return np.concatenate([np.arange(a, min(b, info.n_frames)) for a, b in intervals])


def probe(info: VideoInfo, params: TrackingParams, job_dir: Path) -> Probe:
    """Background, thresholds (when not given), body length and crop size from sampled frames."""
    frames = tracked_frames(info, params)
    roi = roi_mask(params.roi_list, info.width, info.height) if params.roi_list else None
    n_sample = max(PROBE_FRAMES, params.number_of_frames_for_background)
    picks = frames[background_sample_indices(len(frames), n_sample)]
    sample = sample_frames(info, picks)  # seeking is the slow part: one sample serves every estimate
    warnings: list[str] = []
    background_path = background = None
    intensity = params.intensity_ths
    if params.use_bkg or intensity is None:
        bkg_rows = background_sample_indices(len(picks), params.number_of_frames_for_background)
        background = compute_background(sample[bkg_rows], params.background_subtraction_stat, roi)
        background_path = job_dir / "background.npy"
        np.save(background_path, background)
    if intensity is None:
        diffs = np.abs(sample[:: max(1, len(sample) // 20)].astype(np.int16) - background.astype(np.int16))
        intensity = (round(difference_threshold(diffs[:, roi] if roi is not None else diffs), 1), 255.0)
        warnings.append(f"no intensity_ths given: background subtraction with difference > {intensity[0]:g} "
                        "chosen from the video")
    area = params.area_ths or (0.0, math.inf)

    def segment_sample(area_ths: tuple[float, float]) -> BlobTable:
        return concat([segment_frame(gray, int(i), intensity, area_ths, background, roi)
                       for i, gray in zip(picks, sample, strict=True)])

    table = segment_sample(area)
    if params.area_ths is None and len(table):
        area = (round(minimum_area(typical_animal_area(table.area, table.frame, params.number_of_animals)), 1),
                math.inf)
        table = segment_sample(area)
    if len(table) == 0:
        how = (f"background difference > {intensity[0]:g}" if background is not None
               else "intensity in [{:g}, {:g}]".format(*intensity))
        raise SegmentationError(
            f"no animals found in {len(picks)} sampled frames with {how} and area in "
            f"[{area[0]:g}, {area[1]:g}] px: adjust intensity_ths (light animals on a dark background need "
            "e.g. [150, 255]), area_ths, the ROI, or try background subtraction (--bkg)")
    counts = np.bincount(np.searchsorted(picks, table.frame), minlength=len(picks))
    n = params.number_of_animals or int(np.bincount(counts).argmax())
    if params.number_of_animals:
        over = float(np.mean(counts > n))
        if over > 0.5:
            raise SegmentationError(
                f"{over:.0%} of sampled frames have more blobs than the {n} animals: the thresholds catch "
                "debris or reflections; raise area_ths' minimum, narrow intensity_ths or set a ROI")
        if over > 0:
            warnings.append(f"{over:.1%} of sampled frames have more blobs than animals (debris or reflections?)")
        if not np.any(counts == n):
            warnings.append(f"no sampled frame shows all {n} animals apart; identities may be harder to learn")
    length = body_length(table, n)
    side, scale = crop_geometry(length, params.id_image_size, params.resolution_reduction)
    if params.knowledge_transfer_folder:  # fail now, not after segmenting the whole video
        check_compatible(model_info(params.knowledge_transfer_folder), side, params.number_of_animals)
    n_regions = 1
    if params.exclusive_rois and roi is not None:
        n_regions = int(roi_regions(roi).max()) + 1
        if params.animals_per_roi is not None and len(params.animals_per_roi) != n_regions:
            raise SegmentationError(
                f"animals_per_roi: {len(params.animals_per_roi)} counts given but the ROI has {n_regions} "
                "separate regions (exclusive arenas); give one count per region, in raster order of their top")
        if n_regions == 1:
            warnings.append("exclusive_rois: the ROI is one connected region, so there is a single arena")
    return Probe(length, side, scale, tuple(intensity), area, str(background_path) if background_path else None,
                 float(np.median(counts)), warnings, n_regions)


def segment_chunk(
    info: VideoInfo,
    params: TrackingParams,
    probe: Probe,
    start: int,
    stop: int,
) -> tuple[BlobTable, np.ndarray]:
    """Blob table and identification images (uint8 [n, s, s], same row order) of frames [start, stop)."""
    roi = roi_mask(params.roi_list, info.width, info.height) if params.roi_list else None
    regions = roi_regions(roi) if params.exclusive_rois and roi is not None else None
    background = np.load(probe.background) if probe.background else None
    tables, crops = [], []
    for index, gray in read_frames(info, start, stop):
        table = segment_frame(gray, index, probe.intensity_ths, probe.area_ths, background, roi)
        if regions is not None:
            table.region = blob_regions(table, regions)
        tables.append(table)
        crops.append(identification_images(gray, table, np.arange(len(table)), probe.crop_side, probe.crop_scale))
    side = probe.crop_side
    images = np.concatenate(crops) if crops else np.zeros((0, side, side), np.uint8)
    return concat(tables), images

