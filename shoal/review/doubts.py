"""What a reviewer should look at first: per-identity timelines and the tracking's doubtful moments.

Pure functions of the saved arrays (no files, no HTTP), so the page, tests and scripts see the same.
What the arrays tell (services/assembler/track.py, postprocess.py):

- an identity with a finite position and a finite certainty (``id_probabilities``, the chance its
  identity is right) was on a blob of its own. The certainty is computed per fragment (all blobs of
  a fragment share it), so a change of certainty marks where one fragment ends and another begins;
- a finite position with NaN certainty was interpolated: inside a crossing, or where the
  impossible-jump correction left a fragment unidentified and the gap was bridged;
- a NaN position: nobody could say where the animal was (no free blob to put it on).

Identities are numbered 1..N (column i is identity i + 1); ranges are half-open ``[start, end)``;
the human texts show inclusive frame numbers.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from shoal.review.corrections import active_entries, entry_range, merge_ranges

#: Fragments whose identity is right with a chance below this are flagged. The certainty is a
#: calibrated probability (services/assembler/estimate.py), so 0.9 flags every fragment with more
#: than a one-in-ten chance of wearing the wrong identity: rare in a good tracking (most fragments
#: are near 1), and worth a look where it happens.
CERTAINTY_BELOW = 0.9
#: crossings shorter than this are routine whatever the animals' speed (frames)
MIN_LONG_CROSSING = 10
#: moments of one kind this close (frames) are shown as one
MERGE_GAP = 2
#: at most this many moments are returned (most doubtful first)
MAX_MOMENTS = 300

#: how much each kind of moment weighs (its score's ceiling), from how surely it means an error:
#: a jump is physically impossible motion, so almost surely a wrong identity; an unknown stretch means
#: the tracker could not say who the animal was; after a long crossing who leaves as whom rests on
#: appearance alone; frames with extra blobs are segmentation noise that only sometimes takes an identity.
#: Low certainty is scored by its own probability of error, 1 - certainty.
WEIGHTS = {"jump": 1.0, "unassigned": 0.8, "long_crossing": 0.6, "more_blobs": 0.4}


@dataclass
class Segment:
    """A run of frames of one identity: kind "identified", "interpolated" or "gap"."""

    kind: str
    start: int
    end: int
    certainty: float | None = None  # the fragment's certainty, for "identified" only

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Moment:
    """A stretch of frames worth reviewing; score in 0..1, higher = more doubtful."""

    kind: str
    start: int
    end: int
    identities: list[int] = field(default_factory=list)
    score: float = 0.0
    text: str = ""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _runs(codes: np.ndarray) -> list[tuple[int, int]]:
    """(start, end) of each run of equal consecutive values."""
    if len(codes) == 0:
        return []
    change = np.flatnonzero(codes[1:] != codes[:-1]) + 1
    bounds = np.concatenate([[0], change, [len(codes)]])
    return [(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]


def _certainty(id_probabilities: np.ndarray, n_frames: int, n_animals: int) -> np.ndarray:
    return np.asarray(id_probabilities, np.float64).reshape(n_frames, n_animals)


def timeline(trajectories: np.ndarray, id_probabilities: np.ndarray) -> list[list[Segment]]:
    """Per identity, its frames cut into identified (one segment per certainty value, i.e. per
    fragment), interpolated and gap segments, in frame order, covering every frame."""
    traj = np.asarray(trajectories, np.float64)
    n_frames, n_animals = traj.shape[:2]
    certainty = _certainty(id_probabilities, n_frames, n_animals)
    rows = []
    for k in range(n_animals):
        known = np.isfinite(traj[:, k]).all(axis=1)
        own = known & np.isfinite(certainty[:, k])
        # one code per frame: -2 gap, -1 interpolated, else the certainty itself (runs split where it changes)
        codes = np.where(own, certainty[:, k], np.where(known, -1.0, -2.0))
        row = []
        for start, end in _runs(codes):
            code = float(codes[start])
            if code == -2.0:
                row.append(Segment("gap", start, end))
            elif code == -1.0:
                row.append(Segment("interpolated", start, end))
            else:
                row.append(Segment("identified", start, end, code))
        rows.append(row)
    return rows


def corrected_ranges(entries: Iterable[dict[str, Any]], n_frames: int, n_animals: int) -> list[list[tuple[int, int]]]:
    """Per identity, the merged frame ranges touched by the active corrections (checks excluded).

    `entries` may be a log's full entry list; undone entries do not count.
    """
    touched: list[list[tuple[int, int]]] = [[] for _ in range(n_animals)]
    for entry in active_entries(entries):
        if entry["op"] == "check":
            continue
        span = entry_range(entry, n_frames)
        for key in ("a", "b", "identity", "to"):
            if key in entry and 1 <= entry[key] <= n_animals:
                touched[entry[key] - 1].append(span)
    return [merge_ranges(ranges) for ranges in touched]


def default_long_crossing(body_length: float, velocity_threshold: float) -> int:
    """Frames beyond which a crossing counts as long: max(10, the time an animal at the fast end of
    its speeds, velocity_threshold / 2, needs to cover two body lengths, enough to pass by another).
    Animals together longer than that stayed together, and who leaves as whom rests on appearance."""
    if not (math.isfinite(velocity_threshold) and velocity_threshold > 0 and math.isfinite(body_length)):
        return MIN_LONG_CROSSING
    return max(MIN_LONG_CROSSING, math.ceil(4.0 * body_length / velocity_threshold))


def _frames(start: int, end: int) -> str:
    return f"frame {start}" if end - start <= 1 else f"frames {start}–{end - 1}"


def _who(identities: Sequence[int]) -> str:
    if len(identities) == 1:
        return f"identity {identities[0]}"
    return "identities " + ", ".join(str(i) for i in identities)


def _saturating(ratio: float) -> float:
    """0.5 at ratio 1 (the threshold), towards 1 as the ratio grows."""
    return 1.0 - 0.5 / max(ratio, 1.0)


def _merge(moments: list[Moment], *, across_identities: bool, gap: int,
           values: Sequence[float] | None = None) -> tuple[list[Moment], list[float]]:
    """Join moments of one kind that overlap or lie within `gap` frames (of one identity, unless
    `across_identities`), keeping the highest score; returns them and the largest of each one's `values`
    (what its text reports, e.g. the fastest speed of the jumps joined)."""
    values = [0.0] * len(moments) if values is None else list(values)
    order = sorted(range(len(moments)), key=lambda i: (moments[i].start, moments[i].end))
    merged: list[Moment] = []
    largest: list[float] = []
    open_by_key: dict[Any, int] = {}
    for i in order:
        moment = moments[i]
        key = None if across_identities else tuple(moment.identities)
        j = open_by_key.get(key)
        if j is not None and moment.start <= merged[j].end + gap:
            last = merged[j]
            last.end = max(last.end, moment.end)
            last.identities = sorted(set(last.identities) | set(moment.identities))
            last.score = max(last.score, moment.score)
            largest[j] = max(largest[j], values[i])
            continue
        open_by_key[key] = len(merged)
        merged.append(moment)
        largest.append(values[i])
    return merged, largest


def _low_certainty(segments: list[list[Segment]], below: float, gap: int) -> list[Moment]:
    moments = []
    for k, row in enumerate(segments):
        found = [Moment("low_certainty", s.start, s.end, [k + 1], 1.0 - float(s.certainty))
                 for s in row if s.kind == "identified" and s.certainty is not None and s.certainty < below]
        for moment in _merge(found, across_identities=False, gap=gap)[0]:
            span = _frames(moment.start, moment.end)
            moment.text = f"identity {k + 1}: certainty {1.0 - moment.score:.2f} over {span}"
            moments.append(moment)
    return moments


def _unassigned(segments: list[list[Segment]], reference: int, gap: int) -> list[Moment]:
    """Gaps with known positions on both sides (an unknown start or end of the video is not doubtful)."""
    found = []
    for k, row in enumerate(segments):
        for before, here, after in zip(row[:-2], row[1:-1], row[2:], strict=True):
            if here.kind == "gap" and before.kind != "gap" and after.kind != "gap":
                length = here.end - here.start
                found.append(Moment("unassigned", here.start, here.end, [k + 1],
                                    WEIGHTS["unassigned"] * _saturating(1.0 + length / reference)))
    moments, _ = _merge(found, across_identities=False, gap=gap)
    for m in moments:
        m.text = f"{_who(m.identities)}: unknown over {_frames(m.start, m.end)} (unassigned or lost)"
    return moments


def _jumps(trajectories: np.ndarray, certainty: np.ndarray, threshold: float) -> list[Moment]:
    """Consecutive own-blob positions of one identity further apart than the speed allows.

    Interpolated points are not measured: they are snapped onto the crossing blob's nearest pixel
    and may step further than any animal moves. Across a crossing the speed is measured from the
    last to the next own-blob position, as the impossible-jump correction does.
    """
    if not (math.isfinite(threshold) and threshold > 0):
        return []
    found, speeds = [], []
    for k in range(trajectories.shape[1]):
        known = np.flatnonzero(np.isfinite(trajectories[:, k]).all(axis=1) & np.isfinite(certainty[:, k]))
        if len(known) < 2:
            continue
        a, b = known[:-1], known[1:]
        speed = np.linalg.norm(trajectories[b, k] - trajectories[a, k], axis=1) / (b - a)
        for i in np.flatnonzero(speed > threshold):
            found.append(Moment("jump", int(a[i]), int(b[i]) + 1, [k + 1],
                                WEIGHTS["jump"] * _saturating(float(speed[i]) / threshold)))
            speeds.append(float(speed[i]))
    # two identities jumping at once is the mark of a swap: one moment
    moments, fastest = _merge(found, across_identities=True, gap=0, values=speeds)
    for m, v in zip(moments, fastest, strict=True):
        m.text = (f"{_who(m.identities)}: jump of {v:.1f} px/frame ({_frames(m.start, m.end)}), the limit is "
                  f"{threshold:.1f}")
    return moments


def _long_crossings(segments: list[list[Segment]], reference: int, gap: int) -> list[Moment]:
    found = []
    for k, row in enumerate(segments):
        for s in row:
            if s.kind == "interpolated" and s.end - s.start > reference:
                found.append(Moment("long_crossing", s.start, s.end, [k + 1],
                                    WEIGHTS["long_crossing"] * _saturating((s.end - s.start) / reference)))
    moments, _ = _merge(found, across_identities=True, gap=gap)
    for m in moments:
        m.text = f"{_who(m.identities)}: in a crossing for {m.end - m.start} frames ({_frames(m.start, m.end)})"
    return moments


def _more_blobs(frames: np.ndarray, n_frames: int, reference: int, gap: int) -> list[Moment]:
    frames = np.unique(np.asarray(frames, np.int64).ravel())
    frames = frames[(frames >= 0) & (frames < n_frames)]
    found = []
    if len(frames):
        breaks = np.flatnonzero(np.diff(frames) > 1) + 1
        for run in np.split(frames, breaks):
            found.append(Moment("more_blobs", int(run[0]), int(run[-1]) + 1, []))
    moments, _ = _merge(found, across_identities=True, gap=gap)
    for m in moments:
        m.score = WEIGHTS["more_blobs"] * _saturating(1.0 + (m.end - m.start) / reference)
        m.text = f"more blobs than animals in {_frames(m.start, m.end)}: check the segmentation"
    return moments


def doubtful_moments(
    trajectories: np.ndarray,
    id_probabilities: np.ndarray,
    *,
    body_length: float,
    velocity_threshold: float,
    inconsistent_frames: Iterable[int] | np.ndarray = (),
    certainty_below: float = CERTAINTY_BELOW,
    long_crossing_frames: int | None = None,
    merge_gap: int = MERGE_GAP,
    limit: int = MAX_MOMENTS,
) -> list[Moment]:
    """The moments a reviewer should look at, most doubtful first (at most `limit`).

    Kinds: ``low_certainty`` (identified stretches below `certainty_below`), ``unassigned`` (an
    identity unknown between known stretches: a tie left unassigned or a lost animal), ``jump`` (a
    displacement between consecutive own-blob positions faster than `velocity_threshold` px/frame:
    what impossible-jump correction could not fix), ``long_crossing`` (interpolated runs longer than
    `long_crossing_frames`, default :func:`default_long_crossing`), ``more_blobs`` (runs of
    `inconsistent_frames`, the frames of inconsistent_frames.csv). Moments of one kind that overlap
    or lie within `merge_gap` frames are joined. Ties rank longer moments first.
    """
    traj = np.asarray(trajectories, np.float64)
    n_frames, n_animals = traj.shape[:2]
    probs = _certainty(id_probabilities, n_frames, n_animals)
    reference = long_crossing_frames or default_long_crossing(body_length, velocity_threshold)
    segments = timeline(traj, probs)
    moments = [
        *_jumps(traj, probs, float(velocity_threshold)),
        *_low_certainty(segments, certainty_below, merge_gap),
        *_unassigned(segments, reference, merge_gap),
        *_long_crossings(segments, reference, merge_gap),
        *_more_blobs(np.asarray(list(inconsistent_frames) if not isinstance(inconsistent_frames, np.ndarray)
                                else inconsistent_frames), n_frames, reference, merge_gap),
    ]
    for m in moments:
        m.score = round(min(max(m.score, 0.0), 1.0), 4)
    moments.sort(key=lambda m: (-m.score, -(m.end - m.start), m.start, m.kind))
    return moments[:max(limit, 0)]
