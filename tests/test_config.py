"""Configuration checks: every key optional, a clear message naming the key.

The header and endpoint checks matter beyond tidiness: ``[backend.headers]``
and the endpoint go into every upstream request head without h11 checking
them again (see ``goose_proxy/http11.py``), so what passes here must be a
valid HTTP/1.1 head, and what would not be must stop the daemon at start.
"""

from __future__ import annotations

import errno
import os
import socket
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any, Optional

import anyio
import h11
import httpx
import pytest

from goose_proxy.config import (
    Config,
    ConfigError,
    load_config,
    parse_config,
    redact_location,
)
from goose_proxy.http11 import TRUSTED
from goose_proxy.upstream.client import Endpoint
from goose_proxy.upstream.proxy import proxy_for
from tests.support import running_proxy


def _backend(**backend: Any) -> Config:
    return parse_config({"backend": backend})


def test_empty_file_gives_the_defaults() -> None:
    assert parse_config({}) == Config()


@pytest.mark.parametrize(
    ("data", "key"),
    [
        ({"nonsense": {}}, "nonsense"),
        ({"server": {"port": "8080"}}, "server.port"),
        ({"server": {"colour": "blue"}}, "server.colour"),
        ({"backend": {"timeout": -1}}, "backend.timeout"),
        ({"backend": {"timeout": 10**400}}, "backend.timeout"),  # float() overflowed
    ],
)
def test_errors_name_the_key(data: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError) as exc:
        parse_config(data)
    assert str(exc.value).startswith(key)


@pytest.mark.parametrize(
    "headers",
    [
        {"X-Tenant": "acme"},
        {"x-api-version": "2024-10-01"},
        {"X-Empty": ""},
        {"X-Inner-Space": "a b\tc"},
        {"X-Latin1": "café"},
        {"X-Token.Chars!#$%&'*+-^_`|~": "v"},
    ],
)
def test_valid_headers_are_accepted_and_h11_agrees(headers: dict[str, str]) -> None:
    cfg = _backend(headers=headers)
    assert dict(cfg.backend.headers) == headers
    # what the config lets through, h11's full check accepts too
    encoded = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]
    h11.Request(method="POST", target="/", headers=[("host", "h"), *encoded])


@pytest.mark.parametrize(
    ("headers", "what"),
    [
        ({"X-Evil": "a\r\nInjected: 1"}, "value"),
        ({"X-Evil": "a\nb"}, "value"),
        ({"X-Nul": "a\x00b"}, "value"),
        ({"X-Lead": " padded"}, "value"),
        ({"X-Trail": "padded\t"}, "value"),
        ({"X-Wide": "snowman ☃"}, "value"),
        ({"Bad Name": "v"}, "name"),
        ({"Bad:Name": "v"}, "name"),
        ({"": "v"}, "name"),
        ({"Ünicode": "v"}, "name"),
    ],
)
def test_invalid_headers_stop_at_load(headers: dict[str, str], what: str) -> None:
    name = next(iter(headers))
    with pytest.raises(ConfigError) as exc:
        _backend(headers=headers)
    msg = str(exc.value)
    assert msg.startswith(f"backend.headers.{name}:")
    assert f"not a valid HTTP header {what}" in msg
    # and sending it would indeed have failed: h11 refuses the head, or the
    # value cannot even be encoded (HTTP heads are Latin-1)
    with pytest.raises((h11.LocalProtocolError, UnicodeEncodeError)):
        raw = [(name.encode("latin-1"), headers[name].encode("latin-1"))]
        h11.Request(method="POST", target="/", headers=[("host", "h"), *raw])


def test_a_header_given_twice_in_two_cases_stops_at_load() -> None:
    # both would be sent: the backend would see two values for one name
    with pytest.raises(ConfigError) as exc:
        _backend(headers={"X-Tenant": "a", "x-tenant": "b"})
    assert str(exc.value).startswith("backend.headers.x-tenant: given twice ('X-Tenant' too")


