"""fcgiserve.compat.flup / flup_fork: flup launch scripts that changed only their import line, run for real.

Each script below is the classic flup form; the tests run it as a process, talk FastCGI to it and signal it.
"""

from __future__ import annotations

import os
import signal
import socket
import stat
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from fcgiserve.client import fcgi_get_values, fcgi_request
from fcgiserve.compat import flup, flup_fork
from fcgiserve.config import ConfigError
from fcgiserve.protocol import ProtocolStatus, Role
from tests.helpers import ROOT, free_port, wait_for, wait_for_port

APP = """\
import os, sys
{import_line}

def application(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain"), ("X-Pid", str(os.getpid()))])
    keys = ("SITE", "FCGI_ROLE", "wsgi.multithread", "wsgi.multiprocess")
    return [" ".join(f"{{k}}={{environ.get(k)}}" for k in keys).encode()]

"""

THREADED = "from fcgiserve.compat.flup import WSGIServer, FCGI_RESPONDER, FCGI_AUTHORIZER"
FORK = "from fcgiserve.compat.flup_fork import WSGIServer, FCGI_RESPONDER, FCGI_AUTHORIZER"

# The one-liner of most flup deployments: the result of run() is printed so the test can read it.
ONCE = 'print("run() ->", WSGIServer(application, {args}).run(), flush=True)\n'
# The restarting form: flup's run() returns True on SIGHUP and the script serves again.
LOOP = (
    "while WSGIServer(application, {args}).run():\n"
    '    print("restarting", flush=True)\n'
    'print("done", flush=True)\n'
)


@contextmanager
def run_script(
    tmp_path: Path, import_line: str, tail: str, args: str, stdin: int | None = None
) -> Iterator[tuple[subprocess.Popen[bytes], Path]]:
    script = tmp_path / "launch.py"
    script.write_text(APP.format(import_line=import_line) + tail.format(args=args))
    log = tmp_path / "launch.log"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, str(script)], stdin=stdin, stdout=out, stderr=subprocess.STDOUT, env=env
        )
    try:
        yield proc, log
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)


def _body(address: tuple[str, int] | str, role: Role = Role.RESPONDER) -> str:
    return fcgi_request(address, role=role, timeout=30).body.decode()


def _terminate(proc: subprocess.Popen[bytes]) -> int:
    proc.send_signal(signal.SIGTERM)
    return proc.wait(60)


def test_threaded_script_serves_with_flup_arguments_and_returns_false_on_term(tmp_path: Path) -> None:
    """flup.server.fcgi form: bindAddress tuple, environ merged into every request, minSpare/maxThreads."""
    port = free_port()
    args = (
        f'environ={{"SITE": "blog"}}, bindAddress=("127.0.0.1", {port}), minSpare=2, maxSpare=4, maxThreads=8'
    )
    with run_script(tmp_path, THREADED, ONCE, args) as (proc, log):
        wait_for_port(port, proc=proc, timeout=60)
        assert _body(("127.0.0.1", port)) == (
            "SITE=blog FCGI_ROLE=RESPONDER wsgi.multithread=True wsgi.multiprocess=False"
        )
        values = fcgi_get_values(("127.0.0.1", port))
        assert values["FCGI_MAX_REQS"] == "8", "maxThreads bounds the requests in flight"
        assert values["FCGI_MPXS_CONNS"] == "0", "multiplexed=False by default, as in flup"
        assert _terminate(proc) == 0
    assert "run() -> False" in log.read_text()


def test_threaded_sighup_returns_true_and_the_restart_loop_serves_again(tmp_path: Path) -> None:
    """S-A1 listener kept by the script's loop: run() returns True on HUP, the same process serves again."""
    port = free_port()
    with run_script(tmp_path, THREADED, LOOP, f'bindAddress=("127.0.0.1", {port})') as (proc, log):
        wait_for_port(port, proc=proc, timeout=60)
        before = fcgi_request(("127.0.0.1", port)).header("X-Pid")
        proc.send_signal(signal.SIGHUP)
        assert wait_for(lambda: "restarting" in log.read_text(), timeout=60), log.read_text()
        wait_for_port(port, proc=proc, timeout=60)
        assert fcgi_request(("127.0.0.1", port)).header("X-Pid") == before == str(proc.pid)
        assert _terminate(proc) == 0
    assert log.read_text().rstrip().endswith("done")


