"""WSGI applications the operations tests serve (imported by the server under test as tests.ops.apps)."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable
from typing import Any

from fcgiserve.roles import Allow, Deny, authorizer, filter_input


def hello(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    """Answers with the serving pid, so a test can tell a reloaded process or another child apart."""
    body = f"hello from {os.getpid()} path={environ.get('PATH_INFO', '')}\n".encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]


def sleepy(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    """Sleeps ?seconds (default 1.0) before answering; for slow-request and status tests."""
    query = environ.get("QUERY_STRING", "")
    seconds = float(query.partition("=")[2] or 1.0) if query.startswith("seconds=") else 1.0
    time.sleep(min(seconds, 10.0))
    body = b"slept\n"
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]


def echo(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    """Answers with the method, the query and the request body it read (for the SCGI tests)."""
    body = environ["wsgi.input"].read()
    head = f"{environ['REQUEST_METHOD']} {environ.get('QUERY_STRING', '')} {len(body)}\n".encode()
    start_response("200 OK", [("Content-Type", "application/octet-stream")])
    return [head, body]


def _check_token(environ: dict[str, Any]) -> Allow | Deny:
    """The authorizer's decision: the X-Token header must be "letmein"."""
    if environ.get("HTTP_X_TOKEN") == "letmein":
        return Allow({"REMOTE_USER": "alice", "AUTHZ_ROLE": "admin"})
    return Deny(
        "401 Unauthorized", [("WWW-Authenticate", 'Token realm="ops"'), ("X-Why", "no token")], b"who?\n"
    )


def _show_identity(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    """The protected application: shows what the authorizer's variables became."""
    user, role = environ.get("REMOTE_USER"), environ.get("AUTHZ_ROLE")
    body = f"user={user} role={role} fcgi_role={environ['FCGI_ROLE']}\n".encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]


guarded = authorizer(_check_token, responder=_show_identity)


def upper_filter(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    """A FILTER application: the data stream upper-cased, with its length and modification time."""
    source = filter_input(environ)
    data = source.data.read()
    stamp = source.last_modified.isoformat() if source.last_modified else "-"
    start_response(
        "200 OK", [("Content-Type", "text/plain"), ("X-Length", str(source.length)), ("X-Mtime", stamp)]
    )
    return [data.upper()]
