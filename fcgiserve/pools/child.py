"""A prefork child: from the fork to ``os._exit``, never back into the caller's stack.

The master forks with its handled signals blocked, so none of its handlers (or its wakeup fd) can
run in the child before ``_detach_from_master`` has reset them. Until the factory is built the
child has nothing in flight, so TERM keeps its default action and QUIT exits at once, while the
other signals are ignored; afterwards a SignalQueue feeds them to the dispatcher's selector thread:

  TERM  graceful stop (the pool stops for real): stop accepting, finish in-flight requests within
        graceful_timeout, drain and close the kept-alive connections, exit 0
  HUP   retire (a sibling serves on: recycling, spare retirement, an old generation after a reload):
        stop accepting, hand every clean kept-alive connection to the master's hand-off channel
        (handoff.py), each in-flight one right after its response, exit 0. --maxrequests does the same.
  QUIT  exit now                        USR1  reopen logs (on_reopen_logs)
  USR2  log the stacks of the threads busy on a request (the master's timeout; SIGKILL follows)
  URG   hand the parked connections readable now to the channel (the master's busy watch: every thread
        here has been busy a while and a sibling is idle)
  INT, TTIN, TTOU  ignored: the terminal's Ctrl-C is the master's business

A child is a Dispatcher with ``threads_per_child`` threads (1 by default: one request at a time) and
``accept_while_busy=False``: it accepts (from the listeners and from the hand-off channel) only while
none of its threads is serving, so a new connection goes to an idle sibling. A request arriving on one
of its parked kept-alive connections while all its threads are busy is handed to an idle sibling when the
master nudges (busywatch.py): the control thread, which never runs application code, gives what is
readable to the hand-off channel. Nothing in the child ticks for this. Idle kept-alive
connections therefore never pin a whole process. The slot shows the child busy from the moment a
thread enters ``serve()`` (see ``_TrackedFactory``), which is when it stops accepting; with a factory whose
``serve()`` never waits for a request (FastCGI's), from the moment a request starts.

Children never outlive the master: PR_SET_PDEATHSIG (Linux) kills a child when the master dies,
and everywhere a lifeline pipe, whose write end only the master holds, becomes readable (EOF) in
every child the moment the master is gone.
"""

from __future__ import annotations

import ctypes
import logging
import os
import random
import signal
import socket
import sys
import threading
import traceback
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn

from fcgiserve.pools.base import ConnectionFactory, PoolSettings, RequestObserver, ServedConnection
from fcgiserve.pools.busywatch import NUDGE_SIGNAL
from fcgiserve.pools.cpudemand import usable_cpus
from fcgiserve.pools.dispatch import Dispatcher
from fcgiserve.pools.handoff import HandoffChannel
from fcgiserve.pools.scoreboard import Scoreboard, SlotWriter
from fcgiserve.signals import SignalQueue

__all__ = ["EXIT_BOOT_FAILURE", "EXIT_CRASH", "ChildSpec", "run_child"]

log = logging.getLogger("fcgiserve.pools")

EXIT_BOOT_FAILURE = 3  # make_factory() raised: the master stops instead of forking again and again
EXIT_CRASH = 1  # anything else escaped

_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
_CHILD_SIGNALS = (signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2, NUDGE_SIGNAL)
_IGNORED_SIGNALS = (signal.SIGINT, signal.SIGTTIN, signal.SIGTTOU)
# Blocked while the child boots (imports the application), delivered once their handlers exist: a log
# reopen the master forwards in that window must not be lost (the child would write to the rotated file).
# A retirement (HUP) that comes while booting is deferred the same way.
_DEFERRED_SIGNALS = frozenset({signal.SIGUSR1, signal.SIGUSR2, signal.SIGHUP})


@dataclass(frozen=True, slots=True)
class ChildSpec:
    """Everything a child needs, built by the master before the fork."""

    listeners: Sequence[socket.socket]
    channel: HandoffChannel  # the master's hand-off channel (both ends, inherited)
    make_factory: Callable[[], ConnectionFactory]
    settings: PoolSettings
    board: Scoreboard
    slot: int
    master_pid: int
    lifeline: int  # read end of the master's lifeline pipe
    lifeline_master_end: int  # the write end, which only the master may keep open
    close_master_fds: Callable[[], None]  # the master's selector, signal queue and wakeup socket
    blocked_signals: Iterable[int]  # blocked by the master around fork(); unblocked here
    on_reopen_logs: Callable[[], None] | None


