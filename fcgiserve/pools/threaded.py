"""The threaded pool: one process, one Dispatcher, signals turned into a StopReason.

``run()`` blocks in the calling thread (the main thread when signals are installed) and returns why
it stopped; the caller acts on it. RELOAD means "re-execute this process in place": run() returns
with the listening sockets open and connections not yet accepted still in their backlog, so the
new process image inherits the sockets and serves those connections. ``max_requests`` recycles the
process the same way: after that many requests (plus a random jitter) the pool drains and returns
RELOAD.

Kept-alive connections outlive a reload when the caller will serve on (``keep_on_reload``: the CLI
re-executes, a library server restarts its pool): instead of closing them, the dispatcher hands each
clean one to ``kept`` (in-flight requests finish first, their connections follow right after their
response), and the next pool, in this image or the re-executed one, ``adopted`` them as parked
connections (pools/handoff.py). A stop keeps today's drain-and-close; a TERM during a reload's drain
makes it a stop (the caller closes what was kept by then).

Signals (with ``install_signals``): TERM / INT stop gracefully within ``graceful_timeout`` (a
second one stops at once), HUP drains and returns RELOAD, QUIT stops at once, USR1 calls
``on_reopen_logs``.
"""

from __future__ import annotations

import logging
import random
import signal
import socket
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from fcgiserve.memory import release_free_memory
from fcgiserve.pools.base import ConnectionFactory, PoolEvent, PoolSettings, StopReason
from fcgiserve.pools.dispatch import Dispatcher
from fcgiserve.signals import SignalQueue

__all__ = ["PoolStats", "ThreadedPool"]

log = logging.getLogger("fcgiserve.pools")

_HANDLED_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1)
# When two reasons compete, the more urgent one wins.
_URGENCY = {StopReason.RELOAD: 0, StopReason.STOP: 1, StopReason.QUIT: 2}


@dataclass(frozen=True, slots=True)
class PoolStats:
    busy: int  # requests in progress
    idle: int  # idle worker threads
    threads: int  # worker threads alive
    parked: int  # idle kept-alive connections, costing no thread
    open_connections: int
    served: int  # requests finished since run() started


class ThreadedPool:
    """Serve ``listeners`` with between min_spare and max_spare idle threads, max_children at most.

    Single use: build a new pool for each run (after a RELOAD in-process, for instance).
    ``request_stop`` and ``request_reload`` are thread-safe and work whether or not signals are
    installed; ``ready`` is set while the pool is serving.
    """

    def __init__(
        self,
        listeners: Sequence[socket.socket],
        factory: ConnectionFactory,
        settings: PoolSettings,
        on_reopen_logs: Callable[[], None] | None = None,
        on_event: Callable[[PoolEvent], None] | None = None,
        *,
        keep_on_reload: bool = False,
        adopted: Sequence[tuple[socket.socket, Any]] = (),
    ) -> None:
        self._settings = settings
        self.kept: list[socket.socket] = []  # connections handed over by a reload, for the next pool
        self._on_reopen_logs = on_reopen_logs
        self._on_event = on_event  # RELOADING / STOPPING when requested (see PoolEvent)
        self._listener_count = len(listeners)
        self._max_requests = 0
        if settings.max_requests:
            self._max_requests = settings.max_requests + random.randint(
                0, max(0, settings.max_requests_jitter)
            )
        self._dispatcher = Dispatcher(
            listeners,
            factory,
            min_spare=settings.min_spare,
            max_spare=settings.max_spare,
            max_threads=settings.max_children,
            idle_timeout=settings.idle_timeout,
            fresh_timeout=settings.params_timeout,
            max_connections=settings.max_connections,
            max_requests=self._max_requests,
            graceful_timeout=settings.graceful_timeout,
            hand_off=self.kept.append if keep_on_reload else None,
        )
        for sock, peer in adopted:
            self._dispatcher.adopt(sock, peer)
        self.ready = self._dispatcher.ready
        self._lock = threading.Lock()
        self._reason: StopReason | None = None
        self._signals: SignalQueue | None = None

    @property
    def stats(self) -> PoolStats:
        d = self._dispatcher
        return PoolStats(
            busy=d.busy_requests,
            idle=d.idle_threads,
            threads=d.thread_count,
            parked=d.parked_connections,
            open_connections=d.open_connections,
            served=d.requests_served,
        )

    def request_stop(self, graceful: bool = True) -> None:
        self._request(StopReason.STOP if graceful else StopReason.QUIT, graceful)

    def request_reload(self) -> None:
        self._request(StopReason.RELOAD, True)

    def _request(self, reason: StopReason, graceful: bool) -> None:
        with self._lock:
            if self._reason is not None and _URGENCY[self._reason] > _URGENCY[reason]:
                reason = self._reason
            self._reason = reason
        if self._on_event is not None:
            try:
                self._on_event(PoolEvent.RELOADING if reason is StopReason.RELOAD else PoolEvent.STOPPING)
            except Exception:
                log.exception("the pool's on_event hook failed")
        self._dispatcher.stop(
            graceful=graceful, timeout=self._settings.graceful_timeout, retire=reason is StopReason.RELOAD
        )

    def run(self, install_signals: bool = True) -> StopReason:
        s = self._settings
        if install_signals:
            self._signals = SignalQueue()
            self._signals.install(_HANDLED_SIGNALS)
            self._dispatcher.add_wakeup(self._signals.fileno(), self._handle_signals)
        log.info(
            "threaded pool started on %d listener(s): min_spare=%d max_spare=%d max_threads=%d "
            "max_requests=%s",
            self._listener_count,
            s.min_spare,
            s.max_spare,
            s.max_children,
            self._max_requests or "unlimited",
        )
        release_free_memory()  # start-up is over: what it freed need not stay resident
        try:
            self._dispatcher.serve_forever()
        finally:
            if self._signals is not None:
                # Signals that came while the dispatcher finished (a TERM during a HUP's drain) still
                # count: TERM then wins over the reload instead of being lost with the queue.
                self._handle_signals()
                self._signals.close()
                self._signals = None
        with self._lock:
            reason = self._reason
        if reason is None:
            # Nobody asked: the dispatcher stopped itself after max_requests.
            reason = StopReason.RELOAD if self._dispatcher.max_requests_reached else StopReason.STOP
        self._log_stop(reason)
        return reason

    def _handle_signals(self) -> None:
        assert self._signals is not None
        for signum in self._signals.drain():
            if signum == signal.SIGUSR1:
                self._reopen_logs()
            elif signum == signal.SIGHUP:
                self.request_reload()
            elif signum == signal.SIGQUIT:
                self.request_stop(graceful=False)
            else:  # TERM, INT: a second one while draining stops at once
                with self._lock:
                    again = self._reason is StopReason.STOP
                self._request(StopReason.STOP, graceful=not again)

    def _reopen_logs(self) -> None:
        if self._on_reopen_logs is None:
            return
        try:
            self._on_reopen_logs()
        except Exception:
            log.exception("reopening the logs failed")

    def _log_stop(self, reason: StopReason) -> None:
        d = self._dispatcher
        if reason is StopReason.RELOAD:
            why = "reload"
            if self._reason is None:
                why = "a failed worker thread" if d.worker_failed else "max_requests reached"
            log.info(
                "threaded pool drained for %s after %d request(s); listeners kept open for the new process",
                why,
                d.requests_served,
            )
        else:
            log.info(
                "threaded pool stopped (%s) after %d request(s); %d connection(s) left open at exit",
                reason.value,
                d.requests_served,
                d.open_connections,
            )
