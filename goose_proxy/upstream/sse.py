"""Incremental Server-Sent Events parser (sans-I/O).

Feed it body bytes as they arrive; it returns the complete events found so far.
It follows the WHATWG event-stream rules that matter for Responses backends:
``event:`` and ``data:`` fields, multi-line ``data`` joined with ``\\n``, a single
optional space after the colon, comment lines (``:``), ``\\n``, ``\\r\\n`` and ``\\r``
line endings (also split across reads), and a blank line ending each event.
``id:`` and ``retry:`` are ignored (we never reconnect). ``event: message``
is the default name spelled out, the same as none: its ``event`` is None. A
block without a ``data`` field dispatches no event (``retry: 3000``, a bare
``event: ping``); :attr:`SSEParser.fieldless` counts those that are not
comments alone, and :attr:`SSEParser.other_fields` the blocks with a field
other than ``data`` and ``event`` (``id``, ``retry``, a name of the backend's
own), for a relay that passes the bytes on (see :func:`has_fields`).

One event is capped at ``max_event_size`` bytes: a larger one raises
:class:`~goose_proxy.errors.UpstreamProtocolError` instead of growing a buffer
(after the good events that came before it in the same read, see ``feed``).

Speed: one read usually carries many events, so the common block shapes
(``data: …`` alone, ``event: …`` + ``data: …``) skip the line-by-line parse,
and :func:`event_json` decodes an event's data without ``json.loads``' Python
layers.

The backend's JSON (:func:`event_json`, :func:`upstream_json`) is read with
``NaN``, ``Infinity``, ``-Infinity`` and numbers past the float range (which
``json.loads`` takes as non-finite floats) as ``null``: no JSON a client gets
may hold them, and a stray one in a field the proxy reads or copies (a time
stamp, a token count, a logprob) would otherwise fail the whole answer.
"""

from __future__ import annotations

import json
import math
from typing import Any, Callable, NamedTuple, Optional, Union

from goose_proxy.errors import UpstreamProtocolError


def _finite(text: str) -> Optional[float]:
    value = float(text)
    return value if math.isfinite(value) else None


def _null(name: str) -> None:
    return None


_UPSTREAM_HOOKS: dict[str, Any] = {"parse_float": _finite, "parse_constant": _null}
_DECODER = json.JSONDecoder(**_UPSTREAM_HOOKS)
# the C scanner behind json.loads (an undocumented attribute, stable since 2.6)
_scan_json: Callable[[str, int], tuple[Any, int]] = _DECODER.scan_once  # type: ignore[attr-defined]


class SSEEvent(NamedTuple):
    event: Optional[str]
    data: str


class SSEParser:
    """``feed(bytes) -> list[SSEEvent]``; :meth:`close` at the end of the stream."""

    __slots__ = ("_buf", "_cr", "_error", "_max", "fieldless", "other_fields")

    def __init__(self, max_event_size: int = 4 * 1024 * 1024) -> None:
        #: the start of an event not ended yet; a bytearray once it spans more than
        #: one read, so that it grows in place: an event that comes in many reads
        #: costs time linear in its size (each read is copied and scanned once)
        self._buf: Union[bytes, bytearray] = b""
        self._cr = False  # the previous read ended in "\r" (maybe half of "\r\n")
        self._max = max_event_size
        self._error: Optional[UpstreamProtocolError] = None  # held back, see feed()
        #: blocks so far with fields but no data (no event), comments alone not counted
        self.fieldless = 0
        #: blocks so far with a field other than data and event (comments are none)
        self.other_fields = 0

    def check(self) -> None:
        """Raise the error that :meth:`feed` held back, if any."""
        if self._error is not None:
            raise self._error

    def feed(self, data: bytes) -> list[SSEEvent]:
        """Parse ``data``; return every event it completes.

        Raises UpstreamProtocolError when an event exceeds the size cap or is
        not UTF-8. The events before the bad one in the same ``data`` are
        returned first and the error is raised by the next call (``feed``,
        ``close`` or :meth:`check`): one read often carries many events, and
        a reply that is under way should deliver the good ones before it
        reports the failure, as it would had they come in reads of their own.
        """
        if self._error is not None:
            raise self._error
        if self._cr and data.startswith(b"\n"):
            data = data[1:]
        self._cr = False
        if b"\r" in data:
            self._cr = data.endswith(b"\r")
            data = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        buf = self._buf
        limit = self._max
        if buf:  # the start of an event from earlier reads (LFs only, no blank line)
            if b"\n\n" not in data and not (buf[-1] == 10 and data.startswith(b"\n")):
                # not ended yet: it grows in place, not copied or scanned again
                size = len(buf) + len(data)
                if size > limit and _too_long(size, data or buf, limit):
                    self._buf = b""
                    raise _too_large(limit)
                if type(buf) is bytes:
                    buf = self._buf = bytearray(buf)
                buf += data
                return []
            buf = buf + data if type(buf) is bytes else b"".join((buf, data))
        elif b"\n\n" not in data:
            if len(data) > limit and _too_long(len(data), data, limit):
                raise _too_large(limit)
            self._buf = data
            return []
        else:
            buf = data
        blocks = buf.split(b"\n\n")
        rest = blocks.pop()
        events: list[SSEEvent] = []
        try:
            for block in blocks:
                if len(block) > limit:
                    raise _too_large(limit)
                ev = _parse_block(block, self)
                if ev is not None:
                    events.append(ev)
                elif has_fields(block):
                    self.fieldless += 1
            if len(rest) > limit and _too_long(len(rest), rest, limit):
                raise _too_large(limit)
        except (UpstreamProtocolError, UnicodeDecodeError) as e:
            self._buf = b""
            err = e if isinstance(e, UpstreamProtocolError) else _not_utf8()
            if not events:
                raise err from None
            self._error = err
            return events
        self._buf = rest
        return events

    def close(self) -> list[SSEEvent]:
        """End of stream: a final event without its blank line still counts.

        Raises UpstreamProtocolError held back by :meth:`feed`, or for a final
        event that is not UTF-8.
        """
        self.check()
        block, self._buf = bytes(self._buf), b""
        try:
            ev = _parse_block(block.rstrip(b"\n"), self) if block.strip() else None
        except UnicodeDecodeError:
            raise _not_utf8() from None
        if ev is None and has_fields(block):
            self.fieldless += 1
        return [ev] if ev is not None else []


