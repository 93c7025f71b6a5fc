"""ThreadedPool: real signals to this process, real loopback sockets, the line protocol as the handler.

Signal handlers can only be installed by the main thread, so ``run()`` runs in the test's main thread
while a driver thread plays the clients and sends the signals; a watchdog stops the pool if a test
goes wrong, so a failure never hangs the run.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from fcgiserve.pools.base import PoolSettings, StopReason
from fcgiserve.pools.threaded import PoolStats, ThreadedPool
from tests.pools.lineproto import (
    LineClient,
    LineFactory,
    close_clients,
    tcp_listener,
    wait_until,
    worker_threads,
)

SETTINGS = PoolSettings(min_spare=1, max_spare=3, max_children=6, graceful_timeout=5.0)


@pytest.fixture(autouse=True)
def _no_leaked_clients() -> Iterator[None]:
    yield
    close_clients()
    assert wait_until(lambda: not worker_threads(), 3)


def run_in_main_thread(pool: ThreadedPool, drive: Callable[[], None], limit: float = 5.0) -> StopReason:
    """pool.run() here, ``drive()`` in another thread once the pool is ready; re-raise what drive raised."""
    errors: list[BaseException] = []

    def driver() -> None:
        try:
            assert pool.ready.wait(2), "the pool never became ready"
            drive()
        except BaseException as exc:
            errors.append(exc)
            pool.request_stop(graceful=False)

    watchdog = threading.Timer(limit, pool.request_stop, kwargs={"graceful": False})
    thread = threading.Thread(target=driver, name="test-driver")
    watchdog.start()
    thread.start()
    try:
        reason = pool.run()
    finally:
        watchdog.cancel()
        thread.join(5)
    if errors:
        raise errors[0]
    assert not thread.is_alive()
    return reason


def kill_self(signum: int) -> None:
    os.kill(os.getpid(), signum)


def test_term_lets_the_request_in_flight_finish_and_returns_stop() -> None:
    previous = signal.getsignal(signal.SIGTERM)
    factory = LineFactory()
    replies: list[str] = []
    with tcp_listener() as listener:
        pool = ThreadedPool([listener], factory, SETTINGS)

        def drive() -> None:
            slow = LineClient(listener.getsockname())
            slow.send("SLEEP 0.3")
            assert wait_until(lambda: factory.in_progress == 1)
            kill_self(signal.SIGTERM)
            replies.append(slow.read_line())
            replies.append(slow.read_line())

        started = time.monotonic()
        assert run_in_main_thread(pool, drive) is StopReason.STOP
        assert time.monotonic() - started < 2
        assert replies == ["SLEPT", ""]  # answered, then closed instead of parked
        assert listener.fileno() != -1  # the caller owns the listener
        assert not pool.ready.is_set()
    assert signal.getsignal(signal.SIGTERM) is previous


def test_second_int_while_draining_stops_at_once() -> None:
    factory = LineFactory()
    with tcp_listener() as listener:
        pool = ThreadedPool([listener], factory, SETTINGS)

        def drive() -> None:
            slow = LineClient(listener.getsockname())
            slow.send("SLEEP 1")
            assert wait_until(lambda: factory.in_progress == 1)
            kill_self(signal.SIGINT)
            time.sleep(0.05)
            kill_self(signal.SIGINT)
            assert slow.read_line() == ""

        started = time.monotonic()
        assert run_in_main_thread(pool, drive) is StopReason.STOP
        assert time.monotonic() - started < 0.8


def test_hup_drains_and_returns_reload_with_the_listener_and_its_backlog_intact() -> None:
    """A connection made during the drain is served by the next pool on the same listener."""
    factory = LineFactory()
    late: list[LineClient] = []
    with tcp_listener() as listener:
        address = listener.getsockname()
        pool = ThreadedPool([listener], factory, SETTINGS)

        def drive() -> None:
            idle = LineClient(address)
            assert idle.request("ECHO park") == "park"
            slow = LineClient(address)
            slow.send("SLEEP 0.3")
            assert wait_until(lambda: factory.in_progress == 1)
            kill_self(signal.SIGHUP)
            assert idle.read_line() == ""  # parked connections are closed by the drain
            late.append(LineClient(address))
            late[0].send("ECHO after reload")
            assert slow.read_line() == "SLEPT"

        assert run_in_main_thread(pool, drive) is StopReason.RELOAD
        assert len(factory.opened) == 2  # the late connection was never accepted by the old pool

        # The "re-executed" process: a new pool on the very same listening socket.
        next_pool = ThreadedPool([listener], LineFactory(), SETTINGS)

        def drive_next() -> None:
            assert late[0].read_line() == "after reload"
            next_pool.request_stop()

        assert run_in_main_thread(next_pool, drive_next) is StopReason.STOP


def test_quit_stops_at_once_and_closes_connections_in_flight() -> None:
    factory = LineFactory()
    with tcp_listener() as listener:
        pool = ThreadedPool([listener], factory, SETTINGS)

        def drive() -> None:
            slow = LineClient(listener.getsockname())
            slow.send("SLEEP 1")
            assert wait_until(lambda: factory.in_progress == 1)
            kill_self(signal.SIGQUIT)
            assert slow.read_line() == ""

        started = time.monotonic()
        assert run_in_main_thread(pool, drive) is StopReason.QUIT
        assert time.monotonic() - started < 0.8


def test_usr1_calls_on_reopen_logs_and_keeps_serving() -> None:
    reopened: list[str] = []
    with tcp_listener() as listener:
        pool = ThreadedPool([listener], LineFactory(), SETTINGS, lambda: reopened.append("yes"))

        def drive() -> None:
            kill_self(signal.SIGUSR1)
            assert wait_until(lambda: reopened == ["yes"])
            assert LineClient(listener.getsockname()).request("ECHO on") == "on"
            pool.request_stop()

        assert run_in_main_thread(pool, drive) is StopReason.STOP


def test_a_failing_on_reopen_logs_is_logged_not_fatal(caplog: pytest.LogCaptureFixture) -> None:
    def broken() -> None:
        raise OSError("disk full")

    with tcp_listener() as listener, caplog.at_level(logging.ERROR, "fcgiserve.pools"):
        pool = ThreadedPool([listener], LineFactory(), SETTINGS, on_reopen_logs=broken)

        def drive() -> None:
            kill_self(signal.SIGUSR1)
            assert wait_until(lambda: "reopening the logs failed" in caplog.text)
            assert LineClient(listener.getsockname()).request("ECHO alive") == "alive"
            pool.request_stop()

        assert run_in_main_thread(pool, drive) is StopReason.STOP


def test_request_stop_from_another_thread_without_signals() -> None:
    """Library use: run() in a non-main thread (no signals), stopped by request_stop()."""
    before = signal.getsignal(signal.SIGTERM)
    with tcp_listener() as listener:
        pool = ThreadedPool([listener], LineFactory(), SETTINGS)
        result: list[StopReason] = []
        thread = threading.Thread(target=lambda: result.append(pool.run(install_signals=False)))
        thread.start()
        try:
            assert pool.ready.wait(2)
            assert signal.getsignal(signal.SIGTERM) is before
            assert LineClient(listener.getsockname()).request("ECHO lib") == "lib"
            pool.request_stop()
            thread.join(3)
        finally:
            pool.request_stop(graceful=False)
            thread.join(3)
        assert result == [StopReason.STOP]


def test_request_reload_and_quit_precedence() -> None:
    """A reload asked for while stopping does not downgrade the stop."""
    with tcp_listener() as listener:
        pool = ThreadedPool([listener], LineFactory(), SETTINGS)
        pool.request_stop()
        pool.request_reload()
        assert pool.run(install_signals=False) is StopReason.STOP
    with tcp_listener() as listener:
        pool = ThreadedPool([listener], LineFactory(), SETTINGS)
        pool.request_reload()
        assert pool.run(install_signals=False) is StopReason.RELOAD


def test_max_requests_recycles_the_process_with_reload(caplog: pytest.LogCaptureFixture) -> None:
    settings = PoolSettings(min_spare=1, max_spare=2, max_children=4, max_requests=3, max_requests_jitter=2)
    with tcp_listener() as listener, caplog.at_level(logging.INFO, "fcgiserve.pools"):
        pool = ThreadedPool([listener], LineFactory(), settings)
        answered: list[str] = []

        def drive() -> None:
            client = LineClient(listener.getsockname())
            for n in range(10):
                reply = client.request(f"ECHO {n}")
                if not reply:
                    break
                answered.append(reply)

        assert run_in_main_thread(pool, drive) is StopReason.RELOAD
        assert 3 <= len(answered) <= 5
        assert pool.stats.served == len(answered)
        assert "max_requests reached" in caplog.text


def test_start_and_stop_are_logged_with_counts(caplog: pytest.LogCaptureFixture) -> None:
    with tcp_listener() as listener, caplog.at_level(logging.INFO, "fcgiserve.pools"):
        pool = ThreadedPool([listener], LineFactory(), SETTINGS)

        def drive() -> None:
            client = LineClient(listener.getsockname())
            assert client.request("ECHO 1") == "1"
            assert client.request("ECHO 2") == "2"
            pool.request_stop()

        assert run_in_main_thread(pool, drive) is StopReason.STOP
    messages = [r.getMessage() for r in caplog.records if r.name == "fcgiserve.pools"]
    assert any("started on 1 listener(s)" in m and "max_threads=6" in m for m in messages)
    assert any("stopped (stop) after 2 request(s)" in m for m in messages)


def test_stats_report_threads_parked_and_served() -> None:
    factory = LineFactory()
    seen: list[PoolStats] = []
    with tcp_listener() as listener:
        pool = ThreadedPool([listener], factory, SETTINGS)

        def drive() -> None:
            address = listener.getsockname()
            idle = LineClient(address)
            assert idle.request("ECHO park") == "park"
            assert wait_until(lambda: pool.stats.parked == 1)
            slow = LineClient(address)
            slow.send("SLEEP 0.3")
            assert wait_until(lambda: factory.in_progress == 1)
            seen.append(pool.stats)
            assert slow.read_line() == "SLEPT"
            pool.request_stop()

        assert run_in_main_thread(pool, drive) is StopReason.STOP
    stats = seen[0]
    assert stats.busy == 1
    assert stats.parked == 1
    assert stats.open_connections == 2
    assert stats.served == 1
    assert 2 <= stats.threads <= SETTINGS.max_children
    assert stats.idle >= SETTINGS.min_spare - 1


def test_spare_threads_follow_the_settings() -> None:
    settings = PoolSettings(min_spare=2, max_spare=2, max_children=5)
    factory = LineFactory()
    with tcp_listener() as listener:
        pool = ThreadedPool([listener], factory, settings)

        def drive() -> None:
            assert wait_until(lambda: len(worker_threads()) == 2)
            clients = [LineClient(listener.getsockname()) for _ in range(5)]
            for client in clients:
                client.send("SLEEP 0.2")
            assert wait_until(lambda: factory.in_progress == 5)
            assert len(worker_threads()) == 5  # max_children, even though min_spare asks for more
            assert [client.read_line() for client in clients] == ["SLEPT"] * 5
            assert wait_until(lambda: len(worker_threads()) == 2)
            pool.request_stop()

        assert run_in_main_thread(pool, drive) is StopReason.STOP


def test_idle_timeout_setting_closes_idle_kept_alive_connections() -> None:
    settings = PoolSettings(min_spare=1, max_spare=2, max_children=4, idle_timeout=0.15)
    with tcp_listener() as listener:
        pool = ThreadedPool([listener], LineFactory(), settings)

        def drive() -> None:
            client = LineClient(listener.getsockname())
            assert client.request("ECHO x") == "x"
            started = time.monotonic()
            assert client.read_line() == ""
            assert 0.1 < time.monotonic() - started < 1.0
            assert wait_until(lambda: pool.stats.open_connections == 0)
            pool.request_stop()

        assert run_in_main_thread(pool, drive) is StopReason.STOP


def test_connections_on_a_unix_socket_are_served(tmp_path: object) -> None:
    path = os.path.join(str(tmp_path), "pool.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
        listener.bind(path)
        listener.listen(8)
        pool = ThreadedPool([listener], LineFactory(), SETTINGS)

        def drive() -> None:
            assert LineClient(path, socket.AF_UNIX).request("ECHO unix") == "unix"
            pool.request_stop()

        assert run_in_main_thread(pool, drive) is StopReason.STOP
