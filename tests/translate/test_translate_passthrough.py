"""``AnswerAdapter`` / ``adapt_response``: a lightspeed passthrough answer in the
shapes Goose reads (checked with ``tests/goose_rules.py``, which mirrors Goose's
parser), and everything else left as the very same object."""

from __future__ import annotations

import copy
import json
from typing import Any, Optional

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from goose_proxy.translate import (
    ADAPTED_EVENTS,
    AnswerAdapter,
    ResponseAccumulator,
    TranslateOptions,
    adapt_response,
    prepare_passthrough,
)
from goose_proxy.translate.passthrough import stream_of_response
from tests import lightspeed_answers as ls
from tests.goose_rules import GooseRejects, goose_reads_response, goose_reads_stream
from tests.translate.translate_testkit import capture_events, fixture_json

ANSWERS = {
    "rag": (ls.rag, ls.ANSWER),
    "reasoning": (ls.reasoning, ls.ANSWER),
    "shield-string": (ls.shield, ls.SHIELD),
    "shield-nulls": (lambda: ls.shield(nulls=True), ls.SHIELD),
    "shield-parts": (
        lambda: ls.shield([{"type": "output_text", "text": ls.SHIELD}]),
        ls.SHIELD,
    ),
}


def adapt_all(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    adapter = AnswerAdapter()
    out = [adapter.event(ev) for ev in events]
    return [ev for ev in out if ev is not None]


@pytest.mark.parametrize("name", list(ANSWERS))
def test_lightspeed_answers_are_read_by_goose_once_adapted(name: str) -> None:
    make, text = ANSWERS[name]
    events = make()
    kept = copy.deepcopy(events)
    with pytest.raises(GooseRejects):  # as the backend sent it, Goose fails the turn
        goose_reads_stream(ls.lightspeed_sse(events))
    with pytest.raises(GooseRejects):
        goose_reads_response(ls.final_response(events))
    assert goose_reads_stream(ls.lightspeed_sse(adapt_all(events))).text == text
    assert goose_reads_response(adapt_response(ls.final_response(events))).text == text
    assert events == kept  # nothing given is changed


def test_the_backends_tool_work_and_other_parts_are_left_out() -> None:
    out = adapt_all(ls.rag())
    kinds = [ev["type"] for ev in out]
    # the backend's own item events go; its other events (unknown to Goose) stay
    assert [ev["item"]["type"] for ev in out if "item" in ev] == ["message", "message"]
    assert "response.file_search_call.searching" in kinds
    assert "response.mcp_call_arguments.delta" in kinds
    assert [i["type"] for i in out[-1]["response"]["output"]] == ["message"]
    assert out[-1]["response"]["output"][0]["id"] == "msg_4a"
    out = adapt_all(ls.reasoning())
    assert [ev["part"]["type"] for ev in out if "part" in ev] == ["output_text", "output_text"]
    assert "response.reasoning_text.delta" in [ev["type"] for ev in out]
    done = [ev["item"] for ev in out if ev["type"] == "response.output_item.done"]
    assert [p["type"] for p in done[0]["content"]] == ["output_text"]


def test_a_message_without_id_gets_the_same_made_up_one_everywhere() -> None:
    out = adapt_all(ls.shield())
    added, done = (ev["item"] for ev in out if "item" in ev)
    final = out[-1]["response"]["output"][0]
    assert added["id"] == done["id"] == final["id"] == "msg_0c1d_0"
    assert (added["status"], done["status"], final["status"]) == (
        "in_progress", "completed", "completed",
    )  # fmt: skip
    assert final["content"] == [{"type": "output_text", "text": ls.SHIELD, "annotations": []}]
    # two messages: two ids; no response id seen: the index alone
    bare = {"type": "message", "role": "assistant", "content": []}
    resp = {"status": "incomplete", "output": [bare, bare]}
    out_items = AnswerAdapter().response(resp)["output"]
    assert [i["id"] for i in out_items] == ["msg_0", "msg_1"]
    assert [i["status"] for i in out_items] == ["incomplete", "incomplete"]
    assert adapt_response({**resp, "id": "r9", "status": None})["output"][1]["id"] == "msg_r9_1"


@pytest.mark.parametrize(
    ("kind", "status"),
    [("response.created", "in_progress"), ("response.completed", "completed"),
     ("response.incomplete", "incomplete"), ("response.failed", "incomplete")],
)  # fmt: skip
def test_a_missing_status_follows_the_event_when_the_response_has_none(
    kind: str, status: str
) -> None:
    event = {"type": kind, "response": {"output": [{"type": "message", "id": "m", "role": "a",
                                                     "content": []}]}}  # fmt: skip
    out = AnswerAdapter().event(event)
    assert out is not None and out["response"]["output"][0]["status"] == status


@pytest.mark.parametrize(
    "capture",
    ["lcs_stream_text.sse", "lcs_stream_tool.sse", "lcs_stream_tool_followup.sse",
     "ogx_stream_text.sse"],
)  # fmt: skip
def test_answers_that_fit_are_the_same_objects(capture: str) -> None:
    # but for the Response's conversation, which Lightspeed sends as a bare id
    adapter = AnswerAdapter()
    for event in capture_events(capture):
        resp = event.get("response")
        if isinstance(resp, dict) and isinstance(resp.get("conversation"), str):
            assert adapter.event(event) == conversation_object(event)
            event = conversation_object(event)
        assert adapter.event(event) is event
    for name in ("lcs_nonstream_text.json", "lcs_nonstream_tool.json"):
        resp = fixture_json(name)
        assert adapt_response(resp) == conversation_object(resp)
        resp = conversation_object(resp)
        assert adapt_response(resp) is resp


def conversation_object(obj: dict[str, Any]) -> dict[str, Any]:
    """An event or Response (a copy), its Response's ``conversation`` as ``{"id": …}``."""
    obj = copy.deepcopy(obj)
    resp = obj.get("response", obj)
    resp["conversation"] = {"id": resp["conversation"]}
    return obj


def test_a_conversation_object_goes_to_lightspeed_as_its_id() -> None:
    opts = TranslateOptions()
    body, _ = prepare_passthrough({"input": "hi", "conversation": {"id": "c1"}}, opts)
    assert body["conversation"] == "c1"
    for kept in ("c1", {"no": "id"}):
        assert prepare_passthrough({"conversation": kept}, opts)[0]["conversation"] == kept
    plain = TranslateOptions(flavor="openai")
    body, _ = prepare_passthrough({"model": "m", "conversation": {"id": "c1"}}, plain)
    assert body["conversation"] == {"id": "c1"}


def test_the_adapted_event_types() -> None:
    assert ADAPTED_EVENTS == {
        "response.output_item.added", "response.output_item.done",
        "response.content_part.added", "response.content_part.done",
        "response.created", "response.in_progress", "response.queued",
        "response.completed", "response.incomplete", "response.failed", "error",
        "response.function_call_arguments.delta", "response.function_call_arguments.done",
    }  # fmt: skip
    adapter = AnswerAdapter()
    # a type given apart (the SSE event name of data without one) is the one used
    search = {"item": {"type": "file_search_call", "id": "fs"}, "output_index": 0}
    assert adapter.event(search, "response.output_item.done") is None
    assert adapter.event(search) is search
    assert adapter.event(search, "response.output_text.delta") is search


def test_argument_events_of_items_no_call_announced_are_left_out() -> None:
    # Llama Stack: a search's arguments (never announced) at the output index
    # of the client's call; an MCP call's later pieces at its own (left-out) item's
    adapter = AnswerAdapter()
    call = {"type": "function_call", "id": "fc_c", "call_id": "call_c", "name": "shell",
            "arguments": ""}  # fmt: skip
    added = {"type": "response.output_item.added", "output_index": 0, "item": call}
    assert adapter.event(added) is added
    mine = {"type": "response.function_call_arguments.delta", "item_id": "fc_c",
            "output_index": 0, "delta": "{}"}  # fmt: skip
    search = {**mine, "item_id": "fc_k", "delta": '{"query": "rhel"}'}
    search_done = {**search, "type": "response.function_call_arguments.done", "arguments": "{}"}
    nameless = {k: v for k, v in search.items() if k != "item_id"}
    assert adapter.event(mine) is mine
    assert adapter.event(search) is None and adapter.event(search_done) is None
    # a call's own deltas are known unparsed (as the relay checks them first)
    assert adapter.names_a_call(json.dumps(mine)) and not adapter.names_a_call(json.dumps(search))
    assert adapter.event(nameless) is nameless  # no id to tell by: as it came
    mcp = {"type": "mcp_call", "id": "mcp_1", "name": "rpm", "server_label": "rhel"}
    assert adapter.event({**added, "item": mcp}) is None
    assert adapter.event({**mine, "item_id": "mcp_1"}) is None


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=5)
    | st.sampled_from(["message", "output_text", "refusal", "file_search_call", "reasoning"]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
        st.sampled_from(["type", "id", "status", "content", "item", "part", "output",
                         "response", "output_index", "text"]), inner, max_size=5),
    max_leaves=20,
)  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(kind=st.sampled_from(sorted(ADAPTED_EVENTS)), body=st.dictionaries(
    st.sampled_from(["item", "part", "response", "output_index"]), JSON, max_size=3))  # fmt: skip
