"""The request body stream behind ``wsgi.input`` (and ``fcgi.data`` for the Filter role).

This module owns one thing: a readable binary stream fed by the handler with the bytes of one FastCGI input
stream (STDIN or DATA) and read by the application. It knows no record, socket, pool or process.

Two sides, possibly on two threads:

* the handler calls :meth:`RequestBody.feed`, :meth:`~RequestBody.finish` and :meth:`~RequestBody.abort`;
* the application calls ``read``, ``readline``, ``readlines`` and iterates.

When the application asks for bytes that have not arrived yet, the body either calls ``fill()`` in the
reading thread (the handler reads the socket right there: no thread hop) or, without ``fill``, waits on a
condition until the handler feeds, finishes or aborts it. Unread bytes beyond ``spool_threshold`` go to an
anonymous temporary file, so a huge upload the application reads slowly (or never) costs bounded memory.

PEP 3333 rules enforced here: a read never blocks past ``CONTENT_LENGTH`` and never returns bytes beyond it; a
body that ends before ``CONTENT_LENGTH`` (S-G1: the client died mid-upload) raises :class:`BodyIncomplete`
instead of handing the application a silently short body. Without ``CONTENT_LENGTH``
(``wsgi.input_terminated``) the body is whatever the stream carries until its end; a body the handler stops
taking (too large) raises :class:`RequestAborted` rather than ending early, for the same reason.
"""

from __future__ import annotations

import os
import tempfile
import threading
from collections import deque
from collections.abc import Callable, Iterator
from typing import IO

__all__ = ["BodyIncomplete", "ClientDisconnected", "RequestAborted", "RequestBody"]

# What holding one chunk costs beyond its bytes (the bytes object's header, the queue's slot, the allocator's
# rounding), counted against the spool threshold: a peer that sends its body in 1-byte records must not make
# the threshold's worth of bytes cost fifty times that in memory.
_CHUNK_COST = 64


class ClientDisconnected(OSError):
    """The web server or the client went away: raised by ``RequestIO.write`` and by writes of the response.

    A subclass of :class:`OSError` (``IOError``) so that applications which already catch I/O errors while
    streaming behave sensibly.
    """


class RequestAborted(ClientDisconnected):
    """The request was aborted (FCGI_ABORT_REQUEST, S-F7, or the connection closed), or the server refused the
    rest of its body (larger than ``--max-body-size``): raised by body reads. Uncaught, it ends the request
    without a 500 from the adapter, so that the handler can still answer 413."""


class BodyIncomplete(OSError):
    """The input stream ended before ``CONTENT_LENGTH`` bytes arrived (S-G1): the body is truncated."""


