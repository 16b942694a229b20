"""The session folder: what a finished job leaves for the user and their analysis code.

Labs have analysis code written for idtracker.ai's output, so the trajectory files use exactly the
key set, shapes and file layout of idtracker.ai v6 (method notes §7.1-7.3): a pickled dict in
`trajectories/trajectories.npy`, the same content in `trajectories.h5`, and plain-text tables in
`trajectories/trajectories_csv/`. On request the same trajectories go to the neuroscience data
stack's formats as well: SLEAP's analysis HDF5 (`shoal/sleap.py`) and NWB (`shoal/nwb.py`).
`session.json` holds what Shoal adds: the parameters asked for and those really used, the run's
times and Shoal version, timers, statistics and warnings.

Every file is written to a temporary name in its own folder and then renamed over the final name,
so a crash or a full disk never leaves a half-written trajectories file behind.
"""

from __future__ import annotations

import errno
import json
import math
import re
import shutil
from pathlib import Path
from typing import Any

import h5py
import numpy as np

import shoal
from shoal.atomic import replacing
from shoal.jsonsafe import json_safe
from shoal.nwb import MISSING_LIBRARY, nwb_available, nwb_metadata, write_nwb
from shoal.params import DEFAULT_FORMATS
from shoal.params import TRAJECTORY_FORMATS as FORMATS
from shoal.sleap import write_sleap

#: the background model the job subtracted, kept in the session folder (the job's copy is temporary)
BACKGROUND_FILE = "background.npy"
#: the review page's frame proxy (shoal.review.frames), rebuilt from the videos whenever it is missing
REVIEW_CACHE = "review_cache"
#: every file and folder a Shoal run writes into a session folder (identity model: shoal.knowledge.MODEL_FILE;
#: videos: shoal.render's overlay and individual-video names); `shoal track --overwrite` removes these only
#: (`trajectories_corrected`, REVIEW_CACHE: written by `shoal review`; the person's corrections.json is not an
#: entry: a log made for other trajectories is refused by its digest instead)
SESSION_ENTRIES = ("session.json", "trajectories", "identity_model.npz", "inconsistent_frames.csv", BACKGROUND_FILE,
                   "overlay.mp4", "overlay.avi", "individual_videos", "trajectories_corrected", REVIEW_CACHE)

REQUIRED_KEYS = ("trajectories", "frames_per_second", "body_length", "width", "height", "video_paths")

SCALAR_KEYS = (
    "frames_per_second",
    "body_length",
    "estimated_accuracy",
    "silhouette_score",
    "fragment_connectivity",
    "fraction_identified",
    "length_unit",
    "version",
    "width",
    "height",
)
"""Keys stored as HDF5 file attributes (with the list-valued `identities_labels`, `video_paths`)."""


def trajectories_dict(result: dict) -> dict:
    """The trajectories dict with exactly idtracker.ai v6's keys (method notes §7.2).

    Optional inputs default as idtracker.ai would leave them: no accuracy estimate (None), labels
    "1".."N", no setup points or identity groups, no length unit.
    """
    missing = [key for key in REQUIRED_KEYS if key not in result]
    if missing:
        raise ValueError(f"cannot write trajectories: result lacks {', '.join(missing)}")
    trajectories = np.asarray(result["trajectories"], dtype=np.float64)
    if trajectories.ndim != 3 or trajectories.shape[2] != 2:
        raise ValueError(f"trajectories must be [frames, animals, 2], got shape {trajectories.shape}")
    n_frames, n_animals, _ = trajectories.shape
    probabilities = result.get("id_probabilities")
    if probabilities is None:
        probabilities = np.full((n_frames, n_animals, 1), np.nan)
    probabilities = np.asarray(probabilities, dtype=np.float64).reshape(n_frames, n_animals, 1)
    areas = result.get("areas") or {}
    areas = {
        name: np.asarray(areas.get(name, np.full(n_animals, np.nan)), dtype=np.float64)
        for name in ("mean", "median", "std")
    }
    labels = result.get("identities_labels") or [str(i + 1) for i in range(n_animals)]
    if len(labels) != n_animals:
        raise ValueError(f"{len(labels)} identity labels for {n_animals} animals")
    x_known = np.isfinite(trajectories[..., 0])
    output = {
        "trajectories": trajectories,
        "id_probabilities": probabilities,
        "areas": areas,
        "frames_per_second": float(result["frames_per_second"]),
        "body_length": float(result["body_length"]),
        "estimated_accuracy": _optional_float(result.get("estimated_accuracy")),
        "silhouette_score": _optional_float(result.get("silhouette_score")),
        "fraction_identified": float(x_known.mean()) if x_known.size else 0.0,
        "setup_points": _setup_points(result.get("setup_points")),
        "identities_labels": [str(label) for label in labels],
        "identities_groups": dict(result.get("identities_groups") or {}),
        "length_unit": _optional_float(result.get("length_unit")),
        "version": str(result.get("version", shoal.__version__)),
        "width": int(result["width"]),
        "height": int(result["height"]),
        "video_paths": [str(path) for path in result["video_paths"]],
    }
    if result.get("fragment_connectivity") is not None:
        output["fragment_connectivity"] = float(result["fragment_connectivity"])
    return output


