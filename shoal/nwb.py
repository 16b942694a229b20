"""Trajectories as NWB files (Neurodata Without Borders, the format DANDI archives), via ndx-pose.

NWB holds one subject per file and movement names a file's individual by its identifier, so Shoal
writes one file per identity, ``trajectories_nwb/identity_<i>.nwb``, whose identifier and subject id
are the identity's label. In its ``behavior`` module: a ``Skeleton`` of one node (``centroid``)
linked to the subject, and a ``PoseEstimation`` with one ``PoseEstimationSeries``: the centroid per
frame in pixels (NaN where unknown), timed by the frame rate, with the identity certainty as its
confidence. The video is an external ``ImageSeries`` (path relative to the file, as DANDI wants).
What NWB has no field for (Shoal's parameters, the estimated accuracy, setup points) is JSON in the
file's ``notes``. The session and subject come from the ``[nwb]`` parameter table
(:data:`NWB_FIELDS`).
"""

from __future__ import annotations

import json
import os
import warnings
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

import shoal
from shoal.atomic import replacing
from shoal.jsonsafe import json_safe

#: keys of the ``[nwb]`` parameter table, what each is, and its default
NWB_FIELDS = {
    "session_start_time": "when the recording started, ISO 8601 with a time zone "
                          "(default: the first video file's modification time, UTC)",
    "session_description": "what the session is (default: Shoal tracking of the video's file name)",
    "session_id": "the lab's name for the session (default: the Shoal job id)",
    "experimenter": "who recorded it, 'Last, First' (text or a list of them; default: none)",
    "lab": "lab name (default: none)",
    "institution": "institution (default: none)",
    "experiment_description": "the experiment (default: none)",
    "species": "Latin binomial, e.g. 'Danio rerio' (default: none; DANDI requires it)",
    "strain": "strain or line (default: none)",
    "sex": "M, F, U (unknown) or O (other), the same for every animal (default: U)",
    "age": "ISO 8601 duration, e.g. 'P90D' (default: none)",
    "genotype": "genotype (default: none)",
    "subject_description": "the animals (default: 'identity <label> tracked by Shoal')",
}
SEXES = ("M", "F", "U", "O")
REFERENCE_FRAME = "(0, 0) is the top-left corner of the video frame; x grows to the right and y downwards, in pixels"
CONFIDENCE = ("Shoal's identity certainty (id_probabilities): how sure the assignment of this animal to this "
              "identity is, not how precise the position is")
MISSING_LIBRARY = "the nwb format needs pynwb and ndx-pose: pip install 'shoal[nwb]'"


def check_nwb_metadata(value: Any) -> dict[str, Any]:
    """The ``[nwb]`` parameter table as plain text values; raises ValueError saying what is wrong.

    TOML dates arrive as datetimes and are kept as ISO 8601 text, so the table travels as JSON.
    """
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ValueError(f"must be a table of {', '.join(NWB_FIELDS)}, got {type(value).__name__}")
    unknown = sorted(set(value) - set(NWB_FIELDS))
    if unknown:
        raise ValueError(f"unknown key {unknown[0]!r}; use {', '.join(NWB_FIELDS)}")
    table: dict[str, Any] = {}
    for key, item in value.items():
        if key == "session_start_time":
            try:
                when = item if isinstance(item, datetime) else datetime.fromisoformat(str(item))
            except ValueError:
                raise ValueError(f"session_start_time {item!r} is not an ISO 8601 date and time") from None
            if when.tzinfo is None:
                raise ValueError(f"session_start_time {item!r} needs a time zone, e.g. {when.isoformat()}+01:00")
            table[key] = when.isoformat()
        elif key == "experimenter" and isinstance(item, list):
            if not all(isinstance(name, str) and name.strip() for name in item):
                raise ValueError("experimenter must be names as text")
            table[key] = list(item)
        elif not isinstance(item, str) or not item.strip():
            raise ValueError(f"{key} must be non-empty text, got {item!r}")
        else:
            table[key] = item
    if table.get("sex", "U") not in SEXES:
        raise ValueError(f"sex must be one of {', '.join(SEXES)}, got {table['sex']!r}")
    if "age" in table and not table["age"].startswith("P"):
        raise ValueError(f"age must be an ISO 8601 duration such as 'P90D' or 'P3W', got {table['age']!r}")
    return table


def nwb_metadata(session: dict) -> dict[str, Any]:
    """The ``[nwb]`` table a session was tracked (or is exported) with; empty when none was given."""
    return dict((session.get("parameters") or {}).get("nwb") or {})


def nwb_available() -> bool:
    from importlib.util import find_spec

    return find_spec("pynwb") is not None and find_spec("ndx_pose") is not None


def nwb_paths(folder: Path, n_identities: int) -> list[Path]:
    return [Path(folder) / f"identity_{i}.nwb" for i in range(1, n_identities + 1)]


