"""Every fcgiserve option, declared once: name, default, validation, CLI flag, runfcgi alias and help text.

``OPTIONS`` is the single source: the ``Config`` dataclass takes its defaults from it, ``cli_args.py``
generates the command line from it (and reads the old ``manage.py runfcgi key=value`` words through it), and
``docs/gen_options.py`` renders ``docs/options.md`` from it.

This module imports nothing from fcgiserve (tests/test_layers.py): anyone may import it.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import math
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, NoReturn, cast

__all__ = [
    "OPTIONS",
    "Config",
    "ConfigError",
    "ListenKind",
    "LogLevel",
    "Method",
    "Option",
    "Protocol",
]

Method = Literal["threaded", "prefork"]
Protocol = Literal["fcgi", "scgi"]
LogLevel = Literal["debug", "info", "warning", "error"]
ListenKind = Literal["tcp", "unix", "fd", "default"]

KIB = 1024
MIB = 1024 * KIB
GIB = 1024 * MIB
# Used when --maxchildren is not given: threads are cheap, processes cost memory and a core each.
METHOD_MAXCHILDREN: dict[str, int] = {"threaded": 50, "prefork": 8}


class ConfigError(ValueError):
    """A bad option value or combination; the message is one line that names the option."""


Coerce = Callable[[object], object]


# --- value parsers ---------------------------------------------------------------------------------------
# Each accepts the string form (command line, runfcgi words) and the native form (Python callers), returns
# the normalised value, and raises ValueError with a "must ..." phrase; coerce_option() adds the name and
# the value.


def _int(lo: int, hi: int | None = None) -> Coerce:
    bound = f"an integer >= {lo}" if hi is None else f"an integer in {lo}..{hi}"

    def coerce(raw: object) -> object:
        if isinstance(raw, str) and re.fullmatch(r"\s*\+?[0-9]+\s*", raw):
            raw = int(raw)
        if isinstance(raw, bool) or not isinstance(raw, int) or raw < lo or (hi is not None and raw > hi):
            raise ValueError(f"must be {bound}")
        return raw

    return coerce


def _optional_int(lo: int) -> Coerce:
    inner = _int(lo)
    return lambda raw: None if raw is None or raw == "" else inner(raw)


def _seconds(raw: object) -> object:
    try:
        value = float(raw) if isinstance(raw, (str, int, float)) and not isinstance(raw, bool) else math.nan
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value < 0:
        raise ValueError("must be a number of seconds >= 0")
    return value


BOOL_WORDS = dict.fromkeys(("true", "yes", "on", "1"), True) | dict.fromkeys(
    ("false", "no", "off", "0"), False
)


def _bool(raw: object) -> object:
    if isinstance(raw, bool):
        return raw
    if isinstance(raw, str) and raw.strip().lower() in BOOL_WORDS:
        return BOOL_WORDS[raw.strip().lower()]
    raise ValueError("must be one of true/false, yes/no, on/off, 1/0")


def _optional_bool(raw: object) -> object:
    return None if raw is None or raw == "" else _bool(raw)


def _choice(*choices: str, aliases: Mapping[str, str] | None = None) -> Coerce:
    table = {c: c for c in choices} | dict(aliases or {})

    def coerce(raw: object) -> object:
        if isinstance(raw, str) and raw.strip().lower() in table:
            return table[raw.strip().lower()]
        raise ValueError(f"must be one of {', '.join(choices)}")

    return coerce


def _mode(optional: bool) -> Coerce:
    def coerce(raw: object) -> object:
        if optional and (raw is None or raw == ""):
            return None
        if isinstance(raw, str) and re.fullmatch(r"\s*(0o)?[0-7]{1,4}\s*", raw, re.IGNORECASE):
            raw = int(raw.strip().lower().removeprefix("0o"), 8)
        if isinstance(raw, bool) or not isinstance(raw, int) or not 0 <= raw <= 0o777:
            raise ValueError("must be an octal mode between 000 and 777, like 022 or 0660")
        return raw

    return coerce


_SIZE_UNITS = {"": 1, "k": KIB, "m": MIB, "g": GIB}


def _size(raw: object) -> object:
    if isinstance(raw, str):
        match = re.fullmatch(r"\s*([0-9]+)\s*([kmg]?)(?:i?b)?\s*", raw, re.IGNORECASE)
        if match:
            raw = int(match[1]) * _SIZE_UNITS[match[2].lower()]
    if isinstance(raw, bool) or not isinstance(raw, int) or raw < 0:
        raise ValueError("must be a byte count like 65536, 512K, 8M or 1G")
    return raw


def _stack_size(raw: object) -> object:
    """0 or None: the system's thread stack size; else a size the C library takes (64K or more, in pages)."""
    if raw is None or raw == "":
        return 0
    value = _size(raw)
    assert isinstance(value, int)
    if value and (value < 64 * 1024 or value % 4096):
        raise ValueError("must be 0 (the system's) or a multiple of 4K of at least 64K, like 512K or 1M")
    return value


