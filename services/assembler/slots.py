"""Tracking without identities: fragments take "slots" instead of learned identities.

Each new individual fragment, in order of start frame, takes the lowest slot not held by a fragment
still alive; the slot is freed when the fragment ends (idtracker.ai's ``track_wo_identities``). A
slot is therefore one animal only between two crossings; it is what users want when the animals
cannot be told apart or only positions matter.
"""

from __future__ import annotations

import heapq

import numpy as np

from services.assembler.fragments import Fragment
from shoal.blobs import BlobTable


def max_blobs_per_frame(table: BlobTable) -> int:
    """The number of slots when the number of animals is not given."""
    if len(table) == 0:
        return 0
    return int(np.unique(table.frame, return_counts=True)[1].max())


def assign_slots(fragments: list[Fragment], n_slots: int) -> np.ndarray:
    """Slot per fragment (int64 [k]); -1 for crossings and for fragments finding every slot taken."""
    slot = np.full(len(fragments), -1, np.int64)
    free = list(range(n_slots))
    alive: list[tuple[int, int]] = []  # heap of (end_frame, slot)
    for f in sorted((f for f in fragments if f.is_individual), key=lambda f: (f.start_frame, f.index)):
        while alive and alive[0][0] <= f.start_frame:
            heapq.heappush(free, heapq.heappop(alive)[1])
        if free:
            slot[f.index] = heapq.heappop(free)
            heapq.heappush(alive, (f.end_frame, int(slot[f.index])))
    return slot
