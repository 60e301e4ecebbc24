"""h11 helpers shared by the server and the upstream client.

:func:`reason` words h11's parse errors for a message a person reads;
:func:`content_coding` reads a message's ``Content-Encoding``.

h11 checks every header of every message it sends against the RFC 9110
grammar with regular expressions: about a tenth of the proxy's CPU time per
small request. The heads goose-proxy sends are made of constants, of values
h11 itself parsed (and checked) from a client or the backend, of request ids
checked where they are made, and of ``[backend.headers]`` checked when the
configuration is loaded. For those, :data:`TRUSTED` tells h11 to skip the
second check (its ``_parsed`` flag, the one its own parser uses; it still
lower-cases names and checks the framing headers). Should an h11 release
drop the flag, :data:`TRUSTED` is empty and h11 checks everything again.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any, Optional

import h11

# h11 quotes the bytes it could not parse as Python shows them: bytearray(b'...')
_BYTES_REPR = re.compile(r"""bytearray\((b(?:'(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*"))\)""")
#: longest reason :func:`reason` gives (the bad line can be long)
REASON_LIMIT = 200


def _trusted() -> dict[str, Any]:
    try:
        h11.Response(status_code=200, headers=[], _parsed=True)
    except TypeError:
        return {}
    return {"_parsed": True}


#: keyword arguments for ``h11.Request``/``h11.Response`` with trusted headers
TRUSTED: dict[str, Any] = _trusted()


def reason(e: h11.ProtocolError) -> str:
    """h11's message for ``e`` without Python's ``bytearray(...)`` wrapper around
    the bytes it quotes, at most :data:`REASON_LIMIT` characters."""
    text = _BYTES_REPR.sub(lambda m: m.group(1)[1:], str(e))
    return text if len(text) <= REASON_LIMIT else text[: REASON_LIMIT - 1] + "…"


def content_coding(headers: Iterable[tuple[bytes, bytes]]) -> Optional[str]:
    """The codings of a body's ``Content-Encoding``, all its headers joined
    (RFC 9110 §8.4: a list, repeatable), ``None`` when there are none but
    ``identity``. ``headers`` as h11 gives them (lower-case names)."""
    codings = [
        c
        for k, v in headers
        if k == b"content-encoding"
        for c in v.decode("latin-1").split(",")
        if c.strip().lower() not in ("", "identity")
    ]
    return ",".join(c.strip() for c in codings) or None
