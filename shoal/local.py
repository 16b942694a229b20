"""Local mode: the gateway and its workers as child processes on loopback.

``shoal track`` and ``shoal serve`` use this; each service is the same program a container runs.
Children get SIGTERM if this process dies (Linux ``PR_SET_PDEATHSIG``), and :meth:`stop` ends
them in order, so no process outlives the command, including after Ctrl-C. Every run makes a fresh
CURVE key folder in its work folder, so even on loopback no other process (another user's, say)
can talk to its services.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from shoal import curve

PR_SET_PDEATHSIG = 1
START_TIMEOUT_S = 60
#: how the gateway begins the one line it prints to stderr before exiting with 2 (bad settings)
GATEWAY_REFUSAL = "shoal-gateway: "


class StartError(RuntimeError):
    """The services did not start. ``refused``: the gateway refused its settings (exit status 2, e.g.
    its work folder is in use or its port is taken) and the message is its own one line."""

    def __init__(self, message: str, refused: bool = False):
        super().__init__(message)
        self.refused = refused


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
                 metrics: bool = False, grpc_address: str = "127.0.0.1:0"):
        self.data_root, self.work_dir = data_root, work_dir
        self.listen = grpc_address  # port 0: any free port (a local run needs no fixed one)
        self.metrics = metrics
        self.metrics_ports: dict[str, int] = {}
        self.segmenters = segmenters or default_segmenters()
        # torch's spinning OpenMP threads collapse when they share cores with other busy processes
        self.threads = threads or max(1, (os.cpu_count() or 2) - 1)
        self.procs: dict[str, subprocess.Popen] = {}
        self.grpc_address = ""
        self.log_path = work_dir / "services.log"
        #: this cluster's own CURVE keys (shoal.curve), made fresh at each start in a private temporary
        #: folder: never in the work folder, where a second `shoal serve` refused on the same data root
        #: would replace them under the running cluster's starting workers
        self.curve_keys: Path | None = None

    def __enter__(self) -> LocalCluster:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def _spawn(self, name: str, module: str, args: list[str], **kwargs) -> subprocess.Popen:
        # local mode is loopback only: a token meant for a remote gateway must not lock this one
        env = {k: v for k, v in os.environ.items() if k != "SHOAL_AUTH_TOKEN"} | {"PYTHONUNBUFFERED": "1"}
        args = [*args, "--curve-keys", str(self.curve_keys)]
        proc = subprocess.Popen([sys.executable, "-m", module, *args], stdin=subprocess.DEVNULL,
                                stderr=self._log, env=env, preexec_fn=_die_with_parent, **kwargs)
        self.procs[name] = proc
        return proc

    def start(self) -> None:
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "ab")
        log_start = self.log_path.stat().st_size
        self.curve_keys = Path(tempfile.mkdtemp(prefix="shoal-curve-"))
        curve.generate(self.curve_keys)
        gateway = self._spawn("gateway", "services.gateway.main", [
            "--data-root", str(self.data_root), "--work-dir", str(self.work_dir),
            "--grpc-address", self.listen, "--control", "tcp://127.0.0.1:0",
            "--metrics-port", "0" if self.metrics else "-1", "--drain-seconds", "0",
        ], stdout=subprocess.PIPE, text=True)
        ready = self._wait_ready(gateway, log_start)
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

    def _wait_ready(self, proc: subprocess.Popen, log_start: int) -> str:
        line = read_ready_line(proc)
        if line is None:
            status = proc.poll()
            self.stop()
            said = self._gateway_refusal(log_start)
            if status == 2 and said:
                raise StartError(said, refused=True)
            raise StartError(f"the gateway did not start ({said or f'exit status {status}'}); see {self.log_path}")
        return line

    def _gateway_refusal(self, log_start: int) -> str:
        """The gateway's last refusal line written to the log since ``log_start``, without its prefix."""
        with open(self.log_path, "rb") as log:
            log.seek(log_start)
            lines = log.read().decode(errors="replace").splitlines()
        said = [line[len(GATEWAY_REFUSAL):] for line in lines if line.startswith(GATEWAY_REFUSAL)]
        return said[-1] if said else ""

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
        if self.curve_keys is not None:
            shutil.rmtree(self.curve_keys, ignore_errors=True)
            self.curve_keys = None
        if getattr(self, "_log", None):
            self._log.close()
