"""Fidelity end to end: real captures and scripted faults through the proxy.

The scripted backend serves the Lightspeed 0.7.1 captures byte for byte
(``X-Dev-Fault: replay:<file>``); the expected chat output is computed from the
capture itself, independently of the translator.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from types import SimpleNamespace
from typing import Any, Optional

import anyio
import anyio.abc
import httpx
import openai
import pydantic
import pytest

import devbackend
from goose_proxy.http.handlers import _may_be_terminal
from tests.reliability.support import (
    HELLO,
    HELLO_STREAM,
    fake_server,
    post,
    read_request_head,
    sse_answer,
    sse_event,
    text_events,
)
from tests.support import make_config, running_proxy, sdk_stream_final
from tests.translate.translate_testkit import FIXTURES, capture_events

pytestmark = pytest.mark.anyio

USER = {"role": "user", "content": "please USE_TOOL to list files"}
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "developer__shell",
            "description": "Run a shell command",
            "parameters": {"type": "object", "properties": {"command": {"type": "string"}}},
        },
    }
]


def expected_from_capture(name: str) -> dict[str, Any]:
    """Text and tool calls a capture carries, read straight from its events."""
    events = capture_events(name)
    text = "".join(e["delta"] for e in events if e.get("type") == "response.output_text.delta")
    calls = [
        e["item"]
        for e in events
        if e.get("type") == "response.output_item.done" and e["item"]["type"] == "function_call"
    ]
    return {"text": text, "calls": calls}


async def chat(
    proxy: SimpleNamespace, *, stream: bool, fault: Optional[str] = None, **extra: Any
) -> httpx.Response:
    body = {"model": "goose-model", "messages": [USER], "stream": stream, **extra}
    async with httpx.AsyncClient(timeout=10) as c:
        return await c.post(proxy.url + "/v1/chat/completions", json=body)


@asynccontextmanager
async def proxy_answering(
    pki: SimpleNamespace, answer: bytes, flavor: str
) -> AsyncIterator[SimpleNamespace]:
    """The proxy (mTLS, ``flavor``) in front of a backend that answers every
    request with the bytes ``answer``."""

    async def handler(stream: anyio.abc.ByteStream, tcp: anyio.abc.SocketStream) -> None:
        await read_request_head(stream, srv)
        await stream.send(answer)

    async with fake_server(handler, tls=pki.server_context()) as srv:
        cfg = make_config(srv.url, pki.auth, backend={"proxy": "", "flavor": flavor})
        async with running_proxy(cfg) as proxy:
            yield proxy


def sse_chunks(raw: str) -> list[Any]:
    """Goose's parsing rule: only ``data:`` lines, one JSON document each, ``[DONE]`` ends."""
    out: list[Any] = []
    for line in raw.splitlines():
        if not line.startswith("data: "):
            continue
        data = line[len("data: ") :]
        out.append("[DONE]" if data == "[DONE]" else json.loads(data))
    return out


async def through_proxy(fault: str, **kw: Any) -> httpx.Response:
    with anyio.fail_after(15):
        async with devbackend.run() as backend:
            cfg = make_config(backend.url, backend={"headers": {"X-Dev-Fault": fault}}, **kw)
            async with running_proxy(cfg) as proxy:
                return await chat(proxy, stream=kw.pop("stream", True))


@pytest.mark.parametrize(
    "capture",
    ["lcs_stream_text.sse", "lcs_stream_tool.sse", "lcs_stream_tool_followup.sse",
     "ogx_stream_text.sse"],
)  # fmt: skip
@pytest.mark.parametrize("stream", [True, False])
async def test_capture_replay_exact_output(capture: str, stream: bool) -> None:
    want = expected_from_capture(capture)
    with anyio.fail_after(15):
        async with devbackend.run() as backend:
            cfg = make_config(
                backend.url, backend={"headers": {"X-Dev-Fault": f"replay:{capture}"}}
            )
            async with running_proxy(cfg) as proxy:
                r = await chat(proxy, stream=stream)
    assert r.status_code == 200
    if stream:
        assert r.headers["content-type"].startswith("text/event-stream")
        chunks = sse_chunks(r.text)
        assert chunks[-1] == "[DONE]" and chunks.count("[DONE]") == 1
        body = [c for c in chunks[:-1]]
        assert all("error" not in c for c in body)
        assert len({(c["id"], c["created"], c["model"]) for c in body}) == 1
        assert body[0]["model"] == "goose-model"
        text = "".join(c["choices"][0]["delta"].get("content") or "" for c in body)
        finishes = [
            c["choices"][0]["finish_reason"] for c in body if c["choices"][0]["finish_reason"]
        ]
        calls: dict[int, dict[str, str]] = {}
        for c in body:
            for tc in c["choices"][0]["delta"].get("tool_calls") or []:
                slot = calls.setdefault(tc["index"], {"id": "", "name": "", "arguments": ""})
                slot["id"] += tc.get("id") or ""
                slot["name"] += tc.get("function", {}).get("name") or ""
                slot["arguments"] += tc.get("function", {}).get("arguments") or ""
        got_calls = [calls[i] for i in sorted(calls)]
        assert sorted(calls) == list(range(len(calls)))  # dense indices
    else:
        done = r.json()
        msg = done["choices"][0]["message"]
        text = msg["content"] or ""
        finishes = [done["choices"][0]["finish_reason"]]
        got_calls = [
            {"id": t["id"], "name": t["function"]["name"], "arguments": t["function"]["arguments"]}
            for t in msg.get("tool_calls") or []
        ]
    assert text == want["text"]
    assert got_calls == [
        {"id": c["call_id"], "name": c["name"], "arguments": c["arguments"]} for c in want["calls"]
    ]
    assert finishes == ["tool_calls" if want["calls"] else "stop"]


