"""Responses API events and objects as bytes, framed like the real backends.

Theory of operation
-------------------
Every event type has a fixed JSON shape in which only a few values change per
request (ids, sequence number, a delta). Each shape is written once as a dict
whose variable values are *holes* (``hole("seq")``), dumped once per style with
that style's separators and compiled into a :class:`Template`: the literal text
between the holes plus the holes' names. Per request the :class:`EventWriter`
fills the holes with values that are already JSON text, so emitting an event
costs one ``str.join`` instead of a ``json.dumps`` of the whole object. The big
response object (sent three times per stream) is itself a template whose
rendered text fills the ``response`` hole of the envelope events.

Two styles:

- ``lightspeed`` (Lightspeed Stack 0.7.1, ``lcs_stream_*.sse``): an ``event:``
  line before each ``data:`` line, JSON with spaces after ``,`` and ``:``, the
  Lightspeed extras (``conversation``, ``available_quotas``, ``output_text``) and
  a final ``data: [DONE]``. No ``response.output_text.done`` event.
- ``openai`` (a plain Responses server, ``ogx_stream_text.sse``): ``data:``
  lines only, compact JSON, no extras, no ``[DONE]``; it does send the
  ``*.done`` events of text, refusal and reasoning parts.

Pure: no I/O.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from json.encoder import encode_basestring_ascii
from typing import Any

STYLES = ("lightspeed", "openai")

_HOLE_RE = re.compile(r'"\\u0000([A-Za-z_]+)\\u0000"')

Shape = list[tuple[str, Any]]
#: One SSE event's bytes tagged with its type, so a stream can be cut at an event.
Frame = tuple[str, bytes]


def hole(name: str) -> str:
    """A placeholder for ``name``; NUL cannot occur in the templates' literal text."""
    return f"\x00{name}\x00"


def jstr(text: str) -> str:
    """``text`` as a JSON string literal (ASCII-escaped, like ``json.dumps``)."""
    return encode_basestring_ascii(text)


class Template:
    """JSON text with named holes, compiled once and filled many times."""

    __slots__ = ("_names", "_parts")

    def __init__(
        self,
        shape: Shape,
        separators: tuple[str, str],
        prefix: str = "",
        suffix: str = "",
    ) -> None:
        text = json.dumps(dict(shape), separators=separators)
        pieces = _HOLE_RE.split(text)
        parts = pieces[0::2]
        parts[0] = prefix + parts[0]
        parts[-1] = parts[-1] + suffix
        self._parts: tuple[str, ...] = tuple(parts)
        self._names: tuple[str, ...] = tuple(pieces[1::2])

    @property
    def names(self) -> tuple[str, ...]:
        return self._names

    def render(self, values: Mapping[str, str]) -> str:
        """Fill every hole with its value, which must already be JSON text.

        Raises ``KeyError`` for a missing value.
        """
        parts = self._parts
        out = [parts[0]]
        for i, name in enumerate(self._names, 1):
            out.append(values[name])
            out.append(parts[i])
        return "".join(out)


# --- shapes -------------------------------------------------------------

_TEXT_FORMAT = {"format": {"type": "text"}, "verbosity": "medium"}

# Keys of the streamed response object in the order of lcs_stream_text.sse.
_LCS_RESPONSE: Shape = [
    ("background", False),
    ("created_at", hole("created_at")),
    ("frequency_penalty", 0.0),
    ("id", hole("resp_id")),
    ("model", hole("model")),
    ("object", "response"),
    ("output", hole("output")),
    ("parallel_tool_calls", hole("parallel_tool_calls")),
    ("status", hole("status")),
    ("temperature", hole("temperature")),
    ("text", _TEXT_FORMAT),
    ("top_p", 1.0),
    ("top_logprobs", 0),
    ("tools", hole("tools")),
    ("tool_choice", hole("tool_choice")),
    ("truncation", "disabled"),
    ("instructions", hole("instructions")),
    ("max_tool_calls", 30),
    ("max_output_tokens", hole("max_output_tokens")),
    ("service_tier", "default"),
    ("presence_penalty", 0.0),
    ("store", hole("store")),
    ("completed_at", hole("completed_at")),
    ("error", hole("error")),
    ("incomplete_details", hole("incomplete_details")),
    ("previous_response_id", None),
    ("prompt_cache_key", None),
    ("prompt", None),
    ("usage", hole("usage")),
    ("skills", None),
    ("reasoning", hole("reasoning")),
    ("metadata", hole("metadata")),
    ("safety_identifier", None),
    ("conversation", hole("conversation")),
]
_LCS_EXTRAS: Shape = [("available_quotas", {}), ("output_text", hole("output_text"))]

# Keys of the non-streamed Response in the order of lcs_nonstream_text.json.
_LCS_JSON_ORDER = (
    "created_at completed_at error id model object output parallel_tool_calls "
    "previous_response_id prompt status temperature text top_p tools tool_choice truncation "
    "usage instructions max_tool_calls reasoning max_output_tokens safety_identifier metadata "
    "store conversation"
).split()

