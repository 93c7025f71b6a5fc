"""The prefork master's busy watch: which child should hand its readable kept-alive connections over.

A child serves one request at a time by default (``threads_per_child`` at most). A request that arrives on
one of its parked kept-alive connections while it is full must not wait for its current request when a
sibling is idle. The child cannot notice that cheaply: its only thread is in the application, and a timer
in its control thread costs a wake-up, and a fight for its GIL, every few milliseconds of every request.

So the master looks instead, every ``WATCH_INTERVAL`` while any child serves: four header fields per
scoreboard slot, no system call. A child that was full at two looks in a row, without finishing a request
between them, while a sibling was idle at both looks, is *nudged* with ``NUDGE_SIGNAL``. Its control thread
then gives whatever is readable on its parked connections to the hand-off channel (``Dispatcher.
hand_off_readable``), where the idle sibling takes it. Under full load no child stays idle, so nobody is
nudged and nothing is handed over in vain. While no child serves, the master looks only on its usual tick
(prefork.TICK), so a request that starts at rest is watched within that.
"""

from __future__ import annotations

import signal

from fcgiserve.pools.scoreboard import Scoreboard, SlotState

__all__ = ["NUDGE_SIGNAL", "WATCH_INTERVAL", "BusyWatch"]

# SIGURG's default action is to ignore it, and nothing here asks the kernel for it (no F_SETOWN on any
# socket): a nudge that reaches a process not yet listening for it does no harm.
NUDGE_SIGNAL = signal.SIGURG
WATCH_INTERVAL = 0.005  # seconds between two looks while a child serves


class BusyWatch:
    """Decides from two consecutive glances at the scoreboard which slots' children to nudge."""

    def __init__(self, board: Scoreboard, threads_per_child: int) -> None:
        self._board = board
        self._threads = max(1, threads_per_child)
        self._full: dict[int, int] = {}  # slot -> requests served, for the children full at the last look
        self._idle = 0  # bit mask of the slots whose child was idle at the last look

    def look(self) -> tuple[list[int], bool]:
        """The slots to nudge now, and whether any child serves (then look again after WATCH_INTERVAL)."""
        full: dict[int, int] = {}
        idle = 0
        serving_any = False
        for slot, (state, active, serving, served) in enumerate(self._board.glance()):
            if state != SlotState.READY:
                continue
            if active or serving:
                serving_any = True
                # A request on each thread, or each thread in serve() (a factory whose serve() may wait).
                if max(active, serving) >= self._threads:
                    full[slot] = served
            else:
                idle |= 1 << slot
        stuck: list[int] = []
        if idle & self._idle:  # a sibling idle at both looks, not just between two requests
            previous = self._full
            stuck = [slot for slot, served in full.items() if previous.get(slot) == served]
        self._full, self._idle = full, idle
        return stuck, serving_any
