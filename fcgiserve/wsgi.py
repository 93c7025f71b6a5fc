"""PEP 3333 adapter: runs one WSGI application call and writes its response as CGI response bytes.

The handler gives us the environ (``build_environ``), the request body (``RequestBody``) and a
``RequestIO``; we give back the FastCGI appStatus. Output is CGI response format (S-F9: "Status: 200 OK",
header lines, an empty line, then the body) written through ``RequestIO.write``: the header block and the
first non-empty body chunk leave in one call, so the common "list of one bytes object" response costs exactly
one ``write``.

This module knows no FastCGI record, socket, thread pool or process. Behaviour is documented in docs/wsgi.md.
"""

from __future__ import annotations

import logging
import re
import traceback
from collections.abc import Callable, Iterable, Iterator
from types import TracebackType
from typing import IO, Any, Protocol

from fcgiserve.wsgi_environ import (
    ROLES,
    WSGIOptions,
    body_length,
    build_environ,
    request_path,
    resolve_script_path,
)
from fcgiserve.wsgi_input import BodyIncomplete, ClientDisconnected, RequestAborted, RequestBody

__all__ = [
    "APP_STATUS_DISCONNECTED",
    "APP_STATUS_ERROR",
    "APP_STATUS_OK",
    "ROLES",
    "BodyIncomplete",
    "ClientDisconnected",
    "FileWrapper",
    "RequestAborted",
    "RequestBody",
    "RequestIO",
    "WSGIApplication",
    "WSGIOptions",
    "body_length",
    "build_environ",
    "request_path",
    "resolve_script_path",
    "run_application",
]

APP_STATUS_OK = 0  # a complete response was written
APP_STATUS_ERROR = 1  # the application failed: a 500 was sent instead, or the response is truncated
APP_STATUS_DISCONNECTED = 2  # the client went away or the request was aborted; the response is incomplete

ExcInfo = tuple[type[BaseException], BaseException, TracebackType | None] | tuple[None, None, None]
WSGIApplication = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]

_log = logging.getLogger("fcgiserve.wsgi")

# "200 OK": three digits (RFC 9110 15: 100-599), one space, a reason phrase of no control characters but HTAB.
_STATUS = re.compile(r"[1-5][0-9][0-9] [^\x00-\x08\x0a-\x1f\x7f]+\Z")
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+\Z")  # RFC 9110 5.1 field-name
# RFC 9110 5.5: CR, LF, NUL and the other control characters are invalid in a field value (HTAB is fine).
_BAD_VALUE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
# PEP 3333: "hop-by-hop" headers are the server's business; RFC 9110 7.6.1 lists them.
_HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailers",
     "transfer-encoding", "upgrade"}
)  # fmt: skip
_SPECIAL = _HOP_BY_HOP | {"status", "content-length"}
# Statuses and (name, value) headers that passed validation: most responses repeat the same few, so the
# regular expressions run once per distinct header, not once per response. Bounded; Content-Length headers
# have a cache of their own with the parsed value (its values vary more, and must not crowd out the others).
# Adding to a set or dict is atomic under the GIL.
_CHECKED_MAX = 4096
_CHECKED_STATUSES: set[str] = set()
_CHECKED_HEADERS: set[tuple[str, str]] = set()
_CHECKED_LENGTHS_MAX = 1024
_CHECKED_LENGTHS: dict[tuple[str, str], int] = {}


class RequestIO(Protocol):
    """The handler's side of one request: where the response bytes go."""

    def write(self, data: bytes, last: bool = False) -> None:
        """Send STDOUT bytes; raise ClientDisconnected when the peer is gone.

        ``last=True`` promises that no more STDOUT follows for this request, so the handler may hold the
        bytes for an instant and send them in the same system call as END_REQUEST (one ``send`` per small
        response). Only ever passed once the application has produced its whole response.
        """

    def write_errors(self, data: bytes) -> None:
        """Send STDERR bytes; raise ClientDisconnected when the peer is gone."""


class FileWrapper:
    """``wsgi.file_wrapper``: iterate a file-like object in ``blksize`` blocks; ``close()`` closes it.

    ``filelike`` and ``blksize`` are public so a handler may recognise the wrapper and send it its own way.
    """

    __slots__ = ("blksize", "filelike")

    # The largest multiple of 8 that fits one FastCGI record: a block is one record, with no padding.
    DEFAULT_BLOCK_SIZE = 65528

    def __init__(self, filelike: IO[bytes], blksize: int = DEFAULT_BLOCK_SIZE) -> None:
        self.filelike = filelike
        self.blksize = blksize

    def __iter__(self) -> Iterator[bytes]:
        read = self.filelike.read
        size = self.blksize
        while block := read(size):
            yield block

    def close(self) -> None:
        close = getattr(self.filelike, "close", None)
        if close is not None:
            close()


