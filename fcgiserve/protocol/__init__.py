"""Sans-IO FastCGI 1.0: records, name-value pairs, and the server and client connection state machines.

Imports only the standard library's struct, enum, dataclasses, typing and collections.abc; it never touches a
socket, a clock, a thread or a logger. See docs/protocol.md.
"""

from .client import ClientConnection
from .connection import ConnectionSettings, ProtocolLimits, ServerConnection
from .constants import (
    FCGI_KEEP_CONN,
    FCGI_MAX_CONNS,
    FCGI_MAX_REQS,
    FCGI_MPXS_CONNS,
    FCGI_VERSION_1,
    MAX_CONTENT_LENGTH,
    ProtocolStatus,
    RecordType,
    Role,
)
from .errors import LocalProtocolError, ProtocolError, RemoteProtocolError
from .events import (
    ClientEvent,
    ConnectionClosed,
    Data,
    DataEnd,
    EndRequest,
    Event,
    GetValuesResult,
    ParamsComplete,
    RequestAborted,
    RequestFailed,
    RequestRejected,
    RequestStarted,
    Stderr,
    StderrEnd,
    StdinData,
    StdinEnd,
    Stdout,
    StdoutEnd,
    UnknownType,
)
from .records import (
    Buffer,
    RecordReader,
    decode_pairs,
    decode_params,
    encode_pairs,
    encode_record,
    encode_record_parts,
)
from .state import RequestInput, RequestState

__all__ = [
    "FCGI_KEEP_CONN",
    "FCGI_MAX_CONNS",
    "FCGI_MAX_REQS",
    "FCGI_MPXS_CONNS",
    "FCGI_VERSION_1",
    "MAX_CONTENT_LENGTH",
    "Buffer",
    "ClientConnection",
    "ClientEvent",
    "ConnectionClosed",
    "ConnectionSettings",
    "Data",
    "DataEnd",
    "EndRequest",
    "Event",
    "GetValuesResult",
    "LocalProtocolError",
    "ParamsComplete",
    "ProtocolError",
    "ProtocolLimits",
    "ProtocolStatus",
    "RecordReader",
    "RecordType",
    "RemoteProtocolError",
    "RequestAborted",
    "RequestFailed",
    "RequestInput",
    "RequestRejected",
    "RequestStarted",
    "RequestState",
    "Role",
    "ServerConnection",
    "Stderr",
    "StderrEnd",
    "StdinData",
    "StdinEnd",
    "Stdout",
    "StdoutEnd",
    "UnknownType",
    "decode_pairs",
    "decode_params",
    "encode_pairs",
    "encode_record",
    "encode_record_parts",
]
