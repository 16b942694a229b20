"""With only the number of animals, the probe finds a segmentation that shows those animals, says so,
and refuses segmentations that cannot be the animals (issue 20 item 3; issue 15 items 1, 2 and 6)."""

from __future__ import annotations

import math
import re
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from services.segmenter.auto_thresholds import choose_segmentation, contrast_segmentation
from services.segmenter.work import Probe, SegmentationError, probe, segment_chunk
from shoal.params import TrackingParams
from shoal.segmentation import background_sample_indices, compute_background, segment_frame
from shoal.video import VideoError, probe_video
from tests.segmentation_scenes import Scene

REPO = Path(__file__).resolve().parents[1]

#: light flies on a dark floor with light and dark hairs and dust, dark shadows, vignetting, JPEG
FLIES = Scene(n_animals=2, n_frames=50, width=320, height=240, floor=40, animal=170, body_length=30, body_width=10,
              debris=30, moving_debris=3, shadow=1.2, vignette=0.3, jpeg_quality=60, seed=1)
#: eight dark fish in a tight school, uneven light, strong JPEG
SCHOOL = Scene(n_animals=8, n_frames=50, width=320, height=240, floor=190, animal=70, body_length=18, body_width=5,
               school=True, gradient=0.4, vignette=0.4, jpeg_quality=40, noise=3, seed=2)
#: two of four animals never move, so the background model holds them
STILL = Scene(n_animals=4, n_frames=50, width=320, height=240, floor=180, animal=60, body_length=24, body_width=7,
              still=2, gradient=0.3, seed=6)
#: light animals on a vignetted dark floor: its dark corners make four blobs of their own
#: a large female that never moves and a small male that does, on a web with dust
SPIDERS = Scene(n_animals=2, n_frames=50, width=320, height=240, floor=170, animal=60, body_length=8, body_width=3,
                still=1, big=6, debris=10, gradient=0.1, speed=0.5, seed=8)
CORNERS = Scene(n_animals=4, n_frames=50, width=320, height=240, floor=50, animal=200, body_length=24, body_width=7,
                vignette=0.6, debris=30, jpeg_quality=70, seed=5)


def fit(scene: Scene, frames: np.ndarray, truth: np.ndarray, seg, background) -> tuple[float, float]:
    """Shares of frames with exactly N blobs, and with N blobs that are the N animals."""
    exact = right = 0
    for f, gray in enumerate(frames):
        table = segment_frame(gray, f, seg.intensity_ths, seg.area_ths, background if seg.background else None,
                              None, seg.sign)
        if len(table) == scene.n_animals:
            exact += 1
            distance = np.linalg.norm(table.centroid[:, None] - truth[f][None], axis=2)
            right += bool((distance.min(axis=0) < 0.3 * scene.body_length).all())
    return exact / len(frames), right / len(frames)


@pytest.fixture(scope="module")
def rendered():
    return {name: scene.render() for name, scene in
            {"flies": FLIES, "school": SCHOOL, "still": STILL, "corners": CORNERS,
                                               "spiders": SPIDERS}.items()}


@pytest.mark.parametrize("name, scene, at_least", [("flies", FLIES, 0.95), ("school", SCHOOL, 0.35),
                                                   ("still", STILL, 0.8), ("corners", CORNERS, 0.4),
                                                   ("spiders", SPIDERS, 0.9)])
def test_the_chosen_segmentation_shows_the_animals_and_beats_the_contrast_rule(rendered, name, scene, at_least):
    frames, truth = rendered[name]
    background = compute_background(frames)
    chosen = choose_segmentation(frames, scene.n_animals, background)
    exact, right = fit(scene, frames, truth, chosen, background)
    assert right >= at_least and right == exact, chosen.describe()  # N blobs, and they are the animals
    old_exact, _ = fit(scene, frames, truth, contrast_segmentation(frames, background, None), background)
    assert exact >= old_exact
    assert chosen.exact_share == pytest.approx(exact, abs=0.05)


def test_light_animals_are_not_taken_for_their_shadows(rendered):
    frames, _ = rendered["flies"]
    chosen = choose_segmentation(frames, 2, compute_background(frames))
    assert chosen.describe().startswith(("lighter than the background", "intensity in [")), chosen.describe()
    assert chosen.sign >= 0 and (chosen.background or chosen.intensity_ths[1] == 255)


def test_animals_that_sit_still_are_found_by_raw_intensity(rendered):
    frames, truth = rendered["still"]
    background = compute_background(frames)
    chosen = choose_segmentation(frames, 4, background)
    assert not chosen.background and chosen.intensity_ths[0] == 0  # dark animals, [0, t]
    assert fit(STILL, frames, truth, contrast_segmentation(frames, background, None), background)[0] == 0


