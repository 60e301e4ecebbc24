"""``python -m benchmarks.run``: goose-proxy vs a direct connection, as a table and JSON.

Theory of operation
-------------------
Everything runs as separate processes over loopback: the scripted backend
(``python -m devbackend``, one per wire mode and transport, certificates made
by its helper into a temporary directory), one fresh proxy per scenario
(``python -m goose_proxy --config <temp file>``, handed its listening socket
the way systemd's socket activation does, so no port is guessed), and the
load client (:mod:`benchmarks.loadclient`, one process per measurement).

Each scenario is measured twice with the same client and the same backend
work: *direct* sends the Responses request the proxy would send (built with
the proxy's own translator) straight to the backend, with the same ``X-Dev-*``
knob headers; *proxy* sends the Chat Completions request to the proxy, whose
``[backend.headers]`` carry the knobs. The proxy's CPU time comes from
``/proc/<pid>/stat`` around the measured phase, its peak RSS from ``VmHWM``
(a fresh process per scenario, so the peak is that scenario's).

Nothing here asserts a speed. The run fails (exit 1) only when a scenario
crashed or a request got a wrong answer, which is what ``--smoke`` checks in CI.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Optional

from benchmarks.loadclient import raise_fd_limit
from devbackend.certs import DevCerts, ensure_dev_certs
from goose_proxy.translate import TranslateOptions, chat_to_responses, encode_json

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_JSON = Path("benchmarks") / "results" / "latest.json"
HOST = "127.0.0.1"
#: proxy log level during the runs (the default INFO writes one access line per request)
LOG_LEVEL = "INFO"
START_TIMEOUT = 15.0

USER = {"role": "user", "content": "hi there"}
TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather for a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}


# --- scenarios -----------------------------------------------------------------------


@dataclass(frozen=True)
class Load:
    """How the load client drives one row (see :mod:`benchmarks.loadclient`)."""

    connections: int
    duration: Optional[float] = None  # measured seconds, or
    requests_per_conn: Optional[int] = None
    warmup_seconds: Optional[float] = None
    warmup_requests: Optional[int] = None


@dataclass(frozen=True)
class Scenario:
    """One line of the table: the request, the knobs, the load (full and smoke)."""

    name: str
    what: str
    load: Load
    smoke: Load
    stream: bool = False
    tls: bool = True
    mode: str = "lightspeed"  # backend wire mode; the proxy's flavor follows it
    knobs: dict[str, str] = field(default_factory=dict)
    messages: tuple[dict[str, Any], ...] = (USER,)
    tools: bool = False
    proxy_config: dict[str, Any] = field(default_factory=dict)
    smoke_knobs: Optional[dict[str, str]] = None
    #: list the backend's view (max in flight, TLS handshakes) under the table
    report_backend: bool = False
    #: the client speaks Responses to /v1/responses (the passthrough), not chat
    passthrough: bool = False

    @property
    def flavor(self) -> str:
        return "lightspeed" if self.mode == "lightspeed" else "openai"


def _big_messages() -> tuple[dict[str, Any], ...]:
    # The 1 MB sits in an earlier turn: the backend echoes only the last user text.
    big = ("lorem ipsum dolor sit amet " * 40000)[: 1024 * 1024]
    return (
        {"role": "user", "content": big},
        {"role": "assistant", "content": "ok"},
        USER,
    )


def scenarios() -> list[Scenario]:
    quick = Load(connections=1, duration=0.25, warmup_requests=2)
    out = []
    for c in (1, 16, 64):
        out.append(
            Scenario(
                f"json-c{c}",
                f"non-streaming, concurrency {c}, backend latency 0",
                Load(c, duration=5.0, warmup_seconds=1.0),
                replace(quick, connections=min(c, 4)),
            )
        )
    for c, n in ((1, 15), (16, 10), (64, 5)):
        out.append(
            Scenario(
                f"json-c{c}-200ms",
                f"non-streaming, concurrency {c}, backend latency 200 ms",
                Load(c, requests_per_conn=n, warmup_requests=1),
                Load(min(c, 4), requests_per_conn=2, warmup_requests=1),
                knobs={"X-Dev-Delay-Headers": "0.2"},
                smoke_knobs={"X-Dev-Delay-Headers": "0.02"},
            )
        )
    for c in (1, 64):
        out.append(
            Scenario(
                f"stream-c{c}",
                f"streaming, 200 text deltas per response, concurrency {c}",
                Load(c, duration=5.0, warmup_seconds=1.0),
                replace(quick, connections=min(c, 4)),
                stream=True,
                knobs={"X-Dev-Deltas": "200"},
            )
        )
    out += [
        Scenario(
            "responses-stream-c1",
            "/v1/responses passthrough, streaming, 200 text deltas per response, concurrency 1",
            Load(1, duration=5.0, warmup_seconds=1.0),
            quick,
            stream=True,
            knobs={"X-Dev-Deltas": "200"},
            passthrough=True,
        ),
        Scenario(
            "tools-c1",
            "tool-call stream (2 parallel calls, interleaved argument deltas), concurrency 1",
            Load(1, duration=5.0, warmup_seconds=1.0),
            quick,
            stream=True,
            knobs={"X-Dev-Fault": "parallel_tools"},
            tools=True,
        ),
        Scenario(
            "body-1mb",
            "1 MB request body, non-streaming, concurrency 1 (openai mode: no 65,536-char cap)",
            Load(1, duration=5.0, warmup_requests=3),
            Load(1, requests_per_conn=2, warmup_requests=1),
            mode="openai",
            messages=_big_messages(),
        ),
        Scenario(
            "slow-500",
            "500 concurrent slow streams (20 deltas, 100 ms between events), 2 rounds; "
            "pool_size 512, so the proxy's backend connections are as warm as the client's",
            Load(500, requests_per_conn=2, warmup_requests=1),
            Load(50, requests_per_conn=1, warmup_requests=1),
            stream=True,
            knobs={"X-Dev-Deltas": "20", "X-Dev-Event-Delay": "0.1"},
            smoke_knobs={"X-Dev-Deltas": "5", "X-Dev-Event-Delay": "0.02"},
            proxy_config={"pool_size": 512},
            report_backend=True,
        ),
        Scenario(
            "slow-500-pool16",
            "as slow-500 with the default pool_size (16): most streams open a new mTLS "
            "connection to the backend",
            Load(500, requests_per_conn=2, warmup_requests=1),
            Load(50, requests_per_conn=1, warmup_requests=1),
            stream=True,
            knobs={"X-Dev-Deltas": "20", "X-Dev-Event-Delay": "0.1"},
            smoke_knobs={"X-Dev-Deltas": "5", "X-Dev-Event-Delay": "0.02"},
            report_backend=True,
        ),
        Scenario(
            "sequential-1000",
            "1,000 sequential non-streaming requests from a cold proxy: TLS handshakes",
            Load(1, requests_per_conn=1000),
            Load(1, requests_per_conn=20),
            report_backend=True,
        ),
        Scenario(
            "plain-json-c1",
            "as json-c1, plain HTTP backend (no TLS anywhere)",
            Load(1, duration=5.0, warmup_seconds=1.0),
            quick,
            tls=False,
        ),
        Scenario(
            "plain-json-c16",
            "as json-c16, plain HTTP backend",
            Load(16, duration=5.0, warmup_seconds=1.0),
            replace(quick, connections=4),
            tls=False,
        ),
        Scenario(
            "plain-stream-c1",
            "as stream-c1, plain HTTP backend",
            Load(1, duration=5.0, warmup_seconds=1.0),
            quick,
            stream=True,
            tls=False,
            knobs={"X-Dev-Deltas": "200"},
        ),
    ]
    return out


# --- processes -----------------------------------------------------------------------


def _status_kb(pid: int) -> dict[str, int]:
    out = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key in ("VmRSS", "VmHWM"):
                    out[key] = int(value.split()[0])
    except OSError:
        pass
    return out


class Backend:
    """One ``python -m devbackend`` process."""

    def __init__(self, tls: bool, mode: str, certs: DevCerts, log: Path) -> None:
        cmd = [sys.executable, "-m", "devbackend", "--host", HOST, "--port", "0",
               "--print-port", "-q", "--mode", mode]  # fmt: skip
        if tls:
            cmd += ["--tls", "--certs-dir", str(certs.directory)]
        self.tls = tls
        self.mode = mode
        with log.open("ab") as err:
            self.proc = subprocess.Popen(
                cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=err, stdin=subprocess.DEVNULL
            )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().decode().strip()
        if not line.startswith("PORT "):
            self.stop()
            raise RuntimeError(f"devbackend did not start (see {log})")
        self.port = int(line.split()[1])

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{HOST}:{self.port}"

    def stop(self) -> None:
        _stop(self.proc)


def _stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM, timeout: float = 10) -> None:
    """Ask ``proc`` to stop with ``sig``; kill it after ``timeout`` seconds."""
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _listen() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((HOST, 0))
    sock.listen(4096)
    return sock


def spawn_activated(cmd: list[str], sock: socket.socket, stderr: Any) -> subprocess.Popen[bytes]:
    """Start ``cmd`` with ``sock`` as its systemd-activated socket (fd 3, ``LISTEN_PID``)."""
    fd = sock.fileno()

    def child() -> None:  # runs between fork and exec
        if fd == 3:
            os.set_inheritable(3, True)
        else:
            os.dup2(fd, 3)
        os.environ["LISTEN_PID"] = str(os.getpid())
        os.environ["LISTEN_FDS"] = "1"

    return subprocess.Popen(
        cmd,
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=stderr,
        close_fds=False,  # fd 3 must survive; Python's own fds are close-on-exec anyway
        preexec_fn=child,  # safe here: the runner has no other threads
    )


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    return json.dumps(value)  # a TOML basic string is a JSON string


def proxy_config(backend: Backend, certs: DevCerts, sc: Scenario, knobs: dict[str, str]) -> str:
    lines = [
        "[server]",
        f'host = "{HOST}"',
        "port = 0",
        "[backend]",
        f"endpoint = {_toml(backend.url + '/v1')}",
        'proxy = ""',
        f"flavor = {_toml(sc.flavor)}",
    ]
    lines += [f"{k} = {_toml(v)}" for k, v in sc.proxy_config.items()]
    lines.append("[backend.headers]")
    lines += [f"{_toml(k)} = {_toml(v)}" for k, v in knobs.items()]
    lines += [
        "[backend.auth]",
        f"cert_file = {_toml(str(certs.client_cert))}",
        f"key_file = {_toml(str(certs.client_key))}",
        f"ca_file = {_toml(str(certs.ca_cert))}",
        "[logging]",
        f"level = {_toml(LOG_LEVEL)}",
    ]
    return "\n".join(lines) + "\n"


class Proxy:
    """One goose-proxy process, socket-activated on a port of its own."""

    def __init__(
        self, config: str, workdir: Path, name: str, profile: Optional[Path] = None
    ) -> None:
        self.config_path = workdir / f"{name}.toml"
        self.config_path.write_text(config)
        self.log = workdir / f"{name}.log"
        self.sock = _listen()
        self.port = self.sock.getsockname()[1]
        cmd = [sys.executable, "-m", "goose_proxy", "--config", str(self.config_path)]
        self.profile = profile / f"{name}.pyisession" if profile else None
        if self.profile:
            # pyinstrument runs the proxy in its own process (same pid: the
            # activation still applies) and saves the session when it exits.
            cmd[1:2] = ["-m", "pyinstrument", "-r", "pyisession", "-o", str(self.profile), "-m"]
        with self.log.open("ab") as err:
            self.started = time.perf_counter()
            self.proc = spawn_activated(cmd, self.sock, err)

    def wait_healthy(self) -> float:
        """Seconds from the exec to the first ``200`` on ``/health``."""
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            with contextlib.suppress(OSError):
                status, _ = http_call(self.port, "GET", "/health")
                if status == 200:
                    return time.perf_counter() - self.started
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"goose-proxy did not start: {self.log_tail()}")
            time.sleep(0.01)

    def log_tail(self, lines: int = 8) -> str:
        try:
            text = self.log.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return " | ".join(text[-lines:])

    def memory(self) -> dict[str, int]:
        return _status_kb(self.proc.pid)

    def stop(self) -> None:
        _stop(self.proc)
        self.sock.close()
        if self.profile and self.profile.exists():
            for renderer, suffix in (("text", ".txt"), ("pstats", ".pstats")):
                subprocess.run(
                    [sys.executable, "-m", "pyinstrument", "--load", str(self.profile),
                     "-r", renderer, "-o", str(self.profile.with_suffix(suffix))],
                    cwd=ROOT, check=False, capture_output=True,
                )  # fmt: skip


@contextlib.contextmanager
def sampled(proxy: Proxy, out: Optional[Path]) -> Iterator[None]:
    """With ``out``: py-spy samples ``proxy`` (while it holds the GIL) meanwhile."""
    if out is None:
        yield
        return
    exe = shutil.which("py-spy")
    cmd = [exe] if exe else ["uvx", "py-spy"]
    dest = out / f"{proxy.config_path.stem}.pyspy.txt"  # not the profile's .txt
    cmd += ["record", "--gil", "-r", "1000", "-f", "raw", "-o", str(dest)]
    sampler = subprocess.Popen(
        [*cmd, "-p", str(proxy.proc.pid)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        yield
    finally:
        _stop(sampler, signal.SIGINT, 30)  # py-spy writes its file on SIGINT


def http_call(
    port: int,
    method: str,
    path: str,
    body: bytes = b"",
    sock: Optional[socket.socket] = None,
) -> tuple[int, bytes]:
    """A blocking request (on ``sock`` if given, else a fresh connection)."""
    own = sock is None
    s = sock if sock is not None else socket.create_connection((HOST, port), timeout=30)
    try:
        head = f"{method} {path} HTTP/1.1\r\nhost: {HOST}:{port}\r\n"
        if body:
            head += "content-type: application/json\r\n"
        head += f"content-length: {len(body)}\r\n\r\n"
        s.sendall(head.encode() + body)
        data = b""
        while b"\r\n\r\n" not in data:
            part = s.recv(65536)
            if not part:
                raise OSError("connection closed")
            data += part
        head_bytes, _, rest = data.partition(b"\r\n\r\n")
        status = int(head_bytes[9:12])
        length = 0
        for line in head_bytes.lower().split(b"\r\n")[1:]:
            if line.startswith(b"content-length:"):
                length = int(line[15:])
        while len(rest) < length:
            part = s.recv(65536)
            if not part:
                raise OSError("connection closed")
            rest += part
        return status, rest
    finally:
        if own:
            s.close()


# --- requests ------------------------------------------------------------------------


def chat_body(sc: Scenario) -> dict[str, Any]:
    messages = list(sc.messages)
    if sc.tools:
        messages[-1] = {"role": "user", "content": "USE_TOOL: weather in Brno and Paris?"}
    body: dict[str, Any] = {"model": "rhel-lightspeed", "messages": messages}
    if sc.stream:
        body["stream"] = True
    if sc.tools:
        body["tools"] = [TOOL, {**TOOL, "function": {**TOOL["function"], "name": "get_time"}}]
    return body


def http_request(path: str, body: bytes, port: int, headers: list[tuple[str, str]]) -> bytes:
    lines = [f"POST {path} HTTP/1.1", f"host: {HOST}:{port}"]
    lines += [f"{k}: {v}" for k, v in headers]
    lines.append(f"content-length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def responses_body(sc: Scenario) -> dict[str, Any]:
    """The Responses request the proxy would send upstream for the scenario's chat."""
    return chat_to_responses(chat_body(sc), TranslateOptions(flavor=sc.flavor)).body


