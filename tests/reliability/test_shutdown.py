"""Shutdown: stop accepting, let in-flight requests and streams finish for up to
``drain_timeout``, then end the rest with an error (an error event inside a
stream that started, a 503 otherwise) and exit 0 on SIGTERM (or SIGHUP).

In flight means: its first byte had arrived when the drain started. Kept-alive
connections idle between requests are closed at once; a request that begins
later on a connection accepted before gets a 503 and never reaches the backend."""

from __future__ import annotations

import json
import signal
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager, suppress
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import anyio
import anyio.abc
import pytest

import devbackend
from goose_proxy import cli
from goose_proxy.config import Config
from goose_proxy.http.server import ProxyServer
from tests.reliability.support import (
    HELLO,
    HELLO_STREAM,
    READ_CAP,
    Malformed,
    ProxyProcess,
    Response,
    chat_stream_outcome,
    parse_one,
    parse_responses,
    passthrough_error_event,
    poll,
    proxied,
    proxy_config,
    proxy_process,
    read_all,
    read_until,
    request_bytes,
    sse_data,
)
from tests.support import make_config

pytestmark = pytest.mark.anyio

CHAT = "/v1/chat/completions"
SLOW = {"X-Dev-Event-Delay": "0.05", "X-Dev-Deltas": "12"}  # a stream of about 0.6 s
STALL = {"X-Dev-Fault": "stall_mid_stream"}  # a stream that stops after a few events
LONG = {"X-Dev-Event-Delay": "0.2", "X-Dev-Deltas": "12"}  # a stream of about 2.5 s


class Reader:
    """One request on a raw connection, read to the end in the background;
    ``first`` is set when the first bytes of the reply arrived."""

    def __init__(self, port: int, body: dict[str, Any], path: str = CHAT) -> None:
        self.port = port
        self.body = body
        self.path = path
        self.data = bytearray()
        self.first = anyio.Event()
        self.done = anyio.Event()

    async def run(self) -> None:
        body = json.dumps(self.body).encode()
        req = request_bytes("POST", self.path, body, {"Connection": "close"})
        async with await anyio.connect_tcp("127.0.0.1", self.port) as s:
            await s.send(req)
            try:
                while len(self.data) < READ_CAP:
                    self.data += await s.receive()
                    self.first.set()
            except (anyio.EndOfStream, anyio.BrokenResourceError, OSError):
                pass
        self.done.set()


def _deltas(body: bytes) -> int:
    """How many chunks of a chat stream carry text."""
    n = 0
    for data in sse_data(body)[:-1]:
        for choice in json.loads(data).get("choices", []):
            n += bool(choice.get("delta", {}).get("content"))
    return n


async def _one_reply(stream: anyio.abc.ByteStream) -> Response:
    """Read one whole reply from a connection that stays open (keep-alive)."""
    data = b""
    while True:
        data += await stream.receive()
        try:
            replies, rest = parse_responses(data)
        except Malformed:  # not all of it yet
            continue
        if replies:
            assert len(replies) == 1 and not rest, (replies, rest[:200])
            return replies[0]


async def _line_before_exit(proxy: ProxyProcess, needle: str) -> str:
    """The log line containing ``needle``; fails at once if the process exits first."""

    async def exits() -> None:
        code = await proxy.proc.wait()
        pytest.fail(f"exited ({code}) without logging {needle!r}: " + "\n".join(proxy.lines))

    async with anyio.create_task_group() as tg:
        tg.start_soon(exits)
        line = await proxy.wait_line(needle)
        tg.cancel_scope.cancel()
    return line


async def _refused(port: int) -> bool:
    try:
        s = await anyio.connect_tcp("127.0.0.1", port)
    except OSError:
        return True
    await s.aclose()
    return False


async def test_in_flight_stream_completes_during_drain(pki: SimpleNamespace) -> None:
    with anyio.fail_after(15):
        async with proxied(pki, headers=SLOW, server={"drain_timeout": 10.0}) as h:
            reader = Reader(h.proxy.port, HELLO_STREAM)
            async with anyio.create_task_group() as tg:
                tg.start_soon(reader.run)
                await reader.first.wait()
                t0 = anyio.current_time()
                await h.proxy.server.shutdown()  # returns when the stream is over
                took = anyio.current_time() - t0
                assert reader.done.is_set() or not h.proxy.server.active_requests
                assert await _refused(h.proxy.port)  # no longer accepting
    r = parse_one(bytes(reader.data))
    assert r.status == 200
    _, err = chat_stream_outcome(r.body)
    assert err is None, err
    assert _deltas(r.body) == 12  # every delta, none lost
    assert took < 5


