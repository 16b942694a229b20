"""Crossing detector: a per-video CNN that tells one-animal crops from crops of touching animals.

Trained on the sure labels the assembler derives from the overlap graph and the area model, then
applied to the unsure blobs (method notes §3.4, Romero-Ferrero et al. 2019 "deep crossing
detector"). Too few examples, or a diverging training, make the caller fall back to the area rule.
"""

from __future__ import annotations

import numpy as np
import torch

from services.identifier.networks import (
    IdCNN,
    pick_device,
    predict_probabilities,
    read_rows,
    seeded_model,
    train_classifier,
)
from shoal.identity_requests import CrossingReply, CrossingRequest

MIN_EXAMPLES_PER_CLASS = 10
MAX_EXAMPLES_PER_CLASS = 3000


def train_and_classify(images: np.ndarray, request: CrossingRequest, device: str | None = None) -> CrossingReply:
    """Train on ``request.train_ids``/``train_labels`` (1 = crossing) and classify ``predict_ids``.

    ``images`` is the job's image store, uint8 [n_images, s, s] (a memmap is fine: only the rows
    needed are read).
    """
    n_predict = len(request.predict_ids)
    labels = np.asarray(request.train_labels).astype(np.int64)
    counts = np.bincount(labels, minlength=2)
    if counts.min() < MIN_EXAMPLES_PER_CLASS:
        return CrossingReply(
            np.zeros(n_predict, np.float32),
            trained=False,
            note=f"too few examples to train ({counts[0]} individuals, {counts[1]} crossings; "
            f"need {MIN_EXAMPLES_PER_CLASS} of each)",
        )
    rng = np.random.default_rng(request.seed)
    chosen = np.concatenate(
        [rng.permutation(np.flatnonzero(labels == c))[:MAX_EXAMPLES_PER_CLASS] for c in (0, 1)]
    )
    chosen.sort()
    train_ids = np.asarray(request.train_ids)[chosen]
    torch_device = pick_device(device)
    train_images = torch.from_numpy(read_rows(images, train_ids))
    model = seeded_model(lambda: IdCNN(images.shape[1], 2), request.seed, torch_device)
    outcome = train_classifier(model, train_images, labels[chosen], rng, max_epochs=30, overfitting_limit=5)
    if outcome.diverged:
        note = f"training diverged: {outcome.stop_reason}"
        return CrossingReply(np.zeros(n_predict, np.float32), trained=False, note=note)
    predict_images = torch.from_numpy(read_rows(images, np.asarray(request.predict_ids)))
    probability = predict_probabilities(model, predict_images)[:, 1] if n_predict else np.zeros(0, np.float32)
    note = (
        f"{outcome.epochs} epochs ({outcome.stop_reason}), validation accuracy {outcome.val_accuracy:.3f} "
        f"on {len(chosen)} examples"
    )
    return CrossingReply(probability.astype(np.float32), trained=True, note=note)

