"""When the dispatcher takes new connections, and how many at once.

Accepting is allowed unless it is paused (a prefork master's request, or ``accept()`` out of file
descriptors), the dispatcher is stopping, or ``max_connections`` are open. The listeners in the watch
list are armed exactly while it is allowed, so a pool that may not accept leaves new connections in the
kernel's listen backlog, where a sibling process or a later moment takes them.

A threaded pool takes a burst off the backlog per event; a prefork child (``accept_while_busy=False``)
takes one connection and is busy with it at once, so that its master sees it busy and a sibling takes the
next. No lock here: the dispatcher calls every method with its own lock held.
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Callable

from fcgiserve.pools.crew import Crew
from fcgiserve.pools.watchlist import AcceptFailed, NewConnection, WatchList, accept

__all__ = ["Admission"]

log = logging.getLogger("fcgiserve.pools")

# A threaded pool takes up to this many connections off the listen backlog per event: one at a time, a
# connection waiting in the backlog would wait a whole turn of the epoll's ready list per connection ahead
# of it, which under a burst of new connections is tens of milliseconds.
_ACCEPT_BATCH = 16
# A prefork child that finds the backlog empty when it becomes idle looks again at most this many times later.
_ACCEPT_AS_IDLE_BACKOFF = 64
# After accept() failed for want of a resource, accepting pauses this long (retrying at once would spin).
_ACCEPT_RETRY_DELAY = 0.5


class Admission:
    """Whether to accept, the listeners armed to match, the accepting, and the open-connection count."""

    def __init__(
        self,
        watch: WatchList,
        crew: Crew,
        *,
        max_connections: int,
        accept_while_busy: bool,
        wake: Callable[[], None],
    ) -> None:
        self.open = 0  # accepted connections not yet finished: in service or parked
        # fds of kept-alive connections taken over rather than accepted (a sibling's hand-off, a previous
        # image's): idle connections of the web server's, not new ones that owe a first request.
        self.handed: set[int] = set()
        self.retry_at = 0.0  # paused until then (hold_until: out of a resource, or a deferral)
        self._paused = False
        self._closed = False  # the dispatcher is stopping: never again
        self._watch = watch
        self._crew = crew
        self._max_connections = max_connections
        self.accept_while_busy = accept_while_busy
        self._wake = wake  # the control thread must look at retry_at
        self._skip = 0  # accept_as_idle: idle moments to let pass before it looks again
        self._backoff = 1

    def pause(self, paused: bool) -> None:
        """Pause accepting (a prefork master's request) or resume it."""
        self._paused = paused
        self.update()

    def close(self) -> None:
        """Accept no more, for good (the dispatcher is stopping); the listeners stay open."""
        self._closed = True
        self.update()

    def allowed(self) -> bool:
        if self._paused or self._closed or self.retry_at:
            return False
        return not (self._max_connections and self.open >= self._max_connections)

    def declining(self) -> bool:
        """accept_while_busy=False and a thread of ours is busy: new connections are a sibling's."""
        return not self.accept_while_busy and self._crew.busy > 0

    def update(self) -> None:
        """Arm every disarmed listener when accepting is allowed; disarm the armed ones when it is not.

        Being busy (``accept_while_busy=False``) disarms lazily: an armed listener stays armed, and a
        connection that arrives meanwhile is declined when its event comes (``take``) and left to an idle
        sibling. That costs an ``epoll_ctl`` per new connection, not two per request.
        """
        if not self.allowed():
            self._watch.disarm_listeners()
        elif not self.declining():
            self._watch.arm_listeners()

    def hold_until(self, when: float) -> None:
        """Accept nothing until ``when`` (monotonic); the control thread looks again then (retry_if_due)."""
        self.retry_at = when
        self._wake()

    def retry_if_due(self, now: float) -> bool:
        """End a hold that is due; True when it ended (the listeners are armed again if allowed)."""
        if self.retry_at and now >= self.retry_at:
            self.retry_at = 0.0
            self.update()
            return True
        return False

    def take(self, listener: socket.socket) -> NewConnection | list[NewConnection] | None:
        """What an event on a listener yields: one new connection (a prefork child), a burst of them (a
        threaded pool), or None (nothing waits, or accepting is not allowed now)."""
        if not self.allowed() or self.declining():
            return None  # paused, stopping, or busy: the connection waits for a sibling or for us
        if not self.accept_while_busy:
            return self._accept(listener)
        accepted = []
        for _ in range(min(_ACCEPT_BATCH, self._crew.max_threads - self._crew.busy)):
            if not self.allowed():
                break
            new = self._accept(listener)
            if new is None:
                break
            accepted.append(new)
        return accepted or None

    def accept_as_idle(self) -> NewConnection | None:
        """A prefork child that has just become idle takes a connection waiting in the backlog first, every
        other time: one accept per turn of the epoll's ready list left new connections waiting behind all
        the parked ones (nginx opening connections beyond its keepalive cache). An empty backlog makes it
        look less often (every 2nd, 4th ... 64th time), so kept-alive traffic alone pays next to nothing."""
        if self._skip:
            self._skip -= 1
            return None
        if not self.allowed():
            return None
        for listener in self._watch.listeners.values():
            accepted = self._accept(listener)
            if accepted is not None:
                self._backoff = self._skip = 1
                return accepted
        self._backoff = self._skip = min(2 * self._backoff, _ACCEPT_AS_IDLE_BACKOFF)
        return None

    def _accept(self, listener: socket.socket) -> NewConnection | None:
        try:
            accepted = accept(listener)
        except AcceptFailed as exc:
            log.warning("accept failed (%s); pausing accept for %.1fs", exc, _ACCEPT_RETRY_DELAY)
            self.hold_until(time.monotonic() + _ACCEPT_RETRY_DELAY)
            return None
        if accepted is not None:
            self.open += 1
            if listener.type == socket.SOCK_SEQPACKET:  # the hand-off channel (watchlist.accept)
                self.handed.add(accepted[0].fileno())
        return accepted
