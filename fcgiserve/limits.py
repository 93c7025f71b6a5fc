"""What one connection's peer may cost us and see: read deadlines, the send timeout, debug output.

The handler owns the connection; this module owns the small, separately testable decisions it makes about a
peer (docs/security.md lists every limit and what a peer sees when it trips):

* ``recv_until``: read with a deadline without switching the socket to timeout mode. ``settimeout`` would
  also apply to the writes of other threads of a multiplexed connection; a poll on this one read does not.
  The first attempt does not wait (``MSG_DONTWAIT``), so a request that has already arrived — the common
  case, nginx writes a whole request at once — costs no extra system call.
* ``set_send_timeout``: ``SO_SNDTIMEO`` on the blocking socket, so a web server that stops reading makes a
  write fail with ``EAGAIN`` after that long without progress, instead of holding a worker forever.
* ``send_gathered``: ``sendall`` for a list of buffers (``sendmsg``), so large output leaves as the
  application produced it, framed by record headers, without being copied into one string first.
* ``debug_allowed``: ``--debug`` tracebacks go only to a trusted FastCGI peer (loopback, a unix socket or an
  allow-listed address) *and* an HTTP client on loopback (``REMOTE_ADDR``), so a debug server that is
  reachable by mistake does not publish its source and settings.
"""

from __future__ import annotations

import errno
import ipaddress
import mmap
import select
import socket
import struct
import time
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = [
    "debug_allowed",
    "is_send_timeout",
    "is_trusted_peer",
    "recv_until",
    "remote_addr_is_loopback",
    "send_gathered",
    "set_send_timeout",
]

_TIMEVAL = struct.Struct("@ll")  # struct timeval {time_t tv_sec; suseconds_t tv_usec;} on Linux
_POLL_IN = select.POLLIN | select.POLLPRI | select.POLLERR | select.POLLHUP


def recv_until(sock: socket.socket, buffer: bytearray | mmap.mmap, deadline: float | None) -> int:
    """``sock.recv_into(buffer)`` that raises ``TimeoutError`` once ``time.monotonic()`` passes ``deadline``.

    ``sock`` must be in blocking mode (no ``settimeout``). ``deadline=None`` blocks as long as it takes.
    """
    if deadline is None:
        return sock.recv_into(buffer)
    poller: select.poll | None = None
    while True:
        try:
            return sock.recv_into(buffer, 0, socket.MSG_DONTWAIT)
        except BlockingIOError:
            pass
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("read deadline passed")
        if poller is None:
            poller = select.poll()
            poller.register(sock.fileno(), _POLL_IN)
        # Round up: poll(0) on a sub-millisecond remainder would spin until the deadline.
        poller.poll(max(1, int(remaining * 1000 + 0.999)))


def set_send_timeout(sock: socket.socket, seconds: float) -> None:
    """Make a blocking ``send`` on ``sock`` fail with ``EAGAIN`` after ``seconds`` without progress."""
    whole = int(seconds)
    micro = int((seconds - whole) * 1_000_000)
    if whole == 0 and micro == 0:
        micro = 1  # a zero timeval would mean "never"
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, _TIMEVAL.pack(whole, micro))


# Buffers per sendmsg call: well under IOV_MAX (1024 on Linux), which a single call may not exceed.
_GATHER_BATCH = 512


def send_gathered(sock: socket.socket, parts: Sequence[bytes | bytearray | memoryview]) -> None:
    """Send ``parts`` in order, as ``sendall`` would send their concatenation (same errors, e.g. the
    ``SO_SNDTIMEO`` expiry), with ``sendmsg`` calls that may each send only part of what they were given."""
    # The usual case first: one call takes everything, and no part needs a view of its own.
    sent = sock.sendmsg(parts if len(parts) <= _GATHER_BATCH else parts[:_GATHER_BATCH])
    total = 0
    for part in parts:
        total += part.nbytes if type(part) is memoryview else len(part)
    if sent == total:
        return
    pending = [memoryview(part).cast("B") for part in parts if len(part)]
    first = 0
    while True:
        while sent and sent >= len(pending[first]):  # whole buffers that went out
            sent -= len(pending[first])
            first += 1
        if sent:  # the kernel took part of a buffer: the rest goes next
            pending[first] = pending[first][sent:]
        if first == len(pending):
            return
        sent = sock.sendmsg(pending[first : first + _GATHER_BATCH])


def is_send_timeout(exc: OSError) -> bool:
    """True when a write failed because ``SO_SNDTIMEO`` expired (the peer stopped reading)."""
    return exc.errno in (errno.EAGAIN, errno.EWOULDBLOCK)


def is_trusted_peer(peer: Any, allow_list_active: bool) -> bool:
    """A FastCGI peer that may receive debug output: a unix socket, loopback, or one the allow-list let in."""
    if not (isinstance(peer, tuple) and len(peer) >= 2):
        return True  # AF_UNIX: the peer address is a path or empty; the socket's mode decides who connects
    if allow_list_active:
        return True  # ConnectionFactory.open closed every other peer before we got here
    try:
        return ipaddress.ip_address(str(peer[0]).partition("%")[0]).is_loopback
    except ValueError:
        return False


def remote_addr_is_loopback(params: Mapping[str, str]) -> bool:
    """True when the HTTP client (the ``REMOTE_ADDR`` param) is on loopback; False when absent or garbage."""
    value = params.get("REMOTE_ADDR")
    if value is None or not value.isascii():
        return False
    try:
        address = ipaddress.ip_address(value.strip())
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_loopback


def debug_allowed(trusted_peer: bool, params: Mapping[str, str]) -> bool:
    """Whether this request may get a traceback in its 500 response (see the module docstring)."""
    return trusted_peer and remote_addr_is_loopback(params)
