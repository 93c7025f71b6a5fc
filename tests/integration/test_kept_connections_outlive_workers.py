"""Kept-alive connections outlive the workers that hold them (issue 13, part 1).

nginx with an upstream ``keepalive`` and ``fastcgi_keep_conn on`` reuses backend connections and does not
retry a POST: a worker that closes a kept connection just as nginx sends the next request on it makes a 502
("upstream prematurely closed connection"). Each case runs a bounded mixed load (GETs and POSTs whose echoed
bodies are checked) while workers recycle or reload, and asserts that not one request failed.
"""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
from pathlib import Path

import pytest

from fcgiserve.client import default_params
from fcgiserve.protocol import ClientConnection, EndRequest, Role, Stdout
from tests.helpers import http_get, run_fcgiserve, run_nginx, wait_for

pytestmark = pytest.mark.integration

APP = """
import time

def application(environ, start_response):
    if environ.get("REQUEST_URI", "").startswith("/slow/"):
        time.sleep(0.005)  # keeps a child busy whatever the client's own speed
    length = int(environ.get("CONTENT_LENGTH") or 0)
    body = environ["wsgi.input"].read(length) if length else environ.get("QUERY_STRING", "").encode()
    start_response("200 OK", [("Content-Type", "application/octet-stream")])
    return [b"echo:", body]
"""

CLIENTS = 6
SECONDS = 4.0


def _mixed_load(url: str, seconds: float, clients: int, pause: float = 0.0) -> tuple[int, list[str]]:
    """(requests made, failures) of ``clients`` threads sending GETs and POSTs for ``seconds`` (bounded),
    each waiting ``pause`` between two requests."""
    failures: list[str] = []
    done = [0] * clients

    def client(index: int) -> None:
        deadline = time.monotonic() + seconds
        for n in range(5000):
            if time.monotonic() > deadline:
                break
            token = f"c{index}-{n}"
            if n % 2:
                body = (token * 50).encode()
                status, _headers, reply = http_get(url + "/post", data=body)
            else:
                body = token.encode()
                status, _headers, reply = http_get(url + "/get?" + token)
            done[index] += 1
            time.sleep(pause)
            if status != 200 or reply != b"echo:" + body:
                failures.append(f"{token}: {status} {reply[:60]!r}")

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(seconds + 30)
    return sum(done), failures


def _hup_every_second(pid: int, seconds: float, stop: threading.Event) -> None:
    deadline = time.monotonic() + seconds
    while not stop.wait(1.0) and time.monotonic() < deadline:
        os.kill(pid, signal.SIGHUP)


@pytest.mark.parametrize(
    ("args", "hup"),
    [
        (
            ["--method", "prefork", "--maxchildren", "6", "--maxrequests", "20", "--maxrequests-jitter", "5"],
            False,
        ),
        (["--method", "prefork", "--maxchildren", "6"], True),
        (["--method", "threaded", "--maxrequests", "150"], False),
        (["--method", "threaded"], True),
    ],
    ids=["prefork-recycle", "prefork-hup", "threaded-reexec", "threaded-hup"],
)
def test_no_request_fails_while_workers_recycle_or_reload(tmp_path: Path, args: list[str], hup: bool) -> None:
    (tmp_path / "echoapp.py").write_text(APP)
    with (
        run_fcgiserve(["echoapp", "--minspare", "2", "--maxspare", "4", *args], tmp_path) as server,
        run_nginx(tmp_path, f"127.0.0.1:{server.port}", keep_conn=True) as web,
    ):
        stop = threading.Event()
        hupper = threading.Thread(target=_hup_every_second, args=(server.pid, SECONDS, stop))
        if hup:
            hupper.start()
        try:
            made, failures = _mixed_load(web.url, SECONDS, CLIENTS)
        finally:
            stop.set()
            if hup:
                hupper.join(5)
        assert made > 200, server.log()
        assert failures == [], f"{len(failures)} of {made} failed: {failures[:5]}\n{web.error_log()[-2000:]}"
        log = server.log()
        if "--maxrequests" in args:
            assert "recycled after" in log or "re-executing" in log, log[-2000:]


