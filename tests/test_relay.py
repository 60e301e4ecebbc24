"""The /v1/responses stream relay (``handlers.PassthroughRelay``) on reads cut anywhere.

The relay is driven directly, with the backend's body given as a list of reads,
so that where the reads are cut is exact (over TCP it is up to the kernel).
"""

from __future__ import annotations

import json
import tracemalloc
from collections.abc import AsyncIterator
from typing import Any, Optional, Union
from unittest import mock

import anyio
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from openai.types.responses import ResponseErrorEvent

from goose_proxy.errors import (
    ContextLengthExceeded,
    ProxyError,
    RateLimited,
    ServiceUnavailable,
    UpstreamClosed,
    UpstreamProtocolError,
    UpstreamTimeout,
)
from goose_proxy.http import handlers
from goose_proxy.http.handlers import PassthroughRelay
from goose_proxy.translate import AnswerAdapter
from tests import lightspeed_answers as ls
from tests.goose_rules import goose_reads_stream

pytestmark = pytest.mark.anyio

C = b'data: {"type":"response.completed"}\n\n'
D = b"data: [DONE]\n\n"
DELTA = b'event: response.output_text.delta\ndata: {"type":"response.output_text.delta"}\n\n'
EARLY = "upstream stream ended early (no terminal event)"
SEQ_DELTA = b'data: {"type":"response.output_text.delta","sequence_number":7}\n\n'
CREATED = b'event: response.created\ndata: {"type":"response.created","response":{}}\n\n'

Read = Union[bytes, Exception]


async def _run(
    reads: list[Read], limit: int = 4096, adapter: Optional[AnswerAdapter] = None
) -> tuple[list[bytes], Optional[ProxyError], PassthroughRelay]:
    """Each ``send`` the relay makes for ``reads`` (then the end of the body; an
    exception in them is raised by that read), the error it raised, and the relay
    (with ``adapter``, if given)."""
    pending = list(reads)
    sends: list[bytes] = []

    async def receive() -> bytes:
        if not pending:
            return b""
        piece = pending.pop(0)
        if isinstance(piece, Exception):
            raise piece
        return piece

    async def send(data: bytes) -> None:
        sends.append(data)

    relay = PassthroughRelay(receive, send, limit, adapter)
    with anyio.fail_after(5):
        try:
            await relay.run()
        except ProxyError as e:
            return sends, e, relay
    return sends, None, relay


async def relay(reads: list[Read], limit: int = 4096) -> tuple[bytes, Optional[str]]:
    """What the relay sends for ``reads``, and the message of the error it raises
    (None: it ended quietly)."""
    sends, error, _ = await _run(reads, limit)
    return b"".join(sends), error.message if error is not None else None


async def seen(reads: list[Read], limit: int = 4096) -> tuple[bytes, Optional[ProxyError]]:
    """What the client gets for ``reads``: what the relay sends, then, when it raises,
    its error frames (as ``Exchange.abort`` adds them); and the error."""
    sends, error, r = await _run(reads, limit)
    frames = r.error_frames(error) if error is not None else []
    return b"".join(sends + frames), error


def cut(data: bytes, at: list[int]) -> list[Read]:
    points = [0, *sorted(set(at)), len(data)]
    return [data[a:b] for a, b in zip(points, points[1:]) if b > a]


#: fields but no data: no event, and not relayed (the openai SDK fails on it)
NO_DATA = b"id: 7\nretry: 100\n\n"
STREAMS = {
    "LF": DELTA + b": keep-alive\n\n" + NO_DATA + DELTA + C + D,
    "CRLF": (DELTA + NO_DATA + DELTA + C + D).replace(b"\n", b"\r\n"),
    "CR": (NO_DATA + DELTA + C + D).replace(b"\n", b"\r"),
    "mixed": DELTA.replace(b"\n\n", b"\r\n\r\n") + DELTA.replace(b"\n\n", b"\n\r\n") + C + D,
}


def relayed(stream: bytes) -> bytes:
    """``stream`` as the relay passes it on: without its :data:`NO_DATA` blocks."""
    for end in (b"\r\n", b"\r", b"\n"):
        stream = stream.replace(NO_DATA.replace(b"\n", end), b"")
    return stream


#: streams whose [DONE] comes before the terminal event, and what the client gets
DONE_FIRST = {
    "LF": (DELTA + b": keep-alive\n\n" + D + DELTA + C,
           DELTA + b": keep-alive\n\n" + DELTA + C + D),
    "CRLF": ((DELTA + D + DELTA + C).replace(b"\n", b"\r\n"),
             (DELTA + DELTA + C + D).replace(b"\n", b"\r\n")),
    "CR": ((DELTA + D + C).replace(b"\n", b"\r"), (DELTA + C + D).replace(b"\n", b"\r")),
    "mixed": (DELTA + D.replace(b"\n\n", b"\n\r\n") + C,
              DELTA + C + D.replace(b"\n\n", b"\n\r\n")),
}  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(
    name=st.sampled_from(sorted(STREAMS)),
    done_first=st.booleans(),
    data=st.data(),
)
def test_any_cut_relays_a_whole_stream_byte_for_byte(
    name: str, done_first: bool, data: st.DataObject
) -> None:
    stream, want = DONE_FIRST[name] if done_first else (STREAMS[name], relayed(STREAMS[name]))
    at = data.draw(st.lists(st.integers(1, len(stream) - 1), max_size=12))
    sent, error = anyio.run(relay, cut(stream, at))
    assert error is None
    # a CR-only stream's last CR waits for a byte that never comes: the end adds
    # a blank line after it rather than lose the event
    assert sent == want or (name == "CR" and sent == want + b"\n\n")


@pytest.mark.parametrize(
    "block",
    [
        b"retry: 3000\n\n",
        b"id: 1\n\n",
        b"event: ping\n\n",
        b"event: x\r\nid: 2\r\n\r\n",
        b"x: y\n\n",
    ],
)
async def test_a_block_without_data_is_not_relayed(block: bytes) -> None:
    # no event (SSE), but the openai SDK fails on it as on an event without JSON
    sent, error = await relay([block + DELTA + block, block, DELTA + b": c\n\n" + block + C + D])
    assert error is None and sent == DELTA + DELTA + b": c\n\n" + C + D
    # last, without its blank line, in a stream that ended early
    got, err = await seen([DELTA, block.rstrip(b"\r\n")])
    assert err is not None and err.message == EARLY
    assert got.startswith(DELTA + b"event: error\n") and block.rstrip() not in got


