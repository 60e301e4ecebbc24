"""A passthrough answer in the shapes a strict Responses client reads (lightspeed).

Goose parses a Responses answer strictly (block/goose,
``crates/goose/src/providers/formats/openai/responses.rs``): it skips a stream
event whose type it does not know, but an event of a type it knows whose
payload does not fit its types fails the whole turn, and so does such an item
in a JSON answer's ``output``. Lightspeed Stack relays shapes that do not fit:

- output items of the backend's own tool work (``file_search_call`` of its
  RAG, ``mcp_call``, ``mcp_list_tools``, ``web_search_call`` …): Goose knows
  only ``message``, ``function_call`` and ``reasoning``;
- ``reasoning_text`` content parts (Llama Stack streams a reasoning model's
  thoughts so): Goose knows only ``output_text``, ``refusal`` (and ``tool_call``);
- the safety shield's answer: a message without ``id`` and ``status``, in some
  releases with a string ``content``;
- the Response's ``conversation`` as a bare id string, where OpenAI's type (and
  the openai SDK's, which warns when it meets the string) is ``{"id": …}``.

:class:`AnswerAdapter` leaves out, or mends, those; nothing else changes. A
function returns the very object it was given when it has nothing to change
(so that the caller can relay the original bytes), and never changes the
objects it is given. Pure: dicts in, dicts out.
"""

from __future__ import annotations

import re
from typing import Any, Optional

from .response import events_from_response

#: output item types a Responses client knows (the rest is the backend's own work)
CLIENT_ITEMS = frozenset({"message", "function_call", "reasoning"})
#: content part types a Responses client knows in a message
CLIENT_PARTS = frozenset({"output_text", "refusal"})
ITEM_EVENTS = frozenset({"response.output_item.added", "response.output_item.done"})
PART_EVENTS = frozenset({"response.content_part.added", "response.content_part.done"})
#: events that carry the Response object (with its ``output``)
RESPONSE_EVENTS = frozenset(
    {
        "response.created",
        "response.in_progress",
        "response.queued",
        "response.completed",
        "response.incomplete",
        "response.failed",
    }
)
#: a failure reported in the stream (``response.failed`` is among RESPONSE_EVENTS)
ERROR_EVENTS = frozenset({"error"})
#: argument events: of a client's call, or of the backend's own search or MCP call
ARGUMENT_EVENTS = frozenset(
    {"response.function_call_arguments.delta", "response.function_call_arguments.done"}
)
#: an event's own ``item_id`` in its unparsed JSON (see AnswerAdapter.names_a_call)
_ITEM_ID = re.compile(r'"item_id"\s*:\s*"([^"\\]*)"')
#: every event type :meth:`AnswerAdapter.event` may change or leave out
ADAPTED_EVENTS = ITEM_EVENTS | PART_EVENTS | RESPONSE_EVENTS | ERROR_EVENTS | ARGUMENT_EVENTS


def item_id_in(data: str) -> Optional[str]:
    """An event's own ``item_id``, read from its unparsed JSON ``data`` (text in
    a string is escaped, so only the event's own key matches); None if none."""
    m = _ITEM_ID.search(data)
    return m.group(1) if m is not None else None


#: output indices an adapter keeps track of (beyond that, items go out where announced)
PLACES = 10_000

#: a message's missing ``status``, from its response's status
_STATUS_OF_RESPONSE = {
    "queued": "in_progress",
    "in_progress": "in_progress",
    "completed": "completed",
    "incomplete": "incomplete",
    "failed": "incomplete",
    "cancelled": "incomplete",
}
#: … or, without one, from the event that carries it (else ``completed``)
_STATUS_OF_EVENT = {
    "response.created": "in_progress",
    "response.in_progress": "in_progress",
    "response.queued": "in_progress",
    "response.incomplete": "incomplete",
    "response.failed": "incomplete",
    "response.output_item.added": "in_progress",
}


def _is_a(value: Any, kinds: frozenset[str]) -> bool:
    """``value`` is an object whose ``type`` is one of ``kinds``."""
    if not isinstance(value, dict):
        return False
    kind = value.get("type")
    return isinstance(kind, str) and kind in kinds


