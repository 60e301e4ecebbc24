"""Backend faults: each one gives the right OpenAI error — a status before the
stream starts, an error event after — and leaks no task and no socket.

The scripted backend (``devbackend``) injects most faults through
``X-Dev-Fault``; the few it has no knob for (a reset in the middle of the
response head, a chunked body cut mid-chunk, an oversized event after the
stream started, a stream that never ends for the passthrough) use a tiny
purpose-built server from ``support``.
"""

from __future__ import annotations

import asyncio
import fcntl
import gzip
import json
import re
import socket
import ssl
import struct
import termios
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from types import SimpleNamespace
from typing import Any, Optional

import anyio
import anyio.abc
import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from goose_proxy.config import AuthConfig
from goose_proxy.http.handlers import ERROR_BODY_LIMIT, _scan_whole_events, _whole_events
from goose_proxy.upstream import client
from tests.reliability.support import (
    HELLO,
    HELLO_STREAM,
    SSE_HEAD,
    FakeServer,
    answering,
    assert_no_leaks,
    chat_stream_outcome,
    chunk,
    fake_server,
    http_answer,
    parse_one,
    passthrough_error_event,
    passthrough_events,
    poll,
    pool_size,
    post,
    proxied,
    read_all,
    read_request_head,
    read_until,
    request_bytes,
    sse_answer,
    sse_data,
    sse_event,
    steady,
    text_events,
)
from tests.support import make_config, refusing_port, running_proxy, silent_listener

pytestmark = pytest.mark.anyio

ENDED_EARLY = "upstream stream ended early (no terminal event)"


def _reset(tcp: anyio.abc.SocketStream) -> None:
    """Make the next close an abortive one (RST, not FIN)."""
    tcp.extra(anyio.abc.SocketAttribute.raw_socket).setsockopt(
        socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
    )


async def _direct(
    endpoint: str,
    auth: AuthConfig,
    body: Any,
    path: str = "/v1/chat/completions",
    **backend: Any,
) -> httpx.Response:
    """The proxy alone in front of ``endpoint`` (no scripted backend)."""
    (r,) = await _direct_all(endpoint, auth, [body], path, **backend)
    return r


async def _direct_all(
    endpoint: str,
    auth: AuthConfig,
    bodies: list[Any],
    path: str = "/v1/chat/completions",
    **backend: Any,
) -> list[httpx.Response]:
    """:func:`_direct` of ``bodies``, one after another through one proxy (so
    that its pool serves the later ones); then checks that nothing leaked."""
    cfg = make_config(endpoint, auth, backend={"proxy": "", **backend})
    async with running_proxy(cfg) as proxy:
        tasks = len(asyncio.all_tasks())
        out = [await post(proxy.url, body, path=path) for body in bodies]
        await assert_no_leaks(proxy, None, tasks)
    return out


JSON = ("content-type", "application/json")
#: a request on each path an answer of the backend reaches a client by
ON_EVERY_PATH = pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/chat/completions", HELLO),
        ("/v1/chat/completions", HELLO_STREAM),
        ("/v1/responses", {"model": "m", "input": "hi"}),
    ],
    ids=["json", "stream", "passthrough"],
)


@asynccontextmanager
async def _canned(pki: SimpleNamespace, answer: bytes) -> AsyncIterator[FakeServer]:
    """A TLS backend that reads each request and sends ``answer``, then holds the
    connection until the proxy hangs up."""

    async def handler(stream: anyio.abc.ByteStream, tcp: anyio.abc.SocketStream) -> None:
        await read_request_head(stream, srv)
        await stream.send(answer)
        await read_all(stream)

    async with fake_server(handler, tls=pki.server_context()) as srv:
        yield srv


# --- a slow answer ----------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/responses"])
@pytest.mark.parametrize("flavor", ["lightspeed", "openai"])
async def test_an_answer_longer_to_generate_than_the_head_timeout(
    pki: SimpleNamespace, flavor: str, path: str
) -> None:
    # backend.timeout bounds the wait for the answer's head, not its
    # generation: the proxy asks for a stream even for a client that does not
    # stream, so the head comes at once (the openai flavour asked for a JSON
    # answer, whose head came after the whole generation: a 504, sent again
    # twice by the openai SDK)
    resp = {"id": "resp_1", "object": "response", "created_at": 1, "model": "m",
            "status": "completed", "output": [{"id": "msg_1", "type": "message",
            "role": "assistant", "status": "completed",
            "content": [{"type": "output_text", "text": "slow", "annotations": []}]}]}  # fmt: skip
    events = text_events(["slow"])

    async def handler(stream: anyio.abc.ByteStream, tcp: anyio.abc.SocketStream) -> None:
        await read_request_head(stream, srv)
        streamed = json.loads(srv.requests[-1].partition(b"\r\n\r\n")[2])["stream"]
        if streamed:
            await stream.send(SSE_HEAD + chunk(events[0]))
        await anyio.sleep(0.6)  # the backend at work (scripted): longer than the timeout
        if streamed:
            await stream.send(b"".join(chunk(e) for e in events[1:]) + b"0\r\n\r\n")
        else:
            body = json.dumps(resp).encode()
            await stream.send(http_answer("200 OK", [("content-type", "application/json")], body))
        await read_all(stream)

    chat = path == "/v1/chat/completions"
    ask = HELLO if chat else {"model": "m", "input": "hi"}
    with anyio.fail_after(10):
        async with fake_server(handler, tls=pki.server_context()) as srv:
            r = await _direct(srv.url, pki.auth, ask, path, timeout=0.3, flavor=flavor)
    assert r.status_code == 200, r.text
    if chat:
        assert r.json()["choices"][0]["message"]["content"] == "slow"
    else:
        assert r.json()["output"][0]["content"][0]["text"] == "slow"
    assert len(srv.requests) == 1


@pytest.mark.parametrize(
    ("body", "retry"),
    [
        (b"<html>Please log in</html>", "false"),
        (b"", "false"),
        (b'{"id": "resp_1", "outp', None),
        (b'{"id": "resp_1", "output": [1, 2', None),
        (b"[error] upstream connect error", "false"),
        (b'{"id": "r", "output": []}\n{"id": "s"}', "false"),
        (b"[" * 100_000, "false"),
    ],
    ids=[
        "a-login-page",
        "nothing",
        "json-cut-short",
        "json-cut-between-values",
        "text-in-brackets",
        "json-and-more",
        "nested-too-deep",
    ],
)
async def test_a_2xx_chat_answer_that_is_no_json_says_whether_to_retry(
    pki: SimpleNamespace, body: bytes, retry: Optional[str]
) -> None:
    # a page (or nothing) comes again on a retry: the openai SDK is told not
    # to send the request again; JSON that breaks off may be a body cut short
    # (framed by the connection's close), a retry may get it whole
    answer = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
    answer += b"content-length: %d\r\n\r\n%s" % (len(body), body)
    with anyio.fail_after(10):
        async with _canned(pki, answer) as srv:
            r = await _direct(srv.url, pki.auth, HELLO)
    assert r.status_code == 502
    assert r.json()["error"]["message"] == "backend sent a response that is not JSON"
    assert r.headers.get("x-should-retry") == retry


# --- connecting ----------------------------------------------------------------------


async def test_connection_refused_gives_502(pki: SimpleNamespace) -> None:
    with anyio.fail_after(10):
        with refusing_port() as port:
            r = await _direct(f"https://127.0.0.1:{port}", pki.auth, HELLO)
    assert r.status_code == 502
    assert "x-should-retry" not in r.headers  # the backend may be back in a moment
    err = r.json()["error"]
    assert err["code"] == "upstream_connect_error"
    assert "refused" in err["message"]


async def test_silent_tls_server_times_out_in_the_handshake(pki: SimpleNamespace) -> None:
    # TCP is accepted (from the listen backlog), the TLS handshake never answered
    with anyio.fail_after(10), silent_listener() as port:
        r = await _direct(f"https://127.0.0.1:{port}", pki.auth, HELLO, connect_timeout=0.3)
    assert r.status_code == 502
    err = r.json()["error"]
    assert err["code"] == "upstream_connect_error"
    assert err["message"] == (
        f"timed out after 0.3 s in the TLS handshake with backend 127.0.0.1:{port}"
    )


async def test_dns_failure_gives_502(pki: SimpleNamespace) -> None:
    with anyio.fail_after(20):
        r = await _direct("https://backend.goose-proxy.invalid", pki.auth, HELLO)
    assert r.status_code == 502
    err = r.json()["error"]
    assert err["code"] == "upstream_connect_error"
    assert "cannot resolve" in err["message"] and "backend.goose-proxy.invalid" in err["message"]


async def test_connect_timeout_gives_502(pki: SimpleNamespace) -> None:
    # A listener whose accept queue is full never completes a TCP handshake.
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(0)
    fillers = []
    try:
        port = srv.getsockname()[1]
        for _ in range(8):  # fill the backlog; later SYNs are dropped
            c = socket.socket()
            c.setblocking(False)
            try:
                c.connect(("127.0.0.1", port))
            except BlockingIOError:
                pass
            fillers.append(c)
        with anyio.fail_after(10):
            r = await _direct(f"https://127.0.0.1:{port}", pki.auth, HELLO, connect_timeout=0.3)
    finally:
        for c in fillers:
            c.close()
        srv.close()
    assert r.status_code == 502
    err = r.json()["error"]
    assert err["code"] == "upstream_connect_error"
    assert "timed out" in err["message"]


# --- TLS ----------------------------------------------------------------------------


async def test_untrusted_server_certificate(pki: SimpleNamespace) -> None:
    auth = AuthConfig(pki.cert_file, pki.key_file, str(pki.dir / "other-ca.pem"))
    with anyio.fail_after(10):
        async with proxied(pki) as h:
            cfg_proxy = make_config(h.backend.url, auth, backend={"proxy": ""})
            async with running_proxy(cfg_proxy) as proxy:
                r = await post(proxy.url, HELLO)
    assert r.status_code == 502
    assert r.headers["x-should-retry"] == "false"
    err = r.json()["error"]
    assert err["code"] == "upstream_tls_error"
    assert "not trusted" in err["message"]
    assert h.backend.stats.requests_total == 0


async def test_client_certificate_rejected(pki: SimpleNamespace) -> None:
    stranger = AuthConfig(
        str(pki.dir / "stranger-cert.pem"), str(pki.dir / "stranger-key.pem"), pki.ca_file
    )
    with anyio.fail_after(10):
        async with proxied(pki) as h:
            cfg = make_config(h.backend.url, stranger, backend={"proxy": ""})
            async with running_proxy(cfg) as proxy:
                r = await post(proxy.url, HELLO)
                rs = await post(proxy.url, HELLO_STREAM)
            await h.backend.wait_until(lambda b: b.stats.tls_handshake_failures >= 2)
    for resp in (r, rs):
        assert resp.status_code == 502
        err = resp.json()["error"]
        assert err["code"] == "upstream_tls_error"
        assert "client certificate" in err["message"]
        # under TLS 1.3 the server checks it after the handshake and may just
        # close: that "probably" is no proof (a backend going away looks the
        # same), so a retry is not ruled out
        probably = "probably rejected" in err["message"]
        assert resp.headers.get("x-should-retry") == (None if probably else "false")
    assert h.backend.stats.requests_total == 0


