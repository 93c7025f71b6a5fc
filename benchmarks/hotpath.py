"""What one kept-alive hello request costs inside fcgiserve, without nginx, wrk or a pool in the way.

    python benchmarks/hotpath.py [--requests N] [--top N]
    valgrind --tool=callgrind python benchmarks/hotpath.py --serve-only N   # twice, with two N: instructions

One ``ServedConnection`` (the real handler, the real WSGI adapter and protocol core) on one end of a unix
socketpair; this script plays nginx on the other end: it writes the records nginx sends for ``GET /hello``
with the benchmark's fastcgi_params (BEGIN_REQUEST, PARAMS, the empty PARAMS, the empty STDIN, in one write),
calls ``serve()`` (which returns when the connection is idle again, as the pool sees it), and reads the
answer. Prints, per request: CPU time of the whole loop and of the client side alone (the difference is the
server's share), records and bytes each way, the server's socket calls, and the Python function calls made
(cProfile's count: the measure of interpreted work that does not depend on the machine's speed). With
``--top N``, also the N functions of most own time under cProfile, per request: where the server's
microseconds go (cProfile's overhead inflates each call alike, so read shares, not absolute times).
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import socket
import sys
import time
from collections.abc import Callable, Iterable
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from fcgiserve.handler import ConnectionFactory, HandlerOptions
from fcgiserve.protocol import Role
from fcgiserve.protocol.client import ClientConnection
from fcgiserve.protocol.records import RecordReader

# The fastcgi_params of benchmarks/bench_backends.py as nginx fills them for `GET /hello` from wrk.
PARAMS = [
    (b"QUERY_STRING", b""),
    (b"REQUEST_METHOD", b"GET"),
    (b"CONTENT_TYPE", b""),
    (b"CONTENT_LENGTH", b""),
    (b"SCRIPT_NAME", b""),
    (b"PATH_INFO", b"/hello"),
    (b"REQUEST_URI", b"/hello"),
    (b"DOCUMENT_URI", b"/hello"),
    (b"SERVER_PROTOCOL", b"HTTP/1.1"),
    (b"REQUEST_SCHEME", b"http"),
    (b"GATEWAY_INTERFACE", b"CGI/1.1"),
    (b"SERVER_SOFTWARE", b"nginx/1.22.1"),
    (b"REMOTE_ADDR", b"127.0.0.1"),
    (b"REMOTE_PORT", b"41234"),
    (b"SERVER_ADDR", b"127.0.0.1"),
    (b"SERVER_PORT", b"41000"),
    (b"SERVER_NAME", b""),
    (b"HTTP_HOST", b"127.0.0.1:41000"),
]


def hello(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "13")])
    return [b"Hello, world!"]


class CountingSocket:
    """The server's socket, counting the calls the handler makes on it (each one is a system call)."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self.calls: dict[str, int] = {}

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._sock, name)
        if name in ("recv", "recv_into", "send", "sendall", "sendmsg", "shutdown", "close"):

            def counted(*args: Any, **kwargs: Any) -> Any:
                self.calls[name] = self.calls.get(name, 0) + 1
                return attribute(*args, **kwargs)

            return counted
        return attribute


def _print_top(stats: pstats.Stats, requests: int, top: int) -> None:
    """The functions of most own time (tottime), per request, with their share of the profiled total."""
    rows = stats.stats  # type: ignore[attr-defined]
    total = sum(row[2] for row in rows.values()) or 1.0
    print()
    print(f"| function (cProfile, own time, top {top}) | calls per request | own µs per request | share |")
    print("|---|---:|---:|---:|")
    for (filename, line, name), (_cc, calls, tottime, _ct, _callers) in sorted(
        rows.items(), key=lambda item: -item[1][2]
    )[:top]:
        where = f"{os.path.basename(filename)}:{line} {name}" if line else name
        own = f"{tottime / requests * 1e6:.2f} | {100 * tottime / total:.1f} %"
        print(f"| `{where}` | {calls / requests:.1f} | {own} |")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=20000)
    parser.add_argument("--top", type=int, default=0, help="list the N functions of most own time")
    parser.add_argument(
        "--serve-only",
        type=int,
        metavar="N",
        help="serve N requests and print nothing: under callgrind, the difference between two N, divided by "
        "the difference in N, is the instructions per request (start-up cancels out)",
    )
    args = parser.parse_args(argv)
    n = args.requests

    client = ClientConnection()
    request = client.begin_request(1, Role.RESPONDER, keep_conn=True)
    request += client.send_params(1, PARAMS) + client.send_stdin(1, b"")
    records_in = len(RecordReader().feed(request))

    factory = ConnectionFactory(hello, HandlerOptions())
    near, far = socket.socketpair()
    conn = factory.open(far, ("127.0.0.1", 41234))
    # A second connection whose socket counts the calls the handler makes (not timed: the wrapper costs).
    counted_near, counted_far = socket.socketpair()
    counting = CountingSocket(counted_far)
    counted = factory.open(counting, ("127.0.0.1", 41235))  # type: ignore[arg-type]
    assert conn is not None and counted is not None

    answer = b""
    if args.serve_only is not None:
        for _ in range(args.serve_only):
            near.sendall(request)
            conn.serve()
            near.recv(65536)
        return 0

    def loop(count: int, served: Any = conn, peer: socket.socket = near) -> None:
        nonlocal answer
        for _ in range(count):
            peer.sendall(request)
            if not served.serve():
                raise SystemExit("the connection closed: the handler refused the request")
            answer = peer.recv(65536)

    def client_only(count: int) -> None:
        for _ in range(count):
            near.sendall(request)
            far.recv(65536)
            far.sendall(answer)
            near.recv(65536)

    loop(1000)  # warm-up (and one answer to replay below)
    records_out = len(RecordReader().feed(answer))
    loop(1000, counted, counted_near)
    calls = {name: count / 1000 for name, count in counting.calls.items()}
    started = time.process_time()
    loop(n)
    total = time.process_time() - started
    started = time.process_time()
    client_only(n)
    bare = time.process_time() - started

    profiler = cProfile.Profile()
    profiler.enable()
    loop(n // 4)
    profiler.disable()
    stats = pstats.Stats(profiler)
    functions = stats.total_calls / (n // 4)  # type: ignore[attr-defined]

    print(f"one kept-alive GET /hello through ServedConnection, {n} requests, {len(PARAMS)} params")
    print()
    print("| per request | value |")
    print("|---|---:|")
    print(f"| CPU, server and client, µs | {total / n * 1e6:.1f} |")
    print(f"| CPU, the same socket traffic with no server work, µs | {bare / n * 1e6:.1f} |")
    print(f"| CPU, server's share, µs | {(total - bare) / n * 1e6:.1f} |")
    print(f"| records in / out | {records_in} / {records_out} |")
    print(f"| bytes in / out | {len(request)} / {len(answer)} |")
    for name in sorted(calls):
        print(f"| server socket `{name}` calls | {calls[name]:.2f} |")
    print(f"| Python function calls (cProfile, builtins included) | {functions:.0f} |")
    if args.top:
        _print_top(stats, n // 4, args.top)
    for sock in (near, counted_near):
        sock.close()
    conn.close()
    counted.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
