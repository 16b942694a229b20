"""Which pending task goes to which segmenter. Pure: the scheduler sends the task and books the credit.

Segmenters ask for work with credit (the zguide's load-balancing pattern), so a fast segmenter gets
more tasks; among jobs, the one with the fewest tasks on segmenters goes first, so that a long job
cannot hold every segmenter while a short one waits.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable

from .jobrun import Task
from .workers import Worker


def choose_segmenter(workers: Iterable[Worker]) -> Worker | None:
    """The segmenter with credit holding the fewest tasks (ties: the lower id), or None."""
    ready = [w for w in workers if w.role == "segmenter" and w.credit > 0]
    return min(ready, key=lambda w: (len(w.tasks), w.wid)) if ready else None


def in_flight(workers: Iterable[Worker]) -> dict[str, int]:
    """How many tasks of each job segmenters hold."""
    counts: dict[str, int] = {}
    for w in workers:
        for job_id, _ in w.tasks:
            counts[job_id] = counts.get(job_id, 0) + 1
    return counts


def next_task(pending: deque[Task], held: dict[str, int], paused: Callable[[str], bool]) -> Task | None:
    """Take from ``pending`` the first task of the job with the fewest tasks ``held`` by segmenters
    (ties: the older task). Tasks of jobs for which ``paused`` is true wait."""
    first: dict[str, int] = {}
    for i, task in enumerate(pending):
        if not paused(task.job_id):
            first.setdefault(task.job_id, i)
    if not first:
        return None
    i = min(first.values(), key=lambda i: (held.get(pending[i].job_id, 0), i))
    task = pending[i]
    del pending[i]
    return task
