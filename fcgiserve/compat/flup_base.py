"""What the two flup shims share (flup kept it in ``flup.server.fcgi_base``, hence the name).

A flup ``WSGIServer(...)`` is translated into a ``Config`` plus two additions Config cannot say (the roles
served and the extra environ), then run by ``server.Server`` like any other fcgiserve server. Each difference
from flup is listed in docs/migrating-from-flup.md.
"""

from __future__ import annotations

import dataclasses
import os
import socket
from collections.abc import Iterable, Mapping
from typing import Any

from fcgiserve.config import Config, ConfigError, Method
from fcgiserve.handler import HandlerOptions
from fcgiserve.pools.base import StopReason
from fcgiserve.protocol import Role
from fcgiserve.server import Server, WSGIApp

__all__ = [
    "FCGI_AUTHORIZER",
    "FCGI_FILTER",
    "FCGI_LISTENSOCK_FILENO",
    "FCGI_RESPONDER",
    "BaseWSGIServer",
    "BindAddress",
]

# flup's module-level names for the roles (FastCGI spec 8, FCGI_BeginRequestBody.role).
FCGI_RESPONDER = int(Role.RESPONDER)
FCGI_AUTHORIZER = int(Role.AUTHORIZER)
FCGI_FILTER = int(Role.FILTER)
FCGI_LISTENSOCK_FILENO = 0

BindAddress = tuple[str, int] | str | None


class BaseWSGIServer:
    """flup's constructor arguments mapped onto a Config; ``run()`` returns True after SIGHUP, like flup."""

    method: Method = "threaded"  # each shim sets its own

    def __init__(
        self,
        application: WSGIApp,
        environ: Mapping[str, Any] | None = None,
        bindAddress: BindAddress = None,  # flup's spelling, so that old calls keep working
        umask: int | None = None,
        multiplexed: bool = False,
        debug: bool = False,
        roles: Iterable[int] = (FCGI_RESPONDER,),
        forceCGI: bool = False,
        config: Config | None = None,
        pool: Mapping[str, object] | None = None,
    ) -> None:
        """flup's common arguments; ``pool`` holds the subclass's pool options as fcgiserve option names."""
        if forceCGI:
            raise ConfigError("forceCGI=True is not supported: fcgiserve speaks FastCGI only, never CGI")
        try:
            self.roles = frozenset(Role(r) for r in roles)
        except ValueError:
            raise ConfigError(
                f"roles must be FCGI_RESPONDER, FCGI_AUTHORIZER or FCGI_FILTER (got {roles!r})"
            ) from None
        if not self.roles:
            raise ConfigError("roles must name at least one role")
        self.application = application
        self.environ = dict(environ or {})
        self.bindAddress = bindAddress
        values: dict[str, object] = {"method": self.method, "multiplexed": bool(multiplexed), "debug": debug}
        values |= self._listen_options(bindAddress, umask)
        values |= _fit_spares(dict(pool or {}))
        base = config or Config()
        self.config = base.replace(**values)

    @staticmethod
    def _listen_options(bind: BindAddress, umask: int | None) -> dict[str, object]:
        if bind is None:
            return {}  # fd 0, checked in run(): a spawned server may be constructed before the fork
        if isinstance(bind, str):
            # flup applied umask only around bind(): it is the socket file's mode, not the process umask.
            return {"socket": bind} | ({} if umask is None else {"socket_mode": 0o777 & ~umask})
        if isinstance(bind, tuple) and len(bind) == 2:
            return {"host": bind[0], "port": bind[1]}
        raise ConfigError(f"bindAddress must be (host, port), a unix socket path or None (got {bind!r})")

    def run(self) -> bool:
        """Serve in the foreground. True when stopped by SIGHUP (the caller may restart), False otherwise."""
        config = self.config
        if self.bindAddress is None:
            # flup's None: the web server passed the listening socket on fd 0. A dup is served so that a
            # restart after SIGHUP (flup scripts loop on run()) finds fd 0 still open.
            if not _is_listening_socket(FCGI_LISTENSOCK_FILENO):
                raise ConfigError(
                    "bindAddress=None means the web server passes the listening socket on fd 0, but fd 0 "
                    "is not a listening socket (flup fell back to CGI here; fcgiserve does not): give "
                    "bindAddress"
                )
            config = config.replace(fd=os.dup(FCGI_LISTENSOCK_FILENO))
        server = Server(self.application, config=config)
        server.adjust_handler_options = self._adjust
        status = server.run(install_signals=True)
        if status:
            raise SystemExit(status)
        return server.stop_reason is StopReason.RELOAD

    def _adjust(self, options: HandlerOptions) -> HandlerOptions:
        return dataclasses.replace(options, roles=self.roles, extra_environ=tuple(self.environ.items()))


def _is_listening_socket(fd: int) -> bool:
    try:
        copy = os.dup(fd)  # probing a dup never closes the real fd
    except OSError:
        return False
    try:
        probe = socket.socket(fileno=copy)
    except OSError:  # not a socket at all
        os.close(copy)
        return False
    try:
        return probe.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN) == 1
    finally:
        probe.close()


def _fit_spares(pool: dict[str, object]) -> dict[str, object]:
    """flup silently capped the spares at the maximum (maxChildren=3 with the default maxSpare=5 worked);
    fcgiserve's Config refuses that combination, so the shim caps them as flup did."""
    most, spare_max, spare_min = pool.get("maxchildren"), pool.get("maxspare"), pool.get("minspare")
    if isinstance(most, int) and isinstance(spare_max, int) and spare_max > most:
        pool["maxspare"] = spare_max = most
    if isinstance(spare_min, int) and isinstance(spare_max, int) and spare_min > spare_max:
        pool["minspare"] = spare_max
    return pool
