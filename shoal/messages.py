"""Every ZeroMQ message type, its fields and their types: the schema of docs/messages.md.

One class per message type, registered by its wire name in :data:`SCHEMAS`. Senders build the
class and hand it to :func:`shoal.codec.message`; the codec checks every message it encodes or
decodes against its schema, so a receiver only ever reads bodies with the fields and types listed
here (a missing field, a wrong type or an unknown field is a :class:`shoal.codec.CodecError`).
Array fields (``np.ndarray``) travel as raw frames, the rest in the msgpack body. A field with a
default may be left out; the codec leaves out ``None`` and ``False`` flags when it packs.

:data:`VERSION` is in every header. Change it whenever a change here would make an old peer
misread a message (a renamed, retyped or newly required field, a new meaning); a peer speaking
another version is refused with an error naming both versions. ``tests/test_messages.py`` checks
these classes against the tables of docs/messages.md.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from shoal.blobs import BlobTable
from shoal.identity_requests import CrossingReply, CrossingRequest, IdentityReply, IdentityRequest

#: the message protocol version (2: `request_progress` apart from the control `progress`, and
#: `geometry_wanted`)
VERSION = 3

# -- control channel: gateway ROUTER <-> worker DEALER ------------------------------------------


@dataclass
class Hello:
    """A worker registers with the endpoints it binds (identifier: batches, requests; assembler: geometry)."""

    TYPE: ClassVar[str] = "hello"
    role: str
    worker: str
    batches: str | None = None
    requests: str | None = None
    geometry: str | None = None


@dataclass
class Heartbeat:
    TYPE: ClassVar[str] = "heartbeat"


@dataclass
class Goodbye:
    TYPE: ClassVar[str] = "goodbye"


@dataclass
class Reregister:
    TYPE: ClassVar[str] = "reregister"


@dataclass
class Registered:
    TYPE: ClassVar[str] = "registered"


@dataclass
class Ready:
    """A segmenter's credit: how many tasks it may be given now (it sets, not adds)."""

    TYPE: ClassVar[str] = "ready"
    credit: int = 1


@dataclass
class Task:
    """A probe (``task`` = -1: ``job_dir``) or the segmentation of chunk ``task`` (``start``..``stop``)."""

    TYPE: ClassVar[str] = "task"
    job: str
    task: int
    attempt: int
    kind: str
    params: dict
    video: dict
    job_dir: str | None = None
    start: int | None = None
    stop: int | None = None
    n_chunks: int | None = None
    probe: dict | None = None
    identifier: str | None = None


@dataclass
class TaskDone:
    TYPE: ClassVar[str] = "task_done"
    job: str
    task: int
    attempt: int
    result: dict


@dataclass
class TaskFailed:
    """``fatal``: no retry can help (bad input); ``released``: given back untouched."""

    TYPE: ClassVar[str] = "task_failed"
    job: str
    task: int
    attempt: int
    error: str
    fatal: bool = False
    released: bool = False


@dataclass
class CancelTask:
    TYPE: ClassVar[str] = "cancel_task"
    job: str
    task: int
    attempt: int


@dataclass
class Assemble:
    TYPE: ClassVar[str] = "assemble"
    job: str
    params: dict
    plan: dict
    output_dir: str
    identifier: str
    started_unix: float


@dataclass
class Resume:
    TYPE: ClassVar[str] = "resume"
    job: str
    n_chunks: int
    assembler: str
    discard: bool = False


@dataclass
class ResumeAck:
    TYPE: ClassVar[str] = "resume_ack"
    job: str
    chunks: list


@dataclass
class ChunkStored:
    TYPE: ClassVar[str] = "chunk_stored"
    job: str
    chunk: int


@dataclass
class CloseJob:
    TYPE: ClassVar[str] = "close_job"
    job: str


@dataclass
class JobProgress:
    """The assembler's progress in a gateway stage: ``done`` of ``total`` (it sends percent)."""

    TYPE: ClassVar[str] = "progress"
    job: str
    stage: str
    done: float = 0
    total: float = 0
    figures: dict = field(default_factory=dict)


@dataclass
class JobDone:
    TYPE: ClassVar[str] = "job_done"
    job: str
    figures: dict
    warnings: list


