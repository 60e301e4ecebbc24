"""Request translation: TRANSLATION.md §1, one case per table row."""

from __future__ import annotations

import json
import re
from typing import Any, Optional

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from openai.types.responses import ResponseInputParam
from pydantic import TypeAdapter
from translate_testkit import fixture_json, fixture_text

from goose_proxy.errors import InvalidRequest, UnsupportedParameter
from goose_proxy.translate import (
    LIGHTSPEED_FIELDS,
    TranslateOptions,
    chat_to_responses,
    parse_json_object,
    prepare_passthrough,
    responses_to_chat,
)
from goose_proxy.translate.messages import _states_its_task

OPENAI = TranslateOptions(flavor="openai")
LIGHTSPEED = TranslateOptions()
USER_HI = {"role": "user", "content": "hi"}
HI_ITEM = {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "hi"}]}
BP = {"mode": "explicit", "ttl": "30m"}
RULES_PART = {"type": "text", "text": "rules"}
HI_PART = {"type": "text", "text": "hi"}


def translate(
    messages: Any = None, opts: TranslateOptions = OPENAI, **params: Any
) -> dict[str, Any]:
    req = {"model": "goose-model", "messages": messages if messages is not None else [USER_HI]}
    req.update(params)
    return chat_to_responses(req, opts).body


