"""Measurements: decode time, one tracking run through the real services, identifier crops/s.

Everything a ratio compares is measured in the same run on the same machine (these machines are
noisy), and the video is decoded once just before tracking so both see the same page cache.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import grpc
import numpy as np

from bench.cases import Case
from shoal.client import Client
from shoal.evaluate import evaluate, load_predictions
from shoal.local import LocalCluster, default_segmenters
from shoal.params import TrackingParams
from shoal.v1 import jobs_pb2 as pb
from shoal.video import probe_video, read_frames

MIB = 1 << 20
GATEWAY_STAGES = ("probe", "segment", "crossings", "fragments", "identities", "assign", "postprocess", "write")


def decode_seconds(video: Path) -> tuple[int, float]:
    """Frames and seconds to decode the whole video in this process: the floor of any tracker."""
    info = probe_video([str(video)])
    start = time.perf_counter()
    n = sum(1 for _ in read_frames(info, 0, info.n_frames))
    return n, time.perf_counter() - start


def peak_rss_mib(pid: int) -> float | None:
    """VmHWM (the kernel's peak resident set) of a live process, in MiB; None if it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024 / MIB
    except OSError:
        return None
    return None


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds a live process has used (``/proc/PID/stat``); None if it is gone.

    Per-service CPU time shows who competes for the cores when there are fewer cores than processes.
    """
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2:].split()  # after "pid (comm) ": field 3 (state) is fields[0]
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class GpuSampler:
    """GPU utilisation sampled by nvidia-smi every 250 ms while a job runs (nothing without a GPU)."""

    def __init__(self) -> None:
        self.samples: list[tuple[float, float]] = []  # (monotonic time, utilisation 0..100)
        self._proc: subprocess.Popen | None = None
        self._thread: threading.Thread | None = None

    @staticmethod
    def available() -> bool:
        if shutil.which("nvidia-smi") is None:
            return False
        import torch

        return torch.cuda.is_available()

    def __enter__(self) -> GpuSampler:
        if self.available():
            self._proc = subprocess.Popen(
                ["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits", "-lms", "250"],
                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
            self._thread = threading.Thread(target=self._read, daemon=True)
            self._thread.start()
        return self

    def _read(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        for line in self._proc.stdout:
            try:
                self.samples.append((time.monotonic(), float(line.split(",")[0])))
            except ValueError:
                continue

    def __exit__(self, *exc) -> None:
        if self._proc is not None:
            self._proc.terminate()
            self._proc.wait(5)
        if self._thread is not None:
            self._thread.join(5)

    def busy_fraction(self, start: float, stop: float) -> float | None:
        """Mean utilisation in [start, stop] as a fraction; None without samples there."""
        values = [u for t, u in self.samples if start <= t <= stop]
        return float(np.mean(values)) / 100.0 if values else None


@dataclass
class JobRun:
    """One job as the gateway reported it."""

    state: str
    error: str
    queued_s: float  # submit -> RUNNING: services registering, not tracking
    wall_s: float  # RUNNING -> final
    stages_s: dict[str, float]  # seconds the gateway spent in each stage (its `stage` field)
    figures: dict[str, float]
    warnings: list[str]
    window: tuple[float, float] = (0.0, 0.0)  # monotonic times of RUNNING and final
    stage_windows: dict[str, tuple[float, float]] = field(default_factory=dict)


def run_job(client: Client, params: TrackingParams, out: Path, timeout_s: float,
            on_event: Callable[[pb.Job, float], None] | None = None) -> JobRun:
    """Submit one job and watch it to the end, timing each stage from the gateway's progress events.

    ``on_event(job, monotonic_time)`` sees every event as it arrives, so a caller can act mid-job
    (bench.segmenters kills a segmenter there) without a second watcher of its own.
    """
    submitted = time.monotonic()
    job = client.submit(params, output_dir=str(out))
    job_id = job.job_id
    running_at: float | None = None
    transitions: list[tuple[float, str]] = []
    deadline = submitted + timeout_s
    final = None
    while final is None:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            client.cancel(job_id)
            raise TimeoutError(f"job {job_id} did not finish in {timeout_s:.0f} s")
        try:
            for event in client.stub.WatchJob(pb.JobRef(job_id=job_id), metadata=client.metadata, timeout=remaining):
                now = time.monotonic()
                job = event.job
                if on_event is not None:
                    on_event(job, now)
                if running_at is None and job.state != pb.QUEUED:
                    running_at = now
                if job.stage and (not transitions or transitions[-1][1] != job.stage):
                    transitions.append((now, job.stage))
                if event.final:
                    final = now
                    break
        except grpc.RpcError as exc:
            if exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
                continue  # the loop's deadline check cancels the job
            if exc.code() not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED):
                raise
            time.sleep(1.0)
    running_at = running_at if running_at is not None else final
    windows: dict[str, tuple[float, float]] = {}
    stages: dict[str, float] = {}
    ends = [t for t, _ in transitions[1:]] + [final]
    for (start, stage), stop in zip(transitions, ends, strict=True):
        if stage in GATEWAY_STAGES:
            stages[stage] = stages.get(stage, 0.0) + stop - start
            windows[stage] = (windows.get(stage, (start, stop))[0], stop)
    return JobRun(state=pb.JobState.Name(job.state), error=job.error, queued_s=running_at - submitted,
                  wall_s=final - running_at, stages_s=stages, figures=dict(job.figures),
                  warnings=list(job.warnings), window=(running_at, final), stage_windows=windows)


def score(ground_truth: Path, session: Path) -> dict[str, float]:
    """Identity scores of a session folder against the simulator's truth."""
    with np.load(ground_truth) as gt:
        s = evaluate(gt["positions"], gt["touching"], float(gt["body_length"]), load_predictions(session))
    return {"accuracy": s.accuracy, "accuracy_all": s.accuracy_all, "idf1": s.idf1, "id_switches": s.id_switches,
            "coverage": s.coverage, "detection_rate": s.detection_rate}


@dataclass
class CaseResult:
    """Everything measured on one video."""

    case: str
    preset: str
    n_animals: int
    n_frames: int
    width: int
    height: int
    segmenters: int
    error: str = ""
    decode_s: float = math.nan
    startup_s: float = math.nan  # cluster start -> first job RUNNING
    wall_s: float = math.nan
    stages_s: dict[str, float] = field(default_factory=dict)
    timers_s: dict[str, float] = field(default_factory=dict)  # session.json `timers_seconds`
    statistics: dict = field(default_factory=dict)  # session.json `statistics`
    probe: dict = field(default_factory=dict)  # session.json `effective_parameters`
    scores: dict[str, float] = field(default_factory=dict)
    peak_rss_mib: dict[str, float] = field(default_factory=dict)  # per service process
    baseline_wall_s: float = math.nan
    baseline_scores: dict[str, float] = field(default_factory=dict)
    device: str = "cpu"
    gpu_busy: dict[str, float | None] = field(default_factory=dict)  # job, identities stage
    warnings: list[str] = field(default_factory=list)

    @property
    def fps(self) -> float:
        return self.n_frames / self.wall_s if self.wall_s > 0 else math.nan

    @property
    def decode_ratio(self) -> float:
        return self.wall_s / self.decode_s if self.decode_s > 0 else math.nan

    def segment_fps_per_worker(self) -> float:
        seconds = self.stages_s.get("segment", 0.0)
        return self.n_frames / seconds / self.segmenters if seconds > 0 else math.nan

    def to_dict(self) -> dict:
        d = asdict(self)
        d.update(fps=self.fps, decode_ratio=self.decode_ratio, decode_fps=self.n_frames / self.decode_s,
                 segment_fps_per_worker=self.segment_fps_per_worker())
        return d


def run_case(case: Case, files: dict[str, Path], work: Path, *, segmenters: int | None = None,
             baseline: bool = True, timeout_s: float = 6 * 3600, keep: bool = False) -> CaseResult:
    """Decode, then track with identities (and the position-only baseline) in one local cluster."""
    import torch

    segmenters = segmenters or default_segmenters()
    result = CaseResult(case.name, case.preset, case.n_animals, case.n_frames, case.width, case.height, segmenters,
                        device="cuda" if torch.cuda.is_available() else "cpu")
    folder = work / case.name
    shutil.rmtree(folder, ignore_errors=True)
    video = str(files["video"].resolve())
    cluster = LocalCluster(Path("/"), folder / "cluster", segmenters)
    try:
        result.n_frames, result.decode_s = decode_seconds(files["video"])
        started = time.monotonic()
        cluster.start()
        client = Client(cluster.grpc_address)
        client.wait_ready()
        session = (folder / "shoal").resolve()
        params = TrackingParams(video_paths=[video], number_of_animals=case.n_animals, seed=0).validate()
        with GpuSampler() as gpu:
            run = run_job(client, params, session, timeout_s)
        if run.state != "SUCCEEDED":
            raise RuntimeError(f"job {run.state.lower()}: {run.error} (service logs: {cluster.log_path})")
        # Peak RSS of the identity run, before the baseline job runs in the same services.
        result.peak_rss_mib = {name: rss for name, proc in cluster.procs.items()
                               if (rss := peak_rss_mib(proc.pid)) is not None}
        result.startup_s = run.window[0] - started
        result.wall_s, result.stages_s, result.warnings = run.wall_s, run.stages_s, run.warnings
        if gpu.samples:
            ident = run.stage_windows.get("identities")
            result.gpu_busy = {"job": gpu.busy_fraction(*run.window),
                               "identities": gpu.busy_fraction(*ident) if ident else None}
        info = json.loads((session / "session.json").read_text())
        result.timers_s, result.statistics = info.get("timers_seconds", {}), info.get("statistics", {})
        result.probe = info.get("effective_parameters", {})
        result.scores = score(files["ground_truth"], session)
        if baseline:
            base_session = (folder / "baseline").resolve()
            params = TrackingParams(video_paths=[video], number_of_animals=case.n_animals, seed=0,
                                    track_wo_identities=True).validate()
            base = run_job(client, params, base_session, timeout_s)
            if base.state != "SUCCEEDED":
                raise RuntimeError(f"baseline job {base.state.lower()}: {base.error} "
                                   f"(service logs: {cluster.log_path})")
            result.baseline_wall_s = base.wall_s
            result.baseline_scores = score(files["ground_truth"], base_session)
        client.close()
    except Exception as exc:  # one failed case must not lose the others' figures
        result.error = f"{type(exc).__name__}: {exc}"
    finally:
        cluster.stop()
    if not result.error and not keep:
        shutil.rmtree(folder, ignore_errors=True)
    return result


def identifier_throughput(side: int, device: str, batch_sizes: tuple[int, ...], min_seconds: float,
                          n_classes: int = 8) -> list[dict]:
    """Crops/s of the identity networks' forward pass (eval mode, no grad) at each batch size.

    Crops start on the CPU as uint8, as in the identifier, so host-to-device copies are counted.
    """
    import torch

    from services.identifier.networks import EmbeddingNet, IdCNN, seeded_model

    dev = torch.device(device)
    rows = []
    for name, factory in (("EmbeddingNet", lambda: EmbeddingNet(side)), ("IdCNN", lambda: IdCNN(side, n_classes))):
        model = seeded_model(factory, 0, dev).eval()
        for batch in batch_sizes:
            images = torch.randint(0, 256, (batch, side, side), dtype=torch.uint8)
            with torch.inference_mode():
                for _ in range(2):  # warm-up: allocator, cuDNN algorithm choice
                    model(images.to(dev))
                if dev.type == "cuda":
                    torch.cuda.synchronize(dev)
                reps, start = 0, time.perf_counter()
                while reps < 3 or time.perf_counter() - start < min_seconds:
                    model(images.to(dev))
                    reps += 1
                if dev.type == "cuda":
                    torch.cuda.synchronize(dev)
                elapsed = time.perf_counter() - start
            rows.append({"network": name, "device": device, "batch": batch, "side": side,
                         "crops_per_s": reps * batch / elapsed})
    return rows


def loglog_slope(xs: list[float], ys: list[float]) -> float | None:
    """Exponent b of y ~ x^b fitted by least squares on logs; None with fewer than two usable points."""
    pairs = [(x, y) for x, y in zip(xs, ys, strict=True) if x > 0 and y > 0 and math.isfinite(y)]
    if len({x for x, _ in pairs}) < 2:
        return None
    lx, ly = np.log([p[0] for p in pairs]), np.log([p[1] for p in pairs])
    return float(np.polyfit(lx, ly, 1)[0])


def torch_threads() -> int:
    """Threads the local identifier uses (cores - 1), so the micro-benchmark matches it."""
    return max(1, (os.cpu_count() or 2) - 1)
