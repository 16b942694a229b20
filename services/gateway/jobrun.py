"""What the scheduler knows of a running job and of each of its tasks (rebuilt from the store after a
restart, never stored itself)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .jobstore import JobRecord

#: counted attempts of one task before its job fails (attempts handed back untouched do not count)
MAX_ATTEMPTS = 3


@dataclass
class Task:
    job_id: str
    index: int  # -1 = probe, else chunk index
    body: dict[str, Any]
    attempt: int = 0
    released: int = 0  # attempts handed back untouched (a stopping segmenter): they do not count as failures
    worker: bytes | None = None
    done: bool = False
    stored: bool = False  # a chunk's batch is in the identifier's store (its `chunk_stored` came)
    last_error: str = ""

    @property
    def key(self) -> tuple[str, int]:
        return (self.job_id, self.index)

    @property
    def frames(self) -> int:
        """How many frames a chunk task segments."""
        return self.body["stop"] - self.body["start"]


@dataclass
class JobRun:
    """A running job: the workers it is pinned to, its tasks, its stages and where the re-pin stands."""

    record: JobRecord
    identifier: bytes
    assembler: bytes
    started: float
    tasks: dict[int, Task] = field(default_factory=dict)
    stages: dict[str, dict[str, float]] = field(default_factory=dict)
    #: role -> when its pinned worker was lost; the job is paused until a replacement is pinned
    missing: dict[str, float] = field(default_factory=dict)
    #: a `resume` was sent (at `resume_sent`) and its `resume_ack` has not come: the job stays paused
    resuming: bool = False
    resume_sent: float = 0.0
    #: the roles replaced since the last `resume_ack`
    replaced: list[str] = field(default_factory=list)

    @property
    def paused(self) -> bool:
        return bool(self.missing or self.resuming)

    def chunk_tasks(self) -> list[Task]:
        return [self.tasks[i] for i in sorted(self.tasks) if i >= 0]


def add_warnings(warnings: list[str], *new: str) -> list[str]:
    """``warnings`` plus ``new``, each once: a job that runs again must not repeat its warnings."""
    return list(dict.fromkeys([*warnings, *new]))
