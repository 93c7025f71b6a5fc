"""``flup.server.fcgi``'s threaded ``WSGIServer``, served by fcgiserve: change the import line, nothing else.

    from fcgiserve.compat.flup import WSGIServer      # was: from flup.server.fcgi import WSGIServer
    WSGIServer(application, bindAddress=("127.0.0.1", 8080)).run()

The module is named after the package it replaces, and ``flup_fork`` after ``flup.server.fcgi_fork``, so the
import line is the only edit. Differences from flup: docs/migrating-from-flup.md.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from fcgiserve.compat.flup_base import (
    FCGI_AUTHORIZER,
    FCGI_FILTER,
    FCGI_LISTENSOCK_FILENO,
    FCGI_RESPONDER,
    BaseWSGIServer,
    BindAddress,
)
from fcgiserve.config import Config
from fcgiserve.server import WSGIApp

__all__ = ["FCGI_AUTHORIZER", "FCGI_FILTER", "FCGI_LISTENSOCK_FILENO", "FCGI_RESPONDER", "WSGIServer"]


class WSGIServer(BaseWSGIServer):
    """flup's threaded server: one process, a pool of threads (fcgiserve ``method=threaded``).

    flup's arguments with flup's defaults, except ``maxThreads``: flup's was unbounded, None here means
    fcgiserve's default (50). ``multithreaded`` / ``multiprocess`` are accepted and ignored: fcgiserve
    publishes the real ``wsgi.multithread`` / ``wsgi.multiprocess``. ``config`` (not in flup) is a fcgiserve
    ``Config`` to start from, for the options flup never had.
    """

    method = "threaded"

    def __init__(
        self,
        application: WSGIApp,
        environ: Mapping[str, Any] | None = None,
        multithreaded: bool = True,
        multiprocess: bool = False,
        bindAddress: BindAddress = None,
        umask: int | None = None,
        multiplexed: bool = False,
        debug: bool = False,
        roles: Iterable[int] = (FCGI_RESPONDER,),
        forceCGI: bool = False,
        minSpare: int = 1,
        maxSpare: int = 5,
        maxThreads: int | None = None,
        config: Config | None = None,
    ) -> None:
        del multithreaded, multiprocess  # flup only echoed them into the environ
        pool: dict[str, object] = {"minspare": minSpare, "maxspare": maxSpare}
        if maxThreads is not None:
            pool["maxchildren"] = maxThreads
        super().__init__(
            application, environ, bindAddress, umask, multiplexed, debug, roles, forceCGI, config, pool
        )