def direct_request(sc: Scenario, backend: Backend, knobs: dict[str, str]) -> bytes:
    """The request the proxy would send upstream, knobs included."""
    body = responses_body(sc)
    upstream_stream = bool(body.get("stream"))
    headers = [
        ("content-type", "application/json"),
        ("accept", "text/event-stream" if upstream_stream else "application/json"),
    ]
    if sc.flavor == "lightspeed":
        headers.append(("x-lcs-merge-server-tools", "true"))
    headers += list(knobs.items())
    return http_request("/v1/responses", encode_json(body), backend.port, headers)


def proxy_request(sc: Scenario, port: int) -> bytes:
    ctype = [("content-type", "application/json")]
    if sc.passthrough:  # the same Responses body the direct row sends
        return http_request("/v1/responses", encode_json(responses_body(sc)), port, ctype)
    return http_request("/v1/chat/completions", json.dumps(chat_body(sc)).encode(), port, ctype)


def expectations(sc: Scenario, direct: bool) -> tuple[list[str], str]:
    """Byte strings every good response contains, and the time-to-first-token marker."""
    if direct or sc.passthrough:  # the passthrough relays the backend's bytes
        # direct: what the proxy asks upstream (a stream, always); the
        # passthrough answers a client that does not stream with JSON
        upstream_stream = bool(responses_body(sc).get("stream")) if direct else sc.stream
        if not upstream_stream:
            return ['"status":"completed"'], ""
        expect = ["response.completed"]
        if not sc.stream:
            return expect, ""
        return expect, ("response.output_item.added" if sc.tools else "output_text.delta")
    if sc.stream:
        reason = "tool_calls" if sc.tools else "stop"
        marker = '"tool_calls"' if sc.tools else '{"content":"'
        return [f'"finish_reason":"{reason}"', "data: [DONE]"], marker
    return ['"finish_reason":"stop"', '"object":"chat.completion"'], ""


