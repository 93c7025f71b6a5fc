"""Every common web server drives fcgiserve: proxied to (nginx, Apache mod_proxy_fcgi with and without
enablereuse, lighttpd, Caddy, h2o) and spawning it with the listening socket on fd 0 (lighttpd bin-path,
spawn-fcgi, Apache mod_fcgid, h2o fastcgi.spawn; S-A2).

Each test starts the real web server in the foreground with its own config in a temp dir; the site part of
the config is the snippet of the deployment guide in docs/ (tests/webservers.py doc_snippet). Each serves the
same small application: GET, POST with a body, a 2 MiB response, repeated header names (tests/webservers.py
exercise). Every process started here is stopped by pid in a finally.
"""

from __future__ import annotations

import os
import runpy
import shutil
import signal
import socket
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest

from fcgiserve import Server
from fcgiserve.client import default_params
from fcgiserve.protocol import ClientConnection, EndRequest, Stdout
from tests.helpers import ROOT, run_nginx, streaming_echo, wait_for
from tests.webservers import (
    BIG,
    Proc,
    doc_snippet,
    established_to,
    exercise,
    free_port,
    http_request,
    kill_if_alive,
    pid_alive,
    run_apache,
    run_h2o,
    started,
    world_readable_dir,
    write_site,
)

pytestmark = pytest.mark.integration


def _need(program: str, package: str) -> str:
    path = shutil.which(program) or (
        f"/usr/sbin/{program}" if Path(f"/usr/sbin/{program}").exists() else None
    )
    if path is None:
        pytest.fail(f"{program} is not installed; scripts/test installs it (apt-get install {package})")
    return path


@pytest.fixture
def site() -> Iterator[Path]:
    with world_readable_dir("fcgiserve-ws-") as path:
        write_site(path)
        yield path


