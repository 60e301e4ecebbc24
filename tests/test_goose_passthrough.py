"""Lightspeed answers on ``POST /v1/responses`` that Goose's strict parser refuses,
through the proxy: read by Goose's rules (``tests/goose_rules.py``, mirroring its
parser) and by the openai SDK, streamed, collected and as JSON.

A fake backend over real mutual TLS sends the answers of
``tests/lightspeed_answers.py`` (the devbackend's ``reasoning`` script too).
Under the ``openai`` flavour the same answers are relayed as they came.
"""

from __future__ import annotations

import json
from types import SimpleNamespace
from typing import Any, Callable

import anyio
import anyio.abc
import httpx
import openai
import pytest
from openai._models import construct_type
from openai.lib.streaming.responses._responses import ResponseStreamState
from openai.types.responses import ResponseStreamEvent

import devbackend
from tests import lightspeed_answers as ls
from tests.goose_rules import GooseRejects, goose_reads_response, goose_reads_stream
from tests.reliability.support import (
    SSE_HEAD,
    answering,
    chunk,
    http_answer,
)
from tests.support import make_config, running_proxy

pytestmark = pytest.mark.anyio

ANSWERS: dict[str, tuple[Callable[[], list[dict[str, Any]]], str]] = {
    "rag-and-mcp": (ls.rag, ls.ANSWER),
    "search-arguments": (ls.searched, ls.ANSWER),
    "reasoning": (ls.reasoning, ls.ANSWER),
    "shield-string": (ls.shield, ls.SHIELD),
    "shield-nulls": (lambda: ls.shield(nulls=True), ls.SHIELD),
    "shield-parts": (lambda: ls.shield([{"type": "output_text", "text": ls.SHIELD}]), ls.SHIELD),
}
BODY = {"model": "gpt-5", "input": "how do I install a package?"}


def stream_events(body: bytes) -> list[dict[str, Any]]:
    """The JSON events of a Responses stream (``[DONE]`` left out)."""
    lines = body.decode().splitlines()
    return [json.loads(x[6:]) for x in lines if x.startswith("data: {")]


def sse_answer(body: bytes) -> bytes:
    return SSE_HEAD + chunk(body) + b"0\r\n\r\n"


def json_answer(resp: dict[str, Any]) -> bytes:
    return http_answer("200 OK", [("content-type", "application/json")], json.dumps(resp).encode())


async def through_proxy(
    pki: SimpleNamespace, answer: bytes, flavor: str, ask: Callable[[str], Any]
) -> Any:
    """``ask(proxy_url)`` of a proxy whose backend answers every request with ``answer``."""
    with anyio.fail_after(15):
        async with answering(answer, pki.server_context()) as srv:
            cfg = make_config(srv.url, pki.auth, backend={"proxy": "", "flavor": flavor})
            async with running_proxy(cfg) as proxy:
                return await ask(proxy.url)


async def post(url: str, stream: bool) -> httpx.Response:
    async with httpx.AsyncClient(timeout=10) as c:
        return await c.post(url + "/v1/responses", json={**BODY, "stream": stream})


def helper_takes_index_gaps() -> bool:
    """Whether this openai SDK's ``responses.stream()`` helper finds an output item
    by its ``output_index`` when the items before it were left out (openai 3.57,
    locked for Python 3.10+, does; 2.48, locked for 3.9, takes the index as a
    position in the items it saw and raises IndexError)."""
    resp = {
        "id": "r",
        "object": "response",
        "created_at": 1,
        "model": "m",
        "status": "in_progress",
        "output": [],
    }
    item = {
        "type": "message",
        "id": "m",
        "role": "assistant",
        "status": "in_progress",
        "content": [],
    }
    part = {"type": "output_text", "text": "", "annotations": []}
    events = [
        {"type": "response.created", "sequence_number": 0, "response": resp},
        {"type": "response.output_item.added", "sequence_number": 1, "output_index": 1,
         "item": item},
        {"type": "response.content_part.added", "sequence_number": 2, "output_index": 1,
         "item_id": "m", "content_index": 0, "part": part},
    ]  # fmt: skip
    state: Any = ResponseStreamState(input_tools=openai.NOT_GIVEN, text_format=openai.NOT_GIVEN)
    try:
        for event in events:
            state.handle_event(construct_type(type_=ResponseStreamEvent, value=event))
    except IndexError:
        return False
    return True


