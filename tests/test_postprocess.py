"""Velocity threshold, impossible-jump correction and crossing interpolation."""

import numpy as np
import pytest

from services.assembler.fragments import build_fragments, coexistence
from services.assembler.overlap import overlap_links
from services.assembler.postprocess import correct_impossible_jumps, interpolate_crossings, velocity_threshold
from services.assembler.trajectories import build_trajectories
from tests.blob_scenes import crossing_scene, table_from_discs, true_animals


def three_lanes():
    """Animals 0, 1, 2 swim right at 2 px/frame in lanes y = 30, 100, 170. Animal 0 is hidden in
    frames 40-59 and animal 2 in frames 50-69, so each of them comes as two fragments."""
    frames = []
    for t in range(100):
        discs = [(20 + 2 * t, 30, 6), (20 + 2 * t, 100, 6), (20 + 2 * t, 170, 6)]
        hidden = {0} if 40 <= t < 60 else set()
        hidden |= {2} if 50 <= t < 70 else set()
        frames.append([d for k, d in enumerate(discs) if k not in hidden])
    table = table_from_discs(frames, size=(200, 260))
    links = overlap_links(table)
    fragments, blob_fragment = build_fragments(table, links, np.zeros(len(table), bool))
    lane = {f.index: int(np.argmin(np.abs(table.centroid[f.rows[0], 1] - [30, 100, 170]))) for f in fragments}
    return table, fragments, lane


def test_velocity_threshold_is_twice_the_99th_percentile_of_single_animal_speed():
    table, fragments, _ = three_lanes()
    assert velocity_threshold(fragments, table) == pytest.approx(4.0)
    assert velocity_threshold([], table) == np.inf


def test_a_planted_wrong_identity_is_corrected_by_the_impossible_jump():
    table, fragments, lane = three_lanes()
    assert len(fragments) == 5
    truth = np.array([lane[f.index] for f in fragments])
    identity = truth.copy()
    late_0 = next(f.index for f in fragments if lane[f.index] == 0 and f.start_frame == 60)
    late_2 = next(f.index for f in fragments if lane[f.index] == 2 and f.start_frame == 70)
    identity[late_0] = 2  # animal 0 after hiding is called animal 2: a 140 px jump in 11 frames
    identity[late_2] = -1
    p2 = np.full((len(fragments), 3), 1 / 3)
    corrected, changed = correct_impossible_jumps(
        fragments, table, identity, p2, coexistence(fragments), velocity_threshold(fragments, table)
    )
    assert changed == [late_0]
    assert corrected[late_0] == 0
    assert np.array_equal(corrected[truth != 2], truth[truth != 2])


def test_a_fragment_with_no_identity_left_is_left_unidentified():
    table, fragments, lane = three_lanes()
    identity = np.array([lane[f.index] for f in fragments])
    late_0 = next(f.index for f in fragments if lane[f.index] == 0 and f.start_frame == 60)
    late_2 = next(f.index for f in fragments if lane[f.index] == 2 and f.start_frame == 70)
    identity[late_0], identity[late_2] = 2, 0  # a swap: both jump 140 px across the lanes
    p2 = np.full((len(fragments), 3), 1 / 3)
    corrected, changed = correct_impossible_jumps(
        fragments, table, identity, p2, coexistence(fragments), velocity_threshold(fragments, table)
    )
    # The shorter fragment is suspected first; every other identity is worn by a coexisting
    # fragment, so it loses its identity. That frees identity 0 for the other one.
    assert changed == [late_2, late_0]
    assert corrected[late_2] == -1 and corrected[late_0] == 0


def test_correct_identities_are_left_alone():
    table, fragments, lane = three_lanes()
    identity = np.array([lane[f.index] for f in fragments])
    p2 = np.full((len(fragments), 3), 1 / 3)
    corrected, changed = correct_impossible_jumps(
        fragments, table, identity, p2, coexistence(fragments), velocity_threshold(fragments, table)
    )
    assert changed == [] and np.array_equal(corrected, identity)


def test_crossing_interpolation_fills_the_gap_inside_the_merged_blob():
    frames, n = crossing_scene(n_frames=60, speed=1.0)
    table = table_from_discs(frames)
    truth = true_animals(frames, table)
    blob_identity = np.array([next(iter(t)) if len(t) == 1 else -1 for t in truth])
    trajectories, _ = build_trajectories(table, blob_identity, 60, n)
    gap = np.isnan(trajectories[:, 0, 0])
    assert gap.sum() > 5
    filled, was_filled = interpolate_crossings(trajectories, table, blob_identity)
    assert not np.isnan(filled).any()
    assert np.array_equal(was_filled[:, :2], np.stack([gap, gap], 1)) and not was_filled[:, 2].any()
    true_xy = np.array([[d[:2] for d in fr] for fr in frames])
    assert np.abs(filled - true_xy).max() < 3.0
    merged = np.flatnonzero(blob_identity < 0)
    for f in np.flatnonzero(gap):
        row = merged[table.frame[merged] == f][0]
        x0, y0, _, _ = table.bbox[row]
        for k in (0, 1):
            x, y = np.round(filled[f, k]).astype(int)
            assert table.mask(row)[y - y0, x - x0]  # the animal is put inside the crossing


