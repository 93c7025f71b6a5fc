"""Per-request operations features: the access log, the status and ping pages, slow-request reports.

``handler.py`` asks ``RequestOperations.begin()`` for a ``RequestRecord`` before running the application and
calls ``finish()`` after the request ended. The record either carries a ready answer (status, ping, or 403
for a peer that may not see them), in which case the application is not called, or meters the response
(status code and body bytes, for the access log) and is registered as its thread's current request, where
the slow-request watchdog finds it. The wiring builds a ``RequestOperations`` only when one of the features
is on: otherwise the handler pays one attribute test per request.

Requests in progress are found through the threads that serve them: ``begin`` and ``finish`` run in the
serving thread, which owns one ``ThreadSlot`` (its current request and how many it has served) and is the
only writer of it. A thread creates its slot once, under the lock; after that a request costs a few
attribute writes and no lock. The slow-request watchdog and the threaded status page (one block per worker
thread, status_sources.py) read the slots.

Counters the status page shows must add up across prefork children and survive a child's exit, yet cost no
syscall and no cross-process lock: ``SharedCounters`` is an anonymous shared mapping created before the fork,
with one row per process (indexed by pid) that only that process writes, plus a few maxima.
"""

from __future__ import annotations

import logging
import mmap
import os
import struct
import sys
import threading
import time
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from fcgiserve.status import render_ping, render_status

__all__ = [
    "OperationsOptions",
    "RequestOperations",
    "RequestRecord",
    "SharedCounters",
    "ThreadSlot",
    "access_line",
]

log = logging.getLogger("fcgiserve.operations")
slow_log = logging.getLogger("fcgiserve.slowlog")
access_log = logging.getLogger("fcgiserve.access")

_ROWS = 4096  # process rows; two live processes share one only when their pids are equal modulo this
_ROW = struct.Struct("=QQ")  # accepted requests, slow requests
_MAXIMA = struct.Struct("=QQQ")  # max listen queue, max active processes, max children reached
_COUNTERS = ("accepted", "slow")
_MAX_NAMES = ("max listen queue", "max active processes", "max children reached")
_COUNTER_INDEX = {name: index for index, name in enumerate(_COUNTERS)}

# This process's pid, kept current across os.fork(): a prefork child counts in its own row, and starts its own
# slow-request watchdog. Read per request, where os.getpid() would be a system call each time.
_pid = os.getpid()


def _note_fork() -> None:
    global _pid
    _pid = os.getpid()


os.register_at_fork(after_in_child=_note_fork)


class SharedCounters:
    """Request counters shared by every process forked after it was created (see the module docstring)."""

    def __init__(self) -> None:
        self._map = mmap.mmap(-1, _MAXIMA.size + _ROWS * _ROW.size)
        # The rows as 64-bit words: a request adds to its counter with one store, not an unpack and a pack.
        self._words = memoryview(self._map).cast("Q")
        self._lock = threading.Lock()  # threads of one process share its row

    @staticmethod
    def _row_at(pid: int) -> int:
        """The word index of ``pid``'s row."""
        return (_MAXIMA.size + (pid % _ROWS) * _ROW.size) // 8

    def add(self, name: str, count: int = 1) -> None:
        # _pid, not os.getpid(): that system call per request took a seventh of a hello request's time under
        # load, with the status page on.
        at = self._row_at(_pid) + _COUNTER_INDEX[name]
        with self._lock:
            self._words[at] += count

    def total(self, name: str) -> int:
        """``name`` summed over every process's row (rows of processes that have exited included)."""
        first = _MAXIMA.size // 8 + _COUNTER_INDEX[name]
        return sum(self._words[first :: len(_COUNTERS)])

    def raise_max(self, name: str, value: int) -> int:
        """Raise the maximum ``name`` to ``value`` if larger; return the maximum."""
        index = _MAX_NAMES.index(name)  # the maxima are the first words
        with self._lock:
            if value > self._words[index]:
                self._words[index] = value
            return int(self._words[index])

    def bump(self, name: str) -> None:
        index = _MAX_NAMES.index(name)
        with self._lock:
            self._words[index] += 1


@dataclass(frozen=True, slots=True)
class OperationsOptions:
    status_path: str | None = None
    ping_path: str | None = None
    ping_response: str = "pong"
    access_log: bool = False
    slow_request_time: float = 0.0  # seconds; 0 = off
    # May this FastCGI peer see the status and ping pages? (The wiring: allow-list, else loopback only.)
    peer_may_see_status: Callable[[Any], bool] = lambda peer: True


