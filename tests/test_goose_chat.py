"""Lightspeed answers on ``POST /v1/chat/completions``, the path Goose uses with the
proxy, read by Goose's chat-completions rules (``goose_reads_chat_stream`` and
``goose_reads_chat_response`` in ``tests/goose_rules.py``), streamed and not.

What Goose sees must be what the backend said: the text, the thinking, the tool
calls (id, name, arguments) and the token usage, read here from the backend's
own bytes (:func:`backend_said`), never from the proxy's answer. The backend is
the devbackend over mutual TLS, replaying the captures of ``tests/fixtures`` and
playing its scenarios (its replies recorded as it sends them); the Lightspeed
shapes of ``tests/lightspeed_answers.py`` and the cut streams come from a
scripted server over mutual TLS.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any, Optional

import anyio
import anyio.abc
import anyio.from_thread
import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import devbackend.server
from devbackend.plan import Incoming, PlanConfig, Reply, load_capture, plan_reply
from devbackend.sse import get_style
from tests import lightspeed_answers as ls
from tests.goose_rules import (
    GooseChat,
    GooseTurnFails,
    goose_error_kind,
    goose_reads_chat_response,
    goose_reads_chat_stream,
)
from tests.reliability.support import chunk, fake_server, post, proxied, read_request_head
from tests.support import make_config, running_proxy

pytestmark = pytest.mark.anyio

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": name,
            "description": "a tool",
            "parameters": {"type": "object", "properties": {prop: {"type": "string"}}},
        },
    }
    for name, prop in (("developer__shell", "command"), ("developer__text_editor", "path"))
]


def ask(text: str, stream: bool) -> dict[str, Any]:
    """A request as Goose makes it (streamed: with ``include_usage``)."""
    body: dict[str, Any] = {
        "model": "m",
        "messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": text}],
        "tools": TOOLS,
        "stream": stream,
    }
    if stream:
        body["stream_options"] = {"include_usage": True}
    return body


# --- what the backend said ---------------------------------------------------------


@dataclass
class Said:
    """A Responses answer read on its own terms: the text (its deltas, else the
    final messages'), the thinking (likewise), the function calls (call id, name,
    arguments), the usage (input, output, total) and the failure, if it failed
    (its message; ``before_output`` when nothing of the answer came first)."""

    status: int
    text: str = ""
    thinking: str = ""
    calls: list[tuple[str, str, str]] = field(default_factory=list)
    usage: Optional[tuple[int, int, int]] = None
    error: Optional[str] = None
    before_output: bool = True


def _events(body: bytes) -> Iterator[dict[str, Any]]:
    for frame in body.replace(b"\r\n", b"\n").split(b"\n\n"):
        data = [ln[5:].strip() for ln in frame.split(b"\n") if ln.startswith(b"data:")]
        if data and data != [b"[DONE]"]:
            yield json.loads(b"\n".join(data))


def _message_parts(item: dict[str, Any]) -> tuple[str, str]:
    content = item.get("content")
    if isinstance(content, str):
        return content, ""
    text = thought = ""
    for part in content or []:
        if part.get("type") in ("output_text", "refusal"):
            text += part.get("text") or part.get("refusal") or ""
        elif part.get("type") == "reasoning_text":
            thought += part["text"]
    return text, thought


def backend_said(status: int, body: bytes) -> Said:
    said = Said(status)
    if status != 200:
        said.error = body.decode()
        return said
    final: Optional[dict[str, Any]] = None
    items: list[dict[str, Any]] = []
    deltas = thought_deltas = False
    if body.lstrip().startswith(b"{"):
        final = json.loads(body)
    else:
        for ev in _events(body):
            kind = ev.get("type", "")
            if kind in ("response.output_text.delta", "response.refusal.delta"):
                said.text += ev["delta"]
                deltas = True
            elif kind in ("response.reasoning_text.delta", "response.reasoning_summary_text.delta"):
                said.thinking += ev["delta"]
                thought_deltas = True
            elif kind == "response.output_item.done":
                items.append(ev["item"])
            elif kind in ("response.completed", "response.incomplete"):
                final = ev["response"]
            elif kind == "response.failed":
                said.error = ev["response"]["error"]["message"]
            elif kind == "error":
                said.error = ev.get("message") or ev["error"]["message"]
        said.before_output = not (deltas or thought_deltas or items)
    for item in final["output"] if final is not None else items:
        if item["type"] == "function_call":
            said.calls.append((item["call_id"], item["name"], item["arguments"]))
        elif item["type"] == "message":
            text, thought = _message_parts(item)
            said.text += "" if deltas else text
            said.thinking += "" if thought_deltas else thought
        elif item["type"] == "reasoning" and not thought_deltas:
            parts = item.get("content") or item.get("summary") or []
            said.thinking += "".join(p["text"] for p in parts)
    usage = (final or {}).get("usage")
    if usage:
        said.usage = (usage["input_tokens"], usage["output_tokens"], usage["total_tokens"])
    if final is None and said.error is None:
        said.error = "the stream ended without a terminal event"
    return said


def reply_bytes(reply: Reply) -> bytes:
    """The body the devbackend sends for ``reply`` (before the chunked framing)."""
    if reply.frames is not None:
        return b"".join(reply.frames)
    return reply.body if reply.cut is None else reply.body[: reply.cut]


# --- what Goose sees ------------------------------------------------------------


def goose_sees(status: int, body: bytes, stream: bool) -> GooseChat:
    """What Goose makes of the proxy's answer; GooseTurnFails where it fails the turn."""
    if not 200 <= status < 300:
        doc = json.loads(body)
        raise GooseTurnFails(goose_error_kind(status, doc), doc["error"]["message"])
    return goose_reads_chat_stream(body) if stream else goose_reads_chat_response(body)


