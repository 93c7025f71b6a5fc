"""The watch list's listeners (pools/watchlist.py): one-shot for threads, exclusive between processes."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from fcgiserve.pools.watchlist import WatchList


@contextmanager
def _listener() -> Iterator[socket.socket]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    try:
        yield sock
    finally:
        sock.close()


def _woken(lists: list[WatchList], timeout: float = 0.5) -> list[bool]:
    """Poll every list at once (each in its own thread, as each prefork child waits in its own epoll)
    while one connection arrives; which of them were woken."""
    woken = [False] * len(lists)
    waiting = threading.Barrier(len(lists) + 1)

    def wait(index: int) -> None:
        waiting.wait()
        woken[index] = bool(lists[index].poll(timeout, 1))

    threads = [threading.Thread(target=wait, args=(i,)) for i in range(len(lists))]
    for thread in threads:
        thread.start()
    waiting.wait()
    threading.Event().wait(0.1)  # every thread is inside epoll_wait
    client = socket.create_connection(lists[0].listeners[next(iter(lists[0].listeners))].getsockname())
    for thread in threads:
        thread.join(5)
    client.close()
    return woken


def test_exclusive_listeners_wake_one_waiting_epoll_per_connection() -> None:
    """Six idle prefork children used to wake for every new connection; five found the backlog empty."""
    with _listener() as listener:
        lists = [WatchList([listener], exclusive=True) for _ in range(4)]
        for watch in lists:
            watch.arm_listeners()
        assert sum(_woken(lists)) == 1
        for watch in lists:
            watch.close()


def test_one_shot_listeners_wake_every_waiting_epoll() -> None:
    """The threaded pool's mode (one epoll, one waiting leader): shown here across epolls for contrast."""
    with _listener() as listener:
        lists = [WatchList([listener]) for _ in range(3)]
        for watch in lists:
            watch.arm_listeners()
        assert sum(_woken(lists)) == 3
        for watch in lists:
            watch.close()


def test_exclusive_listener_stays_armed_after_an_event_until_declined() -> None:
    with _listener() as listener:
        watch = WatchList([listener], exclusive=True)
        watch.arm_listeners()
        client = socket.create_connection(listener.getsockname())
        events = watch.poll(1.0, 4)
        assert [fd for fd, _ in events] == [listener.fileno()]
        assert watch.fired_listener(listener.fileno()) is listener
        assert watch.poll(0, 4), "level-triggered: the backlog is reported again while armed"
        watch.declined(listener.fileno())
        assert watch.poll(0, 4) == []
        watch.arm_listeners()
        assert watch.poll(0, 4), "armed again: the connection still waits in the backlog"
        watch.disarm_listeners()
        assert watch.poll(0, 4) == []
        client.close()
        watch.forget_listeners()
        watch.close()


def test_one_shot_listener_is_disarmed_by_its_event() -> None:
    with _listener() as listener:
        watch = WatchList([listener])
        watch.arm_listeners()
        client = socket.create_connection(listener.getsockname())
        assert [fd for fd, _ in watch.poll(1.0, 4)] == [listener.fileno()]
        assert watch.fired_listener(listener.fileno()) is listener
        assert watch.poll(0, 4) == []
        watch.arm_listeners()
        assert watch.poll(0, 4)
        client.close()
        watch.close()
