"""SCGI request parsing, sans-IO: bytes in, one request's CGI variables out (python.ca/scgi/protocol.txt).

An SCGI request is a netstring of NUL-separated header name/value pairs, then the body:

    "70:" "CONTENT_LENGTH" NUL "27" NUL "SCGI" NUL "1" NUL "REQUEST_METHOD" NUL "POST" NUL ... ","  <body>

The spec requires CONTENT_LENGTH to be the first header (even when it is "0"), an "SCGI" header with the
value "1", and no duplicate names. The response is CGI output ("Status: 200 OK" and headers), which is
what the WSGI adapter writes anyway; one request per connection, the server closes it after the response.

Like ``protocol/``, this module knows no socket, thread or clock: the connection class in
``scgi_handler.py`` feeds it what it reads.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["SCGIError", "SCGILimits", "SCGIRequest", "SCGIRequestParser"]


class SCGIError(ValueError):
    """The peer sent something that is not an SCGI request (or exceeds the limits); the message says what."""


@dataclass(frozen=True, slots=True)
class SCGILimits:
    max_header_bytes: int = 1024 * 1024  # the netstring's length; nginx sends a few KiB
    max_headers: int = 1000


@dataclass(frozen=True, slots=True)
class SCGIRequest:
    params: dict[str, str]  # names and values decoded latin-1 (as ParamsComplete.params), in the order sent
    content_length: int
    body_start: bytes  # body bytes that arrived together with the header


class SCGIRequestParser:
    """Feed bytes with ``receive_data`` until it returns the request. After an error it stays poisoned."""

    def __init__(self, limits: SCGILimits | None = None) -> None:
        self._limits = limits or SCGILimits()
        self._buffer = bytearray()
        self._length: int | None = None  # the netstring length, once its digits and ':' arrived
        self._error: SCGIError | None = None
        self._done = False
        self._max_digits = len(str(self._limits.max_header_bytes))

    def receive_data(self, data: bytes) -> SCGIRequest | None:
        """The request once its header is complete; None while more bytes are needed; raises SCGIError.

        ``b""`` means the peer closed: an incomplete header is then an error.
        """
        if self._error is not None:
            raise self._error
        if self._done:
            raise SCGIError("the request header was already parsed; the rest is body")
        try:
            return self._receive(data)
        except SCGIError as exc:
            self._error = exc
            raise

    def _receive(self, data: bytes) -> SCGIRequest | None:
        if not data:
            raise SCGIError(f"connection closed after {len(self._buffer)} byte(s) of an incomplete header")
        self._buffer += data
        if self._length is None:
            colon = self._buffer.find(b":", 0, self._max_digits + 1)
            if colon < 0:
                if len(self._buffer) > self._max_digits or not self._buffer.isdigit():
                    raise SCGIError("the request does not start with a netstring length ('<digits>:')")
                return None
            digits = bytes(self._buffer[:colon])
            if not digits.isdigit() or (len(digits) > 1 and digits.startswith(b"0")):
                raise SCGIError(f"bad netstring length {digits!r}")
            length = int(digits)
            if length > self._limits.max_header_bytes:
                raise SCGIError(
                    f"header of {length} bytes exceeds the limit of {self._limits.max_header_bytes}"
                )
            self._length = length
            del self._buffer[: colon + 1]
        if len(self._buffer) < self._length + 1:
            return None
        if self._buffer[self._length] != ord(","):
            raise SCGIError("the header netstring does not end with ','")
        header = bytes(self._buffer[: self._length])
        body_start = bytes(self._buffer[self._length + 1 :])
        self._buffer.clear()
        params, content_length = self._parse_header(header)
        self._done = True
        return SCGIRequest(params, content_length, body_start)

    def _parse_header(self, header: bytes) -> tuple[dict[str, str], int]:
        if not header.endswith(b"\0"):
            raise SCGIError("the header block does not end with NUL")
        # Latin-1, as for FastCGI params: PEP 3333's native strings, every byte kept.
        fields = header[:-1].decode("latin-1").split("\0")
        if len(fields) % 2:
            raise SCGIError("a header name has no value")
        if len(fields) // 2 > self._limits.max_headers:
            raise SCGIError(f"more than {self._limits.max_headers} headers")
        names = fields[0::2]
        params = dict(zip(names, fields[1::2], strict=True))
        if len(params) != len(names) or "" in params:  # find the first offender, in the order sent
            seen = set()
            for name in names:
                if not name:
                    raise SCGIError("empty header name")
                if name in seen:
                    raise SCGIError(f"duplicate header {name!r}")
                seen.add(name)
        if names[0] != "CONTENT_LENGTH":
            raise SCGIError("the first header must be CONTENT_LENGTH")
        value = params["CONTENT_LENGTH"]
        if not (value.isdigit() and value.isascii()):
            raise SCGIError(f"CONTENT_LENGTH {value!r} is not a number")
        if params.get("SCGI") != "1":
            raise SCGIError("the SCGI header (with value 1) is missing")
        return params, int(value)
