"""The gateway's Prometheus metrics (names ``shoal_*``, base units; job ids only on the per-job
series, which exist only while the job runs).

Counters and gauges whose label values are known up front are created at import, so their series
exist at 0 from the first scrape: ``increase()`` in alerts then sees the first event, and dashboards
show 0 rather than "no data". State that the scheduler already holds (queue, running jobs) is read
at scrape time by :func:`watch` instead of being mirrored into gauges that could drift.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import REGISTRY, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from .jobstore import JobStore, eta_seconds

if TYPE_CHECKING:
    from .scheduler import Scheduler

ROLES = ("segmenter", "identifier", "assembler")
FINAL_STATES = ("succeeded", "failed", "cancelled")

WORKERS = Gauge("shoal_workers", "Workers registered with the gateway", ["role"])
HEARTBEATS_LOST = Counter("shoal_worker_heartbeats_lost_total", "Workers declared dead after missed heartbeats",
                          ["role"])
TASKS_REISSUED = Counter("shoal_tasks_reissued_total", "Tasks handed to another worker after a worker was lost")
JOBS_REPINNED = Counter("shoal_jobs_repinned_total", "Running jobs moved to a replacement identifier or assembler",
                        ["role"])
CHUNKS_RESEGMENTED = Counter("shoal_chunks_resegmented_total",
                             "Chunks segmented again after a job's identifier or assembler was replaced, because "
                             "the store on the data volume did not hold them")
JOBS_STARTED = Counter("shoal_jobs_started_total", "Jobs that started running")
JOBS_ENDED = Counter("shoal_jobs_ended_total", "Jobs that ended, by final state", ["state"])
JOB_SECONDS = Histogram("shoal_job_duration_seconds", "Wall time of successful jobs",
                        buckets=(5, 10, 30, 60, 120, 300, 600, 1200, 3600, 7200, 21600))
#: the job id label is "job_id": "job" is the label Prometheus gives every scraped series
JOB_PROGRESS = Gauge("shoal_job_progress_ratio", "Fraction done of each stage of each running job",
                     ["job_id", "stage"])

for _role in ROLES:
    WORKERS.labels(_role)
    HEARTBEATS_LOST.labels(_role)
for _role in ("identifier", "assembler"):
    JOBS_REPINNED.labels(_role)
for _state in FINAL_STATES:
    JOBS_ENDED.labels(_state)


def forget_job(job_id: str) -> None:
    """Drop a finished job's progress series so dashboards only show running jobs."""
    for labels in list(JOB_PROGRESS._metrics):  # prometheus_client has no public way to list children
        if labels[0] == job_id:
            JOB_PROGRESS.remove(*labels)


class SchedulerCollector(Collector):
    """Queue depth, jobs by state and per-job overall progress and ETA, read from the scheduler's
    :meth:`~.scheduler.Scheduler.snapshot` and the job store at each scrape (KEDA scales the
    segmenters on ``shoal_segment_tasks_waiting``)."""

    def __init__(self, scheduler: Scheduler, store: JobStore):
        self.scheduler, self.store = scheduler, store

    def collect(self) -> Iterator[GaugeMetricFamily]:
        snap = self.scheduler.snapshot()
        yield GaugeMetricFamily("shoal_segment_tasks_waiting", "Segment and probe tasks waiting for a segmenter",
                                value=snap.pending)
        queued = self.store.list(state="QUEUED", limit=1_000_000)
        running = self.store.list(state="RUNNING", limit=1_000_000)
        jobs = GaugeMetricFamily("shoal_jobs", "Jobs not yet ended, by state", labels=["state"])
        jobs.add_metric(["queued"], len(queued))
        jobs.add_metric(["running"], len(running))
        yield jobs
        progress = GaugeMetricFamily("shoal_job_progress_overall_ratio", "Fraction done of each running job",
                                     labels=["job_id"])
        eta = GaugeMetricFamily("shoal_job_eta_seconds", "Estimated time left of each running job",
                                labels=["job_id"])
        now = time.monotonic()
        for rec in running:
            progress.add_metric([rec.job_id], rec.fraction)
            started = snap.started.get(rec.job_id)
            left = eta_seconds(now - started, rec.fraction) if started is not None else None
            if left is not None:
                eta.add_metric([rec.job_id], left)
        yield progress
        yield eta


_watched: list[SchedulerCollector] = []


def watch(scheduler: Scheduler, store: JobStore) -> None:
    """Export the scheduler's queue and running jobs on ``/metrics`` (call once the scheduler exists)."""
    while _watched:
        REGISTRY.unregister(_watched.pop())
    _watched.append(SchedulerCollector(scheduler, store))
    REGISTRY.register(_watched[0])
