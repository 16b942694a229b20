"""The gateway's job state machine (:mod:`services.gateway.lifecycle`) driven without ZeroMQ: the
messages workers would send are method calls, and what the gateway sends is recorded. These are
the scheduling rules users feel: a short job is not starved by a long one, and the task of a lost
segmenter goes to another one, counted as a second attempt."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.gateway.jobstore import FAILED, RUNNING, JobStore
from services.gateway.lifecycle import Lifecycle
from services.gateway.workers import Registry
from shoal.codec import Message
from tests.gateway_services import tiny_video


class Gateway:
    """A Lifecycle with registered workers; ``sent`` holds (worker id, message) in order."""

    def __init__(self, tmp: Path, segmenters: int = 2, assemblers: int = 2):
        self.sent: list[tuple[bytes, Message]] = []
        self.registry = Registry(heartbeat_s=1.0, liveness=3)
        self.store = JobStore(tmp / "jobs.sqlite")
        self.jobs = Lifecycle(self.store, self.registry, tmp / "work", 60.0, self._send)
        self.registry.register(b"identifier", "identifier", {"batches": "tcp://i:1", "requests": "tcp://i:2"}, 0)
        for i in range(assemblers):
            self.registry.register(f"assembler-{i}".encode(), "assembler", {"geometry": f"tcp://a{i}:1"}, 0)
        for i in range(segmenters):
            self.registry.register(f"segmenter-{i}".encode(), "segmenter", {}, 0)

    def _send(self, wid: bytes, msg: Message) -> bool:
        self.sent.append((wid, msg))
        return True

    def submit(self, job_id: str, video: Path, frames_per_episode: int) -> None:
        self.store.create(job_id, job_id, {"number_of_animals": 2, "frames_per_episode": frames_per_episode},
                          [str(video)], str(video.parent / job_id))

    def tasks(self, since: int = 0) -> list[tuple[bytes, dict]]:
        return [(wid, dict(m.body)) for wid, m in self.sent[since:] if m.type == "task"]

    def ready(self, credit: int = 1) -> None:
        for w in self.registry.workers.values():
            if w.role == "segmenter":
                w.credit = credit

    def finish_probes(self) -> None:
        """Segmenters do every probe; the identifier holds no chunk yet, so every chunk is pending
        (a resumed job's chunks go first in line: the first job submitted is acked last)."""
        self.ready(credit=8)
        self.jobs.dispatch()
        for wid, body in self.tasks():
            if body["kind"] == "probe":
                self.jobs.task_done(self.registry.get(wid), {**body, "result": {"body_length": 10.0}})
        for job_id in reversed(self.jobs.runs):
            self.jobs.resume_ack(self.registry.get(b"identifier"), {"job": job_id, "chunks": []})
        for w in self.registry.workers.values():
            w.credit = 0


@pytest.fixture
def video(tmp_path: Path) -> Path:
    return tiny_video(tmp_path / "video", n_frames=120)


def test_a_short_job_gets_segmenters_while_a_long_one_is_queued_before_it(tmp_path, video):
    gw = Gateway(tmp_path)
    gw.submit("long", video, frames_per_episode=10)
    gw.submit("short", video, frames_per_episode=60)
    gw.jobs.start_queued()
    assert {r.record.job_id for r in gw.jobs.runs.values()} == {"long", "short"}
    gw.finish_probes()
    n_long = len(gw.jobs.runs["long"].chunk_tasks())
    assert n_long >= 10 and [t.job_id for t in gw.jobs.pending][:n_long] == ["long"] * n_long  # long's first

    before = len(gw.sent)
    gw.ready(credit=2)  # two segmenters, four tasks in flight
    gw.jobs.dispatch()
    given = [body["job"] for _, body in gw.tasks(before)]
    assert sorted(given) == ["long", "long", "short", "short"], given
    assert all(body["identifier"] == "tcp://i:1" for _, body in gw.tasks(before))


def test_a_lost_segmenters_task_goes_to_another_as_a_second_attempt(tmp_path, video):
    gw = Gateway(tmp_path, assemblers=1)
    gw.submit("job", video, frames_per_episode=60)
    gw.jobs.start_queued()
    gw.finish_probes()
    before = len(gw.sent)
    gw.registry.get(b"segmenter-0").credit = 1
    gw.jobs.dispatch()
    [(first, task)] = gw.tasks(before)
    assert first == b"segmenter-0" and task["attempt"] == 1

    gw.jobs.worker_lost(gw.registry.get(b"segmenter-0"), "missed 3 heartbeats")
    before = len(gw.sent)
    gw.ready()
    gw.jobs.dispatch()
    again = [(wid, body) for wid, body in gw.tasks(before) if body["task"] == task["task"]]
    assert again == [(b"segmenter-1", {**task, "attempt": 2})]
    # the lost segmenter's late answer to its first attempt counts for nothing
    gw.jobs.task_done(gw.registry.register(b"segmenter-0", "segmenter", {}, 1.0), task)
    assert not gw.jobs.runs["job"].tasks[task["task"]].done


def test_a_chunk_that_keeps_failing_fails_its_job_with_the_last_error(tmp_path, video):
    gw = Gateway(tmp_path, segmenters=1, assemblers=1)
    gw.submit("job", video, frames_per_episode=120)
    gw.jobs.start_queued()
    gw.finish_probes()
    segmenter = gw.registry.get(b"segmenter-0")
    for attempt in (1, 2, 3):
        before = len(gw.sent)
        segmenter.credit = 1
        gw.jobs.dispatch()
        [(_, task)] = gw.tasks(before)
        assert task["attempt"] == attempt
        gw.jobs.task_failed(segmenter, {**task, "error": f"decoder crashed ({attempt})"})
    assert gw.store.get("job").state == RUNNING
    segmenter.credit = 1
    gw.jobs.dispatch()
    rec = gw.store.get("job")
    assert rec.state == FAILED and "chunk 0 failed 3 times" in rec.error and "decoder crashed (3)" in rec.error
    assert "job" not in gw.jobs.runs and not gw.jobs.pending
