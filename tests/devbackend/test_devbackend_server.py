"""The fake backend over real loopback sockets (plain HTTP), one test per knob."""

from __future__ import annotations

import json
import time
from typing import Any, Optional

import anyio
import pytest

import devbackend
from devbackend import lightspeed, server
from devbackend.client import ClientResponse, DevClient
from tests.support import FIXTURES

USER = {"input": [{"type": "message", "role": "user", "content": "hi there"}]}
STREAM = {**USER, "stream": True}
TIMEOUT = 10


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def post(
    client: DevClient,
    body: Any = None,
    fault: Optional[str] = None,
    path: str = "/v1/responses",
    **knobs: str,
) -> ClientResponse:
    headers = [(f"x-dev-{k.replace('_', '-')}", v) for k, v in knobs.items()]
    if fault:
        headers.append(("x-dev-fault", fault))
    return await client.request(
        "POST", path, headers=headers, json_body=STREAM if body is None else body
    )


def types(response: ClientResponse) -> list[str]:
    return [e["type"] for e in response.events()]


def n_deltas(response: ClientResponse) -> int:
    return response.body.count(b'"type": "response.output_text.delta"')


@pytest.mark.anyio
async def test_stream_and_json_on_one_keepalive_connection() -> None:
    with anyio.fail_after(TIMEOUT):
        async with devbackend.run() as backend, await DevClient.connect(backend.url) as c:
            assert backend.url == f"http://127.0.0.1:{backend.port}"
            stream = await post(c)
            assert stream.status == 200 and stream.complete
            assert stream.header("content-type") == "text/event-stream; charset=utf-8"
            assert stream.header("transfer-encoding") == "chunked"
            assert stream.sse()[-1] == (None, "[DONE]")
            events = stream.events()
            assert events[-1]["type"] == "response.completed"
            assert events[-1]["response"]["output_text"] == (
                "Hello from goose-proxy dev backend. You said: hi there"
            )
            plain = await post(c, USER)
            assert plain.status == 200 and plain.complete
            assert int(plain.header("content-length") or 0) == len(plain.body)
            assert plain.json()["output_text"].endswith("You said: hi there")
            assert c.reusable()

            assert backend.stats.connections_accepted == 1
            assert backend.stats.requests_total == 2
            records = backend.requests
            assert [r.connection for r in records] == [1, 1]
            assert records[0].json == STREAM
            assert records[0].method == "POST" and records[0].target == "/v1/responses"
            assert records[0].header("Content-Type") == "application/json"
            assert records[0].client_subject is None


@pytest.mark.anyio
@pytest.mark.parametrize(
    "path", ["/responses", "/v1/responses", "/api/lightspeed/v1/responses?x=1"]
)
async def test_any_path_ending_in_responses(path: str) -> None:
    with anyio.fail_after(TIMEOUT):
        async with devbackend.run() as backend, await DevClient.connect(backend.url) as c:
            assert (await post(c, USER, path=path)).status == 200
            assert backend.requests[-1].target == path


@pytest.mark.anyio
async def test_control_routes() -> None:
    with anyio.fail_after(TIMEOUT):
        async with devbackend.run() as backend, await DevClient.connect(backend.url) as c:
            assert (await c.request("GET", "/health")).json() == {"status": "ok"}
            await post(c, USER)
            stats = (await c.request("GET", "/_dev/stats")).json()
            assert stats["requests_total"] == 1 and stats["max_in_flight"] == 1
            assert stats["connections_open"] == 1 and stats["client_subjects"] == []
            stats_before = backend.stats
            assert (await c.request("POST", "/_dev/reset")).json() == {"reset": True}
            assert backend.stats is stats_before  # zeroed in place
            assert backend.stats.requests_total == 0 and backend.requests == []
            assert backend.stats.connections_open == 1
            assert (await c.request("GET", "/nope")).status == 404
            assert (await c.request("GET", "/v1/responses")).status == 405
            assert (await c.request("POST", "/health")).status == 405
            assert backend.stats.control_requests == 3  # counted since the reset


