"""Non-streaming responses: TRANSLATION.md §2, and the stream accumulator behind it."""

from __future__ import annotations

import copy
import time
from typing import Any

import pytest
from openai.types.chat import ChatCompletion
from translate_testkit import accumulate, capture_events, fixture_json

from goose_proxy.errors import (
    ContextLengthExceeded,
    ProxyError,
    RateLimited,
    UpstreamAnswerTooLarge,
    UpstreamError,
    UpstreamProtocolError,
)
from goose_proxy.translate import ResponseAccumulator, as_function_call, responses_to_chat
from goose_proxy.translate.response import (
    EXTRA_FIELDS,
    READ_FIELDS,
    check_finished,
    events_from_response,
)


def response(output: list[Any], **extra: Any) -> dict[str, Any]:
    base = {"id": "resp_1", "object": "response", "created_at": 1700000000.7, "model": "backend-m",
            "status": "completed", "error": None, "output": output}  # fmt: skip
    base.update(extra)
    return base


def message(*parts: dict[str, Any], item_id: str = "msg_1") -> dict[str, Any]:
    return {"type": "message", "id": item_id, "role": "assistant", "status": "completed",
            "content": list(parts)}  # fmt: skip


def text(value: str, **extra: Any) -> dict[str, Any]:
    return {"type": "output_text", "text": value, "annotations": [], **extra}


def call(call_id: str, name: str, arguments: str) -> dict[str, Any]:
    return {"type": "function_call", "id": "fc_" + call_id, "call_id": call_id, "name": name,
            "arguments": arguments, "status": "completed"}  # fmt: skip


def only_choice(completion: dict[str, Any]) -> dict[str, Any]:
    assert len(completion["choices"]) == 1 and completion["choices"][0]["index"] == 0
    return completion["choices"][0]


# --- fixtures -----------------------------------------------------------------------------


@pytest.mark.parametrize("client_model", ["goose-model", ""])
def test_fixture_text(client_model: str) -> None:
    resp = fixture_json("lcs_nonstream_text.json")
    got = responses_to_chat(resp, client_model)
    texts = [p["text"] for item in resp["output"] if item["type"] == "message"
             for p in item["content"] if p["type"] == "output_text"]  # fmt: skip
    assert got["id"] == resp["id"]
    assert got["object"] == "chat.completion"
    assert got["created"] == int(resp["created_at"])
    assert got["model"] == (client_model or resp["model"])
    choice = only_choice(got)
    assert choice["message"]["role"] == "assistant"
    assert choice["message"]["content"] == "".join(texts)
    assert choice["message"]["refusal"] is None
    assert "tool_calls" not in choice["message"]
    assert choice["finish_reason"] == "stop"
    usage = resp["usage"]
    assert got["usage"] == {
        "prompt_tokens": usage["input_tokens"],
        "completion_tokens": usage["output_tokens"],
        "total_tokens": usage["total_tokens"],
        "prompt_tokens_details": {"cached_tokens": usage["input_tokens_details"]["cached_tokens"]},
        "completion_tokens_details": {
            "reasoning_tokens": usage["output_tokens_details"]["reasoning_tokens"]
        },
    }


def test_fixture_tool() -> None:
    resp = fixture_json("lcs_nonstream_tool.json")
    choice = only_choice(responses_to_chat(resp, "goose-model"))
    calls = [i for i in resp["output"] if i["type"] == "function_call"]
    assert choice["message"]["content"] is None
    assert choice["message"]["tool_calls"] == [
        {"id": c["call_id"], "type": "function",
         "function": {"name": c["name"], "arguments": c["arguments"]}}
        for c in calls
    ]  # fmt: skip
    assert choice["finish_reason"] == "tool_calls"


# --- one case per §2 rule ----------------------------------------------------------------------


def test_text_joined_across_message_items_in_order() -> None:
    resp = response([message(text("Hello, "), text("world"), item_id="m1"),
                     {"type": "mcp_list_tools", "id": "l1", "server_label": "s", "tools": []},
                     message(text("!"), item_id="m2")])  # fmt: skip
    assert only_choice(responses_to_chat(resp, "m"))["message"]["content"] == "Hello, world!"


def test_refusal_parts() -> None:
    resp = response([message({"type": "refusal", "refusal": "I can't "}),
                     message({"type": "refusal", "refusal": "help."}, item_id="m2")])  # fmt: skip
    msg = only_choice(responses_to_chat(resp, "m"))["message"]
    # in content too: Goose reads only content, and would show an empty answer
    assert msg["refusal"] == "I can't help." and msg["content"] == "I can't help."