@pytest.mark.parametrize("capture", ["lcs_nonstream_text.json", "lcs_nonstream_tool.json"])
@pytest.mark.parametrize("stream", [True, False])
async def test_json_answer_to_a_stream_request(capture: str, stream: bool) -> None:
    """Some servers answer a stream request with plain JSON; both client modes get it right."""
    resp = json.loads((FIXTURES / capture).read_text())
    text = "".join(
        p["text"] for i in resp["output"] if i["type"] == "message" for p in i["content"]
    )
    calls = [i for i in resp["output"] if i["type"] == "function_call"]
    async with devbackend.run() as backend:
        cfg = make_config(backend.url, backend={"headers": {"X-Dev-Fault": f"replay:{capture}"}})
        with anyio.fail_after(15):
            async with running_proxy(cfg) as proxy:
                client = openai.AsyncOpenAI(base_url=proxy.url + "/v1", api_key="x", max_retries=0)
                if stream:
                    async with client.chat.completions.stream(
                        model="m",
                        messages=[USER],  # type: ignore[list-item]
                        stream_options={"include_usage": True},
                    ) as s:
                        done = await s.get_final_completion()
                else:
                    done = await client.chat.completions.create(model="m", messages=[USER])  # type: ignore[list-item]
                await client.close()
    msg = done.choices[0].message
    assert (msg.content or "") == text
    assert [(t.id, t.function.name, t.function.arguments) for t in msg.tool_calls or []] == [  # type: ignore[union-attr]
        (c["call_id"], c["name"], c["arguments"]) for c in calls
    ]
    assert done.usage is not None and done.usage.prompt_tokens == resp["usage"]["input_tokens"]


@pytest.mark.parametrize("stream", [True, False])
async def test_context_too_long_is_a_real_400_not_a_stream(stream: bool) -> None:
    """Commit late: Lightspeed's 200 stream with only response.failed becomes HTTP 400."""
    failed = next(
        e
        for e in capture_events("err_CTX_TOO_LONG_stream_true.txt")
        if e["type"] == "response.failed"
    )
    async with devbackend.run() as backend:
        cfg = make_config(
            backend.url,
            backend={"headers": {"X-Dev-Fault": "replay:err_CTX_TOO_LONG_stream_true.txt"}},
        )
        with anyio.fail_after(15):
            async with running_proxy(cfg) as proxy:
                r = await chat(proxy, stream=stream)
    assert r.status_code == 400
    assert r.headers["content-type"] == "application/json"
    err = r.json()["error"]
    assert err["code"] == "context_length_exceeded"
    assert err["message"] == failed["response"]["error"]["message"]


@pytest.mark.parametrize(
    ("capture", "status", "needle"),
    [
        ("err_FAIL_500_stream_false.txt", 500,
         "Internal server error: An unexpected error occurred while processing the request."),
        ("err_422_extra_field.json", 400, "Extra inputs are not permitted"),
        ("err_quota_429_stream.txt", 429, "The quota has been exceeded"),
    ],
)  # fmt: skip
async def test_error_captures(capture: str, status: int, needle: str) -> None:
    async with devbackend.run() as backend:
        cfg = make_config(backend.url, backend={"headers": {"X-Dev-Fault": f"replay:{capture}"}})
        with anyio.fail_after(15):
            async with running_proxy(cfg) as proxy:
                r = await chat(proxy, stream=True)
    assert r.status_code == status
    assert needle in r.json()["error"]["message"]


async def test_error_after_output_is_an_error_event_never_stop() -> None:
    """A stream cut short after text went out ends with an error event, then [DONE]."""
    async with devbackend.run() as backend:
        cfg = make_config(backend.url, backend={"headers": {"X-Dev-Fault": "truncate"}})
        with anyio.fail_after(15):
            async with running_proxy(cfg) as proxy:
                r = await chat(proxy, stream=True)
    assert r.status_code == 200
    chunks = sse_chunks(r.text)
    assert chunks[-1] == "[DONE]"
    assert "error" in chunks[-2] and chunks[-2]["error"]["message"]
    assert all(c["choices"][0]["finish_reason"] is None for c in chunks[:-2])


@pytest.mark.parametrize(
    ("fault", "check"),
    [
        ("refusal", lambda m: bool(m.refusal) and m.content == m.refusal and m.parsed is None),
        ("shield", lambda m: bool(m.content)),
        ("reasoning", lambda m: bool(m.content) and bool(getattr(m, "reasoning_content", None))),
        ("parallel_tools", lambda m: [t.index for t in m.tool_calls] == [0, 1]),
        ("args_only_in_done", lambda m: json.loads(m.tool_calls[0].function.arguments) is not None),
    ],
)
async def test_scripted_shapes_with_the_sdk_accumulator(fault: str, check: Any) -> None:
    async with devbackend.run() as backend:
        cfg = make_config(backend.url, backend={"headers": {"X-Dev-Fault": fault}})
        with anyio.fail_after(15):
            async with running_proxy(cfg) as proxy:
                client = openai.AsyncOpenAI(base_url=proxy.url + "/v1", api_key="x", max_retries=0)
                done = await sdk_stream_final(client, model="m", messages=[USER], tools=TOOLS)
                await client.close()
    msg = done.choices[0].message
    if msg.tool_calls:
        assert done.choices[0].finish_reason == "tool_calls"
    assert check(msg), msg


async def test_incomplete_is_length_with_usage() -> None:
    async with devbackend.run() as backend:
        cfg = make_config(backend.url, backend={"headers": {"X-Dev-Fault": "incomplete"}})
        with anyio.fail_after(15):
            async with running_proxy(cfg) as proxy:
                r = await chat(proxy, stream=True, stream_options={"include_usage": True})
                plain = await chat(proxy, stream=False)
    chunks = sse_chunks(r.text)
    finishes = [c["choices"][0]["finish_reason"] for c in chunks[:-1] if c["choices"]]
    assert [f for f in finishes if f] == ["length"]
    assert chunks[-2]["choices"] == [] and chunks[-2]["usage"]["completion_tokens"] >= 0
    assert plain.json()["choices"][0]["finish_reason"] == "length"


async def test_usage_chunk_only_when_asked() -> None:
    async with devbackend.run() as backend:
        async with running_proxy(make_config(backend.url)) as proxy:
            with anyio.fail_after(15):
                without = sse_chunks((await chat(proxy, stream=True)).text)
                with_usage = sse_chunks(
                    (await chat(proxy, stream=True, stream_options={"include_usage": True})).text
                )
    assert all(c["choices"] for c in without[:-1])
    assert with_usage[-2]["choices"] == [] and with_usage[-2]["usage"]["total_tokens"] > 0


