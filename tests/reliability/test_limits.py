"""Limits and bad input on the client side: every malformed or oversized
request gets a 4xx in the OpenAI error format, the limits hold, and the
proxy stays healthy (it answers ``/health`` afterwards).

Requests are written as raw bytes on a real loopback socket, so that what is
sent is exactly what the test says, and replies are parsed strictly.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import anyio
import anyio.abc
import pytest

import devbackend
from goose_proxy.http import server
from goose_proxy.upstream import client as upstream_client
from tests.connectproxy import connect_proxy
from tests.reliability.support import (
    HELLO,
    HELLO_STREAM,
    PROJECT_ROOT,
    ask,
    chat_stream_outcome,
    exchange,
    fake_server,
    parse_one,
    parse_responses,
    poll,
    pool_size,
    post,
    proxied,
    proxy_config,
    proxy_process,
    read_all,
    read_request_head,
    read_until,
    request_bytes,
    sse_answer,
    text_events,
    wait_settled,
)
from tests.support import make_config, running_proxy

pytestmark = pytest.mark.anyio

CHAT = "/v1/chat/completions"


async def healthy(port: int) -> None:
    r = await ask(port, request_bytes("GET", "/health", headers={"Connection": "close"}))
    assert r.status == 200 and r.json() == {"status": "ok"}


def close(req: bytes) -> bytes:
    """Add ``Connection: close`` to a request head."""
    head, _, body = req.partition(b"\r\n\r\n")
    return head + b"\r\nConnection: close\r\n\r\n" + body


# --- size limits -----------------------------------------------------------------------


async def test_body_over_max_body_size_declared(pki: SimpleNamespace) -> None:
    with anyio.fail_after(10):
        async with proxied(pki, server={"max_body_size": 4096}) as h:
            port = h.proxy.port
            body = b'{"x": "' + b"a" * 100_000 + b'"}'
            # the whole oversized body is on its way: the 413 must still arrive intact
            r = await ask(port, request_bytes("POST", CHAT, body))
            await healthy(port)
    assert r.status == 413
    assert r.error["code"] == "request_too_large"
    assert "4096" in r.error["message"]
    assert r.header("connection") == "close"
    assert h.backend.stats.requests_total == 0


@pytest.mark.parametrize("side", ["request", "answer-json", "answer-stream"])
async def test_large_exchange_intact_then_memory_given_back(
    pki: SimpleNamespace, monkeypatch: pytest.MonkeyPatch, side: str
) -> None:
    # 1.5 MiB through the proxy, then the C heap trimmed, once. "request": the
    # text in an earlier turn (the backend echoes only the last one, so the
    # answer is small); "answer-…": the text echoed back, with the threshold
    # just above the request's size, so that only the answer can set it off.
    text = "".join(f"word{i} " for i in range(200_000))[: 3 << 19]
    messages = [{"role": "user", "content": text}]
    last = text
    if side == "request":
        last = "hello"
        messages += [{"role": "assistant", "content": "ok"}, {"role": "user", "content": last}]
    big = {"model": "m", "messages": messages, "stream": side == "answer-stream"}
    if side != "request":
        monkeypatch.setattr(server, "LARGE_EXCHANGE", len(json.dumps(big)) + 64)
    trims: list[int] = []
    monkeypatch.setattr(server, "give_back_memory", lambda: trims.append(1))
    monkeypatch.setattr(server, "TRIM_DELAY", 0.0)
    with anyio.fail_after(20):
        async with proxied(pki, mode="openai", backend={"flavor": "openai"}) as h:
            r = await post(h.url, big)
            await poll(lambda: bool(trims))
            after_big = len(trims)
            small = await post(h.url, HELLO)
    assert r.status_code == 200 and small.status_code == 200
    if side == "answer-stream":
        answer, err = chat_stream_outcome(r.content)
        assert err is None
    else:
        answer = r.json()["choices"][0]["message"]["content"]
    assert answer.endswith(last)  # the echo: a prefix, then every byte of the last turn
    assert (after_big, len(trims)) == (1, 1)


def counted_trims(monkeypatch: pytest.MonkeyPatch, **settings: float) -> list[int]:
    """The server's ``settings`` (module constants) set; a list that gets a 1 for
    each heap trim, which is not made."""
    for name, value in settings.items():
        monkeypatch.setattr(server, name, value)
    trims: list[int] = []
    monkeypatch.setattr(server, "give_back_memory", lambda: trims.append(1))
    return trims


async def test_the_heap_is_trimmed_once_large_exchanges_stop_coming(
    pki: SimpleNamespace, monkeypatch: pytest.MonkeyPatch
) -> None:
    # a trim right after each large exchange made the next one (Goose sends its
    # whole history every turn) fault its pages in again: 13-22 % more CPU.
    # Large exchanges one after another put the trim off; stopping the server
    # does it at once.
    trims = counted_trims(monkeypatch, LARGE_EXCHANGE=4096, TRIM_DELAY=3600.0)
    big = {"model": "m", "messages": [{"role": "user", "content": "x" * 8192}]}
    with anyio.fail_after(20):
        async with proxied(pki, mode="openai", backend={"flavor": "openai"}) as h:
            for _ in range(3):
                assert (await post(h.url, big)).status_code == 200
            await poll(lambda: h.proxy.server.active_requests == 0)
            pending = h.proxy.server._trim
            assert trims == [] and pending is not None
            assert pending.when() - asyncio.get_running_loop().time() > 3000
    assert trims == [1]


async def test_the_heap_is_trimmed_once_a_burst_of_requests_has_ended(
    pki: SimpleNamespace, monkeypatch: pytest.MonkeyPatch
) -> None:
    # 500 small streams at once left some 50 MB of freed memory that glibc kept
    # for good: no one exchange was large. The end of a burst (an eighth of it or
    # less left in flight after TRIM_AFTER_REQUESTS at once; a long stream may go
    # on) sets off a trim as well.
    trims = counted_trims(monkeypatch, TRIM_AFTER_REQUESTS=3, TRIM_DELAY=0.0)
    release, release_long = anyio.Event(), anyio.Event()
    answer = sse_answer(text_events(["hi"]))
    first = True

    async def held(stream: anyio.abc.ByteStream, tcp: anyio.abc.SocketStream) -> None:
        nonlocal first
        gate, first = (release_long if first else release), False
        while True:
            await read_request_head(stream, srv)
            await gate.wait()
            await stream.send(answer)

    with anyio.fail_after(20):
        async with fake_server(held, pki.server_context()) as srv:
            cfg = make_config(srv.url, pki.auth, backend={"proxy": "", "flavor": "openai"})
            async with running_proxy(cfg) as proxy, anyio.create_task_group() as tg:
                tg.start_soon(post, proxy.url, HELLO)  # a long one: it stays open
                await poll(lambda: proxy.server.active_requests == 1)
                for _ in range(8):  # the long one is an eighth of the burst's peak
                    tg.start_soon(post, proxy.url, HELLO)
                await poll(lambda: proxy.server.active_requests == 9)
                assert trims == []
                release.set()
                await poll(lambda: bool(trims))  # (it held off until none was left)
                assert proxy.server.active_requests == 1
                release_long.set()
    assert trims == [1]


def test_give_back_memory_finds_malloc_trim_on_glibc() -> None:
    server.give_back_memory()
    if platform.libc_ver()[0] == "glibc":
        assert callable(server._malloc_trim)
    else:
        assert server._malloc_trim is False


async def test_body_over_max_body_size_chunked(pki: SimpleNamespace) -> None:
    with anyio.fail_after(10):
        async with proxied(pki, server={"max_body_size": 4096}) as h:
            head = (
                f"POST {CHAT} HTTP/1.1\r\nHost: localhost\r\n"
                "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
            ).encode()
            piece = b"a" * 1000
            body = b"".join(b"%x\r\n%s\r\n" % (len(piece), piece) for _ in range(10)) + (
                b"0\r\n\r\n"
            )
            r = await ask(h.proxy.port, head + body)
            await healthy(h.proxy.port)
    assert r.status == 413
    assert r.error["code"] == "request_too_large"


CLOSE = {"Connection": "close"}


def _padded(size: int) -> bytes:
    """The HELLO request as JSON of exactly ``size`` bytes (spaces after it)."""
    body = json.dumps(HELLO).encode()
    return body + b" " * (size - len(body))


async def test_a_body_in_too_many_chunks_is_refused(pki: SimpleNamespace) -> None:
    """Every chunk is an h11 event: 16 MiB in one-byte chunks cost 2 GB of memory
    and two minutes of CPU. At most max(1024, max_body_size / 256) chunks."""
    head = (
        f"POST {CHAT} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n"
        "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    ).encode()

    def one_byte_chunks(body: bytes) -> bytes:
        return b"".join(b"1\r\n%c\r\n" % b for b in body) + b"0\r\n\r\n"

    with anyio.fail_after(15):
        async with proxied(pki, server={"max_body_size": 4096}) as h:
            served = await ask(h.proxy.port, head + one_byte_chunks(_padded(1024)))
            refused = await ask(h.proxy.port, head + one_byte_chunks(_padded(1025)))
            await healthy(h.proxy.port)
    assert served.status == 200, served.body
    assert refused.status == 400
    assert refused.error["message"] == (
        "request body in more than 1024 chunks; send it in larger chunks, or with a Content-Length"
    )


async def test_request_bodies_held_at_once_are_bounded(pki: SimpleNamespace) -> None:
    """Uploads in progress held up to max_body_size each, on up to max_connections:
    16 GiB by default. Across connections at most 4 times max_body_size, counted as
    it arrives (a declared length reserves nothing: cheap slow uploads cannot
    hold the budget); beyond it 503 and Retry-After, and the bytes come back
    when an upload ends, finished or not."""
    size = 1024
    whole = request_bytes(body=_padded(size), headers=CLOSE)
    with anyio.fail_after(15):
        async with proxied(pki, server={"max_body_size": size}) as h:
            bodies = h.proxy.server.bodies
            uploads = [await anyio.connect_tcp("127.0.0.1", h.proxy.port) for _ in range(8)]
            try:
                for s in uploads[:4]:  # declared 1024 bytes each, 10 sent
                    await s.send(whole[: -size + 10])
                await poll(lambda: bodies.held == 4 * 10)
                beside_slow = await ask(h.proxy.port, whole)
                for s in uploads[4:]:  # 1004 bytes each: 40 bytes of the budget left
                    await s.send(whole[:-20])
                await poll(lambda: bodies.held == 4 * 10 + 4 * (size - 20))
                refused = await ask(h.proxy.port, whole)
                small = await ask(h.proxy.port, request_bytes(body=b"{}", headers=CLOSE))
                bodiless = await ask(h.proxy.port, request_bytes("GET", "/health", headers=CLOSE))
            finally:
                for s in uploads:
                    await s.aclose()
            await poll(lambda: bodies.held == 0)
            served = await ask(h.proxy.port, whole)
    assert beside_slow.status == 200, beside_slow.body
    assert refused.status == 503 and refused.header("retry-after") == "1"
    assert refused.error["code"] == "service_unavailable"
    assert "too many large request bodies" in refused.error["message"]
    assert small.status == 400  # what fits is read (and found to be no chat request)
    assert bodiless.status == 200
    assert served.status == 200, served.body


async def test_a_body_stops_counting_once_sent_to_the_backend(pki: SimpleNamespace) -> None:
    """A long stream held its request's body in the budget until it ended, though
    the body was long gone: four such streams refused every other body."""
    size = 1024
    body = json.loads(_padded(size))
    body["stream"] = True
    head_and_body = request_bytes(body=json.dumps(body).encode().ljust(size))
    with anyio.fail_after(15):
        async with proxied(
            pki, fault="stall_mid_stream", server={"max_body_size": size},
            backend={"stream_idle_timeout": 60},
        ) as h:  # fmt: skip
            async with await anyio.connect_tcp("127.0.0.1", h.proxy.port) as s:
                await s.send(head_and_body)
                await read_until(s, b'"content"')  # the stream has begun, and stalls
                held = h.proxy.server.bodies.held
    assert held == 0


_OBJECTS = b'{"messages":[' + b"{}," * (2 << 20) + b"{}]}"  # 6 MiB, 2 M objects
_NUMBERS = (  # 4 MiB: 2 M integers in one tool's enum, three objects
    b'{"model":"m","messages":[{"role":"user","content":"hi"}],"tools":[{"type":"function",'
    b'"function":{"name":"f","parameters":{"type":"integer","enum":['
    + b"1," * (2 << 20)
    + b"1]}}}]}"
)


@pytest.mark.parametrize(
    ("body", "said"),
    [(_OBJECTS, "messages[0].role"), (_NUMBERS, "the tools and instructions take")],
    ids=["objects", "numbers"],
)
async def test_a_large_body_is_translated_off_the_event_loop(
    pki: SimpleNamespace, body: bytes, said: str
) -> None:
    """A 16 MiB body of tiny JSON objects took the event loop for 8 s, 8 MiB of
    numbers for one: every client and /health waited. Such bodies are parsed and
    translated in a worker thread; /health is answered while that runs."""
    with anyio.fail_after(30):
        async with proxied(pki) as h:
            server = h.proxy.server
            async with await anyio.connect_tcp("127.0.0.1", h.proxy.port) as big:
                await big.send(request_bytes(body=body, headers=CLOSE))
                await poll(lambda: server.active_requests == 1)  # in its handler
                health = await ask(h.proxy.port, request_bytes("GET", "/health", headers=CLOSE))
                still_working = server.active_requests == 1
                answer = parse_one(await read_all(big))
    assert health.status == 200 and still_working
    assert answer.status == 400 and said in answer.error["message"]


async def test_head_over_max_header_size(pki: SimpleNamespace) -> None:
    with anyio.fail_after(10):
        async with proxied(pki, server={"max_header_size": 2048}) as h:
            req = request_bytes("GET", "/health", headers={"X-Big": "b" * 4096})
            r = await ask(h.proxy.port, req)
            long_url = await ask(h.proxy.port, request_bytes("GET", "/health?" + "q" * 4096))
            # the same head arriving in small pieces
            async with await anyio.connect_tcp("127.0.0.1", h.proxy.port) as s:
                for i in range(0, len(req), 512):
                    try:
                        await s.send(req[i : i + 512])
                    except (anyio.BrokenResourceError, OSError):
                        break
                pieces = parse_one(await read_all(s))
            await healthy(h.proxy.port)
    for resp in (r, long_url, pieces):
        assert resp.status == 431
        assert resp.error["code"] == "request_header_fields_too_large"


async def test_too_many_headers(pki: SimpleNamespace) -> None:
    with anyio.fail_after(10):
        async with proxied(pki, server={"max_header_count": 10}) as h:
            headers = {f"X-H{i}": "v" for i in range(20)}
            r = await ask(h.proxy.port, request_bytes("GET", "/health", headers=headers))
            await healthy(h.proxy.port)
    assert r.status == 431
    assert "more than 10 request headers" in r.error["message"]


# --- time limits -----------------------------------------------------------------------


async def test_slowloris_head_is_cut_at_header_timeout(pki: SimpleNamespace) -> None:
    """A client dripping its head byte by byte is closed header_timeout after it connected."""
    with anyio.fail_after(10):
        async with proxied(pki, server={"header_timeout": 0.5}) as h:
            req = request_bytes("GET", "/health")
            async with await anyio.connect_tcp("127.0.0.1", h.proxy.port) as s:
                t0 = anyio.current_time()
                got = b""
                closed = False
                for i in range(len(req) - 2):  # never the final CRLF
                    try:
                        await s.send(req[i : i + 1])
                        with anyio.move_on_after(0.05):  # the client's drip rate
                            got += await s.receive()  # anything the proxy says is kept
                    except (anyio.EndOfStream, anyio.BrokenResourceError, OSError):
                        closed = True
                        break
                    if got:
                        break  # it answered instead of closing: the assertion shows it
                if not closed:
                    got += await read_all(s)
                took = anyio.current_time() - t0
            await healthy(h.proxy.port)
    assert got == b""  # closed without a word
    assert 0.45 <= took < 2.0


async def test_silent_connection_closed_at_header_timeout(pki: SimpleNamespace) -> None:
    with anyio.fail_after(10):
        async with proxied(pki, server={"header_timeout": 0.3}) as h:
            async with await anyio.connect_tcp("127.0.0.1", h.proxy.port) as s:
                t0 = anyio.current_time()
                assert await read_all(s) == b""
                took = anyio.current_time() - t0
    assert 0.25 <= took < 2.0


async def test_idle_keepalive_connection_closed(pki: SimpleNamespace) -> None:
    with anyio.fail_after(10):
        async with proxied(pki, server={"keepalive_timeout": 0.3}) as h:
            async with await anyio.connect_tcp("127.0.0.1", h.proxy.port) as s:
                await s.send(request_bytes("GET", "/health"))
                t0 = anyio.current_time()
                data = await read_all(s)  # the response, then the close
                took = anyio.current_time() - t0
    (r,), rest = parse_responses(data)
    assert r.status == 200 and rest == b""
    assert 0.25 <= took < 2.0


async def test_idle_backend_connections_closed_after_pool_idle_timeout(
    pki: SimpleNamespace,
) -> None:
    """A quiet proxy does not hold backend connections: the pool closes them
    once idle for pool_idle_timeout, without waiting for the next request."""
    with anyio.fail_after(10):
        async with proxied(pki, backend={"pool_idle_timeout": 0.3}) as h:
            ra, rb = await post(h.url, HELLO), await post(h.url, HELLO)
            stats = h.backend.stats
            assert (stats.connections_accepted, stats.connections_open) == (1, 1)  # reused
            t0 = anyio.current_time()
            await h.backend.wait_until(lambda b: b.stats.connections_open == 0)
            took = anyio.current_time() - t0
            assert pool_size(h.proxy) == 0
            rc = await post(h.url, HELLO)  # a new connection, as after any close
    assert (ra.status_code, rb.status_code, rc.status_code) == (200, 200, 200)
    assert 0.2 <= took < 2.0
    assert h.backend.stats.connections_accepted == 2


async def test_a_pooled_connection_idle_through_a_suspend_is_not_reused(
    pki: SimpleNamespace, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Idle ages were measured on the monotonic clock, which stops while the host
    sleeps: a connection pooled before a laptop's night was reused on waking (its
    network path gone: the request waited backend.timeout for a 504). They are
    measured on CLOCK_BOOTTIME, here a clock moved by hand past the suspend."""
    if sys.platform.startswith("linux"):
        assert upstream_client._boot_clock().args == (time.CLOCK_BOOTTIME,)
    boot = [1000.0]
    monkeypatch.setattr(upstream_client, "_idle_clock", lambda: boot[0])
    with anyio.fail_after(10):
        async with proxied(pki) as h:
            first = await post(h.url, HELLO)
            boot[0] += 31  # pool_idle_timeout (30 s) passed asleep: no timer fired
            second = await post(h.url, HELLO)
    assert (first.status_code, second.status_code) == (200, 200)
    assert h.backend.stats.connections_accepted == 2


