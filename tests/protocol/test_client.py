"""ClientConnection: request encoding, response decoding, its strictness, and a client/server pair."""

from __future__ import annotations

import pytest

from fcgiserve.protocol import (
    ClientConnection,
    ConnectionClosed,
    ConnectionSettings,
    Data,
    DataEnd,
    EndRequest,
    GetValuesResult,
    LocalProtocolError,
    ParamsComplete,
    ProtocolStatus,
    RecordReader,
    RemoteProtocolError,
    RequestStarted,
    Role,
    ServerConnection,
    Stderr,
    StderrEnd,
    StdinData,
    StdinEnd,
    Stdout,
    StdoutEnd,
    UnknownType,
)

from . import wire
from .conftest import Feeder

PARAMS = [(b"REQUEST_METHOD", b"POST"), (b"CONTENT_LENGTH", b"5")]


def begun(*request_ids: int) -> ClientConnection:
    client = ClientConnection()
    for request_id in request_ids:
        client.begin_request(request_id)
    return client


def test_client_encodes_requests_like_the_spec() -> None:
    client = ClientConnection()
    assert client.begin_request(1) == wire.begin(1)
    assert client.begin_request(2, Role.FILTER, keep_conn=True) == wire.begin(2, wire.FILTER, keep_conn=True)
    assert client.send_params(1, PARAMS) == wire.params(1, PARAMS)
    assert client.send_params(2, []) == wire.rec(wire.PARAMS, 2)
    assert client.send_stdin(1, b"hello") + client.send_stdin(1, b"") == wire.stdin(1, b"hello") + wire.stdin(
        1
    )
    assert client.send_data(2, b"file") + client.send_data(2, b"") == wire.rec(
        wire.DATA, 2, b"file"
    ) + wire.rec(wire.DATA, 2)
    assert client.abort_request(1) == wire.rec(wire.ABORT_REQUEST, 1)
    assert client.get_values(["FCGI_MAX_CONNS", "FCGI_MPXS_CONNS"]) == wire.get_values(
        b"FCGI_MAX_CONNS", b"FCGI_MPXS_CONNS"
    )
    assert client.active_requests == 2


def test_client_splits_params_over_65535_bytes() -> None:
    big = [(b"HTTP_COOKIE", b"c" * 70000)]
    records = RecordReader().feed(begun(1).send_params(1, big))
    assert [(record_type, request_id) for record_type, request_id, _ in records] == [(wire.PARAMS, 1)] * 3
    assert 0 < len(records[0][2]) <= 65535 and 0 < len(records[1][2]) <= 65535 and records[2][2] == b""
    assert records[0][2] + records[1][2] == wire.pairs(big)


def test_client_decodes_a_response(feed: Feeder) -> None:
    client = begun(1)
    data = (
        wire.rec(wire.STDOUT, 1, b"Status: 200 OK\r\n\r\n")
        + wire.rec(wire.STDERR, 1, b"warn")
        + wire.rec(wire.STDOUT, 1, b"body")
        + wire.rec(wire.STDOUT, 1)
        + wire.rec(wire.STDERR, 1)
        + wire.end_request(1, 7)
    )
    assert feed(client, data) == [
        Stdout(1, b"Status: 200 OK\r\n\r\n"),
        Stderr(1, b"warn"),
        Stdout(1, b"body"),
        StdoutEnd(1),
        StderrEnd(1),
        EndRequest(1, 7, ProtocolStatus.REQUEST_COMPLETE),
    ]
    assert client.active_requests == 0
    assert client.receive_data(b"") == []
    assert client.receive_data(b"") == []


def test_client_decodes_management_replies(feed: Feeder) -> None:
    data = wire.get_values_result([(b"FCGI_MAX_CONNS", b"10")]) + wire.unknown_type(42)
    assert feed(ClientConnection(), data) == [GetValuesResult({"FCGI_MAX_CONNS": "10"}), UnknownType(42)]


