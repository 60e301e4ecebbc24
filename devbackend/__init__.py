"""A scripted fake Responses API backend, for development, tests and benchmarks.

It speaks the OpenAI Responses API the way Lightspeed Stack 0.7.1 does (byte
shapes from ``tests/fixtures/lightspeed-0.7.1/``), over plain HTTP or HTTPS that
requires a client certificate (mTLS). Not part of the ``goose_proxy`` package.

Routes
------
``POST /responses`` (and ``/v1/responses``, or any path ending in ``/responses``)
    The scripted model, see below.
``GET /models`` (any path ending in ``/models``)
    A Lightspeed-style model list (what ``goose-proxy check`` probes);
    ``X-Dev-Fault: status:<code>`` answers that status instead.
``GET /health``
    ``200 {"status":"ok"}``.
``GET /_dev/stats``
    The counters as JSON: ``requests_total``, ``in_flight``, ``max_in_flight``,
    ``connections_accepted``, ``connections_open``, ``tls_handshakes``,
    ``tls_handshake_failures``, ``control_requests``, ``client_subjects``.
``POST /_dev/reset``
    Zero the counters and forget the recorded requests.

The script
----------
- Default: a text answer ``Hello from goose-proxy dev backend. You said: <last
  user text>``, one ``response.output_text.delta`` per word, with the full
  event sequence of ``lcs_stream_text.sse`` (``created``, ``in_progress``,
  ``output_item.added``, ``content_part.added``, deltas, ``content_part.done``,
  ``output_item.done``, ``completed`` with usage, ``data: [DONE]``).
- The last user text contains ``USE_TOOL`` and ``tools`` has a function: a
  ``function_call`` of the first function tool, its arguments in two deltas,
  then ``.done`` (``lcs_stream_tool.sse``).
- The last input item is a ``function_call_output``: the text answer ``Tool
  said: <output>`` (``lcs_stream_tool_followup.sse``).
- ``stream`` false or absent: one Response JSON object
  (``lcs_nonstream_*.json``), Content-Length framed.

Modes: ``lightspeed`` (default) — ``event:`` + ``data:`` lines, JSON with
spaces, the Lightspeed extras, ``data: [DONE]``, only Lightspeed's request
fields accepted (anything else: 422 like ``err_422_extra_field.json``) and the
body capped at 65,536 characters (422). ``openai`` — ``data:`` lines only,
compact JSON, ``response.output_text.done`` events, no ``[DONE]``, any field
accepted, no cap.

Knobs (request headers)
-----------------------
``X-Dev-Delay-Headers: <seconds>``
    Wait before sending the response head.
``X-Dev-Event-Delay: <seconds>``
    Wait between SSE events.
``X-Dev-Deltas: <n>``
    Split the text answer into exactly ``n`` deltas (words are repeated when
    ``n`` exceeds the word count, so the text grows; ``0``: no deltas).
``X-Dev-Fault: <name>``
    ``status:<code>``
        That status with a Lightspeed (FastAPI) body: 401 ``{"detail":"Missing
        x-rh-identity header"}``, 403 ``{"detail":"Insufficient
        entitlements"}``, 413 ``{"detail":{"response":"Prompt is too long",…}}``,
        422 the ``err_422`` body, 429 the quota body plus ``Retry-After: 7``,
        500 the ``err_FAIL_500`` body; other codes ``{"detail":"<reason>"}``.
    ``ctx_too_long``
        Stream: the ``err_CTX_TOO_LONG_stream_true.txt`` capture (200, ending in
        ``response.failed``; generated in ``openai`` mode). Non-stream: 500
        ``err_FAIL_500`` (what Lightspeed does; ``openai`` mode: 400
        ``context_length_exceeded``).
    ``stall``
        Read the request, never answer (until the client hangs up).
    ``stall_mid_stream``
        Send the head and the events up to the second delta, then stall.
    ``reset_before_headers``
        Read the request, then close with RST (``SO_LINGER`` 0).
    ``reset_mid_body``
        Send the events up to the second delta, then RST.
    ``truncate``
        Send every event but the terminal one and ``[DONE]``, then end the
        chunked body properly (a backend exception mid-stream).
    ``garbage``
        Send non-HTTP bytes and close.
    ``keep_open``
        Send everything including ``[DONE]`` but never the final 0-chunk;
        hold the connection until the client hangs up.
    ``close``
        A normal reply with ``Connection: close``, then close.
    ``refusal``
        A ``refusal`` content part with ``response.refusal.delta`` events.
    ``shield``
        The message text only in ``response.output_item.done``, no deltas
        (Lightspeed's safety shield).
    ``reasoning``
        A reasoning item with ``response.reasoning_text.delta`` events, then
        the text answer.
    ``parallel_tools``
        Two function calls (the first two function tools, or the first one
        twice) with interleaved argument deltas.
    ``args_only_in_done``
        A function call with no argument deltas: arguments only in
        ``function_call_arguments.done`` and ``output_item.done``.
    ``incomplete``
        Half the text, then ``response.incomplete`` with
        ``incomplete_details.reason = "max_output_tokens"``.
    ``error_event``
        ``created``, ``in_progress``, then a flat ``error`` event (non-stream:
        like ``ctx_too_long``'s failure reply).
    ``replay:<capture file name>``
        The capture's bytes verbatim as the body (``devbackend/data/`` then
        ``tests/fixtures/lightspeed-0.7.1/``), with its ``.headers`` file when
        present; SSE captures are chunked one event per chunk.
    ``big_event:<n>``
        One text delta of ``n`` bytes.

For a non-streamed request, ``stall_mid_stream``, ``reset_mid_body`` and
``truncate`` cut the Content-Length body in half instead (then stall, reset,
or close), and ``keep_open`` changes nothing. A malformed knob is answered
with 400.

Without ``X-Dev-Event-Delay`` the frames of a stream are written in batches
(up to 64 KiB per ``send``: same bytes, one chunk per event); with a delay,
each event is its own write.

Use in tests::

    async with devbackend.run(tls=devbackend.server_ssl_context(certs)) as backend:
        ...  # POST f"{backend.url}/responses"
        assert backend.requests[-1].json["store"] is False
        assert backend.stats.connections_accepted == 1

Command line: ``python -m devbackend --help``.
"""

from __future__ import annotations

from .certs import DevCerts, client_ssl_context, ensure_dev_certs, server_ssl_context
from .server import MODES, DevBackend, RecordedRequest, Stats, run

__all__ = [
    "MODES",
    "DevBackend",
    "DevCerts",
    "RecordedRequest",
    "Stats",
    "client_ssl_context",
    "ensure_dev_certs",
    "run",
    "server_ssl_context",
]
