"""How Goose reads a Responses answer: its serde types, mirrored strictly.

Goose (block/goose) sends gpt-5 and o-series models to ``POST /v1/responses``
and parses the answer with the types of
``crates/goose/src/providers/formats/openai/responses.rs`` (``formats/
openai_responses.rs`` in older releases). A stream event whose type is not in
``is_known_responses_stream_event_type`` is skipped; one whose type is known
goes through ``ResponsesStreamEvent``, and a payload that does not fit (an
unknown ``type`` variant, a missing field, a wrong type) fails the whole turn.
A JSON answer goes through ``ResponsesApiResponse``. Serde's rules as used
there: a missing or null ``Option`` is None; ``#[serde(default)]`` takes a
missing field, not a null; an ``i32`` is an integer in range, never a bool
or a float; a ``Value`` may be anything but must be present; unknown fields
are ignored.

:func:`goose_reads_stream` and :func:`goose_reads_response` raise
:class:`GooseRejects` where Goose fails, and return what it would show.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Union

I32 = (-(2**31), 2**31 - 1)
I64 = (-(2**63), 2**63 - 1)

# A spec: "str", "i32", "i64", "value" (any JSON, present), ("opt", spec),
# ("vec", spec), ("default_vec", spec) (a missing field is []), a dict (a struct:
# field -> spec), or ("tagged", {variant: struct}) (an enum tagged by "type").
Spec = Union[str, tuple, dict]


class GooseRejects(AssertionError):
    """Goose would fail the turn here."""


def _opt(spec: Spec) -> Spec:
    return ("opt", spec)


SUMMARY_TEXT = {"text": "str"}  # #[serde(tag = "type")] struct: the tag is not checked
USAGE = {"input_tokens": "i32", "output_tokens": "i32", "total_tokens": "i32"}
REASONING_INFO = {"effort": _opt("str"), "summary": _opt("str")}

# ContentPart
CONTENT_PART = (
    "tagged",
    {
        "output_text": {
            "text": "str",
            "annotations": _opt(("vec", "value")),
            "logprobs": _opt(("vec", "value")),
        },
        "refusal": {"refusal": "str"},
        "tool_call": {"id": "str", "name": "str", "arguments": "str"},
    },
)
_FUNCTION_CALL = {
    "id": "str",
    "status": "str",
    "call_id": _opt("str"),
    "name": "str",
    "arguments": "str",
}
_REASONING = {"id": "str", "summary": ("default_vec", SUMMARY_TEXT)}
# ResponseOutputItemInfo (streams)
OUTPUT_ITEM_INFO = (
    "tagged",
    {
        "reasoning": _REASONING,
        "message": {"id": "str", "status": "str", "role": "str", "content": ("vec", CONTENT_PART)},
        "function_call": _FUNCTION_CALL,
    },
)
# ResponseMetadata
RESPONSE_METADATA = {
    "id": "str",
    "object": "str",
    "created_at": "i64",
    "status": "str",
    "model": "str",
    "output": ("vec", OUTPUT_ITEM_INFO),
    "usage": _opt(USAGE),
    "reasoning": _opt(REASONING_INFO),
}
# ResponseContentBlock and ResponseOutputItem (JSON answers)
CONTENT_BLOCK = (
    "tagged",
    {
        "output_text": {"text": "str", "annotations": _opt(("vec", "value"))},
        "refusal": {"refusal": "str"},
        "tool_call": {"id": "str", "name": "str", "input": "value"},
    },
)
OUTPUT_ITEM = (
    "tagged",
    {
        "reasoning": _REASONING,
        "message": {"id": "str", "status": "str", "role": "str", "content": ("vec", CONTENT_BLOCK)},
        "function_call": _FUNCTION_CALL,
    },
)
# ResponsesApiResponse
RESPONSES_API_RESPONSE = {**RESPONSE_METADATA, "output": ("vec", OUTPUT_ITEM)}

_SEQ = {"sequence_number": "i32"}
_AT = {**_SEQ, "item_id": "str", "output_index": "i32"}
_PART_AT = {**_AT, "content_index": "i32"}
# ResponsesStreamEvent: the known event types (is_known_responses_stream_event_type)
STREAM_EVENTS: dict[str, dict[str, Spec]] = {
    "response.created": {**_SEQ, "response": RESPONSE_METADATA},
    "response.in_progress": {**_SEQ, "response": RESPONSE_METADATA},
    "response.output_item.added": {**_SEQ, "output_index": "i32", "item": OUTPUT_ITEM_INFO},
    "response.content_part.added": {**_PART_AT, "part": CONTENT_PART},
    "response.output_text.delta": {
        **_PART_AT,
        "delta": "str",
        "logprobs": _opt(("vec", "value")),
        "obfuscation": _opt("str"),
    },
    "response.output_item.done": {**_SEQ, "output_index": "i32", "item": OUTPUT_ITEM_INFO},
    "response.content_part.done": {**_PART_AT, "part": CONTENT_PART},
    "response.output_text.done": {**_PART_AT, "text": "str", "logprobs": _opt(("vec", "value"))},
    "response.completed": {**_SEQ, "response": RESPONSE_METADATA},
    "response.failed": {**_SEQ, "error": "value"},
    "response.function_call_arguments.delta": {**_AT, "delta": "str", "obfuscation": _opt("str")},
    "response.function_call_arguments.done": {**_AT, "arguments": "str"},
    "response.refusal.delta": {**_PART_AT, "delta": "str"},
    "response.refusal.done": {**_PART_AT, "refusal": "str"},
    "error": {"error": "value"},
    "keepalive": {"sequence_number": _opt("i32")},
}


def check(value: Any, spec: Spec, path: str = "$") -> None:
    """Raise GooseRejects where serde would refuse ``value`` as ``spec``."""
    if isinstance(spec, dict):
        if not isinstance(value, dict):
            raise GooseRejects(f"{path}: invalid type, expected a struct: {value!r:.80}")
        for name, sub in spec.items():
            where = f"{path}.{name}"
            if name in value:
                check(value[name], sub, where)
            elif isinstance(sub, tuple) and sub[0] in ("opt", "default_vec"):
                continue
            else:
                raise GooseRejects(f"{where}: missing field {name!r}")
        return
    if isinstance(spec, tuple):
        kind, sub = spec
        if kind == "opt":
            if value is not None:
                check(value, sub, path)
        elif kind in ("vec", "default_vec"):
            if not isinstance(value, list):
                raise GooseRejects(f"{path}: invalid type, expected a sequence: {value!r:.80}")
            for i, v in enumerate(value):
                check(v, sub, f"{path}[{i}]")
        else:  # tagged
            if not isinstance(value, dict) or "type" not in value:
                raise GooseRejects(f"{path}: missing field 'type'")
            tag = value["type"]
            if not isinstance(tag, str) or tag not in sub:
                raise GooseRejects(f"{path}: unknown variant {tag!r}")
            check(value, sub[tag], path)
        return
    if spec == "value":
        return
    if spec == "str":
        if not isinstance(value, str):
            raise GooseRejects(f"{path}: invalid type, expected a string: {value!r:.80}")
        return
    low, high = I32 if spec == "i32" else I64
    if not (isinstance(value, int) and not isinstance(value, bool) and low <= value <= high):
        raise GooseRejects(f"{path}: invalid type, expected {spec}: {value!r:.80}")


@dataclass
class GooseSees:
    """What Goose makes of an answer: its text (deltas, else the output's text and
    refusals) and its tool calls (name, arguments)."""

    text: str = ""
    calls: list[tuple[str, str]] = field(default_factory=list)


def _from_items(items: list[dict[str, Any]], seen: GooseSees, text_streamed: bool) -> None:
    for item in items:
        if item["type"] == "function_call":
            seen.calls.append((item["name"], item["arguments"]))
        elif item["type"] == "message" and not text_streamed:
            for part in item["content"]:
                seen.text += part.get("text") or part.get("refusal") or ""


def goose_reads_stream(body: Union[bytes, str]) -> GooseSees:
    """Read a stream line by line as ``responses_api_to_streaming_message`` does:
    ``data:`` lines (any other line but ``event:`` lines, comments and blank ones
    is parsed as JSON too), ``[DONE]`` or ``response.completed`` ends it, a
    failure event fails the turn."""
    text = body.decode() if isinstance(body, bytes) else body
    seen, items, streamed = GooseSees(), [], False
    for line in text.replace("\r\n", "\n").split("\n"):
        if not line.strip() or line.startswith(":") or line.startswith("event:"):
            continue
        data = (
            line[6:]
            if line.startswith("data: ")
            else line[5:]
            if line.startswith("data:")
            else line
        )
        if data == "[DONE]":
            break
        try:
            event = json.loads(data)
        except ValueError:
            raise GooseRejects(f"not JSON: {data!r:.80}") from None
        kind = event.get("type") if isinstance(event, dict) else None
        if not isinstance(kind, str) or kind not in STREAM_EVENTS:
            continue  # an event type Goose does not know: skipped
        check(event, STREAM_EVENTS[kind], kind)
        if kind in ("response.output_text.delta", "response.refusal.delta"):
            streamed = True
            seen.text += event["delta"]
        elif kind == "response.output_item.done":
            items.append(event["item"])
        elif kind == "response.completed":
            if event["response"]["output"]:
                items = event["response"]["output"]
            break
        elif kind in ("response.failed", "error"):
            raise GooseRejects(f"the turn failed: {kind}")
    _from_items(items, seen, streamed)
    return seen


def goose_reads_response(body: Union[bytes, str, dict[str, Any]]) -> GooseSees:
    """Read a JSON answer as ``ResponsesApiResponse`` and ``responses_api_to_message``."""
    obj = body if isinstance(body, dict) else json.loads(body)
    check(obj, RESPONSES_API_RESPONSE)
    seen = GooseSees()
    _from_items(obj["output"], seen, False)
    return seen


# --- how Goose classifies an error answer -------------------------------------

#: lower-case phrases after which Goose takes a 400 for a context overflow and
#: compacts its history (``check_context_length_exceeded`` in
#: ``crates/goose/src/providers/openai_compatible.rs``); it never reads ``code``
CONTEXT_PHRASES = (
    "too long",
    "context length",
    "context_length_exceeded",
    "reduce the length",
    "token count",
    "exceeds",
    "exceed context limit",
    "input length",
    "max_tokens",
    "decrease input length",
    "context limit",
    "maximum prompt length",
)


def goose_error_kind(status: int, body: Union[bytes, str, dict[str, Any]]) -> str:
    """The ``ProviderError`` variant Goose makes of an error answer
    (``map_http_error_to_provider_error`` there): the message is
    ``error.message``, else a top-level ``message``, else the whole body; only
    ``ContextLengthExceeded`` makes Goose compact, only ``RateLimitExceeded``
    makes it retry."""
    try:
        doc = body if isinstance(body, dict) else json.loads(body)
    except ValueError:
        doc = None
    message = None
    if isinstance(doc, dict):
        inner = doc.get("error")
        said = inner.get("message") if isinstance(inner, dict) else None
        said = said if said is not None else doc.get("message")
        message = said if isinstance(said, str) else None
    if message is None:
        message = json.dumps(doc) if doc is not None else ""
    if status in (401, 403):
        return "Authentication"
    if status == 402:
        return "CreditsExhausted"
    if status == 413:
        return "ContextLengthExceeded"
    if status == 400:
        lowered = message.lower()
        if any(p in lowered for p in CONTEXT_PHRASES):
            return "ContextLengthExceeded"
        return "RequestFailed"
    if status == 429:
        return "RateLimitExceeded"
    return "ServerError" if status >= 500 else "RequestFailed"
