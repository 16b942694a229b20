"""Faults across a network: a segmenter in another Linux network namespace ("node B") behind a
slow, lossy or partitioned link to the gateway and the identifier ("node A", the root namespace).

tests/test_faults.py kills and freezes processes on loopback; here the processes stay alive and
the network misbehaves instead, the way it does between hosts: TCP retransmits, connections stall,
heartbeats go missing and come back. Segmentation is deterministic, so a job that survives must give
trajectories identical (NaN-aware) to an undisturbed run of the same video in the same test.

Needs root, ``ip netns`` and ``nft`` (see tests/netns.py): without them each test skips and says
what is missing; under ``CI`` a missing tool fails. Every test bounds its time (timeout marks and
bounded waits) and traffic (small simulated videos), and removes its namespace and nft table even
when it fails. Measured times are printed (``pytest -s``) and recorded in docs/operations.md.
"""

from __future__ import annotations

import re
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from shoal.v1 import jobs_pb2 as pb
from shoal.v1 import jobs_pb2_grpc as pb_grpc
from tests import netns
from tests.delay_relay import DelayRelay
from tests.gateway_services import job_request, tiny_video, trajectories, watch_until_final

LATENCY_S = 0.1  # one way, each direction
LOSS_PERCENT = 5
PARTITION_S = 10.0
N_FRAMES = 1200
#: the identifier stores each batch this late (``--store-delay-ms``): 30 chunks keep a job running
#: for about 20 s, so it outlasts the partition and B's late batch arrives while it still runs
STORE_DELAY_MS = 700
#: the gateway declares a worker dead after LIVENESS (3) missed heartbeats of HEARTBEAT_S (1 s)
LOST_WITHIN_S = 3 * 1.0 + 3


@pytest.fixture
def link() -> Iterator[netns.Link]:
    netns.require()
    made = netns.Link()
    try:
        yield made
    finally:
        made.close()


@pytest.fixture
def services(link, tmp_path) -> Iterator[netns.NetServices]:
    with netns.NetServices(tmp_path / "data", tmp_path / "work", host=link.a) as started:
        (tmp_path / "data").mkdir(exist_ok=True)
        yield started


