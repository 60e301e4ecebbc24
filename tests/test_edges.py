"""Paths that no other test reached, found by a branch-coverage run of the
suite: each over real sockets on 127.0.0.1 (or, for the translator, in-process
as tests/translate do), with what a client gets."""

from __future__ import annotations

import json
import re
import time
from email.utils import formatdate, parsedate_to_datetime
from typing import Any

import anyio
import anyio.abc
import httpx
import pytest

from goose_proxy.translate import StreamTranslator
from tests.reliability.support import (
    HELLO,
    HELLO_STREAM,
    SSE_HEAD,
    answering,
    ask,
    chat_stream_outcome,
    chunk,
    fake_server,
    http_answer,
    passthrough_events,
    post,
    read_all,
    read_request_head,
    request_bytes,
    sse_answer,
    text_events,
)
from tests.support import make_config, running_proxy, silent_listener

pytestmark = pytest.mark.anyio
RESP = {"id": "resp_1", "object": "response", "created_at": 1, "model": "m", "status": "completed"}
DONE = b"data: [DONE]\n\n"
PASSTHROUGH_STREAM = {"model": "m", "input": "hi", "stream": True}


async def _through(
    endpoint: str, body: Any, path: str = "/v1/chat/completions", auth: Any = None, **backend: Any
) -> httpx.Response:
    cfg = make_config(endpoint, auth, backend={"proxy": "", **backend})
    with anyio.fail_after(10):
        async with running_proxy(cfg) as proxy:
            return await post(proxy.url, body, path=path)


async def _until_closed(s: anyio.abc.ByteStream) -> bytes:
    got = b""
    with anyio.fail_after(5):
        try:
            while True:
                got += await s.receive()
        except anyio.EndOfStream:
            return got


def _error(r: httpx.Response) -> tuple[int, str, str]:
    err = r.json()["error"]
    return r.status_code, err["code"], err["message"]


# -- the backend's answers --------------------------------------------------------------


async def test_a_json_answer_over_max_event_size() -> None:
    big = json.dumps({**RESP, "output": [], "pad": "x" * 4000}).encode()
    async with answering(http_answer("200 OK", [("content-type", "application/json")], big)) as s:
        r = await _through(s.url, HELLO, max_event_size=1024)
    assert _error(r) == (
        502, "upstream_protocol_error", "backend response body larger than 1024 bytes"
    )  # fmt: skip


async def test_a_json_body_that_stalls_half_way() -> None:
    async def handler(stream: anyio.abc.ByteStream, tcp: anyio.abc.SocketStream) -> None:
        await read_request_head(stream, srv)
        await stream.send(
            b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
            b'content-length: 100\r\n\r\n{"id":'
        )
        await read_all(stream)  # and nothing more, until the proxy hangs up

    async with fake_server(handler) as srv:
        r = await _through(srv.url, HELLO, stream_idle_timeout=0.5)
    assert _error(r) == (
        504, "timeout", "backend sent nothing for 0.5 seconds in the middle of a response"
    )  # fmt: skip


async def test_a_head_deadline_shorter_than_the_connect_timeout(pki: Any) -> None:
    # a TLS handshake never answered: backend.timeout (the head's deadline)
    # ends it, though connect_timeout is longer
    with silent_listener() as port:
        r = await _through(
            f"https://127.0.0.1:{port}", HELLO, timeout=0.5, connect_timeout=3, auth=pki.auth
        )
    assert _error(r) == (504, "timeout", "backend sent no response within 0.5 seconds")


async def test_a_full_pool_closes_the_extra_connections() -> None:
    async with answering(sse_answer(text_events(["hi"]))) as srv:
        cfg = make_config(srv.url, backend={"proxy": "", "pool_size": 1})
        with anyio.fail_after(10):
            async with running_proxy(cfg) as proxy:
                rs: list[httpx.Response] = []

                async def one() -> None:
                    rs.append(await post(proxy.url, HELLO))

                async with anyio.create_task_group() as tg:
                    for _ in range(3):
                        tg.start_soon(one)
                idle = len(proxy.server.upstream._idle)
    assert [r.json()["choices"][0]["message"]["content"] for r in rs] == ["hi"] * 3
    assert idle == 1


async def test_chat_events_typed_by_their_sse_name_only() -> None:
    def untyped(ev: bytes) -> bytes:  # no "type" key in the data: the event: line names it
        name, data = ev.split(b"\n", 1)
        obj = json.loads(data[len(b"data: ") :])
        del obj["type"]
        return name + b"\ndata: " + json.dumps(obj).encode() + b"\n\n"

    async with answering(sse_answer([untyped(e) for e in text_events(["one ", "two"])])) as srv:
        r = await _through(srv.url, HELLO_STREAM)
    assert chat_stream_outcome(r.content) == ("one two", None)


