"""Incremental Server-Sent Events parser (sans-I/O).

Feed it body bytes as they arrive; it returns the complete events found so far.
It follows the WHATWG event-stream rules that matter for Responses backends:
``event:`` and ``data:`` fields, multi-line ``data`` joined with ``\\n``, a single
optional space after the colon, comment lines (``:``), ``\\n``, ``\\r\\n`` and ``\\r``
line endings (also split across reads), and a blank line ending each event.
``id:`` and ``retry:`` are ignored (we never reconnect).

One event is capped at ``max_event_size`` bytes: a larger one raises
:class:`~goose_proxy.errors.UpstreamProtocolError` instead of growing a buffer.
"""

from __future__ import annotations

from typing import NamedTuple, Optional

from goose_proxy.errors import UpstreamProtocolError


class SSEEvent(NamedTuple):
    event: Optional[str]
    data: str


class SSEParser:
    """``feed(bytes) -> list[SSEEvent]``; ``pending`` tells if a partial event is held."""

    __slots__ = ("_buf", "_cr", "_max")

    def __init__(self, max_event_size: int = 4 * 1024 * 1024) -> None:
        self._buf = b""
        self._cr = False  # the previous read ended in "\r" (maybe half of "\r\n")
        self._max = max_event_size

    @property
    def pending(self) -> bool:
        """True when bytes of an unfinished event are buffered."""
        return bool(self._buf.strip())

    def feed(self, data: bytes) -> list[SSEEvent]:
        """Parse ``data``; return every event it completes.

        Raises UpstreamProtocolError when one event exceeds the size cap or is not UTF-8.
        """
        if self._cr and data.startswith(b"\n"):
            data = data[1:]
        self._cr = False
        if b"\r" in data:
            self._cr = data.endswith(b"\r")
            data = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        buf = self._buf + data if self._buf else data
        if b"\n\n" not in buf:
            if len(buf) > self._max:
                raise UpstreamProtocolError(
                    f"backend sent a stream event larger than {self._max} bytes"
                )
            self._buf = buf
            return []
        blocks = buf.split(b"\n\n")
        self._buf = blocks.pop()
        if len(self._buf) > self._max:
            raise UpstreamProtocolError(
                f"backend sent a stream event larger than {self._max} bytes"
            )
        events = []
        for block in blocks:
            if len(block) > self._max:
                raise UpstreamProtocolError(
                    f"backend sent a stream event larger than {self._max} bytes"
                )
            ev = _parse_block(block)
            if ev is not None:
                events.append(ev)
        return events

    def close(self) -> list[SSEEvent]:
        """End of stream: a final event without its blank line still counts."""
        block, self._buf = self._buf, b""
        ev = _parse_block(block.rstrip(b"\n")) if block.strip() else None
        return [ev] if ev is not None else []


def _parse_block(block: bytes) -> Optional[SSEEvent]:
    # Fast path: one "data: ..." line and nothing else (OpenAI-style streams).
    if block.startswith(b"data: ") and b"\n" not in block:
        return SSEEvent(None, _decode(block[6:]))
    event: Optional[str] = None
    data: list[bytes] = []
    for line in block.split(b"\n"):
        if not line or line.startswith(b":"):
            continue
        name, sep, value = line.partition(b":")
        if sep and value.startswith(b" "):
            value = value[1:]
        if name == b"data":
            data.append(value)
        elif name == b"event":
            event = _decode(value)
    if not data and event is None:
        return None
    return SSEEvent(event, _decode(b"\n".join(data)))


def _decode(b: bytes) -> str:
    try:
        return b.decode("utf-8")
    except UnicodeDecodeError:
        raise UpstreamProtocolError("backend sent a stream event that is not UTF-8") from None
