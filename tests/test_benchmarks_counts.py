"""The benchmark suite's own arithmetic and command lines, without running a load (no wrk, no nginx):
instructions.py's per-request figure, the uWSGI rows' command lines and stop signal, the --python flag and
the per-interpreter venv, the prefork rows' pool sizes."""

from __future__ import annotations

import importlib
import importlib.util
import os
import platform
import signal
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "benchmarks"


def _module(name: str) -> ModuleType:
    """A benchmarks/ module; they import their siblings by plain name, so benchmarks/ goes on sys.path."""
    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))
    return importlib.import_module(name)


def test_instructions_per_request_subtract_startup() -> None:
    ins = _module("instructions")
    startup, cost = 580_000_000, 301_234
    first = ins.Sample(200, startup + 200 * cost)
    second = ins.Sample(1200, startup + 1200 * cost)
    assert ins.per_request(first, second) == cost
    assert ins.per_request(ins.Sample(10, 1_000), ins.Sample(30, 1_500)) == 25.0


def test_instructions_refuse_a_second_run_not_longer_than_the_first() -> None:
    ins = _module("instructions")
    with pytest.raises(ValueError, match="more requests"):
        ins.per_request(ins.Sample(200, 10), ins.Sample(200, 20))


def test_instructions_read_the_totals_line_of_callgrind_output() -> None:
    ins = _module("instructions")
    out = "# callgrind format\nversion: 1\ncmd: python3\nevents: Ir\nfl=(1) x.c\nfn=(1) main\n16 3\n"
    out += "\ntotals: 608412\n"
    assert ins.totals(out) == 608412
    assert ins.totals("events: Ir\nsummary: 77\n") == 77
    with pytest.raises(ValueError, match="totals"):
        ins.totals("events: Ir\n")


def test_uwsgi_command_line_serves_bench_app_over_fastcgi_with_a_master(tmp_path: Path) -> None:
    backends = _module("bench_backends")
    argv = backends.uwsgi_argv("127.0.0.1:41234", tmp_path, ["--processes", "2"])
    joined = " ".join(argv)
    assert argv[:3] == ["uwsgi", "--plugin", "python3"]
    assert "--fastcgi-socket 127.0.0.1:41234" in joined
    assert "--processes 2 --master" in joined and "--die-on-term" in joined
    assert argv[argv.index("--wsgi-file") + 1] == str(BENCH / "apps" / "bench_app.py")
    assert argv[argv.index("--callable") + 1] == "application"
    assert argv[argv.index("--virtualenv") + 1] == str(tmp_path)
    assert "--virtualenv" not in backends.uwsgi_argv(
        "127.0.0.1:41234", tmp_path / "missing", ["--processes", "2"]
    )


def test_uwsgi_rows_use_new_connections_the_interpreters_venv_and_sigint() -> None:
    backends = _module("bench_backends")
    rows = {b.name: b for b in backends.BACKENDS}
    python = backends.Interpreter(Path("/opt/py/bin/python3"), "3.11.2", "/opt/py/bin/python3")
    for name, shape in (("uwsgi-processes", "--processes 2"), ("uwsgi-threads", "--processes 1 --threads 8")):
        row = rows[name]
        assert (row.protocol, row.keep_conn, row.needs, row.stop_signal) == (
            "fcgi",
            False,
            "uwsgi",
            signal.SIGINT,
        )
        argv = row.argv("127.0.0.1:40000", python)
        assert f"{shape} --master" in " ".join(argv)
        assert "--virtualenv" not in argv or argv[argv.index("--virtualenv") + 1] == str(python.venv)


def test_prefork_rows_are_two_single_threaded_children_and_the_default_sizing() -> None:
    backends = _module("bench_backends")
    rows = {b.name: b for b in backends.BACKENDS}
    python = backends.Interpreter(Path(sys.executable), platform.python_version(), sys.executable)
    keep = " ".join(rows["fcgiserve-prefork-keep"].argv("127.0.0.1:40000", python))
    assert "--minspare 2 --maxspare 2 --maxchildren 2 --threads 1" in keep
    assert rows["fcgiserve-prefork-keep"].keep_conn
    default = rows["fcgiserve-prefork-default"].argv("127.0.0.1:40000", python)
    assert rows["fcgiserve-prefork-default"].keep_conn and "--preload" in default
    assert not {"--minspare", "--maxspare", "--maxchildren", "--threads"} & set(default)


def test_every_row_listens_where_it_is_told_tcp_or_unix_socket() -> None:
    """run.py --unix: each backend takes a socket path where it took a loopback port."""
    backends = _module("bench_backends")
    python = backends.Interpreter(Path(sys.executable), platform.python_version(), sys.executable)
    for row in backends.BACKENDS:
        tcp = " ".join(row.argv("127.0.0.1:40000", python))
        unix = " ".join(row.argv("/run/bench/x.sock", python))
        assert "40000" in tcp and "/run/bench/x.sock" not in tcp, row.name
        assert "/run/bench/x.sock" in unix and "40000" not in unix, row.name
        if row.name.startswith("fcgiserve"):
            assert "--host 127.0.0.1 --port 40000" in tcp and "--socket /run/bench/x.sock" in unix
        elif row.name.startswith("gunicorn"):
            assert "-b 127.0.0.1:40000" in tcp and "-b unix:/run/bench/x.sock" in unix
        elif row.name.startswith("uwsgi"):
            assert "--fastcgi-socket /run/bench/x.sock" in unix