def _setup_points(points: dict | None) -> dict[str, np.ndarray]:
    """Each named point set as float64 [k, 2] (x, y), the array type analysis code expects."""
    arrays = {}
    for name, listed in (points or {}).items():
        array = np.asarray(listed, dtype=np.float64)
        if array.ndim != 2 or array.shape[1] != 2:
            raise ValueError(f"setup point set {name!r} must be [[x, y], ...], got shape {array.shape}")
        arrays[str(name)] = array
    return arrays


def _optional_float(value: Any) -> float | None:
    return None if value is None else float(value)


def _write_text(path: Path, text: str) -> None:
    with replacing(path) as temporary:
        temporary.write_text(text)


def _write_json(path: Path, value: Any) -> None:
    _write_text(path, json.dumps(json_safe(value), indent=2, allow_nan=False) + "\n")


def _write_table(path: Path, header: str, rows: np.ndarray, fmt: str | list[str]) -> None:
    with replacing(path) as temporary, open(temporary, "w") as stream:
        np.savetxt(stream, rows, fmt=fmt, delimiter=",", header=header, comments="")


def write_npy(path: Path, trajectories: dict) -> None:
    """The pickled dict; read it with `np.load(path, allow_pickle=True).item()`."""
    with replacing(path) as temporary, open(temporary, "wb") as stream:
        np.save(stream, trajectories, allow_pickle=True)


def write_h5(path: Path, trajectories: dict) -> None:
    """Arrays as gzip datasets, dicts as groups, scalars and strings as file attributes.

    HDF5 attributes cannot be None: a missing length unit is stored as -1 (as idtracker.ai does)
    and other missing numbers as NaN.
    """
    with replacing(path) as temporary, h5py.File(temporary, "w") as h5:
        for name in ("trajectories", "id_probabilities"):
            h5.create_dataset(name, data=trajectories[name], compression="gzip")
        for group_name in ("areas", "setup_points", "identities_groups"):
            group = h5.create_group(group_name)
            for key, value in trajectories[group_name].items():
                group.create_dataset(str(key), data=np.asarray(value))
        for key in SCALAR_KEYS:
            if key in trajectories:
                value = trajectories[key]
                if value is None:
                    value = -1 if key == "length_unit" else np.nan
                h5.attrs[key] = value
        h5.attrs["identities_labels"] = trajectories["identities_labels"]
        h5.attrs["video_paths"] = trajectories["video_paths"]


def _attributes(trajectories: dict) -> dict:
    """Everything but the per-frame arrays and areas, for the JSON next to the CSV tables."""
    return {key: value for key, value in trajectories.items()
            if key not in ("trajectories", "id_probabilities", "areas")}


