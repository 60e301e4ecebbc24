"""Backend errors → the OpenAI envelope: TRANSLATION.md §4, with the captured bodies."""

from __future__ import annotations

import json
import re
import time
from typing import Any, Optional

import pytest
from translate_testkit import fixture_text

from goose_proxy.errors import (
    AuthenticationError,
    ContextLengthExceeded,
    ProxyError,
    QuotaExhausted,
    RateLimited,
    UpstreamError,
    UpstreamHTTPError,
)
from goose_proxy.translate import error_from_backend, error_from_event, retry_hints
from goose_proxy.translate.errormap import MAX_MESSAGE_CHARS
from tests.goose_rules import goose_error_kind


def envelope(err: ProxyError) -> dict[str, Any]:
    doc = json.loads(err.to_json())
    assert set(doc) == {"error"} and set(doc["error"]) == {"message", "type", "param", "code"}
    return doc["error"]


def detail_message(detail: Any) -> str:
    """What §4 says the message must be, computed from a FastAPI ``detail``."""
    if isinstance(detail, str):
        return detail
    if isinstance(detail, dict):
        return f"{detail['response']}: {detail['cause']}"
    first = detail[0]
    return ".".join(map(str, first["loc"])) + ": " + first["msg"]


# --- captured FastAPI bodies ----------------------------------------------------------------


def test_422_extra_field_fixture() -> None:
    raw = fixture_text("err_422_extra_field.json").strip().encode()
    err = error_from_backend(422, raw)
    expected = detail_message(json.loads(raw)["detail"])
    assert expected == "body.foo: Extra inputs are not permitted"
    assert err.message == expected
    assert err.status == 400 and envelope(err)["type"] == "invalid_request_error"


def test_500_response_cause_fixture() -> None:
    raw = fixture_text("err_FAIL_500_stream_false.txt").strip().encode()
    err = error_from_backend(500, raw)
    assert err.message == detail_message(json.loads(raw)["detail"])
    assert isinstance(err, UpstreamHTTPError)
    assert err.status == 500 and envelope(err)["type"] == "api_error"


def auth_quota_cases() -> list[tuple[int, bytes]]:
    cases = []
    for line in fixture_text("err_auth_quota.txt").splitlines():
        match = re.match(r"^(\{.*\})\s+=>\s+HTTP (\d{3})$", line.strip())
        if match:
            cases.append((int(match.group(2)), match.group(1).encode()))
    assert [status for status, _ in cases] == [401, 400, 403, 429]
    return cases


@pytest.mark.parametrize(("status", "raw"), auth_quota_cases())
def test_auth_and_quota_fixture(status: int, raw: bytes) -> None:
    err = error_from_backend(status, raw, retry_after="30")
    assert err.message == detail_message(json.loads(raw)["detail"])
    assert err.status == status
    if status in (401, 403):
        assert isinstance(err, AuthenticationError)
        assert envelope(err)["type"] == "authentication_error"
    elif status == 429:
        assert isinstance(err, RateLimited) and ("Retry-After", "30") in err.headers
        assert envelope(err)["type"] == "rate_limit_error"
    else:
        assert envelope(err)["type"] == "invalid_request_error"


@pytest.mark.parametrize(
    ("status", "error", "param"),
    [
        (400, {"message": "Invalid 'max_output_tokens'", "param": "max_output_tokens",
               "code": "integer_below_min_value"}, "max_output_tokens"),
        (404, {"message": "The model 'x' does not exist", "param": "model",
               "code": "model_not_found"}, "model"),
        (400, {"message": "maximum context length is 10 tokens", "param": "input"}, "input"),
        (400, {"message": "bad", "param": 3}, None),
        (400, {"message": "bad", "param": ""}, None),
    ],
)  # fmt: skip
def test_the_backends_param_is_kept(
    status: int, error: dict[str, Any], param: Optional[str]
) -> None:
    # the field the backend blames: the SDK's BadRequestError.param, shown by clients
    err = error_from_backend(status, json.dumps({"error": error}).encode())
    assert envelope(err)["param"] == param
    assert envelope(err)["message"] == error["message"]


def test_quota_429_full_http_response_fixture() -> None:
    head, body = fixture_text("err_quota_429_stream.txt").split("\n\n", 1)
    status = int(head.splitlines()[0].split()[1])
    err = error_from_backend(status, body.strip().encode())
    assert err.status == 429
    assert err.message == detail_message(json.loads(body)["detail"])
    assert err.headers == []  # the capture carries no Retry-After
    # used up until its period renews: OpenAI's insufficient_quota, and no retry
    assert isinstance(err, QuotaExhausted)
    assert (envelope(err)["type"], envelope(err)["code"]) == ("insufficient_quota",) * 2
    assert err.response_headers() == [("x-should-retry", "false")]


