"""Scoring against ground truth: perfect, swapped, relabelled and incomplete predictions."""

import json

import numpy as np
import pytest

from shoal.evaluate import evaluate, identity_switches, load_predictions, main

BODY = 20.0


@pytest.fixture
def truth():
    """Four animals on separate circles, 200 frames, animals 0 and 1 touch in frames 90-109."""
    rng = np.random.default_rng(0)
    t = np.arange(200)[:, None]
    centres = np.array([[100, 100], [300, 100], [100, 300], [300, 300]], float)
    phase = rng.uniform(0, 2 * np.pi, 4)
    positions = centres[None] + 60 * np.stack([np.cos(0.03 * t + phase), np.sin(0.03 * t + phase)], axis=2)
    touching = np.zeros((200, 4), bool)
    touching[90:110, :2] = True
    return positions, touching


def test_truth_against_itself_is_perfect(truth):
    positions, touching = truth
    s = evaluate(positions, touching, BODY, positions)
    assert (s.accuracy, s.accuracy_all, s.idf1, s.coverage, s.detection_rate) == (1.0, 1.0, 1.0, 1.0, 1.0)
    assert s.id_switches == 0
    assert s.mapping == {0: 0, 1: 1, 2: 2, 3: 3}
    assert (s.n_frames, s.n_animals) == (200, 4)


def test_relabelled_identities_still_score_perfectly(truth):
    positions, touching = truth
    order = [2, 0, 3, 1]
    s = evaluate(positions, touching, BODY, positions[:, order])
    assert s.accuracy == 1.0 and s.idf1 == 1.0 and s.id_switches == 0
    assert s.mapping == {p: t for p, t in enumerate(order)}


def test_swap_half_way_costs_one_switch_per_animal_and_half_their_frames(truth):
    positions, touching = truth
    pred = positions.copy()
    pred[100:, [0, 2]] = positions[100:, [2, 0]]
    s = evaluate(positions, touching, BODY, pred)
    assert s.id_switches == 2
    assert s.coverage == 1.0  # every animal still has a point on it ...
    true_to_pred = {t: p for p, t in s.mapping.items()}
    for animal in (0, 2):  # ... but the swapped ones carry the right identity half of the time
        d = pred[:, true_to_pred[animal]] - positions[:, animal]
        assert np.mean(np.hypot(d[:, 0], d[:, 1]) < BODY / 2) == pytest.approx(0.5)
    assert s.accuracy_all == pytest.approx((2 * 1.0 + 2 * 0.5) / 4)
    assert s.idf1 == pytest.approx(0.75)


def test_unknown_predictions_lower_coverage_and_accuracy(truth):
    positions, touching = truth
    pred = positions.copy()
    pred[:50, 3] = np.nan
    s = evaluate(positions, touching, BODY, pred)
    assert s.coverage == pytest.approx(1 - 50 / 800)
    assert s.accuracy_all == pytest.approx(1 - 50 / 800)
    assert s.idf1 == pytest.approx(2 * 750 / (800 + 750))
    assert s.id_switches == 0  # a gap is not a switch


def test_crossing_frames_count_only_in_accuracy_all(truth):
    positions, touching = truth
    pred = positions.copy()
    pred[90:110, 0], pred[90:110, 1] = positions[90:110, 1], positions[90:110, 0]
    s = evaluate(positions, touching, BODY, pred)
    assert s.accuracy == 1.0
    assert s.accuracy_all == pytest.approx(1 - 40 / 800)
    assert s.id_switches == 4  # swapped in and swapped back, for both animals


def test_far_predictions_are_wrong_and_extra_identities_are_allowed(truth):
    positions, touching = truth
    pred = np.concatenate([positions + BODY, positions[:, :2]], axis=1)  # 4 far-off + 2 right
    s = evaluate(positions, touching, BODY, pred)
    assert s.accuracy_all == pytest.approx(0.5)
    assert set(s.mapping) == {4, 5}
    assert s.coverage == pytest.approx(0.5)
    assert s.detection_rate == pytest.approx(2 * 180 / (800 - 40))  # animals 0 and 1, outside crossings


def test_identity_switches_ignore_gaps():
    truth = np.zeros((5, 1, 2))
    pred = np.full((5, 2, 2), np.nan)
    pred[0, 0] = pred[2, 0] = pred[4, 1] = 0.0
    assert identity_switches(truth, pred, radius=5.0) == 1


def test_mismatched_lengths_are_rejected(truth):
    positions, touching = truth
    with pytest.raises(ValueError, match="frames"):
        evaluate(positions, touching, BODY, positions[:-1])


def _session(tmp_path, trajectories):
    """A session folder holding a pickled dict, as idtracker.ai writes trajectories.npy."""
    folder = tmp_path / "session_test"
    (folder / "trajectories").mkdir(parents=True)
    with open(folder / "trajectories" / "trajectories.npy", "wb") as f:
        np.save(f, {"trajectories": trajectories, "frames_per_second": 30}, allow_pickle=True)
    return folder


def test_load_predictions_from_session_npy_and_csv(tmp_path, truth):
    positions, _ = truth
    pred = positions.copy()
    pred[3, 1] = np.nan
    session = _session(tmp_path, pred)
    np.testing.assert_array_equal(load_predictions(session), pred)
    np.save(tmp_path / "plain.npy", pred)
    np.testing.assert_array_equal(load_predictions(tmp_path / "plain.npy"), pred)
    csv = tmp_path / "trajectories.csv"
    rows = np.column_stack([np.arange(200) / 30, pred.reshape(200, -1)])
    header = "time," + ",".join(f"x{i},y{i}" for i in range(1, 5))
    np.savetxt(csv, rows, delimiter=",", header=header, comments="")
    np.testing.assert_allclose(load_predictions(csv), pred)


def test_cli_prints_scores_and_rejects_bad_paths(tmp_path, truth, capsys):
    positions, touching = truth
    np.savez(tmp_path / "ground_truth.npz", positions=positions, touching=touching, body_length=BODY)
    session = _session(tmp_path, positions[:, ::-1])
    assert main(["--truth", str(tmp_path / "ground_truth.npz"), "--pred", str(session), "--json"]) == 0
    scores = json.loads(capsys.readouterr().out)
    assert scores["accuracy"] == 1.0 and scores["mapping"] == {"0": 3, "1": 2, "2": 1, "3": 0}
    assert main(["--truth", str(tmp_path / "ground_truth.npz"), "--pred", str(session)]) == 0
    assert "IDF1" in capsys.readouterr().out
    assert main(["--truth", str(tmp_path / "missing.npz"), "--pred", str(session)]) == 2
    assert main(["--truth", str(tmp_path / "ground_truth.npz"), "--pred", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all(line.startswith("shoal evaluate:") for line in err)


def test_two_predictions_on_one_animal_do_not_flip_flop():
    """Inside a crossing two predicted identities may share a point; the match is kept, not switched."""
    truth = np.zeros((6, 2, 2))
    truth[:, 1] = 100.0
    pred = truth.copy()
    pred[2:5, 0] += 1.0
    pred[2:5, 1] = truth[2:5, 0]  # identity 1 sits on animal 0, even closer than identity 0
    assert identity_switches(truth, pred, radius=5.0) == 0
