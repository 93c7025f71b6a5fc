"""Raw FastCGI bytes for tests, built by hand from the spec (§3.3, §3.4, §5, §8).

Deliberately independent of ``fcgiserve.protocol``: no struct formats or encoders of the code under test,
only ``int.to_bytes``, so an encoder bug cannot hide behind the same bug in the expectation.
"""

from __future__ import annotations

from collections.abc import Iterable

# Type numbers, spelled out from spec §8 rather than imported.
BEGIN_REQUEST, ABORT_REQUEST, END_REQUEST, PARAMS, STDIN, STDOUT, STDERR, DATA = 1, 2, 3, 4, 5, 6, 7, 8
GET_VALUES, GET_VALUES_RESULT, UNKNOWN_TYPE = 9, 10, 11
RESPONDER, AUTHORIZER, FILTER = 1, 2, 3
REQUEST_COMPLETE, CANT_MPX_CONN, OVERLOADED, UNKNOWN_ROLE = 0, 1, 2, 3


def header(record_type: int, request_id: int, length: int, padding: int = 0, version: int = 1) -> bytes:
    return (
        bytes((version, record_type))
        + request_id.to_bytes(2, "big")
        + length.to_bytes(2, "big")
        + bytes((padding, 0))
    )


def rec(record_type: int, request_id: int, content: bytes = b"", padding: int | None = None) -> bytes:
    """One record; ``padding`` None pads to a multiple of 8 like a careful sender."""
    pad = (8 - len(content) % 8) % 8 if padding is None else padding
    return header(record_type, request_id, len(content), pad) + content + b"\x00" * pad


def stream(record_type: int, request_id: int, content: bytes) -> bytes:
    """``content`` as fcgiserve writes it: one record up to 65535 bytes; past that, the fewest records of at
    most 65528 bytes (a multiple of 8: no padding), all of one size but the last, which may be shorter."""
    if len(content) <= 65535:
        return rec(record_type, request_id, content)
    count = -(-len(content) // 65528)
    size = -(-len(content) // count)
    size += -size % 8
    return b"".join(rec(record_type, request_id, content[i : i + size]) for i in range(0, len(content), size))


def length(n: int) -> bytes:
    return bytes((n,)) if n < 128 else (n | 0x80000000).to_bytes(4, "big")


def pair(name: bytes, value: bytes) -> bytes:
    return length(len(name)) + length(len(value)) + name + value


def pairs(items: Iterable[tuple[bytes, bytes]]) -> bytes:
    return b"".join(pair(n, v) for n, v in items)


def begin(request_id: int, role: int = RESPONDER, keep_conn: bool = False) -> bytes:
    return rec(
        BEGIN_REQUEST, request_id, role.to_bytes(2, "big") + bytes((1 if keep_conn else 0,)) + bytes(5)
    )


def params(request_id: int, items: Iterable[tuple[bytes, bytes]]) -> bytes:
    """The whole PARAMS stream (records of at most 65535 bytes) plus the terminating empty record."""
    body = pairs(items)
    chunks = [body[i : i + 65535] for i in range(0, len(body), 65535)]
    return b"".join(rec(PARAMS, request_id, chunk) for chunk in chunks) + rec(PARAMS, request_id)


def stdin(request_id: int, data: bytes = b"") -> bytes:
    return rec(STDIN, request_id, data)


def end_request(request_id: int, app_status: int = 0, status: int = REQUEST_COMPLETE) -> bytes:
    return rec(END_REQUEST, request_id, app_status.to_bytes(4, "big") + bytes((status, 0, 0, 0)))


def unknown_type(record_type: int) -> bytes:
    return rec(UNKNOWN_TYPE, 0, bytes((record_type,)) + bytes(7))


def get_values(*names: bytes) -> bytes:
    return rec(GET_VALUES, 0, pairs((n, b"") for n in names))


def get_values_result(items: Iterable[tuple[bytes, bytes]]) -> bytes:
    return rec(GET_VALUES_RESULT, 0, pairs(items))


def simple_get(request_id: int = 1, keep_conn: bool = False) -> bytes:
    """What nginx sends for a GET: BEGIN_REQUEST, PARAMS, the empty PARAMS, the empty STDIN."""
    items = [(b"REQUEST_METHOD", b"GET"), (b"SCRIPT_NAME", b""), (b"REQUEST_URI", b"/a?b=c")]
    return begin(request_id, keep_conn=keep_conn) + params(request_id, items) + stdin(request_id)


def decoded(items: Iterable[tuple[bytes, bytes]]) -> tuple[dict[str, str], list[tuple[str, str]] | None]:
    """What ``ParamsComplete`` carries for ``items``: ``(params, pairs)`` as text decoded latin-1, the last
    value of a repeated name winning in ``params``; ``pairs`` lists them all, but only when a name repeats."""
    text = [(name.decode("latin-1"), value.decode("latin-1")) for name, value in items]
    params = dict(text)
    return params, text if len(params) != len(text) else None
