"""Where fcgiserve spends its time under load: py-spy samples the server while wrk drives it through nginx.

    python benchmarks/profile_server.py [--backend fcgiserve-threaded-keep] [--path /hello]
                                        [--connections 8] [--seconds 8] [--top 25] [--gil]

py-spy comes from the benchmark venv that run.py's setup creates (installed there on first use). It
samples every thread (and, for prefork, every child: ``--subprocesses``); this prints the functions with the
most samples, self (the frame on top of the stack) and inclusive (anywhere on the stack), as a share of all
samples. ``--gil`` keeps only samples of the thread holding the GIL, i.e. where the Python CPU goes; without
it, threads waiting for a lock or in a blocking call count too. Sampling slows the server a little; the
shares are what matter.
"""

from __future__ import annotations

import argparse
import collections
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_backends import BACKENDS, Nginx, interpreter, start_backends, stop_all
from bench_measure import run_wrk

__all__ = ["main", "summarise"]


def summarise(collapsed: str, top: int) -> str:
    """Self and inclusive sample shares per function from py-spy's raw (collapsed stack) output."""
    own: collections.Counter[str] = collections.Counter()
    anywhere: collections.Counter[str] = collections.Counter()
    total = 0
    for line in collapsed.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [f for f in stack.split(";") if not f.startswith(("process ", "thread "))]
        if not frames:
            continue
        total += count
        own[frames[-1]] += count
        for frame in set(frames):
            anywhere[frame] += count
    if total == 0:
        return "no samples"
    lines = [f"{total} samples", "", "| self % | function (file:line) |", "|---:|---|"]
    lines += [f"| {100 * n / total:.1f} | `{name}` |" for name, n in own.most_common(top)]
    lines += ["", "| inclusive % | function (file:line) |", "|---:|---|"]
    lines += [f"| {100 * n / total:.1f} | `{name}` |" for name, n in anywhere.most_common(top)]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", default="fcgiserve-threaded-keep", choices=[b.name for b in BACKENDS])
    parser.add_argument("--path", default="/hello")
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--seconds", type=int, default=8, choices=range(2, 61), metavar="2..60")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--gil", action="store_true", help="only samples holding the GIL (Python CPU time)")
    args = parser.parse_args(argv)
    venv = interpreter().venv  # the default interpreter's benchmark venv
    py_spy = venv / "bin" / "py-spy"
    if not py_spy.exists() and (venv / "bin" / "pip").exists():
        print(f"installing py-spy into {venv} (pip)", file=sys.stderr)
        subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "py-spy"], timeout=600, check=False)
    if not py_spy.exists():
        raise SystemExit(
            f"{py_spy} is missing: run benchmarks/run.py once, then {venv}/bin/pip install py-spy"
        )
    backend = next(b for b in BACKENDS if b.name == args.backend)
    live, failed = start_backends([backend])
    if failed:
        raise SystemExit(failed[backend.name])
    nginx = Nginx(live)
    try:
        nginx.start()
        for _ in range(20):
            nginx.get(backend.name, args.path)
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "profile.txt"
            spy = [str(py_spy), "record", "--format", "raw", "-o", str(out), "-d", str(args.seconds - 1)]
            spy += [
                "-r",
                "200",
                "--subprocesses",
                *(["--gil"] if args.gil else []),
                "-p",
                str(live[0].process.pid),
            ]
            load = threading.Thread(
                target=run_wrk,
                args=(nginx.url(backend.name, args.path), args.connections, args.seconds, None),
            )
            load.start()
            subprocess.run(spy, capture_output=True, timeout=args.seconds + 60, check=False)
            load.join(timeout=args.seconds + 60)
            collapsed = out.read_text() if out.exists() else ""
    finally:
        nginx.stop()
        stop_all(live)
    holding = ", GIL holders only" if args.gil else ""
    print(f"{args.backend}, {args.path}, {args.connections} connections, {args.seconds} s{holding}:")
    print(summarise(collapsed, args.top))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
