"""Routes: what each endpoint does with a request, between ``translate`` and ``upstream``.

``POST /v1/chat/completions``  Chat Completions → Responses → chat (JSON or SSE)
``POST /v1/responses``         Responses passthrough (same auth and limits)
``GET  /v1/models``            the configured model, shaped for Goose
``GET  /v1/models/{model}``    that model alone (404 ``model_not_found`` for another id)
``GET  /health``               liveness

Streaming is a pull loop: read what the backend sent → translate every complete
event in it → one ``send`` to the client → only then read again, so a slow
client slows the backend read instead of growing a buffer. The response head
is held back until the translator has something for the client ("commit
late"): a failure before that becomes a real HTTP error status.

Reading stops at the terminal event (``response.completed`` and its kin, or
``[DONE]``; a ``[DONE]`` that comes before the terminal event waits a short
grace for it), not at the end of the body: a backend that keeps the connection open
afterwards costs its connection (closed after a short grace), never the
client's time.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Awaitable, Iterator
from typing import Any, Callable, Optional, TypeVar, Union
from urllib.parse import unquote

import anyio

from goose_proxy.api import translate_options
from goose_proxy.config import Config, redact_location, redact_url
from goose_proxy.errors import (
    AuthenticationError,
    ContextLengthExceeded,
    HostLimitReached,
    InvalidRequest,
    NotFound,
    ProxyError,
    UpstreamHTTPError,
    UpstreamNotAResponse,
    UpstreamProtocolError,
    UpstreamRedirect,
)
from goose_proxy.http.connection import (
    ClientGone,
    Request,
    ServerConnection,
    error_response_parts,
)
from goose_proxy.http.throttle import METHOD_CHARS, PATH_CHARS, WarnEvery, shown
from goose_proxy.translate import (
    ADAPTED_EVENTS,
    AnswerAdapter,
    ChatRequest,
    ResponseAccumulator,
    StreamTranslator,
    adapt_response,
    as_function_call,
    chat_to_responses,
    encode_json,
    encode_json_for_client,
    encode_json_in_pieces,
    error_from_backend,
    event_failure,
    events_from_response,
    parse_json_object,
    prepare_passthrough,
    responses_to_chat,
    retry_hints,
)
from goose_proxy.translate.passthrough import ARGUMENT_EVENTS, item_id_in, stream_of_response
from goose_proxy.translate.response import ENDED_EARLY, check_finished
from goose_proxy.upstream.client import UpstreamClient, UpstreamResponse
from goose_proxy.upstream.sse import SSEEvent, SSEParser, event_json, has_fields, upstream_json

log = logging.getLogger("goose_proxy.http")
#: the host out of descriptors or memory fails every request at once: said once
#: per ten seconds, with a count (shared by the process's servers)
_HOST_LIMIT_WARNINGS = WarnEvery()

JSON = (b"content-type", b"application/json")
SSE_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
]
ERROR_BODY_LIMIT = 1024 * 1024
#: where one model is retrieved by its id (percent-encoded: the SDKs quote a ``/``)
MODEL_PATH = "/v1/models/"
_DONE = "[DONE]"
#: events after which a Responses stream carries nothing more
TERMINAL_EVENTS = frozenset(
    {"response.completed", "response.incomplete", "response.failed", "error"}
)
#: how long a passthrough stream waits for ``[DONE]`` after its terminal event
#: (and for its terminal event after a ``[DONE]`` that came first)
DONE_GRACE = 0.2
#: most an :class:`EventReader` holds unparsed: the events' text plus
#: HELD_EVENT_COST each (about what the objects around it take)
HOLD_LIMIT = 256 * 1024
HELD_EVENT_COST = 200
#: (two patterns, not one alternation: a pattern that starts with a literal is
#: scanned for fast; "error": null is in every Response object, and a Response
#: that echoes 60 tools is 100 KB, which the alternation took 1.2 ms to try)
_ERROR_TYPE = re.compile(r'"type"\s*:\s*"error"')
_BARE_ERROR = re.compile(r'\s*\{\s*"error"\s*:')


def _may_be_terminal(text: str) -> bool:
    """Whether an event's JSON text may hold a terminal type: such an event is
    never held. A cheap test (substring scans, at about a third of the cost of
    parsing); a false alarm, such as a delta that quotes a type, only costs
    parsing the event."""
    return (
        '"response.completed"' in text
        or '"response.incomplete"' in text
        or '"response.failed"' in text
        # an error event; or Llama Stack's own, data-only {"error": {…}}
        or (
            '"error"' in text
            and (_ERROR_TYPE.search(text) is not None or _BARE_ERROR.match(text) is not None)
        )
    )


class Exchange:
    """One request and the state of its reply (for handlers and the access log)."""

    def __init__(self, conn: ServerConnection, req: Request, rid: str, close: bool) -> None:
        self.conn = conn
        self.req = req
        self.rid = rid
        self.close = close
        self.status: Optional[int] = None
        self.streamed = False
        self.upstream_status: Optional[int] = None
        #: what to send if the stream must end with an error after it started
        self.error_frames: Optional[Callable[[ProxyError], list[bytes]]] = None

    def _headers(self, headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
        return [*headers, (b"x-request-id", self.rid.encode("latin-1"))]

    async def send(self, status: int, body: bytes, headers: list[tuple[bytes, bytes]]) -> None:
        self.status = status
        await self.conn.send_response(status, body, self._headers(headers), close=self.close)

    async def start_stream(
        self, status: int, headers: list[tuple[bytes, bytes]], first: bytes = b""
    ) -> None:
        self.status = status
        self.streamed = True
        await self.conn.start_stream(status, self._headers(headers), first, close=self.close)

    def warn_of(self, err: ProxyError) -> None:
        """Log ``err`` at WARNING when the proxy or the backend failed (5xx),
        the backend refused this host's identity (401, 403) or answered
        another error status that is not the client's mistake (a 404 from a
        wrong endpoint; a 400 is the request's), or asked to slow down (429)."""
        if not (
            err.status >= 500
            or err.status == 429
            or isinstance(err, AuthenticationError)
            or (isinstance(err, UpstreamHTTPError) and err.status != 400)
        ):
            return
        if isinstance(err, HostLimitReached):  # a flood: every request at once
            due = _HOST_LIMIT_WARNINGS.due()
            if due is not None:
                more = WarnEvery.since(due, "times")
                method = shown(self.req.method, METHOD_CHARS)
                path = shown(self.req.path, PATH_CHARS)
                log.warning("%s %s: %s%s", method, path, err.message, more)
            return
        if err.quoted:
            # its message is the backend's own words (from a body): not for the log
            log.warning(
                "%s %s: backend reported an error: %d %s",
                self.req.method,
                self.req.path,
                err.status,
                err.code or "(no code)",
            )
        else:
            log.warning("%s %s: %s", self.req.method, self.req.path, err.message)

    async def abort(self, err: ProxyError) -> None:
        """Report ``err``: as an HTTP error if nothing was sent, else inside the
        stream; logged as :meth:`warn_of` says."""
        self.warn_of(err)
        if err.closes_connection:
            self.close = True
            self.conn.linger = True  # the client may still be sending: no reset over the answer
        try:
            if self.status is None:
                status, body, headers = error_response_parts(err)
                await self.send(status, body, headers)
            elif self.streamed and self.conn.can_send_data():
                if self.error_frames is not None:
                    frames = self.error_frames(err)
                    if frames:
                        await self.conn.send_data(b"".join(frames))
                await self.conn.end_stream()
        except ClientGone:
            pass


Handler = Callable[[Exchange], Awaitable[None]]


