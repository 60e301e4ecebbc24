"""Property tests: random well-formed Responses event streams through StreamTranslator.

Each generated item (message, reasoning, function call) produces its own event
sequence; the sequences are interleaved arbitrarily. While generating, every
event is labelled with what it should show the client (text, refusal,
reasoning, or the first sign of a tool call), so the expected chat result is
read off the events themselves. The translator's frames are parsed and fed to
the official openai SDK accumulator (``ChatCompletionStreamState``), which must
rebuild exactly that.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from openai.lib.streaming.chat import ChatCompletionStreamState
from openai.types.chat import ChatCompletionChunk
from translate_testkit import accumulate, chunks_of, deltas, parse_frames

from goose_proxy.errors import ContextLengthExceeded, ProxyError, RateLimited, UpstreamError
from goose_proxy.translate import StreamTranslator, responses_to_chat

TEXT = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=6)
PIECES = st.lists(TEXT, max_size=4)
FIELD = {"text": "content", "refusal": "refusal"}


@dataclass
class Labelled:
    event: dict[str, Any]
    #: (chat field, text), and for reasoning the part the text belongs to
    shows: list[tuple[Any, ...]] = field(default_factory=list)
    call: Optional[str] = None  # call_id whose first sign of life this is


@dataclass
class Scenario:
    events: list[Labelled]
    terminal: str  # completed | length | content_filter | failed | error_flat | error_nested | eof
    failure: str  # the message of a failure, if any
    calls: dict[str, tuple[str, str]]  # call_id -> (name, full arguments)
    final_items: list[dict[str, Any]]
    include_output: bool
    include_usage: bool
    #: the terminal output names messages and reasoning items anew (Llama Stack did)
    renamed: bool = False


def message_events(draw: Any, n: int) -> tuple[list[Labelled], dict[str, Any]]:
    item_id = f"msg_{n}"
    parts = draw(st.lists(st.tuples(st.sampled_from(["text", "refusal"]), PIECES, st.booleans()),
                          min_size=1, max_size=3))  # fmt: skip
    streams_all = all(streamed for _, _, streamed in parts)
    finish = draw(st.booleans()) if streams_all else True
    part_done = draw(st.booleans())
    out = [Labelled({"type": "response.output_item.added", "output_index": n,
                     "item": {"type": "message", "id": item_id, "role": "assistant",
                              "content": []}})]  # fmt: skip
    final_parts = []
    for j, (kind, pieces, streamed) in enumerate(parts):
        full = "".join(pieces)
        final_parts.append({"type": "output_text", "text": full} if kind == "text"
                           else {"type": "refusal", "refusal": full})  # fmt: skip
        if streamed:
            etype = "response.output_text.delta" if kind == "text" else "response.refusal.delta"
            for piece in pieces:
                out.append(Labelled({"type": etype, "item_id": item_id, "output_index": n,
                                     "content_index": j, "delta": piece, "logprobs": []},
                                    [(FIELD[kind], piece)]))  # fmt: skip
    shown_by_part_done = set()
    if finish and part_done:
        for j, (kind, pieces, streamed) in enumerate(parts):
            shows = [] if streamed else [(FIELD[kind], "".join(pieces))]
            if shows:
                shown_by_part_done.add(j)
            out.append(Labelled({"type": "response.content_part.done", "item_id": item_id,
                                 "output_index": n, "content_index": j,
                                 "part": final_parts[j]}, shows))  # fmt: skip
    item = {"type": "message", "id": item_id, "role": "assistant", "content": final_parts,
            "status": "completed"}  # fmt: skip
    if finish:
        shows = [(FIELD[kind], "".join(pieces)) for j, (kind, pieces, streamed) in enumerate(parts)
                 if not streamed and j not in shown_by_part_done]  # fmt: skip
        out.append(Labelled({"type": "response.output_item.done", "output_index": n,
                             "item": item}, shows))  # fmt: skip
    return out, item


def reasoning_events(draw: Any, n: int) -> tuple[list[Labelled], dict[str, Any]]:
    """The item's text and summary parts stream in turn, each kind's parts in
    order (a piece may start the kind's next part); the chat stream shows a
    blank line before each part that follows another (see ``with_gaps``)."""
    item_id = f"rs_{n}"
    kinds = st.sampled_from(["content", "summary"])
    pieces = draw(st.lists(st.tuples(kinds, TEXT, st.booleans()), max_size=5))
    streamed = draw(st.booleans())
    parts: dict[str, list[str]] = {"content": [], "summary": []}
    placed = []  # (kind, part index, text)
    for kind, text, next_part in pieces:
        if next_part or not parts[kind]:
            parts[kind].append("")
        parts[kind][-1] += text
        placed.append((kind, len(parts[kind]) - 1, text))
    item = {"type": "reasoning", "id": item_id,
            "content": [{"type": "reasoning_text", "text": t} for t in parts["content"]],
            "summary": [{"type": "summary_text", "text": t} for t in parts["summary"]]}  # fmt: skip
    out = [Labelled({"type": "response.output_item.added", "output_index": n,
                     "item": {"type": "reasoning", "id": item_id, "summary": []}})]  # fmt: skip
    if streamed:
        for kind, i, text in placed:
            etype = ("response.reasoning_text.delta" if kind == "content"
                     else "response.reasoning_summary_text.delta")  # fmt: skip
            out.append(Labelled({"type": etype, "item_id": item_id, "output_index": n,
                                 "content_index": i, "summary_index": i, "delta": text},
                                [("reasoning_content", text, (n, kind, i))]))  # fmt: skip
    if not streamed or draw(st.booleans()):
        shows = [] if streamed else [
            ("reasoning_content", "\n\n".join(t for t in parts[kind] if t), (n, kind))
            for kind in ("content", "summary")
        ]  # fmt: skip
        out.append(Labelled({"type": "response.output_item.done", "output_index": n,
                             "item": item}, shows))  # fmt: skip
    return out, item


def with_gaps(shown: list[tuple[Any, ...]]) -> list[tuple[str, str]]:
    """``(field, text)`` for what the events show, a blank line in front of the
    first reasoning text of each part (``(field, text, part)``) after another."""
    parts: set[Any] = set()
    out = []
    for show in shown:
        field, text = show[:2]
        if len(show) == 3 and show[2] not in parts:
            text = ("\n\n" if parts else "") + text
            parts.add(show[2])
        out.append((field, text))
    return out


def call_events(draw: Any, n: int) -> tuple[list[Labelled], dict[str, Any]]:
    item_id, call_id = f"fc_{n}", f"call_{n}"
    name = draw(st.sampled_from(["developer__shell", "read_file", "write"]))
    pieces = draw(PIECES)
    full = "".join(pieces)
    mode = draw(st.sampled_from(["stream", "args_done", "item_done", "unannounced", "bare"]))
    item = {"type": "function_call", "id": item_id, "call_id": call_id, "name": name,
            "arguments": full, "status": "completed"}  # fmt: skip
    added = Labelled({"type": "response.output_item.added", "output_index": n,
                      "item": {**item, "arguments": "", "status": "in_progress"}},
                     call=call_id)  # fmt: skip
    done_args = Labelled({"type": "response.function_call_arguments.done", "item_id": item_id,
                          "output_index": n, "arguments": full})  # fmt: skip
    done_item = Labelled({"type": "response.output_item.done", "output_index": n, "item": item})
    out: list[Labelled] = []
    if mode != "unannounced" and mode != "bare":
        out.append(added)
    if mode in ("stream", "unannounced"):
        for piece in pieces:
            # some deltas name only the output_index
            event = {"type": "response.function_call_arguments.delta", "output_index": n,
                     "delta": piece}  # fmt: skip
            if mode == "unannounced" or draw(st.booleans()):
                event["item_id"] = item_id
            out.append(Labelled(event))
    if mode == "args_done" or (mode == "stream" and draw(st.booleans())):
        out.append(done_args)
    if mode in ("item_done", "unannounced", "bare", "args_done") or draw(st.booleans()):
        out.append(done_item)
    if mode in ("unannounced", "bare"):  # first sign of life: first non-empty delta or the item
        first = next((e for e in out if e.event.get("delta")), done_item)
        first.call = call_id
    return out, item


@st.composite
def scenarios(draw: Any) -> Scenario:
    kinds = draw(st.lists(st.sampled_from(["message", "reasoning", "call"]), max_size=5))
    per_item: list[list[Labelled]] = []
    final_items = []
    calls = {}
    for n, kind in enumerate(kinds):
        make = {"message": message_events, "reasoning": reasoning_events, "call": call_events}
        events, item = make[kind](draw, n)
        per_item.append(events)
        final_items.append(item)
        if kind == "call":
            calls[item["call_id"]] = (item["name"], item["arguments"])
    if kinds.count("message") == 1 and draw(st.booleans()):
        # the text deltas name neither their item nor its index
        for labelled in per_item[kinds.index("message")]:
            if labelled.event["type"].endswith(".delta"):
                labelled.event = {k: v for k, v in labelled.event.items()
                                  if k not in ("item_id", "output_index")}  # fmt: skip
    if draw(st.booleans()):
        # deltas that name their item but not its index
        for labelled in (e for events in per_item for e in events):
            if labelled.event["type"].endswith(".delta") and "item_id" in labelled.event:
                labelled.event = {k: v for k, v in labelled.event.items() if k != "output_index"}
    merged: list[Labelled] = []
    while any(per_item):
        live = [i for i, q in enumerate(per_item) if q]
        merged.append(per_item[draw(st.sampled_from(live))].pop(0))
    terminal = draw(st.sampled_from(["completed", "length", "content_filter", "failed",
                                     "error_flat", "error_nested", "eof"]))  # fmt: skip
    if terminal in ("failed", "error_flat", "error_nested", "eof"):
        merged = merged[: draw(st.integers(0, len(merged)))]
    failure = draw(st.sampled_from([
        "The LLM fell over",
        "This model's maximum context length is 8192 tokens.",
        "Rate limit reached for requests",
    ]))  # fmt: skip
    if draw(st.booleans()):
        created = {
            "type": "response.created",
            "response": {
                "id": "resp_prop",
                "created_at": 1700000000,
                "model": "backend",
                "output": [],
            },
        }
        merged.insert(0, Labelled(created))
    return Scenario(merged, terminal, failure, calls, final_items, draw(st.booleans()),
                    draw(st.booleans()), draw(st.booleans()))  # fmt: skip


def renamed(item: dict[str, Any]) -> dict[str, Any]:
    return item if item["type"] == "function_call" else {**item, "id": item["id"] + "_final"}


def terminal_event(s: Scenario) -> Optional[dict[str, Any]]:
    usage = {"input_tokens": 10, "output_tokens": 5, "total_tokens": 15}
    output = [renamed(item) if s.renamed else item for item in s.final_items]
    resp = {"id": "resp_prop", "created_at": 1700000000, "model": "backend", "usage": usage,
            "output": output if s.include_output else []}  # fmt: skip
    if s.terminal == "completed":
        return {"type": "response.completed", "response": {**resp, "status": "completed"}}
    if s.terminal in ("length", "content_filter"):
        reason = "max_output_tokens" if s.terminal == "length" else "content_filter"
        return {
            "type": "response.incomplete",
            "response": {**resp, "status": "incomplete", "incomplete_details": {"reason": reason}},
        }
    if s.terminal == "failed":
        return {
            "type": "response.failed",
            "response": {
                **resp,
                "status": "failed",
                "error": {"code": "server_error", "message": s.failure},
            },
        }
    if s.terminal == "error_flat":
        return {"type": "error", "code": None, "message": s.failure, "param": None}
    if s.terminal == "error_nested":
        return {"type": "error", "error": {"type": "server_error", "message": s.failure}}
    return None


def expected_error(message: str) -> type:
    if "context length" in message:
        return ContextLengthExceeded
    if "Rate limit" in message:
        return RateLimited
    return UpstreamError


def sdk_snapshot(parsed: list[Any]) -> Any:
    state: ChatCompletionStreamState[Any] = ChatCompletionStreamState()
    for chunk in chunks_of(parsed):
        state.handle_chunk(ChatCompletionChunk.model_validate(chunk))
    return state.current_completion_snapshot


def check_tool_fragments(parsed: list[Any]) -> list[int]:
    """Dense indices, first fragment complete, each call's fragments contiguous."""
    order = [f["index"] for d in deltas(parsed) for f in d.get("tool_calls", [])]
    seen: list[int] = []
    for frag in (f for d in deltas(parsed) for f in d.get("tool_calls", [])):
        if frag["index"] not in seen:
            assert frag["index"] == len(seen), "indices dense and in order"
            assert frag["id"] and frag["type"] == "function" and frag["function"]["name"]
            assert frag["function"]["arguments"] == ""
            seen.append(frag["index"])
        else:
            assert frag["index"] == seen[-1], "fragments of an earlier call after a later one"
            assert set(frag) == {"index", "function"} and set(frag["function"]) == {"arguments"}
    assert order == sorted(order)
    return seen


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios())
def test_random_streams_rebuild_exactly(s: Scenario) -> None:
    st_ = StreamTranslator(model="goose-model", include_usage=s.include_usage)
    frames: list[bytes] = []
    for labelled in s.events:
        frames += st_.feed(labelled.event)
    end = terminal_event(s)
    raised: Optional[ProxyError] = None
    try:
        frames += st_.feed(end) if end is not None else st_.finish()
        frames += st_.finish()  # harmless after a terminal event
    except ProxyError as exc:
        raised = exc

    shown = with_gaps([show for e in s.events for show in e.shows if show[1]])
    call_order = [e.call for e in s.events if e.call is not None]
    fails = s.terminal in ("failed", "error_flat", "error_nested", "eof")

    if raised is not None:  # only allowed before anything went out
        assert fails and frames == [] and not st_.started and st_.done
        assert not shown, "visible output happened, yet the failure was raised"
        wanted = expected_error(s.failure) if s.terminal != "eof" else UpstreamError
        assert isinstance(raised, wanted)
        return
    if fails:
        assert shown or call_order, "nothing was visible: the failure must be raised"

    parsed = parse_frames(frames)
    assert parsed[-1] == "[DONE]" and parsed.count("[DONE]") == 1
    errors = [f for f in parsed if isinstance(f, dict) and "error" in f]
    finishes = [c for c in chunks_of(parsed) if c["choices"] and c["choices"][0]["finish_reason"]]
    assert len(errors) + len(finishes) == 1
    seen = check_tool_fragments(parsed)
    snapshot = sdk_snapshot(parsed)
    message = snapshot.choices[0].message
    extra = message.to_dict()

    # a refusal is shown as content too (Goose reads only content)
    expected_text = "".join(t for f, t in shown if f in ("content", "refusal"))
    expected_refusal = "".join(t for f, t in shown if f == "refusal")
    expected_reasoning = "".join(t for f, t in shown if f == "reasoning_content")
    assert (message.content or "") == expected_text
    assert (message.refusal or "") == expected_refusal
    assert (extra.get("reasoning_content") or "") == expected_reasoning

    if fails:
        assert errors and parsed[-2] is errors[0]
        wanted = expected_error(s.failure) if s.terminal != "eof" else None
        if wanted is not None:
            assert errors[0]["error"]["message"] == s.failure
        assert len(seen) <= len(call_order)
        return

    assert [(c.id, c.function.name, c.function.arguments) for c in message.tool_calls or []] == [
        (cid, *s.calls[cid]) for cid in call_order
    ]
    reason = {"completed": "tool_calls" if call_order else "stop", "length": "length",
              "content_filter": "content_filter"}[s.terminal]  # fmt: skip
    assert snapshot.choices[0].finish_reason == reason
    if s.include_usage:
        assert snapshot.usage is not None and snapshot.usage.total_tokens == 15
        assert parsed[-2]["choices"] == [] and finishes[0] is chunks_of(parsed)[-2]
    else:
        assert finishes[0] is chunks_of(parsed)[-1]
    check_collected_the_same(s, end, snapshot)


