"""Corporate proxy: HTTP CONNECT tunnels to the mTLS backend, through a real proxy.

The proxy (``tests/connectproxy.py``) runs on loopback in the test's event loop;
TLS with the client certificate runs end to end through its tunnel, so the
backend sees the host's identity while the proxy sees only ``CONNECT``.
"""

from __future__ import annotations

import base64
import logging
from collections.abc import Mapping
from types import SimpleNamespace
from typing import Any, Optional

import anyio
import httpx
import pytest

import devbackend
from goose_proxy.config import BackendConfig, parse_config, redact_url
from goose_proxy.upstream.proxy import parse_proxy, proxy_for
from tests.connectproxy import connect_proxy
from tests.support import make_config, refusing_port, running_proxy, silent_listener

pytestmark = pytest.mark.anyio

HELLO = {"model": "m", "messages": [{"role": "user", "content": "through the tunnel"}]}
PROXY_VARS = ("https_proxy", "HTTPS_PROXY", "http_proxy", "HTTP_PROXY", "no_proxy", "NO_PROXY")
#: a password that needs percent-encoding in a URL
PASSWORD = "p@ss:w/rd-s3cret"
PASSWORD_IN_URL = "p%40ss%3Aw%2Frd-s3cret"


@pytest.fixture(autouse=True)
def no_proxy_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in PROXY_VARS:
        monkeypatch.delenv(name, raising=False)


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def secret_forms(user: str, password: str) -> list[str]:
    """Every form a leaked credential could take in a log or a message."""
    return [password, PASSWORD_IN_URL, basic(user, password).split()[1]]


async def chat(url: str, body: Mapping[str, Any] = HELLO) -> httpx.Response:
    async with httpx.AsyncClient(timeout=10, trust_env=False) as c:
        return await c.post(url + "/v1/chat/completions", json=dict(body))


async def chat_via(
    backend: Any, pki: SimpleNamespace, proxy: Optional[str], n: int = 1
) -> list[httpx.Response]:
    backend_kw = {} if proxy is None else {"proxy": proxy}
    config = make_config(backend.url, pki.auth, backend=backend_kw)
    async with running_proxy(config) as gp:
        return [await chat(gp.url) for _ in range(n)]


def error_message(resp: httpx.Response, should_retry: Optional[str] = None) -> str:
    """The message of an ``upstream_proxy_error``; checks its ``x-should-retry``
    (``false`` for a proxy that cannot be used as configured, else none)."""
    body = resp.json()
    assert body["error"]["code"] == "upstream_proxy_error", body
    assert resp.headers.get("x-should-retry") == should_retry
    return str(body["error"]["message"])


# --- end to end --------------------------------------------------------------------------


