"""Individual or crossing: which blobs show one animal and which show several touching animals.

Heuristics give sure labels (method notes §3.4): a blob in a frame with exactly N blobs is one
animal; a blob far above the single-animal area that merges or splits in the overlap graph is a
crossing. A small network trained per video on those sure labels (the identifier's job) decides the
rest; when it cannot be trained, the area rule decides.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from services.assembler.overlap import link_degrees
from shoal.blobs import BlobTable, blobs_per_frame_of_blob, solo_frame_rows
from shoal.identity_requests import CrossingRequest, IdentifierClient, Progress

#: A blob this many standard deviations above the median single-animal area seems a crossing.
AREA_SD_TOLERANCE = 4.0
#: Floor on the area s.d. as a fraction of the median: a near-constant area (synthetic or very
#: uniform animals) must not turn a few extra pixels into a crossing.
MIN_RELATIVE_AREA_SD = 0.02
#: Fewer sure examples of either class than this and the crossing detector is not trained.
MIN_EXAMPLES_PER_CLASS = 10


@dataclass
class AreaModel:
    """Areas of single animals: blobs in frames that hold exactly N blobs.

    A video may have no such frame (some animals always touch, or one is often hidden): then the
    frames with the most blobs, the fewest merges, stand in, with a robust spread (1.4826 × the
    median absolute deviation) so that the crossings still among them do not inflate it.
    """

    median: float
    std: float

    def seems_crossing(self, area: np.ndarray) -> np.ndarray:
        sd = max(self.std, MIN_RELATIVE_AREA_SD * self.median)
        return (np.asarray(area) - self.median) >= AREA_SD_TOLERANCE * sd


def area_model(table: BlobTable, n_animals: int) -> AreaModel:
    if len(table) == 0:
        return AreaModel(0.0, 0.0)
    rows, exact = solo_frame_rows(table, n_animals)
    areas = table.area[rows]
    if exact:
        return AreaModel(float(np.median(areas)), float(np.std(areas)))
    median = float(np.median(areas))
    return AreaModel(median, 1.4826 * float(np.median(np.abs(areas - median))))


def area_rule(table: BlobTable, n_animals: int) -> np.ndarray:
    """bool [n]: the blob seems a crossing (too big, and not in a frame with exactly N blobs)."""
    in_full_frame = blobs_per_frame_of_blob(table) == n_animals
    return ~in_full_frame & area_model(table, n_animals).seems_crossing(table.area)


def unique_chains(links: np.ndarray, n_blobs: int, same_class: np.ndarray) -> np.ndarray:
    """Chain id per blob: blobs joined by links that are the only link of both ends and join blobs
    of the same class. Rows must be sorted by frame; ids increase with the chain's first row."""
    links = np.asarray(links, np.int64).reshape(-1, 2)
    n_previous, n_next = link_degrees(links, n_blobs)
    a, b = links[:, 0], links[:, 1]
    keep = (n_next[a] == 1) & (n_previous[b] == 1) & (same_class[a] == same_class[b])
    chain_previous = np.full(n_blobs, -1, np.int64)
    chain_previous[b[keep]] = a[keep]
    chain = np.empty(n_blobs, np.int64)
    count = 0
    for i in range(n_blobs):
        p = chain_previous[i]
        if p >= 0:
            chain[i] = chain[p]
        else:
            chain[i] = count
            count += 1
    return chain


def sure_labels(table: BlobTable, links: np.ndarray, n_animals: int) -> np.ndarray:
    """int8 [n]: 0 = surely one animal, 1 = surely a crossing, -1 = unknown (notes §3.4).

    Sure individual: a blob in a frame with exactly N blobs, or an individual-sized blob on a unique
    chain that a crossing-sized blob feeds or drains (an animal that just left or is about to join a
    crossing). Sure crossing: a crossing-sized blob that merges or splits, or whose unique chain is
    fed by a merge and drained by a split.
    """
    n = len(table)
    links = np.asarray(links, np.int64).reshape(-1, 2)
    labels = np.full(n, -1, np.int8)
    if n == 0:
        return labels
    n_previous, n_next = link_degrees(links, n)
    seems_crossing = area_rule(table, n_animals)
    chain = unique_chains(links, n, seems_crossing)
    n_chains = int(chain.max()) + 1

    first = np.full(n_chains, n, np.int64)
    np.minimum.at(first, chain, np.arange(n))
    last = np.full(n_chains, -1, np.int64)
    np.maximum.at(last, chain, np.arange(n))

    fed_by_crossing = np.zeros(n_chains, bool)
    drains_to_crossing = np.zeros(n_chains, bool)
    a, b = links[:, 0], links[:, 1]
    into_first = b == first[chain[b]]
    np.logical_or.at(fed_by_crossing, chain[b[into_first]], seems_crossing[a[into_first]])
    out_of_last = a == last[chain[a]]
    np.logical_or.at(drains_to_crossing, chain[a[out_of_last]], seems_crossing[b[out_of_last]])

    single_links = (n_previous == 1) & (n_next == 1)
    near_crossing = (fed_by_crossing | drains_to_crossing)[chain]
    in_full_frame = blobs_per_frame_of_blob(table) == n_animals
    sure_individual = in_full_frame | (~seems_crossing & single_links & near_crossing)

    merged_and_split = ((n_previous[first] >= 2) & (n_next[last] >= 2))[chain]
    sure_crossing = seems_crossing & ((n_previous >= 2) | (n_next >= 2) | merged_and_split)

    labels[sure_crossing] = 1
    labels[sure_individual] = 0
    return labels


def classify_crossings(
    table: BlobTable,
    links: np.ndarray,
    n_animals: int,
    identifier: IdentifierClient | None,
    seed: int = 0,
    notes: list[str] | None = None,
    progress: Progress | None = None,
) -> np.ndarray:
    """bool [n] is_crossing: sure labels, the identifier's crossing detector for the rest.

    Image ids are table rows. Falls back to the area rule when there is no identifier, too few sure
    examples of a class, or the detector could not be trained (reply ``trained=False``). With one
    animal every blob is an individual.
    """
    notes = notes if notes is not None else []
    n = len(table)
    if n_animals <= 1 or n == 0:
        return np.zeros(n, bool)
    labels = sure_labels(table, links, n_animals)
    is_crossing = labels == 1
    unknown = np.flatnonzero(labels == -1)
    if len(unknown) == 0:
        return is_crossing
    fallback = area_rule(table, n_animals)
    n_sure = [int(np.sum(labels == c)) for c in (0, 1)]
    if identifier is None or min(n_sure) < MIN_EXAMPLES_PER_CLASS:
        if identifier is not None:
            notes.append(
                f"crossing detector not trained ({n_sure[0]} sure individuals, {n_sure[1]} sure crossings);"
                " area rule used"
            )
        is_crossing[unknown] = fallback[unknown]
        return is_crossing
    sure = np.flatnonzero(labels >= 0)
    request = CrossingRequest(
        train_ids=sure.astype(np.int64),
        train_labels=labels[sure],
        predict_ids=unknown.astype(np.int64),
        seed=seed,
    )
    reply = identifier.classify_crossings(request, progress)
    if not reply.trained:
        notes.append(f"crossing detector not trained ({reply.note or 'no reason given'}); area rule used")
        is_crossing[unknown] = fallback[unknown]
    else:
        is_crossing[unknown] = np.asarray(reply.crossing_probability) > 0.5
    return is_crossing
