"""Admission: a hold pauses accepting until its time, and the listeners are armed again when it ends."""

from __future__ import annotations

import socket
import time
from typing import Any

from fcgiserve.pools import admission
from fcgiserve.pools.admission import Admission
from fcgiserve.pools.crew import Crew
from fcgiserve.pools.watchlist import AcceptFailed, WatchList
from tests.pools.lineproto import tcp_listener


def test_an_accept_out_of_file_descriptors_holds_accepting_then_resumes(monkeypatch: Any) -> None:
    """EMFILE (AcceptFailed): no retry at once (it would spin), the control thread is woken to look again
    at the hold's end, and then the listeners are armed again and a connection waiting is taken."""
    woken: list[bool] = []
    with tcp_listener() as listener:
        watch = WatchList([listener])
        gate = Admission(
            watch,
            Crew(1, 1, 1, 1.0),
            max_connections=0,
            accept_while_busy=True,
            wake=lambda: woken.append(True),
        )
        gate.update()
        client = socket.create_connection(listener.getsockname())

        def out_of_fds(sock: socket.socket) -> None:
            raise AcceptFailed("[Errno 24] Too many open files")

        monkeypatch.setattr(admission, "accept", out_of_fds)
        started = time.monotonic()
        assert gate.take(listener) is None
        assert woken == [True] and gate.retry_at >= started + admission._ACCEPT_RETRY_DELAY
        assert not gate.allowed()
        assert gate.retry_if_due(gate.retry_at - 0.01) is False
        monkeypatch.undo()
        assert gate.retry_if_due(gate.retry_at) is True
        assert gate.allowed() and gate.retry_at == 0.0
        assert [fd for fd, _ in watch.poll(1.0, 4)] == [listener.fileno()]  # armed again: it reports
        taken = gate.take(listener)
        assert isinstance(taken, list) and len(taken) == 1 and gate.open == 1
        taken[0][0].close()
        client.close()
        watch.close()