@dataclass
class JobFailed:
    TYPE: ClassVar[str] = "job_failed"
    job: str
    error: str


# -- data path: segmenter PUSH -> identifier PULL -> assembler PULL -----------------------------


@dataclass
class ChunkGeometry:
    """One chunk's blob table (the :class:`BlobTable` columns, ``region`` optional)."""

    TYPE: ClassVar[str] = "chunk_geometry"
    ARRAYS: ClassVar[tuple[str, ...]] = tuple(f.name for f in dataclasses.fields(BlobTable))
    job: str
    chunk: int
    start: int
    stop: int
    n_chunks: int


@dataclass
class BlobBatch(ChunkGeometry):
    """A chunk's blob table and its identification images (``crops``, uint8 [n, side, side])."""

    TYPE: ClassVar[str] = "blob_batch"
    ARRAYS: ClassVar[tuple[str, ...]] = (*ChunkGeometry.ARRAYS, "crops")


# -- requests: assembler DEALER <-> identifier ROUTER -------------------------------------------


@dataclass
class GeometryWanted:
    """The chunks a waiting job still lacks; the identifier sends again those it holds. No reply."""

    TYPE: ClassVar[str] = "geometry_wanted"
    job: str
    chunks: list


@dataclass
class RequestProgress:
    """The identifier's progress on a request, sent before its reply."""

    TYPE: ClassVar[str] = "request_progress"
    job: str
    stage: str
    fraction: float
    figures: dict = field(default_factory=dict)


@dataclass
class Error:
    """A request failed (instead of its reply)."""

    TYPE: ClassVar[str] = "error"
    job: str
    error: str


# -- the schema table ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Schema:
    """What a message of one type may carry: body fields -> (accepted types, required), array names
    -> required."""

    type: str
    cls: type
    body: dict[str, tuple[tuple[type, ...], bool]]
    arrays: dict[str, bool]


#: what each annotated type accepts: numpy scalars too (the codec writes them as plain numbers),
#: and an int where a float is asked for
_NUMERIC = {int: (int, np.integer), float: (int, float, np.integer, np.floating), bool: (bool, np.bool_)}


def _accepted(annotation: Any) -> tuple[type, ...]:
    """``int`` -> (int, np.integer), ``str | None`` -> (str, NoneType), ``list[int]`` -> (list,)."""
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        return tuple(t for arg in typing.get_args(annotation) for t in _accepted(arg))
    base = typing.get_origin(annotation) or annotation
    return _NUMERIC.get(base, (base,))


def _schema(type_name: str, cls: type, **extra: type) -> Schema:
    """The schema of ``cls``; ``extra`` are required body fields the sender adds (requests carry
    ``job`` and ``n_chunks`` besides the request's own fields)."""
    hints = typing.get_type_hints(cls)
    body: dict[str, tuple[tuple[type, ...], bool]] = {}
    arrays: dict[str, bool] = {name: name != "region" for name in getattr(cls, "ARRAYS", ())}
    for f in dataclasses.fields(cls):
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        if hints[f.name] is np.ndarray:
            arrays[f.name] = required
        else:
            body[f.name] = (_accepted(hints[f.name]), required)
    body.update({name: ((kind,), True) for name, kind in extra.items()})
    return Schema(type_name, cls, body, arrays)


_CLASSES = (Hello, Heartbeat, Goodbye, Reregister, Registered, Ready, Task, TaskDone, TaskFailed, CancelTask,
            Assemble, Resume, ResumeAck, ChunkStored, CloseJob, JobProgress, JobDone, JobFailed, BlobBatch,
            ChunkGeometry, GeometryWanted, RequestProgress, Error)

#: every message type by its wire name
SCHEMAS: dict[str, Schema] = {cls.TYPE: _schema(cls.TYPE, cls) for cls in _CLASSES} | {
    "classify_crossings": _schema("classify_crossings", CrossingRequest, job=str, n_chunks=int),
    "learn_identities": _schema("learn_identities", IdentityRequest, job=str, n_chunks=int),
    "crossing_result": _schema("crossing_result", CrossingReply, job=str),
    "identity_result": _schema("identity_result", IdentityReply, job=str),
}
