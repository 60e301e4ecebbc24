"""What every fuzz example must satisfy, and the bounded client that checks it.

For any input: every reply is a well-formed HTTP/1.1 response (strictly
parsed), never a 500 and never the proxy's ``internal_error``; every error is
the OpenAI envelope; every chat stream keeps its invariants; the exchange ends
within :data:`HANG` seconds; and afterwards the proxy still answers
``/health`` and has logged no internal error.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from types import SimpleNamespace
from typing import Optional, Union

import anyio
import h11
from hypothesis import settings

from tests.fuzz import COMMON
from tests.reliability.support import (
    Malformed,
    Response,
    chat_stream_outcome,
    parse_responses,
    read_all,
    request_bytes,
)

#: the longest one exchange may take: the proxy's header_timeout (2 s) plus margin
HANG = 8.0

#: the fuzz tests' settings: under the "long" profile that profile (random, with
#: Hypothesis' database); otherwise a short CI run, derandomized (the same
#: examples every run), without a database. Built at import, after
#: ``--hypothesis-profile``.
FUZZ = (
    settings()
    if settings.get_current_profile_name() == "long"
    else settings(max_examples=50, derandomize=True, database=None, **COMMON)
)


async def _send_recv(port: int, data: bytes, half_close: bool) -> bytes:
    with anyio.fail_after(HANG):
        async with await anyio.connect_tcp("127.0.0.1", port) as s:
            try:
                await s.send(data)
                if half_close:
                    await s.send_eof()
            except (anyio.BrokenResourceError, OSError):
                pass  # the proxy answered early and hung up: read what it said
            return await read_all(s)


def exchange(target: SimpleNamespace, data: bytes, *, half_close: bool = True) -> bytes:
    """Send raw bytes (then our FIN, unless told otherwise); all bytes until the close."""
    raw: bytes = target.call(_send_recv, target.port, data, half_close)
    return raw


def head_flags(data: bytes) -> list[bool]:
    """For each request in ``data`` as h11 (the proxy's parser) splits it: is it HEAD?

    A request h11 cannot parse counts as HEAD when its bytes start like one
    (the proxy answers it without a body too); parsing stops there.
    """
    conn = h11.Connection(h11.SERVER)
    conn.receive_data(data)
    conn.receive_data(b"")
    flags: list[bool] = []
    pending = data
    while True:
        try:
            ev = conn.next_event()
        except h11.RemoteProtocolError:
            flags.append(pending.startswith(b"HEAD "))
            return flags
        if isinstance(ev, h11.Request):
            flags.append(ev.method == b"HEAD")
        elif isinstance(ev, h11.EndOfMessage):
            try:
                conn.send(h11.Response(status_code=200, headers=[(b"content-length", b"0")]))
                conn.send(h11.EndOfMessage())
                conn.start_next_cycle()
            except h11.LocalProtocolError:
                return flags
            pending = conn.trailing_data[0]
        elif ev is h11.NEED_DATA or ev is h11.PAUSED or isinstance(ev, h11.ConnectionClosed):
            return flags


def check_replies(
    raw: bytes, *, head_request: Union[bool, Sequence[bool]] = False, cut_ok: bool = False
) -> list[Response]:
    """Parse and check every reply in ``raw``.

    ``cut_ok``: the client half-closed, so a streamed 200 cut short at the end
    is allowed (a client that went away gets its stream cancelled).
    """
    try:
        responses, rest = parse_responses(raw, head_request)
    except Malformed:
        if not cut_ok:
            raise
        start = raw.rfind(b"HTTP/1.1 200 ")
        assert start >= 0 and b"transfer-encoding: chunked" in raw[start:].lower(), raw[-500:]
        responses, rest = parse_responses(raw[:start], head_request)
    assert rest == b"", rest[:300]
    for i, r in enumerate(responses):
        if isinstance(head_request, bool):
            head = head_request
        else:
            head = i < len(head_request) and head_request[i]
        check_response(r, head)
    return responses


def check_response(r: Response, head_request: bool = False) -> None:
    assert r.status != 500, r.body[:500]
    assert 200 <= r.status < 600
    if head_request:
        return
    ctype = r.header("content-type") or ""
    if r.status >= 400:
        if ctype.startswith("application/json"):
            obj = json.loads(r.body)
            if "error" in obj:  # ours, or a passed-through OpenAI-style body
                err = obj["error"]
                assert err.get("code") != "internal_error", err
            else:
                # a passthrough answer of the backend (FastAPI "detail")
                assert "detail" in obj, obj
        else:
            raise AssertionError(f"error without a JSON body: {r.status} {ctype!r}")
        assert r.status != 500
    elif ctype.startswith("text/event-stream") and b"chat.completion.chunk" in r.body:
        chat_stream_outcome(r.body)
    elif ctype.startswith("application/json"):
        json.loads(r.body)


async def _health(port: int) -> bytes:
    with anyio.fail_after(HANG):
        async with await anyio.connect_tcp("127.0.0.1", port) as s:
            await s.send(request_bytes("GET", "/health", headers={"Connection": "close"}))
            return await read_all(s)


def assert_healthy(target: SimpleNamespace) -> None:
    raw: bytes = target.call(_health, target.port)
    (r,), _ = parse_responses(raw)
    assert r.status == 200 and r.json() == {"status": "ok"}
    errors = [rec.getMessage() for rec in target.errors]
    target.errors.clear()
    assert not errors, errors


async def _post(port: int, path: str, body: bytes, ctype: Optional[str]) -> bytes:
    headers = {"Connection": "close"}
    if ctype is not None:
        headers["Content-Type"] = ctype
    data = request_bytes("POST", path, body, headers)
    if ctype is None:
        data = data.replace(b"Content-Type: application/json\r\n", b"", 1)
    with anyio.fail_after(HANG):
        async with await anyio.connect_tcp("127.0.0.1", port) as s:
            await s.send(data)
            return await read_all(s)


def post(
    target: SimpleNamespace, path: str, body: bytes, ctype: Optional[str] = "application/json"
) -> Response:
    """A well-formed POST of ``body`` (``Connection: close``); its one checked reply."""
    raw: bytes = target.call(_post, target.port, path, body, ctype)
    (r,) = check_replies(raw)
    return r
