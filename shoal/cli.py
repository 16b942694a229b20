"""The ``shoal`` command.

``shoal track`` and ``shoal demo`` run everything locally (the services as child processes on
loopback); ``shoal serve`` keeps such a set running; ``submit``/``watch``/``jobs``/``cancel``/
``fetch`` talk to any gateway; ``simulate`` and ``evaluate`` make and score test videos.
Errors never show a traceback. Input to change (a flag, a video, a job id, the token: also when
the gateway refuses it) prints one line and exits with 2; a job that did not succeed, or a gateway
that cannot be reached or is out of capacity, prints one line and exits with 1.
"""

from __future__ import annotations

import argparse
import math
import os
import signal
import sys
import tempfile
import time
from pathlib import Path

import grpc

from shoal.params import DEFAULT_VIDEO_TRAIL, MIN_INDIVIDUAL_VIDEO_SIZE, ParamError, TrackingParams

EXIT_USAGE, EXIT_FAILED, EXIT_INTERRUPTED = 2, 1, 130
#: gateway answers that mean the command itself must change (its input, id or token): exit 2, not 1
USAGE_CODES = (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND, grpc.StatusCode.PERMISSION_DENIED,
               grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.UNAUTHENTICATED)
DEFAULT_GATEWAY = os.environ.get("SHOAL_GATEWAY", "127.0.0.1:50051")


class UsageError(Exception):
    pass


def _add_tracking_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("tracking parameters (idtracker.ai names in --params files)")
    g.add_argument("--params", metavar="FILE.toml", help="idtracker.ai-style parameter file; flags override it")
    g.add_argument("--animals", type=int, help="number of animals (number_of_animals)")
    g.add_argument("--intensity", type=float, nargs=2, metavar=("LO", "HI"),
                   help="foreground intensity range; with --bkg, LO is the difference threshold "
                        "(default: chosen from the video)")
    g.add_argument("--area", type=float, nargs=2, metavar=("MIN", "MAX"), help="blob area range in pixels")
    g.add_argument("--roi", action="append", metavar="SHAPE",
                   help='region of interest, e.g. "+ Polygon [[0,0],[500,0],[500,500]]"; repeatable')
    g.add_argument("--exclusive-rois", action="store_true",
                   help="each separate region of the ROI is its own arena; identities are numbered "
                        "region by region (exclusive_rois)")
    g.add_argument("--animals-per-roi", type=int, nargs="+", metavar="N",
                   help="animals in each exclusive region, regions in raster order of their top pixel "
                        "(default: read from frames showing all animals apart)")
    g.add_argument("--knowledge-from", metavar="SESSION",
                   help="start identity learning from an earlier session's identity model and number the "
                        "identities as it did (knowledge_transfer_folder; same animals, same image size)")
    g.add_argument("--id-image-size", type=int, metavar="PX",
                   help="side of the identification images (id_image_size; default: from the body length). "
                        "Give the earlier session's size to reuse its model with --knowledge-from")
    g.add_argument("--bkg", action="store_true", help="background subtraction (use_bkg)")
    g.add_argument("--intervals", type=int, nargs="+", metavar="F",
                   help="tracking intervals as start end [start end ...] (end exclusive)")
    g.add_argument("--no-identities", action="store_true", help="track without identities (track_wo_identities)")
    g.add_argument("--method", choices=["contrastive", "accumulation"], help="identity learning route")
    g.add_argument("--seed", type=int, help="random seed (same seed, same CPU result)")
    g.add_argument("--formats", nargs="+", help="trajectories_formats: npy h5 csv csv_tidy")
    g.add_argument("--video", action="store_true",
                   help="also write the overlay video SESSION/overlay.mp4, as shoal video does (output_video)")
    g.add_argument("--individual-videos", action="store_true",
                   help="also write one animal-centred video per identity in SESSION/individual_videos/, as "
                        "shoal video --individual does (output_individual_videos)")
    g.add_argument("--video-trail", type=int, metavar="FRAMES",
                   help=f"trail of --video in frames (video_trail; default {DEFAULT_VIDEO_TRAIL})")
    g.add_argument("--individual-video-size", type=int, metavar="PX",
                   help="side of --individual-videos in pixels (individual_video_size; default: body length)")


