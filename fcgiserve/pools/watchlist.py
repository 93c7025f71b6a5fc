"""What the dispatcher's workers wait on: one epoll over the listening sockets and the parked connections.

Every entry is armed with ``EPOLLONESHOT``: an event goes to one thread, and the entry stays disarmed until
that thread re-arms it (a parked connection by being parked again, a listener by ``arm_listeners``). A
level-triggered exit pipe in the same epoll wakes every waiting worker at shutdown.

Listeners shared between processes (``exclusive``: the prefork children, each with its own epoll) are
registered with ``EPOLLEXCLUSIVE`` instead, level-triggered: the kernel wakes one child that waits, not
every idle one. With one-shot entries every idle child woke for each new connection, one accepted it and
the others found the backlog empty and re-armed (five failed ``accept`` calls per connection with six
children). Such an entry cannot be modified, only added and removed, so arming registers it and disarming
removes it; an event leaves it armed, and a child that takes a connection keeps it armed while it serves
(it is not waiting in its epoll, so the kernel does not pick it). Only a child with one thread does this: a
child whose other thread waited in the epoll while it served would be woken for connections it declines.
The kernel's choice is final (the siblings that wait are not told), so a child woken for a connection it
may not take (it is stopping, or at ``max_connections``) passes it on through the hand-off channel.

In such a child (``exclusive``: one worker thread) a parked connection is registered level-triggered
instead, and stays registered while it is served and parked again: the one worker does not wait in the
epoll while it serves, so nobody else is told of it, and parking it after a request costs no
``epoll_ctl``. The kernel keeps such an entry for as long as any process holds the socket, not only until
our fd closes: a process the application forks (``multiprocessing``, say) inherits every socket of the
child, and an entry left behind by a connection we closed would then report its end over and over, a
worker spinning at full CPU. So a socket of such a child comes out of the epoll just before it is closed
(``watched``: whoever closes it, the handler or the dispatcher), and only then is its fd released. An
event on such a connection that is not parked (nothing should cause one) unregisters it (``stray``), so
it cannot wake the worker over and over; parking registers it again. Such a list also tells its owner
(``on_held``) how many connections it holds and whether some are kept alive (parked after a request),
when either changes: a prefork child's siblings read that in its slot before they take a new connection.

This class keeps no lock: the dispatcher holds its own around every call that reads or changes the tables
(``poll`` and ``wake_all`` need none). It knows nothing of threads or of what a connection speaks; the
dispatcher decides when to accept and when to park.
"""

from __future__ import annotations

import errno
import logging
import os
import select
import socket
from collections.abc import Callable, Sequence
from typing import Any

from fcgiserve.pools.base import ServedConnection
from fcgiserve.pools.handoff import receive_connection

__all__ = ["AcceptFailed", "NewConnection", "WatchList", "accept", "close_quietly"]

log = logging.getLogger("fcgiserve.pools")

NewConnection = tuple[socket.socket, Any]  # an accepted socket and its peer address, not yet opened

_ARMED = select.EPOLLIN | select.EPOLLONESHOT  # one event, to one thread, then disarmed until re-armed
_KEPT = select.EPOLLIN  # a one-worker process: level-triggered, armed for as long as it is registered
_SHARED_LISTENER = select.EPOLLIN | select.EPOLLEXCLUSIVE  # one waiting process woken per event
# accept() failures that say the process or system is out of a resource: retrying at once would spin.
_RESOURCE_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})


class AcceptFailed(Exception):
    """accept() failed for want of a resource (file descriptors, memory): pause accepting for a while."""


