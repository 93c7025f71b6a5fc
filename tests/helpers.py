"""Shared test helpers: free ports, real processes (fcgiserve, nginx) on loopback, /proc readings.

Everything started here is stopped by the same helper that started it, by pid.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(
    port: int, host: str = "127.0.0.1", timeout: float = 10.0, proc: subprocess.Popen[bytes] | None = None
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before listening on {port}")
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5):
            return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on {host}:{port} after {timeout}s")


def wait_for(predicate: object, timeout: float = 10.0, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return True
        time.sleep(interval)
    return bool(predicate())  # type: ignore[operator]


def children_of(pid: int) -> list[int]:
    """Direct children of pid, read from /proc."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(entry))
    return found


def process_state(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return None


def tree_rss_kib(pid: int) -> int:
    total = 0
    for p in [pid, *children_of(pid)]:
        with contextlib.suppress(OSError), open(f"/proc/{p}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
    return total


@dataclass
class Server:
    """A fcgiserve process started with the CLI, as a supervisor would start it."""

    proc: subprocess.Popen[bytes]
    port: int
    log_path: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        return self.proc.returncode


@contextlib.contextmanager
def run_fcgiserve(
    args: Sequence[str],
    tmp_path: Path,
    *,
    cwd: Path | None = None,
    port: int | None = None,
    wait: bool = True,
    env: dict[str, str] | None = None,
) -> Iterator[Server]:
    port = port or free_port()
    log_path = tmp_path / f"fcgiserve-{port}.log"
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1", **(env or {})}
    argv = [sys.executable, "-m", "fcgiserve", *args]
    if "--port" not in args and "--socket" not in args and not any(a.startswith("port=") for a in args):
        argv += ["--port", str(port)]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(argv, cwd=cwd or tmp_path, stdout=log, stderr=subprocess.STDOUT, env=full_env)
    server = Server(proc, port, log_path)
    try:
        if wait:
            try:
                wait_for_port(port, proc=proc)
            except Exception:
                raise RuntimeError(f"fcgiserve did not start: {server.log()}") from None
        yield server
    finally:
        server.stop()


NGINX_CONF = """
worker_processes 1;
{user}
pid {tmp}/nginx.pid;
error_log {tmp}/nginx-error.log info;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {tmp}/client_body;
    fastcgi_temp_path {tmp}/fastcgi_temp;
    proxy_temp_path {tmp}/proxy_temp;
    scgi_temp_path {tmp}/scgi_temp;
    uwsgi_temp_path {tmp}/uwsgi_temp;
    client_max_body_size 64m;
    upstream backend {{
        server {upstream};
        {keepalive}
    }}
    server {{
        listen 127.0.0.1:{port};
        {extra}
        location / {{
            include {fastcgi_params};
            fastcgi_pass backend;
            {keep_conn}
            {location_extra}
        }}
    }}
}}
"""


@dataclass
class Nginx:
    proc: subprocess.Popen[bytes]
    port: int
    tmp: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def error_log(self) -> str:
        path = self.tmp / "nginx-error.log"
        return path.read_text(errors="replace") if path.exists() else ""


def nginx_available() -> bool:
    return Path(NGINX).exists()


@contextlib.contextmanager
def run_nginx(
    tmp_path: Path,
    upstream: str,
    *,
    keep_conn: bool = False,
    extra: str = "",
    location_extra: str = "",
    fastcgi_params: str = "/etc/nginx/fastcgi_params",
) -> Iterator[Nginx]:
    if not nginx_available():
        pytest.fail("nginx is not installed; .ci/run installs it (apt-get install nginx-light)")
    tmp = tmp_path / f"nginx-{free_port()}"
    tmp.mkdir()
    port = free_port()
    conf = NGINX_CONF.format(
        tmp=tmp,
        port=port,
        upstream=upstream,
        extra=extra,
        location_extra=location_extra,
        keepalive="keepalive 16;" if keep_conn else "",
        keep_conn="fastcgi_keep_conn on;" if keep_conn else "",
        fastcgi_params=fastcgi_params,
        # As root, nginx's workers would run as "nobody" and could not read the test's private temp dirs.
        user="user root;" if os.geteuid() == 0 else "",
    )
    (tmp / "nginx.conf").write_text(conf)
    proc = subprocess.Popen(
        [NGINX, "-p", str(tmp), "-c", str(tmp / "nginx.conf"), "-g", "daemon off;"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        wait_for_port(port, proc=proc)
        yield Nginx(proc, port, tmp)
    finally:
        stop_process(proc)


def stop_process(proc: subprocess.Popen[bytes]) -> None:
    """TERM a server this test started (by its pid), KILL it if it lingers, release its pipes."""
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)
    if proc.stderr is not None:
        proc.stderr.close()


def http_get(
    url: str, *, data: bytes | None = None, headers: dict[str, str] | None = None, timeout: float = 10.0
) -> tuple[int, dict[str, str], bytes]:
    """(status, headers, body) of one HTTP request; error statuses are returned, not raised."""
    request = urllib.request.Request(url, data=data, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, dict(response.headers.items()), response.read()
    except urllib.error.HTTPError as exc:
        body = exc.read()
        exc.close()
        return exc.code, dict(exc.headers.items()), body


def streaming_echo(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterator[bytes]:
    """A WSGI app that echoes its body as it reads it, 64 KiB at a time: its output starts long before the
    body is read (what nginx stalls on unless the server takes the whole body first; docs/wsgi.md)."""
    start_response("200 OK", [("Content-Type", "application/octet-stream")])
    stream = environ["wsgi.input"]
    while chunk := stream.read(65536):
        yield chunk