def check_collected_the_same(s: Scenario, end: Any, snapshot: Any) -> None:
    """A client that did not stream gets what the stream showed. The stream
    shows interleaved items and parts in the order their events came, the
    collected answer item by item: text is compared whole where one part said
    it all."""
    events = [labelled.event for labelled in s.events]
    choice = responses_to_chat(accumulate([*events, end]), "goose-model")["choices"][0]
    message, streamed = choice["message"], snapshot.choices[0].message
    assert choice["finish_reason"] == snapshot.choices[0].finish_reason
    calls = sorted((c["id"], c["function"]["name"], c["function"]["arguments"])
                   for c in message.get("tool_calls", ()))  # fmt: skip
    assert calls == sorted((c.id, c.function.name, c.function.arguments)
                           for c in streamed.tool_calls or ())  # fmt: skip
    parts = sum(len(item["content"]) for item in s.final_items if item["type"] == "message")
    reasoning = message.get("reasoning_content")
    for mine, theirs, whole in ((message["content"], streamed.content, parts <= 1),
                                (message["refusal"], streamed.refusal, parts <= 1),
                                (reasoning, streamed.to_dict().get("reasoning_content"),
                                 False)):  # fmt: skip
        if whole:
            assert (mine or "") == (theirs or "")
        else:  # each piece once, in some order
            assert sorted(mine or "") == sorted(theirs or "")


