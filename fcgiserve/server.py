"""Wiring: configuration -> application, listening sockets, connection factory, pool, pidfile, exit status.

This is the one module (with cli, contrib and compat) that knows both the handler and the pools; it holds
no server logic of its own, only the order in which the parts are built and torn down. The CLI, the Django
``runfcgi`` command, the flup shim and library users all come through ``Server``.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys
import threading
import traceback
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from fcgiserve.apploader import AppLoadError, load_app
from fcgiserve.config import Config, ConfigError
from fcgiserve.handler import ConnectionFactory, HandlerOptions
from fcgiserve.listeners import (
    AllowList,
    Listener,
    ListenerError,
    export_for_reexec,
    is_loopback_bind,
    open_listeners,
)
from fcgiserve.logs import reopen as reopen_logs
from fcgiserve.operations import RequestOperations, SharedCounters
from fcgiserve.pidfile import Pidfile, PidfileError
from fcgiserve.pools.base import PoolEvent, PoolExit, PoolSettings, StopReason
from fcgiserve.pools.handoff import adopt_kept, keep_across_exec
from fcgiserve.pools.threaded import ThreadedPool
from fcgiserve.protocol import ConnectionSettings, ProtocolLimits
from fcgiserve.readyfd import ReadyFd, ReadyFdError
from fcgiserve.sdnotify import ServiceNotifier, WatchdogPinger, watchdog_interval
from fcgiserve.status_sources import build_operations, prefork_stats_provider, threaded_stats_provider
from fcgiserve.wsgi import WSGIOptions

if TYPE_CHECKING:
    # Imported where used: a process loads only the pool and the protocol it runs (less resident memory).
    from fcgiserve.pools.prefork import PreforkPool
    from fcgiserve.scgi_handler import SCGIConnectionFactory

__all__ = ["Server", "serve"]

_EARLY_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1)

log = logging.getLogger("fcgiserve")

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]

EXIT_OK = 0
EXIT_APP_LOAD = 3  # the application failed to import
EXIT_STARTUP = 4  # the pidfile or a listening socket could not be set up


class StartupError(Exception):
    """The server could not start; the message is one line, the exit status is attached."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


