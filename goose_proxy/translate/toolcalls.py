"""Ordering of streamed tool calls: dense indices, contiguous arguments.

Chat clients rebuild tool calls from fragments keyed by ``index``, and strict
ones (the openai SDK's stream helper among them) consider a call complete as
soon as a fragment for another index arrives. The Responses API may interleave
the argument deltas of parallel calls. So the queue lets exactly one call be
*open* on the client side at a time:

* calls enter the queue in the order the backend announces them
  (``output_item.added``), or at their first sign of life if never announced;
* the head call is open: its header (``id``, ``name``, ``arguments: ""``) and
  its argument deltas go out as they come; the client index is assigned when
  the header goes out, so indices are dense (0, 1, 2, …) and increasing;
* deltas of any other call are held back in that call's buffer, which holds at
  most what the backend sent for it;
* when the head call finishes (``function_call_arguments.done`` or
  ``output_item.done``), its missing argument text is sent once (all of it
  when no delta came, the missing tail when the deltas were a prefix) and the
  next call opens: header, its whole buffer, and, if it has finished too, its
  tail, and so on;
* at the terminal event every remaining call is flushed in order.

A call whose ``call_id`` and ``name`` are still unknown (deltas without an
``output_item.added``, or an item announced without a ``call_id`` or with an
empty name) blocks the queue until its ``output_item.done`` or the terminal
response supplies them (the item's ``id`` stands in for a ``call_id`` the
item never has, as in a JSON answer). At the terminal event a
``function_call`` item that nothing named goes out with an empty name, as in
a JSON answer; argument events of no ``function_call`` item (a backend's own
search or MCP call, under its own item id) are skipped, and so is a call
without any id, which cannot be answered (see :meth:`ToolCallQueue.find` for
an event whose id differs from that of the call announced at its index).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Optional

__all__ = ["ToolCallQueue", "call_id_of", "split_high", "started_as", "str_or_none"]

Fragment = dict[str, Any]

#: characters of argument deltas kept, over all open calls, to complete a
#: call from its final arguments (the deltas only its start); past that a
#: call's deltas are taken as all of it
KEPT_ARGUMENTS = 1024 * 1024


class _Call:
    __slots__ = (
        "borrowed",
        "call_id",
        "final",
        "finished",
        "high",
        "index",
        "item_id",
        "item_seen",
        "name",
        "own_args",
        "pending",
        "preset",
        "received",
        "unkept",
    )

    def __init__(self, call_id: Optional[str], name: Optional[str]) -> None:
        self.call_id = call_id
        #: the item's own id: the call_id of last resort, at the terminal event
        self.item_id: Optional[str] = None
        #: a function_call item came for it (added or done), not argument events only
        self.item_seen = False
        #: an argument event named the item's own id (see ToolCallQueue.find)
        self.own_args = False
        #: announced under an id an earlier item had at another output index
        self.borrowed = False
        self.name = name
        self.index: Optional[int] = None  # client index, once the header went out
        self.received: list[str] = []  # every argument delta, in order
        #: the deltas were more than the queue keeps: ``received`` was let go
        self.unkept = False
        self.pending: list[str] = []  # deltas not yet sent (only while not open)
        self.finished = False
        self.final: Optional[str] = None  # arguments from the .done event
        #: arguments the announced item already held: the final ones when no
        #: ``.done`` or final item brings any
        self.preset: Optional[str] = None
        self.high = ""  # a sent delta's last character held back: see _held_back()


class ToolCallQueue:
    """Turns function-call events into chat ``tool_calls`` fragments, in a safe order.

    Every method returns the fragments to send now (possibly none), each one a
    ``delta.tool_calls`` entry. Keys are the backend's item ids (or a stand-in
    derived from ``output_index``).
    """

    def __init__(self) -> None:
        self._calls: list[_Call] = []
        self._by_key: dict[str, _Call] = {}
        self._head = 0
        #: characters of argument deltas kept (``received``) by calls not yet closed
        self._kept = 0
        #: characters of argument deltas held (``pending``) for calls not yet open
        self.held = 0
        #: number of calls whose header went out (the next dense index)
        self.emitted = 0

    def find(self, *keys: Optional[str], named: Optional[str] = None) -> Optional[_Call]:
        """The call under the first known key of ``keys``. An argument event
        that ``named`` an item id other than that of the call announced at its
        output index is another item's (Llama Stack streams the arguments of
        its own searches and MCP calls, never announced, at the output index
        of the client's call), except for a call announced under an earlier
        item's id and streamed under a new one (vLLM 0.11): while that call
        had no argument event under its own id, the first such id stands for
        it."""
        for key in keys:
            call = self._by_key.get(key) if key is not None else None
            if call is None:
                continue
            if named is None or key == named or call.item_id in (None, named):
                if named is not None and named == call.item_id:
                    call.own_args = True
                return call
            if call.borrowed and not call.own_args:
                self._by_key[named] = call  # (named is not None here)
                call.own_args = True  # one stand-in: another id is another item's
                return call
        return None

    def _add(self, key: str, call_id: Optional[str], name: Optional[str]) -> _Call:
        call = _Call(call_id, name or None)
        self._calls.append(call)
        self._by_key[key] = call
        return call

    def announce(
        self,
        key: str,
        call_id: Optional[str],
        name: Optional[str],
        item_id: Optional[str] = None,
        arguments: Optional[str] = None,
        borrowed: bool = False,
    ) -> list[Fragment]:
        """A function call item was added. Repeats of a known key only fill in
        gaps. ``item_id`` stands in for a ``call_id`` that nothing brings by the
        terminal event. An empty ``name`` is no name: one may still come.
        ``borrowed``: the id is an earlier item's (see :meth:`find`)."""
        call = self._by_key.get(key)
        if call is None:
            call = self._add(key, call_id, name)
            call.borrowed = borrowed  # (a repeat says nothing more of it)
        else:
            call.call_id = call.call_id or call_id
            call.name = call.name or name or None
        call.item_id = call.item_id or item_id
        call.item_seen = True
        call.preset = call.preset or arguments or None
        return self._advance()

    def delta(self, keys: tuple[Optional[str], ...], text: str) -> list[Fragment]:
        """An argument delta for the call found under the first known key of
        ``keys``; with no key (the event names neither its item nor its output
        index), for the call announced last, unless it finished (as the
        collected answer has it)."""
        if not text:
            return []
        call = self.find(*keys, named=keys[0])
        if call is None:
            key = next((k for k in keys if k is not None), None)
            if key is not None:
                call = self._add(key, None, None)
            elif self._calls and not self._calls[-1].finished:
                call = self._calls[-1]
            else:
                return []
        if call.finished:
            return []
        if not call.unkept:
            self._keep(call, text)
        if call.index is not None:  # open: straight out
            text = _held_back(call, call.high + text)
            return [{"index": call.index, "function": {"arguments": text}}] if text else []
        call.pending.append(text)
        self.held += len(text)
        return self._advance()

    def _keep(self, call: _Call, text: str) -> None:
        if self._kept + len(text) <= KEPT_ARGUMENTS:
            call.received.append(text)
            self._kept += len(text)
        else:  # past the budget the deltas are trusted: no tail is taken from the end
            call.unkept = True
            self._kept -= sum(map(len, call.received))
            call.received.clear()

    def finish(
        self,
        keys: tuple[Optional[str], ...],
        arguments: Optional[str],
        call_id: Optional[str] = None,
        name: Optional[str] = None,
        item: bool = False,
    ) -> list[Fragment]:
        """The call's arguments are final (``.done``, or with ``item`` an
        ``output_item.done``, which may rename the call); once per call."""
        call = self.find(*keys) if item else self.find(*keys, named=keys[0])
        if call is None:
            key = next((k for k in keys if k is not None), None)
            if key is None:
                return []
            call = self._add(key, call_id, name)
        call.call_id = call.call_id or call_id
        call.name = call.name or name or None
        call.item_seen = call.item_seen or item
        if not call.finished:
            call.finished = True
            call.final = arguments if arguments is not None else call.preset
        return self._advance()

    def close(self, items: Mapping[str, Mapping[str, Any]]) -> list[Fragment]:
        """Terminal event: flush every call, using the final response's items by key.

        A function_call item that nothing named goes out with an empty name, as
        in an answer collected for a client that did not stream; argument
        events of no such item (a backend's own search) go nowhere."""
        for key, call in self._by_key.items():
            item = items.get(key)
            if item is not None and item.get("type") != "function_call":
                item = None  # the backend's own work (a search, an MCP call): not the client's
            if item is not None:
                call.call_id = call.call_id or call_id_of(item)
                call.name = call.name or str_or_none(item.get("name")) or None
            call.call_id = call.call_id or call.item_id
            if call.name is None and call.item_seen:
                call.name = ""
            if not call.finished:
                call.finished = True
                final = str_or_none(item.get("arguments")) if item is not None else None
                call.final = final if final is not None else call.preset
        out = self._advance()
        while self._head < len(self._calls):  # only calls that can never go out are left
            self._head += 1
            out.extend(self._advance())
        return out

    def _advance(self) -> list[Fragment]:
        out: list[Fragment] = []
        while self._head < len(self._calls):
            call = self._calls[self._head]
            if call.index is None:
                if call.call_id is None or call.name is None:
                    break
                call.index = self.emitted
                self.emitted += 1
                out.append(
                    {
                        "index": call.index,
                        "id": call.call_id,
                        "type": "function",
                        "function": {"name": call.name, "arguments": ""},
                    }
                )
            held = "".join(call.pending)
            self.held -= len(held)
            text = call.high + held
            call.pending.clear()
            if not call.finished:
                text = _held_back(call, text)
                if text:
                    out.append({"index": call.index, "function": {"arguments": text}})
                break
            if call.final and not call.unkept:
                text = _rest(call.final, "".join(call.received), text, call.high)
            if text:
                out.append({"index": call.index, "function": {"arguments": text}})
            call.high = ""
            self._kept -= sum(map(len, call.received))
            call.received.clear()  # closed for good: keep no copy of its arguments
            call.final = None
            self._head += 1
        return out


