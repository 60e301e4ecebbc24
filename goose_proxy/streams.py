"""anyio byte streams over asyncio protocols: the interface of anyio, the cost of asyncio.

Both sides of goose-proxy talk through these streams: the client connections
the server accepts (:class:`Listener`) and the backend connections the upstream
client opens (:func:`connect_tcp`, then :meth:`ProtocolStream.start_tls`).

Why not anyio's own socket and TLS streams
------------------------------------------
They are general and correct, and they cost, per call, more than the proxy's
translation of a small reply: every ``receive`` switches the socket's reader on
and off (two ``epoll_ctl`` system calls), every ``send`` waits until the kernel
took all of it and then yields to the event loop once more, and anyio's TLS
stream runs the ``ssl`` memory-BIO loop in Python on top. Measured with
``benchmarks/`` (non-streaming, one client), the anyio streams and the task that
watched each client for a disconnect were a third of the proxy's CPU time.

Here one :class:`asyncio.Protocol` per connection keeps what arrives in a queue
(reading pauses above ``read_limit`` bytes, so a fast sender is held back by
TCP, never by memory; under TLS asyncio's own layer buffers about as much
again), ``receive`` returns what is queued without a trip
through the event loop, ``send`` hands the bytes to the transport and waits
only while its write buffer is above the high-water mark (backpressure), and
TLS is asyncio's own ``start_tls``. The protocol also reports the peer's end
(FIN, reset) through :meth:`ProtocolStream.on_gone` the moment it happens, so a
request can be cancelled when its client leaves without a task reading ahead.

Errors are anyio's, so callers see one vocabulary: ``EndOfStream`` when the
peer closed, ``BrokenResourceError`` (its ``__cause__`` the ``OSError`` or
``ssl.SSLError``) when the connection broke, ``ClosedResourceError`` after our
own ``aclose``. Cancellation (anyio cancel scopes on asyncio cancel the waiting
task) is re-raised; a stream whose ``send`` or ``receive`` was cancelled stays
usable. One task may receive while another sends; two receivers are an error.
"""

from __future__ import annotations

import asyncio
import errno
import functools
import ipaddress
import math
import socket
import ssl
import struct
import sys
from asyncio import sslproto
from collections import deque
from collections.abc import Sequence
from typing import Any, Callable, Optional, Union

import anyio
import anyio.abc

#: stop reading from the socket while this many received bytes wait unread
DEFAULT_READ_LIMIT = 256 * 1024
#: asyncio's write buffer high-water mark: ``send`` waits above it
WRITE_HIGH_WATER = 64 * 1024
#: a larger ``send`` goes to the transport in pieces of this size, each once the
#: one before has drained below the high-water mark: under TLS a piece becomes
#: ciphertext in a memory buffer of OpenSSL's that keeps its largest size for the
#: connection's life, and a pooled connection lives long. A send cancelled (or
#: timed out) between pieces hands over the rest at once: a send is never cut.
#: ``send_parts`` joins parts no larger than this together
WRITE_SLICE = 256 * 1024
#: what the send methods take
Buffer = Union[bytes, memoryview]
#: how long ``aclose`` waits for the write buffer to drain before it aborts
CLOSE_FLUSH_TIMEOUT = 2.0
#: socket read size under TLS (asyncio's own is 256 KiB, allocated per connection)
TLS_READ_BUFFER = 16 * 1024
#: RFC 8305's "Connection Attempt Delay" for hosts with several addresses
HAPPY_EYEBALLS_DELAY = 0.25


class AnsweredEarly(Exception):
    """The peer answered while a ``send(..., until_answer=True)`` waited for it to
    take the rest. What was not handed over is in :attr:`rest`, unsent: a
    final answer leaves the connection no good for another message, an
    interim one (HTTP's ``100 Continue``) means the peer reads on."""

    def __init__(self, rest: Sequence[memoryview] = ()) -> None:
        super().__init__()
        self.rest = list(rest)


