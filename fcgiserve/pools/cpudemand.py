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

Nothing here reads the scoreboard or forks; prefork.py asks, with its busy children's pids and their time
in requests.
"""

from __future__ import annotations

import enum
import os

__all__ = ["CPU_BOUND", "QUEUED", "CpuDemand", "Verdict", "cpu_times"]

CPU_BOUND = 0.6  # share of their time in requests the busy children ran or queued for a CPU: they compute
QUEUED = 0.1  # share of it they queued for a CPU: the CPUs are all taken


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
