"""Kept-alive connections outlive the workers that hold them: zero lost requests through real front ends.

nginx (upstream ``keepalive`` + ``fastcgi_keep_conn on``), HAProxy (``fcgi-app`` with ``option keep-conn``,
``option get-values``, config from docs/deploy-haproxy.md), h2o (``fastcgi.connect`` with
``fastcgi.timeout.keepalive``, docs/deploy-h2o.md) and Apache (``mod_proxy_fcgi`` with ``enablereuse=on``,
docs/deploy-apache.md) each carry a bounded mixed load (tests/loadmix.py:
8 keep-alive clients, GETs and POSTs with random bodies, every echoed digest checked) while fcgiserve
recycles its workers (small ``--maxrequests`` with jitter) or gets SIGHUP every second, in both methods.
None of them retries a POST (h2o retries nothing), so a worker that closes a kept connection the web server
was about to reuse shows up here as a 502 or 503 (with FCGI_KEEP_CONN the web server owns the connection's
lifetime, S-D5). Zero failures are asserted, and that the recycling or reloads really happened.

Also: a slow request does not hold up fast ones multiplexed on the same connection (HAProxy ``option
mpxs-conns`` + ``http-reuse always``), stalled peers (half a PARAMS record, then silence) do not take a pool
of 2, ``wsgi.multithread`` per method, and GET_VALUES tells the truth about the pool (S-E2: FCGI_MAX_CONNS,
FCGI_MAX_REQS, FCGI_MPXS_CONNS).

Every process is started with its own temp config on loopback and stopped by pid. The whole file takes about
95 s on 2 shared cores (each load case is bounded at 3.5 s, the spare case at 6.5 s); a failing stalled-peer
case waits out ``--params-timeout`` (4 s) once or twice.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from fcgiserve.client import default_params, fcgi_get_values, fcgi_request
from fcgiserve.protocol import ClientConnection
from tests.helpers import Server, run_fcgiserve, run_nginx, wait_for
from tests.loadmix import LoadResult, every, run_mixed_load
from tests.webservers import (
    APP,
    apache_available,
    established_to,
    exercise,
    h2o_available,
    haproxy_available,
    http_request,
    run_apache,
    run_h2o,
    run_haproxy,
    world_readable_dir,
)

pytestmark = pytest.mark.integration

# Prefork: up to 4 children, so the 8 clients keep every child busy; threaded: its defaults.
METHODS = {
    "threaded": ["--method", "threaded"],
    "prefork": ["--method", "prefork", "--minspare", "2", "--maxspare", "3", "--maxchildren", "4"],
}
# A prefork child is cheap to replace: 25 requests (+0..10) each. A threaded recycle re-executes the whole
# process (a fresh interpreter and import), so it gets a larger count to leave time to serve in between.
RECYCLE = {
    "threaded": ["--maxrequests", "150", "--maxrequests-jitter", "50"],
    "prefork": ["--maxrequests", "25", "--maxrequests-jitter", "10"],
}
FRONT_ENDS = ["nginx", "haproxy", "h2o", "apache"]


@contextlib.contextmanager
def fcgiserve(tmp_path: Path, *args: str) -> Iterator[Server]:
    (tmp_path / "wsapp.py").write_text(APP)
    with run_fcgiserve(["wsapp:application", "--host", "127.0.0.1", *args], tmp_path) as server:
        yield server


@contextlib.contextmanager
def front_end(kind: str, tmp_path: Path, backend: int, snippet: str = "haproxy") -> Iterator[int]:
    """The web server's HTTP port, in front of fcgiserve on ``backend`` with kept-alive connections."""
    if kind == "nginx":
        with run_nginx(tmp_path, f"127.0.0.1:{backend}", keep_conn=True) as nginx:
            yield nginx.port
    elif kind == "apache":
        if not apache_available():
            pytest.fail("apache2 is not installed (scripts/test installs the Debian package apache2)")
        replace = {"8080": str(backend)}
        with world_readable_dir("fcgiserve-apache-") as site:
            try:
                with run_apache(site, "apache-proxy-fcgi", replace, ["proxy", "proxy_fcgi"]) as port:
                    yield port
            finally:  # the site goes away with Apache; its error log stays for assert_no_failures
                if (site / "apache-error.log").exists():
                    shutil.copy(site / "apache-error.log", tmp_path / "apache-error.log")
    elif kind == "h2o":
        if not h2o_available():
            pytest.fail("h2o is not installed (scripts/test installs the Debian package h2o)")
        with run_h2o(tmp_path, "h2o-tcp", {"8080": str(backend)}) as (port, _proc):
            yield port
    else:
        if not haproxy_available():
            pytest.skip("haproxy is not installed (scripts/test installs the Debian package haproxy)")
        with run_haproxy(tmp_path, backend, snippet) as (port, _proc):
            yield port


