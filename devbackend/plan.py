"""Decide the whole reply to one ``POST …/responses`` before any byte is sent.

:func:`plan_reply` turns the request (headers, body, knobs) into a
:class:`Reply`: the status, headers and body or SSE frames to send, plus how to
misbehave — wait, stall, cut the body, reset the socket, send garbage. The
server then only executes the reply. Pure apart from ids, time and reading the
replay captures.
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Optional

from . import lightspeed, scenarios
from .sse import Frame, Style
from .wire import reason

#: Where ``replay:<name>`` looks for captures, in order.
FIXTURE_DIRS = (
    Path(__file__).resolve().parent / "data",
    Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "lightspeed-0.7.1",
)
CTX_TOO_LONG_CAPTURE = "err_CTX_TOO_LONG_stream_true.txt"

#: Faults that decide the reply without looking at the request body.
TRANSPORT_FAULTS = frozenset({"stall", "reset_before_headers", "garbage"})
#: Faults that cut or hold a normal reply.
STREAM_FAULTS = frozenset({"stall_mid_stream", "reset_mid_body", "truncate", "keep_open", "close"})
#: Faults that change what the model "says".
CONTENT_FAULTS = frozenset(
    {
        "refusal",
        "shield",
        "reasoning",
        "parallel_tools",
        "args_only_in_done",
        "incomplete",
        "error_event",
        "ctx_too_long",
    }
)
#: Faults written ``name:argument``.
ARG_FAULTS = frozenset({"status", "replay", "big_event"})
ALL_FAULTS = TRANSPORT_FAULTS | STREAM_FAULTS | CONTENT_FAULTS | ARG_FAULTS

#: Non-HTTP bytes for the ``garbage`` fault.
GARBAGE = b"\x00\x01\x02\xffNOT-HTTP garbage from devbackend\r\n\xfe\xfd\r\n\r\n"

MAX_DELAY = 3600.0
MAX_DELTAS = 1_000_000
MAX_BIG_EVENT = 64 * 1024 * 1024

#: How a reply ends: ``end`` (finish the message, keep-alive allowed), ``close``
#: (close the socket gracefully without finishing), ``reset`` (abortive close,
#: RST), ``stall`` (send nothing more; wait until the client goes away).
ENDINGS = ("end", "close", "reset", "stall")

Headers = list[tuple[bytes, bytes]]


class KnobError(ValueError):
    """A malformed ``X-Dev-*`` header; answered with 400."""


@dataclass(frozen=True)
class Knobs:
    """The request's ``X-Dev-*`` headers, parsed."""

    delay_headers: float = 0.0
    event_delay: float = 0.0
    deltas: Optional[int] = None
    fault: str = ""
    fault_arg: str = ""


@dataclass
class Reply:
    """Everything the server sends (or withholds) for one request."""

    status: int = 200
    headers: Headers = field(default_factory=list)
    #: Content-Length body, used when ``frames`` is None.
    body: bytes = b""
    #: Chunked body: one chunk per frame.
    frames: Optional[list[bytes]] = None
    #: Send only this many bytes of ``body``, then apply ``ending``.
    cut: Optional[int] = None
    ending: str = "end"
    #: False: send no response head at all (``stall``, ``reset_before_headers``).
    send_head: bool = True
    #: Bytes written verbatim instead of an HTTP response (``garbage``).
    raw: bytes = b""
    delay_headers: float = 0.0
    event_delay: float = 0.0
    note: str = ""


@dataclass(frozen=True)
class PlanConfig:
    style: Style
    strict_fields: bool
    max_body_chars: int


@dataclass
class Incoming:
    """A received ``/responses`` request, decoded once by the server."""

    headers: Mapping[str, str]
    body_text: str
    body: Any
    parsed: bool


# --- headers ---------------------------------------------------------------

_date_cache: list[Any] = [0, b""]


def http_date() -> bytes:
    """The ``date`` header value, formatted at most once per second."""
    now = int(time.time())
    if _date_cache[0] != now:
        _date_cache[0] = now
        _date_cache[1] = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(now)).encode()
    value: bytes = _date_cache[1]
    return value


def _server(style: Style) -> bytes:
    return b"uvicorn" if style.lightspeed else b"devbackend"


def json_headers(style: Style, length: int) -> Headers:
    """Headers of a JSON reply, in the order of ``err_quota_429_stream.txt``."""
    return [
        (b"date", http_date()),
        (b"server", _server(style)),
        (b"content-length", b"%d" % length),
        (b"content-type", b"application/json"),
        (b"vary", b"Origin"),
    ]


def sse_headers(style: Style) -> Headers:
    """Headers of a stream (h11 adds ``Transfer-Encoding: chunked``)."""
    return [
        (b"date", http_date()),
        (b"server", _server(style)),
        (b"content-type", b"text/event-stream; charset=utf-8"),
        (b"vary", b"Origin"),
    ]


def json_reply(style: Style, status: int, body: bytes, note: str = "") -> Reply:
    return Reply(status, json_headers(style, len(body)), body, note=note)


