"""The fake backend over real mTLS on loopback, with the generated certificates."""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest
import trustme

import devbackend
from devbackend.certs import CLIENT_SUBJECT, DevCerts
from devbackend.client import DevClient

STREAM = {"input": [{"type": "message", "role": "user", "content": "hi"}], "stream": True}
TIMEOUT = 10


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevCerts]:
    yield devbackend.ensure_dev_certs(tmp_path_factory.mktemp("certs"))


@pytest.mark.anyio
@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
async def test_stream_over_mtls(certs: DevCerts, host: str) -> None:
    tls = devbackend.server_ssl_context(certs)
    with anyio.fail_after(TIMEOUT):
        async with devbackend.run(tls=tls) as backend:
            assert backend.url.startswith("https://127.0.0.1:")
            url = f"https://{host}:{backend.port}"
            async with await DevClient.connect(url, devbackend.client_ssl_context(certs)) as c:
                first = await c.request("POST", "/v1/responses", json_body=STREAM)
                second = await c.request("POST", "/v1/responses", json_body=STREAM)
            for r in (first, second):
                assert r.status == 200 and r.complete
                assert r.events()[-1]["type"] == "response.completed"
            # Two requests, one connection, one handshake: what a pool should do.
            assert backend.stats.tls_handshakes == 1
            assert backend.stats.connections_accepted == 1
            assert backend.stats.client_subjects == [CLIENT_SUBJECT]
            assert [r.client_subject for r in backend.requests] == [CLIENT_SUBJECT] * 2


async def rejected(url: str, ctx: ssl.SSLContext) -> str:
    """Try a request; return why it failed (fail the test if it succeeded)."""
    try:
        c = await DevClient.connect(url, ctx)
    except (ssl.SSLError, anyio.BrokenResourceError, OSError) as exc:
        return repr(exc)  # rejected during the handshake (TLS 1.2)
    async with c:
        # TLS 1.3: the client finishes its handshake before the server has
        # checked the certificate, so the refusal shows on the first read.
        r = await c.request("POST", "/v1/responses", json_body=STREAM)
    assert r.status == 0, "a client without a valid certificate got an answer"
    return r.error


@pytest.mark.anyio
async def test_client_without_certificate_is_rejected(certs: DevCerts) -> None:
    with anyio.fail_after(TIMEOUT):
        async with devbackend.run(tls=devbackend.server_ssl_context(certs)) as backend:
            no_cert = devbackend.client_ssl_context(certs, with_client_cert=False)
            assert await rejected(backend.url, no_cert)
            await backend.wait_until(lambda b: b.stats.tls_handshake_failures == 1)
            assert backend.stats.tls_handshakes == 0 and backend.stats.requests_total == 0


@pytest.mark.anyio
async def test_certificate_from_another_ca_is_rejected(certs: DevCerts, tmp_path: Path) -> None:
    stranger = trustme.CA().issue_cert("intruder.invalid")
    ctx = ssl.create_default_context(cafile=str(certs.ca_cert))
    stranger.configure_cert(ctx)
    with anyio.fail_after(TIMEOUT):
        async with devbackend.run(tls=devbackend.server_ssl_context(certs)) as backend:
            assert await rejected(backend.url, ctx)
            await backend.wait_until(lambda b: b.stats.tls_handshake_failures == 1)


@pytest.mark.anyio
async def test_plain_http_client_against_tls_port(certs: DevCerts) -> None:
    with anyio.fail_after(TIMEOUT):
        async with devbackend.run(tls=devbackend.server_ssl_context(certs)) as backend:
            async with await DevClient.connect(f"http://127.0.0.1:{backend.port}") as c:
                r = await c.request("GET", "/health")
            assert r.status == 0
            await backend.wait_until(lambda b: b.stats.tls_handshake_failures == 1)


@pytest.mark.anyio
async def test_client_certificate_optional(certs: DevCerts) -> None:
    tls = devbackend.server_ssl_context(certs, require_client_cert=False)
    no_cert = devbackend.client_ssl_context(certs, with_client_cert=False)
    with anyio.fail_after(TIMEOUT):
        async with devbackend.run(tls=tls) as backend:
            async with await DevClient.connect(backend.url, no_cert) as c:
                assert (await c.request("GET", "/health")).status == 200
            assert backend.stats.client_subjects == [None]


@pytest.mark.anyio
async def test_faults_over_tls(certs: DevCerts) -> None:
    ctx = devbackend.client_ssl_context(certs)
    with anyio.fail_after(TIMEOUT):
        async with devbackend.run(tls=devbackend.server_ssl_context(certs)) as backend:
            async with await DevClient.connect(backend.url, ctx) as c:
                headers = [("x-dev-fault", "reset_mid_body")]
                r = await c.request("POST", "/responses", headers=headers, json_body=STREAM)
                assert r.status == 200 and not r.complete and r.error
            async with await DevClient.connect(backend.url, ctx) as c:
                headers = [("x-dev-fault", "truncate")]
                r = await c.request("POST", "/responses", headers=headers, json_body=STREAM)
                assert r.complete and b"response.completed" not in r.body
            async with await DevClient.connect(backend.url, ctx) as c:
                await c.send_request("POST", "/responses", headers=[("x-dev-fault", "stall")])
                await backend.wait_until(lambda b: b.stats.in_flight == 1)
            await backend.wait_until(lambda b: b.stats.in_flight == 0)