# --- /v1/responses passthrough --------------------------------------------------------


def _with_conversation_object(data: bytes) -> Any:
    """A Response object or a Responses event, parsed, its Response's string
    ``conversation`` as the ``{"id": …}`` the lightspeed flavour makes of it."""
    obj = json.loads(data)
    resp = obj.get("response", obj)
    if isinstance(resp.get("conversation"), str):
        resp["conversation"] = {"id": resp["conversation"]}
    return obj


@pytest.mark.parametrize("flavor", ["lightspeed", "openai"])
@pytest.mark.parametrize("capture", ["lcs_stream_text.sse", "lcs_nonstream_text.json"])
async def test_responses_passthrough_is_byte_exact(capture: str, flavor: str) -> None:
    # byte for byte, but for the Response's conversation under lightspeed: the
    # events that carry it are written anew, every other event goes as it came
    raw = (FIXTURES / capture).read_bytes()
    async with devbackend.run() as backend:
        cfg = make_config(
            backend.url,
            backend={"headers": {"X-Dev-Fault": f"replay:{capture}"}, "flavor": flavor},
        )
        with anyio.fail_after(15):
            async with running_proxy(cfg) as proxy, httpx.AsyncClient(timeout=10) as c:
                body = {"model": "gpt-5", "input": "hi", "stream": capture.endswith(".sse"),
                        "top_p": 0.5}  # fmt: skip
                r = await c.post(proxy.url + "/v1/responses", json=body)
    assert r.status_code == 200
    sent = backend.requests[-1]
    if flavor == "openai":
        assert r.content == raw
        assert sent.json["model"] == "gpt-5" and sent.json["top_p"] == 0.5
        return
    if capture.endswith(".json"):
        assert json.loads(r.content) == _with_conversation_object(raw)
    else:
        got, want = r.content.split(b"\n\n"), raw.split(b"\n\n")
        assert len(got) == len(want)
        rewritten = 0
        for block, original in zip(got, want):
            if block != original:
                head, _, data = block.partition(b"\ndata: ")
                assert head.startswith(b"event: response.") and b"output_text" not in head
                assert json.loads(data) == _with_conversation_object(
                    original.partition(b"\ndata: ")[2]
                )
                rewritten += 1
        assert rewritten == 3  # created, in_progress, completed
    # lightspeed flavour: the backend chooses the model; a field it rejects is left out
    assert sent.json["model"] == "" and "top_p" not in sent.json
    assert sent.json["input"] == "hi"
    assert sent.header("x-lcs-merge-server-tools") == "true"


async def test_lightspeed_passthrough_collects_for_a_client_that_does_not_stream() -> None:
    # Lightspeed reports failures precisely only in streams: the proxy asks for
    # one and answers with the Response object the stream ends with
    terminal = capture_events("lcs_stream_text.sse")[-1]["response"]
    async with devbackend.run() as backend:
        fault = {"X-Dev-Fault": "replay:lcs_stream_text.sse"}
        cfg = make_config(backend.url, backend={"headers": fault})
        with anyio.fail_after(15):
            async with running_proxy(cfg) as proxy:
                client = openai.AsyncOpenAI(base_url=proxy.url + "/v1", api_key="x", max_retries=0)
                got = await client.responses.with_raw_response.create(model="gpt-5", input="hi")
                await client.close()
                # only a boolean true asks for a stream; anything else gets JSON
                async with httpx.AsyncClient(timeout=10) as c:
                    odd = [
                        await c.post(
                            proxy.url + "/v1/responses",
                            json={"model": "m", "input": "hi", "stream": value},
                        )
                        for value in ("true", 1, None)
                    ]
    assert [r.headers["content-type"] for r in odd] == ["application/json"] * 3
    assert backend.requests[-1].json["stream"] is True
    assert got.headers["content-type"] == "application/json"
    assert json.loads(got.content) == {**terminal, "conversation": {"id": terminal["conversation"]}}
    assert got.parse().output_text == "".join(
        p["text"] for item in terminal["output"] if item["type"] == "message"
        for p in item["content"] if p["type"] == "output_text"
    )  # fmt: skip


@pytest.mark.parametrize("flavor", ["lightspeed", "openai"])
@pytest.mark.parametrize("stream", [False, True])
async def test_passthrough_context_overflow_is_a_400_goose_compacts_on(
    flavor: str, stream: bool
) -> None:
    # Goose sends gpt-5 and o-series models to /v1/responses; it compacts on an
    # HTTP 400 context_length_exceeded, not on a failure inside a stream
    async with devbackend.run(mode=flavor) as backend:
        headers = {"X-Dev-Fault": "ctx_too_long"}
        cfg = make_config(backend.url, backend={"headers": headers, "flavor": flavor})
        with anyio.fail_after(15):
            async with running_proxy(cfg) as proxy:
                client = openai.AsyncOpenAI(base_url=proxy.url + "/v1", api_key="x", max_retries=0)
                with pytest.raises(openai.BadRequestError) as info:
                    if stream:
                        events = await client.responses.create(model="m", input="hi", stream=True)
                        async for _ in events:
                            pass
                    else:
                        await client.responses.create(model="m", input="hi")
                await client.close()
    assert info.value.status_code == 400
    assert isinstance(info.value.body, dict)
    assert info.value.body["code"] == "context_length_exceeded"


async def test_responses_passthrough_streams_live_with_sdk() -> None:
    async with devbackend.run() as backend:
        with anyio.fail_after(15):
            async with running_proxy(make_config(backend.url, backend={"flavor": "openai"})) as p:
                client = openai.AsyncOpenAI(base_url=p.url + "/v1", api_key="x", max_retries=0)
                stream = await client.responses.create(model="gpt-5", input="hello", stream=True)
                types = [ev.type async for ev in stream]
                final = await client.responses.create(model="gpt-5", input="hello")
                await client.close()
    assert types[0] == "response.created" and types[-1] == "response.completed"
    assert final.output_text.endswith("You said: hello")
    assert backend.requests[-1].json["model"] == "gpt-5"  # openai flavour forwards it


