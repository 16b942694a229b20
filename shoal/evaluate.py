"""Scoring trajectories against ground truth: is every animal still who we say it is?

The tracker names identities arbitrarily, so predicted identities are first matched to true ones by
ONE global one-to-one mapping (Hungarian assignment maximising the frames in which a predicted
identity lies within half a body length of a true animal). Under that mapping:

- *accuracy*: fraction of true animal-frames outside crossings whose mapped prediction lies within
  half a body length: the measure idtracker.ai reports (Romero-Ferrero et al. 2019, crossings
  excluded); *accuracy_all* includes frames where the animal touches another;
- *IDF1* = 2 IDTP / (true animal-frames + predicted animal-frames) (Ristani et al. 2016), the measure
  of the newer idtracker.ai (Torrents et al. 2025);
- *identity switches*: frame by frame matching of points, counting how often the predicted identity
  on a true animal changes (a gap is not a switch);
- *coverage* / *detection rate*: how many true animal-frames have any prediction nearby, whatever
  its identity (detection quality, apart from identity quality).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from scipy.optimize import linear_sum_assignment

from shoal.help import HelpFormatter


@dataclass
class Scores:
    accuracy: float  # identity accuracy, animal-frames outside crossings
    accuracy_all: float  # identity accuracy, all animal-frames
    idf1: float
    id_switches: int
    coverage: float  # true animal-frames with any prediction within half a body length
    detection_rate: float  # the same, outside crossings
    n_frames: int
    n_animals: int
    mapping: dict[int, int]  # predicted identity (column) -> true identity (column)


def _within(pred: np.ndarray, truth: np.ndarray, radius: float) -> np.ndarray:
    """bool [F, M, N]: predicted point p is within `radius` of true point t (NaN is never)."""
    diff = pred[:, :, None, :] - truth[:, None, :, :]
    with np.errstate(invalid="ignore"):
        return np.hypot(diff[..., 0], diff[..., 1]) < radius


def _chunk_frames(m: int, n: int) -> int:
    """Frames per chunk that keep an [F, M, N] proximity table around 16 M entries."""
    return max(1, 16_000_000 // max(m * n, 1))


def evaluate(
    truth_positions: np.ndarray, touching: np.ndarray, body_length: float, pred: np.ndarray
) -> Scores:
    """Score predicted trajectories pred [F, M, 2] (NaN where unknown) against the truth [F, N, 2].

    Animal-frames where the truth is not finite are left out of every measure.
    """
    truth = np.asarray(truth_positions, np.float64)
    touching = np.asarray(touching, bool)
    pred = np.asarray(pred, np.float64)
    if truth.ndim != 3 or truth.shape[2] != 2 or touching.shape != truth.shape[:2]:
        raise ValueError(f"truth must be [F, N, 2] with touching [F, N], got {truth.shape}, {touching.shape}")
    if pred.ndim != 3 or pred.shape[2] != 2:
        raise ValueError(f"predictions must be [F, M, 2], got {pred.shape}")
    if pred.shape[0] != truth.shape[0]:
        raise ValueError(f"predictions have {pred.shape[0]} frames, the truth has {truth.shape[0]}")
    n_frames, n_true = truth.shape[:2]
    n_pred = pred.shape[1]
    radius = body_length / 2.0
    known = np.isfinite(truth).all(axis=2)

    overlap = np.zeros((n_pred, n_true), np.int64)
    near_any = np.zeros((n_frames, n_true), bool)
    step = _chunk_frames(n_pred, n_true)
    for start in range(0, n_frames, step):
        close = _within(pred[start:start + step], truth[start:start + step], radius)
        overlap += close.sum(axis=0)
        near_any[start:start + step] = close.any(axis=1)

    rows, cols = linear_sum_assignment(overlap, maximize=True)
    mapping = {int(p): int(t) for p, t in zip(rows, cols, strict=True) if overlap[p, t] > 0}
    hit = np.zeros((n_frames, n_true), bool)
    for p, t in mapping.items():
        d = pred[:, p] - truth[:, t]
        with np.errstate(invalid="ignore"):
            hit[:, t] = np.hypot(d[:, 0], d[:, 1]) < radius

    alone = known & ~touching
    n_true_frames = int(known.sum())
    n_pred_frames = int(np.isfinite(pred).all(axis=2).sum())
    idtp = int((hit & known).sum())
    return Scores(
        accuracy=_fraction(hit, alone),
        accuracy_all=_fraction(hit, known),
        idf1=2.0 * idtp / (n_true_frames + n_pred_frames) if n_true_frames + n_pred_frames else 0.0,
        id_switches=identity_switches(truth, pred, radius),
        coverage=_fraction(near_any, known),
        detection_rate=_fraction(near_any, alone),
        n_frames=n_frames,
        n_animals=n_true,
        mapping=mapping,
    )


def _fraction(flags: np.ndarray, where: np.ndarray) -> float:
    total = int(where.sum())
    return float((flags & where).sum() / total) if total else 0.0


def identity_switches(truth: np.ndarray, pred: np.ndarray, radius: float) -> int:
    """Times the predicted identity matched to a true animal changes to another identity.

    Points are matched frame by frame (Hungarian on distance, pairs within `radius` only, keeping
    last frame's match where it is still within reach, so two predictions sitting on one merged
    blob do not count as switching back and forth). A frame where an animal has no match is a gap
    and neither makes nor breaks a switch.
    """
    n_frames, n_true = truth.shape[:2]
    last = np.full(n_true, -1)
    switches = 0
    for f in range(n_frames):
        diff = pred[f][:, None, :] - truth[f][None, :, :]
        dist = np.hypot(diff[..., 0], diff[..., 1])
        with np.errstate(invalid="ignore"):
            close = dist < radius
        if not close.any():
            continue
        if (close.sum(axis=0) <= 1).all() and (close.sum(axis=1) <= 1).all():
            p_idx, t_idx = np.nonzero(close)  # unambiguous: no assignment needed
        else:  # as in CLEAR MOT, a match of the previous frame that is still valid is kept
            cost = np.where(close, dist, 1e9)
            held = np.flatnonzero(last >= 0)
            held = held[close[last[held], held]]
            cost[last[held], held] -= 2.0 * radius
            p_idx, t_idx = linear_sum_assignment(cost)
            keep = close[p_idx, t_idx]
            p_idx, t_idx = p_idx[keep], t_idx[keep]
        changed = (last[t_idx] >= 0) & (last[t_idx] != p_idx)
        switches += int(changed.sum())
        last[t_idx] = p_idx
    return switches


def load_predictions(path: str | Path) -> np.ndarray:
    """Trajectories [F, M, 2] from a session folder, a trajectories .npy or a trajectories .csv.

    Session folders are searched for the files Shoal and idtracker.ai write:
    trajectories/trajectories.npy (idtracker.ai v6 and Shoal), trajectories/without_gaps.npy or
    with_gaps.npy (older idtracker.ai), then the CSV export.
    """
    path = Path(path)
    if path.is_dir():
        candidates = ["trajectories/trajectories.npy", "trajectories/without_gaps.npy",
                      "trajectories/with_gaps.npy", "trajectories.npy",
                      "trajectories/trajectories_csv/trajectories.csv", "trajectories.csv"]
        found = next((path / c for c in candidates if (path / c).is_file()), None)
        if found is None:
            raise FileNotFoundError(f"no trajectories file in the session folder {path}")
        path = found
    if not path.is_file():
        raise FileNotFoundError(f"no such file: {path}")
    if path.suffix == ".csv":
        table = np.genfromtxt(path, delimiter=",", skip_header=1, ndmin=2)
        if table.shape[1] < 3 or (table.shape[1] - 1) % 2:
            raise ValueError(f"{path} is not a time,x1,y1,x2,y2,... table")
        trajectories = table[:, 1:].reshape(len(table), -1, 2)
    elif path.suffix == ".npy":
        loaded = np.load(path, allow_pickle=True)
        if loaded.dtype == object and loaded.shape == ():
            content = loaded.item()
            if not isinstance(content, dict) or "trajectories" not in content:
                raise ValueError(f"{path} holds no 'trajectories' entry")
            loaded = content["trajectories"]
        trajectories = np.asarray(loaded, np.float64)
    else:
        raise ValueError(f"cannot read predictions from {path}: expected a folder, .npy or .csv")
    if trajectories.ndim != 3 or trajectories.shape[2] != 2:
        raise ValueError(f"trajectories in {path} have shape {trajectories.shape}, expected [F, M, 2]")
    return trajectories


def load_truth(path: str | Path) -> tuple[np.ndarray, np.ndarray, float]:
    """(positions [F, N, 2], touching [F, N], body_length) from a ground_truth.npz."""
    with np.load(path) as gt:
        return gt["positions"], gt["touching"], float(gt["body_length"])


def format_scores(s: Scores) -> str:
    """Scores for people; identities are numbered from 1 as in trajectory files."""
    mapping = ", ".join(f"{p + 1}->{t + 1}" for p, t in sorted(s.mapping.items())) or "none"
    return "\n".join([
        f"identity accuracy, outside crossings: {s.accuracy:.2%}",
        f"identity accuracy, all frames:        {s.accuracy_all:.2%}",
        f"IDF1:                                 {s.idf1:.4f}",
        f"identity switches:                    {s.id_switches}",
        f"coverage (any identity):              {s.coverage:.2%}",
        f"detection rate, outside crossings:    {s.detection_rate:.2%}",
        f"frames: {s.n_frames}, animals: {s.n_animals}",
        f"identities (predicted->true): {mapping}",
    ])


def arg_parser() -> argparse.ArgumentParser:
    """The flags of `shoal evaluate`."""
    parser = argparse.ArgumentParser(prog="shoal evaluate", description=__doc__.splitlines()[0],
                                     formatter_class=HelpFormatter)
    truth = parser.add_mutually_exclusive_group(required=True)
    truth.add_argument("--truth", help="ground_truth.npz written by `shoal simulate`")
    truth.add_argument("--truth-from-review", metavar="SESSION",
                       help="the frame ranges checked in `shoal review SESSION` (its corrections.json), corrected, "
                            "as ground truth: scores --pred on those frames only, as idtracker.ai's validator does "
                            "(give the same session to score its uncorrected tracking)")
    parser.add_argument("--pred", required=True, help="session folder (its trajectories/, never the corrected "
                        "ones), trajectories .npy or .csv")
    parser.add_argument("--json", action="store_true", help="print the scores as JSON")
    return parser


def main(argv: list[str] | None = None) -> int:
    """`shoal evaluate`: score a tracking result against ground truth."""
    parser = arg_parser()
    args = parser.parse_args(argv)
    checked: tuple[int, int] | None = None  # (frames checked, frames in all) with --truth-from-review
    try:
        if args.truth_from_review:
            scores, checked = evaluate_on_review(args.truth_from_review, load_predictions(args.pred))
        else:
            positions, touching, body_length = load_truth(args.truth)
            scores = evaluate(positions, touching, body_length, load_predictions(args.pred))
    except OSError as err:
        source = args.truth or args.truth_from_review
        print(f"shoal evaluate: cannot read {err.filename or source}: {err.strerror or err}", file=sys.stderr)
        return 2
    except (ValueError, KeyError) as err:
        print(f"shoal evaluate: {err}", file=sys.stderr)
        return 2
    if args.json:
        out = asdict(scores)
        out["mapping"] = {str(p): t for p, t in scores.mapping.items()}
        if checked is not None:
            out["checked_frames"], out["total_frames"] = checked
        print(json.dumps(out))
    else:
        print(format_scores(scores))
        if checked is not None:
            print(f"checked frames: {checked[0]} of {checked[1]} (the scores cover these only)")
    return 0


def evaluate_on_review(session: str | Path, pred: np.ndarray) -> tuple[Scores, tuple[int, int]]:
    """Score `pred` on the frames a person checked in `shoal review` (their corrected trajectories
    are the truth); returns the scores and (frames checked, frames in all). Only the checked frames
    are scored, so predictions elsewhere do not count against IDF1."""
    from shoal.review.corrections import CorrectionLog  # the review's files, only when asked
    from shoal.review.outputs import review_truth

    positions, touching, body_length = review_truth(session)
    if pred.shape[0] != positions.shape[0]:
        raise ValueError(f"predictions have {pred.shape[0]} frames, the reviewed session {positions.shape[0]}")
    ranges = CorrectionLog.load(session).checked_ranges()
    frames = np.concatenate([np.arange(start, end) for start, end in ranges])
    scores = evaluate(positions[frames], touching[frames], body_length, pred[frames])
    return scores, (len(frames), positions.shape[0])


if __name__ == "__main__":
    sys.exit(main())