async def sdk_stream(url: str, helper: bool = True) -> tuple[list[str], Any]:
    """The event types ``responses.create(stream=True)`` yields, and (``helper``)
    the final response of the ``responses.stream()`` helper, which rebuilds the
    answer."""
    client = openai.AsyncOpenAI(base_url=url + "/v1", api_key="x", max_retries=0)
    final = None
    try:
        events = await client.responses.create(**BODY, stream=True)
        types = [ev.type async for ev in events]
        if helper:
            async with client.responses.stream(**BODY) as stream:
                final = await stream.get_final_response()
    finally:
        await client.close()
    return types, final


async def sdk_json(url: str) -> Any:
    client = openai.AsyncOpenAI(base_url=url + "/v1", api_key="x", max_retries=0)
    try:
        return await client.responses.create(**BODY)
    finally:
        await client.close()


@pytest.mark.parametrize("name", list(ANSWERS))
async def test_a_streamed_lightspeed_answer_is_read_by_goose_and_the_sdk(
    pki: SimpleNamespace, name: str
) -> None:
    make, text = ANSWERS[name]
    sent = ls.lightspeed_sse(make())
    # the items left out keep their output indexes: the message comes at index 4
    # after the RAG and MCP work, which an older SDK's helper cannot find (see
    # docs/api-translation.md); Goose and the raw stream do not mind
    helper = name not in ("rag-and-mcp", "search-arguments") or helper_takes_index_gaps()

    async def ask(url: str) -> Any:
        return await post(url, True), await sdk_stream(url, helper)

    r, (types, final) = await through_proxy(pki, sse_answer(sent), "lightspeed", ask)
    assert r.status_code == 200
    assert goose_reads_stream(r.content).text == text
    assert types[0] == "response.created" and types[-1] == "response.completed"
    if helper:
        assert final.output_text == text
        assert [item.type for item in final.output] == ["message"]
    # the openai flavour relays the answer as it came, which Goose refuses
    r = await through_proxy(pki, sse_answer(sent), "openai", lambda url: post(url, True))
    assert r.content == sent
    with pytest.raises(GooseRejects):
        goose_reads_stream(r.content)


@pytest.mark.parametrize(
    "flavor",
    [
        "lightspeed",
        pytest.param(  # relayed as it came: the SDK warns of Lightspeed's conversation string
            "openai",
            marks=pytest.mark.filterwarnings("ignore:Pydantic serializer warnings:UserWarning"),
        ),
    ],
)
async def test_blocks_without_data_do_not_break_the_sdks_stream(
    pki: SimpleNamespace, flavor: str
) -> None:
    # "retry:", "id:" or a bare "event:" dispatch no event (SSE), but the openai
    # SDK reads each as an event with empty data and fails on its JSON: the
    # answer was lost (relayed byte for byte). They are left out, comments stay.
    # An "id:" on an event with data: the SDK keeps the id, and then reads the
    # blank line of every later comment as such an event (found by a soak run).
    blocks = [b"retry: 3000\n\n", b"id: 1\n\n", b"event: keepalive\n\n", b": ping\n\n"]
    events = ls.lightspeed_sse(ls.shield([{"type": "output_text", "text": ls.SHIELD}]))
    frames = events.split(b"\n\n")
    frames[1] = b"id: 7\n" + frames[1]
    mixed = b"".join(blocks) + b"\n\n".join(frames[:3]) + b"\n\n" + b"".join(blocks)
    sent = mixed + b"\n\n".join(frames[3:])

    async def ask(url: str) -> Any:
        return await post(url, True), await sdk_stream(url)

    r, (types, final) = await through_proxy(pki, sse_answer(sent), flavor, ask)
    assert r.status_code == 200
    assert b"retry:" not in r.content and b"\nid:" not in r.content
    assert b"event: keepalive" not in r.content and r.content.count(b": ping\n\n") == 2
    assert types[0] == "response.created" and types[-1] == "response.completed"
    assert final.output_text == ls.SHIELD


