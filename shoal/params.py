"""Tracking parameters, named as idtracker.ai names them so labs can bring their TOML files.

One dataclass holds everything a job needs; it is built from CLI flags, a TOML file or the gRPC
message, validated in one place, and travels between services as a plain dict.
"""

from __future__ import annotations

import math
import tomllib
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from shoal.nwb import check_nwb_metadata

METHODS = ("contrastive", "accumulation")
#: trajectory files a job can write (shoal/trajectory_files.py); sleap and nwb open in SLEAP, sleap-io and movement
TRAJECTORY_FORMATS = ("npy", "h5", "csv", "csv_tidy", "sleap", "nwb")
#: what a job writes when it names no formats (idtracker.ai's three)
DEFAULT_FORMATS = ("npy", "h5", "csv")
BACKGROUND_STATS = ("median", "mean", "max", "min")
#: trail of the overlay video in frames when ``video_trail`` is unset: ``shoal video``'s default too
DEFAULT_VIDEO_TRAIL = 20
#: smallest side of individual videos in pixels (smaller crops cannot show an animal's posture)
MIN_INDIVIDUAL_VIDEO_SIZE = 8

#: idtracker.ai keys that Shoal reads but that have no effect here (GUI or storage details).
IGNORED_KEYS = {"bounding_box_images_in_ram", "data_policy", "number_of_parallel_workers", "name"}


class ParamError(ValueError):
    """A parameter is missing, unknown or out of range; ``field`` names it."""

    def __init__(self, field_name: str, message: str):
        super().__init__(f"{field_name}: {message}")
        self.field = field_name


