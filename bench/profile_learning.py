"""Where identity learning spends its time (issue 21, item 1), sampled by py-spy on real runs.

Each case is segmented and tracked in one process, as the services would (the images read from
an ``.npy`` memory map, as from the identifier's store), under ``py-spy record``. Every sample is
put in one bucket by the innermost frame of Shoal's own code and, inside the training loop, by the
source line it stands on (pair sampling, the forward pass, backward, the optimiser, the checks).
Steps and the stopping rule come from the identity reply's notes. Needs ``pip install py-spy``
and permission to trace a child process (root, or ptrace_scope 0)::

    python -m bench.profile_learning                        # short3, fish8, fish20
    python -m bench.profile_learning --cases fish8 --rate 200
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from bench.cases import CASES, Case, animals_case, ensure_video

BENCH = Path(__file__).resolve().parent
#: cases of the profile; short3 is issue 21's 300-frame clip of 3 fish
PROFILE_CASES = {"short3": Case("short3", "fish", 3, 300, 400, 400, seed=51), **CASES}
#: the phase of a sample: the outermost frame of Shoal's code among these functions
PHASES = {
    "probe": "segmentation", "segment_chunk": "segmentation", "train_and_classify": "crossing detector",
    "_accumulation": "accumulation (classifier)", "_embed_all": "predict every image",
    "train_contrastive": "contrastive",
}
#: inside contrastive training, by the innermost function, else by the text of the loop's line
CHECKS = {"kmeans": "check: k-means", "_kmeans_plus_plus": "check: k-means", "silhouette": "check: silhouette",
          "fragment_agreement": "check: agreement"}
LINE_BUCKETS = (
    ("apply_in_batches", "check: embed the sample"), ("deepcopy", "check: keep the best weights"),
    ("rng.choice", "pair sampling"), ("draw(", "pair sampling"), ("p_neg", "pair sampling"),
    ("p_pos", "pair sampling"), ("np.add.at", "pair sampling"), ("torch.as_tensor", "pair sampling"),
    ("rotate_half", "step: forward"), ("distance", "step: forward"), ("loss", "step: loss and backward"),
    ("optimiser", "step: optimiser"),
)
STEP_BUCKETS = ("pair sampling", "step: forward", "step: loss and backward", "step: optimiser")
_FRAME = re.compile(r"^(?P<function>[^ ]+) \((?P<file>[^:]+):(?P<line>\d+)\)$")


def run_one(video: str, n_animals: int, out: str) -> None:
    """Segment and track ``video`` in this process; write figures the stacks cannot give to ``out``."""
    import numpy as np

    from services.assembler.overlap import overlap_links
    from services.assembler.track import track
    from services.identifier.learning import LocalIdentifier
    from services.segmenter.work import probe, segment_chunk
    from shoal.blobs import concat
    from shoal.chunks import chunk_ranges
    from shoal.params import TrackingParams
    from shoal.video import probe_video

    work = Path(tempfile.mkdtemp(prefix="shoal-profile-"))
    try:
        params = TrackingParams(video_paths=[video], number_of_animals=n_animals).validate()
        info = probe_video(params.video_paths)
        started = time.perf_counter()
        found = probe(info, params, work)
        parts = [segment_chunk(info, params, found, start, stop) for start, stop in chunk_ranges(info, 500, None)]
        table = concat([t for t, _ in parts])
        np.save(work / "images.npy", np.concatenate([i for _, i in parts]))
        segmented = time.perf_counter() - started
        images = np.load(work / "images.npy", mmap_mode="r")
        result = track(table, overlap_links(table), info.n_frames, n_animals, LocalIdentifier(images, "cpu"))
        steps = next(filter(None, (re.match(r"contrastive: (\d+) steps, silhouette [\d.]+ \((.*)\)$", note)
                                   for note in result.notes)), None)
        Path(out).write_text(json.dumps({
            "frames": info.n_frames, "images": int(len(images)), "crop_side": int(images.shape[1]),
            "segment_s": segmented, "stages": result.timings, "method": result.method,
            "steps": int(steps.group(1)) if steps else None, "stop": steps.group(2) if steps else None,
            "estimated_accuracy": result.estimated_accuracy}))
    finally:
        shutil.rmtree(work, ignore_errors=True)


def bucket(stack: list[str], lines: dict[tuple[str, int], str]) -> str:
    """The bucket of one sampled stack (frames outermost first, as py-spy writes them)."""
    ours = [(m["function"].rpartition(".")[2], m["file"], int(m["line"])) for frame in stack
            if (m := _FRAME.match(frame)) and any(p in m["file"] for p in ("services/", "shoal/"))]
    if any(function == "read_rows" for function, _, _ in ours):
        return "read images from the store"
    phase = next((PHASES[function] for function, _, _ in ours if function in PHASES), None)
    if phase == "contrastive":
        inner = next((CHECKS[function] for function, _, _ in reversed(ours) if function in CHECKS), None)
        _, file, line = next(frame for frame in reversed(ours) if frame[0] == "train_contrastive")
        text = lines.get((file, line), "")
        return inner or next((name for key, name in LINE_BUCKETS if key in text), "training loop, other")
    if phase is not None:
        return phase
    assembler = [file for _, file, _ in ours if "services/assembler/" in file]
    if assembler:
        return f"assembler: {Path(assembler[-1]).stem}"
    return "start-up, imports, other"


def source_lines(stacks: list[list[str]]) -> dict[tuple[str, int], str]:
    files = {m["file"] for stack in stacks for f in stack if (m := _FRAME.match(f)) and "contrastive" in m["file"]}
    return {(file, i + 1): text for file in files if Path(file).is_file()
            for i, text in enumerate(Path(file).read_text().splitlines())}


def profile(case: Case, cache: Path, rate: int, out: Path) -> dict:
    """Profile one case; its raw stacks are kept beside ``out`` (``py-spy``'s collapsed format)."""
    files = ensure_video(case, cache)
    raw = out.with_name(f"{out.stem}.{case.name}.stacks.txt")
    with tempfile.TemporaryDirectory(prefix="shoal-profile-") as tmp:
        figures = Path(tmp) / "figures.json"
        command = [sys.executable, "-m", "bench.profile_learning", "--one", str(files["video"]), str(case.n_animals),
                   str(figures)]
        started = time.perf_counter()
        subprocess.run(["py-spy", "record", "--format", "raw", "--rate", str(rate), "--output", str(raw), "--",
                        *command], check=True, capture_output=True)
        wall = time.perf_counter() - started
        result = json.loads(figures.read_text())
        stacks, counts = [], []
        for line in raw.read_text().splitlines():
            frames, _, count = line.rpartition(" ")
            stacks.append(frames.split(";"))
            counts.append(int(count))
    lines = source_lines(stacks)
    buckets: Counter[str] = Counter()
    for stack, count in zip(stacks, counts, strict=True):
        buckets[bucket(stack, lines)] += count
    # py-spy leaves out samples of a thread waiting (for the decoder, say): a sample is 1/rate s of work
    seconds = {name: n / rate for name, n in buckets.items()}
    return {"case": case.name, "animals": case.n_animals, "wall_s": wall, "samples": sum(counts), "rate": rate,
            **result, "seconds": seconds}


def table(rows: list[dict]) -> str:
    def share(r: dict, name: str) -> float:
        return r["seconds"].get(name, 0.0) / sum(r["seconds"].values())

    # buckets under 0.5 % of the work in every case are left out
    seen = {name for r in rows for name in r["seconds"]}
    names = sorted((n for n in seen if max(share(r, n) for r in rows) >= 0.005),
                   key=lambda n: -max(share(r, n) for r in rows))
    out = ["| | " + " | ".join(r["case"] for r in rows) + " |", "|---" * (len(rows) + 1) + "|"]
    facts = (("animals", lambda r: r["animals"]), ("images", lambda r: r["images"]),
             ("crop side px", lambda r: r["crop_side"]), ("training steps", lambda r: r["steps"]),
             ("stopped by", lambda r: r["stop"]), ("wall s (in one process)", lambda r: f"{r['wall_s']:.1f}"),
             ("identity learning s (track's Tracking stage)", lambda r: f"{r['stages'].get('Tracking', 0):.1f}"),
             ("crossing detection stage s", lambda r: f"{r['stages'].get('Crossing detection', 0):.1f}"))
    for label, get in facts:
        out.append(f"| {label} | " + " | ".join(str(get(r)) for r in rows) + " |")
    for name in names:  # seconds of work sampled, and their share of all the work sampled
        out.append(f"| {name} | " + " | ".join(f"{r['seconds'].get(name, 0.0):.1f} s ({share(r, name):.0%})"
                                             for r in rows) + " |")
    step_ms, check_ms = [], []
    for r in rows:
        steps = r["steps"] or 0
        checks = steps // (20 + 2 * r["animals"])  # contrastive.train_contrastive's check_every
        step_ms.append(f"{1000 * sum(r['seconds'].get(n, 0.0) for n in STEP_BUCKETS) / max(steps, 1):.1f}")
        check = sum(v for n, v in r["seconds"].items() if n.startswith("check: "))
        check_ms.append(f"{1000 * check / max(checks, 1):.0f}")
    out.append("| ms per training step (sampling, forward, backward, optimiser) | " + " | ".join(step_ms) + " |")
    out.append("| ms per check (embed the sample, k-means, silhouette, agreement) | " + " | ".join(check_ms) + " |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.profile_learning", description=__doc__.split("\n\n")[0])
    p.add_argument("--cases", default="short3,fish8,fish20",
                   help=f"comma-separated: {', '.join(PROFILE_CASES)} or fishN_fF (N animals, F frames)")
    p.add_argument("--cache", default=str(BENCH / "out" / "cache"), help="rendered videos, reused across runs")
    p.add_argument("--rate", type=int, default=100, help="py-spy samples per second")
    p.add_argument("--out", default=str(BENCH / "out" / "profile_learning.json"),
                   help="figures (JSON); each case's raw stacks are kept beside it")
    p.add_argument("--one", nargs=3, metavar=("VIDEO", "N", "OUT"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.one:
        run_one(args.one[0], int(args.one[1]), args.one[2])
        return 0
    if shutil.which("py-spy") is None:
        print("bench.profile_learning: py-spy is not installed here: pip install py-spy", file=sys.stderr)
        return 2
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    rows = []
    for name in args.cases.split(","):
        scaled = re.fullmatch(r"fish(\d+)_f(\d+)", name)
        case = animals_case(int(scaled[1]), int(scaled[2])) if scaled else PROFILE_CASES[name]
        print(f"profiling {case.name}: {case.n_animals} {case.preset}, {case.n_frames} frames", flush=True)
        rows.append(profile(case, Path(args.cache), args.rate, Path(args.out)))
    Path(args.out).write_text(json.dumps(rows, indent=1))
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
