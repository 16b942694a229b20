"""Reading (and, for tests and the simulator, writing) the videos of a tracking session.

A session is one or more video files played one after the other; Shoal addresses frames by a
*global* index over the concatenation, as idtracker.ai does (method notes §2.1). This module is the
only place that talks to OpenCV's video I/O, so the algorithm modules only ever see grey uint8
arrays. Work is split into chunks ("episodes" in idtracker.ai, :mod:`shoal.chunks`) that never
span two files, so every worker decodes from a single file and seeks once.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from shoal.decoder_log import DecoderMessages, decoder_log_setting

LOSSLESS_FOURCC: int = cv2.VideoWriter_fourcc(*"FFV1")
"""FFV1 in an .avi container: lossless and intra-only, so frames read back bit-identical and seeking
is exact. The canonical codec for videos Shoal writes (tests, simulator)."""

UNCOMPRESSED_FOURCC: int = cv2.VideoWriter_fourcc(*"Y800")
"""Raw 8-bit grey in .avi: also exact, about 10x faster to decode than FFV1 but twice its size or more."""

LOSSLESS_SUFFIX = ".avi"

FALLBACK_FPS = 25.0
"""Frame rate assumed when a file reports none (a warning says so); only times depend on it."""

_READ_FORWARD_GAP = 16
"""sample_frames decodes forward instead of seeking when the next sample is at most this far ahead:
decoding a few frames is cheaper than a seek, which restarts decoding at a key frame."""


class VideoError(Exception):
    """A video cannot be used; the message says which file and why, in words a user can act on."""


@dataclass
class VideoInfo:
    """What the rest of Shoal needs to know about a session's videos."""

    paths: list[str]
    width: int
    height: int
    fps: float
    n_frames: int
    file_frames: list[int]
    file_starts: list[int]
    warnings: list[str] = field(default_factory=list)

    def file_of(self, frame: int) -> int:
        """Index of the file holding global frame `frame`."""
        if not 0 <= frame < self.n_frames:
            raise ValueError(f"frame {frame} is outside the session (0..{self.n_frames - 1})")
        return int(np.searchsorted(self.file_starts, frame, side="right")) - 1


def _open(path: str) -> cv2.VideoCapture:
    if not os.path.exists(path):
        raise VideoError(f"cannot open video {path}: file does not exist")
    if not os.path.isfile(path):
        raise VideoError(f"cannot open video {path}: not a regular file")
    with decoder_log_setting():
        capture = cv2.VideoCapture(path)
    if not capture.isOpened():
        damage = _mp4_damage(path)
        if damage:
            raise VideoError(f"cannot open video {path}: the file is damaged: {damage}")
        raise VideoError(f"cannot open video {path}: OpenCV cannot decode it (codec?)")
    return capture


def _mp4_damage(path: str) -> str | None:
    """Why an MP4/MOV file (``ftyp`` box first) cannot be opened, from its top-level boxes; None if it
    is not one or its boxes look whole. A recording cut short usually lacks its index (``moov``)."""
    size = os.path.getsize(path)
    boxes, offset = [], 0
    with open(path, "rb") as fh:
        while offset + 8 <= size:
            fh.seek(offset)
            length, kind = struct.unpack(">I4s", fh.read(8))
            if length == 1 and offset + 16 <= size:
                length = struct.unpack(">Q", fh.read(8))[0]
            elif length == 0:
                length = size - offset
            boxes.append(kind)
            if length < 8 or offset + length > size:
                return (f"it ends inside its {kind.decode(errors='replace')!r} box after {size} bytes "
                        "(truncated: a recording cut short?)" if boxes[0] == b"ftyp" else None)
            offset += length
    if not boxes or boxes[0] != b"ftyp" or b"moov" in boxes:
        return None
    return "it has no index (moov box): the recording was cut short before it was closed"


def _to_gray(frame: np.ndarray) -> np.ndarray:
    if frame.ndim == 2:
        return frame
    if frame.shape[2] == 4:
        return cv2.cvtColor(frame, cv2.COLOR_BGRA2GRAY)
    return cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY)


