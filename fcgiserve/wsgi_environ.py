"""The WSGI environ of one request, built from its FastCGI PARAMS (PEP 3333, CGI/1.1 RFC 3875).

Pure functions only: decoded params in, a dict out. No record, socket, thread or process; no ``wsgi.input`` or
``wsgi.errors`` either (``wsgi.run_application`` adds the per-request streams). The rules and the web server
cases they were designed for are documented in ``docs/wsgi.md``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote_to_bytes

__all__ = ["ROLES", "WSGIOptions", "body_length", "build_environ", "request_path", "resolve_script_path"]

ROLES = frozenset({"RESPONDER", "AUTHORIZER", "FILTER"})

# CGI variables PEP 3333 requires (SERVER_NAME and SERVER_PORT "can never be empty strings").
_REQUIRED = ("REQUEST_METHOD", "SERVER_PROTOCOL", "SERVER_NAME", "SERVER_PORT")
_TRUE_HTTPS = frozenset({"on", "1", "yes", "true"})


@dataclass(frozen=True, slots=True)
class WSGIOptions:
    """Per-server WSGI settings (built once by the caller from its Config).

    ``script_name``: where the application is mounted ("/blog"); ``None`` = derive it from what the web server
    sends. ``multithread`` / ``multiprocess``: the truth about the running method, published as
    ``wsgi.multithread`` / ``wsgi.multiprocess``. ``spool_threshold``: unread body bytes kept in memory
    before spooling to a temporary file. ``errors_to_log``: mirror ``wsgi.errors`` lines to the
    ``fcgiserve.wsgi`` log.
    ``debug``: put the traceback in the body of a 500 response (plain text; never in production).
    """

    script_name: str | None = None
    debug: bool = False
    multithread: bool = True
    multiprocess: bool = False
    spool_threshold: int = 1 << 20
    errors_to_log: bool = False
    url_scheme_default: str = "http"

    def __post_init__(self) -> None:
        if self.script_name is not None:
            mount = self.script_name.rstrip("/")
            if mount and not mount.startswith("/"):
                raise ValueError(f"script_name must be empty or start with '/', not {self.script_name!r}")
            object.__setattr__(self, "script_name", mount)
        if self.spool_threshold < 0:
            raise ValueError(f"spool_threshold must be >= 0, not {self.spool_threshold}")
        if self.url_scheme_default not in ("http", "https"):
            raise ValueError(f"url_scheme_default must be 'http' or 'https', not {self.url_scheme_default!r}")


def build_environ(
    params: Mapping[str, str],
    options: WSGIOptions,
    role: str = "RESPONDER",
    request_id: int = 0,
    pairs: Iterable[tuple[str, str]] | None = None,
) -> dict[str, Any]:
    """The WSGI environ for one request, without ``wsgi.input`` / ``wsgi.errors`` (pure; see docs/wsgi.md).

    ``params``: the CGI variables, names and values decoded latin-1 (PEP 3333 "native strings": the bytes map
    one to one), as ``ParamsComplete`` carries them; not modified. ``pairs``: every pair in arrival order when
    a name was repeated (``ParamsComplete.pairs``): repeated names are then merged (S-C4).
    """
    environ: dict[str, Any] = dict(params) if pairs is None else _merge_duplicates(pairs)
    if role != "RESPONDER":
        if role not in ROLES:
            raise ValueError(f"unknown FastCGI role {role!r}; expected one of {sorted(ROLES)}")
        if role == "AUTHORIZER":  # S-G2: an authorizer request has no body
            environ.pop("CONTENT_LENGTH", None)
    # CGI never sends the body headers with an HTTP_ prefix (RFC 3875 4.1.18); some servers do anyway.
    if "HTTP_CONTENT_LENGTH" in environ:
        environ.setdefault("CONTENT_LENGTH", environ.pop("HTTP_CONTENT_LENGTH"))
    if "HTTP_CONTENT_TYPE" in environ:
        environ.setdefault("CONTENT_TYPE", environ.pop("HTTP_CONTENT_TYPE"))

    # Membership tests and subscripts rather than .get() calls below: this runs once per request.
    if "HTTPS" in environ and environ["HTTPS"].lower() in _TRUE_HTTPS:
        scheme = "https"
    else:
        scheme = environ.get("REQUEST_SCHEME", "")
        if scheme != "http" and scheme != "https":
            scheme = scheme.lower()
            if scheme != "http" and scheme != "https":
                scheme = options.url_scheme_default
    for key in _REQUIRED:
        if key not in environ or not environ[key]:
            _fill_default(environ, key, scheme)
    if "QUERY_STRING" not in environ:
        environ["QUERY_STRING"] = ""
    environ["SCRIPT_NAME"], environ["PATH_INFO"] = resolve_script_path(
        environ.get("SCRIPT_NAME"), environ.get("PATH_INFO"), environ.get("REQUEST_URI"), options.script_name
    )
    environ["FCGI_ROLE"] = role
    environ["wsgi.version"] = (1, 0)
    environ["wsgi.url_scheme"] = scheme
    environ["wsgi.multithread"] = options.multithread
    environ["wsgi.multiprocess"] = options.multiprocess
    environ["wsgi.run_once"] = False
    # Reads return b"" at the end of the stream even without CONTENT_LENGTH (the mod_wsgi/gunicorn extension).
    environ["wsgi.input_terminated"] = True
    environ["fcgiserve.request_id"] = request_id
    return environ


def _merge_duplicates(pairs: Iterable[tuple[str, str]]) -> dict[str, Any]:
    """The environ of params that name a variable twice: HTTP_* headers merge as HTTP does, CGI variables:
    last wins.

    RFC 9110 5.3: repeated field lines mean one comma-separated list; Cookie is the exception and joins with
    "; " (RFC 6265 5.4). Host is a singleton: the first wins, because a web server's own ``fastcgi_param
    HTTP_HOST`` (Debian's fastcgi_params sends one) precedes the forwarded request headers.
    """
    environ: dict[str, Any] = {}
    for name, value in pairs:
        previous = environ.get(name)
        if not previous or not name.startswith("HTTP_"):
            environ[name] = value
        elif not value or name == "HTTP_HOST":
            continue
        elif name == "HTTP_COOKIE":
            environ[name] = f"{previous}; {value}"
        else:
            environ[name] = f"{previous}, {value}"
    return environ


def _fill_default(environ: dict[str, Any], key: str, scheme: str) -> None:
    """Sane values for required CGI variables a web server left out (no noise: FastCGI allows it)."""
    if key == "REQUEST_METHOD":
        environ[key] = "GET"
    elif key == "SERVER_PROTOCOL":
        environ[key] = "HTTP/1.0"
    else:
        host, colon, port = environ.get("HTTP_HOST", "").rpartition(":")
        if not colon or not port.isdigit() or host.endswith(":"):  # no port, or a bare IPv6 literal
            host, port = environ.get("HTTP_HOST", ""), ""
        if key == "SERVER_NAME":
            environ[key] = host or "localhost"
        else:
            environ[key] = port or ("443" if scheme == "https" else "80")


def request_path(request_uri: str) -> str | None:
    """The percent-decoded path of a REQUEST_URI as a latin-1 native string, or None if it has no path.

    PEP 3333 gives PATH_INFO as the decoded bytes read as latin-1, so "/caf%C3%A9" becomes "/caf\\xc3\\xa9".
    An absolute-form target ("http://host/path", RFC 9112 3.2.2) is reduced to its path.
    """
    path = request_uri.partition("?")[0]
    if not path.startswith("/"):
        scheme_end = path.find("://")
        if scheme_end <= 0:
            return None  # "*" (OPTIONS *) or garbage: no path to route on
        slash = path.find("/", scheme_end + 3)
        path = path[slash:] if slash >= 0 else "/"
    if "%" in path:
        path = unquote_to_bytes(path.encode("latin-1")).decode("latin-1")
    return path


def resolve_script_path(
    script_name: str | None, path_info: str | None, request_uri: str | None, mount: str | None = None
) -> tuple[str, str]:
    """Return the (SCRIPT_NAME, PATH_INFO) pair the application should see. The rule, in order:

    1. ``mount`` given (options.script_name): SCRIPT_NAME = mount; PATH_INFO = the request path (from
       REQUEST_URI, else SCRIPT_NAME + PATH_INFO as sent) minus the mount prefix if it starts with it at a "/"
       boundary, else the whole path (a front proxy already stripped the prefix).
    2. PATH_INFO sent and non-empty: keep both, unless SCRIPT_NAME + PATH_INFO is not the request path but
       the request path ends with PATH_INFO (a rewrite, or SCRIPT_NAME = the whole path): SCRIPT_NAME = the
       request path minus PATH_INFO, the prefix the client really used.
    3. PATH_INFO missing or empty, REQUEST_URI known: if SCRIPT_NAME is a proper prefix of the request path
       at a "/" boundary, split there; otherwise (nginx stock: SCRIPT_NAME = the path; lighttpd at "/": "/" or
       the path; Apache mod_proxy_fcgi: the path) the site is at "/": SCRIPT_NAME "", PATH_INFO = the path.
    4. Nothing to compare against: keep what was sent.
    Finally SCRIPT_NAME loses a trailing "/" (moved to PATH_INFO) and an empty pair becomes ("", "/").
    """
    script = script_name or ""
    path_info = path_info or ""
    path = request_path(request_uri) if request_uri else None
    if mount is not None:
        mount = mount.rstrip("/")
        full = path if path is not None else script + path_info
        if mount and (full == mount or full.startswith(mount + "/")):
            full = full[len(mount) :]
        return mount, full if full or mount else "/"
    if path is not None:
        if path_info:
            if script + path_info != path and path_info.startswith("/") and path.endswith(path_info):
                script = path[: len(path) - len(path_info)]
        elif script not in ("", "/") and len(path) > len(script) and path.startswith(script + "/"):
            path_info = path[len(script) :]
        else:
            script, path_info = "", path
    if script.endswith("/"):
        script = script.rstrip("/")
        if not path_info.startswith("/"):
            path_info = "/" + path_info
    if not script and not path_info:
        path_info = "/"
    return script, path_info


def body_length(environ: dict[str, Any], key: str = "CONTENT_LENGTH") -> int | None:
    """CONTENT_LENGTH (or FCGI_DATA_LENGTH) as an int for RequestBody; None if absent, empty or invalid."""
    value = environ.get(key)
    if not value:
        return None
    value = value.strip()
    return int(value) if value.isdigit() and value.isascii() else None
