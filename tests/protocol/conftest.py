"""Feeding helpers: every decode case goes in whole, one byte at a time, and followed by trailing data."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from fcgiserve.protocol import ClientConnection, ServerConnection

from . import wire

# A record of an unknown application type (ignored by both sides) cut inside its header: trailing bytes
# that must neither produce events nor raise, completed afterwards so the connection stays usable.
TRAILING = wire.rec(99, 1, b"trailing")
CUT = 5


def feed_whole(conn: ServerConnection | ClientConnection, data: bytes) -> list[object]:
    return list(conn.receive_data(data))


def feed_bytewise(conn: ServerConnection | ClientConnection, data: bytes) -> list[object]:
    events: list[object] = []
    for i in range(len(data)):
        events += conn.receive_data(data[i : i + 1])
    return events


def feed_with_trailing(conn: ServerConnection | ClientConnection, data: bytes) -> list[object]:
    events = list(conn.receive_data(data + TRAILING[:CUT]))
    assert conn.receive_data(TRAILING[CUT:]) == []
    return events


FEEDERS = [feed_whole, feed_bytewise, feed_with_trailing]
Feeder = Callable[[ServerConnection | ClientConnection, bytes], list[object]]


@pytest.fixture(params=FEEDERS, ids=["whole", "bytewise", "trailing"])
def feed(request: pytest.FixtureRequest) -> Feeder:
    feeder: Feeder = request.param
    return feeder