@dataclass
class TrackingParams:
    """Parameters of one tracking job (idtracker.ai v6 names where they exist).

    ``intensity_ths``: without background subtraction a pixel is foreground when
    ``lo <= value <= hi``, or, for a range that wraps (``lo > hi``, Shoal's own), when
    ``value >= lo or value <= hi`` (a white and a black mouse on grey bedding); with background
    subtraction (``use_bkg``) when ``|background - value| > lo``.
    ``area_ths``: blob area range in pixels (``inf`` allowed as upper bound).
    Either left as None is chosen from the video (raw or background thresholds, whichever shows
    the number of animals best; see ``services/segmenter/auto_thresholds.py``).
    ``tracking_intervals``: ``[[start, end), ...]`` in global frame numbers, or None for all.
    ``exclusive_rois``: each connected region of the ROI is a separate arena whose animals never
    leave it; identities are learned per region and numbered region by region.
    ``animals_per_roi`` (Shoal's own): animals in each region, in the regions' order (raster order
    of their top pixel); None infers them from the frames showing all animals apart.
    ``output_video``, ``output_individual_videos`` (Shoal's own): after the trajectories, the job
    also writes ``overlay.mp4`` and ``individual_videos/`` into the session folder, as ``shoal video``
    does, so a cluster job leaves videos to check by eye. ``video_trail`` (frames; None: 20) and
    ``individual_video_size`` (pixels; None: one body length) are their ``--trail`` and ``--size``.
    ``allow_missing_animals`` (Shoal's own): run even when no sampled frame shows half of
    ``number_of_animals`` (animals that hide most of the time); without it the probe stops.
    ``nwb`` (Shoal's own, a ``[nwb]`` table in TOML): session and subject metadata of the NWB files
    (``shoal.nwb.NWB_FIELDS``), kept in session.json for a later ``shoal export`` too.
    """

    video_paths: list[str] = field(default_factory=list)
    number_of_animals: int = 0
    intensity_ths: tuple[float, float] | None = None
    area_ths: tuple[float, float] | None = None
    roi_list: list[str] | None = None
    use_bkg: bool = False
    background_subtraction_stat: str = "median"
    number_of_frames_for_background: int = 50
    tracking_intervals: list[tuple[int, int]] | None = None
    track_wo_identities: bool = False
    exclusive_rois: bool = False
    resolution_reduction: float | None = None
    id_image_size: int | None = None
    check_segmentation: bool = False
    trajectories_formats: list[str] = field(default_factory=lambda: list(DEFAULT_FORMATS))
    frames_per_episode: int = 500
    output_dir: str | None = None
    knowledge_transfer_folder: str | None = None
    setup_points: dict[str, list[tuple[float, float]]] = field(default_factory=dict)
    identities_labels: list[str] | None = None
    # Shoal's own
    animals_per_roi: list[int] | None = None
    method: str = "contrastive"
    seed: int = 0
    output_video: bool = False
    output_individual_videos: bool = False
    video_trail: int | None = None
    individual_video_size: int | None = None
    allow_missing_animals: bool = False
    nwb: dict[str, Any] | None = None

    def validate(self) -> TrackingParams:
        """Check ranges; raise ParamError naming the first bad field. Returns self."""
        if not self.video_paths:
            raise ParamError("video_paths", "no video given")
        if self.number_of_animals < 0:
            raise ParamError("number_of_animals", f"must be >= 1, got {self.number_of_animals}")
        if self.number_of_animals == 0 and not self.track_wo_identities:
            raise ParamError("number_of_animals", "required (>= 1) unless tracking without identities")
        if self.intensity_ths is not None:
            lo, hi = self.intensity_ths
            if not (0 <= lo <= 255 and 0 <= hi <= 255):
                raise ParamError("intensity_ths", f"need 0 <= lo, hi <= 255, got [{lo}, {hi}]")
        if self.area_ths is not None:
            amin, amax = self.area_ths
            if amin < 0 or amax < amin:
                raise ParamError("area_ths", f"need 0 <= min <= max, got [{amin}, {amax}]")
        if self.background_subtraction_stat not in BACKGROUND_STATS:
            raise ParamError("background_subtraction_stat", f"must be one of {', '.join(BACKGROUND_STATS)}")
        if self.number_of_frames_for_background < 1:
            raise ParamError("number_of_frames_for_background", "must be >= 1")
        for i, iv in enumerate(self.tracking_intervals or []):
            if len(iv) != 2 or iv[0] < 0 or iv[1] <= iv[0]:
                raise ParamError("tracking_intervals", f"interval {i} must be [start, end) with 0 <= start < end")
        if self.resolution_reduction is not None and not 0 < self.resolution_reduction <= 1:
            raise ParamError("resolution_reduction", "must be in (0, 1]")
        if self.id_image_size is not None and not 8 <= self.id_image_size <= 256:
            raise ParamError("id_image_size", "must be between 8 and 256 pixels")
        for f in self.trajectories_formats:
            if f not in TRAJECTORY_FORMATS:
                raise ParamError("trajectories_formats", f"unknown format {f!r}; use {', '.join(TRAJECTORY_FORMATS)}")
        check_setup_points(self.setup_points)
        if self.identities_labels is not None:
            check_identities_labels(self.identities_labels, self.number_of_animals)
        if self.frames_per_episode < 10:
            raise ParamError("frames_per_episode", "must be >= 10")
        if self.method not in METHODS:
            raise ParamError("method", f"must be one of {', '.join(METHODS)}")
        if self.exclusive_rois and not self.roi_list:
            raise ParamError("exclusive_rois", "needs a roi_list with one separate region per arena")
        if self.animals_per_roi is not None:
            check_animals_per_roi(self.animals_per_roi, self.number_of_animals, self.exclusive_rois)
        if self.knowledge_transfer_folder and (self.track_wo_identities or self.exclusive_rois):
            why = "tracking without identities" if self.track_wo_identities else "exclusive_rois (not supported yet)"
            raise ParamError("knowledge_transfer_folder", f"cannot be combined with {why}")
        check_video_outputs(self)
        return self

    def to_dict(self) -> dict[str, Any]:
        """JSON/msgpack-safe dict (inf encoded as None in area_ths' upper bound)."""
        d = asdict(self)
        if self.area_ths is not None:
            d["area_ths"] = [self.area_ths[0], None if math.isinf(self.area_ths[1]) else self.area_ths[1]]
        if self.intensity_ths is not None:
            d["intensity_ths"] = list(self.intensity_ths)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrackingParams:
        """Build from idtracker.ai-style keys (case-insensitive); unknown keys are an error."""
        known = {f.name: f for f in fields(cls)}
        kwargs: dict[str, Any] = {}
        for raw_key, value in d.items():
            key = raw_key.lower()
            if key in IGNORED_KEYS:
                continue
            if key not in known:
                raise ParamError(raw_key, "unknown parameter")
            if value == "":  # idtracker.ai writes "" for None
                value = None
            kwargs[key] = _coerce(key, value)
        return cls(**kwargs)

    @classmethod
    def from_toml(cls, path: str | Path) -> TrackingParams:
        try:
            with open(path, "rb") as fh:
                data = tomllib.load(fh)
        except OSError as exc:
            raise ParamError("params", f"cannot read {path}: {exc.strerror}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ParamError("params", f"{path} is not valid TOML: {exc}") from None
        return cls.from_dict(data)


def check_setup_points(value: Any) -> dict[str, list[tuple[float, float]]]:
    """`value` as {name: [(x, y), ...]}: named landmarks (arena border, feeder...) in pixels.

    None (idtracker.ai's "") is no points. Raises ParamError("setup_points", why) otherwise.
    """
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ParamError("setup_points", f"must map names to lists of [x, y] points, got {type(value).__name__}")
    points: dict[str, list[tuple[float, float]]] = {}
    for name, listed in value.items():
        if not isinstance(name, str) or not name.strip():
            raise ParamError("setup_points", f"point set names must be non-empty text, got {name!r}")
        try:
            array = np.asarray(listed, dtype=np.float64)
        except (TypeError, ValueError):
            array = np.empty(0)
        if array.ndim != 2 or array.shape[1] != 2 or len(array) == 0:
            raise ParamError("setup_points", f"{name!r} must be a non-empty list of [x, y] points, got {listed!r}")
        if not np.isfinite(array).all():
            raise ParamError("setup_points", f"{name!r} has a coordinate that is not a finite number")
        points[name] = [(float(x), float(y)) for x, y in array]
    return points


def check_identities_labels(labels: list[str], number_of_animals: int) -> list[str]:
    """Check the names given to identities 1..N: one per animal, non-empty and all different."""
    if number_of_animals < 1:
        raise ParamError("identities_labels", "labels need number_of_animals, one label per animal")
    if len(labels) != number_of_animals:
        raise ParamError("identities_labels", f"{len(labels)} labels for {number_of_animals} animals")
    for label in labels:
        if not isinstance(label, str) or not label.strip():
            raise ParamError("identities_labels", f"labels must be non-empty text, got {label!r}")
    repeated = sorted({label for label in labels if labels.count(label) > 1})
    if repeated:
        raise ParamError("identities_labels", f"labels must differ, {', '.join(map(repr, repeated))} repeated")
    return list(labels)


def check_animals_per_roi(counts: list[int], number_of_animals: int, exclusive_rois: bool) -> list[int]:
    """Check the animals of each exclusive arena: positive counts that add up to number_of_animals."""
    if not exclusive_rois:
        raise ParamError("animals_per_roi", "only applies with exclusive_rois")
    if not counts or any(c < 1 for c in counts):
        raise ParamError("animals_per_roi", f"needs one count >= 1 per region, got {list(counts)}")
    if number_of_animals and sum(counts) != number_of_animals:
        raise ParamError("animals_per_roi", f"counts {list(counts)} add up to {sum(counts)}, "
                                            f"not number_of_animals = {number_of_animals}")
    return list(counts)


def check_video_outputs(params: TrackingParams) -> None:
    """Check the video options; a size or trail without its video would silently do nothing."""
    if params.video_trail is not None:
        if not params.output_video:
            raise ParamError("video_trail", "only applies with output_video")
        if params.video_trail < 0:
            raise ParamError("video_trail", f"must be >= 0 frames, got {params.video_trail}")
    if params.individual_video_size is not None:
        if not params.output_individual_videos:
            raise ParamError("individual_video_size", "only applies with output_individual_videos")
        if params.individual_video_size < MIN_INDIVIDUAL_VIDEO_SIZE:
            raise ParamError("individual_video_size", f"must be at least {MIN_INDIVIDUAL_VIDEO_SIZE} pixels, "
                                                      f"got {params.individual_video_size}")


def _coerce(key: str, value: Any) -> Any:
    if key == "setup_points":
        return check_setup_points(value)
    if key == "nwb":
        try:
            return check_nwb_metadata(value) or None
        except ValueError as exc:
            raise ParamError("nwb", str(exc)) from None
    try:
        if value is None:
            return None
        if key in ("intensity_ths", "area_ths"):
            lo, hi = value
            hi = math.inf if hi is None else float(hi)
            return (float(lo), hi)
        if key == "tracking_intervals":
            return [(int(a), int(b)) for a, b in value]
        if key == "animals_per_roi":
            return [int(v) for v in ([value] if isinstance(value, int | float | str) else value)]
        if key in ("number_of_animals", "number_of_frames_for_background", "frames_per_episode", "seed"):
            return int(value)
        if key in ("video_trail", "individual_video_size"):  # int() would take true as 1 and 2.7 as 2
            if isinstance(value, bool) or not isinstance(value, int | float) or value != int(value):
                raise TypeError("expected a whole number")
            return int(value)
        if key == "id_image_size":  # idtracker.ai accepts s or [s, s, 1]
            return int(value[0] if isinstance(value, list | tuple) else value) if value != [] else None
        if key == "resolution_reduction":
            return float(value)
        if key in ("video_paths", "roi_list", "trajectories_formats", "identities_labels"):
            return [str(v) for v in ([value] if isinstance(value, str) else value)]
        if key in ("use_bkg", "track_wo_identities", "exclusive_rois", "check_segmentation", "output_video",
                   "output_individual_videos", "allow_missing_animals"):
            if not isinstance(value, bool):
                raise TypeError("expected true or false")
            return value
        return value
    except (TypeError, ValueError) as exc:
        raise ParamError(key, f"bad value {value!r} ({exc})") from None
