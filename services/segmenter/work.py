"""The segmenter's two tasks, free of any messaging: probe a video, and segment a chunk of it.

The probe looks at a sample of frames to fix what every chunk must share (background model,
body length, identification-image size); chunks are then independent and run on any worker.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np

from shoal.blobs import BlobTable, concat
from shoal.knowledge import check_compatible, model_info
from shoal.params import TrackingParams
from shoal.roi import RegionError, animals_per_region, blob_regions, roi_mask, roi_regions
from shoal.segmentation import background_sample_indices, body_length, compute_background, segment_frame
from shoal.video import VideoError, VideoInfo, damage_message, decode_sample, read_frames

from .auto_thresholds import Segmentation, choose_segmentation
from .crops import crop_geometry, identification_images
from .threshold_ways import GIANT_SHARE

#: frames looked at by the probe to estimate body length and crop size
PROBE_FRAMES = 50
#: a warning when the decoder reports errors in at least this share of the sampled frames
DAMAGED_SHARE = 0.1


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
    background_sign: int = 0  # with a background: -1 animals darker than it, +1 lighter, 0 either side
    exact_share: float | None = None  # share of sampled frames with exactly number_of_animals blobs
    #: animals the job tracks (as given, or the sum of ``animals_per_region``); 0 when only the whole
    #: video can tell (tracking without identities and no number given): the assembler then counts
    n_animals: int = 0
    animals_per_region: list[int] | None = None  # with exclusive_rois: as given, or seen in the sample

    def to_dict(self) -> dict:
        d = dict(self.__dict__)
        d["area_ths"] = [self.area_ths[0], None if math.isinf(self.area_ths[1]) else self.area_ths[1]]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> Probe:
        """From ``to_dict``'s dict; keys of other versions are ignored and missing optional ones defaulted."""
        known = {f.name for f in fields(cls)}
        lo, hi = d["area_ths"]
        return cls(**{**{k: v for k, v in d.items() if k in known}, "area_ths": (lo, math.inf if hi is None else hi),
                      "intensity_ths": tuple(d["intensity_ths"])})


def tracked_frames(info: VideoInfo, params: TrackingParams) -> np.ndarray:
    intervals = params.tracking_intervals or [(0, info.n_frames)]
    return np.concatenate([np.arange(a, min(b, info.n_frames)) for a, b in intervals])


def probe(info: VideoInfo, params: TrackingParams, job_dir: Path) -> Probe:
    """Background, segmentation (what the user did not give), body length and crop size from sampled frames."""
    frames = tracked_frames(info, params)
    roi = roi_mask(params.roi_list, info.width, info.height) if params.roi_list else None
    n_sample = max(PROBE_FRAMES, params.number_of_frames_for_background)
    picks = frames[background_sample_indices(len(frames), n_sample)]
    decoded = decode_sample(info, picks)  # seeking is the slow part: one sample serves every estimate
    if decoded.failed:
        raise VideoError(damage_message(info, decoded))
    sample = decoded.frames
    warnings: list[str] = []
    if len(decoded.complained) >= DAMAGED_SHARE * len(picks):
        warnings.append(_damage_note(info, decoded.complained, len(picks)))
    n = params.number_of_animals
    background = None
    if params.use_bkg or params.intensity_ths is None:
        bkg_rows = background_sample_indices(len(picks), params.number_of_frames_for_background)
        background = compute_background(sample[bkg_rows], params.background_subtraction_stat, roi)
    if params.intensity_ths is not None and params.area_ths is not None:
        chosen = Segmentation(params.intensity_ths, params.area_ths, params.use_bkg)
    else:
        chosen = choose_segmentation(sample, n, background, roi, params.intensity_ths, params.use_bkg,
                                     params.area_ths)
    background_path = None
    if chosen.background:
        background_path = job_dir / "background.npy"
        np.save(background_path, background)
    else:
        background = None
    intensity, area = tuple(chosen.intensity_ths), tuple(chosen.area_ths)
    table = concat([segment_frame(gray, int(i), intensity, area, background, roi, chosen.sign)
                    for i, gray in zip(picks, sample, strict=True)])
    counts = np.bincount(np.searchsorted(picks, table.frame), minlength=len(picks))
    exact = float(np.mean(counts == n)) if n else None
    roi_area = float(roi.sum()) if roi is not None else float(info.width * info.height)
    try:
        _check_blobs(table, counts, len(picks), roi_area, chosen, params)
    except SegmentationError as exc:
        if decoded.complained:  # garbage frames are no threshold's fault
            raise SegmentationError(f"{exc}; but first: {_damage_note(info, decoded.complained, len(picks))}") from None
        raise
    if params.intensity_ths is None or params.area_ths is None:
        given = [name for name in ("intensity_ths", "area_ths") if getattr(params, name) is not None]
        note = f"automatic segmentation{f' ({given[0]} as given)' if given else ''}: {chosen.describe()}"
        warnings.append(note + (f": {exact:.0%} of {len(picks)} sampled frames show exactly {_animals(n)}" if n
                                else " (number of animals unknown)"))
    if params.number_of_animals:
        over = float(np.mean(counts > n))
        if over > 0:
            warnings.append(f"{over:.1%} of sampled frames have more blobs than animals (debris or reflections?)")
        if not np.any(counts == n):
            warnings.append(f"no sampled frame shows all {n} animals apart; identities may be harder to learn")
    length = body_length(table, n or int(np.bincount(counts).argmax()))
    side, scale = crop_geometry(length, params.id_image_size, params.resolution_reduction)
    if params.knowledge_transfer_folder:  # fail now, not after segmenting the whole video
        check_compatible(model_info(params.knowledge_transfer_folder), side, params.number_of_animals)
    n_regions, per_region = 1, None
    if params.exclusive_rois and roi is not None:
        regions = roi_regions(roi)
        n_regions = int(regions.max()) + 1
        if n_regions == 1:
            warnings.append("exclusive_rois: the ROI is one connected region, so there is a single arena")
        if n or params.animals_per_roi is not None:  # else only the whole video can tell
            table.region = blob_regions(table, regions)
            try:
                per_region = animals_per_region(table, int(picks.max()) + 1, n_regions, n, params.animals_per_roi)
            except RegionError as exc:
                raise SegmentationError(f"{exc} (in {len(picks)} sampled frames)") from None
    return Probe(length, side, scale, intensity, area, str(background_path) if background_path else None,
                 float(np.median(counts)), warnings, n_regions, chosen.sign, exact,
                 n or sum(per_region or []), per_region)


