"""Run out of file descriptors on purpose (Linux): :func:`out_of_descriptors`.

Standard library only, so that a child interpreter can use it before it loads
anything else."""

from __future__ import annotations

import errno
import gc
import os
import resource
from collections.abc import Iterator
from contextlib import contextmanager

#: how far above the highest descriptor in use the limit is lowered (the free
#: ones below it are all taken)
HEADROOM = 8


@contextmanager
def out_of_descriptors() -> Iterator[None]:
    """Inside, this process cannot open another file, socket or pipe: the soft
    ``RLIMIT_NOFILE`` is lowered to just above the highest descriptor in use
    and the free ones below it are taken. The garbage collector is off inside
    (a socket it freed would give a descriptor back). All is given back on the
    way out."""
    gc.collect()
    gc.disable()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    highest = max(int(n) for n in os.listdir("/proc/self/fd"))
    resource.setrlimit(resource.RLIMIT_NOFILE, (highest + HEADROOM, hard))
    taken: list[int] = []
    try:
        for _ in range(highest + HEADROOM):
            try:
                taken.append(os.open(os.devnull, os.O_RDONLY))
            except OSError as e:
                if e.errno != errno.EMFILE:
                    raise
                break
        yield
    finally:
        for fd in taken:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        gc.enable()
