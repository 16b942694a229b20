"""`shoal track` refuses bad input with one line and exit code 2, before starting any service."""

from __future__ import annotations

import argparse
import os
import re
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


def test_intensity_out_of_range(tmp_path: Path, small_video: Path):
    _assert_usage_error(_track(str(small_video), "--animals", "2", "--intensity", "200", "300", cwd=tmp_path),
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


@pytest.mark.parametrize(("argv", "words"), [
    (["track", "/nonexistent/v.avi", "--animals", "2"], "does not exist"),
    (["track", "/nonexistent/v.avi", "--animals", "2", "--intensity", "9", "-1"], "intensity_ths"),
    (["demo", "--animals", "0"], "--animals must be at least 1"),  # was a traceback
    (["demo", "--frames", "5"], "--frames must be at least 100"),  # was "identity accuracy 0.0000"
    (["evaluate", "--truth", "/nonexistent/truth.npz", "--pred", "/nonexistent"],
     "cannot read /nonexistent/truth.npz: No such file or directory"),
])
def test_main_returns_exit_code_in_process(argv, words, capsys, tmp_path, monkeypatch):
    from shoal.cli import main

    monkeypatch.chdir(tmp_path)  # the demo's default folder, should it ever start
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("shoal") and words in err[0], err
    assert not list(tmp_path.iterdir())


# -- the gateway's refusals: one line, exit 2 (change the command) or 1, never a traceback -----------

TOKEN = "cli-errors-token-0123456789"


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory, video_writer):
    """A gateway that requires a token and takes uploads of at most ~1 KiB, with one worker of each role."""
    from tests.gateway_services import Services

    root = tmp_path_factory.mktemp("cli")
    (root / "data").mkdir()
    video_writer(root / "data" / "squares.avi")
    video_writer(root / "outside.avi")
    with Services(root / "data", root / "work", env={"SHOAL_AUTH_TOKEN": TOKEN},
                  gateway_args=["--max-upload-mb", "0.001"]) as services:
        services.start_gateway()
        services.start_workers()
        yield services


def _shoal(gateway, *argv: str, token: str | None = TOKEN) -> tuple[int, str, str]:
    """Run ``shoal ARGV`` in this process against the gateway; (exit code, stdout, stderr)."""
    import contextlib
    import io

    from shoal.cli import main

    out, err = io.StringIO(), io.StringIO()
    auth = ["--token", token] if token else []
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([*argv, "--gateway", gateway.grpc_address, *auth])
    return code, out.getvalue(), err.getvalue()


