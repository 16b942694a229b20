"""A small Python client of the gateway's gRPC API (what the CLI uses; docs/api.md shows it)."""

from __future__ import annotations

import json
import math
import os
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import numpy as np
from tqdm import tqdm

from shoal.params import DEFAULT_FORMATS, TrackingParams
from shoal.params_proto import params_to_proto
from shoal.v1 import jobs_pb2 as pb
from shoal.v1 import jobs_pb2_grpc as pb_grpc

#: bytes per SubmitUpload data message (the gateway refuses messages over 4 MiB)
UPLOAD_CHUNK_BYTES = 1 << 20


class Client:
    """A connection to a gateway. ``token`` is sent as ``authorization: Bearer <token>`` on every call;
    ``ca_file`` (PEM) turns TLS on and is the authority the gateway's certificate must chain to;
    ``tls`` alone turns TLS on with the system's authorities. ``cert_file`` and ``key_file`` (PEM)
    are this client's certificate and key, for a gateway that requires them (mutual TLS); they turn
    TLS on too."""

    def __init__(self, address: str, token: str | None = None, *, ca_file: str | None = None, tls: bool = False,
                 cert_file: str | None = None, key_file: str | None = None):
        if bool(cert_file) != bool(key_file):
            raise ValueError("a client certificate needs both --cert and --key (PEM files)")
        if ca_file or tls or cert_file:
            self.channel = grpc.secure_channel(address, grpc.ssl_channel_credentials(
                root_certificates=_read(ca_file, "CA file"), private_key=_read(key_file, "key file"),
                certificate_chain=_read(cert_file, "certificate file")))
        else:
            self.channel = grpc.insecure_channel(address)
        self.stub = pb_grpc.JobServiceStub(self.channel)
        self.metadata = [("authorization", f"Bearer {token}")] if token else None

    def wait_ready(self, timeout: float = 30) -> None:
        grpc.channel_ready_future(self.channel).result(timeout=timeout)

    def submit(self, params: TrackingParams, output_dir: str = "", name: str = "") -> pb.Job:
        request = pb.SubmitJobRequest(video_paths=params.video_paths, params=params_to_proto(params),
                                      output_dir=output_dir, name=name)
        return self.stub.SubmitJob(request, metadata=self.metadata)

    def upload(self, params: TrackingParams, output_dir: str = "", name: str = "") -> pb.Job:
        """Like :meth:`submit`, for videos on this machine: streams ``params.video_paths`` to the gateway,
        which stores them under its data root (RESOURCE_EXHAUSTED if they exceed its upload limit)."""
        paths = [Path(p) for p in params.video_paths]
        names = [p.name for p in paths]
        if len(set(names)) != len(names):
            raise ValueError(f"uploaded videos need distinct file names, got {', '.join(names)}")
        missing = [str(p) for p in paths if not p.is_file()]
        if missing:  # found here, not half-way through the stream
            raise ValueError(f"cannot upload {', '.join(missing)}: not a file on this machine")
        job = pb.SubmitJobRequest(params=params_to_proto(params), output_dir=output_dir, name=name)

        def messages() -> Iterator[pb.SubmitUploadRequest]:
            yield pb.SubmitUploadRequest(job=job)
            for path in paths:
                with open(path, "rb") as fh:
                    yield pb.SubmitUploadRequest(file=pb.UploadFile(name=path.name, size=os.fstat(fh.fileno()).st_size))
                    while chunk := fh.read(UPLOAD_CHUNK_BYTES):
                        yield pb.SubmitUploadRequest(data=chunk)

        return self.stub.SubmitUpload(messages(), metadata=self.metadata)

    def get(self, job_id: str) -> pb.Job:
        return self.stub.GetJob(pb.JobRef(job_id=job_id), metadata=self.metadata)

    def cancel(self, job_id: str) -> pb.Job:
        return self.stub.CancelJob(pb.JobRef(job_id=job_id), metadata=self.metadata)

    def list(self, state: int = 0, page_size: int = 50) -> Iterator[pb.Job]:
        token = ""
        while True:
            page = self.stub.ListJobs(pb.ListJobsRequest(state=state, page_size=page_size, page_token=token),
                                      metadata=self.metadata)
            yield from page.jobs
            if not page.next_page_token:
                return
            token = page.next_page_token

    def watch(self, job_id: str, timeout: float | None = None) -> Iterator[pb.JobEvent]:
        return self.stub.WatchJob(pb.JobRef(job_id=job_id), metadata=self.metadata, timeout=timeout)

    def result(self, job_id: str) -> dict:
        """The trajectories dict of a succeeded job (as ``trajectories.npy`` holds it) + ``session``."""
        chunks = self.stub.GetResult(pb.JobRef(job_id=job_id), metadata=self.metadata)
        head = next(chunks)
        n, m = head.n_frames, head.n_animals
        traj = np.full((n, m, 2), np.nan)
        prob = np.full((n, m, 1), np.nan)
        for c in chunks:
            rows = len(c.trajectories) // (2 * m) if m else 0
            traj[c.first_frame : c.first_frame + rows] = np.asarray(c.trajectories).reshape(rows, m, 2)
            prob[c.first_frame : c.first_frame + rows] = np.asarray(c.id_probabilities).reshape(rows, m, 1)
        result = json.loads(head.attributes_json)
        result.update(trajectories=traj, id_probabilities=prob, session=json.loads(head.session_json))
        return result

    def close(self) -> None:
        self.channel.close()