@pytest.mark.parametrize("body", [HELLO, HELLO_STREAM], ids=["json", "stream"])
async def test_a_reset_right_after_the_handshake_reads_as_a_rejected_certificate(
    pki: SimpleNamespace, body: dict[str, Any]
) -> None:
    # A TLS 1.3 server that refuses the client certificate after the handshake
    # may reset the connection as the request arrives, and the reset drops its
    # alert: as a close without a word, that is what the client is told (it
    # was "closed the connection while waiting for the response head").
    async def refuse(stream: anyio.abc.ByteStream, tcp: anyio.abc.SocketStream) -> None:
        _reset(tcp)

    with anyio.fail_after(10):
        async with fake_server(refuse, tls=pki.server_context()) as srv:
            r = await _direct(srv.url, pki.auth, body)
    assert r.status_code == 502
    err = r.json()["error"]
    assert err["code"] == "upstream_tls_error"
    assert err["message"] == (
        f"backend 127.0.0.1:{srv.port} closed the connection right after the TLS handshake"
        " without answering: it probably rejected the client certificate"
    )


async def test_a_close_long_after_the_request_is_no_certificate_refusal(
    pki: SimpleNamespace, monkeypatch: pytest.MonkeyPatch
) -> None:
    # a refusal after a TLS 1.3 handshake comes within a round trip of the
    # request; a backend that worked on it and then went away (a crashed
    # worker) closed later than RACE_WINDOW, and was blamed on the certificate
    monkeypatch.setattr(client, "RACE_WINDOW", 0.05)

    async def crash(stream: anyio.abc.ByteStream, tcp: anyio.abc.SocketStream) -> None:
        await read_request_head(stream, srv)
        await anyio.sleep(0.3)  # working on it, then gone without a byte of answer

    with anyio.fail_after(10):
        async with fake_server(crash, tls=pki.server_context()) as srv:
            r = await _direct(srv.url, pki.auth, HELLO)
    assert r.status_code == 502
    err = r.json()["error"]
    assert (err["code"], err["message"]) == (
        "upstream_error",
        f"backend 127.0.0.1:{srv.port} closed the connection before answering",
    )


async def test_client_certificate_refused_with_an_alert(pki: SimpleNamespace) -> None:
    # a TLS 1.2 server refuses it in the handshake, with an alert that says so
    # (OpenSSL sends it from a blocking socket; asyncio and anyio drop it)
    ctx = pki.server_context()
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    stranger = AuthConfig(
        str(pki.dir / "stranger-cert.pem"), str(pki.dir / "stranger-key.pem"), pki.ca_file
    )

    def refuse(listener: socket.socket) -> None:
        conn, _ = listener.accept()  # bounded by the listener's timeout
        with conn:
            conn.settimeout(10)
            try:
                ctx.wrap_socket(conn, server_side=True)
            except (ssl.SSLError, OSError):
                pass

    with socket.create_server(("127.0.0.1", 0)) as listener, anyio.fail_after(15):
        listener.settimeout(10)
        port = listener.getsockname()[1]
        async with anyio.create_task_group() as tg:
            tg.start_soon(anyio.to_thread.run_sync, refuse, listener)
            r = await _direct(f"https://127.0.0.1:{port}", stranger, HELLO)
    assert r.status_code == 502
    err = r.json()["error"]
    assert err["code"] == "upstream_tls_error"
    assert "the backend rejected the client certificate (" in err["message"]
    assert r.headers["x-should-retry"] == "false"


async def test_server_certificate_for_another_host(pki: SimpleNamespace) -> None:
    other = pki.ca.issue_cert("backend.example.com")
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    other.configure_cert(ctx)
    with anyio.fail_after(10):
        async with proxied(pki, backend_tls=ctx) as h:
            r = await post(h.url, HELLO)
    assert r.status_code == 502
    assert r.headers["x-should-retry"] == "false"
    err = r.json()["error"]
    assert err["code"] == "upstream_tls_error"
    assert "another host name" in err["message"] and "mismatch" in err["message"]
    assert h.backend.stats.requests_total == 0


# --- resets -----------------------------------------------------------------------


@pytest.mark.parametrize("body", [HELLO, HELLO_STREAM], ids=["json", "stream"])
async def test_reset_before_headers(pki: SimpleNamespace, body: dict[str, Any]) -> None:
    with anyio.fail_after(10):
        async with proxied(pki, fault="reset_before_headers") as h:
            r = await post(h.url, body)
    assert r.status_code == 502
    assert "x-should-retry" not in r.headers
    err = r.json()["error"]
    # on a fresh connection, a reset before a byte of answer cannot be told
    # from a client certificate refused after a TLS 1.3 handshake (see above)
    assert err["code"] == "upstream_tls_error"
    assert "probably rejected the client certificate" in err["message"]
    assert h.backend.stats.requests_total == 1  # not retried: the backend saw the request


@pytest.mark.parametrize("body", [HELLO, HELLO_STREAM], ids=["json", "stream"])
async def test_reset_during_headers(pki: SimpleNamespace, body: dict[str, Any]) -> None:
    async def half_head(stream: anyio.abc.ByteStream, tcp: anyio.abc.SocketStream) -> None:
        await read_request_head(stream, srv)
        await stream.send(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-st")
        _reset(tcp)

    with anyio.fail_after(10):
        async with fake_server(half_head, tls=pki.server_context()) as srv:
            r = await _direct(srv.url, pki.auth, body)
    assert r.status_code == 502
    err = r.json()["error"]
    assert err["code"] == "upstream_error"
    assert "closed the connection" in err["message"]


async def test_reset_mid_stream_ends_with_error_event(pki: SimpleNamespace) -> None:
    with anyio.fail_after(10):
        async with proxied(pki, fault="reset_mid_body") as h:
            r = await post(h.url, HELLO_STREAM)
    assert r.status_code == 200
    text, err = chat_stream_outcome(r.content)
    assert text  # the deltas before the reset went through
    assert err is not None and err["code"] == "upstream_error"
    assert "closed the connection" in err["message"]


# --- bytes that are not what they should be -------------------------------------------


@pytest.mark.parametrize("body", [HELLO, HELLO_STREAM], ids=["json", "stream"])
async def test_garbage_instead_of_http(pki: SimpleNamespace, body: dict[str, Any]) -> None:
    with anyio.fail_after(10):
        async with proxied(pki, fault="garbage") as h:
            r = await post(h.url, body)
    assert r.status_code == 502
    err = r.json()["error"]
    assert err["code"] == "upstream_protocol_error"
    assert "sent invalid HTTP while waiting for the response head: " in err["message"]
    assert "bytearray" not in err["message"]  # h11's quoting, without Python's wrapper


#: the first bytes a TLS server answers a plain request with (an alert), and an
#: HTTP/2 server (its SETTINGS frame)
_NOT_HTTP1 = {
    "tls-alert": b"\x15\x03\x01\x00\x02\x02\x46",
    "http2-settings": b"\x00\x00\x00\x04\x00\x00\x00\x00\x00",
}


@pytest.mark.parametrize("answer", list(_NOT_HTTP1))
@pytest.mark.parametrize("scheme", ["http", "https"])
async def test_an_answer_that_is_not_http1_text_is_told_so(
    pki: SimpleNamespace, answer: str, scheme: str
) -> None:
    # h11 said "illegal request line" of a backend's answer, naming the wrong
    # side; over plain HTTP such bytes are mostly a TLS or HTTP/2 server
    async def binary(stream: anyio.abc.ByteStream, tcp: anyio.abc.SocketStream) -> None:
        await read_request_head(stream, srv)
        await stream.send(_NOT_HTTP1[answer])
        await stream.receive()  # until the proxy hangs up

    tls = pki.server_context() if scheme == "https" else None
    with anyio.fail_after(10):
        async with fake_server(binary, tls=tls) as srv:
            r = await _direct(srv.url, pki.auth, HELLO)
    assert r.status_code == 502
    message = r.json()["error"]["message"]
    hint = client._BINARY_HINT if scheme == "http" else ""
    assert message.endswith(": not HTTP/1.1 text" + hint)
    assert "request line" not in message


async def _cut_chunked(srv: FakeServer, stream: anyio.abc.ByteStream) -> None:
    await read_request_head(stream, srv)
    frames = text_events(["one ", "two ", "three"])
    body = b"".join(chunk(f) for f in frames[:4])
    cut = chunk(frames[4])[:20]  # half a chunk, then FIN
    await stream.send(SSE_HEAD + body + cut)


async def test_truncated_chunked_body_mid_stream(pki: SimpleNamespace) -> None:
    async def handler(stream: anyio.abc.ByteStream, tcp: anyio.abc.SocketStream) -> None:
        await _cut_chunked(srv, stream)

    with anyio.fail_after(10):
        async with fake_server(handler, tls=pki.server_context()) as srv:
            r = await _direct(srv.url, pki.auth, HELLO_STREAM)
    assert r.status_code == 200
    text, err = chat_stream_outcome(r.content)
    assert text == "one two "
    assert err is not None and err["code"] == "upstream_error"
    assert "closed the connection in the middle of the response" in err["message"]


@pytest.mark.parametrize("body", [HELLO, HELLO_STREAM], ids=["json", "stream"])
async def test_chunk_lines_ended_by_a_bare_lf_and_zero_padded_sizes(
    pki: SimpleNamespace, body: dict[str, Any]
) -> None:
    # RFC 9112 2.2 lets a recipient take a bare LF for a CRLF, and leading
    # zeros are no digits of a size: the answer comes whole and at once (it
    # waited for a CRLF until stream_idle_timeout, then a 504; a 20-digit size
    # was a 502 "malformed chunk size")
    frames = text_events(["one ", "two ", "three"])
    chunks = b"".join(b"%020x\n%s\n" % (len(f), f) for f in frames)
    answer = SSE_HEAD + chunks + b"0\n\n"
    with anyio.fail_after(10):
        async with answering(answer, pki.server_context()) as srv:
            r, again = await _direct_all(srv.url, pki.auth, [body, body])
    assert r.status_code == again.status_code == 200
    assert srv.accepted == 1  # the body's end was found: the connection was reused
    for got in (r, again):
        if body is HELLO:
            assert got.json()["choices"][0]["message"]["content"] == "one two three"
        else:
            assert chat_stream_outcome(got.content) == ("one two three", None)


@pytest.mark.parametrize("apart", [False, True], ids=["with-the-head", "a-write-of-its-own"])
async def test_empty_lines_before_a_status_line_are_skipped(
    pki: SimpleNamespace, apart: bool
) -> None:
    # a stray CRLF after an answer (a server that ends its body so) arrives
    # after the proxy took the pooled connection for the next request: it came
    # before that request's status line, and h11 refused it ("no response line
    # received"), a 502 for a request the backend answered
    frames = text_events(["one ", "two"])
    answer = SSE_HEAD + b"".join(b"%x\r\n%s\r\n" % (len(f), f) for f in frames) + b"0\r\n\r\n"

    async def handler(stream: anyio.abc.ByteStream, tcp: anyio.abc.SocketStream) -> None:
        while True:
            await read_request_head(stream, srv)
            if apart:
                await stream.send(b"\r\n")
                await stream.send(answer)
            else:
                await stream.send(b"\r\n\r\n" + answer)

    with anyio.fail_after(10):
        async with fake_server(handler, tls=pki.server_context()) as srv:
            answers = await _direct_all(srv.url, pki.auth, [HELLO, HELLO_STREAM, HELLO])
    assert [r.status_code for r in answers] == [200, 200, 200], answers[0].text
    assert srv.accepted == 1  # each on the one connection, none sent twice
    assert len(srv.requests) == 3
    assert chat_stream_outcome(answers[1].content) == ("one two", None)
    assert answers[2].json()["choices"][0]["message"]["content"] == "one two"


async def test_line_ends_during_a_large_upload_do_not_stop_it(pki: SimpleNamespace) -> None:
    # the stray CRLF comes while the proxy still sends a large request body
    # (Goose's run to megabytes) on the pooled connection: it was taken for
    # the answer, the rest of the body stayed unsent, and both sides waited
    # until backend.timeout (a 504, for a request the backend would answer)
    big = {"model": "m", "messages": [{"role": "user", "content": "x" * 14_000_000}]}
    answer = sse_answer(text_events(["one"]))

    async def handler(stream: anyio.abc.ByteStream, tcp: anyio.abc.SocketStream) -> None:
        await read_request_head(stream, srv)
        await stream.send(answer)  # the connection goes to the pool
        buf = await read_until(stream, b"\r\n\r\n")  # the big request's head
        await stream.send(b"\r\n")  # far ahead of the proxy's last byte of body
        head, _, body = buf.partition(b"\r\n\r\n")
        m = re.search(rb"(?i)\r\ncontent-length: *(\d+)", head)
        want = int(m.group(1)) if m else 0
        received = bytearray(body)
        while len(received) < want:  # bounded: the request's own Content-Length
            received += await stream.receive()
        srv.requests.append(head)
        await stream.send(answer)
        await read_all(stream)

    with anyio.fail_after(30):
        async with fake_server(handler, tls=pki.server_context()) as srv:
            first, second = await _direct_all(
                srv.url, pki.auth, [HELLO, big], timeout=10, max_request_chars=0
            )
    assert (first.status_code, second.status_code) == (200, 200), second.text
    assert second.json()["choices"][0]["message"]["content"] == "one"
    assert srv.accepted == 1 and len(srv.requests) == 2  # one connection, nothing sent twice


@pytest.mark.parametrize("framing", ["chunked", "content-length"])
async def test_line_ends_after_an_answer_keep_its_connection(
    pki: SimpleNamespace, framing: str
) -> None:
    # the same stray CRLF, in the answer's own write: the connection was
    # closed as holding bytes past the answer, and every request paid a new
    # mTLS handshake
    frames = b"".join(text_events(["one ", "two"]))
    if framing == "chunked":
        answer = SSE_HEAD + b"%x\r\n%s\r\n0\r\n\r\n" % (len(frames), frames)
    else:
        answer = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
        answer += b"content-length: %d\r\n\r\n%s" % (len(frames), frames)

    async def handler(stream: anyio.abc.ByteStream, tcp: anyio.abc.SocketStream) -> None:
        while True:
            await read_request_head(stream, srv)
            await stream.send(answer + b"\r\n")

    with anyio.fail_after(10):
        async with fake_server(handler, tls=pki.server_context()) as srv:
            answers = await _direct_all(srv.url, pki.auth, [HELLO, HELLO_STREAM, HELLO])
    assert [r.status_code for r in answers] == [200, 200, 200], answers[0].text
    assert srv.accepted == 1 and len(srv.requests) == 3
    assert chat_stream_outcome(answers[1].content) == ("one two", None)
    assert answers[2].json()["choices"][0]["message"]["content"] == "one two"


async def test_line_separators_in_text_reach_a_line_splitting_client_whole(
    pki: SimpleNamespace,
) -> None:
    # Lightspeed escapes U+2028 (its JSON is ASCII); the proxy wrote it raw,
    # and httpx's aiter_lines (str.splitlines rules) cut the data: line there:
    # a hand-written SSE loop's json.loads failed with "Unterminated string"
    words = ["line one\u2028line two", "\u2029 and \u0085", " done"]
    want = "".join(words)
    with anyio.fail_after(10):
        async with answering(_chunked_sse(text_events(words)), pki.server_context()) as srv:
            cfg = make_config(srv.url, pki.auth, backend={"proxy": ""})
            async with running_proxy(cfg) as proxy, httpx.AsyncClient(timeout=10) as c:
                async with c.stream("POST", proxy.url + "/v1/chat/completions",
                                    json=HELLO_STREAM) as r:  # fmt: skip
                    lines = [line async for line in r.aiter_lines()]
                whole = await c.post(proxy.url + "/v1/chat/completions", json=HELLO)
    data = [line[len("data: ") :] for line in lines if line.startswith("data: ")]
    chunks = [json.loads(d) for d in data if d != "[DONE]"]
    assert [line for line in lines if line and not line.startswith("data: ")] == []
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks) == want
    assert [line for line in whole.text.splitlines() if line] == [whole.text]
    assert whole.json()["choices"][0]["message"]["content"] == want