async def test_in_flight_json_request_completes_during_drain(pki: SimpleNamespace) -> None:
    with anyio.fail_after(15):
        async with proxied(pki, headers=SLOW, server={"drain_timeout": 10.0}) as h:
            reader = Reader(h.proxy.port, HELLO)
            async with anyio.create_task_group() as tg:
                tg.start_soon(reader.run)
                await h.backend.wait_until(lambda b: b.stats.in_flight == 1)
                await h.proxy.server.shutdown()
    r = parse_one(bytes(reader.data))
    assert r.status == 200 and r.json()["choices"][0]["finish_reason"] == "stop"


@asynccontextmanager
async def serving_like_the_cli(config: Config) -> AsyncIterator[SimpleNamespace]:
    """The proxy served the way ``goose-proxy`` serves it: on leaving the block,
    ``shutdown()`` and then, at once, the server's task group is cancelled."""
    server = ProxyServer(config)
    await server.open_listeners()
    async with anyio.create_task_group() as tg:
        await tg.start(server.serve)
        yield SimpleNamespace(port=server.bound[0][1], server=server)
        await server.shutdown()
        tg.cancel_scope.cancel()


@pytest.mark.parametrize("path", [CHAT, "/v1/responses"], ids=["chat", "passthrough"])
async def test_after_drain_timeout_streams_end_with_error_event(
    pki: SimpleNamespace, path: str
) -> None:
    body = HELLO_STREAM if path == CHAT else {"model": "m", "input": "hello", "stream": True}
    with anyio.fail_after(15):
        async with devbackend.run(tls=pki.server_context()) as backend:
            cfg = make_config(
                backend.url,
                pki.auth,
                server={"drain_timeout": 0.3},
                backend={
                    "proxy": "",
                    "stream_idle_timeout": 60.0,
                    "headers": STALL,
                },
            )
            async with anyio.create_task_group() as tg:
                async with serving_like_the_cli(cfg) as proxy:
                    streaming = Reader(proxy.port, body, path)
                    tg.start_soon(streaming.run)
                    await streaming.first.wait()
                    t0 = anyio.current_time()
                took = anyio.current_time() - t0
                await streaming.done.wait()
            await backend.wait_until(lambda b: b.stats.connections_open == 0)
    r = parse_one(bytes(streaming.data))  # a complete chunked reply
    assert r.status == 200
    if path == CHAT:
        text, err = chat_stream_outcome(r.body)
        assert text  # what came before the stall
    else:
        assert b"response.output_text.delta" in r.body
        err = passthrough_error_event(r.body, "server_error")
    assert err is not None and err["code"] == "service_unavailable"
    assert "shutting down" in err["message"]
    assert 0.3 <= took < 3


async def test_after_drain_timeout_waiting_requests_get_503(pki: SimpleNamespace) -> None:
    with anyio.fail_after(15):
        async with devbackend.run(tls=pki.server_context()) as backend:
            cfg = make_config(
                backend.url,
                pki.auth,
                server={"drain_timeout": 0.3},
                backend={"proxy": "", "timeout": 60.0, "headers": {"X-Dev-Fault": "stall"}},
            )
            async with anyio.create_task_group() as tg:
                async with serving_like_the_cli(cfg) as proxy:
                    readers = [Reader(proxy.port, b) for b in (HELLO, HELLO_STREAM)]
                    for reader in readers:
                        tg.start_soon(reader.run)
                    await backend.wait_until(lambda b: b.stats.in_flight == 2)
            await backend.wait_until(lambda b: b.stats.connections_open == 0)
    for reader in readers:
        r = parse_one(bytes(reader.data))
        assert r.status == 503
        assert r.header("x-should-retry") is None  # another instance may serve it
        assert r.header("retry-after") == "1"  # as a request refused by the drain
        assert r.error["code"] == "service_unavailable"


# --- the real process ---------------------------------------------------------------


