"""fcgiserve: a small, fast, correct FastCGI server for WSGI applications.

Library use::

    import fcgiserve
    fcgiserve.serve(application, port=8080)           # blocks, handles signals

    server = fcgiserve.Server(application, port=0).start()   # in a background thread
    ...
    server.stop()
"""

from fcgiserve.config import Config, ConfigError
from fcgiserve.roles import Allow, Deny, authorizer, filter_input
from fcgiserve.server import Server, serve
from fcgiserve.wsgi import BodyIncomplete, ClientDisconnected

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