def _chunked_sse(frames: list[bytes]) -> bytes:
    return SSE_HEAD + b"".join(b"%x\r\n%s\r\n" % (len(f), f) for f in frames) + b"0\r\n\r\n"


@pytest.mark.parametrize("after_text", [False, True], ids=["first", "after-text"])
async def test_llama_stacks_data_only_error_event_is_an_error(
    pki: SimpleNamespace, after_text: bool
) -> None:
    # Llama Stack ends a stream whose generator raised with a data-only
    # {"error": {"message": …}} (no event name, no type): it was skipped, so
    # a context overflow became a 502 "ended early" the SDK sent twice more
    said = "Invalid value: This model's maximum context length is 4096 tokens."
    frames = text_events(["one "])[:3] if after_text else text_events([])[:1]
    frames = [*frames, b"data: " + json.dumps({"error": {"message": said}}).encode() + b"\n\n"]
    passthrough = {"model": "m", "input": "hi", "stream": True}
    with anyio.fail_after(10):
        async with answering(_chunked_sse(frames), pki.server_context()) as srv:
            chat, stream = await _direct_all(
                srv.url, pki.auth, [HELLO, HELLO_STREAM], flavor="openai"
            )
            (relayed,) = await _direct_all(
                srv.url, pki.auth, [passthrough], "/v1/responses", flavor="openai"
            )
    # a JSON answer is not begun before the end: a real 400 (Goose compacts)
    assert chat.status_code == 400, chat.text
    assert chat.json()["error"]["code"] == "context_length_exceeded"
    if not after_text:
        for r in (stream, relayed):
            assert r.status_code == 400, r.text
            assert r.json()["error"]["code"] == "context_length_exceeded"
        return
    text, err = chat_stream_outcome(stream.content)
    assert text == "one " and err is not None and said in err["message"]
    # relayed as it came, and the end of the stream (the openai SDK raises on
    # an event with an "error"), with no "ended early" event of the proxy's after it
    assert passthrough_events(relayed.content)[-1] == (None, {"error": {"message": said}})


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/responses"])
async def test_a_backend_without_the_route_says_to_check_the_endpoint(
    pki: SimpleNamespace, path: str
) -> None:
    # FastAPI's bare {"detail":"Not Found"} for an endpoint without /v1 said
    # only "Not Found"
    answer = http_answer("404 Not Found", [("content-type", "application/json")],
                         b'{"detail":"Not Found"}')  # fmt: skip
    body = HELLO if path.endswith("completions") else {"model": "m", "input": "hi"}
    with anyio.fail_after(10):
        async with answering(answer, pki.server_context()) as srv:
            (r,) = await _direct_all(srv.url, pki.auth, [body], path)
    assert r.status_code == 404
    message = r.json()["error"]["message"]
    assert message.startswith(f"Not Found: the backend serves no POST {srv.url}/responses;")
    assert "check [backend] endpoint" in message


async def test_truncated_chunked_body_json(pki: SimpleNamespace) -> None:
    async def handler(stream: anyio.abc.ByteStream, tcp: anyio.abc.SocketStream) -> None:
        await _cut_chunked(srv, stream)

    with anyio.fail_after(10):
        async with fake_server(handler, tls=pki.server_context()) as srv:
            r = await _direct(srv.url, pki.auth, HELLO)
    assert r.status_code == 502
    assert "closed the connection in the middle of the response" in r.json()["error"]["message"]


@pytest.mark.parametrize(
    "coding",
    [
        [("content-encoding", "gzip")],
        [("content-encoding", "identity"), ("content-encoding", "gzip")],
    ],
    ids=["one-header", "second-header"],
)
@pytest.mark.parametrize("body", [HELLO, HELLO_STREAM], ids=["json", "stream"])
async def test_encoded_answer_is_refused_not_garbled(
    pki: SimpleNamespace, body: dict[str, Any], coding: list[tuple[str, str]]
) -> None:
    # the proxy asks for identity; a backend that compresses anyway gets a clear
    # error, not gzip bytes parsed as JSON or SSE
    payload = gzip.compress(b'{"id": "resp_1"}')
    answer = http_answer("200 OK", [JSON, *coding], payload)
    with anyio.fail_after(10):
        async with _canned(pki, answer) as srv:
            r, again = await _direct_all(srv.url, pki.auth, [body, body])
    assert b"\r\naccept-encoding: identity\r\n" in srv.requests[0].lower()
    assert srv.accepted == 2  # the first connection was closed, not pooled
    assert r.status_code == again.status_code == 502
    assert r.headers["x-should-retry"] == "false"  # it would come compressed again
    err = r.json()["error"]
    assert err["code"] == "upstream_protocol_error"
    assert "Content-Encoding 'gzip', which goose-proxy does not decode" in err["message"]


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/responses"])
async def test_encoded_error_answer_keeps_its_status(pki: SimpleNamespace, path: str) -> None:
    # the status and Retry-After still say what happened; the body is not decoded
    payload = gzip.compress(b'{"detail": "quota exceeded"}')
    headers = [JSON, ("retry-after", "7"), ("content-encoding", "gzip")]
    answer = http_answer("429 Too Many Requests", headers, payload)
    body = HELLO if path == "/v1/chat/completions" else {"model": "m", "input": "hi"}
    with anyio.fail_after(10):
        async with _canned(pki, answer) as srv:
            r = await _direct(srv.url, pki.auth, body, path=path)
    assert r.status_code == 429
    assert r.headers["retry-after"] == "7"
    err = r.json()["error"]
    assert err["code"] == "rate_limit_exceeded"
    assert err["message"] == "backend answered HTTP 429"


#: error answers whose body cannot be read whole: (status line, headers, body,
#: what then: "hold" the connection open, or "close" it)
_UNREADABLE_ERROR_BODIES = {
    # a proxy's error page larger than the 1 MiB the proxy reads of an error
    "too-long": (
        "429 Too Many Requests",
        [("content-type", "text/html"), ("retry-after", "7")],
        b"<html>slow down" + b" " * (2 * 1024 * 1024) + b"</html>",
        "hold",
    ),
    # the body stalls after its first bytes (backend.timeout bounds the wait)
    "stalls": (
        "503 Service Unavailable",
        [JSON, ("retry-after", "3"), ("content-length", "1000")],
        b'{"error": {"message": "overloaded',
        "hold",
    ),
    # the connection ends in the middle of the body
    "cut": (
        "400 Bad Request",
        [JSON, ("content-length", "1000")],
        b'{"error": {"message": "This model\'s maximum context length is 8192 tokens',
        "close",
    ),
}


