"""Development certificates: generated once, reused, usable."""

from __future__ import annotations

import ssl
import stat
from pathlib import Path

from devbackend import certs
from devbackend.certs import DevCerts, client_ssl_context, ensure_dev_certs, server_ssl_context


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_generates_the_files(tmp_path: Path) -> None:
    made = ensure_dev_certs(tmp_path / "certs")
    assert made == DevCerts.in_directory(tmp_path / "certs")
    assert made.client_cert.name == "cert.pem" and made.client_key.name == "key.pem"
    assert made.ca_cert.name == "ca.pem"
    for path in made.files():
        assert path.read_bytes().startswith(b"-----BEGIN ")
    assert mode(made.server_key) == 0o600 and mode(made.client_key) == 0o600
    assert mode(made.directory) == 0o700
    assert b"PRIVATE KEY" in made.client_key.read_bytes()


def test_reuses_existing_files(tmp_path: Path) -> None:
    first = ensure_dev_certs(tmp_path)
    before = {p: p.read_bytes() for p in first.files()}
    second = ensure_dev_certs(str(tmp_path))
    assert {p: p.read_bytes() for p in second.files()} == before


def test_regenerates_an_incomplete_set(tmp_path: Path) -> None:
    first = ensure_dev_certs(tmp_path)
    old_ca = first.ca_cert.read_bytes()
    first.client_key.unlink()
    again = ensure_dev_certs(tmp_path)
    assert again.complete()
    assert again.ca_cert.read_bytes() != old_ca  # a whole new, matching set
    # The new client cert chains to the new CA: a context loads them together.
    client_ssl_context(again)


def test_contexts(tmp_path: Path) -> None:
    made = ensure_dev_certs(tmp_path)
    server = server_ssl_context(made)
    assert server.verify_mode == ssl.CERT_REQUIRED
    assert server_ssl_context(made, require_client_cert=False).verify_mode == ssl.CERT_NONE
    client = client_ssl_context(made)
    assert client.verify_mode == ssl.CERT_REQUIRED and client.check_hostname
    assert certs.CLIENT_COMMON_NAME in certs.CLIENT_SUBJECT
