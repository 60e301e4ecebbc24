"""``goose-proxy check``: is this host ready to serve? Config, certificate, backend.

Prints one line per check and a verdict; the exit status is 0 only when every
check passed. Secrets are never printed: proxy credentials and header values
that carry credentials are redacted.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import ssl
import sys
from typing import Any, Optional, TextIO

from goose_proxy.config import Config
from goose_proxy.errors import ProxyError
from goose_proxy.upstream.proxy import redact_url

_SECRET_HEADERS = ("authorization", "cookie", "x-rh-identity", "api-key", "x-api-key", "token")


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
            elif key == "backend.proxy" and value:
                out[key] = redact_url(value)
            elif key == "backend.headers":
                out[key] = {
                    k: ("***" if any(s in k.lower() for s in _SECRET_HEADERS) else v)
                    for k, v in value.items()
                }
            else:
                out[key] = list(value) if isinstance(value, tuple) else value

    walk("", config)
    return out


def certificate_expiry(cert_file: str) -> Optional[dt.datetime]:
    """The certificate's notAfter date, or None if it cannot be decoded."""
    try:
        info = ssl._ssl._test_decode_cert(cert_file)  # type: ignore[attr-defined]
    except (AttributeError, OSError, ssl.SSLError, ValueError):
        return None
    not_after = info.get("notAfter")
    if not not_after:
        return None
    ts = ssl.cert_time_to_seconds(not_after)
    return dt.datetime.fromtimestamp(ts, tz=dt.timezone.utc)


class _Report:
    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.failed = False

    def ok(self, what: str, detail: str = "") -> None:
        self.out.write(f"[ ok ] {what}{': ' + detail if detail else ''}\n")

    def fail(self, what: str, detail: str) -> None:
        self.failed = True
        self.out.write(f"[FAIL] {what}: {detail}\n")

    def info(self, text: str) -> None:
        self.out.write(f"       {text}\n")


def run_check(config: Config, warnings: list[str], out: TextIO = sys.stdout) -> int:
    """Run every check, print the report, return the exit status (0 = all well)."""
    r = _Report(out)
    r.ok("configuration", config.source or "no file found; built-in defaults")
    for w in warnings:
        r.info(f"note: {w}")
    for key, value in effective_values(config).items():
        r.info(f"{key} = {json.dumps(value)}")

    from goose_proxy.upstream.client import UpstreamClient

    client = UpstreamClient(config.backend)
    if client.tls is not None:
        auth = config.backend.auth
        try:
            client.tls.context()
        except ProxyError as e:
            r.fail("client certificate", e.message)
        else:
            expiry = certificate_expiry(auth.cert_file)
            now = dt.datetime.now(dt.timezone.utc)
            if expiry is None:
                r.ok("client certificate", f"{auth.cert_file} and its key load and match")
            elif expiry < now:
                r.fail(
                    "client certificate",
                    f"{auth.cert_file} expired on {expiry:%Y-%m-%d %H:%M} UTC; RHSM renews it "
                    "while the system is registered: check 'subscription-manager status'",
                )
            else:
                r.ok(
                    "client certificate",
                    f"{auth.cert_file} matches its key; valid until {expiry:%Y-%m-%d %H:%M} UTC",
                )
    else:
        r.ok("client certificate", "not used (plain http:// endpoint)")
    if client.route is not None:
        r.info(f"backend connections go through proxy {client.route.display}")

    if not r.failed:
        _check_backend(client, r)
    out.write("verdict: " + ("NOT READY\n" if r.failed else "ready\n"))
    return 1 if r.failed else 0


def _check_backend(client: Any, r: _Report) -> None:
    import anyio

    async def probe() -> int:
        try:
            async with client.request(
                b"GET", "/models", b"", [(b"accept", b"application/json")]
            ) as resp:
                await resp.read(1024 * 1024)
                return int(resp.status)
        finally:
            await client.aclose()

    endpoint = client.cfg.endpoint
    try:
        status = anyio.run(probe)
    except ProxyError as e:
        r.fail("backend", e.message)
        return
    if status in (401, 403):
        r.fail(
            "backend",
            f"{endpoint} refused this system's identity (HTTP {status}): is the system "
            "registered ('subscription-manager register') and entitled?",
        )
    elif status >= 500:
        r.fail("backend", f"{endpoint} answered HTTP {status}")
    elif status >= 400:
        r.ok("backend", f"TLS and authentication to {endpoint} succeeded (GET /models: {status})")
    else:
        r.ok("backend", f"{endpoint} answered GET /models with HTTP {status}")
