"""The backends under test, their one-off setup (benchmark venv, C build), and the nginx in front of them.

Nothing is installed globally except Debian packages when a row needs them (libfcgi-dev for the C ceiling,
uwsgi-core and uwsgi-plugin-python3 for uWSGI), each announced before apt-get runs: flup 1.0.3, gunicorn,
Django and matplotlib go into benchmarks/.venv-<major.minor> (one per interpreter, made with ``--python``'s
``-m venv``), builds and nginx state into benchmarks/.work (all gitignored). Every process started here is
stopped here, by pid.
"""

from __future__ import annotations

import os
import re
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
    "DEFAULT_PYTHON",
    "Backend",
    "Interpreter",
    "Nginx",
    "Running",
    "Setup",
    "fcgiserve_backend",
    "free_port",
    "interpreter",
    "prepare",
    "start_backends",
    "stop_all",
    "uwsgi_argv",
    "venv_dir",
    "venv_home_matches",
]

HERE = Path(__file__).resolve().parent
APPS = HERE / "apps"
WORK = HERE / ".work"
# Debian's interpreter, the one uWSGI's python3 plugin embeds: every Python row runs the same Python.
DEFAULT_PYTHON = Path("/usr/bin/python3")
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


def venv_dir(version: str) -> Path:
    """The benchmark venv of a Python version ("3.11.2" -> benchmarks/.venv-3.11)."""
    major, minor = version.split(".")[:2]
    return HERE / f".venv-{major}.{minor}"


def venv_home_matches(pyvenv_cfg: str, base_executable: str) -> bool:
    """Whether a venv (its pyvenv.cfg text) was made from the interpreter whose base executable is given:
    two Pythons of one major.minor (Debian's and a pyenv build) share the venv's name, not its packages."""
    home = re.search(r"^home\s*=\s*(.+?)\s*$", pyvenv_cfg, re.MULTILINE)
    return home is not None and Path(home.group(1)) == Path(base_executable).parent


@dataclass(frozen=True)
class Interpreter:
    """The Python every Python backend runs under (``--python``), and its benchmark venv."""

    path: Path
    version: str  # platform.python_version()
    base_executable: str  # the interpreter a venv made with it points to

    @property
    def minor(self) -> str:
        return ".".join(self.version.split(".")[:2])

    @property
    def venv(self) -> Path:
        return venv_dir(self.version)

    @property
    def venv_python(self) -> Path:
        return self.venv / "bin" / "python"

    def owns_venv(self) -> bool:
        cfg = self.venv / "pyvenv.cfg"
        return self.venv_python.exists() and venv_home_matches(cfg.read_text(), self.base_executable)

    def runner(self) -> str:
        """What runs a Python row: the venv's python (flup, gunicorn, Django) if it is this interpreter's,
        else the interpreter itself (fcgiserve needs nothing installed)."""
        return str(self.venv_python if self.owns_venv() else self.path)

    def describe(self) -> str:
        return f"Python {self.version} ({self.path})"


def interpreter(path: Path = DEFAULT_PYTHON) -> Interpreter:
    """Ask ``path`` its version; SystemExit if it does not run."""
    probe = "import platform, sys; print(platform.python_version()); print(sys._base_executable)"
    try:
        done = subprocess.run(
            [str(path), "-c", probe], capture_output=True, text=True, timeout=60, check=False
        )
    except OSError as error:
        raise SystemExit(f"--python {path}: {error}") from error
    if done.returncode != 0:
        raise SystemExit(f"--python {path} failed: {done.stderr.strip()[-300:]}")
    version, base = done.stdout.splitlines()[:2]
    return Interpreter(path, version, base)


@dataclass(frozen=True)
class Backend:
    """One row of the results: how to start it and how nginx talks to it."""

    name: str
    label: str
    protocol: str  # "fcgi" or "http"
    keep_conn: bool
    needs: str  # "" (always there), "venv", "libfcgi" or "uwsgi"
    # (address, interpreter) -> command line; the address is "127.0.0.1:PORT" or a unix socket's path
    argv: Callable[[str, Interpreter], list[str]]
    django: bool = True  # serves /django/ (the C responder does not)
    # uWSGI takes SIGTERM as "reload" unless --die-on-term; SIGINT stops its master and workers at once.
    stop_signal: int = signal.SIGTERM


