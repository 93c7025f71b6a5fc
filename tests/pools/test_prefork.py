"""The prefork pool, for real: a master subprocess (tests/pools/prefork_master.py) forking children
that serve the line protocol on a loopback listener; processes are observed through /proc.

Every connection is greeted with ``PID <child pid>``, so a test knows which child holds it.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from fcgiserve.pools.base import PoolSettings
from fcgiserve.pools.prefork import prefork_capacity
from tests.pools.lineproto import LineClient

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc")


def _stat_fields(pid: int) -> list[str] | None:
    """/proc/<pid>/stat from field 3 (state) on, or None when the process is gone."""
    try:
        data = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return data[data.rindex(")") + 2 :].split()


def _stat(pid: int) -> tuple[str, int] | None:
    """(state, ppid) of a process, or None when it is gone."""
    fields = _stat_fields(pid)
    return None if fields is None else (fields[0], int(fields[1]))


def _start_time(pid: int) -> str | None:
    """Field 22 (start time): tells a process from a later one that reuses its pid."""
    fields = _stat_fields(pid)
    return None if fields is None else fields[19]


def _all_pids() -> Iterator[int]:
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            yield int(entry)


def _alive(pid: int) -> bool:
    stat = _stat(pid)
    return stat is not None and stat[0] != "Z"


def _wait_until(predicate: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


class Master:
    def __init__(self, proc: subprocess.Popen[bytes], port: int, log_path: Path) -> None:
        self.proc = proc
        self.pid = proc.pid
        self.port = port
        self.log_path = log_path
        self.seen: dict[int, str | None] = {}  # every child seen, with its start time, for the cleanup

    def children(self) -> set[int]:
        """Live (non-zombie) children of the master."""
        found = set()
        for pid in _all_pids():
            stat = _stat(pid)
            if stat is not None and stat[1] == self.pid and stat[0] != "Z":
                found.add(pid)
                self.seen.setdefault(pid, _start_time(pid))
        return found

    def zombies(self) -> set[int]:
        return {pid for pid in _all_pids() if (_stat(pid) or ("", 0)) == ("Z", self.pid)}

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def connect(self) -> tuple[LineClient, int]:
        """A connection and the pid of the child that accepted it."""
        client = LineClient(("127.0.0.1", self.port), timeout=5.0)
        greeting = client.read_line()
        assert greeting.startswith("PID "), f"no greeting: {greeting!r}\n{self.log()}"
        return client, int(greeting[4:])

    def request(self, line: str) -> tuple[str, int]:
        """One request on a new connection: (reply, child pid)."""
        client, pid = self.connect()
        try:
            return client.request(line), pid
        finally:
            client.close()

    def signal(self, signum: int) -> None:
        os.kill(self.pid, signum)

    def wait(self, timeout: float) -> int:
        return self.proc.wait(timeout)

    def stats(self) -> dict[str, Any]:
        """The pool's stats(), logged by the master on SIGUSR1."""
        before = self.log().count(" STATS ")
        self.signal(signal.SIGUSR1)
        assert _wait_until(lambda: self.log().count(" STATS ") > before, 8.0)
        line = [x for x in self.log().splitlines() if " STATS " in x][-1]
        return dict(json.loads(line.split(" STATS ", 1)[1]))


@contextlib.contextmanager
def _master(
    tmp_path: Path,
    boot_control: Path | None = None,
    in_thread: bool = False,
    no_pdeathsig: bool = False,
    pin_cpu: int | None = None,
    **settings: Any,
) -> Iterator[Master]:
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(128)
    port = listener.getsockname()[1]
    log_path = tmp_path / "master.log"
    command = [sys.executable, "-m", "tests.pools.prefork_master", "--fd", str(listener.fileno())]
    command += ["--settings", json.dumps({"graceful_timeout": 3.0, **settings})]
    if boot_control is not None:
        command += ["--boot-control", str(boot_control)]
    if in_thread:
        command.append("--in-thread")
    if no_pdeathsig:
        command.append("--no-pdeathsig")
    if pin_cpu is not None:
        command += ["--pin-cpu", str(pin_cpu)]
    with log_path.open("wb") as log_file:
        proc = subprocess.Popen(
            command, cwd=ROOT, pass_fds=[listener.fileno()], stdout=log_file, stderr=subprocess.STDOUT
        )
    listener.close()  # the master holds it now
    master = Master(proc, port, log_path)
    try:
        yield master
    finally:
        if proc.poll() is None:
            master.children()
            proc.send_signal(signal.SIGQUIT)
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        for pid, started in master.seen.items():  # they die with the master; make sure, by pid
            if not _wait_until(lambda pid=pid: not _alive(pid), 2.0) and _start_time(pid) == started:
                os.kill(pid, signal.SIGKILL)