class _Protocol(asyncio.Protocol):
    """The receiving end of one connection, read by :class:`ProtocolStream`."""

    def __init__(self, read_limit: int) -> None:
        self.transport: Optional[asyncio.Transport] = None
        self.chunks: deque[bytes] = deque()
        self.buffered = 0
        self.read_limit = read_limit
        self.reading_paused = False
        self.eof = False
        self.lost = False
        self.exc: Optional[BaseException] = None
        self.tls = False
        #: a TLS handshake is under way: the transport to pause is not known yet
        self.handshaking = False
        self.read_waiter: Optional[asyncio.Future[None]] = None
        self.write_waiter: Optional[asyncio.Future[None]] = None
        #: aclose() waiting for the flush to end in connection_lost()
        self.close_waiter: Optional[asyncio.Future[None]] = None
        self.write_paused = False
        #: a waiting send wants to know when the peer answers (see send's until_answer)
        self.wake_writer_on_data = False
        self.on_gone: Optional[Callable[[], None]] = None

    # asyncio calls these

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.chunks.append(data)
        self.buffered += len(data)
        if self.buffered >= self.read_limit and not self.reading_paused and not self.handshaking:
            self.reading_paused = True
            if self.transport is not None:
                self.transport.pause_reading()
        self._wake_reader()
        if self.wake_writer_on_data:
            self._wake_writer()

    def eof_received(self) -> bool:
        self.eof = True
        self._wake_reader()
        self._gone()
        # Plain TCP: keep the transport open, our side may still write. asyncio's
        # TLS transport cannot half-close and warns when asked to.
        return not self.tls

    def connection_lost(self, exc: Optional[BaseException]) -> None:
        self.lost = True
        if exc is not None and self.exc is None:
            self.exc = exc
        self._wake_reader()
        self.write_paused = False
        self._wake_writer()
        w = self.close_waiter
        if w is not None and not w.done():
            w.set_result(None)
        self._gone()

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        self._wake_writer()

    # helpers

    def _wake_reader(self) -> None:
        w = self.read_waiter
        if w is not None and not w.done():
            w.set_result(None)

    def _wake_writer(self) -> None:
        w = self.write_waiter
        if w is not None and not w.done():
            w.set_result(None)

    def _gone(self) -> None:
        cb, self.on_gone = self.on_gone, None
        if cb is not None:
            cb()


