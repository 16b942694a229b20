"""``shoal-segmenter``: asks the gateway for tasks, segments frames, streams blob batches.

Stateless: everything a task needs travels in the task or lies on the shared data volume, so any
number of segmenters can run on any hosts and a killed one only costs its current task.

On SIGTERM it takes no more work (``ready`` with credit 0), finishes the tasks it holds while it
keeps heartbeating, hands back a task that arrives meanwhile, says ``goodbye`` and exits 0.
"""

from __future__ import annotations

import queue
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import zmq
from prometheus_client import Counter, Gauge, Histogram

from services.worker import run_worker
from shoal import curve
from shoal.codec import Message, message
from shoal.config import parse_config
from shoal.messages import BlobBatch, Ready, TaskDone, TaskFailed
from shoal.params import ParamError, TrackingParams
from shoal.roi import RoiError
from shoal.transport import DATA_HWM, ControlChannel, connect, make_socket, send
from shoal.video import VideoError, VideoInfo

from .work import Probe, SegmentationError, probe, segment_chunk

FRAMES = Counter("shoal_frames_segmented_total", "Frames segmented")
PIXELS = Counter("shoal_megapixels_segmented_total", "Megapixels segmented")
BLOBS = Counter("shoal_blobs_total", "Blobs found")
CROPS = Counter("shoal_crops_produced_total", "Identification images produced")
TASK_SECONDS = Histogram("shoal_segment_task_duration_seconds", "Time to segment one chunk and send it",
                         buckets=(0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 40, 80, 160))
IN_FLIGHT = Gauge("shoal_segment_tasks_in_flight", "Tasks this segmenter is working on")

#: errors that no retry can fix: the job fails with the message
FATAL = (VideoError, SegmentationError, RoiError, ParamError)
#: at shutdown, how long a batch already handed to ZeroMQ may take to reach its identifier
STOP_LINGER_MS = 10_000


class TaskReleased(Exception):
    """The task is given back unfinished (cancelled by the gateway, or this worker is stopping)."""


@dataclass
class SegmenterConfig:
    gateway: str = field(default="tcp://127.0.0.1:5555", metadata={"help": "gateway control endpoint"})
    credit: int = field(default=1, metadata={"help": "tasks this worker may hold at once"})
    metrics_port: int = field(default=9101, metadata={"help": "Prometheus /metrics port (0 = any free, -1 = off)"})
    curve_keys: str = field(default="", metadata={"help": curve.KEYS_HELP})
    pusher_idle_s: float = field(default=60.0, metadata={
        "help": "close the socket to an identifier that no task has named for this long (s)"})


class Pushers:
    """One PUSH socket per identifier endpoint that a task named lately, for one worker thread.

    A job moved to a new identifier (its old one lost) names the new endpoint in its tasks; the
    socket to the old one, with batches it could not deliver, would otherwise stay open until the
    segmenter exits. A socket no task named for ``idle_s`` is closed: what it still holds had no
    ``chunk_stored``, so the gateway has re-issued it, and a live identifier is connected again on
    its next task.
    """

    def __init__(self, ctx: zmq.Context, idle_s: float, clock=time.monotonic):
        self.ctx, self.idle_s, self.clock = ctx, idle_s, clock
        self.sockets: dict[str, zmq.Socket] = {}
        self.named: dict[str, float] = {}

    def get(self, endpoint: str) -> zmq.Socket:
        self.named[endpoint] = self.clock()
        self.prune()
        if endpoint not in self.sockets:
            self.sockets[endpoint] = make_socket(self.ctx, zmq.PUSH, hwm=DATA_HWM)
            connect(self.sockets[endpoint], endpoint)
        return self.sockets[endpoint]

    def prune(self) -> None:
        now = self.clock()
        for endpoint in [e for e, t in self.named.items() if now - t > self.idle_s]:
            del self.named[endpoint]
            if (sock := self.sockets.pop(endpoint, None)) is not None:
                sock.close(linger=0)

    def close(self, linger_ms: int) -> None:
        for sock in self.sockets.values():
            sock.close(linger=linger_ms)
        self.sockets.clear()


