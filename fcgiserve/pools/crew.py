"""Who waits where: the dispatcher's worker threads counted by role (leader, followers, busy).

An idle thread is either the *leader*, waiting in the epoll, or a *follower*, waiting on its own gate lock
(held; releasing it promotes that thread). A busy thread serves a job. The rules that keep the pool
reachable and cheap live here, as plain bookkeeping: at most one leader; a thread that finishes a job
leads at once if nobody does (no hand-off); a follower is promoted only when the pool has been leaderless
for a while (the dispatcher's control thread decides when); idle threads above ``max_spare`` leave only
after the pool has not needed them for ``spare_idle_time``.

No lock and no threads here: the dispatcher calls every method with its own lock held, and starts or ends
the threads these counts ask for.
"""

from __future__ import annotations

import enum
import threading
import time

__all__ = ["SPARE_IDLE_SECONDS", "Crew", "ThreadRole"]

# Threads above max_spare exit only after the pool has not needed them for this long: retiring a thread the
# moment it finishes would start and end threads on every swing of the load (tens of µs of CPU each time).
SPARE_IDLE_SECONDS = 2.0


class ThreadRole(enum.Enum):
    """What an idle thread does next."""

    LEAD = "lead"  # wait in the epoll
    FOLLOW = "follow"  # wait on its gate until promoted
    RETIRE = "retire"  # leave: a spare the pool has not needed lately


class Crew:
    """The worker threads' counts and roles; a thread being started counts as idle."""

    def __init__(self, min_spare: int, max_spare: int, max_threads: int, spare_idle_time: float) -> None:
        # One waiting thread is the minimum that keeps the pool reachable.
        self.min_spare = max(1, min(min_spare, max_threads))
        self.max_spare = max(self.min_spare, min(max_spare, max_threads))
        self.max_threads = max_threads
        # How many threads may exist now: max_threads, or the count at which the system last refused a
        # thread (RLIMIT_NPROC or RLIMIT_AS, a cgroup's pids.max, memory), until ceiling_until.
        self.ceiling = max_threads
        self.ceiling_until = 0.0
        self.spare_idle_time = spare_idle_time
        self.threads = 0
        self.idle = 0
        self.busy = 0  # threads serving a job
        self.leader = False  # a thread waits in (or is on its way to) the epoll
        self.followers: list[threading.Lock] = []  # their gates, most recently idle last
        self.leaderless_since = 0.0  # when the last leader took a job
        self._spares_needed_at = 0.0  # when idle threads last numbered max_spare or fewer

    def reserve_spares(self) -> int:
        """How many threads to start so that min_spare wait (within max_threads); counted idle at once."""
        count = min(self.min_spare - self.idle, self.ceiling - self.threads)
        if count <= 0:
            return 0
        self.threads += count
        self.idle += count
        return count

    def lead_if_unled(self) -> bool:
        """Nobody watches the epoll and nothing runs (start-up, or after spares left): the caller leads."""
        if self.leader or self.busy:
            return False
        self.leader = True
        return True

    def promote(self) -> bool:
        """Make a follower the leader; True when there is none and a new thread must start as the leader."""
        self.leader = True
        if self.followers:
            self.followers.pop().release()  # the most recently idle thread: its stack is warm
            return False
        if self.threads < self.ceiling:
            self.threads += 1
            self.idle += 1
            return True
        self.leader = False  # every thread is busy and no more may start: the next one to finish leads
        return False

    def can_promote(self) -> bool:
        return bool(self.followers) or self.threads < self.ceiling

    def not_started(self, count: int, led: bool, until: float) -> None:
        """``count`` threads counted idle could not start: the system refused them. ``led``: the first was
        to lead, so nobody leads now (the next thread back from a job does). No more are asked for until
        ``until``: the limit seldom lifts at once, and every refused start costs a failed mmap and clone."""
        self.threads -= count
        self.idle -= count
        if led:
            self.leader = False
        self.ceiling = self.threads
        self.ceiling_until = until

    def lift_ceiling(self, now: float) -> None:
        """Back to max_threads once ``ceiling_until`` has passed."""
        if self.ceiling_until and now >= self.ceiling_until:
            self.ceiling, self.ceiling_until = self.max_threads, 0.0

    def begin_job(self, now: float) -> None:
        """The leader turns to a job, and wakes nobody: most jobs end sooner than a promotion would."""
        self.leader = False
        self.leaderless_since = now
        self.idle -= 1
        self.busy += 1
        if self.idle <= self.max_spare:
            self._spares_needed_at = now

    def end_job(self) -> None:
        self.busy -= 1
        self.idle += 1

    def join(self, gate: threading.Lock) -> bool:
        """A new thread takes its place: True when it leads (nobody watches the epoll and nothing runs),
        else it follows on ``gate``."""
        if self.lead_if_unled():
            return True
        self.followers.append(gate)
        return False

    def rejoin(self, gate: threading.Lock) -> ThreadRole:
        """A thread back from a job leads at once when nobody does (no hand-off), else it follows on
        ``gate``, unless it is a surplus spare."""
        if not self.leader:
            self.leader = True
            return ThreadRole.LEAD
        if self.surplus_spare():
            return ThreadRole.RETIRE
        self.followers.append(gate)
        return ThreadRole.FOLLOW

    def surplus_spare(self) -> bool:
        """More than max_spare threads idle (the caller included), and none of them needed for a while."""
        if self.idle <= self.max_spare:
            return False
        return time.monotonic() - self._spares_needed_at >= self.spare_idle_time

    def unfollow(self, gate: threading.Lock) -> None:
        if gate in self.followers:
            self.followers.remove(gate)

    def release_followers(self) -> None:
        """Wake every follower (they see the pool is ending, and retire)."""
        for gate in self.followers:
            gate.release()
        self.followers.clear()

    def retire(self) -> None:
        """An idle thread leaves."""
        self.idle -= 1
        self.threads -= 1
