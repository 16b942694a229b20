"""The gateway's Prometheus metrics (names ``shoal_*``, base units; job ids only on the per-job
progress gauge, whose series are removed when the job ends)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

WORKERS = Gauge("shoal_workers", "Workers registered with the gateway", ["role"])
HEARTBEATS_LOST = Counter("shoal_worker_heartbeats_lost_total", "Workers declared dead after missed heartbeats",
                          ["role"])
TASKS_REISSUED = Counter("shoal_tasks_reissued_total", "Tasks handed to another worker after a worker was lost")
JOBS_STARTED = Counter("shoal_jobs_started_total", "Jobs that started running")
JOBS_ENDED = Counter("shoal_jobs_ended_total", "Jobs that ended, by final state", ["state"])
JOB_SECONDS = Histogram("shoal_job_duration_seconds", "Wall time of successful jobs",
                        buckets=(5, 10, 30, 60, 120, 300, 600, 1200, 3600, 7200, 21600))
JOB_PROGRESS = Gauge("shoal_job_progress_ratio", "Fraction done of each stage of each running job",
                     ["job", "stage"])


def forget_job(job_id: str) -> None:
    """Drop a finished job's progress series so dashboards only show running jobs."""
    for labels in list(JOB_PROGRESS._metrics):  # prometheus_client has no public way to list children
        if labels[0] == job_id:
            JOB_PROGRESS.remove(*labels)
