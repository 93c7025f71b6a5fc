"""The dispatcher: one selector thread feeding a bounded set of worker threads.

The selector thread (the caller of ``serve_forever``) watches the listening sockets, every parked
(idle, kept-alive) connection, a wakeup socketpair and any extra fds a pool adds (signals, a master
pipe). Work goes to worker threads through one deque under one lock/condition: an accepted socket
or a parked connection that became readable is appended and exactly one idle worker is notified.
A worker holds a connection only while ``serve()`` runs; when it returns True the connection is
handed back to the selector, so an idle kept-alive connection costs no thread.

Capacity is the one rule that keeps connections from being refused: the selector accepts only as
many connections as there are idle threads plus threads it may still start. When there are none,
the listeners are unregistered and new connections wait in the kernel's listen backlog.

Both pools use this class; a prefork child is a Dispatcher with ``accept_while_busy=False``.
"""

from __future__ import annotations

import collections
import errno
import itertools
import logging
import math
import selectors
import socket
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from fcgiserve.pools.base import ConnectionFactory, RequestObserver, ServedConnection

__all__ = ["Dispatcher"]

log = logging.getLogger("fcgiserve.pools")

# Tags carried in each selector key's data.
_WAKE, _LISTENER, _PARKED, _EXTRA = range(4)

# accept() failures that say the process or system is out of a resource: retrying at once would spin.
_RESOURCE_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
_ACCEPT_RETRY_DELAY = 0.5
# After a stop that timed out or was immediate, how long to wait for workers to notice their closed sockets.
_FORCED_JOIN_TIMEOUT = 0.2