@pytest.mark.parametrize("host", ["", "  ", "[]", "[ ]"])
def test_an_empty_listen_host_stops_at_load(host: str) -> None:
    # "" would listen on every interface, without a word
    with pytest.raises(ConfigError) as exc:
        parse_config({"server": {"host": host}})
    assert str(exc.value).startswith("server.host: empty")


@pytest.mark.parametrize(
    "host", ["http://127.0.0.1", "127.0.0.1:8080", " 127.0.0.1", "[::1", "local host", "a..b"]
)
def test_a_listen_host_that_is_no_address_or_name_stops_at_load(host: str) -> None:
    # these passed, `check` said "ready", and the daemon then exited 1 with
    # "cannot listen on …: Name or service not known", naming no key
    with pytest.raises(ConfigError) as exc:
        parse_config({"server": {"host": host}})
    assert str(exc.value).startswith(f"server.host: {host!r} is neither an IP")
    assert "server.port" in str(exc.value)


@pytest.mark.parametrize(
    "host, read_as",
    [("0", "0.0.0.0"), ("127.1", "127.0.0.1"), ("2130706433", "127.0.0.1"),
     ("0x7f000001", "127.0.0.1"), ("10.0", "10.0.0.0")],
)  # fmt: skip
def test_a_listen_host_the_system_reads_as_another_address_stops_at_load(
    host: str, read_as: str
) -> None:
    # "0" passed as a host name and listened on every interface (0.0.0.0),
    # with only the warning that it is not a loopback address
    with pytest.raises(ConfigError) as exc:
        parse_config({"server": {"host": host}})
    assert str(exc.value) == (
        f"server.host: {host!r} would be read as the address {read_as}; write it so"
    )


@pytest.mark.parametrize(
    "host", ["127.0.0.1", "0.0.0.0", "::", "fe80::1%lo", "localhost", "gp.lan.", "cafe.babe"]
)
def test_addresses_and_host_names_are_listen_hosts(host: str) -> None:
    assert parse_config({"server": {"host": host}}).server.host == host


def test_allowed_hosts_are_matched_by_name() -> None:
    # as the Host header is: lower case, without a port, an IPv6 address in
    # brackets (a port or bare IPv6 address was kept and never matched)
    given = ["Proxy.LAN:18090", "::1", "[FE80::1]:80", " box "]
    cfg = parse_config({"server": {"allowed_hosts": given}})
    assert cfg.server.allowed_hosts == ("proxy.lan", "[::1]", "[fe80::1]", "box")
    bad_entries = ("", ":8080", "[::1", "http://proxy.lan", "https://proxy.lan:8443/",
                   "proxy.lan:abc", "proxy lan", "user@proxy.lan", "[::1]x", "a:\u0663",
                   "1.2.3.4:", "[::1]:", ".", "-", "a..b")  # fmt: skip
    for bad in bad_entries:
        with pytest.raises(ConfigError) as exc:
            parse_config({"server": {"allowed_hosts": [bad]}})
        assert str(exc.value).startswith("server.allowed_hosts[0]: "), exc.value


def test_every_log_level_is_named_in_the_error() -> None:
    with pytest.raises(ConfigError) as exc:
        parse_config({"logging": {"level": "loud"}})
    assert "(debug, info, warning, error, critical)" in str(exc.value)
    assert parse_config({"logging": {"level": "critical"}}).logging.level == "CRITICAL"


def test_an_empty_log_level_on_the_command_line_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # ExecStart=goose-proxy --log-level ${LEVEL} with LEVEL unset: it was
    # ignored, and the configured level taken without a word
    from goose_proxy import cli

    config = tmp_path / "c.toml"
    config.write_text('[backend]\nendpoint = "http://127.0.0.1:9"\n')
    assert cli.main(["--log-level", "", "--config", str(config)]) == 2
    assert "--log-level: '' is not a log level" in capsys.readouterr().err


def test_a_file_that_is_not_utf8_stops_at_load(tmp_path: Path) -> None:
    f = tmp_path / "c.toml"
    data = b'[models]\nid = "caf\xe9"\n'
    f.write_bytes(data)
    with pytest.raises(ConfigError) as exc:
        load_config(str(f))
    assert str(exc.value) == f"{f}: invalid TOML: not UTF-8 (byte {data.index(0xE9)})"