def start_time(metadata: dict, video_paths: list[str]) -> datetime:
    """The ``[nwb]`` table's session start, else the first video's modification time (UTC)."""
    if metadata.get("session_start_time"):
        return datetime.fromisoformat(metadata["session_start_time"])
    try:
        return datetime.fromtimestamp(os.stat(video_paths[0]).st_mtime, UTC)
    except (OSError, IndexError):
        return datetime.fromtimestamp(0, UTC)


def write_nwb(folder: Path, trajectories: dict, session: dict) -> list[Path]:
    """Write one NWB file per identity of a session's trajectories dict into `folder`; returns their paths."""
    try:
        from ndx_pose import PoseEstimation, PoseEstimationSeries, Skeleton, Skeletons
        from pynwb import NWBHDF5IO, NWBFile
        from pynwb.file import Subject
        from pynwb.image import ImageSeries
    except ImportError:
        raise RuntimeError(MISSING_LIBRARY) from None
    from hdmf.backends.hdf5 import H5DataIO

    metadata = nwb_metadata(session)
    fps = float(trajectories["frames_per_second"])
    videos = trajectories["video_paths"]
    starts = (session.get("video") or {}).get("file_starts") or [0]
    name = Path(videos[0]).name if videos else "the video"
    notes = json.dumps(json_safe(
        {key: session.get(key) for key in ("shoal_version", "job_id", "started_utc", "finished_utc", "parameters",
                                           "effective_parameters", "statistics")}
        | {key: trajectories[key] for key in ("estimated_accuracy", "identities_labels", "identities_groups",
                                              "body_length", "length_unit")}
        | {"setup_points_px": trajectories["setup_points"]}))
    paths = nwb_paths(folder, len(trajectories["identities_labels"]))
    for i, (label, path) in enumerate(zip(trajectories["identities_labels"], paths, strict=True)):
        nwbfile = NWBFile(
            session_description=metadata.get("session_description") or f"Shoal tracking of {name}",
            identifier=str(label),
            session_start_time=start_time(metadata, videos),
            session_id=metadata.get("session_id") or session.get("job_id"),
            experimenter=metadata.get("experimenter"),
            lab=metadata.get("lab"),
            institution=metadata.get("institution"),
            experiment_description=metadata.get("experiment_description"),
            notes=notes,
            source_script=f"Shoal {shoal.__version__}",
            source_script_file_name="shoal",
        )
        nwbfile.subject = Subject(
            subject_id=str(label),
            species=metadata.get("species"),
            strain=metadata.get("strain"),
            sex=metadata.get("sex", "U"),
            age=metadata.get("age"),
            genotype=metadata.get("genotype"),
            description=metadata.get("subject_description") or f"identity {label} tracked by Shoal",
        )
        video = ImageSeries(
            name="video",
            description="the recording Shoal tracked (frames of several files follow one another)",
            unit="n.a.",
            external_file=[os.path.relpath(Path(v).resolve(), Path(folder).resolve()) for v in videos],
            starting_frame=[int(s) for s in starts] if len(starts) == len(videos) else [0] * len(videos),
            format="external",
            rate=fps,
            num_samples=len(trajectories["trajectories"]),
        )
        nwbfile.add_acquisition(video)
        skeleton = Skeleton(name="centroid_skeleton", nodes=["centroid"], edges=np.zeros((0, 2), dtype=np.uint8),
                            subject=nwbfile.subject)
        positions = trajectories["trajectories"][:, i, :]
        certainty = np.where(np.isfinite(positions).all(axis=1), trajectories["id_probabilities"][:, i, 0], np.nan)
        series = PoseEstimationSeries(
            name="centroid",
            description=f"centroid of identity {label}",
            data=H5DataIO(positions, compression="gzip"),
            unit="pixels",
            reference_frame=REFERENCE_FRAME,
            rate=fps,
            starting_time=0.0,
            confidence=H5DataIO(certainty, compression="gzip"),
            confidence_definition=CONFIDENCE,
        )
        pose = PoseEstimation(
            name="PoseEstimation",
            pose_estimation_series=[series],
            description=f"identity {label} tracked by Shoal {shoal.__version__} (idtracker.ai's method); "
                        f"estimated accuracy {_accuracy(trajectories['estimated_accuracy'])}",
            scorer="Shoal",
            source_software="Shoal",
            source_software_version=shoal.__version__,
            skeleton=skeleton,
            source_video=video,
        )
        behavior = nwbfile.create_processing_module(name="behavior", description="animal positions from Shoal")
        behavior.add(Skeletons(skeletons=[skeleton]))
        behavior.add(pose)
        with replacing(path) as temporary, warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*does not end in '.nwb'")  # the temporary name
            with NWBHDF5IO(temporary, mode="w") as io:
                io.write(nwbfile)
    return paths


def _accuracy(value: float | None) -> str:
    return "unknown" if value is None else f"{value:.4f}"
