"""Development certificates: a CA, a server certificate and a client certificate.

The client pair is laid out like an RHSM consumer certificate (``cert.pem`` +
``key.pem``), so the proxy can point its client-certificate settings at the
directory exactly as it would at ``/etc/pki/consumer/``. Generated with
``trustme`` (a dev dependency) on first use only; later calls reuse the files.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Union

CA_FILE = "ca.pem"
SERVER_CERT_FILE = "server-cert.pem"
SERVER_KEY_FILE = "server-key.pem"
CLIENT_CERT_FILE = "cert.pem"
CLIENT_KEY_FILE = "key.pem"

#: Names the server certificate is valid for.
SERVER_IDENTITIES = ("localhost", "127.0.0.1", "::1")
#: Subject of the client certificate (an RHSM consumer cert has CN=<consumer uuid>).
CLIENT_COMMON_NAME = "0f6c4f8e-6d3b-4d7e-9a51-6b1e0d9e2f00"
CLIENT_ORGANIZATION = "goose-proxy-dev"
#: The client certificate's subject as :func:`devbackend.server.format_subject` renders it.
CLIENT_SUBJECT = f"O={CLIENT_ORGANIZATION},OU=goose-proxy dev consumer,CN={CLIENT_COMMON_NAME}"

StrPath = Union[str, "os.PathLike[str]"]


@dataclass(frozen=True)
class DevCerts:
    """Paths of the development PEM files."""

    directory: Path
    ca_cert: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path

    @classmethod
    def in_directory(cls, directory: StrPath) -> DevCerts:
        d = Path(directory)
        return cls(
            directory=d,
            ca_cert=d / CA_FILE,
            server_cert=d / SERVER_CERT_FILE,
            server_key=d / SERVER_KEY_FILE,
            client_cert=d / CLIENT_CERT_FILE,
            client_key=d / CLIENT_KEY_FILE,
        )

    def files(self) -> tuple[Path, ...]:
        return (self.ca_cert, self.server_cert, self.server_key, self.client_cert, self.client_key)

    def complete(self) -> bool:
        return all(path.is_file() for path in self.files())


@contextlib.contextmanager
def _locked(directory: Path) -> Iterator[None]:
    # Two processes starting at once (make dev, a test run) must not mix the
    # files of two different CAs.
    fd = os.open(directory / ".lock", os.O_CREAT | os.O_RDWR, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _write(path: Path, data: bytes, mode: int) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, mode)
    try:
        os.write(fd, data)
        os.fchmod(fd, mode)  # O_CREAT's mode is masked by the umask
    finally:
        os.close(fd)
    os.replace(tmp, path)


def ensure_dev_certs(directory: StrPath) -> DevCerts:
    """Return the certificates in ``directory``, generating them if any is missing.

    Creates the directory (0700). Keys are written 0600, certificates 0644.
    Raises ``RuntimeError`` if generation is needed and ``trustme`` is not
    installed, ``OSError`` if the directory is not writable.
    """
    certs = DevCerts.in_directory(directory)
    if certs.complete():
        return certs
    certs.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    with _locked(certs.directory):
        if certs.complete():  # another process made them while we waited
            return certs
        try:
            import trustme
        except ImportError as exc:  # pragma: no cover - dev dependency
            raise RuntimeError(
                "generating development certificates needs 'trustme' (a dev dependency)"
            ) from exc
        ca = trustme.CA(
            organization_name="goose-proxy-dev", organization_unit_name="goose-proxy dev CA"
        )
        server = ca.issue_cert(
            *SERVER_IDENTITIES,
            common_name="localhost",
            organization_name="goose-proxy-dev",
            organization_unit_name="goose-proxy dev backend",
        )
        client = ca.issue_cert(
            "goose-proxy-dev-consumer.invalid",
            common_name=CLIENT_COMMON_NAME,
            organization_name=CLIENT_ORGANIZATION,
            organization_unit_name="goose-proxy dev consumer",
        )
        # Remove the CA first and write it last: complete() — checked without
        # the lock — is true only once a whole matching set exists.
        with contextlib.suppress(FileNotFoundError):
            certs.ca_cert.unlink()
        _write(certs.server_key, server.private_key_pem.bytes(), 0o600)
        _write(certs.client_key, client.private_key_pem.bytes(), 0o600)
        _write(certs.server_cert, b"".join(b.bytes() for b in server.cert_chain_pems), 0o644)
        _write(certs.client_cert, b"".join(b.bytes() for b in client.cert_chain_pems), 0o644)
        _write(certs.ca_cert, ca.cert_pem.bytes(), 0o644)
    return certs


def server_ssl_context(certs: DevCerts, require_client_cert: bool = True) -> ssl.SSLContext:
    """A server context with the dev server certificate.

    With ``require_client_cert`` the handshake fails unless the client shows a
    certificate issued by the dev CA (``ssl.CERT_REQUIRED``).
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(certs.server_cert, certs.server_key)
    ctx.set_alpn_protocols(["http/1.1"])
    if require_client_cert:
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.load_verify_locations(cafile=str(certs.ca_cert))
    return ctx


def client_ssl_context(certs: DevCerts, with_client_cert: bool = True) -> ssl.SSLContext:
    """A client context trusting the dev CA, presenting the dev client cert."""
    ctx = ssl.create_default_context(cafile=str(certs.ca_cert))
    if with_client_cert:
        ctx.load_cert_chain(certs.client_cert, certs.client_key)
    return ctx
