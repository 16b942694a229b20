import csv
import json

import h5py
import msgpack
import numpy as np
import pytest

from shoal.params import ParamError, TrackingParams
from shoal.session import load_session, warn_inconsistent_frames, write_session

IDTRACKERAI_V6_KEYS = {
    "trajectories",
    "id_probabilities",
    "areas",
    "frames_per_second",
    "body_length",
    "estimated_accuracy",
    "silhouette_score",
    "fraction_identified",
    "setup_points",
    "identities_labels",
    "identities_groups",
    "length_unit",
    "version",
    "width",
    "height",
    "video_paths",
}

F, N = 50, 3


def make_result(**changes) -> dict:
    rng = np.random.default_rng(0)
    trajectories = rng.uniform(0, 500, (F, N, 2))
    trajectories[10:13, 1] = np.nan  # animal 2 lost in a crossing
    probabilities = rng.uniform(0.5, 1, (F, N, 1))
    probabilities[10:13, 1] = np.nan
    result = {
        "trajectories": trajectories,
        "id_probabilities": probabilities,
        "areas": {
            "mean": np.array([100.0, 110, 120]),
            "median": np.array([101.0, 111, 121]),
            "std": np.array([5.0, 6, 7]),
        },
        "frames_per_second": 25.0,
        "body_length": np.float64(31.5),
        "estimated_accuracy": 0.995,
        "silhouette_score": np.float32(0.93),
        "setup_points": {"border": [(0, 0), (10, 0), (10, 10)]},
        "version": "0.1.0",
        "width": np.int64(640),
        "height": 480,
        "video_paths": ["/data/a.avi", "/data/b.avi"],
        "session": {
            "parameters": {"number_of_animals": N, "intensity_ths": (0, 130)},
            "timers": {"segmentation": np.float64(12.5)},
            "statistics": {"loss": float("nan")},
            "warnings": ["videos have different frame rates"],
        },
    }
    result.update(changes)
    return result


def test_npy_round_trip_has_idtracker_keys_shapes_and_types(tmp_path):
    written = write_session(tmp_path, make_result())
    direct = np.load(written["npy"], allow_pickle=True).item()
    loaded = load_session(tmp_path)
    assert set(loaded) == set(direct) == IDTRACKERAI_V6_KEYS
    assert loaded["trajectories"].shape == (F, N, 2) and loaded["trajectories"].dtype == np.float64
    assert loaded["id_probabilities"].shape == (F, N, 1) and loaded["id_probabilities"].dtype == np.float64
    np.testing.assert_array_equal(loaded["trajectories"], make_result()["trajectories"])
    assert loaded["fraction_identified"] == pytest.approx(1 - 3 / (F * N))
    assert loaded["identities_labels"] == ["1", "2", "3"]
    assert loaded["identities_groups"] == {} and loaded["length_unit"] is None
    assert type(loaded["width"]) is int and type(loaded["body_length"]) is float
    assert loaded["areas"]["std"].tolist() == [5, 6, 7]


def test_optional_fragment_connectivity_and_missing_accuracy(tmp_path):
    write_session(tmp_path, make_result(fragment_connectivity=0.8, estimated_accuracy=None), formats=("npy",))
    loaded = load_session(tmp_path)
    assert loaded["fragment_connectivity"] == 0.8
    assert loaded["estimated_accuracy"] is None


def test_h5_is_readable_with_h5py(tmp_path):
    written = write_session(tmp_path, make_result())
    with h5py.File(written["h5"], "r") as h5:
        np.testing.assert_array_equal(h5["trajectories"][:], make_result()["trajectories"])
        assert h5["trajectories"].compression == "gzip"
        assert h5["id_probabilities"].shape == (F, N, 1)
        assert h5["areas/median"][:].tolist() == [101, 111, 121]
        assert h5["setup_points/border"].shape == (3, 2)
        assert h5.attrs["frames_per_second"] == 25.0
        assert h5.attrs["length_unit"] == -1
        assert h5.attrs["width"] == 640
        assert list(h5.attrs["identities_labels"]) == ["1", "2", "3"]
        assert list(h5.attrs["video_paths"]) == ["/data/a.avi", "/data/b.avi"]


