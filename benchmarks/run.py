"""The side-by-side benchmark suite: one command, every backend behind the same nginx, interleaved runs.

    python benchmarks/run.py [--quick] [--only NAME[,NAME..]] [--workloads NAME[,NAME..]]
                             [--duration S] [--reps N] [--no-setup] [--results-dir DIR] [--no-chart]
                             [--python PATH] [--unix]

Setup (skipped with --no-setup, which installs nothing and reports missing extras as unavailable rows):
a benchmark-only venv per interpreter in benchmarks/.venv-<major.minor>, made by --python's ``-m venv``
(flup 1.0.3, gunicorn, Django, matplotlib; pip), the C libfcgi responder built into benchmarks/.work
(apt-get install libfcgi-dev if it is missing), uWSGI (apt-get install uwsgi-core uwsgi-plugin-python3 if
missing). Every Python row runs under --python (default /usr/bin/python3, Debian's, which uWSGI's plugin
embeds). Then every backend is started on its own loopback port (with --unix: its own unix socket), one
nginx fronts them all, and wrk runs each workload against each backend in turn, repetition after
repetition (A B C A B C ...), so drift of the machine hits every backend alike.
Writes results/latest.json, results/latest.md and the chart results/latest.png (or .svg).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_backends import (
    BACKENDS,
    DEFAULT_PYTHON,
    UWSGI,
    WORK,
    Backend,
    Interpreter,
    Nginx,
    Running,
    interpreter,
    prepare,
    start_backends,
    stop_all,
)
from bench_measure import cpu_seconds, process_activity, run_wrk, split_of, tree_memory, tree_pss_kib
from bench_report import render_markdown

__all__ = ["WORKLOADS", "Workload", "main"]

HERE = Path(__file__).resolve().parent
POST_LUA = 'wrk.method = "POST"\nwrk.body = string.rep("x", 1048576)\n'
POST_LUA += 'wrk.headers["Content-Type"] = "application/octet-stream"\n'
MIXED_LUA = """local paths = {"/hello", "/django/?sort=score", "/big", "/hello", "/echo"}
local body = string.rep("y", 16384)
local n = 0
request = function()
  n = n + 1
  local path = paths[(n % #paths) + 1]
  if path == "/echo" then
    return wrk.format("POST", path, {["Content-Type"] = "application/octet-stream"}, body)
  end
  return wrk.format("GET", path)
end
"""


@dataclass(frozen=True)
class Workload:
    """One wrk load: a path (or a Lua script), a connection count, and whether it is in the quick set."""

    name: str
    description: str
    path: str
    connections: int
    lua: str = ""
    quick: bool = False
    django: bool = False


WORKLOADS = [
    Workload("hello-1", "GET /hello (13 bytes), 1 connection", "/hello", 1),
    Workload("hello-8", "GET /hello (13 bytes), 8 connections", "/hello", 8, quick=True),
    Workload("hello-64", "GET /hello (13 bytes), 64 connections", "/hello", 64),
    Workload("big-8", "GET /big (100 KiB response), 8 connections", "/big", 8, quick=True),
    Workload("post-8", "POST /echo, 1 MiB body echoed back, 8 connections", "/echo", 8, POST_LUA, quick=True),
    Workload("django-8", "GET a Django view (template, 20 items), 8 connections", "/django/?sort=score", 8,
             django=True),
    Workload("mixed-16", "hello, Django, 100 KiB, 16 KiB POST echo in rotation, 16 connections", "/", 16,
             MIXED_LUA, django=True),
]  # fmt: skip


def machine_line(python: Interpreter) -> str:
    """nproc, CPU model, kernel, the Python rows' interpreter, nginx, wrk and uWSGI versions."""
    model = "unknown CPU"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    nginx = subprocess.run(["/usr/sbin/nginx", "-v"], capture_output=True, text=True, timeout=10, check=False)
    wrk = subprocess.run(["wrk", "-v"], capture_output=True, text=True, timeout=10, check=False)
    wrk_version = (wrk.stdout + wrk.stderr).split(" [")[0].strip()
    try:
        uwsgi = subprocess.run([UWSGI, "--version"], capture_output=True, text=True, timeout=10, check=False)
        uwsgi_version = f", uWSGI {uwsgi.stdout.strip()}"
    except OSError:
        uwsgi_version = ""
    return (
        f"{os.cpu_count()} CPUs ({model}), Linux {platform.release()}, {python.describe()}, "
        f"{nginx.stderr.strip().removeprefix('nginx version: ')}, {wrk_version}{uwsgi_version}"
    )


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="benchmarks/run.py", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--quick", action="store_true", help="hello-8, big-8, post-8 at 2 s x 2 reps: about 3 minutes"
    )
    parser.add_argument("--only", default="", help="comma-separated backend names (default: all)")
    parser.add_argument("--workloads", default="", help="comma-separated workload names")
    parser.add_argument(
        "--duration", type=int, default=0, help="seconds per wrk run (default 2 quick, 5 full)"
    )
    parser.add_argument(
        "--reps", type=int, default=0, help="interleaved repetitions (default 2 quick, 3 full)"
    )
    parser.add_argument("--no-setup", action="store_true", help="install nothing (no pip, no apt-get)")
    parser.add_argument("--results-dir", type=Path, default=HERE / "results")
    parser.add_argument("--no-chart", action="store_true", help="skip the chart")
    parser.add_argument(
        "--python",
        type=Path,
        default=DEFAULT_PYTHON,
        help="the interpreter of every Python row; its venv is benchmarks/.venv-<major.minor> "
        f"(default {DEFAULT_PYTHON}, which uWSGI's python3 plugin embeds)",
    )
    parser.add_argument(
        "--unix",
        action="store_true",
        help="backends listen on unix sockets, nginx connects to them there (default: loopback TCP); "
        "wrk still talks TCP to nginx",
    )
    args = parser.parse_args(argv)
    names = {b.name for b in BACKENDS}
    args.backends = [b for b in BACKENDS if not args.only or b.name in args.only.split(",")]
    unknown = set(filter(None, args.only.split(","))) - names
    if unknown:
        parser.error(f"unknown backend(s) {sorted(unknown)}; choose from {sorted(names)}")
    wanted = set(filter(None, args.workloads.split(",")))
    if wanted - {w.name for w in WORKLOADS}:
        parser.error(f"unknown workload(s) {sorted(wanted)}; choose from {[w.name for w in WORKLOADS]}")
    args.selected = [w for w in WORKLOADS if (w.name in wanted if wanted else (w.quick or not args.quick))]
    if args.unix and any(w.name == "post-8" for w in args.selected):
        # Over unix sockets (about 200 KiB of buffer each way) a backend that streams the 1 MiB echo back
        # while the body still arrives stalls: nginx sends no more of a body once the response has begun.
        # uWSGI and the C responder stall; fcgiserve takes the whole body first (docs/performance.md).
        print("post-8 skipped with --unix: nginx and a streaming echo stall there", file=sys.stderr)
        args.selected = [w for w in args.selected if w.name != "post-8"]
    args.duration = args.duration or (2 if args.quick else 5)
    args.reps = args.reps or (2 if args.quick else 3)
    if not 1 <= args.duration <= 60 or not 1 <= args.reps <= 10:
        parser.error("--duration must be 1..60 and --reps 1..10")
    return args


def _warm_up(nginx: Nginx, running: Running) -> str:
    """A few requests on every path so lazy imports and prefork children are in place before idle RSS;
    the reason the backend cannot be measured, or "" when every answer was a 200."""
    paths = ["/hello", "/big"] + (["/django/?sort=score"] if running.backend.django else [])
    for path in paths * 5:
        status = nginx.get(running.backend.name, path)
        if status != 200:
            return f"warm-up GET {path} answered {status or 'nothing'}; see {running.log_name}"
    return ""


def _memory(running: Running) -> list[list[int]]:
    return [[pid, kib] for pid, kib in tree_memory(running.process.pid).per_process]


def _bench(
    args: argparse.Namespace, live: list[Running], nginx: Nginx, unavailable: dict[str, str]
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Every selected workload against every live backend, repetitions interleaved. A backend whose root
    process dies is recorded in ``unavailable`` (the run it died in is dropped) and not loaded again."""
    runs: list[dict[str, Any]] = []
    memory: dict[str, Any] = {}
    time.sleep(0.5)
    for running in live:
        idle = _memory(running)
        memory[running.backend.name] = {
            "idle": idle,
            "idle_total": sum(k for _p, k in idle),
            "idle_pss": tree_pss_kib(running.process.pid),
        }
    scripts: dict[str, Path] = {}
    for workload in args.selected:
        if workload.lua:
            scripts[workload.name] = WORK / f"{workload.name}.lua"
            scripts[workload.name].write_text(workload.lua)
    total = sum(len(live) for _w in args.selected) * args.reps
    done, started = 0, time.monotonic()
    for workload in args.selected:
        before = {r.backend.name: sum(k for _p, k in _memory(r)) for r in live}
        for rep in range(args.reps):
            for running in live:
                done += 1
                name = running.backend.name
                if (workload.django and not running.backend.django) or name in unavailable:
                    continue
                root = running.process.pid
                cpu_before, activity_before = cpu_seconds(root), process_activity(root)
                result = run_wrk(nginx.url(name, workload.path), workload.connections, args.duration,
                                 scripts.get(workload.name))  # fmt: skip
                cpu = cpu_seconds(root) - cpu_before
                split = split_of(root, activity_before, process_activity(root))
                if running.process.poll() is not None:
                    unavailable[name] = (
                        f"died during {workload.name} (repetition {rep + 1}, exit status "
                        f"{running.process.returncode}); see {running.log_name}"
                    )
                    print(f"{name}: {unavailable[name]}", file=sys.stderr, flush=True)
                    continue
                runs.append(
                    {
                        "workload": workload.name,
                        "backend": name,
                        "rep": rep,
                        **asdict(result),
                        "cpu_s": cpu,
                        "split": split,
                    }
                )
                elapsed = time.monotonic() - started
                print(
                    f"[{done}/{total} {elapsed:.0f}s] {workload.name} {name}: {result.rps:,.0f} req/s "
                    f"p99 {result.p99_ms:.2f} ms, {result.errors} errors, "
                    f"{1e6 * cpu / max(1, result.requests):.0f} µs CPU/req",
                    file=sys.stderr,
                    flush=True,
                )
        for running in live:
            if running.backend.name in unavailable:
                continue
            grown = sum(k for _p, k in _memory(running)) - before[running.backend.name]
            memory[running.backend.name][f"{workload.name}_growth_kib"] = grown
            if workload.name == "post-8":
                memory[running.backend.name]["post_growth_kib"] = grown
    for running in live:
        after = _memory(running)
        memory[running.backend.name].update(
            after=after, after_total=sum(k for _p, k in after), after_pss=tree_pss_kib(running.process.pid)
        )
    return runs, memory


def _chart(json_path: Path, stem: Path, venv: Interpreter | None) -> str:
    python = str(venv.venv_python) if venv is not None else sys.executable
    env = {**os.environ, "PYTHONPATH": str(HERE)}
    done = subprocess.run(
        [python, str(HERE / "bench_chart.py"), str(json_path), str(stem)],
        capture_output=True, text=True, timeout=120, check=False, env=env,
    )  # fmt: skip
    if done.returncode != 0:
        return f"chart failed: {done.stderr.strip()[-300:]}"
    return done.stdout.strip()


def main(argv: list[str] | None = None) -> int:
    """Run the suite; the exit status is 0 when every selected backend was measured."""
    args = _parse(argv)
    python = interpreter(args.python)
    setup = prepare(install=not args.no_setup, python=python)
    unavailable = {b.name: setup.missing[b.needs] for b in args.backends if b.needs in setup.missing}
    chosen: list[Backend] = [b for b in args.backends if b.name not in unavailable]
    live: list[Running] = []
    nginx: Nginx | None = None
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    try:
        live, failed = start_backends(chosen, python, unix=args.unix)
        unavailable.update(failed)
        nginx = Nginx(live)
        nginx.start()
        warm = {r.backend.name: _warm_up(nginx, r) for r in live}
        unavailable.update((name, reason) for name, reason in warm.items() if reason)
        runs, memory = _bench(args, [r for r in live if not warm[r.backend.name]], nginx, unavailable)
    finally:
        if nginx is not None:
            nginx.stop()
        stop_all(live)
    data = {
        "mode": ("quick" if args.quick else "full") + (" (filtered)" if args.only or args.workloads else ""),
        "started": started,
        "finished": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": machine_line(python),
        "python": {"path": str(python.path), "version": python.version},
        "transport": "unix sockets" if args.unix else "loopback TCP",
        "command": shlex.join(["python", "benchmarks/run.py", *(sys.argv[1:] if argv is None else argv)]),
        "duration": args.duration,
        "reps": args.reps,
        "workloads": [asdict(w) for w in args.selected],
        "backends": [{"name": b.name, "label": b.label, "django": b.django} for b in args.backends],
        "unavailable": unavailable,
        "runs": runs,
        "memory": memory,
    }
    args.results_dir.mkdir(parents=True, exist_ok=True)
    json_path = args.results_dir / "latest.json"
    json_path.write_text(json.dumps(data, indent=1) + "\n")
    (args.results_dir / "latest.md").write_text(render_markdown(data))
    print(f"wrote {args.results_dir / 'latest.md'}", file=sys.stderr)
    if not args.no_chart:
        chart = _chart(json_path, args.results_dir / "latest", python if setup.has_matplotlib else None)
        print(f"chart: {chart}", file=sys.stderr)
    return 1 if unavailable else 0


if __name__ == "__main__":
    raise SystemExit(main())
