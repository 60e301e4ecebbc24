"""The backend body's chunked decoder (``goose_proxy.upstream.chunked``), fed
bytes cut anywhere."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from goose_proxy.errors import UpstreamProtocolError
from goose_proxy.upstream.chunked import ChunkedDecoder


def chunked(
    pieces: list[bytes], trailer: bytes = b"", eol: bytes = b"\r\n", size: bytes = b"%x"
) -> bytes:
    """``pieces`` as chunks, their lines ended by ``eol``, sizes written as ``size``."""
    body = b"".join(size % len(p) + eol + p + eol for p in pieces if p)
    return body + size % 0 + eol + trailer + eol


def decode(reads: list[bytes], max_line: int = 64 * 1024) -> tuple[bytes, ChunkedDecoder]:
    dec = ChunkedDecoder(max_line)
    return b"".join(dec.feed(r) for r in reads), dec


@settings(max_examples=300, deadline=None)
@given(
    pieces=st.lists(st.binary(max_size=40), max_size=8),
    trailer=st.sampled_from([b"", b"x-a: 1\r\n", b"x-a: 1\nx-b: 2\r\n"]),
    cuts=st.lists(st.integers(0, 400), max_size=12),
    # RFC 9112 2.2: a bare LF may end a line; leading zeros are not digits of a size
    eol=st.sampled_from([b"\r\n", b"\n"]),
    size=st.sampled_from([b"%x", b"%X", b"%020x", b"%x;ext=1"]),
)
def test_any_cut_decodes_the_whole_body(
    pieces: list[bytes], trailer: bytes, cuts: list[int], eol: bytes, size: bytes
) -> None:
    raw = chunked(pieces, trailer, eol, size)
    points = [0, *sorted(c for c in set(cuts) if c < len(raw)), len(raw)]
    body, dec = decode([raw[a:b] for a, b in zip(points, points[1:])])
    assert body == b"".join(pieces)
    assert dec.done and not dec.leftover


def test_bytes_after_the_end_are_noticed() -> None:
    body, dec = decode([chunked([b"hi"]) + b"HTTP/1.1 200 OK\r\n"])
    assert body == b"hi" and dec.done and dec.leftover
    body, dec = decode([chunked([b"hi"]) + b"\r\n\r\nX"])
    assert body == b"hi" and dec.done and dec.leftover


def test_line_ends_after_the_end_are_not_leftover() -> None:
    # some servers end a body with one more CRLF: skipped before the next answer
    body, dec = decode([chunked([b"hi"]) + b"\r\n", b"\n"])
    assert body == b"hi" and dec.done and not dec.leftover


@pytest.mark.parametrize(
    ("raw", "said"),
    [
        (b"zz\r\n", "malformed chunk size"),
        (b"2\r\nhiXX", "malformed chunked body"),
        (b"2\nhi\rX", "malformed chunked body"),
        (b"5\r\r\n", "malformed chunk size"),
        (b"1" + b"0" * 16 + b"\r\n", "malformed chunk size"),  # 17 digits: over 64 bits
        (b"1" * 40, "over-long chunk header"),
        (b"0\r\n" + b"x" * 40, "over-long trailer line"),
    ],
)
def test_malformed_bodies_are_refused(raw: bytes, said: str) -> None:
    with pytest.raises(UpstreamProtocolError, match=said):
        decode([raw], max_line=32)


def test_an_endless_trailer_section_is_cut() -> None:
    # no data can follow the last chunk: short trailer lines one after another
    # would only keep the read (and its idle timer) going, so the section as a
    # whole has the line cap
    dec = ChunkedDecoder(max_line=64)
    assert dec.feed(b"0\r\n") == b""
    with pytest.raises(UpstreamProtocolError, match="over-long trailer section"):
        for _ in range(100):  # 6 bytes a line: over 64 by the 11th
            dec.feed(b"x: 1\r\n")
    assert not dec.done
