"""A small HTTP CONNECT proxy on loopback, for the corporate-proxy tests.

It answers ``CONNECT host:port`` with ``200 Connection established`` and then
copies bytes both ways, so TLS runs end to end through it. It can insist on
Basic credentials (``407`` with ``Proxy-Authenticate`` otherwise), refuse every
tunnel with a given status, or hang up without answering. It records each
request head and counts the tunnels it opened.
"""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Optional

import anyio
import anyio.abc

_REASONS = {403: "Forbidden", 407: "Proxy Authentication Required", 502: "Bad Gateway"}
MAX_HEAD = 16384


@dataclass
class ConnectRequest:
    method: str
    target: str
    headers: dict[str, str]


@dataclass
class ConnectProxy:
    #: ``(user, password)`` the proxy insists on, or None for an open proxy
    credentials: Optional[tuple[str, str]] = None
    #: refuse every CONNECT with this status (403, 502, ...)
    refuse: Optional[int] = None
    #: close the connection as soon as the request head has arrived
    hang_up: bool = False
    port: int = 0
    requests: list[ConnectRequest] = field(default_factory=list)
    tunnels: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def url_with(self, userinfo: str) -> str:
        """The URL with ``user:password@`` in it."""
        return f"http://{userinfo}@127.0.0.1:{self.port}"

    async def _read_head(self, stream: anyio.abc.ByteStream) -> tuple[bytes, bytes]:
        buf = b""
        while b"\r\n\r\n" not in buf:
            if len(buf) > MAX_HEAD:
                raise ValueError("request head too large")
            buf += await stream.receive()
        head, _, rest = buf.partition(b"\r\n\r\n")
        return head, rest

    async def _answer(self, stream: anyio.abc.ByteStream, status: int, *extra: str) -> None:
        lines = [f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}", *extra]
        lines += ["Content-Length: 0", "Connection: close", "", ""]
        await stream.send("\r\n".join(lines).encode())

    def _authorized(self, headers: dict[str, str]) -> bool:
        if self.credentials is None:
            return True
        want = base64.b64encode(":".join(self.credentials).encode()).decode()
        return headers.get("proxy-authorization", "") == f"Basic {want}"

    async def handle(self, client: anyio.abc.ByteStream) -> None:
        async with client:
            try:
                head, rest = await self._read_head(client)
            except (anyio.EndOfStream, anyio.BrokenResourceError, ValueError):
                return
            first, *header_lines = head.decode("latin-1").split("\r\n")
            method, target, _version = first.split(" ", 2)
            headers = {}
            for line in header_lines:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
            self.requests.append(ConnectRequest(method, target, headers))
            if self.hang_up:
                return
            if method != "CONNECT":
                await self._answer(client, 405)
                return
            if self.refuse is not None:
                await self._answer(client, self.refuse)
                return
            if not self._authorized(headers):
                await self._answer(client, 407, 'Proxy-Authenticate: Basic realm="test"')
                return
            host, _, port = target.rpartition(":")
            try:
                upstream = await anyio.connect_tcp(host.strip("[]"), int(port))
            except OSError:
                await self._answer(client, 502)
                return
            self.tunnels += 1
            async with upstream:
                await client.send(b"HTTP/1.1 200 Connection established\r\n\r\n")
                if rest:
                    await upstream.send(rest)
                async with anyio.create_task_group() as tg:
                    tg.start_soon(_pipe, client, upstream)
                    tg.start_soon(_pipe, upstream, client)


async def _pipe(src: anyio.abc.ByteStream, dst: anyio.abc.ByteStream) -> None:
    try:
        async for chunk in src:
            await dst.send(chunk)
        await dst.send_eof()
    except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
        await anyio.aclose_forcefully(dst)


@asynccontextmanager
async def connect_proxy(
    credentials: Optional[tuple[str, str]] = None,
    refuse: Optional[int] = None,
    hang_up: bool = False,
) -> AsyncIterator[ConnectProxy]:
    """A CONNECT proxy on 127.0.0.1 (a free port), serving in this event loop."""
    proxy = ConnectProxy(credentials=credentials, refuse=refuse, hang_up=hang_up)
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
    proxy.port = listener.extra(anyio.abc.SocketAttribute.local_port)
    async with listener, anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, proxy.handle, tg)
        try:
            yield proxy
        finally:
            tg.cancel_scope.cancel()
