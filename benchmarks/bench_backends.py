"""The backends under test, their one-off setup (benchmark venv, C build), and the nginx in front of them.

Nothing is installed globally except Debian packages when a row needs them (libfcgi-dev for the C ceiling,
uwsgi-core and uwsgi-plugin-python3 for uWSGI), each announced before apt-get runs: flup 1.0.3, gunicorn,
Django and matplotlib go into benchmarks/.venv, builds and nginx state into benchmarks/.work (both
gitignored). Every process started here is stopped here, by pid.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from bench_measure import process_tree

__all__ = [
    "BACKENDS",
    "Backend",
    "Nginx",
    "Running",
    "Setup",
    "fcgiserve_backend",
    "free_port",
    "prepare",
    "start_backends",
    "stop_all",
    "uwsgi_argv",
]

HERE = Path(__file__).resolve().parent
APPS = HERE / "apps"
WORK = HERE / ".work"
VENV = HERE / ".venv"
VENV_PYTHON = VENV / "bin" / "python"
VENV_PACKAGES = {
    "flup": "flup==1.0.3",
    "gunicorn": "gunicorn",
    "django": "django",
    "matplotlib": "matplotlib",
}
C_SOURCE = HERE / "libfcgi_responder.c"
C_BINARY = WORK / "libfcgi_responder"
NGINX = "/usr/sbin/nginx"
PROCESSES = 2  # prefork children = gunicorn sync workers
THREADS = 8  # gunicorn gthread threads
C_THREADS = 64  # >= the largest client concurrency: a kept connection holds its thread while idle
UWSGI = "uwsgi"
UWSGI_PLUGIN = Path("/usr/lib/uwsgi/plugins/python3_plugin.so")  # Debian's uwsgi-plugin-python3
UWSGI_PACKAGES = ["uwsgi-core", "uwsgi-plugin-python3"]


@dataclass
class Setup:
    """What the machine offers after ``prepare``: reasons keyed by the requirement that is missing."""

    missing: dict[str, str] = field(default_factory=dict)
    has_matplotlib: bool = False


@dataclass(frozen=True)
class Backend:
    """One row of the results: how to start it and how nginx talks to it."""

    name: str
    label: str
    protocol: str  # "fcgi" or "http"
    keep_conn: bool
    needs: str  # "" (always there), "venv", "libfcgi" or "uwsgi"
    argv: Callable[[int], list[str]]
    django: bool = True  # serves /django/ (the C responder does not)
    # uWSGI takes SIGTERM as "reload" unless --die-on-term; SIGINT stops its master and workers at once.
    stop_signal: int = signal.SIGTERM


def _fcgiserve(method: str, shape: list[str] | None = None) -> Callable[[int], list[str]]:
    """``shape``: the prefork pool's options instead of PROCESSES children (benchmarks/keepalive_p99.py)."""

    def argv(port: int) -> list[str]:
        # The same interpreter as flup and gunicorn (the benchmark venv; fcgiserve from the working tree via
        # PYTHONPATH), so memory compares like with like: a system Python's site-packages hooks (.pth
        # files) can add megabytes to every process. Prefork with --preload: flup always imports the app
        # before it forks, so its children share the app's pages; ours do too with --preload.
        python = str(VENV_PYTHON) if VENV_PYTHON.exists() else sys.executable
        extra = ["--minspare", str(PROCESSES), "--maxspare", str(PROCESSES), "--maxchildren", str(PROCESSES)]
        base = [python, "-m", "fcgiserve", "bench_app:application", "--method", method]
        base += ["--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"]
        if shape is not None:
            extra = shape
        return base + (["--preload", *extra] if method == "prefork" else [])

    return argv


def fcgiserve_backend(name: str, label: str, method: str, shape: list[str] | None = None) -> Backend:
    """A fcgiserve row behind nginx with kept connections (fastcgi_keep_conn on, upstream keepalive 16)."""
    return Backend(name, label, "fcgi", True, "", _fcgiserve(method, shape))


def _flup(method: str) -> Callable[[int], list[str]]:
    return lambda port: [str(VENV_PYTHON), str(APPS / "flup_server.py"), method, str(port)]


def _gunicorn(worker: str) -> Callable[[int], list[str]]:
    def argv(port: int) -> list[str]:
        shape = ["-w", str(PROCESSES)] if worker == "sync" else ["-w", "1", "--threads", str(THREADS)]
        bind = ["-b", f"127.0.0.1:{port}", "--log-level", "warning", "bench_app:application"]
        return [str(VENV_PYTHON), "-m", "gunicorn", "-k", worker, *shape, *bind]

    return argv


