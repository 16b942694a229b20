"""Contrastive identity learning (idtracker.ai v6, Torrents et al. 2025; method notes §5.2).

Every image of a fragment shows one animal and two coexisting fragments show two different
animals. An embedding network is trained on pairs drawn from that knowledge alone — positives
(two images of one fragment) pulled within distance 1, negatives (images of two coexisting
fragments) pushed beyond 10, with squared hinge losses — so no global fragment is needed. The
embeddings of a sample are clustered with k-means (k = N); the mean silhouette tells how well the
animals separate (0.91 matched < 1 % per-image error in the paper). Training stops when the
clusters agree with the fragments (:func:`fragment_agreement`, our addition: usually far sooner),
when the silhouette passes the target and stops improving, when it stops improving for
``patience`` checks, or when the step or time budget ends: the video, not a fixed epoch count,
decides how long to train. (The agreement may sit near its starting level for 600 steps and
then rise to the target within 500 more, as on the 1000-frame 4-fish benchmark case, so its pace
early on says little about where it will end.)
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from services.identifier.networks import EmbeddingNet, apply_in_batches, rotate_half, seeded_model
from shoal.identity_requests import Progress

POSITIVE_MARGIN = 1.0
NEGATIVE_MARGIN = 10.0
SILHOUETTE_TARGET = 0.91
#: a loss below this share of the first check's means the training pairs meet their margins: the
#: hinge losses then give no gradient, and more steps only memorise (few fragments, large crops)
LOSS_FIT = 0.01
MIN_FRAGMENT_IMAGES = 4  # "long" fragments, as v6
#: up to this many animals a step takes half the pairs (see :func:`pairs_per_step`)
SMALL_GROUP = 6


def pairs_per_step(n_animals: int) -> int:
    """Pairs of each kind per training step: 64 for up to ``SMALL_GROUP`` animals, else 128.

    A few animals make few kinds of pair. Measured (2-core machine, 2026-12-02) on every case of
    2 to 6 animals at hand — 4 real clips, 4 fish, 6 flies, 5 fish without a global fragment —
    half the pairs at twice the learning rate reached agreement in about as many steps of half the
    cost, with the same identities; 8 fish in a school took 1.6× the steps, 20 fish ran to the
    step budget, so larger groups keep 128.
    """
    return 64 if n_animals <= SMALL_GROUP else 128


@dataclass
class ContrastiveSettings:
    pairs_per_step: int = 0  # of each kind; 0 -> pairs_per_step(N) (v6 draws 400 on a GPU)
    learning_rate: float = 2e-3  # at 128 pairs; scaled by 128 / pairs (smaller batches, bigger steps)
    check_every: int = 0  # steps between silhouette checks; 0 -> 20 + 2·N
    patience: int = 10  # checks without improvement before giving up
    max_steps: int = 3000
    max_seconds: float = 600.0  # safety net only; runs that hit it are not reproducible
    sample_per_animal: int = 300  # images per animal in the silhouette sample
    loss_decay: float = 0.98
    agreement_target: float = 0.995  # see fragment_agreement


@dataclass
class ContrastiveResult:
    model: EmbeddingNet
    centres: torch.Tensor  # [N, 8] k-means centres on the best checkpoint's embeddings
    silhouette: float
    steps: int
    stop_reason: str
    history: list[tuple[int, float, float]] = field(default_factory=list)  # (step, loss, silhouette)


def coexisting_pairs(fragment_frames: np.ndarray) -> np.ndarray:
    """All pairs (a, b), a < b, of fragments whose frame ranges [start, end) intersect."""
    frames = np.asarray(fragment_frames, np.int64).reshape(-1, 2)
    order = np.argsort(frames[:, 0], kind="stable")
    starts, ends = frames[order, 0], frames[order, 1]
    # fragments sorted by start: j > i coexists with i iff start_j < end_i
    last = np.searchsorted(starts, ends, side="left")
    counts = np.maximum(last - np.arange(len(order)) - 1, 0)
    first = np.repeat(np.arange(len(order)), counts)
    offsets = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
    second = first + 1 + offsets
    pairs = np.stack([order[first], order[second]], axis=1)
    return np.sort(pairs, axis=1)


def kmeans(
    points: torch.Tensor, k: int, rng: np.random.Generator, init: torch.Tensor | None = None,
    n_init: int = 4, iterations: int = 100,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Lloyd's k-means, keeping the lowest-inertia run among ``init`` (if given) and ``n_init``
    k-means++ starts (v6 retries k-means++ when a global-fragment start is poor)."""
    best: tuple[float, torch.Tensor, torch.Tensor] | None = None
    starts = ([init] if init is not None else []) + [_kmeans_plus_plus(points, k, rng) for _ in range(n_init)]
    for centres in starts:
        centres = centres.clone()
        for _ in range(iterations):
            labels = torch.cdist(points, centres).argmin(1)
            sums = torch.zeros_like(centres).index_add_(0, labels, points)
            sizes = torch.bincount(labels, minlength=k).unsqueeze(1)
            moved = torch.where(sizes > 0, sums / sizes.clamp(min=1), centres)
            if torch.allclose(moved, centres):
                break
            centres = moved
        distances = torch.cdist(points, centres)
        labels = distances.argmin(1)
        inertia = float(distances.min(1).values.square().sum())
        if best is None or inertia < best[0]:
            best = (inertia, centres, labels)
    return best[1], best[2]


