"""The corrections a person makes while reviewing a session, and what they do to its trajectories.

Corrections live in `corrections.json` in the session folder, an append-only log: nothing is ever
removed from it, undo and redo are entries too, and the current state is always replayed from the
file. So closing the page, a crash or a reload loses nothing, and the log doubles as a record of
who changed what when. The original `trajectories/` are never modified; the corrected trajectories
go to `trajectories_corrected/` in every format of the session (:mod:`shoal.review.outputs`).

The log belongs to one tracking: it stores the SHA-256 of the original trajectories array, and a log
made for other trajectories (the folder was tracked again) is refused rather than applied to the
wrong animals. It is the person's work, not Shoal's, so ``shoal track --overwrite`` leaves it alone.

Identities are numbered 1..N as in the trajectory files (column i is identity i + 1); frames are
global 0-based indices and ranges half-open ``[start, end)``, ``end`` null meaning "to the last frame".

Entry ops (every entry also has ``id``, 1, 2, … and ``time``, UTC ISO 8601):

- ``swap`` a, b, start, end: identities a and b exchange their positions and certainties over the range;
- ``assign`` identity, to, start, end: what `identity` holds over the range goes to `to`. It is recorded
  as its own op (what the person meant) but applied as a swap of the two over the range, so whatever
  `to` held there moves to `identity` instead of being lost;
- ``move`` identity, frame, x, y: set one position (the certainty stays as it was);
- ``delete`` identity, start, end: wrong positions become unknown (NaN, certainty too);
- ``check`` start, end: a person checked the range; it changes nothing and becomes ground truth
  (:func:`shoal.review.outputs.review_truth`);
- ``undo`` / ``redo``: undo the latest active entry / redo the latest undone one (a stack: a new
  entry clears what can be redone).
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import threading
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from shoal.atomic import replacing
from shoal.session import load_session, utc_iso

CORRECTIONS_FILE = "corrections.json"
#: the corrected trajectories, laid out as `trajectories/` (a Shoal entry: shoal.session.SESSION_ENTRIES)
CORRECTED_FOLDER = "trajectories_corrected"
LOG_VERSION = 1

#: each op's fields besides op, id and time
OP_FIELDS: dict[str, tuple[str, ...]] = {
    "swap": ("a", "b", "start", "end"),
    "assign": ("identity", "to", "start", "end"),
    "move": ("identity", "frame", "x", "y"),
    "delete": ("identity", "start", "end"),
    "check": ("start", "end"),
    "undo": (),
    "redo": (),
}
#: ops that change the trajectories (check only marks frames)
CHANGING_OPS = ("swap", "assign", "move", "delete")


class CorrectionError(ValueError):
    """A correction or correction log that cannot be used; the one-line message says what to fix."""


def trajectories_digest(trajectories: np.ndarray) -> str:
    """SHA-256 of the trajectories array's bytes (float64, C order): ties a log to one tracking."""
    return hashlib.sha256(np.ascontiguousarray(trajectories, dtype=np.float64).tobytes()).hexdigest()


def _integer(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer | float):
        raise CorrectionError(f"{name} must be a whole number, got {value!r}")
    if isinstance(value, float) and not value.is_integer():
        raise CorrectionError(f"{name} must be a whole number, got {value!r}")
    return int(value)


