"""End to end over loopback: a real client → the proxy → the scripted backend with mTLS."""

from __future__ import annotations

import json
import socket
from types import SimpleNamespace
from typing import Any

import anyio
import httpx
import openai
import pytest
from openai.types.chat import ChatCompletion, ChatCompletionChunk

import devbackend
from goose_proxy.config import AuthConfig
from goose_proxy.upstream import tls
from tests.support import make_config, running_proxy, sdk_stream_final

pytestmark = pytest.mark.anyio

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "developer__shell",
            "description": "Run a shell command",
            "parameters": {
                "type": "object",
                "properties": {"command": {"type": "string"}},
                "required": ["command"],
            },
        },
    }
]


HELLO = {"model": "m", "messages": [{"role": "user", "content": "x"}]}


def sdk(proxy: SimpleNamespace) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=proxy.url + "/v1", api_key="unused", max_retries=0)


async def post_chat(proxy: SimpleNamespace, body: dict[str, Any]) -> httpx.Response:
    async with httpx.AsyncClient(timeout=10) as c:
        return await c.post(proxy.url + "/v1/chat/completions", json=body)


async def test_non_streaming_text_over_mtls(pki: SimpleNamespace) -> None:
    with anyio.fail_after(10):
        async with devbackend.run(tls=pki.server_context()) as backend:
            async with running_proxy(make_config(backend.url, pki.auth)) as proxy:
                client = sdk(proxy)
                done = await client.chat.completions.create(
                    model="anything", messages=[{"role": "user", "content": "hi there"}]
                )
                await client.close()
    assert done.object == "chat.completion"
    assert done.choices[0].finish_reason == "stop"
    text = done.choices[0].message.content or ""
    assert text.endswith("You said: hi there")
    assert done.model == "anything"
    assert done.usage is not None and done.usage.total_tokens > 0
    sent = backend.requests[-1]
    # lightspeed flavour: the backend chooses the model, no topic summary, not stored
    assert sent.json["model"] == ""
    assert sent.json["store"] is False
    assert sent.json["generate_topic_summary"] is False
    assert sent.json["input"][-1]["content"][0]["text"] == "hi there"
    # the client certificate that reached the backend is the RHSM-like one
    assert "consumer-0001" in (backend.requests[-1].client_subject or "")


async def test_goose_tool_pair_summary_reaches_lightspeed_with_its_task(
    pki: SimpleNamespace,
) -> None:
    # Goose summarizes each old tool call of a long session with a one-off
    # request whose task is all in the system prompt; Lightspeed's "drop" of
    # system messages must not leave it the bare transcript to answer
    task = "Your task is to summarize a tool call & response pair to save tokens."
    pair = "[assistant]: tool_request(developer__shell): {}\n[user]: tool_response: ok"
    with anyio.fail_after(10):
        async with devbackend.run(tls=pki.server_context()) as backend:
            async with running_proxy(make_config(backend.url, pki.auth)) as proxy:
                client = sdk(proxy)
                await client.chat.completions.create(
                    model="rhel-lightspeed",
                    messages=[
                        {"role": "system", "content": task},
                        {"role": "user", "content": pair},
                    ],
                )
                await client.close()
    sent = backend.requests[-1].json["input"]
    got = [(i["role"], i["content"][0]["text"]) for i in sent]
    assert got == [("system", task), ("user", pair)]


async def test_streaming_text_with_sdk(pki: SimpleNamespace) -> None:
    with anyio.fail_after(10):
        async with devbackend.run(tls=pki.server_context()) as backend:
            async with running_proxy(make_config(backend.url, pki.auth)) as proxy:
                client = sdk(proxy)
                stream = await client.chat.completions.create(
                    model="m",
                    messages=[{"role": "user", "content": "stream please"}],
                    stream=True,
                    stream_options={"include_usage": True},
                )
                chunks = [c async for c in stream]
                await client.close()
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.endswith("You said: stream please")
    finishes = [
        c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason
    ]
    assert finishes == ["stop"]
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert len({c.id for c in chunks}) == 1


