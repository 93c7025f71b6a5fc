"""S-B record framing: header layout, padding, splitting at 65535, every record type, the reader's bounds."""

from __future__ import annotations

import mmap

import pytest

from fcgiserve.protocol import (
    MAX_CONTENT_LENGTH,
    LocalProtocolError,
    RecordReader,
    RecordType,
    RemoteProtocolError,
    encode_record,
    encode_record_parts,
)
from fcgiserve.protocol.records import HEADER, MAX_RECORD_LENGTH

from . import wire

ALL_TYPES = list(range(1, 12))


def test_s_b3_all_eleven_record_types_have_their_spec_numbers() -> None:
    assert [t.value for t in RecordType] == ALL_TYPES
    assert int(RecordType.UNKNOWN_TYPE) == 11  # FCGI_MAXTYPE


@pytest.mark.parametrize(
    ("record_type", "request_id", "content", "expected"),
    [
        (wire.STDOUT, 1, b"", b"\x01\x06\x00\x01\x00\x00\x00\x00"),
        (wire.STDOUT, 1, b"abc", b"\x01\x06\x00\x01\x00\x03\x05\x00abc\x00\x00\x00\x00\x00"),
        (wire.STDERR, 0x1234, b"12345678", b"\x01\x07\x12\x34\x00\x08\x00\x0012345678"),
        (wire.END_REQUEST, 65535, bytes(8), b"\x01\x03\xff\xff\x00\x08\x00\x00" + bytes(8)),
        (wire.GET_VALUES_RESULT, 0, b"x" * 9, b"\x01\x0a\x00\x00\x00\x09\x07\x00" + b"x" * 9 + bytes(7)),
    ],
)
def test_s_b1_s_b2_header_bytes_and_padding_to_eight(
    record_type: int, request_id: int, content: bytes, expected: bytes
) -> None:
    encoded = encode_record(record_type, request_id, content)
    assert encoded == expected
    assert len(encoded) % 8 == 0


@pytest.mark.parametrize("record_type", ALL_TYPES)
def test_s_b3_every_type_encodes_and_reads_back(record_type: int) -> None:
    encoded = encode_record(record_type, 7, b"payload")
    assert encoded == wire.rec(record_type, 7, b"payload")
    assert RecordReader().feed(encoded) == [(record_type, 7, b"payload")]