@pytest.mark.parametrize("backend_sends", ["stream", "json"])
@pytest.mark.parametrize("name", list(ANSWERS))
async def test_a_lightspeed_answer_to_a_client_that_does_not_stream(
    pki: SimpleNamespace, name: str, backend_sends: str
) -> None:
    # Lightspeed is always asked for a stream: the proxy collects it into the
    # Response it ends with; a backend may answer with that Response as JSON
    make, text = ANSWERS[name]
    events = make()
    answer = (
        sse_answer(ls.lightspeed_sse(events))
        if backend_sends == "stream"
        else json_answer(ls.final_response(events))
    )

    async def ask(url: str) -> Any:
        return await post(url, False), await sdk_json(url)

    r, resp = await through_proxy(pki, answer, "lightspeed", ask)
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    assert goose_reads_response(r.content).text == text
    assert resp.output_text == text
    assert [item.type for item in resp.output] == ["message"]
    assert resp.id == ls.RID and resp.usage.total_tokens == 14


@pytest.mark.parametrize(
    "flavor",
    [
        "lightspeed",
        # relayed as it came: the SDK warns that Lightspeed's conversation is a string
        pytest.param(
            "openai",
            marks=pytest.mark.filterwarnings("ignore:Pydantic serializer warnings:UserWarning"),
        ),
    ],
)
@pytest.mark.parametrize("name", ["rag-and-mcp", "shield-parts"])
async def test_a_json_answer_to_a_client_that_streams_becomes_a_stream(
    pki: SimpleNamespace, name: str, flavor: str
) -> None:
    # a backend that answers a stream request with the whole Response as JSON:
    # relayed as it came, the openai SDK and Goose read it as an empty stream
    make, text = ANSWERS[name]
    final = ls.final_response(make())
    helper = flavor == "openai" or name != "rag-and-mcp" or helper_takes_index_gaps()

    async def ask(url: str) -> Any:
        return await post(url, True), await sdk_stream(url, helper)

    r, (types, got) = await through_proxy(pki, json_answer(final), flavor, ask)
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/event-stream")
    assert types[0] == "response.created" and types[-1] == "response.completed"
    assert "response.output_text.delta" in types
    if flavor == "lightspeed":  # adapted, as a streamed answer is
        assert goose_reads_stream(r.content).text == text
    if helper:
        assert got.output_text == text and got.id == ls.RID


QUEUED = b'{"id": "r", "object": "response", "status": "queued", "output": []}'
FAILED = json.dumps(
    {"id": "r", "object": "response", "status": "failed", "output": [],
     "error": {"code": "server_error", "message": "the model broke"}}
).encode()  # fmt: skip
CTX = json.dumps(
    {"id": "r", "object": "response", "status": "failed", "output": [],
     "error": {"code": "context_length_exceeded",
               "message": "This model's maximum context length is 8192 tokens."}}
).encode()  # fmt: skip
NOT_JSON = [b"<html>Service maintenance</html>", b"", b"[" * 100_000]


@pytest.mark.parametrize("flavor", ["lightspeed", "openai"])
@pytest.mark.parametrize(
    ("answer", "stream", "status", "says"),
    [
        *[(body, s, 502, "not JSON") for body in NOT_JSON for s in (False, True)],
        *[(body, s, 502, "not an object") for body in (b"[1, 2]", b'"x"') for s in (False, True)],
        *[(b'{"detail": "x"}', s, 502, "no \"output\" list") for s in (False, True)],
        (b'{"error": {"message": "quota used up", "code": "insufficient_quota"}}', False, 429,
         "quota used up"),
        (QUEUED, True, 502, "not finished"),
        (FAILED, True, 502, "the model broke"),
        (CTX, True, 400, "context length"),
    ],
)  # fmt: skip
async def test_a_2xx_answer_a_client_cannot_use_is_an_error(
    pki: SimpleNamespace, flavor: str, answer: bytes, stream: bool, status: int, says: str
) -> None:
    # relayed as a 200, the openai SDK read it as an empty stream, or as a str,
    # a list or nothing: the client gets an OpenAI error it can act on instead
    for ctype in ("application/json", "text/html"):
        raw = http_answer("200 OK", [("content-type", ctype)], answer)
        r = await through_proxy(pki, raw, flavor, lambda url: post(url, stream))
        assert r.status_code == status, (ctype, r.content[:200])
        assert r.headers["content-type"] == "application/json"
        assert says in r.json()["error"]["message"]
        if says in ("not JSON", "not an object", 'no "output" list'):
            # the same body again on a retry (a login page): the SDK is told not to
            assert r.headers["x-should-retry"] == "false"


@pytest.mark.parametrize("answer", [QUEUED, FAILED])
async def test_a_response_that_did_not_finish_goes_as_it_came_to_a_client_that_waits(
    pki: SimpleNamespace, answer: bytes
) -> None:
    # a background request is answered "queued", and a failed Response is one the
    # client can read: both reach a client that does not stream as they came
    raw = http_answer("200 OK", [("content-type", "application/json")], answer)
    r = await through_proxy(pki, raw, "openai", lambda url: post(url, False))
    assert r.status_code == 200 and r.content == answer


