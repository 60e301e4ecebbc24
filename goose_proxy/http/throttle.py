"""Keeping the log readable: warnings that a flood of one failure would
repeat, said once, then at most once per interval, with how many were due
since; a client's text cut to a length for a log line."""

from __future__ import annotations

import time
from typing import Optional

#: seconds between two warnings of one kind
WARN_INTERVAL = 10.0
#: most characters of a request's path and method in a log line (the head may
#: hold 16 KiB of either: a client could fill the log with a few requests)
PATH_CHARS = 256
METHOD_CHARS = 32


class WarnEvery:
    """One kind of warning, said at most once per ``interval`` seconds."""

    __slots__ = ("_due", "_quiet_until", "interval")

    def __init__(self, interval: float = WARN_INTERVAL) -> None:
        self.interval = interval
        self._due = 0  # occurrences since the last warning
        self._quiet_until = 0.0  # no warning before then (time.monotonic); 0: none said

    def due(self) -> Optional[int]:
        """Count one occurrence: how many there were since the last warning
        (this one included) when a warning is to be said now, else None."""
        self._due += 1
        now = time.monotonic()
        if now < self._quiet_until:
            return None
        due, self._due, self._quiet_until = self._due, 0, now + self.interval
        return due

    @staticmethod
    def since(due: int, what: str) -> str:
        """`` (N <what> since the last warning)`` for more than one, else ``""``."""
        return f" ({due} {what} since the last warning)" if due > 1 else ""

    def said(self) -> bool:
        """Whether a warning was said since :meth:`clear` (or ever)."""
        return self._quiet_until > 0

    def clear(self) -> None:
        """The failure is over: the next occurrence is warned about at once."""
        self._due, self._quiet_until = 0, 0.0


def shown(text: str, most: int) -> str:
    """``text`` for a log line: its first ``most`` characters and ``...`` when
    it is longer (a client's path or method may run to the head's size)."""
    return text if len(text) <= most else text[:most] + "..."