class ProtocolStream(anyio.abc.ByteStream):
    """A connected socket (plain or TLS) as an anyio byte stream; see the module doc."""

    def __init__(self, transport: asyncio.Transport, protocol: _Protocol) -> None:
        self._transport = transport
        self._p = protocol
        self._loop = asyncio.get_running_loop()
        self._closed = False
        transport.set_write_buffer_limits(high=WRITE_HIGH_WATER)

    def bytes_waiting(self) -> bool:
        """Received bytes wait to be read (no system call)."""
        return bool(self._p.chunks)

    def readable_now(self) -> bool:
        """Bytes or the peer's end arrived and wait to be read (no system call)."""
        p = self._p
        return bool(p.chunks) or p.eof or p.lost

    def on_gone(self, callback: Optional[Callable[[], None]]) -> None:
        """Call ``callback`` (once, from the event loop) when the peer's end arrives:
        its FIN or a broken connection. Called at once when it already did;
        ``None`` removes it."""
        p = self._p
        if callback is not None and (p.eof or p.lost):
            callback()
            return
        p.on_gone = callback

    # -- reading --

    def drop_line_ends(self) -> bool:
        """Drop the CR and LF bytes that begin what was received, unread (the
        line ends some servers send after an answer, before the next status
        line); True when nothing else waits to be read."""
        p = self._p
        chunks = p.chunks
        while chunks:
            rest = chunks[0].lstrip(b"\r\n")
            p.buffered -= len(chunks[0]) - len(rest)
            if rest:
                chunks[0] = rest
                return False
            chunks.popleft()
        return True

    def interrupt_receive(self) -> bool:
        """End the wait of a pending :meth:`receive` now, as if its timeout had
        passed (it raises TimeoutError). False when no receive waits, or bytes
        (or the peer's end) already woke it: it will return them."""
        waiter = self._p.read_waiter
        if waiter is None or waiter.done():
            return False
        _expire(waiter)
        return True

    async def receive(
        self,
        max_bytes: int = 65536,
        timeout: Optional[float] = None,  # noqa: ASYNC109
    ) -> bytes:
        """Up to ``max_bytes`` of what arrived (everything queued, joined).

        ``timeout``: raise TimeoutError when nothing arrives for that many
        seconds. This is a per-read deadline without a cancel scope (hence the
        linter's ASYNC109 is silenced): entering and leaving an anyio scope
        costs about 7 µs whether or not the read waits, while this timer is
        armed only when it has to wait. Phases that span several awaits keep
        their cancel scopes.
        """
        p = self._p
        if p.read_waiter is not None:
            raise anyio.BusyResourceError("reading from")
        while not p.chunks:
            if self._closed:
                raise anyio.ClosedResourceError
            if p.lost or p.eof:
                if p.exc is not None:
                    raise anyio.BrokenResourceError from p.exc
                raise anyio.EndOfStream
            if timeout is not None and timeout <= 0:
                raise TimeoutError
            waiter = self._loop.create_future()
            p.read_waiter = waiter
            timer = None
            if timeout is not None:
                timer = self._loop.call_later(timeout, _expire, waiter)
            try:
                await waiter
            finally:
                p.read_waiter = None
                if timer is not None:
                    timer.cancel()
        chunks = p.chunks
        data = chunks.popleft()
        if chunks and len(data) < max_bytes:
            parts = [data]
            size = len(data)
            while chunks and size + len(chunks[0]) <= max_bytes:
                nxt = chunks.popleft()
                parts.append(nxt)
                size += len(nxt)
            data = b"".join(parts)
        if len(data) > max_bytes:
            data, rest = data[:max_bytes], data[max_bytes:]
            chunks.appendleft(rest)
        p.buffered -= len(data)
        if p.reading_paused and p.buffered < p.read_limit and not p.lost:
            p.reading_paused = False
            try:
                self._transport.resume_reading()
            except AttributeError:
                # Python 3.9 and 3.10's TLS transport, for one turn of the loop
                # after the connection closed (the peer's close_notify, read
                # with the last bytes), before our connection_lost() is called:
                # its TCP transport is gone. Nothing left to read then.
                pass
        return data

    # -- writing --

    async def send(
        self,
        item: bytes,
        timeout: Optional[float] = None,  # noqa: ASYNC109
        until_answer: bool = False,
        idle_timeout: Optional[float] = None,
    ) -> None:
        """Hand ``item`` to the transport; wait while its buffer is above the
        high-water mark (the peer reads slowly). ``timeout``: raise TimeoutError
        when that wait lasts longer (see :meth:`receive`). ``idle_timeout``:
        raise TimeoutError once the peer has taken nothing of it for that long
        (a slow reader that keeps reading is waited for). ``until_answer``:
        raise :class:`AnsweredEarly` when bytes from the peer arrive during
        that wait (a server that answered before it read the whole request
        may never read the rest)."""
        if len(item) > WRITE_SLICE:
            await self._send_sliced([item], timeout, until_answer, idle_timeout)
            return
        if self._closed:
            raise anyio.ClosedResourceError
        p = self._p
        if p.lost or self._transport.is_closing():
            raise anyio.BrokenResourceError from p.exc
        self._transport.write(item)
        end = None  # (the clock is read only when the write has to wait)
        if timeout is not None and p.write_paused:
            end = self._loop.time() + timeout
        while p.write_paused and not p.lost:
            if until_answer and p.buffered:
                raise AnsweredEarly
            waiter = self._loop.create_future()
            p.write_waiter = waiter
            p.wake_writer_on_data = until_answer
            timer: Optional[Union[asyncio.TimerHandle, _IdleTimer]] = None
            if end is not None:
                timer = self._loop.call_at(end, _expire, waiter)
            elif idle_timeout is not None:
                timer = _IdleTimer(self._loop, self._transport, waiter, idle_timeout)
            try:
                await waiter
            finally:
                p.write_waiter = None
                p.wake_writer_on_data = False
                if timer is not None:
                    timer.cancel()
        if self._closed:  # aclose() ran meanwhile
            raise anyio.ClosedResourceError
        if p.exc is not None:  # set when the connection broke
            raise anyio.BrokenResourceError from p.exc

    async def send_parts(
        self,
        parts: Sequence[Buffer],
        timeout: Optional[float] = None,  # noqa: ASYNC109
        until_answer: bool = False,
        idle_timeout: Optional[float] = None,
    ) -> None:
        """:meth:`send` of ``parts`` as one message (a head and its body, say):
        joined into one write when small (one system call, one TCP segment),
        else one after another, so that a large body is not copied."""
        if sum(len(part) for part in parts) <= WRITE_SLICE:
            await self.send(b"".join(parts), timeout, until_answer, idle_timeout)
        else:
            await self._send_sliced(parts, timeout, until_answer, idle_timeout)

    async def _send_sliced(
        self,
        parts: Sequence[Buffer],
        timeout: Optional[float],  # noqa: ASYNC109
        until_answer: bool = False,
        idle_timeout: Optional[float] = None,
    ) -> None:
        """``parts`` in pieces of at most :data:`WRITE_SLICE`, each once the one
        before drained; ``timeout`` for them all, ``idle_timeout`` for each.

        Cancelled or timed out between pieces, the rest goes to the transport
        all the same, as one ``send``'s bytes always did: what the caller writes
        next (an error event, the end of a chunked body, the next response)
        must not land inside this message. Not after :class:`AnsweredEarly`,
        which carries the rest instead: the caller tells whether the peer reads
        on.
        """
        end = None if timeout is None else self._loop.time() + timeout
        views = [memoryview(part) for part in parts if part]
        i = done = 0  # views[i][:done] is handed to the transport
        try:
            while i < len(views):
                piece = views[i][done : done + WRITE_SLICE]
                left = None if end is None else end - self._loop.time()
                try:
                    await self.send(piece, left, until_answer, idle_timeout)  # type: ignore[arg-type]
                finally:  # it raises before writing only once the stream is unusable
                    done += len(piece)
                    if done == len(views[i]):
                        i, done = i + 1, 0
        except AnsweredEarly:
            raise AnsweredEarly(
                [views[i][done:], *views[i + 1 :]] if i < len(views) else []
            ) from None
        except BaseException:
            if i < len(views) and not (
                self._closed or self._p.lost or self._transport.is_closing()
            ):
                for rest in (views[i][done:], *views[i + 1 :]):
                    self._transport.write(rest)
            raise

    async def send_eof(self) -> None:
        if self._p.tls:
            raise NotImplementedError("a TLS stream cannot half-close")
        if self._closed or self._p.lost:
            return
        try:
            self._transport.write_eof()
        except OSError:
            pass

    # -- TLS --

    async def start_tls(
        self, ctx: ssl.SSLContext, server_hostname: str, handshake_timeout: float
    ) -> None:
        """Upgrade to TLS (client side). Raises ssl.SSLError, OSError, BrokenResourceError."""
        p = self._p
        if p.chunks:
            raise anyio.BrokenResourceError("bytes arrived before the TLS handshake")
        if p.lost or p.eof:
            raise anyio.BrokenResourceError from p.exc
        p.tls = True
        # Python 3.11+ can hand over data that came with the server's last
        # handshake message before _start_tls() returns, while p.transport is
        # still the TCP transport under TLS: no pausing until the TLS one is known.
        p.handshaking = True
        try:
            transport = await _start_tls(
                self._loop, self._transport, p, ctx, server_hostname, handshake_timeout
            )
        finally:
            p.handshaking = False
        if transport is None:  # the connection closed during the handshake
            raise anyio.BrokenResourceError from p.exc
        # asyncio does not call connection_made() again: the protocol must pause
        # the TLS transport from now on, not the TCP one beneath it
        p.transport = transport
        self._transport = transport
        transport.set_write_buffer_limits(high=WRITE_HIGH_WATER)
        if p.buffered >= p.read_limit and not p.reading_paused:
            p.reading_paused = True
            transport.pause_reading()

    # -- closing --

    def abort(self) -> None:
        """Close at once, dropping unsent bytes (no TLS close_notify)."""
        self._closed = True
        self._abort_transport()

    def reset(self) -> None:
        """Close at once with a TCP reset (``SO_LINGER`` 0): nothing still queued,
        in our buffer or the kernel's, is sent; the peer learns at once that
        its answer was cut, and the kernel frees the queue (a plain close would
        keep sending it, for a peer that takes nothing, until TCP gives up)."""
        sock = self._transport.get_extra_info("socket")
        if sock is not None and not self._p.lost:
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            except OSError:  # not a TCP socket, or already gone: a plain abort
                pass
        self.abort()

    def _abort_transport(self) -> None:
        if not self._p.lost or not self._transport.is_closing():
            # lost but not closing: Python 3.9's TLS transport when its connection
            # was reset after the handshake; it would warn "unclosed transport"
            # when collected (an abort is a no-op on it; on a finished plain
            # transport it would fail)
            self._transport.abort()

    async def aclose(self) -> None:
        """Close: unsent bytes are flushed first (TCP), for at most
        :data:`CLOSE_FLUSH_TIMEOUT` seconds; a TLS stream closes at once
        (like ``TLSStream(standard_compatible=False)``)."""
        if self._closed:
            return
        self._closed = True
        p = self._p
        t = self._transport
        p._wake_reader()  # a task blocked in receive() sees ClosedResourceError
        if p.lost or p.tls:
            self._abort_transport()
            return
        t.close()  # flushes what is buffered, then closes
        if not t.get_write_buffer_size():
            return
        waiter = self._loop.create_future()
        p.close_waiter = waiter
        try:
            with anyio.move_on_after(CLOSE_FLUSH_TIMEOUT):
                await waiter
        finally:
            p.close_waiter = None
            if not p.lost:
                t.abort()


