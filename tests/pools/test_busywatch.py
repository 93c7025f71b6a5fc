"""The master's busy watch (pools/busywatch.py) over a real scoreboard; the children's writers run here."""

from __future__ import annotations

import threading

from fcgiserve.pools.busywatch import BusyWatch
from fcgiserve.pools.scoreboard import Scoreboard, SlotWriter


def _board(children: int, lanes: int = 1) -> tuple[Scoreboard, list[SlotWriter]]:
    board = Scoreboard(slots=children + 1, lanes=lanes)  # one FREE slot: never idle, never busy
    writers = []
    for index in range(children):
        assert board.allocate(generation=1, now=0.0) == index
        writer = board.writer(index)
        writer.mark_starting(1000 + index)
        writer.mark_ready()
        writers.append(writer)
    return board, writers


def _busy(writer: SlotWriter) -> None:
    writer.serving_started()
    writer.request_started("GET /slow")


def _done(writer: SlotWriter) -> None:
    writer.request_finished()
    writer.serving_finished()


def test_a_child_full_at_two_looks_is_nudged_while_a_sibling_stays_idle() -> None:
    board, (busy, idle) = _board(2)
    watch = BusyWatch(board, threads_per_child=1)
    assert watch.look() == ([], False)  # at rest: nothing serves
    _busy(busy)
    assert watch.look() == ([], True)  # the first look only notes who is full and who idles
    assert watch.look() == ([0], True)  # same request, sibling still idle: nudge
    assert watch.look() == ([0], True)  # and again while it lasts (its parked connections may speak later)
    _done(busy)
    assert watch.look() == ([], False)
    del idle


def test_nobody_is_nudged_under_full_load() -> None:
    """Every child busy: handing a connection over would buy nothing and cost a pass through the channel."""
    board, writers = _board(3)
    watch = BusyWatch(board, threads_per_child=1)
    for writer in writers:
        _busy(writer)
    assert watch.look() == ([], True)
    assert watch.look() == ([], True)


def test_a_sibling_idle_only_between_two_requests_does_not_count() -> None:
    board, (stuck, other) = _board(2)
    watch = BusyWatch(board, threads_per_child=1)
    _busy(stuck)
    _busy(other)
    assert watch.look() == ([], True)
    _done(other)  # idle for a moment: at this look only
    assert watch.look() == ([], True)
    _busy(other)
    assert watch.look() == ([], True)


def test_a_child_that_finished_a_request_between_two_looks_is_not_stuck() -> None:
    board, (quick, _idle) = _board(2)
    watch = BusyWatch(board, threads_per_child=1)
    _busy(quick)
    assert watch.look() == ([], True)
    _done(quick)
    _busy(quick)  # busy again, but on the next request: it is taking its work as it comes
    assert watch.look() == ([], True)
    assert watch.look() == ([0], True)


def test_a_child_with_threads_is_full_only_when_every_thread_serves() -> None:
    board, (child, _idle) = _board(2, lanes=2)
    watch = BusyWatch(board, threads_per_child=2)
    results: list[tuple[list[int], bool]] = []

    def second_thread() -> None:  # a lane per thread, as in a child with two worker threads
        _busy(child)
        results.append(watch.look())
        results.append(watch.look())

    _busy(child)
    assert watch.look() == ([], True)
    assert watch.look() == ([], True)  # one of two threads busy: the other serves what comes
    thread = threading.Thread(target=second_thread)
    thread.start()
    thread.join()
    assert results == [([], True), ([0], True)]


def test_a_request_on_every_thread_is_full_without_a_serve_count() -> None:
    """A FastCGI child counts no threads in serve() (its serve() never waits: pools/child.py, tracked): its
    requests in progress make it full."""
    board, (busy, idle) = _board(2, lanes=2)
    watch = BusyWatch(board, threads_per_child=2)
    busy.request_started("GET /slow")
    watch.look()
    assert watch.look() == ([], True)  # one thread of two
    threading.Thread(target=busy.request_started, args=("GET /slow too",)).start()  # a lane per thread
    assert _until_full(watch) == [0]
    del idle


def _until_full(watch: BusyWatch) -> list[int]:
    for _ in range(100):
        stuck, _serving = watch.look()
        if stuck:
            return stuck
    return []
