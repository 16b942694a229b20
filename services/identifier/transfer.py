"""Knowledge transfer: keep a session's identity network, start a later session from it, and name
the new identities after the earlier ones.

Starting from the earlier weights spares most of the training when the animals look the same (the
trunk has already learnt where marks sit on an aligned body). Naming is separate from training:
the new identities are matched one to one to the earlier model's outputs by Hungarian assignment on
how often the earlier model, run on this video's fragment images, names each new identity. The
share of images it names correctly under that matching is the *matching score*: near 1 for the same
individuals, near 1/N for strangers. File format: :mod:`shoal.knowledge`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from services.identifier import accumulation, contrastive
from services.identifier.networks import EmbeddingNet, IdCNN, input_pooling, read_rows
from shoal import __version__
from shoal.knowledge import decode_model, encode_model

CONTRASTIVE, CLASSIFIER = "contrastive embedding", "classifier"


@dataclass
class Transferred:
    """An earlier session's identity model, ready to run."""

    kind: str  # CONTRASTIVE (embedding + centres) or CLASSIFIER (outputs are identities)
    model: EmbeddingNet | IdCNN
    centres: torch.Tensor | None  # [N, 8] for CONTRASTIVE
    crop_side: int
    n_animals: int


def model_file(kind: str, model: EmbeddingNet | IdCNN, centres: torch.Tensor | None, n_animals: int,
               crop_side: int) -> np.ndarray:
    """Bytes of the model file (float32 weights, about 0.5 MB for 40 px crops)."""
    arrays = {f"weights/{name}": value.detach().cpu().numpy() for name, value in model.state_dict().items()}
    if centres is not None:
        arrays["centres"] = centres.detach().cpu().numpy().astype(np.float32)
    meta = {"kind": kind, "crop_side": int(crop_side), "n_animals": int(n_animals), "version": __version__,
            "input_pooling": model.trunk.pooling}
    return encode_model(meta, arrays)


def load(data: np.ndarray, device: torch.device) -> Transferred:
    """The model of a model file's bytes, on ``device``."""
    meta, arrays = decode_model(data)
    side, n = int(meta["crop_side"]), int(meta["n_animals"])
    pooling = int(meta.get("input_pooling", 1))  # models written before input pooling saw whole crops
    model = EmbeddingNet(side, pooling) if meta["kind"] == CONTRASTIVE else IdCNN(side, n, pooling)
    state = {name.removeprefix("weights/"): torch.from_numpy(value) for name, value in arrays.items()
             if name.startswith("weights/")}
    model.load_state_dict(state)
    centres = torch.from_numpy(arrays["centres"]) if "centres" in arrays else None
    return Transferred(meta["kind"], model.to(device), centres, side, n)


def initial_state(earlier: Transferred | None, kind: str) -> dict[str, torch.Tensor] | None:
    """Weights a new network of ``kind`` starts from: all of them for the same kind and input
    pooling, else the trunk's, whose shapes depend on neither (a model written before large crops
    were pooled has a head of another input size)."""
    if earlier is None:
        return None
    state = earlier.model.state_dict()
    if earlier.kind == kind and earlier.model.trunk.pooling == input_pooling(earlier.crop_side):
        return state
    return {name: value for name, value in state.items() if name.startswith("trunk.")}


def predict(earlier: Transferred, images: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """float32 [len(ids), N]: the earlier model's identity probabilities for images ``ids``."""
    if earlier.kind == CLASSIFIER:
        return accumulation.predict_images(earlier.model, images, ids)
    out = np.zeros((len(ids), earlier.n_animals), np.float32)
    for start in range(0, len(ids), accumulation.PREDICTION_CHUNK):
        rows = torch.from_numpy(read_rows(images, ids[start : start + accumulation.PREDICTION_CHUNK]))
        out[start : start + len(rows)] = contrastive.embedding_probabilities(earlier.model, earlier.centres, rows)
    return out


def match_identities(new: np.ndarray, earlier: np.ndarray) -> tuple[np.ndarray, float]:
    """(order, score): new column ``order[k]`` is the earlier identity k.

    Both are per-image probabilities [n, N]; images vote with their most likely identity on each
    side, and the one-to-one matching maximises the images on which both agree. ``score`` is that
    share of images (NaN when there are none).
    """
    n = new.shape[1]
    if len(new) == 0:
        return np.arange(n), float("nan")
    votes = np.zeros((n, n))
    np.add.at(votes, (np.argmax(new, axis=1), np.argmax(earlier, axis=1)), 1.0)
    rows, cols = linear_sum_assignment(-votes)
    order = np.empty(n, np.int64)
    order[cols] = rows
    return order, float(votes[rows, cols].sum() / len(new))


def permuted(kind: str, model: EmbeddingNet | IdCNN, centres: torch.Tensor | None,
             order: np.ndarray) -> tuple[EmbeddingNet | IdCNN, torch.Tensor | None]:
    """The model renamed so that its output k is its former output ``order[k]``."""
    index = torch.as_tensor(order, dtype=torch.long)
    if kind == CONTRASTIVE:
        return model, centres[index]
    last = model.head[-1]
    with torch.no_grad():
        last.weight.copy_(last.weight[index.to(last.weight.device)].clone())
        last.bias.copy_(last.bias[index.to(last.bias.device)].clone())
    return model, centres
