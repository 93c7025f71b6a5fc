"""RequestBody, the stream behind wsgi.input / fcgi.data (PEP 3333 input stream; checklist S-G1, S-F7)."""

from __future__ import annotations

import io as stdio
import os
import threading
import time
import tracemalloc
from collections.abc import Callable, Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fcgiserve.wsgi import BodyIncomplete, ClientDisconnected, RequestAborted, RequestBody
from tests.wsgi.wsgi_support import finished_body

LINES = b"first line\nsecond\n\nlast without newline"
_OPENED: list[RequestBody] = []


@pytest.fixture(autouse=True)
def _close_bodies() -> Iterator[None]:
    """The handler closes every body (releasing its spool file); so do the tests."""
    yield
    while _OPENED:
        _OPENED.pop().close()


def make(expected: int | None, threshold: int, fill: Callable[[], bool] | None = None) -> RequestBody:
    body = RequestBody(expected, threshold, fill)
    _OPENED.append(body)
    return body


def fed_in_pieces(data: bytes, threshold: int, piece: int, expected: int | None = -1) -> RequestBody:
    body = make(len(data) if expected == -1 else expected, threshold)
    for start in range(0, len(data), piece):
        body.feed(data[start : start + piece])
    body.finish()
    return body


# Every reading method on the same body, in memory (big threshold) and spooled (threshold 0 and 7).
THRESHOLDS = [1 << 20, 0, 7]


@pytest.mark.parametrize("threshold", THRESHOLDS)
@pytest.mark.parametrize("piece", [1, 3, 1000])
def test_read_all(threshold: int, piece: int) -> None:
    body = fed_in_pieces(LINES, threshold, piece)
    assert body.read() == LINES
    assert body.read() == b""
    assert body.read(10) == b""


@pytest.mark.parametrize("threshold", THRESHOLDS)
def test_read_sizes(threshold: int) -> None:
    body = fed_in_pieces(LINES, threshold, 5)
    assert body.read(0) == b""
    assert body.read(5) == LINES[:5]
    assert body.read(None) == LINES[5:]
    body = fed_in_pieces(LINES, threshold, 5)
    assert body.read(-1) == LINES


@pytest.mark.parametrize("threshold", THRESHOLDS)
@pytest.mark.parametrize("piece", [1, 4, 1000])
def test_readline(threshold: int, piece: int) -> None:
    body = fed_in_pieces(LINES, threshold, piece)
    assert body.readline() == b"first line\n"
    assert body.readline(3) == b"sec"
    assert body.readline(100) == b"ond\n"
    assert body.readline() == b"\n"
    assert body.readline(0) == b""
    assert body.readline() == b"last without newline"
    assert body.readline() == b""


@pytest.mark.parametrize("threshold", THRESHOLDS)
def test_readlines_and_iteration(threshold: int) -> None:
    expected = [b"first line\n", b"second\n", b"\n", b"last without newline"]
    assert fed_in_pieces(LINES, threshold, 3).readlines() == expected
    assert list(fed_in_pieces(LINES, threshold, 3)) == expected
    assert fed_in_pieces(LINES, threshold, 3).readlines(12) == expected[:2]  # stops once the hint is reached
    assert fed_in_pieces(LINES, threshold, 3).readlines(None) == expected


def test_readinto() -> None:
    body = finished_body(b"abcdef")
    buffer = bytearray(4)
    assert body.readinto(buffer) == 4 and buffer == b"abcd"
    assert body.readinto(buffer) == 2 and buffer[:2] == b"ef"
    assert body.readinto(buffer) == 0


def test_never_reads_past_content_length() -> None:
    """PEP 3333: the application must not read past CONTENT_LENGTH; extra STDIN bytes are dropped."""
    body = make(5, 1 << 20)
    body.feed(b"hello, and more")
    body.feed(b"even more")
    # No finish(): CONTENT_LENGTH bytes arrived, so nothing here may block.
    assert body.readline() == b"hello"
    assert body.read() == b""
    assert body.read(10) == b""
    assert body.readline() == b""
    assert body.received == 5


def test_unknown_length_reads_to_the_end_of_the_stream() -> None:
    body = fed_in_pieces(b"abc\ndef", 1 << 20, 2, expected=None)
    assert body.expected_length is None
    assert body.read(2) == b"ab"
    assert body.readline() == b"c\n"
    assert body.read(100) == b"def"
    assert body.read() == b""


