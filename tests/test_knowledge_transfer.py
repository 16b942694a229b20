"""Knowledge transfer: a session keeps its identity model; a later session of the same animals starts
from it and numbers its identities the same way."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from services.identifier.transfer import match_identities
from services.segmenter.work import probe
from shoal.evaluate import evaluate, load_predictions
from shoal.knowledge import MODEL_FILE, encode_model, model_info
from shoal.params import ParamError, TrackingParams
from shoal.sim import SimulationConfig, write_simulation
from shoal.video import probe_video


def _shoal(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "shoal.cli", *args], capture_output=True, text=True, timeout=600)


def test_matching_names_new_identities_after_the_earlier_model():
    rng = np.random.default_rng(0)
    truth = rng.integers(0, 4, 1000)
    earlier = np.eye(4)[truth] + rng.random((1000, 4)) * 0.2
    renamed = np.array([2, 0, 3, 1])  # new identity of each earlier one
    new = np.eye(4)[renamed[truth]]
    new[:100] = np.eye(4)[rng.integers(0, 4, 100)]  # some images the new model gets wrong
    order, score = match_identities(new, earlier)
    assert order.tolist() == renamed.tolist()  # new column order[k] is earlier identity k
    assert np.array_equal(np.argmax(new[:, order][100:], axis=1), truth[100:])
    assert 0.9 <= score < 1.0
    strangers = np.eye(4)[rng.integers(0, 4, 1000)]
    assert match_identities(strangers, earlier)[1] < 0.4


def test_a_model_of_another_image_size_is_refused_naming_both_sizes(tmp_path):
    files = write_simulation(SimulationConfig(n_animals=3, n_frames=60, seed=1), tmp_path / "v")
    earlier = tmp_path / "earlier"
    earlier.mkdir()
    (earlier / MODEL_FILE).write_bytes(encode_model({"kind": "classifier", "crop_side": 12, "n_animals": 3,
                                                     "version": "0"}, {}).tobytes())
    params = TrackingParams(video_paths=[str(files["video"])], number_of_animals=3, intensity_ths=(0, 120),
                            knowledge_transfer_folder=str(earlier)).validate()
    with pytest.raises(ParamError, match=r"knowledge_transfer_folder: .* are 12 px, this video's are \d+ px; "
                                         r"set id_image_size = 12") as err:
        probe(probe_video(params.video_paths), params, tmp_path)
    assert err.value.field == "knowledge_transfer_folder"
    run = _shoal("track", str(files["video"]), "--animals", "4", "--knowledge-from", str(earlier), "--out",
                 str(tmp_path / "s"))
    assert run.returncode == 2 and "knowledge_transfer_folder: the earlier session has 3 animals" in run.stderr
    run = _shoal("track", str(files["video"]), "--animals", "3", "--knowledge-from", str(tmp_path))
    assert run.returncode == 2 and f"knowledge_transfer_folder: no identity model at {tmp_path}" in run.stderr


def _same_animal_fraction(truth: np.lib.npyio.NpzFile, pred: np.ndarray, animal_of: dict[int, int]) -> float:
    """Share of animal-frames outside crossings where identity k sits on the animal it was earlier."""
    radius = float(truth["body_length"]) / 2
    hits = total = 0
    for k, animal in animal_of.items():
        visible = ~truth["touching"][:, animal] & np.isfinite(pred[:, k, 0])
        distance = np.hypot(*(pred[visible, k] - truth["positions"][visible, animal]).T)
        hits += int((distance < radius).sum())
        total += int(visible.sum())
    return hits / total


@pytest.mark.slow
def test_second_session_names_the_same_animals_the_same(tmp_path):
    videos = {name: write_simulation(SimulationConfig(n_animals=4, n_frames=450, seed=seed, marking_seed=21),
                                     tmp_path / name) for name, seed in (("first", 21), ("second", 22))}
    first, second = tmp_path / "first_session", tmp_path / "second_session"
    run = _shoal("track", str(videos["first"]["video"]), "--animals", "4", "--out", str(first), "--quiet")
    assert run.returncode == 0, run.stderr
    info = model_info(first)
    assert info["n_animals"] == 4 and (first / MODEL_FILE).stat().st_size < 2_000_000
    run = _shoal("track", str(videos["second"]["video"]), "--animals", "4", "--knowledge-from", str(first),
                 "--out", str(second), "--quiet")
    assert run.returncode == 0, run.stderr
    assert "knowledge transfer: identities named after the earlier session's (matching score" in run.stdout

    session = json.loads((second / "session.json").read_text())
    score = session["knowledge_transfer"]["matching_score"]
    assert session["knowledge_transfer"]["from"] == str(first) and score >= 0.9
    truths = {name: np.load(files["ground_truth"]) for name, files in videos.items()}
    scores = {name: evaluate(t["positions"], t["touching"], float(t["body_length"]), load_predictions(s))
              for (name, t), s in zip(truths.items(), (first, second), strict=True)}
    print(scores, session["notes"])
    assert scores["first"].accuracy >= 0.99 and scores["second"].accuracy >= 0.99
    fraction = _same_animal_fraction(truths["second"], load_predictions(second), scores["first"].mapping)
    print(f"matching score {score:.4f}; identity k on the same animal as in the first session: {fraction:.4f}")
    assert fraction >= 0.99
    assert Path(second / MODEL_FILE).exists()


def test_a_model_written_before_input_pooling_still_loads_and_lends_its_trunk():
    """A model of 80 px crops written before the identifier pooled large crops (its header has no
    ``input_pooling``) saw whole crops: it still loads and predicts, and a new network, which pools,
    starts from its trunk (the head's input size differs) instead of failing on mismatched shapes."""
    import torch

    from services.identifier import transfer
    from services.identifier.networks import EmbeddingNet

    old = EmbeddingNet(80, pooling=1)
    arrays = {f"weights/{name}": value.numpy() for name, value in old.state_dict().items()}
    data = encode_model({"kind": transfer.CONTRASTIVE, "crop_side": 80, "n_animals": 2, "version": "0"},
                        arrays | {"centres": np.eye(2, 8, dtype=np.float32)})
    earlier = transfer.load(data, torch.device("cpu"))
    images = np.random.default_rng(0).integers(0, 255, (5, 80, 80), dtype=np.uint8)
    assert transfer.predict(earlier, images, np.arange(5)).shape == (5, 2)
    state = transfer.initial_state(earlier, transfer.CONTRASTIVE)
    assert state and all(name.startswith("trunk.") for name in state)
    new = EmbeddingNet(80)
    new.load_state_dict(state, strict=False)
    assert new.trunk.pooling == 2
    assert torch.equal(new.trunk.layers[0].weight, old.trunk.layers[0].weight)
