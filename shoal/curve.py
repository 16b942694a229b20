"""CURVE on Shoal's ZeroMQ sockets: only the deployment's own processes may talk to the services.

Without it, any process that reaches a ZeroMQ port could register as a segmenter, take blob batches
or send forged results. With a key folder (``--curve-keys DIR``, ``SHOAL_CURVE_KEYS``), every socket
a service binds is a CURVE server holding the deployment's server key pair, every socket it connects
is a CURVE client that pins the servers' public key and presents a client key pair, and a ZAP handler
(ZeroMQ RFC 27) admits only the client public keys found in ``DIR/allowed/``. Traffic is encrypted
as a side effect. A refused peer never reaches a service's code, so running jobs are untouched; it is
logged once per address and counted in ``shoal_zmq_refused_connections_total``.

The key folder (``shoal keys DIR`` writes one; ZeroMQ certificate files, as ``zmq.auth`` reads them)::

    server.key_secret   the servers' key pair: gateway, identifier and assembler bind with it
    client.key_secret   the client key pair the deployment's processes connect with
    allowed/*.key       the client public keys the servers accept (client.key at first; add others,
                        e.g. one per team, and remove one to lock it out)

Local mode (``shoal track``, ``shoal serve``) makes a fresh key folder in its work folder for every run.
"""

from __future__ import annotations

import logging
import shutil
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import zmq
import zmq.auth
from prometheus_client import Counter
from zmq.utils import z85
from zmq.utils.monitor import recv_monitor_message

log = logging.getLogger("shoal")

ZAP_ENDPOINT = "inproc://zeromq.zap.01"  # fixed by RFC 27: libzmq asks here
REFUSED = Counter("shoal_zmq_refused_connections_total",
                  "ZeroMQ handshakes refused by CURVE: a peer without CURVE, or without an allowed client key",
                  ["reason"])


class CurveError(Exception):
    """The key folder cannot be used; the message names the file."""


@dataclass(frozen=True)
class CurveKeys:
    server_public: bytes
    server_secret: bytes
    client_public: bytes
    client_secret: bytes
    allowed: frozenset[bytes]  # z85 client public keys

    @classmethod
    def load(cls, folder: str | Path) -> CurveKeys:
        folder = Path(folder)
        pairs = {}
        for name in ("server", "client"):
            path = folder / f"{name}.key_secret"
            try:
                public, secret = zmq.auth.load_certificate(path)
            except (OSError, ValueError) as exc:
                raise CurveError(f"cannot read the CURVE key pair {path}: {exc} (shoal keys DIR writes a key "
                                 "folder)") from None
            if not secret:
                raise CurveError(f"{path} holds no secret key")
            pairs[name] = (public, secret)
        allowed_dir = folder / "allowed"
        try:
            allowed = frozenset(zmq.auth.load_certificate(path)[0] for path in sorted(allowed_dir.glob("*.key")))
        except (OSError, ValueError) as exc:
            raise CurveError(f"cannot read the allowed client keys in {allowed_dir}: {exc}") from None
        if not allowed:
            raise CurveError(f"no allowed client key (*.key) in {allowed_dir}: no process could connect")
        return cls(*pairs["server"], *pairs["client"], allowed)


def generate(folder: str | Path) -> Path:
    """Write a new key folder (fails if `folder` already holds keys: replacing them locks everyone out)."""
    folder = Path(folder)
    if (folder / "server.key_secret").exists():
        raise CurveError(f"{folder} already holds CURVE keys; choose another folder")
    (folder / "allowed").mkdir(parents=True, exist_ok=True)
    for name in ("server", "client"):
        zmq.auth.create_certificates(str(folder), name)
    shutil.copy(folder / "client.key", folder / "allowed" / "client.key")
    for secret in folder.glob("*.key_secret"):
        secret.chmod(0o600)
    return folder


class _ZapHandler(threading.Thread):
    """Answers libzmq's authentication requests (RFC 27) for every CURVE server socket of the context."""

    def __init__(self, ctx: zmq.Context, allowed: frozenset[bytes]):
        super().__init__(name="zap", daemon=True)
        self.allowed = allowed
        self.sock = ctx.socket(zmq.REP)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.bind(ZAP_ENDPOINT)
        self._logged: set[str] = set()

    def run(self) -> None:
        try:
            while True:
                version, request_id, _domain, address, _identity, mechanism, *credentials = self.sock.recv_multipart()
                ok = mechanism == b"CURVE" and bool(credentials) and z85.encode(credentials[0]) in self.allowed
                peer = address.decode(errors="replace")
                if not ok and peer not in self._logged:  # once per address: a refused peer retries for ever
                    self._logged.add(peer)
                    log.warning("refused a ZeroMQ connection from %s: its CURVE client key is not allowed", peer)
                self.sock.send_multipart([version, request_id, b"200" if ok else b"400",
                                          b"OK" if ok else b"client key not allowed", b"", b""])
        except zmq.ContextTerminated:
            self.sock.close()