# Keys of the response object in the order of ogx_stream_text.sse.
_OGX_ORDER = (
    "background created_at completed_at error frequency_penalty id incomplete_details model "
    "object output parallel_tool_calls previous_response_id prompt_cache_key prompt status "
    "temperature text top_p top_logprobs tools tool_choice truncation usage instructions skills "
    "max_tool_calls reasoning max_output_tokens service_tier metadata presence_penalty store "
    "safety_identifier"
).split()


def _reorder(shape: Shape, order: list[str]) -> Shape:
    table = dict(shape)
    return [(key, table[key]) for key in order]


_SEQ = ("sequence_number", hole("seq"))

# Event shapes, field order as in the captures. "type" is filled in per event.
_ENVELOPE: Shape = [("response", hole("response")), _SEQ]
_ITEM: Shape = [
    ("response_id", hole("resp_id")),
    ("item", hole("item")),
    ("output_index", hole("index")),
    _SEQ,
]
_PART: Shape = [
    ("content_index", hole("part_index")),
    ("response_id", hole("resp_id")),
    ("item_id", hole("item_id")),
    ("output_index", hole("index")),
    ("part", hole("part")),
    _SEQ,
]
_TEXT_DELTA: Shape = [
    ("content_index", hole("part_index")),
    ("delta", hole("delta")),
    ("item_id", hole("item_id")),
    ("logprobs", []),
    ("output_index", hole("index")),
    _SEQ,
]
_PLAIN_DELTA: Shape = [
    ("content_index", hole("part_index")),
    ("delta", hole("delta")),
    ("item_id", hole("item_id")),
    ("output_index", hole("index")),
    _SEQ,
]
_TEXT_DONE: Shape = [
    ("content_index", hole("part_index")),
    ("item_id", hole("item_id")),
    ("logprobs", []),
    ("output_index", hole("index")),
    _SEQ,
    ("text", hole("text")),
]
_REFUSAL_DONE: Shape = [
    ("content_index", hole("part_index")),
    ("item_id", hole("item_id")),
    ("output_index", hole("index")),
    ("refusal", hole("text")),
    _SEQ,
]
_REASONING_DONE: Shape = [
    ("content_index", hole("part_index")),
    ("item_id", hole("item_id")),
    ("output_index", hole("index")),
    _SEQ,
    ("text", hole("text")),
]
_ARGS_DELTA: Shape = [
    ("delta", hole("delta")),
    ("item_id", hole("item_id")),
    ("output_index", hole("index")),
    _SEQ,
]
_ARGS_DONE: Shape = [
    ("arguments", hole("arguments")),
    ("item_id", hole("item_id")),
    ("output_index", hole("index")),
    _SEQ,
]
_ERROR: Shape = [
    ("code", hole("code")),
    ("message", hole("message")),
    ("param", None),
    _SEQ,
]

EVENT_SHAPES: dict[str, Shape] = {
    "response.created": _ENVELOPE,
    "response.in_progress": _ENVELOPE,
    "response.completed": _ENVELOPE,
    "response.incomplete": _ENVELOPE,
    "response.failed": _ENVELOPE,
    "response.output_item.added": _ITEM,
    "response.output_item.done": _ITEM,
    "response.content_part.added": _PART,
    "response.content_part.done": _PART,
    "response.output_text.delta": _TEXT_DELTA,
    "response.output_text.done": _TEXT_DONE,
    "response.refusal.delta": _PLAIN_DELTA,
    "response.refusal.done": _REFUSAL_DONE,
    "response.reasoning_text.delta": _PLAIN_DELTA,
    "response.reasoning_text.done": _REASONING_DONE,
    "response.function_call_arguments.delta": _ARGS_DELTA,
    "response.function_call_arguments.done": _ARGS_DONE,
    "error": _ERROR,
}

#: Content kinds whose deltas the writer streams: delta event, done event.
TEXT_EVENTS = {
    "output_text": ("response.output_text.delta", "response.output_text.done"),
    "refusal": ("response.refusal.delta", "response.refusal.done"),
    "reasoning_text": ("response.reasoning_text.delta", "response.reasoning_text.done"),
}


class Style:
    """The compiled templates and framing rules of one backend style."""

    def __init__(self, name: str) -> None:
        if name not in STYLES:
            raise ValueError(f"unknown style {name!r} (expected one of {', '.join(STYLES)})")
        self.name = name
        lightspeed = name == "lightspeed"
        self.lightspeed = lightspeed
        self.separators: tuple[str, str] = (", ", ": ") if lightspeed else (",", ":")
        #: Sent after the terminal event; empty when the style has none.
        self.done_marker = b"data: [DONE]\n\n" if lightspeed else b""
        #: Whether ``response.output_text.done`` (and the refusal/reasoning
        #: ``.done``) events are sent; Lightspeed 0.7.1 sends none.
        self.text_done_events = not lightspeed
        self.frames: dict[str, Template] = {}
        for etype, shape in EVENT_SHAPES.items():
            prefix = f"event: {etype}\ndata: " if lightspeed else "data: "
            self.frames[etype] = Template(
                [*shape, ("type", etype)], self.separators, prefix, "\n\n"
            )
        if lightspeed:
            start = _LCS_RESPONSE
            full = _LCS_RESPONSE + _LCS_EXTRAS
            compact = _reorder(_LCS_RESPONSE, _LCS_JSON_ORDER) + _LCS_EXTRAS
        else:
            start = full = _reorder(_LCS_RESPONSE, _OGX_ORDER)
            compact = start
        #: The response object in ``response.created``.
        self.response_start = Template(start, self.separators)
        #: The response object in every later envelope event.
        self.response_full = Template(full, self.separators)
        #: The non-streamed Response (compact JSON in both styles).
        self.response_json = Template(compact, (",", ":"))

    def dumps(self, obj: Any) -> str:
        """``obj`` as JSON text with this style's separators."""
        return json.dumps(obj, separators=self.separators)


