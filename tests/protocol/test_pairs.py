"""S-C name-value pairs: the four length layouts, binary safety, pairs split across records, duplicates."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fcgiserve.protocol import (
    LocalProtocolError,
    ParamsComplete,
    RemoteProtocolError,
    ServerConnection,
    decode_pairs,
    decode_params,
    encode_pairs,
)
from fcgiserve.protocol.records import PairLimitError

from . import wire
from .conftest import Feeder

LAYOUTS = [
    pytest.param(b"AB", b"xyz", b"\x02\x03ABxyz", id="1+1"),
    pytest.param(b"N", b"v" * 128, b"\x01\x80\x00\x00\x80N" + b"v" * 128, id="1+4"),
    pytest.param(b"n" * 200, b"", b"\x80\x00\x00\xc8\x00" + b"n" * 200, id="4+1"),
    pytest.param(
        b"n" * 128, b"v" * 70000, b"\x80\x00\x00\x80\x80\x01\x11\x70" + b"n" * 128 + b"v" * 70000, id="4+4"
    ),
    pytest.param(b"K" * 127, b"V" * 127, b"\x7f\x7f" + b"K" * 127 + b"V" * 127, id="127-is-still-1-byte"),
]


@pytest.mark.parametrize(("name", "value", "encoded"), LAYOUTS)
def test_s_c1_four_length_layouts_encode(name: bytes, value: bytes, encoded: bytes) -> None:
    assert encode_pairs([(name, value)]) == encoded


@pytest.mark.parametrize(("name", "value", "encoded"), LAYOUTS)
def test_s_c1_four_length_layouts_decode(name: bytes, value: bytes, encoded: bytes) -> None:
    assert decode_pairs(encoded) == [(name, value)]
    assert decode_pairs(bytearray(encoded)) == [(name, value)]


@pytest.mark.parametrize(("name", "value", "encoded"), LAYOUTS)
def test_s_c1_decode_params_reads_the_four_layouts_as_latin1_text(
    name: bytes, value: bytes, encoded: bytes
) -> None:
    expected = ({name.decode("latin-1"): value.decode("latin-1")}, None)
    assert decode_params(encoded) == expected
    assert decode_params(bytearray(encoded)) == expected
    assert decode_params(memoryview(encoded)) == expected


def test_s_c2_decode_params_keeps_every_byte_as_one_code_point() -> None:
    binary = bytes(range(256))
    params, pairs = decode_params(encode_pairs([(b"\x00name\xff", binary), (b"", b"")]))
    assert params == {"\x00name\xff": binary.decode("latin-1"), "": ""} and pairs is None
    assert params["\x00name\xff"].encode("latin-1") == binary


def test_s_c4_decode_params_lists_every_pair_only_when_a_name_repeats() -> None:
    items = [(b"HTTP_COOKIE", b"a=1"), (b"X", b"1"), (b"HTTP_COOKIE", b"b=2")]
    params, pairs = decode_params(wire.pairs(items))
    assert params == {"HTTP_COOKIE": "b=2", "X": "1"}
    assert pairs == [("HTTP_COOKIE", "a=1"), ("X", "1"), ("HTTP_COOKIE", "b=2")]


def test_s_c2_values_are_binary_safe() -> None:
    binary = bytes(range(256))
    encoded = encode_pairs([(b"\x00name\xff", binary), (b"", b"")])
    assert decode_pairs(encoded) == [(b"\x00name\xff", binary), (b"", b"")]


def test_s_c4_duplicate_names_are_kept_in_order() -> None:
    items = [(b"HTTP_COOKIE", b"a=1"), (b"X", b"1"), (b"HTTP_COOKIE", b"b=2")]
    assert decode_pairs(wire.pairs(items)) == items


@pytest.mark.parametrize(
    "encoded",
    [
        pytest.param(b"\x05", id="value-length-missing"),
        pytest.param(b"\x80\x00\x00", id="4-byte-name-length-cut"),
        pytest.param(b"\x01\x80\x00", id="4-byte-value-length-cut"),
        pytest.param(b"\x02\x02ab", id="value-cut"),
        pytest.param(b"\x7f\x00abc", id="name-overruns"),
        pytest.param(wire.pair(b"ok", b"1") + b"\x01\x7fnv", id="second-pair-overruns"),
        pytest.param(b"\x80\x00\x00\x01\x90\x00\x00\x00n", id="huge-declared-value"),
    ],
)
def test_a_pair_whose_lengths_overrun_the_stream_is_a_remote_error(encoded: bytes) -> None:
    with pytest.raises(RemoteProtocolError, match="name-value") as pairs_error:
        decode_pairs(encoded)
    with pytest.raises(RemoteProtocolError, match="name-value") as params_error:
        decode_params(encoded)
    assert str(params_error.value) == str(pairs_error.value)  # one message, whichever decoder


def test_decode_pairs_enforces_a_maximum_count() -> None:
    encoded = wire.pairs([(b"a", b"")] * 5)
    assert len(decode_pairs(encoded, max_count=5)) == 5
    with pytest.raises(PairLimitError, match="more than 4"):
        decode_pairs(encoded, max_count=4)
    assert len(decode_params(wire.pairs([(b"a", b""), (b"b", b"")] * 2), max_count=4)[0]) == 2
    assert decode_params(encoded, max_count=5) == ({"a": ""}, [("a", "")] * 5)
    with pytest.raises(PairLimitError, match="more than 4"):
        decode_params(encoded, max_count=4)


def test_encode_pairs_refuses_text_and_oversized_lengths() -> None:
    with pytest.raises(LocalProtocolError, match="bytes"):
        encode_pairs([("name", b"v")])  # type: ignore[list-item]

    class Huge(bytes):
        def __len__(self) -> int:
            return 0x80000000

    with pytest.raises(LocalProtocolError, match="31-bit"):
        encode_pairs([(Huge(), b"")])


NAMES = st.binary(max_size=300) | st.sampled_from([b"a" * 127, b"a" * 128, b"a" * 129])
VALUES = st.binary(max_size=300) | st.sampled_from([b"v" * 127, b"v" * 128, b"v" * 65536])


@given(st.lists(st.tuples(NAMES, VALUES), max_size=8))
def test_s_c_pairs_round_trip_for_arbitrary_names_and_values(items: list[tuple[bytes, bytes]]) -> None:
    encoded = encode_pairs(items)
    assert encoded == wire.pairs(items)
    assert decode_pairs(encoded) == items
    assert decode_params(encoded) == wire.decoded(items)


@given(st.binary(max_size=64), st.none() | st.integers(1, 8))
def test_decode_params_agrees_with_decode_pairs_on_any_input(data: bytes, max_count: int | None) -> None:
    """The one-pass text decoder accepts, refuses and reports exactly what the byte-pair decoder does."""
    try:
        expected = wire.decoded(decode_pairs(data, max_count))
    except RemoteProtocolError as error:
        with pytest.raises(type(error)) as raised:
            decode_params(data, max_count)
        assert str(raised.value) == str(error)
    else:
        assert decode_params(data, max_count) == expected


@given(
    st.lists(st.tuples(NAMES, VALUES), min_size=1, max_size=4), st.lists(st.integers(0, 1 << 20), max_size=5)
)
def test_s_c3_a_pair_may_be_split_across_params_records_at_any_byte(
    items: list[tuple[bytes, bytes]], raw_cuts: list[int]
) -> None:
    body = wire.pairs(items)
    cuts = sorted(cut % (len(body) + 1) for cut in raw_cuts)
    pieces = [body[a:b] for a, b in zip([0, *cuts], [*cuts, len(body)], strict=True)]
    pieces = [p[i : i + 65535] for p in pieces for i in range(0, len(p), 65535)]  # a record holds <= 65535
    stream = (
        wire.begin(1) + b"".join(wire.rec(wire.PARAMS, 1, p) for p in pieces if p) + wire.rec(wire.PARAMS, 1)
    )
    events = ServerConnection().receive_data(stream)
    assert events[1] == ParamsComplete(1, *wire.decoded(items))


def test_s_c3_split_pair_fed_every_way(feed: Feeder) -> None:
    body = wire.pair(b"SCRIPT_NAME", b"/app") + wire.pair(b"Q" * 130, b"z")
    stream = (
        wire.begin(1)
        + wire.rec(wire.PARAMS, 1, body[:1])
        + wire.rec(wire.PARAMS, 1, body[1:14])
        + wire.rec(wire.PARAMS, 1, body[14:17])
        + wire.rec(wire.PARAMS, 1, body[17:])
        + wire.rec(wire.PARAMS, 1)
    )
    events = feed(ServerConnection(), stream)
    assert events[1] == ParamsComplete(1, *wire.decoded([(b"SCRIPT_NAME", b"/app"), (b"Q" * 130, b"z")]))
