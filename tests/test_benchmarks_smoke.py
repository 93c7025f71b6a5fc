"""Smoke test of the benchmark suite's plumbing (benchmarks/run.py): no timing is asserted, ever.

Runs one 1-second wrk load per backend through a real nginx with --no-setup (nothing installed: flup and
gunicorn rows say why they are unavailable where the benchmark venv is missing, the C row where libfcgi-dev
is) and checks that the results table has a row for every backend and that the fcgiserve rows were measured.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

pytestmark = pytest.mark.integration

# The rows issue 5 asks for and the uWSGI rows, in table order.
BACKENDS = [
    "flup-threaded",
    "flup-prefork",
    "fcgiserve-threaded-new",
    "fcgiserve-threaded-keep",
    "fcgiserve-prefork-new",
    "fcgiserve-prefork-keep",
    "fcgiserve-prefork-default",
    "gunicorn-sync",
    "gunicorn-gthread",
    "uwsgi-processes",
    "uwsgi-threads",
    "libfcgi-c",
]
ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "benchmarks"

WRK_OUTPUT = """Running 2s test @ http://127.0.0.1:8080/hello
  2 threads and 8 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     3.41ms    2.08ms  31.62ms   89.01%
    Req/Sec     1.02k   150.00     1.30k    70.00%
  Latency Distribution
     50%    3.41ms
     75%    4.02ms
     90%    5.33ms
     99%  850.00us
  4080 requests in 2.00s, 612.34KB read
  Socket errors: connect 0, read 2, write 0, timeout 1
  Non-2xx or 3xx responses: 4
Requests/sec:   2039.50
Transfer/sec:    306.17KB
"""


def _load(name: str) -> ModuleType:
    """A benchmarks/ module without imports of its siblings, by file (benchmarks/ is no package);
    registered in sys.modules under a private name, as dataclasses need."""
    qualified = f"_benchmarks_{name}"
    if qualified in sys.modules:
        return sys.modules[qualified]
    spec = importlib.util.spec_from_file_location(qualified, BENCH / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[qualified] = module
    spec.loader.exec_module(module)
    return module


def test_parse_wrk_reads_counts_latencies_and_every_error_kind() -> None:
    result = _load("bench_measure").parse_wrk(WRK_OUTPUT)
    assert (result.requests, result.seconds, result.errors) == (4080, 2.0, 7)
    assert (result.p50_ms, result.p99_ms) == (3.41, 0.85)
    assert result.rps == 2040.0


def test_parse_wrk_rejects_output_without_a_request_count() -> None:
    with pytest.raises(ValueError, match="no request count"):
        _load("bench_measure").parse_wrk("unable to connect to 127.0.0.1:1 Connection refused\n")


@pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk (Debian package wrk) is not installed")
@pytest.mark.skipif(not Path("/usr/sbin/nginx").exists(), reason="nginx is not installed")
def test_quick_plumbing_produces_a_row_for_every_backend(tmp_path: Path) -> None:
    # --python: the test's interpreter has Django (bench_app imports it) where no benchmark venv exists.
    argv = [sys.executable, str(BENCH / "run.py"), "--no-setup", "--workloads", "hello-8"]
    argv += ["--python", sys.executable]
    argv += ["--duration", "1", "--reps", "1", "--results-dir", str(tmp_path), "--no-chart"]
    done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=240, check=False)
    assert done.returncode in (0, 1), done.stderr[-3000:]  # 1: some extra was unavailable, reported as such
    table = (tmp_path / "latest.md").read_text()
    data = json.loads((tmp_path / "latest.json").read_text())
    assert [b["name"] for b in data["backends"]] == BACKENDS
    section = table.split("### hello-8", 1)[1].split("###", 1)[0]
    rows = [line.split("|")[1].strip() for line in section.splitlines() if line.startswith("| ")]
    assert rows[1:] == [b["label"] for b in data["backends"]]  # rows[0] is the header
    measured = {r["backend"]: r["requests"] for r in data["runs"]}
    for name in ("fcgiserve-threaded-new", "fcgiserve-threaded-keep", "fcgiserve-prefork-keep"):
        assert measured.get(name, 0) > 0, f"{name} served no request:\n{done.stderr[-3000:]}"
    for name, reason in data["unavailable"].items():
        assert reason in table, f"{name} is unavailable but the table does not say why"


@pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk (Debian package wrk) is not installed")
@pytest.mark.skipif(not Path("/usr/sbin/nginx").exists(), reason="nginx is not installed")
def test_keepalive_p99_prints_every_row_with_its_ratios() -> None:
    argv = [sys.executable, str(BENCH / "keepalive_p99.py"), "--duration", "1", "--reps", "1"]
    argv += ["--python", sys.executable]
    done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=180, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [line for line in done.stdout.splitlines() if line.startswith("| ") and "ms" not in line]
    assert [row.split("|")[1].strip() for row in rows] == [
        "prefork 6 children, --threads 1",
        "prefork 6 children, --threads 4",
        "threaded (defaults)",
    ]
    assert all(row.rstrip("| ").split("|")[-1].strip() != "n/a" for row in rows), done.stdout
    assert "| prefork 6 children, --threads 4 |" in done.stdout and "| 1.00 | 1.00 |" in done.stdout


def test_hotpath_reports_one_recv_one_send_and_the_records_of_a_hello_request() -> None:
    argv = [sys.executable, str(BENCH / "hotpath.py"), "--requests", "400"]
    done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "| records in / out | 4 / 3 |" in done.stdout
    assert "| server socket `recv_into` calls | 1.00 |" in done.stdout
    assert "| server socket `sendall` calls | 1.00 |" in done.stdout
