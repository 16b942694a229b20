"""The ``shoal`` command: identity-preserving tracking of many unmarked animals in lab videos.

``shoal track`` and ``shoal demo`` run everything locally (the services as child processes on
loopback); ``shoal serve`` keeps such a set running; ``submit``/``watch``/``jobs``/``cancel``/
``fetch`` talk to any gateway; ``simulate`` and ``evaluate`` make and score test videos.
Errors never show a traceback: see :data:`EXIT_CODES`.
"""

from __future__ import annotations

import argparse
import math
import os
import secrets
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import grpc

from shoal.help import HelpFormatter
from shoal.params import DEFAULT_VIDEO_TRAIL, MIN_INDIVIDUAL_VIDEO_SIZE, TRAJECTORY_FORMATS, ParamError, TrackingParams
from shoal.v1 import INVALID_INPUT

EXIT_USAGE, EXIT_FAILED, EXIT_INTERRUPTED = 2, 1, 130
#: what ``shoal --help``, the README and docs/api.md say; every error is one line, never a traceback
EXIT_CODES = """exit codes:
  0    done
  2    change the command: a flag or parameter out of range, a video that is missing or damaged,
       thresholds that find no animals in the video, a session folder that is not empty or not
       writable, a port in use, an unknown job id, a missing or wrong token
  1    the job failed for another reason (a service crashed), or the gateway cannot be reached or
       is out of capacity
  130  interrupted (Ctrl-C)"""
SERVE_ADDRESS, SERVE_PORT = "127.0.0.1", 50051
#: gateway answers that mean the command itself must change (its input, id or token): exit 2, not 1
USAGE_CODES = (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND, grpc.StatusCode.PERMISSION_DENIED,
               grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.UNAUTHENTICATED)
DEFAULT_GATEWAY = os.environ.get("SHOAL_GATEWAY", f"{SERVE_ADDRESS}:{SERVE_PORT}")


class UsageError(Exception):
    """The command must change; the message says what (exit 2)."""


class Failed(Exception):
    """The command could not do its work for a reason other than its input (exit 1)."""


def _add_tracking_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("tracking parameters (idtracker.ai names in --params files)")
    g.add_argument("--params", metavar="FILE.toml",
                   help="idtracker.ai-style parameter file; flags override it (default: none)")
    g.add_argument("--animals", type=int, help="number of animals (number_of_animals; default: none, required "
                                                "unless --no-identities, which then takes the most blobs in a frame)")
    g.add_argument("--intensity", type=float, nargs=2, metavar=("LO", "HI"),
                   help="foreground intensity range; with --bkg, LO is the difference threshold "
                        "(default: chosen from the video)")
    g.add_argument("--area", type=float, nargs=2, metavar=("MIN", "MAX"),
                   help="blob area range in pixels (default: minimum chosen from the video, no maximum)")
    g.add_argument("--roi", action="append", metavar="SHAPE",
                   help='region of interest, e.g. "+ Polygon [[0,0],[500,0],[500,500]]"; repeatable '
                        "(default: the whole frame)")
    g.add_argument("--exclusive-rois", action="store_true",
                   help="each separate region of the ROI is its own arena; identities are numbered "
                        "region by region (exclusive_rois)")
    g.add_argument("--allow-missing-animals", action="store_true",
                   help="track even when no sampled frame shows half of --animals (allow_missing_animals; "
                        "e.g. animals hidden most of the time)")
    g.add_argument("--animals-per-roi", type=int, nargs="+", metavar="N",
                   help="animals in each exclusive region, regions in raster order of their top pixel "
                        "(default: read from frames showing all animals apart)")
    g.add_argument("--knowledge-from", metavar="SESSION",
                   help="start identity learning from an earlier session's identity model and number the "
                        "identities as it did (knowledge_transfer_folder; same animals, same image size; "
                        "default: learn from scratch)")
    g.add_argument("--id-image-size", type=int, metavar="PX",
                   help="side of the identification images (id_image_size; default: from the body length). "
                        "Give the earlier session's size to reuse its model with --knowledge-from")
    g.add_argument("--bkg", action="store_true", help="background subtraction (use_bkg)")
    g.add_argument("--intervals", type=int, nargs="+", metavar="F",
                   help="tracking intervals as start end [start end ...] (end exclusive; default: every frame)")
    g.add_argument("--no-identities", action="store_true", help="track without identities (track_wo_identities)")
    g.add_argument("--method", choices=["contrastive", "accumulation"],
                   help=f"identity learning route (default: {TrackingParams.method})")
    g.add_argument("--seed", type=int, help=f"random seed; same seed, same CPU result (default: {TrackingParams.seed})")
    g.add_argument("--formats", nargs="+", metavar="FORMAT",
                   help=f"trajectories_formats: {' '.join(TRAJECTORY_FORMATS)} (nwb: pip install 'shoal[nwb]'; "
                        f"the [nwb] table of --params names the session and species) (default: npy h5 csv)")
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
        "allow_missing_animals": True if args.allow_missing_animals else None,
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
    from shoal.roi import RoiError, roi_mask, roi_regions
    from shoal.video import VideoError, probe_video

    try:
        info = probe_video(params.video_paths)
        if params.roi_list:
            mask = roi_mask(params.roi_list, info.width, info.height)
    except (VideoError, RoiError) as exc:
        raise UsageError(str(exc)) from None
    from shoal.session import check_formats

    try:
        check_formats(params.trajectories_formats)
    except RuntimeError as exc:
        raise ParamError("trajectories_formats", str(exc)) from None
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


