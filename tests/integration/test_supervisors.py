"""fcgiserve under real supervisors: daemontools (supervise / svc / svstat), runit (runsv / sv) and s6
(s6-supervise / s6-svc / s6-svstat, with readiness through --ready-fd and s6-svwait -U).

The `run` script is the classic one from the deployment guide: `exec fcgiserve ... --method=prefork`.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from fcgiserve.client import FastCGIError, fcgi_request
from tests.helpers import ROOT, children_of, free_port, process_state, wait_for

pytestmark = pytest.mark.integration

APP = """
import os

VERSION = open(os.environ["VERSION_FILE"]).read().strip()

def application(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [("version %s pid %d" % (VERSION, os.getpid())).encode()]
"""

RUN = """#!/bin/sh
# The classic run script: cd, merge stderr into the log, exec the server in the foreground.
cd {site}
PATH={bindir}:$PATH
PYTHONPATH={root}
VERSION_FILE={version}
export PATH PYTHONPATH VERSION_FILE
exec 2>&1
exec {envuidgid}fcgiserve mysite:application --method=prefork --port {port} --pidfile {pidfile} \\
    --minspare 1 --maxspare 2 --maxchildren 4 --graceful-timeout 5{extra}
"""


@dataclass
class Service:
    directory: Path
    port: int
    pidfile: Path
    version: Path
    status: Callable[[], tuple[bool, int | None]]
    control: Callable[[str], None]

    def serving_pid(self) -> int:
        return int(self.pidfile.read_text())

    def wait_up(self, not_pid: int | None = None) -> int:
        def up() -> bool:
            state, pid = self.status()
            if not state or pid is None or pid == not_pid:
                return False
            try:
                return self.serving_pid() == pid and _answers(self.port)
            except (OSError, ValueError):
                return False

        assert wait_for(up, timeout=20), f"service not up: {self.status()}"
        pid = self.status()[1]
        assert pid is not None
        return pid


def _answers(port: int) -> bool:
    try:
        return fcgi_request(("127.0.0.1", port), timeout=5).status == 200
    except FastCGIError:
        return False


def _tree(pid: int) -> set[int]:
    found = {pid}
    for child in children_of(pid):
        found |= _tree(child)
    return found


def _alive(pids: set[int]) -> set[int]:
    return {p for p in pids if process_state(p) not in (None, "Z")}


def _make_service(tmp_path: Path, envuidgid: str = "", extra: str = "") -> tuple[Path, int, Path, Path]:
    site = tmp_path / "site"
    site.mkdir()
    (site / "mysite.py").write_text(APP)
    version = tmp_path / "version.txt"
    version.write_text("1")
    port = free_port()
    pidfile = tmp_path / "mysite.pid"
    service = tmp_path / "service" / "mysite"
    service.mkdir(parents=True)
    run = service / "run"
    run.write_text(
        RUN.format(
            site=site,
            bindir=Path(sys.executable).parent,
            root=ROOT,
            version=version,
            port=port,
            pidfile=pidfile,
            envuidgid=envuidgid,
            extra=extra,
        )
    )
    run.chmod(0o755)
    return service, port, pidfile, version


def _exercise(service: Service) -> None:
    """The life of a service: up, reload under load, kill, down, up."""
    first = service.wait_up()
    assert _alive(_tree(first)) - {first}, "prefork children run under the supervised master"

    # svc -h / sv hup: new code, no failed request under a bounded load.
    failures: list[str] = []
    seen: list[bytes] = []
    stop = threading.Event()

    def load() -> None:
        deadline = time.monotonic() + 20
        while not stop.is_set() and time.monotonic() < deadline:
            try:
                response = fcgi_request(("127.0.0.1", service.port), timeout=10)
                seen.append(response.body)
                if response.status != 200:
                    failures.append(str(response.status))
            except FastCGIError as exc:
                failures.append(str(exc))

    threads = [threading.Thread(target=load) for _ in range(3)]
    for thread in threads:
        thread.start()
    time.sleep(0.3)
    service.version.write_text("2")
    service.control("hup")
    assert wait_for(lambda: bool(seen) and seen[-1].startswith(b"version 2"), timeout=15), seen[-3:]
    stop.set()
    for thread in threads:
        thread.join(25)
    assert failures == []
    assert service.status() == (True, first), "a reload keeps the supervised pid"

    # kill: the supervisor restarts it (a new pid, serving).
    service.control("kill")
    second = service.wait_up(not_pid=first)
    assert second != first

    # down: the service stops and leaves no process behind.
    tree = _tree(second)
    service.control("down")
    assert wait_for(lambda: not service.status()[0], timeout=15)
    assert wait_for(lambda: not _alive(tree), timeout=10), f"left behind: {_alive(tree)}"
    assert not service.pidfile.exists()

    # up: back again.
    service.control("up")
    third = service.wait_up(not_pid=second)
    assert third not in (first, second)


def _stop_supervisor(proc: subprocess.Popen[bytes], service: Service) -> None:
    pid = service.status()[1]
    tree = _tree(pid) if pid else set()
    try:
        service.control("exit")
        proc.wait(15)
    except (subprocess.TimeoutExpired, subprocess.CalledProcessError):
        proc.kill()
        proc.wait(5)
    for leftover in _alive(tree):
        os.kill(leftover, signal.SIGKILL)


@pytest.fixture
def daemontools_service(tmp_path: Path) -> Iterator[Service]:
    if not shutil.which("supervise"):
        pytest.fail("daemontools is not installed; .ci/run installs it (apt-get install daemontools)")
    directory, port, pidfile, version = _make_service(tmp_path, envuidgid="envuidgid root ")

    def status() -> tuple[bool, int | None]:
        out = subprocess.run(["svstat", str(directory)], capture_output=True, text=True).stdout
        match = re.search(r": up \(pid (\d+)\)", out)
        return (True, int(match.group(1))) if match else (False, None)

    def control(action: str) -> None:
        flag = {"hup": "-h", "kill": "-k", "down": "-d", "up": "-u", "exit": "-dx"}[action]
        subprocess.run(["svc", flag, str(directory)], check=True)

    proc = subprocess.Popen(
        ["supervise", str(directory)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    service = Service(directory, port, pidfile, version, status, control)
    try:
        yield service
    finally:
        _stop_supervisor(proc, service)


@pytest.fixture
def runit_service(tmp_path: Path) -> Iterator[Service]:
    if not shutil.which("runsv"):
        pytest.fail("runit is not installed; .ci/run installs it (apt-get install runit)")
    directory, port, pidfile, version = _make_service(tmp_path)

    def status() -> tuple[bool, int | None]:
        out = subprocess.run(["sv", "status", str(directory)], capture_output=True, text=True).stdout
        match = re.match(r"run: .*?: \(pid (\d+)\)", out)
        return (True, int(match.group(1))) if match else (False, None)

    def control(action: str) -> None:
        subprocess.run(["sv", "-w", "15", action, str(directory)], check=False, capture_output=True)

    proc = subprocess.Popen(["runsv", str(directory)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    service = Service(directory, port, pidfile, version, status, control)
    try:
        yield service
    finally:
        _stop_supervisor(proc, service)


@pytest.fixture
def s6_service(tmp_path: Path) -> Iterator[Service]:
    """s6-supervise with readiness: the service's notification-fd file says 3, the run script passes
    --ready-fd 3 (docs/deploy-nginx-django.md)."""
    if not shutil.which("s6-supervise"):
        pytest.fail("s6 is not installed; .ci/run installs it (apt-get install s6)")
    directory, port, pidfile, version = _make_service(tmp_path, extra=" --ready-fd 3")
    (directory / "notification-fd").write_text("3\n")

    def status() -> tuple[bool, int | None]:
        out = subprocess.run(
            ["s6-svstat", "-o", "up,pid", str(directory)], capture_output=True, text=True
        ).stdout.split()
        return (True, int(out[1])) if out[:1] == ["true"] and out[1:2] != ["-1"] else (False, None)

    def control(action: str) -> None:
        flag = {"hup": "-h", "kill": "-k", "down": "-d", "up": "-u", "exit": "-dx"}[action]
        subprocess.run(["s6-svc", flag, str(directory)], check=True)

    proc = subprocess.Popen(
        ["s6-supervise", str(directory)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    service = Service(directory, port, pidfile, version, status, control)
    try:
        yield service
    finally:
        _stop_supervisor(proc, service)


def _wait_ready(service: Service) -> None:
    """s6-svwait -U: returns once the service is up and has written its readiness newline; by then it
    answers."""
    done = subprocess.run(
        ["s6-svwait", "-U", "-t", "30000", str(service.directory)], capture_output=True, text=True, timeout=40
    )
    assert done.returncode == 0, done.stderr
    assert _answers(service.port), "ready, but not serving"
    ready = subprocess.run(
        ["s6-svstat", "-o", "ready", str(service.directory)], capture_output=True, text=True
    ).stdout.strip()
    assert ready == "true"


def test_daemontools_supervise_svc_svstat(daemontools_service: Service) -> None:
    """The classic run script with `exec envuidgid ... fcgiserve`: svstat, svc -h / -k / -d / -u."""
    _exercise(daemontools_service)


def test_runit_runsv_sv(runit_service: Service) -> None:
    _exercise(runit_service)


def test_s6_supervise_svc_svstat_with_readiness(s6_service: Service) -> None:
    """s6: readiness through --ready-fd (s6-svwait -U), then the same life as under daemontools: reload under
    load keeping the pid, kill and restart (ready again), down, up."""
    _wait_ready(s6_service)
    first = s6_service.status()[1]
    _exercise(s6_service)
    assert s6_service.status()[1] != first
    _wait_ready(s6_service)
