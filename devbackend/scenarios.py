"""What the fake answers: a request is read into a :class:`Turn`, the turn (and
the fault knob) into a :class:`Scenario` of output items, and the scenario is
rendered either as a list of SSE frames or as one Response JSON body.

The default scripts mirror the captures: an echo text answer
(``lcs_stream_text.sse``), a function call for the first tool when the user
says ``USE_TOOL`` (``lcs_stream_tool.sse``) and a text answer quoting the tool
output when the input ends with a ``function_call_output``
(``lcs_stream_tool_followup.sse``). No I/O; ids and timestamps are the only
non-determinism.
"""

from __future__ import annotations

import json
import os
import re
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Union

from .sse import EventWriter, Frame, Style, jstr, render_response_json

ECHO_PREFIX = "Hello from goose-proxy dev backend. You said: "
TOOL_FOLLOWUP_PREFIX = "Tool said: "
REFUSAL_TEXT = "I'm sorry, but I can't help with that."
SHIELD_TEXT = (
    "I cannot process this request because it violates the content policy of this assistant."
)
REASONING_TEXT = "The user wants an answer. I will echo what they said."
ERROR_EVENT_MESSAGE = "The server had an error while processing your request."
CTX_TOO_LONG_MESSAGE = (
    "This model's maximum context length is 8192 tokens. "
    "However, your messages resulted in 99999 tokens."
)
DEFAULT_MODEL = "dev/goose-proxy-dev"
DEFAULT_TOOL = "developer__shell"

_WORDS = re.compile(r"\s*\S+|\s+$")


@dataclass
class Turn:
    """The parts of a Responses request that steer the script."""

    user_text: str = ""
    tool_output: Optional[str] = None
    tool_names: list[str] = field(default_factory=list)
    tool_params: list[Any] = field(default_factory=list)
    stream: bool = False
    input_chars: int = 0


@dataclass
class Message:
    """An assistant message with one ``output_text`` (or ``refusal``) part.

    ``deltas`` None means the text arrives only in ``output_item.done``
    (Lightspeed's safety shield); an empty list means a part with no deltas.
    """

    text: str
    deltas: Optional[list[str]]
    kind: str = "output_text"
    status: str = "completed"
    id: str = field(default_factory=lambda: f"msg_{uuid.uuid4()}")


@dataclass
class FunctionCall:
    name: str
    arguments: str
    deltas: list[str]
    call_id: str = field(default_factory=lambda: f"call_{uuid.uuid4().hex[:24]}")
    id: str = field(default_factory=lambda: f"fc_{uuid.uuid4()}")


@dataclass
class Reasoning:
    text: str
    deltas: list[str]
    id: str = field(default_factory=lambda: f"rs_{uuid.uuid4()}")


Item = Union[Message, FunctionCall, Reasoning]


@dataclass
class Scenario:
    items: list[Item]
    #: ``completed``, ``incomplete`` (max_output_tokens), ``failed`` or ``error_event``.
    outcome: str = "completed"
    #: Interleave the argument deltas of the function calls (``parallel_tools``).
    interleave_calls: bool = False
    error_message: str = ""
    input_tokens: int = 1


# --- reading the request --------------------------------------------------


def _content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for part in content:
            if isinstance(part, dict) and isinstance(part.get("text"), str):
                texts.append(part["text"])
            elif isinstance(part, str):
                texts.append(part)
        return "".join(texts)
    return ""


def read_turn(body: Any) -> Turn:
    """Read what steers the script from a (validated or not) request body."""
    turn = Turn()
    if not isinstance(body, dict):
        return turn
    turn.stream = body.get("stream") is True
    items = body.get("input")
    if isinstance(items, str):
        turn.user_text = items
        turn.input_chars = len(items)
    elif isinstance(items, list):
        for item in items:
            if not isinstance(item, dict):
                continue
            if item.get("role") == "user":
                turn.user_text = _content_text(item.get("content"))
            turn.input_chars += len(_content_text(item.get("content", item.get("output"))))
        last = items[-1] if items else None
        if isinstance(last, dict) and last.get("type") == "function_call_output":
            output = last.get("output")
            turn.tool_output = output if isinstance(output, str) else _content_text(output)
    tools = body.get("tools")
    if isinstance(tools, list):
        for tool in tools:
            if isinstance(tool, dict) and tool.get("type") == "function" and tool.get("name"):
                turn.tool_names.append(str(tool["name"]))
                turn.tool_params.append(tool.get("parameters"))
    return turn


