"""One session folder opened for review: its trajectories, corrections, frames and blob outlines.

The page asks for everything through this class, so the HTTP layer (:mod:`shoal.review.app`)
stays a thin shell. The original trajectories are read once and never written; every correction
goes through :class:`~shoal.review.corrections.CorrectionLog`, which saves it at once, and then
`trajectories_corrected/` is rewritten, so closing the page (or a crash) loses nothing.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import numpy as np

from shoal.overlay import identity_colours
from shoal.review.corrections import CorrectionError, CorrectionLog, apply_corrections
from shoal.review.doubts import corrected_ranges, doubtful_moments, timeline
from shoal.review.frames import FrameSource
from shoal.review.outputs import session_body_length, write_corrected
from shoal.roi import RoiError, roi_mask
from shoal.segmentation import segment_frame
from shoal.session import BACKGROUND_FILE, REVIEW_CACHE, load_session
from shoal.video import VideoError, probe_video


class ReviewError(Exception):
    """The session cannot be reviewed; the message names the file or value to fix."""


def _rounded(values: np.ndarray, decimals: int) -> list:
    """Nested lists with NaN as None (JSON has no NaN), rounded to keep the page's download small."""
    rounded = np.round(values, decimals).astype(object)
    rounded[~np.isfinite(values)] = None
    return rounded.tolist()


def _inconsistent_frames(folder: Path) -> np.ndarray:
    path = folder / "inconsistent_frames.csv"
    if not path.is_file():
        return np.zeros(0, np.int64)
    return np.atleast_1d(np.loadtxt(path, delimiter=",", skiprows=1, dtype=np.int64))


