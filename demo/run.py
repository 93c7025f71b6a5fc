#!/usr/bin/env python3
"""Run the demo: fcgiserve serving demo/app.py, and nginx in front of it with a temporary configuration.

    python3 demo/run.py [--port 8000] [--method threaded|prefork] [--check]

Prints the URL to open; Ctrl-C stops both. ``--check`` fetches the page once through nginx and exits
(0 when it was served by fcgiserve), which is what the test suite and CI run; nginx then listens on a free
port unless ``--port`` is given.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent

NGINX_CONF = """
worker_processes 1;
pid {tmp}/nginx.pid;
error_log stderr warn;
{user}
events {{ worker_connections 256; }}
http {{
    access_log off;
    client_body_temp_path {tmp}/body;
    fastcgi_temp_path {tmp}/fastcgi;
    proxy_temp_path {tmp}/proxy;
    scgi_temp_path {tmp}/scgi;
    uwsgi_temp_path {tmp}/uwsgi;
    upstream fcgiserve {{
        server 127.0.0.1:{backend};
        keepalive 8;
    }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            include {params};
            fastcgi_pass fcgiserve;
            fastcgi_keep_conn on;
        }}
    }}
}}
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(port: int, proc: subprocess.Popen[bytes], what: str) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"{what} exited with status {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.1)
    sys.exit(f"{what} did not start listening on port {port}")


def find_nginx() -> str:
    found = shutil.which("nginx") or ("/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else None)
    if not found:
        sys.exit("nginx is not installed: sudo apt-get install -y nginx-light")
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--port", type=int, help="port nginx listens on (default 8000; a free one with --check)"
    )
    parser.add_argument("--method", default="threaded", choices=["threaded", "prefork"])
    parser.add_argument("--check", action="store_true", help="fetch the page once and exit")
    args = parser.parse_args()
    if args.port is None:
        args.port = free_port() if args.check else 8000

    nginx = find_nginx()
    backend = free_port()
    tmp = Path(tempfile.mkdtemp(prefix="fcgiserve-demo-"))
    conf = tmp / "nginx.conf"
    conf.write_text(
        NGINX_CONF.format(
            tmp=tmp,
            port=args.port,
            backend=backend,
            params="/etc/nginx/fastcgi_params",
            user="user root;" if os.geteuid() == 0 else "",
        )
    )
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "fcgiserve",
            "app:application",
            "--port",
            str(backend),
            "--method",
            args.method,
        ],
        cwd=HERE,
    )
    web = None
    try:
        wait_for_port(backend, server, "fcgiserve")
        web = subprocess.Popen([nginx, "-p", str(tmp), "-c", str(conf), "-g", "daemon off;"])
        wait_for_port(args.port, web, "nginx")
        url = f"http://127.0.0.1:{args.port}/"
        if args.check:
            with urllib.request.urlopen(url, timeout=10) as response:
                body = response.read().decode()
            ok = "Served by fcgiserve" in body
            print(f"{url} -> {response.status}, {'served by fcgiserve' if ok else 'unexpected body'}")
            return 0 if ok else 1
        print(f"\nfcgiserve demo is running: open {url}  (Ctrl-C to stop)\n", flush=True)
        while server.poll() is None and web.poll() is None:
            time.sleep(0.5)
        return 1  # one of the two died on its own

    except KeyboardInterrupt:
        return 0
    finally:
        for proc in (web, server):
            if proc is not None and proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(15)
                except subprocess.TimeoutExpired:
                    proc.kill()
        shutil.rmtree(tmp, ignore_errors=True)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, _interrupt)
    sys.exit(main())
