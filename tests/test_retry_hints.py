"""Retry hints: what tells an OpenAI client whether to send a failed request again.

The openai SDK (``_should_retry`` in its ``_base_client.py``) obeys
``x-should-retry: true``/``false`` first, waits ``retry-after-ms`` (else
``Retry-After``) when the answer gives one, and otherwise retries 408, 409,
429 and any 5xx. The proxy repeats the backend's hints on its error answers,
on both POST endpoints, and says ``x-should-retry: false`` on its own errors
that a retry cannot fix (docs/api-translation.md §4).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Optional

import anyio
import anyio.abc
import openai
import pytest

from goose_proxy.config import AuthConfig
from tests.goose_rules import goose_error_kind
from tests.reliability.support import (
    HELLO,
    FakeServer,
    fake_server,
    http_answer,
    post,
    read_request_head,
)
from tests.support import make_config, running_proxy

pytestmark = pytest.mark.anyio

JSON = ("content-type", "application/json")
DETAIL = json.dumps({"detail": "backend trouble"}).encode()  # Lightspeed's FastAPI shape
ENVELOPE = json.dumps(
    {"error": {"message": "backend trouble", "type": "server_error", "param": None, "code": None}}
).encode()
RESPONSE = json.dumps({
    "id": "resp_1", "object": "response", "created_at": 1, "model": "m", "status": "completed",
    "output": [{"type": "message", "id": "msg_1", "role": "assistant", "status": "completed",
                "content": [{"type": "output_text", "text": "hi", "annotations": []}]}],
}).encode()  # fmt: skip
CHAT = "/v1/chat/completions"
RESPONSES = "/v1/responses"


@asynccontextmanager
async def backend(pki: SimpleNamespace, *answers: bytes) -> AsyncIterator[FakeServer]:
    """A TLS backend answering its n-th request with ``answers[n]`` (the last one
    for every request after); ``requests`` records what it got."""

    async def handler(stream: anyio.abc.ByteStream, tcp: anyio.abc.SocketStream) -> None:
        while True:  # until the proxy hangs up (EndOfStream ends the handler)
            await read_request_head(stream, srv)
            await stream.send(answers[min(len(srv.requests), len(answers)) - 1])

    async with fake_server(handler, tls=pki.server_context()) as srv:
        yield srv


@asynccontextmanager
async def sdk(
    endpoint: str, auth: AuthConfig, **backend_cfg: Any
) -> AsyncIterator[openai.AsyncOpenAI]:
    """The proxy in front of ``endpoint``, and an openai client that retries twice."""
    cfg = make_config(endpoint, auth, backend={"proxy": "", **backend_cfg})
    async with running_proxy(cfg) as proxy:
        client = openai.AsyncOpenAI(base_url=proxy.url + "/v1", api_key="x", max_retries=2)
        try:
            yield client
        finally:
            await client.close()


async def create(client: openai.AsyncOpenAI, path: str) -> Any:
    if path == CHAT:
        return await client.chat.completions.create(model="m", messages=HELLO["messages"])
    return await client.responses.create(model="m", input="hi")


# --- the backend's hints ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "body"),
    [(CHAT, DETAIL), (RESPONSES, DETAIL), (RESPONSES, ENVELOPE)],
    ids=["chat", "passthrough-mapped", "passthrough-relayed"],
)
@pytest.mark.parametrize(
    ("status", "hints", "relayed"),
    [
        (500, {"x-should-retry": "false"}, {"x-should-retry": "false"}),
        (400, {"x-should-retry": "true"}, {"x-should-retry": "true"}),
        (503, {"retry-after-ms": "200", "retry-after": "1"},
         {"retry-after-ms": "200", "retry-after": "1"}),
        # what the SDKs would not read as meant is left out
        (500, {"x-should-retry": "False", "retry-after-ms": "-5"},
         {"x-should-retry": None, "retry-after-ms": None}),
    ],
    ids=["500-false", "400-true", "503-ms", "invalid"],
)  # fmt: skip
async def test_backend_retry_hints_reach_the_client(
    pki: SimpleNamespace,
    path: str,
    body: bytes,
    status: int,
    hints: dict[str, str],
    relayed: dict[str, Optional[str]],
) -> None:
    answer = http_answer(f"{status} Oops", [JSON, *hints.items()], body)
    with anyio.fail_after(10):
        async with backend(pki, answer) as srv:
            cfg = make_config(srv.url, pki.auth, backend={"proxy": ""})
            async with running_proxy(cfg) as proxy:
                r = await post(proxy.url, {**HELLO, "input": "hi"}, path=path)
    assert r.status_code == status
    assert r.json()["error"]["message"] == "backend trouble"
    assert {name: r.headers.get(name) for name in relayed} == relayed


@pytest.mark.parametrize("path", [CHAT, RESPONSES])
async def test_the_sdk_does_not_retry_what_the_backend_says_not_to(
    pki: SimpleNamespace, path: str
) -> None:
    answer = http_answer("500 Oops", [JSON, ("x-should-retry", "false")], DETAIL)
    with anyio.fail_after(15):
        async with backend(pki, answer) as srv, sdk(srv.url, pki.auth) as client:
            with pytest.raises(openai.InternalServerError):
                await create(client, path)
    assert len(srv.requests) == 1  # without the header: 3


@pytest.mark.parametrize("path", [CHAT, RESPONSES])
async def test_the_sdk_retries_what_the_backend_says_to(pki: SimpleNamespace, path: str) -> None:
    # a 400 is not retried by default; retry-after-ms makes the wait 10 ms
    hints = [("x-should-retry", "true"), ("retry-after-ms", "10")]
    first = http_answer("400 Bad Request", [JSON, *hints], DETAIL)
    with anyio.fail_after(15):
        async with backend(pki, first, http_answer("200 OK", [JSON], RESPONSE)) as srv:
            async with sdk(srv.url, pki.auth, flavor="openai") as client:
                answer = await create(client, path)
    assert len(srv.requests) == 2
    text = answer.choices[0].message.content if path == CHAT else answer.output_text
    assert text == "hi"


def envelope(message: str, code: str) -> bytes:
    err = {"message": message, "type": "invalid_request_error", "param": None, "code": code}
    return json.dumps({"error": err}).encode()


CONTEXT = envelope("This model's maximum context length is 10 tokens", "context_length_exceeded")
QUOTA = envelope("You exceeded your current quota", "insufficient_quota")


@pytest.mark.parametrize("path", [CHAT, RESPONSES])
@pytest.mark.parametrize(
    ("answer", "sdk_error"),
    [
        # the same request cannot fit: the client should compact, not send it again
        (http_answer("400 Bad Request", [JSON, ("x-should-retry", "true"),
                                          ("retry-after", "3")], CONTEXT),
         openai.BadRequestError),
        # used up until its period renews: no retry helps (chat says so with
        # x-should-retry: false, and so does an OpenAI error body relayed as it came)
        (http_answer("429 Too Many Requests", [JSON], QUOTA), openai.RateLimitError),
    ],
    ids=["context-length", "quota"],
)  # fmt: skip
async def test_hints_that_a_retry_cannot_help_are_the_same_on_both_paths(
    pki: SimpleNamespace, path: str, answer: bytes, sdk_error: type
) -> None:
    with anyio.fail_after(15):
        async with backend(pki, answer) as srv, sdk(srv.url, pki.auth, flavor="openai") as client:
            with pytest.raises(sdk_error) as info:
                await create(client, path)
    assert len(srv.requests) == 1  # not 3: the SDK did not retry
    headers = info.value.response.headers
    assert "retry-after" not in headers
    should_retry = None if sdk_error is openai.BadRequestError else "false"
    assert headers.get("x-should-retry") == should_retry


@pytest.mark.parametrize("path", [CHAT, RESPONSES])
@pytest.mark.parametrize(
    ("status", "message"),
    [
        ("503 Service Unavailable", "This model's maximum context length is 10 tokens"),
        ("400 Bad Request", "Request does not fit in the model's context window"),
    ],
    ids=["5xx", "no-goose-phrase"],
)
async def test_a_context_overflow_in_an_openai_body_is_answered_as_chat_answers_it(
    pki: SimpleNamespace, path: str, status: str, message: str
) -> None:
    # relayed as it came, a 5xx would be sent again by the SDK, and a message
    # without Goose's phrases would not make Goose compact
    answer = http_answer(status, [JSON, ("x-should-retry", "false")],
                         envelope(message, "context_length_exceeded"))  # fmt: skip
    with anyio.fail_after(15):
        async with backend(pki, answer) as srv, sdk(srv.url, pki.auth, flavor="openai") as client:
            with pytest.raises(openai.BadRequestError) as info:
                await create(client, path)
    assert len(srv.requests) == 1
    body = info.value.response.json()
    assert body["error"]["code"] == "context_length_exceeded"
    assert goose_error_kind(400, body) == "ContextLengthExceeded"


# --- the proxy's own errors ---------------------------------------------------------------


@pytest.mark.parametrize("path", [CHAT, RESPONSES])
@pytest.mark.parametrize("fault", ["missing-certificate", "redirect"])
async def test_the_sdk_does_not_retry_what_a_retry_cannot_fix(
    pki: SimpleNamespace, tmp_path: Path, path: str, fault: str
) -> None:
    auth = pki.auth
    if fault == "missing-certificate":  # an unregistered host
        auth = AuthConfig(str(tmp_path / "cert.pem"), str(tmp_path / "key.pem"))
    redirect = http_answer("302 Found", [("location", "https://sso.example/login")], b"")
    with anyio.fail_after(15):
        async with backend(pki, redirect) as srv, sdk(srv.url, auth) as client:
            with pytest.raises(openai.InternalServerError) as info:
                await create(client, path)
    assert info.value.status_code == 502
    # the SDK's one attempt (without the header: its third, after two retries)
    assert info.value.response.request.headers["x-stainless-retry-count"] == "0"
    assert len(srv.requests) == (1 if fault == "redirect" else 0)
