"""A small keep-alive HTTP/1.1 client over anyio + h11.

For the fake backend's own tests, for load generation (:mod:`devbackend.loadgen`)
and for benchmark baselines ("the proxy vs. talking to the backend directly").
It records what arrived even when the server misbehaves: a response cut short
comes back with ``complete=False`` and the error, not as an exception.
"""

from __future__ import annotations

import json
import ssl
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Callable, Optional
from urllib.parse import urlsplit

import anyio
import anyio.abc
import h11
from anyio.streams.tls import TLSStream

_BROKEN = (
    anyio.BrokenResourceError,
    anyio.EndOfStream,
    anyio.ClosedResourceError,
    ssl.SSLError,
    OSError,
)


@dataclass
class ClientResponse:
    status: int = 0
    headers: list[tuple[str, str]] = field(default_factory=list)
    #: The body as h11 delivered it (one entry per received piece).
    chunks: list[bytes] = field(default_factory=list)
    #: True once the whole message arrived (Content-Length met or 0-chunk seen).
    complete: bool = False
    #: Why the response is incomplete (``repr`` of the exception), if it is.
    error: str = ""

    @property
    def body(self) -> bytes:
        return b"".join(self.chunks)

    def header(self, name: str) -> Optional[str]:
        name = name.lower()
        for key, value in self.headers:
            if key == name:
                return value
        return None

    def json(self) -> Any:
        return json.loads(self.body)

    def sse(self) -> list[tuple[Optional[str], str]]:
        """The SSE events as ``(event line or None, data)`` pairs."""
        return parse_sse(self.body)

    def events(self) -> list[Any]:
        """The JSON payloads of the ``data:`` lines, ``[DONE]`` left out."""
        return [json.loads(data) for _, data in self.sse() if data != "[DONE]"]


def parse_sse(body: bytes) -> list[tuple[Optional[str], str]]:
    out: list[tuple[Optional[str], str]] = []
    for block in body.decode("utf-8").split("\n\n"):
        name: Optional[str] = None
        data: list[str] = []
        for line in block.split("\n"):
            if line.startswith("event:"):
                name = line[6:].strip()
            elif line.startswith("data:"):
                data.append(line[5:].lstrip(" "))
        if data:
            out.append((name, "\n".join(data)))
    return out


class DevClient:
    """One HTTP/1.1 connection; requests are sent one after another on it."""

    def __init__(self, stream: anyio.abc.ByteStream, host: str) -> None:
        self.stream = stream
        self.host = host
        self.conn = h11.Connection(h11.CLIENT)

    @classmethod
    async def connect(cls, url: str, ssl_context: Optional[ssl.SSLContext] = None) -> DevClient:
        """Open a connection to ``url``'s host and port (TLS for ``https``).

        Raises ``OSError`` when the connection fails and ``ssl.SSLError`` (or
        ``anyio.BrokenResourceError``) when the handshake does.
        """
        parts = urlsplit(url)
        host = parts.hostname or "127.0.0.1"
        tls = parts.scheme == "https"
        port = parts.port or (443 if tls else 80)
        tcp = await anyio.connect_tcp(host, port)
        stream: anyio.abc.ByteStream = tcp
        if tls:
            try:
                stream = await TLSStream.wrap(
                    tcp,
                    hostname=host,
                    ssl_context=ssl_context or ssl.create_default_context(),
                    standard_compatible=False,
                )
            except BaseException:
                await anyio.aclose_forcefully(tcp)
                raise
        return cls(stream, f"{host}:{port}")

    async def aclose(self) -> None:
        await anyio.aclose_forcefully(self.stream)

    async def __aenter__(self) -> DevClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def send_request(
        self,
        method: str,
        path: str,
        *,
        headers: Sequence[tuple[str, str]] = (),
        body: bytes = b"",
    ) -> None:
        if self.conn.our_state is h11.DONE and self.conn.their_state is h11.DONE:
            self.conn.start_next_cycle()
        all_headers = [("host", self.host), *headers]
        if method != "GET" or body:
            all_headers.append(("content-length", str(len(body))))
        data = self.conn.send(h11.Request(method=method, target=path, headers=all_headers))
        if body:
            data += self.conn.send(h11.Data(data=body))
        data += self.conn.send(h11.EndOfMessage())
        await self.stream.send(data)

    async def read_response(
        self,
        response: Optional[ClientResponse] = None,
        until: Optional[Callable[[ClientResponse], bool]] = None,
    ) -> ClientResponse:
        """Read one response, or only until ``until(response)`` holds.

        Pass the ``response`` of an earlier partial read to continue it.
        Never raises for a misbehaving server: see ``complete`` and ``error``.
        """
        response = response if response is not None else ClientResponse()
        try:
            while True:
                event = self.conn.next_event()
                if event is h11.NEED_DATA:
                    try:
                        data = await self.stream.receive(65536)
                    except anyio.EndOfStream:
                        data = b""
                    self.conn.receive_data(data)
                elif isinstance(event, h11.Response):
                    response.status = event.status_code
                    response.headers = [
                        (k.decode("latin-1"), v.decode("latin-1")) for k, v in event.headers
                    ]
                    if until is not None and until(response):
                        return response
                elif isinstance(event, h11.Data):
                    response.chunks.append(bytes(event.data))
                    if until is not None and until(response):
                        return response
                elif isinstance(event, h11.EndOfMessage):
                    response.complete = True
                    return response
                elif isinstance(event, h11.ConnectionClosed):
                    response.error = "connection closed"
                    return response
        except (*_BROKEN, h11.RemoteProtocolError) as exc:
            response.error = repr(exc)
            return response

    async def request(
        self,
        method: str,
        path: str,
        *,
        headers: Sequence[tuple[str, str]] = (),
        body: bytes = b"",
        json_body: Any = None,
    ) -> ClientResponse:
        """Send a request and read its response (see :meth:`read_response`)."""
        if json_body is not None:
            body = json.dumps(json_body).encode()
            headers = [("content-type", "application/json"), *headers]
        await self.send_request(method, path, headers=headers, body=body)
        return await self.read_response()

    def reusable(self) -> bool:
        return self.conn.our_state is h11.DONE and self.conn.their_state is h11.DONE