def test_an_empty_refusal_is_no_refusal() -> None:
    # as the stream shows it (no delta, nothing to send): a client that tests
    # refusal is not None must read the same in both
    resp = response([message(text("Hi"), {"type": "refusal", "refusal": ""})])
    msg = only_choice(responses_to_chat(resp, "m"))["message"]
    assert msg["content"] == "Hi" and msg["refusal"] is None


def test_a_message_whose_content_is_a_string() -> None:
    # Llama Stack's message item allows it; Lightspeed's shield answered so
    item = {"type": "message", "id": "m1", "role": "assistant", "content": "Out of scope."}
    msg = only_choice(responses_to_chat(response([item]), "m"))["message"]
    assert msg["content"] == "Out of scope." and msg["refusal"] is None


def test_reasoning_becomes_reasoning_content_a_blank_line_between_parts() -> None:
    # each summary part is a paragraph ("**Title**\n\n…"): run together, one
    # part's last sentence and the next one's title would read as one line
    reasoning = {"type": "reasoning", "id": "rs_1",
                 "content": [{"type": "reasoning_text", "text": "think."},
                             {"type": "reasoning_text", "text": ""}],
                 "summary": [{"type": "summary_text", "text": "**Plan**\n\nCheck the disk."},
                             {"type": "summary_text", "text": "**Answer**\n\nUse df."}],
                 }  # fmt: skip
    later = {"type": "reasoning", "id": "rs_2", "summary": [{"type": "summary_text", "text": "ok"}]}
    resp = response([reasoning, message(text("answer")), later])
    msg = only_choice(responses_to_chat(resp, "m"))["message"]
    assert msg["reasoning_content"] == (
        "think.\n\n**Plan**\n\nCheck the disk.\n\n**Answer**\n\nUse df.\n\nok"
    )
    assert msg["content"] == "answer"


def test_reasoning_text_parts_of_a_message_become_reasoning_content() -> None:
    # Llama Stack puts a reasoning model's thoughts in the message itself; its
    # stream shows them as reasoning_content, so must the collected answer
    resp = response([message(text("answer"), {"type": "reasoning_text", "text": "think."})])
    msg = only_choice(responses_to_chat(resp, "m"))["message"]
    assert msg["reasoning_content"] == "think."
    assert msg["content"] == "answer"


def test_no_reasoning_content_key_without_reasoning() -> None:
    msg = only_choice(responses_to_chat(response([message(text("x"))]), "m"))["message"]
    assert "reasoning_content" not in msg


def test_unusable_items_are_skipped() -> None:
    resp = response([
        {"type": "mcp_list_tools", "id": "a", "server_label": "s", "tools": []},
        {"type": "mcp_call", "id": "b", "name": "x", "arguments": "{}", "output": "o"},
        {"type": "web_search_call", "id": "c", "status": "completed"},
        {"type": "file_search_call", "id": "d", "queries": [], "status": "completed"},
        message(text("done")),
    ])  # fmt: skip
    msg = only_choice(responses_to_chat(resp, "m"))["message"]
    assert msg == {"role": "assistant", "content": "done", "refusal": None}


def test_every_function_call_becomes_a_tool_call_in_order() -> None:
    c1, c2 = call("call_1", "a", '{"x":1}'), call("call_2", "b", "{}")
    resp = response([message(text("Calling.")), c1, c2])
    choice = only_choice(responses_to_chat(resp, "m"))
    assert [(t["id"], t["function"]["name"], t["function"]["arguments"])
            for t in choice["message"]["tool_calls"]] == [
        (c1["call_id"], c1["name"], c1["arguments"]), (c2["call_id"], c2["name"], c2["arguments"])
    ]  # fmt: skip
    assert all(t["type"] == "function" for t in choice["message"]["tool_calls"])
    assert choice["message"]["content"] == "Calling."
    assert choice["finish_reason"] == "tool_calls"


def legacy(resp: dict[str, Any]) -> tuple[dict[str, Any], int]:
    """The answer for a client that sent ``functions`` (its only choice, and how
    many calls were left out), checked against the openai SDK's types."""
    completion = responses_to_chat(resp, "m")
    left_out = as_function_call(completion)
    parsed = ChatCompletion.model_validate(completion).choices[0]
    assert parsed.message.tool_calls is None
    fc = parsed.message.function_call
    assert (fc and fc.model_dump()) == completion["choices"][0]["message"].get("function_call")
    return only_choice(completion), left_out