@pytest.mark.anyio
async def test_strict_fields_and_openai_mode() -> None:
    body = {**USER, "top_p": 0.5}
    with anyio.fail_after(TIMEOUT):
        async with devbackend.run() as backend, await DevClient.connect(backend.url) as c:
            rejected = await post(c, body)
            assert rejected.status == 422
            assert rejected.json()["detail"][0]["loc"] == ["body", "top_p"]
            assert backend.requests[-1].json == body  # recorded all the same
        async with (
            devbackend.run(mode="openai") as backend,
            await DevClient.connect(backend.url) as c,
        ):
            assert (await post(c, body)).status == 200
            stream = await post(c, {**body, "stream": True})
            assert b"event:" not in stream.body and b"[DONE]" not in stream.body
            assert types(stream)[-1] == "response.completed"
        async with (
            devbackend.run(strict_fields=False) as backend,
            await DevClient.connect(backend.url) as c,
        ):
            assert (await post(c, body)).status == 200


@pytest.mark.anyio
async def test_tool_call_then_followup() -> None:
    call = json.loads((FIXTURES / "req_tool.json").read_text())
    followup = json.loads((FIXTURES / "req_tool_followup.json").read_text())
    with anyio.fail_after(TIMEOUT):
        async with devbackend.run() as backend, await DevClient.connect(backend.url) as c:
            first = (await post(c, call)).events()
            assert first[2]["item"]["type"] == "function_call"
            assert types(await post(c, call)).count("response.function_call_arguments.delta") == 2
            second = (await post(c, followup)).events()
            assert second[-1]["response"]["output_text"] == "Tool said: file_a.txt\nfile_b.txt"


@pytest.mark.anyio
@pytest.mark.parametrize("status", [401, 403, 413, 422, 429, 500, 502])
async def test_status_fault(status: int) -> None:
    with anyio.fail_after(TIMEOUT):
        async with devbackend.run() as backend, await DevClient.connect(backend.url) as c:
            r = await post(c, fault=f"status:{status}")
            assert r.status == status and r.complete
            assert "detail" in r.json()
            assert r.header("retry-after") == ("7" if status == 429 else None)
            if status == 429:
                assert r.body == lightspeed.BODY_429
            assert (await post(c, USER)).status == 200  # connection still good


@pytest.mark.anyio
async def test_ctx_too_long_replays_capture() -> None:
    with anyio.fail_after(TIMEOUT):
        async with devbackend.run() as backend, await DevClient.connect(backend.url) as c:
            r = await post(c, fault="ctx_too_long")
            assert r.status == 200 and r.complete
            assert r.body == (FIXTURES / "err_CTX_TOO_LONG_stream_true.txt").read_bytes()
            assert types(r)[-1] == "response.failed"
            nonstream = await post(c, USER, fault="ctx_too_long")
            assert (nonstream.status, nonstream.body) == (500, lightspeed.BODY_500)


@pytest.mark.anyio
async def test_stall_holds_until_client_leaves() -> None:
    with anyio.fail_after(TIMEOUT):
        async with devbackend.run() as backend:
            c = await DevClient.connect(backend.url)
            await c.send_request(
                "POST", "/v1/responses", headers=[("x-dev-fault", "stall")], body=b"{}"
            )
            await backend.wait_until(lambda b: b.stats.in_flight == 1)
            with anyio.move_on_after(0.2):  # nothing may arrive
                await c.read_response()
                pytest.fail("a stalled request got an answer")
            await c.aclose()
            await backend.wait_until(
                lambda b: b.stats.in_flight == 0 and b.stats.connections_open == 0
            )


@pytest.mark.anyio
async def test_stall_mid_stream() -> None:
    with anyio.fail_after(TIMEOUT):
        async with devbackend.run() as backend:
            async with await DevClient.connect(backend.url) as c:
                await c.send_request(
                    "POST",
                    "/v1/responses",
                    headers=[("x-dev-fault", "stall_mid_stream")],
                    body=json.dumps(STREAM).encode(),
                )
                r = await c.read_response(until=lambda r: n_deltas(r) == 2)
                assert r.status == 200 and types(r)[0] == "response.created"
                with anyio.move_on_after(0.2):
                    await c.read_response(r)
                    pytest.fail("the stall ended")
                assert n_deltas(r) == 2 and not r.complete
            await backend.wait_until(lambda b: b.stats.in_flight == 0)


