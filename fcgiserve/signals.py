"""Signals as data: handlers record, a selector loop acts.

A signal may be delivered to any thread, and CPython runs Python-level handlers only in the main
thread, between bytecodes: a main thread blocked in ``select()`` would not notice a signal that
another thread received. ``signal.set_wakeup_fd`` closes that gap: CPython's C-level handler writes
a byte to our socketpair at delivery, in whichever thread took the signal, and the selector wakes.

That byte is only the wake-up, not the record. The socketpair is finite and CPython drops the byte
when it is full: under a flood of one signal (a log rotation run in a loop), a stop or a retirement
that came in between would be lost. The record is kept by the Python handler instead, which CPython
never loses (a signal that arrives again before its handler ran is run once, as the kernel merges a
pending signal too). The handler runs in the main thread, appends to a deque and writes a byte of its
own, so a loop that drained before the handler ran is woken again.
"""

from __future__ import annotations

import signal
import socket
import threading
from collections import deque
from collections.abc import Iterable
from types import FrameType
from typing import Any

__all__ = ["SignalQueue"]

_Handler = Any  # what signal.getsignal returns: a callable, SIG_DFL, SIG_IGN or None


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
        self._received: deque[int] = deque()
        self._wake_pending = False  # our own wake-up byte is in the socket, unread

    def install(self, signums: Iterable[int]) -> None:
        if threading.current_thread() is not threading.main_thread():
            raise RuntimeError("signal handlers can only be installed from the main thread")
        if self._previous_wakeup_fd is None:
            self._previous_wakeup_fd = signal.set_wakeup_fd(self._writer.fileno(), warn_on_full_buffer=False)
        for signum in signums:
            previous = signal.signal(signum, self._record)
            self._previous.setdefault(signum, previous)

    def fileno(self) -> int:
        return self._reader.fileno()

    def _record(self, signum: int, frame: FrameType | None) -> None:
        """The Python handler (main thread, between bytecodes): record, then wake the loop, once per drain.
        No logging, no locks. After close() the send fails and the record is never read, which is harmless.

        CPython runs a handler again inside one still running when the next signal comes, so under a flood
        every instruction here deepens the nesting: the send only when no byte of ours waits unread. A
        handler that wrote on every signal nested until an exception escaped into the serving loop."""
        self._received.append(signum)
        if not self._wake_pending:
            self._wake_pending = True
            try:
                self._writer.send(b"\0")
            except OSError:  # full (the loop wakes anyway) or closed (the queue is gone)
                pass

    def drain(self) -> list[int]:
        """The signals received since the last drain, in the order their handlers ran: arrival order,
        except that signals arriving together come in signal-number order (CPython runs pending handlers
        by number). Only signals installed here, however many wake-up bytes were dropped."""
        try:
            while self._reader.recv(4096):
                pass
        except BlockingIOError:
            pass
        # After the wake-up bytes: a handler that runs from here on writes a byte and wakes the loop. One
        # that runs before this line writes none, and its signal is taken below.
        self._wake_pending = False
        received = self._received
        signums = []
        while received:
            signums.append(received.popleft())
        return signums

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