class RequestRecord:
    """One request seen by the operations features; see ``RequestOperations.begin``."""

    __slots__ = (
        "_head",
        "_io",
        "answer",
        "body_bytes",
        "environ",
        "ident",
        "metered",
        "slot",
        "slow_reported",
        "started",
        "started_wall",
        "status",
    )

    def __init__(self, environ: dict[str, Any], answer: bytes | None = None, metered: bool = True) -> None:
        self.environ = environ
        self.answer = answer
        self.slot: ThreadSlot | None = None  # the serving thread's, while requests are tracked
        self.started = time.monotonic()
        self.started_wall = time.time()
        self.ident = threading.get_ident()
        self.status = 0
        self.body_bytes = 0
        self.slow_reported = False
        self.metered = metered  # the response's status and size are recorded (the access log reads them)
        self._head: bytes | None = b""  # the CGI header block while incomplete; None once parsed
        self._io: Any = None

    def wrap(self, io: Any) -> Any:
        """The handler's RequestIO, metered: the response's status code and body size are recorded. Not
        ``metered``: ``io`` itself, with no layer between the application and the connection."""
        if not self.metered:
            return io
        self._io = io
        return self

    # -- the RequestIO interface (wsgi.py) --------------------------------------------------------------

    def write(self, data: bytes, last: bool = False) -> None:
        self._meter(data)
        self._io.write(data, last)

    def write_errors(self, data: bytes) -> None:
        self._io.write_errors(data)

    @property
    def aborted(self) -> bool:
        return bool(getattr(self._io, "aborted", False))

    def _meter(self, data: bytes) -> None:
        if self._head is None:
            self.body_bytes += len(data)
            return
        head = self._head + data
        end = head.find(b"\r\n\r\n")
        if end < 0:
            self._head = head
            return
        self._head = None
        self.body_bytes = len(head) - end - 4
        self.status = _status_code(head[:end])


class ThreadSlot:
    """What one serving thread is doing and has done; written only by that thread, read by anyone."""

    __slots__ = ("record", "requests", "thread")

    def __init__(self, thread: threading.Thread) -> None:
        self.thread = thread
        self.record: RequestRecord | None = None  # the request it runs now
        self.requests = 0  # requests it finished, status and ping included (as the prefork scoreboard)


def _status_code(head: bytes) -> int:
    for line in head.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"status":
            try:
                return int(value.split()[0])
            except (ValueError, IndexError):
                return 0
    return 200  # CGI: no Status header means 200


def access_line(record: RequestRecord, now: float) -> str:
    """One access log line (the format is documented in docs/operations.md)::

    127.0.0.1 - alice [27/Nov/2026:21:00:00 +0000] "GET /hi?x=1 HTTP/1.1" 200 5120 0.004127 5f2b...

    remote address, "-", REMOTE_USER, start time, request line, status ("-" if none was sent), body
    bytes, seconds taken, request id (X-Request-Id header or REQUEST_ID param, else "-").
    """
    env = record.environ
    request_id = env.get("HTTP_X_REQUEST_ID") or env.get("REQUEST_ID") or "-"
    when = time.strftime("%d/%b/%Y:%H:%M:%S %z", time.localtime(record.started_wall))
    line = " ".join(
        (
            env.get("REQUEST_METHOD", "-"),
            _printable(env.get("REQUEST_URI") or _path(env)),
            env.get("SERVER_PROTOCOL", "-"),
        )
    )
    return (
        f"{env.get('REMOTE_ADDR') or '-'} - {_printable(env.get('REMOTE_USER') or '-')} [{when}] "
        f'"{line}" {record.status or "-"} {record.body_bytes} {now - record.started:.6f} '
        f"{_printable(request_id)}"
    )


def _printable(text: str) -> str:
    # A request line may hold any byte: keep each log entry one line, and quotes unambiguous.
    return "".join(c if c.isprintable() and c != '"' else f"\\x{ord(c):02x}" for c in text)


def _path(environ: Mapping[str, Any]) -> str:
    return str(environ.get("SCRIPT_NAME", "")) + str(environ.get("PATH_INFO", ""))


