"""Pure tests of the reply planning: knobs, Lightspeed validation, faults, replay."""

from __future__ import annotations

import json
from typing import Any, Optional

import pytest

from devbackend import lightspeed
from devbackend.client import parse_sse
from devbackend.plan import (
    ALL_FAULTS,
    FIXTURE_DIRS,
    Incoming,
    KnobError,
    PlanConfig,
    Reply,
    load_capture,
    parse_knobs,
    plan_reply,
)
from devbackend.sse import get_style
from tests.support import FIXTURES

LIGHTSPEED = PlanConfig(get_style("lightspeed"), strict_fields=True, max_body_chars=65536)
OPENAI = PlanConfig(get_style("openai"), strict_fields=False, max_body_chars=0)
STREAM = {
    "input": [{"type": "message", "role": "user", "content": "one two three four"}],
    "stream": True,
}


def plan(
    body: Any = None,
    headers: Optional[dict[str, str]] = None,
    config: PlanConfig = LIGHTSPEED,
    raw: Optional[str] = None,
) -> Reply:
    text = raw if raw is not None else json.dumps(STREAM if body is None else body)
    try:
        obj, parsed = json.loads(text), True
    except ValueError:
        obj, parsed = None, False
    return plan_reply(Incoming(headers or {}, text, obj, parsed), config)


def types(reply: Reply) -> list[str]:
    assert reply.frames is not None
    names = [name for name, _ in parse_sse(b"".join(reply.frames))]
    return [n or "?" for n in names]


def header(reply: Reply, name: bytes) -> Optional[bytes]:
    return next((v for k, v in reply.headers if k == name), None)


# --- knobs ------------------------------------------------------------------


def test_knobs_parse() -> None:
    knobs = parse_knobs(
        {
            "x-dev-delay-headers": "0.5",
            "x-dev-event-delay": "0.01",
            "x-dev-deltas": "7",
            "x-dev-fault": " status : 429 ",
        }
    )
    assert (knobs.delay_headers, knobs.event_delay, knobs.deltas) == (0.5, 0.01, 7)
    assert (knobs.fault, knobs.fault_arg) == ("status", "429")


@pytest.mark.parametrize(
    "headers",
    [
        {"x-dev-delay-headers": "soon"},
        {"x-dev-event-delay": "-1"},
        {"x-dev-event-delay": "nan"},
        {"x-dev-deltas": "1.5"},
        {"x-dev-deltas": "-2"},
        {"x-dev-fault": "explode"},
        {"x-dev-fault": "status"},
        {"x-dev-fault": "status:99"},
        {"x-dev-fault": "big_event:0"},
        {"x-dev-fault": "replay:../../etc/passwd"},
        {"x-dev-fault": "replay:nope.sse"},
    ],
)
def test_bad_knobs_are_rejected(headers: dict[str, str]) -> None:
    with pytest.raises(KnobError):
        parse_knobs(headers)
    reply = plan(headers=headers)
    assert reply.status == 400
    assert isinstance(json.loads(reply.body)["detail"], str)


# --- Lightspeed validation -------------------------------------------------------


def test_extra_field_422_is_byte_identical_to_capture() -> None:
    reply = plan({"input": "hi", "foo": 1})
    assert reply.status == 422
    assert reply.body == (FIXTURES / "err_422_extra_field.json").read_bytes().strip()


def test_every_accepted_field_passes() -> None:
    body: dict[str, Any] = {name: None for name in lightspeed.ACCEPTED_FIELDS}
    body.update(input="hi", stream=False)
    assert plan(body).status == 200


@pytest.mark.parametrize("field", ["top_p", "user", "service_tier", "stream_options"])
def test_fields_lightspeed_refuses(field: str) -> None:
    reply = plan({"input": "hi", field: 1})
    assert reply.status == 422
    assert json.loads(reply.body)["detail"][0]["loc"] == ["body", field]


def test_body_cap() -> None:
    # counted as Lightspeed Stack counts: len(json.dumps(body)), so "é" is 6
    body = {"input": "x" * 65_536}
    reply = plan(body)
    assert reply.status == 422
    (entry,) = json.loads(reply.body)["detail"]
    assert (entry["type"], entry["loc"]) == ("value_error", ["body"])
    assert "Request body size (65549 characters) exceeds maximum allowed size" in entry["msg"]
    assert plan({"input": "x" * 65_000}).status == 200
    assert plan({"input": "é" * 11_000}).status == 422  # 66,013 by that count
    assert plan(body, config=OPENAI).status == 200


@pytest.mark.parametrize(
    ("raw", "kind"),
    [("{not json", "json_invalid"), ("[1]", "model_attributes_type"), ("{}", "missing")],
)
def test_malformed_bodies(raw: str, kind: str) -> None:
    reply = plan(raw=raw)
    assert reply.status == 422
    assert json.loads(reply.body)["detail"][0]["type"] == kind