def is_unix(address: str) -> bool:
    """A backend address is a unix socket's path (``--unix``) or "127.0.0.1:PORT"."""
    return address.startswith("/")


def _tcp_port(address: str) -> str:
    return address.rpartition(":")[2]


def _fcgiserve(method: str, shape: list[str] | None = None) -> Callable[[str, Interpreter], list[str]]:
    """``shape``: the prefork pool's options instead of PROCESSES children (benchmarks/keepalive_p99.py)."""

    def argv(address: str, python: Interpreter) -> list[str]:
        # The same interpreter as flup, gunicorn and uWSGI (the benchmark venv; fcgiserve from the working
        # tree via PYTHONPATH), so memory compares like with like: another Python's site-packages hooks
        # (.pth files) can add megabytes to every process. Prefork with --preload: flup and uWSGI import
        # the app before they fork, so their children share the app's pages; ours do too with --preload.
        extra = ["--minspare", str(PROCESSES), "--maxspare", str(PROCESSES), "--maxchildren", str(PROCESSES)]
        extra += ["--threads", "1"]
        base = [python.runner(), "-m", "fcgiserve", "bench_app:application", "--method", method]
        if is_unix(address):
            base += ["--socket", address]
        else:
            base += ["--host", "127.0.0.1", "--port", _tcp_port(address)]
        base += ["--log-level", "warning"]
        if shape is not None:
            extra = shape
        return base + (["--preload", *extra] if method == "prefork" else [])

    return argv


def fcgiserve_backend(name: str, label: str, method: str, shape: list[str] | None = None) -> Backend:
    """A fcgiserve row behind nginx with kept connections (fastcgi_keep_conn on, upstream keepalive 16)."""
    return Backend(name, label, "fcgi", True, "", _fcgiserve(method, shape))


def _flup(method: str) -> Callable[[str, Interpreter], list[str]]:
    return lambda address, python: [python.runner(), str(APPS / "flup_server.py"), method, address]


def _gunicorn(worker: str) -> Callable[[str, Interpreter], list[str]]:
    def argv(address: str, python: Interpreter) -> list[str]:
        shape = ["-w", str(PROCESSES)] if worker == "sync" else ["-w", "1", "--threads", str(THREADS)]
        bind = ["-b", f"unix:{address}" if is_unix(address) else address]
        bind += ["--log-level", "warning", "bench_app:application"]
        return [python.runner(), "-m", "gunicorn", "-k", worker, *shape, *bind]

    return argv


def uwsgi_argv(address: str, venv: Path, shape: list[str]) -> list[str]:
    """uWSGI's own FastCGI server over the benchmark app: Debian's python3 plugin, a master, ``shape`` the
    process/thread options. The app is imported by the master before it forks (uWSGI's default, like
    --preload); the benchmark venv (Django) through --virtualenv; no request log, as for every other row."""
    argv = [UWSGI, "--plugin", "python3", "--fastcgi-socket", address, *shape, "--master"]
    argv += ["--die-on-term", "--need-app", "--disable-logging", "--pythonpath", str(APPS)]
    argv += ["--wsgi-file", str(APPS / "bench_app.py"), "--callable", "application"]
    return argv + (["--virtualenv", str(venv)] if venv.exists() else [])


