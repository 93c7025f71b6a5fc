"""ServerConnection request lifecycle: S-D request ids, S-F streams, S-G roles. Raw bytes in, bytes out."""

from __future__ import annotations

import pytest

from fcgiserve.protocol import (
    ConnectionClosed,
    ConnectionSettings,
    Data,
    DataEnd,
    LocalProtocolError,
    ParamsComplete,
    ProtocolStatus,
    RequestAborted,
    RequestFailed,
    RequestRejected,
    RequestStarted,
    RequestState,
    Role,
    ServerConnection,
    StdinData,
    StdinEnd,
)

from . import wire
from .conftest import Feeder

PARAMS = [(b"REQUEST_METHOD", b"GET"), (b"SCRIPT_NAME", b""), (b"REQUEST_URI", b"/a?b=c")]


def started(request_id: int = 1, keep_conn: bool = False) -> ServerConnection:
    conn = ServerConnection()
    conn.receive_data(wire.simple_get(request_id, keep_conn))
    return conn


def test_s_g1_responder_get_yields_started_params_and_stdin_end(feed: Feeder) -> None:
    conn = ServerConnection()
    events = feed(conn, wire.simple_get(1))
    assert events == [
        RequestStarted(1, Role.RESPONDER, keep_conn=False),
        ParamsComplete(1, *wire.decoded(PARAMS)),
        StdinEnd(1),
    ]
    assert conn.data_to_send() == b""
    assert conn.active_requests == 1


def test_s_g1_s_f3_responder_post_body_arrives_in_pieces(feed: Feeder) -> None:
    data = (
        wire.begin(5) + wire.params(5, PARAMS) + wire.stdin(5, b"abc") + wire.stdin(5, b"de") + wire.stdin(5)
    )
    events = feed(ServerConnection(), data)
    assert events[2:] == [StdinData(5, b"abc"), StdinData(5, b"de"), StdinEnd(5)]


def test_s_f2_nothing_is_announced_before_the_empty_params_record(feed: Feeder) -> None:
    conn = ServerConnection()
    assert feed(conn, wire.begin(1) + wire.rec(wire.PARAMS, 1, wire.pairs(PARAMS))) == []
    assert conn.request_state(1) is RequestState.PARAMS
    assert feed(conn, wire.rec(wire.PARAMS, 1)) == [
        RequestStarted(1, Role.RESPONDER, False),
        ParamsComplete(1, *wire.decoded(PARAMS)),
    ]


def test_s_g2_authorizer_needs_no_body(feed: Feeder) -> None:
    data = wire.begin(2, wire.AUTHORIZER, keep_conn=True) + wire.params(2, [(b"REMOTE_USER", b"ann")])
    events = feed(ServerConnection(), data + wire.stdin(2))
    assert events == [
        RequestStarted(2, Role.AUTHORIZER, keep_conn=True),
        ParamsComplete(2, *wire.decoded([(b"REMOTE_USER", b"ann")])),
        StdinEnd(2),
    ]


def test_s_g3_filter_gets_stdin_then_data(feed: Feeder) -> None:
    filter_params = [(b"FCGI_DATA_LENGTH", b"4"), (b"FCGI_DATA_LAST_MOD", b"1700000000")]
    data = (
        wire.begin(3, wire.FILTER)
        + wire.params(3, filter_params)
        + wire.stdin(3, b"in")
        + wire.stdin(3)
        + wire.rec(wire.DATA, 3, b"file")
        + wire.rec(wire.DATA, 3)
    )
    conn = ServerConnection()
    events = feed(conn, data)
    assert events == [
        RequestStarted(3, Role.FILTER, False),
        ParamsComplete(3, *wire.decoded(filter_params)),
        StdinData(3, b"in"),
        StdinEnd(3),
        Data(3, b"file"),
        DataEnd(3),
    ]
    assert conn.request_state(3) is RequestState.FILTER_INPUT_DONE


