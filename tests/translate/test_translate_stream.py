"""Streaming: TRANSLATION.md §3, one case per table row, plus every capture replayed."""

from __future__ import annotations

import json
from typing import Any, Optional

import pytest
from openai.lib.streaming.chat import ChatCompletionStreamState
from openai.types.chat import ChatCompletion, ChatCompletionChunk, ChatCompletionTokenLogprob
from translate_testkit import (
    accumulate,
    capture_events,
    chunks_of,
    deltas,
    finish_reasons,
    fixture_json,
    joined_stream,
    parse_frames,
    text_of,
    tool_calls_of,
)

from goose_proxy.errors import (
    ContextLengthExceeded,
    ProxyError,
    RateLimited,
    UpstreamError,
    UpstreamProtocolError,
    UpstreamTimeout,
)
from goose_proxy.translate import (
    StreamTranslator,
    events_from_response,
    responses_to_chat,
)
from goose_proxy.translate.toolcalls import KEPT_ARGUMENTS
from tests import lightspeed_answers as ls

RESP = {"id": "resp_abc", "object": "response", "created_at": 1700000123, "model": "backend-m",
        "status": "in_progress", "output": []}  # fmt: skip
CREATED = {"type": "response.created", "response": RESP}
IN_PROGRESS = {"type": "response.in_progress", "response": RESP}


def completed(
    output: Optional[list[Any]] = None, usage: Any = None, **extra: Any
) -> dict[str, Any]:
    resp = {**RESP, "status": "completed", "output": output or [], "usage": usage, **extra}
    return {"type": "response.completed", "response": resp}


def text_delta(delta: str, item: str = "msg_1", index: int = 0, part: int = 0) -> dict[str, Any]:
    return {"type": "response.output_text.delta", "item_id": item, "output_index": index,
            "content_index": part, "delta": delta, "logprobs": []}  # fmt: skip


def msg_added(item: str = "msg_1", index: int = 0) -> dict[str, Any]:
    return {"type": "response.output_item.added", "output_index": index,
            "item": {"type": "message", "id": item, "role": "assistant", "content": [],
                     "status": "in_progress"}}  # fmt: skip


def msg_done(parts: list[dict[str, Any]], item: str = "msg_1", index: int = 0) -> dict[str, Any]:
    return {"type": "response.output_item.done", "output_index": index,
            "item": {"type": "message", "id": item, "role": "assistant", "content": parts,
                     "status": "completed"}}  # fmt: skip


def call_item(item: str, call_id: str, name: str, arguments: str = "") -> dict[str, Any]:
    return {"type": "function_call", "id": item, "call_id": call_id, "name": name,
            "arguments": arguments}  # fmt: skip


def call_added(item: str, call_id: str, name: str, index: int) -> dict[str, Any]:
    return {"type": "response.output_item.added", "output_index": index,
            "item": call_item(item, call_id, name)}  # fmt: skip


def args_delta(item: Optional[str], delta: str, index: int) -> dict[str, Any]:
    event = {"type": "response.function_call_arguments.delta", "output_index": index,
             "delta": delta}  # fmt: skip
    if item is not None:
        event["item_id"] = item
    return event


def args_done(item: str, arguments: str, index: int) -> dict[str, Any]:
    return {"type": "response.function_call_arguments.done", "item_id": item,
            "output_index": index, "arguments": arguments}  # fmt: skip


def call_done(item: str, call_id: str, name: str, arguments: str, index: int) -> dict[str, Any]:
    return {"type": "response.output_item.done", "output_index": index,
            "item": call_item(item, call_id, name, arguments)}  # fmt: skip


def _placeless(event: dict[str, Any]) -> dict[str, Any]:
    # a delta that names neither its item nor its output index
    return {k: v for k, v in event.items() if k not in ("item_id", "output_index")}


