"""The prefork scoreboard: one anonymous shared mapping of fixed-size child slots.

The master creates the mapping BEFORE forking, so every child shares it. Ownership of a slot passes
back and forth and is never shared: the master writes a slot only while it is FREE (``allocate``,
just before the fork) and after it has reaped the child (``release``); in between only that child
writes it, through its ``SlotWriter``. Bookkeeping costs no syscall per request: a few stores into the
mapping (typed memoryviews: one store per changed field) plus ``time.monotonic()`` (a vDSO call on Linux;
CLOCK_MONOTONIC is system-wide, so the master can compare a child's timestamps with its own clock).

A slot is a header (state, pid, generation, requests in progress, threads in ``serve()``, requests
served, seconds spent in requests; and for a one-thread child, the connections it holds and whether
some are kept alive, written per connection, not per request) followed by one
*lane* per concurrently tracked request (busy-since and the request line, truncated). A child runs
several worker threads, so each request in progress takes a lane for its duration; that is how the
master finds one stuck request among several and how the child's stack dump names its thread.

Readers must not see half-written slots: each slot starts with a sequence counter (a seqlock). The
writer makes it odd before writing and even after; a reader retries while it is odd or changed. A
writer that was preempted or died mid-write leaves it odd, so readers give up after a few
milliseconds and return what they read, marked ``consistent=False`` (the master acts on no such
reading, and releases the slot of a dead child on reaping anyway).
"""

from __future__ import annotations

import enum
import mmap
import os
import struct
import threading
import time
from dataclasses import dataclass
from threading import get_ident
from time import monotonic
from typing import Any

__all__ = ["LINE_BYTES", "RequestInProgress", "Scoreboard", "SlotSnapshot", "SlotState", "SlotWriter"]

LINE_BYTES = 200  # request line bytes kept per lane; longer lines are truncated (a cut character is dropped)

_SEQ = struct.Struct("=I")
# state, keeps (some of its connections are kept alive), pid, generation, requests in progress, threads in
# serve(), connections held, requests served, started_at (monotonic, set by the master), seconds spent in
# finished requests (summed over threads).
# Every field sits on a multiple of its size (slots start on 8-byte boundaries): a request's few changing
# fields are then stored one by one through typed views of the mapping (SlotWriter), not repacked whole.
_HEADER = struct.Struct("=BBxxiIIIIQdd")
# busy_since (0.0 = lane free), line length, line; padded so that every lane's busy_since is aligned too
_LANE = struct.Struct(f"=dH{LINE_BYTES}s" + "x" * (-(10 + LINE_BYTES) % 8))
_HEADER_AT = 8  # after the counter
_KEEPER = struct.Struct("=B?18xI")  # the header's state, keeps and connections held (keepers)
_LANES_AT = _HEADER_AT + _HEADER.size
# Byte offsets in a slot of the fields a request changes, and in a lane of its line.
_STATE_AT = _HEADER_AT
_ACTIVE_AT = _HEADER_AT + 12
_KEEPS_AT = _HEADER_AT + 1
_HELD_AT = _HEADER_AT + 20
_SERVED_AT = _HEADER_AT + 24
_BUSY_AT = _HEADER_AT + 40
_LINE_LENGTH_IN_LANE = 8
_LINE_IN_LANE = 10
_READ_PATIENCE = 0.005  # seconds a reader retries a slot being written (its writer may be preempted)


class SlotState(enum.IntEnum):
    FREE = 0  # no child; the master may allocate it
    STARTING = 1  # forked; make_factory() not finished yet
    READY = 2  # serving (idle or busy: see SlotSnapshot.status)
    STOPPING = 3  # draining after a graceful stop or max_requests


@dataclass(frozen=True, slots=True)
class RequestInProgress:
    busy_since: float  # time.monotonic() when the request started
    line: str