class Handlers:
    """The routes, bound to one configuration and one upstream client."""

    def __init__(self, config: Config, upstream: UpstreamClient) -> None:
        b = config.backend
        self.config = config
        self.upstream = upstream
        self.opts = translate_options(config)
        self._char_limit = b.request_char_limit
        #: where the proxy posts, for a backend that has no such route
        self._responses_url = redact_url(b.endpoint) + "/responses"
        #: the passthrough's answer is adapted for strict clients (see AnswerAdapter)
        self._adapt_answers = b.flavor == "lightspeed"
        # [backend.headers] are added by the upstream client, to every request;
        # one of them named X-LCS-Merge-Server-Tools replaces this default
        configured = {name.lower() for name in b.headers}
        self._upstream_headers: list[tuple[bytes, bytes]] = (
            [(b"x-lcs-merge-server-tools", b"true")]
            if b.flavor == "lightspeed" and "x-lcs-merge-server-tools" not in configured
            else []
        )
        m = config.models
        model = {
            "id": m.id,
            "object": "model",
            "created": 0,
            "owned_by": m.owned_by,
            "context_length": m.context_length,
        }
        self._models_body = json.dumps({"object": "list", "data": [model]}).encode()
        self._model_body = json.dumps(model).encode()
        self.routes: dict[str, dict[str, Handler]] = {
            "/v1/chat/completions": {"POST": self.chat_completions},
            "/v1/responses": {"POST": self.responses},
            "/v1/models": {"GET": self.models},
            "/health": {"GET": self.health},
        }
        self._model_route: dict[str, Handler] = {"GET": self.model}

    def route(self, path: str) -> Optional[dict[str, Handler]]:
        """The handlers of ``path`` by method; None for a path the proxy does not serve."""
        route = self.routes.get(path)
        if route is None and path.startswith(MODEL_PATH):
            return self._model_route
        return route

    # -- simple routes --

    async def health(self, ex: Exchange) -> None:
        await ex.send(200, b'{"status":"ok"}', [JSON])

    async def models(self, ex: Exchange) -> None:
        await ex.send(200, self._models_body, [JSON])

    async def model(self, ex: Exchange) -> None:
        """``GET /v1/models/{model}``: the model of the list, if it is the one asked
        for (a trailing slash counts as none, as in every path, unless the id
        served ends with one)."""
        wanted = unquote(ex.req.path[len(MODEL_PATH) :])
        served = self.config.models.id
        if wanted != served and not (wanted.endswith("/") and wanted.rstrip("/") == served):
            raise NotFound(
                f"the model {wanted[:100]!r} does not exist: goose-proxy serves "
                f"{served!r} ([models] id)",
                code="model_not_found",
            )
        await ex.send(200, self._model_body, [JSON])

    # -- upstream helpers --

    def _headers_for(self, ex: Exchange, stream: bool) -> list[tuple[bytes, bytes]]:
        accept = b"text/event-stream" if stream else b"application/json"
        return [
            (b"accept", accept),
            (b"x-request-id", ex.rid.encode("latin-1")),
            *self._upstream_headers,
        ]

    def _check_size(self, payload: bytes, body: dict[str, Any]) -> None:
        """A 400 for a body over the backend's cap, before sending it (see
        :func:`_over_cap`); ``payload`` is ``body`` encoded."""
        limit = self._char_limit
        if limit and _most_chars(payload) > limit:
            chars = _backend_chars(body)
            if chars > limit:
                raise _over_cap(body, chars, limit)

    async def _raise_for_status(self, ex: Exchange, resp: UpstreamResponse) -> None:
        ex.upstream_status = resp.status
        if resp.status >= 400:
            raw = await resp.read_error(ERROR_BODY_LIMIT, self.config.backend.timeout)
            raise _backend_error(resp, raw, self._responses_url)
        _raise_for_redirect(resp)

    # -- POST /v1/chat/completions --

    def _translate_chat(self, raw: bytes) -> tuple[ChatRequest, bytes]:
        """The client's body as the Responses request and its bytes (pure work:
        run in a thread for a large body)."""
        creq = chat_to_responses(parse_json_object(raw), self.opts)
        payload = _encode_body(creq.body, len(raw))
        self._check_size(payload, creq.body)
        return creq, payload

    async def chat_completions(self, ex: Exchange) -> None:
        creq, payload = await _off_the_loop_if_large(self._translate_chat, _take_body(ex))
        if creq.dropped and log.isEnabledFor(logging.DEBUG):
            log.debug("not forwarded to the backend: %s", _keys_shown(creq.dropped))
        headers = self._headers_for(ex, bool(creq.body.get("stream")))
        creq.body.clear()  # written out: not held (maybe megabytes) while the answer comes
        async with self.upstream.post("/responses", payload, headers) as resp:
            del payload  # sent (the upstream client keeps no copy either)
            ex.conn.release_body()  # nothing of it is held while the answer comes
            await self._raise_for_status(ex, resp)
            if await resp.is_event_stream():
                if creq.stream:
                    await self._stream_chat(ex, resp, creq)
                else:
                    await self._collect_chat(ex, resp, creq)
                return
            obj = _load_upstream_json(await resp.read(self.config.backend.max_event_size))
            if creq.stream:
                tr = self._translator(creq)
                frames = [f for ev in events_from_response(obj) for f in tr.feed(ev)]
                frames += tr.finish()
                _log_left_out(tr.calls_left_out)
                await ex.start_stream(200, SSE_HEADERS, b"".join(frames))
                await ex.conn.end_stream()
            else:
                await ex.send(200, _chat_answer(obj, creq), [JSON])

    def _translator(self, creq: ChatRequest) -> StreamTranslator:
        return StreamTranslator(
            model=creq.client_model,
            include_usage=creq.include_usage,
            legacy_functions=creq.legacy_functions,
            refusal_in_content=creq.refusal_in_content,
            max_held=self.config.backend.max_event_size,
        )

    async def _stream_chat(self, ex: Exchange, resp: UpstreamResponse, creq: ChatRequest) -> None:
        tr = self._translator(creq)
        reader = EventReader(resp, self.config.backend.max_event_size)
        ex.error_frames = tr.error_frames
        conn = ex.conn
        while True:
            batch = await reader.next_batch()
            frames: list[bytes] = []
            if batch is None:
                frames = tr.finish()
            else:
                for ev in batch:
                    frames += tr.feed(ev)
                    if tr.done:
                        break
            if frames:
                data = b"".join(frames)
                if ex.status is None:
                    await ex.start_stream(200, SSE_HEADERS, data)
                else:
                    await conn.send_data(data)
            if batch is None or tr.done:
                break
        _log_left_out(tr.calls_left_out)
        await conn.end_stream()

    async def _collect_chat(self, ex: Exchange, resp: UpstreamResponse, creq: ChatRequest) -> None:
        await ex.send(200, _chat_answer(await self._collect(resp), creq), [JSON])

    async def _collect(self, resp: UpstreamResponse) -> dict[str, Any]:
        """A streamed answer as the Response object it ends with; raises the
        failure it reports (mapped), or UpstreamProtocolError if it ends early."""
        limit = self.config.backend.max_event_size  # (the terminal event holds it all)
        acc = ResponseAccumulator(limit)
        reader = EventReader(resp, limit, hold=True)
        terminal: list[dict[str, Any]] = []  # returned while holding: the terminal event
        while not acc.done:  # (done: a terminal event, or more than the limit)
            batch = await reader.next_batch()
            if batch is None:
                break
            for ev in batch:
                acc.feed(ev)
            if reader.holding:
                terminal += batch
        if reader.holding and not (
            acc.settled
            and acc.holds(reader.held_message_ids())
            and not reader.held_any(_MESSAGE_PART_EVENTS)
        ):
            # the terminal event alone does not give the answer (nor hold every
            # message announced, whose text the stream showed, nor a message's
            # thoughts or refusal, which Llama Stack streams and leaves out of
            # it: see ResponseAccumulator): all, in order
            acc = ResponseAccumulator(limit)
            for ev in reader.take_held() + terminal:
                acc.feed(ev)
        return acc.result()

    # -- POST /v1/responses (passthrough) --

    def _prepare_passthrough(self, raw: bytes) -> tuple[bool, bool, list[str], bytes]:
        """Whether the client asked for a stream, whether the backend is asked
        for one, the keys left out, and the request's bytes (pure work: run in
        a thread for a large body)."""
        req = parse_json_object(raw)
        client_stream = req.get("stream") is True
        body, dropped = prepare_passthrough(req, self.opts)
        payload = _encode_body(body, len(raw))
        self._check_size(payload, body)
        return client_stream, bool(body.get("stream")), dropped, payload

    async def responses(self, ex: Exchange) -> None:
        client_stream, stream, dropped, payload = await _off_the_loop_if_large(
            self._prepare_passthrough, _take_body(ex)
        )
        if dropped and log.isEnabledFor(logging.DEBUG):
            log.debug("not forwarded to the backend: %s", _keys_shown(dropped))
        async with self.upstream.post("/responses", payload, self._headers_for(ex, stream)) as resp:
            del payload  # sent (the upstream client keeps no copy either)
            ex.conn.release_body()  # nothing of it is held while the answer comes
            ex.upstream_status = resp.status
            headers = [(b"content-type", _relayed_type(resp.header(b"content-type")))]
            if resp.status >= 400:
                raw = await resp.read_error(ERROR_BODY_LIMIT, self.config.backend.timeout)
                err = _backend_error(resp, raw, self._responses_url)
                if not _is_openai_error(raw) or isinstance(err, ContextLengthExceeded):
                    # Lightspeed's FastAPI detail, or text: the OpenAI envelope, as
                    # for chat (Goose reads error.message, and compacts on it); a
                    # context overflow as chat's too: 400, its message saying so
                    # (a 5xx relayed as it came would be sent again by the SDK)
                    raise err
                # relayed as it came, with the retry hints chat would give: none
                # on a context overflow, "x-should-retry: false" on a used-up quota
                headers += [(k.lower().encode(), v.encode()) for k, v in err.response_headers()]
                ex.warn_of(err)
                await ex.send(resp.status, raw, headers)
                return
            retry = retry_hints(retry_after=resp.header(b"retry-after"))  # (checked, as on errors)
            headers += [(k.lower().encode(), v.encode()) for k, v in retry]
            _raise_for_redirect(resp)
            adapt = self._adapt_answers
            stream_headers = [SSE_HEADERS[0], *headers[1:], *SSE_HEADERS[1:]]
            if not await resp.is_event_stream():
                raw = await resp.read(self.config.backend.max_event_size)
                out, as_events = _json_answer(raw, adapt, client_stream)
                if as_events:  # a stream was asked for: the answer as one
                    await ex.start_stream(resp.status, stream_headers, out)
                    await ex.conn.end_stream()
                    return
                if resp.labelled != resp.content_type:
                    headers[0] = JSON  # a JSON answer the backend labelled a stream
                await ex.send(resp.status, out, headers)
                return
            if not client_stream:  # a stream asked for on the client's behalf
                answer = await self._collect(resp)
                answer = adapt_response(answer) if adapt else answer
                await ex.send(resp.status, encode_json_for_client(answer), [JSON])
                return

            async def send(data: bytes) -> None:
                if ex.status is None:  # the first bytes: the answer has started
                    await ex.start_stream(resp.status, stream_headers, data)
                else:
                    await ex.conn.send_data(data)

            relay = PassthroughRelay(
                resp.receive,
                send,
                self.config.backend.max_event_size,
                AnswerAdapter() if adapt else None,
            )
            ex.error_frames = relay.error_frames
            await relay.run()
            await ex.conn.end_stream()


