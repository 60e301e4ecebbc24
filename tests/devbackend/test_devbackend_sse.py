"""Pure tests: templates, and the generated events against the real captures."""

from __future__ import annotations

import json
from typing import Any

import pytest

from devbackend import scenarios
from devbackend.client import parse_sse
from devbackend.sse import Template, get_style, hole, jstr
from tests.support import FIXTURES


def capture_events(name: str) -> list[tuple[str | None, str]]:
    return parse_sse((FIXTURES / name).read_bytes())


def generated(body: dict[str, Any], style: str = "lightspeed", fault: str = "") -> bytes:
    st = get_style(style)
    scenario = scenarios.build_scenario(scenarios.read_turn(body), fault)
    values = scenarios.response_values(body, st)
    return b"".join(frame for _, frame in scenarios.stream_frames(st, values, scenario))


def collapse(names: Any) -> list[Any]:
    out: list[Any] = []
    for name in names:
        if not out or out[-1] != name:
            out.append(name)
    return out


def test_template_fills_holes_with_json_text() -> None:
    t = Template([("a", hole("x")), ("b", [1, hole("y")]), ("c", "lit")], (", ", ": "), "<", ">")
    assert t.names == ("x", "y")
    out = t.render({"x": jstr('he said "hi"\n\u00e9'), "y": '{"k": null}'})
    assert out.startswith("<") and out.endswith(">")
    assert json.loads(out[1:-1]) == {"a": 'he said "hi"\n\u00e9', "b": [1, {"k": None}], "c": "lit"}


def test_template_missing_value_raises() -> None:
    with pytest.raises(KeyError):
        Template([("a", hole("x"))], (",", ":")).render({})


def test_unknown_style() -> None:
    with pytest.raises(ValueError, match="unknown style"):
        get_style("grpc")


@pytest.mark.parametrize(
    ("capture", "body"),
    [
        (
            "lcs_stream_text.sse",
            {"input": [{"type": "message", "role": "user", "content": "hi there"}], "stream": True},
        ),
        ("lcs_stream_tool.sse", json.loads((FIXTURES / "req_tool.json").read_text())),
        (
            "lcs_stream_tool_followup.sse",
            json.loads((FIXTURES / "req_tool_followup.json").read_text()),
        ),
    ],
)
def test_lightspeed_stream_matches_capture_shapes(capture: str, body: dict[str, Any]) -> None:
    want = capture_events(capture)
    got = parse_sse(generated(body))
    # The same event sequence (runs of deltas collapsed: the texts differ) ...
    assert collapse(name for name, _ in got) == collapse(name for name, _ in want)
    assert got[-1] == want[-1] == (None, "[DONE]")
    want_by_type = {name: json.loads(data) for name, data in reversed(want[:-1])}
    for name, data in got[:-1]:
        obj, want_obj = json.loads(data), want_by_type[name]
        assert obj["type"] == name
        # ... each event with the capture's keys in the capture's order ...
        assert list(obj) == list(want_obj), name
        for key in ("item", "part"):
            if key in want_obj:
                assert list(obj[key]) == list(want_obj[key]), (name, key)
        # (the capture's own response key order varies between events)
        if "response" in want_obj:
            assert set(obj["response"]) == set(want_obj["response"]), name
        # ... and JSON with spaces, like Python's json.dumps defaults.
        assert data == json.dumps(obj), name
    assert [json.loads(d)["sequence_number"] for _, d in got[:-1]] == list(range(len(got) - 1))


def test_text_stream_is_consistent() -> None:
    body = {"input": [{"type": "message", "role": "user", "content": "hi there"}], "stream": True}
    events = [json.loads(d) for _, d in parse_sse(generated(body)) if d != "[DONE]"]
    deltas = [e["delta"] for e in events if e["type"] == "response.output_text.delta"]
    text = "Hello from goose-proxy dev backend. You said: hi there"
    assert "".join(deltas) == text
    assert len(deltas) > 3
    done = next(e for e in events if e["type"] == "response.content_part.done")
    assert done["part"]["text"] == text
    completed = events[-1]["response"]
    assert completed["status"] == "completed"
    assert completed["output_text"] == text
    assert completed["usage"]["total_tokens"] == (
        completed["usage"]["input_tokens"] + completed["usage"]["output_tokens"]
    )
    ids = {e["response"]["id"] for e in events if "response" in e}
    assert len(ids) == 1 and ids == {e["response_id"] for e in events if "response_id" in e}


