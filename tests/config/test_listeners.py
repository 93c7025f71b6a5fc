"""fcgiserve.listeners: real sockets on loopback and in temporary directories, real child processes."""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from fcgiserve.config import Config, ConfigError
from fcgiserve.listeners import (
    LISTEN_FDS_ENV,
    OWNED_FDS_ENV,
    AllowList,
    Listener,
    ListenerError,
    export_for_reexec,
    is_loopback_address,
    is_loopback_bind,
    open_listeners,
    set_nodelay,
)

ROOT = Path(__file__).resolve().parents[2]
CHILD_TIMEOUT = 30


@pytest.fixture
def opened() -> Iterator[list[Listener]]:
    """Collects listeners a test opens and closes them (unlinking unix sockets) afterwards."""
    listeners: list[Listener] = []
    yield listeners
    for listener in listeners:
        listener.close(unlink=True)


def open_one(config: Config, opened: list[Listener], environ: dict[str, str] | None = None) -> Listener:
    found = open_listeners(config, {} if environ is None else environ)
    opened.extend(found)
    assert len(found) == 1
    return found[0]


def run_child(
    code: str,
    *,
    stdin: int | None = None,
    pass_fds: tuple[int, ...] = (),
    env: dict[str, str] | None = None,
    args: tuple[str, ...] = (),
) -> str:
    done = subprocess.run(
        [sys.executable, "-c", code, *args], cwd=ROOT, stdin=stdin, pass_fds=pass_fds, capture_output=True,
        text=True, timeout=CHILD_TIMEOUT, env={**os.environ, **(env or {})}, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return done.stdout


def listening_tcp() -> socket.socket:
    return socket.create_server(("127.0.0.1", 0))


# --- TCP ----------------------------------------------------------------------------------------------------


def test_tcp_listener_accepts_on_loopback(opened: list[Listener]) -> None:
    listener = open_one(Config.from_mapping({"port": 0}), opened)
    host, port = listener.sock.getsockname()
    assert listener.description == f"tcp 127.0.0.1:{port}" and host == "127.0.0.1"
    assert listener.sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR)
    assert not listener.sock.get_inheritable()
    with socket.create_connection((host, port), timeout=5) as client:
        conn, _ = listener.sock.accept()
        with conn:
            set_nodelay(conn)
            assert conn.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
            client.sendall(b"ping")
            assert conn.recv(4) == b"ping"
    assert is_loopback_bind(listener)


def test_tcp_ipv6_loopback(opened: list[Listener]) -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6 support")
    try:
        socket.create_server(("::1", 0), family=socket.AF_INET6).close()
    except OSError:
        pytest.skip("::1 is not configured on this machine")
    listener = open_one(Config.from_mapping({"host": "::1", "port": 0}), opened)
    port = listener.sock.getsockname()[1]
    assert listener.description == f"tcp [::1]:{port}" and is_loopback_bind(listener)


def test_tcp_port_in_use_is_a_clear_error() -> None:
    with listening_tcp() as taken:
        port = taken.getsockname()[1]
        with pytest.raises(ListenerError, match=rf"^cannot listen on tcp 127\.0\.0\.1:{port}: "):
            open_listeners(Config.from_mapping({"port": port}), {})


def test_unresolvable_host_is_a_clear_error() -> None:
    with pytest.raises(ListenerError, match=r"cannot listen on tcp no-such-host\.invalid:0"):
        open_listeners(Config.from_mapping({"host": "no-such-host.invalid", "port": 0}), {})


@pytest.mark.parametrize(
    ("host", "expected"),
    [("127.0.0.1", True), ("127.1.2.3", True), ("::1", True), ("::ffff:127.0.0.1", True), ("0.0.0.0", False),
     ("::", False), ("10.1.2.3", False), ("fe80::1%eth0", False), ("not-an-ip", False)],
)  # fmt: skip
def test_is_loopback_address(host: str, expected: bool) -> None:
    assert is_loopback_address(host) is expected


# --- unix sockets -------------------------------------------------------------------------------------------


def test_unix_socket_gets_its_mode_and_the_umask_is_restored(tmp_path: Path, opened: list[Listener]) -> None:
    path = tmp_path / "app.sock"
    umask = os.umask(0o022)
    try:
        listener = open_one(Config(socket=str(path)), opened)
        assert os.umask(0o022) == 0o022
    finally:
        os.umask(umask)
    st = os.stat(path)
    assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o660
    assert listener.description == f"unix {path}" and is_loopback_bind(listener)
    with socket.socket(socket.AF_UNIX) as client:
        client.settimeout(5)
        client.connect(str(path))
        conn, _ = listener.sock.accept()
        conn.close()


