"""Lightspeed Stack answers whose shapes a strict Responses client (Goose) refuses.

Built as Lightspeed Stack over Llama Stack sends them (its ``streaming.py``
and Lightspeed's shield code, as their sources read): the backend's own tool
work (RAG ``file_search_call``, MCP listing and calls, web search) as output
items before the answer; a reasoning model's thoughts as a ``reasoning_text``
content part of the message item, announced before the item itself; the
safety shield's answer as a message without ``id`` and ``status`` whose
``content`` may be a plain string. Each answer is a list of events (the
terminal one carries the whole output), framed by :func:`lightspeed_sse` as
Lightspeed frames them, or its Response object alone for a JSON answer.
"""

from __future__ import annotations

import json
from typing import Any

RID = "resp_0c1d"
ANSWER = "Use dnf to install it."
THOUGHT = "The user asks how to install a package."
#: the client calls of :func:`calls`: name and arguments
CALLS = [("shell", '{"command": "dnf install tree"}'), ("read_file", '{"path": "/etc/os-release"}')]
SHIELD = "I cannot process this request because it violates the content policy."


def _response(status: str, output: list[Any]) -> dict[str, Any]:
    usage = {"input_tokens": 9, "output_tokens": 5, "total_tokens": 14}
    return {
        "id": RID, "object": "response", "created_at": 1795637620, "model": "lcs/model",
        "status": status, "output": output, "error": None, "incomplete_details": None,
        "usage": usage if status != "in_progress" else None,
        "conversation": "ff7c", "available_quotas": {}, "output_text": "",
    }  # fmt: skip


def _numbered(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{**ev, "sequence_number": i} for i, ev in enumerate(events)]


def _completed(output: list[Any]) -> dict[str, Any]:
    return {"type": "response.completed", "response": _response("completed", output)}


def _opening() -> list[dict[str, Any]]:
    return [
        {"type": "response.created", "response": _response("in_progress", [])},
        {"type": "response.in_progress", "response": _response("in_progress", [])},
    ]


def _item(kind: str, index: int, item: dict[str, Any]) -> dict[str, Any]:
    return {"type": f"response.output_item.{kind}", "response_id": RID, "output_index": index,
            "item": item}  # fmt: skip


def _part(kind: str, index: int, content: int, item_id: str, part: Any) -> dict[str, Any]:
    return {"type": f"response.content_part.{kind}", "response_id": RID, "item_id": item_id,
            "output_index": index, "content_index": content, "part": part}  # fmt: skip


def _delta(kind: str, index: int, content: int, item_id: str, delta: str) -> dict[str, Any]:
    return {"type": f"response.{kind}.delta", "item_id": item_id, "output_index": index,
            "content_index": content, "delta": delta}  # fmt: skip