class WatchList:
    """The epoll, the listeners armed in it, and the parked connections with their expiry times."""

    def __init__(self, listeners: Sequence[socket.socket], exclusive: bool = False) -> None:
        self.listeners = {listener.fileno(): listener for listener in listeners}
        self.exclusive = exclusive  # listeners registered with EPOLLEXCLUSIVE (module docstring)
        # fd -> (connection, when it expires, new: it has not sent a byte yet): kept-alive connections, and
        # new ones waiting for their first byte
        self.parked: dict[int, tuple[ServedConnection, float, bool]] = {}
        self._armed: set[int] = set()  # listener fds currently armed
        # exclusive: fd -> the connection registered with it (_KEPT), parked or in service; parking the same
        # object again needs no system call. A watched socket's entry goes as it closes (_closing); any other
        # stays until its fd is registered for another connection: a different object there means a new entry.
        self._kept: dict[int, ServedConnection] = {}
        # exclusive: the fds of the watched sockets (``watched``) still open here, in service or parked. Told
        # to ``on_held`` with whether some are kept alive (in _kept: parked once, so the web server keeps
        # them) when either changes: per connection, never per request.
        self._held: set[int] = set()
        self._keeps = False  # bool(_kept), as last told
        self.on_held: Callable[[int, bool], None] | None = None
        self._epoll = select.epoll()
        self.poll = self._epoll.poll  # (timeout, maxevents): called without the dispatcher's lock
        self._exit_r, self._exit_w = socket.socketpair()
        self._epoll.register(self._exit_r.fileno(), select.EPOLLIN)
        for fd, listener in self.listeners.items():
            listener.setblocking(False)
            if not exclusive:
                self._epoll.register(fd, 0)  # disarmed until arm_listeners

    # -- listeners ----------------------------------------------------------------------------------------

    def arm_listeners(self) -> None:
        """Arm every disarmed listener (after an accept, a pause or a busy spell)."""
        if len(self._armed) == len(self.listeners):
            return  # the common case on the request path: nothing to do
        for fd in self.listeners.keys() - self._armed:
            if self.exclusive:
                self._epoll.register(fd, _SHARED_LISTENER)
            else:
                self._epoll.modify(fd, _ARMED)
            self._armed.add(fd)

    def disarm_listeners(self) -> None:
        if self._armed:
            for fd in self._armed:
                if self.exclusive:
                    self._epoll.unregister(fd)
                else:
                    self._epoll.modify(fd, 0)
            self._armed.clear()

    def fired_listener(self, fd: int) -> socket.socket | None:
        """The listener an event on ``fd`` came from, or None for another fd. A one-shot event disarmed it;
        an exclusive listener stays armed (``declined`` disarms it when the event is not taken up)."""
        listener = self.listeners.get(fd)
        if listener is not None and not self.exclusive:
            self._armed.discard(fd)
        return listener

    def declined(self, fd: int) -> None:
        """The event on listener ``fd`` is left to others (stopping, at max_connections): stop hearing of it.
        A level-triggered exclusive listener would otherwise report the same backlog again at once."""
        if self.exclusive and fd in self._armed:
            self._epoll.unregister(fd)
            self._armed.discard(fd)

    def forget_listeners(self) -> None:
        """Take the listeners out of the epoll; they stay open (they belong to the dispatcher's caller)."""
        for fd in self.listeners:
            try:
                self._epoll.unregister(fd)
            except OSError:
                pass  # an exclusive listener that was not armed is not registered
        self._armed.clear()

    # -- parked connections -------------------------------------------------------------------------------

    def park(self, conn: ServedConnection, expires_at: float, new: bool = False) -> bool:
        """Watch ``conn`` until it is readable; False (logged) when it cannot be watched."""
        try:
            fd = conn.fileno()
            self.parked[fd] = (conn, expires_at, new)
            if not self.exclusive:
                self._arm(fd, _ARMED)
            elif self._kept.get(fd) is not conn:
                self._arm(fd, _KEPT)
                self._kept[fd] = conn
                if not self._keeps:
                    self._report_held()
        except (OSError, ValueError):
            log.exception("cannot watch a kept-alive connection; closing it")
            self.parked.pop(conn.fileno(), None)
            self._unregister(conn.fileno())
            return False
        return True

    def _arm(self, fd: int, events: int) -> None:
        try:
            self._epoll.modify(fd, events)
        except FileNotFoundError:  # first park of this connection (or of a new one with a reused fd)
            self._epoll.register(fd, events)

    def unpark(self, fd: int) -> ServedConnection | None:
        """The parked connection an event on ``fd`` is for (no longer parked), or None."""
        entry = self.parked.pop(fd, None)
        return None if entry is None else entry[0]

    def forget(self, fd: int) -> None:
        """Stop watching a connection that leaves this process (handoff.py): the kernel keeps an epoll entry
        while any process holds the socket, so closing our fd alone would not remove it."""
        self._unregister(fd)
        self._let_go(fd)

    def _unregister(self, fd: int) -> None:
        self._kept.pop(fd, None)
        if self._keeps and not self._kept:
            self._report_held()  # the last kept-alive connection went
        try:
            self._epoll.unregister(fd)
        except (OSError, ValueError):
            pass

    def _let_go(self, fd: int) -> None:
        """``fd`` holds no connection of ours any more (closed, or handed to another process)."""
        if fd in self._held:
            self._held.discard(fd)
            self._report_held()

    def _report_held(self) -> None:
        self._keeps = bool(self._kept)
        if self.on_held is not None:
            self.on_held(len(self._held), self._keeps)

    def watched(self, sock: socket.socket) -> socket.socket:
        """``sock`` (a new connection of an ``exclusive`` list) as a socket that leaves the epoll just
        before it closes: an entry must go while our fd still names the socket (module docstring)."""
        timeout = sock.gettimeout()
        family, kind, proto = sock.family, sock.type, sock.proto
        fd = sock.detach()
        try:
            kept = _KeptSocket(family, kind, proto, fileno=fd)
        except OSError:
            os.close(fd)
            raise
        if timeout is not None:
            kept.settimeout(timeout)
        kept.before_close = self._closing
        self._held.add(fd)
        self._report_held()
        return kept

    def _closing(self, fd: int) -> None:
        """A connection's socket is about to close: take its entry out while ``fd`` is still its own."""
        if fd in self._kept:  # registered (_KEPT); a connection never parked has no entry to take out
            self._unregister(fd)
        self._let_go(fd)

    def stray(self, fd: int) -> None:
        """An event came for ``fd``, which is neither a listener nor parked. A one-shot entry is disarmed by
        its event already; a kept one (``exclusive``) would report the same again at once: unregister it."""
        if self.exclusive and fd != self._exit_r.fileno():
            self._unregister(fd)

    def unpark_all(self) -> list[ServedConnection]:
        parked = [entry[0] for entry in self.parked.values()]
        self.parked.clear()
        return parked

    def unpark_expired(self, now: float) -> list[tuple[ServedConnection, bool]]:
        """Unpark the connections whose time ran out: (connection, new) pairs."""
        expired = [(conn, new) for conn, expires_at, new in self.parked.values() if expires_at <= now]
        for conn, _new in expired:
            del self.parked[conn.fileno()]
        return expired

    # -- shutdown -----------------------------------------------------------------------------------------

    def wake_all(self) -> None:
        """Wake every thread waiting in ``poll`` now and later (the exit pipe is level-triggered)."""
        self._exit_w.send(b"\0")

    def close(self) -> None:
        self._kept.clear()
        self._epoll.close()
        self._exit_r.close()
        self._exit_w.close()