def assert_goose_saw(seen: GooseChat, said: Said) -> None:
    assert seen.text == said.text
    assert seen.thinking == said.thinking
    assert [(c.id, c.name, c.arguments) for c in seen.calls] == said.calls
    assert [c.args for c in seen.calls] == [json.loads(a) for _, _, a in said.calls]
    assert seen.usage == said.usage
    assert not seen.dropped_text and not seen.lost_calls


def assert_goose_fails_as_said(
    status: int, body: bytes, stream: bool, said: Said, kind: str
) -> None:
    with pytest.raises(GooseTurnFails) as failed:
        goose_sees(status, body, stream)
    assert failed.value.kind == kind, failed.value
    if said.before_output or not stream:
        assert status != 200, "a failure before any output keeps its HTTP status"
    else:  # what came before the failure is shown, then the turn fails
        seen = failed.value.seen
        assert (seen.text, seen.thinking) == (said.text, said.thinking)


# --- the devbackend: captures and scenarios ------------------------------------------


@pytest.fixture
def replies(monkeypatch: pytest.MonkeyPatch) -> list[Reply]:
    """Every reply the devbackend plans, as it plans it (then sends it)."""
    planned: list[Reply] = []

    def recording(request: Incoming, config: PlanConfig) -> Reply:
        reply = plan_reply(request, config)
        planned.append(reply)
        return reply

    monkeypatch.setattr(devbackend.server, "plan_reply", recording)
    return planned


#: name -> (X-Dev-Fault, what the user says, how Goose fails the turn, if it does)
DEVBACKEND: dict[str, tuple[str, str, Optional[str]]] = {
    "capture-text": ("replay:lcs_stream_text.sse", "hi", None),
    "capture-tool": ("replay:lcs_stream_tool.sse", "hi", None),
    "capture-tool-followup": ("replay:lcs_stream_tool_followup.sse", "hi", None),
    "capture-ogx-text": ("replay:ogx_stream_text.sse", "hi", None),
    "capture-json-text": ("replay:lcs_nonstream_text.json", "hi", None),
    "capture-json-tool": ("replay:lcs_nonstream_tool.json", "hi", None),
    "capture-ctx-too-long": (
        "replay:err_CTX_TOO_LONG_stream_true.txt",
        "hi",
        "ContextLengthExceeded",
    ),
    "capture-500": ("replay:err_FAIL_500_stream_false.txt", "hi", "ServerError"),
    "capture-quota-429": ("replay:err_quota_429_stream.txt", "hi", "RateLimitExceeded"),
    "text": ("", "hi there", None),
    "tool-call": ("", "please USE_TOOL", None),
    "parallel-tools": ("parallel_tools", "please USE_TOOL", None),
    "args-only-in-done": ("args_only_in_done", "please USE_TOOL", None),
    "reasoning": ("reasoning", "hi there", None),
    "refusal": ("refusal", "hi there", None),
    "shield": ("shield", "hi there", None),
    "incomplete": ("incomplete", "hi there", None),
    "error-event": ("error_event", "hi there", "ServerError"),
    "ctx-too-long": ("ctx_too_long", "hi there", "ContextLengthExceeded"),
    "reset-mid-stream": ("reset_mid_body", "hi there", "ServerError"),
    "no-terminal-event": ("truncate", "hi there", "ServerError"),
}


