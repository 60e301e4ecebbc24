"""How Goose reads the proxy's answers, as two lines of Goose read them.

Two lines of Goose are in use: block/goose 1.x and aaif-goose, where the
provider code moved to ``crates/goose-provider-types`` and
``crates/goose-providers``. Each parser here has a model of each line, and the
public helpers ask both: they fail where either line would fail the turn, and
where the two would show different text or tool calls (an AssertionError
saying how they differ). ``line=BLOCK`` or ``line=AAIF`` asks one line alone.

Responses answers. Goose sends gpt-5 and o-series models to ``POST
/v1/responses`` and parses the answer with serde types: block/goose 1.x those
of ``crates/goose/src/providers/formats/openai/responses.rs`` (``formats/
openai_responses.rs`` in older releases), aaif-goose those of
``crates/goose-provider-types/src/formats/openai_responses.rs``. A stream
event whose type is not in ``is_known_responses_stream_event_type`` is
skipped; one whose type is known goes through ``ResponsesStreamEvent``, and a
payload that does not fit (an unknown ``type`` variant, a missing field, a
wrong type) fails the whole turn. A JSON answer goes through
``ResponsesApiResponse``. Serde's rules as used there: a missing or null
``Option`` is None; ``#[serde(default)]`` takes a missing field, not a null;
an ``i32`` is an integer in range, never a bool or a float; a ``Value`` may
be anything but must be present; unknown fields are ignored.

:func:`goose_reads_stream` and :func:`goose_reads_response` raise
:class:`GooseRejects` where Goose fails, and return what it would show.
"""

from __future__ import annotations

import json
import re
import unicodedata
from dataclasses import dataclass, field
from typing import Any, Optional, Union

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


def _stream_events(metadata: Spec, item: Spec, part: Spec) -> dict[str, dict[str, Spec]]:
    """``ResponsesStreamEvent``: the known event types
    (``is_known_responses_stream_event_type``) and their fields."""
    return {
        "response.created": {**_SEQ, "response": metadata},
        "response.in_progress": {**_SEQ, "response": metadata},
        "response.output_item.added": {**_SEQ, "output_index": "i32", "item": item},
        "response.content_part.added": {**_PART_AT, "part": part},
        "response.output_text.delta": {
            **_PART_AT,
            "delta": "str",
            "logprobs": _opt(("vec", "value")),
            "obfuscation": _opt("str"),
        },
        "response.output_item.done": {**_SEQ, "output_index": "i32", "item": item},
        "response.content_part.done": {**_PART_AT, "part": part},
        "response.output_text.done": {
            **_PART_AT,
            "text": "str",
            "logprobs": _opt(("vec", "value")),
        },
        "response.completed": {**_SEQ, "response": metadata},
        "response.failed": {**_SEQ, "error": "value"},
        "response.function_call_arguments.delta": {
            **_AT,
            "delta": "str",
            "obfuscation": _opt("str"),
        },
        "response.function_call_arguments.done": {**_AT, "arguments": "str"},
        "response.refusal.delta": {**_PART_AT, "delta": "str"},
        "response.refusal.done": {**_PART_AT, "refusal": "str"},
        "error": {"error": "value"},
        "keepalive": {"sequence_number": _opt("i32")},
    }


STREAM_EVENTS = _stream_events(RESPONSE_METADATA, OUTPUT_ITEM_INFO, CONTENT_PART)

# aaif-goose (``crates/goose-provider-types/src/formats/openai_responses.rs``):
# the same types, with ``id`` and ``status`` of output items optional, a
# ``reasoning_text`` content part, ``output`` of a stream's response defaulted,
# ``incomplete_details`` and ``input_tokens_details`` read, and one more event,
# ``response.incomplete``, parsed as strictly as ``response.completed``.
AAIF_USAGE = {**USAGE, "input_tokens_details": _opt({"cached_tokens": _opt("i32")})}
AAIF_CONTENT_PART = ("tagged", {**CONTENT_PART[1], "reasoning_text": {"text": "str"}})
AAIF_CONTENT_BLOCK = ("tagged", {**CONTENT_BLOCK[1], "reasoning_text": {"text": "str"}})
_AAIF_FUNCTION_CALL = {**_FUNCTION_CALL, "id": _opt("str"), "status": _opt("str")}
_AAIF_REASONING = {**_REASONING, "id": _opt("str")}


def _aaif_items(parts: Spec) -> Spec:
    message = {"id": _opt("str"), "status": _opt("str"), "role": "str", "content": ("vec", parts)}
    return (
        "tagged",
        {"reasoning": _AAIF_REASONING, "message": message, "function_call": _AAIF_FUNCTION_CALL},
    )


