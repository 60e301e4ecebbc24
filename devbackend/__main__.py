"""``python -m devbackend``: run the fake Responses backend in the foreground."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from typing import Optional

import anyio

from .certs import ensure_dev_certs, server_ssl_context
from .server import MODES, run

DEFAULT_CERTS_DIR = ".dev/certs"  # where make dev and the development config have them


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m devbackend",
        description=(
            "Scripted fake Responses API backend (Lightspeed Stack 0.7.1 style). "
            "Request headers X-Dev-Delay-Headers, X-Dev-Event-Delay, X-Dev-Deltas and "
            "X-Dev-Fault steer it; see the devbackend package docstring."
        ),
    )
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default %(default)s)")
    p.add_argument(
        "--port", type=int, default=8443, help="port; 0 picks a free one (default %(default)s)"
    )
    p.add_argument(
        "--tls", action="store_true", help="serve HTTPS and require a client certificate"
    )
    p.add_argument(
        "--certs-dir",
        default=DEFAULT_CERTS_DIR,
        help="where the dev CA, server and client (cert.pem/key.pem) certificates live; "
        "generated on first use (default %(default)s)",
    )
    p.add_argument(
        "--no-client-cert",
        action="store_true",
        help="with --tls, do not ask for a client certificate",
    )
    p.add_argument(
        "--mode", choices=MODES, default="lightspeed", help="wire style (default %(default)s)"
    )
    strict = p.add_mutually_exclusive_group()
    strict.add_argument(
        "--strict-fields",
        dest="strict_fields",
        action="store_true",
        default=None,
        help="422 for request fields Lightspeed does not accept (default in lightspeed mode)",
    )
    strict.add_argument("--no-strict-fields", dest="strict_fields", action="store_false")
    p.add_argument(
        "--max-body-chars",
        type=int,
        default=None,
        help="422 past this many body characters; 0 = no cap (default 65536 in lightspeed mode)",
    )
    p.add_argument(
        "--keepalive-timeout",
        type=float,
        default=5.0,
        help="close idle connections after this many seconds (default %(default)s, like uvicorn)",
    )
    ready = p.add_mutually_exclusive_group()
    ready.add_argument(
        "--print-port", action="store_true", help="print 'PORT <n>' on stdout once listening"
    )
    ready.add_argument(
        "--ready-fd",
        type=int,
        metavar="N",
        help="write 'PORT <n>' to file descriptor N, then close it",
    )
    p.add_argument(
        "-q", "--quiet", action="store_true", help="log only warnings (not every request)"
    )
    p.add_argument("-v", "--verbose", action="store_true", help="log connection details too")
    return p


async def _serve(args: argparse.Namespace) -> None:
    tls = None
    if args.tls:
        certs = ensure_dev_certs(args.certs_dir)
        tls = server_ssl_context(certs, require_client_cert=not args.no_client_cert)
        logging.getLogger("devbackend").info(
            "mTLS: CA %s, client cert %s, client key %s",
            certs.ca_cert.resolve(),
            certs.client_cert.resolve(),
            certs.client_key.resolve(),
        )
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with run(
            args.host,
            args.port,
            tls,
            args.mode,
            strict_fields=args.strict_fields,
            max_body_chars=args.max_body_chars,
            keepalive_timeout=args.keepalive_timeout,
        ) as backend:
            logging.getLogger("devbackend").info(
                "listening on %s (mode %s)", backend.url, backend.mode
            )
            line = f"PORT {backend.port}\n"
            if args.print_port:
                sys.stdout.write(line)
                sys.stdout.flush()
            elif args.ready_fd is not None:
                os.write(args.ready_fd, line.encode())
                os.close(args.ready_fd)
            async for signum in signals:
                logging.getLogger("devbackend").info("%s: stopping", signal.Signals(signum).name)
                break


def main(argv: Optional[list[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    level = logging.WARNING if args.quiet else logging.DEBUG if args.verbose else logging.INFO
    logging.basicConfig(
        level=level, stream=sys.stderr, format="%(asctime)s devbackend %(levelname)s %(message)s"
    )
    try:
        anyio.run(_serve, args)
    except OSError as exc:
        print(f"devbackend: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
