"""What the dispatcher's control thread waits on: its own wake-up socket and the fds a pool adds.

Any thread may ``wake()`` the control thread (a stop, a job starting while it sleeps without a tick, an
``accept()`` that ran out of file descriptors); a pool adds the fds it needs watched (a signal pipe, its
master's pipe) with a callback that runs in the control thread. ``wait`` returns after the next event or
the timeout, having drained the wake-up socket and run the callbacks of the fds that were ready.
"""

from __future__ import annotations

import selectors
import socket
from collections.abc import Callable

__all__ = ["ControlWaiter"]


class ControlWaiter:
    def __init__(self) -> None:
        self._selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._selector.register(self._wake_r, selectors.EVENT_READ, None)

    def add(self, fd: int, callback: Callable[[], None]) -> None:
        """Watch ``fd`` for readability; ``callback`` runs in the control thread and must drain ``fd``."""
        self._selector.register(fd, selectors.EVENT_READ, callback)

    def wake(self) -> None:
        """From any thread: make the control thread's current or next ``wait`` return."""
        try:
            self._wake_w.send(b"\0")
        except OSError:  # full (a wake-up is pending anyway) or closed (the dispatcher is over)
            pass

    def wait(self, timeout: float | None) -> None:
        for key, _mask in self._selector.select(timeout):
            callback = key.data
            if callback is None:
                self._drain()
            else:
                callback()

    def close(self) -> None:
        self._selector.close()
        self._wake_r.close()
        self._wake_w.close()

    def _drain(self) -> None:
        try:
            while self._wake_r.recv(4096):
                pass
        except BlockingIOError:
            pass