def reexecs(server: Server) -> int:
    """Threaded recycles and reloads re-execute the process in place (same pid): count them in the log."""
    return server.log().count("re-executing")


def assert_no_failures(result: LoadResult, server: Server) -> None:
    assert result.ok > 100, f"too little load to prove anything: {result.summary()}\n{server.log()[-3000:]}"
    front_logs = _front_end_logs(server.log_path.parent)
    assert result.failed == 0, f"{result.summary()}\nserver log tail:\n{server.log()[-3000:]}\n{front_logs}"
    assert server.proc.poll() is None, "the server died under load"


def _front_end_logs(directory: Path) -> str:
    """The tails of the web servers' own logs (Apache's, h2o's, HAProxy's): why they answered 502 or 503."""
    found = []
    for pattern in ("apache-error.log", "h2o-error-*.log", "haproxy-*.log"):
        for path in sorted(directory.glob(pattern)):
            found.append(f"--- {path.name}:\n{path.read_text(errors='replace')[-2000:]}")
    return "\n".join(found)


# --- (a) workers recycle under load ---------------------------------------------------------------------


@pytest.mark.parametrize("front", FRONT_ENDS)
@pytest.mark.parametrize("method", ["threaded", "prefork"])
def test_recycling_under_load_loses_no_request(tmp_path: Path, method: str, front: str) -> None:
    with fcgiserve(tmp_path, *METHODS[method], *RECYCLE[method]) as server:
        with front_end(front, tmp_path, server.port) as port:
            result = run_mixed_load(port)
        if method == "prefork":
            # 25..35 requests per child: a few hundred requests pass through many children.
            assert len(result.pids) >= 6, f"children did not recycle: {sorted(result.pids)}"
        else:
            assert reexecs(server) >= 2, f"the threaded server did not recycle:\n{server.log()[-2000:]}"
        assert_no_failures(result, server)


# --- (b) SIGHUP every second during the load ------------------------------------------------------------


@pytest.mark.parametrize("front", FRONT_ENDS)
@pytest.mark.parametrize("method", ["threaded", "prefork"])
def test_reload_every_second_under_load_loses_no_request(tmp_path: Path, method: str, front: str) -> None:
    with fcgiserve(tmp_path, *METHODS[method]) as server:
        with (
            front_end(front, tmp_path, server.port) as port,
            every(1.0, lambda: os.kill(server.pid, signal.SIGHUP)) as sent,
        ):
            # The time bound governs (3.5 s: three reloads), not the request count, however fast the server.
            result = run_mixed_load(port, max_requests=50000)
        assert len(sent) >= 3
        if method == "prefork":
            assert server.log().count("reload requested") >= 2, server.log()[-2000:]
            assert len(result.pids) > 3, f"no new generation of children answered: {sorted(result.pids)}"
        else:
            assert reexecs(server) >= 2, f"the threaded server did not reload:\n{server.log()[-2000:]}"
        assert_no_failures(result, server)


# --- (c) prefork spares retire as the load drops --------------------------------------------------------