class RequestBody:
    """A readable binary stream of one request input stream, with bounded memory.

    ``expected_length`` is ``CONTENT_LENGTH`` (or ``FCGI_DATA_LENGTH``); ``None`` means unknown: the body is
    then whatever the stream carries until it ends. Only one thread may read; any thread may feed.
    """

    __slots__ = (
        "_abort_reason",
        "_aborted",
        "_buffered",
        "_chunks",
        "_closed",
        "_cond",
        "_consumed",
        "_expected",
        "_file",
        "_file_read",
        "_file_write",
        "_finished",
        "_lock",
        "_offset",
        "_received",
        "_spilled",
        "_threshold",
        "fill",
    )

    def __init__(
        self, expected_length: int | None, spool_threshold: int, fill: Callable[[], bool] | None = None
    ) -> None:
        if expected_length is not None and expected_length < 0:
            raise ValueError(f"expected_length must be >= 0 or None, not {expected_length}")
        if spool_threshold < 0:
            raise ValueError(f"spool_threshold must be >= 0, not {spool_threshold}")
        self._expected = expected_length
        self._threshold = spool_threshold
        # Public: the handler drops it (sets None) when the request moves to a thread of its own.
        self.fill = fill
        self._lock = threading.Lock()
        self._cond: threading.Condition | None = None  # created by the first reader that has to wait
        # Unread bytes while not spilled, never more than the threshold: the chunks as fed (the record
        # contents, immutable), the first one read up to _offset. A read of whole chunks hands them out as
        # they are, and a read never moves the bytes left behind (a bytearray here shrank and regrew on every
        # read, which cost about 0.7 ms per MiB of upload).
        self._chunks: deque[bytes] = deque()
        self._offset = 0
        self._buffered = 0
        self._file: IO[bytes] | None = None
        self._spilled = False  # True while the unread bytes live in _file[_file_read:_file_write]
        self._file_read = 0
        self._file_write = 0
        self._received = 0  # bytes accepted (never more than expected_length)
        self._consumed = 0  # bytes handed to the application
        self._finished = False
        self._aborted = False
        self._abort_reason = "the request was aborted by the web server"
        self._closed = False

    # ------------------------------------------------------------------ handler side

    def feed(self, data: bytes) -> None:
        """Append bytes; bytes beyond ``expected_length`` and feeds after the end are dropped."""
        with self._lock:
            if self._finished or self._aborted or self._closed:
                return
            if self._expected is not None:
                room = self._expected - self._received
                if len(data) > room:
                    data = data[:room]
            size = len(data)
            if not size:
                return
            if self._spilled:
                self._file_write += _pwrite_all(self._fd(), data, self._file_write)
            elif self._buffered + size + _CHUNK_COST * (len(self._chunks) + 1) > self._threshold:
                self._spill(data)
            else:
                # Kept as is: a bytes chunk cannot change under us (a caller's bytearray is copied).
                self._chunks.append(data if type(data) is bytes else bytes(data))
                self._buffered += size
            self._received += size
            if self._cond is not None:
                self._cond.notify_all()

    def finish(self) -> None:
        """The stream ended (the empty STDIN / DATA record)."""
        with self._lock:
            self._finished = True
            if self._cond is not None:
                self._cond.notify_all()

    def abort(self, reason: str | None = None) -> None:
        """The request was aborted or its connection is gone, or the server refuses the rest of the body
        (``reason`` says why, e.g. too large): later reads raise :class:`RequestAborted` with that reason."""
        with self._lock:
            if reason is not None and not self._aborted:
                self._abort_reason = reason
            self._aborted = True
            if self._cond is not None:
                self._cond.notify_all()

    def is_aborted(self) -> bool:
        """True once :meth:`abort` was called (the application's ``environ["fcgiserve.aborted"]``)."""
        return self._aborted

    @property
    def expected_length(self) -> int | None:
        """CONTENT_LENGTH as given to the constructor (None = unknown)."""
        return self._expected

    @property
    def received(self) -> int:
        """Bytes accepted so far (at most ``expected_length``)."""
        return self._received

    @property
    def finished(self) -> bool:
        """True once the stream's end arrived (``finish()``), whatever it carried."""
        return self._finished

    @property
    def complete(self) -> bool:
        """True when the stream ended and carried at least ``expected_length`` bytes."""
        return self._finished and (self._expected is None or self._received >= self._expected)

    # ------------------------------------------------------------------ reader side

    def readable(self) -> bool:
        return True

    @property
    def closed(self) -> bool:
        return self._closed

    def read(self, size: int | None = -1) -> bytes:
        """Read up to ``size`` bytes (all that remain if ``size`` is negative or ``None``).

        Blocks until that many bytes arrived or the stream ended; returns ``b""`` at the end of the body.
        """
        want = self._clamp(size)
        if want == 0:
            return b""
        if want < 0:  # unknown length, read to the end of the stream
            while self._wait(self._received - self._consumed + 1):
                pass
            return self._take(self._received - self._consumed)
        self._wait(want)
        return self._take(want)

    def readinto(self, buffer: bytearray | memoryview) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def readline(self, size: int | None = -1) -> bytes:
        """Read one line (up to and including ``b"\\n"``), at most ``size`` bytes when ``size`` >= 0."""
        cap = self._clamp(size)
        if cap == 0:
            return b""
        scanned = 0
        while True:
            with self._lock:
                self._check_readable()
                window = self._received - self._consumed
                if cap >= 0 and window > cap:
                    window = cap
                if window > scanned:
                    found = self._find_newline(scanned, window)
                    if found >= 0:
                        return self._take_locked(found + 1)
                    if window == cap:
                        return self._take_locked(cap)
                    scanned = window
                if self._finished:
                    # A final line without a newline, or the end of the body.
                    self._check_complete()
                    return self._take_locked(window)
            self._wait(scanned + 1)

    def readlines(self, hint: int | None = -1) -> list[bytes]:
        """Read lines until the end of the body, or until their total size reaches ``hint`` (if > 0)."""
        lines: list[bytes] = []
        total = 0
        while True:
            line = self.readline()
            if not line:
                return lines
            lines.append(line)
            total += len(line)
            if hint is not None and 0 < hint <= total:
                return lines

    def __iter__(self) -> Iterator[bytes]:
        return self

    def __next__(self) -> bytes:
        line = self.readline()
        if not line:
            raise StopIteration
        return line

    def close(self) -> None:
        """Release the buffer and the temporary file; then reads raise ValueError, feeds are dropped."""
        with self._lock:
            self._closed = True
            self._chunks.clear()
            self._offset = self._buffered = 0
            spool, self._file = self._file, None
            self._spilled = False
            if self._cond is not None:
                self._cond.notify_all()
        if spool is not None:
            spool.close()

    def __enter__(self) -> RequestBody:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"<RequestBody expected={self._expected} received={self._received} consumed={self._consumed}"
            f" finished={self._finished} aborted={self._aborted} spilled={self._spilled}>"
        )

    # ------------------------------------------------------------------ internals

    def _clamp(self, size: int | None) -> int:
        """The most bytes a read may return: ``size`` capped at what CONTENT_LENGTH leaves; -1 = unbounded."""
        if self._expected is None:
            return -1 if size is None or size < 0 else size
        remaining = self._expected - self._consumed
        if size is None or size < 0 or size > remaining:
            return remaining
        return size

    def _wait(self, want: int) -> bool:
        """Wait until ``want`` unread bytes are buffered (True) or the stream ended (False).

        Raises :class:`RequestAborted` after an abort and :class:`BodyIncomplete` when the stream ended short
        of ``expected_length`` and fewer than ``want`` bytes are buffered.
        """
        while True:
            with self._lock:
                self._check_readable()
                if self._received - self._consumed >= want:
                    return True
                if self._finished:
                    self._check_complete()
                    return False
                fill = self.fill
                if fill is None:
                    if self._cond is None:
                        self._cond = threading.Condition(self._lock)
                    self._cond.wait()
                    continue
            # fill() reads the connection in this thread and feeds us (or other requests); not under our lock.
            if not fill():
                self.abort()

    def _check_readable(self) -> None:
        if self._aborted:
            raise RequestAborted(self._abort_reason)
        if self._closed:
            raise ValueError("I/O operation on a closed request body")

    def _check_complete(self) -> None:
        if self._expected is not None and self._received < self._expected:
            raise BodyIncomplete(
                f"request body ended after {self._received} of {self._expected} bytes (client went away?)"
            )

    def _take(self, size: int) -> bytes:
        with self._lock:
            self._check_readable()
            return self._take_locked(size)

    def _take_locked(self, size: int) -> bytes:
        """Consume up to ``size`` buffered bytes; the caller holds the lock."""
        if self._spilled:
            size = min(size, self._file_write - self._file_read)
            data = _pread_all(self._fd(), size, self._file_read)
            self._file_read += size
            if self._file_read == self._file_write:
                # Caught up: back to memory; the file is reused from its start, so disk use stays bounded too.
                self._spilled = False
                self._file_read = self._file_write = 0
        else:
            data = self._take_buffered(min(size, self._buffered))
        self._consumed += len(data)
        return data

    def _take_buffered(self, size: int) -> bytes:
        """Consume ``size`` of the in-memory bytes (at most all of them): whole chunks as they are, a part of
        one as a slice, several joined; the caller holds the lock."""
        chunks = self._chunks
        parts = []
        need = size
        while need:
            first = chunks[0]
            offset = self._offset
            left = len(first) - offset
            if left <= need:
                parts.append(first[offset:] if offset else first)
                chunks.popleft()
                self._offset = 0
                need -= left
            else:
                parts.append(first[offset : offset + need])
                self._offset = offset + need
                need = 0
        self._buffered -= size
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def _find_newline(self, start: int, stop: int) -> int:
        """Index of the first newline among unread bytes [start, stop), or -1; the caller holds the lock."""
        if not self._spilled:
            base = -self._offset  # where the first chunk's byte 0 sits among the unread bytes
            for chunk in self._chunks:
                if base >= stop:
                    break
                end = base + len(chunk)
                if end > start:
                    found = chunk.find(b"\n", max(start, base) - base, min(stop, end) - base)
                    if found >= 0:
                        return base + found
                base = end
            return -1
        chunk = _pread_all(self._fd(), stop - start, self._file_read + start)
        found = chunk.find(b"\n")
        return found if found < 0 else start + found

    def _spill(self, data: bytes) -> None:
        """Move the unread in-memory bytes plus ``data`` to the temporary file; the caller holds the lock."""
        if self._file is None:
            # Owned by the body and closed by close(); a with-block cannot span the request.
            self._file = tempfile.TemporaryFile(prefix="fcgiserve-body-")  # noqa: SIM115
        fd = self._fd()
        written = 0
        for index, chunk in enumerate(self._chunks):
            written += _pwrite_all(fd, memoryview(chunk)[self._offset :] if index == 0 else chunk, written)
        written += _pwrite_all(fd, data, written)
        self._chunks.clear()
        self._offset = self._buffered = 0
        self._file_read, self._file_write = 0, written
        self._spilled = True

    def _fd(self) -> int:
        assert self._file is not None
        return self._file.fileno()


def _pwrite_all(fd: int, data: bytes | bytearray | memoryview, offset: int) -> int:
    view = memoryview(data)
    total = len(view)
    done = 0
    while done < total:
        done += os.pwrite(fd, view[done:], offset + done)
    return total


def _pread_all(fd: int, size: int, offset: int) -> bytes:
    # One pread() on the hot path; a loop because Linux caps a single read at ~2 GiB.
    parts = []
    while size > 0:
        part = os.pread(fd, size, offset)
        if not part:  # our own file lost bytes: fail loudly instead of returning a short body
            raise OSError(f"request body spool file ended {size} bytes early")
        parts.append(part)
        size -= len(part)
        offset += len(part)
    return b"".join(parts)  # a single part comes back as is, without a copy