async def test_chat_through_an_authenticating_proxy(
    pki: SimpleNamespace, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    with anyio.fail_after(15):
        async with devbackend.run(tls=pki.server_context()) as backend:
            async with connect_proxy(credentials=("alice", PASSWORD)) as proxy:
                url = proxy.url_with(f"alice:{PASSWORD_IN_URL}")
                first, second = await chat_via(backend, pki, url, n=2)
                stream_body = {**HELLO, "stream": True}
                async with running_proxy(
                    make_config(backend.url, pki.auth, backend={"proxy": url})
                ) as gp:
                    streamed = await chat(gp.url, stream_body)
    for resp in (first, second):
        assert resp.status_code == 200, resp.text
        assert resp.json()["choices"][0]["message"]["content"].endswith("through the tunnel")
    assert streamed.status_code == 200
    assert streamed.text.rstrip().endswith("data: [DONE]")
    # the proxy saw CONNECT with Basic credentials (percent-decoded), nothing else
    assert {r.method for r in proxy.requests} == {"CONNECT"}
    connect = proxy.requests[0]
    assert connect.target == f"127.0.0.1:{backend.port}"
    assert connect.headers["proxy-authorization"] == basic("alice", PASSWORD)
    assert connect.headers["host"] == connect.target
    # one tunnel per backend connection: the two requests of one proxy shared it
    assert proxy.tunnels == 2
    # TLS ran end to end: the backend saw the client certificate
    assert all("consumer-0001" in (r.client_subject or "") for r in backend.requests)
    assert len(backend.requests) == 3
    # credentials never reach the log, even at DEBUG
    assert f"proxy http://***@127.0.0.1:{proxy.port} opened a tunnel" in caplog.text
    for secret in secret_forms("alice", PASSWORD):
        assert secret not in caplog.text


@pytest.mark.parametrize("userinfo", [None, f"alice:wrong-{PASSWORD_IN_URL}"])
async def test_proxy_that_wants_credentials(
    pki: SimpleNamespace, caplog: pytest.LogCaptureFixture, userinfo: Optional[str]
) -> None:
    caplog.set_level(logging.DEBUG)
    with anyio.fail_after(15):
        async with devbackend.run(tls=pki.server_context()) as backend:
            async with connect_proxy(credentials=("alice", PASSWORD)) as proxy:
                url = proxy.url if userinfo is None else proxy.url_with(userinfo)
                (resp,) = await chat_via(backend, pki, url)
    assert resp.status_code == 502
    message = error_message(resp, should_retry="false")  # credentials: no use retrying
    shown = redact_url(url)
    assert shown == (proxy.url if userinfo is None else f"http://***@127.0.0.1:{proxy.port}")
    assert message.startswith(
        f"proxy {shown} refused the tunnel to 127.0.0.1:{backend.port}: "
        "407 Proxy Authentication Required"
    )
    if userinfo is None:
        assert 'it requires credentials: proxy = "http://user:pass@host:port"' in message
    else:
        assert "wrong or missing credentials" in message
    assert proxy.tunnels == 0 and backend.stats.connections_accepted == 0
    for secret in secret_forms("alice", "wrong-" + PASSWORD):
        assert secret not in message and secret not in caplog.text


async def test_proxy_that_forbids_the_tunnel(pki: SimpleNamespace) -> None:
    with anyio.fail_after(15):
        async with devbackend.run(tls=pki.server_context()) as backend:
            async with connect_proxy(refuse=403) as proxy:
                (resp,) = await chat_via(backend, pki, proxy.url_with("bob:s3cret"))
    assert resp.status_code == 502
    message = error_message(resp, should_retry="false")
    assert f"proxy http://***@127.0.0.1:{proxy.port} refused the tunnel" in message
    assert "403 Forbidden" in message
    assert "s3cret" not in message
    assert backend.stats.connections_accepted == 0


async def test_proxy_that_hangs_up(pki: SimpleNamespace) -> None:
    with anyio.fail_after(15):
        async with devbackend.run(tls=pki.server_context()) as backend:
            async with connect_proxy(hang_up=True) as proxy:
                (resp,) = await chat_via(backend, pki, proxy.url)
    assert resp.status_code == 502
    assert error_message(resp) == (
        f"proxy {proxy.url} closed the connection without answering CONNECT"
    )


async def test_a_tunnel_that_breaks_names_the_proxy(pki: SimpleNamespace) -> None:
    # the backend resets mid-stream; through a tunnel the break may as well be
    # the proxy's, so the message names both
    with anyio.fail_after(15):
        async with devbackend.run(tls=pki.server_context()) as backend:
            async with connect_proxy() as proxy:
                cfg = make_config(
                    backend.url,
                    pki.auth,
                    backend={"proxy": proxy.url, "headers": {"X-Dev-Fault": "reset_mid_body"}},
                )
                async with running_proxy(cfg) as gp:
                    resp = await chat(gp.url, {**HELLO, "stream": True})
    assert resp.status_code == 200
    assert (
        f"backend 127.0.0.1:{backend.port} (through proxy {proxy.url}) closed the connection"
        in resp.text
    )


async def test_silent_proxy_is_named_in_the_timeout(pki: SimpleNamespace) -> None:
    # a proxy that accepts the connection (the kernel does, from its backlog)
    # and never answers the CONNECT
    with anyio.fail_after(15), silent_listener() as port:
        config = make_config(
            "https://backend.invalid:8443",
            pki.auth,
            backend={"proxy": f"http://u:s3cret@127.0.0.1:{port}", "connect_timeout": 0.3},
        )
        async with running_proxy(config) as gp:
            resp = await chat(gp.url)
    assert resp.status_code == 502
    assert error_message(resp) == (
        f"timed out after 0.3 s waiting for proxy http://***@127.0.0.1:{port} "
        "to open a tunnel to backend.invalid:8443"
    )


async def test_proxy_unreachable(pki: SimpleNamespace) -> None:
    with anyio.fail_after(15):
        async with devbackend.run(tls=pki.server_context()) as backend:
            with refusing_port() as port:
                (resp,) = await chat_via(backend, pki, f"http://u:s3cret@127.0.0.1:{port}")
    assert resp.status_code == 502
    message = error_message(resp)
    assert message == f"cannot connect to proxy http://***@127.0.0.1:{port}: connection refused"


# --- the environment -------------------------------------------------------------------


async def test_https_proxy_from_the_environment(
    pki: SimpleNamespace, monkeypatch: pytest.MonkeyPatch
) -> None:
    with anyio.fail_after(15):
        async with devbackend.run(tls=pki.server_context()) as backend:
            async with connect_proxy(credentials=("env", "s3cret")) as proxy:
                monkeypatch.setenv("https_proxy", proxy.url_with("env:s3cret"))
                (resp,) = await chat_via(backend, pki, None)
    assert resp.status_code == 200, resp.text
    assert proxy.tunnels == 1
    assert "consumer-0001" in (backend.requests[-1].client_subject or "")


async def test_a_proxy_key_without_its_scheme_is_http(pki: SimpleNamespace) -> None:
    # "host:port" worked from https_proxy but the key refused it ("only http://
    # proxies are supported")
    with anyio.fail_after(15):
        async with devbackend.run(tls=pki.server_context()) as backend:
            async with connect_proxy(credentials=("alice", "s3cret")) as proxy:
                url = f"alice:s3cret@127.0.0.1:{proxy.port}"
                config = parse_config({"backend": {"endpoint": backend.url, "proxy": url}})
                (resp,) = await chat_via(backend, pki, config.backend.proxy)
    assert resp.status_code == 200, resp.text
    assert proxy.tunnels == 1
    assert proxy.requests[0].headers["proxy-authorization"] == basic("alice", "s3cret")


@pytest.mark.parametrize(
    "no_proxy", ["127.0.0.1", "localhost,127.0.0.0/8", "*", ".example,127.0.0.1:443"]
)
async def test_no_proxy_bypasses_the_proxy(
    pki: SimpleNamespace, monkeypatch: pytest.MonkeyPatch, no_proxy: str
) -> None:
    with anyio.fail_after(15):
        async with devbackend.run(tls=pki.server_context()) as backend:
            async with connect_proxy(refuse=403) as proxy:
                monkeypatch.setenv("HTTPS_PROXY", proxy.url)
                monkeypatch.setenv("no_proxy", no_proxy)
                (resp,) = await chat_via(backend, pki, None)
    assert resp.status_code == 200, resp.text
    assert proxy.requests == []


async def test_empty_proxy_key_disables_the_environment(
    pki: SimpleNamespace, monkeypatch: pytest.MonkeyPatch
) -> None:
    with anyio.fail_after(15):
        async with devbackend.run(tls=pki.server_context()) as backend:
            async with connect_proxy(refuse=403) as proxy:
                monkeypatch.setenv("https_proxy", proxy.url)
                (resp,) = await chat_via(backend, pki, "")
    assert resp.status_code == 200, resp.text
    assert proxy.requests == []


async def test_the_key_wins_over_the_environment(
    pki: SimpleNamespace, monkeypatch: pytest.MonkeyPatch
) -> None:
    with anyio.fail_after(15):
        async with devbackend.run(tls=pki.server_context()) as backend:
            async with connect_proxy(refuse=403) as env_proxy, connect_proxy() as key_proxy:
                monkeypatch.setenv("https_proxy", env_proxy.url)
                monkeypatch.setenv("no_proxy", "*")  # no_proxy applies to the environment only
                (resp,) = await chat_via(backend, pki, key_proxy.url)
    assert resp.status_code == 200, resp.text
    assert env_proxy.requests == [] and key_proxy.tunnels == 1


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("socks5://u:s3cret@proxy.example:1080",
         "unsupported proxy URL 'socks5://***@proxy.example:1080' (use http://host:port)"),
        # a name the DNS lookup cannot encode: it was the codec's UnicodeError,
        # an internal error (a retried 500)
        ("http://u:s3cret@proxy..corp:3128",
         "invalid host name in proxy URL 'http://***@proxy..corp:3128' "
         "(an empty label, or one over 63 characters)"),
    ],
    ids=["socks", "empty-label"],
)  # fmt: skip
async def test_unusable_environment_proxy_fails_requests_not_the_server(
    pki: SimpleNamespace,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    url: str,
    why: str,
) -> None:
    monkeypatch.setenv("https_proxy", url)
    with anyio.fail_after(15):
        async with devbackend.run(tls=pki.server_context()) as backend:
            (resp,) = await chat_via(backend, pki, None)
    assert resp.status_code == 502
    assert error_message(resp, should_retry="false") == f"environment variable https_proxy: {why}"
    assert "s3cret" not in caplog.text


