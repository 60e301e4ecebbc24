"""The backend client: HTTP/1.1 over h11 on goose_proxy.streams, mTLS, keep-alive pool.

Theory of operation
-------------------
``UpstreamClient.post()`` is an async context manager that yields an
:class:`UpstreamResponse` once the backend's response head has arrived. The
phases have their own deadlines:

* connect (TCP, then an optional CONNECT tunnel, then TLS): ``connect_timeout``,
  a cancel scope, itself inside
* the head deadline ``backend.timeout``: from the start until the response head
  (504 when it passes); a cancel scope while connecting, then a timeout on each
  write and read (no scope on the hot path);
* body reads: ``stream_idle_timeout`` per read, so a long healthy stream is never
  cut, but a stalled one is.

Exceptions from the OS, ssl, anyio and h11 are turned into
:mod:`goose_proxy.errors` classes in one place, :class:`_mapped`, naming the phase.

Leaving the context manager normally reads what is left of the body (briefly,
see :meth:`UpstreamResponse.drain`) so that the connection can go back to the
pool, which it does only when both h11 sides finished the cycle. An idle one
is dropped when it is older than ``pool_idle_timeout``, when anything arrived
on it (the server hung up), or when the client certificate was reloaded since
it was made. A request given up (the client went away, a deadline, an error)
aborts its connection: unsent bytes are dropped, so the backend never gets a
complete request that nobody waits for.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
import re
import socket
import ssl
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Callable, Literal, Optional
from urllib.parse import urlsplit

import anyio
import h11

from goose_proxy import __version__, http11
from goose_proxy.config import BackendConfig, is_secret_header
from goose_proxy.errors import (
    HOST_LIMITS,
    HostLimitReached,
    ProxyError,
    UpstreamCertificateError,
    UpstreamClosed,
    UpstreamConnectError,
    UpstreamError,
    UpstreamNotAResponse,
    UpstreamProtocolError,
    UpstreamProxyError,
    UpstreamTimeout,
    UpstreamTLSError,
)
from goose_proxy.http11 import TRUSTED
from goose_proxy.streams import AnsweredEarly, Buffer, ProtocolStream, connect_tcp, refused
from goose_proxy.upstream.chunked import ChunkedDecoder
from goose_proxy.upstream.proxy import ProxyRoute, open_tunnel, proxy_for
from goose_proxy.upstream.tls import ClientTLS

log = logging.getLogger("goose_proxy.upstream")

#: what may come before an event stream's first field (a BOM, blank lines), and
#: how that field begins (a JSON body begins with none of these)
_BLANK = b"\xef\xbb\xbf\r\n"
_SSE_START = re.compile(rb"(?:event|data|id|retry)?:")
_BOM = b"\xef\xbb\xbf"
_SNIFF_SIZE = 6  # len(b"retry:")
#: read ahead at most this much for it (a body of nothing but blank lines is no stream)
_SNIFF_LIMIT = 64 * 1024
#: the Content-Types a body came under wrongly, warned about once each
_mislabels: set[tuple[str, str]] = set()
#: what may come before a JSON body's first byte (with a BOM's bytes)
_JSON_BLANK = _BLANK + b" \t"

USER_AGENT = f"goose-proxy/{__version__}".encode()
#: bodies are read as they are sent: without this header any coding would do
#: (RFC 9110 §12.5.3), and one that is not decoded garbles the answer
IDENTITY = (b"accept-encoding", b"identity")
UA_HEADER = (b"user-agent", USER_AGENT)
#: a pooled connection that fails without a byte of answer is retried (the
#: backend's keep-alive timeout closed it as the request went out) only when
#: the failure came within this many seconds of the request's end: later, the
#: backend had the request and was working on it
RACE_WINDOW = 1.0
_now = time.monotonic  # asyncio's loop.time() clock


def _boot_clock() -> Callable[[], float]:
    """The clock of a pooled connection's idle age: Linux's CLOCK_BOOTTIME,
    which goes on while the host is suspended (monotonic stops: a connection
    pooled just before a night's sleep was taken as fresh on waking, its
    network path gone, and its request waited backend.timeout for a 504)."""
    boottime = getattr(time, "CLOCK_BOOTTIME", None)
    if boottime is None:
        return time.monotonic
    try:
        time.clock_gettime(boottime)
    except OSError:
        return time.monotonic
    return functools.partial(time.clock_gettime, boottime)


_idle_clock = _boot_clock()


def _seconds(n: float) -> str:
    """``1 second``, ``0.5 seconds``, ``30 seconds``."""
    return f"{n:g} second" if n == 1 else f"{n:g} seconds"


READ_SIZE = 65536
#: after the answer was taken: how long the rest of its body (its end, mostly)
#: may take to come, and how much of it may come, for the connection to be
#: pooled; a backend that keeps the body open longer costs its connection.
#: The request waits for it (its client's next request waits meanwhile: so
#: the next request finds the connection pooled, as 500 concurrent slow
#: streams measured); a client that leaves meanwhile leaves it to the
#: background
DRAIN_GRACE = 0.2
DRAIN_LIMIT = 65536


def _in_race_window(conn: Connection) -> bool:
    """The request on ``conn`` went out in full at most :data:`RACE_WINDOW` ago
    (or not in full: the server closed as it went out)."""
    return conn.sent_at is None or _now() - conn.sent_at <= RACE_WINDOW


@dataclass(frozen=True)
class Endpoint:
    scheme: str
    host: str
    port: int
    base_path: str
    #: the HTTP proxy the connections go through (its redacted URL), if any
    via: str = ""

    @classmethod
    def parse(cls, url: str) -> Endpoint:
        u = urlsplit(url)
        if u.scheme not in ("http", "https") or not u.hostname:
            raise ValueError(f"not an http(s) URL: {url!r}")
        port = u.port or (443 if u.scheme == "https" else 80)
        ep = cls(u.scheme, u.hostname, port, u.path.rstrip("/"))
        try:  # checked once here: requests send them without h11's checks
            h11.Request(
                method=b"POST",
                target=(ep.base_path + "/responses").encode("ascii"),
                headers=[(b"host", ep.authority.encode("ascii"))],
            )
        except (UnicodeEncodeError, h11.LocalProtocolError):
            raise ValueError(f"not a valid backend URL for HTTP/1.1: {url!r}") from None
        return ep

    @property
    def where(self) -> str:
        """``host:port`` for messages, and the proxy when there is one: a
        connection that breaks may have broken there."""
        via = f" (through proxy {self.via})" if self.via else ""
        return f"{self.host}:{self.port}{via}"

    @property
    def authority(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        default = 443 if self.scheme == "https" else 80
        return host if self.port == default else f"{host}:{self.port}"


# --- exception mapping: the one place --------------------------------------------


#: OpenSSL's X509_V_ERR_HOSTNAME_MISMATCH and X509_V_ERR_IP_ADDRESS_MISMATCH
_NAME_MISMATCH = (62, 64)


class _ServerCertificateError(UpstreamCertificateError):
    """The backend's certificate is refused (by us): our own certificate's dates
    have nothing to do with it."""


def _tls_error(prefix: str, e: ssl.SSLError) -> UpstreamTLSError:
    """The error for a TLS failure ``e``, its message ``prefix: why``; a certificate
    refused either way is an :class:`UpstreamCertificateError` (no use retrying)."""
    if isinstance(e, ssl.SSLCertVerificationError):
        if e.verify_code in _NAME_MISMATCH:
            why = f"the backend's server certificate is for another host name ({e.verify_message})"
        else:
            why = f"the backend's server certificate is not trusted ({e.verify_message})"
        return _ServerCertificateError(f"{prefix}: {why}")
    reason = (e.reason or str(e)).upper()
    if "ALERT" in reason and any(
        k in reason for k in ("CERTIFICATE", "UNKNOWN_CA", "ACCESS_DENIED", "HANDSHAKE_FAILURE")
    ):
        why = f"the backend rejected the client certificate ({e.reason})"
        return UpstreamCertificateError(f"{prefix}: {why}")
    if reason == "WRONG_VERSION_NUMBER":  # no TLS record came back: a plain server's answer
        hint = "the backend does not speak TLS here; does backend.endpoint mean http://?"
        return UpstreamTLSError(f"{prefix}: TLS error ({e.reason}: {hint})")
    return UpstreamTLSError(f"{prefix}: TLS error ({e.reason or e})")


#: what an answer over plain HTTP whose first byte is a control character (a TLS
#: record, an HTTP/2 frame) is told
_BINARY_HINT = " (a TLS or HTTP/2 server? does backend.endpoint mean https://?)"


def _while(phase: str) -> str:
    return "during the TLS handshake" if phase == "TLS handshake" else f"while {phase}"


def _ends_the_connection(head: h11.Response) -> bool:
    """The response says the server closes the connection after it."""
    if head.http_version == b"1.0":
        return not any(n == b"connection" and b"keep-alive" in v.lower() for n, v in head.headers)
    return any(n == b"connection" and b"close" in v.lower() for n, v in head.headers)


def _map_io_error(e: BaseException, phase: str, ep: Endpoint) -> Optional[ProxyError]:
    """The ProxyError for an I/O exception raised in ``phase``; None to let it through
    (ProxyError, TimeoutError (an OSError: the caller words it), cancellation)."""
    if isinstance(e, (ProxyError, TimeoutError)) or not isinstance(e, Exception):
        return None
    where = ep.where
    if isinstance(e, ssl.SSLError):
        return _tls_error(f"{phase} with backend {where} failed", e)
    if isinstance(e, socket.gaierror):
        return UpstreamConnectError(f"cannot resolve backend host {ep.host!r} (DNS: {e.strerror})")
    if isinstance(e, OSError) and e.errno in HOST_LIMITS:  # this host's limit, not the backend
        return HostLimitReached(f"open a connection to backend {where}", e)
    if isinstance(e, OSError) and refused(e):
        return UpstreamConnectError(f"connection refused by backend {where}")
    if isinstance(e, (anyio.EndOfStream, anyio.BrokenResourceError, ConnectionError)):
        cause = e.__cause__ if isinstance(e, anyio.BrokenResourceError) else e
        if isinstance(cause, ssl.SSLError):
            return _tls_error(f"{phase} with backend {where} failed", cause)
        return UpstreamClosed(f"backend {where} closed the connection {_while(phase)}")
    if isinstance(e, h11.RemoteProtocolError):
        why = http11.reason(e)
        if why == "illegal request line":  # h11's words for a first byte no status line has
            why = "not HTTP/1.1 text" + (_BINARY_HINT if ep.scheme == "http" else "")
        return UpstreamProtocolError(f"backend {where} sent invalid HTTP {_while(phase)}: {why}")
    if isinstance(e, OSError):
        return UpstreamConnectError(f"cannot connect to backend {where}: {e.strerror or e}")
    return None


class _mapped:
    """Map I/O exceptions raised in ``phase`` to ProxyError subclasses (the one place).

    A class, not a generator-based context manager: it sits on every backend
    read and write.
    """

    __slots__ = ("_ep", "_phase")

    def __init__(self, phase: str, ep: Endpoint) -> None:
        self._phase = phase
        self._ep = ep

    def __enter__(self) -> None:
        return None

    def __exit__(self, typ: object, exc: Optional[BaseException], tb: object) -> Literal[False]:
        if exc is None:
            return False
        mapped = _map_io_error(exc, self._phase, self._ep)
        if mapped is None:
            return False
        raise mapped from exc


def _head_for_log(headers: list[tuple[bytes, bytes]]) -> str:
    """Headers for a DEBUG line; credentials shown as ``***`` (bodies never logged)."""
    shown = []
    for k, v in headers:
        name = k.decode("latin-1")
        shown.append(f"{name}={'***' if is_secret_header(name) else v.decode('latin-1')}")
    return " ".join(shown)


# --- one connection ------------------------------------------------------------------


#: the h11 states of a connection between exchanges (both sides in one of them)
_AT_REST = frozenset({h11.IDLE, h11.DONE, h11.MUST_CLOSE, h11.CLOSED})


class Connection:
    """One HTTP/1.1 connection to the backend (possibly through TLS and a tunnel)."""

    def __init__(
        self, stream: ProtocolStream, ctx: Optional[ssl.SSLContext], max_event: int
    ) -> None:
        self.stream = stream
        self.ctx = ctx
        self.h11 = h11.Connection(h11.CLIENT, max_incomplete_event_size=max_event)
        self.max_event = max_event
        self.idle_since = _idle_clock()
        self.received = False  # any byte from the server for the current request
        #: no byte of the current answer yet, but for empty lines, which are skipped
        self.awaiting_head = False
        self.eof = False
        self.requests = 0
        #: when the current request was all sent (None: not yet), for the retry
        self.sent_at: Optional[float] = None
        #: the backend answered before it took the whole request: not reusable
        self.cut_short = False

    def unread(self) -> bool:
        """Bytes from the server wait to be parsed (no system call)."""
        return self.stream.bytes_waiting() or bool(self.h11.trailing_data[0])

    def looks_dead(self) -> bool:
        """An idle keep-alive connection that received something (the server's FIN,
        a reset, stray bytes) is not reusable; the protocol saw it without a syscall."""
        return self.stream.readable_now()

    async def next_event(self, deadline: Optional[float] = None) -> object:
        """The next h11 event; TimeoutError once ``deadline`` (``time.monotonic()``)
        passes while reading."""
        while True:
            ev = self.h11.next_event()
            if ev is not h11.NEED_DATA:
                return ev
            timeout = None if deadline is None else deadline - _now()
            try:
                data = await self.stream.receive(READ_SIZE, timeout)
            except anyio.EndOfStream:
                data = b""
            if data and self.awaiting_head:
                # Line ends before a status line: a stray CRLF after the previous
                # answer (some servers end a body so), which h11 refuses ("no
                # response line received"); skipped as a server skips them
                # before a request line (RFC 9112 §2.2)
                data = data.lstrip(b"\r\n")
                if not data:
                    continue
                self.awaiting_head = False
            if data:
                self.received = True
            else:
                self.eof = True
            self.h11.receive_data(data)

    def close(self, reset: Optional[bool] = None) -> None:
        """Close at once (with a reset, or without one, when ``reset`` says).
        Nothing we still meant to send matters once we close a backend
        connection (a request given up, an idle one expired): unsent bytes
        are dropped rather than flushed, so the backend sees the end now
        and never a complete request nobody waits for. In the middle of an
        exchange (a request given up, an answer not read to its end) that takes
        a reset (``SO_LINGER`` 0): a plain close leaves the kernel to send what
        it already holds of the body (megabytes), then a FIN, and the backend
        got the whole request seconds after its client left; a backend still
        answering learns at once that nobody reads. An idle connection, or one
        whose exchange is over, ends with a FIN. No I/O to wait for, so no
        ``await``: it cannot be interrupted half-way by a cancellation."""
        h = self.h11
        if reset is None:
            reset = h.our_state not in _AT_REST or h.their_state not in _AT_REST
        if reset:
            self.stream.reset()
        else:
            self.stream.abort()


def _warn_mislabel(what: str, read_as: str, label: Optional[str]) -> None:
    """Warn that the backend sent ``what`` under the Content-Type ``label``, read
    as ``read_as``: once for each (of at most 16)."""
    shown = (label or "")[:60]
    key = (what, shown)
    if key not in _mislabels and len(_mislabels) < 16:
        _mislabels.add(key)
        log.warning(
            "backend sent %s labelled Content-Type %r: read as %s (said once for each label)",
            what,
            shown,
            read_as,
        )


def _without_bom(first: bytes) -> bytes:
    """An event stream's first bytes without a UTF-8 BOM, which is no part of
    its first field (the SSE standard skips one)."""
    return first[len(_BOM) :] if first.startswith(_BOM) else first


class UpstreamResponse:
    """The backend's answer: status and headers now, the body as it arrives."""

    def __init__(
        self, conn: Connection, ev: h11.Response, ep: Endpoint, idle_timeout: float
    ) -> None:
        self._conn = conn
        self._ep = ep
        self._idle = idle_timeout
        self.status: int = ev.status_code
        self.headers: list[tuple[bytes, bytes]] = list(ev.headers)
        #: the media type, lower case, without parameters ("" if none)
        self.content_type = (self.header(b"content-type") or "").split(";")[0].strip().lower()
        #: :attr:`content_type` as the backend labelled it (that one may be corrected)
        self.labelled = self.content_type
        self.complete = False
        #: an error answer compressed although the proxy asked for identity: its
        #: body is not read as text (see UpstreamClient._open)
        self.encoded = False
        # A chunked body is decoded by ChunkedDecoder, not h11 (see chunked.py);
        # it starts with the bytes h11 read past the head. (We never send HEAD.)
        self._chunked: Optional[ChunkedDecoder] = None
        self._head_rest = b""
        self._first = b""  # body bytes read ahead by is_event_stream(), not yet received
        self._drain_left = DRAIN_LIMIT  # what drain() may still read
        if (
            conn.h11.their_state is h11.SEND_BODY
            and self.status not in (204, 304)
            and (self.header(b"transfer-encoding") or "").strip().lower() == "chunked"
        ):
            self._chunked = ChunkedDecoder()
            self._head_rest = conn.h11.trailing_data[0]

    @property
    def body_decoded(self) -> bool:
        """The chunked body was read to its end by ChunkedDecoder, nothing after it."""
        dec = self._chunked
        return dec is not None and dec.done and not dec.leftover

    def header(self, name: bytes) -> Optional[str]:
        for k, v in self.headers:
            if k == name:
                return v.decode("latin-1")
        return None

    async def receive(self) -> bytes:
        """The next piece of the body; ``b""`` once it is complete.

        Raises UpstreamTimeout when the backend sends nothing for
        ``stream_idle_timeout`` seconds, UpstreamError when the connection breaks.
        """
        if self._first:
            data, self._first = self._first, b""
            return data
        if self.complete:
            return b""
        if self._chunked is not None:
            return await self._receive_chunked(self._chunked)
        ev: object = None
        with _mapped("reading the response body", self._ep):
            try:
                ev = await self._conn.next_event(_now() + self._idle)
            except TimeoutError:
                raise self._stalled() from None
            except h11.RemoteProtocolError:
                if not self._conn.eof:
                    raise
                # h11's "peer closed connection without sending complete message body"
        if isinstance(ev, h11.Data):
            return bytes(ev.data)  # h11 hands over all it holds of the body at once
        if isinstance(ev, h11.EndOfMessage):
            self.complete = True
            return b""
        raise self._cut()

    async def _receive_chunked(self, dec: ChunkedDecoder) -> bytes:
        """:meth:`receive` for a chunked body: all the data of a read at once."""
        data = b""
        if self._head_rest:
            data, self._head_rest = dec.feed(self._head_rest), b""
        while not data and not dec.done:
            with _mapped("reading the response body", self._ep):
                try:
                    raw = await self._conn.stream.receive(READ_SIZE, self._idle)
                except anyio.EndOfStream:
                    raw = b""
                except TimeoutError:
                    raise self._stalled() from None
            if not raw:
                self._conn.eof = True
                raise self._cut()
            data = dec.feed(raw)
        if dec.done:
            self.complete = True
        return data

    def _stalled(self) -> UpstreamTimeout:
        return UpstreamTimeout(
            f"backend sent nothing for {_seconds(self._idle)} in the middle of a response"
        )

    def _cut(self) -> UpstreamClosed:
        ep = self._ep
        return UpstreamClosed(
            f"backend {ep.where} closed the connection in the middle of the response"
        )

    async def is_event_stream(self) -> bool:
        """Whether the body is an event stream: labelled ``text/event-stream``
        and not beginning with ``{`` (a JSON object: a Responses answer or an
        error, which no event stream begins with), or, labelled otherwise or
        not at all (a backend or gateway that gets the header wrong), beginning
        with an SSE field (``event:``, ``data:``, ``id:``, ``retry:`` or a ``:``
        comment; a JSON body begins with none). Reads the body's first bytes
        (:meth:`receive` returns them again, without a UTF-8 BOM before a
        stream's first field, which the SSE standard skips); a body labelled
        wrongly is then labelled ``text/event-stream`` or ``application/json``
        in :attr:`content_type`.

        Raises as :meth:`receive` does.
        """
        if self.content_type == "text/event-stream":
            first = b""
            # up to the first byte that is not blank (or a BOM, maybe cut across reads)
            while len(first) < _SNIFF_LIMIT and not first.lstrip(_JSON_BLANK):
                data = await self.receive()
                if not data:
                    break
                first += data
            if first.lstrip(_JSON_BLANK).startswith(b"{"):
                self._first = first
                _warn_mislabel("a JSON body", "application/json", self.header(b"content-type"))
                self.content_type = "application/json"
                return False
            self._first = _without_bom(first)
            return True
        first = b""
        while len(first) < _SNIFF_LIMIT and len(first.lstrip(_BLANK)) < _SNIFF_SIZE:
            data = await self.receive()
            if not data:
                break
            first += data
        self._first = first
        if _SSE_START.match(first.lstrip(_BLANK)) is None:
            return False
        self._first = _without_bom(first)
        _warn_mislabel("an event stream", "text/event-stream", self.header(b"content-type"))
        self.content_type = "text/event-stream"
        return True

    async def drain(self, grace: float) -> None:
        """After the last event: read what is left of the body (its end, usually
        already here), for at most ``grace`` seconds and, over every call,
        :data:`DRAIN_LIMIT` bytes, so the connection can be reused."""
        if self.complete:
            return
        with anyio.move_on_after(grace):
            try:
                while self._drain_left > 0 and not self.complete:
                    self._drain_left -= len(await self.receive())
            except ProxyError:
                return

    async def read(self, limit: int) -> bytes:
        """The whole body, at most ``limit`` bytes (UpstreamProtocolError beyond);
        ``b""`` for an :attr:`encoded` one (read all the same)."""
        parts: list[bytes] = []
        if not await self._take(limit, parts):
            raise UpstreamProtocolError(f"backend response body larger than {limit} bytes")
        return b"" if self.encoded else b"".join(parts)

    async def read_error(self, limit: int, within: float) -> bytes:
        """The body of an error answer, for its message: what arrives within
        ``within`` seconds, at most ``limit`` bytes. The status and retry hints
        count more than the body, so a body that is too long (cut at
        ``limit``), stalls or breaks off is taken as far as it came, not raised
        as an error of its own; the connection then is not reused. ``b""`` for
        an :attr:`encoded` body."""
        parts: list[bytes] = []
        with anyio.move_on_after(within):
            try:
                await self._take(limit, parts)
            except UpstreamError:
                pass
        return b"" if self.encoded else b"".join(parts)[:limit]

    async def _take(self, limit: int, parts: list[bytes]) -> bool:
        """Add the body's pieces to ``parts`` up to its end (True) or until they
        are more than ``limit`` bytes (False: the rest is not read)."""
        size = 0
        while True:
            data = await self.receive()
            if not data:
                return True
            parts.append(data)
            size += len(data)
            if size > limit:
                return False