@dataclass
class SessionFolder:
    """A session folder checked before any service starts (:func:`prepare_session_folder`)."""

    path: Path
    created: bool  # this command made it
    earlier: Path | None = None  # an earlier session --overwrite set aside until this run succeeds

    def finish(self, succeeded: bool) -> None:
        """Drop the earlier session after a success; after a failure put it back (and drop a folder
        this command created and the run left empty)."""
        from shoal.session import restore_session

        if self.earlier is not None:
            if succeeded:
                shutil.rmtree(self.earlier, ignore_errors=True)
            else:
                restore_session(self.path, self.earlier)
        if self.created and not succeeded:
            try:
                self.path.rmdir()
            except OSError:
                pass  # not empty (or already gone): keep what is there


def prepare_session_folder(out: Path, overwrite: bool) -> SessionFolder:
    """Check the session folder before any service starts, so a run never fails at its end for it:
    it must be a writable folder, empty unless ``overwrite``, which sets aside what an earlier Shoal
    run wrote there (Shoal's own files only) until the new run has succeeded."""
    from shoal.session import set_aside_session

    if out.exists() and not out.is_dir():
        raise UsageError(f"the session folder {out} is a file; choose another --out")
    try:
        busy = out.is_dir() and any(out.iterdir())
    except OSError as exc:
        raise UsageError(f"cannot read the session folder {out}: {exc.strerror}; choose another --out") from None
    if busy and not overwrite:
        raise UsageError(f"the session folder {out} is not empty; give --overwrite to replace the earlier session "
                         "there, or choose another --out")
    created = not out.exists()
    existing = out if not created else next((p for p in out.parents if p.exists()), Path("/"))
    if not existing.is_dir():
        raise UsageError(f"cannot write the session folder {out}: {existing} is a file; choose another --out")
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out):
            pass
        earlier = set_aside_session(out) if overwrite else None
    except OSError as exc:
        what = "new folders" if created else "new files"
        raise UsageError(f"cannot write the session folder {out}: {existing} does not take {what} ({exc.strerror}); "
                         "choose another --out") from None
    return SessionFolder(out, created, earlier)


def cmd_track(args: argparse.Namespace) -> int:
    params = build_params(args, args.videos)
    _check_locally(params)
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


