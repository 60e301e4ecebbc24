"""``make dev``: the development backend and the proxy, with auto-reload.

Starts ``python -m devbackend --tls`` on 127.0.0.1:8443 (certificates generated
into ``.dev/certs`` on first run, the client pair as ``cert.pem``/``key.pem``
like RHSM's), then the proxy with ``data/development/xdg/goose-proxy/config.toml``
on 127.0.0.1:8080 — restarted whenever a file under ``goose_proxy/`` changes
(``watchfiles``; ``--no-reload`` runs it once). Ctrl-C stops both.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CERTS = Path(".dev") / "certs"
XDG = Path("data") / "development" / "xdg"
BACKEND_PORT = 8443
PROXY_PORT = 8080  # the development configuration's [server] port


def _port_in_use(port: int) -> bool:
    """Whether 127.0.0.1:``port`` is taken (bound as the proxy binds it)."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


def _start_backend() -> subprocess.Popen[bytes]:
    cmd = [
        sys.executable, "-m", "devbackend", "--tls", "--certs-dir", str(CERTS),
        "--host", "127.0.0.1", "--port", str(BACKEND_PORT), "--print-port", "-q",
    ]  # fmt: skip
    # its own session: Ctrl-C reaches the proxy, which drains its requests;
    # the backend, stopped at once, would cut them (main stops it afterwards)
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, start_new_session=True)
    assert proc.stdout is not None
    line = proc.stdout.readline().decode().strip()  # "PORT <n>" once listening
    if not line.startswith("PORT "):
        proc.wait(timeout=10)
        raise SystemExit(f"development backend did not start (exit {proc.returncode})")
    print(f"devrun: development backend on https://127.0.0.1:{BACKEND_PORT} (mTLS)", flush=True)
    return proc


def _run_until_stopped(cmd: list[str], env: dict[str, str]) -> int:
    """Run the proxy until it exits. Ctrl-C reaches every process of the
    terminal's group, the proxy too, which then drains and stops by itself:
    devrun ignores it and waits (``subprocess.call`` killed the proxy at once).
    A SIGTERM to devrun alone is passed on to the proxy."""
    proxy = subprocess.Popen(cmd, env=env)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # after the Popen: the proxy keeps it
    signal.signal(signal.SIGTERM, lambda signum, frame: proxy.terminate())
    return proxy.wait()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m devbackend.devrun", description=__doc__)
    p.add_argument("--no-reload", action="store_true", help="do not restart on source changes")
    args = p.parse_args(argv)
    os.chdir(ROOT)
    for port in (PROXY_PORT, BACKEND_PORT):
        if _port_in_use(port):
            # else the proxy would fail alone, and the README's curl reach another server
            raise SystemExit(f"devrun: 127.0.0.1:{port} is in use; stop what listens there")
    env = dict(os.environ, XDG_CONFIG_DIRS=str(ROOT / XDG))
    backend = _start_backend()
    proxy_cmd = [sys.executable, "-m", "goose_proxy"]
    print(
        f"devrun: goose-proxy on http://127.0.0.1:{PROXY_PORT} (see the README curl example)",
        flush=True,
    )
    try:
        if args.no_reload:
            return _run_until_stopped(proxy_cmd, env)
        from watchfiles import run_process

        os.environ.update(env)
        run_process(
            ROOT / "goose_proxy",
            target=" ".join(proxy_cmd),
            target_type="command",
            callback=lambda changes: print(f"devrun: {len(changes)} change(s); restarting"),
        )
        return 0
    except KeyboardInterrupt:
        return 0
    finally:
        backend.terminate()
        try:
            backend.wait(timeout=5)
        except subprocess.TimeoutExpired:
            backend.kill()


if __name__ == "__main__":
    sys.exit(main())