def build_params(args: argparse.Namespace, videos: list[str]) -> TrackingParams:
    base = TrackingParams.from_toml(args.params).to_dict() if args.params else {}
    base.pop("video_paths", None)
    overrides = {
        "number_of_animals": args.animals, "intensity_ths": args.intensity, "area_ths": args.area,
        "roi_list": args.roi, "use_bkg": True if args.bkg else None, "method": args.method, "seed": args.seed,
        "track_wo_identities": True if args.no_identities else None, "trajectories_formats": args.formats,
        "exclusive_rois": True if args.exclusive_rois else None, "animals_per_roi": args.animals_per_roi,
        "id_image_size": args.id_image_size,
        "knowledge_transfer_folder": _gateway_path(args.knowledge_from) if args.knowledge_from else None,
        "output_video": True if args.video else None, "video_trail": args.video_trail,
        "output_individual_videos": True if args.individual_videos else None,
        "individual_video_size": args.individual_video_size,
    }
    if args.intervals:
        if len(args.intervals) % 2:
            raise ParamError("tracking_intervals", "--intervals needs pairs of frames: start end [start end ...]")
        overrides["tracking_intervals"] = list(zip(args.intervals[::2], args.intervals[1::2], strict=True))
    params = TrackingParams.from_dict({**base, **{k: v for k, v in overrides.items() if v is not None},
                                       "video_paths": [_gateway_path(v) for v in videos]})
    return params.validate()


def _gateway_path(path: str) -> str:
    """A path that exists here goes to the gateway absolute (local mode and `shoal serve` share this
    file system); any other as given, which a remote gateway reads relative to its data root."""
    return str(Path(path).resolve()) if Path(path).exists() else path


def _check_locally(params: TrackingParams) -> None:
    """Catch bad input before starting any service: one clear line instead of a failed job."""
    from services.segmenter.roi import RoiError, roi_mask, roi_regions
    from shoal.video import VideoError, probe_video

    try:
        info = probe_video(params.video_paths)
        if params.roi_list:
            mask = roi_mask(params.roi_list, info.width, info.height)
    except (VideoError, RoiError) as exc:
        raise UsageError(str(exc)) from None
    if params.knowledge_transfer_folder:
        from shoal.knowledge import check_compatible, model_info

        check_compatible(model_info(params.knowledge_transfer_folder), params.id_image_size, params.number_of_animals)
    if params.exclusive_rois and params.animals_per_roi is not None:
        n_regions = int(roi_regions(mask).max()) + 1
        if len(params.animals_per_roi) != n_regions:
            raise ParamError("animals_per_roi", f"{len(params.animals_per_roi)} counts given but the ROI has "
                                                f"{n_regions} separate regions; give one count per region")
    for start, end in params.tracking_intervals or []:
        if end > info.n_frames:
            raise UsageError(f"tracking interval [{start}, {end}) ends after the video's {info.n_frames} frames")


def cmd_track(args: argparse.Namespace) -> int:
    params = build_params(args, args.videos)
    _check_locally(params)
    first = Path(params.video_paths[0])
    out = Path(args.out).resolve() if args.out else first.parent / f"session_{first.stem}"
    job = run_local(params, out, args.segmenters, quiet=args.quiet)
    return report(job, out)


def run_local(params: TrackingParams, out: Path, segmenters: int | None, quiet: bool = False):
    """Start the services, run one job through the gateway, stop everything. Returns the final Job."""
    from shoal.client import Client, follow
    from shoal.local import LocalCluster

    work = Path(tempfile.mkdtemp(prefix="shoal-local-"))
    cluster = LocalCluster(Path("/"), work, segmenters)
    interrupted = False
    job = None

    def on_sigint(*_):
        nonlocal interrupted
        interrupted = True
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGINT, on_sigint)
    signal.signal(signal.SIGTERM, on_sigint)
    try:
        cluster.start()
        if not quiet:
            print(f"shoal: services started ({cluster.segmenters} segmenter(s), 1 identifier, 1 assembler; "
                  f"logs in {cluster.log_path})", file=sys.stderr)
        client = Client(cluster.grpc_address)
        client.wait_ready()
        job = client.submit(params, output_dir=str(out))
        job = follow(client, job.job_id, quiet=quiet)
        client.close()
        return job
    except KeyboardInterrupt:
        print("\nshoal: interrupted; stopping the services", file=sys.stderr)
        raise
    finally:
        cluster.stop()
        signal.signal(signal.SIGINT, previous)
        from shoal.v1 import jobs_pb2 as pb

        if job is not None and job.state == pb.SUCCEEDED:
            _cleanup(work)
        else:
            print(f"shoal: service logs kept in {cluster.log_path}", file=sys.stderr)


