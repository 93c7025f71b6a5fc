"""ServerConnection: the application side of one FastCGI transport connection, sans IO.

Bytes from the web server go into ``receive_data`` and come out as events; the caller's output goes through
``send_stdout`` / ``send_stderr`` / ``end_request`` and comes back as bytes to write. Management records are
answered here (``data_to_send``). Every request transition is looked up in ``state.TRANSITIONS``.

Not thread-safe: a caller that uses one connection from several threads holds one lock around every call.
"""

from __future__ import annotations

from dataclasses import dataclass

from .constants import (
    FCGI_KEEP_CONN,
    FCGI_MAX_CONNS,
    FCGI_MAX_REQS,
    FCGI_MPXS_CONNS,
    MAX_CONTENT_LENGTH,
    ProtocolStatus,
    RecordType,
    Role,
)
from .errors import LocalProtocolError, RemoteProtocolError
from .events import (
    ConnectionClosed,
    Data,
    DataEnd,
    Event,
    ParamsComplete,
    RequestAborted,
    RequestFailed,
    RequestReceived,
    RequestRejected,
    RequestStarted,
    StdinData,
    StdinEnd,
)
from .records import (
    BEGIN_BODY,
    HEADER,
    STDOUT_END_AND_END_REQUEST,
    Buffer,
    PairLimitError,
    RecordReader,
    decode_pairs,
    decode_params,
    encode_end_request,
    encode_pairs,
    encode_record,
    encode_record_parts,
)
from .state import TRANSITIONS, UNANNOUNCED, RequestInput, RequestState

__all__ = ["ConnectionSettings", "ProtocolLimits", "ServerConnection"]

_I = RequestInput
_S = RequestState
# Module-level aliases: Enum attribute access is slow on 3.11 and these are read once per record.
_BEGIN, _BEGIN_FILTER, _ABORT = _I.BEGIN, _I.BEGIN_FILTER, _I.ABORT
_PARAMS, _PARAMS_END, _STDIN, _STDIN_END, _DATA, _DATA_END = (
    _I.PARAMS, _I.PARAMS_END, _I.STDIN, _I.STDIN_END, _I.DATA, _I.DATA_END,
)  # fmt: skip
# The (non-empty, empty) record inputs of each stream type, indexed by record type (a byte; None for the
# types that are no stream): looked up for every record, and a tuple index costs less than a dict's .get().
_STREAM_INPUTS: tuple[tuple[RequestInput, RequestInput] | None, ...] = tuple(
    {
        RecordType.PARAMS.value: (_PARAMS, _PARAMS_END),
        RecordType.STDIN.value: (_STDIN, _STDIN_END),
        RecordType.DATA.value: (_DATA, _DATA_END),
    }.get(record_type)
    for record_type in range(256)
)
_PADDING = [bytes(n) for n in range(8)]
# Types a web server never sends (S-B4) and management types: either is fatal for a non-zero id.
_APP_OUTPUT_TYPES = frozenset({RecordType.END_REQUEST, RecordType.STDOUT, RecordType.STDERR})
_MANAGEMENT_TYPES = frozenset({RecordType.GET_VALUES, RecordType.GET_VALUES_RESULT, RecordType.UNKNOWN_TYPE})
_KNOWN_TYPES = frozenset(int(t) for t in RecordType)
_BEGIN_REQUEST, _ABORT_REQUEST = int(RecordType.BEGIN_REQUEST), int(RecordType.ABORT_REQUEST)
_IDLE, _FAILED = _S.IDLE, _S.FAILED
_SEND_OUTPUT, _END = _I.SEND_OUTPUT, _I.END
_ROLE_BY_VALUE = {int(role): role for role in Role}
_BEGIN_BY_ROLE = {role: _BEGIN_FILTER if role is Role.FILTER else _BEGIN for role in Role}
_STATUSES = frozenset(int(status) for status in ProtocolStatus)
_PARAMS_TYPE, _STDIN_TYPE = int(RecordType.PARAMS), int(RecordType.STDIN)
# receive_data's hot path (_receive_whole_request) takes a read this long at most, and puts a request straight
# into the state the table gives after BEGIN_REQUEST, its PARAMS stream and STDIN (ended, or not yet).
_WHOLE_REQUEST_MAX = 16384
_WHOLE_STDIN_OPEN = TRANSITIONS[(TRANSITIONS[(_IDLE, _BEGIN)].next_state, _PARAMS_END)].next_state
_WHOLE_INPUT_DONE = TRANSITIONS[(_WHOLE_STDIN_OPEN, _STDIN_END)].next_state