@asynccontextmanager
async def _real_process_mid_stream(
    pki: SimpleNamespace, tmp_path: Path, drain_timeout: float, headers: dict[str, str]
) -> AsyncIterator[tuple[Any, ProxyProcess, Reader]]:
    """The real CLI (socket of its own) in front of the scripted backend, with one
    streaming request under way (its first chunk read) in a task beside the body."""
    async with devbackend.run(tls=pki.server_context()) as backend:
        server = {"drain_timeout": drain_timeout}
        cfg = proxy_config(backend.url, pki, server=server, backend={"headers": headers})
        async with proxy_process(cfg, tmp_path) as proxy:
            reader = Reader(proxy.port, HELLO_STREAM)
            async with anyio.create_task_group() as tg:
                tg.start_soon(reader.run)
                await reader.first.wait()
                yield backend, proxy, reader


async def test_sigterm_drains_stream_and_exits_0(pki: SimpleNamespace, tmp_path: Path) -> None:
    with anyio.fail_after(30):
        async with _real_process_mid_stream(pki, tmp_path, 10.0, SLOW) as (_, proxy, reader):
            proxy.proc.send_signal(signal.SIGTERM)
            await proxy.wait_line("draining 1 in-flight request")
            assert await _refused(proxy.port)
            await reader.done.wait()
            code = await proxy.proc.wait()
            log = "\n".join(proxy.lines)
    assert code == 0, log
    assert "SIGTERM received; shutting down" in log and "stopped" in log
    r = parse_one(bytes(reader.data))
    _, err = chat_stream_outcome(r.body)
    assert err is None and _deltas(r.body) == 12


async def test_second_signal_during_the_drain_stops_at_once_with_130(
    pki: SimpleNamespace, tmp_path: Path
) -> None:
    # a long drain (60 s) with a stream in flight; Ctrl-C twice means "now"
    with anyio.fail_after(30):
        async with _real_process_mid_stream(pki, tmp_path, 60.0, STALL) as (_, proxy, reader):
            proxy.proc.send_signal(signal.SIGINT)
            await proxy.wait_line("draining 1 in-flight request")
            proxy.proc.send_signal(signal.SIGINT)
            with anyio.fail_after(10):  # far less than the 60 s drain
                code = await proxy.proc.wait()
            await reader.done.wait()
            log = "\n".join(proxy.lines)
    assert code == 130, log
    assert "SIGINT received again; stopping without finishing the drain" in log


async def test_sigterm_after_drain_timeout_error_event_and_exit_0(
    pki: SimpleNamespace, tmp_path: Path
) -> None:
    with anyio.fail_after(30):
        async with _real_process_mid_stream(pki, tmp_path, 0.3, STALL) as (backend, proxy, reader):
            async with await anyio.connect_tcp("127.0.0.1", proxy.port) as idle:  # nothing sent yet
                t0 = anyio.current_time()
                proxy.proc.send_signal(signal.SIGTERM)
                code = await proxy.proc.wait()
                took = anyio.current_time() - t0
                await reader.done.wait()
                with pytest.raises((anyio.EndOfStream, anyio.BrokenResourceError, OSError)):
                    await idle.receive()  # closed by the exit, not left hanging
        await backend.wait_until(lambda b: b.stats.connections_open == 0)
    assert code == 0
    assert took < 5
    r = parse_one(bytes(reader.data))
    text, err = chat_stream_outcome(r.body)
    assert text and err is not None and "shutting down" in err["message"]


async def test_sigterm_idle_exits_0_promptly(pki: SimpleNamespace, tmp_path: Path) -> None:
    with anyio.fail_after(20):
        cfg = proxy_config("https://127.0.0.1:9", pki)
        async with proxy_process(cfg, tmp_path) as proxy:
            t0 = anyio.current_time()
            proxy.proc.send_signal(signal.SIGTERM)
            code = await proxy.proc.wait()
            took = anyio.current_time() - t0
    assert code == 0 and took < 3


async def test_a_signal_after_the_drain_ended_is_ignored(
    pki: SimpleNamespace, tmp_path: Path
) -> None:
    # `timeout` and process-group kills can deliver a stop signal twice; one
    # that came once the drain had ended killed the exiting proxy (status
    # -15, or a KeyboardInterrupt traceback for SIGINT) instead of exit 0
    with anyio.fail_after(20):
        cfg = proxy_config("https://127.0.0.1:9", pki)
        async with proxy_process(cfg, tmp_path) as proxy:
            proxy.proc.send_signal(signal.SIGTERM)
            await proxy.wait_line("goose_proxy: stopped")
            with suppress(ProcessLookupError):  # exited already
                proxy.proc.send_signal(signal.SIGTERM)
                proxy.proc.send_signal(signal.SIGINT)
            code = await proxy.proc.wait()
            log = "\n".join(proxy.lines)
    assert code == 0, log
    assert "Traceback" not in log and "received again" not in log