async def test_slow_body_is_cut(pki: SimpleNamespace) -> None:
    """A body that stops arriving is given up after header_timeout (per read)."""
    with anyio.fail_after(10):
        async with proxied(pki, server={"header_timeout": 0.3}) as h:
            req = request_bytes("POST", CHAT, json.dumps(HELLO).encode())
            async with await anyio.connect_tcp("127.0.0.1", h.proxy.port) as s:
                await s.send(req[:-5])
                t0 = anyio.current_time()
                assert await read_all(s) == b""
                took = anyio.current_time() - t0
    assert 0.25 <= took < 2.0
    assert h.backend.stats.requests_total == 0


async def test_dripped_body_is_cut(pki: SimpleNamespace) -> None:
    """A body dripped a byte every 0.1 s, each well within header_timeout: cut once
    it falls behind BODY_MIN_RATE after its first header_timeout (it held the
    connection for as long as it lasted: 100 s here)."""
    with anyio.fail_after(10):
        async with proxied(pki, server={"header_timeout": 0.5}) as h:
            req = request_bytes("POST", CHAT, b"x" * 1000)
            head, body = req[: req.index(b"\r\n\r\n") + 4], req[req.index(b"\r\n\r\n") + 4 :]
            sent = 0

            async def drip(s: anyio.abc.SocketStream) -> None:
                nonlocal sent
                with contextlib.suppress(anyio.BrokenResourceError, OSError):
                    for byte in body:
                        await s.send(bytes([byte]))
                        sent += 1
                        await anyio.sleep(0.1)  # the client's pace, not synchronisation

            async with await anyio.connect_tcp("127.0.0.1", h.proxy.port) as s:
                await s.send(head)
                t0 = anyio.current_time()
                async with anyio.create_task_group() as tg:
                    tg.start_soon(drip, s)
                    assert await read_all(s) == b""  # closed without a reply
                    took = anyio.current_time() - t0
                    tg.cancel_scope.cancel()
    assert sent < len(body) and 0.4 <= took < 3.0
    assert h.backend.stats.requests_total == 0