def _text_part(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def _message(index: int, words: list[str]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The events of a streamed message at ``index``, and its finished item."""
    mid = f"msg_{index}a"
    text = "".join(words)
    done = {"id": mid, "type": "message", "role": "assistant", "status": "completed",
            "content": [_text_part(text)]}  # fmt: skip
    events = [
        _item("added", index, {**done, "status": "in_progress", "content": []}),
        _part("added", index, 0, mid, _text_part("")),
        *[_delta("output_text", index, 0, mid, w) for w in words],
        _part("done", index, 0, mid, _text_part(text)),
        _item("done", index, done),
    ]
    return events, done


def _tool_work() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The backend's own tool work: its events and finished items (indexes 0-3)."""
    search = {
        "id": "fs_1",
        "type": "file_search_call",
        "status": "completed",
        "queries": ["dnf"],
        "results": [{"file_id": "f1", "filename": "dnf.md", "score": 0.9, "text": "…"}],
    }
    listing = {
        "id": "mcpl_1",
        "type": "mcp_list_tools",
        "server_label": "rhel",
        "tools": [{"name": "lookup", "input_schema": {"type": "object"}}],
    }
    call = {
        "id": "mcp_1",
        "type": "mcp_call",
        "server_label": "rhel",
        "name": "lookup",
        "arguments": "{}",
        "output": "ok",
        "error": None,
    }
    web = {"id": "ws_1", "type": "web_search_call", "status": "completed"}  # fmt: skip
    events: list[dict[str, Any]] = [
        _item("added", 0, {**search, "status": "in_progress", "results": None}),
        {"type": "response.file_search_call.in_progress", "item_id": "fs_1", "output_index": 0},
        {"type": "response.file_search_call.searching", "item_id": "fs_1", "output_index": 0},
        {"type": "response.file_search_call.completed", "item_id": "fs_1", "output_index": 0},
        _item("done", 0, search),
        {"type": "response.mcp_list_tools.in_progress", "item_id": "mcpl_1", "output_index": 1},
        _item("added", 1, {**listing, "tools": []}),
        {"type": "response.mcp_list_tools.completed", "item_id": "mcpl_1", "output_index": 1},
        _item("done", 1, listing),
        _item("added", 2, {**call, "output": None}),
        {"type": "response.mcp_call.in_progress", "item_id": "mcp_1", "output_index": 2},
        {"type": "response.mcp_call_arguments.delta", "item_id": "mcp_1", "output_index": 2,
         "delta": "{}"},
        {"type": "response.mcp_call_arguments.done", "item_id": "mcp_1", "output_index": 2,
         "arguments": "{}"},
        {"type": "response.mcp_call.completed", "item_id": "mcp_1", "output_index": 2},
        _item("done", 2, call),
        _item("added", 3, {**web, "status": "in_progress"}),
        {"type": "response.web_search_call.searching", "item_id": "ws_1", "output_index": 3},
        _item("done", 3, web),
    ]  # fmt: skip
    return events, [search, listing, call, web]


def rag() -> list[dict[str, Any]]:
    """RAG and MCP work (output 0-3), then the answer (output 4)."""
    work, items = _tool_work()
    answer, message = _message(4, ["Use dnf ", "to install ", "it."])
    output = [*items, message]
    return _numbered([*_opening(), *work, *answer, _completed(output)])


def searched() -> list[dict[str, Any]]:
    """Llama Stack 0.6's knowledge search, as its sources stream it: the
    search's arguments as ``function_call_arguments`` events of an item it
    never announces (at output 0), then the search's own item there, then the
    answer (output 1)."""
    query = '{"query": "install a package"}'
    search = {"id": "fc_ks", "type": "file_search_call", "status": "completed",
              "queries": ["install a package"], "results": []}  # fmt: skip
    args = [
        {"type": "response.function_call_arguments.delta", "item_id": "fc_ks",
         "output_index": 0, "delta": piece}
        for piece in (query[:9], query[9:])
    ]  # fmt: skip
    args.append({"type": "response.function_call_arguments.done", "item_id": "fc_ks",
                 "output_index": 0, "arguments": query})  # fmt: skip
    work = [*args, _item("added", 0, {**search, "status": "in_progress"}), _item("done", 0, search)]
    answer, message = _message(1, ["Use dnf ", "to install ", "it."])
    return _numbered([*_opening(), *work, *answer, _completed([search, message])])


def reasoning(in_the_item: bool = True) -> list[dict[str, Any]]:
    """A reasoning model through Llama Stack: ``reasoning_text`` at content index 1
    of the message item, announced (with deltas) before the item itself; in
    the finished item too, or (not ``in_the_item``, as Llama Stack's
    ``streaming.py`` ends it) left out of it and of the final output (the
    message's ``output_text`` alone)."""
    mid = "msg_0a"
    thought = [
        _part("added", 0, 1, mid, {"type": "reasoning_text", "text": ""}),
        _delta("reasoning_text", 0, 1, mid, THOUGHT[:9]),
        _delta("reasoning_text", 0, 1, mid, THOUGHT[9:]),
    ]
    after = [
        {"type": "response.reasoning_text.done", "item_id": mid, "output_index": 0,
         "content_index": 1, "text": THOUGHT},
        _part("done", 0, 1, mid, {"type": "reasoning_text", "text": THOUGHT}),
    ]  # fmt: skip
    answer, message = _message(0, ["Use dnf ", "to install ", "it."])
    done = message
    if in_the_item:
        done = {**message, "content": [*message["content"], after[-1]["part"]]}
    answer = [*answer[:-1], *after, _item("done", 0, done)]
    return _numbered([*_opening(), *thought, *answer, _completed([done])])


def refused() -> list[dict[str, Any]]:
    """A model's own refusal through Llama Stack: refusal deltas at content index 2
    of a message never announced (Llama Stack announces one for text alone),
    and in the final output that message with an empty ``output_text``."""
    mid = "msg_0a"
    refusal = "I can't help with that."
    events = [
        _part("added", 0, 2, mid, {"type": "refusal", "refusal": ""}),
        _delta("refusal", 0, 2, mid, refusal[:8]),
        _delta("refusal", 0, 2, mid, refusal[8:]),
        {"type": "response.refusal.done", "item_id": mid, "output_index": 0,
         "content_index": 2, "refusal": refusal},
        _part("done", 0, 2, mid, {"type": "refusal", "refusal": refusal}),
    ]  # fmt: skip
    message = {"id": mid, "type": "message", "role": "assistant", "status": "completed",
               "content": [_text_part("")]}  # fmt: skip
    return _numbered([*_opening(), *events, _completed([message])])


def calls() -> list[dict[str, Any]]:
    """A message (output 0), then two client calls of one model turn, both
    announced at output 1, as Llama Stack announces a turn's calls, their
    arguments in two deltas each."""
    answer, message = _message(0, ["Use dnf ", "to install ", "it."])
    events, done = [], [message]
    for n, (name, args) in enumerate(CALLS):
        call = {"type": "function_call", "id": f"fc_{n}", "call_id": f"call_{n}", "name": name,
                "arguments": args, "status": "completed"}  # fmt: skip
        pieces = [args[:5], args[5:]]
        events += [
            _item("added", 1, {**call, "arguments": "", "status": "in_progress"}),
            *[{"type": "response.function_call_arguments.delta", "item_id": call["id"],
               "output_index": 1, "delta": piece} for piece in pieces],
            {"type": "response.function_call_arguments.done", "item_id": call["id"],
             "output_index": 1, "arguments": args},
            _item("done", 1, call),
        ]  # fmt: skip
        done.append(call)
    return _numbered([*_opening(), *answer, *events, _completed(done)])


def shield(content: Any = SHIELD, nulls: bool = False) -> list[dict[str, Any]]:
    """The safety shield's answer: no deltas, a message without ``id`` and ``status``
    (null with ``nulls``), its ``content`` as given (a string by default)."""
    item: dict[str, Any] = {"type": "message", "role": "assistant", "content": content}
    if nulls:
        item.update(id=None, status=None)
    return _numbered(
        [*_opening(), _item("added", 0, item), _item("done", 0, item), _completed([item])]
    )


def lightspeed_sse(events: list[dict[str, Any]]) -> bytes:
    """``events`` framed as Lightspeed Stack frames them (``event:`` lines, JSON with
    spaces, ``[DONE]`` at the end)."""
    frames = [f"event: {ev['type']}\ndata: {json.dumps(ev)}\n\n" for ev in events]
    return "".join([*frames, "data: [DONE]\n\n"]).encode()


def final_response(events: list[dict[str, Any]]) -> dict[str, Any]:
    """The Response object an answer ends with (its JSON form)."""
    return events[-1]["response"]  # type: ignore[no-any-return]
