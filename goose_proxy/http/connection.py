"""Server side of one client connection: h11 driven over an anyio byte stream.

Theory of operation
-------------------
:class:`ServerConnection` owns the ``h11.Connection`` and the socket. It reads
one request at a time (head and whole body, both bounded), and writes one
response: either a complete body (head and body as one message: one write
unless the body is large, see ``ProtocolStream.send_parts``) or a
stream (head, then data pieces, then the end). Deadlines:

* ``keepalive_timeout`` while waiting for the first byte of a request after the
  first one (an idle keep-alive connection is closed quietly);
* ``header_timeout`` from the connection's start (or a request's first byte)
  to the end of its head (slowloris defence), and per read while the body
  arrives.

A response sent before the request was read in full (an early 4xx, the 503
for a connection over the limit) is followed by a *lingering close*: shut our
side, then discard what the client still sends for at most
:data:`LINGER_TIMEOUT` seconds. Closing at once with unread bytes in the
kernel makes it send a TCP reset, which can destroy the error response before
the client has read it.

Malformed input raises :class:`goose_proxy.errors.ProxyError` subclasses with
the right 4xx status; the caller answers and closes. While a request is being
handled, :meth:`cancel_when_gone` has the stream's protocol cancel the
request's scope as soon as the client goes away.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Optional

import anyio
import h11

from goose_proxy import __version__, http11
from goose_proxy.config import ServerConfig
from goose_proxy.errors import (
    HeadersTooLarge,
    InvalidRequest,
    PayloadTooLarge,
    ProxyError,
    TryAgainSoon,
)
from goose_proxy.http11 import TRUSTED
from goose_proxy.streams import ProtocolStream

_now = time.monotonic  # the clock of asyncio's loop.time(), without anyio's lookups

SERVER_HEADER = (b"server", f"goose-proxy/{__version__}".encode())
_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun",
           "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")  # fmt: skip
#: the second the ``Date`` header below was made for, and that header
_date: tuple[int, tuple[bytes, bytes]] = (-1, (b"date", b""))


def date_header() -> tuple[bytes, bytes]:
    """``Date`` for a response (RFC 9110 6.6.1: a server with a clock sends
    it), in IMF-fixdate; made once a second."""
    global _date
    now = int(time.time())
    if now != _date[0]:
        t = time.gmtime(now)
        value = (
            f"{_DAYS[t.tm_wday]}, {t.tm_mday:02d} {_MONTHS[t.tm_mon - 1]} {t.tm_year} "
            f"{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d} GMT"
        )
        _date = (now, (b"date", value.encode()))
    return _date[1]


READ_SIZE = 65536
#: longest wait for the client's end after an early error response (lingering close)
LINGER_TIMEOUT = 1.0
#: the first bytes of an empty line (``data[0]`` of bytes is an int)
_CR_LF = (13, 10)
#: what a ProtocolStream raises when the connection ended (see goose_proxy.streams)
_CLOSED = (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError)


#: "200 OK": the reason phrase of each status (h11 sends none unless given one)
_REASONS = {s.value: s.phrase.encode("ascii") for s in HTTPStatus}


class ClientGone(Exception):
    """The client closed the connection (or it broke); nothing more can be sent."""


@dataclass
class Request:
    method: str
    target: str
    headers: list[tuple[bytes, bytes]]
    body: bytes = b""
    http_version: bytes = b"1.1"
    received_at: float = field(default_factory=time.monotonic)

    @property
    def path(self) -> str:
        return self.target.split("?", 1)[0]

    def header(self, name: bytes) -> Optional[str]:
        for k, v in self.headers:
            if k == name:
                return v.decode("latin-1")
        return None


def _origin_form(
    target: str, headers: list[tuple[bytes, bytes]]
) -> tuple[str, list[tuple[bytes, bytes]]]:
    """An absolute-form target (``http://host:port/path?q``) as its path and
    query, its authority as the Host (RFC 9112 §3.2.2: a server must accept
    the form and use its host, not the Host header; the Host check then sees
    that one)."""
    scheme, _, rest = target.partition("://")
    if scheme.lower() not in ("http", "https"):
        raise InvalidRequest(f"request target {target[:100]!r} is not an http URL")
    cut = min((i for i in (rest.find("/"), rest.find("?")) if i >= 0), default=len(rest))
    authority, path = rest[:cut], rest[cut:]
    if not authority or "@" in authority:
        raise InvalidRequest(f"request target {target[:100]!r} has no usable host")
    if not path.startswith("/"):
        path = "/" + path
    host = [(b"host", authority.encode("ascii", "replace"))]
    return path, [h for h in headers if h[0] != b"host"] + host


#: the request bodies held at once across a server's connections, in
#: ``max_body_size``: what arrived of a body counts until it went upstream,
#: its request is done, or its connection ends
BODIES_HELD = 4
#: a chunked body may come in ``max_body_size / CHUNK_BYTES`` chunks, at least
#: MIN_CHUNKS: every chunk costs an h11 event (about 7 µs), whatever its size
CHUNK_BYTES = 256
#: bytes per second a request body must average, after a first ``header_timeout``
#: of grace: a body dripped a byte at a time (each read within ``header_timeout``)
#: held its connection for as long as it lasted (a 16 MiB body: months). A
#: client on the same host sends at hundreds of MB/s.
BODY_MIN_RATE = 64 * 1024
MIN_CHUNKS = 1024


class BodyBudget:
    """The bytes of request bodies that a server's connections hold at once."""

    __slots__ = ("held", "limit")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.held = 0


class ServerConnection:
    """One client connection, used by one task."""

    def __init__(
        self, stream: ProtocolStream, cfg: ServerConfig, budget: Optional[BodyBudget] = None
    ) -> None:
        self.stream = stream
        self.cfg = cfg
        self.budget = budget or BodyBudget(BODIES_HELD * cfg.max_body_size)
        #: this connection's share of :attr:`budget` (see :meth:`release_body`)
        self.body_held = 0
        self.h11 = self._new_h11()
        self.requests_served = 0
        self.client_gone = False
        #: the client took nothing of its answer for send_timeout: closed without
        #: waiting for it to take the rest
        self.stalled = False
        self.bytes_sent = 0
        #: the current request is HEAD: responses carry no body
        self.head_request = False
        #: the X-Request-ID of a request refused as its head was read
        self.refused_request_id: Optional[str] = None
        #: close with a lingering close (the client may still be sending)
        self.linger = False
        #: the first bytes of the current request (to spot a HEAD h11 could not parse)
        self._prefix = b""
        #: waiting for the first byte of the next request on a kept-alive connection
        self.idle = False
        self.idle_since = 0.0  # (monotonic) when it last began to wait so
        #: the server drains: every response from now on says ``Connection: close``
        self.draining = False

    def _new_h11(self) -> h11.Connection:
        return h11.Connection(h11.SERVER, max_incomplete_event_size=self.cfg.max_header_size)

    # -- reading --

    async def _receive(self, timeout: Optional[float] = None) -> bytes:  # noqa: ASYNC109
        """The next bytes from the client; ``b""`` when it closed. Raises
        TimeoutError after ``timeout`` seconds without a byte."""
        try:
            return await self.stream.receive(READ_SIZE, timeout)
        except _CLOSED:
            self.client_gone = True
            return b""

    async def _next_event(self, deadline: Optional[float]) -> object:
        """The next h11 event, reading as needed; ``deadline`` is a ``time.monotonic()``
        time (TimeoutError once it passed)."""
        while True:
            try:
                ev = self.h11.next_event()
            except h11.RemoteProtocolError as e:
                status = e.error_status_hint
                if status == 431:
                    raise HeadersTooLarge(
                        f"request head larger than {self.cfg.max_header_size} bytes"
                    ) from None
                raise InvalidRequest(
                    f"malformed HTTP request: {http11.reason(e)}", status=status
                ) from None
            if ev is not h11.NEED_DATA:
                return ev
            self._feed(await self._receive(None if deadline is None else deadline - _now()))

    def _feed(self, data: bytes) -> None:
        """Give h11 ``data`` from the client (``b""``: the client closed).

        Empty lines before a request line are dropped, as RFC 9112 §2.2 asks
        of a server (some clients end a POST body with one more CRLF); h11
        would refuse them as "no request line received"."""
        if data and data[0] in _CR_LF and self._at_request_start():
            data = data.lstrip(b"\r\n")
            if not data:
                return
        if len(self._prefix) < 5:
            self._prefix = (self._prefix + data)[:5]
        self.h11.receive_data(data)

    def _at_request_start(self) -> bool:
        """No byte of the next request has been given to h11 yet."""
        return self.h11.their_state is h11.IDLE and not self.h11.trailing_data[0]

    async def read_request(self) -> Optional[Request]:
        """Read the next request with its whole body.

        Returns None when the client closed, or stayed idle past the keep-alive
        timeout. Raises ProxyError subclasses for malformed or oversized input
        (the caller answers, then closes), TimeoutError for a slow head or body.
        """
        cfg = self.cfg
        if self.h11.their_state is h11.DONE and self.h11.our_state is h11.DONE:
            self.h11.start_next_cycle()
            pending, closed = self.h11.trailing_data
            if pending and pending[0] in _CR_LF:
                self._restart_without_empty_lines(pending, closed)
        first = self.requests_served == 0
        self._prefix = self.h11.trailing_data[0][:5]
        if not first and not self._prefix:
            # Idle keep-alive: wait for the first byte without a head deadline
            # (ended early, the same way, when the server starts to drain).
            self.idle = True
            self.idle_since = _now()
            idle_until = self.idle_since + cfg.keepalive_timeout
            try:
                while not self._prefix:  # empty lines do not start a request
                    data = await self._receive(idle_until - _now())
                    if not data:
                        break
                    self._feed(data)
                    if self.draining and not self._prefix:
                        break  # empty lines only: no request under way to let in
            except TimeoutError:
                pass
            self.idle = False
            if not self._prefix:
                return None  # closed, or idle too long
        deadline = _now() + cfg.header_timeout
        try:
            ev = await self._next_event(deadline)
        except InvalidRequest:
            # h11 could not parse the head; its error answer must still have no
            # body if the request was a HEAD one
            self.head_request = self._prefix == b"HEAD "
            raise
        if isinstance(ev, h11.ConnectionClosed) or ev is h11.PAUSED:
            return None
        if not isinstance(ev, h11.Request):
            raise InvalidRequest("malformed HTTP request")
        self.head_request = ev.method == b"HEAD"
        headers = list(ev.headers)  # one pass over h11's Sequence (slow to iterate)
        try:
            return self._checked_request(ev, headers)
        except ProxyError:
            # its refusal echoes the client's id, as a handled request's answer does
            self.refused_request_id = next(
                (v.decode("latin-1") for k, v in headers if k == b"x-request-id"), None
            )
            raise

    def _checked_request(self, ev: h11.Request, headers: list[tuple[bytes, bytes]]) -> Request:
        """``ev`` as a :class:`Request`, or the ProxyError it is refused with."""
        cfg = self.cfg
        # h11 bounds a head that arrives in pieces (max_incomplete_event_size),
        # not one that arrives whole in a single read: count it here too.
        size = len(ev.method) + len(ev.target) + 12
        size += sum(len(k) + len(v) + 4 for k, v in headers)
        if size > cfg.max_header_size:
            raise HeadersTooLarge(f"request head larger than {cfg.max_header_size} bytes")
        if len(headers) > cfg.max_header_count:
            raise HeadersTooLarge(f"more than {cfg.max_header_count} request headers")
        if ev.http_version not in (b"1.0", b"1.1"):
            version = ev.http_version.decode("ascii", "replace")
            raise InvalidRequest(f"HTTP/{version} is not supported (use HTTP/1.1)", status=505)
        names = {k for k, _ in headers}
        if b"content-length" in names and b"transfer-encoding" in names:
            # RFC 9112 6.3: a message with both is a smuggling attempt or a broken client.
            raise InvalidRequest("request has both Content-Length and Transfer-Encoding")
        target = ev.target.decode("ascii", "replace")
        if not target.startswith("/") and "://" in target:
            target, headers = _origin_form(target, headers)
        if not target.startswith("/"):  # "*" (OPTIONS), "host:443" (CONNECT), "health"
            raise InvalidRequest(
                f"request target {target[:60]!r} is not a path: goose-proxy serves "
                "/v1/chat/completions, /v1/responses, /v1/models and /health"
            )
        if (
            ev.method == b"POST"
            and b"content-length" not in names
            and b"transfer-encoding" not in names
        ):
            # h11 reads no body then, and the body's bytes would be read as the
            # next request: say what is missing, and close
            raise InvalidRequest(
                "POST request without Content-Length or Transfer-Encoding: chunked "
                "(the length of its body is unknown)",
                status=411,
                code="length_required",
            )
        return Request(
            method=ev.method.decode("ascii", "replace"),
            target=target,
            headers=headers,
            http_version=ev.http_version,
        )

    def _restart_without_empty_lines(self, pending: bytes, closed: bool) -> None:
        """The bytes after the last request begin with empty lines (a CRLF
        after a POST body): h11 keeps them and cannot be told to skip them, so
        a fresh ``h11.Connection`` (in the state of this one after a whole
        exchange) takes the rest."""
        self.h11 = self._new_h11()
        rest = pending.lstrip(b"\r\n")
        if rest:
            self.h11.receive_data(rest)
        if closed:
            self.h11.receive_data(b"")

    async def read_body(self, req: Request) -> None:
        """Read the request body into ``req.body`` (at most ``max_body_size`` bytes).

        Raises PayloadTooLarge (413), InvalidRequest (bad framing), TimeoutError
        (a pause over ``header_timeout``, or, after a first ``header_timeout``,
        less than :data:`BODY_MIN_RATE` on average).
        """
        limit = self.cfg.max_body_size
        length = req.header(b"content-length")
        if length is not None and length.strip().isdigit() and int(length) > limit:
            raise PayloadTooLarge(f"request body larger than {limit} bytes")
        if self.h11.they_are_waiting_for_100_continue:
            # The request passed every check that needs no body: ask for it.
            # Raises ClientGone when the client already left.
            await self._send(
                self.h11.send(
                    h11.InformationalResponse(status_code=100, headers=[], reason=b"Continue")
                )
            )
        most_chunks = max(MIN_CHUNKS, limit // CHUNK_BYTES)
        body = b""
        buf: Optional[bytearray] = None  # from the second piece on: one buffer, not a list
        size = chunks = 0
        wait = self.cfg.header_timeout
        grace = _now() + wait  # then BODY_MIN_RATE on average
        while True:
            ev = await self._next_event(min(_now() + wait, grace + size / BODY_MIN_RATE))
            if isinstance(ev, h11.Data):
                data = ev.data
                size += len(data)
                if size > limit:
                    raise PayloadTooLarge(f"request body larger than {limit} bytes")
                # what arrived, not what was declared: a declared size costs
                # nothing, and a few slow uploads would reserve the whole budget
                self._hold(len(data))
                if ev.chunk_start:
                    chunks += 1
                    if chunks > most_chunks:
                        raise InvalidRequest(
                            f"request body in more than {most_chunks} chunks; send it in "
                            "larger chunks, or with a Content-Length"
                        )
                if buf is not None:
                    buf += data
                elif body:
                    buf = bytearray(body)
                    buf += data
                else:
                    body = bytes(data)
            elif isinstance(ev, h11.EndOfMessage):
                req.body = bytes(buf) if buf is not None else body
                return
            else:
                raise InvalidRequest("request body ended early")

    def _hold(self, size: int) -> None:
        """Count ``size`` more bytes of this request's body against the budget.

        Raises TryAgainSoon (503) when the server's connections hold more than
        the budget allows.
        """
        budget = self.budget
        if budget.held + size > budget.limit:
            raise TryAgainSoon(
                "too many large request bodies are being received or handled at once "
                f"(more than {budget.limit} bytes); try again in a moment"
            )
        budget.held += size
        self.body_held += size

    def release_body(self) -> int:
        """The request's body no longer counts against the budget (it went
        upstream, its request is done, or its connection is); how many bytes
        it held."""
        held, self.body_held = self.body_held, 0
        self.budget.held -= held
        return held

    def expects_continue(self) -> bool:
        """The client waits for a ``100 Continue`` before it sends the body."""
        return self.h11.they_are_waiting_for_100_continue

    def stop_idling(self) -> bool:
        """The server drains: end a wait for the next request on this kept-alive
        connection as the keep-alive timeout would (:meth:`read_request` returns
        None, the connection closes quietly). False when the connection is not
        idle, or when bytes of a request arrived before this call, which is then
        under way."""
        return self.idle and self.stream.interrupt_receive()

    def request_arriving(self) -> bool:
        """Part of a request has been received and the rest is being read (its
        head or its body): what a drain must let finish arriving."""
        h = self.h11
        if self.client_gone or self.linger or h.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
            return False  # answering already (an early error), or gone
        if h.their_state is h11.SEND_BODY:
            return True
        return h.their_state is h11.IDLE and self.next_request_here()

    def next_request_here(self) -> bool:
        """Bytes of the next request have arrived (after a whole exchange: a
        pipelined one)."""
        return bool(self.h11.trailing_data[0].lstrip(b"\r\n")) or self.stream.bytes_waiting()

    def cancel_when_gone(self, scope: Optional[anyio.CancelScope]) -> None:
        """While a request is handled: cancel ``scope`` the moment the client goes
        away (``None`` stops watching).

        The stream's protocol reports the client's FIN or a reset as it arrives;
        bytes of a pipelined next request stay queued in the stream (reading
        pauses past its read limit, so TCP pushes back on the client). End of
        input counts as gone, even a half-close: the reply could not be acted
        upon by a client that stopped talking, and a proxy that waits for it
        would keep backend work alive for nobody.
        """
        if scope is None:
            self.stream.on_gone(None)
            return

        def gone() -> None:
            self.client_gone = True
            scope.cancel()

        self.stream.on_gone(gone)

    # -- writing --

    async def _send(self, *parts: Optional[bytes]) -> None:
        """Write ``parts`` (``None`` or empty ones skipped) as one message: see
        :meth:`~goose_proxy.streams.ProtocolStream.send_parts`."""
        data = [part for part in parts if part]
        if not data:
            return
        if self.client_gone:
            raise ClientGone
        # a client that reads nothing for send_timeout while its buffer is full is
        # gone too: it would hold the exchange (and its backend connection) for ever
        timeout = self.cfg.send_timeout
        try:
            if len(data) == 1:  # a stream's pieces: no join, no sum
                size = len(data[0])
                await self.stream.send(data[0], idle_timeout=timeout)
            else:
                size = sum(len(part) for part in data)
                await self.stream.send_parts(data, idle_timeout=timeout)
        except (*_CLOSED, TimeoutError) as e:
            self.client_gone = True
            self.stalled = isinstance(e, TimeoutError)
            raise ClientGone from e
        self.bytes_sent += size

    def _head(self, status: int, headers: list[tuple[bytes, bytes]], close: bool) -> bytes:
        hdrs = [SERVER_HEADER, date_header(), *headers]
        if close or self.draining:
            hdrs.append((b"connection", b"close"))
        # every value is a constant, a request id or was parsed by h11 (see http11)
        head = h11.Response(
            status_code=status, headers=hdrs, reason=_REASONS.get(status, b""), **TRUSTED
        )
        return self.h11.send(head) or b""

    @property
    def replied(self) -> bool:
        """The current response went out whole (h11 has nothing more to send for it)."""
        return self.h11.our_state is h11.DONE or self.h11.our_state is h11.MUST_CLOSE

    def can_send_data(self) -> bool:
        return self.h11.our_state is h11.SEND_BODY and not self.client_gone

    def can_respond(self) -> bool:
        return self.h11.our_state in (h11.IDLE, h11.SEND_RESPONSE) and not self.client_gone

    async def send_response(
        self,
        status: int,
        body: bytes,
        headers: list[tuple[bytes, bytes]],
        *,
        close: bool = False,
    ) -> None:
        """A complete response: head and body as one message (one write when small)."""
        hdrs = [*headers, (b"content-length", str(len(body)).encode())]
        out = self._head(status, hdrs, close)
        data = end = b""
        if body and not self.head_request:
            data = self.h11.send(h11.Data(data=body)) or b""
        try:
            end = self.h11.send(h11.EndOfMessage()) or b""
        except h11.LocalProtocolError:
            if not self.head_request:
                raise
            # A HEAD that h11 could not parse (so it expects the body): the
            # reply is complete without it; the connection closes after it.
        self.requests_served += 1
        await self._send(out, data, end)

    async def start_stream(
        self,
        status: int,
        headers: list[tuple[bytes, bytes]],
        first: bytes = b"",
        *,
        close: bool = False,
    ) -> None:
        """Send the head of a streamed (chunked) response, with its first piece."""
        out = self._head(status, headers, close)
        data = self.h11.send(h11.Data(data=first)) if first else None
        self.requests_served += 1
        await self._send(out, data)

    async def send_data(self, data: bytes) -> None:
        await self._send(self.h11.send(h11.Data(data=data)))

    async def end_stream(self) -> None:
        await self._send(self.h11.send(h11.EndOfMessage()))

    @property
    def keep_alive(self) -> bool:
        # (h11 is DONE once a whole answer was handed to the stream, even when
        # the client never took it: a client gone is not kept)
        return (
            self.h11.our_state is h11.DONE
            and self.h11.their_state is h11.DONE
            and not self.client_gone
        )

    async def aclose(self) -> None:
        """Close the connection (shielded, bounded); lingering when :attr:`linger` is set."""
        with anyio.CancelScope(shield=True):
            if self.linger and not self.client_gone:
                with anyio.move_on_after(LINGER_TIMEOUT):
                    await self._linger()
            if self.stalled:  # it took nothing for send_timeout: no flush, a reset
                self.stream.reset()
            else:
                await self.stream.aclose()  # bounded: streams.CLOSE_FLUSH_TIMEOUT

    async def _linger(self) -> None:
        """Send our FIN, then read and drop the client's bytes until its FIN."""
        try:
            await self.stream.send_eof()
            while await self.stream.receive(READ_SIZE):
                pass
        except _CLOSED:
            pass


def error_response_parts(err: ProxyError) -> tuple[int, bytes, list[tuple[bytes, bytes]]]:
    """Status, body and headers of the OpenAI error envelope for ``err``."""
    headers = [(b"content-type", b"application/json")]
    headers += [
        (k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in err.response_headers()
    ]
    return err.status, err.to_json(), headers