def user(text: str) -> dict[str, Any]:
    return {"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]}


# --- messages → input items -----------------------------------------------------

SYSTEM_PARTS = [{"type": "text", "text": "Be "}, {"type": "text", "text": "brief."}]

MESSAGE_ROWS = [
    pytest.param(
        [{"role": "system", "content": "You are Goose."}, USER_HI],
        TranslateOptions(flavor="openai", system_messages="drop"),
        [HI_ITEM],
        None,
        id="system-drop",
    ),
    pytest.param(
        [{"role": "system", "content": "A"}, USER_HI, {"role": "system", "content": SYSTEM_PARTS}],
        TranslateOptions(flavor="openai", system_messages="instructions"),
        [HI_ITEM],
        "A\n\nBe brief.",
        id="system-instructions-joined",
    ),
    pytest.param(
        [{"role": "system", "content": SYSTEM_PARTS}, USER_HI],
        TranslateOptions(flavor="openai", system_messages="input"),
        [
            {
                "type": "message",
                "role": "system",
                "content": [
                    {"type": "input_text", "text": "Be "},
                    {"type": "input_text", "text": "brief."},
                ],
            },
            HI_ITEM,
        ],
        None,
        id="system-input-in-place",
    ),
    pytest.param(
        [USER_HI, {"role": "developer", "content": "dev rules"}],
        TranslateOptions(flavor="openai", system_messages="input"),
        [HI_ITEM, {"type": "message", "role": "developer",
                   "content": [{"type": "input_text", "text": "dev rules"}]}],
        None,
        id="developer-input",
    ),
    pytest.param(
        [{"role": "developer", "content": "dev rules"}, USER_HI],
        TranslateOptions(flavor="openai", system_messages="instructions"),
        [HI_ITEM],
        "dev rules",
        id="developer-instructions",
    ),
    pytest.param(
        [{"role": "developer", "content": "dev rules"}, USER_HI],
        LIGHTSPEED,
        [HI_ITEM],
        None,
        id="developer-drop-default",
    ),
    pytest.param(  # nothing but system and developer messages: kept, else nothing is asked
        [{"role": "system", "content": "Write a haiku about RHEL."},
         {"role": "developer", "content": "Short lines."}],
        LIGHTSPEED,
        [{"type": "message", "role": "system",
          "content": [{"type": "input_text", "text": "Write a haiku about RHEL."}]},
         {"type": "message", "role": "developer",
          "content": [{"type": "input_text", "text": "Short lines."}]}],
        None,
        id="system-only-drop-keeps-them",
    ),
    pytest.param(  # the same under "instructions": input would be empty
        [{"role": "system", "content": "Write a haiku about RHEL."}],
        TranslateOptions(flavor="openai", system_messages="instructions"),
        [{"type": "message", "role": "system",
          "content": [{"type": "input_text", "text": "Write a haiku about RHEL."}]}],
        None,
        id="system-only-instructions-keeps-them",
    ),
    pytest.param(
        [{"role": "system", "content": "Reply in JSON."}, USER_HI],
        OPENAI,
        [{"type": "message", "role": "system",
          "content": [{"type": "input_text", "text": "Reply in JSON."}]}, HI_ITEM],
        None,
        id="system-openai-default-input",
    ),
    pytest.param([USER_HI], OPENAI, [HI_ITEM], None, id="user-string"),
    pytest.param(
        [{"role": "user", "content": [
            {"type": "text", "text": "look"},
            {"type": "image_url", "image_url": {"url": "https://x/a.png", "detail": "high"}},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
            {"type": "file", "file": {"file_data": "data:application/pdf;base64,JVBE",
                                      "filename": "a.pdf"}},
            {"type": "file", "file": {"file_id": "file-123"}},
        ]}],
        OPENAI,
        [{"type": "message", "role": "user", "content": [
            {"type": "input_text", "text": "look"},
            {"type": "input_image", "image_url": "https://x/a.png", "detail": "high"},
            {"type": "input_image", "image_url": "data:image/png;base64,AAAA", "detail": "auto"},
            {"type": "input_file", "file_data": "data:application/pdf;base64,JVBE",
             "filename": "a.pdf"},
            {"type": "input_file", "file_id": "file-123"},
        ]}],
        None,
        id="user-parts",
    ),
    pytest.param(
        [USER_HI, {"role": "assistant", "content": "Sure."}],
        OPENAI,
        [HI_ITEM, {"type": "message", "role": "assistant", "content": "Sure."}],
        None,
        id="assistant-text-string",
    ),
    pytest.param(
        [USER_HI, {"role": "assistant", "content": [{"type": "text", "text": "a"},
                                                    {"type": "text", "text": ""},
                                                    {"type": "text", "text": "b"}]}],
        OPENAI,
        [HI_ITEM, {"type": "message", "role": "assistant", "content": "ab"}],
        None,
        id="assistant-text-parts",
    ),
    pytest.param(
        [USER_HI, {"role": "assistant", "content": ""}, {"role": "assistant", "content": None}],
        OPENAI,
        [HI_ITEM],
        None,
        id="assistant-empty-skipped",
    ),
    pytest.param(
        [USER_HI, {"role": "assistant", "content": None, "refusal": "I can't."}],
        OPENAI,
        [HI_ITEM, {"type": "message", "role": "assistant", "content": "I can't."}],
        None,
        id="assistant-refusal-field",
    ),
    pytest.param(
        [USER_HI, {"role": "assistant", "content": [{"type": "refusal", "refusal": "No."}]}],
        OPENAI,
        [HI_ITEM, {"type": "message", "role": "assistant", "content": "No."}],
        None,
        id="assistant-refusal-part",
    ),
    pytest.param(  # the proxy's own answer sent back: the refusal in content too, once
        [USER_HI, {"role": "assistant", "content": "Well. No.", "refusal": "No."}],
        OPENAI,
        [HI_ITEM, {"type": "message", "role": "assistant", "content": "Well. No."}],
        None,
        id="assistant-refusal-also-in-content",
    ),
    pytest.param(  # ... also before more text
        [USER_HI, {"role": "assistant", "content": "No. Well.", "refusal": "No."}],
        OPENAI,
        [HI_ITEM, {"type": "message", "role": "assistant", "content": "No. Well."}],
        None,
        id="assistant-refusal-in-content-before-text",
    ),
    pytest.param(  # ... but a refusal the content does not hold is added, last
        [USER_HI, {"role": "assistant", "content": "Well.", "refusal": "No."}],
        OPENAI,
        [HI_ITEM, {"type": "message", "role": "assistant", "content": "Well.No."}],
        None,
        id="assistant-refusal-apart-from-content",
    ),
    pytest.param(  # an empty refusal and no text: no item
        [USER_HI, {"role": "assistant", "content": [{"type": "refusal", "refusal": ""}]}],
        OPENAI,
        [HI_ITEM],
        None,
        id="assistant-empty-refusal",
    ),
    pytest.param(  # text and refusal parts: one string, in order
        [USER_HI, {"role": "assistant", "content": [{"type": "text", "text": "Well. "},
                                                    {"type": "refusal", "refusal": "No."}]}],
        OPENAI,
        [HI_ITEM, {"type": "message", "role": "assistant", "content": "Well. No."}],
        None,
        id="assistant-text-and-refusal",
    ),
    pytest.param(
        [USER_HI, {"role": "assistant", "content": "Running both.", "tool_calls": [
            {"id": "call_1", "type": "function",
             "function": {"name": "shell", "arguments": "{\"c\":1}"}},
            {"id": "call_2", "type": "function",
             "function": {"name": "read", "arguments": "{}"}},
        ]}],
        OPENAI,
        [HI_ITEM,
         {"type": "message", "role": "assistant", "content": "Running both."},
         {"type": "function_call", "call_id": "call_1", "name": "shell", "arguments": "{\"c\":1}"},
         {"type": "function_call", "call_id": "call_2", "name": "read", "arguments": "{}"}],
        None,
        id="assistant-tool-calls-after-text",
    ),
    pytest.param(
        [USER_HI, {"role": "assistant", "content": None, "reasoning_content": "hmm, think",
                   "tool_calls": [{"id": "c", "type": "function",
                                   "function": {"name": "f", "arguments": ""}}]}],
        OPENAI,
        [HI_ITEM, {"type": "function_call", "call_id": "c", "name": "f", "arguments": ""}],
        None,
        id="assistant-reasoning-content-not-forwarded",
    ),
    pytest.param(
        [USER_HI, {"role": "tool", "tool_call_id": "call_1", "content": "out"},
         {"role": "tool", "tool_call_id": "call_2",
          "content": [{"type": "text", "text": "line1\n"}, {"type": "text", "text": "line2"}]}],
        OPENAI,
        [HI_ITEM, {"type": "function_call_output", "call_id": "call_1", "output": "out"},
         {"type": "function_call_output", "call_id": "call_2", "output": "line1\nline2"}],
        None,
        id="tool-string-and-array",
    ),
    pytest.param(
        [{"role": "user", "content": "hi", "name": "alice"},
         {"role": "assistant", "content": "yo", "name": "bot"}],
        OPENAI,
        [HI_ITEM, {"type": "message", "role": "assistant", "content": "yo"}],
        None,
        id="name-dropped",
    ),
    pytest.param(
        [USER_HI,
         {"role": "assistant", "content": None,
          "function_call": {"name": "lookup", "arguments": "{\"q\":1}"}},
         {"role": "function", "name": "lookup", "content": "42"}],
        OPENAI,
        [HI_ITEM,
         {"type": "function_call", "call_id": "legacy_call_1", "name": "lookup",
          "arguments": "{\"q\":1}"},
         {"type": "function_call_output", "call_id": "legacy_call_1", "output": "42"}],
        None,
        id="deprecated-function-call-message",
    ),
    pytest.param(  # explicit prompt-cache breakpoints go with their parts (openai)
        [{"role": "system", "content": [dict(RULES_PART, prompt_cache_breakpoint=BP)]},
         {"role": "user", "content": [
             {"type": "text", "text": "long prefix", "prompt_cache_breakpoint": BP},
             {"type": "image_url", "image_url": {"url": "https://x/i.png"},
              "prompt_cache_breakpoint": BP},
             {"type": "file", "file": {"file_id": "file_1"}, "prompt_cache_breakpoint": BP},
             {"type": "text", "text": "question"}]},
         {"role": "assistant", "content": None, "tool_calls": [
             {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
         {"role": "tool", "tool_call_id": "c1", "content": [
             {"type": "text", "text": "big output", "prompt_cache_breakpoint": BP},
             {"type": "text", "text": " tail"}]}],
        TranslateOptions(flavor="openai", system_messages="input"),
        [{"type": "message", "role": "system", "content": [
            {"type": "input_text", "text": "rules", "prompt_cache_breakpoint": BP}]},
         {"type": "message", "role": "user", "content": [
             {"type": "input_text", "text": "long prefix", "prompt_cache_breakpoint": BP},
             {"type": "input_image", "image_url": "https://x/i.png", "detail": "auto",
              "prompt_cache_breakpoint": BP},
             {"type": "input_file", "file_id": "file_1", "prompt_cache_breakpoint": BP},
             {"type": "input_text", "text": "question"}]},
         {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"},
         {"type": "function_call_output", "call_id": "c1", "output": [
             {"type": "input_text", "text": "big output", "prompt_cache_breakpoint": BP},
             {"type": "input_text", "text": " tail"}]}],
        None,
        id="prompt-cache-breakpoints",
    ),
    pytest.param(  # Lightspeed takes no prompt-cache fields: left out, as prompt_cache_options
        [{"role": "user", "content": [dict(HI_PART, prompt_cache_breakpoint=BP)]},
         {"role": "assistant", "content": None, "tool_calls": [
             {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
         {"role": "tool", "tool_call_id": "c1",
          "content": [{"type": "text", "text": "out", "prompt_cache_breakpoint": BP}]}],
        LIGHTSPEED,
        [HI_ITEM, {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"},
         {"type": "function_call_output", "call_id": "c1", "output": "out"}],
        None,
        id="prompt-cache-breakpoints-under-lightspeed",
    ),
    pytest.param(  # a legacy function result keeps its breakpoint as a tool result does
        [USER_HI,
         {"role": "assistant", "content": None,
          "function_call": {"name": "lookup", "arguments": "{}"}},
         {"role": "function", "name": "lookup",
          "content": [{"type": "text", "text": "42", "prompt_cache_breakpoint": BP}]}],
        OPENAI,
        [HI_ITEM,
         {"type": "function_call", "call_id": "legacy_call_1", "name": "lookup",
          "arguments": "{}"},
         {"type": "function_call_output", "call_id": "legacy_call_1", "output": [
             {"type": "input_text", "text": "42", "prompt_cache_breakpoint": BP}]}],
        None,
        id="prompt-cache-breakpoint-on-a-legacy-function-result",
    ),
]  # fmt: skip


RESPONSE_INPUT: TypeAdapter[Any] = TypeAdapter(ResponseInputParam)


@pytest.mark.parametrize(("messages", "opts", "expected", "instructions"), MESSAGE_ROWS)
def test_message_rows(
    messages: list[Any], opts: TranslateOptions, expected: list[Any], instructions: Any
) -> None:
    body = translate(messages, opts)
    assert body["input"] == expected
    assert body.get("instructions") == instructions
    assert all("id" not in item for item in body["input"])  # never invent an item id
    # every item a valid input item as the openai SDK types it (servers such as
    # vLLM check input against these types)
    RESPONSE_INPUT.validate_python(body["input"])


@pytest.mark.parametrize(("before", "after"), [("", ""), ("Let me see. ", ""), ("", " Try X.")])
def test_the_proxys_own_refusal_sent_back_as_history_is_said_once(before: str, after: str) -> None:
    """A client appends the message it was answered with to its history (the
    openai SDK's usual pattern): the refusal the proxy put in ``content`` and
    ``refusal`` goes upstream once."""
    text = [{"type": "output_text", "text": t, "annotations": []} for t in (before,) if t]
    parts = [*text, {"type": "refusal", "refusal": "I can't help with that."}]
    parts += [{"type": "output_text", "text": after, "annotations": []}] if after else []
    response = {"id": "resp_1", "object": "response", "created_at": 1, "model": "m",
                "status": "completed", "output": [{"type": "message", "id": "msg_1",
                "role": "assistant", "status": "completed", "content": parts}]}  # fmt: skip
    answer = responses_to_chat(response, "m")["choices"][0]["message"]
    assert answer["refusal"] == "I can't help with that."
    body = translate([USER_HI, answer, {"role": "user", "content": "ok"}])
    said = body["input"][1]
    assert said == {"type": "message", "role": "assistant",
                    "content": before + "I can't help with that." + after}  # fmt: skip


def test_unknown_content_part_names_the_path() -> None:
    parts = [{"type": "text", "text": "a"}, {"type": "audio"}]
    messages = [USER_HI, {"role": "assistant", "content": "x"}, USER_HI,
                {"role": "user", "content": parts}]  # fmt: skip
    with pytest.raises(InvalidRequest) as info:
        translate(messages)
    assert info.value.message == "messages[3].content[1].type: unknown content part 'audio'"
    assert info.value.param == "messages[3].content[1].type"
    assert info.value.status == 400 and info.value.type == "invalid_request_error"


def test_input_audio_part_is_unsupported() -> None:
    part = {"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}}
    with pytest.raises(UnsupportedParameter) as info:
        translate([{"role": "user", "content": [{"type": "text", "text": "a"}, part]}])
    assert info.value.param == "messages[0].content[1].type"
    assert info.value.code == "unsupported_parameter"


def test_function_result_without_call_is_an_error() -> None:
    with pytest.raises(InvalidRequest) as info:
        translate([USER_HI, {"role": "function", "name": "lookup", "content": "42"}])
    assert info.value.param == "messages[1]"


# --- parameters -----------------------------------------------------------------

FN_TOOL = {"type": "function", "function": {"name": "shell", "description": "Run",
                                            "parameters": {"type": "object"}}}  # fmt: skip
FLAT_TOOL = {"type": "function", "name": "shell", "description": "Run",
             "parameters": {"type": "object"}, "strict": False}  # fmt: skip

PARAM_ROWS = [
    pytest.param({"stream": True}, {"stream": True}, id="stream-true"),
    pytest.param({"stream": False}, {"stream": True}, id="stream-false"),  # streamed upstream
    pytest.param({"temperature": 0, "top_p": 0}, {"temperature": 0, "top_p": 0}, id="zero-kept"),
    pytest.param({"temperature": 0.7, "top_p": 0.9}, {"temperature": 0.7, "top_p": 0.9},
                 id="temperature-top-p"),
    pytest.param({"max_tokens": 100}, {"max_output_tokens": 100}, id="max-tokens"),
    pytest.param({"max_completion_tokens": 200}, {"max_output_tokens": 200}, id="max-compl"),
    pytest.param({"max_tokens": 100, "max_completion_tokens": 200}, {"max_output_tokens": 200},
                 id="max-completion-wins"),
    pytest.param({"tools": [FN_TOOL]}, {"tools": [FLAT_TOOL]}, id="tools-flat-strict-false"),
    pytest.param({"tools": [{"type": "function", "function": {"name": "t", "strict": True,
                                                              "parameters": {"type": "object"}}}]},
                 {"tools": [{"type": "function", "name": "t", "parameters": {"type": "object"},
                             "strict": True}]}, id="tools-strict-kept"),
    pytest.param({"tools": [{"type": "function", "function": {"name": "t"}}]},
                 {"tools": [{"type": "function", "name": "t",
                             "parameters": {"type": "object", "properties": {}},
                             "strict": False}]}, id="tools-empty-parameters"),
    pytest.param({"tools": [{"type": "function", "function": {"name": "t", "strict": True}}]},
                 {"tools": [{"type": "function", "name": "t",
                             "parameters": {"type": "object", "properties": {},
                                            "additionalProperties": False, "required": []},
                             "strict": True}]}, id="tools-strict-empty-parameters"),
    pytest.param({"tool_choice": "auto"}, {"tool_choice": "auto"}, id="tool-choice-auto"),
    pytest.param({"tool_choice": "none"}, {"tool_choice": "none"}, id="tool-choice-none"),
    pytest.param({"tool_choice": "required"}, {"tool_choice": "required"}, id="tool-choice-req"),
    pytest.param({"tool_choice": {"type": "function", "function": {"name": "shell"}}},
                 {"tool_choice": {"type": "function", "name": "shell"}}, id="tool-choice-object"),
    pytest.param({"tool_choice": {"type": "allowed_tools", "allowed_tools": {
                     "mode": "required",
                     "tools": [{"type": "function", "function": {"name": "a"}}]}}},
                 {"tool_choice": {"type": "allowed_tools", "mode": "required",
                                  "tools": [{"type": "function", "name": "a"}]}},
                 id="tool-choice-allowed-tools"),
    pytest.param({"parallel_tool_calls": False}, {"parallel_tool_calls": False}, id="parallel"),
    pytest.param({"user": "u1"}, {"user": "u1"}, id="user"),
    pytest.param({"metadata": {"k": "v"}}, {"metadata": {"k": "v"}}, id="metadata"),
    pytest.param({"service_tier": "flex"}, {"service_tier": "flex"}, id="service-tier"),
    pytest.param({"top_logprobs": 3}, {"top_logprobs": 3}, id="top-logprobs"),
    pytest.param({"prompt_cache_key": "pk"}, {"prompt_cache_key": "pk"}, id="prompt-cache-key"),
    pytest.param({"safety_identifier": "s"}, {"safety_identifier": "s"}, id="safety-identifier"),
    pytest.param({"reasoning_effort": "low"}, {"reasoning": {"effort": "low"}}, id="effort"),
    pytest.param({"response_format": {"type": "json_schema", "json_schema": {
                     "name": "out", "schema": {"type": "object"}, "strict": True,
                     "description": "d"}}},
                 {"text": {"format": {"type": "json_schema", "name": "out",
                                      "schema": {"type": "object"}, "strict": True,
                                      "description": "d"}}}, id="response-format-json-schema"),
    pytest.param({"response_format": {"type": "json_object"}},
                 {"text": {"format": {"type": "json_object"}}}, id="response-format-json-object"),
    pytest.param({"response_format": {"type": "text"}, "verbosity": "low"},
                 {"text": {"format": {"type": "text"}, "verbosity": "low"}}, id="text-verbosity"),
    pytest.param({"logprobs": True}, {"include": ["message.output_text.logprobs"]}, id="logprobs"),
    pytest.param({"functions": [{"name": "f", "parameters": {"type": "object"}}],
                  "function_call": {"name": "f"}},
                 {"tools": [{"type": "function", "name": "f", "parameters": {"type": "object"},
                             "strict": False}],
                  "tool_choice": {"type": "function", "name": "f"}}, id="deprecated-functions"),
    pytest.param({"function_call": "auto"}, {"tool_choice": "auto"}, id="deprecated-fc-auto"),
]  # fmt: skip


@pytest.mark.parametrize(("params", "expected"), PARAM_ROWS)
def test_parameter_rows(params: dict[str, Any], expected: dict[str, Any]) -> None:
    body = translate(**params)
    for key, value in expected.items():
        assert body[key] == value, key
    assert body["store"] is False


@pytest.mark.parametrize(
    "params",
    [{}, {"logprobs": False}, {"stream_options": {"include_usage": True}, "stream": True}],
)
def test_absent_parameters_are_not_sent(params: dict[str, Any]) -> None:
    body = translate(**params)
    assert set(body) == {"model", "input", "stream", "store"}


@pytest.mark.parametrize("opts", [OPENAI, LIGHTSPEED], ids=["openai", "lightspeed"])
def test_deprecated_functions_ask_for_one_call(opts: TranslateOptions) -> None:
    # the legacy answer (message.function_call) carries one call
    req = {"model": "m", "messages": [USER_HI], "functions": [{"name": "f"}]}
    creq = chat_to_responses(req, opts)
    assert creq.legacy_functions is True
    assert creq.body["parallel_tool_calls"] is False and creq.dropped == []
    # the client's own value wins
    creq = chat_to_responses({**req, "parallel_tool_calls": True}, opts)
    assert creq.body["parallel_tool_calls"] is True and creq.legacy_functions
    # tools (or functions null): the current shape, nothing added
    for other in ({"tools": [FN_TOOL]}, {"functions": None}):
        creq = chat_to_responses({"model": "m", "messages": [USER_HI], **other}, opts)
        assert creq.legacy_functions is False and "parallel_tool_calls" not in creq.body


def test_stream_options_include_usage() -> None:
    req = {"model": "m", "messages": [USER_HI], "stream": True,
           "stream_options": {"include_usage": True}}  # fmt: skip
    got = chat_to_responses(req, OPENAI)
    assert got.stream is True and got.include_usage is True
    assert "stream_options" not in got.body and got.dropped == []
    no_stream = chat_to_responses({**req, "stream": False}, OPENAI)
    assert no_stream.stream is False and no_stream.include_usage is False


def test_store_false_always() -> None:
    got = chat_to_responses({"model": "m", "messages": [USER_HI], "store": True}, OPENAI)
    assert got.body["store"] is False
    assert "store" in got.dropped


@pytest.mark.parametrize(
    ("params", "param"),
    [
        ({"n": 2}, "n"),
        ({"stop": "END"}, "stop"),
        ({"stop": ["a", "b"]}, "stop"),
        ({"logit_bias": {"50256": -100}}, "logit_bias"),
        ({"frequency_penalty": 0.5}, "frequency_penalty"),
        ({"presence_penalty": -1}, "presence_penalty"),
        ({"modalities": ["text", "audio"]}, "modalities"),
        ({"audio": {"voice": "alloy", "format": "wav"}}, "audio"),
        ({"tools": [{"type": "custom", "custom": {"name": "x"}}]}, "tools[0].type"),
        ({"tool_choice": {"type": "custom", "custom": {"name": "x"}}}, "tool_choice.type"),
        (
            {
                "tool_choice": {
                    "type": "allowed_tools",
                    "allowed_tools": {
                        "mode": "auto",
                        "tools": [{"type": "custom", "custom": {"name": "x"}}],
                    },
                }
            },
            "tool_choice.allowed_tools.tools[0].type",
        ),
    ],
)
def test_unsupported_parameters(params: dict[str, Any], param: str) -> None:
    with pytest.raises(UnsupportedParameter) as info:
        translate(**params)
    err = info.value
    assert err.param == param and err.message.startswith(param + ": ")
    assert (err.status, err.type) == (400, "invalid_request_error")
    assert err.code == "unsupported_parameter"


@pytest.mark.parametrize(
    "params",
    [
        {"n": 1},
        {"stop": None},
        {"stop": []},
        {"stop": ""},
        {"logit_bias": {}},
        {"frequency_penalty": 0, "presence_penalty": 0.0},
        {"modalities": ["text"]},
        {"audio": None},
    ],
)
def test_harmless_values_of_unsupported_parameters_pass(params: dict[str, Any]) -> None:
    got = chat_to_responses({"model": "m", "messages": [USER_HI], **params}, OPENAI)
    assert got.dropped == []
    assert not set(params) & set(got.body)


def test_seed_prediction_and_unknown_keys_are_dropped() -> None:
    req = {"model": "m", "messages": [USER_HI], "seed": 7,
           "prediction": {"type": "content", "content": "x"}, "x_custom": 1}  # fmt: skip
    got = chat_to_responses(req, OPENAI)
    assert sorted(got.dropped) == ["prediction", "seed", "x_custom"]
    assert not {"seed", "prediction", "x_custom"} & set(got.body)


# --- model and flavours ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("opts", "client", "expected"),
    [
        (TranslateOptions(), "gpt-4o", ""),  # lightspeed: the backend chooses
        (TranslateOptions(model="passthrough"), "gpt-4o", "gpt-4o"),
        (TranslateOptions(model="granite"), "gpt-4o", "granite"),
        (TranslateOptions(flavor="openai"), "gpt-4o", "gpt-4o"),
        (TranslateOptions(flavor="openai", model=""), "gpt-4o", ""),
        (TranslateOptions(flavor="openai", model="fixed"), "gpt-4o", "fixed"),
    ],
)
def test_model_rule(opts: TranslateOptions, client: str, expected: str) -> None:
    got = chat_to_responses({"model": client, "messages": [USER_HI]}, opts)
    assert got.body["model"] == expected
    assert got.client_model == client


@pytest.mark.parametrize("model", [{}, {"model": ""}, {"model": None}], ids=["none", "", "null"])
def test_model_required_only_when_forwarded(model: dict[str, Any]) -> None:
    # (no backend serves a model named "": it was sent, and the backend refused it)
    assert chat_to_responses({"messages": [USER_HI], **model}, LIGHTSPEED).body["model"] == ""
    with pytest.raises(InvalidRequest) as info:
        chat_to_responses({"messages": [USER_HI], **model}, OPENAI)
    assert info.value.param == "model" and info.value.message == "model: required"
    with pytest.raises(InvalidRequest) as info:
        prepare_passthrough({"input": "hi", **model}, OPENAI)
    assert info.value.param == "model"


def test_null_parameters_are_not_reported_as_dropped() -> None:
    # null counts as absent everywhere: nothing is sent and nothing is reported
    nulls = {"seed": None, "prediction": None, "web_search_options": None, "audio": None}
    got = chat_to_responses({"model": "m", "messages": [USER_HI], **nulls}, OPENAI)
    assert got.dropped == [] and not set(nulls) & set(got.body)
    got = chat_to_responses({"model": "m", "messages": [USER_HI], "seed": 7}, OPENAI)
    assert got.dropped == ["seed"]
    # on the passthrough under lightspeed too (left out all the same)
    body, dropped = prepare_passthrough({"input": "x", "background": None, "top_k": 3}, LIGHTSPEED)
    assert dropped == ["top_k"] and "background" not in body and "top_k" not in body


def lightspeed_fields_from_readme() -> set[str]:
    text = fixture_text("README.md")
    section = text.split("accepts only these request fields", 1)[1].split("So `top_p`", 1)[0]
    return set(re.findall(r"`([a-z_]+)`", section))


EVERY_PARAM = {
    "model": "gpt-4o", "messages": [USER_HI], "stream": False,
    "stream_options": {"include_usage": True}, "temperature": 0.2, "top_p": 0.5,
    "max_tokens": 10, "tools": [FN_TOOL], "tool_choice": "auto", "parallel_tool_calls": True,
    "user": "u", "metadata": {"a": "b"}, "service_tier": "auto", "top_logprobs": 2,
    "prompt_cache_key": "k", "safety_identifier": "s", "reasoning_effort": "high",
    "response_format": {"type": "json_object"}, "logprobs": True,
    "prompt_cache_retention": "24h", "prompt_cache_options": {"ttl": "30m"},
    "moderation": {"policy": {"input": {"mode": "block"}}},
}  # fmt: skip
#: chat fields that the Responses API has under the same name, which Lightspeed refuses
SAME_NAME = ["top_p", "user", "service_tier", "top_logprobs", "prompt_cache_key",
             "prompt_cache_retention", "prompt_cache_options", "moderation"]  # fmt: skip


def test_lightspeed_flavour_sends_only_accepted_fields() -> None:
    assert lightspeed_fields_from_readme() == LIGHTSPEED_FIELDS
    got = chat_to_responses(dict(EVERY_PARAM), LIGHTSPEED)
    assert set(got.body) <= LIGHTSPEED_FIELDS
    assert sorted(got.dropped) == sorted(SAME_NAME)
    assert got.body["model"] == ""
    assert got.body["generate_topic_summary"] is False
    # failures are only precise in streams: always stream upstream
    assert got.body["stream"] is True and got.stream is False


def test_openai_flavour_sends_every_mapped_field() -> None:
    got = chat_to_responses(dict(EVERY_PARAM), OPENAI)
    assert got.dropped == []
    assert "generate_topic_summary" not in got.body
    for key in SAME_NAME:
        assert got.body[key] == EVERY_PARAM[key]
    assert got.body["model"] == "gpt-4o"
    # a backend's answer head comes at once, not after the whole generation
    assert got.body["stream"] is True and got.stream is False


@pytest.mark.parametrize("key", ["max_tokens", "max_completion_tokens"])
@pytest.mark.parametrize(
    ("asked", "openai", "lightspeed"), [(1, 16, 1), (15, 16, 15), (16, 16, 16)]
)
def test_max_output_tokens_below_openais_minimum(
    key: str, asked: int, openai: int, lightspeed: int
) -> None:
    # OpenAI's Responses API answers 400 integer_below_min_value under 16, which
    # chat takes (max_tokens=1 health checks, short classifiers): the openai
    # flavour asks for 16; Lightspeed passes it on to its provider as it is
    req = {"model": "m", "messages": [USER_HI], key: asked}
    assert chat_to_responses(dict(req), OPENAI).body["max_output_tokens"] == openai
    assert chat_to_responses(dict(req), LIGHTSPEED).body["max_output_tokens"] == lightspeed


def test_extra_body_is_merged_last() -> None:
    opts = TranslateOptions(extra_body={"generate_topic_summary": True, "temperature": 1.5,
                                        "shield_ids": ["s1"]})  # fmt: skip
    body = chat_to_responses({"model": "m", "messages": [USER_HI], "temperature": 0.1}, opts).body
    assert body["generate_topic_summary"] is True
    assert body["temperature"] == 1.5
    assert body["shield_ids"] == ["s1"]


def test_request_captures_shape() -> None:
    # What we send for the capture's conversation matches the body Lightspeed accepted.
    sent = fixture_json("req_tool_followup.json")
    req = {
        "model": "x",
        "messages": [
            {"role": "user", "content": sent["input"][0]["content"]},
            {"role": "assistant", "content": None, "tool_calls": [{
                "id": sent["input"][1]["call_id"], "type": "function",
                "function": {"name": sent["input"][1]["name"],
                             "arguments": sent["input"][1]["arguments"]}}]},
            {"role": "tool", "tool_call_id": sent["input"][2]["call_id"],
             "content": sent["input"][2]["output"]},
        ],
        "tools": [{"type": "function", "function": {
            k: sent["tools"][0][k] for k in ("name", "description", "parameters")}}],
        "tool_choice": sent["tool_choice"], "temperature": sent["temperature"],
        "max_tokens": sent["max_output_tokens"], "stream": True,
    }  # fmt: skip
    body = chat_to_responses(req, LIGHTSPEED).body
    assert body["input"][0] == user(sent["input"][0]["content"])
    assert body["input"][1:] == [{"type": t["type"], **{k: v for k, v in t.items() if k != "type"}}
                                 for t in sent["input"][1:]]  # fmt: skip
    for key in ("model", "stream", "store", "generate_topic_summary", "tool_choice",
                "temperature", "max_output_tokens"):  # fmt: skip
        assert body[key] == sent[key], key
    assert {**body["tools"][0], "strict": None} == {**sent["tools"][0], "strict": None}
    assert set(body) <= LIGHTSPEED_FIELDS


# --- validation paths -------------------------------------------------------------------


def _tool_call(arguments: Any) -> dict[str, Any]:
    return {"id": "c1", "type": "function", "function": {"name": "f", "arguments": arguments}}


VALIDATION_ROWS = [
    pytest.param({"messages": None}, "messages", "messages: required", id="missing-messages"),
    pytest.param({"messages": "hi"}, "messages", "messages: expected an array, got a string",
                 id="messages-not-array"),
    pytest.param({"messages": []}, "messages", "messages: must contain at least one message",
                 id="messages-empty"),
    pytest.param({"messages": [USER_HI, 3]}, "messages[1]",
                 "messages[1]: expected an object, got a number", id="message-not-object"),
    pytest.param({"messages": [{"content": "x"}]}, "messages[0].role",
                 "messages[0].role: required", id="role-missing"),
    pytest.param({"messages": [{"role": "robot", "content": "x"}]}, "messages[0].role",
                 "messages[0].role: unknown role 'robot'", id="role-unknown"),
    pytest.param({"messages": [USER_HI, USER_HI,
                               {"role": "assistant", "content": None,
                                "tool_calls": [_tool_call({"a": 1})]}]},
                 "messages[2].tool_calls[0].function.arguments",
                 "messages[2].tool_calls[0].function.arguments: expected a string, got an object",
                 id="tool-call-arguments-not-string"),
    pytest.param({"messages": [{"role": "tool", "content": "x"}]}, "messages[0].tool_call_id",
                 "messages[0].tool_call_id: required", id="tool-call-id-missing"),
    pytest.param({"messages": [{"role": "user", "content": [
                     {"type": "image_url", "image_url": {"detail": "low"}}]}]},
                 "messages[0].content[0].image_url.url",
                 "messages[0].content[0].image_url.url: required", id="image-url-missing"),
    pytest.param({"messages": [{"role": "user", "content": None}]}, "messages[0].content",
                 "messages[0].content: required", id="user-content-null"),
    pytest.param({"messages": [{"role": "user", "content": 5}]}, "messages[0].content",
                 "messages[0].content: expected a string or an array of content parts, "
                 "got a number", id="user-content-number"),
    pytest.param({"messages": [{"role": "system", "content": {"text": "x"}}]},
                 "messages[0].content",
                 "messages[0].content: expected a string or an array of content parts, "
                 "got an object", id="system-content-object"),
    pytest.param({"messages": [{"role": "assistant", "content": 1.5}]}, "messages[0].content",
                 "messages[0].content: expected a string or an array of content parts, "
                 "got a number", id="assistant-content-number"),
    pytest.param({"messages": [{"role": "user", "content": [{"type": "file", "file": {}}]}]},
                 "messages[0].content[0].file",
                 "messages[0].content[0].file: needs file_data or file_id", id="file-empty"),
    pytest.param({"temperature": "hot"}, "temperature",
                 "temperature: expected a number, got a string", id="temperature-type"),
    pytest.param({"temperature": True}, "temperature",
                 "temperature: expected a number, got a boolean", id="temperature-bool"),
    pytest.param({"stream": "yes"}, "stream", "stream: expected a boolean, got a string",
                 id="stream-type"),
    pytest.param({"max_tokens": 0}, "max_tokens", "max_tokens: must be at least 1, got 0",
                 id="max-tokens-zero"),
    pytest.param({"tools": [{"type": "function", "function": {"description": "d"}}]},
                 "tools[0].function.name", "tools[0].function.name: required",
                 id="tool-name-missing"),
    pytest.param({"tools": {"a": 1}}, "tools", "tools: expected an array, got an object",
                 id="tools-not-array"),
    pytest.param({"tool_choice": "sometimes"}, "tool_choice",
                 "tool_choice: expected one of none, auto, required, got 'sometimes'",
                 id="tool-choice-bad"),
    pytest.param({"metadata": {"k": 1}}, "metadata.k",
                 "metadata.k: expected a string, got a number",
                 id="metadata-value"),
    pytest.param({"response_format": {"type": "yaml"}}, "response_format.type",
                 "response_format.type: unknown response format 'yaml'", id="response-format-bad"),
    pytest.param({"stream_options": {"include_usage": "yes"}}, "stream_options.include_usage",
                 "stream_options.include_usage: expected a boolean, got a string",
                 id="include-usage-type"),
    pytest.param({"tools": [FN_TOOL], "functions": [{"name": "f"}]}, "functions",
                 "functions: cannot be combined with tools; send tools only",
                 id="tools-and-functions"),
]  # fmt: skip


@pytest.mark.parametrize(("params", "param", "message"), VALIDATION_ROWS)
def test_validation_names_the_field(params: dict[str, Any], param: str, message: str) -> None:
    req: dict[str, Any] = {"model": "m", "messages": [USER_HI]}
    req.update(params)
    if req["messages"] is None:
        del req["messages"]
    with pytest.raises(InvalidRequest) as info:
        chat_to_responses(req, OPENAI)
    assert info.value.param == param
    assert info.value.message == message
    assert info.value.status == 400 and info.value.type == "invalid_request_error"


# --- the Goose round trip ---------------------------------------------------------------

PNG = "data:image/png;base64,iVBORw0KGgo="
PDF = "data:application/pdf;base64,JVBERi0xLjQ="


def test_goose_shaped_round_trip() -> None:
    shell = {"type": "function", "function": {
        "name": "developer__shell", "description": "Run a shell command",
        "parameters": {"type": "object", "properties": {"command": {"type": "string"}},
                       "required": ["command"]}}}  # fmt: skip
    req = {
        "model": "goose-model",
        "messages": [
            {"role": "system", "content": "You are a general-purpose AI agent called goose."},
            {"role": "user", "content": [
                {"type": "text", "text": "What is in this picture and this PDF?"},
                {"type": "image_url", "image_url": {"url": PNG}},
                {"type": "file", "file": {"file_data": PDF, "filename": "doc.pdf"}},
            ]},
            {"role": "assistant", "content": "Let me look."},
            {"role": "assistant", "content": None, "reasoning_content": "I should list files.",
             "tool_calls": [{"id": "call_a", "type": "function", "function": {
                 "name": "developer__shell", "arguments": "{\"command\":\"ls\"}"}}]},
            {"role": "tool", "tool_call_id": "call_a", "content": "a.png\ndoc.pdf"},
            {"role": "assistant", "content": None,
             "tool_calls": [{"id": "call_b", "type": "function", "function": {
                 "name": "developer__shell", "arguments": "{\"command\":\"file a.png\"}"}}]},
            {"role": "tool", "tool_call_id": "call_b", "content": "a.png: PNG image"},
            {"role": "assistant", "content": "A PNG image and a PDF."},
            {"role": "user", "content": "Thanks! Now summarise."},
        ],
        "tools": [shell],
        "stream": True,
        "stream_options": {"include_usage": True},
        "max_tokens": 4096,
        "temperature": 0.3,
    }  # fmt: skip
    got = chat_to_responses(json.loads(json.dumps(req)), LIGHTSPEED)
    assert got.body["input"] == [
        {"type": "message", "role": "user", "content": [
            {"type": "input_text", "text": "What is in this picture and this PDF?"},
            {"type": "input_image", "image_url": PNG, "detail": "auto"},
            {"type": "input_file", "file_data": PDF, "filename": "doc.pdf"},
        ]},
        {"type": "message", "role": "assistant", "content": "Let me look."},
        {"type": "function_call", "call_id": "call_a", "name": "developer__shell",
         "arguments": "{\"command\":\"ls\"}"},
        {"type": "function_call_output", "call_id": "call_a", "output": "a.png\ndoc.pdf"},
        {"type": "function_call", "call_id": "call_b", "name": "developer__shell",
         "arguments": "{\"command\":\"file a.png\"}"},
        {"type": "function_call_output", "call_id": "call_b", "output": "a.png: PNG image"},
        {"type": "message", "role": "assistant", "content": "A PNG image and a PDF."},
        user("Thanks! Now summarise."),
    ]  # fmt: skip
    assert "instructions" not in got.body  # Lightspeed keeps its own system prompt
    assert got.body["tools"] == [{"type": "function", "name": "developer__shell",
                                  "description": "Run a shell command",
                                  "parameters": shell["function"]["parameters"],
                                  "strict": False}]  # fmt: skip
    assert got.body["max_output_tokens"] == 4096 and got.body["temperature"] == 0.3
    assert (got.stream, got.include_usage, got.client_model) == (True, True, "goose-model")
    assert got.dropped == ["messages[0] (system)"]  # logged at DEBUG


@pytest.mark.parametrize("content_as", ["string", "parts"])
def test_goose_compaction_keeps_the_history_in_the_system_prompt(content_as: str) -> None:
    # Goose compacts by putting the conversation in the system prompt, with one
    # user message that asks for its summary (context_mgmt do_compact); under
    # "drop" the system message is kept as input then, else the backend
    # summarises nothing and Goose carries on from that
    history = "## Conversation History\n[user]: fix nginx on port 8443\n[assistant]: done"
    ask = "Please summarize the conversation history provided in the system prompt."
    content: Any = ask if content_as == "string" else [{"type": "text", "text": ask}]
    req = {"model": "m", "messages": [{"role": "system", "content": history},
                                      {"role": "user", "content": content}]}  # fmt: skip
    got = chat_to_responses(req, LIGHTSPEED)
    assert got.body["input"][0] == {
        "type": "message", "role": "system", "content": [{"type": "input_text", "text": history}]
    }  # fmt: skip
    assert len(got.body["input"]) == 2 and "instructions" not in got.body
    # naming the system prompt is not pointing into it
    why = {"role": "user", "content": "My app ignores its system prompt. Why?"}
    about = {"model": "m", "messages": [{"role": "system", "content": history}, why]}
    assert [i["role"] for i in chat_to_responses(about, LIGHTSPEED).body["input"]] == ["user"]
    # only the newest user message counts: an older mention does not keep it
    later = {"model": "m", "messages": [*req["messages"], {"role": "assistant", "content": "ok"},
                                        USER_HI]}  # fmt: skip
    assert [i["role"] for i in chat_to_responses(later, LIGHTSPEED).body["input"]] == [
        "user",
        "assistant",
        "user",
    ]


# Goose's summary of an old tool call (goose-compaction summarize_tool_call): the
# task in the system prompt, the call and its result as the one user message, no tools
TOOL_PAIR_TASK = (
    "Your task is to summarize a tool call & response pair to save tokens.\n\n"
    "Reply with a single message that describes what happened."
)
TOOL_PAIR = (
    '[assistant]: tool_request(developer__shell): {"command":"cat /etc/os-release"}\n'
    '[user]: tool_response: NAME="Red Hat Enterprise Linux"'
)
TASK_THEN_PAIR = [
    {"role": "system", "content": TOOL_PAIR_TASK},
    {"role": "user", "content": TOOL_PAIR},
]


def test_goose_tool_pair_summary_keeps_its_task_in_the_system_prompt() -> None:
    # dropped, Lightspeed answered the bare transcript, and Goose put that answer
    # in place of the tool's result in its history
    got = chat_to_responses({"model": "m", "messages": TASK_THEN_PAIR}, LIGHTSPEED)
    assert got.body["input"] == [
        {"type": "message", "role": "system",
         "content": [{"type": "input_text", "text": TOOL_PAIR_TASK}]},
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": TOOL_PAIR}]},
    ]  # fmt: skip


TASK_THEN_PAIR = [
    {"role": "system", "content": TOOL_PAIR_TASK},
    {"role": "user", "content": TOOL_PAIR},
]


@pytest.mark.parametrize(
    "change",
    [
        pytest.param({"tools": [FN_TOOL]}, id="with-tools"),
        pytest.param({"functions": [FN_TOOL["function"]]}, id="with-legacy-functions"),
        pytest.param({"messages": [*TASK_THEN_PAIR, {"role": "assistant", "content": "ok"},
                                   USER_HI]}, id="a-conversation"),
        pytest.param({"messages": [{"role": "system", "content": "You are goose."}, USER_HI]},
                     id="no-summary-asked"),
    ],
)  # fmt: skip
def test_only_a_one_off_summary_keeps_the_system_prompt(change: dict[str, Any]) -> None:
    # Goose's own turns (tools, a history) and a plain persona are dropped as before
    req = {"model": "m", "messages": TASK_THEN_PAIR, **change}
    roles = [item.get("role") for item in chat_to_responses(req, LIGHTSPEED).body["input"]]
    assert "system" not in roles and roles[-1] == "user"


def chat_user(text: str) -> dict[str, Any]:
    return {"role": "user", "content": text}


SKILL = "To audit SELinux, read /var/log/audit/audit.log and report the top 3 denials."
SUBAGENT = (
    "You are a subagent of goose, started for one task.\n<role>\nWork alone.\n</role>\n"
    f"<instructions>\n{SKILL}\n</instructions>\n<tools>\ndeveloper__shell\n</tools>"
)
DESKTOP_RECIPE = (
    f"You are a helpful agent.\n\nIMPORTANT instructions for you to operate as agent:\n{SKILL}"
)
PLANNER = 'You are a specialized "planner" AI. Produce a step-by-step plan for the request.'


@pytest.mark.parametrize(
    ("system", "messages", "tools"),
    [
        pytest.param(SUBAGENT, [chat_user("Apply the skill knowledge to produce a useful result.")],
                     [FN_TOOL], id="subagent-delegated-a-skill"),
        pytest.param(DESKTOP_RECIPE, [chat_user("Begin.")], [FN_TOOL], id="desktop-recipe"),
        pytest.param(PLANNER, [chat_user("Make the audit log smaller."),
                               {"role": "assistant", "content": "How small?"},
                               chat_user("Under 1 GB.")], None, id="plan"),
    ],
)  # fmt: skip
def test_a_system_prompt_that_holds_the_task_is_kept(
    system: str, messages: list[Any], tools: Optional[list[Any]]
) -> None:
    # Goose's delegate tool (a skill, an agent file, a recipe), Desktop's
    # recipe sessions and /plan put the task in the system prompt alone:
    # dropped, the backend was asked to "apply the skill knowledge" it never saw
    req = {"model": "m", "messages": [{"role": "system", "content": system}, *messages]}
    got = chat_to_responses({**req, **({"tools": tools} if tools else {})}, LIGHTSPEED)
    assert got.body["input"][0] == {
        "type": "message", "role": "system", "content": [{"type": "input_text", "text": system}]
    }  # fmt: skip
    assert got.body["input"][1:] == [
        chat_to_responses({"model": "m", "messages": [m]}, LIGHTSPEED).body["input"][0]
        for m in messages
    ]
    assert got.dropped == []
    passthrough = {"model": "m", "input": got.body["input"], **({"tools": tools} if tools else {})}
    assert prepare_passthrough(passthrough, LIGHTSPEED)[0]["input"] == got.body["input"]


@pytest.mark.parametrize(
    ("system", "tools"),
    [
        pytest.param(SUBAGENT.replace(SKILL, ""), [FN_TOOL], id="empty-instructions"),
        pytest.param("Use the <instructions> tag in your output.", [FN_TOOL],
                     id="names-the-tag"),
        pytest.param(PLANNER, [FN_TOOL], id="planner-with-tools"),
        pytest.param("You are goose. The user plans a trip.", None, id="no-planner"),
    ],
)  # fmt: skip
def test_a_system_prompt_that_only_looks_like_one_with_a_task_is_dropped(
    system: str, tools: Optional[list[Any]]
) -> None:
    messages = [{"role": "system", "content": system}, USER_HI,
                {"role": "assistant", "content": "Hi."}, USER_HI]  # fmt: skip
    req = {"model": "m", "messages": messages}
    got = chat_to_responses({**req, **({"tools": tools} if tools else {})}, LIGHTSPEED)
    assert [item["role"] for item in got.body["input"]] == ["user", "assistant", "user"]
    assert got.dropped == ["messages[0] (system)"]
    # and on /v1/responses: listed there too (the DEBUG line shows both)
    passthrough = {"model": "m", "input": [{"role": "system", "content": system},
                                           *got.body["input"]]}  # fmt: skip
    body, dropped = prepare_passthrough({**passthrough, **({"tools": tools} if tools else {})},
                                        LIGHTSPEED)  # fmt: skip
    assert body["input"] == got.body["input"] and dropped == ["input[0] (system)"]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(["<instructions>", "</instructions>", "<INSTRUCTIONS>",
                                 "</Instructions>", " ", "\n", "\u3000", "x", "<"]),
                max_size=12))  # fmt: skip
def test_an_instructions_element_is_found_as_a_regular_expression_finds_it(
    pieces: list[str],
) -> None:
    # one pass (the lazy expression took 4 s on 4,000 unclosed opening tags);
    # the tag as Goose writes it
    text = "".join(pieces)
    element = re.compile(r"<instructions>(.*?)</instructions>", re.DOTALL)
    expected = any(m.group(1).strip() for m in element.finditer(text))
    assert _states_its_task(text) == expected


def test_input_is_not_mutated() -> None:
    req = {"model": "m", "messages": [{"role": "system", "content": "s"}, USER_HI],
           "tools": [FN_TOOL]}  # fmt: skip
    snapshot = json.dumps(req)
    chat_to_responses(req, TranslateOptions(system_messages="instructions"))
    assert json.dumps(req) == snapshot


# --- JSON body gate ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [
        (b"\xff\xfe{}", "not valid UTF-8"),
        (b"", "not valid JSON"),
        (b"{", "not valid JSON"),
        (b"[1, 2]", "must be a JSON object, not an array"),
        (b'"text"', "must be a JSON object, not a string"),
        (b'{"t": NaN}', "NaN is not valid JSON"),
        (b'{"t": Infinity}', "Infinity is not valid JSON"),
        (b'{"t": -Infinity}', "-Infinity is not valid JSON"),
        (b'{"t": 1e999}', "out of range"),
        (b'{"t": ' + b"9" * 4301 + b"}", "longer than 4300 digits"),
        (b'{"a":' * 65 + b"1" + b"}" * 65, "deeper than 64"),
        (b"[" * 100_000 + b"]" * 100_000, "deeper than 64"),
        (b'{"a":' * 100_000 + b"1" + b"}" * 100_000, "deeper than 64"),
    ],
)
def test_parse_json_object_rejects(raw: bytes, fragment: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        parse_json_object(raw)
    assert fragment in info.value.message
    assert info.value.status == 400


def test_parse_json_object_accepts() -> None:
    assert parse_json_object(b'{"a":' * 63 + b"[1]" + b"}" * 63)  # 64 levels deep
    big = "9" * 4300
    assert parse_json_object(f'{{"n": {big}}}'.encode())["n"] == int(big)
    assert parse_json_object(b'{"k": 1, "k": 2}') == {"k": 2}  # duplicate keys: last wins
    assert parse_json_object(b'\xef\xbb\xbf{"bom": true}') == {"bom": True}
    assert parse_json_object('{"t": "wörld ✓"}'.encode()) == {"t": "wörld ✓"}


# --- /v1/responses passthrough -----------------------------------------------------------------


def test_passthrough_lightspeed_model_extras_and_field_filter() -> None:
    req = {
        "model": "gpt-5",
        "input": "hi",
        "reasoning": {"effort": "low"},
        "stream": True,
        "top_p": 0.5,
        "user": "u",
    }
    snapshot = json.dumps(req)
    body, dropped = prepare_passthrough(req, LIGHTSPEED)
    # the backend chooses the model; fields Lightspeed answers 422 to are not sent
    expected = {k: v for k, v in req.items() if k in LIGHTSPEED_FIELDS}
    assert body == {**expected, "model": "", "generate_topic_summary": False}
    assert dropped == sorted(set(req) - LIGHTSPEED_FIELDS) == ["top_p", "user"]
    assert json.dumps(req) == snapshot  # the caller's dict is untouched


def test_passthrough_keeps_client_generate_topic_summary() -> None:
    body, _ = prepare_passthrough({"input": "hi", "generate_topic_summary": True}, LIGHTSPEED)
    assert body["generate_topic_summary"] is True


@pytest.mark.parametrize(
    ("opts", "expected"),
    [
        (TranslateOptions(model="granite"), "granite"),
        (TranslateOptions(model=""), ""),
        (TranslateOptions(model="passthrough"), "gpt-5"),
        (TranslateOptions(), ""),
        (TranslateOptions(flavor="openai"), "gpt-5"),
    ],
)
def test_passthrough_model_rule(opts: TranslateOptions, expected: str) -> None:
    body, _ = prepare_passthrough({"model": "gpt-5", "input": "x"}, opts)
    assert body["model"] == expected


def test_passthrough_openai_and_extra_body() -> None:
    req = {"model": "gpt-5", "input": "x", "whatever": [1, 2]}
    # as it came, but asked as a stream (its head at once; collected for the client)
    assert prepare_passthrough(req, OPENAI) == ({**req, "stream": True}, [])
    opts = TranslateOptions(flavor="openai", extra_body={"store": False, "whatever": None})
    body, _ = prepare_passthrough(req, opts)
    assert body == {"model": "gpt-5", "input": "x", "store": False, "whatever": None,
                    "stream": True}  # fmt: skip


def test_passthrough_openai_refuses_background_and_takes_a_stored_prompts_model() -> None:
    with pytest.raises(UnsupportedParameter) as exc:
        prepare_passthrough({"model": "gpt-5", "input": "x", "background": True}, OPENAI)
    assert exc.value.param == "background" and exc.value.status == 400
    streamed = {"model": "gpt-5", "input": "x", "background": True, "stream": True}
    assert prepare_passthrough(streamed, OPENAI) == (streamed, [])  # its answer comes now
    prompt = {"prompt": {"id": "pmpt_1", "version": "2"}, "input": "x"}
    assert prepare_passthrough(prompt, OPENAI) == ({**prompt, "stream": True}, [])
    # a model of "" is none, as for chat
    assert prepare_passthrough({**prompt, "model": ""}, OPENAI) == ({**prompt, "stream": True}, [])
    with pytest.raises(InvalidRequest) as missing:
        prepare_passthrough({"input": "x"}, OPENAI)  # no prompt to name it: required
    assert missing.value.param == "model"
    # under lightspeed background is dropped, as before
    body, dropped = prepare_passthrough({"input": "x", "background": True}, LIGHTSPEED)
    assert "background" in dropped and "background" not in body


def test_options_reject_unknown_values() -> None:
    with pytest.raises(ValueError):
        TranslateOptions(flavor="azure")
    with pytest.raises(ValueError):
        TranslateOptions(system_messages="merge")


# Goose's request on /v1/responses (formats/openai_responses.rs): its system
# prompt as the first input item, a role without a type
GOOSE_SYSTEM = {"role": "system", "content": [{"type": "input_text", "text": "You are goose."}]}
GOOSE_USER = {"role": "user", "content": [{"type": "input_text", "text": "list files"}]}


@pytest.mark.parametrize(
    ("mode", "roles", "instructions"),
    [("drop", ["user"], None),
     ("instructions", ["user"], "Be brief.\n\nYou are goose."),
     ("input", ["system", "user"], "Be brief.")],
)  # fmt: skip
@pytest.mark.parametrize("flavor", ["lightspeed", "openai"])
def test_the_passthrough_follows_system_messages(
    mode: str, roles: list[str], instructions: Any, flavor: str
) -> None:
    # as for chat: Lightspeed keeps its own prompt unless told otherwise
    req = {"model": "gpt-5", "input": [GOOSE_SYSTEM, GOOSE_USER]}
    if mode != "drop":
        req["instructions"] = "Be brief."
    body, _ = prepare_passthrough(req, TranslateOptions(flavor=flavor, system_messages=mode))
    assert [item["role"] for item in body["input"]] == roles
    assert body.get("instructions") == instructions
    assert req["input"] == [GOOSE_SYSTEM, GOOSE_USER]  # the client's body is not changed


@pytest.mark.parametrize("mode", ["drop", "instructions"])
def test_the_passthrough_keeps_system_items_when_nothing_else_is_there(mode: str) -> None:
    # input would be empty: the backend would be asked to answer nothing
    req = {"model": "gpt-5", "input": [GOOSE_SYSTEM], "instructions": "Be brief."}
    body, _ = prepare_passthrough(req, TranslateOptions(flavor="openai", system_messages=mode))
    assert body["input"] == [GOOSE_SYSTEM] and body["instructions"] == "Be brief."


@pytest.mark.parametrize(("flavor", "mode"), [("lightspeed", "drop"), ("openai", "input")])
def test_system_messages_default_to_the_flavours_mode(flavor: str, mode: str) -> None:
    # Lightspeed has a system prompt of its own; a plain Responses server has
    # none, and a client's system prompt (its persona, "answer in JSON") is the
    # only one the model gets
    assert TranslateOptions(flavor=flavor).system_messages == mode
    req = {"model": "gpt-5", "input": [GOOSE_SYSTEM, GOOSE_USER]}
    body, _ = prepare_passthrough(req, TranslateOptions(flavor=flavor))
    assert len(body["input"]) == (2 if mode == "input" else 1)


def test_the_passthrough_keeps_the_system_prompt_goose_compacts_from() -> None:
    text = "Please summarize the conversation history provided in the system prompt."
    ask = {"role": "user", "content": [{"type": "input_text", "text": text}]}
    body, _ = prepare_passthrough({"input": [GOOSE_SYSTEM, ask]}, LIGHTSPEED)
    assert body["input"] == [GOOSE_SYSTEM, ask]


def test_the_passthrough_keeps_the_task_of_a_tool_pair_summary() -> None:
    task = {"role": "system", "content": [{"type": "input_text", "text": TOOL_PAIR_TASK}]}
    pair = {"role": "user", "content": [{"type": "input_text", "text": TOOL_PAIR}]}
    body, _ = prepare_passthrough({"input": [task, pair]}, LIGHTSPEED)
    assert body["input"] == [task, pair]
    body, _ = prepare_passthrough({"input": [task, pair], "tools": [FN_TOOL]}, LIGHTSPEED)
    assert body["input"] == [pair]


def test_the_passthrough_keeps_system_messages_that_are_all_it_has() -> None:
    # dropped, the backend would be asked to answer nothing
    body, _ = prepare_passthrough({"input": [GOOSE_SYSTEM]}, LIGHTSPEED)
    assert body["input"] == [GOOSE_SYSTEM]


@pytest.mark.parametrize("role", ["user", "assistant"])
def test_a_prompt_cache_breakpoint_must_be_an_object(role: str) -> None:
    part = {"type": "text", "text": "hi", "prompt_cache_breakpoint": "explicit"}
    req = {"model": "m", "messages": [USER_HI, {"role": role, "content": [part]}]}
    for opts in (OPENAI, LIGHTSPEED):
        with pytest.raises(InvalidRequest) as info:
            chat_to_responses(req, opts)
        assert info.value.param == "messages[1].content[0].prompt_cache_breakpoint"


def test_a_prompt_cache_breakpoint_with_no_place_in_the_request_is_listed() -> None:
    # an assistant's text, and system text in "instructions" mode, go as one
    # string, which carries no breakpoint: they were lost without a word
    marked = {"type": "text", "text": "a", "prompt_cache_breakpoint": BP}
    req = {"model": "m", "messages": [
        {"role": "system", "content": [{"type": "text", "text": "rules "}, marked]},
        USER_HI,
        {"role": "assistant", "content": [marked, {"type": "text", "text": "b"}]},
        {"role": "user", "content": [marked]},
    ]}  # fmt: skip
    opts = TranslateOptions(flavor="openai", system_messages="instructions")
    creq = chat_to_responses(req, opts)
    assert creq.body["instructions"] == "rules a"
    assert creq.body["input"][1] == {"type": "message", "role": "assistant", "content": "ab"}
    assert creq.body["input"][2]["content"][0]["prompt_cache_breakpoint"] == BP  # kept
    assert creq.dropped == [
        "messages[0].content[1].prompt_cache_breakpoint",
        "messages[2].content[0].prompt_cache_breakpoint",
    ]
    # under lightspeed every breakpoint is left out, as prompt_cache_options is
    # (documented so, not listed); its "drop" lists the system message
    assert chat_to_responses(req, LIGHTSPEED).dropped == ["messages[0] (system)"]


def test_an_extra_body_object_merges_into_the_requests_one_level_deep() -> None:
    # reasoning summaries asked for in the configuration replaced the client's
    # reasoning_effort: the whole "reasoning" object was replaced
    opts = TranslateOptions(
        flavor="openai",
        extra_body={"reasoning": {"summary": "auto"}, "text": {"verbosity": "low"}, "top_p": 1},
    )
    req = {"model": "gpt-5", "messages": [USER_HI], "reasoning_effort": "high", "top_p": 0.5,
           "response_format": {"type": "json_object"}}  # fmt: skip
    body = chat_to_responses(req, opts).body
    assert body["reasoning"] == {"effort": "high", "summary": "auto"}
    assert body["text"] == {"format": {"type": "json_object"}, "verbosity": "low"}
    assert body["top_p"] == 1  # any other value replaces the request's
    fresh = chat_to_responses({"model": "gpt-5", "messages": [USER_HI]}, opts).body
    assert fresh["reasoning"] == {"summary": "auto"}
