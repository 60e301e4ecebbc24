"""Shared fixtures: a trustme PKI, the scripted backend and the proxy on loopback."""

from __future__ import annotations

import ssl
from types import SimpleNamespace

import pytest
import trustme

from goose_proxy.config import AuthConfig
from goose_proxy.upstream import tls
from tests.support import CertClock


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    """A CA, a server certificate for 127.0.0.1/localhost and an RHSM-like client pair."""
    d = tmp_path_factory.mktemp("pki")
    ca = trustme.CA()
    server = ca.issue_cert("localhost", "127.0.0.1", "::1")
    client = ca.issue_cert("consumer-0001@example.com", common_name="consumer-0001")
    ca.cert_pem.write_to_path(str(d / "ca.pem"))
    client.cert_chain_pems[0].write_to_path(str(d / "cert.pem"))
    client.private_key_pem.write_to_path(str(d / "key.pem"))
    other_ca = trustme.CA()
    other_ca.cert_pem.write_to_path(str(d / "other-ca.pem"))
    stranger = other_ca.issue_cert("stranger")
    stranger.cert_chain_pems[0].write_to_path(str(d / "stranger-cert.pem"))
    stranger.private_key_pem.write_to_path(str(d / "stranger-key.pem"))

    def server_context(require_client_cert: bool = True) -> ssl.SSLContext:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        server.configure_cert(ctx)
        if require_client_cert:
            ctx.verify_mode = ssl.CERT_REQUIRED
            ca.configure_trust(ctx)
        return ctx

    return SimpleNamespace(
        dir=d,
        ca=ca,
        ca_file=str(d / "ca.pem"),
        cert_file=str(d / "cert.pem"),
        key_file=str(d / "key.pem"),
        server_context=server_context,
        auth=AuthConfig(
            cert_file=str(d / "cert.pem"), key_file=str(d / "key.pem"), ca_file=str(d / "ca.pem")
        ),
    )


@pytest.fixture
def cert_clock(monkeypatch: pytest.MonkeyPatch) -> CertClock:
    """In-process proxies re-check their certificate files only when told to."""
    clock = CertClock()
    monkeypatch.setattr(tls, "_now", clock)
    return clock
