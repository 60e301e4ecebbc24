"""Client faults: a client that goes away cancels its backend request at once; a
slow reader slows the backend (backpressure) with bounded memory; a thousand
connect-request-disconnect cycles leave file descriptors and memory where
they were.

The last two run the proxy as a real process (``python -m goose_proxy``) so
that its own descriptors (``/proc/<pid>/fd``) and resident memory
(``/proc/<pid>/statm``) are measured, apart from the test's backend and client.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import anyio
import anyio.abc
import pytest

from goose_proxy import streams
from tests.reliability.support import (
    HELLO,
    HELLO_STREAM,
    SSE_HEAD,
    chat_stream_outcome,
    chunk,
    fake_server,
    parse_one,
    poll,
    proxied,
    proxy_config,
    proxy_process,
    read_all,
    read_request_head,
    read_until,
    request_bytes,
    sse_event,
    steady,
    wait_settled,
)

pytestmark = pytest.mark.anyio

CHAT = "/v1/chat/completions"
#: the issue's bound: the backend sees its connection closed within this time
CANCEL_WITHIN = 0.100


async def _disconnect_and_time(h: SimpleNamespace, body: dict[str, Any], wait_for: bytes) -> float:
    """Send ``body``, read until ``wait_for`` shows up (b"" = nothing), hang up;
    seconds until the backend saw its request end and its connection close."""
    be = h.backend
    s = await anyio.connect_tcp("127.0.0.1", h.proxy.port)
    try:
        await s.send(request_bytes("POST", CHAT, json.dumps(body).encode()))
        await be.wait_until(lambda b: b.stats.in_flight == 1)
        await read_until(s, wait_for)
    finally:
        await s.aclose()
    t0 = anyio.current_time()
    await be.wait_until(lambda b: b.stats.in_flight == 0 and b.stats.connections_open == 0)
    return anyio.current_time() - t0


@pytest.mark.parametrize(
    ("fault", "body", "wait_for"),
    [
        ("stall", HELLO_STREAM, b""),  # waiting for the response head
        ("stall", HELLO, b""),
        ("stall_mid_stream", HELLO_STREAM, b'"content":"Hello'),  # between events
        ("stall_mid_stream", HELLO, b""),  # collecting a stream for a JSON answer
    ],
    ids=["before-head-stream", "before-head-json", "mid-stream", "mid-collect"],
)
async def test_client_disconnect_cancels_upstream_at_once(
    pki: SimpleNamespace, fault: str, body: dict[str, Any], wait_for: bytes
) -> None:
    with anyio.fail_after(10):
        async with proxied(pki, fault=fault, backend={"stream_idle_timeout": 60}) as h:
            took = await _disconnect_and_time(h, body, wait_for)
    print(f"\nclient gone ({fault}): backend saw its connection closed after {took * 1e3:.1f} ms")
    assert took < CANCEL_WITHIN, f"backend saw the close after {took * 1000:.1f} ms"


async def test_client_disconnect_during_slow_stream(pki: SimpleNamespace) -> None:
    headers = {"X-Dev-Event-Delay": "0.05", "X-Dev-Deltas": "200"}
    with anyio.fail_after(10):
        async with proxied(pki, headers=headers) as h:
            took = await _disconnect_and_time(h, HELLO_STREAM, b'"content":"Hello')
            assert h.proxy.server.active_requests == 0
    assert took < CANCEL_WITHIN


PROC_TCP = "/proc/net/tcp"
HAVE_PROC_TCP = os.path.exists(PROC_TCP)


def proxy_side_state(proxy_port: int, client: socket.socket) -> str:
    """The TCP state (``/proc/net/tcp``'s hex code) of the proxy's end of
    ``client``'s connection: ``01`` while the proxy holds it open, ``04``
    (``FIN_WAIT1``) after a plain close while the kernel still has bytes
    queued for it; ``""`` once no socket is left (after a reset)."""
    client_port = client.getsockname()[1]
    with open(PROC_TCP) as f:
        for line in f.readlines()[1:]:
            local, remote, state = line.split()[1:4]
            if int(local.split(":")[1], 16) == proxy_port and (
                int(remote.split(":")[1], 16) == client_port
            ):
                return state
    return ""


@pytest.mark.parametrize("body", [HELLO_STREAM, HELLO], ids=["stream", "json"])
async def test_a_client_that_stops_reading_is_let_go_after_send_timeout(
    pki: SimpleNamespace, body: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Connected and silent, it would hold its exchange and the backend connection
    for ever (backpressure waits for it); after ``send_timeout`` with its buffers
    full it counts as gone, and its connection is closed without waiting for it
    to take what is still queued (a close that flushes would wait for longer
    than this test's bound)."""
    monkeypatch.setattr(streams, "CLOSE_FLUSH_TIMEOUT", 3600.0)
    # an answer of 6 MB: more than the socket buffers hold (4 MiB at most here)
    # (the openai flavour: the backend's answer is one JSON object, quick to make)
    big = {"fault": "big_event:6000000", "mode": "openai",
           "backend": {"max_event_size": 32 * 1024 * 1024, "flavor": "openai"}}  # fmt: skip
    with anyio.fail_after(30):
        async with proxied(pki, **big, server={"send_timeout": 0.3}) as h:
            s = socket.socket()
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            try:
                s.connect(("127.0.0.1", h.proxy.port))
                s.sendall(request_bytes("POST", CHAT, json.dumps(body).encode()))
                # never read: the proxy gives up on the client (and, mid-stream, on
                # the backend's answer, whose connection it closes)
                await h.backend.wait_until(lambda b: b.stats.requests_total == 1)
                await wait_settled(h.proxy, within=20)
                await h.backend.wait_until(lambda b: b.stats.in_flight == 0)
                if HAVE_PROC_TCP:  # the proxy let go of its socket, and the kernel
                    # of what was queued for it: a reset, no orphan left sending
                    await poll(lambda: proxy_side_state(h.proxy.port, s) == "")
            finally:
                s.close()


async def test_a_slow_reader_that_keeps_reading_is_not_let_go(pki: SimpleNamespace) -> None:
    """send_timeout counts time in which the client took nothing: a reader far
    slower than the answer is long (6 MB at about 3 MB/s, against 0.3 s) is
    waited for as long as it keeps reading. (A deadline for each write cut it,
    and one for a whole answer's slices too.)"""
    big = {"fault": "big_event:6000000", "mode": "openai",
           "backend": {"max_event_size": 32 * 1024 * 1024, "flavor": "openai"}}  # fmt: skip
    loop = asyncio.get_running_loop()
    with anyio.fail_after(30):
        async with proxied(pki, **big, server={"send_timeout": 0.3}) as h:
            with socket.socket() as s:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
                s.setblocking(False)
                await loop.sock_connect(s, ("127.0.0.1", h.proxy.port))
                body = json.dumps(HELLO_STREAM).encode()
                await loop.sock_sendall(s, request_bytes("POST", CHAT, body))
                raw = bytearray()  # to the end of the chunked body, or the close
                while not raw.endswith(b"\r\n0\r\n\r\n") and (
                    data := await loop.sock_recv(s, 64 * 1024)
                ):
                    raw += data
                    await anyio.sleep(0.02)  # the pace of a slow reader, not a wait for state
    r = parse_one(bytes(raw))
    text, err = chat_stream_outcome(r.body)
    assert err is None and len(text) == 6_000_000  # and its end: finish_reason, [DONE]


async def test_client_half_close_counts_as_gone(pki: SimpleNamespace) -> None:
    """A client that shuts its sending side while waiting gets no answer and
    costs no backend work (as nginx and others treat it)."""
    with anyio.fail_after(10):
        async with proxied(pki, fault="stall") as h:
            s = await anyio.connect_tcp("127.0.0.1", h.proxy.port)
            async with s:
                await s.send(request_bytes("POST", CHAT, json.dumps(HELLO).encode()))
                await h.backend.wait_until(lambda b: b.stats.in_flight == 1)
                await s.send_eof()
                assert await read_all(s) == b""
            await h.backend.wait_until(lambda b: b.stats.in_flight == 0)


# --- backpressure ---------------------------------------------------------------------

DELTA = 4096
DELTAS = 12_000  # ~49 MB of text: more than every socket buffer on the way together


def _delta(text: str) -> dict[str, Any]:
    return {
        "type": "response.output_text.delta",
        "item_id": "m1",
        "output_index": 0,
        "content_index": 0,
        "delta": text,
    }


async def test_slow_reader_slows_the_backend_with_bounded_memory(
    pki: SimpleNamespace, tmp_path: Path
) -> None:
    written = [0]

    async def generate(stream: anyio.abc.ByteStream, tcp: anyio.abc.SocketStream) -> None:
        tcp.extra(anyio.abc.SocketAttribute.raw_socket).setsockopt(
            socket.SOL_SOCKET, socket.SO_SNDBUF, 64 * 1024
        )
        head = await read_request_head(stream, srv)
        n = DELTAS if b"BIG" in srv.requests[-1] else 3
        del head
        resp = {"id": "r", "object": "response", "created_at": 1, "model": "m"}
        created = {"type": "response.created", "response": {**resp, "status": "in_progress"}}
        await stream.send(SSE_HEAD + chunk(sse_event(created)))
        text = "w" * (DELTA - 1) + " "
        for _ in range(n):
            frame = chunk(sse_event(_delta(text)))
            await stream.send(frame)
            written[0] += len(frame)
        done = {"type": "response.completed", "response": {**resp, "status": "completed"}}
        await stream.send(chunk(sse_event(done)) + b"0\r\n\r\n")

    body = json.dumps({**HELLO_STREAM, "messages": [{"role": "user", "content": "BIG"}]})
    with anyio.fail_after(60):  # about 3 s here; pytest-timeout stops any test at 120 s
        async with fake_server(generate, tls=pki.server_context()) as srv:
            cfg = proxy_config(srv.url, pki, backend={"stream_idle_timeout": 60.0})
            async with proxy_process(cfg, tmp_path) as proxy:
                # warm up: the code paths of a stream are loaded and run once
                warm = request_bytes("POST", CHAT, json.dumps(HELLO_STREAM).encode())
                async with await anyio.connect_tcp("127.0.0.1", proxy.port) as s:
                    await s.send(warm)
                    await read_until(s, b"[DONE]")
                rss_before = proxy.rss()

                client = await anyio.connect_tcp("127.0.0.1", proxy.port)
                async with client:
                    await client.send(request_bytes("POST", CHAT, body.encode()))
                    received = bytearray()
                    while len(received) < 256 * 1024:  # the stream flows…
                        received += await client.receive()
                    # …then the client stops reading. Wait until the backend is
                    # blocked too (polling its counter: a blocked send has no event).
                    stalled_at = await steady(lambda: written[0], polls=25)
                    rss_stalled = proxy.rss()
                    # reading again drains everything, intact
                    while not received.endswith(b"0\r\n\r\n"):
                        received += await client.receive()
    total = DELTAS * len(chunk(sse_event(_delta("w" * DELTA))))
    print(
        f"\nbackpressure: backend wrote {stalled_at / 1e6:.1f} MB of {total / 1e6:.1f} MB "
        f"while the client had read {256 / 1024:.2f} MB; proxy RSS "
        f"{rss_before / 1e6:.1f} MB -> {rss_stalled / 1e6:.1f} MB"
    )
    assert stalled_at < total / 3, "the backend was not slowed down"
    assert rss_stalled - rss_before < 16 * 1024 * 1024, "the proxy buffered the stream"
    r = parse_one(bytes(received))
    text, err = chat_stream_outcome(r.body)
    assert err is None and len(text) == DELTAS * DELTA


# --- a thousand short lives ---------------------------------------------------------------

CYCLES = 1000
WARMUP = 150


async def _cycle(port: int, i: int) -> None:
    """One connect-request-disconnect cycle of six kinds."""
    kind = i % 6
    async with await anyio.connect_tcp("127.0.0.1", port) as s:
        if kind == 0:
            await s.send(request_bytes("GET", "/health", headers={"Connection": "close"}))
            assert b" 200 " in await read_all(s)
        elif kind == 1:
            await s.send(
                request_bytes("POST", CHAT, json.dumps(HELLO).encode(), {"Connection": "close"})
            )
            assert b"You said" in await read_all(s)
        elif kind == 2:
            await s.send(request_bytes("POST", CHAT, json.dumps(HELLO_STREAM).encode()))
            # a complete stream; then hang up, keep-alive or not
            await read_until(s, b"[DONE]")
        elif kind == 3:
            # a stream abandoned after its first chunk
            await s.send(request_bytes("POST", CHAT, json.dumps(HELLO_STREAM).encode()))
            await read_until(s, b"data:")
        elif kind == 4:
            await s.send(request_bytes("POST", CHAT, b"{bad json"))
            assert b" 400 " in await s.receive()
        else:
            pass  # connect and leave without a word


async def test_thousand_cycles_leave_fds_and_rss_where_they_were(
    pki: SimpleNamespace, tmp_path: Path
) -> None:
    import devbackend

    with anyio.fail_after(60):  # about 2 s here; pytest-timeout stops any test at 120 s
        async with devbackend.run(tls=pki.server_context()) as backend:
            cfg = proxy_config(backend.url, pki)
            async with proxy_process(cfg, tmp_path) as proxy:
                for i in range(WARMUP):
                    await _cycle(proxy.port, i)
                await _quiet(proxy, backend)
                fds_before, rss_before = proxy.open_fds(), proxy.rss()
                for i in range(CYCLES):
                    await _cycle(proxy.port, i)
                await _quiet(proxy, backend)
                fds_after, rss_after = proxy.open_fds(), proxy.rss()
    print(
        f"\n{CYCLES} cycles: fds {fds_before} -> {fds_after}; "
        f"RSS {rss_before / 1e6:.2f} MB -> {rss_after / 1e6:.2f} MB"
    )
    assert fds_after <= fds_before
    assert rss_after - rss_before < 4 * 1024 * 1024


async def _quiet(proxy: Any, backend: Any) -> None:
    """Every client connection is over: a complete request ends the cycle, so one
    pooled backend connection at most stays (polling: a process has no event)."""
    async with await anyio.connect_tcp("127.0.0.1", proxy.port) as s:
        await s.send(
            request_bytes("POST", CHAT, json.dumps(HELLO).encode(), {"Connection": "close"})
        )
        await read_all(s)
    await backend.wait_until(lambda b: b.stats.in_flight == 0)
    await steady(proxy.open_fds, polls=10)
