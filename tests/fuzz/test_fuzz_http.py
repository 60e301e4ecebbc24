"""Fuzzing the HTTP layer with raw bytes: mutated request heads, bad chunked
encoding, ``Expect: 100-continue``, pipelined requests, invalid UTF-8 and
plain noise — never a 500, never a garbled reply, never a crash, never a hang.

Each example is sent on a fresh connection, followed by the client's FIN, and
every byte the proxy sends back is parsed strictly (``checks``).
"""

from __future__ import annotations

import json
from types import SimpleNamespace
from typing import Optional

from hypothesis import event, given
from hypothesis import strategies as st

from tests.fuzz.checks import FUZZ, assert_healthy, check_replies, exchange, head_flags

CHAT = b"/v1/chat/completions"
HELLO = json.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}]}).encode()
HELLO_STREAM = json.dumps(
    {"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": True}
).encode()

Headers = list[tuple[bytes, bytes]]

# (method, target, headers, body): well-formed requests the mutations start from
TEMPLATES: list[tuple[bytes, bytes, Headers, bytes]] = [
    (b"GET", b"/health", [(b"Host", b"localhost")], b""),
    (b"GET", b"/v1/models", [(b"Host", b"127.0.0.1:8080")], b""),
    (b"POST", CHAT, [(b"Host", b"localhost"), (b"Content-Type", b"application/json")], HELLO),
    (b"POST", CHAT, [(b"Host", b"localhost"), (b"Content-Type", b"application/json")],
     HELLO_STREAM),
    (b"POST", b"/v1/responses", [(b"Host", b"localhost"),
                                 (b"Content-Type", b"application/json")],
     b'{"model": "m", "input": "hi"}'),
    (b"HEAD", b"/health", [(b"Host", b"localhost")], b""),
]  # fmt: skip

ODD_TARGETS = [
    b"*",
    b"",
    b"http://localhost/health",
    b"/health?x=\xff",
    b"/%00",
    b"//",
    b"/v1/chat/completions/",
    b"/" + b"a" * 5000,
]
tokens = st.binary(min_size=0, max_size=12) | st.sampled_from(
    [b"GET", b"POST", b"PUT", b"HEAD", b"CONNECT", b"OPTIONS", b"get", b"PRI", b"G ET", b""]
)
header_names = st.sampled_from(
    [
        b"Host",
        b"Content-Length",
        b"Transfer-Encoding",
        b"Content-Type",
        b"Expect",
        b"Connection",
        b"Origin",
        b"Upgrade",
        b"X-Request-ID",
        b"Accept-Encoding",
    ]
) | st.binary(min_size=0, max_size=20)
header_values = st.sampled_from(
    [
        b"chunked",
        b"gzip, chunked",
        b"chunked, gzip",
        b"100-continue",
        b"close",
        b"keep-alive",
        b"Upgrade",
        b"h2c",
        b"websocket",
        b"-1",
        b"0",
        b"99999999999999999999",
        b"1e3",
        b" 12",
        b"application/json",
        b"text/plain",
        b"localhost",
        b"evil.example",
        b"null",
        b"\xff\xfe",
        b"a\x00b",
        b"x" * 5000,
    ]
) | st.binary(min_size=0, max_size=40)


def serialize(
    method: bytes,
    target: bytes,
    version: bytes,
    headers: Headers,
    body: bytes,
    *,
    eol: bytes = b"\r\n",
    length: Optional[bytes] = b"auto",
) -> bytes:
    hdrs = list(headers)
    if length == b"auto":
        if body or method == b"POST":
            hdrs.append((b"Content-Length", str(len(body)).encode()))
    elif length is not None:
        hdrs.append((b"Content-Length", length))
    head = method + b" " + target + b" " + version + eol
    head += b"".join(k + b": " + v + eol for k, v in hdrs)
    return head + eol + body


@st.composite
def mutated_heads(draw: st.DrawFn) -> bytes:
    """A template with structural mutations, then maybe byte-level ones."""
    method, target, headers, body = draw(st.sampled_from(TEMPLATES))
    headers = list(headers)
    version = b"HTTP/1.1"
    eol = b"\r\n"
    length: Optional[bytes] = b"auto"
    for _ in range(draw(st.integers(0, 4))):
        m = draw(
            st.sampled_from(
                [
                    "method",
                    "target",
                    "version",
                    "add-header",
                    "dup-header",
                    "drop-header",
                    "length",
                    "no-length",
                    "lf-only",
                    "expect",
                    "obs-fold",
                    "body",
                ]
            )
        )
        event(f"mutation {m}")
        if m == "method":
            method = draw(tokens)
        elif m == "target":
            target = draw(st.sampled_from(ODD_TARGETS) | st.binary(max_size=30))
        elif m == "version":
            versions = [b"HTTP/1.0", b"HTTP/2.0", b"HTTP/0.9", b"HTTP/1.1x", b"", b"http/1.1"]
            version = draw(st.sampled_from(versions))
        elif m == "add-header":
            headers.append((draw(header_names), draw(header_values)))
        elif m == "dup-header" and headers:
            headers.append(draw(st.sampled_from(headers)))
        elif m == "drop-header" and headers:
            headers.pop(draw(st.integers(0, len(headers) - 1)))
        elif m == "length":
            length = draw(header_values)
        elif m == "no-length":
            length = None
        elif m == "lf-only":
            eol = b"\n"
        elif m == "expect":
            headers.append((b"Expect", b"100-continue"))
        elif m == "obs-fold" and headers:
            k, v = headers[-1]
            headers[-1] = (k, v + b"\r\n folded")
        elif m == "body":
            body = draw(st.binary(max_size=300))
    data = serialize(method, target, version, headers, body, eol=eol, length=length)
    return draw(byte_mutations(data))


