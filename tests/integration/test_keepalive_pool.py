"""Kept-alive connections from nginx must never pin workers (issue: flup's prefork collapses exactly here).

nginx with `fastcgi_keep_conn on` and an upstream `keepalive 16` holds up to 16 idle backend connections per
worker process. A pool that binds a worker to each connection for its whole life ends up with every worker
sitting on an idle connection while requests on other connections wait (p99 of a second, timeouts). fcgiserve
parks idle connections in the pool's selector, so they cost nothing; this test proves it with maxchildren 6.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from tests.helpers import http_get, run_fcgiserve, run_nginx

pytestmark = pytest.mark.integration

APP = """
import time

def application(environ, start_response):
    if environ.get("QUERY_STRING") == "slow":
        time.sleep(0.3)
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"ok"]
"""


@pytest.mark.parametrize(
    "args",
    [
        ["--method", "prefork", "--minspare", "1", "--maxspare", "2", "--maxchildren", "6", "--threads", "2"],
        ["--method", "threaded", "--minspare", "1", "--maxspare", "2", "--maxchildren", "6"],
    ],
    ids=["prefork", "threaded"],
)
def test_idle_kept_connections_cost_no_capacity(tmp_path: Path, args: list[str]) -> None:
    (tmp_path / "kaapp.py").write_text(APP)
    with (
        run_fcgiserve(["kaapp", *args], tmp_path) as server,
        run_nginx(tmp_path, f"127.0.0.1:{server.port}", keep_conn=True) as web,
    ):
        # Phase 1: 24 clients at once make nginx open many backend connections, which then stay idle in its
        # keepalive cache (up to 16 of them).
        def burst() -> None:
            http_get(web.url + "/?slow")

        threads = [threading.Thread(target=burst) for _ in range(24)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)

        # Phase 2: steady load from 8 clients for a bounded time; every latency must stay small.
        latencies: list[float] = []
        failures: list[int] = []

        def load() -> None:
            deadline = time.monotonic() + 3
            for _ in range(2000):
                if time.monotonic() > deadline:
                    break
                started = time.monotonic()
                status = http_get(web.url + "/")[0]
                latencies.append(time.monotonic() - started)
                if status != 200:
                    failures.append(status)

        threads = [threading.Thread(target=load) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)

        assert failures == []
        latencies.sort()
        p99 = latencies[int(len(latencies) * 0.99)]
        assert len(latencies) > 200, "the pool served too few requests: capacity is pinned"
        assert p99 < 0.25, f"p99 {p99 * 1000:.0f} ms: idle kept connections are pinning workers"