@pytest.mark.parametrize(
    ("fault", "status", "code", "message"),
    [
        ("status:403", 403, "permission_denied", "Insufficient entitlements"),
        ("status:429", 429, "rate_limit_exceeded", None),
        ("status:413", 400, "context_length_exceeded", None),
    ],
)
async def test_passthrough_error_status_in_openai_format(
    fault: str, status: int, code: str, message: Optional[str]
) -> None:
    """Lightspeed's FastAPI error bodies reach a /v1/responses client in the OpenAI
    envelope, mapped as for chat (what the SDK and Goose read)."""
    async with devbackend.run() as backend:
        cfg = make_config(backend.url, backend={"headers": {"X-Dev-Fault": fault}})
        with anyio.fail_after(15):
            async with running_proxy(cfg) as proxy:
                client = openai.AsyncOpenAI(base_url=proxy.url + "/v1", api_key="x", max_retries=0)
                with pytest.raises(openai.APIStatusError) as info:
                    await client.responses.create(model="gpt-5", input="hi")
                await client.close()
    assert info.value.status_code == status
    err = info.value.body
    assert isinstance(err, dict) and err["code"] == code
    if message:
        assert err["message"] == message
    else:
        assert err["message"]
    if status == 429:
        assert info.value.response.headers["retry-after"]


async def test_passthrough_openai_error_envelope_relayed_byte_for_byte(
    pki: SimpleNamespace,
) -> None:
    body = (
        b'{"error": {"message": "slow down", "type": "requests",'
        b' "code": "rate_limit_exceeded", "param": null}}'
    )

    async def handler(stream: anyio.abc.ByteStream, tcp: anyio.abc.SocketStream) -> None:
        await read_request_head(stream, srv)
        head = b"HTTP/1.1 429 Too Many Requests\r\ncontent-type: application/json\r\n"
        head += b"retry-after: 3\r\ncontent-length: %d\r\n\r\n" % len(body)
        await stream.send(head + body)

    with anyio.fail_after(10):
        async with fake_server(handler, tls=pki.server_context()) as srv:
            cfg = make_config(srv.url, pki.auth, backend={"proxy": ""})
            async with running_proxy(cfg) as proxy:
                r = await post(proxy.url, {"input": "hi"}, path="/v1/responses")
    assert r.status_code == 429
    assert r.content == body
    assert r.headers["retry-after"] == "3"


@pytest.mark.parametrize("flavor", ["lightspeed", "openai"])
@pytest.mark.parametrize("tail", ["end", "done-then-end", "done-then-completed"])
async def test_passthrough_stream_cut_short_raises_in_the_sdk(
    pki: SimpleNamespace, flavor: str, tail: str
) -> None:
    """The openai SDK raises the error event the proxy adds when a stream ends
    without its terminal event, also when the backend sent [DONE] before that
    end (the SDK stops reading at [DONE]); a terminal event after [DONE] comes
    before it."""
    frames = text_events(["one ", "two"])
    answer, completed = frames[:-1], frames[-1]
    done = [b"data: [DONE]\n\n"] if tail.startswith("done") else []
    body = answer + done + ([completed] if tail.endswith("completed") else [])

    async def handler(stream: anyio.abc.ByteStream, tcp: anyio.abc.SocketStream) -> None:
        await read_request_head(stream, srv)
        await stream.send(sse_answer([b"".join(body)]))

    with anyio.fail_after(10):
        async with fake_server(handler, tls=pki.server_context()) as srv:
            cfg = make_config(srv.url, pki.auth, backend={"proxy": "", "flavor": flavor})
            async with running_proxy(cfg) as proxy:
                client = openai.AsyncOpenAI(base_url=proxy.url + "/v1", api_key="x", max_retries=0)
                types: list[str] = []
                try:
                    stream = await client.responses.create(model="m", input="hi", stream=True)
                    async for ev in stream:
                        types.append(ev.type)
                    error = None
                except openai.APIError as e:
                    error = e
                await client.close()
    if tail == "done-then-completed":
        assert error is None and types[-1] == "response.completed"
        return
    assert types[-1] == "response.output_text.delta"  # the text came, then the error
    assert error is not None and not isinstance(error, openai.APIStatusError)
    assert error.message == "upstream stream ended early (no terminal event)"
    assert error.body == {
        "type": "api_error", "code": "upstream_protocol_error", "param": None,
        "message": "upstream stream ended early (no terminal event)",
    }  # fmt: skip


@pytest.mark.parametrize("flavor", ["lightspeed", "openai"])
async def test_passthrough_event_not_utf8_raises_in_the_sdk_after_the_text(
    pki: SimpleNamespace, flavor: str
) -> None:
    """An event that is not UTF-8 in a stream under way: the text before it
    reaches the openai SDK, then the proxy's error event, which the SDK raises.
    The bad event's bytes used to go out with the good ones of its read: the
    SDK failed on them (UnicodeDecodeError) and never read the error."""
    frames = text_events(["one ", "two"])
    bad = frames[3].replace(b'"two"', b'"\xff\xfe"')
    assert bad != frames[3]

    async def handler(stream: anyio.abc.ByteStream, tcp: anyio.abc.SocketStream) -> None:
        await read_request_head(stream, srv)
        await stream.send(sse_answer([b"".join(frames[:3]), bad + b"".join(frames[3:])]))

    with anyio.fail_after(10):
        async with fake_server(handler, tls=pki.server_context()) as srv:
            cfg = make_config(srv.url, pki.auth, backend={"proxy": "", "flavor": flavor})
            async with running_proxy(cfg) as proxy:
                client = openai.AsyncOpenAI(base_url=proxy.url + "/v1", api_key="x", max_retries=0)
                seen: list[tuple[str, int]] = []
                with pytest.raises(openai.APIError) as caught:
                    stream = await client.responses.create(model="m", input="hi", stream=True)
                    async for ev in stream:
                        seen.append((ev.type, ev.sequence_number))
                await client.close()
    assert seen == [
        ("response.created", 0), ("response.output_item.added", 1),
        ("response.output_text.delta", 2),
    ]  # fmt: skip
    assert not isinstance(caught.value, openai.APIStatusError)
    assert caught.value.message == "backend sent a stream event that is not UTF-8"