def _relayed_type(ctype: Optional[str]) -> bytes:
    """The backend's ``Content-Type`` for the client: as it came when it is a
    printable ASCII line of at most 200 characters, else ``application/json``."""
    if not ctype or len(ctype) > 200 or not (ctype.isascii() and ctype.isprintable()):
        return b"application/json"
    return ctype.encode()


def _chat_answer(resp: dict[str, Any], creq: ChatRequest) -> bytes:
    """The ``chat.completion`` body for a finished Response object: in the legacy
    ``function_call`` shape when the client sent the deprecated ``functions``."""
    completion = responses_to_chat(resp, creq.client_model, creq.refusal_in_content)
    if creq.legacy_functions:
        _log_left_out(as_function_call(completion))
    return encode_json_for_client(completion)


def _log_left_out(calls: int) -> None:
    """A warning when an answer in the legacy ``function_call`` shape, which
    carries one call, left out the backend's other calls."""
    if calls:
        log.warning(
            "the backend answered with %d tool calls; the client sent the deprecated "
            "functions, whose answer (function_call) carries one: only the first was sent",
            calls + 1,
        )


def _json_answer(raw: bytes, adapt: bool, as_stream: bool) -> tuple[bytes, bool]:
    """A passthrough answer the backend sent whole (not SSE), as it goes to the
    client, and whether it is now SSE: adapted for strict clients when ``adapt``
    (see :func:`adapt_response`), and for a client that asked for a stream
    (``as_stream``), the finished Response as the events a streaming backend
    would have sent (the openai SDK and Goose read JSON as an empty stream).

    Raises what a client can act on instead of a 200 it would read as an empty
    answer: for a body that is not a JSON object, what :func:`_load_upstream_json`
    raises; UpstreamNotAResponse for one that is no Response (no ``output`` list), and
    for a client that streams, the failure a Response reports (as chat
    answers it: a context overflow is a 400) or UpstreamNotAResponse for one
    not finished (a 200 whose body is an error object raises that error for
    either). A Response that is not finished goes as it came to a client that
    does not stream (a backend that answers JSON to the stream asked of it);
    so does one that failed, and one that needs no change is ``raw`` itself.
    """
    obj = _load_upstream_json(raw)
    if as_stream or not isinstance(obj.get("output"), list):
        failure = check_finished(obj)  # or raises UpstreamNotAResponse
        if failure is not None:
            raise failure
    resp = adapt_response(obj) if adapt else obj
    if as_stream:
        return b"".join(_event_frame(ev["type"], ev) for ev in stream_of_response(resp)), True
    return (raw if resp is obj else encode_json_for_client(resp)), False


def _backend_chars(body: Any) -> int:
    """The length of ``body`` as Lightspeed Stack counts it for its cap: the
    characters of Python's ``json.dumps`` of the parsed body (what a client
    sends, with ASCII escapes: a non-ASCII character is 6, or 12 outside the
    BMP; and ``", "``, ``": "`` between items)."""
    return len(json.dumps(body))


def _most_chars(payload: bytes) -> int:
    """A bound :func:`_backend_chars` of a body cannot pass, read from its
    compact UTF-8 encoding ``payload`` alone (cheaper than encoding it again):
    each byte is one character there, one more for each ``,`` and ``:`` (in a
    string or not), two more for each byte of a non-ASCII character (its 2, 3
    or 4 bytes are 6, 6 or 12 characters), five more for DEL."""
    n = len(payload)
    if 6 * n <= _SMALL_BODY_CHARS:  # no byte stands for more than 6 characters
        return 6 * n
    most = n + n - len(payload.translate(None, b",:"))
    if not payload.isascii():
        most += 2 * (n - len(payload.translate(None, _HIGH_BYTES)))
    return most + 5 * payload.count(b"\x7f")


#: bodies of up to a sixth of this many bytes are never near any cap worth the
#: counting (Lightspeed's is 65,536 characters)
_SMALL_BODY_CHARS = 16_384
_HIGH_BYTES = bytes(range(128, 256))


