"""The review page for the gateway's finished jobs, over HTTP beside the gRPC API (``--http-port``).

A lab member reviews a job that ran on the cluster in their browser, without copying its video:
the page reads the session folder and the video where the job left them, on the data volume. The
app is :mod:`shoal.review.app`, the same one ``shoal review`` serves; here each succeeded job is a
session keyed by its job id, and the gateway's bearer token guards it as it guards gRPC.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

from shoal.review.app import OpenSessions, create_app, listen, server

from .jobstore import SUCCEEDED, JobStore


def start_review(store: JobStore, data_root: Path, address: str, port: int, token: str | None) -> tuple[int, Callable]:
    """Serve the review app on `address`:`port` in a thread; returns (the port, a function that stops it)."""
    root = data_root.resolve()

    def folder_of(job_id: str) -> str | None:
        record = store.get(job_id)
        if record is None or record.state != SUCCEEDED or not record.output_dir:
            return None
        folder = Path(record.output_dir).resolve()
        return str(folder) if folder.is_relative_to(root) else None

    def listing() -> list[dict]:
        return [{"key": r.job_id, "title": f"{r.name} ({r.job_id})" if r.name else r.job_id}
                for r in store.list(SUCCEEDED, limit=500)]

    sessions = OpenSessions(folder_of, listing)
    sock = listen(address, port)
    http = server(create_app(sessions, token=token, index=listing))
    thread = threading.Thread(target=http.run, kwargs={"sockets": [sock]}, name="review-http", daemon=True)
    thread.start()

    def stop() -> None:
        http.should_exit = True
        thread.join(timeout=5)
        sessions.close()
        sock.close()

    return sock.getsockname()[1], stop
