"""``shoal-segmenter``: asks the gateway for tasks, segments frames, streams blob batches.

Stateless: everything a task needs travels in the task or lies on the shared data volume, so any
number of segmenters can run on any hosts and a killed one only costs its current task.
"""

from __future__ import annotations

import queue
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import zmq
from prometheus_client import Counter, Gauge, Histogram, start_http_server

from shoal.codec import Message
from shoal.config import parse_config, setup_logging
from shoal.params import ParamError, TrackingParams
from shoal.transport import DATA_HWM, ControlChannel, make_socket, send
from shoal.video import VideoError, VideoInfo

from .roi import RoiError
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


@dataclass
class SegmenterConfig:
    gateway: str = field(default="tcp://127.0.0.1:5555", metadata={"help": "gateway control endpoint"})
    credit: int = field(default=1, metadata={"help": "tasks this worker may hold at once"})
    metrics_port: int = field(default=9101, metadata={"help": "Prometheus /metrics port (0 = any free, -1 = off)"})


class Segmenter:
    """The main thread owns the control socket and heartbeats; tasks run on worker threads (one per
    unit of credit) and hand their reports back through ``outbox``."""

    def __init__(self, cfg: SegmenterConfig, log):
        self.cfg, self.log = cfg, log
        self.ctx = zmq.Context.instance()
        self.control = ControlChannel(self.ctx, cfg.gateway, "segmenter")
        self.tasks: queue.Queue[dict | None] = queue.Queue()
        self.outbox: queue.Queue[Message] = queue.Queue()
        self.busy = 0
        self.stopping = False
        self.threads = [threading.Thread(target=self._work, name=f"task-{i}", daemon=True)
                        for i in range(cfg.credit)]
        for t in self.threads:
            t.start()

    def _ask(self) -> None:
        if self.cfg.credit - self.busy > 0:
            self.control.send(Message("ready", {"credit": self.cfg.credit - self.busy}))

    def run(self) -> None:
        self._ask()
        while not self.stopping:
            msg = self.control.poll(100)
            if msg is not None and msg.type == "task":
                self.busy += 1
                self.tasks.put(msg.body)
            elif msg is not None and msg.type == "registered":
                self._ask()
            while not self.outbox.empty():
                self.control.send(self.outbox.get())
                self.busy -= 1
                self._ask()
        for _ in self.threads:
            self.tasks.put(None)
        for t in self.threads:  # SIGTERM: finish the current task, then leave (Kubernetes-friendly)
            t.join()
        while not self.outbox.empty():
            self.control.send(self.outbox.get())
        self.control.close()

    def _work(self) -> None:
        pushers: dict[str, zmq.Socket] = {}
        while (task := self.tasks.get()) is not None:
            with IN_FLIGHT.track_inprogress():
                self.outbox.put(self.handle(task, pushers))
        for sock in pushers.values():
            sock.close(linger=1000)

    def handle(self, task: dict, pushers: dict[str, zmq.Socket]) -> Message:
        ref = {"job": task["job"], "task": task["task"], "attempt": task["attempt"]}
        try:
            params = TrackingParams.from_dict(task["params"])
            info = VideoInfo(**task["video"])
            if task["kind"] == "probe":
                result = probe(info, params, Path(task["job_dir"])).to_dict()
            else:
                result = self.segment(task, info, params, pushers)
        except FATAL as exc:
            self.log.warning("task %s of job %s failed: %s", ref["task"], ref["job"], exc)
            return Message("task_failed", {**ref, "error": str(exc), "fatal": True})
        except Exception as exc:  # an unexpected bug: report it, let the gateway retry elsewhere
            self.log.exception("task %s of job %s crashed", ref["task"], ref["job"])
            return Message("task_failed", {**ref, "error": f"segmenter crashed: {exc!r}"})
        return Message("task_done", {**ref, "result": result})

    def segment(self, task: dict, info: VideoInfo, params: TrackingParams, pushers: dict[str, zmq.Socket]) -> dict:
        t0 = time.perf_counter()
        start, stop = task["start"], task["stop"]
        table, crops = segment_chunk(info, params, Probe.from_dict(task["probe"]), start, stop)
        arrays = {**table.arrays(), "crops": crops}
        body = {"job": task["job"], "chunk": task["task"], "attempt": task["attempt"], "start": start,
                "stop": stop, "n_chunks": task["n_chunks"], "assembler": task["assembler"]}
        if task["identifier"] not in pushers:
            pushers[task["identifier"]] = make_socket(self.ctx, zmq.PUSH, hwm=DATA_HWM)
            pushers[task["identifier"]].connect(task["identifier"])
        sock = pushers[task["identifier"]]
        while not sock.poll(1000, zmq.POLLOUT):  # backpressure: a busy identifier slows this worker down
            if self.stopping:
                raise RuntimeError("stopped while the identifier was not accepting batches")
        send(sock, Message("blob_batch", body, arrays))
        n_frames = stop - start
        FRAMES.inc(n_frames)
        PIXELS.inc(n_frames * info.width * info.height / 1e6)
        BLOBS.inc(len(table))
        CROPS.inc(len(crops))
        TASK_SECONDS.observe(time.perf_counter() - t0)
        return {"frames": n_frames, "blobs": len(table)}


def main(argv: list[str] | None = None) -> int:
    cfg = parse_config(SegmenterConfig, argv, "Shoal segmenter: background, blobs, identification images")
    log = setup_logging("segmenter")
    if cfg.metrics_port >= 0:
        start_http_server(cfg.metrics_port)
    worker = Segmenter(cfg, log)

    def stop(*_):
        worker.stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    log.info("segmenter %s connected to %s", worker.control.worker_id, cfg.gateway)
    worker.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
