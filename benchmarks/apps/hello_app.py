"""The smallest WSGI app: bench_app's ``/hello`` answer without Django, for benchmarks/instructions.py, where
every instruction of start-up runs under callgrind (about 50 times slower) and only the request counts."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

__all__ = ["application"]

HELLO_BODY = b"Hello, world!"


def application(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "13")])
    return [HELLO_BODY]