def test_fork_script_serves_from_single_threaded_children(tmp_path: Path) -> None:
    """flup.server.fcgi_fork form: prefork, maxChildren, children of the script's process, wsgi flags."""
    port = free_port()
    args = f'environ={{"SITE": "shop"}}, bindAddress=("127.0.0.1", {port}), maxChildren=3, maxRequests=50'
    with run_script(tmp_path, FORK, ONCE, args) as (proc, log):
        wait_for_port(port, proc=proc, timeout=60)
        response = fcgi_request(("127.0.0.1", port))
        assert response.body == b"SITE=shop FCGI_ROLE=RESPONDER wsgi.multithread=False wsgi.multiprocess=True"
        assert response.header("X-Pid") != str(proc.pid), "a child serves, not the master"
        assert fcgi_get_values(("127.0.0.1", port))["FCGI_MAX_CONNS"] == "3", "maxChildren x 1 thread"
        proc.send_signal(signal.SIGHUP)  # a new generation; run() keeps serving
        served_by_new = wait_for(
            lambda: fcgi_request(("127.0.0.1", port)).header("X-Pid") != response.header("X-Pid"), timeout=60
        )
        assert served_by_new and proc.poll() is None
        assert _terminate(proc) == 0
    assert "run() -> False" in log.read_text()