def test_csv_header_rows_and_nan(tmp_path):
    written = write_session(tmp_path, make_result())
    rows = list(csv.reader(written["csv"].open()))
    assert rows[0] == ["time", "x1", "y1", "x2", "y2", "x3", "y3"]
    assert len(rows) == F + 1
    assert rows[11][0] == "0.400"  # frame 10 at 25 fps
    assert rows[11][3:5] == ["nan", "nan"]
    assert float(rows[1][1]) == pytest.approx(make_result()["trajectories"][0, 0, 0], abs=1e-3)
    folder = written["csv"].parent
    probabilities = list(csv.reader((folder / "id_probabilities.csv").open()))
    assert probabilities[0] == ["time", "id_probabilities1", "id_probabilities2", "id_probabilities3"]
    assert len(probabilities) == F + 1
    areas = list(csv.reader((folder / "areas.csv").open()))
    assert areas[0] == ["mean", "median", "standard_deviation"] and len(areas) == N + 1
    attributes = json.loads((folder / "attributes.json").read_text())
    assert attributes["frames_per_second"] == 25.0
    assert "trajectories" not in attributes and "areas" not in attributes


def test_tidy_csv_lists_only_known_positions(tmp_path):
    written = write_session(tmp_path, make_result(), formats=("csv_tidy",))
    assert set(written) == {"session", "csv_tidy"}
    with written["csv_tidy"].open() as stream:
        rows = list(csv.DictReader(stream))
    assert list(rows[0]) == ["frame", "time", "individual", "x", "y", "probability"]
    assert len(rows) == F * N - 3
    assert not any(row["frame"] == "11" and row["individual"] == "2" for row in rows)
    row = next(row for row in rows if row["frame"] == "4" and row["individual"] == "3")
    assert float(row["x"]) == pytest.approx(make_result()["trajectories"][4, 2, 0], abs=1e-3)
    assert float(row["time"]) == pytest.approx(4 / 25)


def test_session_json_is_valid_json_even_with_nan(tmp_path):
    written = write_session(tmp_path, make_result(), formats=())
    text = written["session"].read_text()
    assert "NaN" not in text
    session = json.loads(text)
    assert session["statistics"]["loss"] is None
    assert session["statistics"]["estimated_accuracy"] == 0.995
    assert session["statistics"]["silhouette_score"] == pytest.approx(0.93)
    assert session["parameters"]["intensity_ths"] == [0, 130]
    assert session["timers"]["segmentation"] == 12.5


def test_failed_write_leaves_previous_file_and_no_temporary(tmp_path):
    write_session(tmp_path, make_result(), formats=("npy",))
    bad = make_result(identities_groups={"group": object()})  # h5py cannot store it: fails mid-write
    with pytest.raises(TypeError):
        write_session(tmp_path, bad, formats=("h5",))
    folder = tmp_path / "trajectories"
    assert sorted(path.name for path in folder.iterdir()) == ["trajectories.npy"]
    assert load_session(tmp_path)["trajectories"].shape == (F, N, 2)


def test_bad_inputs_are_refused_with_a_reason(tmp_path):
    with pytest.raises(ValueError, match="unknown output formats"):
        write_session(tmp_path, make_result(), formats=("parquet",))
    result = make_result()
    del result["frames_per_second"]
    with pytest.raises(ValueError, match="frames_per_second"):
        write_session(tmp_path, result)
    with pytest.raises(ValueError, match="identity labels"):
        write_session(tmp_path, make_result(identities_labels=["a"]))
    with pytest.raises(FileNotFoundError, match="no trajectories"):
        load_session(tmp_path / "elsewhere")


def test_inconsistent_frames_file(tmp_path):
    path = warn_inconsistent_frames(tmp_path, np.array([7, 3, 7]))
    assert path.read_text().split() == ["frame", "3", "7"]
    assert warn_inconsistent_frames(tmp_path, np.array([], dtype=int)) is None
    assert not path.exists()


@pytest.mark.parametrize("formats", [("npy",), ("h5",), ("csv",), ("csv_tidy",), ("npy", "h5", "csv", "csv_tidy")])
def test_each_requested_format_and_only_those_is_written(tmp_path, formats):
    written = write_session(tmp_path, make_result(), formats=formats)
    assert set(written) == {"session", *formats}
    files = {path.relative_to(tmp_path / "trajectories").as_posix()
             for path in (tmp_path / "trajectories").rglob("*") if path.is_file()}
    expected = {
        "npy": {"trajectories.npy"},
        "h5": {"trajectories.h5"},
        "csv": {f"trajectories_csv/{name}" for name in
                ("trajectories.csv", "id_probabilities.csv", "areas.csv", "attributes.json")},
        "csv_tidy": {"trajectories_tidy.csv", "attributes_tidy.json"},
    }
    assert files == set().union(*(expected[f] for f in formats))


SETUP_TOML = """\
video_paths = ['/data/a.avi']
number_of_animals = 3
identities_labels = ['male', 'female A', 'female B']
trajectories_formats = ['npy', 'h5', 'csv', 'csv_tidy']

[setup_points]
border = [[0, 0], [640, 0], [640, 480], [0, 480]]
feeder = [[320.5, 240]]
"""


