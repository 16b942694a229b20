"""docs/api.md works as written: its Python code, run against a real gateway and workers, tracks a
video and fetches what the gateway wrote; and the page covers every RPC and parameter of the proto."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from shoal.local import LocalCluster
from shoal.v1 import jobs_pb2 as pb
from tests.gateway_services import tiny_video

ROOT = Path(__file__).resolve().parents[1]
API_DOC = ROOT / "docs" / "api.md"
RUN_TIMEOUT_S = 120


def python_blocks(markdown: str) -> list[str]:
    """The page's ```python blocks, in order."""
    return re.findall(r"^```python\n(.*?)^```$", markdown, re.M | re.S)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """What `shoal serve` runs, with a 120-frame simulated video of two flies under videos/."""
    root = tmp_path_factory.mktemp("data")
    tiny_video(root / "videos")
    with LocalCluster(data_root=root, work_dir=root / ".shoal", segmenters=1, threads=1) as running:
        yield running


@pytest.mark.slow
@pytest.mark.timeout(RUN_TIMEOUT_S + 60)
def test_python_example_tracks_and_fetches(cluster: LocalCluster, tmp_path: Path):
    blocks = python_blocks(API_DOC.read_text())
    assert len(blocks) >= 2, "docs/api.md lost its Python example"
    script = tmp_path / "track_remote.py"
    script.write_text("\n".join(blocks))
    video = next(p.relative_to(cluster.data_root) for p in (cluster.data_root / "videos").glob("*.avi"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHOAL_")} | {"SHOAL_GATEWAY": cluster.grpc_address}
    run = subprocess.run([sys.executable, str(script), str(video), "--animals", "2", "--no-identities"],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=RUN_TIMEOUT_S)
    assert run.returncode == 0, f"{run.stdout}\n{run.stderr}\nservices:\n{cluster.log_path.read_text()[-3000:]}"

    job_id = re.search(r"submitted job (\w+)", run.stdout).group(1)
    progress = [line.split() for line in run.stdout.splitlines() if line.split()[0] in pb.JobState.keys()]
    assert progress[-1][0] == "SUCCEEDED" and "100.0%" in progress[-1], run.stdout
    assert any(p[0] == "RUNNING" for p in progress), run.stdout  # it reported progress on the way

    fetched = np.load(tmp_path / f"trajectories_{job_id}.npy")
    written = np.load(cluster.data_root / "sessions" / job_id / "trajectories" / "trajectories.npy",
                      allow_pickle=True).item()["trajectories"]
    assert fetched.shape == written.shape == (120, 2, 2)
    np.testing.assert_array_equal(fetched, written)
    assert np.isfinite(fetched).mean() > 0.5  # two flies, seen outside their crossings
    assert f"on the gateway: {cluster.data_root / 'sessions' / job_id}" in run.stdout

    listed = [line for line in run.stdout.splitlines() if line.startswith(f"{job_id} example")]
    assert listed == [f"{job_id} example 120 frames {cluster.data_root / 'sessions' / job_id}"], run.stdout


def test_every_rpc_message_field_and_status_code_is_documented():
    doc = API_DOC.read_text()
    service = pb.DESCRIPTOR.services_by_name["JobService"]
    for method in service.methods:
        assert re.search(rf"^### {method.name}\(", doc, re.M), f"RPC {method.name} has no section"
    for message in ("TrackingParams", "SubmitJobRequest", "Job", "ResultChunk", "JobEvent", "ListJobsRequest"):
        for field in pb.DESCRIPTOR.message_types_by_name[message].fields:
            assert f"`{field.name}`" in doc, f"{message}.{field.name} is not documented"
    for code in ("INVALID_ARGUMENT", "NOT_FOUND", "PERMISSION_DENIED", "FAILED_PRECONDITION", "UNAUTHENTICATED",
                 "RESOURCE_EXHAUSTED", "UNAVAILABLE", "DATA_LOSS", "INTERNAL"):
        assert re.search(rf"^\| `{code}` \|", doc, re.M), f"status {code} is not in the table"
