"""Whether busy prefork children would gain from a sibling, judged by what they wait for.

The master forks when fewer than min_spare children are idle (php-fpm's ``pm = dynamic``). A new child
helps when the busy ones wait for something other than a CPU: a database, an upstream, a slow upload.
It does not help when they run on, or queue for, CPUs that are all taken: it would only take turns on the
same cores, and every request would wait longer for its turn (a higher p99, more context switches, more
memory). That is the hello-world benchmark, and any CPU-bound site on a small VPS, with nginx on the same
cores.

Linux keeps, per thread, the nanoseconds spent on a CPU and waiting in a run queue
(``/proc/<pid>/task/<tid>/schedstat``); each child adds up in its scoreboard slot the time it spent in
requests (``busy_seconds``). Between two of the master's looks, busy children that wanted a CPU for most of
their time in requests (ran or queued: ``CPU_BOUND``) and queued for a noticeable part of it (``QUEUED``)
compute on saturated CPUs, and the pool holds its size. Time in epoll between requests counts for nothing:
a child that is idle half the time but computes whenever it serves is CPU-bound. Where the kernel does not
tell (no ``/proc``, or schedstat compiled out), the pool grows as before.

A spell of saturated CPUs (``SaturationSpell``) starts at the first such verdict. While it lasts the pool
holds its size, and a spell that goes on retires the busy children beyond the CPUs, one at a time; a lull
with enough idle children ends it.

Nothing here reads the scoreboard or forks; prefork.py asks, with its busy children's pids and their time
in requests, and forks or retires as told.
"""

from __future__ import annotations

import enum
import os

__all__ = [
    "CPU_BOUND",
    "LULL",
    "QUEUED",
    "SATURATED_BEFORE_RETIRE",
    "CpuDemand",
    "SaturationSpell",
    "Step",
    "Verdict",
    "cpu_times",
    "usable_cpus",
]

CPU_BOUND = 0.6  # share of their time in requests the busy children ran or queued for a CPU: they compute
QUEUED = 0.1  # share of it they queued for a CPU: the CPUs are all taken
SATURATED_BEFORE_RETIRE = 2.0  # seconds of saturated CPUs before a busy child beyond them retires
LULL = 1.0  # seconds with min_spare idle children that end a spell of saturated CPUs


class Verdict(enum.Enum):
    GROW = "grow"  # a sibling would help, or the kernel does not say
    HOLD = "hold"  # the busy children compute on saturated CPUs: a sibling would only take turns
    UNKNOWN = "unknown"  # the first look at these children: ask again after a short interval


def cpu_times(pid: int) -> tuple[int, int] | None:
    """(nanoseconds on a CPU, nanoseconds queued for one) summed over the threads of ``pid``, or None when
    the kernel does not say. A thread that exits takes its share with it: callers clamp deltas at zero."""
    try:
        threads = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return None
    ran = queued = 0
    seen = False
    for tid in threads:
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat", "rb") as stats:
                fields = stats.read().split()
            ran += int(fields[0])
            queued += int(fields[1])
            seen = True
        except (OSError, ValueError, IndexError):
            continue  # the thread exited meanwhile, or no schedstat
    return (ran, queued) if seen else None


