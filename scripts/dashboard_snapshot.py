"""Draw the Grafana dashboard as it looks during a real job: docs/img/dashboard.png.

Operators decide from a picture whether the dashboard is worth importing, and a picture drawn from
the real services shows what each panel really shows (or that it stays empty). The script starts
the services on loopback (local mode, metrics on), a real Prometheus scraping them every second
(``shoal.prometheus``), tracks a short simulated video with identities, then runs every panel's
PromQL through Prometheus's ``query_range`` API over the job's time window, the way Grafana would,
and plots the panels on the dashboard's own grid with matplotlib.

    pip install -e ".[docs]"   # matplotlib; the prometheus binary: apt-get install prometheus
    python scripts/dashboard_snapshot.py                # writes docs/img/dashboard.png
"""

from __future__ import annotations

import argparse
import json
import math
import re
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from shoal.client import Client, follow
from shoal.local import LocalCluster
from shoal.params import TrackingParams
from shoal.prometheus import LocalPrometheus
from shoal.sim import SimulationConfig, write_simulation
from shoal.v1 import jobs_pb2 as pb

ROOT = Path(__file__).resolve().parents[1]
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "shoal.json"
SCRAPE_S = 1
#: Grafana's $__rate_interval for a 1 s scrape and a 1 s step: max(step + scrape, 4 x scrape)
RATE_INTERVAL = f"{4 * SCRAPE_S}s"
#: inches per dashboard grid column and grid row (Grafana: 24 columns, 30 px rows)
COLUMN_IN, ROW_IN = 0.8, 0.42


@dataclass
class Series:
    label: str
    times: list[float]
    values: list[float]


@dataclass
class Window:
    start: float  # Unix time the job was submitted
    end: float  # Unix time it ended
    moment: float  # the instant stat and bar-gauge panels show
    pad_s: float = 5.0  # drawn before the start and after the end

    def relative(self, t: float) -> float:
        return t - self.start


def grafana_expr(expr: str, window_s: float) -> str:
    """The query Grafana would send: its interval variables filled in."""
    return expr.replace("$__rate_interval", RATE_INTERVAL).replace("$__range", f"{max(1, round(window_s))}s")


def legend(template: str, labels: dict[str, str]) -> str:
    return re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: labels.get(m.group(1), ""), template or "") or \
        ", ".join(f"{k}={v}" for k, v in labels.items()) or "value"


def panel_series(prometheus: LocalPrometheus, panel: dict, window: Window) -> list[Series]:
    """Every target of a panel, as a range query over the window, one Series per result."""
    start, end = window.start - window.pad_s, window.end + window.pad_s
    out = []
    for target in panel.get("targets", []):
        expr = grafana_expr(target["expr"], end - start)
        for result in prometheus.query_range(expr, start, end, SCRAPE_S):
            values = [(float(t), float(v)) for t, v in result["values"]]
            out.append(Series(legend(target.get("legendFormat", ""), result["metric"]),
                              [t for t, _ in values], [v for _, v in values]))
    return out


def value_at(series: Series, moment: float) -> float | None:
    """The last finite value at or before ``moment`` (Grafana's "last not null" at that time)."""
    found = None
    for t, v in zip(series.times, series.values, strict=True):
        if t > moment:
            break
        if math.isfinite(v):
            found = v
    return found


def scale(unit: str) -> tuple[float, str]:
    """(factor, suffix) to show a panel's unit the way Grafana labels it."""
    return {"percentunit": (100.0, "%"), "s": (1.0, " s"), "bytes": (1 / 2**20, " MiB"),
            "fps": (1.0, " frames/s")}.get(unit, (1.0, ""))


def fmt(value: float, unit: str) -> str:
    factor, suffix = scale(unit)
    v = value * factor
    return f"{v:.0f}{suffix}" if abs(v) >= 10 or v == int(v) else f"{v:.2g}{suffix}"


def draw(panels: list[dict], data: dict[int, list[Series]], window: Window, title: str, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = max(p["gridPos"]["y"] + p["gridPos"]["h"] for p in panels)
    head_in = 1.2
    fig = plt.figure(figsize=(24 * COLUMN_IN, rows * ROW_IN + head_in), facecolor="white")
    grid = fig.add_gridspec(rows, 24, left=0.035, right=0.99, top=1 - head_in / (rows * ROW_IN + head_in),
                            bottom=0.015, wspace=2.5, hspace=1.6)
    fig.suptitle(title, fontsize=12, fontweight="bold", x=0.01, ha="left")
    moment = window.relative(window.moment)
    for panel in panels:
        pos = panel["gridPos"]
        ax = fig.add_subplot(grid[pos["y"]:pos["y"] + pos["h"], pos["x"]:pos["x"] + pos["w"]])
        if panel["type"] == "row":
            ax.axis("off")
            ax.text(0, 0.2, panel["title"], fontsize=12, fontweight="bold", transform=ax.transAxes)
            continue
        ax.set_title(panel["title"], fontsize=9, loc="left")
        unit = panel.get("fieldConfig", {}).get("defaults", {}).get("unit", "")
        series = data[panel["id"]]
        if panel["type"] == "timeseries":
            _timeseries(ax, series, window, unit, moment)
        else:
            _instant(ax, panel["type"], series, window, unit)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=72)
    plt.close(fig)


