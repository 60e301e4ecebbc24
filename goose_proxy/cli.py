"""Command line: ``goose-proxy [--config PATH] [check]``; logging, start, signals, stop."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Callable, Optional, Union

from goose_proxy import __version__, systemd
from goose_proxy.config import Config, ConfigError, load_config, log_level, redact_url
from goose_proxy.stderr_log import StderrHandler

if TYPE_CHECKING:
    import socket

    import anyio

    from goose_proxy.http.server import ProxyServer

log = logging.getLogger("goose_proxy")

EXIT_CONFIG = 2

# syslog priorities for journald's "<N>" line prefixes
_SYSLOG_PRIORITY = {
    logging.DEBUG: 7,
    logging.INFO: 6,
    logging.WARNING: 4,
    logging.ERROR: 3,
    logging.CRITICAL: 2,
}


class _JournalFormatter(logging.Formatter):
    """No timestamp (journald adds its own) and a ``<priority>`` prefix per line."""

    def format(self, record: logging.LogRecord) -> str:
        prio = _SYSLOG_PRIORITY.get(record.levelno, 6)
        return f"<{prio}>{super().format(record)}"


class _Formatter(logging.Formatter):
    """The plain formatter, with the time stamp's text made once per second."""

    _second = -1
    _text = ""

    def formatTime(self, record: logging.LogRecord, datefmt: Optional[str] = None) -> str:
        if datefmt is not None:
            return super().formatTime(record, datefmt)
        second = int(record.created)
        if second != self._second:
            self._text = time.strftime(self.default_time_format, self.converter(record.created))
            self._second = second
        return f"{self._text},{int(record.msecs):03d}"


def _stderr_is_journal(journal_stream: str) -> bool:
    """True when stderr is the journal stream systemd named (``device:inode``)."""
    dev, sep, ino = journal_stream.partition(":")
    if not sep:
        return False
    try:
        st = os.fstat(sys.stderr.fileno())
        return (st.st_dev, st.st_ino) == (int(dev), int(ino))
    except (OSError, ValueError, AttributeError):
        return False


def setup_logging(level: str, environ: Optional[dict[str, str]] = None) -> None:
    """Log to stderr; journald-friendly when ``JOURNAL_STREAM`` is set."""
    env = os.environ if environ is None else environ
    handler = StderrHandler(sys.stderr)
    if _stderr_is_journal(env.get("JOURNAL_STREAM", "")):
        handler.setFormatter(_JournalFormatter("%(name)s: %(message)s"))
    else:
        handler.setFormatter(_Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # The formats show none of these: do not collect them for every record (an
    # access line per request; see "Optimization" in the logging HOWTO).
    logging._srcfile = None  # caller's file, line and function
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    if sys.version_info >= (3, 12):
        logging.logAsyncioTasks = False


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="goose-proxy",
        description=(
            "Translate OpenAI Chat Completions requests (Goose) to the Responses API of "
            "RHEL Lightspeed, over mutual TLS with the host's RHSM certificate."
        ),
    )
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    p.add_argument(
        "--config",
        metavar="PATH",
        help="configuration file (default: the first goose-proxy/config.toml in "
        "$XDG_CONFIG_DIRS, which defaults to /etc/xdg; none found: built-in defaults)",
    )
    p.add_argument("--log-level", metavar="LEVEL", help="override [logging] level")
    p.add_argument(
        "--check",
        action="store_true",
        help="check the configuration, the certificate and the backend, then exit",
    )
    p.add_argument(
        "command",
        nargs="?",
        choices=["serve", "check"],
        default=None,
        help="serve (default) or check",
    )
    return p


def stop_signals() -> list[signal.Signals]:
    """The signals that drain and stop the proxy: SIGINT, SIGTERM and SIGHUP,
    less SIGINT and SIGHUP where ignored at start, which they then stay: SIGHUP
    under ``nohup``, SIGINT for a job a non-interactive shell started with
    ``&`` (a Ctrl-C meant for the foreground job must not stop it)."""
    sigs = [signal.SIGINT, signal.SIGTERM, signal.SIGHUP]
    return [s for s in sigs if s == signal.SIGTERM or signal.getsignal(s) is not signal.SIG_IGN]


def hangup_text(activated: bool) -> str:
    """The log line for SIGHUP, which stops the proxy (there is no reload)."""
    again = (
        "the next connection to the socket starts it again with the file as it is then"
        if activated
        else "start it again to use a changed file"
    )
    return (
        "SIGHUP received; shutting down after the drain (there is no reload: the "
        f"configuration is read at start, and {again})"
    )


