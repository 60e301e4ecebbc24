"""``goose-proxy check``: is this host ready to serve? Config, certificate, backend.

Prints one line per check and a verdict; the exit status is 0 only when every
check passed. The verdict names the reason of the first failure, one of
:data:`REASONS`. Secrets are never printed: URL credentials (``backend.proxy``,
``backend.endpoint``, ``https_proxy``) and the values of headers that carry
credentials are redacted.
"""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import sys
from typing import TYPE_CHECKING, Any, Optional, TextIO

from goose_proxy.config import Config, is_secret_header, redact_location, redact_url
from goose_proxy.errors import (
    ProxyError,
    UpstreamClosed,
    UpstreamConnectError,
    UpstreamProxyError,
    UpstreamTimeout,
    UpstreamTLSError,
)
from goose_proxy.translate import TranslateOptions
from goose_proxy.upstream.proxy import TunnelRefused
from goose_proxy.upstream.tls import certificate_info, fmt_time, in_rhsm_dir, validity_problem

if TYPE_CHECKING:
    from goose_proxy.upstream.client import UpstreamClient

#: the reasons a verdict can give, in the words of ``goose-proxy(7)``
REASONS = (
    "configuration",
    "not registered",
    "certificate unusable",
    "certificate and key do not match",
    "certificate expired",
    "certificate not yet valid",
    "CA file unusable",
    "DNS",
    "backend unreachable",
    "TLS error",
    "proxy refused",
    "proxy error",
    "timeout",
    "HTTP status",
    "backend error",
)


def effective_values(config: Config) -> dict[str, Any]:
    """The configuration as a flat ``{"section.key": value}`` dict, secrets redacted."""
    out: dict[str, Any] = {}

    def walk(prefix: str, obj: Any) -> None:
        for f in dataclasses.fields(obj):
            if f.name == "source":
                continue
            value = getattr(obj, f.name)
            key = f"{prefix}{f.name}"
            if dataclasses.is_dataclass(value):
                walk(key + ".", value)
            elif key in ("backend.proxy", "backend.endpoint") and value:
                out[key] = redact_url(value)
            elif key == "backend.headers":
                out[key] = {k: ("***" if is_secret_header(k) else v) for k, v in value.items()}
            else:
                out[key] = list(value) if isinstance(value, tuple) else value

    walk("", config)
    return out


class ReportLost(Exception):
    """Standard output cannot take the report: closed (``>&-``), or a write
    failed (a full disk). A reader that left (EPIPE) stays a BrokenPipeError."""


class _Report:
    def __init__(self, out: Optional[TextIO]) -> None:
        self.out = out
        self.reason: Optional[str] = None  # of the first failure

    def write(self, text: str, end: bool = False) -> None:
        """Write ``text`` (and with ``end``, flush: the last line) or raise ReportLost."""
        if self.out is None:
            raise ReportLost("standard output is closed")
        try:
            self.out.write(text)
            if end:
                self.out.flush()
        except BrokenPipeError:
            raise
        except (OSError, ValueError) as e:  # ValueError: a closed file object
            raise ReportLost(getattr(e, "strerror", None) or str(e)) from None

    @property
    def failed(self) -> bool:
        return self.reason is not None

    def ok(self, what: str, detail: str = "") -> None:
        self.write(f"[ ok ] {what}{': ' + detail if detail else ''}\n")

    def fail(self, what: str, detail: str, reason: str) -> None:
        assert reason in REASONS, reason
        if self.reason is None:
            self.reason = reason
        self.write(f"[FAIL] {what}: {detail}\n")

    def skip(self, what: str, detail: str) -> None:
        self.write(f"[skip] {what}: {detail}\n")

    def info(self, text: str) -> None:
        self.write(f"       {text}\n")


def _flavour_defaults(config: Config) -> dict[str, str]:
    """What an unset key that the flavour decides comes to, for the report."""
    b = config.backend
    notes = {}
    if b.max_request_chars is None:
        limit = b.request_char_limit
        notes["backend.max_request_chars"] = (
            f"  (unset: {limit} under the {b.flavor} flavour)"
            if limit
            else f"  (unset: no cap under the {b.flavor} flavour)"
        )
    if b.model is None:
        notes["backend.model"] = (
            '  (unset: "" under the lightspeed flavour, the backend chooses)'
            if b.flavor == "lightspeed"
            else "  (unset: the client's model under the openai flavour)"
        )
    if config.translate.system_messages is None:
        mode = TranslateOptions(flavor=b.flavor).system_messages
        notes["translate.system_messages"] = f'  (unset: "{mode}" under the {b.flavor} flavour)'
    return notes


def _exposed_listen_note(host: str) -> str:
    """What the daemon would warn about where it listens, as the check can tell it
    without binding: a host that is not a loopback address or name (those a
    ``Host`` header may give)."""
    from goose_proxy.http.server import EXPOSED, LOOPBACK_NAMES, is_loopback_address

    if is_loopback_address(host) or host.lower().rstrip(".") in LOOPBACK_NAMES:
        return ""
    return (
        f"server.host {host} is not a loopback address: {EXPOSED} (under socket "
        "activation the socket unit's ListenStream= decides where the proxy listens)"
    )


def report_config_error(err: Exception, status: int, out: Optional[TextIO] = None) -> int:
    """The end of a check that could not load its configuration (on standard
    output unless ``out`` is given); returns ``status``, for the caller to exit with."""
    r = _Report(sys.stdout if out is None else out)
    r.write(f"[FAIL] configuration: {err}\n")
    r.write("verdict: NOT READY (configuration)\n", end=True)
    return status