def test_unknown_length_empty_body() -> None:
    body = make(None, 1 << 20)
    body.finish()
    assert body.read() == b"" and body.readline() == b"" and body.readlines() == []
    assert body.complete


def test_zero_length_body_never_waits() -> None:
    body = make(0, 1 << 20)  # never fed nor finished: a read must still return at once
    assert body.read() == b"" and body.readline() == b"" and list(body) == []


@pytest.mark.parametrize("threshold", THRESHOLDS)
@pytest.mark.parametrize(
    "read",
    [
        lambda b: b.read(),
        lambda b: b.read(10),
        lambda b: b.readline(),
        lambda b: b.readlines(),
    ],
)
def test_short_body_raises_body_incomplete(threshold: int, read: Callable[[RequestBody], object]) -> None:
    """S-G1: STDIN ended before CONTENT_LENGTH: the application gets an error, not a silently short body."""
    body = make(10, threshold)
    body.feed(b"abc")
    body.finish()
    assert not body.complete
    with pytest.raises(BodyIncomplete, match="3 of 10"):
        read(body)


def test_short_body_still_gives_complete_lines_and_reads() -> None:
    body = make(100, 1 << 20)
    body.feed(b"line\nrest")
    body.finish()
    assert body.readline() == b"line\n"
    assert body.read(2) == b"re"
    with pytest.raises(BodyIncomplete):
        body.readline()
    assert issubclass(BodyIncomplete, OSError)


@pytest.mark.parametrize(
    "read", [lambda b: b.read(), lambda b: b.read(1), lambda b: b.readline(), lambda b: list(b)]
)
def test_abort_makes_reads_raise(read: Callable[[RequestBody], object]) -> None:
    """S-F7: ABORT_REQUEST (or the connection closing) is delivered to the reader."""
    body = make(10, 1 << 20)
    body.feed(b"abc")
    assert not body.is_aborted()
    body.abort()
    assert body.is_aborted()
    with pytest.raises(RequestAborted):
        read(body)
    assert issubclass(RequestAborted, ClientDisconnected) and issubclass(ClientDisconnected, OSError)
    body.feed(b"ignored")
    assert body.received == 3


@pytest.mark.parametrize("expected", [None, 1000])
def test_abort_with_a_reason_names_it_in_every_read(expected: int | None) -> None:
    """The handler stops taking a body that grew past --max-body-size: the application's reads raise with
    that reason (not "aborted by the web server"), bytes already buffered included, and nothing fed after."""
    body = make(expected, 4)
    body.feed(b"line one\nline two\n")  # spooled: the threshold is 4
    assert body.readline() == b"line one\n"
    body.abort("request body exceeds --max-body-size 16")
    body.abort()  # a later plain abort (the connection closing) keeps the first reason
    for read in (lambda: body.read(), lambda: body.read(1), lambda: body.readline(), lambda: list(body)):
        with pytest.raises(RequestAborted, match="exceeds --max-body-size 16"):
            read()
    body.feed(b"more")
    assert body.received == 18


def test_closed_body_refuses_reads_and_drops_feeds() -> None:
    with make(10, 0) as body:
        body.feed(b"spooled")
    assert body.closed
    with pytest.raises(ValueError, match="closed"):
        body.read()
    body.feed(b"x")
    body.finish()
    assert body.received == 7
    assert body.readable()
    assert "RequestBody" in repr(body)


def test_feeds_after_finish_are_dropped() -> None:
    body = make(None, 1 << 20)
    body.feed(b"a")
    body.finish()
    body.feed(b"b")
    body.feed(b"")
    assert body.read() == b"a"


def test_constructor_validates() -> None:
    with pytest.raises(ValueError, match="expected_length"):
        RequestBody(-1, 0)
    with pytest.raises(ValueError, match="spool_threshold"):
        RequestBody(None, -1)


# ------------------------------------------------------------------------------------------------- spooling