def _kmeans_plus_plus(points: torch.Tensor, k: int, rng: np.random.Generator) -> torch.Tensor:
    chosen = [int(rng.integers(len(points)))]
    nearest = torch.cdist(points, points[chosen]).square().min(1).values
    for _ in range(1, k):
        weights = nearest.double().cpu().numpy()
        total = weights.sum()
        pick = int(rng.choice(len(points), p=weights / total)) if total > 0 else int(rng.integers(len(points)))
        chosen.append(pick)
        nearest = torch.minimum(nearest, torch.cdist(points, points[[pick]]).square().squeeze(1))
    return points[chosen].clone()


def silhouette(points: torch.Tensor, labels: torch.Tensor, k: int) -> float:
    """Mean silhouette score (Rousseeuw 1987): (b − a) / max(a, b) per point, 0 in singleton clusters."""
    one_hot = torch.nn.functional.one_hot(labels, k).to(points.dtype)
    sizes = one_hot.sum(0)
    totals = torch.zeros(len(points), k, dtype=points.dtype, device=points.device)
    for start in range(0, len(points), 2048):
        totals[start : start + 2048] = torch.cdist(points[start : start + 2048], points) @ one_hot
    own = sizes[labels]
    a = totals.gather(1, labels[:, None]).squeeze(1) / (own - 1).clamp(min=1)
    mean_to = totals / sizes.clamp(min=1)
    mean_to[:, sizes == 0] = float("inf")
    mean_to.scatter_(1, labels[:, None], float("inf"))
    b = mean_to.min(1).values
    score = (b - a) / torch.maximum(a, b).clamp(min=1e-12)
    score = torch.where((own > 1) & torch.isfinite(b), score, torch.zeros_like(score))
    return float(score.mean())


def fragment_agreement(labels: np.ndarray, fragment: np.ndarray, negative_pairs: np.ndarray, k: int) -> float:
    """How far a clustering of sampled images agrees with what the fragments say, in [0, 1].

    The product of two shares, both known without ground truth: the images that fall in their
    fragment's majority cluster (one fragment is one animal), and the sampled coexisting fragment
    pairs whose majority clusters differ (two coexisting fragments are two animals). A degenerate
    clustering fails the second, a noisy one the first. Above ~0.995 per-image errors are rarer than
    the fragment votes need, so further training buys nothing: the video, not a fixed budget, says
    when to stop (it typically comes long before the silhouette target).
    """
    n_fragments = int(max(fragment.max(initial=-1), negative_pairs.max(initial=-1))) + 1
    counts = np.zeros((n_fragments, k))
    np.add.at(counts, (fragment, labels), 1)
    present = counts.sum(1) > 0
    purity = counts.max(1)[present].sum() / max(counts[present].sum(), 1)
    majority = counts.argmax(1)
    seen = negative_pairs[present[negative_pairs].all(1)]
    if len(seen) == 0:
        return 0.0
    separated = np.mean(majority[seen[:, 0]] != majority[seen[:, 1]])
    return float(purity * separated)


