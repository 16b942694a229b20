"""Post-processing of assigned identities (method notes §6).

1. Velocity threshold: twice the 99th percentile of the speed of single animals. An animal cannot
   cover more than that between two frames.
2. Impossible jumps: if an identity's consecutive fragments are too far apart for that speed, one of
   them got the wrong identity; it is re-assigned to the best identity that makes its path possible
   and is not worn by a coexisting fragment, or left unidentified.
3. Crossings: an animal inside a crossing has no blob of its own. Its position is interpolated
   between where it was last and next seen alone and snapped onto the blob it must be in, so
   trajectories have no gaps where the animal is visible before and after. It is then settled
   onto its own share of the blob: the animals in one blob divide its pixels, each taking those
   nearer to it than to the others, and each moves to the centroid of its share within a body's
   reach — a straight line between two sightings misses an animal that turned as it met another,
   but its body still fills part of the blob.
"""

from __future__ import annotations

import numpy as np

from services.assembler.fragments import Fragment
from shoal.blobs import BlobTable

VELOCITY_PERCENTILE = 99


def velocity_threshold(fragments: list[Fragment], table: BlobTable) -> float:
    """2 × 99th percentile of the frame-to-frame speed in individual fragments (px/frame); inf if
    no animal was ever seen alone in two consecutive frames."""
    speeds = [f.speeds(table) for f in fragments if f.is_individual and f.n_images > 1]
    speeds = np.concatenate(speeds) if speeds else np.zeros(0)
    if len(speeds) == 0:
        return float("inf")
    return 2.0 * float(np.percentile(speeds, VELOCITY_PERCENTILE))


