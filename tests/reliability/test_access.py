"""Nobody outside the host uses the identity: Host (DNS rebinding), Origin (a web
page driving the proxy) and Content-Type (CORS "simple requests") checks.

A refused request never reaches the backend.
"""

from __future__ import annotations

import json
import logging
from types import SimpleNamespace
from typing import Optional

import anyio
import openai
import pytest

from goose_proxy.http import server as server_module
from goose_proxy.http.server import warn_if_exposed
from tests.reliability.support import HELLO, ask, proxied
from tests.support import make_config, running_proxy

pytestmark = pytest.mark.anyio

CHAT = "/v1/chat/completions"
BODY = json.dumps(HELLO).encode()


def req(
    host: Optional[str] = "localhost",
    *,
    origin: Optional[str] = None,
    ctype: Optional[str] = "application/json",
    method: str = "POST",
    path: str = CHAT,
    extra: str = "",
) -> bytes:
    head = f"{method} {path} HTTP/1.1\r\nConnection: close\r\n"
    if host is not None:
        head += f"Host: {host}\r\n"
    if origin is not None:
        head += f"Origin: {origin}\r\n"
    body = BODY if method == "POST" else b""
    if ctype is not None and method == "POST":
        head += f"Content-Type: {ctype}\r\n"
    if method == "POST":
        head += f"Content-Length: {len(body)}\r\n"
    return (head + extra + "\r\n").encode("latin-1") + body


# --- Host -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "host",
    [
        "evil.example",
        "evil.example:8080",
        "127.0.0.1.nip.io",  # rebinding services resolve such names to loopback
        "localhost.evil.example",
        "10.0.0.5",
        "0.0.0.0",
        "[::ffff:10.0.0.5]",
        "[::1",  # no address: its bracket is not closed
        "",
        # what follows the name is no port: the name was cut off and allowed
        "[::1]evil.example",
        "[::1]:80@evil",
        "127.0.0.1:8080 evil",
        "localhost:80x",
        # a zone is no part of a loopback address
        "[::1%evil.example]",
        "[::1%x]:80",
        "::1%evil.example",
    ],
)
async def test_foreign_host_is_refused(pki: SimpleNamespace, host: str) -> None:
    with anyio.fail_after(10):
        async with proxied(pki) as h:
            r = await ask(h.proxy.port, req(host))
            get = await ask(h.proxy.port, req(host, method="GET", path="/v1/models"))
    for resp in (r, get):
        assert resp.status == 403
        assert resp.error["code"] == "forbidden"
        assert "allowed_hosts" in resp.error["message"]
    assert h.backend.stats.requests_total == 0


@pytest.mark.parametrize(
    "host",
    [
        "localhost",
        "LOCALHOST:8080",
        "127.0.0.1",
        "127.0.0.1:1234",
        "127.0.0.2",
        "[::1]:80",
        "[::1]",
        "localhost:",
    ],
)
async def test_loopback_host_is_allowed(pki: SimpleNamespace, host: str) -> None:
    with anyio.fail_after(10):
        async with proxied(pki) as h:
            r = await ask(h.proxy.port, req(host))
    assert r.status == 200


async def test_allowed_hosts_from_config(pki: SimpleNamespace) -> None:
    with anyio.fail_after(10):
        # as configured: a port and upper case (a port never matched before)
        async with proxied(pki, server={"allowed_hosts": ("Goose.Internal:8080",)}) as h:
            ok = await ask(h.proxy.port, req("goose.internal:8080"))
            other = await ask(h.proxy.port, req("other.internal"))
    assert ok.status == 200
    assert other.status == 403


async def test_http10_without_host_is_allowed(pki: SimpleNamespace) -> None:
    with anyio.fail_after(10):
        async with proxied(pki) as h:
            r = await ask(h.proxy.port, b"GET /health HTTP/1.0\r\n\r\n")
    assert r.status == 200


# --- Origin -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "origin", ["https://evil.example", "null", "http://localhost:3000", "file://"]
)
async def test_origin_is_refused_unless_allowed(pki: SimpleNamespace, origin: str) -> None:
    with anyio.fail_after(10):
        async with proxied(pki) as h:
            r = await ask(h.proxy.port, req(origin=origin))
    assert r.status == 403
    assert "allowed_origins" in r.error["message"]
    assert h.backend.stats.requests_total == 0