def write_csv(folder: Path, trajectories: dict) -> Path:
    """idtracker.ai's `trajectories_csv/` folder; returns the path of trajectories.csv.

    - `trajectories.csv`: header `time,x1,y1,...,xN,yN`, one row per frame; time = frame / fps in
      seconds, positions in pixels, `nan` where the animal is unknown (as idtracker.ai writes it);
    - `id_probabilities.csv`: `time,id_probabilities1,...`, the certainty of each identity per frame;
    - `areas.csv`: `mean,median,standard_deviation` of the blob area, one row per identity;
    - `attributes.json`: every other key of the trajectories dict. Identity i of the tables is
      `identities_labels[i - 1]`; `setup_points` maps each landmark name to `[[x, y], ...]` in the
      pixel coordinates of the tables.
    """
    positions = trajectories["trajectories"]
    n_frames, n_animals, _ = positions.shape
    time = np.arange(n_frames) / trajectories["frames_per_second"]
    identities = range(1, n_animals + 1)
    table = folder / "trajectories.csv"
    _write_table(
        table,
        "time," + ",".join(f"x{i},y{i}" for i in identities),
        np.column_stack([time, positions.reshape(n_frames, 2 * n_animals)]),
        "%.3f",
    )
    _write_table(
        folder / "id_probabilities.csv",
        "time," + ",".join(f"id_probabilities{i}" for i in identities),
        np.column_stack([time, trajectories["id_probabilities"][..., 0]]),
        ["%.3f"] + ["%.3e"] * n_animals,
    )
    areas = trajectories["areas"]
    _write_table(
        folder / "areas.csv",
        "mean,median,standard_deviation",
        np.column_stack([areas["mean"], areas["median"], areas["std"]]),
        "%.3f",
    )
    _write_json(folder / "attributes.json", _attributes(trajectories))
    return table


def write_csv_tidy(folder: Path, trajectories: dict) -> Path:
    """Long format, one row per known position: frame,time,individual,x,y,probability.

    `individual` is the identity number i (1..N, the i of x{i} in trajectories.csv); its label is
    `identities_labels[i - 1]` in `attributes_tidy.json`, which holds the same keys as attributes.json.
    """
    positions = trajectories["trajectories"]
    frames, animals = np.nonzero(np.isfinite(positions).all(axis=2))
    x, y = positions[frames, animals].T
    rows = np.column_stack([
        frames,
        frames / trajectories["frames_per_second"],
        animals + 1,
        x,
        y,
        trajectories["id_probabilities"][frames, animals, 0],
    ])
    table = folder / "trajectories_tidy.csv"
    _write_table(table, "frame,time,individual,x,y,probability", rows,
                 ["%d", "%.3f", "%d", "%.3f", "%.3f", "%.3e"])
    _write_json(folder / "attributes_tidy.json", _attributes(trajectories))
    return table


NO_SPECIES = "the NWB files name no species: set species in the [nwb] parameter table (DANDI requires it)"


def check_formats(formats: tuple[str, ...] | list[str]) -> None:
    """Raise ValueError for an unknown format, RuntimeError naming the extra when a library is missing
    here (checked where files are written: ``shoal track``, the gateway, ``shoal export``, ``shoal fetch``;
    a client that only submits needs no writer)."""
    unknown = sorted(set(formats) - set(FORMATS))
    if unknown:
        raise ValueError(f"unknown output formats {unknown}; choose from {list(FORMATS)}")
    if "nwb" in formats and not nwb_available():
        raise RuntimeError(MISSING_LIBRARY)


def write_trajectories(folder: Path, trajectories: dict, session: dict, formats: tuple[str, ...]) -> dict[str, Path]:
    """Write a trajectories dict (:func:`trajectories_dict`) into `folder` (a session's
    ``trajectories/``) in each of `formats`; returns {format: its main file or folder}."""
    check_formats(formats)
    folder = Path(folder)
    plain = json_safe(session)  # what the SLEAP and NWB files carry of the session, as JSON
    written = {}
    if "npy" in formats:
        written["npy"] = folder / "trajectories.npy"
        write_npy(written["npy"], trajectories)
    if "h5" in formats:
        written["h5"] = folder / "trajectories.h5"
        write_h5(written["h5"], trajectories)
    if "csv" in formats:
        written["csv"] = write_csv(folder / "trajectories_csv", trajectories)
    if "csv_tidy" in formats:
        written["csv_tidy"] = write_csv_tidy(folder, trajectories)
    if "sleap" in formats:
        written["sleap"] = write_sleap(folder, trajectories, plain)[0]
    if "nwb" in formats:
        written["nwb"] = folder / "trajectories_nwb"
        write_nwb(written["nwb"], trajectories, plain)
    return written