@pytest.mark.parametrize("stream", [True, False], ids=["stream", "json"])
@pytest.mark.parametrize("name", list(DEVBACKEND))
async def test_goose_sees_what_the_devbackend_said(
    pki: SimpleNamespace, replies: list[Reply], name: str, stream: bool
) -> None:
    fault, text, fails = DEVBACKEND[name]
    with anyio.fail_after(10):
        async with proxied(pki, fault=fault) as env:
            r = await post(env.url, ask(text, stream))
    assert len(replies) == 1
    said = backend_said(replies[0].status, reply_bytes(replies[0]))
    assert (said.error is not None) == (fails is not None), said
    if fails is None:
        assert r.status_code == 200, r.text
        assert_goose_saw(goose_sees(r.status_code, r.content, stream), said)
    else:
        assert_goose_fails_as_said(r.status_code, r.content, stream, said, fails)


# --- a scripted backend: Lightspeed's shapes, and streams cut anywhere ----------------


def http_stream(body: bytes) -> bytes:
    """``body`` (SSE) as a chunked 200, one chunk per event, as Lightspeed sends it."""
    head = (
        b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
    )
    frames = [f + b"\n\n" for f in body.split(b"\n\n") if f.strip()]
    return head + b"".join(chunk(f) for f in frames) + b"0\r\n\r\n"


@asynccontextmanager
async def scripted(pki: SimpleNamespace) -> AsyncIterator[SimpleNamespace]:
    """A proxy whose backend (mTLS) answers each request with the next of
    ``answers``: raw HTTP bytes in the pieces given, one write per piece."""
    answers: list[list[bytes]] = []

    async def handler(stream: anyio.abc.ByteStream, tcp: anyio.abc.SocketStream) -> None:
        while True:
            await read_request_head(stream, srv)
            for piece in answers.pop(0):
                await stream.send(piece)

    async with fake_server(handler, tls=pki.server_context()) as srv:
        cfg = make_config(srv.url, pki.auth, backend={"proxy": ""})
        async with running_proxy(cfg) as proxy:
            yield SimpleNamespace(url=proxy.url, answers=answers)


LIGHTSPEED = {
    "rag-and-mcp": ls.rag,
    "reasoning-in-the-message": ls.reasoning,
    "reasoning-left-out-of-the-message": lambda: ls.reasoning(in_the_item=False),
    "refusal-left-out-of-the-message": ls.refused,
    "shield-string": ls.shield,
    "shield-nulls": lambda: ls.shield(nulls=True),
    "shield-parts": lambda: ls.shield([{"type": "output_text", "text": ls.SHIELD}]),
}


@pytest.mark.parametrize(
    ("name", "stream"),
    [
        pytest.param(name, stream, id=f"{name}-{'stream' if stream else 'json'}")
        for name in LIGHTSPEED
        for stream in (True, False)
    ],
)
async def test_goose_sees_what_lightspeed_said(
    pki: SimpleNamespace, name: str, stream: bool
) -> None:
    body = ls.lightspeed_sse(LIGHTSPEED[name]())
    said = backend_said(200, body)
    assert said.text and said.error is None
    with anyio.fail_after(10):
        async with scripted(pki) as env:
            env.answers.append([http_stream(body)])
            r = await post(env.url, ask("hi", stream))
    assert r.status_code == 200, r.text
    assert_goose_saw(goose_sees(r.status_code, r.content, stream), said)


def _planned(fault: str, text: str) -> bytes:
    """The stream the devbackend plays for ``fault`` (a Lightspeed-mode reply)."""
    request = {
        "model": "m",
        "input": text,
        "tools": [{"type": "function", **t["function"]} for t in TOOLS],
        "stream": True,
    }
    config = PlanConfig(style=get_style("lightspeed"), strict_fields=True, max_body_chars=65_536)
    headers = {"x-dev-fault": fault} if fault else {}
    reply = plan_reply(Incoming(headers, json.dumps(request), request, True), config)
    return reply_bytes(reply)


