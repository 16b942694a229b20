"""gRPC ``shoal.v1.JobService``: the front door. Validates requests, stores jobs, streams progress.

Every error is a gRPC status with a message a person can act on: INVALID_ARGUMENT names the
field, NOT_FOUND the job, FAILED_PRECONDITION says why a video cannot be read, PERMISSION_DENIED
refuses paths outside the data root, RESOURCE_EXHAUSTED an upload over the limit (or a full
volume), INTERNAL a bug (logged with its traceback; the message says where to look).
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np

from shoal.params import ParamError, TrackingParams
from shoal.params_proto import params_from_proto
from shoal.preflight import preflight
from shoal.session import shoal_entries
from shoal.trajectory_files import check_formats
from shoal.v1 import jobs_pb2 as pb
from shoal.v1 import jobs_pb2_grpc as pb_grpc
from shoal.video import VideoError

from .jobstore import JobRecord, JobStore, eta_seconds
from .scheduler import Scheduler

log = logging.getLogger("shoal.gateway")

STATES = {"QUEUED": pb.QUEUED, "RUNNING": pb.RUNNING, "SUCCEEDED": pb.SUCCEEDED, "FAILED": pb.FAILED,
          "CANCELLED": pb.CANCELLED}
RESULT_BLOCK_FRAMES = 2000
#: free space an upload must leave on the data volume, for session folders and the job store
UPLOAD_HEADROOM_BYTES = 64 << 20


class RequestError(Exception):
    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(message)
        self.code = code


def job_message(rec: JobRecord) -> pb.Job:
    return pb.Job(
        job_id=rec.job_id, name=rec.name, state=STATES[rec.state], stage=rec.stage, fraction=rec.fraction,
        stages=[pb.StageProgress(stage=s, fraction=v.get("fraction", 0.0), done=int(v.get("done", 0)),
                                 total=int(v.get("total", 0))) for s, v in rec.stages.items()],
        error=rec.error, output_dir=rec.output_dir, created_unix=rec.created, updated_unix=rec.updated,
        figures={k: v for k, v in rec.figures.items() if math.isfinite(v)},
        video_paths=rec.video_paths, warnings=rec.warnings,
    )


class JobService(pb_grpc.JobServiceServicer):
    """``max_upload_bytes`` bounds one ``SubmitUpload`` (0 = uploads off); ``max_watchers`` bounds the
    ``WatchJob`` streams open at once, each of which holds a server thread, so watchers can never
    starve the other calls of threads."""

    def __init__(self, store: JobStore, scheduler: Scheduler, data_root: Path, *, max_upload_bytes: int = 256 << 20,
                 max_watchers: int = 48):
        self.store, self.scheduler = store, scheduler
        self.data_root = Path(os.path.realpath(data_root))
        self.max_upload_bytes = max_upload_bytes
        self.max_watchers = max_watchers
        self._watch_slots = threading.BoundedSemaphore(max_watchers)
        self._submitting = threading.Lock()

    # -- helpers --

    def _inside_root(self, path: str, what: str) -> str:
        p = Path(path) if os.path.isabs(path) else self.data_root / path
        real = os.path.realpath(p)
        if os.path.commonpath([real, str(self.data_root)]) != str(self.data_root):
            raise RequestError(grpc.StatusCode.PERMISSION_DENIED,
                               f"{what} {path!r} is outside the gateway's data root {self.data_root}")
        return real

    def _get(self, job_id: str) -> JobRecord:
        rec = self.store.get(job_id)
        if rec is None:
            raise RequestError(grpc.StatusCode.NOT_FOUND, f"no job with id {job_id!r}")
        return rec

    def _params(self, request: pb.SubmitJobRequest, videos: list[str]) -> TrackingParams:
        try:
            params = TrackingParams.from_dict({**params_from_proto(request.params), "video_paths": videos}).validate()
        except ParamError as exc:
            raise RequestError(grpc.StatusCode.INVALID_ARGUMENT, str(exc)) from None
        try:  # the assembler writes the files; it runs from the same image as this gateway
            check_formats(params.trajectories_formats)
        except RuntimeError as exc:
            raise RequestError(grpc.StatusCode.FAILED_PRECONDITION, f"trajectories_formats: {exc} on the gateway's "
                                                                    "services") from None
        return params

    @staticmethod
    def _preflight(params: TrackingParams) -> None:
        """The parameters against the videos themselves (:func:`shoal.preflight.preflight`, as
        ``shoal track`` does before it starts anything)."""
        try:
            preflight(params)
        except VideoError as exc:
            raise RequestError(grpc.StatusCode.FAILED_PRECONDITION, str(exc)) from None
        except ParamError as exc:
            raise RequestError(grpc.StatusCode.INVALID_ARGUMENT, str(exc)) from None
        except RuntimeError as exc:
            raise RequestError(grpc.StatusCode.FAILED_PRECONDITION, f"trajectories_formats: {exc} on the "
                                                                    "gateway's services") from None

    def _output_dir(self, request: pb.SubmitJobRequest, job_id: str) -> str:
        """The job's session folder: inside the data root, and never one that holds a session already
        (other files may stay there: Shoal writes only its own) or that a queued or running job will write."""
        output_dir = self._inside_root(request.output_dir or str(self.data_root / "sessions" / job_id), "output_dir")
        folder = Path(output_dir)
        if folder.exists() and not folder.is_dir():
            raise RequestError(grpc.StatusCode.FAILED_PRECONDITION,
                               f"output_dir {request.output_dir!r} is a file; choose a folder")
        earlier = shoal_entries(folder) if folder.is_dir() else []
        if earlier:
            raise RequestError(grpc.StatusCode.FAILED_PRECONDITION,
                               f"output_dir {request.output_dir!r} holds an earlier session ({earlier[0].name}, ...); "
                               f"choose another folder (the gateway never overwrites a session)")
        for state in ("QUEUED", "RUNNING"):
            other = next((r for r in self.store.list(state, limit=10_000) if r.output_dir == output_dir), None)
            if other is not None:
                raise RequestError(grpc.StatusCode.FAILED_PRECONDITION,
                                   f"output_dir {request.output_dir!r} is the session folder of job {other.job_id}, "
                                   f"which is {state.lower()}; choose another folder")
        return output_dir

    def _create(self, request: pb.SubmitJobRequest, videos: list[str], job_id: str) -> pb.Job:
        """Check the parameters against the videos themselves, then store the job and wake the scheduler."""
        params = self._params(request, videos)
        self._output_dir(request, job_id)  # a bad folder fails before the videos are read
        if params.knowledge_transfer_folder:  # the earlier session must lie under the data root too
            params.knowledge_transfer_folder = self._inside_root(params.knowledge_transfer_folder,
                                                                 "knowledge_transfer_folder")
        self._preflight(params)
        name = request.name or Path(videos[0]).stem
        with self._submitting:  # two jobs never pass the session folder check for the same folder
            rec = self.store.create(job_id, name, params.to_dict(), videos, self._output_dir(request, job_id))
        self.scheduler.poke()
        return job_message(rec)

    # -- RPCs --

    def SubmitJob(self, request: pb.SubmitJobRequest, context: grpc.ServicerContext) -> pb.Job:
        return _guard(context, lambda: self._submit(request))

    def _submit(self, request: pb.SubmitJobRequest) -> pb.Job:
        if not request.video_paths:
            raise RequestError(grpc.StatusCode.INVALID_ARGUMENT, "video_paths: give at least one video")
        videos = [self._inside_root(p, "video") for p in request.video_paths]
        return self._create(request, videos, _new_job_id())

    def SubmitUpload(self, request_iterator: Iterator[pb.SubmitUploadRequest],
                     context: grpc.ServicerContext) -> pb.Job:
        return _guard(context, lambda: self._upload(request_iterator))

    def _upload(self, requests: Iterator[pb.SubmitUploadRequest]) -> pb.Job:
        """Write the streamed files to ``<data root>/uploads/<job id>/``, then submit them as a job.

        The request is checked before any byte is written, the size limit while bytes arrive, and
        every failure (including the client going away) removes the partial folder.
        """
        first = next(requests, None)
        if first is None or first.WhichOneof("part") != "job":
            raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                               "job: the first SubmitUpload message must be the job (a SubmitJobRequest)")
        head = first.job
        if head.video_paths:
            raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                               "job.video_paths: leave it empty in SubmitUpload; send each video as a `file` "
                               "message followed by its bytes in `data` messages")
        if self.max_upload_bytes <= 0:
            raise RequestError(grpc.StatusCode.RESOURCE_EXHAUSTED,
                               "uploads are off on this gateway (max_upload_mb = 0): copy the video to the data "
                               "volume and use SubmitJob with its path")
        job_id = _new_job_id()
        self._params(head, ["upload"])  # fail fast on bad parameters, before any byte is sent
        self._output_dir(head, job_id)
        folder = self.data_root / "uploads" / job_id
        try:
            videos = self._receive(requests, folder)
            return self._create(head, videos, job_id)
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise

    def _receive(self, requests: Iterator[pb.SubmitUploadRequest], folder: Path) -> list[str]:
        limit = self.max_upload_bytes
        folder.mkdir(parents=True)
        files: list[tuple[Path, int]] = []  # (path, declared size or -1)
        received = 0
        sink = None
        try:
            for msg in requests:
                part = msg.WhichOneof("part")
                if part == "file":
                    if sink is not None:
                        _finish(sink, *files[-1])
                        sink = None
                    name = _plain_name(msg.file.name)
                    if any(p.name == name for p, _ in files):
                        raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                                           f"file.name: {name!r} is uploaded twice; give each file its own name")
                    if msg.file.size < 0:
                        raise RequestError(grpc.StatusCode.INVALID_ARGUMENT, f"file.size: {name}: must be >= 0")
                    if received + msg.file.size > limit:  # the earlier files are complete: fail before the bytes
                        raise _too_big(received + msg.file.size, limit)
                    if shutil.disk_usage(folder).free < msg.file.size + UPLOAD_HEADROOM_BYTES:
                        raise RequestError(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                           f"the data volume has too little free space for {name} "
                                           f"({msg.file.size} bytes); free some space or ask the operator")
                    files.append((folder / name, msg.file.size if msg.file.HasField("size") else -1))
                    sink = open(folder / f".{name}.part", "wb")  # noqa: SIM115 - closed by _finish or below
                elif part == "data":
                    if sink is None:
                        raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                                           "data: a `file` message must come before the file's bytes")
                    received += len(msg.data)
                    if received > limit:
                        raise _too_big(received, limit)
                    sink.write(msg.data)
                else:
                    raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                                       "job: send the job only once, as the first message")
            if sink is None:
                raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                                   "file: the upload holds no file; send a `file` message and its `data`")
            _finish(sink, *files[-1])
            sink = None
        finally:
            if sink is not None:
                sink.close()
        return [str(p) for p, _ in files]

    def GetJob(self, request: pb.JobRef, context: grpc.ServicerContext) -> pb.Job:
        return _guard(context, lambda: job_message(self._get(request.job_id)))

    def ListJobs(self, request: pb.ListJobsRequest, context: grpc.ServicerContext) -> pb.ListJobsResponse:
        def run() -> pb.ListJobsResponse:
            if request.state and request.state not in STATES.values():
                raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                                   f"state: {request.state} is not a JobState; use one of {', '.join(STATES)}")
            state = pb.JobState.Name(request.state) if request.state else None
            if request.page_size < 0:
                raise RequestError(grpc.StatusCode.INVALID_ARGUMENT, "page_size: must be >= 0")
            size = request.page_size or 50
            try:
                after = int(request.page_token or 0)
            except ValueError:
                raise RequestError(grpc.StatusCode.INVALID_ARGUMENT, "page_token: not a token from ListJobs") from None
            recs = self.store.list(state, size + 1, after)
            token = str(recs[size - 1].seq) if len(recs) > size else ""
            return pb.ListJobsResponse(jobs=[job_message(r) for r in recs[:size]], next_page_token=token)

        return _guard(context, run)

    def CancelJob(self, request: pb.JobRef, context: grpc.ServicerContext) -> pb.Job:
        def run() -> pb.Job:
            rec = self._get(request.job_id)
            if not rec.final:
                self.scheduler.cancel(rec.job_id)
                deadline = time.monotonic() + 5
                while not rec.final and time.monotonic() < deadline:
                    time.sleep(0.05)
                    rec = self._get(request.job_id)
            return job_message(rec)

        return _guard(context, run)

    def WatchJob(self, request: pb.JobRef, context: grpc.ServicerContext) -> Iterator[pb.JobEvent]:
        rec = _guard(context, lambda: self._get(request.job_id))
        if not self._watch_slots.acquire(blocking=False):
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                          f"{self.max_watchers} WatchJob streams are open on this gateway, the most it allows; "
                          f"poll GetJob instead, or watch again later")
        try:
            context.add_callback(self.store.notify)  # a client that leaves frees its thread at once
            yield from self._watch(rec, context)
        finally:
            self._watch_slots.release()

    def _watch(self, rec: JobRecord, context: grpc.ServicerContext) -> Iterator[pb.JobEvent]:
        """Events until the job ends or the client leaves; the job itself never depends on a watcher."""
        last = -1.0
        while context.is_active():
            if rec.updated != last:
                last = rec.updated
                yield pb.JobEvent(job=job_message(rec), eta_seconds=_eta(rec), final=rec.final)
                if rec.final:
                    return
            with self.store.changed:
                self.store.changed.wait(timeout=1.0)
            rec = self.store.get(rec.job_id) or rec

    def GetResult(self, request: pb.JobRef, context: grpc.ServicerContext) -> Iterator[pb.ResultChunk]:
        rec = _guard(context, lambda: self._get(request.job_id))
        if rec.state != "SUCCEEDED":
            context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                          f"job {rec.job_id} is {rec.state.lower()}; results exist only for succeeded jobs")
        folder = Path(rec.output_dir)
        try:
            result = np.load(folder / "trajectories" / "trajectories.npy", allow_pickle=True).item()
            session = (folder / "session.json").read_text()
        except OSError as exc:
            context.abort(grpc.StatusCode.DATA_LOSS, f"the session folder {folder} is incomplete: {exc}")
        traj, prob = result.pop("trajectories"), result.pop("id_probabilities")
        n_frames, n_animals = traj.shape[:2]
        attributes = json.dumps(result, default=_jsonable)
        yield pb.ResultChunk(job_id=rec.job_id, n_frames=n_frames, n_animals=n_animals,
                             session_json=session, attributes_json=attributes)
        for start in range(0, n_frames, RESULT_BLOCK_FRAMES):
            stop = min(n_frames, start + RESULT_BLOCK_FRAMES)
            yield pb.ResultChunk(job_id=rec.job_id, n_frames=n_frames, n_animals=n_animals, first_frame=start,
                                 trajectories=traj[start:stop].ravel(), id_probabilities=prob[start:stop].ravel())


def _jsonable(obj):
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    return str(obj)


def _eta(rec: JobRecord) -> float:
    eta = eta_seconds(time.time() - rec.created, rec.fraction) if rec.state == "RUNNING" else None
    return -1.0 if eta is None else eta


def _new_job_id() -> str:
    return uuid.uuid4().hex[:12]


def _plain_name(name: str) -> str:
    """An uploaded file's name, refused unless it is one plain, visible path component (no folders, no ``..``)."""
    if not name or name.startswith(".") or any(c in name for c in "/\\\0") or len(name.encode()) > 200:
        raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                           f"file.name: {name!r} is not a plain file name; send e.g. 'trial1.avi' without folders")
    return name