def write_session(
    out_dir: Path, result: dict, *, formats: tuple[str, ...] = DEFAULT_FORMATS
) -> dict[str, Path]:
    """Write the session folder; returns {"session": session.json, format: its main file}.

    `result` holds the trajectory inputs of :func:`trajectories_dict` plus `session`, the dict
    stored in session.json; the quality indicators are added to its "statistics". session.json is
    written last, once every trajectory file is in place.
    """
    out_dir = Path(out_dir)
    trajectories = trajectories_dict(result)
    session = dict(result.get("session") or {})
    statistics = dict(session.get("statistics") or {})
    for key in ("estimated_accuracy", "silhouette_score", "fraction_identified"):
        statistics.setdefault(key, trajectories[key])
    session["statistics"] = statistics
    if "nwb" in formats and not nwb_metadata(session).get("species"):
        session["warnings"] = [*session.get("warnings", []), NO_SPECIES]
    written = write_trajectories(out_dir / "trajectories", trajectories, session, formats)
    _write_json(out_dir / "session.json", session)
    return {"session": out_dir / "session.json", **written}


def session_write_error(folder: Path, exc: OSError) -> str:
    """One line for a session folder that could not be written (a full volume above all)."""
    where = f" ({Path(exc.filename).name})" if exc.filename else ""
    if exc.errno == errno.ENOSPC:
        return (f"the session folder {folder} ran out of space while writing the results{where}: free space "
                f"there or choose another output folder, then run the job again (nothing was kept)")
    return f"cannot write the session folder {folder}{where}: {exc.strerror or exc} (nothing was kept)"


def update_session_json(out_dir: Path, updates: dict[str, Any], warnings: list[str] | tuple = ()) -> dict:
    """Merge `updates` into an existing session.json and append `warnings` to its list, atomically.

    For what is known only after the trajectories were written (e.g. the job's videos): the
    session folder is complete before that step starts, so its failure cannot lose the tracking.
    Returns the new content.
    """
    path = Path(out_dir) / "session.json"
    session = {**json.loads(path.read_text()), **updates}
    session["warnings"] = [*session.get("warnings", []), *warnings]
    _write_json(path, session)
    return session


def warn_inconsistent_frames(out_dir: Path, frames: np.ndarray) -> Path | None:
    """List the frames holding more blobs than animals in `inconsistent_frames.csv`.

    Such frames usually mean the segmentation picks up noise or the animal count is wrong. With no
    such frame the file is absent (a stale one from an earlier run is removed).
    """
    path = Path(out_dir) / "inconsistent_frames.csv"
    frames = np.unique(np.asarray(frames, dtype=np.int64))
    if frames.size == 0:
        path.unlink(missing_ok=True)
        return None
    _write_table(path, "frame", frames[:, None], "%d")
    return path


def load_session(out_dir: Path) -> dict:
    """The trajectories dict of a session folder, as idtracker.ai users load it."""
    path = Path(out_dir) / "trajectories" / "trajectories.npy"
    if not path.exists():
        raise FileNotFoundError(f"no trajectories in {out_dir}: {path} does not exist (job not finished?)")
    return np.load(path, allow_pickle=True).item()


#: what Shoal writes inside its folders: a folder of the same name holding anything else is not Shoal's
_FOLDER_CONTENT = {
    "trajectories": r"trajectories\.(npy|h5)|trajectories_csv|trajectories_tidy\.csv|attributes_tidy\.json"
                    r"|trajectories(_\d+)?\.analysis\.h5|trajectories_nwb",
    "individual_videos": r"individual_\d+(_[A-Za-z0-9_.-]+)?\.(mp4|avi)",
}
_FOLDER_CONTENT["trajectories_corrected"] = _FOLDER_CONTENT["trajectories"]  # the same layout, corrected
_FOLDER_CONTENT[REVIEW_CACHE] = r"frames-[0-9a-f]+\.(jpgs|json|jpgs\.part)"


def _temporary(name: str) -> bool:
    """A half-written file: `.name.<pid>.tmp` (:func:`shoal.atomic.replacing`) or `.stem.<pid>.partial.mp4` (videos)."""
    return name.startswith(".") and (name.endswith(".tmp") or ".partial." in name)


