"""HTTP/1.1 response bytes, written directly.

h11 parses the requests; the replies are simple enough (a status line, a few
trusted headers, a Content-Length body or chunks) to write from byte templates,
which takes a tenth of the time of h11's validating writer — this server sits
on the benchmarks' hot path. Writing raw bytes is also what the faults need
(cut bodies, missing last chunk). Pure.
"""

from __future__ import annotations

from collections.abc import Sequence
from http import HTTPStatus

LAST_CHUNK = b"0\r\n\r\n"

_STATUS_LINES: dict[int, bytes] = {}


def reason(status: int) -> str:
    """The reason phrase of ``status`` (``"Unknown"`` for unassigned codes)."""
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Unknown"


def status_line(status: int) -> bytes:
    line = _STATUS_LINES.get(status)
    if line is None:
        line = _STATUS_LINES[status] = b"HTTP/1.1 %d %s\r\n" % (status, reason(status).encode())
    return line


def head(status: int, headers: Sequence[tuple[bytes, bytes]], *extra: tuple[bytes, bytes]) -> bytes:
    """Status line, headers (``extra`` appended) and the blank line."""
    lines = [status_line(status)]
    for name, value in headers:
        lines.append(b"%s: %s\r\n" % (name, value))
    for name, value in extra:
        lines.append(b"%s: %s\r\n" % (name, value))
    lines.append(b"\r\n")
    return b"".join(lines)


def chunk(data: bytes) -> bytes:
    """``data`` as one chunk of a chunked body (empty data: nothing)."""
    if not data:
        return b""
    return b"%x\r\n%s\r\n" % (len(data), data)


def has_header(headers: Sequence[tuple[bytes, bytes]], name: bytes) -> bool:
    return any(key.lower() == name for key, _ in headers)


def wants_close(headers: Sequence[tuple[bytes, bytes]]) -> bool:
    """Whether a ``Connection`` header carries the ``close`` token."""
    for key, value in headers:
        if key.lower() == b"connection" and b"close" in (
            t.strip() for t in value.lower().split(b",")
        ):
            return True
    return False