def test_an_integer_too_long_to_read_stops_at_load(tmp_path: Path) -> None:
    # int() refuses more than 4300 digits: a ValueError that escaped as a
    # traceback with exit status 1
    f = tmp_path / "c.toml"
    f.write_text("[backend]\ntimeout = " + "9" * 5000 + "\n")
    with pytest.raises(ConfigError) as exc:
        load_config(str(f))
    assert str(exc.value) == f"{f}: invalid TOML: an integer with too many digits"
    f.write_text("[backend]\ntimeout = " + "9" * 400 + "\n")
    with pytest.raises(ConfigError) as exc:
        load_config(str(f))
    assert str(exc.value).startswith(f"{f}: backend.timeout: {'9' * 400} is out of range (> 0 ")


@pytest.mark.parametrize(
    "name",
    [
        "Host",
        "content-length",
        "Transfer-Encoding",
        "Connection",
        "Upgrade",
        "TE",
        "Accept-Encoding",
        "Content-Type",
        "Accept",
        "X-Request-ID",
    ],
)
def test_headers_that_frame_the_request_cannot_be_configured(name: str) -> None:
    # they would contradict the head goose-proxy writes (two framings, two hosts,
    # a second id, an answer of the kind the client did not ask for)
    with pytest.raises(ConfigError) as exc:
        _backend(headers={name: "x"})
    assert str(exc.value).startswith(f"backend.headers.{name}: set by goose-proxy itself")


@pytest.mark.parametrize(
    "url",
    [
        "https://lightspeed.example.com",
        "https://10.0.0.1:8443/api/lightspeed/v1",
        "http://[::1]:8080/v1",
    ],
)
def test_valid_endpoints(url: str) -> None:
    cfg = _backend(endpoint=url)
    assert cfg.backend.endpoint == url
    ep = Endpoint.parse(cfg.backend.endpoint)
    assert ep.authority in url


def test_an_endpoint_scheme_in_capitals_is_the_same() -> None:
    # a URL's scheme is case-insensitive; "HTTPS://" was refused
    cfg = _backend(endpoint="HTTPS://Lightspeed.example.com/v1/")
    assert cfg.backend.endpoint == "https://Lightspeed.example.com/v1"
    assert Endpoint.parse(cfg.backend.endpoint).port == 443


@pytest.mark.parametrize(
    ("key", "url", "why"),
    [
        ("endpoint", "ftp://example.com", "must start with https:// or http://"),
        ("endpoint", "https://exa mple.com", "ASCII URL without spaces"),
        ("endpoint", "https://bücher.example", "ASCII URL without spaces"),
        ("endpoint", "https://example.com:99999", "not a valid URL"),
        ("endpoint", "https:///v1", "has no host name"),
        ("endpoint", "https://", "'https://' has no host name"),
        ("endpoint", "https://example.com/v1?x=1", "must not have a query or a fragment"),
        ("endpoint", "https://example.com/v1#frag", "must not have a query or a fragment"),
        ("endpoint", "https://example.com/v1?", "must not have a query or a fragment"),
        ("endpoint", "https://ls..example.com/v1", "'ls..example.com' is not a valid host name"),
        ("endpoint", f"https://{'x' * 64}.example.com/v1", "is not a valid host name"),
        # it was taken as the scheme's port (443, 80): "connection refused by … :80"
        ("endpoint", "http://127.0.0.1:0/v1", "names port 0, which nothing can be reached on"),
        # never sent: the backend's 401 said nothing of why
        ("endpoint", "https://u:s3cret@example.com/v1",
         "'https://***@example.com/v1' has a user name or password, which goose-proxy"),
        ("endpoint", "https://token@example.com/v1", "give credentials as a header"),
        # wrong in another way, the password still not shown
        ("endpoint", "https://bob:2024#s3cret@example.com",
         "must not have a query or a fragment (? or #), nor a user name or password"),
        ("endpoint", "https://bob:s3cret x@example.com", "must be an ASCII URL without spaces"),
        ("endpoint", "https://bob:s3cret\u00e4@example.com", "must be an ASCII URL"),
        ("endpoint", "https://bob:s3cret@", "'https://***@' has no host name"),
        ("endpoint", "ftp://bob:s3cret@example.com", "must start with https:// or http://"),
        ("proxy", "http://u:s3cret@proxy:0", "invalid port in proxy URL 'http://***@proxy:0'"),
        # like a bad endpoint (exit status 2); the environment's *_proxy only warn
        ("proxy", "http://u:s3cret@proxy:70000", "invalid port in proxy URL 'http://***@proxy:70000'"),
        ("proxy", "http://", "unsupported proxy URL 'http://' (use http://host:port)"),
        ("proxy", "http://:3128", "unsupported proxy URL 'http://:3128'"),
        ("proxy", "http://u:pa/ss@proxy:3128", "percent-encode"),
        ("proxy", "https://proxy:3128", "only http:// proxies are supported"),
        ("proxy", "http://u:s3cret@p..corp:3128", "invalid host name in proxy URL 'http://***@p..corp:3128'"),
    ],
)  # fmt: skip
def test_invalid_backend_urls_stop_at_load(key: str, url: str, why: str) -> None:
    with pytest.raises(ConfigError) as exc:
        _backend(**{key: url})
    msg = str(exc.value)
    assert msg.startswith(f"backend.{key}: ") and why in msg
    assert "s3cret" not in msg and "pa/ss" not in msg  # credentials never shown