def _concurrently_sleeping(port: int, count: int, seconds: float) -> list[str]:
    """``count`` requests to /sleep at once through the front end; the X-Pid of each answer ("" if none)."""
    pids = [""] * count

    def one(index: int) -> None:
        reply = http_request(port, "GET", f"/sleep?{seconds}")
        if reply.status == 200:
            pids[index] = next(iter(reply.all("X-Pid")), "")

    threads = [threading.Thread(target=one, args=(n,)) for n in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    return pids


@pytest.mark.parametrize("front", FRONT_ENDS)
def test_spare_children_retire_as_load_drops_without_losing_requests(tmp_path: Path, front: str) -> None:
    """4 children (one request at a time each) all hold kept connections after a load of 8 clients; then the
    spare bounds drop to 1..1 (SIGTTOU x3) and 2 clients go on while the children above --maxspare sit idle
    long enough to retire (prefork.SPARE_IDLE_BEFORE_RETIRE)."""
    pool = ["--method", "prefork", "--minspare", "4", "--maxspare", "4", "--maxchildren", "4"]
    with fcgiserve(tmp_path, *pool, "--threads", "1", "--log-level", "debug") as server:
        with front_end(front, tmp_path, server.port) as port:
            # Four requests at once, each holding its child for a while: the web server opens a connection to
            # each of four children and keeps them. A fast load alone may all go to one child, which keeps up.
            spread = _concurrently_sleeping(port, 4, 0.3)
            busy = run_mixed_load(port, seconds=2.0)
            for sent in range(1, 4):  # one at a time: signals of one kind arriving together merge into one
                os.kill(server.pid, signal.SIGTTOU)
                assert wait_for(lambda n=sent: server.log().count("TTOU: spare") >= n, timeout=5)
            calm = run_mixed_load(port, clients=2, seconds=4.5, seed=14)
        assert len(set(spread)) >= 2, f"the sleeping requests reached one child only: {spread}"
        assert "retiring idle worker" in server.log(), f"no spare retired:\n{server.log()[-2000:]}"
        assert_no_failures(busy, server)
        assert_no_failures(calm, server)


# --- multiplexing: a slow request does not delay fast ones sharing its connection -----------------------


def test_slow_request_does_not_delay_fast_ones_multiplexed_by_haproxy(tmp_path: Path) -> None:
    """HAProxy with ``option mpxs-conns`` + ``http-reuse always`` puts requests of different clients on one
    FastCGI connection. While a 2.5 s request runs, 8 fast requests from other clients answer at once."""
    with fcgiserve(tmp_path, *METHODS["threaded"]) as server:
        with front_end("haproxy", tmp_path, server.port, "haproxy-mpxs") as port:
            assert (
                http_request(port, "GET", "/echo").status == 200
            )  # HAProxy has its connection (and GET_VALUES)
            slow: list[int] = []
            slow_thread = threading.Thread(
                target=lambda: slow.append(http_request(port, "GET", "/sleep?2.5").status)
            )
            slow_thread.start()
            time.sleep(0.3)
            latencies: dict[int, float] = {}
            statuses: dict[int, int] = {}

            def fast(n: int) -> None:
                start = time.monotonic()
                statuses[n] = http_request(port, "GET", "/echo").status
                latencies[n] = time.monotonic() - start

            threads = [threading.Thread(target=fast, args=(n,)) for n in range(8)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(30)
            shared = established_to(server.port)
            slow_thread.join(30)
        assert slow == [200]
        assert sorted(statuses.values()) == [200] * 8
        late = sorted(f"{t:.2f}s" for t in latencies.values() if t >= 0.5)
        assert not late, f"{len(late)} of 8 fast requests waited behind the slow one: {late}"
        # 9 requests at once on fewer than 8 connections: some of them really shared one.
        assert shared < 8, f"HAProxy opened {shared} connections: the case did not multiplex"


# --- stalled peers cost a file descriptor, not a worker -------------------------------------------------


def stall(port: int) -> socket.socket:
    """A raw peer that sends BEGIN_REQUEST and half a PARAMS record, then goes silent."""
    client = ClientConnection()
    pairs = [(k.encode(), v.encode()) for k, v in default_params("/echo").items()]
    begin = client.begin_request(1, keep_conn=True)
    params = client.send_params(1, pairs)
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    sock.sendall(begin + params[: len(params) // 2])
    return sock


@pytest.mark.parametrize("method", ["threaded", "prefork"])
def test_stalled_peers_do_not_take_a_pool_of_two(tmp_path: Path, method: str) -> None:
    """10 peers stalled in the middle of PARAMS, a pool of 2: a good request through nginx answers at once.
    A request needs a worker only once its PARAMS stream is complete (S-F2); ``--params-timeout`` bounds the
    stalled peers, not the pool."""
    # Prefork with one thread per child (the default once a child runs one request at a time): 2 workers.
    pool = ["--method", method, "--minspare", "1", "--maxspare", "2", "--maxchildren", "2"]
    pool += ["--threads", "1"] if method == "prefork" else []
    with fcgiserve(tmp_path, *pool, "--params-timeout", "4") as server:
        with front_end("nginx", tmp_path, server.port) as port, contextlib.ExitStack() as peers:
            assert http_request(port, "GET", "/echo").status == 200
            for _ in range(10):
                peers.enter_context(stall(server.port))
            time.sleep(0.3)  # every peer accepted and its half record read
            start = time.monotonic()
            reply = http_request(port, "POST", "/echo", b"x" * 1000)
            waited = time.monotonic() - start
        assert reply.status == 200 and reply.body.startswith(b"POST 1000 ")
        assert waited < 1.0, f"a good request waited {waited:.2f}s behind 10 stalled peers"


# --- wsgi.multithread tells the truth per method ---------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--method", "threaded"], b"multithread=True multiprocess=False"),
        (
            ["--method", "prefork", "--maxchildren", "2", "--maxspare", "2"],
            b"multithread=False multiprocess=True",
        ),
        (
            ["--method", "prefork", "--maxchildren", "2", "--maxspare", "2", "--threads", "4"],
            b"multithread=True multiprocess=True",
        ),
    ],
    ids=["threaded", "prefork", "prefork-threads-4"],
)
def test_wsgi_multithread_per_method(tmp_path: Path, args: list[str], expected: bytes) -> None:
    """Prefork runs one request at a time per child by default: an application that is not thread safe is
    safe there, and ``wsgi.multithread`` says so. ``--threads N`` opts in to threads."""
    with fcgiserve(tmp_path, *args) as server:
        response = fcgi_request(("127.0.0.1", server.port), path="/environ")
    assert response.status == 200
    assert response.body == expected


# --- GET_VALUES is truthful about the pool (S-E2) --------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "max_reqs", "mpxs"),
    [
        (["--method", "threaded", "--maxchildren", "7", "--maxspare", "5"], 7, "1"),
        (["--method", "prefork", "--maxchildren", "3", "--maxspare", "3"], 3, "0"),
        (["--method", "prefork", "--maxchildren", "3", "--maxspare", "3", "--threads", "4"], 12, "0"),
    ],
    ids=["threaded", "prefork", "prefork-threads-4"],
)
def test_get_values_describe_the_pool(tmp_path: Path, args: list[str], max_reqs: int, mpxs: str) -> None:
    """FCGI_MAX_REQS is the number of requests that really run at once (prefork: maxchildren x threads),
    FCGI_MAX_CONNS at least that, FCGI_MPXS_CONNS 1 only where requests on one connection run concurrently."""
    with fcgiserve(tmp_path, *args) as server:
        values = fcgi_get_values(("127.0.0.1", server.port))
    assert values["FCGI_MAX_REQS"] == str(max_reqs), values
    assert int(values["FCGI_MAX_CONNS"]) >= max_reqs, values
    assert values["FCGI_MPXS_CONNS"] == mpxs, values


@pytest.mark.parametrize("method", ["threaded", "prefork"])
def test_haproxy_get_values_and_keep_conn_against_both_methods(tmp_path: Path, method: str) -> None:
    """HAProxy with ``option get-values`` and ``option keep-conn`` (docs/deploy-haproxy.md) drives either
    pool: GET (SCRIPT_NAME '' and PATH_INFO), POST with a body, a 2 MiB response, repeated header names."""
    with fcgiserve(tmp_path, *METHODS[method]) as server, front_end("haproxy", tmp_path, server.port) as port:
        exercise(port)
        assert server.proc.poll() is None
