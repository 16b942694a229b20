"""Requests and replies between the assembler (which knows fragments) and the identifier (which
holds the identification images and the networks).

They carry image ids and labels, never images: an image id is the blob's row in the job's blob
table (chunks concatenated in chunk order), which is also the crop's row in the identifier's image
store. The assembler talks to a :class:`IdentifierClient`; the identifier service implements it
over ZeroMQ, and :class:`services.identifier.learning.LocalIdentifier` in-process (tests, tuning).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

#: progress(stage, fraction_done, figures) — figures e.g. {"loss": .., "silhouette": ..}
Progress = Callable[[str, float, dict], None]


@dataclass
class CrossingRequest:
    """Train the crossing detector on sure labels, then classify the unsure blobs."""

    train_ids: np.ndarray  # int64 image ids with sure labels
    train_labels: np.ndarray  # int8, 1 = crossing, 0 = individual
    predict_ids: np.ndarray  # int64 image ids to classify
    seed: int = 0


@dataclass
class CrossingReply:
    crossing_probability: np.ndarray  # float32 [len(predict_ids)]
    trained: bool  # False: too few examples or training diverged -> caller uses the area rule
    note: str = ""


@dataclass
class IdentityRequest:
    """Learn the identities of the individual fragments of one video.

    Fragment f's images are ``fragment_ids[fragment_offsets[f]:fragment_offsets[f+1]]`` and it
    lives in frames ``[fragment_frames[f,0], fragment_frames[f,1])``; two fragments whose frame
    ranges intersect are two different animals. ``global_fragments`` rows list the N fragments
    that coexist in a stretch of frames where every animal is seen separately (may be empty).
    """

    n_animals: int
    fragment_offsets: np.ndarray  # int64 [k + 1]
    fragment_ids: np.ndarray  # int64 [offsets[-1]]
    fragment_frames: np.ndarray  # int64 [k, 2]
    global_fragments: np.ndarray  # int64 [g, n_animals]
    method: str = "contrastive"  # or "accumulation"
    seed: int = 0
    # an earlier session's identity model (shoal.knowledge file bytes) to start from and to match
    # identities to; empty: learn from scratch
    knowledge: np.ndarray = field(default_factory=lambda: np.zeros(0, np.uint8))


@dataclass
class IdentityReply:
    probabilities: np.ndarray  # float32 [len(fragment_ids), n_animals], rows in fragment_ids order
    method: str  # the route actually used (a fallback says so)
    silhouette: float = float("nan")
    ratio_accumulated: float = float("nan")
    notes: list[str] = field(default_factory=list)
    # the trained identity model (shoal.knowledge file bytes; output k = probabilities' column k)
    model: np.ndarray = field(default_factory=lambda: np.zeros(0, np.uint8))
    # with knowledge: share of images on which the earlier model names the identity they were
    # matched to (NaN without knowledge)
    transfer_score: float = float("nan")


class IdentifierClient(Protocol):
    def classify_crossings(self, request: CrossingRequest, progress: Progress | None = None) -> CrossingReply: ...

    def learn_identities(self, request: IdentityRequest, progress: Progress | None = None) -> IdentityReply: ...