def _cleanup(work: Path) -> None:
    import shutil

    shutil.rmtree(work, ignore_errors=True)


def report(job, out: Path) -> int:
    from shoal.v1 import jobs_pb2 as pb

    for w in job.warnings:
        print(f"warning: {w}", file=sys.stderr)
    if job.state != pb.SUCCEEDED:
        print(f"shoal: job {pb.JobState.Name(job.state).lower()}: {job.error}", file=sys.stderr)
        return EXIT_FAILED
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


def cmd_demo(args: argparse.Namespace) -> int:
    from shoal.evaluate import evaluate, load_predictions
    from shoal.simulate import SimulationConfig, write_simulation

    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    config = SimulationConfig(n_animals=args.animals, n_frames=args.frames, preset=args.preset, seed=args.seed)
    print(f"shoal demo: simulating {args.animals} {args.preset} x {args.frames} frames (seed {args.seed})")
    files = write_simulation(config, out / "video")
    params = TrackingParams(video_paths=[str(files["video"])], number_of_animals=args.animals, seed=args.seed,
                            track_wo_identities=args.no_identities).validate()
    session = out / "session"
    t0 = time.perf_counter()
    job = run_local(params, session, args.segmenters)
    wall = time.perf_counter() - t0
    status = report(job, session)
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
    from shoal.local import LocalCluster

    data = Path(args.data_root).resolve()
    if not data.is_dir():
        raise UsageError(f"data root {data} is not a directory")
    cluster = LocalCluster(data, data / ".shoal", args.segmenters)
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    try:
        cluster.start()
        print(f"shoal serve: gateway on {cluster.grpc_address} (data root {data}); Ctrl-C stops", flush=True)
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


def cmd_submit(args: argparse.Namespace) -> int:
    from shoal.client import follow

    params = build_params(args, args.videos)
    client = _client(args)
    if args.upload:
        try:
            job = client.upload(params, output_dir=args.out or "", name=args.name or "")
        except ValueError as exc:
            raise UsageError(str(exc)) from None
    else:
        job = client.submit(params, output_dir=args.out or "", name=args.name or "")
    print(job.job_id)
    if args.watch:
        return _finished(follow(client, job.job_id))
    return 0


def _finished(job) -> int:
    """Print how a followed job ended; exit 1 unless it succeeded, so scripts can tell."""
    from shoal.client import format_job
    from shoal.v1 import jobs_pb2 as pb

    print(format_job(job))
    if job.state != pb.SUCCEEDED:
        print(f"shoal: job {pb.JobState.Name(job.state).lower()}: {job.error}", file=sys.stderr)
        return EXIT_FAILED
    return 0


def _client(args: argparse.Namespace):
    """A client of ``--gateway`` with the command's TLS and token flags."""
    from shoal.client import Client

    try:
        return Client(args.gateway, args.token, ca_file=args.ca, tls=args.tls, cert_file=args.cert, key_file=args.key)
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def cmd_watch(args: argparse.Namespace) -> int:
    from shoal.client import follow

    return _finished(follow(_client(args), args.job))


def cmd_jobs(args: argparse.Namespace) -> int:
    from shoal.client import format_job
    from shoal.v1 import jobs_pb2 as pb

    state = pb.JobState.Value(args.state.upper()) if args.state else 0
    for job in _client(args).list(state):
        print(format_job(job))
    return 0


def cmd_cancel(args: argparse.Namespace) -> int:
    from shoal.client import format_job

    print(format_job(_client(args).cancel(args.job)))
    return 0


def cmd_fetch(args: argparse.Namespace) -> int:
    from shoal.client import write_result

    client = _client(args)
    result = client.result(args.job)
    videos = result["session"].get("videos") or {}
    try:
        written = write_result(result, Path(args.out))
    except OSError as exc:
        raise UsageError(f"cannot write the session folder {args.out}: {exc.strerror or exc}") from None
    print(f"session folder: {Path(args.out).resolve()} ({', '.join(sorted(written))})")
    remote = [*([videos["overlay"]] if videos.get("overlay") else []), *(videos.get("individual") or [])]
    if remote:  # GetResult carries arrays and session.json, not video files
        folder = Path(client.get(args.job).output_dir)
        print(f"videos (not fetched) on the gateway's data volume: {', '.join(str(folder / v) for v in remote)}")
    return 0