@pytest.mark.parametrize(
    ("body", "hints", "exhausted"),
    [
        (b'{"error":{"message":"You exceeded your current quota","code":"insufficient_quota"}}',
         {}, True),
        (b'{"detail":{"response":"The quota has been exceeded","cause":"no tokens"}}', {}, True),
        # the backend says when to come back: a rate limit after all
        (b'{"detail":{"response":"The quota has been exceeded","cause":"no tokens"}}',
         {"retry_after": "60"}, False),
        (b'{"error":{"message":"You exceeded your current quota","code":"insufficient_quota"}}',
         {"retry_after_ms": "500"}, False),
        # a hint that says no time keeps the code; the backend's own header stands
        (b'{"error":{"message":"You exceeded your current quota","code":"insufficient_quota"}}',
         {"should_retry": "true"}, True),
        # a per-minute quota is a rate limit (Google's words)
        (b'{"error":{"message":"Quota exceeded for quota metric requests per minute"}}', {},
         False),
        (b'{"error":{"message":"Rate limit reached","code":"rate_limit_exceeded"}}', {}, False),
    ],
)  # fmt: skip
def test_a_quota_used_up_is_told_from_a_rate_limit(
    body: bytes, hints: dict[str, str], exhausted: bool
) -> None:
    err = error_from_backend(429, body, **hints)
    assert isinstance(err, QuotaExhausted) is exhausted and isinstance(err, RateLimited)
    assert envelope(err)["code"] == ("insufficient_quota" if exhausted else "rate_limit_exceeded")
    said = [v for n, v in err.response_headers() if n == "x-should-retry"]
    assert said == ([hints["should_retry"]] if "should_retry" in hints else
                    ["false"] if exhausted else [])  # fmt: skip


# --- one case per §4 backend row ----------------------------------------------------------------

OPENAI_400 = json.dumps({"error": {"message": "Invalid value for 'x'.", "type":
                                   "invalid_request_error", "param": "x",
                                   "code": "invalid_value"}}).encode()  # fmt: skip


@pytest.mark.parametrize(
    ("status", "body", "cls", "out_status", "message"),
    [
        (400, OPENAI_400, UpstreamHTTPError, 400, "Invalid value for 'x'."),
        (404, b'{"detail":"Not Found"}', UpstreamHTTPError, 404, "Not Found"),
        (500, b'{"error": "plain string error"}', UpstreamHTTPError, 500, "plain string error"),
        (503, b'{"message": "overloaded"}', UpstreamHTTPError, 503, "overloaded"),
        # an HTML page (a router's, a gateway's): its title or first heading, not markup
        (502, b"<html>Bad gateway</html>", UpstreamHTTPError, 502,
         "backend answered HTTP 502 with an HTML page: 'Bad gateway'"),
        (502, b"<html></html>", UpstreamHTTPError, 502,
         "backend answered HTTP 502 with an HTML page"),
        (503, b"<html><head><style>body {" + b"x" * 2000 + b"}</style><title>Application is "
              b"not available</title></head><body><h1>Application is not available</h1>",
         UpstreamHTTPError, 503,
         "backend answered HTTP 503 with an HTML page: 'Application is not available'"),
        (502, b"<!-- gw -->\n<!DOCTYPE html><html><body><h1 class=e>Bad &amp; <b>gone</b></h1>",
         UpstreamHTTPError, 502, "backend answered HTTP 502 with an HTML page: 'Bad & gone'"),
        (500, b"", UpstreamHTTPError, 500, "backend answered HTTP 500"),
        (413, b'{"detail":"Request Entity Too Large"}', ContextLengthExceeded, 400,
         "context length exceeded: Request Entity Too Large"),
        (400, b'{"error":{"message":"This model\'s maximum context length is 4096 tokens"}}',
         ContextLengthExceeded, 400, "This model's maximum context length is 4096 tokens"),
        (400, b'{"detail":"prompt is too long: 210000 tokens > 200000 maximum"}',
         ContextLengthExceeded, 400,
         "context length exceeded: prompt is too long: 210000 tokens > 200000 maximum"),
        (400, b'{"error":{"message":"too long","code":"context_length_exceeded"}}',
         ContextLengthExceeded, 400, "context length exceeded: too long"),
        (400, b'{"message":"The engine prompt length 227861 exceeds the max_model_len 131072.'
              b' Please reduce prompt.","type":"invalid_request_error","param":"input",'
              b'"code":400}', ContextLengthExceeded, 400,
         "context length exceeded: The engine prompt length 227861 exceeds the max_model_len"
         " 131072. Please reduce prompt."),
        (400, b'{"error":{"code":400,"message":"the request exceeds the available context size,'
              b' try increasing it","type":"exceed_context_size_error"}}', ContextLengthExceeded,
         400, "context length exceeded: the request exceeds the available context size, try"
              " increasing it"),
        (429, b'{"error":{"message":"Rate limit reached","code":"rate_limit_exceeded"}}',
         RateLimited, 429, "Rate limit reached"),
        (500, b'{"detail":"upstream LLM rate limit hit"}', RateLimited, 429,
         "upstream LLM rate limit hit"),
        (400, b'{"error":{"message":"You exceeded your current quota",'
              b'"code":"insufficient_quota"}}', QuotaExhausted, 429,
         "You exceeded your current quota"),
        (401, b'{"error":{"message":"bad key"}}', AuthenticationError, 401, "bad key"),
        # Lightspeed Stack's words for its inference provider's 429: a rate limit
        # (per minute, say), not the user's quota used up
        (429, b'{"detail":{"response":"The model quota has been exceeded","cause":"The token '
              b'quota for model gpt-4o has been exceeded."}}', RateLimited, 429,
         "The model quota has been exceeded: The token quota for model gpt-4o has been "
         "exceeded."),
        (403, b'{"detail":"Insufficient entitlements"}', AuthenticationError, 403,
         "Insufficient entitlements"),
    ],
)  # fmt: skip
def test_backend_rows(status: int, body: bytes, cls: type, out_status: int, message: str) -> None:
    err = error_from_backend(status, body)
    assert type(err) is cls
    assert (err.status, err.message) == (out_status, message)
    if cls is ContextLengthExceeded:
        assert envelope(err)["code"] == "context_length_exceeded"
        assert envelope(err)["type"] == "invalid_request_error"
    if cls is RateLimited:
        assert envelope(err)["code"] == "rate_limit_exceeded"


