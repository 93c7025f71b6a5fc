"""Turn the raw runs (results/latest.json) into the markdown tables and the target verdicts.

Across repetitions: req/s, p50 and p99 are medians; errors are summed; CPU per request is the total CPU of
the backend's process tree over all repetitions divided by all their requests. Every ratio is to flup
threaded in the same run.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable
from typing import Any

__all__ = ["Figures", "figures", "render_markdown"]

BASELINE = "flup-threaded"
Figures = dict[str, float]


def figures(runs: list[dict[str, Any]], workload: str, backend: str) -> Figures | None:
    """The aggregated figures of one backend on one workload, or None if it was not run."""
    mine = [r for r in runs if r["workload"] == workload and r["backend"] == backend]
    if not mine:
        return None
    requests = sum(r["requests"] for r in mine)
    return {
        "rps": statistics.median(r["requests"] / r["seconds"] for r in mine),
        "p50": statistics.median(r["p50_ms"] for r in mine),
        "p99": statistics.median(r["p99_ms"] for r in mine),
        "errors": float(sum(r["errors"] for r in mine)),
        "cpu_us": 1e6 * sum(r["cpu_s"] for r in mine) / requests if requests else math.nan,
        "reps": float(len(mine)),
    }


def _num(value: float | None, digits: int = 0) -> str:
    if value is None or math.isnan(value):
        return "n/a"
    return f"{value:,.{digits}f}"


def _ratio(value: float | None, base: float | None) -> str:
    if value is None or base is None or math.isnan(value) or math.isnan(base) or base == 0:
        return "n/a"
    return f"{value / base:.2f}x"


def _mib(kib: float | None) -> str:
    return "n/a" if kib is None else f"{kib / 1024:.1f}"


def _workload_table(data: dict[str, Any], workload: dict[str, Any]) -> list[str]:
    runs = data["runs"]
    base = figures(runs, workload["name"], BASELINE)
    lines = [
        f"### {workload['name']}: {workload['description']}",
        "",
        "| backend | req/s | x flup | p50 ms | p99 ms | p99 x flup | errors | CPU µs/req | CPU x flup |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for backend in data["backends"]:
        name = backend["name"]
        fig = figures(runs, workload["name"], name)
        if fig is None:
            reason = data["unavailable"].get(name) or (
                "no Django view" if not backend["django"] else "not run"
            )
            lines.append(f"| {backend['label']} | {reason} |  |  |  |  |  |  |  |")
            continue

        def cell(key: str, digits: int, f: Figures = fig) -> str:
            return _num(f[key], digits)

        def ratio(key: str, f: Figures = fig) -> str:
            return _ratio(f[key], base[key] if base else None)

        lines.append(
            f"| {backend['label']} | {cell('rps', 0)} | {ratio('rps')} | {cell('p50', 2)} | {cell('p99', 2)} "
            f"| {ratio('p99')} | {cell('errors', 0)} | {cell('cpu_us', 0)} | {ratio('cpu_us')} |"
        )
    return [*lines, ""]


def _split_runs(data: dict[str, Any], workload: str, backend: str) -> list[dict[str, Any]]:
    """The repetitions of ``backend`` under ``workload`` that recorded where the CPU went."""
    runs = data["runs"]
    return [r for r in runs if r["workload"] == workload and r["backend"] == backend and r.get("split")]


def _shares(runs: list[dict[str, Any]]) -> str:
    """The non-root processes' CPU shares, per repetition: "100/0 · 56/44" (a prefork pool's children)."""
    return " · ".join("/".join(f"{share:.0f}" for share in r["split"]["others_pct"]) or "-" for r in runs)


def _split_table(data: dict[str, Any]) -> list[str]:
    """Where each backend's CPU went, process by process, and how often its threads slept waiting for work:
    a prefork child that sleeps and wakes between requests pays for it in cache misses, so the same code
    costs more when the load is spread thinly over more children (docs/performance.md)."""
    rows = []
    for workload in data["workloads"]:
        for backend in data["backends"]:
            runs = _split_runs(data, workload["name"], backend["name"])
            if not runs:
                continue
            switches = sorted(r["split"]["voluntary_switches"] / max(1, r["requests"]) for r in runs)
            shares = _shares(runs)
            roots = " · ".join(f"{r['split']['root_pct']:.0f}" for r in runs)
            rows.append(
                f"| {workload['name']} | {backend['label']} | {roots} | {shares} "
                f"| {switches[len(switches) // 2]:.2f} |"
            )
    if not rows:
        return []
    return [
        "### Where the CPU went, process by process",
        "",
        "Per repetition: the root process's share of the tree's CPU, then every other process's, largest "
        "first (a prefork pool: the master, then its children); and the voluntary context switches of all "
        "their threads per request (median), how often they slept waiting for work.",
        "",
        "| workload | backend | root % | other processes % | sleeps per request |",
        "|---|---|---:|---|---:|",
        *rows,
        "",
    ]


def _memory_table(data: dict[str, Any]) -> list[str]:
    memory = data["memory"]
    base_idle = memory.get(BASELINE, {}).get("idle_total")
    lines = [
        "### Memory of the backend's process tree, MiB",
        "",
        "RSS counts pages a prefork master shares with its children in every process; PSS splits them.",
        "",
        "| backend | idle RSS | idle x flup | after load RSS | idle PSS | after load PSS "
        "| RSS per process idle (root first) | RSS per process after load |",
        "|---|---:|---:|---:|---:|---:|---|---|",
    ]
    for backend in data["backends"]:
        mem = memory.get(backend["name"])
        if mem is None:
            reason = data["unavailable"].get(backend["name"], "not run")
            lines.append(f"| {backend['label']} | {reason} |" + "  |" * 6)
            continue
        idle = " / ".join(_mib(kib) for _pid, kib in mem["idle"])
        after = " / ".join(_mib(kib) for _pid, kib in mem["after"]) or "process gone"
        lines.append(
            f"| {backend['label']} | {_mib(mem['idle_total'])} | {_ratio(mem['idle_total'], base_idle)} "
            f"| {_mib(mem['after_total'] or None)} | {_mib(mem.get('idle_pss'))} "
            f"| {_mib(mem.get('after_pss') or None)} "
            f"| {idle} | {after} |"
        )
    return [*lines, ""]


def _target_rows(data: dict[str, Any]) -> list[tuple[str, bool | None, str]]:
    runs, memory = data["runs"], data["memory"]

    def get(workload: str, backend: str, key: str) -> float | None:
        """The figure, None if not measured, NaN if the run had errors (its figures prove nothing)."""
        fig = figures(runs, workload, backend)
        if fig is None:
            return None
        return math.nan if fig["errors"] else fig[key]

    def check(name: str, values: list[float | None], test: Callable[..., bool], shown: str) -> None:
        if any(v is None for v in values):
            rows.append((name, None, "not measured in this run"))
        elif any(v is not None and math.isnan(v) for v in values):
            rows.append((name, None, "a compared row had errors: no verdict"))
        else:
            rows.append((name, bool(test(*values)), shown.format(*values)))

    rows: list[tuple[str, bool | None, str]] = []
    thr, pre, flup = "fcgiserve-threaded-keep", "fcgiserve-prefork-keep", BASELINE
    h8 = "hello-8"
    check(
        "hello 8 kept: threaded >= 4x flup threaded req/s",
        [get(h8, thr, "rps"), get(h8, flup, "rps")],
        lambda a, b: a >= 4 * b,
        "{0:,.0f} vs {1:,.0f} req/s",
    )
    check(
        "hello 8 kept: prefork >= 2x gunicorn sync req/s",
        [get(h8, pre, "rps"), get(h8, "gunicorn-sync", "rps")],
        lambda a, b: a >= 2 * b,
        "{0:,.0f} vs {1:,.0f} req/s",
    )
    for backend in (thr, pre):
        check(
            f"hello 8: {backend} >= 40% of the C ceiling",
            [get(h8, backend, "rps"), get(h8, "libfcgi-c", "rps")],
            lambda a, c: a >= 0.4 * c,
            "{0:,.0f} vs {1:,.0f} req/s",
        )
        check(
            f"hello 8: {backend} CPU <= 100 µs/request",
            [get(h8, backend, "cpu_us")],
            lambda a: a <= 100,
            "{0:,.0f} µs",
        )
        check(
            f"100 KB: {backend} CPU <= 300 µs/request",
            [get("big-8", backend, "cpu_us")],
            lambda a: a <= 300,
            "{0:,.0f} µs",
        )
    for workload in data["workloads"]:
        for method in ("threaded", "prefork"):
            new, keep = f"fcgiserve-{method}-new", f"fcgiserve-{method}-keep"
            check(
                f"{workload['name']}: {method} kept-alive >= new connections req/s",
                [get(workload["name"], keep, "rps"), get(workload["name"], new, "rps")],
                lambda k, n: k >= n,
                "{0:,.0f} vs {1:,.0f} req/s",
            )
    for conns in (1, 8, 64):
        for mine, theirs in ((thr, flup), (pre, "flup-prefork")):
            check(
                f"hello {conns}: {mine} p99 <= half of {theirs}'s",
                [get(f"hello-{conns}", mine, "p99"), get(f"hello-{conns}", theirs, "p99")],
                lambda a, b: a <= b / 2,
                "{0:.2f} vs {1:.2f} ms",
            )
    check(
        "1 MB POST: threaded >= 4x flup threaded req/s",
        [get("post-8", thr, "rps"), get("post-8", flup, "rps")],
        lambda a, b: a >= 4 * b,
        "{0:,.0f} vs {1:,.0f} req/s",
    )
    for backend in (thr, pre):
        growth = memory.get(backend, {}).get("post_growth_kib")
        check(
            f"1 MB POST: {backend} RSS grows < 2 MiB over the run",
            [growth],
            lambda g: g < 2048,
            "{0:,.0f} KiB growth",
        )
    idle = {
        name: memory.get(name, {}).get("idle")
        for name in ("fcgiserve-threaded-new", flup, pre, "flup-prefork")
    }
    check(
        "idle RSS: threaded <= flup threaded",
        [memory.get("fcgiserve-threaded-new", {}).get("idle_total"), memory.get(flup, {}).get("idle_total")],
        lambda a, b: a <= b,
        "{0:,.0f} vs {1:,.0f} KiB",
    )
    pre_children, flup_children = idle[pre], idle["flup-prefork"]
    check(
        "idle RSS: each prefork child <= flup prefork's largest child",
        [
            max((k for _p, k in pre_children[1:]), default=None) if pre_children else None,
            max((k for _p, k in flup_children[1:]), default=None) if flup_children else None,
        ],
        lambda a, b: a <= b,
        "largest child {0:,.0f} vs {1:,.0f} KiB",
    )
    _uwsgi_targets(get, check, data)
    return rows


UWSGI = "uwsgi-processes"  # uWSGI --processes 2: the reference
TOLERANCE = 1.10  # "default sizing costs nothing": within 10 % of right-sized, beyond wrk's run-to-run noise


def _largest_child(memory: dict[str, Any], backend: str, key: str = "idle") -> float | None:
    """The largest RSS among a tree's processes after the root (the root alone for a single process)."""
    tree = memory.get(backend, {}).get(key)
    if not tree:
        return None
    return float(max(k for _p, k in (tree[1:] or tree)))