@dataclass(frozen=True, slots=True)
class SlotSnapshot:
    index: int
    state: SlotState
    pid: int  # 0 until the child has written its slot
    generation: int
    active: int  # requests in progress (may exceed the lanes; only lanes carry lines)
    serving: int  # threads inside ServedConnection.serve(), with or without a request yet
    served: int  # requests finished
    started_at: float
    requests: tuple[RequestInProgress, ...]
    busy_seconds: float = 0.0  # time spent in the requests finished so far (pools/cpudemand.py)
    held: int = 0  # connections the child holds, in service or parked (a one-thread child's; 0 for others)
    keeps: bool = False  # some of those are kept alive after a request (a one-thread child's)
    consistent: bool = True  # False: read while its writer was stuck mid-write (or died there)

    @property
    def idle(self) -> bool:
        """Ready to accept: a prefork child accepts only while none of its threads is serving."""
        return self.state is SlotState.READY and self.active == 0 and self.serving == 0

    @property
    def status(self) -> str:
        """starting, idle, busy (a thread is serving, with or without a request yet) or stopping."""
        if self.state is SlotState.READY:
            return "busy" if self.active or self.serving else "idle"
        return self.state.name.lower()

    def time_in_requests(self, now: float) -> float:
        """Seconds spent in requests so far, the ones in progress until ``now`` (monotonic) included."""
        return self.busy_seconds + sum(now - request.busy_since for request in self.requests)

    def oldest_busy_since(self) -> float | None:
        return min((r.busy_since for r in self.requests), default=None)

    def describe(self, now: float) -> dict[str, Any]:
        """This child's entry on a status page (php-fpm's per-process fields); ``now`` is monotonic."""
        oldest = min(self.requests, key=lambda r: r.busy_since, default=None)
        return {
            "pid": self.pid,
            "generation": self.generation,
            "state": self.status,
            "requests": self.served,
            "active_requests": self.active,
            "current_request": oldest.line if oldest else "",
            "request_duration": now - oldest.busy_since if oldest else 0.0,
            "started_seconds_ago": now - self.started_at,
        }


