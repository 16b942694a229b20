"""The two small networks the identifier trains per video, and the supervised loop they share.

Both start from the idCNN of Romero-Ferrero et al. 2019 (method notes §5.5: three 5×5 conv layers
with 16/64/100 channels, FC 100) but are slimmer: 3×3 convolutions with 8/16/32 channels, batch
normalisation and a 64-unit hidden layer. An image of side 40 then costs ~1 M multiply-adds instead
of ~60 M (16/32/64 channels measured 2.5× slower per step for no gain on our crops), which is what
lets a 4-animal video train in tens of seconds on two CPU cores; batch normalisation makes a few
epochs enough. Pooling before batch normalisation and channels-last tensors make a training step
~3× cheaper on a CPU than the textbook conv-BN-ReLU-pool order (measured: 47 vs 135 ms for 512
crops of 32², one thread). Three 2×2 poolings keep a coarse map of where on the body each mark sits
(the crops are aligned on the body axis), which is what tells look-alike animals apart; global
pooling would throw that away.

Crops of large animals (up to the segmenter's 80 px) are average-pooled to about ``INPUT_SIDE``
before the first convolution: a step costs ∝ side², and on the real clips of large animals the
half-resolution network found the same identities (mice2_homecage: 0.924 either way) while
contrastive learning took 13 s instead of 36 s (mice, 80 px) and 5 s instead of 18 s (spiders).

Input is the uint8 crop, standardised per image (as idtracker.ai ≤ v5 did), so a frame's global
brightness (flicker, lighting drift) does not enter the identity.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

CHANNELS = (8, 16, 32)
HIDDEN = 64
#: crops are average-pooled by a whole factor towards this side (see the module docstring)
INPUT_SIDE = 40
EMBEDDING_DIM = 8  # as idtracker.ai v6 (Torrents et al. 2025, embedding-dimension ablation)
#: Fresh embeddings have distances ~1 while negatives must reach 10: scaling the output starts
#: training near the margins' range instead of spending the first hundreds of steps inflating it.
EMBEDDING_SCALE = 5.0


def pick_device(device: str | None) -> torch.device:
    """"cuda" when present, else "cpu", unless the caller names one."""
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(device)


def standardise(batch: torch.Tensor) -> torch.Tensor:
    """uint8 [b, s, s] -> float [b, 1, s, s], zero mean and unit s.d. per image."""
    x = batch.float().unsqueeze(1)
    mean = x.mean(dim=(2, 3), keepdim=True)
    std = x.std(dim=(2, 3), keepdim=True)
    return (x - mean) / (std + 1e-3)


def rotate_half(batch: torch.Tensor, flip: torch.Tensor) -> torch.Tensor:
    """Rotate by 180° the images where ``flip`` is True: head and tail are not resolved in the crops."""
    return torch.where(flip[:, None, None], torch.flip(batch, dims=(1, 2)), batch)


def input_pooling(image_size: int) -> int:
    """Average-pooling factor that brings a crop near ``INPUT_SIDE`` (1 up to 59 px, 2 from 60 px)."""
    return max(1, round(image_size / INPUT_SIDE))


class ConvTrunk(nn.Module):
    """Optional input pooling, three conv-maxpool-BN-ReLU blocks, then flatten."""

    def __init__(self, image_size: int, pooling: int | None = None):
        super().__init__()
        self.pooling = pooling or input_pooling(image_size)
        # outside ``layers``, so the weights keep their names whatever the pooling
        self.shrink = nn.AvgPool2d(self.pooling) if self.pooling > 1 else nn.Identity()
        layers: list[nn.Module] = []
        side = image_size // self.pooling
        previous = 1
        for channels in CHANNELS:
            layers += [
                nn.Conv2d(previous, channels, 3, padding=1, bias=False),
                nn.MaxPool2d(2),
                nn.BatchNorm2d(channels),
                nn.ReLU(inplace=True),
            ]
            previous = channels
            side //= 2
        self.layers = nn.Sequential(*layers)
        self.n_features = previous * side * side

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(self.shrink(x).contiguous(memory_format=torch.channels_last)).flatten(1)


class IdCNN(nn.Module):
    """Classifier: crossing detector (2 classes) and accumulation identity network (N classes)."""

    def __init__(self, image_size: int, n_classes: int, pooling: int | None = None):
        super().__init__()
        self.trunk = ConvTrunk(image_size, pooling)
        self.head = nn.Sequential(
            nn.Linear(self.trunk.n_features, HIDDEN), nn.ReLU(inplace=True), nn.Linear(HIDDEN, n_classes)
        )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.trunk(standardise(images)))


class EmbeddingNet(nn.Module):
    """Crop -> 8-d embedding for the contrastive route (v6 uses a ResNet18 trunk; see module doc)."""

    def __init__(self, image_size: int, pooling: int | None = None):
        super().__init__()
        self.trunk = ConvTrunk(image_size, pooling)
        self.head = nn.Sequential(
            nn.Linear(self.trunk.n_features, HIDDEN),
            nn.ReLU(inplace=True),
            nn.Linear(HIDDEN, EMBEDDING_DIM, bias=False),
        )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.trunk(standardise(images)))


def read_rows(images: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Rows ``ids`` of the image store, read in ascending order (fast on a memmap), in ``ids`` order."""
    if len(ids) == 0:
        return np.zeros((0,) + images.shape[1:], np.uint8)
    unique, inverse = np.unique(ids, return_inverse=True)
    return np.ascontiguousarray(np.asarray(images[unique])[inverse])


