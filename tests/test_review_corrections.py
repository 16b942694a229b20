"""The review's correction log (shoal/review/corrections.py), what it writes (outputs.py) and
`shoal evaluate --truth-from-review`."""

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from shoal import evaluate
from shoal.review import outputs
from shoal.review.corrections import (
    CORRECTED_FOLDER,
    CORRECTIONS_FILE,
    CorrectionError,
    CorrectionLog,
    apply_corrections,
)
from shoal.review.outputs import review_truth, write_corrected
from shoal.session import clear_session, load_session, write_session

F, N, W, H = 60, 3, 400, 300
BODY = 20.0
FORMATS = ["npy", "h5", "csv", "csv_tidy", "sleap"]


def true_paths() -> np.ndarray:
    """Three animals in their own lanes (100 px apart, never touching), moving 2 px a frame."""
    x = 20.0 + 2.0 * np.arange(F)
    return np.stack([np.column_stack([x, np.full(F, 50.0 + 100.0 * k)]) for k in range(N)], axis=1)


def make_session(folder: Path, trajectories: np.ndarray | None = None, formats=FORMATS) -> Path:
    traj = true_paths() if trajectories is None else trajectories
    probs = np.linspace(0.5, 1.0, F * N).reshape(F, N, 1)
    probs[10:13, 1] = np.nan  # animal 2 inside a crossing
    write_session(folder, {
        "trajectories": traj, "id_probabilities": probs, "frames_per_second": 25.0, "body_length": BODY,
        "width": W, "height": H, "video_paths": ["/data/a.avi"],
        "session": {"parameters": {"number_of_animals": N, "trajectories_formats": list(formats)},
                    "effective_parameters": {"body_length_px": BODY}, "video": {"fps": 25.0}},
    }, formats=tuple(formats))
    return folder


