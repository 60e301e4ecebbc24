"""goose_proxy.http11: how h11's parse errors are worded for people."""

from __future__ import annotations

from typing import Any

import h11
import pytest

from goose_proxy import http11


def _h11_error(role: Any, data: bytes) -> h11.RemoteProtocolError:
    conn = h11.Connection(role)
    if role is h11.CLIENT:
        conn.send(h11.Request(method="GET", target="/", headers=[("host", "x")]))
    conn.receive_data(data)
    with pytest.raises(h11.RemoteProtocolError) as info:
        conn.next_event()
    return info.value


@pytest.mark.parametrize(
    ("role", "data", "want"),
    [
        (h11.SERVER, b"HELLO\r\n\r\n", "illegal request line: 'HELLO'"),
        (h11.CLIENT, b"\x00\x01junk\r\n\r\n", "illegal status line: '\\x00\\x01junk'"),
    ],
)
def test_h11_reason_drops_the_bytearray_wrapper(role: Any, data: bytes, want: str) -> None:
    e = _h11_error(role, data)
    assert "bytearray(" in str(e)  # what h11 says
    assert http11.reason(e) == want


def test_h11_reason_is_bounded() -> None:
    e = _h11_error(h11.SERVER, b"X" * 5000 + b"\r\n\r\n")
    assert len(str(e)) > 5000
    text = http11.reason(e)
    assert len(text) == http11.REASON_LIMIT and text.endswith("…")


def test_h11_reason_with_quotes_and_escapes() -> None:
    e = _h11_error(h11.SERVER, b'GET / HTTP/1.1\r\nHost: x\r\nbad line it\'s "x"\r\n\r\n')
    assert "bytearray(" in str(e)
    assert http11.reason(e) == "illegal header line: 'bad line it\\'s \"x\"'"


@pytest.mark.parametrize(
    ("values", "want"),
    [
        ([], None),
        ([b"identity"], None),
        ([b" Identity ", b""], None),
        ([b"gzip"], "gzip"),
        ([b"identity", b"br"], "br"),
        ([b"gzip, identity", b"deflate"], "gzip,deflate"),
    ],
)
def test_content_coding_reads_every_header(values: list[bytes], want: Any) -> None:
    headers = [(b"content-type", b"application/json")]
    headers += [(b"content-encoding", v) for v in values]
    assert http11.content_coding(headers) == want
