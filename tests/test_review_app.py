"""The review page's HTTP API on a real server: what it shows, corrections it saves, what it refuses."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import urllib.parse
import urllib.request

import cv2
import numpy as np
import pytest

from shoal.cli import main as shoal_main
from shoal.v1 import jobs_pb2 as pb
from shoal.v1 import jobs_pb2_grpc as pb_grpc
from tests.gateway_services import Services, job_request, tiny_video, watch_until_final
from tests.review_sessions import N_ANIMALS, N_FRAMES, SWAP_AT, get, serving, swapped_session

TOKEN = "review-test-token"


@pytest.fixture(scope="module")
def session(tmp_path_factory):
    return swapped_session(tmp_path_factory.mktemp("review"))


def post(url: str, body, *, content_type: str = "application/json", **headers: str) -> tuple[int, dict]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method="POST",
                                     headers={"Content-Type": content_type, **headers})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def corrected_trajectories(folder) -> np.ndarray:
    return np.load(folder / "trajectories_corrected" / "trajectories.npy", allow_pickle=True).item()["trajectories"]


def raw_get(base: str, path: str) -> int:
    """Status of a request whose path goes to the server exactly as written (no client normalising)."""
    host, port = urllib.parse.urlsplit(base).netloc.split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: close\r\n\r\n".encode())
        reply = b""
        while chunk := sock.recv(65536):
            reply += chunk
    return int(reply.split()[1])


def test_state_frames_and_outlines_describe_the_session(session):
    folder, truth = session
    with serving(folder) as base:
        status, body, _ = get(f"{base}/s/local/api/state")
        assert status == 200
        state = json.loads(body)
        assert (state["n_animals"], state["n_frames"]) == (N_ANIMALS, N_FRAMES)
        assert len(state["x"]) == N_ANIMALS and len(state["x"][0]) == N_FRAMES
        assert state["x"][0][SWAP_AT] == pytest.approx(truth[SWAP_AT, 1, 0], abs=0.01)  # the swapped tracking
        assert len(state["timeline"]) == N_ANIMALS and state["can_undo"] is False

        status, jpeg, headers = get(f"{base}/s/local/api/frames/10.jpg")
        assert status == 200 and headers["content-type"] == "image/jpeg"
        picture = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_GRAYSCALE)
        assert picture.shape == (500, 500)

        apart = int(np.flatnonzero(np.all([np.linalg.norm(truth[:, i] - truth[:, j], axis=1) > 80
                                           for i in range(3) for j in range(i)], axis=0))[0])
        status, body, _ = get(f"{base}/s/local/api/blobs/{apart}")
        polygons = json.loads(body)
        assert status == 200 and len(polygons) == N_ANIMALS
        for polygon, centre in zip(sorted(polygons, key=lambda p: np.mean(p, axis=0)[1]),
                                   sorted(truth[apart], key=lambda p: p[1]), strict=True):
            assert np.linalg.norm(np.mean(polygon, axis=0) - centre) < 15  # each outline around an animal

        assert get(f"{base}/s/local/api/frames/{N_FRAMES}.jpg")[0] == 404
        assert get(f"{base}/s/local/api/blobs/{N_FRAMES}")[0] == 404
        assert get(f"{base}/s/other/api/state")[0] == 404


def test_a_swap_is_saved_applied_undone_and_redone(tmp_path):
    folder, truth = swapped_session(tmp_path)
    original = (folder / "trajectories" / "trajectories.npy").read_bytes()
    with serving(folder) as base:
        url = f"{base}/s/local/api/corrections"
        status, state = post(url, {"op": "swap", "a": 1, "b": 2, "start": SWAP_AT, "end": None})
        assert status == 200 and state["can_undo"]
        corrected = corrected_trajectories(folder)
        np.testing.assert_allclose(corrected, truth)
        assert (folder / "trajectories_corrected" / "trajectories_csv" / "trajectories.csv").is_file()
        assert (folder / "trajectories" / "trajectories.npy").read_bytes() == original

        status, state = post(url, {"op": "undo"})
        assert status == 200 and not state["can_undo"] and state["can_redo"]
        assert not (folder / "trajectories_corrected" / "trajectories.npy").exists()
        status, state = post(url, {"op": "redo"})
        np.testing.assert_allclose(corrected_trajectories(folder), truth)

        status, state = post(url, {"op": "swap", "a": 1, "b": 1, "start": 0, "end": None})
        assert status == 400 and "both identity 1" in state["error"]
        status, state = post(url, {"op": "teleport"})
        assert status == 400
    log = json.loads((folder / "corrections.json").read_text())
    assert [entry["op"] for entry in log["entries"]] == ["swap", "undo", "redo"]


def test_the_token_the_origin_and_the_paths_are_enforced(session):
    folder, _ = session
    with serving(folder, token=TOKEN) as base:
        assert get(f"{base}/s/local/api/state")[0] == 401
        assert get(f"{base}/s/local/api/state", Authorization="Bearer wrong")[0] == 401
        assert get(f"{base}/s/local/api/state", Authorization=f"Bearer {TOKEN}")[0] == 200
        # the printed URL: the token moves into a SameSite cookie and out of the address bar
        opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor())
        with opener.open(f"{base}/?token={TOKEN}", timeout=20) as response:
            assert response.status == 200 and response.url == f"{base}/s/local/"
        with opener.open(f"{base}/s/local/api/state", timeout=20) as response:
            assert json.loads(response.read())["n_animals"] == N_ANIMALS

        auth = {"Authorization": f"Bearer {TOKEN}"}
        url = f"{base}/s/local/api/corrections"
        check = {"op": "check", "start": 0, "end": 10}
        assert post(url, check, Origin="http://evil.example", **auth)[0] == 403
        assert post(url, check, content_type="text/plain", **auth)[0] == 415
        assert post(url, check)[0] == 401
        assert not (folder / "corrections.json").exists()  # nothing refused was recorded
        # the page's own host behind a TLS proxy (https outside, http here) may write
        own_host = urllib.parse.urlsplit(base).netloc
        assert post(url, check, Origin=f"https://{own_host}", **auth)[0] == 200
        post(url, {"op": "undo"}, **auth)

    with serving(folder) as base:
        for path in ("/static/../session.json", "/static/%2e%2e/%2e%2e/session.json", "/static/..%2fsession.json",
                     "/s/local/../../session.json", "/s/local/api/frames/-1.jpg", "/session.json",
                     "/static/%2e%2e/app.py"):
            assert raw_get(base, path) in (400, 404), path
        assert raw_get(base, "/static/review.js") == 200


def test_shoal_review_names_a_missing_video_or_session(tmp_path, capsys):
    assert shoal_main(["review", str(tmp_path / "nowhere"), "--no-browser"]) == 2
    assert "session.json" in capsys.readouterr().err
    folder, _ = swapped_session(tmp_path)
    (tmp_path / "sim" / "video.avi").unlink()
    assert shoal_main(["review", str(folder), "--no-browser"]) == 2
    err = capsys.readouterr().err
    assert "video.avi" in err and "does not exist" in err


@pytest.mark.slow
def test_the_gateway_serves_the_review_page_of_a_finished_job(tmp_path):
    data = tmp_path / "data"
    video = tiny_video(data / "video")
    with Services(data, tmp_path / "work", env={"SHOAL_AUTH_TOKEN": TOKEN}) as services:
        ready = services.start_gateway("--http-port", "0")
        port = int(dict(part.split("=", 1) for part in ready.split()[1:])["review"])
        services.start_workers()
        channel = services.channel()
        stub = pb_grpc.JobServiceStub(channel)
        metadata = [("authorization", f"Bearer {TOKEN}")]
        job_id = stub.SubmitJob(job_request(str(video)), metadata=metadata, timeout=30).job_id
        assert get(f"http://127.0.0.1:{port}/s/{job_id}/api/state", Authorization=f"Bearer {TOKEN}")[0] == 404
        job = watch_until_final_with_token(stub, job_id, metadata)
        assert job.state == pb.SUCCEEDED, f"{job.error}\n{services.log_tail()}"
        base = f"http://127.0.0.1:{port}"
        status, body, _ = get(f"{base}/s/{job_id}/api/state", Authorization=f"Bearer {TOKEN}")
        assert status == 200 and json.loads(body)["n_animals"] == 2
        assert get(f"{base}/s/{job_id}/api/frames/5.jpg", Authorization=f"Bearer {TOKEN}")[0] == 200
        assert get(f"{base}/s/{job_id}/api/state")[0] == 401
        status, body, _ = get(f"{base}/", Authorization=f"Bearer {TOKEN}")
        assert status == 200 and job_id in body.decode()
        channel.close()


def watch_until_final_with_token(stub, job_id, metadata):
    class Authorised:
        def WatchJob(self, ref, timeout):  # noqa: N802 - the stub's name
            return stub.WatchJob(ref, timeout=timeout, metadata=metadata)

    return watch_until_final(Authorised(), job_id, timeout=90)


def test_shoal_review_prints_its_url_serves_the_session_and_stops_on_ctrl_c(session):
    folder, _ = session
    proc = subprocess.Popen([sys.executable, "-m", "shoal.cli", "review", str(folder), "--no-browser"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert line.startswith("shoal review: http://127.0.0.1:"), line + proc.stderr.read()
        url = line.split()[2]
        token = urllib.parse.parse_qs(urllib.parse.urlsplit(url).query)["token"][0]
        assert len(token) >= 16  # a fresh random token: other users of this machine cannot open the page
        base = url.split("/?")[0]
        status, body, _ = get(f"{base}/s/local/api/state", Authorization=f"Bearer {token}")
        assert status == 200 and json.loads(body)["n_frames"] == N_FRAMES
        assert get(f"{base}/s/local/api/state")[0] == 401
        assert get(f"{base}/s/local/api/state", Host="evil.example", Authorization=f"Bearer {token}")[0] == 421
        proc.send_signal(signal.SIGINT)
        assert proc.wait(15) == 0
        assert "Traceback" not in proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