async def test_request_begun_after_the_drain_started_gets_503(pki: SimpleNamespace) -> None:
    # a connection accepted before the drain whose request comes after it began:
    # answered 503 (retry later), never sent to the backend; the stream in flight
    # is not disturbed
    with anyio.fail_after(15):
        async with proxied(pki, headers=SLOW, server={"drain_timeout": 10.0}) as h:
            server = h.proxy.server
            streaming = Reader(h.proxy.port, HELLO_STREAM)
            async with anyio.create_task_group() as tg:
                tg.start_soon(streaming.run)
                await streaming.first.wait()
                async with await anyio.connect_tcp("127.0.0.1", h.proxy.port) as late:
                    await poll(lambda: server.active_connections == 2)  # accepted
                    tg.start_soon(server.shutdown)
                    await poll(lambda: server.closing)
                    await late.send(request_bytes("POST", CHAT, json_body=HELLO_STREAM))
                    r = parse_one(await read_all(late))
                await streaming.done.wait()
    assert r.status == 503
    assert r.error["code"] == "service_unavailable" and "shutting down" in r.error["message"]
    assert r.header("retry-after") == "1" and r.header("connection") == "close"
    assert h.backend.stats.requests_total == 1  # the stream's only
    _, err = chat_stream_outcome(parse_one(bytes(streaming.data)).body)
    assert err is None


async def _pipelined_through_the_drain(
    pki: SimpleNamespace, headers: dict[str, str], drain_timeout: float, second: dict[str, Any]
) -> tuple[Response, Response, Any]:
    """A stream, then ``second`` pipelined behind it on one connection, then the
    drain: the two answers, and the backend."""
    with anyio.fail_after(15):
        server_cfg = {"drain_timeout": drain_timeout}
        async with proxied(pki, headers=headers, server=server_cfg) as h:
            async with await anyio.connect_tcp("127.0.0.1", h.proxy.port) as s:
                await s.send(request_bytes("POST", CHAT, json_body=HELLO_STREAM))
                first = await read_until(s, b'"content":"')  # the stream runs
                await s.send(request_bytes("POST", CHAT, json_body=second))
                await h.backend.wait_until(lambda b: b.stats.requests_total == 1)
                await h.proxy.server.shutdown()
                rest = await read_all(s)
    (stream, answer), left = parse_responses(first + rest)
    assert left == b""
    return stream, answer, h.backend


async def test_a_request_pipelined_behind_one_in_flight_is_served(pki: SimpleNamespace) -> None:
    # the stream's head went out before the drain, promising keep-alive, and the
    # client sent its next request behind it: served (Connection: close), not
    # closed on without a word once the stream ends
    stream, answer, backend = await _pipelined_through_the_drain(pki, SLOW, 10.0, HELLO)
    assert stream.status == 200 and stream.header("connection") is None
    text, err = chat_stream_outcome(stream.body)
    assert text and err is None
    assert answer.status == 200 and answer.header("connection") == "close"
    assert backend.stats.requests_total == 2


async def test_a_request_pipelined_behind_one_cut_at_the_drain_timeout_gets_503(
    pki: SimpleNamespace,
) -> None:
    # the stream in front stalls past the drain timeout and is cut with its
    # error event; the request behind it, read only then, is answered 503 (try
    # again), not sent to the backend after the deadline and cut unanswered
    stream, answer, backend = await _pipelined_through_the_drain(pki, STALL, 0.3, HELLO_STREAM)
    text, err = chat_stream_outcome(stream.body)
    assert text and err is not None and err["code"] == "service_unavailable"
    assert answer.status == 503 and answer.header("connection") == "close"
    assert answer.header("retry-after") == "1"
    assert "shutting down" in answer.error["message"]
    assert backend.stats.requests_total == 1


