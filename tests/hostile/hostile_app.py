"""The WSGI application the hostile suite serves: one route per behaviour a test needs.

Each route is chosen by PATH_INFO; ``n`` in the query string is a byte count or a number of seconds.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any
from urllib.parse import parse_qs

StartResponse = Callable[..., Any]

SECRET = "hostile-suite-secret-marker"  # appears in tracebacks only: a debug leak check looks for it


def _n(environ: dict[str, Any], default: float) -> float:
    values = parse_qs(environ.get("QUERY_STRING", "")).get("n")
    return float(values[0]) if values else default


def _text(start_response: StartResponse, text: str, status: str = "200 OK") -> list[bytes]:
    body = text.encode()
    start_response(status, [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]


def _stream(size: int) -> Iterator[bytes]:
    chunk = b"x" * 65536
    left = size
    while left > 0:
        yield chunk[: min(left, len(chunk))]
        left -= len(chunk)


class _CloseRaises:
    def __iter__(self) -> Iterator[bytes]:
        yield b"closing"

    def close(self) -> None:
        raise RuntimeError(SECRET + " in close()")


def _raising_iterable() -> Iterator[bytes]:
    yield b"first chunk"
    raise RuntimeError(SECRET + " while iterating")


def app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[Any]:
    path = environ.get("PATH_INFO", "/")
    if path in ("", "/"):
        return _text(start_response, "ok")
    if path == "/echo":
        body = environ["wsgi.input"].read()
        return _text(start_response, f"{len(body)}")
    if path == "/big":
        size = int(_n(environ, 1 << 20))
        headers = [("Content-Type", "application/octet-stream"), ("Content-Length", str(size))]
        start_response("200 OK", headers)
        return _stream(size)
    if path == "/who":  # which backend answered (tests/integration/test_multihost.py)
        return _text(start_response, os.environ.get("HOSTILE_BACKEND", "-"))
    if path == "/sleep":
        time.sleep(_n(environ, 0.1))
        return _text(start_response, "slept")
    if path == "/raise/call":
        raise RuntimeError(SECRET + " before start_response")
    if path == "/raise/after-start":
        start_response("200 OK", [("Content-Type", "text/plain")])
        raise RuntimeError(SECRET + " after start_response")
    if path == "/raise/iter":
        start_response("200 OK", [("Content-Type", "text/plain")])
        return _raising_iterable()
    if path == "/raise/close":
        start_response("200 OK", [("Content-Type", "text/plain")])
        return _CloseRaises()
    if path == "/raise/read":
        environ["wsgi.input"].read(-1)
        raise RuntimeError(SECRET + " after reading the body")
    if path == "/wrong/str-body":
        start_response("200 OK", [("Content-Type", "text/plain")])
        return ["a str, not bytes"]
    if path == "/wrong/none":
        start_response("200 OK", [("Content-Type", "text/plain")])
        return None  # type: ignore[return-value]  # the fault under test
    if path == "/wrong/status":
        start_response(200, [("Content-Type", "text/plain")])
        return [b"int status"]
    if path == "/wrong/header":
        start_response("200 OK", [("X-Bad", "line\r\nInjected: yes")])
        return [b"bad header"]
    if path == "/wrong/start-twice":
        start_response("200 OK", [("Content-Type", "text/plain")])
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"twice"]
    if path == "/wrong/no-start":
        return [b"never started"]
    if path == "/leak-thread":
        threading.Thread(target=time.sleep, args=(_n(environ, 30),), daemon=True).start()
        return _text(start_response, f"threads {threading.active_count()}")
    return _text(start_response, "no such route", "404 Not Found")
