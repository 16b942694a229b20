"""`python -m bench.segmenters`: segmentation throughput with 1..K segmenters, and recovery from a killed one.

Issue 6 asks whether segmenters scale apart from the rest: frames/s and Mpx/s of the segment stage
with K segmenters, the parallel efficiency throughput(K) / (K x throughput(1)), and per-worker
throughput against decoding the same video in one process (the floor any segmenter pays; target
>= 0.8). With --kill, one of two segmenters is SIGKILLed mid-segment and the time until the gateway
re-issues its task is measured (target <= 5 s), with the job's delay against an undisturbed run.

Jobs run without identities (``track_wo_identities``) through ``shoal.local.LocalCluster``, so the
segment stage is the bulk of the job; its seconds come from the gateway's progress stream as in
``bench.run``. A video is cut into at least 6 chunks so that 1, 2 and 3 segmenters get equal shares.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import signal
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import cv2
import numpy as np

from bench import report
from bench.cases import CASES, QUICK_FRAMES, Case, ensure_video
from bench.measure import JobRun, cpu_seconds, decode_seconds, run_job
from bench.report import _f, _table
from bench.run import _jsonable
from shoal.client import Client
from shoal.local import LocalCluster
from shoal.params import TrackingParams
from shoal.v1 import jobs_pb2 as pb

BENCH = Path(__file__).resolve().parent
MIN_CHUNKS = 6  # divisible by 1, 2 and 3 segmenters: no worker idles on the last chunk
RATIO_TARGET = 0.8  # per-worker segmentation / single-process decode
RECOVERY_TARGET_S = 5.0  # kill -> the gateway re-issues the dead segmenter's task
README_BEGIN, README_END = "<!-- segmenters:begin -->", "<!-- segmenters:end -->"
# services' log format (shoal.config.setup_logging) and the scheduler's line for a lost worker
LOST_LINE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) gateway\[\d+\] WARNING worker (\S+) lost "
                       r"\((.*?)\); re-issuing (\d+) task", re.M)


@dataclass
class ScalingRun:
    """Segment-stage throughput with ``segmenters`` workers, decoded in the same run for the ratio."""

    segmenters: int
    n_frames: int
    megapixels: float  # the whole video
    chunks: int
    decode_runs_s: list[float] = field(default_factory=list)  # one per job, just before it
    segment_s: list[float] = field(default_factory=list)  # one per repeat
    wall_s: list[float] = field(default_factory=list)
    cpu_s: dict[str, float] = field(default_factory=dict)  # per service kind in the segment stage, all repeats
    error: str = ""

    @property
    def seconds(self) -> float:
        """Median segment-stage seconds over the repeats (the machine is shared and noisy)."""
        return statistics.median(self.segment_s) if self.segment_s else math.nan

    @property
    def decode_s(self) -> float:
        return statistics.median(self.decode_runs_s) if self.decode_runs_s else math.nan

    @property
    def fps(self) -> float:
        return self.n_frames / self.seconds

    @property
    def mpx_per_s(self) -> float:
        return self.megapixels / self.seconds

    def cores_busy(self, kind: str | None = None) -> float:
        """CPU seconds per segment-stage second (of one kind of service, or all): cores in use."""
        cpu = self.cpu_s.get(kind, 0.0) if kind else sum(self.cpu_s.values())
        return cpu / sum(self.segment_s) if self.segment_s else math.nan

    @property
    def decode_fps(self) -> float:
        return self.n_frames / self.decode_s

    @property
    def per_worker_fps(self) -> float:
        return self.fps / self.segmenters

    @property
    def per_worker_ratio(self) -> float:
        return self.per_worker_fps / self.decode_fps

    def efficiency(self, single: ScalingRun | None) -> float:
        """throughput(K) / (K x throughput(1)); NaN without a run with one segmenter."""
        if single is None or single.error or self.error:
            return math.nan
        return self.fps / (self.segmenters * single.fps)

    def to_dict(self, single: ScalingRun | None = None) -> dict:
        d = asdict(self)
        d.update(segment_s_median=self.seconds, decode_s_median=self.decode_s, frames_per_s=self.fps,
                 mpx_per_s=self.mpx_per_s, decode_frames_per_s=self.decode_fps,
                 per_worker_frames_per_s=self.per_worker_fps, per_worker_over_decode=self.per_worker_ratio,
                 parallel_efficiency=self.efficiency(single))
        return d


@dataclass
class KillRun:
    """Two segmenters, one SIGKILLed once the segment stage has finished its first chunk."""

    victim: str = ""
    lost_reason: str = ""
    tasks_reissued: int = 0
    chunks_done_at_kill: int = 0
    chunks: int = 0
    detection_s: float = math.nan  # kill -> the gateway's "lost; re-issuing" log line
    handed_out_s: float = math.nan  # kill -> the re-issued task reaches the survivor (first in line at its next credit)
    segmented_s: float = math.nan  # kill -> every chunk segmented
    job_done_s: float = math.nan  # kill -> the job's final event
    segment_s: float = math.nan
    wall_s: float = math.nan
    reference_segment_s: float = math.nan  # undisturbed run with 2 segmenters
    reference_wall_s: float = math.nan
    same_trajectories: bool | None = None  # segmentation is deterministic: a re-issued chunk changes nothing
    warnings: list[str] = field(default_factory=list)
    error: str = ""

    def to_dict(self) -> dict:
        return {**asdict(self), "segment_delay_s": self.segment_s - self.reference_segment_s,
                "job_delay_s": self.wall_s - self.reference_wall_s}


def _ints(text: str) -> list[int]:
    return sorted({int(v) for v in text.split(",") if v.strip()})


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.segmenters", description=__doc__.splitlines()[0])
    p.add_argument("--case", default="fish8", choices=sorted(CASES), help="video to segment (default fish8)")
    p.add_argument("--segmenters", default="1,2", help="comma-separated segmenter counts (default 1,2)")
    p.add_argument("--quick", action="store_true", help=f"cut the case to {QUICK_FRAMES} frames (smoke check)")
    p.add_argument("--kill", action="store_true", help="also SIGKILL one of two segmenters mid-segment")
    p.add_argument("--repeats", type=int, default=1,
                   help="rounds of one job per segmenter count, each in a fresh cluster; medians are reported")
    p.add_argument("--chunk-frames", type=int,
                   help=f"frames per chunk (default: the tracker's, cut so there are at least {MIN_CHUNKS} chunks)")
    p.add_argument("--out", help="results folder (default: bench/results, or bench/out/quick with --quick)")
    p.add_argument("--cache", default=str(BENCH / "out" / "cache"), help="rendered videos, reused across runs")
    p.add_argument("--work", default=str(BENCH / "out" / "work" / "segmenters"), help="service logs and sessions")
    p.add_argument("--readme", action=argparse.BooleanOptionalAction, default=None,
                   help="update bench/README.md's segmenter results (default: yes, except with --quick)")
    p.add_argument("--keep", action="store_true", help="keep sessions and service logs")
    p.add_argument("--job-timeout", type=float, default=3600, help="seconds before a job is cancelled")
    args = p.parse_args(argv)
    args.counts = _ints(args.segmenters)
    if not args.counts or min(args.counts) < 1:
        p.error("--segmenters needs counts >= 1")
    if args.repeats < 1:
        p.error("--repeats must be >= 1")
    args.case_obj = CASES[args.case].quick() if args.quick else CASES[args.case]
    args.out = Path(args.out) if args.out else BENCH / ("out/quick" if args.quick else "results")
    if args.readme is None:
        args.readme = not args.quick
    return args


def job_params(case: Case, video: Path, chunk_frames: int) -> TrackingParams:
    """Position-only tracking: the job is segmentation plus a short assembly."""
    return TrackingParams(video_paths=[str(video.resolve())], number_of_animals=case.n_animals, seed=0,
                          track_wo_identities=True, frames_per_episode=chunk_frames).validate()


def chunk_frames_for(case: Case, asked: int | None) -> int:
    """The tracker's chunk size, smaller for short videos: with fewer chunks than workers K cannot help."""
    default = TrackingParams.__dataclass_fields__["frames_per_episode"].default
    return asked or max(10, min(default, math.ceil(case.n_frames / MIN_CHUNKS)))