def cmd_video(args: argparse.Namespace) -> int:
    from shoal import render
    from shoal.video import VideoError

    codec = "lossless" if args.lossless else "mp4v"
    suffix = render.CODECS[codec][1]
    if args.individual and args.trail is not None:
        raise UsageError("--trail applies to the overlay video, not to --individual videos")
    if not args.individual and args.size is not None:
        raise UsageError("--size applies to --individual videos")
    if args.trail is not None and args.trail < 0:
        raise UsageError(f"--trail must be >= 0 frames, got {args.trail}")
    if args.size is not None and args.size < MIN_INDIVIDUAL_VIDEO_SIZE:
        raise UsageError(f"--size must be at least {MIN_INDIVIDUAL_VIDEO_SIZE} pixels, got {args.size}")
    if args.out and not args.individual and Path(args.out).suffix.lower() != suffix:
        raise UsageError(f"--out {args.out}: the {codec} overlay video must be named *{suffix}")
    try:
        session = render.open_session(args.session)
        start, stop = render.frame_range(len(session.trajectories), args.start, args.end)
        if args.individual:
            side = render.default_side(session.body_length) if args.size is None else args.size
            folder = Path(args.out) if args.out else session.folder / render.INDIVIDUAL_FOLDER
            written = render.write_individual_videos(session, folder, start, stop, side, codec)
            unseen = render.unseen_identities(session, written)
            print(f"{len(written)} individual videos ({side}x{side} px, frames {start}-{stop - 1}) in {folder}")
            if unseen:
                print(f"warning: no video for identities never seen in these frames: {', '.join(unseen)}",
                      file=sys.stderr)
        else:
            out = Path(args.out) if args.out else render.overlay_path(session.folder, codec)
            trail = DEFAULT_VIDEO_TRAIL if args.trail is None else args.trail
            render.write_overlay_video(session, out, start, stop, trail, codec)
            print(f"overlay video (frames {start}-{stop - 1}): {out}")
    except (render.RenderError, VideoError) as exc:
        raise UsageError(str(exc)) from None
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="shoal", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("track", help="track videos locally (starts the services itself)")
    t.add_argument("videos", nargs="+", help="video file(s); several files form one session")
    t.add_argument("--out", help="session folder (default: session_<video name> beside the video)")
    t.add_argument("--segmenters", type=int, help="segmenter processes (default: cores - 1)")
    t.add_argument("--quiet", action="store_true", help="no progress bars")
    _add_tracking_flags(t)
    t.set_defaults(func=cmd_track)

    d = sub.add_parser("demo", help="simulate a short video, track it locally, score it against the truth")
    d.add_argument("--out", default="shoal-demo", help="folder for the video, truth and session")
    d.add_argument("--animals", type=int, default=4)
    d.add_argument("--frames", type=int, default=600)
    d.add_argument("--preset", default="fish", choices=["fish", "flies", "mice"])
    d.add_argument("--seed", type=int, default=1)
    d.add_argument("--segmenters", type=int)
    d.add_argument("--no-identities", action="store_true")
    d.set_defaults(func=cmd_demo)

    s = sub.add_parser("serve", help="run a local gateway and workers until Ctrl-C")
    s.add_argument("--data-root", default=".", help="jobs may read and write only under this folder")
    s.add_argument("--segmenters", type=int)
    s.set_defaults(func=cmd_serve)

    sb = sub.add_parser("submit", help="submit a job to a gateway; prints its id")
    sb.add_argument("videos", nargs="+", help="videos: a path that exists here is sent absolute; any other "
                                              "is read by the gateway relative to its data root")
    sb.add_argument("--out", help="session folder on the gateway's data volume")
    sb.add_argument("--name")
    sb.add_argument("--watch", action="store_true", help="then follow it to the end")
    _add_tracking_flags(sb)
    sb.set_defaults(func=cmd_submit)

    for name, func, help_ in (("watch", cmd_watch, "follow a job's progress"),
                              ("cancel", cmd_cancel, "cancel a job")):
        c = sub.add_parser(name, help=help_)
        c.add_argument("job")
        c.set_defaults(func=func)
    j = sub.add_parser("jobs", help="list jobs")
    j.add_argument("--state", choices=["queued", "running", "succeeded", "failed", "cancelled"])
    j.set_defaults(func=cmd_jobs)
    f = sub.add_parser("fetch", help="write a finished job's session folder locally")
    f.add_argument("job")
    f.add_argument("--out", required=True)
    f.set_defaults(func=cmd_fetch)
    sb.add_argument("--upload", action="store_true",
                    help="send the local video files to the gateway (up to its upload limit) instead of paths")
    for c in (sb, sub.choices["watch"], sub.choices["cancel"], j, f):
        c.add_argument("--gateway", default=DEFAULT_GATEWAY, help="gateway address host:port [SHOAL_GATEWAY]")
        c.add_argument("--token", default=os.environ.get("SHOAL_TOKEN"),
                       help="bearer token the gateway requires [SHOAL_TOKEN; prefer it to the flag, which ps shows]")
        c.add_argument("--ca", default=os.environ.get("SHOAL_CA"), metavar="PEM",
                       help="talk TLS; the gateway's certificate must chain to this CA file [SHOAL_CA]")
        c.add_argument("--tls", action="store_true", help="talk TLS, trusting the system's CAs")
        c.add_argument("--cert", default=os.environ.get("SHOAL_CERT"), metavar="PEM",
                       help="client certificate, for a gateway that requires one (mutual TLS) [SHOAL_CERT]")
        c.add_argument("--key", default=os.environ.get("SHOAL_KEY"), metavar="PEM",
                       help="private key of --cert [SHOAL_KEY]")

    v = sub.add_parser(
        "video", help="overlay video (identity labels and trails) or animal-centred videos of a session",
        description="Draw a session's result on its original frames: a dot, label and trail in one colour per "
                    "identity (SESSION/overlay.mp4), or with --individual one video per identity centred on "
                    "the animal (SESSION/individual_videos/). Videos are MPEG-4 Part 2 (mp4v) in .mp4: small, "
                    "lossy, plays in common players; with --lossless FFV1 in .avi: exact pixels, larger, "
                    "plays in VLC or ffmpeg.")
    v.add_argument("session", help="session folder written by shoal track")
    v.add_argument("--trail", type=int, metavar="FRAMES", help="trail length in frames (default 20; 0: none)")
    v.add_argument("--start", type=int, metavar="F", help="first frame (default 0)")
    v.add_argument("--end", type=int, metavar="F", help="frame after the last one (default: end of session)")
    v.add_argument("--individual", action="store_true", help="one animal-centred grey video per identity")
    v.add_argument("--size", type=int, metavar="PX",
                   help="side of the individual videos in pixels (default: the session's body length, made even)")
    v.add_argument("--out", metavar="PATH", help="overlay video file (*.mp4, or *.avi with --lossless), or the "
                                                 "folder of the individual videos")
    v.add_argument("--lossless", action="store_true", help="FFV1 in .avi instead of mp4v in .mp4")
    v.set_defaults(func=cmd_video)

    for name, module in (("simulate", "shoal.simulate"), ("evaluate", "shoal.evaluate")):
        sub.add_parser(name, help=f"see shoal {name} --help", add_help=False).set_defaults(module=module)
    return p


