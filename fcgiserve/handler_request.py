"""One request's server-side state, its output as the WSGI adapter sees it, and small helpers of the handler.

Split from ``handler.py``, which owns the connection; this module owns what belongs to one request.
"""

from __future__ import annotations

import socket
from collections.abc import Mapping
from typing import Any, Protocol

from fcgiserve.protocol import Role
from fcgiserve.wsgi import RequestBody

__all__ = [
    "NOT_STORED",
    "ROLE_NAMES",
    "TOO_LARGE",
    "Request",
    "RequestOutput",
    "StreamWriter",
    "close_quietly",
    "content_length",
    "data_length",
    "describe_peer",
]

TOO_LARGE = (
    b"Status: 413 Payload Too Large\r\nContent-Type: text/plain\r\nContent-Length: 23\r\n\r\n"
    b"Request body too large\n"
)
NOT_STORED = (
    b"Status: 500 Internal Server Error\r\nContent-Type: text/plain\r\nContent-Length: 33\r\n\r\n"
    b"Request body could not be stored\n"
)

_ASCII_SPACE = " \t\n\r\x0b\x0c"  # what bytes.strip() strips; str.strip() would also take "\x85", "\xa0"

ROLE_NAMES = {Role.RESPONDER: "RESPONDER", Role.AUTHORIZER: "AUTHORIZER", Role.FILTER: "FILTER"}


class StreamWriter(Protocol):
    """What a request's output needs from its connection (``handler.ServedConnection``)."""

    def write_stream(self, request: Request, data: bytes, *, stderr: bool) -> None: ...

    def write_output(self, request: Request, data: bytes) -> None: ...


class Request:
    """One request's server-side state; lives from BEGIN_REQUEST until its END_REQUEST is sent."""

    __slots__ = (
        "aborted",
        "body",
        "data",
        "ended",
        "keep_conn",
        "length",
        "output",
        "pairs",
        "params",
        "received",
        "refused",
        "request_id",
        "role",
        "started",
        "tail",
        "threaded",
    )

    def __init__(self, request_id: int, role: Role, keep_conn: bool) -> None:
        self.request_id = request_id
        self.role = role
        self.keep_conn = keep_conn
        self.params: dict[str, str] | None = None  # ParamsComplete.params
        self.pairs: list[tuple[str, str]] | None = None  # ParamsComplete.pairs: only when a name repeats
        self.length: int | None = 0  # CONTENT_LENGTH as sent; None when absent, empty or unparsable
        self.tail = b""  # the response's last STDOUT bytes, sent together with END_REQUEST
        self.body: RequestBody | None = None
        self.data: RequestBody | None = None
        self.started = False
        self.threaded = False  # runs in a thread of its own (multiplexed connection)
        self.aborted = False
        self.ended = False
        self.received = 0  # STDIN + DATA bytes received: --max-body-size whatever CONTENT_LENGTH says
        self.refused = b""  # the response that replaces the app's when its body was refused (TOO_LARGE ...)
        self.output = False  # some STDOUT went out (a 413 can no longer replace the response)


class RequestOutput:
    """The WSGI adapter's view of one request's output (the ``RequestIO`` interface of ``wsgi.py``)."""

    __slots__ = ("_conn", "_request")

    def __init__(self, conn: StreamWriter, request: Request) -> None:
        self._conn = conn
        self._request = request

    def write(self, data: bytes, last: bool = False) -> None:
        if last:
            # Held for an instant and sent with END_REQUEST in one system call (see RequestIO.write).
            self._request.tail = data
        else:
            self._conn.write_output(self._request, data)

    def write_errors(self, data: bytes) -> None:
        self._conn.write_stream(self._request, data, stderr=True)

    @property
    def aborted(self) -> bool:
        return self._request.aborted


def content_length(params: Mapping[str, str]) -> int | None:
    """CONTENT_LENGTH as the environ will show it (the last one sent, else HTTP_CONTENT_LENGTH); None when
    absent, empty or not a number: the body is then whatever STDIN carries until it ends (nginx with
    ``fastcgi_request_buffering off`` and a chunked upload sends it empty)."""
    value = params.get("CONTENT_LENGTH")
    if value is None:
        value = params.get("HTTP_CONTENT_LENGTH")
    return _parse_length(value) if value else None  # nginx sends CONTENT_LENGTH "" with every GET


def data_length(params: Mapping[str, str]) -> int | None:
    return _parse_length(params.get("FCGI_DATA_LENGTH"))


def _parse_length(value: str | None) -> int | None:
    """Like ``wsgi.body_length``: ASCII digits around optional ASCII whitespace (int() also takes "-1",
    "1_0", and str.isdigit() "²")."""
    if not value:
        return None
    value = value.strip(_ASCII_SPACE)
    return int(value) if value.isdigit() and value.isascii() else None


def describe_peer(peer: Any) -> str:
    if isinstance(peer, tuple) and len(peer) >= 2:
        host, port = peer[0], peer[1]
        return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"
    return str(peer) if peer else "unix socket"


def close_quietly(sock: socket.socket) -> None:
    try:
        sock.close()
    except OSError:
        pass
