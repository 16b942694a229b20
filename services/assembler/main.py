"""``shoal-assembler``: collects a job's chunks, tracks (``track.track``), writes the session folder.

The main thread owns the control and geometry sockets and keeps heartbeating; the tracking of a
job runs on a worker thread that talks to the identifier through its own DEALER socket
(:class:`RemoteIdentifier`) and reports progress through a queue, so a long computation never
looks like a dead worker to the gateway.
"""

from __future__ import annotations

import logging
import queue
import shutil
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import zmq
from prometheus_client import Counter, Gauge, Histogram

from services.worker import run_worker
from shoal import curve
from shoal.blobs import BlobTable
from shoal.codec import Message, message, pack, unpack
from shoal.config import parse_config
from shoal.identity_requests import CrossingReply, CrossingRequest, IdentityReply, IdentityRequest, Progress
from shoal.knowledge import MODEL_FILE, read_model
from shoal.messages import GeometryWanted, JobDone, JobFailed, JobProgress
from shoal.params import ParamError, TrackingParams
from shoal.session import (
    BACKGROUND_FILE,
    clear_session,
    session_write_error,
    update_session_json,
    utc_iso,
    warn_inconsistent_frames,
    write_session,
)
from shoal.transport import DATA_HWM, ControlChannel, bind, connect, make_socket, recv, send
from shoal.v1 import INVALID_INPUT

from .assembly import (
    JobError,
    area_statistics,
    count_animals,
    crowded_frames,
    identity_groups,
    job_figures,
    session_record,
    stitch,
    track_job,
)
from .overlap import overlap_links
from .videos import write_job_videos

CHUNKS = Counter("shoal_chunks_assembled_total", "Chunks of geometry received, by outcome", ["outcome"])
STAGE_SECONDS = Histogram("shoal_stage_duration_seconds", "Duration of each assembler stage of a job", ["stage"],
                          buckets=(0.1, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1800, 3600))
FRAMES_TRACKED = Counter("shoal_frames_tracked_total", "Frames of jobs whose tracking finished")
IN_FLIGHT = Gauge("shoal_assembler_jobs_in_flight", "Jobs this assembler is tracking")
DOUBTFUL = Counter("shoal_doubtful_jobs_total",
                   "Jobs whose estimated accuracy is below 0.99 (the job's warnings say why and what to try)")
WAITING = Gauge("shoal_assembler_jobs_waiting", "Jobs assigned to this assembler that still collect chunks")
GEOMETRY_WANTED = Counter("shoal_geometry_wanted_total",
                          "Times a job waiting for chunks asked its identifier to send them again")
for _outcome in ("new", "duplicate"):
    CHUNKS.labels(_outcome)


#: the gateway's stage of each stage name the tracking code and the identifier report
STAGES = {"Crossing detection": "crossings", "crossing detector": "crossings", "Fragmentation": "fragments",
          "Tracking": "identities", "Fragment identification": "assign", "Identification": "assign",
          "Impossible jumps correction": "assign", "Trajectories creation": "postprocess",
          "Crossings solver": "postprocess", "write": "write", "video": "video"}


@dataclass
class AssemblerConfig:
    gateway: str = field(default="tcp://127.0.0.1:5555", metadata={"help": "gateway control endpoint"})
    geometry: str = field(default="tcp://0.0.0.0:5558", metadata={"help": "endpoint for chunk geometry"})
    metrics_port: int = field(default=9103, metadata={"help": "Prometheus /metrics port (0 = any free, -1 = off)"})
    curve_keys: str = field(default="", metadata={"help": curve.KEYS_HELP})
    geometry_stall_s: float = field(default=10.0, metadata={
        "help": "a job that received no chunk for this long asks its identifier for those it lacks (s)"})


