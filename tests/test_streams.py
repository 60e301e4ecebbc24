"""goose_proxy.streams: anyio byte streams over asyncio protocols, on real loopback sockets.

The stream under test comes from :func:`connect_tcp` (or :class:`Listener`); its
peer is a plain non-blocking socket driven with the event loop's ``sock_*``
functions, so the peer can do what a real client or backend does: write in
separate segments, half-close, reset (``SO_LINGER`` 0), or not read at all.
TLS runs against an asyncio TLS server with the trustme certificate of the
``pki`` fixture.

A few checks look at the protocol's own counters (``stream._p``): the read
limit is about how many bytes wait in memory, which nothing public reports.
"""

from __future__ import annotations

import asyncio
import errno
import gc
import os
import socket
import ssl
import struct
import sys
import warnings
from collections.abc import AsyncIterator, Awaitable, Iterator
from contextlib import asynccontextmanager, contextmanager
from types import SimpleNamespace
from typing import Any, Callable

import anyio
import anyio.abc
import anyio.lowlevel
import anyio.to_thread
import pytest

from goose_proxy.streams import (
    CLOSE_FLUSH_TIMEOUT,
    DEFAULT_READ_LIMIT,
    WRITE_SLICE,
    Listener,
    ProtocolStream,
    _IdleTimer,
    bind_tcp,
    connect_tcp,
    refused,
)
from tests.reliability.support import poll
from tests.support import refusing_port

pytestmark = pytest.mark.anyio

#: asyncio reads at most this much from a socket (or out of TLS) in one go, so
#: the bytes queued may pass the read limit by up to one read
ONE_READ = 256 * 1024
#: a peer's write that no socket buffers on the way can hold all of
BIG = 16 * 1024 * 1024
BLOCK = 64 * 1024


# --- helpers ---------------------------------------------------------------------------


async def wait_until(cond: Callable[[], bool]) -> None:
    """Poll ``cond`` at every turn of the event loop (the test's fail_after bounds it)."""
    while not cond():
        await anyio.lowlevel.checkpoint()


def pattern(size: int, seed: int = 0) -> bytes:
    """``size`` bytes in which every 4-byte word is its own index: misordered,
    lost or repeated bytes change the content."""
    words = (size + 3) // 4
    return b"".join(struct.pack(">I", (seed + i) & 0xFFFFFFFF) for i in range(words))[:size]


def block(i: int) -> bytes:
    """The ``i``-th distinct block of a long write."""
    return pattern(BLOCK, seed=i * BLOCK)


@asynccontextmanager
async def connected(
    read_limit: int = DEFAULT_READ_LIMIT,
) -> AsyncIterator[tuple[ProtocolStream, socket.socket]]:
    """A stream from :func:`connect_tcp` and its peer, a non-blocking socket."""
    loop = asyncio.get_running_loop()
    with socket.create_server(("127.0.0.1", 0)) as srv:
        srv.setblocking(False)
        stream = await connect_tcp("127.0.0.1", srv.getsockname()[1], read_limit=read_limit)
        try:
            peer, _ = await loop.sock_accept(srv)
            with peer:
                peer.setblocking(False)
                peer.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                yield stream, peer
        finally:
            stream.abort()  # a no-op when the test closed it


async def peer_send(peer: socket.socket, data: bytes) -> None:
    await asyncio.get_running_loop().sock_sendall(peer, data)


async def peer_recv_all(peer: socket.socket, cap: int = 64 << 20) -> bytes:
    """Everything until the stream's end (FIN); AssertionError past ``cap`` bytes."""
    loop = asyncio.get_running_loop()
    out = bytearray()
    while True:
        data = await loop.sock_recv(peer, 1 << 20)
        if not data:
            return bytes(out)
        out += data
        assert len(out) <= cap, f"no end within {cap} bytes"


async def peer_recv_exactly(peer: socket.socket, n: int) -> bytes:
    loop = asyncio.get_running_loop()
    out = bytearray()
    while len(out) < n:
        data = await loop.sock_recv(peer, n - len(out))
        assert data, f"EOF after {len(out)} of {n} bytes"
        out += data
    return bytes(out)


async def receive_exactly(stream: ProtocolStream, n: int, max_bytes: int = 65536) -> bytes:
    out = bytearray()
    while len(out) < n:
        out += await stream.receive(min(max_bytes, n - len(out)))
    return bytes(out)


async def fill_until_backpressure(stream: ProtocolStream, wait: float = 0.2) -> list[bytes]:
    """Send distinct blocks until one ``send`` waits ``wait`` seconds in vain for the write
    buffer to drain; the blocks handed to the stream (the last one included:
    it was written before the wait)."""
    sent: list[bytes] = []
    while True:
        assert len(sent) < 512, "no backpressure"  # 32 MiB: far past any socket buffer
        data = block(len(sent))
        sent.append(data)
        try:
            await stream.send(data, timeout=wait)
        except TimeoutError:
            return sent


class Calls:
    """A callback for :meth:`ProtocolStream.on_gone` that counts its calls."""

    def __init__(self) -> None:
        self.count = 0
        self.event = anyio.Event()

    def __call__(self) -> None:
        self.count += 1
        self.event.set()


# --- receiving -------------------------------------------------------------------------