def test_s_g3_data_after_the_filters_data_ended_fails_the_request(feed: Feeder) -> None:
    """Stream data after the stream's end: a FILTER's DATA is not ignored like a responder's."""
    data = wire.begin(3, wire.FILTER) + wire.params(3, []) + wire.stdin(3) + wire.rec(wire.DATA, 3)
    conn = ServerConnection()
    events = feed(conn, data + wire.rec(wire.DATA, 3, b"late"))
    assert events[-2] == DataEnd(3) and isinstance(events[-1], RequestFailed)
    assert "DATA data while all input streams ended (FILTER)" in str(events[-1].error)
    assert conn.request_state(3) is RequestState.FAILED


def test_s_g3_data_before_stdin_ended_fails_the_filter_request(feed: Feeder) -> None:
    data = wire.begin(3, wire.FILTER) + wire.params(3, []) + wire.rec(wire.DATA, 3, b"early")
    conn = ServerConnection()
    events = feed(conn, data)
    assert isinstance(events[-1], RequestFailed)
    assert "DATA data while reading STDIN (FILTER" in str(events[-1].error)
    assert conn.request_state(3) is RequestState.FAILED


# S-G3 defines DATA for FILTER only; flup and libfcgi ignore it for the other roles, and some clients send an
# (often empty) DATA stream to every role. The request goes on: the records come out as Data / DataEnd for the
# caller to drop, before or after the STDIN stream ended, and the state is that of a request without them.
D, E = wire.rec(wire.DATA, 1, b"file"), wire.rec(wire.DATA, 1)  # a DATA record, the empty DATA record
BODY = wire.stdin(1, b"body") + wire.stdin(1)
BO, DY = wire.stdin(1, b"bo"), wire.stdin(1, b"dy") + wire.stdin(1)  # the same body in two halves
DATA_CASES = {  # records after PARAMS -> (the body, the Data / DataEnd events)
    "empty DATA after STDIN": (wire.stdin(1) + E, b"", [DataEnd(1)]),
    "empty DATA before STDIN": (E + wire.stdin(1), b"", [DataEnd(1)]),
    "DATA after STDIN": (BODY + D + E, b"body", [Data(1, b"file"), DataEnd(1)]),
    "DATA before STDIN": (D + E + BODY, b"body", [Data(1, b"file"), DataEnd(1)]),
    "DATA amid STDIN": (BO + D + DY, b"body", [Data(1, b"file")]),
    "DATA without its end": (D + wire.stdin(1), b"", [Data(1, b"file")]),
    "DATA after DATA ended": (E + wire.stdin(1) + D + E, b"", [DataEnd(1), Data(1, b"file"), DataEnd(1)]),
}  # fmt: skip


@pytest.mark.parametrize("role", [wire.RESPONDER, wire.AUTHORIZER], ids=["responder", "authorizer"])
@pytest.mark.parametrize("case", list(DATA_CASES))
def test_s_g3_data_for_a_role_that_reads_none_is_passed_on_and_the_request_goes_on(
    role: int, case: str, feed: Feeder
) -> None:
    records, body, data_events = DATA_CASES[case]
    conn = ServerConnection()
    events = feed(conn, wire.begin(1, role) + wire.params(1, PARAMS) + records)
    assert events[:2] == [RequestStarted(1, Role(role), False), ParamsComplete(1, *wire.decoded(PARAMS))]
    stdin = [e for e in events[2:] if isinstance(e, (StdinData, StdinEnd))]
    assert b"".join(e.data for e in stdin if isinstance(e, StdinData)) == body and stdin[-1] == StdinEnd(1)
    assert [e for e in events[2:] if not isinstance(e, (StdinData, StdinEnd))] == data_events
    assert conn.request_state(1) is RequestState.INPUT_DONE
    assert conn.data_to_send() == b""
    # The caller answers the request as usual.
    assert conn.send_stdout(1, b"ok") + conn.end_request(1) == (
        wire.rec(wire.STDOUT, 1, b"ok") + wire.rec(wire.STDOUT, 1) + wire.end_request(1)
    )


