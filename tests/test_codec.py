"""The ZeroMQ message codec's framing: what goes in comes out, and malformed frames fail loudly.

These messages have made-up types, so the schema check (tests/test_messages.py) is off here."""

from __future__ import annotations

import math

import msgpack
import numpy as np
import pytest
import zmq

from shoal import codec
from shoal.codec import VERSION, CodecError, Message, pack, unpack
from shoal.identity_requests import CrossingReply, CrossingRequest, IdentityReply, IdentityRequest


def encode(msg: Message) -> list:
    return codec.encode(msg, checked=False)


def decode(frames: list) -> Message:
    return codec.decode(frames, checked=False)


def _roundtrip(msg: Message) -> Message:
    return decode([bytes(f) for f in encode(msg)])


def test_arrays_of_many_dtypes_and_shapes_survive():
    rng = np.random.default_rng(0)
    arrays = {
        "crops": rng.integers(0, 256, (5, 16, 16), dtype=np.uint8),
        "masks": rng.random((3, 7, 9)) > 0.5,
        "centroids": rng.random((4, 2)),
        "areas": np.arange(6, dtype=np.int64),
        "probs": rng.random((2, 3)).astype(np.float32),
        "empty": np.zeros((0, 16, 16), np.uint8),
        "big_endian": np.arange(4, dtype=">i4"),
        "fortran": np.asfortranarray(rng.random((3, 5))),
        "strided": np.arange(20, dtype=np.int16)[::3],
    }
    out = _roundtrip(Message("segmented", {"job": "j1", "chunk": 3, "attempt": 1}, arrays))
    assert out.type == "segmented"
    assert out["chunk"] == 3 and out.get("missing", "d") == "d"
    assert list(out.arrays) == list(arrays)
    for name, arr in arrays.items():
        got = out.arrays[name]
        assert got.dtype == arr.dtype, name
        assert got.shape == arr.shape, name
        np.testing.assert_array_equal(got, arr)


def test_zero_dimensional_array_keeps_its_shape():
    out = _roundtrip(Message("t", {}, {"scalar": np.array(3.5)}))
    assert out.arrays["scalar"].shape == ()
    assert out.arrays["scalar"] == 3.5


def test_decoded_arrays_are_read_only_views():
    out = _roundtrip(Message("t", {}, {"a": np.arange(10, dtype=np.uint8)}))
    assert not out.arrays["a"].flags.writeable
    with pytest.raises(ValueError):
        out.arrays["a"][0] = 1


def test_body_with_nested_values_and_numpy_scalars():
    body = {
        "job": "abc",
        "nested": {"list": [1, 2.5, None, "x", [True, False]], "deep": {"k": {}}},
        "inf": math.inf,
        "neg_inf": -math.inf,
        "none": None,
        "np_int": np.int64(7),
        "np_float": np.float32(0.25),
        "np_bool": np.bool_(True),
        "tuple": (1, 2),
        "bytes": b"\x00\x01",
    }
    out = _roundtrip(Message("t", body))
    b = out.body
    assert b["nested"] == body["nested"]
    assert b["inf"] == math.inf and b["neg_inf"] == -math.inf and b["none"] is None
    assert b["np_int"] == 7 and type(b["np_int"]) is int
    assert b["np_float"] == 0.25 and type(b["np_float"]) is float
    assert b["np_bool"] is True
    assert b["tuple"] == [1, 2]
    assert b["bytes"] == b"\x00\x01"


def test_nan_in_body_survives():
    assert math.isnan(_roundtrip(Message("t", {"x": math.nan}))["x"])


def test_body_with_unencodable_value_is_refused():
    with pytest.raises(TypeError):
        encode(Message("t", {"obj": object()}))


def test_object_dtype_array_is_refused_on_encode():
    with pytest.raises(CodecError, match="object dtype"):
        encode(Message("t", {}, {"bad": np.array([{"a": 1}, None], dtype=object)}))


def _header(**overrides) -> bytes:
    header = {"v": VERSION, "type": "t", "body": {}, "arrays": []}
    header.update(overrides)
    return msgpack.packb(header)


def test_header_listing_more_arrays_than_frames_is_an_error():
    frames = encode(Message("t", {}, {"a": np.arange(3), "b": np.arange(4)}))
    with pytest.raises(CodecError, match="2 arrays but 1 frames"):
        decode(frames[:2])


def test_frame_size_disagreeing_with_header_shape_is_an_error():
    header = _header(arrays=[["a", "<i8", [5]]])
    with pytest.raises(CodecError, match="'a'"):
        decode([header, np.arange(4, dtype=np.int64).tobytes()])


def test_wrong_version_is_an_error():
    with pytest.raises(CodecError, match="version"):
        decode([_header(v=VERSION + 1)])