@pytest.mark.parametrize("import_line", [THREADED, FORK], ids=["threaded", "fork"])
def test_bind_address_none_serves_the_socket_on_fd0(tmp_path: Path, import_line: str) -> None:
    """S-A2: flup's bindAddress=None: the spawning web server passed the listening socket as fd 0."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    port = listener.getsockname()[1]
    try:
        with run_script(tmp_path, import_line, ONCE, "", stdin=listener.fileno()) as (proc, _):
            listener.close()  # only the child holds it now: an answer proves the child serves fd 0
            assert wait_for(lambda: _answers(port), timeout=60)
            assert _body(("127.0.0.1", port)).startswith("SITE=None FCGI_ROLE=RESPONDER")
            assert _terminate(proc) == 0
    finally:
        listener.close()


def _answers(port: int) -> bool:
    try:
        return fcgi_request(("127.0.0.1", port), timeout=2).status == 200
    except Exception:
        return False


def test_unix_socket_path_with_umask_sets_the_socket_mode(tmp_path: Path) -> None:
    """flup applied umask around bind() only: the socket file is 0777 & ~umask."""
    path = tmp_path / "app.sock"
    with run_script(tmp_path, THREADED, ONCE, f"bindAddress={str(path)!r}, umask=0o077") as (proc, _):
        assert wait_for(path.exists, timeout=60)
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o700
        assert _body(str(path)).startswith("SITE=None")
        assert _terminate(proc) == 0
    assert not path.exists(), "our socket file is removed on exit"


@pytest.mark.parametrize("import_line", [THREADED, FORK], ids=["threaded", "fork"])
def test_roles_refuse_others_with_unknown_role(tmp_path: Path, import_line: str) -> None:
    """S-G4: roles=(FCGI_RESPONDER,) (flup's default) answers an AUTHORIZER with END_REQUEST UNKNOWN_ROLE;
    listing FCGI_AUTHORIZER serves it."""
    port, port2 = free_port(), free_port()
    with run_script(tmp_path, import_line, ONCE, f'bindAddress=("127.0.0.1", {port})') as (proc, _):
        wait_for_port(port, proc=proc, timeout=60)
        refused = fcgi_request(("127.0.0.1", port), role=Role.AUTHORIZER)
        assert refused.protocol_status is ProtocolStatus.UNKNOWN_ROLE and refused.body == b""
        assert _body(("127.0.0.1", port)).startswith("SITE=None FCGI_ROLE=RESPONDER"), "still serving"
        assert _terminate(proc) == 0
    args = f'bindAddress=("127.0.0.1", {port2}), roles=(FCGI_RESPONDER, FCGI_AUTHORIZER)'
    with run_script(tmp_path, import_line, ONCE, args) as (proc, _):
        wait_for_port(port2, proc=proc, timeout=60)
        assert "FCGI_ROLE=AUTHORIZER" in _body(("127.0.0.1", port2), Role.AUTHORIZER)
        assert _terminate(proc) == 0


def test_constants_and_signatures_match_flup() -> None:
    assert (flup.FCGI_RESPONDER, flup.FCGI_AUTHORIZER, flup.FCGI_FILTER) == (1, 2, 3)
    assert flup_fork.FCGI_LISTENSOCK_FILENO == 0
    server = flup.WSGIServer(lambda e, s: [], bindAddress=("127.0.0.1", 9), multithreaded=False)
    assert (server.config.method, server.config.minspare, server.config.maxspare) == ("threaded", 1, 5)
    fork = flup_fork.WSGIServer(lambda e, s: [], bindAddress="/tmp/x.sock", debug=True)
    config = fork.config
    assert (config.method, config.effective_maxchildren, config.maxrequests, config.threads) == (
        "prefork",
        50,
        0,
        1,
    )
    assert config.socket == "/tmp/x.sock" and config.debug is True
    # flup capped the spares at the maximum instead of refusing them.
    one = flup.WSGIServer(lambda e, s: [], bindAddress=("127.0.0.1", 9), maxThreads=1).config
    assert (one.minspare, one.maxspare, one.effective_maxchildren) == (1, 1, 1)
    two = flup_fork.WSGIServer(lambda e, s: [], bindAddress="/tmp/x.sock", maxChildren=2, minSpare=4).config
    assert (two.minspare, two.maxspare, two.effective_maxchildren) == (2, 2, 2)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"forceCGI": True}, "forceCGI=True is not supported"),
        ({"roles": (7,)}, "roles must be FCGI_RESPONDER"),
        ({"roles": ()}, "at least one role"),
        ({"bindAddress": ("127.0.0.1",)}, "bindAddress must be"),
        ({"bindAddress": ("127.0.0.1", 1), "maxSpare": 0}, "maxspare"),
    ],
)
def test_bad_arguments_raise_config_error(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        flup.WSGIServer(lambda e, s: [], **kwargs)  # type: ignore[arg-type]


def test_bind_address_none_without_a_socket_on_fd0_says_why(tmp_path: Path) -> None:
    """flup fell back to CGI when fd 0 was no socket; the shim refuses, naming the fix."""
    with open(os.devnull, "rb") as devnull:
        done = subprocess.run(
            [sys.executable, "-c", f"{THREADED}\nWSGIServer(lambda e, s: []).run()"],
            stdin=devnull,
            capture_output=True,
            text=True,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            timeout=30,
        )
    assert done.returncode != 0
    assert "fd 0 is not a listening socket" in done.stderr and "give bindAddress" in done.stderr


def test_multiplexed_is_advertised_when_asked(tmp_path: Path) -> None:
    """S-E2: multiplexed=True (threaded) answers FCGI_MPXS_CONNS=1; flup's default False answers 0."""
    port = free_port()
    args = f'bindAddress=("127.0.0.1", {port}), multiplexed=True'
    with run_script(tmp_path, THREADED, ONCE, args) as (proc, _):
        wait_for_port(port, proc=proc, timeout=60)
        assert fcgi_get_values(("127.0.0.1", port))["FCGI_MPXS_CONNS"] == "1"
        assert _terminate(proc) == 0


def test_address_in_use_exits_with_status_4(tmp_path: Path) -> None:
    """flup raised socket.error; the shim logs one line and ends the script with the server's exit status."""
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    try:
        port = taken.getsockname()[1]
        with run_script(tmp_path, THREADED, ONCE, f'bindAddress=("127.0.0.1", {port})') as (proc, log):
            assert proc.wait(30) == 4
        assert "cannot listen" in log.read_text() and "run() ->" not in log.read_text()
    finally:
        taken.close()
