"""Shared fixtures: a tiny lossless video that OpenCV can read back exactly."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from shoal.video import write_video


def pytest_configure(config: pytest.Config) -> None:
    """One torch thread per test worker: the suite runs a worker per core, and torch's spinning
    OpenMP threads, two per worker, collapse when they share the cores (a contrastive training
    in-process took 26 s beside another worker instead of 7 s alone). Services keep their own
    setting (``LocalCluster`` gives the identifier cores − 1 threads)."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        import torch

        torch.set_num_threads(1)


def make_video(path: Path, n_frames: int = 12, size: tuple[int, int] = (64, 80)) -> Path:
    """Bright background (200) with two dark 8x8 squares that move one pixel per frame."""
    frames = []
    for i in range(n_frames):
        frame = np.full(size, 200, np.uint8)
        frame[10:18, 10 + i:18 + i] = 40
        frame[40:48, 50 - i:58 - i] = 40
        frames.append(frame)
    return write_video(path, frames, fps=25.0)


@pytest.fixture(scope="session")
def video_writer():
    """:func:`make_video`, for fixtures that place videos themselves."""
    return make_video


@pytest.fixture(scope="session")
def small_video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 12-frame 80x64 video of two dark squares on a bright background."""
    return make_video(tmp_path_factory.mktemp("video") / "two_squares.avi")