def job_exit_code(job) -> int:
    """0 for a job that succeeded; 2 when its input must change (its error starts with
    :data:`shoal.v1.INVALID_INPUT`); 1 when it failed or was cancelled for another reason."""
    from shoal.v1 import jobs_pb2 as pb

    if job.state == pb.SUCCEEDED:
        return 0
    return EXIT_USAGE if job.state == pb.FAILED and job.error.startswith(INVALID_INPUT) else EXIT_FAILED


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
    """Print how a followed job ended; exit 2 or 1 unless it succeeded (:func:`job_exit_code`), so scripts can tell."""
    from shoal.client import format_job
    from shoal.v1 import jobs_pb2 as pb

    print(format_job(job))
    status = job_exit_code(job)
    if status:
        print(f"shoal: job {pb.JobState.Name(job.state).lower()}: {job.error}", file=sys.stderr)
    return status


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
    from shoal.client import asked_formats, write_result
    from shoal.nwb import MISSING_LIBRARY, nwb_available

    out = Path(args.out).resolve()
    client = _client(args)
    result = client.result(args.job)  # an unknown or unfinished job first: it leaves no folder behind
    folder = prepare_session_folder(out, args.overwrite)
    videos = result["session"].get("videos") or {}
    formats = asked_formats(result["session"])
    if "nwb" in formats and not nwb_available():
        formats = [f for f in formats if f != "nwb"] or ["npy"]
        print(f"warning: NWB files not written here ({MISSING_LIBRARY}); then shoal export {out} --format nwb",
              file=sys.stderr)
    try:
        written = write_result(result, out, formats)
    except OSError as exc:
        folder.finish(False)
        raise UsageError(f"cannot write the session folder {out}: {exc.strerror or exc}") from None
    folder.finish(True)
    print(f"session folder: {out} ({', '.join(sorted(written))})")
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


def cmd_export(args: argparse.Namespace) -> int:
    from shoal.export import ExportError, export_session

    try:
        written, warnings = export_session(Path(args.session), args.format, args.out and Path(args.out),
                                           args.metadata and Path(args.metadata))
    except ExportError as exc:
        raise UsageError(str(exc)) from None
    for line in warnings:
        print(f"warning: {line}", file=sys.stderr)
    print(f"{args.format}: {written}")
    return 0


def cmd_review(args: argparse.Namespace) -> int:
    from shoal.review.app import serve_folder
    from shoal.review.session import ReviewError

    token = args.token or secrets.token_urlsafe(16)
    try:
        serve_folder(args.session, host=args.host, port=args.port, token=token, open_browser=not args.no_browser,
                     ready=lambda url: print(f"shoal review: {url}\n(Ctrl-C to stop; corrections are saved as you "
                                             f"make them, in {Path(args.session) / 'corrections.json'})", flush=True))
    except ReviewError as exc:
        raise UsageError(str(exc)) from None
    except OSError as exc:
        raise UsageError(f"cannot listen on {args.host}:{args.port}: {exc.strerror or exc}") from None
    except KeyboardInterrupt:  # uvicorn re-raises the Ctrl-C it stopped on: here it is how a review ends
        pass
    return 0


