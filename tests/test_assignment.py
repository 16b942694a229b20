"""Votes, P1, P2 and the greedy assignment on hand-built fragment sets."""

import numpy as np
import pytest

from services.assembler.assignment import assign_identities, assign_tracklets, certainty_p2, p2
from services.assembler.fragments import Fragment, coexistence
from shoal.votes import certainty, fragment_votes, p1_from_votes


def fragment(index, start, end, individual=True):
    return Fragment(index, start, end, np.arange(end - start, dtype=np.int64), individual)


def test_votes_count_each_images_best_identity_and_its_median_probability():
    probabilities = np.array([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7], [0.6, 0.4], [0.1, 0.9], [0.2, 0.8]])
    counts, median = fragment_votes(probabilities, np.array([0, 3, 3, 6]))
    assert counts.tolist() == [[2, 1], [0, 0], [1, 2]]
    assert np.allclose(median, [[0.85, 0.7], [0, 0], [0.6, 0.85]])


def test_p1_is_a_base_2_softmax_that_survives_thousands_of_votes():
    assert np.allclose(p1_from_votes(np.array([[2, 1, 0]])), [[4 / 7, 2 / 7, 1 / 7]])
    p1 = p1_from_votes(np.array([[5000, 4999], [0, 0]]))
    assert np.all(np.isfinite(p1))
    assert np.allclose(p1, [[2 / 3, 1 / 3], [0.5, 0.5]])


def test_certainty_weighs_the_top_two_identities_by_their_median_probability():
    p1 = np.array([[0.7, 0.2, 0.1]])
    m = np.array([[0.9, 0.5, 0.3]])
    assert certainty(p1, m)[0] == pytest.approx((0.7 * 0.9 - 0.2 * 0.5) / 0.9)
    assert certainty(np.array([[1.0]]), np.array([[0.8]]))[0] == pytest.approx(0.8)


def test_p2_rules_out_identities_held_by_coexisting_fragments():
    fragments = [fragment(0, 0, 10), fragment(1, 5, 15), fragment(2, 20, 30)]
    p1 = np.array([[1.0, 0.0], [0.6, 0.4], [0.6, 0.4]])
    out = p2(p1, coexistence(fragments))
    assert np.allclose(out[1], [0, 1])  # its neighbour is surely identity 0
    assert np.allclose(out[2], [0.6, 0.4])  # alone: P2 = P1
    assert certainty_p2(out[1]) == np.inf and certainty_p2(np.array([0.6, 0.3])) == pytest.approx(2)


def test_coexisting_fragments_get_different_identities():
    fragments = [fragment(0, 0, 10), fragment(1, 0, 10), fragment(2, 0, 10)]
    p1 = np.array([[0.98, 0.01, 0.01], [0.5, 0.45, 0.05], [0.4, 0.2, 0.4]])
    result = assign_identities(fragments, p1, coexistence(fragments), 3)
    assert result.identity.tolist() == [0, 1, 2]


def test_the_greedy_order_propagates_constraints_along_chains_of_coexistence():
    # A (sure of 0) overlaps B; B overlaps C but A does not. B wrongly prefers 0, C slightly prefers 1:
    # once A takes 0, B must be 1, and then C must be 0.
    fragments = [fragment(0, 0, 10), fragment(1, 5, 25), fragment(2, 20, 40)]
    p1 = np.array([[0.999, 0.001], [0.7, 0.3], [0.45, 0.55]])
    result = assign_identities(fragments, p1, coexistence(fragments), 2)
    assert result.identity.tolist() == [0, 1, 0]


def test_a_tie_leaves_the_fragment_unassigned_and_crossings_are_never_assigned():
    fragments = [fragment(0, 0, 10), fragment(1, 20, 30, individual=False)]
    p1 = np.array([[0.5, 0.5], [0.9, 0.1]])
    assert assign_identities(fragments, p1, coexistence(fragments), 2).identity.tolist() == [-1, -1]


def test_fixed_identities_are_kept_and_constrain_their_neighbours():
    fragments = [fragment(0, 0, 10), fragment(1, 0, 10)]
    p1 = np.array([[0.9, 0.1], [0.9, 0.1]])
    result = assign_identities(fragments, p1, coexistence(fragments), 2, fixed={0: 1})
    assert result.identity.tolist() == [1, 0]


def test_no_two_coexisting_fragments_share_an_identity_on_random_scenes():
    rng = np.random.default_rng(1)
    n = 5
    fragments = []
    for _ in range(200):
        start = int(rng.integers(0, 2000))
        fragments.append(fragment(len(fragments), start, start + int(rng.integers(2, 40))))
    # keep at most n fragments alive in any frame, as a real video would
    alive = np.zeros(2100, int)
    kept = []
    for f in fragments:
        if alive[f.start_frame : f.end_frame].max() < n:
            alive[f.start_frame : f.end_frame] += 1
            kept.append(fragment(len(kept), f.start_frame, f.end_frame))
    neighbours = coexistence(kept)
    p1 = p1_from_votes(rng.integers(0, 6, size=(len(kept), n)))
    identity = assign_identities(kept, p1, neighbours, n).identity
    for i, nb in enumerate(neighbours):
        if identity[i] >= 0:
            assert not np.any(identity[nb] == identity[i])
    assert np.mean(identity >= 0) > 0.5


def test_a_tracklet_carries_a_well_voted_identity_through_an_ambiguous_fragment():
    # two animals cross at frame 40; after it, the network votes weakly and wrongly (fragments 2, 3
    # are animals 0, 1). Alone they swap; chained by motion to 0 and 1 their pooled votes do not.
    fragments = [fragment(0, 0, 40), fragment(1, 0, 40), fragment(2, 45, 80), fragment(3, 45, 80)]
    votes = np.array([[30, 2], [2, 30], [1, 3], [3, 1]])
    alone = assign_tracklets(fragments, votes, np.arange(4), coexistence(fragments), 2)
    assert alone.identity.tolist() == [0, 1, 1, 0]
    chained = assign_tracklets(fragments, votes, np.array([0, 1, 0, 1]), coexistence(fragments), 2)
    assert chained.identity.tolist() == [0, 1, 0, 1]
