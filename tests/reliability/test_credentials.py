"""The RHSM identity: renewed on disk and picked up without a restart; a missing,
unreadable or mismatched pair gives a clear 502 (never a crash), and the
proxy recovers as soon as the files are right again."""

from __future__ import annotations

import datetime as dt
import errno
import logging
import os
import select
import shutil
import socket
import ssl
import threading
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import anyio
import httpx
import pytest
import trustme

import devbackend
from goose_proxy.config import AuthConfig
from goose_proxy.errors import CredentialsError, ServiceUnavailable
from goose_proxy.upstream import tls
from goose_proxy.upstream.tls import ClientTLS
from tests.fdlimit import out_of_descriptors
from tests.reliability.support import (
    HELLO,
    HELLO_STREAM,
    poll,
    pool_size,
    post,
    sse_answer,
    text_events,
)
from tests.support import (
    CertClock,
    encrypted_copy,
    issue_client_pair,
    make_config,
    running_proxy,
)

pytestmark = pytest.mark.anyio


def _install(src: Path, dst: Path, *, in_place: bool) -> None:
    """Put ``src``'s bytes at ``dst``: a rename (new inode) or a rewrite in place."""
    if in_place:
        data = src.read_bytes()
        with open(dst, "r+b") as f:
            f.truncate(0)
            f.write(data)
        # a renewal happens days later: its mtime differs even on a coarse clock
        st = os.stat(dst)
        os.utime(dst, ns=(st.st_atime_ns, st.st_mtime_ns + 10_000_000_000))
    else:
        tmp = dst.with_name(dst.name + ".new")
        shutil.copyfile(src, tmp)
        os.replace(tmp, dst)


async def wait_pooled(proxy: SimpleNamespace) -> None:
    """The connection of the last request is back in the pool (it goes back just after
    the client got its answer; polling: no event for it)."""
    with anyio.fail_after(5):
        await poll(lambda: pool_size(proxy) >= 1)


