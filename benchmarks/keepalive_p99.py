"""p99 under kept-alive load: prefork one request at a time per child against 4 threads per child.

    python benchmarks/keepalive_p99.py [--duration S] [--reps N] [--connections C]

wrk GETs /hello over 64 connections (``--connections``) through one nginx whose upstreams keep up to 16
FastCGI connections alive (``keepalive 16`` + ``fastcgi_keep_conn on``), against:

* prefork, 6 children, ``--threads 1`` (one request at a time per child: ``maxchildren`` run at once),
* prefork, 6 children, ``--threads 4`` (the default before issue 13),
* threaded, its defaults (for scale).

Repetitions are interleaved (A B C A B C ...) and each figure is the median over them, as in run.py, whose
machinery this uses (bench_backends for the processes and nginx, run._bench for the wrk runs). Prints a
markdown table with every ratio to prefork ``--threads 4``; the issue's bar is a p99 ratio of at most 1 for
``--threads 1``. About (3 backends x reps x duration) seconds: 45 s by default. Installs nothing.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_backends import (
    DEFAULT_PYTHON,
    Nginx,
    fcgiserve_backend,
    interpreter,
    prepare,
    start_backends,
    stop_all,
)
from bench_report import figures
from run import WORKLOADS, _bench, _warm_up

CHILDREN = ["--minspare", "6", "--maxspare", "6", "--maxchildren", "6"]
BASE = "prefork-6x4"
BACKENDS = [
    fcgiserve_backend(
        "prefork-6x1", "prefork 6 children, --threads 1", "prefork", [*CHILDREN, "--threads", "1"]
    ),
    fcgiserve_backend(BASE, "prefork 6 children, --threads 4", "prefork", [*CHILDREN, "--threads", "4"]),
    fcgiserve_backend("threaded", "threaded (defaults)", "threaded"),
]


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="benchmarks/keepalive_p99.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=int, default=5, help="seconds per wrk run (1..30, default 5)")
    parser.add_argument("--reps", type=int, default=3, help="interleaved repetitions (1..5, default 3)")
    parser.add_argument("--connections", type=int, default=64, help="wrk connections (default 64)")
    parser.add_argument(
        "--python", type=Path, default=DEFAULT_PYTHON, help="the servers' interpreter (as run.py)"
    )
    args = parser.parse_args(argv)
    if not 1 <= args.duration <= 30 or not 1 <= args.reps <= 5 or not 1 <= args.connections <= 256:
        parser.error("--duration must be 1..30, --reps 1..5, --connections 1..256")
    hello = next(w for w in WORKLOADS if w.name == "hello-64")
    args.selected = [replace(hello, name=f"hello-{args.connections}", connections=args.connections)]
    return args


def _table(runs: list[dict[str, Any]], workload: str, unavailable: dict[str, str]) -> str:
    base = figures(runs, workload, BASE)
    lines = [
        f"### {workload} behind nginx keepalive 16 (median of the repetitions; ratios to {BASE})",
        "",
        "| backend | req/s | p50 ms | p99 ms | errors | req/s ratio | p99 ratio |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for backend in BACKENDS:
        fig = figures(runs, workload, backend.name)
        if fig is None:
            lines.append(f"| {backend.label} | unavailable: {unavailable.get(backend.name, 'not run')} |")
            continue
        rps = f"{fig['rps'] / base['rps']:.2f}" if base else "n/a"
        p99 = f"{fig['p99'] / base['p99']:.2f}" if base else "n/a"
        lines.append(
            f"| {backend.label} | {fig['rps']:,.0f} | {fig['p50']:.2f} | {fig['p99']:.2f} | "
            f"{fig['errors']:.0f} | {rps} | {p99} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Measure and print the table; the exit status is 1 when a backend could not be measured."""
    args = _parse(argv)
    python = interpreter(args.python)
    prepare(install=False, python=python)  # wrk and nginx must be there; nothing else is needed
    unavailable: dict[str, str] = {}
    live, failed = start_backends(BACKENDS, python)
    unavailable.update(failed)
    nginx = Nginx(live)
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    try:
        nginx.start()
        warm = {r.backend.name: _warm_up(nginx, r) for r in live}
        unavailable.update((name, reason) for name, reason in warm.items() if reason)
        runs, _memory = _bench(args, [r for r in live if not warm[r.backend.name]], nginx, unavailable)
    finally:
        nginx.stop()
        stop_all(live)
    print(f"{started}, {args.reps} x {args.duration} s per backend\n")
    print(_table(runs, args.selected[0].name, unavailable))
    return 1 if unavailable else 0


if __name__ == "__main__":
    raise SystemExit(main())