class RemoteIdentifier:
    """:class:`shoal.identity_requests.IdentifierClient` over ZeroMQ (DEALER to the identifier's ROUTER).

    ``endpoint`` is asked again while a call waits: when the gateway moves the job to a new
    identifier (the old one was lost), the request is sent again there; the new identifier reads the
    job's images from the data volume.
    """

    def __init__(self, ctx: zmq.Context, endpoint: Callable[[], str], job: str, n_chunks: int,
                 cancelled: threading.Event):
        self.ctx, self.endpoint = ctx, endpoint
        self.job, self.n_chunks, self.cancelled = job, n_chunks, cancelled
        self.sock: zmq.Socket | None = None
        self._connect()

    def _connect(self) -> None:
        if self.sock is not None:
            self.sock.close(linger=0)
        self.connected = self.endpoint()
        self.sock = make_socket(self.ctx, zmq.DEALER)
        connect(self.sock, self.connected)

    def _call(self, msg: Message, progress: Progress | None) -> Message:
        msg.body.update(job=self.job, n_chunks=self.n_chunks)
        send(self.sock, msg)
        while True:
            if self.cancelled.is_set():
                raise JobError("cancelled")
            if self.endpoint() != self.connected:
                logging.getLogger("shoal.assembler").warning(
                    "job %s: identifier replaced by %s; sending %s again", self.job, self.endpoint(), msg.type)
                self._connect()
                send(self.sock, msg)
                continue
            if not self.sock.poll(500, zmq.POLLIN):
                continue
            _, reply = recv(self.sock)
            if reply is None:
                continue
            if reply.type == "request_progress":
                if progress is not None:
                    progress(reply["stage"], reply["fraction"], reply.get("figures") or {})
            elif reply.type == "error":
                raise JobError(reply["error"])
            else:
                return reply

    def classify_crossings(self, request: CrossingRequest, progress: Progress | None = None) -> CrossingReply:
        return unpack(self._call(pack("classify_crossings", request), progress), CrossingReply)

    def learn_identities(self, request: IdentityRequest, progress: Progress | None = None) -> IdentityReply:
        return unpack(self._call(pack("learn_identities", request), progress), IdentityReply)

    def close(self) -> None:
        self.sock.close(linger=0)


@dataclass
class JobState:
    spec: dict | None = None
    chunks: dict[int, BlobTable] = field(default_factory=dict)
    n_chunks: int | None = None
    started: bool = False
    cancelled: threading.Event = field(default_factory=threading.Event)
    #: when a chunk last arrived, the job was assigned here or its identifier was last asked
    heard: float = field(default_factory=time.monotonic)


