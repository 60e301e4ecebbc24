"""The client-facing HTTP/1.1 server (h11 over the asyncio protocols of goose_proxy.streams)."""

from goose_proxy.http.server import ProxyServer

__all__ = ["ProxyServer"]