# --- the client --------------------------------------------------------------------


class UpstreamClient:
    """Sends requests to ``backend.endpoint``; owns the pool and the TLS context."""

    def __init__(self, backend: BackendConfig, environ: Optional[dict[str, str]] = None) -> None:
        self.cfg = backend
        self.endpoint = Endpoint.parse(backend.endpoint)
        self.tls: Optional[ClientTLS] = (
            ClientTLS(backend.auth) if self.endpoint.scheme == "https" else None
        )
        self.route: Optional[ProxyRoute] = proxy_for(backend, self.endpoint.host, environ)
        if self.route is not None:
            self.endpoint = dataclasses.replace(self.endpoint, via=self.route.display)
        self._host = (b"host", self.endpoint.authority.encode())
        #: [backend.headers], sent with every request (checked when the config loaded)
        self._config_headers = [
            (k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in backend.headers.items()
        ]
        #: a configured User-Agent replaces the proxy's, never joins it
        self._user_agent = (
            [] if any(k == b"user-agent" for k, _ in self._config_headers) else [UA_HEADER]
        )
        #: idle connections, the least recently used first
        self._idle: deque[Connection] = deque()
        #: starts a task that outlives a request (a task group's ``start_soon``;
        #: the server's, while it serves): where the end of a body is waited
        #: for once the request was cancelled (see DRAIN_GRACE)
        self.background: Optional[Callable[..., object]] = None
        #: the timer that closes idle connections past pool_idle_timeout
        self._reaper: Optional[asyncio.TimerHandle] = None

    # -- pool bookkeeping (synchronous decisions, I/O afterwards) --

    def _take_idle(self, ctx: Optional[ssl.SSLContext]) -> Optional[Connection]:
        """The most recently used idle connection still fit for a request; the
        ones found unfit on the way (old context, idle too long, closed by the
        server) are closed."""
        now = _idle_clock()
        while self._idle:
            conn = self._idle.pop()  # most recently used first
            if (
                conn.ctx is not ctx
                or now - conn.idle_since > self.cfg.pool_idle_timeout
                or conn.looks_dead()
            ):
                conn.close()
                continue
            return conn
        return None

    def _put_idle(self, conn: Connection) -> bool:
        if len(self._idle) >= self.cfg.pool_size:
            return False
        conn.idle_since = _idle_clock()
        self._idle.append(conn)
        if self._reaper is None:
            self._reap_in(self.cfg.pool_idle_timeout)
        return True

    def _reap_in(self, delay: float) -> None:
        self._reaper = asyncio.get_running_loop().call_later(delay, self._reap)

    def _reap(self) -> None:
        """Close the idle connections past ``pool_idle_timeout``, so that a quiet
        proxy holds no backend connection open for long (one timer per pool,
        set again for the oldest connection left)."""
        self._reaper = None
        now = _idle_clock()
        timeout = self.cfg.pool_idle_timeout
        idle = self._idle
        while idle and now - idle[0].idle_since >= timeout:
            idle.popleft().close()
        if idle:
            self._reap_in(idle[0].idle_since + timeout - now)

    async def aclose(self) -> None:
        """Close the idle connections (those in use close when their request ends)."""
        if self._reaper is not None:
            self._reaper.cancel()
            self._reaper = None
        while self._idle:
            self._idle.pop().close()

    # -- connecting --

    async def _connect(self, ctx: Optional[ssl.SSLContext]) -> Connection:
        ep = self.endpoint
        timeout = self.cfg.connect_timeout
        where = f"{ep.host}:{ep.port}"
        # what a timeout interrupted, for its message and class
        doing = f"connecting to backend {where}"
        error: type[UpstreamError] = UpstreamConnectError
        try:
            with anyio.fail_after(timeout):
                if self.route is not None:
                    doing = f"waiting for proxy {self.route.display} to open a tunnel to {where}"
                    error = UpstreamProxyError
                    stream = await open_tunnel(self.route, ep.host, ep.port)
                else:
                    with _mapped("connecting", ep):
                        stream = await connect_tcp(ep.host, ep.port)
                if ctx is not None:
                    doing = f"in the TLS handshake with backend {ep.where}"
                    error = UpstreamConnectError
                    try:
                        with _mapped("TLS handshake", ep):
                            # asyncio's own handshake deadline is a backstop: the
                            # cancel scope above words the timeout
                            await stream.start_tls(ctx, ep.host, timeout + 5)
                    except BaseException:
                        stream.abort()
                        raise
        except TimeoutError:
            raise error(f"timed out after {timeout:g} s {doing}") from None
        return Connection(stream, ctx, self.cfg.max_event_size)

    async def _connect_by(self, ctx: Optional[ssl.SSLContext], deadline: float) -> Connection:
        """:meth:`_connect`, cut short (TimeoutError) at the head ``deadline``."""
        with anyio.fail_after(max(0.0, deadline - _now())):
            return await self._connect(ctx)

    # -- a request --

    def _request_bytes(
        self,
        conn: Connection,
        method: bytes,
        path: str,
        body: bytes,
        headers: list[tuple[bytes, bytes]],
    ) -> list[bytes]:
        """The request's bytes: its head, body and end (see ``send_parts``)."""
        target = (self.endpoint.base_path + path).encode()
        hdrs = [self._host, *self._user_agent, IDENTITY]
        if method == b"POST":
            hdrs.append((b"content-type", b"application/json"))
            hdrs.append((b"content-length", str(len(body)).encode()))
        hdrs += headers
        hdrs += self._config_headers
        # constants, the endpoint and [backend.headers] (checked at start), the
        # request id (checked where it is made): see goose_proxy.http11
        req = h11.Request(method=method, target=target, headers=hdrs, **TRUSTED)
        out = conn.h11.send(req) or b""
        data = conn.h11.send(h11.Data(data=body)) or b"" if body else b""
        return [out, data, conn.h11.send(h11.EndOfMessage()) or b""]

    async def _exchange(
        self, conn: Connection, pieces: list[bytes], deadline: float
    ) -> h11.Response:
        """Send the request's ``pieces``; the response head. TimeoutError at ``deadline``."""
        first = conn.ctx is not None and conn.requests == 0
        try:
            return await self._send_and_read_head(conn, pieces, deadline)
        except UpstreamClosed as e:
            if not first or conn.received or not _in_race_window(conn):
                raise
            # With TLS 1.3 the server checks our certificate after the handshake;
            # some servers then just close without sending the alert, or reset the
            # connection as our request arrives (and the alert is lost): within a
            # round trip of the request. A close long after it is a backend that
            # took the request and went away (a crashed worker), no refusal.
            raise UpstreamTLSError(
                f"backend {self.endpoint.where} closed the connection right after the "
                "TLS handshake without answering: it probably rejected the client certificate"
            ) from e

    async def _send_and_read_head(
        self, conn: Connection, pieces: list[bytes], deadline: float
    ) -> h11.Response:
        ep = self.endpoint
        # per request: whether a failure may be retried (see _open)
        conn.received = False
        conn.awaiting_head = True
        conn.sent_at = None
        rest = await self._send(conn, pieces, deadline)
        conn.requests += 1
        with _mapped("waiting for the response head", ep):
            try:
                while True:
                    ev = await conn.next_event(deadline)
                    if isinstance(ev, h11.Response):
                        # an answer before the backend took the whole request (a 413
                        # for a body too large, say) is the client's; the rest of
                        # the request stays unsent, and the connection is done for
                        conn.cut_short = rest is not None
                        return ev
                    if not isinstance(ev, h11.InformationalResponse):
                        break
                    if rest is not None and not conn.unread():
                        # an interim answer only (100 Continue, 103 Early Hints,
                        # 102 Processing): the backend reads on
                        rest = await self._send(conn, rest, deadline) if rest else None
            except h11.RemoteProtocolError:
                if not conn.eof:
                    raise
        raise UpstreamClosed(f"backend {ep.where} closed the connection before answering")

    async def _send(
        self, conn: Connection, pieces: Sequence[Buffer], deadline: float
    ) -> Optional[list[memoryview]]:
        """Send the request's ``pieces``: None once the backend took them all;
        what is left unsent when the backend answered before it did."""
        try:
            with _mapped("sending the request", self.endpoint):
                while True:
                    try:
                        await conn.stream.send_parts(pieces, deadline - _now(), until_answer=True)
                        break
                    except AnsweredEarly as e:
                        if not (conn.awaiting_head and conn.stream.drop_line_ends()):
                            conn.received = True
                            return e.rest
                        # line ends alone, after the previous answer: no answer
                        # to this request (next_event skips them too), send on
                        pieces = e.rest
                        if not pieces:
                            break
        except UpstreamError:
            if not conn.stream.bytes_waiting():
                raise
            # The backend answered before it took the whole request (a 413 for a
            # body too large, then it closed): that answer is the client's.
            conn.received = True
            return None
        conn.sent_at = _now()
        return None

    def post(
        self, path: str, body: bytes, headers: list[tuple[bytes, bytes]]
    ) -> contextlib.AbstractAsyncContextManager[UpstreamResponse]:
        """POST ``body`` to ``{endpoint}{path}``; see :meth:`request`."""
        return self.request(b"POST", path, body, headers)

    def request(
        self, method: bytes, path: str, body: bytes, headers: list[tuple[bytes, bytes]]
    ) -> contextlib.AbstractAsyncContextManager[UpstreamResponse]:
        """Send a request to ``{endpoint}{path}``; an async context manager that
        yields the response once its head is in, and afterwards returns the
        connection to the pool (its body read to the end) or closes it.

        Raises CredentialsError (cert files), ServiceUnavailable (out of file
        descriptors while loading them), UpstreamConnectError, UpstreamTLSError,
        UpstreamTimeout (no head within ``backend.timeout``), UpstreamError.
        """
        return _RequestContext(self, method, path, body, headers)

    async def _open(
        self, method: bytes, path: str, body: bytes, headers: list[tuple[bytes, bytes]]
    ) -> UpstreamResponse:
        """:meth:`request` up to the response head."""
        ctx = self.tls.context() if self.tls is not None else None
        if log.isEnabledFor(logging.DEBUG):
            log.debug(
                "upstream request %s %s%s (%d bytes) %s",
                method.decode(),
                self.endpoint.base_path,
                path,
                len(body),
                _head_for_log(headers + self._config_headers),
            )
        conn: Optional[Connection] = None
        # The head deadline: per read and write on a pooled connection (no
        # cancel scope on the hot path), a scope around connecting.
        deadline = _now() + self.cfg.timeout
        try:
            conn = self._take_idle(ctx)
            while True:
                reused = conn is not None
                if conn is None:
                    conn = await self._connect_by(ctx, deadline)
                try:
                    head = await self._exchange(
                        conn, self._request_bytes(conn, method, path, body, headers), deadline
                    )
                    if not (reused and head.status_code == 408 and _in_race_window(conn)):
                        break
                    if not _ends_the_connection(head):
                        break  # a 408 the backend keeps the connection after is its answer
                    # Some servers (HAProxy, Apache, Node) answer a keep-alive
                    # timeout with a 408 and close: the same race as a silent
                    # close, and a 408 says the request was not taken
                    log.debug("pooled backend connection timed out (408) first; sent again")
                except UpstreamError:
                    if not reused or conn.received or not _in_race_window(conn):
                        raise
                    # A pooled connection the server closed as we picked it up, without
                    # a byte of answer and within RACE_WINDOW: most likely its keep-alive
                    # timeout raced our request, so one retry on a fresh connection. (A
                    # backend that took the request and closed at once without a byte
                    # looks the same; that risk of a second run is the price of not
                    # failing the common race.)
                    log.debug("pooled backend connection closed before answering; sent again")
                conn.close()
                conn = None
        except TimeoutError:
            if conn is not None:
                conn.close()
            raise UpstreamTimeout(
                f"backend sent no response within {_seconds(self.cfg.timeout)}"
            ) from None
        except (UpstreamTLSError, UpstreamClosed) as e:
            fresh = conn is None or conn.requests <= 1
            if conn is not None:
                conn.close()
            # refused, or a fresh connection closed without a word: an expired
            # certificate explains it (not a refusal of the backend's certificate)
            ours = fresh and not isinstance(e, _ServerCertificateError)
            problem = self.tls.date_problem() if self.tls is not None and ours else None
            if problem is None:
                raise
            raise UpstreamCertificateError(f"{e.message}; {problem}") from e
        except BaseException:
            if conn is not None:
                conn.close()
            raise
        resp = UpstreamResponse(conn, head, self.endpoint, self.cfg.stream_idle_timeout)
        coding = http11.content_coding(resp.headers)
        if coding is not None and not 300 <= resp.status < 400:  # a redirect: said as such
            if resp.status >= 400:
                # the status still says what happened (401, 429 and its
                # Retry-After …); the body cannot be read, so it reads as empty
                resp.encoded = True
            else:
                conn.close()
                # the same answer again if asked again: no retry (as for a body in
                # a shape that is no Response)
                raise UpstreamNotAResponse(
                    f"backend {self.endpoint.where} answered HTTP {resp.status} "
                    f"with Content-Encoding {coding[:40]!r}, which goose-proxy does not "
                    "decode (it asks for identity)"
                )
        if log.isEnabledFor(logging.DEBUG):
            log.debug(
                "upstream %s %s%s -> %d %s",
                method.decode(),
                self.endpoint.base_path,
                path,
                resp.status,
                _head_for_log(resp.headers),
            )
        return resp

    def settle_later(self, resp: UpstreamResponse) -> bool:
        """Wait for the end of ``resp``'s body in the background, then pool or
        close its connection; False when no task could be started for it."""
        if self.background is None:
            return False
        try:
            self.background(self._settle, resp)
        except RuntimeError:  # the task group is closing
            return False
        return True

    async def _settle(self, resp: UpstreamResponse) -> None:
        try:
            await resp.drain(DRAIN_GRACE)
        finally:
            self._release(resp)

    def _release(self, resp: UpstreamResponse) -> None:
        """After the response: the connection back to the pool, or closed."""
        conn = resp._conn
        h = conn.h11
        trailing = h.trailing_data[0]
        if (
            resp.complete
            and not conn.cut_short
            and h.our_state is h11.DONE
            # bytes past the body's end would be read as the next request's
            # answer, but for line ends (some servers end a body so: skipped)
            and ((h.their_state is h11.DONE and not trailing.lstrip(b"\r\n")) or resp.body_decoded)
            and self.cfg.pool_size > 0
        ):
            if h.their_state is h11.DONE and not trailing:
                h.start_next_cycle()
            else:  # h11 read only the head (ChunkedDecoder the body), or holds line ends
                conn.h11 = h11.Connection(h11.CLIENT, max_incomplete_event_size=conn.max_event)
            if not self._put_idle(conn):
                conn.close()
        else:
            # (h11 may hold a body ChunkedDecoder read whole: the exchange is over)
            conn.close(reset=not (resp.complete and h.our_state is h11.DONE))


class _RequestContext:
    """The context manager :meth:`UpstreamClient.request` returns (a class, not an
    ``asynccontextmanager`` generator: one per backend request)."""

    __slots__ = ("_args", "_client", "_resp")

    def __init__(
        self,
        client: UpstreamClient,
        method: bytes,
        path: str,
        body: bytes,
        headers: list[tuple[bytes, bytes]],
    ) -> None:
        self._client = client
        self._args: Optional[tuple[bytes, str, bytes, list[tuple[bytes, bytes]]]] = (
            method, path, body, headers
        )  # fmt: skip
        self._resp: Optional[UpstreamResponse] = None

    async def __aenter__(self) -> UpstreamResponse:
        args, self._args = self._args, None  # the body is not kept past the sending
        assert args is not None, "entered twice"
        self._resp = await self._client._open(*args)
        return self._resp

    async def __aexit__(self, typ: object, exc: Optional[BaseException], tb: object) -> None:
        resp = self._resp
        if resp is None:
            return
        client = self._client
        later = False
        try:
            if exc is None:
                # the caller is done with the answer (sent on): the rest of the body,
                # usually its last chunk, keeps the connection poolable
                await resp.drain(DRAIN_GRACE)
        except BaseException:
            # cancelled (the client left once it had the answer, say): the end
            # may still come, and it needs no request
            later = True
            raise
        finally:
            if not (later and client.settle_later(resp)):
                client._release(resp)