AAIF_OUTPUT_ITEM_INFO = _aaif_items(AAIF_CONTENT_PART)
AAIF_OUTPUT_ITEM = _aaif_items(AAIF_CONTENT_BLOCK)
AAIF_RESPONSE_METADATA = {
    **RESPONSE_METADATA,
    "output": ("default_vec", AAIF_OUTPUT_ITEM_INFO),
    "usage": _opt(AAIF_USAGE),
    "incomplete_details": _opt({"reason": _opt("str")}),
}
AAIF_RESPONSES_API_RESPONSE = {
    **RESPONSES_API_RESPONSE,
    "output": ("vec", AAIF_OUTPUT_ITEM),
    "usage": _opt(AAIF_USAGE),
}
AAIF_STREAM_EVENTS = {
    **_stream_events(AAIF_RESPONSE_METADATA, AAIF_OUTPUT_ITEM_INFO, AAIF_CONTENT_PART),
    "response.incomplete": {**_SEQ, "response": AAIF_RESPONSE_METADATA},
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


#: the two lines of Goose, as ``line=`` names them
BLOCK = "block/goose 1.x"
AAIF = "aaif-goose"


@dataclass
class GooseSees:
    """What Goose makes of an answer: its text (deltas, else the output's text and
    refusals) and its tool calls (name, arguments). ``limit_reached``: aaif-goose
    marks the turn as cut at the output token limit (block/goose 1.x has no such
    mark)."""

    text: str = ""
    calls: list[tuple[str, str]] = field(default_factory=list)
    limit_reached: bool = False


def _ask_both(readers: dict[str, Any], body: Any, line: Optional[str], fields: tuple) -> Any:
    """Ask the model of each line of Goose; fail where either fails (the failure
    names the line), or where they would show different ``fields``."""
    if line is not None:
        return readers[line](body)
    got: dict[str, Any] = {}
    for name, read in readers.items():
        try:
            got[name] = read(body)
        except GooseRejects as exc:
            got[name] = exc
    failed = {name: r for name, r in got.items() if isinstance(r, GooseRejects)}
    if failed:
        said = "; ".join(f"{name}: {exc}" for name, exc in failed.items())
        only = "" if len(failed) == len(got) else "only "
        raise GooseRejects(f"{only}{said}")
    block, aaif = got[BLOCK], got[AAIF]
    for name in fields:
        a, b = getattr(block, name), getattr(aaif, name)
        assert a == b, f"{BLOCK} and {AAIF} differ on {name}: {a!r} vs {b!r}"
    if hasattr(block, "limit_reached"):
        block.limit_reached = aaif.limit_reached
    return block


def _from_items(items: list[dict[str, Any]], seen: GooseSees, text_streamed: bool) -> None:
    for item in items:
        if item["type"] == "function_call":
            seen.calls.append((item["name"], item["arguments"]))
        elif item["type"] == "message" and not text_streamed:
            for part in item["content"]:
                seen.text += part.get("text") or part.get("refusal") or ""


def _block_reads_stream(body: Union[bytes, str]) -> GooseSees:
    """block/goose 1.x: ``data:`` lines (any other line but ``event:`` lines,
    comments and blank ones is parsed as JSON too), ``[DONE]`` or
    ``response.completed`` ends it, a failure event fails the turn."""
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


_UNICODE_TAGS = re.compile("[\U000e0000-\U000e007f]")


def _strip_tags(text: str) -> str:
    """``strip_unicode_tags``: the Unicode tag characters (U+E0000..U+E007F) dropped."""
    return _UNICODE_TAGS.sub("", text)


def _sanitize(text: str) -> str:
    """``sanitize_unicode_tags``: NFC, then the tag characters dropped."""
    return _strip_tags(unicodedata.normalize("NFC", text))


def _aaif_tool_args(arguments: str) -> None:
    """aaif-goose's ``parse_tool_arguments`` of the Responses parser: empty or not
    JSON reads as ``{}``; JSON whose keys collide once tag characters are
    dropped (``sanitize_tool_arguments``) fails the turn."""

    def walk(value: Any) -> None:
        if isinstance(value, list):
            for v in value:
                walk(v)
        elif isinstance(value, dict):
            keys = [_strip_tags(k) for k in value]
            if len(set(keys)) != len(keys):
                raise GooseRejects("tool arguments: duplicate key once tags are dropped")
            for v in value.values():
                walk(v)

    try:
        doc = json.loads(arguments) if arguments else {}
    except ValueError:
        return
    walk(doc)


def _aaif_from_items(items: list[dict[str, Any]], seen: GooseSees, text_streamed: bool) -> None:
    """aaif-goose's ``process_streaming_output_items`` and ``responses_api_to_message``:
    a call's id is ``call_id``, else ``id``, else the turn fails, and two calls
    with one id fail it too; texts lose their tag characters; ``reasoning_text``
    parts are thinking, not text. (``tool_call`` content parts, which no OpenAI
    server sends, are not mirrored, as in the 1.x model.)"""
    ids: set[str] = set()
    for item in items:
        if item["type"] == "function_call":
            cid = item.get("call_id") if item.get("call_id") is not None else item.get("id")
            if cid is None:
                raise GooseRejects("a function_call without call_id and id")
            if _strip_tags(cid) in ids:
                raise GooseRejects(f"two tool calls with the id {cid!r}")
            ids.add(_strip_tags(cid))
            _aaif_tool_args(item["arguments"])
            seen.calls.append((_strip_tags(item["name"]), item["arguments"]))
        elif item["type"] == "message" and not text_streamed:
            for part in item["content"]:
                if part["type"] in ("output_text", "refusal"):
                    seen.text += _sanitize(part.get("text") or part.get("refusal") or "")


def _aaif_sse_payload(line: str) -> Optional[str]:
    """aaif-goose's line rules (``responses_api_to_streaming_message``,
    ``sse_field_name``): blank lines and comments are skipped, a ``data:`` line
    gives its value, a field whose name (the text before the first colon, or
    the whole line) is ASCII letters, digits, ``-`` and ``_`` only is skipped
    (``event:``, ``id:``, ``retry:``, ``x-trace:``); any other line is read as
    a bare JSON frame (``x.trace: abc`` fails), and so is a bare ``data``."""
    if not line.strip(RUST_WHITESPACE) or line.startswith(":"):
        return None
    if line.startswith("data: "):
        return line[6:]
    if line.startswith("data:"):
        return line[5:]
    name = line.split(":", 1)[0]
    if _AAIF_FIELD_NAME.fullmatch(name) and name != "data":
        return None
    return line


_AAIF_FIELD_NAME = re.compile(r"[A-Za-z0-9_-]+")


def _aaif_reads_stream(body: Union[bytes, str]) -> GooseSees:
    """aaif-goose: as 1.x, but ``response.incomplete`` is known and, like
    ``response.completed``, ends the stream (its output, less the function calls
    not ``completed``, replaces the items gathered; ``max_output_tokens`` or
    ``max_tokens`` as its reason marks the turn cut at the output limit), and
    deltas lose their tag characters."""
    text = body.decode() if isinstance(body, bytes) else body
    seen, items, streamed = GooseSees(), [], False
    for line in text.replace("\r\n", "\n").split("\n"):
        data = _aaif_sse_payload(line)
        if data is None:
            continue
        if data == "[DONE]":
            break
        try:
            event = json.loads(data)
        except ValueError:
            raise GooseRejects(f"not JSON: {data!r:.80}") from None
        kind = event.get("type") if isinstance(event, dict) else None
        if not isinstance(kind, str) or kind not in AAIF_STREAM_EVENTS:
            continue
        check(event, AAIF_STREAM_EVENTS[kind], kind)
        if kind in ("response.output_text.delta", "response.refusal.delta"):
            streamed = True
            seen.text += _strip_tags(event["delta"])
        elif kind == "response.output_item.done":
            items.append(event["item"])
        elif kind == "response.completed":
            if event["response"].get("output"):
                items = event["response"]["output"]
            break
        elif kind == "response.incomplete":
            response = event["response"]
            reason = (response.get("incomplete_details") or {}).get("reason")
            seen.limit_reached = response["status"] == "incomplete" and reason in (
                "max_output_tokens",
                "max_tokens",
            )
            if response.get("output"):
                items = [
                    i
                    for i in response["output"]
                    if i["type"] != "function_call" or i.get("status") == "completed"
                ]
            break
        elif kind in ("response.failed", "error"):
            raise GooseRejects(f"the turn failed: {kind}")
    _aaif_from_items(items, seen, streamed)
    return seen


def goose_reads_stream(body: Union[bytes, str], line: Optional[str] = None) -> GooseSees:
    """Read a Responses stream as ``responses_api_to_streaming_message`` of both
    lines of Goose does (``line``: one of them only)."""
    readers = {BLOCK: _block_reads_stream, AAIF: _aaif_reads_stream}
    return _ask_both(readers, body, line, ("text", "calls"))


def _block_reads_response(body: Union[bytes, str, dict[str, Any]]) -> GooseSees:
    obj = body if isinstance(body, dict) else json.loads(body)
    check(obj, RESPONSES_API_RESPONSE)
    seen = GooseSees()
    _from_items(obj["output"], seen, False)
    return seen


def _aaif_reads_response(body: Union[bytes, str, dict[str, Any]]) -> GooseSees:
    obj = body if isinstance(body, dict) else json.loads(body)
    check(obj, AAIF_RESPONSES_API_RESPONSE)
    seen = GooseSees()
    _aaif_from_items(obj["output"], seen, False)
    return seen


def goose_reads_response(
    body: Union[bytes, str, dict[str, Any]], line: Optional[str] = None
) -> GooseSees:
    """Read a JSON answer as ``ResponsesApiResponse`` and ``responses_api_to_message``
    of both lines of Goose (``line``: one of them only)."""
    readers = {BLOCK: _block_reads_response, AAIF: _aaif_reads_response}
    return _ask_both(readers, body, line, ("text", "calls"))


# --- how Goose classifies an error answer -------------------------------------
#
# Two lines of Goose are in use: block/goose 1.x (``check_context_length_exceeded``
# in ``crates/goose/src/providers/openai_compatible.rs``), and aaif-goose, where
# the mapping moved to ``crates/goose-providers/src/http_status.rs``
# (``map_http_error_to_provider_error``, ``is_context_length_exceeded``). The
# proxy's errors must mean the same to both: :func:`goose_error_kind` asks both
# and fails where they differ.

#: block/goose 1.x: lower-case phrases after which a 400 is a context overflow
#: (it compacts its history); it never reads ``code``
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

#: aaif-goose: phrases that alone make a message a context overflow
_AAIF_DIRECT = (
    "context length",
    "context_length_exceeded",
    "context window",
    "context_window_exceeded",
    "context limit",
    "maximum context",
    "max context",
    "maximum prompt length",
    "max prompt length",
    "input is too long",
    "input too long",
    "prompt is too long",
    "prompt too long",
)
_AAIF_TOKENS = ("input token", "input length", "prompt token", "prompt length",
                "message token", "messages token", "request token", "total token")  # fmt: skip
_AAIF_LIMIT = ("model limit", "model's limit", "maximum allowed", "max allowed",
               "maximum number of tokens", "token limit", "tokens limit")  # fmt: skip
_AAIF_OVERFLOW = ("exceed", "too long", "too large", "over the limit")
_AAIF_SIZE = ("request size", "requestsize", "request body size", "request payload size",
              "payload size", "body size", "request body is too large",
              "request body too large", "request payload is too large",
              "request payload too large", "payload is too large", "payload too large")  # fmt: skip


def _aaif_says_overflow(doc: Any, message: str) -> bool:
    """aaif-goose's ``is_context_length_exceeded``: the error's code, llama.cpp's
    token counts, or the message's words."""
    inner = doc.get("error") if isinstance(doc, dict) else None
    if isinstance(inner, dict):
        code = inner.get("code")
        if isinstance(code, str) and code.lower() == "context_length_exceeded":
            return True
        n, ctx = inner.get("n_prompt_tokens"), inner.get("n_ctx")
        numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (n, ctx))
        if numbers and ctx > 0 and n > ctx:
            return True
    t = message.lower()
    if any(p in t for p in _AAIF_DIRECT):
        return True
    if "reduce the length" in t and any(w in t for w in ("message", "input", "prompt")):
        return True
    overflow = any(p in t for p in _AAIF_OVERFLOW)
    words = set(re.split(r"[^a-z0-9]", t))
    content_length = "content length" in t or "content-length" in t
    sized = any(p in t for p in _AAIF_SIZE) or (
        content_length and bool(words & {"request", "byte", "bytes"})
    )
    if sized and overflow:
        return True
    return overflow and any(p in t for p in _AAIF_TOKENS) and any(p in t for p in _AAIF_LIMIT)


