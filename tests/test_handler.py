"""handler.py through a real server on loopback (library API, threaded pool), driven by a raw FastCGI client.

Each test speaks the protocol with ``ClientConnection`` over a real socket, so what is checked is what a web
server would see: records, their order, END_REQUEST statuses, connection closes.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import pytest

from fcgiserve import BodyIncomplete, ClientDisconnected, Server
from fcgiserve.client import default_params, fcgi_get_values, fcgi_request
from fcgiserve.protocol import (
    ClientConnection,
    EndRequest,
    ProtocolStatus,
    Role,
    Stderr,
    Stdout,
)
from tests.helpers import streaming_echo

App = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]

PARAMS = [
    (b"REQUEST_METHOD", b"GET"),
    (b"REQUEST_URI", b"/x"),
    (b"SCRIPT_NAME", b"/x"),
    (b"SERVER_NAME", b"localhost"),
    (b"SERVER_PORT", b"80"),
    (b"SERVER_PROTOCOL", b"HTTP/1.1"),
]


def hello(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"hello " + environ["PATH_INFO"].encode()]


@pytest.fixture
def serve() -> Iterator[Callable[..., tuple[str, int]]]:
    servers: list[Server] = []

    def start(app: App, **options: Any) -> tuple[str, int]:
        options.setdefault("port", 0)
        options.setdefault("graceful_timeout", 5)
        server = Server(app, **options).start()
        servers.append(server)
        host, port = server.addresses[0][:2]
        return host, port

    yield start
    for server in servers:
        server.stop(graceful=False, timeout=10)


_OPEN: list[socket.socket] = []


@pytest.fixture(autouse=True)
def _close_client_sockets() -> Iterator[None]:
    yield
    while _OPEN:
        _OPEN.pop().close()


class Conn:
    """A raw FastCGI client connection that collects response events per request id."""

    def __init__(self, address: tuple[str, int]) -> None:
        self.sock = socket.create_connection(address, timeout=10)
        _OPEN.append(self.sock)
        self.client = ClientConnection()
        self.stdout: dict[int, bytearray] = {}
        self.stderr: dict[int, bytearray] = {}
        self.ends: dict[int, EndRequest] = {}
        self.eof = False

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def request(
        self, rid: int, params: list[tuple[bytes, bytes]] = PARAMS, body: bytes = b"", **kw: Any
    ) -> None:
        c = self.client
        out = c.begin_request(rid, **kw) + c.send_params(rid, params)
        if body:
            out += c.send_stdin(rid, body)
        self.send(out + c.send_stdin(rid, b""))

    def pump(self, until: Callable[[], bool], timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while not until():
            assert time.monotonic() < deadline, "timed out waiting for the server"
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                data = self.sock.recv(65536)
            except ConnectionResetError:
                data = b""
            if not data:
                self.eof = True
                return
            for event in self.client.receive_data(data):
                if isinstance(event, Stdout):
                    self.stdout.setdefault(event.request_id, bytearray()).extend(event.data)
                elif isinstance(event, Stderr):
                    self.stderr.setdefault(event.request_id, bytearray()).extend(event.data)
                elif isinstance(event, EndRequest):
                    self.ends[event.request_id] = event

    def wait_end(self, rid: int, timeout: float = 10.0) -> EndRequest:
        self.pump(lambda: rid in self.ends, timeout)
        assert rid in self.ends, f"no END_REQUEST for {rid} (eof={self.eof})"
        return self.ends[rid]

    def close(self) -> None:
        self.sock.close()


def test_keep_conn_serves_many_requests_on_one_connection(serve: Callable[..., tuple[str, int]]) -> None:
    """S-D5: with FCGI_KEEP_CONN the web server owns the connection's life."""
    conn = Conn(serve(hello))
    for rid in (1, 2, 1, 7):
        conn.ends.pop(rid, None)
        conn.stdout.pop(rid, None)
        conn.request(rid, keep_conn=True)
        assert conn.wait_end(rid).protocol_status == ProtocolStatus.REQUEST_COMPLETE
        assert conn.stdout[rid].endswith(b"hello /x")
    conn.close()