async def serve(config: Config, activated: Optional[list[tuple[str, socket.socket]]] = None) -> int:
    """Run the proxy until SIGINT, SIGTERM or SIGHUP; drain, then return 0. A
    second SIGINT or SIGTERM during the drain stops at once: 130 (a second
    SIGHUP changes nothing); one after the drain ended is ignored.
    ``activated``: the sockets systemd passed (:func:`systemd.listen_fds`, read
    here when None)."""
    import anyio

    from goose_proxy.http.server import ProxyServer

    server = ProxyServer(config)
    if activated is None:
        activated = systemd.listen_fds()
    if activated:
        log.info(
            "socket-activated by systemd (%s); [server] host and port are ignored",
            ", ".join(name for name, _ in activated),
        )
    await server.open_listeners([s for _, s in activated])
    where = addresses_text(server.bound, server.unix_paths)
    async with anyio.create_task_group() as tg:
        stopping = stop_signals()
        try:
            with anyio.open_signal_receiver(*stopping) as signals:
                await tg.start(server.serve)
                # announced only once a signal can no longer kill us mid-request
                log.info(
                    "goose-proxy %s listening on %s; backend %s; configuration %s",
                    __version__,
                    where,
                    redact_url(config.backend.endpoint),
                    config.source or "built in (no file found)",
                )
                systemd.notify(f"READY=1\nSTATUS=listening on {where}")
                draining = False
                rc = 0
                async for signum in signals:
                    name = signal.Signals(signum).name
                    if draining and signum == signal.SIGHUP:
                        log.info("SIGHUP received; already shutting down after the drain")
                        continue
                    if draining:
                        log.warning("%s received again; stopping without finishing the drain", name)
                        rc = 130
                        tg.cancel_scope.cancel()
                        break
                    if signum == signal.SIGHUP:
                        log.warning("%s", hangup_text(bool(activated)))
                    else:
                        log.info("%s received; shutting down", name)
                    systemd.notify("STOPPING=1\nSTATUS=draining")
                    draining = True
                    tg.start_soon(_drain_then_stop, server, tg.cancel_scope)
        finally:
            # The receiver gave the signals back their default action: a late
            # one (a second Ctrl-C, `timeout` passing SIGTERM on again) would
            # now kill the proxy as it stops (status 143, or a KeyboardInterrupt
            # traceback). It is stopping already: ignore them.
            for signum in stopping:
                signal.signal(signum, signal.SIG_IGN)
    log.info("stopped")
    return rc


async def _drain_then_stop(server: ProxyServer, scope: anyio.CancelScope) -> None:
    await server.shutdown()
    scope.cancel()


def addresses_text(bound: Sequence[tuple[str, int]], paths: Sequence[str] = ()) -> str:
    """``127.0.0.1:8080, [::1]:8080``: where the proxy listens, as URLs write it
    (then the paths of unix sockets)."""
    return ", ".join([*(f"[{h}]:{p}" if ":" in h else f"{h}:{p}" for h, p in bound), *paths])


def main(argv: Optional[Sequence[str]] = None) -> int:
    try:
        try:
            return _main(argv)
        finally:
            if sys.stdout is not None:
                sys.stdout.flush()  # a reader gone shows here, not as a message at exit
    except KeyboardInterrupt:  # Ctrl-C while starting (loading modules, the file)
        return 130
    except BrokenPipeError:
        # stdout's reader left early (`goose-proxy check | head -1`): say no more
        # to it, and leave no traceback (nor Python's flush error at exit)
        _discard_stdout()
        return 1


def _report(write: Callable[[], int]) -> int:
    """``write()``'s exit status, or 1 when standard output could not take the
    check's report (closed, or a full disk); that is said on stderr. (A reader
    that left, EPIPE, is :func:`main`'s to handle.)"""
    from goose_proxy.check import ReportLost

    try:
        return write()
    except ReportLost as e:
        print(f"goose-proxy: cannot write the report to standard output: {e}", file=sys.stderr)
        _discard_stdout()
        return 1


def _discard_stdout() -> None:
    """Point descriptor 1 at /dev/null, so that Python's flush at exit finds no
    reader gone or disk full to complain of."""
    if sys.stdout is None:
        return
    try:
        fd = sys.stdout.fileno()
    except (OSError, ValueError):
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    if devnull != fd:
        os.dup2(devnull, fd)
        os.close(devnull)


def _main(argv: Optional[Sequence[str]]) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.check and args.command == "serve":
        parser.error("--check and serve contradict each other (--check means: check, then exit)")
    checking = args.check or args.command == "check"
    try:
        config, warnings = load_config(args.config)
        given = args.log_level is not None  # "" is no level: refused, not ignored
        level = log_level("--log-level", args.log_level) if given else config.logging.level
    except ConfigError as e:
        if checking:  # the report says it, and still ends with a verdict
            from goose_proxy.check import report_config_error

            err = e
            return _report(lambda: report_config_error(err, status=EXIT_CONFIG))
        else:  # (logging is not set up yet) an error for the journal, as log lines are
            journal = _stderr_is_journal(os.environ.get("JOURNAL_STREAM", ""))
            prio = f"<{_SYSLOG_PRIORITY[logging.ERROR]}>" if journal else ""
            print(f"{prio}goose-proxy: configuration error: {e}", file=sys.stderr)
        return EXIT_CONFIG
    if checking:
        # the report says what the daemon would log at start (its warnings are
        # notes in it); the [logging] level is the daemon's: a check logs only
        # warnings unless --log-level asks for more
        setup_logging(level if given else "WARNING")
        from goose_proxy.check import run_check

        return _report(lambda: run_check(config, warnings))
    try:
        # before the log handler and the event loop open descriptors of their
        # own: fd 3 is the first systemd passes, and a closed one is told so
        activated: Union[list[tuple[str, socket.socket]], systemd.ActivationError]
        activated = systemd.listen_fds()
    except systemd.ActivationError as e:
        activated = e
    setup_logging(level)
    for w in warnings:
        log.warning("%s", w)
    if isinstance(activated, systemd.ActivationError):
        log.error("%s", activated)
        return 1
    another = systemd.meant_for_another()
    if another is not None:
        log.warning("%s", another)
    import anyio

    try:
        rc = anyio.run(serve, config, activated)  # (Ctrl-C before its handlers: main's 130)
    except systemd.ActivationError as e:
        log.error("%s", e)
        return 1
    except OSError as e:
        where = addresses_text([(config.server.host, config.server.port)])
        log.error("cannot listen on %s ([server] host, port): %s", where, e.strerror or e)
        return 1
    return rc
