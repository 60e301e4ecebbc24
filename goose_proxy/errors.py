"""One error hierarchy for everything a client can see.

Each class knows its HTTP status, the OpenAI error ``type`` and ``code``, and
renders the OpenAI error envelope::

    {"error": {"message": ..., "type": ..., "param": ..., "code": ...}}

A class also says whether a client should send the same request again
(:attr:`ProxyError.should_retry`). OpenAI's SDKs retry any 5xx unless the
answer says ``x-should-retry: false``; the classes of failures that a retry
of the same request cannot fix send it: a configuration or credential
problem (the client certificate, the CA file, a redirect, an answer that is
no Response, a TLS certificate refused either way, a CONNECT proxy that
cannot be used as configured), and a quota used up. Timeouts, refused or
broken connections, 503 and other 429s send no such header: the client's own
rule retries them.

Exceptions raised by anyio, ssl and the OS are mapped onto these classes once,
at the I/O boundary (``goose_proxy.upstream``); nothing else in the program
needs to know about socket errors.
"""

from __future__ import annotations

# loaded on first use otherwise, which fails in a process out of file
# descriptors: client_utf8 would then lose an answer to an internal error
import encodings.utf_16_le  # noqa: F401
import errno
import json
from typing import Any, ClassVar, Optional

#: characters a JSON text may hold raw that ``str.splitlines`` takes for line
#: ends, as their JSON escapes
_LINE_ENDS = {0x85: "\\u0085", 0x2028: "\\u2028", 0x2029: "\\u2029"}


def client_utf8(text: str) -> bytes:
    """``text``, JSON, as UTF-8 for a client: a lone surrogate (the half of a
    pair that nothing completed, which UTF-8 cannot carry) becomes U+FFFD, as
    UTF-8 decoders show it, and a pair written as two halves becomes its
    character. Its JSON escape would do for Python, but Goose's serde_json
    refuses it.

    U+0085, U+2028 and U+2029 go as their escapes (JSON has them only inside
    strings, where the escape means the same): a client that splits a stream
    into lines as ``str.splitlines`` does (httpx's ``iter_lines``, older
    httpx-sse) cut an SSE ``data:`` line at them. A backend escapes them
    (Lightspeed's JSON is ASCII); the proxy's encoder writes them raw."""
    if not text.isascii() and ("\u2028" in text or "\u2029" in text or "\x85" in text):
        text = text.translate(_LINE_ENDS)
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        whole = text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")
        return whole.encode("utf-8")


#: ``errno`` values of a host limit met for the moment, not of a fault of what
#: was asked for: out of file descriptors (more connections than the process's
#: limit) or of memory
HOST_LIMITS = (errno.EMFILE, errno.ENFILE, errno.ENOMEM)


class ProxyError(Exception):
    """Base class: an error that becomes an OpenAI error envelope."""

    status: ClassVar[int] = 500
    type: ClassVar[str] = "server_error"
    default_code: ClassVar[Optional[str]] = None
    #: what the answer's ``x-should-retry`` header says: None sends none (the
    #: client goes by the status), False for a failure that a retry of the same
    #: request cannot fix
    should_retry: ClassVar[Optional[bool]] = None
    #: the client connection is closed after the answer (its framing is in doubt)
    closes_connection: ClassVar[bool] = False

    def __init__(
        self,
        message: str,
        *,
        param: Optional[str] = None,
        code: Optional[str] = None,
        status: Optional[int] = None,
        headers: Optional[list[tuple[str, str]]] = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code if code is not None else self.default_code
        if status is not None:
            self.status = status  # type: ignore[misc]
        #: extra response headers, e.g. ``Retry-After`` copied from the backend
        self.headers: list[tuple[str, str]] = list(headers or [])
        #: the message quotes a backend's error body or event (set where it is
        #: built, in translate.errormap): shown to the client, never logged
        self.quoted = False

    def response_headers(self) -> list[tuple[str, str]]:
        """The extra headers of the error answer: :attr:`headers`, then
        ``x-should-retry`` when the class says (see :attr:`should_retry`) and
        the backend's own (in :attr:`headers`) does not."""
        if self.should_retry is None or any(n == "x-should-retry" for n, _ in self.headers):
            return list(self.headers)
        return [*self.headers, ("x-should-retry", "true" if self.should_retry else "false")]

    def to_dict(self) -> dict[str, Any]:
        """The OpenAI error envelope as a dict."""
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }

    def to_json(self) -> bytes:
        """The OpenAI error envelope as UTF-8 JSON bytes. A lone surrogate the
        message or ``param`` quotes (UTF-8 cannot carry it) becomes U+FFFD, as
        in what a chat client reads: Goose's serde_json refuses its escape, and
        would show a parse error instead of this one."""
        return client_utf8(json.dumps(self.to_dict(), ensure_ascii=False))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.status}, {self.message!r}, code={self.code!r})"


