"""The one WSGI application every Python backend serves, routed by path so one process serves all workloads.

``/hello``: 13 bytes. ``/big``: 100 KiB. ``/echo``: the request body streamed back in 64 KiB chunks (memory
stays flat whatever the body size, if the server streams too). ``/django/``: a view of the tiny Django
project in ``benchsite`` (URL resolution, middleware, a template render). Django is imported at start-up for
every backend alike, so idle RSS figures compare like with like.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterable, Iterator
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "benchsite.settings")

from django.core.wsgi import get_wsgi_application  # type: ignore[import-untyped,unused-ignore]

__all__ = ["BIG_BODY", "HELLO_BODY", "application"]

HELLO_BODY = b"Hello, world!"
BIG_BODY = bytes(range(256)) * 400  # 102400 bytes
ECHO_CHUNK = 65536

StartResponse = Callable[..., Any]
_django = get_wsgi_application()


def _echo(environ: dict[str, Any]) -> Iterator[bytes]:
    stream = environ["wsgi.input"]
    remaining = int(environ.get("CONTENT_LENGTH") or 0)
    while remaining > 0:
        chunk = stream.read(min(ECHO_CHUNK, remaining))
        if not chunk:
            return
        remaining -= len(chunk)
        yield chunk


def application(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
    """Dispatch on PATH_INFO; unknown paths are 404 so a misrouted workload shows up as errors."""
    path = environ.get("PATH_INFO", "")
    if path == "/hello":
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "13")])
        return [HELLO_BODY]
    if path == "/big":
        start_response("200 OK", [("Content-Type", "application/octet-stream"), ("Content-Length", "102400")])
        return [BIG_BODY]
    if path == "/echo":
        length = environ.get("CONTENT_LENGTH") or "0"
        start_response("200 OK", [("Content-Type", "application/octet-stream"), ("Content-Length", length)])
        return _echo(environ)
    if path.startswith("/django/"):
        return _django(environ, start_response)  # type: ignore[no-any-return]
    start_response("404 Not Found", [("Content-Type", "text/plain"), ("Content-Length", "9")])
    return [b"not found"]
