"""`shoal track` refuses bad input with one line and exit code 2, before starting any service."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

TIME_LIMIT_S = 15.0  # generous for a slow CI core; starting the services alone takes longer


def _track(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "shoal.cli", "track", "--quiet", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=60)
    proc.elapsed = time.monotonic() - t0
    return proc


def _assert_usage_error(proc: subprocess.CompletedProcess, *words: str) -> str:
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("shoal:"), lines[0]
    for word in words:
        assert word in lines[0], f"{word!r} not in {lines[0]!r}"
    assert "services started" not in proc.stderr
    assert proc.elapsed < TIME_LIMIT_S
    return lines[0]


def test_missing_video(tmp_path: Path):
    _assert_usage_error(_track(str(tmp_path / "nope.avi"), "--animals", "2", cwd=tmp_path),
                        "nope.avi", "does not exist")


def test_random_bytes_video(tmp_path: Path):
    bad = tmp_path / "x.avi"
    bad.write_bytes(np.random.default_rng(0).bytes(4096))
    _assert_usage_error(_track(str(bad), "--animals", "2", cwd=tmp_path), "x.avi")


def test_negative_animals(tmp_path: Path, small_video: Path):
    _assert_usage_error(_track(str(small_video), "--animals", "-1", cwd=tmp_path), "number_of_animals")


def test_misspelled_roi_shape(tmp_path: Path, small_video: Path):
    _assert_usage_error(_track(str(small_video), "--animals", "2", "--roi", "+ Polygn [[0,0],[1,1],[2,0]]",
                               cwd=tmp_path), "Polygn")


def test_intensity_low_above_high(tmp_path: Path, small_video: Path):
    _assert_usage_error(_track(str(small_video), "--animals", "2", "--intensity", "200", "100", cwd=tmp_path),
                        "intensity_ths")


def test_unknown_key_in_params_file(tmp_path: Path, small_video: Path):
    params = tmp_path / "p.toml"
    params.write_text("number_of_animals = 2\nintensity_ths = [0, 120]\nnot_a_parameter = 1\n")
    _assert_usage_error(_track(str(small_video), "--params", str(params), cwd=tmp_path), "not_a_parameter")


def test_odd_number_of_interval_frames(tmp_path: Path, small_video: Path):
    _assert_usage_error(_track(str(small_video), "--animals", "2", "--intervals", "0", cwd=tmp_path),
                        "tracking_intervals")


def test_interval_beyond_the_video(tmp_path: Path, small_video: Path):
    line = _assert_usage_error(_track(str(small_video), "--animals", "2", "--intervals", "0", "500",
                                      cwd=tmp_path), "500")
    assert "12" in line  # the video's length, so the user knows what is allowed


@pytest.mark.parametrize("argv", [["track", "/nonexistent/v.avi", "--animals", "2"],
                                  ["track", "/nonexistent/v.avi", "--animals", "2", "--intensity", "9", "1"]])
def test_main_returns_exit_code_in_process(argv, capsys):
    from shoal.cli import main

    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("shoal:")
