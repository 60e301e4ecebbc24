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
import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Optional
from urllib.parse import unquote, urlsplit

import anyio
import anyio.abc
import h11

from goose_proxy.config import BackendConfig
from goose_proxy.errors import UpstreamProxyError


@dataclass(frozen=True)
class ProxyRoute:
    host: str
    port: int
    authorization: Optional[bytes]
    display: str  # the URL with credentials redacted

    def __repr__(self) -> str:  # never show credentials, even in a debugger
        return f"ProxyRoute({self.display})"


def redact_url(url: str) -> str:
    """``http://user:secret@host:3128`` → ``http://***@host:3128``."""
    u = urlsplit(url)
    if u.username is None and u.password is None:
        return url
    host = u.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = f"***@{host}" + (f":{u.port}" if u.port else "")
    return u._replace(netloc=netloc).geturl()


def parse_proxy(url: str) -> ProxyRoute:
    """Parse an ``http://`` proxy URL. Raises ValueError naming only the redacted URL."""
    u = urlsplit(url if "://" in url else f"http://{url}")
    if u.scheme != "http" or not u.hostname:
        raise ValueError(f"unsupported proxy URL {redact_url(url)!r} (use http://host:port)")
    auth = None
    if u.username is not None:
        cred = f"{unquote(u.username)}:{unquote(u.password or '')}".encode()
        auth = b"Basic " + base64.b64encode(cred)
    return ProxyRoute(u.hostname, u.port or 3128, auth, redact_url(u.geturl()))


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
        return parse_proxy(backend.proxy) if backend.proxy else None
    env = os.environ if environ is None else environ
    scheme = urlsplit(backend.endpoint).scheme
    names = ("https_proxy", "HTTPS_PROXY") if scheme == "https" else ("http_proxy", "HTTP_PROXY")
    url = next((env[n] for n in names if env.get(n)), "")
    if not url:
        return None
    if _no_proxy_matches(host, env.get("no_proxy") or env.get("NO_PROXY") or ""):
        return None
    return parse_proxy(url)


async def open_tunnel(route: ProxyRoute, host: str, port: int) -> anyio.abc.ByteStream:
    """Connect to the proxy and ask it for a tunnel to ``host:port``.

    Raises UpstreamProxyError when the proxy is unreachable, refuses (403, 407, …)
    or answers something that is not HTTP.
    """
    try:
        stream = await anyio.connect_tcp(route.host, route.port)
    except OSError as e:
        cause = e.__cause__ if isinstance(e.__cause__, OSError) else e
        what = "cannot resolve" if isinstance(cause, socket.gaierror) else "cannot connect to"
        raise UpstreamProxyError(f"{what} proxy {route.display}: {cause.strerror or cause}") from e
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
        while True:
            ev = conn.next_event()
            if ev is h11.NEED_DATA:
                try:
                    conn.receive_data(await stream.receive())
                except anyio.EndOfStream:
                    conn.receive_data(b"")
                continue
            break
        if not isinstance(ev, h11.Response):
            raise UpstreamProxyError(f"proxy {route.display} closed the connection")
        if not 200 <= ev.status_code < 300:
            reason = ev.reason.decode("latin-1", "replace")
            hint = ""
            if ev.status_code == 407:
                hint = (
                    " (wrong or missing credentials)"
                    if route.authorization
                    else ' (it requires credentials: proxy = "http://user:pass@host:port")'
                )
            raise UpstreamProxyError(
                f"proxy {route.display} refused the tunnel to {authority}: "
                f"{ev.status_code} {reason}{hint}"
            )
        if conn.trailing_data[0]:
            raise UpstreamProxyError(f"proxy {route.display} sent data before the TLS handshake")
        return stream
    except BaseException as e:
        with anyio.CancelScope(shield=True):
            await anyio.aclose_forcefully(stream)
        if isinstance(e, (OSError, anyio.BrokenResourceError, h11.RemoteProtocolError)):
            raise UpstreamProxyError(f"proxy {route.display} failed: {e}") from e
        raise