@pytest.mark.parametrize("fault", list(_UNREADABLE_ERROR_BODIES))
@ON_EVERY_PATH
async def test_an_error_answer_whose_body_cannot_be_read_keeps_its_status(
    pki: SimpleNamespace, fault: str, path: str, body: dict[str, Any]
) -> None:
    # the status and retry hints say what happened; the body counts only for
    # its message (it was a 502 "body larger than 1048576 bytes", a 504 after
    # stream_idle_timeout, or a 502 "closed the connection", hints dropped)
    status, headers, payload, then = _UNREADABLE_ERROR_BODIES[fault]
    if not any(k == "content-length" for k, _ in headers):
        headers = [*headers, ("content-length", str(len(payload)))]
    head = f"HTTP/1.1 {status}\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers) + "\r\n"

    async def handler(stream: anyio.abc.ByteStream, tcp: anyio.abc.SocketStream) -> None:
        await read_request_head(stream, srv)
        await stream.send(head.encode() + payload)
        if then == "hold":
            await read_all(stream)

    with anyio.fail_after(10):
        async with fake_server(handler, tls=pki.server_context()) as srv:
            r = await _direct(srv.url, pki.auth, body, path=path, timeout=0.5)
    err = r.json()["error"]
    if fault == "too-long":
        assert (r.status_code, err["code"]) == (429, "rate_limit_exceeded")
        assert r.headers["retry-after"] == "7"
        assert err["message"] == "backend answered HTTP 429 with an HTML page: 'slow down'"
    elif fault == "stalls":
        assert r.status_code == 503 and r.headers["retry-after"] == "3"
        assert "overloaded" in err["message"]
    else:
        assert (r.status_code, err["code"]) == (400, "context_length_exceeded")
        assert "maximum context length" in err["message"]


async def test_an_error_body_of_exactly_the_limit_keeps_its_connection(
    pki: SimpleNamespace,
) -> None:
    # read to its end (it stopped at the limit, before the end was seen, and
    # the connection was closed instead of pooled)
    page = b"x" * ERROR_BODY_LIMIT
    answer = http_answer("429 Too Many Requests", [("content-type", "text/plain")], page)
    with anyio.fail_after(10):
        async with answering(answer, pki.server_context()) as srv:
            rs = await _direct_all(srv.url, pki.auth, [HELLO, HELLO])
    assert [r.status_code for r in rs] == [429, 429]
    assert srv.accepted == 1


async def test_stream_without_terminal_event(pki: SimpleNamespace) -> None:
    with anyio.fail_after(10):
        async with proxied(pki, fault="truncate") as h:
            rs = await post(h.url, HELLO_STREAM)
            rj = await post(h.url, HELLO)
    text, err = chat_stream_outcome(rs.content)
    assert text and err is not None and "ended early" in err["message"]
    assert rj.status_code == 502  # a Content-Length body cut in half, then closed


@pytest.mark.parametrize("fault", ["truncate", "reset_mid_body"])
async def test_cut_content_length_body(pki: SimpleNamespace, fault: str) -> None:
    # a non-streamed answer (extra_body asks for one, over the proxy's own
    # stream: true) is a JSON body with a Content-Length
    responses = {"model": "m", "input": "hi", "stream": False}
    backend = {"flavor": "openai", "extra_body": {"stream": False}}
    with anyio.fail_after(10):
        async with proxied(pki, fault=fault, mode="openai", backend=backend) as h:
            r = await post(h.url, responses, path="/v1/responses")
    assert h.backend.requests[-1].json["stream"] is False
    assert r.status_code == 502
    err = r.json()["error"]
    assert err["code"] == "upstream_error"
    assert "closed the connection" in err["message"]


# --- sizes --------------------------------------------------------------------------


async def test_event_larger_than_max_event_size_before_output(pki: SimpleNamespace) -> None:
    with anyio.fail_after(10):
        async with proxied(pki, fault="big_event:20000", backend={"max_event_size": 4096}) as h:
            rs = await post(h.url, HELLO_STREAM)
            rj = await post(h.url, HELLO)
    for r in (rs, rj):
        assert r.status_code == 502  # nothing was sent yet: a real status
        err = r.json()["error"]
        assert err["code"] == "upstream_protocol_error"
        assert "larger than 4096 bytes" in err["message"]


async def test_event_larger_than_max_event_size_mid_stream(pki: SimpleNamespace) -> None:
    async def handler(stream: anyio.abc.ByteStream, tcp: anyio.abc.SocketStream) -> None:
        await read_request_head(stream, srv)
        frames = text_events(["one ", "two ", "x" * 10_000])
        await stream.send(SSE_HEAD + b"".join(chunk(f) for f in frames))
        await stream.send(b"0\r\n\r\n")

    with anyio.fail_after(10):
        async with fake_server(handler, tls=pki.server_context()) as srv:
            r = await _direct(srv.url, pki.auth, HELLO_STREAM, max_event_size=4096)
    assert r.status_code == 200
    text, err = chat_stream_outcome(r.content)
    assert text == "one two "
    assert err is not None and "larger than 4096 bytes" in err["message"]


@pytest.mark.parametrize(
    ("path", "body"),
    [("/v1/chat/completions", HELLO), ("/v1/responses", {"model": "m", "input": "hi"})],
    ids=["chat", "passthrough"],
)
async def test_an_answer_collected_for_json_is_bounded(
    pki: SimpleNamespace, path: str, body: dict[str, Any]
) -> None:
    # a client that did not stream gets the answer collected; deltas of more
    # characters than max_event_size (which the terminal event would have to
    # carry) end it with a 502, not a proxy that keeps them all (a backend that
    # never stops generating grew the proxy without bound)
    async def handler(stream: anyio.abc.ByteStream, tcp: anyio.abc.SocketStream) -> None:
        await read_request_head(stream, srv)
        frames = text_events(["x" * 1000] * 400)  # 400,000 characters; "output": [] at the end
        await stream.send(SSE_HEAD + b"".join(chunk(f) for f in frames) + b"0\r\n\r\n")

    with anyio.fail_after(10):
        async with fake_server(handler, tls=pki.server_context()) as srv:
            r = await _direct(srv.url, pki.auth, body, path, max_event_size=65536)
    assert r.status_code == 502
    assert r.headers["x-should-retry"] == "false"  # it would be as large again
    err = r.json()["error"]
    assert err["code"] == "upstream_protocol_error"
    assert err["message"] == (
        "backend answer larger than 65536 characters (backend.max_event_size); "
        "ask for it as a stream"
    )


async def test_arguments_held_behind_an_open_call_are_bounded(pki: SimpleNamespace) -> None:
    # a streamed call's fragments go out contiguous, so a second call's deltas
    # wait while the first is open; a backend that streams the second without
    # end ends the client's stream with an error (the first call's start
    # already sent), not a proxy that holds every delta
    def call(key: str, index: int) -> dict[str, Any]:
        item = {"type": "function_call", "id": key, "call_id": "call_" + key, "name": "f",
                "arguments": "", "status": "in_progress"}  # fmt: skip
        return {"type": "response.output_item.added", "output_index": index, "item": item}

    def delta(key: str, index: int, text: str) -> dict[str, Any]:
        return {"type": "response.function_call_arguments.delta", "item_id": key,
                "output_index": index, "delta": text}  # fmt: skip

    events = [call("a", 0), delta("a", 0, "{"), call("b", 1)]
    events += [delta("b", 1, "x" * 1000)] * 200  # 200,000 characters for call b
    frames = [sse_event({**ev, "sequence_number": i}) for i, ev in enumerate(events)]

    async def handler(stream: anyio.abc.ByteStream, tcp: anyio.abc.SocketStream) -> None:
        await read_request_head(stream, srv)
        await stream.send(SSE_HEAD + b"".join(chunk(f) for f in frames))
        await read_all(stream)  # until the proxy lets the connection go

    with anyio.fail_after(10):
        async with fake_server(handler, tls=pki.server_context()) as srv:
            r = await _direct(srv.url, pki.auth, HELLO_STREAM, max_event_size=65536)
    assert r.status_code == 200
    *chunks, error, done = sse_data(r.content)
    assert done == "[DONE]"
    deltas = [json.loads(ch)["choices"][0]["delta"] for ch in chunks]
    calls = [c for d in deltas for c in d.get("tool_calls", [])]
    assert calls == [
        {"index": 0, "id": "call_a", "type": "function",
         "function": {"name": "f", "arguments": ""}},
        {"index": 0, "function": {"arguments": "{"}},
    ]  # fmt: skip
    assert json.loads(error)["error"] == {
        "message": "backend held back more than 65536 characters of tool-call arguments "
        "behind an unfinished call (backend.max_event_size)",
        "type": "api_error",
        "param": None,
        "code": "upstream_protocol_error",
    }


# --- time ---------------------------------------------------------------------------


@pytest.mark.parametrize(("timeout", "said"), [(1, "1 second"), (0.3, "0.3 seconds")])
def test_a_timeout_is_said_in_words(timeout: float, said: str) -> None:
    # the 504 read "no response within 1 seconds"
    assert client._seconds(timeout) == said


@pytest.mark.parametrize("body", [HELLO, HELLO_STREAM], ids=["json", "stream"])
async def test_stall_before_headers_gives_504(pki: SimpleNamespace, body: dict[str, Any]) -> None:
    with anyio.fail_after(10):
        async with proxied(pki, fault="stall", backend={"timeout": 0.3}) as h:
            t0 = anyio.current_time()
            r = await post(h.url, body)
            took = anyio.current_time() - t0
            # the proxy hung up: the stalled backend connection is gone
            await h.backend.wait_until(lambda b: b.stats.in_flight == 0)
    assert r.status_code == 504
    assert "x-should-retry" not in r.headers
    err = r.json()["error"]
    assert err["code"] == "timeout" and "0.3 seconds" in err["message"]
    assert 0.3 <= took < 3


async def test_stall_between_events_ends_stream_with_error(pki: SimpleNamespace) -> None:
    with anyio.fail_after(10):
        async with proxied(
            pki, fault="stall_mid_stream", backend={"stream_idle_timeout": 0.3}
        ) as h:
            t0 = anyio.current_time()
            r = await post(h.url, HELLO_STREAM)
            took = anyio.current_time() - t0
            await h.backend.wait_until(lambda b: b.stats.in_flight == 0)
    assert r.status_code == 200
    text, err = chat_stream_outcome(r.content)
    assert text  # the first deltas were delivered before the stall
    assert err is not None and err["code"] == "timeout"
    assert "sent nothing for 0.3 seconds" in err["message"]
    assert 0.3 <= took < 3


async def test_stall_between_events_json_gives_504(pki: SimpleNamespace) -> None:
    with anyio.fail_after(10):
        async with proxied(
            pki, fault="stall_mid_stream", backend={"stream_idle_timeout": 0.3}
        ) as h:
            r = await post(h.url, HELLO)
    assert r.status_code == 504
    assert r.json()["error"]["code"] == "timeout"


@pytest.mark.parametrize("mode", ["lightspeed", "openai"])
@pytest.mark.parametrize("body", [HELLO, HELLO_STREAM], ids=["json", "stream"])
async def test_keep_open_after_terminal_event(
    pki: SimpleNamespace, mode: str, body: dict[str, Any]
) -> None:
    # stream_idle_timeout is long: a complete answer must not wait for it
    with anyio.fail_after(10):
        async with proxied(
            pki, fault="keep_open", mode=mode, backend={"stream_idle_timeout": 60}
        ) as h:
            t0 = anyio.current_time()
            r = await post(h.url, body)
            took = anyio.current_time() - t0
            # the held-open backend connection is closed, not pooled
            await h.backend.wait_until(lambda b: b.stats.in_flight == 0)
    assert r.status_code == 200
    if body.get("stream"):
        text, err = chat_stream_outcome(r.content)
        assert err is None
    else:
        text = r.json()["choices"][0]["message"]["content"]
        assert r.json()["choices"][0]["finish_reason"] == "stop"
    assert text.endswith("You said: hello")
    assert took < 2


