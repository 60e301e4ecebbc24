"""``python -m devbackend`` as a real process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import anyio
import anyio.abc
import anyio.to_thread
import pytest

from devbackend.__main__ import build_parser
from devbackend.certs import DevCerts, client_ssl_context
from devbackend.client import DevClient

ROOT = Path(__file__).resolve().parents[2]
TIMEOUT = 30


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def read_line(stream: anyio.abc.ByteReceiveStream) -> str:
    data = b""
    while not data.endswith(b"\n"):
        data += await stream.receive(1)
    return data.decode()


async def stop(process: anyio.abc.Process, signum: signal.Signals = signal.SIGTERM) -> str:
    process.send_signal(signum)
    assert await process.wait() == 0
    assert process.stderr is not None
    err = b""
    try:
        while True:
            err += await process.stderr.receive()
    except anyio.EndOfStream:
        pass
    return err.decode()


def command(*args: str) -> list[str]:
    return [sys.executable, "-m", "devbackend", "--port", "0", *args]


def test_help() -> None:
    text = build_parser().format_help()
    for option in (
        "--tls",
        "--certs-dir",
        "--mode",
        "--print-port",
        "--ready-fd",
        "--strict-fields",
    ):
        assert option in text


@pytest.mark.anyio
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
async def test_print_port_serve_and_stop(signum: signal.Signals) -> None:
    with anyio.fail_after(TIMEOUT):
        process = await anyio.open_process(command("--print-port"), cwd=ROOT)
        async with process:
            assert process.stdout is not None
            line = await read_line(process.stdout)
            assert line.startswith("PORT ")
            port = int(line.split()[1])
            async with await DevClient.connect(f"http://127.0.0.1:{port}") as c:
                r = await c.request(
                    "POST", "/v1/responses", json_body={"input": "hi", "stream": True}
                )
                assert r.status == 200 and r.complete
            err = await stop(process, signum)
            assert "POST /v1/responses -> 200" in err  # one log line per request
            assert "stopping" in err


@pytest.mark.anyio
async def test_tls_and_ready_fd(tmp_path: Path) -> None:
    read_fd, write_fd = os.pipe()
    certs_dir = tmp_path / "certs"
    try:
        with anyio.fail_after(TIMEOUT):
            process = await anyio.open_process(
                command("--tls", "--certs-dir", str(certs_dir), "--ready-fd", str(write_fd), "-q"),
                cwd=ROOT,
                pass_fds=[write_fd],
            )
            os.close(write_fd)
            write_fd = -1
            async with process:
                line = await anyio.to_thread.run_sync(os.read, read_fd, 100)
                port = int(line.decode().split()[1])
                certs = DevCerts.in_directory(certs_dir)
                assert certs.complete()
                ctx = client_ssl_context(certs)
                async with await DevClient.connect(f"https://localhost:{port}", ctx) as c:
                    assert (await c.request("GET", "/_dev/stats")).json()["tls_handshakes"] == 1
                err = await stop(process)
                assert "GET /_dev/stats" not in err  # -q
    finally:
        os.close(read_fd)
        if write_fd >= 0:
            os.close(write_fd)


def test_port_in_use_exits_with_error() -> None:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        done = subprocess.run(
            [sys.executable, "-m", "devbackend", "--port", str(port), "-q"],
            cwd=ROOT,
            capture_output=True,
            timeout=TIMEOUT,
        )
    assert done.returncode == 1
    assert b"devbackend:" in done.stderr