@pytest.mark.parametrize(
    "key, url",
    [
        ("proxy", "http://u:[s3cret]@proxy.example:3128"),
        ("endpoint", "https://u:[s3cret]@example.com/v1"),
        ("endpoint", "https://u:s3cret@example.com:99999/v1"),
    ],
)
def test_a_url_python_cannot_split_never_shows_its_password(key: str, url: str) -> None:
    # Python 3.11.4+ refuses "[…]" in a netloc that is not an IPv6 address, and
    # its message quotes what the brackets hold: the password
    try:
        _backend(**{key: url})
    except ConfigError as e:
        assert "s3cret" not in str(e) and "***@" in str(e), e
    else:
        assert key == "proxy" and sys.version_info < (3, 11)  # taken as it is
    if key == "proxy":  # from the environment: the warning, and every 502 that names it
        route = proxy_for(_backend().backend, "backend.example", environ={"https_proxy": url})
        assert route is not None
        assert route.error is None or ("s3cret" not in route.error and "***@" in route.error)
        assert route.error is not None or sys.version_info < (3, 11)


def test_a_ca_file_linked_from_a_directory_others_may_write_is_named() -> None:
    # RHEL's CA bundles are links into another directory: that one may be
    # replaced through as well (the link's own directory was all that was checked)
    with tempfile.TemporaryDirectory() as top:  # under /tmp: others may pass through
        _warned_of_a_linked_ca(Path(top))


def _warned_of_a_linked_ca(top: Path) -> None:
    os.chmod(top, 0o755)
    etc, shared = top / "etc", top / "shared"
    etc.mkdir(mode=0o755)
    shared.mkdir()
    os.chmod(shared, 0o777)
    (shared / "ca.pem").write_text("x")
    os.chmod(shared / "ca.pem", 0o644)
    (etc / "ca.pem").symlink_to(shared / "ca.pem")
    cfg = etc / "config.toml"
    cfg.write_text(
        '[backend]\nendpoint = "https://backend.example"\n'
        f'[backend.auth]\nca_file = "{etc / "ca.pem"}"\n'
    )
    os.chmod(cfg, 0o644)
    _, warnings = load_config(cfg, environ={})
    assert [w for w in warnings if "every user" in w] == [
        f"{shared}, the directory the CA file links into, is writable by every user "
        f"(mode 0777): anyone could vouch for a backend of their own; chmod o-w {shared}"
    ]


