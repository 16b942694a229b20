"""Fault tolerance with the real processes on loopback: a worker killed or frozen mid-job.

The job must complete, and because a re-issued chunk is segmented again from the same frames with
the same probe, the trajectories must be identical to an undisturbed run.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import numpy as np
import pytest

from shoal.client import Client, follow
from shoal.local import LocalCluster
from shoal.params import TrackingParams
from shoal.simulate import SimulationConfig, write_simulation
from shoal.v1 import jobs_pb2 as pb

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def video(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("faults")
    return write_simulation(SimulationConfig(n_animals=3, n_frames=600, preset="fish", seed=5), out)["video"]


def _params(video: Path) -> TrackingParams:
    # small chunks so there is a segment stage to interrupt
    return TrackingParams(video_paths=[str(video)], number_of_animals=3, track_wo_identities=True,
                          frames_per_episode=50)


def _trajectories(session: Path) -> np.ndarray:
    return np.load(session / "trajectories" / "trajectories.npy", allow_pickle=True).item()["trajectories"]


def _wait_for_segmenting(client: Client, job_id: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    for event in client.watch(job_id):
        segment = {s.stage: s.fraction for s in event.job.stages}.get("segment", 0.0)
        if 0.1 < segment < 0.7:
            return
        assert not event.final and time.monotonic() < deadline, "the job never reached the segment stage"


@pytest.mark.parametrize("how", ["kill", "freeze"])
def test_job_survives_a_lost_segmenter(video, tmp_path, how):
    root = Path(os.path.commonpath([video, tmp_path]))
    with LocalCluster(root, tmp_path / "work", segmenters=2) as cluster:
        client = Client(cluster.grpc_address)
        client.wait_ready()
        reference = follow(client, client.submit(_params(video), output_dir=str(tmp_path / "a")).job_id, quiet=True)
        assert reference.state == pb.SUCCEEDED, reference.error

        job_id = client.submit(_params(video), output_dir=str(tmp_path / "b")).job_id
        _wait_for_segmenting(client, job_id)
        victim = cluster.procs["segmenter-0"].pid
        lost_at = time.monotonic()
        os.kill(victim, signal.SIGKILL if how == "kill" else signal.SIGSTOP)
        try:
            job = follow(client, job_id, quiet=True)
        finally:
            if how == "freeze":
                os.kill(victim, signal.SIGKILL)
        recovered_in = time.monotonic() - lost_at
        assert job.state == pb.SUCCEEDED, job.error
        assert cluster.alive()["segmenter-1"] and cluster.alive()["identifier"] and cluster.alive()["assembler"]
        client.close()
    log = (tmp_path / "work" / "services.log").read_text()
    assert any(f"-{victim}-" in line and "lost" in line for line in log.splitlines()), log[-2000:]
    np.testing.assert_array_equal(_trajectories(tmp_path / "b"), _trajectories(tmp_path / "a"))
    print(f"{how}: job finished {recovered_in:.1f} s after the segmenter was lost")
