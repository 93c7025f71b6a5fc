"""Process memory upkeep (fcgiserve/memory.py): the per-thread read buffer and giving its pages back."""

from __future__ import annotations

import ctypes
import threading

import pytest

from fcgiserve import memory
from fcgiserve.memory import FALLBACK_SCRATCH_SIZE, SCRATCH_SIZE, release_scratch_buffer, scratch_buffer


def _resident_kib(address: int) -> int:
    """Rss of the mapping that holds ``address`` (and of any it was merged with), from /proc/self/smaps."""
    inside = False
    with open("/proc/self/smaps") as smaps:
        for line in smaps:
            head = line.split()[0]
            if "-" in head and ":" not in head:
                start, end = (int(part, 16) for part in head.split("-"))
                inside = start <= address < end
            elif inside and head == "Rss:":
                return int(line.split()[1])
    raise AssertionError("mapping not found")


def test_each_thread_has_its_own_buffer_and_keeps_it() -> None:
    buffer, view = scratch_buffer()
    assert len(buffer) == SCRATCH_SIZE and view.obj is buffer
    assert scratch_buffer()[0] is buffer
    other: list[object] = []
    thread = threading.Thread(target=lambda: other.append(scratch_buffer()[0]))
    thread.start()
    thread.join()
    assert other[0] is not buffer


def test_release_gives_the_pages_back_and_the_buffer_stays_usable() -> None:
    def work() -> None:
        buffer, view = scratch_buffer()
        buffer[:] = b"\xab" * SCRATCH_SIZE  # every page resident
        address = _address(view)
        before = _resident_kib(address)  # the kernel may merge the buffer with neighbouring mappings
        release_scratch_buffer()
        # Private pages: freed, not kept by a shared backing object.
        assert before - _resident_kib(address) >= SCRATCH_SIZE // 1024
        assert buffer[:16] == bytes(16)  # reads zeros from now on
        buffer[:4] = b"next"  # and still takes a read
        assert bytes(view[:4]) == b"next"

    thread = threading.Thread(target=work)  # a fresh thread: its own fresh buffer
    thread.start()
    thread.join()


def test_release_without_a_buffer_does_nothing() -> None:
    thread = threading.Thread(target=release_scratch_buffer)
    thread.start()
    thread.join()


def _address(view: memoryview) -> int:
    return ctypes.addressof(ctypes.c_char.from_buffer(view))


def test_without_address_space_for_a_mapping_the_buffer_comes_from_the_heap(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """ulimit -v reached: mmap fails with ENOMEM; a smaller heap buffer still serves, and releasing it is a
    no-op."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise OSError(12, "Cannot allocate memory")

    monkeypatch.setattr(memory, "_map_scratch", refuse)
    got: list[object] = []

    def work() -> None:
        buffer, view = scratch_buffer()
        release_scratch_buffer()
        buffer[:4] = b"read"
        got.extend([buffer, bytes(view[:4]), scratch_buffer()[0] is buffer])

    thread = threading.Thread(target=work)  # a fresh thread: no buffer yet
    thread.start()
    thread.join()
    assert isinstance(got[0], bytearray) and len(got[0]) == FALLBACK_SCRATCH_SIZE
    assert got[1:] == [b"read", True]
