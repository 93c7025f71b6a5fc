"""The prefork pool: a master that never serves, and children that accept on the shared listeners.

The master loop is short: wait for a signal or a tick, dispatch each signal to ``_handle_<name>``,
reap children, kill stuck ones, keep the pool at size. Children report through the shared-memory
scoreboard (no syscall per request); the master reads it on every tick and on SIGCHLD. Leaving the
loop is an exception, ``PoolExit``, carrying the reason and the exit status.

Sizing follows php-fpm's ``pm = dynamic``: idle children are kept between min_spare and max_spare,
max_children at most. When fewer than min_spare are idle (children still booting count as idle),
the master forks the deficit at once, then twice as many on each following tick while the pool
stays short (32 per tick at most): a burst of slow requests finds capacity within a few ticks. One
idle child above max_spare retires per tick (SIGHUP, the idle one that started first).

Connections outlive children: a child that retires (a spare above max_spare, the old generation after a
reload, a child at max_requests) gets SIGHUP, not SIGTERM, and hands its kept-alive connections to the
hand-off channel (handoff.py), whose both ends the master holds for its whole life; an idle child takes
them. Only a real stop (TERM to the master) has children drain and close them.

Generations: SIGHUP starts a new generation (make_factory() runs fresh in each new child); only when
one of its children is READY does the old generation retire (SIGHUP), so no request fails. If the new
generation fails to boot, the old one keeps serving. A child that dies before it is READY at the
very start stops the master (``PoolExit`` with status 3) instead of forking forever; later crashes
are replaced, with an exponential pause when they come too fast.

Master signals: TERM / INT graceful stop (a second one, or QUIT, stops at once), HUP new generation,
QUIT stop now, USR1 reopen logs (and forwarded to children), TTIN / TTOU raise / lower the spare
bounds by one, CHLD wakes the loop to reap.
"""

from __future__ import annotations

import collections
import logging
import math
import os
import selectors
import signal
import socket
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from fcgiserve.memory import release_free_memory
from fcgiserve.pools.base import ConnectionFactory, PoolEvent, PoolExit, PoolSettings, StopReason
from fcgiserve.pools.busywatch import NUDGE_SIGNAL, WATCH_INTERVAL, BusyWatch
from fcgiserve.pools.child import EXIT_BOOT_FAILURE, ChildSpec, run_child
from fcgiserve.pools.children import ChildRecord, CrashBackoff, SpawnPlan, describe_exit
from fcgiserve.pools.cpudemand import SaturationSpell, Step
from fcgiserve.pools.handoff import HandoffChannel
from fcgiserve.pools.scoreboard import Scoreboard, SlotSnapshot, SlotState
from fcgiserve.signals import SignalQueue

__all__ = ["PoolExit", "PreforkPool", "prefork_capacity"]

log = logging.getLogger("fcgiserve.pools")

TICK = 0.2  # scoreboard reading interval
GROWING_TICK = 0.05  # while the pool grows or a generation boots
KILL_DELAY = 1.0  # SIGUSR2 (stack dump) -> SIGKILL, graceful deadline -> SIGKILL, QUIT -> SIGKILL
SPARE_IDLE_BEFORE_RETIRE = 2.0  # seconds a child above --maxspare stays idle before it retires

_MASTER_SIGNALS = (
    signal.SIGTERM,
    signal.SIGINT,
    signal.SIGHUP,
    signal.SIGQUIT,
    signal.SIGUSR1,
    signal.SIGTTIN,
    signal.SIGTTOU,
    signal.SIGCHLD,
)
# Blocked around fork() so that no master handler runs in a child before it resets them.
_FORK_BLOCKED = (*_MASTER_SIGNALS, signal.SIGUSR2)


def prefork_capacity(settings: PoolSettings) -> tuple[int, int]:
    """(FCGI_MAX_CONNS, FCGI_MAX_REQS) that a prefork pool with these settings really supports.

    Requests in progress are bounded by the threads: ``threads_per_child`` per child. Connections
    by ``max_connections`` per child when set; otherwise the honest promise is one thread's worth
    per connection (parked idle connections cost no thread, but a web server that opens more than
    this and uses them all at once would queue inside a child).
    """
    children = max(1, settings.max_children)
    threads = max(1, settings.threads_per_child)
    per_child = settings.max_connections or threads
    return children * per_child, children * threads