async def test_tool_call_round_trip(pki: SimpleNamespace) -> None:
    messages: list[dict[str, Any]] = [
        {"role": "system", "content": "You are Goose."},
        {"role": "user", "content": "please USE_TOOL to list files"},
    ]
    with anyio.fail_after(10):
        async with devbackend.run(tls=pki.server_context()) as backend:
            async with running_proxy(make_config(backend.url, pki.auth)) as proxy:
                client = sdk(proxy)
                first = await sdk_stream_final(client, model="m", messages=messages, tools=TOOLS)
                unstreamed = await client.chat.completions.create(
                    model="m",
                    messages=messages,  # type: ignore[arg-type]
                    tools=TOOLS,  # type: ignore[arg-type]
                )
                # the same message either way: content null beside the tool call
                assert first.choices[0].message.content is None
                assert unstreamed.choices[0].message.content is None
                call = first.choices[0].message.tool_calls[0]  # type: ignore[index]
                assert first.choices[0].finish_reason == "tool_calls"
                assert call.function.name == "developer__shell"
                json.loads(call.function.arguments)
                messages.append(
                    {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]}
                )
                messages.append(
                    {"role": "tool", "tool_call_id": call.id, "content": "file_a.txt\nfile_b.txt"}
                )
                second = await client.chat.completions.create(
                    model="m",
                    messages=messages,
                    tools=TOOLS,  # type: ignore[arg-type]
                )
                await client.close()
    assert second.choices[0].finish_reason == "stop"
    assert second.choices[0].message.content
    sent = backend.requests[-1].json["input"]
    assert [i.get("type") for i in sent] == ["message", "function_call", "function_call_output"]
    assert sent[1]["call_id"] == call.id == sent[2]["call_id"]
    assert sent[2]["output"] == "file_a.txt\nfile_b.txt"
    assert backend.requests[-1].json["tools"][0]["name"] == "developer__shell"


#: the deprecated form of TOOLS, plus a second function (for two parallel calls)
FUNCTIONS = [
    TOOLS[0]["function"],
    {"name": "count_files", "parameters": {"type": "object",
                                           "properties": {"limit": {"type": "integer"}}}},
]  # fmt: skip


async def legacy_answers(client: openai.AsyncOpenAI, messages: list[Any]) -> tuple[Any, Any]:
    """One answer unstreamed and one streamed (with usage) to a ``functions``
    request, each checked against the openai SDK's types as it came on the wire;
    the stream as ``(chunks, function_call rebuilt from them)``."""
    done = await client.chat.completions.create(
        model="m",
        messages=messages,
        functions=FUNCTIONS,  # type: ignore[arg-type]
    )
    ChatCompletion.model_validate(done.to_dict())
    stream = await client.chat.completions.create(
        model="m", messages=messages, functions=FUNCTIONS,  # type: ignore[arg-type]
        stream=True, stream_options={"include_usage": True},
    )  # fmt: skip
    chunks = [ChatCompletionChunk.model_validate(c.to_dict()) async for c in stream]
    pieces = [c.choices[0].delta.function_call for c in chunks if c.choices]
    calls = [p for p in pieces if p is not None]
    rebuilt = None
    if calls:
        rebuilt = {"name": calls[0].name, "arguments": "".join(p.arguments or "" for p in calls)}
    return done, (chunks, rebuilt)


