"""The session folder a command writes (``track``, ``demo``, ``fetch``), checked before any work
starts so a run never fails at its end for it."""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from shoal.cli.common import UsageError


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
