"""`shoal track` and `shoal serve` on the real services: exit codes, the one line a user sees, the
session folder they leave (session.json, --overwrite) and the temporary work folders they do not."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest

from tests.gateway_services import free_port, tiny_video

RUN_TIMEOUT_S = 180


@pytest.fixture(scope="module")
def flies(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two simulated flies, 60 frames: tracks without identities in about a second."""
    return tiny_video(tmp_path_factory.mktemp("flies"), n_frames=60)


def _shoal(*args: str, tmp: Path, timeout: float = RUN_TIMEOUT_S) -> subprocess.CompletedProcess:
    """``shoal ARGS`` with its temporary folder in ``tmp`` (other tests' work folders stay out of sight)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHOAL_")} | {"TMPDIR": str(tmp)}
    return subprocess.run([sys.executable, "-m", "shoal.cli", *args], capture_output=True, text=True, env=env,
                          timeout=timeout)


def _one_line(run: subprocess.CompletedProcess, code: int, *words: str) -> str:
    lines = run.stderr.strip().splitlines()
    assert run.returncode == code, run.stderr
    assert "Traceback" not in run.stderr
    assert len(lines) == 1 and lines[0].startswith("shoal: "), run.stderr
    for word in words:
        assert word in lines[0], f"{word!r} not in {lines[0]!r}"
    return lines[0]


def _work_folders(tmp: Path) -> list[Path]:
    return sorted(tmp.glob("shoal-local-*"))


# -- unusable parameters: exit 2, no work folder left ----------------------------------------------

@pytest.mark.slow
def test_nothing_found_exits_2_and_leaves_nothing(flies: Path, tmp_path: Path):
    tmp, out = tmp_path / "tmp", tmp_path / "session"
    tmp.mkdir()
    run = _shoal("track", str(flies), "--animals", "2", "--intensity", "0", "1", "--out", str(out), "--quiet",
                 tmp=tmp)
    line = _one_line(run, 2, "shoal: job failed: invalid input: no animals found", "--intensity")
    assert "keep-logs" not in line  # the log cannot help: the thresholds must change
    assert _work_folders(tmp) == []
    assert not out.exists()  # the folder the run created is gone, so the next run needs no --overwrite


@pytest.mark.slow
def test_keep_logs_keeps_them_and_says_where(flies: Path, tmp_path: Path):
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    run = _shoal("track", str(flies), "--animals", "2", "--intensity", "0", "1", "--out", str(tmp_path / "s"),
                 "--quiet", "--keep-logs", tmp=tmp)
    line = _one_line(run, 2, "no animals found")
    [folder] = _work_folders(tmp)
    assert line.endswith(f"(service logs kept in {folder / 'services.log'})")
    assert "no animals found" in (folder / "services.log").read_text()


@pytest.mark.slow
def test_interrupted_run_removes_its_work_folder(flies: Path, tmp_path: Path):
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHOAL_")} | {"TMPDIR": str(tmp)}
    proc = subprocess.Popen([sys.executable, "-m", "shoal.cli", "track", str(flies), "--animals", "2", "--out",
                             str(tmp_path / "s"), "--quiet"], stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not any(
            "joined" in (f / "services.log").read_text(errors="replace") for f in _work_folders(tmp)
            if (f / "services.log").exists()):
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1] == ("shoal: interrupted; services stopped (rerun with --keep-logs to keep "
                                            "the service logs)")
    assert _work_folders(tmp) == []


@pytest.mark.slow
def test_far_more_animals_than_the_video_shows_exits_2_unless_allowed(flies: Path, tmp_path: Path):
    tmp, out = tmp_path / "tmp", tmp_path / "session"
    tmp.mkdir()
    run = _shoal("track", str(flies), "--animals", "40", "--no-identities", "--out", str(out), "--quiet", tmp=tmp)
    _one_line(run, 2, "is 40 but there are at most", "--allow-missing-animals")
    assert not out.exists() and _work_folders(tmp) == []
    allowed = _shoal("track", str(flies), "--animals", "40", "--no-identities", "--allow-missing-animals",
                     "--out", str(out), "--quiet", tmp=tmp)
    assert allowed.returncode == 0, allowed.stderr
    assert "no sampled frame shows all 40 animals" in allowed.stderr  # still said, as a warning


# -- session.json and --overwrite --------------------------------------------------------------------

@pytest.mark.slow
def test_session_json_says_what_was_used_and_overwrite_replaces_only_shoal_files(flies: Path, tmp_path: Path):
    out, tmp = tmp_path / "session", tmp_path / "tmp"
    tmp.mkdir()
    before = datetime.now(UTC)
    run = _shoal("track", str(flies), "--animals", "2", "--no-identities", "--out", str(out), "--quiet", tmp=tmp)
    assert run.returncode == 0, run.stderr
    written = {p.name for p in out.iterdir()}
    assert {"session.json", "trajectories", "background.npy"} <= written and "identity_model.npz" not in written
    session = json.loads((out / "session.json").read_text())

    from shoal import __version__

    assert session["shoal_version"] == __version__
    started, finished = (datetime.fromisoformat(session[k].replace("Z", "+00:00")) for k in ("started_utc",
                                                                                             "finished_utc"))
    assert before <= started <= finished <= datetime.now(UTC)
    asked, used = session["parameters"], session["effective_parameters"]
    assert asked["use_bkg"] is False and asked["intensity_ths"] is None  # nothing asked: chosen from the video
    assert used["background_subtraction"] is True and used["background_model"] == "background.npy"
    assert used["background_difference_threshold"] == used["intensity_ths"][0] > 0
    assert used["area_ths"][0] > 0 and used["id_image_size_px"] >= 8 and used["body_length_px"] > 0
    assert set(used["chosen_from_video"]) == {"intensity_ths", "area_ths", "id_image_size"}
    background = np.load(out / "background.npy")
    assert background.shape == (160, 160)
    assert all(re.fullmatch(r"[a-z_]+", name) for name in session["timers_seconds"])
    assert "timers" not in session and "probe" not in session
    assert any("automatic" in w or "chosen from the video" in w for w in session["warnings"])  # the probe's
    assert "shoal-local-" not in (out / "session.json").read_text()  # no path into a deleted folder
    assert _work_folders(tmp) == []

    again = _shoal("track", str(flies), "--animals", "2", "--no-identities", "--out", str(out), "--quiet", tmp=tmp)
    _one_line(again, 2, f"the session folder {out} is not empty", "--overwrite")

    (out / "identity_model.npz").write_bytes(b"stale model of another run")
    (out / ".session.json.4242.tmp").write_text("{")
    (out / "notes.txt").write_text("the user's own")
    replaced = _shoal("track", str(flies), "--animals", "2", "--no-identities", "--out", str(out), "--quiet",
                      "--overwrite", tmp=tmp)
    assert replaced.returncode == 0, replaced.stderr
    assert {p.name for p in out.iterdir()} == written | {"notes.txt"}  # the stale model and temporary are gone
    replacing_id = json.loads((out / "session.json").read_text())["job_id"]
    assert replacing_id != session["job_id"]

    failed = _shoal("track", str(flies), "--animals", "2", "--intensity", "0", "1", "--out", str(out), "--quiet",
                    "--overwrite", tmp=tmp)
    _one_line(failed, 2, "no animals found")
    assert json.loads((out / "session.json").read_text())["job_id"] == replacing_id  # a failed run loses nothing
    assert {p.name for p in out.iterdir()} == written | {"notes.txt"}


def test_only_shoal_files_are_cleared(tmp_path: Path):
    from shoal import render
    from shoal.knowledge import MODEL_FILE
    from shoal.session import SESSION_ENTRIES, clear_session

    assert {MODEL_FILE, render.INDIVIDUAL_FOLDER, *(render.overlay_path(Path(), codec).name
                                                   for codec in render.CODECS)} <= set(SESSION_ENTRIES)

    for name in ("session.json", "inconsistent_frames.csv", "overlay.mp4", ".overlay.77.partial.mp4",
                 "identity_model.tmp", "notes.txt", ".bashrc"):
        (tmp_path / name).write_text("x")
    (tmp_path / "trajectories" / "trajectories_csv").mkdir(parents=True)
    (tmp_path / "trajectories" / "trajectories.npy").write_text("x")
    (tmp_path / "individual_videos").mkdir()
    (tmp_path / "individual_videos" / "my_analysis.py").write_text("x")  # not Shoal's: the folder stays
    removed = clear_session(tmp_path)
    assert sorted(p.name for p in removed) == [".overlay.77.partial.mp4", "identity_model.tmp",
                                               "inconsistent_frames.csv", "overlay.mp4", "session.json",
                                               "trajectories"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [".bashrc", "individual_videos", "notes.txt"]


# -- shoal serve --------------------------------------------------------------------------------------

def test_serve_listens_where_the_clients_look_by_default():
    from shoal.cli import parser
    from shoal.cli.common import DEFAULT_GATEWAY

    args = parser().parse_args(["serve"])
    assert (args.address, args.port) == ("127.0.0.1", 50051)
    if "SHOAL_GATEWAY" not in os.environ:
        assert DEFAULT_GATEWAY == "127.0.0.1:50051"
    assert parser().parse_args(["jobs"]).gateway == DEFAULT_GATEWAY


@pytest.mark.slow
def test_second_serve_and_a_taken_port_are_one_line(tmp_path: Path):
    first_root, other_root = tmp_path / "data", tmp_path / "other"
    first_root.mkdir()
    other_root.mkdir()
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHOAL_")}
    serve = subprocess.Popen([sys.executable, "-m", "shoal.cli", "serve", "--data-root", str(first_root), "--port",
                              str(port), "--segmenters", "1"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True, env=env)
    try:
        said = serve.stdout.readline()
        assert said.startswith(f"shoal serve: gateway on 127.0.0.1:{port} (data root {first_root}"), \
            said + serve.stderr.read() if serve.poll() is not None else said
        jobs = _shoal("jobs", "--gateway", f"127.0.0.1:{port}", tmp=tmp_path)
        assert jobs.returncode == 0 and jobs.stderr == "", jobs.stderr

        twice = _shoal("serve", "--data-root", str(first_root), "--port", "0", tmp=tmp_path, timeout=60)
        _one_line(twice, 2, f"another gateway (pid {_gateway_pid(first_root)}, gRPC on 127.0.0.1:{port})",
                  f"the work folder {first_root / '.shoal'}", f"--gateway 127.0.0.1:{port}")
        taken = _shoal("serve", "--data-root", str(other_root), "--port", str(port), tmp=tmp_path, timeout=60)
        _one_line(taken, 2, f"cannot listen on 127.0.0.1:{port}", "--port")
        assert serve.poll() is None  # the first gateway is unaffected
    finally:
        serve.send_signal(signal.SIGTERM)
        serve.communicate(timeout=60)
    assert serve.returncode == 0


def _gateway_pid(data_root: Path) -> int:
    return int(re.search(r"pid=(\d+)", (data_root / ".shoal" / "gateway.lock").read_text()).group(1))


# -- progress bars --------------------------------------------------------------------------------

class _Clock:
    now = 1000.0

    def __call__(self) -> float:
        return self.now


def _job(**fractions: float):
    from shoal.v1 import jobs_pb2 as pb

    return pb.Job(job_id="j", state=pb.RUNNING, stages=[pb.StageProgress(stage=s, fraction=f)
                                                        for s, f in fractions.items()])


def test_a_finished_stage_keeps_its_own_time(monkeypatch, capsys):
    """The probe took 1 s; the display after a 53 s segmentation still says 00:01 for it."""
    import shoal.client as client_module
    from shoal.v1 import jobs_pb2 as pb

    clock = _Clock()
    monkeypatch.setattr(client_module.time, "monotonic", clock)
    timeline = [(0, _job(probe=0.0)), (1, _job(probe=1.0)), (2, _job(probe=1.0, segment=0.5)),
                (54, _job(probe=1.0, segment=1.0))]

    class FakeClient:
        def get(self, job_id):
            return _job()

        def watch(self, job_id, timeout=None):
            for at, job in timeline:
                clock.now = 1000.0 + at
                yield pb.JobEvent(job=job, final=False)
            clock.now = 1000.0 + 90  # the job ends well after both stages
            done = _job(probe=1.0, segment=1.0)
            done.state = pb.SUCCEEDED
            yield pb.JobEvent(job=done, final=True)

    job = client_module.follow(FakeClient(), "j")
    assert job.state == pb.SUCCEEDED
    shown = re.split(r"[\r\n]|\x1b\[A", capsys.readouterr().err)
    last = {name: [s.strip() for s in shown if s.strip().startswith(name)][-1] for name in ("probe", "segment")}
    assert last["probe"].endswith("100% 00:01"), last
    assert last["segment"].endswith("100% 00:53"), last  # from the probe's end to its own
