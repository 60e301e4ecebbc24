"""``POST /v1/chat/completions`` body → Responses request body.

Every top-level key of a chat request falls in one of three groups:

* *mapped* (:data:`MAPPED_KEYS`): translated to a Responses field;
* *checked* (:data:`CHECKED_KEYS`): validated, never forwarded: values we
  cannot honour faithfully (``n`` > 1, a ``stop`` list, ``logit_bias``,
  non-zero penalties, audio) are a 400 ``unsupported_parameter``; harmless
  values (``n: 1``, ``stop: []``, ``modalities: ["text"]``) pass silently;
* everything else (``seed``, ``prediction``, ``store``, unknown keys) is
  *dropped* and listed in :attr:`ChatRequest.dropped` for a debug log line.

Under the lightspeed flavour a mapped field outside
:data:`~goose_proxy.translate.options.LIGHTSPEED_FIELDS` is dropped too (the
client's key is listed). ``null`` counts as absent everywhere.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Optional

from .fields import (
    at,
    fail,
    get_bool,
    get_int,
    get_number,
    get_object,
    get_str,
    require_list,
    require_object,
    require_str,
    unsupported,
)
from .messages import translate_messages
from .options import LIGHTSPEED_FIELDS, TranslateOptions, apply_extras, upstream_model

__all__ = ["CHECKED_KEYS", "MAPPED_KEYS", "ChatRequest", "chat_to_responses"]

#: chat keys that become (part of) a Responses field
MAPPED_KEYS = frozenset(
    {
        "messages", "model", "stream", "stream_options", "temperature", "top_p", "max_tokens",
        "max_completion_tokens", "tools", "functions", "tool_choice", "function_call",
        "parallel_tool_calls", "user", "metadata", "service_tier", "top_logprobs",
        "prompt_cache_key", "safety_identifier", "reasoning_effort", "response_format",
        "verbosity", "logprobs", "prompt_cache_retention", "prompt_cache_options", "moderation",
    }
)  # fmt: skip
#: chat keys that are validated but have no Responses counterpart
CHECKED_KEYS = frozenset(
    {"n", "stop", "logit_bias", "frequency_penalty", "presence_penalty", "modalities", "audio"}
)
_PASS_STR = (
    "user",
    "service_tier",
    "prompt_cache_key",
    "safety_identifier",
    "prompt_cache_retention",
)
#: objects of the same shape in both APIs, passed on as they are (the backend checks them)
_PASS_OBJECT = ("prompt_cache_options", "moderation")
_TOOL_CHOICE_MODES = ("none", "auto", "required")
_EMPTY_SCHEMA: Mapping[str, Any] = {"type": "object", "properties": {}}
#: the least ``max_output_tokens`` OpenAI's Responses API takes (400
#: ``integer_below_min_value`` below it); chat takes any positive number
MIN_OUTPUT_TOKENS = 16


@dataclass
class ChatRequest:
    """A translated chat request.

    ``body`` is the Responses body to send (``stream`` always true: Lightspeed's
    failures are precise only in streams, and a backend's answer head comes
    at once, not after the whole answer; a client that does not stream is
    answered from the collected stream); ``stream`` is what the *client*
    asked for; ``dropped`` lists the client's top-level keys that were not
    forwarded; ``legacy_functions`` says the client offered its tools as the
    deprecated ``functions``, so it reads a call from
    ``message.function_call`` (:func:`~goose_proxy.translate.response.as_function_call`,
    ``StreamTranslator(legacy_functions=True)``); ``refusal_in_content`` is
    false when the client asked for structured output (a ``json_schema`` or
    ``json_object`` response format): its answer's ``content`` holds only the
    JSON, a refusal only ``refusal``, as OpenAI answers.
    """

    body: dict[str, Any]
    client_model: str
    stream: bool
    include_usage: bool
    dropped: list[str] = field(default_factory=list)
    legacy_functions: bool = False
    refusal_in_content: bool = True


def chat_to_responses(req: dict[str, Any], opts: TranslateOptions) -> ChatRequest:
    """Translate and validate a chat completions request.

    Raises:
        InvalidRequest: a field has the wrong type or shape (``param`` and the
            message name the field path), ``messages`` is missing or empty, the
            model must come from the client and is missing, or deprecated and
            current forms are mixed (``functions`` with ``tools``).
        UnsupportedParameter: ``n`` > 1, a non-empty ``stop``, ``logit_bias``,
            a non-zero penalty, audio output, audio input parts, or a non-function tool.
    """
    req = dict(require_object(req, "body"))
    _check_unsupported(req)
    dropped = sorted(  # (null counts as absent: nothing is reported)
        k
        for k, v in req.items()
        if v is not None and k not in MAPPED_KEYS and k not in CHECKED_KEYS
    )

    client_model = get_str(req, "model", "")
    stream = bool(get_bool(req, "stream", ""))
    options = get_object(req, "stream_options", "")
    usage_flag = get_bool(options, "include_usage", "stream_options") if options else None
    include_usage = stream and bool(usage_flag)
    items, instructions = translate_messages(
        req.get("messages"),
        opts.system_messages,
        req.get("tools") or req.get("functions"),
        breakpoints=opts.flavor != "lightspeed",  # as prompt_cache_options: not Lightspeed's
        dropped=dropped,
    )

    # (responses field, value, client key it came from), in body order
    fields: list[tuple[str, Any, str]] = [
        ("model", upstream_model(opts, client_model), "model"),
        ("input", items, "messages"),
    ]
    if instructions is not None:
        fields.append(("instructions", instructions, "messages"))
    for key in ("temperature", "top_p"):
        number = get_number(req, key, "")
        if number is not None:
            fields.append((key, number, key))
    for key in ("max_tokens", "max_completion_tokens"):  # the latter wins if both
        limit = get_int(req, key, "", minimum=1)
        if limit is not None:
            if opts.flavor == "openai":  # OpenAI's Responses API refuses less
                limit = max(limit, MIN_OUTPUT_TOKENS)
            fields.append(("max_output_tokens", limit, key))
    tools = _tools(req)
    legacy = req.get("functions") is not None
    if tools is not None:
        fields.append(("tools", tools, "functions" if legacy else "tools"))
    choice = _tool_choice(req)
    if choice is not None:
        source = "function_call" if req.get("function_call") is not None else "tool_choice"
        fields.append(("tool_choice", choice, source))
    parallel = get_bool(req, "parallel_tool_calls", "")
    if parallel is not None:
        fields.append(("parallel_tool_calls", parallel, "parallel_tool_calls"))
    elif legacy:  # a legacy answer carries one call: ask for no more
        fields.append(("parallel_tool_calls", False, "functions"))
    for key in _PASS_STR:
        text = get_str(req, key, "")
        if text is not None:
            fields.append((key, text, key))
    for key in _PASS_OBJECT:
        value = get_object(req, key, "")
        if value is not None:
            fields.append((key, value, key))
    metadata = _metadata(req)
    if metadata is not None:
        fields.append(("metadata", metadata, "metadata"))
    top_logprobs = get_int(req, "top_logprobs", "", minimum=0)
    if top_logprobs is not None:
        fields.append(("top_logprobs", top_logprobs, "top_logprobs"))
    if get_bool(req, "logprobs", ""):
        fields.append(("include", ["message.output_text.logprobs"], "logprobs"))
    effort = get_str(req, "reasoning_effort", "")
    if effort is not None:
        fields.append(("reasoning", {"effort": effort}, "reasoning_effort"))
    text_format = _text_format(req)
    if text_format is not None:
        fields.append(("text", {"format": text_format}, "response_format"))
    verbosity = get_str(req, "verbosity", "")
    if verbosity is not None:
        fields.append(("text", {"verbosity": verbosity}, "verbosity"))

    body: dict[str, Any] = {}
    for name, value, source in fields:
        if opts.flavor == "lightspeed" and name not in LIGHTSPEED_FIELDS:
            dropped.append(source)
        elif name == "text" and name in body:  # response_format and verbosity share `text`
            body[name] = {**body[name], **value}
        else:
            body[name] = value
    body["stream"] = True
    body["store"] = False
    apply_extras(body, opts)
    return ChatRequest(
        body=body,
        client_model=client_model or "",
        stream=stream,
        include_usage=include_usage,
        dropped=dropped,
        legacy_functions=legacy,
        refusal_in_content=text_format is None or text_format["type"] == "text",
    )


def _check_unsupported(req: Mapping[str, Any]) -> None:
    n = get_int(req, "n", "", minimum=1)
    if n is not None and n > 1:
        unsupported("n", f"only one choice per request is supported, got {n}")
    stop = req.get("stop")
    if isinstance(stop, str):
        if stop:
            unsupported("stop", "stop sequences are not supported")
    elif stop is not None:
        for i, item in enumerate(require_list(stop, "stop")):
            require_str(item, at("stop", i))
        if stop:
            unsupported("stop", "stop sequences are not supported")
    bias = get_object(req, "logit_bias", "")
    if bias:
        unsupported("logit_bias", "logit_bias is not supported")
    for key in ("frequency_penalty", "presence_penalty"):
        if get_number(req, key, ""):
            unsupported(key, f"a non-zero {key} is not supported")
    modalities = req.get("modalities")
    if modalities is not None:
        for i, item in enumerate(require_list(modalities, "modalities")):
            if require_str(item, at("modalities", i)) == "audio":
                unsupported("modalities", "audio output is not supported")
    if req.get("audio") is not None:
        unsupported("audio", "audio output is not supported")


def _function_tool(fn: Mapping[str, Any], path: str) -> dict[str, Any]:
    name = get_str(fn, "name", path)
    if not name:
        fail(at(path, "name"), "required")
    tool: dict[str, Any] = {"type": "function", "name": name}
    description = get_str(fn, "description", path)
    if description is not None:
        tool["description"] = description
    parameters = get_object(fn, "parameters", path)
    # Responses treats a missing `strict` as strict; chat treats it as not strict.
    strict = bool(get_bool(fn, "strict", path))
    if parameters is not None:
        tool["parameters"] = dict(parameters)
    elif strict:  # strict mode refuses an object schema that allows more properties
        tool["parameters"] = {**_EMPTY_SCHEMA, "additionalProperties": False, "required": []}
    else:
        tool["parameters"] = dict(_EMPTY_SCHEMA)
    tool["strict"] = strict
    return tool


def _tools(req: Mapping[str, Any]) -> Optional[list[dict[str, Any]]]:
    tools, functions = req.get("tools"), req.get("functions")
    if tools is not None and functions is not None:
        fail("functions", "cannot be combined with tools; send tools only")
    if functions is not None:
        return [
            _function_tool(require_object(fn, at("functions", i)), at("functions", i))
            for i, fn in enumerate(require_list(functions, "functions"))
        ]
    if tools is None:
        return None
    out = []
    for i, raw in enumerate(require_list(tools, "tools")):
        path = at("tools", i)
        tool = require_object(raw, path)
        _function_type_only(tool, path)
        fn = get_object(tool, "function", path)
        if fn is None:
            fail(at(path, "function"), "required")
        out.append(_function_tool(fn, at(path, "function")))
    return out


def _function_type_only(tool: Mapping[str, Any], path: str) -> None:
    """400 ``unsupported_parameter`` for a tool of a type other than ``function``
    (a custom tool), in ``tools`` and in ``tool_choice.allowed_tools``."""
    ttype = tool.get("type")
    if ttype is not None and ttype != "function":
        ttype = require_str(ttype, at(path, "type"))
        unsupported(at(path, "type"), f"tool type {ttype!r} is not supported")


def _tool_choice(req: Mapping[str, Any]) -> Optional[Any]:
    choice, legacy = req.get("tool_choice"), req.get("function_call")
    if choice is not None and legacy is not None:
        fail("function_call", "cannot be combined with tool_choice; send tool_choice only")
    if legacy is not None:
        if isinstance(legacy, str):
            if legacy not in ("none", "auto"):
                fail("function_call", f"expected 'none', 'auto' or an object, got {legacy!r}")
            return legacy
        name = get_str(require_object(legacy, "function_call"), "name", "function_call")
        if not name:
            fail("function_call.name", "required")
        return {"type": "function", "name": name}
    if choice is None:
        return None
    if isinstance(choice, str):
        if choice not in _TOOL_CHOICE_MODES:
            fail("tool_choice", f"expected one of {', '.join(_TOOL_CHOICE_MODES)}, got {choice!r}")
        return choice
    obj = require_object(choice, "tool_choice")
    ctype = get_str(obj, "type", "tool_choice")
    if ctype == "function":
        return {"type": "function", "name": _function_name(obj, "tool_choice")}
    if ctype == "allowed_tools":
        spec = get_object(obj, "allowed_tools", "tool_choice")
        if spec is None:
            fail("tool_choice.allowed_tools", "required")
        path = "tool_choice.allowed_tools"
        mode = get_str(spec, "mode", path) or "auto"
        listed = spec.get("tools")
        if listed is None:
            fail(at(path, "tools"), "required")
        tpath = at(path, "tools")
        names = []
        for i, raw in enumerate(require_list(listed, tpath)):
            item = require_object(raw, at(tpath, i))
            _function_type_only(item, at(tpath, i))
            names.append({"type": "function", "name": _function_name(item, at(tpath, i))})
        return {"type": "allowed_tools", "mode": mode, "tools": names}
    if ctype is None:
        fail("tool_choice.type", "required")
    unsupported("tool_choice.type", f"tool_choice type {ctype!r} is not supported")


def _function_name(obj: Mapping[str, Any], path: str) -> str:
    fn = get_object(obj, "function", path)
    if fn is None:
        fail(at(path, "function"), "required")
    name = get_str(fn, "name", at(path, "function"))
    if not name:
        fail(at(at(path, "function"), "name"), "required")
    return name


def _metadata(req: Mapping[str, Any]) -> Optional[dict[str, str]]:
    meta = get_object(req, "metadata", "")
    if meta is None:
        return None
    for key, value in meta.items():
        require_str(value, at("metadata", key))
    return dict(meta)


def _text_format(req: Mapping[str, Any]) -> Optional[dict[str, Any]]:
    fmt = get_object(req, "response_format", "")
    if fmt is None:
        return None
    ftype = get_str(fmt, "type", "response_format")
    if ftype in ("text", "json_object"):
        return {"type": ftype}
    if ftype == "json_schema":
        path = "response_format.json_schema"
        spec = get_object(fmt, "json_schema", "response_format")
        if spec is None:
            fail(path, "required")
        name = get_str(spec, "name", path)
        if not name:
            fail(at(path, "name"), "required")
        out: dict[str, Any] = {"type": "json_schema", "name": name}
        schema = get_object(spec, "schema", path)
        if schema is not None:
            out["schema"] = dict(schema)
        strict = get_bool(spec, "strict", path)
        if strict is not None:
            out["strict"] = strict
        description = get_str(spec, "description", path)
        if description is not None:
            out["description"] = description
        return out
    if ftype is None:
        fail("response_format.type", "required")
    fail("response_format.type", f"unknown response format {ftype!r}")
