"""``make pyz``: the single-file zipapp runs on a bare Python, 3.9 (RHEL 9's) to 3.12.

The archive is built by ``tools/build_pyz.py`` (needs uv and, the first time,
the package index), then run with ``python -S``: no site-packages, so every
dependency must come from the archive itself.
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import anyio
import anyio.abc
import httpx
import pytest

import devbackend
from tests.subprocs import child_env, find_python, find_uv, oldest_python, pki_auth, write_config

ROOT = Path(__file__).resolve().parents[1]
WAIT = 30.0


@pytest.fixture(scope="module")
def pyz(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    if find_uv() is None:
        pytest.skip("uv is not installed: tools/build_pyz.py needs it")
    out = tmp_path_factory.mktemp("pyz") / "goose-proxy.pyz"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "build_pyz.py"), "-o", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    yield out


#: Ctrl-C as the modules load, made exact: importing goose_proxy.cli is interrupted
_INTERRUPTED_IMPORT = (
    "import runpy, sys\n"
    "class Interrupt:\n"
    "    def find_spec(self, name, path=None, target=None):\n"
    "        if name == 'goose_proxy.cli':\n"
    "            raise KeyboardInterrupt\n"
    "sys.meta_path.insert(0, Interrupt())\n"
    "where = sys.argv[1]\n"
    "if where == 'module':\n"
    "    runpy.run_module('goose_proxy', run_name='__main__', alter_sys=True)\n"
    "else:\n"
    "    runpy.run_path(where, run_name='__main__')\n"
)


@pytest.mark.parametrize("entry", ["module", "pyz"])
def test_ctrl_c_while_the_modules_load_exits_130(
    entry: str, request: pytest.FixtureRequest
) -> None:
    # a KeyboardInterrupt traceback (and death by SIGINT) came out of a Ctrl-C
    # in the first tenth of a second, before main() could catch it
    where = "module" if entry == "module" else str(request.getfixturevalue("pyz"))
    proc = subprocess.run(
        [sys.executable, "-c", _INTERRUPTED_IMPORT, where],
        cwd=ROOT, capture_output=True, text=True, timeout=WAIT,
    )  # fmt: skip
    assert proc.returncode == 130, proc.stderr
    assert "Traceback" not in proc.stderr


def test_archive_contents(pyz: Path) -> None:
    with zipfile.ZipFile(pyz) as z:
        names = z.namelist()
        main = z.read("__main__.py").decode()
    assert pyz.read_bytes().startswith(b"#!/usr/bin/env python3\n")
    assert "sys.exit(main())" in main
    assert main.index("sys.version_info < (3, 9)") < main.index("from goose_proxy")
    tops = {n.split("/")[0] for n in names}
    for package in ("goose_proxy", "anyio", "h11", "tomli", "exceptiongroup", "idna"):
        assert package in tops, package
    assert "typing_extensions.py" in tops
    assert "goose_proxy/cli.py" in names and "goose_proxy/upstream/client.py" in names
    # nothing that cannot be imported from a zip, nothing that is only for development
    assert not [n for n in names if n.endswith((".so", ".pyd", ".pyc"))]
    assert not tops & {"devbackend", "tests", "trustme", "httpx", "pytest", "bin"}


@pytest.mark.anyio
async def test_pyz_serves_a_chat_request_on_the_oldest_python(
    pyz: Path, pki: SimpleNamespace, tmp_path: Path
) -> None:
    _version, python = oldest_python()  # 3.9 where present
    stderr = bytearray()
    with anyio.fail_after(WAIT):
        async with devbackend.run(tls=pki.server_context()) as backend:
            cfg = write_config(
                tmp_path / "c.toml",
                backend.url,
                pki_auth(pki),
                server={"host": "127.0.0.1", "port": 0},
            )
            cmd = [python, "-S", str(pyz), "--config", str(cfg)]
            async with await anyio.open_process(
                cmd, env=child_env(tmp_path), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL
            ) as proc:
                port = await _listening_port(proc, stderr)
                async with anyio.create_task_group() as tg:
                    tg.start_soon(_drain, proc, stderr)
                    async with httpx.AsyncClient(timeout=10, trust_env=False) as c:
                        r = await c.post(
                            f"http://127.0.0.1:{port}/v1/chat/completions",
                            json={"model": "m", "messages": [{"role": "user", "content": "zip"}]},
                        )
                    proc.send_signal(signal.SIGTERM)
                    rc = await proc.wait()
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["message"]["content"].endswith("You said: zip")
    assert "consumer-0001" in (backend.requests[-1].client_subject or "")
    assert rc == 0, stderr.decode()
    assert "POST /v1/chat/completions 200" in stderr.decode()


async def _listening_port(proc: anyio.abc.Process, stderr: bytearray) -> int:
    assert proc.stderr is not None
    while True:
        m = re.search(rb"listening on 127\.0\.0\.1:(\d+)", stderr)
        if m:
            return int(m.group(1))
        try:
            stderr += await proc.stderr.receive()
        except anyio.EndOfStream:
            raise AssertionError(f"the proxy exited: {stderr.decode()}") from None


async def _drain(proc: anyio.abc.Process, stderr: bytearray) -> None:
    assert proc.stderr is not None
    async for chunk in proc.stderr:
        stderr += chunk


@pytest.mark.parametrize("version", ["2.7", "3.6", "3.8"])
def test_pyz_on_a_python_too_old_says_so(pyz: Path, version: str) -> None:
    # RHEL 8's python3 is 3.6: a sentence, not a SyntaxError from deep inside
    python = find_python(version)
    if python is None:
        pytest.skip(f"no Python {version} interpreter on this host (pyenv or python{version})")
    got = subprocess.run(
        [python, "-S", str(pyz), "--version"], capture_output=True, text=True, timeout=WAIT
    )
    assert got.returncode == 1
    assert (
        got.stderr.strip() == f"goose-proxy needs Python 3.9 or later; {python} is Python {version}"
    )


@pytest.mark.anyio
@pytest.mark.parametrize("version", ["3.9", "3.12"])
async def test_pyz_checks_the_backend(
    pyz: Path, pki: SimpleNamespace, tmp_path: Path, version: str
) -> None:
    python = find_python(version)
    if python is None:
        pytest.skip(f"no Python {version} interpreter on this host (pyenv or python{version})")
    with anyio.fail_after(WAIT):
        got = await anyio.run_process([python, "-S", str(pyz), "--version"], check=False)
        assert got.returncode == 0
        assert got.stdout.decode().startswith("goose-proxy ")
        async with devbackend.run(tls=pki.server_context()) as backend:
            cfg = write_config(tmp_path / "c.toml", backend.url, pki_auth(pki))
            proc = await anyio.run_process(
                [python, "-S", str(pyz), "--config", str(cfg), "check"],
                check=False,
                env=child_env(tmp_path),
                stdin=subprocess.DEVNULL,
            )
    out = proc.stdout.decode()
    assert proc.returncode == 0, out + proc.stderr.decode()
    assert out.rstrip().endswith("verdict: ready")
