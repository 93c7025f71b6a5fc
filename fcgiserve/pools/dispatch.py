"""The dispatcher: worker threads that wait for work themselves (leader/followers over one epoll).

Every idle worker thread blocks in ``epoll_wait`` on one shared epoll instance that holds the listening
sockets and every parked (idle, kept-alive) connection, each armed with ``EPOLLONESHOT``. The kernel hands
each readiness event to exactly one waiting thread, and *that* thread serves it: it accepts (and re-arms the
listener so that a sibling can accept the next connection at once) or takes the parked connection, calls
``serve()``, and re-arms the connection when ``serve()`` says it is idle again. There is no hand-off between
threads on the request path: one request on a kept-alive connection costs one ``epoll_ctl`` and the
connection's own ``recv`` and ``send``, and an idle kept-alive connection costs no thread.

Capacity is the rule that keeps connections from being refused: only an idle thread waits on the epoll, so
when every thread is busy and no more may be started, nobody accepts and new connections wait in the
kernel's listen backlog; parked connections that become readable wait for a thread the same way.

The caller of ``serve_forever`` is the control thread: it runs the extra wakeup fds a pool adds (signals, a
master pipe), idle timeouts, spare-thread upkeep and stopping, never a request. Both pools use this class;
a prefork child is a Dispatcher with ``accept_while_busy=False``. Linux only (epoll).
"""

from __future__ import annotations

import errno
import itertools
import logging
import math
import select
import selectors
import socket
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from fcgiserve.pools.base import ConnectionFactory, RequestObserver, ServedConnection

__all__ = ["Dispatcher"]

log = logging.getLogger("fcgiserve.pools")

# Tags carried in each control selector key's data.
_WAKE, _EXTRA = range(2)

_ARMED = select.EPOLLIN | select.EPOLLONESHOT  # one event, to one thread, then disarmed until re-armed
# On a graceful stop, parked kept-alive connections are served (and closed after that response) this long.
_DRAIN_SECONDS = 1.0

# accept() failures that say the process or system is out of a resource: retrying at once would spin.
_RESOURCE_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
_ACCEPT_RETRY_DELAY = 0.5
# After a stop that timed out or was immediate, how long to wait for workers to notice their closed sockets.
_FORCED_JOIN_TIMEOUT = 0.2


class _RequestCounter:
    """The observer the dispatcher installs on the factory: counts requests, then forwards."""

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


