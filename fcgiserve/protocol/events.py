"""Events: what ``receive_data`` reports. Frozen, slotted dataclasses that validate themselves.

Server-side events (``Event``) come out of ``ServerConnection.receive_data``; client-side events
(``ClientEvent``) out of ``ClientConnection.receive_data``. Every event carries the request id it belongs to
(0 for connection-level events).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NoReturn

from .constants import MAX_REQUEST_ID, ProtocolStatus, Role
from .errors import RemoteProtocolError

__all__ = [
    "ClientEvent",
    "ConnectionClosed",
    "Data",
    "DataEnd",
    "EndRequest",
    "Event",
    "GetValuesResult",
    "ParamsComplete",
    "RequestAborted",
    "RequestFailed",
    "RequestReceived",
    "RequestRejected",
    "RequestStarted",
    "Stderr",
    "StderrEnd",
    "StdinData",
    "StdinEnd",
    "Stdout",
    "StdoutEnd",
    "UnknownType",
]


def _reject_request_id(request_id: int) -> NoReturn:
    # Called only on the failure path: the range test is inlined in each __post_init__ (hot path).
    raise ValueError(f"request id {request_id} is outside 1..65535")


class Event:
    """Base class of the events a ``ServerConnection`` reports."""

    __slots__ = ()
    request_id: int


@dataclass(frozen=True, slots=True)
class RequestStarted(Event):
    """A request's params are complete and it now belongs to the caller (always followed by ParamsComplete).

    From here on the caller must end the request exactly once with ``end_request`` or ``reject_request``.
    """

    request_id: int
    role: Role
    keep_conn: bool

    def __post_init__(self) -> None:
        if not 0 < self.request_id <= MAX_REQUEST_ID:
            _reject_request_id(self.request_id)


@dataclass(frozen=True, slots=True)
class ParamsComplete(Event):
    """The PARAMS stream ended (S-F2), decoded in one pass (``records.decode_params``).

    ``params``: every name and value as text decoded latin-1 (PEP 3333's "native strings": byte ``n`` is code
    point ``n``, so the bytes are all there), a repeated name's last value winning. ``pairs``: None, unless a
    name came more than once (S-C4): then every pair in arrival order, for the caller that merges them.
    """

    request_id: int
    params: dict[str, str]
    pairs: list[tuple[str, str]] | None = None

    def __post_init__(self) -> None:
        if not 0 < self.request_id <= MAX_REQUEST_ID:
            _reject_request_id(self.request_id)


@dataclass(frozen=True, slots=True)
class RequestReceived(Event):
    """A request that came whole in one read, in one event (only from a ``ServerConnection`` made with
    ``whole_requests=True``): what RequestStarted, ParamsComplete, a StdinData per chunk and, if
    ``stdin_ended``, StdinEnd would have said, in that order. The request now belongs to the caller, as after
    RequestStarted; when STDIN has not ended, StdinData and StdinEnd events follow.
    """

    request_id: int
    role: Role
    keep_conn: bool
    params: dict[str, str]
    pairs: list[tuple[str, str]] | None
    stdin: tuple[bytes, ...]  # the body's pieces that came with it, each non-empty
    stdin_ended: bool

    def __post_init__(self) -> None:
        if not 0 < self.request_id <= MAX_REQUEST_ID:
            _reject_request_id(self.request_id)


@dataclass(frozen=True, slots=True)
class StdinData(Event):
    """A non-empty piece of the request body (S-F3)."""

    request_id: int
    data: bytes

    def __post_init__(self) -> None:
        if not 0 < self.request_id <= MAX_REQUEST_ID:
            _reject_request_id(self.request_id)
        if not self.data:
            raise ValueError("StdinData carries at least one byte; the end of STDIN is StdinEnd")


@dataclass(frozen=True, slots=True)
class StdinEnd(Event):
    """The STDIN stream ended (the empty STDIN record, S-F1)."""

    request_id: int

    def __post_init__(self) -> None:
        if not 0 < self.request_id <= MAX_REQUEST_ID:
            _reject_request_id(self.request_id)


@dataclass(frozen=True, slots=True)
class Data(Event):
    """A non-empty piece of a FILTER request's DATA stream (the file to filter, S-G3)."""

    request_id: int
    data: bytes

    def __post_init__(self) -> None:
        if not 0 < self.request_id <= MAX_REQUEST_ID:
            _reject_request_id(self.request_id)
        if not self.data:
            raise ValueError("Data carries at least one byte; the end of DATA is DataEnd")


