"""Instructions per hello request, counted by valgrind's callgrind: a cost that a busy machine does not move.

    python benchmarks/instructions.py [--requests N1,N2] [--backends NAME[,NAME..]] [--python PATH]
                                      [--no-extras]

Each backend serves benchmarks/apps/hello_app.py (bench_app's /hello answer without Django) under
``valgrind --tool=callgrind --trace-children=yes``, every process and thread of it counted. It is started
twice: once sent N1 requests, once N2 (200 and 1200 by default), then stopped cleanly so callgrind writes its
counts; the instructions of one request are (I(N2) - I(N1)) / (N2 - N1), so start-up, the first request's
lazy imports and shut-down cancel out. Requests go one after another from this process, a tiny raw FastCGI
client on fcgiserve.protocol: on one kept-alive connection (FCGI_KEEP_CONN) for fcgiserve and flup, on a new
connection each for uWSGI, which closes every connection after its request. What also runs during the
extra wall-clock time of N2 - N1 requests (a prefork master's tick, a pool's control thread) counts too, as
it does in production, but callgrind makes that time ~50x longer: a backend that ticks is overcharged, and
its figure moves with the machine's speed. A third run sends N1 requests and then idles --idle seconds:
its extra instructions per second are shown, and the per-request figure once that rate times the extra
wall-clock time of the N2 run is taken off (an estimate: a pool may tick faster busy than idle). Callgrind
counts user-space instructions only: the kernel's work for each system call is not in these figures.

Prints a markdown table, then (unless --no-extras) benchmarks/hotpath.py's Python function calls per request
and benchmarks/syscalls.py's syscalls per request on a kept connection. Needs valgrind (Debian package
valgrind); the uWSGI row needs uwsgi-core and uwsgi-plugin-python3, the flup row the benchmark venv (run.py
makes it). About 5 minutes on a 2-core machine.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parent.parent))  # the working tree, installed or not

from bench_backends import (
    APPS,
    DEFAULT_PYTHON,
    HERE,
    UWSGI,
    UWSGI_PLUGIN,
    Interpreter,
    free_port,
    interpreter,
    uwsgi_python,
)
from syscalls import PARAMS, send_requests

from fcgiserve.protocol import ClientConnection, EndRequest

__all__ = ["Sample", "idle_rate", "main", "per_request", "per_request_without_idle", "totals"]

_TOTALS = re.compile(r"^(?:totals|summary):\s+(\d+)", re.MULTILINE)
APP = "hello_app:application"


@dataclass(frozen=True)
class Sample:
    """One callgrind run: requests served and the instructions of every process of the backend."""

    requests: int
    instructions: int
    seconds: float = 0.0  # wall-clock time from the first request sent to the stop signal


def idle_rate(first: Sample, idled: Sample) -> float:
    """Instructions per second of a server doing nothing: ``idled`` served as many requests as ``first``
    and then waited longer before it was stopped."""
    if idled.requests != first.requests or idled.seconds <= first.seconds:
        raise ValueError("the idle run must serve the same requests and last longer")
    return (idled.instructions - first.instructions) / (idled.seconds - first.seconds)


def per_request_without_idle(first: Sample, second: Sample, rate: float) -> float:
    """``per_request`` once ``rate`` instructions per second of the N2 run's extra wall-clock time are off."""
    extra = per_request(first, second) * (second.requests - first.requests)
    return (extra - rate * (second.seconds - first.seconds)) / (second.requests - first.requests)


def per_request(first: Sample, second: Sample) -> float:
    """Instructions of one request: the difference of two runs over the difference of their requests."""
    if second.requests <= first.requests:
        raise ValueError(f"the second run must serve more requests ({second.requests} <= {first.requests})")
    return (second.instructions - first.instructions) / (second.requests - first.requests)


def totals(callgrind_out: str) -> int:
    """The instruction count of one callgrind output file (its ``totals:`` or ``summary:`` line)."""
    found = _TOTALS.search(callgrind_out)
    if found is None:
        raise ValueError("no totals: line in the callgrind output")
    return int(found.group(1))


@dataclass(frozen=True)
class Server:
    """How to start one backend (port, interpreter -> argv) and talk to it."""

    name: str
    argv: Callable[[int, Interpreter], list[str]]
    kept: bool  # one kept-alive connection, or a new connection per request
    stop_signal: int = signal.SIGTERM
    needs: str = ""  # "", "uwsgi" or "venv"


def _fcgiserve(method: str, *extra: str) -> Callable[[int, Interpreter], list[str]]:
    def argv(port: int, python: Interpreter) -> list[str]:
        base = [str(python.path), "-m", "fcgiserve", APP, "--method", method, "--host", "127.0.0.1"]
        return [*base, "--port", str(port), "--log-level", "warning", *extra]

    return argv


