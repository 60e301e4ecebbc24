"""Chat ``messages`` → Responses ``input`` items (and ``instructions``).

One chat message becomes zero or more input items, in order, so Goose's
history shape (an assistant text message, then one assistant message per tool
call with ``content: null``, each followed by its ``tool`` message) comes out
as the same sequence of ``message`` / ``function_call`` /
``function_call_output`` items.

Deliberate losses: ``name`` on any message; ``assistant.reasoning_content``
(there is no faithful Responses form without the original reasoning item and
its id); empty assistant text. Everything else either maps or is a 400 that
names the field.

Under ``"drop"``, a request whose newest user message points at something
"in the system prompt" keeps its system messages (as ``"input"`` does): Goose
compacts a long session by putting the whole conversation in the system
prompt and asking, as the only user message, to "summarize the conversation
history provided in the system prompt"; dropped, that history never reached
the model and Goose carried on from a summary of nothing. A message that only
names the system prompt ("my app ignores its system prompt") does not count.
A request of system and developer messages alone keeps them too: dropped,
the backend would be asked to answer nothing (under ``"instructions"`` too,
which would leave ``input`` empty). So does a one-off request to
summarize: no tools, one user message besides the system messages, and a
system prompt that asks to "summarize". Goose sends one for each old tool
call of a long session ("Your task is to summarize a tool call & response
pair"), the call and its result as the user message; dropped, the backend
answered a bare transcript, and that answer replaced the tool's result in
Goose's history. A system prompt that holds the request's task keeps them
too: Goose's subagents (its ``delegate`` tool, run with a skill, an agent
file or a recipe) get their task in an ``<instructions>`` element and a
generic user message ("Apply the skill knowledge to produce a useful
result."); Goose Desktop's recipe sessions get the recipe after "IMPORTANT
instructions for you to operate as agent:"; and ``/plan`` asks a tool-less
"planner" for a plan of the conversation. Dropped, each was told to do
something it never saw. What ``"drop"`` leaves out is listed in
``ChatRequest.dropped``, which the proxy logs at DEBUG.

Legacy ``function_call`` / ``role: "function"`` messages have no call ids;
each legacy call gets ``call_id = "legacy_call_<message index>"`` and the next
``function`` message with the same name answers the oldest open one.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Optional

from .fields import (
    CONTENT,
    at,
    fail,
    get_object,
    get_str,
    require_list,
    require_object,
    require_str,
    unsupported,
)

__all__ = [
    "keeps_system_messages",
    "points_into_the_system_prompt",
    "texts_of",
    "translate_messages",
]

Item = dict[str, Any]

_POINTS_INTO_THE_SYSTEM_PROMPT = re.compile(r"\bin the system prompt\b", re.IGNORECASE)
_ASKS_TO_SUMMARIZE = re.compile(r"\bsummari[sz]e\b", re.IGNORECASE)
#: a system prompt that holds the request's task: Goose's subagent prompt puts
#: the delegated task (a skill's text, an agent file's, a recipe's
#: instructions) in an ``<instructions>`` element, Goose Desktop a recipe's
#: after "IMPORTANT instructions for you to operate as agent:"; both as Goose
#: writes them, in plain substring searches (see ``_states_its_task``)
_OPERATE_AS_AGENT = "instructions for you to operate as agent"
#: Goose's ``/plan``: a tool-less request whose system prompt makes a "planner"
_PLANNER = "planner"


def translate_messages(
    messages: Any,
    system_mode: str,
    tools: Any = None,
    breakpoints: bool = True,
    dropped: Optional[list[str]] = None,
) -> tuple[list[Item], Optional[str]]:
    """Map the chat ``messages`` array to Responses input items.

    ``system_mode`` is ``"drop"``, ``"instructions"`` or ``"input"`` (see
    :class:`~goose_proxy.translate.TranslateOptions`). Returns the items and,
    in ``"instructions"`` mode, the joined system text (None when there is none).
    A part's ``prompt_cache_breakpoint`` (an object) goes with it when
    ``breakpoints`` is true; a tool result with one is sent as parts, not as
    one string. A system or developer message with text that ``"drop"`` left
    out is listed in ``dropped`` (``messages[0] (system)``) when it is given,
    and so is a kept breakpoint with no place in the request
    (``messages[1].content[0].prompt_cache_breakpoint``): on a part of the
    ``instructions`` string or of an assistant message's text, both sent as
    one string.

    Raises:
        InvalidRequest: a message or part has the wrong shape, an unknown role or
            content part type, or a ``function`` result without its call; the
            message and ``param`` name the field path.
        UnsupportedParameter: audio input parts or assistant ``audio``.
    """
    if messages is None:
        fail("messages", "required")
    messages = require_list(messages, "messages")
    if not messages:
        fail("messages", "must contain at least one message")
    if system_mode == "drop" and keeps_system_messages(messages, tools):
        system_mode = "input"  # see the module's docstring
    elif system_mode == "instructions" and all(_is_system(m) for m in messages):
        system_mode = "input"  # no other message: the backend would answer nothing
    items: list[Item] = []
    instructions: list[str] = []
    legacy_calls: dict[str, list[str]] = {}  # function name -> open legacy call ids
    for i, raw in enumerate(messages):
        path = at("messages", i)
        msg = require_object(raw, path)
        role = msg.get("role")
        if role is None:
            fail(at(path, "role"), "required")
        role = require_str(role, at(path, "role"))
        if role in ("system", "developer"):
            parts = _text_parts(msg.get("content"), at(path, "content"), breakpoints)
            if system_mode == "instructions":
                _lost_breakpoints(parts, at(path, "content"), dropped)
                joined = "".join(p["text"] for p in parts)
                if joined:
                    instructions.append(joined)
            elif system_mode == "input":
                parts = [p for p in parts if p["text"]]
                if parts:
                    items.append({"type": "message", "role": role, "content": parts})
            elif dropped is not None and any(p["text"] for p in parts):
                dropped.append(f"{path} ({role})")
        elif role == "user":
            content = _user_content(msg, path, breakpoints)
            items.append({"type": "message", "role": "user", "content": content})
        elif role == "assistant":
            lost: Optional[list[str]] = dropped if breakpoints else None
            items.extend(_assistant_items(msg, path, i, legacy_calls, lost))
        elif role == "tool":
            call_id = msg.get("tool_call_id")
            if call_id is None:
                fail(at(path, "tool_call_id"), "required")
            call_id = require_str(call_id, at(path, "tool_call_id"))
            parts = _text_parts(msg.get("content"), at(path, "content"), breakpoints)
            items.append(
                {"type": "function_call_output", "call_id": call_id, "output": _output(parts)}
            )
        elif role == "function":
            items.append(_legacy_function_result(msg, path, legacy_calls, breakpoints))
        else:
            fail(at(path, "role"), f"unknown role {role!r}")
    return items, ("\n\n".join(instructions) if instructions else None)


def _is_system(msg: Any) -> bool:
    return isinstance(msg, Mapping) and msg.get("role") in ("system", "developer")


def keeps_system_messages(messages: list[Any], tools: Any) -> bool:
    """Whether ``"drop"`` keeps a request's system messages (see the module's
    docstring). The same for chat messages and Responses input items."""
    if points_into_the_system_prompt(messages):
        return True
    system: list[str] = []
    others = []
    for msg in messages:
        if _is_system(msg):
            system += texts_of(msg.get("content"))
        else:
            others.append(msg)
    if not others:
        return True  # system messages alone
    if any(_states_its_task(t) for t in system):
        return True
    if not tools and any(_PLANNER in t for t in system):
        return True
    (only, *more) = others
    return (
        not more
        and not tools
        and isinstance(only, Mapping)
        and only.get("role") == "user"
        and only.get("type", "message") == "message"
        and any(_ASKS_TO_SUMMARIZE.search(t) for t in system)
    )


def _states_its_task(text: str) -> bool:
    """Whether a system prompt holds its request's task (see
    ``_OPERATE_AS_AGENT``): an ``<instructions>`` element with text, found in
    one pass (a lazy regular expression rescans the rest of the text for each
    opening tag that has no closing one). Plain substring searches, as Goose
    writes the words: it sends its system prompt (tens of KB) on every turn,
    and a case-blind regular expression took 0.27 ms to search 18 KB."""
    if _OPERATE_AS_AGENT in text:
        return True
    start = text.find("<instructions>")
    while start >= 0:
        start += len("<instructions>")
        end = text.find("</instructions>", start)
        if end < 0:
            return False  # no closing tag after this opening: none after a later one
        if start < end and not text[start:end].isspace():
            return True
        start = text.find("<instructions>", end)
    return False


def points_into_the_system_prompt(messages: list[Any]) -> bool:
    """Whether the newest user message's text says "in the system prompt" (any shape
    it does not understand counts as no: the translation proper judges it). The
    same for chat messages and Responses input items."""
    for msg in reversed(messages):
        if isinstance(msg, Mapping) and msg.get("role") == "user":
            texts = texts_of(msg.get("content"))
            return any(_POINTS_INTO_THE_SYSTEM_PROMPT.search(t) for t in texts)
    return False


def texts_of(content: Any) -> list[str]:
    """The texts of a message's ``content``: a string, or the ``text`` of each part
    that has one (chat ``text`` parts, Responses ``input_text``); no check."""
    parts = [{"text": content}] if isinstance(content, str) else content
    return [
        p["text"]
        for p in (parts if isinstance(parts, list) else ())
        if isinstance(p, Mapping) and isinstance(p.get("text"), str)
    ]


def _text_parts(content: Any, path: str, breakpoints: bool = False) -> list[Item]:
    """A string or an array of ``text`` parts (system, developer, tool) as
    ``input_text`` parts, each with its ``prompt_cache_breakpoint`` if kept."""
    if isinstance(content, str):
        return [{"type": "input_text", "text": content}]
    if content is None:
        fail(path, "required")
    parts = require_list(content, path, CONTENT)
    out = []
    for j, raw in enumerate(parts):
        ppath = at(path, j)
        part = require_object(raw, ppath)
        ptype = _part_type(part, ppath)
        if ptype != "text":
            fail(at(ppath, "type"), f"unknown content part {ptype!r} (only 'text' is allowed here)")
        text = {"type": "input_text", "text": _required_str(part, "text", ppath)}
        out.append(_with_breakpoint(text, part, ppath, breakpoints))
    return out


def _output(parts: list[Item]) -> Any:
    """A tool result's ``output``: the text of its parts as one string, or the
    parts themselves when one carries a breakpoint (the one form that can)."""
    if any("prompt_cache_breakpoint" in p for p in parts):
        return parts
    return "".join(p["text"] for p in parts)


def _lost_breakpoints(parts: list[Item], path: str, dropped: Optional[list[str]]) -> None:
    """List in ``dropped`` the kept breakpoints of ``parts`` (of the content at
    ``path``), which are about to be joined into one string."""
    if dropped is not None:
        for j, part in enumerate(parts):
            if "prompt_cache_breakpoint" in part:
                dropped.append(at(at(path, j), "prompt_cache_breakpoint"))


def _with_breakpoint(out: Item, part: Mapping[str, Any], path: str, keep: bool) -> Item:
    """``out`` (the part as sent) with ``part``'s ``prompt_cache_breakpoint`` when
    ``keep`` (an explicit prompt-cache breakpoint: the backend caches up to
    there); checked to be an object either way."""
    breakpoint_ = get_object(part, "prompt_cache_breakpoint", path)
    if breakpoint_ is not None and keep:
        out["prompt_cache_breakpoint"] = dict(breakpoint_)
    return out


def _part_type(part: Mapping[str, Any], path: str) -> str:
    ptype = part.get("type")
    if ptype is None:
        fail(at(path, "type"), "required")
    return require_str(ptype, at(path, "type"))


def _required_str(obj: Mapping[str, Any], key: str, path: str) -> str:
    value = obj.get(key)
    if value is None:
        fail(at(path, key), "required")
    return require_str(value, at(path, key))


def _user_content(msg: Mapping[str, Any], path: str, breakpoints: bool) -> list[Item]:
    cpath = at(path, "content")
    content = msg.get("content")
    if isinstance(content, str):
        return [{"type": "input_text", "text": content}]
    if content is None:
        fail(cpath, "required")
    parts = require_list(content, cpath, CONTENT)
    if not parts:
        fail(cpath, "must not be an empty array")
    out = []
    for j, raw in enumerate(parts):
        ppath = at(cpath, j)
        part = require_object(raw, ppath)
        out.append(_with_breakpoint(_user_part(part, ppath), part, ppath, breakpoints))
    return out


def _user_part(part: Mapping[str, Any], path: str) -> Item:
    ptype = _part_type(part, path)
    if ptype == "text":
        return {"type": "input_text", "text": _required_str(part, "text", path)}
    if ptype == "image_url":
        image = part.get("image_url")
        ipath = at(path, "image_url")
        if isinstance(image, str):  # a common shorthand: the URL itself
            return {"type": "input_image", "image_url": image, "detail": "auto"}
        if image is None:
            fail(ipath, "required")
        image = require_object(image, ipath)
        url = _required_str(image, "url", ipath)
        detail = get_str(image, "detail", ipath)
        return {"type": "input_image", "image_url": url, "detail": detail or "auto"}
    if ptype == "file":
        fpath = at(path, "file")
        file = part.get("file")
        if file is None:
            fail(fpath, "required")
        file = require_object(file, fpath)
        out: Item = {"type": "input_file"}
        for key in ("file_data", "file_id", "filename"):
            value = get_str(file, key, fpath)
            if value is not None:
                out[key] = value
        if "file_data" not in out and "file_id" not in out:
            fail(fpath, "needs file_data or file_id")
        return out
    if ptype == "input_audio":
        unsupported(at(path, "type"), "audio input ('input_audio' parts) is not supported")
    fail(at(path, "type"), f"unknown content part {ptype!r}")


def _assistant_items(
    msg: Mapping[str, Any],
    path: str,
    index: int,
    legacy_calls: dict[str, list[str]],
    lost: Optional[list[str]],
) -> list[Item]:
    # An earlier turn's text and refusal parts go as one string, in order: the
    # form every Responses server takes (``EasyInputMessage``). ``output_text``
    # and ``refusal`` parts are valid input only in an output message with an
    # ``id`` and a ``status`` (the openai SDK's types), which the proxy would
    # have to invent, and servers that check input items (vLLM) refuse them.
    texts: list[str] = []
    cpath = at(path, "content")
    content = msg.get("content")
    if isinstance(content, str):
        texts.append(content)
    elif content is not None:
        for j, raw in enumerate(require_list(content, cpath, CONTENT)):
            ppath = at(cpath, j)
            part = require_object(raw, ppath)
            ptype = _part_type(part, ppath)
            if ptype in ("text", "refusal"):
                texts.append(_required_str(part, ptype, ppath))
                # checked as on other parts; sent as one string, it has no place
                marked = get_object(part, "prompt_cache_breakpoint", ppath) is not None
                if marked and lost is not None:
                    lost.append(at(ppath, "prompt_cache_breakpoint"))
            else:
                fail(at(ppath, "type"), f"unknown content part {ptype!r}")
    text = "".join(texts)
    refusal = get_str(msg, "refusal", path)
    if refusal and refusal not in text:
        # (the proxy's own answers have a refusal in content too, in its place
        # among the text: a client that sends such a message back as history
        # would double it)
        text += refusal
    if msg.get("audio") is not None:
        unsupported(at(path, "audio"), "assistant audio is not supported")
    # reasoning_content is accepted and deliberately not forwarded (module docstring)

    items: list[Item] = []
    if text:
        items.append({"type": "message", "role": "assistant", "content": text})
    tool_calls = msg.get("tool_calls")
    if tool_calls is not None:
        tpath = at(path, "tool_calls")
        for k, raw in enumerate(require_list(tool_calls, tpath)):
            items.append(_tool_call_item(raw, at(tpath, k)))
    function_call = msg.get("function_call")
    if function_call is not None:
        fpath = at(path, "function_call")
        call = require_object(function_call, fpath)
        name = _required_str(call, "name", fpath)
        arguments = _required_str(call, "arguments", fpath)
        call_id = f"legacy_call_{index}"
        legacy_calls.setdefault(name, []).append(call_id)
        items.append(
            {"type": "function_call", "call_id": call_id, "name": name, "arguments": arguments}
        )
    return items


def _tool_call_item(raw: Any, path: str) -> Item:
    call = require_object(raw, path)
    ctype = call.get("type")
    if ctype is not None and ctype != "function":
        ctype = require_str(ctype, at(path, "type"))
        unsupported(at(path, "type"), f"tool call type {ctype!r} is not supported")
    call_id = _required_str(call, "id", path)
    fpath = at(path, "function")
    function = call.get("function")
    if function is None:
        fail(fpath, "required")
    function = require_object(function, fpath)
    name = _required_str(function, "name", fpath)
    arguments = _required_str(function, "arguments", fpath)
    return {"type": "function_call", "call_id": call_id, "name": name, "arguments": arguments}


def _legacy_function_result(
    msg: Mapping[str, Any], path: str, legacy_calls: dict[str, list[str]], breakpoints: bool
) -> Item:
    name = _required_str(msg, "name", path)
    content = msg.get("content")
    parts = [] if content is None else _text_parts(content, at(path, "content"), breakpoints)
    pending = legacy_calls.get(name)
    if not pending:
        fail(path, f"function result for {name!r} without a preceding assistant function_call")
    return {"type": "function_call_output", "call_id": pending.pop(0), "output": _output(parts)}
