"""Where the status page's numbers come from: the pools, the shared counters and the listening sockets.

Each ``*_stats_provider`` returns the callable that ``operations.RequestOperations`` calls to render a status
page, producing php-fpm's field names (see ``status.py``). The threaded pool answers from its own counters.
In prefork a CHILD answers the status request; it reads the scoreboard (shared memory) through its copy of
the pool, the counters every process adds to (``SharedCounters``), and the master's "max children reached"
events relayed into those counters by the wiring, so the numbers are the pool's, not the child's.

Threaded mode has one process: its threads stand in for php-fpm's processes. ``?full`` lists one block per
worker thread (the process pid, plus "thread id"), Idle or Running, and one per other thread while it runs
a request (a multiplexed request's own thread, handler.py). The facts come from the threads' slots that
``RequestOperations`` keeps (operations.py) and from ``threading.enumerate()``; the pool's "idle" and
"active processes" are counted from that same listing, so that the two always agree (exporters check).
"""

from __future__ import annotations

import os
import socket
import struct
import threading
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from fcgiserve.config import Config
from fcgiserve.listeners import AllowList, is_loopback_address
from fcgiserve.operations import (
    OperationsOptions,
    RequestOperations,
    RequestRecord,
    SharedCounters,
    ThreadSlot,
)

if TYPE_CHECKING:  # annotations only: a threaded server never loads the prefork code
    from fcgiserve.pools.prefork import PreforkPool

__all__ = ["build_operations", "listen_queue", "prefork_stats_provider", "threaded_stats_provider"]

POOL_NAME = "fcgiserve"
# struct tcp_info (linux/tcp.h): 8 bytes of u8 fields, then u32 rto, ato, snd_mss, rcv_mss, unacked, sacked.
# On a listening socket tcpi_unacked is the accept queue's current length and tcpi_sacked its limit (this
# is what php-fpm reads for "listen queue" and "listen queue len").
_TCP_INFO_QUEUE = struct.Struct("=8xIIIIII")
# The threaded pool's worker threads are named <this>N (pools/dispatch.py, Dispatcher's thread_name).
WORKER_THREAD_PREFIX = "fcgiserve-worker-"


def listen_queue(socks: Sequence[socket.socket]) -> tuple[int, int]:
    """(connections waiting to be accepted, queue limit), summed over the TCP listeners; 0 where unknown."""
    waiting = limit = 0
    for sock in socks:
        if sock.family not in (socket.AF_INET, socket.AF_INET6) or not hasattr(socket, "TCP_INFO"):
            continue
        try:
            info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, _TCP_INFO_QUEUE.size)
        except OSError:
            continue
        if len(info) >= _TCP_INFO_QUEUE.size:
            *_, unacked, sacked = _TCP_INFO_QUEUE.unpack_from(info)
            waiting += unacked
            limit += sacked
    return waiting, limit


def _pool_fields(
    ops: RequestOperations, socks: Sequence[socket.socket], start_time: float, idle: int, active: int
) -> dict[str, Any]:
    counters = ops.counters
    waiting, limit = listen_queue(socks)
    return {
        "pool": POOL_NAME,
        "process manager": "dynamic",
        "start time": start_time,
        "start since": int(time.time() - start_time),
        "accepted conn": counters.total("accepted"),
        "listen queue": waiting,
        "max listen queue": counters.raise_max("max listen queue", waiting),
        "listen queue len": limit,
        "idle processes": idle,
        "active processes": active,
        "total processes": idle + active,
        "max active processes": counters.raise_max("max active processes", active),
        "max children reached": counters.raise_max("max children reached", 0),
        "slow requests": counters.total("slow"),
    }


def _request_entry(record: RequestRecord, now: float) -> dict[str, Any]:
    """The fields of a block that describe the request in progress; ``now`` is monotonic."""
    env = record.environ
    return {
        "state": "busy",
        "request duration": int((now - record.started) * 1_000_000),
        "request method": env.get("REQUEST_METHOD", "-"),
        "request URI": env.get("REQUEST_URI", "-"),
        "content length": _length(env.get("CONTENT_LENGTH")),
        "user": env.get("REMOTE_USER") or "-",
        "script": env.get("SCRIPT_FILENAME") or env.get("SCRIPT_NAME") or "-",
    }