def _wait(what: str, check: Callable[[], object], timeout: float, poll_s: float = 0.05) -> object:
    """``check()``'s first truthy value, polled; fails naming ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if found := check():
            return found
        time.sleep(poll_s)
    raise AssertionError(f"{what} did not happen within {timeout:.0f} s")


def _metric(url: str, name: str, **labels: str) -> float:
    """A sample of ``name`` (with ``labels``) on a /metrics page; 0 when absent or unreachable."""
    try:
        with urllib.request.urlopen(url, timeout=1) as page:
            text = page.read().decode()
    except OSError:
        return 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    return 0.0


def _gateway_metrics_url(ready_line: str) -> str:
    port = re.search(r"metrics=(\d+)", ready_line).group(1)
    return f"http://127.0.0.1:{port}/metrics"


def _run_job(stub: pb_grpc.JobServiceStub, video: Path, timeout: float, **request) -> tuple[np.ndarray, float]:
    """Submit, wait for success, return (trajectories, seconds the job took)."""
    t0 = time.monotonic()
    job_id = stub.SubmitJob(job_request(str(video), **request), timeout=30).job_id
    job = watch_until_final(stub, job_id, timeout=timeout)
    assert job.state == pb.SUCCEEDED, job.error
    return trajectories(stub, job_id), time.monotonic() - t0


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_a_job_over_a_slow_lossy_link_gives_identical_trajectories(link, services, tmp_path):
    """The only segmenter sits in B behind 100 ms each way and 5 % loss each way on its links to
    the gateway's control socket and the identifier's batches socket. Asserted: the job succeeds with
    the trajectories of the same video run undisturbed, the traffic did cross the delay relays and
    the loss rules did drop packets."""
    video = tiny_video(tmp_path / "data" / "video", n_frames=240)
    batches = netns.free_port(link.a)
    ready = services.start_gateway("--metrics-port", "0")
    services.start_identifier(batches)
    services.start_assembler()
    services.start_segmenter("segmenter-b", link)
    stub = pb_grpc.JobServiceStub(services.channel())
    reference, undisturbed_s = _run_job(stub, video, timeout=90)
    services.stop_one("segmenter-b")  # its connections predate the redirect; a new one goes through the relays

    control = int(services.control.rpartition(":")[2])
    relays = {port: DelayRelay(link.a, (link.a, port), LATENCY_S) for port in (control, batches)}
    try:
        link.faults(loss_percent=LOSS_PERCENT, redirects={port: relay.start() for port, relay in relays.items()})
        services.start_segmenter("segmenter-b-slow", link)
        disturbed, disturbed_s = _run_job(stub, video, timeout=150)
        dropped = link.dropped()
    finally:
        for relay in relays.values():
            relay.close()
    print(f"\n{LATENCY_S * 1000:.0f} ms latency + {LOSS_PERCENT} % loss: job took {disturbed_s:.1f} s "
          f"(undisturbed {undisturbed_s:.1f} s); {dropped} packets dropped")
    np.testing.assert_array_equal(disturbed, reference)
    assert all(relay.connections >= 1 for relay in relays.values()), "a link bypassed its delay relay"
    assert dropped > 0, "the loss rules dropped nothing"
    assert _metric(_gateway_metrics_url(ready), "shoal_jobs_ended_total", state="succeeded") == 2


def _wait_for_a_fresh_task(segmenter: str) -> None:
    """Return just after the segmenter at ``segmenter`` (its /metrics) started a task: one ended (its
    batch sent) and another is in flight. Cutting the link then catches the task's batch still on the
    segmenter; cut later and the batch may reach the identifier, whose ``chunk_stored`` tells the
    gateway nothing needs re-issuing."""
    ended = _metric(segmenter, "shoal_segment_task_duration_seconds_count")
    _wait("segmenter B finishing a chunk", lambda: _metric(
        segmenter, "shoal_segment_task_duration_seconds_count") > ended, timeout=30, poll_s=0.005)
    _wait("segmenter B starting its next chunk", lambda: _metric(
        segmenter, "shoal_segment_tasks_in_flight") >= 1, timeout=10, poll_s=0.005)


def _lost_line(services: netns.NetServices, pid: int) -> re.Match | None:
    return re.search(rf"worker (segmenter-\S+-{pid}-\S+) lost \(missed 3 heartbeats\); re-issuing (\d+) task",
                     services.log_tail(1_000_000))


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_partitioned_segmenter_is_replaced_and_its_late_results_are_dropped(link, services, tmp_path):
    """Segmenters in A and in B; B is cut off for 10 s right after it took a chunk. Asserted: the
    gateway declares B lost within the heartbeat timeout and re-issues its task(s); the job succeeds
    with the trajectories of an undisturbed run; once the partition heals B registers again and the
    identifier drops the second copy of a chunk as a duplicate (B's late one or the re-issued
    one, whichever comes second; it counts them in
    ``shoal_blob_batches_total{outcome="duplicate"}``; the gateway ignores B's late ``task_done``
    without counting it). See STORE_DELAY_MS for why the identifier is slowed down."""
    video = tiny_video(tmp_path / "data" / "video", n_frames=N_FRAMES)
    request = {"frames_per_episode": 40}  # 30 chunks of a few hundred ms each
    identifier_metrics = netns.free_port("127.0.0.1")
    segmenter_metrics = netns.free_port("127.0.0.1")  # served in B, on B's address
    ready = services.start_gateway("--metrics-port", "0")
    services.start_identifier(netns.free_port(link.a), identifier_metrics, "--store-delay-ms", str(STORE_DELAY_MS))
    services.start_assembler()
    services.start_segmenter("segmenter-a")
    b = services.start_segmenter("segmenter-b", link, metrics_port=segmenter_metrics)
    stub = pb_grpc.JobServiceStub(services.channel())
    reference, undisturbed_s = _run_job(stub, video, timeout=120, **request)
    gateway = _gateway_metrics_url(ready)
    identifier = f"http://127.0.0.1:{identifier_metrics}/metrics"
    segmenter_b = f"http://{link.b}:{segmenter_metrics}/metrics"
    task_s = (_metric(segmenter_b, "shoal_segment_task_duration_seconds_sum")
              / max(1.0, _metric(segmenter_b, "shoal_segment_task_duration_seconds_count")))
    duplicates_before = _metric(identifier, "shoal_blob_batches_total", outcome="duplicate")
    assert duplicates_before == 0, "a job without faults received a chunk twice"

    job_id = stub.SubmitJob(job_request(str(video), **request), timeout=30).job_id
    _wait("the segment stage", lambda: {s.stage: s.fraction for s in stub.GetJob(
        pb.JobRef(job_id=job_id), timeout=5).stages}.get("segment", 0) > 0, timeout=60)
    _wait_for_a_fresh_task(segmenter_b)
    cut = link.faults(partition=True)
    lost = _wait("the gateway losing B", lambda: _lost_line(services, b.pid), timeout=LOST_WITHIN_S + 10)
    lost_s = time.monotonic() - cut
    assert int(lost.group(2)) >= 1, lost.group(0)
    joins_before = services.log_tail(1_000_000).count(f"{lost.group(1)} joined")
    time.sleep(max(0.0, PARTITION_S - (time.monotonic() - cut)))
    healed = link.heal()

    _wait("B registering again", lambda: services.log_tail(1_000_000).count(f"{lost.group(1)} joined")
          > joins_before, timeout=40)
    rejoined_s = time.monotonic() - healed
    _wait("the identifier dropping B's late batch", lambda: _metric(
        identifier, "shoal_blob_batches_total", outcome="duplicate") > duplicates_before, timeout=40)
    duplicate_s = time.monotonic() - healed
    job = watch_until_final(stub, job_id, timeout=120)
    done_s = time.monotonic() - cut
    assert job.state == pb.SUCCEEDED, job.error
    print(f"\n10 s partition of B (job: {undisturbed_s:.1f} s undisturbed, B's tasks {task_s:.2f} s): "
          f"lost and {lost.group(2)} task(s) "
          f"re-issued {lost_s:.1f} s after the cut; B registered again {rejoined_s:.1f} s after the heal, a second "
          f"copy of a chunk was dropped {duplicate_s:.1f} s after it; job done {done_s:.1f} s after the cut")
    np.testing.assert_array_equal(trajectories(stub, job_id), reference)
    assert _metric(gateway, "shoal_worker_heartbeats_lost_total", role="segmenter") == 1
    assert _metric(gateway, "shoal_tasks_reissued_total") >= 1
    assert job.figures["frames"] == N_FRAMES  # every frame counted once despite the duplicate


#: the tests' re-pin grace (``--repin-grace-s``): how long a job waits for its lost identifier or
#: assembler to come back, or a replacement to register, before it restarts from the probe
GRACE_S = 3
#: longer than being declared lost plus the grace, so the job restarts while the node is still cut off
LONG_PARTITION_S = LOST_WITHIN_S + GRACE_S + 4
#: the bound on the restarted job, counted from the heal (an undisturbed run takes a few seconds)
RESTARTED_WITHIN_S = 60


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize("role", ["identifier", "assembler"])
def test_a_partition_of_the_identifier_or_assembler_longer_than_the_grace_restarts_the_job(
        role, link, services, tmp_path):
    """The job's only identifier (or assembler) sits in B and is cut off mid-segmentation for longer
    than the heartbeat timeout plus the re-pin grace; two segmenters and the other services stay in
    A. Asserted: the gateway declares the worker lost and, the grace over, queues the job again from
    its probe with a warning that says why; once the link heals the worker registers again, and the
    job succeeds within RESTARTED_WITHIN_S of the heal (it never waits unbounded) with the trajectories
    of an undisturbed run."""
    video = tiny_video(tmp_path / "data" / "video", n_frames=N_FRAMES)
    request = {"frames_per_episode": 40}  # the job cannot end while either worker is cut off
    services.start_gateway("--metrics-port", "0", "--repin-grace-s", str(GRACE_S))
    there = {role: link}
    services.start_identifier(0, link=there.get("identifier"))
    services.start_assembler(link=there.get("assembler"))
    services.start_segmenter("segmenter-a1")
    services.start_segmenter("segmenter-a2")
    stub = pb_grpc.JobServiceStub(services.channel())
    reference, undisturbed_s = _run_job(stub, video, timeout=120, **request)

    job_id = stub.SubmitJob(job_request(str(video), **request), timeout=30).job_id
    _wait("the segment stage", lambda: {s.stage: s.fraction for s in stub.GetJob(
        pb.JobRef(job_id=job_id), timeout=5).stages}.get("segment", 0) > 0, timeout=60)
    cut = link.faults(partition=True)
    _wait(f"the job restarting without its {role}", lambda: re.search(
        rf"job {job_id} queued again to restart from the probe: no {role} registered",
        services.log_tail(1_000_000)), timeout=LOST_WITHIN_S + GRACE_S + 10)
    restarted_s = time.monotonic() - cut
    time.sleep(max(0.0, LONG_PARTITION_S - (time.monotonic() - cut)))
    healed = link.heal()
    job = watch_until_final(stub, job_id, timeout=RESTARTED_WITHIN_S)
    done_s = time.monotonic() - healed
    assert job.state == pb.SUCCEEDED, job.error
    print(f"\n{LONG_PARTITION_S:.0f} s partition of the {role} (job: {undisturbed_s:.1f} s undisturbed): "
          f"restarted {restarted_s:.1f} s after the cut; done {done_s:.1f} s after the heal")
    assert any(f"no {role} registered within {GRACE_S} s" in w and "job restarted" in w
               for w in job.warnings), job.warnings
    np.testing.assert_array_equal(trajectories(stub, job_id), reference)
    assert job.figures["frames"] == N_FRAMES


@pytest.mark.parametrize(("euid", "tools", "ci", "outcome", "says"), [
    (1000, {"ip", "nft"}, "", pytest.skip.Exception, "root"),
    (0, {"ip"}, "", pytest.skip.Exception, "nftables"),
    (0, {"ip"}, "true", pytest.fail.Exception, "nftables"),
    (1000, {"ip", "nft"}, "true", pytest.skip.Exception, "root"),  # CI cannot make itself root
])
def test_missing_requirements_skip_or_fail_naming_what_is_missing(monkeypatch, euid, tools, ci, outcome, says):
    """The skip logic, checked without root: :func:`tests.netns.require` with a fake uid and PATH."""
    monkeypatch.delenv("CI", raising=False)
    if ci:
        monkeypatch.setenv("CI", ci)
    with pytest.raises(outcome, match=says):
        netns.require(euid=euid, which=lambda cmd: f"/usr/sbin/{cmd}" if cmd in tools else None)
