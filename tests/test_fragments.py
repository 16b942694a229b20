"""Crossings, fragments and global fragments on scenes whose truth is known."""

import itertools

import numpy as np
import pytest

from services.assembler.crossings import area_rule, classify_crossings, sure_labels
from services.assembler.fragments import Fragment, build_fragments, coexistence
from services.assembler.global_fragments import find_global_fragments
from services.assembler.overlap import overlap_links
from shoal.identity_requests import CrossingReply
from tests.blob_scenes import crossing_scene, table_from_discs, true_animals


@pytest.fixture(scope="module")
def scene():
    frames, n = crossing_scene(n_frames=80, speed=1.0)
    table = table_from_discs(frames)
    return frames, n, table, overlap_links(table), true_animals(frames, table)


class RecordingDetector:
    """A crossing detector that says "crossing" for blobs bigger than ``area`` (or is untrainable)."""

    def __init__(self, table, trained=True, area=200.0):
        self.table, self.trained, self.area, self.requests = table, trained, area, []

    def classify_crossings(self, request, progress=None):
        self.requests.append(request)
        p = (self.table.area[request.predict_ids] > self.area).astype(np.float32)
        return CrossingReply(crossing_probability=p, trained=self.trained)


def test_sure_labels_mark_merged_animals_as_crossings_and_full_frames_as_individuals(scene):
    frames, n, table, links, truth = scene
    labels = sure_labels(table, links, n)
    n_in_blob = np.array([len(t) for t in truth])
    full = np.bincount(table.frame)[table.frame] == n
    assert np.all(labels[full] == 0)
    assert np.all(labels[n_in_blob == 2] == 1)  # every merged blob is a sure crossing
    assert not np.any(labels[n_in_blob == 1] == 1)  # no single animal is ever called a sure crossing
    assert np.any(labels == -1)  # the lone animal during the crossing is left to the detector


def test_the_area_rule_flags_blobs_far_above_the_single_animal_area(scene):
    _, n, table, _, truth = scene
    seems = area_rule(table, n)
    assert np.array_equal(seems, np.array([len(t) == 2 for t in truth]))


def test_the_area_rule_still_works_when_no_frame_shows_every_animal_apart():
    # Animals 0 and 1 touch in every frame; 2 and 3 meet for a while: no frame holds 4 blobs.
    frames = []
    for t in range(60):
        x = 40 + 2.0 * t
        meet = 20 <= t < 40
        frames.append([(x, 50.0, 7.0), (x + 9, 52.0, 7.0),
                       (250 - 2.0 * t, 120.0, 7.0), (250 - 2.0 * t + (9 if meet else 30), 125.0, 7.0)])
    table = table_from_discs(frames)
    assert np.bincount(table.frame).max() < 4
    truth = true_animals(frames, table)
    assert np.array_equal(area_rule(table, 4), np.array([len(t) == 2 for t in truth]))


def test_crossing_detector_decides_the_unknown_blobs_and_learns_from_the_sure_ones(scene):
    _, n, table, links, truth = scene
    labels = sure_labels(table, links, n)
    detector = RecordingDetector(table)
    is_crossing = classify_crossings(table, links, n, detector, seed=3)
    request = detector.requests[0]
    assert set(request.predict_ids) == set(np.flatnonzero(labels == -1))
    assert np.array_equal(request.train_labels, labels[request.train_ids])
    assert request.seed == 3
    assert np.array_equal(is_crossing, np.array([len(t) == 2 for t in truth]))


def test_an_untrainable_detector_falls_back_to_the_area_rule(scene):
    _, n, table, links, _ = scene
    detector = RecordingDetector(table, trained=False, area=0.0)  # would call everything a crossing
    notes = []
    is_crossing = classify_crossings(table, links, n, detector, notes=notes)
    assert np.array_equal(is_crossing, area_rule(table, n))
    assert notes and "area rule" in notes[0]


