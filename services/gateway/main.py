"""``shoal-gateway``: gRPC JobService + health + reflection, the job store and the scheduler.

On SIGTERM the gateway drains: health reports NOT_SERVING for ``drain_seconds`` while calls are
still answered (so load balancers and Kubernetes stop routing to it), then it stops accepting calls,
gives those in flight a short grace, and exits. Jobs live in the store, so a restart loses none.
"""

from __future__ import annotations

import fcntl
import ipaddress
import os
import signal
import sys
import threading
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from prometheus_client import start_http_server

from shoal import curve
from shoal.config import parse_config, setup_logging
from shoal.v1 import jobs_pb2, jobs_pb2_grpc

from . import metrics
from .auth import ConfigError, TokenAuth, read_token, server_credentials
from .jobstore import JobStore
from .review import start_review
from .scheduler import Scheduler
from .server import JobService

SERVICE_NAME = "shoal.v1.JobService"
#: in the work folder: held (flock) by the one gateway using it; says its pid and gRPC address
LOCK_FILE = "gateway.lock"
#: seconds in-flight calls get to finish once the drain is over
STOP_GRACE_S = 2.0


@dataclass
class GatewayConfig:
    data_root: str = field(default="/data", metadata={"help": "videos are read and sessions written only under this"})
    work_dir: str = field(default="", metadata={"help": "job store and job files (default DATA_ROOT/.shoal)"})
    grpc_address: str = field(default="0.0.0.0:50051", metadata={"help": "gRPC listen address (port 0 = any)"})
    control: str = field(default="tcp://0.0.0.0:5555", metadata={"help": "ZeroMQ control endpoint workers connect to"})
    metrics_port: int = field(default=9100, metadata={"help": "Prometheus /metrics port (0 = any free, -1 = off)"})
    curve_keys: str = field(default="", metadata={"help": curve.KEYS_HELP})
    tls_cert: str = field(default="", metadata={"help": "PEM certificate (chain) for TLS on the gRPC port, with "
                                                        "--tls-key; empty = plaintext"})
    tls_key: str = field(default="", metadata={"help": "PEM private key of --tls-cert"})
    tls_client_ca: str = field(default="", metadata={"help": "PEM CA file: with it, clients must present a "
                                                             "certificate signed by this CA (mutual TLS; needs "
                                                             "--tls-cert); empty = any client may connect"})
    auth_token: str = field(default="", metadata={"help": "bearer token every call except health checks must carry "
                                                          "(empty = no token); prefer the environment variable or "
                                                          "--auth-token-file, since ps shows flags", "secret": True})
    auth_token_file: str = field(default="", metadata={"help": "file whose first line is the bearer token "
                                                               "(e.g. a mounted secret)"})
    max_upload_mb: float = field(default=256.0, metadata={"help": "largest SubmitUpload in MiB, all its files "
                                                                  "together (0 = uploads off)"})
    drain_seconds: float = field(default=1.0, metadata={"help": "after SIGTERM, health reports NOT_SERVING for "
                                                                "this long while calls are still served"})
    grpc_threads: int = field(default=64, metadata={"help": "threads serving calls; WatchJob streams may hold at "
                                                            "most three quarters of them"})
    http_port: int = field(default=-1, metadata={
        "help": "port of the review page (shoal review's web app) for succeeded jobs, on the gRPC address's host; "
                "same bearer token (0 = any free, -1 = off)"})
    repin_grace_s: float = field(default=60.0, metadata={
        "help": "how long a running job whose identifier or assembler was lost waits for a replacement to "
                "register (it then continues from the chunks on the data volume) before restarting from the "
                "probe; 0 = restart at once"})


