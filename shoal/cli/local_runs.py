"""``shoal track``, ``demo`` and ``serve``: the services started here as child processes on
loopback (:mod:`shoal.local`), for one job or until Ctrl-C."""

from __future__ import annotations

import argparse
import math
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

from shoal.cli.common import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    SERVE_ADDRESS,
    SERVE_PORT,
    Command,
    Failed,
    UsageError,
    job_exit_code,
)
from shoal.cli.flags import add_tracking_flags, build_params, check_locally
from shoal.cli.folders import prepare_session_folder
from shoal.params import TrackingParams


def cmd_track(args: argparse.Namespace) -> int:
    params = build_params(args, args.videos)
    check_locally(params)
    first = Path(params.video_paths[0])
    out = Path(args.out).resolve() if args.out else first.parent / f"session_{first.stem}"
    folder = prepare_session_folder(out, args.overwrite)
    status = EXIT_INTERRUPTED
    try:
        job, logs = run_local(params, out, args.segmenters, quiet=args.quiet, keep_logs=args.keep_logs)
        status = report(job, out, logs)
    finally:
        folder.finish(status == 0)
    return status


def run_local(params: TrackingParams, out: Path, segmenters: int | None, quiet: bool = False,
              keep_logs: bool = False) -> tuple:
    """Start the services, run one job through the gateway, stop everything. Returns the final Job and
    the service log if it was kept (``keep_logs``); otherwise the services' work folder is removed."""
    from shoal.client import Client, follow
    from shoal.local import LocalCluster, StartError

    work = Path(tempfile.mkdtemp(prefix="shoal-local-"))
    cluster = LocalCluster(Path("/"), work, segmenters)
    kept = cluster.log_path if keep_logs else None
    interrupted = False

    def on_sigint(*_):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGINT, on_sigint)
    signal.signal(signal.SIGTERM, on_sigint)
    try:
        cluster.start()
        if not quiet:
            print(f"shoal: services started ({cluster.segmenters} segmenter(s), 1 identifier, 1 assembler)",
                  file=sys.stderr)
        client = Client(cluster.grpc_address)
        client.wait_ready()
        job = client.submit(params, output_dir=str(out))

        def services_alive() -> None:  # nothing restarts a local service: its job would wait forever
            dead = [name for name, ok in cluster.alive().items() if not ok]
            if dead:
                raise Failed(f"the {', '.join(dead)} service exited during the job{_log_note(kept)}")

        job = follow(client, job.job_id, quiet=quiet, check=services_alive)
        client.close()
        return job, kept
    except StartError as exc:
        raise Failed(f"the services did not start: {exc}{_log_note(kept)}") from None
    except KeyboardInterrupt:
        interrupted = True
        raise
    finally:
        cluster.stop()
        signal.signal(signal.SIGINT, previous)
        if kept is None:
            shutil.rmtree(work, ignore_errors=True)
        if interrupted:
            print(f"\nshoal: interrupted; services stopped{_log_note(kept)}", file=sys.stderr)


def _log_note(kept: Path | None) -> str:
    return f" (service logs kept in {kept})" if kept else " (rerun with --keep-logs to keep the service logs)"


def report(job, out: Path, logs: Path | None = None) -> int:
    """Print how a local job ended: one line if it failed (with where the kept logs are, or how to keep
    them when they would help), else its figures and the session folder."""
    from shoal.v1 import jobs_pb2 as pb

    for w in job.warnings:
        print(f"warning: {w}", file=sys.stderr)
    status = job_exit_code(job)
    if status:
        note = _log_note(logs) if logs or status == EXIT_FAILED else ""
        print(f"shoal: job {pb.JobState.Name(job.state).lower()}: {job.error}{note}", file=sys.stderr)
        return status
    f = dict(job.figures)
    acc = f.get("estimated_accuracy")
    print(f"tracked {int(f.get('frames', 0))} frames: {int(f.get('animals', 0))} animals, "
          f"{int(f.get('blobs', 0))} blobs, {int(f.get('fragments', 0))} fragments"
          + (f", estimated accuracy {acc:.4f}" if acc is not None and math.isfinite(acc) else ""))
    if "transfer_score" in f:
        print(f"knowledge transfer: identities named after the earlier session's "
              f"(matching score {f['transfer_score']:.4f})")
    print(f"session folder: {out}")
    _print_videos(out)
    if logs:
        print(f"service logs kept in {logs}", file=sys.stderr)
    return 0


def _print_videos(out: Path) -> None:
    """Say which videos the job rendered (session.json lists them; a failure is among the warnings)."""
    import json

    try:
        videos = json.loads((out / "session.json").read_text()).get("videos") or {}
    except (OSError, ValueError):
        return
    if videos.get("overlay"):
        print(f"overlay video: {out / videos['overlay']}")
    if videos.get("individual"):
        print(f"{len(videos['individual'])} individual videos in {(out / videos['individual'][0]).parent}")


#: the shortest demo video: fewer frames give a poor background and too few fragments to learn from
DEMO_MIN_FRAMES = 100


