"""The log handler for standard error: it never makes the event loop wait.

The proxy logs from its event loop (an access line per request). When
whatever reads stderr stops reading (``goose-proxy 2>&1 | less`` left at a
page, a terminal nobody reads, a stalled log collector), a plain
``StreamHandler`` blocks in ``write`` once the pipe or buffer is full, and
with it every client and ``/health``.

:class:`StderrHandler` writes a pipe or terminal through a file description
of its own, opened non-blocking from ``/proc/self/fd`` (stderr's own flags,
shared with other processes, are left alone), and the journal's socket with
``MSG_DONTWAIT``. Where that reopening is refused (a pipe or terminal owned by
another user: a container's, or a terminal after ``su``), a terminal that is
the controlling one is opened again as ``/dev/tty``; otherwise stderr itself
is written, a piece at a time, and only when ``poll`` says that piece fits
(``PIPE_BUF`` bytes fit a pipe with room; a terminal promises one byte).

While an event loop runs, what does not go at once waits, one line at most:
the loop writes it as soon as the file has room, and records that come
meanwhile are counted, not written; the count is logged once lines go again.
Without a running loop (at start, at exit, ``check``) nothing is served, and
a record waits up to :data:`WAIT` seconds for room before it is counted
instead. A regular file is written as by ``StreamHandler``.
"""

from __future__ import annotations

import logging
import os
import select
import stat
import sys
import time
from typing import Any, Callable, Optional, TextIO

__all__ = ["StderrHandler"]

#: seconds a record waits for room when no event loop runs (and the waiting
#: line and the count of dropped ones at exit)
WAIT = 1.0

Write = Callable[[bytes], int]


class StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """A ``StreamHandler`` for stderr that never waits for it (see the module)."""

    def __init__(self, stream: TextIO) -> None:
        super().__init__(stream)
        #: records counted instead of written since the last note of them
        self.dropped = 0
        self._pending = b""  # the rest of a line the file did not take at once
        self._noted = 0  # the dropped records a note in the pending line counts
        self._encoding = getattr(stream, "encoding", None) or "utf-8"
        #: the descriptor to wait on for room, and how to write without waiting
        #: (None: a regular file, or no descriptor: written as StreamHandler does)
        self._fd, self._write = _nonblocking_writer(stream)
        self._watching: Any = None  # the event loop told to call back when there is room

    def emit(self, record: logging.LogRecord) -> None:
        if self._write is None:
            super().emit(record)
            return
        try:
            line = self.format(record) + self.terminator
        except Exception:
            self.handleError(record)
            return
        if self._pending and not self._send_or_wait():
            self.dropped += 1
            return
        n, self.dropped = self.dropped, 0
        if n:
            line = self._note(n) + line
        self._pending, self._noted = line.encode(self._encoding, "backslashreplace"), n
        if not self._send_or_wait():
            self._watch()

    def flush(self) -> None:
        if self._write is None:
            super().flush()
        elif self._pending:
            self._send()

    def close(self) -> None:
        """Give the waiting line and the count of dropped ones :data:`WAIT`
        seconds to go (at exit, from ``logging.shutdown``)."""
        self.acquire()
        try:
            if self._write is not None:
                self._unwatch()
                self._drain(time.monotonic() + WAIT)
        finally:
            self.release()
            super().close()

    def _note(self, n: int) -> str:
        note = logging.LogRecord(
            "goose_proxy", logging.WARNING, __file__, 0,
            "%d log line(s) dropped: stderr could not take them (nothing was reading it)",
            (n,), None,
        )  # fmt: skip
        return self.format(note) + self.terminator

    def _send(self) -> bool:
        """Write what of the pending line goes now; whether all of it went."""
        assert self._write is not None
        try:
            while self._pending:
                self._pending = self._pending[self._write(self._pending) :]
        except BlockingIOError:
            return False
        except OSError:  # nothing reads it any more (EPIPE): the line is lost
            self._pending = b""
            self.dropped += 1 + self._noted
        self._noted = 0
        return True

    def _send_or_wait(self) -> bool:
        """:meth:`_send`; where no event loop runs, waiting up to :data:`WAIT`
        seconds for room (nothing is served meanwhile)."""
        if self._send():
            return True
        asyncio = sys.modules.get("asyncio")
        if asyncio is not None and asyncio._get_running_loop() is not None:
            return False
        self._drain(time.monotonic() + WAIT, note=False)
        return not self._pending

    def _watch(self) -> None:
        """Have the running event loop write the pending line once there is room
        (without one, the next record tries again)."""
        if self._watching is not None and not self._watching.is_closed():
            return
        self._watching = None  # (a loop that ended watches nothing)
        asyncio = sys.modules.get("asyncio")  # (never imported for this)
        if asyncio is None or self._fd is None:
            return
        try:
            loop = asyncio.get_running_loop()
            loop.add_writer(self._fd, self._room)
        except (RuntimeError, NotImplementedError, OSError, ValueError):
            return
        self._watching = loop

    def _room(self) -> None:
        """The file has room: the waiting line, then the count of the lines
        dropped meanwhile (not left for a next record that may not come)."""
        self.acquire()
        try:
            if self._send() and self.dropped:
                n, self.dropped = self.dropped, 0
                said = self._note(n).encode(self._encoding, "backslashreplace")
                self._pending, self._noted = said, n
                self._send()
            if not self._pending:
                self._unwatch()
        finally:
            self.release()

    def _unwatch(self) -> None:
        loop, self._watching = self._watching, None
        if loop is not None and not loop.is_closed():
            loop.remove_writer(self._fd)

    def _drain(self, deadline: float, note: bool = True) -> None:
        """Write the pending line, then (``note``) the count of dropped ones,
        waiting for room until ``deadline`` at most."""
        waiter = select.poll()
        if self._fd is not None:
            waiter.register(self._fd, select.POLLOUT)
        while self._pending or (note and self.dropped):
            if not self._pending:
                n, self.dropped = self.dropped, 0
                said = self._note(n).encode(self._encoding, "backslashreplace")
                self._pending, self._noted = said, n
            lost = self.dropped
            if self._send():
                if self.dropped > lost:
                    return  # nothing reads stderr any more (EPIPE): nothing will go
                continue
            left = deadline - time.monotonic()
            if left <= 0 or self._fd is None:
                return
            waiter.poll(left * 1000)