async def test_event_data_with_a_trailing_space() -> None:
    events = [e[:-2] + b" \n\n" for e in text_events(["o", "k"])]
    async with answering(sse_answer(events)) as srv:
        r = await _through(srv.url, HELLO_STREAM)
    assert chat_stream_outcome(r.content) == ("ok", None)


async def test_chat_done_before_the_terminal_event() -> None:
    # [DONE] first, the terminal event a moment later: the answer is whole
    events = text_events(["x"])
    terminal_sent = anyio.Event()

    async def handler(stream: anyio.abc.ByteStream, tcp: anyio.abc.SocketStream) -> None:
        await read_request_head(stream, srv)
        await stream.send(SSE_HEAD + b"".join(chunk(e) for e in events[:-1]) + chunk(DONE))
        await anyio.sleep(0.05)  # the backend's own pace (within the proxy's grace)
        await stream.send(chunk(events[-1]) + b"0\r\n\r\n")
        terminal_sent.set()
        await read_all(stream)

    async with fake_server(handler) as srv:
        r = await _through(srv.url, HELLO_STREAM)
    assert terminal_sent.is_set()
    assert chat_stream_outcome(r.content) == ("x", None)


# -- the passthrough --------------------------------------------------------------------


async def test_passthrough_done_without_its_blank_line() -> None:
    answer = SSE_HEAD + b"".join(chunk(e) for e in text_events(["a", "b"]))
    answer += chunk(b"data: [DONE]") + b"0\r\n\r\n"
    async with answering(answer) as srv:
        r = await _through(srv.url, PASSTHROUGH_STREAM, "/v1/responses")
    events = passthrough_events(r.content)
    assert [name for name, _ in events[-3:-1]] == [
        "response.output_text.delta",
        "response.completed",
    ]
    assert events[-1] == (None, "[DONE]")


async def test_passthrough_over_the_cap_with_no_input() -> None:
    async with answering(http_answer("200 OK", [], b"{}")) as srv:
        body = {"model": "m", "instructions": "x" * 3000}
        r = await _through(srv.url, body, "/v1/responses", max_request_chars=2000)
    status, code, message = _error(r)
    assert (status, code) == (400, "request_too_large")
    # 3,000 and the rest of the body, as Lightspeed counts it
    assert re.match(r"the tools and instructions take 3,\d{3} of the 2,000 characters", message)


async def test_passthrough_relays_retry_after_on_a_2xx() -> None:
    body = json.dumps({**RESP, "output": []}).encode()
    headers = [("content-type", "application/json"), ("retry-after", "7")]
    async with answering(http_answer("200 OK", headers, body)) as srv:
        r = await _through(srv.url, {"model": "m", "input": "hi"}, "/v1/responses")
    assert r.status_code == 200 and r.headers["retry-after"] == "7"


async def test_passthrough_error_event_whose_data_is_no_object() -> None:
    # relayed as it came (the client reads what it can), and the stream ends there
    events = text_events(["a"])
    answer = sse_answer([events[0], b"event: error\ndata: [1, 2]\n\n", *events[1:]])
    async with answering(answer) as srv:
        r = await _through(srv.url, PASSTHROUGH_STREAM, "/v1/responses")
    assert r.status_code == 200
    assert passthrough_events(r.content)[-1] == ("error", [1, 2])


# -- the client's side ------------------------------------------------------------------


@pytest.mark.parametrize("target", ["http:///health", "http://user@127.0.0.1/health"])
async def test_an_absolute_target_without_a_usable_host(target: str) -> None:
    with anyio.fail_after(10):
        async with running_proxy(make_config("http://127.0.0.1:9")) as proxy:
            r = await ask(proxy.port, request_bytes("GET", target, headers={"Connection": "close"}))
    assert r.status == 400
    assert r.error["message"] == f"request target {target!r} has no usable host"


async def test_a_malformed_head_request_gets_a_400_without_a_body() -> None:
    raw = b"HEAD /health HTTP/1.1\r\nHost: x\r\nbad header line\r\n\r\n"
    with anyio.fail_after(10):
        async with running_proxy(make_config("http://127.0.0.1:9")) as proxy:
            r = await ask(proxy.port, raw, head=True)
    assert r.status == 400 and r.body == b""
    assert int(dict(r.headers)["content-length"]) > 0  # what a GET would have had