# --- running ------------------------------------------------------------------------


class Failure(Exception):
    pass


def run_client(spec: dict[str, Any]) -> dict[str, Any]:
    """Run one measurement in a load-client process; returns its JSON result."""
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.loadclient"],
        cwd=ROOT,
        input=json.dumps(spec).encode(),
        capture_output=True,
        timeout=600,
    )
    if proc.returncode != 0:
        raise Failure(f"load client failed: {proc.stderr.decode(errors='replace')[-2000:]}")
    result: dict[str, Any] = json.loads(proc.stdout)
    return result


def load_spec(load: Load) -> dict[str, Any]:
    return {
        "connections": load.connections,
        "duration": load.duration,
        "requests_per_conn": load.requests_per_conn,
        "warmup_seconds": load.warmup_seconds,
        "warmup_requests": load.warmup_requests,
    }


class Bench:
    def __init__(
        self,
        workdir: Path,
        smoke: bool,
        profile: Optional[Path] = None,
        sample: Optional[Path] = None,
    ) -> None:
        self.workdir = workdir
        self.sample = sample
        self.smoke = smoke
        self.profile = profile
        self.certs = ensure_dev_certs(workdir / "certs")
        self.tls_files = {
            "ca": str(self.certs.ca_cert),
            "cert": str(self.certs.client_cert),
            "key": str(self.certs.client_key),
        }
        self.backends: dict[tuple[bool, str], Backend] = {}
        self.failures: list[str] = []

    def backend(self, tls: bool, mode: str) -> Backend:
        key = (tls, mode)
        if key not in self.backends:
            log = self.workdir / f"backend-{'tls' if tls else 'plain'}-{mode}.log"
            self.backends[key] = Backend(tls, mode, self.certs, log)
        return self.backends[key]

    def close(self) -> None:
        for b in self.backends.values():
            b.stop()

    def _control(self, backend: Backend) -> dict[str, Any]:
        return {
            "host": HOST,
            "port": backend.port,
            "tls": self.tls_files if backend.tls else None,
        }

    def run_scenario(self, sc: Scenario) -> dict[str, Any]:
        load = sc.smoke if self.smoke else sc.load
        knobs = sc.smoke_knobs if (self.smoke and sc.smoke_knobs is not None) else sc.knobs
        backend = self.backend(sc.tls, sc.mode)
        result: dict[str, Any] = {"name": sc.name, "what": sc.what, "load": load_spec(load)}

        req_file = self.workdir / f"{sc.name}-direct.http"
        req_file.write_bytes(direct_request(sc, backend, knobs))
        expect, marker = expectations(sc, direct=True)
        spec = {
            **load_spec(load),
            "host": HOST,
            "port": backend.port,
            "tls": self.tls_files if backend.tls else None,
            "request_file": str(req_file),
            "expect": expect,
            "ttft_marker": marker,
            "pids": {"backend": backend.proc.pid},
            "control": self._control(backend),
        }
        result["direct"] = run_client(spec)

        config = proxy_config(backend, self.certs, sc, knobs)
        proxy = Proxy(config, self.workdir, sc.name, self.profile)
        try:
            proxy.wait_healthy()
            result["proxy_rss_start_kb"] = proxy.memory().get("VmRSS")
            req_file = self.workdir / f"{sc.name}-proxy.http"
            req_file.write_bytes(proxy_request(sc, proxy.port))
            expect, marker = expectations(sc, direct=False)
            spec.update(
                port=proxy.port,
                tls=None,
                request_file=str(req_file),
                expect=expect,
                ttft_marker=marker,
                pids={"proxy": proxy.proc.pid, "backend": backend.proc.pid},
            )
            with sampled(proxy, self.sample):
                result["proxy"] = run_client(spec)
            mem = proxy.memory()
            result["proxy_rss_kb"] = mem.get("VmRSS")
            result["proxy_peak_rss_kb"] = mem.get("VmHWM")
            if proxy.proc.poll() is not None:
                raise Failure(f"goose-proxy exited: {proxy.log_tail()}")
        finally:
            proxy.stop()
        for row in ("direct", "proxy"):
            r = result[row]
            if r["errors"] or not r["requests"]:
                msg = (
                    f"{sc.name}/{row}: {r['errors']} error(s), {r['requests']} good: "
                    + "; ".join(r["error_samples"][:2])
                )
                if row == "proxy":
                    msg += f" [proxy log: {proxy.log_tail(4)}]"
                self.failures.append(msg)
        return result

    def cold_start(self, runs: int) -> dict[str, Any]:
        backend = self.backend(True, "lightspeed")
        sc = Scenario("cold-start", "", Load(1), Load(1))
        config = proxy_config(backend, self.certs, sc, {})
        health, chat, rss_start, rss_chat = [], [], [], []
        # Start 0 fills the bytecode cache (see main) and is not counted.
        for i in range(runs + 1):
            proxy = Proxy(config, self.workdir, f"cold-{i}")
            try:
                # Socket activation: the connection is queued by the kernel before
                # the proxy runs; the answer arrives once it serves.
                with socket.create_connection((HOST, proxy.port), timeout=START_TIMEOUT) as s:
                    status, _ = http_call(proxy.port, "GET", "/health", sock=s)
                    t_health = time.perf_counter() - proxy.started
                    rss_start.append(proxy.memory().get("VmRSS", 0))
                    body = json.dumps(chat_body(sc)).encode()
                    status2, reply = http_call(
                        proxy.port, "POST", "/v1/chat/completions", body, sock=s
                    )
                    t_chat = time.perf_counter() - proxy.started
                    rss_chat.append(proxy.memory().get("VmRSS", 0))
                if status != 200 or status2 != 200:
                    self.failures.append(
                        f"cold-start: /health {status}, chat {status2}: {reply[:200]!r}"
                    )
                if i == 0:
                    rss_start.pop()
                    rss_chat.pop()
                    continue
                health.append(t_health * 1000)
                chat.append(t_chat * 1000)
            finally:
                proxy.stop()
        version = []
        for _ in range(runs):  # the module cache is warm by now
            t0 = time.perf_counter()
            subprocess.run(
                [sys.executable, "-m", "goose_proxy", "--version"],
                cwd=ROOT,
                capture_output=True,
                check=True,
            )
            version.append((time.perf_counter() - t0) * 1000)
        return {
            "name": "cold-start",
            "runs": runs,
            "health_ms": _summary(health),
            "first_chat_ms": _summary(chat),
            "version_ms": _summary(version),
            "rss_after_start_kb": int(statistics.median(rss_start)),
            "rss_after_first_chat_kb": int(statistics.median(rss_chat)),
        }


