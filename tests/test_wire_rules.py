"""The spec's rules for records and streams, checked on the bytes a live server writes (threaded and prefork).

The records are parsed here by hand (header fields, content, padding), not by our own protocol layer, so a
mistake shared by the encoder and the decoder cannot hide. By checklist id: S-B6 and S-C3 (streams split
anywhere, a name-value pair straddling records), S-C2 (binary-safe values), S-D4 (the request id echoed on
every record), S-D6 (a peer that closes an idle kept connection), S-F1 and S-F4 (each stream ends with
exactly one empty record; STDOUT always, STDERR only if used).
"""

from __future__ import annotations

import logging
import socket
import struct
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from fcgiserve import Server

BEGIN, END, PARAMS, STDIN, STDOUT, STDERR = 1, 3, 4, 5, 6, 7
HEADER = struct.Struct("!BBHHBx")

BASE_PARAMS = [
    (b"REQUEST_METHOD", b"POST"),
    (b"REQUEST_URI", b"/wire"),
    (b"SCRIPT_NAME", b""),
    (b"PATH_INFO", b"/wire"),
    (b"SERVER_NAME", b"localhost"),
    (b"SERVER_PORT", b"80"),
    (b"SERVER_PROTOCOL", b"HTTP/1.1"),
]


@dataclass
class Record:
    type: int
    request_id: int
    content: bytes


def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    """/wire: echoes the body and the X-Bin header (latin-1, as PEP 3333 decodes); ?quiet sends no body;
    ?err also writes to wsgi.errors."""
    body = environ["wsgi.input"].read()
    query = environ.get("QUERY_STRING", "")
    if "err" in query:
        environ["wsgi.errors"].write("to stderr\n")
    start_response("200 OK", [("Content-Type", "application/octet-stream")])
    if "quiet" in query:
        return []
    return [body, b"|", environ.get("HTTP_X_BIN", "").encode("latin-1")]


@pytest.fixture(params=["threaded", "prefork"])
def address(request: pytest.FixtureRequest) -> Iterator[tuple[str, int]]:
    options: dict[str, Any] = {"method": request.param, "port": 0, "graceful_timeout": 5}
    if request.param == "prefork":
        options.update(minspare=1, maxspare=1, maxchildren=1)
    server = Server(app, **options).start()
    try:
        host, port = server.addresses[0][:2]
        yield host, port
    finally:
        server.stop(graceful=False, timeout=10)


def _begin(request_id: int, keep: bool) -> bytes:
    return HEADER.pack(1, BEGIN, request_id, 8, 0) + struct.pack("!HB5x", 1, 1 if keep else 0)


def _stream(kind: int, request_id: int, data: bytes, piece: int) -> bytes:
    """``data`` as records of at most ``piece`` content bytes, then the empty record that ends the stream."""
    out = b"".join(
        HEADER.pack(1, kind, request_id, len(data[i : i + piece]), 0) + data[i : i + piece]
        for i in range(0, len(data), piece)
    )
    return out + HEADER.pack(1, kind, request_id, 0, 0)


def _length(n: int) -> bytes:
    return bytes([n]) if n < 128 else struct.pack("!I", n | 0x80000000)


def _pairs(params: list[tuple[bytes, bytes]]) -> bytes:
    return b"".join(_length(len(name)) + _length(len(value)) + name + value for name, value in params)


def _request(
    request_id: int, params: list[tuple[bytes, bytes]], body: bytes, piece: int, keep: bool
) -> bytes:
    return (
        _begin(request_id, keep)
        + _stream(PARAMS, request_id, _pairs(params), piece)
        + _stream(STDIN, request_id, body, piece)
    )


def _read_records(sock: socket.socket, until_end: int, timeout: float = 10.0) -> list[Record]:
    """Records off the socket until END_REQUEST for ``until_end`` (version 1 each, padding skipped)."""
    records: list[Record] = []
    buffer = b""
    deadline = time.monotonic() + timeout
    while True:
        while len(buffer) >= 8:
            version, kind, request_id, length, padding = HEADER.unpack_from(buffer)
            if len(buffer) < 8 + length + padding:
                break
            assert version == 1
            records.append(Record(kind, request_id, buffer[8 : 8 + length]))
            buffer = buffer[8 + length + padding :]
            if kind == END and request_id == until_end:
                assert buffer == b"", "bytes after END_REQUEST of the only request"
                return records
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        chunk = sock.recv(65536)
        assert chunk, f"closed before END_REQUEST; got {records}"
        buffer += chunk


def _exchange(
    address: tuple[str, int],
    request_id: int = 1,
    params: list[tuple[bytes, bytes]] = BASE_PARAMS,
    body: bytes = b"",
    piece: int = 65535,
    query: bytes = b"",
) -> list[Record]:
    params = [*params, (b"QUERY_STRING", query), (b"CONTENT_LENGTH", str(len(body)).encode())]
    with socket.create_connection(address, timeout=10) as sock:
        sock.sendall(_request(request_id, params, body, piece, keep=False))
        return _read_records(sock, request_id)


