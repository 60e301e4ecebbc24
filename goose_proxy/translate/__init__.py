"""Pure, sans-I/O translation between Chat Completions and the Responses API.

Dicts in, dicts or bytes out; nothing here touches a socket. The HTTP layer
uses it in this order:

1. :func:`parse_json_object` on the client's body, then
   :func:`chat_to_responses` (``POST /v1/chat/completions``) or
   :func:`prepare_passthrough` (``POST /v1/responses``) for the upstream body;
2. for a streaming client, one :class:`StreamTranslator` per response:
   ``feed`` each upstream event, ``finish`` at the end of the body;
3. for a non-streaming client, a :class:`ResponseAccumulator` over the
   upstream events (or the upstream JSON as is), then :func:`responses_to_chat`;
   a plain JSON answer for a streaming client goes through
   :func:`events_from_response` into a :class:`StreamTranslator`;
4. :func:`error_from_backend` for an upstream error status (:func:`retry_hints`
   alone for one relayed as it came);
5. under the lightspeed flavour, an :class:`AnswerAdapter` on the passthrough's
   events (:func:`adapt_response` on a whole Response), so that a strict client
   such as Goose can read them.

Every function documents what it raises; all errors are
:class:`goose_proxy.errors.ProxyError` subclasses. The rules are written down
in ``docs/api-translation.md``.
"""

from __future__ import annotations

from .accumulate import ResponseAccumulator
from .errormap import error_from_backend, error_from_event, retry_hints
from .jsonbody import (
    encode_json,
    encode_json_for_client,
    encode_json_in_pieces,
    parse_json_object,
)
from .options import LIGHTSPEED_FIELDS, TranslateOptions, prepare_passthrough
from .passthrough import ADAPTED_EVENTS, AnswerAdapter, adapt_response
from .request import ChatRequest, chat_to_responses
from .response import as_function_call, event_failure, events_from_response, responses_to_chat
from .stream import DONE_FRAME, StreamTranslator

__all__ = [
    "ADAPTED_EVENTS",
    "DONE_FRAME",
    "LIGHTSPEED_FIELDS",
    "AnswerAdapter",
    "ChatRequest",
    "ResponseAccumulator",
    "StreamTranslator",
    "TranslateOptions",
    "adapt_response",
    "as_function_call",
    "chat_to_responses",
    "encode_json",
    "encode_json_for_client",
    "encode_json_in_pieces",
    "error_from_backend",
    "error_from_event",
    "event_failure",
    "events_from_response",
    "parse_json_object",
    "prepare_passthrough",
    "responses_to_chat",
    "retry_hints",
]
