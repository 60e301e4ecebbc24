"""Fuzzing request bodies: random JSON, mutated valid chat requests, and JSON
text with every quirk (deep nesting, huge numbers, duplicate keys, invalid
UTF-8, lone surrogates, non-JSON content types) — never a 500, never a crash,
never a hang."""

from __future__ import annotations

import json
from types import SimpleNamespace
from typing import Any

from hypothesis import event, given
from hypothesis import strategies as st

from tests.fuzz.checks import FUZZ, assert_healthy, check_response, post

CHAT = "/v1/chat/completions"
RESPONSES = "/v1/responses"

scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**30), max_value=10**30)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=40)
)
json_values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=12), inner, max_size=5)
    ),
    max_leaves=25,
)

TOOL = {
    "type": "function",
    "function": {
        "name": "developer__shell",
        "description": "Run a shell command",
        "parameters": {"type": "object", "properties": {"command": {"type": "string"}}},
    },
}
VALID: dict[str, Any] = {
    "model": "goose",
    "messages": [
        {"role": "system", "content": "You are Goose."},
        {"role": "user", "content": [{"type": "text", "text": "list files"}]},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "developer__shell", "arguments": '{"command": "ls"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "a.txt"},
        {"role": "user", "content": "thanks"},
    ],
    "tools": [TOOL],
    "tool_choice": "auto",
    "temperature": 0.2,
    "max_tokens": 100,
    "stream": False,
    "stream_options": {"include_usage": True},
}


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix]
    if isinstance(value, dict):
        for k, v in value.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            out += _paths(v, (*prefix, i))
    return out


@st.composite
def mutated_requests(draw: st.DrawFn) -> dict[str, Any]:
    """The valid request with one to four mutations at random places."""
    req = json.loads(json.dumps(VALID))
    req["stream"] = draw(st.booleans())
    for _ in range(draw(st.integers(1, 4))):
        paths = [p for p in _paths(req) if p]
        path = draw(st.sampled_from(paths))
        parent: Any = req
        for key in path[:-1]:
            parent = parent[key]
        last = path[-1]
        action = draw(st.sampled_from(["replace", "delete", "add", "retype"]))
        if action == "replace":
            parent[last] = draw(json_values)
        elif action == "delete":
            del parent[last]
        elif action == "add" and isinstance(parent, dict):
            parent[draw(st.text(max_size=15))] = draw(json_values)
        elif action == "add" and isinstance(parent, list):
            parent.insert(last, draw(json_values))
        else:
            old = parent[last]
            parent[last] = [old] if not isinstance(old, list) else {"x": old} if old else str(old)
    return req


@FUZZ
@given(value=json_values)
def test_random_json_to_chat(target: SimpleNamespace, value: Any) -> None:
    r = post(target, CHAT, json.dumps(value).encode())
    event(f"status {r.status}")
    assert r.status == 400  # only an object with messages can pass, and these are random
    assert_healthy(target)


@FUZZ
@given(value=st.dictionaries(st.text(max_size=12), json_values, max_size=6))
def test_random_objects_to_responses_passthrough(target: SimpleNamespace, value: Any) -> None:
    r = post(target, RESPONSES, json.dumps(value).encode())
    event(f"status {r.status}")
    assert_healthy(target)


@FUZZ
@given(req=mutated_requests())
def test_mutated_chat_requests(target: SimpleNamespace, req: dict[str, Any]) -> None:
    r = post(target, CHAT, json.dumps(req).encode())
    event(f"status {r.status} stream={req.get('stream')}")
    assert r.status in (200, 400, 413), r.body[:300]
    assert_healthy(target)


@st.composite
def quirky_json(draw: st.DrawFn) -> bytes:
    """JSON text with one quirk, around a valid request."""
    base = json.dumps({**VALID, "stream": draw(st.booleans())})
    kind = draw(
        st.sampled_from(
            [
                "deep",
                "huge-int",
                "huge-float",
                "dup-keys",
                "bad-utf8",
                "surrogate",
                "bom",
                "constant",
                "trailing",
                "truncate",
            ]
        )
    )
    if kind == "deep":
        depth = draw(st.integers(1, 200_000))
        opener, closer = draw(st.sampled_from([("[", "]"), ('{"a":', "}")]))
        inner = opener * depth + "1" + closer * depth
        return base.replace('"temperature": 0.2', f'"temperature": {inner}').encode()
    if kind == "huge-int":
        digits = draw(st.integers(1, 20_000))
        sign = draw(st.sampled_from(["", "-"]))
        return base.replace('"max_tokens": 100', f'"max_tokens": {sign}{"9" * digits}').encode()
    if kind == "huge-float":
        exp = draw(st.integers(-100_000, 100_000))
        return base.replace('"temperature": 0.2', f'"temperature": 1.5e{exp}').encode()
    if kind == "dup-keys":
        key = draw(st.sampled_from(list(VALID)))
        return ("{" + f'"{key}": {json.dumps(draw(json_values))}, ' + base[1:]).encode()
    if kind == "bad-utf8":
        raw = base.encode()
        at = draw(st.integers(0, len(raw)))
        junk = draw(st.binary(min_size=1, max_size=4).filter(lambda b: not _utf8(b)))
        return raw[:at] + junk + raw[at:]
    if kind == "surrogate":
        esc = draw(st.sampled_from(["\\ud800", "\\udfff", "\\ud83d", "\\u0000"]))
        return base.replace("thanks", f"than{esc}ks").replace('"tool_choice"', f'"x{esc}"').encode()
    if kind == "bom":
        return b"\xef\xbb\xbf" + base.encode()
    if kind == "constant":
        c = draw(st.sampled_from(["NaN", "Infinity", "-Infinity"]))
        return base.replace('"temperature": 0.2', f'"temperature": {c}').encode()
    if kind == "trailing":
        return (base + draw(st.sampled_from([",", " x", "}", "\x00", " {}"]))).encode()
    cut = draw(st.integers(0, len(base) - 1))
    return base[:cut].encode()


def _utf8(b: bytes) -> bool:
    try:
        b.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


@FUZZ
@given(body=quirky_json(), path=st.sampled_from([CHAT, RESPONSES]))
def test_quirky_json_text(target: SimpleNamespace, body: bytes, path: str) -> None:
    r = post(target, path, body)
    event(f"{path} status {r.status}")
    if path == CHAT:
        assert r.status in (200, 400, 413), r.body[:300]
    check_response(r)
    assert_healthy(target)


@FUZZ
@given(
    ctype=st.sampled_from(
        [
            None,
            "text/plain",
            "application/x-www-form-urlencoded",
            "multipart/form-data; boundary=x",
            "application/xml",
            "application/json-patch+json",
            "",
        ]
    )
    | st.text(max_size=30).map(lambda t: t.replace("\r", "").replace("\n", "")),
    path=st.sampled_from([CHAT, RESPONSES, "/health", "/nope"]),
)
def test_non_json_content_types(target: SimpleNamespace, ctype: Any, path: str) -> None:
    base = (ctype or "").split(";")[0].strip().lower()
    try:
        ctype.encode("latin-1") if ctype is not None else None
    except UnicodeEncodeError:
        ctype = ctype.encode("utf-8").decode("latin-1")
    r = post(target, path, json.dumps(VALID).encode(), ctype)
    event(f"status {r.status}")
    if path not in (CHAT, RESPONSES):  # no POST there: 404/405 whatever the type
        assert r.status in (400, 404 if path == "/nope" else 405), (ctype, r.status)
    elif base != "application/json":
        assert r.status in (400, 415), (ctype, r.status)
    assert_healthy(target)
