"""Peers that are slow, greedy or gone (checklist S-H): slowloris, a web server that never reads, bodies
without end, connection floods, and clients that vanish mid-upload or mid-download.

The limits under test (set small by ``peer.LIMIT_ARGS``): --params-timeout 1, --write-timeout 1,
--max-body-size 1M. Every case ends with a good request and a bounded-memory check.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
import time
from pathlib import Path

from tests.hostile.peer import (
    END,
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
    params,
    parse,
    record,
    request,
    stdout_of,
)

MIB = 1 << 20


def _workers(live: Live) -> int:
    """Connections served at once (peer.METHOD_ARGS): threads; or children, as an idle child accepts one."""
    return 16 if live.method == "threaded" else 2


def test_slowloris_silent_connections_are_closed_at_params_timeout(live: Live) -> None:
    """More silent connections than workers. TCP_DEFER_ACCEPT keeps them in the kernel for its ~5 s
    (listeners.py), then each waits parked until --params-timeout, holding no worker; a good request gets
    through meanwhile."""
    socks = [live.connect() for _ in range(_workers(live) + 4)]
    try:
        time.sleep(0.2)
        started = time.monotonic()
        live.good()
        assert time.monotonic() - started < 5.0
        deadline = time.monotonic() + 30.0  # defer-accept retransmits (~7 s) + 1 s, with room for a slow CI
        closed = [closed_by_peer(sock, max(0.1, deadline - time.monotonic())) for sock in socks]
        assert all(closed), f"{closed.count(False)} silent connection(s) still open"
        live.good()
    finally:
        for sock in socks:
            sock.close()
    live.check()


def test_slowloris_drip_does_not_reset_the_params_deadline(live: Live) -> None:
    """A byte every 0.2 s is progress, but the params must be complete within --params-timeout in total."""
    data = begin(1) + params(1, get_params())
    with live.connect() as sock:
        started = time.monotonic()
        closed_at = None
        for byte in data[:40]:
            try:
                sock.sendall(bytes([byte]))
            except OSError:
                closed_at = time.monotonic()
                break
            if closed_by_peer(sock, 0.2):
                closed_at = time.monotonic()
                break
        assert closed_at is not None, "the dripping peer was never disconnected"
        assert closed_at - started < 3.0
    live.check()


def test_web_server_that_never_reads_the_response_is_cut_at_write_timeout(live: Live) -> None:
    """A 64 MiB response to a peer that reads nothing: after --write-timeout the request is aborted, one
    warning names the peer and the limit, and the worker serves again."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(live.address)
        port = sock.getsockname()[1]
        sock.sendall(request(1, f"/big?n={64 * MIB}"))

        def warned() -> list[str]:
            return [
                line
                for line in live.server.log().splitlines()
                if f"127.0.0.1:{port}" in line and "--write-timeout" in line
            ]

        deadline = time.monotonic() + 8
        while not warned() and time.monotonic() < deadline:
            live.good()  # other connections are served while that one is stuck
            time.sleep(0.2)
        assert len(warned()) == 1, live.server.log()[-2000:]
    live.check()
    assert len(warned()) == 1


def _post(path: str, chunks: int, content_length: str | None, rid: int = 1, keep_conn: bool = False) -> bytes:
    extra = {"REQUEST_METHOD": "POST"}
    if content_length is not None:
        extra["CONTENT_LENGTH"] = content_length
    out = begin(rid, keep_conn=keep_conn) + params(rid, get_params(path, **extra))
    return out + record(STDIN, rid, b"b" * 65535) * chunks


def test_body_larger_than_announced_limit_is_413_without_running_the_app(live: Live) -> None:
    out, _ = live.exchange(_post("/echo", 4, str(5 * MIB)), timeout=5.0)
    records = parse(out)
    assert stdout_of(records, 1).startswith(b"Status: 413")
    assert end_status(records, 1) == REQUEST_COMPLETE
    live.check()


def test_endless_body_with_unparsable_content_length_is_cut_at_max_body_size(live: Live) -> None:
    """CONTENT_LENGTH the server cannot parse: the body is read to its end, so the limit must count the
    bytes received. 8 MiB of a body that never ends: 413 once 1 MiB arrived, and nothing spooled beyond."""
    out, _ = live.exchange(_post("/echo", 128, "lots"), timeout=8.0)
    records = parse(out)
    assert stdout_of(records, 1).startswith(b"Status: 413"), records[:3]
    assert end_status(records, 1) == REQUEST_COMPLETE
    assert "received body exceeds --max-body-size" in live.server.log()
    live.check()


def test_body_longer_than_its_content_length_is_truncated_not_buffered(live: Live) -> None:
    """CONTENT_LENGTH 1000, then 4 MiB: the application sees 1000 bytes, the rest is dropped unread."""
    out, _ = live.exchange(_post("/echo", 64, "1000") + record(STDIN, 1), timeout=8.0)
    records = parse(out)
    assert stdout_of(records, 1).endswith(b"\r\n\r\n1000")
    live.check()


