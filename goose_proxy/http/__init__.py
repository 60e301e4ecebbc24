"""The client-facing HTTP/1.1 server (h11 on anyio)."""

from goose_proxy.http.server import ProxyServer

__all__ = ["ProxyServer"]