class Assembler:
    def __init__(self, cfg: AssemblerConfig, log):
        self.cfg, self.log = cfg, log
        self.ctx = zmq.Context.instance()
        self.geometry = make_socket(self.ctx, zmq.PULL, hwm=DATA_HWM)
        endpoint = bind(self.geometry, cfg.geometry)
        self.control = ControlChannel(self.ctx, cfg.gateway, "assembler", {"geometry": endpoint})
        self.jobs: dict[str, JobState] = {}
        self.outbox: queue.Queue[Message] = queue.Queue()
        #: identifier requests endpoint -> DEALER that asks it for geometry again (no reply)
        self.askers: dict[str, zmq.Socket] = {}
        self.stopping = False
        # jobs assigned here and still collecting chunks (list(): one C-level copy of a dict two threads change)
        WAITING.set_function(lambda: sum(s.spec is not None and not s.started for s in list(self.jobs.values())))
        log.info("assembler %s; geometry on %s", self.control.worker_id, endpoint)

    def run(self) -> None:
        while not self.stopping:
            msg = self.control.poll(0)
            if msg is not None:
                self.on_control(msg)
            if self.geometry.poll(100, zmq.POLLIN):
                if (geometry := recv(self.geometry)[1]) is not None:
                    self.on_geometry(geometry)
            while not self.outbox.empty():
                self.control.send(self.outbox.get())
            self.ask_for_missing()
        for state in self.jobs.values():
            state.cancelled.set()
        for sock in (*self.askers.values(), self.geometry):
            sock.close(linger=0)
        self.control.close()

    def on_control(self, msg: Message) -> None:
        if msg.type == "assemble":
            state = self.jobs.setdefault(msg["job"], JobState())
            state.spec = msg.body
            state.n_chunks = len(msg["plan"]["chunks"])
            state.heard = time.monotonic()
            self.maybe_start(msg["job"])
        elif msg.type == "close_job":
            state = self.jobs.pop(msg["job"], None)
            if state is not None:
                state.cancelled.set()

    def on_geometry(self, msg: Message) -> None:
        state = self.jobs.setdefault(msg["job"], JobState())
        if state.started or msg["chunk"] in state.chunks:
            CHUNKS.labels("duplicate").inc()
            return
        state.chunks[msg["chunk"]] = BlobTable.from_arrays(msg.arrays)
        state.n_chunks = msg["n_chunks"]
        state.heard = time.monotonic()
        CHUNKS.labels("new").inc()
        self.maybe_start(msg["job"])

    def ask_for_missing(self) -> None:
        """Geometry has no acknowledgement (a PUSH whose TCP connection breaks loses what it held),
        so a job that heard nothing for ``geometry_stall_s`` names the chunks it lacks to its
        identifier, which sends again those its store holds (``geometry_wanted``). Chunks still
        being segmented are not held yet, and a copy that was only late is dropped as a duplicate."""
        now = time.monotonic()
        for job, state in list(self.jobs.items()):
            if state.started or state.spec is None or now - state.heard < self.cfg.geometry_stall_s:
                continue
            state.heard = now
            sock = self._asker(state.spec["identifier"])
            if sock.poll(0, zmq.POLLOUT):
                missing = sorted(set(range(state.n_chunks)) - set(state.chunks))
                send(sock, message(GeometryWanted(job=job, chunks=missing)))
                GEOMETRY_WANTED.inc()
        in_use = {state.spec["identifier"] for state in self.jobs.values() if state.spec is not None}
        for endpoint in set(self.askers) - in_use:
            self.askers.pop(endpoint).close(linger=0)

    def _asker(self, endpoint: str) -> zmq.Socket:
        if endpoint not in self.askers:
            self.askers[endpoint] = make_socket(self.ctx, zmq.DEALER)
            connect(self.askers[endpoint], endpoint)
        return self.askers[endpoint]

    def maybe_start(self, job: str) -> None:
        state = self.jobs[job]
        if state.started or state.spec is None or len(state.chunks) < state.n_chunks:
            return
        state.started = True
        threading.Thread(target=self.run_job, args=(job, state), name=f"job-{job}", daemon=True).start()

    def run_job(self, job: str, state: JobState) -> None:
        def progress(stage: str, fraction: float, figures: dict) -> None:
            self.outbox.put(message(JobProgress(job=job, stage=STAGES.get(stage, "identities"),
                                             done=round(100 * fraction), total=100, figures=figures)))

        try:
            with IN_FLIGHT.track_inprogress():
                figures, warnings = assemble(self.ctx, job, state, progress)
            self.outbox.put(message(JobDone(job=job, figures=figures, warnings=warnings)))
        except JobError as exc:
            if not state.cancelled.is_set():
                self.outbox.put(message(JobFailed(job=job, error=str(exc))))
        except Exception as exc:
            self.log.exception("job %s crashed", job)
            self.outbox.put(message(JobFailed(job=job, error=f"assembler crashed: {exc!r}")))
        finally:
            self.jobs.pop(job, None)


