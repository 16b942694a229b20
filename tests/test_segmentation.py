"""Segmentation finds each animal as one blob with the geometry a user would measure by hand."""

import math

import numpy as np
import pytest

from shoal.segmentation import (
    background_sample_indices,
    body_length,
    compute_background,
    find_blobs,
    foreground_mask,
    segment_frame,
    segment_frames,
)


def ellipse_pixels(shape, center, axes, angle_deg):
    """Pixels whose centre lies inside an ellipse: the ground truth the blob must reproduce."""
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]].astype(np.float64)
    dx, dy = xx - center[0], yy - center[1]
    t = math.radians(angle_deg)
    u, v = dx * math.cos(t) + dy * math.sin(t), -dx * math.sin(t) + dy * math.cos(t)
    return (u / axes[0]) ** 2 + (v / axes[1]) ** 2 <= 1


def frame_with(animals, shape=(240, 320), background=200, animal=40):
    gray = np.full(shape, background, np.uint8)
    for center, axes, angle in animals:
        gray[ellipse_pixels(shape, center, axes, angle)] = animal
    return gray


def test_thresholds_are_an_inclusive_range():
    gray = np.array([[9, 10, 11, 99, 100, 101]], np.uint8)
    assert foreground_mask(gray, (10, 100)).tolist() == [[0, 255, 255, 255, 255, 0]]
    assert foreground_mask(gray, (10.5, 99.5)).tolist() == [[0, 0, 255, 255, 0, 0]]
    assert foreground_mask(gray, (0, 255)).all()


def test_a_range_that_wraps_keeps_both_ends_so_a_white_and_a_black_animal_are_both_blobs():
    gray = np.array([[9, 10, 11, 99, 100, 101]], np.uint8)
    assert foreground_mask(gray, (100, 10)).tolist() == [[255, 255, 0, 0, 255, 255]]
    assert foreground_mask(gray, (99.5, 10.5)).tolist() == [[255, 255, 0, 0, 255, 255]]
    floor = frame_with([((80, 120), (30, 10), 0)], background=128, animal=30)
    floor[ellipse_pixels(floor.shape, (240, 120), (30, 10), 0)] = 230
    table = segment_frame(floor, 0, (200, 60), (100, math.inf))
    assert len(table) == 2 and np.allclose(table.centroid[:, 0], [80, 240], atol=0.5)
    assert len(segment_frame(floor, 0, (0, 60), (100, math.inf))) == 1  # one end shows one animal


def test_background_subtraction_finds_a_dark_animal_on_a_varying_background():
    shape = (200, 300)
    ramp = np.tile(np.linspace(60, 250, shape[1]), (shape[0], 1)).astype(np.uint8)
    animal = ellipse_pixels(shape, (220, 100), (25, 8), 30)
    gray = ramp.copy()
    gray[animal] = np.clip(ramp[animal].astype(int) - 50, 0, 255)
    # No fixed intensity range separates this animal from the dark left of the arena...
    assert foreground_mask(gray, (0, int(gray[animal].max()))).sum() > 2 * 255 * animal.sum()
    # ...but the distance to the background does; the upper threshold is ignored.
    mask = foreground_mask(gray, (20, 21), background=ramp)
    assert np.array_equal(mask > 0, animal)
    table = segment_frame(gray, 3, (20, 255), (50, math.inf), background=ramp)
    assert len(table) == 1 and np.allclose(table.centroid[0], (220, 100), atol=0.5)


def test_roi_excludes_blobs():
    gray = frame_with([((60, 60), (20, 6), 0), ((250, 180), (20, 6), 0)])
    roi = np.zeros(gray.shape, bool)
    roi[:, :160] = True
    table = segment_frame(gray, 0, (0, 100), (10, math.inf), roi=roi)
    assert len(table) == 1 and table.centroid[0, 0] < 160


def test_median_background_recovers_the_empty_arena():
    rng = np.random.default_rng(1)
    shape = (120, 160)
    empty = (100 + 60 * np.sin(np.arange(shape[1]) / 15)[None, :] + np.zeros(shape)).astype(np.uint8)
    frames = []
    for _ in range(50):
        noisy = np.clip(empty + rng.normal(0, 2, shape), 0, 255).astype(np.uint8)
        for _ in range(4):  # four animals wander over the arena
            center = rng.uniform((10, 10), (shape[1] - 10, shape[0] - 10))
            noisy[ellipse_pixels(shape, center, (15, 5), rng.uniform(0, 180))] = 10
        frames.append(noisy)
    frames = np.stack(frames)
    background = compute_background(frames, "median")
    assert background.dtype == np.uint8 and background.shape == shape
    assert np.percentile(np.abs(background.astype(int) - empty), 99) <= 3
    assert compute_background(frames, "max").min() >= background.min()
    assert np.array_equal(compute_background(frames, "min"), frames.min(axis=0))
    roi = np.zeros(shape, bool)
    roi[20:60, 30:90] = True
    inside = compute_background(frames, "median", roi)
    assert np.array_equal(inside[roi], background[roi]) and not inside[~roi].any()
    with pytest.raises(ValueError, match="median"):
        compute_background(frames, "mode")


