"""What the suite measures: one wrk run (parsed), and the CPU time and RSS of a backend's process tree.

CPU comes from /proc/<pid>/stat: utime+stime+cutime+cstime summed over the live tree, so a child that exits
and is reaped during a run still counts (its time moves into its parent's cutime). RSS is VmRSS from
/proc/<pid>/status, per process.
"""

from __future__ import annotations

import os
import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "ProcessMemory",
    "WrkResult",
    "cpu_seconds",
    "parse_wrk",
    "process_activity",
    "process_tree",
    "run_wrk",
    "split_of",
    "tree_memory",
    "tree_pss_kib",
]

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1000.0, "m": 60000.0}
_LATENCY = re.compile(r"^\s*(50|99)(?:\.0+)?%\s+([\d.]+)(us|ms|s|m)\s*$", re.MULTILINE)
_REQUESTS = re.compile(r"^\s*(\d+) requests in ([\d.]+)(us|ms|s|m)", re.MULTILINE)
_SOCKET = re.compile(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)")
_NON2XX = re.compile(r"Non-2xx or 3xx responses: (\d+)")


@dataclass(frozen=True)
class WrkResult:
    """One wrk run. Latencies in milliseconds; ``errors`` = non-2xx/3xx + socket errors of every kind."""

    requests: int
    seconds: float
    p50_ms: float
    p99_ms: float
    errors: int

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds > 0 else 0.0


def parse_wrk(output: str) -> WrkResult:
    """Parse ``wrk --latency`` output; raise ValueError if it has no request count (wrk failed)."""
    counted = _REQUESTS.search(output)
    if counted is None:
        raise ValueError(f"wrk printed no request count:\n{output}")
    seconds = float(counted.group(2)) * _UNITS[counted.group(3)] / 1000.0
    latencies = {m.group(1): float(m.group(2)) * _UNITS[m.group(3)] for m in _LATENCY.finditer(output)}
    errors = 0
    socket_errors = _SOCKET.search(output)
    if socket_errors is not None:
        errors += sum(int(n) for n in socket_errors.groups())
    non2xx = _NON2XX.search(output)
    if non2xx is not None:
        errors += int(non2xx.group(1))
    return WrkResult(
        requests=int(counted.group(1)),
        seconds=seconds,
        p50_ms=latencies.get("50", float("nan")),
        p99_ms=latencies.get("99", float("nan")),
        errors=errors,
    )


def run_wrk(url: str, connections: int, duration: int, script: Path | None) -> WrkResult:
    """Run wrk once against ``url`` (loopback only); bounded by its own -d plus a hard timeout."""
    if not url.startswith("http://127.0.0.1:"):
        raise ValueError(f"load is only ever sent to loopback, not {url}")
    argv = ["wrk", f"-t{min(2, connections)}", f"-c{connections}", f"-d{duration}s", "--timeout", "10s"]
    argv += ["--latency", *(["-s", str(script)] if script else []), url]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=duration + 30, check=False)
    return parse_wrk(done.stdout + done.stderr)


def _stat_fields(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name sits in parentheses and may hold spaces: split after its closing paren.
    return raw[raw.rindex(")") + 2 :].split()


def process_tree(root: int) -> list[int]:
    """``root`` and all its live descendants, parents before children."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = _stat_fields(int(entry))
            if fields is not None:
                children.setdefault(int(fields[1]), []).append(int(entry))
    tree: list[int] = []
    todo = [root] if Path(f"/proc/{root}").exists() else []
    while todo and len(tree) < 10_000:
        pid = todo.pop(0)
        tree.append(pid)
        todo.extend(sorted(children.get(pid, [])))
    return tree


def cpu_seconds(root: int) -> float:
    """User+system CPU of the tree so far, reaped children included."""
    ticks = 0
    for pid in process_tree(root):
        fields = _stat_fields(pid)
        if fields is not None:
            ticks += sum(int(fields[i]) for i in (11, 12, 13, 14))  # utime stime cutime cstime
    return ticks / CLOCK_TICKS


def _voluntary_switches(pid: int) -> int | None:
    """Voluntary context switches of every thread of ``pid`` (/proc/<pid>/status counts its main one only)."""
    try:
        threads = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return None
    total = 0
    for tid in threads:
        try:
            status = Path(f"/proc/{pid}/task/{tid}/status").read_text()
        except OSError:
            continue  # the thread exited meanwhile
        found = re.search(r"^voluntary_ctxt_switches:\s+(\d+)", status, re.MULTILINE)
        total += int(found.group(1)) if found else 0
    return total


def process_activity(root: int) -> dict[int, tuple[float, int]]:
    """Per live process of the tree: (its own user+system CPU seconds, voluntary context switches of its
    threads: how often they went to sleep waiting for work)."""
    activity: dict[int, tuple[float, int]] = {}
    for pid in process_tree(root):
        fields = _stat_fields(pid)
        switches = _voluntary_switches(pid)
        if fields is not None and switches is not None:
            activity[pid] = ((int(fields[11]) + int(fields[12])) / CLOCK_TICKS, switches)
    return activity


def split_of(
    root: int, before: dict[int, tuple[float, int]], after: dict[int, tuple[float, int]]
) -> dict[str, object]:
    """How a run's CPU split across the tree: the root's share and every other process's, largest first
    (percent of the processes' CPU over the run), and the voluntary switches of all of them. A process
    that did not live through the whole run counts from zero, or up to its last look."""
    spent: dict[int, float] = {}
    switches = 0
    for pid in before.keys() | after.keys():
        cpu_after, sw_after = after.get(pid, before.get(pid, (0.0, 0)))
        cpu_before, sw_before = before.get(pid, (0.0, 0))
        spent[pid] = max(0.0, cpu_after - cpu_before)
        switches += max(0, sw_after - sw_before)
    total = sum(spent.values()) or 1.0
    others = sorted((100 * cpu / total for pid, cpu in spent.items() if pid != root), reverse=True)
    root_pct = round(100 * spent.get(root, 0.0) / total, 1)
    return {"root_pct": root_pct, "others_pct": [round(x, 1) for x in others], "voluntary_switches": switches}


@dataclass(frozen=True)
class ProcessMemory:
    """RSS of a process tree: the total and each process (root first), in KiB."""

    per_process: list[tuple[int, int]] = field(default_factory=list)

    @property
    def total_kib(self) -> int:
        return sum(rss for _pid, rss in self.per_process)


def _rss_kib(pid: int) -> int | None:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    found = re.search(r"^VmRSS:\s+(\d+) kB", status, re.MULTILINE)
    return int(found.group(1)) if found else None


def tree_memory(root: int) -> ProcessMemory:
    """Current RSS of every live process of the tree."""
    sizes = [(pid, _rss_kib(pid)) for pid in process_tree(root)]
    return ProcessMemory([(pid, rss) for pid, rss in sizes if rss is not None])


def tree_pss_kib(root: int) -> int:
    """Proportional set size of the whole tree (0 for a process whose smaps_rollup is unreadable)."""
    total = 0
    for pid in process_tree(root):
        try:
            rollup = Path(f"/proc/{pid}/smaps_rollup").read_text()
        except OSError:
            continue
        found = re.search(r"^Pss:\s+(\d+) kB", rollup, re.MULTILINE)
        total += int(found.group(1)) if found else 0
    return total