class CpuDemand:
    """Compares each busy child's CPU times, and its time in requests, with those of the previous look.

    ``judge`` is called on the ticks where the pool would grow; ``forget`` on the others, so that an
    interval never spans a quiet spell."""

    def __init__(self) -> None:
        # pid -> (monotonic time, seconds in requests, ran ns, queued ns) at the previous look
        self._last: dict[int, tuple[float, float, int, int]] = {}
        self.unavailable = cpu_times(os.getpid()) is None  # the kernel does not say: always GROW

    def forget(self) -> None:
        self._last.clear()

    def judge(self, children: list[tuple[int, float]], now: float) -> Verdict:
        """The verdict on the busy children, each ``(pid, seconds it has spent in requests so far)`` (the
        scoreboard's ``SlotSnapshot.time_in_requests``): over the time they spent in requests since the
        previous look, how much they ran or queued for a CPU, and how much they queued."""
        if self.unavailable or not children:
            return Verdict.GROW
        in_requests = wanted = queued = 0.0
        judged = 0
        last: dict[int, tuple[float, float, int, int]] = {}
        for pid, busy_seconds in children:
            times = cpu_times(pid)
            if times is None:
                continue
            ran_ns, queued_ns = times
            last[pid] = (now, busy_seconds, ran_ns, queued_ns)
            previous = self._last.get(pid)
            if previous is None or now <= previous[0]:
                continue
            # No time in requests counted since (a request that holds no lane): take the whole interval.
            busy = busy_seconds - previous[1]
            if busy <= 0:
                busy = now - previous[0]
            ran = max(0, ran_ns - previous[2]) / 1e9
            waited = max(0, queued_ns - previous[3]) / 1e9
            in_requests += busy
            wanted += min(busy, ran + waited)
            queued += min(busy, waited)
            judged += 1
        self._last = last
        if not last:
            return Verdict.GROW  # every one of them exited meanwhile
        if not judged:
            return Verdict.UNKNOWN
        if wanted >= CPU_BOUND * in_requests and queued >= QUEUED * in_requests:
            return Verdict.HOLD
        return Verdict.GROW


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity, which a container or taskset narrows)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


class Step(enum.Enum):
    """What the pool does on this tick, as ``SaturationSpell.step`` says."""

    SPARE = "spare"  # min_spare children idle or booting: nothing to fork
    LOOK_AGAIN = "look again"  # the first look at these busy children: the next tick comes sooner
    GROW = "grow"  # fork for min_spare, as php-fpm would
    HOLD_STARTS = "hold starts"  # a spell of saturated CPUs starts: do not fork (the pool logs it)
    HOLD = "hold"  # the spell goes on: do not fork
    RETIRE = "retire"  # the spell lasts: do not fork, and retire the youngest busy child


class SaturationSpell:
    """A spell of saturated CPUs in the prefork pool: when it started, whether a lull is ending it, and the
    ``growth_held`` and ``saturated_retired`` counters of the pool's ``stats()``.

    The pool calls ``step`` on every tick once its serving generation is up, with plain values, and does
    what it returns. ``cpus`` is how many CPUs the children share (this process's affinity by default);
    ``demand`` is injectable so that tests can script the verdicts."""

    def __init__(self, cpus: int | None = None, demand: CpuDemand | None = None) -> None:
        self.cpus = cpus if cpus is not None else usable_cpus()
        self._demand = demand if demand is not None else CpuDemand()
        self.growth_held = 0  # ticks the pool did not grow because its busy children saturate the CPUs
        self.saturated_retired = 0  # busy children retired because the CPUs were saturated
        self._held_since: float | None = None  # the start of the current spell of saturated CPUs
        self._lull_since: float | None = None  # min_spare idle at every look since then (ends the spell)

    def step(self, now: float, idle: int, busy: list[tuple[int, float]], min_spare: int) -> Step:
        """What to do now (monotonic): ``idle`` counts the serving children idle or still booting; ``busy``
        holds each busy READY child as ``(pid, seconds it has spent in requests so far)``."""
        if idle >= min_spare:
            # Between two requests every child may be idle for a moment: only a lull ends a saturated spell.
            self._demand.forget()
            if self._lull_since is None:
                self._lull_since = now
            elif now - self._lull_since >= LULL:
                self._held_since = None
            return Step.SPARE
        self._lull_since = None
        # No growth while the busy children compute on saturated CPUs: a sibling would only take turns on
        # the same cores. The first look at a busy pool decides on the next, sooner, tick.
        verdict = self._demand.judge(busy, now)
        if verdict is Verdict.UNKNOWN:
            return Step.LOOK_AGAIN
        if verdict is Verdict.GROW:
            self._held_since = None
            return Step.GROW
        self.growth_held += 1
        if self._held_since is None:
            self._held_since = now
            return Step.HOLD_STARTS
        # A spell that lasts retires the busy children beyond the CPUs, one per SATURATED_BEFORE_RETIRE,
        # never below min_spare.
        if now - self._held_since >= SATURATED_BEFORE_RETIRE and len(busy) > max(self.cpus, min_spare):
            self._held_since = now
            self.saturated_retired += 1
            return Step.RETIRE
        return Step.HOLD