def test_an_openai_code_on_a_refused_identity_is_kept() -> None:
    body = b'{"error":{"message":"Incorrect API key","code":"invalid_api_key"}}'
    assert envelope(error_from_backend(401, body))["code"] == "invalid_api_key"
    assert envelope(error_from_backend(403, b'{"detail":"no"}'))["code"] == "permission_denied"


def test_a_fastapi_409_is_not_worth_a_retry() -> None:
    # Lightspeed Stack's "Tool conflict" is the same on every try; OpenAI's own
    # 409 (a conflicting operation) may pass, and keeps the SDK's retry
    tool = (b'{"detail":{"response":"Tool conflict","cause":"Client file_search tool '
            b'conflicts with a server-configured file_search tool."}}')  # fmt: skip
    lock = b'{"error":{"message":"Another operation is in progress","code":"conflict"}}'
    for body, retry in ((tool, ["false"]), (lock, [])):
        err = error_from_backend(409, body)
        assert err.status == 409
        assert [v for n, v in err.response_headers() if n == "x-should-retry"] == retry


def test_html_pages_are_scanned_in_bounded_time() -> None:
    # a page of 250,000 unclosed headings is searched only so far; a text of
    # comments not followed by <html> took exponential time to refuse (27
    # comments froze the event loop for half a minute)
    err = error_from_backend(502, b"<html>" + b"<h1>" * 250_000)
    assert err.message == "backend answered HTTP 502 with an HTML page"
    started = time.monotonic()
    comments = error_from_backend(502, b"<!-- x -->" * 6_000 + b"<body>Bad gateway</body>")
    assert comments.message.startswith("<!-- x -->")  # no HTML page: the text as it is
    assert time.monotonic() - started < 5  # was 2 ** 5999 tries: never


def test_backend_error_code_kept_for_passthrough() -> None:
    assert envelope(error_from_backend(400, OPENAI_400))["code"] == "invalid_value"


def test_long_text_body_truncated_and_bad_utf8_replaced() -> None:
    body = b"\xff" + b"x" * 5000
    err = error_from_backend(500, body)
    assert len(err.message) <= MAX_MESSAGE_CHARS + 1
    assert err.message.startswith("\ufffd" + "x" * 10)
    long_json = json.dumps({"detail": "y" * 3000}).encode()
    assert len(error_from_backend(500, long_json).message) <= MAX_MESSAGE_CHARS + 1