@pytest.mark.parametrize("mode", [0o600, 0o666])
def test_unix_socket_explicit_modes(tmp_path: Path, opened: list[Listener], mode: int) -> None:
    path = tmp_path / "app.sock"
    open_one(Config(socket=str(path), socket_mode=mode), opened)
    assert stat.S_IMODE(os.stat(path).st_mode) == mode


def test_stale_unix_socket_is_replaced(tmp_path: Path, opened: list[Listener]) -> None:
    path = tmp_path / "app.sock"
    dead = socket.socket(socket.AF_UNIX)
    dead.bind(str(path))
    dead.close()  # the file stays behind, nobody listens: what a killed server leaves
    open_one(Config(socket=str(path)), opened)
    assert stat.S_ISSOCK(os.stat(path).st_mode)


def test_live_unix_socket_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "app.sock"
    with socket.socket(socket.AF_UNIX) as live:
        live.bind(str(path))
        live.listen()
        with pytest.raises(ListenerError, match="another server is accepting connections on it"):
            open_listeners(Config(socket=str(path)), {})
        assert path.exists()


def test_a_file_that_is_not_a_socket_is_never_unlinked(tmp_path: Path) -> None:
    path = tmp_path / "precious.txt"
    path.write_text("data")
    with pytest.raises(ListenerError, match="exists and is not a socket"):
        open_listeners(Config(socket=str(path)), {})
    assert path.read_text() == "data"


def test_unix_path_too_long(tmp_path: Path) -> None:
    path = tmp_path / ("x" * 120)
    with pytest.raises(ListenerError, match="cannot listen on unix "):
        open_listeners(Config(socket=str(path)), {})


def test_close_unlinks_only_our_own_socket_file(tmp_path: Path) -> None:
    path = tmp_path / "app.sock"
    first = open_listeners(Config(socket=str(path)), {})[0]
    first.close(unlink=False)
    assert path.exists()
    second = open_listeners(Config(socket=str(path)), {})[0]  # the leftover is stale now, and replaced
    os.unlink(path)
    with socket.socket(socket.AF_UNIX) as newer:  # another server took the path meanwhile
        newer.bind(str(path))
        second.close(unlink=True)
        assert path.exists()
    third = open_listeners(Config(socket=str(path)), {})[0]
    third.close(unlink=True)
    assert not path.exists()


def test_a_forked_child_closing_its_copy_leaves_the_socket_file(tmp_path: Path) -> None:
    path = tmp_path / "app.sock"
    listener = open_listeners(Config(socket=str(path)), {})[0]
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child, like a prefork worker exiting
        listener.close(unlink=True)
        os._exit(0)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0 and path.exists()
    listener.close(unlink=True)
    assert not path.exists()


# --- inherited sockets --------------------------------------------------------------------------------------

SERVE_ONE = """
import sys
from fcgiserve.cli_args import parse_args
from fcgiserve.config import Config
from fcgiserve.listeners import open_listeners
config = parse_args(sys.argv[1:]) if sys.argv[1:] else Config(port=0)
listener = open_listeners(config)[0]
print(listener.description, flush=True)
conn, _ = listener.sock.accept()
conn.sendall(b"hi")
conn.close()
"""


def test_fd0_listening_socket_is_used_when_nothing_is_explicit() -> None:
    """S-A1/S-A2: a web server spawns us with the listening socket on fd 0 (FCGI_LISTENSOCK_FILENO)."""
    with listening_tcp() as server, socket.socket() as client:
        client.settimeout(CHILD_TIMEOUT)
        client.connect(server.getsockname())  # queued in the backlog until the child accepts it
        out = run_child(SERVE_ONE, stdin=server.fileno())
        assert (
            out.strip()
            == f"tcp 127.0.0.1:{server.getsockname()[1]} (inherited fd 0 (FCGI_LISTENSOCK_FILENO))"
        )
        assert client.recv(2) == b"hi"


def test_fd0_is_ignored_when_a_port_is_given() -> None:
    with listening_tcp() as server:
        code = SERVE_ONE.replace('conn, _ = listener.sock.accept()\nconn.sendall(b"hi")\nconn.close()\n', "")
        out = run_child(code, stdin=server.fileno(), args=("--port", "0"))
        assert out.startswith("tcp 127.0.0.1:") and "inherited" not in out