def detail_reply(style: Style, status: int, detail: str) -> Reply:
    body = json.dumps({"detail": detail}, separators=(",", ":")).encode()
    return json_reply(style, status, body, note=detail)


# --- knobs ----------------------------------------------------------------


def _seconds(name: str, value: Optional[str]) -> float:
    if value is None:
        return 0.0
    try:
        seconds = float(value)
    except ValueError:
        raise KnobError(f"{name}: not a number of seconds: {value!r}") from None
    if not (math.isfinite(seconds) and 0 <= seconds <= MAX_DELAY):
        raise KnobError(f"{name}: must be between 0 and {MAX_DELAY:g} seconds: {value!r}")
    return seconds


def _count(name: str, value: str, low: int, high: int) -> int:
    try:
        n = int(value)
    except ValueError:
        raise KnobError(f"{name}: not an integer: {value!r}") from None
    if not low <= n <= high:
        raise KnobError(f"{name}: must be between {low} and {high}: {value!r}")
    return n


def parse_knobs(headers: Mapping[str, str]) -> Knobs:
    """Read the ``X-Dev-*`` headers (names lowercased). Raises :class:`KnobError`."""
    deltas = headers.get("x-dev-deltas")
    fault = headers.get("x-dev-fault", "").strip()
    name, _, arg = fault.partition(":")
    name, arg = name.strip(), arg.strip()
    if name and name not in ALL_FAULTS:
        raise KnobError(
            f"X-Dev-Fault: unknown fault {name!r} (known: {', '.join(sorted(ALL_FAULTS))})"
        )
    if name in ARG_FAULTS and not arg:
        raise KnobError(f"X-Dev-Fault: {name} needs an argument ({name}:…)")
    if name == "status":
        _count("X-Dev-Fault status", arg, 100, 599)
    elif name == "big_event":
        _count("X-Dev-Fault big_event", arg, 1, MAX_BIG_EVENT)
    elif name == "replay":
        find_capture(arg)
    return Knobs(
        delay_headers=_seconds("X-Dev-Delay-Headers", headers.get("x-dev-delay-headers")),
        event_delay=_seconds("X-Dev-Event-Delay", headers.get("x-dev-event-delay")),
        deltas=None if deltas is None else _count("X-Dev-Deltas", deltas, 0, MAX_DELTAS),
        fault=name,
        fault_arg=arg,
    )


# --- replay -------------------------------------------------------------------

_CAPTURE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*\Z")
_STATUS_IN_NAME = re.compile(r"(?:^|_)([1-5]\d\d)(?:_|\.|$)")
_EVENT_END = re.compile(rb"(?<=\n\n)")


def find_capture(name: str) -> Path:
    """The capture file ``name`` in :data:`FIXTURE_DIRS`. Raises :class:`KnobError`."""
    if not _CAPTURE_NAME.match(name) or ".." in name:
        raise KnobError(f"replay: bad capture name {name!r}")
    for directory in FIXTURE_DIRS:
        path = directory / name
        if path.is_file():
            return path
    raise KnobError(f"replay: no capture named {name!r}")


def _parse_head(head: bytes) -> tuple[int, Headers]:
    lines = head.replace(b"\r\n", b"\n").strip(b"\n").split(b"\n")
    status = int(lines[0].split()[1])
    headers = []
    for line in lines[1:]:
        key, _, value = line.partition(b":")
        headers.append((key.strip(), value.strip()))
    return status, headers


@lru_cache(maxsize=64)
def load_capture(name: str) -> tuple[int, tuple[tuple[bytes, bytes], ...], bytes, bool]:
    """A capture as (status, headers, body, chunked). Raises :class:`KnobError`."""
    path = find_capture(name)
    data = path.read_bytes()
    headers: Headers
    if data.startswith(b"HTTP/1."):
        head, _, body = data.partition(b"\r\n\r\n")
        status, headers = _parse_head(head)
    else:
        body = data
        head_file = path.with_name(path.name + ".headers")
        if head_file.is_file():
            status, headers = _parse_head(head_file.read_bytes())
        else:
            match = _STATUS_IN_NAME.search(name)
            status = int(match.group(1)) if match else 200
            headers = []
    framing = {k.lower(): v.lower() for k, v in headers}
    chunked = framing.get(b"transfer-encoding") == b"chunked" or (
        not headers and (body.startswith(b"event:") or body.startswith(b"data:"))
    )
    # h11 does the framing itself; a captured Content-Length stays valid only
    # because the body is sent verbatim.
    headers = [
        (k, v) for k, v in headers if k.lower() not in (b"transfer-encoding", b"content-length")
    ]
    if not headers:
        content_type = b"text/event-stream; charset=utf-8" if chunked else b"application/json"
        headers = [(b"server", b"uvicorn"), (b"content-type", content_type), (b"vary", b"Origin")]
    if not chunked:
        headers.append((b"content-length", b"%d" % len(body)))
    return status, tuple(headers), body, chunked


def replay_reply(name: str) -> Reply:
    status, headers, body, chunked = load_capture(name)
    if chunked:
        frames = [f for f in _EVENT_END.split(body) if f]
        return Reply(status, list(headers), frames=frames, note=f"replay {name}")
    return Reply(status, list(headers), body, note=f"replay {name}")


