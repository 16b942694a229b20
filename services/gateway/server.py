"""gRPC ``shoal.v1.JobService``: the front door. Validates requests, stores jobs, streams progress.

Every error is a gRPC status with a message a person can act on: INVALID_ARGUMENT names the
field, NOT_FOUND the job, FAILED_PRECONDITION says why a video cannot be read, PERMISSION_DENIED
refuses paths outside the data root.
"""

from __future__ import annotations

import json
import math
import os
import time
import uuid
from pathlib import Path

import grpc
import numpy as np

from shoal.params import ParamError, TrackingParams
from shoal.v1 import jobs_pb2 as pb
from shoal.v1 import jobs_pb2_grpc as pb_grpc
from shoal.video import VideoError, probe_video

from .jobstore import JobRecord, JobStore
from .scheduler import Scheduler

STATES = {"QUEUED": pb.QUEUED, "RUNNING": pb.RUNNING, "SUCCEEDED": pb.SUCCEEDED, "FAILED": pb.FAILED,
          "CANCELLED": pb.CANCELLED}
RESULT_BLOCK_FRAMES = 2000


class RequestError(Exception):
    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(message)
        self.code = code


def params_from_proto(m: pb.TrackingParams) -> dict:
    """The fields a client set, as idtracker.ai-style keys (unset fields keep their defaults)."""
    d: dict = {}
    if m.number_of_animals:
        d["number_of_animals"] = m.number_of_animals
    if m.intensity_ths:
        d["intensity_ths"] = list(m.intensity_ths)
    if m.area_ths:
        d["area_ths"] = list(m.area_ths)
    if m.roi_list:
        d["roi_list"] = list(m.roi_list)
    for key in ("use_bkg", "track_wo_identities", "exclusive_rois", "check_segmentation"):
        if getattr(m, key):
            d[key] = True
    if m.background_subtraction_stat:
        d["background_subtraction_stat"] = m.background_subtraction_stat
    if m.tracking_intervals:
        d["tracking_intervals"] = [[iv.start, iv.end] for iv in m.tracking_intervals]
    for key in ("resolution_reduction", "id_image_size", "frames_per_episode"):
        if m.HasField(key):
            d[key] = getattr(m, key)
    if m.trajectories_formats:
        d["trajectories_formats"] = list(m.trajectories_formats)
    if m.method:
        d["method"] = m.method
    if m.seed:
        d["seed"] = m.seed
    for key, text in m.extra.items():
        try:
            d[key] = json.loads(text)
        except json.JSONDecodeError:
            d[key] = text
    return d


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
    def __init__(self, store: JobStore, scheduler: Scheduler, data_root: Path):
        self.store, self.scheduler = store, scheduler
        self.data_root = Path(os.path.realpath(data_root))

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

    # -- RPCs --

    def SubmitJob(self, request: pb.SubmitJobRequest, context: grpc.ServicerContext) -> pb.Job:
        return _guard(context, lambda: self._submit(request))

    def _submit(self, request: pb.SubmitJobRequest) -> pb.Job:
        if not request.video_paths:
            raise RequestError(grpc.StatusCode.INVALID_ARGUMENT, "video_paths: give at least one video")
        videos = [self._inside_root(p, "video") for p in request.video_paths]
        try:
            params = TrackingParams.from_dict({**params_from_proto(request.params), "video_paths": videos})
            params.validate()
        except ParamError as exc:
            raise RequestError(grpc.StatusCode.INVALID_ARGUMENT, str(exc)) from None
        try:
            info = probe_video(videos)
        except VideoError as exc:
            raise RequestError(grpc.StatusCode.FAILED_PRECONDITION, str(exc)) from None
        for i, (_, end) in enumerate(params.tracking_intervals or []):
            if end > info.n_frames:
                raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                                   f"tracking_intervals: interval {i} ends at frame {end} but the video has "
                                   f"{info.n_frames} frames")
        job_id = uuid.uuid4().hex[:12]
        out = request.output_dir or str(self.data_root / "sessions" / job_id)
        output_dir = self._inside_root(out, "output_dir")
        name = request.name or Path(videos[0]).stem
        rec = self.store.create(job_id, name, params.to_dict(), videos, output_dir)
        self.scheduler.poke()
        return job_message(rec)

    def GetJob(self, request: pb.JobRef, context: grpc.ServicerContext) -> pb.Job:
        return _guard(context, lambda: job_message(self._get(request.job_id)))

    def ListJobs(self, request: pb.ListJobsRequest, context: grpc.ServicerContext) -> pb.ListJobsResponse:
        def run() -> pb.ListJobsResponse:
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

    def WatchJob(self, request: pb.JobRef, context: grpc.ServicerContext):
        try:
            rec = self._get(request.job_id)
        except RequestError as exc:
            context.abort(exc.code, str(exc))
        last = -1.0
        while context.is_active():
            if rec.updated != last:
                last = rec.updated
                yield pb.JobEvent(job=job_message(rec), eta_seconds=_eta(rec), final=rec.final)
                if rec.final:
                    return
            with self.store.changed:
                self.store.changed.wait(timeout=1.0)
            rec = self._get(request.job_id)

    def GetResult(self, request: pb.JobRef, context: grpc.ServicerContext):
        try:
            rec = self._get(request.job_id)
        except RequestError as exc:
            context.abort(exc.code, str(exc))
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
    if rec.state != "RUNNING" or rec.fraction <= 0.02:
        return -1.0
    elapsed = time.time() - rec.created
    return elapsed * (1 - rec.fraction) / rec.fraction


def _guard(context: grpc.ServicerContext, fn):
    try:
        return fn()
    except RequestError as exc:
        context.abort(exc.code, str(exc))