# --- parsing and selection (no I/O) -----------------------------------------------------


def route_for(
    env: Mapping[str, str], proxy: Optional[str] = None, endpoint: str = "https://api.example.com"
) -> Optional[str]:
    backend = BackendConfig(endpoint=endpoint, proxy=proxy)
    host = endpoint.split("//")[1].split("/")[0].rsplit(":", 1)[0].strip("[]")
    route = proxy_for(backend, host, env)
    return None if route is None else f"{route.host}:{route.port}"


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, None),
        ({"https_proxy": "http://p:3128"}, "p:3128"),
        ({"HTTPS_PROXY": "p2:8080"}, "p2:8080"),
        ({"https_proxy": "http://p"}, "p:3128"),  # the conventional default port
        ({"http_proxy": "http://p:3128"}, None),  # not for an https endpoint
        ({"https_proxy": "http://p:3128", "no_proxy": "example.com"}, None),
        ({"https_proxy": "http://p:3128", "no_proxy": ".example.com"}, None),
        ({"https_proxy": "http://p:3128", "NO_PROXY": "api.example.com:443"}, None),
        ({"https_proxy": "http://p:3128", "no_proxy": "other.com, *.net"}, "p:3128"),
        ({"https_proxy": "http://p:3128", "no_proxy": "ample.com"}, "p:3128"),
    ],
)
def test_proxy_selection(env: dict[str, str], expected: Optional[str]) -> None:
    assert route_for(env) == expected