# --- the plan -----------------------------------------------------------------


def _status_reply(style: Style, status: int) -> Reply:
    body = lightspeed.error_body(status, reason(status))
    reply = json_reply(style, status, body, note=f"status {status}")
    if status == 429:
        reply.headers.append((b"retry-after", b"%d" % lightspeed.RETRY_AFTER_SECONDS))
    return reply


_TERMINAL = frozenset(
    {"response.completed", "response.incomplete", "response.failed", "error", "[DONE]"}
)


def _cut_stream(frames: list[Frame], knobs: Knobs) -> tuple[list[bytes], str]:
    """Apply a stream fault to the frames: which to send and how to end."""
    fault = knobs.fault
    if fault in ("stall_mid_stream", "reset_mid_body"):
        # Everything up to and including the second delta (or the last frame
        # before the terminal event, when there are fewer deltas).
        kept, deltas = [], 0
        for etype, frame in frames:
            if deltas == 2 or etype in _TERMINAL:
                break
            kept.append(frame)
            if etype.endswith(".delta"):
                deltas += 1
        return kept, "stall" if fault == "stall_mid_stream" else "reset"
    if fault == "truncate":
        return [f for etype, f in frames if etype not in _TERMINAL], "end"
    if fault == "keep_open":
        return [f for _, f in frames], "stall"
    return [f for _, f in frames], "end"


def _body_fault(reply: Reply, fault: str) -> Reply:
    """Apply a stream fault to a Content-Length body."""
    half = len(reply.body) // 2
    if fault == "stall_mid_stream":
        reply.cut, reply.ending = half, "stall"
    elif fault == "reset_mid_body":
        reply.cut, reply.ending = half, "reset"
    elif fault == "truncate":
        reply.cut, reply.ending = half, "close"
    elif fault == "close":
        reply.headers.append((b"connection", b"close"))
    return reply


def _failure_without_stream(style: Style, scenario: scenarios.Scenario) -> Reply:
    """What a non-streamed request gets when the model call fails."""
    if style.lightspeed:
        # Lightspeed 0.7.1 answers every failure of a non-streamed request alike.
        return json_reply(style, 500, lightspeed.BODY_500, note=scenario.outcome)
    error: dict[str, Any]
    if scenario.outcome == "failed":
        error = {
            "message": scenario.error_message,
            "type": "invalid_request_error",
            "code": "context_length_exceeded",
            "param": "input",
        }
        status = 400
    else:
        error = {
            "message": scenario.error_message,
            "type": "server_error",
            "code": "server_error",
            "param": None,
        }
        status = 500
    body = json.dumps({"error": error}, separators=(",", ":")).encode()
    return json_reply(style, status, body, note=scenario.outcome)


def plan_reply(request: Incoming, config: PlanConfig) -> Reply:
    """The reply to one ``POST …/responses``. Never raises for bad input."""
    style = config.style
    try:
        knobs = parse_knobs(request.headers)
    except KnobError as exc:
        return detail_reply(style, 400, str(exc))
    reply = _plan(request, config, knobs)
    reply.delay_headers = knobs.delay_headers
    reply.event_delay = knobs.event_delay
    if knobs.fault and not reply.note:
        reply.note = knobs.fault
    return reply


def _plan(request: Incoming, config: PlanConfig, knobs: Knobs) -> Reply:
    style, fault = config.style, knobs.fault
    if fault == "status":
        return _status_reply(style, int(knobs.fault_arg))
    if fault == "stall":
        return Reply(send_head=False, ending="stall", note="stall")
    if fault == "reset_before_headers":
        return Reply(send_head=False, ending="reset", note="reset_before_headers")
    if fault == "garbage":
        return Reply(raw=GARBAGE, ending="close", note="garbage")
    if fault == "replay":
        return replay_reply(knobs.fault_arg)

    problem = lightspeed.check_request(
        request.body,
        request.parsed,
        strict_fields=config.strict_fields,
        max_chars=config.max_body_chars,
    )
    if problem is not None:
        return json_reply(style, 422, problem, note="rejected")

    turn = scenarios.read_turn(request.body)
    content_fault = fault if fault in CONTENT_FAULTS or fault == "big_event" else ""
    scenario = scenarios.build_scenario(turn, content_fault, knobs.fault_arg, knobs.deltas)

    if turn.stream:
        if fault == "ctx_too_long" and style.lightspeed:
            return replay_reply(CTX_TOO_LONG_CAPTURE)
        values = scenarios.response_values(request.body, style)
        frames, ending = _cut_stream(scenarios.stream_frames(style, values, scenario), knobs)
        headers = sse_headers(style)
        if fault == "close":
            headers.append((b"connection", b"close"))
        return Reply(200, headers, frames=frames, ending=ending)

    if scenario.outcome in ("failed", "error_event"):
        return _failure_without_stream(style, scenario)
    values = scenarios.response_values(request.body, style, compact=True)
    body = scenarios.response_body(style, values, scenario)
    return _body_fault(json_reply(style, 200, body), fault)
