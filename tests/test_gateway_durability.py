"""The job store survives the gateway: SIGKILL it mid-job, start it again on the same data folder, and
no job is lost. Also: SIGTERM drains (health NOT_SERVING while calls are still answered), and two
gateways cannot share one work folder.
"""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from shoal.v1 import jobs_pb2 as pb
from shoal.v1 import jobs_pb2_grpc as pb_grpc
from tests.gateway_services import Services, job_request, tiny_video, trajectories, watch_until_final

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]


def _state_in_store(work: Path, job_id: str) -> str:
    with sqlite3.connect(work / "jobs.sqlite") as db:
        return db.execute("SELECT state FROM jobs WHERE job_id = ?", (job_id,)).fetchone()[0]


def test_sigkill_mid_job_loses_no_job(tmp_path):
    data, work = tmp_path / "data", tmp_path / "work"
    video = str(tiny_video(data / "v", n_frames=300))
    with Services(data, work) as services:
        services.start_gateway()
        services.start_workers(segmenters=1, assemblers=1)
        stub = pb_grpc.JobServiceStub(services.channel())

        done = stub.SubmitJob(job_request(video), timeout=10)
        assert watch_until_final(stub, done.job_id).state == pb.SUCCEEDED, services.log_tail()
        reference = trajectories(stub, done.job_id)

        # one assembler: `running` runs while `queued` waits; kill the gateway once segmentation is under way
        running = stub.SubmitJob(job_request(video, frames_per_episode=10), timeout=10)
        queued = stub.SubmitJob(job_request(video), timeout=10)
        for event in stub.WatchJob(pb.JobRef(job_id=running.job_id), timeout=30):
            segment = {s.stage: s for s in event.job.stages}.get("segment")
            if segment is not None and segment.done >= 2:
                break
        assert not event.final and segment.done < segment.total, "the job ended before the gateway was killed"
        assert services.signal_gateway(signal.SIGKILL) == -signal.SIGKILL
        assert _state_in_store(work, running.job_id) == "RUNNING"
        assert _state_in_store(work, queued.job_id) == "QUEUED"

        services.start_gateway()
        for job in (running, queued):
            final = watch_until_final(stub, job.job_id)
            assert final.state == pb.SUCCEEDED, f"{final.error}\n{services.log_tail()}"
            np.testing.assert_array_equal(trajectories(stub, job.job_id), reference)
        restarted = stub.GetJob(pb.JobRef(job_id=running.job_id), timeout=10)
        assert any("gateway restarted" in w for w in restarted.warnings), restarted.warnings
        again = stub.GetJob(pb.JobRef(job_id=done.job_id), timeout=10)
        assert again.state == pb.SUCCEEDED and again.figures["frames"] == 300
        np.testing.assert_array_equal(trajectories(stub, done.job_id), reference)
        listed = {j.job_id for j in stub.ListJobs(pb.ListJobsRequest(), timeout=10).jobs}
        assert {done.job_id, running.job_id, queued.job_id} <= listed


def test_sigterm_drains_with_health_not_serving(tmp_path):
    (tmp_path / "data").mkdir()
    with Services(tmp_path / "data", tmp_path / "work", gateway_args=["--drain-seconds", "3"]) as services:
        services.start_gateway()
        channel = services.channel()
        health = health_pb2_grpc.HealthStub(channel)
        jobs = pb_grpc.JobServiceStub(channel)
        check = health_pb2.HealthCheckRequest(service="shoal.v1.JobService")
        assert health.Check(check, timeout=5).status == health_pb2.HealthCheckResponse.SERVING
        gateway = services.procs["gateway"]
        t0 = time.monotonic()
        gateway.send_signal(signal.SIGTERM)
        deadline = t0 + 2
        while health.Check(check, timeout=5).status == health_pb2.HealthCheckResponse.SERVING:
            assert time.monotonic() < deadline, "health still SERVING 2 s after SIGTERM"
            time.sleep(0.05)
        assert jobs.ListJobs(pb.ListJobsRequest(), timeout=5) is not None  # still answering while draining
        assert gateway.wait(15) == 0
        assert time.monotonic() - t0 >= 2.5, "the gateway stopped before its drain period"
        with pytest.raises(grpc.RpcError) as err:
            health.Check(check, timeout=2)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE


def test_second_gateway_on_the_same_work_folder_refuses_to_start(tmp_path):
    (tmp_path / "data").mkdir()
    with Services(tmp_path / "data", tmp_path / "work") as services:
        services.start_gateway()
        other = subprocess.run([sys.executable, "-m", "services.gateway.main", "--data-root", str(tmp_path / "data"),
                                "--work-dir", str(tmp_path / "work"), "--grpc-address", "127.0.0.1:0",
                                "--control", "tcp://127.0.0.1:0", "--metrics-port", "-1"],
                               capture_output=True, text=True, timeout=30, env=services.env)
        assert other.returncode == 2
        assert "another gateway" in other.stderr
