"""p99 of hello-64 behind nginx (upstream ``keepalive 16``, ``fastcgi_keep_conn on``): prefork, one request
at a time per child (``--threads 1``, the default) against the former default of 4 threads per child.

    python benchmarks/keepalive_p99.py [--seconds 5] [--reps 3] [--maxchildren 6]

Both servers run at once behind one nginx, measured in turn (wrk, 64 connections, loopback); prints a markdown
table of req/s, p50 and p99 per rep and the median. Uses the machinery of run.py (bench_backends,
bench_measure); installs nothing.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_backends import Backend, Nginx, start_backends, stop_all
from bench_measure import WrkResult, run_wrk


def _prefork(threads: int, maxchildren: int) -> Backend:
    def argv(port: int) -> list[str]:
        return [
            sys.executable,
            "-m",
            "fcgiserve",
            "bench_app:application",
            "--method",
            "prefork",
            "--preload",
            "--maxchildren",
            str(maxchildren),
            "--threads",
            str(threads),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--log-level",
            "warning",
        ]

    label = f"fcgiserve prefork, {maxchildren} children x {threads} thread(s), kept conns"
    return Backend(f"prefork-threads-{threads}", label, "fcgi", True, "", argv, django=False)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="benchmarks/keepalive_p99.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--maxchildren", type=int, default=6)
    parser.add_argument("--connections", type=int, default=64)
    args = parser.parse_args(argv)
    backends = [_prefork(1, args.maxchildren), _prefork(4, args.maxchildren)]
    running, failed = start_backends(backends)
    if failed:
        print(failed, file=sys.stderr)
        stop_all(running)
        return 1
    nginx = Nginx(running)
    results: dict[str, list[WrkResult]] = {b.name: [] for b in backends}
    try:
        nginx.start()
        for backend in backends:  # warm-up: children forked, nginx's cache filled
            run_wrk(nginx.url(backend.name, "/hello"), args.connections, 2, None)
        for _rep in range(args.reps):
            for backend in backends:
                results[backend.name].append(
                    run_wrk(nginx.url(backend.name, "/hello"), args.connections, args.seconds, None)
                )
    finally:
        nginx.stop()
        stop_all(running)
    print(f"hello-{args.connections}, {args.reps} x {args.seconds} s, nginx keepalive 16\n")
    print("| server | req/s (median) | p50 ms (median) | p99 ms (median) | p99 ms per rep | errors |")
    print("|---|---:|---:|---:|---|---:|")
    for backend in backends:
        runs = results[backend.name]
        p99s = ", ".join(f"{r.p99_ms:.2f}" for r in runs)
        rps = statistics.median(r.rps for r in runs)
        p50, p99 = statistics.median(r.p50_ms for r in runs), statistics.median(r.p99_ms for r in runs)
        errors = sum(r.errors for r in runs)
        print(f"| {backend.label} | {rps:.0f} | {p50:.2f} | {p99:.2f} | {p99s} | {errors} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