def test_spool_keeps_memory_under_the_threshold_for_a_50_mb_body() -> None:
    """A 50 MB body fed in 64 KiB pieces and never read costs at most the threshold in memory."""
    threshold = 256 * 1024
    size = 50 * 1024 * 1024
    chunk = os.urandom(65536)
    body = make(size, threshold)
    tracemalloc.start()
    try:
        for _ in range(size // len(chunk)):
            body.feed(chunk)
            assert body._buffered <= threshold  # unread bytes held in memory
        body.finish()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < threshold + 4 * len(chunk), peak
    assert body.received == size and body.complete
    # Everything comes back, in order.
    total = 0
    while piece := body.read(1 << 20):
        assert piece[:65536] == chunk
        total += len(piece)
    assert total == size
    body.close()


def test_spool_returns_to_memory_once_the_reader_catches_up() -> None:
    body = make(None, 8)
    body.feed(b"0123456789")  # over the threshold: spooled
    assert body._spilled
    assert body.read(10) == b"0123456789"
    assert not body._spilled  # caught up: back in memory, the file reused from its start
    body.feed(b"abc")
    body.feed(b"defghijk")  # spooled again, from offset 0 of the same file
    assert body._spilled
    body.finish()
    assert body.readline() == b"abcdefghijk"
    body.close()


def test_a_spool_file_that_lost_bytes_fails_loudly() -> None:
    body = make(None, 0)
    body.feed(b"0123456789")
    os.ftruncate(body._fd(), 4)  # someone truncated our temporary file
    with pytest.raises(OSError, match="ended 6 bytes early"):
        body.read(10)


def test_spooled_readline_finds_newlines_across_pieces() -> None:
    body = make(None, 4)
    for piece in (b"ab", b"cd", b"ef\ngh", b"\n"):
        body.feed(piece)
    body.finish()
    assert body.readlines() == [b"abcdef\n", b"gh\n"]


# -------------------------------------------------------------------------------------- two threads, fill()


def test_reading_in_one_thread_while_feeding_from_another() -> None:
    """Without fill(), reads wait on a condition for the handler's feeds; spooling works across threads."""
    pieces = [bytes([65 + i % 26]) * 997 for i in range(200)]
    data = b"".join(pieces)
    body = make(len(data), 4096)
    got: list[bytes] = []

    def reader() -> None:
        while piece := body.read(3000):
            got.append(piece)

    for piece in pieces[:50]:
        body.feed(piece)
    assert body._spilled  # the reader starts behind: it reads the spool file while the feeder appends to it
    thread = threading.Thread(target=reader)
    thread.start()
    for piece in pieces[50:]:
        body.feed(piece)
        if len(got) % 7 == 0:
            time.sleep(0)  # let the reader interleave
    body.finish()
    thread.join(timeout=10)
    assert not thread.is_alive()
    assert b"".join(got) == data


def test_waiting_reader_is_woken_by_abort_and_by_finish() -> None:
    for end in ("abort", "finish"):
        body = make(None, 1024)
        outcome: list[object] = []

        def reader(body: RequestBody = body, outcome: list[object] = outcome) -> None:
            try:
                outcome.append(body.readline())
            except RequestAborted as exc:
                outcome.append(exc)

        thread = threading.Thread(target=reader)
        thread.start()
        body.feed(b"partial")
        deadline = time.monotonic() + 5
        while body._cond is None and time.monotonic() < deadline:  # the reader is waiting
            time.sleep(0.001)
        getattr(body, end)()
        thread.join(timeout=5)
        assert not thread.is_alive()
        if end == "abort":
            assert isinstance(outcome[0], RequestAborted)
        else:
            assert outcome == [b"partial"]


def test_reader_waits_again_until_enough_bytes_arrived() -> None:
    body = make(6, 1024)
    got: list[bytes] = []
    thread = threading.Thread(target=lambda: got.append(body.read(6)))
    thread.start()
    deadline = time.monotonic() + 5
    while body._cond is None and time.monotonic() < deadline:
        time.sleep(0.001)
    body.feed(b"abc")  # wakes the reader, which needs three more and waits again
    time.sleep(0.05)
    assert got == []
    body.feed(b"def")
    thread.join(timeout=5)
    assert not thread.is_alive() and got == [b"abcdef"]


def test_close_wakes_a_waiting_reader() -> None:
    body = make(10, 1024)
    errors: list[BaseException] = []

    def reader() -> None:
        try:
            body.read()
        except ValueError as exc:
            errors.append(exc)

    thread = threading.Thread(target=reader)
    thread.start()
    deadline = time.monotonic() + 5
    while body._cond is None and time.monotonic() < deadline:
        time.sleep(0.001)
    body.close()
    thread.join(timeout=5)
    assert not thread.is_alive() and len(errors) == 1


def test_fill_mode_pulls_data_in_the_reading_thread() -> None:
    """With fill(), a read that needs more bytes calls it (no thread hop); fill() feeds the body."""
    supply = [b"ab", b"", b"c\nde", b"f"]  # b"": a fill that brought nothing for this body (another record)
    calls: list[str] = []
    body: RequestBody

    def fill() -> bool:
        calls.append(threading.current_thread().name)
        piece = supply.pop(0)
        body.feed(piece)
        if not supply:
            body.finish()
        return True

    body = make(None, 1024, fill)
    assert body.readline() == b"abc\n"
    assert body.read() == b"def"
    assert calls == [threading.current_thread().name] * 4


def test_fill_reporting_a_lost_connection_aborts() -> None:
    calls = 0

    def fill() -> bool:
        nonlocal calls
        calls += 1
        return False

    body = make(5, 1024, fill)
    with pytest.raises(RequestAborted):
        body.read()
    assert calls == 1 and body.is_aborted()


def test_fill_can_be_dropped_by_the_handler() -> None:
    """The handler sets ``fill = None`` when the request moves to a thread of its own."""
    body = make(3, 1024, lambda: pytest.fail("fill must not be called"))
    body.fill = None
    feeder = threading.Timer(0.05, body.feed, (b"xyz",))
    feeder.start()
    assert body.read() == b"xyz"
    feeder.join(timeout=5)


# ------------------------------------------------------------------------- property: behaves like io.BytesIO

READ_OPS = st.one_of(
    st.tuples(st.just("read"), st.integers(-1, 40)),
    st.tuples(st.just("readline"), st.integers(-1, 40)),
    st.tuples(st.just("readlines"), st.integers(-1, 60)),
)


@settings(max_examples=300, deadline=None)
@given(
    data=st.binary(max_size=300).map(lambda b: b.replace(b"\x01", b"\n")),
    cuts=st.lists(st.integers(1, 50), max_size=20),
    threshold=st.sampled_from([0, 5, 64, 1 << 20]),
    known_length=st.booleans(),
    ops=st.lists(READ_OPS, max_size=25),
)
def test_reads_match_bytesio(
    data: bytes, cuts: list[int], threshold: int, known_length: bool, ops: list[tuple[str, int]]
) -> None:
    """Any feeding pattern, any spool threshold, any sequence of reads: the same bytes as io.BytesIO."""
    body = RequestBody(len(data) if known_length else None, threshold)
    try:
        position = 0
        for cut in cuts:
            body.feed(data[position : position + cut])
            position += cut
        body.feed(data[position:])
        body.finish()
        reference = stdio.BytesIO(data)
        for name, arg in ops:
            assert getattr(body, name)(arg) == getattr(reference, name)(arg), (name, arg)
        assert body.read() == reference.read()
    finally:
        body.close()


@given(
    data=st.binary(max_size=400).map(lambda b: b.replace(b"\x01", b"\n")),
    steps=st.lists(st.tuples(st.integers(0, 60), st.integers(0, 70), st.booleans()), max_size=25),
    threshold=st.sampled_from([0, 5, 64, 1 << 20]),
    known_length=st.booleans(),
)
def test_reads_between_feeds_give_the_stream_in_order(
    data: bytes, steps: list[tuple[int, int, bool]], threshold: int, known_length: bool
) -> None:
    """Reads and readlines of what has arrived so far, between feeds (the partly read first chunk, chunks
    appended behind it, a spill in the middle): the bytes come out whole and in order, with CONTENT_LENGTH
    or without it (a chunked upload, read until STDIN ends)."""
    body = RequestBody(len(data) if known_length else None, threshold)
    try:
        out = bytearray()
        position = 0
        for cut, want, line in steps:
            piece = data[position : position + cut]
            body.feed(piece)
            position += len(piece)
            available = min(want, position - len(out))
            out += body.readline(available) if line else body.read(available)
        body.feed(data[position:])
        body.finish()
        out += body.read()
        assert out == data
    finally:
        body.close()


def test_a_body_in_tiny_pieces_costs_no_more_than_the_threshold_in_memory() -> None:
    """Each piece held costs more than its bytes; a peer that sends its body in 2-byte records makes the body
    spill early rather than hold the threshold's worth of bytes as thousands of objects."""
    threshold = 64 * 1024
    body = make(None, threshold)
    tracemalloc.start()
    try:
        for _ in range(100_000):
            body.feed(bytes(2))  # a new object each time, like record contents
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 2 * threshold, peak
    body.finish()
    assert body.read() == bytes(200_000)