@pytest.mark.parametrize("end", [b"\n", b"\r\n", b"\r"], ids=["LF", "CRLF", "CR"])
@pytest.mark.parametrize("field", [b"id:8", b"id", b"retry: 3000", b"x-trace: abc", b"x.trace: a"])
async def test_fields_but_data_and_event_are_left_out(field: bytes, end: bytes) -> None:
    # the openai SDK keeps an event's id, then reads every later blank line (a
    # comment's) as an event without JSON; Goose reads every line but event:,
    # comments and blank ones as JSON; the event itself goes on without them
    stream = (
        field + b"\n" + DELTA + b": keep-alive\n\n"
        + DELTA.replace(b"\ndata", b"\n" + field + b"\ndata")
        + C.replace(b"\n\n", b"\n" + field + b"\n\n") + D
    )  # fmt: skip
    sent, error = await relay(cut(stream.replace(b"\n", end), [5, 40]))
    assert error is None
    assert sent == (DELTA + b": keep-alive\n\n" + DELTA + C + D).replace(b"\n", end)


@pytest.mark.parametrize("name", [b"response.completed ", b"chunk", b"response.completed\t"])
async def test_an_event_name_that_is_no_type_gives_way_to_the_datas_type(name: bytes) -> None:
    # SSE keeps the white space after a name; the openai SDK and Goose go by the
    # data's type, so the relay sees the end there too (no "ended early" added)
    for end in (b"event: " + name + b"\n" + C, C.replace(b"data", b"event: " + name + b"\ndata")):
        sent, error = await relay([DELTA, end + D])
        assert error is None and sent == DELTA + end + D
    # and an opening event so named waits for the answer, in one send with it
    renamed = CREATED.replace(b"response.created\n", name + b"\n")
    delta = DELTA.replace(b"response.output_text.delta\n", b"x\n")
    sends, err, _ = await _run([renamed, delta])
    assert err is not None and err.message == EARLY and sends == [renamed + delta]


@pytest.mark.parametrize("split", [1, 2, 3], ids=["LF|LF", "CR|LF CRLF", "CRLF CR|LF"])
async def test_an_event_of_exactly_the_limit_cut_in_its_blank_line(split: int) -> None:
    event = b'data: "' + b"x" * 56 + b'"'  # 64 bytes
    ends = {1: b"\n\n", 2: b"\r\n\r\n", 3: b"\r\n\r\n"}[split]
    first = event + ends[: {1: 1, 2: 1, 3: 3}[split]]
    second = ends[len(first) - len(event) :] + C + D
    sent, error = await relay([first, second], limit=64)
    assert error is None and sent == first + second


async def test_no_byte_of_an_event_over_the_limit() -> None:
    big = b'data: "' + b"x" * 200 + b'"\n\n'
    for reads in ([DELTA + big + C], [DELTA, big[:150], big[150:] + C]):
        sent, error = await relay(list(reads), limit=128)
        assert sent == DELTA
        assert error == "backend sent a stream event larger than 128 bytes"


@pytest.mark.parametrize(
    ("reads", "out"),
    [
        ([DELTA + D + C], DELTA + C + D),
        ([DELTA + D, C], DELTA + C + D),
        ([DELTA, D, b": ping\n\n", C + D], DELTA + b": ping\n\n" + C + D),
        ([DELTA + D.replace(b"\n", b"\r\n") + C], DELTA + C + D.replace(b"\n", b"\r\n")),
        ([CREATED + D, C], CREATED + C + D),  # before the answer started
    ],
    ids=["same-read", "next-read", "then-more-and-done", "crlf", "preamble"],
)
async def test_a_done_before_the_terminal_event_goes_out_after_it(
    reads: list[Read], out: bytes
) -> None:
    # the openai SDK and Goose stop reading at [DONE]: it must come last, once
    got, error = await seen(reads)
    assert error is None and got == out


async def test_a_done_without_a_terminal_event_goes_out_after_the_error_event() -> None:
    got, error = await seen([SEQ_DELTA + D])
    assert isinstance(error, UpstreamProtocolError) and error.message == EARLY
    assert got.startswith(SEQ_DELTA) and got.endswith(D)
    check_error_event(got[len(SEQ_DELTA) : -len(D)], error, 8)
    # before the answer: nothing was sent, the caller answers with an HTTP error
    sends, error = await _sends([CREATED + D])
    assert sends == [] and isinstance(error, UpstreamProtocolError)


async def test_a_cut_last_event_is_not_passed_on() -> None:
    sent, error = await relay([DELTA + b'data: {"type":"resp'])
    assert sent == DELTA and error == EARLY


async def test_a_whole_last_event_without_its_blank_line_is_ended() -> None:
    sent, error = await relay([DELTA + C[:-2]])
    assert sent == DELTA + C and error is None


NOT_UTF8 = b"data: \xff\xfe\n\n"
TOO_BIG = b'data: "' + b"x" * 5000 + b'"\n\n'


@pytest.mark.parametrize(
    "reads",
    [
        [DELTA, C, NOT_UTF8],
        [DELTA, C + NOT_UTF8],
        [DELTA, C, UpstreamClosed("reset")],
        [DELTA, C, TOO_BIG],
        [DELTA, C + TOO_BIG],
    ],
    ids=["not-utf8", "not-utf8-same-read", "reset", "too-big", "too-big-same-read"],
)
async def test_what_follows_the_terminal_event_adds_no_error(reads: list[Read]) -> None:
    sent, error = await relay(reads, limit=4096)
    assert (sent, error) == (DELTA + C, None)


