"""Lightspeed's request-body cap becomes ``context_length_exceeded`` (Goose compacts).

Lightspeed Stack 0.7.1 answers a request body over 65,536 characters with a
422. Goose retries a plain 400 but compacts its conversation on
``context_length_exceeded``, so the proxy refuses such a request itself, before
sending it, with that code, and maps the backend's own 422 for a too long body
the same way (for a backend whose cap is lower than the configured one). When
the newest user message alone is over the cap, compacting cannot help: that is
a plain 400 ``string_above_max_length``.
"""

from __future__ import annotations

import json
from types import SimpleNamespace
from typing import Any, Callable

import anyio
import openai
import pytest
from hypothesis import given
from hypothesis import strategies as st

import devbackend
from goose_proxy.api import translate_options
from goose_proxy.config import LIGHTSPEED_MAX_REQUEST_CHARS, parse_config
from goose_proxy.errors import ContextLengthExceeded, UpstreamHTTPError
from goose_proxy.http.handlers import _backend_chars, _most_chars
from goose_proxy.translate import chat_to_responses, encode_json, error_from_backend
from tests.goose_rules import goose_error_kind
from tests.reliability.support import post, proxied
from tests.support import FIXTURES, make_config, running_proxy

pytestmark = pytest.mark.anyio


def chat(text: str) -> dict[str, Any]:
    return {"model": "m", "messages": [{"role": "user", "content": text}]}


def history(chars: int, newest: str = "and now?") -> list[dict[str, Any]]:
    """A conversation of about ``chars`` characters in turns of 4,000, then a
    short newest message: what compacting shrinks."""
    turns: list[dict[str, Any]] = []
    while sum(len(t["content"]) for t in turns) < chars:
        turns.append({"role": "user", "content": "word " * 400})
        turns.append({"role": "assistant", "content": "reply " * 300})
    return [*turns, {"role": "user", "content": newest}]


async def refused(
    pki: SimpleNamespace, *bodies: tuple[dict[str, Any], str]
) -> list[dict[str, Any]]:
    """The error objects of the 400s the proxy gives each ``(body, path)`` of
    ``bodies`` itself: the backend never saw any of them."""
    with anyio.fail_after(10):
        async with proxied(pki) as h:
            answers = [await post(h.url, body, path) for body, path in bodies]
    assert [r.status_code for r in answers] == [400] * len(bodies), [r.text for r in answers]
    assert len(h.backend.requests) == 0
    return [r.json()["error"] for r in answers]


def test_the_cap_follows_the_flavour() -> None:
    assert parse_config({}).backend.request_char_limit == LIGHTSPEED_MAX_REQUEST_CHARS
    assert parse_config({"backend": {"flavor": "openai"}}).backend.request_char_limit == 0
    explicit = {"backend": {"flavor": "openai", "max_request_chars": 1000}}
    assert parse_config(explicit).backend.request_char_limit == 1000
    assert parse_config({"backend": {"max_request_chars": 0}}).backend.request_char_limit == 0


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/responses"])
async def test_too_long_body_refused_before_sending(pki: SimpleNamespace, path: str) -> None:
    turns = history(LIGHTSPEED_MAX_REQUEST_CHARS)  # just over the cap
    if path.endswith("completions"):
        body: dict[str, Any] = {"model": "m", "messages": turns}
    else:
        body = {"model": "m", "input": [{**t, "type": "message"} for t in turns]}
    with anyio.fail_after(10):
        async with proxied(pki) as h:
            r = await post(h.url, body, path)
            ok = await post(h.url, chat("short"))
    assert r.status_code == 400
    err = r.json()["error"]
    assert err["code"] == "context_length_exceeded"
    assert "too long" in err["message"]
    assert f"{LIGHTSPEED_MAX_REQUEST_CHARS:,}" in err["message"]
    # the backend never saw the long request; the connection still serves
    assert ok.status_code == 200
    assert len(h.backend.requests) == 1
    assert "short" in json.dumps(h.backend.requests[0].json)


