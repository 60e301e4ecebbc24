"""Strict JSON in, compact JSON out.

``parse_json_object`` is the one gate every client body passes through: it
turns bytes into a ``dict`` or raises :class:`~goose_proxy.errors.InvalidRequest`
with a message a client can act on. It refuses what ``json.loads`` alone lets
through and what would hurt later: ``NaN``/``Infinity`` (not JSON, and
``1e999`` overflows to ``inf`` the same way), integers with more digits than a
sane number has, and nesting deeper than :data:`MAX_DEPTH`. Duplicate object
keys are not an error: the last one wins, as with ``json.loads``.

``encode_json`` is the one way out: compact separators, UTF-8, non-ASCII kept
as is. A string holding a lone surrogate (legal in JSON text as ``"\\ud800"``,
not encodable as UTF-8) falls back to ASCII escapes for that document so the
bytes we send are always valid UTF-8.
"""

from __future__ import annotations

# The codec of "utf-8-sig" is a module loaded on its first use: at start, not
# with the first request, which (when the process is out of file descriptors)
# could not load it and failed with an internal error.
import encodings.utf_8_sig  # noqa: F401
import json
import math
import re
from typing import Any, Callable

from goose_proxy.errors import InvalidRequest, MalformedBody, client_utf8

__all__ = [
    "MAX_DEPTH",
    "MAX_INT_DIGITS",
    "encode_json",
    "encode_json_for_client",
    "encode_json_str",
    "encode_str_for_client",
    "parse_json_object",
]

#: deepest nesting of arrays/objects accepted in a client body
MAX_DEPTH = 64
#: longest integer literal accepted (Python's own default limit is 4300)
MAX_INT_DIGITS = 4300

_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False)
#: what ``_ENCODER.encode`` calls for a ``str`` (the C function where there is one)
_encode_str: Callable[[str], str] = json.encoder.encode_basestring


#: what a message about a body that ends too soon adds
_ENDS_EARLY = "; it ends too soon: does the client's Content-Length count its UTF-8 bytes?"


class _Rejected(ValueError):
    """Raised from the parse hooks; turned into InvalidRequest by the caller."""


def _reject_constant(name: str) -> Any:
    raise _Rejected(f"{name} is not valid JSON")


def _parse_int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_INT_DIGITS:
        raise _Rejected(f"integer literal longer than {MAX_INT_DIGITS} digits")
    return int(text)


def _parse_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise _Rejected(f"number {text[:40]} is out of range")
    return value


_CONTAINERS = (dict, list)


def _depth_exceeds(value: Any, limit: int) -> bool:
    """True if ``value`` (what ``json.loads`` made: plain dicts and lists) nests
    containers deeper than ``limit``. Level by level, without recursion: seven
    times faster than a stack of (node, depth) pairs on a body of millions of
    ``{}`` (0.6 against 4.6 s for 16 MiB)."""
    level = [value]
    depth = 1
    while level:
        if depth > limit:
            return True
        below = []
        for node in level:
            for v in node.values() if type(node) is dict else node:
                if type(v) in _CONTAINERS:
                    below.append(v)
        level = below
        depth += 1
    return False


