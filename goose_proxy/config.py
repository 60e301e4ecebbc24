"""Configuration: TOML → frozen dataclasses, XDG look-up, validation naming the key.

The file is ``goose-proxy/config.toml`` in the first directory of
``$XDG_CONFIG_DIRS`` (colon-separated, default ``/etc/xdg``) that holds one, or the
path given with ``--config``. Every key is optional; a missing file means the
defaults. An unknown key or a value of the wrong type raises :class:`ConfigError`
whose message names the key (the CLI exits with status 2).

The schema below (``_SCHEMA``) is the single source of truth for keys, types and
defaults; ``goose-proxy-config(5)`` documents exactly these keys (a test checks).
"""

from __future__ import annotations

import ipaddress
import math
import os
import re
import stat
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Optional, Union
from urllib.parse import SplitResult, urlsplit

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.9/3.10
    import tomli as tomllib

DEFAULT_ENDPOINT = "https://cert.console.redhat.com/api/lightspeed/v1"
DEFAULT_CONFIG_DIRS = "/etc/xdg"
CONFIG_RELPATH = Path("goose-proxy") / "config.toml"


class ConfigError(Exception):
    """The configuration file is unreadable or invalid; the message names the key."""


@dataclass(frozen=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8080
    max_body_size: int = 16 * 1024 * 1024
    max_header_size: int = 16 * 1024
    max_header_count: int = 100
    header_timeout: float = 10.0
    keepalive_timeout: float = 75.0
    send_timeout: float = 300.0
    max_connections: int = 1024
    max_requests_per_connection: int = 10_000
    allowed_hosts: tuple[str, ...] = ()
    allowed_origins: tuple[str, ...] = ()
    drain_timeout: float = 30.0


@dataclass(frozen=True)
class AuthConfig:
    cert_file: str = "/etc/pki/consumer/cert.pem"
    key_file: str = "/etc/pki/consumer/key.pem"
    ca_file: str = ""


#: Lightspeed Stack 0.7.1 answers 422 to a request body over this many characters
LIGHTSPEED_MAX_REQUEST_CHARS = 65536


@dataclass(frozen=True)
class BackendConfig:
    endpoint: str = DEFAULT_ENDPOINT
    timeout: float = 30.0
    connect_timeout: float = 10.0
    stream_idle_timeout: float = 300.0
    flavor: str = "lightspeed"
    model: Optional[str] = None
    proxy: Optional[str] = None
    max_event_size: int = 4 * 1024 * 1024
    pool_size: int = 16
    pool_idle_timeout: float = 30.0
    #: the backend's cap on a request body, in characters; None: the flavour's
    #: (65,536 for Lightspeed Stack, none for openai); 0: no cap
    max_request_chars: Optional[int] = None
    headers: Mapping[str, str] = field(default_factory=dict)
    extra_body: Mapping[str, Any] = field(default_factory=dict)
    auth: AuthConfig = field(default_factory=AuthConfig)

    @property
    def request_char_limit(self) -> int:
        """The cap that applies (0: none)."""
        if self.max_request_chars is not None:
            return self.max_request_chars
        return LIGHTSPEED_MAX_REQUEST_CHARS if self.flavor == "lightspeed" else 0


@dataclass(frozen=True)
class TranslateConfig:
    #: None: the flavour's ("drop" for lightspeed, "input" for openai)
    system_messages: Optional[str] = None


@dataclass(frozen=True)
class ModelsConfig:
    id: str = "rhel-lightspeed"
    owned_by: str = "red-hat"
    context_length: int = 128_000


@dataclass(frozen=True)
class LoggingConfig:
    level: str = "INFO"


@dataclass(frozen=True)
class Config:
    server: ServerConfig = field(default_factory=ServerConfig)
    backend: BackendConfig = field(default_factory=BackendConfig)
    translate: TranslateConfig = field(default_factory=TranslateConfig)
    models: ModelsConfig = field(default_factory=ModelsConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    #: where the configuration was read from (None: built-in defaults)
    source: Optional[str] = None


# --- validation ------------------------------------------------------------------

Checker = Callable[[str, Any], Any]


def _str(key: str, v: Any) -> str:
    if not isinstance(v, str):
        raise ConfigError(f"{key}: expected a string, got {type(v).__name__}")
    return v


def _opt_str(key: str, v: Any) -> Optional[str]:
    return _str(key, v)


class _Int:
    """An integer from ``lo`` to ``hi`` (the bounds are read by the docs' tests too)."""

    def __init__(self, lo: int, hi: int) -> None:
        self.lo, self.hi = lo, hi

    def __call__(self, key: str, v: Any) -> int:
        if isinstance(v, bool) or not isinstance(v, int):
            raise ConfigError(f"{key}: expected an integer, got {type(v).__name__}")
        if not self.lo <= v <= self.hi:
            raise ConfigError(f"{key}: {v} is out of range ({self.lo}..{self.hi})")
        return v


class _Seconds:
    """A duration: more than ``lo``, at most ``hi`` seconds."""

    def __init__(self, lo: float, hi: float) -> None:
        self.lo, self.hi = lo, hi

    def __call__(self, key: str, v: Any) -> float:
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise ConfigError(f"{key}: expected a number of seconds, got {type(v).__name__}")
        if not self.lo < v <= self.hi:  # (float(v) overflows past 1e308)
            raise ConfigError(f"{key}: {v} is out of range (> {self.lo} and <= {self.hi})")
        return float(v)


def _choice(*choices: str) -> Checker:
    def check(key: str, v: Any) -> str:
        s = _str(key, v)
        if s not in choices:
            raise ConfigError(f"{key}: {s!r} is not one of {', '.join(map(repr, choices))}")
        return s

    return check


def _str_list(key: str, v: Any) -> tuple[str, ...]:
    if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
        raise ConfigError(f"{key}: expected a list of strings")
    return tuple(v)


#: a host name (dot-separated labels) or a bracketed IPv6 address, as a Host
#: header names it
_HOST_NAME = re.compile(
    r"[a-z0-9_](?:[a-z0-9_-]*[a-z0-9_])?(?:\.[a-z0-9_](?:[a-z0-9_-]*[a-z0-9_])?)*\.?"
    r"|\[[0-9a-f:.]+(?:%[a-z0-9_.~-]+)?\]"
)


def _host_names(key: str, v: Any) -> tuple[str, ...]:
    """Host names as a ``Host`` header is matched: lower case, without a port,
    an IPv6 address in brackets."""
    out = []
    for i, given in enumerate(_str_list(key, v)):
        name, port = given.strip().lower(), None
        if name.startswith("["):
            end = name.find("]")
            name, rest = (name[: end + 1], name[end + 1 :]) if end > 1 else ("", "")
            port = rest[1:] if rest.startswith(":") else ("bad" if rest else None)
        elif name.count(":") > 1:
            name = f"[{name}]"  # an IPv6 address without its brackets
        elif ":" in name:
            name, _, port = name.partition(":")
        digits = port is None or (port.isascii() and port.isdecimal())
        if not name or not _HOST_NAME.fullmatch(name) or not digits:
            raise ConfigError(f"{key}[{i}]: {given!r} is no host name (or host:port)")
        out.append(name)
    return tuple(out)


def _endpoint(key: str, v: Any) -> str:
    given = _str(key, v)
    # every message shows the URL redacted: a password may be in it however
    # the URL is wrong (a space, a '#', no host)
    scheme, sep, rest = given.partition("://")
    if not sep or scheme.lower() not in ("https", "http"):
        raise ConfigError(f"{key}: {redact_url(given)!r} must start with https:// or http://")
    s = f"{scheme.lower()}://{rest}".rstrip("/")  # a scheme is case-insensitive
    shown = redact_url(s)
    if not all(33 <= ord(c) <= 126 for c in s):
        raise ConfigError(f"{key}: {shown!r} must be an ASCII URL without spaces")
    try:
        u = urlsplit(s)
        u.port  # noqa: B018  (raises ValueError for a bad port)
    except ValueError as e:
        # the reason may quote the netloc, password and all: not when it has one
        why = "" if "@" in s else f" ({e})"
        raise ConfigError(f"{key}: {shown!r} is not a valid URL{why}") from None
    if not u.hostname:
        raise ConfigError(f"{key}: {redact_url(given)!r} has no host name")
    if "@" in u.netloc:
        # never sent: the backend would answer 401 with no word of why
        raise ConfigError(
            f"{key}: {shown!r} has a user name or password, which goose-proxy does "
            "not send; give credentials as a header in [backend.headers] "
            '(Authorization = "Basic …" or "Bearer …")'
        )
    if u.port == 0:
        raise ConfigError(f"{key}: {shown!r} names port 0, which nothing can be reached on")
    if not _dns_encodable(u.hostname):
        raise ConfigError(
            f"{key}: {u.hostname!r} is not a valid host name "
            "(an empty label, or one longer than 63 characters)"
        )
    if u.query or u.fragment or s.endswith(("?", "#")):
        also = ", nor a user name or password" if "@" in s else ""
        raise ConfigError(f"{key}: {shown!r} must not have a query or a fragment (? or #){also}")
    return s


def _listen_host(key: str, v: Any) -> str:
    s = _str(key, v)
    if s.startswith("[") and s.endswith("]"):
        s = s[1:-1]  # an IPv6 address as URLs write it: "[::1]" is "::1"
    if not s.strip():
        raise ConfigError(
            f'{key}: empty; give an address ("127.0.0.1" keeps the proxy on loopback)'
        )
    if not _is_address(s) and not (_HOST_NAME.fullmatch(s.lower()) and _dns_encodable(s)):
        raise ConfigError(
            f"{key}: {s!r} is neither an IP address nor a host name "
            '(give the address alone, like "127.0.0.1" or "::1", and the port as server.port)'
        )
    short = _short_ipv4(s)
    if short is not None:  # "0" listened on every interface, with only a warning
        raise ConfigError(f"{key}: {s!r} would be read as the address {short}; write it so")
    return s


def _short_ipv4(s: str) -> Optional[str]:
    """The IPv4 address the system reads a name like ``0``, ``127.1`` or
    ``0x7f000001`` as (the forms of ``inet_aton``); None for a host name or an
    address written in full."""
    if _is_address(s) or not re.fullmatch(
        r"[0-9]+|0x[0-9a-f]+|[0-9a-fx.]*\.[0-9a-fx.]*", s.lower()
    ):
        return None
    import socket  # only for such a name

    try:
        return socket.inet_ntoa(socket.inet_aton(s))
    except OSError:
        return None


def _is_address(s: str) -> bool:
    """An IPv4 or IPv6 address (with an IPv6 zone: ``fe80::1%eth0``)."""
    try:
        ipaddress.ip_address(s.partition("%")[0] if ":" in s else s)
    except ValueError:
        return False
    return True


def redact_url(url: str) -> str:
    """``http://user:secret@host:3128`` → ``http://***@host:3128``.

    Never raises, whatever the URL: everything up to the last ``@`` is replaced,
    so even a password with an unencoded ``/`` or ``#`` does not show (a proxy
    URL has no path; an ``@`` in an endpoint's path costs only readability).
    """
    scheme, sep, rest = url.partition("://")
    if not sep:
        scheme, rest = "", url
    if "@" not in rest:
        return url
    return f"{scheme}{sep}***@{rest.rpartition('@')[2]}"


#: a host worth naming, with its port: a dotted name or IPv4 address,
#: ``localhost``, or a bracketed IPv6 address
_HOST_PORT = re.compile(
    r"(?:[A-Za-z0-9_~-]+(?:\.[A-Za-z0-9_~-]+)+|localhost|\[[0-9A-Fa-f:.]+\])(?::[0-9]+)?",
    re.IGNORECASE,
)


def redact_location(url: str) -> str:
    """Where a redirect points, without what it carries: ``scheme://host[:port]/path``,
    credentials as ``***@``, no query or fragment (an SSO redirect's state or
    token); ``""`` when that cannot be told safely.

    Nothing is shown for a reference without ``scheme://``, a host that is no
    dotted name, ``localhost`` or address, an ``@`` in the path, or an ``@`` anywhere after a
    host with no path: a password holding an unencoded ``/``, ``?`` or ``#``
    ends the authority early, and what looks like a host may be its pieces.
    """
    url = url.strip()
    m = re.match(r"([A-Za-z][A-Za-z0-9+.-]*)://", url)
    if m is None:
        return ""
    rest = url[m.end() :]
    end = min((i for i in map(rest.find, "/?#\\") if i >= 0), default=len(rest))
    path = re.split(r"[?#]", rest[end:], maxsplit=1)[0]
    _, at, host = rest[:end].rpartition("@")
    if "@" in (path or rest[end:]) or not _HOST_PORT.fullmatch(host):
        # an @ after a host with no path: its ? or # may be in a password
        return ""
    where = f"{m.group(1)}://{'***@' if at else ''}{host}{path}"
    return where if len(where) <= 200 else where[:199] + "…"


def _dns_encodable(host: str) -> bool:
    """False for a name the lookup could not encode (``a..example.com``)."""
    try:
        host.encode("idna")
    except UnicodeError:
        return False
    return True


def split_proxy_url(url: str) -> SplitResult:
    """An ``http://`` proxy URL, split and checked (``host:port`` alone means
    ``http://host:port``). Raises ValueError naming only the redacted URL."""
    full = url if "://" in url else f"http://{url}"
    try:
        u = urlsplit(full)
    except ValueError:  # (its message may quote a password: "[…]" is read as an address)
        raise ValueError(f"invalid proxy URL {redact_url(full)!r}") from None
    try:
        port_ok = u.port != 0  # (raises ValueError for a bad port)
    except ValueError:
        port_ok = False
    if "@" in u.path + u.query + u.fragment:
        problem = "invalid proxy URL {}: percent-encode '/', '?', '#' and '@' in the user name "
        problem += "and password"
    elif not port_ok:
        problem = "invalid port in proxy URL {}"
    elif u.scheme != "http" or not u.hostname:
        problem = "unsupported proxy URL {} (use http://host:port)"
    elif not _dns_encodable(u.hostname):
        problem = "invalid host name in proxy URL {} (an empty label, or one over 63 characters)"
    else:
        return u
    # the URL is redacted only here: the message never shows the credentials
    raise ValueError(problem.format(repr(redact_url(u.geturl()))))


def _proxy_url(key: str, v: Any) -> str:
    s = _str(key, v)
    if "://" in s and not s.lower().startswith("http://"):  # host:port alone means http://
        raise ConfigError(f"{key}: only http:// proxies are supported (HTTP CONNECT)")
    if s:
        try:
            split_proxy_url(s)
        except ValueError as e:
            raise ConfigError(f"{key}: {e}") from None
    return s


#: RFC 9110 field names (tokens) and values (visible and obs-text characters,
#: inner spaces and tabs): the grammar h11 enforces. Headers checked here are
#: sent on every request without being checked again.
_FIELD_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_FIELD_VALUE = re.compile(
    r"(?:[\x21-\x7e\x80-\xff](?:[\t\x20-\x7e\x80-\xff]*[\x21-\x7e\x80-\xff])?)?"
)


#: header names (substrings, lower case) whose values are credentials
_SECRET_HEADER_PARTS = (
    "auth",  # authorization, proxy-authorization, authentication, x-auth-key
    "cookie",  # set-cookie too
    "identity",  # x-rh-identity
    "key",  # api-key, apikey, x-access-key
    "token",
    "secret",
    "pass",  # password, passphrase
    "credential",
    "session",
    "signature",
)


def is_secret_header(name: str) -> bool:
    """True for a header whose value must never be shown (logs, ``check``)."""
    n = name.lower()
    return any(part in n for part in _SECRET_HEADER_PARTS)


#: headers the proxy sets itself or that would change the message framing
_RESERVED_HEADERS = frozenset(
    {
        "host",
        "content-length",
        "transfer-encoding",
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "upgrade",
        "expect",
        "accept-encoding",  # identity: the proxy reads the bodies
        # set per request: the body is JSON, the answer SSE or JSON as the
        # client asked, the id the one in the access log and X-Request-ID
        "content-type",
        "accept",
        "x-request-id",
    }
)


def _headers(key: str, v: Any) -> dict[str, str]:
    if not isinstance(v, dict):
        raise ConfigError(f"{key}: expected a table of header names to strings")
    seen: dict[str, str] = {}
    for name, value in v.items():
        if name.lower() in seen:
            raise ConfigError(
                f"{key}.{name}: given twice ({seen[name.lower()]!r} too; header names ignore case)"
            )
        seen[name.lower()] = name
        if not isinstance(value, str):
            raise ConfigError(f"{key}.{name}: expected a string")
        if not _FIELD_NAME.fullmatch(name):
            raise ConfigError(f"{key}.{name}: not a valid HTTP header name")
        if name.lower() in _RESERVED_HEADERS:
            raise ConfigError(
                f"{key}.{name}: set by goose-proxy itself for each request; it cannot be configured"
            )
        if not _FIELD_VALUE.fullmatch(value):
            raise ConfigError(
                f"{key}.{name}: not a valid HTTP header value (control characters, "
                "characters beyond Latin-1, or spaces at either end)"
            )
    return dict(v)


def _table(key: str, v: Any) -> dict[str, Any]:
    if not isinstance(v, dict):
        raise ConfigError(f"{key}: expected a table")
    return dict(v)


def _json_table(key: str, v: Any) -> dict[str, Any]:
    """A table sent as JSON: TOML dates and times and non-finite floats have no
    JSON form, and would fail every request rather than the start."""
    table = _table(key, v)

    def check(path: str, x: Any) -> None:
        if isinstance(x, dict):
            for k, item in x.items():
                check(f"{path}.{k}", item)
        elif isinstance(x, list):
            for i, item in enumerate(x):
                check(f"{path}[{i}]", item)
        elif isinstance(x, float) and not math.isfinite(x):
            raise ConfigError(f"{path}: {x!r} has no JSON form")
        elif x is not None and not isinstance(x, (str, int, float, bool)):
            # (None: null, from a Config built in code; TOML has no such value)
            raise ConfigError(f"{path}: a TOML {type(x).__name__} has no JSON form; quote it")

    check(key, table)
    return table


def log_level(key: str, v: Any) -> str:
    """``v`` as a logging level name (upper case); ConfigError naming ``key`` otherwise."""
    s = _str(key, v).upper()
    if s not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
        raise ConfigError(
            f"{key}: {v!r} is not a log level (debug, info, warning, error, critical)"
        )
    return s


_HOUR = 3600.0
#: section → key → checker. Sub-tables are written "backend.auth".
_SCHEMA: dict[str, dict[str, Checker]] = {
    "server": {
        "host": _listen_host,
        "port": _Int(0, 65535),
        "max_body_size": _Int(1024, 1 << 31),
        "max_header_size": _Int(1024, 1 << 20),
        "max_header_count": _Int(8, 1000),
        "header_timeout": _Seconds(0, _HOUR),
        "keepalive_timeout": _Seconds(0, _HOUR),
        "send_timeout": _Seconds(0, _HOUR),
        "max_connections": _Int(1, 100_000),
        "max_requests_per_connection": _Int(1, 1 << 31),
        "allowed_hosts": _host_names,
        "allowed_origins": _str_list,
        "drain_timeout": _Seconds(0, _HOUR),
    },
    "backend": {
        "endpoint": _endpoint,
        "timeout": _Seconds(0, _HOUR),
        "connect_timeout": _Seconds(0, _HOUR),
        "stream_idle_timeout": _Seconds(0, 24 * _HOUR),
        "flavor": _choice("lightspeed", "openai"),
        "model": _opt_str,
        "proxy": _proxy_url,
        "max_event_size": _Int(1024, 1 << 30),
        "pool_size": _Int(0, 10_000),
        "pool_idle_timeout": _Seconds(0, _HOUR),
        "max_request_chars": _Int(0, 1 << 31),
        "headers": _headers,
        "extra_body": _json_table,
    },
    "backend.auth": {"cert_file": _str, "key_file": _str, "ca_file": _str},
    "translate": {"system_messages": _choice("drop", "instructions", "input")},
    "models": {"id": _str, "owned_by": _str, "context_length": _Int(1, 1 << 31)},
    "logging": {"level": log_level},
}

#: every accepted key, dotted ("backend.auth.cert_file"), for docs and checks
ALL_KEYS: tuple[str, ...] = tuple(f"{s}.{k}" for s, keys in _SCHEMA.items() for k in keys)


def _section(data: Mapping[str, Any], name: str) -> dict[str, Any]:
    """Validate one section's keys; nested tables other than declared ones are errors."""
    raw = data.get(name.split(".")[-1], {})
    if not isinstance(raw, dict):
        raise ConfigError(f"{name}: expected a table")
    schema = _SCHEMA[name]
    out: dict[str, Any] = {}
    for key, value in raw.items():
        if key == "auth" and name == "backend":
            continue
        if key not in schema:
            raise ConfigError(f"{name}.{key}: unknown key")
        out[key] = schema[key](f"{name}.{key}", value)
    return out


def parse_config(data: Mapping[str, Any], source: Optional[str] = None) -> Config:
    """Build a :class:`Config` from parsed TOML. Raises :class:`ConfigError`."""
    for top in data:
        if top not in _SCHEMA:
            raise ConfigError(f"{top}: unknown section")
    backend_raw = data.get("backend", {})
    auth = _section(backend_raw if isinstance(backend_raw, dict) else {}, "backend.auth")
    backend = _section(data, "backend")
    return Config(
        server=ServerConfig(**_section(data, "server")),
        backend=BackendConfig(**backend, auth=AuthConfig(**auth)),
        translate=TranslateConfig(**_section(data, "translate")),
        models=ModelsConfig(**_section(data, "models")),
        logging=LoggingConfig(**_section(data, "logging")),
        source=source,
    )


def validated(config: Config) -> Config:
    """``config`` checked and normalised as the same values in a file would be
    (a :class:`Config` built in code by an embedder, say, where a port of
    70000 would otherwise wrap around to 4464). Raises :class:`ConfigError`."""
    data: dict[str, Any] = {}
    for name in _SCHEMA:
        obj: Any = config
        for part in name.split("."):
            obj = getattr(obj, part)
        table = data
        for part in name.split("."):
            table = table.setdefault(part, {})
        for f in fields(obj):
            value = getattr(obj, f.name)
            if f.name not in _SCHEMA[name]:
                continue  # a sub-table (backend.auth: its own entry)
            if value is None and f.default is None:
                continue  # unset, as a file leaves it (None elsewhere is refused)
            table[f.name] = _plain(value)
    return parse_config(data, config.source)


def _plain(value: Any) -> Any:
    """``value`` as parsed TOML has it: mappings as dicts, tuples and sets as
    lists, paths as strings (a Config built in code may hold any of these)."""
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, (set, frozenset)):
        items = [_plain(v) for v in value]
        try:
            return sorted(items)
        except TypeError:  # of mixed types: the checker says what is wrong
            return items
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return value


def find_config(environ: Mapping[str, str]) -> Optional[Path]:
    """The first ``$XDG_CONFIG_DIRS/goose-proxy/config.toml`` that exists (its
    absolute path), or None. Empty entries are skipped. A relative entry is
    taken from the working directory: the XDG Base Directory Specification
    would have it ignored, but the project's own instructions say "point
    XDG_CONFIG_DIRS at data/development/xdg", and ignoring it silently put a
    developer's proxy on the production defaults."""
    dirs = environ.get("XDG_CONFIG_DIRS") or DEFAULT_CONFIG_DIRS
    for d in dirs.split(":"):
        try:
            candidate = Path(os.path.abspath(d)) / CONFIG_RELPATH if d else None
        except OSError:  # relative, and the working directory is gone
            candidate = None
        # (anything there, a directory or a broken link too, or a path that
        # cannot be looked into: loading it then says what is wrong, where
        # skipping it ran the production defaults)
        if candidate is not None and _may_be_there(candidate):
            return candidate
    return None


def _may_be_there(path: Path) -> bool:
    """Whether something is at ``path`` or cannot be told absent: a directory on
    the way that is not searchable (EACCES) or a loop of links (ELOOP) hides a
    file that may be there, which ``os.path.lexists`` calls absent."""
    try:
        os.lstat(path)
    except (FileNotFoundError, NotADirectoryError):
        return False
    except OSError:
        pass
    return True


def _cwd() -> str:
    try:
        return os.getcwd()
    except OSError:
        return "a working directory that no longer exists"


def load_config(
    path: Union[str, os.PathLike[str], None] = None,
    environ: Optional[Mapping[str, str]] = None,
) -> tuple[Config, list[str]]:
    """Load the configuration.

    With ``path`` that file must exist. Without it the XDG look-up applies and a
    missing file gives the defaults plus a warning (returned, for the caller to log).
    Raises :class:`ConfigError` for an unreadable or invalid file.
    """
    env = os.environ if environ is None else environ
    warnings: list[str] = []
    if path is None:
        found = find_config(env)
        if found is None:
            dirs = env.get("XDG_CONFIG_DIRS") or DEFAULT_CONFIG_DIRS
            relative = [d for d in dirs.split(":") if d and not os.path.isabs(d)]
            cwd = f"; relative entries from {_cwd()}" if relative else ""
            warnings.append(
                f"no goose-proxy/config.toml in XDG_CONFIG_DIRS ({dirs}{cwd}); using defaults"
            )
            return Config(), warnings
        _regular_file(found)
        path = found
    p = Path(path)
    try:
        with p.open("rb") as f:
            raw = f.read()  # once: the file may be a pipe (--config <(...))
        data = tomllib.loads(raw.decode("utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{p}: no such file") from None
    except OSError as e:
        raise ConfigError(f"{p}: cannot read: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        if raw.startswith(b"\xef\xbb\xbf"):  # as some editors save UTF-8; TOML has no room
            raise ConfigError(
                f"{p}: invalid TOML: it starts with a byte-order mark (BOM); "
                "save it as UTF-8 without one"
            ) from None
        raise ConfigError(f"{p}: invalid TOML: {e}") from None
    except UnicodeDecodeError as e:  # TOML is UTF-8
        raise ConfigError(f"{p}: invalid TOML: not UTF-8 (byte {e.start})") from None
    except ValueError:  # int() refuses more than 4300 digits (sys.get_int_max_str_digits)
        raise ConfigError(f"{p}: invalid TOML: an integer with too many digits") from None
    try:
        config = parse_config(data, source=str(p))
    except ConfigError as e:
        raise ConfigError(f"{p}: {e}") from None
    plain = _plain_http_off_host(config.backend.endpoint)
    if plain:
        warnings.append(
            f"backend.endpoint is http:// to {plain}, which is not this host: requests "
            "and answers cross the network unencrypted, and [backend.auth] is not used "
            "(no client certificate)"
        )
    warnings += _loose_permissions(p, config)
    return config, warnings


def _loose_permissions(path: Path, config: Config) -> list[str]:
    """Warnings for files other users may change or read: the configuration,
    which chooses the backend and the CA that vouches for it; that CA bundle,
    the client certificate and its private key (or a directory any of them
    could be replaced through); and the private key's contents."""
    out = []
    backend = "point the proxy at a backend of their own"
    places = [
        (path, f"the configuration file {path}", backend),
        (path.parent, f"its directory {path.parent}", backend),
    ]
    auth = config.backend.auth
    files = [("the configuration file", path, backend)]
    if config.backend.endpoint.startswith("https://"):
        mine = "make the proxy use an identity of their own"
        for what, name, harm in (
            ("the CA file", auth.ca_file, "vouch for a backend of their own"),
            ("the client certificate", auth.cert_file, mine),
            ("the private key", auth.key_file, mine),
        ):
            if name:
                file = Path(name)
                files.append((what, file, harm))
                places.append((file, f"{what} {file}", harm))
                places.append((file.parent, f"{file.parent}, the directory of {what},", harm))
    for what, file, harm in files:  # a link's target may be replaced where it lies
        real = Path(os.path.realpath(file)).parent
        places.append((real, f"{real}, the directory {what} links into,", harm))
    noted = set()
    for target, named, harm in places:
        try:
            st = os.stat(target)
        except OSError:
            continue
        mode = st.st_mode
        # a group's write is often meant: not judged; a sticky directory (/tmp)
        # lets others add files, not replace this one; a directory above may be
        # closed to them (a 0700 home)
        kind_ok = stat.S_ISREG(mode) or (stat.S_ISDIR(mode) and not mode & stat.S_ISVTX)
        if (st.st_dev, st.st_ino) in noted or not (kind_ok and mode & 0o002):
            continue
        if _others_may_reach(target):
            noted.add((st.st_dev, st.st_ino))
            out.append(
                f"{named} is writable by every user (mode {stat.S_IMODE(mode):04o}): "
                f"anyone could {harm}; chmod o-w {target}"
            )
    key = auth.key_file
    if config.backend.endpoint.startswith("https://"):
        try:
            mode = os.stat(key).st_mode
        except OSError:
            mode = 0  # missing or unreadable: the certificate check says so
        if stat.S_ISREG(mode) and mode & 0o004 and _others_may_reach(Path(key)):
            out.append(
                f"the private key {key} is readable by every user (mode "
                f"{stat.S_IMODE(mode):04o}): anyone on this host can take its identity; "
                f"chmod o-r {key}"
            )
    return out


def _regular_file(path: Path) -> None:
    """Raise ConfigError unless the configuration found at ``path`` is a
    regular file (after links): reading a FIFO there would hang the start.
    (A file named with --config may be a pipe: ``--config <(...)``.)"""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise ConfigError(f"{path}: a broken symbolic link") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot read: {e.strerror}") from None
    if os.path.realpath(path) == os.devnull:
        return  # an empty configuration, as it always was
    if stat.S_ISDIR(mode):
        raise ConfigError(f"{path}: cannot read: Is a directory")
    if not stat.S_ISREG(mode):
        raise ConfigError(f"{path}: not a regular file (a FIFO, socket or device)")


def _others_may_reach(path: Path) -> bool:
    """Whether every directory above ``path`` (its real path) lets other users
    through (``o+x``)."""
    try:
        real = Path(os.path.realpath(path))
        return all(os.stat(d).st_mode & stat.S_IXOTH for d in real.parents)
    except OSError:
        return False


def _plain_http_off_host(endpoint: str) -> Optional[str]:
    """The host of an ``http://`` endpoint that is not a loopback name or address."""
    if not endpoint.startswith("http://"):
        return None
    host = (urlsplit(endpoint).hostname or "").lower()
    if host in ("localhost", "localhost.localdomain") or host.endswith(".localhost"):
        return None
    try:
        return None if ipaddress.ip_address(host).is_loopback else host
    except ValueError:
        return host