def test_any_shape_is_adapted_without_raising_or_changing_it(
    kind: str, body: dict[str, Any]
) -> None:
    event = {**body, "type": kind}
    kept = json.dumps(event)
    out: Optional[dict[str, Any]] = AnswerAdapter().event(event)
    assert json.dumps(event) == kept
    if out is not None:
        json.dumps(out)
    resp = body.get("response")
    if isinstance(resp, dict):
        assert json.dumps(adapt_response(resp))


@pytest.mark.parametrize("status", ["completed", "incomplete", "failed"])
def test_a_whole_response_as_its_stream(status: str) -> None:
    # the stream a backend would have sent: numbered, the parts and arguments in
    # one delta each, and rebuilt by an accumulator into the same output
    message = {"type": "message", "id": "msg_1", "role": "assistant", "status": "completed",
               "content": [{"type": "output_text", "text": "Hi 😀", "annotations": []},
                           {"type": "refusal", "refusal": "no"}]}  # fmt: skip
    call = {"type": "function_call", "id": "fc_1", "call_id": "c1", "name": "f",
            "arguments": '{"a": 1}', "status": "completed"}  # fmt: skip
    resp = {"id": "r", "object": "response", "created_at": 1, "model": "m", "status": status,
            "output": [message, call], "usage": None}  # fmt: skip
    before = copy.deepcopy(resp)
    events = stream_of_response(resp)
    assert resp == before  # not changed
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    assert events[0]["type"] == "response.created" and events[0]["response"]["output"] == []
    assert events[-1] == {"type": f"response.{status}", "sequence_number": len(events) - 1,
                          "response": resp}  # fmt: skip
    deltas = [e.get("delta") for e in events if e["type"].endswith(".delta")]
    assert deltas == ["Hi 😀", "no", '{"a": 1}']
    acc = ResponseAccumulator()
    for event in events[:-1]:  # without the terminal event: from the deltas alone
        acc.feed(event)
    acc.feed({"type": "response.completed", "response": {**resp, "output": []}})
    rebuilt = acc.result()["output"]
    assert [i["type"] for i in rebuilt] == ["message", "function_call"]
    assert rebuilt[1]["arguments"] == '{"a": 1}'
    assert [p.get("text", p.get("refusal")) for p in rebuilt[0]["content"]] == ["Hi 😀", "no"]