async def test_models_configurable_for_goose() -> None:
    cfg = make_config("http://127.0.0.1:9", models={"id": "granite-3", "context_length": 32768})
    async with running_proxy(cfg) as proxy:
        with anyio.fail_after(15):
            client = openai.AsyncOpenAI(base_url=proxy.url + "/v1", api_key="x", max_retries=0)
            models = [m async for m in client.models.list()]
            await client.close()
    assert [m.id for m in models] == ["granite-3"]
    assert (
        models[0].model_extra == {"context_length": 32768}
        or getattr(models[0], "context_length", None) == 32768
    )


async def test_the_model_is_retrieved_by_its_id() -> None:
    # client.models.retrieve(): GET /v1/models/{model}, the id percent-encoded
    model_id = "granite/3.3 8b"
    cfg = make_config("http://127.0.0.1:9", models={"id": model_id, "context_length": 32768})
    async with running_proxy(cfg) as proxy:
        with anyio.fail_after(15):
            client = openai.AsyncOpenAI(base_url=proxy.url + "/v1", api_key="x", max_retries=0)
            listed = [m async for m in client.models.list()]
            model = await client.models.retrieve(model_id)
            with pytest.raises(openai.NotFoundError) as info:
                await client.models.retrieve("gpt-4o")
            await client.close()
            async with httpx.AsyncClient(base_url=proxy.url, timeout=5) as c:
                posted = await c.post("/v1/models/gpt-4o", json={})
    assert model == listed[0] and model.id == model_id
    assert info.value.status_code == 404
    assert info.value.body == {
        "message": "the model 'gpt-4o' does not exist: goose-proxy serves "
        "'granite/3.3 8b' ([models] id)",
        "type": "invalid_request_error",
        "param": None,
        "code": "model_not_found",
    }
    assert posted.status_code == 405 and posted.headers["allow"] == "GET, HEAD"


async def test_goose_shaped_session_input_upstream() -> None:
    """System prompt, user turn, assistant text + tool calls split over consecutive
    assistant messages (content null, reasoning_content), tool results, an image,
    and a second user turn: the Responses input is exactly what TRANSLATION.md says."""
    image = "data:image/png;base64,iVBORw0KGgo="
    messages = [
        {"role": "system", "content": "You are Goose."},
        {"role": "user", "content": "list files and look at this"},
        {"role": "assistant", "content": "Let me check.", "reasoning_content": "thinking"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function",
             "function": {"name": "developer__shell", "arguments": '{"command": "ls"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "a.txt"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_2", "type": "function",
             "function": {"name": "developer__shell", "arguments": '{"command": "pwd"}'}}]},
        {"role": "tool", "tool_call_id": "call_2", "content": "/home"},
        {"role": "user", "content": [
            {"type": "text", "text": "and this image"},
            {"type": "image_url", "image_url": {"url": image}}]},
    ]  # fmt: skip
    async with devbackend.run() as backend:
        async with running_proxy(make_config(backend.url)) as proxy:
            with anyio.fail_after(15):
                async with httpx.AsyncClient(timeout=10) as c:
                    r = await c.post(
                        proxy.url + "/v1/chat/completions",
                        json={"model": "m", "messages": messages, "tools": TOOLS, "stream": True,
                              "stream_options": {"include_usage": True}},
                    )  # fmt: skip
    assert r.status_code == 200
    sent = backend.requests[-1].json
    assert sent["input"] == [
        {"type": "message", "role": "user",
         "content": [{"type": "input_text", "text": "list files and look at this"}]},
        {"type": "message", "role": "assistant", "content": "Let me check."},
        {"type": "function_call", "call_id": "call_1", "name": "developer__shell",
         "arguments": '{"command": "ls"}'},
        {"type": "function_call_output", "call_id": "call_1", "output": "a.txt"},
        {"type": "function_call", "call_id": "call_2", "name": "developer__shell",
         "arguments": '{"command": "pwd"}'},
        {"type": "function_call_output", "call_id": "call_2", "output": "/home"},
        {"type": "message", "role": "user", "content": [
            {"type": "input_text", "text": "and this image"},
            {"type": "input_image", "image_url": image, "detail": "auto"}]},
    ]  # fmt: skip
    assert "instructions" not in sent  # system messages dropped by default
    assert sent["tools"] == [
        {"type": "function", "name": "developer__shell", "description": "Run a shell command",
         "parameters": TOOLS[0]["function"]["parameters"], "strict": False}
    ]  # fmt: skip
    assert sent["stream"] is True and sent["store"] is False
    assert set(sent) <= {"input", "model", "stream", "store", "tools", "generate_topic_summary"}


# --- collecting a stream into one answer ---------------------------------------------


def _named_as(frame: bytes, name: str) -> bytes:
    """``frame`` with its ``event:`` line changed to ``name``."""
    return b"event: " + name.encode() + frame[frame.index(b"\n") :]


def _unnamed(frame: bytes) -> bytes:
    return frame[frame.index(b"\n") + 1 :]


def _whole_completed(text: str) -> bytes:
    """A ``response.completed`` event that carries the whole answer."""
    resp = {
        "id": "resp_1", "object": "response", "created_at": 1, "model": "m",
        "status": "completed", "error": None, "incomplete_details": None,
        "usage": {"input_tokens": 1, "output_tokens": 2, "total_tokens": 3},
        "output": [{"id": "msg_1", "type": "message", "role": "assistant",
                    "status": "completed",
                    "content": [{"type": "output_text", "text": text, "annotations": []}]}],
    }  # fmt: skip
    return sse_event({"type": "response.completed", "response": resp})


BAD_DELTA = b"event: response.output_text.delta\ndata: {not json\n\n"
NOT_JSON = (502, "backend sent a stream event that is not JSON")
WORDS = ["one ", "two ", "three"]
BIG = ["x" * 8192] * 40  # 320 KiB of deltas: more than the proxy holds unparsed
RATE_LIMITED = {"type": "error", "code": "rate_limit_exceeded", "message": "slow down"}


