"""Micro-benchmark of the protocol hot path against flup 1.0.3's record code (same run, same input).

    python benchmarks/bench_protocol.py [--flup PATH_TO_WHEEL_OR_DIR] [--rounds N] [--loops N]

Decode: the records nginx sends for a typical GET (BEGIN_REQUEST, ~25 params as nginx's stock fastcgi_params
produce, the empty PARAMS and the empty STDIN) as one bytes blob. Encode: a small response (status line, 3
headers, a 13-byte body) as STDOUT, then the empty STDOUT and END_REQUEST. flup is not a dependency: unless
``--flup`` points at it, ``pip download`` fetches flup==1.0.3 once into benchmarks/.work/ (gitignored) and
the wheel is imported from there. flup's side uses its own ``Record.read`` / ``Record.write`` /
``decode_pair`` over an in-memory socket, and keeps params as bytes (flup itself also decodes them to str,
which we do not count). A last row runs the whole cycle over a real unix socketpair, each side doing its
I/O the way it is built to. Prints a markdown table of CPU microseconds per operation and the ratio.
"""

from __future__ import annotations

import argparse
import gc
import glob
import importlib
import os
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Callable
from types import ModuleType
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from fcgiserve.protocol import ServerConnection, StdinEnd

NGINX_PARAMS = [
    (b"QUERY_STRING", b"page=2&sort=name"),
    (b"REQUEST_METHOD", b"GET"),
    (b"CONTENT_TYPE", b""),
    (b"CONTENT_LENGTH", b""),
    (b"SCRIPT_NAME", b""),
    (b"REQUEST_URI", b"/articles/?page=2&sort=name"),
    (b"DOCUMENT_URI", b"/articles/"),
    (b"DOCUMENT_ROOT", b"/srv/www/example/public"),
    (b"SERVER_PROTOCOL", b"HTTP/1.1"),
    (b"REQUEST_SCHEME", b"https"),
    (b"HTTPS", b"on"),
    (b"GATEWAY_INTERFACE", b"CGI/1.1"),
    (b"SERVER_SOFTWARE", b"nginx/1.22.1"),
    (b"REMOTE_ADDR", b"203.0.113.54"),
    (b"REMOTE_PORT", b"51234"),
    (b"SERVER_ADDR", b"192.0.2.10"),
    (b"SERVER_PORT", b"443"),
    (b"SERVER_NAME", b"www.example.org"),
    (b"PATH_INFO", b"/articles/"),
    (b"HTTP_HOST", b"www.example.org"),
    (b"HTTP_USER_AGENT", b"Mozilla/5.0 (X11; Linux x86_64; rv:120.0) Gecko/20100101 Firefox/120.0"),
    (b"HTTP_ACCEPT", b"text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,*/*;q=0.8"),
    (b"HTTP_ACCEPT_LANGUAGE", b"en-US,en;q=0.5"),
    (b"HTTP_ACCEPT_ENCODING", b"gzip, deflate, br"),
    (b"HTTP_COOKIE", b"sessionid=4f9a0c1e2b7d4e8f9a0b1c2d3e4f5a6b; csrftoken=Zx81kQp0aLm3"),
]
RESPONSE = (
    b"Status: 200 OK\r\nContent-Type: text/html; charset=utf-8\r\nContent-Length: 13\r\n"
    b"X-Frame-Options: DENY\r\n\r\nHello, world!"
)
_HEADER = struct.Struct("!BBHHBx")


def _record(record_type: int, request_id: int, content: bytes) -> bytes:
    # Built by hand, as nginx frames them (padding to 8), so neither side's encoder shapes the input.
    pad = -len(content) & 7
    return _HEADER.pack(1, record_type, request_id, len(content), pad) + content + bytes(pad)


def _pair_length(n: int) -> bytes:
    return bytes((n,)) if n < 128 else struct.pack("!I", n | 0x80000000)


def nginx_get_blob() -> bytes:
    pairs = b"".join(_pair_length(len(k)) + _pair_length(len(v)) + k + v for k, v in NGINX_PARAMS)
    begin = struct.pack("!HB5x", 1, 0)
    return _record(1, 1, begin) + _record(4, 1, pairs) + _record(4, 1, b"") + _record(5, 1, b"")


