"""Backend failures → the proxy's error hierarchy (docs/api-translation.md §4).

Two sources: an HTTP error answer (:func:`error_from_backend`) and an error
reported inside a stream or a Response object (:func:`error_from_event`).
Both pick the class by what the client should do next, which is what Goose
keys on: ``ContextLengthExceeded`` (400, Goose compacts its history) when the
message says the prompt is too long, ``RateLimited`` (429, keeps
``Retry-After``) for rate limits and quota, authentication errors kept as
401/403, and everything else passed through with the backend's status (422,
FastAPI's validation status, becomes 400, and Lightspeed's 422 for a request
body over its size cap becomes ``ContextLengthExceeded``).

The backend's message is passed on; a body that is not JSON becomes text,
truncated to :data:`MAX_MESSAGE_CHARS`, invalid UTF-8 replaced. Every error
built here is marked ``quoted``: it carries the backend's words, which the
client is shown and the proxy's log does not repeat.
"""

from __future__ import annotations

import functools
import itertools
import json
import re
from collections.abc import Mapping
from typing import Any, Callable, Optional, TypeVar, cast

from goose_proxy.errors import (
    AuthenticationError,
    ContextLengthExceeded,
    ProxyError,
    QuotaExhausted,
    RateLimited,
    UpstreamError,
    UpstreamHTTPError,
)

__all__ = [
    "CONTEXT_LENGTH_PHRASES",
    "MAX_MESSAGE_CHARS",
    "RATE_LIMIT_PHRASES",
    "error_from_backend",
    "error_from_event",
    "retry_hints",
]

MAX_MESSAGE_CHARS = 1000

#: lower-case substrings that mean "the prompt does not fit the model"
CONTEXT_LENGTH_PHRASES = (
    "maximum context length",
    "context_length_exceeded",
    "context length exceeded",
    "exceeds the context length",
    "context window",
    "prompt is too long",
    "prompt too long",
    "input is too long",
    "exceeds the maximum number of tokens",
    # vLLM: "The engine prompt length N exceeds the max_model_len M", and "The
    # decoder prompt (length N) is longer than the maximum model length of M"
    "max_model_len",
    "maximum model length",
    # llama.cpp: "the request exceeds the available context size"
    "available context size",
)
#: lower-case substrings that mean the quota is used up until its period renews
#: (Lightspeed Stack's words, OpenAI's), unlike a per-minute quota that is a rate limit
QUOTA_PHRASES = ("quota has been exceeded", "exceeded your current quota")
#: Lightspeed Stack's words for any 429 of its inference provider (a per-minute
#: rate limit as well): a rate limit, not the user's quota used up
MODEL_QUOTA_PHRASE = "model quota has been exceeded"
#: lower-case substrings that mean "slow down" or "out of quota"
RATE_LIMIT_PHRASES = (
    "rate limit",
    "rate_limit",
    "ratelimit",
    "too many requests",
    "quota",
    "resource_exhausted",
    "resource exhausted",
)
_CLIENT_FAULT_CODES = ("invalid_prompt", "bio_policy", "data_residency_mismatch")


def _says(text: str, phrases: tuple[str, ...]) -> bool:
    lowered = text.lower()
    return any(p in lowered for p in phrases)


def _clip(text: str) -> str:
    text = text.strip()
    if len(text) > MAX_MESSAGE_CHARS:
        return text[:MAX_MESSAGE_CHARS] + "…"
    return text


def _detail_message(detail: Any) -> Optional[str]:
    """FastAPI's ``detail``: a string, ``{response, cause}``, or a validation list."""
    if isinstance(detail, str):
        return detail
    if isinstance(detail, Mapping):
        response, cause = detail.get("response"), detail.get("cause")
        if isinstance(response, str) and isinstance(cause, str) and cause:
            return f"{response}: {cause}"
        if isinstance(response, str):
            return response
        if isinstance(cause, str):
            return cause
        message = detail.get("message")
        return message if isinstance(message, str) else None
    if isinstance(detail, list):
        for entry in detail:
            if isinstance(entry, Mapping) and isinstance(entry.get("msg"), str):
                loc = entry.get("loc")
                msg: str = entry["msg"]
                if isinstance(loc, list) and loc:
                    return ".".join(str(part) for part in loc) + ": " + msg
                return msg
    return None