async def test_allowed_origin_from_config(pki: SimpleNamespace) -> None:
    with anyio.fail_after(10):
        async with proxied(pki, server={"allowed_origins": ("http://localhost:3000",)}) as h:
            ok = await ask(h.proxy.port, req(origin="http://localhost:3000"))
            slash = await ask(h.proxy.port, req(origin="HTTP://LOCALHOST:3000/"))
            other = await ask(h.proxy.port, req(origin="http://localhost:3001"))
            # a second Origin header cannot smuggle a foreign page past the check
            two = await ask(
                h.proxy.port,
                req(origin="http://localhost:3000", extra="Origin: https://evil.example\r\n"),
            )
    assert ok.status == 200 and slash.status == 200
    assert other.status == 403 and two.status == 403


# --- Content-Type -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "ctype",
    [
        "text/plain",  # what a no-preflight fetch() or a <form> with enctype=text/plain sends
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
        "application/jsonp",
        "json",
        None,
    ],
)
async def test_non_json_content_type_is_refused(pki: SimpleNamespace, ctype: Optional[str]) -> None:
    with anyio.fail_after(10):
        async with proxied(pki) as h:
            r = await ask(h.proxy.port, req(ctype=ctype))
            passthrough = await ask(h.proxy.port, req(ctype=ctype, path="/v1/responses"))
    for resp in (r, passthrough):
        assert resp.status == 415
        assert resp.error["code"] == "unsupported_media_type"
    assert h.backend.stats.requests_total == 0


async def test_route_and_method_are_checked_before_the_body(pki: SimpleNamespace) -> None:
    # a POST no handler serves is a 405 with Allow (or a 404), whatever its body's
    # type or coding: nothing reads that body; the Origin check still comes first
    with anyio.fail_after(10):
        async with proxied(pki) as h:
            port = h.proxy.port
            plain = await ask(port, req(ctype="text/plain", path="/v1/models"))
            untyped = await ask(port, req(ctype=None, path="/health"))
            encoded = await ask(port, req(path="/v1/models", extra="Content-Encoding: gzip\r\n"))
            unknown = await ask(port, req(ctype="text/plain", path="/nope"))
            foreign = await ask(
                port, req(ctype="text/plain", path="/v1/models", origin="https://evil.example")
            )
    for resp in (plain, untyped, encoded):
        assert resp.status == 405 and resp.error["code"] == "method_not_allowed"
        assert resp.header("allow") == "GET, HEAD"  # HEAD is served wherever GET is
    assert unknown.status == 404 and unknown.error["code"] == "not_found"
    assert foreign.status == 403
    assert h.backend.stats.requests_total == 0


async def test_refusals_before_a_handler_carry_the_request_id(
    pki: SimpleNamespace, caplog: pytest.LogCaptureFixture
) -> None:
    # a refusal made before any handler runs (Host, Content-Type, length, a head
    # too large) echoes the client's X-Request-ID as a handled request's answer
    # does; a head that cannot be parsed gets an id of its own; both are logged
    caplog.set_level("INFO", logger="goose_proxy.access")
    tagged = "X-Request-ID: req-7\r\n"
    with anyio.fail_after(10):
        async with proxied(pki) as h:
            port = h.proxy.port
            refused = [
                await ask(port, req("evil.example", extra=tagged)),
                await ask(port, req(ctype="text/plain", extra=tagged)),
                await ask(
                    port, f"POST {CHAT} HTTP/1.1\r\nHost: localhost\r\n{tagged}\r\n".encode()
                ),
                await ask(port, req(extra=tagged + "X-Big: " + "a" * 20_000 + "\r\n")),
            ]
            garbled = await ask(port, b"GET / HTTP/1.1\r\nno colon\r\n" + tagged.encode() + b"\r\n")
    assert [r.status for r in refused] == [403, 415, 411, 431]
    assert [r.header("x-request-id") for r in refused] == ["req-7"] * 4
    fresh = garbled.header("x-request-id")
    assert garbled.status == 400 and fresh is not None and len(fresh) == 32
    access = [rec.getMessage() for rec in caplog.records if rec.name == "goose_proxy.access"]
    assert sum(" rid=req-7" in line for line in access) == 4, access
    assert any(line.endswith(f" rid={fresh} (request head refused)") for line in access), access