def _one_line(err: str, *words: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("shoal: "), err
    for word in words:
        assert word in lines[0], f"{word!r} not in {lines[0]!r}"
    return lines[0]


def _submit(gateway, *args: str) -> str:
    code, out, err = _shoal(gateway, "submit", str(gateway.data_root / "squares.avi"), "--animals", "2",
                            "--intensity", "0", "100", *args)
    assert code == 0, err
    return out.split()[0]


@pytest.mark.slow
@pytest.mark.parametrize(("argv", "token", "exit_code", "words"), [
    (["jobs"], None, 2, ["unauthenticated", "--token"]),
    (["jobs"], "wrong-token-wrong-token", 2, ["unauthenticated", "wrong"]),
    (["watch", "nosuchjob"], TOKEN, 2, ["not_found", "nosuchjob"]),
    (["cancel", "nosuchjob"], TOKEN, 2, ["not_found", "nosuchjob"]),
    (["fetch", "nosuchjob", "--out", "x"], TOKEN, 2, ["not_found", "nosuchjob"]),
    (["submit", "{outside}", "--animals", "2"], TOKEN, 2, ["permission_denied", "outside.avi", "data root"]),
    (["submit", "{data}/squares.avi", "--animals", "2", "--intervals", "0", "500"], TOKEN, 2,
     ["invalid_argument", "tracking_intervals", "12 frames"]),
    (["submit", "{outside}", "--animals", "2", "--upload"], TOKEN, 1, ["resource_exhausted", "MiB"]),
], ids=["no-token", "wrong-token", "watch-unknown", "cancel-unknown", "fetch-unknown", "outside-data-root",
        "interval-past-end", "upload-too-big"])
def test_gateway_refusals_are_one_line(gateway, argv, token, exit_code, words):
    argv = [a.format(outside=gateway.data_root.parent / "outside.avi", data=gateway.data_root) for a in argv]
    code, out, err = _shoal(gateway, *argv, token=token)
    assert code == exit_code, err
    _one_line(err, *words)
    assert out == ""


@pytest.mark.slow
def test_fetching_an_unfinished_job_and_watching_a_cancelled_one(gateway):
    job = _submit(gateway)
    code, out, err = _shoal(gateway, "cancel", job)
    assert code == 0 and job in out and "CANCELLED" in out, err
    code, _, err = _shoal(gateway, "fetch", job, "--out", "x")
    assert code == 2
    _one_line(err, "failed_precondition", "cancelled", "succeeded")
    code, out, err = _shoal(gateway, "watch", job)
    assert code == 1 and "CANCELLED" in out  # a script waiting on the job can tell it did not succeed
    _one_line(err, "job cancelled", "cancelled by request")


@pytest.mark.slow
def test_fetch_into_an_unwritable_folder(gateway, tmp_path: Path):
    job = _submit(gateway, "--watch")
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    code, _, err = _shoal(gateway, "fetch", job, "--out", str(blocker / "session"))
    assert code == 2
    _one_line(err, "cannot write the session folder", "a-file")
    code, out, err = _shoal(gateway, "fetch", job, "--out", str(tmp_path / "session"))
    assert code == 0 and (tmp_path / "session" / "trajectories" / "trajectories.npy").is_file(), err


@pytest.mark.slow
def test_unreachable_gateway_from_the_console(tmp_path: Path):
    """The real entry point: one line naming the address and what to check, exit 1, for each command."""
    from tests.gateway_services import free_port

    address = f"127.0.0.1:{free_port()}"  # nobody listens there
    for argv in (["jobs"], ["watch", "abc"], ["cancel", "abc"], ["fetch", "abc", "--out", "x"],
                 ["submit", "v.avi", "--animals", "2"]):
        proc = subprocess.run([sys.executable, "-m", "shoal.cli", *argv, "--gateway", address], cwd=tmp_path,
                              capture_output=True, text=True, timeout=60)
        assert proc.returncode == 1, (argv, proc.stderr)
        assert "Traceback" not in proc.stderr
        _one_line(proc.stderr, "unavailable", address, "SHOAL_GATEWAY")


# -- the session folder is checked before any service starts ----------------------------------------

def test_non_empty_session_folder_needs_overwrite(tmp_path: Path, small_video: Path):
    out = tmp_path / "session"
    out.mkdir()
    (out / "session.json").write_text("{}")
    _assert_usage_error(_track(str(small_video), "--animals", "2", "--out", str(out), cwd=tmp_path),
                        f"the session folder {out} is not empty", "--overwrite")
    assert (out / "session.json").read_text() == "{}"  # refused: nothing removed


@pytest.mark.parametrize("where", ["under-a-file", "in-proc", "is-a-file"])
def test_unwritable_session_folder(tmp_path: Path, small_video: Path, where: str):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    out, why = {"under-a-file": (blocker / "session", f"{blocker} is a file"),
                "in-proc": (Path("/proc/shoal/session"), "/proc does not take new folders"),
                "is-a-file": (blocker, "is a file")}[where]
    _assert_usage_error(_track(str(small_video), "--animals", "2", "--out", str(out), cwd=tmp_path),
                        f"session folder {out}", why, "choose another --out")


# -- help and exit codes say the same everywhere ----------------------------------------------------

def _help(*argv: str) -> str:
    proc = subprocess.run([sys.executable, "-m", "shoal.cli", *argv, "--help"], capture_output=True, text=True,
                          env={**os.environ, "COLUMNS": "100"}, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_help_lists_every_command_on_one_line():
    from shoal.cli import parser

    text = _help()
    commands = parser()._subparsers._group_actions[0].choices
    assert {"track", "demo", "serve", "submit", "watch", "jobs", "cancel", "fetch", "video", "simulate",
            "evaluate"} <= set(commands)
    lines = text.splitlines()
    for name in commands:
        [i] = [i for i, line in enumerate(lines) if re.match(rf"\s+{name}\s{{2,}}\S", line)]
        assert not re.match(r"\s{10,}\S", lines[i + 1]), lines[i:i + 2]  # what it does fits its one line
    assert "exit codes:" in text
    for name in ("simulate", "evaluate"):  # their own parsers answer
        assert f"usage: shoal {name}" in _help(name)


def test_every_flag_shows_its_default():
    from shoal import evaluate
    from shoal.cli import parser
    from shoal.cli.common import HelpFormatter
    from shoal.sim import cli as simulate

    own = {"simulate": simulate.arg_parser(), "evaluate": evaluate.arg_parser()}  # they parse their own flags
    for name, sub in parser()._subparsers._group_actions[0].choices.items():
        sub = own.get(name, sub)
        formatter = HelpFormatter(prog=f"shoal {name}")
        for action in sub._actions:
            if not action.option_strings or action.required or action.default is argparse.SUPPRESS:
                continue
            shown = formatter._expand_help(action)
            assert "default" in shown, f"shoal {name} {action.option_strings[0]}: {shown!r}"


def test_exit_codes_agree_in_help_readme_and_api_docs():
    from shoal.cli.common import EXIT_CODES, EXIT_FAILED, EXIT_USAGE
    from shoal.v1 import INVALID_INPUT

    root = Path(__file__).resolve().parents[1]
    readme, api = (root / "README.md").read_text(), (root / "docs" / "api.md").read_text()
    assert EXIT_CODES in _help() and EXIT_CODES in _help("track")
    assert (EXIT_USAGE, EXIT_FAILED) == (2, 1)
    assert re.search(rf"\*\*{EXIT_USAGE}\*\*: change the command\..*no animals", readme, re.S)
    assert re.search(rf"\*\*{EXIT_FAILED}\*\*: the job failed for another reason", readme)
    assert "thresholds that find no animals" in EXIT_CODES
    assert f"`{INVALID_INPUT}`" in api and f"`{INVALID_INPUT.strip()}`" in readme
    assert re.search(rf"exit with {EXIT_USAGE} when the job failed with an `error` starting\s+with "
                     rf"`{INVALID_INPUT}`", api)


def test_a_finished_stage_keeps_its_own_time_on_screen():
    """Issue 15 item 8: the probe took a second; at the end of a 53 s job its bar must still say 00:01."""
    import io
    from types import SimpleNamespace as Stage

    from shoal.client import StageBars

    screen = io.StringIO()
    bars = StageBars(file=screen)
    bars.show([Stage(stage="probe", fraction=0.5)], now=100.0)
    bars.show([Stage(stage="probe", fraction=1.0), Stage(stage="segment", fraction=0.1)], now=101.0)
    bars.show([Stage(stage="probe", fraction=1.0), Stage(stage="segment", fraction=1.0)], now=153.0)
    bars.close(now=160.0)
    last = {line.split("|")[0].strip(): line for line in screen.getvalue().replace("\r", "\n").splitlines()
            if "|" in line}
    assert last["probe"].rstrip().endswith("100% 00:01"), last["probe"]
    assert last["segment"].rstrip().endswith("100% 00:52"), last["segment"]