def test_animals_still_touching_when_the_video_ends_stay_on_their_crossing():
    """Two animals meet at frame 20 and are one blob until the last frame: there is no far side to
    interpolate from, so each follows the merged blob from where it was last seen alone."""
    frames = [[(40 + min(t, 20), 50, 6), (90 - min(t, 20), 50, 6)] for t in range(30)]
    table = table_from_discs(frames)
    truth = true_animals(frames, table)
    blob_identity = np.array([next(iter(t)) if len(t) == 1 else -1 for t in truth])
    trajectories, _ = build_trajectories(table, blob_identity, 30, 2)
    merged_from = int(np.flatnonzero(np.isnan(trajectories[:, 0, 0]))[0])
    assert merged_from < 25
    filled, was_filled = interpolate_crossings(trajectories, table, blob_identity, max_snap_distance=10)
    assert not np.isnan(filled).any() and was_filled[merged_from:].all() and not was_filled[:merged_from].any()
    true_xy = np.array([[d[:2] for d in fr] for fr in frames])
    assert np.abs(filled - true_xy).max() < 6.0  # within a radius of each animal
    reversed_frames = frames[::-1]  # the same at the start of a video: both begin touching
    table = table_from_discs(reversed_frames)
    blob_identity = np.array([next(iter(t)) if len(t) == 1 else -1 for t in true_animals(reversed_frames, table)])
    trajectories, _ = build_trajectories(table, blob_identity, 30, 2)
    filled, _ = interpolate_crossings(trajectories, table, blob_identity, max_snap_distance=10)
    assert not np.isnan(filled).any()


def test_positions_are_snapped_to_the_blob_when_the_straight_line_misses_it():
    # An animal seen at x=20 and x=60 (y=50) is, in between, inside a blob lying below the line.
    frames = [[(20, 50, 5)], [(40, 75, 8)], [(60, 50, 5)]]
    table = table_from_discs(frames)
    blob_identity = np.array([0, -1, 0])
    trajectories, _ = build_trajectories(table, blob_identity, 3, 1)
    filled, _ = interpolate_crossings(trajectories, table, blob_identity, max_snap_distance=30)
    x, y = filled[1, 0]
    assert abs(x - 40) <= 1 and 66 <= y <= 68  # the top pixel of the blob
    far, was_filled = interpolate_crossings(trajectories, table, blob_identity, max_snap_distance=5)
    assert np.isnan(far[1, 0]).all() and not was_filled.any()


def test_animals_that_turn_inside_a_crossing_are_settled_onto_their_own_bodies():
    """Two animals (discs of radius 8, a body length of 16) meet, dive 40 px together, rest there
    and come back: the straight line between their sightings runs far above them, so the snapped
    point is the blob's top edge, a half body length off. Each settles on the centroid of its share."""
    radius = 8.0

    def y(t):
        return 50 + 8 * min(max(t - 5, 0), 5) - 8 * min(max(t - 25, 0), 5)

    frames = [[(30 + 3 * min(t, 5) - 3 * max(t - 30, 0), y(t), radius),
               (77 - 3 * min(t, 5) + 3 * max(t - 30, 0), y(t), radius)] for t in range(36)]
    table = table_from_discs(frames, size=(150, 150))
    blob_identity = np.array([next(iter(t)) if len(t) == 1 else -1 for t in true_animals(frames, table)])
    trajectories, _ = build_trajectories(table, blob_identity, 36, 2)
    true_xy = np.array([[d[:2] for d in fr] for fr in frames])
    snapped, was_filled = interpolate_crossings(trajectories, table, blob_identity, max_snap_distance=40)
    settled, _ = interpolate_crossings(trajectories, table, blob_identity, max_snap_distance=40,
                                       body_radius=radius)
    assert was_filled.sum() == 2 * 26  # both animals, in every frame of the merged blob
    assert np.linalg.norm(snapped - true_xy, axis=2)[was_filled].mean() > 0.9 * radius
    assert np.linalg.norm(settled - true_xy, axis=2).max() < 0.25 * radius