def parse_json_object(raw: bytes) -> dict[str, Any]:
    """Parse a request body that must be a JSON object.

    A leading UTF-8 byte order mark is ignored (RFC 8259 allows that);
    duplicate keys are accepted and the last one wins.

    Raises:
        InvalidRequest: the bytes are not UTF-8, not JSON, not an object, use
            ``NaN``/``Infinity`` or an out-of-range number, carry an integer
            longer than :data:`MAX_INT_DIGITS` digits, or nest deeper than
            :data:`MAX_DEPTH`.
    """
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        end = _ENDS_EARLY if exc.reason == "unexpected end of data" else ""
        raise MalformedBody(f"request body is not valid UTF-8 (byte {exc.start}){end}") from None
    try:
        value = json.loads(
            text,
            parse_constant=_reject_constant,
            parse_int=_parse_int,
            parse_float=_parse_float,
        )
    except _Rejected as exc:
        raise InvalidRequest(f"request body is not valid JSON: {exc}") from None
    except json.JSONDecodeError as exc:
        # cut short: the error is where the text ends, or a string runs to it
        short = exc.pos >= len(text.rstrip()) or exc.msg.startswith("Unterminated string")
        raise MalformedBody(
            f"request body is not valid JSON: {exc.msg} (line {exc.lineno} column {exc.colno})"
            f"{_ENDS_EARLY if short and text.strip() else ''}"
        ) from None
    except RecursionError:
        raise InvalidRequest(f"request body nests deeper than {MAX_DEPTH} levels") from None
    except ValueError as exc:  # e.g. the interpreter's own int digit limit
        raise InvalidRequest(f"request body is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise InvalidRequest(f"request body must be a JSON object, not {json_type_name(value)}")
    if _depth_exceeds(value, MAX_DEPTH):
        raise InvalidRequest(f"request body nests deeper than {MAX_DEPTH} levels")
    return value


def json_type_name(value: Any) -> str:
    """The JSON name of a Python value's type, for error messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def encode_json_str(value: Any) -> str:
    """Compact JSON text; a lone surrogate (valid JSON, not valid UTF-8) as its
    ``\\uXXXX`` escape, and nothing else escaped.

    Raises:
        ValueError: ``value`` holds a non-finite float.
        TypeError: ``value`` holds something JSON cannot represent.
    """
    text = _ENCODER.encode(value)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return _escape_surrogates(text)
    return text


def encode_json(value: Any) -> bytes:
    """Compact UTF-8 JSON bytes (``ensure_ascii=False``) for any JSON-able value.

    Raises:
        ValueError: ``value`` holds a non-finite float.
        TypeError: ``value`` holds something JSON cannot represent.
    """
    text = _ENCODER.encode(value)
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        return _escape_surrogates(text).encode("utf-8")


def encode_json_in_pieces(obj: dict[str, Any]) -> bytes:
    """:func:`encode_json` of an object, the same bytes, made a top-level value
    (and an item of a top-level array) at a time.

    For a large request body, encoded in a worker thread: one call of the C
    encoder holds the GIL, and with it the event loop, for the whole body
    (32 ms for 6.6 MiB of history); a piece at a time, for at most
    :data:`PIECE_ITEMS` items of an array.
    """
    parts = []
    for key, value in obj.items():
        head = encode_json(key) + b":"
        if isinstance(value, list) and len(value) > PIECE_ITEMS:
            # a slice of items per call: one per item cost a call per number
            pieces = (
                encode_json(value[i : i + PIECE_ITEMS])[1:-1]
                for i in range(0, len(value), PIECE_ITEMS)
            )
            parts.append(head + b"[" + b",".join(pieces) + b"]")
        else:
            parts.append(head + encode_json(value))
    return b"{" + b",".join(parts) + b"}"


#: the items of an array :func:`encode_json_in_pieces` encodes in one call
PIECE_ITEMS = 64


def encode_json_for_client(value: Any) -> bytes:
    """:func:`encode_json` for what a chat client reads: a lone surrogate (the half
    of a pair that nothing completed) becomes U+FFFD instead of its escape, as
    UTF-8 decoders do; a pair written as two halves becomes its character.

    Goose reads each chunk with Rust's serde_json, which refuses an escaped lone
    surrogate and fails the whole turn (its tool calls too); the replacement
    character loses nothing a client could have shown.
    """
    return client_utf8(_ENCODER.encode(value))


def encode_str_for_client(value: str) -> bytes:
    """:func:`encode_json_for_client` of a ``str`` (what the encoder does for one,
    without its Python layer: a stream's text deltas take this path)."""
    return client_utf8(_encode_str(value))


# Surrogates appear in the encoder's text only inside strings, where the escape
# means the same. Escaping just them (not the whole text with ensure_ascii)
# keeps the size on the wire: 20,000 CJK characters and one lone surrogate stay
# 60,006 bytes, not 120,006 (Lightspeed's cap counts the escaped form either
# way: it encodes the parsed body again, see handlers._backend_chars).
_SURROGATE = re.compile("[\ud800-\udfff]")


def _escape_surrogates(text: str) -> str:
    return _SURROGATE.sub(lambda m: f"\\u{ord(m.group()):04x}", text)
