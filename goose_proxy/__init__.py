"""goose-proxy: a Chat Completions ⇄ Responses API translation proxy with mTLS.

The names in ``__all__`` are the public API for embedding (see
``goose_proxy.api`` and ``docs/embedding.md``). They are loaded on first use,
so that ``import goose_proxy`` stays cheap (the command line's start-up time
depends on it); only running the proxy loads anyio, h11 and asyncio.
"""

from __future__ import annotations

__version__ = "0.1.0"

_CONFIG = "goose_proxy.config"
_TRANSLATE = "goose_proxy.translate"
_API = "goose_proxy.api"

#: public name → the module that defines it
_EXPORTS = {
    "AuthConfig": _CONFIG,
    "BackendConfig": _CONFIG,
    "Config": _CONFIG,
    "ConfigError": _CONFIG,
    "LoggingConfig": _CONFIG,
    "ModelsConfig": _CONFIG,
    "ServerConfig": _CONFIG,
    "TranslateConfig": _CONFIG,
    "load_config": _CONFIG,
    "parse_config": _CONFIG,
    "ProxyError": "goose_proxy.errors",
    "DONE_FRAME": _TRANSLATE,
    "ChatRequest": _TRANSLATE,
    "ResponseAccumulator": _TRANSLATE,
    "StreamTranslator": _TRANSLATE,
    "TranslateOptions": _TRANSLATE,
    "as_function_call": _TRANSLATE,
    "chat_to_responses": _TRANSLATE,
    "error_from_backend": _TRANSLATE,
    "events_from_response": _TRANSLATE,
    "parse_json_object": _TRANSLATE,
    "prepare_passthrough": _TRANSLATE,
    "responses_to_chat": _TRANSLATE,
    "SSEEvent": "goose_proxy.upstream.sse",
    "SSEParser": "goose_proxy.upstream.sse",
    "RunningProxy": _API,
    "serve_in_background": _API,
    "translate_options": _API,
}

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
    "__version__",
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

# ``typing`` costs milliseconds to import; mypy treats this name as true.
TYPE_CHECKING = False


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'goose_proxy' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})


if TYPE_CHECKING:
    from typing import Any

    from goose_proxy.api import (
        DONE_FRAME,
        AuthConfig,
        BackendConfig,
        ChatRequest,
        Config,
        ConfigError,
        LoggingConfig,
        ModelsConfig,
        ProxyError,
        ResponseAccumulator,
        RunningProxy,
        ServerConfig,
        SSEEvent,
        SSEParser,
        StreamTranslator,
        TranslateConfig,
        TranslateOptions,
        as_function_call,
        chat_to_responses,
        error_from_backend,
        events_from_response,
        load_config,
        parse_config,
        parse_json_object,
        prepare_passthrough,
        responses_to_chat,
        serve_in_background,
        translate_options,
    )
