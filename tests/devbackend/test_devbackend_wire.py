"""Pure tests of the raw response writer, checked against h11's parser."""

from __future__ import annotations

import h11

from devbackend import wire


def parse(data: bytes) -> list[object]:
    conn = h11.Connection(h11.CLIENT)
    conn.send(h11.Request(method="GET", target="/", headers=[("host", "x")]))
    conn.send(h11.EndOfMessage())
    conn.receive_data(data)
    events: list[object] = []
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA or event is h11.PAUSED:
            return events
        events.append(event)
        if isinstance(event, h11.EndOfMessage):
            return events


def test_content_length_reply() -> None:
    data = wire.head(200, [(b"content-length", b"2"), (b"server", b"uvicorn")]) + b"{}"
    response, body, end = parse(data)
    assert isinstance(response, h11.Response) and response.status_code == 200
    assert response.reason == b"OK"
    assert isinstance(body, h11.Data) and body.data == b"{}"
    assert isinstance(end, h11.EndOfMessage)


def test_chunked_reply() -> None:
    data = wire.head(200, [], (b"transfer-encoding", b"chunked"))
    data += wire.chunk(b"event: x\n\n") + wire.chunk(b"") + wire.chunk(b"y" * 300) + wire.LAST_CHUNK
    events = parse(data)
    assert (
        b"".join(e.data for e in events if isinstance(e, h11.Data)) == b"event: x\n\n" + b"y" * 300
    )
    assert isinstance(events[-1], h11.EndOfMessage)


def test_reason_and_headers() -> None:
    assert wire.status_line(429) == b"HTTP/1.1 429 Too Many Requests\r\n"
    assert wire.status_line(599) == b"HTTP/1.1 599 Unknown\r\n"
    assert wire.wants_close([(b"Connection", b"keep-alive, Close")])
    assert not wire.wants_close([(b"connection", b"keep-alive")])
    assert wire.has_header([(b"Connection", b"close")], b"connection")