@pytest.mark.parametrize("n_calls", [1, 3, 8])
def test_many_interleaved_calls_round_robin(n_calls: int) -> None:
    """A fixed worst case: every call's deltas interleaved round-robin."""
    st_ = StreamTranslator(model="m", include_usage=False)
    frames = []
    for i in range(n_calls):
        item = {"type": "function_call", "id": f"fc_{i}", "call_id": f"c{i}", "name": f"f{i}",
                "arguments": ""}  # fmt: skip
        frames += st_.feed({"type": "response.output_item.added", "output_index": i, "item": item})
    for step in range(3):
        for i in reversed(range(n_calls)):
            frames += st_.feed({"type": "response.function_call_arguments.delta",
                                "item_id": f"fc_{i}", "output_index": i,
                                "delta": f"<{i}.{step}>"})  # fmt: skip
    frames += st_.feed({"type": "response.completed", "response": {"output": []}})
    parsed = parse_frames(frames)
    assert check_tool_fragments(parsed) == list(range(n_calls))
    calls = sdk_snapshot(parsed).choices[0].message.tool_calls
    assert [(c.id, c.function.arguments) for c in calls] == [
        (f"c{i}", "".join(f"<{i}.{s}>" for s in range(3))) for i in range(n_calls)
    ]


def _one_index_item(kind: str, n: int, pieces: list[str]) -> list[list[dict[str, Any]]]:
    """The events of item ``n`` at output index 0 (as Llama Stack numbers all
    the calls of a turn), each group kept together when interleaved."""
    full = "".join(pieces)
    if kind == "call":
        item = {"type": "function_call", "id": f"fc_{n}", "call_id": f"c{n}", "name": f"f{n}"}
        delta = {"type": "response.function_call_arguments.delta", "item_id": f"fc_{n}"}
        final = {**item, "arguments": full, "status": "completed"}
        item = {**item, "arguments": ""}
    else:
        item = {"type": "message", "id": f"msg_{n}", "role": "assistant", "content": []}
        delta = {"type": "response.output_text.delta", "item_id": f"msg_{n}", "content_index": 0}
        final = {**item, "content": [{"type": "output_text", "text": full, "annotations": []}]}
    return [
        [{"type": "response.output_item.added", "output_index": 0, "item": item}],
        *([{**delta, "output_index": 0, "delta": piece}] for piece in pieces),
        [{"type": "response.output_item.done", "output_index": 0, "item": final}],
    ]


