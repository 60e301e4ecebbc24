"""HTTP CONNECT tunnels through a corporate proxy.

``[backend] proxy = "http://[user:pass@]host:port"`` sends every backend
connection through that proxy with ``CONNECT host:port``; TLS with the client
certificate then runs end to end inside the tunnel, so the proxy never sees the
identity. When the key is unset, ``https_proxy`` / ``http_proxy`` (and
``no_proxy``) from the environment apply; ``proxy = ""`` disables proxying.

Credentials are sent as Basic ``Proxy-Authorization`` and never logged: every
message names the proxy by its redacted URL.
"""

from __future__ import annotations

import base64
import ipaddress
import logging
import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Optional
from urllib.parse import unquote, urlsplit

import anyio
import h11

from goose_proxy import http11
from goose_proxy.config import BackendConfig, redact_url, split_proxy_url
from goose_proxy.errors import (
    HOST_LIMITS,
    HostLimitReached,
    UpstreamProxyConfigError,
    UpstreamProxyError,
)
from goose_proxy.streams import ProtocolStream, connect_tcp, refused

log = logging.getLogger("goose_proxy.upstream")


class TunnelRefused(UpstreamProxyError):
    """The proxy answered the ``CONNECT`` with a non-2xx status (403, 407, 502, ...)."""


class TunnelDenied(TunnelRefused, UpstreamProxyConfigError):
    """The proxy refused the tunnel for want of credentials or permission (407, 403):
    a retry gets the same answer."""


@dataclass(frozen=True)
class ProxyRoute:
    host: str
    port: int
    authorization: Optional[bytes]
    display: str  # the URL with credentials redacted
    #: why this proxy URL cannot be used (every tunnel then fails with this message)
    error: Optional[str] = None
    #: where the URL came from: "[backend] proxy" or "environment variable NAME"
    origin: str = ""

    def __repr__(self) -> str:  # never show credentials, even in a debugger
        return f"ProxyRoute({self.display})"


def parse_proxy(url: str, origin: str = "") -> ProxyRoute:
    """Parse an ``http://`` proxy URL (named by ``origin``, see :class:`ProxyRoute`).
    Raises ValueError naming only the redacted URL."""
    u = split_proxy_url(url)
    auth = None
    if u.username is not None:
        cred = f"{unquote(u.username)}:{unquote(u.password or '')}".encode()
        auth = b"Basic " + base64.b64encode(cred)
    display = redact_url(u.geturl())
    return ProxyRoute(u.hostname or "", u.port or 3128, auth, display, origin=origin)


def _route(url: str, origin: str) -> ProxyRoute:
    """:func:`parse_proxy`, but an unusable URL gives a route whose tunnels all fail
    with a message naming ``origin``, so that a bad environment variable cannot
    stop the daemon (or ``goose-proxy check``) from starting."""
    try:
        return parse_proxy(url, origin)
    except ValueError as e:
        log.warning("%s: %s; backend requests will fail", origin, e)
        return ProxyRoute("", 0, None, redact_url(url), error=f"{origin}: {e}", origin=origin)


def _no_proxy_matches(host: str, no_proxy: str) -> bool:
    host = host.lower().strip("[]")
    for entry in (e.strip().lower() for e in no_proxy.split(",")):
        if not entry:
            continue
        if entry == "*":
            return True
        entry = entry.split(":")[0] if entry.count(":") == 1 else entry
        try:
            if ipaddress.ip_address(host) in ipaddress.ip_network(entry, strict=False):
                return True
            continue
        except ValueError:
            pass
        entry = entry.lstrip(".")
        if host == entry or host.endswith("." + entry):
            return True
    return False


def proxy_for(
    backend: BackendConfig, host: str, environ: Optional[Mapping[str, str]] = None
) -> Optional[ProxyRoute]:
    """The proxy to use for ``host``, or None for a direct connection."""
    if backend.proxy is not None:
        return _route(backend.proxy, "[backend] proxy") if backend.proxy else None
    env = os.environ if environ is None else environ
    scheme = urlsplit(backend.endpoint).scheme
    names = ("https_proxy", "HTTPS_PROXY") if scheme == "https" else ("http_proxy", "HTTP_PROXY")
    name = next((n for n in names if env.get(n)), "")
    if not name:
        return None
    if _no_proxy_matches(host, env.get("no_proxy") or env.get("NO_PROXY") or ""):
        return None
    return _route(env[name], f"environment variable {name}")


async def open_tunnel(route: ProxyRoute, host: str, port: int) -> ProtocolStream:
    """Connect to the proxy and ask it for a tunnel to ``host:port``.

    Raises UpstreamProxyError when the proxy is unreachable or answers something
    that is not HTTP, UpstreamProxyConfigError when its URL is unusable,
    TunnelRefused when it refuses (TunnelDenied for 403 and 407).
    """
    if route.error is not None:
        raise UpstreamProxyConfigError(route.error)
    try:
        stream = await connect_tcp(route.host, route.port)
    except OSError as e:
        if e.errno in HOST_LIMITS:  # this host's limit, not the proxy's fault
            raise HostLimitReached(f"open a connection to proxy {route.display}", e) from e
        if isinstance(e, socket.gaierror):
            msg = f"cannot resolve proxy {route.display}: {e.strerror or e}"
        elif refused(e):
            msg = f"cannot connect to proxy {route.display}: connection refused"
        else:
            msg = f"cannot connect to proxy {route.display}: {e.strerror or e}"
        raise UpstreamProxyError(msg) from e
    try:
        authority = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        conn = h11.Connection(h11.CLIENT)
        headers = [(b"host", authority.encode())]
        if route.authorization:
            headers.append((b"proxy-authorization", route.authorization))
        await stream.send(
            conn.send(h11.Request(method=b"CONNECT", target=authority.encode(), headers=headers))
            or b""
        )
        closed = f"proxy {route.display} closed the connection without answering CONNECT"
        eof = False
        while True:
            try:
                ev = conn.next_event()
            except h11.RemoteProtocolError as e:
                if eof:
                    raise UpstreamProxyError(closed) from e
                raise UpstreamProxyError(
                    f"proxy {route.display} answered CONNECT with something that is not HTTP "
                    f"({http11.reason(e)})"
                ) from e
            if ev is h11.NEED_DATA:
                try:
                    data = await stream.receive()
                except anyio.EndOfStream:
                    data, eof = b"", True
                conn.receive_data(data)
                continue
            if isinstance(ev, h11.InformationalResponse):
                continue
            break
        if not isinstance(ev, h11.Response):
            raise UpstreamProxyError(closed)
        if not 200 <= ev.status_code < 300:
            reason = ev.reason.decode("latin-1", "replace")
            hint = ""
            if ev.status_code == 407:
                hint = (
                    " (wrong or missing credentials)"
                    if route.authorization
                    else ' (it requires credentials: proxy = "http://user:pass@host:port")'
                )
            refusal = TunnelDenied if ev.status_code in (403, 407) else TunnelRefused
            raise refusal(
                f"proxy {route.display} refused the tunnel to {authority}: "
                f"{ev.status_code} {reason}{hint}"
            )
        if conn.trailing_data[0]:
            raise UpstreamProxyError(f"proxy {route.display} sent data before the TLS handshake")
        log.debug("proxy %s opened a tunnel to %s", route.display, authority)
        return stream
    except BaseException as e:
        stream.abort()
        if isinstance(e, (OSError, anyio.BrokenResourceError)):
            detail = f": {e}" if str(e) else ""
            raise UpstreamProxyError(
                f"the connection to proxy {route.display} broke during CONNECT{detail}"
            ) from e
        raise