def _uwsgi(port: int, _python: Interpreter) -> list[str]:
    # One worker and no master: the master's work is per second, not per request.
    argv = [UWSGI, "--plugin", "python3", "--fastcgi-socket", f"127.0.0.1:{port}", "--processes", "1"]
    return [*argv, "--need-app", "--disable-logging", "--pythonpath", str(APPS), "--module", APP]


def _flup(port: int, python: Interpreter) -> list[str]:
    code = (
        "import sys; from flup.server.fcgi import WSGIServer; from hello_app import application; "
        "WSGIServer(application, bindAddress=('127.0.0.1', int(sys.argv[1])), maxThreads=50).run()"
    )
    return [str(python.venv_python), "-c", code, str(port)]


PREFORK_1X1 = ["--minspare", "1", "--maxspare", "1", "--maxchildren", "1", "--threads", "1", "--preload"]
PREFORK_1X1 = ["--minspare", "1", "--maxspare", "1", "--maxchildren", "1", "--threads", "1", "--preload"]
SERVERS = [
    Server("fcgiserve-threaded", _fcgiserve("threaded"), True),
    Server("fcgiserve-prefork-1x1", _fcgiserve("prefork", *PREFORK_1X1), True),
    Server("uwsgi-processes-1", _uwsgi, False, signal.SIGINT, "uwsgi"),
    Server("flup-threaded", _flup, True, needs="venv"),
]


def _listening(port: int) -> bool:
    """Whether something listens on 127.0.0.1:port, read from /proc (a probing connect would be served,
    and counted, a different number of times in the two runs)."""
    for table in ("/proc/net/tcp",):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[1] == f"0100007F:{port:04X}" and fields[3] == "0A":
                return True
    return False


def _new_connection_requests(port: int, count: int, deadline: float) -> int:
    """GET /hello ``count`` times, a new connection each (no FCGI_KEEP_CONN: the server closes it)."""
    client_params = PARAMS
    done = 0
    while done < count and time.monotonic() < deadline:
        with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
            client = ClientConnection()
            sock.sendall(
                client.begin_request(1, keep_conn=False)
                + client.send_params(1, client_params)
                + client.send_stdin(1, b"")
            )
            ended = False
            while not ended:
                data = sock.recv(65536)
                if not data:
                    break
                ended = any(isinstance(event, EndRequest) for event in client.receive_data(data))
            if not ended:
                raise RuntimeError(f"no END_REQUEST after {done} requests")
        done += 1
    return done


def measure(server: Server, python: Interpreter, requests: int, timeout: float, idle: float = 0.0) -> Sample:
    """Start ``server`` under callgrind, send ``requests`` hello requests, wait ``idle`` seconds, stop it;
    sum every process."""
    port = free_port()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(APPS), str(HERE.parent)])}
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    with tempfile.TemporaryDirectory(prefix="callgrind-") as tmp:
        valgrind = ["valgrind", "--tool=callgrind", "--trace-children=yes", "-q"]
        valgrind += [f"--callgrind-out-file={tmp}/out.%p"]
        process = subprocess.Popen(
            [*valgrind, *server.argv(port, python)],
            cwd=APPS,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + timeout
        try:
            while not _listening(port):
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"{server.name} did not listen: {process.stderr.read()[-500:]!r}")  # type: ignore[union-attr]
                time.sleep(0.2)
            send = send_requests if server.kept else _new_connection_requests
            began = time.monotonic()
            sent = send(port, requests, deadline)
            time.sleep(idle)
            seconds = time.monotonic() - began
            if sent != requests:
                raise RuntimeError(f"{server.name}: {sent} of {requests} requests before the timeout")
        finally:
            if process.poll() is None:
                process.send_signal(server.stop_signal)
            try:
                process.wait(timeout=120)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)
        counted = sum(totals(out.read_text(errors="replace")) for out in Path(tmp).glob("out.*"))
    return Sample(requests, counted, seconds)


def _unavailable(server: Server, python: Interpreter) -> str:
    if server.needs == "uwsgi":
        if shutil.which(UWSGI) is None or not UWSGI_PLUGIN.exists():
            return "uWSGI is not installed (uwsgi-core, uwsgi-plugin-python3)"
        if uwsgi_python() != python.minor:
            return f"uWSGI's plugin embeds Python {uwsgi_python()}, not {python.minor}"
    if server.needs == "venv" and not python.owns_venv():
        return f"no benchmark venv {python.venv.name} (benchmarks/run.py makes it)"
    return ""