def goose_error_kind(status: int, body: Union[bytes, str, dict[str, Any]]) -> str:
    """The ``ProviderError`` variant Goose makes of an error answer
    (``map_http_error_to_provider_error``): the message is ``error.message``,
    else a top-level ``message``, else the whole body; only
    ``ContextLengthExceeded`` makes Goose compact. The same under block/goose
    1.x and aaif-goose, or an AssertionError saying how they differ."""
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
        block = any(p in message.lower() for p in CONTEXT_PHRASES)
        aaif = _aaif_says_overflow(doc, message)
        assert block == aaif, f"Goose 1.x and aaif-goose differ on {message!r}: {block}, {aaif}"
        return "ContextLengthExceeded" if block else "RequestFailed"
    if status == 429:
        return "RateLimitExceeded"
    return "ServerError" if status >= 500 else "RequestFailed"


# --- how Goose reads a chat-completions answer ------------------------------------

#: the characters Rust's ``str::trim`` takes away (Unicode White_Space); Python's
#: ``str.strip()`` would take U+001C..U+001F as well
RUST_WHITESPACE = (
    "\t\n\x0b\x0c\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007"
    "\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000"
)
_THINK_TAG = re.compile(r"</?think", re.IGNORECASE)
_FUNCTION_NAME = re.compile(r"[a-zA-Z0-9_-]+")


