"""Tracking parameters, named as idtracker.ai names them so labs can bring their TOML files.

Each field of :class:`TrackingParams` is declared once, with a :class:`Param` row: how a value is
read (``kind``), the range or choices it must lie in, its default as users read it, whether it is
an idtracker.ai key or Shoal's own, its ``shoal track`` flag, and whether the gRPC message types
it. Every conversion derives from that table: TOML and JSON through :meth:`TrackingParams.from_dict`,
the flags through ``shoal/cli/flags.py``, the gRPC message through ``shoal/params_proto.py``.
"""

from __future__ import annotations

import math
import tomllib
from collections.abc import Callable
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


@dataclass(frozen=True)
class Param:
    """One row of the parameter table.

    ``kind`` names the reader of :data:`READERS`; ``within`` is an interval such as ``"[8, 256]"``
    or ``"(0, 1]"`` that the value (each number of a pair) must lie in; ``choices`` the words the
    value (each word of a list) must be one of; ``unset`` says what an unset field means when
    the Python default does not say it (``None`` -> "chosen from the video"). ``proto``: a typed
    field of the gRPC ``TrackingParams`` (the rest travel in its ``extra`` as JSON). ``path``: a
    path the gateway opens, which the CLI sends absolute when it exists here.
    """

    kind: str
    help: str
    unset: str | None = None
    within: str | None = None
    choices: tuple[str, ...] | None = None
    own: bool = False
    proto: bool = False
    flag: str | None = None
    metavar: str | tuple[str, ...] | None = None
    repeat: bool = False
    path: bool = False

    def check(self, name: str, value: Any) -> None:
        """Raise ParamError unless ``value`` lies within the row's range and choices."""
        items = value if self.kind in ("pair", "texts") else [value]
        for item in items:
            if self.within is not None and not _inside(item, self.within):
                raise ParamError(name, f"must be {_range_words(self.within)}, got {_show(value)}")
            if self.choices is not None and item not in self.choices:
                raise ParamError(name, f"{item!r} is not one of {', '.join(self.choices)}")


def _param(default: Any = None, *, factory: Callable[[], Any] | None = None, **row: Any) -> Any:
    meta = {"param": Param(**row)}
    return field(default_factory=factory, metadata=meta) if factory else field(default=default, metadata=meta)