def test_s_g3_empty_data_stream_to_a_responder_is_one_data_end_event(feed: Feeder) -> None:
    """The client of the report: PARAMS, the empty STDIN, the empty DATA; nothing fails or is rejected."""
    events = feed(ServerConnection(), wire.simple_get(1) + wire.rec(wire.DATA, 1))
    assert events == [
        RequestStarted(1, Role.RESPONDER, False),
        ParamsComplete(1, *wire.decoded(PARAMS)),
        StdinEnd(1),
        DataEnd(1),
    ]


@pytest.mark.parametrize("role", [0, 4, 65535])
def test_s_g4_unknown_role_is_answered_with_unknown_role(role: int, feed: Feeder) -> None:
    conn = ServerConnection()
    events = feed(conn, wire.begin(4, role, keep_conn=True))
    assert len(events) == 1 and isinstance(events[0], RequestRejected)
    assert events[0].protocol_status is ProtocolStatus.UNKNOWN_ROLE
    assert f"unknown role {role}" in str(events[0].error)
    assert conn.data_to_send() == wire.end_request(4, 0, wire.UNKNOWN_ROLE)
    assert conn.active_requests == 0
    # The rejected id is inactive: its PARAMS are ignored (S-D2).
    assert feed(conn, wire.params(4, PARAMS)) == []


def test_s_d1_s_d3_request_ids_up_to_65535_are_echoed(feed: Feeder) -> None:
    conn = ServerConnection()
    events = feed(conn, wire.simple_get(65535))
    assert events[0] == RequestStarted(65535, Role.RESPONDER, False)
    out = conn.send_stdout(65535, b"hi") + conn.end_request(65535)
    assert out == wire.rec(wire.STDOUT, 65535, b"hi") + wire.rec(wire.STDOUT, 65535) + wire.end_request(65535)


def test_s_d2_records_for_inactive_ids_are_ignored(feed: Feeder) -> None:
    conn = started(1, keep_conn=True)
    conn.end_request(1)
    late = wire.stdin(1, b"late") + wire.params(9, PARAMS) + wire.rec(wire.ABORT_REQUEST, 9) + wire.stdin(9)
    assert feed(conn, late) == []
    assert conn.data_to_send() == b""


def test_s_d2_an_ended_id_can_begin_again(feed: Feeder) -> None:
    conn = started(1, keep_conn=True)
    conn.end_request(1)
    assert feed(conn, wire.simple_get(1, keep_conn=True))[0] == RequestStarted(1, Role.RESPONDER, True)


def test_s_d4_every_response_record_carries_the_request_id() -> None:
    conn = started(77)
    out = conn.send_stdout(77, b"x" * 70000) + conn.send_stderr(77, b"warn") + conn.end_request(77, 3)
    expected = (
        wire.rec(wire.STDOUT, 77, b"x" * 35000)  # 70,000 bytes: two records of equal size
        + wire.rec(wire.STDOUT, 77, b"x" * 35000)
        + wire.rec(wire.STDERR, 77, b"warn")
        + wire.rec(wire.STDOUT, 77)
        + wire.rec(wire.STDERR, 77)
        + wire.end_request(77, 3)
    )
    assert out == expected


def test_s_d5_keep_conn_is_surfaced_and_decides_should_close() -> None:
    kept = started(1, keep_conn=True)
    kept.end_request(1)
    assert not kept.should_close
    closing = started(1, keep_conn=False)
    assert not closing.should_close
    closing.end_request(1)
    assert closing.should_close


def test_s_d6_peer_eof_without_requests_closes_cleanly() -> None:
    conn = ServerConnection()
    assert conn.receive_data(b"") == [ConnectionClosed()]
    assert conn.should_close
    assert conn.receive_data(b"") == []
    with pytest.raises(LocalProtocolError, match="after the peer closed"):
        conn.receive_data(b"more")


