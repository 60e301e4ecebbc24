"""Responses SSE events → ``chat.completion.chunk`` SSE frames (docs/api-translation.md §3).

Theory of operation
-------------------
:class:`StreamTranslator` is a sans-I/O state machine for one response. The
caller feeds it each parsed Responses event (``feed``) and, when the upstream
body ends, calls ``finish``; both return the bytes to write, every frame
exactly ``data: <compact JSON>\\n\\n``. It never reads or writes anything.

States: *waiting* → *streaming* → *done*.

* **waiting** (nothing returned yet). Events that carry nothing for the
  client (``response.created``, ``in_progress``, ``output_item.added`` for a
  message, empty deltas, unknown types) only update state; ``created`` lends
  its ``id``, ``created_at`` and ``model`` to the chunks when the caller gave
  none. A failure here (``response.failed``, an ``error`` event, or ``finish``
  without a terminal event) is *raised* as a :class:`ProxyError`, so the HTTP
  layer can still answer with a real status: this is "commit late".
* **streaming** starts with the first client-visible event: the role chunk
  (``{"role": "assistant", "content": ""}``, ``"content": null`` when
  something other than text comes first) goes out together with it. Text,
  refusal and reasoning deltas map one to one (a reasoning part that follows
  another starts with a blank line, as the collected answer joins them); tool calls go through
  :class:`~goose_proxy.translate.toolcalls.ToolCallQueue`, which assigns dense
  indices and keeps each call's argument fragments contiguous (for a client
  that sent the deprecated ``functions``, the first call goes out as
  ``delta.function_call`` instead and the others are left out). A message part,
  reasoning item or call whose content never streamed is sent when its
  ``.done`` (or the terminal response's ``output``) shows it.
* **done**. ``response.completed`` / ``.incomplete`` flush the held-back tool
  calls, then send the finish chunk (the only place a ``finish_reason``
  appears), the usage chunk if asked for, and ``[DONE]``. A failure after
  output started sends ``{"error": …}`` and ``[DONE]`` instead, never a fake
  ``stop``. Later events, ``finish`` and ``error_frames`` return nothing.

Speed: the common text delta is built from precomputed bytes around the JSON
string of the delta instead of dumping a dict per event.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any, Callable, Optional

from goose_proxy.errors import (
    ProxyError,
    UpstreamAnswerTooLarge,
    UpstreamNotAResponse,
    UpstreamProtocolError,
)

from .jsonbody import encode_json_for_client as encode_json  # chunks: see its docstring
from .jsonbody import encode_str_for_client as encode_str
from .response import (
    CANCELLED,
    ENDED_EARLY,
    JSON_OBJECT,
    THOUGHT_GAP,
    answer_extras,
    chat_logprobs,
    event_failure,
    failure_of,
    finish_reason,
    map_usage,
    new_completion_id,
    reasoning_texts,
    terminal_status,
)
from .toolcalls import Fragment, ToolCallQueue, call_id_of, split_high, started_as, str_or_none

__all__ = ["DONE_FRAME", "StreamTranslator"]

DONE_FRAME = b"data: [DONE]\n\n"
#: a chunk's end: without usage, and with ``"usage":null`` (every chunk but
#: the usage chunk carries it when the client asked for usage, as OpenAI's do)
_END = b"}]}\n\n"
_END_USAGE_NULL = b'}],"usage":null}\n\n'
#: characters of streamed text kept to tell a repeated final part from a new one
KEPT_TEXT = 256 * 1024
#: the key of a delta that names neither its item nor its output index
_PLACELESS = "#-1"

Out = list[bytes]


def _int(value: Any, default: int = 0) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else default


Place = tuple[int, int]  # (output_index, content_index)


class _Run(list):  # type: ignore[type-arg]
    """The deltas kept at a place, in order (strings), and how many characters
    streamed there past KEPT_TEXT (``beyond``): those are counted, not kept,
    and always come after the kept ones."""

    __slots__ = ("beyond",)

    def __init__(self) -> None:
        super().__init__()
        self.beyond = 0

    def __bool__(self) -> bool:
        """Whether anything streamed there, kept or counted."""
        return self.beyond > 0 or len(self) > 0

    def shown(self) -> tuple[str, int]:
        """What was kept, joined, and how many characters showed in all."""
        seen = "".join(self)
        return seen, len(seen) + self.beyond


class _Places:
    """What the stream knows of its places beyond their text (see
    ``StreamTranslator._streamed_at``); apart, so that the translator's own
    attributes stay few enough for CPython's fast attribute access."""

    __slots__ = ("also_shown", "claimed", "final_ids", "orphans", "place_key")

    def __init__(self) -> None:
        self.place_key: dict[Place, str] = {}  # the first key that streamed there
        self.claimed: set[Place] = set()  # places a final part was matched with
        #: other texts final parts showed at a place (not what streamed there)
        self.also_shown: dict[Place, set[str]] = {}
        #: while the terminal event's output is gone through: by content index,
        #: the places (and their text) that streamed under an item id the output
        #: does not hold, last first
        self.orphans: Optional[dict[int, list[tuple[Place, str, int]]]] = None
        self.final_ids: set[str] = set()  # ... and the item ids it holds


