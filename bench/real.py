"""`python -m bench.real`: track every clip of the real-video development set as a user would, score it.

Each clip of tests/data/real/clips.json is tracked by `shoal track` in local mode with only
`--animals N` (and the clip's `--roi` where its arena needs one), then scored against the clip's
reference with `shoal evaluate`'s measures. The table shows, per clip: identity accuracy outside
crossings (the headline of `shoal evaluate`) and over all animal-frames, Shoal's estimated accuracy
(session.json), estimated minus measured (all animal-frames, the share the estimate speaks of), and
the wall time of `shoal track`. A clip whose run fails shows the error instead.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from shoal.evaluate import evaluate, load_predictions, load_truth

REPO = Path(__file__).resolve().parent.parent
REAL = REPO / "tests" / "data" / "real"


@dataclass
class ClipResult:
    name: str
    species: str
    animals: int
    frames: int
    wall_s: float
    accuracy: float = math.nan  # outside crossings, as `shoal evaluate` reports first
    accuracy_all: float = math.nan
    idf1: float = math.nan
    id_switches: int = -1
    estimated: float = math.nan  # session.json statistics.estimated_accuracy
    warnings: list[str] = field(default_factory=list)
    error: str = ""

    @property
    def overstatement(self) -> float:
        """Estimated minus measured accuracy over all animal-frames: positive is a promise not kept."""
        return self.estimated - self.accuracy_all


def clips() -> list[dict]:
    return json.loads((REAL / "clips.json").read_text())["clips"]


def track_command(clip: dict, out: Path) -> list[str]:
    """What a user types: the number of animals, and the ROI only where the clip's arena needs one."""
    command = [sys.executable, "-m", "shoal.cli", "track", str(REAL / clip["name"] / "video.mp4"),
               "--animals", str(clip["animals"]), "--out", str(out), "--quiet"]
    for roi in clip.get("roi", []):
        command += ["--roi", roi]
    return command


def run_clip(clip: dict, work: Path, timeout_s: float) -> ClipResult:
    truth = REAL / clip["name"] / "ground_truth.npz"
    positions, touching, body_length = load_truth(truth)
    result = ClipResult(clip["name"], clip["species"], clip["animals"], len(positions), 0.0)
    out = work / clip["name"]
    shutil.rmtree(out, ignore_errors=True)  # a session of an earlier run
    t0 = time.perf_counter()
    try:
        run = subprocess.run(track_command(clip, out), capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        result.wall_s, result.error = time.perf_counter() - t0, f"timed out after {timeout_s:.0f} s"
        return result
    result.wall_s = time.perf_counter() - t0
    if run.returncode != 0:
        lines = [ln for ln in (run.stderr or run.stdout).splitlines() if ln.strip()]
        result.error = lines[-1] if lines else f"shoal track exited with {run.returncode}"
        return result
    scores = evaluate(positions, touching, body_length, load_predictions(out))
    result.accuracy, result.accuracy_all = scores.accuracy, scores.accuracy_all
    result.idf1, result.id_switches = scores.idf1, scores.id_switches
    session = json.loads((out / "session.json").read_text())
    estimated = session.get("statistics", {}).get("estimated_accuracy")
    result.estimated = float(estimated) if estimated is not None else math.nan
    result.warnings = list(session.get("warnings", []))
    return result


def _f(value: float, signed: bool = False) -> str:
    if not math.isfinite(value):
        return "—"
    return f"{value:+.3f}" if signed else f"{value:.3f}"


def table(results: list[ClipResult]) -> str:
    lines = ["| clip | animals | frames | accuracy | accuracy (all frames) | estimated accuracy "
             "| estimated − measured | switches | wall s |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        if r.error:
            lines.append(f"| {r.name} | {r.animals} | {r.frames} | failed: {r.error} | | | | | {r.wall_s:.1f} |")
            continue
        lines.append(f"| {r.name} | {r.animals} | {r.frames} | {_f(r.accuracy)} | {_f(r.accuracy_all)} "
                     f"| {_f(r.estimated)} | {_f(r.overstatement, signed=True)} | {r.id_switches} | {r.wall_s:.1f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.real", description=__doc__.splitlines()[0])
    parser.add_argument("--clips", help="comma-separated clip names (default: every clip of clips.json)")
    parser.add_argument("--work", help="folder for the session folders (default: a temporary one, removed)")
    parser.add_argument("--json", help="also write the results to this JSON file")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds before a clip's run is stopped")
    args = parser.parse_args(argv)
    chosen = clips()
    if args.clips:
        names = [n.strip() for n in args.clips.split(",") if n.strip()]
        unknown = sorted(set(names) - {c["name"] for c in chosen})
        if unknown:
            parser.error(f"unknown clip(s) {', '.join(unknown)}; choose from {', '.join(c['name'] for c in chosen)}")
        chosen = [c for c in chosen if c["name"] in names]
    with tempfile.TemporaryDirectory(prefix="shoal-real-") as scratch:
        work = Path(args.work) if args.work else Path(scratch)
        work.mkdir(parents=True, exist_ok=True)
        results = []
        for clip in chosen:
            result = run_clip(clip, work, args.timeout)
            state = result.error or f"accuracy {_f(result.accuracy)}, estimated {_f(result.estimated)}"
            print(f"  {clip['name']}: {state}, {result.wall_s:.1f} s", file=sys.stderr, flush=True)
            results.append(result)
    print(table(results))
    if args.json:
        rows = [asdict(r) | {"overstatement": r.overstatement} for r in results]
        Path(args.json).write_text(json.dumps(rows, indent=2, allow_nan=True) + "\n")
    return 1 if any(r.error for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
