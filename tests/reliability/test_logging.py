"""What the log may hold: no request or response body at INFO or above, no key
material at any level, no credentials from a proxy URL, and no exception
text (which can quote a body) for a bug — its type and place instead."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import signal
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import anyio
import anyio.abc
import httpx
import pytest

from goose_proxy import stderr_log
from goose_proxy.config import AuthConfig
from goose_proxy.http.handlers import Handlers
from goose_proxy.http.server import ProxyServer
from goose_proxy.stderr_log import StderrHandler
from tests.reliability.support import (
    SSE_HEAD,
    chunk,
    exchange,
    fake_server,
    http_answer,
    post,
    proxied,
    proxy_config,
    proxy_process,
    read_request_head,
    read_until,
    request_bytes,
    sse_event,
    wait_settled,
)
from tests.support import CertClock, make_config, refusing_port, running_proxy

pytestmark = pytest.mark.anyio

SECRET = "zebra-umbrella-7731"  # stands for a prompt, an answer, an error body


def _logged(caplog: pytest.LogCaptureFixture, level: int = logging.INFO) -> str:
    out = []
    for rec in caplog.records:
        if rec.levelno >= level:
            out.append(rec.getMessage())
            if rec.exc_text:
                out.append(rec.exc_text)
            if rec.exc_info and rec.exc_info[1] is not None:
                out.append(logging.Formatter().formatException(rec.exc_info))
    return "\n".join(out)


@asynccontextmanager
async def _proxy_before(pki: SimpleNamespace, answers: list[bytes]) -> AsyncIterator[Any]:
    """A running proxy whose TLS backend answers its n-th request with ``answers[n]``."""

    async def handler(stream: anyio.abc.ByteStream, tcp: anyio.abc.SocketStream) -> None:
        while True:
            await read_request_head(stream, srv)
            await stream.send(answers[len(srv.requests) - 1])

    async with fake_server(handler, tls=pki.server_context()) as srv:
        async with running_proxy(make_config(srv.url, pki.auth, backend={"proxy": ""})) as proxy:
            yield proxy


def _chat(text: str, stream: bool = False) -> dict[str, Any]:
    return {"model": "m", "messages": [{"role": "user", "content": text}], "stream": stream}


async def test_no_bodies_at_info_through_the_scripted_backend(
    pki: SimpleNamespace, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    with anyio.fail_after(15):
        async with proxied(pki) as h:
            await post(h.url, _chat(SECRET))
            await post(h.url, _chat(SECRET, stream=True))
            await post(h.url, {"model": "m", "input": SECRET}, path="/v1/responses")
            await post(h.url, {"model": "m", "input": SECRET, "stream": True}, path="/v1/responses")
            await post(h.url, {"model": SECRET, "messages": SECRET})  # 400, echoes nothing?
            bad = await exchange(
                h.proxy.port,
                request_bytes(
                    "POST",
                    "/v1/chat/completions",
                    f"{{{SECRET}".encode(),
                    {"Connection": "close"},
                ),
            )
    assert b" 400 " in bad
    text = _logged(caplog)
    assert "/v1/chat/completions 200" in text  # the access lines are there
    assert SECRET not in text
    assert "You said" not in text  # the answer


async def test_no_backend_error_bodies_at_info(
    pki: SimpleNamespace, caplog: pytest.LogCaptureFixture
) -> None:
    """Error bodies and failed-stream messages come from the backend: not for the log."""
    replies = [
        (500, "text/plain", f"internal failure while answering {SECRET}".encode()),
        (503, "application/json", json.dumps({"detail": f"overloaded {SECRET}"}).encode()),
        (429, "application/json", json.dumps({"detail": f"quota {SECRET}"}).encode()),
        (200, "text/html", f"<html>{SECRET}</html>".encode()),
        (200, "application/json", b"[1, 2]"),
    ]
    failed = {
        "type": "response.failed",
        "response": {"status": "failed", "error": {"code": "server_error", "message": SECRET}},
    }
    answers = [http_answer(f"{s} X", [("content-type", t)], body) for s, t, body in replies]
    answers.append(SSE_HEAD + chunk(sse_event(failed)) + b"0\r\n\r\n")

    caplog.set_level(logging.DEBUG)
    statuses = []
    with anyio.fail_after(15):
        async with _proxy_before(pki, answers) as proxy:
            for _ in answers:
                r = await post(proxy.url, _chat("hi", stream=True))
                statuses.append(r.status_code)
    assert statuses == [500, 503, 429, 502, 502, 502]
    text = _logged(caplog)
    assert "backend reported an error: 503" in text
    assert SECRET not in text


async def test_a_refused_identity_and_other_backend_errors_are_warned_about(
    pki: SimpleNamespace, caplog: pytest.LogCaptureFixture
) -> None:
    """``journalctl -p warning`` shows the backend refusing this host (401,
    403) or answering another error status (a wrong endpoint's 404), by
    status and code only; a client's own mistake is no warning."""
    replies = [
        (403, json.dumps({"detail": f"Insufficient entitlements {SECRET}"}).encode()),
        (401, json.dumps({"error": {"message": SECRET, "code": "invalid_cert"}}).encode()),
        (404, json.dumps({"detail": f"Not Found {SECRET}"}).encode()),
        (409, json.dumps({"error": {"message": SECRET, "code": "conflict"}}).encode()),
        # the request's own fault, as the backend says: no warning
        (400, json.dumps({"error": {"message": SECRET, "code": "invalid_value"}}).encode()),
        # the passthrough relays an OpenAI error as it came, and warns the same
        (403, json.dumps({"error": {"message": SECRET, "code": "forbidden"}}).encode()),
    ]

    json_type = [("content-type", "application/json")]
    answers = [http_answer(f"{status} X", json_type, body) for status, body in replies]

    caplog.set_level(logging.WARNING)
    statuses = []
    with anyio.fail_after(15):
        async with _proxy_before(pki, answers) as proxy:
            for stream in (False, True, False, True, False):
                r = await post(proxy.url, _chat("hi", stream=stream))
                statuses.append(r.status_code)
            r = await post(proxy.url, {"model": "m", "input": "hi"}, path="/v1/responses")
            statuses.append(r.status_code)
            r = await post(proxy.url, {"model": "m", "messages": []})  # the client's
            statuses.append(r.status_code)
    assert statuses == [403, 401, 404, 409, 400, 403, 400]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == [
        "POST /v1/chat/completions: backend reported an error: 403 permission_denied",
        "POST /v1/chat/completions: backend reported an error: 401 invalid_cert",
        "POST /v1/chat/completions: backend reported an error: 404 (no code)",
        "POST /v1/chat/completions: backend reported an error: 409 conflict",
        "POST /v1/responses: backend reported an error: 403 forbidden",
    ]
    assert SECRET not in _logged(caplog, logging.DEBUG)


async def test_internal_error_logs_type_and_place_not_text(
    pki: SimpleNamespace, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def boom(self: Handlers, ex: Any) -> None:
        raise ValueError(f"cannot handle {SECRET}")

    monkeypatch.setattr(Handlers, "models", boom)
    caplog.set_level(logging.INFO)
    with anyio.fail_after(10):
        async with running_proxy(make_config("https://127.0.0.1:9")) as proxy:
            async with httpx.AsyncClient() as c:
                r = await c.get(proxy.url + "/v1/models")
                health = await c.get(proxy.url + "/health")
    assert r.status_code == 500
    assert r.json()["error"]["code"] == "internal_error"
    assert SECRET not in r.text
    assert health.status_code == 200
    text = _logged(caplog)
    assert "ValueError at test_logging.py" in text and "in boom" in text
    assert SECRET not in text


async def test_connection_level_bug_closes_only_that_connection(
    pki: SimpleNamespace, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = ProxyServer._check_request

    def flaky(self: ProxyServer, req: Any) -> Any:
        if req.path == "/boom":
            raise RuntimeError(f"bug near {SECRET}")
        return real(self, req)

    monkeypatch.setattr(ProxyServer, "_check_request", flaky)
    caplog.set_level(logging.INFO)
    with anyio.fail_after(10):
        async with running_proxy(make_config("https://127.0.0.1:9")) as proxy:
            data = await exchange(proxy.port, request_bytes("GET", "/boom"))
            async with httpx.AsyncClient() as c:
                health = await c.get(proxy.url + "/health")
    assert data == b""  # closed
    assert health.status_code == 200
    text = _logged(caplog)
    assert "internal error on a client connection: RuntimeError" in text
    assert SECRET not in text


def _key_material(*paths: Path) -> list[str]:
    """Lines of the PEM bodies of ``paths`` long enough to be unmistakable."""
    out = []
    for p in paths:
        for line in p.read_text().splitlines():
            if not line.startswith("-----") and len(line) >= 32:
                out.append(line)
    return out


async def test_no_key_material_at_any_level(
    pki: SimpleNamespace, caplog: pytest.LogCaptureFixture, tmp_path: Path, cert_clock: CertClock
) -> None:
    """DEBUG logging across a normal request, a renewal, a mismatched key and a TLS
    failure never shows key material."""
    import shutil

    d = tmp_path / "consumer"
    d.mkdir()
    shutil.copyfile(pki.cert_file, d / "cert.pem")
    shutil.copyfile(pki.key_file, d / "key.pem")
    stranger_key = pki.dir / "stranger-key.pem"
    auth = AuthConfig(str(d / "cert.pem"), str(d / "key.pem"), pki.ca_file)
    caplog.set_level(logging.DEBUG)
    with anyio.fail_after(15):
        async with proxied(pki) as h:
            cfg = make_config(h.backend.url, auth, backend={"proxy": ""})
            async with running_proxy(cfg) as proxy:
                ok = await post(proxy.url, _chat("hi"))
                shutil.copyfile(stranger_key, d / "key.pem")  # mismatched
                cert_clock.pass_recheck_interval()
                covered = await post(proxy.url, _chat("hi"))  # the old pair, for the grace
                cert_clock.pass_renewal_grace()
                mismatch = await post(proxy.url, _chat("hi"))
                shutil.copyfile(pki.dir / "stranger-cert.pem", d / "cert.pem")  # unknown CA
                rejected = await post(proxy.url, _chat("hi"))
    assert ok.status_code == covered.status_code == 200
    assert mismatch.status_code == 502 and rejected.status_code == 502
    text = _logged(caplog, logging.DEBUG) + mismatch.text + rejected.text
    assert "PRIVATE KEY" not in text and "BEGIN" not in text
    for line in _key_material(Path(pki.key_file), stranger_key):
        assert line not in text


async def test_proxy_url_credentials_are_redacted(
    pki: SimpleNamespace, caplog: pytest.LogCaptureFixture
) -> None:
    async def refuse(stream: anyio.abc.ByteStream, tcp: anyio.abc.SocketStream) -> None:
        head = await read_request_head(stream, srv)
        assert head.startswith(b"CONNECT ")
        await stream.send(
            b"HTTP/1.1 407 Proxy Authentication Required\r\ncontent-length: 0\r\n\r\n"
        )

    password = "pr0xy-s3cret"
    caplog.set_level(logging.DEBUG)
    with anyio.fail_after(10):
        async with fake_server(refuse) as srv:
            proxy_url = f"http://alice:{password}@127.0.0.1:{srv.port}"
            cfg = make_config("https://backend.example.com", pki.auth, backend={"proxy": proxy_url})
            async with running_proxy(cfg) as proxy:
                r = await post(proxy.url, _chat("hi"))
    assert r.status_code == 502
    err = r.json()["error"]
    assert err["code"] == "upstream_proxy_error"
    assert f"http://***@127.0.0.1:{srv.port}" in err["message"] and "407" in err["message"]
    # the credentials did go to the proxy, and nowhere else
    sent = srv.requests[-1].decode("latin-1")
    token = base64.b64encode(f"alice:{password}".encode()).decode()
    assert f"proxy-authorization: Basic {token}" in sent
    text = _logged(caplog, logging.DEBUG) + r.text
    assert password not in text and token not in text and "alice" not in text


async def test_unreachable_proxy_is_named_redacted(
    pki: SimpleNamespace, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    with anyio.fail_after(10), refusing_port() as port:
        cfg = make_config(
            "https://backend.example.com",
            pki.auth,
            backend={"proxy": f"http://bob:hunter2@127.0.0.1:{port}"},
        )
        async with running_proxy(cfg) as proxy:
            r = await post(proxy.url, _chat("hi"))
    assert r.status_code == 502
    assert f"http://***@127.0.0.1:{port}" in r.json()["error"]["message"]
    text = _logged(caplog, logging.DEBUG) + r.text
    assert "hunter2" not in text and "bob" not in text


async def test_configured_credential_headers_are_masked_at_debug(
    pki: SimpleNamespace, caplog: pytest.LogCaptureFixture
) -> None:
    # the DEBUG request line and `goose-proxy check` share one rule for secret
    # headers (config.is_secret_header): an API key configured in
    # [backend.headers] is shown as *** in both
    # (X-Auth-Key, Authentication and X-Access-Key escaped the list of names)
    key = "sk-do-not-log-7f3a"
    secret = {
        name: f"{key}-{i}"
        for i, name in enumerate(["X-Api-Key", "X-Auth-Key", "Authentication", "X-Access-Key"])
    }
    caplog.set_level(logging.DEBUG)
    with anyio.fail_after(15):
        async with proxied(pki, headers={**secret, "X-Tenant": "acme"}) as h:
            r = await post(h.url, _chat("hi"))
    assert r.status_code == 200
    text = _logged(caplog, logging.DEBUG)
    assert all(f"{name.lower()}=***" in text for name in secret) and "x-tenant=acme" in text
    assert key not in text


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/responses"])
async def test_the_client_keys_left_out_cannot_write_log_lines(
    pki: SimpleNamespace, caplog: pytest.LogCaptureFixture, path: str
) -> None:
    # the DEBUG line naming the keys not forwarded wrote a key as it came: a
    # newline in it began a forged line (in the journal, at a priority of its own)
    forged = "seed\n<0>goose-proxy: CRITICAL forged\x1b[31m"
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], forged: 1}
    if path == "/v1/responses":
        body = {"model": "m", "input": "hi", forged: 1}
    caplog.set_level(logging.DEBUG)
    with anyio.fail_after(15):
        async with proxied(pki) as h:
            r = await post(h.url, body, path=path)
    assert r.status_code == 200
    (line,) = [m for m in _logged(caplog, logging.DEBUG).splitlines() if "not forwarded" in m]
    assert line.endswith(f"not forwarded to the backend: {forged!a}")


async def _leave_after(fault: str, marker: bytes, pki: SimpleNamespace) -> None:
    """A streaming chat request on a raw connection, closed as soon as ``marker`` came."""
    body = json.dumps(_chat("hi", True)).encode()
    async with proxied(pki, fault=fault, backend={"stream_idle_timeout": 60}) as h:
        async with await anyio.connect_tcp("127.0.0.1", h.proxy.port) as s:
            await s.send(request_bytes("POST", "/v1/chat/completions", body))
            await read_until(s, marker)
        await wait_settled(h.proxy)


@pytest.mark.parametrize(
    ("fault", "marker", "gone"),
    [("keep_open", b"data: [DONE]\n\n", False), ("stall_mid_stream", b'"content"', True)],
    ids=["after-the-whole-stream", "mid-stream"],
)
async def test_client_gone_in_the_access_line_only_when_the_answer_was_cut(
    pki: SimpleNamespace, caplog: pytest.LogCaptureFixture, fault: str, marker: bytes, gone: bool
) -> None:
    """After [DONE] the proxy may still wait for the backend's end of body
    (keep_open): a client that hangs up then got its whole answer, and the access
    line says so; one that hangs up mid-stream is 'client-gone'."""
    caplog.set_level(logging.INFO, logger="goose_proxy.access")
    with anyio.fail_after(15):
        await _leave_after(fault, marker, pki)
    lines = [r.getMessage() for r in caplog.records if r.name == "goose_proxy.access"]
    assert len(lines) == 1 and " 200 " in lines[0] and "stream=yes" in lines[0]
    assert ("client-gone" in lines[0]) is gone


async def test_a_long_path_or_method_is_cut_in_the_access_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level("INFO", logger="goose_proxy")
    with anyio.fail_after(10):
        async with running_proxy(make_config("http://127.0.0.1:9/v1")) as proxy:
            async with httpx.AsyncClient(timeout=10) as c:
                r = await c.get(proxy.url + "/" + "a" * 12_000)
                odd = await c.request("M" * 12_000, proxy.url + "/health")
    assert (r.status_code, odd.status_code) == (404, 405)
    path, method = [rec.getMessage() for rec in caplog.records if rec.name == "goose_proxy.access"]
    assert f"GET /{'a' * 255}... 404 " in path and len(path) < 400
    assert method.startswith(f"{'M' * 32}... /health 405 ") and len(method) < 200


async def test_a_request_id_with_spaces_is_replaced(caplog: pytest.LogCaptureFixture) -> None:
    # the access line ends "rid=<id>[ client-gone]": an id with spaces could write
    # fields of its own there, so it gets a fresh id as an unprintable one does
    caplog.set_level("INFO", logger="goose_proxy")
    forged = "req-1 client-gone upstream=200"
    with anyio.fail_after(10):
        async with running_proxy(make_config("http://127.0.0.1:9/v1")) as proxy:
            async with httpx.AsyncClient(timeout=10) as c:
                r = await c.get(proxy.url + "/health", headers={"X-Request-ID": forged})
    rid = r.headers["x-request-id"]
    assert rid != forged and len(rid) == 32
    (line,) = [rec.getMessage() for rec in caplog.records if rec.name == "goose_proxy.access"]
    assert line.endswith(f" rid={rid}") and "client-gone" not in line


async def test_a_stderr_nobody_reads_does_not_stop_the_proxy(
    pki: SimpleNamespace, tmp_path: Path
) -> None:
    # "goose-proxy 2>&1 | less" left at a page: the pipe fills after some
    # 64 KiB of access lines. A handler that waits on it stopped the event
    # loop (every client, /health and SIGTERM); lines stderr cannot take now
    # are counted instead, and the count is logged once it takes lines again
    cfg = proxy_config("http://127.0.0.1:9/v1", pki)  # (no request goes there)
    n = 1500  # about 200 KB of access lines
    with anyio.fail_after(90):
        async with proxy_process(cfg, tmp_path, hold_log=True) as proxy:
            async with httpx.AsyncClient(timeout=5, trust_env=False) as c:
                for _ in range(n):
                    assert (await c.get(proxy.url + "/health")).status_code == 200
                proxy.read_log()
                # the event loop writes the waiting line and the count once the
                # pipe has room, without waiting for another record
                note = await proxy.wait_line("log line(s) dropped")
                back = {"X-Request-ID": "after-the-reader-came-back"}
                assert (await c.get(proxy.url + "/health", headers=back)).status_code == 200
            await proxy.wait_line("rid=after-the-reader-came-back")
            proxy.proc.send_signal(signal.SIGTERM)
            assert await proxy.proc.wait() == 0
    dropped = int(note.split(" log line(s) dropped")[0].rsplit(" ", 1)[1])
    written = sum("GET /health 200" in line for line in proxy.lines)
    assert dropped > 0 and written + dropped == n + 1  # every line written or counted


def _emit_within(
    handler: logging.Handler, messages: list[str], reader: int, seconds: float = 10
) -> None:
    """Emit each message on a thread, from an event loop; fail if that takes longer than ``seconds``
    (a handler that waits on its file would never return: its file is then read
    from ``reader`` until the thread ends, so that the test ends too)."""

    async def emit_all() -> None:  # as the proxy does: on a running event loop
        for message in messages:
            handler.handle(logging.makeLogRecord({"msg": message, "levelno": 20}))

    def run() -> None:
        asyncio.run(emit_all())

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(seconds)
    waited = worker.is_alive()
    while worker.is_alive():
        _read_all(reader)
        worker.join(0.05)
    assert not waited, "the handler waited for its file"


def _message_handler(stream: Any) -> StderrHandler:
    """The proxy's stderr handler on ``stream``, writing records' messages alone."""
    handler = StderrHandler(stream)
    handler.setFormatter(logging.Formatter("%(message)s"))
    return handler


def _read_all(fd: int) -> bytes:
    """What can be read from ``fd`` now (it is non-blocking)."""
    out = b""
    while True:
        try:
            data = os.read(fd, 65536)
        except (BlockingIOError, OSError):  # (a pty's master: EIO once it is empty)
            return out
        if not data:
            return out
        out += data


@pytest.mark.parametrize("ours", [True, False], ids=["opened-again", "another-users"])
def test_a_long_line_to_a_full_pipe_waits_for_the_next_record(
    ours: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    # a pipe takes a write of up to PIPE_BUF at once or not at all, a longer one
    # in pieces: what it does not take waits (never the event loop), and records
    # that come meanwhile are counted. Another user's pipe cannot be opened
    # again (EACCES: a container's stderr under USER): the handler wrote it as
    # StreamHandler does, and waited; it writes PIPE_BUF bytes when poll says
    # they fit
    r, w = _full_pipe()  # room for one page, not for the line
    stream = os.fdopen(w, "w")
    try:
        handler = (
            _message_handler(stream) if ours else _handler_not_opened_again(stream, monkeypatch)
        )
        long_line = "L" * 12_000
        _emit_within(handler, [long_line, "while the pipe is full"], r)
        assert handler.dropped == 1 and os.get_blocking(w)  # stderr's flags as they were
        got = _read_all(r)
        _emit_within(handler, ["after"], r)
        got += _read_all(r)
    finally:
        stream.close()
        os.close(r)
    text = got.decode().replace("~", "")
    assert text.split("\n")[:3] == [
        long_line,
        "1 log line(s) dropped: stderr could not take them (nothing was reading it)",
        "after",
    ]


@pytest.mark.parametrize("ours", [True, False], ids=["opened-again", "another-users"])
def test_a_terminal_nobody_reads_does_not_stop_the_handler(
    ours: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    # another user's terminal, not the controlling one, cannot be opened again:
    # it promises room for one byte only, so that is what each write may take
    master, slave = os.openpty()
    os.set_blocking(master, False)
    stream = os.fdopen(slave, "w")
    try:
        handler = (
            _message_handler(stream) if ours else _handler_not_opened_again(stream, monkeypatch)
        )
        _emit_within(handler, [f"line {i:05d} " + "x" * 100 for i in range(3000)], master)
        assert handler.dropped > 0
        _read_all(master)
        _emit_within(handler, ["after"], master)
        got = _read_all(master)
    finally:
        stream.close()
        os.close(master)
    assert b"log line(s) dropped" in got and b"after" in got


def _handler_not_opened_again(stream: Any, monkeypatch: pytest.MonkeyPatch) -> StderrHandler:
    """:func:`_message_handler`, made where stderr may not be opened again
    (another user's pipe or terminal, not the controlling one: EACCES)."""
    real_open = os.open

    def refused(path: str, *args: Any, **kwargs: Any) -> int:
        if str(path).startswith("/proc/self/fd/") or str(path) == "/dev/tty":
            raise PermissionError(13, "Permission denied", path)
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(stderr_log.os, "open", refused)
    try:
        return _message_handler(stream)
    finally:
        monkeypatch.undo()


def _full_pipe() -> tuple[int, int]:
    """A pipe (read end non-blocking) whose buffer is full but for one page."""
    r, w = os.pipe()
    os.set_blocking(r, False)
    filler = os.open(f"/proc/self/fd/{w}", os.O_WRONLY | os.O_NONBLOCK)
    try:
        while True:
            os.write(filler, b"~" * 4096)
    except BlockingIOError:
        os.close(filler)
    assert len(os.read(r, 4096)) == 4096
    return r, w


async def test_the_event_loop_writes_a_waiting_line_once_there_is_room() -> None:
    # the rest of a line the pipe did not take is written as soon as the pipe
    # has room, not when (if ever) the next record comes
    r, w = _full_pipe()
    stream = os.fdopen(w, "w")
    try:
        handler = _message_handler(stream)
        long_line = "L" * 12_000
        handler.handle(logging.makeLogRecord({"msg": long_line, "levelno": 20}))
        got = b""
        with anyio.fail_after(10):
            while not got.endswith(long_line.encode() + b"\n"):
                got += _read_all(r)
                await anyio.sleep(0.01)  # (polling the test's own pipe)
    finally:
        handler.close()
        stream.close()
        os.close(r)
    assert got.replace(b"~", b"") == long_line.encode() + b"\n"


def test_at_exit_the_waiting_line_and_the_count_get_a_moment() -> None:
    # logging.shutdown closes the handler: a line left waiting, and the count
    # of those dropped meanwhile, still go if stderr takes them within a second
    r, w = _full_pipe()
    stream = os.fdopen(w, "w")
    handler = _message_handler(stream)
    _emit_within(handler, ["A" * 12_000, "dropped one", "dropped two"], r)
    assert handler.dropped == 2
    got: list[bytes] = []

    def read_slowly() -> None:  # a reader that comes back
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            got.append(_read_all(r))
            if b"dropped: stderr" in b"".join(got):
                return
            time.sleep(0.01)

    reader = threading.Thread(target=read_slowly, daemon=True)
    reader.start()
    try:
        handler.close()
        reader.join(10)
    finally:
        stream.close()
        os.close(r)
    text = b"".join(got).replace(b"~", b"").decode()
    assert text.split("\n")[:2] == [
        "A" * 12_000,
        "2 log line(s) dropped: stderr could not take them (nothing was reading it)",
    ]


def test_without_an_event_loop_a_record_waits_a_moment_for_room() -> None:
    # at start and at exit nothing is served: a record waits (a second at most)
    # for a slow reader rather than being dropped (an error such as "cannot
    # listen" was lost behind a burst)
    r, w = _full_pipe()
    stream = os.fdopen(w, "w")
    handler = _message_handler(stream)
    got: list[bytes] = []
    stop = threading.Event()

    def read_slowly() -> None:  # 4 KiB every 10 ms
        while not stop.is_set():
            try:
                got.append(os.read(r, 4096))
            except BlockingIOError:
                pass
            time.sleep(0.01)

    reader = threading.Thread(target=read_slowly, daemon=True)
    reader.start()
    try:
        for i in range(60):
            handler.handle(logging.makeLogRecord({"msg": f"{i:02d} " + "x" * 1000}))
        handler.handle(logging.makeLogRecord({"msg": "cannot listen: address in use"}))
        handler.close()
    finally:
        stop.set()
        reader.join(10)
        got.append(_read_all(r))
        stream.close()
        os.close(r)
    lines = b"".join(got).replace(b"~", b"").decode().split("\n")
    assert handler.dropped == 0
    assert lines[-2:] == ["cannot listen: address in use", ""] and len(lines) == 62


def test_at_exit_a_stderr_whose_reader_is_gone_is_given_up_at_once() -> None:
    # the reader went away (EPIPE): the count of dropped lines cannot be written
    # either, and close() kept trying for good, so the process never exited
    r, w = os.pipe()
    stream = os.fdopen(w, "w")
    handler = _message_handler(stream)
    os.close(r)
    handler.dropped = 3  # lines counted while the pipe was full
    closing = threading.Thread(target=handler.close, daemon=True)
    try:
        closing.start()
        closing.join(10)
        assert not closing.is_alive(), "close() kept trying"
    finally:
        stream.close()
    assert handler.dropped == 4  # the count, and the note of it that could not go