def _path(raw: object) -> object:
    if raw is None or raw == "":
        return None
    if not isinstance(raw, str) or "\0" in raw:
        raise ValueError("must be a file path")
    return raw


def _app(raw: object) -> object:
    if raw is None:
        return None
    if not isinstance(raw, str) or not raw or any(c.isspace() for c in raw):
        raise ValueError("must look like MODULE[:CALLABLE], e.g. mysite.wsgi:application")
    return raw


def _host(raw: object) -> object:
    if not isinstance(raw, str) or not raw.strip() or any(c.isspace() for c in raw.strip()):
        raise ValueError("must be a host name or IP address")
    return raw.strip().removeprefix("[").removesuffix("]")  # accept the bracketed IPv6 form "[::1]"


def _url_path(raw: object) -> object:
    if raw is None or raw == "":
        return None
    if not isinstance(raw, str) or not raw.startswith("/") or any(c.isspace() or c in "?#" for c in raw):
        raise ValueError("must be a URL path starting with '/', without a query, like /status")
    return raw


def _script_name(raw: object) -> object:
    if raw is None:
        return None
    if not isinstance(raw, str) or (raw and not raw.startswith("/")):
        raise ValueError("must be empty or a URL path starting with '/'")
    return raw.rstrip("/")  # WSGI: SCRIPT_NAME never ends in '/', the root is ''


def _networks(raw: object) -> object:
    items = [raw] if raw is None or isinstance(raw, str) else raw
    if not isinstance(items, Iterable):
        raise ValueError("must be IP addresses or CIDR networks")
    found: list[str] = []
    for item in items:
        if item is None:
            continue
        for word in str(item).split(","):
            if word.strip():
                try:
                    ipaddress.ip_network(word.strip(), strict=False)
                except ValueError:
                    raise ValueError(
                        f"must be IP addresses or CIDR networks ({word.strip()!r} is not)"
                    ) from None
                found.append(word.strip())
    return tuple(found)


# --- the option table ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Option:
    """One option. ``flags`` empty means positional; ``kind`` picks the argparse action."""

    name: str
    default: object
    coerce: Coerce
    group: str
    help: str
    flags: tuple[str, ...] = ()
    metavar: str | None = None
    runfcgi: tuple[str, ...] = ()  # names accepted as key=value words (old manage.py runfcgi syntax)
    kind: Literal["value", "flag", "list"] = "value"
    default_text: str | None = None  # how --help and the docs describe the default, when repr is not enough

    @property
    def display(self) -> str:
        return self.flags[0] if self.flags else (self.metavar or self.name)

    def describe_default(self) -> str:
        if self.default_text is not None:
            return self.default_text
        if isinstance(self.default, bool):
            return "on" if self.default else "off"
        if isinstance(self.default, float):
            return f"{self.default:g}"
        return "none" if self.default in (None, ()) else str(self.default)


def _opt(name: str, default: object, coerce: Coerce, group: str, help: str, **kw: Any) -> Option:
    kw.setdefault("flags", ("--" + name.replace("_", "-"),))
    return Option(name, default, coerce, group, help, **kw)


_APP, _LISTEN, _PROC, _LIMITS, _LOG, _ENV = (
    "Application",
    "Listening",
    "Process model",
    "Request limits",
    "Logging",
    "Process environment",
)

