"""``shoal-identifier``: stores each job's chunks (identification images and geometry) on the data
volume, forwards the geometry to the job's assembler, and answers the assembler's training and
prediction requests (GPU when present, CPU otherwise, same code).

Sockets: ``batches`` (PULL, small high-water mark: a busy identifier slows the segmenters),
``requests`` (ROUTER: assemblers' DEALERs), one geometry PUSH per assembler, and the control DEALER
to the gateway. Geometry waits in a short queue per assembler until its socket can take it, so a
dead or slow assembler never blocks the main thread (and its heartbeats); while that queue is full
no batch is read, which passes the backpressure on to the segmenters.

Before a job's chunks are segmented, and again after this process or the job's assembler was
replaced, the gateway sends ``resume``: it names the job's assembler (geometry goes nowhere else),
and the identifier replays the geometry of every chunk the job's store holds there and answers
with those chunks, so only the others are segmented.
"""

from __future__ import annotations

import math
import queue
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import torch
import zmq
from prometheus_client import Counter, Gauge, Histogram

from services.worker import run_worker
from shoal import curve
from shoal.codec import Message, message, pack, unpack
from shoal.config import parse_config
from shoal.identity_requests import CrossingRequest, IdentityRequest
from shoal.messages import ChunkGeometry, ChunkStored, Error, RequestProgress, ResumeAck
from shoal.transport import DATA_HWM, ControlChannel, bind, connect, make_socket, recv, send

from .image_store import ImageStore
from .learning import LocalIdentifier
from .networks import pick_device

CROPS_STORED = Counter("shoal_crops_stored_total", "Identification images received and stored")
BATCHES = Counter("shoal_blob_batches_total", "Blob batches received, by outcome", ["outcome"])
GEOMETRY_RESENT = Counter("shoal_geometry_resent_total",
                          "Chunks of geometry sent again because their assembler asked (geometry_wanted)")
REQUEST_SECONDS = Histogram("shoal_identifier_request_duration_seconds", "Time to answer a request", ["kind"],
                            buckets=(0.1, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1800))