def test_retiring_spares_hand_their_connections_over(tmp_path: Path) -> None:
    """A load that drops leaves idle spares above --maxspare; they retire while nginx still holds kept
    connections to them, and the lighter load that goes on through those connections sees no failure."""
    (tmp_path / "echoapp.py").write_text(APP)
    args = ["echoapp", "--method", "prefork", "--minspare", "1", "--maxspare", "1", "--maxchildren", "6"]
    args += ["--log-level", "debug"]  # retirements are logged at debug
    with (
        run_fcgiserve(args, tmp_path) as server,
        run_nginx(tmp_path, f"127.0.0.1:{server.port}", keep_conn=True) as web,
    ):
        # Grows the pool: 8 clients of 5 ms requests keep one child busy at every tick. Fast requests may not,
        # since a one-thread child can keep up with 8 Python clients, and then the pool rightly stays small.
        _made, failures = _mixed_load(web.url + "/slow", 2.0, 8)
        assert failures == [], failures[:5]
        assert "all children busy" in server.log(), server.log()[-2000:]
        # Spares settle (2 s idle) and retire meanwhile, while nginx keeps using its cached connections.
        more, failures = _mixed_load(web.url, 5.0, 2, pause=0.02)
        assert failures == [], f"{len(failures)} of {more} failed: {failures[:5]}\n{web.error_log()[-2000:]}"
        assert "retiring idle worker" in server.log(), server.log()[-2000:]


class _KeptClient:
    """A web server's kept-alive FastCGI connection (FCGI_KEEP_CONN, one request at a time, id 1)."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self._protocol = ClientConnection()

    def request(self, query: str) -> bytes:
        c = self._protocol
        params = [(k.encode(), v.encode()) for k, v in default_params("/kept").items()]
        params.append((b"QUERY_STRING", query.encode()))
        out = (
            c.begin_request(1, Role.RESPONDER, keep_conn=True)
            + c.send_params(1, params)
            + c.send_stdin(1, b"")
        )
        self.sock.sendall(out)
        stdout = b""
        while True:
            chunk = self.sock.recv(65536)
            if not chunk:
                return b""  # closed by the server: what nginx reports as a 502
            for event in c.receive_data(chunk):
                if isinstance(event, Stdout):
                    stdout += event.data
                elif isinstance(event, EndRequest):
                    return stdout.split(b"\r\n\r\n", 1)[1]


@pytest.mark.parametrize("event", ["maxrequests", "hup"])
def test_a_threaded_reexec_adopts_the_kept_connections(tmp_path: Path, event: str) -> None:
    """The same peer socket keeps working across the re-exec (same pid, new image)."""
    (tmp_path / "echoapp.py").write_text(APP)
    args = ["echoapp", "--method", "threaded"]
    if event == "maxrequests":
        args += ["--maxrequests", "4"]
    with run_fcgiserve(args, tmp_path) as server:
        client = _KeptClient(server.port)
        for n in range(12):
            if event == "hup" and n % 4 == 3:
                before = server.log().count("re-executing")
                os.kill(server.pid, signal.SIGHUP)
                assert wait_for(lambda before=before: server.log().count("re-executing") > before, 10)
            assert client.request(f"n{n}") == f"echo:n{n}".encode(), server.log()[-3000:]
        assert server.log().count("re-executing") >= 2
        assert server.proc.poll() is None
        client.sock.close()


@pytest.mark.parametrize("method", ["threaded", "prefork"])
def test_a_kept_connection_taken_over_keeps_the_idle_timeout_not_the_new_connection_one(
    tmp_path: Path, method: str
) -> None:
    """A kept connection the web server holds idle after a reload (threaded: adopted by the re-executed
    image; prefork: handed to the new generation) is an idle kept connection, not a new one that never
    spoke: --params-timeout (a new connection's deadline for its first request) must not close it; only
    --idle-timeout may. Closing it would race with the web server's next request on it (a 502)."""
    (tmp_path / "echoapp.py").write_text(APP)
    args = ["echoapp", "--method", method, "--params-timeout", "0.5", "--idle-timeout", "60"]
    if method == "prefork":
        args += ["--minspare", "1", "--maxspare", "1", "--maxchildren", "2"]
    with run_fcgiserve(args, tmp_path) as server:
        client = _KeptClient(server.port)
        assert client.request("before") == b"echo:before"
        before = server.log().count("fcgiserve threaded pool serving") + server.log().count("is serving")
        os.kill(server.pid, signal.SIGHUP)
        assert wait_for(
            lambda: (
                server.log().count("fcgiserve threaded pool serving") + server.log().count("is serving")
                > before
            ),
            15,
        ), server.log()[-2000:]
        time.sleep(2.0)  # idle, four times --params-timeout
        assert client.request("after") == b"echo:after", server.log()[-3000:]
        assert "sent nothing within" not in server.log(), server.log()[-3000:]
        client.sock.close()
