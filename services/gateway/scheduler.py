"""The gateway's scheduler: turns jobs into tasks and hands them to workers over ZeroMQ.

Every worker connects a DEALER to the scheduler's control ROUTER and says ``hello`` with its role.
Segmenters ask for work with ``ready`` (credit), so fast workers get more tasks and a worker that
joins mid-job takes work at once (the zguide's load-balancing pattern). Each job is pinned to one
identifier and one assembler. A task stays assigned until its worker reports it done; the tasks of
a worker that misses :data:`~shoal.transport.LIVENESS` heartbeats are re-issued with a higher
``attempt`` and receivers drop duplicates, so a lost worker costs time, never data.

Job flow: ``probe`` task (background, body length, crop size) -> one ``segment`` task per chunk
(segmenter -> identifier -> assembler) -> the assembler tracks and writes the session folder and
says ``job_done``.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from collections import deque
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import zmq

from shoal.codec import Message
from shoal.transport import HEARTBEAT_S, LIVENESS, bind, make_socket, recv, send
from shoal.video import VideoError, chunk_ranges, probe_video

from . import metrics
from .jobstore import CANCELLED, FAILED, QUEUED, RUNNING, SUCCEEDED, JobRecord, JobStore

log = logging.getLogger("shoal.gateway")

#: weight of each stage in a job's overall fraction done (they add up to 1)
STAGE_WEIGHTS = {
    "probe": 0.03,
    "segment": 0.47,
    "crossings": 0.05,
    "fragments": 0.03,
    "identities": 0.32,
    "assign": 0.03,
    "postprocess": 0.03,
    "write": 0.04,
}
MAX_ATTEMPTS = 3


@dataclass
class Worker:
    wid: bytes
    role: str
    info: dict[str, Any]
    last_seen: float
    credit: int = 0
    tasks: set[tuple[str, int]] = field(default_factory=set)


@dataclass
class Task:
    job_id: str
    index: int  # -1 = probe, else chunk index
    body: dict[str, Any]
    attempt: int = 0
    worker: bytes | None = None
    done: bool = False
    last_error: str = ""

    @property
    def key(self) -> tuple[str, int]:
        return (self.job_id, self.index)


@dataclass
class JobRun:
    """What the scheduler knows of a running job (rebuilt from the store after a restart)."""

    record: JobRecord
    identifier: bytes
    assembler: bytes
    started: float
    tasks: dict[int, Task] = field(default_factory=dict)
    stages: dict[str, dict[str, float]] = field(default_factory=dict)


class Scheduler(threading.Thread):
    def __init__(self, store: JobStore, control_endpoint: str, work_dir: Path):
        super().__init__(name="scheduler", daemon=True)
        self.store, self.work_dir = store, work_dir
        self.ctx = zmq.Context.instance()
        self.sock = make_socket(self.ctx, zmq.ROUTER)
        self.sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
        # a worker that reconnects keeps its id: its new connection must replace the old one at once,
        # or its re-`hello` is dropped while the ROUTER still holds the dead connection
        self.sock.setsockopt(zmq.ROUTER_HANDOVER, 1)
        self.endpoint = bind(self.sock, control_endpoint)
        self.workers: dict[bytes, Worker] = {}
        self.runs: dict[str, JobRun] = {}
        self.pending: deque[Task] = deque()
        self.commands: queue.Queue[tuple[str, str]] = queue.Queue()
        self.stopping = threading.Event()
        self._last_beat = 0.0
        self._reregister_sent: dict[bytes, float] = {}

    # -- called from gRPC threads -------------------------------------------------------------

    def poke(self) -> None:
        self.commands.put(("poke", ""))

    def cancel(self, job_id: str) -> None:
        self.commands.put(("cancel", job_id))

    def stop(self) -> None:
        self.stopping.set()

    def worker_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for w in list(self.workers.values()):
            counts[w.role] = counts.get(w.role, 0) + 1
        return counts

    # -- the loop ------------------------------------------------------------------------------

    def run(self) -> None:
        for rec in self.store.list(state=RUNNING, limit=100000):
            self.store.update(rec.job_id, state=QUEUED, stage="", fraction=0.0, stages={},
                              warnings=_add(rec.warnings, "the gateway restarted while the job ran; the job ran "
                                                          "again from segmentation"))
        while not self.stopping.is_set():
            if self.sock.poll(int(HEARTBEAT_S * 100), zmq.POLLIN):
                while self.sock.poll(0, zmq.POLLIN):
                    wid, msg = recv(self.sock, routed=True)
                    self._handle(wid, msg)
            self._commands()
            self._heartbeats()
            self._start_queued()
            self._dispatch()
        self.sock.close(linger=200)

    def _commands(self) -> None:
        while True:
            try:
                cmd, job_id = self.commands.get_nowait()
            except queue.Empty:
                return
            if cmd == "cancel":
                self._end(job_id, CANCELLED, "cancelled by request")

    def _handle(self, wid: bytes, msg: Message) -> None:
        now = time.monotonic()
        worker = self.workers.get(wid)
        if msg.type == "hello":
            if worker is not None:
                self._worker_lost(worker, "re-registered")
            self.workers[wid] = Worker(wid, msg["role"], dict(msg.body), now)
            self._reregister_sent.pop(wid, None)
            log.info("%s joined", wid.decode())
            metrics.WORKERS.labels(msg["role"]).inc()
            self._send(wid, Message("registered"))  # a segmenter answers with `ready`: its credit after a reconnect
            return
        if worker is None:  # a worker we declared dead, or one from before a restart: ask it to re-register
            # once a heartbeat: after a restart, a worker's queued messages arrive in a burst, and one
            # `reregister` each would make it reconnect again and again
            if now - self._reregister_sent.get(wid, -HEARTBEAT_S) >= HEARTBEAT_S:
                self._reregister_sent[wid] = now
                self._send(wid, Message("reregister"))
            return
        worker.last_seen = now
        body = msg.body
        if msg.type == "ready":
            worker.credit = int(body.get("credit", 1))
        elif msg.type == "goodbye":
            self._worker_lost(worker, "left")
        elif msg.type == "task_done":
            self._task_done(worker, body)
        elif msg.type == "task_failed":
            self._task_failed(worker, body)
        elif msg.type == "progress":
            self._progress(body["job"], body["stage"], body.get("done", 0), body.get("total", 0),
                           body.get("figures") or {})
        elif msg.type == "job_done":
            self._job_done(body)
        elif msg.type == "job_failed":
            self._end(body["job"], FAILED, body.get("error", "failed"))

    # -- workers -------------------------------------------------------------------------------

    def _heartbeats(self) -> None:
        now = time.monotonic()
        if now - self._last_beat < HEARTBEAT_S:
            return
        self._last_beat = now
        self._reregister_sent = {wid: t for wid, t in self._reregister_sent.items() if now - t < 60}
        for w in list(self.workers.values()):
            if now - w.last_seen > HEARTBEAT_S * LIVENESS:
                self._worker_lost(w, f"missed {LIVENESS} heartbeats")
            else:
                self._send(w.wid, Message("heartbeat"))

    def _worker_lost(self, w: Worker, why: str) -> None:
        log.warning("worker %s lost (%s); re-issuing %d task(s)", w.wid.decode(), why, len(w.tasks))
        self.workers.pop(w.wid, None)
        metrics.WORKERS.labels(w.role).dec()
        if why != "left" and why != "re-registered":
            metrics.HEARTBEATS_LOST.labels(w.role).inc()
        for job_id, index in sorted(w.tasks):
            run = self.runs.get(job_id)
            task = run.tasks.get(index) if run else None
            if task and not task.done:
                task.worker = None
                self.pending.appendleft(task)
                metrics.TASKS_REISSUED.inc()
        for run in list(self.runs.values()):
            if w.wid in (run.identifier, run.assembler):
                self._restart(run, f"{w.role} {w.wid.decode()} was lost ({why})")

    def _send(self, wid: bytes, msg: Message) -> bool:
        try:
            send(self.sock, msg, route=wid)
            return True
        except zmq.ZMQError:  # the peer is gone (ROUTER_MANDATORY) or its queue is full
            return False

    # -- jobs ----------------------------------------------------------------------------------

    def _pick(self, role: str) -> Worker | None:
        """The worker of ``role`` with the fewest pinned running jobs."""
        candidates = [w for w in self.workers.values() if w.role == role]
        if not candidates:
            return None
        load = {w.wid: 0 for w in candidates}
        for run in self.runs.values():
            for wid in (run.identifier, run.assembler):
                if wid in load:
                    load[wid] += 1
        return min(candidates, key=lambda w: (load[w.wid], w.wid))

    def _start_queued(self) -> None:
        busy_assemblers = {r.assembler for r in self.runs.values()}
        for rec in self.store.list(state=QUEUED, limit=16):
            identifier = self._pick("identifier")
            assembler = next((w for w in self.workers.values()
                              if w.role == "assembler" and w.wid not in busy_assemblers), None)
            if identifier is None or assembler is None:
                return
            busy_assemblers.add(assembler.wid)
            self._start(rec, identifier, assembler)

    def _start(self, rec: JobRecord, identifier: Worker, assembler: Worker) -> None:
        try:
            info = probe_video(rec.video_paths)
        except VideoError as exc:
            self.store.update(rec.job_id, state=FAILED, error=str(exc))
            return
        params = rec.params
        chunks = chunk_ranges(info, params.get("frames_per_episode") or 500, params.get("tracking_intervals"))
        job_dir = self.work_dir / "jobs" / rec.job_id
        job_dir.mkdir(parents=True, exist_ok=True)
        plan = json.loads(json.dumps({"video": asdict(info), "chunks": chunks, "job_dir": str(job_dir)}))
        # a job that ran before (gateway restart, lost worker) keeps its probe if the video is unchanged
        probe = rec.plan.get("probe") if all(rec.plan.get(k) == plan[k] for k in plan) else None
        if probe is not None:
            plan["probe"] = probe
        self.store.update(rec.job_id, state=RUNNING, stage="probe", fraction=0.0, error="", plan=plan,
                          warnings=_add(rec.warnings, *info.warnings))
        rec = self.store.get(rec.job_id)
        run = JobRun(rec, identifier.wid, assembler.wid, time.monotonic())
        self.runs[rec.job_id] = run
        log.info("job %s started: %d frames in %d chunks%s", rec.job_id, info.n_frames, len(chunks),
                 "; probe kept from an earlier run" if probe else "")
        metrics.JOBS_STARTED.inc()
        if probe is not None:
            self._probe_done(run, probe)
            return
        task = Task(rec.job_id, -1, {"kind": "probe", "params": params, "video": plan["video"],
                                     "job_dir": str(job_dir)})
        run.tasks[-1] = task
        self.pending.append(task)

    def _restart(self, run: JobRun, why: str) -> None:
        rec = self.store.get(run.record.job_id)
        self._drop(run)
        self.store.update(rec.job_id, state=QUEUED, stage="", fraction=0.0, stages={},
                          warnings=_add(rec.warnings, f"{why}; job restarted"))

    def _drop(self, run: JobRun) -> None:
        self.runs.pop(run.record.job_id, None)
        self.pending = deque(t for t in self.pending if t.job_id != run.record.job_id)
        for w in self.workers.values():
            w.tasks = {k for k in w.tasks if k[0] != run.record.job_id}
        for wid in (run.identifier, run.assembler):
            self._send(wid, Message("close_job", {"job": run.record.job_id}))

    def _end(self, job_id: str, state: str, error: str = "") -> None:
        rec = self.store.get(job_id)
        if rec is None or rec.final:
            return
        run = self.runs.get(job_id)
        if run is not None:
            self._drop(run)
        self.store.update(job_id, state=state, error=error if state != SUCCEEDED else "")
        metrics.JOBS_ENDED.labels(state.lower()).inc()
        metrics.forget_job(job_id)
        log.info("job %s %s %s", job_id, state.lower(), error)

    def _dispatch(self) -> None:
        """Hand pending tasks to segmenters with credit, round-robin over workers and fair between jobs."""
        while self.pending:
            ready = [w for w in self.workers.values() if w.role == "segmenter" and w.credit > 0]
            if not ready:
                return
            worker = min(ready, key=lambda w: (len(w.tasks), w.wid))
            task = self._next_task()
            if task.done or task.job_id not in self.runs:
                continue
            task.attempt += 1
            if task.attempt > MAX_ATTEMPTS:
                what = "the probe" if task.index < 0 else f"chunk {task.index}"
                self._end(task.job_id, FAILED, f"{what} failed {MAX_ATTEMPTS} times; last error: "
                                               f"{task.last_error or 'its worker was lost'}")
                continue
            task.worker = worker.wid
            body = {**task.body, "job": task.job_id, "task": task.index, "attempt": task.attempt}
            if self._send(worker.wid, Message("task", body)):
                worker.credit -= 1
                worker.tasks.add(task.key)
            else:
                self.pending.appendleft(task)
                self._worker_lost(worker, "unreachable")

    def _next_task(self) -> Task:
        """The first pending task of the job with the fewest tasks on segmenters, so that a long job
        cannot hold every segmenter while a short one waits (ties: the older task)."""
        in_flight: dict[str, int] = {}
        for w in self.workers.values():
            for job_id, _ in w.tasks:
                in_flight[job_id] = in_flight.get(job_id, 0) + 1
        first: dict[str, int] = {}
        for i, task in enumerate(self.pending):
            first.setdefault(task.job_id, i)
        i = min(first.values(), key=lambda i: (in_flight.get(self.pending[i].job_id, 0), i))
        task = self.pending[i]
        del self.pending[i]
        return task

    def _task_for(self, worker: Worker, body: dict) -> Task | None:
        run = self.runs.get(body.get("job"))
        task = run.tasks.get(body.get("task")) if run else None
        worker.tasks.discard((body.get("job"), body.get("task")))
        if task is None or task.done or task.attempt != body.get("attempt"):
            return None  # a duplicate or a late answer to a re-issued task
        return task

    def _task_done(self, worker: Worker, body: dict) -> None:
        task = self._task_for(worker, body)
        if task is None:
            return
        task.done = True
        run = self.runs[task.job_id]
        if task.index == -1:
            self._probe_done(run, body["result"])
        else:
            n_chunks = len(run.record.plan["chunks"])
            done = sum(1 for t in run.tasks.values() if t.index >= 0 and t.done)
            frames = body.get("result", {}).get("frames", 0)
            figures = {"frames": run.stages.get("segment", {}).get("figures_frames", 0) + frames}
            run.stages.setdefault("segment", {})["figures_frames"] = figures["frames"]
            self._progress(task.job_id, "segment", done, n_chunks, figures)

    def _task_failed(self, worker: Worker, body: dict) -> None:
        task = self._task_for(worker, body)
        if task is None:
            return
        if body.get("fatal"):
            self._end(task.job_id, FAILED, body.get("error", "task failed"))
        else:
            task.worker = None
            task.last_error = body.get("error", "")
            self.pending.append(task)

    def _probe_done(self, run: JobRun, probe: dict) -> None:
        rec = run.record
        plan = {**rec.plan, "probe": probe}
        warnings = _add(self.store.get(rec.job_id).warnings, *probe.get("warnings", []))
        self.store.update(rec.job_id, plan=plan, warnings=warnings)
        self._progress(rec.job_id, "probe", 1, 1, {"body_length": probe["body_length"]})
        identifier = self.workers.get(run.identifier)
        assembler = self.workers.get(run.assembler)
        if identifier is None or assembler is None:
            self._restart(run, "a pinned worker left before the job started")
            return
        chunks = plan["chunks"]
        self._send(run.assembler, Message("assemble", {
            "job": rec.job_id, "params": rec.params, "plan": plan, "output_dir": rec.output_dir,
            "identifier": identifier.info["requests"],
        }))
        for i, (start, stop) in enumerate(chunks):
            task = Task(rec.job_id, i, {
                "kind": "segment", "start": start, "stop": stop, "n_chunks": len(chunks),
                "params": rec.params, "video": plan["video"], "probe": probe,
                "identifier": identifier.info["batches"], "assembler": assembler.info["geometry"],
            })
            run.tasks[i] = task
            self.pending.append(task)

    def _progress(self, job_id: str, stage: str, done: float, total: float, figures: dict) -> None:
        run = self.runs.get(job_id)
        if run is None:
            return
        fraction = min(1.0, done / total) if total else 0.0
        run.stages[stage] = {**run.stages.get(stage, {}), "done": done, "total": total, "fraction": fraction}
        order = list(STAGE_WEIGHTS)
        for earlier in order[: order.index(stage)] if stage in order else []:
            run.stages.setdefault(earlier, {"done": 1, "total": 1})["fraction"] = 1.0
        overall = sum(STAGE_WEIGHTS[s] * run.stages.get(s, {}).get("fraction", 0.0) for s in STAGE_WEIGHTS)
        rec = self.store.get(job_id)
        self.store.update(job_id, stage=stage, fraction=overall,
                          stages={s: {k: v for k, v in d.items() if not k.startswith("figures_")}
                                  for s, d in run.stages.items()},
                          figures={**rec.figures, **{k: float(v) for k, v in figures.items()
                                                    if isinstance(v, int | float)}})
        metrics.JOB_PROGRESS.labels(job_id, stage).set(fraction)

    def _job_done(self, body: dict) -> None:
        job_id = body["job"]
        run = self.runs.get(job_id)
        if run is None:
            return
        rec = self.store.get(job_id)
        figures = {**rec.figures, **{k: float(v) for k, v in (body.get("figures") or {}).items()
                                     if isinstance(v, int | float)}}
        self.store.update(job_id, figures=figures, warnings=_add(rec.warnings, *body.get("warnings", [])),
                          fraction=1.0, stage="done")
        metrics.JOB_SECONDS.observe(time.monotonic() - run.started)
        self._end(job_id, SUCCEEDED)


def _add(warnings: list[str], *new: str) -> list[str]:
    """``warnings`` plus ``new``, each once: a job that runs again must not repeat its warnings."""
    return list(dict.fromkeys([*warnings, *new]))
