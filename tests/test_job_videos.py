"""Videos as a job option: the job renders what `shoal video` would, without risking its trajectories."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import cv2
import numpy as np
import pytest

from services.assembler import videos as job_videos
from services.gateway.progress import STAGE_WEIGHTS, stage_weights
from shoal.cli import main, parser
from shoal.cli.flags import build_params
from shoal.params import ParamError, TrackingParams
from shoal.params_proto import params_from_proto, params_to_proto
from shoal.render import write_session_videos
from shoal.session import write_session
from shoal.sim import SimulationConfig, write_simulation


def _valid(**kw) -> dict:
    return {"video_paths": ["/data/v.avi"], "number_of_animals": 3, **kw}


def _video_shape(path: Path) -> tuple[int, int, int]:
    """(frames, height, width), counting the frames that decode."""
    capture = cv2.VideoCapture(str(path))
    frames, shape = 0, (0, 0)
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        frames, shape = frames + 1, frame.shape[:2]
    capture.release()
    return frames, *shape


# -- parameters -----------------------------------------------------------------------------------


@pytest.mark.parametrize("extra, field, words", [
    ({"output_video": "yes"}, "output_video", "true or false"),
    ({"output_individual_videos": 1}, "output_individual_videos", "true or false"),
    ({"output_video": True, "video_trail": -1}, "video_trail", ">= 0"),
    ({"output_video": True, "video_trail": 2.5}, "video_trail", "whole number"),
    ({"video_trail": 10}, "video_trail", "only applies with output_video"),
    ({"output_individual_videos": True, "individual_video_size": 4}, "individual_video_size", ">= 8"),
    ({"output_video": True, "individual_video_size": 64}, "individual_video_size",
     "only applies with output_individual_videos"),
])
def test_bad_video_options_name_their_field(extra, field, words):
    with pytest.raises(ParamError) as info:
        TrackingParams.from_dict(_valid(**extra)).validate()
    assert info.value.field == field and words in str(info.value)


def test_video_options_come_from_toml_cli_and_the_grpc_extra_map(tmp_path, monkeypatch):
    toml = tmp_path / "p.toml"
    toml.write_text("number_of_animals = 3\nOUTPUT_VIDEO = true\nvideo_trail = 5\n")
    from_file = TrackingParams.from_toml(toml)
    assert from_file.output_video and from_file.video_trail == 5 and not from_file.output_individual_videos
    args = parser().parse_args(["track", "v.avi", "--params", str(toml), "--individual-videos",
                                "--individual-video-size", "48", "--video-trail", "7"])
    params = build_params(args, ["v.avi"])
    assert params.video_paths == ["v.avi"]  # not here: left for the gateway to find under its data root
    monkeypatch.chdir(tmp_path)
    assert build_params(args, ["p.toml"]).video_paths == [str(toml.resolve())]  # here: sent absolute
    assert (params.output_video, params.video_trail) == (True, 7)
    assert (params.output_individual_videos, params.individual_video_size) == (True, 48)
    message = params_to_proto(params)
    assert {"output_video", "output_individual_videos", "video_trail", "individual_video_size"} <= set(message.extra)
    back = TrackingParams.from_dict({**params_from_proto(message), "video_paths": params.video_paths}).validate()
    assert back == params
    plain = params_to_proto(TrackingParams(**_valid()))
    assert not any("video" in key for key in plain.extra)  # defaults stay off the wire


def test_cli_refuses_a_size_without_its_videos(capsys):
    assert main(["track", "v.avi", "--animals", "3", "--individual-video-size", "40"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["shoal: individual_video_size: only applies with output_individual_videos"]


def test_video_stage_weighs_in_only_for_jobs_with_videos():
    assert stage_weights({}) is STAGE_WEIGHTS
    both = stage_weights({"output_video": True, "output_individual_videos": True})
    assert list(both)[-1] == "video" and sum(both.values()) == pytest.approx(1.0)
    assert both["video"] > stage_weights({"output_video": True})["video"] > 0


# -- rendering for a job --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def simulated(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("jobvideo")
    files = write_simulation(SimulationConfig(n_animals=3, n_frames=16, seed=2), root / "video")
    truth = np.load(files["ground_truth"])
    return {"video": files["video"], "positions": truth["positions"], "body_length": float(truth["body_length"])}


def _session(folder: Path, simulated: dict, video: Path | None = None) -> None:
    write_session(folder, {
        "trajectories": simulated["positions"], "frames_per_second": 30.0, "body_length": simulated["body_length"],
        "width": 500, "height": 500, "video_paths": [str(video or simulated["video"])],
        "session": {"warnings": ["earlier"]},
    }, formats=("npy",))


def test_session_videos_report_progress_and_leave_no_partial_files(simulated, tmp_path):
    fractions: list[float] = []
    videos = write_session_videos(tmp_path, simulated["positions"], None, simulated["body_length"],
                                  [str(simulated["video"])], overlay=True, individual=True, side=32,
                                  progress=fractions.append)
    assert videos.overlay == "overlay.mp4" and videos.warnings == []
    assert videos.individual == [f"individual_videos/individual_{i}.mp4" for i in (1, 2, 3)]
    assert _video_shape(tmp_path / "overlay.mp4") == (16, 500, 500)
    assert _video_shape(tmp_path / "individual_videos" / "individual_2.mp4") == (16, 32, 32)
    assert fractions == sorted(fractions) and fractions[-1] == 1.0 and 0 < fractions[0] < 0.1
    assert not [p for p in tmp_path.rglob(".*") if "partial" in p.name]


def test_a_failed_video_is_a_warning_and_the_session_folder_stays(simulated, tmp_path):
    _session(tmp_path, simulated, video=tmp_path / "gone.avi")
    before = (tmp_path / "trajectories" / "trajectories.npy").read_bytes()
    params = TrackingParams(**_valid(output_video=True, output_individual_videos=True))
    stages: list[tuple[str, float]] = []
    warnings = job_videos.write_job_videos(tmp_path, params, simulated["positions"], simulated["body_length"],
                                           [str(tmp_path / "gone.avi")], lambda s, f, _: stages.append((s, f)),
                                           threading.Event())
    assert len(warnings) == 1 and warnings[0].startswith("overlay video and individual videos not written")
    assert "gone.avi" in warnings[0]
    assert stages == [("video", 0.0), ("video", 1.0)]
    session = json.loads((tmp_path / "session.json").read_text())
    assert session["videos"] == {"overlay": None, "individual": []}
    assert session["warnings"] == ["earlier", warnings[0]]
    assert (tmp_path / "trajectories" / "trajectories.npy").read_bytes() == before


def test_an_unforeseen_rendering_error_is_a_warning_too(simulated, tmp_path, monkeypatch):
    _session(tmp_path, simulated)

    def broken(*_args, **_kwargs):
        raise RuntimeError("codec exploded")

    monkeypatch.setattr(job_videos, "write_session_videos", broken)
    params = TrackingParams(**_valid(output_video=True))
    warnings = job_videos.write_job_videos(tmp_path, params, simulated["positions"], simulated["body_length"],
                                           [str(simulated["video"])], lambda *_: None, threading.Event())
    assert warnings == ["videos not written: RuntimeError('codec exploded')"]


def test_a_closed_job_stops_rendering(simulated, tmp_path):
    _session(tmp_path, simulated)
    cancelled = threading.Event()

    def progress(stage: str, fraction: float, _figures: dict) -> None:
        if fraction > 0.2:
            cancelled.set()

    params = TrackingParams(**_valid(output_video=True))
    assert job_videos.write_job_videos(tmp_path, params, simulated["positions"], simulated["body_length"],
                                       [str(simulated["video"])], progress, cancelled) == []
    assert not list(tmp_path.glob("*.mp4")) and not list(tmp_path.glob(".*partial*"))


# -- end to end -----------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_local_job_renders_the_videos_and_fetch_points_to_them(tmp_path, capsys):
    from shoal.client import Client
    from shoal.local import LocalCluster
    from shoal.v1 import jobs_pb2 as pb

    files = write_simulation(SimulationConfig(n_animals=3, n_frames=150, seed=5), tmp_path / "video")
    n_frames, height, width = _video_shape(files["video"])
    out = tmp_path / "session"
    params = TrackingParams(video_paths=[str(files["video"])], number_of_animals=3, track_wo_identities=True,
                            output_video=True, output_individual_videos=True).validate()
    with LocalCluster(tmp_path, tmp_path / "work", segmenters=1) as cluster:
        client = Client(cluster.grpc_address)
        client.wait_ready()
        job_id = client.submit(params, output_dir=str(out)).job_id
        stages_seen = set()
        for event in client.watch(job_id):
            stages_seen.add(event.job.stage)
            job = event.job
            if event.final:
                break
        assert job.state == pb.SUCCEEDED, job.error
        assert "video" in stages_seen
        assert {s.stage: s.fraction for s in job.stages}["video"] == 1.0
        assert main(["fetch", job_id, "--out", str(tmp_path / "fetched"), "--gateway", cluster.grpc_address]) == 0
        client.close()
    fetched = capsys.readouterr().out
    assert f"videos (not fetched) on the gateway's data volume: {out / 'overlay.mp4'}" in fetched
    assert str(out / "individual_videos" / "individual_3.mp4") in fetched

    assert n_frames == 150
    assert _video_shape(out / "overlay.mp4") == (150, height, width)
    individual = sorted(p.name for p in (out / "individual_videos").iterdir())
    assert individual == ["individual_1.mp4", "individual_2.mp4", "individual_3.mp4"]
    session = json.loads((out / "session.json").read_text())
    side = max(8, int(np.ceil(session["effective_parameters"]["body_length_px"] / 2)) * 2)
    assert _video_shape(out / "individual_videos" / "individual_1.mp4") == (150, side, side)
    assert session["videos"]["overlay"] == "overlay.mp4"
    assert len(session["videos"]["individual"]) == 3
    assert session["parameters"]["output_video"] is True
    assert (out / "trajectories" / "trajectories.npy").exists()
