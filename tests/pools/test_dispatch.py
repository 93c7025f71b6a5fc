"""Dispatcher: real loopback sockets, real worker threads, the line protocol as the handler."""

from __future__ import annotations

import contextlib
import logging
import os
import random
import re
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from fcgiserve.pools import dispatch
from fcgiserve.pools.dispatch import Dispatcher
from tests.pools.lineproto import (
    WORKER_PREFIX,
    LineClient,
    LineFactory,
    close_clients,
    tcp_listener,
    wait_until,
    worker_threads,
)


@pytest.fixture(autouse=True)
def _no_leaked_clients() -> Iterator[None]:
    yield
    close_clients()


@contextlib.contextmanager
def running(dispatcher: Dispatcher) -> Iterator[threading.Thread]:
    """serve_forever in a background thread, stopped at once on the way out whatever the test did."""
    thread = threading.Thread(target=dispatcher.serve_forever, name="test-selector")
    thread.start()
    try:
        assert dispatcher.ready.wait(2)
        yield thread
    finally:
        dispatcher.stop(graceful=False, timeout=0)
        thread.join(5)


@contextlib.contextmanager
def serving(
    listener: socket.socket, factory: LineFactory | None = None, **options: Any
) -> Iterator[tuple[Dispatcher, LineFactory]]:
    """Run a Dispatcher in a background thread; stop it and check that it and its workers are gone."""
    factory = factory if factory is not None else LineFactory()
    settings: dict[str, Any] = {"min_spare": 1, "max_spare": 4, "max_threads": 8}
    settings.update(options)
    dispatcher = Dispatcher([listener], factory, **settings)
    errors: list[BaseException] = []

    def run() -> None:
        try:
            dispatcher.serve_forever()
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=run, name="test-selector")
    thread.start()
    try:
        assert dispatcher.ready.wait(2)
        yield dispatcher, factory
    finally:
        dispatcher.stop(graceful=False, timeout=0)
        thread.join(5)
    assert not thread.is_alive()
    assert errors == []
    assert wait_until(lambda: not worker_threads(), 2)


def test_accepted_tcp_connections_get_tcp_nodelay() -> None:
    with tcp_listener() as listener, serving(listener) as (_, factory):
        client = LineClient(listener.getsockname())
        assert client.request("ECHO a") == "a"
        assert factory.sockets[0].getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
        client.close()


def test_ipv6_connections_get_tcp_nodelay() -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    listener = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    try:
        listener.bind(("::1", 0))
    except OSError:
        listener.close()
        pytest.skip("no IPv6 loopback")
    listener.listen(8)
    with listener, serving(listener) as (_, factory):
        client = LineClient(listener.getsockname()[:2], socket.AF_INET6)
        assert client.request("ECHO six") == "six"
        assert factory.sockets[0].getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
        client.close()


