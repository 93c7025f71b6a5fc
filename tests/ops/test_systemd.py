"""systemd integration: socket activation (LISTEN_FDS / LISTEN_PID) and sd_notify, with the test as systemd.

The exact notification sequence is what ``Type=notify-reload`` needs: READY=1 once serving; on SIGHUP
RELOADING=1 with MONOTONIC_USEC, then READY=1 once the new code serves; STOPPING=1 on SIGTERM.
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from fcgiserve.client import fcgi_request
from fcgiserve.sdnotify import ServiceNotifier, notify, notify_socket_address, watchdog_interval
from tests.helpers import ROOT, wait_for
from tests.ops.systemd_helpers import fields, socket_activated


def _get(port: int) -> str:
    response = fcgi_request(("127.0.0.1", port), path="/hi", timeout=10)
    assert response.status == 200, response
    return response.body.decode()


@pytest.mark.parametrize("method", ["threaded", "prefork"])
def test_socket_activation_and_notify_sequence(tmp_path: Path, method: str) -> None:
    args = ["tests.ops.apps:hello", "--method", method, "--graceful-timeout", "5"]
    with socket_activated(args, tmp_path) as (proc, port, notify_sock, log_path):
        ready = fields(notify_sock.next())
        assert list(ready) == ["READY", "STATUS"], ready
        assert ready["READY"] == "1"
        assert ready["STATUS"].startswith("serving on ") and f"pid {proc.pid}" in ready["STATUS"]
        # Served through the socket "systemd" passed: nothing else listens on that port.
        first = _get(port)
        assert first.startswith("hello from ")

        before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        proc.send_signal(signal.SIGHUP)
        reloading = fields(notify_sock.next())
        after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        assert list(reloading) == ["RELOADING", "MONOTONIC_USEC", "STATUS"], reloading
        assert reloading["RELOADING"] == "1"
        assert before <= int(reloading["MONOTONIC_USEC"]) <= after
        ready_again = fields(notify_sock.next())
        assert list(ready_again) == ["READY", "STATUS"], ready_again
        assert f"pid {proc.pid}" in ready_again["STATUS"]  # threaded re-executes in place: same pid
        second = _get(port)
        if method == "threaded":
            assert second == first  # the same pid serves
        else:
            # A child of the new generation serves (an old one may still take a connection or two while
            # its SIGTERM is on the way).
            assert wait_for(lambda: _get(port) != first, timeout=5)

        proc.send_signal(signal.SIGTERM)
        assert fields(notify_sock.next()) == {"STOPPING": "1", "STATUS": "stopping"}
        assert proc.wait(15) == 0, log_path.read_text()
        notify_sock.sock.settimeout(0.3)
        with pytest.raises(TimeoutError):
            notify_sock.sock.recv(4096)  # nothing after STOPPING=1
        log = log_path.read_text()
        assert "Traceback" not in log, log


def test_watchdog_pings_when_watchdog_usec_is_set(tmp_path: Path) -> None:
    env = {"WATCHDOG_USEC": "200000"}  # 0.2 s: a ping every 0.1 s
    with socket_activated(["tests.ops.apps:hello"], tmp_path, env) as (proc, _, notify_sock, log_path):
        assert fields(notify_sock.next())["READY"] == "1"
        pings = [notify_sock.next(skip_watchdog=False, timeout=5) for _ in range(3)]
        assert pings == ["WATCHDOG=1"] * 3, notify_sock.messages
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0, log_path.read_text()


def test_notify_reaches_an_abstract_socket() -> None:
    name = f"fcgiserve-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(b"\0" + name.encode())
        sock.settimeout(5)
        assert notify("STATUS=hello", {"NOTIFY_SOCKET": "@" + name})
        assert sock.recv(4096) == b"STATUS=hello"


def test_notifier_keeps_the_notify_reload_order(tmp_path: Path) -> None:
    path = tmp_path / "n.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        sock.settimeout(5)
        notifier = ServiceNotifier({"NOTIFY_SOCKET": str(path)})
        assert not notifier.reloading()  # no READY yet: nothing to reload from
        assert notifier.ready("up")
        assert not notifier.ready("up again")  # a second plain READY would end a reload nobody started
        assert notifier.reloading()
        assert not notifier.reloading()  # the same reload
        assert notifier.ready()
        assert notifier.stopping()
        assert not notifier.stopping() and not notifier.ready()
        got = [sock.recv(4096).decode() for _ in range(4)]
    assert got[0] == "READY=1\nSTATUS=up"
    assert got[1].startswith("RELOADING=1\nMONOTONIC_USEC=") and got[1].endswith("\nSTATUS=reloading")
    assert got[2:] == ["READY=1", "STOPPING=1\nSTATUS=stopping"]


def test_without_notify_socket_nothing_is_sent() -> None:
    assert notify_socket_address({}) is None
    assert notify_socket_address({"NOTIFY_SOCKET": "relative/path"}) is None
    assert not notify("READY=1", {})
    assert not ServiceNotifier({}).ready()
    assert not notify("READY=1", {"NOTIFY_SOCKET": "/nonexistent/dir/notify.sock"})  # never raises


def test_watchdog_interval_honours_watchdog_pid() -> None:
    assert watchdog_interval({"WATCHDOG_USEC": "3000000"}) == 3.0
    assert watchdog_interval({"WATCHDOG_USEC": "3000000", "WATCHDOG_PID": str(os.getpid())}) == 3.0
    assert watchdog_interval({"WATCHDOG_USEC": "3000000", "WATCHDOG_PID": str(os.getpid() + 1)}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "0"}) is None
    assert watchdog_interval({}) is None


def _unit(name: str) -> dict[str, str]:
    """key -> value of a unit file in docs/systemd (comments and section headers dropped)."""
    text = (ROOT / "docs" / "systemd" / name).read_text()
    pairs = [line.split("=", 1) for line in text.splitlines() if "=" in line and not line.startswith("#")]
    return {key.strip(): value.strip() for key, value in pairs}


def test_the_documented_units_run_as_written(tmp_path: Path) -> None:
    """docs/systemd/fcgiserve.service's ExecStart, with its WatchdogSec, under our stand-in for systemd."""
    service, sock = _unit("fcgiserve.service"), _unit("fcgiserve.socket")
    assert service["Type"] == "notify" and service["NotifyAccess"] == "main"
    assert service["ExecReload"] == "/bin/kill -HUP $MAINPID"
    assert sock["FileDescriptorName"] == "fcgi" and sock["ListenStream"].startswith("/run/")
    argv = shlex.split(service["ExecStart"])
    assert argv[0].endswith("/fcgiserve") and argv[1] == "mysite.wsgi:application"
    args = ["tests.ops.apps:hello", *argv[2:]]
    env = {"WATCHDOG_USEC": str(int(service["WatchdogSec"]) * 1_000_000)}
    with socket_activated(args, tmp_path, env) as (proc, port, notify_sock, log_path):
        assert fields(notify_sock.next())["READY"] == "1"
        ping_path = argv[argv.index("--ping-path") + 1]
        assert fcgi_request(("127.0.0.1", port), path=ping_path).body == b"pong\n"
        status_path = argv[argv.index("--status-path") + 1]
        assert b"process manager:      dynamic" in fcgi_request(("127.0.0.1", port), path=status_path).body
        proc.send_signal(signal.SIGTERM)
        assert fields(notify_sock.next())["STOPPING"] == "1"
        assert proc.wait(15) == 0, log_path.read_text()
        assert "systemd watchdog: pinging every 15s" in log_path.read_text()


def test_the_documented_units_pass_systemd_analyze(tmp_path: Path) -> None:
    """systemd's own checker accepts the units (with ExecStart pointing at this interpreter)."""
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.fail("systemd-analyze is missing; scripts/test installs it (apt-get install systemd)")
    for name in ("fcgiserve.service", "fcgiserve.socket"):
        text = (ROOT / "docs" / "systemd" / name).read_text()
        text = text.replace("/usr/local/bin/fcgiserve", f"{sys.executable} -m fcgiserve")
        (tmp_path / name).write_text(text)
    result = subprocess.run(
        [analyze, "verify", "fcgiserve.socket", "fcgiserve.service"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (result.returncode, result.stderr) == (0, ""), result.stderr