class Server:
    """A FastCGI server for one WSGI application; ``run()`` blocks, ``start()``/``stop()`` are for code.

    ``app`` is a WSGI callable or an import spec ("pkg.module:callable"); without it ``config.app`` is used.
    """

    def __init__(
        self, app: WSGIApp | str | None = None, config: Config | None = None, **options: Any
    ) -> None:
        config = config or Config()
        if options:
            config = config.replace(**options)
        if isinstance(app, str):
            config = config.replace(app=app)
            app = None
        if app is None and config.app is None:
            raise ConfigError("no application given: pass a WSGI callable or MODULE:CALLABLE")
        self.config = config
        self._app = app
        self._pool: ThreadedPool | PreforkPool | None = None
        self._listeners: list[Listener] = []
        self._ready = threading.Event()
        self._thread: threading.Thread | None = None
        self._kept: list[
            socket.socket
        ] = []  # kept-alive connections a threaded reload keeps for the next pool
        self._stop_requested: bool | None = None  # graceful flag, if stop() came before the pool existed
        self.exit_status: int | None = None
        self._early_signals: list[int] = []  # signals that arrived before the pool could handle them
        self.stop_reason: StopReason | None = None  # why the last run() stopped (flup shim: HUP -> True)
        # The flup shim sets this to add what Config cannot say (roles, extra environ) to every connection.
        self.adjust_handler_options: Callable[[HandlerOptions], HandlerOptions] | None = None
        # systemd's view (sdnotify.py): only a server that owns its process (run() with signals) speaks to
        # $NOTIFY_SOCKET; one embedded with start() leaves that to its host.
        self._notifier = ServiceNotifier({})
        self._ready_fd = ReadyFd(None)  # --ready-fd (readyfd.py), set up by run()
        self._counters = SharedCounters()  # the status page's request counters (operations.py)

    # -- library API --------------------------------------------------------------------------------------

    @property
    def addresses(self) -> list[Any]:
        """The bound addresses (after ``start()``), e.g. ``[("127.0.0.1", 8080)]`` or a unix path."""
        return [listener.sock.getsockname() for listener in self._listeners]

    def start(self, timeout: float = 30.0) -> Server:
        """Serve in a background thread (no signal handlers); return once accepting connections."""
        self._thread = threading.Thread(target=self._run_in_thread, name="fcgiserve-server", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            raise RuntimeError("fcgiserve did not become ready in time")
        if self.exit_status not in (None, EXIT_OK):
            raise RuntimeError(f"fcgiserve failed to start (exit status {self.exit_status})")
        return self

    def stop(self, graceful: bool = True, timeout: float = 30.0) -> None:
        """Stop a server started with ``start()`` (or running ``run()`` in another thread)."""
        pool = self._pool
        if pool is None:
            self._stop_requested = graceful
        else:
            pool.request_stop(graceful)
        if self._thread is not None:
            self._thread.join(timeout)

    def _run_in_thread(self) -> None:
        try:
            self.exit_status = self.run(install_signals=False)
        finally:
            self._ready.set()

    # -- the serving life -------------------------------------------------------------------------------

    def run(self, install_signals: bool = True, reexec_argv: list[str] | None = None) -> int:
        """Serve until stopped; return the process exit status.

        With ``reexec_argv`` (the CLI passes the original command line), a reload of the threaded pool
        re-executes the process in place, keeping its pid and its listening sockets.
        """
        config = self.config
        _log_fitted_defaults(config)
        start_dir = os.getcwd()
        pidfile = None
        if install_signals:
            self._notifier = ServiceNotifier()
            self._hold_early_signals()
        self._ready_fd = ReadyFd(config.ready_fd)
        try:
            self._check_ready_fd()
            self._prepare_process()
            pidfile = self._create_pidfile()  # first: a second instance is refused before any work
            app = self._load_application()
        except StartupError as exc:
            log.error("%s", exc)
            self._ready.set()
            if pidfile is not None:
                pidfile.remove()
            return exc.status
        try:
            try:
                self._listeners = open_listeners(config)
                self._check_ready_fd()
            except (ListenerError, OSError) as exc:
                log.error("cannot listen: %s", exc)
                self._ready.set()
                return EXIT_STARTUP
            except StartupError as exc:
                log.error("%s", exc)
                self._ready.set()
                return exc.status
            self._warn_if_exposed()
            watchdog = self._start_watchdog()
            try:
                reason = self._serve(app, keep_on_reload=reexec_argv is not None)
            except StartupError as exc:
                log.error("%s", exc)
                return exc.status
            finally:
                if watchdog is not None:
                    watchdog.stop()
            if reason is StopReason.RELOAD and reexec_argv is not None and not self._stop_during_reload():
                self._reexec(reexec_argv, start_dir)  # does not return
            self._notifier.stopping()
            return EXIT_OK
        finally:
            self._close_kept()  # a stop after all: nobody will serve what a reload kept
            for listener in self._listeners:
                listener.close(unlink=True)
            if pidfile is not None:
                pidfile.remove()

    def _check_ready_fd(self) -> None:
        """Before the application loads, and again once the listeners are open (an inherited listener may
        have the number): an fd that cannot take the readiness newline stops the start."""
        try:
            self._ready_fd.check({listener.fileno() for listener in self._listeners})
        except ReadyFdError as exc:
            raise StartupError(str(exc), EXIT_STARTUP) from None

    def _prepare_process(self) -> None:
        config = self.config
        if config.thread_stack_size:
            try:
                threading.stack_size(config.thread_stack_size)
            except (ValueError, RuntimeError) as exc:
                raise StartupError(
                    f"--thread-stack-size {config.thread_stack_size}: {exc}", EXIT_STARTUP
                ) from None
        if config.umask is not None:
            os.umask(config.umask)
        if config.chdir is not None:
            try:
                os.chdir(config.chdir)
            except OSError as exc:
                raise StartupError(f"--chdir {config.chdir}: {exc.strerror}", EXIT_STARTUP) from None

    def _load_application(self) -> WSGIApp | None:
        """The application, or None when prefork children import it themselves (checked first, in a fork)."""
        if self._app is not None:
            return self._app
        config = self.config
        assert config.app is not None
        if config.method == "prefork" and not config.preload:
            _check_import_in_child(config.app)
            return None
        try:
            return load_app(config.app)
        except AppLoadError as exc:
            raise StartupError(f"cannot load the application: {_explain(exc)}", EXIT_APP_LOAD) from None

    def _create_pidfile(self) -> Pidfile | None:
        if self.config.pidfile is None:
            return None
        pidfile = Pidfile(self.config.pidfile)
        try:
            pidfile.create(os.getpid())
        except (PidfileError, OSError) as exc:
            raise StartupError(str(exc), EXIT_STARTUP) from None
        return pidfile

    def _warn_if_exposed(self) -> None:
        allow = AllowList.from_config(self.config)
        for listener in self._listeners:
            if not allow.active and not is_loopback_bind(listener):
                log.warning(
                    "listening on %s with no --allow-from list: FastCGI has no authentication, so anyone who "
                    "can reach this address can run requests as this application",
                    listener.description,
                )

    def _serve(self, app: WSGIApp | None, keep_on_reload: bool = False) -> StopReason:
        """Run pools until a stop. ``keep_on_reload``: the caller re-executes on RELOAD, so the threaded pool
        keeps its clean kept-alive connections for the new image (``self._kept``)."""
        config = self.config
        # Kept-alive connections a previous image of this process kept across exec (threaded reload).
        adopted = adopt_kept(os.environ)
        settings = pool_settings(config)
        socks = [listener.sock for listener in self._listeners]
        options = handler_options(config)
        if self.adjust_handler_options is not None:
            options = self.adjust_handler_options(options)
        while True:
            # Access log, status/ping, slow requests; created before any fork so that children share the
            # counters (operations.SharedCounters).
            ops = build_operations(config, self._counters)
            if config.method == "prefork":
                from fcgiserve.pools.prefork import PreforkPool

                prefork = PreforkPool(
                    socks,
                    _factory_maker(app, config.app, options, ops, config.protocol),
                    settings,
                    on_reopen_logs=reopen_logs,
                    on_event=self._on_pool_event,
                )
                if ops is not None:
                    ops.stats_provider = prefork_stats_provider(prefork, ops, socks)
                pool: ThreadedPool | PreforkPool = prefork
            else:
                assert app is not None
                factory = _connection_factory(config.protocol, app, options, ops)
                pool = ThreadedPool(
                    socks,
                    factory,
                    settings,
                    reopen_logs,
                    on_event=self._on_pool_event,
                    keep_on_reload=keep_on_reload or self._thread is not None,
                    adopted=adopted,
                )
                adopted = []
                if ops is not None:
                    ops.stats_provider = threaded_stats_provider(ops, socks)
            self._pool = pool
            if self._stop_requested is not None:
                self._pool.request_stop(self._stop_requested)
            for listener in self._listeners:
                log.info(
                    "fcgiserve %s pool serving on %s (pid %d)",
                    config.method,
                    listener.description,
                    os.getpid(),
                )
            watcher = threading.Thread(target=self._signal_ready, daemon=True)
            watcher.start()
            try:
                reason = self._pool.run(install_signals=self._thread is None)
            except PoolExit as exc:  # the first prefork generation could not start; already logged
                self._ready.set()
                raise StartupError(exc.message or "the pool could not start", exc.status) from None
            if isinstance(pool, ThreadedPool):
                self._kept = pool.kept
            if reason is StopReason.RELOAD and self._thread is not None:
                log.info("reload requested in library mode: restarting the pool with the same application")
                adopted = [(sock, _peer_of(sock)) for sock in self._kept]
                self._kept = []
                continue
            log.info("fcgiserve stopped (%s)", reason.value)
            self.stop_reason = reason
            return reason

    def _signal_ready(self) -> None:
        pool = self._pool
        if pool is not None and pool.ready.wait(60):
            self._ready.set()
            self._notifier.ready(self._status_line())
            self._ready_fd.ready()
            self._replay_early_signals()

    def _hold_early_signals(self) -> None:
        """Until the pool handles signals, record them instead of dying of them, then replay them.

        A supervisor may send HUP or TERM while the application is still importing (svc -h right after
        svc -u): the default action would kill the process, or leave it half started.
        """
        for signum in _EARLY_SIGNALS:
            signal.signal(signum, self._record_early_signal)
        # A re-executed process starts with them blocked (_stop_during_reload): what is pending arrives now.
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _EARLY_SIGNALS)

    def _stop_during_reload(self) -> bool:
        """Block the signals until the new process image handles them (the mask survives exec, so nothing
        sent meanwhile is lost or fatal); True when a stop signal came after the pool let go of them: then
        this process stops instead of reloading (a supervisor's HUP at once followed by TERM)."""
        signal.pthread_sigmask(signal.SIG_BLOCK, _EARLY_SIGNALS)
        stops = [s for s in self._early_signals if s in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT)]
        if stops:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, _EARLY_SIGNALS)
            log.info("%s arrived during the reload: stopping instead", signal.Signals(stops[0]).name)
        return bool(stops)

    def _record_early_signal(self, signum: int, frame: object) -> None:
        self._early_signals.append(signum)  # no logging in a signal handler

    def _replay_early_signals(self) -> None:
        while self._early_signals:
            os.kill(os.getpid(), self._early_signals.pop(0))

    def _on_pool_event(self, event: PoolEvent) -> None:
        """Relay the pool's life to systemd (a no-op without $NOTIFY_SOCKET)."""
        if event is PoolEvent.READY:
            self._notifier.ready(self._status_line())
        elif event is PoolEvent.RELOADING:
            self._notifier.reloading()
        elif event is PoolEvent.STOPPING:
            self._notifier.stopping()
        elif event is PoolEvent.MAX_CHILDREN_REACHED:
            self._counters.bump("max children reached")

    def _status_line(self) -> str:
        where = ", ".join(listener.description for listener in self._listeners)
        return f"serving on {where} ({self.config.method}, pid {os.getpid()})"

    def _start_watchdog(self) -> WatchdogPinger | None:
        interval = watchdog_interval() if self._notifier.enabled else None
        if interval is None:
            return None
        log.info("systemd watchdog: pinging every %gs", interval / 2)
        # The ping proves the serving loop still runs: none while no pool exists (start-up, re-exec).
        return WatchdogPinger(self._notifier, interval, lambda: self._pool is not None).start()

    def _close_kept(self) -> None:
        """A stop after all (TERM during a reload's drain): nobody serves the kept connections."""
        for sock in self._kept:
            sock.close()
        self._kept = []

    def _reexec(self, argv: list[str], start_dir: str) -> None:
        env = {**os.environ, **export_for_reexec(self._listeners), **keep_across_exec(self._kept)}
        env.update(self._ready_fd.export_for_reexec())
        self._notifier.reloading()  # no-op when HUP already said so; max_requests recycling says it here
        log.info("reloading: re-executing %s in place (pid %d)", " ".join(argv), os.getpid())
        os.chdir(start_dir)
        sys.stdout.flush()
        sys.stderr.flush()
        os.execve(sys.executable, [sys.executable, *argv], env)