def shoal_entries(folder: Path) -> list[Path]:
    """What an earlier Shoal run left in `folder`: :data:`SESSION_ENTRIES` and their half-written
    temporaries (and `identity_model.tmp`). A `trajectories` or `individual_videos` folder holding
    anything Shoal does not write there is not Shoal's."""
    stems = {name.split(".")[0] for name in SESSION_ENTRIES}
    found = []
    for entry in sorted(Path(folder).iterdir()):
        name = entry.name
        if name in _FOLDER_CONTENT and (entry.is_symlink() or not entry.is_dir() or not all(
                re.fullmatch(_FOLDER_CONTENT[name], p.name) or _temporary(p.name) for p in entry.iterdir())):
            continue
        if (name in SESSION_ENTRIES or name == "identity_model.tmp"
                or _temporary(name) and name[1:].split(".")[0] in stems):
            found.append(entry)
    return found


def clear_session(folder: Path) -> list[Path]:
    """Remove what an earlier Shoal run wrote in `folder` (nothing else); returns what was removed."""
    removed = shoal_entries(folder)
    for entry in removed:
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()
    return removed


#: where ``--overwrite`` keeps the earlier session until the new run has succeeded
EARLIER_SESSION = ".shoal-earlier-session"


def set_aside_session(folder: Path) -> Path | None:
    """Move what an earlier Shoal run wrote in `folder` into its :data:`EARLIER_SESSION` subfolder
    (renames, so nothing is copied); None when there was nothing. A run that fails puts it back
    with :func:`restore_session`, so replacing a session never loses it."""
    entries = shoal_entries(folder)
    if not entries:
        return None
    aside = Path(folder) / EARLIER_SESSION
    if aside.exists():  # left by a run that was killed: what it holds is the older, complete session
        shutil.rmtree(aside)
    aside.mkdir()
    for entry in entries:
        entry.rename(aside / entry.name)
    return aside


def restore_session(folder: Path, aside: Path) -> None:
    """Undo :func:`set_aside_session` after a failed run: its partial outputs go, the earlier session returns."""
    clear_session(folder)
    for entry in sorted(aside.iterdir()):
        entry.rename(Path(folder) / entry.name)
    aside.rmdir()


def utc_iso(unix: float | None) -> str | None:
    """`2026-01-31T12:00:00.123Z`: seconds since the epoch as UTC ISO 8601, for session.json."""
    if unix is None:
        return None
    from datetime import UTC, datetime

    return datetime.fromtimestamp(unix, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def timer_name(stage: str) -> str:
    """One naming style for session.json's timers: "Crossing detection" -> "crossing_detection"."""
    return re.sub(r"[^a-z0-9]+", "_", stage.lower()).strip("_")


def effective_parameters(params: dict, probe: dict, number_of_animals: int, background_model: str | None) -> dict:
    """What the job really used, for session.json: the probe's thresholds and sizes (given or chosen
    from the video), not only what was asked (`params`, a TrackingParams dict; `probe`, the probe's dict).

    With background subtraction a pixel is foreground when it differs from the background model by
    more than `background_difference_threshold`; without it when its intensity is within `intensity_ths`
    (a range with lo > hi wraps: both ends, >= lo or <= hi).
    """
    subtracted = probe.get("background") is not None
    intensity = [float(v) for v in probe["intensity_ths"]]
    lo, hi = probe["area_ths"]
    chosen = [name for name in ("intensity_ths", "area_ths", "id_image_size") if params.get(name) is None]
    effective = {
        "number_of_animals": int(number_of_animals),
        "background_subtraction": subtracted,
        "background_subtraction_stat": params.get("background_subtraction_stat") if subtracted else None,
        "background_difference_threshold": intensity[0] if subtracted else None,
        # which side of the background counts: animals darker (-1), lighter (+1) or either (0)
        "background_sign": int(probe.get("background_sign", 0)) if subtracted else None,
        "background_model": background_model,
        "intensity_ths": intensity,
        "area_ths": [float(lo), None if hi is None or math.isinf(hi) else float(hi)],
        "body_length_px": float(probe["body_length"]),
        "id_image_size_px": int(probe["crop_side"]),
        "id_image_scale": float(probe["crop_scale"]),
        "identities": not params.get("track_wo_identities", False),
        "chosen_from_video": chosen,
        "segmentation_fit": probe.get("exact_share"),  # share of sampled frames showing exactly N blobs
    }
    if params.get("exclusive_rois"):
        effective["arenas"] = int(probe.get("n_regions", 1))
    return effective