async def test_receive_joins_queued_chunks_and_respects_max_bytes() -> None:
    parts = [b"one-", b"two-", b"three-", b"four"]
    whole = b"".join(parts)
    with anyio.fail_after(5):
        async with connected() as (stream, peer):
            assert not stream.readable_now()

            def queued_is(n: int) -> Callable[[], bool]:
                return lambda: stream._p.buffered == n

            async def queue_separately() -> None:
                # each part arrives on its own (the protocol read it before the next is sent)
                queued = 0
                for part in parts:
                    await peer_send(peer, part)
                    queued += len(part)
                    await wait_until(queued_is(queued))

            await queue_separately()
            assert len(stream._p.chunks) == len(parts)
            assert stream.readable_now()
            assert await stream.receive() == whole  # one call, every chunk joined
            assert stream._p.buffered == 0
            assert not stream.readable_now()

            await queue_separately()
            first = await stream.receive(max_bytes=9)
            assert len(parts[0]) < len(first) <= 9  # chunks joined, up to max_bytes
            assert whole.startswith(first)
            assert stream._p.buffered == len(whole) - len(first)
            # a chunk longer than max_bytes is split, its rest kept for the next call
            second = await stream.receive(max_bytes=2)
            assert second == whole[len(first) : len(first) + 2]
            rest = bytearray()
            while len(first) + len(second) + len(rest) < len(whole):
                got = await stream.receive(max_bytes=5)
                assert 0 < len(got) <= 5
                rest += got
            assert first + second + rest == whole
            assert stream._p.buffered == 0
            assert not stream._p.chunks


async def test_receive_timeout_raises_and_the_stream_stays_usable() -> None:
    with anyio.fail_after(5):
        async with connected() as (stream, peer):
            t0 = anyio.current_time()
            with pytest.raises(TimeoutError):
                await stream.receive(timeout=0.1)
            assert anyio.current_time() - t0 >= 0.09
            with pytest.raises(TimeoutError):
                await stream.receive(timeout=0.05)

            await peer_send(peer, b"later")
            assert await stream.receive(timeout=2) == b"later"
            # queued bytes are returned at once, whatever the timeout
            await peer_send(peer, b"queued")
            await wait_until(stream.readable_now)
            assert await stream.receive(timeout=0.05) == b"queued"


async def test_receive_zero_timeout_leaves_the_stream_usable() -> None:
    with anyio.fail_after(5):
        async with connected() as (stream, peer):
            with pytest.raises(TimeoutError):
                await stream.receive(timeout=0)
            await peer_send(peer, b"after")
            assert await stream.receive(timeout=2) == b"after"


async def test_cancelled_receive_leaves_the_stream_usable() -> None:
    with anyio.fail_after(5):
        async with connected() as (stream, peer):
            with anyio.move_on_after(0.05) as scope:
                await stream.receive()
            assert scope.cancelled_caught
            await peer_send(peer, b"still here")
            assert await stream.receive() == b"still here"


async def test_second_concurrent_receiver_is_refused() -> None:
    with anyio.fail_after(5):
        async with connected() as (stream, peer):
            got: list[bytes] = []

            async def first() -> None:
                got.append(await stream.receive())

            async with anyio.create_task_group() as tg:
                tg.start_soon(first)
                await anyio.wait_all_tasks_blocked()
                with pytest.raises(anyio.BusyResourceError):
                    await stream.receive()
                await peer_send(peer, b"for the first")
            assert got == [b"for the first"]


