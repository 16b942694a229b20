"""``shoal export``: an existing session's trajectories in another format, e.g. NWB or SLEAP.

It reads the session's ``trajectories.npy`` (what the job wrote, or what a later correction saved)
and ``session.json``, and writes with the same writers a job uses, so an exported file is the file
the job would have written with that format asked for.
"""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

from shoal.nwb import check_nwb_metadata, nwb_metadata
from shoal.session import load_session
from shoal.trajectory_files import NO_SPECIES, trajectories_dict, write_trajectories


class ExportError(Exception):
    """What stops an export, in one line for the user."""


def read_metadata(path: Path) -> dict:
    """The ``[nwb]`` table of a TOML file (a tracking parameter file will do)."""
    try:
        with open(path, "rb") as stream:
            table = tomllib.load(stream).get("nwb")
    except OSError as exc:
        raise ExportError(f"cannot read {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ExportError(f"{path} is not valid TOML: {exc}") from None
    if table is None:
        raise ExportError(f"{path} has no [nwb] table")
    try:
        return check_nwb_metadata(table)
    except ValueError as exc:
        raise ExportError(f"{path}: nwb: {exc}") from None


def export_session(session_folder: Path, fmt: str, out: Path | None = None,
                   metadata: Path | None = None) -> tuple[Path, list[str]]:
    """Write the session's trajectories as `fmt` into `out` (default: its ``trajectories/``);
    `metadata` is a TOML file whose ``[nwb]`` table replaces the session's. Returns (what was
    written, warnings)."""
    folder = Path(session_folder)
    if not folder.is_dir():
        raise ExportError(f"{folder} is not a session folder (no such folder)")
    if not (folder / "trajectories" / "trajectories.npy").is_file():
        raise ExportError(f"{folder} holds no trajectories/trajectories.npy: not a finished Shoal session, or one "
                          "written without the npy format, which export reads")
    session_json = folder / "session.json"
    session = json.loads(session_json.read_text()) if session_json.is_file() else {}
    if metadata is not None:
        session["parameters"] = {**(session.get("parameters") or {}), "nwb": read_metadata(metadata)}
    trajectories = trajectories_dict(load_session(folder))
    try:
        written = write_trajectories(Path(out) if out else folder / "trajectories", trajectories, session, (fmt,))
    except OSError as exc:
        raise ExportError(f"cannot write {exc.filename or out}: {exc.strerror or exc}") from None
    except (ValueError, RuntimeError) as exc:  # an unknown format, or its library missing: checked before writing
        raise ExportError(str(exc)) from None
    warnings = []
    if fmt == "nwb" and not nwb_metadata(session).get("species"):
        warnings.append(NO_SPECIES + " (or give it with --metadata)")
    return written[fmt], warnings
