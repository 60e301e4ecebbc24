"""Helpers for the reliability tests: raw HTTP on loopback, a strict response
parser, tiny purpose-built fake backends, the proxy as a real subprocess, and
leak checks.

Everything here is bounded: reads stop at a byte cap or at the end of the
stream, and callers wrap each exchange in ``anyio.fail_after``.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import ssl
import sys
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable, Optional, Union

import anyio
import anyio.abc
import httpx
from anyio.streams.tls import TLSStream

import devbackend
from devbackend.client import parse_sse
from tests.support import make_config, running_proxy

PROJECT_ROOT = Path(__file__).resolve().parents[2]
HELLO = {"model": "m", "messages": [{"role": "user", "content": "hello"}]}
HELLO_STREAM = {**HELLO, "stream": True}
#: the most a test reads from one connection
READ_CAP = 64 * 1024 * 1024

_CLOSED = (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError, OSError)


# --- raw HTTP ------------------------------------------------------------------


def request_bytes(
    method: str = "POST",
    path: str = "/v1/chat/completions",
    body: Optional[bytes] = None,
    headers: Optional[Mapping[str, str]] = None,
    *,
    host: str = "localhost",
    json_body: Any = None,
) -> bytes:
    """One HTTP/1.1 request as bytes (Content-Length framed)."""
    if json_body is not None:
        body = json.dumps(json_body).encode()
    hdrs = {"Host": host}
    if body is not None:
        hdrs["Content-Type"] = "application/json"
        hdrs["Content-Length"] = str(len(body))
    hdrs.update(headers or {})
    head = f"{method} {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in hdrs.items())
    return head.encode("latin-1") + b"\r\n" + (body or b"")


async def read_all(stream: anyio.abc.ByteStream, cap: int = READ_CAP) -> bytes:
    """Everything until the peer closes (or breaks the connection), at most ``cap`` bytes."""
    out = bytearray()
    try:
        while len(out) < cap:
            out += await stream.receive()
    except _CLOSED:
        pass
    return bytes(out)


async def exchange(port: int, data: bytes, *, half_close: bool = False) -> bytes:
    """Connect, send ``data``, read until the proxy closes. Bound it with fail_after."""
    async with await anyio.connect_tcp("127.0.0.1", port) as s:
        await s.send(data)
        if half_close:
            await s.send_eof()
        return await read_all(s)


async def ask(port: int, data: bytes, *, head: bool = False) -> Response:
    """One request (``data`` should ask the proxy to close after it), one strict
    reply (``head``: to a HEAD request); at most 10 s."""
    with anyio.fail_after(10):
        return parse_one(await exchange(port, data), head)


@dataclass
class Response:
    status: int
    headers: list[tuple[str, str]]
    body: bytes
    chunked: bool = False

    def header(self, name: str) -> Optional[str]:
        name = name.lower()
        return next((v for k, v in self.headers if k == name), None)

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def error(self) -> dict[str, Any]:
        """The OpenAI error envelope's ``error`` (asserts the envelope's shape)."""
        obj = self.json()
        assert set(obj) == {"error"}, obj
        err = obj["error"]
        assert set(err) == {"message", "type", "param", "code"}, err
        assert isinstance(err["message"], str) and err["message"]
        return dict(err)


_STATUS_LINE = re.compile(rb"HTTP/1\.[01] (\d{3})(?: [^\r\n]*)?\Z")


class Malformed(ValueError):
    """The proxy sent bytes that are not a well-formed HTTP/1.1 response stream."""


def parse_responses(
    data: bytes, head_request: Union[bool, Sequence[bool]] = False
) -> tuple[list[Response], bytes]:
    """Split ``data`` into complete responses; returns them and the unparsed rest.

    ``head_request``: the request was HEAD (its reply has no body), or one flag
    per reply for pipelined requests.

    Strict: a bad status line, a bad header line, a bad chunk size or a body
    cut short raise :class:`Malformed` (a garbled reply). Linear in ``len(data)``.
    """
    out: list[Response] = []
    pos = 0
    n = len(data)
    while pos < n:
        end = data.find(b"\r\n\r\n", pos)
        if end < 0:
            raise Malformed(f"incomplete response head: {data[pos : pos + 200]!r}")
        lines = data[pos:end].split(b"\r\n")
        m = _STATUS_LINE.match(lines[0])
        if m is None:
            raise Malformed(f"bad status line {lines[0][:200]!r}")
        headers: list[tuple[str, str]] = []
        for line in lines[1:]:
            name, sep, value = line.partition(b":")
            if not sep or not name or name != name.strip():
                raise Malformed(f"bad header line {line[:200]!r}")
            headers.append((name.decode("latin-1").lower(), value.strip().decode("latin-1")))
        resp = Response(int(m.group(1)), headers, b"")
        pos = end + 4
        te = resp.header("transfer-encoding")
        cl = resp.header("content-length")
        if isinstance(head_request, bool):
            head = head_request
        else:
            head = len(out) < len(head_request) and head_request[len(out)]
        if head or resp.status in (204, 304) or 100 <= resp.status < 200:
            pass
        elif te is not None:
            if te.lower() != "chunked":
                raise Malformed(f"unexpected transfer-encoding {te!r}")
            resp.chunked = True
            parts = []
            while True:
                eol = data.find(b"\r\n", pos)
                if eol < 0:
                    raise Malformed("chunked body cut short")
                try:
                    size = int(data[pos:eol].split(b";")[0], 16)
                except ValueError:
                    raise Malformed(f"bad chunk size {data[pos:eol][:40]!r}") from None
                start = eol + 2
                if n < start + size + 2 or data[start + size : start + size + 2] != b"\r\n":
                    raise Malformed("chunk cut short")
                parts.append(data[start : start + size])
                pos = start + size + 2
                if size == 0:
                    break
            resp.body = b"".join(parts)
        elif cl is not None:
            length = int(cl)
            if n - pos < length:
                raise Malformed(f"body cut short ({n - pos} of {length} bytes)")
            resp.body = data[pos : pos + length]
            pos += length
        else:
            resp.body, pos = data[pos:], n  # delimited by the close
        if 100 <= resp.status < 200:
            if resp.status != 100:
                raise Malformed(f"unexpected informational status {resp.status}")
            continue  # 100 Continue: not a final response
        out.append(resp)
    return out, data[pos:]


def parse_one(data: bytes, head_request: Union[bool, Sequence[bool]] = False) -> Response:
    responses, rest = parse_responses(data, head_request)
    assert len(responses) == 1 and not rest, (responses, rest[:200])
    return responses[0]


def sse_data(body: bytes) -> list[str]:
    """The ``data:`` payloads of an SSE body, in order (asserts the framing)."""
    text = body.decode("utf-8")
    assert text.endswith("\n\n"), text[-200:]
    out = []
    for block in text.split("\n\n")[:-1]:
        lines = [ln for ln in block.split("\n") if not ln.startswith(":")]
        data = [ln[6:] for ln in lines if ln.startswith("data: ")]
        assert data, block
        out.append("\n".join(data))
    return out


def chat_stream_outcome(body: bytes) -> tuple[str, Optional[dict[str, Any]]]:
    """A chat SSE body's text and its error (None when it finished normally).

    Asserts the invariants: ``[DONE]`` last; exactly one of a finish_reason
    or an error event; nothing after it but ``[DONE]``.
    """
    events = sse_data(body)
    assert events and events[-1] == "[DONE]", events[-3:]
    chunks = [json.loads(e) for e in events[:-1]]
    text = ""
    finishes = []
    errors = []
    for c in chunks:
        if "error" in c:
            errors.append(c["error"])
            continue
        for ch in c.get("choices", []):
            text += ch.get("delta", {}).get("content") or ""
            if ch.get("finish_reason"):
                finishes.append(ch["finish_reason"])
    assert len(finishes) + len(errors) == 1, (finishes, errors)
    if errors:
        assert "error" in chunks[-1], "the error event is the last chunk"
        err = errors[0]
        assert {"message", "type", "code"} <= set(err), err
        return text, err
    return text, None


def passthrough_events(content: bytes) -> list[tuple[Optional[str], Any]]:
    """Each event of a passthrough stream as (SSE name, parsed data): every one must
    be whole (its data one JSON document, or ``[DONE]``)."""
    assert content.endswith(b"\n\n")
    return [(n, d if d == "[DONE]" else json.loads(d)) for n, d in parse_sse(content)]


def passthrough_error_event(content: bytes, kind: str = "api_error") -> dict[str, Any]:
    """The error event a broken passthrough stream ends with (then ``[DONE]`` if the
    backend sent one): an event of its own, numbered after the last one relayed,
    with the ``error`` object (of type ``kind``) the openai SDK and Goose read."""
    events = passthrough_events(content)
    if events[-1] == (None, "[DONE]"):
        events.pop()
    (name, event), (_, before) = events[-1], events[-2]
    assert name == "error" and event["type"] == "error"
    assert event["sequence_number"] == before["sequence_number"] + 1
    fields = {k: event[k] for k in ("code", "message", "param")}
    assert event["error"] == {"type": kind, **fields}
    assert "[DONE]" not in [data for _, data in events]
    return event  # type: ignore[no-any-return]


# --- tiny purpose-built backends ------------------------------------------------

Handler = Callable[[anyio.abc.ByteStream, anyio.abc.SocketStream], Awaitable[None]]


@dataclass
class FakeServer:
    port: int = 0
    tls: Optional[ssl.SSLContext] = None
    accepted: int = 0
    open: int = 0
    closed: anyio.Event = field(default_factory=anyio.Event)
    requests: list[bytes] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"


@asynccontextmanager
async def fake_server(
    handler: Handler, tls: Optional[ssl.SSLContext] = None
) -> AsyncIterator[FakeServer]:
    """A loopback server running ``handler(stream, tcp)`` per connection (TLS optional).

    ``closed`` is set each time a connection ends (then replaced).
    """
    srv = FakeServer(tls=tls)

    async def serve(tcp: anyio.abc.SocketStream) -> None:
        srv.accepted += 1
        srv.open += 1
        stream: anyio.abc.ByteStream = tcp
        try:
            if tls is not None:
                stream = await TLSStream.wrap(
                    tcp, server_side=True, ssl_context=tls, standard_compatible=False
                )
            await handler(stream, tcp)
        except (*_CLOSED, ssl.SSLError):
            pass
        finally:
            with anyio.CancelScope(shield=True):
                await anyio.aclose_forcefully(tcp)
            srv.open -= 1
            srv.closed.set()
            srv.closed = anyio.Event()

    listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
    srv.port = listener.extra(anyio.abc.SocketAttribute.local_port)
    async with listener, anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, serve)
        try:
            yield srv
        finally:
            tg.cancel_scope.cancel()


@asynccontextmanager
async def answering(
    answer: bytes, tls: Optional[ssl.SSLContext] = None
) -> AsyncIterator[FakeServer]:
    """A :func:`fake_server` that answers every request with ``answer``, on a
    connection kept until the proxy closes it."""

    async def handler(stream: anyio.abc.ByteStream, tcp: anyio.abc.SocketStream) -> None:
        while True:
            await read_request_head(stream, srv)
            await stream.send(answer)

    async with fake_server(handler, tls=tls) as srv:
        yield srv


async def read_until(stream: anyio.abc.ByteStream, marker: bytes, cap: int = READ_CAP) -> bytes:
    """What arrives until ``marker`` has been received (AssertionError past ``cap``
    bytes without it; EndOfStream when the peer closes first)."""
    out = bytearray()
    while marker not in out:
        assert len(out) <= cap, f"{marker!r} not within {cap} bytes"
        out += await stream.receive()
    return bytes(out)


async def read_request_head(stream: anyio.abc.ByteStream, srv: FakeServer) -> bytes:
    """Read up to the end of a request (head and Content-Length body); record it."""
    buf = await read_until(stream, b"\r\n\r\n")
    head, _, body = buf.partition(b"\r\n\r\n")
    m = re.search(rb"(?i)\r\ncontent-length: *(\d+)", head)
    want = int(m.group(1)) if m else 0
    while len(body) < want:  # bounded: want is the request's own Content-Length
        body += await stream.receive()
    srv.requests.append(head + b"\r\n\r\n" + body)
    return head


def sse_event(obj: dict[str, Any]) -> bytes:
    return f"event: {obj['type']}\ndata: {json.dumps(obj)}\n\n".encode()


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


SSE_HEAD = (
    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
)


def http_answer(status: str, headers: Sequence[tuple[str, str]], body: bytes) -> bytes:
    """A whole HTTP/1.1 answer: the status line (e.g. ``"200 OK"``), ``headers`` in
    order, then ``content-length`` and ``body``."""
    head = f"HTTP/1.1 {status}\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers)
    return head.encode("latin-1") + b"content-length: %d\r\n\r\n%s" % (len(body), body)


def sse_answer(frames: list[bytes]) -> bytes:
    """A whole chunked SSE answer: the head, a chunk per frame, the last chunk."""
    return SSE_HEAD + b"".join(chunk(f) for f in frames) + b"0\r\n\r\n"


def text_events(words: list[str], rid: str = "resp_1") -> list[bytes]:
    """A minimal well-formed Responses stream saying ``words`` (its events numbered)."""
    resp = {"id": rid, "object": "response", "created_at": 1, "model": "m", "status": "completed"}
    item = {"id": "msg_1", "type": "message", "role": "assistant", "status": "in_progress"}
    events: list[dict[str, Any]] = [
        {"type": "response.created", "response": {**resp, "status": "in_progress"}},
        {"type": "response.output_item.added", "output_index": 0, "item": item},
    ]
    for w in words:
        events.append(
            {
                "type": "response.output_text.delta",
                "output_index": 0,
                "content_index": 0,
                "item_id": "msg_1",
                "delta": w,
            }
        )
    events.append({"type": "response.completed", "response": {**resp, "output": []}})
    return [sse_event({**ev, "sequence_number": i}) for i, ev in enumerate(events)]


# --- the proxy as a real process ----------------------------------------------------


def toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    if isinstance(v, Mapping):
        return "{" + ", ".join(f"{json.dumps(k)} = {toml_value(x)}" for k, x in v.items()) + "}"
    raise TypeError(v)


def write_toml(path: Path, sections: Mapping[str, Mapping[str, Any]]) -> None:
    lines = []
    for name, values in sections.items():
        lines.append(f"[{name}]")
        lines += [f"{k} = {toml_value(v)}" for k, v in values.items()]
    path.write_text("\n".join(lines) + "\n")


def proxy_config(endpoint: str, pki: SimpleNamespace, **sections: Mapping[str, Any]) -> dict:
    cfg: dict[str, dict[str, Any]] = {
        "server": {"host": "127.0.0.1", "port": 0},
        "backend": {"endpoint": endpoint, "proxy": ""},
        "backend.auth": {
            "cert_file": pki.cert_file,
            "key_file": pki.key_file,
            "ca_file": pki.ca_file,
        },
        "logging": {"level": "INFO"},
    }
    for name, values in sections.items():
        cfg.setdefault(name, {}).update(values)
    return cfg


@dataclass
class ProxyProcess:
    proc: anyio.abc.Process
    port: int
    lines: deque[str]
    #: set (then replaced) each time a log line arrives
    new_line: anyio.Event = field(default_factory=anyio.Event)
    #: set while the log is read (see ``proxy_process(hold_log=True)``)
    log_flowing: anyio.Event = field(default_factory=anyio.Event)

    def read_log(self) -> None:
        """Start reading the child's log again (after ``hold_log``)."""
        self.log_flowing.set()

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def open_fds(self) -> int:
        return len(os.listdir(f"/proc/{self.pid}/fd"))

    def rss(self) -> int:
        """Resident set size in bytes (``/proc/<pid>/statm``, second field)."""
        with open(f"/proc/{self.pid}/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    async def wait_line(self, needle: str) -> str:
        """The first log line containing ``needle``, waiting for it (bound it with
        fail_after)."""
        while True:
            arrived = self.new_line
            for line in self.lines:
                if needle in line:
                    return line
            await arrived.wait()


@asynccontextmanager
async def proxy_process(
    config: Mapping[str, Mapping[str, Any]],
    tmp: Path,
    nofile: Optional[int] = None,
    hold_log: bool = False,
) -> AsyncIterator[ProxyProcess]:
    """``python -m goose_proxy --config …`` on port 0; waits for its listening line.

    The child's log is drained into a bounded deque (``lines``) for the whole
    run so it can never block on a full pipe; with ``hold_log``, nothing more
    is read after the listening line until ``read_log()`` (a reader that
    stopped). Leaving the block kills the process if it is still running.
    ``nofile``: the child's soft limit of open files (``RLIMIT_NOFILE``).
    """
    cfg_path = tmp / "goose-proxy.toml"
    write_toml(cfg_path, config)
    env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
    env["PYTHONPATH"] = str(PROJECT_ROOT)
    command = [sys.executable, "-m", "goose_proxy", "--config", str(cfg_path)]
    if nofile is not None:
        limited = (
            "import resource, runpy, sys\n"
            "_, hard = resource.getrlimit(resource.RLIMIT_NOFILE)\n"
            f"resource.setrlimit(resource.RLIMIT_NOFILE, ({nofile}, hard))\n"
            "sys.argv[0] = 'goose_proxy'\n"
            "runpy.run_module('goose_proxy', run_name='__main__', alter_sys=True)\n"
        )
        command[1:3] = ["-c", limited]
    proc = await anyio.open_process(
        command,
        stdin=None,
        stdout=None,
        stderr=-1,  # subprocess.PIPE
        cwd=str(PROJECT_ROOT),
        env=env,
    )
    lines: deque[str] = deque(maxlen=5000)
    flowing = anyio.Event()
    if not hold_log:
        flowing.set()
    port_found = anyio.Event()
    found: list[int] = []
    running: list[ProxyProcess] = []  # the handle, once the port is known

    async def pump() -> None:
        assert proc.stderr is not None
        buf = b""
        async for data in proc.stderr:
            buf += data
            *complete, buf = buf.split(b"\n")
            for raw in complete:
                line = raw.decode("utf-8", "replace")
                lines.append(line)
                m = re.search(r"listening on 127\.0\.0\.1:(\d+)", line)
                if m and not found:
                    found.append(int(m.group(1)))
                    port_found.set()
            if complete and running:
                running[0].new_line.set()
                running[0].new_line = anyio.Event()
            if found:
                await flowing.wait()

    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(pump)
            with anyio.fail_after(20):
                await port_found.wait()
            running.append(ProxyProcess(proc, found[0], lines, log_flowing=flowing))
            try:
                yield running[0]
            finally:
                if proc.returncode is None:
                    proc.kill()
                with anyio.CancelScope(shield=True), anyio.move_on_after(10):
                    await proc.wait()
                tg.cancel_scope.cancel()
    finally:
        with anyio.CancelScope(shield=True):
            await proc.aclose()


# --- leaks --------------------------------------------------------------------------


async def poll(predicate: Callable[[], bool], interval: float = 0.005) -> None:
    """Wait until ``predicate()`` holds, checking every ``interval`` seconds.

    Only for state that has no event to wait on (a task's end, a process's
    descriptors, the proxy's counters); callers bound it with ``fail_after``.
    """
    while not predicate():  # noqa: ASYNC110 - nothing to wait on but time
        await anyio.sleep(interval)


async def steady(read: Callable[[], int], polls: int, interval: float = 0.02) -> int:
    """Wait until ``read()`` returns the same value ``polls`` times in a row; that value.

    For quantities with no event (bytes a blocked peer managed to write, a
    process's descriptors); callers bound it with ``fail_after``.
    """
    last, same = read(), 0
    while same < polls:
        await anyio.sleep(interval)
        now = read()
        same = same + 1 if now == last else 0
        last = now
    return last


async def wait_settled(proxy: SimpleNamespace, within: float = 5.0) -> None:
    """Wait until the in-process proxy has no request and no connection left
    (polling: the server exposes no event for it), for at most ``within`` s."""
    server = proxy.server
    with anyio.fail_after(within):
        await poll(lambda: not (server.active_requests or server.active_connections))


def pool_size(proxy: SimpleNamespace) -> int:
    return len(proxy.server.upstream._idle)


@asynccontextmanager
async def proxied(
    pki: SimpleNamespace,
    *,
    fault: Optional[str] = None,
    backend: Optional[Mapping[str, Any]] = None,
    server: Optional[Mapping[str, Any]] = None,
    headers: Optional[Mapping[str, str]] = None,
    mode: str = "lightspeed",
    endpoint: Optional[str] = None,
    backend_tls: Optional[ssl.SSLContext] = None,
    check_leaks: bool = True,
) -> AsyncIterator[SimpleNamespace]:
    """The scripted backend (mTLS) and the proxy in front of it.

    ``fault`` sets ``X-Dev-Fault`` through ``[backend] headers``. On a clean
    exit, checks that nothing leaked: no request or client connection left in
    the proxy, no backend connection open but the pooled ones, and as many
    tasks as when the proxy started (plus one per pooled connection: the
    backend's side of it).
    """
    hdrs = dict(headers or {})
    if fault:
        hdrs["X-Dev-Fault"] = fault
    tls = backend_tls if backend_tls is not None else pki.server_context()
    async with devbackend.run(tls=tls, mode=mode) as be:
        cfg = make_config(
            endpoint or be.url,
            pki.auth,
            backend={"proxy": "", "headers": hdrs, **(backend or {})},
            server=dict(server or {}),
        )
        async with running_proxy(cfg) as proxy:
            tasks = len(asyncio.all_tasks())
            yield SimpleNamespace(backend=be, proxy=proxy, url=proxy.url, config=cfg)
            if check_leaks:
                await assert_no_leaks(proxy, be, tasks)


async def assert_no_leaks(proxy: SimpleNamespace, be: Any, tasks: int) -> None:
    """Bounded wait until the proxy and the backend are back to rest (see :func:`proxied`)."""
    await wait_settled(proxy)
    with anyio.fail_after(5):
        if be is not None:
            await be.wait_until(lambda b: b.stats.connections_open == pool_size(proxy))
        await poll(lambda: len(asyncio.all_tasks()) <= tasks + pool_size(proxy))


async def post(
    url: str,
    body: Any,
    path: str = "/v1/chat/completions",
    headers: Optional[Mapping[str, str]] = None,
) -> httpx.Response:
    """POST JSON with a fresh client (closed afterwards); the body is read whole."""
    async with httpx.AsyncClient(timeout=30) as c:
        r = await c.post(url + path, json=body, headers=dict(headers or {}))
        await r.aread()
        return r
