"""A Responses ``Response`` object → a ``chat.completion`` (docs/api-translation.md §2).

One choice, index 0. The message gathers, across the output items in order:
``output_text`` parts → ``content`` (null if there is none), ``refusal``
parts → ``refusal``, ``function_call`` items → ``tool_calls``, reasoning
text and summaries → ``reasoning_content`` (the extension field Goose reads;
the parts joined with THOUGHT_GAP; present only when non-empty), output-text
logprobs → ``choices[0].logprobs``,
``url_citation`` annotations → ``annotations`` (:func:`url_citations`).
Items a chat client cannot use (``mcp_list_tools``, ``mcp_call``,
``web_search_call``, …) and other annotations are skipped.

:func:`map_usage` and :func:`finish_reason` are shared with the stream
translator so both paths agree; :func:`events_from_response` lets a plain JSON
answer go through the stream translator when the client asked for a stream;
:func:`as_function_call` reshapes an answer for a client that sent the
deprecated ``functions``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from typing import Any, Optional

from goose_proxy.errors import (
    ProxyError,
    UpstreamError,
    UpstreamNotAResponse,
    UpstreamProtocolError,
)

from .errormap import error_from_event
from .toolcalls import call_id_of

#: what a decoded JSON object may be, for ``isinstance``: ``dict`` first, so the
#: usual case is decided without the ``Mapping`` ABC's slower check
JSON_OBJECT = (dict, Mapping)

__all__ = [
    "THOUGHT_GAP",
    "as_function_call",
    "chat_logprobs",
    "chat_tool_call",
    "events_from_response",
    "failure_of",
    "finish_reason",
    "map_usage",
    "new_completion_id",
    "reasoning_texts",
    "responses_to_chat",
]


def new_completion_id() -> str:
    """A fresh ``chatcmpl-…`` id, for answers whose response carried none."""
    return f"chatcmpl-{os.urandom(16).hex()}"


def map_usage(usage: Any) -> Optional[dict[str, Any]]:
    """Responses ``usage`` → chat ``usage``, or None when there is none.

    ``cached_tokens``, ``cache_write_tokens`` and ``reasoning_tokens``
    details are kept when present.
    """
    if not isinstance(usage, JSON_OBJECT):
        return None
    prompt = _count(usage.get("input_tokens"))
    completion = _count(usage.get("output_tokens"))
    total = usage.get("total_tokens")
    out: dict[str, Any] = {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": _count(total) if total is not None else prompt + completion,
    }
    details = usage.get("input_tokens_details")
    if isinstance(details, JSON_OBJECT):
        kept = {
            k: _count(details[k])
            for k in ("cached_tokens", "cache_write_tokens")
            if details.get(k) is not None
        }
        if kept:
            out["prompt_tokens_details"] = kept
    details = usage.get("output_tokens_details")
    if isinstance(details, JSON_OBJECT) and details.get("reasoning_tokens") is not None:
        out["completion_tokens_details"] = {"reasoning_tokens": _count(details["reasoning_tokens"])}
    return out


def _count(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return 0
    return int(value)


def finish_reason(status: Any, incomplete_details: Any, any_tool_call: bool) -> str:
    """The chat ``finish_reason`` for a finished response.

    ``incomplete`` → ``"content_filter"`` when that is the reason, else
    ``"length"`` (``max_output_tokens`` and any other cut); otherwise
    ``"tool_calls"`` if a tool call was returned, else ``"stop"``.
    """
    if status == "incomplete":
        details = incomplete_details if isinstance(incomplete_details, JSON_OBJECT) else {}
        reason = details.get("reason")
        return "content_filter" if reason == "content_filter" else "length"
    return "tool_calls" if any_tool_call else "stop"


FAILED_WITHOUT_MESSAGE = "upstream response failed without an error message"


def failure_of(resp: Mapping[str, Any]) -> Optional[ProxyError]:
    """The error a failed Response object carries, or None if it did not fail.

    A response failed when ``status`` is ``"failed"`` or ``error`` is an object.
    """
    err = resp.get("error")
    if isinstance(err, JSON_OBJECT):
        return error_from_event(err)
    if resp.get("status") == "failed":
        return UpstreamError(FAILED_WITHOUT_MESSAGE)
    return None


def event_failure(event: Mapping[str, Any]) -> ProxyError:
    """The error a stream's ``error`` event or ``response.failed`` event (any
    other type is read as the latter) reports, mapped by :func:`error_from_event`."""
    if event.get("type") == "error":
        return error_from_event(event)
    response = event.get("response")
    err = response.get("error") if isinstance(response, JSON_OBJECT) else None
    if isinstance(err, JSON_OBJECT):
        return error_from_event(err)
    return UpstreamError(FAILED_WITHOUT_MESSAGE)


#: the ``status`` values of a finished Response that is not a failure
FINISHED = ("completed", "incomplete")
#: ... and every ``status`` a Response ends with
ENDED = (*FINISHED, "failed", "cancelled")
CANCELLED = "upstream response was cancelled before it finished"
#: a stream that ended without its terminal event
ENDED_EARLY = "upstream stream ended early (no terminal event)"


def terminal_status(event_type: str, response: Mapping[str, Any]) -> str:
    """How a stream's ``response.completed`` or ``response.incomplete`` event
    (``event_type``) says its ``response`` ended: the response's own ``status``
    when it is one a response ends with, else the event's (a backend that left
    ``in_progress``, or nothing, there). The chat stream and the collected
    answer both read it so, and so end alike."""
    status = response.get("status")
    return status if status in ENDED else event_type[len("response.") :]


def check_finished(resp: Any) -> Optional[ProxyError]:
    """For an answer the backend sent whole: the failure it reports (see
    :func:`failure_of`), or None when it is a Response object that finished.

    Raises:
        UpstreamNotAResponse: not a JSON object; no ``output`` list (``{}``, an
            error in some other shape); or a ``status`` that is not final
            (``queued``/``in_progress``: a background response) or ``cancelled``.
            Read as success, each would be an empty answer with ``"stop"``.
    """
    if not isinstance(resp, JSON_OBJECT):
        raise UpstreamNotAResponse("upstream answer is not a JSON object")
    failure = failure_of(resp)
    if failure is not None:
        return failure
    status = resp.get("status")
    if status == "cancelled":
        raise UpstreamNotAResponse(CANCELLED)
    if status is not None and status not in FINISHED:
        raise UpstreamNotAResponse(
            f"upstream response is not finished (status {str(status)[:40]!r}); "
            "goose-proxy does not wait for background responses"
        )
    if not isinstance(resp.get("output"), list):
        keys = ", ".join(repr(k)[:40] for k in list(resp)[:5]) or "none"
        raise UpstreamNotAResponse(
            f'upstream answer is not a Response object: it has no "output" list (keys: {keys})'
        )
    return None


#: what ``reasoning_content`` puts between two parts of reasoning (a reasoning
#: item's text parts and summary parts, a message's ``reasoning_text`` parts):
#: a blank line, as each summary part is a paragraph of its own
THOUGHT_GAP = "\n\n"


def reasoning_texts(
    item: Mapping[str, Any], keys: tuple[str, ...] = ("content", "summary")
) -> list[str]:
    """The non-empty reasoning text parts, then summary parts, of a
    ``reasoning`` item (those of ``keys``)."""
    texts: list[str] = []
    for key in keys:
        parts = item.get(key)
        for part in parts if isinstance(parts, list) else ():
            if isinstance(part, JSON_OBJECT) and isinstance(part.get("text"), str) and part["text"]:
                texts.append(part["text"])
    return texts


#: the fields of a Response object that :func:`responses_to_chat` reads besides
#: ``output`` (``failure_of`` reads ``status``, ``error``, ``incomplete_details``)
READ_FIELDS = ("id", "created_at", "model", "status", "usage", "error", "incomplete_details")
#: what it reads besides those, only when present (:func:`answer_extras`): not
#: asked of a terminal response for ``settled``, whose answer takes them from it
EXTRA_FIELDS = ("service_tier", "moderation")


def url_citations(annotations: list[Any], offset: int, size: int) -> list[dict[str, Any]]:
    """The ``url_citation`` annotations of an ``output_text`` part of ``size``
    characters in chat's form (``{"type": "url_citation", "url_citation":
    {start_index, end_index, url, title}}``), their places moved by ``offset``:
    the characters of ``content`` before the part. Other kinds
    (``file_citation``, ``file_path``) have no chat form and are left out, as
    are malformed ones and those whose place is not within the part."""
    out = []
    for a in annotations:
        if not isinstance(a, JSON_OBJECT) or a.get("type") != "url_citation":
            continue
        start, end, url = a.get("start_index"), a.get("end_index"), a.get("url")
        if not (type(start) is int and type(end) is int and isinstance(url, str)):
            continue
        if not 0 <= start <= end <= size:
            continue
        title = a.get("title")
        out.append(
            {
                "type": "url_citation",
                "url_citation": {
                    "start_index": start + offset,
                    "end_index": end + offset,
                    "url": url,
                    "title": title if isinstance(title, str) else "",
                },
            }
        )
    return out


def responses_to_chat(
    resp: dict[str, Any], client_model: str, refusal_in_content: bool = True
) -> dict[str, Any]:
    """Translate a complete (non-streamed or accumulated) Response object.

    A refusal is in ``content`` too, in its place among the text (Goose reads
    only ``content``), unless ``refusal_in_content`` is false: for a client
    that asked for structured output, whose ``content`` must be the JSON or
    null, as OpenAI answers.

    Raises:
        ProxyError: the response failed (``status: "failed"`` or an ``error``
            object): the class mapped from its error by :func:`error_from_event`.
        UpstreamNotAResponse: ``resp`` is not a finished Response object (see
            :func:`check_finished`).
        UpstreamProtocolError: a ``function_call`` item has neither
            ``call_id`` nor ``id``.
    """
    failure = check_finished(resp)
    if failure is not None:
        raise failure
    output = resp.get("output")
    texts: list[str] = []
    refusals: list[str] = []
    reasoning: list[str] = []
    tool_calls: list[dict[str, Any]] = []
    logprobs: list[Any] = []
    citations: list[dict[str, Any]] = []
    before = 0  # the characters of content so far (where a part's citations count from)
    for item in output if isinstance(output, list) else ():
        if not isinstance(item, JSON_OBJECT):
            continue
        itype = item.get("type")
        if itype == "message":
            content = item.get("content")
            if isinstance(content, str):  # Llama Stack allows it (Lightspeed's shield did it)
                texts.append(content)
                before += len(content)
                continue
            for part in content or ():
                if not isinstance(part, JSON_OBJECT):
                    continue
                if part.get("type") == "output_text" and isinstance(part.get("text"), str):
                    text = part["text"]
                    if isinstance(part.get("annotations"), list) and part["annotations"]:
                        citations += url_citations(part["annotations"], before, len(text))
                    texts.append(text)
                    before += len(text)
                    if isinstance(part.get("logprobs"), list):
                        logprobs.extend(part["logprobs"])
                elif part.get("type") == "refusal" and isinstance(part.get("refusal"), str):
                    refusals.append(part["refusal"])
                    if refusal_in_content:  # shown by clients that read only content
                        texts.append(part["refusal"])
                        before += len(part["refusal"])
                elif part.get("type") == "reasoning_text" and isinstance(part.get("text"), str):
                    # Llama Stack puts a reasoning model's thoughts in the message;
                    # a stream carries them as reasoning_content deltas
                    if part["text"]:
                        reasoning.append(part["text"])
        elif itype == "function_call":
            tool_calls.append(chat_tool_call(item))
        elif itype == "reasoning":
            reasoning.extend(reasoning_texts(item))
    message: dict[str, Any] = {
        "role": "assistant",
        "content": "".join(texts) or None,  # null without text, as the stream shows it
        "refusal": "".join(refusals) or None,  # (an empty refusal: none, as streamed)
    }
    if tool_calls:
        message["tool_calls"] = tool_calls
    if citations:
        message["annotations"] = citations
    if reasoning:
        message["reasoning_content"] = THOUGHT_GAP.join(reasoning)
    created = resp.get("created_at")
    completion: dict[str, Any] = {
        "id": resp["id"] if isinstance(resp.get("id"), str) else new_completion_id(),
        "object": "chat.completion",
        "created": int(created) if isinstance(created, (int, float)) else int(time.time()),
        "model": client_model or (resp["model"] if isinstance(resp.get("model"), str) else ""),
        "choices": [
            {
                "index": 0,
                "message": message,
                "logprobs": chat_logprobs(logprobs),
                "finish_reason": finish_reason(
                    resp.get("status"), resp.get("incomplete_details"), bool(tool_calls)
                ),
            }
        ],
    }
    usage = map_usage(resp.get("usage"))
    if usage is not None:
        completion["usage"] = usage
    completion.update(answer_extras(resp))
    return completion


def answer_extras(resp: Mapping[str, Any]) -> dict[str, Any]:
    """What a Response says of how it was served that a chat answer carries
    too: ``service_tier`` (the tier that served it, which may differ from the
    one asked for) and ``moderation`` (the results of moderation the client
    asked for), when present."""
    extras: dict[str, Any] = {}
    tier = resp.get("service_tier")  # (EXTRA_FIELDS, written out: once per answer)
    if isinstance(tier, str):
        extras["service_tier"] = tier
    moderation = resp.get("moderation")
    if isinstance(moderation, JSON_OBJECT):
        extras["moderation"] = moderation
    return extras


def chat_logprobs(entries: Any) -> Optional[dict[str, Any]]:
    """Responses ``logprobs`` entries as a chat choice's ``logprobs`` (None when
    there are none).

    Each entry gets the keys OpenAI's ``ChatCompletionTokenLogprob`` always has:
    ``token``, ``logprob``, ``bytes`` (the backend's, else null) and
    ``top_logprobs`` (``[]`` when absent; a text delta's entries may lack it, and
    the openai SDK's type and strictly typed clients require it). Entries
    without a string token or a numeric logprob are left out.
    """
    if not entries or not isinstance(entries, list):
        return None
    content = [lp for lp in map(_token_logprob, entries) if lp is not None]
    if not content:
        return None
    return {"content": content, "refusal": None}


def _token_logprob(entry: Any, top: bool = False) -> Optional[dict[str, Any]]:
    if not isinstance(entry, JSON_OBJECT):
        return None
    token, logprob, raw = entry.get("token"), entry.get("logprob"), entry.get("bytes")
    if not isinstance(token, str) or not _is_number(logprob):
        return None
    out = {
        "token": token,
        "logprob": logprob,
        "bytes": raw if isinstance(raw, list) and all(type(b) is int for b in raw) else None,
    }
    if not top:
        tops = entry.get("top_logprobs")
        out["top_logprobs"] = [
            t for t in (_token_logprob(e, True) for e in tops) if t is not None
        ] if isinstance(tops, list) else []  # fmt: skip
    return out


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def as_function_call(completion: dict[str, Any]) -> int:
    """Reshape a :func:`responses_to_chat` answer (in place) for a client that
    offered its tools as the deprecated ``functions``, as OpenAI answers one:
    the first tool call becomes ``message.function_call`` (``{"name",
    "arguments"}``), ``tool_calls`` goes, and a ``"tool_calls"`` finish becomes
    ``"function_call"``. The legacy shape carries one call: returns how many
    more there were (left out; such a request asks for no parallel calls).
    """
    choice = completion["choices"][0]
    calls = choice["message"].pop("tool_calls", None)
    if not calls:
        return 0
    choice["message"]["function_call"] = calls[0]["function"]
    if choice["finish_reason"] == "tool_calls":
        choice["finish_reason"] = "function_call"
    return len(calls) - 1


def chat_tool_call(item: Mapping[str, Any]) -> dict[str, Any]:
    """A ``function_call`` output item as a chat ``tool_calls`` entry.

    Raises:
        UpstreamProtocolError: the item has neither ``call_id`` nor ``id``.
    """
    call_id = call_id_of(item)
    if call_id is None:
        raise UpstreamProtocolError("upstream function_call item has no call_id")
    name = item.get("name")
    arguments = item.get("arguments")
    return {
        "id": call_id,
        "type": "function",
        "function": {
            "name": name if isinstance(name, str) else "",
            "arguments": arguments if isinstance(arguments, str) else "",
        },
    }


def events_from_response(resp: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The events that stream a complete Response object to a streaming client.

    Some servers answer a stream request with one JSON Response. Feeding these
    events to a :class:`~goose_proxy.translate.StreamTranslator` (then calling
    ``finish``) produces the same chunks a stream would have: the translator
    shows everything in the terminal response's ``output`` that no delta showed.
    A failed response becomes ``response.failed`` (raised before commit).

    Raises:
        UpstreamNotAResponse: ``resp`` is not a finished Response object (see
            :func:`check_finished`).
    """
    if check_finished(resp) is not None:
        etype = "response.failed"
    elif resp.get("status") == "incomplete":
        etype = "response.incomplete"
    else:
        etype = "response.completed"
    return [{"type": etype, "response": dict(resp)}]
