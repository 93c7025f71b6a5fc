"""Serve one accepted SCGI connection (``--protocol scgi``): socket <-> ``scgi.SCGIRequestParser`` <-> WSGI.

The SCGI counterpart of ``handler.py``, for nginx's ``scgi_pass`` (and Apache's mod_proxy_scgi), as flup and
Django's runfcgi offered. It satisfies the pools' ``ConnectionFactory`` / ``ServedConnection`` contract, so
both pools serve it unchanged, and it reuses the WSGI adapter (``build_environ`` / ``RequestBody`` /
``run_application``): the response is CGI output, exactly what SCGI expects. SCGI has one request per
connection, no multiplexing and no stderr stream (``wsgi.errors`` goes to the log), so ``serve()`` runs the
request in the calling worker thread, pulls the body from the socket on demand, and closes the connection.

The same limits apply as for FastCGI: header size and count (--max-params-bytes / --max-params-count), a
deadline for the header (--params-timeout), --max-body-size (413), the allow-list.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable, Iterable
from typing import Any

from fcgiserve.handler import HandlerOptions
from fcgiserve.memory import scratch_buffer
from fcgiserve.operations import RequestOperations
from fcgiserve.scgi import SCGIError, SCGILimits, SCGIRequest, SCGIRequestParser
from fcgiserve.wsgi import ClientDisconnected, RequestBody, build_environ, run_application

__all__ = ["SCGIConnection", "SCGIConnectionFactory"]

log = logging.getLogger("fcgiserve.scgi")

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]

_TOO_LARGE = b"Request body too large\n"
_BAD_REQUEST = b"Bad SCGI request\n"


class SCGIConnectionFactory:
    """Builds an ``SCGIConnection`` per accepted socket; pools take it as a ``handler.ConnectionFactory``."""

    def __init__(self, app: WSGIApp, options: HandlerOptions) -> None:
        self.app = app
        self.options = options
        self.observer: Any = None  # RequestObserver, set by the pool
        self.watch: Any = None  # set by the pool; an SCGI connection carries one request, never asks it
        self.operations: RequestOperations | None = None  # set by the wiring (operations.py)
        self.limits = SCGILimits(
            max_header_bytes=options.limits.max_params_bytes, max_headers=options.limits.max_params_count
        )

    def open(self, sock: socket.socket, peer: Any) -> SCGIConnection | None:
        allowed = self.options.allowed
        if allowed is not None and not allowed(peer):
            log.warning("refused SCGI connection from %s: not in the allow-list", peer)
            _close_quietly(sock)
            return None
        sock.setblocking(True)
        return SCGIConnection(self, sock, peer)


class SCGIConnection:
    """One SCGI request on one socket. ``serve()`` always finishes the connection (returns False)."""

    def __init__(self, factory: SCGIConnectionFactory, sock: socket.socket, peer: Any) -> None:
        self._factory = factory
        self._sock = sock
        self._peer = peer
        self._fd = sock.fileno()
        self._closed = False
        self._body: RequestBody | None = None
        self._remaining = 0  # body bytes still to read from the socket
        self.deadline: float | None = None  # serve() reads a whole request: never parked with half of one

    def fileno(self) -> int:
        return self._fd

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self._sock.shutdown(socket.SHUT_RDWR)  # wakes a thread blocked in recv (see handler.close)
        except OSError:
            pass
        _close_quietly(self._sock)

    def expire(self) -> None:
        self.close()

    def detach(self) -> socket.socket | None:
        """The pool holds an SCGI connection unserved only while it waits for its first byte (serve() always
        finishes it), so it is clean then: give the socket up unclosed."""
        if self._closed:
            return None
        self._closed = True
        return self._sock

    def serve(self) -> bool:
        try:
            request = self._read_request()
            if request is not None:
                self._run(request)
        except Exception:  # the pool must never lose a worker to us
            log.exception("internal error serving an SCGI connection from %s", self._peer)
        finally:
            self.close()
        return False

    # -- reading -----------------------------------------------------------------------------------------

    def _read_request(self) -> SCGIRequest | None:
        parser = SCGIRequestParser(self._factory.limits)
        timeout = self._factory.options.params_timeout
        self._sock.settimeout(timeout or None)  # the header must arrive in time; the body may take longer
        received = 0
        buffer = scratch_buffer()[0]
        try:
            while True:
                n = self._sock.recv_into(buffer)
                received += n
                request = parser.receive_data(bytes(buffer[:n]))
                if request is not None:
                    return request
        except TimeoutError:
            log.warning("closing SCGI connection from %s: no complete header within %gs", self._peer, timeout)
        except SCGIError as exc:
            if received:  # a connection closed before its first byte is a probe, not worth a warning
                log.warning("bad SCGI request from %s: %s", self._peer, exc)
                self._send(_response("400 Bad Request", _BAD_REQUEST))
        except OSError as exc:
            log.debug("SCGI connection from %s: read failed: %s", self._peer, exc)
        finally:
            if not self._closed:
                self._sock.settimeout(None)
        return None

    def _fill(self) -> bool:
        """Pull more body bytes for the application (RequestBody.fill); False once no more can come."""
        body = self._body
        if body is None or self._remaining <= 0:
            return False
        buffer = scratch_buffer()[0]
        try:
            n = self._sock.recv_into(buffer, min(len(buffer), self._remaining))
        except OSError:
            n = 0
        if not n:
            body.abort()  # the web server went away mid-body
            return False
        self._remaining -= n
        body.feed(bytes(buffer[:n]))
        if self._remaining <= 0:
            body.finish()
        return True

    def _take_whole_body(self) -> None:
        """Read the rest of the body before output streams out: nginx sends no more of a body once the
        response has begun (docs/wsgi.md, "Output waits for the body"); spooled past the threshold."""
        body = self._body
        while body is not None and not body.finished and not body.is_aborted() and self._fill():
            pass

    # -- running the application -------------------------------------------------------------------------

    def _run(self, request: SCGIRequest) -> None:
        factory, options = self._factory, self._factory.options
        environ = build_environ(request.params, options.wsgi)
        environ["fcgiserve.request_id"] = 0
        length = request.content_length
        limit = options.max_body_size
        if limit and length > limit:
            log.warning(
                "SCGI request from %s: CONTENT_LENGTH %d exceeds --max-body-size %d",
                self._peer,
                length,
                limit,
            )
            self._send(_response("413 Payload Too Large", _TOO_LARGE))
            return
        body = self._body = RequestBody(length, options.wsgi.spool_threshold, self._fill)
        start = request.body_start[:length]
        body.feed(start)
        self._remaining = length - len(start)
        if self._remaining <= 0:
            body.finish()
        observer, ops = factory.observer, factory.operations
        if observer is not None:
            observer.request_started(
                f"{environ.get('REQUEST_METHOD', '-')} {environ.get('REQUEST_URI', '-')}"
            )
        record = ops.begin(environ, self._peer) if ops is not None else None
        try:
            if record is not None and record.answer is not None:
                self._send(record.answer)
            else:
                io = _SCGIResponse(self)
                run_application(
                    factory.app, environ, body, io if record is None else record.wrap(io), options.wsgi
                )
        finally:
            body.close()
            if observer is not None:
                observer.request_finished()
            if ops is not None and record is not None:
                ops.finish(record)

    def _send(self, data: bytes) -> bool:
        try:
            self._sock.sendall(data)
        except OSError as exc:
            log.info("SCGI connection from %s: peer went away while we wrote (%s)", self._peer, exc)
            return False
        return True


class _SCGIResponse:
    """The WSGI adapter's ``RequestIO`` for SCGI: stdout is the socket, stderr the log."""

    __slots__ = ("_conn",)

    def __init__(self, conn: SCGIConnection) -> None:
        self._conn = conn

    def write(self, data: bytes, last: bool = False) -> None:
        if not data:
            return
        if not last:
            self._conn._take_whole_body()
        if not self._conn._send(data):
            raise ClientDisconnected("the web server closed the SCGI connection")

    def write_errors(self, data: bytes) -> None:
        log.error("wsgi.errors: %s", data.decode("utf-8", "replace").rstrip("\n"))


def _response(status: str, body: bytes) -> bytes:
    head = f"Status: {status}\r\nContent-Type: text/plain\r\nContent-Length: {len(body)}\r\n\r\n"
    return head.encode("latin-1") + body


def _close_quietly(sock: socket.socket) -> None:
    try:
        sock.close()
    except OSError:
        pass