def _cases() -> dict[str, tuple[list[bytes], tuple[int, str]]]:
    """Each case: the backend's events, and the expected status and answer text (200)
    or error message."""
    frames = text_events(WORDS)  # its response.completed has an empty output
    whole = _whole_completed("the answer")
    return {
        "rebuilt from the deltas": (frames, (200, "one two three")),
        "unnamed events": ([_unnamed(f) for f in frames], (200, "one two three")),
        "a non-terminal event named as terminal": (
            [*frames[:3], _named_as(frames[3], "response.completed"), *frames[4:]],
            (200, "one two three"),
        ),
        "a terminal event named as a delta": (
            [*frames[:3], _named_as(_whole_completed("FIRST"), "response.output_text.delta"),
             _whole_completed("SECOND")],
            (200, "FIRST"),
        ),
        "an error event named as in_progress": (
            [*frames[:2], _named_as(sse_event(RATE_LIMITED), "response.in_progress"), whole],
            (429, "slow down"),
        ),
        "more deltas than held": (text_events(BIG), (200, "".join(BIG))),
        "bad delta, whole terminal event": ([*frames[:3], BAD_DELTA, whole], (200, "the answer")),
        "bad delta, rebuilt": ([*frames[:3], BAD_DELTA, *frames[3:]], NOT_JSON),
        "unnamed bad delta, whole terminal event": (
            [*frames[:3], _unnamed(BAD_DELTA), whole], NOT_JSON
        ),
        "more than held, then a bad delta": ([*text_events(BIG)[:-1], BAD_DELTA, whole], NOT_JSON),
        # a block without data is no event (SSE): 2,000 of them change nothing
        "a flood of named blocks without data": (
            [*frames[:2], *[b"event: response.output_text.delta\n\n"] * 2000, *frames[2:]],
            (200, "one two three"),
        ),
    }  # fmt: skip


CASES = _cases()


@pytest.mark.parametrize("case", list(CASES))
async def test_collected_answer(pki: SimpleNamespace, case: str) -> None:
    """A non-streaming client of a streaming backend: the events before the terminal
    one are parsed only when its ``response`` lacks the answer, and then in order;
    what is held unparsed is bounded, and the answer is the one parsing every event
    in order gives (but for a bad event before a terminal event that has it all)."""
    frames, (status, want) = CASES[case]

    async def handler(stream: anyio.abc.ByteStream, tcp: anyio.abc.SocketStream) -> None:
        await read_request_head(stream, srv)
        await stream.send(sse_answer(frames))

    with anyio.fail_after(10):
        async with fake_server(handler, tls=pki.server_context()) as srv:
            cfg = make_config(srv.url, pki.auth, backend={"proxy": ""})
            async with running_proxy(cfg) as proxy:
                r = await post(proxy.url, HELLO)
    assert r.status_code == status, r.text
    if status == 200:
        assert r.json()["choices"][0]["message"]["content"] == want
        assert r.json()["choices"][0]["finish_reason"] == "stop"
    else:
        assert r.json()["error"]["message"] == want


@pytest.mark.parametrize("stream", [True, False], ids=["stream", "json"])
async def test_good_events_in_the_read_of_a_bad_one_go_first(
    pki: SimpleNamespace, stream: bool
) -> None:
    # the whole answer comes in one TLS record, so in one read: the text before
    # the bad event was thrown away with the read (the stream answered a bare
    # 502), where events that came in reads of their own were streamed first
    frames = text_events(WORDS)[:-1]  # all but response.completed
    with anyio.fail_after(10):
        async with proxy_answering(pki, sse_answer([*frames, BAD_DELTA]), "openai") as proxy:
            r = await chat(proxy, stream=stream)
    if not stream:  # an answer is whole or an error
        assert (r.status_code, r.json()["error"]["message"]) == NOT_JSON
        return
    assert r.status_code == 200, r.text
    chunks = sse_chunks(r.text)
    text = "".join(
        c["choices"][0]["delta"].get("content") or ""
        for c in chunks
        if c != "[DONE]" and c.get("choices")
    )
    assert text == "".join(WORDS)
    assert chunks[-2]["error"]["message"] == NOT_JSON[1] and chunks[-1] == "[DONE]"


def _turn_with_lost_text(
    rag: bool, shared: bool, announced: bool = True, odd_names: bool = False
) -> bytes:
    """Llama Stack's stream of a turn whose text comes before a call: it
    streams the text, then leaves it out of its final output (no
    output_item.done for it either). With ``rag``, the call is its own
    knowledge search and a second message answers after it. With
    ``shared``, the call has the message's output_index, as Llama Stack
    numbers them (the message is not in its output list); else the next.
    Without ``announced``, the first message has no ``output_item.added``
    either: its deltas alone show it. With ``odd_names``, the events before
    the terminal one are named with a trailing space (SSE keeps it), so only
    their data's ``type`` says what they are."""
    at = 0 if shared else 1
    base = {"id": "resp_1", "object": "response", "created_at": 1, "model": "m",
            "error": None, "incomplete_details": None, "usage": None}  # fmt: skip
    message = {"type": "message", "role": "assistant", "status": "in_progress", "content": []}
    call: dict[str, Any] = (
        {"type": "file_search_call", "id": "fs_1", "status": "completed", "queries": ["dnf"]}
        if rag
        else {"type": "function_call", "id": "fc_1", "call_id": "call_1",
              "name": "developer__shell", "arguments": '{"command": "ls"}', "status": "completed"}
    )  # fmt: skip
    first = "Let me search the docs." if rag else "I'll list the files."
    events: list[dict[str, Any]] = [
        {"type": "response.created", "response": {**base, "status": "in_progress", "output": []}},
        {"type": "response.output_item.added", "output_index": 0, "item": {**message, "id": "m1"}},
        {"type": "response.output_text.delta", "item_id": "m1", "output_index": 0,
         "content_index": 0, "delta": first},
        {"type": "response.output_item.added", "output_index": at, "item": call},
        {"type": "response.output_item.done", "output_index": at, "item": call},
    ]  # fmt: skip
    if not announced:
        del events[1]
    output = [call]
    if rag:
        answer = {
            **message,
            "id": "m2",
            "status": "completed",
            "content": [{"type": "output_text", "text": "Use dnf.", "annotations": []}],
        }
        events += [
            {"type": "response.output_item.added", "output_index": at + 1,
             "item": {**message, "id": "m2"}},
            {"type": "response.output_text.delta", "item_id": "m2", "output_index": at + 1,
             "content_index": 0, "delta": "Use dnf."},
            {"type": "response.output_item.done", "output_index": at + 1, "item": answer},
        ]  # fmt: skip
        output.append(answer)
    done = {**base, "status": "completed", "output": output}
    frames = [sse_event(e) for e in events]
    if odd_names:
        frames = [_named_as(f, e["type"] + " ") for f, e in zip(frames, events)]
    frames.append(sse_event({"type": "response.completed", "response": done}))
    return sse_answer(frames)