def _part(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": []}


def run(
    events: list[dict[str, Any]],
    *,
    include_usage: bool = False,
    model: str = "goose-model",
    finish: bool = True,
    **kwargs: Any,
) -> tuple[list[list[bytes]], list[Any]]:
    """Feed events; return the frames per call and the parsed output stream."""
    st = StreamTranslator(model=model, include_usage=include_usage, **kwargs)
    per_event = [st.feed(e) for e in events]
    if finish:
        per_event.append(st.finish())
    frames = [f for batch in per_event for f in batch]
    parsed = parse_frames(frames)
    assert joined_stream(frames) == parsed  # the byte stream parses the same way as frames
    return per_event, parsed


def assert_well_formed(parsed: list[Any], *, model: str = "goose-model") -> None:
    assert parsed.count("[DONE]") == 1 and parsed[-1] == "[DONE]"
    chunks = chunks_of(parsed)
    assert chunks, "at least one chunk"
    first = chunks[0]
    for chunk in chunks:
        assert "error" not in chunk
        assert chunk["object"] == "chat.completion.chunk"
        assert (chunk["id"], chunk["created"], chunk["model"]) == (
            first["id"], first["created"], model)  # fmt: skip
        assert isinstance(chunk["created"], int)
    roles = [d for d in deltas(parsed) if "role" in d]
    after = deltas(parsed)[1] if len(deltas(parsed)) > 1 else {}
    # as OpenAI: "" before text, null when anything else comes first
    content = "" if "content" in after else None
    assert roles == [{"role": "assistant", "content": content}] and deltas(parsed)[0] == roles[0]


# --- rows ------------------------------------------------------------------------------------


def test_created_alone_commits_nothing_and_role_goes_out_once_with_first_delta() -> None:
    per_event, parsed = run([CREATED, IN_PROGRESS, msg_added(), text_delta("Hi"),
                             text_delta(" there"), completed()])  # fmt: skip
    assert per_event[0] == per_event[1] == per_event[2] == []
    first = parse_frames(per_event[3])
    assert [c["choices"][0]["delta"] for c in first] == [
        {"role": "assistant", "content": ""}, {"content": "Hi"}]  # fmt: skip
    assert_well_formed(parsed)
    assert parsed[0]["id"] == RESP["id"] and parsed[0]["created"] == RESP["created_at"]


def test_text_deltas_and_empty_skipped() -> None:
    pieces = ["Hel", "", "lo ", "wörld ✓", "", '\n"q"']
    _, parsed = run([CREATED, *[text_delta(p) for p in pieces], completed()])
    assert [d["content"] for d in deltas(parsed) if "content" in d][1:] == [p for p in pieces if p]
    assert text_of(parsed) == "".join(pieces)
    assert finish_reasons(parsed) == ["stop"]


def test_non_ascii_is_sent_raw_utf8() -> None:
    per_event, _ = run([CREATED, text_delta("wörld ✓")])
    assert "wörld ✓".encode() in b"".join(per_event[1])


def test_lone_surrogate_still_valid_utf8() -> None:
    # U+FFFD, as UTF-8 decoders do: an escaped lone half fails Goose's whole turn
    per_event, parsed = run([CREATED, text_delta("a\ud800b"), completed()])
    assert text_of(parsed) == "a\ufffdb"
    assert b"\\ud800" not in b"".join(b"".join(f) for f in per_event)


@pytest.mark.parametrize("first", ["reasoning", "tool call"])
def test_no_text_first_makes_the_rebuilt_content_null(first: str) -> None:
    # what the openai SDK rebuilds from the chunks matches the unstreamed answer
    opening = {
        "reasoning": {"type": "response.reasoning_text.delta", "item_id": "rs_1",
                      "output_index": 0, "content_index": 0, "delta": "thinking"},
        "refusal": {"type": "response.refusal.delta", "item_id": "msg_1", "output_index": 0,
                    "content_index": 0, "delta": "No."},
        "tool call": {"type": "response.output_item.added", "output_index": 0,
                      "item": {"type": "function_call", "id": "fc_1", "call_id": "call_1",
                               "name": "f", "arguments": "{}"}},
    }[first]  # fmt: skip
    _, parsed = run([CREATED, opening, completed()])
    content: Any = None
    for d in deltas(parsed):  # the SDK's rule: a value replaces a null, strings join
        if "content" in d:
            content = d["content"] if content is None else content + (d["content"] or "")
    assert content is None
    _, with_text = run([CREATED, opening, text_delta("Hi"), completed()])
    assert deltas(with_text)[0] == {"role": "assistant", "content": None}
    assert text_of(with_text) == "Hi"


def test_refusal_delta() -> None:
    _, parsed = run([CREATED, {"type": "response.refusal.delta", "item_id": "msg_1",
                               "output_index": 0, "content_index": 0, "delta": "No way."},
                     completed()])  # fmt: skip
    assert text_of(parsed, "refusal") == "No way."
    # in content too (Goose reads only content), in the same chunk: the openai
    # SDK's stream helper then does not parse it as structured output
    assert text_of(parsed) == "No way." and deltas(parsed)[0]["content"] == ""
    assert {"content": "No way.", "refusal": "No way."} in deltas(parsed)
    assert_well_formed(parsed)


@pytest.mark.parametrize(
    "etype", ["response.reasoning_text.delta", "response.reasoning_summary_text.delta"]
)
def test_reasoning_deltas_become_reasoning_content(etype: str) -> None:
    events = [{"type": etype, "item_id": "rs_1", "output_index": 0, "content_index": 0,
               "summary_index": 0, "delta": d} for d in ("Think", "", "ing.")]  # fmt: skip
    _, parsed = run([CREATED, *events, text_delta("Answer", index=1), completed()])
    assert text_of(parsed, "reasoning_content") == "Thinking."
    assert text_of(parsed) == "Answer"


def test_function_call_added_uses_dense_index_not_output_index() -> None:
    events = [CREATED, msg_added(), text_delta("Calling."),
              call_added("fc_a", "call_a", "shell", 3), args_done("fc_a", "{}", 3),
              call_added("fc_b", "call_b", "read", 7), args_done("fc_b", '{"p":1}', 7),
              completed()]  # fmt: skip
    per_event, parsed = run(events)
    header = parse_frames(per_event[3])[0]["choices"][0]["delta"]
    assert header == {
        "tool_calls": [
            {
                "index": 0,
                "id": "call_a",
                "type": "function",
                "function": {"name": "shell", "arguments": ""},
            }
        ]
    }
    frags = [f for d in deltas(parsed) for f in d.get("tool_calls", [])]
    assert sorted({f["index"] for f in frags}) == [0, 1]
    assert tool_calls_of(parsed) == [
        {"id": "call_a", "name": "shell", "arguments": "{}"},
        {"id": "call_b", "name": "read", "arguments": '{"p":1}'},
    ]
    assert finish_reasons(parsed) == ["tool_calls"]


def test_argument_deltas_by_item_id_and_output_index_fallback() -> None:
    events = [CREATED, call_added("fc_a", "call_a", "shell", 2),
              args_delta("fc_a", '{"c"', 2), args_delta(None, ':"ls"}', 2),
              args_delta("fc_a", "", 2), args_done("fc_a", '{"c":"ls"}', 2),
              call_done("fc_a", "call_a", "shell", '{"c":"ls"}', 2),
              completed()]  # fmt: skip
    per_event, parsed = run(events)
    assert per_event[4] == []  # empty delta: no-op
    assert per_event[5] == per_event[6] == []  # deltas were complete: nothing to add
    frags = [f for d in deltas(parsed) for f in d.get("tool_calls", [])]
    assert [f["function"]["arguments"] for f in frags] == ["", '{"c"', ':"ls"}']
    assert tool_calls_of(parsed) == [{"id": "call_a", "name": "shell", "arguments": '{"c":"ls"}'}]


def test_arguments_only_in_done_are_sent_once() -> None:
    events = [CREATED, call_added("fc_a", "call_a", "shell", 0), args_done("fc_a", '{"x":1}', 0),
              call_done("fc_a", "call_a", "shell", '{"x":1}', 0),
              completed([call_item("fc_a", "call_a", "shell", '{"x":1}')])]  # fmt: skip
    per_event, parsed = run(events)
    assert parse_frames(per_event[2])[0]["choices"][0]["delta"]["tool_calls"][0] == {
        "index": 0, "function": {"arguments": '{"x":1}'}}  # fmt: skip
    assert per_event[3] == []
    assert tool_calls_of(parsed) == [{"id": "call_a", "name": "shell", "arguments": '{"x":1}'}]


def test_call_never_announced_arrives_in_output_item_done() -> None:
    events = [CREATED, call_done("fc_z", "call_z", "zap", '{"z":0}', 0), completed()]
    _, parsed = run(events)
    assert tool_calls_of(parsed) == [{"id": "call_z", "name": "zap", "arguments": '{"z":0}'}]
    assert finish_reasons(parsed) == ["tool_calls"]


def without_call_id(event: dict[str, Any]) -> dict[str, Any]:
    item = {k: v for k, v in event["item"].items() if k != "call_id"}
    return {**event, "item": item}


@pytest.mark.parametrize(
    "terminal_has_items", [True, False, None], ids=["terminal", "done", "none"]
)
def test_a_call_without_call_id_is_answered_by_its_item_id(
    terminal_has_items: Optional[bool],
) -> None:
    # a backend that leaves call_id out (the spec requires it): the item's id
    # stands in, in the stream as in the JSON answer made of the same events
    final = {k: v for k, v in call_item("fc_0", "", "shell", '{"c":"ls"}').items()
             if k != "call_id"}  # fmt: skip
    events = [CREATED, without_call_id(call_added("fc_0", "", "shell", 0)),
              args_delta("fc_0", '{"c":', 0), args_delta("fc_0", '"ls"}', 0),
              args_done("fc_0", '{"c":"ls"}', 0)]  # fmt: skip
    if terminal_has_items:  # no output_item.done: the terminal response names it
        events.append(completed([final]))
    elif terminal_has_items is None:  # nothing but its output_item.added has its id
        events.append(completed())
    else:
        events += [without_call_id(call_done("fc_0", "", "shell", '{"c":"ls"}', 0)), completed()]
    _, parsed = run(events)
    assert tool_calls_of(parsed) == [{"id": "fc_0", "name": "shell", "arguments": '{"c":"ls"}'}]
    assert finish_reasons(parsed) == ["tool_calls"]
    chat = responses_to_chat(accumulate(events), "m")
    assert chat["choices"][0]["message"]["tool_calls"][0]["id"] == "fc_0"


def test_a_call_id_that_comes_only_with_the_item_done_wins_over_the_item_id() -> None:
    events = [CREATED, without_call_id(call_added("fc_0", "", "shell", 0)),
              args_delta("fc_0", "{}", 0), call_done("fc_0", "call_9", "shell", "{}", 0),
              completed()]  # fmt: skip
    _, parsed = run(events)
    assert tool_calls_of(parsed) == [{"id": "call_9", "name": "shell", "arguments": "{}"}]


def _calls_both_ways(events: list[dict[str, Any]]) -> tuple[list[Any], list[Any]]:
    """The tool calls as the stream rebuilds them, and as the JSON answer has them."""
    _, parsed = run(events)
    message = responses_to_chat(accumulate(events), "m")["choices"][0]["message"]
    collected = [
        {"id": c["id"], "name": c["function"]["name"], "arguments": c["function"]["arguments"]}
        for c in message.get("tool_calls") or ()
    ]
    return tool_calls_of(parsed), collected


def test_argument_deltas_that_name_neither_item_nor_index_join_the_open_call() -> None:
    # the JSON answer put them in the call announced last; the stream dropped
    # them and sent the call with arguments "", which no client can parse
    placeless = [
        _placeless(args_delta(None, '{"path":', 0)),
        _placeless(args_delta(None, '"/"}', 0)),
    ]
    events = [CREATED, call_added("fc_0", "call_1", "ls", 0), *placeless, completed()]
    streamed, collected = _calls_both_ways(events)
    assert streamed == collected == [{"id": "call_1", "name": "ls", "arguments": '{"path":"/"}'}]
    # after that call finished, such a delta has no call to join, in either
    finished = [*events[:-1], call_done("fc_0", "call_1", "ls", '{"path":"/"}', 0)]
    streamed, collected = _calls_both_ways([*finished, *placeless, completed()])
    assert streamed == collected == [{"id": "call_1", "name": "ls", "arguments": '{"path":"/"}'}]


def test_a_name_that_comes_only_with_the_arguments_done_is_in_the_json_answer_too() -> None:
    # the stream took the name from the .done event; the JSON answer left it ""
    done = {**args_done("fc_0", '{"path":"/"}', 0), "name": "ls"}
    events = [CREATED, call_added("fc_0", "call_1", "", 0),
              args_delta("fc_0", '{"path":"/"}', 0), done, completed()]  # fmt: skip
    streamed, collected = _calls_both_ways(events)
    assert streamed == collected == [{"id": "call_1", "name": "ls", "arguments": '{"path":"/"}'}]


def test_done_events_never_carry_finish_reason() -> None:
    events = [CREATED, call_added("fc_a", "call_a", "f", 0), args_delta("fc_a", "{}", 0),
              args_done("fc_a", "{}", 0), call_done("fc_a", "call_a", "f", "{}", 0),
              call_added("fc_b", "call_b", "g", 1), args_done("fc_b", "[]", 1),
              call_done("fc_b", "call_b", "g", "[]", 1)]  # fmt: skip
    _, parsed = run(events, finish=False)
    assert finish_reasons(parsed) == [] and "[DONE]" not in parsed
    assert len(tool_calls_of(parsed)) == 2


@pytest.mark.parametrize(("calls", "expected"), [(0, "stop"), (1, "tool_calls")])
def test_completed_finish_reason(calls: int, expected: str) -> None:
    events = [CREATED, text_delta("x")]
    if calls:
        events += [call_added("fc", "c", "f", 1), args_done("fc", "{}", 1)]
    _, parsed = run([*events, completed()])
    final = chunks_of(parsed)[-1]
    assert final["choices"] == [{"index": 0, "delta": {}, "finish_reason": expected}]
    assert_well_formed(parsed)


@pytest.mark.parametrize(
    ("reason", "expected"), [("max_output_tokens", "length"), ("content_filter", "content_filter")]
)
def test_incomplete(reason: str, expected: str) -> None:
    usage = {"input_tokens": 9, "output_tokens": 4, "total_tokens": 13}
    incomplete = {
        "type": "response.incomplete",
        "response": {
            **RESP,
            "status": "incomplete",
            "incomplete_details": {"reason": reason},
            "usage": usage,
        },
    }
    _, parsed = run([CREATED, text_delta("cut"), incomplete], include_usage=True)  # fmt: skip
    assert finish_reasons(parsed) == [expected]
    assert parsed[-2]["usage"] == {"prompt_tokens": 9, "completion_tokens": 4, "total_tokens": 13}


FAILED = {"type": "response.failed", "response": {**RESP, "status": "failed", "error": {
    "code": "server_error", "message": "The LLM fell over"}}}  # fmt: skip
FLAT_ERROR = {"type": "error", "code": "rate_limit_exceeded", "message": "Rate limit reached",
              "param": None, "sequence_number": 3}  # fmt: skip
NESTED_ERROR = {"type": "error", "error": {"type": "server_error", "code": "server_error",
                                           "message": "Backend gone"}}  # fmt: skip


@pytest.mark.parametrize(
    ("event", "cls", "status", "message"),
    [
        (FAILED, UpstreamError, 502, "The LLM fell over"),
        (FLAT_ERROR, RateLimited, 429, "Rate limit reached"),
        (NESTED_ERROR, UpstreamError, 502, "Backend gone"),
    ],
)
def test_failure_before_output_raises(event: Any, cls: type, status: int, message: str) -> None:
    st = StreamTranslator(model="m", include_usage=True)
    assert st.feed(CREATED) == [] and st.feed(msg_added()) == []
    with pytest.raises(ProxyError) as info:
        st.feed(event)
    assert type(info.value) is cls
    assert (info.value.status, info.value.message) == (status, message)
    assert not st.started and st.done
    assert st.feed(text_delta("late")) == [] and st.finish() == []


@pytest.mark.parametrize("event", [FAILED, FLAT_ERROR, NESTED_ERROR])
def test_failure_after_output_is_an_error_frame(event: Any) -> None:
    per_event, parsed = run([CREATED, text_delta("partial"), event, text_delta("late"),
                             completed()])  # fmt: skip
    assert per_event[3] == per_event[4] == per_event[5] == []
    assert parsed[-1] == "[DONE]" and parsed.count("[DONE]") == 1
    error = parsed[-2]["error"]
    assert set(error) >= {"message", "type", "code"}
    inner = event["response"]["error"] if "response" in event else event.get("error", event)
    assert error["message"] == inner["message"]
    assert finish_reasons(parsed) == []  # never a fake stop
    assert text_of(parsed) == "partial"


def _collected(events: list[dict[str, Any]]) -> Any:
    """The answer to a client that did not stream: a chat completion, or the error."""
    try:
        return responses_to_chat(accumulate(events), "m")
    except ProxyError as e:
        return e


_SERVER_ERROR = {"code": "server_error", "message": "actually failed"}


@pytest.mark.parametrize(
    ("terminal", "ending"),
    [
        pytest.param(completed(status="incomplete",
                               incomplete_details={"reason": "max_output_tokens"}),
                     "length", id="completed-event-incomplete-response"),
        pytest.param({"type": "response.incomplete", "response": {**RESP, "status": "completed"}},
                     "stop", id="incomplete-event-completed-response"),
        pytest.param(completed(status="in_progress"), "stop", id="completed-event-in-progress"),
        pytest.param({"type": "response.completed"}, "stop", id="completed-event-no-response"),
        pytest.param({"type": "response.incomplete"}, "length", id="incomplete-event-no-response"),
        pytest.param(completed(status="failed", error=_SERVER_ERROR), "actually failed",
                     id="completed-event-failed-response"),
        pytest.param(completed(error=_SERVER_ERROR), "actually failed",
                     id="completed-event-with-an-error"),
        pytest.param(completed(status="cancelled"), "cancelled", id="completed-event-cancelled"),
    ],
)  # fmt: skip
@pytest.mark.parametrize("streamed_first", [True, False])
def test_a_terminal_event_ends_the_stream_as_the_collected_answer(
    terminal: dict[str, Any], ending: str, streamed_first: bool
) -> None:
    # the event's type says that the response ended, its response's status how
    # (the non-streaming answer always read it so): both paths agree
    text = [msg_added(), text_delta("Hi")] if streamed_first else []
    final = [msg_done([{"type": "output_text", "text": "Hi"}])["item"]] if streamed_first else []
    if "response" in terminal:
        terminal = {**terminal, "response": {**terminal["response"], "output": final}}
    events = [CREATED, *text, terminal]
    answer = _collected(events)
    if ending in ("stop", "length"):
        _, parsed = run(events)
        assert finish_reasons(parsed) == [ending]
        assert answer["choices"][0]["finish_reason"] == ending
        assert text_of(parsed) == (answer["choices"][0]["message"]["content"] or "")
        assert text_of(parsed) == ("Hi" if streamed_first else "")
        return
    assert isinstance(answer, ProxyError) and ending in answer.message
    if streamed_first:
        _, parsed = run(events)
        assert parsed[-2]["error"]["message"] == answer.message
        assert finish_reasons(parsed) == [] and parsed[-1] == "[DONE]"
    else:
        with pytest.raises(ProxyError) as info:
            run(events)
        assert (type(info.value), info.value.message) == (type(answer), answer.message)


def _as_the_stream_shows_it(events: list[dict[str, Any]]) -> dict[str, Any]:
    _, parsed = run(events)
    return {
        "content": text_of(parsed) or None,
        "refusal": text_of(parsed, "refusal") or None,
        "reasoning": text_of(parsed, "reasoning_content") or None,
        "tool_calls": tool_calls_of(parsed),
        "finish": finish_reasons(parsed),
    }


def _as_collected(events: list[dict[str, Any]]) -> dict[str, Any]:
    choice = _collected(events)["choices"][0]
    message = choice["message"]
    calls = [{"id": c["id"], **c["function"]} for c in message.get("tool_calls", ())]
    return {
        "content": message["content"],
        "refusal": message["refusal"],
        "reasoning": message.get("reasoning_content"),
        "tool_calls": calls,
        "finish": [choice["finish_reason"]],
    }


def _call_added_with(**fields: Any) -> dict[str, Any]:
    event = call_added("fc_1", "call_1", "get_weather", 0)
    return {**event, "item": {**event["item"], **fields}}


_ARGS = '{"city": "Brno"}'
_MCP_CALL = {"type": "mcp_call", "id": "mcp_1", "name": "search", "server_label": "s",
             "arguments": "{}", "output": "found"}  # fmt: skip


# Llama Stack (and the OGX that Lightspeed Stack runs): every tool call of a
# model turn at one output index, each under its own item id; only the
# client's calls are announced, but a search's arguments (and an MCP call's,
# after their first piece) still stream as function_call_arguments events.
_SEARCH = '{"query": "rhel"}'
_FILE_SEARCH = {"type": "file_search_call", "id": "fc_k", "status": "completed",
                "queries": [_SEARCH], "results": []}  # fmt: skip
_SHELL = call_item("fc_c", "call_c", "shell", _ARGS)
_SHELL_CALL = [{"id": "call_c", "name": "shell", "arguments": _ARGS}]


def _vllm_numbered(indices: list[int], done_at: list[int], final_id: str = "msg_v") -> list[Any]:
    """A message whose deltas ("Hel", "lo") stream at content ``indices`` and
    whose text is reported again at ``done_at`` (output_text.done, then
    content_part.done), then as part 0 of its item and of the final output
    (under ``final_id``): vLLM's numbering (gpt-oss, a message after a
    reasoning item: 1 throughout)."""
    text = "Hello"
    events: list[Any] = [msg_added("msg_v")]
    events += [text_delta(d, item="msg_v", part=i) for d, i in zip(("Hel", "lo"), indices)]
    kinds = ("response.output_text.done", "response.content_part.done")
    for kind, at in zip(kinds, done_at):
        event = {"type": kind, "item_id": "msg_v", "output_index": 0, "content_index": at}
        events.append({**event, "text": text} if kind.endswith("text.done") else
                      {**event, "part": _part(text)})  # fmt: skip
    events.append(msg_done([_part(text)], item="msg_v"))
    events.append(completed([msg_done([_part(text)], item=final_id)["item"]]))
    return events


@pytest.mark.parametrize(
    ("events", "expected"),
    [
        pytest.param(  # announced with an empty name; the name comes with the item's end
            [_call_added_with(name=""), args_delta("fc_1", _ARGS, 0),
             call_done("fc_1", "call_1", "get_weather", _ARGS, 0), completed()],
            {"tool_calls": [{"id": "call_1", "name": "get_weather", "arguments": _ARGS}]},
            id="name-comes-late",
        ),
        pytest.param(  # no name anywhere: the call still goes out, as collected
            [_call_added_with(name=""), args_delta("fc_1", _ARGS, 0), completed()],
            {"tool_calls": [{"id": "call_1", "name": "", "arguments": _ARGS}]},
            id="never-named",
        ),
        pytest.param(  # announced without a name key at all
            [{**_call_added_with(), "item": {k: v for k, v in _call_added_with()["item"].items()
                                             if k != "name"}},
             args_delta("fc_1", _ARGS, 0), completed()],
            {"tool_calls": [{"id": "call_1", "name": "", "arguments": _ARGS}]},
            id="no-name-key",
        ),
        pytest.param(  # the arguments only in the announced item
            [_call_added_with(arguments=_ARGS), completed()],
            {"tool_calls": [{"id": "call_1", "name": "get_weather", "arguments": _ARGS}]},
            id="arguments-only-when-announced",
        ),
        pytest.param(  # ... and streamed again: not doubled
            [_call_added_with(arguments=_ARGS), args_delta("fc_1", _ARGS[:5], 0),
             args_delta("fc_1", _ARGS[5:], 0), completed()],
            {"tool_calls": [{"id": "call_1", "name": "get_weather", "arguments": _ARGS}]},
            id="arguments-announced-and-streamed",
        ),
        pytest.param(  # placeless deltas of an announced message that is done
            [msg_added(), _placeless(text_delta("Hel")), _placeless(text_delta("lo")),
             msg_done([_part("Hello")]), completed()],
            {"content": "Hello"},
            id="placeless-deltas-of-a-done-message",
        ),
        pytest.param(  # a placeless delta after its message is done: a message of its own
            [msg_added(), text_delta("A"), msg_done([_part("A")]), _placeless(text_delta("B")),
             completed()],
            {"content": "AB"},
            id="placeless-delta-after-its-message-is-done",
        ),
        pytest.param(  # deltas under an item id but no index, then a shield's message
            [{k: v for k, v in text_delta("OK", item="A").items() if k != "output_index"},
             completed([msg_done([_part("OK")], item="A")["item"],
                        msg_done([_part("OK.")], item="B", index=1)["item"]])],
            {"content": "OKOK."},
            id="named-unplaced-deltas-then-another-message",
        ),
        pytest.param(  # argument events of the backend's own MCP call: no tool call
            [{"type": "response.function_call_arguments.delta", "item_id": "mcp_1",
              "output_index": 0, "delta": "{}"},
             {"type": "response.output_item.done", "output_index": 0, "item": _MCP_CALL},
             completed([_MCP_CALL])],
            {"tool_calls": []},
            id="an-mcp-calls-argument-events",
        ),
        pytest.param(  # arguments announced, their start streamed, no end
            [_call_added_with(arguments=_ARGS), args_delta("fc_1", _ARGS[:5], 0), completed()],
            {"tool_calls": [{"id": "call_1", "name": "get_weather", "arguments": _ARGS}]},
            id="arguments-announced-and-their-start-streamed",
        ),
        pytest.param(  # a refusal of an item never announced
            [{"type": "response.refusal.delta", "item_id": "msg_x", "output_index": 0,
              "content_index": 0, "delta": "No."},
             {"type": "response.refusal.done", "item_id": "msg_x", "output_index": 0,
              "content_index": 0, "refusal": "No."}, completed()],
            {"content": "No.", "refusal": "No."},
            id="refusal-never-announced",
        ),
        pytest.param(  # Llama Stack: a search's arguments after the client's call's, one index
            [call_added("fc_c", "call_c", "shell", 0), args_delta("fc_c", _ARGS, 0),
             args_delta("fc_k", _SEARCH, 0), args_done("fc_c", _ARGS, 0),
             args_done("fc_k", _SEARCH, 0),
             {"type": "response.output_item.done", "output_index": 0, "item": _FILE_SEARCH},
             call_done("fc_c", "call_c", "shell", _ARGS, 1), completed([_FILE_SEARCH, _SHELL])],
            {"tool_calls": _SHELL_CALL},
            id="llama-stack-search-arguments-after-the-call",
        ),
        pytest.param(  # ... and before it, the search's .done first (a guard: this held before)
            [args_delta("fc_k", _SEARCH, 0), call_added("fc_c", "call_c", "shell", 0),
             args_delta("fc_c", _ARGS[:4], 0), args_delta("fc_c", _ARGS[4:], 0),
             args_done("fc_k", _SEARCH, 0), args_done("fc_c", _ARGS, 0),
             completed([_FILE_SEARCH, _SHELL])],
            {"tool_calls": _SHELL_CALL},
            id="llama-stack-search-arguments-before-the-call",
        ),
        pytest.param(  # a search's empty arguments: its .done alone, before the client's
            [call_added("fc_c", "call_c", "shell", 0), args_delta("fc_c", _ARGS[:4], 0),
             args_done("fc_k", "{}", 0), args_delta("fc_c", _ARGS[4:], 0),
             args_done("fc_c", _ARGS, 0), completed([_FILE_SEARCH, _SHELL])],
            {"tool_calls": _SHELL_CALL},
            id="llama-stack-search-done-before-the-calls-end",
        ),
        pytest.param(  # a call without arguments of its own streamed, then a search's
            [call_added("fc_c", "call_c", "list_files", 0), args_delta("fc_k", _SEARCH, 0),
             args_done("fc_c", "{}", 0), args_done("fc_k", _SEARCH, 0),
             call_done("fc_c", "call_c", "list_files", "{}", 1),
             completed([_FILE_SEARCH, call_item("fc_c", "call_c", "list_files", "{}")])],
            {"tool_calls": [{"id": "call_c", "name": "list_files", "arguments": "{}"}]},
            id="llama-stack-search-arguments-before-the-calls-own",
        ),
        pytest.param(  # ... and its announcement repeated without an index: no borrowed id
            [call_added("fc_c", "call_c", "list_files", 0),
             {k: v for k, v in call_added("fc_c", "call_c", "list_files", 0).items()
              if k != "output_index"},
             args_delta("fc_k", _SEARCH, 0), args_done("fc_c", "{}", 0),
             completed([_FILE_SEARCH, call_item("fc_c", "call_c", "list_files", "{}")])],
            {"tool_calls": [{"id": "call_c", "name": "list_files", "arguments": "{}"}]},
            id="llama-stack-call-announced-twice-then-a-search",
        ),
        pytest.param(  # an MCP call's later argument pieces, interleaved with the client's
            [call_added("fc_c", "call_c", "shell", 0), args_delta("fc_c", _ARGS[:4], 0),
             {"type": "response.mcp_call_arguments.delta", "item_id": "mcp_1",
              "output_index": 0, "delta": "{"},
             args_delta("fc_c", _ARGS[4:], 0), args_delta("mcp_1", "}", 0),
             args_done("fc_c", _ARGS, 0),
             {"type": "response.output_item.done", "output_index": 0, "item": _MCP_CALL},
             completed([_MCP_CALL, _SHELL])],
            {"tool_calls": _SHELL_CALL},
            id="llama-stack-mcp-arguments-beside-the-call",
        ),
        pytest.param(  # vLLM (gpt-oss): a message after a reasoning item streams at index 1
            _vllm_numbered([1, 1], [1, 1], final_id="msg_renamed"),
            {"content": "Hello"},
            id="vllm-message-streamed-at-content-index-1",
        ),
        pytest.param(  # a part shown by its .done alone, its item's next part streamed first
            [msg_added(), text_delta("0", part=1),
             {"type": "response.content_part.done", "item_id": "msg_1", "output_index": 0,
              "content_index": 0, "part": _part("0")},
             msg_done([_part("0"), _part("0")]),
             completed([msg_done([_part("0"), _part("0")])["item"]])],
            {"content": "00"},
            id="a-part-shown-by-its-done-alone-after-the-next-streamed",
        ),
        pytest.param(  # a two-part item: a part that never streamed is no misnumbered one
            [msg_added(), text_delta("Hel"), text_delta("lo"),
             msg_done([_part("Hello"), _part("Hello again")]),
             completed([msg_done([_part("Hello"), _part("Hello again")])["item"]])],
            {"content": "HelloHello again"},
            id="a-second-part-that-never-streamed",
        ),
        pytest.param(  # an empty text part: null both ways (it was "" in the JSON)
            [msg_added(), msg_done([_part("")]), completed([msg_done([_part("")])["item"]])],
            {"content": None},
            id="an-empty-text-part",
        ),
        pytest.param(  # a reasoning summary of an item never announced
            [{"type": "response.reasoning_summary_text.delta", "item_id": "rs_1",
              "output_index": 0, "summary_index": 0, "delta": "Thinking."},
             text_delta("Answer.", item="msg_1", index=1), completed()],
            {"content": "Answer.", "reasoning": "Thinking."},
            id="reasoning-never-announced",
        ),
    ],
)  # fmt: skip
def test_the_stream_and_the_collected_answer_show_the_same(
    events: list[dict[str, Any]], expected: dict[str, Any]
) -> None:
    streamed = _as_the_stream_shows_it([CREATED, *events])
    assert streamed == _as_collected([CREATED, *events])
    assert {k: streamed[k] for k in expected} == expected
    assert streamed["finish"] == ["tool_calls" if streamed["tool_calls"] else "stop"]


@pytest.mark.parametrize(
    ("streamed", "expected"),
    [("summary", "SUM\n\nRAW"), ("content", "RAW\n\nSUM"), ("both", "RAW\n\nSUM")],
)
def test_a_reasoning_part_that_never_streamed_is_sent_beside_one_that_did(
    streamed: str, expected: str
) -> None:
    # an item with reasoning text and a summary, only one of them streamed: the
    # other was left out of the stream (the collected answer shows "RAW\n\nSUM")
    item = {
        "type": "reasoning",
        "id": "rs_1",
        "summary": [{"type": "summary_text", "text": "SUM"}],
        "content": [{"type": "reasoning_text", "text": "RAW"}],
    }
    deltas = {
        "content": ("response.reasoning_text.delta", "RAW"),
        "summary": ("response.reasoning_summary_text.delta", "SUM"),
    }
    events = [CREATED,
              {"type": "response.output_item.added", "output_index": 0,
               "item": {**item, "summary": [], "content": []}},
              *({"type": etype, "item_id": "rs_1", "output_index": 0, "summary_index": 0,
                 "content_index": 0, "delta": delta}
                for part, (etype, delta) in deltas.items() if streamed in (part, "both")),
              {"type": "response.output_item.done", "output_index": 0, "item": item},
              text_delta("Answer.", item="msg_1", index=1),
              completed([item, msg_done([_part("Answer.")], index=1)["item"]])]  # fmt: skip
    shown = _as_the_stream_shows_it(events)
    assert shown["reasoning"] == expected  # each part once, in the order shown
    assert shown["content"] == "Answer."
    assert _as_collected(events)["reasoning"] == "RAW\n\nSUM"


def test_reasoning_summary_parts_are_paragraphs_in_the_stream_as_collected() -> None:
    # OpenAI streams a summary with summary=auto as parts, each "**Title**\n\n…",
    # then a second reasoning item after a tool round; Llama Stack a message's
    # reasoning_text part: a blank line between parts, as the collected answer
    def summary(text: str, i: int, item: str = "rs_1", index: int = 0) -> dict[str, Any]:
        return {"type": "response.reasoning_summary_text.delta", "item_id": item,
                "output_index": index, "summary_index": i, "delta": text}  # fmt: skip

    parts = ["**Plan**\n\nCheck the disk.", "**Answer**\n\nUse df."]
    first = {"type": "reasoning", "id": "rs_1",
             "summary": [{"type": "summary_text", "text": t} for t in parts]}  # fmt: skip
    second = {
        "type": "reasoning",
        "id": "rs_2",
        "summary": [{"type": "summary_text", "text": "ok"}],
    }
    thought = {"type": "reasoning_text", "text": "Hm."}
    events = [CREATED,
              summary("**Plan**\n\n", 0), summary("Check the disk.", 0),
              summary("**Answer**\n\nUse", 1), summary(" df.", 1),
              {"type": "response.output_item.done", "output_index": 0, "item": first},
              summary("ok", 0, "rs_2", 1),
              {"type": "response.reasoning_text.delta", "item_id": "msg_1", "output_index": 2,
               "content_index": 0, "delta": "Hm."},
              text_delta("Done.", index=2, part=1),
              completed([first, second,
                         msg_done([thought, _part("Done.")], index=2)["item"]])]  # fmt: skip
    shown = _as_the_stream_shows_it(events)
    assert shown["reasoning"] == "\n\n".join([*parts, "ok", "Hm."])
    assert shown == _as_collected(events)
    # and an item whose parts never streamed shows them the same way
    quiet = [CREATED, {"type": "response.output_item.done", "output_index": 0, "item": first},
             completed([first])]  # fmt: skip
    assert _as_the_stream_shows_it(quiet)["reasoning"] == "\n\n".join(parts)


def test_a_call_streamed_under_another_id_than_announced_streams_as_it_comes() -> None:
    # vLLM 0.11 (gpt-oss) announced a call under the previous item's id and
    # streamed its arguments under a new one: the new id stands for the
    # announced call, its arguments go out as they come, and one call is
    # shown; a further id is another item's
    reasoning = {"type": "reasoning", "id": "rs_prev", "summary": []}
    events = [CREATED,
              {"type": "response.output_item.added", "output_index": 0, "item": reasoning},
              {"type": "response.output_item.done", "output_index": 0, "item": reasoning},
              call_added("rs_prev", "call_1", "get_weather", 1),
              args_delta("fc_x", _ARGS[:5], 1), args_delta("fc_x", _ARGS[5:], 1),
              args_delta("fc_y", "JUNK", 1), args_done("fc_x", _ARGS, 1),
              completed([call_item("rs_prev", "call_1", "get_weather", _ARGS)])]  # fmt: skip
    per_event, parsed = run(events)
    assert [bool(frames) for frames in per_event[4:6]] == [True, True]  # not held back
    assert tool_calls_of(parsed) == [{"id": "call_1", "name": "get_weather", "arguments": _ARGS}]


def test_stream_ended_without_terminal_event() -> None:
    st = StreamTranslator(model="m", include_usage=False)
    st.feed(CREATED)
    with pytest.raises(UpstreamProtocolError) as info:
        st.finish()
    assert "ended early" in info.value.message and info.value.status == 502
    _, parsed = run([CREATED, text_delta("half")])
    assert parsed[-2]["error"]["message"].startswith("upstream stream ended early")
    assert parsed[-1] == "[DONE]" and finish_reasons(parsed) == []


def test_unknown_and_ignored_events_emit_nothing() -> None:
    ignored = [
        {"type": "response.content_part.added", "item_id": "msg_1", "output_index": 0,
         "content_index": 0, "part": {"type": "output_text", "text": ""}},
        {"type": "response.mcp_list_tools.in_progress", "item_id": "l", "output_index": 0},
        {"type": "response.mcp_call.completed", "item_id": "l", "output_index": 0},
        {"type": "response.web_search_call.searching", "item_id": "w", "output_index": 0},
        {"type": "response.output_text.annotation.added", "item_id": "msg_1"},
        {"type": "response.some_future_event", "payload": {"x": 1}},
        {"no_type": True},
    ]  # fmt: skip
    st = StreamTranslator(model="m", include_usage=False)
    assert [st.feed(e) for e in [CREATED, *ignored]] == [[]] * (len(ignored) + 1)
    assert not st.started


def test_events_after_terminal_are_ignored() -> None:
    st = StreamTranslator(model="m", include_usage=False)
    st.feed(CREATED)
    st.feed(text_delta("x"))
    assert st.feed(completed())[-1] == b"data: [DONE]\n\n"
    assert st.done
    for event in (text_delta("y"), FAILED, completed()):
        assert st.feed(event) == []
    assert st.finish() == [] and st.error_frames(UpstreamTimeout("t")) == []


@pytest.mark.parametrize("include_usage", [True, False])
def test_usage_chunk(include_usage: bool) -> None:
    usage = {"input_tokens": 100, "output_tokens": 20, "total_tokens": 120,
             "input_tokens_details": {"cached_tokens": 64},
             "output_tokens_details": {"reasoning_tokens": 7}}  # fmt: skip
    st = StreamTranslator(model="goose-model", include_usage=include_usage)
    frames = st.feed(CREATED) + st.feed(text_delta("x")) + st.feed(completed(usage=usage))
    parsed = parse_frames(frames)
    expected = {"prompt_tokens": 100, "completion_tokens": 20, "total_tokens": 120,
                "prompt_tokens_details": {"cached_tokens": 64},
                "completion_tokens_details": {"reasoning_tokens": 7}}  # fmt: skip
    assert st.usage == expected
    usage_chunks = [c for c in chunks_of(parsed) if c.get("usage") is not None]
    if include_usage:
        # as OpenAI: the usage chunk, and "usage": null on every other chunk
        assert parsed[-2] == {**parsed[0], "choices": [], "usage": expected}
        assert usage_chunks == [parsed[-2]]
        assert all("usage" in c and c["usage"] is None for c in chunks_of(parsed)[:-1])
    else:
        assert usage_chunks == [] and all("usage" not in c for c in chunks_of(parsed))
    assert finish_reasons(parsed) == ["stop"]


def test_given_id_created_and_model_win() -> None:
    _, parsed = run([CREATED, text_delta("x"), completed()], completion_id="chatcmpl-fixed",
                    created=42, model="client-m")  # fmt: skip
    assert {(c["id"], c["created"], c["model"]) for c in chunks_of(parsed)} == {
        ("chatcmpl-fixed", 42, "client-m")}  # fmt: skip


def test_empty_model_takes_the_responses_model() -> None:
    _, parsed = run([CREATED, text_delta("x"), completed()], model="")
    assert {c["model"] for c in chunks_of(parsed)} == {RESP["model"]}


def test_no_created_event_still_has_consistent_ids() -> None:
    _, parsed = run([text_delta("x"), completed()], model="m")
    assert len({(c["id"], c["created"]) for c in chunks_of(parsed)}) == 1
    # committed at the first delta, before any response object was seen: a fresh id
    assert chunks_of(parsed)[0]["id"].startswith("chatcmpl-")


def test_terminal_event_alone_commits_role_and_finish() -> None:
    _, parsed = run([CREATED, completed()], include_usage=True)
    assert [c["choices"] for c in chunks_of(parsed)][:2] == [
        # no text at all: content null, as the same answer unstreamed has it
        [{"index": 0, "delta": {"role": "assistant", "content": None}, "finish_reason": None}],
        [{"index": 0, "delta": {}, "finish_reason": "stop"}],
    ]
    assert chunks_of(parsed)[2]["usage"] is None  # asked for, backend gave none


def test_text_only_in_output_item_done_shield() -> None:
    shield = "I cannot help with that request."
    events = [CREATED, msg_added(), msg_done([{"type": "output_text", "text": shield}]),
              completed([msg_done([{"type": "output_text", "text": shield}])["item"]])]  # fmt: skip
    per_event, parsed = run(events)
    assert per_event[2]  # committed at output_item.done
    assert text_of(parsed) == shield
    assert_well_formed(parsed)


def test_text_only_in_content_part_done_sent_once() -> None:
    part_done = {"type": "response.content_part.done", "item_id": "msg_1", "output_index": 0,
                 "content_index": 0, "part": {"type": "output_text", "text": "whole"}}  # fmt: skip
    text_done = {"type": "response.output_text.done", "item_id": "msg_1", "output_index": 0,
                 "content_index": 0, "text": "whole"}  # fmt: skip
    events = [CREATED, msg_added(), part_done, text_done,
              msg_done([{"type": "output_text", "text": "whole"}]), completed()]  # fmt: skip
    _, parsed = run(events)
    assert text_of(parsed) == "whole"


def test_streamed_text_not_repeated_by_done_events() -> None:
    events = [CREATED, msg_added(), text_delta("a"), text_delta("b"),
              msg_done([{"type": "output_text", "text": "ab"}]),
              completed([msg_done([{"type": "output_text", "text": "ab"}])["item"]])]  # fmt: skip
    _, parsed = run(events)
    assert text_of(parsed) == "ab"


def test_refusal_only_in_done() -> None:
    events = [CREATED, msg_added(), msg_done([{"type": "refusal", "refusal": "Nope."}]),
              completed()]  # fmt: skip
    _, parsed = run(events)
    assert text_of(parsed, "refusal") == "Nope." and text_of(parsed) == "Nope."


def test_a_final_text_that_goes_on_past_its_deltas_sends_the_rest() -> None:
    # the deltas stopped short of the part's final text, under the same item:
    # the rest goes out (once, though the item and the output say it again);
    # as under another item id, and as the collected answer has it
    final = [msg_done([_part("Use dnf install.")])["item"]]
    events = [CREATED, msg_added(), text_delta("Use dnf"),
              {"type": "response.output_text.done", "item_id": "msg_1", "output_index": 0,
               "content_index": 0, "text": "Use dnf install."},
              msg_done([_part("Use dnf install.")]), completed(final)]  # fmt: skip
    _, parsed = run(events)
    assert [d.get("content") for d in deltas(parsed)][1:3] == ["Use dnf", " install."]
    assert text_of(parsed) == "Use dnf install."


def test_a_final_text_at_another_items_place_sends_no_tail() -> None:
    # the output left the first message out, so the second is at position 0,
    # where the first's deltas streamed: its own deltas are what it is
    # compared with, not another item's
    second = msg_done([_part("The answer is 42.")], item="msg_2", index=1)["item"]
    events = [CREATED, msg_added(), text_delta("The"), msg_added("msg_2", 1),
              text_delta("The answer is 42.", "msg_2", 1), completed([second])]  # fmt: skip
    _, parsed = run(events)
    assert text_of(parsed) == "TheThe answer is 42."


def test_a_final_text_that_does_not_start_with_its_deltas_is_not_sent() -> None:
    # a backend may tidy its final text: what streamed stands
    events = [CREATED, msg_added(), text_delta("Use  dnf "), msg_done([_part("Use dnf")]),
              completed([msg_done([_part("Use dnf")])["item"]])]  # fmt: skip
    _, parsed = run(events)
    assert text_of(parsed) == "Use  dnf "


def test_reasoning_text_parts_only_in_the_final_message_item() -> None:
    # Llama Stack puts a reasoning model's thoughts in the message: shown as
    # reasoning_content when no delta streamed them, as the collected answer does
    item = msg_done([_part("Use dnf."), {"type": "reasoning_text", "text": "User wants dnf."}])
    events = [CREATED, msg_added(), text_delta("Use dnf."), item, completed([item["item"]])]
    _, parsed = run(events)
    assert text_of(parsed, "reasoning_content") == "User wants dnf."
    assert text_of(parsed) == "Use dnf."
    collected = responses_to_chat(completed([item["item"]])["response"], "m")
    assert collected["choices"][0]["message"]["reasoning_content"] == "User wants dnf."


def test_reasoning_text_parts_of_a_message_that_streamed_are_not_sent_again() -> None:
    item = msg_done([{"type": "reasoning_text", "text": "Thinking."}, _part("Hi")])
    thought = {"type": "response.reasoning_text.delta", "item_id": "msg_1", "output_index": 0,
               "content_index": 0, "delta": "Thinking."}  # fmt: skip
    events = [CREATED, msg_added(), thought, text_delta("Hi", part=1), item,
              completed([item["item"]])]  # fmt: skip
    _, parsed = run(events)
    assert text_of(parsed, "reasoning_content") == "Thinking."
    assert text_of(parsed) == "Hi"


def test_a_message_item_whose_content_is_a_string() -> None:
    # Lightspeed's shield (some releases): no deltas, the item's content a string
    item = {"type": "message", "id": "msg_1", "role": "assistant", "content": "Out of scope."}
    events = [CREATED, {"type": "response.output_item.added", "output_index": 0, "item": item},
              {"type": "response.output_item.done", "output_index": 0, "item": item},
              completed([item])]  # fmt: skip
    _, parsed = run(events)
    assert text_of(parsed) == "Out of scope." and finish_reasons(parsed) == ["stop"]


def test_interleaved_parallel_calls_stay_contiguous() -> None:
    events = [CREATED,
              call_added("fc_a", "call_a", "alpha", 0), call_added("fc_b", "call_b", "beta", 1),
              args_delta("fc_b", '{"b":', 1), args_delta("fc_a", '{"a":', 0),
              args_delta("fc_b", "2}", 1), args_delta("fc_a", "1}", 0),
              args_done("fc_b", '{"b":2}', 1), args_done("fc_a", '{"a":1}', 0),
              call_done("fc_a", "call_a", "alpha", '{"a":1}', 0),
              call_done("fc_b", "call_b", "beta", '{"b":2}', 1), completed()]  # fmt: skip
    _, parsed = run(events)
    order = [f["index"] for d in deltas(parsed) for f in d.get("tool_calls", [])]
    assert order == sorted(order)  # every fragment of call 0, then every fragment of call 1
    assert tool_calls_of(parsed) == [
        {"id": "call_a", "name": "alpha", "arguments": '{"a":1}'},
        {"id": "call_b", "name": "beta", "arguments": '{"b":2}'},
    ]


def test_held_back_call_flushed_at_terminal() -> None:
    events = [CREATED, call_added("fc_a", "call_a", "alpha", 0),
              call_added("fc_b", "call_b", "beta", 1), args_delta("fc_b", "{}", 1),
              args_delta("fc_a", "[]", 0)]  # fmt: skip
    st = StreamTranslator(model="m", include_usage=False)
    held = [f for e in events for f in st.feed(e)]
    assert [c["id"] for c in tool_calls_of(parse_frames(held))] == ["call_a"]
    parsed = parse_frames(held + st.feed(completed()))
    assert tool_calls_of(parsed) == [
        {"id": "call_a", "name": "alpha", "arguments": "[]"},
        {"id": "call_b", "name": "beta", "arguments": "{}"},
    ]
    assert finish_reasons(parsed) == ["tool_calls"]


def test_held_back_arguments_are_bounded() -> None:
    # a call waiting behind an unfinished one holds its deltas; a backend that
    # streams without end for it ends the stream with an error once the held
    # characters pass max_held, not a proxy that keeps them all
    st = StreamTranslator(model="m", include_usage=False, max_held=1000)
    events = [CREATED, call_added("fc_a", "call_a", "alpha", 0), args_delta("fc_a", "{", 0),
              call_added("fc_b", "call_b", "beta", 1)]  # fmt: skip
    frames = [f for e in events for f in st.feed(e)]
    for _ in range(10):  # 1,000 characters held: still going
        frames += st.feed(args_delta("fc_b", "x" * 100, 1))
    assert not st.done
    frames += st.feed(args_delta("fc_b", "x", 1))
    assert st.done and st.feed(args_delta("fc_b", "x", 1)) == []
    assert tool_calls_of(parse_frames(frames)) == [
        {"id": "call_a", "name": "alpha", "arguments": "{"}
    ]
    error = json.loads(frames[-2][len(b"data: ") :])["error"]
    assert error["code"] == "upstream_protocol_error"
    assert error["message"] == (
        "backend held back more than 1000 characters of tool-call arguments "
        "behind an unfinished call (backend.max_event_size)"
    )
    assert frames[-1] == b"data: [DONE]\n\n"


def test_held_back_arguments_count_down_as_they_go_out() -> None:
    # what a call held goes out when it opens, and no longer counts: two calls
    # interleaved, each held in turn below the bound, pass whole
    st = StreamTranslator(model="m", include_usage=False, max_held=150)
    events = [CREATED, call_added("fc_a", "call_a", "alpha", 0),
              call_added("fc_b", "call_b", "beta", 1), args_delta("fc_b", "b" * 100, 1),
              args_done("fc_a", "", 0), call_added("fc_c", "call_c", "gamma", 2),
              args_delta("fc_c", "c" * 100, 2), completed()]  # fmt: skip
    parsed = parse_frames([f for e in events for f in st.feed(e)])
    assert [c["arguments"] for c in tool_calls_of(parsed)] == ["", "b" * 100, "c" * 100]
    assert finish_reasons(parsed) == ["tool_calls"]


def test_terminal_output_fills_what_never_streamed() -> None:
    out = [msg_done([{"type": "output_text", "text": "late text"}])["item"],
           call_item("fc_q", "call_q", "q", '{"late":true}')]  # fmt: skip
    _, parsed = run([CREATED, completed(out)])
    assert text_of(parsed) == "late text"
    assert tool_calls_of(parsed) == [{"id": "call_q", "name": "q", "arguments": '{"late":true}'}]


def test_logprobs_passed_on() -> None:
    lp = [{"token": "x", "logprob": -0.5, "bytes": [120], "top_logprobs": []}]
    event = {**text_delta("x"), "logprobs": lp}
    _, parsed = run([CREATED, event, completed()])
    chunk = chunks_of(parsed)[1]
    assert chunk["choices"][0]["logprobs"] == {"content": lp, "refusal": None}


def test_logprobs_of_a_delta_get_the_keys_chat_requires() -> None:
    # a text delta's Logprob may lack bytes and top_logprobs (and a top one its
    # logprob); OpenAI's ChatCompletionTokenLogprob always has both keys
    lp = [
        {"token": "Hel", "logprob": -0.1},
        {
            "token": "lo",
            "logprob": -0.2,
            "top_logprobs": [{"token": "lo"}, {"token": "w", "logprob": -3}],
        },
        {"logprob": -1.0},  # no token: left out
    ]
    _, parsed = run([CREATED, {**text_delta("Hello"), "logprobs": lp}, completed()])
    chunk = chunks_of(parsed)[1]
    assert chunk["choices"][0]["logprobs"] == {
        "content": [
            {"token": "Hel", "logprob": -0.1, "bytes": None, "top_logprobs": []},
            {"token": "lo", "logprob": -0.2, "bytes": None,
             "top_logprobs": [{"token": "w", "logprob": -3, "bytes": None}]},
        ],
        "refusal": None,
    }  # fmt: skip
    ChatCompletionChunk.model_validate(chunk)
    token = chunk["choices"][0]["logprobs"]["content"][0]
    ChatCompletionTokenLogprob.model_validate(token, strict=True)


def test_error_frames_for_io_failure_are_idempotent() -> None:
    st = StreamTranslator(model="m", include_usage=True)
    st.feed(CREATED)
    started = st.feed(text_delta("x"))
    assert st.started and not st.done and len(started) == 2
    frames = st.error_frames(UpstreamTimeout("backend went quiet"))
    parsed = parse_frames(frames)
    assert parsed[0] == UpstreamTimeout("backend went quiet").to_dict()
    assert parsed[1] == "[DONE]"
    assert st.done and st.error_frames(UpstreamTimeout("again")) == [] and st.finish() == []


# --- captures -----------------------------------------------------------------------------------

CAPTURES = ["lcs_stream_text.sse", "lcs_stream_tool.sse", "lcs_stream_tool_followup.sse",
            "ogx_stream_text.sse"]  # fmt: skip


@pytest.mark.parametrize("name", CAPTURES)
@pytest.mark.parametrize("include_usage", [True, False])
def test_capture_replay(name: str, include_usage: bool) -> None:
    events = capture_events(name)
    _, parsed = run(events, include_usage=include_usage)
    assert_well_formed(parsed)
    expected_text = "".join(e["delta"] for e in events if e["type"] == "response.output_text.delta")
    assert text_of(parsed) == expected_text
    done_calls = [e["item"] for e in events if e["type"] == "response.output_item.done"
                  and e["item"]["type"] == "function_call"]  # fmt: skip
    assert tool_calls_of(parsed) == [
        {"id": c["call_id"], "name": c["name"], "arguments": c["arguments"]} for c in done_calls
    ]
    assert finish_reasons(parsed) == ["tool_calls" if done_calls else "stop"]
    terminal = events[-1]["response"]
    first = chunks_of(parsed)[0]
    assert (first["id"], first["created"]) == (terminal["id"], terminal["created_at"])
    if include_usage:
        usage = parsed[-2]["usage"]
        assert parsed[-2]["choices"] == []
        assert (usage["prompt_tokens"], usage["completion_tokens"], usage["total_tokens"]) == (
            terminal["usage"]["input_tokens"], terminal["usage"]["output_tokens"],
            terminal["usage"]["total_tokens"])  # fmt: skip


def test_context_too_long_capture_raises_before_commit() -> None:
    events = capture_events("err_CTX_TOO_LONG_stream_true.txt")
    st = StreamTranslator(model="m", include_usage=True)
    with pytest.raises(ContextLengthExceeded) as info:
        for event in events:
            assert st.feed(event) == []
    err = info.value
    assert err.message == events[-1]["response"]["error"]["message"]
    assert (err.status, err.type, err.code) == (400, "invalid_request_error",
                                                "context_length_exceeded")  # fmt: skip
    assert not st.started
    assert json.loads(err.to_json())["error"]["code"] == "context_length_exceeded"


def test_capture_truncated_mid_stream() -> None:
    # A backend exception truncates the body: no terminal event, no [DONE].
    events = capture_events("lcs_stream_text.sse")
    cut = [e for e in events if e["type"] != "response.completed"]
    _, parsed = run(cut)
    expected = "".join(e["delta"] for e in cut if e["type"] == "response.output_text.delta")
    assert text_of(parsed) == expected
    assert "ended early" in parsed[-2]["error"]["message"]
    assert finish_reasons(parsed) == [] and parsed[-1] == "[DONE]"


# --- a plain JSON answer for a streaming client ----------------------------------------------


@pytest.mark.parametrize("name", ["lcs_nonstream_text.json", "lcs_nonstream_tool.json"])
def test_events_from_response_streams_a_json_answer(name: str) -> None:
    resp = fixture_json(name)
    _, parsed = run(events_from_response(resp), include_usage=True)
    assert_well_formed(parsed)
    expected = responses_to_chat(resp, "goose-model")["choices"][0]
    assert text_of(parsed) == (expected["message"]["content"] or "")
    assert tool_calls_of(parsed) == [
        {"id": t["id"], "name": t["function"]["name"], "arguments": t["function"]["arguments"]}
        for t in expected["message"].get("tool_calls", [])
    ]
    assert finish_reasons(parsed) == [expected["finish_reason"]]
    first = chunks_of(parsed)[0]
    assert (first["id"], first["created"]) == (resp["id"], resp["created_at"])


def test_events_from_response_incomplete_and_failed() -> None:
    cut = {**RESP, "status": "incomplete", "incomplete_details": {"reason": "max_output_tokens"},
           "output": [msg_done([{"type": "output_text", "text": "par"}])["item"]]}  # fmt: skip
    _, parsed = run(events_from_response(cut))
    assert text_of(parsed) == "par" and finish_reasons(parsed) == ["length"]
    failed = {**RESP, "status": "failed", "error": {"code": "server_error",
                                                   "message": "prompt is too long"}}  # fmt: skip
    st = StreamTranslator(model="m", include_usage=False)
    with pytest.raises(ContextLengthExceeded):
        for event in events_from_response(failed):
            st.feed(event)
    assert not st.started
    with pytest.raises(UpstreamProtocolError):
        events_from_response([])  # type: ignore[arg-type]


def test_the_backends_own_search_is_not_a_tool_call_for_the_client() -> None:
    # Llama Stack (0.6, as its sources read) streams the arguments of its
    # own knowledge_search as function_call_arguments deltas of an item it never
    # announces, then shows the call as a file_search_call item
    search = {"type": "file_search_call", "id": "fc_1", "queries": ["q"], "status": "completed"}
    answer = msg_done([{"type": "output_text", "text": "answer"}])["item"]
    events = [
        CREATED,
        {"type": "response.function_call_arguments.delta", "item_id": "fc_1", "output_index": 0,
         "delta": '{"q": 1}'},
        {"type": "response.function_call_arguments.done", "item_id": "fc_1", "output_index": 0,
         "arguments": '{"q": 1}'},
        {"type": "response.output_item.added", "output_index": 0, "item": search},
        {"type": "response.output_item.done", "output_index": 0, "item": search},
        msg_added(),
        text_delta("answer"),
        completed([search, answer]),
    ]  # fmt: skip
    _, parsed = run(events)
    assert tool_calls_of(parsed) == [] and finish_reasons(parsed) == ["stop"]
    assert text_of(parsed) == "answer"
    assert "tool_calls" not in responses_to_chat(accumulate(events), "m")["choices"][0]["message"]


def test_a_held_surrogate_half_is_not_lost_when_the_stream_breaks() -> None:
    # the stream ends early or fails after the first half of a pair: it still
    # goes out, as all text that came (as U+FFFD: a lone half is no character)
    for end in ("finish", "error"):
        st = StreamTranslator(model="m", include_usage=False)
        frames = st.feed(CREATED) + st.feed(text_delta("A\ud83c"))
        frames += st.finish() if end == "finish" else st.error_frames(UpstreamTimeout("t"))
        assert text_of(parse_frames(frames)) == "A\ufffd"


def test_a_surrogate_half_with_logprobs_is_not_held() -> None:
    # holding it would part it from its logprobs
    lp = [{"token": "h1", "logprob": -0.1, "bytes": [], "top_logprobs": []}]
    _, parsed = run([CREATED, {**text_delta("\ud83c"), "logprobs": lp},
                     text_delta("\udf0d"), completed()])  # fmt: skip
    sent = [c["choices"][0].get("logprobs") for c in chunks_of(parsed) if c["choices"]]
    assert {"content": lp, "refusal": None} in sent
    assert text_of(parsed) == "\ufffd\ufffd"  # each half alone, in its own chunk


def test_arguments_cut_inside_a_pair_are_completed_from_the_done_event() -> None:
    # the deltas stop after the first half; .done has the whole text, where the
    # pair is one character: the rest goes out from there, the half with it
    final = '{"s": "a\U0001f600b"}'
    events = [CREATED, call_added("fc_1", "c1", "f", 0), args_delta("fc_1", '{"s": "a\ud83d', 0),
              args_done("fc_1", final, 0), completed()]  # fmt: skip
    _, parsed = run(events)
    assert [c["arguments"] for c in tool_calls_of(parsed)] == [final]
    pieces = [
        f["function"].get("arguments") for d in deltas(parsed) for f in d.get("tool_calls", [])
    ]
    assert not any("\ud800" <= c <= "\udfff" for p in pieces if p for c in p)


def test_held_halves_of_every_kind_go_out_when_the_stream_breaks() -> None:
    # a half nothing completes is still what came: sent (as U+FFFD) before the error
    reasoning = {"type": "response.reasoning_summary_text.delta", "item_id": "rs_1",
                 "output_index": 0, "summary_index": 0, "delta": "think\ud83c"}  # fmt: skip
    refusal = {"type": "response.refusal.delta", "item_id": "msg_1", "output_index": 1,
               "content_index": 0, "delta": "no\ud83c"}  # fmt: skip
    st = StreamTranslator(model="m", include_usage=False)
    frames = st.feed(CREATED) + st.feed(reasoning) + st.feed(refusal)
    frames += st.error_frames(UpstreamTimeout("t"))
    parsed = parse_frames(frames)
    assert text_of(parsed, "reasoning_content") == "think\ufffd"
    assert text_of(parsed, "refusal") == "no\ufffd" == text_of(parsed)


@pytest.mark.parametrize("where", ["output_text.done", "content_part.done", "completed"])
def test_logprobs_of_text_that_came_whole_are_kept(where: str) -> None:
    # a backend that sends the text only whole (no deltas): the stream carries
    # its logprobs as the non-streamed answer does
    lp = [{"token": "Hi", "logprob": -0.1, "bytes": [72, 105], "top_logprobs": []}]
    part = {"type": "output_text", "text": "Hi", "annotations": [], "logprobs": lp}
    done = {
        "output_text.done": {"type": "response.output_text.done", "item_id": "msg_1",
                             "output_index": 0, "content_index": 0, "text": "Hi", "logprobs": lp},
        "content_part.done": {"type": "response.content_part.done", "item_id": "msg_1",
                              "output_index": 0, "content_index": 0, "part": part},
    }  # fmt: skip
    events = [CREATED, msg_added(), *([done[where]] if where in done else []),
              completed([msg_done([part])["item"]])]  # fmt: skip
    _, parsed = run(events)
    sent = [c["choices"][0].get("logprobs") for c in chunks_of(parsed) if c["choices"]]
    assert {"content": lp, "refusal": None} in sent and text_of(parsed) == "Hi"
    whole = responses_to_chat(events[-1]["response"], "m")["choices"][0]["logprobs"]
    assert whole == {"content": lp, "refusal": None}


@pytest.mark.parametrize("final", ["{}", '{"path":'])
def test_a_queued_calls_deltas_win_over_a_done_that_disagrees(final: str) -> None:
    # the same arguments whether the call was open or queued behind another
    # when its .done came: the deltas, and from .done only a missing tail
    def events(queued: bool) -> list[dict[str, Any]]:
        opening = [call_added("fc_a", "call_a", "a", 0)] if queued else []
        return [CREATED, *opening, call_added("fc_b", "call_b", "b", 1),
                args_delta("fc_b", '{"path":"/etc/hosts"}', 1), args_done("fc_b", final, 1),
                completed()]  # fmt: skip

    for queued in (False, True):
        _, parsed = run(events(queued))
        got = {c["id"]: c["arguments"] for c in tool_calls_of(parsed)}
        assert got["call_b"] == '{"path":"/etc/hosts"}', queued


@pytest.mark.parametrize("queued", [False, True], ids=["open", "queued"])
def test_arguments_past_the_budget_are_not_kept(queued: bool) -> None:
    # a call's deltas are kept only to complete it from its final arguments;
    # past KEPT_ARGUMENTS (all open calls together) they are let go and the
    # deltas are all of it, so a runaway call does not grow the proxy
    piece = '"' + "x" * 65_534 + '"'
    n = KEPT_ARGUMENTS // len(piece) + 4
    whole = "".join([piece] * n)
    st = StreamTranslator(model="m", include_usage=False)
    frames = [f for e in [CREATED, *([call_added("fc_a", "call_a", "a", 0)] if queued else []),
                          call_added("fc_b", "call_b", "b", 1)] for f in st.feed(e)]  # fmt: skip
    most = 0
    for _ in range(n):
        frames += st.feed(args_delta("fc_b", piece, 1))
        most = max(most, sum(len(t) for c in st._calls._calls for t in c.received))
    for e in (args_done("fc_b", whole + "TAIL", 1), completed()):
        frames += st.feed(e)
    frames += st.finish()
    assert most <= KEPT_ARGUMENTS
    got = {c["id"]: c["arguments"] for c in tool_calls_of(parse_frames(frames))}
    assert got["call_b"] == whole  # every delta, once; no tail taken from the end
    # below the budget a final that the deltas begin still lends its tail
    _, parsed = run(
        [
            CREATED,
            call_added("fc_c", "call_c", "c", 0),
            args_delta("fc_c", '{"a":', 0),
            args_done("fc_c", '{"a":1}', 0),
            completed(),
        ]
    )
    assert {c["id"]: c["arguments"] for c in tool_calls_of(parsed)} == {"call_c": '{"a":1}'}


# --- the deprecated `functions`: the answer in the legacy function_call shape ----------------


def legacy_run(
    events: list[dict[str, Any]], include_usage: bool = False
) -> tuple[StreamTranslator, list[Any]]:
    """Feed events to a translator for a client that sent ``functions``; check every
    chunk against the openai SDK's types and that no chunk carries ``tool_calls``."""
    st = StreamTranslator(model="goose-model", include_usage=include_usage, legacy_functions=True)
    frames = [f for e in events for f in st.feed(e)] + st.finish()
    parsed = parse_frames(frames)
    assert_well_formed(parsed)
    for chunk in chunks_of(parsed):
        ChatCompletionChunk.model_validate(chunk)
    assert all("tool_calls" not in d for d in deltas(parsed))
    return st, parsed


def sdk_final(parsed: list[Any]) -> Any:
    """The message the openai SDK's own stream accumulator rebuilds from the chunks."""
    state: Any = ChatCompletionStreamState()
    for chunk in chunks_of(parsed):
        state.handle_chunk(ChatCompletionChunk.model_validate(chunk))
    return state.get_final_completion().choices[0]


def test_legacy_call_after_text_is_a_function_call() -> None:
    events = [CREATED, msg_added(), text_delta("Let me check."),
              msg_done([{"type": "output_text", "text": "Let me check."}]),
              call_added("fc_a", "call_a", "get_weather", 1),
              args_delta("fc_a", '{"city":', 1), args_delta("fc_a", '"Paris"}', 1),
              args_done("fc_a", '{"city":"Paris"}', 1),
              call_done("fc_a", "call_a", "get_weather", '{"city":"Paris"}', 1),
              completed()]  # fmt: skip
    st, parsed = legacy_run(events)
    assert deltas(parsed) == [
        {"role": "assistant", "content": ""},
        {"content": "Let me check."},
        {"function_call": {"name": "get_weather", "arguments": ""}},
        {"function_call": {"arguments": '{"city":'}},
        {"function_call": {"arguments": '"Paris"}'}},
        {},
    ]
    assert finish_reasons(parsed) == ["function_call"] and st.calls_left_out == 0
    choice = sdk_final(parsed)
    assert choice.finish_reason == "function_call"
    assert choice.message.content == "Let me check." and choice.message.tool_calls is None
    assert choice.message.function_call.model_dump() == {
        "name": "get_weather", "arguments": '{"city":"Paris"}'}  # fmt: skip


@pytest.mark.parametrize("b_first", [True, False])
def test_legacy_interleaved_calls_carry_the_first_intact(b_first: bool) -> None:
    # the second call's deltas (and, when b_first, its end) come before the first's
    b_events = [args_delta("fc_b", '{"b":', 1), args_delta("fc_b", "2}", 1),
                args_done("fc_b", '{"b":2}', 1)]  # fmt: skip
    a_events = [args_delta("fc_a", '{"a":', 0), args_delta("fc_a", "1}", 0),
                args_done("fc_a", '{"a":1}', 0)]  # fmt: skip
    mixed = [x for pair in zip(b_events, a_events) for x in (pair if b_first else pair[::-1])]
    events = [CREATED, call_added("fc_a", "call_a", "alpha", 0),
              call_added("fc_b", "call_b", "beta", 1), *mixed,
              call_done("fc_b", "call_b", "beta", '{"b":2}', 1),
              call_done("fc_a", "call_a", "alpha", '{"a":1}', 0), completed()]  # fmt: skip
    st, parsed = legacy_run(events)
    calls = [d["function_call"] for d in deltas(parsed) if "function_call" in d]
    assert calls[0] == {"name": "alpha", "arguments": ""}
    assert all(set(c) == {"arguments"} for c in calls[1:])
    assert "".join(c["arguments"] for c in calls) == '{"a":1}'
    assert st.calls_left_out == 1 and finish_reasons(parsed) == ["function_call"]
    assert sdk_final(parsed).message.function_call.arguments == '{"a":1}'


def test_legacy_arguments_only_in_done() -> None:
    events = [CREATED, call_added("fc_a", "call_a", "f", 0), args_done("fc_a", '{"x":1}', 0),
              call_done("fc_a", "call_a", "f", '{"x":1}', 0), completed()]  # fmt: skip
    _, parsed = legacy_run(events)
    assert deltas(parsed) == [
        {"role": "assistant", "content": None},  # as OpenAI: no text before the call
        {"function_call": {"name": "f", "arguments": ""}},
        {"function_call": {"arguments": '{"x":1}'}},
        {},
    ]
    assert finish_reasons(parsed) == ["function_call"]


def test_legacy_calls_only_in_the_terminal_output() -> None:
    # a JSON answer to a stream request goes this way (events_from_response)
    out = [msg_done([{"type": "output_text", "text": "Sure."}])["item"],
           call_item("fc_a", "call_a", "alpha", '{"a":1}'),
           call_item("fc_b", "call_b", "beta", '{"b":2}')]  # fmt: skip
    st, parsed = legacy_run([CREATED, completed(out)])
    choice = sdk_final(parsed)
    assert choice.message.content == "Sure."
    assert choice.message.function_call.model_dump() == {"name": "alpha", "arguments": '{"a":1}'}
    assert st.calls_left_out == 1 and choice.finish_reason == "function_call"


def test_legacy_usage_chunk_and_usage_null_on_every_other_chunk() -> None:
    usage = {"input_tokens": 10, "output_tokens": 5, "total_tokens": 15}
    events = [CREATED, call_added("fc_a", "call_a", "f", 0), args_delta("fc_a", "{}", 0),
              call_done("fc_a", "call_a", "f", "{}", 0), completed(usage=usage)]  # fmt: skip
    _, parsed = legacy_run(events, include_usage=True)
    chunks = chunks_of(parsed)
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"] == {
        "prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}  # fmt: skip
    assert all(c["usage"] is None for c in chunks[:-1])
    assert chunks[-2]["choices"][0] == {"index": 0, "delta": {}, "finish_reason": "function_call"}


@pytest.mark.parametrize(
    ("terminal", "expected"),
    [("completed", "stop"), ("incomplete", "length")],
)
def test_legacy_without_a_call_or_cut_short_keeps_its_finish(terminal: str, expected: str) -> None:
    end = completed() if terminal == "completed" else {
        "type": "response.incomplete",
        "response": {**RESP, "status": "incomplete", "output": [],
                     "incomplete_details": {"reason": "max_output_tokens"}}}  # fmt: skip
    events = [CREATED, text_delta("Hi")]
    if terminal == "incomplete":  # cut inside a call's arguments
        events += [call_added("fc_a", "call_a", "f", 1), args_delta("fc_a", '{"x":', 1)]
    _, parsed = legacy_run([*events, end])
    assert finish_reasons(parsed) == [expected]


# A backend loose about item ids: the text streamed under one key (or none) and
# the final item under another. The final part is compared with what streamed at
# its place (output_index, content_index): the same text is not sent again.
def _without_item_id(event: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in event.items() if k != "item_id"}


_PART = _part("Hello there")


@pytest.mark.parametrize(
    "events",
    [
        pytest.param(  # deltas without item_id, no output_item.added/done
            [_without_item_id(text_delta("Hello ")), _without_item_id(text_delta("there")),
             completed([msg_done([_PART], item="msg_final")["item"]])],
            id="deltas-without-id",
        ),
        pytest.param(  # deltas under one id, the final item under another
            [text_delta("Hello "), text_delta("there"),
             completed([msg_done([_PART], item="msg_other")["item"]])],
            id="ids-differ",
        ),
        pytest.param(  # the final item without an id
            [text_delta("Hello "), text_delta("there"),
             completed([{k: v for k, v in msg_done([_PART])["item"].items() if k != "id"}])],
            id="final-without-id",
        ),
        pytest.param(  # the part's done event under another id, then the end
            [text_delta("Hello "), text_delta("there"),
             {"type": "response.output_text.done", "item_id": "msg_x", "output_index": 0,
              "content_index": 0, "text": "Hello there"},
             msg_done([_PART], item="msg_x"), completed([msg_done([_PART], item="msg_x")["item"]])],
            id="done-events-differ",
        ),
    ],
)  # fmt: skip
def test_streamed_text_is_not_sent_again_when_the_ids_do_not_match(
    events: list[dict[str, Any]],
) -> None:
    _, parsed = run([CREATED, *events])
    assert_well_formed(parsed)
    assert text_of(parsed) == "Hello there"
    assert finish_reasons(parsed) == ["stop"]


def test_an_unstreamed_item_at_another_position_is_still_sent() -> None:
    # only the place where text streamed is compared
    second = _part("Second.")
    final = [msg_done([_PART], item="msg_a")["item"], msg_done([second], item="msg_b")["item"]]
    _, parsed = run([CREATED, _without_item_id(text_delta("Hello there")), completed(final)])
    assert text_of(parsed) == "Hello thereSecond."


#: an item a backend puts before the message in its final output (an MCP server's)
_LISTED_TOOLS = {"type": "mcp_list_tools", "id": "mcpl_1", "server_label": "s", "tools": []}


def _final(item: Optional[str], text: str) -> dict[str, Any]:
    done = msg_done([_part(text)], item=item or "")["item"]
    return done if item else {k: v for k, v in done.items() if k != "id"}


@pytest.mark.parametrize(
    ("events", "text"),
    [
        pytest.param(  # announced as A, the deltas under B, done as A
            [msg_added("A"), text_delta("Hello", item="B"), text_delta(" world", item="B"),
             msg_done([_part("Hello world")], item="A"), completed([_final("A", "Hello world")])],
            "Hello world", id="added-A-deltas-B-done-A",
        ),
        pytest.param(  # a delta without item_id before the item is announced
            [_without_item_id(text_delta("Hi")), msg_added("A"),
             msg_done([_part("Hi")], item="A"), completed([_final("A", "Hi")])],
            "Hi", id="delta-before-added",
        ),
        pytest.param(  # deltas without output_index, under the announced id; done as B
            [msg_added("A"), {k: v for k, v in text_delta("Hello", item="A").items()
                              if k != "output_index"},
             msg_done([_part("Hello")], item="B"), completed([_final("B", "Hello")])],
            "Hello", id="deltas-without-output-index",
        ),
        pytest.param(  # the final item says more than streamed: only the rest is sent
            [text_delta("Hel"), completed([_final("other", "Hello world")])],
            "Hello world", id="final-has-the-rest",
        ),
        pytest.param(  # the final item at that place says something else: shown too
            [text_delta("Hello"), completed([_final(None, "I cannot answer that")])],
            "HelloI cannot answer that", id="final-says-something-else",
        ),
        pytest.param(  # the items renumbered at the end: the new one is shown
            [text_delta("Hello", item="msg_a"),
             completed([_final("msg_b", "Prefix note"), _final("msg_a", "Hello")])],
            "HelloPrefix note", id="renumbered",
        ),
        pytest.param(  # deltas that name neither item nor index, then the end
            [_placeless(text_delta("Hel")), _placeless(text_delta("lo")),
             completed([_final("A", "Hello")])],
            "Hello", id="placeless-deltas",
        ),
        pytest.param(  # the same after the item was announced and done
            [msg_added("A"), _placeless(text_delta("Hel")), _placeless(text_delta("lo")),
             msg_done([_part("Hello")], item="A"), completed([_final("A", "Hello")])],
            "Hello", id="announced-then-placeless-deltas",
        ),
        pytest.param(  # two messages' placeless deltas in one run: each takes its own
            [_placeless(text_delta("First. ")), _placeless(text_delta("Second.")),
             completed([_final("A", "First. "), msg_done([_part("Second.")], item="B",
                                                          index=1)["item"]])],
            "First. Second.", id="two-placeless-messages-at-the-end",
        ),
        pytest.param(  # each message done before the next one's placeless deltas
            [_placeless(text_delta("Hello")), msg_done([_part("Hello")], item="A"),
             _placeless(text_delta("Hello")), msg_done([_part("Hello")], item="B", index=1),
             completed([_final("A", "Hello"), msg_done([_part("Hello")], item="B",
                                                       index=1)["item"]])],
            "HelloHello", id="placeless-deltas-matched-once",
        ),
        pytest.param(  # placeless deltas, then a final part that says something else
            [_placeless(text_delta("Hello")), completed([_final("A", "I cannot answer that")])],
            "HelloI cannot answer that", id="placeless-then-something-else",
        ),
        pytest.param(  # the final output renames and moves the message (an item first)
            [text_delta("The answer ", item="A"), text_delta("is 42.", item="A"),
             completed([_LISTED_TOOLS, _final("B", "The answer is 42.")])],
            "The answer is 42.", id="renamed-and-moved",
        ),
        pytest.param(  # ... and says more than streamed: only the rest is sent
            [text_delta("The answer", item="A"),
             completed([_LISTED_TOOLS, _final("B", "The answer is 42.")])],
            "The answer is 42.", id="renamed-and-moved-with-the-rest",
        ),
        pytest.param(  # the streamed text is taken by one final part only
            [text_delta("Yes.", item="A"),
             completed([_LISTED_TOOLS, _final("B", "Yes."), _final("C", "Yes.")])],
            "Yes.Yes.", id="renamed-and-moved-matched-once",
        ),
        pytest.param(  # an item still in the output keeps its text: a new one is sent
            [text_delta("Hi", item="A"),
             completed([_final("A", "Hi"), _final("Z", "Hi there")])],
            "HiHi there", id="kept-item-then-a-new-one",
        ),
        pytest.param(  # ... in whatever order the output lists them
            [text_delta("Hi", item="A", index=1),
             completed([_final("Z", "Hi there"), _final("A", "Hi")])],
            "HiHi there", id="new-item-before-the-kept-one",
        ),
        pytest.param(  # shown by its .done event, then renamed in the terminal output
            [msg_added("A"), msg_done([_part("Shield says no.")], item="A"),
             completed([_final("A_final", "Shield says no.")])],
            "Shield says no.", id="shown-by-done-then-renamed",
        ),
        pytest.param(  # the streamed item moved, a new one at its place starts the same
            [text_delta("Hi", item="A"), completed([_final("Z", "Hi there"), _final("A", "Hi")])],
            "HiHi there", id="moved-and-a-new-one-starting-the-same-at-its-place",
        ),
        pytest.param(  # another item done at the streamed one's index, then one renamed
            [msg_added("A"), text_delta("First.", item="A"), msg_done([_part("Second.")], item="B"),
             completed([_final("A2", "First."), _final("B", "Second.")])],
            "First.Second.", id="done-at-the-wrong-index-then-renamed",
        ),
        pytest.param(  # a second item done at the first's (wrong) index
            [msg_added("msg_a"), text_delta("First.", item="msg_a"),
             msg_done([_part("Second.")], item="msg_b"),
             completed([_final("msg_a", "First."), _final("msg_b", "Second.")])],
            "First.Second.", id="second-item-at-the-same-index",
        ),
    ],
)  # fmt: skip
def test_a_final_part_is_sent_again_only_where_its_text_did_not_stream(
    events: list[dict[str, Any]], text: str
) -> None:
    # what streamed cannot be taken back: a final part that differs from it is
    # shown after it (nothing lost), one that repeats it is not sent again
    _, parsed = run([CREATED, *events])
    assert_well_formed(parsed)
    assert text_of(parsed) == text


def test_streamed_reasoning_is_not_sent_again_when_the_ids_do_not_match() -> None:
    delta = {"type": "response.reasoning_text.delta", "output_index": 0, "content_index": 0,
             "delta": "Thinking."}  # fmt: skip
    item = {"type": "reasoning", "id": "rs_final", "summary": [],
            "content": [{"type": "reasoning_text", "text": "Thinking."}]}  # fmt: skip
    part = _part("Answer.")
    _, parsed = run([CREATED, delta, text_delta("Answer.", index=1),
                     completed([item, msg_done([part], index=1)["item"]])])  # fmt: skip
    assert text_of(parsed, "reasoning_content") == "Thinking."
    assert text_of(parsed) == "Answer."


def test_interleaved_reasoning_text_and_summary_renamed_at_the_end_are_not_sent_again() -> None:
    # the final item has its text before its summary, whatever order they streamed in
    def delta(etype: str, text: str) -> dict[str, Any]:
        return {"type": f"response.reasoning_{etype}.delta", "item_id": "rs_1",
                "output_index": 0, "content_index": 0, "summary_index": 0,
                "delta": text}  # fmt: skip

    item = {"type": "reasoning", "id": "rs_final", "content": [{"type": "reasoning_text",
            "text": "Think."}], "summary": [{"type": "summary_text", "text": "Sum."}]}  # fmt: skip
    events = [CREATED, delta("summary_text", "Sum."), delta("text", "Think."), completed([item])]
    _, parsed = run(events)
    assert text_of(parsed, "reasoning_content") == "Sum.\n\nThink."


def test_placeless_reasoning_is_not_sent_again() -> None:
    delta = {"type": "response.reasoning_text.delta", "content_index": 0, "delta": "Thinking."}
    item = {"type": "reasoning", "id": "rs_final", "summary": [],
            "content": [{"type": "reasoning_text", "text": "Thinking."}]}  # fmt: skip
    _, parsed = run([CREATED, delta, completed([item])])
    assert text_of(parsed, "reasoning_content") == "Thinking."


def test_past_the_kept_text_a_final_part_that_starts_the_same_is_not_sent_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # only KEPT_TEXT characters of what streamed are kept to compare with
    import goose_proxy.translate.stream as stream_module

    monkeypatch.setattr(stream_module, "KEPT_TEXT", 10)
    deltas = [text_delta("abcdef", item="A") for _ in range(5)]
    _, same = run([CREATED, *deltas, completed([_final("B", "abcdef" * 5)])])
    _, other = run([CREATED, *deltas, completed([_final("B", "zzz")])])
    assert text_of(same) == "abcdef" * 5
    assert text_of(other) == "abcdef" * 5 + "zzz"


_UNPLACED = {"type": "response.output_text.delta", "content_index": 0, "logprobs": []}


@pytest.mark.parametrize(
    ("events", "text"),
    [
        pytest.param(  # vLLM (gpt-oss): a message at content index 1 after long reasoning
            [CREATED, *[{"type": "response.reasoning_text.delta", "item_id": "rs",
                         "output_index": 0, "content_index": 0, "delta": "think "}] * 3,
             *_vllm_numbered([1, 1], [1, 1], final_id="msg_renamed")],
            "Hello",
            id="vllm-numbered-message-after-the-budget",
        ),
        pytest.param(  # renamed at the end, its deltas kept up to the budget: the tail alone
            [CREATED, msg_added(), *[text_delta("abcdef") for _ in range(3)],
             completed([_final("B", "abcdef" * 3 + "TAIL")])],
            "abcdef" * 3 + "TAIL",
            id="a-final-longer-than-what-streamed",
        ),
        pytest.param(  # deltas with no item and no index: each part takes its own off the run
            [CREATED, *[{**_UNPLACED, "delta": d} for d in ("0123456789ab", "First.", "Second.")],
             completed([_final("A", "0123456789abFirst."), _final("B", "Second.")])],
            "0123456789abFirst.Second.",
            id="unplaced-deltas-for-two-parts",
        ),
    ],
)  # fmt: skip
def test_past_the_kept_text_what_streamed_is_counted(
    monkeypatch: pytest.MonkeyPatch, events: list[dict[str, Any]], text: str
) -> None:
    # past KEPT_TEXT the deltas are no longer kept but still counted, so a final
    # part at a place that streamed only then is not sent again (vLLM after
    # 262,144 characters of reasoning showed its answer twice)
    import goose_proxy.translate.stream as stream_module

    monkeypatch.setattr(stream_module, "KEPT_TEXT", 10)
    _, parsed = run(events)
    assert text_of(parsed) == text


def test_the_translator_keeps_few_enough_attributes_for_fast_access() -> None:
    # CPython (3.11, 3.12) shares an instance's attribute keys with its class
    # only up to 30 of them; past that every attribute read on the per-delta
    # path takes the slow way (measured: 7 % more per delta with 31)
    assert len(vars(StreamTranslator(model="m", include_usage=True))) <= 30


@pytest.mark.parametrize("include_usage", [False, True])
def test_the_tier_and_moderation_ride_on_the_finish_chunk(include_usage: bool) -> None:
    moderation = {"input": {"type": "moderation_results", "model": "mod", "results": []},
                  "output": {"type": "error", "code": "x", "message": "unavailable"}}  # fmt: skip
    _, parsed = run([CREATED, text_delta("Hi"),
                     completed(service_tier="priority", moderation=moderation)],
                    include_usage=include_usage)  # fmt: skip
    chunks = chunks_of(parsed)
    for chunk in chunks:
        ChatCompletionChunk.model_validate(chunk)
    carrying = [c for c in chunks if "service_tier" in c]
    finish = next(c for c in chunks if c["choices"] and c["choices"][0]["finish_reason"])
    assert carrying[0] is finish and len(carrying) == (2 if include_usage else 1)
    for chunk in carrying:
        assert (chunk["service_tier"], chunk["moderation"]) == ("priority", moderation)
    assert ("usage" in finish) is include_usage  # "usage": null, as on every other chunk


@pytest.mark.parametrize(
    ("answer", "reasoning", "refusal"),
    [
        (lambda: ls.reasoning(in_the_item=False), ls.THOUGHT, None),
        (ls.refused, None, "I can't help with that."),
        (ls.reasoning, ls.THOUGHT, None),  # (the parts in the final item too: not twice)
    ],
    ids=["thoughts", "refusal", "thoughts-in-the-item"],
)
def test_message_parts_the_final_message_leaves_out_reach_the_json_answer(
    answer: Any, reasoning: Optional[str], refusal: Optional[str]
) -> None:
    # Llama Stack streams a reasoning model's thoughts and a refusal as parts
    # of the message, then ends with the message's output_text alone: the JSON
    # answer showed neither (a refusal became an empty answer, "stop")
    events = answer()
    streamed = sdk_final(run(events)[1])
    chat = ChatCompletion.model_validate(responses_to_chat(accumulate(events), "m"))
    for choice in (streamed, chat.choices[0]):
        assert getattr(choice.message, "reasoning_content", None) == reasoning
        assert choice.message.refusal == refusal
        assert choice.message.content == (refusal or ls.ANSWER)  # (Goose reads no refusal)
    assert chat.choices[0].finish_reason == streamed.finish_reason