def test_deprecated_functions_get_the_first_call_as_function_call() -> None:
    c1, c2 = call("call_1", "a", '{"x":1}'), call("call_2", "b", '{"y":2}')
    choice, left_out = legacy(response([message(text("Calling.")), c1, c2]))
    assert choice["message"] == {
        "role": "assistant", "content": "Calling.", "refusal": None,
        "function_call": {"name": "a", "arguments": '{"x":1}'},
    }  # fmt: skip
    assert choice["finish_reason"] == "function_call" and left_out == 1


@pytest.mark.parametrize(
    ("status", "details", "calls", "expected", "function_call"),
    [
        ("completed", None, [], "stop", None),
        ("incomplete", {"reason": "max_output_tokens"}, [call("c", "f", '{"a":')], "length",
         {"name": "f", "arguments": '{"a":'}),
    ],
)  # fmt: skip
def test_deprecated_functions_keep_other_finishes(
    status: str, details: Any, calls: list[Any], expected: str, function_call: Any
) -> None:
    resp = response([message(text("x")), *calls], status=status, incomplete_details=details)
    choice, left_out = legacy(resp)
    assert choice["finish_reason"] == expected and left_out == 0
    assert choice["message"].get("function_call") == function_call
    assert "tool_calls" not in choice["message"]


@pytest.mark.parametrize(
    ("status", "details", "calls", "expected"),
    [
        ("incomplete", {"reason": "max_output_tokens"}, [], "length"),
        ("incomplete", {"reason": "content_filter"}, [], "content_filter"),
        ("incomplete", {"reason": "max_output_tokens"}, [call("c", "f", "{")], "length"),
        ("completed", None, [call("c", "f", "{}")], "tool_calls"),
        ("completed", None, [], "stop"),
    ],
)
def test_finish_reason(status: str, details: Any, calls: list[Any], expected: str) -> None:
    resp = response([message(text("x")), *calls], status=status, incomplete_details=details)
    assert only_choice(responses_to_chat(resp, "m"))["finish_reason"] == expected


@pytest.mark.parametrize(
    ("error", "cls", "status"),
    [
        (
            {"code": "server_error", "message": "This model's maximum context length is 8192"},
            ContextLengthExceeded,
            400,
        ),
        ({"code": "rate_limit_exceeded", "message": "Slow down"}, RateLimited, 429),
        ({"code": "server_error", "message": "LLM exploded"}, UpstreamError, 502),
    ],
)
def test_failed_response_is_an_http_error(error: dict[str, Any], cls: type, status: int) -> None:
    resp = response([], status="failed", error=error)
    with pytest.raises(ProxyError) as info:
        responses_to_chat(resp, "m")
    assert type(info.value) is cls
    assert info.value.status == status and info.value.message == error["message"]


def test_failed_status_without_error_object() -> None:
    with pytest.raises(UpstreamError) as info:
        responses_to_chat(response([], status="failed"), "m")
    assert info.value.status == 502


def test_error_object_fails_even_with_other_status() -> None:
    with pytest.raises(UpstreamError):
        failed = response([message(text("x"))], error={"message": "bad", "code": "x"})
        responses_to_chat(failed, "m")


