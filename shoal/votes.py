"""From per-image identity predictions to per-fragment identity probabilities (method notes §5.1).

Every image of a fragment shows the same animal, so a fragment's identity is decided by the votes
of its images. Shared by the identifier (which predicts images) and the assembler (which assigns
fragments), so that both read the same numbers.
"""

from __future__ import annotations

import numpy as np


def fragment_votes(probabilities: np.ndarray, offsets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Vote counts and median winning probability per identity for each fragment.

    Args:
        probabilities: float [n_images, N] per-image identity probabilities; fragment f owns rows
            ``offsets[f]:offsets[f+1]``.
        offsets: int [k + 1] fragment boundaries.

    Returns:
        counts: int64 [k, N], number of images of fragment f whose most probable identity is j.
        median_probability: float64 [k, N], median of those images' winning probability (0 where
            no image voted for j).
    """
    probabilities = np.asarray(probabilities, np.float64)
    offsets = np.asarray(offsets, np.int64)
    k, n_ids = len(offsets) - 1, probabilities.shape[1]
    fragment = np.repeat(np.arange(k), np.diff(offsets))
    vote = probabilities.argmax(axis=1)
    winning = probabilities[np.arange(len(vote)), vote]

    group = fragment * n_ids + vote
    counts = np.bincount(group, minlength=k * n_ids)

    # Median per (fragment, identity) group: sort by group then value, pick the middle element(s).
    order = np.lexsort((winning, group))
    values = winning[order]
    starts = np.cumsum(counts) - counts
    voted = counts > 0
    low = starts[voted] + (counts[voted] - 1) // 2
    high = starts[voted] + counts[voted] // 2
    median = np.zeros(k * n_ids)
    median[voted] = (values[low] + values[high]) / 2
    return counts.reshape(k, n_ids).astype(np.int64), median.reshape(k, n_ids)


def p1_from_votes(counts: np.ndarray) -> np.ndarray:
    """P1 = base-2 softmax of vote counts: ``2**f_j / sum_i 2**f_i`` (Romero-Ferrero et al. 2019).

    Base 2 makes each extra vote double the odds, so long fragments become near-certain; shifting
    by the row maximum keeps it finite for fragments with thousands of images.
    """
    counts = np.asarray(counts, np.float64)
    if counts.size == 0:
        return counts.copy()
    powers = np.exp2(counts - counts.max(axis=1, keepdims=True))
    return powers / powers.sum(axis=1, keepdims=True)


def certainty(p1: np.ndarray, median_probability: np.ndarray) -> np.ndarray:
    """How much the best identity beats the runner-up, weighting each by its median probability.

    ``(P1_a * m_a - P1_b * m_b) / (P1_a + P1_b)`` with a, b the two identities of highest P1.
    A fragment is certain when this is >= 0.1 (notes §5.1). With one identity it is ``m_a``.
    """
    p1 = np.asarray(p1, np.float64)
    median_probability = np.asarray(median_probability, np.float64)
    if p1.shape[0] == 0:
        return np.zeros(0)
    rows = np.arange(p1.shape[0])
    order = np.argsort(-p1, axis=1, kind="stable")
    best = order[:, 0]
    score_best = p1[rows, best] * median_probability[rows, best]
    if p1.shape[1] == 1:
        return score_best
    second = order[:, 1]
    score_second = p1[rows, second] * median_probability[rows, second]
    return (score_best - score_second) / (p1[rows, best] + p1[rows, second])