# --- connection limits ----------------------------------------------------------------


async def test_connections_over_max_connections_get_503(
    pki: SimpleNamespace, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="goose_proxy")
    with anyio.fail_after(10):
        async with proxied(pki, server={"max_connections": 2}) as h:
            port = h.proxy.port
            first = await anyio.connect_tcp("127.0.0.1", port)
            second = await anyio.connect_tcp("127.0.0.1", port)
            try:
                # both are served (keep-alive), stay open, and begin a next request
                # (not idle: neither gives its place up)
                for s in (first, second):
                    await s.send(request_bytes("GET", "/health"))
                    assert b" 200 " in await s.receive()
                    await s.send(b"GET /health HTTP/1.1\r\n")
                # the third is refused with a complete 503, then closed (and the
                # fourth: one warning says the limit was reached, not one per refusal)
                r = await ask(port, request_bytes("POST", CHAT, json.dumps(HELLO).encode()))
                again = await ask(port, request_bytes("GET", "/health"))
            finally:
                await first.aclose()
                await second.aclose()
            # a slot is free again
            await wait_settled(h.proxy)
            await healthy(port)
    assert r.status == again.status == 503
    assert r.error["code"] == "service_unavailable"
    assert "too many connections" in r.error["message"]
    warned = [rec.getMessage() for rec in caplog.records if rec.levelno == logging.WARNING]
    assert warned == [
        "connection limit reached ([server] max_connections = 2): new connections get 503"
    ]
    assert r.header("retry-after") == "1" and r.header("connection") == "close"
    assert r.header("x-should-retry") is None
    assert len(r.header("x-request-id") or "") == 32  # its request was never read
    assert h.backend.stats.requests_total == 0


