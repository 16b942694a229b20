"""End to end: a simulated video through the real services (separate processes on loopback)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from shoal.evaluate import evaluate, load_predictions
from shoal.sim import SimulationConfig, write_simulation

pytestmark = pytest.mark.slow

TRAJECTORY_KEYS = {"trajectories", "id_probabilities", "areas", "frames_per_second", "body_length",
                   "estimated_accuracy", "silhouette_score", "fraction_identified", "setup_points",
                   "identities_labels", "identities_groups", "length_unit", "version", "width", "height",
                   "video_paths"}


@pytest.fixture(scope="module")
def fish4(tmp_path_factory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("fish4")
    return write_simulation(SimulationConfig(n_animals=4, n_frames=500, preset="fish", seed=3), out)


def _service_pids(mark: str) -> set[int]:
    """Service processes whose environment carries ``mark`` (other tests' services run beside ours)."""
    pids = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmd, env = (entry / "cmdline").read_bytes(), (entry / "environ").read_bytes()
            except OSError:
                continue
            if b"services." in cmd and b".main" in cmd and f"E2E_MARK={mark}".encode() in env.split(b"\0"):
                pids.add(int(entry.name))
    return pids


def _shoal(*args: str, timeout: float = 600, mark: str = "") -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "shoal.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env=os.environ | {"E2E_MARK": mark})


def test_track_without_identities(fish4, tmp_path):
    out = tmp_path / "session"
    run = _shoal("track", str(fish4["video"]), "--animals", "4", "--no-identities", "--out", str(out), "--quiet",
                 mark=str(tmp_path))
    assert run.returncode == 0, run.stderr
    assert "Traceback" not in run.stderr

    truth = np.load(fish4["ground_truth"])
    scores = evaluate(truth["positions"], truth["touching"], float(truth["body_length"]), load_predictions(out))
    assert scores.detection_rate >= 0.99  # a trajectory point within half a body length of each visible animal

    result = np.load(out / "trajectories" / "trajectories.npy", allow_pickle=True).item()
    assert TRAJECTORY_KEYS <= set(result)
    assert result["trajectories"].shape == (500, 4, 2)
    assert result["id_probabilities"].shape == (500, 4, 1)
    assert result["width"] == 500 and result["height"] == 500
    with h5py.File(out / "trajectories" / "trajectories.h5") as h5:
        np.testing.assert_array_equal(h5["trajectories"][:], result["trajectories"])
    header = (out / "trajectories" / "trajectories_csv" / "trajectories.csv").read_text().splitlines()[0]
    assert header == "time,x1,y1,x2,y2,x3,y3,x4,y4"
    assert (out / "session.json").exists()
    time.sleep(0.5)
    assert not _service_pids(str(tmp_path)), "services outlived shoal track"


def test_services_run_as_separate_processes(fish4, tmp_path):
    from shoal.client import Client, follow
    from shoal.local import LocalCluster
    from shoal.params import TrackingParams
    from shoal.v1 import jobs_pb2 as pb

    root = Path(os.path.commonpath([fish4["video"], tmp_path]))  # the data root holds video and output
    with LocalCluster(root, tmp_path / "work", segmenters=2) as cluster:
        pids = {name: p.pid for name, p in cluster.procs.items()}
        assert set(pids) == {"gateway", "segmenter-0", "segmenter-1", "identifier", "assembler"}
        assert len(set(pids.values())) == len(pids)
        client = Client(cluster.grpc_address)
        client.wait_ready()
        params = TrackingParams(video_paths=[str(fish4["video"])], number_of_animals=4, track_wo_identities=True)
        job = follow(client, client.submit(params, output_dir=str(tmp_path / "s")).job_id, quiet=True)
        assert job.state == pb.SUCCEEDED, job.error
        assert all(cluster.alive().values())
        for name, pid in pids.items():
            module = "services." + name.split("-")[0] + ".main"
            assert module in Path(f"/proc/{pid}/cmdline").read_bytes().decode()
        client.close()
    assert not any(Path(f"/proc/{pid}").exists() for pid in pids.values())


def test_ctrl_c_leaves_no_process(fish4, tmp_path):
    mark = str(tmp_path)
    proc = subprocess.Popen([sys.executable, "-m", "shoal.cli", "track", str(fish4["video"]), "--animals", "4",
                             "--out", str(tmp_path / "s"), "--quiet"], stderr=subprocess.PIPE, text=True,
                            env=os.environ | {"E2E_MARK": mark})
    deadline = time.monotonic() + 60
    while len(_service_pids(mark)) < 3 and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(1.0)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130
    assert "Traceback" not in err
    time.sleep(0.5)
    assert not _service_pids(mark), f"orphans: {_service_pids(mark)}"


def _track_and_score(files: dict[str, Path], n_animals: int, out: Path, *flags: str):
    run = _shoal("track", str(files["video"]), "--animals", str(n_animals), "--out", str(out), "--quiet", *flags)
    assert run.returncode == 0, run.stderr
    truth = np.load(files["ground_truth"])
    scores = evaluate(truth["positions"], truth["touching"], float(truth["body_length"]), load_predictions(out))
    session = json.loads((out / "session.json").read_text())
    return scores, session


def test_fish_keep_their_identities_through_crossings(fish4, tmp_path):
    truth = np.load(fish4["ground_truth"])
    assert truth["touching"].any(axis=0).all(), "every fish should cross at least once"
    scores, session = _track_and_score(fish4, 4, tmp_path / "s")
    print(scores, session["notes"])
    assert scores.accuracy >= 0.99
    assert scores.idf1 >= 0.97
    assert scores.detection_rate >= 0.99
    estimated = session["statistics"]["estimated_accuracy"]
    # the estimate is of all animal-frames, crossings included: never optimistic, not uselessly low
    assert scores.accuracy_all - 0.05 <= estimated <= scores.accuracy_all + 0.01, (estimated, scores)
    result = np.load(tmp_path / "s" / "trajectories" / "trajectories.npy", allow_pickle=True).item()
    assert result["estimated_accuracy"] == pytest.approx(estimated)
    assert 0 < result["silhouette_score"] <= 1


@pytest.mark.parametrize("method", ["contrastive", "accumulation"])
def test_flies_keep_their_identities(tmp_path, method):
    files = write_simulation(SimulationConfig(n_animals=6, n_frames=400, preset="flies", seed=7), tmp_path / "v")
    scores, session = _track_and_score(files, 6, tmp_path / "s", "--method", method)
    print(method, scores, session["notes"])
    assert session["statistics"]["identification_method"].startswith(method)
    assert scores.accuracy >= 0.99
    assert scores.idf1 >= 0.96