def test_fd0_that_is_not_a_socket_falls_back_to_tcp() -> None:
    code = SERVE_ONE.replace('conn, _ = listener.sock.accept()\nconn.sendall(b"hi")\nconn.close()\n', "")
    assert run_child(code, stdin=subprocess.DEVNULL).startswith("tcp 127.0.0.1:")


SYSTEMD_EXEC = """
import os, sys
os.dup2(int(sys.argv[1]), 3)  # systemd passes activated sockets from fd 3 on
os.environ.update(LISTEN_PID=str(os.getpid()), LISTEN_FDS="1", LISTEN_FDNAMES="fcgi")
os.execv(sys.executable, [sys.executable, "-c", sys.argv[2]])  # same pid after exec, as under systemd
"""


def test_systemd_socket_activation() -> None:
    with listening_tcp() as server, socket.socket() as client:
        client.settimeout(CHILD_TIMEOUT)
        client.connect(server.getsockname())
        code = SERVE_ONE.replace(
            "print(listener.description",
            "import os; assert 'LISTEN_FDS' not in os.environ\nprint(listener.description",
        )
        out = run_child(SYSTEMD_EXEC, pass_fds=(server.fileno(),), args=(str(server.fileno()), code))
        assert out.strip() == f"tcp 127.0.0.1:{server.getsockname()[1]} (systemd socket activation, fd 3)"
        assert client.recv(2) == b"hi"


def test_systemd_variables_for_another_pid_are_ignored_and_cleared(opened: list[Listener]) -> None:
    environ = {"LISTEN_PID": "1", "LISTEN_FDS": "1", "LISTEN_FDNAMES": "x"}
    listener = open_one(Config(port=0), opened, environ)
    assert listener.description.startswith("tcp 127.0.0.1:") and environ == {}


def test_fd_option_adopts_an_inherited_socket(opened: list[Listener]) -> None:
    with listening_tcp() as server:
        fd = os.dup(server.fileno())
        listener = open_one(Config(fd=fd), opened)
        assert listener.fileno() == fd and not listener.sock.get_inheritable()
        assert listener.description == f"tcp 127.0.0.1:{server.getsockname()[1]} (inherited fd {fd})"


def test_fd_option_refuses_what_is_not_a_listening_socket(tmp_path: Path) -> None:
    read_end, write_end = os.pipe()
    unbound = socket.socket()
    pair = socket.socketpair()
    with open(tmp_path / "f", "w") as regular, unbound, pair[0], pair[1]:
        for fd in (read_end, regular.fileno(), unbound.fileno(), pair[0].fileno(), 987):
            with pytest.raises(ListenerError, match=f"^inherited fd {fd} is not a listening socket$"):
                open_listeners(Config(fd=fd), {})
        assert os.fstat(read_end)  # the refused fd is left open, untouched
    os.close(read_end)
    os.close(write_end)


REEXEC_CHILD = """
import json, os
from fcgiserve.config import Config
from fcgiserve.listeners import LISTEN_FDS_ENV, OWNED_FDS_ENV, open_listeners
listeners = open_listeners(Config(port=1))  # the handed-over sockets win over the configuration
print(json.dumps({
    "descriptions": [l.description for l in listeners],
    "paths": [l.path for l in listeners],
    "inheritable": [l.sock.get_inheritable() for l in listeners],
    "env_left": [k for k in (LISTEN_FDS_ENV, OWNED_FDS_ENV) if k in os.environ],
}))
for listener in listeners:
    listener.close(unlink=True)
"""


def test_reexec_hand_off_keeps_the_sockets_and_ownership(tmp_path: Path) -> None:
    path = tmp_path / "app.sock"
    tcp = open_listeners(Config.from_mapping({"port": 0}), {})[0]
    unix = open_listeners(Config(socket=str(path)), {})[0]
    env = export_for_reexec([tcp, unix])
    port, tcp_fd, unix_fd = tcp.sock.getsockname()[1], tcp.fileno(), unix.fileno()
    try:
        assert env == {LISTEN_FDS_ENV: f"{tcp.fileno()},{unix.fileno()}", OWNED_FDS_ENV: str(unix.fileno())}
        assert tcp.sock.get_inheritable() and unix.sock.get_inheritable()
        report = json.loads(run_child(REEXEC_CHILD, pass_fds=(tcp.fileno(), unix.fileno()), env=env))
    finally:
        tcp.close(unlink=False)
        unix.close(unlink=False)
    assert report["descriptions"] == [
        f"tcp 127.0.0.1:{port} (inherited fd {tcp_fd})",
        f"unix {path} (inherited fd {unix_fd})",
    ]
    assert report["paths"] == [None, str(path)]
    assert report["inheritable"] == [False, False] and report["env_left"] == []
    assert not path.exists()  # the re-executed server owned the socket file and removed it at shutdown