def test_a_kept_connection_serves_on_after_a_413(live: Live) -> None:
    with live.connect() as sock:
        sock.sendall(_post("/echo", 20, "x", keep_conn=True) + record(STDIN, 1))
        sock.sendall(request(2, "/", keep_conn=True))
        answer = b""
        sock.settimeout(5)
        while end_status(parse(answer), 2) is None:
            chunk = sock.recv(65536)
            assert chunk, f"closed early: {parse(answer)[:4]}"
            answer += chunk
        records = parse(answer)
        assert stdout_of(records, 1).startswith(b"Status: 413")
        assert stdout_of(records, 2).endswith(b"ok")
    live.check()


def test_a_thousand_connections_opened_and_dropped(live: Live) -> None:
    """Connect-and-close, connect-and-reset, and half a header then reset, 1000 times in all."""
    linger = struct.pack("ii", 1, 0)  # SO_LINGER 0: close() sends RST
    for i in range(1000):
        sock = socket.socket()
        try:
            sock.connect(live.address)
            if i % 3 == 1:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
            elif i % 3 == 2:
                sock.sendall(begin(1)[:4])
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
        finally:
            sock.close()
    for _ in range(10):
        live.check()


def test_client_disappears_mid_upload(live: Live) -> None:
    """CONTENT_LENGTH 4 MiB, 1 MiB sent, then the connection closes (nginx aborting: S-F7, S-G1)."""
    for linger in (False, True):
        with live.connect() as sock:
            if linger:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            data = begin(1) + params(
                1, get_params("/echo", REQUEST_METHOD="POST", CONTENT_LENGTH=str(4 * MIB))
            )
            sock.sendall(data + record(STDIN, 1, b"u" * 65535) * 15)
            time.sleep(0.1)
    live.check()
    live.good("/echo", b"x" * 300_000)  # a spooled body still works


def test_client_disappears_mid_download(live: Live) -> None:
    """A 32 MiB response; the peer reads 128 KiB, then resets; the worker is freed at once."""
    for _ in range(3):
        with live.connect() as sock:
            sock.sendall(request(1, f"/big?n={32 * MIB}"))
            got = 0
            while got < 128 * 1024:
                chunk = sock.recv(65536)
                assert chunk
                got += len(chunk)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    live.check()


def test_requests_of_other_connections_are_unaffected_while_limits_trip(live: Live) -> None:
    """Good requests run in a loop while hostile peers trip every limit: not one of them fails."""
    failures: list[BaseException] = []
    stop = threading.Event()

    def good_loop() -> None:
        while not stop.is_set():
            try:
                live.good("/echo", b"g" * 1000)
            except BaseException as exc:  # collected and reported by the main thread
                failures.append(exc)
                return

    workers = [threading.Thread(target=good_loop, daemon=True) for _ in range(2)]
    for worker in workers:
        worker.start()
    try:
        live.exchange(_post("/echo", 40, "x"), timeout=3.0)
        live.exchange(b"\x01\x01" + b"\xff" * 30, timeout=3.0)
        with contextlib.closing(live.connect()) as stalled:
            stalled.sendall(begin(1)[:3])  # half a header, then nothing
            live.exchange(record(PARAMS, 0, b"zz"), timeout=3.0)
            assert closed_by_peer(stalled, 4.0)
    finally:
        stop.set()
        for worker in workers:
            worker.join(15)
    assert not failures, failures[0]
    live.check()


def test_multiplexed_response_to_a_pausing_reader_is_not_cut_by_the_readers_poll(tmp_path: Path) -> None:
    """Regression: the reader of a multiplexed connection used ``settimeout(1.0)`` on the shared socket, so a
    response written by another request's thread failed as if the peer had gone when the peer paused for more
    than a second, long before --write-timeout. Two requests at once (a slow one keeps the connection
    multiplexed); the peer reads 1 MiB of an 8 MiB response, pauses 2.5 s, then reads the rest."""
    size = 8 * MIB
    with (
        live_server("threaded", tmp_path, ["--write-timeout", "10"]) as live,
        live.connect(timeout=20) as sock,
    ):
        sock.sendall(request(1, "/sleep?n=4", keep_conn=True) + request(2, f"/big?n={size}", keep_conn=True))
        stream = RecordStream()
        records: list[tuple[int, int, bytes]] = []
        received = 0
        paused = False
        deadline = time.monotonic() + 30
        while sum(1 for rtype, _, _ in records if rtype == END) < 2 and time.monotonic() < deadline:
            chunk = sock.recv(65536)
            assert chunk, "the server closed the connection"
            records += stream.feed(chunk)
            received += len(chunk)
            if received > MIB and not paused:
                paused = True
                time.sleep(2.5)
        assert end_status(records, 2) == REQUEST_COMPLETE, live.server.log()[-1500:]
        body = stdout_of(records, 2)
        assert len(body) > size and body.endswith(b"x" * 1000)
        assert end_status(records, 1) == REQUEST_COMPLETE
        live.check()