def uwsgi_argv(port: int, venv: Path, shape: list[str]) -> list[str]:
    """uWSGI's own FastCGI server over the benchmark app: Debian's python3 plugin, a master, ``shape`` the
    process/thread options. The app is imported by the master before it forks (uWSGI's default, like
    --preload); the benchmark venv (Django) through --virtualenv; no request log, as for every other row."""
    argv = [UWSGI, "--plugin", "python3", "--fastcgi-socket", f"127.0.0.1:{port}", *shape, "--master"]
    argv += ["--die-on-term", "--need-app", "--disable-logging", "--pythonpath", str(APPS)]
    argv += ["--wsgi-file", str(APPS / "bench_app.py"), "--callable", "application"]
    return argv + (["--virtualenv", str(venv)] if venv.exists() else [])


def _uwsgi(shape: list[str]) -> Callable[[int], list[str]]:
    return lambda port: uwsgi_argv(port, VENV, shape)


BACKENDS: list[Backend] = [
    Backend("flup-threaded", "flup 1.0.3 threaded", "fcgi", False, "venv", _flup("threaded")),
    Backend(
        "flup-prefork", f"flup 1.0.3 prefork ({PROCESSES} children)", "fcgi", False, "venv", _flup("prefork")
    ),
    Backend(
        "fcgiserve-threaded-new", "fcgiserve threaded, new conns", "fcgi", False, "", _fcgiserve("threaded")
    ),
    Backend(
        "fcgiserve-threaded-keep", "fcgiserve threaded, kept conns", "fcgi", True, "", _fcgiserve("threaded")
    ),
    Backend(
        "fcgiserve-prefork-new",
        f"fcgiserve prefork ({PROCESSES}), new conns",
        "fcgi",
        False,
        "",
        _fcgiserve("prefork"),
    ),
    Backend(
        "fcgiserve-prefork-keep",
        f"fcgiserve prefork ({PROCESSES}), kept conns",
        "fcgi",
        True,
        "",
        _fcgiserve("prefork"),
    ),
    Backend(
        "gunicorn-sync", f"gunicorn sync ({PROCESSES} workers)", "http", False, "venv", _gunicorn("sync")
    ),
    Backend(
        "gunicorn-gthread", f"gunicorn gthread (1x{THREADS})", "http", False, "venv", _gunicorn("gthread")
    ),
    # uWSGI closes every FastCGI connection after its request (no FCGI_KEEP_CONN), hence no kept rows.
    Backend(
        "uwsgi-processes",
        f"uWSGI --processes {PROCESSES}, new conns",
        "fcgi",
        False,
        "uwsgi",
        _uwsgi(["--processes", str(PROCESSES)]),
        stop_signal=signal.SIGINT,
    ),
    Backend(
        "uwsgi-threads",
        f"uWSGI --processes 1 --threads {THREADS}, new conns",
        "fcgi",
        False,
        "uwsgi",
        _uwsgi(["--processes", "1", "--threads", str(THREADS)]),
        stop_signal=signal.SIGINT,
    ),
    Backend(
        "libfcgi-c",
        f"C libfcgi ({C_THREADS} threads, kept) ceiling",
        "fcgi",
        True,
        "libfcgi",
        lambda port: [str(C_BINARY), str(port), str(C_THREADS)],
        django=False,
    ),
]


def _venv_missing() -> list[str]:
    if not VENV_PYTHON.exists():
        return list(VENV_PACKAGES)
    probe = (
        "import importlib.util as u,sys;print(' '.join(n for n in sys.argv[1:] if u.find_spec(n) is None))"
    )
    done = subprocess.run(
        [str(VENV_PYTHON), "-c", probe, *VENV_PACKAGES],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return done.stdout.split() if done.returncode == 0 else list(VENV_PACKAGES)


def _say(message: str) -> None:
    print(f"[setup] {message}", file=sys.stderr, flush=True)


def _setup_venv(install: bool, setup: Setup) -> None:
    missing = _venv_missing()
    if missing and install:
        _say(f"benchmark venv {VENV}: installing {', '.join(VENV_PACKAGES[n] for n in missing)} (pip)")
        if not VENV_PYTHON.exists():
            subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True, timeout=300)
        pip = [str(VENV_PYTHON), "-m", "pip", "install", "-q", *(VENV_PACKAGES[n] for n in missing)]
        if subprocess.run(pip, timeout=900, check=False).returncode != 0:
            _say("pip install failed: the rows that need the venv are reported as unavailable")
        missing = _venv_missing()
    if {"flup", "gunicorn", "django"} & set(missing):
        setup.missing["venv"] = f"benchmark venv lacks {', '.join(missing)}"
    setup.has_matplotlib = "matplotlib" not in missing