class AnswerAdapter:
    """Adapts the events of one streamed response (:meth:`event`), or one Response
    object (:meth:`response`; :func:`adapt_response` for a JSON answer).

    A message that lacks an ``id`` gets ``msg_<response id>_<output index>``
    (the response id without its ``resp_``, from the first Response object
    seen): the same in ``output_item.added``, ``.done`` and the terminal
    event's ``output``, as the openai SDK's stream helper requires.

    Argument events that name an item no ``function_call`` item announced
    are left out: Llama Stack streams the arguments of its own searches (and
    of an MCP call, after its first piece) as ``function_call_arguments``
    events of items it never announces (or that are left out here, as the
    backend's own work), at the output index of a client's call or of
    nothing; the SDK's stream helper would add them to that call's
    arguments, or fail for want of an item at that index.

    An item announced at an output index a kept item already holds goes out
    at the next index after the highest one held, and so do all the events
    that name it by ``item_id``: Llama Stack announces every client call of a
    model turn at one index, which the SDK's stream helper refuses
    ("Duplicate response output index"; its 2.x releases showed the later
    calls' argument deltas in the first call's snapshot).
    """

    def __init__(self) -> None:
        self._rid: Optional[str] = None
        self._calls: set[str] = set()  # ids of the function_call items announced
        self._held: dict[int, str] = {}  # output index -> the id of the kept item there
        self._top = -1  # the highest index held
        #: item id -> the output index it goes out at, for items moved off a taken one
        self.moved: dict[str, int] = {}

    def relocates(self, data: str) -> bool:
        """Whether the unparsed ``data`` of an event names (by its own
        ``item_id``) an item that goes out at another output index."""
        if not self.moved:
            return False
        return item_id_in(data) in self.moved

    def names_a_call(self, data: str) -> bool:
        """Whether the unparsed ``data`` of an argument event has the ``item_id``
        of a call announced so far: then it goes as it came, unparsed (a call's
        arguments are many small deltas). Text in a string is escaped, so only
        the event's own ``item_id`` key matches."""
        item_id = item_id_in(data)
        return item_id in self._calls and item_id not in self.moved

    def event(self, event: dict[str, Any], kind: Optional[str] = None) -> Optional[dict[str, Any]]:
        """``event`` (of type ``kind``, default its ``type``) adapted: None to leave it
        out, ``event`` itself when it is fine as it is."""
        if kind is None:
            kind = event.get("type")
        if not isinstance(kind, str):
            return event
        if kind in ARGUMENT_EVENTS:
            item_id = event.get("item_id")
            if isinstance(item_id, str) and item_id not in self._calls:
                return None
            return self._relocated(event, item_id)
        if kind in ITEM_EVENTS:
            item = event.get("item")
            if not isinstance(item, dict) or not _is_a(item, CLIENT_ITEMS):
                return None  # the backend's own tool work
            index = event.get("output_index")
            item_id = item.get("id")
            if isinstance(item_id, str):
                if item.get("type") == "function_call":
                    self._calls.add(item_id)
                if kind == "response.output_item.added":
                    self._place(item_id, index)
            mended = self._item(item, index, _STATUS_OF_EVENT.get(kind))
            out = event if mended is item else {**event, "item": mended}
            return self._relocated(out, item_id)
        if kind in PART_EVENTS:
            if not _is_a(event.get("part"), CLIENT_PARTS):
                return None
            return self._relocated(event, event.get("item_id"))
        if kind in RESPONSE_EVENTS:
            resp = event.get("response")
            if not isinstance(resp, dict):
                return event
            mended = self.response(resp, kind)
            out = event if mended is resp else {**event, "response": mended}
            if kind == "response.failed" and "error" not in out:
                # Goose reads the failure from the event's own "error"
                failure = resp.get("error")
                out = {**out, "error": failure if isinstance(failure, dict) else {}}
            return out
        if kind in ERROR_EVENTS and not isinstance(event.get("error"), dict):
            # the flat error event (Llama Stack's, OpenAI's): Goose needs the object
            inner = {k: event[k] for k in ("code", "message", "param") if k in event}
            return {**event, "error": inner}
        return self._relocated(event, event.get("item_id"))

    def _place(self, item_id: str, index: Any) -> None:
        """Where the item ``item_id`` announced at ``index`` goes out: there, or,
        when a kept item already holds that index, at the next one after the
        highest held (see the class)."""
        if not isinstance(index, int) or isinstance(index, bool) or len(self._held) >= PLACES:
            return
        holder = self._held.get(index)
        if holder is None:
            self._held[index] = item_id
            self._top = max(self._top, index)
        elif holder != item_id and item_id not in self.moved:
            self._top += 1
            self._held[self._top] = item_id
            self.moved[item_id] = self._top

    def _relocated(self, event: dict[str, Any], item_id: Any) -> dict[str, Any]:
        """``event`` at the output index its item ``item_id`` goes out at."""
        if not self.moved or not isinstance(item_id, str) or item_id not in self.moved:
            return event
        if "output_index" not in event:
            return event
        return {**event, "output_index": self.moved[item_id]}

    def response(self, resp: dict[str, Any], kind: str = "") -> dict[str, Any]:
        """``resp`` (a Response object, carried by an event of type ``kind``) with only
        the output items a client knows, messages mended, a string
        ``conversation`` as ``{"id": …}``; ``resp`` itself when it is fine as it is."""
        rid = resp.get("id")
        if self._rid is None and isinstance(rid, str):
            self._rid = rid
        mends: dict[str, Any] = {}
        conversation = resp.get("conversation")
        if isinstance(conversation, str):  # Lightspeed's; the SDK's type is {"id": …}
            mends["conversation"] = {"id": conversation}
        output = resp.get("output")
        if isinstance(output, list):
            status = resp.get("status")
            default = (
                _STATUS_OF_RESPONSE.get(status) if isinstance(status, str) else None
            ) or _STATUS_OF_EVENT.get(kind)
            kept: list[Any] = []
            for index, item in enumerate(output):
                if _is_a(item, CLIENT_ITEMS):
                    kept.append(self._item(item, index, default))
            if len(kept) != len(output) or any(a is not b for a, b in zip(kept, output)):
                mends["output"] = kept
        return {**resp, **mends} if mends else resp

    def _item(self, item: dict[str, Any], index: Any, status: Optional[str]) -> dict[str, Any]:
        """A client's ``item`` (at ``index``), a message mended: an ``id`` and a
        ``status`` (``status``, default ``completed``) where it has none, a string
        ``content`` as one ``output_text`` part, parts of other types left out."""
        if item.get("type") != "message":
            return item
        mends: dict[str, Any] = {}
        if not isinstance(item.get("id"), str):
            mends["id"] = self._made_up_id(index)
        if not isinstance(item.get("status"), str):
            mends["status"] = status or "completed"
        content = item.get("content")
        if isinstance(content, str):
            mends["content"] = [{"type": "output_text", "text": content, "annotations": []}]
        elif isinstance(content, list) and not all(_is_a(p, CLIENT_PARTS) for p in content):
            mends["content"] = [p for p in content if _is_a(p, CLIENT_PARTS)]
        return {**item, **mends} if mends else item

    def _made_up_id(self, index: Any) -> str:
        at = index if isinstance(index, int) and not isinstance(index, bool) else 0
        rid = self._rid
        if not rid:
            return f"msg_{at}"
        return f"msg_{rid[5:] if rid.startswith('resp_') else rid}_{at}"


