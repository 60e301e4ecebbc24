"""The fake backend's network side: listeners, TLS, the HTTP loop per connection.

Theory of operation
-------------------
``run()`` binds the listeners and starts one accept loop per listening socket
in its own task group (inside the caller's event loop). Each accepted
connection gets a task: optional TLS handshake (client certificate required
when the context says so), then the HTTP loop. h11 parses each request (one
``h11.Connection`` per request; bytes of a pipelined next request pass to the
next one through ``trailing_data``), with the keep-alive timeout as the idle
limit. For ``…/responses``, :func:`devbackend.plan.plan_reply` decides the
whole :class:`~devbackend.plan.Reply` up front and the server only executes it,
writing raw bytes (:mod:`devbackend.wire`): an optional wait, the head with the
Content-Length body in one ``send``, or the chunked frames — one ``send`` per
event when events are delayed, else batched up to 64 KiB — and then the
ending: finish the message and keep the connection, close it, reset it
(``SO_LINGER`` 0), or hold it until the client goes away.

While the fake waits (header delay, event delay, stall) it keeps reading the
socket, so a client that hangs up is noticed at once and its request stops
counting as in flight. Leaving ``run()`` cancels the task group: every
connection task, stalled ones included, is cancelled and its socket closed.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import socket
import ssl
import struct
import time
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, cast

import anyio
import anyio.abc
import h11
from anyio.abc import SocketAttribute
from anyio.streams.tls import TLSAttribute, TLSStream

from . import lightspeed, wire
from .plan import Incoming, PlanConfig, Reply, json_headers, plan_reply
from .sse import get_style

log = logging.getLogger("devbackend")

MODES = ("lightspeed", "openai")
#: How many requests (and TLS client subjects) are kept for inspection.
RECORD_LIMIT = 100
#: Largest request body read at all (bytes); past it: 413 and close.
MAX_BODY_BYTES = 32 * 1024 * 1024
MAX_HEAD_BYTES = 64 * 1024
RECV_SIZE = 65536
#: Without an event delay, stream frames are written in batches of this size.
WRITE_BATCH = 64 * 1024
#: A request body must arrive within this many seconds once its head has.
BODY_TIMEOUT = 60.0

_SUBJECT_KEYS = {
    "commonName": "CN",
    "organizationName": "O",
    "organizationalUnitName": "OU",
    "countryName": "C",
    "localityName": "L",
    "stateOrProvinceName": "ST",
    "emailAddress": "emailAddress",
}
_CLOSED = (
    anyio.BrokenResourceError,
    anyio.ClosedResourceError,
    anyio.EndOfStream,
    ssl.SSLError,
    OSError,
)


@dataclass(frozen=True)
class RecordedRequest:
    """One request as received: the head and the (parsed) body."""

    method: str
    target: str
    http_version: str
    #: Header names lowercased (h11 does), values as sent, in order.
    headers: tuple[tuple[str, str], ...]
    body: bytes
    #: The parsed JSON body; None when the body was not JSON.
    json: Any
    #: Serial number of the connection it came on (1, 2, …) — for pooling checks.
    connection: int
    #: Subject of the client certificate on that connection (TLS only).
    client_subject: Optional[str]

    def header(self, name: str) -> Optional[str]:
        """The first value of header ``name`` (case-insensitive), or None."""
        name = name.lower()
        for key, value in self.headers:
            if key == name:
                return value
        return None


@dataclass
class Stats:
    """Counters; ``in_flight`` and ``connections_open`` are live values."""

    #: ``POST …/responses`` requests received.
    requests_total: int = 0
    in_flight: int = 0
    max_in_flight: int = 0
    connections_accepted: int = 0
    connections_open: int = 0
    tls_handshakes: int = 0
    tls_handshake_failures: int = 0
    #: Requests to ``/health``, ``/_dev/*`` and unknown paths.
    control_requests: int = 0
    #: Client certificate subject of each TLS connection, oldest first (last 100).
    client_subjects: list[Optional[str]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class _Peer:
    stream: anyio.abc.ByteStream
    tcp: anyio.abc.SocketStream
    number: int
    subject: Optional[str]
    address: str


class _BodyTooLarge(Exception):
    pass


def format_subject(cert: Any) -> Optional[str]:
    """``getpeercert()``'s subject as ``O=…,OU=…,CN=…``; None without a certificate."""
    if not isinstance(cert, dict) or not cert.get("subject"):
        return None
    parts = []
    for rdn in cert["subject"]:
        for key, value in rdn:
            parts.append(f"{_SUBJECT_KEYS.get(key, key)}={value}")
    return ",".join(parts)


