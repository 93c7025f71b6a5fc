"""The status and ping pages, rendered the way php-fpm renders them, so its exporters and dashboards work.

This module only renders: it is handed a statistics mapping whose keys are php-fpm's field names (see
``POOL_FIELDS`` and ``PROCESS_FIELDS``; "start time" is a Unix timestamp) and returns a complete CGI response.
Who gathers the numbers is the wiring's business (``server.py``: the threaded pool's counters, or a prefork
child reading the shared scoreboard); who may see them is decided by ``operations.py``.

Formats, chosen by the query string as php-fpm does: plain text (default), ``?json``, ``?openmetrics``
(OpenMetrics 1.0) and ``?prometheus`` (the Prometheus text format 0.0.4); ``full`` adds one block per worker
(``?full``, ``?json&full``...). Metric names are php-fpm's (``phpfpm_accepted_connections`` ...); with
``full`` the metrics formats add per-worker samples named as php-fpm exporters name them
(``phpfpm_process_requests`` ...), labelled by pid (and thread id).

A worker may be a thread (the threaded pool): its block carries "thread id" after "pid" (``THREAD_FIELDS``).
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["POOL_FIELDS", "PROCESS_FIELDS", "THREAD_FIELDS", "render_ping", "render_status", "status_format"]

# php-fpm's pool fields, in its order.
POOL_FIELDS = (
    "pool",
    "process manager",
    "start time",
    "start since",
    "accepted conn",
    "listen queue",
    "max listen queue",
    "listen queue len",
    "idle processes",
    "active processes",
    "total processes",
    "max active processes",
    "max children reached",
    "slow requests",
)
PROCESS_FIELDS = (
    "pid",
    "state",
    "start time",
    "start since",
    "requests",
    "request duration",  # microseconds, as php-fpm
    "request method",
    "request URI",
    "content length",
    "user",
    "script",
    "last request cpu",
    "last request memory",
)
# A worker thread's block: the process pid, then the thread's kernel id (TID), then the same fields.
THREAD_FIELDS = ("pid", "thread id", *PROCESS_FIELDS[1:])
# (metric suffix, pool field, type, help) for the metrics formats; the names php-fpm 8.1 uses.
_METRICS = (
    ("start_since", "start since", "counter", "The number of seconds since the server has started."),
    ("accepted_connections", "accepted conn", "counter", "The number of requests accepted by the pool."),
    ("listen_queue", "listen queue", "gauge", "The number of requests in the queue of pending connections."),
    ("max_listen_queue", "max listen queue", "gauge", "The maximum number of requests in the queue of "
     "pending connections since the server has started."),
    ("listen_queue_len", "listen queue len", "gauge", "The size of the socket queue of pending connections."),
    ("idle_processes", "idle processes", "gauge", "The number of idle workers."),
    ("active_processes", "active processes", "gauge", "The number of active workers."),
    ("total_processes", "total processes", "gauge", "The number of idle + active workers."),
    ("max_active_processes", "max active processes", "gauge", "The maximum number of active workers "
     "since the server has started."),
    ("max_children_reached", "max children reached", "counter", "The number of times the worker limit has "
     "been reached."),
    ("slow_requests", "slow requests", "counter", "The number of requests that exceeded the "
     "--slow-request-time value."),
)  # fmt: skip
# (metric suffix, worker field, type, help) for ``full`` in the metrics formats; the state: a labelled gauge.
_PROCESS_METRICS = (
    ("process_requests", "requests", "counter", "The number of requests the worker has served."),
    ("process_request_duration", "request duration", "gauge", "The duration in microseconds of the "
     "request in progress (0 when idle)."),
)  # fmt: skip
_CONTENT_TYPES = {
    "text": "text/plain; charset=utf-8",
    "json": "application/json",
    "openmetrics": "application/openmetrics-text; version=1.0.0; charset=utf-8",
    "prometheus": "text/plain; version=0.0.4; charset=utf-8",
}
_STATE_NAMES = {"idle": "Idle", "busy": "Running", "starting": "Starting", "stopping": "Finishing"}


def status_format(query: str) -> tuple[str, bool]:
    """(format, full) from a query string such as ``json&full``; the text format when none is named."""
    words = {word.partition("=")[0] for word in query.split("&") if word}
    fmt = next((f for f in ("json", "openmetrics", "prometheus") if f in words), "text")
    return fmt, "full" in words


def render_ping(response: str = "pong") -> bytes:
    """php-fpm's ping page: 200, text/plain, ``pong``, never cached."""
    return _response("200 OK", "text/plain; charset=utf-8", f"{response}\n".encode())


def render_status(stats: Mapping[str, Any], query: str = "", now: float | None = None) -> bytes:
    """The status page for ``stats`` (php-fpm field names), in the format ``query`` asks for."""
    fmt, full = status_format(query)
    now = time.time() if now is None else now
    if fmt == "json":
        body = _json(stats, full, now)
    elif fmt in ("openmetrics", "prometheus"):
        body = _metrics(stats, full, openmetrics=fmt == "openmetrics")
    else:
        body = _text(stats, full, now)
    return _response("200 OK", _CONTENT_TYPES[fmt], body.encode("utf-8"))


