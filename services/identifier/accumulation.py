"""Accumulation: the classic identity-learning route (Romero-Ferrero et al. 2019; method notes §5.3).

An N-way classifier is trained on fragments whose identities are known (first the N fragments of
one global fragment), predicts the fragments of other global fragments, and the assignments that
are certain, unique within the global fragment and consistent with every coexisting fragment
join the training set; repeat until ~all images in global fragments are accepted or nothing more
is acceptable. When no whole global fragment is acceptable, single fragments are accepted once
most of their coexisting fragments are known ("partial accumulation"). Each step trains on at most
``MAX_IMAGES_PER_ANIMAL`` images per identity, so cost grows with N, not with video length.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from services.identifier.contrastive import coexisting_pairs
from services.identifier.networks import IdCNN, predict_probabilities, read_rows, seeded_model, train_classifier
from shoal.identity_requests import Progress
from shoal.votes import certainty, fragment_votes, p1_from_votes

MAX_IMAGES_PER_ANIMAL = 3000
RATIO_NEW = 0.4  # share of a capped training set reserved for newly accepted fragments (v5)
CERTAINTY_THRESHOLD = 0.1
EARLY_STOP_RATIO = 0.999
MIN_RATIO_FOR_PARTIAL = 0.5
VOTING_IMAGES_PER_FRAGMENT = 200  # enough votes for a base-2 P1 to be decisive; bounds prediction cost
PREDICTION_CHUNK = 20000


@dataclass
class Fragments:
    """The fragment structure of an IdentityRequest, with coexistence and global fragments."""

    offsets: np.ndarray
    ids: np.ndarray
    frames: np.ndarray
    global_fragments: np.ndarray
    neighbours: list[np.ndarray] = field(repr=False)

    @classmethod
    def build(cls, offsets, ids, frames, global_fragments, n_animals: int) -> Fragments:
        offsets = np.asarray(offsets, np.int64)
        frames = np.asarray(frames, np.int64).reshape(-1, 2)
        pairs = coexisting_pairs(frames)
        both = np.r_[pairs, pairs[:, ::-1]]
        both = both[np.lexsort((both[:, 1], both[:, 0]))]
        split = np.searchsorted(both[:, 0], np.arange(len(frames) + 1))
        neighbours = [both[split[f] : split[f + 1], 1] for f in range(len(frames))]
        gfs = np.asarray(global_fragments, np.int64).reshape(-1, n_animals)
        return cls(offsets, np.asarray(ids, np.int64), frames, gfs, neighbours)

    @property
    def n_images(self) -> np.ndarray:
        return np.diff(self.offsets)

    def images_of(self, f: int) -> np.ndarray:
        return self.ids[self.offsets[f] : self.offsets[f + 1]]

    def accumulable(self) -> np.ndarray:
        """Fragments that belong to some global fragment."""
        return np.unique(self.global_fragments)

    def best_global_fragment(self) -> int:
        """Index of the global fragment whose shortest fragment is longest.

        idtracker.ai takes the one whose animals travelled most (most varied images); image count is
        the proxy we can compute from a request.
        """
        return int(np.argmax(self.n_images[self.global_fragments].min(1)))

    def accumulation_order(self, first: int) -> np.ndarray:
        """Global fragments by distance in time from ``first`` (accumulate outwards)."""
        core = self.frames[self.global_fragments, 0].max(1)
        return np.argsort(np.abs(core - core[first]), kind="stable")


def fragment_statistics(probabilities: np.ndarray, offsets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """P1 and certainty per fragment from per-image probabilities (notes §5.1, via shoal.votes)."""
    counts, medians = fragment_votes(probabilities, offsets)
    p1 = p1_from_votes(counts)
    return p1, certainty(p1, medians)


def accept_identities(
    identity: np.ndarray, p1: np.ndarray, sure: np.ndarray, fragments: Fragments, order: np.ndarray
) -> np.ndarray:
    """One acceptance round: returns ``identity`` (−1 = unknown) with newly acceptable fragments set.

    Global strategy: a global fragment is accepted when all its unknown fragments are certain
    (``sure``) and a greedy highest-P1-first assignment gives each a significant identity
    (P1 ≥ 1/n_images) that no coexisting known fragment holds, using each identity once. If no
    global fragment is accepted and at least ``MIN_RATIO_FOR_PARTIAL`` of accumulable images are
    known, single certain fragments with at least half their coexisting fragments known are
    accepted the same way (partial accumulation).
    """
    identity = identity.copy()
    n_images = fragments.n_images
    accepted_global = False
    for g in order:
        members = fragments.global_fragments[g]
        new = members[identity[members] < 0]
        if len(new) == 0 or not sure[new].all():
            continue
        scores = p1[new].copy()
        scores[:, identity[members][identity[members] >= 0]] = 0
        proposal = {}
        for _ in range(len(new)):
            row, column = np.unravel_index(np.argmax(scores), scores.shape)
            f = int(new[row])
            if scores[row, column] < 1.0 / n_images[f] or np.any(identity[fragments.neighbours[f]] == column):
                break
            proposal[f] = int(column)
            scores[row, :] = 0
            scores[:, column] = 0
        if len(proposal) == len(new):
            for f, c in proposal.items():
                identity[f] = c
            accepted_global = True
    if accepted_global:
        return identity
    accumulable = fragments.accumulable()
    if accumulation_ratio(identity, fragments) < MIN_RATIO_FOR_PARTIAL:
        return identity
    candidates = accumulable[(identity[accumulable] < 0) & sure[accumulable]]
    candidates = candidates[np.argsort(-p1[candidates].max(1), kind="stable")]
    for f in candidates:
        known = identity[fragments.neighbours[f]]
        if len(known) and np.mean(known >= 0) < 0.5:
            continue
        scores = p1[f].copy()
        scores[known[known >= 0]] = 0
        column = int(np.argmax(scores))
        if scores[column] >= 1.0 / n_images[f]:
            identity[f] = column
    return identity


def accumulation_ratio(identity: np.ndarray, fragments: Fragments) -> float:
    """Images of known fragments over images of accumulable fragments."""
    accumulable = fragments.accumulable()
    total = fragments.n_images[accumulable].sum()
    if total == 0:
        return float("nan")
    return float(fragments.n_images[accumulable][identity[accumulable] >= 0].sum() / total)


@dataclass
class AccumulationResult:
    model: IdCNN
    identity: np.ndarray  # per fragment, −1 where never accepted
    ratio: float
    steps: int
    notes: list[str]


def training_set(
    identity: np.ndarray, previous: np.ndarray, fragments: Fragments, n_animals: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Image ids and labels, at most MAX_IMAGES_PER_ANIMAL per identity, favouring new fragments."""
    ids, labels = [], []
    for animal in range(n_animals):
        new = [fragments.images_of(f) for f in np.flatnonzero((identity == animal) & (previous != animal))]
        old = [fragments.images_of(f) for f in np.flatnonzero((identity == animal) & (previous == animal))]
        new = np.concatenate(new) if new else np.zeros(0, np.int64)
        old = np.concatenate(old) if old else np.zeros(0, np.int64)
        if len(new) + len(old) > MAX_IMAGES_PER_ANIMAL:
            n_new = min(len(new), max(int(RATIO_NEW * MAX_IMAGES_PER_ANIMAL), MAX_IMAGES_PER_ANIMAL - len(old)))
            n_old = min(len(old), MAX_IMAGES_PER_ANIMAL - n_new)
            new = rng.choice(new, n_new, replace=False)
            old = rng.choice(old, n_old, replace=False)
        chosen = np.r_[new, old]
        ids.append(chosen)
        labels.append(np.full(len(chosen), animal, np.int64))
    return np.concatenate(ids), np.concatenate(labels)