@pytest.mark.parametrize(
    ("value", "kept"),
    [("30", "30"), (" 120 ", "120"), ("Wed, 21 Oct 2026 07:28:00 GMT",
                                      "Wed, 21 Oct 2026 07:28:00 GMT"),
     ("5\r\nSet-Cookie: x=1", None), ("", None), (None, None)],
)  # fmt: skip
def test_retry_after_kept_only_when_sane(value: Optional[str], kept: Optional[str]) -> None:
    err = error_from_backend(429, b'{"detail":"slow down"}', retry_after=value)
    assert err.headers == ([("Retry-After", kept)] if kept else [])


@pytest.mark.parametrize(
    ("ms", "should", "kept"),
    [("200", "false", [("retry-after-ms", "200"), ("x-should-retry", "false")]),
     (" 1.5 ", "true", [("retry-after-ms", "1.5"), ("x-should-retry", "true")]),
     ("0", None, [("retry-after-ms", "0")]),
     # what the SDKs would not read as meant, or could not put in a head
     ("-1", "True", []), ("1e3", "maybe", []), ("nan", "", []), ("inf", "1", []),
     ("5\r\nSet-Cookie: x=1", "false\r\nSet-Cookie: x=1", []), ("9" * 65, None, []),
     (None, None, [])],
)  # fmt: skip
def test_retry_hints_kept_only_when_valid(
    ms: Optional[str], should: Optional[str], kept: list[tuple[str, str]]
) -> None:
    err = error_from_backend(500, b"oops", retry_after_ms=ms, should_retry=should)
    assert err.headers == kept
    assert retry_hints(None, ms, should) == kept


# --- errors reported inside a stream ---------------------------------------------------------


@pytest.mark.parametrize(
    ("err", "cls", "status", "code"),
    [
        ({"code": "server_error", "message": "This model's maximum context length is 8192 tokens."},
         ContextLengthExceeded, 400, "context_length_exceeded"),
        ({"type": "error", "code": "rate_limit_exceeded", "message": "Slow down"},
         RateLimited, 429, "rate_limit_exceeded"),
        ({"type": "error", "error": {"type": "tokens", "code": "rate_limit_exceeded",
                                     "message": "Slow down"}},
         RateLimited, 429, "rate_limit_exceeded"),
        ({"type": "error", "error": {"type": "server_error", "code": None,
                                     "message": "Input is too long for requested model."}},
         ContextLengthExceeded, 400, "context_length_exceeded"),
        ({"code": "invalid_prompt", "message": "Prompt flagged"}, UpstreamHTTPError, 400,
         "invalid_prompt"),
        ({"code": "invalid_base64_image", "message": "bad image"}, UpstreamHTTPError, 400,
         "invalid_base64_image"),
        ({"type": "error", "error": {"type": "invalid_request_error", "message": "bad"}},
         UpstreamHTTPError, 400, None),
        ({"code": "server_error", "message": "LLM exploded"}, UpstreamError, 502, "server_error"),
        # OGX and Llama Stack put the HTTP status in the code: the status decides
        ({"type": "error", "code": "400", "message": "Invalid value for 'temperature'"},
         UpstreamHTTPError, 400, None),
        ({"type": "error", "code": "404", "message": "Model 'x' not found"},
         UpstreamHTTPError, 404, None),
        ({"type": "error", "code": "422", "message": "bad field"}, UpstreamHTTPError, 400, None),
        ({"type": "error", "code": "429", "message": "Slow down"}, RateLimited, 429,
         "rate_limit_exceeded"),
        ({"type": "error", "code": "500", "message": "LLM exploded"}, UpstreamError, 502,
         "upstream_error"),
        # Llama Stack's own data-only error event: {"error": {"status_code", "message"}}
        ({"error": {"status_code": 400, "message": "Invalid value: Tool 'x' not found"}},
         UpstreamHTTPError, 400, None),
        ({"error": {"status_code": 404, "message": "Model 'm' not found"}}, UpstreamHTTPError,
         404, None),
        ({"error": {"status_code": 503, "message": "overloaded"}}, UpstreamError, 502,
         "upstream_error"),
        ({"error": {"status_code": True, "message": "odd"}}, UpstreamError, 502,
         "upstream_error"),
        # digits that are no ASCII digits: no status (int() refused them: a 500)
        ({"code": "¹²³", "message": "odd"}, UpstreamError, 502, "¹²³"),
        ({"type": "error", "message": "no code"}, UpstreamError, 502, "upstream_error"),
    ],
)  # fmt: skip
def test_event_rows(err: dict[str, Any], cls: type, status: int, code: Optional[str]) -> None:
    got = error_from_event(err)
    assert type(got) is cls
    assert got.status == status and got.code == code
    said = err.get("error", err)["message"]
    if cls is ContextLengthExceeded and "context length" not in said:
        said = "context length exceeded: " + said  # Goose compacts on the phrase
    assert got.message == said