@pytest.mark.parametrize("url", ["HTTP://proxy.example:3128", "proxy.example:3128"])
def test_a_proxy_url_in_capitals_or_without_its_scheme_is_taken(url: str) -> None:
    # as https_proxy takes them; the key said "only http:// proxies are supported"
    backend = _backend(proxy=url).backend
    assert backend.proxy == url
    route = proxy_for(backend, "backend.example", environ={})
    assert route is not None and route.display == "http://proxy.example:3128"


def test_endpoint_parse_refuses_what_h11_would_refuse() -> None:
    # Endpoint.parse is the second guard (for embedders that skip the config)
    with pytest.raises(ValueError, match="not a valid backend URL"):
        Endpoint.parse("https://example.com/api v1")


def test_h11_still_offers_trusted_heads() -> None:
    # If an h11 release drops its `_parsed` flag, TRUSTED is empty and every head
    # is checked again (correct, only slower): this test says so loudly.
    assert TRUSTED == {"_parsed": True}
    h11.Response(status_code=200, headers=[(b"content-length", b"0")], **TRUSTED)


@pytest.mark.parametrize(
    ("toml", "where"),
    [
        ("since = 2024-05-27T07:32:00Z", "backend.extra_body.since: a TOML datetime"),
        ("day = 2024-05-27", "backend.extra_body.day: a TOML date"),
        ("at = 07:32:00", "backend.extra_body.at: a TOML time"),
        ("limit = inf", "backend.extra_body.limit: inf has no JSON form"),
        ("x = [1, nan]", "backend.extra_body.x[1]: nan has no JSON form"),
        ("[backend.extra_body.solr]\nwhen = 2024-05-27", "backend.extra_body.solr.when: a TOML"),
    ],
)
def test_extra_body_without_a_json_form_stops_at_load(
    tmp_path: Path, toml: str, where: str
) -> None:
    # it would have failed every request (500) and crashed `check`
    f = tmp_path / "config.toml"
    f.write_text(f"[backend.extra_body]\n{toml}\n")
    with pytest.raises(ConfigError) as exc:
        load_config(str(f))
    assert str(exc.value).startswith(f"{f}: {where}")


def test_extra_body_of_json_values_loads(tmp_path: Path) -> None:
    f = tmp_path / "config.toml"
    f.write_text(
        '[backend.extra_body]\nname = "x"\nn = 3\nr = 0.5\non = true\nlist = [1, "a"]\n'
        '[backend.extra_body.solr]\nmode = "hybrid"\n'
    )
    cfg, _ = load_config(str(f))
    assert dict(cfg.backend.extra_body) == {
        "name": "x", "n": 3, "r": 0.5, "on": True, "list": [1, "a"], "solr": {"mode": "hybrid"}
    }  # fmt: skip


def test_xdg_config_dirs_relative_entries_are_taken_from_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the README's own instructions: "Point XDG_CONFIG_DIRS at
    # data/development/xdg" (the XDG specification would ignore the entry)
    for d in ("rel", "abs"):
        (tmp_path / d / "goose-proxy").mkdir(parents=True)
        (tmp_path / d / "goose-proxy" / "config.toml").write_text(f'[models]\nid = "{d}"\n')
    monkeypatch.chdir(tmp_path)
    cfg, _ = load_config(environ={"XDG_CONFIG_DIRS": f"rel::{tmp_path / 'abs'}"})
    assert cfg.models.id == "rel"
    assert cfg.source == str(tmp_path / "rel" / "goose-proxy" / "config.toml")  # absolute
    cfg, _ = load_config(environ={"XDG_CONFIG_DIRS": f"missing::{tmp_path / 'abs'}"})
    assert cfg.models.id == "abs"
    none, warnings = load_config(environ={"XDG_CONFIG_DIRS": "missing"})
    assert none.source is None
    assert warnings == [
        f"no goose-proxy/config.toml in XDG_CONFIG_DIRS (missing; relative entries from "
        f"{tmp_path}); using defaults"
    ]