def test_proxy_selection_by_address() -> None:
    env = {"https_proxy": "http://p:3128", "no_proxy": "10.0.0.0/8,::1"}
    assert route_for(env, endpoint="https://10.1.2.3/v1") is None
    assert route_for(env, endpoint="https://[::1]:8443/v1") is None
    assert route_for(env, endpoint="https://11.1.2.3/v1") == "p:3128"
    assert route_for({"http_proxy": "http://p:3128"}, endpoint="http://b.example") == "p:3128"
    assert route_for({"https_proxy": "http://p:1"}, proxy="http://k:2") == "k:2"
    assert route_for({"https_proxy": "http://p:1"}, proxy="") is None


def test_proxy_credentials_are_decoded_and_hidden() -> None:
    route = parse_proxy(f"http://alice:{PASSWORD_IN_URL}@proxy.example:8080")
    assert route.authorization == basic("alice", PASSWORD).encode()
    assert route.display == "http://***@proxy.example:8080"
    assert PASSWORD not in repr(route) and PASSWORD_IN_URL not in repr(route)
    assert parse_proxy("http://[::1]:3128").host == "::1"


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("socks5://u:s3cret@h:1080", "unsupported proxy URL 'socks5://***@h:1080'"),
        ("http://u:s3cret@h:port", "invalid port in proxy URL 'http://***@h:port'"),
        ("http://u:s3/cret@h:3128", "percent-encode"),
    ],
)
def test_bad_proxy_urls_are_refused_without_their_secrets(url: str, message: str) -> None:
    with pytest.raises(ValueError, match="proxy URL") as info:
        parse_proxy(url)
    assert message in str(info.value)
    assert "s3" not in str(info.value)