# A job is an accepted socket still to be opened, or a connection with work to do.
_Job = tuple[socket.socket, Any] | ServedConnection


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
    """Accept, park and hand connections to between ``min_spare`` and ``max_threads`` worker threads.

    Single use: ``serve_forever`` runs once. ``stop``, ``pause_accepting`` and ``resume_accepting``
    may be called from any thread (or from a wakeup callback); ``add_wakeup`` only before
    ``serve_forever`` or from the selector thread. Listening sockets are set non-blocking and are
    never closed here: they belong to the caller, who may hand them to a new process on reload.

    Extensions to the pools contract (keyword-only, optional): ``max_requests`` stops gracefully
    (within ``graceful_timeout``) after that many requests and sets ``max_requests_reached``;
    ``thread_name`` prefixes worker thread names (``<thread_name>-<n>``); ``ready`` is an Event set
    while serving; ``busy_threads`` counts workers inside a job. ``max_spare`` is at least 1 (a thread
    that just finished keeps itself for the next connection). Any observer already set
    on the factory when ``serve_forever`` starts is chained behind the dispatcher's request counter
    and put back when it returns.
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
        self._listeners = list(listeners)
        self._factory = factory
        self._min_spare = min(min_spare, max_threads)
        self._max_spare = max(1, min(max_spare, max_threads))
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

        # Shared with the workers, guarded by _lock.
        self._lock = threading.Lock()
        self._work_ready = threading.Condition(self._lock)
        self._jobs: collections.deque[_Job] = collections.deque()
        self._idle = 0  # threads waiting for a job (a thread being started counts as idle)
        self._threads = 0
        self._busy = 0  # threads running a job
        self._open = 0  # accepted connections not yet finished: queued, in service or parked
        self._to_park: list[ServedConnection] = []
        self._in_service: dict[int, ServedConnection | socket.socket] = {}  # thread ident -> what it serves
        self._workers: set[threading.Thread] = set()
        self._wake_pending = False
        self._notify_on_finish = False  # the selector wants to hear when a worker frees capacity
        self._accept_paused = False
        self._stop_requested = False
        self._stop_graceful = True
        self._stop_deadline = math.inf
        self._stopping = False  # no new work: connections are closed instead of parked
        self._workers_exit = False

        # Owned by the selector thread.
        self._selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._selector.register(self._wake_r, selectors.EVENT_READ, (_WAKE, None))
        self._parked: dict[int, tuple[ServedConnection, float]] = {}  # fd -> (conn, parked at); oldest first
        self._accept_registered = False
        self._accept_retry_at = 0.0
        self._started = False

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
        """Watch ``fd`` for readability and call ``callback`` in the selector thread (it must drain fd)."""
        self._selector.register(fd, selectors.EVENT_READ, (_EXTRA, callback))

    def stop(self, graceful: bool = True, timeout: float = 30.0) -> None:
        """Ask serve_forever to stop; a later non-graceful stop or earlier deadline overrides."""
        with self._lock:
            self._stop_requested = True
            self._stop_graceful = self._stop_graceful and graceful
            self._stop_deadline = min(self._stop_deadline, time.monotonic() + timeout)
        self._wake()

    def pause_accepting(self) -> None:
        with self._lock:
            self._accept_paused = True
        self._wake()

    def resume_accepting(self) -> None:
        with self._lock:
            self._accept_paused = False
        self._wake()

    def _on_max_requests(self) -> None:
        self.max_requests_reached = True
        self.stop(graceful=True, timeout=self._graceful_timeout)

    def _wake(self) -> None:
        with self._lock:
            if self._wake_pending:
                return
            self._wake_pending = True
        self._send_wake_byte()

    def _send_wake_byte(self) -> None:
        try:
            self._wake_w.send(b"\0")
        except OSError:  # full (a wakeup is pending anyway) or closed (serve_forever is over)
            pass

    # -- the selector thread ----------------------------------------------------------------------------

    def serve_forever(self) -> None:
        if self._started:
            raise RuntimeError("a Dispatcher serves only once")
        self._started = True
        self._counter.downstream = self._factory.observer
        self._factory.observer = self._counter
        for listener in self._listeners:
            listener.setblocking(False)
        try:
            self._maintain_threads()
            self._update_accepting()
            self.ready.set()
            self._run_loop()
        finally:
            self.ready.clear()
            self._finish()
            self._factory.observer = self._counter.downstream

    def _run_loop(self) -> None:
        select = self._selector.select
        while True:
            events = select(self._next_timeout())
            jobs: list[_Job] = []
            for key, _mask in events:
                tag, obj = key.data
                if tag == _PARKED:
                    self._selector.unregister(key.fd)
                    del self._parked[key.fd]
                    jobs.append(obj)
                elif tag == _LISTENER:
                    self._accept_from(obj, jobs)
                elif tag == _WAKE:
                    self._drain_wake_socket()
                else:
                    obj()
            if jobs:
                self._hand_off(jobs)
            with self._lock:
                self._wake_pending = False
                to_park, self._to_park = self._to_park, []
                stop_requested, graceful, deadline = (
                    self._stop_requested,
                    self._stop_graceful,
                    self._stop_deadline,
                )
            if stop_requested and not self._stopping:
                self._begin_stop()
            for conn in to_park:
                self._park(conn)
            if self._parked and self._idle_timeout:
                self._expire_idle()
            if self._stopping:
                if not graceful or time.monotonic() >= deadline:
                    self._force_close_all()
                    return
                with self._lock:
                    if self._busy == 0 and not self._jobs:
                        return
            self._maintain_threads()
            self._update_accepting()

    def _next_timeout(self) -> float | None:
        when = math.inf
        if self._parked and self._idle_timeout:
            when = next(iter(self._parked.values()))[1] + self._idle_timeout
        if self._stopping:
            when = min(when, self._stop_deadline)
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

    def _accept_budget_locked(self) -> int:
        """How many connections may be accepted now. Caller holds _lock."""
        if self._accept_paused or self._stopping:
            return 0  # checked here too, so that pause_accepting() holds from the moment it returns
        if self._accept_while_busy:
            budget = self._idle + (self._max_threads - self._threads) - len(self._jobs)
        else:
            budget = 1 if self._busy == 0 and not self._jobs else 0
        if self._max_connections:
            budget = min(budget, self._max_connections - self._open)
        return budget

    def _accept_from(self, listener: socket.socket, jobs: list[_Job]) -> None:
        with self._lock:
            if self._stop_requested:  # e.g. max_requests reached in this very round: take no more
                return
            budget = self._accept_budget_locked() - len(jobs)
        while budget > 0:
            budget -= 1  # transient errors count too: the loop is bounded
            try:
                sock, peer = listener.accept()
            except BlockingIOError:
                return  # another process or an earlier round took it
            except OSError as exc:
                if exc.errno in _RESOURCE_ERRNOS:
                    log.warning("accept failed (%s); pausing accept for %.1fs", exc, _ACCEPT_RETRY_DELAY)
                    self._accept_retry_at = time.monotonic() + _ACCEPT_RETRY_DELAY
                    self._set_listeners_registered(False)
                    return
                continue  # ECONNABORTED and friends: that peer gave up, the next may not have
            if sock.family != socket.AF_UNIX:
                try:
                    # Nagle + delayed ACK would hold small responses for ~40 ms.
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                except OSError:
                    pass
            jobs.append((sock, peer))

    def _hand_off(self, jobs: list[_Job]) -> None:
        accepted = sum(1 for job in jobs if isinstance(job, tuple))
        with self._lock:
            self._jobs.extend(jobs)
            self._open += accepted
            self._work_ready.notify(len(jobs))

    def _park(self, conn: ServedConnection) -> None:
        if self._stopping:
            self._close_connections([conn])
            return
        try:
            fd = conn.fileno()
            self._selector.register(fd, selectors.EVENT_READ, (_PARKED, conn))
        except (OSError, ValueError, KeyError):
            log.exception("cannot watch a kept-alive connection; closing it")
            self._close_connections([conn])
            return
        self._parked[fd] = (conn, time.monotonic())

    def _unpark_all(self) -> list[ServedConnection]:
        conns = []
        for fd, (conn, _parked_at) in self._parked.items():
            self._selector.unregister(fd)
            conns.append(conn)
        self._parked.clear()
        return conns

    def _expire_idle(self) -> None:
        limit = time.monotonic() - self._idle_timeout
        expired = []
        for fd, (_conn, parked_at) in self._parked.items():
            if parked_at > limit:
                break  # insertion order is parking order
            expired.append(fd)
        if expired:
            conns = [self._parked.pop(fd)[0] for fd in expired]
            for fd in expired:
                self._selector.unregister(fd)
            self._close_connections(conns)

    def _close_connections(self, conns: Sequence[ServedConnection]) -> None:
        for conn in conns:
            _close_quietly(conn)
        with self._lock:
            self._open -= len(conns)

    def _set_listeners_registered(self, registered: bool) -> None:
        if registered == self._accept_registered:
            return
        for listener in self._listeners:
            if registered:
                self._selector.register(listener, selectors.EVENT_READ, (_LISTENER, listener))
            else:
                self._selector.unregister(listener)
        self._accept_registered = registered

    def _update_accepting(self) -> None:
        if self._accept_retry_at and time.monotonic() >= self._accept_retry_at:
            self._accept_retry_at = 0.0
        with self._lock:
            want = not self._accept_retry_at and self._accept_budget_locked() > 0
            # Decided under the lock so that a worker freeing capacity right after cannot go unheard.
            self._notify_on_finish = not want
        self._set_listeners_registered(want)

    def _maintain_threads(self) -> None:
        """Start threads for queued jobs and to keep min_spare idle, within max_threads."""
        with self._lock:
            spare = self._idle - len(self._jobs)
            want = max(-spare, 0) if self._stopping else max(self._min_spare - spare, -spare, 0)
            count = min(want, self._max_threads - self._threads)
            if count <= 0:
                return
            self._threads += count
            self._idle += count
        for _ in range(count):
            thread = threading.Thread(
                target=self._work, name=f"{self._thread_name}-{next(self._thread_serial)}", daemon=True
            )
            with self._lock:
                self._workers.add(thread)
            thread.start()

    def _begin_stop(self) -> None:
        with self._lock:
            self._stopping = True
        self._set_listeners_registered(False)  # listeners stay open: new connections wait in the backlog
        self._close_connections(self._unpark_all())

    def _force_close_all(self) -> None:
        """Close queued and in-service connections (an immediate stop, or a graceful one out of time)."""
        with self._lock:
            self._stopping = True
            queued = list(self._jobs)
            self._jobs.clear()
            in_service = list(self._in_service.values())
            self._open -= len(queued)
        self._set_listeners_registered(False)
        self._close_connections(self._unpark_all())
        for item in queued:
            _close_quietly(item[0] if isinstance(item, tuple) else item)
        # A worker may still be inside serve(): close() should shut the socket down so its read returns.
        for served in in_service:
            _close_quietly(served)

    def _finish(self) -> None:
        """Stop the workers, close what is left, release the selector (the listeners stay open)."""
        with self._lock:
            self._stopping = True
            self._workers_exit = True
            self._work_ready.notify_all()
            workers = list(self._workers)
            clean = self._busy == 0
        deadline = time.monotonic() + (self._graceful_timeout if clean else _FORCED_JOIN_TIMEOUT)
        for thread in workers:
            thread.join(max(0.0, deadline - time.monotonic()))
        with self._lock:
            unparked, self._to_park = self._to_park, []
        self._close_connections([*self._unpark_all(), *unparked])
        self._set_listeners_registered(False)
        self._selector.close()
        with self._lock:
            self._wake_pending = True  # late workers must not write to the closed socket
        self._wake_r.close()
        self._wake_w.close()

    # -- worker threads ---------------------------------------------------------------------------------

    def _work(self) -> None:
        me = threading.current_thread()
        ident = threading.get_ident()
        lock = self._lock
        with lock:
            while True:  # this thread is counted in _idle here
                while not self._jobs:
                    # A thread started for a job that another worker took may find itself surplus.
                    if self._workers_exit or self._idle > self._max_spare:
                        self._retire_locked(me)
                        return
                    self._work_ready.wait()
                job = self._jobs.popleft()
                self._idle -= 1
                self._busy += 1
                self._in_service[ident] = job[0] if isinstance(job, tuple) else job
                lock.release()
                try:
                    keep = self._run_job(job, ident)
                finally:
                    lock.acquire()
                del self._in_service[ident]
                self._busy -= 1
                if keep is None:
                    self._open -= 1
                else:
                    self._to_park.append(keep)  # the selector closes it instead if the pool is stopping
                if (keep is not None or self._notify_on_finish) and not self._wake_pending:
                    self._wake_pending = True
                    self._send_wake_byte()
                self._idle += 1  # and back to the top, where a surplus idle thread retires

    def _retire_locked(self, me: threading.Thread) -> None:
        self._idle -= 1
        self._threads -= 1
        self._workers.discard(me)

    def _run_job(self, job: _Job, ident: int) -> ServedConnection | None:
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