def predict_images(model: IdCNN, images: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Per-image class probabilities for ``ids`` of the store, reading it in bounded chunks."""
    n_classes = model.head[-1].out_features
    out = np.zeros((len(ids), n_classes), np.float32)
    for start in range(0, len(ids), PREDICTION_CHUNK):
        rows = torch.from_numpy(read_rows(images, ids[start : start + PREDICTION_CHUNK]))
        out[start : start + PREDICTION_CHUNK] = predict_probabilities(model, rows)
    return out


def accumulate(
    images: np.ndarray,
    fragments: Fragments,
    n_animals: int,
    seed_identity: np.ndarray,
    rng: np.random.Generator,
    seed: int,
    device: torch.device,
    progress: Progress | None = None,
    first_global_fragment: int | None = None,
    init_state: dict[str, torch.Tensor] | None = None,
) -> AccumulationResult:
    """Run accumulation from ``seed_identity`` (per fragment, −1 = unknown; every identity must occur).

    ``init_state`` (knowledge transfer) replaces the seeded initial weights it names.
    """
    identity = seed_identity.copy()
    previous = np.full_like(identity, -1)
    model = seeded_model(lambda: IdCNN(images.shape[1], n_animals), seed, device)
    if init_state:
        model.load_state_dict(init_state, strict=False)
    first = first_global_fragment if first_global_fragment is not None else fragments.best_global_fragment()
    order = fragments.accumulation_order(first) if len(fragments.global_fragments) else np.zeros(0, np.int64)
    notes: list[str] = []
    step = 0
    ratio = accumulation_ratio(identity, fragments)
    while True:
        ids, labels = training_set(identity, previous, fragments, n_animals, rng)
        train_images = torch.from_numpy(read_rows(images, ids))
        outcome = train_classifier(model, train_images, labels, rng, max_epochs=40,
                                   overfitting_limit=10 if step == 0 else 5)
        step += 1
        if outcome.diverged:
            notes.append(f"accumulation step {step}: training diverged ({outcome.stop_reason})")
            break
        previous = identity.copy()
        ratio = accumulation_ratio(identity, fragments)
        if progress is not None:
            progress("accumulation", min(ratio, 1.0) if np.isfinite(ratio) else 0.0,
                     {"loss": outcome.val_loss, "accuracy": outcome.val_accuracy, "ratio_accumulated": ratio})
        if not np.isfinite(ratio) or ratio > EARLY_STOP_RATIO:
            break
        unknown = fragments.accumulable()
        unknown = unknown[identity[unknown] < 0]
        p1 = np.zeros((len(identity), n_animals))
        sure = np.zeros(len(identity), bool)
        if len(unknown):
            voting = [fragments.images_of(f)[:: max(1, fragments.n_images[f] // VOTING_IMAGES_PER_FRAGMENT)]
                      for f in unknown]
            offsets = np.r_[0, np.cumsum([len(v) for v in voting])]
            p1_unknown, certainty_unknown = fragment_statistics(
                predict_images(model, images, np.concatenate(voting)), offsets)
            p1[unknown] = p1_unknown
            sure[unknown] = certainty_unknown >= CERTAINTY_THRESHOLD
        identity = accept_identities(identity, p1, sure, fragments, order)
        if np.array_equal(identity, previous):
            break
    notes.append(f"accumulation: {step} steps, ratio accumulated {ratio:.3f}")
    return AccumulationResult(model, identity, ratio, step, notes)