@settings(max_examples=200, deadline=None)
@given(
    items=st.lists(
        st.tuples(st.sampled_from(["message", "call"]), st.lists(TEXT, min_size=1, max_size=3)),
        min_size=2,
        max_size=4,
    ),
    output=st.sampled_from(["empty", "none", "full"]),
    data=st.data(),
)
def test_items_at_one_output_index_are_collected_as_streamed(
    items: list[tuple[str, list[str]]], output: str, data: st.DataObject
) -> None:
    # each item under its own id at one index: a client that did not stream
    # gets every call and all the text (the later item took the earlier's place)
    queues = [_one_index_item(kind, n, pieces) for n, (kind, pieces) in enumerate(items)]
    events: list[dict[str, Any]] = []
    while any(queues):
        live = [q for q in queues if q]
        events += data.draw(st.sampled_from(live)).pop(0)
    finals = [e["item"] for e in events if e["type"] == "response.output_item.done"]
    response = {"id": "r", "created_at": 1, "model": "m", "status": "completed"}
    end: dict[str, Any] = {"type": "response.completed", "response": response}
    if output != "none":
        response["output"] = finals if output == "full" else []
    st_ = StreamTranslator(model="m", include_usage=False)
    frames = [frame for event in [*events, end] for frame in st_.feed(event)]
    streamed = sdk_snapshot(parse_frames(frames)).choices[0].message
    message = responses_to_chat(accumulate([*events, end]), "m")["choices"][0]["message"]
    calls = [(f"c{n}", f"f{n}", "".join(p)) for n, (k, p) in enumerate(items) if k == "call"]
    collected = [(c["id"], c["function"]["name"], c["function"]["arguments"])
                 for c in message.get("tool_calls", ())]  # fmt: skip
    shown = [(c.id, c.function.name, c.function.arguments) for c in streamed.tool_calls or ()]
    assert sorted(collected) == sorted(shown) == calls
    text = "".join("".join(p) for k, p in items if k == "message")
    assert sorted(message["content"] or "") == sorted(streamed.content or "") == sorted(text)


