"""The job's videos (``output_video``, ``output_individual_videos``): `shoal video` run by the job.

The assembler renders them because it already holds the trajectories, writes the session folder on
the data volume and can read the videos there. They come after the session folder is complete,
and any failure only adds a warning: a job never loses its trajectories to a video.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import numpy as np

from shoal.identity_requests import Progress
from shoal.params import TrackingParams
from shoal.render import SessionVideos, write_session_videos
from shoal.session import update_session_json

log = logging.getLogger("shoal.assembler")


class _Cancelled(Exception):
    """Raised from the progress callback to stop rendering a job that was closed."""


def write_job_videos(
    out_dir: Path, params: TrackingParams, trajectories: np.ndarray, body_length: float, video_paths: list[str],
    progress: Progress, cancelled: threading.Event,
) -> list[str]:
    """Render the videos `params` asks for into `out_dir`, reporting stage "video"; returns warnings.

    What was written goes into session.json under "videos" (paths relative to the session folder),
    and the warnings into its "warnings", so a fetched session.json says where the videos are.
    """
    if not (params.output_video or params.output_individual_videos):
        return []

    def report(fraction: float) -> None:
        if cancelled.is_set():
            raise _Cancelled
        progress("video", fraction, {})

    progress("video", 0.0, {})
    try:
        videos = write_session_videos(
            out_dir, trajectories, params.identities_labels, body_length, video_paths,
            overlay=params.output_video, individual=params.output_individual_videos,
            trail=params.video_trail, side=params.individual_video_size, progress=report)
    except _Cancelled:
        return []
    except Exception as exc:  # an unforeseen rendering bug: the written trajectories still stand
        log.exception("videos of %s failed", out_dir)
        videos = SessionVideos(warnings=[f"videos not written: {exc!r}"])
    record = {"overlay": videos.overlay, "individual": videos.individual}
    try:
        update_session_json(out_dir, {"videos": record}, videos.warnings)
    except (OSError, ValueError) as exc:
        videos.warnings.append(f"session.json does not list the videos: {exc}")
    progress("video", 1.0, {})
    return videos.warnings