def _ready(master: Master, count: int = 1) -> None:
    """Wait until a child answers and ``count`` children exist."""
    assert master.request("ECHO up")[0] == "up", master.log()
    assert _wait_until(lambda: len(master.children()) >= count, 10.0), master.log()


def _concurrently(master: Master, lines: list[str]) -> list[tuple[str, int, float]]:
    """Send each line on its own connection at once; (reply, pid, seconds) each, "" reply on failure."""
    results: list[tuple[str, int, float]] = [("", 0, 0.0)] * len(lines)
    start = time.monotonic()

    def one(i: int) -> None:
        pid = 0
        try:
            client, pid = master.connect()
            try:
                results[i] = (client.request(lines[i]), pid, time.monotonic() - start)
            finally:
                client.close()
        except OSError:
            results[i] = ("", pid, time.monotonic() - start)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(lines))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    return results


def test_prefork_capacity_counts_threads_of_every_child() -> None:
    """S-E2: FCGI_MAX_REQS is per application: children x threads."""
    assert prefork_capacity(PoolSettings(max_children=6, threads_per_child=4)) == (24, 24)
    assert prefork_capacity(PoolSettings(max_children=3, threads_per_child=2, max_connections=10)) == (30, 6)


def test_idle_children_stay_within_spare_bounds(tmp_path: Path) -> None:
    with _master(tmp_path, min_spare=2, max_spare=3, max_children=8) as master:
        _ready(master, 2)
        time.sleep(0.5)
        assert 2 <= len(master.children()) <= 3
        replies = _concurrently(master, ["SLEEP 0.5"] * 6)
        assert [r[0] for r in replies] == ["SLEPT"] * 6
        # Back to at most max_spare idle children, one retirement per tick.
        assert _wait_until(lambda: len(master.children()) <= 3, 10.0), master.log()
        time.sleep(0.3)
        assert 2 <= len(master.children()) <= 3
        assert not master.zombies()


def test_growth_is_prompt_when_all_children_are_busy(tmp_path: Path) -> None:
    """Field note P1 (flup's prefork stuck at maxSpare on Python 3): six concurrent 1 s requests with
    min_spare=1 max_spare=2 max_children=10 must not queue behind two children."""
    with _master(tmp_path, min_spare=1, max_spare=2, max_children=10) as master:
        _ready(master)
        replies = _concurrently(master, ["SLEEP 1"] * 6)
        assert [r[0] for r in replies] == ["SLEPT"] * 6
        assert len({r[1] for r in replies}) == 6  # one child each: none waited for another
        assert max(r[2] for r in replies) < 1.85, replies


def _counting_children(master: Master, lines: list[str]) -> tuple[list[tuple[str, int, float]], list[int]]:
    """``_concurrently(master, lines)`` while the number of live children is sampled every 20 ms."""
    counts: list[int] = []
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            counts.append(len(master.children()))
            time.sleep(0.02)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        return _concurrently(master, lines), counts
    finally:
        done.set()
        sampler.join(5)


def test_never_more_than_max_children_under_load(tmp_path: Path) -> None:
    with _master(tmp_path, min_spare=1, max_spare=2, max_children=4) as master:
        _ready(master)
        replies, counts = _counting_children(master, ["SLEEP 0.3"] * 20)
        assert [r[0] for r in replies] == ["SLEPT"] * 20
        assert max(counts) == 4
        assert "reached max_children (4)" in master.log()
        assert master.stats()["max_children_reached"] >= 1