def _seek(capture: cv2.VideoCapture, path: str, local_frame: int) -> cv2.VideoCapture:
    """Position `capture` so the next read returns `local_frame`.

    If the container does not report the requested position after a seek, seeking is not trusted
    and the file is decoded forward from its first frame instead (slow but exact).
    """
    capture.set(cv2.CAP_PROP_POS_FRAMES, local_frame)
    if int(round(capture.get(cv2.CAP_PROP_POS_FRAMES))) == local_frame:
        return capture
    capture.release()
    capture = _open(path)
    for skipped in range(local_frame):
        if not capture.grab():
            capture.release()
            raise VideoError(f"cannot decode frame {skipped} of {path}")
    return capture


def _probe_file(path: str) -> tuple[int, int, float, int, list[str]]:
    """Width, height, fps, frame count and warnings of one file."""
    capture = _open(path)
    try:
        n_frames = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
        if n_frames <= 0:
            raise VideoError(f"cannot use video {path}: OpenCV reports {n_frames} frames (damaged file?)")
        ok, frame = capture.read()
        if not ok or frame is None:
            raise VideoError(f"cannot open video {path}: OpenCV cannot decode its first frame (codec?)")
        height, width = frame.shape[:2]
        fps = float(capture.get(cv2.CAP_PROP_FPS))
        warnings = []
        if not np.isfinite(fps) or fps <= 0:
            warnings.append(f"{path} reports no frame rate; times assume {FALLBACK_FPS:g} fps")
            fps = FALLBACK_FPS
        n_readable = _last_readable(capture, n_frames)
        if n_readable != n_frames:
            warnings.append(
                f"{path} is damaged: it reports {n_frames} frames but only the first {n_readable} decode "
                f"(recording cut short?); tracking those {n_readable}"
            )
        return width, height, fps, n_readable, warnings
    finally:
        capture.release()


def _last_readable(capture: cv2.VideoCapture, n_frames: int) -> int:
    """Frame count corrected for files whose end does not decode (a recording cut short).

    If the last reported frame does not decode, a binary search over seeks finds the last one that
    does (decodable frames of a truncated file form a prefix); frame 0 is known to decode.
    """
    def decodes(local_frame: int) -> bool:
        capture.set(cv2.CAP_PROP_POS_FRAMES, local_frame)
        return capture.grab()

    if decodes(n_frames - 1):
        return n_frames
    good, bad = 0, n_frames - 1
    while bad - good > 1:
        middle = (good + bad) // 2
        good, bad = (middle, bad) if decodes(middle) else (good, middle)
    return good + 1


def probe_video(paths: list[str]) -> VideoInfo:
    """Describe the session formed by `paths` played in order; raises VideoError if unusable."""
    if not paths:
        raise VideoError("no video given")
    paths = [str(p) for p in paths]
    probes = [_probe_file(path) for path in paths]
    width, height = probes[0][0], probes[0][1]
    for path, (w, h, *_rest) in zip(paths[1:], probes[1:], strict=True):
        if (w, h) != (width, height):
            raise VideoError(
                f"videos have different sizes: {Path(paths[0]).name} is {width}x{height}, "
                f"{Path(path).name} is {w}x{h}"
            )
    warnings = [message for probe in probes for message in probe[4]]
    rates = [probe[2] for probe in probes]
    fps = float(np.mean(rates))
    if len(set(rates)) > 1:
        listing = ", ".join(f"{Path(p).name} {r:g}" for p, r in zip(paths, rates, strict=True))
        warnings.append(f"videos have different frame rates ({listing}); using their mean {fps:g} fps")
    file_frames = [probe[3] for probe in probes]
    file_starts = np.concatenate([[0], np.cumsum(file_frames)[:-1]]).astype(int).tolist()
    return VideoInfo(paths, width, height, fps, int(sum(file_frames)), file_frames, file_starts, warnings)