def _summary(values: list[float]) -> dict[str, float]:
    return {
        "median": statistics.median(values),
        "min": min(values),
        "max": max(values),
    }


# --- report -------------------------------------------------------------------------


def _f(value: Optional[float], digits: int = 1) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def _ms(r: dict[str, Any], key: str, q: str) -> Optional[float]:
    v = r.get(key)
    return v[q] if v else None


def _markdown(head: list[str], rows: list[list[str]]) -> str:
    """A Markdown table."""
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def table(results: list[dict[str, Any]]) -> str:
    """The main table: one line per scenario, direct and proxy side by side."""
    head = [
        "scenario",
        "req/s direct / proxy (ratio)",
        "p50 ms direct / proxy (+added)",
        "p99 ms direct / proxy (ratio)",
        "TTFT p50 ms direct / proxy",
        "SSE events/s direct / proxy",
        "proxy CPU s per 1k req",
        "proxy peak RSS MB",
    ]
    rows = []
    for res in results:
        d, p = res["direct"], res["proxy"]
        ratio = p["rps"] / d["rps"] if d["rps"] else 0.0
        rps = f"{_f(d['rps'], 0)} / {_f(p['rps'], 0)} ({ratio:.0%})"
        d50, p50 = _ms(d, "latency_ms", "p50"), _ms(p, "latency_ms", "p50")
        d99, p99 = _ms(d, "latency_ms", "p99"), _ms(p, "latency_ms", "p99")
        p50s = f"{_f(d50, 2)} / {_f(p50, 2)} ({(p50 or 0) - (d50 or 0):+.2f})"
        p99s = f"{_f(d99, 2)} / {_f(p99, 2)} (x{(p99 or 0) / (d99 or 1):.2f})"
        ttft = ev = "-"
        if res.get("stream"):
            ttft = f"{_f(_ms(d, 'ttft_ms', 'p50'), 2)} / {_f(_ms(p, 'ttft_ms', 'p50'), 2)}"
            ev = f"{_f(d['events_per_s'], 0)} / {_f(p['events_per_s'], 0)}"
        cpu_s = p["cpu_s"].get("proxy", 0.0)
        cpu = _f(cpu_s / p["requests"] * 1000, 3) if p["requests"] else "-"
        if cpu_s < 0.2:
            cpu = "~" + cpu  # the kernel counts CPU time in 10 ms ticks
        rss = (res.get("proxy_peak_rss_kb") or 0) / 1024
        rows.append([res["name"], rps, p50s, p99s, ttft, ev, cpu, f"{rss:.1f}"])
    return _markdown(head, rows)