def test_the_venv_is_per_interpreter_version() -> None:
    backends = _module("bench_backends")
    assert backends.venv_dir("3.11.2") == BENCH / ".venv-3.11"
    assert backends.venv_dir("3.13.0rc1") == BENCH / ".venv-3.13"
    python = backends.Interpreter(Path("/usr/bin/python3"), "3.12.1", "/usr/bin/python3.12")
    assert python.venv_python == BENCH / ".venv-3.12" / "bin" / "python"
    cfg = "home = /usr/bin\ninclude-system-site-packages = false\nversion = 3.11.2\n"
    assert backends.venv_home_matches(cfg, "/usr/bin/python3.11")
    assert not backends.venv_home_matches(cfg, "/opt/python-3.11.7/bin/python3.11")
    assert not backends.venv_home_matches("version = 3.11.2\n", "/usr/bin/python3.11")


def test_interpreter_reports_its_own_version() -> None:
    python = _module("bench_backends").interpreter(Path(sys.executable))
    assert python.version == platform.python_version()
    assert python.describe() == f"Python {platform.python_version()} ({sys.executable})"


def test_run_takes_python_with_debians_interpreter_by_default() -> None:
    run = _module("run")
    assert run._parse([]).python == Path("/usr/bin/python3")
    assert run._parse(["--python", "/opt/py/bin/python3"]).python == Path("/opt/py/bin/python3")
    with pytest.raises(SystemExit):
        _module("bench_backends").interpreter(Path("/nonexistent/python3"))


def test_rows_load_the_working_trees_modules_precompiled() -> None:
    """The rows run with PYTHONDONTWRITEBYTECODE: without the runner's compileall, every fcgiserve process
    would compile the tree's modules at start-up, and carry the compiler's leftovers in its idle RSS."""
    backends = _module("bench_backends")
    targets = [ROOT / "fcgiserve" / "server.py", BENCH / "apps" / "bench_app.py"]
    cached = [Path(importlib.util.cache_from_source(str(source))) for source in targets]
    for pyc in cached:
        pyc.unlink(missing_ok=True)
    backends.compile_sources(backends.interpreter(Path(sys.executable)))
    assert all(pyc.is_file() for pyc in cached), cached


def test_gitignore_keeps_the_per_interpreter_venvs_out() -> None:
    assert "benchmarks/.venv-*/" in (ROOT / ".gitignore").read_text().splitlines()


def _run(backend: str, workload: str, rps: float, cpu_us: float, p99: float = 1.0) -> dict[str, object]:
    requests = int(rps * 5)
    return {"workload": workload, "backend": backend, "rep": 0, "requests": requests, "seconds": 5.0,
            "p50_ms": p99 / 2, "p99_ms": p99, "errors": 0, "cpu_s": cpu_us * requests / 1e6}  # fmt: skip


def test_report_states_the_uwsgi_targets_met_and_not_met() -> None:
    report = _module("bench_report")
    runs = [
        _run("fcgiserve-threaded-keep", "hello-8", 9000, 35),
        _run("fcgiserve-prefork-keep", "hello-8", 7000, 60, p99=2.0),
        _run("fcgiserve-prefork-default", "hello-8", 7000, 65, p99=3.0),
        _run("uwsgi-processes", "hello-8", 8000, 30),
    ]
    memory = {
        "fcgiserve-threaded-keep": {"idle": [[1, 30000]]},
        "uwsgi-processes": {"idle": [[2, 9], [3, 31000]]},
    }
    data = {"mode": "test", "finished": "now", "machine": "m", "reps": 1, "duration": 5, "command": "c",
            "workloads": [], "backends": [], "unavailable": {}, "runs": runs, "memory": memory}  # fmt: skip
    rows = {line.split(" | ")[0].lstrip("| "): line for line in report.render_markdown(data).splitlines()}
    verdict = {name: line.split(" | ")[1] for name, line in rows.items() if name.startswith("uWSGI:")}
    assert verdict["uWSGI: hello-8 fcgiserve-threaded-keep >= 1.0x uWSGI --processes 2 req/s"] == "met"
    assert (
        verdict["uWSGI: hello-8 fcgiserve-prefork-keep >= 1.0x uWSGI --processes 2 req/s"]
        == "**not yet met**"
    )
    assert verdict["uWSGI: hello-8 fcgiserve-threaded-keep backend CPU <= 40 µs/request"] == "met"
    assert verdict["uWSGI: hello-8 fcgiserve-prefork-keep backend CPU <= 40 µs/request"] == "**not yet met**"
    assert verdict["uWSGI: idle RSS, fcgiserve-threaded-keep process <= a uWSGI worker"] == "met"
    assert verdict["uWSGI: hello-8 prefork default sizing p99 within 10 % of 2x1"] == "**not yet met**"
    assert verdict["uWSGI: hello-8 prefork default sizing cpu_us within 10 % of 2x1"] == "met"
    assert verdict["uWSGI: big-8 fcgiserve-threaded-keep >= 1.0x uWSGI req/s"] == "n/a"
    # A prefork pool's CPU and p99 verdicts show how its children shared the load when it was measured.
    runs[1]["split"] = {"root_pct": 0.0, "others_pct": [100.0, 0.0], "voluntary_switches": 10}
    runs[2]["split"] = {"root_pct": 0.0, "others_pct": [56.0, 44.0, 0.0], "voluntary_switches": 90}
    rows = {line.split(" | ")[0].lstrip("| "): line for line in report.render_markdown(data).splitlines()}
    cpu = rows["uWSGI: hello-8 fcgiserve-prefork-keep backend CPU <= 40 µs/request"]
    assert cpu.endswith("| 60 µs (uWSGI 30 µs; children's CPU % per repetition: 100/0) |")
    p99 = rows["uWSGI: hello-8 prefork default sizing p99 within 10 % of 2x1"]
    assert p99.endswith("| 3.00 vs 2.00 ms; children's CPU % per repetition: 56/44/0 against 100/0 |")
    assert "children" not in rows["uWSGI: hello-8 fcgiserve-threaded-keep backend CPU <= 40 µs/request"]