@pytest.mark.parametrize("parallel", [False, True], ids=["one-call", "backend-sends-two"])
async def test_deprecated_functions_answer_in_the_legacy_shape(
    pki: SimpleNamespace, caplog: pytest.LogCaptureFixture, parallel: bool
) -> None:
    # a client of the deprecated `functions` reads message.function_call, never tool_calls
    caplog.set_level("WARNING", logger="goose_proxy")
    messages: list[dict[str, Any]] = [{"role": "user", "content": "please USE_TOOL to list files"}]
    headers = {"X-Dev-Fault": "parallel_tools"} if parallel else {}
    with anyio.fail_after(10):
        async with devbackend.run(tls=pki.server_context()) as backend:
            cfg = make_config(backend.url, pki.auth, backend={"headers": headers})
            async with running_proxy(cfg) as proxy:
                client = sdk(proxy)
                done, (chunks, streamed) = await legacy_answers(client, messages)
                second = None
                if not parallel:  # the legacy history goes back: the answer is text
                    call = done.choices[0].message.function_call
                    assert call is not None
                    messages.append(
                        {"role": "assistant", "content": None, "function_call": call.to_dict()}
                    )
                    messages.append({"role": "function", "name": call.name, "content": "a.txt"})
                    second = await client.chat.completions.create(
                        model="m",
                        messages=messages,
                        functions=FUNCTIONS,  # type: ignore[arg-type]
                    )
                await client.close()
    choice = done.choices[0]
    assert choice.finish_reason == "function_call"
    assert choice.message.tool_calls is None and choice.message.content is None
    call = choice.message.function_call
    assert call is not None and call.name == "developer__shell"
    assert json.loads(call.arguments) == {"command": "fake"}  # never the other call's
    assert streamed == call.to_dict()
    assert all(c.choices[0].delta.tool_calls is None for c in chunks if c.choices)
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == "function_call" and finishes.count("function_call") == 1
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    sent = backend.requests[0].json
    assert sent["parallel_tool_calls"] is False
    assert [t["name"] for t in sent["tools"]] == ["developer__shell", "count_files"]
    left_out = [r for r in caplog.records if "only the first was sent" in r.getMessage()]
    assert len(left_out) == (2 if parallel else 0)  # once per answer
    if second is not None:
        assert second.choices[0].finish_reason == "stop"
        assert second.choices[0].message.function_call is None
        assert second.choices[0].message.content == "Tool said: a.txt"
        items = backend.requests[-1].json["input"]
        assert [i["type"] for i in items[-2:]] == ["function_call", "function_call_output"]
        assert items[-2]["call_id"] == items[-1]["call_id"]


@pytest.mark.parametrize(
    ("fault", "status", "needle"),
    [
        ("status:500", 500, "Internal server error"),
        ("status:429", 429, "quota has been exceeded"),
        ("status:403", 403, "Insufficient entitlements"),
        ("status:422", 400, "Extra inputs are not permitted"),
    ],
)
async def test_backend_error_passed_through(
    pki: SimpleNamespace, fault: str, status: int, needle: str
) -> None:
    with anyio.fail_after(10):
        async with devbackend.run(tls=pki.server_context()) as backend:
            cfg = make_config(backend.url, pki.auth, backend={"headers": {"X-Dev-Fault": fault}})
            async with running_proxy(cfg) as proxy:
                r = await post_chat(proxy, HELLO)
    assert r.status_code == status
    err = r.json()["error"]
    assert needle in err["message"]
    assert set(err) == {"message", "type", "param", "code"}
    assert "x-should-retry" not in r.headers  # the backend gave none: the status decides
    if status == 429:
        assert r.headers.get("retry-after") == "7"


async def test_504_when_backend_sends_no_head(pki: SimpleNamespace) -> None:
    with anyio.fail_after(10):
        async with devbackend.run(tls=pki.server_context()) as backend:
            cfg = make_config(
                backend.url,
                pki.auth,
                backend={"timeout": 0.3, "headers": {"X-Dev-Fault": "stall"}},
            )
            async with running_proxy(cfg) as proxy:
                r = await post_chat(proxy, HELLO)
    assert r.status_code == 504
    assert r.json()["error"]["code"] == "timeout"