def test_an_xdg_config_that_is_no_file_is_reported_not_skipped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # a directory or a broken link where the file belongs: skipping it ran the
    # proxy on the production defaults with only "no config.toml" said
    (tmp_path / "a" / "goose-proxy" / "config.toml").mkdir(parents=True)
    (tmp_path / "b" / "goose-proxy").mkdir(parents=True)
    (tmp_path / "b" / "goose-proxy" / "config.toml").symlink_to(tmp_path / "gone.toml")
    for d, said in (("a", "cannot read: Is a directory"), ("b", "a broken symbolic link")):
        with pytest.raises(ConfigError) as exc:
            load_config(environ={"XDG_CONFIG_DIRS": str(tmp_path / d)})
        assert str(exc.value) == f"{tmp_path / d / 'goose-proxy' / 'config.toml'}: {said}"


def test_an_xdg_config_dir_that_cannot_be_looked_into_is_reported_not_skipped(
    tmp_path: Path,
) -> None:
    # a loop of links on the way (or a directory without search permission,
    # below) hides whether the file is there: the defaults would be a guess
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    with pytest.raises(ConfigError) as exc:
        load_config(environ={"XDG_CONFIG_DIRS": f"{tmp_path / 'loop'}:{tmp_path}"})
    where = tmp_path / "loop" / "goose-proxy" / "config.toml"
    assert str(exc.value) == f"{where}: cannot read: {os.strerror(errno.ELOOP)}"


@pytest.mark.skipif(os.geteuid() == 0, reason="root searches a directory of mode 000")
def test_an_xdg_config_dir_without_search_permission_is_reported_not_skipped(
    tmp_path: Path,
) -> None:
    (tmp_path / "goose-proxy").mkdir()
    (tmp_path / "goose-proxy" / "config.toml").write_text("")
    (tmp_path / "goose-proxy").chmod(0)
    try:
        with pytest.raises(ConfigError) as exc:
            load_config(environ={"XDG_CONFIG_DIRS": str(tmp_path)})
    finally:
        (tmp_path / "goose-proxy").chmod(0o755)
    where = tmp_path / "goose-proxy" / "config.toml"
    assert str(exc.value) == f"{where}: cannot read: {os.strerror(errno.EACCES)}"


def test_a_fifo_where_the_xdg_config_belongs_is_reported_not_waited_on(
    tmp_path: Path,
) -> None:
    # opening it would block the start until a writer came
    (tmp_path / "goose-proxy").mkdir()
    os.mkfifo(tmp_path / "goose-proxy" / "config.toml")
    with pytest.raises(ConfigError) as exc:
        load_config(environ={"XDG_CONFIG_DIRS": str(tmp_path)})
    assert str(exc.value).endswith("config.toml: not a regular file (a FIFO, socket or device)")
    # a link to /dev/null is an empty configuration, as it was
    (tmp_path / "goose-proxy" / "config.toml").unlink()
    (tmp_path / "goose-proxy" / "config.toml").symlink_to(os.devnull)
    config, _ = load_config(environ={"XDG_CONFIG_DIRS": str(tmp_path)})
    assert config == Config(source=config.source)


def test_a_named_pipe_given_with_config_is_read_once(tmp_path: Path) -> None:
    # `--config FIFO` may be a pipe; with invalid TOML the byte-order-mark check
    # opened it a second time, and the start waited for a writer for good
    fifo = tmp_path / "config.fifo"
    os.mkfifo(fifo)

    def write() -> None:
        with open(fifo, "wb") as f:
            f.write(b"[server\n")

    writer = threading.Thread(target=write, daemon=True)
    writer.start()
    done: list[BaseException] = []

    def read() -> None:
        try:
            load_config(str(fifo))
        except ConfigError as e:
            done.append(e)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(10)
    if reader.is_alive():  # unblock it: a writer that writes nothing
        with open(fifo, "wb"):
            pass
        pytest.fail("load_config waited on the pipe a second time")
    assert str(done[0]).startswith(f"{fifo}: invalid TOML: ")


