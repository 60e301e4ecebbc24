"""Helpers for tests that run goose-proxy as a separate program: configuration
files, a clean environment, and the Python interpreters present on this host."""

from __future__ import annotations

import functools
import glob
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Optional

PROXY_VARS = ("https_proxy", "HTTPS_PROXY", "http_proxy", "HTTP_PROXY", "no_proxy", "NO_PROXY")
#: the interpreters the support matrix names, oldest first
MATRIX = ("3.9", "3.10", "3.11", "3.12", "3.13")


def toml_value(value: Any) -> str:
    if isinstance(value, dict):
        return (
            "{ " + ", ".join(f"{json.dumps(k)} = {toml_value(v)}" for k, v in value.items()) + " }"
        )
    return json.dumps(value)


def write_config(
    path: Path,
    endpoint: str,
    auth: Mapping[str, str],
    headers: Optional[Mapping[str, str]] = None,
    server: Optional[Mapping[str, Any]] = None,
    **backend: Any,
) -> Path:
    """A goose-proxy config.toml: ``[backend]`` with ``endpoint`` and ``backend`` keys,
    ``[backend.headers]``, ``[backend.auth]`` and, when given, ``[server]``."""
    lines = []
    if server:
        lines += ["[server]", *(f"{k} = {toml_value(v)}" for k, v in server.items()), ""]
    lines += ["[backend]", f"endpoint = {json.dumps(endpoint)}"]
    lines += [f"{k} = {toml_value(v)}" for k, v in backend.items()]
    if headers:
        lines += ["", "[backend.headers]"]
        lines += [f"{json.dumps(k)} = {json.dumps(v)}" for k, v in headers.items()]
    lines += ["", "[backend.auth]"]
    lines += [f"{k} = {json.dumps(v)}" for k, v in auth.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def pki_auth(pki: SimpleNamespace, **override: str) -> dict[str, str]:
    """``[backend.auth]`` for the test PKI's client pair and CA."""
    auth = {"cert_file": pki.cert_file, "key_file": pki.key_file, "ca_file": pki.ca_file}
    auth.update(override)
    return auth


def child_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """This environment without proxy variables, with an empty ``XDG_CONFIG_DIRS``."""
    env = {k: v for k, v in os.environ.items() if k not in PROXY_VARS}
    env["XDG_CONFIG_DIRS"] = str(tmp_path / "no-xdg")
    env.update(extra)
    return env


@functools.cache
def _pyenv_root() -> Optional[str]:
    if os.environ.get("PYENV_ROOT"):
        return os.environ["PYENV_ROOT"]
    exe = shutil.which("pyenv")
    if exe:
        try:
            out = subprocess.run([exe, "root"], capture_output=True, text=True, timeout=20)
            if out.returncode == 0 and out.stdout.strip():
                return out.stdout.strip()
        except (OSError, subprocess.TimeoutExpired):
            pass
    home = Path.home() / ".pyenv"
    return str(home) if home.is_dir() else None


@functools.cache
def find_python(version: str) -> Optional[str]:
    """An interpreter of ``version`` ("3.9"): pyenv's, else ``pythonX.Y`` on PATH; checked
    by running it (a pyenv shim for a version that is not selected fails)."""
    candidates = []
    root = _pyenv_root()
    if root:
        candidates += sorted(glob.glob(f"{root}/versions/{version}.*/bin/python{version}"))
    on_path = shutil.which(f"python{version}")
    if on_path:
        candidates.append(on_path)
    probe = "import sys; print('%d.%d' % sys.version_info[:2])"
    for exe in candidates:
        try:
            out = subprocess.run([exe, "-c", probe], capture_output=True, text=True, timeout=20)
        except (OSError, subprocess.TimeoutExpired):
            continue
        if out.returncode == 0 and out.stdout.strip() == version:
            return exe
    return None


def oldest_python() -> tuple[str, str]:
    """``(version, path)`` of the oldest interpreter of :data:`MATRIX` present, else this one."""
    for version in MATRIX:
        exe = find_python(version)
        if exe:
            return version, exe
    return f"{sys.version_info[0]}.{sys.version_info[1]}", sys.executable


def find_uv() -> Optional[list[str]]:
    """The uv command (``$UV`` under ``uv run``, or on PATH), or None."""
    env = os.environ.get("UV")
    if env and Path(env).is_file():
        return [env]
    exe = shutil.which("uv")
    return [exe] if exe else None
