"""Rebuild the real-video development set from its public sources: the record of how every clip was made.

    python tests/data/real/prepare.py SOURCES          # SOURCES: a folder with the source files of clips.json

For every clip of clips.json this cuts the frames [start, end) out of the source video, converts them to
greyscale, crops and scales them, and writes `<clip>/video.mp4` (MPEG-4 Part 2, OpenCV's `mp4v`, like the
lossy H.264 sources). It then turns the source's published tracks into the clip's reference,
`<clip>/ground_truth.npz`, in the layout `shoal simulate` writes and `shoal evaluate --truth` reads:

- each source detection becomes one point per animal: the mean of the listed skeleton nodes that are
  visible (SLEAP files) or the tracker's centroid (Tracktor CSV);
- detections are linked into `animals` identities frame by frame (Hungarian assignment on distance,
  keeping the source's own track where it continues), so fragmented source tracks become whole ones;
  a source that people proofread already (`"link": "source"`) keeps its own track numbers;
- the proofreading fixes of clips.json are applied: `swap` [first, last, i, j] exchanges identities i and j
  over frames first..last (clip frames, inclusive), `unknown` [first, last, i] blanks identity i there
  (NaN: not visible or not sure), `point` [frame, i, x, y] sets one position (clip pixels);
- `touching` marks the animal-frames whose point lies within one body length of another animal's, the
  frames `shoal evaluate` leaves out of `accuracy` (they stay in `accuracy_all`).
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

import cv2
import h5py
import numpy as np
from scipy.optimize import linear_sum_assignment

HERE = Path(__file__).resolve().parent
MANIFEST = HERE / "clips.json"


def load_manifest() -> list[dict]:
    return json.loads(MANIFEST.read_text())["clips"]


def read_frames(path: Path, start: int, end: int, crop: list[int] | None, scale: float) -> list[np.ndarray]:
    """Greyscale frames [start, end) of a video, cropped to crop = [x, y, w, h] and then scaled."""
    capture = cv2.VideoCapture(str(path))
    if not capture.isOpened():
        raise OSError(f"cannot open {path}")
    capture.set(cv2.CAP_PROP_POS_FRAMES, start)
    frames = []
    for _ in range(end - start):
        ok, frame = capture.read()
        if not ok:
            break
        grey = cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY)
        if crop:
            x, y, w, h = crop
            grey = grey[y:y + h, x:x + w]
        if scale != 1.0:
            grey = cv2.resize(grey, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
        frames.append(grey)
    capture.release()
    if len(frames) != end - start:
        raise ValueError(f"{path} has only {start + len(frames)} frames, the clip needs {end}")
    return frames


def write_mp4v(path: Path, frames: list[np.ndarray], fps: float) -> None:
    height, width = frames[0].shape
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (width, height), isColor=False)
    if not writer.isOpened():
        raise OSError(f"cannot write {path}")
    for frame in frames:
        writer.write(frame)
    writer.release()


def slp_detections(path: Path, nodes: list[str]) -> dict[int, list[tuple[np.ndarray, int, float]]]:
    """{frame: [(point, source track, score)]} from a SLEAP .slp file; user instances win over predicted ones."""
    with h5py.File(path, "r") as h5:
        frames, instances = h5["frames"][:], h5["instances"][:]
        user_points, predicted_points = h5["points"][:], h5["pred_points"][:]
        metadata = json.loads(h5["metadata"].attrs["json"])
    # points are stored in the skeleton's node order, which indexes the file's list of node names
    names = [metadata["nodes"][n["id"]]["name"] for n in metadata["skeletons"][0]["nodes"]]
    chosen = [names.index(n) for n in nodes]
    out: dict[int, list[tuple[np.ndarray, int, float]]] = {}
    for frame in frames:
        found = []
        for row in instances[frame["instance_id_start"]:frame["instance_id_end"]]:
            user = row["instance_type"] == 0
            table = user_points if user else predicted_points
            points = table[row["point_id_start"]:row["point_id_end"]][chosen]
            xy = np.stack([points["x"], points["y"]], axis=1)
            seen = points["visible"] & np.isfinite(xy).all(axis=1)
            if seen.any():
                found.append((xy[seen].mean(axis=0), int(row["track"]), np.inf if user else float(row["score"])))
        if any(score == np.inf for _, _, score in found):  # a labelled frame: the person's instances only
            found = [f for f in found if f[2] == np.inf]
        out[int(frame["frame_idx"])] = found
    return out


def tracktor_detections(path: Path) -> dict[int, list[tuple[np.ndarray, int, float]]]:
    """{frame: [(point, source track, score)]} from a Tracktor CSV (frame, pos_x, pos_y, id)."""
    out: dict[int, list[tuple[np.ndarray, int, float]]] = {}
    ids: dict[str, int] = {}
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            track = ids.setdefault(row["id"], len(ids))
            point = np.array([float(row["pos_x"]), float(row["pos_y"])])
            out.setdefault(int(float(row["frame"])), []).append((point, track, 1.0))
    return out


def link(detections: dict, start: int, end: int, n_animals: int, body_length: float) -> np.ndarray:
    """Positions [end - start, n_animals, 2] (source pixels, NaN where unseen) linking detections over frames.

    Near-duplicate detections (closer than a third of a body length) keep the best scored one. Each
    frame's detections go to the identities by a Hungarian assignment on the distance to each identity's
    last known position, with a bonus for continuing the source's own track; a detection farther than
    two body lengths from every free identity is left out.
    """
    positions = np.full((end - start, n_animals, 2), np.nan)
    last = np.full((n_animals, 2), np.nan)
    last_track = np.full(n_animals, -2)
    for f in range(start, end):
        found = sorted(detections.get(f, []), key=lambda d: -d[2])
        kept: list[tuple[np.ndarray, int, float]] = []
        for d in found:
            if all(np.hypot(*(d[0] - k[0])) > body_length / 3 for k in kept):
                kept.append(d)
        kept = kept[:n_animals]
        if not kept:
            continue
        if np.isnan(last).all():  # first sighting: the source's track order, else the order found
            order = sorted(range(len(kept)), key=lambda i: (kept[i][1] < 0, kept[i][1]))
            for identity, i in enumerate(order):
                positions[f - start, identity] = last[identity] = kept[i][0]
                last_track[identity] = kept[i][1]
            continue
        points = np.stack([k[0] for k in kept])
        tracks = np.array([k[1] for k in kept])
        cost = np.hypot(*(last[:, None, :] - points[None, :, :]).transpose(2, 0, 1))
        cost = np.where(np.isnan(cost), 4.0 * body_length, cost)
        same = (last_track[:, None] == tracks[None, :]) & (tracks[None, :] >= 0)
        cost = cost - np.where(same, 0.5 * body_length, 0.0)
        rows, cols = linear_sum_assignment(cost)
        for identity, i in zip(rows, cols, strict=True):
            if cost[identity, i] > 2.0 * body_length and np.isfinite(last[identity]).all():
                continue
            positions[f - start, identity] = points[i]
            last[identity], last_track[identity] = points[i], tracks[i]
    return positions


def apply_fixes(positions: np.ndarray, fixes: list[dict]) -> np.ndarray:
    """The proofreading of clips.json, in clip frames and clip pixels (see the module docstring)."""
    out = positions.copy()
    for fix in fixes:
        if "swap" in fix:
            first, last, i, j = fix["swap"]
            out[first:last + 1, [i, j]] = out[first:last + 1, [j, i]]
        elif "unknown" in fix:
            first, last, i = fix["unknown"]
            out[first:last + 1, i] = np.nan
        elif "point" in fix:
            frame, i, x, y = fix["point"]
            out[frame, i] = (x, y)
        else:
            raise ValueError(f"unknown fix {fix}")
    return out


def touching_flags(positions: np.ndarray, body_length: float) -> np.ndarray:
    """bool [F, N]: the animal's point is within one body length of another animal's."""
    diff = positions[:, :, None, :] - positions[:, None, :, :]
    with np.errstate(invalid="ignore"):
        near = np.hypot(diff[..., 0], diff[..., 1]) < body_length
    n = positions.shape[1]
    near[:, np.arange(n), np.arange(n)] = False
    return near.any(axis=2)


def source_positions(clip: dict, sources: Path) -> np.ndarray:
    """Linked positions of the clip's frames, in clip pixels, before proofreading."""
    ref = clip["reference"]
    tracks = sources / clip["source"]["tracks_file"]
    if ref["format"] == "slp":
        detections = slp_detections(tracks, ref["nodes"])
    elif ref["format"] == "tracktor_csv":
        detections = tracktor_detections(tracks)
    else:
        raise ValueError(f"unknown reference format {ref['format']}")
    start, end = clip["frames"]
    if ref.get("link") == "source":  # proofread tracks: the source's track numbers are the identities
        positions = np.full((end - start, clip["animals"], 2), np.nan)
        for f in range(start, end):
            for point, track, _ in detections.get(f, []):
                if 0 <= track < clip["animals"]:
                    positions[f - start, track] = point
    else:
        source_body = clip["body_length"] / clip.get("scale", 1.0)
        positions = link(detections, start, end, clip["animals"], source_body)
    crop = clip.get("crop")
    if crop:
        positions -= np.array(crop[:2], float)
    return positions * clip.get("scale", 1.0)


