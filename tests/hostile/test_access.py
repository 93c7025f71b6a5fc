"""Who may connect, and who may see debug output, against live servers (checklist S-A3).

Allow-lists for IPv4 and IPv6 (--allow-from, FCGI_WEB_SERVER_ADDRS), unix socket modes and stale socket
files, the warning for an exposed listener, and --debug tracebacks kept from untrusted peers.
"""

from __future__ import annotations

import os
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager
from pathlib import Path

import pytest

from fcgiserve.client import fcgi_request
from fcgiserve.limits import debug_allowed, is_trusted_peer, remote_addr_is_loopback
from tests.helpers import ROOT, Server, free_port, run_fcgiserve, wait_for
from tests.hostile.hostile_app import SECRET
from tests.hostile.peer import APP, request

MARKER = SECRET.encode()


def _refused_at_once(address: tuple[str, int] | str, family: int = socket.AF_INET) -> bool:
    """Connect, send a request: the server closes without a byte of answer, at once."""
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.settimeout(5)
        sock.connect(address)
        started = time.monotonic()
        try:
            sock.sendall(request(1))
            data = sock.recv(65536)
        except OSError:
            data = b""
        return data == b"" and time.monotonic() - started < 2.0


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as sock:
            sock.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.parametrize(
    ("host", "allow", "allowed"),
    [
        ("127.0.0.1", "127.0.0.0/8", True),
        ("127.0.0.1", "10.231.0.0/24,127.0.0.1", True),
        ("127.0.0.1", "10.231.0.0/24", False),
        ("::1", "::1/128", True),
        ("::1", "fd00::/8", False),
        ("::1", "127.0.0.0/8", False),
    ],
)
def test_s_a3_allow_from_cidrs_live(tmp_path: Path, host: str, allow: str, allowed: bool) -> None:
    if ":" in host and not _ipv6_loopback():
        pytest.skip("no IPv6 loopback (::1) in this environment")
    port = free_port()
    args = [APP, "--host", host, "--port", str(port), "--allow-from", allow]
    with run_fcgiserve(args, tmp_path, port=port, wait=False) as server:
        assert wait_for(lambda: "serving on" in server.log(), timeout=15), server.log()
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        if allowed:
            assert fcgi_request((host, port), path="/", timeout=10).status == 200
        else:
            assert _refused_at_once((host, port), family)
            assert wait_for(lambda: "refused connection from" in server.log(), timeout=5)
            refused = [line for line in server.log().splitlines() if "refused connection from" in line]
            assert len(refused) == 1, refused
        assert "no --allow-from list" not in server.log()


@pytest.mark.parametrize(("addrs", "allowed"), [("127.0.0.1", True), ("10.231.0.9,10.231.0.10", False)])
def test_s_a3_fcgi_web_server_addrs_live(tmp_path: Path, addrs: str, allowed: bool) -> None:
    with run_fcgiserve([APP], tmp_path, env={"FCGI_WEB_SERVER_ADDRS": addrs}) as server:
        if allowed:
            assert fcgi_request(("127.0.0.1", server.port), timeout=10).status == 200
        else:
            assert _refused_at_once(("127.0.0.1", server.port))


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A directory with a short path: sun_path holds 107 bytes, pytest's tmp paths can be longer."""
    path = Path(f"/tmp/fcgih-{os.getpid()}-{time.monotonic_ns()}")
    path.mkdir(mode=0o700)
    try:
        yield path
    finally:
        for child in path.iterdir():
            child.unlink()
        path.rmdir()


def _start_on_socket(
    tmp_path: Path, sock_path: Path, *args: str, env: dict[str, str] | None = None
) -> AbstractContextManager[Server]:
    return run_fcgiserve([APP, "--socket", str(sock_path), *args], tmp_path, wait=False, env=env)


def test_s_a3_unix_peer_refused_when_fcgi_web_server_addrs_is_set(tmp_path: Path, short_dir: Path) -> None:
    sock_path = short_dir / "s"
    with _start_on_socket(tmp_path, sock_path, env={"FCGI_WEB_SERVER_ADDRS": "127.0.0.1"}) as server:
        assert wait_for(lambda: "serving on" in server.log(), timeout=15), server.log()  # bound and listening
        assert _refused_at_once(str(sock_path), socket.AF_UNIX)


@pytest.mark.parametrize(("mode_args", "expected"), [((), 0o660), (("--socket-mode", "0600"), 0o600)])
def test_unix_socket_created_with_the_requested_mode_even_under_umask_0(
    tmp_path: Path, short_dir: Path, mode_args: tuple[str, ...], expected: int
) -> None:
    sock_path = short_dir / "s"
    with _start_on_socket(tmp_path, sock_path, *mode_args, "--umask", "000") as server:
        assert wait_for(lambda: "serving on" in server.log(), timeout=15), server.log()  # bound and listening
        mode = stat.S_IMODE(os.stat(sock_path).st_mode)
        assert mode == expected and not mode & 0o002, oct(mode)
        assert fcgi_request(str(sock_path), timeout=10).status == 200