def _apt_install(packages: list[str], why: str) -> None:
    _say(f"{why} needs Debian's {', '.join(packages)}: running apt-get install -y {' '.join(packages)}")
    sudo = [] if os.geteuid() == 0 else ["sudo", "-n"]
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run([*sudo, "apt-get", "update", "-qq"], timeout=600, check=False, env=env)
    subprocess.run([*sudo, "apt-get", "install", "-y", "-qq", *packages], timeout=600, check=False, env=env)


def _uwsgi_installed() -> bool:
    return shutil.which(UWSGI) is not None and UWSGI_PLUGIN.exists()


def _setup_uwsgi(install: bool, setup: Setup) -> None:
    if not _uwsgi_installed() and install:
        _apt_install(UWSGI_PACKAGES, "uWSGI")
    if not _uwsgi_installed():
        setup.missing["uwsgi"] = f"uWSGI is not installed (apt-get install {' '.join(UWSGI_PACKAGES)})"


def _setup_libfcgi(install: bool, setup: Setup) -> None:
    if not Path("/usr/include/fcgiapp.h").exists() and install:
        _apt_install(["libfcgi-dev"], "the C ceiling")
    if not Path("/usr/include/fcgiapp.h").exists():
        setup.missing["libfcgi"] = "libfcgi-dev is not installed (apt-get install libfcgi-dev)"
        return
    if C_BINARY.exists() and C_BINARY.stat().st_mtime >= C_SOURCE.stat().st_mtime:
        return
    WORK.mkdir(exist_ok=True)
    gcc = ["gcc", "-O2", "-Wall", "-pthread", "-o", str(C_BINARY), str(C_SOURCE), "-lfcgi"]
    done = subprocess.run(gcc, capture_output=True, text=True, timeout=120, check=False)
    if done.returncode != 0:
        setup.missing["libfcgi"] = f"gcc failed: {done.stderr.strip()[:300]}"


def prepare(install: bool) -> Setup:
    """Check (and with ``install``, provide) what the backends need; never raises for a missing extra."""
    for tool in ("wrk", NGINX):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is required (Debian packages wrk and nginx-light)")
    setup = Setup()
    _setup_venv(install, setup)
    _setup_libfcgi(install, setup)
    _setup_uwsgi(install, setup)
    return setup


def free_port() -> int:
    """A free loopback TCP port (the kernel's pick)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class Running:
    """A started backend process (the root of its tree) and the port it listens on."""

    backend: Backend
    process: subprocess.Popen[bytes]
    port: int
    log: Path

    @property
    def log_name(self) -> str:
        """The log's path from the repository root, for messages that end up in committed tables."""
        return str(self.log.relative_to(HERE.parent))

    def stop(self) -> None:
        """Stop this backend as ``stop_all`` does."""
        stop_all([self])


