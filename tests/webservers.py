"""Real web servers in front of fcgiserve, for tests/integration/test_webservers.py and
test_connection_survival.py (HAProxy: ``run_haproxy``; h2o: ``run_h2o``; Apache: ``run_apache``).

Each web server is started in the foreground with its own config in a temp dir (own port on 127.0.0.1,
own pid and log files) and stopped by pid. The site-specific part of each config is read from the
deployment guide in docs/ (``doc_snippet``), so the guide shows the very config the tests ran.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from tests.helpers import ROOT, free_port, wait_for_port

DOCS = ROOT / "docs"

# The small application every web server serves through fcgiserve.
APP = """\
import hashlib
import os
import time

BIG = bytes(range(256)) * 8192  # 2 MiB


def application(environ, start_response):
    path = environ.get("PATH_INFO", "")
    method = environ["REQUEST_METHOD"]
    if path == "/big":
        headers = [("Content-Type", "application/octet-stream"), ("Content-Length", str(len(BIG)))]
        start_response("200 OK", headers)
        return [BIG]
    if path == "/echo":
        body = environ["wsgi.input"].read()
        text = f"{method} {len(body)} {hashlib.sha256(body).hexdigest()}"
    elif path == "/sleep":
        time.sleep(float(environ.get("QUERY_STRING") or 0))
        text = "slept"
    elif path == "/environ":
        text = f"multithread={environ['wsgi.multithread']} multiprocess={environ['wsgi.multiprocess']}"
    elif path == "/headers":
        cookies = [("Set-Cookie", "a=1"), ("Set-Cookie", "b=2")]
        start_response("200 OK", [("Content-Type", "text/plain"), *cookies])
        return [environ.get("HTTP_X_MULTI", "-").encode()]
    else:
        text = f"hello {method} {environ.get('SCRIPT_NAME')!r} {path!r} pid={os.getpid()}"
    start_response("200 OK", [("Content-Type", "text/plain"), ("X-Pid", str(os.getpid()))])
    return [text.encode()]
"""

BIG = bytes(range(256)) * 8192


@dataclass
class Reply:
    status: int
    headers: list[tuple[str, str]]
    body: bytes

    def all(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k.lower() == name.lower()]


def http_request(
    port: int, method: str, path: str, body: bytes | None = None, headers: Sequence[tuple[str, str]] = ()
) -> Reply:
    """One HTTP/1.1 request on a new connection; repeated header names are sent as given."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        conn.putrequest(method, path)
        for name, value in headers:
            conn.putheader(name, value)
        if body is not None:
            conn.putheader("Content-Length", str(len(body)))
            conn.putheader("Content-Type", "application/octet-stream")
        conn.endheaders(body)
        response = conn.getresponse()
        return Reply(response.status, response.getheaders(), response.read())
    finally:
        conn.close()


def exercise(port: int) -> str:
    """GET (SCRIPT_NAME/PATH_INFO as WSGI wants them), POST with a body, a 2 MiB response and repeated
    header names, through the web server on port.

    Returns the pid that served the GET (for spawned-server tests).
    """
    hello = http_request(port, "GET", "/a/b?x=1")
    assert hello.status == 200, hello
    assert hello.body.startswith(b"hello GET '' '/a/b' "), "mounted at the root: SCRIPT_NAME '', PATH_INFO"
    upload = os.urandom(100_000)
    echoed = http_request(port, "POST", "/echo", upload)
    assert (
        echoed.status == 200 and echoed.body.decode() == f"POST 100000 {hashlib.sha256(upload).hexdigest()}"
    )
    big = http_request(port, "GET", "/big")
    assert big.status == 200 and len(big.body) == len(BIG) and big.body == BIG
    multi = http_request(port, "GET", "/headers", headers=[("X-Multi", "one"), ("X-Multi", "two")])
    assert multi.status == 200
    assert multi.all("Set-Cookie") == ["a=1", "b=2"], "repeated response headers stay separate"
    assert multi.body in (b"one, two", b"one,two"), "repeated request headers arrive joined (S-C4)"
    for _ in range(5):  # sequential requests: connection reuse (where configured) keeps working
        assert http_request(port, "GET", "/").status == 200
    return hello.all("X-Pid")[0]


# --- doc snippets ---------------------------------------------------------------------------------------


