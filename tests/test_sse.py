"""The backend SSE parser (``upstream.sse.SSEParser``) on reads cut anywhere."""

from __future__ import annotations

from typing import Optional

import pytest

from goose_proxy.errors import UpstreamProtocolError
from goose_proxy.upstream.sse import SSEEvent, SSEParser


def parse(reads: list[bytes], limit: int = 4096) -> tuple[list[SSEEvent], Optional[str]]:
    """The events a parser returns for ``reads`` (then the end), and the message of the
    error it raised (None: none)."""
    parser = SSEParser(limit)
    events: list[SSEEvent] = []
    try:
        for data in reads:
            events += parser.feed(data)
        events += parser.close()
    except UpstreamProtocolError as e:
        return events, e.message
    return events, None


EVENT = b'data: "' + b"x" * 56 + b'"'  # 64 bytes
TOO_LARGE = "backend sent a stream event larger than 64 bytes"


@pytest.mark.parametrize(
    "reads",
    [
        [EVENT + b"\n", b"\n"],
        [EVENT + b"\r", b"\n\r\n"],
        [EVENT + b"\r\n\r", b"\n"],
        [EVENT + b"\r", b"\r"],
        [b"data: a\n\n" + EVENT + b"\n", b"\ndata: a\n\n"],
        [EVENT + b"\n"],  # and the stream ends
    ],
    ids=["LF|LF", "CR|LF CRLF", "CRLF CR|LF", "CR|CR", "after-an-event", "end"],
)
def test_an_event_of_exactly_the_cap_cut_in_its_blank_line(reads: list[bytes]) -> None:
    # as in one read: the line end before the cut may be the first of the blank line
    events, error = parse(reads, limit=64)
    assert error is None and SSEEvent(None, '"' + "x" * 56 + '"') in events
    assert parse([b"".join(reads)], limit=64) == (events, None)


@pytest.mark.parametrize(
    "reads",
    [[EVENT + b"\n", b"data: b\n\n"], [EVENT + b"\n\n"[:1] + b"x"], [EVENT + b"x", b"\n\n"]],
    ids=["a-second-line", "same-read", "a-byte-more"],
)
def test_an_event_over_the_cap(reads: list[bytes]) -> None:
    assert parse(reads, limit=64) == ([], TOO_LARGE)
