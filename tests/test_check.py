"""``goose-proxy check``: the real CLI in a subprocess against real backends and proxies.

The scripted backend (mTLS), the CONNECT proxy and the failing endpoints all
run in the test's event loop while ``python -m goose_proxy --config X check``
runs as a child process, so the check makes its real TLS handshake.
"""

from __future__ import annotations

import datetime as dt
import errno
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Optional

import anyio
import anyio.abc
import pytest
import trustme

import devbackend
from goose_proxy.check import REASONS, effective_values
from goose_proxy.config import BackendConfig, Config
from tests.connectproxy import connect_proxy
from tests.reliability.support import fake_server, read_request_head
from tests.subprocs import child_env, pki_auth, write_config
from tests.support import encrypted_copy, issue_client_pair, refusing_port, silent_listener

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).resolve().parents[1]
WAIT = 30.0  # seconds: the bound for one check run


async def run_check(
    config: Optional[Path],
    env: Mapping[str, str],
    args: tuple[str, ...] = ("check",),
) -> SimpleNamespace:
    cmd = [sys.executable, "-m", "goose_proxy"]
    if config is not None:
        cmd += ["--config", str(config)]
    with anyio.fail_after(WAIT):
        proc = await anyio.run_process(
            [*cmd, *args], check=False, env=dict(env), cwd=str(ROOT), stdin=subprocess.DEVNULL
        )
    out = proc.stdout.decode()
    err = proc.stderr.decode()
    assert "Traceback" not in err, err
    return SimpleNamespace(rc=proc.returncode, out=out, err=err, all=out + err)


async def check_offline(
    tmp_path: Path, auth: Mapping[str, str], append: str = ""
) -> SimpleNamespace:
    """``check`` with ``auth`` against a backend port that refuses connections, for
    what the check finds before (or instead of) the live request; ``append`` is
    added to the config file. The result (see :func:`run_check`) also has ``port``."""
    with refusing_port() as port:
        cfg = write_config(tmp_path / "c.toml", f"https://127.0.0.1:{port}", auth)
        if append:
            with cfg.open("a") as f:
                f.write(append)
        r = await run_check(cfg, child_env(tmp_path))
    r.port = port
    return r


def issue_client(
    pki: SimpleNamespace, tmp_path: Path, name: str, **validity: Any
) -> dict[str, str]:
    """A client pair from the test CA, e.g. with ``not_after`` in the past."""
    cert, key = issue_client_pair(pki.ca, name, tmp_path, **validity)
    return pki_auth(pki, cert_file=str(cert), key_file=str(key))


# --- all well -----------------------------------------------------------------------


@pytest.mark.parametrize("args", [("check",), ("--check",)], ids=["command", "option"])
async def test_ready_over_mtls(pki: SimpleNamespace, tmp_path: Path, args: tuple[str, ...]) -> None:
    async with devbackend.run(tls=pki.server_context()) as backend:
        cfg = write_config(tmp_path / "c.toml", backend.url + "/v1", pki_auth(pki))
        r = await run_check(cfg, child_env(tmp_path), args)
    assert r.rc == 0, r.all
    assert r.out.rstrip().endswith("verdict: ready")
    assert f"[ ok ] configuration: {cfg}" in r.out
    assert f'backend.endpoint = "{backend.url}/v1"' in r.out
    assert "matches its key; valid until " in r.out
    assert "subject: " in r.out and "CN=consumer-0001" in r.out
    assert f"[ ok ] backend: {backend.url}/v1 answered GET /models with HTTP 200" in r.out
    # one live request, with this host's client certificate
    assert backend.stats.tls_handshakes == 1
    assert "consumer-0001" in (backend.stats.client_subjects[-1] or "")