# fmt: off
OPTIONS: tuple[Option, ...] = (
    # Application
    _opt("app", None, _app, _APP, "The WSGI application: a module and an optional callable, e.g. "
         "mysite.wsgi:application or myapp:create_app(). Without a callable, 'application' then 'app' is "
         "used. The current directory is searched first, like manage.py does.",
         flags=(), metavar="MODULE[:CALLABLE]", default_text="required, except under manage.py runfcgi"),
    _opt("script_name", None, _script_name, _APP, "Mount point of the application: SCRIPT_NAME is set to "
         "this and PATH_INFO to the rest of the request path. Without it, SCRIPT_NAME and PATH_INFO are "
         "taken as the web server sends them.", metavar="PATH", default_text="as sent by the web server"),
    _opt("preload", False, _bool, _APP, "prefork: import the application once in the master before forking, "
         "so children share its memory and start fast. Off: each child imports it after the fork, so a "
         "broken import cannot take the master down.", kind="flag"),
    _opt("debug", False, _bool, _APP, "Send Python tracebacks to the client in 500 responses. Never on a "
         "public site: tracebacks show source code and settings.", runfcgi=("debug",), kind="flag"),
    _opt("protocol", "fcgi", _choice("fcgi", "scgi"), _APP, "Wire protocol spoken with the web server.",
         runfcgi=("protocol",), metavar="{fcgi,scgi}"),
    # Listening
    _opt("host", "127.0.0.1", _host, _LISTEN, "TCP address to listen on; '::1' or '::' for IPv6. Loopback "
         "by default: FastCGI has no authentication, so anyone who can connect can run requests.",
         runfcgi=("host",), metavar="ADDRESS"),
    _opt("port", 8080, _int(0, 65535), _LISTEN, "TCP port to listen on (0 picks a free port). 8080 is "
         "what the classic 'fastcgi_pass 127.0.0.1:8080;' nginx examples expect.",
         runfcgi=("port",), metavar="PORT"),
    _opt("socket", None, _path, _LISTEN, "Listen on this unix socket path instead of TCP. A stale socket "
         "left by a dead server is replaced; any other file at the path is an error.",
         runfcgi=("socket",), metavar="PATH"),
    _opt("socket_mode", 0o660, _mode(False), _LISTEN, "Permissions of the unix socket (octal). The default "
         "lets the owner and group connect: put the web server in the group. World-writable modes let every "
         "local user send requests.", metavar="MODE", default_text="0660"),
    _opt("fd", None, _optional_int(0), _LISTEN, "Serve on an inherited listening socket with this file "
         "descriptor number. When none of --host/--port/--socket/--fd is given, sockets passed by systemd "
         "socket activation are used, else fd 0 if it is a listening socket (the server was spawned by a "
         "web server, FastCGI spec 2.2), else --host/--port.", metavar="N"),
    _opt("backlog", 1024, _int(1, 65535), _LISTEN, "Length of the listen queue (the kernel caps it at "
         "net.core.somaxconn).", metavar="N"),
    _opt("allow_from", (), _networks, _LISTEN, "Accept connections only from these IP addresses or CIDR "
         "networks (comma-separated or repeated). FCGI_WEB_SERVER_ADDRS in the environment adds to the list "
         "and, as the spec requires, then also refuses unix-socket peers.",
         metavar="ADDR[,ADDR...]", kind="list", default_text="anyone who can connect"),
    # Process model
    _opt("method", "threaded", _choice("threaded", "prefork", aliases={"thread": "threaded",
         "fork": "prefork"}), _PROC, "threaded: one process, a pool of threads. prefork: a master and "
         "child processes (isolates crashes and leaks; uses all cores for CPU-bound apps).",
         runfcgi=("method",), metavar="{threaded,prefork}"),
    _opt("minspare", 2, _int(0), _PROC, "Idle workers kept ready (threads, or prefork processes). Unset, "
         "it is lowered to --maxspare when that is smaller.", runfcgi=("minspare",), metavar="N"),
    _opt("maxspare", 5, _int(1), _PROC, "Idle workers beyond this are retired. Unset, it is raised to "
         "--minspare and lowered to --maxchildren when those are given and need it (--maxchildren 2 alone "
         "runs with --maxspare 2).", runfcgi=("maxspare",), metavar="N"),
    _opt("maxchildren", None, _optional_int(1), _PROC, "Workers at most: threads for threaded, processes "
         "for prefork. Unset means 50 threads or 8 processes, raised to --maxspare (or --minspare) when "
         "that is larger, so old runfcgi settings keep working. Only a --minspare or --maxspare given "
         "above a --maxchildren given is an error.", runfcgi=("maxchildren",), metavar="N",
         default_text="50 (threaded) / 8 (prefork)"),
    _opt("threads", 1, _int(1), _PROC, "prefork: application threads per child. 1 (the default) runs one "
         "request at a time per process (wsgi.multithread False), for applications or extensions that are "
         "not thread-safe: --maxchildren is then the number of requests that run at once. Idle kept-alive "
         "connections still cost no process (a busy child hands them to an idle sibling). More threads let a "
         "child run several requests at once (wsgi.multithread True).", metavar="N"),
    _opt("maxrequests", 0, _int(0), _PROC, "Recycle a worker after this many requests (bounds slow leaks). "
         "0 means never.", runfcgi=("maxrequests",), metavar="N", default_text="0 (never)"),
    _opt("maxrequests_jitter", 0, _int(0), _PROC, "Add up to this many requests, at random, to each "
         "worker's --maxrequests so workers do not all recycle at once.", metavar="N"),
    _opt("timeout", 0.0, _seconds, _PROC, "prefork: kill a child busy on one request for longer than this "
         "many seconds. 0 means never (a thread cannot be killed, so threaded has no such option).",
         metavar="SECONDS", default_text="0 (never)"),
    _opt("graceful_timeout", 30.0, _seconds, _PROC, "On SIGTERM or reload, let in-flight requests finish "
         "for up to this many seconds before closing their connections.", metavar="SECONDS"),
    _opt("idle_timeout", 300.0, _seconds, _PROC, "Close a kept-alive connection idle for this many seconds "
         "(nginx closes idle upstream connections after its keepalive_timeout, 60 s by default; this bounds "
         "the ones a peer forgets). 0 means never.", metavar="SECONDS"),
    _opt("pidfile", None, _path, _PROC, "Write the server's pid to this file (atomically), refuse to start "
         "if it names a running process, remove it on exit.", runfcgi=("pidfile",), metavar="PATH"),
    _opt("thread_stack_size", 0, _stack_size, _PROC, "Stack size of every thread started after start-up, "
         "the application's own included. Each thread reserves this much address space (the system's "
         "default, ulimit -s, is usually 8M); lower it (512K or 1M) where the address space is limited "
         "(ulimit -v, some VPS plans) and the pool cannot start the threads it needs. Code that recurses "
         "deeply needs more.", metavar="SIZE", default_text="0 (the system's)"),
    _opt("ready_fd", None, _optional_int(3), _PROC, "Write a newline to this inherited file descriptor and "
         "close it once the server serves: s6's readiness notification (the number in the service's "
         "notification-fd file), also dinit's pipefd.", metavar="N"),
    # Request limits
    _opt("multiplexed", None, _optional_bool, _LIMITS, "Advertise FCGI_MPXS_CONNS=1 and run several "
         "requests of one connection concurrently. nginx does not multiplex, so this matters only to web "
         "servers that do.",
         kind="flag", default_text="on (threaded) / off (prefork)"),
    _opt("max_requests_per_connection", 100, _int(1), _LIMITS, "Concurrent requests allowed on one "
         "multiplexed connection (FCGI_MAX_REQS); more are refused with OVERLOADED.", metavar="N"),
    _opt("max_connections", 0, _int(0), _LIMITS, "Open connections per process (FCGI_MAX_CONNS); beyond it "
         "new connections wait in the listen queue. 0 means no limit.", metavar="N",
         default_text="0 (no limit)"),
    _opt("max_params_bytes", MIB, _size, _LIMITS, "Largest PARAMS stream (CGI variables and HTTP headers) "
         "of one request; nginx sends a few KiB.", metavar="SIZE", default_text="1M"),
    _opt("max_params_count", 1000, _int(1), _LIMITS, "Most PARAMS name-value pairs in one request; a "
         "normal request has 20 to 60.", metavar="N"),
    _opt("max_body_size", GIB, _size, _LIMITS, "Largest request body (STDIN); a larger one is answered "
         "413, whether CONTENT_LENGTH announces it or the bytes received exceed it. Bodies are spooled to "
         "disk, so this bounds disk use, not memory. 0 means no limit.",
         metavar="SIZE", default_text="1G"),
    _opt("params_timeout", 10.0, _seconds, _LIMITS, "Seconds a connection has, from its first byte (or "
         "from being accepted), to deliver a request's complete PARAMS; a slower peer is disconnected. Web "
         "servers send a request's params at once. Meanwhile the peer holds no worker thread or process, "
         "only its connection. 0 means never.", metavar="SECONDS"),
    _opt("write_timeout", 60.0, _seconds, _LIMITS, "Seconds a response write may make no progress because "
         "the web server stopped reading; the request is then aborted and the connection closed (like "
         "nginx's send_timeout). 0 means never.", metavar="SECONDS"),
    _opt("spool_threshold", MIB, _size, _LIMITS, "Request bodies larger than this are spooled to a "
         "temporary file instead of memory.", metavar="SIZE", default_text="1M"),
    # Logging
    _opt("log_level", "info", _choice("debug", "info", "warning", "error", aliases={"warn": "warning"}),
         _LOG, "Least severe message logged.", metavar="{debug,info,warning,error}"),
    _opt("log_file", None, _path, _LOG, "Append the log to this file instead of stderr (reopened on "
         "SIGUSR1, for logrotate). Under a supervisor, leave it unset: stderr is what it collects.",
         runfcgi=("errlog", "outlog"), metavar="PATH", default_text="stderr"),
    _opt("access_log", None, _path, _LOG, "Write one line per request to this file ('-' for stderr): "
         "client address, user, time, request line, status, body bytes, seconds taken, request id (see "
         "docs/operations.md). Reopened on SIGUSR1.", metavar="PATH", default_text="off"),
    _opt("slow_request_time", 0.0, _seconds, _LOG, "Log the stack of a request still running after this "
         "many seconds, once, without stopping it (php-fpm's slowlog); counted as 'slow requests' on the "
         "status page. 0 means off.", metavar="SECONDS", default_text="0 (off)"),
    _opt("status_path", None, _url_path, "Monitoring", "Answer this URL path with php-fpm's status page "
         "(text; ?json, ?openmetrics, ?prometheus; &full for each worker) without calling the application. "
         "Only peers in --allow-from, or loopback and unix-socket peers without it, may see it.",
         metavar="PATH", default_text="off"),
    _opt("ping_path", None, _url_path, "Monitoring", "Answer this URL path with 'pong' without calling "
         "the application (php-fpm's ping), for health checks. Same access rule as --status-path.",
         metavar="PATH", default_text="off"),
    # Process environment
    _opt("chdir", None, _path, _ENV, "Change to this directory before loading the application.",
         runfcgi=("workdir",), metavar="DIR"),
    _opt("umask", None, _mode(True), _ENV, "Set the process umask (octal) at start-up, for files the "
         "application creates.", runfcgi=("umask",), metavar="MASK", default_text="inherited"),
)