def test_one_animal_is_never_a_crossing(scene):
    _, _, table, links, _ = scene
    assert not classify_crossings(table, links, 1, None).any()


def test_fragments_never_span_a_crossing_and_each_shows_one_animal(scene):
    _, n, table, links, truth = scene
    is_crossing = classify_crossings(table, links, n, None)
    fragments, blob_fragment = build_fragments(table, links, is_crossing)
    for f in fragments:
        assert np.all(blob_fragment[f.rows] == f.index)
        assert np.all(np.diff(table.frame[f.rows]) == 1)  # one blob per frame, no holes
        assert len(set(is_crossing[f.rows])) == 1
        if f.is_individual:
            assert len({frozenset(truth[r]) for r in f.rows}) == 1
    animals_01 = [f for f in fragments if f.is_individual and truth[f.rows[0]] <= {0, 1}]
    assert len(animals_01) == 4  # two animals, before and after their crossing
    starts = [f.start_frame for f in fragments]
    assert starts == sorted(starts)
    crossing = [f for f in fragments if not f.is_individual]
    assert len(crossing) == 1 and crossing[0].n_images > 5


def test_fragment_geometry_helpers():
    table = table_from_discs([[(20 + 3 * t, 40, 5)] for t in range(5)])
    links = overlap_links(table)
    (f,), _ = build_fragments(table, links, np.zeros(len(table), bool))
    assert (f.start_frame, f.end_frame, f.n_images) == (0, 5, 5)
    assert np.allclose(f.speeds(table), 3.0)
    assert f.distance_travelled(table) == pytest.approx(12.0)
    assert np.allclose(f.start_position(table), [20, 40]) and np.allclose(f.end_position(table), [32, 40])


def test_coexistence_matches_a_brute_force_comparison():
    rng = np.random.default_rng(0)
    fragments = []
    for i in range(300):
        start = int(rng.integers(0, 1000))
        end = start + int(rng.integers(1, 60))
        fragments.append(Fragment(i, start, end, np.zeros(0, np.int64), is_individual=i % 7 != 0))
    neighbours = coexistence(fragments)
    for a, b in itertools.combinations(fragments, 2):
        both_individual = a.is_individual and b.is_individual
        overlap = both_individual and a.start_frame < b.end_frame and b.start_frame < a.end_frame
        assert (b.index in neighbours[a.index]) == overlap
        assert (a.index in neighbours[b.index]) == overlap


def test_the_fragments_of_a_global_fragment_coexist_and_are_all_the_animals(scene):
    _, n, table, links, truth = scene
    is_crossing = classify_crossings(table, links, n, None)
    fragments, blob_fragment = build_fragments(table, links, is_crossing)
    neighbours = coexistence(fragments)
    globals_ = find_global_fragments(fragments, blob_fragment, table, n, n_frames=80)
    assert len(globals_) == 2  # before and after the crossing
    for g in globals_:
        assert len(g.fragments) == n
        for a, b in itertools.combinations(g.fragments, 2):
            assert b in neighbours[a]
        animals = set().union(*(truth[fragments[k].rows[0]] for k in g.fragments))
        assert animals == {0, 1, 2}
        assert g.first_frame_of_core == max(fragments[k].start_frame for k in g.fragments)
        assert g.accumulable and g.min_n_images >= 4
    assert globals_[0].first_frame_of_core < globals_[1].first_frame_of_core


def test_no_global_fragment_when_an_animal_is_never_seen_alone():
    frames = [[(40 + t, 40, 6), (46 + t, 40, 6), (120, 100 + t, 6)] for t in range(20)]
    table = table_from_discs(frames)
    links = overlap_links(table)
    is_crossing = classify_crossings(table, links, 3, None)
    fragments, blob_fragment = build_fragments(table, links, is_crossing)
    assert find_global_fragments(fragments, blob_fragment, table, 3, n_frames=20) == []