class _LeanSSLProtocol(sslproto.SSLProtocol):
    """asyncio's TLS protocol with a :data:`TLS_READ_BUFFER` socket read buffer.

    From Python 3.11 on, every TLS connection asyncio makes allocates and
    zero-fills a ``max_size`` (256 KiB) buffer for its socket reads and keeps it
    for its whole life: 128 MB of resident memory for the 500 concurrent
    streams of the benchmark's ``slow-500`` scenario. A TLS record carries at
    most 16 KiB, so the smaller buffer costs a few more reads of a long stream
    and nothing else. (The older implementation of Python 3.9 and 3.10 keeps
    no such buffer and ignores this attribute.)
    """

    max_size = TLS_READ_BUFFER


async def _start_tls(
    loop: asyncio.AbstractEventLoop,
    transport: asyncio.Transport,
    protocol: asyncio.Protocol,
    ctx: ssl.SSLContext,
    server_hostname: str,
    handshake_timeout: float,
) -> asyncio.Transport:
    """``loop.start_tls()`` (client side) with :class:`_LeanSSLProtocol`; the same
    steps as asyncio's own."""
    waiter = loop.create_future()
    tls = _LeanSSLProtocol(
        loop,
        protocol,
        ctx,
        waiter,
        server_side=False,
        server_hostname=server_hostname,
        ssl_handshake_timeout=math.ceil(handshake_timeout),  # typeshed: int
        call_connection_made=False,
    )
    transport.pause_reading()  # no data_received() before connection_made()
    transport.set_protocol(tls)
    made = loop.call_soon(tls.connection_made, transport)
    resumed = loop.call_soon(transport.resume_reading)
    try:
        await waiter
    except BaseException:
        transport.close()
        made.cancel()
        resumed.cancel()
        raise
    return tls._app_transport


