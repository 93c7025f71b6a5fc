"""Chart of a results JSON: req/s per workload, one bar per backend. ``bench_chart.py RESULTS.json OUT_STEM``.

Run by run.py with the benchmark venv's Python, where matplotlib writes OUT_STEM.png. Without matplotlib
(it could not be installed) the same chart is written by hand as OUT_STEM.svg, stdlib only. Prints the path.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

from bench_report import figures

__all__ = ["chart_data", "chart_title", "main", "write_svg"]

COLOURS = ["#888888", "#bbbbbb", "#1f77b4", "#08306b", "#2ca02c", "#00441b", "#ff7f0e", "#d62728", "#9467bd"]


def chart_data(data: dict[str, Any], key: str = "rps") -> tuple[list[str], list[str], list[list[float]]]:
    """Workload names, backend labels, and figure ``key`` [backend][workload] (0 where not run)."""
    workloads = [w["name"] for w in data["workloads"]]
    labels = [b["label"] for b in data["backends"]]
    values = []
    for backend in data["backends"]:
        row = []
        for workload in workloads:
            fig = figures(data["runs"], workload, backend["name"])
            row.append(fig[key] if fig else 0.0)
        values.append(row)
    return workloads, labels, values


# Backend name prefix -> how the title names that peer, in the title's order.
PEERS = {"flup": "flup", "gunicorn": "gunicorn", "uwsgi": "uWSGI", "libfcgi": "C libfcgi"}


def chart_title(data: dict[str, Any]) -> str:
    """The title: "fcgiserve vs" the peers the run measured, and how nginx reached them."""
    names = [b["name"] for b in data["backends"]]
    peers = [label for prefix, label in PEERS.items() if any(n.startswith(prefix) for n in names)]
    against = " vs " + (", ".join(peers[:-1]) + " and " + peers[-1] if len(peers) > 1 else "".join(peers))
    transport = data.get("transport", "loopback TCP")
    return f"fcgiserve{against if peers else ''} behind nginx over {transport} ({data['mode']} run)"


def write_png(data: dict[str, Any], path: Path) -> None:
    import matplotlib  # type: ignore[import-not-found,unused-ignore]

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # type: ignore[import-not-found,unused-ignore]

    fig, axes = plt.subplots(2, 1, figsize=(11, 8), dpi=80, sharex=True)
    panels = (("rps", "requests / second (median, log)"), ("cpu_us", "backend CPU µs / request (log)"))
    for ax, (key, title) in zip(axes, panels, strict=True):
        workloads, labels, values = chart_data(data, key)
        width = 0.8 / max(1, len(labels))
        for index, (label, row) in enumerate(zip(labels, values, strict=True)):
            xs = [w + index * width for w in range(len(workloads))]
            ax.bar(
                xs,
                [v if v > 0 else float("nan") for v in row],
                width,
                label=label,
                color=COLOURS[index % len(COLOURS)],
            )
        ax.set_xticks([w + 0.4 - width / 2 for w in range(len(workloads))], workloads)
        ax.set_yscale("log")
        smallest = min((v for row in values for v in row if v > 0), default=1.0)
        ax.set_ylim(
            bottom=10 ** math.floor(math.log10(smallest))
        )  # bars start at a power of ten, not the clip
        ax.set_ylabel(title)
        ax.grid(axis="y", alpha=0.3, which="both")
    axes[0].set_title(chart_title(data))
    axes[0].legend(fontsize=8, ncol=3, loc="lower center", bbox_to_anchor=(0.5, 1.06))
    fig.tight_layout()
    fig.savefig(path)


def write_svg(data: dict[str, Any], path: Path) -> None:
    """The same grouped bar chart as plain SVG."""
    workloads, labels, values = chart_data(data)
    width, height, left, bottom, top = 900, 420, 60, 40, 20
    peak = max((v for row in values for v in row), default=1.0) or 1.0
    group = (width - left - 220) / max(1, len(workloads))
    bar = group * 0.8 / max(1, len(labels))
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-size="11">']
    parts.append(f'<text x="{left}" y="14">req/s (median), peak {peak:,.0f}</text>')
    for w_index, workload in enumerate(workloads):
        x0 = left + w_index * group
        parts.append(
            f'<text x="{x0 + group * 0.4:.0f}" y="{height - 15}" text-anchor="middle">{workload}</text>'
        )
        for b_index, row in enumerate(values):
            h = (height - bottom - top) * row[w_index] / peak
            y = height - bottom - h
            colour = COLOURS[b_index % len(COLOURS)]
            parts.append(
                f'<rect x="{x0 + b_index * bar:.1f}" y="{y:.1f}" width="{bar:.1f}" height="{h:.1f}" '
                f'fill="{colour}"/>'
            )
    for b_index, label in enumerate(labels):
        y = top + 16 * b_index
        colour = COLOURS[b_index % len(COLOURS)]
        parts.append(f'<rect x="{width - 210}" y="{y}" width="10" height="10" fill="{colour}"/>')
        parts.append(f'<text x="{width - 195}" y="{y + 9}">{label}</text>')
    parts.append("</svg>")
    path.write_text("\n".join(parts) + "\n")


def main(argv: list[str]) -> int:
    data = json.loads(Path(argv[0]).read_text())
    stem = Path(argv[1])
    try:
        out = stem.with_suffix(".png")
        write_png(data, out)
    except ImportError:
        out = stem.with_suffix(".svg")
        write_svg(data, out)
    print(out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