@pytest.mark.parametrize("frames", [
    [], [b"\xc1\xff garbage"], [b""], [msgpack.packb([1, 2, 3])], [msgpack.packb({"v": 1})],
    [np.random.default_rng(0).bytes(64)],
], ids=["no-frames", "bad-msgpack", "empty-header", "header-not-a-map", "no-type", "random-bytes"])
def test_garbage_is_a_codec_error(frames):
    with pytest.raises(CodecError):
        decode(frames)


def test_crossing_request_pack_unpack():
    req = CrossingRequest(train_ids=np.arange(5, dtype=np.int64), train_labels=np.array([1, 0, 0, 1, 0], np.int8),
                          predict_ids=np.array([], dtype=np.int64), seed=11)
    msg = _roundtrip(pack("crossings", req, job="j", attempt=2))
    assert msg["job"] == "j" and msg["attempt"] == 2
    got = unpack(msg, CrossingRequest)
    assert got.seed == 11
    for name in ("train_ids", "train_labels", "predict_ids"):
        np.testing.assert_array_equal(getattr(got, name), getattr(req, name))
        assert getattr(got, name).dtype == getattr(req, name).dtype


def test_crossing_reply_pack_unpack():
    rep = CrossingReply(crossing_probability=np.array([0.1, 0.9], np.float32), trained=False, note="too few")
    got = unpack(_roundtrip(pack("crossings_reply", rep)), CrossingReply)
    np.testing.assert_array_equal(got.crossing_probability, rep.crossing_probability)
    assert got.trained is False and got.note == "too few"


def test_identity_request_and_reply_pack_unpack():
    req = IdentityRequest(
        n_animals=3, fragment_offsets=np.array([0, 2, 5], np.int64), fragment_ids=np.arange(5, dtype=np.int64),
        fragment_frames=np.array([[0, 10], [5, 20]], np.int64), global_fragments=np.zeros((0, 3), np.int64),
        method="accumulation", seed=4)
    got = unpack(_roundtrip(pack("identities", req, job="j")), IdentityRequest)
    assert (got.n_animals, got.method, got.seed) == (3, "accumulation", 4)
    assert got.global_fragments.shape == (0, 3)
    np.testing.assert_array_equal(got.fragment_frames, req.fragment_frames)
    np.testing.assert_array_equal(got.fragment_offsets, req.fragment_offsets)

    rep = IdentityReply(probabilities=np.eye(3, dtype=np.float32)[[0, 1, 2, 0, 1]], method="contrastive",
                        silhouette=0.93, ratio_accumulated=math.nan, notes=["fallback", "ok"])
    got = unpack(_roundtrip(pack("identities_reply", rep)), IdentityReply)
    np.testing.assert_array_equal(got.probabilities, rep.probabilities)
    assert got.notes == ["fallback", "ok"] and got.silhouette == pytest.approx(0.93)
    assert math.isnan(got.ratio_accumulated)


def test_unpack_ignores_extra_keys_and_keeps_defaults():
    msg = Message("x", {"crossing_probability": None, "trained": True, "job": "j"},
                  {"crossing_probability": np.ones(2, np.float32)})
    got = unpack(msg, CrossingReply)
    assert got.trained and got.note == ""


def test_arrays_decoded_from_zeromq_frames_are_read_only():
    ctx = zmq.Context()
    a, b = ctx.socket(zmq.PAIR), ctx.socket(zmq.PAIR)
    try:
        a.bind("inproc://codec-readonly")
        b.connect("inproc://codec-readonly")
        a.send_multipart(encode(Message("t", {}, {"x": np.arange(100, dtype=np.uint8)})), copy=False)
        out = decode(b.recv_multipart(copy=False))
        assert not out.arrays["x"].flags.writeable
    finally:
        a.close(linger=0)
        b.close(linger=0)
        ctx.term()


@pytest.mark.parametrize("transport", ["inproc", "tcp"])
def test_zeromq_push_pull_round_trip(transport):
    ctx = zmq.Context()
    pull, push = ctx.socket(zmq.PULL), ctx.socket(zmq.PUSH)
    try:
        if transport == "inproc":
            pull.bind("inproc://codec-test")
            push.connect("inproc://codec-test")
        else:
            port = pull.bind_to_random_port("tcp://127.0.0.1")
            push.connect(f"tcp://127.0.0.1:{port}")
        crops = np.random.default_rng(1).integers(0, 256, (50, 40, 40), dtype=np.uint8)
        msg = Message("crops", {"job": "j", "chunk": 0, "attempt": 1, "frames": [0, 1]},
                      {"crops": crops, "empty": np.zeros(0, np.float64), "mask": crops > 128})
        push.send_multipart(encode(msg), copy=False)
        assert pull.poll(5000), "nothing arrived"
        out = decode(pull.recv_multipart(copy=False))
        assert out.body == msg.body
        np.testing.assert_array_equal(out.arrays["crops"], crops)
        np.testing.assert_array_equal(out.arrays["mask"], crops > 128)
        assert out.arrays["empty"].shape == (0,)
    finally:
        push.close(linger=0)
        pull.close(linger=0)
        ctx.term()
