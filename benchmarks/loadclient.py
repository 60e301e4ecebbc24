"""A lean closed-loop HTTP/1.1 load client: raw sockets, one ``selectors`` loop.

``python -m benchmarks.loadclient`` reads a JSON spec on stdin and prints one
JSON result on stdout. It runs in its own process so that its CPU is not the
proxy's, and it is cheap per byte: no HTTP library, no event-loop framework.

Theory of operation
-------------------
``connections`` keep-alive connections are opened first (TCP, then a blocking
TLS handshake when the spec names certificates), so connecting is never part
of a measurement. Each connection then sends the same request bytes again and
again, the next one as soon as the previous response has fully arrived
(closed loop, no pipelining). A phase ends after ``duration`` seconds (no new
request starts after it; the ones in flight finish) or after
``requests_per_conn`` requests on every connection. The warm-up phase is
discarded; the measured phase follows it with all connections starting at
once.

A response is parsed only as far as needed: the status line, then
``Content-Length`` or chunked framing. A chunked body is complete when it
ends with the last chunk (``\\r\\n0\\r\\n\\r\\n``; SSE data never contains a CR,
so the marker cannot be data); its SSE events are counted as ``\\n\\n``
separators. Time to first token is when ``ttft_marker`` first appears in the
body. A response is an error when its status is not 200, when one of the
``expect`` byte strings is missing from it, or when the connection breaks
(the connection is then reopened).

Around the measured phase the client reads the CPU time of the processes in
``pids`` (``/proc/<pid>/stat``) and of itself, and, with ``control``, resets
the backend's counters first and reads them after (``/_dev/reset``,
``/_dev/stats``).
"""

from __future__ import annotations

import json
import os
import resource
import selectors
import socket
import ssl
import sys
import time
from typing import Any, Optional

RECV_SIZE = 262144
#: a phase's in-flight requests must finish within this many seconds after it ends
DRAIN_LIMIT = 60.0
CLK_TCK = os.sysconf("SC_CLK_TCK")


