"""ZeroMQ plumbing shared by the services: socket options, sending and receiving codec messages,
and the worker side of the control channel to the gateway (registration, heartbeats, credit).

Socket options follow the zguide: LINGER low so shutdown never hangs, small high-water marks on
data sockets so a slow consumer pushes back on its producers instead of filling memory.
"""

from __future__ import annotations

import logging
import os
import socket
import time
import uuid
from typing import Any

import zmq
from prometheus_client import Counter

from shoal import curve
from shoal.codec import CodecError, Message, decode, encode, message
from shoal.messages import Goodbye, Heartbeat, Hello, Registered

HEARTBEAT_S = 1.0
#: heartbeats missed before a peer is declared dead
LIVENESS = 3
#: blob batches a segmenter may have queued towards an identifier before it blocks
DATA_HWM = 4

log = logging.getLogger("shoal")

REJECTED = Counter("shoal_messages_rejected_total",
                   "Messages dropped because they broke docs/messages.md (bad frames, another protocol "
                   "version, a field missing or of the wrong type)")
#: at most one log line per reason and this many seconds: a misconfigured peer may send many
_REJECT_LOG_S = 60.0
_rejects_logged: dict[str, float] = {}


def make_socket(ctx: zmq.Context, kind: int, *, hwm: int | None = None, identity: str | None = None) -> zmq.Socket:
    sock = ctx.socket(kind)
    sock.setsockopt(zmq.LINGER, 200)
    if hwm is not None:
        sock.setsockopt(zmq.SNDHWM, hwm)
        sock.setsockopt(zmq.RCVHWM, hwm)
    if identity:
        sock.setsockopt(zmq.IDENTITY, identity.encode())
    return sock


def bind_random(sock: zmq.Socket, host: str = "127.0.0.1") -> str:
    """Bind to a free port on ``host``; return the endpoint others connect to."""
    curve.as_server(sock)
    port = sock.bind_to_random_port(f"tcp://{host}")
    return f"tcp://{advertised_host(host)}:{port}"


def bind(sock: zmq.Socket, endpoint: str) -> str:
    """Bind to ``endpoint`` (port 0 = any free port) and return the endpoint others connect to."""
    host, _, port = endpoint.removeprefix("tcp://").rpartition(":")
    if port in ("0", "*"):
        return bind_random(sock, host)
    curve.as_server(sock)
    sock.bind(endpoint)
    return f"tcp://{advertised_host(host)}:{port}"


def connect(sock: zmq.Socket, endpoint: str) -> None:
    """Connect to a Shoal service's socket (as a CURVE client when keys are configured)."""
    curve.as_client(sock)
    sock.connect(endpoint)


def advertised_host(bind_host: str) -> str:
    """The host name peers should use: the bind address, or this host's name for a wildcard bind."""
    if bind_host in ("*", "0.0.0.0", ""):
        return os.environ.get("SHOAL_ADVERTISE_HOST") or socket.gethostname()
    return bind_host


def send(sock: zmq.Socket, msg: Message, *, route: bytes | None = None) -> None:
    frames = encode(msg)
    sock.send_multipart(([route] if route is not None else []) + frames, copy=False)


def recv(sock: zmq.Socket, *, routed: bool = False) -> tuple[bytes | None, Message | None]:
    """Receive one message; with ``routed`` (ROUTER sockets) also return the sender's identity.

    A message that breaks the spec is dropped and returned as ``None`` (counted, and logged once a
    minute per reason): a bad peer must not stop a service that serves other jobs."""
    frames = sock.recv_multipart(copy=False)
    route = frames[0].bytes if routed else None
    try:
        return route, decode(frames[1:] if routed else frames)
    except CodecError as exc:
        REJECTED.inc()
        now, reason = time.monotonic(), str(exc)
        if now - _rejects_logged.get(reason, -_REJECT_LOG_S) >= _REJECT_LOG_S:
            _rejects_logged[reason] = now
            log.warning("dropped a message%s: %s", f" from {route!r}" if route else "", reason)
        return route, None


def new_worker_id(role: str) -> str:
    return f"{role}-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


class ControlChannel:
    """A worker's DEALER connection to the gateway's control ROUTER.

    The worker says ``hello`` (role, endpoints it serves), then sends ``heartbeat`` at least every
    :data:`HEARTBEAT_S` and reports work with ``task_done``/``progress``/... . If the gateway stops
    answering heartbeats the channel reconnects with exponential back-off, up to 32 s.
    """

    def __init__(self, ctx: zmq.Context, gateway: str, role: str, info: dict[str, Any] | None = None):
        self.ctx, self.gateway, self.role = ctx, gateway, role
        self.worker_id = new_worker_id(role)
        self.info = info or {}
        self.sock: zmq.Socket | None = None
        self.backoff = HEARTBEAT_S
        self._connect()

    def _connect(self) -> None:
        if self.sock is not None:
            self.sock.close(linger=0)
        self.sock = make_socket(self.ctx, zmq.DEALER, identity=self.worker_id)
        connect(self.sock, self.gateway)
        self.last_sent = 0.0
        self.last_heard = time.monotonic()
        self.send(message(Hello(role=self.role, worker=self.worker_id, **self.info)))

    def send(self, msg: Message) -> None:
        send(self.sock, msg)
        self.last_sent = time.monotonic()

    def tick(self) -> None:
        """Heartbeat if due; reconnect if the gateway has been silent too long. Call often."""
        now = time.monotonic()
        if now - self.last_sent >= HEARTBEAT_S:
            self.send(message(Heartbeat()))
        if now - self.last_heard > HEARTBEAT_S * LIVENESS + self.backoff:
            log.warning("gateway %s silent for %.0f s; reconnecting", self.gateway, now - self.last_heard)
            self.backoff = min(self.backoff * 2, 32.0)
            self._connect()

    def poll(self, timeout_ms: int) -> Message | None:
        """Wait up to ``timeout_ms`` for a message from the gateway (heartbeats are consumed here)."""
        if self.sock.poll(timeout_ms, zmq.POLLIN):
            _, msg = recv(self.sock)
            self.last_heard = time.monotonic()
            self.backoff = HEARTBEAT_S
            if msg is not None and msg.type == "reregister":  # the gateway forgot us (restarted, or thought us dead)
                self._connect()
                return message(Registered())
            if msg is not None and msg.type != "heartbeat":
                return msg
        self.tick()
        return None

    def close(self) -> None:
        if self.sock is not None:
            try:
                self.send(message(Goodbye()))
            except zmq.ZMQError:
                pass
            self.sock.close(linger=200)
            self.sock = None