def _end_record(request_id: int, status: ProtocolStatus) -> bytes:
    """A bare END_REQUEST: a refusal "sent in place of processing" (S-F6), so no STDOUT precedes it."""
    return encode_end_request(request_id, 0, status, close_stdout=False, close_stderr=False)


@dataclass(frozen=True, slots=True)
class ConnectionSettings:
    """What GET_VALUES reports (S-E2); it must describe the running server, so pools keep it current.

    ``max_conns``: concurrent transport connections the server accepts; ``max_reqs``: concurrent requests
    the whole application serves; ``mpxs_conns``: whether one connection may carry concurrent requests (when
    False a second concurrent request is refused with CANT_MPX_CONN).
    """

    max_conns: int = 1
    max_reqs: int = 1
    mpxs_conns: bool = False

    def __post_init__(self) -> None:
        if self.max_conns < 1 or self.max_reqs < 1:
            raise ValueError(f"max_conns and max_reqs must be >= 1, got {self.max_conns}, {self.max_reqs}")


@dataclass(frozen=True, slots=True)
class ProtocolLimits:
    """Bounds on what one peer can make a connection hold (documented in docs/protocol.md).

    ``max_params_bytes``: encoded PARAMS bytes per request (1 MiB; Apache's own defaults allow ~800 KiB of
    headers, nginx far less). ``max_params_count``: pairs per request (1000). ``max_requests``: concurrent
    requests per connection when multiplexing (32). Worst-case buffered memory per connection is one record
    (65798 bytes) plus ``max_params_bytes * max_requests``.
    """

    max_params_bytes: int = 1 << 20
    max_params_count: int = 1000
    max_requests: int = 32

    def __post_init__(self) -> None:
        if min(self.max_params_bytes, self.max_params_count, self.max_requests) < 1:
            raise ValueError(f"every protocol limit must be >= 1: {self}")


_DEFAULT_SETTINGS = ConnectionSettings()
_DEFAULT_LIMITS = ProtocolLimits()


class _Request:
    """Per-request data. Its ``state`` only ever changes to a ``TRANSITIONS`` target."""

    __slots__ = ("keep_conn", "output_started", "params", "role", "state", "stderr_open")

    def __init__(self, state: RequestState, role: Role, keep_conn: bool) -> None:
        self.state = state
        self.role = role
        self.keep_conn = keep_conn
        self.params = bytearray()
        self.output_started = False
        self.stderr_open = False


