"""The contract between the pools and the connection factory they are handed.

Pools own threads and processes; they never see a FastCGI record. ``handler.py`` implements
``ConnectionFactory`` / ``ServedConnection``; the pools call them and report request progress
through ``RequestObserver``. This module imports only the standard library.
"""

from __future__ import annotations

import enum
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

__all__ = [
    "ConnectionFactory",
    "PoolEvent",
    "PoolExit",
    "PoolSettings",
    "RequestCounter",
    "RequestObserver",
    "ServedConnection",
    "StopReason",
]


class RequestObserver(Protocol):
    """Set by a pool on the factory; called from worker threads around each request."""

    def request_started(self, info: str) -> None:
        """``info`` is the request line, e.g. ``"GET /path?q"`` (for stack dumps and slow logs)."""

    def request_finished(self) -> None: ...


class ServedConnection(Protocol):
    """One accepted connection, served by whichever worker thread holds it."""

    # When ``serve()`` returned True with half a request received (its PARAMS not complete): the monotonic
    # time by which the rest must arrive (--params-timeout). The pool parks the connection until then instead
    # of its idle timeout, and calls ``expire()`` when it passes. None: the idle timeout applies.
    deadline: float | None

    def fileno(self) -> int: ...

    def serve(self) -> bool:
        """Serve while the connection has work, blocking the calling thread.

        Returns True when the connection is idle but kept alive: the pool parks it (watches it for
        readability and calls ``serve()`` again from a worker when readable). Returns False when the
        connection is finished and its socket closed. Never raises for network or protocol trouble.
        """

    def close(self) -> None:
        """Called by the pool for parked connections at shutdown or idle timeout."""

    def expire(self) -> None:
        """Called by the pool when a connection parked with a ``deadline`` reached it: log and close."""

    def detach(self) -> socket.socket | None:
        """Between requests with nothing buffered: give the socket up unclosed (the caller owns it; this
        connection is closed as far as it is concerned) and return it. Otherwise None, changing nothing."""


class ConnectionFactory(Protocol):
    observer: RequestObserver | None
    # Set by the pool while it serves: the connection calls it from inside ``serve()`` right before running
    # a request whose input is complete, to have the pool watch the connection meanwhile (True: it does).
    # Then ``serve()`` returns True when that request ends, and the pool already holds the connection; a
    # worker it lends may call ``serve()`` (as the connection's reader) while the request still runs.
    watch: Callable[[Any], bool] | None
    # Optional: a class attribute ``serve_never_waits = True`` says that ``serve()`` never waits for a
    # request to arrive (it returns True to park a connection whose request is incomplete). A prefork child
    # then counts a thread busy only while a request runs (pools/child.py, ``tracked``); otherwise from the
    # moment it enters ``serve()``, so that a silent connection makes the master fork another child.

    def open(self, sock: socket.socket, peer: Any) -> ServedConnection | None:
        """Wrap an accepted socket; None means refused (the factory has closed the socket)."""


@dataclass(frozen=True, slots=True)
class PoolSettings:
    min_spare: int = 2  # threaded: idle threads; prefork: idle processes
    max_spare: int = 5
    max_children: int = 50  # threaded: threads at most; prefork: processes at most
    max_requests: int = 0  # 0 = unlimited; counts requests, not connections
    max_requests_jitter: int = 0
    timeout: float = 0.0  # prefork: busy-on-one-request limit; 0 = off
    graceful_timeout: float = 30.0
    threads_per_child: int = 1  # prefork only: application threads per child
    idle_timeout: float = 0.0  # parked kept-alive connection idle limit; 0 = off
    params_timeout: float = 0.0  # a new connection that sends nothing this long is closed; 0 = idle_timeout
    max_connections: int = 0  # open connections per process; 0 = unlimited


class StopReason(enum.Enum):
    STOP = "stop"
    RELOAD = "reload"
    QUIT = "quit"


class PoolEvent(enum.Enum):
    """What a pool tells its ``on_event`` hook (the wiring relays it to systemd, see ``sdnotify.py``).

    READY: serving (again) after a reload; the first start is the pool's ``ready`` Event. RELOADING: a
    reload was requested. STOPPING: a stop was requested. MAX_CHILDREN_REACHED: prefork could not fork
    a needed spare (php-fpm's "max children reached"; counted by the status page). Called from the pool's
    loop thread.
    """

    READY = "ready"
    RELOADING = "reloading"
    STOPPING = "stopping"
    MAX_CHILDREN_REACHED = "max_children_reached"


class PoolExit(Exception):
    """Leaves a prefork master's loop. ``status`` 0 is a requested stop; anything else a failure to report."""

    def __init__(self, reason: StopReason, status: int = 0, message: str = "") -> None:
        super().__init__(message or reason.value)
        self.reason = reason
        self.status = status
        self.message = message


class RequestCounter:
    """The observer a pool installs on the factory: counts requests, then forwards to ``downstream``.

    ``on_limit`` is called once, from the worker that finished request number ``limit`` (0: never).
    """

    def __init__(self, limit: int, on_limit: Callable[[], None]) -> None:
        self.downstream: RequestObserver | None = None
        self.busy = 0
        self.served = 0
        self._limit = limit
        self._on_limit = on_limit
        self._lock = threading.Lock()

    def request_started(self, info: str) -> None:
        with self._lock:
            self.busy += 1
        if self.downstream is not None:
            self.downstream.request_started(info)

    def request_finished(self) -> None:
        with self._lock:
            self.busy -= 1
            self.served += 1
            reached = self.served == self._limit
        if self.downstream is not None:
            self.downstream.request_finished()
        if reached:
            self._on_limit()