BY_NAME: dict[str, Option] = {o.name: o for o in OPTIONS}
# runfcgi words fcgiserve answers itself; every other runfcgi key is an Option alias.
RUNFCGI_SPECIAL = ("daemonize",)
RUNFCGI_ALIASES: dict[str, Option] = {alias: o for o in OPTIONS for alias in o.runfcgi}


_D: dict[str, Any] = {o.name: o.default for o in OPTIONS}  # the dataclass defaults, straight from the table
# The pool sizes, ordered minspare <= maxspare <= maxchildren. The values the user set win; the defaults of
# the spares give way to them (Config._fit_defaults); maxchildren's follows maxspare (effective_maxchildren).
_POOL_SIZES = ("minspare", "maxspare", "maxchildren")
_FITTED = ("minspare", "maxspare")


def coerce_option(opt: Option, raw: object) -> object:
    try:
        return opt.coerce(raw)
    except ValueError as exc:
        raise ConfigError(f"{opt.display} {exc} (got {raw!r})") from None


# --- the validated, frozen configuration -----------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Config:
    """The validated configuration: one field per Option, plus ``explicit`` (the option names the user set).

    Build it with ``Config.from_mapping()``, ``cli_args.parse_args()`` or ``Config(...)``; every value is
    checked (strings are parsed as on the command line) and a bad one raises ConfigError. Defaults the user
    did not set give way to the values they did: the fields hold the values in effect (``--maxchildren 2``
    alone gives ``maxspare == 2``), ``fitted_defaults()`` says which moved. Only values set together that
    contradict each other are errors. A pool size passed to ``Config(...)`` other than its default counts
    as set, as if it were in ``explicit``.
    """

    app: str | None = _D["app"]
    script_name: str | None = _D["script_name"]
    preload: bool = _D["preload"]
    debug: bool = _D["debug"]
    protocol: Protocol = _D["protocol"]
    host: str = _D["host"]
    port: int = _D["port"]
    socket: str | None = _D["socket"]
    socket_mode: int = _D["socket_mode"]
    fd: int | None = _D["fd"]
    backlog: int = _D["backlog"]
    allow_from: tuple[str, ...] = _D["allow_from"]
    method: Method = _D["method"]
    minspare: int = _D["minspare"]
    maxspare: int = _D["maxspare"]
    maxchildren: int | None = _D["maxchildren"]
    threads: int = _D["threads"]
    maxrequests: int = _D["maxrequests"]
    maxrequests_jitter: int = _D["maxrequests_jitter"]
    timeout: float = _D["timeout"]
    graceful_timeout: float = _D["graceful_timeout"]
    idle_timeout: float = _D["idle_timeout"]
    pidfile: str | None = _D["pidfile"]
    thread_stack_size: int = _D["thread_stack_size"]
    ready_fd: int | None = _D["ready_fd"]
    multiplexed: bool | None = _D["multiplexed"]
    max_requests_per_connection: int = _D["max_requests_per_connection"]
    max_connections: int = _D["max_connections"]
    max_params_bytes: int = _D["max_params_bytes"]
    max_params_count: int = _D["max_params_count"]
    max_body_size: int = _D["max_body_size"]
    params_timeout: float = _D["params_timeout"]
    write_timeout: float = _D["write_timeout"]
    spool_threshold: int = _D["spool_threshold"]
    log_level: LogLevel = _D["log_level"]
    log_file: str | None = _D["log_file"]
    access_log: str | None = _D["access_log"]
    slow_request_time: float = _D["slow_request_time"]
    status_path: str | None = _D["status_path"]
    ping_path: str | None = _D["ping_path"]
    chdir: str | None = _D["chdir"]
    umask: int | None = _D["umask"]
    explicit: frozenset[str] = field(default=frozenset())

    def __post_init__(self) -> None:
        for opt in OPTIONS:
            object.__setattr__(self, opt.name, coerce_option(opt, getattr(self, opt.name)))
        unknown = set(self.explicit) - BY_NAME.keys()
        if unknown:
            raise ConfigError(f"unknown option name(s) in explicit: {', '.join(sorted(unknown))}")
        given = {name for name in _POOL_SIZES if getattr(self, name) != _D[name]}
        object.__setattr__(self, "explicit", frozenset(self.explicit) | given)
        self._check_combinations()
        self._fit_defaults()

    @classmethod
    def from_mapping(cls, values: Mapping[str, object]) -> Config:
        """Build from option names -> values (strings or native); the keys become ``explicit``."""
        _reject_unknown(values)
        return cls(**cast("dict[str, Any]", dict(values)), explicit=frozenset(values))

    def replace(self, **changes: object) -> Config:
        """A copy with ``changes`` applied (and added to ``explicit``), validated again."""
        _reject_unknown(changes)
        explicit = self.explicit | changes.keys()
        # Defaults fitted to the old values start again from the table, to be fitted to the new ones.
        fields: dict[str, Any] = {name: _D[name] for name in _FITTED if name not in explicit} | changes
        return dataclasses.replace(self, **fields, explicit=explicit)

    @property
    def effective_maxchildren(self) -> int:
        """--maxchildren, or the method's default raised to --maxspare (itself raised to --minspare)."""
        if self.maxchildren is not None:
            return self.maxchildren
        return max(METHOD_MAXCHILDREN[self.method], self.maxspare)

    def fitted_defaults(self) -> dict[str, tuple[int, int]]:
        """The options the user did not set whose value in effect is not their default, to fit those
        they did: ``{"--maxspare": (5, 2)}`` (default, in effect) for ``--maxchildren 2``; often empty."""
        moved = {
            BY_NAME[name].display: (int(_D[name]), int(getattr(self, name)))
            for name in _FITTED
            if name not in self.explicit and getattr(self, name) != _D[name]
        }
        default = METHOD_MAXCHILDREN[self.method]
        if self.maxchildren is None and self.effective_maxchildren != default:
            moved["--maxchildren"] = (default, self.effective_maxchildren)
        return moved

    @property
    def effective_multiplexed(self) -> bool:
        return self.method == "threaded" if self.multiplexed is None else self.multiplexed

    def listen_kind(self) -> ListenKind:
        """What to listen on: "default" means fd 0 if it is a listening socket, else TCP host:port."""
        if self.socket is not None:
            return "unix"
        if self.fd is not None:
            return "fd"
        return "tcp" if self.explicit & {"host", "port"} else "default"

    def _check_combinations(self) -> None:
        def fail(message: str) -> NoReturn:
            raise ConfigError(message)

        # Pool sizes: only two the user set can contradict each other; _fit_defaults() fits the others.
        if {"minspare", "maxspare"} <= self.explicit and self.maxspare < self.minspare:
            fail(f"--maxspare must be >= --minspare (got {self.maxspare} < {self.minspare})")
        for spare in ("maxspare", "minspare"):
            size = getattr(self, spare)
            if self.maxchildren is not None and spare in self.explicit and self.maxchildren < size:
                fail(f"--maxchildren must be >= --{spare} (got {self.maxchildren} < {size})")
        places = [n for n in ("socket", "fd") if getattr(self, n) is not None]
        places += sorted(self.explicit & {"host", "port"})[:1]
        if len(places) > 1:
            fail(f"--{places[0]} and --{places[1]} are mutually exclusive: listen on one of tcp, unix or fd")
        # An option that needs another is refused without it, even when the other is only at its default:
        # there is nothing to fit, and fcgiserve does not choose a process model, a recycling count or a
        # socket for the user.
        if self.maxrequests_jitter and not self.maxrequests:
            fail("--maxrequests-jitter needs --maxrequests (jitter of an unlimited count means nothing)")
        if self.method == "threaded" and self.timeout:
            fail("--timeout needs --method prefork: a stuck thread cannot be killed")
        if self.method == "threaded" and "threads" in self.explicit:
            fail("--threads is per prefork child; with --method threaded use --maxchildren")
        if "socket_mode" in self.explicit and self.socket is None:
            fail("--socket-mode needs --socket: it is the mode of the unix socket file fcgiserve creates")
        if self.method == "threaded" and "preload" in self.explicit and self.preload:
            fail("--preload needs --method prefork: threaded always loads the application once")

    def _fit_defaults(self) -> None:
        """Move the spares the user did not set into minspare <= maxspare <= maxchildren around the sizes
        they did set (checked consistent by _check_combinations): ``--maxchildren 2`` lowers maxspare to 2,
        ``--maxspare 1`` lowers minspare to 1, ``--minspare 10`` raises maxspare to 10."""
        maxspare = self.maxspare
        if "maxspare" not in self.explicit:
            if "minspare" in self.explicit:
                maxspare = max(maxspare, self.minspare)
            if self.maxchildren is not None:
                maxspare = min(maxspare, self.maxchildren)
        minspare = self.minspare if "minspare" in self.explicit else min(self.minspare, maxspare)
        object.__setattr__(self, "maxspare", maxspare)
        object.__setattr__(self, "minspare", minspare)


def _reject_unknown(values: Mapping[str, object]) -> None:
    unknown = [k for k in values if k not in BY_NAME]
    if unknown:
        raise ConfigError(f"unknown option {unknown[0]!r}; see fcgiserve --help")
