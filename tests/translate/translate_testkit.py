"""Small helpers for the translate tests: fixture access, SSE parsing, collecting.

The SSE parsing here is deliberately independent of the proxy's own code: it
splits on blank lines and joins ``data:`` lines, as the SSE spec says, so the
tests check the translator against the wire format rather than against itself.
"""

from __future__ import annotations

import json
from typing import Any, Union

from goose_proxy.translate import ResponseAccumulator
from tests.support import FIXTURES

Frame = Union[str, dict[str, Any]]


def fixture_text(name: str) -> str:
    return (FIXTURES / name).read_text(encoding="utf-8")


def fixture_json(name: str) -> Any:
    return json.loads(fixture_text(name))


def sse_data_blocks(text: str) -> list[str]:
    """The ``data`` payload of every SSE event in ``text`` (``event:`` lines ignored)."""
    payloads = []
    for block in text.replace("\r\n", "\n").split("\n\n"):
        lines = [line for line in block.split("\n") if line and not line.startswith(":")]
        data = [line[5:].removeprefix(" ") for line in lines if line.startswith("data:")]
        if data:
            payloads.append("\n".join(data))
    return payloads


def capture_events(name: str) -> list[dict[str, Any]]:
    """The Responses events of a capture file, without the ``[DONE]`` sentinel."""
    return [json.loads(p) for p in sse_data_blocks(fixture_text(name)) if p != "[DONE]"]


#: what the proxy escapes of the characters JSON may hold raw
LINE_ENDS = {0x85: "\\u0085", 0x2028: "\\u2028", 0x2029: "\\u2029"}


def parse_frames(frames: list[bytes]) -> list[Frame]:
    """Parse the translator's output; every frame must be exactly ``data: <json>\\n\\n``.

    Returns ``"[DONE]"`` for the sentinel and the decoded JSON object otherwise.
    """
    out: list[Frame] = []
    for frame in frames:
        assert isinstance(frame, bytes)
        assert frame.startswith(b"data: ") and frame.endswith(b"\n\n"), frame
        body = frame[len(b"data: ") : -2]
        assert b"\n" not in body and b"\r" not in body, frame
        text = body.decode("utf-8")  # must be valid UTF-8
        # one line for a client that splits lines as str.splitlines does too
        assert text.splitlines() == [text], frame
        if text == "[DONE]":
            out.append("[DONE]")
            continue
        doc = json.loads(text)
        # compact JSON, non-ASCII kept as is but for U+0085, U+2028, U+2029
        compact = json.dumps(doc, separators=(",", ":"), ensure_ascii=False)
        assert text == compact.translate(LINE_ENDS) or "\\ud" in text
        out.append(doc)
    return out


def joined_stream(frames: list[bytes]) -> list[Frame]:
    """Parse a whole output byte stream as a client would (blank-line separated events)."""
    blob = b"".join(frames).decode("utf-8")
    assert blob.endswith("\n\n")
    out: list[Frame] = []
    for payload in sse_data_blocks(blob):
        out.append("[DONE]" if payload == "[DONE]" else json.loads(payload))
    return out


def chunks_of(parsed: list[Frame]) -> list[dict[str, Any]]:
    """The normal chunks (no error frame, no sentinel)."""
    return [f for f in parsed if isinstance(f, dict) and "error" not in f]


def deltas(parsed: list[Frame]) -> list[dict[str, Any]]:
    return [c["choices"][0]["delta"] for c in chunks_of(parsed) if c["choices"]]


def text_of(parsed: list[Frame], key: str = "content") -> str:
    return "".join(d.get(key) or "" for d in deltas(parsed))


def tool_calls_of(parsed: list[Frame]) -> list[dict[str, Any]]:
    """Rebuild tool calls from fragments by index (what Goose does)."""
    calls: dict[int, dict[str, Any]] = {}
    for d in deltas(parsed):
        for frag in d.get("tool_calls") or ():
            call = calls.setdefault(frag["index"], {"id": None, "name": None, "arguments": ""})
            if "id" in frag:
                call["id"] = frag["id"]
            fn = frag.get("function") or {}
            if "name" in fn:
                call["name"] = fn["name"]
            call["arguments"] += fn.get("arguments") or ""
    return [calls[i] for i in sorted(calls)]


def finish_reasons(parsed: list[Frame]) -> list[str]:
    return [
        c["choices"][0]["finish_reason"]
        for c in chunks_of(parsed)
        if c["choices"] and c["choices"][0]["finish_reason"] is not None
    ]


def accumulate(events: list[dict[str, Any]]) -> dict[str, Any]:
    """The Response a client that did not stream is answered from."""
    acc = ResponseAccumulator()
    for event in events:
        acc.feed(event)
    return acc.result()