def _over_cap(body: dict[str, Any], chars: int, limit: int) -> ProxyError:
    """The error for ``body`` (``chars`` characters) over the cap of ``limit``.

    Lightspeed Stack refuses a body over 65,536 characters with a 422 that
    Goose treats as a plain bad request (it would retry the same request
    forever); as ``context_length_exceeded`` Goose compacts its history. When
    the body would be over the cap without any input (its tools and
    instructions), or with only the newest user message (a large image, say),
    compacting cannot help: a plain 400 says which part fills it (the tools
    whenever they alone are over it).
    """
    fixed = _backend_chars({**body, "input": []})
    alone = _newest_user_message_alone(body)
    if fixed <= limit and alone <= limit:
        return ContextLengthExceeded(
            f"the conversation is too long for the backend: the request would be "
            f"{chars:,} characters and the backend accepts at most {limit:,} "
            "([backend] max_request_chars); shorten or compact it"
        )
    if fixed <= limit and alone - fixed > fixed:
        return InvalidRequest(
            f"the newest message is too large for the backend: with it alone the request "
            f"would be {alone:,} characters, over the {limit:,} the backend accepts "
            "([backend] max_request_chars), so compacting the conversation cannot help; "
            "send less in one message (a smaller image or file)",
            code="string_above_max_length",
        )
    return InvalidRequest(
        f"the tools and instructions take {fixed:,} of the {limit:,} characters the backend "
        "accepts ([backend] max_request_chars), so compacting the conversation cannot help; "
        "offer fewer tools (extensions) or shorter instructions",
        code="request_too_large",
    )


def _newest_user_message_alone(body: dict[str, Any]) -> int:
    """How many characters ``body`` would have with only its newest input item,
    when that item is the user's message (0 otherwise: a tool's output may be
    cut short by a client's compaction, a user's image or paste is not).

    User messages without text right after a tool's output are that tool's
    images: Goose sends a tool result's images so (one message each), the tool
    message saying "the image is uploaded in the next message", and its
    compaction drops them.
    """
    items = body.get("input")
    if isinstance(items, str):  # the passthrough's shorthand: one user message
        return _backend_chars(body)
    if not (isinstance(items, list) and items and isinstance(items[-1], dict)):
        return 0
    last = items[-1]
    if last.get("role") != "user" or last.get("type", "message") != "message":
        return 0
    i = len(items) - 1
    while i >= 0 and _textless_user_message(items[i]):
        i -= 1
    if i < len(items) - 1 and i >= 0 and isinstance(items[i], dict):
        if items[i].get("type") == "function_call_output":
            return 0  # a tool's images: compacting drops them
    return _backend_chars({**body, "input": items[-1:]})


def _textless_user_message(item: Any) -> bool:
    """A user message item whose content (a list of parts) has no text part."""
    if not (isinstance(item, dict) and item.get("role") == "user"):
        return False
    content = item.get("content")
    return isinstance(content, list) and not any(
        isinstance(p, dict) and p.get("type") == "input_text" for p in content
    )


#: FastAPI's words when no route matches: the endpoint, not the request, is wrong
_NO_ROUTE = ("Not Found", "Method Not Allowed")


def _backend_error(resp: UpstreamResponse, raw: bytes, url: str) -> ProxyError:
    """The error for the backend's error answer ``resp`` with the body ``raw``
    (to a request posted to ``url``, redacted)."""
    err = error_from_backend(resp.status, raw, **_retry_headers(resp))
    if resp.status in (404, 405) and err.message in _NO_ROUTE:
        err.message += (
            f": the backend serves no POST {url}; check [backend] endpoint "
            "(a Lightspeed Stack of your own serves it under /v1)"
        )
    return err


def _retry_headers(resp: UpstreamResponse) -> dict[str, Optional[str]]:
    """A backend answer's retry hints, as the arguments of :func:`error_from_backend`
    and :func:`retry_hints` (which check them before they are repeated)."""
    return {
        "retry_after": resp.header(b"retry-after"),
        "retry_after_ms": resp.header(b"retry-after-ms"),
        "should_retry": resp.header(b"x-should-retry"),
    }


def _raise_for_redirect(resp: UpstreamResponse) -> None:
    """A 3xx is no answer: the endpoint is wrong, or a login page stands in front
    of it (an SSO gateway). Not followed, and not relayed (a client would get a
    redirect without the body it asked for)."""
    if resp.status == 304:  # no redirect: "Not Modified", to a request that set no condition
        raise UpstreamRedirect(
            "backend answered HTTP 304 (Not Modified) to a request that was not "
            "conditional; check [backend] endpoint"
        )
    if 300 <= resp.status < 400:
        where = redact_location(resp.header(b"location") or "")
        to = f" to {where!r}" if where else ""
        raise UpstreamRedirect(
            f"backend answered HTTP {resp.status} (a redirect{to}); goose-proxy does not "
            "follow redirects: check [backend] endpoint"
        )