def _number(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
        raise CorrectionError(f"{name} must be a number, got {value!r}")
    if not math.isfinite(float(value)):
        raise CorrectionError(f"{name} must be finite, got {value!r}")
    return float(value)


def validate_op(op: Any, n_frames: int, n_animals: int, width: float, height: float) -> dict[str, Any]:
    """The op normalised (fields in order, plain ints and floats), or CorrectionError saying what is wrong.

    ``id`` and ``time`` are not checked here (the log sets them).
    """
    if not isinstance(op, dict):
        raise CorrectionError(f"a correction must be a JSON object, got {op!r}")
    kind = op.get("op")
    if kind not in OP_FIELDS:
        raise CorrectionError(f"unknown correction op {kind!r}; use one of {', '.join(OP_FIELDS)}")
    fields = OP_FIELDS[kind]
    unknown = sorted(set(op) - {"op", "id", "time", *fields})
    if unknown:
        raise CorrectionError(f"{kind}: unknown field(s) {', '.join(unknown)}; it takes {', '.join(fields) or 'none'}")
    missing = [name for name in fields if name not in op]
    if missing:
        raise CorrectionError(f"{kind}: missing field(s) {', '.join(missing)}")
    out: dict[str, Any] = {"op": kind}
    for name in ("a", "b", "identity", "to"):
        if name in fields:
            out[name] = _integer(op[name], name)
            if not 1 <= out[name] <= n_animals:
                raise CorrectionError(f"{kind}: {name} = {out[name]} is not an identity (1..{n_animals})")
    for first, second in (("a", "b"), ("identity", "to")):
        if second in out and out[first] == out[second]:
            raise CorrectionError(f"{kind}: {first} and {second} are both identity {out[first]}")
    if "start" in fields:
        start = _integer(op["start"], "start")
        end = None if op["end"] is None else _integer(op["end"], "end")
        if not 0 <= start < n_frames:
            raise CorrectionError(f"{kind}: start = {start} is outside the frames [0, {n_frames})")
        if end is not None and not start < end <= n_frames:
            raise CorrectionError(f"{kind}: end = {end} must be after start = {start} and at most {n_frames}")
        out["start"], out["end"] = start, end
    if kind == "move":
        out["frame"] = _integer(op["frame"], "frame")
        if not 0 <= out["frame"] < n_frames:
            raise CorrectionError(f"move: frame = {out['frame']} is outside the frames [0, {n_frames})")
        for name, limit in (("x", width), ("y", height)):
            out[name] = _number(op[name], name)
            if not 0 <= out[name] <= limit:
                raise CorrectionError(f"move: {name} = {out[name]:g} is outside the video [0, {limit:g}]")
    return out


def replay(entries: Iterable[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(active, redoable) entries after replaying undo/redo, each list oldest first.

    CorrectionError for an undo or redo with nothing to act on (a file edited by hand).
    """
    active: list[dict[str, Any]] = []
    undone: list[dict[str, Any]] = []
    for entry in entries:
        kind = entry.get("op")
        if kind == "undo":
            if not active:
                raise CorrectionError(f"entry {entry.get('id')}: undo with nothing to undo")
            undone.append(active.pop())
        elif kind == "redo":
            if not undone:
                raise CorrectionError(f"entry {entry.get('id')}: redo with nothing to redo")
            active.append(undone.pop())
        else:
            active.append(entry)
            undone.clear()
    return active, undone[::-1]


def active_entries(entries: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """The entries in effect, oldest first: those neither undone nor undo/redo records."""
    return replay(entries)[0]


def entry_range(entry: dict[str, Any], n_frames: int) -> tuple[int, int]:
    """The half-open frame range an entry covers (a move: its one frame; end null: to the last frame)."""
    if entry["op"] == "move":
        return entry["frame"], entry["frame"] + 1
    return entry["start"], n_frames if entry["end"] is None else min(entry["end"], n_frames)


def apply_corrections(
    trajectories: np.ndarray, id_probabilities: np.ndarray, entries: Iterable[dict[str, Any]]
) -> tuple[np.ndarray, np.ndarray]:
    """Corrected copies of trajectories [F, N, 2] and id_probabilities [F, N, 1] (or [F, N]).

    `entries` are applied in order; a log's full entry list may be given (undo/redo are replayed
    first). Inputs are never modified. Swap and assign exchange both arrays' columns, so certainty
    travels with the position it describes; delete sets both to NaN; move sets the position only;
    check changes nothing.
    """
    traj = np.array(trajectories, dtype=np.float64, copy=True)
    probs = np.array(id_probabilities, dtype=np.float64, copy=True)
    n_frames = traj.shape[0]
    for entry in active_entries(entries):
        kind = entry["op"]
        if kind == "check":
            continue
        start, end = entry_range(entry, n_frames)
        if kind in ("swap", "assign"):
            i, j = (entry["a"], entry["b"]) if kind == "swap" else (entry["identity"], entry["to"])
            cols = [i - 1, j - 1]
            traj[start:end, cols] = traj[start:end, cols[::-1]]
            probs[start:end, cols] = probs[start:end, cols[::-1]]
        elif kind == "delete":
            traj[start:end, entry["identity"] - 1] = np.nan
            probs[start:end, entry["identity"] - 1] = np.nan
        elif kind == "move":
            traj[entry["frame"], entry["identity"] - 1] = (entry["x"], entry["y"])
        else:
            raise CorrectionError(f"cannot apply a {kind!r} entry")
    return traj, probs


def merge_ranges(ranges: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    """Sorted, disjoint ranges covering the same frames (touching ranges join)."""
    merged: list[tuple[int, int]] = []
    for start, end in sorted(ranges):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


class CorrectionLog:
    """The correction log of one session's trajectories. Every add/undo/redo is saved at once.

    Thread-safe; use :meth:`load` to open a session folder's log.
    """

    def __init__(self, path: Path, *, n_frames: int, n_animals: int, width: float, height: float, digest: str,
                 entries: Sequence[dict[str, Any]] = ()):
        self.path = Path(path)
        self.n_frames, self.n_animals = int(n_frames), int(n_animals)
        self.width, self.height = float(width), float(height)
        self.digest = digest
        self._lock = threading.RLock()
        self._entries: list[dict[str, Any]] = []
        for position, entry in enumerate(entries, start=1):
            self._entries.append(self._checked_entry(entry, position))
        try:
            self._active, self._undone = replay(self._entries)
        except CorrectionError as err:
            raise CorrectionError(f"{self.path}: {err}") from None

    @classmethod
    def load(cls, folder: str | Path) -> CorrectionLog:
        """The log of a session folder (empty when it has no corrections.json yet).

        CorrectionError when the file is not valid, or was made for other trajectories.
        """
        folder = Path(folder)
        original = load_session(folder)
        trajectories = np.asarray(original["trajectories"], np.float64)
        digest = trajectories_digest(trajectories)
        path = folder / CORRECTIONS_FILE
        shape = {"n_frames": trajectories.shape[0], "n_animals": trajectories.shape[1],
                 "width": float(original["width"]), "height": float(original["height"]), "digest": digest}
        if not path.exists():
            return cls(path, **shape)
        try:
            content = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, ValueError) as err:
            raise CorrectionError(f"cannot read {path} ({err}): fix it or move it aside") from None
        if not isinstance(content, dict) or not isinstance(content.get("entries"), list):
            raise CorrectionError(f"{path} is not a correction log (no entries list): fix it or move it aside")
        if content.get("version") != LOG_VERSION:
            raise CorrectionError(f"{path} has version {content.get('version')!r}, this Shoal reads version "
                                  f"{LOG_VERSION}: use a matching Shoal or move it aside")
        if content.get("trajectories_sha256") != digest:
            raise CorrectionError(f"{path} was made for other trajectories than {folder / 'trajectories'} "
                                  "(was the session tracked again?): move it aside to review this tracking")
        return cls(path, **shape, entries=content["entries"])

    def _checked_entry(self, entry: Any, position: int) -> dict[str, Any]:
        """A stored entry, validated (CorrectionError naming it and the file)."""
        where = f"{self.path}: entry {position}"
        try:
            op = validate_op(entry, self.n_frames, self.n_animals, self.width, self.height)
        except CorrectionError as err:
            raise CorrectionError(f"{where}: {err}") from None
        if entry.get("id") != position or isinstance(entry.get("id"), bool):
            raise CorrectionError(f"{where}: its id is {entry.get('id')!r}, expected {position}")
        if not isinstance(entry.get("time"), str):
            raise CorrectionError(f"{where}: its time is {entry.get('time')!r}, expected a UTC ISO time")
        return {"id": position, "time": entry["time"], **op}

    # --- state -----------------------------------------------------------------------------------
    @property
    def entries(self) -> list[dict[str, Any]]:
        """Every entry of the file, oldest first (copies)."""
        with self._lock:
            return copy.deepcopy(self._entries)

    def active(self) -> list[dict[str, Any]]:
        """The corrections and checks in effect, oldest first (copies, JSON-ready)."""
        with self._lock:
            return copy.deepcopy(self._active)

    @property
    def can_undo(self) -> bool:
        return bool(self._active)

    @property
    def can_redo(self) -> bool:
        return bool(self._undone)

    def checked_ranges(self) -> list[tuple[int, int]]:
        """The frame ranges checked by active checks, merged."""
        with self._lock:
            return merge_ranges(entry_range(e, self.n_frames) for e in self._active if e["op"] == "check")

    def has_changes(self) -> bool:
        """Whether an active entry changes the trajectories (a check alone does not)."""
        with self._lock:
            return any(e["op"] in CHANGING_OPS for e in self._active)

    # --- changes ---------------------------------------------------------------------------------
    def add(self, op: dict[str, Any]) -> dict[str, Any]:
        """Validate and record one correction; returns the entry as stored.

        ``{"op": "undo"}`` / ``{"op": "redo"}`` are passed to :meth:`undo` / :meth:`redo`. An invalid
        op raises CorrectionError and records nothing. ``id`` and ``time`` are set here.
        """
        if isinstance(op, dict) and op.get("op") in ("undo", "redo"):
            if set(op) != {"op"}:
                raise CorrectionError(f"{op['op']} takes no fields")
            return self.undo() if op["op"] == "undo" else self.redo()
        if isinstance(op, dict) and ({"id", "time"} & set(op)):
            raise CorrectionError("id and time are set by the log, not given")
        normalised = validate_op(op, self.n_frames, self.n_animals, self.width, self.height)
        with self._lock:
            entry = self._append(normalised)
            return copy.deepcopy(entry)

    def undo(self) -> dict[str, Any]:
        """Undo the latest active entry; returns it. CorrectionError "nothing to undo" (not recorded)."""
        with self._lock:
            if not self._active:
                raise CorrectionError("nothing to undo")
            undone = self._active[-1]
            self._append({"op": "undo"})
            return copy.deepcopy(undone)

    def redo(self) -> dict[str, Any]:
        """Redo the latest undone entry; returns it. CorrectionError "nothing to redo" (not recorded)."""
        with self._lock:
            if not self._undone:
                raise CorrectionError("nothing to redo")
            redone = self._undone[-1]
            self._append({"op": "redo"})
            return copy.deepcopy(redone)

    def _append(self, op: dict[str, Any]) -> dict[str, Any]:
        """Record an entry and save; on a failed save the log is as before (and the error raised)."""
        entry = {"id": len(self._entries) + 1, "time": utc_iso(time.time()), **op}
        before = (self._active, self._undone)
        self._entries.append(entry)
        self._active, self._undone = replay(self._entries)
        try:
            self.save()
        except BaseException:
            self._entries.pop()
            self._active, self._undone = before
            raise
        return entry

    def save(self) -> None:
        """Write the whole log atomically (a crash leaves the previous file)."""
        with self._lock:
            # one entry a line: readable, and a diff of two saves shows the new entries only
            lines = ",\n".join("  " + json.dumps(entry, allow_nan=False) for entry in self._entries)
            text = (f'{{"version": {LOG_VERSION}, "trajectories_sha256": "{self.digest}",\n "entries": [\n'
                    f'{lines}{chr(10) if lines else ""} ]}}\n')
            json.loads(text)  # never save what cannot be read back
            with replacing(self.path) as temporary:
                temporary.write_text(text)