def fake_arguments(parameters: Any) -> str:
    """JSON arguments satisfying a tool's schema well enough (required properties)."""
    args: dict[str, Any] = {}
    if isinstance(parameters, dict):
        props = parameters.get("properties")
        props = props if isinstance(props, dict) else {}
        required = parameters.get("required")
        names = required if isinstance(required, list) and required else list(props)[:1]
        samples = {"integer": 1, "number": 1, "boolean": True, "array": [], "object": {}}
        for name in names:
            spec = props.get(name)
            kind = spec.get("type") if isinstance(spec, dict) else "string"
            args[str(name)] = samples.get(kind, "fake") if isinstance(kind, str) else "fake"
    return json.dumps(args)


# --- building scenarios -------------------------------------------------------


def words(text: str) -> list[str]:
    """Split ``text`` into word deltas with their leading space (``"Hello", " you"``)."""
    return _WORDS.findall(text) or ([text] if text else [])


def split_deltas(text: str, count: Optional[int]) -> tuple[str, list[str]]:
    """Split ``text`` into ``count`` deltas (word-sized when ``count`` is None).

    With more deltas than words the words repeat, so the text grows.
    Returns the (possibly grown) text and its deltas.
    """
    pieces = words(text)
    if count is None:
        return text, pieces
    if count <= 0:
        return text, []
    if count <= len(pieces):
        size, extra = divmod(len(pieces), count)
        out, start = [], 0
        for i in range(count):
            end = start + size + (1 if i < extra else 0)
            out.append("".join(pieces[start:end]))
            start = end
        return text, out
    out = [pieces[i % len(pieces)] for i in range(count)]
    return "".join(out), out


def _call(turn: Turn, index: int, deltas: bool = True) -> FunctionCall:
    names = turn.tool_names or [DEFAULT_TOOL]
    params = turn.tool_params or [{"properties": {"command": {"type": "string"}}}]
    i = min(index, len(names) - 1)
    arguments = fake_arguments(params[i])
    half = len(arguments) // 2
    return FunctionCall(names[i], arguments, [arguments[:half], arguments[half:]] if deltas else [])


def _echo(turn: Turn, deltas: Optional[int]) -> Message:
    if turn.tool_output is not None:
        text = TOOL_FOLLOWUP_PREFIX + turn.tool_output
    else:
        text = ECHO_PREFIX + turn.user_text
    text, pieces = split_deltas(text, deltas)
    return Message(text, pieces)


