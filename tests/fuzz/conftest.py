"""The fuzz suite's settings and target.

Hypothesis profiles:

* without ``--hypothesis-profile``: a short run for CI (50 examples per
  test), derandomized (the same examples every time), a few seconds in all;
* ``long``: thousands of examples per test, random each run, failures kept in
  Hypothesis' example database (``.hypothesis/``) to replay::

      make fuzz-long   # = uv run pytest tests/fuzz -p no:randomly --hypothesis-profile=long

The target is one proxy in front of one scripted backend (mTLS), both on
loopback in an event loop of their own (a background thread), so that a hang
in the proxy can never hold up the client, which runs in a second loop and
bounds every exchange with ``fail_after``.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from types import SimpleNamespace

import pytest
from anyio.from_thread import start_blocking_portal
from hypothesis import settings

import devbackend
from tests.fuzz import COMMON
from tests.support import make_config, running_proxy

# Only a "long" profile is registered: the "default" one is left alone so that
# the other Hypothesis tests of the session keep their settings; the CI run's
# settings are set on the fuzz tests themselves (checks.FUZZ).
settings.register_profile("long", max_examples=3000, **COMMON)

#: the fuzz target's limits: small enough that fuzzed sizes cross them
SERVER = {
    "max_body_size": 64 * 1024,
    "max_header_size": 4096,
    "max_header_count": 32,
    "header_timeout": 2.0,
    "keepalive_timeout": 2.0,
}


class _Errors(logging.Handler):
    """Collects ERROR records of the proxy (a bug it survived is still a bug)."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@asynccontextmanager
async def _serve(pki: SimpleNamespace) -> AsyncIterator[SimpleNamespace]:
    async with devbackend.run(tls=pki.server_context()) as backend:
        cfg = make_config(backend.url, pki.auth, backend={"proxy": ""}, server=SERVER)
        async with running_proxy(cfg) as proxy:
            yield SimpleNamespace(port=proxy.port, url=proxy.url, backend=backend, proxy=proxy)


@pytest.fixture(scope="session")
def target(pki: SimpleNamespace) -> Iterator[SimpleNamespace]:
    errors = _Errors()
    logger = logging.getLogger("goose_proxy")
    logger.addHandler(errors)
    try:
        with start_blocking_portal() as server_loop, start_blocking_portal() as client_loop:
            with server_loop.wrap_async_context_manager(_serve(pki)) as t:
                t.call = client_loop.call
                t.errors = errors.records
                yield t
    finally:
        logger.removeHandler(errors)