def _start(cluster: LocalCluster) -> Client:
    cluster.start()
    client = Client(cluster.grpc_address)
    client.wait_ready()
    return client


def _cpu_by_kind(cluster: LocalCluster) -> dict[str, float]:
    out: dict[str, float] = {}
    for name, proc in cluster.procs.items():
        seconds = cpu_seconds(proc.pid)
        if seconds is not None:
            kind = name.split("-")[0]
            out[kind] = out.get(kind, 0.0) + seconds
    return out


def _checked(run: JobRun, cluster: LocalCluster) -> JobRun:
    if run.state != "SUCCEEDED":
        raise RuntimeError(f"job {run.state.lower()}: {run.error} (service logs: {cluster.log_path})")
    if "segment" not in run.stages_s:
        raise RuntimeError("the gateway reported no segment stage")
    return run


def scaling_job(result: ScalingRun, case: Case, video: Path, args: argparse.Namespace, chunk_frames: int,
                repeat: int) -> None:
    """Decode the video in this process, then segment it once with ``result.segmenters`` in a fresh cluster."""
    k = result.segmenters
    folder = Path(args.work) / f"k{k}-{repeat}"
    shutil.rmtree(folder, ignore_errors=True)
    cluster = LocalCluster(Path("/"), folder / "cluster", k)
    try:
        n_frames, decode_s = decode_seconds(video)  # just before: the same page cache, the same load
        client = _start(cluster)
        cpu: dict[str, dict[str, float]] = {}  # CPU seconds by kind when the segment stage began and ended

        def on_event(job: pb.Job, _now: float) -> None:
            if job.stage == "segment" and "start" not in cpu:
                cpu["start"] = _cpu_by_kind(cluster)
            elif job.stage != "segment" and "start" in cpu and "stop" not in cpu:
                cpu["stop"] = _cpu_by_kind(cluster)

        run = _checked(run_job(client, job_params(case, video, chunk_frames), (folder / "session").resolve(),
                               args.job_timeout, on_event), cluster)
        client.close()
        stop = cpu.get("stop") or _cpu_by_kind(cluster)
        for kind, seconds in stop.items():
            result.cpu_s[kind] = result.cpu_s.get(kind, 0.0) + seconds - cpu.get("start", {}).get(kind, 0.0)
        result.n_frames = n_frames
        result.decode_runs_s.append(decode_s)
        result.segment_s.append(run.stages_s["segment"])
        result.wall_s.append(run.wall_s)
        print(f"  {k} segmenter(s), job {repeat + 1}: segment {run.stages_s['segment']:.2f} s "
              f"({n_frames / run.stages_s['segment']:.1f} frames/s), decode {n_frames / decode_s:.1f} frames/s",
              flush=True)
    except Exception as exc:  # one failed count must not lose the others' figures
        result.error = f"{type(exc).__name__}: {exc}"
        print(f"  {k} segmenter(s): FAILED: {result.error}", flush=True)
    finally:
        cluster.stop()