class PassthroughRelay:
    """Relays a passthrough stream from ``receive`` (``b""`` at the end) to ``send``
    (:meth:`run`), and makes the error event that ends it when it breaks
    (:meth:`error_frames`).

    The backend's bytes go through unchanged, but only whole events (up to
    the last blank line), so that an error event the caller adds never lands
    inside a cut one, and no byte of an event over ``limit`` or not UTF-8 (nor
    of any after it) goes out; blocks
    with fields but no data (no event, yet the openai SDK fails on them) and
    the lines of fields other than data and event (see :func:`_relayable`)
    are left out. A parser beside them
    watches the whole events for the end. After the terminal event, what
    follows (a ``[DONE]`` within :data:`DONE_GRACE`, in total) ends it
    quietly, errors included, and only that ``[DONE]`` goes out. :meth:`run` raises
    UpstreamProtocolError for an event over ``limit`` or not UTF-8, and when
    the stream ends before its terminal event, so that the caller adds a
    Responses error event, as a chat stream does.

    A ``[DONE]`` that comes before the terminal event is held back (the
    openai SDK and Goose stop reading at ``[DONE]``, so an error event after
    it would go unseen): if the terminal event follows (within
    :data:`DONE_GRACE`), the ``[DONE]`` goes out right after it; otherwise
    the stream ended early, and the ``[DONE]`` goes out after the error event.

    Nothing is sent before the answer starts (see :func:`_answer_starts`):
    the events before it are held (up to ``limit`` bytes). If the stream fails
    first (``response.failed``, ``error``), the mapped error is raised instead,
    and nothing was sent: the caller answers with an HTTP status, as for chat
    (Goose compacts on a 400 ``context_length_exceeded``, which it does not
    read from a stream); so does a stream that breaks or ends by then.

    With an ``adapter`` (the lightspeed flavour), the events it changes go out
    as it changes them (``event:`` line kept, compact JSON) and those it leaves
    out not at all (see :func:`_adapt_events`); the others go through as they
    came, and only events of :data:`ADAPTED_EVENTS` are parsed for it (never a
    text delta, nor the argument delta of a call announced; a few per
    response).
    """

    def __init__(
        self,
        receive: Callable[[], Awaitable[bytes]],
        send: Callable[[bytes], Awaitable[None]],
        limit: int,
        adapter: Optional[AnswerAdapter] = None,
    ) -> None:
        self._receive = receive
        self._send = send
        self._limit = limit
        self._adapter = adapter
        self._ended = False  # a terminal event went by: only [DONE] may follow
        self._done = b""  # a [DONE] that came before the terminal event, held back
        self._last: Optional[SSEEvent] = None  # the last numbered event relayed

    def error_frames(self, err: ProxyError) -> list[bytes]:
        """The Responses ``error`` event for ``err`` (then a held ``[DONE]``); nothing
        once the terminal event went out (the answer is complete).

        The event has the fields of the openai SDK's ``ResponseErrorEvent``
        (``type``, ``code``, ``message``, ``param``, ``sequence_number``: one
        more than the last numbered event's, 0 if none was) and the error
        object a chat stream's error carries (``error``: ``message``, ``type``,
        ``param``, ``code``), which Goose and the SDK's ``APIError`` read.
        """
        if self._ended:
            return []
        error = err.to_dict()["error"]
        event = {
            "type": "error",
            "code": error["code"],
            "message": error["message"],
            "param": error["param"],
            "sequence_number": self._next_sequence_number(),
            "error": error,
        }
        frame = _event_frame("error", event)
        return [frame, self._done] if self._done else [frame]

    def _next_sequence_number(self) -> int:
        """One more than the last numbered event's ``sequence_number`` (0 if none):
        parsed only here, not for every event on the way."""
        if self._last is None:
            return 0
        obj = _event_dict(self._last.data)
        seq = obj.get("sequence_number") if obj is not None else None
        return seq + 1 if isinstance(seq, int) and not isinstance(seq, bool) else 0

    async def run(self) -> None:
        receive, send, limit = self._receive, self._send, self._limit
        parser = SSEParser(limit)
        held: Optional[list[bytes]] = []  # whole events before the answer; None once it started
        held_size = 0
        grace = 0.0  # after the terminal event or a [DONE]: when to stop waiting for the end
        #: the start of an event not complete yet (a bytearray once it spans a read)
        carry: Union[bytes, bytearray] = b""
        while True:
            data: Optional[bytes] = None
            try:
                if self._ended or self._done:
                    with anyio.CancelScope(deadline=grace):
                        data = await receive()
                    if data is None:
                        if self._ended:
                            break  # no [DONE] in time; the answer is complete anyway
                        raise UpstreamProtocolError(ENDED_EARLY)  # [DONE] but no end
                else:
                    data = await receive()
            except ProxyError:
                if self._ended:
                    break  # what follows the terminal event does not matter
                raise
            whole, carry, too_big = _split_read(carry, data, limit)
            events: list[SSEEvent] = []
            error: Optional[UpstreamProtocolError] = None
            odd = parser.fieldless + parser.other_fields
            try:
                events = parser.feed(whole) if whole else []
                if not data:
                    tail = parser.close()  # an event its blank line never came for
                    if tail and _whole(tail[-1]):
                        events += tail
                        whole += b"\n\n"
                    elif tail:
                        events, whole = [], b""  # cut short: not passed on
                parser.check()  # an error held back behind good events
            except UpstreamProtocolError as e:
                error = e
            ended_before = self._ended
            done = early_done = False
            end_at = -1  # the index of the terminal event, if it is in this read
            for i, ev in enumerate(events):  # in order: nothing after the ending [DONE] counts
                if not _named(ev) and ev.data != _DONE and not _may_be_terminal(ev.data):
                    continue  # an unnamed event whose text shows no terminal type: no JSON
                kind = _event_kind(ev)
                if kind == _DONE:
                    if self._ended and not self._done:
                        done = True
                        break
                    early_done = True  # before the terminal event (or after a held one)
                elif not self._ended and kind in TERMINAL_EVENTS:
                    self._ended, grace = True, anyio.current_time() + DONE_GRACE
                    end_at = i
            if error is not None and not self._ended:
                # the events before the bad one go out, not its bytes: a client
                # that cannot read them would never read the error event either
                # (cut first: what follows works on the events parsed from whole)
                whole = _readable_events(whole, limit)
            if parser.fieldless + parser.other_fields != odd:
                whole = _relayable(whole)
            if self._adapter is not None:  # (a read is mostly one text delta: parses none)
                whole = _adapt_events(whole, events, self._adapter, error is None)
            if ended_before:  # after the terminal event only a [DONE] goes out
                whole = _cut_done(whole)[1] if done else b""
            elif end_at >= 0 and (error is not None or _more_than_done(events[end_at + 1 :])):
                whole = _through_end(whole)
            if early_done:
                whole, first = _cut_done(whole)
                events = [ev for ev in events if ev.data != _DONE]
                if not self._done:
                    self._done = first
                    if not self._ended:
                        grace = anyio.current_time() + DONE_GRACE
            for ev in reversed(events):  # the last one numbered (a keep-alive may not be)
                if '"sequence_number"' in ev.data:
                    self._last = ev
                    break
            if self._done and self._ended and not ended_before:
                whole += self._done  # the end came after all: [DONE] right after it
                done = True
            if whole and held is None:
                await send(whole)
            if held is not None:  # (whole holds no bad event, see above)
                held.append(whole)
                held_size += len(whole)
                started, failure = _answer_starts(events)
                if failure is not None:
                    raise failure
                if started or held_size > limit:
                    await send(b"".join(held))
                    held = None
            if self._ended and (error is not None or too_big):
                break  # what follows the terminal event does not matter
            if error is not None:
                raise error
            if too_big:
                raise UpstreamProtocolError(
                    f"backend sent a stream event larger than {limit} bytes"
                )
            if done:
                break
            if not data:
                if not self._ended:
                    raise UpstreamProtocolError(ENDED_EARLY)
                break


def _split_read(
    carry: Union[bytes, bytearray], data: bytes, limit: int
) -> tuple[bytes, Union[bytes, bytearray], bool]:
    """``(whole, carry, too_big)``: the whole events of ``carry + data`` (``data``
    ``b""`` at the end: a last event without its blank line goes out as it is),
    the start of the next one, and whether an event over ``limit`` stops them."""
    if not carry:  # the usual read: whole events, then maybe the start of one
        if not data:
            return b"", carry, False
        cut, too_big = _whole_events(data, 0, limit)
        return data[:cut], data[cut:], too_big
    if not data:
        return bytes(carry), b"", False
    if (
        type(carry) is bytearray
        and len(carry) + len(data) <= limit
        and not _may_end_event(carry, data)
    ):
        # an event that spans reads goes on: it grows in place, not copied or
        # scanned again (one large event in many small reads costs linear time)
        carry += data
        return b"", carry, False
    buf = b"".join((carry, data))
    cut, too_big = _whole_events(buf, max(0, len(carry) - 3), limit)
    # an event that spans a whole read becomes a bytearray, to grow (above)
    return (buf[:cut], buf[cut:], too_big) if cut else (b"", bytearray(buf), too_big)


def _more_than_done(events: list[SSEEvent]) -> bool:
    """Whether ``events`` (those after the terminal event in its read) hold more
    than the one ``[DONE]`` that may follow it."""
    return len(events) > 1 or (len(events) == 1 and events[0].data != _DONE)


def _through_end(whole: bytes) -> bytes:
    """``whole`` (whole events) up to its terminal event, then the first ``[DONE]``
    after it if one is there: nothing else a client would read after the end
    (an event that is no JSON would break the openai SDK's stream and Goose's
    turn although the answer is complete). Called only when more follows the
    terminal event in its read: it parses each event again."""
    kept: list[bytes] = []
    ended = False
    for event in _event_bytes(whole):
        evs = _events_in(event)
        if not ended:
            kept.append(event)
            ended = any(_event_kind(ev) in TERMINAL_EVENTS for ev in evs)
        elif any(ev.data == _DONE for ev in evs):
            kept.append(event)
            break
    return b"".join(kept)


def _cut_done(whole: bytes) -> tuple[bytes, bytes]:
    """``whole`` (whole events) without its ``[DONE]`` events, and the first of them
    as it came (called only when one is there: it parses each event again)."""
    kept: list[bytes] = []
    first = b""
    for event in _event_bytes(whole):
        if b"[DONE]" in event and any(ev.data == _DONE for ev in _events_in(event)):
            first = first or event
        else:
            kept.append(event)
    return b"".join(kept), first


def _event_bytes(whole: bytes) -> list[bytes]:
    """``whole`` (whole events) cut after each blank line: each event's bytes as
    they came (comments and other fields included), then what follows the last
    blank line. Cut where :class:`SSEParser` ends events, so the nth of them that
    holds an event holds the nth event the parser finds in ``whole``."""
    out: list[bytes] = []
    start = 0
    for end in _event_ends(whole):
        out.append(whole[start:end])
        start = end
    out.append(whole[start:])
    return out