def cmd_demo(args: argparse.Namespace) -> int:
    from shoal.evaluate import evaluate, load_predictions
    from shoal.sim import SimulationConfig, write_simulation

    if args.animals < 1:
        raise UsageError(f"--animals must be at least 1, got {args.animals}")
    if args.frames < DEMO_MIN_FRAMES:
        raise UsageError(f"--frames must be at least {DEMO_MIN_FRAMES} (a background model and identities need "
                         f"them), got {args.frames}")
    out = Path(args.out).resolve()
    session = out / "session"
    prepare_session_folder(session, overwrite=True).finish(True)  # the demo's own folder: an earlier demo goes
    config = SimulationConfig(n_animals=args.animals, n_frames=args.frames, preset=args.preset, seed=args.seed)
    print(f"shoal demo: simulating {args.animals} {args.preset} x {args.frames} frames (seed {args.seed})")
    files = write_simulation(config, out / "video")
    params = TrackingParams(video_paths=[str(files["video"])], number_of_animals=args.animals, seed=args.seed,
                            track_wo_identities=args.no_identities).validate()
    t0 = time.perf_counter()
    job, logs = run_local(params, session, args.segmenters, keep_logs=args.keep_logs)
    wall = time.perf_counter() - t0
    status = report(job, session, logs)
    if status:
        return status
    import numpy as np

    truth = np.load(files["ground_truth"])
    scores = evaluate(truth["positions"], truth["touching"], float(truth["body_length"]), load_predictions(session))
    print(f"wall time {wall:.1f} s ({args.frames / wall:.1f} frames/s end to end)")
    print(f"against the simulator's ground truth: identity accuracy {scores.accuracy:.4f} "
          f"(incl. touching {scores.accuracy_all:.4f}), IDF1 {scores.idf1:.4f}, "
          f"identity switches {scores.id_switches}, detection {scores.detection_rate:.4f}")
    print(f"video and ground truth: {out / 'video'}")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from shoal.local import LocalCluster, StartError

    data = Path(args.data_root).resolve()
    if not data.is_dir():
        raise UsageError(f"data root {data} is not a directory")
    if not 0 <= args.port <= 65535:
        raise UsageError(f"--port must be between 0 and 65535, got {args.port}")
    host = f"[{args.address}]" if ":" in args.address and not args.address.startswith("[") else args.address
    cluster = LocalCluster(data, data / ".shoal", args.segmenters, grpc_address=f"{host}:{args.port}")
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    try:
        try:
            cluster.start()
        except StartError as exc:
            if not exc.refused:
                raise Failed(str(exc)) from None
            hint = "; choose another --port or --address" if str(exc).startswith("cannot listen") else ""
            raise UsageError(f"{exc}{hint}") from None
        print(f"shoal serve: gateway on {cluster.grpc_address} (data root {data}; logs in {cluster.log_path}); "
              "Ctrl-C stops", flush=True)
        while not stop:
            dead = [n for n, ok in cluster.alive().items() if not ok]
            if dead:
                print(f"shoal serve: {', '.join(dead)} exited; see {cluster.log_path}", file=sys.stderr)
                return EXIT_FAILED
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        cluster.stop()
    return 0



def add_commands(command: Command) -> None:
    """Register track, demo and serve with :func:`shoal.cli.parser`."""
    t = command("track", "track videos here (starts the services itself)")
    t.add_argument("videos", nargs="+", help="video file(s); several files form one session")
    t.add_argument("--out", help="session folder (default: session_<video name> beside the video)")
    t.add_argument("--overwrite", action="store_true",
                   help="write into a session folder that is not empty, replacing what an earlier Shoal run "
                        "wrote there (other files stay; the earlier session comes back if this run fails)")
    t.add_argument("--segmenters", type=int, help="segmenter processes (default: cores - 1)")
    t.add_argument("--quiet", action="store_true", help="no progress bars")
    t.add_argument("--keep-logs", action="store_true",
                   help="keep the services' work folder and log (in the temporary folder) after the run; without "
                        "it they are removed, even when the run fails")
    add_tracking_flags(t)
    t.set_defaults(func=cmd_track)

    d = command("demo", "simulate a video, track it, score it against the truth",
                description="Simulate a short video with ground truth (OUT/video), track it here (OUT/session; an "
                            "earlier demo there is replaced) and score the identities against the truth.")
    d.add_argument("--out", default="shoal-demo", help="folder for the video, truth and session")
    d.add_argument("--animals", type=int, default=4, help="number of animals")
    d.add_argument("--frames", type=int, default=600, help=f"number of frames (at least {DEMO_MIN_FRAMES})")
    d.add_argument("--preset", default="fish", choices=["fish", "flies", "mice"], help="kind of animal")
    d.add_argument("--seed", type=int, default=1, help="seed of the simulation and of the tracking")
    d.add_argument("--segmenters", type=int, help="segmenter processes (default: cores - 1)")
    d.add_argument("--no-identities", action="store_true", help="track without identities")
    d.add_argument("--keep-logs", action="store_true", help="keep the services' work folder and log after the run")
    d.set_defaults(func=cmd_demo)

    s = command("serve", "run a gateway and workers here until Ctrl-C",
                description="Run a gateway and its workers on this machine until Ctrl-C, for submit, watch, jobs, "
                            "cancel and fetch (their --gateway default is this one's address).")
    s.add_argument("--data-root", default=".", help="jobs may read and write only under this folder; the gateway's "
                                                    "work folder is DATA_ROOT/.shoal")
    s.add_argument("--address", default=SERVE_ADDRESS,
                   help="address the gateway listens on (0.0.0.0: every interface, with neither token nor TLS: "
                        "a trusted network only)")
    s.add_argument("--port", type=int, default=SERVE_PORT, help="gRPC port (0: any free port, printed)")
    s.add_argument("--segmenters", type=int, help="segmenter processes (default: cores - 1)")
    s.set_defaults(func=cmd_serve)