class GooseTurnFails(GooseRejects):
    """Goose fails the turn: ``kind`` is the ``ProviderError`` variant, ``seen``
    what it had already shown (messages yielded before the failure stay shown)."""

    def __init__(self, kind: str, message: str, seen: Any = None) -> None:
        super().__init__(f"{kind}: {message}")
        self.kind, self.message, self.seen = kind, message, seen


@dataclass
class GooseCall:
    """A tool request as Goose makes it: ``arguments`` the text it gathered,
    ``args`` what it parsed (None: not JSON, Goose shows an ``INVALID_PARAMS``
    error, or for a bad name ``INVALID_REQUEST``; aaif-goose also shows an error
    for JSON that is not an object and for every call of an answer cut at the
    output token limit; their repair of truncated JSON and of raw control
    characters is not mirrored)."""

    id: str
    name: str
    arguments: str
    args: Any = None


@dataclass
class GooseChat:
    """What Goose shows of a chat answer: its text, its thinking, its tool requests
    and the token usage it records (``(input, output, total)``, the last one
    reported; ``usages`` counts them). ``dropped_text`` is text Goose read and
    threw away (content in the chunks that carry tool-call deltas), ``lost_calls``
    tool calls it gathered but never made (a ``[DONE]`` before the chunk that
    finishes them). ``limit_reached``: aaif-goose marks the answer as cut at the
    output token limit (a ``finish_reason`` of ``length``); 1.x has no such mark."""

    text: str = ""
    thinking: str = ""
    calls: list[GooseCall] = field(default_factory=list)
    usage: Optional[tuple[Optional[int], Optional[int], Optional[int]]] = None
    usages: int = 0
    dropped_text: str = ""
    lost_calls: list[GooseCall] = field(default_factory=list)
    limit_reached: bool = False


def _int_or_none(value: Any, bits: int) -> bool:
    return value is None or (
        isinstance(value, int)
        and not isinstance(value, bool)
        and -(2 ** (bits - 1)) <= value < 2 ** (bits - 1)
    )


def _chat_fail(what: str, line: str) -> GooseTurnFails:
    return GooseTurnFails(
        "RequestFailed", f"Failed to parse streaming chunk: {what}: {line!r:.200}"
    )


def _check_chunk(value: Any, line: str) -> dict[str, Any]:
    """``StreamingChunk`` and what it holds, as serde takes them (``Option`` fields
    may be missing or null; ``delta`` may be missing, not null; ``function`` must be
    there; ``arguments`` may be missing or null)."""

    def need(ok: bool, what: str) -> None:
        if not ok:
            raise _chat_fail(what, line)

    def opt_str(obj: dict[str, Any], key: str, where: str) -> None:
        need(obj.get(key) is None or isinstance(obj[key], str), f"{where}.{key}: expected a string")

    need(isinstance(value, dict), "expected struct StreamingChunk")
    need(isinstance(value.get("choices"), list), "choices: missing or not a sequence")
    need(_int_or_none(value.get("created"), 64), "created: expected i64")
    opt_str(value, "id", "chunk")
    opt_str(value, "model", "chunk")
    for choice in value["choices"]:
        need(isinstance(choice, dict), "expected struct StreamingChoice")
        need(_int_or_none(choice.get("index"), 32), "choice.index: expected i32")
        opt_str(choice, "finish_reason", "choice")
        delta = choice.setdefault("delta", {})
        need(isinstance(delta, dict), "delta: expected struct Delta")
        for key in ("role", "reasoning", "reasoning_content"):
            opt_str(delta, key, "delta")
        content = delta.get("content")
        if isinstance(content, list):
            for part in content:
                need(isinstance(part, dict) and isinstance(part.get("type"), str), "content part")
                opt_str(part, "text", "content part")
                opt_str(part, "thoughtSignature", "content part")
        else:
            need(content is None or isinstance(content, str), "delta.content: no variant matches")
        details = delta.get("reasoning_details")
        need(details is None or isinstance(details, list), "reasoning_details: expected a sequence")
        calls = delta.get("tool_calls")
        need(calls is None or isinstance(calls, list), "tool_calls: expected a sequence")
        for call in calls or []:
            need(isinstance(call, dict), "expected struct DeltaToolCall")
            opt_str(call, "id", "tool call")
            opt_str(call, "type", "tool call")
            need(_int_or_none(call.get("index"), 32), "tool call index: expected i32")
            fn = call.get("function")
            need(isinstance(fn, dict), "tool call: missing field `function`")
            opt_str(fn, "name", "function")
            opt_str(fn, "arguments", "function")
    return value


def _chat_chunk(line: str) -> dict[str, Any]:
    """``parse_streaming_chunk``: JSON, then an ``error`` key (any value, null too)
    or ``object: "error"`` fails the turn as a server error, then the types."""
    try:
        value = json.loads(line)
    except ValueError as exc:
        raise _chat_fail(str(exc), line) from None
    if isinstance(value, dict) and "error" in value:
        err = value["error"]
        said = err.get("message") if isinstance(err, dict) else None
        raise GooseTurnFails(
            "ServerError", said if isinstance(said, str) else "Unknown server error"
        )
    if isinstance(value, dict) and value.get("object") == "error":
        said = value.get("message")
        raise GooseTurnFails(
            "ServerError", said if isinstance(said, str) else "Unknown server error"
        )
    return _check_chunk(value, line)


def _as_i64(value: Any) -> Optional[int]:
    ok = isinstance(value, int) and not isinstance(value, bool) and -(2**63) <= value < 2**63
    return value if ok else None


def goose_usage(usage: Any) -> tuple[Optional[int], Optional[int], Optional[int]]:
    """``get_usage``: a nested ``usage`` object if there is one, ``prompt_tokens``
    (else Ollama's ``prompt_eval_count``), ``completion_tokens`` (else
    ``eval_count``), ``total_tokens`` (else their sum)."""
    if not isinstance(usage, dict):
        return None, None, None
    if isinstance(usage.get("usage"), dict):
        usage = usage["usage"]

    def first(*keys: str) -> Optional[int]:
        for key in keys:
            got = _as_i64(usage.get(key))
            if got is not None:
                return got
        return None

    prompt, completion = (
        first("prompt_tokens", "prompt_eval_count"),
        first("completion_tokens", "eval_count"),
    )
    total = first("total_tokens")
    if total is None and prompt is not None and completion is not None:
        total = prompt + completion
    return prompt, completion, total


