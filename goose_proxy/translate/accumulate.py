"""Build one Response object from a Responses SSE event sequence.

Used when the client wants one JSON answer: the proxy always asks the backend
for a stream (Lightspeed's non-streamed failures are a generic 500, and a
non-streamed answer's head comes only once it was all generated).
Feed every event, then call :meth:`ResponseAccumulator.result` and hand the
object to :func:`~goose_proxy.translate.responses_to_chat`.

The terminal event's ``response`` is the base of the result. Its ``output``
is trusted when it is non-empty, but for a message the stream showed text of
and it left out (Llama Stack leaves a turn's text out of its final output
when the turn calls tools, after streaming it): that is put back, in stream
order; and a message's reasoning and refusal parts the stream showed, which
its final form lacks (Llama Stack streams them as parts of the message and
ends with its ``output_text`` alone). An empty ``output`` is rebuilt from
what the stream carried: each item as ``response.output_item.done`` gave
it, or, for an item that never finished, from its ``.added`` form plus the
text, refusal, reasoning and argument deltas (a ``*.done`` sub-event's full
value wins over the joined deltas). Deltas are kept as lists of pieces and
joined once, so a long answer costs linear time. What is kept is bounded: past
``limit`` characters of deltas and final texts the stream is failed (the
terminal event would carry all of it, and no event may be larger).
"""

from __future__ import annotations

import bisect
from collections.abc import Mapping
from typing import Any, Optional, Union

from goose_proxy.errors import ProxyError, UpstreamAnswerTooLarge, UpstreamProtocolError

from .response import (
    ENDED_EARLY,
    JSON_OBJECT,
    READ_FIELDS,
    event_failure,
    map_usage,
    terminal_status,
)

__all__ = ["ResponseAccumulator"]

Key = Union[str, int]

#: most (messages the stream showed, not in the terminal output) times (output
#: messages not shown under their id) weighed to put the first back: past it
#: the answer is taken as its output says (a real backend loses a few)
LOST_WORK = 100_000

#: the item type each kind of piece belongs to
_ITEM_OF = {"text": "message", "refusal": "message", "reasoning": "reasoning",
            "summary": "reasoning", "args": "function_call"}  # fmt: skip
# event type -> (piece kind, index field) for deltas and their .done counterparts
_DELTAS = {
    "response.output_text.delta": ("text", "content_index"),
    "response.refusal.delta": ("refusal", "content_index"),
    "response.reasoning_text.delta": ("reasoning", "content_index"),
    "response.reasoning_summary_text.delta": ("summary", "summary_index"),
    "response.function_call_arguments.delta": ("args", None),
}
_DONES = {
    "response.output_text.done": ("text", "content_index", "text"),
    "response.refusal.done": ("refusal", "content_index", "refusal"),
    "response.reasoning_text.done": ("reasoning", "content_index", "text"),
    "response.reasoning_summary_text.done": ("summary", "summary_index", "text"),
    "response.function_call_arguments.done": ("args", None, "arguments"),
}


def _message_text(item: Any) -> str:
    """A message item's text and refusals, joined ("" for any other item)."""
    if not isinstance(item, JSON_OBJECT) or item.get("type") != "message":
        return ""
    content = item.get("content")
    if isinstance(content, str):
        return content
    texts = []
    for part in content if isinstance(content, list) else ():
        if isinstance(part, JSON_OBJECT):
            text = part.get("text") if part.get("type") == "output_text" else part.get("refusal")
            if isinstance(text, str):
                texts.append(text)
    return "".join(texts)


def _chars_in(value: Any) -> int:
    """The characters of the strings in ``value`` (a parsed JSON value),
    keys included: what holding it costs, roughly."""
    total = 0
    stack = [value]
    while stack:
        v = stack.pop()
        if isinstance(v, str):
            total += len(v)
        elif isinstance(v, dict):
            total += sum(len(k) for k in v if isinstance(k, str))
            stack.extend(v.values())
        elif isinstance(v, list):
            stack.extend(v)
    return total


def _refuses(item: Any) -> bool:
    """A message item with a refusal part."""
    content = item.get("content") if isinstance(item, JSON_OBJECT) else None
    return isinstance(content, list) and any(
        isinstance(part, JSON_OBJECT) and part.get("type") == "refusal" for part in content
    )