def _url_host(host: str) -> str:
    if host in ("", "0.0.0.0"):
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    return f"[{host}]" if ":" in host else host


class DevBackend:
    """A running fake backend (see :func:`run`)."""

    def __init__(
        self,
        *,
        host: str,
        tls: Optional[ssl.SSLContext],
        mode: str,
        strict_fields: Optional[bool],
        max_body_chars: Optional[int],
        keepalive_timeout: float,
        handshake_timeout: float,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r} (expected one of {', '.join(MODES)})")
        lightspeed_mode = mode == "lightspeed"
        self.host = host
        self.mode = mode
        self.tls = tls
        self.port = 0
        self.stats = Stats()
        self._plan = PlanConfig(
            style=get_style(mode),
            strict_fields=lightspeed_mode if strict_fields is None else strict_fields,
            max_body_chars=(
                (lightspeed.MAX_BODY_CHARS if lightspeed_mode else 0)
                if max_body_chars is None
                else max_body_chars
            ),
        )
        self._keepalive_timeout = keepalive_timeout
        self._handshake_timeout = handshake_timeout
        self._records: deque[RecordedRequest] = deque(maxlen=RECORD_LIMIT)
        self._connections = 0
        self._change: Optional[anyio.Event] = None

    # --- public API -------------------------------------------------------

    @property
    def url(self) -> str:
        """Base URL, e.g. ``https://127.0.0.1:8443`` (clients append ``/responses``)."""
        scheme = "https" if self.tls is not None else "http"
        return f"{scheme}://{_url_host(self.host)}:{self.port}"

    @property
    def requests(self) -> list[RecordedRequest]:
        """The last 100 ``/responses`` requests, oldest first (a copy)."""
        return list(self._records)

    def reset(self) -> None:
        """Zero the counters (in place) and forget the recorded requests.

        The live values ``in_flight`` and ``connections_open`` are kept;
        ``max_in_flight`` restarts from ``in_flight``.
        """
        s = self.stats
        s.requests_total = s.connections_accepted = s.control_requests = 0
        s.tls_handshakes = s.tls_handshake_failures = 0
        s.max_in_flight = s.in_flight
        s.client_subjects.clear()
        self._records.clear()
        self._notify()

    async def wait_until(self, predicate: Callable[[DevBackend], bool]) -> None:
        """Wait until ``predicate(backend)`` holds; re-checked on every change.

        Bound it with ``anyio.fail_after`` in tests.
        """
        while not predicate(self):
            if self._change is None:
                self._change = anyio.Event()
            await self._change.wait()

    # --- accepting --------------------------------------------------------

    def _notify(self) -> None:
        change, self._change = self._change, None
        if change is not None:
            change.set()

    async def _accept_loop(
        self, listener: anyio.abc.SocketListener, tg: anyio.abc.TaskGroup
    ) -> None:
        while True:
            try:
                tcp = await listener.accept()
            except anyio.ClosedResourceError:
                return
            except OSError as exc:  # EMFILE and friends: back off, keep serving
                log.warning("accept failed: %s", exc)
                await anyio.sleep(0.1)
                continue
            tg.start_soon(self._connection, tcp)

    async def _connection(self, tcp: anyio.abc.SocketStream) -> None:
        self._connections += 1
        number = self._connections
        stats = self.stats
        stats.connections_accepted += 1
        stats.connections_open += 1
        self._notify()
        stream: anyio.abc.ByteStream = tcp
        try:
            try:
                tcp.extra(SocketAttribute.raw_socket).setsockopt(
                    socket.IPPROTO_TCP, socket.TCP_NODELAY, 1
                )
                remote = tcp.extra(SocketAttribute.remote_address)
            except OSError:
                return
            address = f"{remote[0]}:{remote[1]}" if isinstance(remote, tuple) else str(remote)
            subject = None
            if self.tls is not None:
                try:
                    with anyio.fail_after(self._handshake_timeout):
                        stream = await TLSStream.wrap(
                            tcp, server_side=True, ssl_context=self.tls, standard_compatible=False
                        )
                except (*_CLOSED, TimeoutError) as exc:
                    self.stats.tls_handshake_failures += 1
                    self._notify()
                    log.info("%s TLS handshake failed: %r", address, exc)
                    return
                subject = format_subject(stream.extra(TLSAttribute.peer_certificate, None))
                self.stats.tls_handshakes += 1
                subjects = self.stats.client_subjects
                subjects.append(subject)
                del subjects[:-RECORD_LIMIT]
                self._notify()
            await self._serve_http(_Peer(stream, tcp, number, subject, address))
        except _CLOSED as exc:
            log.debug("connection %d closed: %r", number, exc)
        finally:
            self.stats.connections_open -= 1
            self._notify()
            await anyio.aclose_forcefully(stream)

    # --- HTTP -------------------------------------------------------------

    async def _serve_http(self, peer: _Peer) -> None:
        # One h11.Connection per request: h11 parses, the replies are written
        # raw (see wire.py), and bytes of a pipelined next request move on
        # through trailing_data.
        leftover, closed = b"", False
        while True:
            conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD_BYTES)
            if leftover:
                conn.receive_data(leftover)
            if closed:
                conn.receive_data(b"")
            try:
                got = await self._read_request(conn, peer)
            except h11.RemoteProtocolError as exc:
                await self._send_error(peer, exc.error_status_hint, "Invalid HTTP request")
                return
            except _BodyTooLarge:
                await self._send_error(peer, 413, "Request body too large")
                return
            if got is None:
                return
            request, body = got
            http11 = request.http_version == b"1.1"
            keep = http11 and not wire.wants_close(request.headers)
            if not await self._dispatch(conn, peer, request, body, keep, http11):
                return
            leftover, closed = conn.trailing_data

    async def _next_event(self, conn: h11.Connection, peer: _Peer) -> Any:
        while True:
            event = conn.next_event()
            if event is not h11.NEED_DATA:
                return event
            if conn.they_are_waiting_for_100_continue:
                await peer.stream.send(b"HTTP/1.1 100 Continue\r\n\r\n")
                # h11 clears its flag only when it sends the 100 itself.
                conn.client_is_waiting_for_100_continue = False
            try:
                data = await peer.stream.receive(RECV_SIZE)
            except anyio.EndOfStream:
                data = b""
            conn.receive_data(data)

    async def _read_request(
        self, conn: h11.Connection, peer: _Peer
    ) -> Optional[tuple[h11.Request, bytes]]:
        event = None
        with anyio.move_on_after(self._keepalive_timeout):
            event = await self._next_event(conn, peer)
        if not isinstance(event, h11.Request):
            return None  # idle timeout, or the client closed between requests
        chunks: list[bytes] = []
        size = 0
        while True:
            part: Any = conn.next_event()
            if part is h11.NEED_DATA:
                # Only a body that did not arrive with the head needs a deadline.
                part = None
                with anyio.move_on_after(BODY_TIMEOUT):
                    part = await self._next_event(conn, peer)
            if isinstance(part, h11.Data):
                size += len(part.data)
                if size > MAX_BODY_BYTES:
                    raise _BodyTooLarge
                chunks.append(part.data)
            elif isinstance(part, h11.EndOfMessage):
                return event, b"".join(chunks)
            else:
                return None  # timed out or closed mid-body

    async def _send_error(self, peer: _Peer, status: int, detail: str) -> None:
        """A FastAPI-style error, then the connection closes."""
        body = json.dumps({"detail": detail}, separators=(",", ":")).encode()
        headers = json_headers(self._plan.style, len(body))
        await peer.stream.send(wire.head(status, headers, (b"connection", b"close")) + body)

    async def _send_json(
        self, peer: _Peer, status: int, obj: Any, keep: bool, head_only: bool = False
    ) -> bool:
        body = json.dumps(obj, separators=(",", ":")).encode()
        extra = () if keep else ((b"connection", b"close"),)
        head = wire.head(status, json_headers(self._plan.style, len(body)), *extra)
        await peer.stream.send(head if head_only else head + body)
        return keep

    async def _dispatch(
        self,
        conn: h11.Connection,
        peer: _Peer,
        request: h11.Request,
        body: bytes,
        keep: bool,
        http11: bool,
    ) -> bool:
        """Answer one request; False when the connection must not be reused."""
        path = request.target.split(b"?", 1)[0]
        method = request.method
        if path.endswith(b"/responses"):
            if method == b"POST":
                return await self._responses(conn, peer, request, body, keep, http11)
            self.stats.control_requests += 1
            return await self._send_json(peer, 405, {"detail": "Method Not Allowed"}, keep)
        self.stats.control_requests += 1
        if path.endswith(b"/models") and method == b"GET":
            # What `goose-proxy check` probes: an authenticated, cheap request.
            # ``X-Dev-Fault: status:<code>`` applies here too.
            fault = dict(request.headers).get(b"x-dev-fault", b"")
            if fault.startswith(b"status:") and fault[7:].isdigit():
                status = int(fault[7:])
                return await self._send_json(peer, status, {"detail": f"status {status}"}, keep)
            models = {"models": [{"identifier": "fake/fake-model", "model_type": "llm"}]}
            return await self._send_json(peer, 200, models, keep)
        if path == b"/health" and method in (b"GET", b"HEAD"):
            return await self._send_json(peer, 200, {"status": "ok"}, keep, method == b"HEAD")
        if path == b"/_dev/stats" and method == b"GET":
            return await self._send_json(peer, 200, self.stats.as_dict(), keep)
        if path == b"/_dev/reset" and method == b"POST":
            self.reset()
            return await self._send_json(peer, 200, {"reset": True}, keep)
        if path in (b"/health", b"/_dev/stats", b"/_dev/reset"):
            return await self._send_json(peer, 405, {"detail": "Method Not Allowed"}, keep)
        return await self._send_json(peer, 404, {"detail": "Not Found"}, keep)

    async def _responses(
        self,
        conn: h11.Connection,
        peer: _Peer,
        request: h11.Request,
        body: bytes,
        keep: bool,
        http11: bool,
    ) -> bool:
        started = time.perf_counter()
        headers = tuple((k.decode("latin-1"), v.decode("latin-1")) for k, v in request.headers)
        body_text = body.decode("utf-8", "replace")
        try:
            parsed, obj = True, json.loads(body_text)
        except ValueError:
            parsed, obj = False, None
        self._records.append(
            RecordedRequest(
                method=request.method.decode("latin-1"),
                target=request.target.decode("latin-1"),
                http_version=request.http_version.decode("latin-1"),
                headers=headers,
                body=body,
                json=obj,
                connection=peer.number,
                client_subject=peer.subject,
            )
        )
        stats = self.stats
        stats.requests_total += 1
        stats.in_flight += 1
        if stats.in_flight > stats.max_in_flight:
            stats.max_in_flight = stats.in_flight
        self._notify()
        reply: Optional[Reply] = None
        outcome = "aborted"
        try:
            try:
                reply = plan_reply(Incoming(dict(headers), body_text, obj, parsed), self._plan)
            except Exception:
                log.exception("planning the reply failed")
                reply = Reply(500, json_headers(self._plan.style, 0), note="devbackend bug")
            reused = await self._execute(conn, peer, reply, keep, http11)
            outcome = "ok" if reply.ending == "end" else reply.ending
            return reused
        finally:
            stats.in_flight -= 1
            self._notify()
            if log.isEnabledFor(logging.INFO):
                shown = reply is not None and reply.send_head and not reply.raw
                log.info(
                    "%s #%d %s %s -> %s %s %s %.1fms",
                    peer.address,
                    peer.number,
                    request.method.decode("latin-1"),
                    request.target.decode("latin-1"),
                    reply.status if reply is not None and shown else "-",
                    reply.note if reply is not None else "",
                    outcome,
                    (time.perf_counter() - started) * 1000,
                )

    # --- executing a reply --------------------------------------------------

    async def _execute(
        self, conn: h11.Connection, peer: _Peer, reply: Reply, keep: bool, http11: bool
    ) -> bool:
        """Send ``reply``; True when the connection may serve another request."""
        send = peer.stream.send
        if reply.delay_headers and not await self._pause(conn, peer, reply.delay_headers):
            return False
        if reply.raw:
            await send(reply.raw)
            return await self._end(peer, reply.ending)
        if not reply.send_head:
            return await self._end(peer, reply.ending)
        chunked = reply.frames is not None and http11
        # An HTTP/1.0 client gets a stream delimited by the connection's close.
        keep = keep and (reply.frames is None or chunked) and not wire.wants_close(reply.headers)
        extra: list[tuple[bytes, bytes]] = []
        if not keep and not wire.has_header(reply.headers, b"connection"):
            extra.append((b"connection", b"close"))
        if chunked:
            extra.append((b"transfer-encoding", b"chunked"))
        head = wire.head(reply.status, reply.headers, *extra)

        if reply.frames is None:
            if reply.cut is not None:
                await send(head + reply.body[: reply.cut])
                return await self._end(peer, reply.ending)
            await send(head + reply.body)
            return keep

        frames = [wire.chunk(f) for f in reply.frames] if chunked else reply.frames
        delay = reply.event_delay
        if delay:
            # One write per event, the head riding with the first.
            for i, data in enumerate(frames):
                if i and not await self._pause(conn, peer, delay):
                    return False
                await send(head + data if i == 0 else data)
            pending = b"" if frames else head
        else:
            # Same bytes, same chunk per event; the writes are batched.
            pending = head
            for data in frames:
                pending += data
                if len(pending) >= WRITE_BATCH:
                    await send(pending)
                    pending = b""
        if reply.ending == "end":
            pending += wire.LAST_CHUNK if chunked else b""
            if pending:
                await send(pending)
            return keep
        if pending:
            await send(pending)
        return await self._end(peer, reply.ending)

    async def _end(self, peer: _Peer, ending: str) -> bool:
        if ending == "reset":
            # SO_LINGER 0 turns close() into an abortive close: RST, not FIN.
            peer.tcp.extra(SocketAttribute.raw_socket).setsockopt(
                socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
            )
            await anyio.aclose_forcefully(peer.tcp)
        elif ending == "stall":
            await self._drain(peer)
        return False

    async def _pause(self, conn: h11.Connection, peer: _Peer, seconds: float) -> bool:
        """Wait ``seconds`` while watching the socket; False if the client left."""
        with anyio.move_on_after(seconds):
            try:
                while True:
                    # Keep what arrives (a pipelined request) for the next cycle.
                    conn.receive_data(await peer.stream.receive(RECV_SIZE))
            except anyio.EndOfStream:
                return False
        return True

    async def _drain(self, peer: _Peer) -> None:
        """Discard input until the client closes (or the server stops)."""
        try:
            while True:
                await peer.stream.receive(RECV_SIZE)
        except anyio.EndOfStream:
            return


