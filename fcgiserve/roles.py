"""FastCGI's Authorizer and Filter roles for Python applications (FastCGI spec 6.3 and 6.4).

Authorizer: the web server asks the application whether a request may proceed, before serving it. Write a
function of the environ that returns ``Allow(variables)`` or ``Deny(status, headers, body)`` and wrap it with
``authorizer()``; the wrapper is a WSGI application that emits a correct AUTHORIZER response:

- ``Allow``: status 200, one ``Variable-NAME: value`` header per variable and an empty body. The web server
  lets the request through and puts the variables into the request's environment (Apache's
  mod_authnz_fcgi copies them into ``subprocess_env``: ``Variable-REMOTE_USER`` makes the user known).
- ``Deny``: any other status; the web server sends that status, the headers and the body to the client
  (401 with a ``WWW-Authenticate`` header asks for credentials, 403 refuses).

The same wrapper can serve RESPONDER requests too (``authorizer(check, responder=app)``), so one fcgiserve
process can be both the authorizer and the application behind it.

Filter: the web server sends the request (STDIN) and a file (the DATA stream, with its size in
``FCGI_DATA_LENGTH`` and its modification time in ``FCGI_DATA_LAST_MOD``); the application answers with the
filtered file. ``filter_input(environ)`` gives the data stream and those two values.
"""

from __future__ import annotations

import datetime
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import IO, Any

__all__ = ["Allow", "Deny", "FilterInput", "authorizer", "filter_input"]

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]

_VARIABLE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")
_STATUS = re.compile(r"[1-9][0-9][0-9] [^\r\n]*")


@dataclass(frozen=True, slots=True)
class Allow:
    """Let the request through; ``variables`` go to the web server as ``Variable-NAME`` headers."""

    variables: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name, value in self.variables.items():
            if not _VARIABLE_NAME.fullmatch(name):
                raise ValueError(f"authorizer variable name {name!r} is not a valid header name part")
            if "\r" in value or "\n" in value:
                raise ValueError(f"authorizer variable {name!r} holds a line break")


@dataclass(frozen=True, slots=True)
class Deny:
    """Refuse the request; the web server sends this status, these headers and this body to the client."""

    status: str = "403 Forbidden"
    headers: Sequence[tuple[str, str]] = ()
    body: bytes = b""

    def __post_init__(self) -> None:
        if not _STATUS.fullmatch(self.status) or self.status.startswith("200"):
            raise ValueError(
                f"a Deny needs a status other than 200, like '403 Forbidden' (got {self.status!r})"
            )


Decision = Allow | Deny


def authorizer(check: Callable[[dict[str, Any]], Decision], responder: WSGIApp | None = None) -> WSGIApp:
    """A WSGI application answering AUTHORIZER requests with ``check(environ)``'s decision.

    RESPONDER requests go to ``responder``; without one they are answered 500 (a misconfigured web server
    sending ordinary requests to an authorizer should be noticed, not served an empty page).
    """

    def application(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if environ.get("FCGI_ROLE") != "AUTHORIZER":
            if responder is not None:
                return responder(environ, start_response)
            body = b"This FastCGI application is an authorizer; send it AUTHORIZER requests.\n"
            start_response(
                "500 Internal Server Error",
                [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))],
            )
            return [body]
        decision = check(environ)
        if isinstance(decision, Allow):
            headers = [(f"Variable-{name}", value) for name, value in decision.variables.items()]
            start_response("200 OK", headers)
            return []
        if isinstance(decision, Deny):
            headers = list(decision.headers)
            if not any(name.lower() == "content-length" for name, _ in headers):
                headers.append(("Content-Length", str(len(decision.body))))
            start_response(decision.status, headers)
            return [decision.body]
        raise TypeError(f"an authorizer must return Allow or Deny, not {type(decision).__name__}")

    return application


@dataclass(frozen=True, slots=True)
class FilterInput:
    """A FILTER request's data stream (the file to filter) and what the web server says about it."""

    data: IO[bytes]  # read() it like wsgi.input; it ends after ``length`` bytes
    length: int | None  # FCGI_DATA_LENGTH
    last_modified: datetime.datetime | None  # FCGI_DATA_LAST_MOD (seconds since the epoch), in UTC


def filter_input(environ: Mapping[str, Any]) -> FilterInput:
    """The data stream of a FILTER request; ValueError for any other role."""
    if environ.get("FCGI_ROLE") != "FILTER" or "fcgi.data" not in environ:
        raise ValueError(f"not a FILTER request (FCGI_ROLE={environ.get('FCGI_ROLE')!r})")
    return FilterInput(
        data=environ["fcgi.data"],
        length=_int_or_none(environ.get("FCGI_DATA_LENGTH")),
        last_modified=_timestamp(environ.get("FCGI_DATA_LAST_MOD")),
    )


def _int_or_none(value: object) -> int | None:
    try:
        return int(str(value)) if value is not None else None
    except ValueError:
        return None


def _timestamp(value: object) -> datetime.datetime | None:
    seconds = _int_or_none(value)
    if seconds is None or seconds < 0:
        return None
    return datetime.datetime.fromtimestamp(seconds, datetime.timezone.utc)
