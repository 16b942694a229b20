"""Trajectory files: one door for every format a job writes its trajectories in.

Labs have analysis code written for idtracker.ai's output, so the trajectories dict has exactly the
key set and shapes of idtracker.ai v6 (method notes §7.1-7.3): a pickled dict in
`trajectories/trajectories.npy`, the same content in `trajectories.h5`, and plain-text tables in
`trajectories/trajectories_csv/`. On request the same trajectories go to the neuroscience data
stack's formats as well: SLEAP's analysis HDF5 (`shoal/sleap.py`) and NWB (`shoal/nwb.py`).

Every file is written to a temporary name in its own folder and then renamed over the final name,
so a crash or a full disk never leaves a half-written trajectories file behind.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import h5py
import numpy as np

import shoal
from shoal.atomic import replacing
from shoal.jsonsafe import json_safe
from shoal.nwb import MISSING_LIBRARY, nwb_available, write_nwb
from shoal.params import TRAJECTORY_FORMATS as FORMATS
from shoal.sleap import write_sleap

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


def write_text(path: Path, text: str) -> None:
    """Write a text file atomically (temporary name, then rename)."""
    with replacing(path) as temporary:
        temporary.write_text(text)


def write_json(path: Path, value: Any) -> None:
    """Write JSON atomically; NaN and infinities become null (:func:`shoal.jsonsafe.json_safe`)."""
    write_text(path, json.dumps(json_safe(value), indent=2, allow_nan=False) + "\n")


def write_table(path: Path, header: str, rows: np.ndarray, fmt: str | list[str]) -> None:
    """Write a CSV table atomically."""
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
    write_table(
        table,
        "time," + ",".join(f"x{i},y{i}" for i in identities),
        np.column_stack([time, positions.reshape(n_frames, 2 * n_animals)]),
        "%.3f",
    )
    write_table(
        folder / "id_probabilities.csv",
        "time," + ",".join(f"id_probabilities{i}" for i in identities),
        np.column_stack([time, trajectories["id_probabilities"][..., 0]]),
        ["%.3f"] + ["%.3e"] * n_animals,
    )
    areas = trajectories["areas"]
    write_table(
        folder / "areas.csv",
        "mean,median,standard_deviation",
        np.column_stack([areas["mean"], areas["median"], areas["std"]]),
        "%.3f",
    )
    write_json(folder / "attributes.json", _attributes(trajectories))
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
    write_table(table, "frame,time,individual,x,y,probability", rows,
                 ["%d", "%.3f", "%d", "%.3f", "%.3f", "%.3e"])
    write_json(folder / "attributes_tidy.json", _attributes(trajectories))
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