@pytest.mark.parametrize(
    "size",
    [MAX_CONTENT_LENGTH - 1, MAX_CONTENT_LENGTH, MAX_CONTENT_LENGTH + 1, 200_000, 3 * MAX_CONTENT_LENGTH],
)
def test_s_b2_payloads_longer_than_65535_are_split(size: int) -> None:
    payload = bytes(range(256)) * (size // 256) + bytes(size % 256)
    encoded = encode_record(wire.STDOUT, 3, payload)
    records = RecordReader().feed(encoded)
    assert all(len(content) <= MAX_CONTENT_LENGTH for _, _, content in records)
    assert b"".join(content for _, _, content in records) == payload
    assert len(encoded) % 8 == 0
    if size <= MAX_CONTENT_LENGTH:
        assert len(records) == 1
    else:  # the fewest records that need no padding (65,528 bytes at most), of one size but the last
        assert len(records) == -(-size // (MAX_CONTENT_LENGTH & ~7))
        sizes = {len(content) for _, _, content in records[:-1]}
        assert len(sizes) == 1 and sizes.pop() % 8 == 0 and len(records[-1][2]) <= len(records[0][2])


@pytest.mark.parametrize("size", [536_870_000, 600_000_001])
def test_s_b2_a_huge_write_is_split_into_records_that_hold_it_exactly(size: int) -> None:
    """Hundreds of megabytes in one write (an anonymous mapping: nothing is read or copied, so no page of it
    becomes resident): every record within the limit, all content once, only the last record padded."""
    with mmap.mmap(-1, size) as content:
        parts = encode_record_parts(wire.STDOUT, 1, content)
        total, index = 0, 0
        while index < len(parts):
            _version, _type, _rid, length, padding = HEADER.unpack(parts[index])
            assert length <= MAX_CONTENT_LENGTH and len(parts[index + 1]) == length
            total += length
            index += 2
            if padding:
                assert index == len(parts) - 1 and len(parts[index]) == padding
                index += 1
        assert total == size
        del parts


@pytest.mark.parametrize("size", [65536, 102_400, 1 << 20])
def test_s_b2_the_chunk_sizes_applications_like_split_evenly_without_padding(size: int) -> None:
    """64 KiB, one more byte than a record holds, goes as 2 x 32 KiB records rather than 65,535 + 1 bytes
    (the second record all header and padding); the parts to gather carry no padding then."""
    parts = encode_record_parts(wire.STDOUT, 1, b"x" * size)
    contents = [content for _, _, content in RecordReader().feed(b"".join(bytes(part) for part in parts))]
    assert len(contents) == -(-size // (MAX_CONTENT_LENGTH & ~7))
    assert max(map(len, contents)) - min(map(len, contents)) < 8 * len(contents)
    assert len(parts) == 2 * len(contents)  # header and content each, no padding part


def test_encode_record_rejects_request_ids_outside_sixteen_bits() -> None:
    with pytest.raises(LocalProtocolError):
        encode_record(wire.STDOUT, 65536, b"")
    with pytest.raises(LocalProtocolError):
        encode_record(wire.STDOUT, -1, b"")


@pytest.mark.parametrize("padding", [0, 1, 7, 8, 100, 255])
def test_s_b2_any_padding_is_skipped_on_input(padding: int) -> None:
    data = wire.rec(wire.STDIN, 1, b"abc", padding=padding) + wire.rec(wire.STDIN, 1, b"", padding=padding)
    assert RecordReader().feed(data) == [(wire.STDIN, 1, b"abc"), (wire.STDIN, 1, b"")]
    reader = RecordReader()
    records = []
    for i in range(len(data)):
        records += reader.feed(data[i : i + 1])
    assert records == [(wire.STDIN, 1, b"abc"), (wire.STDIN, 1, b"")]
    assert reader.buffered == 0


@pytest.mark.parametrize("version", [0, 2, 6, 255])
def test_s_b1_a_version_other_than_1_is_fatal(version: int) -> None:
    data = wire.header(wire.STDIN, 1, 0, version=version)
    with pytest.raises(RemoteProtocolError, match=f"version {version}") as info:
        RecordReader().feed(data)
    assert info.value.request_id is None and info.value.fatal


def test_reader_accepts_bytearray_and_memoryview() -> None:
    data = wire.rec(wire.STDIN, 2, b"xyz")
    assert RecordReader().feed(bytearray(data)) == [(wire.STDIN, 2, b"xyz")]
    assert RecordReader().feed(memoryview(data)) == [(wire.STDIN, 2, b"xyz")]
    reader = RecordReader()
    assert reader.feed(memoryview(data)[:3]) == []
    assert reader.feed(memoryview(data)[3:]) == [(wire.STDIN, 2, b"xyz")]


@pytest.mark.parametrize("size", [10, 4000, 5000, 70000])
def test_reader_gives_bytes_content_from_small_and_large_reads_of_a_reused_buffer(size: int) -> None:
    """Small reads are copied whole, large ones parsed in place: either way each record's content is bytes
    of its own, unchanged when the caller's buffer is reused for the next read."""
    stream = wire.rec(wire.STDIN, 1, b"a" * (size // 2)) + wire.rec(wire.STDIN, 1, b"b" * (size - size // 2))
    buffer = bytearray(stream)
    records = RecordReader().feed(memoryview(buffer))
    buffer[:] = bytes(len(buffer))
    assert [type(content) for _, _, content in records] == [bytes, bytes]
    assert b"".join(content for _, _, content in records) == b"a" * (size // 2) + b"b" * (size - size // 2)


def test_reader_holds_at_most_one_incomplete_record() -> None:
    reader = RecordReader()
    biggest = wire.rec(wire.STDIN, 1, b"x" * MAX_CONTENT_LENGTH, padding=255)
    assert len(biggest) == MAX_RECORD_LENGTH
    assert reader.feed(biggest[:-1]) == []
    assert reader.buffered == MAX_RECORD_LENGTH - 1
    assert reader.feed(biggest[-1:] + biggest[:10]) == [(wire.STDIN, 1, b"x" * MAX_CONTENT_LENGTH)]
    assert reader.buffered == 10


def test_reader_waits_for_the_whole_record_before_reparsing() -> None:
    # A byte-at-a-time peer must cost linear work: nothing is parsed until the record can complete.
    reader = RecordReader()
    data = wire.rec(wire.STDIN, 1, b"y" * 1000)
    for i in range(len(data) - 1):
        assert reader.feed(data[i : i + 1]) == []
    assert reader.feed(data[-1:]) == [(wire.STDIN, 1, b"y" * 1000)]


def test_a_record_split_across_reads_takes_only_the_bytes_it_lacks() -> None:
    """The tail of a record that began in an earlier read is completed from the next read, and the rest of
    that read is parsed in place: the held bytes never grow past one record (an upload read is 256 KiB)."""
    reader = RecordReader()
    records = [wire.rec(wire.STDIN, 1, bytes([n]) * 5000, padding=n % 8) for n in range(40)]
    stream = b"".join(records)
    got = []
    cut = 3  # the first read ends inside a header, later ones inside contents
    got += reader.feed(memoryview(stream)[:cut])
    assert reader.buffered == cut
    for start in range(cut, len(stream), 65536):
        got += reader.feed(bytearray(stream[start : start + 65536]))
        assert reader.buffered < len(records[0])
    assert got == [(wire.STDIN, 1, bytes([n]) * 5000) for n in range(40)]
    assert reader.buffered == 0


def test_a_header_completed_by_the_next_read_may_itself_need_more() -> None:
    reader = RecordReader()
    data = wire.rec(wire.STDOUT, 7, b"abcdef", padding=2)
    assert reader.feed(data[:5]) == []
    assert reader.feed(data[5:10]) == []  # header complete, content not yet
    assert reader.buffered == 10
    assert reader.feed(data[10:] + data[:2]) == [(wire.STDOUT, 7, b"abcdef")]
    assert reader.buffered == 2


@pytest.mark.parametrize("size", [0, 1, 65535, 65536, 200_000])
def test_s_b2_record_parts_are_the_records_without_a_copy_of_the_content(size: int) -> None:
    """The gathering form writes the same bytes as ``encode_record``; the content is referenced, not copied
    (the handler sends large output with one ``sendmsg`` of these parts)."""
    payload = bytearray(bytes(range(256)) * (size // 256) + bytes(size % 256))
    parts = encode_record_parts(wire.STDOUT, 9, payload)
    assert b"".join(parts) == encode_record(wire.STDOUT, 9, payload)
    payload[:1] = b"!" if size else b""  # a view of the caller's buffer sees the change; a copy would not
    assert b"".join(parts)[8:9] == (b"!" if size else b"")
    with pytest.raises(LocalProtocolError, match="outside"):
        encode_record_parts(wire.STDOUT, 70000, b"x")
