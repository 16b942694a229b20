"""The message spec: docs/messages.md's message table and the classes of shoal/messages.py agree, the
codec refuses messages that break them, and a service drops such a message (or one of another
protocol version) and goes on serving."""

from __future__ import annotations

import re
import time
from pathlib import Path

import msgpack
import numpy as np
import pytest
import zmq

from shoal.blobs import BlobTable
from shoal.codec import CodecError, Message, decode, encode, message
from shoal.messages import SCHEMAS, VERSION, BlobBatch, TaskFailed
from shoal.v1 import jobs_pb2 as pb
from shoal.v1 import jobs_pb2_grpc as pb_grpc
from tests.gateway_services import Services, job_request, tiny_video, trajectories, watch_until_final

DOC = Path(__file__).resolve().parents[1] / "docs" / "messages.md"
#: the socket each type travels on (docs/messages.md §2)
SOCKETS = {"blob_batch": "batches", "chunk_geometry": "geometry"} | {
    t: "requests" for t in ("geometry_wanted", "classify_crossings", "learn_identities", "crossing_result",
                            "identity_result", "request_progress", "error")}
_TYPE_NAMES = {str: "str", int: "int", float: "number", bool: "bool", list: "list", dict: "map", type(None): "null"}


def _type_name(kinds: tuple[type, ...]) -> str:
    names = [_TYPE_NAMES[k] for k in kinds if k in _TYPE_NAMES]
    if "number" in names:
        names = [n for n in names if n != "int"]
    return " or ".join(dict.fromkeys(names))


def expected_rows() -> list[str]:
    """The message table's rows as shoal/messages.py defines them."""
    rows = []
    for name, schema in SCHEMAS.items():
        body = ", ".join(f"`{f}`{'' if required else '?'}: {_type_name(kinds)}"
                         for f, (kinds, required) in schema.body.items()) or "—"
        arrays = ", ".join(f"`{a}`{'' if required else '?'}" for a, required in schema.arrays.items()) or "—"
        rows.append(f"| `{name}` | {SOCKETS.get(name, 'control')} | {body} | {arrays} |")
    return rows


def documented_rows() -> list[str]:
    table = DOC.read_text().split("| type | socket | body | arrays |", 1)[1].split("\n\n", 1)[0]
    return [line for line in table.splitlines() if re.match(r"\| `\w+` \|", line)]


def test_the_message_table_and_the_classes_agree():
    documented, expected = documented_rows(), expected_rows()
    missing = [row for row in expected if row not in documented]
    stale = [row for row in documented if row not in expected]
    assert not missing and not stale, ("docs/messages.md's message table disagrees with shoal/messages.py.\n"
                                       "Rows the classes define:\n" + "\n".join(missing) +
                                       "\nRows only the page has:\n" + "\n".join(stale))
    assert f'"v": {VERSION}' in DOC.read_text(), "the page names another protocol version"


def test_every_type_the_page_describes_has_a_class():
    described = set(re.findall(r"^### `(\w+)`", DOC.read_text(), re.M)) - {"task"}  # "`task` body"
    assert described <= set(SCHEMAS), described - set(SCHEMAS)


@pytest.mark.parametrize(("msg", "says"), [
    (Message("task_failed", {"job": "j", "task": 1, "attempt": 1}), "missing field 'error'"),
    (Message("ready", {"credit": "1"}), "'credit' must be int"),
    (Message("close_job", {"job": "j", "jbo": "typo"}), "unknown field(s) 'jbo'"),
    (Message("chunk_stored", {"job": "j", "chunk": 1.5}), "'chunk' must be int"),
    (Message("blob_batch", {"job": "j", "chunk": 0, "start": 0, "stop": 1, "n_chunks": 1}),
     "missing array 'frame'"),
    (Message("segmented", {}), "unknown message type 'segmented'"),
])
def test_a_message_that_breaks_its_schema_is_neither_sent_nor_received(msg, says):
    with pytest.raises(CodecError, match=re.escape(says)):
        encode(msg)
    header = {"v": VERSION, "type": msg.type, "body": msg.body, "arrays": []}
    with pytest.raises(CodecError, match=re.escape(says) if "array" not in says else "array"):
        decode([msgpack.packb(header)])


def test_typed_messages_round_trip_and_leave_out_unset_flags():
    sent = message(TaskFailed(job="j", task=3, attempt=2, error="segmenter stopping", released=True))
    assert sent.body == {"job": "j", "task": 3, "attempt": 2, "error": "segmenter stopping", "released": True}
    got = decode([bytes(f) for f in encode(sent)])
    assert got.body == sent.body
    table = BlobTable.empty()
    batch = message(BlobBatch(job="j", chunk=0, start=0, stop=5, n_chunks=2),
                    {**table.arrays(), "crops": np.zeros((0, 8, 8), np.uint8)})
    assert set(decode(encode(batch)).arrays) == {*table.arrays(), "crops"}


def test_another_protocol_version_is_refused_naming_both_versions():
    header = {"v": VERSION - 1, "type": "heartbeat", "body": {}, "arrays": []}
    with pytest.raises(CodecError, match=f"version {VERSION - 1}.*version {VERSION}"):
        decode([msgpack.packb(header)])


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_the_gateway_drops_bad_messages_and_keeps_serving(tmp_path):
    """An (allowed) peer sends the gateway's control socket a hello of an older protocol version, a
    hello without its worker id and bytes that are no message. Asserted: each is dropped and logged
    with its reason; no worker registered from them; a job submitted afterwards succeeds."""
    (tmp_path / "data").mkdir()
    with Services(tmp_path / "data", tmp_path / "work") as services:
        services.start_gateway()
        services.start_workers(segmenters=1)
        ctx = zmq.Context()
        sock = ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        try:
            sock.connect(services.control)
            old = {"v": VERSION - 1, "type": "hello", "body": {"role": "segmenter", "worker": "old"}, "arrays": []}
            incomplete = {"v": VERSION, "type": "hello", "body": {"role": "segmenter"}, "arrays": []}
            for frames in ([msgpack.packb(old)], [msgpack.packb(incomplete)], [b"\x00 not a message"]):
                sock.send_multipart(frames)
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline and services.log_tail(100_000).count("dropped a message") < 3:
                time.sleep(0.1)
            log = services.log_tail(100_000)
            assert f"protocol version {VERSION - 1}; this service speaks version {VERSION}" in log, log[-2000:]
            assert "hello: missing field 'worker'" in log and "bad header" in log, log[-2000:]
            assert "old joined" not in log
            video = tiny_video(tmp_path / "data" / "video")
            stub = pb_grpc.JobServiceStub(services.channel())
            job = watch_until_final(stub, stub.SubmitJob(job_request(str(video)), timeout=30).job_id, timeout=60)
            assert job.state == pb.SUCCEEDED, job.error
            assert trajectories(stub, job.job_id).shape == (120, 2, 2)
        finally:
            sock.close()
            ctx.term()