@pytest.mark.parametrize(
    ("reads", "expected"),
    [
        ([DELTA, C + DELTA + D], DELTA + C + D),
        ([DELTA, C, DELTA + b": ping\n\n" + D + DELTA], DELTA + C + D),
        ([DELTA, C + NOT_UTF8 + D], DELTA + C + D),
        ([DELTA + C + D + DELTA + D], DELTA + C + D),
        ([DELTA + D + C + DELTA], DELTA + C + D),
        ([CREATED + C + DELTA, D], CREATED + C + D),
    ],
    ids=["same-read", "later-read", "bad-then-done", "after-done", "early-done", "held"],
)
async def test_only_a_done_follows_the_terminal_event(reads: list[Read], expected: bytes) -> None:
    # an event after the end (a backend's stray delta, or one that is no JSON)
    # would reach a client that reads until [DONE]: the openai SDK then fails on
    # it, although the answer is complete
    sent, error = await relay(reads, limit=4096)
    assert (sent, error) == (expected, None)


@pytest.mark.parametrize("tail", [NOT_UTF8, TOO_BIG], ids=["not-utf8", "too-big"])
async def test_a_whole_answer_then_a_bad_event_in_one_read_goes_out(tail: bytes) -> None:
    # the read that starts the answer also ends it: a bad event after the end
    # does not matter (it used to keep the whole answer back, and then the
    # handler ended a stream it had never started: an internal error)
    sent, error = await relay([CREATED + C + tail])
    assert (sent, error) == (CREATED + C, None)


@pytest.mark.parametrize(
    ("first", "early"), [(DELTA + C, False), (DELTA + D, True)], ids=["terminal", "done"]
)
async def test_the_wait_for_the_end_is_bounded(first: bytes, early: bool) -> None:
    """A backend that keeps sending comments after the terminal event (or after a
    [DONE] that came before it): the relay stops waiting for the rest after
    DONE_GRACE in all, not per read."""
    sent: list[bytes] = []
    reads = 0

    async def trickle() -> AsyncIterator[bytes]:
        yield first
        while True:
            await anyio.sleep(0.01)  # a slow backend, not synchronisation
            yield b": keep-alive\n\n"

    source = trickle()

    async def receive() -> bytes:
        nonlocal reads
        reads += 1
        return await source.__anext__()

    async def send(data: bytes) -> None:
        sent.append(data)

    error = None
    with anyio.fail_after(5):  # before the fix: until the backend stopped
        try:
            await PassthroughRelay(receive, send, 4096).run()
        except UpstreamProtocolError as e:
            error = e.message
    await source.aclose()
    assert b"".join(sent).startswith(first.replace(D, b""))
    assert error == (EARLY if early else None)
    assert reads < 100  # about 20: one read per 10 ms for DONE_GRACE (0.2 s)


# --- the error event that ends a broken stream ---------------------------------------


def check_error_event(frame: bytes, error: ProxyError, seq: int) -> None:
    """``frame`` is one ``event: error`` for ``error``, numbered ``seq``, that the
    openai SDK raises as ``APIError`` (it needs ``error``) and types as a
    ``ResponseErrorEvent``, and whose ``error`` Goose shows."""
    name, data = frame.split(b"\n", 1)
    assert name == b"event: error" and data.startswith(b"data: ") and data.endswith(b"\n\n")
    event = json.loads(data[len(b"data: ") :])
    assert event == {
        "type": "error",
        "code": error.code,
        "message": error.message,
        "param": error.param,
        "sequence_number": seq,
        # as in a chat stream's error chunk
        "error": {"type": error.type, "code": error.code, "message": error.message,
                  "param": error.param},
    }  # fmt: skip
    ResponseErrorEvent.model_validate(event, strict=True)


BREAKS: dict[str, list[Read]] = {
    "end": [],
    "cut-event": [b'data: {"type":"resp'],
    "reset": [UpstreamClosed("backend closed the connection in the middle of the response")],
    "stall": [UpstreamTimeout("backend sent nothing for 0.3 seconds in the middle of a response")],
    "too-big": [TOO_BIG],
    "not-utf8": [NOT_UTF8],
}


@pytest.mark.parametrize("done", [False, True], ids=["", "after-done"])
@pytest.mark.parametrize("how", sorted(BREAKS))
async def test_a_broken_stream_ends_with_an_error_event_then_a_held_done(
    how: str, done: bool
) -> None:
    got, error = await seen([SEQ_DELTA + (D if done else b""), *BREAKS[how]])
    assert isinstance(error, ProxyError) and got.startswith(SEQ_DELTA)
    rest = got[len(SEQ_DELTA) :]  # not a byte of a bad event: the SDK could not read on
    if done:  # the [DONE] that came before the end: last, so that the error is read
        assert rest.endswith(D)
        rest = rest[: -len(D)]
    check_error_event(rest, error, 8)
    assert b"x" * 100 not in got


def _seq_delta(seq: int) -> bytes:
    return SEQ_DELTA.replace(b":7}", b":%d}" % seq)


@pytest.mark.parametrize("ends", [b"\n", b"\r\n", b"\r"], ids=["LF", "CRLF", "CR"])
@pytest.mark.parametrize(
    "bad",
    [
        b'data: {"type":"response.output_text.delta","delta":"\xff\xfe","sequence_number":9}\n\n',
        b"event: response.\xff\ndata: {}\n\n",
        b'data: {"type":"response.output_text.delta","delta":"\xff"}',  # the stream's last
    ],
    ids=["data", "event-name", "last-without-blank-line"],
)
async def test_a_bad_event_in_a_read_goes_out_with_none_of_its_bytes(
    bad: bytes, ends: bytes
) -> None:
    # the events before it (a comment that is not UTF-8 is no event: it goes
    # out) do, and the error event is numbered after the last of them; before
    # the fix the read went out whole, and the openai SDK, failing to decode
    # the bad event, never read the error event (which repeated its number)
    comment = b": \xff comments are not read\n\n"
    before = _seq_delta(7) + comment + _seq_delta(8)
    after = b"" if not bad.endswith(b"\n") else _seq_delta(10) + C
    first, before = SEQ_DELTA.replace(b"\n", ends), before.replace(b"\n", ends)
    stream = before + (bad + after).replace(b"\n", ends)
    got, error = await seen([first, stream[len(first) :]])  # the answer started: sent
    assert isinstance(error, UpstreamProtocolError)
    assert error.message == "backend sent a stream event that is not UTF-8"
    assert got.startswith(before)
    check_error_event(got[len(before) :], error, 9)