class Scoreboard:
    """The shared mapping; create it in the master before the first fork."""

    def __init__(self, slots: int, lanes: int) -> None:
        if slots < 1 or lanes < 1:
            raise ValueError("a scoreboard needs at least one slot and one lane")
        self.slots = slots
        self.lanes = lanes
        self._slot_size = -(-(_LANES_AT + lanes * _LANE.size) // 8) * 8
        self._map = mmap.mmap(-1, slots * self._slot_size, flags=mmap.MAP_SHARED)
        self._writers: list[SlotWriter] = []  # made in this process: their views must go before the mapping

    def close(self) -> None:
        for writer in self._writers:
            writer.release()
        self._map.close()

    # -- master side -------------------------------------------------------------------------------

    def allocate(self, generation: int, now: float) -> int | None:
        """Claim a FREE slot for a child about to be forked; None when the board is full."""
        for index in range(self.slots):
            if self._map[index * self._slot_size + _HEADER_AT] == SlotState.FREE:
                self._reset(index, SlotState.STARTING, generation, now)
                return index
        return None

    def release(self, index: int) -> None:
        """Free the slot of a reaped child (its writer is gone, so an odd counter is reset too)."""
        self._reset(index, SlotState.FREE, 0, 0.0)

    def read(self, index: int) -> SlotSnapshot:
        base = index * self._slot_size
        deadline = 0.0
        attempt = 0
        while True:
            (before,) = _SEQ.unpack_from(self._map, base)
            data = self._map[base : base + self._slot_size]
            (after,) = _SEQ.unpack_from(self._map, base)
            if before == after and not before & 1:
                return self._decode(index, data, consistent=True)
            attempt += 1
            if attempt == 8:
                deadline = time.monotonic() + _READ_PATIENCE
            elif attempt > 8:
                if time.monotonic() > deadline:
                    return self._decode(index, data, consistent=False)
                os.sched_yield()  # let a writer on this CPU finish its few stores

    def snapshot(self) -> list[SlotSnapshot]:
        """Every slot in use, in slot order."""
        # The state is judged on the consistent (seqlocked) read, never on a raw byte read while a child
        # may be writing its slot: a live child must never look FREE to the master.
        snaps = (self.read(index) for index in range(self.slots))
        return [snap for snap in snaps if snap.state is not SlotState.FREE]

    def glance(self) -> list[tuple[int, int, int, int]]:
        """(state, requests in progress, threads serving, requests served) of every slot, in slot order.

        A hint, read without the seqlock: the master's busy watch (busywatch.py) looks every few
        milliseconds while children serve, so it reads four header fields, not whole slots. A torn or stale
        reading costs at most one needless hand-off of a connection, which the next idle child serves."""
        mapping, size, unpack = self._map, self._slot_size, _HEADER.unpack_from
        glances = []
        for base in range(_HEADER_AT, self.slots * size, size):
            state, _keeps, _pid, _generation, active, serving, _held, served, *_times = unpack(mapping, base)
            glances.append((state, active, serving, served))
        return glances

    def keepers(self, besides: int, enough: int) -> bool:
        """Whether the web server keeps connections alive (a serving child holds one it kept after a
        request) and at least ``enough`` serving children other than slot ``besides`` hold connections
        (dispatch.py, deferring a new connection). A hint, read without the seqlock like ``glance``: a torn
        reading only moves one new connection's first request."""
        mapping, size, unpack = self._map, self._slot_size, _KEEPER.unpack_from
        keeping, count = False, 0
        for index in range(self.slots):
            state, keeps, held = unpack(mapping, index * size + _HEADER_AT)
            if state == SlotState.READY:
                keeping = keeping or keeps
                if held and index != besides:
                    count += 1
        return keeping and count >= enough

    def writer(self, index: int) -> SlotWriter:
        """The child's handle on its own slot (call in the child, after the fork)."""
        writer = SlotWriter(self._map, index * self._slot_size, self.lanes)
        self._writers.append(writer)
        return writer

    def _reset(self, index: int, state: SlotState, generation: int, now: float) -> None:
        base = index * self._slot_size
        self._map[base : base + self._slot_size] = bytes(self._slot_size)
        _HEADER.pack_into(self._map, base + _HEADER_AT, state, 0, 0, generation, 0, 0, 0, 0, now, 0.0)

    def _decode(self, index: int, data: bytes, consistent: bool) -> SlotSnapshot:
        header = _HEADER.unpack_from(data, _HEADER_AT)
        state, keeps, pid, generation, active, serving, held, served, started_at, busy = header
        requests = []
        for lane in range(self.lanes):
            busy_since, length, line = _LANE.unpack_from(data, _LANES_AT + lane * _LANE.size)
            if busy_since:
                requests.append(RequestInProgress(busy_since, line[:length].decode("utf-8", "ignore")))
        return SlotSnapshot(
            index=index,
            state=SlotState(state),
            pid=pid,
            generation=generation,
            active=active,
            serving=serving,
            served=served,
            started_at=started_at,
            requests=tuple(requests),
            busy_seconds=busy,
            held=held,
            keeps=keeps,
            consistent=consistent,
        )


class SlotWriter:
    """A child's writer for its own slot; also the pool's RequestObserver inside the child.

    Worker threads call ``request_started`` / ``request_finished`` around each request. The lock is
    in-process and almost never contended (a futex syscall only then). A request takes a free lane
    keyed by its thread; when every lane is taken it is still counted in ``active``.
    """

    def __init__(self, buffer: mmap.mmap, base: int, lanes: int) -> None:
        self._map = buffer
        self._base = base
        # Typed views of the mapping: a request stores its few changed fields one by one (a store each),
        # where pack_into would clear and rewrite the whole header. Indexes are in units of the item size.
        self._bytes = memoryview(buffer)
        self._u16, self._u32 = self._bytes.cast("H"), self._bytes.cast("I")
        self._u64, self._f64 = self._bytes.cast("Q"), self._bytes.cast("d")
        self._seq_at = base // 4
        self._state_at = base + _STATE_AT
        self._active_at = (base + _ACTIVE_AT) // 4
        self._keeps_at = base + _KEEPS_AT
        self._held_at = (base + _HELD_AT) // 4
        self._served_at = (base + _SERVED_AT) // 8
        self._busy_at = (base + _BUSY_AT) // 8
        self._lock = threading.Lock()
        # Each lane as where its fields are stored: (busy-since as an f64 index, line length as a u16
        # index, line as a byte offset); the free ones are popped from the end, lane 0 first.
        lanes_at = base + _LANES_AT
        self._free_lanes = [
            ((at := lanes_at + lane * _LANE.size) >> 3, (at + _LINE_LENGTH_IN_LANE) >> 1, at + _LINE_IN_LANE)
            for lane in range(lanes - 1, -1, -1)
        ]
        # thread ident -> (its lane, since, request line)
        self._held: dict[int, tuple[tuple[int, int, int], float, str]] = {}
        header = _HEADER.unpack_from(buffer, base + _HEADER_AT)
        self._seq: int = _SEQ.unpack_from(buffer, base)[0]
        self._state = SlotState(header[0])
        self._keeps: bool = header[1]
        self.retire_after = 0  # requests after which the child drains (max_requests): shown as STOPPING
        self._pid: int = header[2]
        self._generation: int = header[3]
        self._active: int = header[4]
        self._serving: int = header[5]
        self._connections: int = header[6]
        self._served: int = header[7]
        self._started_at: float = header[8]
        self._busy: float = header[9]

    @property
    def served(self) -> int:
        return self._served

    def mark_starting(self, pid: int) -> None:
        with self._lock:
            self._pid = pid
            self._write_header(SlotState.STARTING)

    def mark_ready(self) -> None:
        with self._lock:
            self._write_header(SlotState.READY)

    def mark_stopping(self) -> None:
        with self._lock:
            self._write_header(SlotState.STOPPING)

    def serving_started(self) -> None:
        """A thread entered serve(): the child accepts nothing now, even before a request arrives."""
        with self._lock:
            self._serving += 1
            self._publish_header()

    def serving_finished(self) -> None:
        with self._lock:
            if self._serving > 0:
                self._serving -= 1
            self._publish_header()

    def connections(self, held: int, keeps: bool) -> None:
        """The child holds ``held`` connections now, some of them kept alive after a request (``keeps``)
        or none; its one thread's watch list says when either changes."""
        with self._lock:
            self._connections, self._keeps = held, keeps
            seq = self._seq = (self._seq + 2) & 0xFFFFFFFF
            u32 = self._u32
            u32[self._seq_at] = (seq - 1) & 0xFFFFFFFF  # odd: being written
            u32[self._held_at] = held
            self._bytes[self._keeps_at] = keeps
            u32[self._seq_at] = seq

    def busy_threads(self) -> dict[int, str]:
        """Thread ident -> request line of every request in progress that holds a lane."""
        with self._lock:
            return {thread: line for thread, (_lane, _since, line) in self._held.items()}

    def request_started(self, info: str) -> None:
        now = monotonic()
        line = info.encode("utf-8", "replace")[:LINE_BYTES]
        thread = get_ident()
        with self._lock:
            self._active += 1
            seq = self._seq = (self._seq + 2) & 0xFFFFFFFF
            u32 = self._u32
            seq_at = self._seq_at
            u32[seq_at] = (seq - 1) & 0xFFFFFFFF  # odd: being written
            u32[self._active_at] = self._active
            if self._free_lanes and thread not in self._held:
                lane = self._free_lanes.pop()
                self._held[thread] = (lane, now, info)
                since_at, length_at, line_at = lane
                self._f64[since_at] = now
                size = self._u16[length_at] = len(line)
                self._bytes[line_at : line_at + size] = line
            u32[seq_at] = seq

    def request_finished(self) -> None:
        thread = get_ident()
        with self._lock:
            if self._active > 0:
                self._active -= 1
            self._served += 1
            held = self._held.pop(thread, None)
            if held is None and len(self._held) > self._active:
                # Finished on another thread than it started (should not happen): a lane must not
                # stay busy forever, or the master would take it for a stuck request.
                held = self._held.pop(min(self._held, key=lambda t: self._held[t][1]))
            if held is not None:
                self._busy += monotonic() - held[1]
            seq = self._seq = (self._seq + 2) & 0xFFFFFFFF
            u32 = self._u32
            u32[self._seq_at] = (seq - 1) & 0xFFFFFFFF  # odd: being written
            if self._served == self.retire_after:
                self._state = SlotState.STOPPING
                self._bytes[self._state_at] = SlotState.STOPPING
            u32[self._active_at] = self._active
            self._u64[self._served_at] = self._served
            self._f64[self._busy_at] = self._busy
            if held is not None:
                lane = held[0]
                self._free_lanes.append(lane)
                self._f64[lane[0]] = 0.0  # the lane is free
            u32[self._seq_at] = seq

    def release(self) -> None:
        """Let go of the mapping (its views), so that a board in the same process can close it."""
        for view in (self._u16, self._u32, self._u64, self._f64, self._bytes):
            view.release()

    def _write_header(self, state: SlotState) -> None:
        self._state = state
        self._publish_header()

    def _publish_header(self) -> None:
        """Write the whole header under the seqlock: the counter odd, the fields, the counter even again.
        The counter is stored on its own, never packed with the header: ``pack_into`` zeroes its whole
        target before it writes the fields, and a reader must never find a zeroed header behind an even
        counter."""
        seq = self._seq = (self._seq + 2) & 0xFFFFFFFF
        self._u32[self._seq_at] = (seq - 1) & 0xFFFFFFFF  # odd: being written
        _HEADER.pack_into(
            self._map,
            self._base + _HEADER_AT,
            self._state,
            self._keeps,
            self._pid,
            self._generation,
            self._active,
            self._serving,
            self._connections,
            self._served,
            self._started_at,
            self._busy,
        )
        self._u32[self._seq_at] = seq
