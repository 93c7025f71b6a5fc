"""systemd's notification protocol (sd_notify(3)), stdlib only: READY, RELOADING, STOPPING, STATUS, WATCHDOG.

A service of ``Type=notify`` (or ``notify-reload``) tells systemd how it is doing by sending newline-separated
``KEY=VALUE`` assignments as one datagram to the AF_UNIX socket named by ``$NOTIFY_SOCKET``; a name starting
with '@' is in Linux's abstract namespace (the '@' stands for a leading NUL byte). Without the variable every
call is a no-op, so the server can call these unconditionally.

``ServiceNotifier`` keeps the order systemd expects of ``Type=notify-reload``: one READY=1 at start-up, then
per reload RELOADING=1 with MONOTONIC_USEC (the CLOCK_MONOTONIC time of the reload, which systemd requires to
match the reload to its request) followed by exactly one READY=1 once the new code serves; STOPPING=1 once. A
second ``ready()`` without a reload in between is dropped, so callers need not know whether READY was sent.

Watchdog (``WatchdogPinger``): with ``WATCHDOG_USEC`` set (and ``WATCHDOG_PID`` unset or ours) systemd expects
WATCHDOG=1 at least that often; a thread sends it every half interval while the given liveness check holds.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Callable, Mapping

__all__ = ["ServiceNotifier", "WatchdogPinger", "notify", "notify_socket_address", "watchdog_interval"]


def notify_socket_address(environ: Mapping[str, str] | None = None) -> str | bytes | None:
    """The address to send to, from ``$NOTIFY_SOCKET``: a path, abstract bytes (from '@name'), or None."""
    value = (os.environ if environ is None else environ).get("NOTIFY_SOCKET", "")
    if not value:
        return None
    if value.startswith("@"):
        return b"\0" + value[1:].encode()
    if not value.startswith("/"):
        return None  # sd_notify(3) accepts only absolute paths and abstract names (vsock is not for us)
    return value


def notify(message: str, environ: Mapping[str, str] | None = None) -> bool:
    """Send one notification datagram; True when it was sent, False when there is no socket or it failed.

    Never raises for a missing or broken socket: a service must not die because its supervisor stopped
    listening.
    """
    address = notify_socket_address(environ)
    if address is None:
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.sendto(message.encode("utf-8", "replace"), address)
    except OSError:
        return False
    return True


def watchdog_interval(environ: Mapping[str, str] | None = None) -> float | None:
    """Seconds between required WATCHDOG=1 pings, or None when systemd's watchdog is not set for us."""
    env = os.environ if environ is None else environ
    usec, pid = env.get("WATCHDOG_USEC", ""), env.get("WATCHDOG_PID", "")
    if pid and pid != str(os.getpid()):
        return None
    try:
        value = int(usec)
    except ValueError:
        return None
    return value / 1_000_000 if value > 0 else None


def _monotonic_usec() -> int:
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000


class ServiceNotifier:
    """The service's life as systemd sees it; thread-safe, and a no-op without ``$NOTIFY_SOCKET``."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        self._environ = dict(os.environ if environ is None else environ)
        self._lock = threading.Lock()
        self._ready = False
        self._stopping = False

    @property
    def enabled(self) -> bool:
        return notify_socket_address(self._environ) is not None

    def ready(self, status: str = "") -> bool:
        """READY=1 (with STATUS=), once per start or reload; later calls are dropped."""
        with self._lock:
            if self._ready or self._stopping:
                return False
            self._ready = True
        return self._send("READY=1", status)

    def reloading(self, status: str = "reloading") -> bool:
        """RELOADING=1 with MONOTONIC_USEC; the next ``ready()`` ends the reload. Dropped unless READY was
        sent since the last reload: a second HUP during a reload is still the same reload to systemd."""
        with self._lock:
            if self._stopping or not self._ready:
                return False
            self._ready = False
        return self._send(f"RELOADING=1\nMONOTONIC_USEC={_monotonic_usec()}", status)

    def stopping(self, status: str = "stopping") -> bool:
        """STOPPING=1, once."""
        with self._lock:
            if self._stopping:
                return False
            self._stopping = True
        return self._send("STOPPING=1", status)

    def status(self, text: str) -> bool:
        return self._send("", text)

    def watchdog(self) -> bool:
        return notify("WATCHDOG=1", self._environ)

    def _send(self, head: str, status: str) -> bool:
        lines = [line for line in (head, f"STATUS={status}" if status else "") if line]
        return notify("\n".join(lines), self._environ) if lines else False


class WatchdogPinger:
    """Sends WATCHDOG=1 every half ``interval`` while ``alive()`` holds; ``stop()`` ends the thread."""

    def __init__(self, notifier: ServiceNotifier, interval: float, alive: Callable[[], bool]) -> None:
        self._notifier = notifier
        self._period = max(interval / 2, 0.01)
        self._alive = alive
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fcgiserve-watchdog", daemon=True)

    def start(self) -> WatchdogPinger:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopped.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(self._period + 1.0)

    def _run(self) -> None:
        # A check that fails (a pool that stopped serving) withholds the ping: systemd then acts on it.
        while not self._stopped.wait(self._period):
            if self._alive():
                self._notifier.watchdog()
