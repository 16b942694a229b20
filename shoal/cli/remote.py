"""``shoal submit``, ``watch``, ``jobs``, ``cancel`` and ``fetch``: gRPC clients of any gateway, with
the address, token and TLS flags they all take."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from shoal.cli.common import DEFAULT_GATEWAY, Command, UsageError, job_exit_code
from shoal.cli.flags import add_tracking_flags, build_params
from shoal.cli.folders import prepare_session_folder


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



def add_commands(command: Command) -> None:
    """Register submit, watch, cancel, jobs and fetch with :func:`shoal.cli.parser`."""
    sb = command("submit", "submit a job to a gateway; prints its id")
    sb.add_argument("videos", nargs="+", help="videos: a path that exists here is sent absolute; any other "
                                              "is read by the gateway relative to its data root")
    sb.add_argument("--out", help="session folder on the gateway's data volume (default: the gateway's "
                                  "DATA_ROOT/sessions/<job id>)")
    sb.add_argument("--name", default="", help="a label shown by shoal jobs (default: none)")
    sb.add_argument("--watch", action="store_true", help="then follow it to the end")
    sb.add_argument("--upload", action="store_true",
                    help="send the local video files to the gateway (up to its upload limit) instead of paths")
    add_tracking_flags(sb)
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