class _ErrorStream:
    """``wsgi.errors``: a text stream sent as FastCGI STDERR (the web server logs it), optionally mirrored to
    our log one line at a time. A client that went away does not make error output fail."""

    __slots__ = ("_io", "_mirror", "_pending")

    def __init__(self, io: RequestIO, mirror: bool) -> None:
        self._io = io
        self._mirror = mirror
        self._pending = ""

    def write(self, text: str) -> int:
        if not isinstance(text, str):
            raise TypeError(f"wsgi.errors.write() takes str, not {type(text).__name__}")
        if text:
            try:
                self._io.write_errors(text.encode("utf-8", "backslashreplace"))
            except ClientDisconnected:
                pass
            if self._mirror:
                *lines, self._pending = (self._pending + text).split("\n")
                for line in lines:
                    _log.warning("wsgi.errors: %s", line)
        return len(text)

    def writelines(self, lines: Iterable[str]) -> None:
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        if self._pending:
            _log.warning("wsgi.errors: %s", self._pending)
            self._pending = ""


class _Response:
    """The state of one response: start_response() and write() are its bound methods."""

    __slots__ = ("clipped", "head", "io", "remaining", "sent", "started")

    def __init__(self, io: RequestIO) -> None:
        self.io = io
        self.head: bytes | None = None  # the encoded header block, until it is sent
        self.started = False
        self.sent = False  # the header block went out: the status can no longer change
        self.remaining: int | None = None  # body bytes the application's Content-Length still allows
        self.clipped = False

    def start_response(
        self, status: str, headers: list[tuple[str, str]], exc_info: ExcInfo | None = None
    ) -> Callable[[bytes], None]:
        if exc_info is not None:
            try:
                if self.sent:  # PEP 3333: too late to change the status, re-raise the application's error
                    raise exc_info[1].with_traceback(exc_info[2])  # type: ignore[union-attr]
            finally:
                exc_info = None  # break the frame <-> traceback cycle
        elif self.started:
            raise RuntimeError("start_response() called a second time without exc_info")
        self.head, self.remaining = _encode_head(status, headers)
        self.started = True
        return self.write

    def write(self, data: bytes) -> None:
        """The PEP 3333 write() callable; also sends every chunk of the returned iterable."""
        self.send(data, False)

    def send(self, data: bytes, last: bool) -> None:
        """Send a body chunk (with the header block first, in the same write); see ``RequestIO.write``."""
        if type(data) is not bytes and not isinstance(data, bytes):  # the exact type first: no call
            raise TypeError(f"WSGI response body chunks must be bytes, not {type(data).__name__}")
        if not data:
            return
        if self.remaining is not None and len(data) > self.remaining:
            data = self._clip(data)
            if not data and self.sent:
                return
        if self.remaining is not None:
            self.remaining -= len(data)
        if self.sent:
            self.io.write(data, last)
            return
        if self.head is None:
            raise RuntimeError("write() called before start_response()")
        self.sent = True
        self.io.write(self.head + data, last)

    def finish(self) -> None:
        """End of the body: an empty body still needs its header block."""
        if not self.sent:
            if self.head is None:
                raise RuntimeError("the WSGI application returned without calling start_response()")
            self.sent = True
            self.io.write(self.head, True)

    def _clip(self, data: bytes) -> bytes:
        # PEP 3333: never send more than the application's own Content-Length; say so once per response.
        assert self.remaining is not None
        if not self.clipped:
            self.clipped = True
            _log.warning("response body exceeds its Content-Length; extra bytes dropped")
        return data[: self.remaining]


def _encode_head(status: str, headers: list[tuple[str, str]]) -> tuple[bytes, int | None]:
    """Validate and encode the CGI header block; also return the Content-Length, if any."""
    if status not in _CHECKED_STATUSES:
        _check_status(status)
    if type(headers) is not list and not isinstance(headers, list):  # the exact type first: no call
        raise TypeError(f"response_headers must be a list of (name, value), not {type(headers).__name__}")
    parts = ["Status: ", status, "\r\n"]
    content_length: int | None = None
    checked = _CHECKED_HEADERS
    lengths = _CHECKED_LENGTHS
    for header in headers:
        if type(header) is tuple:
            if header in checked:  # the common case: seen and validated before
                parts += (header[0], ": ", header[1], "\r\n")
                continue
            if header in lengths:  # a Content-Length seen before: valid, but still only one per response
                if content_length is not None:
                    raise ValueError(
                        f"header {header[0]!r}: invalid or repeated Content-Length {header[1]!r}"
                    )
                content_length = lengths[header]
                parts += (header[0], ": ", header[1], "\r\n")
                continue
        if not isinstance(header, tuple) or len(header) != 2:
            raise TypeError(f"each response header must be a (name, value) tuple, not {header!r}")
        name, value = header
        if not isinstance(name, str) or not isinstance(value, str):
            raise TypeError(f"header name and value must be str: {header!r}")
        if _TOKEN.match(name) is None:
            raise ValueError(f"invalid header name {name!r}")
        if _BAD_VALUE.search(value) is not None:
            raise ValueError(f"header {name!r} has a control character (CR, LF, NUL...) in {value!r}")
        lower = name.lower()
        if lower in _SPECIAL:
            if lower != "content-length":
                raise ValueError(f"header {name!r} is not allowed in a WSGI response (hop-by-hop/reserved)")
            if content_length is not None or not (value.isdigit() and value.isascii()):
                raise ValueError(f"header {name!r}: invalid or repeated Content-Length {value!r}")
            content_length = int(value)
            if type(header) is tuple and len(lengths) < _CHECKED_LENGTHS_MAX:
                lengths[header] = content_length
        elif len(checked) < _CHECKED_MAX and _latin1(value):
            checked.add(header)
        parts += (name, ": ", value, "\r\n")
    parts.append("\r\n")
    try:
        return "".join(parts).encode("latin-1"), content_length
    except UnicodeEncodeError:
        if not _latin1(status):
            raise ValueError(f"status {status!r} is not latin-1 encodable") from None
        culprit = next(h for h in headers if not _latin1(h[1]))  # names passed _TOKEN: ASCII
        raise ValueError(f"header {culprit[0]!r} is not latin-1 encodable: {culprit!r}") from None