def test_instructions_take_the_idle_rate_off_the_extra_wall_clock_time() -> None:
    ins = _module("instructions")
    first = ins.Sample(200, 1_000_000 + 200 * 300 + 2 * 5_000, seconds=2.0)
    second = ins.Sample(1200, 1_000_000 + 1200 * 300 + 12 * 5_000, seconds=12.0)
    idled = ins.Sample(200, first.instructions + 10 * 5_000, seconds=12.0)
    rate = ins.idle_rate(first, idled)
    assert rate == 5_000
    assert ins.per_request(first, second) == 350
    assert ins.per_request_without_idle(first, second, rate) == 300
    with pytest.raises(ValueError, match="idle run"):
        ins.idle_rate(first, ins.Sample(201, 0, seconds=20.0))


def test_chart_title_names_the_peers_measured_and_the_transport() -> None:
    chart = _module("bench_chart")
    backends = [
        {"name": n} for n in ("flup-threaded", "fcgiserve-threaded-keep", "uwsgi-processes", "libfcgi-c")
    ]
    data = {"backends": backends, "mode": "full", "transport": "unix sockets"}
    assert (
        chart.chart_title(data)
        == "fcgiserve vs flup, uWSGI and C libfcgi behind nginx over unix sockets (full run)"
    )
    data = {"backends": [{"name": "fcgiserve-threaded-keep"}, {"name": "gunicorn-sync"}], "mode": "quick"}
    assert chart.chart_title(data) == "fcgiserve vs gunicorn behind nginx over loopback TCP (quick run)"


def test_split_of_a_run_gives_each_process_its_share_and_counts_sleeps() -> None:
    measure = _module("bench_measure")
    before = {10: (1.0, 100), 11: (2.0, 50), 12: (2.0, 70)}
    after = {10: (1.1, 105), 11: (3.5, 80), 12: (2.4, 90), 13: (0.0, 1)}  # 13 forked meanwhile
    split = measure.split_of(10, before, after)
    assert split == {"root_pct": 5.0, "others_pct": [75.0, 20.0, 0.0], "voluntary_switches": 56}
    # A process that exited before the second look keeps what the first one saw: nothing is negative.
    assert measure.split_of(10, before, {10: (1.1, 105)})["others_pct"] == [0.0, 0.0]


def test_split_of_the_live_tree_sees_its_own_process() -> None:
    measure = _module("bench_measure")
    first = measure.process_activity(os.getpid())
    assert os.getpid() in first and first[os.getpid()][1] >= 0


def test_report_shows_where_each_backends_cpu_went() -> None:
    report = _module("bench_report")
    run = _run("fcgiserve-prefork-keep", "hello-8", 1000, 40)
    run["split"] = {"root_pct": 1.0, "others_pct": [61.2, 37.8], "voluntary_switches": 750}
    backends = [{"name": "fcgiserve-prefork-keep", "label": "prefork", "django": False}]
    data = {"mode": "test", "finished": "now", "machine": "m", "reps": 1, "duration": 5, "command": "c",
            "workloads": [{"name": "hello-8", "description": "d"}], "backends": backends, "unavailable": {},
            "runs": [run], "memory": {}}  # fmt: skip
    page = report.render_markdown(data)
    assert "| hello-8 | prefork | 1 | 61/38 | 0.15 |" in page
    data["runs"] = [_run("fcgiserve-prefork-keep", "hello-8", 1000, 40)]  # an older JSON: no split recorded
    assert "Where the CPU went" not in report.render_markdown(data)
