"""Global fragments: stretches of frames where every animal is seen alone (method notes §4.2).

In a frame with exactly N blobs, all individual, the N fragments present are N different animals.
A maximal run of such frames with the same N fragments is the *core* of a global fragment; the
global fragment is those N whole fragments. They are the labelled examples identity learning starts
from (the classic route trains on the one whose animals moved most, for the most varied images).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from services.assembler.fragments import Fragment, distances_travelled
from shoal.blobs import BlobTable

#: A global fragment whose shortest fragment has fewer images than this is not used for training.
MIN_IMAGES_TO_ACCUMULATE = 4


@dataclass
class GlobalFragment:
    fragments: tuple[int, ...]  # the N fragment indices, ascending
    first_frame_of_core: int
    min_distance_travelled: float
    min_n_images: int

    @property
    def accumulable(self) -> bool:
        return self.min_n_images >= MIN_IMAGES_TO_ACCUMULATE


def find_global_fragments(
    fragments: list[Fragment],
    blob_fragment: np.ndarray,
    table: BlobTable,
    n_animals: int,
    n_frames: int,
    first_frame: int = 0,
) -> list[GlobalFragment]:
    """Global fragments of frames ``[first_frame, first_frame + n_frames)``, one per distinct set of
    fragments, in order of the first frame of their first core."""
    if len(table) == 0 or n_animals < 1:
        return []
    starts = table.frame_slices(first_frame, n_frames)
    counts = np.diff(starts)
    is_individual = np.array([f.is_individual for f in fragments], bool)
    in_range = (table.frame >= first_frame) & (table.frame < first_frame + n_frames)
    n_individual = np.bincount(
        table.frame[in_range] - first_frame,
        weights=is_individual[blob_fragment[in_range]],
        minlength=n_frames,
    )
    clean = np.flatnonzero((counts == n_animals) & (n_individual == n_animals))
    if len(clean) == 0:
        return []
    rows = starts[clean][:, None] + np.arange(n_animals)[None, :]
    sets = np.sort(blob_fragment[rows], axis=1)
    new_core = np.ones(len(clean), bool)
    new_core[1:] = (np.diff(clean) != 1) | np.any(sets[1:] != sets[:-1], axis=1)

    distance = distances_travelled(fragments, table)
    n_images = np.array([f.n_images for f in fragments])
    found: dict[tuple[int, ...], GlobalFragment] = {}
    for i in np.flatnonzero(new_core):
        key = tuple(int(k) for k in sets[i])
        if key in found:
            continue
        members = list(key)
        found[key] = GlobalFragment(
            fragments=key,
            first_frame_of_core=int(max(fragments[k].start_frame for k in members)),
            min_distance_travelled=float(distance[members].min()),
            min_n_images=int(n_images[members].min()),
        )
    return list(found.values())