async def test_end_of_stream_after_every_byte_was_read() -> None:
    data = pattern(DEFAULT_READ_LIMIT // 2)  # below the read limit: the FIN gets read too
    with anyio.fail_after(5):
        async with connected() as (stream, peer):
            gone = Calls()
            stream.on_gone(gone)
            await peer_send(peer, data)
            peer.shutdown(socket.SHUT_WR)
            await gone.event.wait()  # the FIN arrived ...
            # ... but the bytes before it still wait
            assert stream.readable_now()
            got = bytearray()
            while True:
                try:
                    got += await stream.receive()
                except anyio.EndOfStream:
                    break
            assert got == data
            with pytest.raises(anyio.EndOfStream):  # and again
                await stream.receive()


async def test_receive_after_own_aclose_raises_closed() -> None:
    with anyio.fail_after(5):
        async with connected() as (stream, peer):
            await peer_send(peer, b"unread")
            await wait_until(stream.readable_now)
            outcome: list[Exception] = []

            async def blocked_reader() -> None:
                try:
                    await stream.receive()
                except Exception as e:  # recorded, asserted below
                    outcome.append(e)

            # the queued bytes are returned, then a blocked reader is woken by aclose
            assert await stream.receive() == b"unread"
            async with anyio.create_task_group() as tg:
                tg.start_soon(blocked_reader)
                await anyio.wait_all_tasks_blocked()
                await stream.aclose()
            assert len(outcome) == 1 and isinstance(outcome[0], anyio.ClosedResourceError)
            with pytest.raises(anyio.ClosedResourceError):
                await stream.receive()
            with pytest.raises(anyio.ClosedResourceError):
                await stream.send(b"x")
            assert await peer_recv_all(peer) == b""


# --- the peer's end: on_gone --------------------------------------------------------------


async def test_on_gone_fires_once_on_peer_fin() -> None:
    with anyio.fail_after(5):
        async with connected() as (stream, peer):
            gone = Calls()
            stream.on_gone(gone)
            assert gone.count == 0
            peer.shutdown(socket.SHUT_WR)
            await gone.event.wait()
            assert gone.count == 1
            with pytest.raises(anyio.EndOfStream):
                await stream.receive()
            # a half-close: this side may still send, and the peer still reads
            await stream.send(b"reply after your FIN")
            await stream.send_eof()
            assert await peer_recv_all(peer) == b"reply after your FIN"
            # the connection's loss afterwards calls nobody again
            await stream.aclose()
            await wait_until(lambda: stream._p.lost)
            assert gone.count == 1


async def test_on_gone_fires_on_peer_reset() -> None:
    with anyio.fail_after(5):
        async with connected() as (stream, peer):
            gone = Calls()
            stream.on_gone(gone)
            peer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            peer.close()  # RST, no FIN
            await gone.event.wait()
            assert gone.count == 1
            assert not stream._p.eof  # it was not a FIN
            with pytest.raises(anyio.BrokenResourceError) as ei:
                await stream.receive()
            assert isinstance(ei.value.__cause__, ConnectionResetError)
            with pytest.raises(anyio.BrokenResourceError):
                await stream.send(b"to nobody")


async def test_on_gone_registered_after_the_fact_is_called_at_once() -> None:
    with anyio.fail_after(5):
        async with connected() as (stream, peer):
            peer.shutdown(socket.SHUT_WR)
            with pytest.raises(anyio.EndOfStream):
                await stream.receive()  # the FIN was processed
            late = Calls()
            stream.on_gone(late)
            assert late.count == 1  # synchronously, before any await


async def test_on_gone_none_removes_the_callback() -> None:
    with anyio.fail_after(5):
        async with connected() as (stream, peer):
            removed = Calls()
            stream.on_gone(removed)
            stream.on_gone(None)
            peer.shutdown(socket.SHUT_WR)
            with pytest.raises(anyio.EndOfStream):
                await stream.receive()  # eof_received() ran: a callback would have been called
            await stream.aclose()
            await wait_until(lambda: stream._p.lost)
            assert removed.count == 0


# --- flow control -------------------------------------------------------------------------


async def test_read_limit_bounds_queued_bytes_and_every_byte_arrives() -> None:
    read_limit = 64 * 1024
    bound = read_limit + ONE_READ
    data = pattern(BIG)
    with anyio.fail_after(20):
        async with connected(read_limit=read_limit) as (stream, peer):
            sent = anyio.Event()

            async def sender() -> None:
                await peer_send(peer, data)
                sent.set()

            async with anyio.create_task_group() as tg:
                tg.start_soon(sender)
                # nobody reads: reading pauses at the limit and TCP holds the sender back
                await wait_until(lambda: stream._p.reading_paused)
                assert not stream._transport.is_reading()
                assert read_limit <= stream._p.buffered < bound
                assert not sent.is_set()

                got = bytearray()
                most = 0
                paused_again = 0
                while len(got) < len(data):
                    got += await stream.receive(max_bytes=16 * 1024)
                    await anyio.lowlevel.checkpoint()  # a slow reader: let the loop read
                    most = max(most, stream._p.buffered)
                    paused_again += stream._p.reading_paused
            assert sent.is_set()
            assert most < bound, f"{most} bytes queued with a read limit of {read_limit}"
            assert paused_again > 0  # the limit kept working while reading
            assert len(got) == len(data)
            assert got == data


async def test_send_waits_under_backpressure_and_times_out() -> None:
    with anyio.fail_after(20):
        async with connected() as (stream, peer):
            # the peer reads nothing: the socket buffers fill, then the write buffer
            t0 = anyio.current_time()
            sent = await fill_until_backpressure(stream, wait=0.2)
            assert anyio.current_time() - t0 >= 0.19
            assert len(sent) > 1
            assert stream._transport.get_write_buffer_size() > 0
            # still full: a send without a timeout waits (cancelled here) ...
            extra = b"waits"
            with anyio.move_on_after(0.1) as scope:
                await stream.send(extra)
            assert scope.cancelled_caught
            sent.append(extra)  # written before it waited
            # ... and one with a timeout raises again
            with pytest.raises(TimeoutError):
                await stream.send(b"again", timeout=0.05)
            sent.append(b"again")

            received: list[bytes] = []

            async def drain() -> None:
                received.append(await peer_recv_all(peer))

            async with anyio.create_task_group() as tg:
                tg.start_soon(drain)
                await stream.send(b"tail")  # completes once the peer reads
                sent.append(b"tail")
                await stream.aclose()
            assert received == [b"".join(sent)]


class FakeClock:
    """The two calls to an event loop :class:`_IdleTimer` makes, on a clock the test moves."""

    def __init__(self, lag: float = 0.0) -> None:
        self.now = 0.0
        self.lag = lag  # how late each callback runs (a busy loop)
        self.due: list[tuple[float, Callable[[], None]]] = []

    def time(self) -> float:
        return self.now

    def call_at(self, when: float, callback: Callable[[], None]) -> SimpleNamespace:
        entry = (when, callback)
        self.due.append(entry)
        return SimpleNamespace(cancel=lambda: self.due.remove(entry))

    def advance_to(self, t: float) -> None:
        while self.due and min(self.due, key=lambda e: e[0])[0] <= t:
            entry = min(self.due, key=lambda e: e[0])
            self.due.remove(entry)
            self.now = entry[0] + self.lag
            entry[1]()
        self.now = t


class Expiry:
    """The waiter: records when it was expired."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock, self.at = clock, None  # type: ignore[var-annotated]

    def done(self) -> bool:
        return self.at is not None

    def set_exception(self, exc: BaseException) -> None:
        assert isinstance(exc, TimeoutError)
        self.at = self.clock.now


@pytest.mark.parametrize("last_taken", [0.0, 0.1, 5.0, 9.9])
def test_the_idle_timer_counts_from_when_the_peer_last_took_something(
    last_taken: float,
) -> None:
    # the peer takes a little at last_taken, then nothing: it is let go no sooner
    # than 10 s after that, and at most an eighth of that later (a check only when
    # the time was up let a peer that took a little just after the start stay 20 s)
    clock = FakeClock()
    pending = SimpleNamespace(size=100_000)
    transport = SimpleNamespace(
        get_write_buffer_size=lambda: pending.size, get_extra_info=lambda name: None
    )
    waiter = Expiry(clock)
    _IdleTimer(clock, transport, waiter, 10.0)  # type: ignore[arg-type]
    if last_taken:
        clock.advance_to(last_taken)
        pending.size -= 1000
    clock.advance_to(40.0)
    assert waiter.at is not None
    assert last_taken + 10.0 <= waiter.at <= last_taken + 10.0 * 1.125 + 1e-9
    assert not clock.due  # nothing left scheduled


def test_the_idle_timers_lateness_does_not_add_up() -> None:
    # every check runs 50 ms late: the timer expires one check's lag late, not
    # eight (a check scheduled from the one before would add each lag)
    clock = FakeClock(lag=0.05)
    transport = SimpleNamespace(get_write_buffer_size=lambda: 1, get_extra_info=lambda name: None)
    waiter = Expiry(clock)
    _IdleTimer(clock, transport, waiter, 10.0)  # type: ignore[arg-type]
    clock.advance_to(40.0)
    assert waiter.at is not None and 10.0 <= waiter.at <= 10.0 + 0.05 + 1e-9


def test_the_idle_timer_waits_for_as_long_as_the_peer_keeps_taking() -> None:
    clock = FakeClock()
    pending = SimpleNamespace(size=10_000_000)
    transport = SimpleNamespace(
        get_write_buffer_size=lambda: pending.size, get_extra_info=lambda name: None
    )
    waiter = Expiry(clock)
    timer = _IdleTimer(clock, transport, waiter, 1.0)  # type: ignore[arg-type]
    for step in range(1, 200):  # a slow reader: 50 KB every half second, for 99.5 s
        clock.advance_to(step / 2)
        pending.size -= 50_000
    assert waiter.at is None
    timer.cancel()
    assert not clock.due


def record_writes(stream: ProtocolStream) -> list[int]:
    """The sizes of what ``stream`` hands its transport from now on."""
    sizes: list[int] = []
    write = stream._transport.write

    def recording(data: Any) -> None:
        sizes.append(len(data))
        write(data)

    stream._transport.write = recording  # type: ignore[method-assign]
    return sizes


async def test_a_large_send_goes_out_in_slices() -> None:
    # the peer reads slowly: every slice waits for the one before to drain
    data = pattern(3 * WRITE_SLICE + 12345, seed=11)
    with anyio.fail_after(20):
        async with connected() as (stream, peer):
            sizes = record_writes(stream)
            received: list[bytes] = []

            async def slow_reader() -> None:
                out = bytearray()
                while len(out) < len(data):
                    out += await peer_recv_exactly(peer, min(8192, len(data) - len(out)))
                    await anyio.lowlevel.checkpoint()
                received.append(bytes(out))

            async with anyio.create_task_group() as tg:
                tg.start_soon(slow_reader)
                await stream.send(data)
    assert received == [data]  # whole, in order
    assert sizes == [WRITE_SLICE] * 3 + [12345]


@pytest.mark.parametrize("parts", [False, True], ids=["send", "send_parts"])
@pytest.mark.parametrize("how", ["timeout", "cancel"])
async def test_a_large_send_cut_short_still_hands_over_all_its_bytes(how: str, parts: bool) -> None:
    # the peer reads nothing: the send stops waiting (its timeout, or the
    # caller's cancel scope) after a few slices; the rest goes to the transport
    # at once, so what is sent next (an error event, the end of a chunked
    # body, the next response) comes after the whole message, never inside it
    data = pattern(64 * WRITE_SLICE, seed=13)
    pieces = [data[:100], data[100:-7], data[-7:]] if parts else [data]
    with anyio.fail_after(30):
        async with connected() as (stream, peer):
            sizes = record_writes(stream)
            t0 = anyio.current_time()
            send = stream.send_parts if parts else lambda d, **kw: stream.send(d[0], **kw)
            if how == "timeout":
                with pytest.raises(TimeoutError):
                    await send(pieces, timeout=0.3)
            else:
                with anyio.move_on_after(0.3) as scope:
                    await send(pieces)
                assert scope.cancelled_caught
            took = anyio.current_time() - t0
            received: list[bytes] = []

            async def drain() -> None:
                received.append(await peer_recv_all(peer, cap=len(data) + 64))

            async with anyio.create_task_group() as tg:
                tg.start_soon(drain)
                await stream.send(b"<next>")
                await stream.aclose()
    assert 0.25 <= took < 10
    assert received == [data + b"<next>"]
    assert sum(sizes) == len(data) + len(b"<next>")
    assert sizes[0] == (100 if parts else WRITE_SLICE)  # parts are not joined
    assert len(sizes) < 64  # cut short: the rest went in a write or two, not 64 slices


async def test_send_parts_joins_small_parts_and_slices_large_ones() -> None:
    small = [b"HTTP/1.1 200 OK\r\n\r\n", b"body", b""]
    large = [b"head", pattern(2 * WRITE_SLICE + 5, seed=3), b"tail"]
    with anyio.fail_after(20):
        async with connected() as (stream, peer):
            sizes = record_writes(stream)
            received: list[bytes] = []

            async def drain() -> None:
                received.append(await peer_recv_all(peer))

            async with anyio.create_task_group() as tg:
                tg.start_soon(drain)
                await stream.send_parts(small)
                await stream.send_parts(large)
                await stream.aclose()
    assert received == [b"".join(small + large)]
    # one write for the small message; the large one part by part, not joined
    assert sizes == [len(b"".join(small)), 4, WRITE_SLICE, WRITE_SLICE, 5, 4]


async def test_aclose_flushes_buffered_bytes_then_closes() -> None:
    with anyio.fail_after(CLOSE_FLUSH_TIMEOUT + 10):
        async with connected() as (stream, peer):
            sent = await fill_until_backpressure(stream, wait=0.1)
            assert stream._transport.get_write_buffer_size() > 0
            closed = anyio.Event()
            took: list[float] = []

            async def close() -> None:
                t0 = anyio.current_time()
                await stream.aclose()
                took.append(anyio.current_time() - t0)
                closed.set()

            async with anyio.create_task_group() as tg:
                tg.start_soon(close)
                await anyio.wait_all_tasks_blocked()
                assert not closed.is_set()  # aclose waits for the peer to take the bytes
                got = await peer_recv_all(peer)  # everything, then EOF
            assert got == b"".join(sent)
            assert took and took[0] < CLOSE_FLUSH_TIMEOUT
            assert stream._p.lost
            with pytest.raises(anyio.ClosedResourceError):
                await stream.send(b"x")


async def test_abort_after_a_flushing_aclose_is_harmless() -> None:
    with anyio.fail_after(CLOSE_FLUSH_TIMEOUT + 10):
        async with connected() as (stream, peer):
            sent = await fill_until_backpressure(stream, wait=0.1)
            async with anyio.create_task_group() as tg:
                tg.start_soon(stream.aclose)
                assert await peer_recv_all(peer) == b"".join(sent)
            assert stream._p.lost
            stream.abort()  # closed already: nothing to do
            with pytest.raises(anyio.ClosedResourceError):
                await stream.receive()


async def test_send_eof_half_closes_plain_tcp() -> None:
    with anyio.fail_after(5):
        async with connected() as (stream, peer):
            await stream.send(b"request")
            await stream.send_eof()
            assert await peer_recv_all(peer) == b"request"
            await peer_send(peer, b"response")
            peer.shutdown(socket.SHUT_WR)
            assert await receive_exactly(stream, len(b"response")) == b"response"
            with pytest.raises(anyio.EndOfStream):
                await stream.receive()


async def test_tcp_nodelay_on_both_sides() -> None:
    # issue 5: no delayed-ACK stalls on reused connections, client side or server side
    def nodelay(stream: ProtocolStream) -> int:
        sock = stream._transport.get_extra_info("socket")
        return int(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))

    with anyio.fail_after(5):
        (sock,) = await bind_tcp("127.0.0.1", 0)
        listener = Listener(sock)
        client = await connect_tcp("127.0.0.1", listener.local_address[1])
        server = await listener.accept()
        try:
            assert nodelay(client) and nodelay(server)
        finally:
            client.abort()
            server.abort()
            await listener.aclose()


# --- TLS ---------------------------------------------------------------------------------


Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@asynccontextmanager
async def tls_server(pki: SimpleNamespace, handler: Handler) -> AsyncIterator[int]:
    """An asyncio TLS server on loopback (trustme certificate); yields its port.
    On the way out it waits for its handlers to finish (the client's close ends them)."""
    ctx = pki.server_context(require_client_cert=False)
    running = 0

    async def guarded(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal running
        running += 1
        try:
            await handler(reader, writer)
        except (OSError, ssl.SSLError, asyncio.IncompleteReadError):
            pass  # the client aborted
        finally:
            writer.close()
            running -= 1

    server = await asyncio.start_server(guarded, "127.0.0.1", 0, ssl=ctx)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await wait_until(lambda: running == 0)
        await server.wait_closed()


def client_context(pki: SimpleNamespace) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=pki.ca_file)


async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while True:
        data = await reader.read(65536)
        if not data:
            return
        writer.write(data)
        await writer.drain()


async def test_start_tls_round_trip(pki: SimpleNamespace) -> None:
    with anyio.fail_after(10):
        async with tls_server(pki, echo) as port:
            stream = await connect_tcp("127.0.0.1", port)
            try:
                await stream.start_tls(client_context(pki), "localhost", handshake_timeout=5)
                for msg in (b"hello over TLS", pattern(200_000, seed=7)):
                    await stream.send(msg)
                    assert await receive_exactly(stream, len(msg)) == msg
                with pytest.raises(NotImplementedError):
                    await stream.send_eof()
            finally:
                await stream.aclose()
            assert stream._transport.is_closing()
            with pytest.raises(anyio.ClosedResourceError):
                await stream.receive()


@pytest.mark.skipif(
    sys.version_info >= (3, 11), reason="the TLS transport of Python 3.9 and 3.10 (3.11 rewrote it)"
)
async def test_a_tls_close_not_yet_told_to_the_protocol_loses_no_bytes(
    pki: SimpleNamespace,
) -> None:
    # Python 3.9/3.10: the peer's close_notify, read with its last bytes, closes
    # the TCP transport beneath TLS; asyncio tells our protocol a turn of the
    # loop later. Meanwhile resume_reading() and get_write_buffer_size() raised
    # AttributeError: an answer the proxy held whole was lost (a 500 event)
    read_limit = 16 * 1024
    data = pattern(4 * read_limit, seed=9)

    async def send_then_wait(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(data)
        await writer.drain()
        await reader.read()

    with anyio.fail_after(10):
        async with tls_server(pki, send_then_wait) as port:
            stream = await connect_tcp("127.0.0.1", port, read_limit=read_limit)
            try:
                await stream.start_tls(client_context(pki), "localhost", handshake_timeout=5)
                got = await receive_exactly(stream, 1)
                await wait_until(lambda: stream._p.reading_paused)
                held = len(got) + stream._p.buffered
                # the TCP connection beneath TLS closes; asyncio's TLS layer
                # hears of it (done here a turn early, as the close_notify does)
                tls = stream._transport._ssl_protocol  # type: ignore[attr-defined]
                tls._transport.abort()
                tls.connection_lost(None)
                assert not stream._p.lost  # not told yet
                got += await stream.receive(len(data))  # all that waits; no resume
                loop = asyncio.get_running_loop()
                _IdleTimer(loop, stream._transport, loop.create_future(), 5).cancel()
                with pytest.raises((anyio.EndOfStream, anyio.BrokenResourceError)):
                    await stream.receive()  # then the end, once told
                assert len(got) == held and got == data[:held]
            finally:
                await stream.aclose()


async def test_start_tls_large_send_in_slices(pki: SimpleNamespace) -> None:
    # under TLS a write becomes ciphertext in OpenSSL's memory buffer, which keeps
    # its largest size: a slice at a time keeps it small for a pooled connection
    data = pattern(4 * WRITE_SLICE + 7, seed=5)
    with anyio.fail_after(20):
        async with tls_server(pki, echo) as port:
            stream = await connect_tcp("127.0.0.1", port)
            try:
                await stream.start_tls(client_context(pki), "localhost", handshake_timeout=5)
                sizes = record_writes(stream)
                async with anyio.create_task_group() as tg:
                    tg.start_soon(stream.send, data)
                    got = await receive_exactly(stream, len(data))
            finally:
                await stream.aclose()
    assert got == data
    assert sizes == [WRITE_SLICE] * 4 + [7]


async def test_start_tls_keeps_pausing_and_resuming_reading(pki: SimpleNamespace) -> None:
    """Regression: after start_tls the protocol paused the TCP transport below
    TLS and never resumed it; a slow reader then waited forever."""
    read_limit = 16 * 1024
    data = pattern(4 * 1024 * 1024, seed=3)

    async def stream_out(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for i in range(0, len(data), BLOCK):
            writer.write(data[i : i + BLOCK])
            await writer.drain()
        await reader.read()  # until the client goes

    with anyio.fail_after(30):
        async with tls_server(pki, stream_out) as port:
            stream = await connect_tcp("127.0.0.1", port, read_limit=read_limit)
            try:
                await stream.start_tls(client_context(pki), "localhost", handshake_timeout=5)
                got = bytearray()
                paused = 0
                most = 0
                while len(got) < len(data):
                    got += await stream.receive(max_bytes=4096)
                    await anyio.lowlevel.checkpoint()  # read slowly
                    paused += stream._p.reading_paused
                    most = max(most, stream._p.buffered)
            finally:
                await stream.aclose()
    assert paused > 0  # reading did pause (and resumed, or the loop above would hang)
    assert most < read_limit + 2 * ONE_READ
    assert len(got) == len(data)
    assert got == data


async def test_start_tls_with_an_untrusted_certificate_fails(pki: SimpleNamespace) -> None:
    other = ssl.create_default_context()  # system CAs: trustme's CA is not among them
    with anyio.fail_after(10):
        async with tls_server(pki, echo) as port:
            stream = await connect_tcp("127.0.0.1", port)
            try:
                with pytest.raises(ssl.SSLCertVerificationError):
                    await stream.start_tls(other, "localhost", handshake_timeout=5)
            finally:
                stream.abort()


async def reset_after_a_message(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.read(100)
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()  # RST, with the TLS session up


@pytest.mark.parametrize("close", ["abort", "aclose"])
async def test_a_tls_stream_reset_by_its_peer_leaves_no_unclosed_transport(
    pki: SimpleNamespace, close: str
) -> None:
    # Python 3.9's TLS transport does not mark itself closed when the connection
    # is reset after the handshake: unless closed, it warns when collected
    with anyio.fail_after(10):
        async with tls_server(pki, reset_after_a_message) as port:
            stream = await connect_tcp("127.0.0.1", port)
            await stream.start_tls(client_context(pki), "localhost", handshake_timeout=5)
            await stream.send(b"hello")
            with pytest.raises((anyio.BrokenResourceError, anyio.EndOfStream)):
                while True:
                    await stream.receive()
            while not stream._p.lost:  # (no closure: it would keep the stream alive)
                await anyio.lowlevel.checkpoint()
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", ResourceWarning)
                if close == "abort":
                    stream.abort()
                else:
                    await stream.aclose()
                del stream
                for _ in range(3):  # the transport is freed a loop turn later
                    await anyio.lowlevel.checkpoint()
                    gc.collect()
    unclosed = [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)]
    assert not [m for m in unclosed if "unclosed transport" in m], unclosed


async def test_start_tls_refuses_bytes_that_came_before_the_handshake() -> None:
    ctx = ssl.create_default_context()
    with anyio.fail_after(5):
        async with connected() as (stream, peer):
            await peer_send(peer, b"220 not TLS\r\n")
            await wait_until(stream.readable_now)
            with pytest.raises(anyio.BrokenResourceError):
                await stream.start_tls(ctx, "localhost", handshake_timeout=5)
            assert not stream._p.tls  # still a plain stream


# --- listening ----------------------------------------------------------------------------


async def test_bind_tcp_port_zero_listens_on_a_free_port() -> None:
    with anyio.fail_after(5):
        socks = await bind_tcp("127.0.0.1", 0)
        try:
            assert socks
            ports = {s.getsockname()[1] for s in socks}
            assert len(ports) == 1 and 0 not in ports
            for s in socks:
                assert s.family == socket.AF_INET
                assert s.getsockname()[0] == "127.0.0.1"
                assert s.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN) == 1
        finally:
            for s in socks:
                s.close()


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.skipif(not _ipv6_loopback(), reason="no IPv6 loopback on this host")
async def test_an_ipv6_listener_takes_no_ipv4_connections() -> None:
    # as the man page says of server.host = "::": IPv6 only (0.0.0.0 is IPv4)
    with anyio.fail_after(5):
        (sock,) = await bind_tcp("::1", 0)
        try:
            assert sock.family == socket.AF_INET6
            assert sock.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY) == 1
        finally:
            sock.close()


async def test_listener_accepts_streams_with_the_client_address() -> None:
    with anyio.fail_after(5):
        (sock,) = await bind_tcp("127.0.0.1", 0)
        listener = Listener(sock)
        try:
            port = listener.local_address[1]
            assert port == sock.getsockname()[1]
            for _ in range(2):
                async with await anyio.connect_tcp("127.0.0.1", port) as client:
                    server_side = await listener.accept()
                    try:
                        peer = server_side._transport.get_extra_info("peername")
                        assert peer == client.extra(anyio.abc.SocketAttribute.local_address)
                        await client.send(b"ping")
                        assert await server_side.receive() == b"ping"
                        await server_side.send(b"pong")
                        assert await client.receive() == b"pong"
                    finally:
                        await server_side.aclose()
                    with pytest.raises(anyio.EndOfStream):
                        await client.receive()
        finally:
            await listener.aclose()


async def test_listener_aclose_wakes_a_blocked_accept() -> None:
    with anyio.fail_after(5):
        (sock,) = await bind_tcp("127.0.0.1", 0)
        listener = Listener(sock)
        outcome: list[Exception] = []

        async def accept() -> None:
            try:
                await listener.accept()
            except Exception as e:  # recorded, asserted below
                outcome.append(e)

        async with anyio.create_task_group() as tg:
            tg.start_soon(accept)
            await anyio.wait_all_tasks_blocked()
            assert not outcome  # blocked in accept
            await listener.aclose()
        assert len(outcome) == 1 and isinstance(outcome[0], anyio.ClosedResourceError)
        assert sock.fileno() == -1
        with pytest.raises(anyio.ClosedResourceError):
            await listener.accept()
        await listener.aclose()  # twice is fine


# --- connecting ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused"), True),
        (OSError(errno.ECONNREFUSED, "set errno"), True),  # a ConnectionRefusedError
        (OSError(errno.ETIMEDOUT, "[Errno 111] only in the text"), False),
        (OSError("Multiple exceptions: [Errno 111] a, [Errno 111] b"), False),
    ],
    ids=["plain-refused", "errno-refused", "errno-other", "text-only"],
)
def test_refused(error: OSError, expected: bool) -> None:
    assert refused(error) is expected