def doc_snippet(doc: str, name: str, replace: Mapping[str, str] | None = None) -> str:
    """The fenced code block of docs/DOC whose first line is a comment ``snippet: NAME``, with the
    replacements applied (the guide's example paths and ports -> the test's temp dir and free ports)."""
    text = (DOCS / doc).read_text()
    for block in re.findall(r"^```[a-z]*\n(.*?)^```", text, re.MULTILINE | re.DOTALL):
        first, _, rest = block.partition("\n")
        if re.fullmatch(rf"\s*(#|//)\s*snippet: {re.escape(name)}\s*", first):
            for old, new in (replace or {}).items():
                assert old in rest, f"{doc} snippet {name} no longer contains {old!r}"
                rest = rest.replace(old, new)
            return rest
    raise AssertionError(f"docs/{doc} has no code block starting with '# snippet: {name}'")


# --- HAProxy -------------------------------------------------------------------------------------------

HAPROXY = shutil.which("haproxy") or "/usr/sbin/haproxy"
HAPROXY_BASE = """\
global
    log stderr format raw local0 info
defaults
    mode http
    log global
    option httplog
    timeout connect 5s
    timeout client 60s
    timeout server 60s
"""


def haproxy_config(snippet: str, port: int, backend: int, docroot: Path) -> str:
    """A whole haproxy.cfg: our global/defaults, then the guide's snippet (docs/deploy-haproxy.md) with the
    guide's addresses replaced by ``port`` (HAProxy's) and ``backend`` (fcgiserve's)."""
    replace = {"bind :80": f"bind 127.0.0.1:{port}", "127.0.0.1:8080": f"127.0.0.1:{backend}"}
    replace["/srv/mysite"] = str(docroot)
    return HAPROXY_BASE + doc_snippet("deploy-haproxy.md", snippet, replace)


@contextlib.contextmanager
def run_haproxy(directory: Path, backend: int, snippet: str = "haproxy") -> Iterator[tuple[int, Proc]]:
    """HAProxy in the foreground (``-db``) in front of fcgiserve on ``backend``; yields (port, process)."""
    port = free_port()
    config = directory / f"haproxy-{port}.cfg"
    config.write_text(haproxy_config(snippet, port, backend, directory))
    with started([HAPROXY, "-db", "-f", str(config)], directory / f"haproxy-{port}.log", port) as proc:
        yield port, proc


def haproxy_available() -> bool:
    return Path(HAPROXY).exists()


# --- Apache httpd --------------------------------------------------------------------------------------

APACHE2 = shutil.which("apache2") or "/usr/sbin/apache2"
APACHE_MODULES = "/usr/lib/apache2/modules"
APACHE_BASE = """\
ServerRoot "{site}"
ServerName 127.0.0.1
Listen 127.0.0.1:{port}
PidFile "{site}/apache.pid"
DefaultRuntimeDir "{site}/apache-run"
ErrorLog "{site}/apache-error.log"
LogLevel warn
{modules}
{user}
StartServers 1
ServerLimit 1
ThreadsPerChild 25
MaxRequestWorkers 25
DocumentRoot "{site}"
"""
# One process; 25 threads, not 8: at MaxRequestWorkers the event MPM closes its clients' idle keep-alive
# connections, and a client that had just sent its next request on one gets no response at all (about one
# request in a thousand under tests/loadmix.py's 8 clients, with or without fcgiserve recycling).


@contextlib.contextmanager
def run_apache(site: Path, snippet: str, replace: Mapping[str, str], modules: Sequence[str]) -> Iterator[int]:
    """Apache httpd in the foreground (mpm_event, one process of 8 threads) with the guide's ``snippet``
    (docs/deploy-apache.md); yields its port. ``site`` must be readable by www-data (world_readable_dir):
    as root, Apache's children switch to that user."""
    port = free_port()
    (site / "apache-run").mkdir(exist_ok=True)
    loads = "\n".join(
        f"LoadModule {name}_module {APACHE_MODULES}/mod_{name}.so"
        for name in ["mpm_event", "authz_core", "alias", *modules]
    )
    user = "User www-data\nGroup www-data" if os.geteuid() == 0 else ""
    conf = site / "apache.conf"
    conf.write_text(
        APACHE_BASE.format(site=site, port=port, modules=loads, user=user)
        + doc_snippet("deploy-apache.md", snippet, replace)
    )
    argv = [APACHE2, "-f", str(conf), "-DFOREGROUND"]
    with started(argv, site / "apache.out", port, extra_logs=[site / "apache-error.log"]):
        yield port


