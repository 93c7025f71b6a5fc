"""The prefork master's check before it grows (pools/cpudemand.py): does a busy child wait for a CPU? And the
spell of saturated CPUs that its verdicts start and a lull ends."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from fcgiserve.pools import cpudemand
from fcgiserve.pools.cpudemand import (
    LULL,
    SATURATED_BEFORE_RETIRE,
    CpuDemand,
    SaturationSpell,
    Step,
    Verdict,
    cpu_times,
)

# CpuDemand reads the kernel's figures; SaturationSpell's tests script the verdicts and need none.
needs_schedstat = pytest.mark.skipif(
    cpu_times(os.getpid()) is None, reason="needs /proc/<pid>/task/*/schedstat"
)

MS = 1_000_000  # nanoseconds


def _fake(monkeypatch: pytest.MonkeyPatch, table: dict[int, tuple[int, int]]) -> CpuDemand:
    """A CpuDemand (made while the kernel's figures are readable) that reads ``table`` from now on."""
    demand = CpuDemand()
    monkeypatch.setattr(cpudemand, "cpu_times", table.get)
    return demand


@needs_schedstat
def test_the_first_look_is_unknown_and_the_second_judges(monkeypatch: pytest.MonkeyPatch) -> None:
    table = {11: (0, 0), 12: (0, 0)}
    demand = _fake(monkeypatch, table)
    assert demand.judge([(11, 0.0), (12, 0.0)], 10.0) is Verdict.UNKNOWN
    # Over 100 ms in requests each ran 60 ms and queued 35 ms: computing, on CPUs that are all taken.
    table.update({11: (60 * MS, 35 * MS), 12: (60 * MS, 35 * MS)})
    assert demand.judge([(11, 0.1), (12, 0.1)], 10.1) is Verdict.HOLD
    demand.forget()
    assert demand.judge([(11, 0.1), (12, 0.1)], 10.2) is Verdict.UNKNOWN


@needs_schedstat
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
@needs_schedstat
def test_thresholds(monkeypatch: pytest.MonkeyPatch, ran_ms: int, queued_ms: int, verdict: Verdict) -> None:
    table = {7: (1000 * MS, 500 * MS)}
    demand = _fake(monkeypatch, table)
    demand.judge([(7, 3.0)], 1.0)
    table[7] = ((1000 + ran_ms) * MS, (500 + queued_ms) * MS)
    assert demand.judge([(7, 3.1)], 1.1) is verdict  # 100 ms in requests


@needs_schedstat
def test_only_time_in_requests_counts(monkeypatch: pytest.MonkeyPatch) -> None:
    """Idle in epoll half of the interval, but computing on a crowded CPU whenever it serves: CPU-bound."""
    table = {7: (0, 0)}
    demand = _fake(monkeypatch, table)
    demand.judge([(7, 0.0)], 1.0)
    table[7] = (35 * MS, 15 * MS)  # 50 ms wanted in 50 ms of requests, out of 100 ms
    assert demand.judge([(7, 0.05)], 1.1) is Verdict.HOLD


@needs_schedstat
def test_a_long_request_counts_the_whole_interval(monkeypatch: pytest.MonkeyPatch) -> None:
    """No request finished since the previous look: the child was in one all along."""
    table = {7: (0, 0)}
    demand = _fake(monkeypatch, table)
    demand.judge([(7, 2.0)], 1.0)
    table[7] = (1 * MS, 1 * MS)  # sleeping in the application (a database)
    assert demand.judge([(7, 2.0)], 1.1) is Verdict.GROW
    table[7] = (71 * MS, 21 * MS)  # then computing on a crowded CPU, still in the same request
    assert demand.judge([(7, 2.0)], 1.2) is Verdict.HOLD


@needs_schedstat
def test_the_busy_children_decide_together(monkeypatch: pytest.MonkeyPatch) -> None:
    table = {1: (0, 0), 2: (0, 0)}
    demand = _fake(monkeypatch, table)
    demand.judge([(1, 0.0), (2, 0.0)], 0.0)
    table.update({1: (90 * MS, 30 * MS), 2: (2 * MS, 0)})  # one computes, the other waits on I/O
    assert demand.judge([(1, 0.1), (2, 0.1)], 0.1) is Verdict.GROW


@needs_schedstat
def test_a_child_seen_for_the_first_time_is_judged_next_time(monkeypatch: pytest.MonkeyPatch) -> None:
    table = {1: (0, 0)}
    demand = _fake(monkeypatch, table)
    demand.judge([(1, 0.0)], 0.0)
    table.update({1: (90 * MS, 30 * MS), 2: (0, 0)})
    assert demand.judge([(1, 0.1), (2, 5.0)], 0.1) is Verdict.HOLD  # judged on child 1 alone
    table.update({1: (180 * MS, 60 * MS), 2: (5 * MS, 0)})
    assert demand.judge([(1, 0.2), (2, 5.1)], 0.2) is Verdict.GROW  # now on both


@needs_schedstat
def test_exited_children_and_a_silent_kernel_mean_grow(monkeypatch: pytest.MonkeyPatch) -> None:
    demand = _fake(monkeypatch, {})
    assert demand.judge([(1, 0.0), (2, 0.0)], 0.0) is Verdict.GROW  # every child gone meanwhile
    assert demand.judge([], 0.1) is Verdict.GROW
    silent = CpuDemand()  # constructed while the kernel does not say (the fake knows no pid)
    assert silent.unavailable
    assert silent.judge([(1, 0.0)], 0.2) is Verdict.GROW


@needs_schedstat
def test_counters_that_go_back_count_as_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    """A thread that exits takes its share of the sum with it."""
    table = {1: (500 * MS, 500 * MS)}
    demand = _fake(monkeypatch, table)
    demand.judge([(1, 0.0)], 0.0)
    table[1] = (100 * MS, 100 * MS)
    assert demand.judge([(1, 0.1)], 0.1) is Verdict.GROW


@needs_schedstat
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


@needs_schedstat
def test_real_processes_taking_turns_on_one_cpu_hold(processes: list[subprocess.Popen[bytes]]) -> None:
    cpu = min(os.sched_getaffinity(0))
    pids = [_start(processes, "while True:\n    pass", cpu) for _ in range(2)]
    time.sleep(0.3)  # both spinning
    demand = CpuDemand()
    # Processes that are not pool children have no time in requests: a long request, all along.
    assert demand.judge([(pid, 0.0) for pid in pids], time.monotonic()) is Verdict.UNKNOWN
    time.sleep(0.2)
    assert demand.judge([(pid, 0.0) for pid in pids], time.monotonic()) is Verdict.HOLD


@needs_schedstat
def test_real_sleeping_processes_grow(processes: list[subprocess.Popen[bytes]]) -> None:
    cpu = min(os.sched_getaffinity(0))
    pids = [_start(processes, "import time\ntime.sleep(30)", cpu) for _ in range(2)]
    time.sleep(0.3)
    demand = CpuDemand()
    demand.judge([(pid, 0.0) for pid in pids], time.monotonic())
    time.sleep(0.2)
    assert demand.judge([(pid, 0.0) for pid in pids], time.monotonic()) is Verdict.GROW


# -- SaturationSpell: the verdicts scripted, the time fed -------------------------------------------------


class _Scripted(CpuDemand):
    """Returns ``verdict`` whatever the children; counts the calls."""

    def __init__(self) -> None:
        super().__init__()
        self.verdict = Verdict.HOLD
        self.judged: list[list[tuple[int, float]]] = []
        self.forgotten = 0

    def judge(self, children: list[tuple[int, float]], now: float) -> Verdict:
        self.judged.append(children)
        return self.verdict

    def forget(self) -> None:
        self.forgotten += 1


def _spell(cpus: int = 2) -> tuple[SaturationSpell, _Scripted]:
    demand = _Scripted()
    return SaturationSpell(cpus=cpus, demand=demand), demand


def _busy(count: int) -> list[tuple[int, float]]:
    return [(100 + n, 1.0) for n in range(count)]


def test_a_spell_starts_on_the_first_hold_and_holds() -> None:
    spell, demand = _spell()
    assert spell.step(10.0, 0, _busy(3), 1) is Step.HOLD_STARTS
    assert spell.step(10.2, 0, _busy(3), 1) is Step.HOLD
    assert demand.judged == [_busy(3), _busy(3)]
    assert spell.growth_held == 2
    assert spell.saturated_retired == 0


def test_retire_only_after_the_spell_lasted_and_one_at_a_time() -> None:
    spell, _ = _spell(cpus=2)
    assert spell.step(10.0, 0, _busy(3), 1) is Step.HOLD_STARTS
    assert spell.step(10.0 + SATURATED_BEFORE_RETIRE - 0.01, 0, _busy(3), 1) is Step.HOLD
    assert spell.step(10.0 + SATURATED_BEFORE_RETIRE, 0, _busy(3), 1) is Step.RETIRE
    assert spell.saturated_retired == 1
    # The next one waits as long again, counted from that retirement.
    assert spell.step(10.0 + SATURATED_BEFORE_RETIRE + 1.99, 0, _busy(3), 1) is Step.HOLD
    assert spell.step(10.0 + 2 * SATURATED_BEFORE_RETIRE, 0, _busy(3), 1) is Step.RETIRE
    assert spell.saturated_retired == 2
    assert spell.growth_held == 5


@pytest.mark.parametrize(
    ("cpus", "min_spare", "busy", "step"),
    [
        (2, 1, 3, Step.RETIRE),  # more busy children than CPUs
        (2, 1, 2, Step.HOLD),  # one per CPU: none beyond them
        (2, 3, 3, Step.HOLD),  # never below min_spare
        (2, 3, 4, Step.RETIRE),
        (4, 1, 4, Step.HOLD),
    ],
)
def test_retire_only_with_more_busy_children_than_cpus_and_min_spare(
    cpus: int, min_spare: int, busy: int, step: Step
) -> None:
    spell, _ = _spell(cpus=cpus)
    spell.step(0.0, 0, _busy(busy), min_spare)
    assert spell.step(5.0, 0, _busy(busy), min_spare) is step
    assert spell.saturated_retired == (step is Step.RETIRE)


def test_a_lull_ends_the_spell() -> None:
    spell, demand = _spell()
    assert spell.step(0.0, 0, _busy(3), 1) is Step.HOLD_STARTS
    assert spell.step(1.0, 1, [], 1) is Step.SPARE
    assert spell.step(1.0 + LULL, 1, [], 1) is Step.SPARE  # idle at every look for LULL: over
    assert demand.forgotten == 2
    assert spell.step(3.0, 0, _busy(3), 1) is Step.HOLD_STARTS  # a new spell, timed afresh
    assert spell.step(3.0 + SATURATED_BEFORE_RETIRE - 0.01, 0, _busy(3), 1) is Step.HOLD


def test_a_moment_between_two_requests_does_not_end_the_spell() -> None:
    spell, _ = _spell()
    assert spell.step(0.0, 0, _busy(3), 1) is Step.HOLD_STARTS
    assert spell.step(0.5, 1, [], 1) is Step.SPARE
    assert spell.step(0.5 + LULL - 0.01, 1, [], 1) is Step.SPARE  # not a whole LULL yet
    assert spell.step(1.7, 0, _busy(3), 1) is Step.HOLD
    # A busy look restarts the lull: idle children later need a whole LULL again.
    assert spell.step(1.8, 1, [], 1) is Step.SPARE
    assert spell.step(1.8 + LULL - 0.01, 1, [], 1) is Step.SPARE
    assert spell.step(2.9, 0, _busy(3), 1) is Step.RETIRE  # the spell still dates from 0.0


def test_children_still_booting_count_as_idle() -> None:
    spell, demand = _spell()
    assert spell.step(0.0, 2, _busy(3), 2) is Step.SPARE  # idle or booting: min_spare of them
    assert spell.step(0.1, 1, _busy(3), 2) is Step.HOLD_STARTS
    assert len(demand.judged) == 1


def test_grow_and_unknown_keep_the_growth_as_before() -> None:
    spell, demand = _spell()
    demand.verdict = Verdict.UNKNOWN
    assert spell.step(0.0, 0, _busy(3), 1) is Step.LOOK_AGAIN
    demand.verdict = Verdict.GROW
    assert spell.step(0.05, 0, _busy(3), 1) is Step.GROW
    assert spell.step(0.25, 0, _busy(5), 1) is Step.GROW
    assert (spell.growth_held, spell.saturated_retired) == (0, 0)


def test_a_grow_verdict_ends_the_spell() -> None:
    spell, demand = _spell()
    assert spell.step(0.0, 0, _busy(3), 1) is Step.HOLD_STARTS
    demand.verdict = Verdict.GROW
    assert spell.step(1.0, 0, _busy(3), 1) is Step.GROW
    demand.verdict = Verdict.HOLD
    assert spell.step(2.0, 0, _busy(3), 1) is Step.HOLD_STARTS  # not a retirement: a new spell
    assert spell.growth_held == 2


def test_an_unknown_verdict_neither_ends_nor_counts_in_the_spell() -> None:
    spell, demand = _spell()
    assert spell.step(0.0, 0, _busy(3), 1) is Step.HOLD_STARTS
    demand.verdict = Verdict.UNKNOWN
    assert spell.step(1.0, 0, _busy(3), 1) is Step.LOOK_AGAIN
    assert spell.growth_held == 1
    demand.verdict = Verdict.HOLD
    assert spell.step(2.0, 0, _busy(3), 1) is Step.RETIRE


@pytest.mark.skipif(not hasattr(os, "sched_getaffinity"), reason="no CPU affinity here")
def test_the_cpus_default_to_this_process_affinity(monkeypatch: pytest.MonkeyPatch) -> None:
    """taskset or a container's cpuset narrows them: the pool counts what its children may run on."""
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {3})
    assert SaturationSpell(demand=_Scripted()).cpus == 1