@pytest.mark.anyio
async def test_reset_before_headers() -> None:
    with anyio.fail_after(TIMEOUT):
        async with devbackend.run() as backend, await DevClient.connect(backend.url) as c:
            r = await post(c, fault="reset_before_headers")
            assert r.status == 0 and not r.complete
            # an RST; anyio 4.12 (the lock's choice on Python 3.9) may let a FIN
            # through first, which the client sees as a close before any answer
            assert any(k in r.error for k in ("ConnectionReset", "Broken", "ConnectionClosed"))


@pytest.mark.anyio
async def test_reset_mid_body() -> None:
    with anyio.fail_after(TIMEOUT):
        async with devbackend.run() as backend, await DevClient.connect(backend.url) as c:
            r = await post(c, fault="reset_mid_body")
            assert r.status == 200 and not r.complete and r.error
            assert n_deltas(r) == 2 and b"response.completed" not in r.body


@pytest.mark.anyio
async def test_truncate_ends_chunked_body_without_terminal_event() -> None:
    with anyio.fail_after(TIMEOUT):
        async with devbackend.run() as backend, await DevClient.connect(backend.url) as c:
            r = await post(c, fault="truncate")
            assert r.status == 200 and r.complete  # the 0-chunk came
            assert n_deltas(r) > 2
            assert b"response.completed" not in r.body and b"[DONE]" not in r.body
            half = await post(c, USER, fault="truncate")
            assert half.status == 200 and not half.complete  # Content-Length not met
            assert 0 < len(half.body) < int(half.header("content-length") or 0)


@pytest.mark.anyio
async def test_garbage() -> None:
    with anyio.fail_after(TIMEOUT):
        async with devbackend.run() as backend, await DevClient.connect(backend.url) as c:
            r = await post(c, fault="garbage")
            assert r.status == 0 and "RemoteProtocolError" in r.error


@pytest.mark.anyio
async def test_keep_open_never_ends_the_body() -> None:
    with anyio.fail_after(TIMEOUT):
        async with devbackend.run() as backend:
            async with await DevClient.connect(backend.url) as c:
                await c.send_request(
                    "POST",
                    "/v1/responses",
                    headers=[("x-dev-fault", "keep_open")],
                    body=json.dumps(STREAM).encode(),
                )
                r = await c.read_response(until=lambda r: r.body.endswith(b"data: [DONE]\n\n"))
                assert types(r)[-1] == "response.completed"
                with anyio.move_on_after(0.2):
                    await c.read_response(r)
                    pytest.fail("the body ended")
                assert not r.complete
            await backend.wait_until(lambda b: b.stats.in_flight == 0)


@pytest.mark.anyio
async def test_close_fault_closes_after_reply() -> None:
    with anyio.fail_after(TIMEOUT):
        async with devbackend.run() as backend, await DevClient.connect(backend.url) as c:
            r = await post(c, fault="close")
            assert r.complete and r.header("connection") == "close"
            await backend.wait_until(lambda b: b.stats.connections_open == 0)


@pytest.mark.anyio
async def test_content_faults_over_the_wire() -> None:
    tools = [{"type": "function", "name": "a", "parameters": {}}]
    with anyio.fail_after(TIMEOUT):
        async with devbackend.run() as backend, await DevClient.connect(backend.url) as c:
            assert "response.refusal.delta" in types(await post(c, fault="refusal"))
            shield = await post(c, fault="shield")
            assert "response.output_text.delta" not in types(shield)
            assert shield.events()[-1]["response"]["output_text"]
            reasoning = types(await post(c, fault="reasoning"))
            first_delta = next(t for t in reasoning if t.endswith(".delta"))
            assert first_delta == "response.reasoning_text.delta"
            parallel = await post(c, {**STREAM, "tools": tools}, fault="parallel_tools")
            assert types(parallel).count("response.output_item.added") == 2
            only = await post(c, fault="args_only_in_done")
            assert "response.function_call_arguments.delta" not in types(only)
            assert types(await post(c, fault="incomplete"))[-1] == "response.incomplete"
            error = await post(c, fault="error_event")
            assert types(error)[-1] == "error" and error.complete
            big = await post(c, fault="big_event:200000")
            assert [len(e["delta"]) for e in big.events() if "delta" in e] == [200000]