# --- client errors (4xx) -------------------------------------------------------


class InvalidRequest(ProxyError):
    """The request is malformed: bad JSON, wrong types, missing fields (400)."""

    status = 400
    type = "invalid_request_error"


class MalformedBody(InvalidRequest):
    """The request body is not JSON text at all (400). Its framing is in doubt
    too (a ``Content-Length`` that counts characters, not bytes, cuts a
    non-ASCII body short and leaves its end to be read as the next request),
    so the connection is closed after the answer."""

    closes_connection = True


class UnsupportedParameter(InvalidRequest):
    """A parameter (or value) the proxy cannot honour faithfully (400)."""

    default_code = "unsupported_parameter"


class ContextLengthExceeded(InvalidRequest):
    """The prompt is too long for the backend (400; Goose compacts on this).

    Clients tell this error by its message, not by its code: Goose compacts
    when ``error.message`` says "context length" (or one of a few other
    phrases, which a backend's own words need not contain: "Request does not
    fit in the model's context window", a 413's HTML page). A message without
    "context length" therefore begins with :data:`CONTEXT_LENGTH_PREFIX`.
    """

    default_code = "context_length_exceeded"

    def __init__(self, message: str, **kwargs: Any) -> None:
        if "context length" not in message.lower():
            message = CONTEXT_LENGTH_PREFIX + message
        super().__init__(message, **kwargs)


#: what begins a :class:`ContextLengthExceeded` message that would not say it
CONTEXT_LENGTH_PREFIX = "context length exceeded: "


class NotFound(InvalidRequest):
    status = 404
    default_code = "not_found"


class MethodNotAllowed(InvalidRequest):
    status = 405
    default_code = "method_not_allowed"


class PayloadTooLarge(InvalidRequest):
    status = 413
    default_code = "request_too_large"


class HeadersTooLarge(InvalidRequest):
    status = 431
    default_code = "request_header_fields_too_large"


class UnsupportedMediaType(InvalidRequest):
    status = 415
    default_code = "unsupported_media_type"


class Forbidden(InvalidRequest):
    """The request comes from somewhere it must not (Host / Origin checks)."""

    status = 403
    default_code = "forbidden"


class RateLimited(ProxyError):
    """The backend says rate limit or quota exceeded (429)."""

    status = 429
    type = "rate_limit_error"
    default_code = "rate_limit_exceeded"


class QuotaExhausted(RateLimited):
    """The backend says the quota is used up (429): unlike a rate limit, it does
    not come back in seconds (Lightspeed Stack's quota renews per period), so
    OpenAI's ``insufficient_quota`` and no retry."""

    type = "insufficient_quota"
    default_code = "insufficient_quota"
    should_retry = False


class AuthenticationError(ProxyError):
    """The backend refused our identity (401/403 passthrough)."""

    status = 401
    type = "authentication_error"


# --- proxy / backend errors (5xx) ------------------------------------------------


