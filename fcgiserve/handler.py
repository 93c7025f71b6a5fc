"""Serve one accepted FastCGI connection: socket bytes <-> ``ServerConnection`` <-> the WSGI adapter.

What this module owns: reading into one reusable buffer, feeding the sans-IO core, running each request's
application, writing every record whole under one lock per connection, and deciding when the connection is
idle (parked by the pool) or finished. It knows no pool: whichever thread the pool lends calls ``serve()``.

Scheduling (the fast path is the common case — nginx, one request per connection at a time):
- ``serve()`` never waits for the rest of a request. It reads what has arrived (non-blocking: the pool saw
  the connection readable); a request whose PARAMS are not complete yet is held by the protocol object (a
  copy, not the thread's receive buffer) and the connection goes back to the pool with ``deadline`` set
  (``--params-timeout``): a stalled peer costs a file descriptor, not a worker, and the pool calls
  ``expire()`` if the deadline passes. Only a complete request reaches an application.
- A request whose params are complete while no other request of the connection is running runs *inline*
  in the serving thread. Its body is pulled from the socket by that same thread when the application reads
  past what has arrived (``RequestBody.fill``): no thread hop, one ``recv`` and one ``send`` per request.
- With ``FCGI_MPXS_CONNS=1``, an inline request whose input is complete (its application will not read the
  socket) runs while the pool watches the connection (``ConnectionFactory.watch``): the pool's one
  ``epoll_ctl`` per request happens before the application runs instead of after. If the peer sends
  anything meanwhile, a worker the pool lends enters ``serve()`` as the connection's *reader*, and new
  requests run in threads of their own: a slow application never delays the other requests of a
  multiplexing client (HAProxy ``option mpxs-conns``). The inline request then ends like a threaded one.
- As soon as a connection shows multiplexing (two requests active at once) every request of it runs in a
  thread of its own and the serving thread becomes the connection's reader, so a slow body or a slow
  application of one request never stalls the others (checklist S-H).
- When no request is active, ``serve()`` returns True and the pool parks the connection: an idle kept-alive
  connection costs no worker thread. ``detach()`` gives a clean idle connection's socket up unclosed, for
  the pools to hand it to another process.

Without multiplexing (``FCGI_MPXS_CONNS=0``, prefork's default) nobody reads the connection while an inline
application runs; a peer that sends a second request anyway has it refused with CANT_MPX_CONN when it is
read while the first is active (S-F6). nginx, Apache, lighttpd, Caddy and h2o never multiplex.
"""

from __future__ import annotations

import dataclasses
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from fcgiserve.handler_request import (
    NOT_STORED,
    ROLE_NAMES,
    TOO_LARGE,
    Request,
    RequestOutput,
    close_quietly,
    content_length,
    data_length,
    describe_peer,
)
from fcgiserve.limits import (
    debug_allowed,
    is_send_timeout,
    is_trusted_peer,
    recv_until,
    send_gathered,
    set_send_timeout,
)
from fcgiserve.memory import scratch_buffer
from fcgiserve.operations import RequestOperations
from fcgiserve.protocol import (
    Buffer,
    ConnectionClosed,
    ConnectionSettings,
    Data,
    DataEnd,
    Event,
    ParamsComplete,
    ProtocolLimits,
    ProtocolStatus,
    RemoteProtocolError,
    RequestAborted,
    RequestFailed,
    RequestReceived,
    RequestRejected,
    RequestStarted,
    Role,
    ServerConnection,
    StdinData,
    StdinEnd,
)
from fcgiserve.wsgi import (
    ClientDisconnected,
    RequestBody,
    WSGIOptions,
    build_environ,
    run_application,
)

__all__ = ["ConnectionFactory", "HandlerOptions", "ServedConnection"]

log = logging.getLogger("fcgiserve.handler")

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]