@pytest.mark.parametrize("case", ["loose", "tight", "closed-above"])
async def test_files_other_users_may_change_or_read_are_named(
    pki: SimpleNamespace, tmp_path: Path, case: str
) -> None:
    """A world-writable configuration (or directory) lets anyone choose the backend
    and its CA; a world-readable key gives away the host's identity. `check` said
    ready without a word; it notes them now, as the daemon warns at start. Not
    when a directory above closes them to other users (a 0700 home)."""
    with tempfile.TemporaryDirectory() as top:  # under /tmp: others may pass through
        os.chmod(top, 0o700 if case == "closed-above" else 0o755)
        d = Path(top, "etc")
        os.mkdir(d)
        key = d / "key.pem"
        shutil.copyfile(pki.key_file, key)
        with refusing_port() as port:
            cfg = write_config(
                d / "c.toml", f"https://127.0.0.1:{port}", pki_auth(pki, key_file=str(key))
            )
            for path, mode in ((key, 0o644), (cfg, 0o666), (d, 0o777)):
                os.chmod(path, 0o750 & mode | 0o600 if case == "tight" else mode)
            r = await run_check(cfg, child_env(tmp_path))
    notes = [line for line in r.out.splitlines() if "by every user" in line]
    if case != "loose":
        assert notes == [], r.out
        return
    assert notes == [
        f"       note: the configuration file {cfg} is writable by every user (mode 0666): "
        f"anyone could point the proxy at a backend of their own; chmod o-w {cfg}",
        f"       note: its directory {d} is writable by every user (mode 0777): "
        f"anyone could point the proxy at a backend of their own; chmod o-w {d}",
        f"       note: the private key {key} is readable by every user (mode 0644): "
        f"anyone on this host can take its identity; chmod o-r {key}",
    ]


@pytest.mark.parametrize(
    ("host", "noted"),
    [("0.0.0.0", True), ("::", True), ("gp.lan", True), ("127.0.0.2", False),
     ("::1", False), ("LocalHost.", False), ("localhost.localdomain", False)],
)  # fmt: skip
async def test_a_listen_host_other_hosts_may_reach_is_noted(
    pki: SimpleNamespace, tmp_path: Path, host: str, noted: bool
) -> None:
    # the daemon warns at start when it listens on such an address; the check
    # said ready without a word
    r = await check_offline(tmp_path, pki_auth(pki), f"\n[server]\nhost = {json.dumps(host)}\n")
    notes = [line for line in r.out.splitlines() if "not a loopback address" in line]
    assert notes == (
        [
            f"       note: server.host {host} is not a loopback address: the API has no "
            "authentication, and anyone who can reach it uses this host's identity (under "
            "socket activation the socket unit's ListenStream= decides where the proxy listens)"
        ]
        if noted
        else []
    ), r.out
    assert f'server.host = "{host}"' in r.out  # the file was read


async def test_a_ca_or_certificate_others_may_replace_is_named(
    pki: SimpleNamespace, tmp_path: Path
) -> None:
    """The CA bundle vouches for the backend, and the client pair is the host's
    identity: whoever may replace them may put a backend of their own in the
    middle. `check` named only the configuration and the key's reading."""
    with tempfile.TemporaryDirectory() as top:
        os.chmod(top, 0o755)
        ca_dir, pair = Path(top, "ca"), Path(top, "pair")
        for d, mode in ((ca_dir, 0o755), (pair, 0o777)):
            os.mkdir(d)
            os.chmod(d, mode)
        ca, cert, key = ca_dir / "ca.pem", pair / "cert.pem", pair / "key.pem"
        for src, dst, mode in ((pki.ca_file, ca, 0o666), (pki.cert_file, cert, 0o644),
                               (pki.key_file, key, 0o600)):  # fmt: skip
            shutil.copyfile(src, dst)
            os.chmod(dst, mode)
        with refusing_port() as port:
            auth = pki_auth(pki, ca_file=str(ca), cert_file=str(cert), key_file=str(key))
            cfg = write_config(tmp_path / "c.toml", f"https://127.0.0.1:{port}", auth)
            r = await run_check(cfg, child_env(tmp_path))
    notes = [line for line in r.out.splitlines() if "by every user" in line]
    assert notes == [
        f"       note: the CA file {ca} is writable by every user (mode 0666): "
        f"anyone could vouch for a backend of their own; chmod o-w {ca}",
        f"       note: {pair}, the directory of the client certificate, is writable by every "
        f"user (mode 0777): anyone could make the proxy use an identity of their own; "
        f"chmod o-w {pair}",
    ], r.out


