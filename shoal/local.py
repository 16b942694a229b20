"""Local mode: the gateway and its workers as child processes on loopback.

``shoal track`` and ``shoal serve`` use this; each service is the same program a container runs.
Children get SIGTERM if this process dies (Linux ``PR_SET_PDEATHSIG``), and :meth:`stop` ends
them in order, so no process outlives the command, including after Ctrl-C.
"""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

PR_SET_PDEATHSIG = 1
START_TIMEOUT_S = 60


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free now (for services that cannot report the one they bound)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def default_segmenters() -> int:
    return max(1, (os.cpu_count() or 2) - 1)


def _die_with_parent() -> None:
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except OSError:
        pass  # not Linux: stop() still ends the children on a normal exit
    os.setpgrp()  # Ctrl-C in the terminal reaches only the launcher, which stops the children in order


def read_ready_line(proc: subprocess.Popen, timeout: float = START_TIMEOUT_S) -> str | None:
    """The gateway's ``READY grpc=.. control=.. metrics=..`` line from its stdout, or None if it exits
    (or prints nothing like it) first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if line.startswith("READY"):
            return line.strip()
        if not line and proc.poll() is not None:
            return None
    return None


class LocalCluster:
    """Gateway + K segmenters + one identifier + one assembler on 127.0.0.1.

    With ``metrics``, each service serves Prometheus ``/metrics`` on a port of its own, listed in
    :attr:`metrics_ports` by process name, for a local Prometheus (:mod:`shoal.prometheus`) to scrape.
    """

    def __init__(self, data_root: Path, work_dir: Path, segmenters: int | None = None, threads: int = 0,
                 metrics: bool = False):
        self.data_root, self.work_dir = data_root, work_dir
        self.metrics = metrics
        self.metrics_ports: dict[str, int] = {}
        self.segmenters = segmenters or default_segmenters()
        # torch's spinning OpenMP threads collapse when they share cores with other busy processes
        self.threads = threads or max(1, (os.cpu_count() or 2) - 1)
        self.procs: dict[str, subprocess.Popen] = {}
        self.grpc_address = ""
        self.log_path = work_dir / "services.log"

    def __enter__(self) -> LocalCluster:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def _spawn(self, name: str, module: str, args: list[str], **kwargs) -> subprocess.Popen:
        # local mode is loopback only: a token meant for a remote gateway must not lock this one
        env = {k: v for k, v in os.environ.items() if k != "SHOAL_AUTH_TOKEN"} | {"PYTHONUNBUFFERED": "1"}
        proc = subprocess.Popen([sys.executable, "-m", module, *args], stdin=subprocess.DEVNULL,
                                stderr=self._log, env=env, preexec_fn=_die_with_parent, **kwargs)
        self.procs[name] = proc
        return proc

    def start(self) -> None:
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "ab")
        gateway = self._spawn("gateway", "services.gateway.main", [
            "--data-root", str(self.data_root), "--work-dir", str(self.work_dir),
            "--grpc-address", "127.0.0.1:0", "--control", "tcp://127.0.0.1:0",
            "--metrics-port", "0" if self.metrics else "-1", "--drain-seconds", "0",
        ], stdout=subprocess.PIPE, text=True)
        ready = self._wait_ready(gateway)
        fields = dict(part.split("=", 1) for part in ready.split()[1:])
        self.grpc_address, control = fields["grpc"], fields["control"]
        if self.metrics:
            self.metrics_ports["gateway"] = int(fields["metrics"])
        loopback = "tcp://127.0.0.1:0"
        for i in range(self.segmenters):
            self._spawn_worker(f"segmenter-{i}", "services.segmenter.main", control, [])
        self._spawn_worker("identifier", "services.identifier.main", control, [
            "--batches", loopback, "--requests", loopback,
            "--store", str(self.work_dir / "store"), "--threads", str(self.threads)])
        self._spawn_worker("assembler", "services.assembler.main", control, ["--geometry", loopback])

    def _spawn_worker(self, name: str, module: str, control: str, args: list[str]) -> None:
        port = -1
        if self.metrics:
            port = self.metrics_ports[name] = free_port()
        self._spawn(name, module, ["--gateway", control, "--metrics-port", str(port), *args])

    def _wait_ready(self, proc: subprocess.Popen) -> str:
        line = read_ready_line(proc)
        if line is None:
            self.stop()
            raise RuntimeError(f"the gateway did not start; see {self.log_path}")
        return line

    def alive(self) -> dict[str, bool]:
        return {name: p.poll() is None for name, p in self.procs.items()}

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM workers, then the gateway; SIGKILL whatever is still there after ``timeout``."""
        order = [n for n in self.procs if n != "gateway"] + (["gateway"] if "gateway" in self.procs else [])
        for name in order:
            if self.procs[name].poll() is None:
                self.procs[name].terminate()
        deadline = time.monotonic() + timeout
        for name in order:
            proc = self.procs[name]
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.procs.clear()
        if getattr(self, "_log", None):
            self._log.close()