def _utf16_halves(text: str) -> str:
    """``text`` with each character beyond U+FFFF written as its two surrogate
    halves, as a backend that works in UTF-16 (or writes ASCII escapes) has it."""
    out = []
    for c in text:
        n = ord(c) - 0x10000
        out.append(c if n < 0 else chr(0xD800 + (n >> 10)) + chr(0xDC00 + (n & 0x3FF)))
    return "".join(out)


ASTRAL_TEXT = st.text(
    alphabet=st.sampled_from(["a", "é", "日", "\U0001f30d", "\U0001f389", "\U00010348"]),
    min_size=1,
    max_size=12,
)


#: where a delta's text goes: (event type, chat delta field)
CHANNELS = {
    "text": ("response.output_text.delta", "content"),
    "refusal": ("response.refusal.delta", "refusal"),
    "reasoning": ("response.reasoning_summary_text.delta", "reasoning_content"),
    "arguments": ("response.function_call_arguments.delta", None),
}


def _channel_text(parsed: list[Any], field: Optional[str]) -> list[str]:
    """The pieces of one channel, chunk by chunk (tool call 0's arguments when
    ``field`` is None)."""
    if field is not None:
        return [d[field] for d in deltas(parsed) if d.get(field)]
    return [
        tc["function"]["arguments"]
        for d in deltas(parsed)
        for tc in d.get("tool_calls") or ()
        if tc["index"] == 0 and tc["function"].get("arguments")
    ]


