"""Which factories a prefork child wraps to show threads in serve() as busy (pools/child.py, ``tracked``)."""

from __future__ import annotations

from fcgiserve.handler import ConnectionFactory, HandlerOptions
from fcgiserve.pools.child import tracked
from fcgiserve.pools.scoreboard import Scoreboard
from fcgiserve.scgi_handler import SCGIConnectionFactory
from tests.pools.lineproto import LineFactory


def _hello(environ: object, start_response: object) -> list[bytes]:
    return [b""]


def test_the_fastcgi_factory_is_not_wrapped_and_waiting_factories_are() -> None:
    board = Scoreboard(slots=1, lanes=1)
    try:
        writer = board.writer(0)
        fastcgi = ConnectionFactory(_hello, HandlerOptions())
        assert tracked(fastcgi, writer) is fastcgi  # its serve() parks what is incomplete
        line = LineFactory()  # its serve() blocks in recv until a line comes
        assert tracked(line, writer) is not line
        scgi = SCGIConnectionFactory(_hello, HandlerOptions())  # reads the whole header in serve()
        assert tracked(scgi, writer) is not scgi
    finally:
        board.close()