def run_child(spec: ChildSpec) -> NoReturn:
    """Serve until told to stop, then ``os._exit``; catches everything, returns never."""
    status = EXIT_CRASH
    try:
        status = _Child(spec).run()
    except BaseException:
        log.exception("worker %d crashed", os.getpid())
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:
                pass
        os._exit(status)


class _Child:
    def __init__(self, spec: ChildSpec) -> None:
        self._spec = spec
        self._pid = os.getpid()
        self._writer: SlotWriter = spec.board.writer(spec.slot)
        self._signals: SignalQueue | None = None
        self._dispatcher: Dispatcher | None = None

    def run(self) -> int:
        self._detach_from_master()
        self._writer.mark_starting(self._pid)
        try:
            factory = self._spec.make_factory()
        except BaseException:
            log.exception("worker %d failed to boot: make_factory() raised", self._pid)
            return EXIT_BOOT_FAILURE
        dispatcher = self._dispatcher = self._build_dispatcher(factory)
        self._install_signals()
        dispatcher.add_wakeup(self._spec.lifeline, self._on_lifeline)
        self._writer.mark_ready()
        log.debug("worker %d ready", self._pid)
        try:
            dispatcher.serve_forever()
        finally:
            # Signals still come on the way out (the master's TERM to a child that is retiring already),
            # and its socketpair may close before os._exit: the C-level handler must not write to it then.
            # The Python handlers stay; what they record is never read.
            signal.set_wakeup_fd(-1)
        if dispatcher.max_requests_reached:
            log.info("worker %d recycled after %d request(s)", self._pid, self._writer.served)
        return 0

    def _build_dispatcher(self, factory: ConnectionFactory) -> Dispatcher:
        settings = self._spec.settings
        factory.observer = self._writer  # the dispatcher chains its request counter in front of it
        threads = max(1, settings.threads_per_child)
        max_requests = 0
        if settings.max_requests:
            max_requests = settings.max_requests + random.randint(0, max(0, settings.max_requests_jitter))
            self._writer.retire_after = max_requests
        channel = self._spec.channel
        return Dispatcher(
            [*self._spec.listeners, channel.take_end],  # connections handed over by siblings are accepted too
            tracked(factory, self._writer),
            min_spare=1,
            max_spare=threads,
            max_threads=threads,
            idle_timeout=settings.idle_timeout,
            fresh_timeout=settings.params_timeout,
            max_connections=settings.max_connections,
            accept_while_busy=False,
            max_requests=max_requests,
            graceful_timeout=settings.graceful_timeout,
            hand_off=channel.give,
            defer_new=self._defer_new(threads, channel.take_end),
            on_held=self._writer.connections,
        )

    def _defer_new(self, threads: int, channel: socket.socket) -> Callable[[socket.socket], bool] | None:
        """When this child, holding no connection, leaves a new one to its siblings for a moment
        (dispatch.py): while the web server keeps connections alive and as many siblings hold connections
        as there are CPUs. The load is then spread over enough processes already: this one would only
        take turns on the same CPUs, and be woken for every request the connection brings. Never for a
        connection a sibling handed over, and only in one-thread children (the ones that publish what
        they hold)."""
        if threads != 1:
            return None
        board, slot, cpus = self._spec.board, self._spec.slot, usable_cpus()
        return lambda listener: listener is not channel and board.keepers(slot, cpus)

    def _detach_from_master(self) -> None:
        """Drop the master's fds and signal handling; die with the master."""
        spec = self._spec
        os.close(spec.lifeline_master_end)
        spec.close_master_fds()  # also restores the handlers the master replaced
        signal.set_wakeup_fd(-1)
        for signum in (*spec.blocked_signals, signal.SIGCHLD):
            signal.signal(signum, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_BLOCK, _DEFERRED_SIGNALS)  # handled from _install_signals on
        for signum in _IGNORED_SIGNALS:
            signal.signal(signum, signal.SIG_IGN)
        signal.signal(signal.SIGQUIT, _exit_now)  # its default action would dump core
        _die_with_parent()
        if os.getppid() != spec.master_pid:  # the master died before prctl took effect
            os._exit(0)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, set(spec.blocked_signals) - _DEFERRED_SIGNALS)
        random.seed()  # children must not share the master's random sequence

    def _install_signals(self) -> None:
        assert self._dispatcher is not None
        self._signals = SignalQueue()
        self._signals.install(_CHILD_SIGNALS)
        self._dispatcher.add_wakeup(self._signals.fileno(), self._on_signals)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _DEFERRED_SIGNALS)  # what came while booting, now

    def _on_signals(self) -> None:
        assert self._signals is not None and self._dispatcher is not None
        for signum in self._signals.drain():
            if signum == signal.SIGTERM:
                self._writer.mark_stopping()
                self._dispatcher.stop(graceful=True, timeout=self._spec.settings.graceful_timeout)
            elif signum == signal.SIGHUP:
                self._writer.mark_stopping()
                self._dispatcher.stop(
                    graceful=True, timeout=self._spec.settings.graceful_timeout, retire=True
                )
            elif signum == signal.SIGQUIT:
                _exit_now(signum, None)
            elif signum == signal.SIGUSR1:
                self._reopen_logs()
            elif signum == signal.SIGUSR2:
                self._dump_busy_stacks()
            elif signum == NUDGE_SIGNAL:
                self._dispatcher.hand_off_readable()

    def _on_lifeline(self) -> None:
        """Readable only at EOF: the master is gone (the PDEATHSIG fallback for other systems)."""
        log.warning("worker %d: the master process is gone; exiting", self._pid)
        _exit_now(0, None)

    def _reopen_logs(self) -> None:
        if self._spec.on_reopen_logs is None:
            return
        try:
            self._spec.on_reopen_logs()
        except Exception:
            log.exception("worker %d: reopening the logs failed", self._pid)

    def _dump_busy_stacks(self) -> None:
        """The master's timeout fired: log where each busy thread is, with its request line."""
        frames = sys._current_frames()
        names = {thread.ident: thread.name for thread in threading.enumerate()}
        dumps = []
        for ident, line in self._writer.busy_threads().items():
            frame = frames.get(ident)
            if frame is not None:
                stack = "".join(traceback.format_stack(frame))
                dumps.append(f"thread {names.get(ident, ident)} serving {line!r}:\n{stack}")
        log.error(
            "worker %d exceeded the request timeout (%gs); it will be killed. Busy threads:\n%s",
            self._pid,
            self._spec.settings.timeout,
            "\n".join(dumps) or "(no thread holds a request any more)",
        )