def test_tool_call_arguments_in_two_deltas() -> None:
    body = json.loads((FIXTURES / "req_tool.json").read_text())
    events = [json.loads(d) for _, d in parse_sse(generated(body)) if d != "[DONE]"]
    added = events[2]["item"]
    assert added["type"] == "function_call" and added["name"] == "developer__shell"
    deltas = [e["delta"] for e in events if e["type"] == "response.function_call_arguments.delta"]
    assert len(deltas) == 2
    assert json.loads("".join(deltas)) == {"command": "fake"}
    assert events[-1]["response"]["output"][0]["call_id"] == added["call_id"]


def test_followup_quotes_tool_output() -> None:
    body = json.loads((FIXTURES / "req_tool_followup.json").read_text())
    events = [json.loads(d) for _, d in parse_sse(generated(body)) if d != "[DONE]"]
    assert events[-1]["response"]["output_text"] == "Tool said: file_a.txt\nfile_b.txt"


def test_openai_style_matches_ogx_capture_framing() -> None:
    want = capture_events("ogx_stream_text.sse")
    body = {"input": "hi there", "stream": True}
    raw = generated(body, style="openai")
    got = parse_sse(raw)
    assert b"event:" not in raw and b"[DONE]" not in raw
    assert all(name is None for name, _ in got)
    created, want_created = json.loads(got[0][1]), json.loads(want[0][1])
    assert list(created["response"]) == list(want_created["response"])
    assert got[0][1] == json.dumps(created, separators=(",", ":"))
    types = [json.loads(d)["type"] for _, d in got]
    # A plain Responses server also sends output_text.done.
    assert "response.output_text.done" in types
    assert types[-1] == "response.completed"


def test_nonstream_body_matches_capture_keys() -> None:
    want = json.loads((FIXTURES / "lcs_nonstream_text.json").read_text())
    st = get_style("lightspeed")
    body = {"input": "hi there"}
    values = scenarios.response_values(body, st, compact=True)
    scenario = scenarios.build_scenario(scenarios.read_turn(body))
    raw = scenarios.response_body(st, values, scenario)
    got = json.loads(raw)
    assert list(got) == list(want)
    assert raw == json.dumps(got, separators=(",", ":")).encode()
    assert got["output_text"] == "Hello from goose-proxy dev backend. You said: hi there"


def test_nonstream_tool_matches_capture() -> None:
    want = json.loads((FIXTURES / "lcs_nonstream_tool.json").read_text())
    st = get_style("lightspeed")
    body = json.loads((FIXTURES / "req_tool.json").read_text())
    body["stream"] = False
    scenario = scenarios.build_scenario(scenarios.read_turn(body))
    got = json.loads(
        scenarios.response_body(st, scenarios.response_values(body, st, compact=True), scenario)
    )
    assert list(got) == list(want)
    assert list(got["output"][0]) == list(want["output"][0])
    assert got["output"][0]["arguments"] == want["output"][0]["arguments"]
    assert got["tools"][0]["strict"] is None


@pytest.mark.parametrize(
    ("text", "count", "expected"),
    [
        ("a b c d", None, ["a", " b", " c", " d"]),
        ("a b c d", 2, ["a b", " c d"]),
        ("a b c", 2, ["a b", " c"]),
        ("a b", 0, []),
        ("a b", 5, ["a", " b", "a", " b", "a"]),
    ],
)
def test_split_deltas(text: str, count: int | None, expected: list[str]) -> None:
    grown, pieces = scenarios.split_deltas(text, count)
    assert pieces == expected
    assert "".join(pieces) == grown or count == 0


def test_fake_arguments_follow_schema() -> None:
    schema = {
        "type": "object",
        "properties": {"path": {"type": "string"}, "n": {"type": "integer"}, "x": {}},
        "required": ["path", "n"],
    }
    assert json.loads(scenarios.fake_arguments(schema)) == {"path": "fake", "n": 1}
    assert scenarios.fake_arguments(None) == "{}"
