"""The backend SSE parser (``upstream.sse.SSEParser``) on reads cut anywhere."""

from __future__ import annotations

import tracemalloc
from typing import Optional

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from goose_proxy.errors import UpstreamProtocolError
from goose_proxy.upstream.sse import SSEEvent, SSEParser, event_json, upstream_json


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


def cut(data: bytes, at: list[int]) -> list[bytes]:
    points = [0, *sorted(set(at)), len(data)]
    return [data[a:b] for a, b in zip(points, points[1:]) if b > a]


_LINE_ENDS = st.sampled_from([b"\n", b"\r\n", b"\r"])
_TEXT = st.text(
    st.characters(blacklist_categories=("Cs",), blacklist_characters="\r\n"), max_size=8
).map(str.encode)
_LINES = st.one_of(
    _TEXT.map(lambda t: b"data: " + t),
    _TEXT.map(lambda t: b"data:" + t),
    st.integers(0, 3000).map(lambda n: b'data: "' + b"x" * n + b'"'),  # longer than reads
    st.sampled_from([b"event: response.output_text.delta", b"event: message", b"event:"]),
    st.sampled_from([b": keep-alive", b"id: 7", b"retry: 100", b"data", b"other: x", b""]),
    st.just(b"data: \xff"),  # not UTF-8
)
_EVENTS = st.lists(
    st.tuples(st.lists(st.tuples(_LINES, _LINE_ENDS), min_size=1, max_size=4), _LINE_ENDS),
    max_size=6,
).map(lambda evs: b"".join(b"".join(a + b for a, b in lines) + end for lines, end in evs))


@settings(max_examples=400, deadline=None)
@given(
    stream=_EVENTS,
    tail=st.sampled_from([b"", b"data: last", b"data: last\r", b"data: last\n"]),
    limit=st.integers(8, 64) | st.sampled_from([1000, 1 << 20]),
    data=st.data(),
)
def test_any_cut_parses_as_the_whole_stream(
    stream: bytes, tail: bytes, limit: int, data: st.DataObject
) -> None:
    # the same events and the same error, whichever way the reads cut the
    # stream (inside a line end too: CR|LF, LF|LF, CRLF|CRLF, CR|CR)
    stream += tail
    if not stream:
        return
    at = data.draw(st.lists(st.integers(1, len(stream)), max_size=20))
    assert parse(cut(stream, at), limit) == parse([stream], limit)


@pytest.mark.parametrize("size", [1, 2, 3, 7, 256])
def test_one_event_in_small_reads(size: int) -> None:
    for end in (b"\n\n", b"\r\n\r\n", b"\r\r", b"\n\r\n", b"\r\n\n"):
        stream = b"event: x\r\ndata: " + b"y" * 1000 + end + b"data: z" + end
        events, error = parse(cut(stream, list(range(size, len(stream), size))))
        assert (events, error) == ([SSEEvent("x", "y" * 1000), SSEEvent(None, "z")], None)


def test_an_event_in_small_reads_over_the_cap() -> None:
    # the cap holds for an event still arriving: no more than it is kept
    stream = b"data: a\n\ndata: " + b"y" * 200 + b"\n\n"
    assert parse(cut(stream, list(range(7, len(stream), 7))), limit=100) == (
        [SSEEvent(None, "a")],
        "backend sent a stream event larger than 100 bytes",
    )
    parser = SSEParser(100)
    parser.feed(b"data: " + b"y" * 90)
    with pytest.raises(UpstreamProtocolError):
        parser.feed(b"y" * 20)
    assert not parser._buf  # not kept


# An event that arrives in many small reads must cost time linear in its size:
# each read copied and scanned once, not the whole event so far again (a 3.5 MiB
# event in 256-byte reads took 23 s that way, 20 ms now). Timing would make a
# flaky test; these count what the quadratic way did instead.


