"""The tracking flags of ``shoal track`` and ``shoal submit``, the one place they become
TrackingParams, and the pre-flight check that catches bad input before any service starts."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

from shoal.cli.common import UsageError
from shoal.params import PARAMS, Param, ParamError, TrackingParams, default_text


def add_tracking_flags(p: argparse.ArgumentParser) -> None:
    """One flag per row of the parameter table that names one (``shoal.params.PARAMS``)."""
    g = p.add_argument_group("tracking parameters (idtracker.ai names in --params files)")
    g.add_argument("--params", metavar="FILE.toml",
                   help="idtracker.ai-style parameter file; flags override it (default: none)")
    for name, row in PARAMS.items():
        if row.flag:  # the key a --params file takes, marked where idtracker.ai has none
            key = f"{name}, Shoal's own" if row.own else name
            g.add_argument(row.flag, dest=name, help=f"{row.help} ({key}; default: {default_text(name)})",
                           **_ARGPARSE[row.kind](row))


#: argparse's reading of each kind of parameter; every flag's value is None when not given
_ARGPARSE: dict[str, Callable[[Param], dict[str, Any]]] = {
    "switch": lambda row: {"action": "store_true", "default": None},
    "whole": lambda row: {"type": int, "metavar": row.metavar},
    "image_size": lambda row: {"type": int, "metavar": row.metavar},
    "text": lambda row: {"choices": row.choices} if row.choices else {"metavar": row.metavar},
    "pair": lambda row: {"type": float, "nargs": 2, "metavar": row.metavar},
    "texts": lambda row: ({"action": "append"} if row.repeat else {"nargs": "+"}) | {"metavar": row.metavar},
    "counts": lambda row: {"type": int, "nargs": "+", "metavar": row.metavar},
    "intervals": lambda row: {"type": int, "nargs": "+", "metavar": row.metavar},
}


def build_params(args: argparse.Namespace, videos: list[str]) -> TrackingParams:
    """The --params file, overridden by the flags given, for ``videos``; paths the gateway opens are
    sent absolute when they exist here."""
    base = TrackingParams.from_toml(args.params).to_dict() if args.params else {}
    given = {name: getattr(args, name) for name, row in PARAMS.items()
             if row.flag and getattr(args, name) is not None}
    if "tracking_intervals" in given:
        flat = given["tracking_intervals"]
        if len(flat) % 2:
            raise ParamError("tracking_intervals", "--intervals needs pairs of frames: start end [start end ...]")
        given["tracking_intervals"] = list(zip(flat[::2], flat[1::2], strict=True))
    merged = {**base, **given, "video_paths": videos}
    for name, row in PARAMS.items():
        if row.path and merged.get(name):
            value = merged[name]
            merged[name] = [_gateway_path(v) for v in value] if isinstance(value, list) else _gateway_path(value)
    return TrackingParams.from_dict(merged).validate()


def _gateway_path(path: str) -> str:
    """A path that exists here goes to the gateway absolute (local mode and `shoal serve` share this
    file system); any other as given, which a remote gateway reads relative to its data root."""
    return str(Path(path).resolve()) if Path(path).exists() else path


def check_locally(params: TrackingParams) -> None:
    """Catch bad input before starting any service (:func:`shoal.preflight.preflight`, as the gateway
    does at submission): one clear line instead of a failed job."""
    from shoal.preflight import preflight
    from shoal.video import VideoError

    try:
        preflight(params)
    except VideoError as exc:
        raise UsageError(str(exc)) from None
    except RuntimeError as exc:  # a format whose library is missing here
        raise ParamError("trajectories_formats", str(exc)) from None