async def test_502_when_backend_refuses_connection(pki: SimpleNamespace) -> None:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now
    with anyio.fail_after(10):
        async with running_proxy(make_config(f"https://127.0.0.1:{port}", pki.auth)) as proxy:
            r = await post_chat(proxy, HELLO)
    assert r.status_code == 502
    err = r.json()["error"]
    assert err["type"] == "api_error"
    assert "refused" in err["message"]


async def test_502_register_hint_when_cert_files_missing(
    pki: SimpleNamespace, tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tls, "RHSM_DIR", str(tmp_path))  # taken for RHSM's directory
    auth = AuthConfig(cert_file=str(tmp_path / "cert.pem"), key_file=str(tmp_path / "key.pem"))
    with anyio.fail_after(10):
        async with devbackend.run(tls=pki.server_context()) as backend:
            async with running_proxy(make_config(backend.url, auth)) as proxy:
                r = await post_chat(proxy, HELLO)
    assert r.status_code == 502
    assert "subscription-manager register" in r.json()["error"]["message"]
    assert backend.stats.requests_total == 0


async def test_backend_rejects_unknown_client_certificate(pki: SimpleNamespace) -> None:
    stranger = AuthConfig(
        cert_file=str(pki.dir / "stranger-cert.pem"),
        key_file=str(pki.dir / "stranger-key.pem"),
        ca_file=pki.ca_file,
    )
    with anyio.fail_after(10):
        async with devbackend.run(tls=pki.server_context()) as backend:
            async with running_proxy(make_config(backend.url, stranger)) as proxy:
                r = await post_chat(proxy, HELLO)
    assert r.status_code == 502
    err = r.json()["error"]
    assert err["code"] == "upstream_tls_error"
    assert "client certificate" in err["message"]


async def test_untrusted_backend_certificate(pki: SimpleNamespace) -> None:
    auth = AuthConfig(
        cert_file=pki.cert_file, key_file=pki.key_file, ca_file=str(pki.dir / "other-ca.pem")
    )
    with anyio.fail_after(10):
        async with devbackend.run(tls=pki.server_context()) as backend:
            async with running_proxy(make_config(backend.url, auth)) as proxy:
                r = await post_chat(proxy, HELLO)
    assert r.status_code == 502
    assert "not trusted" in r.json()["error"]["message"]


async def test_routes_and_openai_error_shapes(pki: SimpleNamespace) -> None:
    with anyio.fail_after(10):
        async with running_proxy(make_config("http://127.0.0.1:9")) as proxy:
            async with httpx.AsyncClient(base_url=proxy.url, timeout=5) as c:
                health = await c.get("/health")
                models = await c.get("/v1/models")
                missing = await c.get("/nope")
                wrong = await c.get("/v1/chat/completions")
                bad_json = await c.post(
                    "/v1/chat/completions",
                    content=b"{not json",
                    headers={"content-type": "application/json"},
                )
                bad_type = await c.post(
                    "/v1/chat/completions", json={"model": "m", "messages": "hello"}
                )
    assert health.status_code == 200
    assert models.json()["data"][0]["id"] == "rhel-lightspeed"
    assert missing.status_code == 404 and missing.json()["error"]["type"] == "invalid_request_error"
    assert wrong.status_code == 405 and "POST" in wrong.headers["allow"]
    # each status line has its reason phrase ("HTTP/1.1 404 Not Found")
    assert [r.reason_phrase for r in (health, missing, wrong)] == [
        "OK", "Not Found", "Method Not Allowed"
    ]  # fmt: skip
    assert bad_json.status_code == 400
    assert bad_type.status_code == 400
    assert bad_type.json()["error"]["param"] == "messages"