@pytest.mark.parametrize("mode", ["lightspeed", "openai"])
async def test_keep_open_passthrough_stream(pki: SimpleNamespace, mode: str) -> None:
    body = {"model": "m", "input": "hello", "stream": True}
    with anyio.fail_after(10):
        async with proxied(
            pki, fault="keep_open", mode=mode, backend={"stream_idle_timeout": 60}
        ) as h:
            t0 = anyio.current_time()
            r = await post(h.url, body, path="/v1/responses")
            took = anyio.current_time() - t0
    assert r.status_code == 200
    assert b"response.completed" in r.content
    assert b'"type": "error"' not in r.content and b'"type":"error"' not in r.content
    if mode == "lightspeed":
        assert r.content.endswith(b"data: [DONE]\n\n")
    assert took < 2


@pytest.mark.parametrize(
    ("fault", "code"), [("stall_mid_stream", "timeout"), ("reset_mid_body", "upstream_error")]
)
async def test_passthrough_stream_that_stalls_or_breaks_ends_with_error_event(
    pki: SimpleNamespace, fault: str, code: str
) -> None:
    body = {"model": "m", "input": "hello", "stream": True}
    with anyio.fail_after(10):
        async with proxied(pki, fault=fault, backend={"stream_idle_timeout": 0.3}) as h:
            r = await post(h.url, body, path="/v1/responses")
    assert r.status_code == 200
    assert b"response.output_text.delta" in r.content
    assert passthrough_error_event(r.content)["code"] == code


@pytest.mark.parametrize("mode", ["lightspeed", "openai"])
async def test_passthrough_stream_without_its_end_gets_an_error_event(
    pki: SimpleNamespace, mode: str
) -> None:
    body = {"model": "m", "input": "hello", "stream": True}
    with anyio.fail_after(10):
        async with proxied(pki, fault="truncate", mode=mode) as h:
            r = await post(h.url, body, path="/v1/responses")
    assert r.status_code == 200
    types = [data["type"] for _, data in passthrough_events(r.content) if data != "[DONE]"]
    assert "response.output_text.delta" in types and "response.completed" not in types
    assert passthrough_error_event(r.content)["message"] == ENDED_EARLY


async def test_passthrough_event_over_the_cap_is_not_passed_on_half(pki: SimpleNamespace) -> None:
    """An event larger than max_event_size: the events before it, whole, then an error
    event of its own (before, the start of the big event went out and the error
    event landed inside it)."""
    body = {"model": "m", "input": "hello", "stream": True}
    with anyio.fail_after(10):
        async with proxied(pki, fault="big_event:100000", backend={"max_event_size": 16384}) as h:
            r = await post(h.url, body, path="/v1/responses")
    assert r.status_code == 200
    events = passthrough_events(r.content)
    assert [name for name, _ in events[:2]] == ["response.created", "response.in_progress"]
    assert all(len(json.dumps(data)) < 16384 for _, data in events)
    assert "larger than 16384 bytes" in passthrough_error_event(r.content)["message"]


@pytest.mark.parametrize("ending", ["\n\n", "\r\n\r\n", "\r\r"])
async def test_passthrough_relays_whole_events_byte_for_byte(
    pki: SimpleNamespace, ending: str
) -> None:
    """Any blank line ends an event; the bytes go through unchanged, in reads cut
    anywhere (here: chunks of 7 bytes, so that event ends fall across them)."""
    frames = [f.replace(b"\n\n", ending.encode()) for f in text_events(["one ", "two"])]
    stream = b"".join(frames) + b"data: [DONE]" + ending.encode()

    async def handler(s: anyio.abc.ByteStream, tcp: anyio.abc.SocketStream) -> None:
        await read_request_head(s, srv)
        await s.send(SSE_HEAD)
        for i in range(0, len(stream), 7):  # small pieces: ends split across reads
            await s.send(chunk(stream[i : i + 7]))
        await s.send(b"0\r\n\r\n")

    with anyio.fail_after(10):
        async with fake_server(handler, tls=pki.server_context()) as srv:
            r = await _direct(
                srv.url, pki.auth, {"input": "hi", "stream": True}, path="/v1/responses"
            )
    assert r.status_code == 200
    assert r.content == stream


@pytest.mark.parametrize(
    ("buf", "end", "too_big"),
    [
        (b"event: x\r\ndata: {}", 0, False),  # one CRLF is not a blank line
        (b"event: x\r\ndata: {}\r\n", 0, False),
        (b"event: x\r\ndata: {}\r\n\r", 0, False),  # the CR may be half a CRLF
        (b"event: x\r\ndata: {}\r\n\r\n", 22, False),
        (b"a\n\nb", 3, False),
        (b"a\r\rb", 3, False),
        (b"a\n\r\nb", 4, False),
        (b"a\n\n" + b"x" * 40 + b"\n\nc", 3, True),  # a whole event over the limit
        (b"a\n\n" + b"x" * 40, 3, True),  # one still arriving
    ],
)
def test_whole_events(buf: bytes, end: int, too_big: bool) -> None:
    assert _whole_events(buf, 0, 32) == (end, too_big)


@settings(max_examples=300, deadline=None)
@given(
    buf=st.lists(st.sampled_from([b"\n", b"\n\n", b"x", b"data: {}"]), max_size=40).map(b"".join)
    | st.binary(max_size=60).map(lambda b: b.replace(b"\r", b"\n")),
    start=st.integers(0, 8),
    limit=st.integers(1, 80),
)
def test_whole_events_fast_path_agrees_with_the_scan(buf: bytes, start: int, limit: int) -> None:
    # LF-only buffers of any size against any limit: the shortcut or the scan,
    # the answer is the one every blank line scanned left to right gives
    start = min(start, len(buf))
    assert _whole_events(buf, start, limit) == _scan_whole_events(buf, start, limit)


def test_whole_events_long_run_of_line_ends() -> None:
    buf = b"a" + b"\n" * 101 + b"b"  # past the shortcut's 64: the scan counts the run
    assert _whole_events(buf, 0, 4096) == _scan_whole_events(buf, 0, 4096) == (101, False)


async def _passthrough_of(
    pki: SimpleNamespace, raw: bytes, *, reset: bool = False, **backend: Any
) -> httpx.Response:
    """/v1/responses (stream) through the proxy, to a backend that sends ``raw`` as
    its chunked body in one write, then ends the body (or resets the connection)."""

    async def handler(s: anyio.abc.ByteStream, tcp: anyio.abc.SocketStream) -> None:
        await read_request_head(s, srv)
        if reset:
            _reset(tcp)
            await s.send(SSE_HEAD + chunk(raw))
        else:
            await s.send(SSE_HEAD + chunk(raw) + b"0\r\n\r\n")

    with anyio.fail_after(10):
        async with fake_server(handler, tls=pki.server_context()) as srv:
            body = {"input": "hi", "stream": True}
            return await _direct(srv.url, pki.auth, body, path="/v1/responses", **backend)


def _crlf(frame: bytes) -> bytes:
    return frame.replace(b"\n", b"\r\n")


async def test_passthrough_crlf_event_cut_after_a_line_is_not_passed_on(
    pki: SimpleNamespace,
) -> None:
    frames = [_crlf(f) for f in text_events(["one ", "two"])]
    cut = frames[3][: frames[3].index(b"\r\n") + 2 + 10]  # its event line, part of data
    r = await _passthrough_of(pki, b"".join(frames[:3]) + cut)
    assert r.status_code == 200
    assert r.content.startswith(b"".join(frames[:3]))
    rest = r.content[len(b"".join(frames[:3])) :]
    assert rest.startswith(b"event: error\ndata: ")  # an event of its own
    event = passthrough_error_event(r.content.replace(b"\r\n", b"\n"))
    assert event["message"] == ENDED_EARLY


@pytest.mark.parametrize("then", ["end", "completed"])
async def test_passthrough_done_before_the_terminal_event_is_held_back(
    pki: SimpleNamespace, then: str
) -> None:
    """The openai SDK and Goose stop reading at [DONE]: it goes out last, after the
    terminal event that follows it, or after the error event when none does."""
    frames = text_events(["one ", "two"])
    answer, completed = b"".join(frames[:-1]), frames[-1]
    done = b"data: [DONE]\n\n"
    r = await _passthrough_of(pki, answer + done + (completed if then == "completed" else b""))
    assert r.status_code == 200
    if then == "completed":
        assert r.content == answer + completed + done
        return
    assert r.content.startswith(answer) and r.content.endswith(done)
    assert passthrough_error_event(r.content)["message"] == ENDED_EARLY


@pytest.mark.parametrize(
    "stray",
    [b"data: not json\n\n", b'data: {"type":"response.output_text.delta","delta":"x"}\n\n'],
    ids=["not-json", "delta"],
)
async def test_passthrough_sends_nothing_but_done_after_the_terminal_event(
    pki: SimpleNamespace, stray: bytes
) -> None:
    """A client reads on after the terminal event until [DONE]: a stray event
    there (the openai SDK fails on one that is no JSON) is not passed on."""
    frames = b"".join(text_events(["one ", "two"]))
    done = b"data: [DONE]\n\n"
    r = await _passthrough_of(pki, frames + stray + done)
    assert r.status_code == 200
    assert r.content == frames + done


@pytest.mark.parametrize(
    ("path", "body"),
    [("/v1/chat/completions", HELLO_STREAM), ("/v1/chat/completions", HELLO),
     ("/v1/responses", {"model": "m", "input": "hi"})],
    ids=["chat-stream", "chat-json", "passthrough-collected"],
)  # fmt: skip
async def test_done_before_the_terminal_event_waits_for_it_on_every_path(
    pki: SimpleNamespace, path: str, body: dict[str, Any]
) -> None:
    """As the passthrough's stream does: a [DONE] that comes before the terminal
    event leaves DONE_GRACE for it, instead of 'ended early'."""
    frames = text_events(["one ", "two"])
    raw = b"".join(frames[:-1]) + b"data: [DONE]\n\n" + frames[-1]
    with anyio.fail_after(10):
        async with _canned(pki, SSE_HEAD + chunk(raw) + b"0\r\n\r\n") as srv:
            r = await _direct(srv.url, pki.auth, body, path=path)
    assert r.status_code == 200
    if body is HELLO_STREAM:
        assert chat_stream_outcome(r.content) == ("one two", None)
    elif path.endswith("completions"):
        assert r.json()["choices"][0]["message"]["content"] == "one two"
    else:
        assert r.json()["status"] == "completed"


async def test_a_terminal_event_cut_in_the_done_grace_is_an_early_end(
    pki: SimpleNamespace,
) -> None:
    """[DONE], then the start of the terminal event, then nothing: when the grace
    runs out the half-come event is not read as one ("not JSON"): the stream
    ended early."""
    frames = text_events(["one ", "two"])
    raw = b"".join(frames[:-1]) + b"data: [DONE]\n\n" + frames[-1][:40]
    with anyio.fail_after(10):
        async with _canned(pki, SSE_HEAD + chunk(raw)) as srv:  # and then holds
            r = await _direct(srv.url, pki.auth, HELLO_STREAM)
    text, err = chat_stream_outcome(r.content)
    assert text == "one two" and err is not None and err["message"] == ENDED_EARLY


@pytest.mark.parametrize("body", [HELLO, HELLO_STREAM], ids=["json", "stream"])
async def test_a_lone_surrogate_in_the_answer_reaches_a_chat_client_as_u_fffd(
    pki: SimpleNamespace, body: dict[str, Any]
) -> None:
    """Escaped, a lone half makes Goose's serde_json refuse the chunk and drop
    the turn; U+FFFD is what a UTF-8 decoder shows for it."""
    answer = (
        b'{"id": "r", "status": "completed", "output": [{"type": "message", '
        b'"role": "assistant", "content": [{"type": "output_text", "text": "a\\ud800b"}]}]}'
    )
    with anyio.fail_after(10):
        async with _canned(pki, http_answer("200 OK", [JSON], answer)) as srv:
            r = await _direct(srv.url, pki.auth, body, flavor="openai")
    assert r.status_code == 200 and b"\\ud800" not in r.content
    if body is HELLO:
        assert r.json()["choices"][0]["message"]["content"] == "a\ufffdb"
    else:
        assert chat_stream_outcome(r.content) == ("a\ufffdb", None)


