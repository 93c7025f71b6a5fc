"""``flup.server.fcgi_fork``'s prefork ``WSGIServer``, served by fcgiserve: change the import line only.

    from fcgiserve.compat.flup_fork import WSGIServer  # was: from flup.server.fcgi_fork import WSGIServer
    WSGIServer(application, bindAddress="/run/app.sock", maxChildren=8).run()

Named after the flup module it replaces (see ``fcgiserve.compat.flup``). Differences from flup:
docs/migrating-from-flup.md.
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
    """flup's prefork server: a master and single-threaded children (fcgiserve ``method=prefork`` with
    ``threads=1``: code written for fcgi_fork need not be thread-safe, and still need not be).

    flup's arguments and defaults. SIGHUP starts a new generation of children while ``run()`` keeps serving
    (flup returned True and left the restart to the script); ``run()`` returns False after SIGTERM/SIGINT.
    """

    method = "prefork"

    def __init__(
        self,
        application: WSGIApp,
        environ: Mapping[str, Any] | None = None,
        bindAddress: BindAddress = None,
        umask: int | None = None,
        multiplexed: bool = False,
        debug: bool = False,
        roles: Iterable[int] = (FCGI_RESPONDER,),
        forceCGI: bool = False,
        minSpare: int = 1,
        maxSpare: int = 5,
        maxChildren: int = 50,
        maxRequests: int = 0,
        config: Config | None = None,
    ) -> None:
        pool = {
            "minspare": minSpare,
            "maxspare": maxSpare,
            "maxchildren": maxChildren,
            "maxrequests": maxRequests,
            "threads": 1,
        }
        super().__init__(
            application, environ, bindAddress, umask, multiplexed, debug, roles, forceCGI, config, pool
        )
