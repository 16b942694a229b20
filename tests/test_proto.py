"""The checked-in gRPC code in shoal/v1/ is exactly what proto/ generates (never edited by hand)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
GENERATED = ["jobs_pb2.py", "jobs_pb2.pyi", "jobs_pb2_grpc.py"]


@pytest.fixture(scope="module")
def regenerated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if importlib.util.find_spec("grpc_tools") is None:
        pytest.skip("grpcio-tools is not installed (pip install -e .[test]); cannot regenerate the gRPC code")
    spec = importlib.util.spec_from_file_location("gen_proto", ROOT / "scripts" / "gen_proto.py")
    gen_proto = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen_proto)
    out = tmp_path_factory.mktemp("gen")
    gen_proto.generate(out)
    return out / "shoal" / "v1"


@pytest.mark.parametrize("name", GENERATED)
def test_checked_in_code_matches_the_proto(regenerated: Path, name: str):
    fresh = regenerated / name
    assert fresh.is_file(), f"gen_proto.generate did not write {name}"
    assert (ROOT / "shoal" / "v1" / name).read_bytes() == fresh.read_bytes(), (
        f"shoal/v1/{name} is stale or hand-edited: run `python scripts/gen_proto.py`")


def test_service_has_the_documented_rpcs():
    from shoal.v1 import jobs_pb2

    service = jobs_pb2.DESCRIPTOR.services_by_name["JobService"]
    assert service.full_name == "shoal.v1.JobService"
    assert {m.name for m in service.methods} == {
        "SubmitJob", "SubmitUpload", "GetJob", "ListJobs", "CancelJob", "WatchJob", "GetResult"}
