"""Durable job records in SQLite, so a gateway restart loses no job.

One row per job; structured fields (parameters, per-stage progress, figures, the chunk plan) are
JSON columns. Writes are serialised by a lock because the gRPC threads and the scheduler thread
share one connection.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED = "QUEUED", "RUNNING", "SUCCEEDED", "FAILED", "CANCELLED"
FINAL_STATES = (SUCCEEDED, FAILED, CANCELLED)

#: below this fraction done an ETA is mostly noise
ETA_MIN_FRACTION = 0.02


def eta_seconds(elapsed: float, fraction: float) -> float | None:
    """Time left if the rest of the job goes at the pace so far; None while too little is done to say."""
    if fraction <= ETA_MIN_FRACTION:
        return None
    return elapsed * (1 - fraction) / fraction


_JSON_FIELDS = ("params", "video_paths", "stages", "figures", "warnings", "plan")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    job_id TEXT PRIMARY KEY,
    seq INTEGER NOT NULL,
    name TEXT NOT NULL,
    state TEXT NOT NULL,
    stage TEXT NOT NULL DEFAULT '',
    fraction REAL NOT NULL DEFAULT 0,
    error TEXT NOT NULL DEFAULT '',
    output_dir TEXT NOT NULL,
    created REAL NOT NULL,
    updated REAL NOT NULL,
    params TEXT NOT NULL,
    video_paths TEXT NOT NULL,
    stages TEXT NOT NULL DEFAULT '{}',
    figures TEXT NOT NULL DEFAULT '{}',
    warnings TEXT NOT NULL DEFAULT '[]',
    plan TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX IF NOT EXISTS jobs_state ON jobs(state, seq);
"""


@dataclass
class JobRecord:
    job_id: str
    seq: int
    name: str
    state: str
    output_dir: str
    created: float
    updated: float
    params: dict[str, Any]
    video_paths: list[str]
    stage: str = ""
    fraction: float = 0.0
    error: str = ""
    stages: dict[str, Any] = field(default_factory=dict)
    figures: dict[str, float] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    plan: dict[str, Any] = field(default_factory=dict)

    @property
    def final(self) -> bool:
        return self.state in FINAL_STATES


class JobStore:
    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)
        self._lock = threading.Lock()
        self.changed = threading.Condition()

    def create(self, job_id: str, name: str, params: dict, video_paths: list[str], output_dir: str) -> JobRecord:
        now = time.time()
        with self._lock:
            seq = self._db.execute("SELECT COALESCE(MAX(seq), 0) + 1 FROM jobs").fetchone()[0]
            self._db.execute(
                "INSERT INTO jobs (job_id, seq, name, state, output_dir, created, updated, params, video_paths)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (job_id, seq, name, QUEUED, output_dir, now, now, json.dumps(params), json.dumps(video_paths)),
            )
        self.notify()
        return self.get(job_id)

    def get(self, job_id: str) -> JobRecord | None:
        with self._lock:
            row = self._db.execute("SELECT * FROM jobs WHERE job_id = ?", (job_id,)).fetchone()
            cols = [c[0] for c in self._db.execute("SELECT * FROM jobs LIMIT 0").description]
        return _record(cols, row) if row else None

    def list(self, state: str | None = None, limit: int = 50, after_seq: int = 0) -> list[JobRecord]:
        query, args = "SELECT * FROM jobs WHERE seq > ?", [after_seq]
        if state:
            query += " AND state = ?"
            args.append(state)
        query += " ORDER BY seq LIMIT ?"
        args.append(limit)
        with self._lock:
            cur = self._db.execute(query, args)
            cols = [c[0] for c in cur.description]
            rows = cur.fetchall()
        return [_record(cols, r) for r in rows]

    def update(self, job_id: str, **values: Any) -> None:
        if not values:
            return
        values["updated"] = time.time()
        sets = ", ".join(f"{k} = ?" for k in values)
        args = [json.dumps(v) if k in _JSON_FIELDS else v for k, v in values.items()]
        with self._lock:
            self._db.execute(f"UPDATE jobs SET {sets} WHERE job_id = ?", [*args, job_id])
        self.notify()

    def notify(self) -> None:
        """Wake every ``WatchJob`` stream waiting on :attr:`changed`."""
        with self.changed:
            self.changed.notify_all()

    def close(self) -> None:
        with self._lock:
            self._db.close()


def _record(cols: list[str], row: tuple) -> JobRecord:
    d = dict(zip(cols, row, strict=True))
    for k in _JSON_FIELDS:
        d[k] = json.loads(d[k])
    return JobRecord(**d)
