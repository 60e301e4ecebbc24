"""The client-facing server: listeners, one task per connection, limits, shutdown.

Theory of operation
-------------------
:meth:`ProxyServer.serve` accepts on one or more listeners (TCP sockets it
opened, or sockets handed over by systemd) and runs :meth:`_connection` per
client in one task group. A connection loops: read a request (bounded, with
deadlines), check where it comes from, route it, answer, then keep the
connection alive or close it. Each request runs in its own cancel scope, which
the connection's protocol cancels the moment the client disconnects (its FIN
or a reset; see :mod:`goose_proxy.streams`), which closes the upstream
connection at once.

A connection over ``max_connections`` takes the place of the one kept alive
idle between requests the longest, which is closed as its keep-alive timeout
would close it; when none is idle, it is answered at once with a 503 and
closed (lingering, so the answer is not lost to a TCP reset). Nothing that a
connection does can stop the server: an unexpected exception is logged (its
type and place, never its text, which could quote a body) and only that
connection is closed.

Shutdown (:meth:`shutdown`): stop accepting, let in-flight requests finish for
``drain_timeout`` seconds, then cancel the rest; a stream cut that way ends with
an error event, never a fake finish (:meth:`shutdown` waits, bounded, until
those error events are written). A request is in flight once its first byte
has arrived: one still arriving when the drain starts is read to its end (each
read bounded by ``header_timeout``) and served. A kept-alive connection idle
between requests is closed at once, as its keep-alive timeout would close it,
and every connection closes after the reply under way, which says
``Connection: close`` unless its head went out before the drain (a request
the client pipelined behind such a reply, which promised keep-alive, is
then served too). A request that begins on a connection accepted before the
drain gets a 503 with ``Retry-After`` (nothing of it reaches the backend).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import re
import socket
import time
import traceback
from collections.abc import Sequence
from typing import Optional, Union

import anyio
import anyio.abc

from goose_proxy import http11
from goose_proxy.config import Config, validated
from goose_proxy.errors import (
    HOST_LIMITS,
    Forbidden,
    InternalError,
    MethodNotAllowed,
    NotFound,
    ProxyError,
    TryAgainSoon,
    UnsupportedMediaType,
)
from goose_proxy.http.connection import (
    BODIES_HELD,
    BodyBudget,
    ClientGone,
    Request,
    ServerConnection,
    error_response_parts,
)
from goose_proxy.http.handlers import MODEL_PATH, Exchange, Handler, Handlers
from goose_proxy.http.throttle import METHOD_CHARS, PATH_CHARS, WARN_INTERVAL, WarnEvery, shown
from goose_proxy.streams import Listener, ProtocolStream, bind_tcp
from goose_proxy.upstream.client import UpstreamClient

log = logging.getLogger("goose_proxy.http")
access_log = logging.getLogger("goose_proxy.access")

LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1", "[::1]", "localhost.localdomain"})
#: after the drain timeout: how long the cancelled requests get to write their error
ABORT_GRACE = 2.0
#: when accepting fails (out of file descriptors): the pause before the next try,
#: and the least time between two warnings of it
ACCEPT_BACKOFF = 0.1
ACCEPT_WARN_INTERVAL = WARN_INTERVAL
#: a request body or an answer (whole or streamed) this large is followed by
#: :func:`give_back_memory`, once no other has ended for TRIM_DELAY seconds
LARGE_EXCHANGE = 1024 * 1024
#: seconds: a trim right after each large exchange made the next one fault its
#: buffers' pages in again (Goose sends its whole history every turn: 13-22 %
#: more CPU per request of 1-7 MiB); a session's next turn mostly comes sooner
TRIM_DELAY = 10.0
#: requests in flight at once from which the end of the burst (an eighth of them
#: or fewer left) sets off a trim too: 500 small streams left 50 MB of freed
#: memory held for good
TRIM_AFTER_REQUESTS = 32

_malloc_trim: object = None  # the C library's malloc_trim; False where there is none


def give_back_memory() -> None:
    """Return the C heap's free memory to the system (glibc's ``malloc_trim``).

    A large body passes through several buffers of its size (the bytes read,
    their text, the JSON, the request written upstream). glibc keeps such
    blocks once freed, and after the first one it raises its threshold for
    giving them back on its own, so a proxy that took a few 16 MiB bodies
    would hold hundreds of megabytes for good. A no-op without glibc.
    """
    global _malloc_trim
    if _malloc_trim is None:
        try:
            import ctypes  # only once a large exchange happened

            trim = ctypes.CDLL(None).malloc_trim  # the process's own C library
            trim.argtypes = [ctypes.c_size_t]
            trim.restype = ctypes.c_int
            _malloc_trim = trim
        except OSError as e:
            if e.errno in HOST_LIMITS:
                return  # ctypes could not be loaded now: try again next time
            _malloc_trim = False  # not glibc
        except (ImportError, AttributeError):  # no ctypes, or not glibc
            _malloc_trim = False
    if _malloc_trim:
        _malloc_trim(0)  # type: ignore[operator]


def _host_name(value: str) -> str:
    """``Host`` header value without its port, lower-cased; the whole value when
    what follows the name is no port (``[::1]evil.example``, ``127.0.0.1:80 x``),
    which then names no host."""
    v = value.strip().lower()
    if v.startswith("["):
        end = v.find("]") + 1
        name, rest = (v[:end], v[end:]) if end else (v, "")
    else:
        name, colon, port = v.partition(":")
        rest = colon + port if v.count(":") == 1 else ""
        name = name if rest else v
    return name if not rest or _PORT.fullmatch(rest) else v


#: what may follow a host name in ``Host``: a port (RFC 9110: ``uri-host [ ":" port ]``,
#: and a port is ``*DIGIT``)
_PORT = re.compile(r":[0-9]*")
#: a run of slashes in a request path, served as one (see ``ProxyServer._resolve``)
_SLASHES = re.compile(r"//+")
#: a model's path with its slashes as sent: the id (group 1) is kept as it is
_MODEL_SLASHES = re.compile(r"/+v1/+models/+(.*)", re.DOTALL)


def _tidied(path: str) -> str:
    """``path`` with each run of slashes as one and no trailing one, but for
    what follows ``/v1/models/`` (a model id may hold slashes)."""
    model = _MODEL_SLASHES.fullmatch(path)
    if model is not None:
        return MODEL_PATH + model.group(1) if model.group(1) else MODEL_PATH.rstrip("/")
    return _SLASHES.sub("/", path).rstrip("/") or "/"


def is_loopback_address(name: str) -> bool:
    """True for a literal loopback address (127.0.0.0/8, ``[::1]``); names are not resolved,
    and an address with a zone (``[::1%anything]``) is none."""
    if "%" in name:
        return False
    if name.startswith("["):
        if not name.endswith("]"):
            return False  # "[::1" is no address
        name = name[1:-1]
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


#: why listening on an address other hosts may reach is worth a warning
EXPOSED = "the API has no authentication, and anyone who can reach it uses this host's identity"


def warn_if_exposed(host: str, port: int) -> None:
    """A warning when the proxy listens on an address other hosts may reach."""
    if not is_loopback_address(host):
        log.warning(
            "listening on %s port %d, which is not a loopback address: %s", host, port, EXPOSED
        )


def describe_exception(exc: BaseException) -> str:
    """``TypeError at handlers.py:123 in chat_completions``: the type and the place of a
    bug, without its message (which could quote a request or response body)."""
    inner = getattr(exc, "exceptions", None)  # a task group's group of one
    while isinstance(inner, tuple) and len(inner) == 1 and isinstance(inner[0], BaseException):
        exc = inner[0]
        inner = getattr(exc, "exceptions", None)
    frames = traceback.extract_tb(exc.__traceback__)
    where = ""
    if frames:
        last = frames[-1]
        where = f" at {last.filename.rsplit('/', 1)[-1]}:{last.lineno} in {last.name}"
    return f"{type(exc).__name__}{where}"


def _request_id(rid: Optional[str]) -> str:
    """The client's ``X-Request-ID`` (``rid``) when it fits one field of the
    access log, else a new one."""
    if rid is None or len(rid) > 200 or not rid.isprintable() or " " in rid:
        return os.urandom(16).hex()
    return rid


def _shutting_down() -> TryAgainSoon:
    """The error of a request the drain refuses or cuts: the client may try again
    in a moment (under socket activation, the next start serves it)."""
    return TryAgainSoon("goose-proxy is shutting down")


class ProxyServer:
    """Serves the OpenAI-compatible API on the given listeners."""

    def __init__(self, config: Config, upstream: Optional[UpstreamClient] = None) -> None:
        # (a Config built in code is checked as a file's would be: ConfigError)
        config = validated(config)
        self.config = config
        self.upstream = upstream or UpstreamClient(config.backend)
        self.handlers = Handlers(config, self.upstream)
        self.active_connections = 0
        self.active_requests = 0
        self.closing = False
        #: the drain timeout passed: requests in flight are cancelled, and one
        #: read after that (pipelined behind a cancelled one) gets a 503
        self._cancelling = False
        self._idle_event = anyio.Event()
        self._request_scopes: set[anyio.CancelScope] = set()
        self._connections: set[ServerConnection] = set()
        #: during the drain: connections reading a request that had begun to
        #: arrive when the drain started (in flight, not dispatched yet)
        self._arriving: set[ServerConnection] = set()
        self._listeners: list[Listener] = []
        self._trim: Optional[asyncio.TimerHandle] = None  # the heap trim to come
        self._requests_high = 0  # the most requests in flight since the last trim set
        self._allowed_hosts = LOOPBACK_NAMES | set(config.server.allowed_hosts)  # normalised
        self._allowed_origins = {o.rstrip("/").lower() for o in config.server.allowed_origins}
        self._refusals = WarnEvery(ACCEPT_WARN_INTERVAL)  # over max_connections
        #: request bodies held across connections (arriving, or not yet sent upstream)
        self.bodies = BodyBudget(BODIES_HELD * config.server.max_body_size)
        self.bound: list[tuple[str, int]] = []
        #: the paths of unix sockets listened on (systemd ListenStream=/path)
        self.unix_paths: list[str] = []

    # -- listening --

    async def open_listeners(
        self, sockets: Optional[Sequence[socket.socket]] = None
    ) -> list[Listener]:
        """Listen on ``[server] host:port``, or on already-bound sockets (systemd)."""
        if not sockets:
            cfg = self.config.server
            sockets = await bind_tcp(cfg.host, cfg.port)
        listeners = [Listener(s) for s in sockets]
        self._listeners.extend(listeners)
        for lst in listeners:
            addr = lst.local_address
            if isinstance(addr, tuple):
                host, port = str(addr[0]), int(addr[1])
                self.bound.append((host, port))
                warn_if_exposed(host, port)
            elif isinstance(addr, (str, bytes)):  # AF_UNIX; abstract names start with NUL
                path = os.fsdecode(addr)
                self.unix_paths.append("@" + path[1:] if path.startswith("\0") else path)
        return listeners

    async def serve(
        self, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Accept connections until :meth:`shutdown` (or cancellation)."""
        if not self._listeners:
            await self.open_listeners()
        try:
            async with anyio.create_task_group() as tg:
                # where a cancelled request's wait for its body's end goes on
                self.upstream.background = tg.start_soon
                for lst in self._listeners:
                    tg.start_soon(self._accept_loop, lst, tg)
                task_status.started()
        finally:
            self.upstream.background = None
            if self._trim is not None:  # stopped: now, not on a loop that may not run on
                self._trim.cancel()
                self._trim_now()
            with anyio.CancelScope(shield=True):
                await self.upstream.aclose()

    def _trim_later(self) -> None:
        """Give the C heap's free memory back (:func:`give_back_memory`) once no
        large exchange has ended for :data:`TRIM_DELAY` seconds."""
        if self._trim is not None:
            self._trim.cancel()
        self._trim = asyncio.get_running_loop().call_later(TRIM_DELAY, self._trim_now)

    def _trim_now(self) -> None:
        self._trim = None
        give_back_memory()

    async def _accept_loop(self, listener: Listener, tg: anyio.abc.TaskGroup) -> None:
        failures = WarnEvery(ACCEPT_WARN_INTERVAL)
        try:
            while not self.closing:
                try:
                    stream = await listener.accept()
                except anyio.ClosedResourceError:
                    return
                except OSError as e:  # EMFILE and friends: back off briefly, keep serving
                    due = failures.due()
                    if due is not None:
                        log.warning(
                            "accept failed%s: %s; new connections wait until it works again",
                            failures.since(due, "times"),
                            e.strerror or e,
                        )
                    await anyio.sleep(ACCEPT_BACKOFF)
                    continue
                if failures.said():  # it failed before: say it works again, once
                    log.info("accepting connections again")
                    failures.clear()
                tg.start_soon(self._connection, stream)
        finally:
            await listener.aclose()

    async def shutdown(self) -> None:
        """Stop accepting; drain in-flight requests; cancel what is left.

        Returns once every request has finished, or was cancelled and had up
        to :data:`ABORT_GRACE` seconds to end its reply with an error.
        A request still arriving at the drain timeout is cut when the caller
        tears the connections down.
        """
        self.closing = True
        # At once, before anything can arrive: which requests are in flight.
        for conn in self._connections:
            conn.draining = True
            if conn.stop_idling():
                continue  # idle between requests: closed like at its keep-alive timeout
            if conn.request_arriving():
                self._arriving.add(conn)  # its first bytes are here: let it in
        for lst in self._listeners:
            with anyio.CancelScope(shield=True):
                await lst.aclose()
        in_flight = self.active_requests + len(self._arriving)
        if in_flight:
            log.info("draining %d in-flight request(s)", in_flight)
            with anyio.move_on_after(self.config.server.drain_timeout):
                await self._wait_idle()
        if self._request_scopes or self._arriving:
            log.warning(
                "drain timeout (%gs) passed: cancelling %d request(s)",
                self.config.server.drain_timeout,
                len(self._request_scopes) + len(self._arriving),
            )
            self._arriving.clear()  # cut with their connections, after the grace
            self._cancelling = True
            for scope in list(self._request_scopes):
                scope.cancel()
            # Let the cancelled requests write their error event before the
            # caller tears the connections down.
            with anyio.move_on_after(ABORT_GRACE):
                await self._wait_idle()

    async def _wait_idle(self) -> None:
        while self.active_requests or self._arriving:
            self._idle_event = anyio.Event()
            await self._idle_event.wait()

    # -- one connection --

    async def _connection(self, stream: ProtocolStream) -> None:
        conn = ServerConnection(stream, self.config.server, self.bodies)
        self.active_connections += 1
        try:
            if (
                self.active_connections > self.config.server.max_connections
                and not self._reclaim_idle()
            ):
                await self._refuse(conn)
                return
            self._connections.add(conn)
            await self._serve_connection(conn)
        except ClientGone:
            pass
        except Exception as e:  # a bug: lose this connection, never the server
            log.error("internal error on a client connection: %s", describe_exception(e))
            log.debug("internal error details", exc_info=True)
        finally:
            if conn.release_body() >= LARGE_EXCHANGE:
                self._trim_later()  # an upload cut short, or refused: never handled
            self.active_connections -= 1
            self._connections.discard(conn)
            if self._arriving:  # the drain may be waiting for this one's request
                self._arriving.discard(conn)
                if not self.active_requests and not self._arriving:
                    self._idle_event.set()
            await conn.aclose()

    def _reclaim_idle(self) -> bool:
        """At ``max_connections``: close the kept-alive connection idle between
        requests the longest (as its keep-alive timeout would), so that a new
        client is served rather than refused while idle ones hold every place
        (clients' connection pools keep them for up to ``keepalive_timeout``);
        the longest idle is the least likely to be used next. False when none
        is idle."""
        idle = sorted((c for c in self._connections if c.idle), key=lambda c: c.idle_since)
        return any(c.stop_idling() for c in idle)

    async def _refuse(self, conn: ServerConnection) -> None:
        """503 for a connection over ``max_connections``, sent without reading the request
        (h11 allows a response first), then a lingering close. Warned about
        once, then at most once per :data:`ACCEPT_WARN_INTERVAL`, with a count."""
        due = self._refusals.due()
        if due is not None:
            log.warning(
                "connection limit reached ([server] max_connections = %d): new connections "
                "get 503%s",
                self.config.server.max_connections,
                WarnEvery.since(due, "refused"),
            )
        err = TryAgainSoon(
            f"too many connections (more than {self.config.server.max_connections}); "
            "try again later"
        )
        status, body, headers = error_response_parts(err)
        headers.append((b"x-request-id", _request_id(None).encode("latin-1")))
        conn.linger = True
        await conn.send_response(status, body, headers, close=True)

    async def _serve_connection(self, conn: ServerConnection) -> None:
        max_requests = self.config.server.max_requests_per_connection
        while not self.closing or conn.requests_served == 0 or conn in self._arriving:
            req: Optional[Request] = None
            sent_before = conn.bytes_sent
            try:
                req = await conn.read_request()
                if req is None:
                    return
                if self.closing and conn not in self._arriving:
                    # begun after the drain started: not let in, but told to retry
                    raise _shutting_down()
                target = self._check_request(req)
                if isinstance(target, ProxyError) and conn.expects_continue():
                    raise target  # before a 100 asks for a body nothing would read
                await conn.read_body(req)
                if self.closing:
                    self._arriving.discard(conn)  # in active_requests from _handle on
            except TimeoutError:
                return  # slow or silent client: close without a word (408 helps nobody)
            except ProxyError as err:
                conn.linger = True  # the client may still be sending what we did not read
                if conn.can_respond():
                    status, body, headers = error_response_parts(err)
                    rid = _request_id(
                        req.header(b"x-request-id") if req else conn.refused_request_id
                    )
                    headers.append((b"x-request-id", rid.encode("latin-1")))
                    try:
                        await conn.send_response(status, body, headers, close=True)
                    except ClientGone:
                        return
                    self._log_access(req, status, conn, False, None, rid, sent_before=sent_before)
                return
            close = (
                self.closing
                or conn.requests_served + 1 >= max_requests
                or req.http_version == b"1.0"
            )
            large = len(req.body) >= LARGE_EXCHANGE  # before a handler takes it
            sent = await self._handle(conn, req, close, target)
            req = None  # its body too, before the heap is trimmed
            conn.release_body()
            if large or sent >= LARGE_EXCHANGE:
                self._trim_later()
            if close:
                conn.linger = True  # pipelined requests may follow: no reset over our answer
            if close or not conn.keep_alive:
                return
            if self.closing:  # its reply went out before the drain, promising keep-alive
                if not conn.next_request_here():
                    return  # closed, as the drain closes idle connections
                self._arriving.add(conn)  # pipelined before it knew: in flight, served

    def _check_request(self, req: Request) -> Union[Handler, ProxyError]:
        """Refuse requests a web page or a foreign host could make (DNS rebinding,
        CSRF); the handler for the request, or the 404/405 it is answered with.

        The route and method are checked before the body's type and coding (which
        only matter to a handler that reads the body): ``POST /v1/models`` is a
        405, not a 415. A request no handler serves never reaches the backend.
        """
        host = req.header(b"host")
        if host is not None:
            name = _host_name(host)
            if name not in self._allowed_hosts and not is_loopback_address(name):
                raise Forbidden(f"Host {host!r} is not allowed (see [server] allowed_hosts)")
        for k, v in req.headers:
            if k != b"origin":
                continue
            origin = v.decode("latin-1")
            if origin.rstrip("/").lower() not in self._allowed_origins:
                raise Forbidden(f"Origin {origin!r} is not allowed (see [server] allowed_origins)")
        target = self._resolve(req)
        if isinstance(target, ProxyError):
            return target  # answered once the body is read (keep-alive), whatever its type
        coding = http11.content_coding(req.headers)
        if coding is not None:
            raise UnsupportedMediaType(
                f"request body with Content-Encoding {coding[:40]!r} is not supported; "
                "send it uncompressed"
            )
        if req.method == "POST":
            ctype = (req.header(b"content-type") or "").split(";")[0].strip().lower()
            if ctype != "application/json":
                raise UnsupportedMediaType(
                    "request body must be JSON with Content-Type: application/json"
                )
        return target

    def _base_url_hint(self, path: str) -> str:
        """For a path that is served with ``/v1`` added or with one taken away: what
        the client's base URL should end with."""
        if self.handlers.route("/v1" + path) is not None:
            return " (the API is under /v1: the client's base URL should end with /v1)"
        if path.startswith("/v1/v1/") and self.handlers.route(path[3:]) is not None:
            return " (the client's base URL ends with /v1 and the client adds another)"
        return ""

    def _resolve(self, req: Request) -> Union[Handler, ProxyError]:
        """The handler for ``req``'s method and path, or the 404/405 it gets.
        Repeated slashes count as one and a trailing one as none (a base URL
        ending in ``/`` that a script glues a path to), but for a model id's
        own; ``req`` then has the path tidied, which its handler and the
        access line see."""
        path = tidy = req.path
        if "//" in path or (path.endswith("/") and path != "/"):
            tidy = _tidied(path)
            if self.handlers.route(tidy) is not None:
                req.target = tidy + req.target[len(path) :]
                path = tidy
        route = self.handlers.route(path)
        if route is None:
            hint = self._base_url_hint(tidy)
            return NotFound(f"unknown path {shown(path, PATH_CHARS)!r}{hint}")
        fn = route.get(req.method)
        if fn is None and req.method == "HEAD":
            fn = route.get("GET")  # the same answer without its body
        if fn is None:
            methods = {*route, "HEAD"} if "GET" in route else set(route)
            allowed = ", ".join(sorted(methods))
            return MethodNotAllowed(
                f"method {req.method} not allowed on {path} (use {allowed})",
                headers=[("Allow", allowed)],
            )
        return fn

    async def _handle(
        self, conn: ServerConnection, req: Request, close: bool, target: Union[Handler, ProxyError]
    ) -> int:
        """Answer ``req``; the bytes written for it."""
        rid = _request_id(req.header(b"x-request-id"))
        ex = Exchange(conn, req, rid, close)
        sent_before = conn.bytes_sent
        scope = anyio.CancelScope()
        self.active_requests += 1
        if self.active_requests > self._requests_high:
            self._requests_high = self.active_requests
        self._request_scopes.add(scope)
        cut = self._cancelling  # read after the drain timeout (pipelined): not sent on
        try:
            conn.cancel_when_gone(scope)
            try:
                with scope:
                    if not cut:
                        await self._dispatch(ex, target)
            finally:
                conn.cancel_when_gone(None)
            if (cut or scope.cancelled_caught) and not conn.client_gone:
                # cancelled by shutdown: end the reply with an error, not a fake finish
                with anyio.move_on_after(1.0, shield=True):
                    await ex.abort(_shutting_down())
        finally:
            self._request_scopes.discard(scope)
            self.active_requests -= 1
            if not self.active_requests:
                self._idle_event.set()
            if (
                self._requests_high >= TRIM_AFTER_REQUESTS
                and self.active_requests * 8 <= self._requests_high
            ):  # a burst ended (a long stream or two may still go on)
                self._requests_high = self.active_requests
                self._trim_later()
        self._log_access(
            req,
            ex.status,
            conn,
            ex.streamed,
            ex.upstream_status,
            rid,
            gone=conn.client_gone and not conn.replied,  # not: left after a whole answer
            sent_before=sent_before,
        )
        return conn.bytes_sent - sent_before

    async def _dispatch(self, ex: Exchange, target: Union[Handler, ProxyError]) -> None:
        path = ex.req.path
        try:
            if isinstance(target, ProxyError):
                raise target
            await target(ex)
        except ClientGone:
            return
        except ProxyError as err:
            await ex.abort(err)
        except Exception as e:
            log.error(
                "internal error handling %s %s: %s", ex.req.method, path, describe_exception(e)
            )
            log.debug("internal error details", exc_info=True)
            await ex.abort(InternalError("internal error in goose-proxy; see its log"))

    def _log_access(
        self,
        req: Optional[Request],
        status: Optional[int],
        conn: ServerConnection,
        streamed: bool,
        upstream: Optional[int],
        rid: str,
        gone: bool = False,
        sent_before: int = 0,
    ) -> None:
        """The access line; ``req`` None for a request whose head was refused
        (its method, path and time are not known: ``-``)."""
        if not access_log.isEnabledFor(logging.INFO):
            return
        if req is None:
            method = path = took = "-"
        else:
            method = shown(req.method, METHOD_CHARS)
            path = shown(req.path, PATH_CHARS)
            took = f"{(time.monotonic() - req.received_at) * 1000:.1f}ms"
        # formatted here (one f-string) rather than by the record: one line per request
        access_log.info(
            f"{method} {path} {'-' if status is None else status} {took} "
            f"bytes={conn.bytes_sent - sent_before} stream={'yes' if streamed else 'no'} "
            f"upstream={'-' if upstream is None else upstream} rid={rid}"
            f"{' client-gone' if gone else ''}{' (request head refused)' if req is None else ''}"
        )
