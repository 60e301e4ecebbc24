"""The model of Goose's parsers (``tests/goose_rules.py``) asks both lines of
Goose, block/goose 1.x and aaif-goose: each rule where they part is live, and the
helpers the tests use fail where either line fails or where they would show
different text or tool calls."""

from __future__ import annotations

import json
from typing import Any, Optional

import pytest

from tests.goose_rules import (
    AAIF,
    BLOCK,
    GooseRejects,
    GooseTurnFails,
    goose_reads_chat_response,
    goose_reads_chat_stream,
    goose_reads_response,
    goose_reads_stream,
)


def _sse(*chunks: Any) -> bytes:
    frames = [c if isinstance(c, str) else json.dumps(c) for c in chunks]
    return "".join(f"data: {f}\n\n" for f in [*frames, "[DONE]"]).encode()


def _delta(delta: Any, finish: Optional[str] = None) -> dict[str, Any]:
    return {"model": "m", "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}


def _call(index: Optional[int], cid: Optional[str], name: Optional[str], args: str) -> Any:
    call: dict[str, Any] = {"function": {"name": name, "arguments": args}}
    if index is not None:
        call["index"] = index
    if cid is not None:
        call["id"] = cid
    return _delta({"tool_calls": [call]})


def _calls(seen: Any) -> list[tuple[str, str, Any]]:
    return [(c.id, c.name, c.args) for c in seen.calls]


def test_a_chat_stream_both_read_alike_passes() -> None:
    body = _sse(_delta({"content": "hi"}), _delta({}, "stop"))
    assert goose_reads_chat_stream(body).text == "hi"


def test_aaif_skips_a_chat_frame_without_choices_that_1x_fails_on() -> None:
    body = _sse({"hook_results": {}}, _delta({"content": "hi"}), _delta({}, "stop"))
    with pytest.raises(GooseTurnFails) as failed:
        goose_reads_chat_stream(body, line=BLOCK)
    assert failed.value.kind == "RequestFailed"
    assert goose_reads_chat_stream(body, line=AAIF).text == "hi"
    with pytest.raises(GooseTurnFails, match=f"only {BLOCK}"):
        goose_reads_chat_stream(body)


@pytest.mark.parametrize(
    ("frame", "said"),
    [
        ({"statusCode": 429, "message": "slow down"}, "slow down"),
        ({"status": "503"}, "Gateway returned status 503 mid-stream"),
        ({"type": "error", "detail": [{"msg": "field required"}]}, "field required"),
        ({"detail": "Not allowed"}, "Not allowed"),
    ],
)
def test_aaif_fails_on_a_chat_frame_without_choices_that_signals_an_error(
    frame: dict[str, Any], said: str
) -> None:
    body = _sse(_delta({"content": "a"}), frame)
    with pytest.raises(GooseTurnFails) as failed:
        goose_reads_chat_stream(body, line=AAIF)
    assert (failed.value.kind, failed.value.message) == ("ServerError", said)
    assert failed.value.seen.text == "a"
    with pytest.raises(GooseTurnFails) as both:  # 1.x fails too, as a RequestFailed
        goose_reads_chat_stream(body)
    assert both.value.kind == f"RequestFailed ({BLOCK}) / ServerError ({AAIF})"
    assert goose_reads_chat_stream(_sse({"message": "processing"}), line=AAIF).text == ""


def test_a_chat_chunk_that_does_not_parse_is_a_network_error_for_aaif() -> None:
    body = _sse('{"choices": [', _delta({}, "stop"))
    kinds = {}
    for line in (BLOCK, AAIF):
        with pytest.raises(GooseTurnFails) as failed:
            goose_reads_chat_stream(body, line=line)
        kinds[line] = failed.value.kind
    assert kinds == {BLOCK: "RequestFailed", AAIF: "NetworkError"}
    with pytest.raises(GooseTurnFails) as both:
        goose_reads_chat_stream(body)
    assert both.value.kinds == kinds


def test_an_empty_finish_reason_ends_tool_calls_for_1x_only() -> None:
    body = _sse(
        _call(0, "call_1", "f", '{"a"'),
        _delta({"tool_calls": [{"index": 0, "function": {"arguments": ": 1"}}]}, ""),
        _call(0, None, None, "}"),
        _delta({}, "tool_calls"),
    )
    assert _calls(goose_reads_chat_stream(body, line=BLOCK)) == [("call_1", "f", None)]
    assert _calls(goose_reads_chat_stream(body, line=AAIF)) == [("call_1", "f", {"a": 1})]
    with pytest.raises(AssertionError, match="differ on calls"):
        goose_reads_chat_stream(body)


def test_a_first_tool_call_delta_without_index_takes_its_position_for_aaif() -> None:
    body = _sse(_call(None, "call_1", "f", "{}"), _delta({}, "tool_calls"))
    assert _calls(goose_reads_chat_stream(body, line=BLOCK)) == []
    assert _calls(goose_reads_chat_stream(body, line=AAIF)) == [("call_1", "f", {})]
    with pytest.raises(AssertionError, match="differ on calls"):
        goose_reads_chat_stream(body)


def test_a_later_name_replaces_the_stored_one_for_aaif() -> None:
    body = _sse(_call(0, "call_1", "f", "{}"), _call(0, None, "g", ""), _delta({}, "tool_calls"))
    assert _calls(goose_reads_chat_stream(body, line=BLOCK)) == [("call_1", "f", {})]
    assert _calls(goose_reads_chat_stream(body, line=AAIF)) == [("call_1", "g", {})]
    empty = _sse(_call(0, "call_1", "f", "{}"), _call(0, None, "", ""), _delta({}, "tool_calls"))
    assert _calls(goose_reads_chat_stream(empty)) == [("call_1", "f", {})]


def test_length_makes_every_tool_call_an_error_for_aaif() -> None:
    body = _sse(_call(0, "call_1", "f", "{}"), _delta({}, "length"))
    assert _calls(goose_reads_chat_stream(body, line=BLOCK)) == [("call_1", "f", {})]
    seen = goose_reads_chat_stream(body, line=AAIF)
    assert (_calls(seen), seen.limit_reached) == ([("call_1", "f", None)], True)
    with pytest.raises(AssertionError, match="differ on calls"):
        goose_reads_chat_stream(body)
    answer = {
        "choices": [
            {
                "message": {"tool_calls": [{"id": "c", "function": {"name": "f"}}]},
                "finish_reason": "length",
            }
        ]
    }
    assert _calls(goose_reads_chat_response(answer, line=AAIF)) == [("c", "f", None)]
    with pytest.raises(AssertionError, match="differ on calls"):
        goose_reads_chat_response(answer)
    text = _sse(_delta({"content": "cut"}, "length"))
    assert goose_reads_chat_stream(text).limit_reached  # text is shown: both agree


@pytest.mark.parametrize(
    ("args", "block", "aaif"),
    [
        ("[1, 2]", [1, 2], None),  # JSON, not an object: an error for aaif
        ('"{\\"a\\": 1}"', '{"a": 1}', {"a": 1}),  # a string holding an object: unwrapped
    ],
)
def test_arguments_that_are_not_an_object(args: str, block: Any, aaif: Any) -> None:
    body = _sse(_call(0, "call_1", "f", args), _delta({}, "tool_calls"))
    assert _calls(goose_reads_chat_stream(body, line=BLOCK)) == [("call_1", "f", block)]
    assert _calls(goose_reads_chat_stream(body, line=AAIF)) == [("call_1", "f", aaif)]
    with pytest.raises(AssertionError, match="differ on calls"):
        goose_reads_chat_stream(body)


def test_only_1x_refuses_a_tool_name_outside_its_characters() -> None:
    call = {"id": "c", "function": {"name": "a.b", "arguments": "{}"}}
    answer = {"choices": [{"message": {"tool_calls": [call]}, "finish_reason": "tool_calls"}]}
    assert _calls(goose_reads_chat_response(answer, line=BLOCK)) == [("c", "a.b", None)]
    assert _calls(goose_reads_chat_response(answer, line=AAIF)) == [("c", "a.b", {})]


# --- Responses ---------------------------------------------------------------------

_META = {"id": "r", "object": "response", "created_at": 1, "model": "m"}
_TEXT = {"type": "output_text", "text": "hi", "annotations": []}


def _events(*events: dict[str, Any]) -> bytes:
    return _sse(*({"sequence_number": i, **e} for i, e in enumerate(events)))


def _done(status: str, output: list[Any], **extra: Any) -> dict[str, Any]:
    kind = "response.completed" if status == "completed" else "response.incomplete"
    return {"type": kind, "response": {**_META, "status": status, "output": output, **extra}}


def test_response_incomplete_is_a_known_strictly_parsed_event_for_aaif() -> None:
    call = {"type": "function_call", "id": "fc", "status": "completed", "call_id": "c"}
    cut = {**call, "call_id": "d", "status": "in_progress", "arguments": '{"x'}
    done = {**call, "name": "f", "arguments": "{}"}
    body = _events(
        {"type": "response.output_item.done", "output_index": 0, "item": done},
        _done(
            "incomplete", [done, {**cut, "name": "f"}], incomplete_details={"reason": "max_tokens"}
        ),
    )
    seen = goose_reads_stream(body)  # 1.x skips it; aaif drops the unfinished call
    assert (seen.calls, seen.limit_reached) == ([("f", "{}")], True)
    bad = _events({"type": "response.incomplete", "response": {"status": "incomplete"}})
    assert goose_reads_stream(bad, line=BLOCK).text == ""
    with pytest.raises(GooseRejects, match=f"only {AAIF}"):
        goose_reads_stream(bad)


def test_aaif_takes_items_without_id_and_status() -> None:
    message = {"type": "message", "role": "assistant", "content": [_TEXT]}
    body = _events(_done("completed", [message]))
    assert goose_reads_stream(body, line=AAIF).text == "hi"
    with pytest.raises(GooseRejects, match=f"only {BLOCK}"):
        goose_reads_stream(body)
    answer = {**_META, "status": "completed", "output": [message]}
    assert goose_reads_response(answer, line=AAIF).text == "hi"
    with pytest.raises(GooseRejects, match=f"only {BLOCK}"):
        goose_reads_response(answer)


def test_aaif_takes_reasoning_text_parts_as_thinking() -> None:
    parts = [{"type": "reasoning_text", "text": "hmm"}, _TEXT]
    message = {"type": "message", "id": "m", "status": "completed", "role": "assistant"}
    body = _events(_done("completed", [{**message, "content": parts}]))
    assert goose_reads_stream(body, line=AAIF).text == "hi"
    with pytest.raises(GooseRejects, match=f"only {BLOCK}.*unknown variant 'reasoning_text'"):
        goose_reads_stream(body)


def test_aaif_skips_sse_fields_that_1x_reads_as_json() -> None:
    body = b"id: 7\nretry: 100\nx-trace_1: a\n" + _events(_done("completed", []))
    assert goose_reads_stream(body, line=AAIF).text == ""
    with pytest.raises(GooseRejects, match=f"only {BLOCK}: not JSON"):
        goose_reads_stream(body)


@pytest.mark.parametrize("line", [b"x.trace: abc", b"  data: {}", b"data", b"\xc3\xa9t\xc3\xa9: 1"])
def test_aaif_reads_a_line_whose_name_is_no_field_name_as_json(line: bytes) -> None:
    # sse_field_name: only ASCII letters, digits, "-" and "_" make a field name
    with pytest.raises(GooseRejects, match="not JSON"):
        goose_reads_stream(line + b"\n" + _events(_done("completed", [])), line=AAIF)


def test_aaif_refuses_two_tool_calls_with_one_id() -> None:
    call = {"type": "function_call", "id": "fc", "status": "completed", "call_id": "c"}
    output = [{**call, "name": "f", "arguments": "{}"}, {**call, "name": "g", "arguments": "{}"}]
    body = _events(_done("completed", output))
    assert goose_reads_stream(body, line=BLOCK).calls == [("f", "{}"), ("g", "{}")]
    with pytest.raises(GooseRejects, match=f"only {AAIF}: two tool calls"):
        goose_reads_stream(body)
