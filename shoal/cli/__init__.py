"""The ``shoal`` command: identity-preserving tracking of many unmarked animals in lab videos.

``shoal track`` and ``shoal demo`` run everything locally (the services as child processes on
loopback); ``shoal serve`` keeps such a set running; ``submit``/``watch``/``jobs``/``cancel``/
``fetch`` talk to any gateway; ``simulate`` and ``evaluate`` make and score test videos.
Errors never show a traceback: see :data:`~shoal.cli.common.EXIT_CODES`.

This module assembles the parser and maps errors to exit codes; each command lives with its
kind: :mod:`~shoal.cli.local_runs` (track, demo, serve), :mod:`~shoal.cli.remote` (gateway
clients), :mod:`~shoal.cli.outputs` (video, export, review, keys), with :mod:`~shoal.cli.flags`
(tracking flags to parameters), :mod:`~shoal.cli.folders` (session folders) and
:mod:`~shoal.cli.common` (errors, exit codes) shared.
"""

from __future__ import annotations

import argparse
import sys

import grpc

from shoal.cli import local_runs, outputs, remote
from shoal.cli.common import (
    EXIT_CODES,
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_USAGE,
    USAGE_CODES,
    Failed,
    HelpFormatter,
    UsageError,
    rpc_error_line,
)
from shoal.params import ParamError


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="shoal", formatter_class=HelpFormatter, epilog=f"Each command has its own --help.\n\n{EXIT_CODES}",
        description="Identity-preserving tracking of many unmarked animals in lab videos: track them here, or "
                    "send jobs to a Shoal gateway.")
    sub = p.add_subparsers(dest="command", required=True, title="commands", metavar="COMMAND")

    def command(name: str, help_: str, **kwargs) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=help_, description=kwargs.pop("description", help_[0].upper() + help_[1:]),
                              epilog=EXIT_CODES, formatter_class=HelpFormatter, **kwargs)

    local_runs.add_commands(command)  # track, demo, serve
    remote.add_commands(command)  # submit, watch, cancel, jobs, fetch
    outputs.add_commands(command)  # video, export, review, keys

    # their own parsers (shoal simulate --help); main() hands them the rest of the command line
    command("simulate", "synthetic videos of look-alike animals with ground truth", add_help=False)
    command("evaluate", "score trajectories against a simulation's ground truth", add_help=False)
    return p


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
