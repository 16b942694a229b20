"""The whole assembler chain on synthetic scenes, with a fake identifier that knows the truth."""

import numpy as np
import pytest

from services.assembler.fragments import Fragment
from services.assembler.overlap import overlap_links
from services.assembler.slots import assign_slots, max_blobs_per_frame
from services.assembler.track import track
from shoal.identity_requests import CrossingReply, IdentityReply
from tests.blob_scenes import crossing_scene, table_from_discs, true_animals


class TruthIdentifier:
    """Answers like a trained network: the true animal, under its own arbitrary labels, with noise.

    Images of several animals (crossings) get a random guess, as a real network would give."""

    def __init__(self, truth, labels, noise=1.0, seed=0):
        self.truth, self.labels, self.noise = truth, labels, noise
        self.rng = np.random.default_rng(seed)
        self.requests = []

    def classify_crossings(self, request, progress=None):
        return CrossingReply(np.zeros(len(request.predict_ids), np.float32), trained=False, note="fake")

    def learn_identities(self, request, progress=None):
        self.requests.append(request)
        p = self.rng.random((len(request.fragment_ids), request.n_animals)) * self.noise
        for r, image in enumerate(request.fragment_ids):
            if len(self.truth[image]) == 1:
                p[r, self.labels[next(iter(self.truth[image]))]] += 1
        p /= p.sum(axis=1, keepdims=True)
        return IdentityReply(probabilities=p.astype(np.float32), method="fake", silhouette=0.95)


def two_crossings_scene(n_frames=120):
    """Three animals: 0 and 1 meet head-on around frame 60, then 2 crosses 0's path around frame 95."""
    return [[(30 + 2.0 * t, 60, 7), (270 - 2.0 * t, 62, 7), (220, 200 - 1.5 * t, 7)] for t in range(n_frames)]


@pytest.fixture(scope="module")
def crossing():
    frames, n = crossing_scene(n_frames=90, speed=1.5)
    table = table_from_discs(frames)
    return frames, n, table, overlap_links(table), true_animals(frames, table)


def identity_map(result, truth):
    """predicted identity -> true animal, read from the blobs of single animals (must be one-to-one)."""
    pairs = {(int(result.blob_identity[i]), next(iter(t))) for i, t in enumerate(truth) if len(t) == 1}
    return dict(pairs), pairs


def test_the_whole_chain_recovers_every_identity_through_a_crossing(crossing):
    frames, n, table, links, truth = crossing
    identifier = TruthIdentifier(truth, labels=[2, 0, 1], noise=1.5)
    result = track(table, links, len(frames), n, identifier, seed=5)
    mapping, pairs = identity_map(result, truth)
    assert len(pairs) == n and sorted(mapping) == [0, 1, 2] and sorted(mapping.values()) == [0, 1, 2]
    request = identifier.requests[0]
    assert request.seed == 5 and request.global_fragments.shape == (2, n)
    true_xy = np.array([[d[:2] for d in fr] for fr in frames])
    for k, animal in mapping.items():
        error = np.linalg.norm(result.trajectories[:, k] - true_xy[:, animal], axis=1)
        assert not np.isnan(error).any()  # also through the crossing, where two animals are one blob
        assert error.max() < 3.0
    assert result.is_crossing.sum() == sum(len(t) == 2 for t in truth)
    assert result.n_global_fragments == 2 and result.n_positions_interpolated > 0
    assert result.estimated_accuracy > 0.99 and result.silhouette == 0.95 and result.method == "fake"
    assert set(result.timings) >= {"Crossing detection", "Fragmentation", "Tracking", "Crossings solver"}
    assert result.id_probabilities.shape == (len(frames), n, 1) and result.areas.shape == (len(frames), n)


def test_a_scene_with_two_crossings_keeps_every_identity():
    frames = two_crossings_scene()
    table = table_from_discs(frames, size=(240, 300))
    truth = true_animals(frames, table)
    links = overlap_links(table)
    crossings = {frozenset(t) for t in truth if len(t) == 2}
    assert crossings == {frozenset({0, 1}), frozenset({0, 2})}
    result = track(table, links, len(frames), 3, TruthIdentifier(truth, labels=[1, 2, 0], noise=2.0))
    mapping, pairs = identity_map(result, truth)
    assert len(pairs) == 3 and len(set(mapping.values())) == 3
    true_xy = np.array([[d[:2] for d in fr] for fr in frames])
    for k, animal in mapping.items():
        assert np.linalg.norm(result.trajectories[:, k] - true_xy[:, animal], axis=1).max() < 3.0


def test_without_identities_fragments_take_slots_and_no_identifier_is_needed(crossing):
    frames, n, table, links, truth = crossing
    result = track(table, links, len(frames), n, None, identities=False)
    assert result.n_animals == 3 and result.method == "no identities" and result.estimated_accuracy is None
    single = np.array([len(t) == 1 for t in truth])
    assert np.all(result.blob_identity[single] >= 0) and np.all(result.blob_identity[~single] == -1)
    assert result.blob_identity.max() == 2


def test_one_animal_needs_no_identifier():
    frames = [[(40 + 2 * t, 50, 6)] for t in range(30)]
    table = table_from_discs(frames)
    result = track(table, overlap_links(table), 30, 1, None)
    assert not np.isnan(result.trajectories).any() and result.estimated_accuracy == 1.0
    assert np.allclose(result.trajectories[:, 0, 0], [40 + 2 * t for t in range(30)])


def test_a_video_without_global_fragments_is_still_tracked():
    # Three animals, but one is never in view alone with the others: frames hold at most 2 blobs.
    frames = [[(40 + t, 40, 6), (120, 100 + t, 6)] for t in range(30)]
    table = table_from_discs(frames)
    truth = true_animals(frames, table)
    result = track(table, overlap_links(table), 30, 3, TruthIdentifier(truth, labels=[0, 1, 2]))
    assert result.n_global_fragments == 0
    assert any("global fragment" in w for w in result.warnings)
    assert np.isnan(result.trajectories[:, 2]).all() and not np.isnan(result.trajectories[:, :2]).any()


def test_more_blobs_than_animals_is_a_warning_not_a_crash(crossing):
    frames, _, table, links, truth = crossing
    result = track(table, links, len(frames), 2, TruthIdentifier(truth, labels=[0, 1, 1]))
    assert any("more blobs than" in w for w in result.warnings)
    assert result.trajectories.shape == (len(frames), 2, 2)


def test_with_identities_and_several_animals_an_identifier_is_required(crossing):
    frames, n, table, links, _ = crossing
    with pytest.raises(ValueError, match="identifier"):
        track(table, links, len(frames), n, None)


def test_a_new_fragment_takes_the_lowest_free_slot():
    def frag(i, start, end):
        return Fragment(i, start, end, np.arange(end - start, dtype=np.int64), True)

    fragments = [frag(0, 0, 10), frag(1, 0, 20), frag(2, 0, 30), frag(3, 12, 40), frag(4, 25, 40)]
    # slot 0 frees at frame 10 -> fragment 3 (frame 12) takes 0; slot 1 frees at 20 -> fragment 4 takes 1
    assert assign_slots(fragments, 3).tolist() == [0, 1, 2, 0, 1]
    assert assign_slots(fragments[:3], 2).tolist() == [0, 1, -1]
    table = table_from_discs([[(30, 30, 5), (60, 30, 5)], [(30, 30, 5)]])
    assert max_blobs_per_frame(table) == 2