@pytest.mark.parametrize("ahead", [False, True], ids=["after", "before"])
async def test_an_empty_line_after_a_request_does_not_hold_the_drain(
    pki: SimpleNamespace, ahead: bool
) -> None:
    # a client that ends its POST with one more CRLF, its stream in flight when
    # the drain starts: the drain ends with the stream, not at keepalive_timeout
    # (the CRLF was taken for a request under way, then waited for)
    body = request_bytes("POST", CHAT, json_body=HELLO_STREAM)
    server_cfg = {"drain_timeout": 20.0, "keepalive_timeout": 20.0}
    with anyio.fail_after(10):  # far less than either timeout
        async with proxied(pki, headers=SLOW, server=server_cfg) as h:
            async with await anyio.connect_tcp("127.0.0.1", h.proxy.port) as s:
                await s.send(body + b"\r\n" if ahead else body)
                first = await read_until(s, b'"content":"')  # the stream runs
                if not ahead:
                    await s.send(b"\r\n")
                await h.proxy.server.shutdown()
                rest = await read_all(s)
    (stream,), left = parse_responses(first + rest)
    assert left == b"" and stream.status == 200
    assert chat_stream_outcome(stream.body)[1] is None


async def test_sigterm_closes_idle_keepalive_connections_at_once(
    pki: SimpleNamespace, tmp_path: Path
) -> None:
    with anyio.fail_after(30):
        async with _real_process_mid_stream(pki, tmp_path, 8.0, LONG) as (backend, proxy, reader):
            async with await anyio.connect_tcp("127.0.0.1", proxy.port) as idle:
                await idle.send(request_bytes("GET", "/health"))  # kept alive
                assert (await _one_reply(idle)).status == 200
                proxy.proc.send_signal(signal.SIGTERM)
                await proxy.wait_line("draining 1 in-flight request")
                with pytest.raises(anyio.EndOfStream):  # a quiet close, not a reset
                    await idle.receive()
                # at once, not when the drain ends
                assert proxy.proc.returncode is None and not reader.done.is_set()
                try:  # a request sent on it anyway reaches nothing
                    await idle.send(request_bytes("POST", CHAT, json_body=HELLO_STREAM))
                except (anyio.BrokenResourceError, OSError):
                    pass
                assert await read_all(idle) == b""
            await reader.done.wait()
            code = await proxy.proc.wait()
            log = "\n".join(proxy.lines)
    assert code == 0, log
    _, err = chat_stream_outcome(parse_one(bytes(reader.data)).body)
    assert err is None and _deltas(parse_one(bytes(reader.data)).body) == 12
    assert backend.stats.requests_total == 1


@pytest.mark.parametrize("where", ["fresh-expect-100", "kept-alive"])
async def test_sigterm_while_a_body_arrives_serves_it(
    pki: SimpleNamespace, tmp_path: Path, where: str
) -> None:
    # no other request: the one whose body is half here is in flight all the same
    body = json.dumps(HELLO).encode()
    half = len(body) // 2
    with anyio.fail_after(30):
        async with devbackend.run(tls=pki.server_context()) as backend:
            cfg = proxy_config(backend.url, pki, server={"drain_timeout": 10.0})
            async with proxy_process(cfg, tmp_path) as proxy:
                async with await anyio.connect_tcp("127.0.0.1", proxy.port) as s:
                    if where == "kept-alive":
                        await s.send(request_bytes("GET", "/health"))
                        assert (await _one_reply(s)).status == 200
                        head = request_bytes("POST", CHAT, body)[: -len(body)]
                        await s.send(head + body[:half])
                    else:  # the 100 shows that the proxy is reading the body
                        head = request_bytes("POST", CHAT, body, {"Expect": "100-continue"})
                        await s.send(head[: -len(body)])
                        assert (await s.receive()).startswith(b"HTTP/1.1 100 ")
                        await s.send(body[:half])
                    proxy.proc.send_signal(signal.SIGTERM)
                    await _line_before_exit(proxy, "draining 1 in-flight request")
                    await s.send(body[half:])
                    r = parse_one(await read_all(s))
                code = await proxy.proc.wait()
                log = "\n".join(proxy.lines)
    assert code == 0, log
    assert r.status == 200 and r.header("connection") == "close"
    assert r.json()["choices"][0]["finish_reason"] == "stop"
    assert backend.stats.requests_total == 1