class RequestOperations:
    """The operations features of one process; thread-safe. ``stats_provider`` feeds the status page."""

    def __init__(
        self,
        options: OperationsOptions,
        stats_provider: Callable[[], dict[str, Any]] | None = None,
        counters: SharedCounters | None = None,
    ) -> None:
        self.options = options
        self.stats_provider = stats_provider
        self.counters = counters or SharedCounters()
        self._lock = threading.Lock()
        self._slots: dict[int, ThreadSlot] = {}  # thread ident -> its slot; added to under _lock
        self._local = threading.local()  # .slot: this thread's ThreadSlot
        self._watchdog_pid = 0  # the process whose watchdog thread runs (threads do not survive fork)
        self._track = bool(options.slow_request_time or options.status_path)

    # -- the handler's side -----------------------------------------------------------------------------

    def begin(self, environ: dict[str, Any], peer: Any) -> RequestRecord:
        """Called before the application runs; ``record.answer`` set means: send it, do not run the app."""
        record = RequestRecord(environ, metered=self.options.access_log)  # only the access log reads them
        if self._track:
            slot = getattr(self._local, "slot", None)
            if slot is None:
                slot = self._add_slot()
            slot.record = record  # before the status page is rendered: it shows its own thread Running
            record.slot = slot
        answer = record.answer = self._intercept(environ, peer)
        if answer is not None:
            return record
        self.counters.add("accepted")
        if self.options.slow_request_time and self._watchdog_pid != _pid:
            self._start_watchdog()
        return record

    def finish(self, record: RequestRecord) -> None:
        """Called once the request has ended (END_REQUEST sent), in the thread that called ``begin``."""
        slot = record.slot
        if slot is not None:
            slot.requests += 1
            if slot.record is record:
                slot.record = None
        if self.options.access_log and access_log.isEnabledFor(logging.INFO):
            if record.answer is not None:
                record.status = _status_code(record.answer.split(b"\r\n\r\n", 1)[0])
                record.body_bytes = len(record.answer.split(b"\r\n\r\n", 1)[-1])
            access_log.info("%s", access_line(record, time.monotonic()))

    def _add_slot(self) -> ThreadSlot:
        """The calling thread's first tracked request: its slot, replacing any of a thread that ended."""
        slot = self._local.slot = ThreadSlot(threading.current_thread())
        with self._lock:
            # Idents are reused: an ended thread's slot goes when a new thread takes its ident, or here.
            for ident in [i for i, s in self._slots.items() if not s.thread.is_alive()]:
                del self._slots[ident]
            self._slots[threading.get_ident()] = slot
        return slot

    def thread_slots(self) -> list[ThreadSlot]:
        """The slots of the threads that have served a tracked request (some may have ended since)."""
        with self._lock:
            return list(self._slots.values())

    def in_flight(self) -> list[RequestRecord]:
        """Requests the application runs now (status and ping answers excluded)."""
        return [r for s in self.thread_slots() if (r := s.record) is not None and r.answer is None]

    # -- status and ping --------------------------------------------------------------------------------

    def _intercept(self, environ: dict[str, Any], peer: Any) -> bytes | None:
        opts = self.options
        if opts.status_path is None and opts.ping_path is None:
            return None
        uri = str(environ.get("REQUEST_URI") or "")
        path = uri.partition("?")[0] if uri else _path(environ)
        if path not in (opts.status_path, opts.ping_path):
            return None
        if not opts.peer_may_see_status(peer):
            log.warning("status/ping request for %s refused: peer %s is not allowed", path, peer)
            body = b"Access denied.\n"
            head = b"Status: 403 Forbidden\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n"
            return head % len(body) + body
        if path == opts.ping_path:
            return render_ping(opts.ping_response)
        stats = self.stats_provider() if self.stats_provider is not None else {}
        return render_status(stats, str(environ.get("QUERY_STRING", "")))

    # -- slow requests ----------------------------------------------------------------------------------

    def _start_watchdog(self) -> None:
        with self._lock:
            if self._watchdog_pid == _pid:
                return
            self._watchdog_pid = _pid
        threading.Thread(target=self._watch, name="fcgiserve-slowlog", daemon=True).start()

    def _watch(self) -> None:
        limit = self.options.slow_request_time
        period = min(max(limit / 4, 0.05), 1.0)
        while True:
            time.sleep(period)
            now = time.monotonic()
            for record in self.in_flight():
                if not record.slow_reported and now - record.started >= limit:
                    record.slow_reported = True
                    self.counters.add("slow")
                    self._report_slow(record, now)

    def _report_slow(self, record: RequestRecord, now: float) -> None:
        """php-fpm's slowlog: where the request is now, once, without stopping it."""
        frame = sys._current_frames().get(record.ident)
        stack = "".join(traceback.format_stack(frame)) if frame is not None else "(the thread has finished)\n"
        env = record.environ
        slow_log.warning(
            "slow request: %s %s running for %.3fs (--slow-request-time %gs), pid %d; stack:\n%s",
            env.get("REQUEST_METHOD", "-"),
            _printable(str(env.get("REQUEST_URI") or _path(env))),
            now - record.started,
            self.options.slow_request_time,
            os.getpid(),
            stack.rstrip("\n"),
        )
