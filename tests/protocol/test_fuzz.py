"""Property tests: any split of a valid stream gives the same events; arbitrary input stays bounded."""

from __future__ import annotations

from dataclasses import dataclass
from itertools import pairwise

from hypothesis import given, settings
from hypothesis import strategies as st

from fcgiserve.protocol import (
    ConnectionSettings,
    Data,
    DataEnd,
    Event,
    ParamsComplete,
    ProtocolLimits,
    RemoteProtocolError,
    RequestStarted,
    Role,
    ServerConnection,
    StdinData,
    StdinEnd,
)
from fcgiserve.protocol.records import MAX_RECORD_LENGTH

from . import wire


@dataclass
class RequestSpec:
    request_id: int
    role: int
    keep_conn: bool
    params: list[tuple[bytes, bytes]]
    stdin: list[bytes]
    data: list[bytes]
    params_cuts: list[int]
    padding: int


REQUEST = st.builds(
    RequestSpec,
    request_id=st.integers(1, 65535),
    role=st.sampled_from([wire.RESPONDER, wire.AUTHORIZER, wire.FILTER]),
    keep_conn=st.booleans(),
    params=st.lists(st.tuples(st.binary(max_size=140), st.binary(max_size=200)), max_size=6),
    stdin=st.lists(st.binary(min_size=1, max_size=50), max_size=3),
    data=st.lists(st.binary(min_size=1, max_size=50), max_size=3),
    params_cuts=st.lists(st.integers(0, 2000), max_size=4),
    padding=st.integers(0, 255),
)


def request_records(spec: RequestSpec) -> list[bytes]:
    rid, pad = spec.request_id, spec.padding
    body = wire.pairs(spec.params)
    cuts = sorted({c % (len(body) + 1) for c in spec.params_cuts} | {0, len(body)})
    records = [wire.begin(rid, spec.role, spec.keep_conn)]
    records += [wire.rec(wire.PARAMS, rid, body[a:b], pad) for a, b in pairwise(cuts) if b > a]
    records.append(wire.rec(wire.PARAMS, rid, b"", pad))
    records += [wire.rec(wire.STDIN, rid, chunk, pad) for chunk in spec.stdin] + [wire.stdin(rid)]
    if spec.role == wire.FILTER:
        records += [wire.rec(wire.DATA, rid, chunk, pad) for chunk in spec.data] + [wire.rec(wire.DATA, rid)]
    return records


def expected_events(spec: RequestSpec) -> list[Event]:
    rid = spec.request_id
    events: list[Event] = [
        RequestStarted(rid, Role(spec.role), spec.keep_conn),
        ParamsComplete(rid, *wire.decoded(spec.params)),
    ]
    events += [StdinData(rid, chunk) for chunk in spec.stdin] + [StdinEnd(rid)]
    if spec.role == wire.FILTER:
        events += [Data(rid, chunk) for chunk in spec.data] + [DataEnd(rid)]
    return events


@st.composite
def valid_streams(draw: st.DrawFn) -> tuple[bytes, list[RequestSpec]]:
    """Several multiplexed requests, their records interleaved at random, with GET_VALUES in between."""
    specs = draw(st.lists(REQUEST, min_size=1, max_size=3, unique_by=lambda s: s.request_id))
    queues = [request_records(spec) for spec in specs]
    records: list[bytes] = []
    while any(queues):
        queue = draw(st.sampled_from([q for q in queues if q]))
        records.append(queue.pop(0))
        if draw(st.integers(0, 9)) == 0:
            records.append(wire.get_values(b"FCGI_MPXS_CONNS"))
    return b"".join(records), specs


MPX = ConnectionSettings(max_conns=2, max_reqs=8, mpxs_conns=True)


@settings(max_examples=200, deadline=None)
@given(valid_streams(), st.lists(st.integers(0, 1 << 16), max_size=12))
def test_splitting_a_valid_stream_anywhere_gives_identical_events(
    stream_and_specs: tuple[bytes, list[RequestSpec]], raw_cuts: list[int]
) -> None:
    stream, specs = stream_and_specs
    whole = ServerConnection(MPX)
    whole_events = whole.receive_data(stream)
    for spec in specs:
        assert [e for e in whole_events if e.request_id == spec.request_id] == expected_events(spec)

    cuts = sorted({c % (len(stream) + 1) for c in raw_cuts} | {0, len(stream)})
    split = ServerConnection(MPX)
    split_events: list[Event] = []
    for a, b in pairwise(cuts):
        if b > a:
            split_events += split.receive_data(stream[a:b])
    assert split_events == whole_events
    assert split.data_to_send() == whole.data_to_send()


LIMITS = ProtocolLimits(max_params_bytes=64, max_params_count=4, max_requests=2)
BOUND = MAX_RECORD_LENGTH + LIMITS.max_params_bytes * LIMITS.max_requests

SOUP_RECORD = st.one_of(
    st.builds(
        wire.rec,
        record_type=st.integers(0, 13),
        request_id=st.integers(0, 3),
        content=st.binary(max_size=40) | st.sampled_from([b"", bytes(8), b"\x00\x01\x01" + bytes(5)]),
        padding=st.integers(0, 12),
    ),
    st.builds(wire.begin, st.integers(1, 3), st.integers(0, 4), st.booleans()),
    st.builds(lambda rid, body: wire.rec(wire.PARAMS, rid, body), st.integers(1, 3), st.binary(max_size=40)),
    st.binary(max_size=12),  # raw junk, often a bad version
)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(SOUP_RECORD, max_size=20),
    st.lists(st.integers(1, 64), min_size=1, max_size=20),
    st.booleans(),
    st.booleans(),
)
def test_arbitrary_input_raises_only_remote_errors_and_stays_within_limits(
    records: list[bytes], chunk_sizes: list[int], multiplexed: bool, caller_ends: bool
) -> None:
    conn = ServerConnection(ConnectionSettings(mpxs_conns=multiplexed), LIMITS)
    data = b"".join(records)
    pos = 0
    owned: set[int] = set()
    try:
        for size in chunk_sizes * (len(data) // sum(chunk_sizes) + 1):
            if pos >= len(data):
                break
            events = conn.receive_data(data[pos : pos + size])
            pos += size
            conn.data_to_send()
            owned |= {e.request_id for e in events if isinstance(e, RequestStarted)}
            assert conn.buffered_bytes <= BOUND
            assert conn.active_requests <= LIMITS.max_requests
            if caller_ends:
                for request_id in sorted(owned):
                    conn.end_request(request_id)
                owned.clear()
        conn.receive_data(b"")
    except RemoteProtocolError as error:
        assert error.fatal
        assert conn.should_close


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300))
def test_arbitrary_bytes_only_ever_raise_remote_protocol_errors(data: bytes) -> None:
    conn = ServerConnection(limits=LIMITS)
    try:
        conn.receive_data(data)
    except RemoteProtocolError:
        return
    assert conn.buffered_bytes <= BOUND