def test_odd_parts_neither_crash_the_stream_nor_leave_gaps() -> None:
    # a part of a type it does not know, or with a type that is no string, goes
    # out added and done as it is: every content_index is there (the openai
    # SDK's helper finds parts by it)
    parts = [{"type": "output_audio", "data": "x"}, {"type": ["x"], "text": "y"},
             "not a part", {"type": "output_text", "text": "hi", "annotations": []}]  # fmt: skip
    message = {"type": "message", "id": "m", "role": "assistant", "content": parts}
    resp = {"id": "r", "status": "completed", "output": [message]}
    events = stream_of_response(resp)
    added = [e["content_index"] for e in events if e["type"] == "response.content_part.added"]
    assert added == [0, 1, 3]
    assert [e["delta"] for e in events if e["type"] == "response.output_text.delta"] == ["hi"]


def test_failure_events_carry_the_error_object_goose_reads() -> None:
    # Goose's types want a top-level "error" on both; without it the user sees
    # serde's "missing field" instead of the backend's words
    adapter = AnswerAdapter()
    flat = {"type": "error", "code": "server_error", "message": "boom", "sequence_number": 4}
    assert adapter.event(flat) == {**flat, "error": {"code": "server_error", "message": "boom"}}
    nested = {"type": "error", "error": {"message": "boom"}, "sequence_number": 4}
    assert adapter.event(nested) is nested
    failure = {"code": "server_error", "message": "it broke"}
    resp = {"id": "r", "status": "failed", "output": [], "error": failure}
    failed = {"type": "response.failed", "sequence_number": 9, "response": resp}
    assert adapter.event(failed) == {**failed, "error": failure}
    for event in (adapter.event(flat), adapter.event(failed)):
        with pytest.raises(GooseRejects, match="the turn failed"):  # read, then failed
            goose_reads_stream(b"data: " + json.dumps(event).encode() + b"\n\n")
