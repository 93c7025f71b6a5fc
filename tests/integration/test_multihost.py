"""Beyond one machine: nginx in front of two fcgiserve hosts, one of which dies under load.

The two "hosts" are network namespaces this test creates, each reached from the root namespace through a
veth pair with private addresses of its own (10.231.0.0/30 and 10.231.0.4/30): the traffic never leaves
this machine. nginx (root namespace) has both in one upstream with ``fastcgi_next_upstream error timeout``;
backend A is SIGKILLed in the middle of a bounded GET load. No request may fail (GET is idempotent, so
nginx retries it on B), and B carries everything after the kill. docs/scaling.md explains the pattern.

Needs root (ip netns); elsewhere it is skipped with the exact error of ``ip netns add``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.helpers import ROOT, http_get, run_nginx, wait_for

pytestmark = pytest.mark.integration

PORT = 9000
APP = "tests.hostile.hostile_app:app"


@dataclass
class Host:
    name: str  # "a" / "b", also what the backend answers on /who
    netns: str
    address: str  # the backend's address inside its namespace
    gateway: str  # the root namespace's end of the veth: nginx's source address
    proc: subprocess.Popen[bytes] | None = None
    log: Path | None = None


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True, timeout=10)


def _netns_available(probe: str) -> str | None:
    """None when ``ip netns add`` works here, else its exact error."""
    try:
        result = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True, timeout=10)
    except FileNotFoundError as exc:
        return str(exc)
    if result.returncode != 0:
        return result.stderr.strip() or f"ip netns add exited with {result.returncode}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True, timeout=10)
    return None


def _build(host: Host, tag: str) -> None:
    outer, inner = f"fh{tag}{host.name}0", f"fh{tag}{host.name}1"  # interface names: 15 bytes at most
    _ip("netns", "add", host.netns)
    _ip("link", "add", outer, "type", "veth", "peer", "name", inner)
    _ip("link", "set", inner, "netns", host.netns)
    _ip("addr", "add", f"{host.gateway}/30", "dev", outer)
    _ip("link", "set", outer, "up")
    _ip("-n", host.netns, "addr", "add", f"{host.address}/30", "dev", inner)
    _ip("-n", host.netns, "link", "set", inner, "up")
    _ip("-n", host.netns, "link", "set", "lo", "up")


def _start(host: Host, tmp_path: Path) -> None:
    host.log = tmp_path / f"backend-{host.name}.log"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1", "HOSTILE_BACKEND": host.name}
    argv = ["ip", "netns", "exec", host.netns, sys.executable, "-m", "fcgiserve", APP]
    argv += ["--host", host.address, "--port", str(PORT), "--allow-from", host.gateway]
    with open(host.log, "wb") as log:
        host.proc = subprocess.Popen(argv, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=env)


def _log_of(host: Host) -> str:
    return host.log.read_text(errors="replace") if host.log is not None and host.log.exists() else ""


def _serving(host: Host) -> bool:
    return "serving on" in _log_of(host)


def _stop(host: Host) -> None:
    proc = host.proc
    if proc is not None and proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


@pytest.fixture
def two_hosts(tmp_path: Path) -> Iterator[list[Host]]:
    tag = f"{os.getpid() % 10000:04d}"
    error = _netns_available(f"fcgih-probe-{tag}")
    if error is not None:
        pytest.skip(f"ip netns is not permitted here: {error}")
    hosts = [
        Host("a", f"fcgih-a-{tag}", "10.231.0.2", "10.231.0.1"),
        Host("b", f"fcgih-b-{tag}", "10.231.0.6", "10.231.0.5"),
    ]
    try:
        for host in hosts:
            _build(host, tag)
            _start(host, tmp_path)
        for host in hosts:
            assert wait_for(lambda host=host: _serving(host), timeout=20), _log_of(host)
        yield hosts
    finally:
        for host in hosts:
            _stop(host)
        for host in hosts:
            # Deleting a namespace deletes its end of the veth pair, and with it the root end.
            subprocess.run(["ip", "netns", "del", host.netns], capture_output=True, timeout=10)


def test_nginx_fails_over_when_a_backend_dies_under_load(two_hosts: list[Host], tmp_path: Path) -> None:
    a, b = two_hosts
    failover = "max_fails=1 fail_timeout=30s"
    upstream = f"{a.address}:{PORT} {failover};\n        server {b.address}:{PORT} {failover}"
    location = "fastcgi_next_upstream error timeout; fastcgi_connect_timeout 2s; fastcgi_read_timeout 10s;"
    with run_nginx(tmp_path, upstream, location_extra=location) as nginx:
        seen: Counter[str] = Counter()
        after_kill: Counter[str] = Counter()
        failures: list[str] = []
        killed = threading.Event()
        stop = threading.Event()

        def load() -> None:
            while not stop.is_set():
                try:
                    status, _, body = http_get(nginx.url + "/who", timeout=15)
                except OSError as exc:
                    failures.append(repr(exc))
                    continue
                if status != 200:
                    failures.append(f"{status} {body[:100]!r}")
                    continue
                (after_kill if killed.is_set() else seen)[body.decode()] += 1

        clients = [threading.Thread(target=load, daemon=True) for _ in range(4)]
        for thread in clients:
            thread.start()
        try:
            assert wait_for(lambda: seen["a"] >= 20 and seen["b"] >= 20, timeout=20), seen
            assert a.proc is not None
            a.proc.send_signal(signal.SIGKILL)
            a.proc.wait(10)
            killed.set()
            deadline = time.monotonic() + 4.0
            while time.monotonic() < deadline and not failures:
                time.sleep(0.1)
        finally:
            stop.set()
            for thread in clients:
                thread.join(20)
        assert not failures, (failures[:5], nginx.error_log()[-2000:])
        assert after_kill["b"] >= 50 and after_kill["a"] <= 4, after_kill  # a's last in-flight answers only
        assert b.proc is not None and b.proc.poll() is None