class ServerConnection:
    """One FastCGI transport connection seen from the application (sans IO)."""

    def __init__(
        self,
        settings: ConnectionSettings | None = None,
        limits: ProtocolLimits | None = None,
        *,
        whole_requests: bool = False,
    ) -> None:
        """``whole_requests``: report a request that comes whole in one read (as web servers write them) as
        one ``RequestReceived`` event instead of RequestStarted, ParamsComplete, StdinData and StdinEnd."""
        self._whole_requests = whole_requests
        self._settings = settings if settings is not None else _DEFAULT_SETTINGS
        self._limits = limits if limits is not None else _DEFAULT_LIMITS
        self._reader = RecordReader()
        self._requests: dict[int, _Request] = {}
        self._outbox: list[bytes] = []
        self._error: RemoteProtocolError | None = None
        self._eof = False
        self._close_when_idle = False

    # -- state the caller reads -----------------------------------------------------------------------

    @property
    def settings(self) -> ConnectionSettings:
        return self._settings

    @property
    def limits(self) -> ProtocolLimits:
        return self._limits

    @property
    def active_requests(self) -> int:
        """Request ids that are active: begun by the peer and not yet answered with END_REQUEST."""
        return len(self._requests)

    @property
    def buffered_bytes(self) -> int:
        """Bytes the layer holds: a partial record plus the PARAMS of requests still reading them."""
        held = self._reader.buffered
        for request in self._requests.values():
            held += len(request.params)
        return held

    @property
    def should_close(self) -> bool:
        """True once the peer closed, a fatal error happened, or no request is left and one ended without
        KEEP_CONN (S-D5: then the application closes the connection). Write ``data_to_send()`` first."""
        return self._eof or self._error is not None or (self._close_when_idle and not self._requests)

    def request_state(self, request_id: int) -> RequestState:
        """The state of ``request_id`` (IDLE when it is not active)."""
        request = self._requests.get(request_id)
        return request.state if request is not None else _IDLE

    def update_settings(self, settings: ConnectionSettings) -> None:
        """Change what GET_VALUES reports and whether concurrent requests are accepted, from now on."""
        self._settings = settings

    def data_to_send(self) -> bytes:
        """Replies the layer composed by itself (GET_VALUES_RESULT, UNKNOWN_TYPE, END_REQUEST of requests it
        rejected); empties the buffer. Call it after every ``receive_data``."""
        outbox = self._outbox
        if not outbox:
            return b""  # the usual case, once per read: no join, no clear
        out = b"".join(outbox)
        outbox.clear()
        return out

    # -- input ----------------------------------------------------------------------------------------

    def receive_data(self, data: Buffer) -> list[Event]:
        """Feed bytes from the peer (``b""`` = the peer closed); return the events they complete.

        Error model: a violation that breaks the byte stream or the connection's rules raises
        ``RemoteProtocolError(request_id=None)`` and poisons the object (every later call raises). A violation
        that concerns one request never raises: the layer answers a request the caller has not been told
        about itself (END_REQUEST in ``data_to_send``, event ``RequestRejected``), and reports one the caller
        owns as ``RequestFailed`` (the caller stops its app and calls ``end_request``).
        """
        if self._error is not None:
            raise RemoteProtocolError(self._error.msg, None)
        if self._eof:
            if data:
                raise LocalProtocolError("receive_data() called with data after the peer closed")
            return []
        if not data:
            return self._on_eof()
        if not self._requests and len(data) <= _WHOLE_REQUEST_MAX and not self._reader.buffered:
            # The usual read between requests: one whole request's records, as a web server writes them.
            buf = data if type(data) is bytes else bytes(data)
            whole = self._receive_whole_request(buf)
            if whole is not None:
                return whole
            data = buf  # anything else: the general path below, which reads every record type
        events: list[Event] = []
        requests = self._requests
        try:
            for record_type, request_id, content in self._reader.feed(data):
                if not request_id:
                    self._on_management_record(record_type, content)
                    continue
                request = requests.get(request_id)
                stream_inputs = _STREAM_INPUTS[record_type]
                if request is None or stream_inputs is None:
                    self._on_application_record(
                        record_type, request_id, request, stream_inputs, content, events
                    )
                    continue
                # Hot path, inlined: a PARAMS / STDIN / DATA record for an active request.
                request_input = stream_inputs[0] if content else stream_inputs[1]
                try:  # a subscript, not .get(): a missing transition (a peer's violation) is the rare case
                    transition = TRANSITIONS[(request.state, request_input)]
                except KeyError:
                    self._peer_violation(request_id, request, request_input, events)
                    continue
                if transition.act:
                    self._act(request_id, request, request_input, transition.next_state, content, events)
        except RemoteProtocolError as error:
            self._error = error
            raise
        return events

    def _receive_whole_request(self, buf: bytes) -> list[Event] | None:
        """``receive_data``'s hot path, for a connection with no active request and nothing buffered: the
        events of ``buf`` (one ``RequestReceived`` with ``whole_requests``) when it holds exactly the opening
        of one request and nothing else (BEGIN_REQUEST of a RESPONDER or AUTHORIZER, its whole PARAMS stream,
        then STDIN records, whole, up to its end or not), which is how web servers write a request (S-F2).
        None for anything else (a record of another type or id, a management record, a FILTER, an incomplete
        record, a broken limit or params), with no state changed: the general path then reads ``buf`` record
        by record and answers whatever is wrong.

        The events, the request's state (looked up in TRANSITIONS) and every later answer are those of the
        general path; ``tests/protocol/test_whole_request.py`` compares the two on generated streams.
        """
        end = len(buf)
        if end < 24:  # BEGIN_REQUEST and the empty PARAMS at least
            return None
        unpack = HEADER.unpack_from
        version, record_type, request_id, length, padding = unpack(buf, 0)
        if record_type != _BEGIN_REQUEST or length != 8 or version != 1 or not request_id:
            return None
        role_value, flags = BEGIN_BODY.unpack_from(buf, 8)
        role = _ROLE_BY_VALUE.get(role_value)
        if role is None or role is Role.FILTER:
            return None
        pos = 16 + padding
        parts: list[bytes] = []
        while True:  # PARAMS, up to and including the empty record that ends them
            if end - pos < 8:
                return None
            version, record_type, record_id, length, padding = unpack(buf, pos)
            start = pos + 8
            pos = start + length + padding
            if record_type != _PARAMS_TYPE or record_id != request_id or version != 1 or pos > end:
                return None
            if not length:
                break
            parts.append(buf[start : start + length])
        content = parts[0] if len(parts) == 1 else b"".join(parts)
        if len(content) > self._limits.max_params_bytes:
            return None
        stdin: list[bytes] = []
        stdin_ended = False
        while pos < end:  # STDIN records, if the body (or its end) came in the same write
            if end - pos < 8 or stdin_ended:
                return None
            version, record_type, record_id, length, padding = unpack(buf, pos)
            start = pos + 8
            pos = start + length + padding
            if record_type != _STDIN_TYPE or record_id != request_id or version != 1 or pos > end:
                return None
            if length:
                stdin.append(buf[start : start + length])
            else:
                stdin_ended = True
        try:
            params, pairs = decode_params(content, self._limits.max_params_count)
        except RemoteProtocolError:
            return None
        keep_conn = bool(flags & FCGI_KEEP_CONN)
        state = _WHOLE_INPUT_DONE if stdin_ended else _WHOLE_STDIN_OPEN
        self._requests[request_id] = _Request(state, role, keep_conn)
        if self._whole_requests:
            return [RequestReceived(request_id, role, keep_conn, params, pairs, tuple(stdin), stdin_ended)]
        events: list[Event] = [
            RequestStarted(request_id, role, keep_conn),
            ParamsComplete(request_id, params, pairs),
        ]
        for chunk in stdin:
            events.append(StdinData(request_id, chunk))
        if stdin_ended:
            events.append(StdinEnd(request_id))
        return events

    def _on_eof(self) -> list[Event]:
        self._eof = True
        events: list[Event] = []
        # S-F7: a closed connection aborts every request on it; unannounced ones just vanish.
        for request_id, request in list(self._requests.items()):
            if request.state in UNANNOUNCED:
                del self._requests[request_id]
                continue
            next_state, act = TRANSITIONS[(request.state, _I.ABORT)]
            if act:
                request.state = next_state
                events.append(RequestAborted(request_id))
        events.append(ConnectionClosed())
        return events

    def _on_management_record(self, record_type: int, content: bytes) -> None:
        if record_type == RecordType.GET_VALUES:
            self._outbox.append(self._answer_get_values(content))
        elif record_type in _KNOWN_TYPES:
            raise RemoteProtocolError(
                f"{RecordType(record_type).name} record with request id 0: id 0 is reserved for management "
                "records a web server sends, i.e. GET_VALUES (S-D1, S-B4)"
            )
        else:
            # S-E4: an unknown management type is answered with UNKNOWN_TYPE {type, reserved[7]}.
            self._outbox.append(
                encode_record(RecordType.UNKNOWN_TYPE, 0, bytes((record_type, 0, 0, 0, 0, 0, 0, 0)))
            )

    def _answer_get_values(self, content: bytes) -> bytes:
        # S-E1/S-E3: answered at any time, only for the names asked and understood, without ending anything.
        settings = self._settings
        known = {
            FCGI_MAX_CONNS: str(settings.max_conns).encode(),
            FCGI_MAX_REQS: str(settings.max_reqs).encode(),
            FCGI_MPXS_CONNS: b"1" if settings.mpxs_conns else b"0",
        }
        answer: dict[bytes, bytes] = {}
        try:
            asked = decode_pairs(content)
        except RemoteProtocolError as error:
            raise RemoteProtocolError(f"malformed GET_VALUES record: {error.msg}") from None
        for name, _ in asked:
            if name in known:
                answer[name] = known[name]
        return encode_record(RecordType.GET_VALUES_RESULT, 0, encode_pairs(answer.items()))

    def _on_application_record(
        self,
        record_type: int,
        request_id: int,
        request: _Request | None,
        stream_inputs: tuple[RequestInput, RequestInput] | None,
        content: bytes,
        events: list[Event],
    ) -> None:
        """Every record of a non-zero id but a stream record of an active request (``receive_data`` looked
        up ``request`` and ``stream_inputs`` already)."""
        if stream_inputs is not None:
            request_input = stream_inputs[0] if content else stream_inputs[1]
        elif record_type == _BEGIN_REQUEST:
            if len(content) != BEGIN_BODY.size:
                raise RemoteProtocolError(
                    f"BEGIN_REQUEST for request {request_id} has a {len(content)}-byte body, not 8 (S-D5)"
                )
            role, flags = BEGIN_BODY.unpack(content)
            if request is None:
                self._begin(request_id, role, bool(flags & FCGI_KEEP_CONN), events)
                return
            request_input = _BEGIN_FILTER if role == Role.FILTER else _BEGIN
        elif record_type == _ABORT_REQUEST:
            request_input = _ABORT
        elif record_type in _APP_OUTPUT_TYPES:
            raise RemoteProtocolError(
                f"{RecordType(record_type).name} record for request {request_id}: only an application sends "
                "that type (S-B4)"
            )
        elif record_type in _MANAGEMENT_TYPES:
            raise RemoteProtocolError(
                f"management record {RecordType(record_type).name} with request id {request_id}: management "
                "records use id 0 (S-D1)"
            )
        else:
            return  # An unknown application type: the spec does not cover it; ignored, like flup (S-E4).
        if request is None:
            # IDLE: the table ignores everything but BEGIN_REQUEST (handled above) for inactive ids (S-D2).
            return
        transition = TRANSITIONS.get((request.state, request_input))
        if transition is None:
            self._peer_violation(request_id, request, request_input, events)
        elif transition.act:
            self._act(request_id, request, request_input, transition.next_state, content, events)

    def _begin(self, request_id: int, role_value: int, keep_conn: bool, events: list[Event]) -> None:
        role = _ROLE_BY_VALUE.get(role_value)
        if role is None:
            status, reason = ProtocolStatus.UNKNOWN_ROLE, f"unknown role {role_value} (S-G4)"
        elif self._requests and not self._settings.mpxs_conns:
            status, reason = ProtocolStatus.CANT_MPX_CONN, "a second concurrent request on a connection that "
            reason += "does not multiplex (FCGI_MPXS_CONNS=0, S-F6)"
        elif len(self._requests) >= self._limits.max_requests:
            status = ProtocolStatus.OVERLOADED
            reason = (
                f"more than {self._limits.max_requests} concurrent requests on one connection (max_requests)"
            )
        else:
            start = TRANSITIONS[(_IDLE, _BEGIN_BY_ROLE[role])].next_state
            self._requests[request_id] = _Request(start, role, keep_conn)
            return
        if not keep_conn:
            self._close_when_idle = True
        error = RemoteProtocolError(f"request {request_id} rejected: {reason}", request_id)
        self._reject(request_id, status, error, events)

    def _reject(
        self, request_id: int, status: ProtocolStatus, error: RemoteProtocolError | None, events: list[Event]
    ) -> None:
        self._outbox.append(_end_record(request_id, status))
        events.append(RequestRejected(request_id, status, error))

    def _act(
        self,
        request_id: int,
        request: _Request,
        request_input: RequestInput,
        next_state: RequestState,
        content: bytes,
        events: list[Event],
    ) -> None:
        if request_input is _PARAMS:
            received = request.params
            if len(received) + len(content) > self._limits.max_params_bytes:
                msg = f"PARAMS exceed max_params_bytes ({self._limits.max_params_bytes})"
                self._fail_unannounced(request_id, request, msg, ProtocolStatus.OVERLOADED, events)
                return
            received += content
        elif request_input is _STDIN:
            events.append(StdinData(request_id, content))
        elif request_input is _PARAMS_END:
            try:
                params, pairs = decode_params(request.params, self._limits.max_params_count)
            except PairLimitError as error:
                self._fail_unannounced(request_id, request, error.msg, ProtocolStatus.OVERLOADED, events)
                return
            except RemoteProtocolError as error:
                msg = f"malformed PARAMS: {error.msg}"
                self._fail_unannounced(request_id, request, msg, ProtocolStatus.REQUEST_COMPLETE, events)
                return
            request.params = bytearray()  # announced requests hold no params
            events.append(RequestStarted(request_id, request.role, request.keep_conn))
            events.append(ParamsComplete(request_id, params, pairs))
        elif request_input is _STDIN_END:
            events.append(StdinEnd(request_id))
        elif request_input is _DATA:
            events.append(Data(request_id, content))
        elif request_input is _DATA_END:
            events.append(DataEnd(request_id))
        elif next_state is _IDLE:  # ABORT_REQUEST before the caller heard of the request: answer it here
            self._end(request_id, request)
            self._reject(request_id, ProtocolStatus.REQUEST_COMPLETE, None, events)
            return
        else:
            events.append(RequestAborted(request_id))
        request.state = next_state

    def _peer_violation(
        self, request_id: int, request: _Request, request_input: RequestInput, events: list[Event]
    ) -> None:
        msg = f"unexpected {request_input.value} while {request.state.value}"
        if request_input in (_I.BEGIN, _I.BEGIN_FILTER):
            msg += ": a second BEGIN_REQUEST for an active request id (S-D2)"
        if request.state in UNANNOUNCED:
            self._fail_unannounced(request_id, request, msg, ProtocolStatus.REQUEST_COMPLETE, events)
        else:
            request.state = _FAILED
            error = RemoteProtocolError(f"request {request_id} ({request.role.name}): {msg}", request_id)
            events.append(RequestFailed(request_id, error))

    def _fail_unannounced(
        self, request_id: int, request: _Request, msg: str, status: ProtocolStatus, events: list[Event]
    ) -> None:
        self._end(request_id, request)
        error = RemoteProtocolError(f"request {request_id} ({request.role.name}): {msg}", request_id)
        self._reject(request_id, status, error, events)

    def _end(self, request_id: int, request: _Request) -> None:
        del self._requests[request_id]
        if not request.keep_conn:
            self._close_when_idle = True

    # -- output ---------------------------------------------------------------------------------------

    def _owned(self, request_id: int, request_input: RequestInput) -> _Request:
        if self._error is not None:
            raise LocalProtocolError(f"connection is dead after a fatal protocol error: {self._error.msg}")
        request = self._requests.get(request_id)
        state = request.state if request is not None else _IDLE
        if request is None or (state, request_input) not in TRANSITIONS:
            raise LocalProtocolError(
                f"{request_input.value} for request {request_id}, which is {state.value}: only requests "
                "announced by RequestStarted and not yet ended accept output (S-D2, S-D7)"
            )
        return request

    def send_stdout(self, request_id: int, data: Buffer) -> bytes:
        """STDOUT records carrying ``data`` (split at 65535, padded to 8). ``b""`` gives ``b""``: the stream
        is ended by ``end_request`` only."""
        request = self._owned(request_id, _SEND_OUTPUT)
        if not data:
            return b""
        request.output_started = True
        length = len(data)
        if length <= MAX_CONTENT_LENGTH:
            pad = -length & 7
            return b"".join((HEADER.pack(1, 6, request_id, length, pad), data, _PADDING[pad]))
        return encode_record(RecordType.STDOUT, request_id, data)

    def send_stdout_parts(self, request_id: int, data: Buffer) -> list[Buffer]:
        """``send_stdout`` without copying ``data``: the records as buffers to write in order (headers, views
        of ``data``, padding), for a gathering write. ``b""`` gives ``[]``."""
        request = self._owned(request_id, _SEND_OUTPUT)
        if not data:
            return []
        request.output_started = True
        return encode_record_parts(RecordType.STDOUT, request_id, data)

    def send_stderr(self, request_id: int, data: Buffer) -> bytes:
        """STDERR records carrying ``data``; ``end_request`` then also closes STDERR (S-F4)."""
        request = self._owned(request_id, _SEND_OUTPUT)
        if not data:
            return b""
        request.output_started = True
        request.stderr_open = True
        return encode_record(RecordType.STDERR, request_id, data)

    def end_request(
        self,
        request_id: int,
        app_status: int = 0,
        protocol_status: ProtocolStatus = ProtocolStatus.REQUEST_COMPLETE,
        *,
        stdout: Buffer = b"",
    ) -> bytes:
        """The empty STDOUT (and empty STDERR if STDERR was written), then END_REQUEST; the id becomes
        inactive. Exactly once per request (S-D7): a second call raises ``LocalProtocolError``.

        ``stdout``: the response's last STDOUT data, put first: the same bytes as ``send_stdout(request_id,
        stdout) + end_request(...)`` in one call and one string (a small response leaves in one write).
        """
        if not 0 <= app_status <= 0xFFFFFFFF:
            raise LocalProtocolError(f"app_status {app_status} does not fit in 32 bits (S-F6)")
        if protocol_status not in _STATUSES:
            raise LocalProtocolError(f"protocol_status {protocol_status} is not a FastCGI status (S-F6)")
        request = self._owned(request_id, _END)
        request.state = TRANSITIONS[(request.state, _END)].next_state
        self._end(request_id, request)
        if request.stderr_open:
            end = encode_end_request(
                request_id, app_status, protocol_status, close_stdout=True, close_stderr=True
            )
        else:
            # Hot path: the empty STDOUT and END_REQUEST packed in one call.
            end = STDOUT_END_AND_END_REQUEST.pack(
                1, 6, request_id, 0, 0, 1, 3, request_id, 8, 0, app_status, protocol_status
            )
        if not stdout:
            return end
        length = len(stdout)
        if length <= MAX_CONTENT_LENGTH:
            pad = -length & 7
            return b"".join((HEADER.pack(1, 6, request_id, length, pad), stdout, _PADDING[pad], end))
        return encode_record(RecordType.STDOUT, request_id, stdout) + end

    def reject_request(self, request_id: int, status: ProtocolStatus) -> bytes:
        """END_REQUEST with ``status`` in place of processing (S-F6), e.g. OVERLOADED when saturated.

        Only before any output was sent, and not with REQUEST_COMPLETE (that needs the STDOUT end).
        """
        status = ProtocolStatus(status)
        if status is ProtocolStatus.REQUEST_COMPLETE:
            raise LocalProtocolError("reject_request() needs a refusal status; use end_request() to complete")
        request = self._owned(request_id, _END)
        if request.output_started:
            raise LocalProtocolError(
                f"request {request_id} already sent output; finish it with end_request()"
            )
        request.state = TRANSITIONS[(request.state, _END)].next_state
        self._end(request_id, request)
        return _end_record(request_id, status)