def rpc_error_line(exc: grpc.RpcError, gateway: str) -> tuple[grpc.StatusCode | None, str]:
    """(status code, one line for the user) of a failed call: grpc's details can span lines, and
    UNAVAILABLE alone does not say which address was tried or what to check."""
    code = exc.code() if callable(getattr(exc, "code", None)) else None
    details = exc.details() if callable(getattr(exc, "details", None)) else None
    line = f"{code.name.lower() if code else 'error'}: {' '.join(str(details or exc).split())}"
    if code == grpc.StatusCode.UNAVAILABLE:
        line += (f" (is a gateway running at {gateway}? set --gateway or SHOAL_GATEWAY; a TLS gateway needs "
                 f"--ca or --tls, and --cert/--key if it requires client certificates)")
    return code, line


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in ("simulate", "evaluate"):
        import importlib

        return importlib.import_module(f"shoal.{argv[0]}").main(argv[1:])
    args = parser().parse_args(argv)
    try:
        return args.func(args)
    except (ParamError, UsageError) as exc:
        print(f"shoal: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except grpc.RpcError as exc:
        code, line = rpc_error_line(exc, getattr(args, "gateway", ""))
        print(f"shoal: {line}", file=sys.stderr)
        return EXIT_USAGE if code in USAGE_CODES else EXIT_FAILED
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
