"""The simulator's promises: reproducible, with real crossings, exact positions, lossless video and
individuals that differ only by subtle, learnable marks."""

import math

import cv2
import numpy as np
import pytest

from shoal.simulate import Simulation, SimulationConfig, main, simulate, write_simulation


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
    from services.segmenter.roi import roi_mask, roi_regions

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
