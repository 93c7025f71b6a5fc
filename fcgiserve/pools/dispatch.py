"""The dispatcher: worker threads that wait for work themselves (leader/followers over one epoll).

One epoll (``watchlist.py``) holds the listening sockets and every parked (idle, kept-alive) connection,
each armed with ``EPOLLONESHOT``. One idle thread, the *leader*, waits in ``epoll_wait``; the other idle
threads, the *followers*, wait each on its own gate lock (``crew.py`` counts who waits where). The leader
that gets an event serves it itself: it accepts (``admission.py`` says whether, and how many) or takes the
parked connection, calls ``serve()``, and re-arms the connection when ``serve()`` says it is idle again.

Promotion is lazy: a leader that takes a job wakes nobody. Most jobs end within a couple of milliseconds,
and the thread then goes straight back to the epoll as the leader, so on a busy server one thread serves
request after request in arrival order with no hand-off between threads, no GIL contention, and one
``epoll_ctl`` plus the connection's own ``recv`` and ``send`` per kept-alive request. Only when the pool has
had no leader for ``promote_after`` while a job runs (an application waiting on a database, a slow body)
does the control thread promote a follower, or start a thread, to watch the epoll: I/O-bound applications
still get as many threads as they keep busy, each after at most about that delay (docs/design.md).

Capacity is the rule that keeps connections from being refused: only an idle thread waits on the epoll, so
when every thread is busy and no more may be started, nobody accepts and new connections wait in the
kernel's listen backlog; parked connections that become readable wait for a thread the same way.

The caller of ``serve_forever`` is the control thread: it runs the extra wakeup fds a pool adds (signals, a
master pipe), idle timeouts, promotion, spare-thread upkeep and stopping, never a request. Both pools use
this class; a prefork child is a Dispatcher with ``accept_while_busy=False``. Linux only (epoll).
"""

from __future__ import annotations

import itertools
import logging
import math
import socket
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from fcgiserve.memory import release_scratch_buffer, scratch_buffer, trim_heap
from fcgiserve.pools.admission import Admission
from fcgiserve.pools.base import ConnectionFactory, RequestCounter, ServedConnection
from fcgiserve.pools.control import ControlWaiter
from fcgiserve.pools.crew import SPARE_IDLE_SECONDS, Crew, ThreadRole
from fcgiserve.pools.watchlist import AcceptFailed, NewConnection, WatchList, accept, close_quietly

__all__ = ["Dispatcher"]

# What a worker may take: a parked connection, a new one to open and serve, new ones to open and park.
_Job = ServedConnection | NewConnection | list[NewConnection]

log = logging.getLogger("fcgiserve.pools")

# On a graceful stop, parked kept-alive connections are served (and closed after that response) this long.
_DRAIN_SECONDS = 1.0
# Lazy promotion (module docstring): how long a job may leave the pool without a leader.
_PROMOTE_AFTER_SECONDS = 0.002
# This long after the last job, the control thread hands the C heap's free pages back (memory.trim_heap).
_QUIET_TRIM_SECONDS = 1.0
# The control thread checks for a leaderless pool on this tick while jobs run or ran lately; after this
# long with no job it sleeps until the next job wakes it.
_ACTIVE_WINDOW_SECONDS = 0.25
# hand_off_readable gives away at most this many readable parked connections per call.
_HAND_OFF_BATCH = 16
# After a stop that timed out or was immediate, how long to wait for workers to notice their closed sockets.
_FORCED_JOIN_TIMEOUT = 0.2
# How long a prefork child that holds no connection leaves a new one to its siblings (defer_new): a hello
# request takes tens of microseconds, so a busy sibling looks again well within it.
_DEFER_SECONDS = 0.001
# After the system refused a thread, no new one is asked for during this long; the refusal is logged at
# most once in _REFUSAL_LOG_SECONDS.
_REFUSED_RETRY_SECONDS = 5.0
_REFUSAL_LOG_SECONDS = 60.0


