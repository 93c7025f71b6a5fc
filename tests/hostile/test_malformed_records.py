"""Malformed and lying records against a live server (threaded and prefork), checklist S-B, S-C, S-D, S-E.

Every case is a table row: raw bytes built by hand, what the server must answer (nothing, or END_REQUEST
with a given protocolStatus for a given id, or a management reply), and whether it must hang up. Each case
then sends a good request, which must succeed, and checks that the server's memory stayed bounded.
"""

from __future__ import annotations

import random
import struct
import time
from dataclasses import dataclass, field

import pytest

from tests.hostile.peer import (
    BEGIN,
    CANT_MPX_CONN,
    GET_VALUES,
    OVERLOADED,
    PARAMS,
    REQUEST_COMPLETE,
    STDIN,
    STDOUT,
    UNKNOWN,
    UNKNOWN_ROLE,
    Live,
    begin,
    end_status,
    get_params,
    pair,
    params,
    parse,
    read_until_closed,
    record,
    request,
)

ANY = -1  # any protocolStatus: the case only pins that exactly one END_REQUEST answers the request


@dataclass(frozen=True)
class Case:
    data: bytes
    ends: dict[int, int] = field(default_factory=dict)  # request id -> protocolStatus of its END_REQUEST
    closes: bool = True  # the server hangs up on its own (without our EOF) within the read timeout
    shut: bool = False  # we half-close after sending, as a peer that is done would
    reply_types: frozenset[int] = frozenset()  # record types allowed besides END_REQUEST / STDOUT
    slow: bool = False  # the server only notices at --params-timeout


def _garbage(size: int) -> bytes:
    data = bytearray(random.Random(6).randbytes(size))
    data[0] = 0x47  # not version 1: the very first header is already wrong
    return bytes(data)