def digests(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def corrected(folder: Path) -> np.ndarray:
    return np.load(folder / CORRECTED_FOLDER / "trajectories.npy", allow_pickle=True).item()


# --- apply_corrections on plain arrays -------------------------------------------------------------


@pytest.fixture
def arrays():
    rng = np.random.default_rng(3)
    return rng.uniform(0, 100, (F, N, 2)), rng.uniform(0, 1, (F, N, 1))


def test_swap_from_a_frame_exchanges_exactly_those_columns(arrays):
    traj, probs = arrays
    keep = traj.copy(), probs.copy()
    t, p = apply_corrections(traj, probs, [{"op": "swap", "a": 1, "b": 3, "start": 20, "end": None}])
    np.testing.assert_array_equal(t[:20], traj[:20])
    np.testing.assert_array_equal(p[:20], probs[:20])
    np.testing.assert_array_equal(t[20:, 0], traj[20:, 2])
    np.testing.assert_array_equal(t[20:, 2], traj[20:, 0])
    np.testing.assert_array_equal(p[20:, 0], probs[20:, 2])
    np.testing.assert_array_equal(p[20:, 2], probs[20:, 0])
    np.testing.assert_array_equal(t[:, 1], traj[:, 1])
    np.testing.assert_array_equal(traj, keep[0])  # inputs untouched
    np.testing.assert_array_equal(probs, keep[1])


def test_assign_over_a_range_exchanges_the_two_there_only(arrays):
    traj, probs = arrays
    t, p = apply_corrections(traj, probs, [{"op": "assign", "identity": 2, "to": 1, "start": 5, "end": 9}])
    np.testing.assert_array_equal(t[5:9, 0], traj[5:9, 1])
    np.testing.assert_array_equal(t[5:9, 1], traj[5:9, 0])  # nothing is lost: what 1 held goes to 2
    np.testing.assert_array_equal(p[5:9, 0], probs[5:9, 1])
    outside = np.r_[0:5, 9:F]
    np.testing.assert_array_equal(t[outside], traj[outside])
    np.testing.assert_array_equal(t[:, 2], traj[:, 2])


def test_move_sets_a_position_and_delete_makes_it_unknown(arrays):
    traj, probs = arrays
    t, p = apply_corrections(traj, probs, [
        {"op": "move", "identity": 2, "frame": 7, "x": 10.5, "y": 20.0},
        {"op": "delete", "identity": 3, "start": 40, "end": 43},
        {"op": "check", "start": 0, "end": F},
    ])
    np.testing.assert_array_equal(t[7, 1], [10.5, 20.0])
    assert p[7, 1, 0] == probs[7, 1, 0]  # a move keeps the certainty
    assert np.isnan(t[40:43, 2]).all() and np.isnan(p[40:43, 2]).all()
    changed = np.zeros((F, N), bool)
    changed[7, 1] = changed[40:43, 2] = True
    np.testing.assert_array_equal(t[~changed], traj[~changed])
    np.testing.assert_array_equal(p[~changed & ~np.isnan(p[..., 0])], probs[~changed & ~np.isnan(p[..., 0])])


def test_corrections_apply_in_order_and_undone_ones_not_at_all(arrays):
    traj, probs = arrays
    swap = {"id": 1, "op": "swap", "a": 1, "b": 2, "start": 0, "end": None}
    move = {"id": 2, "op": "move", "identity": 1, "frame": 0, "x": 1.0, "y": 1.0}
    t, _ = apply_corrections(traj, probs, [swap, move])
    np.testing.assert_array_equal(t[0, 0], [1.0, 1.0])
    np.testing.assert_array_equal(t[0, 1], traj[0, 0])
    t, _ = apply_corrections(traj, probs, [swap, move, {"id": 3, "op": "undo"}, {"id": 4, "op": "undo"}])
    np.testing.assert_array_equal(t, traj)


# --- the log in a session folder -------------------------------------------------------------------


@pytest.fixture
def session(tmp_path):
    return make_session(tmp_path / "session")


def test_empty_log_without_a_file(session):
    log = CorrectionLog.load(session)
    assert log.active() == [] and not log.can_undo and not log.can_redo and log.checked_ranges() == []
    assert not (session / CORRECTIONS_FILE).exists()
    assert write_corrected(session) is None and not (session / CORRECTED_FOLDER).exists()


def test_every_change_is_saved_at_once_with_id_and_time(session):
    log = CorrectionLog.load(session)
    entry = log.add({"op": "swap", "a": 1, "b": 3, "start": 20, "end": None})
    assert entry["id"] == 1 and entry["time"].endswith("Z") and entry["a"] == 1
    content = json.loads((session / CORRECTIONS_FILE).read_text())
    assert content["version"] == 1 and len(content["trajectories_sha256"]) == 64
    assert content["entries"] == [entry]


def test_write_corrected_writes_every_format_and_leaves_trajectories_alone(session):
    before = digests(session / "trajectories")
    log = CorrectionLog.load(session)
    log.add({"op": "swap", "a": 1, "b": 3, "start": 20, "end": None})
    out = write_corrected(session)
    assert out == session / CORRECTED_FOLDER
    assert digests(session / "trajectories") == before
    assert set(digests(out)) == set(before)  # the same files: every format of the session
    original = load_session(session)["trajectories"]
    fixed = corrected(session)
    np.testing.assert_array_equal(fixed["trajectories"][20:, 0], original[20:, 2])
    np.testing.assert_array_equal(fixed["trajectories"][:20], original[:20])
    table = np.genfromtxt(out / "trajectories_csv" / "trajectories.csv", delimiter=",", skip_header=1)
    np.testing.assert_allclose(table[30, 1:3], original[30, 2], atol=1e-3)
    assert not [p for p in session.iterdir() if p.name.startswith(".")]  # no temporary left


def test_undo_restores_the_previous_corrected_files_exactly_and_redo_reapplies(session):
    log = CorrectionLog.load(session)
    log.add({"op": "swap", "a": 1, "b": 2, "start": 10, "end": 30})
    write_corrected(session)
    first = digests(session / CORRECTED_FOLDER)
    log.add({"op": "delete", "identity": 3, "start": 0, "end": 5})
    write_corrected(session)
    second = digests(session / CORRECTED_FOLDER)
    assert second != first
    undone = log.undo()
    assert undone["op"] == "delete" and log.can_redo
    write_corrected(session)
    assert digests(session / CORRECTED_FOLDER) == first
    log.redo()
    write_corrected(session)
    assert digests(session / CORRECTED_FOLDER) == second
    log.undo()
    log.undo()
    assert write_corrected(session) is None and not (session / CORRECTED_FOLDER).exists()
    with pytest.raises(CorrectionError, match="nothing to undo"):
        log.undo()
    assert [e["op"] for e in CorrectionLog.load(session).entries] == ["swap", "delete", "undo", "redo", "undo", "undo"]


def test_undo_and_redo_work_across_reloads(session):
    log = CorrectionLog.load(session)
    log.add({"op": "move", "identity": 1, "frame": 3, "x": 5, "y": 6})
    log.add({"op": "check", "start": 0, "end": 30})
    log.undo()
    reloaded = CorrectionLog.load(session)
    assert [e["op"] for e in reloaded.active()] == ["move"] and reloaded.can_redo
    reloaded.redo()
    again = CorrectionLog.load(session)
    assert [e["op"] for e in again.active()] == ["move", "check"] and not again.can_redo
    assert again.checked_ranges() == [(0, 30)]


def test_a_new_correction_after_undo_clears_redo(session):
    log = CorrectionLog.load(session)
    log.add({"op": "swap", "a": 1, "b": 2, "start": 0, "end": None})
    log.undo()
    log.add({"op": "delete", "identity": 2, "start": 40, "end": 41})
    assert not log.can_redo
    with pytest.raises(CorrectionError, match="nothing to redo"):
        log.redo()
    assert not CorrectionLog.load(session).can_redo
    assert [e["op"] for e in log.active()] == ["delete"]


def test_nothing_to_undo_or_redo_is_not_recorded(session):
    log = CorrectionLog.load(session)
    with pytest.raises(CorrectionError, match="nothing to undo"):
        log.undo()
    with pytest.raises(CorrectionError, match="nothing to redo"):
        log.add({"op": "redo"})
    assert log.entries == [] and not (session / CORRECTIONS_FILE).exists()


@pytest.mark.parametrize("op, words", [
    ({"op": "swap", "a": 0, "b": 2, "start": 0, "end": None}, "a = 0 is not an identity"),
    ({"op": "swap", "a": 1, "b": N + 1, "start": 0, "end": None}, f"b = {N + 1} is not an identity"),
    ({"op": "swap", "a": 2, "b": 2, "start": 0, "end": None}, "both identity 2"),
    ({"op": "assign", "identity": 1, "to": 2, "start": 10, "end": 10}, "end = 10 must be after start"),
    ({"op": "delete", "identity": 1, "start": 5, "end": F + 1}, "at most"),
    ({"op": "check", "start": -1, "end": 5}, "outside the frames"),
    ({"op": "move", "identity": 1, "frame": F, "x": 1, "y": 1}, "frame = 60 is outside"),
    ({"op": "move", "identity": 1, "frame": 0, "x": W + 1, "y": 1}, "x = 401 is outside the video"),
    ({"op": "move", "identity": 1, "frame": 0, "x": 1, "y": float("nan")}, "y must be finite"),
    ({"op": "move", "identity": True, "frame": 0, "x": 1, "y": 1}, "identity must be a whole number"),
    ({"op": "rename", "identity": 1}, "unknown correction op 'rename'"),
    ({"op": "swap", "a": 1, "b": 2, "start": 0, "end": None, "colour": "red"}, "unknown field"),
    ({"op": "swap", "a": 1, "b": 2}, "missing field"),
    ({"op": "check", "start": 0, "end": 5, "id": 9}, "set by the log"),
    (["swap"], "JSON object"),
])
def test_invalid_corrections_are_refused_and_write_nothing(session, op, words):
    log = CorrectionLog.load(session)
    log.add({"op": "check", "start": 0, "end": 5})
    before = (session / CORRECTIONS_FILE).read_bytes()
    with pytest.raises(CorrectionError, match=words) as caught:
        log.add(op)
    assert "\n" not in str(caught.value)
    assert (session / CORRECTIONS_FILE).read_bytes() == before and len(log.entries) == 1


def test_a_log_for_other_trajectories_is_refused(session):
    CorrectionLog.load(session).add({"op": "swap", "a": 1, "b": 2, "start": 0, "end": None})
    make_session(session, true_paths() + 1.0)  # tracked again
    with pytest.raises(CorrectionError, match=f"{CORRECTIONS_FILE}.*other trajectories.*move it aside"):
        CorrectionLog.load(session)
    with pytest.raises(CorrectionError, match="other trajectories"):
        write_corrected(session)


@pytest.mark.parametrize("text, words", [
    ("{not json", "cannot read"),
    ('{"version": 1}', "no entries list"),
    ("ENTRY", "entry 1: swap: a = 7 is not an identity"),
    ("ID", "entry 1: its id is 5"),
    ("UNDO", "entry 1: undo with nothing to undo"),
])
def test_a_malformed_log_names_the_file_and_entry(session, text, words):
    digest = CorrectionLog.load(session).digest
    entries = {"ENTRY": [{"id": 1, "time": "t", "op": "swap", "a": 7, "b": 1, "start": 0, "end": None}],
               "ID": [{"id": 5, "time": "t", "op": "check", "start": 0, "end": 1}],
               "UNDO": [{"id": 1, "time": "t", "op": "undo"}]}
    if text in entries:
        text = json.dumps({"version": 1, "trajectories_sha256": digest, "entries": entries[text]})
    (session / CORRECTIONS_FILE).write_text(text)
    with pytest.raises(CorrectionError, match=words) as caught:
        CorrectionLog.load(session)
    assert CORRECTIONS_FILE in str(caught.value)


def test_only_checks_leave_no_corrected_folder(session):
    log = CorrectionLog.load(session)
    log.add({"op": "move", "identity": 1, "frame": 0, "x": 1, "y": 1})
    assert write_corrected(session) is not None
    log.undo()
    log.add({"op": "check", "start": 0, "end": 10})
    assert write_corrected(session) is None and not (session / CORRECTED_FOLDER).exists()


def test_nwb_is_left_out_where_pynwb_is_missing(tmp_path, monkeypatch, caplog):
    folder = make_session(tmp_path / "s", formats=["npy", "csv"])
    info = json.loads((folder / "session.json").read_text())
    info["parameters"]["trajectories_formats"] = ["npy", "csv", "nwb"]
    (folder / "session.json").write_text(json.dumps(info))
    monkeypatch.setattr(outputs, "nwb_available", lambda: False)
    CorrectionLog.load(folder).add({"op": "delete", "identity": 1, "start": 0, "end": 1})
    out = write_corrected(folder)
    assert sorted(p.name for p in out.iterdir()) == ["trajectories.npy", "trajectories_csv"]
    assert "nwb" in caplog.text
    assert outputs.corrected_formats(info) == (("npy", "csv"), ("nwb",))


def test_overwrite_clears_corrected_trajectories_but_keeps_the_persons_log(session):
    CorrectionLog.load(session).add({"op": "swap", "a": 1, "b": 2, "start": 0, "end": None})
    write_corrected(session)
    removed = {p.name for p in clear_session(session)}
    assert CORRECTED_FOLDER in removed and "trajectories" in removed
    assert [p.name for p in session.iterdir()] == [CORRECTIONS_FILE]


def test_review_truth_holds_corrected_positions_on_checked_frames_only(session):
    log = CorrectionLog.load(session)
    log.add({"op": "swap", "a": 1, "b": 2, "start": 10, "end": None})
    log.add({"op": "check", "start": 5, "end": 15})
    log.add({"op": "check", "start": 15, "end": 20})
    log.add({"op": "check", "start": 40, "end": 45})
    assert log.checked_ranges() == [(5, 20), (40, 45)]
    positions, touching, body_length = review_truth(session)
    original = load_session(session)["trajectories"]
    assert body_length == BODY and positions.shape == (F, N, 2) and touching.shape == (F, N)
    assert np.isnan(positions[:5]).all() and np.isnan(positions[20:40]).all() and np.isnan(positions[45:]).all()
    np.testing.assert_array_equal(positions[5:10], original[5:10])
    np.testing.assert_array_equal(positions[10:20, 0], original[10:20, 1])
    assert not touching.any()  # 100 px lanes, body length 20


def test_touching_is_within_one_body_length_of_another():
    positions = np.array([[[0, 0], [19, 0], [100, 0]], [[0, 0], [np.nan, np.nan], [21, 0]]], float)
    np.testing.assert_array_equal(outputs.touching_flags(positions, 20.0),
                                  [[True, True, False], [False, False, False]])


def test_review_truth_needs_something_checked(session):
    with pytest.raises(CorrectionError, match=f"no {CORRECTIONS_FILE}"):
        review_truth(session)
    CorrectionLog.load(session).add({"op": "swap", "a": 1, "b": 2, "start": 0, "end": None})
    with pytest.raises(CorrectionError, match="nothing is checked"):
        review_truth(session)


# --- shoal evaluate --truth-from-review ------------------------------------------------------------


def swapped_tracking(tmp_path: Path) -> Path:
    """A tracking that swapped identities 1 and 3 from frame 30 on."""
    wrong = true_paths()
    wrong[30:, [0, 2]] = wrong[30:, [2, 0]]
    return make_session(tmp_path / "tracked", wrong, formats=["npy"])


def run_evaluate(capsys, *argv: str) -> tuple[int, str, str]:
    code = evaluate.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_evaluate_scores_the_uncorrected_tracking_on_checked_frames(tmp_path, capsys):
    folder = swapped_tracking(tmp_path)
    log = CorrectionLog.load(folder)
    log.add({"op": "swap", "a": 1, "b": 3, "start": 30, "end": None})
    log.add({"op": "check", "start": 0, "end": F})
    write_corrected(folder)
    code, out, _ = run_evaluate(capsys, "--pred", str(folder), "--truth-from-review", str(folder), "--json")
    assert code == 0
    scores = json.loads(out)
    assert scores["accuracy"] == pytest.approx(2 / 3)  # identities 1 and 3 are wrong on half the frames
    assert scores["checked_frames"] == F and scores["total_frames"] == F
    code, out, _ = run_evaluate(capsys, "--pred", str(folder), "--truth-from-review", str(folder))
    assert code == 0 and f"checked frames: {F} of {F}" in out and "identity accuracy" in out


def test_evaluate_on_a_part_checked_before_the_swap_is_perfect(tmp_path, capsys):
    folder = swapped_tracking(tmp_path)
    CorrectionLog.load(folder).add({"op": "check", "start": 0, "end": 30})
    code, out, _ = run_evaluate(capsys, "--pred", str(folder), "--truth-from-review", str(folder), "--json")
    scores = json.loads(out)
    assert code == 0 and scores["accuracy"] == 1.0 and scores["idf1"] == 1.0 and scores["n_frames"] == 30
    assert scores["checked_frames"] == 30


def test_evaluate_when_nothing_was_swapped_is_perfect(session, capsys):
    CorrectionLog.load(session).add({"op": "check", "start": 0, "end": F})
    code, out, _ = run_evaluate(capsys, "--pred", str(session), "--truth-from-review", str(session), "--json")
    assert code == 0 and json.loads(out)["accuracy"] == 1.0


def test_evaluate_review_errors_are_one_line(session, capsys):
    code, _, err = run_evaluate(capsys, "--pred", str(session), "--truth-from-review", str(session))
    assert code == 2 and err.count("\n") == 1 and f"no {CORRECTIONS_FILE}" in err
    CorrectionLog.load(session).add({"op": "delete", "identity": 1, "start": 0, "end": 1})
    code, _, err = run_evaluate(capsys, "--pred", str(session), "--truth-from-review", str(session))
    assert code == 2 and err.count("\n") == 1 and "nothing is checked" in err


def test_evaluate_takes_exactly_one_truth(session, capsys):
    for argv in (["--pred", str(session)],
                 ["--pred", str(session), "--truth", "x.npz", "--truth-from-review", str(session)]):
        with pytest.raises(SystemExit) as caught:
            evaluate.main(argv)
        assert caught.value.code == 2
    assert "--truth" in capsys.readouterr().err