def scaling(case: Case, video: Path, args: argparse.Namespace, chunk_frames: int) -> list[ScalingRun]:
    """Every count once per round, rounds repeated: a load that drifts during the run hits every count alike."""
    n_chunks = math.ceil(case.n_frames / chunk_frames)
    runs = [ScalingRun(k, case.n_frames, case.n_frames * case.width * case.height / 1e6, n_chunks)
            for k in args.counts]
    for repeat in range(args.repeats):
        for run in runs:
            if not run.error:
                scaling_job(run, case, video, args, chunk_frames, repeat)
    return runs


def _lost_line(log: Path, pid: int) -> tuple[float, str, str, int] | None:
    """(unix time, worker id, reason, tasks re-issued) of the gateway's line for the worker with ``pid``."""
    for m in LOST_LINE.finditer(log.read_text(errors="replace")):
        if f"-{pid}-" in m.group(2):
            when = datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()  # local time, as logged
            return when, m.group(2), m.group(3), int(m.group(4))
    return None


def _trajectories(session: Path) -> np.ndarray:
    return np.load(session / "trajectories" / "trajectories.npy", allow_pickle=True).item()["trajectories"]


def kill_run(case: Case, video: Path, args: argparse.Namespace, chunk_frames: int) -> KillRun:
    """An undisturbed job with two segmenters, then one in which segmenter-0 is SIGKILLed mid-segment."""
    result = KillRun()
    folder = Path(args.work) / "kill"
    shutil.rmtree(folder, ignore_errors=True)
    params = job_params(case, video, chunk_frames)
    reference_session = (folder / "reference").resolve()
    try:
        with LocalCluster(Path("/"), folder / "reference-cluster", 2) as cluster:
            client = Client(cluster.grpc_address)
            client.wait_ready()
            ref = _checked(run_job(client, params, reference_session, args.job_timeout), cluster)
            client.close()
        result.reference_segment_s, result.reference_wall_s = ref.stages_s["segment"], ref.wall_s

        cluster = LocalCluster(Path("/"), folder / "cluster", 2)
        try:
            client = _start(cluster)
            victim = cluster.procs["segmenter-0"]  # a process this script started
            progress: list[tuple[float, int]] = []  # (monotonic time, chunks segmented)
            killed: dict[str, float] = {}

            def on_event(job: pb.Job, now: float) -> None:
                seg = next((s for s in job.stages if s.stage == "segment"), None)
                if seg is None or seg.total == 0:
                    return
                if not progress or progress[-1][1] != seg.done:
                    progress.append((now, int(seg.done)))
                result.chunks = int(seg.total)
                if not killed and 1 <= seg.done < seg.total:  # mid-segment: the victim holds a chunk
                    killed["mono"], killed["unix"] = time.monotonic(), time.time()
                    os.kill(victim.pid, signal.SIGKILL)
                    result.chunks_done_at_kill = int(seg.done)

            run = _checked(run_job(client, params, (folder / "killed").resolve(), args.job_timeout, on_event),
                           cluster)
            client.close()
            victim.wait(10)
            result.segment_s, result.wall_s, result.warnings = run.stages_s["segment"], run.wall_s, run.warnings
            if not killed:
                raise RuntimeError("the segment stage ended before one chunk was done: nothing to kill mid-segment "
                                   "(use more frames or smaller --chunk-frames)")
            lost = _lost_line(cluster.log_path, victim.pid)
            if lost is None:
                raise RuntimeError(f"no gateway line says segmenter pid {victim.pid} was lost ({cluster.log_path})")
            lost_unix, result.victim, result.lost_reason, result.tasks_reissued = lost
            result.detection_s = lost_unix - killed["unix"]
            lost_mono = killed["mono"] + result.detection_s
            done_then = max((d for t, d in progress if t <= lost_mono), default=0)
            if result.chunks - done_then <= result.tasks_reissued:  # the survivor is idle: handed out at once
                result.handed_out_s = result.detection_s
            else:  # first in line: it goes to the survivor when that finishes the chunk it holds
                freed = next((t for t, d in progress if t > lost_mono and d > done_then), math.nan)
                result.handed_out_s = freed - killed["mono"]
            result.job_done_s = run.window[1] - killed["mono"]
            result.segmented_s = next((t for t, d in progress if d >= result.chunks), math.nan) - killed["mono"]
            result.same_trajectories = bool(np.array_equal(_trajectories(folder / "killed"),
                                                           _trajectories(reference_session), equal_nan=True))
        finally:
            cluster.stop()
    except Exception as exc:
        result.error = f"{type(exc).__name__}: {exc}"
    print("  kill: " + (f"FAILED: {result.error}" if result.error else
          f"lost after {result.detection_s:.2f} s ({result.lost_reason}), {result.tasks_reissued} task(s) re-issued"),
          flush=True)
    return result


