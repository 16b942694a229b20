"""Overlay and individual videos of a finished session: the file I/O around :mod:`shoal.overlay`.

The session folder gives the trajectories, labels, body length and the paths of the original
videos; frames are decoded once, in order, and every output video is written in the same pass.

A job with ``output_video`` / ``output_individual_videos`` calls :func:`write_session_videos` once
its trajectories are written, so a cluster job leaves the same files ``shoal video`` would.

Two codecs: ``mp4v`` (MPEG-4 Part 2 in .mp4) is small and plays in common players but is lossy and
needs even frame sizes (odd sizes are padded with one black row or column); ``lossless`` (FFV1 in
.avi) keeps every pixel and colour exact, at several times the size, and plays in VLC or ffmpeg.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from shoal.overlay import OverlayStyle, crop_centred, draw_overlay, hold_last_known, identity_colours
from shoal.params import DEFAULT_VIDEO_TRAIL
from shoal.session import load_session
from shoal.video import LOSSLESS_FOURCC, VideoError, VideoInfo, probe_video, read_frames

CODECS = {"mp4v": (cv2.VideoWriter_fourcc(*"mp4v"), ".mp4"), "lossless": (LOSSLESS_FOURCC, ".avi")}
#: where `shoal video` and a job with video outputs put them, inside the session folder
OVERLAY_STEM, INDIVIDUAL_FOLDER = "overlay", "individual_videos"

FrameDone = Callable[[], None]
"""Called after each frame a video pass writes (progress; raising from it stops the pass)."""


class RenderError(Exception):
    """The videos cannot be made from this input; the message says what to change."""


@dataclass
class Session:
    """What rendering needs from a session folder."""

    folder: Path
    trajectories: np.ndarray  # float64 [F, N, 2]
    labels: list[str]
    body_length: float
    info: VideoInfo


def open_session(folder: str | Path) -> Session:
    """Load a session folder and probe its original videos; RenderError if either is unusable."""
    folder = Path(folder)
    if not folder.is_dir():
        raise RenderError(f"session folder {folder} does not exist")
    try:
        traj = load_session(folder)
    except FileNotFoundError as exc:
        raise RenderError(str(exc)) from None
    return make_session(folder, traj["trajectories"], traj.get("identities_labels"), traj["body_length"],
                        traj["video_paths"])


def make_session(
    folder: Path, trajectories: np.ndarray, labels: list[str] | None, body_length: float, video_paths: list[str]
) -> Session:
    """A Session from results in memory: a job renders before (or without) any trajectories.npy."""
    trajectories = np.asarray(trajectories, dtype=np.float64)
    try:
        info = probe_video([str(path) for path in video_paths])
    except VideoError as exc:
        raise RenderError(f"cannot read the session's video: {exc}") from None
    if info.n_frames < len(trajectories):
        raise RenderError(f"the session's videos have {info.n_frames} frames but its trajectories "
                          f"{len(trajectories)}: were the videos replaced?")
    labels = [str(label) for label in labels or range(1, trajectories.shape[1] + 1)]
    return Session(Path(folder), trajectories, labels, float(body_length), info)


def frame_range(n_frames: int, start: int | None, end: int | None) -> tuple[int, int]:
    """[start, end) checked against a session of `n_frames`; None means its first/last frame."""
    start = 0 if start is None else start
    end = n_frames if end is None else end
    if not 0 <= start < end <= n_frames:
        raise RenderError(f"frame range [{start}, {end}) is not inside the session's frames [0, {n_frames}) "
                          "(need 0 <= start < end)")
    return start, end


def session_frames(info: VideoInfo, start: int, stop: int) -> Iterator[tuple[int, np.ndarray]]:
    """(global index, grey frame) for [start, stop), across the session's files."""
    for file_start, count in zip(info.file_starts, info.file_frames, strict=True):
        first, last = max(start, file_start), min(stop, file_start + count)
        if first < last:
            yield from read_frames(info, first, last)


class _Writer:
    """cv2.VideoWriter that checks it opened and pads frames to the even size mp4v needs.

    Frames go to a hidden partial file (same extension: OpenCV picks the container from it) that
    :meth:`release` renames into place, so an interrupted pass never leaves a truncated video under
    the final name; :meth:`discard` drops it.
    """

    def __init__(self, path: Path, codec: str, fps: float, width: int, height: int, colour: bool):
        fourcc, _ = CODECS[codec]
        self.pad = (height % 2, width % 2) if codec == "mp4v" else (0, 0)
        size = (width + self.pad[1], height + self.pad[0])
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.partial = path.with_name(f".{path.stem}.{os.getpid()}.partial{path.suffix}")
        self.writer = cv2.VideoWriter(str(self.partial), fourcc, float(fps), size, isColor=colour)
        if not self.writer.isOpened():
            self.partial.unlink(missing_ok=True)
            raise RenderError(f"cannot write {path}: no {codec} encoder in this OpenCV, or no write access")

    def write(self, frame: np.ndarray) -> None:
        if any(self.pad):
            frame = cv2.copyMakeBorder(frame, 0, self.pad[0], 0, self.pad[1], cv2.BORDER_CONSTANT, value=0)
        self.writer.write(np.ascontiguousarray(frame))

    def release(self) -> None:
        self.writer.release()
        os.replace(self.partial, self.path)

    def discard(self) -> None:
        self.writer.release()
        self.partial.unlink(missing_ok=True)


def _progress(total: int, description: str, quiet: bool) -> tqdm:
    return tqdm(total=total, desc=description, unit="frame", disable=quiet, leave=False)


def overlay_path(folder: Path, codec: str = "mp4v") -> Path:
    """The overlay video's default place: `overlay.mp4` (or .avi) in the session folder."""
    return Path(folder) / f"{OVERLAY_STEM}{CODECS[codec][1]}"


