"""Transport security of a real gateway process: TLS with the operator's certificate, and a bearer
token that every call but health checks must carry (UNAUTHENTICATED otherwise)."""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from shoal.client import Client
from shoal.v1 import jobs_pb2 as pb
from shoal.v1 import jobs_pb2_grpc as pb_grpc
from tests.gateway_services import Services

pytestmark = [pytest.mark.slow, pytest.mark.timeout(60)]
TOKEN = "s3cret-token-for-tests-0123456789"


def _certificate(subject: str, key, issuer: str, issuer_key, *, ca: bool) -> x509.Certificate:
    now = dt.datetime.now(dt.UTC)
    builder = (x509.CertificateBuilder()
               .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
               .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if not ca:
        names = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A CA, a server certificate for 127.0.0.1 signed by it, and an unrelated CA."""
    folder = tmp_path_factory.mktemp("pki")
    ca_key, other_key, server_key = (ec.generate_private_key(ec.SECP256R1()) for _ in range(3))
    files = {"ca": folder / "ca.pem", "other_ca": folder / "other.pem", "cert": folder / "server.pem",
             "key": folder / "server.key"}
    files["ca"].write_bytes(_pem(_certificate("shoal test CA", ca_key, "shoal test CA", ca_key, ca=True)))
    files["other_ca"].write_bytes(_pem(_certificate("someone else", other_key, "someone else", other_key, ca=True)))
    files["cert"].write_bytes(_pem(_certificate("127.0.0.1", server_key, "shoal test CA", ca_key, ca=False)))
    files["key"].write_bytes(server_key.private_bytes(serialization.Encoding.PEM,
                                                      serialization.PrivateFormat.PKCS8,
                                                      serialization.NoEncryption()))
    return files


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory, pki: dict[str, Path]) -> Iterator[Services]:
    """A gateway with TLS and a token (from its environment, as an operator would set it); no workers."""
    root = tmp_path_factory.mktemp("secure")
    (root / "data").mkdir()
    with Services(root / "data", root / "work", env={"SHOAL_AUTH_TOKEN": TOKEN},
                  gateway_args=["--tls-cert", str(pki["cert"]), "--tls-key", str(pki["key"])]) as services:
        ready = services.start_gateway()
        assert "tls=on" in ready and "auth=token" in ready
        yield services


@pytest.fixture(scope="module")
def channel(gateway: Services, pki: dict[str, Path]) -> Iterator[grpc.Channel]:
    creds = grpc.ssl_channel_credentials(root_certificates=pki["ca"].read_bytes())
    channel = grpc.secure_channel(gateway.grpc_address, creds)
    yield channel
    channel.close()


def _calls(channel: grpc.Channel) -> dict[str, object]:
    """One call of each streaming kind (and reflection), each returning something or raising RpcError."""
    stub = pb_grpc.JobServiceStub(channel)
    ref = pb.JobRef(job_id="nosuchjob")
    reflect = reflection_pb2_grpc.ServerReflectionStub(channel)
    return {
        "GetJob": lambda md: stub.GetJob(ref, metadata=md, timeout=10),
        "ListJobs": lambda md: stub.ListJobs(pb.ListJobsRequest(), metadata=md, timeout=10),
        "WatchJob": lambda md: list(stub.WatchJob(ref, metadata=md, timeout=10)),
        "GetResult": lambda md: list(stub.GetResult(ref, metadata=md, timeout=10)),
        "SubmitUpload": lambda md: stub.SubmitUpload(iter([pb.SubmitUploadRequest(job=pb.SubmitJobRequest())]),
                                                     metadata=md, timeout=10),
        "reflection": lambda md: list(reflect.ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")]), metadata=md, timeout=10)),
    }


@pytest.mark.parametrize("metadata", [None, [("authorization", "Bearer wrong-token-wrong-token")],
                                      [("authorization", TOKEN)]], ids=["none", "wrong", "no-scheme"])
def test_every_call_without_the_token_is_unauthenticated(channel, metadata):
    for name, call in _calls(channel).items():
        with pytest.raises(grpc.RpcError) as err:
            call(metadata)
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED, name
        assert "token" in err.value.details(), name


def test_calls_with_the_token_reach_the_service(channel):
    calls = _calls(channel)
    metadata = [("authorization", f"Bearer {TOKEN}")]
    assert calls["ListJobs"](metadata).jobs is not None
    assert calls["reflection"](metadata)
    for name in ("GetJob", "WatchJob", "GetResult"):
        with pytest.raises(grpc.RpcError) as err:
            calls[name](metadata)
        assert err.value.code() == grpc.StatusCode.NOT_FOUND, name


def test_health_checks_need_no_token(channel):
    reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=10)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_plaintext_and_untrusted_clients_cannot_connect(gateway, pki):
    plain = Client(gateway.grpc_address, TOKEN)
    untrusted = Client(gateway.grpc_address, TOKEN, ca_file=str(pki["other_ca"]))
    for client in (plain, untrusted):
        with pytest.raises(grpc.RpcError) as err:
            client.stub.ListJobs(pb.ListJobsRequest(), metadata=client.metadata, timeout=5)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        client.close()


def test_python_client_and_cli_with_ca_and_token(gateway, pki):
    client = Client(gateway.grpc_address, TOKEN, ca_file=str(pki["ca"]))
    assert list(client.list()) == []
    client.close()
    env = {**os.environ, "SHOAL_GATEWAY": gateway.grpc_address, "SHOAL_CA": str(pki["ca"])}
    run = subprocess.run([sys.executable, "-m", "shoal.cli", "jobs"], capture_output=True, text=True, timeout=30,
                         env={**env, "SHOAL_TOKEN": TOKEN})
    assert run.returncode == 0, run.stderr
    run = subprocess.run([sys.executable, "-m", "shoal.cli", "jobs"], capture_output=True, text=True, timeout=30,
                         env={k: v for k, v in env.items() if k != "SHOAL_TOKEN"})
    assert run.returncode != 0 and "unauthenticated" in run.stderr and "--token" in run.stderr


@pytest.mark.parametrize(("args", "words"), [
    (["--tls-cert", "cert.pem"], "tls_key"),
    (["--tls-cert", "missing.pem", "--tls-key", "missing.key"], "missing.pem"),
    (["--auth-token", "short"], "16 characters"),
    (["--auth-token-file", "missing-token"], "missing-token"),
])
def test_unusable_security_settings_stop_the_gateway(tmp_path, args, words):
    _assert_gateway_refuses(tmp_path, args, words)


def _assert_gateway_refuses(tmp_path: Path, args: list[str], words: str) -> None:
    """The gateway exits with 2 at start-up, its message naming the setting to fix."""
    run = subprocess.run([sys.executable, "-m", "services.gateway.main", "--data-root", str(tmp_path),
                          "--grpc-address", "127.0.0.1:0", "--control", "tcp://127.0.0.1:0", "--metrics-port", "-1",
                          *args], capture_output=True, text=True, timeout=30, cwd=tmp_path,
                         env={k: v for k, v in os.environ.items() if not k.startswith("SHOAL_")})
    assert run.returncode == 2
    assert words in run.stderr


# -- mutual TLS: clients must present a certificate signed by the operator's client CA -------------


def _write_key(path: Path, key) -> Path:
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    return path


@pytest.fixture(scope="module")
def client_pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A client CA with one client certificate, and a client certificate from an unrelated CA."""
    folder = tmp_path_factory.mktemp("client-pki")
    ca_key, rogue_ca_key, client_key, rogue_key = (ec.generate_private_key(ec.SECP256R1()) for _ in range(4))
    files = {"client_ca": folder / "clients-ca.pem", "cert": folder / "client.pem", "rogue_cert": folder / "rogue.pem"}
    files["client_ca"].write_bytes(_pem(_certificate("shoal clients", ca_key, "shoal clients", ca_key, ca=True)))
    files["cert"].write_bytes(_pem(_certificate("lab-laptop", client_key, "shoal clients", ca_key, ca=False)))
    files["rogue_cert"].write_bytes(_pem(_certificate("intruder", rogue_key, "rogue CA", rogue_ca_key, ca=False)))
    files["key"] = _write_key(folder / "client.key", client_key)
    files["rogue_key"] = _write_key(folder / "rogue.key", rogue_key)
    return files


@pytest.fixture(scope="module")
def mtls_gateway(tmp_path_factory: pytest.TempPathFactory, pki: dict[str, Path],
                 client_pki: dict[str, Path]) -> Iterator[Services]:
    """A gateway that requires client certificates (set from the environment), without a token."""
    root = tmp_path_factory.mktemp("mtls")
    (root / "data").mkdir()
    with Services(root / "data", root / "work", env={"SHOAL_TLS_CLIENT_CA": str(client_pki["client_ca"])},
                  gateway_args=["--tls-cert", str(pki["cert"]), "--tls-key", str(pki["key"])]) as services:
        ready = services.start_gateway()
        assert "tls=mutual" in ready and "auth=off" in ready
        yield services


def _shoal_jobs(address: str, *flags: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHOAL_")}
    return subprocess.run([sys.executable, "-m", "shoal.cli", "jobs", "--gateway", address, *flags],
                          capture_output=True, text=True, timeout=30, env=env)


def test_mutual_tls_admits_clients_with_a_certificate_from_the_client_ca(mtls_gateway, pki, client_pki):
    client = Client(mtls_gateway.grpc_address, ca_file=str(pki["ca"]), cert_file=str(client_pki["cert"]),
                    key_file=str(client_pki["key"]))
    assert list(client.list()) == []
    health = health_pb2_grpc.HealthStub(client.channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
    assert health.status == health_pb2.HealthCheckResponse.SERVING
    client.close()
    run = _shoal_jobs(mtls_gateway.grpc_address, "--ca", str(pki["ca"]), "--cert", str(client_pki["cert"]),
                      "--key", str(client_pki["key"]))
    assert run.returncode == 0 and run.stderr == "", run.stderr


@pytest.mark.parametrize("who", ["no certificate", "certificate from another CA"])
def test_mutual_tls_refuses_other_clients_even_for_health_checks(mtls_gateway, pki, client_pki, who):
    certs = {} if who == "no certificate" else {"cert_file": str(client_pki["rogue_cert"]),
                                                "key_file": str(client_pki["rogue_key"])}
    client = Client(mtls_gateway.grpc_address, ca_file=str(pki["ca"]), **certs)
    for call in (lambda: client.stub.ListJobs(pb.ListJobsRequest(), timeout=5),
                 lambda: health_pb2_grpc.HealthStub(client.channel).Check(health_pb2.HealthCheckRequest(), timeout=5)):
        with pytest.raises(grpc.RpcError) as err:
            call()
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    client.close()
    flags = ["--cert", certs["cert_file"], "--key", certs["key_file"]] if certs else []
    run = _shoal_jobs(mtls_gateway.grpc_address, "--ca", str(pki["ca"]), *flags)
    assert run.returncode == 1 and "Traceback" not in run.stderr
    assert len(run.stderr.strip().splitlines()) == 1 and "--cert/--key" in run.stderr


def test_client_certificate_needs_its_key(mtls_gateway, pki, client_pki):
    run = _shoal_jobs(mtls_gateway.grpc_address, "--ca", str(pki["ca"]), "--cert", str(client_pki["cert"]))
    assert run.returncode == 2 and run.stderr.strip() == "shoal: a client certificate needs both --cert and --key " \
                                                         "(PEM files)"


@pytest.mark.parametrize(("args", "words"), [
    (["--tls-client-ca", "clients.pem"], "needs TLS"),
    (["--tls-cert", "{cert}", "--tls-key", "{key}", "--tls-client-ca", "missing-ca.pem"], "missing-ca.pem"),
    (["--tls-cert", "{cert}", "--tls-key", "{key}", "--tls-client-ca", "{key}"], "no PEM certificate"),
])
def test_unusable_client_ca_stops_the_gateway(tmp_path, pki, args, words):
    _assert_gateway_refuses(tmp_path, [a.format(cert=pki["cert"], key=pki["key"]) for a in args], words)
