"""Packaging: ``uv build`` makes an sdist and a wheel whose only run-time requirements
are h11, anyio and (Python < 3.11) tomli; the wheel installs into a fresh venv on
Python 3.9 and 3.12 (where present) and its ``goose-proxy`` runs ``check``.

The venvs install from the package index (uv's cache makes later runs quick).
"""

from __future__ import annotations

import email.parser
import re
import subprocess
import tarfile
import zipfile
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import anyio
import pytest

import devbackend
import goose_proxy
from tests.subprocs import child_env, find_python, find_uv, pki_auth, write_config

ROOT = Path(__file__).resolve().parents[1]
WAIT = 120.0  # seconds, for a venv and an install from the index


@pytest.fixture(scope="module")
def uv() -> list[str]:
    found = find_uv()
    if found is None:
        pytest.skip("uv is not installed")
    return found


@pytest.fixture(scope="module")
def dists(uv: list[str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimpleNamespace]:
    """``uv build``: the sdist, then the wheel built from that sdist."""
    out = tmp_path_factory.mktemp("dist")
    proc = subprocess.run(
        [*uv, "build", "--quiet", "--out-dir", str(out), str(ROOT)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    (wheel,) = out.glob("*.whl")
    (sdist,) = out.glob("*.tar.gz")
    yield SimpleNamespace(wheel=wheel, sdist=sdist)


def _requirement_names(requires: list[str]) -> dict[str, str]:
    """``{"tomli": "python_version < '3.11'"}``: each requirement's name and marker."""
    out = {}
    for req in requires:
        spec, _, marker = req.partition(";")
        name = re.match(r"[A-Za-z0-9._-]+", spec.strip())
        assert name is not None, req
        out[name.group(0).lower()] = marker.strip()
    return out


def test_wheel_metadata(dists: SimpleNamespace) -> None:
    assert dists.wheel.name == f"goose_proxy-{goose_proxy.__version__}-py3-none-any.whl"
    with zipfile.ZipFile(dists.wheel) as z:
        names = z.namelist()
        info = f"goose_proxy-{goose_proxy.__version__}.dist-info"
        meta = email.parser.Parser().parsestr(z.read(f"{info}/METADATA").decode())
        entry_points = z.read(f"{info}/entry_points.txt").decode()
    requires = _requirement_names(meta.get_all("Requires-Dist") or [])
    assert set(requires) == {"h11", "anyio", "tomli"}
    assert requires["h11"] == "" and requires["anyio"] == ""
    assert re.fullmatch(r"python_version ?< ?['\"]3\.11['\"]", requires["tomli"])
    assert meta["Requires-Python"] == ">=3.9"
    assert meta["License-Expression"] == "Apache-2.0"
    assert "goose-proxy = goose_proxy.cli:main" in entry_points
    # the package only: no tests, development backend or benchmarks
    assert {n.split("/")[0] for n in names} == {"goose_proxy", info}
    assert "goose_proxy/api.py" in names and f"{info}/licenses/LICENSE" in names


def test_sdist_contents(dists: SimpleNamespace) -> None:
    prefix = f"goose_proxy-{goose_proxy.__version__}/"
    with tarfile.open(dists.sdist) as t:
        names = {n[len(prefix) :] for n in t.getnames()}
    for needed in (
        "pyproject.toml",
        "uv.lock",
        "LICENSE",
        "README.md",
        "Makefile",
        "goose_proxy/cli.py",
        "tools/build_pyz.py",
        "docs/embedding.md",
        "docs/man/goose-proxy.rst",
        "tests/conftest.py",
        "devbackend/__init__.py",
    ):
        assert needed in names, needed
    assert not [n for n in names if "__pycache__" in n or n.startswith(("docs/_build", ".venv"))]


@pytest.mark.anyio
@pytest.mark.parametrize("version", ["3.9", "3.12"])
async def test_wheel_installs_and_checks(
    uv: list[str], dists: SimpleNamespace, pki: SimpleNamespace, tmp_path: Path, version: str
) -> None:
    python = find_python(version)
    if python is None:
        pytest.skip(f"no Python {version} interpreter on this host (pyenv or python{version})")
    venv = tmp_path / "venv"
    env = child_env(tmp_path, UV_PYTHON_DOWNLOADS="never")
    env.pop("VIRTUAL_ENV", None)
    with anyio.fail_after(WAIT):
        for cmd in (
            [*uv, "venv", "--quiet", "--python", python, str(venv)],
            [*uv, "pip", "install", "--quiet", "--python", str(venv / "bin" / "python"),
             str(dists.wheel)],
        ):  # fmt: skip
            done = await anyio.run_process(cmd, check=False, env=env)
            assert done.returncode == 0, done.stderr.decode()
        freeze = await anyio.run_process(
            [*uv, "pip", "freeze", "--python", str(venv / "bin" / "python")], env=env
        )
    installed = {
        re.split(r"[=@ ]", line, maxsplit=1)[0].lower()
        for line in freeze.stdout.decode().splitlines()
        if line.strip()
    }
    # the run-time closure: h11, anyio (and what anyio needs on this Python), tomli < 3.11
    assert {"goose-proxy", "h11", "anyio", "idna"} <= installed
    assert ("tomli" in installed) == (version == "3.9")
    assert installed <= {
        "goose-proxy", "h11", "anyio", "idna", "sniffio", "tomli", "exceptiongroup",
        "typing-extensions",
    }  # fmt: skip

    exe = str(venv / "bin" / "goose-proxy")
    with anyio.fail_after(WAIT):
        got = await anyio.run_process([exe, "--version"], check=False, env=env)
        assert got.returncode == 0, got.stderr.decode()
        assert got.stdout.decode().strip() == f"goose-proxy {goose_proxy.__version__}"
        async with devbackend.run(tls=pki.server_context()) as backend:
            cfg = write_config(tmp_path / "c.toml", backend.url, pki_auth(pki))
            proc = await anyio.run_process(
                [exe, "--config", str(cfg), "check"],
                check=False,
                env=env,
                stdin=subprocess.DEVNULL,
            )
    out = proc.stdout.decode()
    assert proc.returncode == 0, out + proc.stderr.decode()
    assert out.rstrip().endswith("verdict: ready")
    assert "consumer-0001" in (backend.stats.client_subjects[-1] or "")
