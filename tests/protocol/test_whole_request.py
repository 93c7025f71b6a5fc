"""``receive_data``'s hot path for a whole request in one read (``ServerConnection._receive_whole_request``).

It must be invisible: for any input, a connection that takes it answers exactly as one that reads every
record through the general path (events, errors, what it sends, its state, and every later call). And it
must really be taken for the reads web servers make, or the comparison proves nothing (S-F2, S-D5, S-B2).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fcgiserve.protocol import (
    ConnectionClosed,
    ConnectionSettings,
    Event,
    LocalProtocolError,
    ParamsComplete,
    ProtocolLimits,
    RemoteProtocolError,
    RequestAborted,
    RequestReceived,
    RequestStarted,
    RequestState,
    Role,
    ServerConnection,
    StdinData,
    StdinEnd,
)

from . import wire

NGINX_PARAMS = [
    (b"QUERY_STRING", b""),
    (b"REQUEST_METHOD", b"GET"),
    (b"CONTENT_TYPE", b""),
    (b"CONTENT_LENGTH", b""),
    (b"SCRIPT_NAME", b"/index.php"),
    (b"REQUEST_URI", b"/hello"),
    (b"HTTP_HOST", b"example.org"),
]


def general_only(conn: ServerConnection) -> ServerConnection:
    """``conn`` with the hot path switched off: every read goes record by record."""
    conn._receive_whole_request = lambda buf: None  # type: ignore[method-assign]
    return conn


def taken(conn: ServerConnection) -> list[bool]:
    """Spy on the hot path: one entry per call, True when it answered the read itself."""
    calls: list[bool] = []
    inner = conn._receive_whole_request

    def spy(buf: bytes) -> Any:
        result = inner(buf)
        calls.append(result is not None)
        return result

    conn._receive_whole_request = spy  # type: ignore[method-assign]
    return calls


# -- it is taken where it should be, and answers like the table says -----------------------------------


def test_a_get_as_nginx_writes_it_is_answered_by_the_hot_path() -> None:
    conn = ServerConnection()
    calls = taken(conn)
    stream = wire.begin(7, keep_conn=True) + wire.params(7, NGINX_PARAMS) + wire.stdin(7)
    events = conn.receive_data(memoryview(bytearray(stream)))  # the handler passes a view of its buffer
    assert calls == [True]
    assert events == [
        RequestStarted(7, Role.RESPONDER, True),
        ParamsComplete(7, *wire.decoded(NGINX_PARAMS)),
        StdinEnd(7),
    ]
    assert conn.request_state(7) is RequestState.INPUT_DONE
    assert conn.end_request(7) == wire.rec(wire.STDOUT, 7) + wire.end_request(7)
    assert not conn.should_close  # KEEP_CONN


@pytest.mark.parametrize(
    ("stream", "state", "body"),
    [
        # A POST whose body came in the same write, in two records, padded by a sender that pads oddly.
        (
            wire.begin(2)
            + wire.params(2, NGINX_PARAMS)
            + wire.rec(wire.STDIN, 2, b"a=1", 5)
            + wire.rec(wire.STDIN, 2, b"&b=2", 0)
            + wire.stdin(2),
            RequestState.INPUT_DONE,
            [b"a=1", b"&b=2"],
        ),
        # The body still to come: the request is the caller's, its STDIN open.
        (wire.begin(3) + wire.params(3, NGINX_PARAMS), RequestState.STDIN, []),
        (
            wire.begin(4) + wire.params(4, NGINX_PARAMS) + wire.stdin(4, b"part"),
            RequestState.STDIN,
            [b"part"],
        ),
        # PARAMS split over several records (Apache writes one per pair), and no params at all.
        (
            wire.begin(5)
            + b"".join(wire.rec(wire.PARAMS, 5, wire.pair(n, v)) for n, v in NGINX_PARAMS)
            + wire.rec(wire.PARAMS, 5)
            + wire.stdin(5),
            RequestState.INPUT_DONE,
            [],
        ),
        (wire.begin(6) + wire.rec(wire.PARAMS, 6) + wire.stdin(6), RequestState.INPUT_DONE, []),
    ],
    ids=["post-body", "stdin-open", "stdin-part", "params-per-pair", "no-params"],
)
def test_whole_requests_of_every_common_shape_take_the_hot_path(
    stream: bytes, state: RequestState, body: list[bytes]
) -> None:
    conn = ServerConnection()
    calls = taken(conn)
    events = conn.receive_data(stream)
    assert calls == [True]
    assert [e.data for e in events if isinstance(e, StdinData)] == body
    assert conn.request_state(events[0].request_id) is state
    assert events == general_only(ServerConnection()).receive_data(stream)


WHOLE_OR_NOT = ["filter", "unknown-role", "get-values", "abort", "stdin-after-end", "cut", "other-id"]
WHOLE_OR_NOT += ["bad-pairs", "version"]


@pytest.mark.parametrize(
    "stream",
    [
        wire.begin(1, wire.FILTER) + wire.params(1, NGINX_PARAMS) + wire.stdin(1),  # DATA follows: general
        wire.begin(1, 9) + wire.params(1, NGINX_PARAMS),  # unknown role: answered UNKNOWN_ROLE
        wire.simple_get(1) + wire.get_values(b"FCGI_MPXS_CONNS"),  # a management record after it
        wire.simple_get(1) + wire.rec(wire.ABORT_REQUEST, 1),  # an abort after it
        wire.simple_get(1) + wire.stdin(1),  # a record after STDIN ended (ignored... by the table)
        wire.simple_get(1)[:-3],  # the last record incomplete
        wire.begin(1) + wire.params(1, NGINX_PARAMS)[:-8] + wire.rec(wire.PARAMS, 2),  # another id
        wire.begin(1) + wire.rec(wire.PARAMS, 1, b"\x05\x01ab") + wire.rec(wire.PARAMS, 1),  # malformed
        wire.header(wire.BEGIN_REQUEST, 1, 8, version=2) + bytes(8) + wire.params(1, NGINX_PARAMS),
    ],
    ids=WHOLE_OR_NOT,
)
def test_anything_else_goes_the_general_way_and_is_answered_the_same(stream: bytes) -> None:
    conn = ServerConnection()
    calls = taken(conn)
    assert run(conn, [stream]) == run(general_only(ServerConnection()), [stream])
    assert calls == [False]


def test_limits_are_enforced_as_on_the_general_path() -> None:
    limits = ProtocolLimits(max_params_bytes=40, max_params_count=3)
    too_big = wire.begin(1) + wire.params(1, [(b"A" * 30, b"B" * 30)]) + wire.stdin(1)
    too_many = wire.begin(2) + wire.params(2, [(b"N%d" % i, b"") for i in range(4)]) + wire.stdin(2)
    for stream in (too_big, too_many):
        hot = run(ServerConnection(limits=limits), [stream])
        assert hot == run(general_only(ServerConnection(limits=limits)), [stream])
        assert hot[0][0] == "events" and "RequestRejected" in repr(hot[0][1])


def test_not_taken_while_a_request_is_active_or_a_record_is_half_read() -> None:
    conn = ServerConnection(ConnectionSettings(mpxs_conns=True))
    calls = taken(conn)
    conn.receive_data(wire.simple_get(1))
    conn.receive_data(wire.simple_get(2))  # request 1 still runs: the general path multiplexes
    conn.end_request(1)
    conn.end_request(2)
    second = wire.simple_get(3)
    conn.receive_data(second[:5])  # asked, but a header's worth is no request
    conn.receive_data(second[5:])  # not asked: the general path holds the half-read record
    assert calls == [True, False]


def test_whole_requests_come_as_one_event_when_the_caller_asks() -> None:
    stream = (
        wire.begin(9, keep_conn=True) + wire.params(9, NGINX_PARAMS) + wire.stdin(9, b"x=1") + wire.stdin(9)
    )
    params, pairs = wire.decoded(NGINX_PARAMS)
    whole = ServerConnection(whole_requests=True)
    assert whole.receive_data(stream) == [
        RequestReceived(9, Role.RESPONDER, True, params, pairs, (b"x=1",), True)
    ]
    assert whole.receive_data(b"") == [
        RequestAborted(9),
        ConnectionClosed(),
    ]  # the caller's, as after RequestStarted
    open_stdin = ServerConnection(whole_requests=True)
    events = open_stdin.receive_data(wire.begin(2) + wire.params(2, NGINX_PARAMS))
    assert events == [RequestReceived(2, Role.RESPONDER, False, params, pairs, (), False)]
    assert open_stdin.receive_data(wire.stdin(2, b"late") + wire.stdin(2)) == [
        StdinData(2, b"late"),
        StdinEnd(2),
    ]
    with pytest.raises(ValueError, match="outside"):
        RequestReceived(0, Role.RESPONDER, True, {}, None, (), True)


def expanded(events: list[Event]) -> list[Event]:
    """``RequestReceived`` spelled out as the events it stands for."""
    out: list[Event] = []
    for event in events:
        if isinstance(event, RequestReceived):
            rid = event.request_id
            out += [
                RequestStarted(rid, event.role, event.keep_conn),
                ParamsComplete(rid, event.params, event.pairs),
            ]
            out += [StdinData(rid, chunk) for chunk in event.stdin]
            out += [StdinEnd(rid)] if event.stdin_ended else []
        else:
            out.append(event)
    return out


# -- the two paths agree on any input ------------------------------------------------------------------


def run(conn: ServerConnection, chunks: list[bytes], end_ids: bool = True) -> list[tuple[str, Any]]:
    """Everything observable about ``conn`` while it reads ``chunks`` (and ends what it was given)."""
    seen: list[tuple[str, Any]] = []
    owned: set[int] = set()
    for chunk in chunks:
        try:
            events = expanded(conn.receive_data(chunk))
        except RemoteProtocolError as error:
            seen.append(("error", (error.msg, error.request_id)))
            break
        seen.append(("events", repr(events)))  # repr: the errors some events carry compare by identity
        seen.append(("sent", conn.data_to_send()))
        owned |= {e.request_id for e in events if isinstance(e, RequestStarted)}
        seen.append(("state", (conn.active_requests, conn.buffered_bytes, conn.should_close, sorted(owned))))
        seen.append(("states", [conn.request_state(rid) for rid in range(4)]))
    if end_ids:
        for request_id in sorted(owned):
            seen.append(("end", attempt(lambda rid=request_id: conn.end_request(rid, 3))))
        seen.append(("after", (conn.active_requests, conn.should_close)))
    return seen


def attempt(call: Callable[[], bytes]) -> Any:
    try:
        return call()
    except LocalProtocolError as error:
        return ("local error", str(error))


PAIRS = st.lists(st.tuples(st.binary(max_size=12), st.binary(max_size=140)), max_size=5)


@st.composite
def near_requests(draw: st.DrawFn) -> list[bytes]:
    """A request as web servers write it, often bent: odd roles, ids, padding, splits, limits, trailing
    records, broken pairs, cuts. Returned as the chunks it arrives in (usually one)."""
    rid = draw(st.integers(0, 3))
    role = draw(st.sampled_from([wire.RESPONDER, wire.RESPONDER, wire.AUTHORIZER, wire.FILTER, 0, 7]))
    pad = draw(st.sampled_from([None, 0, 3, 255]))
    params_id = draw(st.sampled_from([rid, rid, rid, (rid + 1) % 4]))
    body = wire.pairs(draw(PAIRS))
    if draw(st.integers(0, 9)) == 0:
        body += draw(st.binary(min_size=1, max_size=6))  # a truncated or garbage pair
    cut = draw(st.integers(0, len(body)))
    records = [wire.begin(rid, role, draw(st.booleans()))]
    records += [wire.rec(wire.PARAMS, params_id, part, pad) for part in (body[:cut], body[cut:]) if part]
    records.append(wire.rec(wire.PARAMS, params_id, b"", pad))
    for chunk in draw(st.lists(st.binary(min_size=1, max_size=30), max_size=2)):
        records.append(wire.rec(wire.STDIN, rid, chunk, pad))
    if draw(st.booleans()):
        records.append(wire.stdin(rid))
    trailing = [
        b"",
        b"",
        b"",
        wire.stdin(rid),
        wire.rec(wire.ABORT_REQUEST, rid),
        wire.rec(wire.DATA, rid, b"d"),
    ]
    trailing += [
        wire.get_values(b"FCGI_MAX_REQS"),
        wire.rec(wire.STDOUT, rid, b"x"),
        wire.simple_get(2),
        b"\x01",
    ]
    extra = draw(st.sampled_from(trailing))
    stream = b"".join(records) + extra
    if draw(st.integers(0, 4)) == 0:
        stream = stream[: draw(st.integers(0, len(stream)))]
    split = draw(st.integers(0, len(stream)))
    chunks = [stream] if draw(st.booleans()) else [stream[:split], stream[split:]]
    return [chunk for chunk in chunks if chunk] + draw(st.sampled_from([[], [wire.simple_get(3)], [b""]]))


LIMITS = st.sampled_from(
    [ProtocolLimits(), ProtocolLimits(max_params_bytes=60, max_params_count=2, max_requests=2)]
)


@settings(max_examples=600, deadline=None)
@given(near_requests(), LIMITS, st.booleans(), st.booleans())
def test_the_hot_path_answers_exactly_like_the_general_path(
    chunks: list[bytes], limits: ProtocolLimits, multiplexed: bool, whole_requests: bool
) -> None:
    """Also with ``whole_requests``: its one event says what the general path's events say."""
    conn_settings = ConnectionSettings(max_reqs=4, mpxs_conns=multiplexed)
    hot = ServerConnection(conn_settings, limits, whole_requests=whole_requests)
    general = general_only(ServerConnection(conn_settings, limits))
    assert run(hot, chunks) == run(general, chunks)