async def test_config_found_through_xdg(pki: SimpleNamespace, tmp_path: Path) -> None:
    xdg = tmp_path / "xdg"
    (xdg / "goose-proxy").mkdir(parents=True)
    async with devbackend.run(tls=pki.server_context()) as backend:
        cfg = write_config(xdg / "goose-proxy" / "config.toml", backend.url, pki_auth(pki))
        env = child_env(tmp_path, XDG_CONFIG_DIRS=f"{tmp_path / 'empty'}:{xdg}")
        r = await run_check(None, env)
    assert r.rc == 0, r.all
    assert f"[ ok ] configuration: {cfg}" in r.out


async def test_backend_without_model_list_is_still_ready(
    pki: SimpleNamespace, tmp_path: Path
) -> None:
    """A 404 on GET /models still proves that TLS and the identity were accepted."""
    async with devbackend.run(tls=pki.server_context()) as backend:
        cfg = write_config(
            tmp_path / "c.toml", backend.url, pki_auth(pki), headers={"X-Dev-Fault": "status:404"}
        )
        r = await run_check(cfg, child_env(tmp_path))
    assert r.rc == 0, r.all
    assert "TLS and authentication to" in r.out and "HTTP 404" in r.out
    # ... but it says what else a 404 can mean
    assert f"chat requests go to {backend.url}/responses; is backend.endpoint" in r.out
    assert "verdict: ready" in r.out


