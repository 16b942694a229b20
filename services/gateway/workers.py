"""The scheduler's registry of workers: who is registered in which role, with how much credit and
which tasks, and who has gone silent. Pure (the caller passes the time and does the sending), so the
liveness and choice rules are testable without ZeroMQ."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Worker:
    wid: bytes
    role: str
    info: dict[str, Any]
    last_seen: float
    credit: int = 0
    tasks: set[tuple[str, int]] = field(default_factory=set)
    #: chunks this segmenter finished whose batch the identifier has not yet stored (`chunk_stored`)
    unstored: set[tuple[str, int]] = field(default_factory=set)


class Registry:
    """Registered workers by id. ``heartbeat_s`` and ``liveness``: a worker silent for more than
    ``liveness`` heartbeats is lost (:meth:`silent`)."""

    def __init__(self, heartbeat_s: float, liveness: int):
        self.heartbeat_s, self.liveness = heartbeat_s, liveness
        self.workers: dict[bytes, Worker] = {}
        self._last_beat = 0.0
        self._reregister_sent: dict[bytes, float] = {}

    def get(self, wid: bytes) -> Worker | None:
        return self.workers.get(wid)

    def register(self, wid: bytes, role: str, info: dict[str, Any], now: float) -> Worker:
        """A (new) ``hello``: the caller has already handled the loss of any worker of the same id."""
        worker = self.workers[wid] = Worker(wid, role, info, now)
        self._reregister_sent.pop(wid, None)
        return worker

    def remove(self, wid: bytes) -> None:
        self.workers.pop(wid, None)

    def should_reregister(self, wid: bytes, now: float) -> bool:
        """Whether to ask an unknown worker to re-register: once a heartbeat, since after a restart a
        worker's queued messages arrive in a burst, and one `reregister` each would make it reconnect
        again and again."""
        if now - self._reregister_sent.get(wid, -self.heartbeat_s) >= self.heartbeat_s:
            self._reregister_sent[wid] = now
            return True
        return False

    def beat_due(self, now: float) -> bool:
        """Whether a heartbeat is due (at most one each ``heartbeat_s``); forgets old `reregister`s."""
        if now - self._last_beat < self.heartbeat_s:
            return False
        self._last_beat = now
        self._reregister_sent = {wid: t for wid, t in self._reregister_sent.items() if now - t < 60}
        return True

    def silent(self, worker: Worker, now: float) -> bool:
        """Whether ``worker`` missed ``liveness`` heartbeats and is to be declared lost."""
        return now - worker.last_seen > self.heartbeat_s * self.liveness

    def pick(self, role: str, pinned: Iterable[bytes]) -> Worker | None:
        """The worker of ``role`` with the fewest pinned running jobs (``pinned``: one id per pin; ties:
        the lower id)."""
        candidates = [w for w in self.workers.values() if w.role == role]
        if not candidates:
            return None
        load = {w.wid: 0 for w in candidates}
        for wid in pinned:
            if wid in load:
                load[wid] += 1
        return min(candidates, key=lambda w: (load[w.wid], w.wid))

    def free(self, role: str, busy: set[bytes]) -> Worker | None:
        """The first registered worker of ``role`` not in ``busy`` (an assembler runs one job at a time)."""
        return next((w for w in self.workers.values() if w.role == role and w.wid not in busy), None)

    def forget_job(self, job_id: str) -> None:
        """An ended job's tasks no longer count as held by their segmenters."""
        for w in self.workers.values():
            w.tasks = {k for k in w.tasks if k[0] != job_id}

    def stored(self, key: tuple[str, int]) -> None:
        """A chunk's batch reached the identifier's store: losing its segmenter no longer loses it."""
        for w in self.workers.values():
            w.unstored.discard(key)
