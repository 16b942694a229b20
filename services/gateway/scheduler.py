"""The gateway's scheduler: the thread that owns the control ROUTER socket and wires the worker
registry (:mod:`.workers`), task dispatch (:mod:`.dispatch`) and the job state machine
(:mod:`.lifecycle`) to the messages workers send.

Every worker connects a DEALER to the control ROUTER and says ``hello`` with its role. Segmenters
ask for work with ``ready`` (credit), so fast workers get more tasks and a worker that joins mid-job
takes work at once (the zguide's load-balancing pattern). Each job is pinned to one identifier and
one assembler; a worker that misses :data:`~shoal.transport.LIVENESS` heartbeats is lost, and its
tasks are re-issued.

Job flow: ``probe`` task (background, body length, crop size) -> one ``segment`` task per chunk
(segmenter -> identifier -> assembler) -> the assembler tracks and writes the session folder and
says ``job_done``.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import zmq

from shoal.codec import Message, message
from shoal.messages import Heartbeat, Registered, Reregister
from shoal.transport import HEARTBEAT_S, LIVENESS, bind, make_socket, recv, send

from . import metrics
from .jobstore import CANCELLED, FAILED, JobStore
from .lifecycle import Lifecycle
from .workers import Registry

log = logging.getLogger("shoal.gateway")


@dataclass(frozen=True)
class Snapshot:
    """What other threads (the metrics scrape) may read of the scheduler, copied at one instant."""

    #: tasks waiting for a segmenter
    pending: int
    #: each running job's start (``time.monotonic()``)
    started: dict[str, float]


class Scheduler(threading.Thread):
    def __init__(self, store: JobStore, control_endpoint: str, work_dir: Path, repin_grace_s: float = 60.0):
        super().__init__(name="scheduler", daemon=True)
        self.store = store
        self.ctx = zmq.Context.instance()
        self.sock = make_socket(self.ctx, zmq.ROUTER)
        self.sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
        # a worker that reconnects keeps its id: its new connection must replace the old one at once,
        # or its re-`hello` is dropped while the ROUTER still holds the dead connection
        self.sock.setsockopt(zmq.ROUTER_HANDOVER, 1)
        self.endpoint = bind(self.sock, control_endpoint)
        self.registry = Registry(HEARTBEAT_S, LIVENESS)
        self.jobs = Lifecycle(store, self.registry, work_dir, repin_grace_s, self._send)
        self.commands: queue.Queue[tuple[str, str]] = queue.Queue()
        self.stopping = threading.Event()

    # -- called from other threads -------------------------------------------------------------

    def poke(self) -> None:
        self.commands.put(("poke", ""))

    def cancel(self, job_id: str) -> None:
        self.commands.put(("cancel", job_id))

    def stop(self) -> None:
        self.stopping.set()

    def snapshot(self) -> Snapshot:
        runs = dict(self.jobs.runs)  # one C-level copy: the scheduler thread may change it meanwhile
        return Snapshot(pending=len(self.jobs.pending), started={job_id: run.started for job_id, run in runs.items()})

    # -- the loop ------------------------------------------------------------------------------

    def run(self) -> None:
        self.jobs.requeue_interrupted()
        while not self.stopping.is_set():
            if self.sock.poll(int(HEARTBEAT_S * 100), zmq.POLLIN):
                while self.sock.poll(0, zmq.POLLIN):
                    wid, msg = recv(self.sock, routed=True)
                    if msg is not None:
                        self._handle(wid, msg)
            self._commands()
            self._heartbeats()
            self.jobs.repin()
            self.jobs.start_queued()
            self.jobs.dispatch()
        self.sock.close(linger=200)

    def _commands(self) -> None:
        while True:
            try:
                cmd, job_id = self.commands.get_nowait()
            except queue.Empty:
                return
            if cmd == "cancel":
                self.jobs.end(job_id, CANCELLED, "cancelled by request")

    def _handle(self, wid: bytes, msg: Message) -> None:
        now = time.monotonic()
        worker = self.registry.get(wid)
        if msg.type == "hello":
            if worker is not None:
                self.jobs.worker_lost(worker, "re-registered")
            self.registry.register(wid, msg["role"], dict(msg.body), now)
            log.info("%s joined", wid.decode())
            metrics.WORKERS.labels(msg["role"]).inc()
            self._send(wid, message(Registered()))  # a segmenter answers with `ready`: its credit after a reconnect
            return
        if worker is None:  # a worker we declared dead, or one from before a restart: ask it to re-register
            if self.registry.should_reregister(wid, now):
                self._send(wid, message(Reregister()))
            return
        worker.last_seen = now
        body = msg.body
        if msg.type == "ready":
            worker.credit = int(body.get("credit", 1))
        elif msg.type == "goodbye":
            self.jobs.worker_lost(worker, "left")
        elif msg.type == "task_done":
            self.jobs.task_done(worker, body)
        elif msg.type == "task_failed":
            self.jobs.task_failed(worker, body)
        elif msg.type == "progress":
            self.jobs.progress(body["job"], body["stage"], body.get("done", 0), body.get("total", 0),
                               body.get("figures") or {})
        elif msg.type == "job_done":
            self.jobs.job_done(body)
        elif msg.type == "job_failed":
            self.jobs.end(body["job"], FAILED, body.get("error", "failed"))
        elif msg.type == "resume_ack":
            self.jobs.resume_ack(worker, body)
        elif msg.type == "chunk_stored":
            self.jobs.chunk_stored(body)

    def _heartbeats(self) -> None:
        now = time.monotonic()
        if not self.registry.beat_due(now):
            return
        for w in list(self.registry.workers.values()):
            if self.registry.silent(w, now):
                self.jobs.worker_lost(w, f"missed {LIVENESS} heartbeats")
            else:
                self._send(w.wid, message(Heartbeat()))

    def _send(self, wid: bytes, msg: Message) -> bool:
        try:
            send(self.sock, msg, route=wid)
            return True
        except zmq.ZMQError:  # the peer is gone (ROUTER_MANDATORY) or its queue is full
            return False