def test_no_growth_while_busy_children_saturate_the_cpus(tmp_path: Path) -> None:
    """CPU-bound requests on a pool confined to one CPU: once two children take turns on it, a third would
    only take turns too (pools/cpudemand.py), so the pool holds its size. Sleeping requests still grow it
    (test_growth_is_prompt_when_all_children_are_busy)."""
    cpu = min(os.sched_getaffinity(0))
    with _master(tmp_path, pin_cpu=cpu, min_spare=1, max_spare=1, max_children=8) as master:
        _ready(master)
        replies, counts = _counting_children(master, ["SPIN 0.3"] * 5)
        assert [r[0] for r in replies] == ["SPUN"] * 5, master.log()
        stats = master.stats()
        assert stats["growth_held"] >= 1, master.log()
        assert max(counts) <= 3, (counts, master.log())
        assert "all children busy on saturated CPUs" in master.log()


def test_busy_children_beyond_saturated_cpus_retire_and_lose_nothing(tmp_path: Path) -> None:
    """Three children computing without pause on one CPU: after SATURATED_BEFORE_RETIRE the youngest busy
    one retires (its kept connection goes to a sibling), and every request on every kept connection is
    answered."""
    cpu = min(os.sched_getaffinity(0))
    failures: list[str] = []
    answered = [0, 0, 0]
    with _master(tmp_path, pin_cpu=cpu, min_spare=1, max_spare=5, max_children=8) as master:
        _ready(master, 3)  # start-up: min_spare plus half the gap to max_spare

        def client(index: int) -> None:
            try:
                conn, _pid = master.connect()
                deadline = time.monotonic() + 5.0
                try:
                    for n in range(2000):  # bounded: about 100 in 5 s
                        if time.monotonic() > deadline:
                            break
                        if _kept_request(conn, f"ECHO {index}-{n}") != f"{index}-{n}":
                            failures.append(f"{index}-{n} unanswered")
                        if _kept_request(conn, "SPIN 0.03") != "SPUN":
                            failures.append(f"{index}-{n} SPIN unanswered")
                        answered[index] += 1
                finally:
                    conn.close()
            except OSError as exc:
                failures.append(repr(exc))

        threads = [threading.Thread(target=client, args=(i,)) for i in range(3)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        assert failures == [], (failures[:5], master.log()[-3000:])
        assert min(answered) > 5, answered
        assert "retiring busy worker" in master.log(), master.log()[-3000:]
        assert master.stats()["saturated_retired"] >= 1


def _cpu_seconds(pid: int) -> float:
    fields = _stat_fields(pid)
    assert fields is not None, f"process {pid} is gone"
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def test_a_connection_closed_while_a_forked_process_holds_it_costs_the_child_no_cpu(tmp_path: Path) -> None:
    """An application that forks (multiprocessing) gives the fork every socket of the child. When the web
    server then closes a kept-alive connection, the child closes its socket, but the socket itself lives on
    in the fork, and so would its entry in the child's epoll (level-triggered in a one-thread child): it
    would report the hang-up to the child's worker over and over, a full CPU for as long as the fork lives."""
    with _master(tmp_path, min_spare=1, max_spare=1, max_children=1) as master:
        _ready(master)
        client, pid = master.connect()
        assert _kept_request(client, "ECHO kept") == "kept"  # parked and served again: registered
        assert _kept_request(client, "FORK 4") == "FORKED"
        client.close()  # the child reads the end and closes its socket; the fork still holds it
        time.sleep(0.3)
        before = _cpu_seconds(pid)
        time.sleep(1.0)
        spent = _cpu_seconds(pid) - before
        assert spent < 0.2, f"the child spent {spent:.2f} s of CPU in 1 s while idle\n{master.log()[-2000:]}"
        assert master.request("ECHO still serving")[0] == "still serving"


def test_each_child_serves_at_most_max_requests(tmp_path: Path) -> None:
    with _master(tmp_path, min_spare=1, max_spare=2, max_children=3, max_requests=3) as master:
        _ready(master)
        served_by: Counter[int] = Counter()
        for n in range(15):
            reply, pid = master.request(f"ECHO {n}")
            assert reply == str(n)
            served_by[pid] += 1
        assert max(served_by.values()) <= 3
        assert len(served_by) >= 5
        assert _wait_until(lambda: not master.zombies(), 4.0)


def test_sigkill_of_a_busy_child_fails_only_its_request(tmp_path: Path) -> None:
    with _master(tmp_path, min_spare=3, max_spare=4, max_children=6) as master:
        _ready(master, 3)
        connections = [master.connect() for _ in range(3)]
        pids = [pid for _, pid in connections]
        assert len(set(pids)) == 3  # a child with a connection in service accepts no other
        for client, _ in connections:
            client.send("SLEEP 1")
        time.sleep(0.3)
        os.kill(pids[0], signal.SIGKILL)
        replies = [client.read_line() for client, _ in connections]
        for client, _ in connections:
            client.close()
        assert replies == ["", "SLEPT", "SLEPT"]
        assert _wait_until(lambda: pids[0] not in master.children() and len(master.children()) >= 3, 8.0)
        assert master.request("ECHO after")[0] == "after"
        assert f"worker {pids[0]} died (signal SIGKILL)" in master.log()
        assert not master.zombies()


def test_max_requests_jitter_spreads_the_exits(tmp_path: Path) -> None:
    """Field note P7: children recycle after 1 + random(0..3) requests, not all after the same count."""
    limits = {"max_requests": 1, "max_requests_jitter": 3}
    with _master(tmp_path, min_spare=1, max_spare=2, max_children=3, **limits) as master:
        _ready(master)
        served_by: Counter[int] = Counter()
        for n in range(30):
            served_by[master.request(f"ECHO {n}")[1]] += 1
        finished = list(served_by.values())[:-3]  # the last children may not have reached their limit
        assert max(served_by.values()) <= 4
        assert len(set(finished)) > 1, served_by


def test_crash_loop_pauses_forking(tmp_path: Path) -> None:
    """php-fpm's emergency threshold: ten abnormal exits within ten seconds pause forks (1 s first)."""
    with _master(tmp_path, min_spare=1, max_spare=1, max_children=1) as master:
        _ready(master)
        for kills in range(1, 11):
            (victim,) = master.children()
            os.kill(victim, signal.SIGKILL)
            if kills == 10:
                break
            assert _wait_until(lambda victim=victim: master.children() - {victim}, 8.0), master.log()
        assert _wait_until(lambda: "10 children crashed within 10s: no fork for 1s" in master.log(), 4.0)
        paused_at = time.monotonic()
        assert _wait_until(lambda: len(master.children()) == 1, 2.5)  # forks resume after the pause
        assert time.monotonic() - paused_at > 0.7
        assert master.request("ECHO back")[0] == "back"


def test_children_ignore_int(tmp_path: Path) -> None:
    """Ctrl-C reaches the whole process group; only the master acts on it."""
    with _master(tmp_path, min_spare=1, max_spare=1, max_children=2) as master:
        _ready(master)
        (child,) = master.children()
        os.kill(child, signal.SIGINT)
        time.sleep(0.3)
        assert master.children() == {child}
        assert master.request("ECHO alive") == ("alive", child)


def _kept_request(client: LineClient, line: str) -> str:
    """A request on a kept-alive connection that may have moved to another child meanwhile: the adopting
    child's factory greets it again (``PID <pid>``), which is skipped here."""
    client.send(line)
    reply = client.read_line()
    while reply.startswith("PID "):
        reply = client.read_line()
    return reply


def test_hup_retires_a_child_and_a_sibling_serves_its_kept_connection(tmp_path: Path) -> None:
    """HUP to a child is "retire": its parked kept-alive connection is handed over (SCM_RIGHTS, through the
    master's channel) instead of closed, and the request the web server sends on it next is answered."""
    with _master(tmp_path, min_spare=1, max_spare=1, max_children=2) as master:
        _ready(master)
        kept, pid = master.connect()
        assert kept.request("PID") == str(pid)
        os.kill(pid, signal.SIGHUP)
        assert _wait_until(lambda: pid not in master.children(), 5.0), master.log()
        assert _kept_request(kept, "PID") not in ("", str(pid)), master.log()
        assert _kept_request(kept, "ECHO still") == "still"


def test_a_kept_connection_survives_recycling(tmp_path: Path) -> None:
    """--maxrequests 3: one kept-alive connection sends 15 requests, one after another, and every one is
    answered, by at least three successive children (each retires and hands the connection on)."""
    with _master(tmp_path, min_spare=1, max_spare=2, max_children=3, max_requests=3) as master:
        _ready(master)
        kept, _pid = master.connect()
        pids = []
        for _ in range(15):
            reply = _kept_request(kept, "PID")
            assert reply.isdigit(), master.log()
            pids.append(int(reply))
        assert len(set(pids)) >= 3, pids


def test_kept_connections_survive_reloads(tmp_path: Path) -> None:
    """Each HUP to the master replaces the generation; the old children hand their parked connections to
    the new ones, so kept-alive clients see every request answered."""
    with _master(tmp_path, min_spare=2, max_spare=3, max_children=4) as master:
        _ready(master, 2)
        clients = [master.connect()[0] for _ in range(4)]
        first = {_kept_request(client, "PID") for client in clients}
        for round_ in range(3):
            master.signal(signal.SIGHUP)
            for _ in range(10):
                for i, client in enumerate(clients):
                    assert _kept_request(client, f"ECHO {round_}-{i}") == f"{round_}-{i}", master.log()
                time.sleep(0.02)
        assert _wait_until(lambda: not master.children() & {int(pid) for pid in first}, 8.0)
        assert all(_kept_request(client, "PID") not in first for client in clients)


def test_a_busy_child_hands_a_readable_parked_connection_to_an_idle_sibling(tmp_path: Path) -> None:
    """threads_per_child=1: a request on a connection parked in a child busy with another request does not
    wait for that request: the master nudges the child, which hands the connection to an idle sibling."""
    with _master(tmp_path, min_spare=2, max_spare=3, max_children=3, threads_per_child=1) as master:
        _ready(master, 2)
        kept, pid = master.connect()
        assert kept.request("ECHO parked") == "parked"
        slow = None
        for _ in range(40):  # a second connection on the same child (either idle child may accept)
            candidate, candidate_pid = master.connect()
            if candidate_pid == pid:
                slow = candidate
                break
            candidate.close()
        assert slow is not None, "no second connection reached the same child"
        slow.send("SLEEP 1.5")
        time.sleep(0.2)
        started = time.monotonic()
        assert _kept_request(kept, "PID") != str(pid)
        assert time.monotonic() - started < 0.7
        assert slow.read_line() == "SLEPT"


def test_a_child_without_connections_leaves_a_new_one_to_a_busy_sibling_for_a_moment(tmp_path: Path) -> None:
    """Pinned to one CPU. While no connection is kept alive (the web server closes them), a busy child
    makes no sibling wait. Once one is, a sibling that holds no connection, woken for a new one
    while a child that holds one is busy (so the kernel passed it over), leaves it in the backlog for a
    moment (the busy child could take it within a request), then serves it."""
    cpu = min(os.sched_getaffinity(0))
    deferred = "left to the siblings"

    def deferrals() -> list[str]:
        return [line for line in master.log().splitlines() if deferred in line]

    with _master(tmp_path, min_spare=2, max_spare=3, max_children=3, pin_cpu=cpu) as master:
        assert _wait_until(lambda: len(master.children()) >= 2, 10.0), master.log()
        first, first_pid = master.connect()
        first.send("SLEEP 0.5")  # its first request: the connection has not been kept alive yet
        time.sleep(0.1)
        other, other_pid = master.connect()
        assert other_pid != first_pid
        assert other.request("ECHO at once") == "at once"
        assert first.read_line() == "SLEPT"
        assert deferrals() == [], master.log()
        other.close()
        time.sleep(0.2)  # now the first connection is kept alive (parked) and its child holds only it
        first.send("SLEEP 0.5")
        time.sleep(0.1)
        late, late_pid = master.connect()
        assert late_pid != first_pid
        assert late.request("ECHO served") == "served"
        assert first.read_line() == "SLEPT"
        lines = deferrals()
        assert len(lines) == 1 and lines[0].split()[1] == str(late_pid), master.log()
        first.close()
        late.close()


def test_signals_that_reach_a_retiring_child_on_its_way_out_are_no_errors(tmp_path: Path) -> None:
    """A child that retires still gets signals until it is gone (the master's TERM at a stop, here a flood of
    USR1). Its signal queue's socketpair closes as it leaves, so the C-level handler must not write to it
    any more: Python reported every such write ("Exception ignored when trying to write to the signal
    wakeup fd", a broken pipe or a bad file descriptor) on stderr. The flood fills the wakeup socket, which
    then drops bytes: the HUP sent once before it must still retire the child (signals.py)."""
    with _master(tmp_path, min_spare=3, max_spare=3, max_children=3) as master:
        _ready(master, 3)
        for _round in range(6):
            leaving = set(master.children())
            for pid in leaving:
                os.kill(pid, signal.SIGHUP)  # retire: it exits on its own
            alive = set(leaving)
            deadline = time.monotonic() + 5.0
            while alive and time.monotonic() < deadline:  # one HUP each: the flood must not crowd it out
                for pid in list(alive):
                    try:
                        os.kill(pid, signal.SIGUSR1)
                    except ProcessLookupError:
                        alive.discard(pid)
            assert not alive, master.log()
            replaced = _wait_until(lambda leaving=leaving: len(master.children() - leaving) >= 3, 10.0)
            assert replaced, master.log()
        assert "wakeup fd" not in master.log(), master.log()


def test_a_parked_connection_gets_another_thread_of_a_busy_child(tmp_path: Path) -> None:
    """A request on a kept-alive connection parked in a child that is busy with another request is
    served at once by another thread of that child (max_children=1 leaves no other child)."""
    with _master(tmp_path, min_spare=1, max_spare=1, max_children=1, threads_per_child=2) as master:
        _ready(master)
        kept, pid = master.connect()
        assert kept.request("ECHO parked") == "parked"
        slow, slow_pid = master.connect()
        assert slow_pid == pid
        slow.send("SLEEP 1")
        time.sleep(0.2)
        started = time.monotonic()
        assert kept.request("ECHO meanwhile") == "meanwhile"
        assert time.monotonic() - started < 0.5
        assert slow.read_line() == "SLEPT"
        kept.close()
        slow.close()


def test_library_mode_reloads_and_stops_from_another_thread(tmp_path: Path) -> None:
    """run(install_signals=False) in a thread that is not the main one, driven by request_reload()
    and request_stop() (here from the main thread's own signal handlers)."""
    with _master(tmp_path, in_thread=True, min_spare=2, max_spare=2, max_children=4) as master:
        _ready(master, 2)
        old = master.children()
        master.signal(signal.SIGHUP)
        assert _wait_until(lambda: len(master.children() - old) >= 2 and not master.children() & old, 10.0)
        assert master.request("ECHO reloaded")[1] not in old
        assert _wait_until(lambda: not master.zombies(), 4.0)  # no SIGCHLD handler: reaped on the tick
        client, _ = master.connect()
        client.send("SLEEP 0.5")
        time.sleep(0.1)
        master.signal(signal.SIGTERM)
        assert client.read_line() == "SLEPT"
        client.close()
        assert master.wait(5) == 0
        assert "RETURNED stop (thread)" in master.log()


@pytest.mark.parametrize("no_pdeathsig", [False, True], ids=["pdeathsig", "lifeline-only"])
def test_children_die_with_a_killed_master(tmp_path: Path, no_pdeathsig: bool) -> None:
    with _master(tmp_path, no_pdeathsig=no_pdeathsig, min_spare=2, max_spare=3, max_children=4) as master:
        _ready(master, 2)
        busy, _ = master.connect()
        busy.send("SLEEP 5")
        children = master.children()
        assert len(children) >= 2
        master.proc.kill()
        master.wait(5)
        assert _wait_until(lambda: not any(_alive(pid) for pid in children), 2.0)
        busy.close()


def test_term_lets_the_request_in_flight_finish(tmp_path: Path) -> None:
    with _master(tmp_path, min_spare=1, max_spare=2, max_children=3) as master:
        _ready(master)
        client, _ = master.connect()
        client.send("SLEEP 1")
        time.sleep(0.2)
        started = time.monotonic()
        master.signal(signal.SIGTERM)
        assert client.read_line() == "SLEPT"
        client.close()
        assert master.wait(5) == 0
        assert time.monotonic() - started < 3.0
        assert "RETURNED stop" in master.log()


def test_second_term_or_quit_stops_at_once(tmp_path: Path) -> None:
    with _master(tmp_path, min_spare=1, max_spare=2, max_children=3, graceful_timeout=30.0) as master:
        _ready(master)
        client, _ = master.connect()
        client.send("SLEEP 5")
        time.sleep(0.2)
        started = time.monotonic()
        master.signal(signal.SIGTERM)
        time.sleep(0.2)
        master.signal(signal.SIGQUIT)
        assert client.read_line() == ""
        client.close()
        assert master.wait(5) == 0
        assert time.monotonic() - started < 2.5


def test_quit_stops_now(tmp_path: Path) -> None:
    with _master(tmp_path, min_spare=2, max_spare=2, max_children=3) as master:
        _ready(master, 2)
        children = master.children()
        client, _ = master.connect()
        client.send("SLEEP 5")
        time.sleep(0.2)
        started = time.monotonic()
        master.signal(signal.SIGQUIT)
        assert client.read_line() == ""
        assert master.wait(5) == 0
        assert time.monotonic() - started < 2.0
        assert "RETURNED quit" in master.log()
        assert not any(_alive(pid) for pid in children)
        client.close()


def test_hup_replaces_the_generation_without_a_failed_request(tmp_path: Path) -> None:
    with _master(tmp_path, min_spare=2, max_spare=3, max_children=6) as master:
        _ready(master, 2)
        old = master.children()
        failures: list[str] = []
        pids_after: set[int] = set()
        hup_at = time.monotonic() + 0.3
        deadline = time.monotonic() + 2.0
        sent_hup = False
        n = 0
        while time.monotonic() < deadline:
            if not sent_hup and time.monotonic() >= hup_at:
                master.signal(signal.SIGHUP)
                sent_hup = True
            try:
                reply, pid = master.request(f"ECHO {n}")
            except (OSError, AssertionError) as exc:
                failures.append(repr(exc))
                continue
            if reply != str(n):
                failures.append(reply)
            if sent_hup:
                pids_after.add(pid)
            n += 1
        assert failures == []
        assert n > 20
        assert _wait_until(lambda: not (master.children() & old), 10.0), master.log()
        new = master.children()
        assert len(new) >= 2
        assert master.request("ECHO new")[1] in new
        assert pids_after - old  # the new generation took over while requests kept flowing
        assert master.stats()["generation"] == 2


def test_reload_with_a_broken_application_keeps_the_old_generation(tmp_path: Path) -> None:
    control = tmp_path / "boot"
    control.write_text("ok")
    with _master(tmp_path, boot_control=control, min_spare=2, max_spare=2, max_children=4) as master:
        _ready(master, 2)
        old = master.children()
        control.write_text("fail")
        master.signal(signal.SIGHUP)
        assert _wait_until(lambda: "reload to generation 2 abandoned" in master.log(), 10.0), master.log()
        assert _wait_until(lambda: "failed to boot: make_factory() raised" in master.log(), 4.0)
        assert master.proc.poll() is None
        assert master.children() == old
        reply, pid = master.request("ECHO still")
        assert (reply, pid in old) == ("still", True)


def test_boot_failure_stops_the_master_without_a_fork_loop(tmp_path: Path) -> None:
    control = tmp_path / "boot"
    control.write_text("fail")
    started = time.monotonic()
    with _master(tmp_path, boot_control=control, min_spare=1, max_spare=2, max_children=4) as master:
        assert master.wait(5) == 3
        assert time.monotonic() - started < 4.0
        log = master.log()
        assert "ImportError: the test application cannot be imported" in log
        assert "the application cannot start" in log
        assert log.count("failed to boot: make_factory() raised") == 1  # start_servers = 1: one attempt


def test_timeout_dumps_the_stack_and_replaces_the_child(tmp_path: Path) -> None:
    with _master(tmp_path, min_spare=2, max_spare=2, max_children=4, timeout=0.5) as master:
        _ready(master, 2)
        client, pid = master.connect()
        started = time.monotonic()
        assert client.request("SLEEP 4") == ""
        assert time.monotonic() - started < 3.0
        client.close()
        log = master.log()
        assert f"worker {pid} exceeded the request timeout" in log
        assert "serving 'SLEEP 4'" in log
        assert "time.sleep(float(arg))" in log  # the busy thread's stack, down to the stuck line
        assert f"worker {pid} killed: request timeout" in log
        assert _wait_until(lambda: pid not in master.children() and len(master.children()) >= 2, 8.0)
        assert master.request("ECHO fine")[0] == "fine"


def test_a_silent_connection_does_not_stall_the_pool(tmp_path: Path) -> None:
    """A connection that sends nothing (a port probe, a slow client) holds the only accept of the
    child serving it; the master must count that child as busy and fork another."""
    with _master(tmp_path, min_spare=1, max_spare=1, max_children=3) as master:
        _ready(master)
        silent, silent_pid = master.connect()
        try:
            started = time.monotonic()
            reply, pid = master.request("ECHO served")
            assert (reply, pid != silent_pid) == ("served", True)
            assert time.monotonic() - started < 1.0
        finally:
            silent.close()


def test_kept_alive_idle_connections_do_not_pin_children(tmp_path: Path) -> None:
    """nginx `fastcgi_keep_conn on` + `keepalive 16` against max_children 6: sixteen idle kept
    connections are parked in the children, which still take new work at once."""
    with _master(tmp_path, min_spare=2, max_spare=6, max_children=6, threads_per_child=4) as master:
        _ready(master, 2)
        kept: list[LineClient] = []
        try:
            for n in range(16):  # like nginx: the request follows the connect at once
                client = master.connect()[0]
                kept.append(client)
                assert client.request(f"ECHO {n}") == str(n)
            replies = _concurrently(master, ["SLEEP 0.5"] * 5)
            assert [r[0] for r in replies] == ["SLEPT"] * 5
            assert max(r[2] for r in replies) < 1.4, replies
            for n, client in enumerate(kept):
                assert client.request(f"ECHO again {n}") == f"again {n}"
        finally:
            for client in kept:
                client.close()


def test_usr1_reopens_logs_everywhere_and_ttin_ttou_move_the_spare_bounds(tmp_path: Path) -> None:
    with _master(tmp_path, min_spare=1, max_spare=2, max_children=5) as master:
        _ready(master)
        children = master.children()
        assert _wait_until(lambda: master.stats()["generation"] == 1, 8.0)  # the master saw it READY
        stats = master.stats()
        assert _wait_until(lambda: all(f"REOPEN {pid}" in master.log() for pid in children), 8.0)
        assert f"REOPEN {master.pid}" in master.log()
        assert stats["max_children"] == 5 and stats["generation"] == 1
        assert {c["pid"] for c in stats["children"]} == children
        assert stats["served_requests"] >= 1
        master.signal(signal.SIGTTIN)
        assert _wait_until(lambda: "spare children now 2..3" in master.log(), 8.0)
        master.signal(signal.SIGTTIN)  # one at a time: a signal still pending absorbs a second one
        assert _wait_until(lambda: "spare children now 3..4" in master.log(), 8.0)
        assert _wait_until(lambda: len(master.children()) >= 3, 8.0)
        master.signal(signal.SIGTTOU)
        assert _wait_until(lambda: "TTOU: spare children now 2..3" in master.log(), 8.0)


def test_stats_show_the_request_in_progress(tmp_path: Path) -> None:
    with _master(tmp_path, min_spare=2, max_spare=3, max_children=4) as master:
        _ready(master, 2)
        client, pid = master.connect()
        client.send("SLEEP 1")
        time.sleep(0.3)
        stats = master.stats()
        (busy,) = [c for c in stats["children"] if c["pid"] == pid]
        assert busy["state"] == "busy" and busy["current_request"] == "SLEEP 1"
        assert 0.2 < busy["request_duration"] < 1.0
        assert stats["active_processes"] >= 1
        assert client.read_line() == "SLEPT"
        client.close()
