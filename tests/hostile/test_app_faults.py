"""Faults on the server's own side: applications that raise or break PEP 3333, leaked threads, prefork
workers SIGKILLed under load, and a disk that fills while a body is spooled.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from fcgiserve.client import FastCGIError, fcgi_request
from tests.helpers import children_of, wait_for
from tests.hostile.peer import Live, live_server

# route -> (HTTP status the client sees, or None when the headers already went out)
FAILING_ROUTES = {
    "/raise/call": 500,
    "/raise/after-start": 500,
    "/raise/iter": None,
    "/raise/close": None,
    "/raise/read": 500,
    "/wrong/str-body": 500,
    "/wrong/none": 500,
    "/wrong/status": 500,
    "/wrong/header": 500,
    "/wrong/start-twice": 500,
    "/wrong/no-start": 500,
}


@pytest.mark.parametrize("route", list(FAILING_ROUTES))
def test_app_failure_at_every_wsgi_stage_is_contained(live: Live, route: str) -> None:
    """A 500 while the status can still change; after that a non-zero appStatus (S-G1). No traceback
    reaches the peer (no --debug), the server serves on."""
    response = fcgi_request(live.address, path=route, body=b"x" * 10, method="POST", timeout=10)
    expected = FAILING_ROUTES[route]
    if expected is not None:
        assert response.status == expected, (response.status, response.body[:300])
    else:
        assert response.app_status != 0
    assert b"hostile-suite-secret-marker" not in response.raw
    live.check()


def test_leaked_application_threads_do_not_stop_the_server(live: Live) -> None:
    for _ in range(40):
        assert live.good("/leak-thread?n=20").body.startswith(b"threads ")
    live.check()


@pytest.fixture
def prefork_server(tmp_path: Path) -> Iterator[Live]:
    with live_server("prefork", tmp_path, ["--graceful-timeout", "2"]) as server:
        yield server


def test_prefork_children_sigkilled_under_load(prefork_server: Live) -> None:
    """Children are SIGKILLed while 4 clients send requests: only requests in flight in a killed child fail
    (at most one per kill and client), every child is replaced, and the server serves on."""
    live = prefork_server
    stop = threading.Event()
    ok = [0] * 4
    failed = [0] * 4

    def client(index: int) -> None:
        while not stop.is_set():
            try:
                response = fcgi_request(live.address, path="/sleep?n=0.02", timeout=10)
            except FastCGIError:
                failed[index] += 1
                continue
            if response.status == 200:
                ok[index] += 1
            else:
                failed[index] += 1

    clients = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(4)]
    for thread in clients:
        thread.start()
    killed: list[int] = []
    try:
        for _ in range(4):
            time.sleep(0.6)
            children = children_of(live.server.pid)
            assert children, live.server.log()[-2000:]
            os.kill(children[0], signal.SIGKILL)
            killed.append(children[0])
        time.sleep(0.6)
    finally:
        stop.set()
        for thread in clients:
            thread.join(20)
    assert sum(ok) > 20, (ok, failed)
    assert sum(failed) <= len(killed) * len(clients), (ok, failed)
    assert wait_for(lambda: len(set(children_of(live.server.pid)) - set(killed)) >= 2, timeout=15), (
        "killed children were not replaced"
    )
    for _ in range(10):
        live.check()


@pytest.fixture
def tiny_tmpdir(tmp_path: Path) -> Iterator[Path]:
    """A 512 KiB tmpfs: the server's TMPDIR, where bodies above --spool-threshold (64K) are spooled.

    Chosen over RLIMIT_FSIZE because a full disk (ENOSPC) is what production meets; mounting needs root,
    so elsewhere the test is skipped with the mount error.
    """
    mount = tmp_path / "tiny"
    mount.mkdir()
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=512k,mode=0700", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs to fill (needs root): {result.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


@pytest.mark.parametrize("method", ["threaded", "prefork"])
def test_disk_full_while_spooling_a_body(tiny_tmpdir: Path, tmp_path: Path, method: str) -> None:
    """A 700 KiB upload spooled to a 512 KiB TMPDIR: a clean 500 (never a hang or a dropped connection),
    one log line; a 200 KiB upload spooled right after succeeds, and so do plain requests."""
    with live_server(method, tmp_path, env={"TMPDIR": str(tiny_tmpdir)}) as live:
        for _ in range(2):
            full = fcgi_request(
                live.address, path="/echo", body=b"s" * (700 * 1024), method="POST", timeout=20
            )
            assert full.status == 500 and full.body == b"Request body could not be stored\n", full
            fits = fcgi_request(
                live.address, path="/echo", body=b"s" * (200 * 1024), method="POST", timeout=20
            )
            assert fits.status == 200 and fits.body == str(200 * 1024).encode(), fits
        assert live.server.log().count("cannot spool the body") == 2
        live.check()