def read_frames(info: VideoInfo, start: int, stop: int) -> Iterator[tuple[int, np.ndarray]]:
    """Yield (global index, grey uint8 [H, W] frame) for frames [start, stop) of one file."""
    if start >= stop:
        return
    file_index = info.file_of(start)
    file_start = info.file_starts[file_index]
    file_stop = file_start + info.file_frames[file_index]
    if stop > file_stop:
        raise ValueError(
            f"frames [{start}, {stop}) span two files: {info.paths[file_index]} ends at frame {file_stop}"
        )
    path = info.paths[file_index]
    capture = _open(path)
    try:
        if start > file_start:
            capture = _seek(capture, path, start - file_start)
        for frame_index in range(start, stop):
            ok, frame = capture.read()
            if not ok or frame is None:
                raise VideoError(
                    f"cannot decode frame {frame_index} (frame {frame_index - file_start} of {path}); "
                    "the file may be damaged"
                )
            yield frame_index, _to_gray(frame)
    finally:
        capture.release()


def read_frame(info: VideoInfo, index: int) -> np.ndarray:
    """One grey frame by global index."""
    return next(read_frames(info, index, index + 1))[1]


class FrameReader:
    """Grey frames by global index from one decoder that stays open where it stopped (the review page).

    Reading the frame after the last one costs one decode, and one a few frames ahead a few decodes
    (cheaper than a seek, which restarts decoding at a key frame); anything else seeks. Not
    thread-safe (OpenCV captures are not): callers sharing one hold a lock around it.
    """

    forward_gap = _READ_FORWARD_GAP  # a read at most this far ahead decodes forward instead of seeking

    def __init__(self, info: VideoInfo):
        self.info = info
        self._capture: cv2.VideoCapture | None = None
        self._file = -1
        self._next = -1  # global index the capture returns next
        self._frame: np.ndarray | None = None  # the last one it returned, frame _next - 1

    def continues(self, index: int) -> bool:
        """Whether reading `index` decodes forward from the current position, without a seek."""
        return (self._capture is not None and 0 <= index - self._next <= _READ_FORWARD_GAP
                and self.info.file_of(index) == self._file)

    def ready(self, index: int) -> bool:
        """Whether reading `index` needs no seek: the frame just read again, or one a few ahead."""
        return (index == self._next - 1 and self._frame is not None) or self.continues(index)

    def read(self, index: int) -> np.ndarray:
        """Grey frame `index`; the same frame again costs a copy."""
        if index == self._next - 1 and self._frame is not None:
            return self._frame.copy()
        file_index = self.info.file_of(index)
        path, local = self.info.paths[file_index], index - self.info.file_starts[file_index]
        if self.continues(index):
            for _ in range(index - self._next):
                self._capture.grab()
        else:
            if file_index != self._file:
                self.close()
            capture, self._capture, self._next = self._capture, None, -1
            if capture is None:
                capture = _open(path)
                self._capture = _seek(capture, path, local) if local else capture
            else:
                self._capture = _seek(capture, path, local)
            self._file = file_index
        ok, frame = self._capture.read()
        if not ok or frame is None:
            self.close()
            raise VideoError(f"cannot decode frame {index} (frame {local} of {path}); the file may be damaged")
        self._next, self._frame = index + 1, _to_gray(frame)
        return self._frame.copy()

    def close(self) -> None:
        if self._capture is not None:
            self._capture.release()
        self._capture, self._file, self._next, self._frame = None, -1, -1, None


@dataclass
class Sample:
    """Frames decoded at chosen indices, with the ones that did not decode or made the decoder complain."""

    frames: np.ndarray  # grey uint8 [k, H, W]; frames that do not decode are all 0
    failed: list[int]  # global indices that do not decode
    complained: list[int]  # global indices whose decoding made the decoder report errors (damaged data)


