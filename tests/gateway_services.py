"""The gateway and its workers as separate processes on 127.0.0.1, started and stopped by one test.

Unlike :class:`shoal.local.LocalCluster`, the ports are fixed for the life of the set, so a test can
kill the gateway and start it again where the workers (and clients) expect it, and it can start any
number of assemblers or none. Every process dies with the test process (``PR_SET_PDEATHSIG``).

The children are not started with a ``preexec_fn``: that makes ``subprocess`` fork the test process
itself, and grpc's fork handlers can then crash the child before ``exec`` while the test holds an
open channel. A two-line launcher in the child sets the death signal instead.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import grpc
import numpy as np

from shoal.local import read_ready_line
from shoal.sim import SimulationConfig, write_simulation
from shoal.v1 import jobs_pb2 as pb
from shoal.v1 import jobs_pb2_grpc as pb_grpc

START_TIMEOUT_S = 30
#: runs ``python -m MODULE ARGS`` after asking Linux to SIGTERM it when the test process dies
LAUNCHER = ("import ctypes, os, runpy, signal, sys; ctypes.CDLL('libc.so.6').prctl(1, signal.SIGTERM); "
            "os.setpgrp(); sys.argv = sys.argv[1:]; runpy.run_module(sys.argv[0], run_name='__main__', alter_sys=True)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tiny_video(folder: Path, n_frames: int = 120, seed: int = 1) -> Path:
    """Two simulated flies in a 160x160 frame: tracks without identities in about a second."""
    config = SimulationConfig(n_animals=2, n_frames=n_frames, preset="flies", width=160, height=160, seed=seed)
    return write_simulation(config, folder)["video"]


def job_request(video: str, frames_per_episode: int = 20) -> pb.SubmitJobRequest:
    return pb.SubmitJobRequest(video_paths=[video], params=pb.TrackingParams(
        number_of_animals=2, track_wo_identities=True, frames_per_episode=frames_per_episode))


class Services:
    def __init__(self, data_root: Path, work_dir: Path, gateway_args: list[str] | None = None,
                 env: dict[str, str] | None = None):
        self.data_root, self.work_dir = data_root, work_dir
        self.gateway_args = gateway_args or []
        self.env = {**{k: v for k, v in os.environ.items() if not k.startswith("SHOAL_")},
                    "PYTHONUNBUFFERED": "1", **(env or {})}
        self.grpc_address = f"127.0.0.1:{free_port()}"
        self.control = f"tcp://127.0.0.1:{free_port()}"
        self.procs: dict[str, subprocess.Popen] = {}
        work_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = work_dir / "services.log"
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()

    def __enter__(self) -> Services:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def _spawn(self, name: str, module: str, args: list[str], **kwargs) -> subprocess.Popen:
        proc = subprocess.Popen([sys.executable, "-c", LAUNCHER, module, *args], stdin=subprocess.DEVNULL,
                                stderr=self._log, env=self.env, **kwargs)
        self.procs[name] = proc
        return proc

    def start_gateway(self, *extra: str) -> str:
        """Start the gateway and wait for its READY line; returns that line."""
        proc = self._spawn("gateway", "services.gateway.main", [
            "--data-root", str(self.data_root), "--work-dir", str(self.work_dir),
            "--grpc-address", self.grpc_address, "--control", self.control, "--metrics-port", "-1",
            *self.gateway_args, *extra], stdout=subprocess.PIPE, text=True)
        line = read_ready_line(proc, START_TIMEOUT_S)
        if line is None:
            raise AssertionError(f"the gateway did not start:\n{self.log_tail()}")
        return line

    def start_workers(self, segmenters: int = 1, assemblers: int = 1) -> None:
        common = ["--gateway", self.control, "--metrics-port", "-1"]
        loopback = "tcp://127.0.0.1:0"
        for i in range(segmenters):
            self._spawn(f"segmenter-{i}", "services.segmenter.main", common)
        self._spawn("identifier", "services.identifier.main", [
            *common, "--batches", loopback, "--requests", loopback, "--store", str(self.work_dir / "store"),
            "--threads", "1"])
        for i in range(assemblers):
            self._spawn(f"assembler-{i}", "services.assembler.main", [*common, "--geometry", loopback])

    def signal_gateway(self, sig: int = signal.SIGKILL, timeout: float = 15) -> int:
        """Send ``sig`` to the gateway and wait for it to exit; returns its exit status."""
        proc = self.procs.pop("gateway")
        proc.send_signal(sig)
        code = proc.wait(timeout)
        proc.stdout.close()
        return code

    def channel(self, **kwargs) -> grpc.Channel:
        channel = grpc.insecure_channel(self.grpc_address, **kwargs)
        grpc.channel_ready_future(channel).result(timeout=START_TIMEOUT_S)
        return channel

    def log_tail(self, chars: int = 4000) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")[-chars:]

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs.values():
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            if proc.stdout:
                proc.stdout.close()
        self.procs.clear()
        self._log.close()


def watch_until_final(stub: pb_grpc.JobServiceStub, job_id: str, timeout: float = 60) -> pb.Job:
    """Follow a job to its end, watching again if the stream drops (e.g. while the gateway restarts)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            for event in stub.WatchJob(pb.JobRef(job_id=job_id), timeout=max(1.0, deadline - time.monotonic())):
                if event.final:
                    return event.job
        except grpc.RpcError as exc:
            if exc.code() not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED):
                raise
            time.sleep(0.2)
    raise AssertionError(f"job {job_id} did not end within {timeout} s")


def trajectories(stub: pb_grpc.JobServiceStub, job_id: str) -> np.ndarray:
    """A succeeded job's trajectories, as GetResult streams them."""
    chunks = list(stub.GetResult(pb.JobRef(job_id=job_id), timeout=30))
    head = chunks[0]
    blocks = [np.asarray(c.trajectories).reshape(-1, head.n_animals, 2) for c in chunks[1:]]
    return np.concatenate(blocks)