async def test_sdk_sees_a_context_length_error(pki: SimpleNamespace) -> None:
    # what Goose's OpenAI client gets: a BadRequestError with the code it compacts on
    with anyio.fail_after(10):
        async with proxied(pki) as h:
            client = openai.AsyncOpenAI(base_url=h.url + "/v1", api_key="unused", max_retries=0)
            with pytest.raises(openai.BadRequestError) as exc:
                await client.chat.completions.create(
                    model="m",
                    messages=history(70_000),  # type: ignore[arg-type]
                    stream=True,
                )
            await client.close()
    assert exc.value.code == "context_length_exceeded"
    assert exc.value.status_code == 400


IMAGE = "data:image/png;base64," + "iVBORw0KGgo" * 8_000  # about 88,000 characters


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/responses"])
async def test_a_newest_message_over_the_cap_alone_is_not_a_context_overflow(
    pki: SimpleNamespace, path: str
) -> None:
    # compacting the history cannot shrink a large image or paste in the newest
    # message: context_length_exceeded would send Goose compacting in circles
    image = [{"type": "text", "text": "what is this?"},
             {"type": "image_url", "image_url": {"url": IMAGE}}]  # fmt: skip
    turns = [*history(8_000)[:-1], {"role": "user", "content": image}]
    if path.endswith("completions"):
        body: dict[str, Any] = {"model": "m", "messages": turns}
    else:
        body = {"model": "m", "input": "x" * (LIGHTSPEED_MAX_REQUEST_CHARS + 10)}
    (err,) = await refused(pki, (body, path))
    assert err["code"] == "string_above_max_length"
    assert goose_error_kind(400, {"error": err}) == "RequestFailed"
    assert "compacting the conversation cannot help" in err["message"]
    assert f"{LIGHTSPEED_MAX_REQUEST_CHARS:,}" in err["message"]


@pytest.mark.parametrize("images", [1, 2])
async def test_a_tools_image_after_its_result_is_compacted_not_refused(
    pki: SimpleNamespace, images: int
) -> None:
    # Goose sends each image of a tool result as a message of its own after
    # it, a user message with the image alone; its compaction drops them, so
    # this is a context overflow (compact), not "send less in one message"
    call = {"id": "call_1", "type": "function",
            "function": {"name": "screenshot", "arguments": "{}"}}  # fmt: skip
    turns = [
        *history(8_000)[:-1],
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_1",
         "content": "This tool result included an image that is uploaded in the next message."},
        *[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": IMAGE}}]}]
        * images,
    ]  # fmt: skip
    # and a passthrough message whose content is no list is judged, not a crash
    odd = {"model": "m", "input": [
        {"type": "function_call_output", "call_id": "c", "output": "x" * 70_000},
        {"type": "message", "role": "user", "content": 5}]}  # fmt: skip
    errors = await refused(
        pki, ({"model": "m", "messages": turns}, "/v1/chat/completions"), (odd, "/v1/responses")
    )
    assert [err["code"] for err in errors] == ["context_length_exceeded"] * 2


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/responses"])
async def test_tools_over_the_cap_are_named_not_the_message(
    pki: SimpleNamespace, path: str
) -> None:
    # many extensions with long descriptions, and the user typed "hi"
    tools = [
        {"type": "function", "function": {"name": f"t{i}", "description": "d" * 3_000}}
        for i in range(23)
    ]
    if path.endswith("completions"):
        body: dict[str, Any] = {**chat("hi"), "tools": tools}
    else:
        flat = [{"type": "function", "name": f"t{i}", "description": "d" * 3_000,
                 "parameters": {"type": "object"}} for i in range(23)]  # fmt: skip
        body = {"model": "m", "input": "hi", "tools": flat}
    (err,) = await refused(pki, (body, path))
    assert err["code"] == "request_too_large"
    assert err["message"].startswith("the tools and instructions take ")
    assert "fewer tools" in err["message"]


def tools_just_under_the_cap() -> dict[str, Any]:
    # tools take all but a few characters, the user typed a short line: the
    # tools fill the cap, not the message
    probe = {**chat("hi"), "tools": []}
    base = len(json.dumps(probe))  # about what the rest of the request takes
    tools = [{"type": "function", "function": {"name": "t",
              "description": "d" * (LIGHTSPEED_MAX_REQUEST_CHARS - base - 200)}}]  # fmt: skip
    return {**chat("a question of a few dozen characters, nothing more"), "tools": tools}