async def test_passthrough_whole_big_event_in_one_read_is_not_passed_on(
    pki: SimpleNamespace,
) -> None:
    frames = text_events(["one ", "x" * 5000, "three"])
    r = await _passthrough_of(pki, b"".join(frames), max_event_size=4096)
    events = passthrough_events(r.content)
    assert [e[1]["type"] for e in events[:-1]] == [
        "response.created", "response.output_item.added", "response.output_text.delta",
    ]  # fmt: skip
    assert b"x" * 100 not in r.content
    assert "larger than 4096 bytes" in passthrough_error_event(r.content)["message"]


async def test_passthrough_reset_after_the_terminal_event_adds_no_error(
    pki: SimpleNamespace,
) -> None:
    frames = text_events(["one ", "two"])
    r = await _passthrough_of(pki, b"".join(frames), reset=True)
    assert r.status_code == 200
    assert r.content == b"".join(frames)


async def test_backend_error_status_mid_flight_is_not_a_leak(pki: SimpleNamespace) -> None:
    """A 500 answer keeps the connection usable (the body was read whole)."""
    with anyio.fail_after(10):
        async with proxied(pki, fault="status:500") as h:
            for _ in range(3):
                r = await post(h.url, HELLO_STREAM)
                assert r.status_code == 500
    assert h.backend.stats.connections_accepted == 1  # pooled and reused


# --- found in review -------------------------------------------------------------------


ONE = sse_answer(text_events(["one"]))


async def answer_one(stream: anyio.abc.ByteStream, srv: FakeServer) -> None:
    """Read a request, answer it with a one-word stream (the connection stays open)."""
    await read_request_head(stream, srv)
    await stream.send(ONE)


async def test_pooled_connection_closed_mid_answer_is_not_retried(pki: SimpleNamespace) -> None:
    # The retry on a reused connection is for a keep-alive race (closed before
    # any answer); once the backend started answering it had the request, and a
    # second run would be a second LLM call.
    async def handler(stream: anyio.abc.ByteStream, tcp: anyio.abc.SocketStream) -> None:
        await answer_one(stream, srv)
        await read_request_head(stream, srv)
        await stream.send(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-")  # then gone

    with anyio.fail_after(10):
        async with fake_server(handler, tls=pki.server_context()) as srv:
            first, second = await _direct_all(srv.url, pki.auth, [HELLO, HELLO])
    assert first.status_code == 200
    assert second.status_code == 502
    assert "closed the connection" in second.json()["error"]["message"]
    assert len(srv.requests) == 2  # not sent a third time
    assert srv.accepted == 1


@pytest.mark.parametrize("body", [HELLO, HELLO_STREAM], ids=["json", "stream"])
async def test_connection_close_answer_is_not_pooled(
    pki: SimpleNamespace, body: dict[str, Any]
) -> None:
    # "Connection: close" on a chunked answer (its body read past h11): the
    # connection is not offered to the next request, which would race the FIN
    with anyio.fail_after(10):
        async with proxied(pki, fault="close") as h:
            first = await post(h.url, body)
            pooled = pool_size(h.proxy)
            second = await post(h.url, body)
    assert (first.status_code, second.status_code, pooled) == (200, 200, 0)
    stats = h.backend.stats
    assert (stats.connections_accepted, stats.requests_total) == (2, 2)  # none sent twice


@pytest.mark.parametrize("body", [HELLO, HELLO_STREAM], ids=["json", "stream"])
async def test_pooled_connection_closed_before_answering_is_retried(
    pki: SimpleNamespace, body: dict[str, Any]
) -> None:
    # The keep-alive race: the backend closes an idle connection (FIN, not a
    # byte of answer) just as the next request goes out on it. The request is
    # sent again on a new connection, and the client never sees the race.
    async def handler(stream: anyio.abc.ByteStream, tcp: anyio.abc.SocketStream) -> None:
        await read_request_head(stream, srv)
        if srv.accepted == 1:
            await stream.send(ONE)
            await read_request_head(stream, srv)
            return  # closed without answering the second request
        await stream.send(sse_answer(text_events(["two"])))
        await read_all(stream)  # keep-alive until the proxy hangs up

    with anyio.fail_after(10):
        async with fake_server(handler, tls=pki.server_context()) as srv:
            first, second = await _direct_all(srv.url, pki.auth, [body, body])
    assert first.status_code == 200 and second.status_code == 200
    assert b"two" in second.content
    assert len(srv.requests) == 3  # the second request twice: once per connection
    assert srv.accepted == 2


TIMED_OUT = b"HTTP/1.1 408 Request Timeout\r\nconnection: close\r\ncontent-length: 0\r\n\r\n"


@pytest.mark.parametrize("body", [HELLO, HELLO_STREAM], ids=["json", "stream"])
async def test_pooled_connection_timed_out_with_a_408_is_retried(
    pki: SimpleNamespace, body: dict[str, Any]
) -> None:
    # The keep-alive race, the way HAProxy, Apache and Node end it: a 408 and a
    # close as the next request goes out on the connection (the request was not
    # taken). Sent again on a new connection; the 408 reached the client.
    async def handler(stream: anyio.abc.ByteStream, tcp: anyio.abc.SocketStream) -> None:
        if srv.accepted == 1:
            await answer_one(stream, srv)
            await read_request_head(stream, srv)
            await stream.send(TIMED_OUT)
            return
        await answer_one(stream, srv)
        await read_all(stream)

    with anyio.fail_after(10):
        async with fake_server(handler, tls=pki.server_context()) as srv:
            first, second = await _direct_all(srv.url, pki.auth, [body, body])
    assert first.status_code == second.status_code == 200
    assert len(srv.requests) == 3 and srv.accepted == 2


async def test_a_408_late_on_a_reused_connection_is_the_clients(
    pki: SimpleNamespace, monkeypatch: pytest.MonkeyPatch
) -> None:
    # well after the request went out: not the keep-alive race but the
    # backend's answer to it, relayed and not sent again
    monkeypatch.setattr(client, "RACE_WINDOW", 0.05)

    async def handler(stream: anyio.abc.ByteStream, tcp: anyio.abc.SocketStream) -> None:
        await answer_one(stream, srv)
        await read_request_head(stream, srv)
        await anyio.sleep(0.3)  # the backend at work (scripted), then its 408
        await stream.send(TIMED_OUT)

    with anyio.fail_after(10):
        async with fake_server(handler, tls=pki.server_context()) as srv:
            first, second = await _direct_all(srv.url, pki.auth, [HELLO, HELLO])
    assert (first.status_code, second.status_code) == (200, 408)
    assert len(srv.requests) == 2 and srv.accepted == 1


async def test_a_408_that_keeps_the_connection_is_the_clients(pki: SimpleNamespace) -> None:
    # at once on a reused connection, but the backend keeps the connection:
    # its answer to the request, not the keep-alive race; relayed, not sent again
    kept = TIMED_OUT.replace(b"connection: close", b"connection: keep-alive")

    async def handler(stream: anyio.abc.ByteStream, tcp: anyio.abc.SocketStream) -> None:
        await answer_one(stream, srv)
        await read_request_head(stream, srv)
        await stream.send(kept)
        await read_all(stream)

    with anyio.fail_after(10):
        async with fake_server(handler, tls=pki.server_context()) as srv:
            first, second = await _direct_all(srv.url, pki.auth, [HELLO, HELLO])
    assert (first.status_code, second.status_code) == (200, 408)
    assert len(srv.requests) == 2 and srv.accepted == 1


async def test_a_408_on_a_fresh_connection_is_the_clients(pki: SimpleNamespace) -> None:
    # not the keep-alive race: the backend's answer, relayed, not sent again
    with anyio.fail_after(10):
        async with _canned(pki, TIMED_OUT) as srv:
            r = await _direct(srv.url, pki.auth, HELLO)
    assert r.status_code == 408
    assert len(srv.requests) == 1


async def test_pooled_connection_closed_late_is_not_retried(
    pki: SimpleNamespace, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Closed without a byte of answer, but well after the request went out: the
    # backend had it and worked on it (a crash, a balancer's cut), which is not
    # the keep-alive race; a second run would be a second LLM call.
    monkeypatch.setattr(client, "RACE_WINDOW", 0.05)

    async def handler(stream: anyio.abc.ByteStream, tcp: anyio.abc.SocketStream) -> None:
        await answer_one(stream, srv)
        await read_request_head(stream, srv)
        await anyio.sleep(0.3)  # the backend at work (scripted), then gone

    with anyio.fail_after(10):
        async with fake_server(handler, tls=pki.server_context()) as srv:
            first, second = await _direct_all(srv.url, pki.auth, [HELLO, HELLO])
    assert first.status_code == 200
    assert second.status_code == 502
    assert "closed the connection before answering" in second.json()["error"]["message"]
    assert len(srv.requests) == 2 and srv.accepted == 1  # not sent again


async def test_early_answer_to_a_large_body_is_read_not_retried(pki: SimpleNamespace) -> None:
    # The backend refuses a large body from its head (413) and closes before
    # reading it: the proxy's writing fails, but the answer is there, and it
    # is the client's (a 413 is a context too long); nothing is sent again.
    async def handler(stream: anyio.abc.ByteStream, tcp: anyio.abc.SocketStream) -> None:
        await answer_one(stream, srv)
        srv.requests.append(await read_until(stream, b"\r\n\r\n"))
        body = b'{"detail": "Request Entity Too Large"}'
        await stream.send(
            http_answer("413 Request Entity Too Large", [JSON, ("connection", "close")], body)
        )  # then closed with the body unread: a reset for the proxy's writes

    big = {"model": "m", "messages": [{"role": "user", "content": "x" * (12 << 20)}]}
    with anyio.fail_after(20):
        async with fake_server(handler, tls=pki.server_context()) as srv:
            first, second = await _direct_all(srv.url, pki.auth, [HELLO, big], flavor="openai")
    assert first.status_code == 200
    assert second.status_code == 400, second.text
    assert second.json()["error"]["code"] == "context_length_exceeded"
    assert len(srv.requests) == 2 and srv.accepted == 1


async def test_early_answer_from_a_backend_that_reads_no_more_is_relayed(
    pki: SimpleNamespace,
) -> None:
    # As above, but the backend neither reads the body nor closes: the proxy's
    # send waited for it until the head deadline, and the client got a 504
    # instead of the answer that was there all along.
    answered = anyio.Event()

    async def handler(stream: anyio.abc.ByteStream, tcp: anyio.abc.SocketStream) -> None:
        srv.requests.append(await read_until(stream, b"\r\n\r\n"))
        body = b'{"detail": "Request Entity Too Large"}'
        await stream.send(http_answer("413 Request Entity Too Large", [JSON], body))
        await answered.wait()  # reads nothing until the client has its answer
        while await stream.receive():  # then to the end (EndOfStream): the proxy
            pass  # closes the connection, which it cannot use again

    big = {"model": "m", "messages": [{"role": "user", "content": "x" * (12 << 20)}]}
    with anyio.fail_after(20):  # under the head deadline (30 s)
        async with fake_server(handler, tls=pki.server_context()) as srv:
            cfg = make_config(srv.url, pki.auth, backend={"proxy": "", "flavor": "openai"})
            async with running_proxy(cfg) as proxy:
                r = await post(proxy.url, big)
                answered.set()
                await poll(lambda: srv.accepted == 1 and not srv.open)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["code"] == "context_length_exceeded"


@pytest.mark.parametrize("size", [512 * 1024, 32 * 1024 * 1024], ids=["512K", "32M"])
async def test_given_up_request_body_is_not_flushed_to_the_backend(size: int) -> None:
    # Cancelled while its body is still being written, or once it was all
    # handed to the kernel (the backend reads nothing meanwhile): the
    # connection is reset, so what the proxy's buffer and the kernel's still
    # hold of the body is dropped, and the backend learns at once that the
    # request was given up. A plain close went on sending the kernel's queue
    # (megabytes), then a FIN: the backend got a complete request, and a
    # clean end, seconds after its client left. 32 MB, with a small receive
    # buffer: most of it never leaves the proxy. (On loopback the backend's
    # own queue takes up to about 4 MB: a smaller body is all there already.)
    from goose_proxy.config import BackendConfig
    from goose_proxy.upstream.client import UpstreamClient

    loop = asyncio.get_running_loop()
    body = b"x" * size
    with anyio.fail_after(10), socket.socket() as listener:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)  # inherited
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        listener.setblocking(False)
        port = listener.getsockname()[1]
        client = UpstreamClient(BackendConfig(endpoint=f"http://127.0.0.1:{port}", timeout=30))
        gave_up, accepted = anyio.Event(), anyio.Event()
        received, reset = 0, False

        async def backend() -> None:
            # reads as fast as it can from the moment the request was given up:
            # a close that flushed would hand it the rest of the body now
            nonlocal received, reset
            conn, _ = await loop.sock_accept(listener)
            with conn:
                accepted.set()
                await gave_up.wait()
                conn.setblocking(False)
                try:
                    while data := await loop.sock_recv(conn, 1 << 20):
                        received += len(data)
                except ConnectionResetError:
                    reset = True

        async with anyio.create_task_group() as outer:
            outer.start_soon(backend)
            with anyio.CancelScope() as scope:
                async with anyio.create_task_group() as tg:

                    async def give_up() -> None:
                        await accepted.wait()
                        await anyio.wait_all_tasks_blocked()  # the send stuck, or all sent
                        scope.cancel()
                        gave_up.set()

                    tg.start_soon(give_up)
                    async with client.post("/responses", body, []):
                        pass
        await client.aclose()
    assert scope.cancelled_caught
    assert reset and received > 0
    if size > 8 * 1024 * 1024:
        assert received < len(body)


@pytest.mark.parametrize("pool_size", [0, 1], ids=["closed-after", "expired-idle"])
async def test_a_connection_whose_exchange_is_over_ends_without_a_reset(pool_size: int) -> None:
    # only an exchange given up is reset: an answer read to its end (chunked,
    # which h11 leaves to the proxy's own decoder) on a connection not kept,
    # and an idle pooled one closed at shutdown, end with a FIN
    from goose_proxy.config import BackendConfig
    from goose_proxy.upstream.client import UpstreamClient

    loop = asyncio.get_running_loop()
    answer = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n"
    with anyio.fail_after(10), socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        listener.setblocking(False)
        port = listener.getsockname()[1]
        cfg = BackendConfig(endpoint=f"http://127.0.0.1:{port}", pool_size=pool_size)
        client = UpstreamClient(cfg)
        ended: list[str] = []

        async def backend() -> None:
            conn, _ = await loop.sock_accept(listener)
            with conn:
                conn.setblocking(False)
                head = b""
                while b"\r\n\r\n" not in head:
                    head += await loop.sock_recv(conn, 65536)
                await loop.sock_sendall(conn, answer)
                try:
                    while await loop.sock_recv(conn, 65536):
                        pass
                    ended.append("FIN")
                except ConnectionResetError:
                    ended.append("reset")

        async with anyio.create_task_group() as tg:
            tg.start_soon(backend)
            async with client.post("/responses", b"{}", []) as resp:
                assert await resp.read(1024) == b"ok"
            await client.aclose()
    assert ended == ["FIN"]


# a backend's words quoting a lone surrogate (legal in JSON text, not in UTF-8)
_SURROGATE_400 = (
    b'{"error": {"message": "Invalid value: \'\\ud800\'", "type": "invalid_request_error",'
    b' "code": "invalid_value"}}'
)
_SURROGATE_FAILED = sse_event(
    {
        "type": "response.failed",
        "response": {"status": "failed", "error": {"code": "server_error", "message": "\ud800"}},
    }
)


@pytest.mark.parametrize("body", [HELLO, HELLO_STREAM], ids=["json", "stream"])
@pytest.mark.parametrize("how", ["status", "event"])
async def test_backend_error_quoting_a_lone_surrogate_reaches_the_client(
    pki: SimpleNamespace, body: dict[str, Any], how: str
) -> None:
    if how == "status":
        answer = http_answer("400 Bad Request", [JSON], _SURROGATE_400)
    else:
        answer = sse_answer([_SURROGATE_FAILED])
    with anyio.fail_after(10):
        async with _canned(pki, answer) as srv:
            r = await _direct(srv.url, pki.auth, body)
    assert r.status_code == (400 if how == "status" else 502)
    # U+FFFD: Goose's serde_json refuses the escaped half (a parse error instead)
    assert b"\\ud800" not in r.content
    assert "\ufffd" in r.json()["error"]["message"]


@pytest.mark.parametrize("flavor", ["lightspeed", "openai"])
@pytest.mark.parametrize("body", [HELLO, HELLO_STREAM], ids=["json", "stream"])
@pytest.mark.parametrize(
    ("answer", "said"),
    [
        (b"{}", 'it has no "output" list (keys: none)'),
        (b'{"detail": "Not authenticated"}', "(keys: 'detail')"),
        (b'{"id": "r", "status": "queued"}', "not finished (status 'queued')"),
    ],
)
async def test_a_2xx_answer_that_is_no_response_is_an_error(
    pki: SimpleNamespace, body: dict[str, Any], flavor: str, answer: bytes, said: str
) -> None:
    # not an empty answer with finish_reason "stop", which a client takes as done
    with anyio.fail_after(10):
        async with _canned(pki, http_answer("200 OK", [JSON], answer)) as srv:
            r = await _direct(srv.url, pki.auth, body, flavor=flavor)
    assert r.status_code == 502
    assert r.headers["x-should-retry"] == "false"  # the same request gets the same answer
    err = r.json()["error"]
    assert err["code"] == "upstream_protocol_error"
    assert said in err["message"]


@ON_EVERY_PATH
async def test_a_redirect_is_an_error_not_an_answer(
    pki: SimpleNamespace, path: str, body: dict[str, Any]
) -> None:
    # a login gateway in front of the backend, or a wrong endpoint; its body may
    # even parse as a Response
    answer = json.dumps({"id": "r", "status": "completed", "output": []}).encode()
    # its credentials and token are not repeated to the client; a coding
    # does not hide that it is a redirect
    location = ("location", "https://alice:s3cret@sso.example/login?token=abc#x")
    redirect = http_answer("302 Found", [location, ("content-encoding", "gzip"), JSON], answer)
    with anyio.fail_after(10):
        async with _canned(pki, redirect) as srv:
            r = await _direct(srv.url, pki.auth, body, path=path)
    assert r.status_code == 502
    assert r.headers["x-should-retry"] == "false"
    err = r.json()["error"]
    assert err["message"].startswith(
        "backend answered HTTP 302 (a redirect to 'https://***@sso.example/login'); "
        "goose-proxy does not follow redirects"
    )
    assert "s3cret" not in r.text and "token" not in r.text


#: chat and passthrough, each streamed and not
_EVERY_ANSWER = pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/chat/completions", HELLO),
        ("/v1/chat/completions", HELLO_STREAM),
        ("/v1/responses", {"model": "m", "input": "hi"}),
        ("/v1/responses", {"model": "m", "input": "hi", "stream": True}),
    ],
    ids=["json", "stream", "passthrough", "passthrough-stream"],
)