class _Paths:
    """Where each fragment starts and ends, to measure the speed an identity would imply."""

    def __init__(self, fragments: list[Fragment], table: BlobTable, identity: np.ndarray):
        self.identity = identity
        self.n_images = np.array([f.n_images for f in fragments])
        self.start = np.array([f.start_frame for f in fragments])
        self.end = np.array([f.end_frame for f in fragments])
        self.individual = np.array([f.is_individual for f in fragments], bool)
        self.start_pos = np.array([f.start_position(table) for f in fragments]).reshape(-1, 2)
        self.end_pos = np.array([f.end_position(table) for f in fragments]).reshape(-1, 2)

    def speed(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Speed (px/frame) needed to go from the end of fragment a to the start of a later b."""
        frames = np.maximum(self.start[b] - self.end[a] + 1, 1)
        return np.linalg.norm(self.start_pos[b] - self.end_pos[a], axis=-1) / frames

    def border_speeds(self, i: int, ident: int) -> tuple[float, float]:
        """Speeds from the previous and to the next fragment of ``ident`` if fragment i wore it
        (NaN where that identity is not seen on that side)."""
        same = np.flatnonzero(self.individual & (self.identity == ident))
        before = same[self.end[same] <= self.start[i]]
        after = same[self.start[same] >= self.end[i]]
        v_before = self.speed(before[np.argmax(self.end[before])], i) if len(before) else np.nan
        v_after = self.speed(i, after[np.argmin(self.start[after])]) if len(after) else np.nan
        return float(v_before), float(v_after)

    def impossible_jumps(self, threshold: float) -> list[tuple[int, int]]:
        """Consecutive fragments (a, b) of one identity joined faster than ``threshold``, in time order."""
        pairs = []
        for ident in np.unique(self.identity[self.individual & (self.identity >= 0)]):
            members = np.flatnonzero(self.individual & (self.identity == ident))
            members = members[np.argsort(self.start[members], kind="stable")]
            a, b = members[:-1], members[1:]
            apart = self.start[b] >= self.end[a]
            a, b = a[apart], b[apart]
            fast = self.speed(a, b) > threshold
            pairs += [(int(x), int(y)) for x, y in zip(a[fast], b[fast], strict=True)]
        return sorted(pairs, key=lambda p: (self.end[p[0]], p[0]))


def correct_impossible_jumps(
    fragments: list[Fragment],
    table: BlobTable,
    identity: np.ndarray,
    p2: np.ndarray,
    coexistence: list[np.ndarray],
    threshold: float,
) -> tuple[np.ndarray, list[int]]:
    """Re-assign fragments whose identity implies a jump faster than ``threshold`` (notes §6.2).

    Of the two fragments at an impossible jump, the suspect is the one that jumps on both sides, else
    the one with fewer images (less evidence). It takes, among identities not worn by a coexisting
    fragment and whose path it keeps below the threshold, the one of highest P2; with none it is
    left unidentified (-1). Each fragment is corrected at most once.

    Returns the corrected identities and the indices of the fragments that changed.
    """
    identity = np.array(identity, np.int64, copy=True)
    if not np.isfinite(threshold) or len(fragments) == 0:
        return identity, []
    paths = _Paths(fragments, table, identity)
    corrected: list[int] = []
    while True:
        suspect = _next_suspect(paths.impossible_jumps(threshold), paths.n_images, set(corrected))
        if suspect < 0:
            return identity, corrected
        worn = {int(identity[g]) for g in coexistence[suspect]} | {int(identity[suspect])}
        best, best_key = -1, None
        for ident in range(p2.shape[1]):
            if ident in worn:
                continue
            worst = float(np.nanmax([*paths.border_speeds(suspect, ident), 0.0]))
            key = (p2[suspect, ident], -worst)
            if worst <= threshold and (best_key is None or key > best_key):
                best, best_key = ident, key
        identity[suspect] = best
        corrected.append(suspect)


def _next_suspect(jumps: list[tuple[int, int]], n_images: np.ndarray, done: set[int]) -> int:
    """The fragment to re-assign at the earliest impossible jump not yet dealt with (-1 if none)."""
    jumping = {}
    for a, b in jumps:
        jumping[a] = jumping.get(a, 0) + 1
        jumping[b] = jumping.get(b, 0) + 1
    for a, b in jumps:
        candidates = [c for c in (a, b) if c not in done]
        if not candidates:
            continue
        return min(candidates, key=lambda c: (-jumping[c], n_images[c], c))
    return -1


def _pixels(table: BlobTable, row: int) -> tuple[np.ndarray, np.ndarray]:
    """x and y of the blob's pixels (its bounding box when it carries no mask)."""
    x0, y0, x1, y1 = (int(v) for v in table.bbox[row])
    if table.mask_offsets[row] == table.mask_offsets[row + 1]:
        ys, xs = np.mgrid[y0:y1, x0:x1].reshape(2, -1)
        return xs, ys
    ys, xs = np.nonzero(table.mask(row))
    return xs + x0, ys + y0


def _nearest_pixel(table: BlobTable, row: int, point: np.ndarray) -> tuple[np.ndarray, float]:
    """The blob's pixel nearest to ``point`` (the point itself when inside) and its distance."""
    xs, ys = _pixels(table, row)
    px, py = int(round(point[0])), int(round(point[1]))
    inside = np.any((xs == px) & (ys == py))
    if inside:
        return point.copy(), 0.0
    d = np.hypot(xs - point[0], ys - point[1])
    k = int(d.argmin())
    return np.array([xs[k], ys[k]], np.float64), float(d[k])


def interpolate_crossings(
    trajectories: np.ndarray,
    table: BlobTable,
    blob_identity: np.ndarray,
    first_frame: int = 0,
    max_snap_distance: float = np.inf,
    body_radius: float = 0.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Fill each identity's gaps between two known positions (notes §6.3, without erosion).

    In every gap frame the animal is put at the linear interpolation of its last and next known
    positions, snapped onto the nearest blob that wears no identity (a crossing, or an unidentified
    animal): the point itself when the blob contains it, else the blob's nearest pixel, if within
    ``max_snap_distance``. Frames without such a blob stay NaN (the animal is occluded or lost).
    Before an identity's first known position and after its last (animals still in a crossing when
    the video starts or ends) there is no other side to interpolate from: the animal follows the
    free blob it is snapped onto, frame by frame, from its first or last known position, until
    no free blob is near enough. With a ``body_radius`` the snapped animals are then settled onto
    their shares of their blobs (:func:`settle_in_blob`).

    Returns the filled trajectories and bool [F, N] marking the filled entries.
    """
    trajectories = np.array(trajectories, np.float64, copy=True)
    n_frames, n_animals, _ = trajectories.shape
    filled = np.zeros((n_frames, n_animals), bool)
    starts = table.frame_slices(first_frame, n_frames)
    free = np.asarray(blob_identity) < 0
    snapped_to: dict[tuple[int, int], list[int]] = {}  # (frame, blob row) -> animals put there

    def fill(f: int, k: int, guess: np.ndarray) -> bool:
        rows = np.arange(starts[f], starts[f + 1])
        rows = rows[free[rows]]
        if len(rows) == 0:
            return False
        point, distance, row = min(((*_nearest_pixel(table, int(r), guess), int(r)) for r in rows),
                                   key=lambda candidate: candidate[1])
        if distance > max_snap_distance:
            return False
        trajectories[f, k], filled[f, k] = point, True
        snapped_to.setdefault((f, row), []).append(k)
        return True

    for k in range(n_animals):
        known = np.flatnonzero(~np.isnan(trajectories[:, k, 0]))
        if len(known) == 0:
            continue
        for a, b in zip(known[:-1], known[1:], strict=True):
            for f in range(a + 1, b):
                w = (f - a) / (b - a)
                fill(f, k, (1 - w) * trajectories[a, k] + w * trajectories[b, k])
        for edge in (range(known[0] - 1, -1, -1), range(known[-1] + 1, n_frames)):
            for f in edge:
                previous = f + 1 if f < known[0] else f - 1
                if not fill(f, k, trajectories[previous, k]):
                    break
    if body_radius > 0:
        for (f, row), animals in snapped_to.items():
            trajectories[f, animals] = settle_in_blob(*_pixels(table, row), trajectories[f, animals], body_radius)
    return trajectories, filled


#: rounds of dividing a crossing's pixels and moving each animal to its share's centroid
SETTLE_ROUNDS = 3


def settle_in_blob(xs: np.ndarray, ys: np.ndarray, points: np.ndarray, body_radius: float) -> np.ndarray:
    """Move the animals put in one blob to the centroids of their shares of its pixels: float [m, 2].

    Each pixel belongs to the nearest animal, and each animal moves to the centroid of its pixels
    within ``body_radius`` (a few rounds). The reach keeps an animal on its own body where the blob
    also holds an animal with no position here, and the division keeps two animals from settling
    onto one body.
    """
    pixels = np.stack([xs, ys], axis=1).astype(np.float64)
    points = np.asarray(points, np.float64).copy()
    for _ in range(SETTLE_ROUNDS):
        distance = np.linalg.norm(pixels[:, None, :] - points[None, :, :], axis=2)
        owner = distance.argmin(axis=1)
        for j in range(len(points)):
            share = (owner == j) & (distance[:, j] <= body_radius)
            if share.any():
                points[j] = pixels[share].mean(axis=0)
    return points
