"""The prefork master's check before it grows (pools/cpudemand.py): does a busy child wait for a CPU?"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from fcgiserve.pools import cpudemand
from fcgiserve.pools.cpudemand import CpuDemand, Verdict, cpu_times

pytestmark = pytest.mark.skipif(cpu_times(os.getpid()) is None, reason="needs /proc/<pid>/task/*/schedstat")

MS = 1_000_000  # nanoseconds


def _fake(monkeypatch: pytest.MonkeyPatch, table: dict[int, tuple[int, int]]) -> CpuDemand:
    """A CpuDemand (made while the kernel's figures are readable) that reads ``table`` from now on."""
    demand = CpuDemand()
    monkeypatch.setattr(cpudemand, "cpu_times", table.get)
    return demand


def test_the_first_look_is_unknown_and_the_second_judges(monkeypatch: pytest.MonkeyPatch) -> None:
    table = {11: (0, 0), 12: (0, 0)}
    demand = _fake(monkeypatch, table)
    assert demand.judge([(11, 0.0), (12, 0.0)], 10.0) is Verdict.UNKNOWN
    # Over 100 ms in requests each ran 60 ms and queued 35 ms: computing, on CPUs that are all taken.
    table.update({11: (60 * MS, 35 * MS), 12: (60 * MS, 35 * MS)})
    assert demand.judge([(11, 0.1), (12, 0.1)], 10.1) is Verdict.HOLD
    demand.forget()
    assert demand.judge([(11, 0.1), (12, 0.1)], 10.2) is Verdict.UNKNOWN


@pytest.mark.parametrize(
    ("ran_ms", "queued_ms", "verdict"),
    [
        (95, 0, Verdict.GROW),  # computing, but never queued: a CPU is free for a sibling
        (5, 5, Verdict.GROW),  # waiting for something else (a database): a sibling serves meanwhile
        (30, 20, Verdict.GROW),  # half the time: not CPU-bound
        (50, 15, Verdict.HOLD),
        (20, 70, Verdict.HOLD),  # starved of CPU
    ],
)
def test_thresholds(monkeypatch: pytest.MonkeyPatch, ran_ms: int, queued_ms: int, verdict: Verdict) -> None:
    table = {7: (1000 * MS, 500 * MS)}
    demand = _fake(monkeypatch, table)
    demand.judge([(7, 3.0)], 1.0)
    table[7] = ((1000 + ran_ms) * MS, (500 + queued_ms) * MS)
    assert demand.judge([(7, 3.1)], 1.1) is verdict  # 100 ms in requests


def test_only_time_in_requests_counts(monkeypatch: pytest.MonkeyPatch) -> None:
    """Idle in epoll half of the interval, but computing on a crowded CPU whenever it serves: CPU-bound."""
    table = {7: (0, 0)}
    demand = _fake(monkeypatch, table)
    demand.judge([(7, 0.0)], 1.0)
    table[7] = (35 * MS, 15 * MS)  # 50 ms wanted in 50 ms of requests, out of 100 ms
    assert demand.judge([(7, 0.05)], 1.1) is Verdict.HOLD


def test_a_long_request_counts_the_whole_interval(monkeypatch: pytest.MonkeyPatch) -> None:
    """No request finished since the previous look: the child was in one all along."""
    table = {7: (0, 0)}
    demand = _fake(monkeypatch, table)
    demand.judge([(7, 2.0)], 1.0)
    table[7] = (1 * MS, 1 * MS)  # sleeping in the application (a database)
    assert demand.judge([(7, 2.0)], 1.1) is Verdict.GROW
    table[7] = (71 * MS, 21 * MS)  # then computing on a crowded CPU, still in the same request
    assert demand.judge([(7, 2.0)], 1.2) is Verdict.HOLD


def test_the_busy_children_decide_together(monkeypatch: pytest.MonkeyPatch) -> None:
    table = {1: (0, 0), 2: (0, 0)}
    demand = _fake(monkeypatch, table)
    demand.judge([(1, 0.0), (2, 0.0)], 0.0)
    table.update({1: (90 * MS, 30 * MS), 2: (2 * MS, 0)})  # one computes, the other waits on I/O
    assert demand.judge([(1, 0.1), (2, 0.1)], 0.1) is Verdict.GROW


def test_a_child_seen_for_the_first_time_is_judged_next_time(monkeypatch: pytest.MonkeyPatch) -> None:
    table = {1: (0, 0)}
    demand = _fake(monkeypatch, table)
    demand.judge([(1, 0.0)], 0.0)
    table.update({1: (90 * MS, 30 * MS), 2: (0, 0)})
    assert demand.judge([(1, 0.1), (2, 5.0)], 0.1) is Verdict.HOLD  # judged on child 1 alone
    table.update({1: (180 * MS, 60 * MS), 2: (5 * MS, 0)})
    assert demand.judge([(1, 0.2), (2, 5.1)], 0.2) is Verdict.GROW  # now on both


def test_exited_children_and_a_silent_kernel_mean_grow(monkeypatch: pytest.MonkeyPatch) -> None:
    demand = _fake(monkeypatch, {})
    assert demand.judge([(1, 0.0), (2, 0.0)], 0.0) is Verdict.GROW  # every child gone meanwhile
    assert demand.judge([], 0.1) is Verdict.GROW
    silent = CpuDemand()  # constructed while the kernel does not say (the fake knows no pid)
    assert silent.unavailable
    assert silent.judge([(1, 0.0)], 0.2) is Verdict.GROW


def test_counters_that_go_back_count_as_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    """A thread that exits takes its share of the sum with it."""
    table = {1: (500 * MS, 500 * MS)}
    demand = _fake(monkeypatch, table)
    demand.judge([(1, 0.0)], 0.0)
    table[1] = (100 * MS, 100 * MS)
    assert demand.judge([(1, 0.1)], 0.1) is Verdict.GROW


def test_cpu_times_of_this_process_grow_while_it_computes() -> None:
    before = cpu_times(os.getpid())
    assert before is not None
    until = time.thread_time() + 0.05
    while time.thread_time() < until:
        pass
    after = cpu_times(os.getpid())
    assert after is not None
    assert after[0] - before[0] >= 40 * MS
    assert cpu_times(2**22 + 12345) is None  # no such process (pid_max is at most 2**22)


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for proc in started:
        proc.kill()
        proc.wait(5)


def _start(processes: list[subprocess.Popen[bytes]], code: str, cpu: int) -> int:
    pin = f"import os\nos.sched_setaffinity(0, {{{cpu}}})\n"
    proc = subprocess.Popen([sys.executable, "-c", pin + code])
    processes.append(proc)
    return proc.pid


def test_real_processes_taking_turns_on_one_cpu_hold(processes: list[subprocess.Popen[bytes]]) -> None:
    cpu = min(os.sched_getaffinity(0))
    pids = [_start(processes, "while True:\n    pass", cpu) for _ in range(2)]
    time.sleep(0.3)  # both spinning
    demand = CpuDemand()
    # Processes that are not pool children have no time in requests: a long request, all along.
    assert demand.judge([(pid, 0.0) for pid in pids], time.monotonic()) is Verdict.UNKNOWN
    time.sleep(0.2)
    assert demand.judge([(pid, 0.0) for pid in pids], time.monotonic()) is Verdict.HOLD


def test_real_sleeping_processes_grow(processes: list[subprocess.Popen[bytes]]) -> None:
    cpu = min(os.sched_getaffinity(0))
    pids = [_start(processes, "import time\ntime.sleep(30)", cpu) for _ in range(2)]
    time.sleep(0.3)
    demand = CpuDemand()
    demand.judge([(pid, 0.0) for pid in pids], time.monotonic())
    time.sleep(0.2)
    assert demand.judge([(pid, 0.0) for pid in pids], time.monotonic()) is Verdict.GROW