class StreamTranslator:
    """Translate one Responses event stream into chat completion chunks.

    ``model``, ``completion_id`` and ``created`` fill every chunk; an empty
    ``model`` or a None id/created is taken from ``response.created`` (else a
    fresh ``chatcmpl-…`` id and the current time). ``include_usage`` adds the
    ``choices: []`` usage chunk before ``[DONE]`` and ``"usage": null`` to
    every other chunk. ``legacy_functions`` (the client sent the deprecated
    ``functions``) answers as OpenAI does then: the first call as
    ``delta.function_call`` (``{"name", "arguments": ""}``, then
    ``{"arguments"}`` pieces) and ``finish_reason: "function_call"``; further
    calls are left out and counted in ``calls_left_out``. A refusal goes in
    ``content`` too, unless ``refusal_in_content`` is false (see
    :func:`~goose_proxy.translate.responses_to_chat`).
    """

    def __init__(
        self,
        *,
        model: str,
        include_usage: bool,
        completion_id: Optional[str] = None,
        created: Optional[int] = None,
        legacy_functions: bool = False,
        refusal_in_content: bool = True,
        max_held: int = 4 * 1024 * 1024,
    ) -> None:
        #: characters of argument deltas held for calls waiting their turn
        #: (``ToolCallQueue.held``) that fail the stream: the proxy's
        #: ``backend.max_event_size``
        self._max_held = max_held
        #: the delta keys a refusal's text goes under
        self._refusal_keys = ("content", "refusal") if refusal_in_content else ("refusal",)
        self._model = model
        self._include_usage = include_usage
        self._id = completion_id
        self._created = created
        self._started = False
        self._done = False
        #: the last usage seen, in chat form (read by embedders; the proxy does not)
        self.usage: Optional[dict[str, Any]] = None
        self._legacy = legacy_functions
        #: tool calls the legacy ``function_call`` shape could not carry
        self.calls_left_out = 0
        self._head = b""  # b'data: {"id":…,"choices":[{"index":0,"delta":' once prepared
        self._text_head = b""
        self._high = ""  # a text delta's last character, the first half of a surrogate pair
        self._halves: dict[str, str] = {}  # the same for reasoning and refusal deltas
        self._end = _END_USAGE_NULL if include_usage else _END
        self._text_tail = b'},"finish_reason":null' + self._end
        self._meta: dict[str, Any] = {}
        self._calls = ToolCallQueue()
        self._covered: set[tuple[str, int]] = set()  # message parts that sent text
        #: what streamed at each place, (output_index, content_index) -> the deltas
        #: as they came (a reasoning item's text at content index -1, its summary
        #: at -2; deltas that name neither item nor output index at output index
        #: -1), then what a final part there showed instead: a final part that
        #: streamed under another key (a backend whose item ids differ between the
        #: deltas and the end, or are left out) is told from a new one by its text.
        #: At most KEPT_TEXT characters in all are kept (``_kept``); past that,
        #: how many streamed at each place is counted (``_Run.beyond``)
        self._streamed_at: dict[tuple[int, int], _Run] = {}
        self._kept = 0
        self._places = _Places()
        self._text_at = _Run()  # the place of the text part streaming
        self._last_part: Optional[tuple[str, int]] = None
        # (reasoning item, -1 text / -2 summary): the parts that sent text
        self._reasoned: set[tuple[str, int]] = set()
        #: the parts of reasoning that sent text, (item key, -1 / -2, part
        #: index; None for all of a place sent at its item's end): a new one
        #: after another goes out after THOUGHT_GAP, as a collected answer
        #: joins them
        self._thought_parts: set[tuple[str, int, Optional[int]]] = set()
        self._index_keys: dict[int, str] = {}  # output_index -> item key
        self._key_index: dict[str, int] = {}  # and back
        self._handlers: dict[str, Callable[[Mapping[str, Any], Out], None]] = {
            "response.created": self._on_meta,
            "response.in_progress": self._on_meta,
            "response.queued": self._on_meta,
            "response.refusal.delta": self._on_refusal_delta,
            "response.reasoning_text.delta": self._on_reasoning_delta,
            "response.reasoning_summary_text.delta": self._on_reasoning_delta,
            "response.output_item.added": self._on_item_added,
            "response.function_call_arguments.delta": self._on_args_delta,
            "response.function_call_arguments.done": self._on_args_done,
            "response.output_text.done": self._on_part_done,
            "response.refusal.done": self._on_part_done,
            "response.content_part.done": self._on_part_done,
            "response.output_item.done": self._on_item_done,
            "response.completed": self._on_terminal,
            "response.incomplete": self._on_terminal,
            "response.failed": self._on_failed,
            "error": self._on_error,
        }

    @property
    def started(self) -> bool:
        """Some frame has been returned (the client's 200 head is committed)."""
        return self._started

    @property
    def done(self) -> bool:
        """Final: terminal frames were returned, or a failure was raised."""
        return self._done

    # --- entry points -------------------------------------------------------

    def feed(self, event: Mapping[str, Any]) -> list[bytes]:
        """Take one parsed Responses event; return the frames to send now.

        Raises:
            ProxyError: the stream failed (``response.failed`` or an ``error``
                event) before any frame was returned: ``ContextLengthExceeded``,
                ``RateLimited`` or another class from :func:`error_from_event`.
        """
        if self._done or not isinstance(event, JSON_OBJECT):
            return []
        etype = event.get("type")
        if etype == "response.output_text.delta":  # the hot path
            delta = event.get("delta")
            if not delta or not isinstance(delta, str):
                return []
            # self._key() and _int(), written out on this hot path
            key = event.get("item_id")
            index = event.get("content_index")
            part = (
                key if type(key) is str else self._key(event),
                index if type(index) is int else 0,
            )
            if part != self._last_part:
                self._covered.add(part)
                self._text_at = self._place(event, part)
                self._last_part = part
            if self._kept < KEPT_TEXT:  # self._keep()
                self._kept += len(delta)
                self._text_at.append(delta)
            else:
                self._text_at.beyond += len(delta)
            if self._high:
                delta, self._high = self._high + delta, ""
            logprobs = event.get("logprobs")
            if "\ud800" <= delta[-1] <= "\udbff" and not logprobs:
                # the first half of a surrogate pair: sent with the second half,
                # as one character (split_high, written out on this hot path)
                delta, self._high = delta[:-1], delta[-1]
                if not delta:
                    return []
            if not self._head:
                self._prepare()
            if logprobs and isinstance(logprobs, list):
                frame = self._chunk({"content": delta}, logprobs=chat_logprobs(logprobs))
            else:
                frame = self._text_head + encode_str(delta) + self._text_tail
            return [frame] if self._started else self._commit([frame])
        handler = self._handlers.get(etype) if isinstance(etype, str) else None
        if handler is None:
            return []
        out: Out = []
        handler(event, out)
        if self._high and out:  # what comes next is no second half: it goes first
            out[:0] = self._release_high()
        if out and not self._started:
            return self._commit(out)
        return out

    def finish(self) -> list[bytes]:
        """The upstream body ended (EOF or a ``[DONE]`` sentinel).

        Returns nothing after a terminal event, else an error frame and
        ``[DONE]`` when output had started.

        Raises:
            UpstreamProtocolError: no terminal event and nothing returned yet.
        """
        if self._done:
            return []
        if not self._started:
            self._done = True
            raise UpstreamProtocolError(ENDED_EARLY)
        return self.error_frames(UpstreamProtocolError(ENDED_EARLY))

    def error_frames(self, err: ProxyError) -> list[bytes]:
        """End the stream with ``err`` (an I/O failure mid-stream): error frame + ``[DONE]``.

        Idempotent: returns nothing once the stream is done.
        """
        if self._done:
            return []
        self._done = True
        self._started = True
        # a held half goes out too, as all text that came
        out = self._release_high()
        self._release_halves(out)
        return [*out, b"data: " + encode_json(err.to_dict()) + b"\n\n", DONE_FRAME]

    # --- framing --------------------------------------------------------------

    def _prepare(self) -> None:
        meta = self._meta
        meta["id"] = self._id or meta.get("id") or new_completion_id()
        created = self._created if self._created is not None else meta.get("created")
        meta["created"] = created if created is not None else int(time.time())
        meta["model"] = self._model or meta.get("model") or ""
        self._head = (
            b'data: {"id":' + encode_json(meta["id"])
            + b',"object":"chat.completion.chunk","created":' + str(meta["created"]).encode()
            + b',"model":' + encode_json(meta["model"])
            + b',"choices":[{"index":0,"delta":'
        )  # fmt: skip
        self._text_head = self._head + b'{"content":'

    def _release_high(self) -> Out:
        """The held first half of a surrogate pair, alone (U+FFFD to the client), if any."""
        if not self._high:
            return []
        if not self._head:
            self._prepare()
        frame = self._text_head + encode_json(self._high) + self._text_tail
        self._high = ""
        return [frame]

    def _whole(self, field: str, delta: str) -> str:
        """A reasoning or refusal ``delta`` with a held first half of a surrogate
        pair in front, its own last character held back when it is one (as for
        text: see :meth:`feed`)."""
        delta, half = split_high(self._halves.pop(field, "") + delta)
        if half:
            self._halves[field] = half
        return delta

    def _release_halves(self, out: Out) -> None:
        """Halves :meth:`_whole` holds that nothing completed: out, alone."""
        for field, half in self._halves.items():
            # a refusal goes in content too (see _on_refusal_delta)
            keys = self._refusal_keys if field == "refusal" else (field,)
            out.append(self._chunk(dict.fromkeys(keys, half)))
        self._halves.clear()

    def _chunk(
        self, delta: Mapping[str, Any], *, finish: Optional[str] = None, logprobs: Any = None
    ) -> bytes:
        if not self._head:
            self._prepare()
        extra = b',"logprobs":' + encode_json(logprobs) if logprobs is not None else b""
        reason = encode_json(finish) if finish is not None else b"null"
        return self._head + encode_json(delta) + extra + b',"finish_reason":' + reason + self._end

    def _commit(self, frames: Out) -> Out:
        self._started = True
        # As OpenAI streams it: "" before text, null before anything else (tool
        # calls, reasoning): a client that rebuilds the message then
        # has content null when no text comes, as without a stream; text that
        # comes later replaces the null.
        text = frames[0].startswith(self._text_head)
        return [self._chunk({"role": "assistant", "content": "" if text else None}), *frames]

    def _fragments(self, fragments: list[Fragment], out: Out) -> None:
        if self._legacy:
            self._function_call(fragments, out)
            return
        for fragment in fragments:
            out.append(self._chunk({"tool_calls": [fragment]}))

    def _function_call(self, fragments: list[Fragment], out: Out) -> None:
        """The legacy shape: the call at client index 0 as ``delta.function_call``
        (its header's ``function`` is ``{"name", "arguments": ""}``, then
        ``{"arguments"}``); the queue keeps its fragments apart from the other
        calls', which are left out (counted once, at their header)."""
        for fragment in fragments:
            if not fragment["index"]:
                out.append(self._chunk({"function_call": fragment["function"]}))
            elif "id" in fragment:
                self.calls_left_out += 1

    # --- item bookkeeping ----------------------------------------------------

    def _key(self, event: Mapping[str, Any]) -> str:
        item_id = event.get("item_id")
        if isinstance(item_id, str):
            return item_id
        index = _int(event.get("output_index"), -1)
        return self._index_keys.get(index) or f"#{index}"

    def _item_key(self, item: Mapping[str, Any], index: int) -> str:
        item_id = item.get("id")
        key = item_id if isinstance(item_id, str) else self._index_keys.get(index, f"#{index}")
        if index >= 0:
            self._index_keys.setdefault(index, key)
            self._key_index.setdefault(key, index)
        return key

    def _call_keys(self, event: Mapping[str, Any]) -> tuple[Optional[str], ...]:
        index = _int(event.get("output_index"), -1)
        by_index = self._index_keys.get(index) or (f"#{index}" if index >= 0 else None)
        return (str_or_none(event.get("item_id")), by_index)

    # --- handlers ---------------------------------------------------------------

    def _on_meta(self, event: Mapping[str, Any], out: Out) -> None:
        self._adopt(event.get("response"))

    def _adopt(self, response: Any) -> None:
        if self._head or not isinstance(response, JSON_OBJECT):
            return
        meta = self._meta
        if isinstance(response.get("id"), str):
            meta.setdefault("id", response["id"])
        created = response.get("created_at")
        if isinstance(created, (int, float)) and not isinstance(created, bool):
            meta.setdefault("created", int(created))
        if isinstance(response.get("model"), str):
            meta.setdefault("model", response["model"])

    def _on_refusal_delta(self, event: Mapping[str, Any], out: Out) -> None:
        delta = event.get("delta")
        if delta and isinstance(delta, str):
            part = (self._key(event), _int(event.get("content_index")))
            self._covered.add(part)
            self._keep(self._place(event, part), delta)
            delta = self._whole("refusal", delta)
            if delta:
                out.append(self._chunk(dict.fromkeys(self._refusal_keys, delta)))

    def _on_reasoning_delta(self, event: Mapping[str, Any], out: Out) -> None:
        delta = event.get("delta")
        if delta and isinstance(delta, str):
            key = self._key(event)
            # kept apart (content index -1, -2): a final item has the text first
            summary = event.get("type") == "response.reasoning_summary_text.delta"
            at = -2 if summary else -1
            self._reasoned.add((key, at))
            run = self._place(event, (key, at))
            part = (key, at, _int(event.get("summary_index" if summary else "content_index")))
            if part not in self._thought_parts:
                # kept as the final item's parts are joined (see _unstreamed_thoughts)
                self._keep(run, THOUGHT_GAP + delta if run else delta)
                delta = self._thought(part, delta)
            else:
                self._keep(run, delta)
            delta = self._whole("reasoning_content", delta)
            if delta:
                out.append(self._chunk({"reasoning_content": delta}))

    def _on_item_added(self, event: Mapping[str, Any], out: Out) -> None:
        item = event.get("item")
        if not isinstance(item, JSON_OBJECT):
            return
        index = _int(event.get("output_index"), -1)
        item_id = item.get("id")
        before = self._key_index.get(item_id, index) if isinstance(item_id, str) else index
        key = self._item_key(item, index)
        if item.get("type") == "function_call":
            fragments = self._calls.announce(
                key,
                call_id_of(item, or_item_id=False),
                str_or_none(item.get("name")),
                str_or_none(item_id) or None,
                str_or_none(item.get("arguments")),
                borrowed=index >= 0 and before != index,  # an earlier item's id (vLLM 0.11)
            )
            self._fragments(fragments, out)

    def _on_args_delta(self, event: Mapping[str, Any], out: Out) -> None:
        delta = event.get("delta")
        if delta and isinstance(delta, str):
            self._fragments(self._calls.delta(self._call_keys(event), delta), out)
            if self._calls.held > self._max_held:
                self._fail(
                    UpstreamAnswerTooLarge(
                        f"backend held back more than {self._max_held} characters of "
                        "tool-call arguments behind an unfinished call "
                        "(backend.max_event_size)"
                    ),
                    out,
                )

    def _on_args_done(self, event: Mapping[str, Any], out: Out) -> None:
        keys, arguments = self._call_keys(event), str_or_none(event.get("arguments"))
        self._fragments(
            self._calls.finish(keys, arguments, name=str_or_none(event.get("name"))), out
        )

    def _on_part_done(self, event: Mapping[str, Any], out: Out) -> None:
        etype = event.get("type")
        if etype == "response.content_part.done":
            part = event.get("part")
            if not isinstance(part, JSON_OBJECT):
                return
            kind = part.get("type")
            text = part.get("text") if kind == "output_text" else part.get("refusal")
            logprobs = part.get("logprobs")
        elif etype == "response.refusal.done":
            kind, text, logprobs = "refusal", event.get("refusal"), None
        else:
            kind, text, logprobs = "output_text", event.get("text"), event.get("logprobs")
        key = (self._key(event), _int(event.get("content_index")))
        self._unstreamed_part(key, kind, text, out, logprobs, _int(event.get("output_index"), -1))

    def _place(self, event: Mapping[str, Any], part: tuple[str, int]) -> _Run:
        """Where the deltas of ``part`` (``event`` is one of them) are kept: by its
        ``output_index``, else by the index its item was announced at, else (a
        delta that names neither item nor index) at output index -1; a delta of
        an item named but never placed is kept nowhere (its own final part is
        known by its key)."""
        index = event.get("output_index")
        if type(index) is not int or index < 0:
            index = self._key_index.get(part[0], -1)
            if index < 0 and part[0] != _PLACELESS:
                return _Run()
        place = (index, part[1])
        self._places.place_key.setdefault(place, part[0])
        return self._run(place)

    def _run(self, place: Place) -> _Run:
        run = self._streamed_at.get(place)
        if run is None:
            run = self._streamed_at[place] = _Run()
        return run

    def _keep(self, run: _Run, delta: str) -> None:
        if self._kept < KEPT_TEXT:
            self._kept += len(delta)
            run.append(delta)
        else:
            run.beyond += len(delta)

    def _not_yet_sent(self, key: str, index: int, at: int, text: str, parts: int = 0) -> str:
        """What of ``text`` (a part at content index ``at`` of the final item
        ``key`` at output index ``index``; at -1 and -2 a reasoning item's text
        and summary) did not stream under another key at the same place: all of
        it when nothing or something else did, the rest when its start did, ""
        when all of it did. What a final part showed there counts as shown there
        from then on, beside what streamed there when it differed (a terminal
        output may rename items whose ``.done`` events showed them). ``parts``:
        how many parts the final item has, when it is a whole item."""
        if index < 0:
            index = self._key_index.get(key, -1)
        if index < 0:
            rest = self._not_yet_sent_orphan(at, text)
            return self._not_yet_sent_unplaced(at, text) if rest is None else rest
        place = (index, at)
        streamed = self._streamed_at.get(place)
        owner = self._places.place_key.get(place, key)
        if owner != key and owner in self._places.final_ids:
            streamed = None  # another item's text, and that item is elsewhere in the output
        if not streamed:
            rest = self._not_yet_sent_misnumbered(key, index, at, text, parts)
            if rest is None:
                rest = self._not_yet_sent_orphan(at, text)
            if rest is None:
                rest = self._not_yet_sent_unplaced(at, text)
            run = self._run(place)
            if run:
                self._places.also_shown.setdefault(place, set()).add(text)
            else:
                self._keep(run, text)  # in place: see _keep
        elif text.startswith((shown := streamed.shown())[0]):
            # past KEPT_TEXT only the start was kept: taken as the same
            rest = text[shown[1] :]
            if rest:
                self._keep(streamed, rest)
        elif text in self._places.also_shown.get(place, ()):
            rest = ""
        else:
            rest = text  # not what streamed there: new, and shown (a shield's words)
            self._places.also_shown.setdefault(place, set()).add(text)
        self._places.place_key.setdefault(place, key)
        self._places.claimed.add(place)
        return rest

    def _not_yet_sent_misnumbered(
        self, key: str, index: int, at: int, text: str, parts: int
    ) -> Optional[str]:
        """For a part of a whole message item (of ``parts`` parts; 0 for a
        part's own ``.done`` event) with nothing streamed at its place: the rest
        of ``text`` after what streamed under the same item and output index at
        content indices the item has no part at and no final part took, joined
        in index order; those places then taken. vLLM streams a message that
        follows a reasoning item at content index 1 (and reports it there in
        its ``.done`` events), while its item has the one part 0. Only a whole
        item tells such a part from one that never streamed, by how many parts
        it has. None when nothing streamed there or it does not start ``text``."""
        places = self._places
        if at < 0 or not parts:
            return None
        runs = sorted(
            place
            for place, owner in places.place_key.items()
            if owner == key
            and place[0] == index
            and place[1] >= parts
            and place not in places.claimed
            and self._streamed_at.get(place)
        )
        seen, shown = "", 0  # the kept text up to the first run counted past KEPT_TEXT
        for place in runs:
            kept, total = self._streamed_at[place].shown()
            if shown == len(seen):
                seen += kept
            shown += total
        if not shown or not text.startswith(seen):
            return None
        places.claimed.update(runs)
        return text[shown:]

    def _not_yet_sent_orphan(self, at: int, text: str) -> Optional[str]:
        """In the terminal event's output, for a part with nothing streamed at its
        place: the rest of ``text`` after the first text not yet taken that
        streamed at another place under an item id the output does not hold (a
        backend that renamed and moved its message at the end), that place then
        taken; None when there is none or it does not start ``text``."""
        candidates = self._places.orphans.get(at) if self._places.orphans is not None else None
        while candidates and candidates[-1][0] in self._places.claimed:
            candidates.pop()
        if not candidates or not text.startswith(candidates[-1][1]):
            return None
        place, _, shown = candidates.pop()
        self._places.claimed.add(place)
        return text[shown:]

    def _not_yet_sent_unplaced(self, at: int, text: str) -> str:
        """The same for deltas that named neither their item nor its index: one
        run for all such parts, so each final part takes its own text off the
        front of it, in order."""
        streamed = self._streamed_at.get((-1, at))
        if not streamed:
            return text
        seen = "".join(streamed)
        if text.startswith(seen):
            streamed.clear()  # in place: the delta path may hold this list
            taken = min(streamed.beyond, len(text) - len(seen))  # (counted past KEPT_TEXT)
            streamed.beyond -= taken
            return text[len(seen) + taken :]
        if seen.startswith(text):
            streamed[:] = [seen[len(text) :]]
            return ""
        return text

    def _unstreamed_part(
        self,
        part: tuple[str, int],
        kind: Any,
        text: Any,
        out: Out,
        logprobs: Any = None,
        index: int = -1,
        parts: int = 0,
    ) -> None:
        """Send a message part's ``text`` unless it streamed: under its key, or
        at the same place (``index`` is its output_index) under another one
        (see :meth:`_not_yet_sent`). Of a part that streamed under its key,
        only a final text that goes on past the deltas sends its rest."""
        if not text or not isinstance(text, str) or kind not in ("output_text", "refusal"):
            return
        if part in self._covered:
            rest = self._past_the_deltas(part, index, text, kind == "refusal")
        else:
            self._covered.add(part)
            rest = self._not_yet_sent(part[0], index, part[1], text, parts)
        if not rest:
            return
        if kind == "refusal":
            out.append(self._chunk(dict.fromkeys(self._refusal_keys, rest)))
        else:
            # a part's logprobs go with its whole text, not with the rest of it
            mapped = chat_logprobs(logprobs) if rest is text else None
            out.append(self._chunk({"content": rest}, logprobs=mapped))

    def _past_the_deltas(self, part: tuple[str, int], index: int, text: str, refusal: bool) -> str:
        """The rest of a part's final ``text`` past what its deltas streamed
        (at the place its item was announced at, else at ``index``), when it
        starts with that (the deltas stopped short of it); else "". A first
        half of a surrogate pair the deltas ended with, held back, gives way
        to the final text's character there."""
        place = (self._key_index.get(part[0], index), part[1])
        run = self._streamed_at.get(place)
        if not run or self._places.place_key.get(place) != part[0]:
            return ""  # nothing, or another item's text, streamed there
        seen, shown = run.shown()
        beyond = shown - len(seen)
        half = self._halves.get("refusal", "") if refusal else self._high
        if not half or (not refusal and part != self._last_part) or not seen.endswith(half):
            half = ""
        at = started_as(text, seen[: len(seen) - len(half)])
        if at < 0 or len(text) <= at + beyond:
            return ""
        rest = text[at + beyond :]
        if half:  # never sent; nor kept
            run[-1] = run[-1][:-1]
            if refusal:
                del self._halves["refusal"]
            else:
                self._high = ""
        self._keep(run, rest)
        return rest

    def _thought(self, part: tuple[str, int, Optional[int]], text: str) -> str:
        """``text``, the start of a new ``part`` of reasoning, with THOUGHT_GAP in
        front when another part sent text before; the rest of a part as it is."""
        if part in self._thought_parts:
            return text
        gap = THOUGHT_GAP if self._thought_parts else ""
        self._thought_parts.add(part)
        return gap + text

    def _unstreamed_thoughts(self, key: str, index: int, at: int, texts: list[str]) -> str:
        """What of an item's reasoning ``texts`` (its non-empty parts at -1; its
        summary's at -2) to send: none when that place streamed (it is not
        compared with its final text: a backend may tidy it), else what did not
        show at its place, the parts joined as a collected answer joins them."""
        text = THOUGHT_GAP.join(texts)
        if not text or (key, at) in self._reasoned:
            return ""
        self._reasoned.add((key, at))
        rest = self._not_yet_sent(key, index, at, text)
        # all of it: new (a tail continues text that streamed under another key)
        return self._thought((key, at, None), rest) if rest == text else rest

    def _on_item_done(self, event: Mapping[str, Any], out: Out) -> None:
        item = event.get("item")
        if isinstance(item, JSON_OBJECT):
            self._item_done(item, _int(event.get("output_index"), -1), out)

    def _item_done(self, item: Mapping[str, Any], index: int, out: Out) -> str:
        """Send what of a finished item never streamed; return its key."""
        key = self._item_key(item, index)
        itype = item.get("type")
        if itype == "message":
            content = item.get("content")
            if isinstance(content, str):  # Llama Stack allows it (Lightspeed's shield did it)
                self._unstreamed_part((key, 0), "output_text", content, out, None, index, 1)
            parts = content if isinstance(content, list) else []
            # a reasoning model's thoughts in the message (Llama Stack), before its text
            thoughts = [
                p["text"]
                for p in parts
                if isinstance(p, JSON_OBJECT)
                and p.get("type") == "reasoning_text"
                and isinstance(p.get("text"), str)
                and p["text"]
            ]
            rest = self._unstreamed_thoughts(key, index, -1, thoughts)
            if rest:
                out.append(self._chunk({"reasoning_content": rest}))
            for j, part in enumerate(parts):
                if isinstance(part, JSON_OBJECT):
                    kind = part.get("type")
                    text = part.get("text") if kind == "output_text" else part.get("refusal")
                    logprobs = part.get("logprobs")
                    self._unstreamed_part((key, j), kind, text, out, logprobs, index, len(parts))
        elif itype == "function_call":
            fragments = self._calls.finish(
                (key, self._index_keys.get(index)),
                str_or_none(item.get("arguments")),
                call_id_of(item),
                str_or_none(item.get("name")),
                item=True,
            )
            self._fragments(fragments, out)
        elif itype == "reasoning":
            # a part that streamed is not compared with its final text (a
            # backend may tidy it); one that did not is sent, though the other
            # part streamed: its text would be missing from the stream alone
            rest = "".join(
                self._unstreamed_thoughts(key, index, at, reasoning_texts(item, (part,)))
                for at, part in ((-1, "content"), (-2, "summary"))
            )
            if rest:
                out.append(self._chunk({"reasoning_content": rest}))
        return key

    def _orphan_runs(self, final_ids: set[str]) -> dict[int, list[tuple[Place, str, int]]]:
        """For :meth:`_not_yet_sent_orphan`: by content index, last first, the
        places not yet taken whose text streamed under an id not in ``final_ids``."""
        runs: dict[int, list[tuple[Place, str, int]]] = {}
        for place in sorted(self._streamed_at, reverse=True):
            streamed = self._streamed_at[place]
            if (
                place[0] >= 0
                and streamed
                and place not in self._places.claimed
                and self._places.place_key.get(place) not in final_ids
            ):
                runs.setdefault(place[1], []).append((place, *streamed.shown()))
        return runs

    def _on_terminal(self, event: Mapping[str, Any], out: Out) -> None:
        response = event.get("response")
        if not isinstance(response, JSON_OBJECT):
            response = {}
        self._adopt(response)
        usage = map_usage(response.get("usage"))
        if usage is not None:
            self.usage = usage
        # the response's own status over the event's type, as in a collected answer
        status = terminal_status(str(event.get("type")), response)
        failure = failure_of(response)
        if failure is None and status == "cancelled":
            failure = UpstreamNotAResponse(CANCELLED)
        if failure is not None:
            self._fail(failure, out)
            return
        # Whatever the stream never showed, the final output still carries.
        output = response.get("output")
        items = [
            (i, item)
            for i, item in enumerate(output if isinstance(output, list) else ())
            if isinstance(item, JSON_OBJECT)
        ]
        self._places.final_ids = {
            item["id"] for _, item in items if isinstance(item.get("id"), str)
        }
        self._places.orphans = self._orphan_runs(self._places.final_ids)
        finals = {self._item_done(item, i, out): item for i, item in items}
        self._fragments(self._calls.close(finals), out)
        self._release_halves(out)
        reason = finish_reason(status, response.get("incomplete_details"), self._calls.emitted > 0)
        if self._legacy and reason == "tool_calls":
            reason = "function_call"
        extras = answer_extras(response)
        finish = self._chunk({}, finish=reason)
        if extras:  # after "choices", as the first key of the chunk's end
            finish = finish[: -len(self._end)] + b"}]," + encode_json(extras)[1:-1]
            finish += self._end[2:] if self._include_usage else b"}\n\n"
        out.append(finish)
        if self._include_usage:
            meta = self._meta  # prepared by the finish chunk above
            chunk = {
                "id": meta["id"],
                "object": "chat.completion.chunk",
                "created": meta["created"],
                "model": meta["model"],
                "choices": [],
                **extras,
                "usage": self.usage,
            }
            out.append(b"data: " + encode_json(chunk) + b"\n\n")
        out.append(DONE_FRAME)
        self._done = True

    def _on_failed(self, event: Mapping[str, Any], out: Out) -> None:
        response = event.get("response")
        if isinstance(response, JSON_OBJECT):
            usage = map_usage(response.get("usage"))
            if usage is not None:
                self.usage = usage
        self._fail(event_failure(event), out)

    def _on_error(self, event: Mapping[str, Any], out: Out) -> None:
        self._fail(event_failure(event), out)

    def _fail(self, err: ProxyError, out: Out) -> None:
        if not self._started:
            self._done = True
            raise err
        out.extend(self.error_frames(err))
