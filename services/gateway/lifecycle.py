"""The job state machine: starting a job, its probe and chunk tasks, lost workers, the re-pin
protocol, progress and the job's end. It owns the running jobs and the pending tasks, and talks to
workers only through the ``send`` it is given, so it runs (and is tested) without ZeroMQ.

A task stays assigned until its worker reports it done; the tasks of a lost worker are re-issued
with a higher ``attempt`` and receivers drop duplicates, so a lost worker costs time, never data.
Before a job's chunks are dispatched, its identifier gets ``resume``: it answers with the chunks its
store on the data volume already holds (replaying their geometry to the assembler), and only the
other chunks are segmented. A job whose identifier or assembler is lost pauses for up to
``repin_grace_s`` until a worker of that role (re)registers, then is re-pinned to it and resumed the
same way. Without a replacement in time, the job restarts from the probe.
"""

from __future__ import annotations

import json
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from shoal.chunks import chunk_ranges
from shoal.codec import Message, message
from shoal.messages import Assemble, CancelTask, CloseJob, Resume
from shoal.messages import Task as TaskMessage
from shoal.v1 import INVALID_INPUT
from shoal.video import VideoError, probe_video

from . import metrics
from .dispatch import choose_segmenter, in_flight, next_task
from .jobrun import MAX_ATTEMPTS, JobRun, Task, add_warnings
from .jobstore import FAILED, QUEUED, RUNNING, SUCCEEDED, JobRecord, JobStore
from .progress import advance, numeric, stage_weights, stored
from .workers import Registry, Worker

log = logging.getLogger("shoal.gateway")