def _too_big(size: int, limit: int) -> RequestError:
    return RequestError(grpc.StatusCode.RESOURCE_EXHAUSTED,
                        f"the upload is over this gateway's limit of {limit / 2**20:g} MiB (at least {size} bytes): "
                        f"copy the video to the data volume and use SubmitJob with its path, or ask the operator "
                        f"to raise max_upload_mb")


def _finish(sink, path: Path, declared: int) -> None:
    """Flush a received file to disk and move it to its name; a size that differs from the declared one
    means a client bug or a truncated stream, so the upload is refused."""
    size = sink.tell()
    sink.flush()
    os.fsync(sink.fileno())
    sink.close()
    if declared >= 0 and size != declared:
        raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                           f"file.size: {path.name} was declared as {declared} bytes but {size} arrived")
    os.replace(sink.name, path)


def _guard(context: grpc.ServicerContext, fn):
    """Run ``fn``; turn a RequestError into its status, and any other exception (a bug, a full disk) into
    INTERNAL with a message that points to the log, instead of grpc's bare UNKNOWN."""
    try:
        return fn()
    except RequestError as exc:
        context.abort(exc.code, str(exc))
    except Exception as exc:
        if not context.is_active():  # the client went away mid-call (e.g. a cancelled upload): nobody to tell
            context.abort(grpc.StatusCode.CANCELLED, "the client cancelled the call")
        log.exception("internal error")
        context.abort(grpc.StatusCode.INTERNAL, f"internal error in the gateway ({type(exc).__name__}: {exc}); "
                                                f"see the gateway's log, and retry if it was transient")
