"""The prefork master's record of its children: each one's pid, slot and signals sent, how an exit reads,
and the back-off that keeps a crashing application from being forked in a tight loop.

Nothing here forks, signals or reads the scoreboard; prefork.py does, and keeps these records.
"""

from __future__ import annotations

import collections
import logging
import signal
from dataclasses import dataclass

__all__ = ["CRASH_LIMIT", "CRASH_WINDOW", "MAX_BACKOFF", "ChildRecord", "CrashBackoff", "describe_exit"]

log = logging.getLogger("fcgiserve.pools")

CRASH_WINDOW = 10.0  # CRASH_LIMIT abnormal exits within CRASH_WINDOW seconds pause spawning
CRASH_LIMIT = 10
MAX_BACKOFF = 32.0


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


def describe_exit(code: int) -> str:
    """``os.waitstatus_to_exitcode`` result in words: "exit status 3", "signal SIGKILL"."""
    if code >= 0:
        return f"exit status {code}"
    try:
        return f"signal {signal.Signals(-code).name}"
    except ValueError:
        return f"signal {-code}"