async def test_a_name_refused_at_every_address_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # the race's own verdict, not asyncio's "Multiple exceptions" text parsed back
    with refusing_port() as a, refusing_port() as b, anyio.fail_after(5):
        _addresses(monkeypatch, ("127.0.0.1", a), ("127.0.0.2", b))
        with pytest.raises(ConnectionRefusedError):
            await connect_tcp("several.invalid", 1)


async def test_connect_tcp_to_a_closed_port_is_refused() -> None:
    with refusing_port() as port:
        with anyio.fail_after(5):
            with pytest.raises(OSError) as ei:
                await connect_tcp("127.0.0.1", port)
    assert refused(ei.value)


# --- found in review ---------------------------------------------------------------------


async def test_aclose_wakes_a_sender_blocked_by_backpressure() -> None:
    # one task sends (the peer reads nothing), another closes the stream
    with anyio.fail_after(10):
        async with connected() as (stream, _peer):
            await fill_until_backpressure(stream, wait=0.1)
            outcome: list[Exception] = []

            async def sender() -> None:
                try:
                    await stream.send(block(999))
                except anyio.ClosedResourceError as e:
                    outcome.append(e)

            async with anyio.create_task_group() as tg:
                tg.start_soon(sender)
                await anyio.wait_all_tasks_blocked()
                await stream.aclose()  # flushes in vain for CLOSE_FLUSH_TIMEOUT, aborts
    assert [type(e) for e in outcome] == [anyio.ClosedResourceError]


