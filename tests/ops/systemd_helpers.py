"""Playing systemd's part: a NOTIFY_SOCKET to listen on, and socket activation through an exec wrapper.

systemd forks, puts the activated sockets at fd 3.., sets LISTEN_FDS / LISTEN_FDNAMES and, in the child (so
that it names the pid that will run the service), LISTEN_PID, then executes the service. The wrapper below
does the same: it is the forked child, so after ``os.execv`` the server has the very pid LISTEN_PID names.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from tests.helpers import ROOT

# argv: fd to move to 3, then the server's argv. Runs in the child between fork and the server's exec.
ACTIVATE = (
    "import os, sys\n"
    "fd = int(sys.argv[1])\n"
    "if fd != 3:\n"
    "    os.dup2(fd, 3)\n"
    "    os.close(fd)\n"
    "os.set_inheritable(3, True)\n"
    "os.environ['LISTEN_PID'] = str(os.getpid())\n"
    "os.environ['LISTEN_FDS'] = '1'\n"
    "os.environ['LISTEN_FDNAMES'] = 'fcgi'\n"
    "os.execv(sys.executable, [sys.executable, *sys.argv[2:]])\n"
)


class NotifyListener:
    """The AF_UNIX datagram socket systemd listens on; ``messages`` are the datagrams received."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.messages: list[str] = []

    def next(self, timeout: float = 15.0, skip_watchdog: bool = True) -> str:
        """The next datagram (WATCHDOG=1 pings skipped unless asked for); TimeoutError after ``timeout``."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no notification within {timeout}s; got so far: {self.messages}")
            self.sock.settimeout(left)
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            message = data.decode()
            self.messages.append(message)
            if not (skip_watchdog and message == "WATCHDOG=1"):
                return message

    def close(self) -> None:
        self.sock.close()


def fields(message: str) -> dict[str, str]:
    return dict(line.partition("=")[::2] for line in message.split("\n"))


@contextlib.contextmanager
def socket_activated(
    args: Sequence[str], tmp_path: Path, env: dict[str, str] | None = None
) -> Iterator[tuple[subprocess.Popen[bytes], int, NotifyListener, Path]]:
    """Start ``python -m fcgiserve args`` the way systemd would: (process, port, notify listener, log)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    port = listener.getsockname()[1]
    notify = NotifyListener(tmp_path / "notify.sock")
    log_path = tmp_path / "server.log"
    full_env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "PYTHONUNBUFFERED": "1",
        "NOTIFY_SOCKET": str(notify.path),
        **(env or {}),
    }
    argv = [sys.executable, "-c", ACTIVATE, str(listener.fileno()), "-m", "fcgiserve", *args]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            argv,
            cwd=tmp_path,
            env=full_env,
            stdout=log,
            stderr=subprocess.STDOUT,
            pass_fds=[listener.fileno()],
        )
    listener.close()  # the server holds its copy, as after systemd's fork
    try:
        yield proc, port, notify, log_path
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)
        notify.close()
