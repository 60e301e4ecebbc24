"""``python -m devbackend.loadgen URL``: how many requests/s does a server answer?

A closed-loop load generator: ``--connections`` keep-alive connections, each
sending its next request as soon as the previous response has fully arrived,
for ``--seconds``. Use it against the fake backend directly (to check it is
not the bottleneck) or through a proxy (the benchmark's baseline). It is a
Python client too, so past one CPU run several processes and add the results.
"""

from __future__ import annotations

import argparse
import json
import ssl
import sys
import time
from typing import Optional

import anyio

from .certs import DevCerts, client_ssl_context
from .client import DevClient


async def _worker(
    url: str,
    path: str,
    body: bytes,
    headers: list[tuple[str, str]],
    ctx: Optional[ssl.SSLContext],
    deadline: float,
    counts: list[int],
) -> None:
    async with await DevClient.connect(url, ctx) as client:
        while time.monotonic() < deadline:
            response = await client.request("POST", path, headers=headers, body=body)
            if response.status != 200 or not response.complete:
                counts[1] += 1
                return
            counts[0] += 1


async def measure(
    url: str,
    *,
    connections: int = 4,
    seconds: float = 5.0,
    stream: bool = False,
    deltas: Optional[int] = None,
    path: str = "/v1/responses",
    ctx: Optional[ssl.SSLContext] = None,
) -> dict[str, float]:
    """Run the load; returns ``{"requests", "errors", "seconds", "rps"}``."""
    body = json.dumps(
        {"input": [{"type": "message", "role": "user", "content": "hi there"}], "stream": stream}
    ).encode()
    headers = [("content-type", "application/json")]
    if deltas is not None:
        headers.append(("x-dev-deltas", str(deltas)))
    counts = [0, 0]
    start = time.monotonic()
    async with anyio.create_task_group() as tg:
        for _ in range(connections):
            tg.start_soon(_worker, url, path, body, headers, ctx, start + seconds, counts)
    elapsed = time.monotonic() - start
    return {
        "requests": counts[0],
        "errors": counts[1],
        "seconds": round(elapsed, 3),
        "rps": round(counts[0] / elapsed, 1),
    }


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m devbackend.loadgen", description=__doc__)
    p.add_argument("url", help="base URL, e.g. http://127.0.0.1:8443")
    p.add_argument("--connections", type=int, default=4)
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--stream", action="store_true", help="ask for SSE streams")
    p.add_argument("--deltas", type=int, help="X-Dev-Deltas for each request")
    p.add_argument("--path", default="/v1/responses")
    p.add_argument("--certs-dir", help="dev certs (trust ca.pem, present cert.pem/key.pem)")
    args = p.parse_args(argv)
    ctx = client_ssl_context(DevCerts.in_directory(args.certs_dir)) if args.certs_dir else None
    result = anyio.run(
        lambda: measure(
            args.url,
            connections=args.connections,
            seconds=args.seconds,
            stream=args.stream,
            deltas=args.deltas,
            path=args.path,
            ctx=ctx,
        )
    )
    print(json.dumps(result))
    return 0 if result["errors"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