def build(clip: dict, sources: Path, out_root: Path = HERE, video: bool = True) -> Path:
    """Write <clip>/video.mp4 and <clip>/ground_truth.npz; returns the clip folder."""
    folder = out_root / clip["name"]
    folder.mkdir(parents=True, exist_ok=True)
    start, end = clip["frames"]
    scale = clip.get("scale", 1.0)
    if video:
        frames = read_frames(sources / clip["source"]["video_file"], start, end, clip.get("crop"), scale)
        write_mp4v(folder / "video.mp4", frames, clip["fps"])
        height, width = frames[0].shape
    else:
        capture = cv2.VideoCapture(str(folder / "video.mp4"))
        width, height = int(capture.get(cv2.CAP_PROP_FRAME_WIDTH)), int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT))
        capture.release()
    positions = apply_fixes(source_positions(clip, sources), clip["reference"].get("fixes", []))
    body_length = float(clip["body_length"])
    np.savez_compressed(
        folder / "ground_truth.npz",
        positions=positions,
        touching=touching_flags(positions, body_length),
        body_length=np.float64(body_length),
        fps=np.float64(clip["fps"]),
        width=np.int64(width),
        height=np.int64(height),
        n_animals=np.int64(clip["animals"]),
        preset=np.str_(f"real:{clip['name']}"),
    )
    return folder


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sources", type=Path, help="folder holding the source files named in clips.json")
    parser.add_argument("--clips", help="comma-separated clip names (default: all)")
    parser.add_argument("--reference-only", action="store_true", help="rewrite ground_truth.npz, keep video.mp4")
    args = parser.parse_args(argv)
    clips = load_manifest()
    if args.clips:
        wanted = set(args.clips.split(","))
        clips = [c for c in clips if c["name"] in wanted]
    for clip in clips:
        folder = build(clip, args.sources, video=not args.reference_only)
        print(f"{clip['name']}: {folder}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
