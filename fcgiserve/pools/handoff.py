"""Passing kept-alive connections between processes: no worker's exit closes one a web server may reuse.

A prefork master opens one *hand-off channel* (a ``SOCK_SEQPACKET`` socket pair) before it forks and keeps
both ends for its whole life; every child inherits both. A retiring child sends each clean connection's fd
(``SCM_RIGHTS``) on the ``give`` end and closes its own copy; idle children watch the ``take`` end in their
epoll like a listener and take one fd per message (``accept`` in watchlist.py). Bytes the web server already
sent wait in the connection's kernel buffer and travel with the fd. Because the master holds both ends, an fd
in flight is never lost while no child is alive: it waits in the channel until a child takes it, and a request
on it waits as it would in a listen backlog.

A threaded pool re-executes instead: ``keep_across_exec`` makes the connections inheritable and names them in
``KEPT_FDS_ENV`` for the new image, which adopts them (``adopt_kept``) as parked connections.
"""

from __future__ import annotations

import logging
import os
import select
import socket
from collections.abc import MutableMapping, Sequence

__all__ = [
    "KEPT_FDS_ENV",
    "HandoffChannel",
    "adopt_kept",
    "keep_across_exec",
    "receive_connection",
]

log = logging.getLogger("fcgiserve.pools")

KEPT_FDS_ENV = "FCGISERVE_KEPT_FDS"  # "7,9": kept-alive connections handed to a re-executed server
_FULL_WAIT_SECONDS = 1.0
_MESSAGE = b"c"  # every message carries one fd; the byte is there because a message needs one


class HandoffChannel:
    """Both ends of the channel. ``give`` and ``take`` are safe in any process that holds them."""

    def __init__(self) -> None:
        self._give, self._take = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self._give.setblocking(False)  # a full channel must not hang a retiring child (give waits, bounded)
        self._take.setblocking(False)  # EAGAIN: a sibling took it first

    @property
    def take_end(self) -> socket.socket:
        """What an idle child watches like a listening socket."""
        return self._take

    def give(self, sock: socket.socket) -> None:
        """Send ``sock`` to whichever process takes it next, and close our copy.

        A full channel (hundreds of connections in flight, nobody taking) is waited on for up to
        ``_FULL_WAIT_SECONDS``; only then is the connection closed, logged."""
        for attempt in range(2):
            try:
                socket.send_fds(self._give, [_MESSAGE], [sock.fileno()])
                break
            except BlockingIOError:
                if attempt == 0:
                    select.select([], [self._give], [], _FULL_WAIT_SECONDS)
                    continue
                log.warning("the hand-off channel stays full; closing a kept-alive connection")
            except OSError as exc:
                log.warning("cannot hand a kept-alive connection over (%s); closing it", exc)
                break
        sock.close()

    def close(self) -> None:
        """The master, when the pool stops for real: connections still in flight are closed with it."""
        self._give.close()
        self._take.close()


def receive_connection(take_end: socket.socket) -> tuple[socket.socket, object] | None:
    """One handed-over connection and its peer address, or None (a sibling was first, or nothing waits)."""
    try:
        _data, fds, _flags, _addr = socket.recv_fds(take_end, len(_MESSAGE), 1, socket.MSG_DONTWAIT)
    except (BlockingIOError, InterruptedError):
        return None
    if not fds:
        return None
    return _wrap(fds[0])


def _wrap(fd: int) -> tuple[socket.socket, object] | None:
    try:
        sock = socket.socket(fileno=fd)
    except OSError:
        os.close(fd)
        return None
    sock.set_inheritable(False)
    try:
        peer = sock.getpeername()
    except OSError:
        peer = ""  # the peer has gone meanwhile: serve() will read EOF and close it
    return sock, peer


def keep_across_exec(kept: Sequence[socket.socket]) -> dict[str, str]:
    """Make ``kept`` inheritable and return the environment that names them to the re-executed server."""
    for sock in kept:
        sock.set_inheritable(True)
    return {KEPT_FDS_ENV: ",".join(str(sock.fileno()) for sock in kept)} if kept else {}


def adopt_kept(environ: MutableMapping[str, str]) -> list[tuple[socket.socket, object]]:
    """The connections a previous image of this process kept (the variable is removed), not inheritable."""
    value = environ.pop(KEPT_FDS_ENV, "")
    adopted = []
    for word in value.split(","):
        if not word.strip().isdigit():
            continue
        wrapped = _wrap(int(word))
        if wrapped is not None:
            adopted.append(wrapped)
    return adopted