class _KeptSocket(socket.socket):
    """A connection's socket that calls ``before_close(fd)`` once, before its fd closes (``watched``)."""

    __slots__ = ("before_close",)

    before_close: Callable[[int], None] | None

    def close(self) -> None:
        before, self.before_close = getattr(self, "before_close", None), None
        if before is not None:
            fd = self.fileno()
            if fd >= 0:
                before(fd)
        super().close()


def accept(listener: socket.socket) -> NewConnection | None:
    """Accept one connection, TCP_NODELAY set; None when there is none (or that peer gave up).

    A hand-off channel's take end (handoff.py) stands in for a listener: its "accept" takes a connection a
    sibling process handed over. Raises AcceptFailed when the process or system is out of a resource.
    """
    if listener.type == socket.SOCK_SEQPACKET:
        return receive_connection(listener)
    try:
        sock, peer = listener.accept()
    except BlockingIOError:
        return None  # another process or thread took it
    except OSError as exc:
        if exc.errno in _RESOURCE_ERRNOS:
            raise AcceptFailed(str(exc)) from exc
        return None  # ECONNABORTED and friends: that peer gave up
    if sock.family != socket.AF_UNIX:
        try:
            # Nagle + delayed ACK would hold small responses for ~40 ms.
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass
    return sock, peer


def close_quietly(closable: ServedConnection | socket.socket) -> None:
    try:
        closable.close()
    except Exception:
        log.exception("closing a connection failed")