class CredentialsError(ProxyError):
    """The RHSM client certificate or key cannot be used (502)."""

    status = 502
    type = "server_error"
    default_code = "client_certificate_unavailable"
    should_retry = False


class UpstreamError(ProxyError):
    """Anything that went wrong talking to the backend (502 unless said otherwise)."""

    status = 502
    type = "api_error"
    default_code: ClassVar[Optional[str]] = "upstream_error"


class UpstreamRedirect(UpstreamError):
    """The backend answered with a redirect, which is not followed: the endpoint
    is wrong, or a login page stands in front of it."""

    should_retry = False


class UpstreamClosed(UpstreamError):
    """The backend closed or reset the connection before the reply was complete
    (same code as :class:`UpstreamError`; ``goose-proxy check`` tells it apart)."""


class UpstreamConnectError(UpstreamError):
    """TCP connect or DNS failure."""

    default_code = "upstream_connect_error"


class UpstreamTLSError(UpstreamError):
    """TLS handshake failure (untrusted server, rejected client certificate, ...)."""

    default_code = "upstream_tls_error"


class UpstreamCertificateError(UpstreamTLSError):
    """A TLS certificate was refused: the backend's (not trusted, or for another
    host name) or ours (the backend rejected the client certificate)."""

    should_retry = False


class UpstreamProxyError(UpstreamError):
    """The configured HTTP CONNECT proxy refused or failed."""

    default_code = "upstream_proxy_error"


class UpstreamProxyConfigError(UpstreamProxyError):
    """The CONNECT proxy cannot be used as configured: its URL is unusable, or it
    refuses the tunnel for want of credentials or permission (407, 403)."""

    should_retry = False


class UpstreamProtocolError(UpstreamError):
    """The backend answered something that is not valid HTTP, JSON or SSE."""

    default_code = "upstream_protocol_error"


class UpstreamNotAResponse(UpstreamProtocolError):
    """A 2xx answer that is no finished Response object (``{}``, a body in some
    other shape, a background response still queued)."""

    should_retry = False


class UpstreamAnswerTooLarge(UpstreamProtocolError):
    """An answer collected for a client that did not stream came to more than
    ``max_event_size`` characters: asked again, it would be as large."""

    should_retry = False


class UpstreamTimeout(UpstreamError):
    """No response headers (or no stream event) within the configured time (504)."""

    status = 504
    default_code = "timeout"


class UpstreamHTTPError(UpstreamError):
    """The backend answered with an error status; passed through to the client."""

    default_code: ClassVar[Optional[str]] = None

    def __init__(
        self,
        message: str,
        *,
        status: int,
        code: Optional[str] = None,
        headers: Optional[list[tuple[str, str]]] = None,
    ) -> None:
        super().__init__(message, status=status, code=code, headers=headers)
        if status < 500:
            self.type = "invalid_request_error"  # type: ignore[misc]


class ServiceUnavailable(ProxyError):
    """Too many connections, shutting down, or out of file descriptors (503)."""

    status = 503
    type = "server_error"
    default_code = "service_unavailable"


class TryAgainSoon(ServiceUnavailable):
    """A 503 that passes: the client may send the request again in a second
    (``Retry-After: 1``). Too many connections or bodies at once, a drain."""

    def __init__(self, message: str) -> None:
        super().__init__(message, headers=[("Retry-After", "1")])


class HostLimitReached(TryAgainSoon):
    """This host is out of file descriptors or memory (``HOST_LIMITS``) as the
    proxy opens a file or a connection. A flood of them is warned about once
    per ten seconds."""

    def __init__(self, doing: str, e: OSError) -> None:
        super().__init__(
            f"goose-proxy cannot {doing} right now ({e.strerror or e}); try again in a moment"
        )


class InternalError(ProxyError):
    """A bug: the message never carries internal exception text."""

    status = 500
    type = "server_error"
    default_code = "internal_error"
