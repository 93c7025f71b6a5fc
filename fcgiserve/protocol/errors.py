"""The two kinds of protocol error (h11's model).

``RemoteProtocolError``: the peer broke FastCGI. ``request_id is None`` means the byte stream itself can
no longer be trusted: the connection object is poisoned and must be closed. An integer ``request_id`` names
the one request the violation belongs to; the connection carries on.

``LocalProtocolError``: our own code misused the API (wrote to a request that is not active, ended a request
twice, ...). It is a bug in the caller, never something a peer can trigger.
"""

from __future__ import annotations

__all__ = ["LocalProtocolError", "ProtocolError", "RemoteProtocolError"]


class ProtocolError(Exception):
    """Base class of every error raised by ``fcgiserve.protocol``."""


class RemoteProtocolError(ProtocolError):
    """The peer violated FastCGI; ``request_id`` is ``None`` when the whole connection is dead."""

    def __init__(self, msg: str, request_id: int | None = None) -> None:
        super().__init__(msg)
        self.msg = msg
        self.request_id = request_id

    @property
    def fatal(self) -> bool:
        """True when the violation ends the whole connection, not a single request."""
        return self.request_id is None

    def __repr__(self) -> str:
        return f"RemoteProtocolError({self.msg!r}, request_id={self.request_id!r})"


class LocalProtocolError(ProtocolError):
    """Our own code called the protocol layer in a way FastCGI or this API does not allow."""