def stop_all(backends: list[Running], grace: float = 3.0) -> None:
    """Signal every root (SIGTERM, or the backend's own stop signal; each stops its own children); after
    ``grace`` s SIGKILL whatever is left.

    Measuring is over by then, so a slow graceful exit (flup's prefork master waits 10 s for children that
    miss its close) is not worth waiting for; each tree is listed first so no orphan survives."""
    trees = {r.process.pid: process_tree(r.process.pid) for r in backends if r.process.poll() is None}
    for running in backends:
        if running.process.pid in trees:
            running.process.send_signal(running.backend.stop_signal)
    deadline = time.monotonic() + grace
    for running in backends:
        if running.process.pid not in trees:
            continue
        try:
            running.process.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            running.process.kill()
            running.process.wait(timeout=10)
        for pid in trees[running.process.pid][1:]:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def _wait_listening(port: int, process: subprocess.Popen[bytes], seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and process.poll() is None:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return True
        except OSError:
            time.sleep(0.1)
    return False


def start_backends(backends: list[Backend]) -> tuple[list[Running], dict[str, str]]:
    """Start every backend on a free loopback port at once, then wait until each accepts connections (30 s
    at most); return the running ones and, for the others, why they are not running."""
    WORK.mkdir(exist_ok=True)
    # The repository root too, so the working tree's fcgiserve runs whether or not it is installed.
    path = os.pathsep.join([str(APPS), str(HERE.parent)])
    env = {**os.environ, "PYTHONPATH": path, "PYTHONDONTWRITEBYTECODE": "1"}
    started: list[Running] = []
    failed: dict[str, str] = {}
    for backend in backends:
        port = free_port()
        log = WORK / f"{backend.name}.log"
        try:
            with log.open("wb") as sink:
                process = subprocess.Popen(
                    backend.argv(port), cwd=APPS, env=env, stdout=sink, stderr=subprocess.STDOUT
                )
        except OSError as error:
            failed[backend.name] = f"could not start: {error}"
            continue
        started.append(Running(backend, process, port, log))
    ready: list[Running] = []
    for running in started:
        if _wait_listening(running.port, running.process, 30):
            ready.append(running)
        else:
            running.stop()
            failed[running.backend.name] = f"did not start; see {running.log_name}"
    return ready, failed


_FASTCGI_PARAMS = """
        fastcgi_param QUERY_STRING $query_string;
        fastcgi_param REQUEST_METHOD $request_method;
        fastcgi_param CONTENT_TYPE $content_type;
        fastcgi_param CONTENT_LENGTH $content_length;
        fastcgi_param SCRIPT_NAME "";
        fastcgi_param PATH_INFO $document_uri;
        fastcgi_param REQUEST_URI $request_uri;
        fastcgi_param DOCUMENT_URI $document_uri;
        fastcgi_param SERVER_PROTOCOL $server_protocol;
        fastcgi_param REQUEST_SCHEME $scheme;
        fastcgi_param GATEWAY_INTERFACE CGI/1.1;
        fastcgi_param SERVER_SOFTWARE nginx/$nginx_version;
        fastcgi_param REMOTE_ADDR $remote_addr;
        fastcgi_param REMOTE_PORT $remote_port;
        fastcgi_param SERVER_ADDR $server_addr;
        fastcgi_param SERVER_PORT $server_port;
        fastcgi_param SERVER_NAME $server_name;"""


def _server_block(running: Running, listen: int) -> str:
    backend = running.backend
    upstream = backend.name.replace("-", "_")
    keep = "keepalive 16;\n        keepalive_requests 1000000;" if backend.keep_conn else ""
    if backend.protocol == "http":
        proxy = f"proxy_set_header Host $http_host;\n        proxy_pass http://{upstream};"
    else:
        proxy = f"{_FASTCGI_PARAMS}\n        fastcgi_pass {upstream};"
        proxy += "\n        fastcgi_keep_conn on;" if backend.keep_conn else ""
    return f"""
    upstream {upstream} {{
        server 127.0.0.1:{running.port};
        {keep}
    }}
    server {{
        listen 127.0.0.1:{listen};
        location / {{
        {proxy}
        }}
    }}"""


class Nginx:
    """One nginx (one worker) with a listening port per backend; started and stopped by pid."""

    def __init__(self, backends: list[Running]) -> None:
        self.root = WORK / "nginx"
        self.ports = {running.backend.name: free_port() for running in backends}
        self.process: subprocess.Popen[bytes] | None = None
        self.root.mkdir(parents=True, exist_ok=True)
        temp = " ".join(
            f"{kind}_temp_path {self.root}/{kind};" for kind in ("client_body", "fastcgi", "proxy")
        )
        servers = "".join(_server_block(r, self.ports[r.backend.name]) for r in backends)
        user = "user root;\n" if os.geteuid() == 0 else ""
        config = f"""{user}worker_processes 1;
daemon off;
pid {self.root}/nginx.pid;
error_log {self.root}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    {temp} uwsgi_temp_path {self.root}/uwsgi; scgi_temp_path {self.root}/scgi;
    keepalive_requests 1000000;
    client_max_body_size 4m;
    client_body_buffer_size 2m;
    fastcgi_buffer_size 16k;
    fastcgi_buffers 128 16k;
    proxy_buffer_size 16k;
    proxy_buffers 128 16k;
    proxy_http_version 1.0;
    {servers}
}}
"""
        self.config = self.root / "nginx.conf"
        self.config.write_text(config)

    def url(self, backend: str, path: str) -> str:
        return f"http://127.0.0.1:{self.ports[backend]}{path}"

    def start(self) -> None:
        argv = [NGINX, "-p", str(self.root), "-e", str(self.root / "error.log"), "-c", str(self.config)]
        check = subprocess.run([*argv, "-t"], capture_output=True, text=True, timeout=30, check=False)
        if check.returncode != 0:
            raise RuntimeError(f"nginx rejected {self.config}:\n{check.stderr}")
        self.process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for port in self.ports.values():
            if not _wait_listening(port, self.process, 15):
                self.stop()
                raise RuntimeError(f"nginx did not listen; see {self.root}/error.log")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGQUIT)  # graceful: the worker exits, then the master
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)

    def get(self, backend: str, path: str) -> int:
        """One request through nginx (for warm-up); the HTTP status, or 0 on a connection error."""
        try:
            with urllib.request.urlopen(self.url(backend, path), timeout=10) as response:
                response.read()
                return int(response.status)
        except OSError as error:
            return int(getattr(error, "code", 0) or 0)
