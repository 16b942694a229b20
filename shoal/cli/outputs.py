"""Commands on a finished session folder or for the services' set-up, no gateway involved: ``shoal
video``, ``export``, ``review`` and ``keys``."""

from __future__ import annotations

import argparse
import os
import secrets
import sys
from pathlib import Path

from shoal.cli.common import Command, UsageError
from shoal.params import DEFAULT_VIDEO_TRAIL, MIN_INDIVIDUAL_VIDEO_SIZE, TRAJECTORY_FORMATS


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



def add_commands(command: Command) -> None:
    """Register video, export, review and keys with :func:`shoal.cli.parser`."""
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
