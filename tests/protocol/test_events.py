"""Events validate themselves and stay immutable."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import pytest

from fcgiserve.protocol import (
    ConnectionClosed,
    Data,
    DataEnd,
    EndRequest,
    Event,
    ParamsComplete,
    ProtocolStatus,
    RemoteProtocolError,
    RequestAborted,
    RequestFailed,
    RequestRejected,
    RequestStarted,
    Role,
    Stderr,
    StderrEnd,
    StdinData,
    StdinEnd,
    Stdout,
    StdoutEnd,
)

REQUEST_EVENTS: list[Callable[[int], object]] = [
    lambda rid: RequestStarted(rid, Role.RESPONDER, False),
    lambda rid: ParamsComplete(rid, {}),
    lambda rid: StdinData(rid, b"x"),
    lambda rid: StdinEnd(rid),
    lambda rid: Data(rid, b"x"),
    lambda rid: DataEnd(rid),
    lambda rid: RequestAborted(rid),
    lambda rid: RequestFailed(rid, RemoteProtocolError("bad", rid)),
    lambda rid: RequestRejected(rid, ProtocolStatus.OVERLOADED, None),
    lambda rid: Stdout(rid, b"x"),
    lambda rid: StdoutEnd(rid),
    lambda rid: Stderr(rid, b"x"),
    lambda rid: StderrEnd(rid),
    lambda rid: EndRequest(rid, 0, ProtocolStatus.REQUEST_COMPLETE),
]


@pytest.mark.parametrize("make", REQUEST_EVENTS)
@pytest.mark.parametrize("bad_id", [0, -1, 65536])
def test_request_events_refuse_ids_outside_1_to_65535(make: Callable[[int], object], bad_id: int) -> None:
    with pytest.raises(ValueError, match=r"outside 1\.\.65535"):
        make(bad_id)


@pytest.mark.parametrize("make", REQUEST_EVENTS)
def test_events_are_frozen_and_slotted(make: Callable[[int], object]) -> None:
    event = make(65535)
    assert not hasattr(event, "__dict__")
    with pytest.raises(dataclasses.FrozenInstanceError):
        event.request_id = 2  # type: ignore[attr-defined]


def test_stream_data_events_carry_at_least_one_byte() -> None:
    with pytest.raises(ValueError, match="StdinEnd"):
        StdinData(1, b"")
    with pytest.raises(ValueError, match="DataEnd"):
        Data(1, b"")


def test_connection_closed_belongs_to_the_connection() -> None:
    assert ConnectionClosed().request_id == 0
    assert isinstance(ConnectionClosed(), Event)
    with pytest.raises(ValueError, match="request_id must be 0"):
        ConnectionClosed(3)
