"""Backend flavours and the knobs of the request translation.

A *flavour* says what a Responses server accepts. ``"lightspeed"`` (Lightspeed
Stack 0.7.1) answers 422 to any body field outside :data:`LIGHTSPEED_FIELDS`,
picks the model itself when ``model`` is ``""``, and makes an extra LLM call
per request unless ``generate_topic_summary`` is false. ``"openai"`` is a plain
Responses server (OpenAI, vLLM, Llama Stack/OGX): every mapped field is sent
and the client's model is forwarded. ``extra_body`` is merged last, over
everything, in both flavours (an object one level deep: :func:`apply_extras`).

Headers (``X-LCS-Merge-Server-Tools``) are the HTTP layer's business, not ours.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Optional

from goose_proxy.errors import InvalidRequest, UnsupportedParameter

from .messages import keeps_system_messages, texts_of

__all__ = [
    "FLAVORS",
    "LIGHTSPEED_EXTRAS",
    "LIGHTSPEED_FIELDS",
    "SYSTEM_MESSAGE_MODES",
    "TranslateOptions",
    "apply_extras",
    "prepare_passthrough",
    "upstream_model",
]

FLAVORS = ("lightspeed", "openai")
SYSTEM_MESSAGE_MODES = ("drop", "instructions", "input")

#: the request fields Lightspeed Stack 0.7.1 accepts; anything else is a 422
LIGHTSPEED_FIELDS: frozenset[str] = frozenset(
    {
        "input", "model", "conversation", "include", "instructions", "max_infer_iters",
        "max_output_tokens", "max_tool_calls", "metadata", "parallel_tool_calls",
        "previous_response_id", "prompt", "reasoning", "safety_identifier", "store",
        "stream", "temperature", "text", "tool_choice", "tools", "generate_topic_summary",
        "shield_ids", "solr",
    }
)  # fmt: skip

#: body fields the lightspeed flavour adds unless ``extra_body`` overrides them
LIGHTSPEED_EXTRAS: Mapping[str, Any] = {"generate_topic_summary": False}


@dataclass(frozen=True)
class TranslateOptions:
    """How to shape upstream bodies.

    ``model``: None picks the flavour default (lightspeed: ``""``, letting the
    backend choose; openai: the client's model); ``"passthrough"`` always
    forwards the client's model; any other string (``""`` included) is sent as
    the model.

    ``system_messages``: ``"drop"`` (the lightspeed flavour's default:
    Lightspeed has its own system prompt and ``instructions`` would replace
    it; kept as for ``"input"`` when the newest user message says "in the
    system prompt", see :mod:`~goose_proxy.translate.messages`),
    ``"instructions"`` (joined with a blank line into ``instructions``) or
    ``"input"`` (kept in place; the openai flavour's default: a plain
    Responses server has no prompt of its own). ``""`` (the default) picks
    the flavour's; after construction it holds the mode that applies.

    Raises:
        ValueError: an unknown flavour or system message mode (a config bug).
    """

    flavor: str = "lightspeed"
    model: Optional[str] = None
    system_messages: str = ""
    extra_body: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.flavor not in FLAVORS:
            raise ValueError(f"flavor must be one of {FLAVORS}, not {self.flavor!r}")
        if not self.system_messages:
            mode = "drop" if self.flavor == "lightspeed" else "input"
            object.__setattr__(self, "system_messages", mode)
        if self.system_messages not in SYSTEM_MESSAGE_MODES:
            raise ValueError(
                f"system_messages must be one of {SYSTEM_MESSAGE_MODES}, "
                f"not {self.system_messages!r}"
            )


def upstream_model(opts: TranslateOptions, client_model: Optional[str]) -> str:
    """The model to send upstream for a chat request.

    Raises:
        InvalidRequest: the model must come from the client and it sent none.
    """
    fixed = opts.model
    if fixed is None and opts.flavor == "lightspeed":
        return ""
    if fixed is not None and fixed != "passthrough":
        return fixed
    if not client_model:  # (no backend serves a model named "")
        raise InvalidRequest("model: required", param="model")
    return client_model


def apply_extras(body: dict[str, Any], opts: TranslateOptions) -> None:
    """Add the flavour's extra fields, then ``opts.extra_body`` over everything (in
    place): its values replace the request's, but an object merges into an
    object of the request one level deep, so that ``reasoning = {summary =
    "auto"}`` keeps the client's ``effort`` (it took the whole object)."""
    if opts.flavor == "lightspeed":
        for key, value in LIGHTSPEED_EXTRAS.items():
            body.setdefault(key, value)
    for key, value in opts.extra_body.items():
        mine = body.get(key)
        if isinstance(value, dict) and isinstance(mine, dict):
            body[key] = {**mine, **value}
        else:
            body[key] = value


def prepare_passthrough(
    req: dict[str, Any], opts: TranslateOptions
) -> tuple[dict[str, Any], list[str]]:
    """The body for ``POST /v1/responses``: the client's, shaped for the flavour.

    A shallow copy of ``req``; ``model`` follows the same rule as for chat
    requests (:func:`upstream_model`: under the lightspeed flavour the backend
    chooses, since Lightspeed does not know the gpt-5/o-series names Goose sends
    to this path); under the lightspeed flavour the fields Lightspeed would
    answer 422 to are dropped and ``generate_topic_summary: false`` is added
    when absent, a ``conversation`` object (``{"id": …}``) goes as its id;
    system and developer items in ``input`` follow
    ``system_messages`` as chat messages do; ``extra_body`` is merged last.
    Everything else is forwarded
    unchanged: the backend validates. Returns the body and what was dropped:
    the client's keys, then the system items ``drop`` left out
    (``input[0] (system)``).

    A client that does not stream gets a stream asked for on its behalf (the
    proxy collects it): a non-streamed answer's head comes only once the
    whole answer was generated, which ``backend.timeout`` would cut.

    Raises:
        InvalidRequest: ``req`` is not a JSON object, or a model is required and
            absent (a stored ``prompt`` may name the model: then none is sent).
        UnsupportedParameter: ``background: true`` without ``stream: true`` under
            the openai flavour (its answer could not be fetched through the proxy).
    """
    if not isinstance(req, dict):
        raise InvalidRequest("request body must be a JSON object")
    model = req.get("model")
    body = dict(req)
    try:
        body["model"] = upstream_model(opts, model if isinstance(model, str) else None)
    except InvalidRequest:
        if model not in (None, "") or "prompt" not in req:
            raise
        body.pop("model", None)  # the stored prompt's model (the Responses API allows it)
    dropped: list[str] = []
    if opts.flavor == "lightspeed":
        left_out = [k for k in body if k not in LIGHTSPEED_FIELDS]
        dropped = sorted(k for k in left_out if body[k] is not None)  # (null: as absent)
        for k in left_out:
            del body[k]
        conversation = body.get("conversation")
        if isinstance(conversation, dict) and isinstance(conversation.get("id"), str):
            # OpenAI's object form, as the adapted answers carry it (passthrough.py):
            # back to the id string Lightspeed sends and takes
            body["conversation"] = conversation["id"]
        # as for chat: Lightspeed reports failures precisely only in a stream
        # (a context overflow is a bare 500 without one); the proxy collects
        # it for a client that did not ask to stream
        body["stream"] = True
    elif body.get("stream") is not True:
        if body.get("background") is True:
            raise UnsupportedParameter(
                "background responses are not supported unless streamed: goose-proxy "
                "does not serve GET /v1/responses/{id}, so their answer could not be fetched",
                param="background",
            )
        body["stream"] = True  # its head at once (see above); collected for the client
    # (the openai flavour's default, "input", leaves them as they are)
    _apply_system_messages(body, opts.system_messages, dropped)
    apply_extras(body, opts)
    return body, dropped


def _apply_system_messages(body: dict[str, Any], mode: str, dropped: list[str]) -> None:
    """``[translate] system_messages`` on a passthrough body's ``input`` items, as
    for chat: ``drop`` leaves out system and developer messages (unless the
    newest user message points "in the system prompt", as Goose's compaction
    does, the request is a one-off request to summarize without tools, its
    system prompt holds its task, or nothing else would be left; those with
    text it leaves out are listed in ``dropped``, ``input[0] (system)``),
    ``instructions`` moves their text into ``instructions`` (after the
    client's own; unless nothing else would be left), ``input`` keeps them."""
    items = body.get("input")
    if mode == "input" or not isinstance(items, list):
        return
    if mode == "drop" and keeps_system_messages(items, body.get("tools")):
        return
    kept: list[Any] = []
    texts: list[str] = []
    left_out: list[str] = []
    for i, item in enumerate(items):
        if (
            isinstance(item, dict)
            and item.get("role") in ("system", "developer")
            and item.get("type", "message") == "message"
        ):
            said = [t for t in texts_of(item.get("content")) if t]
            if said:
                texts += said
                left_out.append(f"input[{i}] ({item['role']})")
        else:
            kept.append(item)
    if len(kept) == len(items) or not kept:
        return  # (nothing else would be left: the backend would answer nothing)
    if mode == "drop":
        dropped += left_out
    body["input"] = kept
    if mode == "instructions" and texts:
        own = body.get("instructions")
        body["instructions"] = "\n\n".join([own, *texts] if isinstance(own, str) and own else texts)