async def test_the_devbackends_reasoning_script_is_read_by_goose_and_the_sdk() -> None:
    # a separate reasoning item whose reasoning_text part Goose does not know
    async with devbackend.run() as backend:
        cfg = make_config(backend.url, backend={"headers": {"X-Dev-Fault": "reasoning"}})
        with anyio.fail_after(15):
            async with running_proxy(cfg) as proxy:
                r = await post(proxy.url, True)
                types, final = await sdk_stream(proxy.url)
    seen = goose_reads_stream(r.content)
    assert seen.text.endswith("You said: how do I install a package?")
    assert "response.reasoning_text.delta" in types  # Goose skips what it does not know
    assert "response.content_part.added" in types
    assert [item.type for item in final.output] == ["reasoning", "message"]
    assert final.output_text == seen.text


async def test_lightspeeds_conversation_string_reaches_the_sdk_as_its_object() -> None:
    # the SDK types Response.conversation as {"id": …} and warns at every stream
    # about Lightspeed's bare string (pytest turns the warning into a failure)
    async with devbackend.run() as backend:
        cfg = make_config(backend.url)
        with anyio.fail_after(15):
            async with (
                running_proxy(cfg) as proxy,
                openai.AsyncOpenAI(base_url=proxy.url + "/v1", api_key="-") as client,
            ):
                async with client.responses.stream(model="m", input="hi") as stream:
                    final = await stream.get_final_response()
                plain = await client.responses.create(model="m", input="hi")
                # the object the SDK holds, sent back: Lightspeed gets its string
                await client.responses.create(
                    model="m", input="again", conversation=plain.conversation.model_dump()
                )
    for resp in (final, plain):
        assert resp.conversation is not None and resp.conversation.id
    assert backend.requests[-1].json["conversation"] == plain.conversation.id


async def test_a_turns_calls_announced_at_one_index_reach_the_sdks_helper_apart(
    pki: SimpleNamespace,
) -> None:
    # Llama Stack announces a model turn's client calls at one output index: the
    # helper refused the second ("Duplicate response output index"; openai 2.x
    # added its arguments to the first call's). Each goes out at an index of its own.
    sent = ls.lightspeed_sse(ls.calls())

    async def ask(url: str) -> Any:
        return await post(url, True), await sdk_stream(url)

    r, (types, final) = await through_proxy(pki, sse_answer(sent), "lightspeed", ask)
    assert r.status_code == 200
    assert goose_reads_stream(r.content).calls == ls.CALLS
    assert types[0] == "response.created" and types[-1] == "response.completed"
    assert final.output_text == ls.ANSWER
    calls = [(item.name, item.arguments) for item in final.output if item.type == "function_call"]
    assert calls == ls.CALLS
    indexes = {}
    for ev in stream_events(r.content):
        if ev["type"] == "response.output_item.added":
            indexes[ev["item"]["id"]] = ev["output_index"]
        elif "item_id" in ev:
            assert ev["output_index"] == indexes[ev["item_id"]], ev
    assert sorted(indexes.values()) == [0, 1, 2]


@pytest.mark.parametrize(
    "ctype, retry, shown_type, shown_retry",
    [
        ("application/json;\tx=\x80\xff evil", "9" * 300, "application/json", None),
        ("application/json; charset=utf-8", " 5 ", "application/json; charset=utf-8", "5"),
    ],
)
async def test_a_2xx_answers_headers_go_on_only_as_a_client_may_read_them(
    pki: SimpleNamespace, ctype: str, retry: str, shown_type: str, shown_retry: Any
) -> None:
    # a JSON answer's Content-Type and Retry-After were relayed as they came; an
    # error's are checked (a printable line): now a 2xx's are too
    answer = http_answer(
        "200 OK",
        [("content-type", ctype), ("retry-after", retry)],
        json.dumps(ls.final_response(ls.rag())).encode(),
    )
    r = await through_proxy(pki, answer, "lightspeed", lambda url: post(url, False))
    assert r.status_code == 200
    assert r.headers["content-type"] == shown_type
    assert r.headers.get("retry-after") == shown_retry
    assert goose_reads_response(r.content).text == ls.ANSWER
