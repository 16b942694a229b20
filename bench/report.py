"""Tables, target checks, the plot and the README section, from the measured figures."""

from __future__ import annotations

import math
import os
import platform
import re
import subprocess
from pathlib import Path

from bench.measure import GATEWAY_STAGES, CaseResult

RSS_LIMIT_MIB = 4096  # issue 4: no service above 4 GiB peak RSS
E2E_LIMIT = {"cpu": 10.0, "cuda": 2.0}  # end to end / decode
CROPS_TARGET = 20_000  # identifier crops/s on an H100-class GPU
TIME_EXPONENT_LIMIT = 1.1  # linear in frames, with room for timing noise
MEMORY_EXPONENT_LIMIT = 0.1  # flat in frames
README_BEGIN, README_END = "<!-- results:begin -->", "<!-- results:end -->"


def _f(x: float | None, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "–"
    return f"{x:.{digits}f}"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return lines + ["| " + " | ".join(r) + " |" for r in rows]


def service_rss(peaks: dict[str, float]) -> dict[str, float]:
    """Peak RSS per service kind (the largest segmenter stands for all of them)."""
    out: dict[str, float] = {}
    for name, mib in peaks.items():
        kind = name.split("-")[0]
        out[kind] = max(out.get(kind, 0.0), mib)
    return out


def machine() -> dict[str, str]:
    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    memory = ""
    try:
        kib = next(int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
                   if line.startswith("MemTotal:"))
        memory = f"{kib / (1 << 20):.0f} GiB"
    except (OSError, StopIteration):
        pass
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    return {"platform": platform.platform(), "cpu": cpu, "cores": str(os.cpu_count()), "memory": memory,
            "gpu": gpu, "python": platform.python_version(), "torch": torch.__version__}


def commit() -> str:
    """Short commit hash, with +dirty when tracked files differ from it (read-only git commands)."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    dirty = subprocess.run(["git", "diff-index", "--quiet", "HEAD", "--"], capture_output=True).returncode != 0
    return head + ("+dirty" if dirty else "")


def case_tables(results: list[CaseResult]) -> list[str]:
    if not results:
        return []
    ok = [r for r in results if not r.error]
    lines = ["## Accuracy and speed", "",
             "Identity run (`shoal track` pipeline, local mode) and the position-only baseline "
             "(`track_wo_identities`) on the same video. wall = job RUNNING to done; RSS = peak (VmHWM) per "
             "service in MiB, the largest segmenter for `seg`.", ""]
    rows = []
    for r in ok:
        rss = service_rss(r.peak_rss_mib)
        rows.append([r.case, str(r.n_frames), str(r.n_animals), _f(r.scores.get("accuracy"), 4),
                     _f(r.scores.get("accuracy_all"), 4), _f(r.scores.get("idf1"), 4),
                     str(r.scores.get("id_switches", "–")), _f(r.statistics.get("estimated_accuracy"), 4),
                     _f(r.wall_s, 1), _f(r.fps, 1), _f(r.decode_ratio, 2),
                     _f(r.baseline_scores.get("accuracy"), 4), _f(r.baseline_scores.get("idf1"), 4),
                     *(_f(rss.get(k), 0) for k in ("gateway", "segmenter", "identifier", "assembler"))])
    lines += _table(["case", "frames", "animals", "acc", "acc_all", "IDF1", "switches", "est acc", "wall s",
                     "frames/s", "e2e/decode", "base acc", "base IDF1", "RSS gw", "RSS seg", "RSS id", "RSS asm"],
                    rows)
    for r in results:
        if r.error:
            lines.append(f"\n**{r.case} failed**: {r.error}")

    lines += ["", "## Stage breakdown", "",
              "Seconds the gateway reported each stage (`queued` = services registering before the job ran); "
              "`identities` is identity learning, on the device named.", ""]
    rows = []
    for r in ok:
        slowest = max(r.stages_s, key=r.stages_s.get) if r.stages_s else "–"
        rows.append([r.case, r.device, _f(r.startup_s, 1), *(_f(r.stages_s.get(s), 2) for s in GATEWAY_STAGES),
                     slowest])
    lines += _table(["case", "device", "queued", *GATEWAY_STAGES, "slowest"], rows)
    lines += ["", "session.json timers (s):", ""]
    for r in ok:
        timers = ", ".join(f"{k} {v:.2f}" for k, v in r.timers_s.items())
        method = r.statistics.get("identification_method", "?")
        lines.append(f"- {r.case}: {timers}; method {method}, "
                     f"{r.statistics.get('n_global_fragments', '?')} global fragments")

    lines += ["", "## Throughput against the decode limit", "",
              "decode = this process reading every frame with `shoal.video.read_frames`; segment per worker = "
              "frames / segment stage seconds / segmenters.", ""]
    rows = [[r.case, _f(r.n_frames / r.decode_s, 0), str(r.segmenters), _f(r.segment_fps_per_worker(), 0),
             _f(r.segment_fps_per_worker() * r.decode_s / r.n_frames, 3), _f(r.decode_ratio, 2)] for r in ok]
    lines += _table(["case", "decode frames/s", "segmenters", "segment frames/s per worker", "per worker / decode",
                     "e2e / decode"], rows)
    return lines


def throughput_table(rows: list[dict], gpu_present: bool, results: list[CaseResult]) -> list[str]:
    lines = ["", "## Identifier crops/s", ""]
    if not rows:
        return lines + ["not measured"]
    side = rows[0]["side"]
    batches = sorted({r["batch"] for r in rows})
    lines += [f"Forward pass in eval mode, crops of {side}x{side} px, uint8 on the host; "
              f"CPU with {rows[0].get('threads', '?')} torch threads.", ""]
    body = []
    for net, device in dict.fromkeys((r["network"], r["device"]) for r in rows):
        per = {r["batch"]: r["crops_per_s"] for r in rows if r["network"] == net and r["device"] == device}
        body.append([net, device, *(_f(per.get(b), 0) for b in batches)])
    lines += _table(["network", "device", *map(str, batches)], body)
    lines.append("")
    if not gpu_present:
        lines.append("**no GPU present**: CUDA crops/s, identity learning on a GPU and GPU busy fraction not measured.")
    else:
        for r in results:
            if r.gpu_busy:
                lines.append(f"- {r.case}: GPU busy {_f(r.gpu_busy.get('job'), 2)} of the job, "
                             f"{_f(r.gpu_busy.get('identities'), 2)} of identity learning "
                             f"({_f(r.stages_s.get('identities'), 1)} s)")
    return lines


def scaling_table(scaling: dict) -> list[str]:
    lines = ["", "## Scaling", ""]
    for axis, label in (("frames", "video length (4 fish)"), ("animals", "animals (fixed frames, constant density)")):
        runs = scaling.get(axis, [])
        if not runs:
            continue
        lines += [f"### {label}", ""]
        rows = []
        for r in runs:
            rss = service_rss(r["peak_rss_mib"])
            rows.append([r["case"], str(r["n_frames"]), str(r["n_animals"]), f"{r['width']}x{r['height']}",
                         _f(r["wall_s"], 1), _f(r["decode_ratio"], 2), _f(r["scores"].get("accuracy"), 4),
                         *(_f(rss.get(k), 0) for k in ("gateway", "segmenter", "identifier", "assembler")),
                         r["error"][:60] if r["error"] else ""])
        lines += _table(["run", "frames", "animals", "size", "wall s", "e2e/decode", "acc", "RSS gw", "RSS seg",
                         "RSS id", "RSS asm", "error"], rows)
        fit = scaling.get(f"{axis}_exponents", {})
        lines += ["", f"fitted exponent (log-log slope) in {axis}: wall time {_f(fit.get('wall_s'), 2)}, "
                      f"peak RSS (largest service) {_f(fit.get('peak_rss'), 2)}, "
                  + ", ".join(f"{k} RSS {_f(v, 2)}" for k, v in fit.get("rss_per_service", {}).items()), ""]
    return lines


def targets(results: list[CaseResult], micro: list[dict], scaling: dict, gpu_present: bool) -> list[str]:
    """One line per target of issues 4 and 8: measured, target, met or missed (and the slowest stage)."""
    lines = ["", "## Targets", ""]

    def mark(ok: bool) -> str:
        return "met" if ok else "**missed**"

    for r in results:
        if r.error:
            lines.append(f"- {r.case}: failed, no figures")
            continue
        goal = 0.995 if r.case.startswith("fish8") else 0.99
        acc = r.scores.get("accuracy", 0.0)
        limit = E2E_LIMIT["cuda" if r.device == "cuda" else "cpu"]
        slowest = max(r.stages_s, key=r.stages_s.get) if r.stages_s else "?"
        peak = max(r.peak_rss_mib.values(), default=math.nan)
        lines.append(f"- {r.case}: accuracy {acc:.4f} (≥ {goal}) {mark(acc >= goal)}; e2e/decode "
                     f"{_f(r.decode_ratio, 2)} (≤ {limit:g} on {r.device}) {mark(r.decode_ratio <= limit)}"
                     + ("" if r.decode_ratio <= limit else
                        f", slowest stage {slowest} {r.stages_s.get(slowest, math.nan):.1f} s")
                     + f"; peak RSS {peak:.0f} MiB (≤ {RSS_LIMIT_MIB}) {mark(peak <= RSS_LIMIT_MIB)}")
    cuda = [m for m in micro if m["device"] == "cuda"]
    if cuda:
        best = {n: max(m["crops_per_s"] for m in cuda if m["network"] == n) for n in dict.fromkeys(m["network"]
                                                                                                  for m in cuda)}
        lines.append("- identifier on GPU: " + ", ".join(f"{n} {v:.0f} crops/s" for n, v in best.items())
                     + f" (≥ {CROPS_TARGET}) {mark(min(best.values()) >= CROPS_TARGET)}")
    elif not gpu_present:
        lines.append("- identifier on GPU: no GPU present")
    fit = scaling.get("frames_exponents", {})
    if fit.get("wall_s") is not None:
        lines.append(f"- time in video length: exponent {fit['wall_s']:.2f} (≤ 1, {TIME_EXPONENT_LIMIT} with noise) "
                     f"{mark(fit['wall_s'] <= TIME_EXPONENT_LIMIT)}")
    if fit.get("peak_rss") is not None:
        lines.append(f"- memory in video length: exponent {fit['peak_rss']:.2f} (flat: ≤ {MEMORY_EXPONENT_LIMIT}) "
                     f"{mark(fit['peak_rss'] <= MEMORY_EXPONENT_LIMIT)}")
    return lines


def header(meta: dict) -> list[str]:
    m = meta["machine"]
    return ["# Shoal benchmark results", "",
            f"- date: {meta['date']}", f"- commit: {meta['commit']}", f"- command: `{meta['command']}`",
            f"- machine: {m['cpu']}, {m['cores']} cores, {m['memory']}, GPU {m['gpu']}; {m['platform']}; "
            f"Python {m['python']}, torch {m['torch']}",
            *([f"- **quick run**: every case cut to {meta['quick_frames']} frames (a smoke check, not a result)"]
              if meta.get("quick") else []), ""]


def plot(results: list[CaseResult], path: Path) -> str:
    """Accuracy (Shoal and baseline) and time (end to end and decode) per case; returns a message."""
    ok = [r for r in results if not r.error]
    if not ok:
        return "no plot: no case succeeded"
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "no plot: matplotlib is not installed (pip install matplotlib)"
    names = [r.case for r in ok]
    x = list(range(len(ok)))
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(max(8, 1.6 * len(ok) + 4), 4))
    width = 0.38
    ax1.bar([i - width / 2 for i in x], [r.scores.get("accuracy", 0) for r in ok], width, label="Shoal")
    ax1.bar([i + width / 2 for i in x], [r.baseline_scores.get("accuracy", 0) for r in ok], width,
            label="position-only baseline")
    ax1.axhline(0.99, color="k", lw=0.8, ls="--", label="target 0.99")
    ax1.set(xticks=x, xticklabels=names, ylim=(0, 1.02), ylabel="identity accuracy (outside crossings)")
    ax1.legend(loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=3, fontsize=8)
    ax2.bar([i - width / 2 for i in x], [r.wall_s for r in ok], width, label="end to end")
    ax2.bar([i + width / 2 for i in x], [r.decode_s for r in ok], width, label="decode only")
    for i, r in enumerate(ok):
        ax2.annotate(f"{r.decode_ratio:.1f}×", (i - width / 2, r.wall_s), ha="center", va="bottom", fontsize=8)
    ax2.set_title("end to end / decode above the bars", fontsize=9)
    top = max(max(r.wall_s, r.decode_s) for r in ok)
    ax2.set(xticks=x, xticklabels=names, ylabel="seconds (log)", yscale="log", ylim=(None, top * 2))
    ax2.legend(loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=2, fontsize=8)
    for ax in (ax1, ax2):
        ax.set_xlim(-0.8, len(ok) - 0.2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return f"plot: {path}"


def update_readme(readme: Path, markdown: str, plot_path: Path | None) -> None:
    """Replace the README's results section (between the markers) with this run's tables."""
    text = readme.read_text()
    body = markdown.replace("# Shoal benchmark results\n", "", 1).strip()
    body = re.sub(r"^(#+) ", lambda m: "#" * (len(m.group(1)) + 1) + " ", body, flags=re.M)  # nest headings
    if plot_path is not None and plot_path.exists():
        body += f"\n\n![accuracy and time per case]({os.path.relpath(plot_path, readme.parent)})"
    block = f"{README_BEGIN}\n{body}\n{README_END}"
    if README_BEGIN in text and README_END in text:
        text = re.sub(re.escape(README_BEGIN) + ".*?" + re.escape(README_END), lambda _: block, text, flags=re.S)
    else:
        text = text.rstrip() + "\n\n## Results\n\n" + block + "\n"
    readme.write_text(text)