def has_fields(block: bytes) -> bool:
    """Whether the bytes of a block hold a line that is not a comment (any line
    ending)."""
    lines = block.replace(b"\r", b"\n").split(b"\n")
    return any(line and not line.startswith(b":") for line in lines)


def _too_long(size: int, end: Union[bytes, bytearray], limit: int) -> bool:
    """Whether the start of an event not ended yet, of ``size`` bytes (over ``limit``)
    ending with ``end``, is too long: an LF at its end may be the first of its blank
    line, and does not count (an event of ``limit`` bytes is not too long, wherever
    the reads cut it)."""
    return size > limit + 1 or not end.endswith(b"\n")


def _too_large(limit: int) -> UpstreamProtocolError:
    return UpstreamProtocolError(f"backend sent a stream event larger than {limit} bytes")


def _not_utf8() -> UpstreamProtocolError:
    return UpstreamProtocolError("backend sent a stream event that is not UTF-8")


def _parse_block(block: bytes, parser: SSEParser) -> Optional[SSEEvent]:
    """One event from its lines; a field other than data and event is counted in
    ``parser``. Raises UnicodeDecodeError (the callers map it)."""
    # Fast paths for the two shapes backends send: one "data: ..." line
    # (OpenAI style), and "event: ...\ndata: ..." (Lightspeed Stack).
    nl = block.find(b"\n")
    if nl < 0:
        if block.startswith(b"data: "):
            return SSEEvent(None, block[6:].decode())
    elif (
        block.startswith(b"event: ")
        and block.startswith(b"data: ", nl + 1)
        and block.find(b"\n", nl + 7) < 0
    ):
        kind = block[7:nl].decode()
        return SSEEvent(None if kind == "message" else kind, block[nl + 7 :].decode())
    event: Optional[str] = None
    data: list[bytes] = []
    other = False
    for line in block.split(b"\n"):
        if not line or line.startswith(b":"):
            continue
        name, sep, value = line.partition(b":")
        if sep and value.startswith(b" "):
            value = value[1:]
        if name == b"data":
            data.append(value)
        elif name == b"event":
            event = value.decode()
        else:
            other = True
    if other:
        parser.other_fields += 1
    if not data:
        return None  # no data field: nothing to dispatch, named or not
    if event == "message":
        event = None
    return SSEEvent(event, b"\n".join(data).decode())


def event_json(data: str) -> Any:
    """:func:`upstream_json` of an event's data, faster for the common case.

    It calls the C scanner directly, without ``loads``' two Python layers and
    their whitespace regexes: a third of the time for a small delta event.
    Anything unusual (surrounding whitespace, invalid JSON) goes to the full
    decoder, so the result and the exceptions are the same.
    """
    try:
        obj, end = _scan_json(data, 0)
    except (StopIteration, ValueError):
        return _DECODER.decode(data)
    if end != len(data):
        return _DECODER.decode(data)
    return obj


def upstream_json(raw: Union[bytes, str]) -> Any:
    """``json.loads(raw)`` for the backend's JSON, with non-finite numbers read
    as ``null`` (see the module's docstring); the same exceptions."""
    return json.loads(raw, **_UPSTREAM_HOOKS)
