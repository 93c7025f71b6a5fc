"""``python -m fcgiserve.client`` (the ``fcgiserve-client`` script) as a user runs it, against a real server.

Exit statuses (client.py docstring): 0 success, 1 error status with --status or non-zero appStatus,
2 usage error, 3 connection or protocol failure.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest

from fcgiserve import Server
from tests.helpers import ROOT, free_port


def echo(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    """Answers with what it got; /missing is a 404, and /warn writes to wsgi.errors (FastCGI STDERR)."""
    body = environ["wsgi.input"].read()
    path = environ["PATH_INFO"]
    if path == "/warn":
        environ["wsgi.errors"].write("careful\n")
    status = "404 Not Found" if path == "/missing" else "200 OK"
    start_response(status, [("Content-Type", "application/json"), ("X-Seen", "a"), ("X-Seen", "b")])
    seen = {k: environ.get(k) for k in ("REQUEST_METHOD", "QUERY_STRING", "HTTP_X_TOKEN", "SERVER_NAME")}
    return [json.dumps({"path": path, "body": body.decode("latin-1"), **seen}).encode()]


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """One TCP and one unix-socket server for the module, as addresses the CLI accepts."""
    sock = tmp_path_factory.mktemp("cli") / "app.sock"
    tcp = Server(echo, host="127.0.0.1", port=0).start()
    unix = Server(echo, socket=str(sock)).start()
    try:
        host, port = tcp.addresses[0][:2]
        yield {"tcp": f"{host}:{port}", "unix": str(sock)}
    finally:
        tcp.stop()
        unix.stop()


def cli(*args: str, stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "fcgiserve.client", *args],
        input=stdin,
        capture_output=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        timeout=60,
        check=False,
    )


def test_get_prints_the_body_and_exits_0(servers: dict[str, str]) -> None:
    done = cli(servers["tcp"], "/hello?x=1", "-H", "X-Token: t1", "-p", "SERVER_NAME=example.org")
    assert done.returncode == 0, done.stderr
    got = json.loads(done.stdout)
    assert got["path"] == "/hello" and got["QUERY_STRING"] == "x=1" and got["REQUEST_METHOD"] == "GET"
    assert got["HTTP_X_TOKEN"] == "t1" and got["SERVER_NAME"] == "example.org"


def test_include_prints_status_and_repeated_headers(servers: dict[str, str]) -> None:
    done = cli(servers["tcp"], "/", "-i")
    head, _, body = done.stdout.partition(b"\r\n\r\n")
    assert head.split(b"\r\n")[0] == b"Status: 200 OK"
    assert b"X-Seen: a\r\nX-Seen: b" in head, "repeated header names stay separate and in order"
    assert json.loads(body)["path"] == "/"


def test_status_only_mode_and_its_exit_codes(servers: dict[str, str]) -> None:
    ok = cli(servers["tcp"], "/", "--status")
    assert (ok.returncode, ok.stdout) == (0, b"200 OK\n")
    missing = cli(servers["tcp"], "/missing", "--status")
    assert (missing.returncode, missing.stdout) == (1, b"404 Not Found\n")
    body_mode = cli(servers["tcp"], "/missing")
    assert body_mode.returncode == 0, "without --status an HTTP error status is still a completed request"
    assert json.loads(body_mode.stdout)["path"] == "/missing"


def test_connection_failure_exits_3_and_usage_errors_exit_2(servers: dict[str, str], tmp_path: Path) -> None:
    refused = cli(f"127.0.0.1:{free_port()}", "/")
    assert refused.returncode == 3 and b"cannot connect" in refused.stderr
    no_socket = cli(str(tmp_path / "nothing.sock"), "/")
    assert no_socket.returncode == 3
    assert cli("not-an-address", "/").returncode == 2
    assert cli(servers["tcp"], "/", "-p", "NOEQUALS").returncode == 2
    assert cli(servers["tcp"], "/", "-H", "no colon").returncode == 2
    assert cli(servers["tcp"], "/", "--data", f"@{tmp_path / 'absent'}").returncode == 2
    assert cli(servers["tcp"], "--timeout", "soon").returncode == 2  # argparse's own usage error


def test_get_values_prints_name_value_lines(servers: dict[str, str]) -> None:
    done = cli(servers["tcp"], "--get-values")
    assert done.returncode == 0
    lines = dict(line.split("=", 1) for line in done.stdout.decode().splitlines())
    assert set(lines) == {"FCGI_MAX_CONNS", "FCGI_MAX_REQS", "FCGI_MPXS_CONNS"}
    assert all(value.isdigit() for value in lines.values())


def test_body_from_file_stdin_and_text(servers: dict[str, str], tmp_path: Path) -> None:
    upload = tmp_path / "upload.bin"
    upload.write_bytes(bytes(range(256)) * 1024)  # 256 KiB, every byte value
    from_file = json.loads(cli(servers["tcp"], "/up", "--data", f"@{upload}").stdout)
    assert from_file["REQUEST_METHOD"] == "POST"
    assert from_file["body"].encode("latin-1") == upload.read_bytes()
    from_stdin = json.loads(cli(servers["tcp"], "/up", "-d", "-", stdin=b"piped body").stdout)
    assert from_stdin["body"] == "piped body"
    put = json.loads(cli(servers["tcp"], "/up", "-X", "PUT", "-d", "inline").stdout)
    assert (put["REQUEST_METHOD"], put["body"]) == ("PUT", "inline")


def test_unix_socket_address(servers: dict[str, str]) -> None:
    done = cli(servers["unix"], "/via-unix", "--status")
    assert (done.returncode, done.stdout) == (0, b"200 OK\n")
    assert json.loads(cli(servers["unix"], "/via-unix").stdout)["path"] == "/via-unix"


def test_application_stderr_goes_to_stderr(servers: dict[str, str]) -> None:
    done = cli(servers["tcp"], "/warn")
    assert done.returncode == 0 and b"careful" in done.stderr and b"careful" not in done.stdout