def test_s_d7_a_second_end_request_is_a_local_error() -> None:
    conn = started(1)
    conn.end_request(1)
    with pytest.raises(LocalProtocolError, match="not active"):
        conn.end_request(1)
    with pytest.raises(LocalProtocolError):
        conn.reject_request(1, ProtocolStatus.OVERLOADED)
    with pytest.raises(LocalProtocolError):
        conn.send_stdout(1, b"late")


def test_output_for_a_request_that_was_never_announced_is_a_local_error() -> None:
    conn = ServerConnection()
    conn.receive_data(wire.begin(1))  # PARAMS not yet complete: the caller cannot own it
    with pytest.raises(LocalProtocolError, match="reading PARAMS"):
        conn.send_stdout(1, b"x")
    with pytest.raises(LocalProtocolError):
        conn.end_request(1)


def test_s_f1_stdin_after_its_end_fails_the_request_only(feed: Feeder) -> None:
    conn = started(1)
    events = feed(conn, wire.stdin(1, b"again"))
    assert len(events) == 1 and isinstance(events[0], RequestFailed)
    assert "STDIN data while all input streams ended" in str(events[0].error)
    assert conn.data_to_send() == b""  # the caller owns the request: it ends it
    assert feed(conn, wire.stdin(1, b"ignored") + wire.rec(wire.ABORT_REQUEST, 1)) == []
    assert conn.end_request(1, 1) == wire.rec(wire.STDOUT, 1) + wire.end_request(1, 1)
    assert conn.active_requests == 0 and conn.should_close  # no KEEP_CONN: close after END_REQUEST


def test_s_f1_params_after_the_params_stream_ended_fail_the_request(feed: Feeder) -> None:
    conn = started(1)
    events = feed(conn, wire.rec(wire.PARAMS, 1, wire.pair(b"A", b"B")))
    assert isinstance(events[0], RequestFailed)


@pytest.mark.parametrize("record_type", [wire.STDIN, wire.DATA])
def test_s_f2_stdin_or_data_before_params_ended_rejects_the_request(record_type: int, feed: Feeder) -> None:
    conn = ServerConnection()
    data = wire.begin(1, keep_conn=True) + wire.rec(wire.PARAMS, 1, wire.pairs(PARAMS))
    events = feed(conn, data + wire.rec(record_type, 1, b"body"))
    assert len(events) == 1 and isinstance(events[0], RequestRejected)
    assert "while reading PARAMS" in str(events[0].error)
    assert conn.data_to_send() == wire.end_request(1)
    assert conn.active_requests == 0 and not conn.should_close


def test_s_f4_end_request_closes_stdout_and_stderr_only_if_written() -> None:
    conn = started(1)
    assert conn.send_stdout(1, b"") == b""
    assert conn.send_stderr(1, b"") == b""
    assert conn.end_request(1) == wire.rec(wire.STDOUT, 1) + wire.end_request(1)
    conn = started(2)
    assert conn.send_stderr(2, b"oops") == wire.rec(wire.STDERR, 2, b"oops")
    assert conn.end_request(2, 0x01020304) == (
        wire.rec(wire.STDOUT, 2) + wire.rec(wire.STDERR, 2) + wire.end_request(2, 0x01020304)
    )


def test_s_f4_stdout_accepts_bytearray_and_memoryview() -> None:
    conn = started(1)
    assert conn.send_stdout(1, bytearray(b"ab")) == wire.rec(wire.STDOUT, 1, b"ab")
    assert conn.send_stdout(1, memoryview(b"cd")) == wire.rec(wire.STDOUT, 1, b"cd")
    assert conn.send_stderr(1, memoryview(b"e" * 70000)) == (
        wire.rec(wire.STDERR, 1, b"e" * 35000) + wire.rec(wire.STDERR, 1, b"e" * 35000)
    )