def _params_from_toml(tmp_path) -> TrackingParams:
    """A user's TOML through the path a job's parameters take: file, validation, msgpack, service."""
    path = tmp_path / "params.toml"
    path.write_text(SETUP_TOML)
    params = TrackingParams.from_toml(path).validate()
    return TrackingParams.from_dict(msgpack.unpackb(msgpack.packb(params.to_dict()))).validate()


def test_setup_points_and_labels_from_parameters_reach_every_format(tmp_path):
    params = _params_from_toml(tmp_path)
    written = write_session(tmp_path / "session", make_result(setup_points=params.setup_points,
                                                              identities_labels=params.identities_labels),
                            formats=tuple(params.trajectories_formats))
    labels = ["male", "female A", "female B"]
    border = [[0, 0], [640, 0], [640, 480], [0, 480]]
    loaded = load_session(tmp_path / "session")
    assert loaded["identities_labels"] == labels
    assert loaded["setup_points"]["border"].dtype == np.float64  # arrays, as analysis code expects
    assert loaded["setup_points"]["border"].tolist() == border
    assert loaded["setup_points"]["feeder"].tolist() == [[320.5, 240]]
    with h5py.File(written["h5"], "r") as h5:
        assert list(h5.attrs["identities_labels"]) == labels
        assert h5["setup_points/border"][:].tolist() == border
    for attributes in (written["csv"].parent / "attributes.json", written["csv_tidy"].parent / "attributes_tidy.json"):
        stored = json.loads(attributes.read_text())
        assert stored["identities_labels"] == labels
        assert stored["setup_points"] == {"border": border, "feeder": [[320.5, 240]]}


@pytest.mark.parametrize("changes, words", [
    ({"setup_points": [[0, 0]]}, "must map names"),
    ({"setup_points": {"border": [[0, 0], [1]]}}, "'border'"),
    ({"setup_points": {"border": []}}, "non-empty"),
    ({"setup_points": {"feeder": [["a", 1]]}}, "'feeder'"),
    ({"setup_points": {"feeder": [[float("nan"), 1]]}}, "finite"),
    ({"setup_points": {"": [[0, 1]]}}, "names"),
    ({"identities_labels": ["a", "b"]}, "2 labels for 3 animals"),
    ({"identities_labels": ["a", "b", "a"]}, "'a' repeated"),
    ({"identities_labels": ["a", " ", "c"]}, "non-empty"),
    ({"identities_labels": ["a", "b", "c"], "number_of_animals": 0, "track_wo_identities": True},
     "need number_of_animals"),
])
def test_bad_setup_points_and_labels_name_their_field(changes, words):
    field = next(key for key in changes if key in ("setup_points", "identities_labels"))
    with pytest.raises(ParamError) as err:
        TrackingParams.from_dict({"video_paths": ["/data/a.avi"], "number_of_animals": 3, **changes}).validate()
    assert err.value.field == field and str(err.value).startswith(f"{field}:")
    assert words in str(err.value)


def test_trajectorytools_reads_our_session_in_every_format(tmp_path):
    """Labs analyse idtracker.ai sessions with trajectorytools; ours must load the same way."""
    from trajectorytools.trajectories import TrajectoriesWithPoints

    border = [[0, 0], [640, 0], [640, 480], [0, 480]]
    result = make_result(setup_points={"border": border, "feeder": [[10, 20]]}, identities_labels=["a", "b", "c"])
    session = tmp_path / "session_fish"  # trajectorytools recognises session folders by this prefix
    written = write_session(session, result, formats=("npy", "h5", "csv", "csv_tidy"))
    # trajectorytools passes the JSON lists of the CSV folder's border straight to numpy code that needs an
    # array, so the CSV folder is read from a session whose landmarks do not include a border.
    write_session(tmp_path / "csv_session", make_result(setup_points={"feeder": [[10, 20]]}), formats=("csv",))
    csv_folder = tmp_path / "csv_session/trajectories/trajectories_csv"
    for source in (written["npy"], written["h5"], session, csv_folder):
        tr = TrajectoriesWithPoints.from_idtrackerai(source, interpolate_nans=False)
        assert tr.number_of_individuals == N
        # positions come back exactly (to the CSV's 3 decimals); velocities drop the first and last frame
        np.testing.assert_allclose(tr.s, result["trajectories"][1:-1], atol=1e-3)
        assert tr.params["frame_rate"] == 25.0 and tr.params["body_length_px"] == pytest.approx(31.5)
        np.testing.assert_allclose(tr.points["feeder"], [[10, 20]])
        assert tr.distance_to_point("feeder").shape == (F - 2, N)
        if source is not csv_folder:
            # the arena comes from the border landmarks: centre (320, 240), radius the half diagonal 400
            np.testing.assert_allclose(tr.params["_center"], [320, 240])
            assert tr.params["radius"] == pytest.approx(400)