class Lifecycle:
    """Running jobs (``runs``) and the tasks waiting for a segmenter (``pending``); ``send(wid, msg)``
    delivers a message to a worker and says whether it could."""

    def __init__(self, store: JobStore, registry: Registry, work_dir: Path, repin_grace_s: float,
                 send: Callable[[bytes, Message], bool]):
        self.store, self.registry, self.work_dir, self.repin_grace_s = store, registry, work_dir, repin_grace_s
        self._send = send
        self.runs: dict[str, JobRun] = {}
        self.pending: deque[Task] = deque()

    def requeue_interrupted(self) -> None:
        """Queue again the jobs that were running when the gateway stopped."""
        for rec in self.store.list(state=RUNNING, limit=100000):
            self.store.update(rec.job_id, state=QUEUED, stage="", fraction=0.0, stages={},
                              warnings=add_warnings(rec.warnings, "the gateway restarted while the job ran; the job "
                                                                  "ran again from segmentation"))

    # -- workers -------------------------------------------------------------------------------

    def worker_lost(self, w: Worker, why: str) -> None:
        self.registry.remove(w.wid)
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
        """Pause the job until a worker of ``role`` can take over (see :meth:`repin`)."""
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
            worker = self.registry.get(task.worker)
            if worker is not None:
                worker.tasks.discard(task.key)
                self._send(worker.wid, message(CancelTask(job=task.job_id, task=task.index, attempt=task.attempt)))
            task.worker = None
            if not any(t is task for t in self.pending):
                self.pending.appendleft(task)

    # -- the re-pin protocol -------------------------------------------------------------------

    def repin(self) -> None:
        """Re-pin paused jobs to replacement workers, or restart those that waited too long; fail those
        whose identifier, alive, has not answered `resume` within the same grace."""
        now = time.monotonic()
        for run in list(self.runs.values()):
            if run.resuming and not run.missing and now - run.resume_sent > self.repin_grace_s:
                self.end(run.record.job_id, FAILED, f"the job's identifier {run.identifier.decode()} did not answer "
                                                    f"`resume` within {self.repin_grace_s:.0f} s while still "
                                                    "heartbeating; restart that identifier and submit the job again")
                continue
            if not run.missing:
                continue
            found = {}
            for role in run.missing:
                worker = self._pick_identifier() if role == "identifier" else self._free_assembler()
                if worker is not None:
                    found[role] = worker
            if len(found) == len(run.missing):
                self._resume(run, found)
            elif now - min(run.missing.values()) > self.repin_grace_s:
                lacking = " or ".join(sorted(set(run.missing) - set(found)))
                self._restart(run, f"no {lacking} registered within {self.repin_grace_s:.0f} s of losing the "
                                   f"job's {lacking}")

    def _pick_identifier(self) -> Worker | None:
        """The identifier with the fewest pinned running jobs."""
        return self.registry.pick("identifier", (wid for run in self.runs.values()
                                                 for wid in (run.identifier, run.assembler)))

    def _free_assembler(self) -> Worker | None:
        busy = {r.assembler for r in self.runs.values() if "assembler" not in r.missing}
        return self.registry.free("assembler", busy)

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
        self._send(run.identifier, message(Resume(
            job=run.record.job_id, n_chunks=len(run.record.plan["chunks"]),
            assembler=self.registry.workers[run.assembler].info["geometry"], discard=discard)))

    def resume_ack(self, worker: Worker, body: dict) -> None:
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
            self.store.update(rec.job_id, warnings=add_warnings(rec.warnings, warning))

    # -- jobs ----------------------------------------------------------------------------------

    def start_queued(self) -> None:
        for rec in self.store.list(state=QUEUED, limit=16):
            identifier = self._pick_identifier()
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
        # and the probe records the animals (older versions left counting them to the assembler)
        probe = rec.plan.get("probe") if all(rec.plan.get(k) == plan[k] for k in plan) else None
        if probe is not None and "n_animals" not in probe:
            probe = None
        if probe is not None:
            plan["probe"] = probe
        self.store.update(rec.job_id, state=RUNNING, stage="probe", fraction=0.0, error="", plan=plan,
                          warnings=add_warnings(rec.warnings, *info.warnings))
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
                          warnings=add_warnings(rec.warnings, f"{why}; job restarted"))

    def _drop(self, run: JobRun) -> None:
        self._recall(run)  # a segmenter may wait for a dead identifier with the job's batch
        self.runs.pop(run.record.job_id, None)
        self.pending = deque(t for t in self.pending if t.job_id != run.record.job_id)
        self.registry.forget_job(run.record.job_id)
        for wid in (run.identifier, run.assembler):
            self._send(wid, message(CloseJob(job=run.record.job_id)))

    def end(self, job_id: str, state: str, error: str = "") -> None:
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

    # -- tasks ---------------------------------------------------------------------------------

    def dispatch(self) -> None:
        """Hand pending tasks to segmenters with credit, round-robin over workers and fair between jobs."""
        while self.pending:
            worker = choose_segmenter(self.registry.workers.values())
            if worker is None:
                return
            task = next_task(self.pending, in_flight(self.registry.workers.values()), self._paused)
            if task is None:
                return
            if task.done or task.job_id not in self.runs:
                continue
            task.attempt += 1
            if task.attempt - task.released > MAX_ATTEMPTS:
                what = "the probe" if task.index < 0 else f"chunk {task.index}"
                self.end(task.job_id, FAILED, f"{what} failed {MAX_ATTEMPTS} times; last error: "
                                              f"{task.last_error or 'its worker was lost'}")
                continue
            task.worker = worker.wid
            body = {**task.body, "job": task.job_id, "task": task.index, "attempt": task.attempt}
            if task.index >= 0:  # the job's identifier now, which may differ from when the task was made
                body["identifier"] = self.registry.workers[self.runs[task.job_id].identifier].info["batches"]
            if self._send(worker.wid, message(TaskMessage(**body))):
                worker.credit -= 1
                worker.tasks.add(task.key)
            else:
                task.worker = None
                self.pending.appendleft(task)
                self.worker_lost(worker, "unreachable")

    def _paused(self, job_id: str) -> bool:
        run = self.runs.get(job_id)
        return run is not None and run.paused

    def _task_for(self, worker: Worker, body: dict) -> Task | None:
        run = self.runs.get(body.get("job"))
        task = run.tasks.get(body.get("task")) if run else None
        worker.tasks.discard((body.get("job"), body.get("task")))
        if task is None or task.done or task.attempt != body.get("attempt") or task.worker != worker.wid:
            return None  # a duplicate, or a late answer to a task re-issued or taken back
        return task

    def task_done(self, worker: Worker, body: dict) -> None:
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

    def chunk_stored(self, body: dict) -> None:
        run = self.runs.get(body.get("job"))
        task = run.tasks.get(body.get("chunk")) if run else None
        if task is None:
            return
        task.stored = True
        self.registry.stored(task.key)

    def _segment_progress(self, run: JobRun) -> None:
        """Chunks done and their frames (counted from the tasks: a chunk segmented twice counts once)."""
        tasks = run.chunk_tasks()
        done = [t for t in tasks if t.done]
        frames = sum(t.frames for t in done)
        self.progress(run.record.job_id, "segment", len(done), len(tasks), {"frames": frames})

    def task_failed(self, worker: Worker, body: dict) -> None:
        task = self._task_for(worker, body)
        if task is None:
            return
        task.worker = None
        if body.get("fatal"):  # the video or parameters cannot work: no retry, and the user must change them
            self.end(task.job_id, FAILED, INVALID_INPUT + body.get("error", "task failed"))
        elif body.get("released"):  # given back untouched: first in line, and not a failure
            task.released += 1
            self.pending.appendleft(task)
        else:
            task.last_error = body.get("error", "")
            self.pending.append(task)

    def _probe_done(self, run: JobRun, probe: dict, fresh: bool = True) -> None:
        rec = run.record
        plan = {**rec.plan, "probe": probe}
        warnings = add_warnings(self.store.get(rec.job_id).warnings, *probe.get("warnings", []))
        self.store.update(rec.job_id, plan=plan, warnings=warnings)
        self.progress(rec.job_id, "probe", 1, 1, {"body_length": probe["body_length"]})
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
        self._send(run.assembler, message(Assemble(
            job=rec.job_id, params=rec.params, plan=rec.plan, output_dir=rec.output_dir,
            identifier=self.registry.workers[run.identifier].info["requests"],
            started_unix=time.time() - (time.monotonic() - run.started),  # session.json's start time
        )))

    # -- progress and the end ------------------------------------------------------------------

    def progress(self, job_id: str, stage: str, done: float, total: float, figures: dict[str, Any]) -> None:
        run = self.runs.get(job_id)
        if run is None:
            return
        fraction, overall = advance(run.stages, stage_weights(run.record.params), stage, done, total)
        rec = self.store.get(job_id)
        self.store.update(job_id, stage=stage, fraction=overall, stages=stored(run.stages),
                          figures={**rec.figures, **numeric(figures)})
        metrics.JOB_PROGRESS.labels(job_id, stage).set(fraction)

    def job_done(self, body: dict) -> None:
        job_id = body["job"]
        run = self.runs.get(job_id)
        if run is None:
            return
        rec = self.store.get(job_id)
        figures = {**rec.figures, **numeric(body.get("figures") or {})}
        if run.chunk_tasks():  # the assembler had every chunk, even if the last `task_done` is still on its way
            figures["frames"] = float(sum(t.frames for t in run.chunk_tasks()))
        self.store.update(job_id, figures=figures, warnings=add_warnings(rec.warnings, *body.get("warnings", [])),
                          fraction=1.0, stage="done")
        metrics.JOB_SECONDS.observe(time.monotonic() - run.started)
        self.end(job_id, SUCCEEDED)