def _read(path: str | None, what: str) -> bytes | None:
    try:
        return Path(path).read_bytes() if path else None
    except OSError as exc:
        raise ValueError(f"cannot read the {what} {path}: {exc.strerror}") from None


STATE_NAMES = {v: k for k, v in pb.JobState.items()}


class _StageBar(tqdm):
    """A bar whose clock shows :attr:`seconds` (the stage's own time) instead of tqdm's, which keeps
    running until the bar closes."""

    seconds = 0.0

    @property
    def format_dict(self) -> dict:
        return {**super().format_dict, "elapsed": self.seconds}


class StageBars:
    """One progress bar per stage. A stage's clock starts when the stage before it finished (or when
    it is first reported, if another is still running) and stops when it reaches 100 %."""

    def __init__(self, file=None):
        self.file = file or sys.stderr
        self.bars: dict[str, _StageBar] = {}
        self.started: dict[str, float] = {}
        self.finished: dict[str, float] = {}

    def show(self, stages, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        for stage in stages:
            name = stage.stage
            if name not in self.bars:
                running = len(self.finished) < len(self.bars)
                self.started[name] = now if running or not self.finished else max(self.finished.values())
                self.bars[name] = _StageBar(total=100, desc=f"{name:>11}", unit="%", file=self.file, leave=True,
                                            bar_format="{desc} |{bar}| {n:3.0f}% {elapsed}")
            if stage.fraction >= 1.0:
                self.finished.setdefault(name, now)
            bar = self.bars[name]
            bar.seconds = self.finished.get(name, now) - self.started[name]
            bar.n = round(100 * stage.fraction, 1)
            bar.refresh()

    def close(self, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        for name, bar in self.bars.items():
            bar.seconds = self.finished.get(name, now) - self.started[name]
            bar.close()


def follow(client: Client, job_id: str, *, quiet: bool = False, check: Callable[[], None] | None = None,
           check_every_s: float = 2.0) -> pb.Job:
    """Watch a job to its end, with a progress bar per stage; reconnects if the stream drops.

    ``check`` is called every ``check_every_s`` seconds while the job runs (a job may say nothing
    for long) and may raise to stop following, e.g. when a local service died."""
    bars = None if quiet else StageBars()
    try:
        job = client.get(job_id)
        while True:
            try:
                for event in client.watch(job_id, timeout=check_every_s if check else None):
                    job = event.job
                    if bars is not None:
                        bars.show(job.stages)
                    if event.final:
                        return job
            except grpc.RpcError as exc:
                if check is not None and exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
                    check()
                    continue
                if exc.code() not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED):
                    raise
                time.sleep(1.0)  # the gateway restarted: jobs are durable, so watch again
    finally:
        if bars is not None:
            bars.close()


def format_job(job: pb.Job) -> str:
    state = STATE_NAMES.get(job.state, "?")
    figures = " ".join(f"{k}={v:g}" for k, v in sorted(job.figures.items()) if math.isfinite(v))
    return f"{job.job_id}  {state:<9} {job.stage:<11} {100 * job.fraction:5.1f}%  {job.name}  {figures}"


def asked_formats(session: dict) -> list[str]:
    """The trajectory formats a session's job asked for (the default when it named none)."""
    return list((session.get("parameters") or {}).get("trajectories_formats") or DEFAULT_FORMATS)


def write_result(result: dict, out_dir: Path, formats: list[str] | None = None) -> dict[str, Path]:
    """Write a fetched result as the same session folder the job wrote (or in ``formats``)."""
    from shoal.session import write_session

    session = result.pop("session")
    formats = formats or asked_formats(session)
    return write_session(out_dir, {**result, "session": session}, formats=tuple(formats))