@pytest.mark.parametrize("configured", [False, True])
async def test_configured_headers_replace_the_proxys_own(
    pki: SimpleNamespace, configured: bool
) -> None:
    # once each: a second X-LCS-Merge-Server-Tools would be ignored by a
    # backend that reads the first (Starlette does)
    headers = {"User-Agent": "site-agent/2", "X-LCS-Merge-Server-Tools": "false"}
    with anyio.fail_after(10):
        async with devbackend.run(tls=pki.server_context()) as backend:
            extra = {"headers": headers} if configured else {}
            async with running_proxy(make_config(backend.url, pki.auth, backend=extra)) as proxy:
                async with httpx.AsyncClient(timeout=10) as c:
                    for body in (HELLO, {"model": "m", "input": "hi"}):
                        path = "/v1/chat/completions" if "messages" in body else "/v1/responses"
                        r = await c.post(proxy.url + path, json=body)
                        assert r.status_code == 200
    for seen in backend.requests:
        got = {n: [v for k, v in seen.headers if k == n.lower()] for n in headers}
        if configured:
            assert got == {n: [v] for n, v in headers.items()}
        else:
            assert got["User-Agent"][0].startswith("goose-proxy/")
            assert got["X-LCS-Merge-Server-Tools"] == ["true"]


async def test_the_clients_own_headers_stay_at_the_proxy(pki: SimpleNamespace) -> None:
    # the backend sees the proxy's head: a client's credentials (an API key the
    # SDK always sends), cookies and forwarding headers are never passed on
    sent = {
        "Authorization": "Bearer sk-client-key",
        "Cookie": "session=abc",
        "X-Forwarded-For": "10.0.0.9",
        "OpenAI-Organization": "org-1",
        "X-Custom": "mine",
    }
    with anyio.fail_after(10):
        async with devbackend.run(tls=pki.server_context()) as backend:
            async with running_proxy(make_config(backend.url, pki.auth)) as proxy:
                async with httpx.AsyncClient(timeout=10) as c:
                    for path, body in (
                        ("/v1/chat/completions", HELLO),
                        ("/v1/responses", {"model": "m", "input": "hi"}),
                    ):
                        r = await c.post(proxy.url + path, json=body, headers=sent)
                        assert r.status_code == 200
    for seen in backend.requests:
        names = {k for k, _ in seen.headers}
        assert names.isdisjoint(n.lower() for n in sent), seen.headers
        assert names <= {
            "host", "content-length", "content-type", "accept", "accept-encoding",
            "x-request-id", "user-agent", "x-lcs-merge-server-tools", "connection",
        }, seen.headers  # fmt: skip


async def test_access_line_request_id_and_debug_heads_without_bodies(
    pki: SimpleNamespace, caplog: pytest.LogCaptureFixture
) -> None:
    secret = "body-text-that-must-not-be-logged"
    caplog.set_level("DEBUG", logger="goose_proxy")
    with anyio.fail_after(10):
        async with devbackend.run(tls=pki.server_context()) as backend:
            cfg = make_config(
                backend.url, pki.auth, backend={"headers": {"Authorization": "Bearer s3cr3t"}}
            )
            async with running_proxy(cfg) as proxy:
                async with httpx.AsyncClient(timeout=10) as c:
                    r = await c.post(
                        proxy.url + "/v1/chat/completions",
                        json={"model": "m", "messages": [{"role": "user", "content": secret}]},
                        headers={"X-Request-ID": "req-42"},
                    )
                    fresh = await c.get(proxy.url + "/health")
    assert r.status_code == 200
    assert r.headers["x-request-id"] == "req-42"
    assert backend.requests[-1].header("x-request-id") == "req-42"
    assert len(fresh.headers["x-request-id"]) == 32  # generated when the client sent none
    text = "\n".join(rec.getMessage() for rec in caplog.records)
    assert secret not in text and "You said" not in text
    assert "s3cr3t" not in text
    assert "upstream request POST /responses" in text
    access = [rec.getMessage() for rec in caplog.records if rec.name == "goose_proxy.access"]
    line = next(a for a in access if "/v1/chat/completions" in a)
    assert " 200 " in line and "stream=no" in line and "upstream=200" in line
    assert "rid=req-42" in line