# Goose 1.x compacts on a 400 only when error.message has one of its phrases (it
# never reads the code; aaif-goose reads the code too, and fewer phrases):
# every context_length_exceeded must say one both take, whatever the backend's
# own words were
@pytest.mark.parametrize(
    "err",
    [
        error_from_backend(413, b"<html><head><title>413 Request Entity Too Large</title>"),
        error_from_backend(413, b""),
        error_from_backend(400, b'{"error":{"message":"Input is larger than the model accepts",'
                                b'"code":"context_length_exceeded"}}'),
        error_from_event({"code": "server_error",
                          "message": "Request does not fit in the model's context window"}),
        error_from_event({"code": "server_error",
                          "message": "The decoder prompt (length 140000) is longer than the"
                                     " maximum model length of 131072. Make sure that"
                                     " `max_model_len` is no smaller than the number of text"
                                     " tokens."}),
        error_from_event({"code": "context_length_exceeded", "message": ""}),
        ContextLengthExceeded("what the proxy says itself"),
    ],
    ids=["413-html", "413-empty", "code-only", "context-window", "vllm-decoder-prompt",
         "no-message", "own"],
)  # fmt: skip
def test_goose_compacts_on_every_context_length_error(err: ProxyError) -> None:
    assert isinstance(err, ContextLengthExceeded) and err.status == 400
    assert goose_error_kind(err.status, err.to_json()) == "ContextLengthExceeded"


def test_both_lines_of_goose_are_asked() -> None:
    # the model of Goose's rules fails where block/goose 1.x and aaif-goose
    # would take the same answer differently: Goose 1.x takes any "exceeds"
    # or "max_tokens" for an overflow, aaif-goose the code as well
    for differs in (
        {"error": {"message": "max_tokens must be at most 4096"}},
        {"error": {"message": "temperature exceeds the maximum allowed value"}},
        {"error": {"message": "no room", "code": "context_length_exceeded"}},
        {"error": {"message": "no room", "n_prompt_tokens": 9000, "n_ctx": 8192}},
    ):
        with pytest.raises(AssertionError, match="differ"):
            goose_error_kind(400, differs)
    for said, kind in (
        ("context length exceeded: no room", "ContextLengthExceeded"),
        ("Input token count exceeds the model limit", "ContextLengthExceeded"),
        ("Invalid value for 'temperature'", "RequestFailed"),
    ):
        assert goose_error_kind(400, {"error": {"message": said}}) == kind


def test_a_message_that_says_it_is_kept_as_it_is() -> None:
    said = "This model's maximum context length is 4096 tokens"
    assert error_from_event({"message": said}).message == said
    assert ContextLengthExceeded("CONTEXT LENGTH over").message == "CONTEXT LENGTH over"


def test_event_without_message() -> None:
    got = error_from_event({"type": "error", "code": "server_error"})
    assert got.message == "upstream reported an error (server_error)" and got.status == 502


def test_ctx_capture_error_maps_to_context_length() -> None:
    text = fixture_text("err_CTX_TOO_LONG_stream_true.txt")
    failed = next(json.loads(line[len("data: "):]) for line in text.splitlines()
                  if line.startswith("data: {") and '"response.failed"' in line)  # fmt: skip
    err = error_from_event(failed["response"]["error"])
    assert isinstance(err, ContextLengthExceeded)
    assert err.message == failed["response"]["error"]["message"]


def test_errors_built_from_backend_words_are_marked_quoted() -> None:
    # the handlers log the proxy's own messages but never a backend's (it may
    # quote a prompt); the mark is set where the message is taken
    from goose_proxy.errors import UpstreamClosed

    body = b'{"error": {"message": "the prompt says: secret", "code": "x"}}'
    assert error_from_backend(500, body).quoted
    assert error_from_backend(429, body).quoted
    assert error_from_event({"type": "error", "message": "secret", "code": "server_error"}).quoted
    assert not UpstreamClosed("backend h:1 closed the connection").quoted


@pytest.mark.parametrize(
    ("status", "body"),
    [(500, b'{"detail":{"response":"Prompt is too long","cause":"x"}}'),
     (413, b'{"detail":"Request Entity Too Large"}')],
)  # fmt: skip
def test_a_context_overflow_carries_no_retry_hint(status: int, body: bytes) -> None:
    # the same request cannot fit: the backend's "retry" would have the SDK
    # send it twice more instead of the client compacting
    err = error_from_backend(status, body, retry_after="1", should_retry="true")
    assert isinstance(err, ContextLengthExceeded) and err.response_headers() == []