def _peer_of(sock: socket.socket) -> Any:
    try:
        return sock.getpeername()
    except OSError:
        return ""  # gone meanwhile: serving it reads EOF and closes it


def _log_fitted_defaults(config: Config) -> None:
    """One line when defaults the user did not set were moved to fit the options they did set."""
    moved = config.fitted_defaults()
    if moved:
        log.info(
            "defaults fitted to the options given: %s; "
            "in effect: --minspare %d --maxspare %d --maxchildren %d",
            ", ".join(f"{flag} {value} (default {default})" for flag, (default, value) in moved.items()),
            config.minspare,
            config.maxspare,
            config.effective_maxchildren,
        )


def _factory_maker(
    app: WSGIApp | None,
    spec: str | None,
    options: HandlerOptions,
    operations: RequestOperations | None = None,
    protocol: str = "fcgi",
) -> Callable[[], ConnectionFactory | SCGIConnectionFactory]:
    """What a prefork child calls after the fork: the preloaded app's factory, or a fresh import."""

    def make_factory() -> ConnectionFactory | SCGIConnectionFactory:
        loaded = app if app is not None else load_app(spec or "")
        return _connection_factory(protocol, loaded, options, operations)

    return make_factory


def _connection_factory(
    protocol: str, app: WSGIApp, options: HandlerOptions, operations: RequestOperations | None
) -> ConnectionFactory | SCGIConnectionFactory:
    """FastCGI or SCGI (--protocol): the same pools, options and WSGI adapter serve either."""
    factory: ConnectionFactory | SCGIConnectionFactory
    if protocol == "scgi":
        from fcgiserve.scgi_handler import SCGIConnectionFactory

        factory = SCGIConnectionFactory(app, options)
    else:
        factory = ConnectionFactory(app, options)
    factory.operations = operations
    return factory