_STYLES: dict[str, Style] = {}


def get_style(name: str) -> Style:
    """The compiled :class:`Style` called ``name`` (cached). Raises ``ValueError``."""
    style = _STYLES.get(name)
    if style is None:
        style = _STYLES[name] = Style(name)
    return style


class EventWriter:
    """Renders one response's events in order, numbering them.

    ``common`` holds the JSON text of the response object's per-request values
    (``resp_id``, ``created_at``, ``model``, ``tools``, …; see
    :func:`devbackend.scenarios.response_values`).
    """

    def __init__(self, style: Style, common: Mapping[str, str]) -> None:
        self.style = style
        self.common = dict(common)
        self.seq = 0
        self._resp_id = self.common["resp_id"]
        self._frames = style.frames
        self._ids: dict[str, str] = {}

    def _emit(self, etype: str, values: dict[str, str]) -> Frame:
        values["seq"] = str(self.seq)
        self.seq += 1
        return etype, self._frames[etype].render(values).encode("ascii")

    def _id(self, item_id: str) -> str:
        enc = self._ids.get(item_id)
        if enc is None:
            enc = self._ids[item_id] = jstr(item_id)
        return enc

    def response(self, etype: str, **phase: str) -> Frame:
        """An envelope event (``response.created``, ``.completed``, …).

        ``phase`` gives the JSON text of ``status``, ``output``, ``usage``,
        ``completed_at``, ``error``, ``incomplete_details`` and
        ``output_text``; missing ones are in-progress defaults.
        """
        values = dict(self.common)
        values.update(_IN_PROGRESS)
        values.update(phase)
        template = (
            self.style.response_start if etype == "response.created" else self.style.response_full
        )
        return self._emit(etype, {"response": template.render(values)})

    def item(self, etype: str, index: int, item: Any) -> Frame:
        """``response.output_item.added`` / ``.done``."""
        return self._emit(
            etype,
            {"resp_id": self._resp_id, "item": self.style.dumps(item), "index": str(index)},
        )

    def part(self, etype: str, index: int, item_id: str, part: Any, part_index: int = 0) -> Frame:
        """``response.content_part.added`` / ``.done``."""
        return self._emit(
            etype,
            {
                "resp_id": self._resp_id,
                "item_id": self._id(item_id),
                "index": str(index),
                "part_index": str(part_index),
                "part": self.style.dumps(part),
            },
        )

    def text_delta(
        self, kind: str, index: int, item_id: str, delta: str, part_index: int = 0
    ) -> Frame:
        """A delta of an ``output_text``, ``refusal`` or ``reasoning_text`` part."""
        return self._emit(
            TEXT_EVENTS[kind][0],
            {
                "item_id": self._id(item_id),
                "index": str(index),
                "part_index": str(part_index),
                "delta": jstr(delta),
            },
        )

    def text_done(
        self, kind: str, index: int, item_id: str, text: str, part_index: int = 0
    ) -> Frame:
        """The ``.done`` event of a text, refusal or reasoning part."""
        return self._emit(
            TEXT_EVENTS[kind][1],
            {
                "item_id": self._id(item_id),
                "index": str(index),
                "part_index": str(part_index),
                "text": jstr(text),
            },
        )

    def args_delta(self, index: int, item_id: str, delta: str) -> Frame:
        return self._emit(
            "response.function_call_arguments.delta",
            {"item_id": self._id(item_id), "index": str(index), "delta": jstr(delta)},
        )

    def args_done(self, index: int, item_id: str, arguments: str) -> Frame:
        return self._emit(
            "response.function_call_arguments.done",
            {"item_id": self._id(item_id), "index": str(index), "arguments": jstr(arguments)},
        )

    def error(self, code: str, message: str) -> Frame:
        """A flat ``error`` event (``{"type": "error", "code", "message", …}``)."""
        return self._emit("error", {"code": jstr(code), "message": jstr(message)})


_IN_PROGRESS = {
    "status": '"in_progress"',
    "output": "[]",
    "usage": "null",
    "completed_at": "null",
    "error": "null",
    "incomplete_details": "null",
    "output_text": '""',
}


def render_response_json(style: Style, common: Mapping[str, str], **phase: str) -> bytes:
    """The non-streamed Response object; ``phase`` as in :meth:`EventWriter.response`."""
    values = dict(common)
    values.update(_IN_PROGRESS)
    values.update(phase)
    return style.response_json.render(values).encode("ascii")