def _check_allofit(r: httpx.Response, path: str, body: dict[str, Any], deltas: list[str]) -> None:
    """``r`` is a 200 that says "allofit": a JSON answer for a request in
    ``body`` that does not stream; else an event stream, on the passthrough
    (``path``) with the text ``deltas``."""
    assert r.status_code == 200, r.text
    if not body.get("stream"):
        assert r.headers["content-type"] == "application/json"
        answer = r.json()
        text = (
            answer["choices"][0]["message"]["content"]
            if "choices" in answer
            else "".join(p["text"] for item in answer["output"] for p in item["content"])
        )
        assert text == "allofit"
        return
    assert r.headers["content-type"] == "text/event-stream; charset=utf-8"
    events = [json.loads(line[6:]) for line in r.text.splitlines() if line.startswith("data: {")]
    if path == "/v1/responses":
        assert [e["delta"] for e in events if "delta" in e] == deltas
        assert events[-1]["type"] == "response.completed"
    else:
        assert "".join(e["choices"][0]["delta"].get("content") or "" for e in events) == "allofit"
        assert events[-1]["choices"][0]["finish_reason"] == "stop"


@pytest.mark.parametrize("ctype", [None, "text/html", "text/plain", "application/json"])
@_EVERY_ANSWER
async def test_an_event_stream_labelled_otherwise_is_read_as_one(
    pki: SimpleNamespace, ctype: Any, path: str, body: dict[str, Any]
) -> None:
    # a gateway that drops or rewrites the Content-Type: the stream's first
    # field says what it is (a JSON body begins with none), so the answer is not
    # lost to a 502 "not JSON" (nor relayed with the wrong type); a BOM and a
    # blank line before it change nothing
    head = "HTTP/1.1 200 OK\r\n" + (f"content-type: {ctype}\r\n" if ctype else "")
    first, *rest = text_events(["all", "of", "it"])
    frames = [b"\xef\xbb\xbf\n", first[:1], first[1:4], first[4:], *rest]
    answer = head.encode() + b"transfer-encoding: chunked\r\n\r\n"
    answer += b"".join(chunk(f) for f in frames) + b"0\r\n\r\n"
    with anyio.fail_after(10):
        async with _canned(pki, answer) as srv:
            r = await _direct(srv.url, pki.auth, body, path=path)
    _check_allofit(r, path, body, ["all", "of", "it"])  # relayed as it came


@_EVERY_ANSWER
async def test_a_json_answer_labelled_an_event_stream_is_read_as_json(
    pki: SimpleNamespace, path: str, body: dict[str, Any]
) -> None:
    # the other way round: a gateway (or a backend that always labels its
    # answers a stream) sends a whole Response as text/event-stream; read as
    # a stream it had no events, a 502 "ended early" that the SDK retried
    part = {"type": "output_text", "text": "allofit", "annotations": []}
    item = {"type": "message", "id": "m1", "role": "assistant", "status": "completed"}
    obj = {"id": "r", "object": "response", "created_at": 1, "model": "m",
           "status": "completed", "output": [{**item, "content": [part]}]}  # fmt: skip
    raw = json.dumps(obj).encode()
    head = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream; charset=utf-8\r\n"
    frames = [b"\r\n", b" \t", raw[:1], raw[1:]]  # blank bytes first, cut across reads
    answer = head + b"transfer-encoding: chunked\r\n\r\n"
    answer += b"".join(chunk(f) for f in frames) + b"0\r\n\r\n"
    with anyio.fail_after(10):
        async with _canned(pki, answer) as srv:
            r = await _direct(srv.url, pki.auth, body, path=path)
    # as the events a streaming backend would have sent, for a client that streams
    _check_allofit(r, path, body, ["allofit"])