async def test_at_max_connections_an_idle_one_gives_its_place_up(pki: SimpleNamespace) -> None:
    # connections kept alive idle between requests (a client's pool) held every
    # place: a new client got 503 until their keep-alive timeout ran out; now
    # one of them is closed, as that timeout would close it, and the new one served
    with anyio.fail_after(10):
        async with proxied(pki, server={"max_connections": 2, "keepalive_timeout": 60}) as h:
            port = h.proxy.port
            idle = [await anyio.connect_tcp("127.0.0.1", port) for _ in range(2)]
            try:
                for s in idle:
                    await s.send(request_bytes("GET", "/health"))
                    assert b" 200 " in await s.receive()
                body = json.dumps(HELLO).encode()
                r = await ask(port, request_bytes("POST", CHAT, body, {"Connection": "close"}))
                # then: one of them was closed (with nothing sent), the other still serves
                after = []
                for s in idle:
                    with contextlib.suppress(anyio.BrokenResourceError, OSError):
                        await s.send(request_bytes("GET", "/health"))
                    after.append(await read_all(s, cap=1))
            finally:
                for s in idle:
                    await s.aclose()
    assert r.status == 200
    # the one idle the longest (the least likely to be used next) was closed
    assert [a[:12] for a in after] == [b"", b"HTTP/1.1 200"]