@dataclass
class TrackingParams:
    """Parameters of one tracking job (idtracker.ai v6 names where they exist); the table is the doc."""

    video_paths: list[str] = _param(
        factory=list, kind="texts", path=True, unset="none (required)",
        help="video files, in order; several files form one session")
    number_of_animals: int = _param(
        0, kind="whole", within="[0, inf)", proto=True, flag="--animals", metavar="N", unset="none",
        help="animals in the video; required unless track_wo_identities, which then takes the most blobs in a frame")
    intensity_ths: tuple[float, float] | None = _param(
        kind="pair", within="[0, 255]", proto=True, flag="--intensity", metavar=("LO", "HI"),
        unset="chosen from the video",
        help="[lo, hi]: foreground is lo <= pixel <= hi (lo > hi: pixel >= lo or pixel <= hi, light and dark "
             "animals together); with use_bkg, |background - pixel| > lo")
    area_ths: tuple[float, float] | None = _param(
        kind="pair", within="[0, inf]", proto=True, flag="--area", metavar=("MIN", "MAX"),
        unset="chosen from the video", help="[min, max] blob area in pixels; max may be inf")
    roi_list: list[str] | None = _param(
        kind="texts", proto=True, flag="--roi", metavar="SHAPE", repeat=True, unset="the whole frame",
        help='region of interest shapes, each added (+) or removed (-) in order, e.g. '
             '"+ Polygon [[0,0],[500,0],[500,500]]"; repeatable')
    use_bkg: bool = _param(False, kind="switch", proto=True, flag="--bkg", help="background subtraction")
    background_subtraction_stat: str = _param(
        "median", kind="text", choices=BACKGROUND_STATS, proto=True,
        help="per-pixel statistic of the sampled frames that makes the background")
    number_of_frames_for_background: int = _param(
        50, kind="whole", within="[1, inf)", help="frames sampled for the background")
    tracking_intervals: list[tuple[int, int]] | None = _param(
        kind="intervals", proto=True, flag="--intervals", metavar="F", unset="every frame",
        help="[start, end) frame ranges, end exclusive; on the command line start end [start end ...]")
    track_wo_identities: bool = _param(
        False, kind="switch", proto=True, flag="--no-identities",
        help="no identity learning: fragments take the lowest free slot")
    exclusive_rois: bool = _param(
        False, kind="switch", proto=True, flag="--exclusive-rois",
        help="each separate region of the ROI is an arena whose animals never leave it; identities are learned "
             "per region and numbered region by region")
    resolution_reduction: float | None = _param(
        kind="number", within="(0, 1]", proto=True, unset="automatic",
        help="scale of the identification images")
    id_image_size: int | None = _param(
        kind="image_size", within="[8, 256]", proto=True, flag="--id-image-size", metavar="PX",
        unset="from the body length",
        help="side of the identification images in pixels (idtracker.ai's [s, s, 1] is read too); give an "
             "earlier session's size to reuse its model with knowledge_transfer_folder")
    check_segmentation: bool = _param(
        False, kind="switch", proto=True,
        help="fail the job if any frame has more blobs than animals (inconsistent_frames.csv lists them either way)")
    trajectories_formats: list[str] = _param(
        factory=lambda: list(DEFAULT_FORMATS), kind="texts", choices=TRAJECTORY_FORMATS, proto=True,
        flag="--formats", metavar="FORMAT", unset=" ".join(DEFAULT_FORMATS),
        help="trajectory files in the session folder (nwb: pip install 'shoal[nwb]', with the nwb table naming "
             "the session and species)")
    frames_per_episode: int = _param(500, kind="whole", within="[10, inf)", proto=True,
                                     help="frames per segmentation task")
    output_dir: str | None = _param(kind="text", unset="session_<video name> beside the video",
                                    help="the session folder")
    knowledge_transfer_folder: str | None = _param(
        kind="text", path=True, flag="--knowledge-from", metavar="SESSION", unset="learn from scratch",
        help="start identity learning from an earlier session's identity model and number the identities as it "
             "did (same animals, same image size)")
    setup_points: dict[str, list[tuple[float, float]]] = _param(
        factory=dict, kind="points", unset="none",
        help="named landmarks in pixels, {name: [[x, y], ...]} (arena border, feeder...)")
    identities_labels: list[str] | None = _param(
        kind="texts", unset="1..N", help="names of identities 1..N: one per animal, all different")
    animals_per_roi: list[int] | None = _param(
        kind="counts", own=True, flag="--animals-per-roi", metavar="N",
        unset="read from frames showing all animals apart",
        help="animals in each exclusive region, regions in raster order of their top pixel")
    method: str = _param("contrastive", kind="text", choices=METHODS, own=True, proto=True, flag="--method",
                         help="identity learning route")
    seed: int = _param(0, kind="whole", own=True, proto=True, flag="--seed",
                       help="random seed; same seed, same result on the same CPU")
    output_video: bool = _param(
        False, kind="switch", own=True, flag="--video",
        help="also write the overlay video SESSION/overlay.mp4, as shoal video does")
    output_individual_videos: bool = _param(
        False, kind="switch", own=True, flag="--individual-videos",
        help="also write one animal-centred video per identity in SESSION/individual_videos/, as shoal video "
             "--individual does")
    video_trail: int | None = _param(
        kind="whole", within="[0, inf)", own=True, flag="--video-trail", metavar="FRAMES",
        unset=str(DEFAULT_VIDEO_TRAIL), help="trail of the overlay video in frames")
    individual_video_size: int | None = _param(
        kind="whole", within=f"[{MIN_INDIVIDUAL_VIDEO_SIZE}, inf)", own=True, flag="--individual-video-size",
        metavar="PX", unset="one body length", help="side of the individual videos in pixels")
    allow_missing_animals: bool = _param(
        False, kind="switch", own=True, flag="--allow-missing-animals",
        help="track even when no sampled frame shows half of number_of_animals (animals hidden most of the time)")
    nwb: dict[str, Any] | None = _param(
        kind="nwb", own=True, unset="none",
        help="session and subject metadata of the NWB files (shoal.nwb.NWB_FIELDS), a [nwb] table in TOML")

    def validate(self) -> TrackingParams:
        """Check each field against its row, then the fields against each other; raise ParamError
        naming the first bad field. Returns self."""
        for name, row in PARAMS.items():
            if getattr(self, name) is not None:
                row.check(name, getattr(self, name))
        if not self.video_paths:
            raise ParamError("video_paths", "no video given")
        if self.number_of_animals == 0 and not self.track_wo_identities:
            raise ParamError("number_of_animals", "required (>= 1) unless tracking without identities")
        if self.area_ths is not None and self.area_ths[1] < self.area_ths[0]:
            raise ParamError("area_ths", f"need min <= max, got {_show(self.area_ths)}")
        for i, iv in enumerate(self.tracking_intervals or []):
            if len(iv) != 2 or iv[0] < 0 or iv[1] <= iv[0]:
                raise ParamError("tracking_intervals", f"interval {i} must be [start, end) with 0 <= start < end")
        check_setup_points(self.setup_points)  # from_dict reads them so; a direct TrackingParams(...) is checked here
        if self.identities_labels is not None:
            check_identities_labels(self.identities_labels, self.number_of_animals)
        if self.exclusive_rois and not self.roi_list:
            raise ParamError("exclusive_rois", "needs a roi_list with one separate region per arena")
        if self.animals_per_roi is not None:
            check_animals_per_roi(self.animals_per_roi, self.number_of_animals, self.exclusive_rois)
        if self.knowledge_transfer_folder and (self.track_wo_identities or self.exclusive_rois):
            why = "tracking without identities" if self.track_wo_identities else "exclusive_rois (not supported yet)"
            raise ParamError("knowledge_transfer_folder", f"cannot be combined with {why}")
        for size, video in (("video_trail", "output_video"), ("individual_video_size", "output_individual_videos")):
            if getattr(self, size) is not None and not getattr(self, video):  # it would silently do nothing
                raise ParamError(size, f"only applies with {video}")
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
        """Build from idtracker.ai-style keys (case-insensitive), each value read by its row's kind;
        unknown keys are an error, and None (idtracker.ai writes "") takes the default."""
        kwargs: dict[str, Any] = {}
        for raw_key, value in d.items():
            key = raw_key.lower()
            if key in IGNORED_KEYS:
                continue
            if key not in PARAMS:
                raise ParamError(raw_key, "unknown parameter")
            if value is None or value == "":
                continue
            try:
                kwargs[key] = READERS[PARAMS[key].kind](value)
            except ParamError:
                raise
            except (TypeError, ValueError) as exc:
                raise ParamError(key, f"bad value {value!r} ({exc})") from None
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


