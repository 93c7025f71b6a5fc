"""Helpers for the wsgi tests: a RequestIO that records what it is given, CGI response parsing, params."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from fcgiserve.wsgi import ClientDisconnected, RequestBody, WSGIOptions, build_environ, run_application


class RecordingIO:
    """A wsgi.RequestIO keeping every write; raises ClientDisconnected from write number ``fail_at`` on."""

    def __init__(self, fail_at: int | None = None, errors_fail: bool = False) -> None:
        self.writes: list[bytes] = []
        self.errors: list[bytes] = []
        self.fail_at = fail_at
        self.errors_fail = errors_fail

    def write(self, data: bytes, last: bool = False) -> None:
        assert isinstance(data, bytes)
        if self.fail_at is not None and len(self.writes) + 1 >= self.fail_at:
            raise ClientDisconnected("peer closed the connection")
        self.writes.append(data)

    def write_errors(self, data: bytes) -> None:
        assert isinstance(data, bytes)
        if self.errors_fail:
            raise ClientDisconnected("peer closed the connection")
        self.errors.append(data)

    @property
    def output(self) -> bytes:
        return b"".join(self.writes)


def parse_cgi(output: bytes) -> tuple[str, list[tuple[str, str]], bytes]:
    """Split CGI response bytes into (status, headers, body); written without the code under test."""
    head, sep, body = output.partition(b"\r\n\r\n")
    assert sep, f"no end of headers in {output!r}"
    lines = head.decode("latin-1").split("\r\n")
    assert lines[0].startswith("Status: "), lines[0]
    headers = [tuple(line.split(": ", 1)) for line in lines[1:]]
    return lines[0][len("Status: ") :], headers, body  # type: ignore[return-value]


def environ_for(
    pairs: Iterable[tuple[str, str]], options: WSGIOptions, role: str = "RESPONDER", request_id: int = 0
) -> dict[str, Any]:
    """``build_environ`` as the handler calls it with ``ParamsComplete``: the params as a dict, and every
    pair in order only when a name repeats."""
    text = list(pairs)
    params = dict(text)
    return build_environ(params, options, role, request_id, text if len(params) != len(text) else None)


def finished_body(data: bytes = b"", expected: int | None = None, threshold: int = 1 << 20) -> RequestBody:
    body = RequestBody(len(data) if expected is None else expected, threshold)
    body.feed(data)
    body.finish()
    return body


def run(
    app: Any,
    pairs: Iterable[tuple[str, str]] = (("REQUEST_METHOD", "GET"), ("REQUEST_URI", "/")),
    *,
    body: RequestBody | None = None,
    io: RecordingIO | None = None,
    options: WSGIOptions | None = None,
    role: str = "RESPONDER",
    data: RequestBody | None = None,
) -> tuple[int, RecordingIO]:
    """Build an environ from ``pairs`` and run ``app``; return (appStatus, the io)."""
    options = options or WSGIOptions()
    io = io if io is not None else RecordingIO()
    environ = environ_for(pairs, options, role, request_id=1)
    status = run_application(app, environ, body or finished_body(), io, options, data)
    return status, io


# What Debian's nginx sends with `include fastcgi_params;` (the names and order of /etc/nginx/fastcgi_params,
# the values of `curl http://127.0.0.1:8080/app/caf%C3%A9?q=1`), then the request headers nginx forwards.
NGINX_STOCK = (
    ("QUERY_STRING", "q=1"),
    ("REQUEST_METHOD", "GET"),
    ("CONTENT_TYPE", ""),
    ("CONTENT_LENGTH", ""),
    ("SCRIPT_NAME", "/app/caf\xc3\xa9"),
    ("REQUEST_URI", "/app/caf%C3%A9?q=1"),
    ("DOCUMENT_URI", "/app/caf\xc3\xa9"),
    ("DOCUMENT_ROOT", "/usr/share/nginx/html"),
    ("SERVER_PROTOCOL", "HTTP/1.1"),
    ("REQUEST_SCHEME", "http"),
    ("GATEWAY_INTERFACE", "CGI/1.1"),
    ("SERVER_SOFTWARE", "nginx/1.26.3"),
    ("REMOTE_ADDR", "127.0.0.1"),
    ("REMOTE_PORT", "50412"),
    ("REMOTE_USER", ""),
    ("SERVER_ADDR", "127.0.0.1"),
    ("SERVER_PORT", "8080"),
    ("SERVER_NAME", "localhost"),
    ("REDIRECT_STATUS", "200"),
    ("HTTP_HOST", "localhost"),
    ("HTTP_USER_AGENT", "curl/8.14.1"),
    ("HTTP_ACCEPT", "*/*"),
)