def main(argv: list[str] | None = None) -> int:
    cfg = parse_config(GatewayConfig, argv, "Shoal gateway: gRPC job API and scheduler")
    log = setup_logging("gateway")
    curve.enable_or_exit(cfg.curve_keys, "gateway")
    data_root = Path(cfg.data_root)
    if not data_root.is_dir():
        return _fail(f"data root {data_root} is not a directory")
    if cfg.max_upload_mb < 0 or cfg.drain_seconds < 0 or cfg.grpc_threads < 2:
        return _fail("max_upload_mb and drain_seconds must be >= 0 and grpc_threads >= 2")
    try:
        token = read_token(cfg.auth_token, cfg.auth_token_file)
        credentials = server_credentials(cfg.tls_cert, cfg.tls_key, cfg.tls_client_ca)
    except ConfigError as exc:
        return _fail(str(exc))
    work_dir = Path(cfg.work_dir) if cfg.work_dir else data_root / ".shoal"
    work_dir.mkdir(parents=True, exist_ok=True)
    lock = open(work_dir / LOCK_FILE, "a+")  # noqa: SIM115 - held for the life of the process; "a+": a refused
    try:                                     # second gateway must not erase who holds it
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        lock.seek(0)
        return _fail(_refusal(lock.read(), work_dir))
    _record_holder(lock, "")
    store = JobStore(work_dir / "jobs.sqlite")
    scheduler = Scheduler(store, cfg.control, work_dir, repin_grace_s=cfg.repin_grace_s)
    scheduler.start()
    metrics.watch(scheduler, store)

    threads = cfg.grpc_threads
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=threads, thread_name_prefix="grpc"),
                         interceptors=[TokenAuth(token)] if token else None,
                         options=[("grpc.so_reuseport", 0)])  # a second gateway on the same port fails to start
    service = JobService(store, scheduler, data_root, max_upload_bytes=int(cfg.max_upload_mb * 2**20),
                         max_watchers=max(1, threads * 3 // 4))
    jobs_pb2_grpc.add_JobServiceServicer_to_server(service, server)
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    names = (jobs_pb2.DESCRIPTOR.services_by_name["JobService"].full_name,
             health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME)
    reflection.enable_server_reflection(names, server)
    try:
        port = (server.add_secure_port(cfg.grpc_address, credentials) if credentials
                else server.add_insecure_port(cfg.grpc_address))
    except RuntimeError:
        port = 0
    if port == 0:
        return _fail(f"cannot listen on {cfg.grpc_address}: the port is in use, or the address is not one of "
                     "this machine's")
    host = cfg.grpc_address.rpartition(":")[0]
    _record_holder(lock, f"{host}:{port}")
    if token and credentials is None and not _loopback(host):
        log.warning("a bearer token without TLS crosses the network in clear text; set --tls-cert and --tls-key")
    server.start()
    for name in ("", SERVICE_NAME):
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    metrics_port = _start_metrics(cfg.metrics_port)
    review_port, stop_review = -1, None
    if cfg.http_port >= 0:
        try:
            review_port, stop_review = start_review(store, data_root, host.strip("[]"), cfg.http_port, token or None)
        except OSError as exc:
            server.stop(grace=0)
            scheduler.stop()
            return _fail(f"cannot serve the review page on {host}:{cfg.http_port}: {exc.strerror or exc}")
    tls = "mutual" if cfg.tls_client_ca else "on" if credentials else "off"
    print(f"READY grpc={host}:{port} control={scheduler.endpoint} metrics={metrics_port} "
          f"tls={tls} auth={'token' if token else 'off'} review={review_port}", flush=True)
    log.info("serving gRPC on %s:%d (TLS %s, token %s), control %s, metrics :%s, review page :%s", host, port,
             tls, "on" if token else "off", scheduler.endpoint, metrics_port, review_port)

    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    stop.clear()  # a second signal ends the drain early
    log.info("draining: health NOT_SERVING for %.1f s, then stopping", cfg.drain_seconds)
    health_servicer.enter_graceful_shutdown()
    stop.wait(cfg.drain_seconds)
    server.stop(grace=STOP_GRACE_S).wait()
    if stop_review:
        stop_review()
    scheduler.stop()
    scheduler.join(timeout=5)
    store.close()
    return 0


def _record_holder(lock, address: str) -> None:
    """Say in the lock file who holds it, for the message of a gateway refused the same work folder."""
    lock.seek(0)
    lock.truncate()
    lock.write(f"pid={os.getpid()} grpc={address}\n")
    lock.flush()


def _refusal(holder: str, work_dir: Path) -> str:
    """Why this gateway cannot use ``work_dir``, naming the one that does (from its lock file line)."""
    fields = dict(part.split("=", 1) for part in holder.split() if "=" in part)
    who = ", ".join([*([f"pid {fields['pid']}"] if fields.get("pid") else []),
                     *([f"gRPC on {fields['grpc']}"] if fields.get("grpc") else [])]) or "starting"
    use = f" with --gateway {fields['grpc']}" if fields.get("grpc") else ""
    return (f"another gateway ({who}) is using the work folder {work_dir}: two would run the same jobs twice; "
            f"stop it, or send jobs to it{use}")


def _fail(message: str) -> int:
    print(f"shoal-gateway: {message}", file=sys.stderr)
    return 2


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return host == "localhost"


def _start_metrics(port: int) -> int:
    if port < 0:
        return -1
    server, _ = start_http_server(port)
    return server.server_port


if __name__ == "__main__":
    sys.exit(main())