def _expire(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError())


class _IdleTimer:
    """Expires ``waiter`` (TimeoutError) once what waits to reach the peer (the
    transport's buffer and the kernel's send queue) has not shrunk for
    ``timeout`` seconds: the peer took nothing. Looked at every eighth of
    ``timeout`` (so it expires up to that much later than the last shrink
    it saw; a shrink between two looks counts from the second), not on every
    write.
    (The transport's buffer alone moves in steps of megabytes: the kernel
    reports a socket writable only once a good part of its queue is gone.)"""

    __slots__ = (
        "_handle",
        "_loop",
        "_moved",
        "_next",
        "_size",
        "_step",
        "_timeout",
        "_transport",
        "_waiter",
    )

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        transport: asyncio.WriteTransport,
        waiter: asyncio.Future[None],
        timeout: float,
    ) -> None:
        self._loop, self._transport, self._waiter = loop, transport, waiter
        self._timeout = timeout
        self._step = timeout / 8
        self._size = self._pending()
        self._moved = loop.time()  # when the peer was last seen taking something
        # on a fixed grid: rescheduling from each check would add the loop's lag
        self._next = self._moved + self._step
        self._handle = loop.call_at(self._next, self._check)

    def _pending(self) -> int:
        try:
            size = self._transport.get_write_buffer_size()
        except AttributeError:  # a closed TLS connection (see ProtocolStream.receive)
            return 0
        sock = self._transport.get_extra_info("socket")
        if sock is None:
            return size
        try:
            import fcntl
            import termios

            queued = fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0\0\0\0")
        except (ImportError, AttributeError, OSError):  # not Linux: the buffer alone
            return size
        return size + int.from_bytes(queued, sys.byteorder)

    def _check(self) -> None:
        now = self._loop.time()
        size = self._pending()
        if size < self._size:  # the peer took some: it is slow, not gone
            self._moved = now
        elif now - self._moved >= self._timeout - self._step / 2:
            _expire(self._waiter)
            return
        self._size = size
        self._next += self._step
        if self._next <= now:  # the loop was held up: no run of catch-up checks
            self._next = now + self._step
        self._handle = self._loop.call_at(self._next, self._check)

    def cancel(self) -> None:
        self._handle.cancel()


