"""fcgiserve.limits over a real socketpair: read deadlines and the send timeout the handler relies on."""

from __future__ import annotations

import array
import socket
import threading
import time

import pytest

from fcgiserve.limits import is_send_timeout, recv_until, send_gathered, set_send_timeout


def test_recv_until_returns_what_is_there_without_waiting() -> None:
    a, b = socket.socketpair()
    with a, b:
        b.sendall(b"ready")
        buffer = bytearray(64)
        assert recv_until(a, buffer, time.monotonic() + 5) == 5 and buffer[:5] == b"ready"
        b.sendall(b"again")
        assert recv_until(a, buffer, None) == 5


def test_recv_until_waits_for_late_data_and_raises_at_the_deadline() -> None:
    a, b = socket.socketpair()
    with a, b:
        buffer = bytearray(64)
        started = time.monotonic()
        with pytest.raises(TimeoutError):
            recv_until(a, buffer, started + 0.2)
        assert 0.15 < time.monotonic() - started < 2.0
        assert a.gettimeout() is None  # the socket stays in blocking mode: other threads' writes unaffected
        with pytest.raises(TimeoutError):
            recv_until(a, buffer, time.monotonic() - 1)  # already past: one non-blocking try only
        b.shutdown(socket.SHUT_WR)
        assert recv_until(a, buffer, time.monotonic() + 5) == 0  # EOF is not a timeout


def test_send_timeout_fails_a_write_the_peer_never_reads() -> None:
    a, b = socket.socketpair()
    with a, b:
        set_send_timeout(a, 0.2)
        started = time.monotonic()
        with pytest.raises(OSError) as info:
            a.sendall(b"x" * (64 << 20))  # far more than the socket buffers hold
        assert is_send_timeout(info.value)
        assert 0.15 < time.monotonic() - started < 5.0
        assert not is_send_timeout(BrokenPipeError(32, "Broken pipe"))


def _drain(sock: socket.socket, into: bytearray) -> threading.Thread:
    """Read ``sock`` to EOF into ``into``, slowly (small reads), in a thread."""

    def run() -> None:
        while chunk := sock.recv(3000):
            into.extend(chunk)
            time.sleep(0.0005)

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def test_send_gathered_sends_every_part_in_order_through_partial_writes() -> None:
    """A slow reader and a small send buffer make sendmsg take part of a buffer at a time; more parts
    than one call may carry (IOV_MAX) go out in batches; empty parts are skipped."""
    a, b = socket.socketpair()
    with a, b:
        a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        parts: list[bytes | bytearray | memoryview] = [bytes([n % 251]) * (n % 7) for n in range(3000)]
        parts += [b"", memoryview(b"tail-" * 20000)[5:], bytearray(b"!")]
        received = bytearray()
        reader = _drain(b, received)
        send_gathered(a, parts)
        a.shutdown(socket.SHUT_WR)
        reader.join(10)
        assert received == b"".join(parts)


@pytest.mark.parametrize("wide", [1, 40_000], ids=["fits-at-once", "partial-writes"])
def test_send_gathered_counts_bytes_not_items_of_views_with_wider_items(wide: int) -> None:
    """A view whose items are 2 bytes wide sends all its bytes once, whether one call takes everything (the
    usual case, where nothing is copied or re-viewed) or the kernel takes part at a time."""
    a, b = socket.socketpair()
    with a, b:
        a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        items = array.array("H", [n % 65536 for n in range(wide)])
        parts: list[bytes | bytearray | memoryview] = [b"head", memoryview(items), bytearray(b"end")]
        received = bytearray()
        reader = _drain(b, received)
        send_gathered(a, parts)
        a.shutdown(socket.SHUT_WR)
        reader.join(10)
        assert received == b"head" + items.tobytes() + b"end"


def test_send_gathered_fails_like_sendall_when_the_peer_stops_reading() -> None:
    a, b = socket.socketpair()
    with a, b:
        set_send_timeout(a, 0.2)
        with pytest.raises(OSError) as info:
            send_gathered(a, [b"head", memoryview(b"x" * (64 << 20))])
        assert is_send_timeout(info.value)