_NOT_JSON = object()

#: how much of an HTML error page is searched for its title (a page held
#: whole, up to the 1 MiB read of an error body, might take long to scan)
HTML_SCAN_CHARS = 64 * 1024
# (each comment matched one way only: ".*?" let one run over the next "-->",
# and a page of comments then took exponential time to refuse)
_HTML_START = re.compile(r"\s*(?:<!--(?:[^-]|-(?!->))*-->\s*)*<(?:!doctype\s+html|html)\b", re.I)
_HTML_HEADING = re.compile(r"<(title|h1|h2)\b[^>]{0,200}>", re.I)
_TAG = re.compile(r"<[^>]*(?:>|$)")  # also one cut off at the end


def _html_page(text: str) -> Optional[str]:
    """For an HTML page: the words of its title (or first heading), else its
    first words (``""`` for none); None for any other text."""
    text = text[:HTML_SCAN_CHARS]
    if not _HTML_START.match(text):
        return None
    import html  # rarely needed: not at start-up

    for m in itertools.islice(_HTML_HEADING.finditer(text), 8):
        inner = text[m.end() : m.end() + 500]
        end = inner.lower().find(f"</{m.group(1).lower()}")
        words = " ".join(html.unescape(_TAG.sub(" ", inner[: max(end, 0)])).split())
        if words:
            return words
    # no title: the page's words, as far as they go
    return " ".join(html.unescape(_TAG.sub(" ", text)).split())[:300]


def _parse(body: bytes) -> tuple[str, Any]:
    """The body as text, and as JSON (``_NOT_JSON`` when it is not)."""
    text = body.decode("utf-8", errors="replace")
    try:
        return text, json.loads(text)
    except (ValueError, RecursionError):
        return text, _NOT_JSON


def _message_in(text: str, doc: Any) -> tuple[str, Optional[str]]:
    """The human message and error code in a backend error body (``text``, and
    ``doc`` its JSON from :func:`_parse`).

    Tries ``error.message`` (OpenAI), a string ``error``, FastAPI's ``detail``,
    a top-level ``message``; else the body as text. The message is never
    longer than :data:`MAX_MESSAGE_CHARS` (plus an ellipsis); it may be empty.
    """
    if isinstance(doc, Mapping):
        err = doc.get("error")
        if isinstance(err, Mapping):
            code = err.get("code")
            message = err.get("message")
            if isinstance(message, str) and message:
                return _clip(message), code if isinstance(code, str) else None
        elif isinstance(err, str) and err:
            return _clip(err), None
        if "detail" in doc:
            message = _detail_message(doc["detail"])
            if message:
                return _clip(message), None
        message = doc.get("message")
        if isinstance(message, str) and message:
            code = doc.get("code")
            return _clip(message), code if isinstance(code, str) else None
    return _clip(text), None


def _whole_body_too_long(said: str, doc: Any) -> bool:
    """A FastAPI/pydantic 422 saying the request body itself is too long:
    Lightspeed Stack's "Value error, Request body size (N characters) exceeds
    maximum allowed size of 65536 characters" (found in ``said``, the message,
    also when the body was cut short: that 422 repeats the whole request), or
    ``{"detail": [{"type": "string_too_long", "loc": ["body"], …}]}``."""
    if _says(said, ("request body size (",)) and _says(said, ("exceeds maximum allowed size",)):
        return True
    detail = doc.get("detail") if isinstance(doc, Mapping) else None
    return isinstance(detail, list) and any(
        isinstance(d, Mapping) and d.get("type") == "string_too_long" and d.get("loc") == ["body"]
        for d in detail
    )


def _printable(value: Optional[str]) -> Optional[str]:
    """``value`` stripped, when it may go into our own response head (a printable
    single line of at most 64 characters); else None."""
    if value is None:
        return None
    value = value.strip()
    if not value or len(value) > 64 or not all(" " <= c <= "~" for c in value):
        return None
    return value