def test_a_vignetted_floor_is_not_taken_for_animals(rendered):
    frames, truth = rendered["corners"]
    background = compute_background(frames)
    dark_corners = choose_segmentation(frames, 4, background, intensity_ths=(0, 25))
    assert fit(CORNERS, frames, truth, dark_corners, background) == (1.0, 0.0)  # four blobs, none an animal
    assert choose_segmentation(frames, 4, background).background


def write_scene(tmp_path: Path, scene: Scene, name: str = "scene.avi") -> tuple[Path, np.ndarray]:
    return scene.write(tmp_path / name)


def run_probe(tmp_path: Path, video: Path, **params) -> Probe:
    p = TrackingParams(video_paths=[str(video)], **params).validate()
    return probe(probe_video([str(video)]), p, tmp_path)


def test_the_probe_says_what_it_chose_and_how_well_it_fits(tmp_path):
    video, truth = write_scene(tmp_path, FLIES)
    result = run_probe(tmp_path, video, number_of_animals=2)
    note = next(w for w in result.warnings if w.startswith("automatic segmentation"))
    assert re.fullmatch(r"automatic segmentation: (lighter than the background by > \d+|intensity in \[\d+, 255\]), "
                        r"area \[[\d.]+, [\d.]+\] px: (9[5-9]|100)% of 50 sampled frames show exactly 2 animals", note)
    assert result.exact_share >= 0.95
    # The chunks segment as the probe did (the sign travels in the probe's dict).
    again = Probe.from_dict(result.to_dict())
    table, crops = segment_chunk(probe_video([str(video)]), TrackingParams(video_paths=[str(video)],
                                 number_of_animals=2), again, 0, 50)
    assert np.mean(np.bincount(table.frame, minlength=50) == 2) >= 0.95 and len(crops) == len(table)


def test_given_thresholds_are_kept_and_only_the_rest_is_searched(tmp_path):
    video, _ = write_scene(tmp_path, STILL)
    result = run_probe(tmp_path, video, number_of_animals=4, intensity_ths=(0, 110))
    assert result.intensity_ths == (0, 110) and result.background is None
    assert math.isfinite(result.area_ths[1]) and result.exact_share >= 0.8
    assert any(w.startswith("automatic segmentation (intensity_ths as given): intensity in [0, 110]")
               for w in result.warnings)
    fixed = run_probe(tmp_path, video, number_of_animals=4, area_ths=(30, 900))
    assert fixed.area_ths == (30, 900) and fixed.exact_share >= 0.8
    both = run_probe(tmp_path, video, number_of_animals=4, intensity_ths=(0, 110), area_ths=(30, 900))
    assert not any(w.startswith("automatic segmentation") for w in both.warnings)


def test_probe_dicts_of_other_versions_are_read(tmp_path):
    video, _ = write_scene(tmp_path, STILL)
    d = run_probe(tmp_path, video, number_of_animals=4).to_dict()
    older = {k: v for k, v in d.items() if k not in ("background_sign", "exact_share")}
    assert Probe.from_dict(older).background_sign == 0
    assert Probe.from_dict({**d, "a_later_field": 1}) == Probe.from_dict(d)


def test_a_whole_frame_blob_stops_the_probe_naming_the_threshold(tmp_path, small_video):
    with pytest.raises(SegmentationError, match=r"intensity in \[0, 255\].* makes a blob covering 100% of the frame "
                                                r"in 12 of 12 sampled frames: that is the background, not animals; "
                                                r"narrow intensity_ths \(--intensity\)"):
        run_probe(tmp_path, small_video, number_of_animals=2, intensity_ths=(0, 255))
    with pytest.raises(SegmentationError, match="covering 100% of the frame"):
        run_probe(tmp_path, small_video, number_of_animals=2, intensity_ths=(0, 255), area_ths=(10, math.inf))


def test_far_more_animals_than_the_video_shows_stops_the_probe(tmp_path, small_video):
    with pytest.raises(SegmentationError, match=r"number_of_animals \(--animals\) is 1000 but there are at most [2-4] "
                                                r"blobs in any of 12 sampled frames with .*allow-missing-animals"):
        run_probe(tmp_path, small_video, number_of_animals=1000)
    allowed = run_probe(tmp_path, small_video, number_of_animals=1000, allow_missing_animals=True)
    assert any("no sampled frame shows all 1000 animals" in w for w in allowed.warnings)


