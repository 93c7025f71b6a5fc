"""Soak test: mixed load through nginx for a long time; errors, RSS and file descriptors over time.

    python benchmarks/soak.py [--duration 600] [--method threaded|prefork] [--clients 8] [--interval 15]
                              [--json PATH] [--server-args '--maxchildren 4 ...']

Not part of CI (it runs for 10 minutes by default). One fcgiserve (the hostile suite's application,
tests/hostile/hostile_app.py) behind one nginx with kept-alive upstream connections, both on loopback, and
``--clients`` threads sending a weighted mix: small GETs, 10 KiB and 300 KiB POST bodies (the latter spooled
to disk), 1 MiB downloads, slow requests, application errors (an expected 500) and bodies over the limit
(an expected 413). Every ``--interval`` seconds it samples the server's process tree: VmRSS and open file
descriptors. The goals: zero unexpected responses, flat RSS, flat descriptors; the exit status is 1 when a
goal is missed. Everything it starts is stopped when it ends (Ctrl-C included).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shlex
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.helpers import children_of, http_get, run_fcgiserve, run_nginx, tree_rss_kib  # noqa: E402

APP = "tests.hostile.hostile_app:app"
WARMUP = 20.0  # seconds before the first sample counts as the baseline (caches, arenas, spare workers)
RSS_SLACK_KIB = 8 * 1024  # growth tolerated between the baseline and the end
FD_SLACK = 8

# (name, weight, method, path, body size, expected status)
MIX = [
    ("get", 40, "GET", "/", 0, 200),
    ("post-10k", 20, "POST", "/echo", 10 * 1024, 200),
    ("post-300k", 5, "POST", "/echo", 300 * 1024, 200),
    ("download-1m", 5, "GET", "/big?n=1048576", 0, 200),
    ("slow", 10, "GET", "/sleep?n=0.05", 0, 200),
    ("app-error", 3, "GET", "/raise/call", 0, 500),
    ("too-large", 2, "POST", "/echo", 2 * 1024 * 1024, 413),
]


_NOTABLE = ("[error]", " WARNING ", " ERROR ")  # log lines worth showing next to failed requests


@dataclass
class Sample:
    elapsed: float
    requests: int
    errors: int
    rss_kib: int  # the whole process tree
    largest_kib: int  # its largest process: comparable even when prefork's child count changes
    fds: int
    processes: int


@dataclass
class Report:
    method: str
    duration: float
    clients: int
    requests: int = 0
    errors: int = 0
    by_kind: dict[str, int] = field(default_factory=dict)
    error_examples: list[str] = field(default_factory=list)
    samples: list[Sample] = field(default_factory=list)
    diagnostics: list[str] = field(default_factory=list)  # log lines of nginx and fcgiserve when errors

    def verdicts(self) -> list[tuple[str, bool, str]]:
        base = [s for s in self.samples if s.elapsed >= WARMUP] or self.samples
        first, last = base[0], base[-1]
        rss_growth = last.largest_kib - first.largest_kib
        # Each prefork child holds its own descriptors: compare per process when the child count changed.
        fd_growth = last.fds / last.processes - first.fds / first.processes
        return [
            ("zero errors", self.errors == 0, f"{self.errors} of {self.requests}"),
            (
                "flat RSS",
                rss_growth <= RSS_SLACK_KIB,
                f"largest process {first.largest_kib} -> {last.largest_kib} KiB (tree {first.rss_kib} -> "
                f"{last.rss_kib} KiB, {first.processes} -> {last.processes} processes)",
            ),
            ("flat fds", fd_growth <= FD_SLACK, f"{first.fds} -> {last.fds} in all"),
        ]


def largest_rss_kib(pid: int) -> int:
    return max(process_rss_kib(p) for p in [pid, *children_of(pid)])


def process_rss_kib(pid: int) -> int:
    """VmRSS of one process (0 once it is gone)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            return next((int(line.split()[1]) for line in f if line.startswith("VmRSS:")), 0)
    except OSError:
        return 0


def tree_fds(pid: int) -> int:
    total = 0
    for p in [pid, *children_of(pid)]:
        try:
            total += len(os.listdir(f"/proc/{p}/fd"))
        except OSError:
            pass
    return total


