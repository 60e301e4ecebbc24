"""The public API for embedding goose-proxy in another Python program.

Two uses, documented with examples in ``docs/embedding.md``:

* run the proxy inside an asyncio program (it is written with anyio), with a
  :class:`Config` built in code or read by :func:`load_config`:
  ``async with serve_in_background(config) as running: ... running.url ...``;
* call the pure, sans-I/O translators directly: :func:`chat_to_responses`,
  :func:`responses_to_chat`, :class:`StreamTranslator`, ... with the
  :class:`TranslateOptions` of a configuration (:func:`translate_options`).

Everything listed in ``__all__`` is also importable from the ``goose_proxy``
package itself, which loads this module (and anyio) only on first use. The
rest of the package is internal and may change between versions.
"""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Optional

from goose_proxy.config import (
    AuthConfig,
    BackendConfig,
    Config,
    ConfigError,
    LoggingConfig,
    ModelsConfig,
    ServerConfig,
    TranslateConfig,
    load_config,
    parse_config,
)
from goose_proxy.errors import ProxyError
from goose_proxy.translate import (
    DONE_FRAME,
    ChatRequest,
    ResponseAccumulator,
    StreamTranslator,
    TranslateOptions,
    as_function_call,
    chat_to_responses,
    error_from_backend,
    events_from_response,
    parse_json_object,
    prepare_passthrough,
    responses_to_chat,
)
from goose_proxy.upstream.sse import SSEEvent, SSEParser

if TYPE_CHECKING:
    from goose_proxy.http.server import ProxyServer

__all__ = [
    "DONE_FRAME",
    "AuthConfig",
    "BackendConfig",
    "ChatRequest",
    "Config",
    "ConfigError",
    "LoggingConfig",
    "ModelsConfig",
    "ProxyError",
    "ResponseAccumulator",
    "RunningProxy",
    "SSEEvent",
    "SSEParser",
    "ServerConfig",
    "StreamTranslator",
    "TranslateConfig",
    "TranslateOptions",
    "as_function_call",
    "chat_to_responses",
    "error_from_backend",
    "events_from_response",
    "load_config",
    "parse_config",
    "parse_json_object",
    "prepare_passthrough",
    "responses_to_chat",
    "serve_in_background",
    "translate_options",
]


def translate_options(config: Config) -> TranslateOptions:
    """The translation options the proxy uses for ``config`` (flavour, model,
    system messages, extra body fields)."""
    b = config.backend
    return TranslateOptions(
        flavor=b.flavor,
        model=b.model,
        system_messages=config.translate.system_messages or "",
        extra_body=dict(b.extra_body),
    )


@dataclass(frozen=True)
class RunningProxy:
    """A proxy serving in the background (see :func:`serve_in_background`)."""

    #: the base URL of the first listener, e.g. ``http://127.0.0.1:8080``;
    #: OpenAI clients take ``url + "/v1"`` as their base URL
    url: str
    host: str
    port: int
    #: every ``(host, port)`` listened on (one per address family of ``[server] host``)
    addresses: list[tuple[str, int]]
    #: the server object itself (internal: its interface may change)
    server: ProxyServer = field(repr=False, compare=False)


def _url(host: str, port: int) -> str:
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def _close(sockets: Optional[Sequence[socket.socket]]) -> None:
    """Close ``sockets``: serve_in_background owns them, also when it refuses them."""
    for s in sockets or ():
        s.close()


@asynccontextmanager
async def serve_in_background(
    config: Config, *, sockets: Optional[Sequence[socket.socket]] = None
) -> AsyncIterator[RunningProxy]:
    """Serve ``config`` in the current event loop while the ``async with`` block runs.

    The proxy listens on ``[server] host:port`` (port 0 picks a free port: read
    it from :attr:`RunningProxy.port`), or on ``sockets``, already bound and
    listening, which it then owns (and closes, also when it raises). The block
    is entered once the proxy accepts connections. Leaving it shuts the proxy
    down as SIGTERM does: no new connections, in-flight requests get
    ``[server] drain_timeout`` seconds to finish, then they are cancelled.

    Logging goes to the ``goose_proxy`` loggers; configure them as you like
    (the proxy installs no handler). Signals are left to the host program.

    Raises ``ConfigError`` for a value a configuration file could not hold
    (``config`` is checked as the file's values are), ``OSError`` when the
    address cannot be bound, ``ValueError`` when ``sockets`` holds no TCP
    socket (unix sockets only: no URL to report), ``RuntimeError`` outside an
    asyncio event loop (under trio, say).
    """
    import asyncio

    import anyio

    from goose_proxy.http.server import ProxyServer

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        _close(sockets)
        raise RuntimeError(
            "goose-proxy needs an asyncio event loop (asyncio.run, or anyio.run with "
            "its default backend); its sockets are asyncio protocols"
        ) from None
    if sockets and not any(s.family in (socket.AF_INET, socket.AF_INET6) for s in sockets):
        _close(sockets)
        raise ValueError(
            "serve_in_background needs a TCP socket among sockets (it reports the proxy's "
            "URL); unix sockets alone are served by the goose-proxy command"
        )
    try:
        server = ProxyServer(config)
    except ConfigError:
        _close(sockets)
        raise
    await server.open_listeners(sockets)
    host, port = server.bound[0]
    running = RunningProxy(_url(host, port), host, port, list(server.bound), server)
    async with anyio.create_task_group() as tg:
        await tg.start(server.serve)
        try:
            yield running
        finally:
            with anyio.CancelScope(shield=True):
                await server.shutdown()
            tg.cancel_scope.cancel()