async def test_max_requests_per_connection(pki: SimpleNamespace) -> None:
    with anyio.fail_after(10):
        async with proxied(pki, server={"max_requests_per_connection": 3}) as h:
            # five pipelined requests: three answers, the third says close, then EOF
            data = b"".join(request_bytes("GET", "/health") for _ in range(5))
            responses, rest = parse_responses(await exchange(h.proxy.port, data))
    assert [r.status for r in responses] == [200, 200, 200]
    assert [r.header("connection") for r in responses] == [None, None, "close"]
    assert rest == b""


# --- malformed input --------------------------------------------------------------------


BAD_REQUESTS: list[tuple[str, bytes, int]] = [
    ("not-http", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03garbage\r\n\r\n", 400),
    ("bad-request-line", b"GET\r\nHost: localhost\r\n\r\n", 400),
    ("bad-version", b"GET /health HTTP/9.9\r\nHost: localhost\r\n\r\n", 505),
    ("space-in-header-name",
     b"GET /health HTTP/1.1\r\nHost: localhost\r\nBad Name: x\r\n\r\n", 400),
    ("no-host-http11", b"GET /health HTTP/1.1\r\n\r\n", 400),
    ("two-hosts", b"GET /health HTTP/1.1\r\nHost: localhost\r\nHost: localhost\r\n\r\n", 400),
    (
        "bad-chunk-size",
        b"POST " + CHAT.encode() + b" HTTP/1.1\r\nHost: localhost\r\n"
        b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"zz\r\n{}\r\n0\r\n\r\n",
        400,
    ),
    (
        "chunk-longer-than-said",
        b"POST " + CHAT.encode() + b" HTTP/1.1\r\nHost: localhost\r\n"
        b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"2\r\n{}}}}}\r\n0\r\n\r\n",
        400,
    ),
    (
        "content-length-and-chunked",
        b"POST " + CHAT.encode() + b" HTTP/1.1\r\nHost: localhost\r\n"
        b"Content-Type: application/json\r\nContent-Length: 2\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n",
        400,
    ),
    (
        "conflicting-content-lengths",
        b"POST " + CHAT.encode() + b" HTTP/1.1\r\nHost: localhost\r\n"
        b"Content-Type: application/json\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{}",
        400,
    ),
    (
        "bad-content-length",
        b"POST " + CHAT.encode() + b" HTTP/1.1\r\nHost: localhost\r\n"
        b"Content-Type: application/json\r\nContent-Length: -1\r\n\r\n{}",
        400,
    ),
    ("unknown-transfer-coding", b"POST /v1/chat/completions HTTP/1.1\r\nHost: localhost\r\n"
     b"Content-Type: application/json\r\nTransfer-Encoding: gzip\r\n\r\n", 501),
]  # fmt: skip


def _cases(table: list[tuple[Any, ...]]) -> list[Any]:
    return [pytest.param(*row[1:], id=row[0]) for row in table]


@pytest.mark.parametrize(("data", "status"), _cases(BAD_REQUESTS))
async def test_malformed_http_gets_4xx(
    pki: SimpleNamespace, data: bytes, status: int, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("INFO", logger="goose_proxy.access")
    with anyio.fail_after(10):
        async with proxied(pki) as h:
            r = await ask(h.proxy.port, data)
            await healthy(h.proxy.port)
    assert r.status == status
    # an access line for it too, also when its head could not be read
    access = [rec.getMessage() for rec in caplog.records if rec.name == "goose_proxy.access"]
    assert any(f" {status} " in line for line in access if "/health" not in line), access
    assert r.error["type"] == "invalid_request_error"
    assert "bytearray" not in r.error["message"]
    assert r.header("connection") == "close"
    assert h.backend.stats.requests_total == 0


async def test_expect_100_continue(pki: SimpleNamespace) -> None:
    body = json.dumps(HELLO).encode()
    with anyio.fail_after(10):
        async with proxied(pki) as h:
            req = request_bytes("POST", CHAT, body, {"Expect": "100-continue"})
            head = req[: -len(body)]
            async with await anyio.connect_tcp("127.0.0.1", h.proxy.port) as s:
                await s.send(close(head))
                interim = await read_until(s, b"\r\n\r\n")
                assert interim.startswith(b"HTTP/1.1 100 Continue\r\n")
                await s.send(body)
                rest = await read_all(s)
            # refused before the body is sent: 413 and no 100
            huge = {
                "Expect": "100-continue",
                "Content-Type": "application/json",
                "Content-Length": str(10**9),
            }
            big = request_bytes("POST", CHAT, None, huge)
            refused = await exchange(h.proxy.port, big)
    r = parse_one(interim.partition(b"\r\n\r\n")[2] + rest)
    assert r.status == 200 and r.json()["choices"][0]["message"]["content"]
    assert refused.startswith(b"HTTP/1.1 413 ")


@pytest.mark.parametrize(
    ("path", "status"), [("/v1/nothing", 404), ("/health", 405)], ids=["404", "405"]
)
async def test_expect_100_continue_to_a_route_not_served(
    pki: SimpleNamespace, path: str, status: int
) -> None:
    # refused at once, without the 100 that asked for a body nothing would
    # read (it came first, and the 404 or 405 only after the body)
    body = json.dumps(HELLO).encode()
    head = request_bytes("POST", path, body, {"Expect": "100-continue"})[: -len(body)]
    with anyio.fail_after(10):
        async with proxied(pki) as h:
            r = parse_one(await exchange(h.proxy.port, head))
    assert r.status == status and r.header("connection") == "close"
    assert h.backend.stats.requests_total == 0


async def test_pipelined_requests_answered_in_order(pki: SimpleNamespace) -> None:
    body = json.dumps(HELLO).encode()
    data = (
        request_bytes("GET", "/health")
        + request_bytes("POST", CHAT, body)
        + request_bytes("GET", "/v1/models")
        + close(request_bytes("POST", CHAT, json.dumps({**HELLO, "stream": True}).encode()))
    )
    with anyio.fail_after(10):
        async with proxied(pki) as h:
            responses, rest = parse_responses(await exchange(h.proxy.port, data))
    assert [r.status for r in responses] == [200, 200, 200, 200]
    assert responses[0].json() == {"status": "ok"}
    assert responses[1].json()["object"] == "chat.completion"
    assert responses[2].json()["object"] == "list"
    assert responses[3].chunked and responses[3].body.endswith(b"data: [DONE]\n\n")
    assert rest == b""


async def test_empty_lines_before_a_request_line_are_ignored(pki: SimpleNamespace) -> None:
    # RFC 9112 2.2: a server SHOULD ignore empty lines before a request line;
    # some clients send one more CRLF after a POST body (h11 refused them: 400)
    body = json.dumps(HELLO).encode()
    data = (
        b"\r\n\r\n"
        + request_bytes("GET", "/health")
        + request_bytes("POST", CHAT, body)
        + b"\r\n"
        + request_bytes("POST", CHAT, body)
        + b"\n\r\n"
        + close(request_bytes("GET", "/v1/models"))
    )
    with anyio.fail_after(10):
        async with proxied(pki) as h:
            responses, rest = parse_responses(await exchange(h.proxy.port, data))
    assert [r.status for r in responses] == [200, 200, 200, 200]
    assert responses[0].json() == {"status": "ok"}
    assert [r.json()["object"] for r in responses[1:]] == ["chat.completion"] * 2 + ["list"]
    assert rest == b""


async def test_an_empty_line_after_a_reply_keeps_the_connection_idle(
    pki: SimpleNamespace,
) -> None:
    # the extra CRLF arrives on its own after the reply: the connection is idle
    # as before it (no 400 or 408), then serves the next request, then closes
    # quietly at the keep-alive timeout
    body = json.dumps(HELLO).encode()
    with anyio.fail_after(10):
        async with proxied(pki, server={"keepalive_timeout": 0.3}) as h:
            async with await anyio.connect_tcp("127.0.0.1", h.proxy.port) as s:
                await s.send(request_bytes("POST", CHAT, body))
                data = await read_until(s, b'"chat.completion"')
                await s.send(b"\r\n")
                await s.send(request_bytes("GET", "/health"))
                data += await read_until(s, b'{"status":"ok"}')
                await s.send(b"\r\n")
                t0 = anyio.current_time()
                data += await read_all(s)
                took = anyio.current_time() - t0
    responses, rest = parse_responses(data)
    assert [r.status for r in responses] == [200, 200] and rest == b""
    assert 0.25 <= took < 2.0


async def test_http10_request_is_answered_and_closed(pki: SimpleNamespace) -> None:
    with anyio.fail_after(10):
        async with proxied(pki) as h:
            data = await exchange(h.proxy.port, b"GET /health HTTP/1.0\r\n\r\n")
    r = parse_one(data)
    assert r.status == 200 and r.json() == {"status": "ok"}


async def test_head_request(pki: SimpleNamespace) -> None:
    with anyio.fail_after(10):
        async with proxied(pki) as h:
            r = await ask(h.proxy.port, close(request_bytes("HEAD", "/health")), head=True)
            not_allowed = await ask(h.proxy.port, close(request_bytes("HEAD", CHAT)), head=True)
            await healthy(h.proxy.port)
    assert r.status == 200 and r.body == b"" and int(r.header("content-length") or 0) > 0
    assert not_allowed.status == 405 and not_allowed.body == b""


async def test_absolute_form_targets_are_served_by_their_host(pki: SimpleNamespace) -> None:
    # RFC 9112 3.2.2: a server accepts http://host/path and goes by that host
    # (the Host check too), not by the Host header
    with anyio.fail_after(10):
        async with proxied(pki) as h:
            url = f"http://localhost:{h.proxy.port}"
            health = await ask(h.proxy.port, close(request_bytes("GET", url + "/health")))
            chat = await ask(
                h.proxy.port, close(request_bytes("POST", url + CHAT, json_body=HELLO))
            )
            bare = await ask(h.proxy.port, close(request_bytes("GET", url + "?x=1")))
            foreign = await ask(
                h.proxy.port, close(request_bytes("GET", "http://evil.example/health"))
            )
            odd = await ask(h.proxy.port, close(request_bytes("GET", "ftp://localhost/health")))
    assert health.status == 200 and health.json()["status"] == "ok"
    assert chat.status == 200 and chat.json()["object"] == "chat.completion"
    assert bare.status == 404 and "'/'" in bare.error["message"]
    assert foreign.status == 403 and "evil.example" in foreign.error["message"]
    assert odd.status == 400 and "not an http URL" in odd.error["message"]


@pytest.mark.parametrize("method", ["PUT", "DELETE", "OPTIONS", "PATCH", "TRACE", "BREW"])
async def test_other_methods_get_405(pki: SimpleNamespace, method: str) -> None:
    with anyio.fail_after(10):
        async with proxied(pki) as h:
            r = await ask(h.proxy.port, close(request_bytes(method, CHAT)))
    assert r.status == 405
    assert r.header("allow") == "POST"


async def test_connect_method_is_refused(pki: SimpleNamespace) -> None:
    with anyio.fail_after(10):
        async with proxied(pki) as h:
            r = await ask(
                h.proxy.port, close(b"CONNECT example.com:443 HTTP/1.1\r\nHost: localhost\r\n\r\n")
            )
            await healthy(h.proxy.port)
    assert r.status == 400  # its target is no path (see test_a_target_that_is_no_path_is_a_400)
    assert "'example.com:443' is not a path" in r.error["message"]


# --- bad JSON ---------------------------------------------------------------------------


BAD_BODIES: list[tuple[str, bytes, str]] = [
    ("empty", b"", "not valid JSON"),
    ("invalid-utf8", b'{"model": "m", "messages": [{"role": "user", "content": "\xff\xfe"}]}',
     "not valid UTF-8"),
    ("not-json", b"{not json", "not valid JSON"),
    ("array", b"[1, 2, 3]", "must be a JSON object, not an array"),
    ("string", b'"hello"', "must be a JSON object, not a string"),
    ("null", b"null", "must be a JSON object, not null"),
    ("deep-arrays", b"[" * 100_000 + b"]" * 100_000, "nests deeper"),
    ("deep-objects", b'{"a":' * 50_000 + b"1" + b"}" * 50_000, "nests deeper"),
    ("deep-but-parses", b'{"model": "m", "messages": ' + b"[" * 200 + b"]" * 200 + b"}",
     "nests deeper than 64"),
    ("huge-int", b'{"model": "m", "max_tokens": 1' + b"0" * 5000 + b"}", "longer than"),
    ("huge-float", b'{"model": "m", "temperature": 1e999}', "out of range"),
    ("nan", b'{"model": "m", "temperature": NaN}', "NaN"),
    ("trailing-garbage", b'{"model": "m"} xyz', "not valid JSON"),
    ("lone-surrogate-key", b'{"\\ud800": 1}', "messages"),  # parsed, then judged
    ("messages-not-list", b'{"model": "m", "messages": "hello"}', "messages"),
    ("message-not-object", b'{"model": "m", "messages": [42]}', "messages"),
    ("role-wrong-type", b'{"model": "m", "messages": [{"role": 1, "content": "x"}]}', "role"),
    ("content-wrong-type", b'{"model": "m", "messages": [{"role": "user", "content": 5}]}',
     "content"),
    ("stream-wrong-type", b'{"model": "m", "messages": [], "stream": "yes"}', "stream"),
    ("tools-wrong-type", b'{"model": "m", "messages": [{"role": "user", "content": "x"}],'
     b' "tools": {"a": 1}}', "tools"),
]  # fmt: skip


@pytest.mark.parametrize(("body", "needle"), _cases(BAD_BODIES))
async def test_bad_json_bodies_get_400(pki: SimpleNamespace, body: bytes, needle: str) -> None:
    with anyio.fail_after(10):
        async with proxied(pki) as h:
            r = await ask(h.proxy.port, close(request_bytes("POST", CHAT, body)))
            assert r.status == 400, r.body[:300]
            err = r.error
            assert err["type"] == "invalid_request_error"
            assert needle in err["message"] or needle == err["param"], err
            await healthy(h.proxy.port)
    assert h.backend.stats.requests_total == 0


@pytest.mark.parametrize(("body", "needle"), _cases(BAD_BODIES[:13]))
async def test_bad_json_bodies_passthrough_get_400(
    pki: SimpleNamespace, body: bytes, needle: str
) -> None:
    with anyio.fail_after(10):
        async with proxied(pki) as h:
            r = await ask(h.proxy.port, close(request_bytes("POST", "/v1/responses", body)))
            assert r.status == 400, r.body[:300]
            assert needle in r.error["message"]
            await healthy(h.proxy.port)
    assert h.backend.stats.requests_total == 0


async def test_a_body_cut_short_by_its_length_closes_the_connection(pki: SimpleNamespace) -> None:
    # a Content-Length that counts characters leaves a non-ASCII body's end
    # unread: it was kept alive and read as the next request's start, so the
    # client's next, correct request got 400 "illegal request line: '}]}POST …'"
    body = json.dumps({**HELLO, "messages": [{"role": "user", "content": "héllo ✓"}]},
                      ensure_ascii=False)  # fmt: skip
    cut = f"POST {CHAT} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
    cut += f"Content-Length: {len(body)}\r\n\r\n{body}"
    with anyio.fail_after(10):
        async with proxied(pki) as h:
            after = close(request_bytes(json_body=HELLO))
            data = await exchange(h.proxy.port, cut.encode() + after)
            await healthy(h.proxy.port)
    r = parse_one(data)  # one answer, then the connection closed
    assert r.status == 400 and r.header("connection") == "close"
    assert r.error["message"].startswith("request body is not valid JSON: ")
    assert r.error["message"].endswith("does the client's Content-Length count its UTF-8 bytes?")
    assert h.backend.stats.requests_total == 0


async def test_a_long_body_cut_short_gets_its_answer_without_a_reset(pki: SimpleNamespace) -> None:
    # closed at once with a megabyte of the body unread, the connection was
    # reset: a client still sending got ECONNRESET instead of the 400
    text = "é" * 1_000_000
    body = json.dumps({**HELLO, "messages": [{"role": "user", "content": text}]},
                      ensure_ascii=False).encode()  # fmt: skip
    head = f"POST {CHAT} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
    head += f"Content-Length: {len(body) - len(text)}\r\n\r\n"
    with anyio.fail_after(20):
        async with proxied(pki) as h:
            async with await anyio.connect_tcp("127.0.0.1", h.proxy.port) as s:
                await s.send(head.encode() + body)
                data = bytearray()
                with contextlib.suppress(anyio.EndOfStream):
                    while True:  # a reset raises here
                        data += await s.receive()
    r = parse_one(bytes(data))
    assert r.status == 400 and r.header("connection") == "close"
    assert "not valid" in r.error["message"]


async def test_duplicate_keys_last_one_wins(pki: SimpleNamespace) -> None:
    body = (
        b'{"model": "m", "messages": [{"role": "user", "content": "first"}],'
        b' "messages": [{"role": "user", "content": "second"}]}'
    )
    with anyio.fail_after(10):
        async with proxied(pki) as h:
            r = await ask(h.proxy.port, close(request_bytes("POST", CHAT, body)))
    assert r.status == 200
    assert r.json()["choices"][0]["message"]["content"].endswith("You said: second")


async def test_lone_surrogate_in_text_is_forwarded_as_valid_utf8(pki: SimpleNamespace) -> None:
    body = b'{"model": "m", "messages": [{"role": "user", "content": "a\\ud800b"}]}'
    with anyio.fail_after(10):
        async with proxied(pki) as h:
            r = await ask(h.proxy.port, close(request_bytes("POST", CHAT, body)))
            sent = h.backend.requests[-1].body
    assert r.status == 200
    sent.decode("utf-8")  # what went to the backend is valid UTF-8
    assert json.loads(sent)["input"][-1]["content"][0]["text"] == "a\ud800b"


async def test_error_quoting_a_lone_surrogate_is_still_sent(pki: SimpleNamespace) -> None:
    # the bad key goes into the error's "param": UTF-8 cannot carry it, and Goose's
    # serde_json refuses its \\u escape (it would show a parse error): U+FFFD
    body = b'{"model": "m", "messages": [{"role": "user", "content": "hi"}],'
    body += b' "metadata": {"\\ud800": 1}}'
    with anyio.fail_after(10):
        async with proxied(pki) as h:
            r = await ask(h.proxy.port, close(request_bytes("POST", CHAT, body)))
    assert r.status == 400
    assert b"\\ud800" not in r.body and r.error["param"] == "metadata.\ufffd"
    assert h.backend.stats.requests_total == 0


async def test_utf8_bom_is_accepted(pki: SimpleNamespace) -> None:
    body = b"\xef\xbb\xbf" + json.dumps(HELLO).encode()
    with anyio.fail_after(10):
        async with proxied(pki) as h:
            r = await ask(h.proxy.port, close(request_bytes("POST", CHAT, body)))
    assert r.status == 200


def _nested(depth: int) -> Any:
    v: Any = "x"
    for _ in range(depth):
        v = [v]
    return v


async def test_many_bad_requests_on_one_connection_then_good(pki: SimpleNamespace) -> None:
    """An error answer closes its connection; the next connection is served normally."""
    with anyio.fail_after(10):
        async with proxied(pki) as h:
            for _ in range(20):
                r = await ask(h.proxy.port, close(request_bytes("POST", CHAT, b"{oops")))
                assert r.status == 400
            r = await ask(
                h.proxy.port, close(request_bytes("POST", CHAT, json.dumps(HELLO).encode()))
            )
    assert r.status == 200


#: the proxy process's limit of open files in the test below
NOFILE = 48


async def test_out_of_file_descriptors_accepts_wait_warn_once_and_recover(
    pki: SimpleNamespace, tmp_path: Path
) -> None:
    # more clients than the process may open files for: accept() fails with
    # EMFILE; the proxy keeps serving and takes them once descriptors are free.
    # It warned ten times a second while that lasted.
    with anyio.fail_after(30):
        async with devbackend.run(tls=pki.server_context()) as backend:
            cfg = proxy_config(backend.url, pki)
            async with proxy_process(cfg, tmp_path, nofile=NOFILE) as proxy:
                assert (await post(f"http://127.0.0.1:{proxy.port}", HELLO)).status_code == 200
                held = [await anyio.connect_tcp("127.0.0.1", proxy.port) for _ in range(NOFILE)]
                try:
                    await proxy.wait_line("accept failed")
                    # scripted: the shortage lasts five of the proxy's retries
                    await anyio.sleep(5 * server.ACCEPT_BACKOFF)
                finally:
                    for s in held:
                        await s.aclose()
                await healthy(proxy.port)
                await proxy.wait_line("accepting connections again")
                warnings = [line for line in proxy.lines if "accept failed" in line]
    assert len(warnings) == 1, warnings
    assert "Too many open files; new connections wait until it works again" in warnings[0]


@pytest.mark.parametrize("via", ["address", "host-name", "connect-proxy"])
async def test_out_of_file_descriptors_for_a_backend_connection_is_a_503(
    pki: SimpleNamespace, tmp_path: Path, via: str
) -> None:
    # accepted, but no descriptor left for the backend connection: this host's
    # limit, as for the TLS files (a 503 to retry, warned once per ten seconds);
    # it was a 502 "cannot connect to backend …: Too many open files" (by host
    # name: "cannot resolve", glibc's word when it could open nothing; through
    # a CONNECT proxy: "cannot connect to proxy"), warned once per request
    release = anyio.Event()
    answered: list[int] = []
    refused: list[str] = []

    async def slow(stream: anyio.abc.ByteStream, tcp: anyio.abc.SocketStream) -> None:
        await read_request_head(stream, srv)
        await release.wait()  # holds its descriptors until a 503 came
        await stream.send(sse_answer(text_events(["hi"])))

    async def one(port: int) -> None:
        r = await post(f"http://127.0.0.1:{port}", HELLO_STREAM)
        answered.append(r.status_code)
        if r.status_code == 503:
            assert r.headers["retry-after"] == "1" and "x-should-retry" not in r.headers
            err = r.json()["error"]
            assert err["code"] == "service_unavailable"
            refused.append(err["message"])
            release.set()

    with anyio.fail_after(60):
        async with fake_server(slow) as srv, connect_proxy() as tunnel:
            host = "localhost" if via == "host-name" else "127.0.0.1"
            extra = {"proxy": tunnel.url} if via == "connect-proxy" else {}
            cfg = proxy_config(f"http://{host}:{srv.port}/v1", pki, backend=extra)
            async with proxy_process(cfg, tmp_path, nofile=NOFILE) as proxy:
                async with anyio.create_task_group() as tg:
                    for _ in range(NOFILE):
                        tg.start_soon(one, proxy.port)
                warned = [line for line in proxy.lines if "open a connection" in line]
    to = f"proxy {tunnel.url}" if via == "connect-proxy" else f"backend {host}:{srv.port}"
    assert set(answered) == {200, 503}, answered
    assert set(refused) == {
        f"goose-proxy cannot open a connection to {to} right now (Too many open files); "
        "try again in a moment"
    }
    assert len(warned) == 1, warned


_CHILD = """
import json, sys
from goose_proxy.errors import client_utf8
from goose_proxy.http import server
from goose_proxy.translate.jsonbody import parse_json_object
from tests.fdlimit import out_of_descriptors

out = {"ctypes loaded before": "ctypes" in sys.modules}
with out_of_descriptors():
    out["body"] = parse_json_object(b'\\xef\\xbb\\xbf{"a": 1}')
    out["halves"] = client_utf8("\\ud83d\\ude00").decode()
    server.give_back_memory()
    out["trim while out"] = repr(server._malloc_trim)
server.give_back_memory()
out["trim after"] = callable(server._malloc_trim)
print(json.dumps(out))
"""


def test_out_of_file_descriptors_a_body_is_read_and_the_heap_trim_comes_later() -> None:
    # a fresh interpreter: the first request body (with a BOM, whose codec is
    # a module loaded on first use) was an internal error, and so was the first
    # answer with a surrogate pair in halves (utf-16-le); the heap trim,
    # whose ctypes could not be loaded then, was turned off for good
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT)}
    done = subprocess.run(
        [sys.executable, "-c", _CHILD],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=PROJECT_ROOT,
        env=env,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out == {
        "ctypes loaded before": False,
        "body": {"a": 1},
        "halves": "\U0001f600",  # a pair written as two halves: its character
        "trim while out": "None",  # not loaded, to be tried again
        "trim after": True,
    }