def _uwsgi(shape: list[str]) -> Callable[[str, Interpreter], list[str]]:
    return lambda address, python: uwsgi_argv(address, python.venv, shape)


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
        f"fcgiserve prefork ({PROCESSES}x1), new conns",
        "fcgi",
        False,
        "",
        _fcgiserve("prefork"),
    ),
    Backend(
        "fcgiserve-prefork-keep",
        f"fcgiserve prefork ({PROCESSES}x1), kept conns",
        "fcgi",
        True,
        "",
        _fcgiserve("prefork"),
    ),
    # No pool size option at all (minspare 2, maxspare 5, up to 8 children of 1 thread): what sizing costs.
    fcgiserve_backend(
        "fcgiserve-prefork-default", "fcgiserve prefork (default sizing), kept conns", "prefork", []
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
        lambda address, _python: [str(C_BINARY), address, str(C_THREADS)],
        django=False,
    ),
]


def _venv_missing(python: Interpreter) -> list[str]:
    if not python.owns_venv():
        return list(VENV_PACKAGES)
    probe = (
        "import importlib.util as u,sys;print(' '.join(n for n in sys.argv[1:] if u.find_spec(n) is None))"
    )
    done = subprocess.run(
        [str(python.venv_python), "-c", probe, *VENV_PACKAGES],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return done.stdout.split() if done.returncode == 0 else list(VENV_PACKAGES)


def _say(message: str) -> None:
    print(f"[setup] {message}", file=sys.stderr, flush=True)


def _setup_venv(install: bool, setup: Setup, python: Interpreter) -> None:
    missing = _venv_missing(python)
    if missing and install:
        venv = python.venv
        _say(f"benchmark venv {venv}: installing {', '.join(VENV_PACKAGES[n] for n in missing)} (pip)")
        if not python.owns_venv():
            if python.venv_python.exists():
                _say(f"{venv} was made by another Python {python.minor}: making it anew with {python.path}")
            create = [str(python.path), "-m", "venv", "--clear", str(venv)]
            subprocess.run(create, check=True, timeout=300)
        pip = [str(python.venv_python), "-m", "pip", "install", "-q", *(VENV_PACKAGES[n] for n in missing)]
        if subprocess.run(pip, timeout=900, check=False).returncode != 0:
            _say("pip install failed: the rows that need the venv are reported as unavailable")
        missing = _venv_missing(python)
    if {"flup", "gunicorn", "django"} & set(missing):
        name = python.venv.name
        other = python.venv_python.exists() and not python.owns_venv()
        setup.missing["venv"] = (
            f"benchmark venv {name} was made by another Python {python.minor} (setup makes it anew)"
            if other
            else f"benchmark venv {name} lacks {', '.join(missing)}"
        )
    setup.has_matplotlib = "matplotlib" not in missing


def _apt_install(packages: list[str], why: str) -> None:
    _say(f"{why} needs Debian's {', '.join(packages)}: running apt-get install -y {' '.join(packages)}")
    sudo = [] if os.geteuid() == 0 else ["sudo", "-n"]
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run([*sudo, "apt-get", "update", "-qq"], timeout=600, check=False, env=env)
    subprocess.run([*sudo, "apt-get", "install", "-y", "-qq", *packages], timeout=600, check=False, env=env)


def _uwsgi_installed() -> bool:
    return shutil.which(UWSGI) is not None and UWSGI_PLUGIN.exists()


def uwsgi_python() -> str:
    """The major.minor of the libpython uWSGI's python3 plugin is linked with ("" if unknown)."""
    done = subprocess.run(["ldd", str(UWSGI_PLUGIN)], capture_output=True, text=True, timeout=30, check=False)
    found = re.search(r"libpython(\d+\.\d+)", done.stdout)
    return found.group(1) if found else ""


def _setup_uwsgi(install: bool, setup: Setup, python: Interpreter) -> None:
    if not _uwsgi_installed() and install:
        _apt_install(UWSGI_PACKAGES, "uWSGI")
    if not _uwsgi_installed():
        setup.missing["uwsgi"] = f"uWSGI is not installed (apt-get install {' '.join(UWSGI_PACKAGES)})"
    elif (embedded := uwsgi_python()) != python.minor:
        setup.missing["uwsgi"] = f"uWSGI's python3 plugin embeds Python {embedded or '?'}, not {python.minor}"
    elif "venv" in setup.missing:
        setup.missing["uwsgi"] = setup.missing["venv"]  # bench_app imports Django


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


def prepare(install: bool, python: Interpreter | None = None) -> Setup:
    """Check (and with ``install``, provide) what the backends need; never raises for a missing extra."""
    for tool in ("wrk", NGINX):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is required (Debian packages wrk and nginx-light)")
    setup = Setup()
    python = python or interpreter()
    _setup_venv(install, setup, python)
    _setup_libfcgi(install, setup)
    _setup_uwsgi(install, setup, python)
    return setup


def free_port() -> int:
    """A free loopback TCP port (the kernel's pick)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class Running:
    """A started backend process (the root of its tree) and the address it listens on."""

    backend: Backend
    process: subprocess.Popen[bytes]
    address: str  # "127.0.0.1:PORT" or a unix socket's path
    log: Path

    @property
    def upstream(self) -> str:
        """The address as nginx's ``server`` directive takes it."""
        return f"unix:{self.address}" if is_unix(self.address) else self.address

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


def _wait_listening(address: str, process: subprocess.Popen[bytes], seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and process.poll() is None:
        try:
            if is_unix(address):
                with socket.socket(socket.AF_UNIX) as probe:
                    probe.settimeout(1)
                    probe.connect(address)
                return True
            with socket.create_connection(("127.0.0.1", int(_tcp_port(address))), timeout=1):
                return True
        except OSError:
            time.sleep(0.1)
    return False


def compile_sources(python: Interpreter) -> None:
    """Byte-compile the working tree's fcgiserve and the benchmark apps with ``python``, as installing a
    package does (pip writes every module's .pyc), so no row compiles source at start-up.

    The rows run with PYTHONDONTWRITEBYTECODE, so a tree without its .pyc files would be compiled in every
    process it starts: the compiler's garbage then fragments the heap of the process that measures idle
    RSS (about 0.35 MiB more per fcgiserve process, whose modules come from the tree; flup, gunicorn and
    Django come from the venv, precompiled by pip)."""
    sources = [str(HERE.parent / "fcgiserve"), str(APPS)]
    subprocess.run(
        [python.runner(), "-m", "compileall", "-q", *sources], capture_output=True, timeout=300, check=False
    )


def start_backends(
    backends: list[Backend], python: Interpreter | None = None, unix: bool = False
) -> tuple[list[Running], dict[str, str]]:
    """Start every backend on a free loopback port at once (Python rows under ``python``, by default
    DEFAULT_PYTHON), or with ``unix`` on a unix socket each (``WORK/sockets/<name>.sock``), then wait until
    each accepts connections (30 s at most); return the running ones and, for the others, why they are not
    running."""
    python = python or interpreter()
    WORK.mkdir(exist_ok=True)
    compile_sources(python)
    # The repository root too, so the working tree's fcgiserve runs whether or not it is installed.
    path = os.pathsep.join([str(APPS), str(HERE.parent)])
    env = {**os.environ, "PYTHONPATH": path, "PYTHONDONTWRITEBYTECODE": "1"}
    started: list[Running] = []
    failed: dict[str, str] = {}
    sockets = WORK / "sockets"
    if unix:
        sockets.mkdir(exist_ok=True)
    for backend in backends:
        if unix:
            address = str(sockets / f"{backend.name}.sock")
            Path(address).unlink(missing_ok=True)  # a socket a killed run left behind
        else:
            address = f"127.0.0.1:{free_port()}"
        log = WORK / f"{backend.name}.log"
        try:
            with log.open("wb") as sink:
                process = subprocess.Popen(
                    backend.argv(address, python), cwd=APPS, env=env, stdout=sink, stderr=subprocess.STDOUT
                )
        except OSError as error:
            failed[backend.name] = f"could not start: {error}"
            continue
        started.append(Running(backend, process, address, log))
    ready: list[Running] = []
    for running in started:
        if _wait_listening(running.address, running.process, 30):
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
        server {running.upstream};
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
            if not _wait_listening(f"127.0.0.1:{port}", self.process, 15):
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