def apache_available() -> bool:
    return Path(APACHE2).exists()


# --- h2o -----------------------------------------------------------------------------------------------

H2O = shutil.which("h2o") or "/usr/bin/h2o"
H2O_BASE = """\
listen:
  host: 127.0.0.1
  port: {port}
error-log: {directory}/h2o-error-{port}.log
"""


@contextlib.contextmanager
def run_h2o(
    directory: Path, snippet: str, replace: Mapping[str, str] | None = None
) -> Iterator[tuple[int, Proc]]:
    """h2o in the foreground with the guide's ``snippet`` (docs/deploy-h2o.md), its example addresses and
    paths replaced by ``replace``; yields (port, process). As root, h2o runs its workers as ``nobody``."""
    port = free_port()
    config = directory / f"h2o-{port}.conf"
    head = H2O_BASE.format(port=port, directory=directory)
    config.write_text(head + doc_snippet("deploy-h2o.md", snippet, replace))
    out, error_log = directory / f"h2o-{port}.out", directory / f"h2o-error-{port}.log"
    with started([H2O, "-c", str(config)], out, port, extra_logs=[error_log]) as proc:
        yield port, proc


def h2o_available() -> bool:
    return Path(H2O).exists()


# --- processes ------------------------------------------------------------------------------------------


@contextlib.contextmanager
def world_readable_dir(prefix: str) -> Iterator[Path]:
    """A temp dir other users can read: Apache's children run as www-data and pytest's tmp_path is 0700."""
    path = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    try:
        path.chmod(0o755)
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def write_site(site: Path) -> None:
    """The application module and a wrapper that runs fcgiserve with no address (fd 0 is the listener)."""
    (site / "wsapp.py").write_text(APP)
    wrapper = site / "run-fcgiserve"
    wrapper.write_text(
        "#!/bin/sh\n"
        "# Spawned by the web server with the listening socket on fd 0: no --host/--port/--socket.\n"
        f"cd {site}\n"
        f"PYTHONPATH={ROOT}\n"
        "export PYTHONPATH\n"
        f"exec {spawn_python()} -m fcgiserve wsapp:application --minspare 1 --maxspare 2\n"
    )
    wrapper.chmod(0o755)


def spawn_python() -> str:
    """The interpreter for processes a web server spawns: as root, Apache spawns them as www-data, who
    cannot enter /root (where pyenv lives), so the system python3 (3.11, stdlib only is enough) runs them."""
    if os.geteuid() == 0 and Path("/usr/bin/python3").exists():
        return "/usr/bin/python3"
    return sys.executable


@dataclass
class Proc:
    proc: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


@contextlib.contextmanager
def started(
    argv: Sequence[str],
    log: Path,
    port: int,
    *,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    stop_signal: int = signal.SIGTERM,
    extra_logs: Sequence[Path] = (),
) -> Iterator[Proc]:
    """Start argv (in the foreground), wait until it listens on port, stop it by pid in the end."""
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            list(argv),
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, **(env or {})},
            cwd=cwd,
        )
    handle = Proc(proc, log)
    try:
        try:
            wait_for_port(port, proc=proc, timeout=60)
        except Exception as exc:
            logs = "\n".join(p.read_text(errors="replace") for p in extra_logs if p.exists())
            raise AssertionError(f"{argv[0]} did not start ({exc}): {handle.output()}\n{logs}") from None
        yield handle
    finally:
        if proc.poll() is None:
            proc.send_signal(stop_signal)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)


def established_to(port: int) -> int:
    """TCP connections in state ESTABLISHED whose local port is ``port`` (accepted by our backend)."""
    count = 0
    with open("/proc/net/tcp") as f:
        for line in f.readlines()[1:]:
            fields = line.split()
            if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] == "01":
                count += 1
    return count


def pid_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def kill_if_alive(pid: int) -> None:
    """For a process one of our web servers spawned, should it outlive its web server (a test failure)."""
    if pid_alive(pid):
        os.kill(pid, signal.SIGKILL)


__all__ = [
    "APP",
    "BIG",
    "Proc",
    "Reply",
    "apache_available",
    "doc_snippet",
    "established_to",
    "exercise",
    "free_port",
    "h2o_available",
    "haproxy_available",
    "haproxy_config",
    "http_request",
    "kill_if_alive",
    "pid_alive",
    "run_apache",
    "run_h2o",
    "run_haproxy",
    "spawn_python",
    "started",
    "world_readable_dir",
    "write_site",
]
