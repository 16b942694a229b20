"""The simulator's promises: reproducible, with real crossings, exact positions, lossless video and
individuals that differ only by subtle, learnable marks."""

import json
import math
import sys

import cv2
import numpy as np
import pytest

from shoal.sim import Simulation, SimulationConfig, main, simulate, write_simulation


@pytest.fixture(scope="module")
def fish_video():
    config = SimulationConfig(n_animals=4, n_frames=600, width=400, height=400, preset="fish", seed=3)
    sim = Simulation(config)
    frames, truths = zip(*sim.frames(), strict=True)
    return sim, np.stack(frames), list(truths)


def _runs(flags: np.ndarray, value: bool) -> list[int]:
    """Lengths of the maximal runs of `value` in a 1-d boolean array."""
    lengths, n = [], 0
    for f in flags:
        if f == value:
            n += 1
        elif n:
            lengths.append(n)
            n = 0
    return lengths + ([n] if n else [])


def _segment(frame: np.ndarray, sim: Simulation) -> tuple[np.ndarray, np.ndarray]:
    """Labels and centroids of the dark blobs (threshold half-way between background and body)."""
    mask = (frame < (sim.look.background + sim.look.body_grey) / 2).astype(np.uint8)
    _, labels, _, centroids = cv2.connectedComponentsWithStats(mask, connectivity=8)
    return labels, centroids


def _label_at(labels: np.ndarray, xy: np.ndarray) -> int:
    return int(labels[int(round(xy[1])), int(round(xy[0]))])


def test_same_seed_same_video_other_seed_other_video():
    config = SimulationConfig(n_animals=3, n_frames=40, width=256, height=256, seed=11)
    frames_a, truth_a = simulate(config)
    frames_b, truth_b = simulate(config)
    frames_c, truth_c = simulate(SimulationConfig(n_animals=3, n_frames=40, width=256, height=256, seed=12))
    assert np.array_equal(frames_a, frames_b)
    assert np.array_equal(truth_a.positions, truth_b.positions)
    assert np.array_equal(truth_a.touching, truth_b.touching)
    assert not np.array_equal(frames_a, frames_c)
    assert not np.allclose(truth_a.positions, truth_c.positions)


@pytest.mark.parametrize("preset", ["fish", "flies", "mice"])
def test_every_preset_renders_dark_animals_on_light_background(preset):
    frames, truth = simulate(SimulationConfig(n_animals=2, n_frames=5, preset=preset, seed=1))
    assert frames.dtype == np.uint8 and frames.shape[0] == 5
    for frame, pos in zip(frames, truth.positions, strict=True):
        for x, y in pos:
            assert frame[int(round(y)), int(round(x))] < np.median(frame) - 40


def test_crossings_last_10_to_50_frames_and_everyone_is_apart_between(fish_video):
    _, _, truths = fish_video
    touching = np.array([t.touching for t in truths])
    crossing_runs = [r for i in range(touching.shape[1]) for r in _runs(touching[:, i], True)]
    assert sum(10 <= r <= 50 for r in crossing_runs) >= 4
    assert 0.02 < touching.mean() < 0.5
    apart = _runs(touching.any(axis=1), False)
    assert max(apart) >= 30  # global fragments exist


def test_truth_position_is_centroid_of_segmented_isolated_animal(fish_video):
    sim, frames, truths = fish_video
    checked = 0
    for t in range(0, len(frames), 7):
        labels, centroids = _segment(frames[t], sim)
        for i in np.flatnonzero(~truths[t].touching):
            label = _label_at(labels, truths[t].positions[i])
            assert label > 0, "the truth position lies on the animal"
            assert np.hypot(*(centroids[label] - truths[t].positions[i])) < 1.5
            checked += 1
    assert checked > 200


def test_isolated_animal_overlaps_itself_in_the_next_frame(fish_video):
    """The overlap graph links blobs of consecutive frames only if their masks intersect."""
    sim, frames, truths = fish_video
    previous = _segment(frames[0], sim)[0]
    for t in range(1, len(frames)):
        labels = _segment(frames[t], sim)[0]
        for i in np.flatnonzero(~truths[t].touching & ~truths[t - 1].touching):
            before = previous == _label_at(previous, truths[t - 1].positions[i])
            now = labels == _label_at(labels, truths[t].positions[i])
            assert (before & now).any(), f"animal {i} jumped at frame {t}"
        previous = labels


