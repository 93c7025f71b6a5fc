"""When the system refuses a thread: an address-space limit (ulimit -v, some VPS plans), a process limit or a
cgroup's pids.max. The pool serves on with the threads it has, connections wait in the listen queue, and the
log says why once; ``--thread-stack-size`` makes each thread reserve less.

The limit is set on the running server (``resource.prlimit``): its address space as measured once it serves,
plus room for two more threads of the system's default 8 MiB stack and 5 MiB to spare.
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from fcgiserve.client import FastCGIError, fcgi_request
from tests.helpers import ROOT, free_port, run_fcgiserve

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="prlimit and /proc are Linux's")

APP = """
import threading, time

def application(environ, start_response):
    time.sleep(float(environ.get("QUERY_STRING") or 0))
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [str(threading.stack_size()).encode()]
"""
REFUSED = "cannot start another worker thread"


@contextmanager
def _server(tmp_path: Path, *args: str) -> Iterator[tuple[subprocess.Popen[bytes], int, Path]]:
    """fcgiserve over APP (``python -m`` from tmp_path, which puts the app on the path); (process, port,
    log)."""
    (tmp_path / "slowapp.py").write_text(APP)
    with run_fcgiserve(["slowapp:application", *args], tmp_path) as server:
        yield server.proc, server.port, server.log_path


def _vm_size(pid: int) -> int:
    """The process's address space in bytes (VmSize)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmSize:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmSize")


def _concurrent(port: int, count: int, seconds: float) -> list[object]:
    """``count`` requests at once, each holding a thread for ``seconds``; their statuses (or errors)."""
    results: list[object] = [None] * count

    def one(index: int) -> None:
        try:
            results[index] = fcgi_request(("127.0.0.1", port), path=f"/?{seconds}", timeout=60).status
        except FastCGIError as exc:
            results[index] = repr(exc)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(90)
    return results


def test_under_an_address_space_limit_requests_wait_for_the_threads_there_are(tmp_path: Path) -> None:
    with _server(tmp_path) as (proc, port, log):
        assert _concurrent(port, 2, 0.0) == [200, 200]
        limit = _vm_size(proc.pid) + 21 * 1024 * 1024
        resource.prlimit(proc.pid, resource.RLIMIT_AS, (limit, limit))
        for _ in range(2):  # twice: the pool keeps serving after the refusals
            assert _concurrent(port, 24, 0.2) == [200] * 24, log.read_text()[-3000:]
        assert proc.poll() is None
        text = log.read_text()
    assert text.count(REFUSED) == 1, text[-3000:]  # said once, not per refused thread
    assert "Traceback" not in text and "ERROR" not in text, text[-3000:]


def test_thread_stack_size_applies_to_the_worker_threads(tmp_path: Path) -> None:
    with _server(tmp_path, "--thread-stack-size", "512K") as (_proc, port, _log):
        response = fcgi_request(("127.0.0.1", port), path="/", timeout=30)
        assert response.status == 200 and response.body == b"524288"


def test_a_thread_stack_size_the_system_refuses_stops_the_start(tmp_path: Path) -> None:
    (tmp_path / "slowapp.py").write_text(APP)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(tmp_path)])}
    argv = [sys.executable, "-m", "fcgiserve", "slowapp:application", "--port", str(free_port())]
    argv += ["--thread-stack-size", "60K"]
    done = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=60)
    assert done.returncode == 2 and "--thread-stack-size" in done.stderr and "64K" in done.stderr