def _text_of(content: Any) -> Optional[str]:
    """``extract_content_and_signature``: a string as is; of parts, the ``text`` ones."""
    if isinstance(content, str):
        text: Optional[str] = content
    elif isinstance(content, list):
        text = "".join(p.get("text") or "" for p in content if p["type"] == "text") or None
    else:
        text = None
    if text and _THINK_TAG.search(text):
        # Goose moves <think> blocks to its thinking (ThinkFilter): not mirrored
        raise NotImplementedError(f"a <think> tag in the text: {text!r:.80}")
    return text


def _reasoning_of(delta: dict[str, Any]) -> Optional[str]:
    """``Delta::reasoning_text``: a non-empty ``reasoning_content``, else ``reasoning``."""
    return delta.get("reasoning_content") or delta.get("reasoning") or None


def _make_call(cid: str, name: str, arguments: str) -> GooseCall:
    if arguments == "":
        return GooseCall(cid, name, arguments, {})
    try:
        return GooseCall(cid, name, arguments, json.loads(arguments))
    except ValueError:
        return GooseCall(cid, name, arguments, None)


def _data_line(raw: str) -> Optional[str]:
    """``strip_data_prefix``: the trimmed payload of a ``data:`` line, else None."""
    if raw.startswith("data: "):
        return raw[6:].strip(RUST_WHITESPACE)
    if raw.startswith("data:"):
        return raw[5:].strip(RUST_WHITESPACE)
    return None


def _lines(body: Union[bytes, str]) -> list[str]:
    """``LinesCodec``: lines split at ``\\n``, one trailing ``\\r`` dropped, a last line
    without its ``\\n`` kept; a line that is not UTF-8 fails the stream."""
    if isinstance(body, str):
        body = body.encode()
    out = []
    for raw in body.split(b"\n"):
        raw = raw[:-1] if raw.endswith(b"\r") else raw
        try:
            out.append(raw.decode("utf-8"))
        except UnicodeDecodeError as exc:
            raise GooseTurnFails("RequestFailed", f"Stream decode error: {exc}") from None
    if out and out[-1] == "":
        out.pop()
    return out


class _ChatReading:
    """What both lines' chat stream readers keep while they read: what Goose has
    shown (``seen``), the last model named, and the reasoning gathered
    (``accumulated_reasoning_content``) with how much of it was shown
    (``yielded_reasoning_content_len``)."""

    def __init__(self) -> None:
        self.seen = GooseChat()
        self.model: Any = None
        self.reasoning = ""
        self.shown = 0

    def note_usage(self, chunk: dict[str, Any]) -> Optional[tuple[Any, Any, Any]]:
        """A chunk's usage, when it counts: it has ``completion_tokens`` and a
        model is known (this chunk's or an earlier one's)."""
        if chunk.get("model") is not None:
            self.model = chunk["model"]
        if chunk.get("usage") is None or self.model is None:
            return None
        usage = goose_usage(chunk["usage"])
        return usage if usage[1] is not None else None

    def record(self, usage: Optional[tuple[Any, Any, Any]]) -> None:
        if usage is not None:
            self.seen.usage, self.seen.usages = usage, self.seen.usages + 1

    def calls_read(self, calls: list[GooseCall], usage: Optional[tuple[Any, Any, Any]]) -> None:
        """The end of a tool-call gathering: the reasoning not yet shown, the calls."""
        self.seen.thinking += self.reasoning[self.shown :]
        self.reasoning, self.shown = "", 0
        self.seen.calls += calls
        self.record(usage)

    def other_chunk(
        self, first: dict[str, Any], delta: dict[str, Any], usage: Optional[tuple[Any, Any, Any]]
    ) -> None:
        """A chunk without tool calls: its reasoning and text are shown; its
        usage counts on a chunk with neither, or with a ``finish_reason``."""
        if delta.get("content") is not None or _reasoning_of(delta):
            thought, text = _reasoning_of(delta), _text_of(delta.get("content"))
            if thought:
                self.seen.thinking += thought
                self.shown = len(self.reasoning)
            self.seen.text += text or ""
            if not (thought or text) or first.get("finish_reason") is not None:
                self.record(usage)
        else:
            self.record(usage)


