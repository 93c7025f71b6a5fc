"""Signals as data: handlers record, a selector loop acts.

A signal may be delivered to any thread, and CPython runs Python-level handlers only in the main
thread, between bytecodes: a main thread blocked in ``select()`` would not notice a signal that
another thread received. ``signal.set_wakeup_fd`` closes that gap: CPython's C-level handler writes
the signal number as one byte to our socketpair at delivery, in whichever thread took the signal.
That byte is the record; the Python handler does nothing (no logging, no locks), it only keeps the
default action (termination) from happening. ``drain()`` reads the bytes back in arrival order.
"""

from __future__ import annotations

import signal
import socket
import threading
from collections.abc import Iterable
from types import FrameType
from typing import Any

__all__ = ["SignalQueue"]

_Handler = Any  # what signal.getsignal returns: a callable, SIG_DFL, SIG_IGN or None


def _record_only(signum: int, frame: FrameType | None) -> None:
    """The wakeup fd already holds the record (the signal number byte); nothing else may happen here."""


class SignalQueue:
    """Queue the given signals for a selector loop: watch ``fileno()``, then call ``drain()``.

    ``install`` and ``restore`` must run in the main thread (a CPython rule for signal handlers). The
    process has one wakeup fd: ``install`` takes it and ``restore`` gives the previous one back.
    """

    def __init__(self) -> None:
        self._reader, self._writer = socket.socketpair()
        self._reader.setblocking(False)
        self._writer.setblocking(False)
        self._previous: dict[int, _Handler] = {}
        self._previous_wakeup_fd: int | None = None

    def install(self, signums: Iterable[int]) -> None:
        if threading.current_thread() is not threading.main_thread():
            raise RuntimeError("signal handlers can only be installed from the main thread")
        if self._previous_wakeup_fd is None:
            self._previous_wakeup_fd = signal.set_wakeup_fd(self._writer.fileno(), warn_on_full_buffer=False)
        for signum in signums:
            previous = signal.signal(signum, _record_only)
            self._previous.setdefault(signum, previous)

    def fileno(self) -> int:
        return self._reader.fileno()

    def drain(self) -> list[int]:
        """The signals received since the last drain, in arrival order (only those installed here)."""
        data = b""
        try:
            while chunk := self._reader.recv(4096):
                data += chunk
        except BlockingIOError:
            pass
        # Other Python handlers in the process also write to the wakeup fd: keep only ours.
        return [signum for signum in data if signum in self._previous]

    def restore(self) -> None:
        """Put back the previous handlers and wakeup fd. Safe to call more than once."""
        for signum, previous in self._previous.items():
            signal.signal(signum, signal.SIG_DFL if previous is None else previous)
        self._previous.clear()
        if self._previous_wakeup_fd is not None:
            signal.set_wakeup_fd(self._previous_wakeup_fd)
            self._previous_wakeup_fd = None

    def close(self) -> None:
        """Restore, then release the socketpair."""
        self.restore()
        self._reader.close()
        self._writer.close()