@settings(max_examples=200, deadline=None)
@given(text=ASTRAL_TEXT, channel=st.sampled_from(sorted(CHANNELS)), data=st.data())
def test_a_surrogate_pair_cut_between_deltas_arrives_whole(
    text: str, channel: str, data: Any
) -> None:
    halves = _utf16_halves(text)
    cuts = sorted(set(data.draw(st.lists(st.integers(1, max(1, len(halves) - 1)), max_size=6))))
    pieces = [halves[a:b] for a, b in zip([0, *cuts], [*cuts, len(halves)]) if b > a]
    tail = data.draw(st.sampled_from(["completed", "tool call"]))
    etype, field = CHANNELS[channel]
    st_ = StreamTranslator(model="m", include_usage=False)
    frames: list[bytes] = []
    frames += st_.feed({"type": "response.created", "response": {"id": "r", "output": []}})
    if channel == "arguments":
        item = {"type": "function_call", "id": "fc_0", "call_id": "c0", "name": "f",
                "arguments": ""}  # fmt: skip
        frames += st_.feed({"type": "response.output_item.added", "output_index": 0, "item": item})
    item_id = "fc_0" if channel == "arguments" else "msg_1"
    for piece in pieces:
        frames += st_.feed({"type": etype, "item_id": item_id, "output_index": 0,
                            "content_index": 0, "summary_index": 0, "delta": piece})  # fmt: skip
    if tail == "tool call":
        item = {"type": "function_call", "id": "fc_1", "call_id": "c1", "name": "f",
                "arguments": "{}"}  # fmt: skip
        frames += st_.feed({"type": "response.output_item.added", "output_index": 1, "item": item})
    frames += st_.feed(
        {"type": "response.completed", "response": {"id": "r", "status": "completed"}}
    )
    pieces_out = _channel_text(parse_frames(frames), field)
    # every chunk's text is whole characters (a strict reader takes it) ...
    assert not any("\ud800" <= c <= "\udfff" for s in pieces_out for c in s)
    # ... and together they are the text
    assert "".join(pieces_out) == text


