"""A hostile FastCGI peer: raw records built by hand (not with the code under test), a live server to aim
them at, and the checks every hostile case ends with (a good request still works, memory stays bounded).
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from fcgiserve.client import Response, fcgi_request
from tests.helpers import Server, children_of, run_fcgiserve, tree_rss_kib, wait_for

BEGIN, ABORT, END, PARAMS, STDIN, STDOUT, STDERR, DATA, GET_VALUES, GET_VALUES_RESULT, UNKNOWN = range(1, 12)
HEADER = struct.Struct("!BBHHBx")
REQUEST_COMPLETE, CANT_MPX_CONN, OVERLOADED, UNKNOWN_ROLE = range(4)

APP = "tests.hostile.hostile_app:app"
# Small limits so that every one of them can be tripped quickly; documented defaults are in docs/security.md.
LIMIT_ARGS = [
    "--max-body-size", "1M",
    "--max-params-bytes", "64K",
    "--max-params-count", "200",
    "--spool-threshold", "64K",
    "--params-timeout", "1",
    "--write-timeout", "1",
    "--idle-timeout", "20",
    "--graceful-timeout", "3",
]  # fmt: skip
METHOD_ARGS = {
    "threaded": ["--method", "threaded", "--maxchildren", "16"],
    # A fixed number of children keeps the process tree, and so its RSS, comparable between readings.
    "prefork": ["--method", "prefork", "--maxchildren", "2", "--minspare", "2", "--maxspare", "2"],
}
RSS_GROWTH_KIB = 48 * 1024  # far below what any unbounded buffer of these cases would take (>= 1 GiB)


def record(rtype: int, rid: int, content: bytes = b"", *, version: int = 1, padding: int = 0) -> bytes:
    return HEADER.pack(version, rtype, rid, len(content), padding) + content + bytes(padding)


def begin(rid: int = 1, role: int = 1, keep_conn: bool = False) -> bytes:
    return record(BEGIN, rid, struct.pack("!HB5x", role, int(keep_conn)))


def length(n: int) -> bytes:
    return bytes([n]) if n < 128 else struct.pack("!I", n | 0x80000000)


def pair(name: bytes, value: bytes) -> bytes:
    return length(len(name)) + length(len(value)) + name + value


def params(rid: int, items: dict[str, str]) -> bytes:
    body = b"".join(pair(k.encode(), v.encode()) for k, v in items.items())
    return record(PARAMS, rid, body) + record(PARAMS, rid)


def get_params(path: str = "/", **extra: str) -> dict[str, str]:
    route, _, query = path.partition("?")
    items = {
        "REQUEST_METHOD": "GET",
        "SCRIPT_NAME": "",
        "PATH_INFO": route,
        "QUERY_STRING": query,
        "REQUEST_URI": path,
        "SERVER_NAME": "localhost",
        "SERVER_PORT": "80",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "REMOTE_ADDR": "127.0.0.1",
    }
    items.update(extra)
    return items


def request(rid: int = 1, path: str = "/", body: bytes = b"", keep_conn: bool = False, **extra: str) -> bytes:
    """A whole well-formed request, as nginx would send it."""
    if body:
        extra.setdefault("CONTENT_LENGTH", str(len(body)))
        extra.setdefault("REQUEST_METHOD", "POST")
    out = begin(rid, keep_conn=keep_conn) + params(rid, get_params(path, **extra))
    for pos in range(0, len(body), 65535):
        out += record(STDIN, rid, body[pos : pos + 65535])
    return out + record(STDIN, rid)


def parse(data: bytes) -> list[tuple[int, int, bytes]]:
    """(type, request id, content) of every whole record in ``data``; a torn tail is ignored."""
    out = []
    pos = 0
    while pos + 8 <= len(data):
        _v, rtype, rid, clen, plen = HEADER.unpack_from(data, pos)
        if pos + 8 + clen + plen > len(data):
            break
        out.append((rtype, rid, data[pos + 8 : pos + 8 + clen]))
        pos += 8 + clen + plen
    return out


class RecordStream:
    """Incremental ``parse``: feed bytes as they arrive, get the records they complete."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[tuple[int, int, bytes]]:
        self._buffer += data
        out = []
        pos = 0
        while pos + 8 <= len(self._buffer):
            _v, rtype, rid, clen, plen = HEADER.unpack_from(self._buffer, pos)
            if pos + 8 + clen + plen > len(self._buffer):
                break
            out.append((rtype, rid, bytes(self._buffer[pos + 8 : pos + 8 + clen])))
            pos += 8 + clen + plen
        del self._buffer[:pos]
        return out