def busy_table(results: list[dict[str, Any]]) -> str:
    """CPU use of each process during the measured phase (100% = one core busy)."""
    rows = []
    for res in results:
        use = {}
        for row in ("direct", "proxy"):
            r = res[row]
            secs = r["seconds"] or 1.0
            use[row] = {k: v / secs * 100 for k, v in r["cpu_s"].items()}
        d, p = use["direct"], use["proxy"]
        rows.append(
            [
                res["name"],
                f"{d['client']:.0f} / {d['backend']:.0f} / {d['others']:.0f}",
                f"{p['client']:.0f} / {p['backend']:.0f} / {p.get('proxy', 0.0):.0f} "
                f"/ {p['others']:.0f}",
            ]
        )
    head = [
        "scenario",
        "direct: client / backend / other processes CPU %",
        "proxy: client / backend / proxy / other processes CPU %",
    ]
    return _markdown(head, rows)


def backend_table(results: list[dict[str, Any]]) -> str:
    """What the backend saw in the measured phase (for the scenarios that need it)."""
    rows = []
    for res in results:
        if not res.get("report_backend"):
            continue
        d, p = res["direct"]["backend_stats"], res["proxy"]["backend_stats"]
        rows.append(
            [
                res["name"],
                str(p["requests_total"]),
                f"{d['max_in_flight']} / {p['max_in_flight']}",
                f"{d['connections_accepted']} / {p['connections_accepted']}",
                f"{d['tls_handshakes']} / {p['tls_handshakes']}",
                str(res["pool_size"]),
            ]
        )
    head = [
        "scenario (backend's view, measured phase)",
        "requests",
        "max in flight direct / proxy",
        "new connections direct / proxy",
        "TLS handshakes direct / proxy",
        "proxy pool_size",
    ]
    return _markdown(head, rows) if rows else ""


