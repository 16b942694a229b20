"""The one place that encodes and decodes every ZeroMQ message (spec: docs/messages.md).

A message is a multipart ZeroMQ message: frame 0 is a msgpack header, frames 1.. are the raw
bytes of numpy arrays (C order) listed in the header. Pixel payloads therefore never pass through
msgpack, and on receipt arrays are views on the ZeroMQ frames (no copy).

Header: ``{"v": VERSION, "type": str, "body": {...}, "arrays": [[name, dtype, shape], ...]}``.
Every message is checked against its type's schema (:mod:`shoal.messages`) when it is encoded and
when it is decoded: a sender cannot send, and a receiver never sees, a body that the schema does
not allow.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, TypeVar

import msgpack
import numpy as np

from shoal.messages import SCHEMAS, VERSION

T = TypeVar("T")


class CodecError(ValueError):
    """A message that does not follow docs/messages.md."""


@dataclass
class Message:
    type: str
    body: dict[str, Any] = field(default_factory=dict)
    arrays: dict[str, np.ndarray] = field(default_factory=dict)

    def __getitem__(self, key: str) -> Any:
        return self.body[key]

    def get(self, key: str, default: Any = None) -> Any:
        return self.body.get(key, default)


def check(msg: Message) -> None:
    """Raise :class:`CodecError` unless ``msg`` has its type's fields, of their types, and no others."""
    schema = SCHEMAS.get(msg.type)
    if schema is None:
        raise CodecError(f"unknown message type {msg.type!r}")
    for name, (kinds, required) in schema.body.items():
        if name not in msg.body:
            if required:
                raise CodecError(f"{msg.type}: missing field {name!r}")
        elif not isinstance(msg.body[name], kinds):
            expected = " or ".join(k.__name__ for k in kinds)
            raise CodecError(f"{msg.type}: field {name!r} must be {expected}, not {type(msg.body[name]).__name__}")
    for name, required in schema.arrays.items():
        if required and name not in msg.arrays:
            raise CodecError(f"{msg.type}: missing array {name!r}")
    unknown = sorted(set(msg.body) - set(schema.body)) + sorted(set(msg.arrays) - set(schema.arrays))
    if unknown:
        raise CodecError(f"{msg.type}: unknown field(s) {', '.join(map(repr, unknown))}")


def message(obj: Any, arrays: dict[str, np.ndarray] | None = None) -> Message:
    """A :mod:`shoal.messages` object -> its Message, checked; ``arrays`` adds array frames (a blob
    table's columns). Optional fields left at a ``None`` or ``False`` default are not sent."""
    msg = pack(obj.TYPE, obj)
    for f in dataclasses.fields(obj):
        if f.default in (None, False) and msg.body.get(f.name, 0) is f.default:
            del msg.body[f.name]
    msg.arrays.update(arrays or {})
    check(msg)
    return msg


def encode(msg: Message, *, checked: bool = True) -> list[bytes | memoryview]:
    """Message -> frames ready for ``socket.send_multipart(frames, copy=False)``. ``checked=False``
    skips the schema (the codec's own tests of the framing)."""
    if checked:
        check(msg)
    specs, buffers = [], []
    for name, arr in msg.arrays.items():
        arr = np.ascontiguousarray(arr).reshape(np.shape(arr))
        if arr.dtype.hasobject:
            raise CodecError(f"array {name!r} has object dtype; only plain numeric arrays travel")
        specs.append([name, arr.dtype.str, list(arr.shape)])
        buffers.append(memoryview(arr).cast("B") if arr.size else b"")
    header = {"v": VERSION, "type": msg.type, "body": msg.body, "arrays": specs}
    return [msgpack.packb(header, use_bin_type=True, default=_default), *buffers]


def decode(frames: list[Any], *, checked: bool = True) -> Message:
    """Frames (bytes or zmq.Frame) -> Message; arrays are read-only views on the frames."""
    if not frames:
        raise CodecError("empty message")
    try:
        header = msgpack.unpackb(_bytes(frames[0]), raw=False, strict_map_key=False)
        mtype, body, specs = header["type"], header.get("body", {}), header.get("arrays", [])
    except Exception as exc:  # msgpack raises several unrelated types
        raise CodecError(f"bad header: {exc}") from None
    if header.get("v") != VERSION:
        raise CodecError(f"{mtype!r} message of protocol version {header.get('v')!r}; this service speaks "
                         f"version {VERSION}: run the same Shoal release on every service")
    if len(specs) != len(frames) - 1:
        raise CodecError(f"{mtype}: header lists {len(specs)} arrays but {len(frames) - 1} frames follow")
    arrays = {}
    for (name, dtype, shape), frame in zip(specs, frames[1:], strict=True):
        buf = frame.buffer if hasattr(frame, "buffer") else frame
        arr = np.frombuffer(buf, dtype=np.dtype(dtype))
        if arr.size != int(np.prod(shape)):
            raise CodecError(f"{mtype}: array {name!r} has {arr.size} items, header says shape {shape}")
        arr = arr.reshape(shape)
        arr.flags.writeable = False
        arrays[name] = arr
    msg = Message(mtype, body, arrays)
    if checked:
        check(msg)
    return msg


def pack(mtype: str, obj: Any, **extra: Any) -> Message:
    """A dataclass -> Message: array fields travel as frames, the rest in the body."""
    body, arrays = dict(extra), {}
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if isinstance(value, np.ndarray):
            arrays[f.name] = value
        else:
            body[f.name] = value
    return Message(mtype, body, arrays)


def unpack(msg: Message, cls: type[T]) -> T:
    """Inverse of :func:`pack`; extra body keys are ignored."""
    kwargs = {}
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        if f.name in msg.arrays:
            kwargs[f.name] = msg.arrays[f.name]
        elif f.name in msg.body:
            kwargs[f.name] = msg.body[f.name]
    return cls(**kwargs)


def _bytes(frame: Any) -> bytes:
    return frame.bytes if hasattr(frame, "bytes") else bytes(frame)


def _default(obj: Any) -> Any:
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return float(obj)
    if isinstance(obj, np.bool_):
        return bool(obj)
    if isinstance(obj, tuple):
        return list(obj)
    raise TypeError(f"cannot encode {type(obj).__name__} in a message header")