@pytest.mark.parametrize("bad", [NOT_UTF8, TOO_BIG], ids=["not-utf8", "too-big"])
async def test_an_answer_that_starts_in_the_read_of_a_bad_event_goes_out_first(
    bad: bytes,
) -> None:
    # the held events and the good ones of the read, then the error event (the
    # read used to be dropped, and the client got a bare status, no text)
    got, error = await seen([CREATED, SEQ_DELTA + bad])
    assert isinstance(error, UpstreamProtocolError)
    assert got.startswith(CREATED + SEQ_DELTA)
    check_error_event(got[len(CREATED + SEQ_DELTA) :], error, 8)


@pytest.mark.parametrize("bad", [NOT_UTF8, TOO_BIG], ids=["not-utf8", "too-big"])
async def test_a_bad_event_before_the_answer_sends_nothing(bad: bytes) -> None:
    # the caller answers with a status then
    sends, error, _ = await _run([CREATED, CREATED + bad + SEQ_DELTA])
    assert isinstance(error, UpstreamProtocolError) and sends == []


@pytest.mark.parametrize(
    ("last", "seq"),
    [
        (SEQ_DELTA, 8),
        (SEQ_DELTA + b": keep-alive\n\nid: 9\n\n", 8),  # no events
        (SEQ_DELTA + DELTA, 8),  # the last event has none: the one before it counts
        (b'data: {"type":"response.output_text.delta","sequence_number":true}\n\n', 0),
        (b'event: response.lcs.note\ndata: "a note"\n\n', 4),  # the first read's 3
        (b"data: not json\n\n", 4),
    ],
    ids=["numbered", "then-no-events", "then-unnumbered", "not-a-number", "not-object",
         "not-json"],
)  # fmt: skip
async def test_the_error_events_sequence_number_follows_the_last_event(
    last: bytes, seq: int
) -> None:
    got, error = await seen([SEQ_DELTA.replace(b"7", b"3"), last])
    assert error is not None and error.message == EARLY
    check_error_event(got[got.index(b"event: error") :], error, seq)


@pytest.mark.parametrize(
    ("first", "frames"),
    [(DELTA, "error"), (DELTA + D, "error, [DONE]"), (DELTA + C, "none")],
    ids=["mid-stream", "after-done", "after-terminal"],
)
async def test_a_relay_cancelled_while_it_waits(
    monkeypatch: pytest.MonkeyPatch, first: bytes, frames: str
) -> None:
    """Shutdown cancels a stream still running at the drain timeout: its error
    event comes before a held [DONE], and none follows a complete answer."""
    monkeypatch.setattr(handlers, "DONE_GRACE", 60.0)  # the wait outlasts the test
    waiting = anyio.Event()
    reads = [first]

    async def receive() -> bytes:
        if reads:
            return reads.pop(0)
        waiting.set()
        await anyio.sleep_forever()
        raise AssertionError  # pragma: no cover

    async def send(data: bytes) -> None:
        pass

    relay = PassthroughRelay(receive, send, 4096)
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(relay.run)
            await waiting.wait()
            tg.cancel_scope.cancel()
    err = ServiceUnavailable("goose-proxy is shutting down")
    got = relay.error_frames(err)
    if frames == "none":
        assert got == []
        return
    check_error_event(got[0], err, 0)
    assert got[1:] == ([D] if frames == "error, [DONE]" else [])


# --- nothing goes out before the answer starts ----------------------------------------

IN_PROGRESS = b'data: {"type":"response.in_progress","response":{}}\n\n'
CTX_FAILED = (
    b'event: response.failed\ndata: {"type":"response.failed","response":{"status":"failed",'
    b'"error":{"code":"server_error","message":"This model\'s maximum context length is 8192 '
    b'tokens"}}}\n\n'
)
RATE_ERROR = b'data: {"type":"error","code":"rate_limit_exceeded","message":"slow down"}\n\n'


async def _sends(reads: list[Read], limit: int = 4096) -> tuple[list[bytes], Optional[Exception]]:
    """Each ``send`` the relay makes for ``reads``, and what it raised."""
    sends, error, _ = await _run(reads, limit)
    return sends, error


async def test_the_opening_events_wait_for_the_answer() -> None:
    sends, error = await _sends([CREATED, IN_PROGRESS, DELTA + C + D])
    assert error is None
    assert sends[0] == CREATED + IN_PROGRESS + DELTA + C + D  # one send, when it began


@pytest.mark.parametrize(
    ("failure", "cls", "code"),
    [
        (CTX_FAILED, ContextLengthExceeded, "context_length_exceeded"),
        (RATE_ERROR, RateLimited, "rate_limit_exceeded"),
    ],
    ids=["response.failed", "error"],
)
async def test_a_failure_before_the_answer_is_raised_with_nothing_sent(
    failure: bytes, cls: type, code: str
) -> None:
    # the caller answers with an HTTP status then: Goose compacts on a 400
    # context_length_exceeded, which it does not read from a stream
    for reads in ([CREATED, IN_PROGRESS, failure + D], [CREATED + IN_PROGRESS + failure]):
        sends, error = await _sends(reads)
        assert sends == [] and isinstance(error, cls) and error.code == code


async def test_a_failure_after_the_answer_began_is_relayed() -> None:
    sends, error = await _sends([CREATED, DELTA, CTX_FAILED + D])
    assert error is None and b"".join(sends) == CREATED + DELTA + CTX_FAILED + D


async def test_a_failure_event_that_is_not_json_is_relayed_as_it_came() -> None:
    bad = b"event: response.failed\ndata: {not json\n\n"
    sends, error = await _sends([CREATED, bad + D])
    assert error is None and b"".join(sends) == CREATED + bad + D