def test_openai_mode_accepts_any_field() -> None:
    reply = plan({"input": "hi", "top_p": 0.5, "user": "u"}, config=OPENAI)
    assert reply.status == 200


# --- replies -----------------------------------------------------------------


def test_default_stream_plan() -> None:
    reply = plan()
    assert reply.status == 200 and reply.ending == "end"
    assert header(reply, b"content-type") == b"text/event-stream; charset=utf-8"
    assert header(reply, b"content-length") is None
    names = types(reply)
    assert names[0] == "response.created" and names[-2:] == ["response.completed", "?"]


def test_nonstream_plan_has_content_length() -> None:
    reply = plan({"input": "hi"})
    assert reply.frames is None
    assert header(reply, b"content-length") == str(len(reply.body)).encode()
    assert json.loads(reply.body)["status"] == "completed"


def test_deltas_knob() -> None:
    reply = plan(headers={"x-dev-deltas": "40"})
    assert types(reply).count("response.output_text.delta") == 40
    reply = plan(headers={"x-dev-deltas": "0"})
    assert "response.output_text.delta" not in types(reply)


@pytest.mark.parametrize(
    ("status", "body"),
    [
        (401, lightspeed.BODY_401),
        (403, lightspeed.BODY_403),
        (413, lightspeed.BODY_413),
        (422, (FIXTURES / "err_422_extra_field.json").read_bytes().strip()),
        (429, lightspeed.BODY_429),
        (500, (FIXTURES / "err_FAIL_500_stream_false.txt").read_bytes().strip()),
        (
            503,
            b'{"detail":{"response":"Service Unavailable",'
            b'"cause":"Service Unavailable (dev backend)"}}',
        ),
        (404, b'{"detail":"Not Found"}'),
    ],
)
def test_status_faults(status: int, body: bytes) -> None:
    reply = plan(headers={"x-dev-fault": f"status:{status}"})
    assert (reply.status, reply.body) == (status, body)
    assert header(reply, b"retry-after") == (b"7" if status == 429 else None)


def test_quota_body_matches_capture() -> None:
    capture = (FIXTURES / "err_quota_429_stream.txt").read_bytes()
    assert capture.endswith(lightspeed.BODY_429)
    assert lightspeed.BODY_401 in (FIXTURES / "err_auth_quota.txt").read_bytes()
    assert lightspeed.BODY_403 in (FIXTURES / "err_auth_quota.txt").read_bytes()


def test_ctx_too_long() -> None:
    reply = plan(headers={"x-dev-fault": "ctx_too_long"})
    assert reply.frames is not None
    assert b"".join(reply.frames) == (FIXTURES / "err_CTX_TOO_LONG_stream_true.txt").read_bytes()
    nonstream = plan({"input": "hi"}, headers={"x-dev-fault": "ctx_too_long"})
    assert (nonstream.status, nonstream.body) == (500, lightspeed.BODY_500)
    generated = plan(headers={"x-dev-fault": "ctx_too_long"}, config=OPENAI)
    events = [json.loads(d) for _, d in parse_sse(b"".join(generated.frames or []))]
    assert events[-1]["type"] == "response.failed"
    assert "maximum context length" in events[-1]["response"]["error"]["message"]
    openai_nonstream = plan({"input": "hi"}, headers={"x-dev-fault": "ctx_too_long"}, config=OPENAI)
    assert openai_nonstream.status == 400
    assert json.loads(openai_nonstream.body)["error"]["code"] == "context_length_exceeded"


@pytest.mark.parametrize(
    ("fault", "ending", "send_head"),
    [
        ("stall", "stall", False),
        ("reset_before_headers", "reset", False),
        ("garbage", "close", True),
    ],
)
def test_transport_faults(fault: str, ending: str, send_head: bool) -> None:
    reply = plan(headers={"x-dev-fault": fault})
    assert (reply.ending, reply.send_head) == (ending, send_head)
    assert bool(reply.raw) == (fault == "garbage")


def test_stream_cuts() -> None:
    mid = plan(headers={"x-dev-fault": "stall_mid_stream"})
    assert mid.ending == "stall"
    assert types(mid).count("response.output_text.delta") == 2
    assert types(mid)[-1] == "response.output_text.delta"
    reset = plan(headers={"x-dev-fault": "reset_mid_body"})
    assert reset.ending == "reset" and types(reset) == types(mid)
    truncated = plan(headers={"x-dev-fault": "truncate"})
    assert truncated.ending == "end"
    assert types(truncated)[-1] == "response.output_item.done"
    kept = plan(headers={"x-dev-fault": "keep_open"})
    assert kept.ending == "stall" and types(kept)[-1] == "?"
    close = plan(headers={"x-dev-fault": "close"})
    assert header(close, b"connection") == b"close" and close.ending == "end"