def pool_settings(config: Config) -> PoolSettings:
    return PoolSettings(
        min_spare=config.minspare,
        max_spare=config.maxspare,
        max_children=config.effective_maxchildren,
        max_requests=config.maxrequests,
        max_requests_jitter=config.maxrequests_jitter,
        timeout=config.timeout,
        graceful_timeout=config.graceful_timeout,
        threads_per_child=config.threads,
        idle_timeout=config.idle_timeout,
        params_timeout=config.params_timeout,
        max_connections=config.max_connections,
    )


def handler_options(config: Config) -> HandlerOptions:
    """What every connection needs; GET_VALUES answers are computed here from the real pool limits."""
    prefork = config.method == "prefork"
    mpxs = config.effective_multiplexed
    if prefork:
        from fcgiserve.pools.prefork import prefork_capacity

        max_conns, max_reqs = prefork_capacity(pool_settings(config))
    else:
        max_reqs = config.effective_maxchildren
        max_conns = config.max_connections or max_reqs
    allow = AllowList.from_config(config)
    return HandlerOptions(
        wsgi=WSGIOptions(
            script_name=config.script_name,
            debug=config.debug,
            multithread=not prefork or config.threads > 1,
            multiprocess=prefork,
            spool_threshold=config.spool_threshold,
        ),
        settings=ConnectionSettings(max_conns=max_conns, max_reqs=max_reqs, mpxs_conns=mpxs),
        limits=ProtocolLimits(
            max_params_bytes=config.max_params_bytes,
            max_params_count=config.max_params_count,
            max_requests=config.max_requests_per_connection if mpxs else 1,
        ),
        max_body_size=config.max_body_size,
        params_timeout=config.params_timeout,
        write_timeout=config.write_timeout,
        allowed=allow.allowed if allow.active else None,
        # Per process: a prefork child runs at most its threads' worth of requests at once.
        max_in_flight=config.threads if prefork else max_reqs,
    )