async def test_opening_events_past_the_limit_go_out() -> None:
    sends, error = await _sends([CREATED, CREATED, CREATED, DELTA + C], limit=128)
    assert len(CREATED) * 2 > 128 > len(CREATED)
    assert error is None and sends[0] == CREATED * 2  # held until past the limit
    assert b"".join(sends) == CREATED * 3 + DELTA + C


async def test_a_stream_that_only_opened_ends_early_with_nothing_sent() -> None:
    sends, error = await _sends([CREATED, IN_PROGRESS])
    assert sends == [] and isinstance(error, UpstreamProtocolError)
    assert error.message == EARLY


def _ev(obj: dict[str, object]) -> bytes:
    return f"event: {obj['type']}\ndata: {json.dumps(obj)}\n\n".encode()


# Llama Stack lists (and may call) its own MCP tools before the model answers
MCP_PREAMBLE = b"".join(
    _ev(e)
    for e in (
        {"type": "response.mcp_list_tools.in_progress", "item_id": "mcp_1"},
        {"type": "response.output_item.added", "output_index": 0,
         "item": {"type": "mcp_list_tools", "id": "mcp_1", "tools": []}},
        {"type": "response.mcp_list_tools.completed", "item_id": "mcp_1"},
        {"type": "response.output_item.done", "output_index": 0,
         "item": {"type": "mcp_list_tools", "id": "mcp_1", "tools": []}},
        {"type": "response.output_item.added", "output_index": 1,
         "item": {"type": "mcp_call", "id": "mcp_2", "name": "search"}},
        {"type": "response.mcp_call.in_progress", "item_id": "mcp_2"},
        {"type": "response.mcp_call_arguments.delta", "item_id": "mcp_2", "delta": "{}"},
        {"type": "response.mcp_call.completed", "item_id": "mcp_2"},
        {"type": "response.file_search_call.searching", "item_id": "fs_1"},
        {"type": "response.output_item.done", "output_index": 2,
         "item": {"type": "file_search_call", "id": "fs_1", "queries": []}},
    )
)  # fmt: skip
MESSAGE_ADDED = _ev({"type": "response.output_item.added", "output_index": 2,
                     "item": {"type": "message", "id": "msg_1", "role": "assistant"}})  # fmt: skip


async def test_the_backends_own_tool_work_is_preamble_too() -> None:
    # the overflow comes after the MCP tools were listed: still an HTTP error
    sends, error = await _sends([CREATED + MCP_PREAMBLE, CTX_FAILED + D])
    assert sends == [] and isinstance(error, ContextLengthExceeded)
    # and the answer starts with the first item the client shows
    sends, error = await _sends([CREATED + MCP_PREAMBLE, MESSAGE_ADDED, DELTA + C + D])
    assert error is None and sends[0] == CREATED + MCP_PREAMBLE + MESSAGE_ADDED
    assert b"".join(sends) == CREATED + MCP_PREAMBLE + MESSAGE_ADDED + DELTA + C + D


@pytest.mark.parametrize(
    "first",
    [
        {"type": "response.output_text.annotation.added", "item_id": "msg_1"},
        {"type": "response.audio.delta", "delta": "AAAA"},
        {"type": "response.custom_tool_call_input.delta", "item_id": "ct_1", "delta": "x"},
        {"type": "response.output_item.added", "output_index": 0,
         "item": {"type": "computer_call", "id": "cu_1"}},
        {"type": "response.output_item.added", "output_index": 0,
         "item": {"type": "mcp_approval_request", "id": "ap_1"}},
        {"type": "response.lcs.custom"},  # a type the proxy does not know
    ],
    ids=["annotation", "audio", "custom-tool", "computer-call", "mcp-approval", "unknown"],
)  # fmt: skip
async def test_anything_but_preamble_starts_the_answer(first: dict[str, object]) -> None:
    # a client shows it (or must act on it): not held until the end
    sends, error = await _sends([CREATED, _ev(first), CTX_FAILED + D])
    assert error is None
    assert sends[0] == CREATED + _ev(first)


# Llama Stack streams its own knowledge_search's arguments as a function call
# (without announcing the item), and older releases announced MCP calls as
# function_call items; whose call it is shows only later
LLS_CALL = b"".join(
    _ev(e)
    for e in (
        {"type": "response.output_item.added", "output_index": 0,
         "item": {"type": "function_call", "id": "fc_1", "call_id": "c1",
                  "name": "knowledge_search", "arguments": ""}},
        {"type": "response.function_call_arguments.delta", "item_id": "fc_1", "delta": "{}"},
        {"type": "response.function_call_arguments.done", "item_id": "fc_1", "arguments": "{}"},
        {"type": "response.file_search_call.in_progress", "item_id": "fc_1"},
    )
)  # fmt: skip
CALL_DONE = _ev({"type": "response.output_item.done", "output_index": 0,
                 "item": {"type": "function_call", "id": "fc_1", "call_id": "c1",
                          "name": "developer__shell", "arguments": "{}"}})  # fmt: skip


async def test_a_function_call_waits_until_it_is_known_to_be_the_clients() -> None:
    # the backend's search, then the context overflows: an HTTP error still
    sends, error = await _sends([CREATED + LLS_CALL, CTX_FAILED + D])
    assert sends == [] and isinstance(error, ContextLengthExceeded)
    # the client's own call goes out once it is done
    sends, error = await _sends([CREATED + LLS_CALL[: LLS_CALL.index(b"event: response.file")],
                                 CALL_DONE, C + D])  # fmt: skip
    assert error is None and sends[0].endswith(CALL_DONE)


# --- the lightspeed flavour: answers adapted for strict clients ---------------------