@pytest.mark.anyio
async def test_replay() -> None:
    with anyio.fail_after(TIMEOUT):
        async with devbackend.run() as backend, await DevClient.connect(backend.url) as c:
            r = await post(c, fault="replay:lcs_stream_tool.sse")
            assert r.status == 200 and r.body == (FIXTURES / "lcs_stream_tool.sse").read_bytes()
            assert r.header("server") == "uvicorn"
            quota = await post(c, fault="replay:err_quota_429_stream.txt")
            assert quota.status == 429 and quota.body == lightspeed.BODY_429
            missing = await post(c, fault="replay:nope.sse")
            assert missing.status == 400 and "nope.sse" in missing.json()["detail"]


@pytest.mark.anyio
async def test_delays() -> None:
    with anyio.fail_after(TIMEOUT):
        async with devbackend.run() as backend, await DevClient.connect(backend.url) as c:
            start = time.monotonic()
            r = await post(c, USER, delay_headers="0.3")
            assert r.status == 200 and time.monotonic() - start >= 0.3
            start = time.monotonic()
            r = await post(c, deltas="3", event_delay="0.05")
            frames = len(r.sse())
            assert n_deltas(r) == 3 and time.monotonic() - start >= 0.05 * (frames - 1)


@pytest.mark.anyio
async def test_client_leaving_during_header_delay_is_noticed() -> None:
    with anyio.fail_after(TIMEOUT):
        async with devbackend.run() as backend:
            c = await DevClient.connect(backend.url)
            await c.send_request(
                "POST", "/v1/responses", headers=[("x-dev-delay-headers", "600")], body=b"{}"
            )
            await backend.wait_until(lambda b: b.stats.in_flight == 1)
            await c.aclose()
            await backend.wait_until(lambda b: b.stats.in_flight == 0)


@pytest.mark.anyio
async def test_deltas_knob() -> None:
    with anyio.fail_after(TIMEOUT):
        async with devbackend.run() as backend, await DevClient.connect(backend.url) as c:
            assert n_deltas(await post(c, deltas="1000")) == 1000
            assert n_deltas(await post(c, deltas="0")) == 0
            assert (await post(c, deltas="many")).status == 400


@pytest.mark.anyio
async def test_in_flight_counters() -> None:
    with anyio.fail_after(TIMEOUT):
        async with devbackend.run() as backend:
            clients = [await DevClient.connect(backend.url) for _ in range(3)]
            for c in clients:
                await c.send_request(
                    "POST", "/responses", headers=[("x-dev-fault", "stall")], body=b"{}"
                )
            await backend.wait_until(lambda b: b.stats.in_flight == 3)
            assert backend.stats.max_in_flight == 3
            assert backend.stats.connections_accepted == 3
            for c in clients:
                await c.aclose()
            await backend.wait_until(lambda b: b.stats.in_flight == 0)
            assert backend.stats.max_in_flight == 3


@pytest.mark.anyio
async def test_stop_cancels_stalled_handlers_and_closes_sockets() -> None:
    with anyio.fail_after(TIMEOUT):
        async with devbackend.run() as backend:
            c = await DevClient.connect(backend.url)
            await c.send_request(
                "POST", "/responses", headers=[("x-dev-fault", "stall")], body=b"{}"
            )
            await backend.wait_until(lambda b: b.stats.in_flight == 1)
            port = backend.port
        start = time.monotonic()
        r = await c.read_response()  # the server closed the socket
        assert r.status == 0 and r.error
        assert time.monotonic() - start < 1
        await c.aclose()
        with pytest.raises(OSError):
            await DevClient.connect(f"http://127.0.0.1:{port}")


@pytest.mark.anyio
async def test_exception_in_block_propagates_unchanged() -> None:
    with anyio.fail_after(TIMEOUT), pytest.raises(ValueError, match="boom"):
        async with devbackend.run():
            raise ValueError("boom")


@pytest.mark.anyio
async def test_records_are_bounded() -> None:
    with anyio.fail_after(TIMEOUT):
        async with devbackend.run() as backend, await DevClient.connect(backend.url) as c:
            for i in range(server.RECORD_LIMIT + 5):
                await post(c, {"input": str(i)})
            records = backend.requests
            assert len(records) == server.RECORD_LIMIT
            assert records[-1].json == {"input": str(server.RECORD_LIMIT + 4)}
            assert backend.stats.requests_total == server.RECORD_LIMIT + 5