def _tls12_server_with_early_data(
    pki: SimpleNamespace, listener: socket.socket, first: bytes, second: bytes
) -> None:
    """A blocking TLS 1.2 server (run in a thread) whose final handshake flight and
    ``first`` leave in one TCP send, then ``second``: the client's asyncio gets
    application data while completing the handshake."""
    ctx = pki.server_context(require_client_cert=False)
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    listener.settimeout(10)  # a thread cannot be cancelled: every wait is bounded
    conn, _ = listener.accept()
    with conn:
        conn.settimeout(10)
        incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        tls = ctx.wrap_bio(incoming, outgoing, server_side=True)
        while True:
            try:
                tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                if outgoing.pending:
                    conn.sendall(outgoing.read())
                data = conn.recv(65536)
                if not data:
                    raise ConnectionError("the client left during the handshake") from None
                incoming.write(data)
        tls.write(first)
        conn.sendall(outgoing.read())  # Finished + first, in one send
        tls.write(second)
        conn.sendall(outgoing.read())
        conn.recv(1)  # until the client closes


async def test_data_arriving_with_the_handshake_does_not_stall_reading(
    pki: SimpleNamespace,
) -> None:
    # Regression (Python 3.11+): application data delivered before start_tls()
    # returned paused the TCP transport under TLS, which nothing resumed.
    first, second = pattern(12_000, 1), pattern(12_000, 2)
    with anyio.fail_after(10), socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]
        async with anyio.create_task_group() as tg:
            tg.start_soon(
                anyio.to_thread.run_sync,
                _tls12_server_with_early_data,
                pki,
                listener,
                first,
                second,
            )
            stream = await connect_tcp("127.0.0.1", port, read_limit=1024)
            try:
                await stream.start_tls(client_context(pki), "127.0.0.1", 5)
                got = await receive_exactly(stream, len(first) + len(second), 4096)
            finally:
                stream.abort()
    assert got == first + second