@pytest.fixture
def consumer(
    pki: SimpleNamespace, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> SimpleNamespace:
    """An RHSM-like consumer directory with its own cert.pem/key.pem (CN
    consumer-a), taken for RHSM's own (a file missing there: not registered)."""
    a_cert, a_key = issue_client_pair(pki.ca, "consumer-a", tmp_path)
    b_cert, b_key = issue_client_pair(pki.ca, "consumer-b", tmp_path)
    d = tmp_path / "consumer"
    d.mkdir()
    monkeypatch.setattr(tls, "RHSM_DIR", str(d))
    shutil.copyfile(a_cert, d / "cert.pem")
    shutil.copyfile(a_key, d / "key.pem")
    return SimpleNamespace(
        dir=d,
        cert=d / "cert.pem",
        key=d / "key.pem",
        b_cert=b_cert,
        b_key=b_key,
        a_cert=a_cert,
        a_key=a_key,
        auth=AuthConfig(str(d / "cert.pem"), str(d / "key.pem"), pki.ca_file),
    )


def _post_handshake_backend(listener: socket.socket, ctx: ssl.SSLContext) -> str:
    """A TLS 1.3 backend that asks for the client certificate only once it has the
    request (post-handshake authentication, as Apache does for a location that
    requires one): 200 with an answer when it gets one, else 403. Returns what
    it saw ("certificate", or the error)."""
    conn, _ = listener.accept()
    with ctx.wrap_socket(conn, server_side=True) as tls_sock:
        data = b""
        while b"\r\n\r\n" not in data:
            data += tls_sock.recv(65536)
        head, body = data.split(b"\r\n\r\n", 1)
        length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
        while len(body) < length:
            body += tls_sock.recv(65536)
        try:
            tls_sock.verify_client_post_handshake()
        except ssl.SSLError as e:
            tls_sock.sendall(b"HTTP/1.1 403 Forbidden\r\ncontent-length: 0\r\n\r\n")
            return str(e)
        tls_sock.setblocking(False)
        for _ in range(100):  # bounded: each round waits for the client's next bytes
            try:
                tls_sock.recv(1)  # sends the request, then reads the certificate
            except ssl.SSLWantReadError:
                pass
            if tls_sock.getpeercert():
                break
            select.select([tls_sock], [], [], 5)
        tls_sock.setblocking(True)
        if not tls_sock.getpeercert():
            tls_sock.sendall(b"HTTP/1.1 403 Forbidden\r\ncontent-length: 0\r\n\r\n")
            return "no certificate"
        tls_sock.sendall(sse_answer(text_events(["certified"])))
        return "certificate"


async def test_a_certificate_asked_for_after_the_handshake_is_given(
    pki: SimpleNamespace,
) -> None:
    # TLS 1.3 lets a server ask for the client's certificate after the handshake;
    # the proxy did not offer to answer (post_handshake_auth), so such a backend
    # never got the RHSM identity, and every request was a 403 that blamed the
    # system's registration
    ctx = pki.server_context()
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.post_handshake_auth = True  # and so asks for none in the handshake
    with socket.socket() as listener, anyio.fail_after(15):
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        url = f"https://127.0.0.1:{listener.getsockname()[1]}"
        cfg = make_config(url, pki.auth, backend={"proxy": ""})
        async with running_proxy(cfg) as proxy, anyio.create_task_group() as tg:
            seen: list[str] = []

            async def backend() -> None:
                seen.append(await anyio.to_thread.run_sync(_post_handshake_backend, listener, ctx))

            tg.start_soon(backend)
            r = await post(proxy.url, HELLO)
    assert seen == ["certificate"]
    assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"] == "certified"


@pytest.mark.parametrize("in_place", [False, True], ids=["rename", "rewrite"])
async def test_renewed_pair_is_used_without_restart(
    pki: SimpleNamespace, consumer: SimpleNamespace, cert_clock: CertClock, in_place: bool
) -> None:
    with anyio.fail_after(15):
        async with devbackend.run(tls=pki.server_context()) as backend:
            cfg = make_config(backend.url, consumer.auth, backend={"proxy": ""})
            async with running_proxy(cfg) as proxy:
                first = await post(proxy.url, HELLO)
                assert "CN=consumer-a" in (backend.requests[-1].client_subject or "")
                await wait_pooled(proxy)
                again = await post(proxy.url, HELLO)  # same identity: a pooled connection
                assert backend.requests[-1].connection == backend.requests[-2].connection
                await wait_pooled(proxy)
                # the host renews the pair on disk (key first, as a renewal tool might)
                _install(consumer.b_key, consumer.key, in_place=in_place)
                _install(consumer.b_cert, consumer.cert, in_place=in_place)
                # the files were checked less than RECHECK_INTERVAL ago: not yet looked at
                unchecked = await post(proxy.url, HELLO)
                assert "CN=consumer-a" in (backend.requests[-1].client_subject or "")
                await wait_pooled(proxy)
                cert_clock.pass_recheck_interval()
                renewed = await post(proxy.url, HELLO_STREAM)
                assert "CN=consumer-b" in (backend.requests[-1].client_subject or "")
                # the pooled connection made with the old identity was not reused
                assert backend.requests[-1].connection != backend.requests[-2].connection
                builds = proxy.server.upstream.tls.builds
    assert first.status_code == again.status_code == unchecked.status_code == 200
    assert renewed.status_code == 200
    assert builds == 2


async def test_a_replaced_ca_file_is_used_without_restart(
    pki: SimpleNamespace,
    consumer: SimpleNamespace,
    cert_clock: CertClock,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The backend's server certificate moves to a new CA and the admin puts the
    new bundle in ca_file: the proxy went on refusing the backend (502, no retry)
    until the client pair changed or a restart, while `check` said ready."""
    new_ca = trustme.CA()
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    new_ca.issue_cert("127.0.0.1").configure_cert(server_ctx)
    server_ctx.verify_mode = ssl.CERT_REQUIRED
    pki.ca.configure_trust(server_ctx)
    ca_file = tmp_path / "ca.pem"
    shutil.copyfile(pki.ca_file, ca_file)
    new_bundle = tmp_path / "new-ca.pem"
    new_ca.cert_pem.write_to_path(str(new_bundle))
    auth = AuthConfig(consumer.auth.cert_file, consumer.auth.key_file, str(ca_file))
    caplog.set_level(logging.INFO, logger="goose_proxy")
    with anyio.fail_after(15):
        async with devbackend.run(tls=server_ctx) as backend:
            async with running_proxy(make_config(backend.url, auth, backend={"proxy": ""})) as px:
                refused = await post(px.url, HELLO)
                _install(new_bundle, ca_file, in_place=False)
                cert_clock.pass_recheck_interval()
                trusted = await post(px.url, HELLO)
    assert refused.status_code == 502 and "not trusted" in refused.json()["error"]["message"]
    assert trusted.status_code == 200, trusted.text
    assert f"CA file changed on disk; reloaded {ca_file}" in caplog.text


async def test_half_renewed_pair_keeps_the_old_one_then_gives_clear_error(
    pki: SimpleNamespace,
    consumer: SimpleNamespace,
    cert_clock: CertClock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    with anyio.fail_after(15):
        async with devbackend.run(tls=pki.server_context()) as backend:
            cfg = make_config(backend.url, consumer.auth, backend={"proxy": ""})
            async with running_proxy(cfg) as proxy:
                assert (await post(proxy.url, HELLO)).status_code == 200
                _install(consumer.b_key, consumer.key, in_place=True)  # the cert not yet
                cert_clock.pass_recheck_interval()
                # a renewal caught halfway: the pair loaded before still serves
                during = await post(proxy.url, HELLO_STREAM)
                during_subject = backend.requests[-1].client_subject or ""
                cert_clock.pass_renewal_grace()
                mismatched = await post(proxy.url, HELLO)
                _install(consumer.b_cert, consumer.cert, in_place=True)
                # the files changed: loaded again at once, not a second later
                recovered = await post(proxy.url, HELLO)
                subject = backend.requests[-1].client_subject or ""
    assert during.status_code == 200 and "CN=consumer-a" in during_subject
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any(
        "does not match" in m and "still using the certificates loaded before" in m
        for m in warnings
    ), warnings
    assert mismatched.status_code == 502
    err = mismatched.json()["error"]
    assert err["code"] == "client_certificate_unavailable"
    assert "does not match" in err["message"] and str(consumer.key) in err["message"]
    assert recovered.status_code == 200 and "CN=consumer-b" in subject


def test_an_unloadable_pair_is_not_rebuilt_for_every_request(
    consumer: SimpleNamespace, cert_clock: CertClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each build loads the trust store again (tens of ms of CPU): a broken pair
    is tried again when its files change or a RECHECK_INTERVAL later."""
    consumer.cert.write_text("this is not a certificate\n")
    client = ClientTLS(consumer.auth)
    builds = []
    real_build = client._build

    def counting_build() -> ssl.SSLContext:
        builds.append(cert_clock.now)
        return real_build()

    monkeypatch.setattr(client, "_build", counting_build)
    errors = []
    for _ in range(3):
        with pytest.raises(CredentialsError) as info:
            client.context()
        errors.append(info.value.message)
    assert len(builds) == 1 and len(set(errors)) == 1
    cert_clock.pass_recheck_interval()
    with pytest.raises(CredentialsError):
        client.context()
    assert len(builds) == 2
    shutil.copyfile(consumer.a_cert, consumer.cert)  # fixed: no waiting
    assert isinstance(client.context(), ssl.SSLContext)
    assert len(builds) == 3 and client.builds == 1


def test_a_pair_made_unreadable_after_loading_is_covered_then_reported(
    consumer: SimpleNamespace, cert_clock: CertClock
) -> None:
    client = ClientTLS(consumer.auth)
    ctx = client.context()
    consumer.key.unlink()
    cert_clock.pass_recheck_interval()
    assert client.context() is ctx  # within RENEWAL_GRACE
    cert_clock.pass_renewal_grace()
    with pytest.raises(CredentialsError) as info:
        client.context()
    assert info.value.message.startswith(f"client key file {consumer.key} does not exist")
    shutil.copyfile(consumer.b_key, consumer.key)
    shutil.copyfile(consumer.b_cert, consumer.cert)
    assert client.context() is not ctx and client.builds == 2


@pytest.mark.parametrize("ca", [False, True], ids=["system-ca", "ca-file"])
def test_out_of_file_descriptors_is_a_503_to_retry_not_a_certificate_fault(
    consumer: SimpleNamespace, pki: SimpleNamespace, cert_clock: CertClock, ca: bool
) -> None:
    # too many connections for the process's file limit: the files are fine
    # (it was a 502 client_certificate_unavailable or ca_file_unavailable with
    # x-should-retry: false)
    auth = AuthConfig(str(consumer.cert), str(consumer.key), pki.ca_file if ca else "")
    client = ClientTLS(auth)
    with out_of_descriptors(), pytest.raises(ServiceUnavailable) as info:
        client.context()
    err = info.value
    assert err.status == 503 and "Too many open files" in err.message
    assert ("Retry-After", "1") in err.response_headers()
    assert ("x-should-retry", "false") not in err.response_headers()
    ctx = client.context()  # descriptors back: built
    shutil.copyfile(consumer.b_cert, consumer.cert)  # renewed: to be built again
    shutil.copyfile(consumer.b_key, consumer.key)
    cert_clock.pass_recheck_interval()
    with out_of_descriptors():
        assert client.context() is ctx  # the pair loaded before, meanwhile
    rebuilt = client.context()
    assert rebuilt is not ctx and client.builds == 2


def test_a_trust_store_left_empty_for_want_of_descriptors_is_loaded_loudly(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # OpenSSL loads the system CA bundle quietly: out of descriptors, a context
    # came out with no CA at all, then refused every backend as not trusted
    # until the certificate files changed
    if not ssl.get_default_verify_paths().cafile:
        pytest.skip("this system has no default CA bundle file")
    empty = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # what the quiet failure leaves
    with out_of_descriptors(), pytest.raises(OSError) as info:
        tls._system_cas_loaded(empty)
    assert info.value.errno == errno.EMFILE
    tls._system_cas_loaded(empty)  # descriptors back
    assert empty.cert_store_stats()["x509_ca"] > 0


def test_a_fifo_in_place_of_the_key_is_named_not_waited_on(consumer: SimpleNamespace) -> None:
    # opening a FIFO blocks until a writer comes: the event loop stopped, for
    # good (neither /health nor SIGTERM was answered)
    consumer.key.unlink()
    os.mkfifo(consumer.key)
    outcome: list[str] = []
    worker = threading.Thread(target=lambda: outcome.append(_tls_error(consumer.auth)))
    worker.start()
    worker.join(timeout=10)
    if worker.is_alive():  # let the blocked open go, then fail
        fd = os.open(consumer.key, os.O_WRONLY | os.O_NONBLOCK)
        os.close(fd)
        worker.join(timeout=10)
        pytest.fail("the client key, a FIFO, was opened and waited on")
    assert outcome[0].startswith(f"cannot read client key {consumer.key}: not a regular file")


@pytest.mark.parametrize("missing", ["cert", "key", "both"])
async def test_missing_pair_gives_register_hint(
    pki: SimpleNamespace, consumer: SimpleNamespace, missing: str
) -> None:
    if missing in ("cert", "both"):
        consumer.cert.unlink()
    if missing in ("key", "both"):
        consumer.key.unlink()
    with anyio.fail_after(10):
        async with devbackend.run(tls=pki.server_context()) as backend:
            cfg = make_config(backend.url, consumer.auth, backend={"proxy": ""})
            async with running_proxy(cfg) as proxy:
                r = await post(proxy.url, HELLO)
                rs = await post(proxy.url, HELLO_STREAM)
                async with httpx.AsyncClient() as c:
                    health = await c.get(proxy.url + "/health")  # still serving
                # registering the system later: no restart needed
                shutil.copyfile(consumer.a_cert, consumer.cert)
                shutil.copyfile(consumer.a_key, consumer.key)
                after = await post(proxy.url, HELLO)
    for resp in (r, rs):
        assert resp.status_code == 502
        assert resp.headers["x-should-retry"] == "false"  # a retry cannot register the host
        err = resp.json()["error"]
        assert err["code"] == "client_certificate_unavailable"
        assert "subscription-manager register" in err["message"]
    assert health.status_code == 200
    assert after.status_code == 200
    assert backend.stats.requests_total == 1


@pytest.mark.parametrize("broken", ["not-pem", "empty", "directory"])
async def test_unreadable_pair_gives_502(
    pki: SimpleNamespace, consumer: SimpleNamespace, broken: str
) -> None:
    if broken == "not-pem":
        consumer.cert.write_text("this is not a certificate\n")
    elif broken == "empty":
        consumer.key.write_bytes(b"")
    else:
        consumer.key.unlink()
        consumer.key.mkdir()
    with anyio.fail_after(10):
        async with running_proxy(make_config("https://127.0.0.1:9", consumer.auth)) as proxy:
            r = await post(proxy.url, HELLO)
    assert r.status_code == 502
    err = r.json()["error"]
    assert err["code"] == "client_certificate_unavailable"
    if broken == "directory":  # registering again would not help: the path says what
        assert f"cannot read client key {consumer.key}: " in err["message"]
    else:
        assert "subscription-manager register" in err["message"]


async def test_missing_ca_file_is_named_with_its_own_code(
    pki: SimpleNamespace, consumer: SimpleNamespace, tmp_path: Path
) -> None:
    auth = AuthConfig(consumer.auth.cert_file, consumer.auth.key_file, str(tmp_path / "no-ca.pem"))
    with anyio.fail_after(10):
        async with running_proxy(make_config("https://127.0.0.1:9", auth)) as proxy:
            r = await post(proxy.url, HELLO)
    assert r.status_code == 502
    assert r.headers["x-should-retry"] == "false"
    err = r.json()["error"]
    assert err["code"] == "ca_file_unavailable"  # the certificate is fine
    assert err["message"].startswith(f"cannot load the CA file {tmp_path / 'no-ca.pem'} (")


async def test_key_of_another_certificate_gives_clear_message(
    pki: SimpleNamespace, consumer: SimpleNamespace
) -> None:
    shutil.copyfile(consumer.b_key, consumer.key)
    with anyio.fail_after(10):
        async with running_proxy(make_config("https://127.0.0.1:9", consumer.auth)) as proxy:
            r = await post(proxy.url, HELLO)
    assert r.status_code == 502
    msg = r.json()["error"]["message"]
    assert msg == (
        f"the private key {consumer.key} does not match the client certificate {consumer.cert}"
    )
    assert "PRIVATE KEY" not in r.text


async def test_encrypted_key_gives_clear_message_without_a_prompt(
    pki: SimpleNamespace, consumer: SimpleNamespace
) -> None:
    # OpenSSL, given no password callback, asks on the terminal: a proxy started
    # from one froze whole (its event loop blocked in the prompt)
    encrypted_copy(consumer.a_key, consumer.key)
    with anyio.fail_after(10):
        async with running_proxy(make_config("https://127.0.0.1:9", consumer.auth)) as proxy:
            r = await post(proxy.url, HELLO)
    assert r.status_code == 502
    assert r.headers["x-should-retry"] == "false"
    assert r.json()["error"]["message"].startswith(
        f"the private key {consumer.key} is encrypted (it asks for a passphrase)"
    )


@pytest.mark.parametrize(
    ("body", "server"),
    [(HELLO, "trusted"), (HELLO_STREAM, "trusted"), (HELLO, "untrusted")],
    ids=["json", "stream", "untrusted-server"],
)
async def test_an_expired_certificate_is_named_when_the_backend_refuses_it(
    pki: SimpleNamespace, tmp_path: Path, body: dict[str, Any], server: str
) -> None:
    # the backend's refusal (an alert, or a close after the handshake) does not
    # say why; the certificate's own dates do, as goose-proxy check says them
    now = dt.datetime.now(dt.timezone.utc)
    cert, key = issue_client_pair(pki.ca, "expired", tmp_path,
                                  not_before=now - dt.timedelta(days=30),
                                  not_after=now - dt.timedelta(days=1))  # fmt: skip
    ca = pki.ca_file if server == "trusted" else str(pki.dir / "other-ca.pem")
    auth = AuthConfig(cert_file=str(cert), key_file=str(key), ca_file=ca)
    with anyio.fail_after(10):
        async with devbackend.run(tls=pki.server_context()) as backend:
            async with running_proxy(make_config(backend.url, auth)) as proxy:
                r = await post(proxy.url, body)
    assert r.status_code == 502
    assert r.headers["x-should-retry"] == "false"
    err = r.json()["error"]
    assert err["code"] == "upstream_tls_error"
    if server == "untrusted":  # our refusal of the backend: our dates are not the cause
        assert "server certificate is not trusted" in err["message"]
        assert "expired" not in err["message"]
        return
    assert f"{cert} expired on {now - dt.timedelta(days=1):%Y-%m-%d}" in err["message"]
    assert "subscription-manager status" in err["message"]


# --- which file, and why: the messages of an unusable pair ---------------------------


def _tls_error(auth: AuthConfig) -> str:
    with pytest.raises(CredentialsError) as info:
        ClientTLS(auth).context()
    return info.value.message


@pytest.mark.parametrize("missing", ["cert", "key"])
def test_a_missing_file_is_named_as_what_it_is(consumer: SimpleNamespace, missing: str) -> None:
    path = consumer.cert if missing == "cert" else consumer.key
    path.unlink()
    what = "client certificate" if missing == "cert" else "client key"
    msg = _tls_error(consumer.auth)
    assert msg.startswith(f"{what} file {path} does not exist: register this system")


def test_files_elsewhere_than_rhsms_are_no_reason_to_register(
    consumer: SimpleNamespace, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Registering writes RHSM's files only: for a path configured elsewhere
    the message says which key to check, and a relative path is shown with
    the directory it is relative to (the daemon's, seldom the file's)."""
    monkeypatch.setattr(tls, "RHSM_DIR", "/etc/pki/consumer")
    missing = AuthConfig(str(tmp_path / "nope.pem"), consumer.auth.key_file)
    assert _tls_error(missing) == (
        f"client certificate file {tmp_path / 'nope.pem'} does not exist:"
        " check [backend.auth] cert_file"
    )
    monkeypatch.chdir(tmp_path)
    relative = AuthConfig(consumer.auth.cert_file, "certs/key.pem")
    assert _tls_error(relative) == (
        "client key file certs/key.pem (relative to the working directory"
        f" {os.getcwd()}) does not exist: check [backend.auth] key_file"
    )
    # a shell's ~ is no shell's here; an empty name names no file
    tilde = AuthConfig(consumer.auth.cert_file, "~/key.pem")
    assert _tls_error(tilde) == (
        f"client key file ~/key.pem (relative to the working directory {os.getcwd()};"
        " ~ is not expanded: give the full path) does not exist: check [backend.auth] key_file"
    )
    empty = AuthConfig("", consumer.auth.key_file)
    assert _tls_error(empty) == (
        'client certificate file "" (no file named) does not exist: check [backend.auth] cert_file'
    )
    consumer.cert.write_text("this is not a certificate\n")
    msg = _tls_error(consumer.auth)
    assert msg.endswith("(not valid PEM): check [backend.auth] cert_file and key_file"), msg
    assert "subscription-manager" not in msg


def test_a_directory_in_place_of_the_key_is_named(consumer: SimpleNamespace) -> None:
    consumer.key.unlink()
    consumer.key.mkdir()
    msg = _tls_error(consumer.auth)
    assert msg.startswith(f"cannot read client key {consumer.key}: ")
    assert "subscription-manager" not in msg  # registering would not help


def test_an_unreadable_key_says_who_may_read_it(
    consumer: SimpleNamespace, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The service user cannot read the key (these tests may run as root, who always
    can: OpenSSL's refusal and the proxy's own look are simulated for the key)."""
    real_open = open

    def guarded_open(path: Any, *args: Any, **kwargs: Any) -> Any:
        if str(path) == str(consumer.key):
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, *args, **kwargs)

    def refusing_load(
        self: ssl.SSLContext, certfile: str, keyfile: Any = None, password: Any = None
    ) -> None:
        raise PermissionError(13, "Permission denied")  # OpenSSL names no file

    monkeypatch.setattr(tls, "open", guarded_open, raising=False)
    monkeypatch.setattr(ssl.SSLContext, "load_cert_chain", refusing_load)
    msg = _tls_error(consumer.auth)
    assert msg.startswith(f"cannot read client key {consumer.key} (permission denied): ")
    assert "None" not in msg and "run as the files' owner" in msg


def test_a_key_in_a_directory_the_service_may_not_search(
    consumer: SimpleNamespace, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``stat`` refused (a parent directory without search permission; simulated, as
    root may search anything)."""
    real_stat = os.stat

    def guarded_stat(path: Any, *args: Any, **kwargs: Any) -> Any:
        if str(path) == str(consumer.key):
            raise PermissionError(13, "Permission denied", str(path))
        return real_stat(path, *args, **kwargs)

    monkeypatch.setattr(tls.os, "stat", guarded_stat)
    msg = _tls_error(consumer.auth)
    assert msg.startswith(f"cannot read client key {consumer.key} (permission denied): ")
    assert "run as the files' owner" in msg