@st.composite
def byte_mutations(draw: st.DrawFn, data: bytes) -> bytes:
    for _ in range(draw(st.integers(0, 3))):
        if not data:
            break
        kind = draw(st.sampled_from(["flip", "insert", "delete", "truncate", "repeat"]))
        at = draw(st.integers(0, len(data) - 1))
        if kind == "flip":
            data = data[:at] + bytes([draw(st.integers(0, 255))]) + data[at + 1 :]
        elif kind == "insert":
            data = data[:at] + draw(st.binary(min_size=1, max_size=8)) + data[at:]
        elif kind == "delete":
            data = data[:at] + data[at + draw(st.integers(1, 16)) :]
        elif kind == "truncate":
            data = data[:at]
        else:
            end = min(len(data), at + draw(st.integers(1, 64)))
            data = data[:end] + data[at:end] * draw(st.integers(1, 50)) + data[end:]
    return data


def _check(target: SimpleNamespace, data: bytes) -> None:
    raw = exchange(target, data)
    replies = check_replies(raw, head_request=head_flags(data), cut_ok=True)
    for r in replies:
        event(f"status {r.status}")
    if not replies:
        event("closed without a reply")
    assert_healthy(target)


@FUZZ
@given(data=mutated_heads())
def test_mutated_request_heads(target: SimpleNamespace, data: bytes) -> None:
    _check(target, data)


@st.composite
def chunked_bodies(draw: st.DrawFn) -> bytes:
    """A chat request with a chunked body, well-formed or not."""
    body = draw(st.sampled_from([HELLO, HELLO_STREAM, b"{}", b""]))
    pieces: list[bytes] = []
    rest = body
    while rest:
        n = draw(st.integers(1, max(1, len(rest))))
        piece, rest = rest[:n], rest[n:]
        n = len(piece)
        sizes = [b"%x" % n] * 6 + [b"%X" % n, b"0x%x" % n, b"-1", b"zz", b"", b"%x;ext=1" % n]
        sizes += [b"%x " % n, b"ffffffffffffffffff", b"%x" % (n + 3)]
        size = draw(st.sampled_from(sizes))
        end = draw(st.sampled_from([b"\r\n"] * 6 + [b"\n", b"", b"XX", b"\r\n\r\n"]))
        pieces.append(size + b"\r\n" + piece + end)
    lasts = [b"0\r\n\r\n"] * 4 + [b"0\r\n", b"", b"0\r\nTrailer: x\r\n\r\n", b"00\r\n\r\n"]
    last = draw(st.sampled_from([*lasts, b"0;x\r\n\r\n"]))
    headers = [
        (b"Host", b"localhost"),
        (b"Content-Type", b"application/json"),
        (b"Transfer-Encoding", draw(st.sampled_from([b"chunked", b"Chunked", b"chunked "]))),
    ]
    if draw(st.booleans()):
        headers.append((b"Expect", b"100-continue"))
    return serialize(b"POST", CHAT, b"HTTP/1.1", headers, b"".join(pieces) + last, length=None)


@FUZZ
@given(data=chunked_bodies())
def test_chunked_encoding(target: SimpleNamespace, data: bytes) -> None:
    _check(target, data)


WELL_FORMED = [serialize(m, t, b"HTTP/1.1", h, b) for m, t, h, b in TEMPLATES[:5]]


@FUZZ
@given(
    parts=st.lists(st.sampled_from(WELL_FORMED), min_size=2, max_size=5),
    tail=st.binary(max_size=40),
)
def test_pipelined_requests(target: SimpleNamespace, parts: list[bytes], tail: bytes) -> None:
    """Requests back to back in one write, maybe followed by noise."""
    _check(target, b"".join(parts) + tail)


@FUZZ
@given(data=st.binary(max_size=2000))
def test_noise(target: SimpleNamespace, data: bytes) -> None:
    _check(target, data)


@FUZZ
@given(
    head=st.sampled_from(TEMPLATES[:2]),
    junk=st.binary(min_size=1, max_size=12).filter(lambda b: b"\r" not in b and b"\n" not in b),
    where=st.sampled_from(["target", "header-value", "header-name"]),
)
def test_invalid_utf8_in_head(
    target: SimpleNamespace, head: tuple[bytes, bytes, Headers, bytes], junk: bytes, where: str
) -> None:
    method, path, headers, body = head
    headers = list(headers)
    if where == "target":
        path = path + b"?q=" + junk
    elif where == "header-value":
        headers.append((b"X-Junk", junk))
    else:
        headers.append((junk, b"v"))
    _check(target, serialize(method, path, b"HTTP/1.1", headers, body))