def _uwsgi_targets(
    get: Callable[[str, str, str], float | None],
    check: Callable[[str, list[float | None], Callable[..., bool], str], None],
    data: dict[str, Any],
) -> None:
    """The targets of "as fast as uWSGI's C FastCGI server", each against uWSGI --processes 2."""
    thr, pre, default = "fcgiserve-threaded-keep", "fcgiserve-prefork-keep", "fcgiserve-prefork-default"
    memory = data["memory"]
    req = "{0:,.0f} vs {1:,.0f} req/s"

    def children(*backends: str) -> str:
        # A prefork pool's hello-8 CPU and p99 follow how nginx's kept connections split between its children
        # (docs/performance.md): the verdict shows the split it was measured with.
        shares = [_shares(_split_runs(data, "hello-8", b)) for b in backends]
        return "; children's CPU % per repetition: " + " against ".join(shares) if all(shares) else ""

    for mine in (thr, pre):
        check(
            f"uWSGI: hello-8 {mine} >= 1.0x uWSGI --processes 2 req/s",
            [get("hello-8", mine, "rps"), get("hello-8", UWSGI, "rps")],
            lambda a, b: a >= b,
            req,
        )
        check(
            f"uWSGI: hello-8 {mine} backend CPU <= 40 µs/request",
            [get("hello-8", mine, "cpu_us"), get("hello-8", UWSGI, "cpu_us")],
            lambda a, _u: a <= 40,
            "{0:,.0f} µs (uWSGI {1:,.0f} µs" + (children(mine) if mine == pre else "") + ")",
        )
        for key in ("p50", "p99"):
            check(
                f"uWSGI: hello-1 {mine} {key} <= uWSGI's",
                [get("hello-1", mine, key), get("hello-1", UWSGI, key)],
                lambda a, b: a <= b,
                "{0:.2f} vs {1:.2f} ms",
            )
        for workload in ("big-8", "post-8"):
            check(
                f"uWSGI: {workload} {mine} >= 1.0x uWSGI req/s",
                [get(workload, mine, "rps"), get(workload, UWSGI, "rps")],
                lambda a, b: a >= b,
                req,
            )
        check(
            f"uWSGI: idle RSS, {mine} {'process' if mine == thr else 'largest child'} <= a uWSGI worker",
            [_largest_child(memory, mine), _largest_child(memory, UWSGI)],
            lambda a, b: a <= b,
            "{0:,.0f} vs {1:,.0f} KiB",
        )
    for key, unit in (("p99", "{0:.2f} vs {1:.2f} ms"), ("cpu_us", "{0:,.0f} vs {1:,.0f} µs")):
        check(
            f"uWSGI: hello-8 prefork default sizing {key} within 10 % of 2x1",
            [get("hello-8", default, key), get("hello-8", pre, key)],
            lambda a, b: a <= TOLERANCE * b,
            unit + children(default, pre),
        )


def render_markdown(data: dict[str, Any]) -> str:
    """The whole results page: machine line, one table per workload, memory, targets."""
    out = [
        f"# fcgiserve benchmark: {data['mode']} run, {data['finished']}",
        "",
        f"Machine: {data['machine']}",
        "",
        f"Each cell: {data['reps']} interleaved repetitions of {data['duration']} s "
        "(median req/s and latency; CPU = backend process tree CPU / requests); nginx reaches the backends "
        f"over {data.get('transport', 'loopback TCP')}. Command: "
        f"`{data['command']}`",
        "",
    ]
    for workload in data["workloads"]:
        out += _workload_table(data, workload)
    out += _split_table(data)
    out += _memory_table(data)
    out += ["### Targets", "", "| target | verdict | figures |", "|---|---|---|"]
    for name, met, shown in _target_rows(data):
        verdict = "n/a" if met is None else ("met" if met else "**not yet met**")
        out.append(f"| {name} | {verdict} | {shown} |")
    out += [
        "| at most 1 recv and 1 send per hello request on a kept connection "
        "| see `benchmarks/syscalls.py` | |",
        "",
    ]
    return "\n".join(out)