def test_usage_details_only_when_present() -> None:
    resp = response([message(text("x"))], usage={"input_tokens": 5, "output_tokens": 3,
                                                 "total_tokens": 8})  # fmt: skip
    assert responses_to_chat(resp, "m")["usage"] == {
        "prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8}  # fmt: skip
    cached = response([message(text("x"))], usage={
        "input_tokens": 50, "output_tokens": 30, "total_tokens": 80,
        "input_tokens_details": {"cached_tokens": 40},
        "output_tokens_details": {"reasoning_tokens": 20}})  # fmt: skip
    usage = responses_to_chat(cached, "m")["usage"]
    assert usage["prompt_tokens_details"] == {"cached_tokens": 40}
    assert usage["completion_tokens_details"] == {"reasoning_tokens": 20}
    written = response([message(text("x"))], usage={
        "input_tokens": 50, "output_tokens": 30, "total_tokens": 80,
        "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 48}})  # fmt: skip
    details = responses_to_chat(written, "m")["usage"]["prompt_tokens_details"]
    assert details == {"cached_tokens": 0, "cache_write_tokens": 48}
    assert "usage" not in responses_to_chat(response([message(text("x"))]), "m")


def test_logprobs_are_mapped() -> None:
    lp = [{"token": "x", "logprob": -0.1, "bytes": [120], "top_logprobs": []}]
    choice = only_choice(responses_to_chat(response([message(text("x", logprobs=lp))]), "m"))
    assert choice["logprobs"] == {"content": lp, "refusal": None}
    plain = only_choice(responses_to_chat(response([message(text("x", logprobs=[]))]), "m"))
    assert plain["logprobs"] is None


def test_logprobs_without_bytes_or_top_logprobs_get_them() -> None:
    lp = [{"token": "x", "logprob": -0.1}, "junk", {"token": "y", "logprob": True}]
    choice = only_choice(responses_to_chat(response([message(text("x", logprobs=lp))]), "m"))
    assert choice["logprobs"] == {
        "content": [{"token": "x", "logprob": -0.1, "bytes": None, "top_logprobs": []}],
        "refusal": None,
    }


def test_not_a_response_object() -> None:
    with pytest.raises(UpstreamProtocolError):
        responses_to_chat([], "m")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        ({}, 'no "output" list (keys: none)'),
        ({"detail": "Not authenticated"}, "(keys: 'detail')"),
        ({"error": "quota exceeded"}, "(keys: 'error')"),
        ({"id": "resp_1", "output": None}, 'no "output" list'),
        (response([], status="in_progress"), "not finished (status 'in_progress')"),
        ({"id": "resp_1", "status": "queued"}, "not finished (status 'queued')"),
        (response([message(text("half"))], status="cancelled"), "was cancelled before it finished"),
    ],
)
def test_an_answer_that_is_no_finished_response_is_an_error(
    body: dict[str, Any], needle: str
) -> None:
    # read as a success, each of these was an empty answer with finish_reason "stop"
    for translate in (lambda: responses_to_chat(body, "m"), lambda: events_from_response(body)):
        with pytest.raises(UpstreamProtocolError) as info:
            translate()
        assert needle in info.value.message


@pytest.mark.parametrize(
    ("terminal", "finish"), [("response.completed", "stop"), ("response.incomplete", "length")]
)
def test_a_terminal_event_without_status_ends_the_response(terminal: str, finish: str) -> None:
    # a minimal server: its terminal response has no status; the "in_progress"
    # of response.created must not show through (it read as "not finished")
    created = {
        "type": "response.created",
        "response": {"id": "resp_1", "status": "in_progress", "output": []},
    }
    final = {"id": "resp_1", "output": [message(text("hi"))]}
    done = {"type": terminal, "response": final}
    result = accumulate([created, done])
    assert result["status"] == terminal.split(".")[1]
    choice = only_choice(responses_to_chat(result, "m"))
    assert choice["message"]["content"] == "hi" and choice["finish_reason"] == finish


def test_finished_responses_pass_the_check() -> None:
    for resp in (
        response([]),  # an empty answer, but a finished one
        response([message(text("x"))], status="incomplete"),
        {"id": "resp_1", "output": [message(text("x"))]},  # no status: accepted
    ):
        assert check_finished(resp) is None
    failed = response([], status="failed", error={"code": "server_error", "message": "boom"})
    assert isinstance(check_finished(failed), UpstreamError)  # reported, not raised
    with pytest.raises(UpstreamError):
        responses_to_chat(failed, "m")


# --- accumulator: a stream into one Response ---------------------------------------------------

STREAM_CAPTURES = ["lcs_stream_text.sse", "lcs_stream_tool.sse", "lcs_stream_tool_followup.sse",
                   "ogx_stream_text.sse"]  # fmt: skip


@pytest.mark.parametrize("name", STREAM_CAPTURES)
def test_accumulator_matches_terminal_response(name: str) -> None:
    events = capture_events(name)
    terminal = events[-1]
    assert terminal["type"] == "response.completed"
    result = accumulate(events)
    assert result["output"] == terminal["response"]["output"]
    assert responses_to_chat(result, "m") == responses_to_chat(terminal["response"], "m")


@pytest.mark.parametrize("name", STREAM_CAPTURES)
def test_accumulator_rebuilds_output_when_terminal_has_none(name: str) -> None:
    events = copy.deepcopy(capture_events(name))
    expected = events[-1]["response"]["output"]
    events[-1]["response"]["output"] = []
    assert accumulate(events)["output"] == expected  # from output_item.done


@pytest.mark.parametrize("name", STREAM_CAPTURES)
def test_accumulator_rebuilds_from_deltas_when_items_never_finish(name: str) -> None:
    events = [e for e in copy.deepcopy(capture_events(name))
              if e["type"] not in ("response.output_item.done", "response.content_part.done",
                                   "response.function_call_arguments.done")]  # fmt: skip
    expected = copy.deepcopy(capture_events(name)[-1]["response"])
    events[-1]["response"]["output"] = []
    got = responses_to_chat(accumulate(events), "m")
    assert got == responses_to_chat(expected, "m")


#: a client's tool call, as the put-back tests' backends announce it
CALL = {"type": "function_call", "id": "fc_1", "call_id": "c1", "name": "f", "arguments": "{}"}


def _added(item: dict[str, Any], index: int = 0) -> dict[str, Any]:
    return {"type": "response.output_item.added", "output_index": index, "item": item}


def _completed(output: list[Any]) -> dict[str, Any]:
    return {"type": "response.completed", "response": response(output)}


def _message_events(item_id: str, index: int, text: str) -> list[dict[str, Any]]:
    item = {"type": "message", "id": item_id, "role": "assistant", "content": []}
    return [{"type": "response.output_item.added", "output_index": index, "item": item},
            {"type": "response.output_text.delta", "item_id": item_id, "output_index": index,
             "content_index": 0, "delta": text}]  # fmt: skip


def test_a_streamed_message_the_output_left_out_is_put_back_in_its_place() -> None:
    # Llama Stack streams a turn's text, then leaves it out of the final output
    # when the turn calls tools: the collected answer has what the stream showed
    events = [*_message_events("m1", 0, "Let me look."),
              _added(CALL, 1),
              _completed([CALL])]  # fmt: skip
    output = accumulate(events)["output"]
    assert [item.get("id") for item in output] == ["m1", "fc_1"]
    chat = only_choice(responses_to_chat(accumulate(events), "m"))["message"]
    assert chat["content"] == "Let me look." and chat["tool_calls"][0]["id"] == "c1"


SEARCH = {"type": "file_search_call", "id": "fs_1", "status": "completed", "queries": []}


@pytest.mark.parametrize(
    ("between", "first", "second"),
    [
        # Llama Stack numbers a call as the message before it (output_index 0
        # for both): each keeps its own item, and the answer the stream's order
        (CALL, "Let me look.", "Done."),
        # the output's m2 streamed under its own id: it stands for no other
        # message, though its text starts with m1's
        (SEARCH, "Let me check.", "Let me check. /var is 91% full."),
    ],
    ids=["call-at-the-same-index", "a-text-that-starts-the-next"],
)
def test_a_streamed_message_is_put_back_before_what_streamed_after_it(
    between: dict[str, Any], first: str, second: str
) -> None:
    answer = message(text(second), item_id="m2")
    events = [*_message_events("m1", 0, first), _added(between),
              *_message_events("m2", 1, second), _completed([between, answer])]  # fmt: skip
    assert [item.get("id") for item in accumulate(events)["output"]] == ["m1", between["id"], "m2"]


def test_text_a_refusal_replaced_is_not_put_back() -> None:
    # a shield that withdrew the answer mid-stream: the output's refusal alone
    refusal = {"type": "message", "id": "msg_refusal", "role": "assistant",
               "content": [{"type": "refusal", "refusal": "I cannot help with that."}]}  # fmt: skip
    events = [*_message_events("m1", 0, "Sure. First, disable SELinux and "),
              _completed([refusal])]  # fmt: skip
    assert accumulate(events)["output"] == [refusal]


def test_a_put_back_message_keeps_its_reasoning() -> None:
    thought = {"type": "response.reasoning_text.delta", "item_id": "m1", "output_index": 0,
               "content_index": 0, "delta": "User wants files."}  # fmt: skip
    events = [*_message_events("m1", 0, "I'll list the files."), thought,
              _added(CALL),
              _completed([CALL])]  # fmt: skip
    chat = only_choice(responses_to_chat(accumulate(events), "m"))["message"]
    assert chat["content"] == "I'll list the files."
    assert chat["reasoning_content"] == "User wants files."


def test_a_message_never_announced_is_put_back_too() -> None:
    # text deltas at output_index 0 and no output_item.added (older Llama
    # Stack), then a call announced at the same index
    delta = {"type": "response.output_text.delta", "output_index": 0, "content_index": 0,
             "delta": "I'll list the files."}  # fmt: skip
    events = [delta, _added(CALL),
              _completed([CALL])]  # fmt: skip
    chat = only_choice(responses_to_chat(accumulate(events), "m"))["message"]
    assert chat["content"] == "I'll list the files." and chat["tool_calls"][0]["id"] == "c1"


def test_renamed_messages_stand_each_for_its_own() -> None:
    # every output item renamed at the end: an empty message streamed first
    # takes no other's text for its own (the "0" then shown twice)
    output = [message(text(""), item_id="r0"), message(text("0"), item_id="r1")]
    events = [*_message_events("m0", 0, ""), *_message_events("m1", 1, "0"), _completed(output)]
    assert [item["id"] for item in accumulate(events)["output"]] == ["r0", "r1"]


def test_a_message_renamed_in_the_output_is_not_put_back() -> None:
    final = message(text("Hello there."), item_id="m_final")
    events = [*_message_events("m_streamed", 0, "Hello there."),
              _completed([final])]  # fmt: skip
    assert accumulate(events)["output"] == [final]


@pytest.mark.parametrize("name", STREAM_CAPTURES)
def test_terminal_event_alone_settles_real_captures(name: str) -> None:
    """What lets the proxy skip parsing the events before a whole terminal one."""
    events = capture_events(name)
    acc = ResponseAccumulator()
    acc.feed(events[-1])
    assert acc.settled
    assert responses_to_chat(acc.result(), "") == responses_to_chat(accumulate(events), "")


@pytest.mark.parametrize(
    "missing",
    ["output", "id", "created_at", "model", "usage", "error", "incomplete_details"],
)  # a missing status is the terminal event's own (see the test above): still settled
def test_terminal_event_lacking_a_read_field_is_not_settled(missing: str) -> None:
    terminal = copy.deepcopy(capture_events("lcs_stream_text.sse")[-1])
    del terminal["response"][missing]
    acc = ResponseAccumulator()
    assert not acc.settled
    acc.feed(terminal)
    assert not acc.settled


def test_empty_output_is_not_settled_a_failure_is() -> None:
    terminal = copy.deepcopy(capture_events("lcs_stream_text.sse")[-1])
    terminal["response"]["output"] = []
    acc = ResponseAccumulator()
    acc.feed(terminal)
    assert not acc.settled
    failed = ResponseAccumulator()
    failed.feed(capture_events("err_CTX_TOO_LONG_stream_true.txt")[-1])
    assert failed.settled


def test_accumulator_text_and_args_from_done_subevents_only() -> None:
    events = [
        {"type": "response.created", "response": response([], status="in_progress")},
        {"type": "response.output_item.added", "output_index": 0,
         "item": {"type": "message", "id": "m", "role": "assistant", "content": []}},
        {"type": "response.output_text.done", "item_id": "m", "output_index": 0,
         "content_index": 0, "text": "shielded answer"},
        {"type": "response.output_item.added", "output_index": 1,
         "item": {"type": "function_call", "id": "fc", "call_id": "c1", "name": "f",
                  "arguments": ""}},
        {"type": "response.function_call_arguments.done", "item_id": "fc", "output_index": 1,
         "arguments": '{"a":1}'},
        _completed([]),
    ]  # fmt: skip
    msg = only_choice(responses_to_chat(accumulate(events), "m"))["message"]
    assert msg["content"] == "shielded answer"
    assert msg["tool_calls"][0]["function"] == {"name": "f", "arguments": '{"a":1}'}


def test_accumulator_keeps_at_most_its_limit() -> None:
    # deltas past the limit fail the answer (the terminal event would carry it
    # all, and no event may be larger); a final text replaces its deltas
    def events(pieces: int, final: bool) -> list[dict[str, Any]]:
        at = {"item_id": "m", "output_index": 0, "content_index": 0}
        out = [
            {"type": "response.created", "response": response([], status="in_progress")},
            *[{"type": "response.output_text.delta", **at, "delta": "x" * 100}] * pieces,
        ]
        if final:
            out.append({"type": "response.output_text.done", **at, "text": "x" * 100 * pieces})
        return [*out, _completed([])]  # fmt: skip

    kept = ResponseAccumulator(limit=1000)
    for event in events(8, final=True):  # 800 in deltas, 800 in the final: 800 kept
        kept.feed(event)
    assert only_choice(responses_to_chat(kept.result(), "m"))["message"]["content"] == "x" * 800
    over = ResponseAccumulator(limit=1000)
    for event in events(11, final=False):
        over.feed(event)
    assert over.done
    with pytest.raises(UpstreamProtocolError) as info:
        over.result()
    assert info.value.message == (
        "backend answer larger than 1000 characters (backend.max_event_size); "
        "ask for it as a stream"
    )


def _message(mid: str, text: str) -> dict[str, Any]:
    return {"type": "message", "id": mid, "role": "assistant", "status": "completed",
            "content": [{"type": "output_text", "text": text, "annotations": []}]}  # fmt: skip


def test_accumulator_counts_the_items_it_keeps() -> None:
    # many output_item.done events, each under the limit, then a terminal
    # event with no output: every item was kept uncounted (a 120 MB answer
    # in 40 items took the proxy to 486 MB)
    over = ResponseAccumulator(limit=1000)
    for i in range(5):
        over.feed({"type": "response.output_item.done", "output_index": i,
                   "item": _message(f"m{i}", "x" * 300)})  # fmt: skip
    over.feed(_completed([]))
    with pytest.raises(UpstreamAnswerTooLarge):
        over.result()
    # an item that streamed its text is counted once: its deltas are let go
    # when it is done, and an item replaced is counted no more
    at = {"item_id": "m", "output_index": 0, "content_index": 0}
    kept = ResponseAccumulator(limit=1200)  # 900 of text, the items' other strings
    for event in [
        {"type": "response.output_item.added", "output_index": 0, "item": _message("m", "")},
        *[{"type": "response.output_text.delta", **at, "delta": "x" * 100}] * 7,
        {"type": "response.output_text.done", **at, "text": "x" * 700},
        {"type": "response.output_item.done", "output_index": 0, "item": _message("m", "x" * 700)},
        {"type": "response.output_item.added", "output_index": 1, "item": _message("n", "y" * 50)},
        {"type": "response.output_item.done", "output_index": 1, "item": _message("n", "y" * 200)},
        _completed([]),
    ]:
        kept.feed(event)
    message = only_choice(responses_to_chat(kept.result(), "m"))["message"]
    assert message["content"] == "x" * 700 + "y" * 200
    # a done item before its own text: the text that follows is not kept (the
    # done item is the item), nor counted a second time
    late = ResponseAccumulator(limit=1200)
    for event in [
        {"type": "response.output_item.done", "output_index": 0, "item": _message("m", "x" * 700)},
        {"type": "response.output_text.delta", **at, "delta": "x" * 700},
        {"type": "response.output_text.done", **at, "text": "x" * 700},
        {"type": "response.content_part.done", **at,
         "part": {"type": "output_text", "text": "x" * 700}},
        _completed([]),
    ]:  # fmt: skip
        late.feed(event)
    assert only_choice(responses_to_chat(late.result(), "m"))["message"]["content"] == "x" * 700


def test_putting_lost_messages_back_takes_bounded_work() -> None:
    # 20,000 messages streamed and missing from the terminal output took 13 s
    # of the event loop to put back (a scan and an insert for each); now in
    # order in one pass: all back, before the item that streamed after them
    events: list[dict[str, Any]] = [
        {"type": "response.output_text.delta", "item_id": f"m{i}", "output_index": i,
         "content_index": 0, "delta": "x"}
        for i in range(20_000)
    ]  # fmt: skip
    events.append({"type": "response.output_item.done", "output_index": 20_000,
                   "item": _message("last", "z")})  # fmt: skip
    acc = ResponseAccumulator()
    for event in events:
        acc.feed(event)
    acc.feed(_completed([_message("first-only-in-output", "y"), _message("last", "z")]))
    started = time.monotonic()
    output = acc.result()["output"]
    assert time.monotonic() - started < 5  # 13 s before, in the proxy
    assert output[0]["id"] == "first-only-in-output" and output[-1]["id"] == "last"
    assert len(output) == 20_002  # the deltas' messages, never announced, put back:
    assert all(item["content"][0]["text"] == "x" for item in output[1:-1])
    # a pathological answer past LOST_WORK is taken as its output says
    odd = ResponseAccumulator()
    for event in events[:2_000]:
        odd.feed(event)
    odd.feed(_completed([_message(f"o{i}", "q") for i in range(100)]))
    assert len(odd.result()["output"]) == 100


def test_accumulator_context_capture_raises() -> None:
    acc = ResponseAccumulator()
    for event in capture_events("err_CTX_TOO_LONG_stream_true.txt"):
        acc.feed(event)
    assert acc.done
    with pytest.raises(ContextLengthExceeded) as info:
        acc.result()
    failed = capture_events("err_CTX_TOO_LONG_stream_true.txt")[-1]
    assert info.value.message == failed["response"]["error"]["message"]


@pytest.mark.parametrize(
    "event",
    [
        {"type": "error", "code": "rate_limit_exceeded", "message": "slow"},
        {
            "type": "error",
            "error": {"type": "rate_limit_error", "code": "rate_limit_exceeded", "message": "slow"},
        },
    ],
)
def test_accumulator_error_event_shapes(event: dict[str, Any]) -> None:
    acc = ResponseAccumulator()
    acc.feed({"type": "response.created", "response": response([])})
    acc.feed(event)
    with pytest.raises(RateLimited) as info:
        acc.result()
    assert info.value.message == "slow"


def test_accumulator_ended_early() -> None:
    events = capture_events("lcs_stream_text.sse")[:-1]
    acc = ResponseAccumulator()
    for event in events:
        acc.feed(event)
    assert not acc.done
    with pytest.raises(UpstreamProtocolError) as info:
        acc.result()
    assert "ended early" in info.value.message


def test_accumulator_ignores_events_after_terminal_and_keeps_usage() -> None:
    events = capture_events("lcs_stream_text.sse")
    acc = ResponseAccumulator()
    for event in events:
        acc.feed(event)
    acc.feed({"type": "error", "message": "late"})
    acc.feed({"type": "response.output_text.delta", "item_id": "x", "delta": "late"})
    result = acc.result()
    assert result["output"] == events[-1]["response"]["output"]
    assert acc.usage is not None
    assert acc.usage["prompt_tokens"] == events[-1]["response"]["usage"]["input_tokens"]


def test_read_fields_are_what_responses_to_chat_reads() -> None:
    """``settled`` trusts READ_FIELDS: a field read but not listed would let the
    proxy skip events that could change the answer."""
    seen: set[str] = set()

    class Recording(dict):  # type: ignore[type-arg]
        def get(self, key: Any, default: Any = None) -> Any:
            seen.add(key)
            return super().get(key, default)

        def __getitem__(self, key: Any) -> Any:
            seen.add(key)
            return super().__getitem__(key)

    for name in STREAM_CAPTURES:
        responses_to_chat(Recording(capture_events(name)[-1]["response"]), "")
    assert seen - {"output"} == set(READ_FIELDS) | set(EXTRA_FIELDS)


def test_url_citations_reach_the_message_at_their_place_in_its_content() -> None:
    # a web search's citations were dropped: the client's [1] pointed at nothing.
    # Chat nests them under url_citation, counted in the joined content.
    cite = {"type": "url_citation", "start_index": 5, "end_index": 9, "url": "https://python.org",
            "title": "Python"}  # fmt: skip
    first = {"type": "output_text", "text": "Hi. ", "annotations": []}
    second = {"type": "output_text", "text": "See 3.14 [1]",
              "annotations": [{**cite, "start_index": 4, "end_index": 8},
                              {"type": "file_citation", "file_id": "f", "index": 0},
                              {"type": "url_citation", "url": "https://x"}]}  # fmt: skip
    resp = {"id": "resp_1", "created_at": 1, "model": "m", "status": "completed", "output": [
        {"type": "message", "role": "assistant", "content": [first]},
        {"type": "message", "role": "assistant", "content": [second]}]}  # fmt: skip
    completion = responses_to_chat(resp, "m")
    message = completion["choices"][0]["message"]
    assert message["annotations"] == [
        {"type": "url_citation", "url_citation": {"start_index": 8, "end_index": 12,
                                                  "url": "https://python.org", "title": "Python"}}
    ]  # fmt: skip
    assert message["content"][8:12] == "3.14"
    sdk = ChatCompletion.model_validate(completion).choices[0].message
    assert sdk.annotations is not None and sdk.annotations[0].url_citation.title == "Python"
    plain = {**resp, "output": [{"type": "message", "role": "assistant", "content": [first]}]}
    assert "annotations" not in responses_to_chat(plain, "m")["choices"][0]["message"]


def test_citations_count_from_every_kind_of_content_before_them_and_stay_in_their_part() -> None:
    # a string content and a refusal come before; a place outside its part (or
    # reversed, or negative) is left out rather than pointing into another part
    def cite(start: Any, end: Any) -> dict[str, Any]:
        return {"type": "url_citation", "start_index": start, "end_index": end, "url": "u"}

    part = {
        "type": "output_text",
        "text": "See [1]",
        "annotations": [cite(4, 7), cite(-1, 2), cite(5, 2), cite(0, 8), cite(True, 3)],
    }
    resp = {"id": "r", "created_at": 1, "model": "m", "status": "completed", "output": [
        {"type": "message", "role": "assistant", "content": "ab"},
        {"type": "message", "role": "assistant",
         "content": [{"type": "refusal", "refusal": "no"}, part]}]}  # fmt: skip
    message = responses_to_chat(resp, "m")["choices"][0]["message"]
    places = [(a["url_citation"]["start_index"], a["url_citation"]["end_index"])
              for a in message["annotations"]]  # fmt: skip
    assert places == [(8, 11)] and message["content"][8:11] == "[1]"
    apart = responses_to_chat(resp, "m", refusal_in_content=False)["choices"][0]["message"]
    assert apart["annotations"][0]["url_citation"]["start_index"] == 6