@dataclass(frozen=True, slots=True)
class DataEnd(Event):
    """The DATA stream of a FILTER request ended."""

    request_id: int

    def __post_init__(self) -> None:
        if not 0 < self.request_id <= MAX_REQUEST_ID:
            _reject_request_id(self.request_id)


@dataclass(frozen=True, slots=True)
class RequestAborted(Event):
    """ABORT_REQUEST arrived, or the peer closed the connection (S-F7): stop the app, then ``end_request``."""

    request_id: int

    def __post_init__(self) -> None:
        if not 0 < self.request_id <= MAX_REQUEST_ID:
            _reject_request_id(self.request_id)


@dataclass(frozen=True, slots=True)
class RequestFailed(Event):
    """The peer broke the protocol for a request the caller owns; its further input is ignored.

    The caller logs ``error``, stops the app and ends the request with ``end_request`` (the layer never ends
    a request the caller owns: doing so would let the peer reuse the id under a running app).
    """

    request_id: int
    error: RemoteProtocolError

    def __post_init__(self) -> None:
        if not 0 < self.request_id <= MAX_REQUEST_ID:
            _reject_request_id(self.request_id)


@dataclass(frozen=True, slots=True)
class RequestRejected(Event):
    """The layer refused a request the caller never saw and already queued its END_REQUEST (for logging).

    Causes: unknown role, a second request on a non-multiplexed connection, too many concurrent requests,
    params over the limits or malformed, a stream out of order before the params ended, or an ABORT_REQUEST
    before the params ended (``error`` is then ``None``).
    """

    request_id: int
    protocol_status: ProtocolStatus
    error: RemoteProtocolError | None

    def __post_init__(self) -> None:
        if not 0 < self.request_id <= MAX_REQUEST_ID:
            _reject_request_id(self.request_id)


@dataclass(frozen=True, slots=True)
class ConnectionClosed(Event):
    """The peer closed the connection (``receive_data(b"")``)."""

    request_id: int = 0

    def __post_init__(self) -> None:
        if self.request_id != 0:
            raise ValueError("ConnectionClosed belongs to the connection: request_id must be 0")


class ClientEvent:
    """Base class of the events a ``ClientConnection`` reports."""

    __slots__ = ()
    request_id: int


@dataclass(frozen=True, slots=True)
class Stdout(ClientEvent):
    """A non-empty piece of a response's STDOUT stream."""

    request_id: int
    data: bytes

    def __post_init__(self) -> None:
        if not 0 < self.request_id <= MAX_REQUEST_ID:
            _reject_request_id(self.request_id)


@dataclass(frozen=True, slots=True)
class StdoutEnd(ClientEvent):
    """The empty STDOUT record that ends the stream (S-F4)."""

    request_id: int

    def __post_init__(self) -> None:
        if not 0 < self.request_id <= MAX_REQUEST_ID:
            _reject_request_id(self.request_id)


@dataclass(frozen=True, slots=True)
class Stderr(ClientEvent):
    """A non-empty piece of a response's STDERR stream."""

    request_id: int
    data: bytes

    def __post_init__(self) -> None:
        if not 0 < self.request_id <= MAX_REQUEST_ID:
            _reject_request_id(self.request_id)


@dataclass(frozen=True, slots=True)
class StderrEnd(ClientEvent):
    """The empty STDERR record that ends the stream (only sent when STDERR was written)."""

    request_id: int

    def __post_init__(self) -> None:
        if not 0 < self.request_id <= MAX_REQUEST_ID:
            _reject_request_id(self.request_id)


@dataclass(frozen=True, slots=True)
class EndRequest(ClientEvent):
    """END_REQUEST (S-F6): the request is over."""

    request_id: int
    app_status: int
    protocol_status: ProtocolStatus

    def __post_init__(self) -> None:
        if not 0 < self.request_id <= MAX_REQUEST_ID:
            _reject_request_id(self.request_id)


@dataclass(frozen=True, slots=True)
class GetValuesResult(ClientEvent):
    """GET_VALUES_RESULT (S-E1): values the application reported, decoded as latin-1."""

    values: dict[str, str] = field(default_factory=dict)
    request_id: int = 0


@dataclass(frozen=True, slots=True)
class UnknownType(ClientEvent):
    """UNKNOWN_TYPE (S-E4): the application did not understand a management record of ``record_type``."""

    record_type: int
    request_id: int = 0