def _rest(final: str, received: str, unsent: str, high: str) -> str:
    """What a finished call still has to send: what came and was not sent
    (``unsent``, the tail of ``received``), then the tail of the final arguments
    that the deltas did not bring, when the deltas are their start; the
    deltas win where the two disagree.

    A held first half of a surrogate pair (``high``, then all of ``unsent``)
    gives way to the final arguments' character there; and the deltas may hold
    the two halves of a pair apart where the final arguments have one
    character, so the comparison is retried with the pairs joined.
    """
    at = started_as(final, received[: len(received) - len(high)])
    return unsent if at < 0 else unsent[: len(unsent) - len(high)] + final[at:]


def started_as(final: str, came: str) -> int:
    """How much of ``final`` the deltas that ``came`` are, when they are its
    start; -1 when they are not. The deltas may hold the two halves of a
    surrogate pair apart where ``final`` has one character: the comparison is
    retried with the pairs joined."""
    if final.startswith(came):
        return len(came)
    joined = came.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "surrogatepass")
    return len(joined) if joined != came and final.startswith(joined) else -1


def _held_back(call: _Call, text: str) -> str:
    """``text`` without a first half of a surrogate pair at its end, which waits
    in ``call.high`` for the next delta or the call's end (see :func:`split_high`)."""
    text, call.high = split_high(text)
    return text