class Dispatcher:
    """Accept, park and serve connections with between ``min_spare`` and ``max_threads`` worker threads.

    Single use: ``serve_forever`` runs once. ``stop``, ``pause_accepting`` and ``resume_accepting``
    may be called from any thread (or from a wakeup callback); ``add_wakeup`` only before
    ``serve_forever`` or from the control thread. Listening sockets are set non-blocking and are
    never closed here: they belong to the caller, who may hand them to a new process on reload.

    Extensions to the pools contract (keyword-only, optional): ``max_requests`` stops gracefully
    (within ``graceful_timeout``) after that many requests and sets ``max_requests_reached``;
    ``thread_name`` prefixes worker thread names (``<thread_name>-<n>``); ``ready`` is an Event set
    while serving; ``busy_threads`` counts workers inside a job. ``max_spare`` is at least 1 (a thread
    that just finished keeps itself for the next connection), and at least one thread waits for work
    whenever more may be started. Any observer already set on the factory when ``serve_forever`` starts
    is chained behind the dispatcher's request counter and put back when it returns.
    """

    def __init__(
        self,
        listeners: Sequence[socket.socket],
        factory: ConnectionFactory,
        *,
        min_spare: int,
        max_spare: int,
        max_threads: int,
        idle_timeout: float = 0.0,
        max_connections: int = 0,
        accept_while_busy: bool = True,
        max_requests: int = 0,
        graceful_timeout: float = 30.0,
        thread_name: str = "fcgiserve-worker",
    ) -> None:
        if max_threads < 1:
            raise ValueError(f"max_threads must be at least 1, not {max_threads}")
        if not 0 <= min_spare <= max_spare:
            raise ValueError(f"need 0 <= min_spare <= max_spare, got {min_spare} and {max_spare}")
        if idle_timeout < 0 or max_connections < 0 or max_requests < 0 or graceful_timeout < 0:
            raise ValueError("idle_timeout, max_connections, max_requests and graceful_timeout must be >= 0")
        self._listeners = {listener.fileno(): listener for listener in listeners}
        self._factory = factory
        # One waiting thread is the minimum that keeps the pool reachable.
        self._min_spare = max(1, min(min_spare, max_threads))
        self._max_spare = max(self._min_spare, min(max_spare, max_threads))
        self._max_threads = max_threads
        self._idle_timeout = idle_timeout
        self._max_connections = max_connections
        self._accept_while_busy = accept_while_busy
        self._graceful_timeout = graceful_timeout
        self._thread_name = thread_name
        self._thread_serial = itertools.count(1)
        self._counter = _RequestCounter(max_requests, self._on_max_requests)
        self.max_requests_reached = False
        self.ready = threading.Event()  # set while serve_forever is serving

        # Shared by the workers and the control thread, guarded by _lock.
        self._lock = threading.Lock()
        self._epoll = select.epoll()
        self._parked: dict[int, tuple[ServedConnection, float]] = {}  # fd -> (conn, parked at); oldest first
        self._armed: set[int] = set()  # listener fds currently armed in the epoll
        self._idle = 0  # threads waiting in epoll (a thread being started counts as idle)
        self._threads = 0
        self._busy = 0  # threads serving a connection
        self._open = 0  # accepted connections not yet finished: in service or parked
        self._in_service: dict[int, ServedConnection | socket.socket] = {}  # thread ident -> what it serves
        self._workers: set[threading.Thread] = set()
        self._accept_paused = False
        self._accept_retry_at = 0.0
        self._stop_requested = False
        self._stop_graceful = True
        self._stop_deadline = math.inf
        self._stopping = False  # no new work: connections are closed instead of parked
        self._drain_deadline = math.inf  # parked connections are served until then while stopping
        self._workers_exit = False
        self._started = False
        self._finished = False  # serve_forever returned; the last worker out closes the epoll

        # Level-triggered "exit" pipe in the workers' epoll: once written, every waiting worker wakes.
        self._exit_r, self._exit_w = socket.socketpair()
        self._epoll.register(self._exit_r.fileno(), select.EPOLLIN)
        for fd, listener in self._listeners.items():
            listener.setblocking(False)
            self._epoll.register(fd, 0)  # disarmed until _update_listeners_locked arms it

        # Owned by the control thread.
        self._control = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._control.register(self._wake_r, selectors.EVENT_READ, (_WAKE, None))

    # -- statistics (plain reads: a consistent-enough snapshot for a status page) ------------------------

    @property
    def busy_requests(self) -> int:
        return self._counter.busy

    @property
    def requests_served(self) -> int:
        return self._counter.served

    @property
    def idle_threads(self) -> int:
        return self._idle

    @property
    def busy_threads(self) -> int:
        return self._busy

    @property
    def thread_count(self) -> int:
        return self._threads

    @property
    def parked_connections(self) -> int:
        return len(self._parked)

    @property
    def open_connections(self) -> int:
        return self._open

    # -- control ----------------------------------------------------------------------------------------

    def add_wakeup(self, fd: int, callback: Callable[[], None]) -> None:
        """Watch ``fd`` for readability and call ``callback`` in the control thread (it must drain fd)."""
        self._control.register(fd, selectors.EVENT_READ, (_EXTRA, callback))

    def stop(self, graceful: bool = True, timeout: float = 30.0) -> None:
        """Ask serve_forever to stop; a later non-graceful stop or earlier deadline overrides."""
        with self._lock:
            self._stop_requested = True
            self._stop_graceful = self._stop_graceful and graceful
            self._stop_deadline = min(self._stop_deadline, time.monotonic() + timeout)
            self._update_listeners_locked()
        self._wake()

    def pause_accepting(self) -> None:
        with self._lock:
            self._accept_paused = True
            self._update_listeners_locked()

    def resume_accepting(self) -> None:
        with self._lock:
            self._accept_paused = False
            self._update_listeners_locked()

    def _on_max_requests(self) -> None:
        self.max_requests_reached = True
        self.stop(graceful=True, timeout=self._graceful_timeout)

    def _wake(self) -> None:
        try:
            self._wake_w.send(b"\0")
        except OSError:  # full (a wakeup is pending anyway) or closed (serve_forever is over)
            pass

    # -- listeners: armed only while accepting is allowed -------------------------------------------------

    def _accepting_locked(self) -> bool:
        if self._accept_paused or self._stop_requested or self._stopping or self._accept_retry_at:
            return False
        return not (self._max_connections and self._open >= self._max_connections)

    def _declining_locked(self) -> bool:
        """accept_while_busy=False and a thread of ours is busy: new connections are a sibling's."""
        return not self._accept_while_busy and self._busy > 0

    def _update_listeners_locked(self) -> None:
        """Arm every disarmed listener when accepting is allowed; disarm the armed ones when it is not.

        Being busy (``accept_while_busy=False``) disarms lazily: an armed listener stays armed, and a
        connection that arrives meanwhile is declined when its event comes (``_take_locked``) and left to an
        idle sibling. That costs an ``epoll_ctl`` per new connection, not two per request.
        """
        if self._accepting_locked():
            if len(self._armed) == len(self._listeners) or self._declining_locked():
                return  # the common case on the request path: nothing to do
            for fd in self._listeners.keys() - self._armed:
                self._epoll.modify(fd, _ARMED)
                self._armed.add(fd)
        elif self._armed:
            for fd in self._armed:
                self._epoll.modify(fd, 0)
            self._armed.clear()

    # -- the control thread -----------------------------------------------------------------------------

    def serve_forever(self) -> None:
        if self._started:
            raise RuntimeError("a Dispatcher serves only once")
        self._started = True
        self._counter.downstream = self._factory.observer
        self._factory.observer = self._counter
        try:
            with self._lock:
                self._update_listeners_locked()
            self._maintain_threads()
            self.ready.set()
            self._run_control_loop()
        finally:
            self.ready.clear()
            self._finish()
            self._factory.observer = self._counter.downstream

    def _run_control_loop(self) -> None:
        select_ = self._control.select
        while True:
            for key, _mask in select_(self._next_timeout()):
                tag, callback = key.data
                if tag == _WAKE:
                    self._drain_wake_socket()
                else:
                    callback()
            with self._lock:
                stop_requested, graceful, deadline = (
                    self._stop_requested,
                    self._stop_graceful,
                    self._stop_deadline,
                )
            if stop_requested and not self._stopping:
                self._begin_stop()
            if self._parked and self._idle_timeout:
                self._expire_idle()
            if self._accept_retry_at and time.monotonic() >= self._accept_retry_at:
                with self._lock:
                    self._accept_retry_at = 0.0
                    self._update_listeners_locked()
            if self._stopping:
                now = time.monotonic()
                if not graceful or now >= deadline:
                    self._force_close_all()
                    return
                with self._lock:
                    done = self._busy == 0 and (not self._parked or now >= self._drain_deadline)
                if done:
                    self._close_parked()
                    return
            self._maintain_threads()

    def _next_timeout(self) -> float | None:
        when = math.inf
        if self._idle_timeout:
            # Workers park connections without waking this thread, so it looks again on a tick.
            when = time.monotonic() + min(self._idle_timeout / 2, 1.0)
            with self._lock:
                if self._parked:
                    when = min(when, next(iter(self._parked.values()))[1] + self._idle_timeout)
        if self._stopping:
            when = min(when, self._stop_deadline, self._drain_deadline)
        if self._accept_retry_at:
            when = min(when, self._accept_retry_at)
        if when == math.inf:
            return None
        return max(0.0, when - time.monotonic())

    def _drain_wake_socket(self) -> None:
        try:
            while self._wake_r.recv(4096):
                pass
        except BlockingIOError:
            pass

    def _expire_idle(self) -> None:
        limit = time.monotonic() - self._idle_timeout
        with self._lock:
            expired = []
            for conn, parked_at in self._parked.values():
                if parked_at > limit:
                    break  # insertion order is parking order
                expired.append(conn)
            for conn in expired:
                del self._parked[conn.fileno()]
        self._close_connections(expired)

    def _close_connections(self, conns: Sequence[ServedConnection]) -> None:
        for conn in conns:
            _close_quietly(conn)  # closing the fd also removes it from the epoll
        if conns:
            with self._lock:
                self._open -= len(conns)
                self._update_listeners_locked()

    def _maintain_threads(self) -> None:
        """Keep min_spare threads waiting for work, within max_threads."""
        with self._lock:
            count = (
                0 if self._stopping else min(self._min_spare - self._idle, self._max_threads - self._threads)
            )
            if count <= 0:
                return
            self._threads += count
            self._idle += count
        self._start_threads(count)

    def _start_threads(self, count: int) -> None:
        for _ in range(count):
            thread = threading.Thread(
                target=self._work, name=f"{self._thread_name}-{next(self._thread_serial)}", daemon=True
            )
            with self._lock:
                self._workers.add(thread)
            thread.start()

    def _begin_stop(self) -> None:
        """Stop accepting; parked connections drain: served once more and closed after that response.

        Closing an idle kept-alive connection races with a web server that picks it for its next request at
        that very moment (nginx then fails the request unless it may retry it: never a POST). Closing right
        after a response leaves no such window, so parked connections stay served for a short drain period,
        each closed after its next response, and only those still idle at its end are closed unannounced.
        """
        with self._lock:
            self._stopping = True
            self._update_listeners_locked()  # listeners stay open: new connections wait in the backlog
            self._drain_deadline = min(self._stop_deadline, time.monotonic() + _DRAIN_SECONDS)
        if self.max_requests_reached:
            self._close_parked()  # after max_requests not one request more: parked connections close now

    def _close_parked(self) -> None:
        with self._lock:
            parked = [conn for conn, _ in self._parked.values()]
            self._parked.clear()
        self._close_connections(parked)

    def _force_close_all(self) -> None:
        """Close parked and in-service connections (an immediate stop, or a graceful one out of time)."""
        with self._lock:
            self._stopping = True
            self._update_listeners_locked()
            in_service = list(self._in_service.values())
            parked = [conn for conn, _ in self._parked.values()]
            self._parked.clear()
        self._close_connections(parked)
        # A worker may still be inside serve(): close() should shut the socket down so its read returns.
        for served in in_service:
            _close_quietly(served)

    def _finish(self) -> None:
        """Stop the workers, close what is left, release the epoll (the listeners stay open)."""
        with self._lock:
            self._stopping = True
            self._workers_exit = True
            self._update_listeners_locked()
            workers = list(self._workers)
            clean = self._busy == 0
        self._exit_w.send(b"\0")  # level-triggered: wakes every waiting worker, one after another
        deadline = time.monotonic() + (self._graceful_timeout if clean else _FORCED_JOIN_TIMEOUT)
        for thread in workers:
            thread.join(max(0.0, deadline - time.monotonic()))
        with self._lock:
            parked = [conn for conn, _ in self._parked.values()]
            self._parked.clear()
        self._close_connections(parked)
        for fd in self._listeners:
            try:
                self._epoll.unregister(fd)
            except OSError:
                pass
        self._control.close()
        self._wake_r.close()
        self._wake_w.close()
        with self._lock:
            self._finished = True
            if self._threads == 0:
                self._release_locked()
            # else: a worker stuck in application code still holds the epoll; the last one out releases it.

    def _release_locked(self) -> None:
        self._epoll.close()
        self._exit_r.close()
        self._exit_w.close()

    # -- worker threads ---------------------------------------------------------------------------------

    def _work(self) -> None:
        me = threading.current_thread()
        ident = threading.get_ident()
        poll = self._epoll.poll
        exit_fd = self._exit_r.fileno()
        while True:  # this thread is counted in _idle here
            try:
                events = poll(-1, 1)
            except InterruptedError:
                continue
            except (OSError, ValueError):  # the epoll was closed under us: the dispatcher is gone
                events = [(exit_fd, 0)]
            fd = events[0][0] if events else exit_fd
            with self._lock:
                if self._workers_exit:
                    self._retire_locked(me)
                    return
                job = self._take_locked(fd)
                if job is None:
                    # A sibling process took the connection (EAGAIN), or a stale event: re-arm and wait.
                    self._update_listeners_locked()
                    continue
                self._idle -= 1
                self._busy += 1
                self._in_service[ident] = job[0] if isinstance(job, tuple) else job
                self._update_listeners_locked()  # accept_while_busy=False: stop accepting now
                more = min(self._min_spare - self._idle, self._max_threads - self._threads)
                if more > 0 and not self._stopping:
                    self._threads += more
                    self._idle += more
                else:
                    more = 0
            if more:
                self._start_threads(more)
            keep = self._run_job(job, ident)
            with self._lock:
                del self._in_service[ident]
                self._busy -= 1
                if keep is None:
                    self._open -= 1
                elif self._stopping:
                    self._open -= 1
                    _close_quietly(keep)
                else:
                    self._park_locked(keep)
                self._update_listeners_locked()
                stopping = self._stopping
                if self._workers_exit or self._idle >= self._max_spare:
                    self._idle += 1  # counted idle for the moment _retire_locked takes it back
                    self._retire_locked(me)
                    retire = True
                else:
                    self._idle += 1
                    retire = False
            if stopping:
                self._wake()  # the control thread ends the stop once nothing is busy
            if retire:
                return

    def _take_locked(self, fd: int) -> tuple[socket.socket, Any] | ServedConnection | None:
        """What the event on ``fd`` means for this thread: a new connection, a parked one, or nothing."""
        listener = self._listeners.get(fd)
        if listener is not None:
            self._armed.discard(fd)  # EPOLLONESHOT disarmed it
            if not self._accepting_locked() or self._declining_locked():
                return None  # paused, stopping, or busy: the connection waits for a sibling or for us
            return self._accept_locked(listener)  # the caller re-arms it at once, for a sibling
        parked = self._parked.pop(fd, None)
        return None if parked is None else parked[0]

    def _accept_locked(self, listener: socket.socket) -> tuple[socket.socket, Any] | None:
        try:
            sock, peer = listener.accept()
        except BlockingIOError:
            return None  # another process or thread took it
        except OSError as exc:
            if exc.errno in _RESOURCE_ERRNOS:
                log.warning("accept failed (%s); pausing accept for %.1fs", exc, _ACCEPT_RETRY_DELAY)
                self._accept_retry_at = time.monotonic() + _ACCEPT_RETRY_DELAY
                self._wake()
            return None  # ECONNABORTED and friends: that peer gave up
        if sock.family != socket.AF_UNIX:
            try:
                # Nagle + delayed ACK would hold small responses for ~40 ms.
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass
        self._open += 1
        return sock, peer

    def _park_locked(self, conn: ServedConnection) -> None:
        try:
            fd = conn.fileno()
            self._parked[fd] = (conn, time.monotonic())
            try:
                self._epoll.modify(fd, _ARMED)
            except FileNotFoundError:  # first park of this connection
                self._epoll.register(fd, _ARMED)
        except (OSError, ValueError):
            log.exception("cannot watch a kept-alive connection; closing it")
            self._parked.pop(conn.fileno(), None)
            self._open -= 1
            _close_quietly(conn)

    def _retire_locked(self, me: threading.Thread) -> None:
        self._idle -= 1
        self._threads -= 1
        self._workers.discard(me)
        if self._finished and self._threads == 0:
            self._release_locked()

    def _run_job(
        self, job: tuple[socket.socket, Any] | ServedConnection, ident: int
    ) -> ServedConnection | None:
        """Serve one job; return the connection if it should be parked. Never raises."""
        if isinstance(job, tuple):
            sock, peer = job
            try:
                conn = self._factory.open(sock, peer)
            except BaseException:  # even SystemExit from application code must not cost us a worker
                log.exception("opening a connection from %r failed; closing it", peer)
                _close_quietly(sock)
                return None
            if conn is None:
                return None
            with self._lock:
                self._in_service[ident] = conn
        else:
            conn = job
        try:
            keep = conn.serve()
        except BaseException:
            log.exception("serving a connection failed; closing it")
            _close_quietly(conn)
            return None
        return conn if keep else None


def _close_quietly(closable: ServedConnection | socket.socket) -> None:
    try:
        closable.close()
    except Exception:
        log.exception("closing a connection failed")
