"""A bounded mixed load through a web server, every response checked (tests/integration/
test_connection_survival.py).

Each client thread holds one HTTP/1.1 keep-alive connection to the front end and sends GETs and POSTs with
random bodies (0 to 64 KiB) to ``/echo`` of tests/webservers.APP, which answers ``METHOD LENGTH SHA256`` of
the body it read. A response counts as good only with status 200 and the right length and digest. The load
stops by itself at ``max_requests`` (all clients together) or after ``seconds``, whichever comes first.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import random
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

MAX_BODY = 64 * 1024
KEEP_FAILURES = 5  # failures described in full; the rest are only counted


@dataclass
class LoadResult:
    ok: int = 0
    failed: int = 0
    statuses: dict[int, int] = field(default_factory=dict)  # failed responses by status (0: no response)
    failures: list[str] = field(default_factory=list)  # the first few, described
    pids: set[str] = field(default_factory=set)  # X-Pid of the processes that answered
    elapsed: float = 0.0

    def summary(self) -> str:
        by_status = ", ".join(f"{n} x {s or 'no response'}" for s, n in sorted(self.statuses.items()))
        first = "; ".join(self.failures)
        return (
            f"{self.ok + self.failed} requests in {self.elapsed:.1f}s: {self.ok} ok, {self.failed} failed"
            + (f" ({by_status}); first: {first}" if self.failed else "")
        )


class _Budget:
    """The shared request count and deadline; ``take`` is False once either is spent."""

    def __init__(self, requests: int, seconds: float) -> None:
        self._left = requests
        self._deadline = time.monotonic() + seconds
        self._lock = threading.Lock()

    def take(self) -> bool:
        with self._lock:
            if self._left <= 0 or time.monotonic() >= self._deadline:
                return False
            self._left -= 1
            return True


def _one(conn: http.client.HTTPConnection, rng: random.Random) -> tuple[int, str, str, str]:
    """One request on conn: (status, expected body, received body, X-Pid)."""
    if rng.random() < 0.5:
        method, body = "GET", b""
        conn.request("GET", "/echo")
    else:
        method, body = "POST", rng.randbytes(rng.randint(0, MAX_BODY))
        conn.request("POST", "/echo", body, {"Content-Type": "application/octet-stream"})
    response = conn.getresponse()
    received = response.read().decode(errors="replace")
    expected = f"{method} {len(body)} {hashlib.sha256(body).hexdigest()}"
    return response.status, expected, received, response.getheader("X-Pid") or ""


def run_mixed_load(
    port: int, *, clients: int = 8, max_requests: int = 10000, seconds: float = 3.5, seed: int = 13
) -> LoadResult:
    """``clients`` threads of mixed GET/POST through 127.0.0.1:port until the budget is spent."""
    result = LoadResult()
    budget = _Budget(max_requests, seconds)
    lock = threading.Lock()

    def fail(status: int, description: str) -> None:
        with lock:
            result.failed += 1
            result.statuses[status] = result.statuses.get(status, 0) + 1
            if len(result.failures) < KEEP_FAILURES:
                result.failures.append(description)

    def client(number: int) -> None:
        rng = random.Random(seed * 1000 + number)
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
        try:
            while budget.take():
                try:
                    status, expected, received, pid = _one(conn, rng)
                except (OSError, http.client.HTTPException) as exc:
                    fail(0, f"client {number}: {type(exc).__name__}: {exc}")
                    conn.close()  # http.client reconnects on the next request
                    continue
                if status == 200 and received == expected:
                    with lock:
                        result.ok += 1
                        result.pids.add(pid)
                else:
                    fail(status, f"client {number}: {status} {received[:120]!r}, wanted {expected!r}")
        finally:
            conn.close()

    started = time.monotonic()
    threads = [threading.Thread(target=client, args=(n,), daemon=True) for n in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(seconds + 60)
    result.elapsed = time.monotonic() - started
    return result


@contextlib.contextmanager
def every(interval: float, action: Callable[[], None]) -> Iterator[list[float]]:
    """Call ``action`` every ``interval`` seconds (first after one interval) until the block ends; yields the
    list of times (monotonic) at which it ran."""
    done = threading.Event()
    times: list[float] = []

    def loop() -> None:
        while not done.wait(interval):
            action()
            times.append(time.monotonic())

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    try:
        yield times
    finally:
        done.set()
        thread.join(interval + 10)
