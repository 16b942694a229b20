"""The start-up every worker service (segmenter, identifier, assembler) shares, so that each
``main()`` says only what is its own: its config class and how to build the worker."""

from __future__ import annotations

import logging
import signal
from collections.abc import Callable
from typing import Any, Protocol, TypeVar

from prometheus_client import start_http_server

from shoal import curve
from shoal.config import setup_logging


class Worker(Protocol):
    stopping: bool

    def run(self) -> None: ...


W = TypeVar("W", bound=Worker)


def run_worker(role: str, cfg: Any, make: Callable[[Any, logging.Logger], W]) -> W:
    """Log as ``role``, use CURVE when ``cfg.curve_keys`` names a key folder (exit with one clear
    line if it is unusable), serve metrics on ``cfg.metrics_port`` (-1: none), build the worker and
    run it until SIGTERM or SIGINT asks it to stop; return it, stopped."""
    log = setup_logging(role)
    curve.enable_or_exit(cfg.curve_keys, role)
    if cfg.metrics_port >= 0:
        start_http_server(cfg.metrics_port)
    worker = make(cfg, log)

    def stop(*_: object) -> None:
        worker.stopping = True  # the worker finishes what it holds, says goodbye and returns

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    worker.run()
    return worker