def test_client_accepts_a_rejection_without_stdout(feed: Feeder) -> None:
    events = feed(begun(3), wire.end_request(3, 0, wire.CANT_MPX_CONN))
    assert events == [EndRequest(3, 0, ProtocolStatus.CANT_MPX_CONN)]


def test_client_ignores_unknown_application_types(feed: Feeder) -> None:
    assert feed(begun(1), wire.rec(77, 1, b"?")) == []


@pytest.mark.parametrize(
    ("data", "message"),
    [
        pytest.param(wire.rec(wire.STDOUT, 2, b"x"), "inactive request id 2", id="unknown-id"),
        pytest.param(
            wire.rec(wire.STDOUT, 1) + wire.rec(wire.STDOUT, 1, b"x"), "after its STDOUT", id="stdout-2"
        ),
        pytest.param(
            wire.rec(wire.STDERR, 1) + wire.rec(wire.STDERR, 1, b"x"), "after its STDERR", id="stderr-2"
        ),
        pytest.param(wire.end_request(1), "before its STDOUT stream ended", id="end-early"),
        pytest.param(
            wire.rec(wire.STDOUT, 1) + wire.rec(wire.STDERR, 1, b"e") + wire.end_request(1),
            "before its STDERR stream ended",
            id="stderr-open",
        ),
        pytest.param(wire.rec(wire.END_REQUEST, 1, bytes(4)), "4-byte body", id="end-short"),
        pytest.param(wire.end_request(1, 0, 9), "unknown status 9", id="end-status"),
        pytest.param(wire.rec(wire.PARAMS, 1, b""), "from the application", id="wrong-direction"),
        pytest.param(wire.rec(wire.GET_VALUES, 0, b""), "unexpected management record", id="get-values"),
        pytest.param(
            wire.rec(wire.UNKNOWN_TYPE, 0, b"x"), "unexpected management record", id="unknown-short"
        ),
        pytest.param(
            wire.rec(wire.GET_VALUES_RESULT, 0, b"\x09\x00"), "malformed GET_VALUES_RESULT", id="gvr"
        ),
        pytest.param(wire.header(wire.STDOUT, 1, 0, version=3), "version 3", id="version"),
    ],
)
def test_client_treats_application_violations_as_fatal(data: bytes, message: str, feed: Feeder) -> None:
    client = begun(1)
    with pytest.raises(RemoteProtocolError, match=message) as info:
        feed(client, data)
    assert info.value.fatal
    with pytest.raises(RemoteProtocolError, match=message):
        client.receive_data(b"")
    with pytest.raises(LocalProtocolError, match="dead"):
        client.send_stdin(1, b"")
    with pytest.raises(LocalProtocolError, match="dead"):
        client.begin_request(9)


def test_client_eof_with_unfinished_requests_is_fatal() -> None:
    client = begun(1, 4)
    with pytest.raises(RemoteProtocolError, match=r"before ending \[1, 4\]"):
        client.receive_data(b"")


def test_client_receive_after_eof_is_a_local_error() -> None:
    client = ClientConnection()
    client.receive_data(b"")
    with pytest.raises(LocalProtocolError, match="after the peer closed"):
        client.receive_data(b"x")


def test_client_local_misuse_raises_local_errors() -> None:
    client = ClientConnection()
    for bad_id in (0, 65536):
        with pytest.raises(LocalProtocolError, match="outside"):
            client.begin_request(bad_id)
    with pytest.raises(LocalProtocolError, match="not active"):
        client.send_params(1, [])
    client.begin_request(1)
    with pytest.raises(LocalProtocolError, match="already active"):
        client.begin_request(1)
    with pytest.raises(LocalProtocolError, match="before its PARAMS"):
        client.send_stdin(1, b"x")
    client.send_params(1, [])
    with pytest.raises(LocalProtocolError, match="already sent"):
        client.send_params(1, [])
    client.send_stdin(1, b"")
    with pytest.raises(LocalProtocolError, match="after its STDIN stream ended"):
        client.send_stdin(1, b"more")


