"""A tiny line protocol standing in for the FastCGI handler in pool tests.

Each line is one request: ``SLEEP 0.5`` (answers ``SLEPT``), ``ECHO x`` (answers ``x``), ``PID``
(answers the serving process's pid), ``QUIT`` (answers ``BYE`` and closes). ``serve()`` answers every
complete line it has, returns True when its buffer is empty and the peer is still there (park me), False
on QUIT or EOF. It calls the observer
hooks like the real handler and records what the tests want to see (concurrency, peers, threads).
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from fcgiserve.pools.base import RequestObserver, ServedConnection

WORKER_PREFIX = "fcgiserve-worker"


def worker_threads(prefix: str = WORKER_PREFIX) -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith(prefix + "-")]


class LineConnection:
    def __init__(self, factory: LineFactory, sock: socket.socket) -> None:
        self._factory = factory
        self._sock = sock
        self._fd = sock.fileno()
        self._buffer = b""
        self._closed = False
        self._lock = threading.Lock()
        self.deadline: float | None = None  # a line protocol has no half-received request to time

    def fileno(self) -> int:
        return self._fd

    def serve(self) -> bool:
        self._factory.serve_calls += 1
        while True:
            if not self._buffer or b"\n" not in self._buffer:
                try:
                    data = self._sock.recv(65536)
                except OSError:
                    data = b""
                if not data:
                    self.close()
                    return False
                self._buffer += data
            while b"\n" in self._buffer:
                line, self._buffer = self._buffer.split(b"\n", 1)
                if not self._answer(line.decode()):
                    self.close()
                    return False
            if not self._buffer:
                return not self._closed

    def _answer(self, line: str) -> bool:
        command, _, arg = line.partition(" ")
        if command == "QUIT":
            self._send("BYE")
            return False
        observer = self._factory.observer
        if observer is not None:
            observer.request_started(line)
        self._factory.request_began()
        try:
            if command == "SLEEP":
                time.sleep(float(arg))
                reply = "SLEPT"
            elif command == "SPIN":  # compute for that much CPU time, however long it takes
                until = time.thread_time() + float(arg)
                while time.thread_time() < until:
                    pass
                reply = "SPUN"
            elif command == "ECHO":
                reply = arg
            elif command == "FORK":
                # A process that holds every socket of ours for that long (as multiprocessing's would).
                if os.fork() == 0:
                    time.sleep(float(arg))
                    os._exit(0)
                reply = "FORKED"
            elif command == "PID":
                reply = str(os.getpid())
            elif command == "CRASH":
                raise RuntimeError("the test asked for it")
            else:
                reply = "ERROR"
            self._factory.served_by.append(threading.current_thread().name)
        finally:
            self._factory.request_ended()
            if observer is not None:
                observer.request_finished()
        return self._send(reply)

    def _send(self, reply: str) -> bool:
        try:
            self._sock.sendall(reply.encode() + b"\n")
        except OSError:
            return False
        return True

    def expire(self) -> None:
        self.close()

    def detach(self) -> socket.socket | None:
        """Clean (no partial line held, not closed): give the socket up unclosed."""
        with self._lock:
            if self._closed or self._buffer:
                return None
            self._closed = True
        self._factory.detached += 1
        return self._sock

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._factory.closed += 1
        # shutdown() wakes a recv() blocked in another thread, as the real handler's close() must.
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)
        self._sock.close()


class LineFactory:
    """ConnectionFactory for the line protocol; ``refuse(peer)`` True closes the socket at once."""

    def __init__(self, refuse: Callable[[Any], bool] | None = None) -> None:
        self.observer: RequestObserver | None = None
        self.watch: Callable[[Any], bool] | None = None  # set by the dispatcher; never called here
        self._refuse = refuse
        self._lock = threading.Lock()
        self.opened: list[LineConnection] = []
        self.sockets: list[socket.socket] = []
        self.peers: list[Any] = []
        self.in_progress = 0
        self.max_in_progress = 0
        self.max_worker_threads = 0
        self.served_by: list[str] = []
        self.serve_calls = 0
        self.closed = 0
        self.detached = 0

    def open(self, sock: socket.socket, peer: Any) -> ServedConnection | None:
        with self._lock:
            self.sockets.append(sock)
            self.peers.append(peer)
        if self._refuse is not None and self._refuse(peer):
            sock.close()
            return None
        conn = LineConnection(self, sock)
        with self._lock:
            self.opened.append(conn)
        return conn

    def request_began(self) -> None:
        threads = len(worker_threads())
        with self._lock:
            self.in_progress += 1
            self.max_in_progress = max(self.max_in_progress, self.in_progress)
            self.max_worker_threads = max(self.max_worker_threads, threads)

    def request_ended(self) -> None:
        with self._lock:
            self.in_progress -= 1


_clients: list[LineClient] = []


def close_clients() -> None:
    """Close every LineClient made so far (an autouse fixture calls this, so a failing test leaks none)."""
    while _clients:
        _clients.pop().close()


class LineClient:
    """A blocking client with a deadline on every read: a broken pool fails a test instead of hanging it."""

    def __init__(self, address: Any, family: int = socket.AF_INET, timeout: float = 5.0) -> None:
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        _clients.append(self)
        self.sock.settimeout(timeout)
        self.sock.connect(address)
        self._buffer = b""

    def send(self, line: str) -> None:
        self.sock.sendall(line.encode() + b"\n")

    def read_line(self) -> str:
        """One reply line, or "" at EOF."""
        while b"\n" not in self._buffer:
            try:
                data = self.sock.recv(65536)
            except ConnectionResetError:
                data = b""
            if not data:
                return ""
            self._buffer += data
        line, self._buffer = self._buffer.split(b"\n", 1)
        return line.decode()

    def request(self, line: str) -> str:
        self.send(line)
        return self.read_line()

    def close(self) -> None:
        self.sock.close()


@contextlib.contextmanager
def tcp_listener(backlog: int = 128) -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(backlog)
    try:
        yield sock
    finally:
        sock.close()


def wait_until(predicate: Callable[[], bool], timeout: float = 2.0, interval: float = 0.005) -> bool:
    """Test-side only: bounded wait for a condition the pool reaches asynchronously."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()
