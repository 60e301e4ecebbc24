"""Test helpers: a Config for a backend, and the proxy running in this event loop."""

from __future__ import annotations

import dataclasses
import socket
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Optional

import anyio

from goose_proxy.config import AuthConfig, BackendConfig, Config, ServerConfig
from goose_proxy.http.server import ProxyServer
from goose_proxy.upstream import tls

#: the real Lightspeed Stack 0.7.1 captures (see its README.md)
FIXTURES = Path(__file__).resolve().parent / "fixtures" / "lightspeed-0.7.1"


def make_config(endpoint: str, auth: Optional[AuthConfig] = None, **sections: Any) -> Config:
    """A Config on port 0 for ``endpoint``; ``sections`` override fields per section,
    e.g. ``backend={"timeout": 0.5}``, ``server={"max_body_size": 2048}``."""
    backend_kw = dict(sections.pop("backend", {}))
    backend = BackendConfig(endpoint=endpoint, auth=auth or AuthConfig(), **backend_kw)
    server = ServerConfig(port=0, **sections.pop("server", {}))
    cfg = Config(server=server, backend=backend)
    for name, values in sections.items():
        cfg = dataclasses.replace(cfg, **{name: dataclasses.replace(getattr(cfg, name), **values)})
    return cfg


@asynccontextmanager
async def running_proxy(config: Config) -> AsyncIterator[SimpleNamespace]:
    """The proxy serving ``config`` in this event loop; yields ``.url`` and ``.server``."""
    server = ProxyServer(config)
    await server.open_listeners()
    host, port = server.bound[0]
    async with anyio.create_task_group() as tg:
        await tg.start(server.serve)
        try:
            yield SimpleNamespace(url=f"http://{host}:{port}", port=port, server=server)
        finally:
            with anyio.CancelScope(shield=True):
                await server.shutdown()
            tg.cancel_scope.cancel()


async def sdk_stream_final(client: Any, **kwargs: Any) -> Any:
    """Stream a chat completion with the openai SDK and rebuild it with the SDK's own
    accumulator (``ChatCompletionStreamState``). Unlike ``chat.completions.stream``,
    this does not insist on strict tools (older SDKs refuse Goose's non-strict ones)."""
    from openai.lib.streaming.chat import ChatCompletionStreamState

    state: Any = ChatCompletionStreamState()
    stream = await client.chat.completions.create(stream=True, **kwargs)
    async for chunk in stream:
        state.handle_chunk(chunk)
    return state.get_final_completion()


@contextmanager
def refusing_port() -> Iterator[int]:
    """A port bound but not listening: a connection to it is refused at once."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    try:
        yield s.getsockname()[1]
    finally:
        s.close()


@contextmanager
def silent_listener() -> Iterator[int]:
    """A port that accepts TCP connections (the kernel does) and never says a word."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(8)
    try:
        yield s.getsockname()[1]
    finally:
        s.close()


def encrypted_copy(key: Path, dest: Path, passphrase: bytes = b"secret") -> Path:
    """``key`` (PEM) written to ``dest`` encrypted with ``passphrase``."""
    from cryptography.hazmat.primitives import serialization

    private = serialization.load_pem_private_key(key.read_bytes(), None)
    dest.write_bytes(
        private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(passphrase),
        )
    )
    return dest


def issue_client_pair(ca: Any, name: str, directory: Path, **validity: Any) -> tuple[Path, Path]:
    """A client certificate and key from the test CA ``ca`` (trustme), for ``name``,
    written to ``directory``; ``validity``: e.g. ``not_after`` in the past."""
    leaf = ca.issue_cert(f"{name}@example.com", common_name=name, **validity)
    cert, key = directory / f"{name}-cert.pem", directory / f"{name}-key.pem"
    leaf.cert_chain_pems[0].write_to_path(str(cert))
    leaf.private_key_pem.write_to_path(str(key))
    return cert, key


class CertClock:
    """The clock the proxy's certificate re-check reads (``tls._now``), moved by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def pass_recheck_interval(self) -> None:
        """The next backend request looks at the certificate files again."""
        self.now += tls.RECHECK_INTERVAL

    def pass_renewal_grace(self) -> None:
        """An unloadable pair is no longer covered by the one loaded before."""
        self.now += tls.RENEWAL_GRACE
