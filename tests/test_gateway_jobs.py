"""Several jobs at once on real services: cancelling one leaves the others' results untouched and frees
its workers; a client that stops watching never affects a job, nor ties up the gateway.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import grpc
import numpy as np
import pytest

from shoal.v1 import jobs_pb2 as pb
from shoal.v1 import jobs_pb2_grpc as pb_grpc
from tests.gateway_services import Services, job_request, tiny_video, trajectories, watch_until_final

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]
GRPC_THREADS = 4  # the gateway then allows 3 WatchJob streams at once


@pytest.fixture(scope="module")
def services(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Services]:
    root = tmp_path_factory.mktemp("jobs")
    with Services(root / "data", root / "work", gateway_args=["--grpc-threads", str(GRPC_THREADS)]) as services:
        tiny_video(root / "data", n_frames=300)
        services.start_gateway()
        services.start_workers(segmenters=1, assemblers=2)
        yield services


@pytest.fixture(scope="module")
def stub(services: Services) -> pb_grpc.JobServiceStub:
    return pb_grpc.JobServiceStub(services.channel())


@pytest.fixture(scope="module")
def video(services: Services) -> str:
    return str(services.data_root / "video.avi")


@pytest.fixture(scope="module")
def reference(stub: pb_grpc.JobServiceStub, video: str) -> np.ndarray:
    """The video's trajectories from a job that ran alone."""
    job = stub.SubmitJob(job_request(video), timeout=10)
    assert watch_until_final(stub, job.job_id).state == pb.SUCCEEDED
    return trajectories(stub, job.job_id)


def _wait_state(stub: pb_grpc.JobServiceStub, job_id: str, states: set[int], timeout: float = 30) -> pb.Job:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = stub.GetJob(pb.JobRef(job_id=job_id), timeout=5)
        if job.state in states:
            return job
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} never reached {states}; it is {job}")


def test_cancelling_one_running_job_leaves_the_other_untouched(services, stub, video, reference):
    cancelled = stub.SubmitJob(job_request(video, frames_per_episode=10), timeout=10)
    kept = stub.SubmitJob(job_request(video, frames_per_episode=10), timeout=10)
    for job in (cancelled, kept):  # two assemblers: both run at once
        _wait_state(stub, job.job_id, {pb.RUNNING})
    assert stub.CancelJob(pb.JobRef(job_id=cancelled.job_id), timeout=15).state == pb.CANCELLED

    # the cancelled job's assembler is free again: a new job starts while `kept` still runs
    follower = stub.SubmitJob(job_request(video), timeout=10)
    _wait_state(stub, follower.job_id, {pb.RUNNING, pb.SUCCEEDED})
    assert stub.GetJob(pb.JobRef(job_id=kept.job_id), timeout=5).state == pb.RUNNING

    for job in (kept, follower):
        final = watch_until_final(stub, job.job_id)
        assert final.state == pb.SUCCEEDED, f"{final.error}\n{services.log_tail()}"
        np.testing.assert_array_equal(trajectories(stub, job.job_id), reference)
    gone = stub.GetJob(pb.JobRef(job_id=cancelled.job_id), timeout=5)
    assert gone.state == pb.CANCELLED and "cancelled" in gone.error
    with pytest.raises(grpc.RpcError) as err:
        list(stub.GetResult(pb.JobRef(job_id=cancelled.job_id), timeout=5))
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "cancelled" in err.value.details()


def test_watchers_that_disconnect_do_not_affect_the_job(services, stub, video, reference):
    job = stub.SubmitJob(job_request(video, frames_per_episode=10), timeout=10)
    for _ in range(2 * GRPC_THREADS):  # more than the gateway has threads: each must free its slot
        call = stub.WatchJob(pb.JobRef(job_id=job.job_id), timeout=30)
        assert next(call).job.job_id == job.job_id
        call.cancel()
    other = services.channel()  # a client whose connection just closes mid-stream
    next(pb_grpc.JobServiceStub(other).WatchJob(pb.JobRef(job_id=job.job_id), timeout=30))
    other.close()

    final = watch_until_final(stub, job.job_id)
    assert final.state == pb.SUCCEEDED, f"{final.error}\n{services.log_tail()}"
    np.testing.assert_array_equal(trajectories(stub, job.job_id), reference)


def test_watchers_beyond_the_limit_are_refused_and_other_calls_still_work(services, stub, video):
    job = stub.SubmitJob(job_request(video, frames_per_episode=10), timeout=10)
    ref = pb.JobRef(job_id=job.job_id)
    held = [stub.WatchJob(ref, timeout=30) for _ in range(GRPC_THREADS * 3 // 4)]
    for call in held:
        next(call)  # the stream is open and holds a gateway thread until the job ends
    with pytest.raises(grpc.RpcError) as err:
        next(stub.WatchJob(ref, timeout=10))
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "GetJob" in err.value.details()
    assert stub.GetJob(ref, timeout=5).state in (pb.QUEUED, pb.RUNNING), "the held streams had ended"
    assert job.job_id in [j.job_id for j in stub.ListJobs(pb.ListJobsRequest(), timeout=5).jobs]
    for call in held:
        call.cancel()
    # The gateway learns of each cancel asynchronously, so a slot may take a moment to come back.
    deadline = time.monotonic() + 5
    while True:
        try:
            assert watch_until_final(stub, job.job_id).state == pb.SUCCEEDED
            break
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.RESOURCE_EXHAUSTED or time.monotonic() > deadline:
                raise
            time.sleep(0.1)
