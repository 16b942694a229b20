"""The gRPC JobService of a real gateway (with workers) answers bad requests with the right status.

A client should be able to tell from the status code alone whether to fix its request
(INVALID_ARGUMENT, PERMISSION_DENIED), its files (FAILED_PRECONDITION) or its job id (NOT_FOUND).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from shoal.local import LocalCluster
from shoal.v1 import jobs_pb2 as pb
from shoal.v1 import jobs_pb2_grpc as pb_grpc

pytestmark = pytest.mark.slow
WATCH_TIMEOUT_S = 60


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory, video_writer) -> Path:
    root = tmp_path_factory.mktemp("data")
    video_writer(root / "squares.avi")
    (root / "random.avi").write_bytes(np.random.default_rng(0).bytes(4096))
    (root / "escape.avi").symlink_to("/etc/hostname")
    return root


@pytest.fixture(scope="module")
def channel(data_root: Path) -> Iterator[grpc.Channel]:
    """A gateway, one segmenter, the identifier and the assembler, as `shoal serve` runs them."""
    cluster = LocalCluster(data_root=data_root, work_dir=data_root.parent / "work", segmenters=1)
    cluster.start()
    procs = list(cluster.procs.values())
    channel = grpc.insecure_channel(cluster.grpc_address)
    try:
        grpc.channel_ready_future(channel).result(timeout=30)
        yield channel
    finally:
        channel.close()
        cluster.stop()
    assert all(p.poll() is not None for p in procs), "a service outlived LocalCluster.stop()"


@pytest.fixture(scope="module")
def stub(channel: grpc.Channel) -> pb_grpc.JobServiceStub:
    return pb_grpc.JobServiceStub(channel)


def _request(videos: list[str], **params) -> pb.SubmitJobRequest:
    params.setdefault("number_of_animals", 2)
    return pb.SubmitJobRequest(video_paths=videos, params=pb.TrackingParams(**params))


def _error(call, request) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as err:
        result = call(request, timeout=10)
        if not isinstance(result, pb.Job | pb.ListJobsResponse):
            list(result)  # streaming RPCs fail on the first read
    return err.value


def _watch_until_final(stub: pb_grpc.JobServiceStub, job_id: str) -> pb.Job:
    last = None
    for event in stub.WatchJob(pb.JobRef(job_id=job_id), timeout=WATCH_TIMEOUT_S):
        last = event.job
        if event.final:
            return last
    raise AssertionError(f"WatchJob ended without a final event; last state {last}")


@pytest.fixture(scope="module")
def failed_job(stub: pb_grpc.JobServiceStub) -> pb.Job:
    """A valid request whose thresholds find nothing in a bright video: the job must fail, saying why."""
    job = stub.SubmitJob(_request(["squares.avi"], intensity_ths=[0, 1]), timeout=10)
    assert job.state == pb.QUEUED
    return _watch_until_final(stub, job.job_id)


def test_no_videos_is_invalid_argument(stub):
    err = _error(stub.SubmitJob, pb.SubmitJobRequest(params=pb.TrackingParams(number_of_animals=2)))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "video_paths" in err.details()


@pytest.mark.parametrize("video", ["/etc/hostname", "../../etc/hostname", "escape.avi"],
                         ids=["absolute", "dot-dot", "symlink"])
def test_video_outside_the_data_root_is_permission_denied(stub, video):
    err = _error(stub.SubmitJob, _request([video]))
    assert err.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "data root" in err.details()


def test_output_dir_outside_the_data_root_is_permission_denied(stub):
    request = _request(["squares.avi"])
    request.output_dir = "/tmp/shoal-should-not-write-here"
    err = _error(stub.SubmitJob, request)
    assert err.code() == grpc.StatusCode.PERMISSION_DENIED
    assert not Path(request.output_dir).exists()


def test_a_session_folder_is_never_overwritten_nor_shared(stub, data_root):
    earlier = data_root / "sessions" / "earlier"
    earlier.mkdir(parents=True)
    (earlier / "session.json").write_text("{}")
    request = _request(["squares.avi"])
    request.output_dir = str(earlier)
    err = _error(stub.SubmitJob, request)
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "earlier session" in err.details() and (earlier / "session.json").read_text() == "{}"

    first = _request(["squares.avi"], intensity_ths=[0, 1])  # fails fast at the probe
    first.output_dir = "sessions/next"
    job = stub.SubmitJob(first, timeout=10)
    err = _error(stub.SubmitJob, first)
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert job.job_id in err.details()
    _watch_until_final(stub, job.job_id)


@pytest.mark.parametrize(("folder", "code"), [("/etc", grpc.StatusCode.PERMISSION_DENIED),
                                             (".", grpc.StatusCode.INVALID_ARGUMENT)], ids=["outside", "no-model"])
def test_knowledge_transfer_reads_only_a_session_under_the_data_root(stub, folder, code):
    err = _error(stub.SubmitJob, _request(["squares.avi"], extra={"knowledge_transfer_folder": folder}))
    assert err.code() == code
    assert "knowledge_transfer_folder" in err.details()


@pytest.mark.parametrize(("video", "words"), [("missing.avi", "does not exist"), ("random.avi", "random.avi")])
def test_unreadable_video_is_failed_precondition(stub, data_root, video, words):
    err = _error(stub.SubmitJob, _request([video]))
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert words in err.details()


@pytest.mark.parametrize(("params", "field"), [
    ({"number_of_animals": 0}, "number_of_animals"),
    ({"intensity_ths": [200, 300]}, "intensity_ths"),
    ({"extra": {"no_such_key": "1"}}, "no_such_key"),
    ({"extra": {"frames_per_episode": "3"}}, "frames_per_episode"),
    ({"method": "magic"}, "method"),
    ({"tracking_intervals": [pb.Interval(start=0, end=500)]}, "tracking_intervals"),
    # only the video tells these apart from good ones (shoal.preflight, as `shoal track` checks them)
    ({"roi_list": ["+ Polygon [[1000,1000],[1100,1000],[1100,1100]]"]}, "roi_list"),
    ({"number_of_animals": 3, "exclusive_rois": True, "extra": {"animals_per_roi": "[1, 1, 1]"},
      "roi_list": ["+ Polygon [[0,0],[30,0],[30,30],[0,30]]", "+ Polygon [[40,30],[79,30],[79,63],[40,63]]"]},
     "animals_per_roi"),
])
def test_bad_params_are_invalid_argument_naming_the_field(stub, params, field):
    err = _error(stub.SubmitJob, _request(["squares.avi"], **params))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in err.details()


def test_unknown_job_is_not_found(stub):
    for call in (stub.GetJob, stub.CancelJob, stub.WatchJob, stub.GetResult):
        err = _error(call, pb.JobRef(job_id="doesnotexist"))
        assert err.code() == grpc.StatusCode.NOT_FOUND, call
        assert "doesnotexist" in err.details()


def test_job_that_finds_no_animals_fails_with_a_reason(failed_job):
    assert failed_job.state == pb.FAILED
    assert "no animals" in failed_job.error
    assert "intensity" in failed_job.error  # tells the user which knob to turn


def test_result_of_failed_job_is_failed_precondition(stub, failed_job):
    err = _error(stub.GetResult, pb.JobRef(job_id=failed_job.job_id))
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "failed" in err.details()


def test_result_of_unfinished_job_is_failed_precondition_and_cancel_ends_it(stub):
    job = stub.SubmitJob(_request(["squares.avi"], intensity_ths=[0, 100]), timeout=10)
    err = _error(stub.GetResult, pb.JobRef(job_id=job.job_id))
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
    cancelled = stub.CancelJob(pb.JobRef(job_id=job.job_id), timeout=15)
    assert cancelled.state in (pb.CANCELLED, pb.FAILED, pb.SUCCEEDED)
    assert stub.GetJob(pb.JobRef(job_id=job.job_id), timeout=10).state == cancelled.state


def test_list_jobs_pages_until_exhausted(stub, failed_job):
    for _ in range(2):  # at least three jobs exist
        stub.SubmitJob(_request(["squares.avi"], intensity_ths=[0, 1]), timeout=10)
    everything = [j.job_id for j in stub.ListJobs(pb.ListJobsRequest(page_size=1000), timeout=10).jobs]
    assert len(everything) >= 3 and failed_job.job_id in everything
    paged, token, pages = [], "", 0
    while True:
        page = stub.ListJobs(pb.ListJobsRequest(page_size=1, page_token=token), timeout=10)
        pages += 1
        assert len(page.jobs) == 1
        paged.append(page.jobs[0].job_id)
        token = page.next_page_token
        if not token:
            break
        assert pages <= len(everything), "paging does not end"
    assert paged[:len(everything)] == everything
    failed = stub.ListJobs(pb.ListJobsRequest(state=pb.FAILED), timeout=10).jobs
    assert failed_job.job_id in [j.job_id for j in failed] and all(j.state == pb.FAILED for j in failed)
    err = _error(stub.ListJobs, pb.ListJobsRequest(page_token="garbage"))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_watch_of_a_finished_job_ends_at_once(stub, failed_job):
    t0 = time.monotonic()
    events = list(stub.WatchJob(pb.JobRef(job_id=failed_job.job_id), timeout=10))
    assert len(events) == 1 and events[0].final and events[0].job.state == pb.FAILED
    assert time.monotonic() - t0 < 5


@pytest.mark.parametrize("service", ["", "shoal.v1.JobService"])
def test_health_check_serving(channel, service):
    reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_reflection_lists_the_job_service(channel):
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    replies = list(stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]),
                                             timeout=10))
    names = {s.name for r in replies for s in r.list_services_response.service}
    assert "shoal.v1.JobService" in names
    assert "grpc.health.v1.Health" in names


def test_negative_page_size_is_invalid_argument(stub, failed_job):
    err = _error(stub.ListJobs, pb.ListJobsRequest(page_size=-1))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "page_size" in err.details()


def test_unknown_state_filter_is_invalid_argument(stub):
    err = _error(stub.ListJobs, pb.ListJobsRequest(state=42))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "state" in err.details() and "QUEUED" in err.details()
