"""Syscalls per hello request on ONE kept-alive FastCGI connection to fcgiserve, by name.

    python benchmarks/syscalls.py [--requests N] [--method threaded|prefork]

Starts ``python -m fcgiserve bench_app:application`` on a free loopback port, attaches
``strace -f -qq -o FILE -p PID ...`` to every process of its tree (prefork: master and children) and every
thread, sends N GET /hello requests one after another over a single connection with FCGI_KEEP_CONN (client
side: ``fcgiserve.protocol.ClientConnection``), detaches, and counts the traced calls. Each call whose first
argument is the server's end of our connection (the fd ``accept``/``accept4`` returned while traced) is
counted apart, so the connection's own recv/send per request show next to everything else (epoll, futex,
the listening socket...).
Prints a markdown table of calls per request, sorted by count.
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parent.parent))  # the working tree, installed or not

from bench_backends import APPS, HERE, free_port
from bench_measure import process_tree

from fcgiserve.protocol import ClientConnection, EndRequest

__all__ = ["count_calls", "main", "send_requests"]

_LINE = re.compile(r"^(\d+)\s+(?:<\.\.\. )?(\w+)(?:\((-?\d+)?| resumed>)")
_ACCEPT = re.compile(r"^\d+\s+accept4?\(.*\)\s+=\s+(\d+)")
_RESUMED_ACCEPT = re.compile(r"^\d+\s+<\.\.\. accept4? resumed>.*\)\s+=\s+(\d+)")
_EPOLL_CTL = re.compile(r"^\d+\s+epoll_ctl\(\d+, \w+, (\d+)")
PARAMS = [
    (b"REQUEST_METHOD", b"GET"),
    (b"SCRIPT_NAME", b""),
    (b"PATH_INFO", b"/hello"),
    (b"REQUEST_URI", b"/hello"),
    (b"DOCUMENT_URI", b"/hello"),
    (b"QUERY_STRING", b""),
    (b"SERVER_NAME", b"localhost"),
    (b"SERVER_PORT", b"80"),
    (b"SERVER_PROTOCOL", b"HTTP/1.1"),
    (b"GATEWAY_INTERFACE", b"CGI/1.1"),
    (b"REMOTE_ADDR", b"127.0.0.1"),
    (b"REMOTE_PORT", b"40000"),
    (b"HTTP_HOST", b"localhost"),
    (b"HTTP_USER_AGENT", b"syscalls.py"),
]


def send_requests(port: int, count: int, deadline: float) -> int:
    """GET /hello ``count`` times on one kept connection; return how many completed before ``deadline``."""
    done = 0
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        client = ClientConnection()
        while done < count and time.monotonic() < deadline:
            sock.sendall(
                client.begin_request(1, keep_conn=True)
                + client.send_params(1, PARAMS)
                + client.send_stdin(1, b"")
            )
            ended = False
            while not ended:
                data = sock.recv(65536)
                ended = any(isinstance(event, EndRequest) for event in client.receive_data(data))
                if not data and not ended:
                    raise RuntimeError(f"server closed the connection after {done} requests")
            done += 1
    return done


Counts = collections.Counter[str]


def count_calls(trace: str) -> tuple[Counts, Counts, Counts, set[int]]:
    """Of a strace -f log: calls by name on the connection fd, other calls by name, the other calls by
    "name(fd)" (first argument, or epoll_ctl's target fd), and the connection fds."""
    conn_fds: set[int] = set()
    for line in trace.splitlines():
        accepted = _ACCEPT.match(line) or _RESUMED_ACCEPT.match(line)
        if accepted:
            conn_fds.add(int(accepted.group(1)))
    on_conn: collections.Counter[str] = collections.Counter()
    other: collections.Counter[str] = collections.Counter()
    by_fd: collections.Counter[str] = collections.Counter()
    for line in trace.splitlines():
        parsed = _LINE.match(line)
        if parsed is None or "resumed>" in line.split("(", 1)[0]:
            continue  # a "<... x resumed>" line finishes a call already counted at its "<unfinished ...>"
        name, first = parsed.group(2), parsed.group(3)
        if first is not None and int(first) in conn_fds and not name.startswith("epoll"):
            on_conn[name] += 1
        else:
            other[name] += 1
            target = _EPOLL_CTL.match(line) if name == "epoll_ctl" else None
            fd = target.group(1) if target else first
            by_fd[f"{name}({'conn' if fd and int(fd) in conn_fds else fd})" if fd is not None else name] += 1
    return on_conn, other, by_fd, conn_fds


def _render(on_conn: collections.Counter[str], other: collections.Counter[str], requests: int) -> str:
    names = sorted(set(on_conn) | set(other), key=lambda n: -(on_conn[n] + other[n]))
    lines = ["| syscall | per request, connection socket | per request, elsewhere |", "|---|---:|---:|"]
    for name in names:
        lines.append(f"| {name} | {on_conn[name] / requests:.2f} | {other[name] / requests:.2f} |")
    total_conn, total_other = sum(on_conn.values()) / requests, sum(other.values()) / requests
    lines.append(f"| **total** | **{total_conn:.2f}** | **{total_other:.2f}** |")
    return "\n".join(lines)


def _wait_listening(port: int, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"fcgiserve did not listen on {port}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--method", choices=["threaded", "prefork"], default="threaded")
    args = parser.parse_args(argv)
    if not 1 <= args.requests <= 100_000:
        parser.error("--requests must be 1..100000")
    port = free_port()
    server_argv = [sys.executable, "-m", "fcgiserve", "bench_app:application", "--method", args.method]
    server_argv += ["--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"]
    if args.method == "prefork":
        server_argv += ["--minspare", "1", "--maxspare", "1", "--maxchildren", "1"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(APPS), str(HERE.parent)])}
    server = subprocess.Popen(server_argv, cwd=APPS, env=env)
    strace: subprocess.Popen[bytes] | None = None
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "strace.log"
        try:
            _wait_listening(port, 30)
            send_requests(port, 50, time.monotonic() + 30)  # warm-up on a connection of its own
            time.sleep(0.5)
            # Every process of the tree (prefork: the master and its children), every thread of each.
            attach = [arg for pid in process_tree(server.pid) for arg in ("-p", str(pid))]
            strace = subprocess.Popen(["strace", "-f", "-qq", "-o", str(log), *attach])
            time.sleep(1.5)  # attaching to every thread takes a moment; nothing is sent meanwhile
            sent = send_requests(port, args.requests, time.monotonic() + 120)
            time.sleep(0.3)
        finally:
            if strace is not None and strace.poll() is None:
                strace.send_signal(signal.SIGINT)
                strace.wait(timeout=30)
            server.send_signal(signal.SIGTERM)
            try:
                server.wait(timeout=15)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait(timeout=10)
        on_conn, other, by_fd, fds = count_calls(log.read_text(errors="replace"))
    print(
        f"fcgiserve {args.method}: {sent} GET /hello on one kept connection "
        f"(server fd {sorted(fds)}), traced:"
    )
    print()
    print(_render(on_conn, other, sent))
    recv = sum(n for name, n in on_conn.items() if name.startswith(("recv", "read")))
    send = sum(n for name, n in on_conn.items() if name.startswith(("send", "write")))
    print()
    print(f"connection socket: {recv / sent:.2f} receives and {send / sent:.2f} sends per request")
    print()
    print("elsewhere, by first argument (fd), 0.05 per request or more:")
    for key, count in by_fd.most_common():
        if count / sent >= 0.05:
            print(f"  {key}: {count / sent:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