def seeded_model(factory, seed: int, device: torch.device) -> nn.Module:
    """Build a network with weights drawn from ``seed`` without touching the global RNG stream."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = factory()
    return model.to(device, memory_format=torch.channels_last)


@torch.no_grad()
def apply_in_batches(model: nn.Module, images: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
    """Run ``model`` in eval mode over uint8 images (on the model's device); returns CPU float."""
    model.eval()
    device = next(model.parameters()).device
    outputs = [model(images[i : i + batch_size].to(device)).float().cpu() for i in range(0, len(images), batch_size)]
    if not outputs:
        return torch.zeros(0)
    return torch.cat(outputs)


@torch.no_grad()
def predict_probabilities(model: nn.Module, images: torch.Tensor) -> np.ndarray:
    """Softmax averaged over the crop and its 180° rotation (the two possible head directions)."""
    straight = torch.softmax(apply_in_batches(model, images), dim=1)
    turned = torch.softmax(apply_in_batches(model, torch.flip(images, dims=(1, 2))), dim=1)
    return ((straight + turned) / 2).numpy().astype(np.float32)


@dataclass
class TrainingOutcome:
    epochs: int
    val_loss: float
    val_accuracy: float
    diverged: bool
    stop_reason: str


def train_classifier(
    model: nn.Module,
    images: torch.Tensor,
    labels: np.ndarray,
    rng: np.random.Generator,
    *,
    validation_fraction: float = 0.1,
    batch_size: int = 64,
    learning_rate: float = 1e-3,
    max_epochs: int = 60,
    overfitting_limit: int = 5,
    plateau: float = 0.001,
    max_seconds: float = 120.0,
    on_epoch=None,
) -> TrainingOutcome:
    """Train ``model`` in place on uint8 ``images`` with integer ``labels``.

    Validation is ``validation_fraction`` of each class (at least one image). Stopping follows
    idtracker.ai's rule (method notes §5.4) on the validation loss: stop after ``overfitting_limit``
    epochs in a row above the recent trend, on a plateau (change below ``plateau`` × loss), on a
    perfect validation set, or at ``max_epochs`` / ``max_seconds``. The weights of the epoch with the
    lowest validation loss are kept. A NaN loss stops training with ``diverged=True``.
    Each training image is rotated by 180° at random every time it is drawn (instead of doubling
    the set, same expected effect for half the cost).
    """
    device = next(model.parameters()).device
    n_classes = int(labels.max()) + 1
    train_idx, val_idx = [], []
    for c in range(n_classes):
        members = rng.permutation(np.flatnonzero(labels == c))
        n_val = max(1, int(validation_fraction * len(members) + 0.99)) if len(members) > 1 else 0
        val_idx.append(members[:n_val])
        train_idx.append(members[n_val:])
    train_idx = np.concatenate(train_idx)
    val_idx = np.concatenate(val_idx)
    counts = np.bincount(labels[train_idx], minlength=n_classes).astype(np.float64)
    weights = len(train_idx) / (n_classes * np.maximum(counts, 1.0))
    loss_fn = nn.CrossEntropyLoss(weight=torch.tensor(weights, dtype=torch.float32, device=device))

    images = images.to(device)
    all_labels = torch.as_tensor(labels, dtype=torch.long, device=device)
    val_images = torch.cat([images[val_idx], torch.flip(images[val_idx], dims=(1, 2))])
    val_labels = torch.cat([all_labels[val_idx], all_labels[val_idx]])
    optimiser = torch.optim.Adam(model.parameters(), lr=learning_rate)

    history: list[float] = []
    best_loss, best_state, best_accuracy = float("inf"), copy.deepcopy(model.state_dict()), 0.0
    overfitting, reason, started = 0, "epoch limit", time.monotonic()
    epoch = 0
    for epoch in range(1, max_epochs + 1):
        model.train()
        order = rng.permutation(train_idx)
        flips = torch.as_tensor(rng.random(len(order)) < 0.5, device=device)
        for start in range(0, len(order), batch_size):
            batch = torch.as_tensor(order[start : start + batch_size], device=device)
            if len(batch) < 2:
                continue
            x = rotate_half(images[batch], flips[start : start + batch_size])
            loss = loss_fn(model(x), all_labels[batch])
            if not torch.isfinite(loss):
                model.load_state_dict(best_state)
                return TrainingOutcome(epoch, float("nan"), best_accuracy, True, "loss is not finite")
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
        with torch.no_grad():
            logits = apply_in_batches(model, val_images).to(device)
            val_loss = float(loss_fn(logits, val_labels)) if len(val_labels) else 0.0
            accuracy = float((logits.argmax(1) == val_labels).float().mean()) if len(val_labels) else 1.0
        if not np.isfinite(val_loss):
            model.load_state_dict(best_state)
            return TrainingOutcome(epoch, float("nan"), best_accuracy, True, "validation loss is not finite")
        if val_loss < best_loss:
            best_loss, best_accuracy = val_loss, accuracy
            best_state = copy.deepcopy(model.state_dict())
        if on_epoch is not None:
            on_epoch(epoch, val_loss, accuracy)
        history.append(val_loss)
        if accuracy == 1.0 and val_loss < 1e-3:
            reason = "validation set learnt"
            break
        if time.monotonic() - started > max_seconds:
            reason = "time budget"
            break
        if len(history) > 5:
            trend = float(np.mean(history[-6:-1]))
            difference = trend - val_loss
            overfitting = overfitting + 1 if difference < 0 else 0
            if overfitting >= overfitting_limit:
                reason = "overfitting"
                break
            if abs(difference) < plateau * val_loss:
                reason = "plateau"
                break
    model.load_state_dict(best_state)
    return TrainingOutcome(epoch, best_loss, best_accuracy, False, reason)
