"""What the corrections make of a session folder: `trajectories_corrected/`, and ground truth.

The corrected trajectories are the originals with the active corrections of the folder's
:class:`~shoal.review.corrections.CorrectionLog` applied, written in every format of the session;
the checked ranges of the log become ground truth in :func:`shoal.evaluate.load_truth`'s form.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from shoal.nwb import nwb_available
from shoal.params import DEFAULT_FORMATS, TRAJECTORY_FORMATS
from shoal.review.corrections import (
    CORRECTED_FOLDER,
    CORRECTIONS_FILE,
    CorrectionError,
    CorrectionLog,
    apply_corrections,
)
from shoal.session import load_session
from shoal.trajectory_files import trajectories_dict, write_trajectories

log = logging.getLogger(__name__)


def _session_json(folder: Path) -> dict[str, Any]:
    path = folder / "session.json"
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as err:
        raise CorrectionError(f"cannot read {path}: {err}") from None


def corrected_formats(session: dict[str, Any]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(formats to write, formats left out): the session's trajectories_formats, less nwb where
    pynwb is not installed here (the corrected files are still worth having in the other formats)."""
    asked = (session.get("parameters") or {}).get("trajectories_formats") or DEFAULT_FORMATS
    known = [f for f in asked if f in TRAJECTORY_FORMATS]
    left_out = tuple(f for f in known if f == "nwb" and not nwb_available())
    return tuple(f for f in known if f not in left_out), left_out


def write_corrected(folder: str | Path, corrections: CorrectionLog | None = None,
                    original: dict[str, Any] | None = None) -> Path | None:
    """Write `trajectories_corrected/` from the original trajectories and the active corrections.

    Same layout and formats as `trajectories/` (which is only read). The files are written into a
    temporary folder that then replaces the previous one, so the folder never mixes two states and
    never holds a half-written file. With no active change (only checks, or everything undone) the
    folder is removed and None returned. A format that cannot be written here (nwb without pynwb)
    is left out with a logged warning; :func:`corrected_formats` tells which. A caller that holds
    the folder's log and original trajectories dict passes them, saving two reads of the file.
    """
    folder = Path(folder)
    corrections = CorrectionLog.load(folder) if corrections is None else corrections
    target = folder / CORRECTED_FOLDER
    if not corrections.has_changes():
        if target.exists():
            shutil.rmtree(target)
        return None
    original = load_session(folder) if original is None else original
    traj, probs = apply_corrections(original["trajectories"], original["id_probabilities"], corrections.active())
    corrected = trajectories_dict({**original, "trajectories": traj, "id_probabilities": probs})
    session = _session_json(folder)
    formats, left_out = corrected_formats(session)
    staging = Path(tempfile.mkdtemp(prefix=f".{CORRECTED_FOLDER}.", suffix=".tmp", dir=folder))
    old = staging.with_name(staging.name[:-len(".tmp")] + ".old.tmp")
    try:
        write_trajectories(staging, corrected, session, formats)
        if target.exists():
            target.rename(old)
        try:
            staging.rename(target)
        except BaseException:
            if old.exists():
                old.rename(target)
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)
    if left_out:
        log.warning("%s: left out the %s format(s): %s", target, ", ".join(left_out),
                    "pynwb and ndx-pose are not installed here (pip install 'shoal[nwb]')")
    return target


def touching_flags(positions: np.ndarray, body_length: float) -> np.ndarray:
    """bool [F, N]: the animal's point lies within one body length of another's (NaN: never).

    The rule of the real-clip references (tests/data/real/README.md), so review truth and those
    references leave the same kind of animal-frames out of `accuracy`.
    """
    positions = np.asarray(positions, np.float64)
    n_frames, n_animals = positions.shape[:2]
    near = np.zeros((n_frames, n_animals), bool)
    step = max(1, 4_000_000 // max(n_animals * n_animals, 1))
    others = ~np.eye(n_animals, dtype=bool)
    for start in range(0, n_frames, step):
        chunk = positions[start:start + step]
        diff = chunk[:, :, None, :] - chunk[:, None, :, :]
        with np.errstate(invalid="ignore"):
            close = (np.hypot(diff[..., 0], diff[..., 1]) < body_length) & others
        near[start:start + step] = close.any(axis=2)
    return near


def session_body_length(folder: str | Path, original: dict[str, Any] | None = None) -> float:
    """The body length (px) the tracking used: session.json's effective parameters, else the trajectories'."""
    used = (_session_json(Path(folder)).get("effective_parameters") or {}).get("body_length_px")
    if used:
        return float(used)
    original = load_session(Path(folder)) if original is None else original
    return float(original["body_length"])


def review_truth(folder: str | Path) -> tuple[np.ndarray, np.ndarray, float]:
    """Ground truth from what a person checked, as :func:`shoal.evaluate.load_truth` returns it.

    positions [F, N, 2]: the corrected trajectories on checked frames, NaN elsewhere; touching [F, N]
    (:func:`touching_flags`); body_length from the session. CorrectionError when the folder has no
    corrections.json or nothing is checked.
    """
    folder = Path(folder)
    if not (folder / CORRECTIONS_FILE).is_file():
        raise CorrectionError(f"no {CORRECTIONS_FILE} in {folder}: check frame ranges with `shoal review {folder}` "
                              "first")
    corrections = CorrectionLog.load(folder)
    ranges = corrections.checked_ranges()
    if not ranges:
        raise CorrectionError(f"nothing is checked in {folder / CORRECTIONS_FILE}: mark the frame ranges you "
                              f"checked with `shoal review {folder}` first")
    original = load_session(folder)
    traj, _ = apply_corrections(original["trajectories"], original["id_probabilities"], corrections.active())
    checked = np.zeros(len(traj), bool)
    for start, end in ranges:
        checked[start:end] = True
    positions = np.full_like(traj, np.nan)
    positions[checked] = traj[checked]
    body_length = session_body_length(folder, original)
    return positions, touching_flags(positions, body_length), body_length
