"""The gateway's scheduler: turns jobs into tasks and hands them to workers over ZeroMQ.

Every worker connects a DEALER to the scheduler's control ROUTER and says ``hello`` with its role.
Segmenters ask for work with ``ready`` (credit), so fast workers get more tasks and a worker that
joins mid-job takes work at once (the zguide's load-balancing pattern). Each job is pinned to one
identifier and one assembler. A task stays assigned until its worker reports it done; the tasks of
a worker that misses :data:`~shoal.transport.LIVENESS` heartbeats are re-issued with a higher
``attempt`` and receivers drop duplicates, so a lost worker costs time, never data.

Before a job's chunks are dispatched, its identifier gets ``resume``: it answers with the chunks its
store on the data volume already holds (replaying their geometry to the assembler), and only the
other chunks are segmented. A job whose identifier or assembler is lost pauses for up to
``repin_grace_s`` until a worker of that role (re)registers, then is re-pinned to it and resumed the
same way. Without a replacement in time, the job restarts from the probe.

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
from shoal.v1 import INVALID_INPUT
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
#: weight of the `video` stage (after `write`) per kind of video a job renders; a guess, since
#: rendering runs on one assembler thread while segmentation is spread over the segmenters
VIDEO_WEIGHT = 0.08


def stage_weights(params: dict[str, Any]) -> dict[str, float]:
    """STAGE_WEIGHTS, plus a `video` stage when the job renders videos (the others scaled to make room)."""
    kinds = sum(bool(params.get(key)) for key in ("output_video", "output_individual_videos"))
    if not kinds:
        return STAGE_WEIGHTS
    video = VIDEO_WEIGHT * kinds
    return {**{stage: weight * (1 - video) for stage, weight in STAGE_WEIGHTS.items()}, "video": video}

MAX_ATTEMPTS = 3


@dataclass
class Worker:
    wid: bytes
    role: str
    info: dict[str, Any]
    last_seen: float
    credit: int = 0
    tasks: set[tuple[str, int]] = field(default_factory=set)
    #: chunks this segmenter finished whose batch the identifier has not yet stored (`chunk_stored`)
    unstored: set[tuple[str, int]] = field(default_factory=set)


@dataclass
class Task:
    job_id: str
    index: int  # -1 = probe, else chunk index
    body: dict[str, Any]
    attempt: int = 0
    released: int = 0  # attempts handed back untouched (a stopping segmenter): they do not count as failures
    worker: bytes | None = None
    done: bool = False
    stored: bool = False  # a chunk's batch is in the identifier's store (its `chunk_stored` came)
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
    #: role -> when its pinned worker was lost; the job is paused until a replacement is pinned
    missing: dict[str, float] = field(default_factory=dict)
    #: a `resume` was sent (at `resume_sent`) and its `resume_ack` has not come: the job stays paused
    resuming: bool = False
    resume_sent: float = 0.0
    #: the roles replaced since the last `resume_ack`
    replaced: list[str] = field(default_factory=list)

    @property
    def paused(self) -> bool:
        return bool(self.missing or self.resuming)

    def chunk_tasks(self) -> list[Task]:
        return [self.tasks[i] for i in sorted(self.tasks) if i >= 0]


class Scheduler(threading.Thread):
    def __init__(self, store: JobStore, control_endpoint: str, work_dir: Path, repin_grace_s: float = 60.0):
        super().__init__(name="scheduler", daemon=True)
        self.store, self.work_dir, self.repin_grace_s = store, work_dir, repin_grace_s
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
            self._repin()
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
        elif msg.type == "resume_ack":
            self._resume_ack(worker, body)
        elif msg.type == "chunk_stored":
            self._chunk_stored(body)

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
        self.workers.pop(w.wid, None)
        metrics.WORKERS.labels(w.role).dec()
        died = why not in ("left", "re-registered")  # a live worker's sent batches still reach the identifier
        if died:
            metrics.HEARTBEATS_LOST.labels(w.role).inc()
        reissued, finished = [], 0
        for key in sorted(w.tasks | w.unstored):
            run = self.runs.get(key[0])
            task = run.tasks.get(key[1]) if run else None
            if task is None:
                continue
            if task.stored:  # its batch is safe whatever became of the worker's `task_done`
                task.done, task.worker = True, None
                continue
            held = key in w.tasks and not task.done
            # finished, but the batch may have died with the worker, still in its send queue
            batch_lost = died and key in w.unstored and task.done
            if not (held or batch_lost):
                continue
            finished += batch_lost
            task.done, task.worker = False, None
            self.pending.appendleft(task)
            reissued.append(key[1])
            metrics.TASKS_REISSUED.inc()
        log.warning("worker %s lost (%s); re-issuing %d task(s), %d of them finished but not stored",
                    w.wid.decode(), why, len(reissued), finished)
        for run in list(self.runs.values()):
            for role, wid in (("identifier", run.identifier), ("assembler", run.assembler)):
                if wid == w.wid and role not in run.missing:
                    self._pinned_lost(run, role, f"its {role} {w.wid.decode()} was lost ({why})")

    def _pinned_lost(self, run: JobRun, role: str, why: str) -> None:
        """Pause the job until a worker of ``role`` can take over (see :meth:`_repin`)."""
        if self.repin_grace_s <= 0:
            self._restart(run, why)
            return
        run.missing[role] = time.monotonic()
        if role == "identifier":  # batches of chunks in flight go to the dead identifier: take them back
            self._recall(run, chunks_only=True)
        log.warning("job %s paused: %s; waiting up to %.0f s for a replacement", run.record.job_id, why,
                    self.repin_grace_s)

    def _recall(self, run: JobRun, chunks_only: bool = False) -> None:
        """Take back the job's tasks from the segmenters that hold them (``cancel_task``)."""
        for task in run.tasks.values():
            if task.worker is None or task.done or (chunks_only and task.index < 0):
                continue
            worker = self.workers.get(task.worker)
            if worker is not None:
                worker.tasks.discard(task.key)
                self._send(worker.wid, Message("cancel_task", {"job": task.job_id, "task": task.index,
                                                               "attempt": task.attempt}))
            task.worker = None
            if not any(t is task for t in self.pending):
                self.pending.appendleft(task)

    def _repin(self) -> None:
        """Re-pin paused jobs to replacement workers, or restart those that waited too long; fail those
        whose identifier, alive, has not answered `resume` within the same grace."""
        now = time.monotonic()
        for run in list(self.runs.values()):
            if run.resuming and not run.missing and now - run.resume_sent > self.repin_grace_s:
                self._end(run.record.job_id, FAILED, f"the job's identifier {run.identifier.decode()} did not answer "
                                                     f"`resume` within {self.repin_grace_s:.0f} s while still "
                                                     "heartbeating; restart that identifier and submit the job again")
                continue
            if not run.missing:
                continue
            found = {}
            for role in run.missing:
                worker = self._pick("identifier") if role == "identifier" else self._free_assembler()
                if worker is not None:
                    found[role] = worker
            if len(found) == len(run.missing):
                self._resume(run, found)
            elif now - min(run.missing.values()) > self.repin_grace_s:
                lacking = " or ".join(sorted(set(run.missing) - set(found)))
                self._restart(run, f"no {lacking} registered within {self.repin_grace_s:.0f} s of losing the "
                                   f"job's {lacking}")

    def _free_assembler(self) -> Worker | None:
        busy = {r.assembler for r in self.runs.values() if "assembler" not in r.missing}
        return next((w for w in self.workers.values() if w.role == "assembler" and w.wid not in busy), None)

    def _resume(self, run: JobRun, found: dict[str, Worker]) -> None:
        """Pin ``run`` to its replacement workers. Once chunks are planned, the assembler gets the job
        spec again and the identifier ``resume``; the job stays paused until its ``resume_ack``."""
        job_id = run.record.job_id
        for role, worker in found.items():
            setattr(run, role, worker.wid)
            log.info("job %s: %s %s takes over", job_id, role, worker.wid.decode())
            metrics.JOBS_REPINNED.labels(role).inc()
        run.replaced = sorted({*run.replaced, *found})
        run.missing.clear()
        if run.chunk_tasks():  # else the probe is not done, and `_probe_done` will use the new workers
            self._attach(run)

    def _attach(self, run: JobRun, discard: bool = False) -> None:
        """Give the assembler the job spec and the identifier ``resume``; the job's chunks wait for
        the ``resume_ack``. ``discard``: the probe was computed afresh, so stored chunks of an earlier
        run may not match and the identifier drops them."""
        self._send_assemble(run)
        run.resuming, run.resume_sent = True, time.monotonic()
        self._send(run.identifier, Message("resume", {
            "job": run.record.job_id, "n_chunks": len(run.record.plan["chunks"]),
            "assembler": self.workers[run.assembler].info["geometry"], "discard": discard}))

    def _resume_ack(self, worker: Worker, body: dict) -> None:
        """The identifier says which chunks its store holds: the others are segmented again, except,
        when the identifier itself was kept, those on their way to it (done or still on a segmenter)."""
        run = self.runs.get(body.get("job"))
        if run is None or not run.resuming or run.missing or worker.wid != run.identifier:
            return
        held = set(body.get("chunks", []))
        same_identifier = "identifier" not in run.replaced
        tasks = run.chunk_tasks()
        self.pending = deque(t for t in self.pending if t.job_id != run.record.job_id or t.index < 0)
        again, coming = [], []
        for task in tasks:
            if task.index in held:
                task.done = task.stored = True
            elif task.worker is not None or (task.done and same_identifier):
                coming.append(task.index)
            else:
                task.done = False
                again.append(task)
        self.pending.extendleft(reversed(again))
        if run.replaced:
            metrics.CHUNKS_RESEGMENTED.inc(len(again))
        if again:
            self._segment_progress(run)
        replaced = " and ".join(run.replaced)
        run.resuming, run.replaced = False, []
        rec = self.store.get(run.record.job_id)
        if replaced:
            log.info("job %s resumed after its %s was replaced: %d of %d chunks kept from the data volume; "
                     "segmenting again: %s; on their way to it: %s", rec.job_id, replaced, len(held), len(tasks),
                     [t.index for t in again], coming)
            warning = (f"the job's {replaced} was lost and replaced; {len(held)} of {len(tasks)} chunks were kept "
                       f"from the data volume and {len(again)} segmented again")
        else:
            log.info("job %s: %d of %d chunks already on the data volume", rec.job_id, len(held), len(tasks))
            warning = f"{len(held)} of {len(tasks)} chunks were kept from an earlier run" if held else ""
        if warning:
            self.store.update(rec.job_id, warnings=_add(rec.warnings, warning))

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
        for rec in self.store.list(state=QUEUED, limit=16):
            identifier = self._pick("identifier")
            assembler = self._free_assembler()
            if identifier is None or assembler is None:
                return
            self._start(rec, identifier, assembler)

    def _start(self, rec: JobRecord, identifier: Worker, assembler: Worker) -> None:
        try:
            info = probe_video(rec.video_paths)
        except VideoError as exc:
            self.store.update(rec.job_id, state=FAILED, error=INVALID_INPUT + str(exc))
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
            self._probe_done(run, probe, fresh=False)
            return
        task = Task(rec.job_id, -1, {"kind": "probe", "params": params, "video": plan["video"],
                                     "job_dir": str(job_dir)})
        run.tasks[-1] = task
        self.pending.append(task)

    def _restart(self, run: JobRun, why: str) -> None:
        rec = self.store.get(run.record.job_id)
        self._drop(run)
        log.warning("job %s queued again to restart from the probe: %s", rec.job_id, why)
        self.store.update(rec.job_id, state=QUEUED, stage="", fraction=0.0, stages={},
                          warnings=_add(rec.warnings, f"{why}; job restarted"))

    def _drop(self, run: JobRun) -> None:
        self._recall(run)  # a segmenter may wait for a dead identifier with the job's batch
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
            if task is None:
                return
            if task.done or task.job_id not in self.runs:
                continue
            task.attempt += 1
            if task.attempt - task.released > MAX_ATTEMPTS:
                what = "the probe" if task.index < 0 else f"chunk {task.index}"
                self._end(task.job_id, FAILED, f"{what} failed {MAX_ATTEMPTS} times; last error: "
                                               f"{task.last_error or 'its worker was lost'}")
                continue
            task.worker = worker.wid
            body = {**task.body, "job": task.job_id, "task": task.index, "attempt": task.attempt}
            if task.index >= 0:  # the job's identifier now, which may differ from when the task was made
                body["identifier"] = self.workers[self.runs[task.job_id].identifier].info["batches"]
            if self._send(worker.wid, Message("task", body)):
                worker.credit -= 1
                worker.tasks.add(task.key)
            else:
                task.worker = None
                self.pending.appendleft(task)
                self._worker_lost(worker, "unreachable")

    def _next_task(self) -> Task | None:
        """The first pending task of the job with the fewest tasks on segmenters, so that a long job
        cannot hold every segmenter while a short one waits (ties: the older task). Paused jobs wait."""
        in_flight: dict[str, int] = {}
        for w in self.workers.values():
            for job_id, _ in w.tasks:
                in_flight[job_id] = in_flight.get(job_id, 0) + 1
        first: dict[str, int] = {}
        for i, task in enumerate(self.pending):
            run = self.runs.get(task.job_id)
            if run is None or not run.paused:
                first.setdefault(task.job_id, i)
        if not first:
            return None
        i = min(first.values(), key=lambda i: (in_flight.get(self.pending[i].job_id, 0), i))
        task = self.pending[i]
        del self.pending[i]
        return task

    def _task_for(self, worker: Worker, body: dict) -> Task | None:
        run = self.runs.get(body.get("job"))
        task = run.tasks.get(body.get("task")) if run else None
        worker.tasks.discard((body.get("job"), body.get("task")))
        if task is None or task.done or task.attempt != body.get("attempt") or task.worker != worker.wid:
            return None  # a duplicate, or a late answer to a task re-issued or taken back
        return task

    def _task_done(self, worker: Worker, body: dict) -> None:
        task = self._task_for(worker, body)
        if task is None:
            return
        task.done = True
        task.worker = None
        run = self.runs[task.job_id]
        if task.index == -1:
            self._probe_done(run, body["result"])
        else:
            if not task.stored:
                worker.unstored.add(task.key)
            log.info("job %s: chunk %d segmented by %s", task.job_id, task.index, worker.wid.decode())
            self._segment_progress(run)

    def _chunk_stored(self, body: dict) -> None:
        run = self.runs.get(body.get("job"))
        task = run.tasks.get(body.get("chunk")) if run else None
        if task is None:
            return
        task.stored = True
        for w in self.workers.values():
            w.unstored.discard(task.key)

    def _segment_progress(self, run: JobRun) -> None:
        """Chunks done and their frames (counted from the tasks: a chunk segmented twice counts once)."""
        tasks = run.chunk_tasks()
        done = [t for t in tasks if t.done]
        frames = sum(t.body["stop"] - t.body["start"] for t in done)
        self._progress(run.record.job_id, "segment", len(done), len(tasks), {"frames": frames})

    def _task_failed(self, worker: Worker, body: dict) -> None:
        task = self._task_for(worker, body)
        if task is None:
            return
        task.worker = None
        if body.get("fatal"):  # the video or parameters cannot work: no retry, and the user must change them
            self._end(task.job_id, FAILED, INVALID_INPUT + body.get("error", "task failed"))
        elif body.get("released"):  # given back untouched: first in line, and not a failure
            task.released += 1
            self.pending.appendleft(task)
        else:
            task.last_error = body.get("error", "")
            self.pending.append(task)

    def _probe_done(self, run: JobRun, probe: dict, fresh: bool = True) -> None:
        rec = run.record
        plan = {**rec.plan, "probe": probe}
        warnings = _add(self.store.get(rec.job_id).warnings, *probe.get("warnings", []))
        self.store.update(rec.job_id, plan=plan, warnings=warnings)
        self._progress(rec.job_id, "probe", 1, 1, {"body_length": probe["body_length"]})
        chunks = plan["chunks"]
        for i, (start, stop) in enumerate(chunks):  # endpoints are added at dispatch
            task = Task(rec.job_id, i, {
                "kind": "segment", "start": start, "stop": stop, "n_chunks": len(chunks),
                "params": rec.params, "video": plan["video"], "probe": probe,
            })
            run.tasks[i] = task
            self.pending.append(task)
        if not run.missing:  # else `_resume` does it once the lost worker is replaced
            self._attach(run, discard=fresh)

    def _send_assemble(self, run: JobRun) -> None:
        rec = self.store.get(run.record.job_id)
        self._send(run.assembler, Message("assemble", {
            "job": rec.job_id, "params": rec.params, "plan": rec.plan, "output_dir": rec.output_dir,
            "identifier": self.workers[run.identifier].info["requests"],
            "started_unix": time.time() - (time.monotonic() - run.started),  # session.json's start time
        }))

    def _progress(self, job_id: str, stage: str, done: float, total: float, figures: dict) -> None:
        run = self.runs.get(job_id)
        if run is None:
            return
        fraction = min(1.0, done / total) if total else 0.0
        run.stages[stage] = {**run.stages.get(stage, {}), "done": done, "total": total, "fraction": fraction}
        weights = stage_weights(run.record.params)
        order = list(weights)
        for earlier in order[: order.index(stage)] if stage in order else []:
            run.stages.setdefault(earlier, {"done": 1, "total": 1})["fraction"] = 1.0
        overall = sum(weights[s] * run.stages.get(s, {}).get("fraction", 0.0) for s in weights)
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
        if run.chunk_tasks():  # the assembler had every chunk, even if the last `task_done` is still on its way
            figures["frames"] = float(sum(t.body["stop"] - t.body["start"] for t in run.chunk_tasks()))
        self.store.update(job_id, figures=figures, warnings=_add(rec.warnings, *body.get("warnings", [])),
                          fraction=1.0, stage="done")
        metrics.JOB_SECONDS.observe(time.monotonic() - run.started)
        self._end(job_id, SUCCEEDED)


def _add(warnings: list[str], *new: str) -> list[str]:
    """``warnings`` plus ``new``, each once: a job that runs again must not repeat its warnings."""
    return list(dict.fromkeys([*warnings, *new]))