def _check_blobs(table: BlobTable, counts: np.ndarray, n_sampled: int, roi_area: float, chosen: Segmentation,
                 params: TrackingParams) -> None:
    """Stop at the probe when the blobs cannot be the animals: none at all, blobs covering the arena,
    far fewer blobs than animals in every sampled frame (unless the user says animals hide), or more
    blobs than animals in most."""
    how = chosen.describe()
    if len(table) == 0:
        raise SegmentationError(f"no animals found in {n_sampled} sampled frames with {how}: "
                                f"{_what_to_change(params, 'none')}")
    giant = table.area > GIANT_SHARE * roi_area
    giant_frames = len(np.unique(table.frame[giant]))
    if giant_frames > 0.5 * n_sampled:
        where = "ROI" if params.roi_list else "frame"
        share = float(np.median(table.area[giant]) / roi_area)
        raise SegmentationError(
            f"{how} makes a blob covering {share:.0%} of the {where} in {giant_frames} of {n_sampled} sampled "
            f"frames: that is the background, not animals; {_what_to_change(params, 'giant')}")
    n, most = params.number_of_animals, int(counts.max())
    if n and most < n / 2 and not params.allow_missing_animals:
        raise SegmentationError(
            f"number_of_animals (--animals) is {n} but there are at most {most} blob{'s' if most != 1 else ''} in "
            f"any of {n_sampled} sampled frames with {how}: give the number of animals in the video, "
            f"{_what_to_change(params, 'fewer')}, or allow_missing_animals (--allow-missing-animals) if most "
            "animals are out of sight")
    over = float(np.mean(counts > n)) if n else 0.0
    if over > 0.5:
        raise SegmentationError(
            f"{over:.0%} of sampled frames have more blobs than the {_animals(n)} with {how}: the thresholds "
            f"catch debris or reflections; {_what_to_change(params, 'more')}")


def _animals(n: int) -> str:
    return f"{n} animal{'s' if n != 1 else ''}"


def _damage_note(info: VideoInfo, complained: list[int], n_sampled: int) -> str:
    files = sorted({info.paths[info.file_of(i)] for i in complained})
    return (f"{', '.join(files)} {'is' if len(files) == 1 else 'are'} damaged: the decoder reports errors in "
            f"{len(complained)} of {n_sampled} sampled frames (first at frame {complained[0]}), which then show "
            "garbage; repair or re-encode the video")


def _what_to_change(params: TrackingParams, problem: str) -> str:
    """The advice of a segmentation error: which threshold to change, in the terms of the flags."""
    intensity, area = "intensity_ths (--intensity)", "area_ths (--area)"
    if problem == "giant":
        if params.intensity_ths is not None:
            return (f"narrow {intensity}: dark animals on a light background need e.g. [0, 120], light ones on "
                    f"a dark background [150, 255]; or lower the maximum of {area}")
        return f"lower the maximum of {area}, or leave --area out to choose it from the video"
    if problem == "more":
        return f"raise the minimum of {area}, narrow {intensity} or set a ROI"
    if problem == "fewer":
        return f"check {intensity} and {area}"
    return (f"adjust {intensity} (light animals on a dark background need e.g. [150, 255]), {area}, the ROI, "
            "or try background subtraction (--bkg)")


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
        table = segment_frame(gray, index, probe.intensity_ths, probe.area_ths, background, roi, probe.background_sign)
        if regions is not None:
            table.region = blob_regions(table, regions)
        tables.append(table)
        crops.append(identification_images(gray, table, np.arange(len(table)), probe.crop_side, probe.crop_scale))
    side = probe.crop_side
    images = np.concatenate(crops) if crops else np.zeros((0, side, side), np.uint8)
    return concat(tables), images