@asynccontextmanager
async def run(
    host: str = "127.0.0.1",
    port: int = 0,
    tls: Optional[ssl.SSLContext] = None,
    mode: str = "lightspeed",
    *,
    strict_fields: Optional[bool] = None,
    max_body_chars: Optional[int] = None,
    keepalive_timeout: float = 5.0,
    handshake_timeout: float = 10.0,
) -> AsyncIterator[DevBackend]:
    """Serve the fake backend in the current event loop while the block runs.

    ``tls``: a server context (see :func:`devbackend.server_ssl_context`), or
    None for plain HTTP. ``mode``: ``"lightspeed"`` (Lightspeed Stack 0.7.1
    framing, strict request fields and the 65,536-character body cap by
    default) or ``"openai"`` (plain Responses server: ``data:`` lines only, no
    ``[DONE]``, any field accepted). ``strict_fields`` / ``max_body_chars``
    (0 = no cap) override the mode's defaults. ``keepalive_timeout`` closes
    idle connections (uvicorn's default is 5 s).

    Raises ``OSError`` if the address cannot be bound, ``ValueError`` for an
    unknown mode.
    """
    backend = DevBackend(
        host=host,
        tls=tls,
        mode=mode,
        strict_fields=strict_fields,
        max_body_chars=max_body_chars,
        keepalive_timeout=keepalive_timeout,
        handshake_timeout=handshake_timeout,
    )
    listener = await anyio.create_tcp_listener(local_host=host, local_port=port)
    error: Optional[Exception] = None
    async with listener:
        backend.port = listener.extra(SocketAttribute.local_port)
        async with anyio.create_task_group() as tg:
            for sub in listener.listeners:
                # create_tcp_listener() makes SocketListeners; the type says Listener.
                tg.start_soon(backend._accept_loop, cast(anyio.abc.SocketListener, sub), tg)
            try:
                yield backend
            except Exception as exc:
                # Re-raised below, outside the task group, so the caller gets
                # its own exception back rather than an ExceptionGroup.
                error = exc
            finally:
                tg.cancel_scope.cancel()
    if error is not None:
        raise error