def write_overlay_video(
    session: Session, out: Path, start: int, stop: int, trail: int, codec: str = "mp4v", quiet: bool = False,
    on_frame: FrameDone | None = None,
) -> Path:
    """The original frames [start, stop) with every identity's dot, label and trail, in colour."""
    colours = identity_colours(len(session.labels))
    style = OverlayStyle.for_body_length(session.body_length)
    writer = _Writer(out, codec, session.info.fps, session.info.width, session.info.height, colour=True)
    try:
        with _progress(stop - start, "overlay video", quiet) as bar:
            for index, frame in session_frames(session.info, start, stop):
                writer.write(draw_overlay(frame, session.trajectories, index, session.labels, colours, trail, style))
                bar.update()
                if on_frame is not None:
                    on_frame()
    except BaseException:
        writer.discard()
        raise
    writer.release()
    return out


def individual_video_name(number: int, label: str, codec: str) -> str:
    """`individual_3.mp4`, or `individual_3_<label>.mp4` when the identity has its own label."""
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", label).strip("._")
    suffix = f"_{safe}" if safe and label != str(number) else ""
    return f"individual_{number}{suffix}{CODECS[codec][1]}"


def write_individual_videos(
    session: Session, folder: Path, start: int, stop: int, side: int, codec: str = "mp4v", quiet: bool = False,
    on_frame: FrameDone | None = None,
) -> dict[int, Path]:
    """One grey `side` x `side` video per identity, centred on it in every frame of [start, stop).

    Where an animal is unknown its video holds the last known position. Returns {identity number
    (1-based): path}; an identity never seen in the range has no video and is absent.
    """
    tracks = {animal + 1: hold_last_known(session.trajectories[start:stop, animal])
              for animal in range(len(session.labels))}
    paths = {number: folder / individual_video_name(number, session.labels[number - 1], codec)
             for number, track in tracks.items() if np.isfinite(track).all()}
    with ExitStack() as stack:  # on any error every partial file is dropped
        writers = {}
        for number, path in paths.items():
            writers[number] = _Writer(path, codec, session.info.fps, side, side, colour=False)
            stack.callback(writers[number].discard)
        with _progress(stop - start, "individual videos", quiet) as bar:
            for index, frame in session_frames(session.info, start, stop):
                for number, writer in writers.items():
                    writer.write(crop_centred(frame, tracks[number][index - start], side))
                bar.update()
                if on_frame is not None:
                    on_frame()
        stack.pop_all()
    for writer in writers.values():
        writer.release()
    return paths


def unseen_identities(session: Session, written: dict[int, Path]) -> list[str]:
    """Labels of the identities that got no individual video (never seen in the frames rendered)."""
    return [label for number, label in enumerate(session.labels, start=1) if number not in written]


def default_side(body_length: float) -> int:
    """Individual videos' side: one body length, rounded up to even (what mp4v needs), at least 8."""
    if not np.isfinite(body_length) or body_length <= 0:
        raise RenderError("the session has no body length; give the side with --size "
                          "(individual_video_size in a job)")
    return max(8, int(np.ceil(body_length / 2)) * 2)


@dataclass
class SessionVideos:
    """What :func:`write_session_videos` wrote (paths relative to the session folder) and what failed."""

    overlay: str | None = None
    individual: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def write_session_videos(
    folder: Path, trajectories: np.ndarray, labels: list[str] | None, body_length: float, video_paths: list[str],
    *, overlay: bool, individual: bool, trail: int | None = None, side: int | None = None,
    progress: Callable[[float], None] | None = None,
) -> SessionVideos:
    """A job's videos: `shoal video SESSION` and/or `shoal video SESSION --individual`, whole session, mp4v.

    Each video is tried on its own and a failure becomes a warning naming it, never an exception:
    the trajectories are already written and must not be lost for a video. `progress` gets the
    fraction done (0..1, at most once per percent); an exception it raises (cancellation) stops
    rendering and propagates.
    """
    folder = Path(folder)
    result = SessionVideos()
    wanted = [kind for kind, asked in (("overlay video", overlay), ("individual videos", individual)) if asked]
    if not wanted:
        return result
    try:
        session = make_session(folder, trajectories, labels, body_length, video_paths)
    except RenderError as exc:
        result.warnings.append(f"{' and '.join(wanted)} not written: {exc}")
        return result
    n_frames = len(session.trajectories)
    total, done, reported = n_frames * len(wanted), 0, -1

    def on_frame() -> None:
        nonlocal done, reported
        done += 1
        percent = 100 * done // total
        if progress is not None and percent != reported:
            reported = percent
            progress(done / total)

    for kind in wanted:
        done = wanted.index(kind) * n_frames  # a pass that failed half-way must not skew the next
        try:
            if kind == "overlay video":
                out = write_overlay_video(session, overlay_path(folder), 0, n_frames,
                                          DEFAULT_VIDEO_TRAIL if trail is None else trail, quiet=True,
                                          on_frame=on_frame)
                result.overlay = out.relative_to(folder).as_posix()
            else:
                size = default_side(session.body_length) if side is None else side
                written = write_individual_videos(session, folder / INDIVIDUAL_FOLDER, 0, n_frames, size,
                                                  quiet=True, on_frame=on_frame)
                result.individual = [path.relative_to(folder).as_posix() for _, path in sorted(written.items())]
                unseen = unseen_identities(session, written)
                if unseen:
                    result.warnings.append(f"no individual video for identities never seen: {', '.join(unseen)}")
        except (RenderError, VideoError, OSError, cv2.error, ValueError) as exc:
            result.warnings.append(f"{kind} not written: {exc}")
    return result
