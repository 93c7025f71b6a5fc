"""The prefork scoreboard: slot ownership, lanes, truncation and torn-read protection (real fork)."""

from __future__ import annotations

import os
import struct
import threading
import time
from collections.abc import Callable

import pytest

from fcgiserve.pools.scoreboard import LINE_BYTES, Scoreboard, SlotState


def _fork(body: Callable[[], None]) -> int:
    """Run ``body()`` in a forked child that never returns into pytest; returns the pid."""
    pid = os.fork()
    if pid == 0:
        status = 1
        try:
            body()
            status = 0
        finally:
            os._exit(status)
    return pid


def _wait_ok(pid: int) -> None:
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


def test_allocate_release_and_full_board() -> None:
    board = Scoreboard(slots=2, lanes=1)
    try:
        first = board.allocate(generation=3, now=12.5)
        second = board.allocate(generation=4, now=13.0)
        assert (first, second) == (0, 1)
        assert board.allocate(generation=4, now=13.0) is None
        snap = board.read(0)
        assert (snap.state, snap.generation, snap.started_at, snap.pid) == (SlotState.STARTING, 3, 12.5, 0)
        board.release(0)
        assert [s.index for s in board.snapshot()] == [1]
        assert board.allocate(generation=5, now=14.0) == 0
    finally:
        board.close()


def test_child_writes_are_visible_to_the_master() -> None:
    board = Scoreboard(slots=4, lanes=2)
    try:
        index = board.allocate(generation=1, now=time.monotonic())
        assert index is not None
        ready = os.pipe()

        def child() -> None:
            writer = board.writer(index)
            writer.mark_starting(os.getpid())
            writer.mark_ready()
            writer.request_started("GET /done")
            writer.request_finished()
            writer.request_started("POST /upload?x=1")
            os.write(ready[1], b"x")
            time.sleep(5)  # killed by the test

        pid = _fork(child)
        assert os.read(ready[0], 1) == b"x"
        snap = board.read(index)
        os.kill(pid, 9)
        os.waitpid(pid, 0)
        assert (snap.pid, snap.state, snap.active, snap.served) == (pid, SlotState.READY, 1, 1)
        assert [r.line for r in snap.requests] == ["POST /upload?x=1"]
        assert snap.oldest_busy_since() is not None
        assert time.monotonic() - snap.requests[0].busy_since < 5
        assert not snap.idle
    finally:
        board.close()


def test_request_line_is_truncated_and_idle_after_finish() -> None:
    board = Scoreboard(slots=1, lanes=1)
    try:
        index = board.allocate(generation=1, now=0.0)
        assert index == 0
        writer = board.writer(index)
        writer.mark_ready()
        writer.request_started("GET /" + "é" * 300)
        (request,) = board.read(index).requests
        assert len(request.line.encode("utf-8", "replace")) <= LINE_BYTES
        assert request.line.startswith("GET /éé")
        writer.request_finished()
        snap = board.read(index)
        assert snap.idle and snap.requests == () and snap.served == 1
        assert snap.oldest_busy_since() is None
    finally:
        board.close()


def test_more_requests_than_lanes_are_counted_and_lanes_are_per_thread() -> None:
    board = Scoreboard(slots=1, lanes=2)
    try:
        writer = board.writer(0)
        started = threading.Barrier(4)
        release = threading.Event()

        def worker(n: int) -> None:
            writer.request_started(f"GET /{n}")
            started.wait(timeout=5)
            release.wait(timeout=5)
            writer.request_finished()

        threads = [threading.Thread(target=worker, args=(n,)) for n in range(3)]
        for thread in threads:
            thread.start()
        started.wait(timeout=5)
        snap = board.read(0)
        assert snap.active == 3 and len(snap.requests) == 2
        assert len(writer.busy_threads()) == 2
        release.set()
        for thread in threads:
            thread.join(timeout=5)
        snap = board.read(0)
        assert (snap.active, snap.served, snap.requests) == (0, 3, ())
    finally:
        board.close()


def test_request_finished_on_a_foreign_thread_frees_a_lane() -> None:
    """A lane left busy would look like a stuck request to the master's timeout check."""
    board = Scoreboard(slots=1, lanes=1)
    try:
        writer = board.writer(0)
        thread = threading.Thread(target=writer.request_started, args=("GET /x",))
        thread.start()
        thread.join(timeout=5)
        writer.request_finished()
        assert board.read(0).requests == ()
    finally:
        board.close()


def test_master_never_sees_a_torn_slot() -> None:
    """While a child rewrites its slot in a tight loop, every read is self-consistent: a busy slot's
    request line always names the request number equal to ``served``, an idle one holds no line."""
    board = Scoreboard(slots=1, lanes=1)
    try:
        index = board.allocate(generation=1, now=0.0)
        assert index == 0

        def child() -> None:
            writer = board.writer(index)
            writer.mark_ready()
            deadline = time.monotonic() + 1.0
            n = 0
            while time.monotonic() < deadline:
                writer.request_started(f"GET /{n}" + "x" * (n % 150))
                time.sleep(0)  # a gap between writes, as between real requests; the reader must not starve
                writer.request_finished()
                time.sleep(0)
                n += 1

        pid = _fork(child)
        checked = 0
        deadline = time.monotonic() + 0.8
        while time.monotonic() < deadline:
            snap = board.read(index)
            if not snap.consistent:  # the writer was preempted mid-write for longer than the patience
                continue
            if snap.active:
                (request,) = snap.requests
                assert request.line == f"GET /{snap.served}" + "x" * (snap.served % 150)
                checked += 1
            else:
                assert snap.requests == ()
        _wait_ok(pid)
        assert checked > 10
    finally:
        board.close()


