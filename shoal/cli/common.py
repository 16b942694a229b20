"""What every ``shoal`` command shares: its two kinds of error, the exit codes they map to, the help
style, and how a failed gateway call becomes one line. Kept apart so each command module can use
them without importing the parser in ``shoal.cli``."""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable

import grpc

from shoal.help import HelpFormatter
from shoal.v1 import INVALID_INPUT

__all__ = ["DEFAULT_GATEWAY", "EXIT_CODES", "EXIT_FAILED", "EXIT_INTERRUPTED", "EXIT_USAGE", "SERVE_ADDRESS",
           "SERVE_PORT", "USAGE_CODES", "Command", "Failed", "HelpFormatter", "UsageError", "job_exit_code",
           "rpc_error_line"]

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

#: what :func:`shoal.cli.parser` hands each command module to add its subcommands with
Command = Callable[..., argparse.ArgumentParser]


class UsageError(Exception):
    """The command must change; the message says what (exit 2)."""


class Failed(Exception):
    """The command could not do its work for a reason other than its input (exit 1)."""


def job_exit_code(job) -> int:
    """0 for a job that succeeded; 2 when its input must change (its error starts with
    :data:`shoal.v1.INVALID_INPUT`); 1 when it failed or was cancelled for another reason."""
    from shoal.v1 import jobs_pb2 as pb

    if job.state == pb.SUCCEEDED:
        return 0
    return EXIT_USAGE if job.state == pb.FAILED and job.error.startswith(INVALID_INPUT) else EXIT_FAILED


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