def cores_note(cores: int, counts: list[int]) -> str:
    """Why efficiency falls short of 1 on a small machine: every service is a process on the same cores."""
    k = max(counts)
    if k + 3 > cores:
        return (f"{cores} cores: {k} segmenter(s) plus the gateway, identifier and assembler ({k + 3} processes) "
                f"compete for them, and the assembler and identifier work while chunks are segmented; "
                f"efficiency and per-worker/decode with K = {k} measure that machine, not the design.")
    return f"{cores} cores: at most {k + 3} service processes, so each segmenter can have a core."


def markdown(meta: dict, runs: list[ScalingRun], kill: KillRun | None) -> str:
    m = meta["machine"]
    lines = ["# Segmenter scaling and recovery", "",
             f"- date: {meta['date']}", f"- commit: {meta['commit']}", f"- command: `{meta['command']}`",
             f"- machine: {m['cpu']}, **{m['cores']} cores** ({meta['usable_cores']} usable), {m['memory']}, "
             f"GPU {m['gpu']}; load average {meta['load_before']:.2f} before, {meta['load_after']:.2f} after",
             f"- case: {meta['case']} ({meta['n_animals']} {meta['preset']}, {meta['n_frames']} frames, "
             f"{meta['size']}), chunks of {meta['chunk_frames']} frames, {meta['repeats']} round(s) of one job "
             "per count",
             *(["- **quick run**: a smoke check, not a result"] if meta["quick"] else []),
             f"- {meta['cores_note']}", "",
             "## Segmentation throughput", "",
             "Segment stage of a job without identities, from the gateway's progress stream (median over the "
             "rounds; each round runs every count once, in a fresh cluster); decode = this process reading every "
             "frame with `shoal.video.read_frames` just before each cluster starts (median); efficiency = "
             "throughput(K) / (K × throughput(1)); cores busy = each kind of service's CPU seconds "
             "(`/proc/PID/stat`) per second of the segment stage (segmentation uses OpenCV, which "
             f"runs {meta['opencv_threads']} thread(s) per process here, so one segmenter can use more than one "
             "core).", ""]
    single = next((r for r in runs if r.segmenters == 1 and not r.error), None)
    rows = []
    for r in runs:
        if r.error:
            rows.append([str(r.segmenters), *["–"] * 10, r.error[:80]])
            continue
        cpu = ", ".join(f"{k} {r.cores_busy(k):.2f}" for k in sorted(r.cpu_s)) + f"; all {r.cores_busy():.2f}"
        rows.append([str(r.segmenters), str(r.chunks), _f(r.seconds, 2), _f(r.fps, 1), _f(r.mpx_per_s, 1),
                     _f(r.per_worker_fps, 1), _f(r.decode_fps, 1), _f(r.per_worker_ratio, 3),
                     _f(r.efficiency(single), 3), _f(statistics.median(r.wall_s), 1), cpu, ""])
    lines += _table(["K", "chunks", "segment s", "frames/s", "Mpx/s", "per worker frames/s", "decode frames/s",
                     "per worker / decode", "efficiency", "job wall s", "cores busy in segment", "error"], rows)
    if kill is not None:
        lines += ["", "## Recovery from a killed segmenter", "",
                  "Two segmenters; segmenter-0 gets SIGKILL once the first chunk is segmented. detection = kill to "
                  "the gateway's `worker … lost; re-issuing N task(s)` line (the task is back in the queue, first in "
                  "line); handed out = to the surviving segmenter's next free credit (when it finishes the chunk it "
                  "holds); segmented = every chunk done; job done = the job's final event. Delays are against an "
                  "undisturbed run with 2 segmenters.", ""]
        if kill.error:
            lines.append(f"**failed**: {kill.error}")
        else:
            d = kill.to_dict()
            lines += _table(["victim", "why lost", "re-issued", "chunks done at kill", "detection s", "handed out s",
                             "segmented s", "job done s", "segment delay s", "job delay s", "same trajectories"],
                            [[kill.victim, kill.lost_reason, str(kill.tasks_reissued),
                              f"{kill.chunks_done_at_kill}/{kill.chunks}", _f(kill.detection_s, 2),
                              _f(kill.handed_out_s, 2), _f(kill.segmented_s, 2), _f(kill.job_done_s, 2),
                              _f(d["segment_delay_s"], 2), _f(d["job_delay_s"], 2), str(kill.same_trajectories)]])
            if kill.warnings:
                lines += ["", "job warnings: " + "; ".join(kill.warnings)]
    lines += ["", "## Targets", ""] + targets(runs, kill)
    return "\n".join(lines) + "\n"