@pytest.mark.parametrize(
    ("announced", "odd_names"),
    [(True, False), (False, False), (True, True)],
    ids=["", "never-announced", "names-with-a-space"],
)
@pytest.mark.parametrize("shared", [True, False], ids=["llama-stack-indices", "distinct-indices"])
@pytest.mark.parametrize("rag", [False, True], ids=["tool-call", "knowledge-search"])
async def test_text_the_backend_leaves_out_of_its_final_output(
    pki: SimpleNamespace, rag: bool, shared: bool, announced: bool, odd_names: bool
) -> None:
    # the chat stream showed the text before the call; the JSON answer and
    # the passthrough's collected one, read from the same bytes, have it too
    # (they had only what the terminal event's output held; and a message
    # never announced, or announced under a name that is not its type, was
    # not known to be missing from it)
    want = "Let me search the docs.Use dnf." if rag else "I'll list the files."
    answer_bytes = _turn_with_lost_text(rag, shared, announced, odd_names)
    with anyio.fail_after(10):
        async with proxy_answering(pki, answer_bytes, "lightspeed") as proxy:
            streamed = sse_chunks((await chat(proxy, stream=True)).text)
            answer = (await chat(proxy, stream=False)).json()
            r = await post(proxy.url, {"model": "m", "input": "hi"}, path="/v1/responses")
    chunks = [c for c in streamed if c != "[DONE]"]
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks) == want
    message = answer["choices"][0]["message"]
    assert message["content"] == want
    calls = [] if rag else [{"id": "call_1", "type": "function",
                             "function": {"name": "developer__shell",
                                          "arguments": '{"command": "ls"}'}}]  # fmt: skip
    assert message.get("tool_calls", []) == calls
    output = r.json()["output"]  # (under lightspeed the search item is left out)
    texts = [p["text"] for item in output if item["type"] == "message" for p in item["content"]]
    assert "".join(texts) == want
    assert output[0]["type"] == "message"  # in stream order: before the call


@pytest.mark.parametrize(
    ("text", "may"),
    [
        ('{"type": "response.completed", "response": {}}', True),
        ('{"response":{},"type":"response.incomplete"}', True),
        ('{"type": "response.failed"}', True),
        ('{"type": "error", "code": "x", "message": "m"}', True),
        ('{"code": "x", "type" :\n "error"}', True),
        ('{"type": "response.in_progress", "response": {"error": null}}', False),
        ('{"type": "response.output_text.delta", "delta": "error"}', False),
        ('{"type": "response.output_text.delta", "delta": "\\"type\\": \\"error\\""}', False),
        ('{"type": "response.output_text.delta", "delta": "\\"response.completed\\""}', False),
    ],
)  # fmt: skip
def test_which_events_may_be_terminal(text: str, may: bool) -> None:
    """The test that keeps an event from being held; ``json.loads`` checks the samples."""
    json.loads(text)
    assert _may_be_terminal(text) is may


def _strict_json(text: str) -> Any:
    def refuse(name: str) -> Any:
        raise ValueError(f"{name} in JSON sent to a client")

    return json.loads(text, parse_constant=refuse)


def _nonfinite_answer(json_body: bool) -> bytes:
    """An answer with NaN, Infinity and a number past the float range where the
    proxy reads or copies numbers: time stamps, token counts, logprobs."""
    logprobs = [{"token": "Hi", "logprob": float("nan"), "bytes": [72, 105], "top_logprobs": []}]
    message = {"id": "msg_1", "type": "message", "role": "assistant", "status": "completed",
               "content": [{"type": "output_text", "text": "Hi", "annotations": [],
                            "logprobs": logprobs}]}  # fmt: skip
    final = {"id": "resp_1", "object": "response", "created_at": float("-inf"), "model": "m",
             "status": "completed", "output": [message],
             "usage": {"input_tokens": 3, "output_tokens": float("nan"),
                       "total_tokens": "PAST_THE_FLOAT_RANGE"}}  # fmt: skip
    if json_body:
        body = json.dumps(final).replace('"PAST_THE_FLOAT_RANGE"', "1e400").encode()
        return (
            b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s"
            % (len(body), body)
        )
    start = {**final, "created_at": float("inf"), "status": "in_progress", "output": []}
    delta = {"type": "response.output_text.delta", "item_id": "msg_1", "output_index": 0,
             "content_index": 0, "delta": "Hi", "logprobs": logprobs}  # fmt: skip
    frames = [sse_event({"type": "response.created", "response": start}), sse_event(delta),
              sse_event({"type": "response.completed", "response": final})]  # fmt: skip
    return sse_answer([f.replace(b'"PAST_THE_FLOAT_RANGE"', b"1e400") for f in frames])


