"""SharedCounters: request counts that add up across forked processes and outlive them (prefork's status)."""

from __future__ import annotations

import os
import threading

from fcgiserve.operations import SharedCounters


def test_counts_add_up_across_forked_processes_and_threads() -> None:
    counters = SharedCounters()  # created before the forks, like the server does
    counters.add("accepted", 5)
    pids = []
    for _ in range(3):
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child's effect is what is checked
            status = 1
            try:
                workers = [
                    threading.Thread(target=lambda: [counters.add("accepted") for _ in range(500)])
                    for _ in range(4)
                ]
                for worker in workers:
                    worker.start()
                for worker in workers:
                    worker.join()
                counters.add("slow")
                counters.raise_max("max active processes", os.getpid() % 7 + 1)
                status = 0
            finally:
                os._exit(status)
        pids.append(pid)
    for pid in pids:
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
    # The children are gone; their counts stay (a reaped prefork child must not lower "accepted conn").
    assert counters.total("accepted") == 5 + 3 * 4 * 500
    assert counters.total("slow") == 3
    assert counters.raise_max("max active processes", 0) == max(pid % 7 + 1 for pid in pids)


def test_maxima_only_rise_and_bump_counts() -> None:
    counters = SharedCounters()
    assert counters.raise_max("max listen queue", 3) == 3
    assert counters.raise_max("max listen queue", 1) == 3
    counters.bump("max children reached")
    counters.bump("max children reached")
    assert counters.raise_max("max children reached", 0) == 2


def test_a_forked_child_counts_in_its_own_row() -> None:
    """The row follows the process across os.fork(), without asking the kernel for the pid per request."""
    counters = SharedCounters()
    counters.add("accepted", 2)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child's effect is what is checked
        status = 1
        try:
            os.close(read)
            counters.add("accepted", 7)
            counters.add("slow")
            status = 0
        finally:
            os._exit(status)
    os.close(write)
    _, status = os.waitpid(pid, 0)
    os.close(read)
    assert os.waitstatus_to_exitcode(status) == 0
    mine, childs = SharedCounters._row_at(os.getpid()), SharedCounters._row_at(pid)
    assert mine != childs  # (pids equal modulo 4096 would share a row; a child's pid never equals ours)
    assert (counters._words[mine], counters._words[mine + 1]) == (2, 0)
    assert (counters._words[childs], counters._words[childs + 1]) == (7, 1)
    assert (counters.total("accepted"), counters.total("slow")) == (9, 1)
