"""NWB and SLEAP files of a tracked session open in movement, sleap-io and pynwb with the session's
positions, identities and certainties; `shoal export` writes them for an existing session."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import h5py
import numpy as np
import pytest
import xarray as xr

from shoal.cli import main
from tests.gateway_services import tiny_video

LABELS = ["female", "male"]
NWB_TABLE = """
[nwb]
species = "Drosophila melanogaster"
sex = "F"
age = "P5D"
session_start_time = 2026-03-01T09:30:00+01:00
experimenter = ["Curie, Marie"]
lab = "Fly lab"
"""


@pytest.fixture(scope="module")
def session(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two simulated flies tracked with identities by `shoal track`, writing npy, sleap and nwb."""
    folder = tmp_path_factory.mktemp("exports")
    video = tiny_video(folder / "video", n_frames=300)
    params = folder / "params.toml"
    params.write_text(f"identities_labels = {json.dumps(LABELS)}\n" + NWB_TABLE)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHOAL_")} | {"TMPDIR": str(folder)}
    run = subprocess.run([sys.executable, "-m", "shoal.cli", "track", str(video), "--animals", "2", "--formats",
                          "npy", "sleap", "nwb", "--params", str(params), "--out", str(folder / "session"), "--quiet"],
                         capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 0, run.stderr
    return folder / "session"


def _trajectories(session: Path) -> dict:
    return np.load(session / "trajectories" / "trajectories.npy", allow_pickle=True).item()


def _load(path: Path, software: str, **kwargs) -> xr.Dataset:
    from movement.io import load_poses

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # from_file: the documented entry point
        return load_poses.from_file(path, source_software=software, **kwargs)


def _merged(files: list[Path]) -> xr.Dataset:
    """One movement dataset of all individuals, as movement's docs merge single-individual NWB files."""
    return xr.merge([_load(path, "NWB") for path in files], join="outer", compat="no_conflicts")


def _nwb_files(folder: Path) -> list[Path]:
    return sorted(folder.glob("identity_*.nwb"), key=lambda p: int(p.stem.split("_")[1]))


def test_movement_loads_the_nwb_files_with_every_position_and_identity(session: Path):
    result = _trajectories(session)
    files = _nwb_files(session / "trajectories" / "trajectories_nwb")
    assert len(files) == 2
    ds = _merged(files)
    assert list(ds.individuals.values) == LABELS and list(ds.keypoints.values) == ["centroid"]
    position = ds.position.sel(keypoints="centroid", individuals=LABELS).transpose("time", "individuals", "space")
    expected = result["trajectories"]
    assert np.isfinite(expected).mean() > 0.9  # a real tracking, mostly known positions
    np.testing.assert_allclose(position.values, expected, atol=1e-6, rtol=0)  # NaN where NaN
    confidence = ds.confidence.sel(keypoints="centroid", individuals=LABELS).transpose("time", "individuals").values
    known = np.isfinite(expected[..., 0])
    np.testing.assert_allclose(confidence[known], result["id_probabilities"][..., 0][known], atol=1e-12)
    assert ds.attrs["fps"] == pytest.approx(result["frames_per_second"])
    np.testing.assert_allclose(ds.time.values, np.arange(len(expected)) / result["frames_per_second"])


def test_the_nwb_files_validate_and_carry_the_session(session: Path):
    from nwbinspector import Importance, inspect_nwbfile
    from pynwb import NWBHDF5IO, validate

    session_json = json.loads((session / "session.json").read_text())
    for label, path in zip(LABELS, _nwb_files(session / "trajectories" / "trajectories_nwb"), strict=True):
        assert not validate(path=str(path))
        serious = [m for m in inspect_nwbfile(nwbfile_path=str(path))
                   if m.importance.value >= Importance.BEST_PRACTICE_VIOLATION.value]
        assert not serious, [m.message for m in serious]
        with NWBHDF5IO(path, mode="r") as io:
            nwb = io.read()
            assert nwb.identifier == label and nwb.subject.subject_id == label
            assert nwb.subject.species == "Drosophila melanogaster" and nwb.subject.age == "P5D"
            assert nwb.session_start_time.isoformat() == "2026-03-01T09:30:00+01:00"
            assert list(nwb.experimenter) == ["Curie, Marie"] and nwb.lab == "Fly lab"
            assert nwb.session_id == session_json["job_id"]
            video = nwb.acquisition["video"]
            assert (path.parent / video.external_file[0]).resolve() == Path(session_json["video"]["paths"][0])
            pose = nwb.processing["behavior"]["PoseEstimation"]
            assert pose.source_software == "Shoal" and pose.source_video is video
            assert pose.skeleton.subject is nwb.subject
            notes = json.loads(nwb.notes)
            assert notes["estimated_accuracy"] == session_json["statistics"]["estimated_accuracy"]
            assert notes["effective_parameters"] == session_json["effective_parameters"]
    assert not any("species" in w for w in session_json["warnings"])


def test_sleap_and_movement_open_the_sleap_file(session: Path):
    import sleap_io

    result = _trajectories(session)
    path = session / "trajectories" / "trajectories.analysis.h5"
    ds = _load(path, "SLEAP", fps=result["frames_per_second"])
    assert list(ds.individuals.values) == LABELS
    position = ds.position.sel(keypoints="centroid").transpose("time", "individuals", "space").values
    np.testing.assert_allclose(position, result["trajectories"], rtol=1e-6, atol=0)  # movement reads float32

    labels = sleap_io.load_file(str(path))
    assert [track.name for track in labels.tracks] == LABELS
    assert Path(labels.video.filename).name == "video.avi"
    frame = next(lf for lf in labels.labeled_frames if len(lf.instances) == 2)
    for instance in frame.instances:
        i = LABELS.index(instance.track.name)
        np.testing.assert_allclose(instance.numpy()[0], result["trajectories"][frame.frame_idx, i])
        assert instance.tracking_score == pytest.approx(result["id_probabilities"][frame.frame_idx, i, 0])


def _export(*argv: str, capsys) -> tuple[int, str, str]:
    code = main(["export", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_export_writes_what_the_job_wrote(session: Path, tmp_path: Path, capsys):
    code, out, err = _export(str(session), "--format", "sleap", "--out", str(tmp_path / "sleap"), capsys=capsys)
    assert code == 0, err
    assert out.strip() == f"sleap: {tmp_path / 'sleap' / 'trajectories.analysis.h5'}"
    with h5py.File(session / "trajectories" / "trajectories.analysis.h5") as job, \
            h5py.File(tmp_path / "sleap" / "trajectories.analysis.h5") as exported:
        for name in ("tracks", "point_scores", "track_occupancy", "track_names"):
            np.testing.assert_array_equal(exported[name][:], job[name][:])

    metadata = tmp_path / "metadata.toml"
    metadata.write_text('[nwb]\nspecies = "Drosophila simulans"\nsession_start_time = "2026-04-01T08:00:00Z"\n')
    code, out, err = _export(str(session), "--format", "nwb", "--out", str(tmp_path / "nwb"), "--metadata",
                             str(metadata), capsys=capsys)
    assert code == 0, err
    assert out.strip() == f"nwb: {tmp_path / 'nwb' / 'trajectories_nwb'}"
    ds = _merged(_nwb_files(tmp_path / "nwb" / "trajectories_nwb"))
    position = ds.position.sel(keypoints="centroid", individuals=LABELS).transpose("time", "individuals", "space")
    np.testing.assert_allclose(position.values, _trajectories(session)["trajectories"], atol=1e-6, rtol=0)
    from pynwb import NWBHDF5IO

    with NWBHDF5IO(_nwb_files(tmp_path / "nwb" / "trajectories_nwb")[0], mode="r") as io:
        assert io.read().subject.species == "Drosophila simulans"

    code, out, err = _export(str(session), "--format", "csv", "--out", str(tmp_path / "csv"), capsys=capsys)
    assert code == 0, err
    header = (tmp_path / "csv" / "trajectories_csv" / "trajectories.csv").read_text().splitlines()[0]
    assert header == "time,x1,y1,x2,y2"


def test_export_refuses_what_it_cannot_do_in_one_line(session: Path, tmp_path: Path, capsys, monkeypatch):
    def one_line(code: int, err: str, *words: str) -> None:
        lines = err.strip().splitlines()
        assert code == 2 and len(lines) == 1 and lines[0].startswith("shoal: "), err
        for word in words:
            assert word in lines[0], lines[0]

    code, _, err = _export(str(tmp_path), "--format", "nwb", capsys=capsys)
    one_line(code, err, "holds no trajectories/trajectories.npy")
    code, _, err = _export(str(tmp_path / "absent"), "--format", "nwb", capsys=capsys)
    one_line(code, err, "no such folder")
    bad = tmp_path / "bad.toml"
    bad.write_text('[nwb]\nspecies = "Danio rerio"\nsession_start_time = 2026-03-01T09:30:00\n')
    code, _, err = _export(str(session), "--format", "nwb", "--metadata", str(bad), "--out", str(tmp_path / "x"),
                           capsys=capsys)
    one_line(code, err, "session_start_time", "needs a time zone")
    assert not (tmp_path / "x").exists()

    import shoal.trajectory_files

    monkeypatch.setattr(shoal.trajectory_files, "nwb_available", lambda: False)  # as without the nwb extra
    code, _, err = _export(str(session), "--format", "nwb", "--out", str(tmp_path / "y"), capsys=capsys)
    one_line(code, err, "pip install 'shoal[nwb]'")
    code = main(["track", str(session.parent / "video" / "video.avi"), "--animals", "2", "--formats", "nwb",
                 "--out", str(tmp_path / "z"), "--quiet"])
    one_line(code, capsys.readouterr().err, "trajectories_formats", "pip install 'shoal[nwb]'")
    assert not (tmp_path / "z").exists()


def test_a_session_of_two_videos_gives_one_sleap_file_per_video(tmp_path: Path):
    from shoal.session import write_session

    rng = np.random.default_rng(0)
    positions = rng.uniform(0, 100, (50, 2, 2))
    positions[5:9, 1] = np.nan
    videos = [str(tmp_path / "a.avi"), str(tmp_path / "b.avi")]
    write_session(tmp_path / "s", {
        "trajectories": positions, "id_probabilities": rng.uniform(0.5, 1, (50, 2, 1)), "frames_per_second": 25,
        "body_length": 10, "width": 100, "height": 100, "video_paths": videos,
        "session": {"video": {"paths": videos, "file_starts": [0, 30], "file_frames": [30, 20]}},
    }, formats=("sleap",))
    for k, (video, frames) in enumerate(zip(videos, (slice(0, 30), slice(30, 50)), strict=True), start=1):
        path = tmp_path / "s" / "trajectories" / f"trajectories_{k}.analysis.h5"
        ds = _load(path, "SLEAP")
        with h5py.File(path) as h5:
            assert h5["video_path"][()].decode() == video
        np.testing.assert_allclose(ds.position.sel(keypoints="centroid").transpose("time", "individuals", "space"),
                                   positions[frames], rtol=1e-6)


def test_a_gateway_without_the_nwb_extra_refuses_nwb_jobs_at_submission(session: Path, tmp_path: Path):
    import grpc

    from shoal.v1 import jobs_pb2 as pb
    from shoal.v1 import jobs_pb2_grpc as pb_grpc
    from tests.gateway_services import Services

    hide = tmp_path / "hide"
    hide.mkdir()
    (hide / "sitecustomize.py").write_text("import sys\nsys.modules['pynwb'] = None  # as if not installed\n")
    video = session.parent / "video" / "video.avi"
    with Services(session.parent, tmp_path / "work", env={"PYTHONPATH": f"{hide}:{os.getcwd()}"}) as services:
        services.start_gateway()
        stub = pb_grpc.JobServiceStub(services.channel())
        request = pb.SubmitJobRequest(video_paths=[str(video)], params=pb.TrackingParams(
            number_of_animals=2, trajectories_formats=["npy", "nwb"]))
        with pytest.raises(grpc.RpcError) as err:
            stub.SubmitJob(request, timeout=10)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "pip install 'shoal[nwb]'" in err.value.details()