def test_handed_over_fds_of_an_unowned_unix_socket_are_not_unlinked(tmp_path: Path) -> None:
    path = tmp_path / "web-server-owned.sock"
    with socket.socket(socket.AF_UNIX) as server:
        server.bind(str(path))
        server.listen()
        environ = {LISTEN_FDS_ENV: str(os.dup(server.fileno())), OWNED_FDS_ENV: ""}
        listener = open_listeners(Config(), environ)[0]
        assert environ == {} and listener.path is None
        listener.close(unlink=True)
        assert path.exists()


@pytest.mark.parametrize("value", ["", "three", "3;4"])
def test_malformed_hand_off_is_a_clear_error(value: str) -> None:
    with pytest.raises(ListenerError, match=LISTEN_FDS_ENV):
        open_listeners(Config(), {LISTEN_FDS_ENV: value})


# --- allow-lists (S-A3) -------------------------------------------------------------------------------------


def test_no_list_allows_everyone() -> None:
    allow = AllowList.from_config(Config(), {})
    assert not allow.active
    assert allow.allowed(("192.0.2.1", 40000)) and allow.allowed("")


@pytest.mark.parametrize(
    ("peer", "expected"),
    [(("127.0.0.1", 1), True), (("10.9.8.7", 1), True), (("11.0.0.1", 1), False),
     (("::1", 1, 0, 0), True), (("::ffff:10.1.1.1", 1, 0, 0), True), (("::ffff:11.1.1.1", 1, 0, 0), False),
     (("2001:db8::5", 1, 0, 0), True), (("2001:db9::5", 1, 0, 0), False), (("fe80::1%lo", 1, 0, 1), False),
     (("garbage", 1), False), ((), False)],
)  # fmt: skip
def test_allow_from_matches_addresses_and_networks(peer: tuple[object, ...], expected: bool) -> None:
    allow = AllowList.from_config(Config(allow_from="127.0.0.1,10.0.0.0/8,::1,2001:db8::/32"), {})  # type: ignore[arg-type]
    assert allow.active and allow.allowed(peer) is expected


def test_ipv4_mapped_entry_matches_ipv4_peers() -> None:
    allow = AllowList(["::ffff:192.0.2.0/120"])
    assert allow.allowed(("192.0.2.9", 1)) and allow.allowed(("::ffff:192.0.2.9", 1, 0, 0))
    assert not allow.allowed(("192.0.3.9", 1))


def test_web_server_addrs_combines_and_refuses_unix_peers() -> None:
    """S-A3: when FCGI_WEB_SERVER_ADDRS is set, a non-TCP connection is refused too."""
    allow = AllowList.from_config(
        Config(allow_from=("10.0.0.1",)), {"FCGI_WEB_SERVER_ADDRS": "127.0.0.1, ::1"}
    )
    assert (
        allow.allowed(("10.0.0.1", 1)) and allow.allowed(("127.0.0.1", 1)) and allow.allowed(("::1", 1, 0, 0))
    )
    assert not allow.allowed("") and not allow.allowed(b"\0abstract")


def test_allow_from_alone_keeps_unix_peers() -> None:
    """--allow-from is about addresses; on a unix socket the file mode decides who connects."""
    allow = AllowList.from_config(Config(allow_from=("10.0.0.1",)), {})
    assert allow.allowed("") and not allow.allowed(("10.0.0.2", 1))


def test_bad_web_server_addrs_is_a_config_error() -> None:
    with pytest.raises(
        ConfigError, match=r"^FCGI_WEB_SERVER_ADDRS: 'webserver' is not an IP address or network$"
    ):
        AllowList.from_config(Config(), {"FCGI_WEB_SERVER_ADDRS": "127.0.0.1,webserver"})


def test_allow_list_on_a_real_connection(opened: list[Listener]) -> None:
    listener = open_one(Config.from_mapping({"port": 0}), opened)
    with socket.create_connection(listener.sock.getsockname(), timeout=5):
        conn, peer = listener.sock.accept()
        conn.close()
    assert AllowList(["127.0.0.0/8"]).allowed(peer) and not AllowList(["::1"]).allowed(peer)
