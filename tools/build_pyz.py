"""Build ``dist/goose-proxy.pyz``: goose-proxy and its run-time dependencies in one file.

The result is a standard ``zipapp`` archive that runs on the host's own Python
(3.9 on RHEL 9, or newer) without a virtual environment or pip::

    python3 goose-proxy.pyz --config /etc/xdg/goose-proxy/config.toml
    ./goose-proxy.pyz check          # the archive starts with "#!/usr/bin/env python3"

It bundles the ``goose_proxy`` package and the dependencies locked in
``uv.lock`` for the oldest supported Python (h11, anyio and what anyio needs
there: exceptiongroup, idna, typing_extensions; tomli), so that the one file
serves every Python from 3.9 on: on newer versions the extra back-ports are
simply not imported. Only pure-Python wheels are accepted (checked), because a
compiled module cannot be imported from a zip file and would tie the file to
one Python version.

Needs ``uv`` (run as ``make pyz``, or ``uv run python tools/build_pyz.py``) and,
the first time, access to the package index (later runs use uv's cache).
``SOURCE_DATE_EPOCH`` sets the file times inside the archive.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import zipapp
from pathlib import Path
from typing import Optional

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "goose_proxy"
DEFAULT_OUTPUT = ROOT / "dist" / "goose-proxy.pyz"
#: the oldest Python the bundle must run on (RHEL 9's)
DEFAULT_PYTHON_VERSION = "3.9"
INTERPRETER = "/usr/bin/env python3"
# Old enough Python to read (2.7 on): RHEL 8's python3 is 3.6, and the package
# itself does not even compile there; a clear word instead of a traceback.
MAIN = """\
import sys

if sys.version_info < (3, 9):
    sys.exit(
        "goose-proxy needs Python 3.9 or later; %s is Python %d.%d"
        % (sys.executable or "this interpreter", sys.version_info[0], sys.version_info[1])
    )

try:
    from goose_proxy.cli import main
except KeyboardInterrupt:  # Ctrl-C while its modules load: as main() says it
    sys.exit(130)

sys.exit(main())
"""


class BuildError(Exception):
    pass


def find_uv() -> list[str]:
    """The uv command: ``$UV`` (set by ``uv run``), ``uv`` on PATH, or ``python -m uv``."""
    env = os.environ.get("UV")
    if env and Path(env).is_file():
        return [env]
    found = shutil.which("uv")
    if found:
        return [found]
    return [sys.executable, "-m", "uv"]


def run(cmd: list[str], **kwargs: object) -> None:
    try:
        subprocess.run(cmd, check=True, **kwargs)  # type: ignore[call-overload]
    except FileNotFoundError as e:
        raise BuildError(f"{cmd[0]} not found: install uv (pip install uv)") from e
    except subprocess.CalledProcessError as e:
        raise BuildError(f"{' '.join(cmd[:3])} ... failed with status {e.returncode}") from e


def install_dependencies(uv: list[str], stage: Path, python_version: str) -> None:
    """The locked run-time dependencies, as pure-Python files, into ``stage``."""
    requirements = stage.parent / "requirements.txt"
    run(
        [*uv, "export", "--project", str(ROOT), "--frozen", "--no-dev", "--no-default-groups",
         "--no-emit-project", "--no-hashes", "--format", "requirements-txt", "--quiet",
         "--output-file", str(requirements)],
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    run(
        [*uv, "pip", "install", "--quiet", "--target", str(stage), "--python-version",
         python_version, "--no-deps", "--only-binary", ":all:", "--no-compile",
         "--requirements", str(requirements)],
    )  # fmt: skip


def check_pure(stage: Path) -> list[str]:
    """The bundled distributions (``name-version``); BuildError unless all are pure."""
    dists = []
    for info in sorted(stage.glob("*.dist-info")):
        wheel = (info / "WHEEL").read_text()
        tags = [
            line.split(":", 1)[1].strip() for line in wheel.splitlines() if line.startswith("Tag:")
        ]
        pure = "Root-Is-Purelib: true" in wheel and all(t.endswith("-none-any") for t in tags)
        if not pure:
            raise BuildError(f"{info.name[:-10]} is not a pure-Python wheel ({', '.join(tags)})")
        dists.append(info.name[: -len(".dist-info")])
    compiled = [p for p in stage.rglob("*") if p.suffix in (".so", ".pyd", ".dylib")]
    if compiled:
        raise BuildError(f"compiled modules cannot run from a zip file: {compiled[0].name}")
    return dists


def stage_package(stage: Path) -> None:
    shutil.copytree(
        ROOT / PACKAGE,
        stage / PACKAGE,
        ignore=lambda d, names: [n for n in names if n == "__pycache__" or n.endswith(".pyc")],
    )
    (stage / "__main__.py").write_text(MAIN)


def tidy(stage: Path, epoch: Optional[int]) -> None:
    """No scripts, no byte code; optionally one file time for everything."""
    shutil.rmtree(stage / "bin", ignore_errors=True)
    for cache in list(stage.rglob("__pycache__")):
        shutil.rmtree(cache)
    for info in stage.glob("*.dist-info"):
        (info / "RECORD").unlink(missing_ok=True)  # lists files (bin/) that are gone
        (info / "INSTALLER").unlink(missing_ok=True)
    if epoch is not None:
        for p in stage.rglob("*"):
            os.utime(p, (epoch, epoch))


def build(output: Path, python_version: str = DEFAULT_PYTHON_VERSION) -> list[str]:
    """Build the archive at ``output``; returns the bundled distributions."""
    uv = find_uv()
    epoch_env = os.environ.get("SOURCE_DATE_EPOCH")
    epoch = max(int(epoch_env), 315532800) if epoch_env else None  # zip cannot go before 1980
    output.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="goose-proxy-pyz-") as tmp:
        stage = Path(tmp) / "stage"
        stage.mkdir()
        install_dependencies(uv, stage, python_version)
        dists = check_pure(stage)
        stage_package(stage)
        tidy(stage, epoch)
        partial = output.with_name(output.name + ".part")
        zipapp.create_archive(stage, partial, interpreter=INTERPRETER, compressed=True)
        partial.chmod(0o755)
        partial.replace(output)
    return dists


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="build_pyz.py", description=__doc__.split("\n\n")[0])
    p.add_argument(
        "-o", "--output", type=Path, default=DEFAULT_OUTPUT, help="default: dist/goose-proxy.pyz"
    )
    p.add_argument(
        "--python-version",
        default=DEFAULT_PYTHON_VERSION,
        help="the oldest Python the archive must run on (default %(default)s)",
    )
    args = p.parse_args(argv)
    try:
        dists = build(args.output, args.python_version)
    except BuildError as e:
        print(f"build_pyz: {e}", file=sys.stderr)
        return 1
    size = args.output.stat().st_size
    print(f"built {args.output} ({size // 1024} KiB) with {', '.join(dists)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