def adapt_response(resp: dict[str, Any]) -> dict[str, Any]:
    """A JSON answer (a Response object) adapted (see :class:`AnswerAdapter`);
    ``resp`` itself when it is fine as it is."""
    return AnswerAdapter().response(resp)


#: the field of a message part that holds its text
_PART_TEXT = {"output_text": "text", "refusal": "refusal"}


def stream_of_response(resp: dict[str, Any]) -> list[dict[str, Any]]:
    """The Responses stream events of a whole Response object, as a backend that
    streams would send them: for a client that asked for a stream and got the
    answer as one JSON object (which the openai SDK and Goose would read as an
    empty stream).

    ``response.created`` (the response in progress, no output yet); for each
    output item its ``output_item.added`` (a message without content, a call
    without arguments), a message's text and refusal parts as ``added``, one
    delta, ``done`` and ``content_part.done``, a call's arguments as one delta
    and ``done``, then ``output_item.done`` with the whole item; then the
    terminal event :func:`events_from_response` gives it (``response.completed``,
    ``.incomplete`` or ``.failed``). Numbered by ``sequence_number`` from 0.

    Raises:
        UpstreamNotAResponse: ``resp`` is not a finished Response object.
    """
    terminal = events_from_response(resp)[-1]["type"]
    events: list[dict[str, Any]] = []

    def emit(etype: str, **fields: Any) -> None:
        events.append({"type": etype, "sequence_number": len(events), **fields})

    emit("response.created", response={**resp, "status": "in_progress", "output": []})
    output = resp.get("output")
    for i, item in enumerate(output if isinstance(output, list) else ()):
        if not isinstance(item, dict):
            continue
        item_id = item.get("id") if isinstance(item.get("id"), str) else f"item_{i}"
        itype = item.get("type")
        started = dict(item)
        if itype == "message":
            started.update(status="in_progress", content=[])
        elif itype == "function_call":
            started.update(status="in_progress", arguments="")
        emit("response.output_item.added", output_index=i, item=started)
        where = {"item_id": item_id, "output_index": i}
        content = item.get("content") if itype == "message" else None
        for j, part in enumerate(content if isinstance(content, list) else ()):
            if not isinstance(part, dict):
                continue
            ptype = part.get("type")
            field = _PART_TEXT.get(ptype) if isinstance(ptype, str) else None
            value = part.get(field) if field is not None else None
            if field is None or not isinstance(value, str):
                # added and done as it is, so that no content_index is missing
                emit("response.content_part.added", **where, content_index=j, part=part)
                emit("response.content_part.done", **where, content_index=j, part=part)
                continue
            kind = "output_text" if field == "text" else "refusal"
            empty = {**part, field: ""}
            # (a text delta and its done event carry logprobs, as OpenAI's do)
            extra = {"logprobs": part.get("logprobs") or []} if kind == "output_text" else {}
            emit("response.content_part.added", **where, content_index=j, part=empty)
            emit(f"response.{kind}.delta", **where, content_index=j, delta=value, **extra)
            emit(f"response.{kind}.done", **where, content_index=j, **{field: value}, **extra)
            emit("response.content_part.done", **where, content_index=j, part=part)
        arguments = item.get("arguments") if itype == "function_call" else None
        if isinstance(arguments, str):
            emit("response.function_call_arguments.delta", **where, delta=arguments)
            emit("response.function_call_arguments.done", **where, arguments=arguments)
        emit("response.output_item.done", output_index=i, item=item)
    emit(terminal, response=resp)
    return events
