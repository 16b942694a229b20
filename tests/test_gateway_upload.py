"""Client-streamed upload (``SubmitUpload``) to a real gateway: the files land in the job's folder under
the data root and the job runs on them; anything over the size limit, misnamed or unreadable is
refused with the documented status, and leaves no file behind."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest

from shoal.client import Client
from shoal.params import TrackingParams
from shoal.v1 import jobs_pb2 as pb
from tests.gateway_services import Services, tiny_video, trajectories, watch_until_final

pytestmark = [pytest.mark.slow, pytest.mark.timeout(90)]
LIMIT_MB = 2


@pytest.fixture(scope="module")
def services(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Services]:
    root = tmp_path_factory.mktemp("upload")
    (root / "data").mkdir()
    with Services(root / "data", root / "work", gateway_args=["--max-upload-mb", str(LIMIT_MB)]) as services:
        services.start_gateway()
        services.start_workers(segmenters=1, assemblers=1)
        yield services


@pytest.fixture(scope="module")
def client(services: Services) -> Iterator[Client]:
    client = Client(services.grpc_address)
    client.wait_ready()
    yield client
    client.close()


@pytest.fixture(scope="module")
def local_video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A video on the client's side only (outside the gateway's data root)."""
    video = tiny_video(tmp_path_factory.mktemp("client"), n_frames=60)
    assert video.stat().st_size < LIMIT_MB * 2**20
    return video


def _params(*videos: Path) -> TrackingParams:
    return TrackingParams(video_paths=[str(v) for v in videos], number_of_animals=2, track_wo_identities=True,
                          frames_per_episode=20)


def _uploads(services: Services) -> list[Path]:
    """The files under the uploads folder; os.walk skips a folder the gateway removes meanwhile."""
    return sorted(Path(root, name) for root, _, names in os.walk(services.data_root / "uploads") for name in names)


def test_uploaded_video_lands_in_the_jobs_folder_and_is_tracked(services, client, local_video):
    job = client.upload(_params(local_video), name="uploaded")
    assert job.state == pb.QUEUED and job.name == "uploaded"
    stored = services.data_root / "uploads" / job.job_id / local_video.name
    assert list(job.video_paths) == [str(stored)]
    assert stored.read_bytes() == local_video.read_bytes()
    final = watch_until_final(client.stub, job.job_id)
    assert final.state == pb.SUCCEEDED, f"{final.error}\n{services.log_tail()}"
    assert final.figures["frames"] == 60
    assert np.isfinite(trajectories(client.stub, job.job_id)).any()


def test_several_files_form_one_session(services, client, local_video, tmp_path):
    second = tmp_path / "second.avi"
    second.write_bytes(local_video.read_bytes())
    job = client.upload(_params(local_video, second))
    assert [Path(p).name for p in job.video_paths] == [local_video.name, "second.avi"]
    final = watch_until_final(client.stub, job.job_id)
    assert final.state == pb.SUCCEEDED, final.error
    assert final.figures["frames"] == 120


def _raw_upload(client: Client, *messages: pb.SubmitUploadRequest) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as err:
        client.stub.SubmitUpload(iter(messages), timeout=30)
    return err.value


def _job(**params) -> pb.SubmitUploadRequest:
    fields = {"number_of_animals": 2, **params}
    return pb.SubmitUploadRequest(job=pb.SubmitJobRequest(params=pb.TrackingParams(**fields)))


def test_upload_over_the_limit_is_resource_exhausted(services, client, tmp_path):
    before = _uploads(services)
    big = tmp_path / "big.avi"
    big.write_bytes(b"\0" * (LIMIT_MB * 2**20 + 1))
    with pytest.raises(grpc.RpcError) as err:  # declared size: refused before the bytes are sent
        client.upload(_params(big))
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert f"{LIMIT_MB:g} MiB" in err.value.details() and "SubmitJob" in err.value.details()
    megabyte = pb.SubmitUploadRequest(data=b"\0" * 2**20)
    err = _raw_upload(client, _job(), pb.SubmitUploadRequest(file=pb.UploadFile(name="undeclared.avi")),
                      *[megabyte] * (LIMIT_MB + 1))  # no size given: refused as the bytes pass the limit
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert _uploads(services) == before


