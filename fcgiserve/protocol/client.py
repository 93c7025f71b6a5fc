"""ClientConnection: the web-server side of the same codec, sans IO (encode requests, decode responses).

Used by the tests, the benchmarks and ``fcgiserve.client``. Stricter than the server side: any protocol
violation by the application is fatal (``RemoteProtocolError(request_id=None)``) and poisons the object,
since a client has no peer to keep serving.
"""

from __future__ import annotations

from collections.abc import Iterable

from .constants import FCGI_KEEP_CONN, MAX_REQUEST_ID, ProtocolStatus, RecordType, Role
from .errors import LocalProtocolError, RemoteProtocolError
from .events import (
    ClientEvent,
    EndRequest,
    GetValuesResult,
    Stderr,
    StderrEnd,
    Stdout,
    StdoutEnd,
    UnknownType,
)
from .records import BEGIN_BODY, END_BODY, Buffer, RecordReader, decode_pairs, encode_pairs, encode_record

__all__ = ["ClientConnection"]

_KNOWN_TYPES = frozenset(int(t) for t in RecordType)
_STATUSES = frozenset(int(s) for s in ProtocolStatus)


class _ClientRequest:
    __slots__ = ("params_sent", "stderr_state", "stdin_ended", "stdout_ended")

    def __init__(self) -> None:
        self.params_sent = False
        self.stdin_ended = False
        self.stdout_ended = False
        self.stderr_state = 0  # 0: nothing received, 1: open, 2: ended