def proc_cpu(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` (0.0 if it is gone)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return 0.0
    fields = stat[stat.rfind(b")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def machine_cpu() -> float:
    """CPU seconds spent by the whole machine so far (all cores, not idle or iowait)."""
    with open("/proc/stat", "rb") as f:
        fields = f.readline().split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in fields[:8])
    return (user + nice + system + irq + softirq + steal) / CLK_TCK


def raise_fd_limit(want: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = want if hard == resource.RLIM_INFINITY else min(want, hard)
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


def tls_context(tls: Optional[dict[str, str]]) -> Optional[ssl.SSLContext]:
    if not tls:
        return None
    ctx = ssl.create_default_context(cafile=tls["ca"])
    ctx.load_cert_chain(tls["cert"], tls["key"])
    return ctx


def open_socket(host: str, port: int, ctx: Optional[ssl.SSLContext]) -> socket.socket:
    sock = socket.create_connection((host, port), timeout=30)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if ctx is not None:
        sock = ctx.wrap_socket(sock, server_hostname=host)
    sock.setblocking(False)
    return sock


def simple_request(
    host: str, port: int, ctx: Optional[ssl.SSLContext], method: str, path: str
) -> Any:
    """One blocking request on a fresh connection; returns the JSON body."""
    sock = socket.create_connection((host, port), timeout=30)
    if ctx is not None:
        sock = ctx.wrap_socket(sock, server_hostname=host)
    with sock:
        sock.sendall(
            f"{method} {path} HTTP/1.1\r\nhost: {host}\r\ncontent-length: 0\r\n"
            "connection: close\r\n\r\n".encode()
        )
        data = b""
        while True:
            part = sock.recv(RECV_SIZE)
            if not part:
                break
            data += part
    return json.loads(data.split(b"\r\n\r\n", 1)[1])


class Stats:
    def __init__(self) -> None:
        self.latencies: list[float] = []
        self.ttfts: list[float] = []
        self.events = 0
        self.bytes = 0
        self.errors = 0
        self.error_samples: list[str] = []
        self.reconnects = 0

    def error(self, what: str) -> None:
        self.errors += 1
        if len(self.error_samples) < 5:
            self.error_samples.append(what)


class Conn:
    """One keep-alive connection and the response being read on it."""

    __slots__ = (
        "body_start",
        "buf",
        "busy",
        "chunked",
        "close_after",
        "left",
        "length",
        "loop",
        "scan",
        "sock",
        "status",
        "t_first",
        "t_send",
    )

    def __init__(self, loop: Loop) -> None:
        self.loop = loop
        self.sock = open_socket(loop.host, loop.port, loop.ctx)
        self.left = 0
        self.busy = False
        self.reset()

    def reset(self) -> None:
        self.buf = bytearray()
        self.body_start = -1
        self.length: Optional[int] = None
        self.chunked = False
        self.status = 0
        self.close_after = False
        self.t_first = 0.0
        self.scan = 0

    def send(self) -> None:
        self.reset()
        self.left -= 1
        self.busy = True
        self.t_send = time.perf_counter()
        req = self.loop.request
        try:
            n = self.sock.send(req)
        except (BlockingIOError, ssl.SSLWantWriteError):
            n = 0
        if n < len(req):
            # A big body: finish it blocking (the server reads concurrently).
            self.sock.setblocking(True)
            try:
                self.sock.sendall(req[n:])
            finally:
                self.sock.setblocking(False)

    def readable(self) -> None:
        try:
            data = self.sock.recv(RECV_SIZE)
            if isinstance(self.sock, ssl.SSLSocket):
                while self.sock.pending():
                    data += self.sock.recv(RECV_SIZE)
        except (BlockingIOError, ssl.SSLWantReadError):
            return
        except OSError as e:
            self.broken(f"recv failed: {e!r}")
            return
        if not data:
            self.broken("connection closed by the server")
            return
        now = time.perf_counter()
        buf = self.buf
        buf += data
        loop = self.loop
        if self.body_start < 0:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                return
            lines = bytes(buf[:end]).lower().split(b"\r\n")
            self.status = int(lines[0][9:12])
            self.body_start = self.scan = end + 4
            for line in lines[1:]:
                name, _, value = line.partition(b":")
                if name == b"content-length":
                    self.length = int(value)
                elif name == b"transfer-encoding":
                    self.chunked = b"chunked" in value
                elif name == b"connection":
                    self.close_after = b"close" in value
        marker = loop.marker
        if marker and not self.t_first:
            j = buf.find(marker, self.scan)
            if j >= 0:
                self.t_first = now
            else:
                self.scan = max(self.body_start, len(buf) - len(marker))
        if self.length is not None:
            done = len(buf) - self.body_start >= self.length
        elif self.chunked:
            done = buf.endswith(b"0\r\n\r\n") and (
                len(buf) - self.body_start == 5 or buf[-7:-5] == b"\r\n"
            )
        else:
            done = False  # delimited by close: not used by the servers measured here
        if done:
            loop.completed(self, now)

    def broken(self, why: str) -> None:
        loop = self.loop
        busy, self.busy = self.busy, False
        if busy:
            loop.outstanding -= 1
            if loop.measuring:
                loop.stats.error(why)
        self.reopen()
        if busy:
            loop.next_request(self)

    def reopen(self) -> None:
        loop = self.loop
        loop.stats.reconnects += 1
        loop.sel.unregister(self.sock)
        self.sock.close()
        try:
            self.sock = open_socket(loop.host, loop.port, loop.ctx)
        except OSError as e:
            loop.stats.error(f"reconnect failed: {e!r}")
            self.sock = None  # type: ignore[assignment]
            return
        loop.sel.register(self.sock, selectors.EVENT_READ, self)


class Loop:
    def __init__(self, spec: dict[str, Any]) -> None:
        self.host: str = spec.get("host", "127.0.0.1")
        self.port: int = spec["port"]
        self.ctx = tls_context(spec.get("tls"))
        with open(spec["request_file"], "rb") as f:
            self.request = f.read()
        self.marker: bytes = spec.get("ttft_marker", "").encode()
        self.expect: list[bytes] = [e.encode() for e in spec.get("expect", [])]
        self.sel = selectors.DefaultSelector()
        self.conns: list[Conn] = []
        for _ in range(spec["connections"]):
            conn = Conn(self)
            self.conns.append(conn)
            self.sel.register(conn.sock, selectors.EVENT_READ, conn)
        self.stats = Stats()
        self.measuring = False
        self.outstanding = 0
        self.deadline = 0.0

    def next_request(self, conn: Conn) -> None:
        if conn.left > 0 and time.perf_counter() < self.deadline:
            self.outstanding += 1
            conn.send()

    def completed(self, conn: Conn, now: float) -> None:
        self.outstanding -= 1
        conn.busy = False
        if self.measuring:
            st = self.stats
            body = conn.buf
            ok = conn.status == 200 and all(e in body for e in self.expect)
            if ok:
                st.latencies.append(now - conn.t_send)
                if conn.t_first:
                    st.ttfts.append(conn.t_first - conn.t_send)
                st.events += body.count(b"\n\n", conn.body_start)
                st.bytes += len(body)
            else:
                tail = bytes(body[:200]).decode("latin-1")
                st.error(f"status {conn.status}: {tail!r}")
        if conn.close_after:
            conn.reopen()
            if conn.sock is None:
                return
        self.next_request(conn)

    def phase(self, requests_per_conn: Optional[int], duration: Optional[float]) -> float:
        """Run one phase; returns its length in seconds (start to last completion)."""
        start = time.perf_counter()
        self.deadline = start + duration if duration else float("inf")
        for conn in self.conns:
            conn.left = requests_per_conn if requests_per_conn else 1 << 62
        for conn in self.conns:
            if conn.sock is not None:
                self.next_request(conn)
        hard_stop = self.deadline + DRAIN_LIMIT if duration else float("inf")
        select = self.sel.select
        while self.outstanding > 0:
            now = time.perf_counter()
            if now > hard_stop:
                self.stats.error(f"{self.outstanding} request(s) still running at the hard stop")
                break
            for key, _ in select(1.0):
                key.data.readable()
        return time.perf_counter() - start


def run(spec: dict[str, Any]) -> dict[str, Any]:
    raise_fd_limit(spec["connections"] + 256)
    loop = Loop(spec)
    warm_n, warm_s = spec.get("warmup_requests"), spec.get("warmup_seconds")
    if warm_n or warm_s:
        loop.phase(warm_n, warm_s)
    pids: dict[str, int] = spec.get("pids", {})
    control = spec.get("control")
    ctl_ctx = tls_context(control.get("tls")) if control else None
    if control:
        simple_request(control["host"], control["port"], ctl_ctx, "POST", "/_dev/reset")
    cpu0 = {name: proc_cpu(pid) for name, pid in pids.items()}
    me0 = time.process_time()
    all0 = machine_cpu()
    loop.measuring = True
    elapsed = loop.phase(spec.get("requests_per_conn"), spec.get("duration"))
    loop.measuring = False
    cpu = {name: round(proc_cpu(pid) - cpu0[name], 3) for name, pid in pids.items()}
    cpu["client"] = round(time.process_time() - me0, 3)
    # everything else the machine ran meanwhile: a sign of a noisy measurement
    cpu["others"] = round(max(0.0, machine_cpu() - all0 - sum(cpu.values())), 3)
    backend_stats = None
    if control:
        backend_stats = simple_request(
            control["host"], control["port"], ctl_ctx, "GET", "/_dev/stats"
        )
        # not counting the connection (and handshake) of this stats request itself
        backend_stats["connections_accepted"] -= 1
        if ctl_ctx is not None:
            backend_stats["tls_handshakes"] -= 1
    for conn in loop.conns:
        if conn.sock is not None:
            conn.sock.close()
    st = loop.stats
    lat = sorted(st.latencies)
    ttft = sorted(st.ttfts)
    n = len(lat)
    return {
        "connections": len(loop.conns),
        "requests": n,
        "errors": st.errors,
        "error_samples": st.error_samples,
        "reconnects": st.reconnects,
        "seconds": round(elapsed, 4),
        "rps": n / elapsed if elapsed > 0 else 0.0,
        "latency_ms": _percentiles(lat),
        "ttft_ms": _percentiles(ttft) if ttft else None,
        "events": st.events,
        "events_per_s": st.events / elapsed if elapsed > 0 else 0.0,
        "bytes": st.bytes,
        "cpu_s": cpu,
        "backend_stats": backend_stats,
    }


def _percentiles(sorted_values: list[float]) -> Optional[dict[str, float]]:
    if not sorted_values:
        return None
    n = len(sorted_values)

    def pick(q: float) -> float:
        # nearest rank
        return sorted_values[min(n - 1, max(0, int(q * n + 0.999999) - 1))] * 1000

    return {
        "p50": pick(0.50),
        "p90": pick(0.90),
        "p99": pick(0.99),
        "max": sorted_values[-1] * 1000,
        "mean": sum(sorted_values) / n * 1000,
    }


def main() -> int:
    spec = json.load(sys.stdin)
    result = run(spec)
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
