"""Who waits for whom on a connection: multiplexing without head-of-line blocking, and stalled peers that
cost a file descriptor, not a worker (issue 13, parts 3 and 4; checklist S-H).

Real servers on loopback, raw records from ``tests/hostile/peer.py`` (built without the code under test),
every wait bounded.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import pytest

from fcgiserve import Server
from tests.hostile.peer import (
    BEGIN,
    CANT_MPX_CONN,
    END,
    HEADER,
    PARAMS,
    REQUEST_COMPLETE,
    STDIN,
    Live,
    RecordStream,
    begin,
    closed_by_peer,
    end_status,
    get_params,
    live_server,
    pair,
    params,
    record,
    stdout_of,
)
from tests.hostile.peer import request as whole_request

SLOW = 1.5  # seconds the slow request's application sleeps
FAST = 0.5  # the fast requests of the same connection must answer well within this


def _app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    if environ["PATH_INFO"] == "/slow":
        time.sleep(SLOW)
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [environ["PATH_INFO"].encode()]


@pytest.fixture
def threaded() -> Iterator[tuple[str, int]]:
    """A threaded server (FCGI_MPXS_CONNS=1, the default) in this process."""
    server = Server(_app, port=0, graceful_timeout=5).start()
    try:
        yield server.addresses[0][:2]
    finally:
        server.stop(graceful=False, timeout=10)


class _Reader:
    """Collects the records of one connection in a thread, noting when each END_REQUEST arrived."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.records: list[tuple[int, int, bytes]] = []
        self.ended_at: dict[int, float] = {}
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        stream = RecordStream()
        self.sock.settimeout(10)
        try:
            while chunk := self.sock.recv(65536):
                for rec in stream.feed(chunk):
                    self.records.append(rec)
                    if rec[0] == END:
                        self.ended_at[rec[1]] = time.monotonic()
        except OSError:
            pass

    def wait(self, rids: Iterable[int], timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while not all(rid in self.ended_at for rid in rids) and time.monotonic() < deadline:
            time.sleep(0.01)


def _records(rid: int, path: str) -> list[bytes]:
    """A kept-alive GET as separate records: BEGIN_REQUEST, PARAMS, the empty PARAMS, the empty STDIN."""
    body = b"".join(pair(k.encode(), v.encode()) for k, v in get_params(path).items())
    return [begin(rid, keep_conn=True), record(PARAMS, rid, body), record(PARAMS, rid), record(STDIN, rid)]


def _check_fast_ones(reader: _Reader, sent_at: float) -> None:
    reader.wait([1, 2, 3], timeout=SLOW + 5)
    assert sorted(reader.ended_at) == [1, 2, 3], reader.records
    for rid in (2, 3):
        waited = reader.ended_at[rid] - sent_at
        assert waited < FAST, f"request {rid} waited {waited:.2f}s behind the slow request 1"
        assert stdout_of(reader.records, rid).endswith(b"/fast")
        assert end_status(reader.records, rid) == REQUEST_COMPLETE
    assert stdout_of(reader.records, 1).endswith(b"/slow")
    assert reader.ended_at[1] > reader.ended_at[2]


def test_interleaved_requests_do_not_wait_behind_a_slow_one(threaded: tuple[str, int]) -> None:
    """Three requests interleaved record by record, the first complete first (HAProxy with mpxs-conns and
    http-reuse always): its application sleeps, and the other two are read and answered meanwhile."""
    with socket.create_connection(threaded, timeout=10) as sock:
        reader = _Reader(sock)
        slow, fast2, fast3 = _records(1, "/slow"), _records(2, "/fast"), _records(3, "/fast")
        sent_at = time.monotonic()
        # BEGIN 1, 2, 3; then request 1 completes; then the PARAMS and STDIN of 2 and 3.
        for piece in (
            slow[0] + fast2[0] + fast3[0],
            b"".join(slow[1:]),
            fast2[1] + fast3[1],
            fast2[2] + fast3[2],
        ):
            sock.sendall(piece)
            time.sleep(0.02)  # separate reads on the server side
        sock.sendall(fast2[3] + fast3[3])
        _check_fast_ones(reader, sent_at)


def test_requests_sent_while_a_slow_one_runs_are_served_at_once(threaded: tuple[str, int]) -> None:
    """The second and third request arrive while the first one's application already runs."""
    with socket.create_connection(threaded, timeout=10) as sock:
        reader = _Reader(sock)
        sock.sendall(b"".join(_records(1, "/slow")))
        time.sleep(0.3)
        sent_at = time.monotonic()
        sock.sendall(b"".join(_records(2, "/fast") + _records(3, "/fast")))
        _check_fast_ones(reader, sent_at)
        # The connection is still good for a plain kept-alive request afterwards.
        sock.sendall(b"".join(_records(4, "/again")))
        reader.wait([4])
        assert stdout_of(reader.records, 4).endswith(b"/again")


def test_get_values_while_a_request_runs_is_answered_at_once(threaded: tuple[str, int]) -> None:
    """Management records are read while an application runs, too (S-E1: answered at any time)."""
    with socket.create_connection(threaded, timeout=10) as sock:
        sock.sendall(b"".join(_records(1, "/slow")))
        time.sleep(0.3)
        asked = record(9, 0, pair(b"FCGI_MPXS_CONNS", b""))
        sent_at = time.monotonic()
        sock.sendall(asked)
        stream = RecordStream()
        got: list[tuple[int, int, bytes]] = []
        sock.settimeout(5)
        while not any(rtype == 10 for rtype, _rid, _c in got):
            got += stream.feed(sock.recv(65536))
        assert time.monotonic() - sent_at < FAST
        assert not any(rtype == END for rtype, _rid, _c in got)  # request 1 still runs


# -- prefork: one request at a time per connection ---------------------------------------------------------


@pytest.fixture(scope="module")
def prefork(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    extra = ["--params-timeout", "3"]
    with live_server("prefork", tmp_path_factory.mktemp("prefork"), extra) as live:
        yield live


@pytest.fixture(scope="module")
def threaded_two(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    extra = ["--maxchildren", "2", "--minspare", "1", "--maxspare", "2", "--params-timeout", "3"]
    with live_server("threaded", tmp_path_factory.mktemp("threaded"), extra) as live:
        yield live


def test_prefork_refuses_a_concurrent_request_and_serves_the_first(prefork: Live) -> None:
    """FCGI_MPXS_CONNS=0: a second request seen while the first is active gets CANT_MPX_CONN (S-F6), the
    first is answered, and the connection serves on. (A guard: the pool never lends a prefork child's
    connection to a second reader while its request runs.)"""
    with prefork.connect(10) as sock:
        # One packet: request 2 is read while request 1 is active.
        sock.sendall(whole_request(1, "/sleep?n=0.5", keep_conn=True) + whole_request(2, "/", keep_conn=True))
        stream = RecordStream()
        got: list[tuple[int, int, bytes]] = []
        while end_status(got, 1) is None:
            got += stream.feed(sock.recv(65536))
        assert end_status(got, 2) == CANT_MPX_CONN
        assert stdout_of(got, 1).endswith(b"slept")
        sock.sendall(whole_request(3, "/", keep_conn=True))
        while end_status(got, 3) is None:
            got += stream.feed(sock.recv(65536))
        assert stdout_of(got, 3).endswith(b"ok")
    prefork.check()


# -- stalled peers: half a PARAMS record, then silence -----------------------------------------------------

STALLED = 10


def _half_request(rid: int = 1) -> tuple[bytes, bytes]:
    """A request cut in the middle of its PARAMS record: (what the stalled peer sends, the rest)."""
    whole = begin(rid, keep_conn=True) + params(rid, get_params("/")) + record(STDIN, rid)
    cut = len(begin(rid)) + HEADER.size + 20
    return whole[:cut], whole[cut:]


@pytest.mark.parametrize("pool", ["threaded_two", "prefork"])
def test_stalled_peers_cost_no_worker(pool: str, request: pytest.FixtureRequest) -> None:
    """Ten peers stop in the middle of a PARAMS record, against two workers (threads, or children): a good
    request answers at once; the stalled ones are closed at --params-timeout with the warning; one that
    completes its request before that is served."""
    live: Live = request.getfixturevalue(pool)
    first, rest = _half_request()
    assert first[:8][1] == BEGIN
    log_before = live.server.log().count("no complete request within --params-timeout")
    stalled = [live.connect(10) for _ in range(STALLED)]
    late = live.connect(10)
    try:
        for sock in [*stalled, late]:
            sock.sendall(first)
        time.sleep(0.3)  # every one of them has reached a worker by now (and, before the fix, held it)
        started = time.monotonic()
        live.good()
        assert time.monotonic() - started < 1.0, "a good request waited behind the stalled peers"
        late.sendall(rest)  # within --params-timeout: served
        got = RecordStream().feed(_read_until_end(late, 1))
        assert stdout_of(got, 1).endswith(b"ok") and end_status(got, 1) == REQUEST_COMPLETE
        closed = [closed_by_peer(sock, 6.0) for sock in stalled]
        assert all(closed), f"{closed.count(False)} stalled peer(s) still open"
        warned = live.server.log().count("no complete request within --params-timeout") - log_before
        assert warned == STALLED, live.server.log()[-3000:]
    finally:
        for sock in [*stalled, late]:
            sock.close()
    live.check()


def _read_until_end(sock: socket.socket, rid: int, timeout: float = 5.0) -> bytes:
    data = b""
    deadline = time.monotonic() + timeout
    while end_status(RecordStream().feed(data), rid) is None and time.monotonic() < deadline:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


def test_a_watched_request_outlives_the_idle_timeout() -> None:
    """The connection of a running request is parked (watched) with no expiry: an idle timeout shorter
    than the application does not close it under the request; afterwards the idle timeout applies."""
    server = Server(_app, port=0, graceful_timeout=5, idle_timeout=0.5).start()
    try:
        with socket.create_connection(server.addresses[0][:2], timeout=10) as sock:
            reader = _Reader(sock)
            sock.sendall(b"".join(_records(1, "/slow")))
            reader.wait([1], timeout=SLOW + 5)
            assert stdout_of(reader.records, 1).endswith(b"/slow")
            assert end_status(reader.records, 1) == REQUEST_COMPLETE
            sock.sendall(b"".join(_records(2, "/fast")))
            reader.wait([2])
            assert stdout_of(reader.records, 2).endswith(b"/fast")
            assert closed_by_peer(sock, 3.0)  # idle for 0.5 s: closed
    finally:
        server.stop(graceful=False, timeout=10)


def test_detach_gives_up_only_a_clean_connection() -> None:
    """detach(): a connection between requests gives its socket up unclosed, with the bytes the peer sent
    since still unread in the kernel; with half a request held it refuses and changes nothing."""
    from fcgiserve.handler import ConnectionFactory, HandlerOptions

    factory = ConnectionFactory(_app, HandlerOptions(params_timeout=5))
    for half in (False, True):
        ours, peer = socket.socketpair()
        with ours, peer:
            conn = factory.open(ours, "test")
            assert conn is not None
            peer.sendall(b"".join(_records(1, "/fast")))
            assert conn.serve() is True  # answered, idle again
            stream = RecordStream()
            got: list[tuple[int, int, bytes]] = []
            peer.settimeout(5)
            while end_status(got, 1) is None:
                got += stream.feed(peer.recv(65536))
            assert conn.deadline is None
            if half:
                first, _rest = _half_request(2)
                peer.sendall(first)
                assert conn.serve() is True  # parked with half a request
                assert conn.deadline is not None
                assert conn.detach() is None
                conn.close()
                continue
            peer.sendall(b"".join(_records(2, "/after")))
            sock = conn.detach()
            assert sock is ours and sock.fileno() != -1
            assert conn.serve() is False  # closed as far as it is concerned
            assert conn.detach() is None
            # The next request waits in the kernel, whole, for whoever serves the socket now.
            other = factory.open(sock, "test")
            assert other is not None and other.serve() is True
            while end_status(got, 2) is None:
                got += stream.feed(peer.recv(65536))
            assert stdout_of(got, 2).endswith(b"/after")


def test_the_pool_rests_after_a_stalled_peer_completes_and_leaves() -> None:
    """A connection once parked with a deadline, then served and closed: when that deadline passes with
    nothing parked, the control thread must not spin on it."""
    server = Server(_app, port=0, graceful_timeout=5, params_timeout=0.5).start()
    try:
        with socket.create_connection(server.addresses[0][:2], timeout=10) as sock:
            first, rest = _half_request()
            sock.sendall(first)
            time.sleep(0.2)  # parked with its deadline
            sock.sendall(rest)
            got = RecordStream().feed(_read_until_end(sock, 1))
            assert stdout_of(got, 1).endswith(b"/")
        time.sleep(0.6)  # the deadline has passed, and nothing is parked
        cpu = time.process_time()
        time.sleep(1.0)
        assert time.process_time() - cpu < 0.05, "the pool kept busy with nothing to do"
    finally:
        server.stop(graceful=False, timeout=10)


def test_prefork_multiplexed_opt_in_has_no_head_of_line_blocking(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """prefork --multiplexed --threads 4: a child watches its connection while a request runs, too (the
    pool parks its slot-tracking wrapper), so requests sent meanwhile are answered at once."""
    extra = ["--multiplexed", "--threads", "4"]
    with live_server("prefork", tmp_path_factory.mktemp("prefork-mpxs"), extra) as live:
        with live.connect(10) as sock:
            reader = _Reader(sock)
            sock.sendall(whole_request(1, "/sleep?n=1.5", keep_conn=True))
            time.sleep(0.3)
            sent_at = time.monotonic()
            sock.sendall(whole_request(2, "/", keep_conn=True) + whole_request(3, "/", keep_conn=True))
            reader.wait([1, 2, 3], timeout=SLOW + 5)
            for rid in (2, 3):
                assert reader.ended_at[rid] - sent_at < FAST, f"request {rid} waited behind request 1"
                assert stdout_of(reader.records, rid).endswith(b"ok")
            assert stdout_of(reader.records, 1).endswith(b"slept")
        live.check()