async def test_server_head_deadline_is_a_timeout_not_a_gone_client() -> None:
    # receive(timeout=...) raises TimeoutError, an OSError: ServerConnection used
    # to take it for a closed connection (client_gone) instead of a slow client
    from goose_proxy.config import ServerConfig
    from goose_proxy.http.connection import ServerConnection

    with anyio.fail_after(10):
        [sock] = await bind_tcp("127.0.0.1", 0)
        listener = Listener(sock)
        with socket.create_connection(listener.local_address[:2]) as client:
            client.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: localhost\r\n")
            stream = await listener.accept()
            conn = ServerConnection(stream, ServerConfig(header_timeout=0.2))
            with pytest.raises(TimeoutError):
                await conn.read_request()
            assert not conn.client_gone
            await stream.aclose()
        await listener.aclose()


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@contextmanager
def _blackhole() -> Iterator[tuple[str, int]]:
    """An address whose connects hang (a listener whose backlog is full: the
    kernel drops further SYNs)."""
    with socket.socket() as lst, socket.socket() as filler:
        lst.bind(("127.0.0.3", 0))
        lst.listen(0)
        filler.connect(lst.getsockname())
        yield lst.getsockname()


def _addresses(monkeypatch: pytest.MonkeyPatch, *addresses: tuple[str, int]) -> None:
    """The running loop's name lookups answer with ``addresses``."""
    loop = asyncio.get_running_loop()

    async def getaddrinfo(*args: Any, **kwargs: Any) -> list[Any]:
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", a) for a in addresses]

    monkeypatch.setattr(loop, "getaddrinfo", getaddrinfo)