@pytest.mark.parametrize("ctype", ["text/event-stream", "application/json"])
@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/chat/completions", HELLO_STREAM),
        ("/v1/responses", {"model": "m", "input": "hi", "stream": True}),
    ],
    ids=["stream", "passthrough-stream"],
)
async def test_a_bom_right_before_the_first_field_is_no_part_of_it(
    pki: SimpleNamespace, ctype: str, path: str, body: dict[str, Any]
) -> None:
    # the SSE standard skips one BOM at the stream's start: read as part of
    # the first field's name ("\ufeffdata"), the first event had no data and
    # was lost (the passthrough's response.created, which the SDK's stream
    # helper requires first; the chat stream's id, taken from it)
    first, *rest = (f[f.index(b"data: ") :] for f in text_events(["all", "of", "it"], "resp_9"))
    frames = [b"\xef", b"\xbb\xbf" + first[:3], first[3:], *rest]  # the BOM cut across reads
    answer = f"HTTP/1.1 200 OK\r\ncontent-type: {ctype}\r\n".encode()
    answer += b"transfer-encoding: chunked\r\n\r\n"
    answer += b"".join(chunk(f) for f in frames) + b"0\r\n\r\n"
    with anyio.fail_after(10):
        async with _canned(pki, answer) as srv:
            r = await _direct(srv.url, pki.auth, body, path=path)
    assert r.status_code == 200, r.text
    assert "\ufeff" not in r.text
    events = [json.loads(line[6:]) for line in r.text.splitlines() if line.startswith("data: {")]
    if path == "/v1/responses":
        assert events[0]["type"] == "response.created"
        assert events[0]["response"]["id"] == "resp_9"
        assert [e["delta"] for e in events if "delta" in e] == ["all", "of", "it"]
    else:
        assert {e["id"] for e in events} == {"resp_9"}
        assert "".join(e["choices"][0]["delta"].get("content") or "" for e in events) == "allofit"


@pytest.mark.parametrize(
    ("pieces", "sse"),
    [
        ([b"\xef", b"\xbb\xbf", b"\r\n", b"da", b"ta", b": {}\n\n"], True),
        ([b"ev", b"ent: x\n"], True),
        ([b": keep-alive\n\n"], True),
        ([b"retr", b"y", b": 5\n"], True),
        ([b"\n", b'{"id"', b': "r"}'], False),
        ([b'{"da', b'ta": 1}'], False),
        ([b"dat"], False),  # the whole body: too short to be an event
        ([b"\n" * 40_000] * 3, False),  # blank lines alone: read ahead no further than 64 KiB
        ([], False),
    ],
)
@pytest.mark.parametrize("label", ["", "text/event-stream"])
async def test_the_first_bytes_that_tell_an_event_stream(
    pieces: list[bytes], sse: bool, label: str
) -> None:
    # what arrives in pieces is read until it tells, and handed on whole (a
    # stream without its BOM); labelled a stream, only a JSON object is none
    if label and not sse:
        sse = not b"".join(pieces).lstrip(b"\r\n").startswith(b"{")
    resp = object.__new__(client.UpstreamResponse)
    resp.content_type, resp.headers, resp._first = label, [], b""
    left = list(pieces)

    async def receive() -> bytes:
        return left.pop(0) if left else b""

    resp.receive = receive  # type: ignore[method-assign]
    assert await resp.is_event_stream() is sse
    whole = b"".join(pieces)
    assert resp._first + b"".join(left) == (whole[3:] if sse and pieces[:1] == [b"\xef"] else whole)
    assert len(resp._first) <= 80_000
    if sse:
        assert resp.content_type == "text/event-stream"
    else:
        assert resp.content_type == ("application/json" if label else "")


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/responses"])
async def test_a_304_is_not_called_a_redirect(pki: SimpleNamespace, path: str) -> None:
    body = HELLO if path.endswith("completions") else {"model": "m", "input": "hi"}
    with anyio.fail_after(10):
        async with _canned(pki, b"HTTP/1.1 304 Not Modified\r\n\r\n") as srv:
            r = await _direct(srv.url, pki.auth, body, path=path)
    assert r.status_code == 502 and r.headers["x-should-retry"] == "false"
    message = r.json()["error"]["message"]
    assert message.startswith("backend answered HTTP 304 (Not Modified) to a request that")
    assert "redirect" not in message


def _json_answer(words: list[str]) -> bytes:
    obj = {"id": "r", "object": "response", "status": "completed", "output": [
        {"type": "message", "role": "assistant",
         "content": [{"type": "output_text", "text": " ".join(words)}]}]}  # fmt: skip
    return http_answer("200 OK", [JSON], json.dumps(obj).encode())


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
async def test_bytes_past_an_answer_are_not_the_next_answer(
    pki: SimpleNamespace, framing: str
) -> None:
    # A broken backend (or something between) sends more than the answer's
    # framing says: a pooled connection would hand those bytes to the next
    # request as its answer, a wrong reply to another conversation.
    def answer(words: list[str]) -> bytes:
        return (
            _json_answer(words) if framing == "content-length" else sse_answer(text_events(words))
        )

    async def handler(stream: anyio.abc.ByteStream, tcp: anyio.abc.SocketStream) -> None:
        await read_request_head(stream, srv)
        if srv.accepted == 1:
            await stream.send(answer(["first"]) + answer(["STALE"]))
        else:
            await stream.send(answer(["second"]))
        await read_all(stream)

    with anyio.fail_after(10):
        async with fake_server(handler, tls=pki.server_context()) as srv:
            first, second = await _direct_all(srv.url, pki.auth, [HELLO, HELLO])
    assert first.json()["choices"][0]["message"]["content"] == "first"
    assert second.json()["choices"][0]["message"]["content"] == "second"
    assert srv.accepted == 2


async def test_a_mislabelled_stream_is_warned_about_once_per_label(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # every request to such a backend would otherwise log the same warning
    label = "text/x-once-" + str(id(caplog))
    for _ in range(3):
        resp = object.__new__(client.UpstreamResponse)
        resp.content_type, resp.headers, resp._first = "", [(b"content-type", label.encode())], b""

        async def receive(pieces: list[bytes] = [b"data: {}\n\n"]) -> bytes:  # noqa: B006
            return pieces.pop() if pieces else b""

        resp.receive = receive  # type: ignore[method-assign]
        with caplog.at_level("WARNING", logger="goose_proxy.upstream"):
            assert await resp.is_event_stream()
    warned = [r for r in caplog.records if label in r.getMessage()]
    assert len(warned) == 1


def _queued(sock: socket.socket) -> int:
    """Bytes in ``sock``'s receive queue, not read yet."""
    return int(struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.FIONREAD, b"\0" * 4))[0])


@pytest.mark.parametrize(
    "interim",
    [
        b"HTTP/1.1 100 Continue\r\n\r\n",
        b"HTTP/1.1 103 Early Hints\r\nlink: </s.css>; rel=preload\r\n\r\n",
        b"HTTP/1.1 102 Processing\r\n\r\nHTTP/1.1 100 Continue\r\n\r\n",
    ],
    ids=["100", "103", "102-100"],
)
async def test_an_interim_answer_during_a_large_upload_is_no_early_answer(
    pki: SimpleNamespace, interim: bytes
) -> None:
    # a backend may send an interim answer (1xx) as soon as it has the head,
    # then read the body: the rest of a body too large for the socket buffers
    # must still go out (it stayed unsent, and the request waited for a 504)
    got: list[int] = []

    async def handler(stream: anyio.abc.ByteStream, tcp: anyio.abc.SocketStream) -> None:
        head, _, body = (await read_until(stream, b"\r\n\r\n")).partition(b"\r\n\r\n")
        want = int(re.search(rb"(?i)\r\ncontent-length: *(\d+)", head).group(1))  # type: ignore[union-attr]
        await stream.send(interim)
        # the proxy stopped sending (the buffers between are full) before we read on
        await steady(lambda: _queued(tcp.extra(anyio.abc.SocketAttribute.raw_socket)), 5)
        while len(body) < want:  # bounded: want is the request's own length
            body += await stream.receive()
        got.append(len(body) - want)
        await stream.send(sse_answer(text_events(["taken"])))
        await read_all(stream)

    big = {**HELLO, "messages": [{"role": "user", "content": "x" * 12_000_000}]}
    with anyio.fail_after(20):
        async with fake_server(handler, tls=pki.server_context()) as srv:
            r = await _direct(srv.url, pki.auth, big, flavor="openai", timeout=10)
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["message"]["content"] == "taken"
    assert got == [0]  # the whole body, nothing past it


async def test_a_client_that_leaves_with_its_answer_costs_no_backend_connection(
    pki: SimpleNamespace,
) -> None:
    # a one-shot client (curl, a script) reads its whole answer and closes at
    # once, while the backend's body has not ended yet: the connection is
    # still pooled when the end comes (the wait for it was cancelled with the
    # request, and the connection closed)
    gone = anyio.Event()

    async def handler(stream: anyio.abc.ByteStream, tcp: anyio.abc.SocketStream) -> None:
        await read_request_head(stream, srv)
        await stream.send(SSE_HEAD + b"".join(chunk(f) for f in text_events(["hi"])))
        await gone.wait()
        await stream.send(b"0\r\n\r\n")
        await read_all(stream)

    with anyio.fail_after(10):
        async with fake_server(handler, tls=pki.server_context()) as srv:
            cfg = make_config(srv.url, pki.auth, backend={"proxy": ""})
            async with running_proxy(cfg) as proxy:
                async with await anyio.connect_tcp("127.0.0.1", proxy.port) as s:
                    await s.send(request_bytes(json_body=HELLO_STREAM))
                    answer = await read_until(s, b"\r\n0\r\n\r\n")  # the whole answer
                gone.set()  # and the client is gone
                await poll(lambda: pool_size(proxy) == 1)
    assert chat_stream_outcome(parse_one(answer).body) == ("hi", None)


async def test_what_is_read_after_the_terminal_event_is_bounded(pki: SimpleNamespace) -> None:
    # 72 KiB of comments after the terminal event, then the end: more than
    # the 64 KiB read to pool a connection (DRAIN_LIMIT, one bound for the
    # request's wait and a cancelled request's wait in the background); the
    # connection is closed
    async def handler(stream: anyio.abc.ByteStream, tcp: anyio.abc.SocketStream) -> None:
        await read_request_head(stream, srv)
        await stream.send(SSE_HEAD + b"".join(chunk(f) for f in text_events(["hi"])))
        try:
            for _ in range(9):
                await stream.send(chunk(b": " + b"x" * 8190 + b"\n\n"))
                await anyio.sleep(0.005)  # the backend's pace (within the 0.2 s the proxy waits)
            await stream.send(b"0\r\n\r\n")
            await read_all(stream)  # until the proxy closes the connection
        except (anyio.BrokenResourceError, OSError):
            pass  # reset by the proxy while still sending: nobody reads
        closed.set()

    closed = anyio.Event()
    with anyio.fail_after(10):
        async with fake_server(handler, tls=pki.server_context()) as srv:
            cfg = make_config(srv.url, pki.auth, backend={"proxy": ""})
            async with running_proxy(cfg) as proxy:
                r = await post(proxy.url, HELLO_STREAM)
                await closed.wait()
                assert pool_size(proxy) == 0
    assert chat_stream_outcome(r.content) == ("hi", None)