_MILLISECONDS = re.compile(r"[0-9]+(?:\.[0-9]+)?")


def retry_hints(
    retry_after: Optional[str] = None,
    retry_after_ms: Optional[str] = None,
    should_retry: Optional[str] = None,
) -> list[tuple[str, str]]:
    """The backend's retry hints that an error answer of ours repeats, as headers.

    ``Retry-After`` when it is printable (see :func:`_printable`),
    ``retry-after-ms`` when it is a non-negative number (``200``, ``1.5``) and
    ``x-should-retry`` when it is ``true`` or ``false``: what OpenAI's SDKs
    read to decide whether, and when, to send a failed request again. Any
    other value is left out.
    """
    headers: list[tuple[str, str]] = []
    value = _printable(retry_after)
    if value is not None:
        headers.append(("Retry-After", value))
    value = _printable(retry_after_ms)
    if value is not None and _MILLISECONDS.fullmatch(value):
        headers.append(("retry-after-ms", value))
    value = _printable(should_retry)
    if value in ("true", "false"):
        headers.append(("x-should-retry", value))
    return headers


_F = TypeVar("_F", bound=Callable[..., ProxyError])


def _quoting(build: _F) -> _F:
    """Mark every error ``build`` makes as quoting the backend (ProxyError.quoted)."""

    @functools.wraps(build)
    def marked(*args: Any, **kwargs: Any) -> ProxyError:
        err = build(*args, **kwargs)
        err.quoted = True
        return err

    return cast(_F, marked)


@_quoting
def error_from_backend(
    status: int,
    body: bytes,
    retry_after: Optional[str] = None,
    *,
    retry_after_ms: Optional[str] = None,
    should_retry: Optional[str] = None,
) -> ProxyError:
    """The error to show the client for a backend error answer.

    ``status`` is the backend's HTTP status, ``body`` its (possibly truncated)
    body, ``retry_after``, ``retry_after_ms`` and ``should_retry`` its
    ``Retry-After``, ``retry-after-ms`` and ``x-should-retry`` headers, copied
    to ``.headers`` when present and sane (see :func:`retry_hints`). 401/403 →
    :class:`AuthenticationError` with the same status; 429 or a rate-limit/quota
    message → :class:`RateLimited` (:class:`QuotaExhausted` for a quota used up,
    see :func:`_rate_limited`); 413, a context-length message or a 422 for a too
    long body → :class:`ContextLengthExceeded` (400, without the retry hints);
    other 422 → 400; any other status is kept (:class:`UpstreamHTTPError`).
    An OpenAI-shaped body's ``error.param`` is kept (the backend's name for
    the field it blames). Never raises.
    """
    text, doc = _parse(body)
    message, code = _message_in(text, doc)
    page = _html_page(text) if doc is _NOT_JSON else None
    if page is not None:  # a gateway's or router's page: its title, not its markup
        message = f"backend answered HTTP {status} with an HTML page"
        message += f": {_clip(page)!r}" if page else ""
    if not message:
        message = f"backend answered HTTP {status}"
    headers = retry_hints(retry_after, retry_after_ms, should_retry)
    err = _backend_error(status, message, code, doc, headers)
    inner = doc.get("error") if isinstance(doc, Mapping) else None
    param = inner.get("param") if isinstance(inner, Mapping) else None
    if err.param is None and isinstance(param, str) and param:
        err.param = _clip(param)
    return err


