"""The documentation and the release files agree with the code.

``docs/man/goose-proxy-config.rst`` documents each key as a definition-list
term ``section.key`` : type, at the start of a line, whose body starts with
``Default: ``<TOML value>``.`` or ``Default: unset.``; this file parses exactly
that convention and compares it with ``goose_proxy.config``.
"""

from __future__ import annotations

import dataclasses
import json
import re
import subprocess
import sys
import textwrap
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Optional
from urllib.parse import urlsplit

import pytest

from goose_proxy import config
from goose_proxy.config import ALL_KEYS, Config, ModelsConfig, ServerConfig, parse_config

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.9/3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
CONFIG_RST = ROOT / "docs" / "man" / "goose-proxy-config.rst"
README = ROOT / "README.md"
GOOSE_PROVIDER = ROOT / "data" / "release" / "goose" / "goose_proxy.json"

_TERM = re.compile(r"^``(?P<key>[a-z_]+(?:\.[a-z_]+)+)`` : \S")
_DEFAULT = re.compile(r"^ +Default: (?:``(?P<value>.+?)``|(?P<unset>unset))")


class _Unset:
    """``Default: unset.`` (the dataclass default is None)."""


UNSET = _Unset()


def documented_keys() -> dict[str, Any]:
    """``{"section.key": default}`` from the rst; a missing Default line fails."""
    lines = CONFIG_RST.read_text("utf-8").splitlines()
    out: dict[str, Any] = {}
    for i, line in enumerate(lines):
        m = _TERM.match(line)
        if m is None:
            continue
        key = m.group("key")
        assert key not in out, f"{key} is documented twice"
        body = next((ln for ln in lines[i + 1 :] if ln.strip()), "")
        d = _DEFAULT.match(body)
        assert d is not None, f"{key}: the body must start with 'Default: ...', got {body!r}"
        out[key] = UNSET if d.group("unset") else tomllib.loads(f"v = {d.group('value')}")["v"]
    return out


def code_defaults() -> dict[str, Any]:
    """``{"section.key": default}`` from the dataclasses, as TOML would spell it."""
    out: dict[str, Any] = {}

    def walk(prefix: str, obj: Any) -> None:
        for f in dataclasses.fields(obj):
            if f.name == "source":
                continue
            value = getattr(obj, f.name)
            if dataclasses.is_dataclass(value):
                walk(f"{prefix}{f.name}.", value)
            elif isinstance(value, tuple):
                out[prefix + f.name] = list(value)
            elif isinstance(value, Mapping):
                out[prefix + f.name] = dict(value)
            else:
                out[prefix + f.name] = UNSET if value is None else value

    walk("", Config())
    return out


def _same(documented: Any, default: Any) -> bool:
    """Equal, and valid TOML for the key: ``True`` is not ``1``, ``8080.0`` not ``8080``
    (an integer key rejects a float); a duration (float) may be written ``10``."""
    if documented != default or isinstance(documented, bool) != isinstance(default, bool):
        return False
    if isinstance(default, int) and not isinstance(default, bool):
        return isinstance(documented, int)
    if isinstance(default, float):
        return isinstance(documented, (int, float))
    return type(documented) is type(default)


def test_every_key_is_documented() -> None:
    missing = sorted(set(ALL_KEYS) - set(documented_keys()))
    assert not missing, f"keys missing from {CONFIG_RST.name}: {missing}"


def test_every_documented_key_exists() -> None:
    unknown = sorted(set(documented_keys()) - set(ALL_KEYS))
    assert not unknown, f"{CONFIG_RST.name} documents keys the code does not accept: {unknown}"


def test_documented_defaults_match_the_dataclasses() -> None:
    code = code_defaults()
    assert set(code) == set(ALL_KEYS)  # the schema and the dataclasses agree
    docs = documented_keys()
    wrong = {
        key: (docs[key], code[key])
        for key in sorted(set(docs) & set(code))
        if not _same(docs[key], code[key])
    }
    assert not wrong, f"documented default != code default: {wrong}"


def documented_types() -> dict[str, str]:
    """``{"section.key": "integer, bytes, 1024 to 2147483648"}``: each key's type line."""
    text = CONFIG_RST.read_text("utf-8")
    return dict(re.findall(r"^``([a-z_]+(?:\.[a-z_]+)+)`` : (.+)$", text, flags=re.M))


