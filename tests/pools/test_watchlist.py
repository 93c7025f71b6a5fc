"""The watch list's listeners (pools/watchlist.py): one-shot for threads, exclusive between processes."""

from __future__ import annotations

import os
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


class _Conn:
    """A parked connection as the watch list sees it: a socket with ``fileno``."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    def fileno(self) -> int:
        return self.sock.fileno()


def _ready(watch: WatchList) -> list[int]:
    return [fd for fd, _ in watch.poll(0, 8)]


def test_one_worker_keeps_a_parked_connection_armed_across_requests() -> None:
    """exclusive (a prefork child's one worker): parked again after its request, the connection reports
    its next request without being registered again; the one worker never polls while it serves."""
    with _listener() as listener:
        watch = WatchList([listener], exclusive=True)
        near, far = socket.socketpair()
        conn = _Conn(far)
        for request in range(3):
            watch.park(conn, 0.0)  # type: ignore[arg-type]
            near.send(b"request %d" % request)
            assert _ready(watch) == [far.fileno()]
            assert watch.unpark(far.fileno()) is conn
            far.recv(64)  # served: read, answered
            assert _ready(watch) == []  # level-triggered: nothing left to read, nothing reported
        # Served and not parked again, yet readable: that event is stray, and unregisters it for good.
        near.send(b"unexpected")
        assert _ready(watch) == [far.fileno()]
        watch.stray(far.fileno())
        assert _ready(watch) == []
        watch.park(conn, 0.0)  # type: ignore[arg-type]
        assert _ready(watch) == [far.fileno()]  # parked again: registered again
        near.close()
        far.close()
        watch.close()


def test_one_worker_registers_a_new_connection_that_reuses_a_closed_ones_fd() -> None:
    """The kernel drops a closed socket's entry; a new connection given the same fd number must be
    registered, not taken for the old one (it would never be reported: a hung connection)."""
    with _listener() as listener:
        watch = WatchList([listener], exclusive=True)
        near, far = socket.socketpair()
        watch.park(_Conn(far), 0.0)  # type: ignore[arg-type]
        fd = far.fileno()
        watch.unpark(fd)
        far.close()
        near.close()
        near, far = socket.socketpair()
        if far.fileno() != fd:  # the lowest free number: the one just closed, unless near took it
            near, far = far, near
        assert far.fileno() == fd
        watch.park(_Conn(far), 0.0)  # type: ignore[arg-type]
        near.send(b"x")
        assert _ready(watch) == [fd]
        near.close()
        far.close()
        watch.close()


def test_one_worker_stops_hearing_of_a_connection_handed_away() -> None:
    """forget (a hand-off): the socket lives on in another process, so its entry would stay and report."""
    with _listener() as listener:
        watch = WatchList([listener], exclusive=True)
        near, far = socket.socketpair()
        conn = _Conn(far)
        watch.park(conn, 0.0)  # type: ignore[arg-type]
        watch.unpark(far.fileno())
        elsewhere = far.dup()  # what the receiving process holds
        watch.forget(far.fileno())
        far.close()
        near.send(b"for the new owner")
        assert _ready(watch) == []
        for sock in (near, elsewhere):
            sock.close()
        watch.close()


def test_one_worker_hears_nothing_more_of_a_closed_connection_another_process_holds() -> None:
    """A process the application forks holds every socket of the child: closing ours leaves the socket
    open, and with it the epoll entry, which would report the hang-up over and over (a spinning worker).
    A socket made by ``watched`` leaves the epoll before its fd closes."""
    with _listener() as listener:
        watch = WatchList([listener], exclusive=True)
        near, far = socket.socketpair()
        far = watch.watched(far)
        conn = _Conn(far)
        watch.park(conn, 0.0)  # type: ignore[arg-type]
        near.send(b"request")
        assert _ready(watch) == [far.fileno()]
        assert watch.unpark(far.fileno()) is conn
        far.recv(64)
        forked = far.dup()  # what a forked process holds
        far.shutdown(socket.SHUT_RDWR)  # as the handler closes: the peer sees the end
        far.close()
        near.close()
        for _ in range(3):
            assert _ready(watch) == []  # without it: the closed fd's hang-up, reported every time
        forked.close()
        watch.close()


def test_a_watched_socket_is_the_same_connection() -> None:
    """The wrapper changes nothing else: same fd, options, blocking mode; its hook runs once."""
    watch = WatchList([], exclusive=True)
    near, far = socket.socketpair()
    far.settimeout(2.5)
    fd = far.fileno()
    kept = watch.watched(far)
    assert (kept.fileno(), kept.family, kept.type, kept.gettimeout()) == (
        fd,
        socket.AF_UNIX,
        socket.SOCK_STREAM,
        2.5,
    )
    assert far.fileno() == -1  # detached: closing the old object cannot close the fd under us
    near.send(b"x")
    assert kept.recv(1) == b"x"
    kept.close()
    kept.close()
    assert kept.fileno() == -1
    near.close()
    watch.close()


def test_one_worker_reports_the_connections_it_holds_and_whether_some_are_kept() -> None:
    """on_held (a prefork child's slot): told when a watched connection opens, when it goes (closed or handed
    away) and when the first one is kept alive (parked after its request) or the last kept one goes; never
    per request."""
    with _listener() as listener:
        watch = WatchList([listener], exclusive=True)
        reports: list[tuple[int, bool]] = []
        watch.on_held = lambda held, keeps: reports.append((held, keeps))
        pairs = [socket.socketpair() for _ in range(2)]
        first = _Conn(watch.watched(pairs[0][1]))
        second = _Conn(watch.watched(pairs[1][1]))
        assert reports == [(1, False), (2, False)]  # open, not kept alive yet (closed after a response)
        for _request in range(3):
            watch.park(first, 0.0)  # type: ignore[arg-type]
            watch.unpark(first.fileno())
        assert reports[2:] == [(2, True)]
        watch.stray(first.fileno())  # out of the epoll until parked again
        watch.park(first, 0.0)  # type: ignore[arg-type]
        assert reports[3:] == [(2, False), (2, True)]
        watch.forget(second.fileno())  # handed away
        first.sock.close()  # closed by whoever served it
        assert reports[5:] == [(1, True), (1, False), (0, False)]
        watch.forget(second.fileno())  # gone already: nothing to report
        assert len(reports) == 8
        os.close(second.sock.detach())  # a hand-off sends the fd and lets go of it without a close()
        for near, far in pairs:
            near.close()
            far.close()
        watch.close()