def run_check(config: Config, warnings: list[str], out: Optional[TextIO] = None) -> int:
    """Run every check, print the report (on standard output unless ``out`` is
    given), return the exit status (0 = all well). Raises ReportLost when the
    report cannot be written."""
    r = _Report(sys.stdout if out is None else out)
    r.ok("configuration", config.source or "no file found; built-in defaults")
    for w in warnings:
        r.info(f"note: {w}")
    exposed = _exposed_listen_note(config.server.host)
    if exposed:
        r.info(f"note: {exposed}")
    notes = _flavour_defaults(config)
    for key, value in effective_values(config).items():
        r.info(f"{key} = {json.dumps(value)}{notes.get(key, '')}")

    from goose_proxy.upstream.client import UpstreamClient

    client = UpstreamClient(config.backend)
    _check_certificate(config, client, r)
    if client.route is not None:
        route = client.route
        r.info(f"backend connections go through proxy {route.display}, from {route.origin}")

    if r.failed:
        r.skip("backend", "not contacted until the problems above are fixed")
    else:
        _check_backend(config, client, r)
    if r.failed:
        r.write(f"verdict: NOT READY ({r.reason})\n", end=True)
        return 1
    r.write("verdict: ready\n", end=True)
    return 0


def _check_certificate(config: Config, client: UpstreamClient, r: _Report) -> None:
    if client.tls is None:
        r.ok("client certificate", "not used (plain http:// endpoint)")
        return
    auth = config.backend.auth
    try:
        client.tls.context()
    except ProxyError as e:
        if e.code == "ca_file_unavailable":
            r.fail("CA file", e.message, "CA file unusable")
            return
        missing = [p for p in (auth.cert_file, auth.key_file) if not os.path.exists(p)]
        if missing and all(in_rhsm_dir(p) for p in missing):
            reason = "not registered"
        elif "does not match" in e.message:
            reason = "certificate and key do not match"
        else:
            reason = "certificate unusable"
        r.fail("client certificate", e.message, reason)
        return
    info = certificate_info(auth.cert_file)
    if info is None:
        r.ok("client certificate", f"{auth.cert_file} and its key load and match")
        return
    problem = validity_problem(auth.cert_file, info)
    if problem is not None:
        r.fail("client certificate", *problem)
    else:
        until = f"; valid until {fmt_time(info.not_after)}" if info.not_after else ""
        r.ok("client certificate", f"{auth.cert_file} matches its key{until}")
    if info.subject:
        r.info(f"subject: {info.subject}")


def _reason_for(e: ProxyError) -> str:
    if isinstance(e, TunnelRefused):
        return "proxy refused"
    if isinstance(e, UpstreamProxyError):
        # a proxy that never answered CONNECT: the connect timeout ran out
        return "timeout" if e.message.startswith("timed out") else "proxy error"
    if isinstance(e, UpstreamTLSError):
        return "TLS error"
    if isinstance(e, UpstreamTimeout):
        return "timeout"
    if isinstance(e, UpstreamConnectError):
        cause = e.__cause__
        if isinstance(cause, socket.gaierror) or "cannot resolve" in e.message:
            return "DNS"
        if "timed out" in e.message:
            return "timeout"
        return "backend unreachable"
    return "backend error"


def _check_backend(config: Config, client: UpstreamClient, r: _Report) -> None:
    import anyio

    headers = [(b"accept", b"application/json")]  # [backend.headers]: added by the client

    answered = False

    async def probe() -> tuple[int, str]:
        nonlocal answered
        try:
            async with client.request(b"GET", "/models", b"", headers) as resp:
                answered = True
                await resp.read(1024 * 1024)
                return int(resp.status), resp.header(b"location") or ""
        finally:
            await client.aclose()

    endpoint = redact_url(config.backend.endpoint)
    try:
        status, location = anyio.run(probe)
    except UpstreamClosed as e:
        # A close right after the handshake (a client certificate refused under
        # TLS 1.3, its alert lost) is an UpstreamTLSError already, which says so;
        # what is left is a close during the handshake, or long after the request
        # (a backend that took it and went away), as the daemon words it.
        handshake = client.tls is not None and not answered and "TLS handshake" in e.message
        r.fail("backend", e.message, "TLS error" if handshake else "backend error")
        return
    except ProxyError as e:
        r.fail("backend", e.message, _reason_for(e))
        return
    if status in (401, 403):
        r.fail(
            "backend",
            f"{endpoint} refused this system's identity (HTTP {status}): is the system "
            "registered ('subscription-manager register') and entitled?",
            "HTTP status",
        )
    elif status >= 500:
        r.fail("backend", f"{endpoint} answered GET /models with HTTP {status}", "HTTP status")
    elif 300 <= status < 400:
        r.fail(
            "backend",
            f"{endpoint} answered GET /models with a redirect (HTTP {status}"
            + (f" to {where}" if (where := redact_location(location)) else "")
            + "): is backend.endpoint the API's URL?",
            "HTTP status",
        )
    elif status >= 400:
        # Authenticated but no model list here (404, 405, ...): TLS and auth are fine.
        r.ok(
            "backend",
            f"TLS and authentication to {endpoint} succeeded (GET /models: HTTP {status})",
        )
        if status == 404:
            r.info(
                "(a backend without a model list answers so; so does a wrong path: "
                f"chat requests go to {endpoint}/responses; is backend.endpoint the API's "
                "base URL?)"
            )
    else:
        r.ok("backend", f"{endpoint} answered GET /models with HTTP {status}")
