"""`python -m bench.review_frames`: latency of the review page's frame requests (issue 16).

The page steps and scrubs through the session's original video; a request is `FrameSource.jpeg(i)`
(the bytes the HTTP route returns). Target: p95 <= 100 ms on a 1000x1000 H.264 video of 3000 frames
on the 2-core machine. Each access pattern is measured **cold** (a fresh source without a disk proxy:
the sequential decoder, seeks and the memory cache only) and **warm** (a fresh source on a finished
proxy), plus random jumps **during** the background pass that builds the proxy. References in the
same run: OpenCV decoding the video in order (ms per frame) and seeking to a random frame
(`shoal.video.read_frame`, which opens the file and seeks).
"""

from __future__ import annotations

import argparse
import random
import shutil
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from bench import report
from bench.cases import Case, ensure_video
from bench.report import _table
from shoal.review.frames import FrameSource
from shoal.video import probe_video, read_frame, read_frames

BENCH = Path(__file__).resolve().parent
TARGET_MS = 100.0
SCRUB_PERIOD_S = 0.1  # random jumps during the pass come at a user's pace (a slider drag), not flat out
PATTERNS = {"step +1": 1, "step −1": -1, "step +10": 10, "step −10": -10, "random jumps": None}


def _indices(pattern: int | None, n_frames: int, requests: int, rng: random.Random) -> list[int]:
    """Frames a user asks for: a walk by `pattern` from a random start (inside the video when it fits), or
    uniformly random frames (scrubbing)."""
    if pattern is None:
        return [rng.randrange(n_frames) for _ in range(requests)]
    span = abs(pattern) * (requests - 1)
    start = rng.randrange(max(1, n_frames - span))
    start = start if pattern > 0 else start + span
    return [(start + k * pattern) % n_frames for k in range(requests)]


def _latencies(source: FrameSource, indices: list[int], until=None, period_s: float = 0.0) -> list[float]:
    """Milliseconds of each request, in order, one every `period_s` at most; stops early once `until()` is true."""
    out = []
    for index in indices:
        if until is not None and until():
            break
        start = time.perf_counter()
        source.jpeg(index)
        out.append((time.perf_counter() - start) * 1000)
        time.sleep(max(0.0, start + period_s - time.perf_counter()))
    return out


def _stats(ms: list[float]) -> dict:
    return {"n": len(ms), "p50": float(np.percentile(ms, 50)), "p95": float(np.percentile(ms, 95)),
            "max": max(ms), "over": sum(x > TARGET_MS for x in ms)}


def _mark(stats: dict) -> str:
    return "met" if stats["p95"] <= TARGET_MS else "**missed**"


def _wait(source: FrameSource) -> float:
    start = time.perf_counter()
    while source.progress()["running"]:
        time.sleep(0.05)
    if source.progress()["error"]:
        raise SystemExit(f"the background pass failed: {source.progress()['error']}")
    return time.perf_counter() - start


def run(frames: int, side: int, requests: int, work: Path, seed: int) -> dict:
    case = Case(f"review_h264_{side}", "fish", 8, frames, side, side, seed=12, hard=(("codec", "h264"),))
    made = time.perf_counter()
    video = ensure_video(case, work / "cache")["video"]
    print(f"video {video} ({time.perf_counter() - made:.0f} s to make or find)", flush=True)
    info = probe_video([str(video)])
    rng = random.Random(seed)
    start = time.perf_counter()
    decoded = sum(1 for _ in read_frames(info, 0, info.n_frames))
    sequential_ms = (time.perf_counter() - start) * 1000 / decoded
    seek_ms = []
    for index in [rng.randrange(info.n_frames) for _ in range(20)]:
        start = time.perf_counter()
        read_frame(info, index)
        seek_ms.append((time.perf_counter() - start) * 1000)
    walks = {name: _indices(step, info.n_frames, requests, rng) for name, step in PATTERNS.items()}

    cold = {}
    for name, indices in walks.items():
        with FrameSource(info) as source:
            cold[name] = _stats(_latencies(source, indices))
        print(f"cold {name}: {cold[name]}", flush=True)

    proxy = work / "proxy"
    shutil.rmtree(proxy, ignore_errors=True)
    with FrameSource(info, proxy) as source:
        pass_s = _wait(source)
    proxy_bytes = sum(p.stat().st_size for p in proxy.iterdir())
    print(f"background pass {pass_s:.1f} s, proxy {proxy_bytes / 2**20:.0f} MiB", flush=True)

    warm = {}
    for name, indices in walks.items():
        with FrameSource(info, proxy) as source:
            assert source.progress()["indexed"] == info.n_frames, source.progress()
            warm[name] = _stats(_latencies(source, indices))
        print(f"warm {name}: {warm[name]}", flush=True)

    shutil.rmtree(proxy)
    with FrameSource(info, proxy) as source:
        start = time.perf_counter()
        scrubbing = _indices(None, info.n_frames, 100 * requests, rng)
        during = _stats(_latencies(source, scrubbing, lambda: not source.progress()["running"], SCRUB_PERIOD_S))
        pass_loaded_s = time.perf_counter() - start + _wait(source)
    print(f"random jumps during the pass: {during}; pass {pass_loaded_s:.1f} s", flush=True)
    return {"video": str(video), "frames": info.n_frames, "side": side, "requests": requests,
            "sequential_ms": sequential_ms, "seek_ms": _stats(seek_ms), "cold": cold, "warm": warm,
            "during": during, "pass_s": pass_s, "pass_loaded_s": pass_loaded_s, "proxy_bytes": proxy_bytes}