def _framed(events: list[dict[str, Any]], style: str) -> tuple[bytes, bytes]:
    """``events`` framed in ``style`` (Lightspeed's ``event:`` lines; ``crlf``: the
    same with CRLF and comments; ``unnamed``: data lines only; ``message``: named
    ``message``, SSE's default name, which is the same as none), then ``[DONE]``;
    and what the client should get: every event the adapter keeps as it came,
    one it changes as ``[event: name]`` + ``data: <compact JSON>``; ``fields``:
    Lightspeed's with other fields around the data, which go nowhere."""
    adapter = AnswerAdapter()
    sent, want = [], []
    for ev in events:
        data = json.dumps(ev)
        if style == "unnamed":
            frame = f"data: {data}\n\n"
        elif style == "message":
            frame = f"event: message\ndata: {data}\n\n"
        elif style == "crlf":
            frame = f": keep-alive\r\nevent: {ev['type']}\r\ndata: {data}\r\n\r\n"
        elif style == "fields":
            frame = f"id: 1\nevent: {ev['type']}\nretry: 9\nx-a: b\ndata: {data}\nx.a: b\n\n"
        else:
            frame = f"event: {ev['type']}\ndata: {data}\n\n"
        out = adapter.event(ev)
        head = "" if style in ("unnamed", "message") else f"event: {ev['type']}\n"
        new = "" if out is None else head + "data: " + json.dumps(out, separators=(",", ":"))
        sent.append(frame)
        kept = f"{head}data: {data}\n\n" if style == "fields" else frame
        want.append(kept if out is ev else new and new + "\n\n")
    return "".join([*sent, D.decode()]).encode(), "".join([*want, D.decode()]).encode()


ADAPTED = {
    f"{name} {style}": _framed(make(), style)
    for name, make in [
        ("rag", ls.rag),
        ("reasoning", ls.reasoning),
        ("shield", ls.shield),
        ("calls", ls.calls),
    ]
    for style in ("lightspeed", "crlf", "unnamed", "message", "fields")
}


@settings(max_examples=300, deadline=None)
@given(name=st.sampled_from(sorted(ADAPTED)), data=st.data())
def test_any_cut_of_a_lightspeed_answer_is_adapted_the_same(name: str, data: st.DataObject) -> None:
    """Under the lightspeed flavour the events the adapter changes are written anew
    and those it leaves out go, wherever the reads are cut; every other event goes
    as it came, and no text delta is parsed for it."""
    stream, want = ADAPTED[name]
    at = data.draw(st.lists(st.integers(1, len(stream) - 1), max_size=12))
    parsed: list[str] = []

    def event_json(text: str) -> Any:
        parsed.append(text)
        return handlers.json.loads(text)

    with mock.patch.object(handlers, "event_json", event_json):
        sends, error, _ = anyio.run(_run, cut(stream, at), 65536, AnswerAdapter())
    assert error is None
    assert b"".join(sends) == want
    assert goose_reads_stream(want).text in (ls.ANSWER, ls.SHIELD)
    assert not [p for p in parsed if '"response.output_text.delta"' in p]


@pytest.mark.parametrize("name", ["rag", "reasoning", "shield", "calls"])
@pytest.mark.parametrize("bad", [NOT_UTF8, b"retry: 5\n\nevent: \xff\n\n"], ids=["data", "name"])
def test_a_bad_event_after_any_adapted_one_sends_a_prefix_of_the_adapted_answer(
    name: str, bad: bytes
) -> None:
    # in the read of the event before it, which the adapter changes or leaves
    # out: what goes out is the adapted answer up to there, never an event twice
    # (a changed event went out as it came and changed), one left out (the
    # backend's own tool work), nor any after the bad one (a block without data
    # is left out: it was, before the bad one was looked for, and the events
    # after it went out, the terminal one too)
    stream, want = ADAPTED[f"{name} lightspeed"]
    frames = [f + b"\n\n" for f in stream.split(b"\n\n")[:-1]]
    for k in range(1, len(frames)):
        reads = [b"".join(frames[:k]) + bad + b"".join(frames[k:])]
        sends, error, _ = anyio.run(_run, reads, 65536, AnswerAdapter())
        sent = b"".join(sends)
        assert want.startswith(sent), k
        ended = b"response.completed" in b"".join(frames[:k])
        assert (error is None) == ended, k
        if ended:  # after the end: the answer whole (the [DONE] too)
            assert sent == want, k


def test_a_bad_event_name_is_found_though_its_block_has_no_data() -> None:
    reads = [CREATED + SEQ_DELTA, b"retry: 5\n\nevent: \xff\n\n" + _seq_delta(9) + C]
    got, error = _seen_now(reads)
    assert isinstance(error, UpstreamProtocolError)
    assert got.startswith(CREATED + SEQ_DELTA)
    check_error_event(got[len(CREATED + SEQ_DELTA) :], error, 8)


def _seen_now(reads: list[Read]) -> tuple[bytes, Optional[ProxyError]]:
    """:func:`seen`, from a test that is not async."""
    return anyio.run(seen, reads)


@pytest.mark.parametrize("named", [True, False], ids=["named", "unnamed"])
def test_a_failure_after_the_answer_started_carries_the_error_object(named: bool) -> None:
    # Goose's types want the "error" object on an error event; under lightspeed
    # the relay adds it, for a named event and for one with data only
    flat = {"type": "error", "code": "server_error", "message": "boom", "sequence_number": 3}
    head = b"event: error\n" if named else b""
    frame = head + b"data: " + json.dumps(flat).encode() + b"\n\n"
    sends, error, _ = anyio.run(_run, [DELTA + frame], 65536, AnswerAdapter())
    out = b"".join(sends)
    assert error is None and out.startswith(DELTA)  # the backend's error ends the stream
    relayed = json.loads(out.split(b"data: ")[-1])
    assert relayed["error"] == {"code": "server_error", "message": "boom"}


# --- any stream, cut anywhere; a large event in small reads ----------------------------


def _big(n: int) -> bytes:
    return b'data: {"type":"response.output_text.delta","delta":"' + b"x" * n + b'"}\n\n'


#: the events before the end (after it, what goes out depends on the reads by
#: design: only a [DONE]), and none that is not UTF-8 (one in the read that starts
#: the answer keeps that read's events back; in a read of its own, they go first)
_RELAY_EVENTS = st.sampled_from(
    [DELTA, SEQ_DELTA, CREATED, b": keep-alive\n\n", b"id: 7\n\n"]
) | st.integers(0, 3000).map(_big)
_LINE_END = st.sampled_from([b"\n", b"\r\n", b"\r"])