def sample_frames(info: VideoInfo, indices: Iterable[int]) -> np.ndarray:
    """Grey frames [k, H, W] at global `indices` (any order), e.g. for the background model.

    Raises VideoError, saying how many of them decode, if any does not.
    """
    sample = decode_sample(info, indices)
    if sample.failed:
        raise VideoError(damage_message(info, sample))
    return sample.frames


def damage_message(info: VideoInfo, sample: Sample) -> str:
    """One line: which file is damaged, how many of the sampled frames decode, what to do."""
    first = min(sample.failed)
    path = info.paths[info.file_of(first)]
    before = f", or track only the frames before it (--intervals 0 {first})" if first > 0 else ""
    return (f"{path} is damaged: {len(sample.failed)} of the {len(sample.frames)} sampled frames "
            f"{'does' if len(sample.failed) == 1 else 'do'} not decode "
            f"(the first is frame {first}); repair or re-encode the video{before}")


def decode_sample(info: VideoInfo, indices: Iterable[int]) -> Sample:
    """The frames at global `indices` (any order), noting those that fail or make the decoder complain.

    Each file is opened once; samples are visited in order, seeking unless the next one is close.
    After a frame fails to decode, later samples of that file are reached by plain seeks only.
    """
    indices = np.asarray(list(indices), dtype=int)
    frames = np.zeros((len(indices), info.height, info.width), dtype=np.uint8)
    files = np.array([info.file_of(int(i)) for i in indices], dtype=int)
    failed, complained = [], []
    with DecoderMessages() as decoder:
        for file_index in np.unique(files):
            path = info.paths[file_index]
            file_start = info.file_starts[file_index]
            positions = np.flatnonzero(files == file_index)
            positions = positions[np.argsort(indices[positions], kind="stable")]
            capture = _open(path)
            try:
                next_local, previous, broken = 0, None, False
                for position in positions:
                    local = int(indices[position]) - file_start
                    if local == next_local - 1 and previous is not None:
                        frames[position] = frames[previous]
                        continue
                    try:
                        if broken:
                            capture.set(cv2.CAP_PROP_POS_FRAMES, local)
                        elif local - next_local > _READ_FORWARD_GAP:
                            capture = _seek(capture, path, local)
                        else:
                            for _ in range(local - next_local):
                                capture.grab()
                        ok, frame = capture.read()
                    except VideoError:
                        ok, frame = False, None
                    if decoder.new_complaint():
                        complained.append(int(indices[position]))
                    if not ok or frame is None:
                        failed.append(int(indices[position]))
                        broken, previous = True, None
                        next_local = local + 1
                        continue
                    frames[position] = _to_gray(frame)
                    next_local, previous = local + 1, position
            finally:
                capture.release()
    return Sample(frames, sorted(failed), sorted(set(complained)))


def write_video(
    path: str | Path, frames: Iterable[np.ndarray], fps: float, fourcc: int = LOSSLESS_FOURCC
) -> Path:
    """Write grey uint8 [H, W] frames losslessly; returns the path. Used by tests and the simulator.

    Use the .avi suffix (LOSSLESS_SUFFIX), the container both FFV1 and raw grey work in.
    """
    path = Path(path)
    writer = None
    try:
        for index, frame in enumerate(frames):
            frame = np.asarray(frame)
            if frame.dtype != np.uint8 or frame.ndim != 2:
                raise VideoError(f"cannot write video {path}: frame {index} is {frame.dtype} {frame.shape}, "
                                 "expected grey uint8 [H, W]")
            if writer is None:
                size = frame.shape
                with decoder_log_setting():
                    writer = cv2.VideoWriter(str(path), fourcc, float(fps), size[::-1], isColor=False)
                if not writer.isOpened():
                    raise VideoError(f"cannot write video {path}: no encoder for this codec, or no write access")
            elif frame.shape != size:
                raise VideoError(f"cannot write video {path}: frame {index} is {frame.shape}, frame 0 {size}")
            writer.write(np.ascontiguousarray(frame))
    finally:
        if writer is not None:
            writer.release()
    if writer is None:
        raise VideoError(f"cannot write video {path}: no frames given")
    return path