def test_background_samples_are_evenly_spaced():
    idx = background_sample_indices(1000, 50)
    assert len(idx) == 50 and idx[0] == 0 and idx[-1] == 999
    assert np.ptp(np.diff(idx)) <= 1
    assert background_sample_indices(10, 50).tolist() == list(range(10))


@pytest.mark.parametrize("angle", [0, 30, 90, 100, 145])
def test_blob_geometry_of_a_drawn_ellipse(angle):
    center, axes = (150.3, 110.6), (40, 12)
    gray = frame_with([(center, axes, angle)])
    truth = ellipse_pixels(gray.shape, center, axes, angle)
    table = segment_frame(gray, 17, (0, 100), (100, math.inf))
    assert len(table) == 1 and table.frame.tolist() == [17]
    assert np.allclose(table.centroid[0], center, atol=0.5)
    expected = math.atan2(math.sin(math.radians(2 * angle)), math.cos(math.radians(2 * angle))) / 2
    expected = math.pi / 2 if expected <= -math.pi / 2 else expected
    assert -math.pi / 2 < table.orientation[0] <= math.pi / 2
    assert abs(table.orientation[0] - expected) < math.radians(3)
    assert abs(table.area[0] - math.pi * axes[0] * axes[1]) < 0.03 * math.pi * axes[0] * axes[1]
    ys, xs = np.nonzero(truth)
    assert table.bbox.dtype == np.int32
    assert table.bbox[0].tolist() == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
    x0, y0, x1, y1 = table.bbox[0]
    assert np.array_equal(table.mask(0), truth[y0:y1, x0:x1])
    assert table.area[0] == truth.sum()
    contour = table.contour(0)
    assert truth[contour[:, 1], contour[:, 0]].all()


def test_holes_are_filled_and_area_thresholds_filter():
    animals = [((60, 60), (30, 20), 0), ((200, 150), (10, 4), 0), ((250, 60), (25, 10), 0)]
    gray = frame_with(animals)  # areas about 1885, 126 and 785 pixels
    gray[55:65, 55:65] = 200  # a bright spot inside the first animal
    table = segment_frame(gray, 0, (0, 100), (200, 2000))
    assert len(table) == 2  # the small animal is below area_min
    big = int(np.argmin(table.centroid[:, 0]))
    truth = ellipse_pixels(gray.shape, *animals[0][:2], 0)
    x0, y0, x1, y1 = table.bbox[big]
    assert np.array_equal(table.mask(big), truth[y0:y1, x0:x1]) and table.area[big] == truth.sum()
    assert len(segment_frame(gray, 0, (0, 100), (100, math.inf))) == 3
    kept = segment_frame(gray, 0, (0, 100), (200, 1000))
    assert len(kept) == 1 and np.allclose(kept.centroid[0], (250, 60), atol=0.5)


def test_two_touching_animals_are_one_blob():
    gray = frame_with([((100, 100), (30, 8), 0), ((125, 100), (30, 8), 90)])
    table = segment_frame(gray, 0, (0, 100), (50, math.inf))
    assert len(table) == 1


def test_blob_order_and_stacks():
    animals = [((250, 40), (15, 5), 0), ((50, 200), (15, 5), 0), ((60, 40), (15, 5), 0)]
    gray = frame_with(animals)
    table = find_blobs(gray, foreground_mask(gray, (0, 100)), 5, (20, math.inf))
    # Rows go by centroid y, then x.
    assert np.allclose(table.centroid, [(60, 40), (250, 40), (50, 200)], atol=0.5)
    stack = segment_frames(np.stack([gray, frame_with(animals[:2]), gray]), 10, (0, 100), (20, math.inf))
    assert stack.frame.tolist() == [10, 10, 10, 11, 11, 12, 12, 12]
    assert stack.frame_slices(10, 3).tolist() == [0, 3, 5, 8]
    assert np.array_equal(stack.mask(7), table.mask(2))


def test_body_length_uses_frames_with_exactly_n_animals():
    one_length = frame_with([((60, 60), (30, 0.6), 0), ((200, 60), (30, 0.6), 0)])  # two 61 px rods
    merged = frame_with([((100, 150), (60, 0.6), 0)])  # a 121 px blob (two animals end to end)
    table = segment_frames(np.stack([one_length, merged, merged]), 0, (0, 100), (1, math.inf))
    assert body_length(table, 2) == pytest.approx(60.0)
    # No frame has 3 blobs: the frames with the most blobs (the fewest merged) stand in.
    assert body_length(table, 3) == pytest.approx(60.0)
    with pytest.raises(ValueError, match="no blobs"):
        body_length(segment_frames(np.stack([merged]), 0, (0, 100), (10**6, math.inf)), 2)
