"""systemd integration: the real CLI, socket-activated, with sd_notify; the unit files.

The end-to-end test plays systemd's part: it binds a listening socket, hands it
to ``python -m goose_proxy`` as file descriptor 3 with ``LISTEN_PID`` /
``LISTEN_FDS`` / ``LISTEN_FDNAMES``, and owns the ``$NOTIFY_SOCKET`` datagram
socket. A tiny launcher moves the socket to fd 3 and sets ``LISTEN_PID`` to its
own pid before it ``exec``s the proxy (the pid survives ``exec``), exactly as
systemd does between ``fork`` and ``exec``.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from goose_proxy.cli import addresses_text
from goose_proxy.config import Config, ServerConfig
from goose_proxy.http.server import ProxyServer
from goose_proxy.systemd import listen_fds, meant_for_another, notify

ROOT = Path(__file__).resolve().parents[1]
UNITS = ROOT / "data" / "release" / "systemd"
WAIT = 20.0  # seconds: the bound for every wait on the child process

pytestmark = pytest.mark.skipif(
    sys.platform != "linux", reason="socket activation and sd_notify are Linux features"
)

_LAUNCHER = (  # fd 3 from the descriptor given (-1: fd 3 closed)
    "import os, sys\n"
    "fd = int(sys.argv[1])\n"
    "if fd < 0:\n"
    "    os.closerange(3, 4)\n"
    "elif fd != 3:\n"
    "    os.dup2(fd, 3)\n"
    "    os.close(fd)\n"
    "if fd >= 0:\n"
    "    os.set_inheritable(3, True)\n"
    "os.environ['LISTEN_PID'] = str(os.getpid())\n"
    "os.execv(sys.executable, [sys.executable, '-m', 'goose_proxy', *sys.argv[2:]])\n"
)


@pytest.fixture
def notify_socket() -> Iterator[tuple[socket.socket, str]]:
    """An abstract-namespace datagram socket, as ``$NOTIFY_SOCKET`` spells it (``@name``)."""
    name = f"goose-proxy-test-{uuid.uuid4().hex}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    try:
        yield sock, "@" + name
    finally:
        sock.close()


def _wait_for(
    sock: socket.socket, wanted: str, deadline: float, proc: subprocess.Popen[bytes], log: Path
) -> list[str]:
    """Receive notifications until one holds the line ``wanted``; all received so far.

    Fails at ``deadline``, or as soon as the process has exited without sending it.
    """
    got: list[str] = []
    exited = False
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        # Wake up twice a second to notice a crashed process; once it has exited,
        # one last non-blocking read picks up what it sent just before.
        sock.settimeout(0 if exited else min(remaining, 0.5))
        try:
            msg = sock.recv(4096).decode()
        except (socket.timeout, BlockingIOError):
            if exited:
                break
            exited = proc.poll() is not None
            continue
        got.append(msg)
        if wanted in msg.splitlines():
            return got
    raise AssertionError(
        f"no {wanted!r} notification (exit status {proc.poll()}); received {got!r}; "
        f"log:\n{log.read_text('utf-8', 'replace')}"
    )


def _get(port: int, path: str) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=WAIT)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def test_socket_activated_cli_notifies_serves_and_drains(
    tmp_path: Path, notify_socket: tuple[socket.socket, str]
) -> None:
    nsock, nname = notify_socket
    # The port in the configuration is held by this test (bound, not listening):
    # a proxy that tried to bind it would fail and exit 1.
    decoy = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    decoy.bind(("127.0.0.1", 0))
    decoy_port = decoy.getsockname()[1]
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    config = tmp_path / "config.toml"
    config.write_text(
        "[server]\n"
        'host = "127.0.0.1"\n'
        f"port = {decoy_port}\n"
        "drain_timeout = 5\n"
        "[backend]\n"
        'endpoint = "http://127.0.0.1:9"\n'
        "[logging]\n"
        'level = "info"\n'
    )
    log_path = tmp_path / "stderr.log"
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("LISTEN_", "NOTIFY_")) and not k.lower().endswith("_proxy")
    }
    env.update(
        LISTEN_FDS="1",
        LISTEN_FDNAMES="http",
        NOTIFY_SOCKET=nname,
        PYTHONUNBUFFERED="1",
    )
    with log_path.open("wb") as log_file:
        st = os.fstat(log_file.fileno())
        # what systemd sets when stderr goes to the journal: stderr's device:inode
        env["JOURNAL_STREAM"] = f"{st.st_dev}:{st.st_ino}"
        proc = subprocess.Popen(
            [sys.executable, "-c", _LAUNCHER, str(listener.fileno()), "--config", str(config)],
            pass_fds=[listener.fileno()],
            env=env,
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=log_file,
        )
    listener.close()  # the child holds the only copy now, as under systemd
    try:
        ready = _wait_for(nsock, "READY=1", time.monotonic() + WAIT, proc, log_path)
        assert any(
            line.startswith("STATUS=") and f"127.0.0.1:{port}" in line
            for line in ready[-1].splitlines()
        ), ready

        status, body = _get(port, "/health")
        assert status == 200
        assert json.loads(body) == {"status": "ok"}

        proc.send_signal(signal.SIGTERM)
        stopping = _wait_for(nsock, "STOPPING=1", time.monotonic() + WAIT, proc, log_path)
        assert any(line.startswith("STATUS=") for line in stopping[-1].splitlines())
        assert proc.wait(timeout=WAIT) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=WAIT)
        decoy.close()

    log = log_path.read_text("utf-8", "replace")
    assert "socket-activated by systemd (http)" in log, log
    assert "host and port are ignored" in log, log
    listening = re.findall(r"listening on (.+?); backend", log)
    assert listening == [f"127.0.0.1:{port}"], log  # the inherited socket, not decoy_port
    assert f"; configuration {config}\n" in log, log  # which file is in effect
    # journald format: a priority prefix on every line, no timestamp
    lines = [ln for ln in log.splitlines() if ln.strip()]
    assert lines and all(re.match(r"<[0-7]>goose_proxy", ln) for ln in lines), log
    assert not re.search(r"\d{4}-\d\d-\d\d \d\d:\d\d", log), log


def test_listen_fds_ignores_variables_meant_for_another_process() -> None:
    env = {"LISTEN_PID": str(os.getpid() + 1), "LISTEN_FDS": "1", "LISTEN_FDNAMES": "http"}
    before = dict(env)
    assert listen_fds(env) == []
    assert env == before  # not ours: left for whoever they are meant for
    # but said: a wrapper that did not exec goose-proxy makes it bind the
    # port systemd holds, and fail with "Address already in use"
    said = meant_for_another(env)
    assert said is not None and "does not exec it" in said
    assert f"LISTEN_FDS is set for process {os.getpid() + 1}, not this one" in said
    assert meant_for_another({**env, "LISTEN_PID": str(os.getpid())}) is None
    assert meant_for_another({}) is None


@pytest.mark.parametrize(
    "env",
    [
        {},
        {"LISTEN_PID": "", "LISTEN_FDS": "1"},
        {"LISTEN_PID": "not-a-pid", "LISTEN_FDS": "1"},
        {"LISTEN_PID": str(os.getpid()), "LISTEN_FDS": "0"},
        {"LISTEN_PID": str(os.getpid()), "LISTEN_FDS": "x"},
    ],
)
def test_listen_fds_without_activation(env: dict[str, str]) -> None:
    assert listen_fds(env) == []


def test_notify_sends_one_datagram(notify_socket: tuple[socket.socket, str]) -> None:
    sock, name = notify_socket
    assert notify("READY=1\nSTATUS=testing", {"NOTIFY_SOCKET": name}) is True
    sock.settimeout(WAIT)
    assert sock.recv(4096) == b"READY=1\nSTATUS=testing"


def test_notify_without_socket_is_a_no_op(tmp_path: Path) -> None:
    assert notify("READY=1", {}) is False
    assert notify("READY=1", {"NOTIFY_SOCKET": str(tmp_path / "nobody-listens")}) is False


# --- the unit files ---------------------------------------------------------------


def _unit(name: str) -> dict[str, list[str]]:
    """``{"Directive": [values...]}`` of a unit file (sections merged, comments dropped)."""
    out: dict[str, list[str]] = {}
    for line in (UNITS / name).read_text("utf-8").splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";", "[")):
            continue
        key, _, value = line.partition("=")
        out.setdefault(key.strip(), []).append(value.strip())
    return out


def _seconds(value: str) -> float:
    m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*(s|sec|min)?", value)
    assert m is not None, f"cannot read {value!r} as seconds"
    return float(m.group(1)) * (60 if m.group(2) == "min" else 1)


def test_socket_unit_matches_the_defaults() -> None:
    unit = _unit("goose-proxy.socket")
    server = ServerConfig()
    assert unit["ListenStream"] == [f"{server.host}:{server.port}"]
    assert unit["FileDescriptorName"] == ["http"]
    assert unit["Accept"] == ["no"]


def test_service_stop_timeout_covers_the_drain() -> None:
    unit = _unit("goose-proxy.service")
    assert unit["Type"] == ["notify"]
    assert unit["ExecStart"] == ["/usr/bin/goose-proxy"]
    assert unit["CapabilityBoundingSet"] == [""]
    # the drain, then cancellation and closing the backend connections
    assert _seconds(unit["TimeoutStopSec"][0]) >= ServerConfig().drain_timeout + 10
    # exit status 2 (invalid configuration) must not be retried
    assert "2" in unit["RestartPreventExitStatus"][0].split()


@pytest.mark.parametrize(
    ("kind", "said"),
    [
        ("pipe", "is not a socket"),
        ("closed", "is not open"),
        # ListenDatagram= instead of ListenStream=, or a socket never listening:
        # the proxy said it was ready and failed to accept ten times a second
        ("datagram", "is not a listening stream socket"),
        ("unlistened", "is not a listening stream socket"),
    ],
)
def test_activation_with_a_descriptor_that_cannot_serve(
    tmp_path: Path, kind: str, said: str
) -> None:
    """A broken socket unit: exit status 1 and a message about the descriptor,
    not about the host and port the proxy was told to ignore."""
    config = tmp_path / "config.toml"
    config.write_text('[backend]\nendpoint = "http://127.0.0.1:9"\n')
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LISTEN_", "NOTIFY_"))}
    env["LISTEN_FDS"] = "1"
    with contextlib.ExitStack() as held:
        if kind == "pipe":
            fds = os.pipe()
            for fd in fds:
                held.callback(os.close, fd)
            fd = fds[0]
        elif kind == "closed":
            fd = -1
        else:
            sock = held.enter_context(
                socket.socket(
                    socket.AF_INET, socket.SOCK_DGRAM if kind == "datagram" else socket.SOCK_STREAM
                )
            )
            sock.bind(("127.0.0.1", 0))
            fd = sock.fileno()
        proc = subprocess.run(
            [sys.executable, "-c", _LAUNCHER, str(fd), "--config", str(config)],
            pass_fds=[fd] if fd >= 0 else [], env=env, cwd=ROOT, stdin=subprocess.DEVNULL,
            capture_output=True, timeout=WAIT,
        )  # fmt: skip
    err = proc.stderr.decode("utf-8", "replace")
    assert proc.returncode == 1, err
    assert f"LISTEN_FDS=1: file descriptor 3 {said} (check the socket unit" in err, err
    assert "cannot listen on" not in err and "Traceback" not in err


def _serve_on(tmp_path: Path, host: str, taken: socket.socket, **env_extra: str) -> str:
    """Start the proxy on ``host`` and the port ``taken`` holds: it must exit 1
    (the port is in use); its standard error."""
    config = tmp_path / "config.toml"
    config.write_text(
        f'[server]\nhost = "{host}"\nport = {taken.getsockname()[1]}\n'
        '[backend]\nendpoint = "http://127.0.0.1:9"\n'
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LISTEN_", "NOTIFY_"))}
    proc = subprocess.run(
        [sys.executable, "-m", "goose_proxy", "--config", str(config)],
        env={**env, **env_extra}, cwd=ROOT, stdin=subprocess.DEVNULL, capture_output=True,
        timeout=WAIT,
    )  # fmt: skip
    err = proc.stderr.decode("utf-8", "replace")
    assert proc.returncode == 1, err
    return err


def test_activation_meant_for_another_process_is_warned_about(tmp_path: Path) -> None:
    """A script that runs goose-proxy without exec: LISTEN_PID names the script,
    the proxy binds [server] host:port, which the socket unit holds, and
    fails; the log says why, not only "Address already in use"."""
    with socket.create_server(("127.0.0.1", 0)) as held:  # as the socket unit holds it
        # LISTEN_PID: this test, the "script"
        err = _serve_on(tmp_path, "127.0.0.1", held, LISTEN_FDS="1", LISTEN_PID=str(os.getpid()))
    assert f"LISTEN_FDS is set for process {os.getpid()}, not this one" in err, err
    assert "cannot listen on 127.0.0.1" in err and "Traceback" not in err


@pytest.mark.parametrize("journal", [True, False], ids=["journal", "terminal"])
def test_a_configuration_error_has_the_error_priority_in_the_journal(
    tmp_path: Path, journal: bool
) -> None:
    """Said before logging is set up: without its <3> prefix journald gave the line
    the info priority, and `journalctl -p warning` hid the line naming the key."""
    config = tmp_path / "config.toml"
    config.write_text("[server]\nprot = 8080\n")
    env = {k: v for k, v in os.environ.items() if k != "JOURNAL_STREAM"}
    err_path = tmp_path / "stderr.log"
    with err_path.open("wb") as err_file:
        if journal:
            st = os.fstat(err_file.fileno())
            env["JOURNAL_STREAM"] = f"{st.st_dev}:{st.st_ino}"
        proc = subprocess.run(
            [sys.executable, "-m", "goose_proxy", "--config", str(config)],
            env=env, cwd=ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=err_file, timeout=WAIT,
        )  # fmt: skip
    err = err_path.read_text("utf-8", "replace")
    assert proc.returncode == 2, err
    said = f"goose-proxy: configuration error: {config}: server.prot: unknown key"
    assert err.startswith(("<3>" if journal else "") + said), err


def test_a_port_in_use_names_the_address_as_urls_write_it(tmp_path: Path) -> None:
    """Exit status 1 and the address in brackets (it read ``::1:8080``), with the keys."""
    family, host = (socket.AF_INET6, "::1") if socket.has_ipv6 else (socket.AF_INET, "127.0.0.1")
    try:
        taken = socket.socket(family)
        taken.bind((host, 0))
    except OSError:
        pytest.skip(f"no {host} on this machine")
    with taken:
        taken.listen()
        port = taken.getsockname()[1]
        err = _serve_on(tmp_path, host, taken)
    where = addresses_text([(host, port)])
    assert f"cannot listen on {where} ([server] host, port): " in err, err
    assert "Traceback" not in err


def test_addresses_are_written_as_urls_write_them() -> None:
    assert addresses_text([("127.0.0.1", 8080), ("::1", 8080)]) == "127.0.0.1:8080, [::1]:8080"
    assert addresses_text([("127.0.0.1", 80)], ["/run/gp.sock"]) == "127.0.0.1:80, /run/gp.sock"


@pytest.mark.anyio
async def test_a_unix_socket_listened_on_is_named(tmp_path: Path) -> None:
    # systemd's ListenStream= may be a path: "listening on " said nothing
    path = str(tmp_path / "gp.sock")
    unix = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    abstract = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    unix.bind(path)
    abstract.bind(f"\0gp-test-{os.getpid()}")
    for s in (unix, abstract):
        s.listen()
    server = ProxyServer(Config())
    try:
        listeners = await server.open_listeners([unix, abstract])
        assert server.unix_paths == [path, f"@gp-test-{os.getpid()}"]
        assert server.bound == []
        for listener in listeners:
            await listener.aclose()
    finally:
        unix.close()
        abstract.close()