def _check_status(status: str) -> None:
    if not isinstance(status, str):
        raise TypeError(f"status must be str, not {type(status).__name__}")
    if _STATUS.match(status) is None:
        raise ValueError(f"invalid status {status!r}: expected three digits, a space and a reason ('200 OK')")
    if len(_CHECKED_STATUSES) < _CHECKED_MAX and _latin1(status):
        _CHECKED_STATUSES.add(status)


def _latin1(text: str) -> bool:
    try:
        text.encode("latin-1")
    except UnicodeEncodeError:
        return False
    return True


def run_application(
    app: WSGIApplication,
    environ: dict[str, Any],
    body: RequestBody,
    io: RequestIO,
    options: WSGIOptions,
    data: RequestBody | None = None,
) -> int:
    """Call ``app`` once and write its response to ``io``; return the FastCGI appStatus (APP_STATUS_*).

    Adds ``wsgi.input``, ``wsgi.errors``, ``wsgi.file_wrapper``, ``fcgiserve.aborted`` (and ``fcgi.data``
    for the Filter role) to ``environ``. The iterable's ``close()`` is always called. Never raises an
    application's ``Exception``: it is logged and answered with a 500 (before the headers went out) or a
    non-zero appStatus (after).
    """
    environ["wsgi.input"] = body
    errors = _ErrorStream(io, options.errors_to_log)
    environ["wsgi.errors"] = errors
    environ["fcgiserve.aborted"] = body.is_aborted
    environ["wsgi.file_wrapper"] = FileWrapper
    if data is not None:
        environ["fcgi.data"] = data
    response = _Response(io)
    try:
        result = app(environ, response.start_response)
        try:
            if type(result) is list and len(result) == 1:  # the common case: one write for everything
                response.send(result[0], True)
            else:
                write = response.write
                for chunk in result:
                    write(chunk)
                    if response.remaining == 0:  # PEP 3333: stop once Content-Length bytes went out
                        break
            response.finish()
        finally:
            close = getattr(result, "close", None)
            if close is not None:
                close()
    except ClientDisconnected as exc:
        if _log.isEnabledFor(logging.DEBUG):
            _log.debug("client went away during %s: %s", _describe(environ), exc)
        return APP_STATUS_DISCONNECTED
    except Exception as exc:
        return _fail(exc, environ, response, options)
    finally:
        if options.errors_to_log:
            errors.flush()
    return APP_STATUS_OK


def _fail(exc: Exception, environ: dict[str, Any], response: _Response, options: WSGIOptions) -> int:
    """Log an application error and, if the status can still change, answer 500."""
    _log.error("error in WSGI application during %s", _describe(environ), exc_info=exc)
    if response.sent:
        return APP_STATUS_ERROR
    text = "".join(traceback.format_exception(exc)) if options.debug else "Internal Server Error\n"
    payload = text.encode("utf-8", "backslashreplace")
    head = (
        "Status: 500 Internal Server Error\r\nContent-Type: text/plain; charset=utf-8\r\n"
        f"Content-Length: {len(payload)}\r\n\r\n"
    )
    response.sent = True
    try:
        response.io.write(head.encode("latin-1") + payload, True)
    except ClientDisconnected:
        _log.debug("client went away before the 500 response for %s", _describe(environ))
        return APP_STATUS_DISCONNECTED
    return APP_STATUS_ERROR


def _describe(environ: dict[str, Any]) -> str:
    uri = environ.get("REQUEST_URI") or environ.get("SCRIPT_NAME", "") + environ.get("PATH_INFO", "")
    return f"{environ.get('REQUEST_METHOD', '?')} {uri} (request {environ.get('fcgiserve.request_id', '?')})"