@pytest.mark.parametrize(
    ("flavor", "json_body", "body"),
    [
        ("lightspeed", False, HELLO),
        ("lightspeed", False, HELLO_STREAM),
        ("openai", True, HELLO),
        ("openai", False, HELLO_STREAM),
    ],
    ids=["collected", "stream", "openai-json", "openai-stream"],
)
async def test_non_finite_numbers_from_the_backend_do_not_fail_the_answer(
    pki: SimpleNamespace, flavor: str, json_body: bool, body: dict[str, Any]
) -> None:
    """``json.loads`` reads NaN and Infinity, which no client JSON may hold: they
    are read as null, and the answer goes out whole (it used to be a 500)."""
    with anyio.fail_after(10):
        async with proxy_answering(pki, _nonfinite_answer(json_body), flavor) as proxy:
            r = await post(proxy.url, {**body, "logprobs": True})
    assert r.status_code == 200, r.text
    if body.get("stream"):
        chunks = [_strict_json(line[6:]) for line in r.text.split("\n")
                  if line.startswith("data: {")]  # fmt: skip
        text = "".join(
            c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"]
        )
        assert all(isinstance(c["created"], int) for c in chunks)
        assert r.text.rstrip().endswith("data: [DONE]")
    else:
        completion = _strict_json(r.text)
        text = completion["choices"][0]["message"]["content"]
        assert isinstance(completion["created"], int)
        assert completion["usage"]["prompt_tokens"] == 3
    assert text == "Hi"


class Person(pydantic.BaseModel):
    name: str


def _refusal_answer(refusal: str) -> bytes:
    resp = {"id": "resp_r", "object": "response", "created_at": 1, "model": "m"}
    item = {"type": "message", "id": "msg_r", "role": "assistant", "status": "completed",
            "content": [{"type": "refusal", "refusal": refusal}]}  # fmt: skip
    events = [
        {"type": "response.created", "response": {**resp, "status": "in_progress", "output": []}},
        {"type": "response.output_item.added", "output_index": 0, "item": {**item, "content": []}},
        {"type": "response.refusal.delta", "item_id": "msg_r", "output_index": 0,
         "content_index": 0, "delta": refusal},
        {"type": "response.output_item.done", "output_index": 0, "item": item},
        {"type": "response.completed", "response": {**resp, "status": "completed",
                                                    "output": [item]}},
    ]  # fmt: skip
    return sse_answer([sse_event(e) for e in events])


async def test_a_refusal_to_structured_output_is_no_content(pki: SimpleNamespace) -> None:
    """A client that asked for structured output reads ``content`` as its JSON:
    a refusal goes in ``refusal`` alone, as OpenAI answers (in ``content`` too
    the SDK's stream helper reported it twice, and ``content.done`` with nothing
    parsed). Without a response format (Goose) it is in ``content`` as well."""
    no = "I can't help with that."
    messages: Any = [USER]
    with anyio.fail_after(20):
        async with proxy_answering(pki, _refusal_answer(no), "openai") as proxy:
            client = openai.AsyncOpenAI(base_url=proxy.url + "/v1", api_key="x", max_retries=0)
            try:
                plain = await client.chat.completions.create(model="m", messages=messages)
                shaped = await client.chat.completions.create(
                    model="m", messages=messages, response_format={"type": "json_object"}
                )
                parsed = await client.chat.completions.parse(
                    model="m", messages=messages, response_format=Person
                )
                seen = []
                async with client.chat.completions.stream(
                    model="m", messages=messages, response_format=Person
                ) as s:
                    async for ev in s:
                        if ev.type in ("content.delta", "refusal.delta", "content.done"):
                            seen.append(ev.type)
                    final = await s.get_final_completion()
            finally:
                await client.close()
    assert (plain.choices[0].message.content, plain.choices[0].message.refusal) == (no, no)
    for message in (shaped.choices[0].message, parsed.choices[0].message):
        assert (message.content, message.refusal) == (None, no)
    assert parsed.choices[0].message.parsed is None
    assert seen == ["refusal.delta"]
    assert (final.choices[0].message.content, final.choices[0].message.refusal) == (None, no)


MODERATION = {
    "input": {"type": "moderation_results", "model": "omni-moderation-latest", "results": [
        {"type": "moderation_result", "model": "omni-moderation-latest", "flagged": False,
         "categories": {"violence": False}, "category_scores": {"violence": 0.01},
         "category_applied_input_types": {"violence": ["text"]}}]},
    "output": {"type": "moderation_results", "model": "omni-moderation-latest", "results": []},
}  # fmt: skip


async def test_how_the_answer_was_served_reaches_the_client(pki: SimpleNamespace) -> None:
    """The tier that served the answer (``auto`` may become ``flex``), the
    moderation results and the tokens written to the prompt cache: in the JSON
    answer, and on the stream's finish and usage chunks."""
    usage = {"input_tokens": 2000, "output_tokens": 5, "total_tokens": 2005,
             "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 1920},
             "output_tokens_details": {"reasoning_tokens": 0}}  # fmt: skip
    served = {"service_tier": "flex", "moderation": MODERATION, "usage": usage}
    frames = text_events(["Hi"])
    frames[-1] = sse_event({"type": "response.completed", "response": {
        "id": "resp_1", "object": "response", "created_at": 1, "model": "m",
        "status": "completed", "output": [], **served}})  # fmt: skip
    with anyio.fail_after(20):
        async with proxy_answering(pki, sse_answer(frames), "openai") as proxy:
            client = openai.AsyncOpenAI(base_url=proxy.url + "/v1", api_key="x", max_retries=0)
            try:
                whole = await client.chat.completions.create(
                    model="m", messages=[USER], service_tier="auto"
                )
                chunks = [c async for c in await client.chat.completions.create(
                    model="m", messages=[USER], service_tier="auto", stream=True,
                    stream_options={"include_usage": True})]  # fmt: skip
            finally:
                await client.close()
    assert whole.choices[0].message.content == "Hi"
    assert whole.service_tier == "flex"
    assert whole.moderation is not None and whole.moderation.model_dump() == MODERATION
    assert whole.usage is not None and whole.usage.prompt_tokens_details is not None
    assert whole.usage.prompt_tokens_details.cache_write_tokens == 1920
    finish, last = chunks[-2], chunks[-1]
    assert finish.choices[0].finish_reason == "stop" and last.choices == []
    for chunk in (finish, last):
        assert chunk.service_tier == "flex"
        assert chunk.moderation is not None and chunk.moderation.model_dump() == MODERATION
    assert last.usage is not None and last.usage.prompt_tokens_details is not None
    assert last.usage.prompt_tokens_details.cache_write_tokens == 1920
