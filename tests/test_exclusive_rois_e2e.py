"""End to end: two tanks of two fish, tracked as exclusive arenas through the real services."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from shoal.evaluate import evaluate, load_predictions
from shoal.sim import SimulationConfig, write_simulation

pytestmark = pytest.mark.slow


def test_two_arenas_keep_identities_inside_their_own_arena(tmp_path):
    config = SimulationConfig(n_animals=4, n_frames=400, preset="fish", seed=11, n_arenas=2)
    files = write_simulation(config, tmp_path / "v")
    out = tmp_path / "s"
    rois = [flag for roi in config.arena_rois() for flag in ("--roi", roi)]
    run = subprocess.run([sys.executable, "-m", "shoal.cli", "track", str(files["video"]), "--animals", "4",
                          "--exclusive-rois", *rois, "--out", str(out), "--quiet"],
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr

    session = json.loads((out / "session.json").read_text())
    assert session["regions"] == {"animals_per_region": [2, 2],
                                  "identities": {"region_0": [1, 2], "region_1": [3, 4]}}
    result = np.load(out / "trajectories" / "trajectories.npy", allow_pickle=True).item()
    assert result["identities_groups"] == session["regions"]["identities"]

    truth = np.load(files["ground_truth"])
    pred = load_predictions(out)
    scores = evaluate(truth["positions"], truth["touching"], float(truth["body_length"]), pred)
    print(scores, session["notes"])
    assert scores.accuracy >= 0.99
    # every identity stays in its own arena: predicted identity k of region r matches an animal of arena r
    for predicted, true in scores.mapping.items():
        assert truth["arena"][true] == (0 if predicted < 2 else 1)
    for arena in (0, 1):
        own = slice(2 * arena, 2 * arena + 2)
        xs = pred[:, own, 0]
        assert np.all((xs[np.isfinite(xs)] < 500) == (arena == 0)), "a trajectory left its arena"
        per_arena = evaluate(truth["positions"][:, own], truth["touching"][:, own], float(truth["body_length"]),
                             pred[:, own])
        print(f"arena {arena}: accuracy {per_arena.accuracy:.4f}")
        assert per_arena.accuracy >= 0.99
