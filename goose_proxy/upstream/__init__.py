"""The backend client: mTLS context, connection pool, CONNECT proxy, SSE parser."""

from goose_proxy.upstream.client import Endpoint, UpstreamClient, UpstreamResponse
from goose_proxy.upstream.sse import SSEEvent, SSEParser
from goose_proxy.upstream.tls import ClientTLS

__all__ = [
    "ClientTLS",
    "Endpoint",
    "SSEEvent",
    "SSEParser",
    "UpstreamClient",
    "UpstreamResponse",
]