def test_stale_unix_socket_file_is_replaced(tmp_path: Path, short_dir: Path) -> None:
    sock_path = short_dir / "s"
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(sock_path))
    stale.close()  # the file stays, nobody listens: what a killed server leaves behind
    with _start_on_socket(tmp_path, sock_path) as server:
        assert wait_for(lambda: "serving on" in server.log(), timeout=15), server.log()
        assert fcgi_request(str(sock_path), timeout=10).status == 200


@pytest.mark.parametrize("kind", ["regular file", "symlink to a file", "directory"])
def test_a_path_that_is_not_a_socket_is_never_replaced(tmp_path: Path, short_dir: Path, kind: str) -> None:
    sock_path = short_dir / "s"
    target = short_dir / "precious"
    target.write_text("keep me")
    if kind == "regular file":
        sock_path.write_text("keep me")
    elif kind == "symlink to a file":
        sock_path.symlink_to(target)
    else:
        sock_path.mkdir()
    with _start_on_socket(tmp_path, sock_path) as server:
        assert server.proc.wait(20) == 4, server.log()  # EXIT_STARTUP
    assert target.read_text() == "keep me"
    if kind == "directory":
        assert sock_path.is_dir()
        sock_path.rmdir()
    else:
        assert sock_path.read_text() == "keep me"


def _start_in_private_netns(tmp_path: Path, *args: str) -> str:
    """Run the server in a network namespace of its own (unshare -n: only a loopback, down), so that
    binding 0.0.0.0 exposes nothing; return its log once it serves."""
    log_path = tmp_path / "exposed.log"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}
    argv = ["unshare", "-n", sys.executable, "-m", "fcgiserve", APP, *args]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(argv, cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        if not wait_for(lambda: "serving on" in log_path.read_text() or proc.poll() is not None, timeout=15):
            pytest.fail(f"server did not start: {log_path.read_text()}")
        text = log_path.read_text()
        if proc.poll() is not None and "Operation not permitted" in text:
            pytest.skip(f"unshare -n is not permitted here: {text.strip().splitlines()[-1]}")
        return text
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)


def test_loud_warning_when_binding_a_non_loopback_address_without_allow_list(tmp_path: Path) -> None:
    text = _start_in_private_netns(tmp_path, "--host", "0.0.0.0", "--port", "9000")
    warnings = [line for line in text.splitlines() if "no --allow-from list" in line]
    assert len(warnings) == 1 and "WARNING" in warnings[0] and "0.0.0.0:9000" in warnings[0], text


def test_no_warning_with_an_allow_list_or_on_loopback(tmp_path: Path) -> None:
    text = _start_in_private_netns(
        tmp_path, "--host", "0.0.0.0", "--port", "9000", "--allow-from", "10.0.0.1"
    )
    assert "no --allow-from list" not in text
    text = _start_in_private_netns(tmp_path, "--host", "127.0.0.1", "--port", "9000")
    assert "no --allow-from list" not in text


@pytest.mark.parametrize("method", ["threaded", "prefork"])
def test_debug_tracebacks_only_for_a_loopback_client_through_a_trusted_peer(
    tmp_path: Path, method: str
) -> None:
    extra = ["--method", method] + (
        ["--maxchildren", "2", "--minspare", "1", "--maxspare", "2"] if method == "prefork" else []
    )
    with run_fcgiserve([APP, "--debug", *extra], tmp_path) as server:
        address = ("127.0.0.1", server.port)
        local = fcgi_request(address, {"REMOTE_ADDR": "127.0.0.1"}, path="/raise/call", timeout=10)
        assert local.status == 500 and MARKER in local.body
        mapped = fcgi_request(address, {"REMOTE_ADDR": "::ffff:127.0.0.1"}, path="/raise/call", timeout=10)
        assert MARKER in mapped.body
        for remote in ("203.0.113.9", "2001:db8::1", "", "not-an-address", "127.0.0.1, 203.0.113.9"):
            response = fcgi_request(address, {"REMOTE_ADDR": remote}, path="/raise/call", timeout=10)
            assert response.status == 500 and MARKER not in response.raw, remote
            assert response.body == b"Internal Server Error\n"


def test_debug_trust_rules() -> None:
    """The parts a loopback-only test cannot reach: a non-loopback FastCGI peer."""
    assert is_trusted_peer(("127.0.0.1", 5000), allow_list_active=False)
    assert is_trusted_peer(("::1", 5000, 0, 0), allow_list_active=False)
    assert is_trusted_peer("", allow_list_active=False)  # unix socket
    assert not is_trusted_peer(("10.231.0.1", 5000), allow_list_active=False)
    assert not is_trusted_peer(("2001:db8::1", 5000, 0, 0), allow_list_active=False)
    assert is_trusted_peer(("10.231.0.1", 5000), allow_list_active=True)
    loopback = {"REMOTE_ADDR": "127.0.0.1"}  # params as ParamsComplete carries them (latin-1 text)
    assert remote_addr_is_loopback(loopback) and not remote_addr_is_loopback({})
    assert remote_addr_is_loopback({"REMOTE_ADDR": "::ffff:127.0.0.1"})
    assert debug_allowed(True, loopback) and not debug_allowed(False, loopback)
    assert not debug_allowed(True, {"REMOTE_ADDR": "\xff\xfe"})
    assert not debug_allowed(True, {"REMOTE_ADDR": "10.0.0.1"})