class _Item:
    __slots__ = ("done", "finals", "item", "item_chars", "order", "pieces")

    def __init__(self, order: tuple[int, int]) -> None:
        self.order = order
        self.item: dict[str, Any] = {}
        self.item_chars = 0  # the characters of the strings in ``item`` (kept)
        self.done = False
        self.pieces: dict[tuple[str, int], list[str]] = {}
        self.finals: dict[tuple[str, int], str] = {}

    def settled(self) -> bool:
        """Done, with its type: the done item is the item (its texts and
        deltas, before or after it, are neither kept nor counted)."""
        return self.done and isinstance(self.item.get("type"), str)

    def text(self, kind: str, index: int) -> str:
        final = self.finals.get((kind, index))
        return final if final is not None else "".join(self.pieces.get((kind, index), ()))

    def indices(self, kind: str) -> list[int]:
        keys = {i for k, i in self.pieces if k == kind} | {i for k, i in self.finals if k == kind}
        return sorted(keys)

    def kind(self) -> Optional[str]:
        """The item's type: as announced, else (never announced) what its
        deltas tell; None when neither does."""
        itype = self.item.get("type")
        if itype is None:
            if self.indices("text") or self.indices("refusal"):
                return "message"
            if self.indices("reasoning") or self.indices("summary"):
                return "reasoning"
        return itype if isinstance(itype, str) else None

    def streamed_parts(self) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """The ``reasoning_text`` and ``refusal`` parts of a message, as the stream
        showed them (its deltas and ``.done`` texts), else as its done item has
        them."""
        thoughts = [
            {"type": "reasoning_text", "text": self.text("reasoning", i)}
            for i in self.indices("reasoning")
        ]
        refusals = [
            {"type": "refusal", "refusal": self.text("refusal", i)} for i in self.indices("refusal")
        ]
        if thoughts or refusals or not self.done:
            return thoughts, refusals
        content = self.item.get("content")
        content = content if isinstance(content, list) else []
        parts = [dict(p) for p in content if isinstance(p, JSON_OBJECT)]
        return (
            [p for p in parts if p.get("type") == "reasoning_text"],
            [p for p in parts if p.get("type") == "refusal"],
        )

    def with_streamed_parts(self, item: dict[str, Any]) -> dict[str, Any]:
        """Message ``item`` (a copy, when it changes) with the reasoning and refusal
        parts the stream showed for it, of each type it has none of: Llama Stack
        streams a reasoning model's thoughts and a refusal as parts of the
        message (content index 1 and 2), then sends the message with its
        ``output_text`` alone, in ``output_item.done`` and in the final output."""
        content = item.get("content")
        if not isinstance(content, list) or item.get("type") != "message":
            return item
        thoughts, refusals = self.streamed_parts()
        if not thoughts and not refusals:
            return item
        types = {p.get("type") for p in content if isinstance(p, JSON_OBJECT)}
        thoughts = [] if "reasoning_text" in types else thoughts
        refusals = [] if "refusal" in types else [p for p in refusals if p.get("refusal")]
        if not thoughts and not refusals:
            return item
        return {**item, "content": [*thoughts, *content, *refusals]}

    def rebuild(self) -> dict[str, Any]:
        """The item as the stream described it, for one that never sent ``.done``."""
        item = dict(self.item)
        itype = self.kind()
        if itype == "reasoning":
            item.setdefault("type", "reasoning")
        if itype == "function_call" and (self.pieces or self.finals):
            arguments = self.text("args", 0)
            announced = item.get("arguments")
            if (
                ("args", 0) not in self.finals
                and isinstance(announced, str)
                and announced.startswith(arguments)
            ):
                arguments = announced  # the deltas its start: as the chat stream sends it
            item["arguments"] = arguments
        elif itype == "message":
            item.setdefault("type", "message")
            item.setdefault("role", "assistant")
            parts: dict[int, dict[str, Any]] = {}
            for i in self.indices("text"):
                parts[i] = {"type": "output_text", "text": self.text("text", i), "annotations": []}
            for i in self.indices("refusal"):
                parts[i] = {"type": "refusal", "refusal": self.text("refusal", i)}
            # a reasoning model's thoughts in the message (Llama Stack), first
            thoughts = [
                {"type": "reasoning_text", "text": self.text("reasoning", i)}
                for i in self.indices("reasoning")
            ]
            if parts or thoughts:
                item["content"] = thoughts + [parts[i] for i in sorted(parts)]
        elif itype == "reasoning":
            if self.indices("reasoning"):
                item["content"] = [
                    {"type": "reasoning_text", "text": self.text("reasoning", i)}
                    for i in self.indices("reasoning")
                ]
            if self.indices("summary"):
                item["summary"] = [
                    {"type": "summary_text", "text": self.text("summary", i)}
                    for i in self.indices("summary")
                ]
        return item