def test_s_f4_stdout_parts_are_stdout_as_buffers_to_gather() -> None:
    conn = started(1)
    payload = b"p" * 70000
    assert conn.send_stdout_parts(1, b"") == []
    assert b"".join(conn.send_stdout_parts(1, payload)) == started(1).send_stdout(1, payload)
    assert conn.end_request(1) == wire.rec(wire.STDOUT, 1, b"") + wire.end_request(1)
    with pytest.raises(LocalProtocolError):
        conn.send_stdout_parts(1, b"after the end")


@pytest.mark.parametrize("size", [1, 7, 8, 65535, 70000])
def test_s_f4_end_request_with_the_last_stdout_is_the_records_of_both_in_order(size: int) -> None:
    payload = bytes(range(256)) * (size // 256) + b"z" * (size % 256)
    records = wire.stream(wire.STDOUT, 1, payload)
    conn = started(1)
    assert conn.end_request(1, 3, stdout=memoryview(payload)) == (
        records + wire.rec(wire.STDOUT, 1) + wire.end_request(1, 3)
    )
    assert conn.should_close
    with pytest.raises(LocalProtocolError):
        conn.end_request(1, stdout=b"again")
    conn = started(2)
    conn.send_stderr(2, b"e")
    assert conn.end_request(2, stdout=b"out") == (
        wire.rec(wire.STDOUT, 2, b"out")
        + wire.rec(wire.STDOUT, 2)
        + wire.rec(wire.STDERR, 2)
        + wire.end_request(2)
    )
    with pytest.raises(LocalProtocolError):  # a request never announced gets no output, with the end or not
        ServerConnection().end_request(1, stdout=b"x")


def test_s_f5_a_responder_may_write_before_stdin_ends() -> None:
    conn = ServerConnection()
    conn.receive_data(wire.begin(1) + wire.params(1, PARAMS) + wire.stdin(1, b"partial"))
    assert conn.send_stdout(1, b"early") == wire.rec(wire.STDOUT, 1, b"early")


def test_s_f6_end_request_status_fields_and_range() -> None:
    conn = started(1)
    out = conn.end_request(1, 0xFFFFFFFF, ProtocolStatus.OVERLOADED)
    assert out == wire.rec(wire.STDOUT, 1) + wire.end_request(1, 0xFFFFFFFF, wire.OVERLOADED)
    conn = started(1)
    with pytest.raises(LocalProtocolError, match="32 bits"):
        conn.end_request(1, 1 << 32)
    with pytest.raises(LocalProtocolError, match="32 bits"):
        conn.end_request(1, -1)
    with pytest.raises(LocalProtocolError, match="not a FastCGI status"):
        conn.end_request(1, 0, 4)  # type: ignore[arg-type]
    assert conn.end_request(1, 0, 2) == wire.rec(wire.STDOUT, 1) + wire.end_request(1, 0, wire.OVERLOADED)  # type: ignore[arg-type]


def test_s_f6_overloaded_rejection_when_the_caller_is_saturated() -> None:
    conn = started(1, keep_conn=True)
    assert conn.reject_request(1, ProtocolStatus.OVERLOADED) == wire.end_request(1, 0, wire.OVERLOADED)
    assert conn.active_requests == 0 and not conn.should_close


def test_s_f6_reject_only_before_output_and_never_as_complete() -> None:
    conn = started(1)
    with pytest.raises(LocalProtocolError, match="refusal status"):
        conn.reject_request(1, ProtocolStatus.REQUEST_COMPLETE)
    conn.send_stdout(1, b"Status: 200 OK\r\n\r\n")
    with pytest.raises(LocalProtocolError, match="already sent output"):
        conn.reject_request(1, ProtocolStatus.OVERLOADED)
    conn.end_request(1)


def test_s_f6_second_concurrent_request_without_multiplexing_gets_cant_mpx_conn(feed: Feeder) -> None:
    conn = started(1, keep_conn=True)
    events = feed(conn, wire.simple_get(2, keep_conn=True))
    assert len(events) == 1 and isinstance(events[0], RequestRejected)
    assert events[0].protocol_status is ProtocolStatus.CANT_MPX_CONN
    assert conn.data_to_send() == wire.end_request(2, 0, wire.CANT_MPX_CONN)
    # The first request is unharmed.
    assert conn.request_state(1) is RequestState.INPUT_DONE
    assert conn.send_stdout(1, b"ok") == wire.rec(wire.STDOUT, 1, b"ok")
    assert conn.end_request(1) == wire.rec(wire.STDOUT, 1) + wire.end_request(1)
    assert not conn.should_close


def test_a_rejected_request_without_keep_conn_closes_once_idle() -> None:
    conn = started(1, keep_conn=True)
    conn.receive_data(wire.begin(2, keep_conn=False))
    assert not conn.should_close  # request 1 still runs
    conn.end_request(1)
    assert conn.should_close


def test_multiplexed_connection_interleaves_requests(feed: Feeder) -> None:
    conn = ServerConnection(ConnectionSettings(max_conns=4, max_reqs=8, mpxs_conns=True))
    data = wire.begin(1, keep_conn=True) + wire.begin(2, keep_conn=True) + wire.params(2, PARAMS)
    data += wire.params(1, []) + wire.stdin(2, b"two") + wire.stdin(1) + wire.stdin(2)
    events = feed(conn, data)
    assert events == [
        RequestStarted(2, Role.RESPONDER, True),
        ParamsComplete(2, *wire.decoded(PARAMS)),
        RequestStarted(1, Role.RESPONDER, True),
        ParamsComplete(1, *wire.decoded([])),
        StdinData(2, b"two"),
        StdinEnd(1),
        StdinEnd(2),
    ]
    assert conn.end_request(2) + conn.end_request(1) == (
        wire.rec(wire.STDOUT, 2) + wire.end_request(2) + wire.rec(wire.STDOUT, 1) + wire.end_request(1)
    )


def test_s_f7_abort_request_becomes_an_event_and_the_caller_ends_it(feed: Feeder) -> None:
    conn = ServerConnection()
    events = feed(conn, wire.begin(1) + wire.params(1, PARAMS) + wire.rec(wire.ABORT_REQUEST, 1))
    assert events[-1] == RequestAborted(1)
    assert conn.request_state(1) is RequestState.ABORTED
    assert feed(conn, wire.stdin(1, b"x") + wire.rec(wire.ABORT_REQUEST, 1)) == []  # ignored now
    assert conn.send_stdout(1, b"bye") == wire.rec(wire.STDOUT, 1, b"bye")
    assert conn.end_request(1) == wire.rec(wire.STDOUT, 1) + wire.end_request(1)
    assert conn.should_close


def test_s_f7_abort_before_params_ended_is_answered_by_the_layer(feed: Feeder) -> None:
    conn = ServerConnection()
    events = feed(conn, wire.begin(1, keep_conn=True) + wire.rec(wire.ABORT_REQUEST, 1))
    assert events == [RequestRejected(1, ProtocolStatus.REQUEST_COMPLETE, None)]
    assert conn.data_to_send() == wire.end_request(1)
    assert conn.active_requests == 0


def test_s_f7_peer_eof_aborts_every_active_request() -> None:
    conn = ServerConnection(ConnectionSettings(mpxs_conns=True))
    conn.receive_data(wire.simple_get(1) + wire.simple_get(2) + wire.begin(3) + wire.simple_get(4))
    conn.receive_data(wire.rec(wire.ABORT_REQUEST, 4))
    events = conn.receive_data(b"")
    # 3 never got its params (nobody to tell), 4 was already aborted.
    assert events == [RequestAborted(1), RequestAborted(2), ConnectionClosed()]
    assert conn.should_close
    assert conn.active_requests == 3  # the caller still ends 1, 2 and 4
    assert conn.end_request(1) == wire.rec(wire.STDOUT, 1) + wire.end_request(1)
