"""Transport security for the gateway: TLS credentials from files (optionally requiring client
certificates: mutual TLS), and a bearer token that a server interceptor checks on every call before
any handler runs.

Health checks stay open (``grpc.health.v1.Health``): load balancers and Kubernetes probes carry no
token, and a health status reveals nothing about jobs. Everything else, reflection included,
needs ``authorization: Bearer <token>`` when a token is configured.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Callable
from pathlib import Path

import grpc

log = logging.getLogger("shoal.gateway")

#: method prefixes callable without a token
OPEN_METHODS = ("/grpc.health.v1.Health/",)


class ConfigError(Exception):
    """A security setting that cannot work; the message says which and why."""


def read_token(token: str, token_file: str) -> str:
    """The configured token: ``token``, or the first line of ``token_file`` (e.g. a mounted secret)."""
    if token and token_file:
        raise ConfigError("give auth_token or auth_token_file, not both")
    if token_file:
        try:
            token = Path(token_file).read_text().strip()
        except OSError as exc:
            raise ConfigError(f"cannot read auth_token_file {token_file}: {exc.strerror}") from None
        if not token:
            raise ConfigError(f"auth_token_file {token_file} is empty")
    if token and (len(token) < 16 or any(c.isspace() for c in token)):
        raise ConfigError("the bearer token must be at least 16 characters without spaces "
                          "(e.g. `python -c 'import secrets; print(secrets.token_urlsafe(32))'`)")
    return token


def server_credentials(cert_file: str, key_file: str, client_ca_file: str = "") -> grpc.ServerCredentials | None:
    """TLS credentials from PEM files, or None (plaintext) when neither is set.

    With ``client_ca_file`` (mutual TLS) the handshake itself refuses clients without a certificate
    signed by that CA, so a stolen token alone is not enough and no handler ever sees such a client.
    """
    if not cert_file and not key_file:
        if client_ca_file:
            raise ConfigError("tls_client_ca needs TLS: set tls_cert and tls_key too")
        return None
    if not (cert_file and key_file):
        raise ConfigError("TLS needs both tls_cert and tls_key (PEM files)")
    try:
        cert, key = Path(cert_file).read_bytes(), Path(key_file).read_bytes()
        client_ca = Path(client_ca_file).read_bytes() if client_ca_file else None
    except OSError as exc:
        raise ConfigError(f"cannot read {exc.filename}: {exc.strerror}") from None
    if client_ca is not None and b"-----BEGIN CERTIFICATE-----" not in client_ca:
        raise ConfigError(f"tls_client_ca {client_ca_file} holds no PEM certificate")
    return grpc.ssl_server_credentials([(key, cert)], root_certificates=client_ca,
                                       require_client_auth=client_ca is not None)


class TokenAuth(grpc.ServerInterceptor):
    """Refuses every call that does not carry the bearer token, with UNAUTHENTICATED (constant-time compare)."""

    def __init__(self, token: str):
        self._expected = token.encode()

    def intercept_service(self, continuation: Callable, details: grpc.HandlerCallDetails):
        if details.method.startswith(OPEN_METHODS):
            return continuation(details)
        header = dict(details.invocation_metadata or ()).get("authorization", "")
        scheme, _, value = header.partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(value.strip().encode(), self._expected):
            return continuation(details)
        handler = continuation(details)
        if handler is None:  # an unknown method: let grpc answer UNIMPLEMENTED
            return None
        why = ("this gateway needs a bearer token: send the metadata 'authorization: Bearer <token>' "
               "(shoal CLI: --token or SHOAL_TOKEN)") if not header else "the bearer token is wrong or malformed"
        log.warning("refused %s: %s", details.method, "no token" if not header else "bad token")
        return _refusal(handler, why)


def _refusal(handler: grpc.RpcMethodHandler, why: str) -> grpc.RpcMethodHandler:
    """A handler of the same streaming kind as ``handler`` that only aborts with UNAUTHENTICATED."""

    def deny(_request, context: grpc.ServicerContext):
        context.abort(grpc.StatusCode.UNAUTHENTICATED, why)

    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(deny)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(deny)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(deny)
    return grpc.unary_unary_rpc_method_handler(deny)
