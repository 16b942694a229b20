"""Timelines and doubtful moments of the review (shoal/review/doubts.py), on constructed arrays."""

import json

import numpy as np
import pytest

from shoal.review.doubts import (
    CERTAINTY_BELOW,
    Segment,
    corrected_ranges,
    default_long_crossing,
    doubtful_moments,
    timeline,
)

F, N = 100, 3
BODY, SPEED_LIMIT = 20.0, 5.0


def calm() -> tuple[np.ndarray, np.ndarray]:
    """Three animals walking 1 px a frame in their own lanes, each one certain fragment."""
    x = 10.0 + np.arange(F, dtype=float)
    traj = np.stack([np.column_stack([x, np.full(F, 50.0 + 100 * k)]) for k in range(N)], axis=1)
    return traj, np.ones((F, N, 1))


def moments(traj, probs, **kw):
    kw = {"body_length": BODY, "velocity_threshold": SPEED_LIMIT, "inconsistent_frames": (), **kw}
    return doubtful_moments(traj, probs, **kw)


def test_timeline_cuts_identified_interpolated_and_gap_runs_and_splits_where_certainty_changes():
    traj, probs = calm()
    probs[:10, 0] = 0.95
    probs[10:20, 0] = 0.5  # the next fragment
    probs[20:25, 0] = np.nan  # inside a crossing: interpolated
    traj[25:30, 0] = np.nan  # lost
    probs[25:30, 0] = np.nan
    rows = timeline(traj, probs)
    assert rows[0] == [Segment("identified", 0, 10, 0.95), Segment("identified", 10, 20, 0.5),
                       Segment("interpolated", 20, 25), Segment("gap", 25, 30),
                       Segment("identified", 30, F, 1.0)]
    assert rows[1] == [Segment("identified", 0, F, 1.0)]
    json.dumps([[s.to_json() for s in row] for row in rows])


def test_timeline_accepts_certainty_without_its_last_axis():
    traj, probs = calm()
    assert timeline(traj, probs[..., 0]) == timeline(traj, probs)


def test_a_calm_tracking_has_nothing_doubtful():
    assert moments(*calm()) == []


def test_low_certainty_is_found_below_the_threshold_only():
    traj, probs = calm()
    probs[40:60, 2] = 0.62
    probs[70:80, 1] = CERTAINTY_BELOW  # at the threshold: fine
    [m] = moments(traj, probs)
    assert (m.kind, m.start, m.end, m.identities) == ("low_certainty", 40, 60, [3])
    assert m.score == pytest.approx(0.38)
    assert m.text == "identity 3: certainty 0.62 over frames 40–59"


def test_unknown_between_known_stretches_is_unassigned_but_not_before_the_first_sighting():
    traj, probs = calm()
    traj[:10, 0] = np.nan  # not seen yet: not doubtful
    traj[50:58, 1] = np.nan
    probs[np.isnan(traj[..., 0])] = np.nan
    [m] = moments(traj, probs)
    assert (m.kind, m.start, m.end, m.identities) == ("unassigned", 50, 58, [2])
    assert 0 < m.score < 1 and "identity 2" in m.text


def test_a_jump_faster_than_the_limit_and_a_swap_as_one_moment():
    traj, probs = calm()
    traj[60:, 0, 0] += 30.0  # identity 1 jumps 30 px between frames 59 and 60
    [m] = moments(traj, probs)
    assert (m.kind, m.start, m.end, m.identities) == ("jump", 59, 61, [1])
    assert "31.0 px/frame" in m.text
    traj, probs = calm()
    traj[70:, [0, 1]] = traj[70:, [1, 0]]  # a swap: both identities jump at once
    [m] = moments(traj, probs)
    assert (m.kind, m.start, m.end, m.identities) == ("jump", 69, 71, [1, 2])


def test_jumps_are_measured_across_crossings_between_own_blob_positions():
    traj, probs = calm()
    probs[30:40, 0] = np.nan  # interpolated, snapped positions that step too far...
    traj[35, 0] += 12.0
    assert moments(traj, probs, long_crossing_frames=50) == []  # ...are not a jump
    traj[40:, 0] += 200.0  # but coming out of the crossing 200 px away is
    [m] = moments(traj, probs, long_crossing_frames=50)
    assert (m.kind, m.start, m.end) == ("jump", 29, 41)


def test_no_jumps_without_a_velocity_threshold():
    traj, probs = calm()
    traj[60:, 0] += 300.0
    assert moments(traj, probs, velocity_threshold=float("inf")) == []


def test_long_crossings_are_found_and_joined_across_identities():
    traj, probs = calm()
    probs[20:26, 0] = np.nan  # short: routine
    probs[50:80, 1] = np.nan
    probs[52:80, 2] = np.nan
    [m] = moments(traj, probs, long_crossing_frames=10)
    assert (m.kind, m.start, m.end, m.identities) == ("long_crossing", 50, 80, [2, 3])
    assert "30 frames" in m.text


def test_default_long_crossing():
    assert default_long_crossing(20.0, 5.0) == 16  # four body lengths over the speed limit
    assert default_long_crossing(5.0, 10.0) == 10  # at least 10 frames
    assert default_long_crossing(20.0, float("inf")) == 10


def test_frames_with_more_blobs_become_runs():
    traj, probs = calm()
    found = moments(traj, probs, inconsistent_frames=np.array([5, 6, 7, 30, 90, 91]), merge_gap=0)
    assert sorted((m.kind, m.start, m.end, tuple(m.identities)) for m in found) == [
        ("more_blobs", 5, 8, ()), ("more_blobs", 30, 31, ()), ("more_blobs", 90, 92, ())]
    assert found[0].start == 5  # the longest run ranks first among equals


def test_moments_rank_most_doubtful_first_and_are_bounded():
    traj, probs = calm()
    probs[10:20, 0] = 0.8  # score 0.2
    probs[10:20, 1] = 0.3  # score 0.7
    traj[60:, 2] += 100.0  # a 101 px/frame jump: score close to 1
    found = moments(traj, probs, inconsistent_frames=[95])
    assert [m.kind for m in found] == ["jump", "low_certainty", "more_blobs", "low_certainty"]
    assert [m.identities for m in found] == [[3], [2], [], [1]]
    scores = [m.score for m in found]
    assert scores == sorted(scores, reverse=True) and all(0 <= s <= 1 for s in scores)
    assert moments(traj, probs, limit=2) == found[:2]
    json.dumps([m.to_json() for m in found])


def test_many_nearby_moments_merge():
    traj, probs = calm()
    probs[0:F:3, 0] = 0.5  # every third frame a doubtful one-frame fragment, 2 frames apart
    [m] = moments(traj, probs)
    assert (m.kind, m.start, m.end) == ("low_certainty", 0, F)


def test_corrected_ranges_per_identity_leave_out_checks_and_undone_entries():
    entries = [
        {"id": 1, "op": "swap", "a": 1, "b": 3, "start": 90, "end": None},
        {"id": 2, "op": "move", "identity": 2, "frame": 5, "x": 1.0, "y": 1.0},
        {"id": 3, "op": "assign", "identity": 2, "to": 1, "start": 6, "end": 9},
        {"id": 4, "op": "check", "start": 0, "end": 100},
        {"id": 5, "op": "delete", "identity": 3, "start": 0, "end": 3},
        {"id": 6, "op": "undo"},
    ]
    assert corrected_ranges(entries, F, N) == [[(6, 9), (90, 100)], [(5, 9)], [(90, 100)]]