# Most of a load failure's one-line reason that a prefork import check sends: less than any pipe holds.
_REASON_BYTES = 4096


def _explain(exc: AppLoadError) -> str:
    """The one-line reason, after printing the traceback of the cause unless the message says it all."""
    if exc.complete:
        return str(exc)
    traceback.print_exception(exc.__cause__ or exc, file=sys.stderr)
    return f"{exc} (traceback above)"


def _check_import_in_child(spec: str) -> None:
    """prefork without --preload: prove the application imports before any socket is opened.

    The import runs in a throw-away child so that the master stays free of application code (which is
    the point of not preloading), yet a broken import still fails fast, with the same one-line reason as
    in the other methods: the child writes it to a pipe (a few KiB at most, never more than the pipe
    holds, so the child cannot block on it) and the master reports it.
    """
    reader, writer = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child's exit status is what is tested
        status = 0
        try:
            load_app(spec)
        except AppLoadError as exc:
            os.write(writer, _explain(exc).encode(errors="replace")[:_REASON_BYTES])
            status = 1
        except BaseException:
            traceback.print_exc()
            status = 1
        finally:
            sys.stderr.flush()
            os._exit(status)
    os.close(writer)
    try:
        _, status = os.waitpid(pid, 0)
        # Not blocking: a process the application started at import time may still hold the write end.
        os.set_blocking(reader, False)
        try:
            reason = os.read(reader, _REASON_BYTES).decode(errors="replace")
        except BlockingIOError:
            reason = ""
    finally:
        os.close(reader)
    if os.waitstatus_to_exitcode(status) != 0:
        reason = reason or f"{spec!r} (traceback above)"
        raise StartupError(f"cannot load the application: {reason}", EXIT_APP_LOAD)


def serve(app: WSGIApp | str, **options: Any) -> int:
    """Serve ``app`` until SIGTERM/SIGINT (blocking, in the foreground); return the exit status.

    ``options`` are the option names of ``fcgiserve --help`` with underscores, e.g.
    ``serve(application, port=8080, method="prefork", maxchildren=4)``.
    """
    return Server(app, **options).run()
