"""The embedding API: docs/embedding.md runs as written; ``import goose_proxy`` is cheap.

The ``python`` blocks of ``docs/embedding.md`` run in order in one namespace
(as a reader would paste them), not as ``__main__``; then the example's
``main(config)`` serves a real request against the scripted mTLS backend, and
the first block also runs as a script, its ``__main__`` part reading the
configuration through ``XDG_CONFIG_DIRS`` as the daemon does.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import anyio
import httpx
import pytest

import devbackend
import goose_proxy
import goose_proxy.api
from tests.support import make_config

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "embedding.md"
QUESTION = "How do I list open ports?"


def python_blocks() -> list[str]:
    blocks = re.findall(r"^```python\n(.*?)^```$", DOC.read_text(), flags=re.M | re.S)
    assert len(blocks) >= 5, "docs/embedding.md lost its examples"
    return blocks


def run_blocks() -> dict[str, Any]:
    namespace: dict[str, Any] = {"__name__": "embedding_doc"}
    for i, block in enumerate(python_blocks()):
        exec(compile(block, f"{DOC}:block{i + 1}", "exec"), namespace)
    return namespace


def test_the_translation_examples_hold() -> None:
    ns = run_blocks()  # the asserts in the examples are the test
    assert ns["frames"][-1] == goose_proxy.DONE_FRAME
    assert isinstance(ns["config"], goose_proxy.Config)


async def test_the_serving_example_against_the_backend(pki: SimpleNamespace) -> None:
    ns = run_blocks()
    with anyio.fail_after(15):
        async with devbackend.run(tls=pki.server_context()) as backend:
            answer = await ns["main"](make_config(backend.url, pki.auth))
    assert answer.endswith(f"You said: {QUESTION}")
    assert "consumer-0001" in (backend.requests[-1].client_subject or "")


async def test_the_serving_example_as_a_script(pki: SimpleNamespace, tmp_path: Path) -> None:
    script = tmp_path / "example.py"
    script.write_text(python_blocks()[0])
    xdg = tmp_path / "xdg"
    (xdg / "goose-proxy").mkdir(parents=True)
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
    env["XDG_CONFIG_DIRS"] = str(xdg)
    with anyio.fail_after(30):
        async with devbackend.run(tls=pki.server_context()) as backend:
            auth = {"cert_file": pki.cert_file, "key_file": pki.key_file, "ca_file": pki.ca_file}
            (xdg / "goose-proxy" / "config.toml").write_text(
                f"[backend]\nendpoint = {json.dumps(backend.url)}\n[backend.auth]\n"
                + "".join(f"{k} = {json.dumps(v)}\n" for k, v in auth.items())
            )
            proc = await anyio.run_process(
                [sys.executable, str(script)],
                check=False,
                env=env,
                cwd=str(tmp_path),
                stdin=subprocess.DEVNULL,
            )
    out = proc.stdout.decode()
    assert proc.returncode == 0, proc.stderr.decode()
    assert "goose-proxy is listening on http://127.0.0.1:" in out
    assert out.rstrip().endswith(f"You said: {QUESTION}")


# --- the API itself -------------------------------------------------------------------


def test_every_public_name_resolves_and_is_documented() -> None:
    doc = DOC.read_text()
    names = set(goose_proxy.__all__) - {"__version__"}
    assert names == set(goose_proxy._EXPORTS)
    assert set(goose_proxy.api.__all__) <= names
    for name in names:
        value = getattr(goose_proxy, name)
        assert value is getattr(importlib_module(goose_proxy._EXPORTS[name]), name)
        assert f"`{name}" in doc, f"{name} is not documented in docs/embedding.md"
    assert set(dir(goose_proxy)) >= names
    with pytest.raises(AttributeError, match="no attribute 'nothing_here'"):
        goose_proxy.nothing_here  # noqa: B018


def test_the_recipe_answers_a_functions_or_structured_output_client_as_the_proxy() -> None:
    # what docs/embedding.md tells an embedder to pass on from the ChatRequest
    options = goose_proxy.TranslateOptions(flavor="openai")
    user = [{"role": "user", "content": "x"}]
    legacy = goose_proxy.chat_to_responses(
        {"model": "m", "messages": user, "functions": [{"name": "f"}]}, options
    )
    call = {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"}
    answer = {"id": "r", "created_at": 1, "status": "completed", "output": [call]}
    completion = goose_proxy.responses_to_chat(answer, legacy.client_model)
    assert legacy.legacy_functions and goose_proxy.as_function_call(completion) == 0
    choice = completion["choices"][0]
    assert choice["message"]["function_call"] == {"name": "f", "arguments": "{}"}
    assert "tool_calls" not in choice["message"] and choice["finish_reason"] == "function_call"

    schema = {"type": "json_schema", "json_schema": {"name": "s", "schema": {"type": "object"}}}
    structured = goose_proxy.chat_to_responses(
        {"model": "m", "messages": user, "response_format": schema}, options
    )
    refusal = {"type": "message", "id": "m1", "role": "assistant",
               "content": [{"type": "refusal", "refusal": "No."}]}  # fmt: skip
    answer = {**answer, "output": [refusal]}
    message = goose_proxy.responses_to_chat(
        answer, structured.client_model, structured.refusal_in_content
    )["choices"][0]["message"]
    assert not structured.refusal_in_content
    assert message["content"] is None and message["refusal"] == "No."


def importlib_module(name: str) -> Any:
    import importlib

    return importlib.import_module(name)


def test_import_goose_proxy_loads_nothing_heavy() -> None:
    code = (
        "import sys, goose_proxy\n"
        "heavy = {'anyio', 'h11', 'ssl', 'asyncio', 'goose_proxy.api', 'goose_proxy.config'}\n"
        "print(sorted(heavy & set(sys.modules)))\n"
        "goose_proxy.chat_to_responses, goose_proxy.load_config, goose_proxy.StreamTranslator\n"
        "goose_proxy.SSEParser, goose_proxy.translate_options\n"
        "print(sorted({'anyio', 'h11', 'asyncio'} & set(sys.modules)))\n"
        "goose_proxy.serve_in_background\n"
        "print('anyio' in sys.modules)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=30, check=True
    )
    # even the serving entry point loads anyio only when it runs
    assert proc.stdout.split("\n")[:3] == ["[]", "[]", "False"]


async def test_serve_in_background_on_a_given_socket(pki: SimpleNamespace) -> None:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    port = sock.getsockname()[1]
    with anyio.fail_after(15):
        async with devbackend.run(tls=pki.server_context()) as backend:
            config = make_config(backend.url, pki.auth)
            async with goose_proxy.serve_in_background(config, sockets=[sock]) as running:
                assert running.port == port
                assert running.url == f"http://127.0.0.1:{port}"
                assert running.addresses == [("127.0.0.1", port)]
                async with httpx.AsyncClient(timeout=10, trust_env=False) as c:
                    r = await c.get(running.url + "/health")
            assert r.status_code == 200
            # stopped: the socket is closed
            assert sock.fileno() == -1 or not _accepts(port)


async def test_serve_in_background_on_a_unix_socket_alone_says_why_not(tmp_path: Path) -> None:
    # it has no URL to report: an IndexError came out of serve_in_background
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(tmp_path / "proxy.sock"))
    sock.listen()
    with anyio.fail_after(10), pytest.raises(ValueError, match="needs a TCP socket"):
        async with goose_proxy.serve_in_background(goose_proxy.Config(), sockets=[sock]):
            pass  # never entered
    assert sock.fileno() == -1  # owned: closed, as a served one is


async def test_a_config_built_in_code_is_checked_as_a_files_values_are() -> None:
    config = goose_proxy.Config(server=goose_proxy.ServerConfig(port=70000))
    with anyio.fail_after(10), pytest.raises(goose_proxy.ConfigError) as exc:
        async with goose_proxy.serve_in_background(config):
            pass  # not reached: it served on port 70000 - 65536 = 4464
    assert str(exc.value) == "server.port: 70000 is out of range (0..65535)"


async def test_a_refused_config_closes_the_sockets_it_was_given() -> None:
    # they are the proxy's once given, served or not: a refused config left
    # them open (and listening) for the caller to find
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    config = goose_proxy.Config(server=goose_proxy.ServerConfig(max_connections=0))
    with anyio.fail_after(10), pytest.raises(goose_proxy.ConfigError):
        async with goose_proxy.serve_in_background(config, sockets=[sock]):
            pass  # not reached
    assert sock.fileno() == -1


def test_a_config_built_in_code_keeps_what_a_file_cannot_write() -> None:
    # JSON's null and tuples in extra_body, a mapping that is no dict, a
    # port of 0: valid in code though TOML has no null, and kept as given
    from types import MappingProxyType

    from goose_proxy.config import validated

    backend = goose_proxy.BackendConfig(
        extra_body={"rag": {"ids": ("a", "b"), "filter": None}},
        headers=MappingProxyType({"X-Tenant": "t1"}),
    )
    config = goose_proxy.Config(server=goose_proxy.ServerConfig(port=0), backend=backend)
    checked = validated(config)
    assert dict(checked.backend.extra_body) == {"rag": {"ids": ["a", "b"], "filter": None}}
    assert dict(checked.backend.headers) == {"X-Tenant": "t1"}
    assert checked.server == config.server and checked.source is None
    assert validated(checked) == checked  # once checked, the same again


def test_a_config_built_in_code_with_none_where_a_value_is_needed_is_refused(
    tmp_path: Path,
) -> None:
    # (an embedder's endpoint=os.environ.get("URL") with URL unset): not the
    # production endpoint and the host's identity in its place
    from goose_proxy.config import validated

    with pytest.raises(goose_proxy.ConfigError) as exc:
        validated(goose_proxy.Config(backend=goose_proxy.BackendConfig(endpoint=None)))  # type: ignore[arg-type]
    assert str(exc.value) == "backend.endpoint: expected a string, got NoneType"
    # paths and sets are what they stand for
    auth = goose_proxy.AuthConfig(cert_file=tmp_path / "c.pem", key_file=tmp_path / "k.pem")  # type: ignore[arg-type]
    hosts = goose_proxy.ServerConfig(allowed_hosts=frozenset({"b.lan", "a.lan"}))  # type: ignore[arg-type]
    checked = validated(
        goose_proxy.Config(server=hosts, backend=goose_proxy.BackendConfig(auth=auth))
    )
    assert checked.backend.auth.cert_file == str(tmp_path / "c.pem")
    assert checked.server.allowed_hosts == ("a.lan", "b.lan")


def _accepts(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    except OSError:
        return False
    return True


def test_translate_options_follow_the_config() -> None:
    config = goose_proxy.parse_config(
        {
            "backend": {"flavor": "openai", "model": "passthrough", "extra_body": {"x": 1}},
            "translate": {"system_messages": "input"},
        }
    )
    assert goose_proxy.translate_options(config) == goose_proxy.TranslateOptions(
        flavor="openai", model="passthrough", system_messages="input", extra_body={"x": 1}
    )


@pytest.mark.parametrize(("flavor", "mode"), [("lightspeed", "drop"), ("openai", "input")])
def test_system_messages_unset_in_the_config_follow_the_flavour(flavor: str, mode: str) -> None:
    config = goose_proxy.parse_config({"backend": {"flavor": flavor}})
    assert config.translate.system_messages is None
    assert goose_proxy.translate_options(config).system_messages == mode


def test_serve_in_background_needs_an_asyncio_loop() -> None:
    # driven without any event loop (as under trio there is no asyncio one):
    # a clear error, not a failure deep inside a socket call
    from goose_proxy.api import serve_in_background
    from goose_proxy.config import Config

    sock = socket.socket()
    entering = serve_in_background(Config(), sockets=[sock]).__aenter__()
    with pytest.raises(RuntimeError, match="needs an asyncio event loop"):
        entering.send(None)
    entering.close()
    assert sock.fileno() == -1  # owned, also when refused