class ReviewSession:
    """A session folder being reviewed. Thread-safe: the web server calls it from several threads."""

    def __init__(self, folder: str | Path, *, frame_cache: bool = True):
        self.folder = Path(folder)
        session_file = self.folder / "session.json"
        if not session_file.is_file():
            raise ReviewError(f"{session_file} does not exist: is {self.folder} a session folder written by "
                              "shoal track or shoal fetch?")
        try:
            self.session: dict[str, Any] = json.loads(session_file.read_text())
            self.original = load_session(self.folder)
        except FileNotFoundError as exc:
            raise ReviewError(str(exc)) from None
        except (ValueError, OSError) as exc:
            raise ReviewError(f"cannot read the session in {self.folder}: {exc}") from None
        paths = [str(p) for p in self.original.get("video_paths") or self.session.get("video", {}).get("paths", [])]
        missing = [p for p in paths if not Path(p).is_file()]
        if missing:
            raise ReviewError(f"the session's video {missing[0]} does not exist (session.json lists it): put the "
                              "video back there, or review on the machine that has it")
        try:
            self.info = probe_video(paths)
        except VideoError as exc:
            raise ReviewError(f"cannot read the session's video: {exc}") from None
        traj = np.asarray(self.original["trajectories"], np.float64)
        if self.info.n_frames < len(traj):
            raise ReviewError(f"the session's videos have {self.info.n_frames} frames but its trajectories "
                              f"{len(traj)}: were the videos replaced?")
        self.n_frames, self.n_animals = traj.shape[:2]
        self.body_length = session_body_length(self.folder, self.original)
        try:
            self.log = CorrectionLog.load(self.folder)
        except CorrectionError as exc:
            raise ReviewError(str(exc)) from None
        self.frames = FrameSource(self.info, self.folder / REVIEW_CACHE if frame_cache else None)
        self._segmentation = self._segmentation_inputs()
        self._lock = threading.Lock()

    def close(self) -> None:
        self.frames.close()

    def _segmentation_inputs(self) -> dict[str, Any] | None:
        """What segment_frame needs to redraw the blobs the tracking saw; None if the session lacks it."""
        used = self.session.get("effective_parameters") or {}
        if "intensity_ths" not in used or "area_ths" not in used:
            return None
        background = None
        if used.get("background_subtraction"):
            path = self.folder / (used.get("background_model") or BACKGROUND_FILE)
            if not path.is_file():
                return None
            background = np.load(path)
        roi_list = (self.session.get("parameters") or {}).get("roi_list")
        try:
            roi = roi_mask(roi_list, self.info.width, self.info.height) if roi_list else None
        except RoiError:
            roi = None
        return {"intensity_ths": tuple(used["intensity_ths"]), "area_ths": tuple(used["area_ths"]),
                "background": background, "roi": roi, "sign": int(used.get("background_sign", 0))}

    def corrected(self) -> tuple[np.ndarray, np.ndarray]:
        """(trajectories, id_probabilities) with the active corrections applied."""
        return apply_corrections(self.original["trajectories"], self.original["id_probabilities"], self.log.active())

    def state(self) -> dict[str, Any]:
        """Everything the page draws, as JSON-ready values (identities numbered 1..N as in the files)."""
        with self._lock:
            traj, probs = self.corrected()
            stats = self.session.get("statistics") or {}
            moments = doubtful_moments(
                traj, probs, body_length=self.body_length,
                velocity_threshold=float(stats.get("velocity_threshold") or np.inf),
                inconsistent_frames=_inconsistent_frames(self.folder))
            colours = [f"#{r:02x}{g:02x}{b:02x}" for b, g, r in identity_colours(self.n_animals).tolist()]
            return {
                "title": self.folder.name,
                "n_frames": int(self.n_frames), "n_animals": int(self.n_animals),
                "width": int(self.info.width), "height": int(self.info.height), "fps": float(self.info.fps),
                "body_length": self.body_length,
                "labels": [str(label) for label in self.original.get("identities_labels") or
                           range(1, self.n_animals + 1)],
                "colours": colours,
                "x": _rounded(traj[..., 0].T, 2), "y": _rounded(traj[..., 1].T, 2),
                "certainty": _rounded(probs[..., 0].T, 3),
                "timeline": [[segment.to_json() for segment in row] for row in timeline(traj, probs)],
                "corrected": corrected_ranges(self.log.active(), self.n_frames, self.n_animals),
                "doubtful": [moment.to_json() for moment in moments],
                "checked": [list(r) for r in self.log.checked_ranges()],
                "corrections": self.log.active(),
                "can_undo": self.log.can_undo, "can_redo": self.log.can_redo,
                "estimated_accuracy": self.original.get("estimated_accuracy"),
                "warnings": list(self.session.get("warnings") or []),
                "outlines": self._segmentation is not None,
                "frames": self.frames.progress(),
            }

    def blobs(self, frame: int) -> list[list[list[int]]]:
        """Outline polygons of the blobs the tracking's segmentation finds in `frame` ([] without one)."""
        self._check_frame(frame)
        if self._segmentation is None:
            return []
        gray = self.frames.gray(frame)
        table = segment_frame(gray, frame, **self._segmentation)
        offsets = table.contour_offsets
        return [table.contour_points[offsets[i]:offsets[i + 1]].tolist() for i in range(len(table))]

    def jpeg(self, frame: int) -> bytes:
        self._check_frame(frame)
        return self.frames.jpeg(frame)

    def _check_frame(self, frame: int) -> None:
        if not 0 <= frame < self.n_frames:
            raise IndexError(f"frame {frame} is outside the session's frames [0, {self.n_frames})")

    def correct(self, op: dict[str, Any]) -> dict[str, Any]:
        """Record one correction (or 'undo'/'redo'), rewrite the corrected trajectories, return the new state."""
        with self._lock:
            try:
                if op.get("op") == "undo":
                    self.log.undo()
                elif op.get("op") == "redo":
                    self.log.redo()
                else:
                    self.log.add(op)
            except CorrectionError as exc:
                raise ReviewError(str(exc)) from None
            write_corrected(self.folder, self.log, self.original)
        return self.state()