class Segmenter:
    """The main thread owns the control socket and heartbeats; tasks run on worker threads (one per
    unit of credit) and hand their reports back through ``outbox``."""

    def __init__(self, cfg: SegmenterConfig, log):
        self.cfg, self.log = cfg, log
        self.ctx = zmq.Context.instance()
        self.control = ControlChannel(self.ctx, cfg.gateway, "segmenter")
        self.tasks: queue.Queue[dict | None] = queue.Queue()
        self.outbox: queue.Queue[Message] = queue.Queue()
        #: (job, task, attempt) the gateway took back (`cancel_task`): their batch would go nowhere
        self.cancelled: set[tuple[str, int, int]] = set()
        self.busy = 0
        self.stopping = False
        self.threads = [threading.Thread(target=self._work, name=f"task-{i}", daemon=True)
                        for i in range(cfg.credit)]
        for t in self.threads:
            t.start()
        log.info("segmenter %s connected to %s", self.control.worker_id, cfg.gateway)

    def _ask(self) -> None:
        if self.cfg.credit - self.busy > 0 and not self.stopping:
            self.control.send(message(Ready(credit=self.cfg.credit - self.busy)))

    def run(self) -> None:
        """Serve until SIGTERM, then until the tasks held are finished (heartbeating all along)."""
        self._ask()
        quitting = False
        while True:
            if self.stopping and not quitting:  # logged even when idle, so the log always says why it left
                quitting = True
                self.log.info("stopping: finishing %d task(s), taking no more", self.busy)
                self.control.send(message(Ready(credit=0)))
            if self.stopping and self.busy == 0:
                break
            msg = self.control.poll(100)
            if msg is not None and msg.type == "task":
                if self.stopping:  # sent before the gateway saw credit 0: give it back untouched
                    self.control.send(message(TaskFailed(**_ref(msg.body), error="segmenter stopping", released=True)))
                else:
                    self.busy += 1
                    self.tasks.put(msg.body)
            elif msg is not None and msg.type == "registered":
                self._ask()
            elif msg is not None and msg.type == "cancel_task":
                self.cancelled.add((msg["job"], msg["task"], msg["attempt"]))
            while not self.outbox.empty():
                self.control.send(self.outbox.get())
                self.busy -= 1
                self._ask()
        for _ in self.threads:
            self.tasks.put(None)
        for t in self.threads:
            t.join()
        self.control.close()

    def _work(self) -> None:
        pushers = Pushers(self.ctx, self.cfg.pusher_idle_s)
        while True:
            try:
                task = self.tasks.get(timeout=self.cfg.pusher_idle_s)
            except queue.Empty:  # idle: let go of identifiers no task names any more
                pushers.prune()
                continue
            if task is None:
                break
            with IN_FLIGHT.track_inprogress():
                self.outbox.put(self.handle(task, pushers))
        pushers.close(STOP_LINGER_MS)

    def _check(self, task: dict) -> None:
        """Raise :class:`TaskReleased` if the gateway took the task back or the worker must stop now."""
        key = (task["job"], task["task"], task["attempt"])
        if key in self.cancelled:
            self.cancelled.discard(key)
            raise TaskReleased("cancelled by the gateway")

    def handle(self, task: dict, pushers: Pushers) -> Message:
        ref = _ref(task)
        try:
            self._check(task)
            params = TrackingParams.from_dict(task["params"])
            info = VideoInfo(**task["video"])
            if task["kind"] == "probe":
                result = probe(info, params, Path(task["job_dir"])).to_dict()
            else:
                result = self.segment(task, info, params, pushers)
        except TaskReleased as exc:
            self.log.info("task %s of job %s given back: %s", ref["task"], ref["job"], exc)
            return message(TaskFailed(**ref, error=str(exc), released=True))
        except FATAL as exc:
            self.log.warning("task %s of job %s failed: %s", ref["task"], ref["job"], exc)
            return message(TaskFailed(**ref, error=str(exc), fatal=True))
        except Exception as exc:  # an unexpected bug: report it, let the gateway retry elsewhere
            self.log.exception("task %s of job %s crashed", ref["task"], ref["job"])
            return message(TaskFailed(**ref, error=f"segmenter crashed: {exc!r}"))
        return message(TaskDone(**ref, result=result))

    def segment(self, task: dict, info: VideoInfo, params: TrackingParams, pushers: Pushers) -> dict:
        t0 = time.perf_counter()
        start, stop = task["start"], task["stop"]
        table, crops = segment_chunk(info, params, Probe.from_dict(task["probe"]), start, stop)
        batch = message(BlobBatch(job=task["job"], chunk=task["task"], start=start,
                                  stop=stop, n_chunks=task["n_chunks"]), {**table.arrays(), "crops": crops})
        sock = pushers.get(task["identifier"])
        while not sock.poll(200, zmq.POLLOUT):  # backpressure: a busy identifier slows this worker down
            self._check(task)
            if self.stopping:
                raise TaskReleased("stopping while the identifier was not accepting batches")
        self._check(task)
        send(sock, batch)
        n_frames = stop - start
        FRAMES.inc(n_frames)
        PIXELS.inc(n_frames * info.width * info.height / 1e6)
        BLOBS.inc(len(table))
        CROPS.inc(len(crops))
        TASK_SECONDS.observe(time.perf_counter() - t0)
        return {"frames": n_frames, "blobs": len(table)}


def _ref(task: dict) -> dict:
    return {"job": task["job"], "task": task["task"], "attempt": task["attempt"]}


def main(argv: list[str] | None = None) -> int:
    cfg = parse_config(SegmenterConfig, argv, "Shoal segmenter: background, blobs, identification images")
    worker = run_worker("segmenter", cfg, Segmenter)
    worker.ctx.term()  # waits (up to STOP_LINGER_MS) for the last batches to leave
    return 0


if __name__ == "__main__":
    sys.exit(main())
