"""A full data volume: the job writing there fails with one clear line naming the folder and leaves
nothing that looks like a finished session; a job writing elsewhere at the same time is untouched,
and the next job there succeeds once space is back. The volume is a 1 MiB tmpfs the test mounts
(root only; elsewhere the test says so and skips)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from shoal.client import Client, follow
from shoal.local import LocalCluster
from shoal.params import TrackingParams
from shoal.v1 import jobs_pb2 as pb
from tests.gateway_services import tiny_video

pytestmark = pytest.mark.slow


@pytest.fixture
def volume(tmp_path: Path):
    folder = tmp_path / "volume"
    folder.mkdir()
    if os.geteuid() != 0:
        pytest.skip("needs root to mount a small tmpfs as a data volume that fills up")
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(folder)], capture_output=True,
                             text=True)
    if mounted.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def test_a_full_volume_fails_its_job_clearly_and_spares_the_others(volume: Path, tmp_path: Path):
    video = tiny_video(tmp_path / "video", n_frames=120)
    filler = volume / "filler"
    filler.write_bytes(b"\0" * (1024 * 1024 - 16 * 1024))  # leaves about 16 KiB: less than one session
    params = TrackingParams(video_paths=[str(video)], number_of_animals=2, track_wo_identities=True)
    with LocalCluster(tmp_path, tmp_path / "work", segmenters=1) as cluster:
        client = Client(cluster.grpc_address)
        client.wait_ready()
        full = client.submit(params, output_dir=str(volume / "a")).job_id
        elsewhere = client.submit(params, output_dir=str(tmp_path / "b")).job_id
        failed, done = follow(client, full, quiet=True), follow(client, elsewhere, quiet=True)
        filler.unlink()  # space is back
        again = follow(client, client.submit(params, output_dir=str(volume / "c")).job_id, quiet=True)
        states = {job.job_id: job.state for job in client.list()}
        client.close()

    assert failed.state == pb.FAILED
    assert failed.error.startswith(f"the session folder {volume / 'a'} ran out of space"), failed.error
    assert "\n" not in failed.error and "Error" not in failed.error
    assert not [p for p in (volume / "a").rglob("*") if p.is_file()]  # nothing that claims to be a session
    assert done.state == pb.SUCCEEDED and (tmp_path / "b" / "trajectories" / "trajectories.npy").exists()
    assert again.state == pb.SUCCEEDED and (volume / "c" / "trajectories" / "trajectories.npy").exists()
    assert states == {full: pb.FAILED, elsewhere: pb.SUCCEEDED, again.job_id: pb.SUCCEEDED}
