"""systemd integration without libsystemd: socket activation and ``sd_notify``.

Socket activation: systemd passes listening sockets as file descriptors 3, 4, …
and sets ``LISTEN_PID`` (our pid), ``LISTEN_FDS`` (how many) and optionally
``LISTEN_FDNAMES`` (colon-separated names). Notification: a datagram such as
``READY=1`` sent to the ``AF_UNIX`` socket named by ``$NOTIFY_SOCKET`` (a path,
or an abstract name starting with ``@``).
"""

from __future__ import annotations

import os
import socket
import stat
from collections.abc import Mapping, MutableMapping
from typing import Optional

SD_LISTEN_FDS_START = 3


class ActivationError(OSError):
    """The file descriptors systemd was said to pass are not listening sockets."""


def listen_fds(
    environ: Optional[MutableMapping[str, str]] = None, *, unset: bool = True
) -> list[tuple[str, socket.socket]]:
    """The sockets systemd passed to this process, as ``(name, socket)`` pairs.

    Returns an empty list when the process was not socket-activated (or the
    variables are meant for another process). With ``unset`` the variables are
    removed so that child processes do not inherit them. Raises
    :class:`ActivationError` when a passed descriptor is not open or not a
    listening stream socket (see :func:`meant_for_another` for variables meant
    for another process).
    """
    env = os.environ if environ is None else environ
    try:
        pid = int(env.get("LISTEN_PID", ""))
        count = int(env.get("LISTEN_FDS", ""))
    except ValueError:
        return []
    if pid != os.getpid() or count <= 0:
        return []
    names = env.get("LISTEN_FDNAMES", "").split(":")
    if unset:
        for key in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
            env.pop(key, None)
    out = []
    for i in range(count):
        fd = SD_LISTEN_FDS_START + i
        try:
            is_socket = stat.S_ISSOCK(os.fstat(fd).st_mode)
        except OSError:
            raise ActivationError(
                f"LISTEN_FDS={count}: file descriptor {fd} is not open (check the socket unit)"
            ) from None
        if not is_socket:
            raise ActivationError(
                f"LISTEN_FDS={count}: file descriptor {fd} is not a socket (check the socket unit)"
            )
        os.set_inheritable(fd, False)
        sock = socket.socket(fileno=fd)
        try:
            listening = sock.type == socket.SOCK_STREAM and sock.getsockopt(
                socket.SOL_SOCKET, socket.SO_ACCEPTCONN
            )
        except OSError:
            listening = False
        if not listening:  # ListenDatagram=, or a socket never told to listen
            sock.detach()  # the descriptor stays systemd's
            raise ActivationError(
                f"LISTEN_FDS={count}: file descriptor {fd} is not a listening stream "
                "socket (check the socket unit: ListenStream=)"
            )
        name = names[i] if i < len(names) and names[i] else f"fd{fd}"
        out.append((name, sock))
    return out


def meant_for_another(environ: Optional[Mapping[str, str]] = None) -> Optional[str]:
    """What to warn of when systemd's ``LISTEN_FDS`` names another process (a
    script that ran goose-proxy without ``exec``): the proxy then binds
    ``[server] host:port`` itself, which the socket unit holds. None otherwise."""
    env = os.environ if environ is None else environ
    try:
        pid = int(env.get("LISTEN_PID", ""))
        count = int(env.get("LISTEN_FDS", ""))
    except ValueError:
        return None
    if pid == os.getpid() or count <= 0:
        return None
    return (
        f"LISTEN_FDS is set for process {pid}, not this one ({os.getpid()}): the sockets "
        "systemd passed are not used; is goose-proxy started by a script that does not "
        "exec it?"
    )


def notify(state: str, environ: Optional[Mapping[str, str]] = None) -> bool:
    """Send ``state`` (e.g. ``"READY=1\\nSTATUS=listening"``) to ``$NOTIFY_SOCKET``.

    Returns False when there is no notify socket or sending failed (never raises:
    a notification is best effort).
    """
    env = os.environ if environ is None else environ
    addr = env.get("NOTIFY_SOCKET")
    if not addr:
        return False
    target = "\0" + addr[1:] if addr.startswith("@") else addr
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
            s.sendto(state.encode(), target)
        return True
    except OSError:
        return False
