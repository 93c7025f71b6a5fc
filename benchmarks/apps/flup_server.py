"""Run flup 1.0.3 over the benchmark app (in the benchmark venv):
``flup_server.py threaded|prefork 127.0.0.1:PORT|/path/to/unix.sock``."""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from bench_app import application


def main() -> None:
    method, where = sys.argv[1], sys.argv[2]
    # flup binds a unix socket when bindAddress is a string, TCP when a (host, port) tuple.
    address: str | tuple[str, int] = where
    if not where.startswith("/"):
        address = ("127.0.0.1", int(where.rpartition(":")[2]))
    if method == "threaded":
        from flup.server.fcgi import WSGIServer  # type: ignore[import-not-found,unused-ignore]

        WSGIServer(application, bindAddress=address, maxThreads=50).run()
    else:
        from flup.server.fcgi_fork import WSGIServer as ForkServer  # type: ignore[import-not-found,unused-ignore]

        ForkServer(application, bindAddress=address, minSpare=2, maxSpare=2, maxChildren=2).run()


if __name__ == "__main__":
    main()