@settings(max_examples=300, deadline=None)
@given(
    events=st.lists(st.tuples(_RELAY_EVENTS, _LINE_END), max_size=8),
    end=st.sampled_from([C + D, C, C[:-1], b'data: {"type":"resp', b""]),
    end_line=_LINE_END,
    limit=st.sampled_from([64, 1000, 4096]),
    data=st.data(),
)
def test_any_cut_of_a_stream_is_relayed_as_in_one_read(
    events: list[tuple[bytes, bytes]], end: bytes, end_line: bytes, limit: int, data: st.DataObject
) -> None:
    # what the client gets, and the error, whichever way the reads cut the stream
    # (events longer than the reads, blank lines across them, events over the cap)
    stream = b"".join(ev.replace(b"\n", eol) for ev, eol in events) + end.replace(b"\n", end_line)
    at = data.draw(st.lists(st.integers(1, max(1, len(stream))), max_size=20))
    got, error = anyio.run(seen, cut(stream, at), limit)
    want, want_error = anyio.run(seen, [stream] if stream else [], limit)
    assert got == want
    assert repr(error) == repr(want_error)


@pytest.mark.parametrize("size", [1, 2, 3, 4, 5, 7])
@pytest.mark.parametrize("ends", ["LF", "CRLF", "CR", "mixed"])
def test_a_stream_in_reads_of_a_few_bytes(ends: str, size: int) -> None:
    # every blank line cut at every place, after events that span many reads
    eols = {"LF": [b"\n"], "CRLF": [b"\r\n"], "CR": [b"\r"], "mixed": [b"\r\n", b"\r", b"\n"]}[ends]
    frames = [DELTA, _big(300), b": keep-alive\n\n", _big(100), SEQ_DELTA, C, D]
    stream = b"".join(f.replace(b"\n", eols[i % len(eols)]) for i, f in enumerate(frames))
    reads = cut(stream, list(range(size, len(stream), size)))
    assert anyio.run(relay, reads) == anyio.run(relay, [stream]) == (stream, None)
    # an event over the cap, whole at last or cut short: not a byte of it goes out
    assert anyio.run(relay, reads[: len(reads) * 2 // 3], 128) == (
        DELTA.replace(b"\n", eols[0]),
        "backend sent a stream event larger than 128 bytes",
    )


# An event that arrives in many small reads must cost time linear in its size:
# each read copied and scanned once, not the whole event so far again (a 3.5 MiB
# event in 256-byte reads took 2.9 s that way, 43 ms now). Timing would make a
# flaky test; these count what the quadratic way did instead.

_SIZE = 256 * 1024


@pytest.mark.parametrize("line_end", [b"\n", b"\r\n", b"\r"])
def test_a_large_event_in_small_reads_is_scanned_once(line_end: bytes) -> None:
    stream = (DELTA + _big(_SIZE) + C + D).replace(b"\n", line_end)
    reads = cut(stream, list(range(256, len(stream), 256)))  # 1000 and more reads
    scanned: list[int] = []
    whole_events = handlers._whole_events

    def spy(buf: bytes, start: int, limit: int) -> tuple[int, bool]:
        scanned.append(len(buf))
        return whole_events(buf, start, limit)

    with mock.patch.object(handlers, "_whole_events", spy):
        sent, error = anyio.run(relay, reads, 1 << 20)
    assert (sent, error) == (stream, None)
    # the event so far handed over at each read would be 1024 * _SIZE / 2 = 128 MiB
    assert sum(scanned) < 3 * len(stream)


def test_a_large_event_in_small_reads_is_not_copied_at_each_read() -> None:
    stream = DELTA + _big(_SIZE) + C + D
    reads = cut(stream, list(range(256, len(stream), 256)))
    allocated = 0
    pending = iter(reads)

    async def receive() -> bytes:  # what the relay allocated since the last read
        nonlocal allocated
        current, peak = tracemalloc.get_traced_memory()
        allocated += peak - current
        tracemalloc.reset_peak()
        return next(pending, b"")

    async def send(data: bytes) -> None:
        pass

    async def main() -> None:
        await PassthroughRelay(receive, send, 1 << 20).run()

    tracemalloc.start()
    try:
        anyio.run(main)
    finally:
        tracemalloc.stop()
    # a copy of the event so far at each read would be 1024 * _SIZE / 2 = 128 MiB
    assert allocated < 4 * len(stream)


def test_the_error_event_quotes_a_lone_surrogate_as_u_fffd() -> None:
    # Goose reads /v1/responses streams with serde_json, which refuses the
    # escaped half: the error event it would show failed to parse instead
    async def never() -> bytes:
        raise AssertionError("not read")

    async def drop(data: bytes) -> None:
        raise AssertionError("not sent")

    relay = PassthroughRelay(never, drop, 4096)
    (frame,) = relay.error_frames(UpstreamProtocolError("backend said \ud800 here"))
    assert b"\\ud800" not in frame
    assert "backend said \ufffd here" in frame.decode("utf-8")


# --- the events the adapter changes, spliced into the read ----------------------------

_CONVERSING = {"id": "resp_1", "object": "response", "created_at": 1, "model": "m",
               "status": "in_progress", "output": [], "conversation": "c0"}  # fmt: skip
_KINDS: list[dict[str, Any]] = [
    {"type": "response.created", "response": _CONVERSING},
    {"type": "response.output_text.delta", "item_id": "m", "delta": "x\n\ndata: y"},
    {"type": "response.output_item.added", "output_index": 1,
     "item": {"type": "mcp_call", "id": "x"}},
    {"type": "response.completed", "response": {**_CONVERSING, "status": "completed"}},
]  # fmt: skip
_BLOCK = st.one_of(
    st.just(b": comment\n\n"),
    st.sampled_from(_KINDS).map(lambda o: b"data: " + json.dumps(o).encode() + b"\n\n"),
    st.sampled_from(_KINDS).map(
        lambda o: f"event: {o['type']}\ndata: {json.dumps(o)}\n\n".encode()
    ),
)


def _adapted_event_by_event(whole: bytes, adapter: AnswerAdapter) -> bytes:
    """What the splice must give: every event of ``whole`` adapted on its own
    (cut at each blank line with the regular expression, not as the proxy cuts)."""
    out = []
    cuts = [m.end() for m in handlers._BLANK_LINE.finditer(whole + b".")]
    for start, end in zip([0, *cuts], [*cuts, len(whole)]):
        event = whole[start:end]
        for ev in handlers._events_in(event):
            obj = json.loads(ev.data)
            new = adapter.event(obj, obj.get("type") or ev.event)
            if new is None:
                event = b""
            elif new is not obj:
                event = handlers._event_frame(ev.event, new)
        out.append(event)
    return b"".join(out)


@settings(max_examples=300, deadline=None)
@given(st.lists(_BLOCK, min_size=1, max_size=8), st.booleans())
def test_the_changed_events_are_spliced_where_they_were(blocks: list[bytes], crlf: bool) -> None:
    # the last event of a read is found from its end, the others from the start,
    # up to the last one changed: the same bytes as adapting every event on its own
    whole = b"".join(blocks)
    if crlf:
        whole = whole.replace(b"\n", b"\r\n")
    events = handlers.SSEParser().feed(whole)
    got = handlers._adapt_events(whole, events, AnswerAdapter())
    assert got == _adapted_event_by_event(whole, AnswerAdapter())


def test_a_known_calls_argument_deltas_go_unparsed_and_nothing_else_does() -> None:
    # a call's own deltas are told by their item_id alone; an unnamed terminal
    # event whose text mentions argument events and holds the call is still
    # adapted (the backend's own item left out, the conversation an object)
    adapter = AnswerAdapter()
    call = {"type": "function_call", "id": "fc_c", "call_id": "call_c", "name": "shell",
            "arguments": "{}"}  # fmt: skip
    said = 'Goose reads response.function_call_arguments.delta "fc_c"'
    message = {"type": "message", "id": "msg_1", "role": "assistant", "status": "completed",
               "content": [{"type": "output_text", "annotations": [], "text": said}]}  # fmt: skip
    search = {"type": "file_search_call", "id": "fc_k", "status": "completed", "queries": []}
    completed = {"type": "response.completed", "response": {
        "id": "resp_1", "object": "response", "status": "completed", "conversation": "conv1",
        "output": [message, search, call]}}  # fmt: skip
    delta = {"type": "response.function_call_arguments.delta", "item_id": "fc_c",
             "output_index": 2, "delta": "{}"}  # fmt: skip
    search_delta = {**delta, "item_id": "fc_k", "delta": '"fc_c"'}
    added = {"type": "response.output_item.added", "output_index": 2, "item": call}
    blocks = [json.dumps(e, separators=(",", ":")).encode() for e in (added, delta, search_delta)]
    blocks.append(json.dumps(completed).encode())
    whole = b"".join(b"data: " + b + b"\n\n" for b in blocks)
    events = handlers.SSEParser().feed(whole)
    got = handlers.SSEParser().feed(handlers._adapt_events(whole, events, adapter))
    assert [json.loads(e.data)["type"] for e in got] == [
        "response.output_item.added", "response.function_call_arguments.delta",
        "response.completed"]  # fmt: skip
    assert got[1].data == events[1].data  # as it came
    final = json.loads(got[2].data)["response"]
    assert [item["type"] for item in final["output"]] == ["message", "function_call"]
    assert final["conversation"] == {"id": "conv1"}


def test_an_item_at_a_taken_index_goes_out_at_its_own_with_all_its_events() -> None:
    # a message announced where a call went out moves to the next index, and its
    # text events follow it (parsed only because they name it); the call's own
    # argument deltas still go as they came
    call = {"type": "function_call", "id": "fc_c", "call_id": "call_c", "name": "shell",
            "arguments": ""}  # fmt: skip
    message = {"type": "message", "id": "msg_m", "role": "assistant", "status": "in_progress",
               "content": []}  # fmt: skip
    part = {"type": "output_text", "text": "", "annotations": []}
    sent = [
        {"type": "response.output_item.added", "output_index": 3, "item": call},
        {"type": "response.function_call_arguments.delta", "item_id": "fc_c", "output_index": 3,
         "delta": "{}"},
        {"type": "response.output_item.added", "output_index": 3, "item": message},
        {"type": "response.content_part.added", "item_id": "msg_m", "output_index": 3,
         "content_index": 0, "part": part},
        {"type": "response.output_text.delta", "item_id": "msg_m", "output_index": 3,
         "content_index": 0, "delta": "fc_c"},
        {"type": "response.output_text.delta", "item_id": "msg_m", "output_index": 3,
         "content_index": 0, "delta": "hi", "logprobs": []},
        {"type": "response.output_item.done", "output_index": 3,
         "item": {**call, "arguments": "{}"}},
        {"type": "response.output_item.done", "output_index": 3, "item": message},
    ]  # fmt: skip
    whole = b"".join(
        b"event: " + e["type"].encode() + b"\ndata: " + json.dumps(e).encode() + b"\n\n"
        for e in sent
    )
    events = handlers.SSEParser().feed(whole)
    got = handlers.SSEParser().feed(handlers._adapt_events(whole, events, AnswerAdapter()))
    assert [(e.event, json.loads(e.data)["output_index"]) for e in got] == [
        (e["type"], 4 if "msg_m" in (e.get("item_id"), e.get("item", {}).get("id")) else 3)
        for e in sent
    ]
    assert got[1].data == events[1].data  # the call's delta: as it came
    assert [json.loads(e.data).get("delta") for e in got[4:6]] == ["fc_c", "hi"]


def test_many_items_at_one_index_go_out_at_the_indexes_that_follow() -> None:
    # each call announced where another went out takes the next index after the
    # highest held (kept as a number: finding it anew made many moves quadratic)
    adapter = AnswerAdapter()
    out = [
        adapter.event(
            {"type": "response.output_item.added", "output_index": 0 if n < 300 else 400,
             "item": {"type": "function_call", "id": f"fc_{n}", "call_id": f"c{n}",
                      "name": "f", "arguments": ""}}
        )
        for n in range(301)
    ]  # fmt: skip
    assert [ev["output_index"] for ev in out if ev] == [*range(300), 400]