class ClientConnection:
    """One FastCGI transport connection seen from the web server (sans IO)."""

    def __init__(self) -> None:
        self._reader = RecordReader()
        self._requests: dict[int, _ClientRequest] = {}
        self._error: RemoteProtocolError | None = None
        self._closed = False

    @property
    def active_requests(self) -> int:
        """Requests begun and not yet answered with END_REQUEST."""
        return len(self._requests)

    # -- output ---------------------------------------------------------------------------------------

    def _request(self, request_id: int) -> _ClientRequest:
        if self._error is not None:
            raise LocalProtocolError(f"connection is dead after a fatal protocol error: {self._error.msg}")
        request = self._requests.get(request_id)
        if request is None:
            raise LocalProtocolError(f"request {request_id} is not active: call begin_request() first")
        return request

    def begin_request(self, request_id: int, role: Role = Role.RESPONDER, keep_conn: bool = False) -> bytes:
        """BEGIN_REQUEST (S-D5); the id becomes active until the application's END_REQUEST arrives."""
        if not 1 <= request_id <= MAX_REQUEST_ID:
            raise LocalProtocolError(f"request id {request_id} is outside 1..65535 (0 is management, S-D1)")
        if request_id in self._requests:
            raise LocalProtocolError(f"request {request_id} is already active")
        if self._error is not None:
            raise LocalProtocolError(f"connection is dead after a fatal protocol error: {self._error.msg}")
        self._requests[request_id] = _ClientRequest()
        body = BEGIN_BODY.pack(role, FCGI_KEEP_CONN if keep_conn else 0)
        return encode_record(RecordType.BEGIN_REQUEST, request_id, body)

    def send_params(self, request_id: int, pairs: Iterable[tuple[bytes, bytes]]) -> bytes:
        """The whole PARAMS stream: the encoded pairs (split at 65535) and the terminating empty record."""
        request = self._request(request_id)
        if request.params_sent:
            raise LocalProtocolError(f"PARAMS of request {request_id} were already sent")
        request.params_sent = True
        encoded = encode_pairs(pairs)
        tail = encode_record(RecordType.PARAMS, request_id)
        return encode_record(RecordType.PARAMS, request_id, encoded) + tail if encoded else tail

    def _send_stream(self, record_type: RecordType, request_id: int, data: Buffer) -> bytes:
        request = self._request(request_id)
        if not request.params_sent:
            raise LocalProtocolError(f"{record_type.name} for request {request_id} before its PARAMS (S-F2)")
        if not data:
            if record_type is RecordType.STDIN:
                request.stdin_ended = True
        elif record_type is RecordType.STDIN and request.stdin_ended:
            raise LocalProtocolError(f"STDIN for request {request_id} after its STDIN stream ended")
        return encode_record(record_type, request_id, data)

    def send_stdin(self, request_id: int, data: Buffer) -> bytes:
        """STDIN records carrying ``data``; ``b""`` ends the stream (S-F1)."""
        return self._send_stream(RecordType.STDIN, request_id, data)

    def send_data(self, request_id: int, data: Buffer) -> bytes:
        """DATA records for a FILTER request; ``b""`` ends the stream (S-G3)."""
        return self._send_stream(RecordType.DATA, request_id, data)

    def abort_request(self, request_id: int) -> bytes:
        """ABORT_REQUEST (S-F7); the request stays active until the application's END_REQUEST."""
        self._request(request_id)
        return encode_record(RecordType.ABORT_REQUEST, request_id)

    def get_values(self, names: Iterable[str]) -> bytes:
        """GET_VALUES (S-E1) asking for ``names``, e.g. ``["FCGI_MAX_CONNS", "FCGI_MPXS_CONNS"]``."""
        pairs = [(name.encode("latin-1"), b"") for name in names]
        return encode_record(RecordType.GET_VALUES, 0, encode_pairs(pairs))

    # -- input ----------------------------------------------------------------------------------------

    def receive_data(self, data: Buffer) -> list[ClientEvent]:
        """Feed bytes from the application (``b""`` = it closed); return the events they complete."""
        if self._error is not None:
            raise RemoteProtocolError(self._error.msg, None)
        if self._closed:
            if data:
                raise LocalProtocolError("receive_data() called with data after the peer closed")
            return []
        events: list[ClientEvent] = []
        try:
            if not data:
                self._closed = True
                if self._requests:
                    unfinished = sorted(self._requests)
                    raise RemoteProtocolError(f"application closed the connection before ending {unfinished}")
                return events
            for record_type, request_id, content in self._reader.feed(data):
                if request_id:
                    self._on_request_record(record_type, request_id, content, events)
                else:
                    self._on_management_record(record_type, content, events)
        except RemoteProtocolError as error:
            self._error = error
            raise
        return events

    def _on_management_record(self, record_type: int, content: bytes, events: list[ClientEvent]) -> None:
        if record_type == RecordType.GET_VALUES_RESULT:
            try:
                pairs = decode_pairs(content)
            except RemoteProtocolError as error:
                raise RemoteProtocolError(f"malformed GET_VALUES_RESULT: {error.msg}") from None
            events.append(GetValuesResult({n.decode("latin-1"): v.decode("latin-1") for n, v in pairs}))
        elif record_type == RecordType.UNKNOWN_TYPE and len(content) == 8:
            events.append(UnknownType(content[0]))
        else:
            raise RemoteProtocolError(
                f"unexpected management record of type {record_type} ({len(content)} bytes)"
            )

    def _on_request_record(
        self, record_type: int, request_id: int, content: bytes, events: list[ClientEvent]
    ) -> None:
        if record_type not in _KNOWN_TYPES:
            return  # An unknown application type is ignored, as on the server side.
        request = self._requests.get(request_id)
        if request is None:
            # S-D4: nginx rejects this too ("upstream sent unexpected FastCGI request id").
            raise RemoteProtocolError(f"record of type {record_type} for inactive request id {request_id}")
        if record_type == RecordType.STDOUT:
            if request.stdout_ended:
                raise RemoteProtocolError(f"STDOUT for request {request_id} after its STDOUT stream ended")
            if content:
                events.append(Stdout(request_id, content))
            else:
                request.stdout_ended = True
                events.append(StdoutEnd(request_id))
        elif record_type == RecordType.STDERR:
            if request.stderr_state == 2:
                raise RemoteProtocolError(f"STDERR for request {request_id} after its STDERR stream ended")
            if content:
                request.stderr_state = 1
                events.append(Stderr(request_id, content))
            else:
                request.stderr_state = 2
                events.append(StderrEnd(request_id))
        elif record_type == RecordType.END_REQUEST:
            events.append(self._end(request_id, request, content))
        else:
            raise RemoteProtocolError(
                f"{RecordType(record_type).name} record for request {request_id} from the application (S-B4)"
            )

    def _end(self, request_id: int, request: _ClientRequest, content: bytes) -> EndRequest:
        if len(content) != END_BODY.size:
            raise RemoteProtocolError(f"END_REQUEST for request {request_id} has a {len(content)}-byte body")
        app_status, protocol_status = END_BODY.unpack(content)
        if protocol_status not in _STATUSES:
            raise RemoteProtocolError(
                f"END_REQUEST for request {request_id}: unknown status {protocol_status}"
            )
        status = ProtocolStatus(protocol_status)
        # S-F4: a completed request's STDOUT always ends with an empty record; STDERR, if opened, too.
        if status is ProtocolStatus.REQUEST_COMPLETE and not request.stdout_ended:
            raise RemoteProtocolError(f"END_REQUEST for request {request_id} before its STDOUT stream ended")
        if request.stderr_state == 1:
            raise RemoteProtocolError(f"END_REQUEST for request {request_id} before its STDERR stream ended")
        del self._requests[request_id]
        return EndRequest(request_id, app_status, status)