def _block_reads_chat_stream(body: Union[bytes, str]) -> GooseChat:
    """Read a streamed chat answer (the body of a 200) as block/goose 1.x does.

    Mirrors, in its own terms, ``response_to_streaming_message`` and
    ``parse_streaming_chunk`` (``crates/goose/src/providers/formats/openai/
    streaming.rs``; ``formats/openai.rs`` in older releases) with the serde types
    ``StreamingChunk``, ``StreamingChoice``, ``Delta``, ``DeltaToolCall`` and
    ``DeltaToolCallFunction`` (``formats/openai/types.rs``), ``get_usage``
    (``formats/openai/messages.rs``) and the line framing of
    ``stream_openai_compat`` (``providers/openai_compatible.rs``).

    The rules: only ``data:`` lines count (trimmed; an empty one is skipped, but
    not while tool calls are being gathered, where it fails to parse); ``[DONE]``
    ends the stream; a chunk that is not JSON or does not fit the types, or that
    has an ``error`` key or ``object: "error"``, fails the turn. Only
    ``choices[0]`` is read. A chunk with tool calls opens a loop that reads
    chunks until one has a ``finish_reason`` (or no choices): it gathers the
    calls by ``index`` (the first delta of an index needs ``id`` and
    ``function.name``), their arguments, reasoning and usage, and ignores their
    text; a ``[DONE]`` inside that loop ends everything and the calls are lost.
    Usage counts when it has ``completion_tokens`` and a model is known (this
    chunk's or an earlier one's); on a chunk with text it counts only if that
    chunk also has a ``finish_reason``. Raises :class:`GooseTurnFails` (its
    ``seen``: what Goose had shown by then)."""
    r = _ChatReading()
    seen = r.seen
    lines = iter(_lines(body))
    try:
        for raw in lines:
            line = _data_line(raw)
            if line == "[DONE]":
                break
            if not line:
                continue
            chunk = _chat_chunk(line)
            usage = r.note_usage(chunk)
            if not chunk["choices"]:
                r.record(usage)
                continue
            first, delta = chunk["choices"][0], chunk["choices"][0]["delta"]
            r.reasoning += _reasoning_of(delta) or ""
            if not delta.get("tool_calls"):
                r.other_chunk(first, delta, usage)
                continue
            calls: dict[int, list[Any]] = {}
            for c in delta["tool_calls"]:
                if None not in (c.get("index"), c.get("id"), c["function"].get("name")):
                    calls[c["index"]] = [
                        c["id"],
                        c["function"]["name"],
                        c["function"].get("arguments") or "",
                    ]
            finished = first.get("finish_reason") == "tool_calls"
            while not finished:
                raw = next(lines, None)
                if raw is None:
                    break
                line = _data_line(raw)
                if line is None:
                    continue
                if line == "[DONE]":
                    seen.lost_calls = [_make_call(*calls[i]) for i in sorted(calls)]
                    return seen
                more = _chat_chunk(line)
                usage = r.note_usage(more) or usage
                if not more["choices"]:
                    break
                d = more["choices"][0]["delta"]
                r.reasoning += _reasoning_of(d) or ""
                seen.dropped_text += _text_of(d.get("content")) or ""
                for c in d.get("tool_calls") or []:
                    index = c.get("index")
                    if index is None:
                        continue
                    if index in calls:
                        calls[index][2] += c["function"].get("arguments") or ""
                    elif c.get("id") is not None and c["function"].get("name") is not None:
                        calls[index] = [
                            c["id"],
                            c["function"]["name"],
                            c["function"].get("arguments") or "",
                        ]
                finished = more["choices"][0].get("finish_reason") is not None
            r.calls_read([_make_call(*calls[i]) for i in sorted(calls)], usage)
    except GooseTurnFails as exc:
        exc.seen = seen
        raise
    return seen


def _block_reads_chat_response(body: Union[bytes, str, dict[str, Any]]) -> GooseChat:
    """Read a non-streamed chat answer (the body of a 200) as block/goose 1.x does.

    Mirrors ``response_to_message`` and ``get_usage`` (``crates/goose/src/
    providers/formats/openai/messages.rs``; ``formats/openai.rs`` in older
    releases) and ``handle_response_openai_compat`` (``providers/
    openai_compatible.rs``): the body must be JSON; ``choices[0].message`` must
    be there (else an ``error`` object's message, or "No message", fails the
    turn); ``reasoning_content`` (else ``reasoning``, consulted only when
    ``reasoning_content`` is absent) if a non-empty string is the thinking; a
    string ``content`` is the text; each tool call is read leniently (a missing
    id, name or arguments is empty, empty arguments are ``{}``), and one whose
    name is not ``[a-zA-Z0-9_-]+`` or whose arguments are not JSON becomes an
    error shown to the model. The usage is read from the body's ``usage``."""
    if isinstance(body, dict):
        resp: Any = body
    else:
        try:
            resp = json.loads(body)
        except ValueError as exc:
            raise GooseTurnFails(
                "RequestFailed", f"Response body is not valid JSON: {exc}"
            ) from None
    choices = resp.get("choices") if isinstance(resp, dict) else None
    if not (
        isinstance(choices, list)
        and choices
        and isinstance(choices[0], dict)
        and "message" in choices[0]
    ):
        err = resp.get("error") if isinstance(resp, dict) else None
        if isinstance(resp, dict) and "error" in resp:
            said = err.get("message") if isinstance(err, dict) else None
            raise GooseTurnFails(
                "RequestFailed", f"API error: {said if isinstance(said, str) else 'Unknown error'}"
            )
        raise GooseTurnFails("RequestFailed", "No message in API response.")
    message = choices[0]["message"]
    message = message if isinstance(message, dict) else {}
    seen = GooseChat()
    thought = (
        message["reasoning_content"] if "reasoning_content" in message else message.get("reasoning")
    )
    if isinstance(thought, str):
        seen.thinking = thought
    content = message.get("content")
    if isinstance(content, str):
        seen.text = _text_of(content) or ""
    calls = message.get("tool_calls")
    for call in calls if isinstance(calls, list) else []:
        call = call if isinstance(call, dict) else {}
        fn = call.get("function") if isinstance(call.get("function"), dict) else {}
        cid = call.get("id") if isinstance(call.get("id"), str) else ""
        name = fn.get("name") if isinstance(fn.get("name"), str) else ""
        arguments = fn.get("arguments") if isinstance(fn.get("arguments"), str) else ""
        made = _make_call(cid, name, arguments or "{}")
        if not _FUNCTION_NAME.fullmatch(name):
            made.args = None
        seen.calls.append(made)
    seen.usage, seen.usages = goose_usage(resp), 1
    return seen


# --- aaif-goose's chat-completions rules ---------------------------------------------
#
# ``crates/goose-provider-types/src/formats/openai.rs`` (``parse_streaming_chunk``,
# ``classify_choiceless_frame``, ``response_to_streaming_message``,
# ``response_to_message``) and ``crates/goose-providers/src/openai_compatible.rs``
# (``stream_openai_compat``, the same line framing). The differences from 1.x are
# written out where they apply.

_I64_TEXT = re.compile(r"[+-]?[0-9]+")


def _aaif_error_text(value: Any) -> Optional[str]:
    """``stream_error_text``: a string as is; an object's ``msg`` or ``message``
    (else the object as JSON); a list's items joined by ``; ``; null or empty is
    nothing; over 500 characters is cut."""

    def one(v: Any) -> Optional[str]:
        if isinstance(v, str):
            return v
        if v is None:
            return None
        if isinstance(v, dict):
            said = v.get("msg") if "msg" in v else v.get("message")
            return said if isinstance(said, str) else json.dumps(v, separators=(",", ":"))
        return json.dumps(v, separators=(",", ":"))

    if isinstance(value, list):
        parts = [t for t in map(one, value) if t is not None]
        text = "; ".join(parts) if parts else None
    else:
        text = one(value)
    if not text:
        return None
    return text if len(text) <= 500 else text[:500] + "\u2026"