def _stream_of(records: list[Record], kind: int) -> list[bytes]:
    return [r.content for r in records if r.type == kind]


def _check_streams(records: list[Record], stderr_used: bool) -> bytes:
    """S-F1/S-F4: STDOUT is non-empty records then exactly one empty one, before END_REQUEST; STDERR is
    absent, or the same shape. Returns the STDOUT bytes."""
    assert records[-1].type == END and [r.type for r in records].count(END) == 1
    for kind, required in ((STDOUT, True), (STDERR, stderr_used)):
        contents = _stream_of(records, kind)
        if not required:
            assert contents == [], f"an unused STDERR must not be sent at all: {contents}"
            continue
        assert contents and contents[-1] == b"", f"stream {kind} not ended by an empty record"
        assert b"" not in contents[:-1], f"stream {kind} has an empty record before its end"
        last = max(i for i, r in enumerate(records) if r.type == kind)
        assert last < len(records) - 1
    return b"".join(_stream_of(records, STDOUT))


def test_s_f1_s_f4_every_stream_ends_with_one_empty_record(address: tuple[str, int]) -> None:
    full = _check_streams(_exchange(address, body=b"abc"), stderr_used=False)
    assert full.endswith(b"abc|")
    empty = _check_streams(_exchange(address, query=b"quiet"), stderr_used=False)
    assert empty.startswith(b"Status: 200 OK\r\n") and empty.endswith(b"\r\n\r\n"), "no body: head only"
    records = _exchange(address, body=b"x", query=b"err")
    _check_streams(records, stderr_used=True)
    assert b"".join(_stream_of(records, STDERR)) == b"to stderr\n"


@pytest.mark.parametrize("request_id", [1, 2, 0x1234, 0xFFFF])
def test_s_d4_every_response_record_carries_the_request_id(address: tuple[str, int], request_id: int) -> None:
    records = _exchange(address, request_id=request_id, body=b"x" * 70_000, query=b"err")
    assert {r.request_id for r in records} == {request_id}
    assert len(_stream_of(records, STDOUT)) >= 3, "a response of several records"


def test_s_b6_s_c3_streams_split_at_every_byte(address: tuple[str, int]) -> None:
    """One content byte per record: every name-value pair straddles records, and so does every length
    field. The server must answer as for the same request in whole records."""
    body = bytes(range(256)) * 3
    whole = _check_streams(_exchange(address, body=body), stderr_used=False)
    split = _check_streams(_exchange(address, body=body, piece=1), stderr_used=False)
    assert split == whole and split.endswith(body + b"|")


def test_s_b6_a_request_written_one_byte_per_send(address: tuple[str, int]) -> None:
    """The records themselves cut anywhere on the wire: headers and contents arrive a byte at a time."""
    params = [*BASE_PARAMS, (b"QUERY_STRING", b""), (b"CONTENT_LENGTH", b"5")]
    data = _request(7, params, b"hello", 65535, keep=False)
    with socket.create_connection(address, timeout=10) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for i in range(len(data)):
            sock.sendall(data[i : i + 1])
        records = _read_records(sock, 7)
    assert _check_streams(records, stderr_used=False).endswith(b"hello|")


def test_s_c2_values_are_binary_safe(address: tuple[str, int]) -> None:
    """A value with NUL, bytes above 0x7F and a long (4-byte length) encoding arrives whole, decoded as
    latin-1 (PEP 3333), with nothing appended or cut."""
    value = b"a\x00b\xff\xfe\x80" + b"z" * 300
    out = _check_streams(
        _exchange(address, params=[*BASE_PARAMS, (b"HTTP_X_BIN", value)], body=b"B"), stderr_used=False
    )
    assert out.endswith(b"B|" + value)


def test_s_d6_a_peer_closing_an_idle_kept_connection_is_no_error(
    address: tuple[str, int], caplog: pytest.LogCaptureFixture
) -> None:
    """The web server may close a kept connection while no request is active: the server goes on serving,
    and says nothing above debug about it."""
    params = [*BASE_PARAMS, (b"QUERY_STRING", b""), (b"CONTENT_LENGTH", b"2")]
    with caplog.at_level(logging.INFO, logger="fcgiserve"):
        for _ in range(3):
            with socket.create_connection(address, timeout=10) as sock:
                sock.sendall(_request(3, params, b"ok", 65535, keep=True))
                records = _read_records(sock, 3)
                assert _check_streams(records, stderr_used=False).endswith(b"ok|")
            # closed here, idle, with FCGI_KEEP_CONN: the web server owns the connection's lifetime (S-D5)
        after = _check_streams(_exchange(address, body=b"after"), stderr_used=False)
        assert after.endswith(b"after|")
    noisy = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert noisy == [], [r.getMessage() for r in noisy]