def test_the_cli_refuses_whole_frame_blobs_with_exit_2(tmp_path, small_video):
    proc = subprocess.run([sys.executable, "-m", "shoal.cli", "track", "--quiet", str(small_video), "--animals", "2",
                           "--intensity", "0", "255", "--out", str(tmp_path / "session")], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert "Traceback" not in proc.stderr and "estimated accuracy" not in proc.stdout
    assert "covering 100% of the frame" in last and "intensity_ths (--intensity)" in last


def corrupt(path: Path, out: Path, n_bytes: int = 60, seed: int = 0) -> Path:
    data = bytearray(path.read_bytes())
    for k in np.random.default_rng(seed).integers(len(data) // 5, 4 * len(data) // 5, n_bytes):
        data[k] ^= 0x55
    out.write_bytes(bytes(data))
    return out


def test_a_truncated_mp4_is_called_damaged(tmp_path):
    frames, _ = STILL.render()
    path = tmp_path / "cut.mp4"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 25, (STILL.width, STILL.height), False)
    for frame in frames:
        writer.write(frame)
    writer.release()
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(VideoError, match=r"cut\.mp4: the file is damaged: it ends inside its 'mdat' box .*truncated"):
        probe_video([str(path)])


def test_frames_that_do_not_decode_are_counted(tmp_path):
    video, _ = write_scene(tmp_path, STILL)
    data = bytearray(video.read_bytes())
    data[len(data) // 3: len(data) // 2] = bytes(len(data) // 2 - len(data) // 3)  # a lost stretch of the file
    broken = tmp_path / "broken.avi"
    broken.write_bytes(bytes(data))
    with pytest.raises(VideoError, match=r"broken\.avi is damaged: \d+ of the \d+ sampled frames do(es)? not decode "
                                         r"\(the first is frame \d+\); repair or re-encode the video, or track only "
                                         r"the frames before it \(--intervals 0 \d+\)"):
        run_probe(tmp_path, broken, number_of_animals=4)


PROBE_SCRIPT = """
import logging, sys, tempfile
from pathlib import Path
if sys.argv[2] == "service":
    logging.basicConfig(level="INFO")  # as every service does: its stderr is its log
from services.segmenter.work import SegmentationError, probe
from shoal.params import TrackingParams
from shoal.video import probe_video
params = TrackingParams(video_paths=[sys.argv[1]], number_of_animals=4).validate()
try:
    print(probe(probe_video([sys.argv[1]]), params, Path(tempfile.mkdtemp())).warnings)
except SegmentationError as exc:
    print(exc)
"""


@pytest.fixture(scope="module")
def garbled(tmp_path_factory) -> Path:
    """An MPEG-4 video with damaged bytes: frames decode, but as garbage, and ffmpeg complains."""
    frames, _ = STILL.render()
    folder = tmp_path_factory.mktemp("garbled")
    path = folder / "clip.mp4"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 25, (STILL.width, STILL.height), False)
    for frame in frames:
        writer.write(frame)
    writer.release()
    return corrupt(path, folder / "garbled.mp4", n_bytes=40)


@pytest.mark.parametrize("process", ["service", "cli"])
def test_garbage_frames_are_blamed_on_the_file_and_ffmpeg_talks_only_to_service_logs(garbled, process):
    proc = subprocess.run([sys.executable, "-c", PROBE_SCRIPT, str(garbled), process], cwd=REPO, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    chatter = re.findall(r"^\[\w+ @ 0x[0-9a-f]+\]", proc.stderr, re.MULTILINE)
    if process == "service":  # the decoder's own lines stay in the log, and the probe says the file is damaged
        assert chatter
        assert re.search(r"garbled\.mp4 is damaged: the decoder reports errors in \d+ of 50 sampled frames",
                         proc.stdout)
    else:  # a terminal tool shows none of them
        assert not chatter, proc.stderr


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_a_white_and_a_black_mouse_that_rest_are_both_found_by_both_ends(seed):
    """One mouse lighter and one darker than the floor, both sitting still 80 % of the time: the
    background model holds them, one raw end shows only one of them; both ends show both."""
    from shoal.sim import SimulationConfig, simulate

    frames, truth = simulate(SimulationConfig(n_animals=2, n_frames=150, width=400, height=400, preset="mice",
                                              seed=seed, mixed_coats=True, resting=0.8))
    rows = background_sample_indices(len(frames))
    background = compute_background(frames[rows])
    chosen = choose_segmentation(frames[rows], 2, background)
    lo, hi = chosen.intensity_ths
    assert not chosen.background and lo > hi, chosen.describe()
    for i in rows:
        table = segment_frame(frames[i], int(i), chosen.intensity_ths, chosen.area_ths, None, None)
        assert len(table) == 2
        distance = np.linalg.norm(table.centroid[:, None] - truth.positions[i][None], axis=2)
        assert (distance.min(axis=0) < 10).all()  # the two blobs are the two mice
