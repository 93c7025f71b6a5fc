"""ServerConnection: S-E management records, the error model (fatal vs per-request) and the limits."""

from __future__ import annotations

import pytest

from fcgiserve.protocol import (
    ConnectionSettings,
    LocalProtocolError,
    ParamsComplete,
    ProtocolLimits,
    ProtocolStatus,
    RemoteProtocolError,
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

ALL_VALUES = (b"FCGI_MAX_CONNS", b"FCGI_MAX_REQS", b"FCGI_MPXS_CONNS")


def test_s_e1_get_values_answers_only_the_names_asked(feed: Feeder) -> None:
    conn = ServerConnection(ConnectionSettings(max_conns=10, max_reqs=40, mpxs_conns=True))
    assert feed(conn, wire.get_values(b"FCGI_MPXS_CONNS", b"NOT_A_VARIABLE", b"FCGI_MAX_REQS")) == []
    assert conn.data_to_send() == wire.get_values_result(
        [(b"FCGI_MPXS_CONNS", b"1"), (b"FCGI_MAX_REQS", b"40")]
    )
    assert conn.data_to_send() == b""


def test_s_e1_get_values_with_no_known_name_gets_an_empty_result(feed: Feeder) -> None:
    conn = ServerConnection()
    feed(conn, wire.get_values() + wire.get_values(b"FCGI_MAX_CONNSX"))
    assert conn.data_to_send() == wire.get_values_result([]) * 2


def test_s_e2_get_values_tells_the_configured_truth_and_follows_updates(feed: Feeder) -> None:
    conn = ServerConnection()
    feed(conn, wire.get_values(*ALL_VALUES))
    assert conn.data_to_send() == wire.get_values_result(
        [(b"FCGI_MAX_CONNS", b"1"), (b"FCGI_MAX_REQS", b"1"), (b"FCGI_MPXS_CONNS", b"0")]
    )
    conn.update_settings(ConnectionSettings(max_conns=25, max_reqs=100, mpxs_conns=False))
    assert conn.settings.max_reqs == 100
    feed(conn, wire.get_values(*ALL_VALUES, b"FCGI_MAX_CONNS"))
    assert conn.data_to_send() == wire.get_values_result(
        [(b"FCGI_MAX_CONNS", b"25"), (b"FCGI_MAX_REQS", b"100"), (b"FCGI_MPXS_CONNS", b"0")]
    )


def test_s_e3_get_values_between_records_of_an_active_request(feed: Feeder) -> None:
    conn = ServerConnection(ConnectionSettings(max_conns=3))
    ask = wire.get_values(b"FCGI_MAX_CONNS")
    data = (
        wire.begin(1, keep_conn=True)
        + ask
        + wire.rec(wire.PARAMS, 1, wire.pair(b"A", b"1"))
        + ask
        + wire.rec(wire.PARAMS, 1)
        + ask
        + wire.stdin(1, b"body")
        + ask
        + wire.stdin(1)
    )
    events = feed(conn, data)
    assert events == [
        RequestStarted(1, Role.RESPONDER, True),
        ParamsComplete(1, *wire.decoded([(b"A", b"1")])),
        StdinData(1, b"body"),
        StdinEnd(1),
    ]
    assert conn.data_to_send() == wire.get_values_result([(b"FCGI_MAX_CONNS", b"3")]) * 4
    assert not conn.should_close


@pytest.mark.parametrize("record_type", [0, 12, 100, 255])
def test_s_e4_unknown_management_type_is_echoed_in_unknown_type(record_type: int, feed: Feeder) -> None:
    conn = ServerConnection()
    assert feed(conn, wire.rec(record_type, 0, b"whatever")) == []
    assert conn.data_to_send() == wire.unknown_type(record_type)
    assert not conn.should_close


@pytest.mark.parametrize("record_type", [0, 12, 200])
def test_unknown_application_type_is_ignored(record_type: int, feed: Feeder) -> None:
    conn = ServerConnection()
    assert feed(conn, wire.simple_get(1) + wire.rec(record_type, 1, b"?"))[-1] == StdinEnd(1)
    assert conn.data_to_send() == b""


@pytest.mark.parametrize("record_type", range(1, 9))
def test_s_d1_an_application_record_for_id_0_is_fatal(record_type: int, feed: Feeder) -> None:
    conn = ServerConnection()
    with pytest.raises(RemoteProtocolError, match="request id 0") as info:
        feed(conn, wire.rec(record_type, 0, bytes(8)))
    assert info.value.fatal


@pytest.mark.parametrize("record_type", [wire.GET_VALUES, wire.GET_VALUES_RESULT, wire.UNKNOWN_TYPE])
def test_s_d1_a_management_record_for_a_non_zero_id_is_fatal(record_type: int, feed: Feeder) -> None:
    with pytest.raises(RemoteProtocolError, match=r"management record .* request id 3"):
        feed(ServerConnection(), wire.rec(record_type, 3, b""))


@pytest.mark.parametrize("record_type", [wire.END_REQUEST, wire.STDOUT, wire.STDERR])
def test_s_b4_records_only_an_application_sends_are_fatal(record_type: int, feed: Feeder) -> None:
    with pytest.raises(RemoteProtocolError, match="only an application sends"):
        feed(ServerConnection(), wire.simple_get(1) + wire.rec(record_type, 1, b"x"))


def test_s_b1_a_bad_version_is_fatal_and_poisons_the_connection(feed: Feeder) -> None:
    conn = ServerConnection()
    conn.receive_data(wire.simple_get(1))
    with pytest.raises(RemoteProtocolError, match="version 2") as info:
        feed(conn, wire.header(wire.STDIN, 1, 0, version=2))
    assert info.value.request_id is None
    assert repr(info.value).startswith("RemoteProtocolError(")
    assert conn.should_close
    with pytest.raises(RemoteProtocolError, match="version 2"):
        conn.receive_data(wire.stdin(1))
    with pytest.raises(LocalProtocolError, match="dead"):
        conn.send_stdout(1, b"x")
    with pytest.raises(LocalProtocolError, match="dead"):
        conn.end_request(1)


def test_malformed_get_values_is_fatal(feed: Feeder) -> None:
    with pytest.raises(RemoteProtocolError, match="malformed GET_VALUES"):
        feed(ServerConnection(), wire.rec(wire.GET_VALUES, 0, b"\x05\x00ab"))


@pytest.mark.parametrize("body", [b"", bytes(7), bytes(9)])
def test_begin_request_body_must_be_eight_bytes(body: bytes, feed: Feeder) -> None:
    with pytest.raises(RemoteProtocolError, match=r"BEGIN_REQUEST .* not 8"):
        feed(ServerConnection(), wire.rec(wire.BEGIN_REQUEST, 1, body))


def test_a_second_begin_request_while_params_arrive_rejects_the_request(feed: Feeder) -> None:
    conn = ServerConnection()
    events = feed(conn, wire.begin(1, keep_conn=True) + wire.begin(1, keep_conn=True) + wire.params(1, []))
    assert len(events) == 1 and isinstance(events[0], RequestRejected)
    assert "second BEGIN_REQUEST for an active request id" in str(events[0].error)
    assert events[0].error is not None and events[0].error.request_id == 1
    assert conn.data_to_send() == wire.end_request(1)


def test_a_second_begin_request_for_an_announced_request_fails_it(feed: Feeder) -> None:
    conn = ServerConnection()
    conn.receive_data(wire.simple_get(1))
    events = feed(conn, wire.begin(1, wire.FILTER) + wire.params(1, []))
    assert len(events) == 1 and isinstance(events[0], RequestFailed)
    assert "second BEGIN_REQUEST" in str(events[0].error)
    assert conn.request_state(1) is RequestState.FAILED
    assert conn.data_to_send() == b""  # never behind the caller's back: it still owns request 1
    conn.end_request(1, 1)
    assert conn.active_requests == 0


def test_malformed_params_reject_the_request_with_a_clear_message(feed: Feeder) -> None:
    conn = ServerConnection()
    data = wire.begin(1, keep_conn=True) + wire.rec(wire.PARAMS, 1, b"\x04\x7fabc") + wire.rec(wire.PARAMS, 1)
    events = feed(conn, data)
    assert len(events) == 1 and isinstance(events[0], RequestRejected)
    assert "malformed PARAMS" in str(events[0].error)
    assert conn.data_to_send() == wire.end_request(1)
    assert feed(conn, wire.stdin(1)) == []  # the rest of the request is ignored


def test_max_params_bytes_rejects_the_request_as_overloaded(feed: Feeder) -> None:
    conn = ServerConnection(limits=ProtocolLimits(max_params_bytes=64))
    fits = wire.pair(b"N", b"v" * 60)  # 63 bytes
    events = feed(conn, wire.begin(1, keep_conn=True) + wire.params(1, [(b"N", b"v" * 60)]))
    assert len(fits) == 63 and isinstance(events[0], RequestStarted)
    conn.end_request(1)
    data = (
        wire.begin(2, keep_conn=True)
        + wire.rec(wire.PARAMS, 2, fits)
        + wire.rec(wire.PARAMS, 2, b"\x01\x00x")
    )
    events = feed(conn, data + wire.rec(wire.PARAMS, 2))
    assert events == [RequestRejected(2, ProtocolStatus.OVERLOADED, events[0].error)]  # type: ignore[attr-defined]
    assert "max_params_bytes (64)" in str(events[0].error)  # type: ignore[attr-defined]
    assert conn.data_to_send() == wire.end_request(2, 0, wire.OVERLOADED)
    assert conn.buffered_bytes == 0


def test_max_params_count_rejects_the_request_as_overloaded(feed: Feeder) -> None:
    conn = ServerConnection(limits=ProtocolLimits(max_params_count=3))
    events = feed(conn, wire.begin(1) + wire.params(1, [(b"A", b"")] * 4))
    assert isinstance(events[0], RequestRejected)
    assert events[0].protocol_status is ProtocolStatus.OVERLOADED
    assert "more than 3 name-value pairs" in str(events[0].error)


def test_max_requests_bounds_concurrent_requests_per_connection(feed: Feeder) -> None:
    conn = ServerConnection(ConnectionSettings(mpxs_conns=True), ProtocolLimits(max_requests=2))
    events = feed(conn, wire.begin(1) + wire.begin(2) + wire.begin(3))
    assert len(events) == 1 and isinstance(events[0], RequestRejected)
    assert events[0].request_id == 3 and events[0].protocol_status is ProtocolStatus.OVERLOADED
    assert "more than 2 concurrent requests" in str(events[0].error)
    assert conn.active_requests == 2


def test_buffered_bytes_counts_the_partial_record_and_pending_params() -> None:
    conn = ServerConnection()
    conn.receive_data(wire.begin(1) + wire.rec(wire.PARAMS, 1, wire.pair(b"A", b"b")) + b"\x01\x05")
    assert conn.buffered_bytes == 4 + 2  # the pair "A"="b", a 2-byte header start
    conn.receive_data(b"\x00\x01\x00\x00\x00\x00" + wire.rec(wire.PARAMS, 1))
    assert conn.buffered_bytes == 0


def test_settings_and_limits_validate_themselves() -> None:
    with pytest.raises(ValueError, match="max_conns"):
        ConnectionSettings(max_conns=0)
    with pytest.raises(ValueError, match="limit"):
        ProtocolLimits(max_requests=0)
    assert ProtocolLimits() == ProtocolLimits(
        max_params_bytes=1 << 20, max_params_count=1000, max_requests=32
    )
    assert ServerConnection().limits == ProtocolLimits()