def targets(runs: list[ScalingRun], kill: KillRun | None) -> list[str]:
    def mark(ok: bool) -> str:
        return "met" if ok else "**missed**"

    lines = [f"- per-worker / decode with K = {r.segmenters}: {r.per_worker_ratio:.3f} (≥ {RATIO_TARGET}) "
             f"{mark(r.per_worker_ratio >= RATIO_TARGET)}" for r in runs if not r.error]
    if kill is not None and not kill.error:
        lines.append(f"- recovery after a kill (detection + re-issue): {kill.detection_s:.2f} s "
                     f"(≤ {RECOVERY_TARGET_S:g} s) {mark(kill.detection_s <= RECOVERY_TARGET_S)}; the task then waited "
                     f"{_f(kill.handed_out_s - kill.detection_s, 2)} s for a free segmenter")
    return lines


def update_readme(readme: Path, text: str) -> None:
    """Put this run's tables between the README's segmenter markers (headings nested one level)."""
    body = re.sub(r"^(#+) ", lambda m: "#" * (len(m.group(1)) + 1) + " ", text.split("\n", 2)[2].strip(), flags=re.M)
    old = readme.read_text()
    if README_BEGIN not in old or README_END not in old:
        raise RuntimeError(f"{readme} has no {README_BEGIN} … {README_END} section")
    block = f"{README_BEGIN}\n{body}\n{README_END}"
    readme.write_text(re.sub(re.escape(README_BEGIN) + ".*?" + re.escape(README_END), lambda _: block, old,
                             flags=re.S))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    case: Case = args.case_obj
    command = "python -m bench.segmenters " + " ".join(sys.argv[1:] if argv is None else argv)
    cores = os.cpu_count() or 1
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else cores
    note = cores_note(usable, args.counts + ([2] if args.kill else []))
    print(f"case {case.name}: {case.n_animals} {case.preset}, {case.n_frames} frames, {case.width}x{case.height}; "
          f"segmenters {args.counts}{' + kill' if args.kill else ''}", flush=True)
    print(note, flush=True)
    load_before = os.getloadavg()[0]
    files = ensure_video(case, Path(args.cache))
    chunk_frames = chunk_frames_for(case, args.chunk_frames)
    runs = scaling(case, files["video"], args, chunk_frames)
    kill = kill_run(case, files["video"], args, chunk_frames) if args.kill else None

    meta = {"date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"), "commit": report.commit(), "command": command,
            "machine": report.machine(), "usable_cores": usable, "load_before": load_before,
            "load_after": os.getloadavg()[0], "quick": args.quick, "case": case.name, "preset": case.preset,
            "n_animals": case.n_animals, "n_frames": case.n_frames, "size": f"{case.width}x{case.height}",
            "chunk_frames": chunk_frames, "repeats": args.repeats, "cores_note": note,
            "opencv_threads": cv2.getNumThreads()}
    text = markdown(meta, runs, kill)
    print()
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    single = next((r for r in runs if r.segmenters == 1 and not r.error), None)
    payload = {**meta, "targets": {"per_worker_over_decode": RATIO_TARGET, "recovery_s": RECOVERY_TARGET_S},
               "runs": [r.to_dict(single) for r in runs], "kill": kill.to_dict() if kill else None}
    (args.out / "segmenters.json").write_text(json.dumps(_jsonable(payload), indent=1, allow_nan=False) + "\n")
    (args.out / "segmenters.md").write_text(text)
    if args.readme:
        update_readme(BENCH / "README.md", text)
        print(f"updated {BENCH / 'README.md'}")
    print(f"results: {args.out / 'segmenters.json'}, {args.out / 'segmenters.md'}")
    failed = any(r.error for r in runs) or (kill is not None and bool(kill.error))
    if not (failed or args.keep):
        shutil.rmtree(args.work, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
