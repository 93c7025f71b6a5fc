"""Memory a process holds for nothing: the C heap's free pages (glibc ``malloc_trim``), read buffers.

Start-up (imports, compiling dataclass code, loading the application) frees megabytes that the C allocator
keeps for later, so they stay counted in the process's resident memory for its whole life. A server that
idles on a small machine should not hold them: the threaded pool calls ``release_free_memory()`` once it
is ready to serve, a prefork master before it forks, so that its children inherit the trimmed heap. Never
in a forked child: a collection there writes to every object the child shares with its master, which
copies those pages (copy-on-write) into every child. For the same reason the master also freezes what it
has (``gc.freeze``): the children's own collections then leave the inherited objects alone. Elsewhere (not
glibc) the trim does nothing.

Each serving thread reads into one receive buffer of its own (``scratch_buffer``); a thread that has been
idle for a while gives its pages back (``release_scratch_buffer``), so a burst of uploads does not leave
256 KiB resident per thread it woke.
"""

from __future__ import annotations

import gc
import mmap
import sys
import threading

__all__ = [
    "FALLBACK_SCRATCH_SIZE",
    "SCRATCH_SIZE",
    "release_free_memory",
    "release_scratch_buffer",
    "scratch_buffer",
    "trim_heap",
]

SCRATCH_SIZE = 256 * 1024  # one recv takes a whole nginx request, or a good slice of an upload
FALLBACK_SCRATCH_SIZE = 64 * 1024  # below glibc's mmap threshold: it comes from the heap
_scratch = threading.local()


def release_free_memory(before_fork: bool = False) -> bool:
    """Collect garbage (and freeze what is left, ``before_fork``), then trim the C heap; True when the
    allocator gave memory back."""
    gc.collect()
    if before_fork:
        gc.freeze()
    return trim_heap()


def trim_heap() -> bool:
    """Give the C heap's free pages back (every thread's arena); True when the allocator gave any back.

    The pools also call this once a burst of work is over: each thread that handled large bodies keeps
    megabytes of freed buffers in its own arena, which a quiet server should not hold. No garbage
    collection here, so a prefork child can call it without un-sharing its master's pages.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        import ctypes  # lazily: only Linux needs it

        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):  # not glibc (musl has no malloc_trim)
        return False
    return bool(trim(0))


def scratch_buffer() -> tuple[mmap.mmap | bytearray, memoryview]:
    """This thread's receive buffer (and a view of it), for data that is consumed before the next read.

    One per thread, not one per connection: a zero-filled bytearray per kept-alive connection cost 256 KiB
    of resident memory each, so a hundred idle connections held 25 MiB for nothing. Anonymous pages become
    resident only once a read writes into them, so a thread that reads small requests costs a page.
    """
    try:
        return _scratch.buffer, _scratch.view
    except AttributeError:
        buffer: mmap.mmap | bytearray
        try:
            buffer = _map_scratch()
        except OSError:
            # No address space left for a new mapping (ulimit -v): a smaller buffer from the heap, whose
            # address space the C allocator has already reserved, still serves, in more reads.
            buffer = bytearray(FALLBACK_SCRATCH_SIZE)
        _scratch.buffer, _scratch.view = buffer, memoryview(buffer)
        return _scratch.buffer, _scratch.view


def _map_scratch() -> mmap.mmap:
    # Private, not mmap's default shared mapping: MADV_DONTNEED frees private pages, while a shared anonymous
    # mapping would keep them in its backing object.
    return mmap.mmap(-1, SCRATCH_SIZE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)


def release_scratch_buffer() -> None:
    """Give this thread's receive buffer pages back (they read as zeros, and become resident again on use).

    Only the owning thread may call it, between reads: the pools call it from a worker that waited for
    work a while, never while its buffer holds data.
    """
    buffer = getattr(_scratch, "buffer", None)
    if isinstance(buffer, mmap.mmap):
        buffer.madvise(mmap.MADV_DONTNEED)