def test_touching_animals_merge_and_isolated_ones_do_not(fish_video):
    sim, frames, truths = fish_video
    for t in range(0, len(frames), 5):
        labels = _segment(frames[t], sim)[0]
        ids = [_label_at(labels, p) for p in truths[t].positions]
        for a, b in truths[t].contacts:
            assert truths[t].touching[a] and truths[t].touching[b]
        for i in np.flatnonzero(~truths[t].touching):
            assert ids.count(ids[i]) == 1


def test_video_file_is_lossless_and_truth_file_complete(tmp_path):
    config = SimulationConfig(n_animals=3, n_frames=25, width=256, height=240, seed=5)
    paths = write_simulation(config, tmp_path / "sim")
    frames, truth = simulate(config)
    capture = cv2.VideoCapture(str(paths["video"]))
    read = []
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        read.append(frame[..., 0] if frame.ndim == 3 else frame)
    assert len(read) == 25
    assert np.array_equal(np.stack(read), frames)
    with np.load(paths["ground_truth"]) as gt:
        assert gt["positions"].shape == (25, 3, 2) and gt["positions"].dtype == np.float64
        assert gt["touching"].shape == (25, 3) and gt["touching"].dtype == bool
        assert gt["orientation"].shape == (25, 3)
        assert np.array_equal(gt["positions"], truth.positions)
        assert float(gt["body_length"]) == pytest.approx(truth.body_length)
        assert (int(gt["width"]), int(gt["height"]), int(gt["n_animals"])) == (256, 240, 3)
        assert str(gt["preset"]) == "fish" and int(gt["seed"]) == 5 and float(gt["fps"]) == 30.0


def test_individuals_same_size_different_marks():
    sim = Simulation(SimulationConfig(n_animals=5, n_frames=1, seed=2))
    r = 40
    dx, dy = np.meshgrid(np.arange(-r, r + 1.0), np.arange(-r, r + 1.0))
    renders = [sim.shape.render(a, sim.look, dx, dy, 0.0, 0.0, 0.0, 0.0) for a in sim.animals]
    sizes = np.sqrt([alpha.sum() for alpha, _ in renders])
    assert sizes.max() / sizes.min() < 1.065  # +-3 % in length
    body = np.logical_and.reduce([alpha > 0.99 for alpha, _ in renders])
    greys = [grey[body] for _, grey in renders]
    means = [g.mean() for g in greys]
    assert max(means) - min(means) < 8  # alike overall ...
    patterns = [g - g.mean() for g in greys]  # shade offsets aside, ...
    for a in range(5):
        for b in range(a + 1, 5):
            assert np.abs(patterns[a] - patterns[b]).max() > 3  # ... each has its own marks


