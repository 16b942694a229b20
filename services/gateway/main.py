"""``shoal-gateway``: gRPC JobService + health + reflection, the job store and the scheduler."""

from __future__ import annotations

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

from shoal.config import parse_config, setup_logging
from shoal.v1 import jobs_pb2, jobs_pb2_grpc

from .jobstore import JobStore
from .scheduler import Scheduler
from .server import JobService

SERVICE_NAME = "shoal.v1.JobService"


@dataclass
class GatewayConfig:
    data_root: str = field(default="/data", metadata={"help": "videos are read and sessions written only under this"})
    work_dir: str = field(default="", metadata={"help": "job store and job files (default DATA_ROOT/.shoal)"})
    grpc_address: str = field(default="0.0.0.0:50051", metadata={"help": "gRPC listen address (port 0 = any)"})
    control: str = field(default="tcp://0.0.0.0:5555", metadata={"help": "ZeroMQ control endpoint workers connect to"})
    metrics_port: int = field(default=9100, metadata={"help": "Prometheus /metrics port (0 = any free, -1 = off)"})


def main(argv: list[str] | None = None) -> int:
    cfg = parse_config(GatewayConfig, argv, "Shoal gateway: gRPC job API and scheduler")
    log = setup_logging("gateway")
    data_root = Path(cfg.data_root)
    if not data_root.is_dir():
        print(f"shoal-gateway: data root {data_root} is not a directory", file=sys.stderr)
        return 2
    work_dir = Path(cfg.work_dir) if cfg.work_dir else data_root / ".shoal"
    store = JobStore(work_dir / "jobs.sqlite")
    scheduler = Scheduler(store, cfg.control, work_dir)
    scheduler.start()

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=32))
    jobs_pb2_grpc.add_JobServiceServicer_to_server(JobService(store, scheduler, data_root), server)
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    names = (jobs_pb2.DESCRIPTOR.services_by_name["JobService"].full_name,
             health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME)
    reflection.enable_server_reflection(names, server)
    port = server.add_insecure_port(cfg.grpc_address)
    if port == 0:
        print(f"shoal-gateway: cannot listen on {cfg.grpc_address}", file=sys.stderr)
        return 2
    server.start()
    for name in ("", SERVICE_NAME):
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    metrics_port = _start_metrics(cfg.metrics_port)
    host = cfg.grpc_address.rpartition(":")[0]
    print(f"READY grpc={host}:{port} control={scheduler.endpoint} metrics={metrics_port}", flush=True)
    log.info("serving gRPC on %s:%d, control %s, metrics :%s", host, port, scheduler.endpoint, metrics_port)

    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    log.info("draining: health NOT_SERVING, stopping")
    health_servicer.enter_graceful_shutdown()
    server.stop(grace=2).wait()
    scheduler.stop()
    scheduler.join(timeout=5)
    return 0


def _start_metrics(port: int) -> int:
    if port < 0:
        return -1
    server, _ = start_http_server(port)
    return server.server_port


if __name__ == "__main__":
    sys.exit(main())
