"""The hand-off channel (pools/handoff.py): a kept-alive connection passed between processes, for real.

The test process plays the prefork master: it holds both ends of the channel and forks the children.
"""

from __future__ import annotations

import os
import select
import socket

from fcgiserve.pools.handoff import (
    KEPT_FDS_ENV,
    HandoffChannel,
    adopt_kept,
    keep_across_exec,
    receive_connection,
)


def _fork(body: object) -> int:
    pid = os.fork()
    if pid == 0:
        status = 1
        try:
            body()  # type: ignore[operator]
            status = 0
        finally:
            os._exit(status)
    return pid


def _exit_status(pid: int) -> int:
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


def test_a_connection_outlives_the_child_that_gave_it_and_reaches_the_next_with_its_unread_bytes() -> None:
    channel = HandoffChannel()
    peer, conn = socket.socketpair()  # peer: the web server's end; conn: the kept-alive connection
    peer.settimeout(5)
    try:
        # The first child holds the connection, hands it over and exits.
        assert _exit_status(_fork(lambda: channel.give(conn))) == 0
        conn.close()  # the master never held it: only the channel does now
        # The web server sends its next request while no child holds the connection.
        peer.sendall(b"next request")

        def take_and_answer() -> None:
            assert select.select([channel.take_end], [], [], 5)[0]
            taken = receive_connection(channel.take_end)
            assert taken is not None
            sock, _peer = taken
            sock.settimeout(5)
            sock.sendall(b"answer to " + sock.recv(100))
            sock.close()

        assert _exit_status(_fork(take_and_answer)) == 0
        assert peer.recv(100) == b"answer to next request"
        assert peer.recv(100) == b""  # the taker closed it: no process holds it any more
    finally:
        peer.close()
        channel.close()


def test_only_one_process_takes_each_connection() -> None:
    channel = HandoffChannel()
    peer, conn = socket.socketpair()
    try:
        channel.give(conn)
        taken = receive_connection(channel.take_end)
        assert taken is not None
        taken[0].close()
        assert receive_connection(channel.take_end) is None  # EAGAIN: a sibling was first
    finally:
        peer.close()
        channel.close()


def test_kept_connections_are_named_for_the_next_image_and_adopted_once() -> None:
    peer, conn = socket.socketpair()
    try:
        env = keep_across_exec([conn])
        assert conn.get_inheritable()
        environ = dict(env)
        adopted = adopt_kept(environ)
        assert KEPT_FDS_ENV not in environ  # processes the application starts do not inherit it
        assert [sock.fileno() for sock, _peer in adopted] == [conn.fileno()]
        assert not adopted[0][0].get_inheritable()
        assert adopt_kept(environ) == []
        conn.detach()  # the adopted socket object owns the fd now
        adopted[0][0].sendall(b"x")
        assert peer.recv(1) == b"x"
        adopted[0][0].close()
    finally:
        peer.close()
