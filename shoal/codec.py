"""The one place that encodes and decodes every ZeroMQ message (spec: docs/messages.md).

A message is a multipart ZeroMQ message: frame 0 is a msgpack header, frames 1.. are the raw
bytes of numpy arrays (C order) listed in the header. Pixel payloads therefore never pass through
msgpack, and on receipt arrays are views on the ZeroMQ frames (no copy).

Header: ``{"v": 1, "type": str, "body": {...}, "arrays": [[name, dtype, shape], ...]}``.
The body of job-related messages carries ``job``, and of chunk-related ones ``chunk`` and
``attempt``, so receivers can drop duplicates.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, TypeVar

import msgpack
import numpy as np

VERSION = 1

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


def encode(msg: Message) -> list[bytes | memoryview]:
    """Message -> frames ready for ``socket.send_multipart(frames, copy=False)``."""
    specs, buffers = [], []
    for name, arr in msg.arrays.items():
        arr = np.ascontiguousarray(arr).reshape(np.shape(arr))
        if arr.dtype.hasobject:
            raise CodecError(f"array {name!r} has object dtype; only plain numeric arrays travel")
        specs.append([name, arr.dtype.str, list(arr.shape)])
        buffers.append(memoryview(arr).cast("B") if arr.size else b"")
    header = {"v": VERSION, "type": msg.type, "body": msg.body, "arrays": specs}
    return [msgpack.packb(header, use_bin_type=True, default=_default), *buffers]


def decode(frames: list[Any]) -> Message:
    """Frames (bytes or zmq.Frame) -> Message; arrays are read-only views on the frames."""
    if not frames:
        raise CodecError("empty message")
    try:
        header = msgpack.unpackb(_bytes(frames[0]), raw=False, strict_map_key=False)
        mtype, body, specs = header["type"], header.get("body", {}), header.get("arrays", [])
    except Exception as exc:  # msgpack raises several unrelated types
        raise CodecError(f"bad header: {exc}") from None
    if header.get("v") != VERSION:
        raise CodecError(f"unsupported message version {header.get('v')!r}")
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
    return Message(mtype, body, arrays)


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
