"""`shoal video`: overlay and animal-centred videos that let a lab check a tracking by eye.

The session is built from a simulated video and its ground truth (no tracking), so every position
drawn is known exactly; lossless output is read back to check colours and pixels.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from shoal.cli import main
from shoal.overlay import OverlayStyle, crop_centred, draw_overlay, hold_last_known, identity_colours
from shoal.session import write_session
from shoal.sim import SimulationConfig, write_simulation

N_FRAMES, N_ANIMALS = 24, 3
LABELS = ["Ana", "Bo", "Cy"]


@pytest.fixture(scope="module")
def session(tmp_path_factory) -> dict:
    """A 24-frame video of 3 fish and a session folder holding their true positions."""
    root = tmp_path_factory.mktemp("overlay")
    files = write_simulation(SimulationConfig(n_animals=N_ANIMALS, n_frames=N_FRAMES, seed=4), root / "video")
    truth = np.load(files["ground_truth"])
    write_session(root / "session", {
        "trajectories": truth["positions"], "frames_per_second": float(truth["fps"]),
        "body_length": float(truth["body_length"]), "width": int(truth["width"]), "height": int(truth["height"]),
        "video_paths": [str(files["video"])], "identities_labels": LABELS, "session": {},
    }, formats=("npy",))
    return {"folder": root / "session", "video": files["video"], "positions": truth["positions"],
            "touching": truth["touching"], "body_length": float(truth["body_length"])}


def _read(path: Path) -> np.ndarray:
    capture = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        frames.append(frame)
    capture.release()
    return np.array(frames)


def _apart(positions: np.ndarray, distance: float) -> np.ndarray:
    """Frames in which every pair of animals is further apart than `distance`."""
    gaps = np.linalg.norm(positions[:, :, None] - positions[:, None], axis=-1)
    gaps[:, np.arange(positions.shape[1]), np.arange(positions.shape[1])] = np.inf
    return np.flatnonzero(gaps.min(axis=(1, 2)) > distance)


# -- pure drawing and cropping ------------------------------------------------------------------


def test_identity_colours_are_saturated_and_far_apart():
    for n in (1, 3, 8, 40):
        colours = identity_colours(n).astype(int)
        assert colours.shape == (n, 3)
        assert (colours.max(axis=1) - colours.min(axis=1) >= 250).all()  # never a grey
        if n > 1:
            distances = np.linalg.norm(colours[:, None] - colours[None], axis=-1) + np.eye(n) * 1e9
            assert distances.min() >= {3: 250, 8: 100, 40: 20}[n]


def test_overlay_marks_each_identity_in_its_colour_and_leaves_the_input_alone():
    frame = np.full((120, 160), 128, np.uint8)
    trajectories = np.full((10, 3, 2), np.nan)
    trajectories[:, 0] = np.column_stack([np.linspace(20, 60, 10), np.full(10, 30)])  # moves right
    trajectories[:, 1] = [120.3, 90.7]  # still
    trajectories[:8, 2] = [40, 100]  # lost from frame 8 on
    colours = identity_colours(3)
    drawn = draw_overlay(frame, trajectories, 9, ["a", "b", "c"], colours, trail=6, style=OverlayStyle(radius=3))
    assert drawn.shape == (120, 160, 3) and drawn.dtype == np.uint8
    assert (frame == 128).all()
    assert drawn[30, 60].tolist() == colours[0].tolist()
    assert drawn[91, 120].tolist() == colours[1].tolist()
    assert drawn[30, 47].tolist() == colours[0].tolist()  # the trail, 3 frames back
    assert drawn[30, 25].tolist() == [128, 128, 128]  # older than the trail
    no_trail = draw_overlay(frame, trajectories, 9, ["a", "b", "c"], colours, trail=0, style=OverlayStyle(radius=3))
    assert no_trail[30, 47].tolist() == [128, 128, 128]
    assert no_trail[100, 40].tolist() == [128, 128, 128]  # unknown now: no dot where it was
    with pytest.raises(ValueError, match="labels"):
        draw_overlay(frame, trajectories, 9, ["a"], colours)


def test_trail_does_not_bridge_frames_where_the_animal_was_unknown():
    frame = np.zeros((60, 100), np.uint8)
    trajectories = np.full((6, 1, 2), np.nan)
    trajectories[0:2, 0] = [[10, 30], [20, 30]]
    trajectories[4:6, 0] = [[70, 30], [80, 30]]
    drawn = draw_overlay(frame, trajectories, 5, ["a"], identity_colours(1), trail=5, style=OverlayStyle(radius=2))
    assert drawn[30, 15].any() and drawn[30, 75].any()
    assert not drawn[30, 35:55].any()


def test_crop_is_centred_and_padded_outside_the_frame():
    frame = np.zeros((50, 80), np.uint8)
    frame[20, 30] = 255
    crop = crop_centred(frame, np.array([30.2, 19.8]), 10)
    assert crop.shape == (10, 10) and crop[5, 5] == 255 and crop.sum() == 255
    corner = crop_centred(np.full((50, 80), 7, np.uint8), np.array([1.0, 1.0]), 10)
    assert (corner[:4] == 0).all() and (corner[:, :4] == 0).all() and (corner[4:, 4:] == 7).all()
    assert not crop_centred(frame, np.array([500.0, 500.0]), 10).any()


def test_unknown_positions_hold_the_last_known_one():
    track = np.array([[np.nan, np.nan], [1, 1], [np.nan, np.nan], [3, 3]])
    assert hold_last_known(track).tolist() == [[1, 1], [1, 1], [1, 1], [3, 3]]
    assert np.isnan(hold_last_known(np.full((3, 2), np.nan))).all()


# -- shoal video --------------------------------------------------------------------------------


def test_overlay_video_shows_each_identity_colour_at_its_animal(session, tmp_path):
    out = tmp_path / "overlay.avi"
    assert main(["video", str(session["folder"]), "--lossless", "--out", str(out)]) == 0
    frames = _read(out)
    original = _read(session["video"])
    assert frames.shape == original.shape
    colours = identity_colours(N_ANIMALS)
    apart = _apart(session["positions"], 1.5 * session["body_length"])
    assert len(apart) >= 5
    for index in apart:
        for animal, (x, y) in enumerate(session["positions"][index]):
            assert frames[index, int(round(y)), int(round(x))].tolist() == colours[animal].tolist()
    # away from the animals the video is the original
    assert (frames[:, :5, :5] == original[:, :5, :5]).all()


def test_overlay_frame_range_and_default_mp4v_output(session, capsys):
    assert main(["video", str(session["folder"]), "--start", "5", "--end", "15", "--trail", "3"]) == 0
    out = session["folder"] / "overlay.mp4"
    assert str(out) in capsys.readouterr().out
    frames = _read(out)
    assert frames.shape == (10, 500, 500, 3)
    colours = identity_colours(N_ANIMALS).astype(int)
    for index in _apart(session["positions"][5:15], 1.5 * session["body_length"]):  # lossy, so nearly
        for animal, (x, y) in enumerate(session["positions"][5 + index]):
            assert np.abs(frames[index, int(round(y)), int(round(x))].astype(int) - colours[animal]).max() < 60


def test_individual_videos_follow_their_animal(session, tmp_path, capsys):
    folder = tmp_path / "individuals"
    assert main(["video", str(session["folder"]), "--individual", "--lossless", "--out", str(folder),
                 "--start", "2", "--end", "22"]) == 0
    assert "3 individual videos" in capsys.readouterr().out
    side = int(np.ceil(session["body_length"] / 2)) * 2
    for number, label in enumerate(LABELS, start=1):
        frames = _read(folder / f"individual_{number}_{label}.avi")[..., 0]
        assert frames.shape == (20, side, side)
        alone = ~session["touching"][2:22, number - 1]
        for frame, isolated in zip(frames, alone, strict=True):
            if not isolated:
                continue
            # the animal's dark body (the blob under the crop centre) has its centroid at the centre
            dark = (frame < np.median(frame) - 30).astype(np.uint8)
            _, blobs = cv2.connectedComponents(dark)
            assert blobs[side // 2, side // 2] > 0
            moments = cv2.moments((blobs == blobs[side // 2, side // 2]).astype(np.uint8), binaryImage=True)
            centroid = np.array([moments["m10"], moments["m01"]]) / moments["m00"]
            assert np.abs(centroid - side / 2).max() < 2.0, (number, centroid)


def test_individual_video_size_is_configurable(session, tmp_path):
    assert main(["video", str(session["folder"]), "--individual", "--size", "64", "--out", str(tmp_path)]) == 0
    frames = _read(tmp_path / "individual_2_Bo.mp4")
    assert frames.shape == (N_FRAMES, 64, 64, 3)


@pytest.mark.parametrize("args, words", [
    (["--start", "10", "--end", "10"], "frame range [10, 10)"),
    (["--end", str(N_FRAMES + 1)], f"[0, {N_FRAMES})"),
    (["--start", "-1"], "frame range"),
    (["--trail", "-2"], "--trail"),
    (["--size", "40"], "--size applies to --individual"),
    (["--individual", "--size", "2"], "at least 8"),
    (["--out", "x.avi"], "*.mp4"),
])
def test_bad_options_are_one_line_usage_errors(session, capsys, args, words):
    assert main(["video", str(session["folder"]), *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("shoal:") and words in err[0], err


def test_missing_session_or_video_is_a_usage_error(session, tmp_path, capsys):
    assert main(["video", str(tmp_path / "nope")]) == 2
    assert "nope does not exist" in capsys.readouterr().err
    assert main(["video", str(tmp_path)]) == 2
    assert "no trajectories" in capsys.readouterr().err
    moved = tmp_path / "moved"
    write_session(moved, {"trajectories": session["positions"], "frames_per_second": 30.0, "body_length": 40.0,
                          "width": 500, "height": 500, "video_paths": [str(tmp_path / "gone.avi")]},
                  formats=("npy",))
    assert main(["video", str(moved)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "gone.avi" in err[0] and "does not exist" in err[0]