def _readable_events(whole: bytes, limit: int) -> bytes:
    """The events of ``whole`` (whole events) before the first one that
    :class:`SSEParser` refuses (not UTF-8, over ``limit``), as they came.
    Only for a read that held a bad event: each event is parsed again."""
    kept: list[bytes] = []
    for event in _event_bytes(whole):
        probe = SSEParser(limit)
        try:
            probe.feed(event)
            probe.close()  # the last one may lack its blank line (the stream's end)
        except UpstreamProtocolError:
            break
        kept.append(event)
    return b"".join(kept)


def _event_ends(whole: bytes) -> Iterator[int]:
    """Where the events of ``whole`` (whole events) end: after each blank line
    (with ``bytes.find`` where every line ends with LF, as most streams' do)."""
    if b"\r" in whole:
        # whole was cut at a blank line seen with the byte after it: a CR at its
        # very end ends a line ("." stands for that byte, which was no LF)
        for m in _BLANK_LINE.finditer(whole + b"."):
            yield m.end()
        return
    end = whole.find(b"\n\n")
    while end >= 0:
        yield end + 2
        end = whole.find(b"\n\n", end + 2)


#: the field names whose lines a relayed event keeps (b"": a comment, a blank line)
_RELAYED_FIELDS = frozenset({b"", b"data", b"event"})


def _relayable(whole: bytes) -> bytes:
    """``whole`` without what clients fail on, though SSE allows it:

    - the blocks that hold fields but no data (``retry: 3000``, ``id: 7``, a
      bare ``event: ping``): they dispatch no event, but the openai SDK reads
      each as an event with empty data and fails on its JSON (the whole answer
      was lost);
    - in the others, the lines of fields other than ``data`` and ``event``.
      The SDK keeps the last ``id`` from one event to the next, as the SSE
      rules say, and once it holds one it reads every later blank line (a
      keep-alive comment's) as an event with empty data; Goose reads every
      line but ``event:``, comments and blank ones as JSON (``retry: 3000``
      next to the data failed its turn). No Responses client reconnects with
      ``Last-Event-ID`` or waits ``retry``.

    Comments (keep-alives) stay."""
    return b"".join(
        _relayed_lines(b)
        for b in _event_bytes(whole)
        if (b"data" in b and _holds_event(b)) or not has_fields(b)
    )


def _relayed_lines(event: bytes) -> bytes:
    """The bytes of one event with only its data and event lines, comments and
    blank lines (any line ending)."""
    lines = event.splitlines(keepends=True)
    return b"".join(
        line for line in lines if line.rstrip(b"\r\n").partition(b":")[0] in _RELAYED_FIELDS
    )


def _events_in(event: bytes) -> list[SSEEvent]:
    """The event in ``event`` (the bytes of one, up to its blank line): none for
    comments alone, or bytes that are not UTF-8."""
    try:
        return SSEParser(len(event) + 1).feed(event)
    except UpstreamProtocolError:
        return []


def _may_be_adapted(data: str) -> bool:
    """Whether the data of an event without a name may be of one of
    :data:`ADAPTED_EVENTS`: it shows such a type, or a Response (a text delta's
    quotes are escaped, so its text never shows one)."""
    return '"response.output_text.delta"' not in data and (
        '"response"' in data
        or '"response.output_item.' in data
        or '"response.content_part.' in data
        or '"response.function_call_arguments.' in data
        or '"error"' in data  # the type of a flat error event (or a key: parsed, left)
    )


def _adapt_events(
    whole: bytes, events: list[SSEEvent], adapter: AnswerAdapter, every: bool = True
) -> bytes:
    """``whole`` (whole events; ``events`` parsed from it: ``every`` one of them, or,
    when the parser refused one, those before it), the events ``adapter``
    changes written anew and those it leaves out taken away; ``whole`` itself
    when it changes none.

    Only the events named as one of :data:`ADAPTED_EVENTS` (an event without a
    name: whose data shows such a type, or a Response) are parsed; one that is
    not a JSON object goes as it came.
    """
    changed: dict[int, bytes] = {}
    for i, ev in enumerate(events):
        name = _named(ev)
        if not (name in ADAPTED_EVENTS if name else _may_be_adapted(ev.data)) and not (
            adapter.moved and adapter.relocates(ev.data)
        ):
            continue
        arguments = name in ARGUMENT_EVENTS if name else '"response"' not in ev.data
        if arguments and adapter.names_a_call(ev.data):
            continue  # a client's call's argument event: as it came, unparsed
        obj = _event_dict(ev.data)
        if obj is None:
            continue
        kind = obj.get("type")
        out = adapter.event(obj, kind if isinstance(kind, str) else name)
        if out is not obj:
            changed[i] = b"" if out is None else _event_frame(ev.event, out)
    if not changed:
        return whole
    # Cut where the parser cut: the events up to the last changed one, the rest
    # in one piece. A read is often a hundred text deltas, and Lightspeed's
    # Response events (with its conversation, always changed) begin and end the
    # stream: the last event of a read is found from its end.
    tail = b""
    if every and len(events) - 1 in changed and whole.endswith(b"\n\n") and b"\r" not in whole:
        cut = whole.rfind(b"\n\n", 0, len(whole) - 2) + 2  # 1: the read's only event
        cut = 0 if cut == 1 else cut
        if _holds_event(whole[cut:]):
            whole, tail = whole[:cut], changed.pop(len(events) - 1)
            if not changed:
                return whole + tail
    last = max(changed)
    kept: list[bytes] = []
    n = start = 0  # events so far; where the next one begins
    for end in _event_ends(whole):
        event = whole[start:end]
        if _holds_event(event):
            event = changed.get(n, event)
            n += 1
        kept.append(event)
        start = end
        if n > last:
            break
    kept.append(whole[start:])
    kept.append(tail)
    return b"".join(kept)


def _holds_event(event: bytes) -> bool:
    """Whether the bytes of one event (see :func:`_event_bytes`) hold an event the
    parser returns (:func:`_events_in`): at once for the usual ``data:`` or
    ``event:`` + ``data:`` lines (a data field makes an event), else parsed."""
    if event.startswith(b"data:") or (event.startswith(b"event:") and b"\ndata:" in event):
        return True
    return bool(_events_in(event))


def _event_frame(name: Optional[str], obj: dict[str, Any]) -> bytes:
    """An SSE event of ``obj`` (compact JSON) under the ``event:`` name ``name``."""
    head = b"event: " + name.encode() + b"\n" if name else b""
    return head + b"data: " + encode_json_for_client(obj) + b"\n\n"


#: a blank line: two line ends (CRLF, LF, or a CR not followed by LF; a CR at the
#: very end waits for the next byte, which may make it a CRLF), ending an SSE event
_LINE_END = rb"(?:\r\n|\n|\r(?=[^\n]))"
_BLANK_LINE = re.compile(_LINE_END + _LINE_END)


def _whole_events(buf: bytes, start: int, limit: int) -> tuple[int, bool]:
    """``(end, too_big)``: where the whole events at the front of ``buf`` end, looking
    for blank lines from ``start``, and whether an event over ``limit`` bytes (whole,
    or the one still arriving) stops them there.

    The usual read (LF line ends, less than ``limit`` bytes: no event in it can
    be too big) needs only its last blank line, found from the end; the scan
    of :func:`_scan_whole_events` costs a match object per event.
    """
    if len(buf) <= limit and b"\r" not in buf:
        last = buf.rfind(b"\n\n", start)
        if last < 0:
            return 0, False
        # The scan pairs the LFs of a run from its first one (or from start):
        # a run of odd length keeps its last LF for the next event.
        first = last
        while first > start and buf[first - 1] == 10:  # LF
            first -= 1
            if last - first > 64:  # an absurd run of LFs: let the scan count it
                return _scan_whole_events(buf, start, limit)
        run = last + 2 - first
        return first + run - run % 2, False
    return _scan_whole_events(buf, start, limit)