def test_release_resets_a_slot_left_mid_write() -> None:
    board = Scoreboard(slots=1, lanes=1)
    try:
        index = board.allocate(generation=1, now=0.0)
        assert index == 0
        writer = board.writer(index)
        # A child killed between the two counter writes: the counter stays odd from then on.
        writer._seq += 1
        struct.pack_into("=I", board._map, 0, writer._seq)
        writer.request_started("GET /a")
        snap = board.read(index)
        assert (snap.active, snap.consistent) == (1, False)  # what it read, flagged
        board.release(index)
        assert board.allocate(generation=2, now=1.0) == 0
        assert board.read(index).generation == 2
    finally:
        board.close()


@pytest.mark.parametrize(("slots", "lanes"), [(0, 1), (1, 0)])
def test_empty_board_is_refused(slots: int, lanes: int) -> None:
    with pytest.raises(ValueError):
        Scoreboard(slots=slots, lanes=lanes)


def test_a_thread_in_serve_makes_the_child_busy_before_any_request() -> None:
    """A prefork child stops accepting once a thread is in serve(): the master must not count it idle."""
    board = Scoreboard(slots=1, lanes=1)
    try:
        index = board.allocate(generation=7, now=time.monotonic())
        assert index == 0
        writer = board.writer(index)
        assert board.read(index).status == "starting"
        writer.mark_ready()
        assert board.read(index).status == "idle"
        writer.serving_started()
        snap = board.read(index)
        assert (snap.idle, snap.status, snap.serving, snap.active) == (False, "busy", 1, 0)
        writer.request_started("GET /slow")
        described = board.read(index).describe(time.monotonic())
        assert described["current_request"] == "GET /slow" and described["generation"] == 7
        writer.request_finished()
        writer.serving_finished()
        assert board.read(index).status == "idle"
        writer.retire_after = 2
        writer.request_started("GET /last")
        writer.request_finished()
        assert board.read(index).status == "stopping"  # max_requests reached: draining, not a spare
    finally:
        board.close()


@pytest.mark.parametrize("lanes", [1, 3])
def test_a_request_s_field_stores_read_back_as_a_whole_slot_write_would(lanes: int) -> None:
    """The writer stores a request's changed fields one by one at fixed offsets, while the reader unpacks
    the whole slot: both must agree on every field, in every slot and lane, up to the counter's wrap."""
    board = Scoreboard(slots=3, lanes=lanes)
    try:
        for slot in range(3):
            assert board.allocate(generation=7, now=50.0 + slot) == slot
        writer = board.writer(1)
        writer.mark_starting(4242)
        writer.mark_ready()
        writer.retire_after = 3
        writer._seq = 0xFFFFFFFE  # the next write wraps the counter
        started = time.monotonic()
        writer.request_started("GET /" + "é" * 300)  # a multi-byte line longer than a lane holds
        snap = board.read(1)
        assert (snap.state, snap.pid, snap.generation, snap.active, snap.served) == (
            SlotState.READY,
            4242,
            7,
            1,
            0,
        )
        assert snap.started_at == 51.0 and snap.busy_seconds == 0.0
        assert len(snap.requests) == 1 and snap.requests[0].busy_since >= started
        assert (
            snap.requests[0].line.startswith("GET /é") and len(snap.requests[0].line.encode()) <= LINE_BYTES
        )
        for _ in range(3):
            writer.request_finished()
            writer.request_started("POST /next")
        writer.request_finished()
        snap = board.read(1)
        assert (snap.active, snap.served, snap.requests) == (0, 4, ())
        assert snap.state is SlotState.STOPPING  # retire_after reached on the third request
        assert 0.0 < snap.busy_seconds < time.monotonic() - started
        # The neighbours' slots are untouched.
        assert [(s.pid, s.state, s.started_at) for s in (board.read(0), board.read(2))] == [
            (0, SlotState.STARTING, 50.0),
            (0, SlotState.STARTING, 52.0),
        ]
    finally:
        board.close()


def test_keepers_counts_the_siblings_that_hold_connections_while_some_are_kept_alive() -> None:
    """What a one-thread child without connections reads before it takes a new one (dispatch.py defer)."""
    board = Scoreboard(slots=5, lanes=1)
    try:
        writers = []
        for _ in range(5):
            index = board.allocate(generation=1, now=time.monotonic())
            assert index is not None
            writer = board.writer(index)
            writer.mark_starting(os.getpid())
            writer.mark_ready()
            writers.append(writer)

        def keepers(besides: int) -> int:
            """How many: the largest ``enough`` that ``keepers`` grants."""
            return max((n for n in range(1, 5) if board.keepers(besides, n)), default=0)

        writers[1].connections(1, False)
        writers[2].connections(3, False)
        writers[2].request_started("GET /b")
        assert keepers(0) == 0  # nothing kept alive: the web server closes connections, nobody waits
        writers[1].connections(1, True)  # parked after its request: the web server keeps connections
        assert keepers(0) == 2
        assert keepers(1) == 1  # a child does not count itself
        writers[3].connections(2, True)
        writers[3].mark_stopping()  # draining: it takes no new connection, and counts for nothing
        assert keepers(0) == 2
        writers[1].mark_stopping()
        assert keepers(0) == 0  # slot 2 holds connections, but no serving child keeps any alive
        writers[4].connections(1, True)
        assert keepers(0) == 2
        writers[2].connections(0, False)
        assert keepers(0) == 1
        snap = board.read(4)
        assert (snap.held, snap.keeps, snap.active, snap.served) == (1, True, 0, 0)
        writers[2].request_finished()
        snap = board.read(2)
        assert (snap.held, snap.keeps, snap.active, snap.served) == (0, False, 0, 1)  # fields kept apart
        for writer in writers:
            writer.release()
    finally:
        board.close()