def test_a_client_that_goes_away_mid_upload_leaves_nothing(services, client):
    before = _uploads(services)
    release = threading.Event()

    def stalls() -> Iterator[pb.SubmitUploadRequest]:
        yield _job()
        yield pb.SubmitUploadRequest(file=pb.UploadFile(name="stalled.avi"))
        yield pb.SubmitUploadRequest(data=b"\0" * 1000)
        release.wait(30)

    call = client.stub.SubmitUpload.future(stalls(), timeout=30)
    deadline = time.monotonic() + 10
    while not any(p.name.endswith(".part") for p in _uploads(services)):
        assert time.monotonic() < deadline, "the first bytes never reached the gateway"
        time.sleep(0.05)
    call.cancel()
    release.set()
    while _uploads(services) != before:
        assert time.monotonic() < deadline, f"partial upload left behind: {_uploads(services)}"
        time.sleep(0.05)


@pytest.mark.parametrize(("messages", "code", "words"), [
    ([_job(), pb.SubmitUploadRequest(file=pb.UploadFile(name="../escape.avi")), pb.SubmitUploadRequest(data=b"x")],
     grpc.StatusCode.INVALID_ARGUMENT, "file.name"),
    ([_job(), pb.SubmitUploadRequest(file=pb.UploadFile(name="sub/dir.avi"))], grpc.StatusCode.INVALID_ARGUMENT,
     "file.name"),
    ([_job(number_of_animals=-1), pb.SubmitUploadRequest(file=pb.UploadFile(name="a.avi"))],
     grpc.StatusCode.INVALID_ARGUMENT, "number_of_animals"),
    ([pb.SubmitUploadRequest(file=pb.UploadFile(name="a.avi"))], grpc.StatusCode.INVALID_ARGUMENT, "first"),
    ([_job()], grpc.StatusCode.INVALID_ARGUMENT, "no file"),
    ([_job(), pb.SubmitUploadRequest(data=b"x")], grpc.StatusCode.INVALID_ARGUMENT, "`file` message"),
    ([_job(), pb.SubmitUploadRequest(file=pb.UploadFile(name="short.avi", size=10)),
      pb.SubmitUploadRequest(data=b"12345")], grpc.StatusCode.INVALID_ARGUMENT, "declared as 10 bytes"),
    ([_job(), pb.SubmitUploadRequest(file=pb.UploadFile(name="noise.avi")),
      pb.SubmitUploadRequest(data=np.random.default_rng(0).bytes(5000))], grpc.StatusCode.FAILED_PRECONDITION,
     "noise.avi"),
], ids=["dot-dot", "folder", "bad-params", "no-job-first", "no-file", "data-first", "truncated", "not-a-video"])
def test_bad_uploads_are_refused_and_leave_nothing(services, client, messages, code, words):
    before = _uploads(services)
    err = _raw_upload(client, *messages)
    assert err.code() == code
    assert words in err.details()
    assert _uploads(services) == before
    assert not (services.data_root.parent / "escape.avi").exists()


def test_video_paths_in_an_upload_is_invalid_argument(client):
    request = pb.SubmitUploadRequest(job=pb.SubmitJobRequest(video_paths=["x.avi"]))
    err = _raw_upload(client, request)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "video_paths" in err.details()


def test_uploads_can_be_switched_off(tmp_path, local_video):
    (tmp_path / "data").mkdir()
    with Services(tmp_path / "data", tmp_path / "work", gateway_args=["--max-upload-mb", "0"]) as services:
        services.start_gateway()
        client = Client(services.grpc_address)
        with pytest.raises(grpc.RpcError) as err:
            client.upload(_params(local_video))
        client.close()
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "uploads are off" in err.value.details()


def test_cli_submit_upload(services, local_video):
    run = subprocess.run([sys.executable, "-m", "shoal.cli", "submit", str(local_video), "--upload", "--animals", "2",
                          "--no-identities", "--gateway", services.grpc_address, "--watch"],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    job_id = run.stdout.split()[0]
    assert (services.data_root / "uploads" / job_id / local_video.name).is_file()
    assert "SUCCEEDED" in run.stdout