def _backend(stack: ExitStack, site: Path, port: int) -> None:
    """fcgiserve on its own (as a supervisor would run it), for the proxying web servers."""
    argv = [
        sys.executable,
        "-m",
        "fcgiserve",
        "wsapp:application",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    env = {"PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}
    stack.enter_context(started(argv, site / "fcgiserve.log", port, env=env, cwd=site))


def _spawned_server_exits(pid: int) -> None:
    """The fcgiserve a web server spawned stops with it (it got SIGTERM and drained), leaving no orphan."""
    try:
        assert wait_for(lambda: not pid_alive(pid), timeout=60), (
            f"spawned fcgiserve {pid} outlived its server"
        )
    finally:
        kill_if_alive(pid)


# --- lighttpd ------------------------------------------------------------------------------------------

LIGHTTPD_BASE = """\
server.document-root = "{site}"
server.bind = "127.0.0.1"
server.port = {port}
server.pid-file = "{site}/lighttpd.pid"
server.errorlog = "{site}/lighttpd-error.log"
server.upload-dirs = ( "{site}" )
"""


def _lighttpd(stack: ExitStack, site: Path, snippet: str, replace: dict[str, str]) -> tuple[int, Proc]:
    lighttpd = _need("lighttpd", "lighttpd")
    port = free_port()
    conf = site / "lighttpd.conf"
    conf.write_text(
        LIGHTTPD_BASE.format(site=site, port=port) + doc_snippet("deploy-lighttpd.md", snippet, replace)
    )
    proc = stack.enter_context(
        started(
            [lighttpd, "-D", "-f", str(conf)],
            site / "lighttpd.out",
            port,
            extra_logs=[site / "lighttpd-error.log"],
        )
    )
    return port, proc


def test_lighttpd_proxies_to_fcgiserve(site: Path) -> None:
    backend = free_port()
    with ExitStack() as stack:
        _backend(stack, site, backend)
        port, _ = _lighttpd(stack, site, "lighttpd-tcp", {"8080": str(backend)})
        exercise(port)


def test_lighttpd_bin_path_spawns_fcgiserve_on_fd0(site: Path) -> None:
    """S-A2: lighttpd creates the unix socket and spawns fcgiserve with it as fd 0; no address option."""
    replace = {"/run/lighttpd/mysite.sock": str(site / "mysite.sock"), "/srv/mysite": str(site)}
    with ExitStack() as stack:
        port, lighttpd = _lighttpd(stack, site, "lighttpd-spawn", replace)
        pid = int(exercise(port))
        assert pid != lighttpd.pid and os.getppid() != pid
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmdline = f.read().split(b"\0")
        assert b"--host" not in cmdline and b"--socket" not in cmdline and b"--port" not in cmdline
    _spawned_server_exits(pid)
    # The spawned server's stderr is lighttpd's: fcgiserve's start-up line says where it found its socket.
    assert "inherited fd 0 (FCGI_LISTENSOCK_FILENO)" in (site / "lighttpd.out").read_text()


def test_spawn_fcgi_behind_lighttpd(site: Path) -> None:
    """spawn-fcgi -n binds 127.0.0.1:PORT and execs fcgiserve in place with the socket on fd 0."""
    spawn_fcgi = _need("spawn-fcgi", "spawn-fcgi")
    backend = free_port()
    with ExitStack() as stack:
        spawned = stack.enter_context(
            started(
                [spawn_fcgi, "-n", "-a", "127.0.0.1", "-p", str(backend), "--", str(site / "run-fcgiserve")],
                site / "spawn-fcgi.log",
                backend,
            )
        )
        port, _ = _lighttpd(stack, site, "lighttpd-tcp", {"8080": str(backend)})
        assert int(exercise(port)) == spawned.pid, "-n: fcgiserve runs in spawn-fcgi's process"
        spawned.proc.send_signal(signal.SIGTERM)
        assert spawned.proc.wait(20) == 0, spawned.output()
    assert "inherited fd 0 (FCGI_LISTENSOCK_FILENO)" in spawned.output()


# --- Apache httpd --------------------------------------------------------------------------------------


def _apache(stack: ExitStack, site: Path, snippet: str, replace: dict[str, str], modules: list[str]) -> int:
    _need("apache2", "apache2")
    return stack.enter_context(run_apache(site, snippet, replace, modules))


@pytest.mark.parametrize("reuse", [True, False], ids=["enablereuse", "no-reuse"])
def test_apache_mod_proxy_fcgi(site: Path, reuse: bool) -> None:
    backend = free_port()
    replace = {"8080": str(backend)}
    if not reuse:
        replace[" enablereuse=on"] = ""
    with ExitStack() as stack:
        _backend(stack, site, backend)
        port = _apache(stack, site, "apache-proxy-fcgi", replace, ["proxy", "proxy_fcgi"])
        exercise(port)
        if reuse:  # Apache keeps its backend connections open for the next request
            assert established_to(backend) >= 1
        else:
            assert wait_for(lambda: established_to(backend) == 0, timeout=30), "one connection per request"


def test_apache_mod_fcgid_spawns_fcgiserve_on_fd0(site: Path) -> None:
    """S-A2: mod_fcgid spawns the wrapper with a listening unix socket on fd 0, as the Apache user."""
    ipc = site / "fcgid"
    ipc.mkdir()
    if os.geteuid() == 0:
        os.chown(ipc, 33, 33)  # www-data, who runs mod_fcgid's process manager
    replace = {"/run/mod_fcgid": str(ipc), "/srv/mysite": str(site)}
    with ExitStack() as stack:
        port = _apache(stack, site, "apache-fcgid", replace, ["fcgid"])
        pid = int(exercise(port))
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            assert b"fcgiserve" in f.read()
    _spawned_server_exits(pid)
    assert "inherited fd 0 (FCGI_LISTENSOCK_FILENO)" in (site / "apache-error.log").read_text()


# --- Caddy ---------------------------------------------------------------------------------------------

CADDY_GLOBAL = """\
{{
    admin off
    auto_https off
    storage file_system {site}/caddy-data
}}
"""


def test_caddy_fastcgi_transport(site: Path) -> None:
    caddy = _need("caddy", "caddy")
    backend, port = free_port(), free_port()
    caddyfile = site / "Caddyfile"
    replace = {"example.org": f"http://127.0.0.1:{port}", "127.0.0.1:8080": f"127.0.0.1:{backend}"}
    caddyfile.write_text(CADDY_GLOBAL.format(site=site) + doc_snippet("deploy-caddy.md", "caddy", replace))
    env = {"HOME": str(site), "XDG_DATA_HOME": str(site / "xdg-data"), "XDG_CONFIG_HOME": str(site / "xdg")}
    with ExitStack() as stack:
        _backend(stack, site, backend)
        stack.enter_context(
            started(
                [caddy, "run", "--config", str(caddyfile), "--adapter", "caddyfile"],
                site / "caddy.log",
                port,
                env=env,
            )
        )
        exercise(port)


# --- h2o -----------------------------------------------------------------------------------------------


def _h2o(stack: ExitStack, site: Path, snippet: str, replace: dict[str, str]) -> tuple[int, Proc]:
    _need("h2o", "h2o")
    port, proc = stack.enter_context(run_h2o(site, snippet, replace))
    return port, proc


def test_h2o_fastcgi_connect_over_tcp_keeps_its_connections(site: Path) -> None:
    """docs/deploy-h2o.md: with fastcgi.timeout.keepalive, h2o sets FCGI_KEEP_CONN and keeps the
    connection for the next request."""
    backend = free_port()
    with ExitStack() as stack:
        _backend(stack, site, backend)
        port, _ = _h2o(stack, site, "h2o-tcp", {"8080": str(backend)})
        exercise(port)
        assert established_to(backend) >= 1, "h2o keeps its FastCGI connection between requests"


def test_h2o_fastcgi_connect_over_a_unix_socket(site: Path) -> None:
    """h2o's workers run as nobody when it starts as root: the guide's --socket-mode lets them connect."""
    address = site / "fcgi.sock"
    app = runpy.run_path(str(site / "wsapp.py"))["application"]
    server = Server(app, socket=str(address), socket_mode=0o666, graceful_timeout=5).start()
    try:
        with ExitStack() as stack:
            port, _ = _h2o(stack, site, "h2o-unix", {"/run/mysite/fcgi.sock": str(address)})
            exercise(port)
    finally:
        server.stop(graceful=False, timeout=10)


def test_h2o_fastcgi_spawn_runs_fcgiserve_on_fd0(site: Path) -> None:
    """S-A2: h2o runs the command through /bin/sh with a listening unix socket on fd 0 (as nobody when it
    starts as root); with exec, fcgiserve is the process h2o stops when it exits."""
    replace = {"/srv/mysite/run-fcgiserve": str(site / "run-fcgiserve")}
    with ExitStack() as stack:
        port, h2o = _h2o(stack, site, "h2o-spawn", replace)
        pid = int(exercise(port))
        assert pid != h2o.pid
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmdline = f.read().split(b"\0")
        assert b"fcgiserve" in cmdline and b"--host" not in cmdline and b"--socket" not in cmdline
    _spawned_server_exits(pid)
    assert "inherited fd 0 (FCGI_LISTENSOCK_FILENO)" in h2o.output()


# --- nginx ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("keep_conn", [True, False], ids=["keep-conn", "close"])
def test_nginx(site: Path, tmp_path: Path, keep_conn: bool) -> None:
    """nginx as in docs/deploy-nginx-django.md (stock fastcgi_params; helpers.run_nginx is that config)."""
    backend = free_port()
    with ExitStack() as stack:
        _backend(stack, site, backend)
        nginx = stack.enter_context(run_nginx(tmp_path, f"127.0.0.1:{backend}", keep_conn=keep_conn))
        exercise(nginx.port)


@pytest.mark.parametrize(
    ("transport", "size"), [("unix", 4 << 20), ("tcp", 24 << 20)], ids=["unix-4MiB", "tcp-24MiB"]
)
def test_nginx_with_an_application_that_streams_its_output_while_it_reads_the_body(
    tmp_path: Path, transport: str, size: int
) -> None:
    """nginx sends no more of a request body once the response has begun (it reads the response instead).
    An application that echoes its upload as it reads it used to stall there as soon as the body outgrew
    what the socket buffers held when the response began: over a unix socket at any size beyond a few
    hundred KiB, over TCP beyond a few MiB. The server now takes the whole body before any output leaves."""
    if transport == "unix":
        address = str(tmp_path / "fcgi.sock")
        server = Server(streaming_echo, socket=address, graceful_timeout=5).start()
        upstream = f"unix:{address}"
    else:
        server = Server(streaming_echo, host="127.0.0.1", port=0, graceful_timeout=5).start()
        upstream = f"127.0.0.1:{server.addresses[0][1]}"
    try:
        with run_nginx(tmp_path, upstream, keep_conn=True) as nginx:
            body = os.urandom(size)
            for _ in range(2):  # the second one on the kept connection
                reply = http_request(nginx.port, "POST", "/echo", body)
                assert reply.status == 200
                assert reply.body == body
    finally:
        server.stop(graceful=False, timeout=10)


# --- the write pattern that truncated Caddy's large responses ------------------------------------------


def _big(environ: dict[str, object], start_response: Callable[..., object]) -> list[bytes]:
    start_response("200 OK", [("Content-Type", "application/octet-stream")])
    return [BIG]


def test_stdin_end_arriving_after_the_response_does_not_reset_it() -> None:
    """Regression (found with Caddy): a GET runs as soon as its PARAMS end; a peer that writes the empty
    STDIN record later left unread input at close(), the kernel answered RST and discarded the response
    bytes still in flight. The handler now closes lingering: FIN, drain, close."""
    server = Server(_big, host="127.0.0.1", port=0).start()
    try:
        client = ClientConnection()
        params = [(k.encode(), v.encode()) for k, v in default_params("/big").items()]
        with socket.create_connection(server.addresses[0][:2], timeout=60) as sock:
            sock.sendall(client.begin_request(1) + client.send_params(1, params))
            first = sock.recv(65536)  # the response has started: the request ran without its STDIN end
            sock.sendall(client.send_stdin(1, b""))
            time.sleep(0.5)  # the server finishes writing and closes while its bytes are still in flight
            received, ended = bytearray(), False
            for chunk in iter(lambda: sock.recv(1 << 20), b""):
                for event in client.receive_data(first + chunk if first else chunk):
                    if isinstance(event, Stdout):
                        received += event.data
                    ended = ended or isinstance(event, EndRequest)
                first = b""
        assert ended and received.endswith(BIG)
    finally:
        server.stop()