def cold_table(cold: dict[str, Any]) -> str:
    rows = [
        ("exec → first 200 on /health", cold["health_ms"]["median"]),
        ("exec → first chat completion answered", cold["first_chat_ms"]["median"]),
        ("`python -m goose_proxy --version`", cold["version_ms"]["median"]),
        ("RSS after start (MB)", cold["rss_after_start_kb"] / 1024),
        ("RSS after the first chat (MB)", cold["rss_after_first_chat_kb"] / 1024),
    ]
    head = [f"cold start (median of {cold['runs']})", "ms"]
    return _markdown(head, [[name, f"{value:.1f}"] for name, value in rows])


def machine() -> dict[str, Any]:
    cpu = ""
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {
        "cores": os.cpu_count(),
        "cpu": cpu,
        "python": platform.python_version(),
        "platform": platform.platform(terse=True),
    }


@contextlib.contextmanager
def _workdir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="goose-proxy-bench-") as d:
        yield Path(d)


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__)
    p.add_argument("--smoke", action="store_true", help="every scenario, tiny (CI)")
    p.add_argument("--json", type=Path, default=DEFAULT_JSON, help="default: %(default)s")
    p.add_argument(
        "--only",
        action="append",
        metavar="SCENARIO",
        help="run only this scenario (repeatable; 'cold-start' for the start-up figures)",
    )
    p.add_argument(
        "--sample",
        type=Path,
        metavar="DIR",
        help="sample each proxy from outside with py-spy (on PATH, else via uvx) during "
        "its measured phase; collapsed stacks go to DIR/<scenario>.pyspy.txt",
    )
    p.add_argument(
        "--profile",
        type=Path,
        metavar="DIR",
        help="run each proxy under pyinstrument; sessions and text reports go to DIR",
    )
    args = p.parse_args(argv)
    if args.profile:
        args.profile = args.profile.resolve()
        args.profile.mkdir(parents=True, exist_ok=True)
    if args.sample:
        args.sample = args.sample.resolve()
        args.sample.mkdir(parents=True, exist_ok=True)
    raise_fd_limit(4096)
    all_scenarios = scenarios()
    names = [s.name for s in all_scenarios] + ["cold-start"]
    wanted = args.only or names
    unknown = [n for n in wanted if n not in names]
    if unknown:
        p.error(f"unknown scenario(s) {', '.join(unknown)}; known: {', '.join(names)}")
    started = time.monotonic()
    results: list[dict[str, Any]] = []
    cold: Optional[dict[str, Any]] = None
    with _workdir() as workdir:
        # Every child compiles its modules once into a cache of its own, the way
        # an installed package runs from byte-compiled files; without it each
        # start would compile from source (PYTHONDONTWRITEBYTECODE is common in
        # CI and containers) and the cold start would measure the compiler.
        os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
        os.environ["PYTHONPYCACHEPREFIX"] = str(workdir / "pycache")
        bench = Bench(workdir, args.smoke, args.profile, args.sample)
        try:
            for sc in all_scenarios:
                if sc.name not in wanted:
                    continue
                print(f"… {sc.name}: {sc.what}", file=sys.stderr, flush=True)
                try:
                    res = bench.run_scenario(sc)
                except (Failure, RuntimeError, OSError, subprocess.SubprocessError) as e:
                    bench.failures.append(f"{sc.name}: {e}")
                    continue
                res["stream"] = sc.stream
                res["report_backend"] = sc.report_backend
                res["pool_size"] = sc.proxy_config.get("pool_size", 16)
                results.append(res)
            if "cold-start" in wanted:
                print("… cold-start", file=sys.stderr, flush=True)
                try:
                    cold = bench.cold_start(2 if args.smoke else 15)
                except (Failure, RuntimeError, OSError, subprocess.SubprocessError) as e:
                    bench.failures.append(f"cold-start: {e}")
        finally:
            bench.close()
    report = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "smoke": args.smoke,
        "machine": machine(),
        "proxy_log_level": LOG_LEVEL,
        "seconds": round(time.monotonic() - started, 1),
        "scenarios": results,
        "cold_start": cold,
        "failures": bench.failures,
    }
    print(table(results))
    extra = backend_table(results)
    if extra:
        print()
        print(extra)
    if results:
        print()
        print(busy_table(results))
    if cold:
        print()
        print(cold_table(cold))
    print(f"\n{report['seconds']} s; {report['machine']}", file=sys.stderr)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=1) + "\n")
    if bench.failures:
        print("\nFAILED:", file=sys.stderr)
        for f in bench.failures:
            print(f"  {f}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
