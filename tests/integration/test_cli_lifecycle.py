"""The CLI as a supervisor runs it: start-up failures, pidfile, TERM / HUP / QUIT, with real processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from fcgiserve.client import fcgi_request
from tests.helpers import ROOT, free_port, http_get, run_fcgiserve, run_nginx, wait_for

pytestmark = pytest.mark.integration

SITE = Path(__file__).resolve().parent / "djangosite"

SLOW_APP = """
import os, time

def application(environ, start_response):
    delay = float(environ.get("QUERY_STRING") or 0)
    time.sleep(delay)
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [("version %s pid %d" % (VERSION, os.getpid())).encode()]

VERSION = open(os.environ["VERSION_FILE"]).read().strip()
"""


@pytest.fixture
def slow_app(tmp_path: Path) -> Iterator[dict[str, str]]:
    (tmp_path / "slowapp.py").write_text(SLOW_APP)
    version = tmp_path / "version.txt"
    version.write_text("1")
    yield {"VERSION_FILE": str(version)}


def _run_cli(
    args: list[str], cwd: Path, timeout: float = 20, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "fcgiserve", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_bad_option_is_one_line_and_exit_2(tmp_path: Path) -> None:
    result = _run_cli(["app:application", "--minspare", "9", "--maxspare", "2"], tmp_path)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "maxspare" in lines[0], result.stderr
    result = _run_cli(["app:application", "--no-such-option"], tmp_path)
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr


@pytest.mark.parametrize(
    ("args", "moved", "in_effect"),
    [(["--method", "threaded", "--maxchildren", "2"], "--maxspare 2 (default 5)", (2, 2, 2)),
     (["--method", "prefork", "--maxchildren", "2"], "--maxspare 2 (default 5)", (2, 2, 2)),
     (["maxchildren=2"], "--maxspare 2 (default 5)", (2, 2, 2)),
     (["method=prefork", "maxspare=1"], "--minspare 1 (default 2)", (1, 1, 8))],
)  # fmt: skip
def test_defaults_fit_a_lone_pool_size(
    tmp_path: Path, slow_app: dict[str, str], args: list[str], moved: str, in_effect: tuple[int, int, int]
) -> None:
    """The issue's `--method threaded --maxchildren 2` was refused over a --maxspare nobody typed. It
    serves, and one INFO line names the defaults moved and the sizes in effect."""
    with run_fcgiserve(["slowapp", *args], tmp_path, env=slow_app) as server:
        got = fcgi_request(("127.0.0.1", server.port))
        assert server.stop() == 0
    assert got.status == 200 and got.body.startswith(b"version 1 pid "), server.log()
    fitted = [line for line in server.log().splitlines() if "defaults fitted" in line]
    assert len(fitted) == 1 and " INFO " in fitted[0], server.log()
    sizes = "--minspare {} --maxspare {} --maxchildren {}".format(*in_effect)
    assert fitted[0].endswith(f"defaults fitted to the options given: {moved}; in effect: {sizes}"), fitted


def test_daemonize_true_is_refused_with_a_reason(tmp_path: Path) -> None:
    result = _run_cli(["app:application", "daemonize=true"], tmp_path)
    assert result.returncode == 2
    assert "supervisor" in result.stderr


@pytest.mark.parametrize("method", ["threaded", "prefork"])
def test_app_that_fails_to_import_exits_before_listening(tmp_path: Path, method: str) -> None:
    (tmp_path / "broken.py").write_text("import this_module_does_not_exist\n")
    port = free_port()
    result = _run_cli(["broken:application", "--port", str(port), "--method", method], tmp_path)
    assert result.returncode != 0
    assert "Traceback" in result.stderr and "this_module_does_not_exist" in result.stderr
    assert "serving on" not in result.stderr


def test_pidfile_lifecycle(tmp_path: Path, slow_app: dict[str, str]) -> None:
    pidfile = tmp_path / "site.pid"
    pidfile.write_text("999999\n")  # stale: no such process
    with run_fcgiserve(["slowapp", "--pidfile", str(pidfile)], tmp_path, env=slow_app) as server:
        assert wait_for(lambda: pidfile.exists() and pidfile.read_text().strip() == str(server.pid))
        # A second server with the same pidfile is refused while the first lives.
        second = _run_cli(
            ["slowapp", "--pidfile", str(pidfile), "--port", str(free_port())], tmp_path, env=slow_app
        )
        assert second.returncode != 0 and "running process" in second.stderr
        assert server.stop() == 0
    assert not pidfile.exists()


def test_term_lets_the_slow_request_finish(tmp_path: Path, slow_app: dict[str, str]) -> None:
    with run_fcgiserve(["slowapp"], tmp_path, env=slow_app) as server:
        result: dict[str, object] = {}

        def slow() -> None:
            result["response"] = fcgi_request(("127.0.0.1", server.port), {"QUERY_STRING": "1.0"}, timeout=10)

        thread = threading.Thread(target=slow)
        thread.start()
        time.sleep(0.3)
        server.proc.send_signal(signal.SIGTERM)
        thread.join(10)
        assert server.proc.wait(10) == 0
        response = result["response"]
        assert response.status == 200 and b"version 1" in response.body  # type: ignore[attr-defined]


def test_quit_stops_at_once(tmp_path: Path, slow_app: dict[str, str]) -> None:
    with run_fcgiserve(["slowapp"], tmp_path, env=slow_app) as server:
        started = time.monotonic()
        thread = threading.Thread(
            target=lambda: _swallow(
                lambda: fcgi_request(("127.0.0.1", server.port), {"QUERY_STRING": "5"}, timeout=10)
            )
        )
        thread.start()
        time.sleep(0.3)
        server.proc.send_signal(signal.SIGQUIT)
        server.proc.wait(5)
        assert time.monotonic() - started < 4
        thread.join(10)


def _swallow(fn: object) -> None:
    try:
        fn()  # type: ignore[operator]
    except Exception:
        pass


@pytest.mark.parametrize("method", ["threaded", "prefork"])
def test_hup_reloads_new_code_with_zero_failed_requests(
    tmp_path: Path, slow_app: dict[str, str], method: str
) -> None:
    extra = ["--minspare", "1", "--maxspare", "2", "--maxchildren", "4"] if method == "prefork" else []
    with (
        run_fcgiserve(["slowapp", "--method", method, *extra], tmp_path, env=slow_app) as server,
        run_nginx(tmp_path, f"127.0.0.1:{server.port}", keep_conn=True) as web,
    ):
        failures: list[str] = []
        bodies: list[bytes] = []
        stop = threading.Event()

        def load() -> None:
            deadline = time.monotonic() + 20
            while not stop.is_set() and time.monotonic() < deadline:
                status, _, body = http_get(web.url + "/?0.02")
                if status != 200:
                    failures.append(f"{status} {body[:200]!r}")
                bodies.append(body)

        threads = [threading.Thread(target=load) for _ in range(4)]
        for thread in threads:
            thread.start()
        time.sleep(0.5)
        Path(slow_app["VERSION_FILE"]).write_text("2")
        server.proc.send_signal(signal.SIGHUP)
        assert wait_for(lambda: bool(bodies) and b"version 2" in bodies[-1], timeout=15), bodies[-3:]
        time.sleep(0.5)
        stop.set()
        for thread in threads:
            thread.join(25)
        assert failures == []
        assert server.proc.poll() is None, "the server must survive a reload"
        if method == "threaded":
            assert all(f"pid {server.pid}".encode() in b for b in bodies), "re-exec keeps the pid"
        assert server.stop() == 0


@pytest.mark.parametrize("method", ["threaded", "prefork"])
@pytest.mark.parametrize("signum", [signal.SIGHUP, signal.SIGTERM])
def test_signal_during_start_up_is_not_fatal(tmp_path: Path, method: str, signum: int) -> None:
    """A supervisor's `svc -h` / `svc -t` right after start: handled once the pool runs, never a crash."""
    marker = tmp_path / "importing"
    (tmp_path / "slowstart.py").write_text(
        f"import pathlib, time\npathlib.Path({str(marker)!r}).touch()\ntime.sleep(1.0)\n\n"
        "def application(environ, start_response):\n"
        "    start_response('200 OK', [])\n"
        "    return [b'up']\n"
    )
    port = free_port()
    with run_fcgiserve(["slowstart", "--method", method], tmp_path, port=port, wait=False) as server:
        # The signal lands while the application imports (a Django project takes a second or more).
        assert wait_for(marker.exists, timeout=20), server.log()
        server.proc.send_signal(signum)
        if signum == signal.SIGTERM:
            assert server.proc.wait(20) == 0, server.log()
            return
        assert wait_for(lambda: _serves(port), timeout=20), server.log()
        assert server.proc.poll() is None
        assert server.stop() == 0


@pytest.mark.parametrize("delay", [0.0, 0.005, 0.02])
def test_term_right_after_hup_stops_instead_of_reloading(tmp_path: Path, delay: float) -> None:
    """`svc -h` at once followed by `svc -d`: the TERM wins wherever it lands in the reload (while the pool
    drains, between the drain and the re-exec, or in the new process image), never lost or fatal."""
    port = free_port()
    (tmp_path / "quick.py").write_text(
        "def application(environ, start_response):\n    start_response('200 OK', [])\n    return [b'up']\n"
    )
    with run_fcgiserve(["quick"], tmp_path, port=port) as server:
        assert _serves(port)
        server.proc.send_signal(signal.SIGHUP)
        time.sleep(delay)
        server.proc.send_signal(signal.SIGTERM)
        assert server.proc.wait(20) == 0, server.log()


def _serves(port: int) -> bool:
    try:
        return fcgi_request(("127.0.0.1", port), timeout=2).body == b"up"
    except Exception:
        return False