class Dispatcher:
    """Accept, park and serve connections with between ``min_spare`` and ``max_threads`` worker threads.

    Single use: ``serve_forever`` runs once. ``stop``, ``pause_accepting`` and ``resume_accepting``
    may be called from any thread (or from a wakeup callback); ``add_wakeup`` only before
    ``serve_forever`` or from the control thread. Listening sockets are set non-blocking and are
    never closed here: they belong to the caller, who may hand them to a new process on reload.

    Extensions to the pools contract (keyword-only, optional): ``max_requests`` stops gracefully (within
    ``graceful_timeout``) after that many requests and sets ``max_requests_reached``; ``thread_name``
    prefixes worker thread names (``<thread_name>-<n>``); ``ready`` is an Event set while serving;
    ``fresh_timeout`` closes a new connection (parked until its first byte) that has sent nothing for that
    long (0: ``idle_timeout`` applies). ``max_spare`` is at least 1 (crew.py). An observer already set on
    the factory is chained behind the dispatcher's request counter while ``serve_forever`` runs.
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
        spare_idle_time: float = SPARE_IDLE_SECONDS,
        promote_after: float = _PROMOTE_AFTER_SECONDS,
        fresh_timeout: float = 0.0,
        hand_off: Callable[[socket.socket], None] | None = None,
        defer_new: Callable[[socket.socket], bool] | None = None,
        on_held: Callable[[int, bool], None] | None = None,
    ) -> None:
        if max_threads < 1:
            raise ValueError(f"max_threads must be at least 1, not {max_threads}")
        if not 0 <= min_spare <= max_spare:
            raise ValueError(f"need 0 <= min_spare <= max_spare, got {min_spare} and {max_spare}")
        if idle_timeout < 0 or max_connections < 0 or max_requests < 0 or graceful_timeout < 0:
            raise ValueError("idle_timeout, max_connections, max_requests and graceful_timeout must be >= 0")
        self._factory = factory
        self._idle_timeout = idle_timeout
        self._graceful_timeout = graceful_timeout
        self._thread_name = thread_name
        self._promote_after = promote_after
        self._fresh_timeout = fresh_timeout
        self._hand_off = hand_off
        self._defer_new = defer_new
        self._defer_again_at = 0.0
        self._thread_serial = itertools.count(1)
        self._refusal_logged_at = -math.inf
        self._counter = RequestCounter(max_requests, self._on_max_requests)
        self.max_requests_reached = False
        self.worker_failed = False  # a worker thread died of an error: the stop that follows is a recycle
        self.ready = threading.Event()  # set while serve_forever is serving

        self._control = ControlWaiter()  # what the control thread waits on; wake() from any thread
        # Shared by the workers and the control thread, guarded by _lock.
        self._lock = threading.Lock()
        # The epoll: listeners and parked connections. A prefork child of one thread shares its listeners with
        # its siblings, each in its own epoll: exclusive wake-ups (watchlist.py).
        self._watch = WatchList(listeners, exclusive=not accept_while_busy and max_threads == 1)
        self._watch.on_held = on_held
        self._crew = Crew(min_spare, max_spare, max_threads, spare_idle_time)  # who waits where
        self._admission = Admission(
            self._watch,
            self._crew,
            max_connections=max_connections,
            accept_while_busy=accept_while_busy,
            wake=self._control.wake,
        )
        self._last_job_at = 0.0
        self._trimmed = True  # no job since the heap was last trimmed
        self._control_asleep = False  # the control thread waits without a tick: a new job must wake it
        self._in_service: dict[int, ServedConnection | socket.socket] = {}  # thread ident -> what it serves
        # thread ident -> the watch-list entry of its connection, parked while its request runs
        self._armed_by: dict[int, tuple[ServedConnection, float, bool]] = {}
        self._next_deadline = math.inf  # the earliest deadline of a connection parked with half a request
        self._workers: set[threading.Thread] = set()
        self._stop_requested = False
        self._stop_graceful = True
        self._stop_deadline = math.inf
        self._stop_retire = True  # every stop asked so far hands connections off instead of closing them
        self._stopping = False  # no new work: connections are closed instead of parked
        self._drain_deadline = math.inf  # parked connections are served until then while stopping
        self._workers_exit = False
        self._started = False
        self._finished = False  # serve_forever returned; the last worker out closes the epoll

    # -- statistics (plain reads: a consistent-enough snapshot for a status page) ------------------------

    @property
    def busy_requests(self) -> int:
        return self._counter.busy

    @property
    def requests_served(self) -> int:
        return self._counter.served

    @property
    def idle_threads(self) -> int:
        return self._crew.idle

    @property
    def busy_threads(self) -> int:
        return self._crew.busy

    @property
    def thread_count(self) -> int:
        return self._crew.threads

    @property
    def parked_connections(self) -> int:
        return len(self._watch.parked)

    @property
    def open_connections(self) -> int:
        return self._admission.open

    # -- control ----------------------------------------------------------------------------------------

    def add_wakeup(self, fd: int, callback: Callable[[], None]) -> None:
        """Watch ``fd`` for readability and call ``callback`` in the control thread (it must drain fd)."""
        self._control.add(fd, callback)

    def stop(self, graceful: bool = True, timeout: float = 30.0, retire: bool = False) -> None:
        """Ask serve_forever to stop; a later non-graceful stop or earlier deadline overrides.

        ``retire`` (with a ``hand_off`` sink): somebody serves on after us, so kept-alive connections are not
        closed but handed to the sink, each as soon as it is clean (between requests). A stop without
        ``retire`` before the stop began makes it a real stop (drain and close).
        """
        with self._lock:
            self._request_stop_locked(graceful, timeout, retire)
        self._control.wake()

    def _request_stop_locked(self, graceful: bool, timeout: float, retire: bool) -> None:
        if not self._stopping:
            self._stop_retire = self._stop_retire and retire
        self._stop_requested = True
        self._stop_graceful = self._stop_graceful and graceful
        self._stop_deadline = min(self._stop_deadline, time.monotonic() + timeout)
        self._admission.close()
        if self._watch.exclusive and self._stop_retire:
            # Our listeners are out of the epoll now, but the kernel may have picked us for a connection
            # just before (exclusive wake-ups: no sibling heard of it). Whatever waits goes on to one.
            for listener in self._watch.listeners.values():
                self._pass_on_locked(listener)

    def pause_accepting(self) -> None:
        with self._lock:
            self._admission.pause(True)

    def resume_accepting(self) -> None:
        with self._lock:
            self._admission.pause(False)

    def _on_max_requests(self) -> None:
        # The flag and the stop request together, under the lock: a worker that saw the flag before the stop
        # was asked for took the stop for a real one and closed its kept-alive connection instead of handing
        # it over (a 502 or 503 for the web server's next request on it).
        with self._lock:
            self.max_requests_reached = True
            self._request_stop_locked(True, self._graceful_timeout, retire=self._hand_off is not None)
        self._control.wake()

    def adopt(self, sock: socket.socket, peer: Any) -> None:
        """Take a kept-alive connection handed over by another process (or a previous image of this one) and
        park it as the idle kept connection it is (``--idle-timeout``, not a new connection's deadline).
        Before ``serve_forever`` or from any thread while it serves."""
        with self._lock:
            self._admission.open += 1
            self._admission.handed.add(sock.fileno())
        self._open_new([(sock, peer)])

    # -- the control thread -----------------------------------------------------------------------------

    def serve_forever(self) -> None:
        if self._started:
            raise RuntimeError("a Dispatcher serves only once")
        self._started = True
        self._counter.downstream = self._factory.observer
        self._factory.observer = self._counter
        self._factory.watch = self._watch_running
        try:
            with self._lock:
                self._admission.update()
            self._maintain_threads()
            self.ready.set()
            self._run_control_loop()
        finally:
            self.ready.clear()
            self._finish()
            self._factory.observer = self._counter.downstream
            self._factory.watch = None

    def _run_control_loop(self) -> None:
        while True:
            self._control.wait(self._next_timeout())
            with self._lock:
                stop_requested, graceful, deadline = (
                    self._stop_requested,
                    self._stop_graceful,
                    self._stop_deadline,
                )
            if stop_requested and not self._stopping:
                self._begin_stop()
            # A passed deadline is looked at even with nothing parked (the sweep resets it; else we spin).
            if (self._watch.parked and (self._idle_timeout or self._fresh_timeout)) or (
                self._next_deadline <= time.monotonic()
            ):
                self._expire_idle()
            if self._admission.retry_at:
                with self._lock:
                    now = time.monotonic()
                    if self._admission.retry_if_due(now):
                        # Listening again: a connection that waited through a deferral is taken now, even
                        # if this thread woke late for it.
                        self._defer_again_at = now + _DEFER_SECONDS
            if self._crew.ceiling_until:
                with self._lock:
                    self._crew.lift_ceiling(time.monotonic())
            self._promote_if_stalled()
            self._trim_when_quiet()
            if self._stopping:
                now = time.monotonic()
                if not graceful or now >= deadline:
                    self._force_close_all()
                    return
                with self._lock:
                    done = self._crew.busy == 0 and (not self._watch.parked or now >= self._drain_deadline)
                if done:
                    self._close_parked()
                    return
            self._maintain_threads()

    def _trim_when_quiet(self) -> None:
        """A second after the last job, give back what the burst left in the C heap (memory.trim_heap)."""
        if self._trimmed or self._crew.busy or time.monotonic() - self._last_job_at < _QUIET_TRIM_SECONDS:
            return
        self._trimmed = True
        trim_heap()

    def _promote_if_stalled(self) -> None:
        """No thread has watched the epoll for promote_after while jobs run: give it a leader."""
        crew = self._crew
        with self._lock:
            if crew.leader or self._workers_exit:
                return
            if crew.busy and time.monotonic() - crew.leaderless_since < self._promote_after:
                return
            if not crew.busy and not crew.followers:
                return  # a thread on its way in (counted idle) leads when it arrives
            start = crew.promote()
        if start:
            self._start_threads(1, leader=True)

    def hand_off_readable(self) -> None:
        """Give the parked connections that are readable now to the hand-off sink, when no thread of ours
        can serve them soon: every thread is busy and none may start (a prefork child's one thread).

        A prefork master calls this through a signal when the child has been busy on the same request(s)
        for a while and a sibling is idle (busywatch.py), so requests waiting on our parked connections do
        not wait for our current one. Call it from the control thread (a wakeup callback); connections
        with half a request stay here."""
        if self._hand_off is None:
            return
        crew = self._crew
        with self._lock:
            if crew.leader or not crew.busy or crew.can_promote() or self._stopping:
                return
            try:
                events = self._watch.poll(0, _HAND_OFF_BATCH)
            except (OSError, ValueError):
                return
            for fd, _mask in events:
                if self._watch.fired_listener(fd) is not None:
                    continue  # new connections are a sibling's anyway; update() re-arms it when idle
                conn = self._watch.unpark(fd)
                if conn is not None and not self._give_away_locked(conn):
                    self._park_locked(conn)  # half a request in our hands: it stays with this process

    def _handing_off_locked(self) -> bool:
        """A retiring stop was asked for (it may not have begun yet): clean connections go to the sink."""
        return self._hand_off is not None and self._stop_requested and self._stop_retire

    def _give_away_locked(self, conn: ServedConnection) -> bool:
        """Hand a clean connection (not parked, not in service) to the sink; False when it is not clean."""
        assert self._hand_off is not None
        fd = conn.fileno()
        self._watch.forget(fd)  # before the fd leaves: our epoll must not report its events any more
        sock = conn.detach()
        if sock is None:
            return False
        self._admission.open -= 1
        try:
            self._hand_off(sock)
        except BaseException:
            log.exception("handing a kept-alive connection over failed; closing it")
            close_quietly(sock)
        return True

    def _next_timeout(self) -> float | None:
        now = time.monotonic()
        when = math.inf
        expiring = [limit for limit in (self._idle_timeout, self._fresh_timeout) if limit]
        if expiring:
            # Workers park connections without waking this thread, so it looks again on a tick.
            when = now + min(min(expiring) / 2, 1.0)
        when = min(when, self._next_deadline)
        if self._stopping:
            when = min(when, self._stop_deadline, self._drain_deadline)
        if self._admission.retry_at:
            when = min(when, self._admission.retry_at)
        if self._crew.ceiling_until:
            when = min(when, self._crew.ceiling_until)
        if not self._trimmed:  # while a job runs, look again a second later
            when = min(when, max(self._last_job_at, now if self._crew.busy else 0.0) + _QUIET_TRIM_SECONDS)
        with self._lock:
            crew = self._crew
            # One thread (a prefork child's default) has nobody to promote: no tick while jobs run, and a job
            # wakes this thread only when it sleeps past the heap trim (a prefork master watches for jobs
            # that run long, busywatch.py).
            horizon = self._promote_after if crew.max_threads > 1 else _QUIET_TRIM_SECONDS
            if not crew.leader and crew.busy and crew.can_promote():
                when = min(when, crew.leaderless_since + self._promote_after)
            elif crew.max_threads > 1 and now - self._last_job_at < _ACTIVE_WINDOW_SECONDS:
                # Jobs come and go: tick, so that a long one is noticed without a wake-up per job.
                when = min(when, now + self._promote_after)
            # A job that starts while this thread sleeps past the horizon must wake it (_work).
            self._control_asleep = when > now + horizon
        if when == math.inf:
            return None
        return max(0.0, when - now)

    def _expire_idle(self) -> None:
        now = time.monotonic()
        with self._lock:
            expired = self._watch.unpark_expired(now)
            self._next_deadline = min(
                (
                    expires_at
                    for conn, expires_at, new in self._watch.parked.values()
                    if conn.deadline is not None
                ),
                default=math.inf,
            )
        silent = sum(new for _conn, new in expired)
        if silent:
            log.warning(
                "closed %d new connection(s) that sent nothing within %gs",
                silent,
                self._fresh_timeout or self._idle_timeout,
            )
        for conn, new in expired:
            if not new and conn.deadline is not None:
                conn.expire()  # half a request past its deadline: the connection says so, and closes
        self._close_connections([conn for conn, _new in expired])

    def _close_connections(self, conns: Sequence[ServedConnection]) -> None:
        for conn in conns:
            close_quietly(conn)  # closing the fd also removes it from the epoll
        if conns:
            with self._lock:
                self._admission.open -= len(conns)
                self._admission.update()

    def _maintain_threads(self) -> None:
        """Keep min_spare threads waiting for work, within max_threads."""
        with self._lock:
            count = self._reserve_spares_locked()
            if not count:
                return
            # Nobody watches the epoll and nothing runs (start-up, or after spares exited): one leads.
            leader = self._crew.lead_if_unled()
        self._start_threads(count, leader)

    def _start_threads(self, count: int, leader: bool = False) -> None:
        """Start ``count`` threads (already counted idle); the first as the leader if ``leader``. Never
        raises: a thread the system refuses is logged, and the pool serves with the threads it has."""
        for index in range(count):
            thread = threading.Thread(
                target=self._work,
                args=(leader and index == 0,),
                name=f"{self._thread_name}-{next(self._thread_serial)}",
                daemon=True,
            )
            with self._lock:
                self._workers.add(thread)
            try:
                thread.start()
            except RuntimeError as exc:  # "can't start new thread": a process, memory or address-space limit
                self._threads_refused(thread, count - index, leader and index == 0, exc)
                return

    def _threads_refused(self, thread: threading.Thread, count: int, led: bool, exc: BaseException) -> None:
        now = time.monotonic()
        with self._lock:
            self._workers.discard(thread)
            self._crew.not_started(count, led, now + _REFUSED_RETRY_SECONDS)
            threads = self._crew.threads
            warn = now >= self._refusal_logged_at + _REFUSAL_LOG_SECONDS
            if warn:
                self._refusal_logged_at = now
        self._control.wake()  # it tries again once the ceiling lifts
        if warn:
            log.warning(
                "cannot start another worker thread (%s): serving with %d thread(s), more connections wait "
                "in the listen queue; the limit is the process count (ulimit -u, a cgroup's pids.max), the "
                "address space (ulimit -v; see --thread-stack-size) or memory",
                str(exc) or type(exc).__name__,
                threads,
            )

    def _begin_stop(self) -> None:
        """Stop accepting; parked connections drain: served once more and closed after that response.

        Closing an idle kept-alive connection races with a web server that picks it for its next request at
        that very moment (nginx then fails the request unless it may retry it: never a POST). Closing right
        after a response leaves no such window, so parked connections stay served for a short drain period,
        each closed after its next response, and only those still idle at its end are closed unannounced.
        A retiring stop (``stop(retire=True)`` with a sink) closes none: somebody serves on after us.
        """
        with self._lock:
            self._stopping = True
            self._admission.close()  # listeners stay open: new connections wait in the backlog
            if self._stop_retire and self._hand_off is not None:
                # Somebody serves on after us: clean connections go to them now, the others once clean.
                self._drain_deadline = self._stop_deadline
                running = {id(entry[0]): entry for entry in self._armed_by.values()}
                for conn in self._watch.unpark_all():
                    if id(conn) in running:
                        # Its request runs inline while we watch it: its worker hands it off afterwards.
                        self._watch.parked[conn.fileno()] = running[id(conn)]
                    elif not self._give_away_locked(conn):
                        self._park_locked(conn)
                self._admission.update()
                return
            self._drain_deadline = min(self._stop_deadline, time.monotonic() + _DRAIN_SECONDS)
        if self.max_requests_reached:
            self._close_parked()  # after max_requests not one request more: parked connections close now

    def _close_parked(self) -> None:
        with self._lock:
            parked = self._watch.unpark_all()
            # A connection whose request runs inline while we watch it is not idle: its worker decides.
            for entry in self._armed_by.values():
                if entry[0] in parked:
                    parked.remove(entry[0])
                    self._watch.parked[entry[0].fileno()] = entry  # still armed in the epoll
        self._close_connections(parked)

    def _force_close_all(self) -> None:
        """Close parked and in-service connections (an immediate stop, or a graceful one out of time)."""
        with self._lock:
            self._stopping = True
            self._admission.close()
            in_service = list(self._in_service.values())
            parked = self._watch.unpark_all()
        self._close_connections(parked)
        # A worker may still be inside serve(): close() should shut the socket down so its read returns.
        for served in in_service:
            close_quietly(served)

    def _finish(self) -> None:
        """Stop the workers, close what is left, release the epoll (the listeners stay open)."""
        with self._lock:
            self._stopping = self._workers_exit = True
            self._admission.close()
            workers = list(self._workers)
            clean = self._crew.busy == 0
            self._crew.release_followers()  # they wake and retire
        self._watch.wake_all()
        deadline = time.monotonic() + (self._graceful_timeout if clean else _FORCED_JOIN_TIMEOUT)
        for thread in workers:
            thread.join(max(0.0, deadline - time.monotonic()))
        self._close_parked()
        self._watch.forget_listeners()
        self._control.close()
        with self._lock:
            self._finished = True
            if self._crew.threads == 0:
                self._watch.close()
            # else: a worker stuck in application code still holds the epoll; the last one out releases it.

    # -- worker threads ---------------------------------------------------------------------------------

    def _work(self, leader: bool) -> None:
        """A worker thread's life; an error nothing else caught recycles the pool (``_worker_failed``)."""
        try:
            scratch_buffer()  # its read buffer, now: a thread that cannot have one must take no connection
        except (MemoryError, OSError) as exc:
            self._threads_refused(threading.current_thread(), 1, leader, exc)
            return
        try:
            self._serve_as_worker(leader)
        except Exception as exc:  # memory exhausted (MemoryError), or a bug
            self._worker_failed(exc)

    def _worker_failed(self, exc: Exception) -> None:
        """A worker thread met an error that nothing else caught. Its place in the crew cannot be mended
        from here (it may have been the thread that watches the epoll, and then nobody would), so the pool
        recycles as at max_requests: the threaded pool's process re-executes, a prefork child hands its
        connections on and exits. Kept connections survive; the one this thread served, if any, closes."""
        me, ident = threading.current_thread(), threading.get_ident()
        with self._lock:
            served = self._in_service.pop(ident, None)
            if served is not None:
                self._armed_by.pop(ident, None)
                self._crew.end_job()
                self._admission.open -= 1
            self._crew.retire()
            self._workers.discard(me)
            self.worker_failed = True
        if served is not None:
            close_quietly(served)
        try:
            log.error("worker thread %s failed; the pool recycles", me.name, exc_info=exc)
        except Exception:
            pass  # out of memory for the message too: the recycle still happens
        self._on_max_requests()

    def _serve_as_worker(self, leader: bool) -> None:
        """Lead (wait in the epoll), follow (wait on its gate until promoted), or serve a job."""
        me = threading.current_thread()
        ident = threading.get_ident()
        crew = self._crew
        poll = self._watch.poll
        spare_idle_time = crew.spare_idle_time
        gate = threading.Lock()  # held; the promoter releases it
        gate.acquire()
        if not leader:
            with self._lock:
                if self._workers_exit:
                    self._retire_locked(me)
                    return
                leader = crew.join(gate)
        job: _Job | None = None
        more = 0
        while True:  # this thread is counted idle here, unless it carries a job over (see the end)
            if job is None and not leader:
                promoted = gate.acquire(timeout=spare_idle_time)
                if not promoted:
                    release_scratch_buffer()  # idle a while: its read buffer's pages go back
                with self._lock:
                    if not promoted and gate not in crew.followers:
                        # Promoted (or released by _finish) between the timeout and this lock.
                        promoted = gate.acquire(blocking=False)
                    if self._workers_exit:
                        crew.unfollow(gate)
                        self._retire_locked(me)
                        return
                    if not promoted:
                        if crew.surplus_spare():
                            crew.unfollow(gate)
                            self._retire_locked(me)
                            return
                        continue
                leader = True  # the promoter made us the leader and took our gate off the list
                continue
            if job is None:
                job, more, leader = self._lead(me, ident, poll)
                if job is None:
                    if not leader:  # retired
                        return
                    continue
            if isinstance(job, list):
                self._open_new(job)  # still the leader: back to the epoll, where they wait their turn
                job = None
                continue
            if more:
                self._start_threads(more)
            keep = self._run_job(job, ident)
            job = None
            with self._lock:
                del self._in_service[ident]
                crew.end_job()
                watched = self._armed_by.pop(ident, None)
                if watched is not None:
                    self._release_watched_locked(watched, keep is not None)
                elif keep is None:
                    self._admission.open -= 1
                elif (handing_off := self._handing_off_locked()) and self._give_away_locked(keep):
                    pass  # handed over right after its response: its next request is served elsewhere
                elif (self._stopping or self.max_requests_reached) and not handing_off:
                    self._admission.open -= 1
                    close_quietly(keep)
                else:
                    self._park_locked(keep)
                self._admission.update()
                stopping = self._stopping
                role = ThreadRole.RETIRE if self._workers_exit else crew.rejoin(gate)
                retire, leader = role is ThreadRole.RETIRE, role is ThreadRole.LEAD
                if leader and not self._admission.accept_while_busy and not crew.busy:
                    job = self._admission.accept_as_idle()
                    if job is not None:
                        more = self._begin_job_locked(job, ident)
                        leader = False
                if retire:
                    self._retire_locked(me)
            if stopping:
                self._control.wake()  # the control thread ends the stop once nothing is busy
            if retire:
                return

    def _lead(
        self, me: threading.Thread, ident: int, poll: Callable[[float, int], list[tuple[int, int]]]
    ) -> tuple[_Job | None, int, bool]:
        """Wait in the epoll as the leader: (job or None, threads to start, still counted a worker)."""
        try:
            events = poll(self._crew.spare_idle_time, 1)
        except InterruptedError:
            return None, 0, True
        except (OSError, ValueError):  # the epoll was closed under us: the dispatcher is gone
            with self._lock:
                self._retire_locked(me)
            return None, 0, False
        if not events:
            release_scratch_buffer()  # idle a while: its read buffer's pages go back
        with self._lock:
            if self._workers_exit:
                self._retire_locked(me)
                return None, 0, False
            if not events:  # nothing for a while: exit if this thread is a spare nobody needed lately
                if self._crew.followers and self._crew.surplus_spare():
                    self._crew.promote()  # hand the epoll over before leaving
                    self._retire_locked(me)
                    return None, 0, False
                return None, 0, True
            job = self._take_locked(events[0][0])
            if job is None:
                # A sibling process took the connection (EAGAIN), or a stale event: re-arm and wait.
                self._admission.update()
                return None, 0, True
            if isinstance(job, list):
                return job, 0, True
            return job, self._begin_job_locked(job, ident), False

    def _begin_job_locked(self, job: ServedConnection | NewConnection, ident: int) -> int:
        """The leader turns to a job. Returns how many threads to start to keep min_spare idle."""
        # Lead no more, and wake nobody: most jobs end within promote_after, and this thread then comes
        # straight back to the epoll (the control thread promotes a follower otherwise).
        now = time.monotonic()
        self._crew.begin_job(now)
        self._last_job_at = now
        self._trimmed = False
        if self._control_asleep:
            self._control_asleep = False
            self._control.wake()
        if isinstance(job, tuple):
            self._in_service[ident] = job[0]
            # Accepted: at max_connections the listeners are disarmed now. A parked connection's job
            # changes nothing update() looks at (being busy disarms lazily, Admission.update).
            self._admission.update()
        else:
            self._in_service[ident] = job
        return self._reserve_spares_locked()

    def _reserve_spares_locked(self) -> int:
        """How many threads to start so that min_spare wait (within max_threads); none while stopping."""
        return 0 if self._stopping else self._crew.reserve_spares()

    def _take_locked(self, fd: int) -> _Job | None:
        """What the event on ``fd`` means for this thread: a parked connection to serve, a new connection to
        open and serve (a prefork child), new connections to open and park (a list), or nothing."""
        listener = self._watch.fired_listener(fd)
        if listener is None:
            parked = self._watch.unpark(fd)
            if parked is None:
                self._watch.stray(fd)
                return None
            if self.max_requests_reached:
                if self._handing_off_locked():
                    # The stop is on its way; this one goes to whoever serves on (or is served until clean).
                    return None if self._give_away_locked(parked) else parked
                self._admission.open -= 1  # not one request more: the control thread is on its way to stop
                close_quietly(parked)
                return None
            return parked
        if self._watch.exclusive and not self._admission.allowed():
            # The kernel woke us, not a sibling that waits too, for a connection we may not take now.
            self._watch.declined(fd)
            self._pass_on_locked(listener)
            return None
        if self._admission.open == 0 and self._defer_locked(fd, listener):
            return None
        return self._admission.take(listener)

    def _defer_locked(self, fd: int, listener: socket.socket) -> bool:
        """Leave a new connection to the siblings for a moment, when ``defer_new`` says so (a prefork child
        that holds no connection: child.py). The kernel woke this child because the siblings registered
        before it were not waiting; it queued the event for them, and the first back in its epoll takes
        it, within a request. Still waiting after the pause, the connection is ours: the pause is not
        repeated for it, and the listeners are registered again behind the siblings'."""
        defer = self._defer_new
        if defer is None:
            return False
        now = time.monotonic()
        if now < self._defer_again_at or not defer(listener):
            return False
        self._watch.declined(fd)
        log.debug("a new connection is left to the siblings for %g ms", _DEFER_SECONDS * 1000)
        self._defer_again_at = math.inf  # until the control thread arms the listeners again (above)
        self._admission.hold_until(now + _DEFER_SECONDS)
        return True

    def _pass_on_locked(self, listener: socket.socket) -> None:
        """Hand what waits on ``listener`` to the hand-off channel, where a sibling that may take it does.
        Not on a real stop: connections then wait in the backlog for whoever listens next (socket
        activation, a supervisor's restart)."""
        if self._hand_off is None or (self._stop_requested and not self._stop_retire):
            return
        waiting: list[socket.socket] = []
        try:
            # All first, then give: the hand-off channel is one of the listeners, and what we give to it
            # must not come back to this loop.
            while len(waiting) < _HAND_OFF_BATCH and (new := accept(listener)) is not None:
                waiting.append(new[0])
        except AcceptFailed:
            pass
        for sock in waiting:
            try:
                self._hand_off(sock)
            except BaseException:
                log.exception("passing a new connection on failed; closing it")
                close_quietly(sock)

    def _open_new(self, accepted: list[NewConnection]) -> None:
        """Open new connections (outside the lock) and park them until their first byte.

        A new connection costs no thread until it speaks (a silent one is closed after fresh_timeout), and
        the connections of a burst are served in arrival order once readable. A kept-alive connection taken
        over (``Admission.handed``) is parked as an idle one instead.
        """
        kept = [self._taken_over(sock) for sock, _peer in accepted]
        pairs = zip(accepted, kept, strict=True)
        opened = [self._open_one(sock, peer, taken) for (sock, peer), taken in pairs]
        limit = self._fresh_timeout or self._idle_timeout
        expires_at = time.monotonic() + limit if limit else math.inf
        with self._lock:
            for conn, taken_over in zip(opened, kept, strict=True):
                if conn is None:
                    self._admission.open -= 1  # refused (allow-list) or failed: already closed
                elif self._stopping and self._handing_off_locked() and self._give_away_locked(conn):
                    pass  # taken (from a listener or a sibling) as we retire: whoever serves on gets it
                elif self._stopping:
                    self._admission.open -= 1
                    close_quietly(conn)
                elif taken_over:
                    self._park_locked(conn)  # an idle kept-alive connection: --idle-timeout, as any other
                else:
                    self._park_locked(conn, expires_at, new=True)
            self._admission.update()

    def _taken_over(self, sock: socket.socket) -> bool:
        """Whether ``sock`` is a kept-alive connection taken over (``Admission.handed``), not a new one."""
        handed = self._admission.handed
        if handed and sock.fileno() in handed:
            handed.discard(sock.fileno())
            return True
        return False

    def _open_one(self, sock: socket.socket, peer: Any, taken_over: bool) -> ServedConnection | None:
        """The factory's connection for a new socket; None when refused or failed (the socket is closed)."""
        try:
            if self._watch.exclusive:
                sock = self._watch.watched(sock)  # leaves the epoll before it closes (watchlist.py)
            conn = self._factory.open(sock, peer)
            if conn is not None and taken_over:
                # Kept alive, taken over idle: it owes no first request by --params-timeout, the clock a
                # new connection starts with; its next request's PARAMS get that clock from their first byte.
                conn.deadline = None
            return conn
        except BaseException:  # even SystemExit from application code must not cost us a worker
            log.exception("opening a connection from %r failed; closing it", peer)
            close_quietly(sock)
            return None

    def _park_locked(
        self, conn: ServedConnection, expires_at: float | None = None, new: bool = False
    ) -> None:
        """Watch ``conn`` until it is readable, or until ``expires_at`` (default: after idle_timeout)."""
        if expires_at is None:
            deadline = conn.deadline
            if deadline is not None:
                # Half a request: it waits here, costing no worker, until the rest arrives or the deadline.
                expires_at = deadline
                if deadline < self._next_deadline:
                    self._next_deadline = deadline
                    self._control.wake()
            else:
                expires_at = time.monotonic() + self._idle_timeout if self._idle_timeout else math.inf
        if not self._watch.park(conn, expires_at, new):
            self._admission.open -= 1
            close_quietly(conn)

    def _watch_running(self, conn: ServedConnection) -> bool:
        """``ConnectionFactory.watch``: park ``conn`` while its worker runs one of its requests inline.

        Called from inside ``serve()``. The one ``epoll_ctl`` of a kept-alive request happens here, before
        the application runs, instead of after; if the peer sends more meanwhile (a multiplexing client), an
        idle worker takes the connection and becomes its reader. No expiry while the request runs.
        """
        ident = threading.get_ident()
        with self._lock:
            served = self._in_service.get(ident)
            if self._stopping or isinstance(served, socket.socket) or served is None:
                return False  # stopping: the connection is closed or handed off after its response
            if served.fileno() != conn.fileno():
                return False
            # What the pool holds may wrap ``conn`` (a prefork child's slot tracking): park that.
            if not self._watch.park(served, math.inf):
                return False
            self._armed_by[ident] = self._watch.parked[served.fileno()]
        return True

    def _release_watched_locked(self, entry: tuple[ServedConnection, float, bool], open_: bool) -> None:
        """A job whose connection was parked while its request ran (``_watch_running``) has ended.

        The pool has held the connection since: if a worker took it meanwhile, that job decides its fate.
        If it is still parked, it now idles (idle expiry), or is closed or handed off when the pool stops.
        """
        conn = entry[0]
        fd = conn.fileno()
        current = self._watch.parked.get(fd)
        if current is None or current[0] is not conn:
            return  # taken by a worker as its reader (or by the busy watcher): no longer ours to settle
        if not open_ or self._stopping or self.max_requests_reached:
            self._watch.unpark(fd)
            if open_ and self._handing_off_locked() and self._give_away_locked(conn):
                return
            if open_ and self._handing_off_locked():
                self._park_locked(conn)  # not clean: served on until it is (the retire path)
                return
            self._admission.open -= 1
            close_quietly(conn)
        elif current is entry:
            expires_at = time.monotonic() + self._idle_timeout if self._idle_timeout else math.inf
            self._watch.parked[fd] = (conn, expires_at, False)  # still armed: no system call

    def _retire_locked(self, me: threading.Thread) -> None:
        self._crew.retire()
        self._workers.discard(me)
        if self._finished and self._crew.threads == 0:
            self._watch.close()

    def _run_job(self, job: ServedConnection | NewConnection, ident: int) -> ServedConnection | None:
        """Serve one connection (opening it first if new); return it if it should be parked. Never raises."""
        if isinstance(job, tuple):
            conn = self._open_one(job[0], job[1], self._taken_over(job[0]))
            if conn is None:
                return None
            with self._lock:
                self._in_service[ident] = conn
        else:
            conn = job
        try:
            keep = conn.serve()
        except BaseException:  # even SystemExit from application code must not cost us a worker
            log.exception("serving a connection failed; closing it")
            close_quietly(conn)
            return None
        return conn if keep else None