BATCH_SECONDS = Histogram("shoal_identifier_batch_duration_seconds", "Time to store one blob batch and forward it",
                          buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
BATCH_IMAGES = Histogram("shoal_identifier_batch_images", "Identification images per blob batch received",
                         buckets=(10, 30, 100, 300, 1000, 3000, 10000, 30000, 100000))
FRAMES_STORED = Counter("shoal_frames_stored_total", "Frames whose identification images were stored")
IN_FLIGHT = Gauge("shoal_identifier_requests_in_flight", "Training or prediction requests being answered")
WAITING = Gauge("shoal_identifier_requests_waiting", "Requests waiting for the one being answered")
TRAINING_STEPS = Counter("shoal_training_steps_total",
                         "Identity training steps (contrastive: optimiser steps; accumulation: rounds)", ["network"])
TRAINING_LOSS = Gauge("shoal_training_loss", "Latest training loss reported by each identity network", ["network"])
GPU_MEMORY = Gauge("shoal_gpu_memory_bytes", "GPU memory allocated by the identifier now (0 on CPU)")
GPU_MEMORY_PEAK = Gauge("shoal_gpu_memory_peak_bytes", "Most GPU memory the identifier has allocated (0 on CPU)")
for _outcome in ("stored", "duplicate"):
    BATCHES.labels(_outcome)
for _kind in ("classify_crossings", "learn_identities"):
    REQUEST_SECONDS.labels(_kind)
for _network in ("contrastive", "accumulation"):
    TRAINING_STEPS.labels(_network)


@dataclass
class IdentifierConfig:
    gateway: str = field(default="tcp://127.0.0.1:5555", metadata={"help": "gateway control endpoint"})
    batches: str = field(default="tcp://0.0.0.0:5556", metadata={"help": "endpoint for blob batches (port 0 = any)"})
    requests: str = field(default="tcp://0.0.0.0:5557", metadata={"help": "endpoint for assembler requests"})
    store: str = field(default="/data/.shoal/store", metadata={"help": "image store root on the data volume"})
    device: str = field(default="", metadata={"help": "torch device (default: cuda if available, else cpu)"})
    threads: int = field(default=0, metadata={"help": "CPU threads for torch (0 = torch's default)"})
    metrics_port: int = field(default=9102, metadata={"help": "Prometheus /metrics port (0 = any free, -1 = off)"})
    curve_keys: str = field(default="", metadata={"help": curve.KEYS_HELP})
    store_delay_ms: int = field(default=0, metadata={
        "help": "for testing backpressure only: wait this long before storing each blob batch (keep < 3000, "
                "the main thread does not heartbeat meanwhile); 0 = off"})


class Abandoned(Exception):
    """Nobody waits for the request's answer any more: its job was closed or moved to another assembler."""


class Identifier:
    def __init__(self, cfg: IdentifierConfig, log):
        self.cfg, self.log = cfg, log
        self.ctx = zmq.Context.instance()
        self.batches = make_socket(self.ctx, zmq.PULL, hwm=DATA_HWM)
        self.requests = make_socket(self.ctx, zmq.ROUTER)
        endpoints = {"batches": bind(self.batches, cfg.batches), "requests": bind(self.requests, cfg.requests)}
        self.control = ControlChannel(self.ctx, cfg.gateway, "identifier", endpoints)
        self.device = pick_device(cfg.device or None)
        self.pushers: dict[str, zmq.Socket] = {}
        #: job -> the assembler geometry endpoint it forwards to (from the gateway's `resume`); a batch
        #: of a job without one is stored only (a stale batch, or one ahead of its `resume`, which replays it)
        self.routes: dict[str, str] = {}
        #: assembler endpoint -> (job, chunk, message or None = read from the store) waiting for POLLOUT
        self.forwards: dict[str, deque[tuple[str, int, Message | None]]] = {}
        #: job -> generation; bumped when the job is closed or its assembler replaced, which abandons
        #: the requests received before
        self.epochs: dict[str, int] = {}
        self.inbox: queue.Queue[tuple[bytes, Message, int] | None] = queue.Queue()
        self.outbox: queue.Queue[tuple[bytes, Message]] = queue.Queue()
        self.stopping = False
        WAITING.set_function(self.inbox.qsize)
        if self.device.type == "cuda":
            GPU_MEMORY.set_function(lambda: torch.cuda.memory_allocated(self.device))
            GPU_MEMORY_PEAK.set_function(lambda: torch.cuda.max_memory_allocated(self.device))
        threading.Thread(target=self._serve_requests, name="requests", daemon=True).start()
        log.info("identifier %s on %s; batches %s, requests %s", self.control.worker_id, self.device,
                 endpoints["batches"], endpoints["requests"])

    def store(self, job: str) -> ImageStore:
        return ImageStore(Path(self.cfg.store) / job)

    def run(self) -> None:
        while not self.stopping:
            msg = self.control.poll(0)
            if msg is not None:
                self.on_control(msg)
            poller = zmq.Poller()
            if sum(len(q) for q in self.forwards.values()) < DATA_HWM:
                poller.register(self.batches, zmq.POLLIN)
            poller.register(self.requests, zmq.POLLIN)
            for endpoint, waiting in self.forwards.items():
                if waiting:
                    poller.register(self._pusher(endpoint), zmq.POLLOUT)
            ready = dict(poller.poll(200))
            if ready.get(self.batches, 0) & zmq.POLLIN:
                if (batch := recv(self.batches)[1]) is not None:
                    self.on_batch(batch)
            if ready.get(self.requests, 0) & zmq.POLLIN:
                route, req = recv(self.requests, routed=True)
                if req is not None and req.type == "geometry_wanted":  # no reply, never behind training
                    self.on_geometry_wanted(req["job"], req["chunks"])
                elif req is not None:
                    self.inbox.put((route, req, self.epochs.get(req["job"], 0)))
            self._flush()
            while not self.outbox.empty():
                route, reply = self.outbox.get()
                send(self.requests, reply, route=route)
        self.inbox.put(None)
        for sock in (*self.pushers.values(), self.batches, self.requests):
            sock.close(linger=500)
        self.control.close()

    def on_control(self, msg: Message) -> None:
        if msg.type == "close_job":
            self._forget(msg["job"])
            self.store(msg["job"]).delete()
        elif msg.type == "resume":
            self.on_resume(msg["job"], msg["n_chunks"], msg["assembler"], msg.get("discard", False))

    def on_resume(self, job: str, n_chunks: int, assembler: str, discard: bool = False) -> None:
        """The gateway (re)pinned ``job`` here, or gave it a new assembler: replay the stored geometry
        there and say which chunks are held. Requests from a replaced assembler are abandoned;
        ``discard`` drops what the store holds first (it may come from a run with another probe)."""
        previous = self.routes.get(job)
        if previous is not None and previous != assembler:
            self.epochs[job] = self.epochs.get(job, 0) + 1
        self._drop_forwards(job)
        self.routes[job] = assembler
        self._close_unused_pushers()
        if discard:
            self.store(job).delete()
        held = self.store(job).held(n_chunks)
        self.forwards.setdefault(assembler, deque()).extend((job, c, None) for c in held)
        self.control.send(message(ResumeAck(job=job, chunks=held)))
        self.log.info("job %s resumed: %d of %d chunks held in the store, replaying their geometry to %s",
                      job, len(held), n_chunks, assembler)

    def on_geometry_wanted(self, job: str, chunks: list[int]) -> None:
        """The job's assembler still lacks ``chunks``: queue again, to the job's own assembler, those
        the store holds and that are not already on their way (the rest are still being segmented)."""
        endpoint = self.routes.get(job)
        if endpoint is None:  # not routed here (closed, or moved to another identifier)
            return
        queued = {c for j, c, _ in self.forwards.get(endpoint, ()) if j == job}
        store = self.store(job)
        again = [c for c in chunks if c not in queued and store.has(c)]
        if again:
            self.forwards.setdefault(endpoint, deque()).extend((job, c, None) for c in again)
            GEOMETRY_RESENT.inc(len(again))
            self.log.warning("job %s: sending chunk(s) %s again to %s, which did not receive them",
                             job, again, endpoint)

    def _forget(self, job: str) -> None:
        self.epochs[job] = self.epochs.get(job, 0) + 1
        self._drop_forwards(job)
        self.routes.pop(job, None)
        self._close_unused_pushers()

    def _drop_forwards(self, job: str) -> None:
        for endpoint, waiting in self.forwards.items():
            self.forwards[endpoint] = deque(item for item in waiting if item[0] != job)

    def _close_unused_pushers(self) -> None:
        """Close the sockets to assemblers no job routes to any more (a dead assembler's socket would
        keep its unsent messages for ever)."""
        for endpoint in set(self.pushers) - set(self.routes.values()):
            self.pushers.pop(endpoint).close(linger=0)
            self.forwards.pop(endpoint, None)

    def on_batch(self, msg: Message) -> None:
        t0 = time.perf_counter()
        if self.cfg.store_delay_ms > 0:
            time.sleep(self.cfg.store_delay_ms / 1000)
        job, chunk = msg["job"], msg["chunk"]
        store = self.store(job)
        crops = msg.arrays.pop("crops")
        body = {k: msg[k] for k in ("job", "chunk", "start", "stop", "n_chunks")}
        if store.has(chunk):
            BATCHES.labels("duplicate").inc()
        else:
            store.put(chunk, crops, msg.arrays, body)
            CROPS_STORED.inc(len(crops))
            FRAMES_STORED.inc(msg["stop"] - msg["start"])
            BATCH_IMAGES.observe(len(crops))
            BATCHES.labels("stored").inc()
        # the end-to-end acknowledgement: until it reaches the gateway, a chunk whose segmenter dies
        # counts as lost (its batch may have died in the segmenter's send queue) and is segmented again
        self.control.send(message(ChunkStored(job=job, chunk=chunk)))
        endpoint = self.routes.get(job)
        if endpoint is not None:
            geometry = message(ChunkGeometry(**body), msg.arrays)
            self.forwards.setdefault(endpoint, deque()).append((job, chunk, geometry))
        BATCH_SECONDS.observe(time.perf_counter() - t0)

    def _flush(self) -> None:
        """Send queued geometry while each assembler's socket can take it (never blocking)."""
        for endpoint, waiting in self.forwards.items():
            sock = self._pusher(endpoint)
            while waiting and sock.poll(0, zmq.POLLOUT):
                job, chunk, msg = waiting.popleft()
                if msg is None:
                    try:
                        meta, arrays = self.store(job).geometry(chunk)
                    except OSError as exc:  # the store was removed underneath us: the chunk is segmented again
                        self.log.error("cannot replay chunk %d of job %s: %s", chunk, job, exc)
                        continue
                    msg = message(ChunkGeometry(job=job, chunk=chunk, **meta), arrays)
                send(sock, msg)

    def _serve_requests(self) -> None:
        """Training and prediction run here, one request at a time, off the socket-owning thread."""
        while (item := self.inbox.get()) is not None:
            route, req, epoch = item
            if epoch != self.epochs.get(req["job"], 0):
                self.log.warning("dropped %s of job %s: the job was closed or moved to another assembler",
                                 req.type, req["job"])
                continue
            self.log.info("serving %s of job %s", req.type, req["job"])
            with IN_FLIGHT.track_inprogress():
                self.on_request(route, req, epoch)

    def on_request(self, route: bytes, req: Message, epoch: int) -> None:
        t0 = time.perf_counter()
        job = req["job"]
        contrastive_steps = 0

        def progress(stage: str, fraction: float, figures: dict) -> None:
            nonlocal contrastive_steps
            if self.epochs.get(job, 0) != epoch:
                raise Abandoned
            if stage == "contrastive":  # reported every few steps, with the step count
                step = int(figures.get("step", contrastive_steps))
                TRAINING_STEPS.labels(stage).inc(max(0, step - contrastive_steps))
                contrastive_steps = max(step, contrastive_steps)
            elif stage == "accumulation":  # reported once per accumulation round
                TRAINING_STEPS.labels(stage).inc()
            if stage in ("contrastive", "accumulation") and math.isfinite(figures.get("loss", math.nan)):
                TRAINING_LOSS.labels(stage).set(figures["loss"])
            self.outbox.put((route, message(RequestProgress(job=job, stage=stage, fraction=fraction,
                                                            figures=figures))))

        try:
            identifier = LocalIdentifier(self.store(job).images(req["n_chunks"]), str(self.device))
            if req.type == "classify_crossings":
                reply = pack("crossing_result", identifier.classify_crossings(unpack(req, CrossingRequest), progress),
                             job=job)
            elif req.type == "learn_identities":
                reply = pack("identity_result", identifier.learn_identities(unpack(req, IdentityRequest), progress),
                             job=job)
            else:
                reply = message(Error(job=job, error=f"unknown request {req.type!r}"))
        except Abandoned:
            self.log.warning("abandoned %s of job %s: the job was closed or moved to another assembler", req.type, job)
            return
        except Exception as exc:
            self.log.exception("request %s of job %s failed", req.type, job)
            reply = message(Error(job=job, error=f"identifier failed on {req.type}: {exc}"))
        self.outbox.put((route, reply))
        REQUEST_SECONDS.labels(req.type).observe(time.perf_counter() - t0)

    def _pusher(self, endpoint: str) -> zmq.Socket:
        if endpoint not in self.pushers:
            sock = make_socket(self.ctx, zmq.PUSH, hwm=DATA_HWM)
            connect(sock, endpoint)
            self.pushers[endpoint] = sock
        return self.pushers[endpoint]


def main(argv: list[str] | None = None) -> int:
    cfg = parse_config(IdentifierConfig, argv, "Shoal identifier: image store, crossing detector, identities")
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    run_worker("identifier", cfg, Identifier)
    return 0


if __name__ == "__main__":
    sys.exit(main())
