"""Sphinx configuration for the goose-proxy man pages (``make man``).

Only the man builder is used; no extensions, nothing fetched from the network.
The version is read from ``goose_proxy/__init__.py`` as text, so building the
pages never imports (or needs the dependencies of) the package.
"""

from __future__ import annotations

import re
from pathlib import Path

_INIT = Path(__file__).resolve().parents[2] / "goose_proxy" / "__init__.py"
_match = re.search(r'^__version__\s*=\s*["\']([^"\']+)["\']', _INIT.read_text("utf-8"), re.M)
if _match is None:
    raise RuntimeError(f"no __version__ in {_INIT}")

project = "goose-proxy"
author = "goose-proxy developers"
copyright = "goose-proxy developers; Apache-2.0"
version = release = _match.group(1)

extensions: list[str] = []
# No index page: each man page is its own root; goose-proxy(7) is the main one.
root_doc = "goose-proxy"
exclude_patterns = ["_build"]
language = "en"
today_fmt = "%Y-%m-%d"

# (source, name, description, authors, section)
man_pages = [
    (
        "goose-proxy",
        "goose-proxy",
        "Chat Completions to Responses API translation proxy for Goose and RHEL Lightspeed",
        [author],
        7,
    ),
    (
        "goose-proxy-config",
        "goose-proxy-config",
        "goose-proxy configuration file",
        [author],
        5,
    ),
]
man_show_urls = True
