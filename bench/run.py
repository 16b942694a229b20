"""`python -m bench.run`: simulate the cases, track them through the real services, print one table.

Per case, in one run: decode time of the video, Shoal end to end in local mode (with identities),
peak RSS per service, the gateway's stage breakdown, identity scores against the simulator's
truth, and the same video tracked by the position-only baseline. Then identifier crops/s at batch
sizes 64-1024 (CPU, and CUDA when present) and, with --scaling, how time and memory grow with
frames and animals. Results go to --out (results.json, results.md, accuracy_time.png) and, for
full runs, to the Results section of bench/README.md.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from bench import report
from bench.cases import CASES, DEFAULT_CASES, QUICK_FRAMES, Case, animals_case, ensure_video, frames_case
from bench.measure import CaseResult, identifier_throughput, loglog_slope, run_case, torch_threads

BENCH = Path(__file__).resolve().parent
BATCH_SIZES = (64, 128, 256, 512, 1024)
DEFAULT_CROP_SIDE = 40


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v.strip()]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.splitlines()[0])
    p.add_argument("--cases", default=",".join(DEFAULT_CASES),
                   help=f"comma-separated, of {', '.join(CASES)}; 'none' for no case (default: all but long)")
    p.add_argument("--quick", action="store_true", help=f"cut every case to {QUICK_FRAMES} frames (smoke check)")
    p.add_argument("--out", help="results folder (default: bench/results, or bench/out/quick with --quick)")
    p.add_argument("--cache", default=str(BENCH / "out" / "cache"), help="rendered videos, reused across runs")
    p.add_argument("--work", default=str(BENCH / "out" / "work"), help="service logs and sessions while running")
    p.add_argument("--segmenters", type=int, help="segmenter processes (default: cores - 1, as shoal track)")
    p.add_argument("--no-baseline", action="store_true", help="skip the position-only baseline runs")
    p.add_argument("--no-micro", action="store_true", help="skip the identifier crops/s micro-benchmark")
    p.add_argument("--scaling", action="store_true", help="also measure growth with frames and animals")
    p.add_argument("--scaling-base", type=int, help="base frame count (default 500, 100 with --quick)")
    p.add_argument("--scaling-mults", default="1,4,16", help="multiples of the base frame count")
    p.add_argument("--scaling-animals", default="4,8,20", help="animal counts at the base frame count")
    p.add_argument("--readme", action=argparse.BooleanOptionalAction, default=None,
                   help="update bench/README.md's Results section (default: yes, except with --quick)")
    p.add_argument("--keep", action="store_true", help="keep session folders and service logs of every run")
    p.add_argument("--job-timeout", type=float, default=6 * 3600, help="seconds before a job is cancelled")
    args = p.parse_args(argv)
    names = [] if args.cases.strip() == "none" else [c.strip() for c in args.cases.split(",") if c.strip()]
    unknown = [n for n in names if n not in CASES]
    if unknown:
        p.error(f"unknown case(s) {', '.join(unknown)}; choose from {', '.join(CASES)}")
    args.case_list = [CASES[n].quick() if args.quick else CASES[n] for n in names]
    args.out = Path(args.out) if args.out else BENCH / ("out/quick" if args.quick else "results")
    args.scaling_base = args.scaling_base or (100 if args.quick else 500)
    if args.readme is None:
        args.readme = not args.quick
    return args


def track_case(case: Case, args: argparse.Namespace, baseline: bool) -> CaseResult:
    t0 = time.perf_counter()
    files = ensure_video(case, Path(args.cache))
    rendered = time.perf_counter() - t0
    if rendered > 1.0:
        print(f"  rendered {case.name} ({case.key()}) in {rendered:.0f} s", flush=True)
    result = run_case(case, files, Path(args.work), segmenters=args.segmenters, baseline=baseline,
                      timeout_s=args.job_timeout, keep=args.keep)
    if result.error:
        print(f"  {case.name}: FAILED: {result.error}", flush=True)
    else:
        print(f"  {case.name}: acc {result.scores['accuracy']:.4f}, wall {result.wall_s:.1f} s, "
              f"decode {result.decode_s:.2f} s, e2e/decode {result.decode_ratio:.1f}", flush=True)
    return result


def micro_benchmark(results: list[CaseResult], quick: bool) -> tuple[list[dict], bool]:
    """Identifier crops/s at the crop side the first tracked case used; CUDA too when present."""
    import torch

    side = next((int(r.probe["id_image_size_px"]) for r in results if r.probe.get("id_image_size_px")),
                DEFAULT_CROP_SIDE)
    threads = torch_threads()
    torch.set_num_threads(threads)
    gpu = torch.cuda.is_available()
    rows = []
    for device in ["cpu"] + (["cuda"] if gpu else []):
        print(f"  identifier forward pass on {device}, crops {side}x{side}", flush=True)
        rows += identifier_throughput(side, device, BATCH_SIZES, 0.3 if quick else 2.0)
    for r in rows:
        r["threads"] = threads
    if not gpu:
        print("  no GPU present: CUDA crops/s not measured", flush=True)
    return rows, gpu


def scaling(args: argparse.Namespace) -> dict:
    """Wall time and peak RSS for 4 fish at several lengths and for several animal counts."""
    out: dict = {"frames": [], "animals": []}
    base = args.scaling_base
    points = [("frames", frames_case(base * m)) for m in _ints(args.scaling_mults)]
    points += [("animals", animals_case(n, base)) for n in _ints(args.scaling_animals)]
    for axis, case in points:
        print(f"scaling {axis}: {case.name}", flush=True)
        out[axis].append(track_case(case, args, baseline=False).to_dict())
    for axis, key in (("frames", "n_frames"), ("animals", "n_animals")):
        runs = [r for r in out[axis] if not r["error"]]
        xs = [r[key] for r in runs]
        services = sorted({k for r in runs for k in report.service_rss(r["peak_rss_mib"])})
        out[f"{axis}_exponents"] = {
            "wall_s": loglog_slope(xs, [r["wall_s"] for r in runs]),
            "peak_rss": loglog_slope(xs, [max(r["peak_rss_mib"].values(), default=math.nan) for r in runs]),
            "rss_per_service": {s: loglog_slope(xs, [report.service_rss(r["peak_rss_mib"]).get(s, math.nan)
                                                     for r in runs]) for s in services},
        }
    return out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    command = "python -m bench.run " + " ".join(sys.argv[1:] if argv is None else argv)
    results: list[CaseResult] = []
    for case in args.case_list:
        print(f"case {case.name}: {case.n_animals} {case.preset}, {case.n_frames} frames, {case.width}x{case.height}",
              flush=True)
        results.append(track_case(case, args, baseline=not args.no_baseline))
    micro, gpu = ([], False) if args.no_micro else micro_benchmark(results, args.quick)
    if args.no_micro:
        import torch

        gpu = torch.cuda.is_available()
    scale = scaling(args) if args.scaling else {}

    meta = {"date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"), "commit": report.commit(),
            "command": command, "machine": report.machine(), "quick": args.quick, "quick_frames": QUICK_FRAMES}
    lines = report.header(meta) + report.case_tables(results) + report.throughput_table(micro, gpu, results)
    if scale:
        lines += report.scaling_table(scale)
    lines += report.targets(results, micro, scale, gpu)
    markdown = "\n".join(lines) + "\n"
    print()
    print(markdown)

    args.out.mkdir(parents=True, exist_ok=True)
    payload = {**meta, "cases": [r.to_dict() for r in results], "identifier_crops_per_s": micro,
               "gpu_present": gpu, "scaling": scale}
    (args.out / "results.json").write_text(json.dumps(_jsonable(payload), indent=1, allow_nan=False) + "\n")
    (args.out / "results.md").write_text(markdown)
    png = args.out / "accuracy_time.png"
    print(report.plot(results, png))
    if args.readme:
        report.update_readme(BENCH / "README.md", markdown, png)
        print(f"updated {BENCH / 'README.md'}")
    print(f"results: {args.out / 'results.json'}, {args.out / 'results.md'}")
    failed = [r.case for r in results if r.error]
    return 1 if failed else 0


def _jsonable(value):
    """Strict JSON: NaN and infinities (a figure that could not be measured) become null."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Path):
        return str(value)
    return value


if __name__ == "__main__":
    sys.exit(main())