def tools_over_the_cap_beside_a_larger_message() -> dict[str, Any]:
    # fixing the message would not be enough: the tools alone are over the cap
    tools = [{"type": "function", "function": {"name": "t", "description": "d" * 70_000}}]
    image = [{"type": "image_url", "image_url": {"url": IMAGE}}]
    return {"model": "m", "messages": [{"role": "user", "content": image}], "tools": tools}


def a_large_tool_output() -> dict[str, Any]:
    # a client's compaction may cut a tool's output short: the code it compacts on
    call = {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    turns = [
        {"role": "user", "content": "read the file"},
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_1", "content": "line\n" * 14_000},
    ]
    return {"model": "m", "messages": turns}


@pytest.mark.parametrize(
    ("make_body", "code"),
    [
        (tools_just_under_the_cap, "request_too_large"),
        (tools_over_the_cap_beside_a_larger_message, "request_too_large"),
        (a_large_tool_output, "context_length_exceeded"),
    ],
    ids=lambda v: getattr(v, "__name__", v),
)
async def test_the_part_that_fills_the_cap_decides_the_code(
    pki: SimpleNamespace, make_body: Callable[[], dict[str, Any]], code: str
) -> None:
    (err,) = await refused(pki, (make_body(), "/v1/chat/completions"))
    assert err["code"] == code, err
    # Goose reads the message, not the code: it compacts exactly when it should
    compacts = goose_error_kind(400, {"error": err}) == "ContextLengthExceeded"
    assert compacts == (code == "context_length_exceeded"), err["message"]


# every code point, lone surrogates and DEL included; "," and ":" in strings
_TEXT = st.text(st.characters(blacklist_categories=()) | st.sampled_from(",:\x7f"), max_size=30)
_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | _TEXT,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_TEXT, inner, max_size=4),
    max_leaves=12,
)


@given(st.dictionaries(_TEXT, _VALUES, max_size=5))
def test_the_size_is_what_lightspeed_counts_of_what_is_sent(body: dict[str, Any]) -> None:
    # Lightspeed Stack counts len(json.dumps(values)) of the body it parsed;
    # the quick bound read from the sent bytes never falls below that
    for sent in (body, {**body, "padding past the small bodies": "x" * 3_000}):
        payload = encode_json(sent)
        counted = len(json.dumps(json.loads(payload)))
        assert _backend_chars(sent) == counted
        assert _most_chars(payload) >= counted


def test_a_goose_sized_body_with_a_few_non_ascii_characters_is_not_encoded_again() -> None:
    # the quick bound stays under the cap: json.dumps of the body (a quarter
    # of the translation's time) is left for bodies near the cap
    tools = [{"type": "function", "name": f"tool_{i}", "description": "Run it — safely… " * 40,
              "parameters": {"type": "object", "properties": {"a": {"type": "string"}}}}
             for i in range(35)]  # fmt: skip
    body = {"model": "", "input": "résumé", "tools": tools}
    payload = encode_json(body)
    assert 30_000 < len(payload) and not payload.isascii()
    assert _backend_chars(body) <= _most_chars(payload) < LIGHTSPEED_MAX_REQUEST_CHARS


@pytest.mark.parametrize(
    ("messages", "code"),
    [
        # 18,000 CJK characters: 18,000 compact characters, 108,000 counted
        (
            [{"role": "user", "content": "ログを確認してください。" * 1_500}],
            "string_above_max_length",
        ),
        # ASCII in short turns: under the cap compact, over it with ", " and ": "
        (
            [
                *({"role": ("assistant", "user")[i % 2], "content": "ok"} for i in range(950)),
                {"role": "user", "content": "and now?"},
            ],
            "context_length_exceeded",
        ),
    ],
    ids=["cjk-paste", "ascii-separators"],
)
async def test_the_body_is_counted_as_lightspeed_counts(
    pki: SimpleNamespace, messages: list[dict[str, Any]], code: str
) -> None:
    # what Lightspeed would refuse with its 422 is refused at once, with the
    # code that tells Goose what to do (the proxy counted compact UTF-8 text,
    # so both went on to a 422 Goose could not act on)
    body = {"model": "m", "messages": messages}
    translated = chat_to_responses(body, translate_options(parse_config({}))).body
    assert len(encode_json(translated).decode()) < LIGHTSPEED_MAX_REQUEST_CHARS
    assert len(json.dumps(translated)) > LIGHTSPEED_MAX_REQUEST_CHARS
    (err,) = await refused(pki, (body, "/v1/chat/completions"))
    assert err["code"] == code, err
    assert f"{len(json.dumps(translated)):,} characters" in err["message"]