def _whole(value: Any) -> int:
    """An integer; int() alone would take true as 1 and 2.7 as 2."""
    if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
        raise TypeError("expected a whole number")
    return int(value)


def _switch(value: Any) -> bool:
    if not isinstance(value, bool):
        raise TypeError("expected true or false")
    return value


def _text(value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError("expected text")
    return value


def _texts(value: Any) -> list[str]:
    return [str(v) for v in ([value] if isinstance(value, str) else value)]


def _pair(value: Any) -> tuple[float, float]:
    lo, hi = value
    return float(lo), math.inf if hi is None else float(hi)


def _intervals(value: Any) -> list[tuple[int, int]]:
    return [(_whole(a), _whole(b)) for a, b in value]


def _counts(value: Any) -> list[int]:
    return [_whole(v) for v in ([value] if isinstance(value, int | float | str) else value)]


def _image_size(value: Any) -> int | None:
    """idtracker.ai writes the size as s or [s, s, 1]."""
    if isinstance(value, list | tuple):
        return _whole(value[0]) if value else None
    return _whole(value)


def _nwb(value: Any) -> dict[str, Any] | None:
    try:
        return check_nwb_metadata(value) or None
    except ValueError as exc:
        raise ParamError("nwb", str(exc)) from None


#: how each kind of parameter is read from TOML, JSON, flags or the gRPC message
READERS: dict[str, Callable[[Any], Any]] = {
    "whole": _whole, "number": float, "switch": _switch, "text": _text, "texts": _texts, "pair": _pair,
    "intervals": _intervals, "counts": _counts, "image_size": _image_size, "points": check_setup_points, "nwb": _nwb,
}

#: the parameter table: each field's row, in declaration order
PARAMS: dict[str, Param] = {f.name: f.metadata["param"] for f in fields(TrackingParams)}


def default_text(name: str) -> str:
    """An unset field's meaning as users read it (the --help texts and docs/api.md)."""
    row = PARAMS[name]
    if row.unset is not None:
        return row.unset
    value = getattr(TrackingParams(), name)
    return str(value).lower() if isinstance(value, bool) else str(value)


def _inside(value: float, within: str) -> bool:
    lo, hi = (float(x) for x in within[1:-1].split(","))
    return (lo <= value if within[0] == "[" else lo < value) and (value <= hi if within[-1] == "]" else value < hi)


def _range_words(within: str) -> str:
    lo, hi = (x.strip() for x in within[1:-1].split(","))
    if hi == "inf":
        return f"{'>=' if within[0] == '[' else '>'} {lo}"
    return f"in {within}"


def _show(value: Any) -> str:
    return f"[{', '.join(f'{v:g}' for v in value)}]" if isinstance(value, tuple) else repr(value)
