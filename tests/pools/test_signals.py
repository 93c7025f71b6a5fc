"""SignalQueue: real signals sent to this process, read back after the wakeup socket woke the reader."""

from __future__ import annotations

import os
import select
import signal
import threading
import time
from collections.abc import Iterator

import pytest

from fcgiserve.signals import SignalQueue


@pytest.fixture
def queue() -> Iterator[SignalQueue]:
    q = SignalQueue()
    yield q
    q.close()


def _wait_readable(q: SignalQueue, timeout: float = 2.0) -> bool:
    readable, _, _ = select.select([q.fileno()], [], [], timeout)
    return bool(readable)


def _collect(q: SignalQueue, count: int, timeout: float = 2.0) -> list[int]:
    got: list[int] = []
    deadline = time.monotonic() + timeout
    while len(got) < count and time.monotonic() < deadline:
        if _wait_readable(q, max(0.0, deadline - time.monotonic())):
            got += q.drain()
    return got


def test_signals_are_queued_in_arrival_order(queue: SignalQueue) -> None:
    queue.install([signal.SIGUSR1, signal.SIGUSR2, signal.SIGHUP])
    for signum in (signal.SIGHUP, signal.SIGUSR2, signal.SIGUSR1):
        os.kill(os.getpid(), signum)
    assert _collect(queue, 3) == [signal.SIGHUP, signal.SIGUSR2, signal.SIGUSR1]
    assert queue.drain() == []


def test_fileno_is_quiet_until_a_signal_arrives(queue: SignalQueue) -> None:
    queue.install([signal.SIGUSR1])
    assert not _wait_readable(queue, 0.05)
    os.kill(os.getpid(), signal.SIGUSR1)
    assert _wait_readable(queue)
    assert queue.drain() == [signal.SIGUSR1]


def test_a_signal_delivered_while_the_main_thread_blocks_in_select_wakes_it(queue: SignalQueue) -> None:
    """The signal is sent from another thread while the main thread sits in select()."""
    queue.install([signal.SIGUSR2])
    sender = threading.Timer(0.05, os.kill, (os.getpid(), signal.SIGUSR2))
    sender.start()
    try:
        started = time.monotonic()
        assert _wait_readable(queue, 2.0)
        assert time.monotonic() - started < 1.0
        assert queue.drain() == [signal.SIGUSR2]
    finally:
        sender.join()


def test_a_signal_is_kept_when_the_wakeup_socket_is_full(queue: SignalQueue) -> None:
    """A flood of one signal (USR1 from a log rotation run in a loop) fills the socketpair, and CPython
    drops the wake-up byte of what comes next; the retirement (HUP) that came in between is kept all the
    same: the Python handler records it."""
    queue.install([signal.SIGUSR1, signal.SIGHUP])
    flood = 0
    with pytest.raises(BlockingIOError):
        while True:  # what the flood's wake-up bytes do to the socketpair
            flood += queue._writer.send(b"\x0a" * 512)
    assert flood > 0
    os.kill(os.getpid(), signal.SIGHUP)
    os.kill(os.getpid(), signal.SIGUSR1)
    assert _wait_readable(queue)
    assert queue.drain() == [signal.SIGHUP, signal.SIGUSR1]
    assert not _wait_readable(queue, 0.05)  # the flood's bytes were read with it


def test_a_handler_that_runs_after_a_drain_wakes_the_loop_again(queue: SignalQueue) -> None:
    """The C-level byte can be read before the Python handler has run (the signal went to another
    thread): the handler then writes a byte of its own, so the record does not wait for the next event."""
    queue.install([signal.SIGUSR1])
    assert queue.drain() == []
    queue._record(signal.SIGUSR1, None)  # the handler, as CPython runs it, late
    assert _wait_readable(queue, 0.5)
    assert queue.drain() == [signal.SIGUSR1]


def test_signals_not_installed_are_not_reported(queue: SignalQueue) -> None:
    """A handler someone else installed also writes to the wakeup fd; drain() keeps only ours."""
    seen: list[int] = []
    previous = signal.signal(signal.SIGUSR2, lambda signum, frame: seen.append(signum))
    try:
        queue.install([signal.SIGUSR1])
        os.kill(os.getpid(), signal.SIGUSR2)
        os.kill(os.getpid(), signal.SIGUSR1)
        assert _collect(queue, 1) == [signal.SIGUSR1]
        assert seen == [signal.SIGUSR2]
    finally:
        signal.signal(signal.SIGUSR2, previous)


def test_restore_puts_back_previous_handlers_and_wakeup_fd() -> None:
    def mine(signum: int, frame: object) -> None:
        pass

    previous_usr1 = signal.signal(signal.SIGUSR1, mine)
    previous_wakeup = signal.set_wakeup_fd(-1)
    try:
        q = SignalQueue()
        q.install([signal.SIGUSR1, signal.SIGHUP])
        assert signal.getsignal(signal.SIGUSR1) is not mine
        assert signal.set_wakeup_fd(q._writer.fileno()) == q._writer.fileno()
        q.close()
        assert signal.getsignal(signal.SIGUSR1) is mine
        assert signal.getsignal(signal.SIGHUP) is signal.SIG_DFL
        assert signal.set_wakeup_fd(-1) == -1
        q.close()  # idempotent
    finally:
        signal.signal(signal.SIGUSR1, previous_usr1)
        signal.set_wakeup_fd(previous_wakeup)


def test_install_outside_the_main_thread_is_refused(queue: SignalQueue) -> None:
    errors: list[BaseException] = []

    def install() -> None:
        try:
            queue.install([signal.SIGUSR1])
        except RuntimeError as exc:
            errors.append(exc)

    thread = threading.Thread(target=install)
    thread.start()
    thread.join(2)
    assert len(errors) == 1
    assert signal.getsignal(signal.SIGUSR1) is signal.SIG_DFL