class _Refusals(threading.Thread):
    """Counts failed handshakes on the server sockets, from their monitor events.

    A peer without CURVE fails before any ZAP request (the mechanisms differ), so only the socket's
    monitor sees it, and ZeroMQ tells the endpoint it reached, not where it came from.
    """

    EVENTS = zmq.EVENT_HANDSHAKE_FAILED_AUTH | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL

    def __init__(self, ctx: zmq.Context):
        super().__init__(name="curve-refusals", daemon=True)
        self.ctx, self.pending, self._lock = ctx, [], threading.Lock()
        self._logged: set[bytes] = set()

    def watch(self, sock: zmq.Socket) -> None:
        address = f"inproc://shoal-curve-monitor-{id(sock)}"
        sock.monitor(address, self.EVENTS)
        with self._lock:
            self.pending.append(address)
            if not self.is_alive():  # a process that binds nothing (a segmenter) needs no watcher
                self.start()

    def run(self) -> None:
        poller, monitors = zmq.Poller(), []
        try:
            while True:
                with self._lock:
                    new, self.pending = self.pending, []
                for address in new:
                    monitor = self.ctx.socket(zmq.PAIR)
                    monitor.setsockopt(zmq.LINGER, 0)
                    monitor.connect(address)
                    poller.register(monitor, zmq.POLLIN)
                    monitors.append(monitor)
                if not monitors:  # an empty poller returns at once: it would spin
                    time.sleep(0.2)
                    continue
                for monitor, _ in poller.poll(200):
                    event = recv_monitor_message(monitor)
                    if event["event"] == zmq.EVENT_MONITOR_STOPPED:
                        poller.unregister(monitor)
                        monitors.remove(monitor)
                        monitor.close()
                        continue
                    without_curve = event["event"] == zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
                    REFUSED.labels("no CURVE" if without_curve else "key not allowed").inc()
                    if without_curve and event["endpoint"] not in self._logged:
                        self._logged.add(event["endpoint"])
                        log.warning("refused a ZeroMQ connection without CURVE on %s",
                                    event["endpoint"].decode(errors="replace"))
        except zmq.ContextTerminated:
            for monitor in monitors:
                monitor.close()


_keys: CurveKeys | None = None
_refusals: _Refusals | None = None
_lock = threading.Lock()


def enable(folder: str | Path | None, ctx: zmq.Context | None = None) -> CurveKeys | None:
    """Use CURVE on every socket this process binds or connects from now on (None or "": plaintext).

    Call once at start-up, before any socket exists; CurveError if the folder is unusable.
    """
    global _keys, _refusals
    if not folder:
        return None
    keys = CurveKeys.load(folder)
    ctx = ctx or zmq.Context.instance()
    with _lock:
        if _keys is None:
            _ZapHandler(ctx, keys.allowed).start()
            _refusals = _Refusals(ctx)
        _keys = keys
    return keys


def as_server(sock: zmq.Socket) -> None:
    """Before ``bind``: a CURVE server that admits allowed clients only (no-op without keys)."""
    if _keys is not None:
        sock.curve_secretkey, sock.curve_publickey = _keys.server_secret, _keys.server_public
        sock.curve_server = True
        sock.zap_domain = b"shoal"
        _refusals.watch(sock)


def as_client(sock: zmq.Socket) -> None:
    """Before ``connect``: a CURVE client pinning the servers' key (no-op without keys)."""
    if _keys is not None:
        sock.curve_secretkey, sock.curve_publickey = _keys.client_secret, _keys.client_public
        sock.curve_serverkey = _keys.server_public


KEYS_HELP = ("CURVE key folder (shoal keys DIR writes one): every ZeroMQ socket encrypted, only allowed client "
             "keys admitted; empty = plaintext, for a trusted network only")


def enable_or_exit(folder: str | Path | None, service: str) -> None:
    """:func:`enable` at a service's start-up: an unusable key folder ends the process with one line, exit 2."""
    try:
        enable(folder)
    except CurveError as exc:
        print(f"shoal-{service}: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