def build_scenario(
    turn: Turn, fault: str = "", arg: str = "", deltas: Optional[int] = None
) -> Scenario:
    """The output items for ``turn`` under the content fault ``fault``.

    ``fault`` is one of ``refusal``, ``shield``, ``reasoning``,
    ``parallel_tools``, ``args_only_in_done``, ``incomplete``,
    ``error_event``, ``ctx_too_long``, ``big_event`` (``arg`` = size) or empty.
    """
    tokens = max(1, turn.input_chars // 4)
    if fault == "refusal":
        return Scenario(
            [Message(REFUSAL_TEXT, words(REFUSAL_TEXT), kind="refusal")], input_tokens=tokens
        )
    if fault == "shield":
        return Scenario([Message(SHIELD_TEXT, None)], input_tokens=tokens)
    if fault == "reasoning":
        return Scenario(
            [Reasoning(REASONING_TEXT, words(REASONING_TEXT)), _echo(turn, deltas)],
            input_tokens=tokens,
        )
    if fault == "parallel_tools":
        return Scenario(
            [_call(turn, 0), _call(turn, 1)], interleave_calls=True, input_tokens=tokens
        )
    if fault == "args_only_in_done":
        return Scenario([_call(turn, 0, deltas=False)], input_tokens=tokens)
    if fault == "incomplete":
        full = _echo(turn, deltas)
        cut = full.deltas[: max(1, len(full.deltas or []) // 2)] if full.deltas else []
        msg = Message("".join(cut), cut, status="incomplete")
        return Scenario([msg], outcome="incomplete", input_tokens=tokens)
    if fault == "error_event":
        return Scenario([], outcome="error_event", error_message=ERROR_EVENT_MESSAGE)
    if fault == "ctx_too_long":
        return Scenario([], outcome="failed", error_message=CTX_TOO_LONG_MESSAGE)
    if fault == "big_event":
        size = int(arg)
        text = ("0123456789abcdef" * (size // 16 + 1))[:size]
        return Scenario([Message(text, [text])], input_tokens=tokens)
    if turn.tool_output is None and turn.tool_names and "USE_TOOL" in turn.user_text:
        return Scenario([_call(turn, 0)], input_tokens=tokens)
    return Scenario([_echo(turn, deltas)], input_tokens=tokens)


# --- rendering ------------------------------------------------------------------


def _encoder(separators: tuple[str, str]) -> Callable[[Any], str]:
    """A JSON encoder that skips ``json.dumps`` for the common scalars."""

    def enc(value: Any) -> str:
        if value is None:
            return "null"
        if value is True:
            return "true"
        if value is False:
            return "false"
        kind = type(value)
        if kind is str:
            return jstr(value)
        if kind is int:
            return str(value)
        return json.dumps(value, separators=separators)

    return enc


_ENCODERS = {(",", ":"): _encoder((",", ":")), (", ", ": "): _encoder((", ", ": "))}


def response_values(body: Any, style: Style, *, compact: bool = False) -> dict[str, str]:
    """JSON text of the response object's per-request values, echoing the request."""
    req = body if isinstance(body, dict) else {}
    enc = _ENCODERS[(",", ":") if compact else style.separators]
    tools = []
    for tool in req.get("tools") or ():
        if isinstance(tool, dict) and tool.get("type") == "function":
            tools.append(
                {
                    "type": "function",
                    "name": tool.get("name"),
                    "description": tool.get("description"),
                    "parameters": tool.get("parameters"),
                    "strict": tool.get("strict"),
                }
            )
        else:
            tools.append(tool)
    instructions = req.get("instructions")
    if instructions is None and style.lightspeed:
        instructions = "<server prompt applied>"
    return {
        "resp_id": jstr(f"resp_{uuid.uuid4()}"),
        "created_at": str(int(time.time())),
        "model": enc(req.get("model") or DEFAULT_MODEL),
        "parallel_tool_calls": enc(req.get("parallel_tool_calls", True)),
        "temperature": enc(req.get("temperature", 1.0)),
        "tools": enc(tools) if tools else "[]",
        "tool_choice": enc(req.get("tool_choice", "auto")),
        "instructions": enc(instructions),
        "max_output_tokens": enc(req.get("max_output_tokens")),
        "store": enc(req.get("store", True)),
        "reasoning": enc(req.get("reasoning")),
        "metadata": enc(req.get("metadata")),
        "conversation": enc(req.get("conversation") or os.urandom(24).hex()),
    }


def _part(item: Message, text: str) -> dict[str, Any]:
    if item.kind == "refusal":
        return {"type": "refusal", "refusal": text}
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def final_item(item: Item) -> dict[str, Any]:
    """The finished output item, as in ``output_item.done`` and the Response."""
    if isinstance(item, Message):
        if item.kind == "refusal":
            part: dict[str, Any] = {"type": "refusal", "refusal": item.text}
        else:
            part = {"text": item.text, "type": "output_text", "annotations": [], "logprobs": []}
        return {
            "content": [part],
            "role": "assistant",
            "type": "message",
            "id": item.id,
            "status": item.status,
        }
    if isinstance(item, FunctionCall):
        return {
            "call_id": item.call_id,
            "name": item.name,
            "arguments": item.arguments,
            "type": "function_call",
            "id": item.id,
            "status": "completed",
        }
    return {
        "id": item.id,
        "type": "reasoning",
        "summary": [],
        "content": [{"type": "reasoning_text", "text": item.text}],
        "status": "completed",
    }


def _added_item(item: Item) -> dict[str, Any]:
    if isinstance(item, Message):
        return {
            "content": [],
            "role": "assistant",
            "type": "message",
            "id": item.id,
            "status": "in_progress",
        }
    if isinstance(item, FunctionCall):
        return {
            "call_id": item.call_id,
            "name": item.name,
            "arguments": "",
            "type": "function_call",
            "id": item.id,
            "status": "in_progress",
        }
    return {
        "id": item.id,
        "type": "reasoning",
        "summary": [],
        "content": [],
        "status": "in_progress",
    }


def _usage(scenario: Scenario) -> dict[str, Any]:
    out = reasoning = 0
    for item in scenario.items:
        n = len(item.deltas or []) if not isinstance(item, FunctionCall) else 1
        out += max(n, 1)
        if isinstance(item, Reasoning):
            reasoning += max(n, 1)
    return {
        "input_tokens": scenario.input_tokens,
        "output_tokens": out,
        "total_tokens": scenario.input_tokens + out,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens_details": {"reasoning_tokens": reasoning},
    }


def _output_text(scenario: Scenario) -> str:
    return "".join(
        i.text for i in scenario.items if isinstance(i, Message) and i.kind == "output_text"
    )


def _final_phase(scenario: Scenario, dumps: Any, created_at: str) -> dict[str, str]:
    phase = {
        "output": dumps([final_item(i) for i in scenario.items]),
        "usage": dumps(_usage(scenario)),
        "output_text": jstr(_output_text(scenario)),
        "completed_at": str(max(int(time.time()), int(created_at))),
        "status": '"completed"',
    }
    if scenario.outcome == "incomplete":
        phase["status"] = '"incomplete"'
        phase["completed_at"] = "null"
        phase["incomplete_details"] = dumps({"reason": "max_output_tokens"})
    elif scenario.outcome in ("failed", "error_event"):
        phase["status"] = '"failed"'
        phase["completed_at"] = "null"
        phase["usage"] = "null"
        phase["error"] = dumps({"code": "server_error", "message": scenario.error_message})
    return phase


_ADDED, _DONE = "response.output_item.added", "response.output_item.done"
_PART_ADDED, _PART_DONE = "response.content_part.added", "response.content_part.done"


def _stream_item(w: EventWriter, index: int, item: Item, out: list[Frame]) -> None:
    out.append(w.item(_ADDED, index, _added_item(item)))
    if isinstance(item, FunctionCall):
        out.extend(w.args_delta(index, item.id, delta) for delta in item.deltas)
        out.append(w.args_done(index, item.id, item.arguments))
    elif item.deltas is not None:
        if isinstance(item, Message):
            kind, empty, full = item.kind, _part(item, ""), _part(item, item.text)
        else:
            kind = "reasoning_text"
            empty = {"type": kind, "text": ""}
            full = {"type": kind, "text": item.text}
        out.append(w.part(_PART_ADDED, index, item.id, empty))
        out.extend(w.text_delta(kind, index, item.id, delta) for delta in item.deltas)
        if w.style.text_done_events:
            out.append(w.text_done(kind, index, item.id, item.text))
        out.append(w.part(_PART_DONE, index, item.id, full))
    out.append(w.item(_DONE, index, final_item(item)))


def _stream_interleaved_calls(w: EventWriter, calls: list[FunctionCall], out: list[Frame]) -> None:
    out.extend(w.item(_ADDED, i, _added_item(call)) for i, call in enumerate(calls))
    for step in range(max(len(call.deltas) for call in calls)):
        for i, call in enumerate(calls):
            if step < len(call.deltas):
                out.append(w.args_delta(i, call.id, call.deltas[step]))
    out.extend(w.args_done(i, call.id, call.arguments) for i, call in enumerate(calls))
    out.extend(w.item(_DONE, i, final_item(call)) for i, call in enumerate(calls))


def stream_frames(style: Style, values: dict[str, str], scenario: Scenario) -> list[Frame]:
    """Every SSE frame of ``scenario``, terminal event and ``[DONE]`` included."""
    w = EventWriter(style, values)
    out = [w.response("response.created"), w.response("response.in_progress")]
    if scenario.interleave_calls:
        calls = [i for i in scenario.items if isinstance(i, FunctionCall)]
        _stream_interleaved_calls(w, calls, out)
    else:
        for index, item in enumerate(scenario.items):
            _stream_item(w, index, item, out)
    if scenario.outcome == "error_event":
        out.append(w.error("server_error", scenario.error_message))
    else:
        etype = {"incomplete": "response.incomplete", "failed": "response.failed"}.get(
            scenario.outcome, "response.completed"
        )
        out.append(w.response(etype, **_final_phase(scenario, style.dumps, values["created_at"])))
    if style.done_marker:
        out.append(("[DONE]", style.done_marker))
    return out


def response_body(style: Style, values: dict[str, str], scenario: Scenario) -> bytes:
    """The non-streamed Response JSON of ``scenario`` (``values`` built compact)."""

    def dumps(o: Any) -> str:
        return json.dumps(o, separators=(",", ":"))

    return render_response_json(
        style, values, **_final_phase(scenario, dumps, values["created_at"])
    )