def _aaif_choiceless(value: dict[str, Any]) -> Optional[GooseTurnFails]:
    """``classify_choiceless_frame``: a frame without ``choices`` is skipped unless
    it signals an error: a ``status``, ``statusCode`` or ``code`` (the first of them
    that is an integer or a string of one) of 400 or more, ``type: "error"``, or a
    non-null ``detail``; then it is a ServerError."""
    status = None
    for key in ("status", "statusCode", "code"):
        raw = value.get(key)
        if isinstance(raw, int) and not isinstance(raw, bool) and _as_i64(raw) is not None:
            status = raw
        elif isinstance(raw, str) and _I64_TEXT.fullmatch(raw) and _as_i64(int(raw)) is not None:
            status = int(raw)
        if status is not None:
            break
    signal = (
        (status is not None and status >= 400)
        or value.get("type") == "error"
        or value.get("detail") is not None
    )
    if not signal:
        return None
    said = (
        _aaif_error_text(value.get("message"))
        or _aaif_error_text(value.get("detail"))
        or _aaif_error_text(value.get("error"))
        or (f"Gateway returned status {status} mid-stream" if status is not None else None)
        or "Unknown server error"
    )
    return GooseTurnFails("ServerError", said)


def _aaif_chunk(line: str) -> Optional[dict[str, Any]]:
    """aaif-goose's ``parse_streaming_chunk``: as 1.x (an ``error`` key or ``object:
    "error"`` is a ServerError), but a JSON object without ``choices`` is skipped
    (None) or, when it signals an error, a ServerError; a payload that is not JSON
    or does not fit the types is a NetworkError (``stream_decode_error``, which
    aaif-goose retries), not a RequestFailed; a ``finish_reason`` of ``""`` is read
    as none."""
    try:
        value = json.loads(line)
    except ValueError as exc:
        raise GooseTurnFails(
            "NetworkError", f"Stream decode error: Failed to parse streaming chunk: {exc}"
        ) from None
    if isinstance(value, dict) and ("error" in value or value.get("object") == "error"):
        return _chat_chunk(line)  # the same ServerError as 1.x
    if isinstance(value, dict) and "choices" not in value:
        failed = _aaif_choiceless(value)
        if failed is not None:
            raise failed
        return None
    try:
        chunk = _check_chunk(value, line)
    except GooseTurnFails as exc:
        raise GooseTurnFails("NetworkError", f"Stream decode error: {exc.message}") from None
    for choice in chunk["choices"]:
        if choice.get("finish_reason") == "":
            choice["finish_reason"] = None
    return chunk


def _aaif_make_call(cid: str, name: str, arguments: str, cut: bool) -> GooseCall:
    """A tool request as aaif-goose makes it: at the output token limit every call
    is an error (its arguments may be cut); empty arguments are ``{}``; JSON
    arguments must be an object (a string holding a JSON object, up to three
    times over, is unwrapped); others are an error. (``parse_tool_arguments``'s
    repair of malformed JSON and of fenced or tagged arguments is not mirrored.)"""
    if cut:
        return GooseCall(cid, name, arguments, None)
    if arguments == "":
        return GooseCall(cid, name, arguments, {})
    try:
        value = json.loads(arguments)
    except ValueError:
        return GooseCall(cid, name, arguments, None)
    inner = value
    for _ in range(3):
        if not isinstance(inner, str):
            break
        try:
            inner = json.loads(inner.strip(RUST_WHITESPACE))
        except ValueError:
            break
    if isinstance(inner, dict):
        value = inner
    return GooseCall(cid, name, arguments, value if isinstance(value, dict) else None)


def _aaif_reads_chat_stream(body: Union[bytes, str]) -> GooseChat:
    """aaif-goose's ``response_to_streaming_message``: the 1.x rules (see
    :func:`_block_reads_chat_stream`) but for these: frames without ``choices``
    are skipped, in the tool-call loop too, or fail as a ServerError (see
    :func:`_aaif_chunk`); a line that is not UTF-8 or a chunk that does not parse
    is a NetworkError; a tool-call delta of the first tool chunk without
    ``index`` takes its position in the list; that chunk also ends the gathering
    with a ``finish_reason`` of ``length``; a later delta's non-empty
    ``function.name`` replaces the stored name; once any ``finish_reason`` of
    ``length`` was seen (the last one of the main loop's chunks, or a tool
    chunk's own), every gathered call is an error saying it was truncated at
    the output token limit; and arguments are read by :func:`_aaif_make_call`.
    (Its fallback usage record without token counts, sent when no usage was,
    is not mirrored.)"""
    r = _ChatReading()
    seen = r.seen
    try:
        all_lines = _lines(body)
    except GooseTurnFails as exc:
        raise GooseTurnFails("NetworkError", exc.message, seen) from None
    lines = iter(all_lines)
    last_finish: Any = None  # the last finish_reason seen

    def gather(calls: dict[int, list[Any]], index: int, c: dict[str, Any]) -> None:
        if c.get("id") is not None and c["function"].get("name") is not None:
            calls[index] = [c["id"], c["function"]["name"], c["function"].get("arguments") or ""]

    try:
        for raw in lines:
            line = _data_line(raw)
            if line == "[DONE]":
                break
            if not line:
                continue
            chunk = _aaif_chunk(line)
            if chunk is None:
                continue
            usage = r.note_usage(chunk)
            if chunk["choices"] and chunk["choices"][0].get("finish_reason") is not None:
                last_finish = chunk["choices"][0]["finish_reason"]
            seen.limit_reached |= last_finish == "length"
            if not chunk["choices"]:
                r.record(usage)
                continue
            first, delta = chunk["choices"][0], chunk["choices"][0]["delta"]
            r.reasoning += _reasoning_of(delta) or ""
            if not delta.get("tool_calls"):
                r.other_chunk(first, delta, usage)
                continue
            calls: dict[int, list[Any]] = {}
            for position, c in enumerate(delta["tool_calls"]):
                gather(calls, c["index"] if c.get("index") is not None else position, c)
            done = first.get("finish_reason") in ("tool_calls", "length")
            while not done:
                raw = next(lines, None)
                if raw is None:
                    break
                line = _data_line(raw)
                if line is None:
                    continue
                if line == "[DONE]":
                    seen.lost_calls = [_make_call(*calls[i]) for i in sorted(calls)]
                    return seen
                more = _aaif_chunk(line)
                if more is None:
                    continue
                usage = r.note_usage(more) or usage
                if not more["choices"]:
                    break
                finish = more["choices"][0].get("finish_reason")
                if finish is not None:
                    last_finish = finish
                seen.limit_reached |= finish == "length"
                d = more["choices"][0]["delta"]
                r.reasoning += _reasoning_of(d) or ""
                seen.dropped_text += _text_of(d.get("content")) or ""
                for c in d.get("tool_calls") or []:
                    index = c.get("index")
                    if index is None:
                        continue
                    if index in calls:
                        if c["function"].get("name"):
                            calls[index][1] = c["function"]["name"]
                        calls[index][2] += c["function"].get("arguments") or ""
                    else:
                        gather(calls, index, c)
                done = finish is not None
            cut = seen.limit_reached
            r.calls_read([_aaif_make_call(*calls[i], cut) for i in sorted(calls)], usage)
    except GooseTurnFails as exc:
        exc.seen = seen
        raise
    return seen