# -- our client encoder against ServerConnection, no sockets --------------------------------------------


def test_pair_responder_round_trip() -> None:
    client, server = ClientConnection(), ServerConnection()
    request = client.begin_request(1) + client.send_params(1, PARAMS) + client.send_stdin(1, b"hello")
    events = server.receive_data(request + client.send_stdin(1, b""))
    assert events == [
        RequestStarted(1, Role.RESPONDER, False),
        ParamsComplete(1, *wire.decoded(PARAMS)),
        StdinData(1, b"hello"),
        StdinEnd(1),
    ]
    response = server.send_stdout(1, b"Status: 201 Created\r\n\r\n") + server.send_stdout(1, b"x" * 100_000)
    response += server.send_stderr(1, b"note") + server.end_request(1, 0)
    replies = client.receive_data(response)
    stdout = b"".join(e.data for e in replies if isinstance(e, Stdout))
    assert stdout == b"Status: 201 Created\r\n\r\n" + b"x" * 100_000
    assert replies[-3:] == [StdoutEnd(1), StderrEnd(1), EndRequest(1, 0, ProtocolStatus.REQUEST_COMPLETE)]
    assert server.should_close and client.active_requests == 0


def test_pair_filter_and_authorizer() -> None:
    client, server = ClientConnection(), ServerConnection(ConnectionSettings(mpxs_conns=True))
    data = client.begin_request(1, Role.FILTER, keep_conn=True) + client.send_params(
        1, [(b"FCGI_DATA_LENGTH", b"3")]
    )
    data += client.begin_request(2, Role.AUTHORIZER, keep_conn=True) + client.send_params(2, [])
    data += client.send_stdin(1, b"") + client.send_data(1, b"abc") + client.send_data(1, b"")
    data += client.send_stdin(2, b"")
    events = server.receive_data(data)
    assert [e for e in events if e.request_id == 1][-2:] == [Data(1, b"abc"), DataEnd(1)]
    assert RequestStarted(2, Role.AUTHORIZER, True) in events
    back = client.receive_data(server.end_request(2) + server.send_stdout(1, b"ABC") + server.end_request(1))
    assert back == [
        StdoutEnd(2),
        EndRequest(2, 0, ProtocolStatus.REQUEST_COMPLETE),
        Stdout(1, b"ABC"),
        StdoutEnd(1),
        EndRequest(1, 0, ProtocolStatus.REQUEST_COMPLETE),
    ]
    assert not server.should_close


def test_pair_management_abort_and_rejection() -> None:
    client, server = ClientConnection(), ServerConnection(ConnectionSettings(max_conns=5, max_reqs=9))
    assert server.receive_data(client.get_values(["FCGI_MAX_REQS", "FCGI_MPXS_CONNS", "OTHER"])) == []
    assert client.receive_data(server.data_to_send()) == [
        GetValuesResult({"FCGI_MAX_REQS": "9", "FCGI_MPXS_CONNS": "0"})
    ]
    first = client.begin_request(1, keep_conn=True) + client.send_params(1, [])
    second = client.begin_request(2, keep_conn=True) + client.send_params(2, [])
    server.receive_data(first + second + client.abort_request(1))
    assert client.receive_data(server.data_to_send()) == [EndRequest(2, 0, ProtocolStatus.CANT_MPX_CONN)]
    assert server.receive_data(client.abort_request(1)) == []  # already aborted: ignored
    assert server.receive_data(b"") == [ConnectionClosed()]  # 1 was aborted already: no second abort
    assert client.receive_data(server.end_request(1)) == [
        StdoutEnd(1),
        EndRequest(1, 0, ProtocolStatus.REQUEST_COMPLETE),
    ]