@pytest.mark.parametrize(
    ("fault", "ending"),
    [("stall_mid_stream", "stall"), ("reset_mid_body", "reset"), ("truncate", "close")],
)
def test_body_cuts(fault: str, ending: str) -> None:
    reply = plan({"input": "hi"}, headers={"x-dev-fault": fault})
    assert reply.cut == len(reply.body) // 2 and reply.ending == ending


def events_of(reply: Reply) -> list[dict[str, Any]]:
    return [json.loads(d) for _, d in parse_sse(b"".join(reply.frames or [])) if d != "[DONE]"]


def test_content_faults() -> None:
    tools: list[dict[str, Any]] = [
        {"type": "function", "name": n, "parameters": {}} for n in ("a", "b")
    ]
    refusal = events_of(plan(headers={"x-dev-fault": "refusal"}))
    assert any(e["type"] == "response.refusal.delta" for e in refusal)
    assert refusal[-1]["response"]["output"][0]["content"][0]["type"] == "refusal"

    shield = events_of(plan(headers={"x-dev-fault": "shield"}))
    assert [e["type"] for e in shield] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.output_item.done",
        "response.completed",
    ]
    assert shield[3]["item"]["content"][0]["text"]

    reasoning = events_of(plan(headers={"x-dev-fault": "reasoning"}))
    kinds = [e["type"] for e in reasoning]
    assert kinds.index("response.reasoning_text.delta") < kinds.index("response.output_text.delta")
    assert reasoning[-1]["response"]["usage"]["output_tokens_details"]["reasoning_tokens"] > 0

    parallel = events_of(plan({**STREAM, "tools": tools}, {"x-dev-fault": "parallel_tools"}))
    arg_items = [e["item_id"] for e in parallel if e["type"].endswith("arguments.delta")]
    assert len(set(arg_items)) == 2 and arg_items[0] != arg_items[1]  # interleaved
    names = [e["item"]["name"] for e in parallel if e["type"] == "response.output_item.added"]
    assert names == ["a", "b"]

    only_done = events_of(plan(headers={"x-dev-fault": "args_only_in_done"}))
    assert not any(e["type"].endswith("arguments.delta") for e in only_done)
    assert any(e["type"] == "response.function_call_arguments.done" for e in only_done)

    incomplete = events_of(plan(headers={"x-dev-fault": "incomplete"}))
    assert incomplete[-1]["type"] == "response.incomplete"
    assert incomplete[-1]["response"]["incomplete_details"] == {"reason": "max_output_tokens"}

    error = events_of(plan(headers={"x-dev-fault": "error_event"}))
    assert error[-1]["type"] == "error" and error[-1]["code"] == "server_error"
    assert "response" not in error[-1]

    big = events_of(plan(headers={"x-dev-fault": "big_event:100000"}))
    deltas = [e["delta"] for e in big if e["type"] == "response.output_text.delta"]
    assert [len(d) for d in deltas] == [100000]


@pytest.mark.parametrize("fault", sorted(ALL_FAULTS - {"status", "replay", "big_event"}))
def test_every_fault_plans_for_both_modes_and_framings(fault: str) -> None:
    for config in (LIGHTSPEED, OPENAI):
        for stream in (True, False):
            reply = plan({**STREAM, "stream": stream}, {"x-dev-fault": fault}, config)
            assert reply.status in (200, 400, 500), (fault, stream)


# --- replay ------------------------------------------------------------------


def test_data_copy_matches_fixture() -> None:
    for path in FIXTURE_DIRS[0].iterdir():
        assert path.read_bytes() == (FIXTURES / path.name).read_bytes()


@pytest.mark.parametrize(
    "path", sorted(p.name for p in FIXTURES.iterdir() if p.suffix != ".headers")
)
def test_every_capture_loads(path: str) -> None:
    status, _, body, _ = load_capture(path)
    assert 200 <= status < 600 and body


def test_replay_stream_with_headers_file() -> None:
    reply = plan(headers={"x-dev-fault": "replay:lcs_stream_text.sse"})
    assert reply.status == 200 and reply.frames is not None
    assert b"".join(reply.frames) == (FIXTURES / "lcs_stream_text.sse").read_bytes()
    assert all(f.endswith(b"\n\n") for f in reply.frames)
    assert (b"server", b"uvicorn") in reply.headers
    assert (b"date", b"Wed, 25 Nov 2026 20:13:40 GMT") in reply.headers


def test_replay_full_http_capture() -> None:
    reply = plan(headers={"x-dev-fault": "replay:err_quota_429_stream.txt"})
    assert reply.status == 429 and reply.frames is None
    assert reply.body == lightspeed.BODY_429
    assert header(reply, b"content-length") == b"129"


@pytest.mark.parametrize(
    ("name", "status"), [("err_422_extra_field.json", 422), ("err_FAIL_500_stream_false.txt", 500)]
)
def test_replay_status_from_name(name: str, status: int) -> None:
    reply = plan(headers={"x-dev-fault": f"replay:{name}"})
    assert reply.status == status
    assert reply.body == (FIXTURES / name).read_bytes()