@pytest.mark.anyio
async def test_bad_http_and_oversized_body(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(server, "MAX_BODY_BYTES", 1000)
    with anyio.fail_after(TIMEOUT):
        async with devbackend.run() as backend:
            async with await DevClient.connect(backend.url) as c:
                r = await c.request("POST", "/responses", body=b"x" * 2000)
                assert r.status == 413 and r.header("connection") == "close"
            tcp = await anyio.connect_tcp("127.0.0.1", backend.port)
            async with tcp:
                await tcp.send(b"NOT HTTP AT ALL\r\n\r\n")
                reply = b""
                try:
                    while True:
                        reply += await tcp.receive()
                except anyio.EndOfStream:
                    pass
                assert reply.startswith(b"HTTP/1.1 400 ")


@pytest.mark.anyio
async def test_idle_connections_time_out() -> None:
    with anyio.fail_after(TIMEOUT):
        async with devbackend.run(keepalive_timeout=0.1) as backend:
            async with await DevClient.connect(backend.url) as c:
                assert (await post(c, USER)).status == 200
                await backend.wait_until(lambda b: b.stats.connections_open == 0)
                r = await post(c, USER)
                assert r.status == 0 and r.error


@pytest.mark.anyio
async def test_unknown_mode() -> None:
    with pytest.raises(ValueError, match="unknown mode"):
        async with devbackend.run(mode="grpc"):
            pass


async def raw_exchange(port: int, data: bytes) -> bytes:
    """Send ``data`` on a fresh connection; return everything until the server closes."""
    async with await anyio.connect_tcp("127.0.0.1", port) as tcp:
        await tcp.send(data)
        out = b""
        try:
            while True:
                out += await tcp.receive()
        except anyio.EndOfStream:
            return out


def http_request(body: Any, *extra: str, version: str = "1.1") -> bytes:
    payload = json.dumps(body).encode()
    lines = [
        f"POST /v1/responses HTTP/{version}",
        "host: x",
        f"content-length: {len(payload)}",
        *extra,
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + payload


@pytest.mark.anyio
async def test_pipelined_requests_are_answered_in_order() -> None:
    with anyio.fail_after(TIMEOUT):
        async with devbackend.run() as backend:
            data = http_request({"input": "one"}) + http_request(
                {"input": "two"}, "connection: close"
            )
            out = await raw_exchange(backend.port, data)
            assert out.count(b"HTTP/1.1 200 OK\r\n") == 2
            assert out.index(b"You said: one") < out.index(b"You said: two")
            assert b'You said: one"}HTTP/1.1 200 OK\r\n' in out  # back to back
            second = out.split(b'You said: one"}', 1)[1]
            assert b"connection: close" in second.split(b"\r\n\r\n")[0]
            assert backend.stats.connections_accepted == 1


@pytest.mark.anyio
async def test_http10_stream_is_close_delimited() -> None:
    with anyio.fail_after(TIMEOUT):
        async with devbackend.run() as backend:
            out = await raw_exchange(backend.port, http_request(STREAM, version="1.0"))
            head, _, body = out.partition(b"\r\n\r\n")
            assert b"transfer-encoding" not in head.lower() and b"connection: close" in head
            assert body.startswith(b"event: response.created\n")
            assert body.endswith(b"data: [DONE]\n\n")


@pytest.mark.anyio
async def test_expect_100_continue() -> None:
    with anyio.fail_after(TIMEOUT):
        async with devbackend.run() as backend:
            async with await anyio.connect_tcp("127.0.0.1", backend.port) as tcp:
                request = http_request(USER, "expect: 100-continue")
                head, _, payload = request.partition(b"\r\n\r\n")
                await tcp.send(head + b"\r\n\r\n")
                assert await tcp.receive() == b"HTTP/1.1 100 Continue\r\n\r\n"
                await tcp.send(payload)
                assert (await tcp.receive()).startswith(b"HTTP/1.1 200 OK\r\n")


@pytest.mark.anyio
async def test_head_health() -> None:
    with anyio.fail_after(TIMEOUT):
        async with devbackend.run() as backend:
            out = await raw_exchange(
                backend.port, b"HEAD /health HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n"
            )
            assert out.startswith(b"HTTP/1.1 200 OK\r\n") and out.endswith(b"\r\n\r\n")
            assert b"content-length: 15\r\n" in out