def test_identity_is_learnable_from_body_aligned_crops(fish_video):
    """A linear classifier on aligned crops of isolated animals, trained on the first half of the
    video, names the animals of the second half: the marks carry identity."""
    sim, frames, truths = fish_video
    half = int(sim.body_length * 0.4)

    def crop(t, i):
        x, y = truths[t].positions[i]
        rot = cv2.getRotationMatrix2D((x, y), math.degrees(truths[t].orientation[i]), 1.0)
        rot[:, 2] += (half - x, half // 2 - y)
        patch = cv2.warpAffine(frames[t], rot, (2 * half, half)).astype(np.float64)
        return (patch - patch.mean()).ravel()

    samples = [(t, i) for t in range(0, len(frames), 2) for i in np.flatnonzero(~truths[t].touching)]
    x = np.array([crop(*s) for s in samples])
    y = np.array([s[1] for s in samples])
    train = np.array([s[0] < len(frames) // 2 for s in samples])
    mean = x[train].mean(axis=0)
    a = x[train] - mean
    weights = np.linalg.solve(a.T @ a + 1e3 * np.eye(a.shape[1]), a.T @ np.eye(4)[y[train]])
    predicted = np.argmax((x[~train] - mean) @ weights, axis=1)
    assert np.mean(predicted == y[~train]) > 0.9


def test_cli_writes_files_and_rejects_bad_input(tmp_path, capsys):
    out = tmp_path / "cli"
    size = ["--width", "256", "--height", "256"]
    assert main(["--animals", "2", "--frames", "10", "--out", str(out), *size]) == 0
    assert (out / "video.avi").is_file() and (out / "ground_truth.npz").is_file()
    assert "crossings" in capsys.readouterr().out
    assert main(["--animals", "0", "--frames", "10", "--out", str(out)]) == 2
    assert main(["--animals", "2", "--frames", "0", "--out", str(out)]) == 2
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert main(["--animals", "2", "--frames", "3", "--out", str(blocker / "sub")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 3 and all(line.startswith("shoal simulate:") for line in err)
    assert "Traceback" not in "".join(err)


def test_arenas_keep_their_animals_apart_and_give_their_rois():
    from shoal.roi import roi_mask, roi_regions

    config = SimulationConfig(n_animals=5, n_frames=150, preset="flies", seed=4, n_arenas=2)
    assert (config.width, config.height) == (1000, 500) and config.arena_sizes() == [3, 2]
    frames, truth = simulate(config)
    assert truth.arena.tolist() == [0, 0, 0, 1, 1]
    regions = roi_regions(roi_mask(config.arena_rois(), config.width, config.height))
    assert regions.max() == 1  # two separate regions
    xy = np.round(truth.positions).astype(int)
    assert np.array_equal(regions[xy[..., 1], xy[..., 0]], np.broadcast_to(truth.arena, xy.shape[:2]))
    pairs = truth.crossings[:, 2:]
    assert len(pairs) and np.all(truth.arena[pairs[:, 0]] == truth.arena[pairs[:, 1]])
    outside = regions < 0
    assert frames[:, :, 499:501].max() < frames.mean() - 40  # a dark wall between the tanks...
    outside[:, 499:501] = False
    assert not (frames[:, outside] < frames.mean() - 40).any()  # ...and no body outside its arena's ROI


def test_marking_seed_films_the_same_individuals_moving_differently():
    a = Simulation(SimulationConfig(n_animals=4, n_frames=1, seed=1, marking_seed=9))
    b = Simulation(SimulationConfig(n_animals=4, n_frames=1, seed=2, marking_seed=9))
    c = Simulation(SimulationConfig(n_animals=4, n_frames=1, seed=1))
    for x, y in zip(a.animals, b.animals, strict=True):
        assert x.length == y.length and np.array_equal(x.mark_u, y.mark_u) and np.array_equal(x.mark_v, y.mark_v)
    assert not np.array_equal(a.animals[0].mark_u, c.animals[0].mark_u)
    assert not np.allclose(a.motions[0].pos, b.motions[0].pos)


# Harder, as real recordings are: each option changes the video as it says and nothing else.


def _nearest_neighbour(truth) -> np.ndarray:
    """Distance from each animal to its nearest neighbour in each frame, in body lengths [F, N]."""
    p = truth.positions
    d = np.hypot(p[:, :, None, 0] - p[:, None, :, 0], p[:, :, None, 1] - p[:, None, :, 1])
    d[:, np.arange(p.shape[1]), np.arange(p.shape[1])] = np.inf
    return d.min(axis=2) / truth.body_length


def _still_fraction(truth, min_frames: int = 20) -> np.ndarray:
    """Per animal, the fraction of frames in still stretches (< 0.05 px a frame for min_frames or more)."""
    step = np.hypot(*np.diff(truth.positions, axis=0).transpose(2, 0, 1))
    fractions = []
    for i in range(step.shape[1]):
        fractions.append(sum(r for r in _runs(step[:, i] < 0.05, True) if r >= min_frames) / len(step))
    return np.array(fractions)


def test_imaging_options_leave_motion_and_truth_unchanged():
    """Light, debris and light animals change what the camera sees, never where the animals are."""
    base = dict(n_animals=3, n_frames=30, width=256, height=256, seed=8, tank="circle")
    _, plain = simulate(SimulationConfig(**base))
    for option in (dict(dark_ends=0.3), dict(vignette=0.6), dict(light_gradient=0.8), dict(debris=25),
                   dict(light_animals=True)):
        _, truth = simulate(SimulationConfig(**base, **option))
        assert np.array_equal(truth.positions, plain.positions), option
        assert np.array_equal(truth.touching, plain.touching), option
        assert np.array_equal(truth.crossings, plain.crossings), option


def test_body_length_sets_small_animals():
    sim = Simulation(SimulationConfig(n_animals=5, n_frames=1, width=240, height=240, seed=3, body_length=14))
    assert sim.body_length == pytest.approx(14, rel=0.03)
    assert all(13.4 < a.length < 14.6 for a in sim.animals)
    frames, truth = simulate(SimulationConfig(n_animals=5, n_frames=20, width=240, height=240, seed=3,
                                              body_length=14))
    labels, _ = _segment(frames[10], sim)
    for i in np.flatnonzero(~truth.touching[10]):
        area = (labels == _label_at(labels, truth.positions[10, i])).sum()
        assert 10 < area < 60  # a 14 px fish is a few dozen pixels


def test_schooling_keeps_animals_within_two_body_lengths():
    base = dict(n_animals=8, n_frames=250, width=480, height=480, seed=2, body_length=16)
    _, loose = simulate(SimulationConfig(**base))
    _, school = simulate(SimulationConfig(**base, schooling=0.8))
    assert _nearest_neighbour(school).mean() < 0.5 * _nearest_neighbour(loose).mean()
    assert np.mean(_nearest_neighbour(school) < 2.0) > 0.8  # most within 2 L of another, most of the time
    lengths = school.crossings[:, 1] - school.crossings[:, 0] + 1
    assert len(lengths) >= 5 and lengths.max() <= 60  # animals meet often and part again
    assert (~school.touching.any(axis=1)).mean() > 0.2  # frames with everyone apart remain


def test_resting_gives_long_still_stretches():
    base = dict(n_animals=4, n_frames=400, width=320, height=320, seed=5)
    _, active = simulate(SimulationConfig(**base))
    _, resting = simulate(SimulationConfig(**base, resting=0.6))
    assert _still_fraction(active).max() == 0.0
    still = _still_fraction(resting)
    assert still.min() > 0.2 and 0.4 < still.mean() < 0.8


def test_dark_ends_fade_animals_near_the_ends_only():
    base = dict(n_animals=6, n_frames=150, width=320, height=160, seed=2, body_length=15)
    lit, truth = simulate(SimulationConfig(**base, tank="rectangle"))
    dark, _ = simulate(SimulationConfig(**base, dark_ends=0.3))
    light = Simulation(SimulationConfig(**base, dark_ends=0.3)).light
    centre = light.min(axis=0) == 1.0
    assert np.array_equal(dark[:, :, centre], lit[:, :, centre])  # untouched where the light is full
    assert dark[:, :, :3].mean() < 0.1 * lit[:, :, :3].mean()  # the tank's ends are near black
    x, y = np.round(truth.positions).astype(int).transpose(2, 0, 1)
    t = np.arange(len(lit))[:, None]

    def contrast(frames):
        floor = np.median(frames[:, 10:-10, :], axis=1)  # per column, along the tank
        return floor[t, x] - frames[t, y, x]

    faded = light[y, x] < 0.5
    assert faded.sum() >= 10
    assert np.all(contrast(dark)[faded] < 0.6 * contrast(lit)[faded])


def test_vignette_and_gradient_light_the_floor_unevenly():
    base = dict(n_animals=1, n_frames=2, width=300, height=300, seed=4)
    even, _ = simulate(SimulationConfig(**base))
    vignetted, _ = simulate(SimulationConfig(**base, vignette=0.5))
    ratio = vignetted[0].astype(float) / even[0]
    corners = np.concatenate([ratio[:15, :15].ravel(), ratio[-15:, -15:].ravel()])
    assert np.median(ratio[140:160, 140:160]) == pytest.approx(1.0, abs=0.03)
    assert np.median(corners) == pytest.approx(0.53, abs=0.06)  # 1 - 0.5, a little less than r^2 at the corner
    light = Simulation(SimulationConfig(**base, light_gradient=0.8)).light
    assert light.max() == pytest.approx(1.0) and light.min() < 0.6  # one side 0.8 brighter, and broad patches
    assert np.abs(np.diff(light, axis=1)).max() < 0.01  # smooth: no edge a segmentation could take for an animal


def test_debris_adds_blobs_that_are_not_animals_lighter_and_darker():
    base = dict(n_animals=3, n_frames=3, width=320, height=320, seed=6)
    clean, truth = simulate(SimulationConfig(**base))
    dusty, _ = simulate(SimulationConfig(**base, debris=40))
    sim = Simulation(SimulationConfig(**base, debris=40))

    def stray_blobs(frame, mask):
        n, labels = cv2.connectedComponents(mask.astype(np.uint8))
        animals = {_label_at(labels, p) for p in truth.positions[0]}
        return len(set(range(1, n)) - animals)

    dark_threshold = (sim.look.background + sim.look.body_grey) / 2
    assert stray_blobs(clean[0], clean[0] < dark_threshold) == 0
    assert stray_blobs(dusty[0], dusty[0] < dark_threshold) >= 5  # pass the animals' threshold
    assert stray_blobs(dusty[0], dusty[0] > sim.look.background + 25) >= 3  # lighter than the floor
    kinds = {s.kind for s in sim.debris}
    assert kinds == {"dust", "bit", "hair"}
    drifting = [s for s in sim.debris if s.drifts]
    assert drifting and all(0 < math.hypot(*s.velocity) <= 0.15 for s in drifting)


def test_light_animals_on_a_dark_floor():
    frames, truth = simulate(SimulationConfig(n_animals=2, n_frames=5, preset="flies", seed=1, light_animals=True))
    assert np.median(frames) < 100
    for frame, pos in zip(frames, truth.positions, strict=True):
        for x, y in pos:
            assert frame[int(round(y)), int(round(x))] > np.median(frame) + 40


def test_mixed_coats_put_light_and_dark_animals_on_one_grey_floor():
    frames, truth = simulate(SimulationConfig(n_animals=4, n_frames=5, preset="mice", seed=2, mixed_coats=True))
    floor = np.median(frames)
    assert 110 < floor < 145
    for frame, pos in zip(frames, truth.positions, strict=True):
        at = np.array([frame[int(round(y)), int(round(x))] for x, y in pos], float)
        assert (at[0::2] < floor - 40).all() and (at[1::2] > floor + 40).all()
    with pytest.raises(ValueError, match="light_animals"):
        SimulationConfig(n_animals=2, mixed_coats=True, light_animals=True)


def _read_video(path) -> np.ndarray:
    from shoal.video import probe_video, read_frames

    info = probe_video([str(path)])
    return np.stack([f for _, f in read_frames(info, 0, info.n_frames)])


@pytest.mark.parametrize("codec, extra", [("mjpg", {"quality": 30}), ("mp4v", {}),
                                          ("h264", {"bitrate": 300.0})])
def test_lossy_codecs_write_files_the_tracker_decodes(tmp_path, codec, extra):
    if codec == "h264":
        pytest.importorskip("av", reason="--codec h264 needs PyAV (pip install av)")
    config = SimulationConfig(n_animals=3, n_frames=30, width=256, height=256, seed=5, codec=codec, **extra)
    paths = write_simulation(config, tmp_path)
    assert paths["video"].name == config.video_name()
    frames, truth = simulate(config)
    read = _read_video(paths["video"])
    assert read.shape == frames.shape
    error = np.abs(read.astype(float) - frames).mean()
    assert 0.3 < error < 6  # lossy, yet the same scene
    with np.load(paths["ground_truth"]) as gt:
        assert np.array_equal(gt["positions"], truth.positions)
        assert json.loads(str(gt["conditions"]))["codec"] == codec
    if codec == "h264":  # the bitrate is honoured: 300 kbit/s for one second at 30 fps
        assert paths["video"].stat().st_size < 2 * 300e3 / 8


def test_jpeg_quality_trades_size_for_artefacts(tmp_path):
    base = dict(n_animals=2, n_frames=10, width=256, height=256, seed=5, codec="mjpg")
    frames, _ = simulate(SimulationConfig(**base))
    sizes, errors = [], []
    for q in (20, 90):
        path = write_simulation(SimulationConfig(**base, quality=q), tmp_path / str(q))["video"]
        sizes.append(path.stat().st_size)
        errors.append(np.abs(_read_video(path).astype(float) - frames).mean())
    assert sizes[0] < 0.6 * sizes[1] and errors[0] > errors[1]


def test_cli_hard_options_and_their_errors(tmp_path, capsys, monkeypatch):
    out = tmp_path / "hard"
    args = ["--animals", "3", "--frames", "8", "--out", str(out), "--width", "256", "--height", "256"]
    assert main([*args, "--body-length", "16", "--schooling", "0.8", "--dark-ends", "0.2", "--debris", "5",
                 "--light-animals", "--codec", "mjpg", "--quality", "50"]) == 0
    printed = capsys.readouterr().out
    assert "schooling 0.8" in printed and "codec mjpg" in printed and (out / "video.avi").is_file()
    for bad in (["--schooling", "1.5"], ["--bitrate", "500"], ["--quality", "50", "--codec", "h264"],
                ["--codec", "h264", "--width", "255"], ["--dark-ends", "0.6"], ["--debris", "-1"],
                ["--body-length", "3"]):
        assert main([*args, *bad]) == 2, bad
    monkeypatch.setitem(sys.modules, "av", None)  # PyAV missing: say what to install
    assert main([*args, "--codec", "h264"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 8 and all(line.startswith("shoal simulate:") for line in err)
    assert "pip install av" in err[-1] and "Traceback" not in "".join(err)
