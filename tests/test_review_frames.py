"""The review page's frame source: the JPEG of frame i shows frame i, whatever the order of requests, across
files, from the decoder or from the disk proxy; a replaced or half-written proxy is never served."""

from __future__ import annotations

import os
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from itertools import pairwise
from pathlib import Path

import cv2
import numpy as np
import pytest

from shoal.review.frames import FrameSource
from shoal.video import UNCOMPRESSED_FOURCC, probe_video, read_frames, write_video

SIDE, BITS = 200, 7  # frame i shows i in binary as 7 horizontal bands: any two frames differ by >= 25 grey levels


def _frames(n: int, start: int = 0, *, invert: bool = False) -> list[np.ndarray]:
    """A shaded picture with a moving disc, and the frame's number (start + i) as bright/dark bands."""
    y, x = np.mgrid[:SIDE, :SIDE]
    frames = []
    for i in range(start, start + n):
        frame = (60 + 0.3 * x + 0.2 * y).astype(np.uint8)
        cv2.circle(frame, (160, 20 + i * 3 // 2), 18, 20, -1)
        for bit in range(BITS):
            band = slice(bit * SIDE // BITS + 4, (bit + 1) * SIDE // BITS - 4)
            frame[band, :120] = 230 if i >> bit & 1 else 30
        frames.append(255 - frame if invert else frame)
    return frames


def _session(folder: Path, counts=(50, 40)):
    """Two files: raw grey (the same size whatever the picture), then MPEG-4 part 2 (key frames every 12
    frames, so seeks decode forward); the session's info and its frames as `read_frames` decodes them."""
    folder.mkdir(parents=True, exist_ok=True)
    a = write_video(folder / "a.avi", _frames(counts[0]), 25, UNCOMPRESSED_FOURCC)
    b = write_video(folder / "b.mp4", _frames(counts[1], counts[0]), 25, cv2.VideoWriter_fourcc(*"mp4v"))
    return _probe([str(a), str(b)])


def _probe(paths: list[str]):
    info = probe_video(paths)
    reference = [frame for start, count in zip(info.file_starts, info.file_frames, strict=True)
                 for _, frame in read_frames(info, start, start + count)]
    return info, reference


@pytest.fixture(scope="module")
def session(tmp_path_factory):
    return _session(tmp_path_factory.mktemp("review_frames"))


def _diff(jpeg: bytes, frame: np.ndarray) -> float:
    decoded = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_GRAYSCALE)
    assert decoded.shape == frame.shape
    return float(np.abs(decoded.astype(np.int16) - frame).mean())


def _wait(source: FrameSource, timeout: float = 30.0) -> dict:
    deadline = time.monotonic() + timeout
    while source.progress()["running"]:
        assert time.monotonic() < deadline, source.progress()
        time.sleep(0.02)
    return source.progress()


def test_test_frames_tell_each_other_apart(session):
    """The tolerance below can fail: a neighbouring frame is far more than 3 grey levels off."""
    _, reference = session
    assert min(float(np.abs(a.astype(np.int16) - b).mean()) for a, b in pairwise(reference)) > 10


@pytest.mark.parametrize("order", ["forward", "backward", "back by 10", "random", "forward by 10"])
def test_jpeg_shows_the_requested_frame_in_any_order(session, order):
    info, reference = session
    n = info.n_frames
    indices = {"forward": range(n), "backward": range(n - 1, -1, -1), "back by 10": range(n - 1, -1, -10),
               "random": random.Random(3).choices(range(n), k=60), "forward by 10": range(3, n, 10)}[order]
    with FrameSource(info) as source:
        assert (source.n_frames, source.width, source.height) == (n, SIDE, SIDE)
        for index in indices:
            assert _diff(source.jpeg(index), reference[index]) < 3, index
            gray = source.gray(index)  # exact where the decoder is, else the stored JPEG: no seek for outlines
            if order == "forward":
                assert np.array_equal(gray, reference[index]), index
            assert np.abs(gray.astype(np.int16) - reference[index]).mean() < 3, index


def test_out_of_range_and_closed(session):
    info, _ = session
    source = FrameSource(info)
    for index in (-1, info.n_frames):
        with pytest.raises(IndexError, match=rf"frame {index} is outside the session \(0\.\.{info.n_frames - 1}\)"):
            source.jpeg(index)
    source.close()
    source.close()
    with pytest.raises(ValueError, match="closed"):
        source.jpeg(0)


def test_proxy_is_built_once_and_then_serves_every_frame(session, tmp_path):
    info, reference = session
    with FrameSource(info, tmp_path) as source:
        assert _wait(source) == {"indexed": info.n_frames, "n_frames": info.n_frames, "running": False, "error": None}
    with FrameSource(info, tmp_path) as reopened:
        assert reopened.progress() == {"indexed": info.n_frames, "n_frames": info.n_frames, "running": False,
                                       "error": None}
        reopened._reader.read = None  # a decode would now fail: every frame must come from the proxy file
        for index in random.Random(5).sample(range(info.n_frames), info.n_frames):
            assert _diff(reopened.jpeg(index), reference[index]) < 3, index


def test_replaced_video_invalidates_the_proxy(tmp_path):
    info, _ = _session(tmp_path / "videos")
    with FrameSource(info, tmp_path / "cache") as source:
        assert _wait(source)["indexed"] == info.n_frames
    first = os.stat(info.paths[0])
    write_video(info.paths[0], _frames(info.file_frames[0], invert=True), 25, UNCOMPRESSED_FOURCC)
    os.utime(info.paths[0], ns=(first.st_atime_ns, first.st_mtime_ns + 1))  # even within the clock's tick
    assert os.stat(info.paths[0]).st_size == first.st_size  # only the time tells the new file from the old
    replaced, reference = _probe(info.paths)
    with FrameSource(replaced, tmp_path / "cache", index_in_background=False) as stale:
        assert stale.progress()["indexed"] == 0
        assert _diff(stale.jpeg(10), reference[10]) < 3
    with FrameSource(replaced, tmp_path / "cache") as source:
        assert _wait(source)["indexed"] == replaced.n_frames
        assert _diff(source.jpeg(10), reference[10]) < 3
    assert len(list((tmp_path / "cache").iterdir())) == 2  # the new proxy's data and manifest; the old one is gone


def test_half_written_proxy_is_not_trusted(session, tmp_path):
    info, reference = session
    with FrameSource(info, tmp_path) as source:
        _wait(source)
    (data,) = tmp_path.glob("*.jpgs")
    with open(data, "r+b") as fh:
        fh.truncate(data.stat().st_size - 1)
    with FrameSource(info, tmp_path, index_in_background=False) as source:
        assert source.progress()["indexed"] == 0
        assert _diff(source.jpeg(info.n_frames - 1), reference[-1]) < 3


def test_close_stops_the_background_pass(session, tmp_path, monkeypatch):
    info, _ = session
    encode = FrameSource._encode

    def slow_encode(self, grey):
        time.sleep(0.01)
        return encode(self, grey)

    monkeypatch.setattr(FrameSource, "_encode", slow_encode)
    source = FrameSource(info, tmp_path)
    while source.progress()["indexed"] < 5:
        time.sleep(0.005)
    source.close()
    progress = source.progress()
    assert not progress["running"] and progress["indexed"] < info.n_frames
    assert not any(thread.name == "review-frames-index" for thread in threading.enumerate())
    assert list(tmp_path.iterdir()) == []  # the half-written proxy is deleted, no manifest written
    with FrameSource(info, tmp_path, index_in_background=False) as reopened:
        assert reopened.progress()["indexed"] == 0


def test_threads_share_one_source_while_the_proxy_is_built(session, tmp_path):
    info, reference = session
    indices = random.Random(7).choices(range(info.n_frames), k=200)
    with FrameSource(info, tmp_path) as source, ThreadPoolExecutor(4) as pool:
        diffs = list(pool.map(lambda i: _diff(source.jpeg(i), reference[i]), indices))
        assert _wait(source)["error"] is None
    assert max(diffs) < 3
