"""`python -m bench.probe_segmentation`: how well the probe's automatic segmentation fits, case by case.

Only the probe runs (no tracking): given just the number of animals, it picks the segmentation,
and this script re-segments 50 evenly spaced frames with that choice and reports the share that
show exactly N blobs, and the share whose N blobs are the N true animals (each blob within half a
body length of its own animal). Cases: the benchmark's (cut to 300 frames unless --full), its hard
cases (full length) and hard scenes drawn by ``tests/segmentation_scenes.py`` at realistic sizes.
Run it before and after a change to the probe to compare (``--out`` keeps the table as JSON).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
from scipy.optimize import linear_sum_assignment

from bench.cases import CASES, HARD_CASES, ensure_video
from services.segmenter.work import SegmentationError, probe
from shoal.params import TrackingParams
from shoal.roi import roi_mask
from shoal.segmentation import segment_frame
from shoal.video import probe_video, sample_frames
from tests.segmentation_scenes import Scene

BENCH = Path(__file__).resolve().parent
EVAL_FRAMES = 50

#: hard scenes at the sizes of the real clips they imitate (issue 20)
SCENES: dict[str, Scene] = {
    "flies_mesh": Scene(n_animals=2, n_frames=150, width=1000, height=1000, floor=40, animal=170, body_length=60,
                        body_width=20, debris=60, moving_debris=6, shadow=1.2, vignette=0.3, jpeg_quality=60,
                        seed=1),
    "guppy_school": Scene(n_animals=8, n_frames=150, width=1000, height=1000, floor=190, animal=70,
                          body_length=22, body_width=6, school=True, gradient=0.4, vignette=0.4, jpeg_quality=40,
                          noise=3, seed=2),
    "zebrafish_ends": Scene(n_animals=14, n_frames=200, width=524, height=338, floor=170, animal=70,
                            body_length=16, body_width=4, dark_ends=0.12, noise=3, seed=3),
    "still_dark": Scene(n_animals=5, n_frames=150, width=500, height=500, floor=180, animal=60, body_length=30,
                        body_width=8, still=3, gradient=0.3, seed=4),
    "light_vignette": Scene(n_animals=6, n_frames=150, width=600, height=600, floor=50, animal=200,
                            body_length=30, body_width=9, vignette=0.6, debris=40, jpeg_quality=70, seed=5),
}
BENCH_CASES = ("fish4", "fish8", "flies10", "fish20", "mice", "nogf")


def case_video(name: str, cache: Path, full: bool = False) -> tuple[Path, np.ndarray, float, int, list[str] | None]:
    """Video path, true positions [F, N, 2], body length, N and ROI of a named case."""
    if name in SCENES:
        scene = SCENES[name]
        folder = cache / "scenes"
        folder.mkdir(parents=True, exist_ok=True)
        video, truth = folder / f"{name}.avi", folder / f"{name}.npy"
        if not (video.is_file() and truth.is_file()):
            _, positions = scene.write(video)
            np.save(truth, positions)
        return video, np.load(truth), scene.body_length, scene.n_animals, None
    case = CASES[name] if full or name in HARD_CASES else CASES[name].quick()
    files = ensure_video(case, cache)
    gt = np.load(files["ground_truth"])
    return files["video"], gt["positions"], float(gt["body_length"]), case.n_animals, None


def fit(result, info, roi, truth: np.ndarray, body_length: float, n: int) -> tuple[float, float]:
    """Shares of evaluation frames with exactly n blobs, and with exactly the n true animals."""
    picks = np.linspace(0, info.n_frames - 1, EVAL_FRAMES).round().astype(int)
    background = np.load(result.background) if result.background else None
    extra = {"sign": result.background_sign} if hasattr(result, "background_sign") else {}
    exact = right = 0
    for index, gray in zip(picks, sample_frames(info, picks), strict=True):
        table = segment_frame(gray, int(index), result.intensity_ths, result.area_ths, background, roi, **extra)
        if len(table) != n:
            continue
        exact += 1
        distance = np.linalg.norm(table.centroid[:, None] - truth[index][None], axis=2)
        rows, cols = linear_sum_assignment(distance)
        right += bool(np.all(distance[rows, cols] < 0.5 * body_length))
    return exact / len(picks), right / len(picks)


def describe(result) -> str:
    lo, hi = result.intensity_ths
    if result.background is None:
        how = f"intensity [{lo:g}, {hi:g}]"
    else:
        sign = {-1: "darker", 1: "lighter"}.get(getattr(result, "background_sign", 0), "|diff|")
        how = f"bkg {sign} > {lo:g}"
    return f"{how}, area [{result.area_ths[0]:g}, {result.area_ths[1]:g}]"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.probe_segmentation", description=__doc__.splitlines()[0])
    p.add_argument("--cases", default=",".join((*BENCH_CASES, *HARD_CASES, *SCENES)),
                   help="comma-separated case names")
    p.add_argument("--cache", default=str(BENCH / "out" / "cache"), help="rendered videos, reused across runs")
    p.add_argument("--full", action="store_true", help="benchmark cases at full length (default: 300 frames)")
    p.add_argument("--out", help="also write the rows as JSON here")
    args = p.parse_args(argv)
    rows = []
    print(f"{'case':16} {'probe s':>7} {'exact N':>7} {'right':>6}  chosen")
    for name in [c.strip() for c in args.cases.split(",") if c.strip()]:
        video, truth, body_length, n, rois = case_video(name, Path(args.cache), args.full)
        info = probe_video([str(video)])
        params = TrackingParams(video_paths=[str(video)], number_of_animals=n, roi_list=rois).validate()
        roi = roi_mask(rois, info.width, info.height) if rois else None
        with tempfile.TemporaryDirectory() as job_dir:
            t0 = time.perf_counter()
            try:
                result = probe(info, params, Path(job_dir))
            except SegmentationError as exc:
                seconds = time.perf_counter() - t0
                rows.append({"case": name, "probe_s": seconds, "exact": 0.0, "right": 0.0, "chosen": f"FAILED: {exc}"})
                print(f"{name:16} {seconds:7.2f} {'-':>7} {'-':>6}  FAILED: {exc}")
                continue
            seconds = time.perf_counter() - t0
            exact, right = fit(result, info, roi, truth, body_length, n)
        rows.append({"case": name, "probe_s": seconds, "exact": exact, "right": right, "chosen": describe(result)})
        print(f"{name:16} {seconds:7.2f} {exact:7.0%} {right:6.0%}  {describe(result)}")
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