@pytest.mark.parametrize(
    ("base", "hint"),
    [
        ("", "(the API is under /v1: the client's base URL should end with /v1)"),
        ("/v1/v1", "(the client's base URL ends with /v1 and the client adds another)"),
    ],
    ids=["without-v1", "v1-twice"],
)
async def test_a_base_url_off_by_v1_is_told_so(base: str, hint: str) -> None:
    # the SDK pointed at the seed's "http://127.0.0.1:8080" got a bare 404
    # "unknown path '/chat/completions'"
    async with running_proxy(make_config("http://127.0.0.1:9")) as proxy:
        with anyio.fail_after(15):
            client = openai.AsyncOpenAI(base_url=proxy.url + base, api_key="x", max_retries=0)
            try:
                with pytest.raises(openai.NotFoundError) as info:
                    await client.chat.completions.create(
                        model="m", messages=[{"role": "user", "content": "hi"}]
                    )
            finally:
                await client.close()
    assert info.value.body == {
        "message": f"unknown path '{base}/chat/completions' {hint}",
        "type": "invalid_request_error",
        "param": None,
        "code": "not_found",
    }


@pytest.mark.parametrize(
    ("method", "path", "served"),
    [
        ("POST", "//v1/chat/completions", "chat.completion"),
        ("POST", "/v1//chat/completions?api-version=1", "chat.completion"),
        ("POST", "/v1/chat/completions/", "chat.completion"),
        ("GET", "/v1/models/", "list"),
        ("GET", "/v1//models//rhel-lightspeed", "model"),
        ("GET", "//v1/models", "list"),
        ("GET", "/v1/models/rhel-lightspeed/", "model"),
    ],
)
async def test_a_doubled_or_trailing_slash_is_served_as_one(
    pki: SimpleNamespace, method: str, path: str, served: str
) -> None:
    # a script that glues "/chat/completions" to a base URL ending in "/v1/"
    # got a bare 404 "unknown path '/v1//chat/completions'"
    with anyio.fail_after(10):
        async with proxied(pki) as h:
            r = await ask(h.proxy.port, req(method=method, path=path))
            other = await ask(h.proxy.port, req(path="/v1//chat/completion"))
    assert r.status == 200 and r.json()["object"] == served
    if served == "model":
        assert r.json()["id"] == "rhel-lightspeed"
    assert other.status == 404
    assert other.error["message"] == "unknown path '/v1//chat/completion'"


@pytest.mark.parametrize(
    ("path", "hint"),
    [
        ("//chat/completions", "(the API is under /v1: the client's base URL should end with /v1)"),
        (
            "/v1/v1//chat/completions/",
            "(the client's base URL ends with /v1 and the client adds another)",
        ),
    ],
)
async def test_a_base_url_off_by_v1_and_ending_in_a_slash_is_told_so(path: str, hint: str) -> None:
    # the hint was asked of the path as sent, which no route has even with /v1
    with anyio.fail_after(15):
        async with running_proxy(make_config("http://127.0.0.1:9")) as proxy:
            r = await ask(proxy.port, req(path=path))
    assert r.status == 404 and r.error["message"] == f"unknown path {path!r} {hint}"


@pytest.mark.parametrize("model", ["org//model", "model/", "a/b"])
async def test_a_model_id_keeps_its_own_slashes(model: str) -> None:
    # folded as the rest of the path, "org//model" was looked up as "org/model"
    config = make_config("http://127.0.0.1:9", models={"id": model})
    with anyio.fail_after(15):
        async with running_proxy(config) as proxy:
            served = await ask(proxy.port, req(method="GET", path="/v1/models/" + model))
            doubled = await ask(proxy.port, req(method="GET", path="//v1/models//" + model))
    assert served.status == doubled.status == 200
    assert served.json()["id"] == doubled.json()["id"] == model


@pytest.mark.parametrize(
    ("method", "target"),
    [("OPTIONS", "*"), ("GET", "*"), ("CONNECT", "localhost:443"), ("GET", "health")],
)
async def test_a_target_that_is_no_path_is_a_400(
    pki: SimpleNamespace, method: str, target: str
) -> None:
    # it was a 404 "unknown path '*'"; no route can have it. The connection is
    # closed after the answer (no "Connection: close" asked for; kept alive, the
    # read below would wait for the 60 s keep-alive timeout)
    data = f"{method} {target} HTTP/1.1\r\nHost: localhost\r\n\r\n".encode()
    with anyio.fail_after(10):
        async with proxied(pki, server={"keepalive_timeout": 60}) as h:
            resp = await ask(h.proxy.port, data)
            after = await ask(h.proxy.port, req(method="GET", path="/health"))
    assert resp.status == 400 and resp.error["type"] == "invalid_request_error"
    assert f"request target {target!r} is not a path" in resp.error["message"]
    assert after.status == 200