def _length(value: str | None) -> int:
    """CONTENT_LENGTH as the web server sent it (it may be absent, empty or no number: then 0)."""
    value = (value or "").strip()
    return int(value) if value.isdigit() and value.isascii() else 0


def thread_started(native_id: int | None, default: float) -> float:
    """When a thread of this process started (Unix time), from /proc (Linux); ``default`` where unknown."""
    try:
        with open(f"/proc/self/task/{native_id}/stat", "rb") as stat:
            fields = stat.read().rpartition(b")")[2].split()  # the name, in parentheses, may hold spaces
        ticks = int(fields[19])  # field 22, starttime: clock ticks after boot
        age = time.clock_gettime(time.CLOCK_BOOTTIME) - ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, AttributeError):
        return default
    return time.time() - max(0.0, age)


def thread_entries(slots: list[ThreadSlot], default_start: float) -> list[dict[str, Any]]:
    """One block per worker thread, and per other thread while it runs a request, in thread start order."""
    by_thread = {id(slot.thread): slot for slot in slots}  # a slot holds its thread: the id stays its own
    pid = os.getpid()
    now = time.monotonic()
    entries = []
    for thread in threading.enumerate():
        slot = by_thread.get(id(thread))
        record = slot.record if slot is not None else None
        if record is None and not thread.name.startswith(WORKER_THREAD_PREFIX):
            continue  # not a worker: listed only while it runs a request (a multiplexed request's thread)
        entry: dict[str, Any] = {
            "pid": pid,
            "thread id": thread.native_id or 0,
            "state": "idle",
            "start time": thread_started(thread.native_id, default_start),
            "requests": slot.requests if slot is not None else 0,
        }
        if record is not None:
            entry.update(_request_entry(record, now))
        entries.append(entry)
    return entries


def threaded_stats_provider(
    ops: RequestOperations, socks: Sequence[socket.socket]
) -> Callable[[], dict[str, Any]]:
    start_time = time.time()

    def stats() -> dict[str, Any]:
        # Idle and active are counted from the listing, not from the pool's counters (which may differ by a
        # thread on its way in or out), so that exporters comparing the two find them equal.
        processes = thread_entries(ops.thread_slots(), start_time)
        active = sum(1 for p in processes if p["state"] == "busy")
        fields = _pool_fields(ops, socks, start_time, len(processes) - active, active)
        fields["processes"] = processes
        return fields

    return stats


def prefork_stats_provider(
    pool: PreforkPool, ops: RequestOperations, socks: Sequence[socket.socket]
) -> Callable[[], dict[str, Any]]:
    def stats() -> dict[str, Any]:
        pool_stats = pool.stats()  # in a child: its copy of the pool, reading the shared scoreboard
        now = time.time()
        # Not filtered by generation: a child's copy of the pool may predate the current generation.
        children = [c for c in pool_stats["children"] if c["state"] in ("idle", "busy")]
        idle = sum(1 for c in children if c["state"] == "idle")
        active = len(children) - idle
        fields = _pool_fields(ops, socks, pool_stats["start_time"] or now, idle, active)
        processes = []
        for child in children:
            method, _, uri = str(child["current_request"]).partition(" ")
            processes.append(
                {
                    "pid": child["pid"],
                    "state": child["state"],
                    "start time": now - child["started_seconds_ago"],
                    "requests": child["requests"],
                    "request duration": int(child["request_duration"] * 1_000_000),
                    "request method": method or "-",
                    "request URI": uri or "-",
                }
            )
        fields["processes"] = processes
        return fields

    return stats


def build_operations(config: Config, counters: SharedCounters) -> RequestOperations | None:
    """The operations features ``config`` turns on, or None (then the handler skips them entirely)."""
    if not (config.access_log or config.status_path or config.ping_path or config.slow_request_time):
        return None
    allow = AllowList.from_config(config)

    def peer_may_see_status(peer: Any) -> bool:
        # Behind an allow-list every connected peer passed it; without one, only local peers qualify.
        if allow.active or not isinstance(peer, tuple):
            return True
        return is_loopback_address(str(peer[0]))

    options = OperationsOptions(
        status_path=config.status_path,
        ping_path=config.ping_path,
        access_log=config.access_log is not None,
        slow_request_time=config.slow_request_time,
        peer_may_see_status=peer_may_see_status,
    )
    return RequestOperations(options, counters=counters)