async def test_a_name_with_several_addresses_connects_to_one_that_answers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # RFC 8305: the next address is tried HAPPY_EYEBALLS_DELAY after one that
    # hangs, and at once after one that refuses; the losers are closed
    with socket.create_server(("127.0.0.1", 0)) as good, _blackhole() as hole:
        with refusing_port() as dead:
            _addresses(monkeypatch, hole, ("127.0.0.1", dead), good.getsockname())
            before = _open_fds()
            with anyio.fail_after(5):
                stream = await connect_tcp("several.invalid", 1)
                good.settimeout(2)
                accepted, _ = good.accept()  # it is this listener's connection
                accepted.close()
                await stream.aclose()
                await poll(lambda: _open_fds() <= before)


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="counts open descriptors in /proc")
@pytest.mark.parametrize("first", ["address", "blackhole", "refused"])
async def test_a_connect_cancelled_at_any_step_leaves_no_socket_open(
    monkeypatch: pytest.MonkeyPatch, first: str
) -> None:
    # asyncio's RFC 8305 race, cancelled as an attempt connects, dropped that
    # socket unclosed (until the garbage collector found it): the backend kept
    # an idle connection per client that left while the proxy was connecting
    with socket.create_server(("127.0.0.1", 0), backlog=512) as listener, _blackhole() as hole:
        with refusing_port() as dead:
            host, port = "127.0.0.1", listener.getsockname()[1]
            if first != "address":
                before_it = hole if first == "blackhole" else ("127.0.0.1", dead)
                _addresses(monkeypatch, before_it, listener.getsockname())
                host = "several.invalid"
            gc.disable()  # a dropped socket must not be rescued by the collector
            try:
                before = _open_fds()
                with anyio.fail_after(20):
                    for steps in range(12):  # cancelled after 0, 1, … loop turns
                        for _ in range(8):
                            task = asyncio.ensure_future(connect_tcp(host, port))
                            for _ in range(steps):
                                await asyncio.sleep(0)
                            task.cancel()
                            try:
                                stream = await task
                            except asyncio.CancelledError:
                                continue
                            await stream.aclose()  # it connected before the cancel came
                # the last closes complete on the loop's next turns; a dropped
                # socket never does
                with anyio.fail_after(3):
                    await poll(lambda: _open_fds() <= before)
            finally:
                gc.enable()


@pytest.mark.parametrize("host", ["lightspeed..example.com", f"{'x' * 64}.example.com"])
async def test_a_name_dns_cannot_carry_is_a_lookup_error(host: str) -> None:
    # the codec refuses it before any lookup: the same gaierror an unknown name
    # gets (the client maps that to "cannot resolve"), not a UnicodeError
    with anyio.fail_after(5):
        with pytest.raises(socket.gaierror, match="not a valid DNS name: label empty or too long"):
            await connect_tcp(host, 443)
        with pytest.raises(socket.gaierror, match="not a valid DNS name"):
            await bind_tcp(host, 0)