def load_flup(path: str | None) -> ModuleType:
    """Import flup 1.0.3's fcgi_base from ``path`` (a wheel or a directory), else from a cached download."""
    if path is None:
        cache = os.path.join(os.path.dirname(os.path.abspath(__file__)), ".work", "flup-1.0.3")
        wheels = glob.glob(os.path.join(cache, "flup-1.0.3-*.whl"))
        if not wheels:
            os.makedirs(cache, exist_ok=True)
            subprocess.run(
                [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "flup==1.0.3", "-d", cache],
                check=True,
            )
            wheels = glob.glob(os.path.join(cache, "flup-1.0.3-*.whl"))
        if not wheels:
            raise SystemExit(f"pip did not download a flup 1.0.3 wheel into {cache}")
        path = wheels[0]
    sys.path.insert(0, path)  # a wheel is a zip archive: zipimport loads it in place
    return importlib.import_module("flup.server.fcgi_base")


class _MemorySocket:
    """Just enough socket for flup's Record.read / Record.write."""

    def __init__(self, data: bytes = b"") -> None:
        self._data = data
        self._pos = 0
        self.sent: list[bytes] = []

    def recv(self, n: int) -> bytes:
        chunk = self._data[self._pos : self._pos + n]
        self._pos += len(chunk)
        return chunk

    def send(self, data: bytes) -> int:
        self.sent.append(data)
        return len(data)

    def fileno(self) -> int:
        return -1


def flup_decode(fcgi: Any, blob: bytes) -> dict[bytes, bytes]:
    return flup_read_request(fcgi, _MemorySocket(blob))


def flup_read_request(fcgi: Any, sock: Any) -> dict[bytes, bytes]:
    # flup's Connection.process_input loop, reduced to the record and pair work of one request.
    params: dict[bytes, bytes] = {}
    stdin: list[bytes] = []
    while True:
        rec = fcgi.Record()
        rec.read(sock)
        if rec.type == fcgi.FCGI_BEGIN_REQUEST:
            struct.unpack(fcgi.FCGI_BeginRequestBody, rec.contentData)
        elif rec.type == fcgi.FCGI_PARAMS:
            pos = 0
            while pos < rec.contentLength:
                pos, (name, value) = fcgi.decode_pair(rec.contentData, pos)
                params[name] = value
        elif rec.type == fcgi.FCGI_STDIN:
            if not rec.contentLength:
                return params
            stdin.append(rec.contentData)


def flup_encode(fcgi: Any) -> bytes:
    sock = _MemorySocket()
    flup_write_response(fcgi, sock)
    return b"".join(sock.sent)


def flup_write_response(fcgi: Any, sock: Any) -> None:
    rec = fcgi.Record(fcgi.FCGI_STDOUT, 1)
    rec.contentData = RESPONSE
    rec.contentLength = len(RESPONSE)
    rec.write(sock)
    fcgi.Record(fcgi.FCGI_STDOUT, 1).write(sock)
    rec = fcgi.Record(fcgi.FCGI_END_REQUEST, 1)
    rec.contentData = struct.pack(fcgi.FCGI_EndRequestBody, 0, fcgi.FCGI_REQUEST_COMPLETE)
    rec.contentLength = fcgi.FCGI_EndRequestBody_LEN
    rec.write(sock)


def ours_decode(blob: bytes) -> list[Any]:
    return ServerConnection().receive_data(blob)