def test_without_keep_conn_the_server_closes_after_end_request(serve: Callable[..., tuple[str, int]]) -> None:
    conn = Conn(serve(hello))
    conn.request(1)
    conn.wait_end(1)
    conn.pump(lambda: conn.eof)
    assert conn.eof


def test_multiplexed_requests_run_concurrently(serve: Callable[..., tuple[str, int]]) -> None:
    """Two slow requests on one connection overlap; their records arrive whole (S-B5)."""

    def slow(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain")])
        for i in range(5):
            time.sleep(0.1)
            yield (environ["QUERY_STRING"] * 3000 + str(i)).encode()

    conn = Conn(serve(slow))
    c = conn.client
    started = time.monotonic()
    # Both requests leave in one packet, as a multiplexing web server sends overlapping requests. (A request
    # already running inline holds a later one back until it ends: see "Scheduling" in handler.py.)
    conn.send(
        b"".join(
            c.begin_request(rid, keep_conn=True)
            + c.send_params(rid, [*PARAMS, (b"QUERY_STRING", marker)])
            + c.send_stdin(rid, b"")
            for rid, marker in ((1, b"q"), (2, b"z"))
        )
    )
    conn.wait_end(1)
    conn.wait_end(2)
    elapsed = time.monotonic() - started
    assert elapsed < 0.9, f"requests ran one after the other ({elapsed:.2f}s)"
    assert bytes(conn.stdout[1]).count(b"z") == 0 and bytes(conn.stdout[2]).count(b"q") == 0
    assert bytes(conn.stdout[1]).count(b"q") == bytes(conn.stdout[2]).count(b"z") == 15000


def test_get_values_tells_the_running_configuration(serve: Callable[..., tuple[str, int]]) -> None:
    host, port = serve(hello, maxchildren=7)
    assert fcgi_get_values((host, port)) == {
        "FCGI_MAX_CONNS": "7",
        "FCGI_MAX_REQS": "7",
        "FCGI_MPXS_CONNS": "1",
    }


def test_non_multiplexed_server_answers_cant_mpx_conn(serve: Callable[..., tuple[str, int]]) -> None:
    gate = threading.Event()

    def waits(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        gate.wait(5)
        start_response("200 OK", [])
        return [b"first"]

    address = serve(waits, multiplexed=False)
    assert fcgi_get_values(address)["FCGI_MPXS_CONNS"] == "0"
    conn = Conn(address)
    c = conn.client
    both = b"".join(
        c.begin_request(rid, keep_conn=True) + c.send_params(rid, PARAMS) + c.send_stdin(rid, b"")
        for rid in (1, 2)
    )
    conn.send(both)  # one packet: request 2 is seen while request 1 is active
    assert conn.wait_end(2).protocol_status == ProtocolStatus.CANT_MPX_CONN
    gate.set()
    assert conn.wait_end(1).protocol_status == ProtocolStatus.REQUEST_COMPLETE
    assert bytes(conn.stdout[1]).endswith(b"first")


def test_unknown_role_is_refused(serve: Callable[..., tuple[str, int]]) -> None:
    with socket.create_connection(serve(hello), timeout=10) as sock:
        sock.sendall(b"\x01\x01\x00\x01\x00\x08\x00\x00" + b"\x00\x09\x00\x00\x00\x00\x00\x00")  # role 9
        answer = b""
        while len(answer) < 16 and (chunk := sock.recv(64)):
            answer += chunk
    # END_REQUEST(1): appStatus 0, protocolStatus UNKNOWN_ROLE (S-G4)
    assert answer == b"\x01\x03\x00\x01\x00\x08\x00\x00" + b"\x00\x00\x00\x00\x03\x00\x00\x00"


def test_overloaded_beyond_max_requests_in_flight(serve: Callable[..., tuple[str, int]]) -> None:
    gate = threading.Event()

    def waits(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        gate.wait(5)
        start_response("200 OK", [])
        return [b"ok"]

    conn = Conn(serve(waits, maxchildren=2, maxspare=2, minspare=1))
    for rid in (1, 2, 3):
        conn.request(rid, keep_conn=True)
    try:
        assert conn.wait_end(3).protocol_status == ProtocolStatus.OVERLOADED
    finally:
        gate.set()
    assert conn.wait_end(1).protocol_status == ProtocolStatus.REQUEST_COMPLETE
    assert conn.wait_end(2).protocol_status == ProtocolStatus.REQUEST_COMPLETE


def test_abort_request_reaches_the_running_app(serve: Callable[..., tuple[str, int]]) -> None:
    """S-F7 / B2: the app's next body read raises, END_REQUEST follows promptly."""
    seen: list[str] = []

    def reader(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        try:
            environ["wsgi.input"].read()
        except ClientDisconnected as exc:
            seen.append(type(exc).__name__)
            raise
        start_response("200 OK", [])
        return [b"read it all"]

    conn = Conn(serve(reader))
    params = [*PARAMS, (b"REQUEST_METHOD", b"POST"), (b"CONTENT_LENGTH", b"100000")]
    conn.send(conn.client.begin_request(1, keep_conn=True) + conn.client.send_params(1, params))
    conn.send(conn.client.send_stdin(1, b"x" * 1000))
    time.sleep(0.2)
    started = time.monotonic()
    conn.send(conn.client.abort_request(1))
    end = conn.wait_end(1)
    assert time.monotonic() - started < 2
    assert end.app_status != 0
    assert seen == ["RequestAborted"]


def test_peer_gone_mid_response_is_one_quiet_line(
    serve: Callable[..., tuple[str, int]], caplog: pytest.LogCaptureFixture
) -> None:
    """P16: a client that disappears never kills a worker and never floods the log with tracebacks."""
    closed = threading.Event()

    def streaming(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        class Body:
            def __iter__(self) -> Iterator[bytes]:
                for _ in range(2000):
                    time.sleep(0.001)
                    yield b"x" * 65536

            def close(self) -> None:
                closed.set()

        start_response("200 OK", [])
        return Body()

    caplog.set_level(logging.DEBUG, logger="fcgiserve")
    address = serve(streaming)  # the app's generator-like body makes the response stream
    conn = Conn(address)
    conn.request(1)
    conn.pump(lambda: len(conn.stdout.get(1, b"")) > 100_000)
    conn.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    conn.close()  # RST
    assert closed.wait(10), "close() on the iterable must be called when the client went away"
    assert not [r for r in caplog.records if r.exc_info], "no traceback for a vanished client"


def test_server_keeps_serving_after_a_vanished_client(serve: Callable[..., tuple[str, int]]) -> None:
    address = serve(hello)
    for _ in range(20):
        with socket.create_connection(address) as sock:
            client = ClientConnection()
            sock.sendall(client.begin_request(1) + client.send_params(1, PARAMS))
    assert fcgi_request(address, path="/after").body == b"hello /after"


def test_short_body_is_an_error_for_the_app(serve: Callable[..., tuple[str, int]]) -> None:
    """S-G1: STDIN ends before CONTENT_LENGTH -> the app's read raises BodyIncomplete."""
    seen: list[str] = []

    def reader(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        try:
            environ["wsgi.input"].read()
        except BodyIncomplete:
            seen.append("incomplete")
            raise
        start_response("200 OK", [])
        return [b"complete"]

    address = serve(reader)
    params = [*PARAMS, (b"REQUEST_METHOD", b"POST"), (b"CONTENT_LENGTH", b"10")]
    conn = Conn(address)
    conn.request(1, params, body=b"12345")
    conn.wait_end(1)
    assert seen == ["incomplete"]
    assert bytes(conn.stdout[1]).startswith(b"Status: 500")


def test_large_upload_is_streamed_and_spooled(serve: Callable[..., tuple[str, int]]) -> None:
    def digest(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        total = 0
        while chunk := environ["wsgi.input"].read(65536):
            total += len(chunk)
        start_response("200 OK", [])
        return [str(total).encode()]

    address = serve(digest, spool_threshold="64K")
    size = 20 * 1024 * 1024
    response = fcgi_request(address, body=b"z" * size, method="POST", timeout=60)
    assert response.body == str(size).encode()


def test_wsgi_errors_go_out_as_stderr(serve: Callable[..., tuple[str, int]]) -> None:
    def noisy(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        environ["wsgi.errors"].write("something odd\n")
        start_response("200 OK", [])
        return [b"ok"]

    response = fcgi_request(serve(noisy))
    assert response.stderr == b"something odd\n" and response.body == b"ok"


def test_max_body_size_answers_413_without_running_the_app(serve: Callable[..., tuple[str, int]]) -> None:
    ran: list[bool] = []

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        ran.append(True)
        start_response("200 OK", [])
        return [b"ran"]

    response = fcgi_request(serve(app, max_body_size="1K"), body=b"y" * 5000, method="POST")
    assert response.status == 413 and ran == []


def test_refused_peer_is_closed_at_once(serve: Callable[..., tuple[str, int]]) -> None:
    conn = Conn(serve(hello, allow_from="10.9.8.7"))
    conn.request(1)
    conn.pump(lambda: conn.eof, timeout=5)
    assert conn.eof and conn.ends == {}


def test_authorizer_role_gets_no_body_and_its_role(serve: Callable[..., tuple[str, int]]) -> None:
    def authorizer(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        start_response("200 OK", [("Variable-User", "alice")])
        return [environ["FCGI_ROLE"].encode()]

    response = fcgi_request(serve(authorizer), role=Role.AUTHORIZER)
    assert response.body == b"AUTHORIZER" and response.header("Variable-User") == "alice"


def test_filter_role_reads_the_data_stream(serve: Callable[..., tuple[str, int]]) -> None:
    def upper(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        environ["wsgi.input"].read()
        start_response("200 OK", [])
        return [environ["fcgi.data"].read().upper()]

    response = fcgi_request(
        serve(upper),
        {"FCGI_DATA_LENGTH": "11", "FCGI_DATA_LAST_MOD": "0"},
        role=Role.FILTER,
        data=b"hello world",
    )
    assert response.body == b"HELLO WORLD"


@pytest.mark.parametrize("shape", ["one chunk", "write() then chunks", "many small chunks"])
def test_large_output_arrives_whole_and_in_order(serve: Callable[..., tuple[str, int]], shape: str) -> None:
    """Chunks of 16 KiB and more leave as record headers around the chunk itself (one sendmsg); the header
    block comes first either way, and END_REQUEST last."""
    body = bytes(range(256)) * 1200  # 307,200 bytes: several records per chunk

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        write = start_response("200 OK", [("Content-Length", str(len(body)))])
        if shape == "one chunk":
            return [body]
        if shape == "write() then chunks":
            write(body[:100_000])
            return [body[100_000:200_000], body[200_000:]]
        return [body[i : i + 1000] for i in range(0, len(body), 1000)]

    conn = Conn(serve(app))
    for rid in (1, 2):
        conn.request(rid, keep_conn=True)
        assert conn.wait_end(rid).protocol_status == ProtocolStatus.REQUEST_COMPLETE
        head, _, received = bytes(conn.stdout[rid]).partition(b"\r\n\r\n")
        assert head.startswith(b"Status: 200 OK\r\n") and received == body
    conn.close()


# ------------------------------------------------------------------------- bodies without CONTENT_LENGTH

BODY_MODES = ["read()", "read(n)", "readline()", "iteration", "readlines()"]


def _read_body(body: Any, mode: str) -> bytes:
    if mode == "read()":
        return bytes(body.read())
    if mode == "read(n)":
        parts = []
        while piece := body.read(10_000):
            parts.append(piece)
        return b"".join(parts)
    if mode == "readline()":
        return b"".join(iter(body.readline, b""))
    if mode == "iteration":
        return b"".join(body)
    return b"".join(body.readlines())


def _digest_app(mode: str, seen: list[object]) -> App:
    """Answers "<bytes read> <sha256>" of wsgi.input read the given way; records what went wrong."""

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        seen.append((environ["fcgiserve.request_id"], environ.get("CONTENT_LENGTH")))
        try:
            data = _read_body(environ["wsgi.input"], mode)
        except OSError as exc:
            seen.append(exc)
            raise
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [f"{len(data)} {hashlib.sha256(data).hexdigest()}".encode()]

    return app


def _chunked_body(size: int) -> bytes:
    """Random bytes with a newline now and then (for readline), as a browser upload would have."""
    data = bytearray(os.urandom(size))
    for pos in range(0, size, 997):
        data[pos] = 10
    return bytes(data)


def _post_without_length(
    conn: Conn, rid: int, body: bytes, content_length: bytes | None, together: bytes = b""
) -> threading.Thread:
    """BEGIN + PARAMS without CONTENT_LENGTH (or with it empty, as nginx sends it for a chunked upload), then
    the body in uneven STDIN records from a thread, a little at a time, then the empty STDIN. ``together``
    leaves in the same packet as the PARAMS (another request: the connection multiplexes)."""
    params = [*PARAMS, (b"REQUEST_METHOD", b"POST"), (b"HTTP_TRANSFER_ENCODING", b"chunked")]
    if content_length is not None:
        params.append((b"CONTENT_LENGTH", content_length))
    c = conn.client
    conn.send(c.begin_request(rid, keep_conn=True) + c.send_params(rid, params) + together)

    # Encoded up front: the client object stops taking records for the request once its END_REQUEST came.
    records, pos, sizes = [], 0, [65535, 7, 30_000, 1, 12_345]
    while pos < len(body):
        piece = body[pos : pos + sizes[len(records) % len(sizes)]]
        records.append(c.send_stdin(rid, piece))
        pos += len(piece)
    records.append(c.send_stdin(rid, b""))

    def send() -> None:
        with contextlib.suppress(OSError):  # the server may answer 413 and close before it all went out
            for record in records:
                conn.send(record)
                time.sleep(0.002)

    sender = threading.Thread(target=send, daemon=True)
    sender.start()
    return sender


@pytest.mark.parametrize("scheduling", ["inline", "threaded"])
@pytest.mark.parametrize("mode", BODY_MODES)
def test_body_without_content_length_is_read_until_stdin_ends(
    serve: Callable[..., tuple[str, int]], mode: str, scheduling: str
) -> None:
    """nginx (fastcgi_request_buffering off) and other clients send a chunked upload with CONTENT_LENGTH
    empty or absent: wsgi.input gives every byte until STDIN ends, spooled past --spool-threshold, whether the
    inline request pulls it from the socket (fill) or the reader of a multiplexed connection feeds it."""
    seen: list[object] = []
    conn = Conn(serve(_digest_app(mode, seen), spool_threshold="64K"))
    body = _chunked_body(300_000)
    together = b""
    if scheduling == "threaded":  # a second request in the same packet: the connection multiplexes
        c = conn.client
        together = c.begin_request(2, keep_conn=True) + c.send_params(2, PARAMS) + c.send_stdin(2, b"")
    sender = _post_without_length(conn, 1, body, b"" if mode == "read(n)" else None, together)
    end = conn.wait_end(1, timeout=30)
    sender.join(10)
    assert end.app_status == 0 and (1, "" if mode == "read(n)" else None) in seen
    assert bytes(conn.stdout[1]).endswith(f"{len(body)} {hashlib.sha256(body).hexdigest()}".encode())


@pytest.mark.parametrize("scheduling", ["inline", "threaded"])
def test_body_without_length_growing_past_max_body_size_is_413(
    serve: Callable[..., tuple[str, int]], scheduling: str
) -> None:
    """--max-body-size counts the bytes received: mid-stream the application's next read raises (it never
    reads past the limit), and the client gets 413 since nothing was sent yet."""
    seen: list[object] = []
    conn = Conn(serve(_digest_app("read(n)", seen), max_body_size="100K", spool_threshold="64K"))
    together = b""
    if scheduling == "threaded":
        c = conn.client
        together = c.begin_request(2, keep_conn=True) + c.send_params(2, PARAMS) + c.send_stdin(2, b"")
    sender = _post_without_length(conn, 1, _chunked_body(400_000), b"", together)
    end = conn.wait_end(1, timeout=30)
    sender.join(10)
    assert bytes(conn.stdout[1]).startswith(b"Status: 413"), bytes(conn.stdout[1])[:200]
    assert end.app_status == 0 and end.protocol_status == ProtocolStatus.REQUEST_COMPLETE
    error = seen[-1]
    assert isinstance(error, ClientDisconnected) and "--max-body-size 102400" in str(error)


def test_the_413_replaces_an_answer_the_application_gave_after_its_read_failed(
    serve: Callable[..., tuple[str, int]],
) -> None:
    """An application that catches the failed read and answers itself: its answer was not sent yet (held to
    leave with END_REQUEST), so the client still learns that the body was too large."""
    errors: list[OSError] = []

    def careful(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        try:
            environ["wsgi.input"].read()
        except OSError as exc:
            errors.append(exc)
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"I read what I could"]

    conn = Conn(serve(careful, max_body_size="100K"))
    sender = _post_without_length(conn, 1, _chunked_body(400_000), None)
    conn.wait_end(1, timeout=30)
    sender.join(10)
    assert len(errors) == 1
    assert bytes(conn.stdout[1]).startswith(b"Status: 413") and b"I read" not in conn.stdout[1]


def test_body_past_max_body_size_after_output_ends_with_a_non_zero_app_status(
    serve: Callable[..., tuple[str, int]],
) -> None:
    """Too late for a 413 (the headers went out): the response stands as sent, and END_REQUEST says it is
    not whole, even when the application swallowed the error and finished."""

    def streaming_echo(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        write = start_response("200 OK", [("Content-Type", "application/octet-stream")])
        write(b"started\n")
        total = 0
        try:
            while piece := environ["wsgi.input"].read(8192):
                total += len(piece)
        except OSError:
            pass
        return [f"{total}".encode()]

    conn = Conn(serve(streaming_echo, max_body_size="100K"))
    sender = _post_without_length(conn, 1, _chunked_body(400_000), None)
    end = conn.wait_end(1, timeout=30)
    sender.join(10)
    out = bytes(conn.stdout[1])
    assert out.startswith(b"Status: 200 OK") and b"started\n" in out
    assert int(out.rpartition(b"\n")[2]) <= 100 * 1024  # never read past the limit
    assert end.app_status != 0


@pytest.mark.parametrize("value", [b"-1", b"1_0"])
def test_content_length_that_is_not_a_number_reads_the_body_until_stdin_ends(
    serve: Callable[..., tuple[str, int]], value: bytes
) -> None:
    """Parsed as the environ's body_length does (digits only): int() took "-1" (the body then failed to
    build and the connection dropped) and "1_0" (a body of 10)."""
    seen: list[object] = []
    conn = Conn(serve(_digest_app("read()", seen)))
    params = [*PARAMS, (b"REQUEST_METHOD", b"POST"), (b"CONTENT_LENGTH", value)]
    conn.request(1, params, body=b"0123456789abcdef")
    end = conn.wait_end(1)
    assert end.app_status == 0
    assert bytes(conn.stdout[1]).endswith(f"16 {hashlib.sha256(b'0123456789abcdef').hexdigest()}".encode())


# ------------------------------------------------------------------------ DATA sent to a role that reads none


@pytest.mark.parametrize("role", [Role.RESPONDER, Role.AUTHORIZER])
@pytest.mark.parametrize("data", [b"", b"a file nobody asked for"], ids=["empty", "non-empty"])
def test_data_stream_sent_to_a_role_without_one_is_ignored(
    serve: Callable[..., tuple[str, int]], caplog: pytest.LogCaptureFixture, role: Role, data: bytes
) -> None:
    """flup and libfcgi ignore DATA for a responder; so do we, with one DEBUG line per record."""
    caplog.set_level(logging.DEBUG, logger="fcgiserve.handler")
    response = fcgi_request(serve(hello), role=role, data=data)
    assert response.status == 200 and response.body == b"hello /" and response.app_status == 0
    ignored = [r.getMessage() for r in caplog.records if "DATA record ignored" in r.getMessage()]
    assert ignored and f"a {role.name} reads no DATA" in ignored[-1]


def test_data_before_stdin_to_a_responder_leaves_its_body_intact(
    serve: Callable[..., tuple[str, int]],
) -> None:
    seen: list[object] = []
    conn = Conn(serve(_digest_app("read()", seen)))
    c = conn.client
    params = [*PARAMS, (b"REQUEST_METHOD", b"POST"), (b"CONTENT_LENGTH", b"4")]
    conn.send(
        c.begin_request(1)
        + c.send_params(1, params)
        + c.send_data(1, b"not the body")
        + c.send_data(1, b"")
        + c.send_stdin(1, b"body")
        + c.send_stdin(1, b"")
    )
    end = conn.wait_end(1)
    assert end.app_status == 0 and end.protocol_status == ProtocolStatus.REQUEST_COMPLETE
    assert bytes(conn.stdout[1]).endswith(f"4 {hashlib.sha256(b'body').hexdigest()}".encode())


def test_werkzeug_reads_a_body_without_length_through_wsgi_input_terminated(
    serve: Callable[..., tuple[str, int]],
) -> None:
    """Werkzeug (hence Flask) takes such a body whole because the environ says wsgi.input_terminated."""
    wrappers = pytest.importorskip("werkzeug.wrappers")

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        data = wrappers.Request(environ).get_data()
        return wrappers.Response(hashlib.sha256(data).hexdigest())(environ, start_response)

    conn = Conn(serve(app))
    body = _chunked_body(200_000)
    sender = _post_without_length(conn, 1, body, b"")
    conn.wait_end(1, timeout=30)
    sender.join(10)
    assert bytes(conn.stdout[1]).endswith(hashlib.sha256(body).hexdigest().encode())


@pytest.mark.parametrize("size", [64 * 1024, 4 * 1024 * 1024])
def test_output_waits_for_the_whole_input_of_a_peer_that_reads_nothing_before_it_has_sent_all(
    tmp_path: Any, size: int
) -> None:
    """A peer that sends its whole request before it reads anything (nginx; it also sends nothing more once
    the response has begun), over a unix socket (about 200 KiB of buffer each way), and an application that
    streams its output while it reads its body: the server takes the rest of the body (spooled beyond the
    threshold) before the first output leaves, so neither side waits on the other."""
    path = str(tmp_path / "fcgi.sock")
    server = Server(streaming_echo, socket=path, spool_threshold="256K", graceful_timeout=5).start()
    try:
        body = os.urandom(size)
        client = ClientConnection()
        params = {**default_params("/echo"), "REQUEST_METHOD": "POST", "CONTENT_LENGTH": str(size)}
        pairs = [(k.encode(), v.encode()) for k, v in params.items()]
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(20)
            sock.connect(path)
            sock.sendall(client.begin_request(1) + client.send_params(1, pairs))
            for offset in range(0, size, 32768):
                sock.sendall(client.send_stdin(1, body[offset : offset + 32768]))
            sock.sendall(client.send_stdin(1, b""))
            received, ended = bytearray(), None
            while ended is None:
                chunk = sock.recv(1 << 20)
                assert chunk, "the server closed the connection"
                for event in client.receive_data(chunk):
                    if isinstance(event, Stdout):
                        received += event.data
                    elif isinstance(event, EndRequest):
                        ended = event
        assert ended.app_status == 0
        assert received.partition(b"\r\n\r\n")[2] == body
    finally:
        server.stop(graceful=False, timeout=10)