@settings(max_examples=200, deadline=None)
@given(
    text=ASTRAL_TEXT,
    channel=st.sampled_from(["text", "refusal"]),
    final=st.sampled_from(["part", "item", "output"]),
    data=st.data(),
)
def test_a_final_text_tops_up_deltas_that_cut_a_surrogate_pair_and_stopped_short(
    text: str, channel: str, final: str, data: Any
) -> None:
    # the deltas hold halves apart where the final text has one character (and
    # may end on a first half): what streamed, then the rest, is the final text
    halves = _utf16_halves(text)
    stop = data.draw(st.integers(1, len(halves)))
    cuts = sorted(set(data.draw(st.lists(st.integers(1, max(1, stop - 1)), max_size=4))))
    pieces = [halves[a:b] for a, b in zip([0, *cuts], [*cuts, stop]) if b > a]
    etype, field = CHANNELS[channel]
    part = {"type": "output_text", "text": text, "annotations": []}
    if channel == "refusal":
        part = {"type": "refusal", "refusal": text}
    item = {"type": "message", "id": "msg_1", "role": "assistant", "content": [part]}
    events: list[dict[str, Any]] = [
        {"type": "response.output_item.added", "output_index": 0,
         "item": {**item, "content": []}},
        *({"type": etype, "item_id": "msg_1", "output_index": 0, "content_index": 0,
           "delta": piece} for piece in pieces),
    ]  # fmt: skip
    if final == "part":
        events.append({"type": "response.content_part.done", "item_id": "msg_1",
                       "output_index": 0, "content_index": 0, "part": part})  # fmt: skip
    if final != "output":
        events.append({"type": "response.output_item.done", "output_index": 0, "item": item})
    output = [item] if final == "output" else []
    events.append({"type": "response.completed", "response": {"id": "r", "output": output}})
    st_ = StreamTranslator(model="m", include_usage=False)
    frames = [frame for event in events for frame in st_.feed(event)]
    pieces_out = _channel_text(parse_frames(frames), field)
    assert not any("\ud800" <= c <= "\udfff" for s in pieces_out for c in s)
    assert "".join(pieces_out) == text
    message = responses_to_chat(accumulate(events), "m")["choices"][0]["message"]
    assert message[field] == text