def refused(e: OSError) -> bool:
    """True when :func:`connect_tcp` failed because the connection was refused (at
    every address of the host: see :func:`_connect_first`)."""
    return isinstance(e, ConnectionRefusedError)


def _stream(transport: asyncio.BaseTransport, protocol: asyncio.BaseProtocol) -> ProtocolStream:
    assert isinstance(protocol, _Protocol)
    return ProtocolStream(transport, protocol)  # type: ignore[arg-type]


async def connect_tcp(
    host: str, port: int, *, read_limit: int = DEFAULT_READ_LIMIT
) -> ProtocolStream:
    """Open a TCP connection (``TCP_NODELAY`` is set by asyncio). Tries a host's
    several addresses the RFC 8305 way (:func:`_connect_first`). Raises OSError
    (``socket.gaierror`` for DNS; EMFILE rather than that when a lookup failed
    for want of descriptors)."""
    loop = asyncio.get_running_loop()
    if _is_address(host):  # no lookup: not to a thread either
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_NUMERICHOST)
    else:
        infos = await _getaddrinfo(loop, host, port, type=socket.SOCK_STREAM)
    sock = await _connect_first(loop, _interleaved(infos))
    try:
        transport, protocol = await loop.create_connection(lambda: _Protocol(read_limit), sock=sock)
    except BaseException:
        sock.close()
        raise
    return _stream(transport, protocol)