def _timeseries(ax, series: list[Series], window: Window, unit: str, moment: float) -> None:
    factor, suffix = scale(unit)
    shown = [s for s in series if any(math.isfinite(v) for v in s.values)]
    for s in shown:
        ax.plot([window.relative(t) for t in s.times], [v * factor for v in s.values], lw=1.2, label=s.label)
    ax.axvline(moment, color="0.4", lw=0.8, ls="--")
    ax.set_xlim(-window.pad_s, window.relative(window.end) + window.pad_s)
    ax.tick_params(labelsize=7)
    ax.grid(alpha=0.3)
    if suffix.strip():
        ax.set_ylabel(suffix.strip(), fontsize=7)
    if not shown:
        ax.text(0.5, 0.5, "no data", ha="center", va="center", color="0.5", transform=ax.transAxes)
    elif len(shown) <= 8:
        ax.legend(fontsize=6, loc="upper left", frameon=False, ncol=2 if len(shown) > 4 else 1)


def _instant(ax, kind: str, series: list[Series], window: Window, unit: str) -> None:
    """Stat and bar-gauge panels at the marked moment."""
    values = [(s.label, value_at(s, window.moment)) for s in series]
    values = [(label, v) for label, v in values if v is not None]
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_color("0.85")
    if not values:
        ax.text(0.5, 0.5, "no data", ha="center", va="center", color="0.5", transform=ax.transAxes)
    elif kind == "stat":
        text = fmt(values[0][1], unit) if len(values) == 1 else "\n".join(f"{label}: {fmt(v, unit)}"
                                                                          for label, v in values)
        ax.text(0.5, 0.45, text, ha="center", va="center", fontsize=22 if len(values) == 1 else 11,
                fontweight="bold", color="tab:green", transform=ax.transAxes)
    else:
        factor, _ = scale(unit)
        top = max(v for _, v in values) * factor or 1.0
        limit = 100.0 if unit == "percentunit" else top * 1.15
        for i, (label, v) in enumerate(values):
            ax.barh(i, v * factor, color="tab:blue", height=0.6)
            ax.text(0.02 * limit, i + 0.42, f"{label}  {fmt(v, unit)}", fontsize=8, va="bottom")
        ax.set_xlim(0, limit)
        ax.set_ylim(-0.6, len(values) - 0.2 + 0.6)


def run_job(cluster: LocalCluster, video: Path, animals: int, seed: int) -> tuple[pb.Job, float, float]:
    """Submit the video, follow it to the end; (final job, submitted at, ended at) as Unix times."""
    client = Client(cluster.grpc_address)
    client.wait_ready()
    params = TrackingParams(video_paths=[str(video)], number_of_animals=animals, seed=seed).validate()
    started = time.time()
    job = client.submit(params, name="dashboard snapshot")
    job = follow(client, job.job_id, quiet=True)
    ended = time.time()
    client.close()
    return job, started, ended


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "img" / "dashboard.png")
    parser.add_argument("--animals", type=int, default=4)
    parser.add_argument("--frames", type=int, default=600)
    parser.add_argument("--preset", default="fish", choices=["fish", "flies", "mice"])
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--segmenters", type=int, default=2)
    parser.add_argument("--prometheus", default=shutil.which("prometheus"),
                        help="the prometheus binary (default: the one on PATH)")
    parser.add_argument("--keep", action="store_true", help="keep the work folder (video, logs, Prometheus data)")
    args = parser.parse_args(argv)
    if not args.prometheus:
        parser.error("no prometheus binary on PATH (apt-get install prometheus, or pass --prometheus)")

    work = Path(tempfile.mkdtemp(prefix="shoal-dashboard-"))
    config = SimulationConfig(n_animals=args.animals, n_frames=args.frames, preset=args.preset, seed=args.seed)
    video = write_simulation(config, work / "data" / "video")["video"]
    dashboard = json.loads(DASHBOARD.read_text())
    try:
        with LocalCluster(work / "data", work / "services", args.segmenters, metrics=True) as cluster, \
                LocalPrometheus(args.prometheus, cluster.metrics_ports, work / "prometheus", SCRAPE_S) as prometheus:
            print(f"services and Prometheus up (work folder {work}); tracking {args.animals} {args.preset} x "
                  f"{args.frames} frames", file=sys.stderr)
            job, started, ended = run_job(cluster, video, args.animals, args.seed)
            if job.state != pb.SUCCEEDED:
                print(f"the job did not succeed: {job.error}; see {cluster.log_path}", file=sys.stderr)
                return 1
            prometheus.wait_for_scrape_after(ended + 2 * SCRAPE_S)
            window = Window(started, ended, started + 0.5 * (ended - started))
            panels = dashboard["panels"]
            data = {p["id"]: panel_series(prometheus, p, window) for p in panels if p["type"] != "row"}
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    title = (f"{dashboard['title']} dashboard during one job: {args.animals} simulated {args.preset}, {args.frames} "
             f"frames, local mode ({args.segmenters} segmenters, CPU), {ended - started:.0f} s"
             f"\nx axes: seconds since the job was submitted; stat and bar panels show the moment of the dashed line")
    draw(dashboard["panels"], data, window, title, args.out)
    print(f"{args.out} ({args.out.stat().st_size // 1024} KiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
