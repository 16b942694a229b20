"""The session folder: what a finished job leaves for the user and their analysis code.

The trajectories go to `trajectories/` in the formats asked for (:mod:`shoal.trajectory_files`);
`session.json` holds what Shoal adds: the parameters asked for and those really used, the run's
times and Shoal version, timers, statistics and warnings. It is written last, once every
trajectory file is in place, and like them to a temporary name first, then renamed.
"""

from __future__ import annotations

import errno
import json
import math
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from shoal.nwb import nwb_metadata
from shoal.params import DEFAULT_FORMATS
from shoal.trajectory_files import NO_SPECIES, trajectories_dict, write_json, write_table, write_trajectories

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
    write_json(out_dir / "session.json", session)
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
    write_json(path, session)
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
    write_table(path, "frame", frames[:, None], "%d")
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
