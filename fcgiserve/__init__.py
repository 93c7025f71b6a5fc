"""fcgiserve: a small, fast, correct FastCGI server for WSGI applications.

Library use::

    import fcgiserve
    fcgiserve.serve(application, port=8080)           # blocks, handles signals

    server = fcgiserve.Server(application, port=0).start()   # in a background thread
    ...
    server.stop()
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fcgiserve.config import Config, ConfigError
    from fcgiserve.roles import Allow, Deny, authorizer, filter_input
    from fcgiserve.server import Server, serve
    from fcgiserve.wsgi import BodyIncomplete, ClientDisconnected

# Imported on first use (PEP 562): a process imports only the modules it runs (a threaded server never
# loads the prefork, SCGI or systemd code), which keeps the resident memory of every process small.
_EXPORTS = {
    "Allow": "fcgiserve.roles",
    "BodyIncomplete": "fcgiserve.wsgi",
    "ClientDisconnected": "fcgiserve.wsgi",
    "Config": "fcgiserve.config",
    "ConfigError": "fcgiserve.config",
    "Deny": "fcgiserve.roles",
    "Server": "fcgiserve.server",
    "authorizer": "fcgiserve.roles",
    "filter_input": "fcgiserve.roles",
    "serve": "fcgiserve.server",
}


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'fcgiserve' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


__all__ = [
    "Allow",
    "BodyIncomplete",
    "ClientDisconnected",
    "Config",
    "ConfigError",
    "Deny",
    "Server",
    "__version__",
    "authorizer",
    "filter_input",
    "serve",
]

__version__ = "0.1.0"