def markdown(r: dict, meta: dict) -> list[str]:
    def ms(x: float) -> str:
        return f"{x:.2f}" if x < 1 else f"{x:.1f}"

    rows = []
    for name in PATTERNS:
        c, w = r["cold"][name], r["warm"][name]
        rows.append([name, ms(c["p50"]), ms(c["p95"]), ms(c["max"]), str(c["over"]), ms(w["p50"]), ms(w["p95"]),
                     ms(w["max"]), str(w["over"]), f"{c['p95'] / w['p95']:.0f}", _mark(c), _mark(w)])
    d = r["during"]
    rows.append([f"random jumps during the pass ({d['n']} requests, {1 / SCRUB_PERIOD_S:.0f}/s)", ms(d["p50"]),
                 ms(d["p95"]), ms(d["max"]), str(d["over"]), "", "", "", "", "",
                 _mark(d), ""])
    m = meta["machine"]
    return [
        f"- date: {meta['date']}", f"- commit: {meta['commit']}", f"- command: `{meta['command']}`",
        f"- machine: {m['cpu']}, **{m['cores']} cores**, {m['memory']}",
        f"- video: {r['side']}x{r['side']} H.264 (libx264 CRF 23, key frames about every 250 frames), "
        f"{r['frames']} frames, 8 fish; {r['requests']} requests per pattern",
        f"- reference: OpenCV decodes a frame in order in {r['sequential_ms']:.2f} ms; seeking to a random frame "
        f"(`read_frame`) takes p50 {r['seek_ms']['p50']:.0f} / p95 {r['seek_ms']['p95']:.0f} ms",
        f"- background pass (decode + JPEG quality 85 of every frame into the proxy): {r['pass_s']:.1f} s alone, "
        f"{r['pass_loaded_s']:.1f} s while random jumps were requested; proxy {r['proxy_bytes'] / 2**20:.0f} MiB "
        f"({r['proxy_bytes'] / r['frames'] / 1024:.0f} KiB a frame)",
        "",
        "Latency of `FrameSource.jpeg` in ms. Cold: a fresh source without a proxy (sequential decoder, seeks, "
        "memory cache); warm: a fresh source on the finished proxy; > 100 = requests slower than the target; "
        f"ratio = cold p95 / warm p95; target p95 ≤ {TARGET_MS:.0f} ms.",
        "",
        *_table(["pattern", "cold p50", "cold p95", "cold max", "cold > 100", "warm p50", "warm p95", "warm max",
                 "warm > 100", "cold/warm p95", "cold target", "warm target"], rows),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.review_frames", description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=3000, help="frames of the video (default: 3000)")
    parser.add_argument("--side", type=int, default=1000, help="width and height in px, even (default: 1000)")
    parser.add_argument("--requests", type=int, default=200, help="requests per access pattern (default: 200)")
    parser.add_argument("--work", type=Path, default=Path("/tmp/shoal-bench-review-frames"),
                        help="videos (reused by later runs) and the proxy (default: %(default)s)")
    parser.add_argument("--out", type=Path, default=BENCH / "results", help="where review_frames.md goes")
    parser.add_argument("--seed", type=int, default=0, help="seed of the access patterns")
    args = parser.parse_args(argv)
    meta = {"date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"), "commit": report.commit(),
            "command": " ".join(["python -m bench.review_frames", *(argv if argv is not None else sys.argv[1:])]),
            "machine": report.machine()}
    result = run(args.frames, args.side, args.requests, args.work, args.seed)
    lines = markdown(result, meta)
    print("\n".join(lines))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "review_frames.md").write_text("# Review page frames (issue 16)\n\n" + "\n".join(lines) + "\n")
    missed = [name for name in PATTERNS if result["warm"][name]["p95"] > TARGET_MS]
    return 1 if missed else 0


if __name__ == "__main__":
    raise SystemExit(main())