def _nonblocking_writer(stream: TextIO) -> tuple[Optional[int], Optional[Write]]:
    """The descriptor to wait on for room, and a write to ``stream``'s file that
    never waits (it returns how many bytes went, or raises BlockingIOError);
    no write for a regular file or a stream without a descriptor."""
    try:
        fd = stream.fileno()
        mode = os.fstat(fd).st_mode
    except (OSError, ValueError, AttributeError):
        return None, None
    if stat.S_ISREG(mode):
        return None, None
    if stat.S_ISSOCK(mode):  # the journal's stream
        import socket

        sock = socket.socket(fileno=os.dup(fd))
        return sock.fileno(), lambda data: sock.send(data, socket.MSG_DONTWAIT)
    own = _opened_again(f"/proc/self/fd/{fd}")  # a pipe's or terminal's description of our own
    if own is None and stat.S_ISCHR(mode):  # another user's terminal: the controlling one?
        own = _opened_again("/dev/tty", os.fstat(fd).st_rdev)
    if own is None:  # another user's pipe, or no /proc: stderr itself, in pieces
        return fd, _when_it_fits(fd, 1 if stat.S_ISCHR(mode) else select.PIPE_BUF)
    return own, lambda data: os.write(own, data)


def _opened_again(path: str, device: Optional[int] = None) -> Optional[int]:
    """``path`` opened for writing without waiting, or None (refused, or not
    the terminal ``device``)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError:
        return None
    if device is not None and os.fstat(fd).st_rdev != device:
        os.close(fd)
        return None
    return fd


def _when_it_fits(fd: int, piece: int) -> Write:
    """Writes of at most ``piece`` bytes to the blocking ``fd``, made only when
    ``poll`` says there is room (a pipe with room takes ``PIPE_BUF`` whole)."""
    room = select.poll()
    room.register(fd, select.POLLOUT)

    def write(data: bytes) -> int:
        if not room.poll(0):
            raise BlockingIOError
        return os.write(fd, data[:piece])

    return write