def test_check_option_with_the_serve_command_is_refused(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # it used to run the check quietly, ignoring the command
    from goose_proxy.cli import main

    with pytest.raises(SystemExit) as info:
        main(["--check", "serve"])
    assert info.value.code == 2
    assert "--check and serve contradict each other" in capsys.readouterr().err


@pytest.mark.parametrize("args", [("check",), ("--help",)], ids=["check", "help"])
@pytest.mark.parametrize("unbuffered", ["1", ""], ids=["unbuffered", "buffered"])
def test_stdout_closed_by_its_reader_is_no_traceback(
    tmp_path: Path, args: tuple[str, ...], unbuffered: str
) -> None:
    """``goose-proxy check | head -1``: with PYTHONUNBUFFERED=1 (common in containers)
    the report ended in a BrokenPipeError traceback; buffered, in Python's
    "Exception ignored" at exit. Now: exit status 1 and nothing on stderr about it."""
    with refusing_port() as port:
        cfg = write_config(tmp_path / "c.toml", f"http://127.0.0.1:{port}", {})
        env = child_env(tmp_path, PYTHONUNBUFFERED=unbuffered)
        read_end, write_end = os.pipe()
        os.close(read_end)  # the reader is gone before the first line
        try:
            proc = subprocess.run(
                [sys.executable, "-m", "goose_proxy", "--config", str(cfg), *args],
                env=env, cwd=str(ROOT), stdin=subprocess.DEVNULL, stdout=write_end,
                stderr=subprocess.PIPE, timeout=WAIT, check=False,
            )  # fmt: skip
        finally:
            os.close(write_end)
    err = proc.stderr.decode()
    # argparse itself ignores a failed write of the help (exit status 0, unbuffered)
    assert proc.returncode in ((1,) if args == ("check",) else (0, 1)), err
    assert "BrokenPipeError" not in err and "Exception ignored" not in err, err


@pytest.mark.parametrize("config", ["valid", "missing"])
@pytest.mark.parametrize("unbuffered", ["1", ""], ids=["unbuffered", "buffered"])
@pytest.mark.parametrize(
    ("stdout", "said"),
    [(">&-", "standard output is closed"), (">/dev/full", os.strerror(errno.ENOSPC))],
    ids=["closed", "full"],
)
def test_stdout_that_cannot_take_the_report_is_said_on_stderr(
    tmp_path: Path, config: str, unbuffered: str, stdout: str, said: str
) -> None:
    """``goose-proxy check >&-`` (or onto a full disk): an AttributeError or
    OSError traceback with exit status 1. Now one line on stderr, status 1."""
    if stdout == ">/dev/full" and not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full on this system")
    with refusing_port() as port:
        cfg = write_config(tmp_path / "c.toml", f"http://127.0.0.1:{port}", {})
        if config == "missing":
            cfg.unlink()
        env = child_env(tmp_path, PYTHONUNBUFFERED=unbuffered)
        command = [sys.executable, "-m", "goose_proxy", "--config", str(cfg), "check"]
        proc = subprocess.run(
            ["sh", "-c", f'exec "$@" {stdout}', "sh", *command],
            env=env, cwd=str(ROOT), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE, timeout=WAIT, check=False,
        )  # fmt: skip
    err = proc.stderr.decode()
    assert proc.returncode == 1, err
    assert err == f"goose-proxy: cannot write the report to standard output: {said}\n"


# --- configuration and certificate --------------------------------------------------


RHSM_CERT = "/etc/pki/consumer/cert.pem"  # the default: the host's RHSM identity


@pytest.mark.skipif(
    os.path.exists(RHSM_CERT),
    reason=f"this host is registered ({RHSM_CERT} exists): its absence cannot be shown",
)
async def test_missing_certificate_says_register(pki: SimpleNamespace, tmp_path: Path) -> None:
    r = await check_offline(tmp_path, pki_auth(pki, cert_file=RHSM_CERT))
    assert r.rc == 1, r.all
    assert "[FAIL] client certificate:" in r.out
    assert "does not exist" in r.out and "subscription-manager register" in r.out
    assert "[skip] backend" in r.out
    assert r.out.rstrip().endswith("verdict: NOT READY (not registered)")


async def test_a_missing_certificate_elsewhere_is_no_reason_to_register(
    pki: SimpleNamespace, tmp_path: Path
) -> None:
    r = await check_offline(tmp_path, pki_auth(pki, cert_file=str(tmp_path / "nope" / "cert.pem")))
    assert r.rc == 1, r.all
    assert "does not exist: check [backend.auth] cert_file" in r.out
    assert "subscription-manager" not in r.out
    assert r.out.rstrip().endswith("verdict: NOT READY (certificate unusable)")


async def test_expired_certificate(pki: SimpleNamespace, tmp_path: Path) -> None:
    now = dt.datetime.now(dt.timezone.utc)
    auth = issue_client(
        pki,
        tmp_path,
        "expired",
        not_before=now - dt.timedelta(days=30),
        not_after=now - dt.timedelta(days=1),
    )
    r = await check_offline(tmp_path, auth)
    assert r.rc == 1, r.all
    assert f"{auth['cert_file']} expired on {now - dt.timedelta(days=1):%Y-%m-%d}" in r.out
    assert "subscription-manager status" in r.out
    assert r.out.rstrip().endswith("verdict: NOT READY (certificate expired)")


async def test_certificate_not_yet_valid(pki: SimpleNamespace, tmp_path: Path) -> None:
    now = dt.datetime.now(dt.timezone.utc)
    auth = issue_client(
        pki,
        tmp_path,
        "future",
        not_before=now + dt.timedelta(days=2),
        not_after=now + dt.timedelta(days=30),
    )
    r = await check_offline(tmp_path, auth)
    assert r.rc == 1, r.all
    assert "is not valid before" in r.out and "clock" in r.out
    assert "verdict: NOT READY (certificate not yet valid)" in r.out


@pytest.mark.parametrize("kind", ["same-type", "rsa-for-ec"])
async def test_key_that_does_not_match(pki: SimpleNamespace, tmp_path: Path, kind: str) -> None:
    # an RSA key beside the EC certificate: OpenSSL says NO_CERTIFICATE_ASSIGNED
    # (no certificate for the key's type), which read "certificate unusable"
    key = pki.dir / "stranger-key.pem"
    if kind == "rsa-for-ec":
        key = tmp_path / "rsa-key.pem"
        rsa = pki.ca.issue_cert("rsa@example.com", key_type=trustme.KeyType.RSA)
        rsa.private_key_pem.write_to_path(str(key))
    auth = pki_auth(pki, key_file=str(key))
    r = await check_offline(tmp_path, auth)
    assert r.rc == 1, r.all
    assert (
        f"the private key {auth['key_file']} does not match the client certificate "
        f"{auth['cert_file']}"
    ) in r.out
    assert "verdict: NOT READY (certificate and key do not match)" in r.out


async def test_encrypted_key_is_named_not_prompted_for(
    pki: SimpleNamespace, tmp_path: Path
) -> None:
    # without a password callback OpenSSL asks for the passphrase on the
    # terminal: check (and the daemon's event loop) hung there
    auth = pki_auth(pki)
    locked = encrypted_copy(Path(auth["key_file"]), tmp_path / "locked-key.pem")
    r = await check_offline(tmp_path, {**auth, "key_file": str(locked)})
    assert r.rc == 1, r.all
    assert f"the private key {locked} is encrypted (it asks for a passphrase)" in r.out
    assert "pass phrase" not in r.all.lower()
    assert "verdict: NOT READY (certificate unusable)" in r.out


async def test_certificate_that_is_not_pem(pki: SimpleNamespace, tmp_path: Path) -> None:
    bad = tmp_path / "cert.pem"
    bad.write_text("this is not a certificate\n")
    r = await check_offline(tmp_path, pki_auth(pki, cert_file=str(bad)))
    assert r.rc == 1, r.all
    assert f"cannot load the client certificate {bad}" in r.out
    assert "verdict: NOT READY (certificate unusable)" in r.out


async def test_missing_ca_file_is_not_blamed_on_the_certificate(
    pki: SimpleNamespace, tmp_path: Path
) -> None:
    missing = tmp_path / "no-such-ca.pem"
    r = await check_offline(tmp_path, pki_auth(pki, ca_file=str(missing)))
    assert r.rc == 1, r.all
    assert f"cannot load the CA file {missing} ([backend.auth] ca_file)" in r.out
    assert "verdict: NOT READY (CA file unusable)" in r.out
    fail = [line for line in r.out.splitlines() if line.startswith("[FAIL]")]
    assert len(fail) == 1 and fail[0].startswith("[FAIL] CA file: "), r.out  # not the certificate


# --- the live request ----------------------------------------------------------------


async def test_backend_rejects_the_client_certificate(pki: SimpleNamespace, tmp_path: Path) -> None:
    auth = pki_auth(
        pki,
        cert_file=str(pki.dir / "stranger-cert.pem"),
        key_file=str(pki.dir / "stranger-key.pem"),
    )
    async with devbackend.run(tls=pki.server_context()) as backend:
        cfg = write_config(tmp_path / "c.toml", backend.url, auth)
        r = await run_check(cfg, child_env(tmp_path))
    assert r.rc == 1, r.all
    assert "[FAIL] backend:" in r.out
    assert "client certificate" in r.out
    assert "verdict: NOT READY (TLS error)" in r.out


@pytest.mark.parametrize("when", ["handshake", "late"])
async def test_a_backend_that_closes_is_no_certificate_refusal(
    pki: SimpleNamespace, tmp_path: Path, when: str
) -> None:
    # during the handshake, or long after the request (past RACE_WINDOW): check
    # said "right after the TLS handshake: the backend probably rejected the
    # client certificate" of both, as the daemon does not
    async def handler(stream: anyio.abc.ByteStream, tcp: anyio.abc.SocketStream) -> None:
        if when == "late":
            await read_request_head(stream, srv)
            await anyio.sleep(1.3)  # the backend's work (past the 1 s RACE_WINDOW), then gone

    tls = pki.server_context() if when == "late" else None
    async with fake_server(handler, tls=tls) as srv:
        cfg = write_config(tmp_path / "c.toml", srv.url.replace("http:", "https:"), pki_auth(pki))
        r = await run_check(cfg, child_env(tmp_path))
    assert r.rc == 1, r.all
    assert "probably rejected" not in r.out and "right after" not in r.out
    if when == "handshake":
        assert "closed the connection during the TLS handshake" in r.out
        assert "verdict: NOT READY (TLS error)" in r.out
    else:
        assert "closed the connection" in r.out
        assert "verdict: NOT READY (backend error)" in r.out


async def test_backend_certificate_not_trusted(pki: SimpleNamespace, tmp_path: Path) -> None:
    async with devbackend.run(tls=pki.server_context()) as backend:
        auth = pki_auth(pki, ca_file=str(pki.dir / "other-ca.pem"))
        cfg = write_config(tmp_path / "c.toml", backend.url, auth)
        r = await run_check(cfg, child_env(tmp_path))
    assert r.rc == 1, r.all
    assert "server certificate is not trusted" in r.out
    assert "verdict: NOT READY (TLS error)" in r.out


async def test_backend_that_does_not_speak_tls(pki: SimpleNamespace, tmp_path: Path) -> None:
    async with devbackend.run(tls=None) as backend:
        endpoint = backend.url.replace("http://", "https://")
        cfg = write_config(tmp_path / "c.toml", endpoint, pki_auth(pki))
        r = await run_check(cfg, child_env(tmp_path))
    assert r.rc == 1, r.all
    assert "TLS handshake with backend" in r.out
    assert "does not speak TLS here; does backend.endpoint mean http://?" in r.out
    assert "verdict: NOT READY (TLS error)" in r.out


async def test_backend_unreachable(pki: SimpleNamespace, tmp_path: Path) -> None:
    r = await check_offline(tmp_path, pki_auth(pki))
    assert r.rc == 1, r.all
    assert f"connection refused by backend 127.0.0.1:{r.port}" in r.out
    assert "verdict: NOT READY (backend unreachable)" in r.out


async def test_backend_silent(pki: SimpleNamespace, tmp_path: Path) -> None:
    with silent_listener() as port:
        cfg = write_config(
            tmp_path / "c.toml", f"https://127.0.0.1:{port}", pki_auth(pki), connect_timeout=0.5
        )
        r = await run_check(cfg, child_env(tmp_path))
    assert r.rc == 1, r.all
    assert "timed out after 0.5 s" in r.out
    assert "verdict: NOT READY (timeout)" in r.out


async def test_dns_failure(pki: SimpleNamespace, tmp_path: Path) -> None:
    cfg = write_config(tmp_path / "c.toml", "https://goose-proxy-check.invalid/v1", pki_auth(pki))
    r = await run_check(cfg, child_env(tmp_path))
    assert r.rc == 1, r.all
    assert "cannot resolve backend host 'goose-proxy-check.invalid'" in r.out
    assert "verdict: NOT READY (DNS)" in r.out


@pytest.mark.parametrize("status", [401, 403])
async def test_backend_refuses_the_identity(
    pki: SimpleNamespace, tmp_path: Path, status: int
) -> None:
    async with devbackend.run(tls=pki.server_context()) as backend:
        cfg = write_config(
            tmp_path / "c.toml",
            backend.url + "/v1",
            pki_auth(pki),
            headers={"X-Dev-Fault": f"status:{status}"},
        )
        r = await run_check(cfg, child_env(tmp_path))
    assert r.rc == 1, r.all
    assert f"refused this system's identity (HTTP {status})" in r.out
    assert "subscription-manager register" in r.out
    assert "verdict: NOT READY (HTTP status)" in r.out


async def test_backend_server_error(pki: SimpleNamespace, tmp_path: Path) -> None:
    async with devbackend.run(tls=pki.server_context()) as backend:
        cfg = write_config(
            tmp_path / "c.toml", backend.url, pki_auth(pki), headers={"X-Dev-Fault": "status:503"}
        )
        r = await run_check(cfg, child_env(tmp_path))
    assert r.rc == 1, r.all
    assert "answered GET /models with HTTP 503" in r.out
    assert "verdict: NOT READY (HTTP status)" in r.out


# --- through a proxy; secrets ------------------------------------------------------


async def test_through_an_authenticating_proxy_secrets_redacted(
    pki: SimpleNamespace, tmp_path: Path
) -> None:
    secrets = ("pr0xy-s3cret", "Bearer t0ken-s3cret", "k3y-s3cret", "id-s3cret")
    async with devbackend.run(tls=pki.server_context()) as backend:
        async with connect_proxy(credentials=("alice", "pr0xy-s3cret")) as proxy:
            cfg = write_config(
                tmp_path / "c.toml",
                backend.url,
                pki_auth(pki),
                headers={
                    "Authorization": "Bearer t0ken-s3cret",
                    "X-Api-Key": "k3y-s3cret",
                    "X-RH-Identity": "id-s3cret",
                    "X-Visible": "shown",
                },
                proxy=proxy.url_with("alice:pr0xy-s3cret"),
            )
            r = await run_check(cfg, child_env(tmp_path))
    assert r.rc == 0, r.all
    assert proxy.tunnels == 1
    assert proxy.requests[0].target == f"127.0.0.1:{backend.port}"
    assert "consumer-0001" in (backend.stats.client_subjects[-1] or "")
    assert f'backend.proxy = "http://***@127.0.0.1:{proxy.port}"' in r.out
    assert f"through proxy http://***@127.0.0.1:{proxy.port}, from [backend] proxy" in r.out
    assert '"X-Visible": "shown"' in r.out
    assert '"Authorization": "***"' in r.out
    for secret in secrets:
        assert secret not in r.all


async def test_proxy_refuses_wrong_credentials(pki: SimpleNamespace, tmp_path: Path) -> None:
    async with connect_proxy(credentials=("alice", "right")) as proxy:
        cfg = write_config(
            tmp_path / "c.toml",
            "https://127.0.0.1:9/v1",
            pki_auth(pki),
            proxy=proxy.url_with("alice:wr0ng-s3cret"),
        )
        r = await run_check(cfg, child_env(tmp_path))
    assert r.rc == 1, r.all
    assert f"proxy http://***@127.0.0.1:{proxy.port} refused the tunnel" in r.out
    assert "407" in r.out and "wrong or missing credentials" in r.out
    assert "wr0ng-s3cret" not in r.all
    assert "verdict: NOT READY (proxy refused)" in r.out


@pytest.mark.parametrize("variable", ["https_proxy", "HTTPS_PROXY"])
async def test_proxy_forbids_the_tunnel(
    pki: SimpleNamespace, tmp_path: Path, variable: str
) -> None:
    async with connect_proxy(refuse=403) as proxy:
        cfg = write_config(tmp_path / "c.toml", "https://127.0.0.1:9", pki_auth(pki))
        r = await run_check(cfg, child_env(tmp_path, **{variable: proxy.url}))
    assert r.rc == 1, r.all
    assert f"from environment variable {variable}" in r.out  # the one in use
    assert "refused the tunnel to 127.0.0.1:9: 403 Forbidden" in r.out
    assert "verdict: NOT READY (proxy refused)" in r.out


async def test_proxy_unreachable(pki: SimpleNamespace, tmp_path: Path) -> None:
    with refusing_port() as port:
        cfg = write_config(
            tmp_path / "c.toml",
            "https://127.0.0.1:9",
            pki_auth(pki),
            proxy=f"http://u:s3cret@127.0.0.1:{port}",
        )
        r = await run_check(cfg, child_env(tmp_path))
    assert r.rc == 1, r.all
    assert f"cannot connect to proxy http://***@127.0.0.1:{port}: connection refused" in r.out
    assert "s3cret" not in r.all
    assert "verdict: NOT READY (proxy error)" in r.out


async def test_silent_proxy_is_a_timeout(pki: SimpleNamespace, tmp_path: Path) -> None:
    # the proxy accepts the connection and never answers CONNECT
    with silent_listener() as port:
        cfg = write_config(
            tmp_path / "c.toml",
            "https://127.0.0.1:9",
            pki_auth(pki),
            proxy=f"http://127.0.0.1:{port}",
            connect_timeout=0.5,
        )
        r = await run_check(cfg, child_env(tmp_path))
    assert r.rc == 1, r.all
    assert f"timed out after 0.5 s waiting for proxy http://127.0.0.1:{port}" in r.out
    assert "verdict: NOT READY (timeout)" in r.out


async def test_unusable_proxy_variable_is_reported_not_a_crash(
    pki: SimpleNamespace, tmp_path: Path
) -> None:
    cfg = write_config(tmp_path / "c.toml", "https://127.0.0.1:9", pki_auth(pki))
    r = await run_check(cfg, child_env(tmp_path, HTTPS_PROXY="socks5://u:s3cret@proxy:1080"))
    assert r.rc == 1, r.all
    assert "environment variable HTTPS_PROXY: unsupported proxy URL 'socks5://***@proxy:1080'" in (
        r.out
    )
    assert "s3cret" not in r.all
    assert "verdict: NOT READY (proxy error)" in r.out


def test_effective_values_redact_url_credentials() -> None:
    cfg = Config(
        backend=BackendConfig(
            endpoint="https://user:pw-s3cret@backend.example/v1",
            proxy="http://bob:pr-s3cret@proxy.example:3128",
            headers={"Cookie": "c-s3cret", "Proxy-Authorization": "Basic x-s3cret", "A": "b"},
        )
    )
    values = effective_values(cfg)
    assert values["backend.endpoint"] == "https://***@backend.example/v1"
    assert values["backend.proxy"] == "http://***@proxy.example:3128"
    assert values["backend.headers"] == {"Cookie": "***", "Proxy-Authorization": "***", "A": "b"}
    assert "s3cret" not in json.dumps(values)


def test_every_verdict_reason_is_documented() -> None:
    man = (ROOT / "docs" / "man" / "goose-proxy.rst").read_text()
    for reason in REASONS:
        assert f"``{reason}``" in man, reason


async def test_a_configuration_that_cannot_load_still_ends_with_a_verdict(
    tmp_path: Path,
) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[backend]\nendpiont = 'https://x'\n")  # a typo: unknown key
    missing = tmp_path / "missing.toml"
    for cfg, why in ((bad, "backend.endpiont: unknown key"), (missing, "no such file")):
        r = await run_check(cfg, child_env(tmp_path))
        assert r.rc == 2, r.all
        assert r.out.rstrip().endswith("verdict: NOT READY (configuration)")
        assert f"[FAIL] configuration: {cfg}: {why}" in r.out  # why, in the report
        assert r.err == ""  # said once


async def test_flavour_defaults_and_log_level_in_the_report(
    pki: SimpleNamespace, tmp_path: Path
) -> None:
    # the daemon's level, not the check's
    r = await check_offline(tmp_path, pki_auth(pki), append='\n[logging]\nlevel = "debug"\n')
    assert "backend.max_request_chars = null  (unset: 65536 under the lightspeed flavour)" in r.out
    assert 'backend.model = null  (unset: "" under the lightspeed flavour' in r.out
    assert 'translate.system_messages = null  (unset: "drop" under the lightspeed flavour)' in r.out
    assert "DEBUG" not in r.err