async def test_sighup_drains_like_sigterm_and_exits_0(pki: SimpleNamespace, tmp_path: Path) -> None:
    with anyio.fail_after(30):
        async with _real_process_mid_stream(pki, tmp_path, 10.0, SLOW) as (_, proxy, reader):
            proxy.proc.send_signal(signal.SIGHUP)
            line = await _line_before_exit(proxy, "SIGHUP received; shutting down after the drain")
            await proxy.wait_line("draining 1 in-flight request")
            proxy.proc.send_signal(signal.SIGHUP)  # again: no hurry
            await proxy.wait_line("SIGHUP received; already shutting down")
            await reader.done.wait()
            code = await proxy.proc.wait()
            log = "\n".join(proxy.lines)
    assert code == 0, log
    assert "WARNING" in line and "configuration is read at start" in line
    assert "stopped" in log
    r = parse_one(bytes(reader.data))
    _, err = chat_stream_outcome(r.body)
    assert err is None and _deltas(r.body) == 12


async def test_a_body_still_arriving_at_the_drain_timeout_is_cut(pki: SimpleNamespace) -> None:
    # let in, but not waited for past drain_timeout (header_timeout is far longer)
    body = json.dumps(HELLO).encode()
    with anyio.fail_after(15):
        async with devbackend.run(tls=pki.server_context()) as backend:
            cfg = make_config(
                backend.url,
                pki.auth,
                server={"drain_timeout": 0.3, "header_timeout": 60.0},
                backend={"proxy": ""},
            )
            async with serving_like_the_cli(cfg) as proxy:
                s = await anyio.connect_tcp("127.0.0.1", proxy.port)
                head = request_bytes("POST", CHAT, body, {"Expect": "100-continue"})
                await s.send(head[: -len(body)])
                assert (await s.receive()).startswith(b"HTTP/1.1 100 ")
                await s.send(body[:10])
                t0 = anyio.current_time()
            took = anyio.current_time() - t0  # shutdown() returned
            async with s:
                assert await read_all(s) == b""  # cut with the server, no reply
    assert 0.3 <= took < 3
    assert backend.stats.requests_total == 0


def test_sighup_stays_ignored_under_nohup() -> None:
    before = signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        assert cli.stop_signals() == [signal.SIGINT, signal.SIGTERM]
        signal.signal(signal.SIGHUP, signal.SIG_DFL)
        assert cli.stop_signals() == [signal.SIGINT, signal.SIGTERM, signal.SIGHUP]
    finally:
        signal.signal(signal.SIGHUP, before)


@pytest.mark.parametrize("ignored", [[signal.SIGINT], [signal.SIGINT, signal.SIGHUP]])
def test_sigint_stays_ignored_in_a_background_job(ignored: list[signal.Signals]) -> None:
    # a non-interactive shell starts `goose-proxy &` with SIGINT ignored: a
    # Ctrl-C meant for the foreground job must not stop the proxy too
    before = {s: signal.signal(s, signal.SIG_IGN) for s in ignored}
    try:
        left = [s for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP) if s not in ignored]
        assert cli.stop_signals() == left
    finally:
        for s, handler in before.items():
            signal.signal(s, handler)


async def test_sigint_ignored_at_start_leaves_the_proxy_running(
    pki: SimpleNamespace, tmp_path: Path
) -> None:
    # the child inherits the ignored SIGINT, as from `goose-proxy &` in a script
    with anyio.fail_after(30):
        async with AsyncExitStack() as stack:
            before = signal.signal(signal.SIGINT, signal.SIG_IGN)
            try:
                cfg = proxy_config("https://127.0.0.1:9", pki)
                proxy = await stack.enter_async_context(proxy_process(cfg, tmp_path))
            finally:
                signal.signal(signal.SIGINT, before)
            proxy.proc.send_signal(signal.SIGINT)  # an ignored signal is discarded as sent
            async with await anyio.connect_tcp("127.0.0.1", proxy.port) as s:
                await s.send(request_bytes("GET", "/health", headers={"Connection": "close"}))
                answer = await read_all(s)
            proxy.proc.send_signal(signal.SIGTERM)
            code = await proxy.proc.wait()
    log = "\n".join(proxy.lines)
    assert answer.startswith(b"HTTP/1.1 200 "), answer
    assert code == 0, log
    assert "SIGINT" not in log and "SIGTERM received; shutting down" in log


def test_ctrl_c_while_starting_exits_130_without_a_traceback(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Ctrl-C can come while modules or the file are loading, before any
    # handler: status 130 as for one before "listening", not a traceback
    def interrupted(path: object) -> object:
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "load_config", interrupted)
    try:
        rc = cli.main(["--config", "unused.toml"])
    except KeyboardInterrupt:
        pytest.fail("Ctrl-C while starting escaped main()")
    assert rc == 130
    assert "Traceback" not in capsys.readouterr().err