def _response(status: str, content_type: str, body: bytes) -> bytes:
    head = (
        f"Status: {status}\r\nContent-Type: {content_type}\r\nContent-Length: {len(body)}\r\n"
        "Cache-Control: no-cache, no-store, must-revalidate\r\nExpires: Thu, 01 Jan 1970 00:00:00 GMT\r\n\r\n"
    )
    return head.encode("latin-1") + body


def _since(stats: Mapping[str, Any], now: float) -> int:
    return max(0, int(now - float(stats.get("start time", now))))


def _processes(stats: Mapping[str, Any]) -> Sequence[Mapping[str, Any]]:
    processes = stats.get("processes", ())
    return processes if isinstance(processes, Sequence) else ()


def _fields(process: Mapping[str, Any]) -> tuple[str, ...]:
    return THREAD_FIELDS if "thread id" in process else PROCESS_FIELDS


def _process_value(process: Mapping[str, Any], name: str, now: float) -> Any:
    if name == "state":
        state = str(process.get("state", "idle"))
        return _STATE_NAMES.get(state, state)
    if name == "start since":
        return max(0, int(now - float(process.get("start time", now))))
    if name == "start time":
        return int(float(process.get("start time", now)))
    if name == "last request cpu":
        return float(process.get(name, 0.0))
    default: Any = "-" if name in ("request method", "request URI", "user", "script") else 0
    return process.get(name, default)


def _text(stats: Mapping[str, Any], full: bool, now: float) -> str:
    lines = []
    for name in POOL_FIELDS:
        if name == "start time":
            value: Any = _http_date(float(stats.get(name, now)))
        elif name == "start since":
            value = _since(stats, now)
        else:
            value = stats.get(name, 0)
        lines.append(f"{name + ':':<22}{value}")
    if full:
        for process in _processes(stats):
            lines += ["", "*" * 24]
            for name in _fields(process):
                value = _process_value(process, name, now)
                if name == "start time":
                    value = _http_date(float(value))
                elif name == "last request cpu":
                    value = f"{value:.2f}"
                lines.append(f"{name + ':':<22}{value}")
    return "\n".join(lines) + "\n"


def _json(stats: Mapping[str, Any], full: bool, now: float) -> str:
    out: dict[str, Any] = {}
    for name in POOL_FIELDS:
        value = stats.get(name, 0)
        if name == "start time":
            value = int(float(stats.get(name, now)))
        elif name == "start since":
            value = _since(stats, now)
        out[name] = value
    if full:
        # php-fpm spells it "request uri" in JSON and "request URI" in text.
        out["processes"] = [
            {
                name.lower() if name == "request URI" else name: _process_value(p, name, now)
                for name in _fields(p)
            }
            for p in _processes(stats)
        ]
    return json.dumps(out)


def _metrics(stats: Mapping[str, Any], full: bool, openmetrics: bool) -> str:
    pool = _label(str(stats.get("pool", "")))
    manager = _label(str(stats.get("process manager", "")))
    lines = [
        f"# HELP phpfpm_up Could pool {pool} using a {manager} PM on fcgiserve be reached?",
        "# TYPE phpfpm_up gauge",
        "phpfpm_up 1",
    ]
    now = time.time()
    for suffix, field, kind, text in _METRICS:
        value = _since(stats, now) if field == "start since" else int(stats.get(field, 0))
        name = f"phpfpm_{suffix}"
        lines += [f"# HELP {name} {text}", f"# TYPE {name} {kind}"]
        # OpenMetrics requires a counter's sample to end in _total; the 0.0.4 text format does not.
        sample = f"{name}_total" if openmetrics and kind == "counter" else name
        lines.append(f"{sample} {value}")
    if full:
        lines += _process_metrics(_processes(stats), now, openmetrics)
    if openmetrics:
        lines.append("# EOF")
    return "\n".join(lines) + "\n"


def _process_metrics(processes: Sequence[Mapping[str, Any]], now: float, openmetrics: bool) -> list[str]:
    """One family per worker field, one sample per worker, labelled pid="..." (and thread_id="...")."""
    labels = []
    for process in processes:
        label = f'pid="{_process_value(process, "pid", now)}"'
        if "thread id" in process:
            label += f',thread_id="{_process_value(process, "thread id", now)}"'
        labels.append(label)
    lines = []
    for suffix, field, kind, text in _PROCESS_METRICS:
        name = f"phpfpm_{suffix}"
        sample = f"{name}_total" if openmetrics and kind == "counter" else name
        lines += [f"# HELP {name} {text}", f"# TYPE {name} {kind}"]
        lines += [
            f"{sample}{{{label}}} {int(_process_value(p, field, now))}"
            for p, label in zip(processes, labels, strict=True)
        ]
    name = "phpfpm_process_state"
    lines += [f"# HELP {name} The state of the worker (Idle, Running, ...).", f"# TYPE {name} gauge"]
    lines += [
        f'{name}{{{label},state="{_label(str(_process_value(p, "state", now)))}"}} 1'
        for p, label in zip(processes, labels, strict=True)
    ]
    return lines


def _label(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", " ")


def _http_date(timestamp: float) -> str:
    """php-fpm's start time format: 27/Nov/2026:21:00:00 +0000 (local time)."""
    return time.strftime("%d/%b/%Y:%H:%M:%S %z", time.localtime(timestamp))