def allocated_per_read(feed: list[bytes], parser: SSEParser) -> int:
    """The bytes allocated while ``parser`` takes each of ``feed``, summed over the
    reads (what a read allocates and keeps counts once; a copy of the whole
    buffer at each read counts its size each time)."""
    total = 0
    tracemalloc.start()
    try:
        for data in feed:
            before = tracemalloc.get_traced_memory()[0]
            tracemalloc.reset_peak()
            parser.feed(data)
            total += tracemalloc.get_traced_memory()[1] - before
    finally:
        tracemalloc.stop()
    return total


@pytest.mark.parametrize("line_end", [b"\n", b"\r\n", b"\r"])
def test_a_large_event_in_small_reads_is_not_copied_at_each_read(line_end: bytes) -> None:
    size = 256 * 1024
    event = (b"event: response.completed\ndata: " + b"x" * size + b"\n\n").replace(b"\n", line_end)
    reads = cut(event, list(range(256, len(event), 256)))  # 1024 reads
    parser = SSEParser(1 << 20)
    # copying the event so far at each read would be 1024 * size / 2 = 128 MiB
    assert allocated_per_read(reads[:-1], parser) < 4 * size
    assert parser.feed(reads[-1]) == [SSEEvent("response.completed", "x" * size)]


def test_a_large_event_in_small_reads_is_not_scanned_again() -> None:
    # A scan of the whole event so far at each read would find the blank line
    # planted in its first bytes (a state feed never makes); only the new bytes,
    # and the last byte before them (a blank line across two reads), are looked at.
    parser = SSEParser(1 << 20)
    for data in (b"data: ", b"x" * 4096, b"x" * 4096):
        assert parser.feed(data) == []
    buf = parser._buf
    assert isinstance(buf, bytearray)  # grown in place
    buf[2:4] = b"\n\n"
    assert parser.feed(b"x" * 4096) == [] and parser._buf is buf


def test_a_block_without_data_is_no_event_and_is_counted() -> None:
    # SSE: a block with no data field dispatches nothing, named or not; the
    # relay, which passes bytes on, learns of such blocks by the count
    p = SSEParser()
    got = p.feed(b"event: ping\n\nretry: 3000\r\nid: 7\r\n\r\n: comment\n\ndata: x\n\nx: y\n\n")
    assert got == [SSEEvent(None, "x")]
    assert p.fieldless == 3  # the comment alone is not counted
    assert p.feed(b"event: a\ndata: b\n\nevent: message\n\n") == [SSEEvent("a", "b")]
    assert p.fieldless == 4
    assert p.feed(b"id: 8") == [] and p.close() == [] and p.fieldless == 5


def test_blocks_with_fields_besides_data_and_event_are_counted() -> None:
    # a relay that passes the bytes on takes such lines out (clients fail on them)
    p = SSEParser()
    got = p.feed(b"event: a\ndata: 1\n\n: c\ndata: 2\n\nretry: 9\ndata: 3\nx.y: z\n\nid: 4\n\n")
    assert got == [SSEEvent("a", "1"), SSEEvent(None, "2"), SSEEvent(None, "3")]
    assert (p.other_fields, p.fieldless) == (2, 1)
    assert p.feed(b"data: 5\r\nid\r") == [] and p.close() == [SSEEvent(None, "5")]
    assert p.other_fields == 3


@pytest.mark.parametrize("padding", ["", " \n"])
def test_backend_json_reads_non_finite_numbers_as_null(padding: str) -> None:
    # the C scanner's fast path, and (surrounding whitespace) the full decoder
    text = '{"a": NaN, "b": Infinity, "c": -Infinity, "d": 1e400, "e": -1e400,'
    text += ' "f": [1.5, -0.0, 1e308, 12], "g": "NaN"}'
    expected = {"a": None, "b": None, "c": None, "d": None, "e": None,
                "f": [1.5, -0.0, 1e308, 12], "g": "NaN"}  # fmt: skip
    assert event_json(padding + text + padding) == expected
    assert upstream_json((padding + text).encode()) == expected
    with pytest.raises(ValueError):
        event_json(text[:-1])