class PreforkPool:
    """Serve ``listeners`` from child processes, each built with ``make_factory()`` after the fork.

    Single use. ``run()`` blocks in the calling thread (the main thread when it installs signal
    handlers); ``request_stop``, ``request_reload`` and ``stats`` are thread-safe; ``ready`` is set
    once the first generation of children is serving.
    """

    def __init__(
        self,
        listeners: Sequence[socket.socket],
        make_factory: Callable[[], ConnectionFactory],
        settings: PoolSettings,
        on_reopen_logs: Callable[[], None] | None = None,
        on_event: Callable[[PoolEvent], None] | None = None,
    ) -> None:
        if settings.max_children < 1:
            raise ValueError(f"max_children must be at least 1, not {settings.max_children}")
        self._listeners = list(listeners)
        self._make_factory = make_factory
        self._settings = settings
        self._on_reopen_logs = on_reopen_logs
        self._on_event = on_event  # READY after a reload, RELOADING on HUP, STOPPING (see PoolEvent)
        # A prefork pool with no idle child would accept nothing: min_spare is at least 1.
        self._min_spare = min(max(1, settings.min_spare), settings.max_children)
        self._max_spare = min(max(self._min_spare, settings.max_spare), settings.max_children)
        self.ready = threading.Event()
        self._commands: collections.deque[int] = collections.deque()  # signal numbers from request_*
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._children: dict[int, ChildRecord] = {}
        self._board: Scoreboard | None = None
        self._selector: selectors.BaseSelector | None = None
        self._signals: SignalQueue | None = None
        self._lifeline: tuple[int, int] | None = None
        self._channel: HandoffChannel | None = None
        self._serving_generation = 0  # 0 until the first generation is READY
        self._booting_generation: int | None = None
        self._last_generation = 0
        self._spawn_plan = SpawnPlan()
        self._growing = False
        self._maintain_at = 0.0  # the scoreboard is read in full, and the pool kept in shape, from then on
        self._busy_watch: BusyWatch | None = None
        self._watch_at = math.inf  # the busy watch looks again then (while a child serves)
        self._last_retire_at = 0.0
        self._crash_backoff = CrashBackoff()
        self._spell = SaturationSpell()  # no growth while busy children saturate the CPUs (cpudemand.py)
        self._max_active = 0
        self._served_by_reaped = 0
        self._start_time = 0.0
        self._master_pid = os.getpid()

    # -- control from other threads --------------------------------------------------------------------

    def request_stop(self, graceful: bool = True) -> None:
        self._command(signal.SIGTERM if graceful else signal.SIGQUIT)

    def request_reload(self) -> None:
        self._command(signal.SIGHUP)

    def _command(self, signum: int) -> None:
        self._commands.append(signum)
        try:
            self._wake_w.send(b"\0")
        except OSError:  # full: a wakeup is pending anyway
            pass

    # -- the master loop --------------------------------------------------------------------------------

    def run(self, install_signals: bool = True) -> StopReason:
        """Serve until stopped. Raises ``PoolExit`` (non-zero status) when the children cannot boot."""
        self._open(install_signals)
        release_free_memory(before_fork=True)  # every child inherits the trimmed heap, frozen
        try:
            try:
                self._start_generation()
                while True:
                    received = self._wait()
                    for signum in received:
                        self._dispatch(signum)
                    now = time.monotonic()
                    if received or now >= self._maintain_at:
                        self._reap_children()
                        self._kill_stuck_children()
                        self._maintain_pool()
                        busy = self._growing or self._booting_generation is not None
                        self._maintain_at = now + (GROWING_TICK if busy else TICK)
                    self._watch_busy_children(now)
            except PoolExit as exit_:
                self._stop_children(exit_)
                if exit_.status:
                    log.error("prefork pool stopped: %s", exit_.message)
                    raise
                log.info("prefork pool stopped (%s)", exit_.reason.value)
                return exit_.reason
        finally:
            self._close()

    def _open(self, install_signals: bool) -> None:
        s = self._settings
        self._start_time = time.time()
        self._master_pid = os.getpid()
        self._board = Scoreboard(slots=3 * s.max_children, lanes=max(1, s.threads_per_child))
        self._busy_watch = BusyWatch(self._board, s.threads_per_child)
        self._watch_at = time.monotonic()
        self._lifeline = os.pipe()
        self._channel = HandoffChannel()
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._wake_r, selectors.EVENT_READ)
        if install_signals:
            self._signals = SignalQueue()
            self._signals.install(_MASTER_SIGNALS)
            self._selector.register(self._signals.fileno(), selectors.EVENT_READ)
        log.info(
            "prefork pool starting: min_spare=%d max_spare=%d max_children=%d threads_per_child=%d "
            "max_requests=%s timeout=%s",
            self._min_spare,
            self._max_spare,
            s.max_children,
            s.threads_per_child,
            s.max_requests or "unlimited",
            s.timeout or "off",
        )

    def _close(self) -> None:
        """Release what run() opened (also in a child, where only these copies of the fds go)."""
        if self._signals is not None:
            self._signals.close()
            self._signals = None
        if self._selector is not None:
            self._selector.close()
            self._selector = None
        if self._lifeline is not None and os.getpid() == self._master_pid:
            for fd in self._lifeline:
                os.close(fd)
            self._lifeline = None
        if self._channel is not None and os.getpid() == self._master_pid:
            self._channel.close()  # after the children: connections still in flight have nobody to serve them
            self._channel = None
        self._wake_r.close()
        self._wake_w.close()
        if self._board is not None and os.getpid() == self._master_pid:
            self._board.close()
            self._board = None

    def _wait(self) -> list[int]:
        """Sleep until a signal, a request_* call, the tick or the busy watch's next look; return the signal
        numbers received."""
        assert self._selector is not None
        self._selector.select(max(0.0, min(self._maintain_at, self._watch_at) - time.monotonic()))
        received = self._signals.drain() if self._signals is not None else []
        try:
            while self._wake_r.recv(4096):
                pass
        except BlockingIOError:
            pass
        while self._commands:
            received.append(self._commands.popleft())
        return received

    def _watch_busy_children(self, now: float) -> None:
        """Nudge the children that have been full a while when a sibling is idle (busywatch.py)."""
        if self._busy_watch is None or now < self._watch_at:
            return
        stuck, serving = self._busy_watch.look()
        # At rest it looks on the pool's tick only; a child that starts serving is seen within TICK.
        self._watch_at = now + WATCH_INTERVAL if serving else self._maintain_at
        if stuck:
            by_slot = {child.slot: child for child in self._children.values()}
            for slot in stuck:
                child = by_slot.get(slot)
                if child is not None and child.stop_sent_at is None:
                    self._signal(child, NUDGE_SIGNAL)

    def _dispatch(self, signum: int) -> None:
        handlers: dict[int, Callable[[], None]] = {
            signal.SIGTERM: self._handle_term,
            signal.SIGINT: self._handle_term,
            signal.SIGQUIT: self._handle_quit,
            signal.SIGHUP: self._handle_hup,
            signal.SIGUSR1: self._handle_usr1,
            signal.SIGTTIN: self._handle_ttin,
            signal.SIGTTOU: self._handle_ttou,
        }
        handler = handlers.get(signum)
        if handler is not None:  # SIGCHLD: reaping follows anyway
            handler()

    def _handle_term(self) -> None:
        self._emit(PoolEvent.STOPPING)
        raise PoolExit(StopReason.STOP)

    def _handle_quit(self) -> None:
        self._emit(PoolEvent.STOPPING)
        raise PoolExit(StopReason.QUIT)

    def _handle_hup(self) -> None:
        log.info("reload requested: starting a new generation of children")
        self._emit(PoolEvent.RELOADING)
        self._start_generation()

    def _emit(self, event: PoolEvent) -> None:
        if self._on_event is None:
            return
        try:
            self._on_event(event)
        except Exception:
            log.exception("the pool's on_event hook failed (%s)", event.value)

    def _handle_usr1(self) -> None:
        self._reopen_logs()
        for child in list(self._children.values()):
            self._signal(child, signal.SIGUSR1)

    def _handle_ttin(self) -> None:
        limit = self._settings.max_children
        self._min_spare = min(self._min_spare + 1, limit)
        self._max_spare = min(self._max_spare + 1, limit)
        log.info("TTIN: spare children now %d..%d", self._min_spare, self._max_spare)

    def _handle_ttou(self) -> None:
        self._min_spare = max(self._min_spare - 1, 1)
        self._max_spare = max(self._max_spare - 1, self._min_spare)
        log.info("TTOU: spare children now %d..%d", self._min_spare, self._max_spare)

    def _reopen_logs(self) -> None:
        if self._on_reopen_logs is None:
            return
        try:
            self._on_reopen_logs()
        except Exception:
            log.exception("reopening the logs failed")

    # -- generations ------------------------------------------------------------------------------------

    def _start_generation(self) -> None:
        """Boot a new generation next to the serving one; it takes over once a child is READY."""
        if self._booting_generation is not None and self._board is not None:
            self._promote_booting_generation(self._board.snapshot())  # booted since the last tick?
        if self._booting_generation is not None:
            self._abandon_booting_generation("superseded by a newer reload")
        self._last_generation += 1
        self._booting_generation = self._last_generation
        count = self._min_spare + (self._max_spare - self._min_spare) // 2  # php-fpm's start_servers
        for _ in range(count):
            self._spawn_child(self._booting_generation)

    def _promote_booting_generation(self, snapshot: list[SlotSnapshot]) -> None:
        booting = self._booting_generation
        if booting is None:
            return
        # STOPPING counts too: a child may boot, serve max_requests and drain between two ticks.
        if not any(s.generation == booting and s.state > SlotState.STARTING for s in snapshot):
            return
        old = [c for c in self._children.values() if c.generation != booting and c.stop_sent_at is None]
        for child in old:
            self._signal(child, signal.SIGHUP)  # retire: its kept-alive connections go to the new generation
        self._serving_generation, self._booting_generation = booting, None
        self._spawn_plan.restart()
        if old:
            log.info("generation %d is serving; %d old child(ren) finish and exit", booting, len(old))
        self.ready.set()
        self._emit(PoolEvent.READY)

    def _abandon_booting_generation(self, why: str) -> None:
        booting = self._booting_generation
        self._booting_generation = None
        for child in list(self._children.values()):
            if child.generation == booting and child.stop_sent_at is None:
                self._signal(child, signal.SIGHUP)  # what it may have accepted goes to the serving generation
        log.error("reload to generation %s abandoned (%s); the serving generation carries on", booting, why)
        if self._serving_generation:
            self._emit(PoolEvent.READY)  # the reload is over: the old generation serves on

    # -- children ---------------------------------------------------------------------------------------

    def _spawn_child(self, generation: int) -> bool:
        assert self._board is not None and self._lifeline is not None and self._channel is not None
        now = time.monotonic()
        slot = self._board.allocate(generation, now)
        if slot is None:
            log.warning("scoreboard full (children still draining); postponing a fork")
            return False
        spec = ChildSpec(
            listeners=self._listeners,
            channel=self._channel,
            make_factory=self._make_factory,
            settings=self._settings,
            board=self._board,
            slot=slot,
            master_pid=self._master_pid,
            lifeline=self._lifeline[0],
            lifeline_master_end=self._lifeline[1],
            close_master_fds=self._close,
            blocked_signals=_FORK_BLOCKED,
            on_reopen_logs=self._on_reopen_logs,
        )
        previous_mask = signal.pthread_sigmask(signal.SIG_BLOCK, _FORK_BLOCKED)
        try:
            pid = os.fork()
            if pid == 0:
                run_child(spec)  # never returns
        except OSError as exc:
            self._board.release(slot)
            log.error("fork failed: %s", exc)
            return False
        finally:
            if os.getpid() == self._master_pid:
                signal.pthread_sigmask(signal.SIG_SETMASK, previous_mask)
        self._children[pid] = ChildRecord(pid, slot, generation, now)
        return True

    def _signal(self, child: ChildRecord, signum: int) -> None:
        if signum in (signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT) and child.stop_sent_at is None:
            child.stop_sent_at = time.monotonic()
        elif signum == signal.SIGKILL:
            child.killed = True
        try:
            os.kill(child.pid, signum)
        except ProcessLookupError:
            pass  # exited; not reaped yet, so the pid cannot have been reused

    def _reap_children(self) -> None:
        """Collect every exited child. Pid by pid, not waitpid(-1): in library mode the process may
        have other children (subprocess.Popen) whose exit status is not ours to take."""
        for child in list(self._children.values()):
            try:
                pid, status = os.waitpid(child.pid, os.WNOHANG)
            except ChildProcessError:
                pid, status = child.pid, 0
            if pid:
                del self._children[child.pid]
                self._on_child_exit(child, os.waitstatus_to_exitcode(status))

    def _on_child_exit(self, child: ChildRecord, code: int) -> None:
        assert self._board is not None
        snap = self._board.read(child.slot)
        self._promote_booting_generation([snap])
        self._board.release(child.slot)
        self._served_by_reaped += snap.served
        expected = child.stop_sent_at is not None or child.killed
        how = describe_exit(code)
        if snap.state is SlotState.STARTING and not expected:
            self._on_boot_failure(child, how)
        elif not expected and code != 0:
            log.error("worker %d died (%s) after %d request(s); replacing it", child.pid, how, snap.served)
            self._crash_backoff.note_crash(time.monotonic())
        else:
            log.debug("worker %d exited (%s) after %d request(s)", child.pid, how, snap.served)

    def _on_boot_failure(self, child: ChildRecord, how: str) -> None:
        assert self._board is not None
        self._promote_booting_generation(self._board.snapshot())
        message = f"worker {child.pid} failed to boot ({how}); the error is logged above"
        if child.generation == self._booting_generation:
            if self._serving_generation == 0:
                raise PoolExit(StopReason.STOP, EXIT_BOOT_FAILURE, f"{message}; the application cannot start")
            self._abandon_booting_generation(message)
        else:
            log.error("%s", message)
            self._crash_backoff.note_crash(time.monotonic())

    def _kill_stuck_children(self) -> None:
        """SIGUSR2 (stack dump) a child busy past ``timeout``, SIGKILL it KILL_DELAY later; SIGKILL a
        child that outlived its graceful stop."""
        assert self._board is not None
        s = self._settings
        now = time.monotonic()
        grace = s.graceful_timeout + KILL_DELAY
        for child in list(self._children.values()):
            if child.killed:
                continue
            if child.dump_sent_at is not None and now - child.dump_sent_at >= KILL_DELAY:
                log.error("worker %d killed: request timeout (%gs)", child.pid, s.timeout)
                self._signal(child, signal.SIGKILL)
            elif child.stop_sent_at is not None and now - child.stop_sent_at > grace:
                log.warning("worker %d outlived its graceful stop (%gs): killed", child.pid, grace)
                self._signal(child, signal.SIGKILL)
            elif s.timeout and child.dump_sent_at is None:
                snap = self._board.read(child.slot)
                oldest = snap.oldest_busy_since()
                if snap.consistent and oldest is not None and now - oldest > s.timeout:
                    child.dump_sent_at = now
                    self._signal(child, signal.SIGUSR2)

    def _maintain_pool(self) -> None:
        """Keep min_spare..max_spare idle children of the serving generation, max_children at most."""
        assert self._board is not None
        snapshot = self._board.snapshot()
        self._promote_booting_generation(snapshot)
        self._growing = False
        now = time.monotonic()
        if self._serving_generation == 0:
            return  # the first generation is still booting
        slots = {snap.index: snap for snap in snapshot}
        serving = []
        settled: list[SlotSnapshot] = []  # idle long enough to retire as a spare
        for c in self._children.values():
            if c.generation != self._serving_generation or c.stop_sent_at is not None:
                continue
            snap = slots.get(c.slot) or self._board.read(c.slot)  # a live child's slot is never skipped
            if snap.state in (SlotState.STARTING, SlotState.READY):
                serving.append(snap)
            if not snap.idle:
                c.idle_since = None
            elif c.idle_since is None:
                c.idle_since = now
            elif now - c.idle_since >= SPARE_IDLE_BEFORE_RETIRE:
                settled.append(snap)
        idle = [snap for snap in serving if snap.idle]
        starting = sum(1 for snap in serving if snap.state is SlotState.STARTING)
        self._max_active = max(self._max_active, len(serving) - len(idle) - starting)
        # A retiring spare hands its parked kept-alive connections to a sibling; it retires only after staying
        # idle a while, so a load that comes and goes does not churn children.
        if len(idle) > self._max_spare and settled and now - self._last_retire_at >= TICK:
            self._last_retire_at = now
            self._retire(
                min(settled, key=lambda snap: snap.started_at),
                "idle",
                f"more than max_spare={self._max_spare} idle",
            )
        if len(idle) >= self._min_spare:
            self._spawn_plan.restart()
        # Fork when short of min_spare idle, unless busy children compute on saturated CPUs (cpudemand.py).
        busy = [snap for snap in serving if snap.state is SlotState.READY and not snap.idle]
        in_requests = [(snap.pid, snap.time_in_requests(now)) for snap in busy]
        step = self._spell.step(now, len(idle) + starting, in_requests, self._min_spare)
        if step is Step.GROW:
            self._grow(len(serving), self._min_spare - len(idle) - starting)
        elif step is Step.LOOK_AGAIN:
            self._growing = True  # the verdict comes a GROWING_TICK later
        elif step is Step.HOLD_STARTS:
            log.debug("all children busy on saturated CPUs: not forking (%d busy)", len(busy))
        elif step is Step.RETIRE:
            youngest = max(busy, key=lambda snap: snap.started_at)
            cpus = self._spell.cpus
            self._retire(youngest, "busy", f"CPUs saturated: {len(busy)} busy children on {cpus} CPUs")

    def _grow(self, serving: int, deficit: int) -> None:
        plan = self._spawn_plan
        paused = time.monotonic() < self._crash_backoff.paused_until
        count = plan.count(serving, deficit, self._settings.max_children, self._min_spare, paused)
        if plan.just_reached:
            self._emit(PoolEvent.MAX_CHILDREN_REACHED)
        if count:
            spawned = sum(1 for _ in range(count) if self._spawn_child(self._serving_generation))
            self._growing = spawned > 0
            log.debug("all children busy: forked %d more (%d serving)", spawned, serving + spawned)

    def _retire(self, snap: SlotSnapshot, state: str, why: str) -> None:
        for child in self._children.values():
            if child.slot == snap.index:
                log.debug("retiring %s worker %d (%s)", state, child.pid, why)
                self._signal(child, signal.SIGHUP)  # its kept-alive connections go to a sibling
                return

    # -- stopping ---------------------------------------------------------------------------------------

    def _stop_children(self, exit_: PoolExit) -> None:
        """Stop every child and reap it: gracefully within graceful_timeout for a requested STOP,
        at once otherwise. A second TERM / INT or a QUIT while draining hurries it up."""
        graceful = exit_.reason is StopReason.STOP and exit_.status == 0
        now = time.monotonic()
        deadline = now + (self._settings.graceful_timeout + KILL_DELAY if graceful else KILL_DELAY)
        for child in list(self._children.values()):
            self._signal(child, signal.SIGTERM if graceful else signal.SIGQUIT)
        self._growing = False
        killed_at: float | None = None
        while self._children:
            for signum in self._wait():
                if signum in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT) and graceful:
                    graceful = False
                    deadline = min(deadline, time.monotonic() + KILL_DELAY)
                    for child in list(self._children.values()):
                        self._signal(child, signal.SIGQUIT)
                elif signum == signal.SIGUSR1:
                    self._handle_usr1()
            self._reap_children()
            now = time.monotonic()
            if killed_at is None and now >= deadline:
                killed_at = now
                for child in list(self._children.values()):
                    self._signal(child, signal.SIGKILL)
            elif killed_at is not None and now - killed_at > 5.0:
                log.error("children %s survive SIGKILL (uninterruptible?); giving up", sorted(self._children))
                return

    # -- statistics -------------------------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """php-fpm-like pool fields plus one entry per child, read from the scoreboard."""
        board = self._board
        try:
            snapshot = board.snapshot() if board is not None else []
        except ValueError:  # run() has just returned and closed the mapping
            snapshot = []
        now = time.monotonic()
        children = [snap.describe(now) for snap in snapshot]
        serving = [c for c in children if c["generation"] == self._serving_generation]
        idle = sum(1 for c in serving if c["state"] == "idle")
        active = sum(1 for c in serving if c["state"] == "busy")
        in_progress = sum(snap.active for snap in snapshot)
        served = self._served_by_reaped + sum(snap.served for snap in snapshot)
        return {
            "start_time": self._start_time,
            "start_since": time.time() - self._start_time if self._start_time else 0.0,
            "generation": self._serving_generation,
            "idle_processes": idle,
            "active_processes": active,
            "total_processes": len(children),
            "max_active_processes": self._max_active,
            "max_children_reached": self._spawn_plan.reached,
            "growth_held": self._spell.growth_held,
            "saturated_retired": self._spell.saturated_retired,
            "accepted_requests": served + in_progress,
            "served_requests": served,
            "min_spare": self._min_spare,
            "max_spare": self._max_spare,
            "max_children": self._settings.max_children,
            "children": children,
        }