async def test_a_post_without_a_length_is_a_411_and_the_connection_closes(
    pki: SimpleNamespace,
) -> None:
    # h11 takes such a POST as bodiless: it was answered "not valid JSON", and
    # its body then read as the next request's head (which waited for the head
    # timeout). Now 411, and closed: the body's bytes are never read as a request
    head = f"POST {CHAT} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n\r\n"
    with anyio.fail_after(10):
        async with proxied(pki, server={"keepalive_timeout": 60}) as h:
            resp = await ask(h.proxy.port, head.encode() + BODY)
            passthrough = await ask(h.proxy.port, head.replace(CHAT, "/v1/responses").encode())
            requests = h.backend.stats.requests_total
    for r in (resp, passthrough):
        assert r.status == 411 and r.error["code"] == "length_required"
        assert "without Content-Length" in r.error["message"]
    assert requests == 0


async def test_encoded_request_body_is_refused(pki: SimpleNamespace) -> None:
    # the body would be read as JSON as it is: gzip bytes would only give "not UTF-8"
    with anyio.fail_after(10):
        async with proxied(pki) as h:
            gz = await ask(h.proxy.port, req(extra="Content-Encoding: gzip\r\n"))
            passthrough = await ask(
                h.proxy.port, req(path="/v1/responses", extra="Content-Encoding: br\r\n")
            )
            identity = await ask(h.proxy.port, req(extra="Content-Encoding: identity\r\n"))
            # a list split over two headers: the second one counts too
            second = await ask(
                h.proxy.port,
                req(extra="Content-Encoding: identity\r\nContent-Encoding: deflate\r\n"),
            )
        requests = h.backend.stats.requests_total
    for resp, coding in ((gz, "gzip"), (passthrough, "br"), (second, "deflate")):
        assert resp.status == 415
        assert resp.error["code"] == "unsupported_media_type"
        assert f"Content-Encoding {coding!r} is not supported" in resp.error["message"]
    assert identity.status == 200
    assert requests == 1  # the identity one only


@pytest.mark.parametrize(
    "ctype", ["application/json", "application/json; charset=utf-8", "Application/JSON"]
)
async def test_json_content_type_is_accepted(pki: SimpleNamespace, ctype: str) -> None:
    with anyio.fail_after(10):
        async with proxied(pki) as h:
            r = await ask(h.proxy.port, req(ctype=ctype))
    assert r.status == 200


async def test_default_bind_is_loopback() -> None:
    from goose_proxy.config import Config

    assert Config().server.host == "127.0.0.1"


@pytest.mark.parametrize(
    ("host", "warned"),
    [("127.0.0.1", False), ("::1", False), ("127.0.0.5", False), ("0.0.0.0", True),
     ("::", True), ("10.1.2.3", True)],
)  # fmt: skip
def test_a_listener_off_loopback_is_warned_about(
    caplog: pytest.LogCaptureFixture, host: str, warned: bool
) -> None:
    # (the check alone: the tests never listen beyond loopback)
    caplog.set_level(logging.WARNING, logger="goose_proxy.http")
    warn_if_exposed(host, 8080)
    text = caplog.text
    assert ("not a loopback address" in text) is warned
    if warned:
        assert f"listening on {host} port 8080" in text


async def test_every_listener_is_checked_and_loopback_warns_of_nothing(
    pki: SimpleNamespace, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    checked: list[tuple[str, int]] = []

    def recording(host: str, port: int) -> None:
        checked.append((host, port))
        warn_if_exposed(host, port)

    monkeypatch.setattr(server_module, "warn_if_exposed", recording)
    caplog.set_level(logging.WARNING)
    with anyio.fail_after(10):
        async with proxied(pki) as h:
            port = h.proxy.port
    assert checked == [("127.0.0.1", port)]
    assert "not a loopback address" not in caplog.text
