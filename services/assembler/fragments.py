"""Fragments: chains of blobs that surely show the same animal (or the same crossing).

A blob continues a fragment when it is the only blob linked forward from the fragment's last blob,
that blob is its only link backward, and both are of the same class (individual or crossing), so a
fragment never spans a merge, a split or a crossing (method notes §4.1). Two individual fragments
alive in a common frame are two different animals: that coexistence is what identity learning and
assignment exploit.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass

import numpy as np

from services.assembler.crossings import unique_chains
from shoal.blobs import BlobTable


@dataclass
class Fragment:
    """One chain of blobs: rows of the blob table in frame order, frames ``[start_frame, end_frame)``."""

    index: int
    start_frame: int
    end_frame: int
    rows: np.ndarray
    is_individual: bool

    @property
    def n_images(self) -> int:
        return len(self.rows)

    def start_position(self, table: BlobTable) -> np.ndarray:
        return table.centroid[self.rows[0]]

    def end_position(self, table: BlobTable) -> np.ndarray:
        return table.centroid[self.rows[-1]]

    def speeds(self, table: BlobTable) -> np.ndarray:
        """Frame-by-frame speed of the centroid, px/frame: float [n_images - 1]."""
        return np.linalg.norm(np.diff(table.centroid[self.rows], axis=0), axis=1)

    def distance_travelled(self, table: BlobTable) -> float:
        return float(self.speeds(table).sum())


def build_fragments(
    table: BlobTable, links: np.ndarray, is_crossing: np.ndarray
) -> tuple[list[Fragment], np.ndarray]:
    """Fragments sorted by start frame, and the fragment index of every blob (int64 [n])."""
    n = len(table)
    is_crossing = np.asarray(is_crossing, bool)
    blob_fragment = unique_chains(links, n, is_crossing)
    if n == 0:
        return [], blob_fragment
    order = np.argsort(blob_fragment, kind="stable")
    bounds = np.flatnonzero(np.diff(blob_fragment[order])) + 1
    fragments = []
    for k, rows in enumerate(np.split(order, bounds)):
        fragments.append(
            Fragment(
                index=k,
                start_frame=int(table.frame[rows[0]]),
                end_frame=int(table.frame[rows[-1]]) + 1,
                rows=rows.astype(np.int64),
                is_individual=not bool(is_crossing[rows[0]]),
            )
        )
    return fragments, blob_fragment


def distances_travelled(fragments: list[Fragment], table: BlobTable) -> np.ndarray:
    """Distance travelled per fragment (px): float [k]."""
    return np.array([f.distance_travelled(table) for f in fragments])


def coexistence(fragments: list[Fragment]) -> list[np.ndarray]:
    """For every fragment, the individual fragments alive in a common frame (empty for crossings).

    A sweep over start frames keeps the set of fragments still alive, so the cost is the number of
    coexisting pairs, not the square of the number of fragments.
    """
    neighbours: list[list[int]] = [[] for _ in fragments]
    alive: list[tuple[int, int]] = []  # heap of (end_frame, index)
    for f in sorted((f for f in fragments if f.is_individual), key=lambda f: (f.start_frame, f.index)):
        while alive and alive[0][0] <= f.start_frame:
            heapq.heappop(alive)
        for _, other in alive:
            neighbours[f.index].append(other)
            neighbours[other].append(f.index)
        heapq.heappush(alive, (f.end_frame, f.index))
    return [np.array(sorted(nb), np.int64) for nb in neighbours]