async def _getaddrinfo(
    loop: asyncio.AbstractEventLoop, host: Optional[str], port: int, **kw: Any
) -> list[_AddrInfo]:
    """``loop.getaddrinfo``, with a name that cannot be encoded for DNS (an empty
    or over-long label: ``a..example.com``) a ``socket.gaierror`` as any
    unknown name is, not the codec's ``UnicodeError``.

    Out of file descriptors, glibc says a name is unknown (it could open
    neither ``/etc/hosts`` nor a DNS socket): that is told by opening a socket,
    before the lookup and after it fails, and is raised as the OSError
    (EMFILE); a name "unknown" while descriptors ran out only in between is
    looked up once more."""
    named = host is not None and not _is_address(host)
    if named:
        _out_of_descriptors()
    try:
        return await _lookup(loop, host, port, **kw)
    except socket.gaierror as e:
        if not named or e.errno != socket.EAI_NONAME:
            raise
        return await _lookup(loop, host, port, **kw)  # descriptors ran out meanwhile?


async def _lookup(
    loop: asyncio.AbstractEventLoop, host: Optional[str], port: int, **kw: Any
) -> list[_AddrInfo]:
    try:
        return await loop.getaddrinfo(host, port, **kw)
    except UnicodeError as e:
        why = str(e).rpartition("UnicodeError: ")[2].rstrip(")") or "cannot be encoded"
        raise socket.gaierror(socket.EAI_NONAME, f"not a valid DNS name: {why}") from None
    except socket.gaierror:
        _out_of_descriptors()
        raise


def _out_of_descriptors() -> None:
    """Raise the OSError (EMFILE, ENFILE) when this process cannot open a socket
    now: a lookup that failed then failed for that, not for the name."""
    try:
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM).close()
    except OSError as e:
        if e.errno in (errno.EMFILE, errno.ENFILE):
            raise e from None