class ResponseAccumulator:
    """Collects a Responses event stream into the final Response object.

    ``feed`` never raises; failures are reported by :meth:`result`. Events
    after the terminal one (``response.completed`` / ``.incomplete`` /
    ``.failed`` or an ``error`` event) are ignored.
    """

    def __init__(self, limit: Optional[int] = None) -> None:
        #: most characters of deltas and final texts kept (None: no bound)
        self._limit = limit
        self._kept = 0
        self._items: dict[Key, _Item] = {}
        self._by_index: dict[int, Key] = {}
        self._last_of: dict[str, _Item] = {}  # item type -> the last item of it seen
        self._base: dict[str, Any] = {}
        self._final: Optional[dict[str, Any]] = None
        self._error: Optional[ProxyError] = None
        #: the last usage seen, in chat form (``prompt_tokens``, …), for access logs
        self.usage: Optional[dict[str, Any]] = None

    @property
    def done(self) -> bool:
        """A terminal event (success or failure) has been seen."""
        return self._final is not None or self._error is not None

    @property
    def settled(self) -> bool:
        """The result is fixed whatever came before the terminal event: a failure,
        or a final response with a non-empty ``output`` and every field
        :func:`~goose_proxy.translate.responses_to_chat` reads (so an event not
        fed, or fed in any order before the terminal one, would change nothing)."""
        if self._error is not None:
            return True
        final = self._final
        if final is None:
            return False
        output = final.get("output")
        return isinstance(output, list) and bool(output) and all(k in final for k in READ_FIELDS)

    def _slot(self, event: Mapping[str, Any], item_id: Any = None, kind: Any = None) -> _Item:
        """The item an event is about: by its ``item_id``, else by its
        ``output_index``; a new one for an event that names an item other than
        the one at an index already taken: of another ``kind`` (type), or
        announced under another id (Llama Stack numbers a tool call the same as
        the message streamed before it, and all the calls of a turn alike)."""
        index = event.get("output_index")
        if not isinstance(index, int) or isinstance(index, bool):
            index = None
        key: Key
        if isinstance(item_id, str) and item_id in self._items:
            key = item_id
        elif (
            index is not None
            and index in self._by_index
            and not (isinstance(item_id, str) and self._another(index, item_id, kind))
        ):
            key = self._by_index[index]
        elif isinstance(item_id, str):
            key = item_id
        else:
            key = index if index is not None else -1 - len(self._items)
        slot = self._items.get(key)
        if slot is None:
            position = index if index is not None else 1 << 30
            slot = self._items[key] = _Item((position, len(self._items)))
        if index is not None:
            self._by_index.setdefault(index, key)
        return slot

    def _another(self, index: int, item_id: str, kind: Any) -> bool:
        """Whether item ``item_id`` (of type ``kind``, None: not told) is not the
        item first seen at ``index``: that one has another type, or another id."""
        held = self._items[self._by_index[index]]
        if kind is not None and held.kind() not in (None, kind):
            return True
        return held.item.get("id") not in (None, item_id)

    def feed(self, event: Mapping[str, Any]) -> None:
        """Take one parsed Responses event (a dict with ``type``)."""
        if self.done or not isinstance(event, JSON_OBJECT):
            return
        etype = event.get("type")
        delta = _DELTAS.get(etype) if isinstance(etype, str) else None
        if delta is not None:
            piece = event.get("delta")
            if isinstance(piece, str) and piece:
                kind, field = delta
                item_id = event.get("item_id")
                if not isinstance(item_id, str) and "output_index" not in event:
                    # a delta that names neither: the item of its type last seen while
                    # it is not done, else one of its own that later such deltas join
                    last = self._last_of.get(_ITEM_OF[kind])
                    if last is None or last.done:
                        last = self._last_of[_ITEM_OF[kind]] = self._slot(event)
                    slot = last
                else:
                    slot = self._slot(event, item_id)
                if slot.settled():
                    return
                index = event.get(field, 0) if field else 0
                slot.pieces.setdefault((kind, index if isinstance(index, int) else 0), []).append(
                    piece
                )
                self._keep(len(piece))
            return
        done = _DONES.get(etype) if isinstance(etype, str) else None
        if done is not None:
            kind, field, value_key = done
            value = event.get(value_key)
            if isinstance(value, str):
                slot = self._slot(event, event.get("item_id"))
                if slot.settled():
                    return
                name = event.get("name") if kind == "args" else None
                if name and isinstance(name, str) and slot.item.get("type") == "function_call":
                    # a call announced without its name, which its .done brings
                    # (as the chat stream takes it there)
                    slot.item["name"] = slot.item.get("name") or name
                index = event.get(field, 0) if field else 0
                self._final_text(slot, (kind, index if isinstance(index, int) else 0), value)
            return
        if etype == "response.content_part.done":
            part = event.get("part")
            if isinstance(part, JSON_OBJECT):
                slot = self._slot(event, event.get("item_id"))
                if slot.settled():
                    return
                index = event.get("content_index", 0)
                index = index if isinstance(index, int) else 0
                if part.get("type") == "output_text" and isinstance(part.get("text"), str):
                    self._final_text(slot, ("text", index), part["text"])
                elif part.get("type") == "refusal" and isinstance(part.get("refusal"), str):
                    self._final_text(slot, ("refusal", index), part["refusal"])
            return
        if etype in ("response.output_item.added", "response.output_item.done"):
            item = event.get("item")
            if isinstance(item, JSON_OBJECT):
                slot = self._slot(event, item.get("id"), item.get("type"))
                if isinstance(item.get("type"), str):
                    self._last_of[item["type"]] = slot
                if etype.endswith(".done"):
                    slot.item = slot.with_streamed_parts(dict(item))
                    self._keep_item(slot, True)
                elif not slot.done:
                    slot.item = dict(item)
                    self._keep_item(slot, False)
                slot.done = slot.done or etype.endswith(".done")
            return
        response = event.get("response")
        if isinstance(response, JSON_OBJECT):
            usage = map_usage(response.get("usage"))
            if usage is not None:
                self.usage = usage
            if etype in ("response.completed", "response.incomplete"):
                self._final = dict(response)
                # the event says how it ended when its response does not (else
                # the "in_progress" of response.created would show through)
                self._final["status"] = terminal_status(etype, response)
            elif etype == "response.failed":
                self._error = event_failure(event)
            else:
                self._base = dict(response)
        elif etype in ("error", "response.failed"):
            self._error = event_failure(event)
        elif etype in ("response.completed", "response.incomplete"):
            # no Response object in it: the output is what the events built, as
            # the chat stream has shown it
            self._final = {"status": etype[len("response.") :]}

    def _final_text(self, slot: _Item, key: tuple[str, int], value: str) -> None:
        """A part's final text: it wins over the deltas, which are kept no more."""
        freed = sum(map(len, slot.pieces.pop(key, ())))
        old = slot.finals.get(key)
        slot.finals[key] = value
        self._keep(len(value) - freed - (len(old) if old is not None else 0))

    def _keep_item(self, slot: _Item, done: bool) -> None:
        """Count ``slot``'s (new) item against the limit, in place of the one it
        replaces; a done item (with its type) is the item from now on, and
        its deltas and final texts are let go."""
        chars = _chars_in(slot.item)
        freed = slot.item_chars
        slot.item_chars = chars
        if done and isinstance(slot.item.get("type"), str):
            freed += sum(len(p) for ps in slot.pieces.values() for p in ps)
            freed += sum(map(len, slot.finals.values()))
            slot.pieces.clear()
            slot.finals.clear()
        self._keep(chars - freed)

    def _keep(self, n: int) -> None:
        self._kept += n
        if self._limit is not None and self._kept > self._limit:
            self._error = UpstreamAnswerTooLarge(
                f"backend answer larger than {self._limit} characters "
                "(backend.max_event_size); ask for it as a stream"
            )

    def result(self) -> dict[str, Any]:
        """The final Response object.

        Raises:
            ProxyError: the stream reported a failure (``response.failed`` or an
                ``error`` event): the class :func:`error_from_event` maps it to.
            UpstreamProtocolError: the stream ended without a terminal event.
        """
        if self._error is not None:
            raise self._error
        if self._final is None:
            raise UpstreamProtocolError(ENDED_EARLY)
        response = {**self._base, **self._final}
        output = self._final.get("output")
        if not (isinstance(output, list) and output):
            slots = sorted(self._items.values(), key=lambda s: s.order)
            response["output"] = [s.item if s.done else s.rebuild() for s in slots]
        else:
            response["output"] = [
                self._with_streamed_parts(item) for item in self._with_lost_messages(output)
            ]
        return response

    def _with_streamed_parts(self, item: Any) -> Any:
        """An output message with the parts the stream showed for it that it lacks
        (see :meth:`_Item.with_streamed_parts`)."""
        slot = self._streamed(item.get("id")) if isinstance(item, JSON_OBJECT) else None
        return item if slot is None else slot.with_streamed_parts(item)

    def _streamed(self, item_id: Any) -> Optional[_Item]:
        """The item the stream showed under ``item_id`` (None: none)."""
        return self._items.get(item_id) if isinstance(item_id, str) else None

    def holds(self, ids: set[str]) -> bool:
        """The terminal output has an item of each id in ``ids``."""
        output = self._final.get("output") if self._final is not None else None
        have = {i.get("id") for i in output if isinstance(i, JSON_OBJECT)} if output else set()
        return ids <= have

    def _with_lost_messages(self, output: list[Any]) -> list[Any]:
        """``output`` and each message the stream showed text of that it does
        not hold, before the first item that streamed after it. A message is
        held under its id, or renamed: an output message the stream did not
        show under its id, whose text starts with the streamed one's (each
        stands for one). Not when the output refuses (a shield that replaced
        the answer: what it withdrew is not put back)."""
        if any(_refuses(item) for item in output):
            return output
        ids = {item.get("id") for item in output if isinstance(item, JSON_OBJECT)}
        candidates = [
            slot
            for key, slot in self._items.items()
            if slot.kind() == "message" and key not in ids and slot.item.get("id") not in ids
        ]
        if not candidates:
            return output
        renamed = [
            _message_text(item)
            for item in output
            if isinstance(item, JSON_OBJECT) and not self._streamed(item.get("id"))
        ]
        if len(candidates) * max(len(renamed), 1) > LOST_WORK:
            return output  # no answer of a real backend: taken as its output says
        lost: list[tuple[tuple[int, int], Any]] = []
        for slot in sorted(candidates, key=lambda s: s.order):
            item = slot.item if slot.done else slot.rebuild()
            text = _message_text(item)
            if not text:
                continue
            at = next((i for i, t in enumerate(renamed) if t.startswith(text)), None)
            if at is not None:
                del renamed[at]
            else:
                lost.append((slot.order, item))
        if not lost:
            return output
        # each goes before the first output item that streamed after it: the
        # first whose order is past its own, which is where the running
        # greatest order of the output's streamed items first passes it
        tops: list[tuple[int, int]] = []  # rising: each a new greatest order
        where: list[int] = []  # the output index at which each was reached
        for i, item in enumerate(output):
            known = self._streamed(item.get("id") if isinstance(item, JSON_OBJECT) else None)
            if known is not None and (not tops or known.order > tops[-1]):
                tops.append(known.order)
                where.append(i)
        before: dict[int, list[Any]] = {}
        for order, item in sorted(lost, key=lambda p: p[0]):
            k = bisect.bisect_right(tops, order)
            before.setdefault(where[k] if k < len(where) else len(output), []).append(item)
        merged: list[Any] = []
        for i, item in enumerate(output):
            merged.extend(before.get(i, ()))
            merged.append(item)
        merged.extend(before.get(len(output), ()))
        return merged