def test_documented_ranges_match_the_checks() -> None:
    # the range an out-of-range error names is the one the man page gives
    types = documented_types()
    wrong = {}
    for section, checks in config._SCHEMA.items():
        for name, check in checks.items():
            key = f"{section}.{name}"
            if isinstance(check, config._Int):
                good = types[key].startswith("integer") and types[key].endswith(
                    f", {check.lo} to {check.hi}"
                )
            elif isinstance(check, config._Seconds):  # (0, 3600] unless stated
                stated = "" if check.hi == 3600 else f", at most {check.hi:g}"
                good = check.lo == 0 and types[key] == "duration" + stated
            else:
                continue
            if not good:
                wrong[key] = types[key]
    assert not wrong, f"type lines without the range the code checks: {wrong}"


def _example_blocks(rst: str) -> list[str]:
    """The literal blocks (after ``::``) of the Example section."""
    section = rst.split("\nExample\n-------\n", 1)[1].split("\nSee also\n", 1)[0]
    blocks = re.findall(r"::\n\n((?:(?: {3}.*)?\n)+)", section)
    return [textwrap.dedent(b) for b in blocks]


def test_config_examples_are_valid() -> None:
    blocks = _example_blocks(CONFIG_RST.read_text("utf-8"))
    assert len(blocks) >= 2
    for block in blocks:
        parse_config(tomllib.loads(block))  # raises ConfigError naming the key


def _readme_config_keys() -> list[str]:
    """Keys in the first column of README's "key | default | meaning" table."""
    text = README.read_text("utf-8")
    table = text.split("\n| key | default | meaning |\n", 1)[1].split("\n\n", 1)[0]
    keys: list[str] = []
    for row in table.splitlines()[1:]:  # skip the |---| line
        first = row.strip("|").split("|")[0]
        prefix: Optional[str] = None
        for name in re.findall(r"`([^`]+)`", first):
            if "." in name:
                prefix = name.rsplit(".", 1)[0]
                keys.append(name)
            else:  # "`backend.auth.cert_file`, `key_file`": same section
                assert prefix is not None, f"README row {row!r}: bare key without section"
                keys.append(f"{prefix}.{name}")
    return keys


def test_readme_config_table_keys_exist() -> None:
    keys = _readme_config_keys()
    assert len(keys) >= 5
    unknown = sorted(set(keys) - set(ALL_KEYS))
    assert not unknown, f"README.md names keys the code does not accept: {unknown}"


@pytest.mark.parametrize("key", ["server.port", "backend.endpoint", "logging.level"])
def test_readme_config_table_mentions(key: str) -> None:
    assert key in _readme_config_keys()


def test_goose_provider_matches_the_proxy_defaults() -> None:
    provider = json.loads(GOOSE_PROVIDER.read_text("utf-8"))
    assert provider["engine"] == "openai"
    assert provider["requires_auth"] is False
    url = urlsplit(provider["base_url"])
    server = ServerConfig()
    assert (url.hostname, url.port) == (server.host, server.port)
    assert provider["base_path"].strip("/") == "v1/chat/completions"
    models = ModelsConfig()
    assert provider["models"] == [{"name": models.id, "context_limit": models.context_length}]


RELIABILITY = ROOT / "docs" / "reliability.md"
_COUNT_ROW = re.compile(r"^\| .*\(`(?P<where>[^`]+)`\) \| (?P<n>\d+)\b")


def test_reliability_counts_match_the_collected_tests() -> None:
    """docs/reliability.md's "Counts" table says how many tests each file (or
    folder) holds; pytest's own collection is the truth."""
    section = RELIABILITY.read_text("utf-8").split("\n## Counts\n", 1)[1]
    documented = {m["where"]: int(m["n"]) for m in map(_COUNT_ROW.match, section.splitlines()) if m}
    total = re.search(r"\| \*\*total\*\* \| \*\*(\d+)\*\* \|", section)
    assert total and len(documented) >= 8, "the Counts table was not found"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "--collect-only",
            "-q",
            "-p",
            "no:cacheprovider",
            "tests/reliability",
            "tests/fuzz",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    ids = [line for line in proc.stdout.splitlines() if "::" in line]
    files = [i.split("::")[0] for i in ids]
    # a row names a file (test_limits.py) or a folder (tests/fuzz/)
    counted = {
        where: sum(
            f.endswith(where) if where.endswith(".py") else f.startswith(where) for f in files
        )
        for where in documented
    }
    assert counted == documented
    assert int(total[1]) == sum(documented.values()) == len(ids)