def end_status(records: list[tuple[int, int, bytes]], rid: int) -> int | None:
    """protocolStatus of the END_REQUEST for ``rid``, or None when there is none."""
    ends = [content for rtype, r, content in records if rtype == END and r == rid]
    assert len(ends) <= 1, f"more than one END_REQUEST for request {rid} (S-D7)"
    return ends[0][4] if ends else None


def stdout_of(records: list[tuple[int, int, bytes]], rid: int) -> bytes:
    return b"".join(content for rtype, r, content in records if rtype == STDOUT and r == rid)


@dataclass
class Live:
    """A running fcgiserve process and what the checks need to know about it."""

    server: Server
    method: str
    baseline_kib: int = 0
    peak_kib: int = 0
    notes: list[str] = field(default_factory=list)

    @property
    def address(self) -> tuple[str, int]:
        return ("127.0.0.1", self.server.port)

    def connect(self, timeout: float = 5.0) -> socket.socket:
        return socket.create_connection(self.address, timeout=timeout)

    def exchange(self, data: bytes, timeout: float = 5.0, shut: bool = False) -> tuple[bytes, bool]:
        """Send ``data`` (from a thread: the server may answer, or hang up, before it has read everything)
        while reading; return what the server sent and whether it closed the connection within ``timeout``."""
        with self.connect(timeout) as sock:

            def send() -> None:
                with contextlib.suppress(OSError):
                    sock.sendall(data)
                    if shut:
                        sock.shutdown(socket.SHUT_WR)

            sender = threading.Thread(target=send, daemon=True)
            sender.start()
            received, closed = read_until_closed(sock, timeout)
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)  # unblocks a sender stuck on a full buffer
            sender.join(timeout)
            return received, closed

    def good(self, path: str = "/", body: bytes = b"") -> Response:
        """A well-formed request that must succeed (every hostile case ends with one)."""
        method = "POST" if body else "GET"
        response = fcgi_request(self.address, path=path, body=body, method=method, timeout=10)
        assert response.status == 200, (response.status, response.body[:200], self.server.log()[-2000:])
        return response

    def rss(self) -> int:
        kib = tree_rss_kib(self.server.pid)
        self.peak_kib = max(self.peak_kib, kib)
        return kib

    def check(self, path: str = "/") -> Response:
        """The end of every case: the server lives, a good request succeeds, memory stayed bounded."""
        assert self.server.proc.poll() is None, f"the server died: {self.server.log()[-3000:]}"
        response = self.good(path)
        kib = self.rss()
        assert kib < self.baseline_kib + RSS_GROWTH_KIB, (
            f"process tree RSS grew from {self.baseline_kib} KiB to {kib} KiB"
        )
        return response


def read_until_closed(sock: socket.socket, timeout: float) -> tuple[bytes, bool]:
    """Everything the server sends until it closes (True) or ``timeout`` passes (False)."""
    deadline = time.monotonic() + timeout
    chunks: list[bytes] = []
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return b"".join(chunks), False
        sock.settimeout(remaining)
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            return b"".join(chunks), False
        except OSError:  # reset: the server closed with our bytes unread
            return b"".join(chunks), True
        if not chunk:
            return b"".join(chunks), True
        chunks.append(chunk)


def closed_by_peer(sock: socket.socket, timeout: float) -> bool:
    """True when the server closes ``sock`` (EOF or reset) within ``timeout``; what it sends is drained."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            if not sock.recv(65536):
                return True
        except TimeoutError:
            return False
        except OSError:
            return True
    return False


@contextlib.contextmanager
def live_server(
    method: str, tmp_path: Path, extra: list[str] | None = None, env: dict[str, str] | None = None
) -> Iterator[Live]:
    args = [APP, *LIMIT_ARGS, *METHOD_ARGS[method], *(extra or [])]
    with run_fcgiserve(args, tmp_path, env=env) as server:
        live = Live(server, method)
        if method == "prefork":
            assert wait_for(lambda: len(children_of(server.pid)) >= 2, timeout=20), server.log()
        for _ in range(20):  # warm every worker up before the baseline is taken
            live.good()
        live.baseline_kib = live.rss()
        yield live