def test_unix_socket_connections_are_served(tmp_path: Any) -> None:
    path = str(tmp_path / "fcgi.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(8)
    with listener, serving(listener):
        client = LineClient(path, socket.AF_UNIX)
        assert client.request("ECHO unix") == "unix"
        client.close()


def test_min_spare_threads_start_and_idle_threads_above_max_spare_exit() -> None:
    shape = {"min_spare": 2, "max_spare": 3, "max_threads": 10, "spare_idle_time": 0.3}
    with tcp_listener() as listener, serving(listener, **shape) as (d, f):
        factory = f
        assert wait_until(lambda: len(worker_threads()) == 2)
        assert d.idle_threads == 2
        clients = [LineClient(listener.getsockname()) for _ in range(8)]
        for client in clients:
            client.send("SLEEP 0.3")
        assert wait_until(lambda: factory.in_progress == 8)
        assert d.busy_requests == 8
        # Eight busy, and the dispatcher keeps min_spare idle on top of them.
        assert wait_until(lambda: d.idle_threads >= 2)
        assert wait_until(lambda: len(worker_threads()) == d.thread_count == 10)
        assert [client.read_line() for client in clients] == ["SLEPT"] * 8
        # All finished: at most max_spare idle threads stay; the others have exited.
        assert wait_until(lambda: len(worker_threads()) == 3)
        assert d.thread_count == d.idle_threads == 3
        assert d.requests_served == 8
        for client in clients:
            client.close()


def test_spare_threads_stay_while_the_load_may_come_back() -> None:
    """No thread churn: threads above max_spare wait spare_idle_time before exiting, and a new burst keeps
    them (starting and ending threads on every swing of the load costs CPU on every request)."""
    shape = {"min_spare": 1, "max_spare": 1, "max_threads": 6, "spare_idle_time": 1.5}
    with tcp_listener() as listener, serving(listener, **shape) as (d, _):
        for _burst in range(3):
            clients = [LineClient(listener.getsockname()) for _ in range(5)]
            for client in clients:
                client.send("SLEEP 0.2")
            assert [client.read_line() for client in clients] == ["SLEPT"] * 5
            for client in clients:
                client.close()
            time.sleep(0.3)
            assert d.thread_count == 6  # five busy plus the spare kept beside them, none exited yet
        assert wait_until(lambda: d.thread_count == 1, timeout=6)
        assert d.idle_threads == 1


def test_short_requests_are_served_by_the_leader_without_a_hand_off() -> None:
    """Lazy promotion: a leader that takes a job wakes nobody; when the job ends it leads again. So
    requests that never overlap are all served by one thread, however many connections carry them."""
    options = {"min_spare": 2, "max_spare": 4, "promote_after": 30.0}
    with tcp_listener() as listener, serving(listener, **options) as (d, f):
        clients = [LineClient(listener.getsockname()) for _ in range(4)]
        for round_ in range(25):
            for index, client in enumerate(clients):
                assert client.request(f"ECHO {round_}-{index}") == f"{round_}-{index}"
        assert len(f.served_by) == 100
        assert len(set(f.served_by)) == 1, set(f.served_by)
        assert d.idle_threads >= 2  # the followers were there all along, never needed
        for client in clients:
            client.close()


def test_a_long_job_gets_a_follower_promoted_to_serve_the_others() -> None:
    """A job that runs past promote_after (an application waiting on I/O) does not hold up the other
    connections: the control thread promotes a follower, which serves them meanwhile."""
    options = {"min_spare": 1, "max_spare": 4, "promote_after": 0.02}
    with tcp_listener() as listener, serving(listener, **options) as (_, f):
        slow = LineClient(listener.getsockname())
        slow.send("SLEEP 1.5")
        assert wait_until(lambda: f.in_progress == 1)
        quick = [LineClient(listener.getsockname()) for _ in range(3)]
        started = time.monotonic()
        assert [c.request(f"ECHO {i}") for i, c in enumerate(quick)] == ["0", "1", "2"]
        assert time.monotonic() - started < 1.0  # served while the slow job still runs
        assert f.in_progress == 1
        assert slow.read_line() == "SLEPT"
        for client in [slow, *quick]:
            client.close()


def test_a_burst_of_new_connections_is_accepted_ahead_and_served_in_order() -> None:
    with tcp_listener() as listener, serving(listener, min_spare=1, max_spare=2, max_threads=8) as (d, _):
        d.pause_accepting()
        clients = [LineClient(listener.getsockname()) for _ in range(12)]
        for index, client in enumerate(clients):
            client.send(f"ECHO {index}")
        d.resume_accepting()
        assert [client.read_line() for client in clients] == [str(i) for i in range(12)]
        assert d.open_connections == 12
        for client in clients:
            client.close()
        assert wait_until(lambda: d.open_connections == 0)


def test_silent_new_connections_cost_no_thread_and_close_after_fresh_timeout(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """New connections are parked until their first byte: six silent ones hold none of the two threads,
    a seventh that speaks is served at once, and the silent ones are closed after fresh_timeout."""
    options = {"min_spare": 1, "max_spare": 2, "max_threads": 2, "fresh_timeout": 0.5}
    with (
        caplog.at_level(logging.WARNING, "fcgiserve.pools"),
        tcp_listener() as listener,
        serving(listener, **options) as (d, f),
    ):
        silent = [LineClient(listener.getsockname()) for _ in range(6)]
        assert wait_until(lambda: d.open_connections == 6)
        talker = LineClient(listener.getsockname())
        assert talker.request("ECHO still") == "still"
        assert wait_until(lambda: d.busy_threads == 0) and f.serve_calls == 1
        assert wait_until(lambda: d.open_connections == 1, timeout=3)
        for client in silent:
            assert client.read_line() == ""  # closed by the server, nothing sent
        closed = re.findall(r"closed (\d+) new connection\(s\) that sent nothing within 0.5s", caplog.text)
        assert sum(map(int, closed)) == 6
        assert talker.request("ECHO kept") == "kept"  # the one that spoke is not among them
        for client in [*silent, talker]:
            client.close()


def test_max_threads_is_never_exceeded_under_twenty_concurrent_slow_requests() -> None:
    with tcp_listener() as listener, serving(listener, min_spare=1, max_spare=2, max_threads=4) as (d, f):
        factory = f
        clients = [LineClient(listener.getsockname()) for _ in range(20)]
        started = time.monotonic()
        for client in clients:
            client.send("SLEEP 0.1")
        assert [client.read_line() for client in clients] == ["SLEPT"] * 20
        elapsed = time.monotonic() - started
        assert factory.max_in_progress == 4
        assert factory.max_worker_threads <= 4
        assert elapsed >= 0.5  # five rounds of four
        assert d.requests_served == 20
        for client in clients:
            client.close()


def test_connections_beyond_capacity_wait_in_the_backlog_and_are_never_refused() -> None:
    """One thread, a listen backlog of 16 and 12 clients that each close after one request."""
    with (
        tcp_listener(backlog=16) as listener,
        serving(listener, min_spare=1, max_spare=1, max_threads=1) as (
            d,
            factory,
        ),
    ):
        clients = [LineClient(listener.getsockname()) for _ in range(12)]
        for client in clients:
            client.send("SLEEP 0.02")
            client.send("QUIT")
        # The rest wait, in the kernel's queue or accepted and parked (costing no thread), never refused.
        assert wait_until(lambda: factory.in_progress == 1)
        assert len(worker_threads()) == 1
        for client in clients:
            assert client.read_line() == "SLEPT"
            assert client.read_line() == "BYE"
            assert client.read_line() == ""
            client.close()
        assert factory.max_in_progress == 1
        assert wait_until(lambda: d.open_connections == 0)


def test_parked_connections_cost_no_thread() -> None:
    """max_threads=2, ten idle kept-alive connections: an 11th and a parked one are still served promptly."""
    with tcp_listener() as listener, serving(listener, min_spare=1, max_spare=2, max_threads=2) as (d, f):
        factory = f
        address = listener.getsockname()
        parked = [LineClient(address) for _ in range(10)]
        for n, client in enumerate(parked):
            assert client.request(f"ECHO {n}") == str(n)
        assert wait_until(lambda: d.parked_connections == 10)
        assert d.busy_threads == 0
        assert len(worker_threads()) <= 2
        started = time.monotonic()
        newcomer = LineClient(address)
        assert newcomer.request("ECHO new") == "new"
        assert parked[7].request("ECHO again") == "again"
        assert time.monotonic() - started < 0.5
        assert d.open_connections == 11
        for client in [*parked, newcomer]:
            client.close()
        # Each close is noticed (EOF while parked -> a worker serves it -> serve() returns False).
        assert wait_until(lambda: d.open_connections == 0)
        assert factory.closed == 11


def test_a_parked_connection_that_becomes_readable_waits_for_a_busy_pool() -> None:
    with tcp_listener() as listener, serving(listener, min_spare=0, max_spare=1, max_threads=1) as (d, _):
        address = listener.getsockname()
        idle = LineClient(address)
        assert idle.request("ECHO park") == "park"
        assert wait_until(lambda: d.parked_connections == 1)
        slow = LineClient(address)
        slow.send("SLEEP 0.2")
        assert wait_until(lambda: d.busy_requests == 1)
        idle.send("ECHO later")
        assert slow.read_line() == "SLEPT"
        assert idle.read_line() == "later"
        idle.close()
        slow.close()


def test_idle_timeout_closes_parked_connections() -> None:
    with tcp_listener() as listener, serving(listener, idle_timeout=0.2) as (d, _):
        address = listener.getsockname()
        quiet = LineClient(address)
        chatty = LineClient(address)
        assert quiet.request("ECHO 1") == "1"
        started = time.monotonic()
        for n in range(6):  # keeps re-parking, so its idle clock restarts
            assert chatty.request(f"ECHO {n}") == str(n)
            time.sleep(0.06)
        assert quiet.read_line() == ""  # EOF: the pool closed it
        assert 0.15 < time.monotonic() - started < 1.5
        assert chatty.request("ECHO alive") == "alive"
        assert wait_until(lambda: d.parked_connections == 1)
        quiet.close()
        chatty.close()


def test_max_connections_pauses_accept_without_refusing() -> None:
    with tcp_listener() as listener, serving(listener, max_connections=2) as (d, _):
        address = listener.getsockname()
        first, second = LineClient(address), LineClient(address)
        assert first.request("ECHO 1") == "1"
        assert second.request("ECHO 2") == "2"
        third = LineClient(address)  # connects (kernel backlog) but is not accepted
        third.send("ECHO 3")
        time.sleep(0.1)
        assert d.open_connections == 2
        first.close()
        assert third.read_line() == "3"
        second.close()
        third.close()


def test_accept_while_busy_false_leaves_new_connections_to_siblings() -> None:
    with tcp_listener() as listener, serving(listener, accept_while_busy=False) as (d, factory):
        address = listener.getsockname()
        slow = LineClient(address)
        slow.send("SLEEP 0.3")
        assert wait_until(lambda: factory.in_progress == 1)
        waiting = LineClient(address)
        waiting.send("ECHO next")
        time.sleep(0.1)
        assert d.open_connections == 1  # not accepted while a request runs here
        assert slow.read_line() == "SLEPT"
        assert waiting.read_line() == "next"
        slow.close()
        waiting.close()


def test_pause_and_resume_accepting() -> None:
    with tcp_listener() as listener, serving(listener) as (d, _):
        d.pause_accepting()
        client = LineClient(listener.getsockname())
        client.send("ECHO hello")
        time.sleep(0.1)
        assert d.open_connections == 0
        d.resume_accepting()
        assert client.read_line() == "hello"
        client.close()


def test_refused_connections_are_not_counted_open() -> None:
    factory = LineFactory(refuse=lambda peer: True)
    with tcp_listener() as listener, serving(listener, factory) as (d, _):
        client = LineClient(listener.getsockname())
        assert client.read_line() == ""
        assert wait_until(lambda: d.open_connections == 0)
        assert len(factory.peers) == 1
        client.close()


def test_a_failing_connection_is_logged_closed_and_the_worker_survives(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with (
        tcp_listener() as listener,
        serving(listener, min_spare=1, max_spare=1, max_threads=1) as (d, _),
        caplog.at_level(logging.ERROR, "fcgiserve.pools"),
    ):
        address = listener.getsockname()
        crasher = LineClient(address)
        crasher.send("CRASH")
        assert crasher.read_line() == ""
        assert LineClient(address).request("ECHO still here") == "still here"
        assert "serving a connection failed" in caplog.text
        assert d.thread_count == 1
        crasher.close()


def test_graceful_stop_finishes_in_flight_requests_and_leaves_the_listener_open() -> None:
    with tcp_listener() as listener:
        factory = LineFactory()
        dispatcher = Dispatcher([listener], factory, min_spare=1, max_spare=2, max_threads=4)
        with running(dispatcher) as thread:
            address = listener.getsockname()
            idle = LineClient(address)
            assert idle.request("ECHO park") == "park"
            assert wait_until(lambda: dispatcher.parked_connections == 1)
            slow = LineClient(address)
            slow.send("SLEEP 0.3")
            assert wait_until(lambda: factory.in_progress == 1)
            dispatcher.stop(graceful=True, timeout=5)
            assert idle.read_line() == ""  # parked: closed at the end of the drain period
            late = LineClient(address)  # the listener is still open: this waits in the backlog
            late.send("ECHO late")
            assert slow.read_line() == "SLEPT"
            thread.join(3)
            assert not thread.is_alive()
            assert not worker_threads()
            assert dispatcher.requests_served == 2
            # The un-accepted connection is still queued on the listener, its request intact.
            listener.settimeout(1)
            accepted, _ = listener.accept()
            with accepted:
                assert accepted.recv(100) == b"ECHO late\n"
            for client in (idle, slow, late):
                client.close()


def test_graceful_stop_that_runs_out_of_time_closes_what_is_left() -> None:
    with tcp_listener() as listener:
        factory = LineFactory()
        dispatcher = Dispatcher([listener], factory, min_spare=1, max_spare=2, max_threads=4)
        with running(dispatcher) as thread:
            slow = LineClient(listener.getsockname())
            slow.send("SLEEP 1")
            assert wait_until(lambda: factory.in_progress == 1)
            started = time.monotonic()
            dispatcher.stop(graceful=True, timeout=0.2)
            thread.join(3)
            assert not thread.is_alive()
            assert 0.2 <= time.monotonic() - started < 0.8
            assert factory.closed == 1  # close() was called on the connection still in service
            slow.close()
            assert wait_until(lambda: not worker_threads(), 3)


def test_immediate_stop_closes_everything_now() -> None:
    with tcp_listener() as listener:
        factory = LineFactory()
        dispatcher = Dispatcher([listener], factory, min_spare=1, max_spare=2, max_threads=4)
        with running(dispatcher) as thread:
            address = listener.getsockname()
            idle = LineClient(address)
            assert idle.request("ECHO park") == "park"
            slow = LineClient(address)
            slow.send("SLEEP 1")
            assert wait_until(lambda: factory.in_progress == 1)
            started = time.monotonic()
            dispatcher.stop(graceful=False)
            thread.join(3)
            assert time.monotonic() - started < 0.5
            assert idle.read_line() == ""
            assert slow.read_line() == ""
            assert listener.fileno() != -1
            idle.close()
            slow.close()
            assert wait_until(lambda: not worker_threads(), 3)


def test_stop_before_serve_forever_returns_at_once() -> None:
    with tcp_listener() as listener:
        dispatcher = Dispatcher([listener], LineFactory(), min_spare=2, max_spare=2, max_threads=2)
        dispatcher.stop()
        thread = threading.Thread(target=dispatcher.serve_forever, daemon=True)
        thread.start()
        thread.join(1)
        assert not thread.is_alive()
        assert not worker_threads()
        with pytest.raises(RuntimeError):
            dispatcher.serve_forever()


def test_max_requests_drains_and_flags_it() -> None:
    with tcp_listener() as listener:
        dispatcher = Dispatcher(
            [listener], LineFactory(), min_spare=1, max_spare=2, max_threads=2, max_requests=3
        )
        with running(dispatcher) as thread:
            client = LineClient(listener.getsockname())
            assert [client.request(f"ECHO {n}") for n in range(3)] == ["0", "1", "2"]
            thread.join(3)
            assert not thread.is_alive()
            assert dispatcher.max_requests_reached
            assert client.read_line() == ""  # it was parked: closed by the drain


def test_observer_already_on_the_factory_is_chained_and_restored() -> None:
    events: list[str] = []

    class Recorder:
        def request_started(self, info: str) -> None:
            events.append("start " + info)

        def request_finished(self) -> None:
            events.append("end")

    recorder = Recorder()
    factory = LineFactory()
    factory.observer = recorder
    with tcp_listener() as listener:
        with serving(listener, factory) as (d, _):
            assert factory.observer is not recorder
            client = LineClient(listener.getsockname())
            assert client.request("ECHO x") == "x"
            assert d.requests_served == 1
            client.close()
        assert factory.observer is recorder
    assert events == ["start ECHO x", "end"]


def test_wakeup_callbacks_run_in_the_selector_thread() -> None:
    reader, writer = socket.socketpair()
    calls: list[str] = []
    with tcp_listener() as listener, reader, writer:
        dispatcher = Dispatcher([listener], LineFactory(), min_spare=0, max_spare=1, max_threads=1)

        def on_readable() -> None:
            calls.append(threading.current_thread().name)
            reader.recv(10)
            dispatcher.stop()

        dispatcher.add_wakeup(reader.fileno(), on_readable)
        with running(dispatcher) as thread:
            writer.send(b"!")
            thread.join(3)
            assert not thread.is_alive()
    assert calls == ["test-selector"]


@pytest.mark.parametrize(
    "options",
    [
        {"min_spare": 1, "max_spare": 1, "max_threads": 0},
        {"min_spare": 3, "max_spare": 2, "max_threads": 4},
        {"min_spare": -1, "max_spare": 2, "max_threads": 4},
        {"min_spare": 1, "max_spare": 2, "max_threads": 4, "idle_timeout": -1},
    ],
)
def test_invalid_settings_are_rejected(options: dict[str, Any]) -> None:
    with tcp_listener() as listener, pytest.raises(ValueError):
        Dispatcher([listener], LineFactory(), **options)


def test_no_file_descriptors_leak_across_a_run() -> None:
    fd_dir = f"/proc/{os.getpid()}/fd"
    if not os.path.isdir(fd_dir):
        pytest.skip("needs /proc")
    with tcp_listener() as listener:
        before = len(os.listdir(fd_dir))
        with serving(listener) as (d, _):
            clients = [LineClient(listener.getsockname()) for _ in range(5)]
            for client in clients:
                assert client.request("ECHO x") == "x"
            for client in clients:
                client.close()
            assert wait_until(lambda: d.open_connections == 0)
        assert len(os.listdir(fd_dir)) == before


def test_churn_of_short_lived_and_kept_alive_connections_keeps_the_books_straight() -> None:
    """Eight client threads open, use, park, quit and drop connections at random against three threads that
    are started and retired as the load swings; every request is answered and every count returns to 0."""
    failures: list[str] = []

    # Spares retire 0.3 s after the load stops needing them (the default, 2 s, plus a leader's poll timeout of
    # as much, made the final count race the 2 s wait below on a busy machine).
    settings = {"min_spare": 0, "max_spare": 1, "max_threads": 3, "spare_idle_time": 0.3}
    with tcp_listener() as listener, serving(listener, **settings) as (d, f):
        address = listener.getsockname()

        def client_thread(seed: int) -> None:
            rng = random.Random(seed)
            conn: LineClient | None = None
            try:
                for n in range(30):
                    if conn is None:
                        conn = LineClient(address)
                    action = rng.random()
                    if action < 0.6:
                        reply = conn.request(f"ECHO {seed}-{n}")
                        if reply != f"{seed}-{n}":
                            failures.append(f"ECHO {seed}-{n} -> {reply!r}")
                    elif action < 0.75:
                        if conn.request("SLEEP 0.01") != "SLEPT":
                            failures.append("SLEEP not answered")
                    elif action < 0.9:
                        if conn.request("QUIT") != "BYE":
                            failures.append("QUIT not answered")
                        conn.close()
                        conn = None
                    else:
                        conn.close()  # drop it, parked or not
                        conn = None
            except OSError as exc:
                failures.append(repr(exc))
            finally:
                if conn is not None:
                    conn.close()

        threads = [threading.Thread(target=client_thread, args=(seed,)) for seed in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(20)
        assert failures == []
        # (A retiring thread stays in threading.enumerate() for a moment, so count requests, not names.)
        assert f.max_in_progress <= 3
        assert wait_until(lambda: d.open_connections == 0 and d.parked_connections == 0)
        assert d.busy_requests == 0
        assert wait_until(lambda: d.thread_count <= 1 and len(worker_threads()) == d.thread_count, 5.0)


def test_a_connection_taken_by_a_sibling_does_not_stop_accepting() -> None:
    """Prefork children share one listener: each one's epoll wakes for every connection, one accept()
    wins and the others get EAGAIN. The losers must re-arm the listener, or they never accept again."""
    with tcp_listener() as listener:
        first, second = LineFactory(), LineFactory()
        one = Dispatcher([listener], first, min_spare=1, max_spare=1, max_threads=1)
        two = Dispatcher([listener], second, min_spare=1, max_spare=1, max_threads=1)
        with running(one), running(two):
            address = listener.getsockname()
            halfway = (0, 0)
            for n in range(60):
                if n == 30:
                    halfway = (one.requests_served, two.requests_served)
                client = LineClient(address)
                assert client.request(f"ECHO {n}") == str(n)
                client.close()
            assert one.requests_served + two.requests_served == 60
            # Both kept accepting to the end: each served a share of the last 30 (a loser that stopped
            # re-arming after its first lost race would serve none of them).
            late = (one.requests_served - halfway[0], two.requests_served - halfway[1])
            assert min(late) > 0, late


def test_graceful_stop_serves_a_parked_connection_once_more_then_closes_it() -> None:
    """A web server may pick an idle kept connection just as the pool stops: its request is answered, and
    the connection closes right after the response, never under a request in flight."""
    with tcp_listener() as listener:
        dispatcher = Dispatcher([listener], LineFactory(), min_spare=1, max_spare=2, max_threads=2)
        with running(dispatcher) as thread:
            kept = LineClient(listener.getsockname())
            assert kept.request("ECHO before") == "before"
            assert wait_until(lambda: dispatcher.parked_connections == 1)
            dispatcher.stop(graceful=True, timeout=5)
            assert kept.request("ECHO during the drain") == "during the drain"
            assert kept.read_line() == ""  # closed after that response
            thread.join(3)
            assert not thread.is_alive()
            kept.close()


def test_the_heap_is_trimmed_once_a_burst_is_over(monkeypatch: pytest.MonkeyPatch) -> None:
    """A second after the last job the control thread gives the C heap's free pages back, once per burst."""
    trims: list[float] = []
    monkeypatch.setattr(dispatch, "trim_heap", lambda: trims.append(time.monotonic()) or True)
    with tcp_listener() as listener, serving(listener) as (_, _f):
        client = LineClient(listener.getsockname())
        assert client.request("ECHO one") == "one"
        done = time.monotonic()
        assert wait_until(lambda: len(trims) == 1, timeout=3)
        assert trims[0] - done >= 0.9
        time.sleep(1.2)
        assert len(trims) == 1  # nothing ran since: nothing to give back
        assert client.request("ECHO two") == "two"
        assert wait_until(lambda: len(trims) == 2, timeout=3)
        client.close()


def test_a_worker_idle_for_spare_idle_time_gives_its_read_buffer_back(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """After a burst of uploads every worker it woke would keep 256 KiB resident; a worker that waited
    spare_idle_time for work releases its own buffer (never another thread's: it may be reading into it)."""
    released: list[str] = []
    monkeypatch.setattr(
        dispatch, "release_scratch_buffer", lambda: released.append(threading.current_thread().name)
    )
    with tcp_listener() as listener, serving(listener, spare_idle_time=0.2) as (_, factory):
        client = LineClient(listener.getsockname())
        assert client.request("ECHO one") == "one"
        served_by = factory.served_by[-1]
        assert wait_until(lambda: served_by in released, timeout=3)
        client.close()


class _Sink:
    """A hand-off sink standing in for a sibling process: it collects the sockets it is given."""

    def __init__(self) -> None:
        self.sockets: list[socket.socket] = []

    def __call__(self, sock: socket.socket) -> None:
        self.sockets.append(sock)

    def close(self) -> None:
        for sock in self.sockets:
            sock.close()


class _Nudger:
    """Calls ``hand_off_readable`` every few milliseconds, as a prefork master's nudges would."""

    def __init__(self, dispatcher: Dispatcher) -> None:
        self.calls = 0
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(dispatcher,), daemon=True)
        self._thread.start()

    def _run(self, dispatcher: Dispatcher) -> None:
        while not self._done.wait(0.005):
            dispatcher.hand_off_readable()
            self.calls += 1

    def stop(self) -> None:
        self._done.set()
        self._thread.join(2)


def test_one_thread_never_runs_two_requests_at_once() -> None:
    """A prefork child's dispatcher (max_threads=1), nudged to hand off, starts no second app thread."""
    sink = _Sink()
    with tcp_listener() as listener:
        options = {"min_spare": 1, "max_spare": 1, "max_threads": 1, "accept_while_busy": False}
        with serving(listener, hand_off=sink, **options) as (d, factory):
            nudger = _Nudger(d)
            address = listener.getsockname()
            clients = [LineClient(address) for _ in range(4)]
            for _round in range(3):
                for client in clients:
                    client.send("SLEEP 0.02")
                for client in clients:
                    if client.sock.fileno() != -1:
                        client.sock.settimeout(0.5)
                        try:
                            client.read_line()
                        except TimeoutError:
                            pass  # handed to the sink (nobody answers it there)
            nudger.stop()
            assert nudger.calls > 0
            assert factory.max_in_progress == 1
            assert factory.max_worker_threads == 1
    sink.close()


def test_hand_off_readable_is_a_no_op_while_a_thread_could_serve() -> None:
    """Nothing runs, or another thread may start: the connection stays; nothing is handed over."""
    sink = _Sink()
    with tcp_listener() as listener:
        options = {"min_spare": 1, "max_spare": 2, "max_threads": 2, "accept_while_busy": False}
        with serving(listener, hand_off=sink, **options) as (d, _factory):
            kept = LineClient(listener.getsockname())
            assert kept.request("ECHO park") == "park"
            assert wait_until(lambda: d.parked_connections == 1)
            d.hand_off_readable()  # idle
            slow = LineClient(listener.getsockname())
            slow.send("SLEEP 0.5")
            assert wait_until(lambda: d.busy_requests == 1)
            kept.send("ECHO here")
            d.hand_off_readable()  # one thread busy, a second may start: it serves the request
            assert kept.read_line() == "here"
            assert slow.read_line() == "SLEPT"
            assert sink.sockets == []
            kept.close()
            slow.close()


def test_a_nudge_hands_a_readable_parked_connection_over_with_its_unread_request() -> None:
    sink = _Sink()
    with tcp_listener() as listener:
        options = {"min_spare": 1, "max_spare": 1, "max_threads": 1, "accept_while_busy": False}
        with serving(listener, hand_off=sink, **options) as (d, factory):
            address = listener.getsockname()
            kept = LineClient(address)
            assert kept.request("ECHO park") == "park"
            assert wait_until(lambda: d.parked_connections == 1)
            slow = LineClient(address)
            slow.send("SLEEP 1")
            assert wait_until(lambda: d.busy_requests == 1)
            started = time.monotonic()
            kept.send("ECHO elsewhere")
            nudger = _Nudger(d)  # the master's nudges
            assert wait_until(lambda: len(sink.sockets) == 1, 0.5)
            nudger.stop()
            assert time.monotonic() - started < 0.5  # not after the SLEEP
            (moved,) = sink.sockets
            moved.settimeout(2)
            assert moved.recv(100) == b"ECHO elsewhere\n"  # the bytes travelled with the socket
            moved.sendall(b"from the sibling\n")
            assert kept.read_line() == "from the sibling"
            assert slow.read_line() == "SLEPT"
            assert factory.detached == 1 and factory.closed == 0
    sink.close()


def test_a_retiring_stop_hands_every_connection_over_instead_of_closing_it() -> None:
    """stop(retire=True): a parked connection goes at once, one in service right after its response."""
    sink = _Sink()
    with tcp_listener() as listener:
        dispatcher = Dispatcher(
            [listener], LineFactory(), min_spare=1, max_spare=2, max_threads=2, hand_off=sink
        )
        with running(dispatcher) as thread:
            address = listener.getsockname()
            parked = LineClient(address)
            assert parked.request("ECHO 1") == "1"
            busy = LineClient(address)
            busy.send("SLEEP 0.3")
            assert wait_until(lambda: dispatcher.busy_requests == 1)
            dispatcher.stop(graceful=True, timeout=5, retire=True)
            assert wait_until(lambda: len(sink.sockets) == 1)
            assert busy.read_line() == "SLEPT"  # the request in flight finishes on its connection
            thread.join(3)
            assert not thread.is_alive()
            assert len(sink.sockets) == 2
            for client in (parked, busy):  # both still open: nobody closed them
                client.sock.setblocking(False)
                with pytest.raises(BlockingIOError):
                    client.sock.recv(1)
    sink.close()


def test_max_requests_with_a_sink_hands_the_connection_over() -> None:
    sink = _Sink()
    with tcp_listener() as listener:
        dispatcher = Dispatcher(
            [listener], LineFactory(), min_spare=1, max_spare=2, max_threads=2, max_requests=3, hand_off=sink
        )
        with running(dispatcher) as thread:
            client = LineClient(listener.getsockname())
            assert [client.request(f"ECHO {n}") for n in range(3)] == ["0", "1", "2"]
            thread.join(3)
            assert not thread.is_alive()
            assert dispatcher.max_requests_reached
            assert len(sink.sockets) == 1
            client.send("ECHO 3")
            sink.sockets[0].settimeout(2)
            assert sink.sockets[0].recv(100) == b"ECHO 3\n"
    sink.close()


def test_a_terminating_stop_after_no_retire_closes_as_before() -> None:
    """A real stop (no retire) keeps the drain-and-close behaviour even with a sink."""
    sink = _Sink()
    with tcp_listener() as listener:
        dispatcher = Dispatcher(
            [listener], LineFactory(), min_spare=1, max_spare=2, max_threads=2, hand_off=sink
        )
        with running(dispatcher) as thread:
            client = LineClient(listener.getsockname())
            assert client.request("ECHO 1") == "1"
            dispatcher.stop(graceful=True, timeout=5)
            thread.join(3)
            assert not thread.is_alive()
            assert sink.sockets == []
            assert client.read_line() == ""
    sink.close()


@contextlib.contextmanager
def _one_thread_child(**options: Any) -> Iterator[tuple[Dispatcher, _Sink, socket.socket, socket.socket]]:
    """A one-thread prefork child's dispatcher (exclusive wake-ups) with a connection waiting in its
    listener's backlog, the kernel having picked this child's epoll for it: (dispatcher, hand-off sink,
    listener, client). Not serving: the test plays the worker."""
    sink = _Sink()
    with tcp_listener() as listener:
        d = Dispatcher(
            [listener],
            LineFactory(),
            min_spare=1,
            max_spare=1,
            max_threads=1,
            accept_while_busy=False,
            hand_off=sink,
            **options,
        )
        d._watch.arm_listeners()
        client = socket.create_connection(listener.getsockname())
        try:
            assert [fd for fd, _ in d._watch.poll(2.0, 1)] == [listener.fileno()]  # picked, not a sibling
            yield d, sink, listener, client
        finally:
            d._watch.close()
            d._control.close()
            sink.close()
            client.close()


def _handed_over(sink: _Sink, client: socket.socket, listener: socket.socket) -> bool:
    listener.setblocking(False)
    with pytest.raises(BlockingIOError):
        listener.accept()  # nothing left behind in the backlog
    return [sock.getpeername() for sock in sink.sockets] == [client.getsockname()]


def test_a_retiring_child_passes_on_what_waits_in_its_backlog() -> None:
    """With exclusive wake-ups no sibling heard of that connection: left in the backlog, it would wait for the
    next connection to wake somebody (a request lost after a reload on a quiet server)."""
    with _one_thread_child() as (d, sink, listener, client):
        d.stop(retire=True)
        assert _handed_over(sink, client, listener)
        with d._lock:
            assert d._take_locked(listener.fileno()) is None  # the event the worker then finds: nothing


def test_a_child_picked_for_a_connection_it_may_not_take_passes_it_on() -> None:
    with _one_thread_child(max_connections=1) as (d, sink, listener, client):
        with d._lock:
            d._admission.open = 1  # at max_connections since the kernel picked it
            assert d._take_locked(listener.fileno()) is None
        assert _handed_over(sink, client, listener)


def test_on_a_real_stop_the_connection_stays_in_the_backlog() -> None:
    """Whoever listens next (a restarted service, a socket systemd holds) takes it; nobody here serves on."""
    with _one_thread_child() as (d, sink, listener, client):
        d.stop(retire=False)
        with d._lock:
            assert d._take_locked(listener.fileno()) is None
        assert sink.sockets == []
        accepted, peer = listener.accept()
        assert peer == client.getsockname()
        accepted.close()


def _child_like(listener: socket.socket, factory: LineFactory, **options: Any) -> Dispatcher:
    """A dispatcher as a one-thread prefork child runs it (its listener shared with EPOLLEXCLUSIVE)."""
    return Dispatcher(
        [listener], factory, min_spare=1, max_spare=1, max_threads=1, accept_while_busy=False, **options
    )


def test_a_child_without_connections_defers_a_new_one_then_takes_it(monkeypatch: Any) -> None:
    """defer_new: the connection waits in the backlog for the pause (nobody else listens here), then this
    dispatcher takes and serves it; the pause is not repeated for the same connection, but is for the next
    one once the dispatcher holds no connection again."""
    monkeypatch.setattr(dispatch, "_DEFER_SECONDS", 0.3)
    asked: list[socket.socket] = []

    def defer(listener: socket.socket) -> bool:
        asked.append(listener)
        return True

    with tcp_listener() as listener:
        dispatcher = _child_like(listener, LineFactory(), defer_new=defer)
        with running(dispatcher):
            client = LineClient(listener.getsockname())
            started = time.monotonic()
            client.send("ECHO late")
            assert wait_until(lambda: asked == [listener])
            time.sleep(0.1)
            assert dispatcher.open_connections == 0  # left in the backlog
            assert client.read_line() == "late"
            assert time.monotonic() - started >= 0.3
            assert asked == [listener]
            assert client.request("ECHO kept") == "kept"  # a kept connection's requests are not deferred
            client.close()
            assert wait_until(lambda: dispatcher.open_connections == 0)
            time.sleep(0.35)  # past the moment after the pause in which a waiting connection is taken
            again = LineClient(listener.getsockname())
            assert again.request("ECHO again") == "again"
            assert asked == [listener, listener]  # holding no connection again, it defers again
            again.close()


def test_a_deferred_connection_goes_to_the_busy_sibling_that_comes_back_first(monkeypatch: Any) -> None:
    """Two one-thread "children" in one process: the first holds a connection in a slow request, so the
    kernel wakes the second for a new connection; it defers, and the first takes it when its request ends,
    well before the pause would have ended."""
    monkeypatch.setattr(dispatch, "_DEFER_SECONDS", 2.0)
    with tcp_listener() as listener:
        busy_factory, spare_factory = LineFactory(), LineFactory()
        busy = _child_like(listener, busy_factory)
        spare = _child_like(listener, spare_factory, defer_new=lambda _listener: True)
        # busy starts first: registered first, the kernel wakes it first while it waits.
        with running(busy), running(spare):
            address = listener.getsockname()
            slow = LineClient(address)
            slow.send("SLEEP 0.3")
            assert wait_until(lambda: busy_factory.in_progress == 1)
            started = time.monotonic()
            late = LineClient(address)
            late.send("ECHO taken")
            assert late.read_line() == "taken"
            assert time.monotonic() - started < 1.5
            assert slow.read_line() == "SLEPT"
            assert (busy.open_connections, spare.open_connections) == (2, 0)
            slow.close()
            late.close()


def test_threads_the_system_refuses_leave_the_pool_serving_with_those_it_has(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """RLIMIT_NPROC, RLIMIT_AS or pids.max: Thread.start raises "can't start new thread". The pool serves
    every request with the threads it has (the others wait in the backlog), says so once, and starts no
    thread while the ceiling holds."""
    real_start = threading.Thread.start
    allowed = 3  # the control loop's own thread is not a worker; these are

    def start(thread: threading.Thread) -> None:
        nonlocal allowed
        if thread.name.startswith(WORKER_PREFIX):
            if allowed == 0:
                raise RuntimeError("can't start new thread")
            allowed -= 1
        real_start(thread)

    monkeypatch.setattr(threading.Thread, "start", start)
    with (
        caplog.at_level(logging.WARNING, logger="fcgiserve.pools"),
        tcp_listener() as listener,
        serving(listener, min_spare=1, max_spare=4, max_threads=8) as (d, factory),
    ):
        clients = [LineClient(listener.getsockname()) for _ in range(12)]
        for client in clients:
            client.send("SLEEP 0.05")
        assert [client.read_line() for client in clients] == ["SLEPT"] * 12
        assert factory.max_in_progress <= 3 and d.requests_served == 12
        assert d.thread_count <= 3
        for client in clients:
            client.close()
    refusals = [r for r in caplog.records if "cannot start another worker thread" in r.getMessage()]
    assert len(refusals) == 1, [r.getMessage() for r in caplog.records]


def test_a_worker_that_dies_of_an_error_recycles_the_pool_instead_of_stalling_it(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """An error nothing caught kills the thread that watches the epoll (memory exhausted, or a bug): nobody
    would lead again. The dispatcher logs it and stops as at max_requests (the pools then recycle)."""
    with tcp_listener() as listener:
        dispatcher = Dispatcher([listener], LineFactory(), min_spare=1, max_spare=2, max_threads=2)
        real_take = dispatcher._take_locked
        armed = threading.Event()

        def take(fd: int) -> Any:
            if armed.is_set():
                armed.clear()
                raise MemoryError
            return real_take(fd)

        monkeypatch.setattr(dispatcher, "_take_locked", take)
        with caplog.at_level(logging.ERROR, logger="fcgiserve.pools"), running(dispatcher) as thread:
            first = LineClient(listener.getsockname())
            assert first.request("ECHO one") == "one"
            armed.set()  # the next event the leader takes kills it
            second = LineClient(listener.getsockname())
            second.send("ECHO two")
            thread.join(5)
            assert not thread.is_alive(), "the dispatcher stalled"
            assert dispatcher.worker_failed and dispatcher.max_requests_reached
        assert any("failed; the pool recycles" in r.getMessage() for r in caplog.records)


def test_max_requests_hands_every_kept_connection_over_even_when_the_stop_is_slow_to_come(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The worker that ends request number max_requests marks the limit and asks for the retiring stop. A
    worker that saw the mark before the stop was asked for took it for a real stop and closed its kept
    connection (the web server's next request on it: a 502 or 503). Here every stop request is slowed
    down, so any such window would be wide: no client may see its connection closed."""
    real_stop = Dispatcher.stop

    def slow_stop(self: Dispatcher, *args: Any, **kwargs: Any) -> None:
        time.sleep(0.05)
        real_stop(self, *args, **kwargs)

    monkeypatch.setattr(Dispatcher, "stop", slow_stop)
    sink = _Sink()
    with tcp_listener() as listener:
        dispatcher = Dispatcher(
            [listener], LineFactory(), min_spare=4, max_spare=4, max_threads=4, max_requests=40, hand_off=sink
        )
        with running(dispatcher) as thread:
            clients = [LineClient(listener.getsockname(), timeout=1.0) for _ in range(4)]
            closed: list[int] = []

            def hammer(index: int) -> None:
                for n in range(100):
                    clients[index].send(f"ECHO {n}")
                    try:
                        answer = clients[index].read_line()
                    except TimeoutError:
                        return  # no answer: the connection waits in the sink, unclosed
                    if answer == "":
                        closed.append(index)
                        return
                    assert answer == str(n)

            workers = [threading.Thread(target=hammer, args=(i,)) for i in range(4)]
            for worker in workers:
                worker.start()
            thread.join(5)
            assert not thread.is_alive() and dispatcher.max_requests_reached
            for worker in workers:
                worker.join(10)
            assert closed == [], f"kept connections closed at max_requests: clients {closed}"
            assert len(sink.sockets) == 4
    sink.close()
