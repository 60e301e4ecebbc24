"""Decoder for a chunked response body (RFC 9112 §7.1), sans-I/O.

Why not h11: h11 turns every chunk into its own ``Data`` event, and a
streaming backend (uvicorn, Lightspeed Stack) writes one chunk per SSE event,
so with h11 a stream of small deltas costs about 5 µs of event machinery per
event — more than parsing and translating the event. h11 still parses the
response head; :class:`~goose_proxy.upstream.client.UpstreamResponse` then
hands the body bytes to this decoder, which returns the data of all complete
and partial chunks of a read as one piece.

Theory of operation: a four-state loop over the buffered bytes — *size line*
→ *data* (``size`` bytes, returned as they arrive) → *CRLF* → *size line* … ;
a zero size line leads to the *trailer* section (lines skipped up to the empty
one), after which :attr:`ChunkedDecoder.done` is set and nothing more is
consumed. Like h11 for the head, it takes a bare LF for a CRLF (RFC 9112
§2.2 allows a recipient to). Only an unfinished size or trailer line is buffered, capped at
``max_line`` bytes, so memory stays bounded whatever the backend sends; the
whole trailer section is capped at ``max_line`` too (no data can follow it, so
an endless one would only keep the read going).
"""

from __future__ import annotations

import re
from typing import Optional

from goose_proxy.errors import UpstreamProtocolError

# chunk-size [ chunk-ext ], whitespace allowed before the extension (RFC 9112 BWS),
# up to the LF that ends the line (the CR before it is matched here: cheaper
# than a test in Python per chunk)
_SIZE_LINE = re.compile(rb"([0-9A-Fa-f]{1,16})[ \t]*(?:;[^\r\n]*)?\r?")

_SIZE, _DATA, _CRLF, _TRAILER = range(4)


class ChunkedDecoder:
    """``feed(bytes) -> bytes`` of body data; :attr:`done` after the last chunk."""

    __slots__ = ("_buf", "_left", "_max_line", "_state", "_trailer", "done")

    def __init__(self, max_line: int = 64 * 1024) -> None:
        self._buf = b""
        self._left = 0  # data bytes still to come in the current chunk
        self._state = _SIZE
        self._max_line = max_line
        self._trailer = 0  # bytes of trailer section so far
        #: the last chunk and the trailer section have been read
        self.done = False

    @property
    def leftover(self) -> bool:
        """Bytes were received after the end of the body (none from a sane
        server), other than line ends (some servers end a body with one more)."""
        return self.done and bool(self._buf.lstrip(b"\r\n"))

    def feed(self, data: bytes) -> bytes:
        """Decode ``data``; return the body bytes it completes (maybe ``b""``).

        Raises UpstreamProtocolError for a malformed size line, a missing CRLF
        after a chunk's data, a size or trailer line longer than ``max_line``, or
        a trailer section longer than that in all.
        """
        if self.done:  # only whether anything came after the end matters
            self._buf = self._buf or data[:1]
            return b""
        buf = self._buf + data if self._buf else data
        i, n = 0, len(buf)
        out: list[bytes] = []
        state, left = self._state, self._left
        while i < n:
            if state == _DATA:
                take = min(left, n - i)
                out.append(buf[i : i + take])
                i += take
                left -= take
                if left:
                    break
                state = _CRLF
            elif state == _CRLF:
                if buf[i] == 10:  # a bare LF
                    i += 1
                elif n - i < 2:
                    break
                elif buf[i : i + 2] == b"\r\n":
                    i += 2
                else:
                    raise UpstreamProtocolError("backend sent a malformed chunked body")
                state = _SIZE
            elif state == _SIZE:
                j = buf.find(b"\n", i)
                if j < 0:
                    if n - i > self._max_line:
                        raise UpstreamProtocolError("backend sent an over-long chunk header")
                    break
                m = _SIZE_LINE.fullmatch(buf, i, j) or _zero_padded(buf[i:j])
                if m is None:
                    raise UpstreamProtocolError("backend sent a malformed chunk size")
                left = int(m.group(1), 16)
                i = j + 1
                end = i + left
                if left and buf[end : end + 2] == b"\r\n":  # the whole chunk is here
                    out.append(buf[i:end])
                    i = end + 2
                    left = 0
                    continue
                state = _DATA if left else _TRAILER
            else:  # trailer fields, ignored; like h11, a bare LF ends a line too
                j = buf.find(b"\n", i)
                if j < 0:
                    if n - i > self._max_line:
                        raise UpstreamProtocolError("backend sent an over-long trailer line")
                    break
                empty = j == i or (j == i + 1 and buf[i] == 13)
                self._trailer += j + 1 - i
                if self._trailer > self._max_line:
                    raise UpstreamProtocolError("backend sent an over-long trailer section")
                i = j + 1
                if empty:  # the end of the trailer section: the body is complete
                    self.done = True
                    break
        self._state, self._left = state, left
        self._buf = buf[i:]
        if len(out) == 1:
            return out[0]
        return b"".join(out)


def _zero_padded(line: bytes) -> Optional[re.Match[bytes]]:
    """A size line with more than 16 digits read without its leading zeros,
    which are no digits of the size (one zero kept: ``000`` is ``0``)."""
    digits = line.lstrip(b"0")
    if len(digits) == len(line):
        return None
    return _SIZE_LINE.fullmatch(b"0" + digits)