def tracked(factory: ConnectionFactory, writer: SlotWriter) -> ConnectionFactory:
    """``factory`` with its threads in ``serve()`` shown in the slot, unless its ``serve()`` never waits for a
    request to arrive (``serve_never_waits``, the FastCGI handler's: it parks what is incomplete): a request
    in progress then says all, and two of the four slot writes per request are saved."""
    if getattr(factory, "serve_never_waits", False):
        return factory
    return _TrackedFactory(factory, writer)


class _TrackedFactory:
    """The application's factory, with every ``serve()`` call shown in the slot.

    A child that accepts only while idle (``accept_while_busy=False``) stops accepting as soon as a
    thread enters ``serve()``, before any request has arrived on the connection. Without this the
    master would count such a child as an idle spare and fork nothing while a silent connection
    (a port probe, a slow client) holds the child's accept.
    """

    def __init__(self, inner: ConnectionFactory, writer: SlotWriter) -> None:
        self._inner = inner
        self._writer = writer

    @property
    def observer(self) -> RequestObserver | None:
        return self._inner.observer

    @observer.setter
    def observer(self, observer: RequestObserver | None) -> None:
        self._inner.observer = observer  # the connections report through the inner factory

    @property
    def watch(self) -> Callable[[ServedConnection], bool] | None:
        return self._inner.watch

    @watch.setter
    def watch(self, watch: Callable[[ServedConnection], bool] | None) -> None:
        self._inner.watch = watch

    def open(self, sock: socket.socket, peer: Any) -> ServedConnection | None:
        self._writer.serving_started()  # open() runs in the worker thread that goes on to serve()
        try:
            conn = self._inner.open(sock, peer)
        finally:
            self._writer.serving_finished()
        return None if conn is None else _TrackedConnection(conn, self._writer)


class _TrackedConnection:
    def __init__(self, inner: ServedConnection, writer: SlotWriter) -> None:
        self._inner = inner
        self._writer = writer
        self.fileno = inner.fileno
        self.close = inner.close
        self.expire = inner.expire
        self.detach = inner.detach

    @property
    def deadline(self) -> float | None:
        return self._inner.deadline

    @deadline.setter
    def deadline(self, deadline: float | None) -> None:
        self._inner.deadline = deadline

    def serve(self) -> bool:
        self._writer.serving_started()
        try:
            return self._inner.serve()
        finally:
            self._writer.serving_finished()


def _exit_now(signum: int, frame: object) -> None:
    """QUIT: leave at once; the kernel closes every socket."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:
            pass
    os._exit(0)


def _die_with_parent() -> None:
    """Linux: have the kernel SIGKILL this child when the master dies (a master killed with SIGKILL
    has no chance to stop its children; a bounded exit of orphans matters more than their requests)."""
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        pass  # the lifeline pipe still works