def cpu_time(run: Callable[[int], None], loops: int) -> float:
    """CPU seconds per operation for one round of ``loops`` operations, GC off (as timeit does).

    CPU time of this process rather than wall time, so other work on a shared machine distorts less.
    """
    gc.disable()
    try:
        start = time.process_time()
        run(loops)
        return (time.process_time() - start) / loops
    finally:
        gc.enable()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--flup", help="a flup 1.0.3 wheel or directory to import instead of downloading it")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--loops", type=int, default=5000)
    args = parser.parse_args()
    fcgi = load_flup(args.flup)
    blob = nginx_get_blob()

    # Both sides must agree on what they decode and encode before their speed means anything.
    events = ours_decode(blob)
    # Ours decodes to latin-1 text as well (ParamsComplete.params), flup stops at bytes.
    ours = {name.encode("latin-1"): value.encode("latin-1") for name, value in events[1].params.items()}
    assert ours == flup_decode(fcgi, blob) == dict(NGINX_PARAMS), "decoders disagree"
    conn = ServerConnection()
    conn.receive_data(blob)
    ours_bytes = conn.send_stdout(1, RESPONSE) + conn.end_request(1)
    assert ours_bytes == flup_encode(fcgi), "encoders disagree"

    def run_ours_decode(n: int) -> None:
        for _ in range(n):
            ServerConnection().receive_data(blob)

    def run_flup_decode(n: int) -> None:
        for _ in range(n):
            flup_decode(fcgi, blob)

    prepared: list[ServerConnection] = []

    def run_ours_encode(n: int) -> None:
        for conn in prepared[:n]:
            conn.send_stdout(1, RESPONSE) + conn.end_request(1)

    def run_flup_encode(n: int) -> None:
        for _ in range(n):
            flup_encode(fcgi)

    def run_ours_cycle(n: int) -> None:
        for _ in range(n):
            conn = ServerConnection()
            conn.receive_data(blob)
            conn.send_stdout(1, RESPONSE) + conn.end_request(1)

    def run_flup_cycle(n: int) -> None:
        for _ in range(n):
            flup_decode(fcgi, blob)
            flup_encode(fcgi)

    # The same cycle over a real AF_UNIX socketpair, each side doing its own I/O the way it is built to:
    # flup reads every header, body and padding with its own recv and writes each piece with its own
    # send; we recv once into a reusable buffer and sendall the response once. The "web server" end
    # (sendall the request, drain the response) costs the same on both sides.
    app_end, web_end = socket.socketpair()
    buf = bytearray(256 * 1024)
    response_length = len(ours_bytes)

    def drain() -> None:
        got = 0
        while got < response_length:
            got += web_end.recv_into(buf)

    def run_ours_socket(n: int) -> None:
        for _ in range(n):
            web_end.sendall(blob)
            conn = ServerConnection()
            events: list[Any] = []
            while not events or not isinstance(events[-1], StdinEnd):
                events += conn.receive_data(memoryview(buf)[: app_end.recv_into(buf)])
            app_end.sendall(conn.send_stdout(1, RESPONSE) + conn.end_request(1))
            drain()

    def run_flup_socket(n: int) -> None:
        for _ in range(n):
            web_end.sendall(blob)
            flup_read_request(fcgi, app_end)
            flup_write_response(fcgi, app_end)
            drain()

    rows = []
    for name, ours, theirs in (
        ("decode nginx GET (4 records, 25 params), in memory", run_ours_decode, run_flup_decode),
        ("encode small response + END_REQUEST, in memory", run_ours_encode, run_flup_encode),
        ("request cycle (decode + encode), in memory", run_ours_cycle, run_flup_cycle),
        ("request cycle over a unix socketpair (each side's own I/O)", run_ours_socket, run_flup_socket),
    ):
        # Rounds alternate between the two sides so both see the same machine conditions; best of each.
        ours_time = flup_time = float("inf")
        for _ in range(args.rounds):
            if ours is run_ours_encode:
                # Encoding needs connections whose request is ready for output: prepared outside the timer.
                prepared[:] = [ServerConnection() for _ in range(args.loops)]
                for conn in prepared:
                    conn.receive_data(blob)
            ours_time = min(ours_time, cpu_time(ours, args.loops))
            flup_time = min(flup_time, cpu_time(theirs, args.loops))
        rows.append((name, ours_time * 1e6, flup_time * 1e6, flup_time / ours_time))

    app_end.close()
    web_end.close()
    print(f"Python {sys.version.split()[0]}, {args.rounds} rounds x {args.loops} loops, best round\n")
    print("| operation | fcgiserve µs/op | flup 1.0.3 µs/op | speed-up |")
    print("|---|---:|---:|---:|")
    for name, ours_us, flup_us, ratio in rows:
        print(f"| {name} | {ours_us:.2f} | {flup_us:.2f} | {ratio:.1f}x |")


if __name__ == "__main__":
    main()