def _may_end_event(carry: Union[bytes, bytearray], data: bytes) -> bool:
    """Whether ``carry + data`` may hold a blank line at or after ``len(carry) - 3``
    (where :func:`_whole_events` looks for one when ``carry`` is the start of an
    event), seen from ``data`` and the last bytes of ``carry`` only.

    Every blank line holds LF LF, LF CR or CR CR (CRLF CRLF, LF CRLF, CR CRLF, ...).
    So when none is there, ``carry + data`` holds no whole event; the converse
    does not hold (a CR at the very end may yet be half a CRLF).
    """
    if b"\n\n" in data or (b"\r" in data and (b"\n\r" in data or b"\r\r" in data)):
        return True
    seam = carry[-3:] + data[:1]  # a blank line across the reads, or one that waited for a byte
    return b"\n\n" in seam or b"\n\r" in seam or b"\r\r" in seam


def _scan_whole_events(buf: bytes, start: int, limit: int) -> tuple[int, bool]:
    """:func:`_whole_events` for any buffer: every blank line, left to right."""
    end = 0
    for m in _BLANK_LINE.finditer(buf, start):
        if m.start() - end > limit:
            return end, True
        end = m.end()
    # the event still arriving, without line ends that may be the start of its blank line
    return end, len(buf) - end > limit and len(buf[end:].rstrip(b"\r\n")) > limit


#: the events that show a message's reasoning or refusal parts (see _collect)
_MESSAGE_PART_EVENTS = frozenset(
    {
        "response.reasoning_text.delta",
        "response.reasoning_text.done",
        "response.refusal.delta",
        "response.refusal.done",
    }
)
#: the delta events that show a message's text (a message known from them alone)
_SHOWN_TEXT = frozenset({"response.output_text.delta", "response.refusal.delta"})
#: events before the answer: the response opening, and the backend's own tool
#: work (Llama Stack lists and calls its MCP tools, Lightspeed searches its
#: documents) that a client only watches; anything else starts the answer
_PREAMBLE_EVENTS = frozenset({"response.created", "response.in_progress", "response.queued"})
_PREAMBLE_PREFIXES = (
    # whose call it is shows only later: Llama Stack streams the arguments of
    # its own knowledge_search (and, in older releases, announces its MCP
    # calls) as a function call; the client's own call starts the answer at
    # its output_item.done, or at the end of the response
    "response.function_call_arguments.",
    "response.mcp_list_tools.",
    "response.mcp_call.",
    "response.mcp_call_arguments.",
    "response.file_search_call.",
    "response.web_search_call.",
    "response.code_interpreter_call.",
    "response.code_interpreter_call_code.",
)
#: output items of that work (an ``mcp_approval_request`` is the client's to
#: answer, and a ``function_call`` or any other call the client's to run)
_PREAMBLE_ITEMS = frozenset(
    {"mcp_list_tools", "mcp_call", "file_search_call", "web_search_call", "code_interpreter_call"}
)


def _answer_starts(events: list[SSEEvent]) -> tuple[bool, Optional[ProxyError]]:
    """Whether ``events`` start the answer, and the failure it reports when the
    first event that does is one (its mapped error).

    The answer starts at the first event that is not preamble: not the
    response opening (``created``, ``in_progress``, ``queued``) and not the
    backend's own tool work (its MCP, file search, web search and code
    interpreter calls, and their output items), and a function call until it
    is done (Llama Stack streams its own calls' arguments as one). Text,
    reasoning, a refusal, a finished call for the client, audio, an event
    type this proxy does not know, and the end of the response all start it;
    so does a failure, which is returned.
    """
    for ev in events:
        kind = _event_kind(ev)
        if kind in ("error", "response.failed"):
            obj = _event_dict(ev.data)  # (None: relayed as it came; the client reads what it can)
            return True, (event_failure({**obj, "type": kind}) if obj is not None else None)
        if kind == _DONE:
            return False, None  # before the answer: the stream ended early
        if kind in _PREAMBLE_EVENTS or kind.startswith(_PREAMBLE_PREFIXES):
            continue
        if kind in ("response.output_item.added", "response.output_item.done"):
            obj = _event_dict(ev.data)
            item = obj.get("item") if obj is not None else None
            itype = item.get("type") if isinstance(item, dict) else None
            if itype in _PREAMBLE_ITEMS or (
                itype == "function_call" and kind == "response.output_item.added"
            ):
                continue
        return True, None
    return False, None


def _event_dict(data: str) -> Optional[dict[str, Any]]:
    """An event's data as a JSON object; None for anything else (not JSON, or no object)."""
    try:
        obj = event_json(data)
    except (ValueError, RecursionError):
        return None
    return obj if isinstance(obj, dict) else None


#: an event name as backends name Responses events: their types
_TYPE_NAME = re.compile(r"(?:response\.[\w.]+|error)\Z", re.ASCII)


#: the names most events come under: trusted without the pattern (a set lookup,
#: against 0.2 µs; the relay asks up to three times per event)
_COMMON_NAMES = TERMINAL_EVENTS | ADAPTED_EVENTS | _SHOWN_TEXT | _PREAMBLE_EVENTS


def _named(ev: SSEEvent) -> Optional[str]:
    """An event's name when it is a Responses type (``error``, ``response.…``);
    None for no name or another (``response.completed `` with SSE's trailing
    space kept, a gateway's ``chunk``): the openai SDK and Goose go by the
    data's ``type``, and so does the relay then."""
    name = ev.event
    if name in _COMMON_NAMES:
        return name
    return name if name and _TYPE_NAME.match(name) else None


def _event_kind(ev: SSEEvent) -> str:
    """An SSE event's Responses type (``[DONE]`` for the end marker)."""
    if ev.data == _DONE:
        return _DONE
    name = _named(ev)
    if name:
        return name
    obj = _event_dict(ev.data)
    if obj is None:
        return ""
    kind = obj.get("type")
    if kind is None and isinstance(obj.get("error"), dict):
        return "error"  # Llama Stack's own: data-only {"error": {"message": …}}
    return kind if isinstance(kind, str) else ""


def _is_openai_error(raw: bytes) -> bool:
    """The body is an OpenAI error envelope: ``{"error": {"message": "…", …}}``."""
    try:
        obj = json.loads(raw)
    except (ValueError, RecursionError):
        return False
    err = obj.get("error") if isinstance(obj, dict) else None
    return isinstance(err, dict) and isinstance(err.get("message"), str)


def _whole(ev: SSEEvent) -> bool:
    """An event whose data is ``[DONE]`` or a JSON document (not one cut short)."""
    if ev.data == _DONE:
        return True
    try:
        event_json(ev.data)
    except (ValueError, RecursionError):
        return False
    return True


def _load_upstream_json(raw: bytes) -> dict[str, Any]:
    """A 2xx JSON answer's object. UpstreamProtocolError (left to the client's
    rule) for JSON that runs to the end of the body unfinished, which a body
    framed by the connection's close and cut short looks like;
    UpstreamNotAResponse (not to be retried: a login page does not change)
    for any other body that is no JSON object (empty, a page, text, JSON
    with more after it, JSON but no object)."""
    try:
        obj = upstream_json(raw)
    except json.JSONDecodeError as e:
        cut = bool(e.doc.strip()) and (
            e.pos >= len(e.doc.rstrip()) or e.msg.startswith("Unterminated string")
        )
        cls = UpstreamProtocolError if cut else UpstreamNotAResponse
        raise cls("backend sent a response that is not JSON") from None
    except (ValueError, RecursionError):  # not UTF-8; nested past the parser's depth
        raise UpstreamNotAResponse("backend sent a response that is not JSON") from None
    if not isinstance(obj, dict):
        raise UpstreamNotAResponse("backend sent a JSON response that is not an object")
    return obj


