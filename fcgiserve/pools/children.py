"""The prefork master's record of its children: each one's pid, slot and signals sent, how an exit reads,
how many to fork when the pool is short of idle ones, and the back-off that keeps a crashing application
from being forked in a tight loop.

Nothing here forks, signals or reads the scoreboard; prefork.py does, and keeps these records.
"""

from __future__ import annotations

import collections
import logging
import signal
import time
from dataclasses import dataclass

__all__ = [
    "CRASH_LIMIT",
    "CRASH_WINDOW",
    "MAX_BACKOFF",
    "MAX_CHILDREN_LOG_INTERVAL",
    "MAX_SPAWN_BATCH",
    "ChildRecord",
    "CrashBackoff",
    "SpawnPlan",
    "describe_exit",
]

log = logging.getLogger("fcgiserve.pools")

CRASH_WINDOW = 10.0  # CRASH_LIMIT abnormal exits within CRASH_WINDOW seconds pause spawning
CRASH_LIMIT = 10
MAX_BACKOFF = 32.0
MAX_SPAWN_BATCH = 32
MAX_CHILDREN_LOG_INTERVAL = 60.0  # seconds between two "reached max_children" warnings


@dataclass(slots=True)
class ChildRecord:
    pid: int
    slot: int
    generation: int
    started_at: float
    stop_sent_at: float | None = None  # SIGTERM / SIGQUIT sent: any exit is expected
    dump_sent_at: float | None = None  # SIGUSR2 sent for the timeout; SIGKILL follows
    killed: bool = False  # SIGKILL sent by the master
    idle_since: float | None = None  # seen idle on every tick since then (spare retirement waits for it)


class CrashBackoff:
    """Pause forking, exponentially longer each time, when children crash faster than CRASH_LIMIT per
    CRASH_WINDOW; a quiet spell of CRASH_WINDOW resets the escalation."""

    def __init__(self) -> None:
        self._crashes: collections.deque[float] = collections.deque()
        self._backoff = 0.0
        self._last_crash = -float("inf")  # apart from _crashes, which a pause empties
        self.paused_until = 0.0  # no fork before then (time.monotonic())

    def note_crash(self, now: float) -> None:
        if now - self._last_crash > CRASH_WINDOW:
            self._backoff = 0.0
        self._last_crash = now
        self._crashes.append(now)
        while self._crashes[0] < now - CRASH_WINDOW:
            self._crashes.popleft()
        if len(self._crashes) >= CRASH_LIMIT:
            self._backoff = min(self._backoff * 2 or 1.0, MAX_BACKOFF)
            self.paused_until = now + self._backoff
            self._crashes.clear()
            log.error(
                "%d children crashed within %gs: no fork for %gs", CRASH_LIMIT, CRASH_WINDOW, self._backoff
            )


class SpawnPlan:
    """How many children to fork on a tick the pool is short of idle ones: php-fpm's ramp (1, 2, 4... up to
    MAX_SPAWN_BATCH per tick, back to 1 once min_spare are idle), never beyond max_children. Reaching it
    counts one episode (``reached``), warned about at most once a minute, or a saturated pool floods the log.
    """

    def __init__(self) -> None:
        self.reached = 0  # episodes of a pool at max_children and still short of idle children
        self.at_max = False  # in such an episode now
        self.just_reached = False  # the last count() started an episode
        self._batch = 1
        self._logged_at = -MAX_CHILDREN_LOG_INTERVAL
        self._logged_reached = 0

    def restart(self) -> None:
        """Enough idle children (or a new generation serving): the next shortage ramps up from 1 again."""
        self._batch, self.at_max = 1, False

    def count(self, serving: int, deficit: int, max_children: int, min_spare: int, paused: bool) -> int:
        """Children to fork now for ``deficit`` missing idle ones; 0 at max_children or while ``paused``
        (CrashBackoff). A new episode at max_children sets ``at_max`` and counts it; the caller tells its
        listeners (``just_reached``)."""
        room = max_children - serving
        self.just_reached = False
        if room <= 0:
            if not self.at_max:
                self.at_max = self.just_reached = True
                self.reached += 1
                self._warn(max_children, min_spare)
            return 0
        self.at_max = False
        if paused:
            return 0
        count = min(max(self._batch, deficit), MAX_SPAWN_BATCH, room)
        self._batch = min(self._batch * 2, MAX_SPAWN_BATCH)
        return count

    def _warn(self, max_children: int, min_spare: int) -> None:
        now = time.monotonic()
        if now - self._logged_at >= MAX_CHILDREN_LOG_INTERVAL:
            episodes = self.reached - self._logged_reached
            self._logged_at, self._logged_reached = now, self.reached
            log.warning(
                "server reached max_children (%d) with fewer than min_spare (%d) idle children "
                "(%d time(s) since the last report); consider raising max_children or threads_per_child",
                max_children,
                min_spare,
                episodes,
            )


def describe_exit(code: int) -> str:
    """``os.waitstatus_to_exitcode`` result in words: "exit status 3", "signal SIGKILL"."""
    if code >= 0:
        return f"exit status {code}"
    try:
        return f"signal {signal.Signals(-code).name}"
    except ValueError:
        return f"signal {-code}"