_MUX_READ_TIMEOUT = 1.0  # a multiplexing connection's reader re-checks whether it may park this often
_LINGER_SECONDS = 2.0  # after our FIN, how long a closing connection waits for the peer's (lingering close)
# Bounded by time above all, like Apache's and nginx's lingering close. The byte cap must exceed what a web
# server still has in flight: nginx streaming a refused (413) unbuffered upload only stops once it has read
# our END_REQUEST, and a close before that resets the connection and turns the 413 into its 502.
_LINGER_MAX_BYTES = 16 << 20
# STDOUT chunks this large are written as record headers around the chunk itself (one sendmsg), not copied
# into one string with them first; below it, the copy costs less than gathering.
_GATHER_FROM = 16 * 1024
_STREAM_EVENTS = frozenset({StdinData, StdinEnd, Data, DataEnd})


def _input_pending(request: Request) -> bool:
    """True while this thread reads the connection for ``request`` (it runs inline: its body pulls from
    the socket) and some of its input has yet to arrive."""
    body, data = request.body, request.data
    return (body is not None and body.fill is not None and not body.finished) or (
        data is not None and data.fill is not None and not data.finished
    )


@dataclass(frozen=True, slots=True)
class HandlerOptions:
    """Everything a connection needs to know, computed once per process by the wiring layer."""

    wsgi: WSGIOptions = field(default_factory=WSGIOptions)
    settings: ConnectionSettings = field(default_factory=ConnectionSettings)
    limits: ProtocolLimits = field(default_factory=ProtocolLimits)
    max_body_size: int = 0  # 0 = unlimited; larger bodies (announced or received) get 413
    params_timeout: float = 0.0  # seconds to deliver a complete request's PARAMS; 0 = never
    write_timeout: float = 0.0  # seconds a write may make no progress (SO_SNDTIMEO); 0 = never
    allowed: Callable[[Any], bool] | None = None  # peer address -> may it talk to us?
    max_in_flight: int = 0  # requests running at once in this process (FCGI_MAX_REQS); 0 = unbounded
    # The flup shim's WSGIServer(roles=..., environ=...): other roles are refused with UNKNOWN_ROLE (S-G4),
    # and extra_environ is merged into every environ over the params, as flup did.
    roles: frozenset[Role] | None = None
    extra_environ: tuple[tuple[str, Any], ...] = ()


class ConnectionFactory:
    """Builds a ``ServedConnection`` per accepted socket; handed to a pool (see ``pools/base.py``)."""

    # serve() reads what is there and parks a connection whose request is incomplete (pools/base.py).
    serve_never_waits = True

    def __init__(self, app: WSGIApp, options: HandlerOptions) -> None:
        self.app = app
        self.options = options
        self.observer: Any = None  # RequestObserver, set by the pool
        # Access log, status/ping pages, slow requests (operations.py); set by the wiring when one is on.
        self.operations: RequestOperations | None = None
        # Set by a pool that can watch a connection while one of its requests runs inline (pools/base.py,
        # ConnectionFactory.watch): True when it does; a worker it lends may then read the connection.
        self.watch: Callable[[Any], bool] | None = None
        # Requests of multiplexed connections run in threads of their own, outside the pool's accounting:
        # this bound keeps them within FCGI_MAX_REQS, and beyond it they are answered OVERLOADED (S-F6).
        self._in_flight = threading.BoundedSemaphore(options.max_in_flight) if options.max_in_flight else None
        # --debug output only for trusted peers (limits.debug_allowed); everyone else gets the plain 500.
        self.wsgi_no_debug = dataclasses.replace(options.wsgi, debug=False)

    def reserve(self) -> bool:
        """Claim a slot for a request that will run in a thread of its own; False when saturated."""
        return self._in_flight is None or self._in_flight.acquire(blocking=False)

    def release(self) -> None:
        if self._in_flight is not None:
            self._in_flight.release()

    def open(self, sock: socket.socket, peer: Any) -> ServedConnection | None:
        allowed = self.options.allowed
        if allowed is not None and not allowed(peer):
            log.warning("refused connection from %s: not in the allow-list", describe_peer(peer))
            close_quietly(sock)
            return None
        sock.setblocking(True)
        if self.options.write_timeout:
            set_send_timeout(sock, self.options.write_timeout)
        return ServedConnection(self, sock, peer)