#: Parsing and translating a body costs about 6 ms per MiB of text, about
#: 0.6 µs per JSON object or array and 0.25 µs per number, key or lone
#: surrogate: a 16 MiB body of tiny objects took the event loop for seconds,
#: and 8 MiB of numbers one. A body from OFF_LOOP_BODY on is handled in a
#: worker thread; one from COUNTED_BODY on too when it may hold
#: OFF_LOOP_CONTAINERS objects and arrays (``{`` and ``[`` counted, in
#: strings too: about 0.5 ms per MiB each). Smaller ones cannot cost much.
COUNTED_BODY = 256 * 1024
OFF_LOOP_CONTAINERS = 20_000
OFF_LOOP_BODY = 1024 * 1024

_T = TypeVar("_T")


async def _off_the_loop_if_large(work: Callable[[bytes], _T], raw: bytes) -> _T:
    """``work(raw)``, in a worker thread when it may take long (see
    OFF_LOOP_BODY): the loop keeps serving the other clients meanwhile (it
    takes the GIL every few milliseconds, but not while one C call runs, such
    as encoding a huge array). The thread is not free: about 3 ms more CPU on
    a 1 MiB body of text (``body-1mb``), measured end to end, though nothing
    in-process. The server's body budget bounds how many run at once."""
    size = len(raw)
    if size < COUNTED_BODY or (
        size < OFF_LOOP_BODY and raw.count(b"{") + raw.count(b"[") < OFF_LOOP_CONTAINERS
    ):
        return work(raw)
    import anyio.to_thread  # only for such bodies: not at start

    return await anyio.to_thread.run_sync(work, raw)


def _encode_body(body: dict[str, Any], size: int) -> bytes:
    """The bytes of a request ``body`` translated from a client's body of
    ``size`` bytes: in pieces when it is encoded in a worker thread (see
    :func:`encode_json_in_pieces`), else at once."""
    return encode_json_in_pieces(body) if size >= OFF_LOOP_BODY else encode_json(body)


def _keys_shown(keys: list[str]) -> str:
    """The client's own key names for a log line: quoted, control characters
    escaped (they are the client's), and cut (as the access line cuts a path)."""
    return shown(", ".join(map(ascii, keys)), PATH_CHARS)


def _take_body(ex: Exchange) -> bytes:
    """The request body, no longer held by the request (it may be megabytes, and
    the exchange lasts as long as the answer)."""
    body, ex.req.body = ex.req.body, b""
    return body


def _event_object(ev: SSEEvent) -> dict[str, Any]:
    """An SSE event's data as a Responses event object (``type`` from the SSE
    event name when the data has none). Raises UpstreamProtocolError."""
    try:
        obj = event_json(ev.data)
    except (ValueError, RecursionError):
        raise UpstreamProtocolError("backend sent a stream event that is not JSON") from None
    if not isinstance(obj, dict):
        raise UpstreamProtocolError("backend sent a stream event that is not an object")
    if "type" not in obj:
        if ev.event:
            obj["type"] = ev.event
        elif isinstance(obj.get("error"), dict):
            # Llama Stack ends a stream whose generator raised with a data-only
            # {"error": {"message": …}}: an error event, not one of no type
            obj["type"] = "error"
    return obj


class EventReader:
    """Reads a backend SSE body and returns parsed Responses events, a read at a time.

    With ``hold=True`` (collecting a non-streamed answer) the events named by
    an ``event:`` line, with a Responses type for a name (:func:`_named`: the
    name is what :meth:`held_message_ids` reads them by) that is not terminal
    and no terminal type in their text, are held unparsed (up to :data:`HOLD_LIMIT`): the terminal
    event usually carries the whole answer, and then the JSON of the events
    before it is never needed. :meth:`take_held` parses them when it is. Any
    other event that is not terminal (unnamed, named otherwise, or a terminal
    name on a non-terminal type), or reaching the limit, ends the holding: what was held
    is parsed and returned first, in order, and every later event is parsed.
    So while holding, the only event returned is the terminal one.
    """

    def __init__(self, resp: UpstreamResponse, max_event_size: int, hold: bool = False) -> None:
        self._resp = resp
        self._parser = SSEParser(max_event_size)
        self._ended = False
        self._held: Optional[list[SSEEvent]] = [] if hold else None
        self._held_size = 0
        #: an event that is no JSON object, behind good ones of the same read:
        #: raised by the next call, once they are delivered (as SSEParser does)
        self._error: Optional[UpstreamProtocolError] = None
        #: after a [DONE] that came before the terminal event: until when to wait
        #: for that event all the same (the passthrough gives it the same grace)
        self._grace: Optional[float] = None

    @property
    def holding(self) -> bool:
        """Still holding: every event so far is held, but for a terminal one returned."""
        return self._held is not None

    def held_message_ids(self) -> set[str]:
        """The ids of the message items the held events announced, or showed
        text of without announcing them (only their ``output_item.added``
        events are parsed for it; a text delta's ``item_id`` is read from its
        unparsed JSON, at about 0.5 µs each)."""
        ids: set[str] = set()
        for ev in self._held or ():
            if ev.event in _SHOWN_TEXT:
                item_id = item_id_in(ev.data)
                if item_id is not None:
                    ids.add(item_id)
            elif ev.event == "response.output_item.added":
                obj = _event_dict(ev.data)
                item = obj.get("item") if obj is not None else None
                if isinstance(item, dict) and item.get("type") == "message":
                    item_id = item.get("id")
                    if isinstance(item_id, str):
                        ids.add(item_id)
        return ids

    def held_any(self, names: frozenset[str]) -> bool:
        """Whether an event held is named one of ``names``."""
        return any(ev.event in names for ev in self._held or ())

    def take_held(self) -> list[dict[str, Any]]:
        """The held events, parsed (UpstreamProtocolError as for any event); holding ends."""
        held, self._held = self._held or [], None
        return [_event_object(ev) for ev in held]

    async def next_batch(self) -> Optional[list[dict[str, Any]]]:
        """The events completed by the next read (maybe none); None at the end.

        The terminal events end the stream like EOF does (what follows them is
        not read). So does ``[DONE]``, but one that comes before the terminal
        event leaves :data:`DONE_GRACE` seconds for that event to follow, as on
        the passthrough. Raises UpstreamProtocolError for an event that is not
        a JSON object (behind good events of the same read: by the next call,
        once they are returned), UpstreamTimeout/UpstreamError from I/O.
        """
        if self._error is not None:
            raise self._error
        if self._ended:
            return None
        self._parser.check()  # an error held back behind the previous read's events
        if self._grace is None:
            data = await self._resp.receive()
        else:
            data = None
            with anyio.CancelScope(deadline=self._grace):
                data = await self._resp.receive()
            if data is None:  # the grace ran out: the end, a half-come event not read
                self._ended = True
                return None
        raw = self._parser.feed(data) if data else self._parser.close()
        out: list[dict[str, Any]] = []
        for ev in raw:
            if ev.data == _DONE:
                if self._grace is None:
                    self._grace = anyio.current_time() + DONE_GRACE
                continue
            held = self._held
            if (
                held is not None
                and (name := _named(ev))
                and name not in TERMINAL_EVENTS
                and not _may_be_terminal(ev.data)
            ):
                self._held_size += len(ev.data) + len(name) + HELD_EVENT_COST
                if self._held_size <= HOLD_LIMIT:
                    held.append(ev)
                    continue
            try:
                obj = _event_object(ev)
            except UpstreamProtocolError as e:
                if held:
                    self.take_held()  # a bad event held earlier is reported first
                if not out:
                    raise
                self._error = e  # the good events before it go first
                break
            kind = obj.get("type")
            if isinstance(kind, str) and kind in TERMINAL_EVENTS:
                out.append(obj)
                self._ended = True
                break
            if held is not None:  # any other event ends the holding; the held come first
                out += self.take_held()
            out.append(obj)
        if not data:
            self._ended = True
        if self._ended and not out:
            return None
        return out
