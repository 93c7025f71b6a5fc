"""FastCGI 1.0 wire constants (spec §8): record types, roles, protocol statuses and fixed sizes.

Nothing here has behaviour; every other module of ``protocol/`` names these instead of bare numbers.
"""

from __future__ import annotations

from enum import IntEnum

__all__ = [
    "APPLICATION_INPUT_TYPES",
    "FCGI_KEEP_CONN",
    "FCGI_MAX_CONNS",
    "FCGI_MAX_REQS",
    "FCGI_MPXS_CONNS",
    "FCGI_VERSION_1",
    "HEADER_LENGTH",
    "MAX_CONTENT_LENGTH",
    "MAX_PADDING_LENGTH",
    "MAX_REQUEST_ID",
    "ProtocolStatus",
    "RecordType",
    "Role",
]

FCGI_VERSION_1 = 1
HEADER_LENGTH = 8  # S-B1: version, type, requestId(2), contentLength(2), paddingLength, reserved
MAX_CONTENT_LENGTH = 65535  # S-B2: contentLength is 16 bits; longer payloads are split
MAX_PADDING_LENGTH = 255
MAX_REQUEST_ID = 65535
FCGI_KEEP_CONN = 1  # S-D5: BEGIN_REQUEST flags bit: the web server owns the connection's lifetime

# S-E2: the management variables a GET_VALUES may ask for (names are bytes on the wire).
FCGI_MAX_CONNS = b"FCGI_MAX_CONNS"
FCGI_MAX_REQS = b"FCGI_MAX_REQS"
FCGI_MPXS_CONNS = b"FCGI_MPXS_CONNS"


class RecordType(IntEnum):
    """S-B3: the eleven record types of FastCGI 1.0 (``FCGI_MAXTYPE`` = 11)."""

    BEGIN_REQUEST = 1
    ABORT_REQUEST = 2
    END_REQUEST = 3
    PARAMS = 4
    STDIN = 5
    STDOUT = 6
    STDERR = 7
    DATA = 8
    GET_VALUES = 9
    GET_VALUES_RESULT = 10
    UNKNOWN_TYPE = 11


class Role(IntEnum):
    """S-G: the role a BEGIN_REQUEST asks the application to play."""

    RESPONDER = 1
    AUTHORIZER = 2
    FILTER = 3


class ProtocolStatus(IntEnum):
    """S-F6: the protocolStatus byte of END_REQUEST."""

    REQUEST_COMPLETE = 0
    CANT_MPX_CONN = 1
    OVERLOADED = 2
    UNKNOWN_ROLE = 3


# Application record types a web server sends for a request (S-B4); these drive the request state machine.
APPLICATION_INPUT_TYPES = frozenset(
    {RecordType.BEGIN_REQUEST, RecordType.ABORT_REQUEST, RecordType.PARAMS, RecordType.STDIN, RecordType.DATA}
)