async def test_a_body_within_the_cap_as_lightspeed_counts_it_is_sent(pki: SimpleNamespace) -> None:
    # 10,000 "中": 60,000 and a few characters as Lightspeed counts them, within
    # its cap (the devbackend counts so too, and accepts it); the quick bound
    # read from the bytes (9 for each such character) is over the cap, so the
    # exact count decides
    with anyio.fail_after(10):
        async with proxied(pki) as h:
            r = await post(h.url, chat("中" * 10_000))
    assert r.status_code == 200, r.text
    sent = h.backend.requests[0].json
    assert 60_000 < len(json.dumps(sent)) <= LIGHTSPEED_MAX_REQUEST_CHARS
    assert _most_chars(encode_json(sent)) > LIGHTSPEED_MAX_REQUEST_CHARS


async def test_backend_422_for_a_long_body_maps_to_context_length(pki: SimpleNamespace) -> None:
    # the proxy's own check is off: the backend's cap answers, and is understood
    text = "x" * (LIGHTSPEED_MAX_REQUEST_CHARS + 100)
    with anyio.fail_after(10):
        async with proxied(pki, backend={"max_request_chars": 0}) as h:
            r = await post(h.url, chat(text))
    assert len(h.backend.requests) == 1  # it did reach the backend
    assert r.status_code == 400
    err = r.json()["error"]
    assert err["code"] == "context_length_exceeded"
    assert "exceeds maximum allowed size of 65536 characters" in err["message"]


async def test_openai_flavour_has_no_cap() -> None:
    text = "x" * (LIGHTSPEED_MAX_REQUEST_CHARS * 2)
    with anyio.fail_after(10):
        async with devbackend.run(mode="openai") as backend:
            cfg = make_config(backend.url, None, backend={"flavor": "openai"})
            async with running_proxy(cfg) as proxy:
                r = await post(proxy.url, chat(text))
    assert r.status_code == 200, r.text


def test_other_422s_stay_plain_bad_requests() -> None:
    raw = (FIXTURES / "err_422_extra_field.json").read_bytes()
    err = error_from_backend(422, raw)
    assert isinstance(err, UpstreamHTTPError) and not isinstance(err, ContextLengthExceeded)
    assert err.status == 400
    long_body = json.dumps(
        {"detail": [{"type": "string_too_long", "loc": ["body"], "msg": "too long", "input": 9}]}
    ).encode()
    assert isinstance(error_from_backend(422, long_body), ContextLengthExceeded)
    # Lightspeed Stack's own words, which repeat the whole request: understood
    # also when the body is cut short where the proxy stops reading it
    said = (
        "Value error, Request body size (70008 characters) exceeds maximum allowed size "
        "of 65536 characters"
    )
    entry = {"type": "value_error", "loc": ["body"], "msg": said, "input": {"input": "x" * 70_000}}
    lightspeed = json.dumps({"detail": [entry]}).encode()
    for raw in (lightspeed, lightspeed[:2_000]):
        err = error_from_backend(422, raw)
        assert isinstance(err, ContextLengthExceeded) and "70008 characters" in err.message
    # another check of the whole body (a model validator's) is the client's mistake
    other = {
        **entry,
        "msg": "Value error, `conversation` and `previous_response_id` are mutually exclusive.",
    }
    assert not isinstance(
        error_from_backend(422, json.dumps({"detail": [other]}).encode()), ContextLengthExceeded
    )
    # a too long *field* is the client's mistake, not the conversation's length
    field = json.dumps(
        {"detail": [{"type": "string_too_long", "loc": ["body", "model"], "msg": "m"}]}
    ).encode()
    assert not isinstance(error_from_backend(422, field), ContextLengthExceeded)