def _endless_params(rid: int, total: int, first: bytes = b"") -> bytes:
    """PARAMS records far beyond --max-params-bytes (64K) that never end the stream."""
    chunk = first + b"\x00" * (65535 - len(first))
    out = begin(rid)
    for _ in range(total // 65535):
        out += record(PARAMS, rid, chunk)
        chunk = b"\x00" * 65535
    return out


_BIG_NAME = struct.pack("!I", 0x80000000 | 0x7FFFFFFF)  # a 4-byte length claiming a 2 GiB name (S-C1)

CASES: dict[str, Case] = {
    "S-B1 version 2 header": Case(record(BEGIN, 1, struct.pack("!HB5x", 1, 0), version=2)),
    "S-B1 version 0 header": Case(record(BEGIN, 1, struct.pack("!HB5x", 1, 0), version=0)),
    "S-B1 an HTTP request on the FastCGI port": Case(b"GET / HTTP/1.1\r\nHost: example\r\n\r\n"),
    "S-B1 256 KiB of random bytes": Case(_garbage(256 * 1024)),
    "S-B1 truncated header, then silence": Case(begin(1)[:5], slow=True),
    "S-F2 BEGIN_REQUEST, then silence": Case(begin(1), slow=True),
    "S-F2 half the params, then silence": Case(begin(1) + record(PARAMS, 1, pair(b"A", b"b")), slow=True),
    "S-B2 truncated record body, then silence": Case(record(PARAMS, 1, b"x" * 100)[:30], slow=True),
    "S-B2 length claims 65535, 3 bytes sent": Case(
        struct.pack("!BBHHBx", 1, PARAMS, 1, 65535, 0) + b"abc", slow=True
    ),
    "S-B2 length lies, then EOF": Case(struct.pack("!BBHHBx", 1, STDIN, 1, 65535, 255) + b"abc", shut=True),
    "S-C1 pair overruns the stream": Case(
        begin(1) + record(PARAMS, 1, b"\x05\x7fabcdexyz") + record(PARAMS, 1), ends={1: REQUEST_COMPLETE}
    ),
    "S-C1 claimed 2 GiB name, stream ends": Case(
        begin(1) + record(PARAMS, 1, _BIG_NAME + b"\x01" + b"a" * 100) + record(PARAMS, 1), ends={1: ANY}
    ),
    "S-C1 claimed 2 GiB name, then endless params": Case(
        _endless_params(1, 2 << 20, _BIG_NAME + b"\x01"), ends={1: OVERLOADED}, closes=False
    ),
    "S-C endless params (2 MiB, --max-params-bytes 64K)": Case(
        _endless_params(1, 2 << 20), ends={1: OVERLOADED}, closes=False
    ),
    "S-C too many pairs (--max-params-count 200)": Case(
        begin(1)
        + record(PARAMS, 1, b"".join(pair(b"N%d" % i, b"v") for i in range(300)))
        + record(PARAMS, 1),
        ends={1: OVERLOADED},
    ),
    "S-D1 BEGIN_REQUEST with id 0": Case(begin(0)),
    "S-D1 STDIN with id 0": Case(record(STDIN, 0, b"body")),
    "S-D1 PARAMS with id 0": Case(record(PARAMS, 0, pair(b"A", b"b"))),
    "S-D2 duplicate BEGIN_REQUEST": Case(
        begin(1) + begin(1) + params(1, get_params()) + record(STDIN, 1), ends={1: ANY}
    ),
    "S-D5 BEGIN_REQUEST body of 2 bytes": Case(record(BEGIN, 1, b"\x00\x01")),
    "S-F2 STDIN before the params end": Case(
        begin(1)
        + record(PARAMS, 1, pair(b"A", b"b"))
        + record(STDIN, 1, b"xx")
        + record(PARAMS, 1)
        + record(STDIN, 1),
        ends={1: ANY},
    ),
    "S-B4 STDOUT sent by the web server": Case(record(STDOUT, 1, b"x")),
    "S-G4 unknown role 9": Case(begin(1, role=9), ends={1: UNKNOWN_ROLE}),
    "S-E4 unknown management type": Case(record(77, 0), shut=True, reply_types=frozenset({UNKNOWN})),
    "S-E1 GET_VALUES with a torn pair": Case(record(GET_VALUES, 0, b"\x0e\x00FCGI_MAX")),
}


@pytest.mark.parametrize("name", list(CASES))
def test_malformed_input_is_answered_and_the_server_serves_on(live: Live, name: str) -> None:
    case = CASES[name]
    started = time.monotonic()
    out, closed = live.exchange(case.data, timeout=5.0, shut=case.shut)
    elapsed = time.monotonic() - started
    records = parse(out)
    for rid, status in case.ends.items():
        got = end_status(records, rid)
        assert got is not None, f"no END_REQUEST for request {rid}: {records}"
        if status != ANY:
            assert got == status, f"request {rid} ended with protocolStatus {got}, expected {status}"
    allowed = case.reply_types | {3, STDOUT}
    assert {rtype for rtype, _, _ in records} <= allowed, records
    if not case.ends:
        assert all(rtype in case.reply_types for rtype, _, _ in records), records
    if case.closes or case.shut:
        assert closed, f"the server kept the connection open ({elapsed:.1f}s)"
    if case.slow:
        assert 0.5 < elapsed < 4.0, f"expected a hang-up at --params-timeout (1s), got {elapsed:.1f}s"
    live.check()


def test_s_d3_second_request_on_a_non_multiplexing_connection(live: Live) -> None:
    """Two requests at once: prefork (not multiplexing) refuses the second with CANT_MPX_CONN (S-F6);
    threaded (multiplexing) serves both."""
    data = begin(1) + begin(2) + params(1, get_params()) + record(STDIN, 1)
    data += params(2, get_params()) + record(STDIN, 2)
    out, _ = live.exchange(data, timeout=5.0, shut=True)
    records = parse(out)
    assert end_status(records, 1) == REQUEST_COMPLETE
    expected = CANT_MPX_CONN if live.method == "prefork" else REQUEST_COMPLETE
    assert end_status(records, 2) == expected
    live.check()


def test_s_d5_garbage_after_an_answered_request_on_a_kept_connection(live: Live) -> None:
    """A kept connection serves a request, then turns to garbage: that connection alone is closed."""
    with live.connect() as sock:
        sock.sendall(request(1, keep_conn=True))
        answer = b""
        while end_status(parse(answer), 1) is None:
            chunk = sock.recv(65536)
            assert chunk, "closed before END_REQUEST"
            answer += chunk
        assert end_status(parse(answer), 1) == REQUEST_COMPLETE
        sock.sendall(b"\xff" * 16)
        out, closed = read_until_closed(sock, 5.0)
        assert closed and out == b""
    live.check()


def test_limits_are_logged_once_naming_the_peer_and_the_limit(live: Live) -> None:
    """A tripped limit leaves one log line that names the peer (127.0.0.1:port) and the limit."""
    with live.connect() as sock:
        port = sock.getsockname()[1]
        sock.sendall(begin(1)[:3])
        sock.settimeout(5)
        assert sock.recv(100) == b""
    live.check()
    lines = [line for line in live.server.log().splitlines() if f"127.0.0.1:{port}" in line]
    assert len(lines) == 1 and "--params-timeout" in lines[0], lines