def _extras(python: Interpreter) -> list[str]:
    """hotpath.py's Python calls per request, syscalls.py's totals; each line says how it was got."""
    lines: list[str] = []
    env = {**os.environ, "PYTHONPATH": str(HERE.parent)}
    hot = subprocess.run(
        [sys.executable, str(HERE / "hotpath.py"), "--requests", "2000"],
        capture_output=True, text=True, timeout=300, check=False, env=env,
    )  # fmt: skip
    calls = re.search(r"Python function calls \(cProfile, builtins included\) \| (\d+)", hot.stdout)
    lines.append(
        f"* Python function calls per request (`benchmarks/hotpath.py`, cProfile): {calls.group(1)}"
        if calls
        else f"* `benchmarks/hotpath.py` failed: {hot.stderr.strip()[-300:]}"
    )
    if shutil.which("strace") is None:
        return [*lines, "* syscalls per request: `python benchmarks/syscalls.py` needs strace"]
    for method in ("threaded", "prefork"):
        # syscalls.py serves bench_app (Django): the venv's python when there is one.
        done = subprocess.run(
            [python.runner(), str(HERE / "syscalls.py"), "--requests", "500", "--method", method],
            capture_output=True, text=True, timeout=300, check=False,
        )  # fmt: skip
        total = re.search(r"\| \*\*total\*\* \| \*\*([\d.]+)\*\* \| \*\*([\d.]+)\*\* \|", done.stdout)
        lines.append(
            f"* syscalls per request, fcgiserve {method}, one kept connection (`benchmarks/syscalls.py "
            f"--method {method} --requests 500`, strace): {total.group(1)} on the connection socket, "
            f"{total.group(2)} elsewhere"
            if total
            else f"* `benchmarks/syscalls.py --method {method}` failed: {done.stderr.strip()[-300:]}"
        )
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="benchmarks/instructions.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", default="200,1200", help="N1,N2 (default 200,1200)")
    parser.add_argument(
        "--backends", default="", help=f"of {', '.join(s.name for s in SERVERS)} (default all)"
    )
    parser.add_argument("--python", type=Path, default=DEFAULT_PYTHON, help="as run.py's --python")
    parser.add_argument("--timeout", type=float, default=600, help="seconds per callgrind run at most")
    parser.add_argument("--no-extras", action="store_true", help="skip hotpath.py and syscalls.py")
    parser.add_argument("--idle", type=float, default=10, help="seconds of the idle run (0: no idle run)")
    args = parser.parse_args(argv)
    try:
        n1, n2 = (int(n) for n in args.requests.split(","))
    except ValueError:
        parser.error("--requests takes N1,N2")
    if not 1 <= n1 < n2 <= 20_000:
        parser.error("--requests needs 1 <= N1 < N2 <= 20000")
    wanted = set(filter(None, args.backends.split(",")))
    if wanted - {s.name for s in SERVERS}:
        parser.error(f"unknown backend(s) {sorted(wanted)}")
    if shutil.which("valgrind") is None:
        raise SystemExit("valgrind is required (Debian package valgrind)")
    python = interpreter(args.python)
    rows = []
    for server in SERVERS:
        if wanted and server.name not in wanted:
            continue
        reason = _unavailable(server, python)
        if reason:
            rows.append(f"| {server.name} | unavailable: {reason} |  |  |  |  |  |")
            continue
        started = time.monotonic()
        first = measure(server, python, n1, args.timeout)
        second = measure(server, python, n2, args.timeout)
        idled = measure(server, python, n1, args.timeout, idle=args.idle) if args.idle else None
        rate = idle_rate(first, idled) if idled else 0.0
        print(f"{server.name}: {time.monotonic() - started:.0f} s", file=sys.stderr, flush=True)
        corrected = f"{per_request_without_idle(first, second, rate):,.0f}" if idled else "n/a"
        rows.append(
            f"| {server.name} | {per_request(first, second):,.0f} | {rate:,.0f} | {corrected} "
            f"| {first.instructions:,} | {second.instructions:,} | {'kept' if server.kept else 'new each'} |"
        )
    idle = f", idle run {args.idle:g} s" if args.idle else ""
    print(f"{python.describe()}; GET /hello, {n1} then {n2} requests{idle}, callgrind over every process\n")
    print(
        f"| backend | instructions per request | idle instructions/s | per request, idle rate off "
        f"| I({n1}) | I({n2}) | connection |"
    )
    print("|---|---:|---:|---:|---:|---:|---|")
    print("\n".join(rows))
    if not args.no_extras:
        print()
        print("\n".join(_extras(python)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