def _is_address(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


_AddrInfo = tuple[Any, Any, Any, Any, Any]


def _interleaved(infos: Sequence[_AddrInfo]) -> list[_AddrInfo]:
    """``infos`` without repeats, the address families taking turns, starting with
    the first's (RFC 8305 §4)."""
    seen: set[Any] = set()
    by_family: dict[Any, list[_AddrInfo]] = {}
    for info in infos:
        if info[4] not in seen:
            seen.add(info[4])
            by_family.setdefault(info[0], []).append(info)
    queues = list(by_family.values())
    out: list[_AddrInfo] = []
    while queues:
        out += [q.pop(0) for q in queues]
        queues = [q for q in queues if q]
    return out


async def _connect_first(loop: asyncio.AbstractEventLoop, infos: list[_AddrInfo]) -> socket.socket:
    """A socket connected to the first of ``infos`` that answers (RFC 8305: the
    next attempt starts :data:`HAPPY_EYEBALLS_DELAY` after the one before, or
    as soon as it fails); every other socket closed, the winner too when this
    is cancelled. (asyncio's own race dropped a socket unclosed when cancelled
    just as it connected: the backend kept an idle connection until the
    garbage collector found the socket.)"""
    if not infos:
        raise OSError("getaddrinfo returned no address")
    attempts: list[asyncio.Task[socket.socket]] = []
    errors: list[OSError] = []
    winner: Optional[socket.socket] = None
    try:
        left = list(infos)
        while winner is None:
            if left:
                attempts.append(loop.create_task(_connect_one(loop, left.pop(0))))
            running = [t for t in attempts if not t.done()]
            if not running:
                break
            done, _ = await asyncio.wait(
                running,
                timeout=HAPPY_EYEBALLS_DELAY if left else None,
                return_when=asyncio.FIRST_COMPLETED,
            )
            for task in done:
                exc = task.exception()
                if exc is None:
                    winner = winner or task.result()
                elif isinstance(exc, OSError):
                    errors.append(exc)
                else:
                    raise exc
    finally:
        for task in attempts:  # the others, and all of them when cancelled
            if not task.done():
                task.cancel()
            task.add_done_callback(functools.partial(_close_unless, winner))
    if winner is not None:
        return winner
    if len({str(e) for e in errors}) == 1 or all(
        isinstance(e, ConnectionRefusedError) for e in errors
    ):
        raise errors[0]  # (refused everywhere: a ConnectionRefusedError, see refused())
    raise OSError(f"Multiple exceptions: {', '.join(str(e) for e in errors)}")


async def _connect_one(loop: asyncio.AbstractEventLoop, info: _AddrInfo) -> socket.socket:
    family, kind, proto, _, address = info
    sock = socket.socket(family, kind, proto)
    try:
        sock.setblocking(False)
        await loop.sock_connect(sock, address)
    except BaseException:
        sock.close()
        raise
    return sock


def _close_unless(winner: Optional[socket.socket], task: asyncio.Task[socket.socket]) -> None:
    """A finished attempt's socket closed, unless it is the one returned."""
    if not task.cancelled() and task.exception() is None and task.result() is not winner:
        task.result().close()


class Listener:
    """Accepts connections on a listening socket and yields them as streams."""

    def __init__(self, sock: socket.socket, read_limit: int = DEFAULT_READ_LIMIT) -> None:
        sock.setblocking(False)
        self.socket = sock
        self._read_limit = read_limit
        self._loop = asyncio.get_running_loop()
        self._waiter: Optional[asyncio.Future[None]] = None
        self._closed = False

    @property
    def local_address(self) -> Any:
        return self.socket.getsockname()

    def _readable(self) -> None:
        w = self._waiter
        if w is not None and not w.done():
            w.set_result(None)

    async def accept(self) -> ProtocolStream:
        """The next connection. Raises ClosedResourceError once closed, OSError
        (EMFILE and friends) when the system refuses."""
        while True:
            if self._closed:
                raise anyio.ClosedResourceError
            try:
                conn, _ = self.socket.accept()
                break
            except (BlockingIOError, InterruptedError):
                pass
            waiter = self._waiter = self._loop.create_future()
            self._loop.add_reader(self.socket.fileno(), self._readable)
            try:
                await waiter
            finally:
                self._waiter = None
                if not self._closed:
                    self._loop.remove_reader(self.socket.fileno())
        conn.setblocking(False)  # asyncio's transport sets TCP_NODELAY
        try:
            transport, protocol = await self._loop.connect_accepted_socket(
                lambda: _Protocol(self._read_limit), conn
            )
        except BaseException:
            conn.close()
            raise
        return _stream(transport, protocol)

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._waiter is not None:
            self._loop.remove_reader(self.socket.fileno())
            self._readable()
        self.socket.close()


async def bind_tcp(host: str, port: int, backlog: int = 4096) -> list[socket.socket]:
    """Listening sockets for every address of ``host`` (port 0: one free port
    shared by all of them). Raises OSError (``socket.gaierror`` for a bad name)."""
    loop = asyncio.get_running_loop()
    infos = await _getaddrinfo(
        loop,
        host or None,
        port,
        type=socket.SOCK_STREAM,
        flags=socket.AI_PASSIVE | socket.AI_ADDRCONFIG,
    )
    socks: list[socket.socket] = []
    seen: set[tuple[int, object]] = set()
    try:
        for family, _, proto, _, addr in infos:
            if (family, addr[0]) in seen:
                continue
            seen.add((family, addr[0]))
            s = socket.socket(family, socket.SOCK_STREAM, proto)
            socks.append(s)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            if port == 0 and len(socks) > 1:
                addr = (addr[0], socks[0].getsockname()[1], *addr[2:])
            s.bind(addr)
            s.listen(backlog)
    except BaseException:
        for s in socks:
            s.close()
        raise
    return socks