def split_high(text: str) -> tuple[str, str]:
    """``(text, "")``, or ``(text without its last character, that character)``
    when it is the first half of a surrogate pair, to be sent with the next delta.

    A backend that writes its JSON with ASCII escapes may cut an astral
    character (an emoji) between its two ``\\uXXXX`` halves; each half alone
    is no character (a client would see U+FFFD, or, escaped, a strict JSON
    reader such as Goose's serde_json refuses the chunk).
    """
    if text and "\ud800" <= text[-1] <= "\udbff":
        return text[:-1], text[-1]
    return text, ""


def str_or_none(value: Any) -> Optional[str]:
    """``value`` if it is a string, else None."""
    return value if isinstance(value, str) else None


def call_id_of(item: Mapping[str, Any], *, or_item_id: bool = True) -> Optional[str]:
    """The ``call_id`` of a ``function_call`` item (a non-empty string), else,
    when ``or_item_id``, the item's own ``id``: a backend that leaves
    ``call_id`` out still gets its call answered (Goose's Responses reader
    falls back the same way). Not at ``output_item.added``: the item's
    ``output_item.done`` may still bring the ``call_id``."""
    call_id = item.get("call_id")
    if isinstance(call_id, str) and call_id:
        return call_id
    item_id = item.get("id") if or_item_id else None
    return item_id if isinstance(item_id, str) and item_id else None
