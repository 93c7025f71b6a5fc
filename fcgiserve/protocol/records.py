"""Record framing and name-value pairs (spec §3.3, §3.4): encoding, and an incremental record reader.

Pure functions over bytes plus ``RecordReader``, which holds at most one incomplete record. Nothing here knows
about requests or their states; ``connection.py`` and ``client.py`` build on it.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable

from .constants import FCGI_VERSION_1, HEADER_LENGTH, MAX_CONTENT_LENGTH, MAX_REQUEST_ID
from .errors import LocalProtocolError, RemoteProtocolError

__all__ = [
    "BEGIN_BODY",
    "END_BODY",
    "HEADER",
    "MAX_RECORD_LENGTH",
    "STDOUT_END_AND_END_REQUEST",
    "PairLimitError",
    "RecordReader",
    "decode_pairs",
    "decode_params",
    "encode_end_request",
    "encode_pairs",
    "encode_record",
    "encode_record_parts",
]

# S-B1: version, type, requestId, contentLength, paddingLength, reserved (skipped with "x").
HEADER = struct.Struct("!BBHHBx")
BEGIN_BODY = struct.Struct("!HB5x")  # S-D5: role, flags, reserved[5]
END_BODY = struct.Struct("!IB3x")  # S-F6: appStatus, protocolStatus, reserved[3]
# Hot path: the empty STDOUT that closes the stream plus the END_REQUEST record, packed in one call.
STDOUT_END_AND_END_REQUEST = struct.Struct("!BBHHBxBBHHBxIB3x")
_LENGTH4 = struct.Struct("!I")
_PADDING = [bytes(n) for n in range(8)]
_ALIGNED_CONTENT_LENGTH = MAX_CONTENT_LENGTH & ~7  # 65,528: the longest content that needs no padding
_MAX_PAIR_LENGTH = 0x7FFFFFFF  # S-C1: 31-bit lengths
MAX_RECORD_LENGTH = HEADER_LENGTH + MAX_CONTENT_LENGTH + 255  # the most RecordReader ever holds
# A read this small is copied whole once (a request's records, nginx's usual read) rather than sliced as a
# view and copied record by record; larger reads (uploads) are parsed in place.
_COPY_READS_UP_TO = 4096

Buffer = bytes | bytearray | memoryview


def encode_record(record_type: int, request_id: int, content: Buffer = b"") -> bytes:
    """Encode ``content`` as one or more records of ``record_type``, each padded to 8 bytes (S-B2).

    Content longer than 65535 bytes is split into several records; empty content gives one empty record
    (which ends a stream, S-F1).
    """
    return b"".join(encode_record_parts(record_type, request_id, content))


def encode_record_parts(record_type: int, request_id: int, content: Buffer = b"") -> list[Buffer]:
    """The records of ``encode_record`` as buffers to write in order: headers, ``content`` itself (or views
    of it, one per record) and padding. Nothing of ``content`` is copied: for large output, written with
    one gathering system call (``sendmsg``)."""
    if not 0 <= request_id <= MAX_REQUEST_ID:
        raise LocalProtocolError(f"request id {request_id} is outside 0..65535")
    length = len(content)
    if length <= MAX_CONTENT_LENGTH:
        pad = -length & 7
        return [HEADER.pack(FCGI_VERSION_1, record_type, request_id, length, pad), content, _PADDING[pad]]
    # The fewest records that need no padding (65,528 bytes at most), all of one size but perhaps the last:
    # 64 KiB, the chunk size applications like best, goes as 2 x 32 KiB, not 65,535 + 1 bytes.
    view = memoryview(content)
    count = -(-length // _ALIGNED_CONTENT_LENGTH)
    size = -(-length // count) + 7 & ~7  # at most 65,528, as count records of it hold the content
    parts: list[Buffer] = []
    pad = 0
    for start in range(0, length, size):
        chunk = view[start : start + size]
        pad = -len(chunk) & 7  # only the last chunk can be shorter than size, and need padding
        parts += (HEADER.pack(FCGI_VERSION_1, record_type, request_id, len(chunk), pad), chunk)
    if pad:
        parts.append(_PADDING[pad])
    return parts


def encode_end_request(
    request_id: int, app_status: int, protocol_status: int, *, close_stdout: bool, close_stderr: bool
) -> bytes:
    """END_REQUEST for ``request_id``, after the empty STDOUT / STDERR records that end those streams.

    (``ServerConnection.end_request`` packs the common case, STDOUT only, with STDOUT_END_AND_END_REQUEST.)
    """
    # 6 and 7 are RecordType.STDOUT / STDERR, 3 is END_REQUEST.
    head = HEADER.pack(1, 6, request_id, 0, 0) if close_stdout else b""
    if close_stderr:
        head += HEADER.pack(1, 7, request_id, 0, 0)
    return head + HEADER.pack(1, 3, request_id, 8, 0) + END_BODY.pack(app_status, protocol_status)


def _encode_length(length: int) -> bytes:
    if length < 0x80:
        return bytes((length,))
    if length > _MAX_PAIR_LENGTH:
        raise LocalProtocolError(f"a name or value of {length} bytes exceeds the 31-bit pair length (S-C1)")
    return _LENGTH4.pack(length | 0x80000000)


def encode_pairs(pairs: Iterable[tuple[bytes, bytes]]) -> bytes:
    """Encode name-value pairs (S-C1): 1-byte lengths below 128, 4-byte lengths with the high bit from 128."""
    parts: list[bytes] = []
    for name, value in pairs:
        if not isinstance(name, bytes | bytearray) or not isinstance(value, bytes | bytearray):
            raise LocalProtocolError(f"pair names and values must be bytes, got {name!r}: {value!r}")
        parts += (_encode_length(len(name)), _encode_length(len(value)), name, value)
    return b"".join(parts)


class PairLimitError(RemoteProtocolError):
    """``decode_pairs`` found more pairs than ``max_count`` (a limit, not malformed input)."""


def decode_pairs(data: Buffer, max_count: int | None = None) -> list[tuple[bytes, bytes]]:
    """Decode a complete name-value stream (S-C) into ``(name, value)`` pairs, duplicates kept in order.

    Raises ``RemoteProtocolError`` (``request_id=None``; callers that know the request re-raise with its id)
    when a length overruns the stream, and ``PairLimitError`` when there are more than ``max_count`` pairs.
    """
    buf = data if isinstance(data, bytes) else bytes(data)
    end = len(buf)
    # Every pair takes at least 2 bytes, so ``end // 2 + 1`` iterations always suffice; a smaller
    # ``max_count`` bounds the loop instead, which makes the count check free on the hot path.
    bound = end // 2 + 1
    limit = bound if max_count is None else min(max_count, bound)
    pairs: list[tuple[bytes, bytes]] = []
    append = pairs.append
    pos = 0
    try:
        for _ in range(limit):
            if pos >= end:
                break
            name_len = buf[pos]
            value_len = buf[pos + 1]
            if (name_len | value_len) & 0x80:
                name_len, value_len, pos = _long_lengths(buf, pos)
            else:
                pos += 2
            value_start = pos + name_len
            stop = value_start + value_len
            append((buf[pos:value_start], buf[value_start:stop]))
            pos = stop
        else:
            if pos < end:
                raise PairLimitError(f"more than {max_count} name-value pairs (the configured limit)")
    except IndexError:
        raise RemoteProtocolError(
            f"name-value stream ends inside the lengths of pair {len(pairs) + 1}"
        ) from None
    if pos > end:
        # Slicing stops at the end, so an overrun is caught once, after the (last) pair that caused it.
        raise RemoteProtocolError(
            f"name-value pair {len(pairs)} declares more bytes than the stream holds ({pos - end} missing)"
        )
    return pairs


def decode_params(
    data: Buffer, max_count: int | None = None
) -> tuple[dict[str, str], list[tuple[str, str]] | None]:
    """Decode a request's complete PARAMS stream (S-C) in one pass, straight into text.

    Returns ``(params, pairs)``: ``params`` maps every name to its value, both decoded latin-1 (PEP 3333's
    "native strings": byte ``n`` becomes code point ``n``, so nothing is lost), the last value of a repeated
    name winning; ``pairs`` is None, unless some name came more than once (S-C4): then it lists every pair in
    arrival order, for a caller that merges repeated names. Errors as ``decode_pairs``.
    """
    buf = bytes(data) if type(data) is memoryview else data
    # Latin-1 maps each byte to one character, so an offset in ``buf`` is the same offset in ``text``: one
    # decode of the whole stream, then slices, instead of decoding every name and value (the hot path).
    text = buf.decode("latin-1")
    end = len(buf)
    bound = end // 2 + 1  # as in decode_pairs: the loop bound doubles as the count check
    limit = bound if max_count is None else min(max_count, bound)
    params: dict[str, str] = {}
    pos = 0
    count = 0  # pairs decoded so far
    try:
        for count in range(limit):  # noqa: B007 (the pair number, read by the errors below)
            if pos >= end:
                break
            name_len = buf[pos]
            value_len = buf[pos + 1]
            if (name_len | value_len) & 0x80:
                name_len, value_len, pos = _long_lengths(buf, pos)
            else:
                pos += 2
            value_start = pos + name_len
            stop = value_start + value_len
            params[text[pos:value_start]] = text[value_start:stop]
            pos = stop
        else:
            count = limit
            if pos < end:
                raise PairLimitError(f"more than {max_count} name-value pairs (the configured limit)")
    except IndexError:
        raise RemoteProtocolError(f"name-value stream ends inside the lengths of pair {count + 1}") from None
    if pos > end:
        raise RemoteProtocolError(
            f"name-value pair {count} declares more bytes than the stream holds ({pos - end} missing)"
        )
    if len(params) == count:
        return params, None
    # A repeated name (rare): the order and every value matter to whoever merges them; decode again.
    pairs = [(name.decode("latin-1"), value.decode("latin-1")) for name, value in decode_pairs(buf)]
    return params, pairs


def _long_lengths(buf: bytes | bytearray, pos: int) -> tuple[int, int, int]:
    """Name and value lengths at ``pos`` when either uses the 4-byte form (S-C1); also the new position."""
    lengths = []
    for _ in range(2):
        length = buf[pos]
        if length & 0x80:
            if pos + 4 > len(buf):
                raise IndexError(pos)
            length = _LENGTH4.unpack_from(buf, pos)[0] & _MAX_PAIR_LENGTH
            pos += 4
        else:
            pos += 1
        lengths.append(length)
    return lengths[0], lengths[1], pos


class RecordReader:
    """Splits an incoming byte stream into records; holds at most one incomplete record (<= 65798 bytes).

    ``feed`` returns ``(type, request_id, content)`` for every complete record, any padding (0-255) skipped
    (S-B2). A header whose version is not 1 raises ``RemoteProtocolError(request_id=None)``: the stream is out
    of sync and nothing after it can be trusted.
    """

    __slots__ = ("_need", "_pending")

    def __init__(self) -> None:
        self._pending = bytearray()
        self._need = HEADER_LENGTH  # bytes ``_pending`` must reach before parsing it is worthwhile

    @property
    def buffered(self) -> int:
        """Bytes of an incomplete record held back until the rest arrives."""
        return len(self._pending)

    def feed(self, data: Buffer) -> list[tuple[int, int, bytes]]:
        # A caller's buffer (the handler's receive buffer, reused for the next read) is parsed in place and
        # each record's content copied out, rather than copying the whole read first: an upload arrives in
        # reads of up to 256 KiB, and a copy that size is also a large allocation (see docs/performance.md).
        copy = False  # whether _parse must copy each record's content out of ``buf``
        if type(data) is bytes:
            buf: bytes | memoryview = data
        elif len(data) <= _COPY_READS_UP_TO:
            buf = bytes(data)  # one small copy: then each record's content is a plain slice of it
        else:
            buf, copy = memoryview(data).cast("B"), True
        records: list[tuple[int, int, bytes]] = []
        pos = 0
        end = len(buf)
        pending = self._pending
        while pending:
            # A record began in an earlier read: complete it with just the bytes it lacks, never the whole
            # read (which keeps a byte-at-a-time peer linear, and the copy one record long at most).
            take = self._need - len(pending)
            if take > end - pos:
                pending += buf[pos:]
                return records
            pending += buf[pos : pos + take]
            pos += take
            with memoryview(pending) as view:
                used = self._parse(view, 0, records, True)
            # Either the record it completed, or nothing: only its header was complete, and _need now
            # covers the whole record.
            del pending[:used]
        pos = self._parse(buf, pos, records, copy)
        if pos < end:
            pending += buf[pos:]
        return records

    def _parse(
        self, buf: bytes | memoryview, pos: int, records: list[tuple[int, int, bytes]], copy: bool
    ) -> int:
        """Append the complete records in ``buf`` from ``pos``; return where the first incomplete one begins
        (setting ``_need`` to its whole length, or to a header's when not even its header is there).
        ``copy``: ``buf`` is a view, whose slices must be copied out as bytes."""
        append = records.append
        unpack = HEADER.unpack_from
        end = len(buf)
        while end - pos >= HEADER_LENGTH:
            version, record_type, request_id, length, padding = unpack(buf, pos)
            if version != FCGI_VERSION_1:
                raise RemoteProtocolError(
                    f"record header at stream offset {pos} has version {version}; only version 1 exists "
                    "(S-B1), so the stream is out of sync"
                )
            start = pos + HEADER_LENGTH
            stop = start + length
            if stop + padding > end:
                self._need = HEADER_LENGTH + length + padding
                return pos
            content = buf[start:stop]
            # Without ``copy``, ``buf`` is bytes and so is the slice (mypy cannot follow the flag).
            append((record_type, request_id, bytes(content) if copy else content))  # type: ignore[arg-type]
            pos = stop + padding
        self._need = HEADER_LENGTH
        return pos