def _aaif_reads_chat_response(body: Union[bytes, str, dict[str, Any]]) -> GooseChat:
    """aaif-goose's ``response_to_message`` and ``stream_payload``: as 1.x (see
    :func:`_block_reads_chat_response`), but with ``finish_reason: "length"`` on
    the first choice every tool call is an error (truncated at the output token
    limit); only an empty name is refused (1.x refuses any name outside
    ``[a-zA-Z0-9_-]+``); arguments are read by :func:`_aaif_make_call`; the usage
    is read from ``usage`` alone."""
    try:
        resp: Any = body if isinstance(body, dict) else json.loads(body)
    except ValueError as exc:
        raise GooseTurnFails("RequestFailed", f"Response body is not valid JSON: {exc}") from None
    choices = resp.get("choices") if isinstance(resp, dict) else None
    first = choices[0] if isinstance(choices, list) and choices else None
    if not (isinstance(first, dict) and "message" in first):
        return _block_reads_chat_response(body)  # the same failures as 1.x
    cut = first.get("finish_reason") == "length"
    message = first["message"] if isinstance(first["message"], dict) else {}
    seen = GooseChat(limit_reached=cut)
    thought = (
        message["reasoning_content"] if "reasoning_content" in message else message.get("reasoning")
    )
    if isinstance(thought, str):
        seen.thinking = thought
    if isinstance(message.get("content"), str):
        seen.text = _text_of(message["content"]) or ""
    calls = message.get("tool_calls")
    for call in calls if isinstance(calls, list) else []:
        call = call if isinstance(call, dict) else {}
        fn = call.get("function") if isinstance(call.get("function"), dict) else {}
        cid = call.get("id") if isinstance(call.get("id"), str) else ""
        name = fn.get("name") if isinstance(fn.get("name"), str) else ""
        arguments = fn.get("arguments") if isinstance(fn.get("arguments"), str) else ""
        seen.calls.append(_aaif_make_call(cid, name, arguments or "{}", cut or not name))
    seen.usage, seen.usages = goose_usage(resp.get("usage")), 1
    return seen


#: what both lines of Goose must agree on in a chat answer
CHAT_FIELDS = ("text", "thinking", "calls", "usage", "usages", "dropped_text", "lost_calls")


def _ask_both_chat(readers: dict[str, Any], body: Any, line: Optional[str]) -> GooseChat:
    """:func:`_ask_both` for chat answers, keeping :class:`GooseTurnFails`: where
    either line fails the turn it fails (its ``kind`` the line's, or both kinds
    where they differ, ``kinds`` each line's); where both show something, they
    must show the same :data:`CHAT_FIELDS`."""
    if line is not None:
        return readers[line](body)
    got: dict[str, Any] = {}
    for name, read in readers.items():
        try:
            got[name] = read(body)
        except GooseTurnFails as exc:
            got[name] = exc
    failed = {name: r for name, r in got.items() if isinstance(r, GooseTurnFails)}
    if failed:
        kinds = {name: exc.kind for name, exc in failed.items()}
        said = "; ".join(f"{name}: {exc}" for name, exc in failed.items())
        if len(failed) < len(got):
            ((name, exc),) = failed.items()
            out = GooseTurnFails(exc.kind, f"only {said}", exc.seen)
        else:
            same = len(set(kinds.values())) == 1
            kind = (
                failed[BLOCK].kind if same else " / ".join(f"{k} ({n})" for n, k in kinds.items())
            )
            shown = {
                n: (e.seen.text, e.seen.thinking) if e.seen else None for n, e in failed.items()
            }
            assert shown[BLOCK] == shown[AAIF], f"{BLOCK} and {AAIF} show {shown} before failing"
            out = GooseTurnFails(kind, said, failed[BLOCK].seen)
        out.kinds = kinds
        raise out
    block, aaif = got[BLOCK], got[AAIF]
    for name in CHAT_FIELDS:
        a, b = getattr(block, name), getattr(aaif, name)
        assert a == b, f"{BLOCK} and {AAIF} differ on {name}: {a!r} vs {b!r}"
    block.limit_reached = aaif.limit_reached
    return block


def goose_reads_chat_stream(body: Union[bytes, str], line: Optional[str] = None) -> GooseChat:
    """Read a streamed chat answer (the body of a 200) as both lines of Goose do
    (``line``: one of them only); see :func:`_block_reads_chat_stream` and
    :func:`_aaif_reads_chat_stream`. Raises :class:`GooseTurnFails` (its
    ``seen``: what Goose had shown by then)."""
    readers = {BLOCK: _block_reads_chat_stream, AAIF: _aaif_reads_chat_stream}
    return _ask_both_chat(readers, body, line)


def goose_reads_chat_response(
    body: Union[bytes, str, dict[str, Any]], line: Optional[str] = None
) -> GooseChat:
    """Read a non-streamed chat answer (the body of a 200) as both lines of Goose
    do (``line``: one of them only); see :func:`_block_reads_chat_response` and
    :func:`_aaif_reads_chat_response`."""
    readers = {BLOCK: _block_reads_chat_response, AAIF: _aaif_reads_chat_response}
    return _ask_both_chat(readers, body, line)
