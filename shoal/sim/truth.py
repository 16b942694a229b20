"""Ground truth: per-frame positions, headings and contacts, stacked for a whole video.

It is what ground_truth.npz holds and `shoal evaluate` scores against, kept free of rendering so
that readers of the truth need nothing else.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class FrameTruth:
    """Ground truth of one frame."""

    positions: np.ndarray  # float64 [N, 2] (x, y) centroid of each rendered body
    orientation: np.ndarray  # float64 [N] heading (towards the head), radians, image axes
    touching: np.ndarray  # bool [N] the body touches or overlaps another animal's
    contacts: list[tuple[int, int]] = field(default_factory=list)  # touching pairs (i < j)


@dataclass
class GroundTruth:
    """Ground truth of a whole video, as written to ground_truth.npz."""

    positions: np.ndarray  # float64 [F, N, 2]
    touching: np.ndarray  # bool [F, N]
    orientation: np.ndarray  # float64 [F, N]
    crossings: np.ndarray  # int64 [K, 4] (first frame, last frame, i, j) of each pairwise contact
    body_length: float
    arena: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # int64 [N] arena of each animal

    def crossing_count(self) -> int:
        """Number of contact episodes; a three-animal crossing counts once per touching pair."""
        return len(self.crossings)

    def touching_fraction(self) -> float:
        return float(self.touching.mean()) if self.touching.size else 0.0


def collect_truth(truths: list[FrameTruth], body_length: float, arena: np.ndarray | None = None) -> GroundTruth:
    """Stack per-frame truths and list every pairwise contact episode; ``arena``: each animal's arena."""
    episodes, open_since = [], {}
    for t, truth in enumerate(truths + [FrameTruth(np.zeros((0, 2)), np.zeros(0), np.zeros(0, bool))]):
        now = set(truth.contacts)
        for pair in list(open_since):
            if pair not in now:
                episodes.append((open_since.pop(pair), t - 1, *pair))
        for pair in now:
            open_since.setdefault(pair, t)
    return GroundTruth(
        positions=np.array([t.positions for t in truths], np.float64),
        touching=np.array([t.touching for t in truths], bool),
        orientation=np.array([t.orientation for t in truths], np.float64),
        crossings=np.array(sorted(episodes), np.int64).reshape(-1, 4),
        body_length=body_length,
        arena=np.zeros(len(truths[0].positions) if truths else 0, np.int64) if arena is None else arena,
    )
