"""What Lightspeed Stack 0.7.1 accepts and how it answers errors.

Everything here comes from the captures in
``tests/fixtures/lightspeed-0.7.1/`` (see its README): the request field list,
the body cap and the FastAPI-style error bodies. Pure data and small pure
helpers; no I/O.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

#: Request fields Lightspeed Stack 0.7.1 accepts on ``/v1/responses``; any
#: other top-level field is answered with 422 ``extra_forbidden``.
ACCEPTED_FIELDS = frozenset(
    {
        "input",
        "model",
        "conversation",
        "include",
        "instructions",
        "max_infer_iters",
        "max_output_tokens",
        "max_tool_calls",
        "metadata",
        "parallel_tool_calls",
        "previous_response_id",
        "prompt",
        "reasoning",
        "safety_identifier",
        "store",
        "stream",
        "temperature",
        "text",
        "tool_choice",
        "tools",
        "generate_topic_summary",
        "shield_ids",
        "solr",
    }
)

#: The whole JSON body is capped at this many characters (422 past it), as
#: ``len(json.dumps(body))`` counts them (Lightspeed Stack's
#: ``ResponsesRequest.validate_body_size``, run on the parsed body before its
#: fields are checked).
MAX_BODY_CHARS = 65_536

#: ``err_auth_quota.txt``: no ``x-rh-identity`` header.
BODY_401 = b'{"detail":"Missing x-rh-identity header"}'
#: ``err_auth_quota.txt``: the identity has no entitlement.
BODY_403 = b'{"detail":"Insufficient entitlements"}'
#: ``err_quota_429_stream.txt``: quota exhausted (sent even for ``stream: true``).
BODY_429 = (
    b'{"detail":{"response":"The quota has been exceeded","cause":'
    b'"User c87dcb4c-8af1-40dd-878e-60c744edddd0 has no available tokens"}}'
)
#: ``err_FAIL_500_stream_false.txt``: any upstream failure of a non-streamed request.
BODY_500 = (
    b'{"detail":{"response":"Internal server error","cause":'
    b'"An unexpected error occurred while processing the request."}}'
)
#: Lightspeed's ``PromptTooLongResponse`` (HTTP 413).
BODY_413 = (
    b'{"detail":{"response":"Prompt is too long","cause":'
    b'"The prompt exceeds the maximum allowed length."}}'
)
#: The ``Retry-After`` the fake sends with its 429.
RETRY_AFTER_SECONDS = 7

_CANNED = {401: BODY_401, 403: BODY_403, 413: BODY_413, 429: BODY_429, 500: BODY_500}


def _compact(obj: Any) -> bytes:
    # FastAPI renders error bodies compactly (see the captures).
    return json.dumps(obj, separators=(",", ":")).encode()


def error_body(status: int, reason: str) -> bytes:
    """The body Lightspeed sends with ``status``: canned when captured, else generic."""
    if status == 422:
        return extra_fields_body({"foo": 1})
    canned = _CANNED.get(status)
    if canned is not None:
        return canned
    if status >= 500:
        return _compact({"detail": {"response": reason, "cause": f"{reason} (dev backend)"}})
    return _compact({"detail": reason})


def extra_fields_body(extras: Mapping[str, Any]) -> bytes:
    """422 for forbidden fields, exactly as ``err_422_extra_field.json``."""
    return _compact(
        {
            "detail": [
                {
                    "type": "extra_forbidden",
                    "loc": ["body", name],
                    "msg": "Extra inputs are not permitted",
                    "input": value,
                }
                for name, value in extras.items()
            ]
        }
    )


def validation_body(kind: str, loc: list[Any], msg: str, value: Any) -> bytes:
    """A pydantic-style 422 with one entry (``{"detail": [{type, loc, msg, input}]}``)."""
    return _compact({"detail": [{"type": kind, "loc": loc, "msg": msg, "input": value}]})


def check_request(body: Any, parsed: bool, *, strict_fields: bool, max_chars: int) -> bytes | None:
    """Validate a decoded request the way Lightspeed does.

    ``body`` is the parsed JSON when ``parsed`` is true (the body was valid
    JSON). Returns a 422 body, or ``None`` if the request is acceptable.
    """
    if not parsed:
        return validation_body("json_invalid", ["body", 0], "JSON decode error", {})
    size = len(json.dumps(body))  # as Lightspeed counts: ASCII escapes, ", " and ": "
    if max_chars and size > max_chars:
        return validation_body(
            "value_error",
            ["body"],
            f"Value error, Request body size ({size} characters) exceeds maximum "
            f"allowed size of {max_chars} characters",
            body,
        )
    if not isinstance(body, dict):
        return validation_body(
            "model_attributes_type",
            ["body"],
            "Input should be a valid dictionary or object to extract fields from",
            body,
        )
    if strict_fields:
        extras = {k: v for k, v in body.items() if k not in ACCEPTED_FIELDS}
        if extras:
            return extra_fields_body(extras)
    if "input" not in body:
        return validation_body("missing", ["body", "input"], "Field required", body)
    return None