def assemble(ctx: zmq.Context, job: str, state: JobState, progress: Progress) -> tuple[dict, list[str]]:
    """Stitch the chunks, track, and write the session folder. Returns (figures, warnings)."""
    spec = state.spec
    params = TrackingParams.from_dict(spec["params"])
    video, probe = spec["plan"]["video"], spec["plan"]["probe"]
    n_frames = video["n_frames"]
    t0 = time.perf_counter()
    table = stitch(state.chunks, state.n_chunks)
    state.chunks.clear()
    links = overlap_links(table)
    n_animals, region_counts = count_animals(table, n_frames, probe, params.exclusive_rois)
    crowded = crowded_frames(table, n_frames, n_animals)
    out_dir = Path(spec["output_dir"])
    out_dir.mkdir(parents=True, exist_ok=True)
    if len(crowded):
        warn_inconsistent_frames(out_dir, crowded)  # track() adds the warning itself
        if params.check_segmentation:
            raise JobError(f"{INVALID_INPUT}check_segmentation: {len(crowded)} frames have more blobs than "
                           f"animals (listed in {out_dir / 'inconsistent_frames.csv'})")
    stitch_seconds = time.perf_counter() - t0
    STAGE_SECONDS.labels("stitch").observe(stitch_seconds)
    try:
        knowledge = read_model(params.knowledge_transfer_folder) if params.knowledge_transfer_folder else None
    except ParamError as exc:
        raise JobError(INVALID_INPUT + str(exc)) from None
    identifier = RemoteIdentifier(ctx, lambda: state.spec["identifier"], job, state.n_chunks, state.cancelled)
    try:
        result = track_job(table, links, n_frames, n_animals, region_counts, identifier, params, knowledge, progress)
    finally:
        identifier.close()
    for stage, seconds in result.timings.items():
        STAGE_SECONDS.labels(stage).observe(seconds)
    FRAMES_TRACKED.inc(n_frames)
    warnings = list(result.warnings)
    if result.doubtful:
        DOUBTFUL.inc()
    progress("write", 0.0, {})
    session = session_record(job, spec, result, table, n_animals, region_counts, int(len(crowded)), stitch_seconds,
                             _keep_background(probe, out_dir), warnings)
    try:
        if len(result.identity_model):  # what a later session's knowledge transfer starts from
            model_path = out_dir / MODEL_FILE
            model_path.with_suffix(".tmp").write_bytes(result.identity_model.tobytes())
            model_path.with_suffix(".tmp").replace(model_path)
        write_session(out_dir, {
            "trajectories": result.trajectories, "id_probabilities": result.id_probabilities,
            "areas": area_statistics(result.areas), "frames_per_second": video["fps"],
            "body_length": probe["body_length"],
            "estimated_accuracy": result.estimated_accuracy, "silhouette_score": result.silhouette,
            "setup_points": params.setup_points, "identities_labels": params.identities_labels,
            "identities_groups": identity_groups(region_counts),
            "width": video["width"], "height": video["height"], "video_paths": video["paths"], "session": session,
        }, formats=tuple(params.trajectories_formats))
    except OSError as exc:  # e.g. a full data volume: no half-written session may look complete
        clear_session(out_dir)
        raise JobError(session_write_error(out_dir, exc)) from None
    progress("write", 1.0, {})
    if params.output_video or params.output_individual_videos:
        t_videos = time.perf_counter()
        warnings += write_job_videos(out_dir, params, result.trajectories, probe["body_length"], video["paths"],
                                     progress, state.cancelled)
        try:  # the session folder is complete without these two numbers
            update_session_json(out_dir, {"finished_utc": utc_iso(time.time()), "timers_seconds": {
                **session["timers_seconds"], "videos": time.perf_counter() - t_videos}})
        except (OSError, ValueError) as exc:
            warnings.append(f"session.json lacks the videos' end time: {exc}")
    return job_figures(result, table, n_animals), warnings


def _keep_background(probe: dict, out_dir: Path) -> str | None:
    """Copy the probe's background model (in the job's temporary folder) into the session folder;
    its name there, or None without background subtraction or when it cannot be copied."""
    if not probe.get("background"):
        return None
    try:
        shutil.copyfile(probe["background"], out_dir / BACKGROUND_FILE)
    except OSError:
        logging.getLogger("shoal.assembler").warning("background model %s not kept", probe["background"])
        return None
    return BACKGROUND_FILE


def main(argv: list[str] | None = None) -> int:
    cfg = parse_config(AssemblerConfig, argv, "Shoal assembler: fragments, identities, trajectories")
    run_worker("assembler", cfg, Assembler)
    return 0


if __name__ == "__main__":
    sys.exit(main())
