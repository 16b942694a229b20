"""CURVE on the services' ZeroMQ sockets: a rogue client, with no CURVE or with a key that is not
allowed, reaches no service, changes nothing of a running job, and is logged and counted."""

from __future__ import annotations

import re
import socket
import time
import urllib.request

import numpy as np
import pytest
import zmq

from shoal import curve
from shoal.blobs import BlobTable
from shoal.codec import message
from shoal.messages import BlobBatch, Hello
from shoal.transport import send
from shoal.v1 import jobs_pb2 as pb
from shoal.v1 import jobs_pb2_grpc as pb_grpc
from tests.gateway_services import Services, free_port, job_request, tiny_video, trajectories, watch_until_final


def test_a_key_folder_is_written_once_and_read_back(tmp_path):
    folder = curve.generate(tmp_path / "keys")
    keys = curve.CurveKeys.load(folder)
    assert keys.client_public in keys.allowed and keys.server_public not in keys.allowed
    assert oct((folder / "server.key_secret").stat().st_mode)[-3:] == "600"
    with pytest.raises(curve.CurveError, match="already holds"):
        curve.generate(folder)
    (folder / "allowed" / "client.key").unlink()
    with pytest.raises(curve.CurveError, match="no allowed client key"):
        curve.CurveKeys.load(folder)
    with pytest.raises(curve.CurveError, match="nowhere/server.key_secret"):
        curve.CurveKeys.load(tmp_path / "nowhere")


def _rogue_hellos(endpoints: dict[str, str], stranger: curve.CurveKeys | None, server_public: bytes = b"") -> None:
    """From each port: a plain ZeroMQ client and a CURVE client whose key is not allowed (none when
    ``stranger`` is None) send a well-formed message (a worker's hello, a blob batch); neither may
    reach the service."""
    ctx = zmq.Context()
    try:
        for name, endpoint in endpoints.items():
            kind = zmq.DEALER if name in ("control", "requests") else zmq.PUSH
            rogue = message(Hello(role="segmenter", worker=f"rogue-{name}")) if name == "control" else message(
                BlobBatch(job="rogue", chunk=0, start=0, stop=1, n_chunks=1),
                {**BlobTable.empty().arrays(), "crops": np.zeros((0, 8, 8), np.uint8)})
            for key in (None, stranger) if stranger else (None,):
                sock = ctx.socket(kind)
                sock.setsockopt(zmq.LINGER, 0)
                if key is not None:
                    sock.curve_secretkey, sock.curve_publickey = key.client_secret, key.client_public
                    sock.curve_serverkey = server_public
                sock.connect(endpoint)
                try:
                    send(sock, rogue)  # queued: ZeroMQ would deliver it if a handshake ever succeeded
                except zmq.Again:
                    pass
                if kind == zmq.DEALER:
                    assert sock.poll(1500, zmq.POLLIN) == 0, f"{name} answered a rogue client"
                time.sleep(0.3)
                sock.close()
    finally:
        ctx.term()


def _refusals_counted(metrics: int, control: str) -> dict[str, float]:
    """The gateway's refusal counters, once the plain client's refusal is counted (at most 5 tries).

    A plain client that reads the server's CURVE greeting first may close the connection before the
    server has read its own greeting; the server then sees a reset, not a failed handshake, and has
    nothing to count. Under load that race can take every reconnect of one short hello, so the plain
    hello is sent again (it still must reach nothing), then a plain greeting that stays connected
    until the server hangs up, which the server always reads, until the gateway has counted one.
    """
    for attempt in range(5):
        deadline = time.monotonic() + 2
        while time.monotonic() < deadline:
            refused = _metric(metrics, "shoal_zmq_refused_connections_total")
            if refused.get('{reason="no CURVE"}', 0) >= 1:
                return refused
            time.sleep(0.2)
        if attempt == 0:
            _rogue_hellos({"control": control}, None)
        else:
            _plain_greeting(control)
    return refused


def _plain_greeting(endpoint: str) -> None:
    """A ZMTP 3.0 greeting with the NULL mechanism (what a ZeroMQ socket without CURVE sends), held
    open until the server closes the connection, so the server surely reads it."""
    host, port = endpoint.removeprefix("tcp://").rsplit(":", 1)
    greeting = b"\xff" + bytes(8) + b"\x7f" + b"\x03\x00" + b"NULL".ljust(20, b"\x00") + b"\x00" + bytes(31)
    with socket.create_connection((host, int(port)), timeout=5) as conn:
        conn.sendall(greeting)
        try:
            while conn.recv(4096):
                pass
        except OSError:
            pass


def _metric(port: int, name: str) -> dict[str, float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    return {labels: float(value) for labels, value in re.findall(rf"^{name}(\{{[^}}]*\}}) (\S+)$", text, re.M)}


@pytest.mark.slow
def test_rogue_clients_reach_no_service_and_the_job_is_untouched(tmp_path):
    keys = curve.generate(tmp_path / "keys")
    stranger = curve.CurveKeys.load(curve.generate(tmp_path / "stranger"))
    allowed = curve.CurveKeys.load(keys)
    video = tiny_video(tmp_path / "data" / "video")
    metrics = free_port()
    endpoints = {"control": f"tcp://127.0.0.1:{free_port()}", "batches": f"tcp://127.0.0.1:{free_port()}",
                 "requests": f"tcp://127.0.0.1:{free_port()}", "geometry": f"tcp://127.0.0.1:{free_port()}"}
    with Services(tmp_path / "data", tmp_path / "work", env={"SHOAL_CURVE_KEYS": str(keys)}) as services:
        services.control = endpoints["control"]
        services.start_gateway("--metrics-port", str(metrics))
        common = ["--gateway", endpoints["control"], "--metrics-port", "-1"]
        services._spawn("segmenter-0", "services.segmenter.main", common)
        services._spawn("identifier", "services.identifier.main", [
            *common, "--batches", endpoints["batches"], "--requests", endpoints["requests"],
            "--store", str(tmp_path / "work" / "store"), "--threads", "1"])
        services._spawn("assembler", "services.assembler.main", [*common, "--geometry", endpoints["geometry"]])
        stub = pb_grpc.JobServiceStub(services.channel())
        undisturbed = stub.SubmitJob(job_request(str(video)), timeout=30).job_id
        assert watch_until_final(stub, undisturbed, timeout=90).state == pb.SUCCEEDED, services.log_tail()
        job = stub.SubmitJob(job_request(str(video)), timeout=30)
        _rogue_hellos(endpoints, stranger, allowed.server_public)
        final = watch_until_final(stub, job.job_id, timeout=90)
        assert final.state == pb.SUCCEEDED, f"{final.error}\n{services.log_tail()}"
        np.testing.assert_array_equal(trajectories(stub, job.job_id), trajectories(stub, undisturbed))

        workers = _metric(metrics, "shoal_workers")
        assert sum(workers.values()) == 3, workers  # no rogue hello registered a worker
        refused = _refusals_counted(metrics, endpoints["control"])
        assert refused.get('{reason="no CURVE"}', 0) >= 1 and refused.get('{reason="key not allowed"}', 0) >= 1, refused
        log = services.log_tail(200_000)
        assert log.count("refused a ZeroMQ connection from 127.0.0.1") == 3  # once per service, with the address
        assert "refused a ZeroMQ connection without CURVE on tcp://127.0.0.1" in log