def cmd_keys(args: argparse.Namespace) -> int:
    from shoal.curve import CurveError, generate

    try:
        folder = generate(args.folder)
    except (CurveError, OSError) as exc:
        raise UsageError(str(exc)) from None
    print(f"CURVE keys in {folder}: give every service --curve-keys {folder} (SHOAL_CURVE_KEYS); keep the "
          f"*.key_secret files secret. Kubernetes: kubectl create secret generic shoal-curve "
          f"--from-file={folder / 'server.key_secret'} --from-file={folder / 'client.key_secret'} "
          f"--from-file={folder / 'allowed' / 'client.key'}")
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="shoal", formatter_class=HelpFormatter, epilog=f"Each command has its own --help.\n\n{EXIT_CODES}",
        description="Identity-preserving tracking of many unmarked animals in lab videos: track them here, or "
                    "send jobs to a Shoal gateway.")
    sub = p.add_subparsers(dest="command", required=True, title="commands", metavar="COMMAND")

    def command(name: str, help_: str, **kwargs) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=help_, description=kwargs.pop("description", help_[0].upper() + help_[1:]),
                              epilog=EXIT_CODES, formatter_class=HelpFormatter, **kwargs)

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
    _add_tracking_flags(t)
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

    sb = command("submit", "submit a job to a gateway; prints its id")
    sb.add_argument("videos", nargs="+", help="videos: a path that exists here is sent absolute; any other "
                                              "is read by the gateway relative to its data root")
    sb.add_argument("--out", help="session folder on the gateway's data volume (default: the gateway's "
                                  "DATA_ROOT/sessions/<job id>)")
    sb.add_argument("--name", default="", help="a label shown by shoal jobs (default: none)")
    sb.add_argument("--watch", action="store_true", help="then follow it to the end")
    sb.add_argument("--upload", action="store_true",
                    help="send the local video files to the gateway (up to its upload limit) instead of paths")
    _add_tracking_flags(sb)
    sb.set_defaults(func=cmd_submit)

    w = command("watch", "follow a job's progress to its end")
    c = command("cancel", "cancel a job")
    for each, func in ((w, cmd_watch), (c, cmd_cancel)):
        each.add_argument("job", help="job id (shoal jobs lists them)")
        each.set_defaults(func=func)
    j = command("jobs", "list a gateway's jobs")
    j.add_argument("--state", choices=["queued", "running", "succeeded", "failed", "cancelled"],
                   help="only jobs in this state (default: all)")
    j.set_defaults(func=cmd_jobs)
    f = command("fetch", "write a finished job's session folder here")
    f.add_argument("job", help="job id (shoal jobs lists them)")
    f.add_argument("--out", required=True, help="local session folder to write")
    f.add_argument("--overwrite", action="store_true",
                   help="write into a folder that is not empty, replacing an earlier session there (kept if "
                        "the fetch fails)")
    f.set_defaults(func=cmd_fetch)
    for each in (sb, w, c, j, f):
        each.add_argument("--gateway", default=DEFAULT_GATEWAY, help="gateway address host:port [SHOAL_GATEWAY]")
        each.add_argument("--token", default=os.environ.get("SHOAL_TOKEN"),
                          help="bearer token the gateway requires [SHOAL_TOKEN; prefer it to the flag, which ps "
                               "shows] (default: none)")
        each.add_argument("--ca", default=os.environ.get("SHOAL_CA"), metavar="PEM",
                          help="talk TLS; the gateway's certificate must chain to this CA file [SHOAL_CA] "
                               "(default: plaintext)")
        each.add_argument("--tls", action="store_true", help="talk TLS, trusting the system's CAs")
        each.add_argument("--cert", default=os.environ.get("SHOAL_CERT"), metavar="PEM",
                          help="client certificate, for a gateway that requires one (mutual TLS) [SHOAL_CERT] "
                               "(default: none)")
        each.add_argument("--key", default=os.environ.get("SHOAL_KEY"), metavar="PEM",
                          help="private key of --cert [SHOAL_KEY] (default: none)")

    v = command(
        "video", "draw identities on the video, or animal-centred videos",
        description="Draw a session's result on its original frames: a dot, label and trail in one colour per "
                    "identity (SESSION/overlay.mp4), or with --individual one video per identity centred on "
                    "the animal (SESSION/individual_videos/). Videos are MPEG-4 Part 2 (mp4v) in .mp4: small, "
                    "lossy, plays in common players; with --lossless FFV1 in .avi: exact pixels, larger, "
                    "plays in VLC or ffmpeg.")
    v.add_argument("session", help="session folder written by shoal track")
    v.add_argument("--trail", type=int, metavar="FRAMES",
                   help=f"trail length in frames (default {DEFAULT_VIDEO_TRAIL}; 0: none)")
    v.add_argument("--start", type=int, metavar="F", help="first frame (default 0)")
    v.add_argument("--end", type=int, metavar="F", help="frame after the last one (default: end of session)")
    v.add_argument("--individual", action="store_true", help="one animal-centred grey video per identity")
    v.add_argument("--size", type=int, metavar="PX",
                   help="side of the individual videos in pixels (default: the session's body length, made even)")
    v.add_argument("--out", metavar="PATH", help="overlay video file (*.mp4, or *.avi with --lossless), or the "
                                                 "folder of the individual videos (default: in the session folder)")
    v.add_argument("--lossless", action="store_true", help="FFV1 in .avi instead of mp4v in .mp4")
    v.set_defaults(func=cmd_video)

    e = command(
        "export", "write a session's trajectories in another format (NWB, SLEAP, ...)",
        description="Write a finished session's trajectories (SESSION/trajectories/trajectories.npy) in another "
                    "format: nwb (one NWB file per identity, with ndx-pose: pip install 'shoal[nwb]'), sleap "
                    "(SLEAP analysis HDF5, one per video), h5, csv, csv_tidy or npy. movement, SLEAP, sleap-io "
                    "and pynwb open them.")
    e.add_argument("session", help="session folder written by shoal track or shoal fetch")
    e.add_argument("--format", required=True, choices=TRAJECTORY_FORMATS, help="the format to write")
    e.add_argument("--out", metavar="FOLDER", help="folder to write into (default: SESSION/trajectories)")
    e.add_argument("--metadata", metavar="TOML", help="a TOML file whose [nwb] table (session start, species, "
                                                      "...) replaces the session's (default: the session's own)")
    e.set_defaults(func=cmd_export)

    r = command(
        "review", "review and correct a session in the browser",
        description="Open a session in a web page: step through its frames with every identity drawn, jump to the "
                    "doubtful moments, swap identities, move or delete positions and mark ranges checked. "
                    "Corrections are saved at once in SESSION/corrections.json and applied to "
                    "SESSION/trajectories_corrected/ (the original trajectories stay as they are); checked ranges "
                    "are ground truth for shoal evaluate --truth-from-review.")
    r.add_argument("session", help="session folder written by shoal track or shoal fetch")
    r.add_argument("--port", type=int, default=0, help="HTTP port (default: any free port; the URL is printed)")
    r.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default: this machine only; another address lets others on the "
                        "network in, with the token)")
    r.add_argument("--token", default=os.environ.get("SHOAL_REVIEW_TOKEN"),
                   help="token the page requires [SHOAL_REVIEW_TOKEN] (default: a new random one, in the URL)")
    r.add_argument("--no-browser", action="store_true", help="only print the URL")
    r.set_defaults(func=cmd_review)

    k = command("keys", "write a CURVE key folder for the services' ZeroMQ sockets",
                description="Write a new key folder: the servers' key pair, a client key pair and allowed/ with the "
                            "client's public key. Services given --curve-keys FOLDER (SHOAL_CURVE_KEYS) encrypt every "
                            "ZeroMQ socket and admit only clients whose public key is in allowed/.")
    k.add_argument("folder", help="folder to create (must not hold keys already)")
    k.set_defaults(func=cmd_keys)

    # their own parsers (shoal simulate --help); main() hands them the rest of the command line
    command("simulate", "synthetic videos of look-alike animals with ground truth", add_help=False)
    command("evaluate", "score trajectories against a simulation's ground truth", add_help=False)
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

        return importlib.import_module({"simulate": "shoal.sim"}.get(argv[0], f"shoal.{argv[0]}")).main(argv[1:])
    args = parser().parse_args(argv)
    try:
        return args.func(args)
    except (ParamError, UsageError) as exc:
        print(f"shoal: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except Failed as exc:
        print(f"shoal: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except grpc.RpcError as exc:
        code, line = rpc_error_line(exc, getattr(args, "gateway", ""))
        print(f"shoal: {line}", file=sys.stderr)
        return EXIT_USAGE if code in USAGE_CODES else EXIT_FAILED
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
