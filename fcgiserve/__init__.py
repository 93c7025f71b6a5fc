"""fcgiserve: a small, fast, correct FastCGI server for WSGI applications.

Library use::

    import fcgiserve
    fcgiserve.serve(application, port=8080)           # blocks, handles signals

    server = fcgiserve.Server(application, port=0).start()   # in a background thread
    ...
    server.stop()
"""

from fcgiserve.config import Config, ConfigError
from fcgiserve.server import Server, serve
from fcgiserve.wsgi import BodyIncomplete, ClientDisconnected

__all__ = ["BodyIncomplete", "ClientDisconnected", "Config", "ConfigError", "Server", "__version__", "serve"]

__version__ = "0.1.0"