class Load:
    """``clients`` threads sending the mix until ``stop`` is set; counts under one lock."""

    def __init__(self, url: str, clients: int, seed: int) -> None:
        self.url = url
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.requests = 0
        self.errors = 0
        self.by_kind: Counter[str] = Counter()
        self.examples: list[str] = []
        self.threads = [
            threading.Thread(target=self._run, args=(random.Random(seed + i),), daemon=True)
            for i in range(clients)
        ]

    def start(self) -> None:
        for thread in self.threads:
            thread.start()

    def join(self) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(60)

    def _run(self, rng: random.Random) -> None:
        weights = [entry[1] for entry in MIX]
        while not self.stop.is_set():
            name, _, method, path, size, expected = rng.choices(MIX, weights)[0]
            body = b"s" * size if method == "POST" else None
            try:
                status, _, _ = http_get(self.url + path, data=body, timeout=30)
                problem = None if status == expected else f"{name}: status {status}, expected {expected}"
            except OSError as exc:
                problem = f"{name}: {exc!r}"
            with self.lock:
                self.requests += 1
                self.by_kind[name] += 1
                if problem is not None:
                    self.errors += 1
                    if len(self.examples) < 20:
                        self.examples.append(problem)


def soak(method: str, duration: float, clients: int, interval: float, extra: list[str]) -> Report:
    report = Report(method, duration, clients)
    with tempfile.TemporaryDirectory(prefix="fcgiserve-soak-") as tmp:
        tmp_path = Path(tmp)
        args = [APP, "--method", method, "--max-body-size", "1M", "--log-level", "warning", *extra]
        with (
            run_fcgiserve(args, tmp_path, cwd=ROOT) as server,
            run_nginx(tmp_path, f"127.0.0.1:{server.port}", keep_conn=True) as nginx,
        ):
            load = Load(nginx.url, clients, seed=6)
            started = time.monotonic()
            load.start()
            try:
                while True:
                    elapsed = time.monotonic() - started
                    with load.lock:
                        requests, errors = load.requests, load.errors
                    sample = Sample(
                        round(elapsed, 1),
                        requests,
                        errors,
                        tree_rss_kib(server.pid),
                        largest_rss_kib(server.pid),
                        tree_fds(server.pid),
                        1 + len(children_of(server.pid)),
                    )
                    report.samples.append(sample)
                    print(
                        f"{sample.elapsed:7.1f}s  requests {requests:8d}  errors {errors:4d}  "
                        f"rss {sample.rss_kib:7d} KiB (largest {sample.largest_kib:6d})  "
                        f"fds {sample.fds:4d}  processes {sample.processes}",
                        flush=True,
                    )
                    if elapsed >= duration or server.proc.poll() is not None:
                        break
                    time.sleep(min(interval, max(0.0, duration - elapsed)))
            finally:
                load.join()
            report.requests, report.errors = load.requests, load.errors
            report.by_kind = dict(load.by_kind)
            report.error_examples = load.examples
            if report.errors:  # what the two logs said, before the temporary directory goes away
                lines = nginx.error_log().splitlines() + server.log().splitlines()
                notable = [line[:300] for line in lines if any(mark in line for mark in _NOTABLE)]
                report.diagnostics = notable[:30]
            if server.proc.poll() is not None:
                report.errors += 1
                report.error_examples.append(f"the server exited with {server.proc.returncode}")
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=600.0, help="seconds of load (default 600)")
    parser.add_argument("--method", choices=["threaded", "prefork"], default="threaded")
    parser.add_argument("--clients", type=int, default=8, help="concurrent HTTP clients (default 8)")
    parser.add_argument("--interval", type=float, default=15.0, help="seconds between samples (default 15)")
    parser.add_argument("--json", type=Path, help="also write the report here")
    parser.add_argument(
        "--server-args", default="", help="more fcgiserve options, one string, e.g. '--maxchildren 4'"
    )
    options = parser.parse_args(argv)
    if not 1 <= options.clients <= 256 or not 0 < options.duration <= 24 * 3600:
        parser.error("--clients must be 1..256 and --duration 0..86400")
    extra = shlex.split(options.server_args)
    report = soak(options.method, options.duration, options.clients, options.interval, extra)
    print(f"\n{report.requests} requests in {report.duration:g}s by kind: {report.by_kind}")
    for example in report.error_examples:
        print(f"  error: {example}")
    for line in report.diagnostics:
        print(f"  log: {line}")
    ok = True
    for name, passed, detail in report.verdicts():
        ok &= passed
        print(f"{'PASS' if passed else 'FAIL'}  {name}: {detail}")
    if options.json is not None:
        options.json.write_text(json.dumps(asdict(report), indent=2))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