async def test_a_stray_crlf_after_a_body_then_the_next_request() -> None:
    # RFC 9112 2.2: a server should ignore empty lines before a request line
    with anyio.fail_after(10):
        async with running_proxy(make_config("http://127.0.0.1:9")) as proxy:
            async with await anyio.connect_tcp("127.0.0.1", proxy.port) as s:
                await s.send(request_bytes("POST", "/health", b"{}") + b"\r\n")
                first = await s.receive()
                await s.send(request_bytes("GET", "/health", headers={"Connection": "close"}))
                rest = await _until_closed(s)
    assert first.startswith(b"HTTP/1.1 405 ")
    assert rest.startswith(b"HTTP/1.1 200 ")


async def test_an_http10_client_gets_a_close_delimited_stream() -> None:
    async with answering(sse_answer(text_events(["a", "b"]))) as srv:
        with anyio.fail_after(10):
            async with running_proxy(make_config(srv.url, backend={"proxy": ""})) as proxy:
                raw = request_bytes(json_body=HELLO_STREAM).replace(b"HTTP/1.1", b"HTTP/1.0", 1)
                async with await anyio.connect_tcp("127.0.0.1", proxy.port) as s:
                    await s.send(raw)
                    got = await _until_closed(s)
    head, _, body = got.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ")
    assert b"transfer-encoding" not in head.lower()
    assert chat_stream_outcome(body) == ("ab", None)


# -- the stream translator --------------------------------------------------------------


def _translator() -> StreamTranslator:
    return StreamTranslator(model="m", include_usage=False, completion_id="c", created=1)


def _contents(frames: list[bytes]) -> list[Any]:
    chunks = [json.loads(f[len(b"data: ") :]) for f in frames if f != DONE]
    return [c["choices"][0]["delta"].get("content") for c in chunks]


def test_a_lone_high_surrogate_before_the_end_is_a_replacement_character() -> None:
    tr = _translator()
    assert tr.feed({"type": "response.output_text.delta", "delta": "\ud83d"}) == []
    out = tr.feed({"type": "response.completed", "response": {**RESP, "output": []}})
    assert _contents(out) == ["", "\ufffd", None]


def test_a_final_part_without_output_index_after_placeless_deltas() -> None:
    tr = _translator()
    out = tr.feed({"type": "response.output_text.delta", "delta": "Hi"})
    out += tr.feed({"type": "response.output_text.done", "item_id": "msg_9", "text": "Hi"})
    out += tr.feed({"type": "response.completed", "response": {**RESP, "output": []}})
    assert _contents(out) == ["", "Hi", None]  # not "Hi" twice


def test_a_final_part_under_another_id_with_other_text() -> None:
    # deltas under one item id, the final part at the same place under another
    # with other text (a shield's verdict): the verdict once, after the deltas
    at = {"output_index": 0, "content_index": 0}
    tr = _translator()
    out = tr.feed({"type": "response.output_text.delta", "item_id": "a", **at, "delta": "draft"})
    out += tr.feed({"type": "response.output_text.done", "item_id": "b", **at, "text": "Blocked."})
    message = {"id": "c", "type": "message", "role": "assistant",
               "content": [{"type": "output_text", "text": "Blocked."}]}  # fmt: skip
    out += tr.feed({"type": "response.completed", "response": {**RESP, "output": [message]}})
    assert _contents(out) == ["", "draft", "Blocked.", None]


# -- response heads ---------------------------------------------------------------------


async def test_every_answer_carries_a_date() -> None:
    # RFC 9110 6.6.1: a server with a clock sends Date (IMF-fixdate), on its
    # own answers (a 404, /health) and on a stream alike
    async with answering(sse_answer(text_events(["a"]))) as srv:
        with anyio.fail_after(10):
            async with running_proxy(make_config(srv.url, backend={"proxy": ""})) as proxy:
                async with httpx.AsyncClient(base_url=proxy.url) as c:
                    before = time.time()
                    answers = [
                        await c.get("/health"),
                        await c.get("/v1/nothing"),
                        await c.post("/v1/chat/completions", json=HELLO_STREAM),
                    ]
                    after = time.time()
    assert [r.status_code for r in answers] == [200, 404, 200]
    for r in answers:
        date = r.headers["date"]
        assert re.fullmatch(r"[A-Z][a-z]{2}, \d\d [A-Z][a-z]{2} \d{4} \d\d:\d\d:\d\d GMT", date)
        when = parsedate_to_datetime(date)
        assert int(before) <= when.timestamp() <= after
        assert date == formatdate(when.timestamp(), usegmt=True)  # the weekday too
