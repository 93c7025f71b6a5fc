"""Hand the C heap's free pages back to the kernel once a process has started (glibc ``malloc_trim``).

Start-up (imports, compiling dataclass code, loading the application) frees megabytes that the C allocator
keeps for later, so they stay counted in the process's resident memory for its whole life. A server that
idles on a small machine should not hold them: the threaded pool calls ``release_free_memory()`` once it
is ready to serve, a prefork master before it forks, so that its children inherit the trimmed heap. Never
in a forked child: a collection there writes to every object the child shares with its master, which
copies those pages (copy-on-write) into every child. For the same reason the master also freezes what it
has (``gc.freeze``): the children's own collections then leave the inherited objects alone. Elsewhere (not
glibc) the trim does nothing.
"""

from __future__ import annotations

import gc
import sys

__all__ = ["release_free_memory", "trim_heap"]


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