CUT_SOURCES = {
    **{name: load_capture(name)[2] for name in ("lcs_stream_text.sse", "lcs_stream_tool.sse")},
    "ogx_stream_text.sse": load_capture("ogx_stream_text.sse")[2],
    "lightspeed-rag": ls.lightspeed_sse(ls.rag()),
    "lightspeed-reasoning": ls.lightspeed_sse(ls.reasoning()),
    "devbackend-parallel-tools": _planned("parallel_tools", "USE_TOOL"),
    "devbackend-reasoning": _planned("reasoning", "hi there"),
}


@contextmanager
def scripted_in_a_thread(pki: SimpleNamespace) -> Iterator[tuple[Any, SimpleNamespace]]:
    """:func:`scripted` in an event loop of its own, for a synchronous hypothesis test."""
    with anyio.from_thread.start_blocking_portal() as portal:
        with portal.wrap_async_context_manager(scripted(pki)) as env:
            yield portal, env


def test_goose_sees_the_same_for_any_cut_of_the_backends_bytes(pki: SimpleNamespace) -> None:
    """The backend's bytes (head, chunk framing and events) written in pieces cut at
    random points: Goose sees what the backend said, whatever the cuts."""
    cases = [(name, stream) for name in sorted(CUT_SOURCES) for stream in (True, False)]

    async def exchange(url: str, stream: bool) -> httpx.Response:
        with anyio.fail_after(10):
            return await post(url, ask("hi", stream))

    with scripted_in_a_thread(pki) as (portal, env):

        @settings(max_examples=40, deadline=None, database=None)
        @given(case=st.sampled_from(cases), data=st.data())
        def check(case: tuple[str, bool], data: st.DataObject) -> None:
            name, stream = case
            body = CUT_SOURCES[name]
            said = backend_said(200, body)
            assert said.error is None
            raw = http_stream(body)
            cuts = data.draw(st.lists(st.integers(1, len(raw) - 1), max_size=12, unique=True))
            edges = [0, *sorted(cuts), len(raw)]
            env.answers.append([raw[a:b] for a, b in zip(edges, edges[1:])])
            r = portal.call(exchange, env.url, stream)
            assert r.status_code == 200, r.text
            assert_goose_saw(goose_sees(r.status_code, r.content, stream), said)

        check()


# --- the mirror's own rules, on chunks written by hand --------------------------------


def _sse(*chunks: Any) -> bytes:
    return (
        b"".join(b"data: " + json.dumps(c).encode() + b"\n\n" for c in chunks) + b"data: [DONE]\n\n"
    )


def _delta(delta: Any, finish: Optional[str] = None, **extra: Any) -> dict[str, Any]:
    return {
        "model": "m",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        **extra,
    }


CALL = {
    "index": 0,
    "id": "call_1",
    "type": "function",
    "function": {"name": "f", "arguments": "{}"},
}


@pytest.mark.parametrize(
    "chunk",
    [
        {"error": None, "choices": []},  # any ``error`` key fails the turn
        {"object": "error", "message": "boom"},
        {"choices": None},
        _delta(None),  # ``delta`` may be missing, not null
        _delta({"tool_calls": [{"index": 0, "id": "c"}]}),  # no ``function``
        _delta({"tool_calls": [{**CALL, "index": 2**31}]}),  # index past i32
        _delta({"content": 5}),
        _delta({"reasoning_content": ["x"]}),
        {**_delta({"content": "x"}), "created": 1.5},
    ],
)
def test_goose_fails_the_turn_on_a_chunk_that_does_not_fit(chunk: dict[str, Any]) -> None:
    with pytest.raises(GooseTurnFails):
        goose_reads_chat_stream(_sse(chunk))


def test_goose_loses_tool_calls_that_done_interrupts_and_text_beside_them() -> None:
    lost = goose_reads_chat_stream(_sse(_delta({"tool_calls": [CALL]}), _delta({"content": "x"})))
    assert not lost.calls and [c.id for c in lost.lost_calls] == ["call_1"]
    assert lost.dropped_text == "x"
    kept = goose_reads_chat_stream(_sse(_delta({"tool_calls": [CALL]}), _delta({}, "tool_calls")))
    assert [(c.id, c.name, c.args) for c in kept.calls] == [("call_1", "f", {})]


def test_goose_counts_usage_on_a_text_chunk_only_with_its_finish_reason() -> None:
    usage = {"prompt_tokens": 1, "completion_tokens": 2}
    assert goose_reads_chat_stream(_sse(_delta({"content": "a"}, usage=usage))).usage is None
    seen = goose_reads_chat_stream(_sse(_delta({"content": "a"}, "stop", usage=usage)))
    assert (seen.text, seen.usage) == ("a", (1, 2, 3))