def distances_to_probabilities(distances: torch.Tensor) -> np.ndarray:
    """v6 pseudo-probabilities: p_k ∝ (d_k + 0.01)^−7, normalised per image."""
    weights = (distances.double() + 0.01).pow(-7)
    return (weights / weights.sum(1, keepdim=True)).float().numpy()


def train_contrastive(
    images: torch.Tensor,
    fragments: list[np.ndarray],
    negative_pairs: np.ndarray,
    n_animals: int,
    rng: np.random.Generator,
    seed: int,
    device: torch.device,
    init_fragments: np.ndarray | None = None,
    settings: ContrastiveSettings | None = None,
    progress: Progress | None = None,
    init_state: dict[str, torch.Tensor] | None = None,
) -> ContrastiveResult:
    """Train the embedding on uint8 ``images`` (already on ``device`` or CPU).

    ``fragments[f]`` are the rows of ``images`` of fragment f (fragments with fewer than
    ``MIN_FRAGMENT_IMAGES`` are best left out by the caller); ``negative_pairs`` [m, 2] index
    ``fragments``. ``init_fragments`` (N fragment indices, e.g. a global fragment) seed the k-means
    centres with their mean embeddings so cluster k tends to stay animal k between checks.
    ``init_state`` (knowledge transfer) replaces the seeded initial weights it names.
    """
    settings = settings or ContrastiveSettings()
    images = images.to(device)
    sizes = np.array([len(f) for f in fragments], np.float64)
    flat = np.concatenate(fragments)
    starts = np.r_[0, np.cumsum(sizes)[:-1]].astype(np.int64)
    lengths = sizes.astype(np.int64)
    negative_size = sizes[negative_pairs].sum(1)
    negative_size /= negative_size.sum()
    positive_size = sizes / sizes.sum()
    negative_score = np.full(len(negative_pairs), 10.0)
    positive_score = np.full(len(fragments), 10.0)

    fragment_of = np.repeat(np.arange(len(fragments)), lengths)
    sample = rng.choice(len(flat), size=min(len(flat), settings.sample_per_animal * n_animals), replace=False)
    sample.sort()
    sample_rows = torch.as_tensor(flat[sample], device=device)
    init_members = None
    if init_fragments is not None and len(init_fragments) == n_animals:
        init_members = [np.flatnonzero(fragment_of[sample] == f) for f in init_fragments]
        if min(len(m) for m in init_members) == 0:
            init_members = None

    model = seeded_model(lambda: EmbeddingNet(images.shape[1]), seed, device)
    if init_state:
        model.load_state_dict(init_state, strict=False)
    pairs = settings.pairs_per_step or pairs_per_step(n_animals)
    optimiser = torch.optim.Adam(model.parameters(), lr=settings.learning_rate * 128 / pairs)
    check_every = settings.check_every or 20 + 2 * n_animals

    def draw(fragment_idx: np.ndarray) -> np.ndarray:
        return flat[starts[fragment_idx] + (rng.random(len(fragment_idx)) * lengths[fragment_idx]).astype(np.int64)]

    # best checkpoint so far, by agreement with the fragments, then silhouette
    best: tuple[float, float, dict, torch.Tensor | None] = (-1.0, -1.0, copy.deepcopy(model.state_dict()), None)
    top_silhouette = top_agreement = -1.0
    low_loss = float("inf")
    since_best, agreeing, step, reason = 0, 0, 0, "step budget"
    history: list[tuple[int, float, float]] = []
    running_loss, started, shown = 0.0, time.monotonic(), 0.0
    while step < settings.max_steps:
        model.train()
        p_neg = negative_size + negative_score / negative_score.sum()
        p_pos = positive_size + positive_score / positive_score.sum()
        chosen_neg = rng.choice(len(negative_pairs), size=pairs, p=p_neg / p_neg.sum())
        chosen_pos = rng.choice(len(fragments), size=pairs, p=p_pos / p_pos.sum())
        left = np.r_[draw(negative_pairs[chosen_neg, 0]), draw(chosen_pos)]
        right = np.r_[draw(negative_pairs[chosen_neg, 1]), draw(chosen_pos)]
        rows = torch.as_tensor(np.r_[left, right], device=device)
        flips = torch.as_tensor(rng.random(len(rows)) < 0.5, device=device)
        embedded = model(rotate_half(images[rows], flips))
        distance = (embedded[: 2 * pairs] - embedded[2 * pairs :]).pow(2).sum(1).add(1e-9).sqrt()
        negative_loss = torch.relu(NEGATIVE_MARGIN - distance[:pairs]).pow(2)
        positive_loss = torch.relu(distance[pairs:] - POSITIVE_MARGIN).pow(2)
        loss = torch.cat([negative_loss, positive_loss]).mean()
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        step += 1
        value = float(loss.detach())
        running_loss = value if step == 1 else 0.9 * running_loss + 0.1 * value
        negative_score *= settings.loss_decay
        positive_score *= settings.loss_decay
        np.add.at(negative_score, chosen_neg, (negative_loss > 0).cpu().numpy())
        np.add.at(positive_score, chosen_pos, (positive_loss > 0).cpu().numpy())
        if not np.isfinite(running_loss):
            reason = "loss is not finite"
            break
        if step % check_every:
            continue
        embeddings = apply_in_batches(model, images[sample_rows]).to(device)
        init = None
        if init_members is not None:
            init = torch.stack([embeddings[m].mean(0) for m in init_members])
        centres, labels = kmeans(embeddings, n_animals, rng, init=init)
        score = silhouette(embeddings, labels, n_animals)
        agreement = fragment_agreement(labels.cpu().numpy(), fragment_of[sample], negative_pairs, n_animals)
        history.append((step, running_loss, score))
        if progress is not None:
            # training usually ends when the agreement reaches its target, long before the step
            # budget: show whichever is further along, so the ETA during training is not 10x off
            shown = max(shown, step / settings.max_steps, 0.95 * min(agreement / settings.agreement_target, 1.0) ** 4)
            progress("contrastive", min(shown, 1.0), {"loss": running_loss, "silhouette": score,
                                                      "agreement": agreement, "step": step})
        agreeing = agreeing + 1 if agreement >= settings.agreement_target else 0
        if agreeing >= 2:
            best = (agreement, score, copy.deepcopy(model.state_dict()), centres)
            reason = f"clusters agree with the fragments ({agreement:.4f})"
            break
        # progress is any of the three moving the right way: the silhouette often dips and plateaus
        # for hundreds of steps before the animals separate, while the loss and agreement creep on
        improved = (score > top_silhouette + 1e-4 or agreement > top_agreement + 0.005
                    or running_loss < low_loss * 0.99)
        top_silhouette, top_agreement = max(top_silhouette, score), max(top_agreement, agreement)
        low_loss = min(low_loss, running_loss)
        if (agreement, score) > best[:2]:
            best = (agreement, score, copy.deepcopy(model.state_dict()), centres)
        since_best = 0 if improved else since_best + 1
        first_loss = history[0][1]
        if running_loss < LOSS_FIT * first_loss:
            reason = "the training pairs meet their margins"
            break
        if score > SILHOUETTE_TARGET and since_best >= 2:
            reason = "silhouette target reached"
            break
        if since_best >= settings.patience:
            reason = "stopped improving"
            break
        if time.monotonic() - started > settings.max_seconds:
            reason = "time budget"
            break
    _, best_silhouette, best_state, best_centres = best
    model.load_state_dict(best_state)
    if best_centres is None:
        embeddings = apply_in_batches(model, images[sample_rows]).to(device)
        best_centres, labels = kmeans(embeddings, n_animals, rng)
        best_silhouette = silhouette(embeddings, labels, n_animals)
    return ContrastiveResult(model, best_centres.cpu(), best_silhouette, step, reason, history)


@torch.no_grad()
def embedding_probabilities(model: EmbeddingNet, centres: torch.Tensor, images: torch.Tensor) -> np.ndarray:
    """Per-image identity pseudo-probabilities, averaged over the crop and its 180° rotation."""
    straight = distances_to_probabilities(torch.cdist(apply_in_batches(model, images), centres))
    turned = distances_to_probabilities(torch.cdist(apply_in_batches(model, torch.flip(images, dims=(1, 2))), centres))
    return (straight + turned) / 2