def _backend_error(
    status: int, message: str, code: Optional[str], doc: Any, headers: list[tuple[str, str]]
) -> ProxyError:
    """:func:`error_from_backend` but for the ``param``."""
    said = f"{message} {code or ''}"
    if status in (401, 403):
        auth = AuthenticationError(message, status=status, headers=headers)
        if code is not None:
            auth.code = code  # OpenAI's invalid_api_key, say
        elif status == 403:
            auth.code = "permission_denied"
        return auth
    if status == 429:
        return _rate_limited(message, said, code, headers)
    if status == 413 or _says(said, CONTEXT_LENGTH_PHRASES):
        # no retry hints: the same request cannot fit, a shorter one is another
        # request (a backend's "x-should-retry: true" would have the SDK send it again)
        return ContextLengthExceeded(message)
    if status == 422 and _whole_body_too_long(said, doc):
        # Lightspeed Stack's cap on the request body: for Goose, a context too long
        return ContextLengthExceeded(f"the conversation is too long for the backend ({message})")
    if _says(said, RATE_LIMIT_PHRASES) or code == "insufficient_quota":
        return _rate_limited(message, said, code, headers)
    if status < 400:  # not an error status: the caller met a body it could not use
        return UpstreamError(message, headers=headers)
    if status == 409 and isinstance(doc, Mapping) and "detail" in doc:
        # FastAPI's 409 (Lightspeed Stack's "Tool conflict"): the same request
        # conflicts again. OpenAI's own 409s (a lock) are worth the SDK's retry
        if not any(name == "x-should-retry" for name, _ in headers):
            headers = [*headers, ("x-should-retry", "false")]
    return UpstreamHTTPError(
        message, status=400 if status == 422 else status, code=code, headers=headers
    )


def _rate_limited(
    message: str, said: str, code: Optional[str], headers: list[tuple[str, str]]
) -> RateLimited:
    """:class:`QuotaExhausted` when the backend says the quota is used up and
    gives no time to come back at (``Retry-After``, ``retry-after-ms``); else
    :class:`RateLimited`."""
    timed = any(name in ("Retry-After", "retry-after-ms") for name, _ in headers)
    if _says(said, (MODEL_QUOTA_PHRASE,)):
        return RateLimited(message, headers=headers)
    if not timed and (code == "insufficient_quota" or _says(said, QUOTA_PHRASES)):
        return QuotaExhausted(message, headers=headers)
    return RateLimited(message, headers=headers)


@_quoting
def error_from_event(err: Mapping[str, Any]) -> ProxyError:
    """The error for a failure reported in a stream or a Response object.

    ``err`` is ``response.error`` of a ``response.failed`` event (or of a
    Response with ``status: "failed"``), a flat ``error`` event
    (``{"type": "error", "code", "message", "param"}``) or the nested shape
    (``{"type": "error", "error": {...}}``). Context-length messages →
    :class:`ContextLengthExceeded`; rate limits/quota → :class:`RateLimited`;
    codes that blame the request (``invalid_*``, image problems,
    ``invalid_request_error`` type) → 400; else :class:`UpstreamError` (502)
    with the backend's code kept. Never raises.
    """
    inner = err.get("error")
    if isinstance(inner, Mapping):
        err = inner
    raw_message = err.get("message")
    message = _clip(raw_message) if isinstance(raw_message, str) else ""
    code = err.get("code") if isinstance(err.get("code"), str) else None
    etype = err.get("type") if isinstance(err.get("type"), str) else None
    param = err.get("param") if isinstance(err.get("param"), str) else None
    if not message:
        message = f"upstream reported an error ({code})" if code else "upstream reported an error"
    said = f"{message} {code or ''}"
    # Llama Stack and OGX give the HTTP status an error stands for, in
    # ``status_code`` or as ``code`` ("400", "404"): the status decides, and it
    # is no error code
    status = err.get("status_code")
    if not (isinstance(status, int) and not isinstance(status, bool) and 100 <= status < 600):
        status = None
    if code is not None and len(code) == 3 and code.isascii() and code.isdigit():
        status, code = int(code), None
    if _says(said, CONTEXT_LENGTH_PHRASES):
        return ContextLengthExceeded(message, param=param)
    if _says(said, RATE_LIMIT_PHRASES) or code == "insufficient_quota" or status == 429:
        return _rate_limited(message, said, code, [])
    if status is not None and 400 <= status < 500:
        return UpstreamHTTPError(message, status=400 if status == 422 else status, code=None)
    blames_request = code is not None and (
        code.startswith("invalid_") or "image" in code or code in _CLIENT_FAULT_CODES
    )
    if blames_request or etype == "invalid_request_error":
        return UpstreamHTTPError(message, status=400, code=code)
    return UpstreamError(message, code=code, param=param)