class ServedConnection:
    """One accepted socket and its ``ServerConnection``; see the module docstring for the scheduling."""

    def __init__(self, factory: ConnectionFactory, sock: socket.socket, peer: Any) -> None:
        self._factory = factory
        self._options = factory.options
        self._sock = sock
        self._peer = peer
        self._fd = sock.fileno()
        self._proto = ServerConnection(
            settings=self._options.settings, limits=self._options.limits, whole_requests=True
        )
        self._lock = threading.Lock()  # guards _proto and every socket write: records never interleave
        self._requests: dict[int, Request] = {}
        self._runnable: list[Request] = []
        self._multiplexed = False  # set for good once two requests were active at once
        self._closed = False
        self._broken = False  # a write failed or the peer broke the protocol
        self._eof = False  # the peer closed its side
        self._orphaned = False  # the reader gave up while threaded requests still ran; the last one closes
        self._input_open = False  # a request ended before the peer finished sending its streams
        # --params-timeout: when the request being received must have its PARAMS complete (None: no request
        # is being received). A new connection starts the clock: a peer that connects and sends nothing is
        # the cheapest way to hold a worker.
        # Public: the pool parks a connection holding half a request until then (ServedConnection.deadline).
        timeout = self._options.params_timeout
        self.deadline: float | None = time.monotonic() + timeout if timeout else None
        self._trusted = self._options.wsgi.debug and is_trusted_peer(peer, self._options.allowed is not None)

    def fileno(self) -> int:
        return self._fd

    # -- the pool's entry point -------------------------------------------------------------------------

    def serve(self) -> bool:
        try:
            return self._serve()
        except Exception:  # the pool must never lose a worker to us
            log.exception("internal error serving %s; closing the connection", describe_peer(self._peer))
            self._abort_all()
            self.close()
            return False

    def _serve(self) -> bool:
        if self._closed:
            return False
        # The pool saw the connection readable (or a prefork child has just accepted it): read what is there,
        # never wait for more. A request that is not complete yet waits in the pool's epoll, not in a worker.
        if not self._read_and_dispatch(timeout=0.0):
            return self._finish_or_park()
        while True:
            if self._run_runnable():
                return True  # its request ran while the pool watched the connection: the pool has it
            if self._closed:
                return False
            if not self._requests:
                if self.deadline is None:
                    return self._finish_or_park()
                # Half a request: take what has arrived meanwhile, then park until the rest comes (deadline).
                if not self._read_and_dispatch(timeout=0.0):
                    return self._finish_or_park()
                continue
            # Requests run in threads of their own: read on for them, and park once they are done.
            if not self._read_and_dispatch(timeout=_MUX_READ_TIMEOUT):
                return self._finish_or_park()

    def _finish_or_park(self) -> bool:
        if self._closed:
            return False
        with self._lock:
            if self._requests:
                # The peer went away while requests run in their own threads: they notice on their next
                # write, and the last one out closes the socket.
                self._orphaned = True
                return False
        if self._eof or self._broken:
            self.close()
            return False
        if self._proto.should_close:
            if self._input_open or self._proto.buffered_bytes:
                self._close_lingering()
            else:
                # The peer sent everything it meant to (nginx's usual case): nothing unread can turn our close
                # into a reset, so skip the lingering close's extra system calls and the wait for its FIN.
                with self._lock:
                    self._closed = True
                close_quietly(self._sock)
            return False
        return True

    def _close_lingering(self) -> None:
        """Close after our last record: FIN first, then discard what the peer still sends until it closes.

        A close() with unread input makes the kernel answer RST, and the RST discards the response bytes
        still in flight. Peers that write their empty STDIN record after the request already ran (Caddy)
        lost the tail of large responses that way. Bounded in time and bytes, like Apache's lingering close.
        """
        try:
            self._sock.shutdown(socket.SHUT_WR)
            deadline = time.monotonic() + _LINGER_SECONDS
            discarded = 0
            while discarded < _LINGER_MAX_BYTES and (remaining := deadline - time.monotonic()) > 0:
                self._sock.settimeout(remaining)
                chunk = self._sock.recv(65536)
                if not chunk:
                    break
                discarded += len(chunk)
        except OSError:
            pass  # timed out or reset: either way there is nothing more to wait for
        self.close()

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
        # shutdown() first: on Linux a bare close() does not wake a thread blocked in recv() on this socket
        # (the pool closes connections served by other threads on QUIT or a graceful-timeout expiry).
        try:
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        close_quietly(self._sock)

    def detach(self) -> socket.socket | None:
        """Give up a clean connection's socket without closing it, or return None and change nothing.

        Clean: between requests (none known to the protocol object or to us), nothing buffered, not closed,
        broken or at EOF. Bytes the peer sent since are still in the kernel's socket buffer and travel
        with the fd, so the caller may hand the socket to any process (pools/handoff.py).
        """
        with self._lock:
            proto = self._proto
            if (
                self._closed
                or self._broken
                or self._eof
                or self._requests
                or self._runnable
                or proto.active_requests
                or proto.buffered_bytes
                or proto.should_close
            ):
                return None
            self._closed = True
        return self._sock

    def expire(self) -> None:
        """The pool parked this connection with half a request and its ``deadline`` passed: close it."""
        if self._closed:
            return
        self._params_timed_out()
        self.close()

    # -- reading -----------------------------------------------------------------------------------------

    def _read_and_dispatch(self, timeout: float | None) -> bool:
        """Read once and dispatch the events. False when the connection is over (EOF, error, --params-timeout)
        or when nothing arrived within ``timeout`` (0: do not wait) and no request of ours is in progress.
        None blocks until bytes arrive (an inline request pulling its body)."""
        buffer, view = scratch_buffer()  # only this thread reads this connection until we return
        deadline = self.deadline
        try:
            if timeout == 0.0:
                # The pool's case: one non-blocking recv, the same single system call as a blocking one.
                n = self._sock.recv_into(buffer, 0, socket.MSG_DONTWAIT)
            else:
                until = deadline
                if timeout is not None:
                    soon = time.monotonic() + timeout
                    until = soon if deadline is None else min(deadline, soon)
                n = recv_until(self._sock, buffer, until)
        except (TimeoutError, BlockingIOError):
            if deadline is not None and time.monotonic() >= deadline:
                self._params_timed_out()
                return False
            # Still busy: keep reading; idle or half a request: let the caller park.
            return bool(self._requests)
        except OSError as exc:
            log.debug("connection from %s: read failed: %s", describe_peer(self._peer), exc)
            n = 0
        if not n:
            self._eof = True
        data = view[:n] if n else b""
        fatal = False
        with self._lock:
            try:
                events = self._proto.receive_data(data)
            except RemoteProtocolError as exc:
                # Connection-fatal (the object is poisoned): say what the layer composed, then hang up.
                log.warning("closing connection from %s: %s", describe_peer(self._peer), exc)
                self._send_locked(self._proto.data_to_send())
                self._broken = fatal = True
                events = []
            else:
                pending = self._proto.data_to_send()
                if pending:
                    self._send_locked(pending)
        if fatal:
            self._abort_all()
        dispatch = self._dispatch
        for event in events:
            dispatch(event)
        # Half a record is held, or a request has begun but its PARAMS have not ended, and no request of ours
        # runs (checked after the events, which may have started one): a request is on its way and must be
        # complete by the deadline. A running request's body may arrive as slowly as the web server sends it.
        # (Asked of the protocol object only when no request of ours runs: not at all on the hot path.)
        if not self._requests and not fatal:
            with self._lock:
                waiting = self._proto.buffered_bytes or self._proto.active_requests
        else:
            waiting = False
        if waiting:
            if self.deadline is None and self._options.params_timeout:
                self.deadline = time.monotonic() + self._options.params_timeout
        else:
            self.deadline = None
        return n > 0 and not self._broken

    def _dispatch(self, event: Event) -> None:
        # Ordered by frequency on the hot path. The events are final dataclasses: testing the type's identity
        # replaces a chain of isinstance() calls (three events per request, up to five calls each before).
        # ``type(event) is X`` is spelled out where mypy has to narrow the event's type.
        kind = type(event)
        if type(event) is RequestReceived:
            # A request that came whole (the usual read): RequestStarted, ParamsComplete, StdinData and
            # StdinEnd in one event, handled in that order.
            request = self._start(event.request_id, event.role, event.keep_conn)
            if request is None:
                return
            body = self._params_complete(request, event.params, event.pairs)
            for chunk in event.stdin:
                self._feed(request, body, chunk)
            if event.stdin_ended:
                body.finish()
        elif type(event) is RequestStarted:
            self._start(event.request_id, event.role, event.keep_conn)
        elif type(event) is ParamsComplete:
            started = self._requests.get(event.request_id)
            if started is not None:
                self._params_complete(started, event.params, event.pairs)
        elif kind in _STREAM_EVENTS:
            request = self._requests.get(event.request_id)
            if request is None:
                return
            stream = request.data if kind is Data or kind is DataEnd else request.body
            if stream is None:
                if log.isEnabledFor(logging.DEBUG):
                    # DATA for a role that has no use for it (the protocol passes it on): dropped, like flup.
                    size = len(event.data) if isinstance(event, Data) else 0
                    log.debug(
                        "request %d from %s: DATA record ignored (%d bytes): a %s reads no DATA",
                        event.request_id, describe_peer(self._peer), size, ROLE_NAMES[request.role],
                    )  # fmt: skip
            elif kind is StdinEnd or kind is DataEnd:
                stream.finish()
            elif isinstance(event, (StdinData, Data)):
                self._feed(request, stream, event.data)
        elif isinstance(event, RequestAborted):
            self._abort(event.request_id, "aborted by the web server")
        elif isinstance(event, RequestFailed):
            log.warning(
                "request %d from %s failed: %s", event.request_id, describe_peer(self._peer), event.error
            )
            self._abort(event.request_id, "broke the protocol")
        elif isinstance(event, RequestRejected):
            log.info(
                "request %d from %s refused (%s): %s",
                event.request_id,
                describe_peer(self._peer),
                event.protocol_status.name,
                event.error or "aborted early",
            )
        elif isinstance(event, ConnectionClosed):
            self._abort_all()

    def _start(self, request_id: int, role: Role, keep_conn: bool) -> Request | None:
        """A request now ours (RequestStarted); None when its role is not served (it is refused)."""
        if self._options.roles is not None and role not in self._options.roles:
            self._refuse_role(request_id, role)
            return None
        request = self._requests[request_id] = Request(request_id, role, keep_conn)
        if len(self._requests) > 1:
            self._multiplexed = True
        return request

    def _feed(self, request: Request, body: RequestBody, data: bytes) -> None:
        """Feed STDIN or DATA, counting what arrives: its announced length may be absent or lie (S-G1)."""
        if request.refused:
            return
        limit = self._options.max_body_size
        request.received += len(data)
        if limit and request.received > limit:
            why = f"received body exceeds --max-body-size {limit}"
            self._refuse_body(request, TOO_LARGE, why)
            return
        try:
            body.feed(data)
        except OSError as exc:  # spooling to disk failed: ENOSPC, EFBIG (RLIMIT_FSIZE), EIO
            self._refuse_body(request, NOT_STORED, f"cannot spool the body: {exc}")

    def _refuse_body(self, request: Request, answer: bytes, why: str) -> None:
        """Stop taking a request's body; its application's next read raises, and ``_run`` answers."""
        log.warning(
            "request %d from %s: %s; body reading stopped", request.request_id, describe_peer(self._peer), why
        )
        request.refused = answer
        for stream in (request.body, request.data):
            if stream is not None:
                stream.abort(why)

    def _params_timed_out(self) -> None:
        log.warning(
            "closing connection from %s: no complete request within --params-timeout %gs",
            describe_peer(self._peer),
            self._options.params_timeout,
        )
        self.deadline = None
        self._broken = True
        self._abort_all()

    def _params_complete(
        self, request: Request, params: dict[str, str], pairs: list[tuple[str, str]] | None
    ) -> RequestBody:
        """The request's params are in: its environ's source, its body, and it is runnable."""
        request.params = params
        request.pairs = pairs
        threshold = self._options.wsgi.spool_threshold
        fill = None if self._multiplexed else self._fill
        if request.role is not Role.AUTHORIZER:
            request.length = content_length(params)
            body = request.body = RequestBody(request.length, threshold, fill)
        else:
            # S-G2: an authorizer gets no body; its STDIN stream still ends with an empty record.
            body = request.body = RequestBody(0, threshold, fill)
        if request.role is Role.FILTER:
            request.data = RequestBody(data_length(params), threshold, fill)
        self._runnable.append(request)
        return body

    def _fill(self) -> bool:
        """Pull more bytes for an inline request's body; runs in the serving thread (RequestBody.fill)."""
        if self._closed or self._broken:
            return False
        more = self._read_and_dispatch(timeout=None)
        # Requests that became runnable while the inline app reads its body run in threads of their own.
        if self._runnable:
            self._multiplexed = True
            self._start_threads()
        return more

    # -- running applications ----------------------------------------------------------------------------

    def _run_runnable(self) -> bool:
        """Run what became runnable; True when a request ran inline while the pool watched the connection
        (then the pool has it: this thread must not touch the connection again)."""
        if not self._runnable:
            return False
        if self._multiplexed or len(self._runnable) > 1 or len(self._requests) > 1:
            self._multiplexed = True
            self._start_threads()
            return False
        request = self._runnable.pop()
        watched = self._factory.watch is not None and self._watch_while_running(request)
        self._run(request)
        return watched

    def _watch_while_running(self, request: Request) -> bool:
        """Ask the pool to watch the connection while ``request`` runs inline (multiplexing only).

        Its input is complete, so its application never reads the socket: if the peer sends another request
        meanwhile, a worker the pool lends becomes this connection's reader (``serve()`` in a second thread)
        and runs the new request in a thread of its own; no request waits behind a slow one. For a client
        that never multiplexes this is the pool's one ``epoll_ctl`` per request, done before the application
        runs instead of after. The request then ends like a threaded one (``_end``): if the reader gave up
        meanwhile, it closes the connection; if the connection must close, it shuts the socket down, which
        wakes whoever watches it.
        """
        watch = self._factory.watch
        if watch is None or not request.keep_conn or not self._proto.settings.mpxs_conns:
            return False
        body = request.body
        data = request.data
        if body is None or not body.finished or (data is not None and not data.finished):
            return False  # its application may read the socket (RequestBody.fill): this thread stays reader
        request.threaded = True  # before the pool may lend the connection to a reader
        if watch(self):
            return True
        request.threaded = False
        return False

    def _start_threads(self) -> None:
        runnable, self._runnable = self._runnable, []
        for request in runnable:
            if not self._factory.reserve():
                self._overloaded(request)
                continue
            if request.body is not None:
                request.body.fill = None  # the serving thread is the reader now
            if request.data is not None:
                request.data.fill = None
            request.threaded = True
            thread = threading.Thread(
                target=self._run_threaded,
                args=(request,),
                name=f"fcgiserve-request-{request.request_id}",
                daemon=True,
            )
            thread.start()

    def _run_threaded(self, request: Request) -> None:
        try:
            self._run(request)
        finally:
            self._factory.release()

    def _overloaded(self, request: Request) -> None:
        log.warning(
            "request %d from %s refused: %s requests already in progress (FCGI_MAX_REQS)",
            request.request_id,
            describe_peer(self._peer),
            self._options.max_in_flight,
        )
        with self._lock:
            request.ended = True
            self._requests.pop(request.request_id, None)
            if not (self._broken or self._closed):
                self._send_locked(self._proto.reject_request(request.request_id, ProtocolStatus.OVERLOADED))

    def _refuse_role(self, request_id: int, role: Role) -> None:
        log.info(
            "request %d from %s refused: role %s is not served",
            request_id,
            describe_peer(self._peer),
            role.name,
        )
        with self._lock:
            if not (self._broken or self._closed):
                self._send_locked(self._proto.reject_request(request_id, ProtocolStatus.UNKNOWN_ROLE))

    def _run(self, request: Request) -> None:
        request.started = True
        assert request.params is not None and request.body is not None
        options = self._options
        app_status = 1
        observer = self._factory.observer
        wsgi_options = options.wsgi
        if wsgi_options.debug and not (self._trusted and debug_allowed(True, request.params)):
            wsgi_options = self._factory.wsgi_no_debug
        environ = build_environ(
            request.params, wsgi_options, ROLE_NAMES[request.role], request.request_id, request.pairs
        )
        if options.extra_environ:
            environ.update(options.extra_environ)
        if observer is not None:
            observer.request_started(
                f"{environ.get('REQUEST_METHOD', '-')} {environ.get('REQUEST_URI', '-')}"
            )
        ops = self._factory.operations
        record = ops.begin(environ, self._peer) if ops is not None else None
        try:
            limit = options.max_body_size
            if record is not None and record.answer is not None:  # status or ping: not the application's
                self.write_stream(request, record.answer, stderr=False)
                app_status = 0
            elif limit and request.length is not None and request.length > limit:
                log.warning(
                    "request %d from %s: CONTENT_LENGTH %d exceeds --max-body-size %d; answered 413",
                    request.request_id,
                    describe_peer(self._peer),
                    request.length,
                    limit,
                )
                app_status = self._answer(request, TOO_LARGE)
            else:
                output = RequestOutput(self, request)
                app_status = run_application(
                    self._factory.app,
                    environ,
                    request.body,
                    output if record is None else record.wrap(output),
                    wsgi_options,
                    request.data,
                )
                if request.refused and not (request.output or request.aborted):
                    request.tail = b""  # the application's answer, still held back: the refusal replaces it
                    app_status = self._answer(request, request.refused)
                elif request.refused:
                    app_status = app_status or 1  # too late for a 413: the response stands, but not as whole
        except Exception:
            log.exception("request %d: unexpected error in the WSGI adapter", request.request_id)
        finally:
            request.body.close()
            if request.data is not None:
                request.data.close()
            self._end(request, app_status)
            if observer is not None:
                observer.request_finished()
            if ops is not None and record is not None:
                ops.finish(record)

    def _answer(self, request: Request, response: bytes) -> int:
        """Send one of the canned responses (TOO_LARGE, NOT_STORED) in place of the application's."""
        self.write_stream(request, response, stderr=False)
        return 0

    # -- writing -----------------------------------------------------------------------------------------

    def write_output(self, request: Request, data: bytes) -> None:
        """The application's STDOUT, but for its last chunk (which ``_end`` sends): once the request's input
        has all arrived (``_take_whole_input``)."""
        if _input_pending(request):
            self._take_whole_input(request)
        self.write_stream(request, data, stderr=False)

    def write_stream(self, request: Request, data: bytes, *, stderr: bool) -> None:
        """STDOUT/STDERR for one request, as whole records under the connection lock (checklist S-B5)."""
        if request.aborted or request.ended:
            raise ClientDisconnected("the web server aborted the request or closed the connection")
        if not data:
            return
        with self._lock:
            if self._broken or self._closed:
                raise ClientDisconnected("the web server closed the connection")
            out: bytes | list[Buffer]
            if stderr:
                out = self._proto.send_stderr(request.request_id, data)
            else:
                out = self._stdout_locked(request.request_id, data)
                request.output = True
            if not self._send_locked(out):
                raise ClientDisconnected("the web server closed the connection")

    def _take_whole_input(self, request: Request) -> None:
        """Read the rest of an inline request's input before any of its output goes out.

        nginx sends no more of a request once its response has begun: an application that writes before it
        has read its whole body (an echo, a progress line) then waits for a body that never comes, once the
        body outgrows the socket buffers (about 200 KiB each way over a unix socket; TCP's grow larger). A
        peer that reads nothing before it has sent everything waits on us the same way. The body spools to
        a file beyond ``--spool-threshold``, so taking it costs bounded memory; the output waits for it."""
        while _input_pending(request) and not (request.aborted or request.refused) and self._fill():
            pass

    def _end(self, request: Request, app_status: int) -> None:
        with self._lock:
            if not request.ended:
                request.ended = True
                if not (self._broken or self._closed):
                    try:
                        rid = request.request_id
                        tail = request.tail
                        out: bytes | list[Buffer]
                        if len(tail) < _GATHER_FROM:  # the response's last bytes and the end: one string
                            out = self._proto.end_request(rid, app_status, stdout=tail)
                        else:
                            out = self._proto.send_stdout_parts(rid, tail)
                            out.append(self._proto.end_request(rid, app_status))
                        self._send_locked(out)
                    except Exception:
                        log.exception("request %d: could not end the request", request.request_id)
                        self._broken = True
            self._requests.pop(request.request_id, None)
            body, data = request.body, request.data
            if (body is not None and not body.finished) or (data is not None and not data.finished):
                self._input_open = True  # the peer may still send: close with a lingering close
            if not (request.threaded and not self._requests):
                return  # not the last threaded request out (an inline one: the serving thread goes on)
            orphaned = self._orphaned
            finished = self._proto.should_close or self._broken
        if orphaned:
            self.close()
        elif finished:
            # Wake the reader blocked in recv so that it closes the connection.
            try:
                self._sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def _stdout_locked(self, request_id: int, data: bytes) -> bytes | list[Buffer]:
        """STDOUT records for ``data``: one string when small, else buffers to gather around ``data``."""
        if len(data) < _GATHER_FROM:
            return self._proto.send_stdout(request_id, data)
        return self._proto.send_stdout_parts(request_id, data)

    def _send_locked(self, data: bytes | list[Buffer]) -> bool:
        if not data:
            return True
        if self._broken or self._closed:
            return False
        try:
            if type(data) is bytes or isinstance(data, bytes):  # the exact type first: no call
                self._sock.sendall(data)
            else:
                send_gathered(self._sock, data)
        except OSError as exc:
            if is_send_timeout(exc):
                log.warning(
                    "connection from %s: the web server read nothing for --write-timeout %gs; aborted",
                    describe_peer(self._peer),
                    self._options.write_timeout,
                )
                self._broken = True
                return False
            # A web server that went away is an expected event: one concise line, no traceback (P16).
            log.info("connection from %s: peer went away while we wrote (%s)", describe_peer(self._peer), exc)
            self._broken = True
            return False
        return True

    # -- aborts ------------------------------------------------------------------------------------------

    def _abort(self, request_id: int, why: str) -> None:
        """Tell a request's application that it is over (S-F7); END_REQUEST follows when it returns."""
        request = self._requests.get(request_id)
        if request is None:
            return
        log.debug("request %d from %s %s", request_id, describe_peer(self._peer), why)
        request.aborted = True
        for body in (request.body, request.data):
            if body is not None:
                body.abort()
        if not request.started:
            # Never reached the application: answer at once.
            if request in self._runnable:
                self._runnable.remove(request)
            self._end(request, 1)

    def _abort_all(self) -> None:
        for request_id in list(self._requests):
            self._abort(request_id, "lost its connection")