@pytest.mark.parametrize(
    ("endpoint", "warned"),
    [
        ("http://lightspeed.example.com/v1", "lightspeed.example.com"),
        ("http://10.0.0.7:8080/v1", "10.0.0.7"),
        ("http://127.0.0.1:8080/v1", None),
        ("http://[::1]:8080/v1", None),
        ("http://localhost:8080/v1", None),
        ("https://lightspeed.example.com/v1", None),
    ],
)
def test_a_plain_http_endpoint_off_this_host_is_warned_about(
    tmp_path: Path, endpoint: str, warned: Optional[str]
) -> None:
    f = tmp_path / "config.toml"
    f.write_text(f'[backend]\nendpoint = "{endpoint}"\n')
    _, warnings = load_config(str(f))
    if warned is None:
        assert warnings == []
    else:
        assert warnings == [
            f"backend.endpoint is http:// to {warned}, which is not this host: requests and "
            "answers cross the network unencrypted, and [backend.auth] is not used (no "
            "client certificate)"
        ]


@pytest.mark.parametrize(
    ("location", "shown"),
    [
        ("https://sso.example/login?token=abc#x", "https://sso.example/login"),
        ("https://alice:s3cret@sso.example/login?state=1", "https://***@sso.example/login"),
        ("HTTPS://SSO.Example:8443/a", "HTTPS://SSO.Example:8443/a"),
        ("https://[::1]:8443/v1/x?y", "https://[::1]:8443/v1/x"),
        ("http://localhost:8080", "http://localhost:8080"),
        # an @ in the query or fragment (a login hint) is not the userinfo's
        ("https://sso.corp/login?login_hint=alice@corp.com&state=SECRET", "https://sso.corp/login"),
        ("https://sso.corp/login#user@x&access_token=T", "https://sso.corp/login"),
        # a password with an unencoded ?, # or /: nothing is told
        ("https://alice:s3cr?t@sso.example/login", ""),
        ("https://alice:pa#ss@sso.example/login", ""),
        ("https://alice:pa/ss@sso.example/login", ""),
        ("https://alice:1234/5678@sso.example/login", ""),
        ("https://ghp_AbC/dEf+gh==@github.com/login", ""),
        ("https://alice.smith:1234/5678@sso.example/x", ""),
        ("https://alice.smith:1234?5678@sso.example/login", ""),
        ("https://alice.smith:1234#5678@sso.example/login", ""),
        ("https://alice@corp.com:1234?x@sso.example/login", ""),
        # no scheme://: relative, scheme-relative, malformed
        ("/sso/login?state=SECRET&redirect_uri=https://app.example/cb", ""),
        ("/login#access_token=TOKEN&next=https://x", ""),
        ("//alice:s3cret@sso.example/login?state=X", ""),
        ("https:/alice:s3cret@sso.example/", ""),
        ("https:alice:s3cret@sso.example/", ""),
        ("alice:s3cret@host/x", ""),
        ("https:h:8443/a?SECRETQ://", ""),
    ],
)
def test_a_redirect_location_shows_where_not_what(location: str, shown: str) -> None:
    assert redact_location(location) == shown


@pytest.mark.anyio
@pytest.mark.parametrize("host", ["[::1]", "::1"])
async def test_an_ipv6_listen_host_may_be_written_in_brackets(host: str) -> None:
    # as URLs write it; "[::1]" passed the check, then could not be bound
    # ("Name or service not known", exit status 1)
    cfg = parse_config(
        {"server": {"host": host, "port": 0}, "backend": {"endpoint": "http://127.0.0.1:9"}}
    )
    assert cfg.server.host == "::1"
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
    except OSError as e:
        pytest.skip(f"no IPv6 loopback here: {e}")
    with anyio.fail_after(10):
        async with running_proxy(cfg) as proxy:
            async with httpx.AsyncClient() as c:
                r = await c.get(f"http://[::1]:{proxy.port}/health")
    assert r.status_code == 200


def test_a_file_with_a_byte_order_mark_is_told_so(tmp_path: Path) -> None:
    # it read "invalid TOML: Invalid statement (at line 1, column 1)"
    f = tmp_path / "c.toml"
    f.write_bytes(b"\xef\xbb\xbf[server]\nport = 8081\n")
    with pytest.raises(ConfigError) as exc:
        load_config(str(f))
    assert str(exc.value) == (
        f"{f}: invalid TOML: it starts with a byte-order mark (BOM); save it as UTF-8 without one"
    )
