"""Service configuration: one dataclass per service, filled from flags, then ``SHOAL_*`` environment
variables, then the documented defaults (in that order of precedence).

A field ``data_root`` is set by ``--data-root`` or ``SHOAL_DATA_ROOT``; its help text is the
field's ``metadata["help"]``, so ``shoal-gateway --help`` is the documentation.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
from typing import Any, TypeVar

C = TypeVar("C")


def parse_config(cls: type[C], argv: list[str] | None, description: str) -> C:
    parser = argparse.ArgumentParser(description=description)
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        env = f"SHOAL_{f.name.upper()}"
        default = os.environ.get(env, f.default)
        kind = _type_of(f)
        if kind is bool:
            default = str(default).lower() in ("1", "true", "yes") if isinstance(default, str) else default
            parser.add_argument(f"--{f.name.replace('_', '-')}", dest=f.name, default=default,
                                action=argparse.BooleanOptionalAction, help=f"{f.metadata.get('help', '')} [{env}]")
        else:
            shown = "(hidden)" if f.metadata.get("secret") else "%(default)s"
            parser.add_argument(f"--{f.name.replace('_', '-')}", dest=f.name, type=kind, default=default,
                                help=f"{f.metadata.get('help', '')} [{env}] (default: {shown})")
    args = parser.parse_args(argv)
    try:
        return cls(**{f.name: _convert(f, getattr(args, f.name)) for f in dataclasses.fields(cls)})
    except ValueError as exc:
        parser.error(str(exc))
        raise


def _type_of(f: dataclasses.Field) -> Any:
    t = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", "str")
    return {"int": int, "float": float, "bool": bool}.get(t.split(" ")[0], str)


def _convert(f: dataclasses.Field, value: Any) -> Any:
    return _type_of(f)(value) if value is not None and not isinstance(value, bool) else value


def setup_logging(name: str) -> logging.Logger:
    level = os.environ.get("SHOAL_LOG_LEVEL", "INFO").upper()
    logging.basicConfig(stream=sys.stderr, level=level,
                        format=f"%(asctime)s {name}[%(process)d] %(levelname)s %(message)s")
    return logging.getLogger(f"shoal.{name}")
