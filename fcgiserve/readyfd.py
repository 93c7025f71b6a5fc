"""Readiness on an inherited file descriptor: one newline once the server serves (s6's ``notification-fd``).

s6-supervise starts the run script with the write end of a pipe as fd N when the service directory holds a
``notification-fd`` file that says N. It counts the service ready once a newline comes through the pipe:
``s6-svwait -U`` returns, ``s6-svstat`` says "ready", s6-rc starts what depends on it. The daemon then closes
the fd. dinit's ``ready-notification = pipefd:N`` is the same protocol. fcgiserve writes the newline when its
pool first serves, the moment systemd gets READY=1 (sdnotify.py).

A threaded reload re-executes the process in place. The new image must not write again: s6 already counts the
service ready, the fd is closed, and its number may belong to a socket by then. The environment tells the new
image that the newline went out (``READY_SENT_ENV``), and it leaves the fd alone.
"""

from __future__ import annotations

import fcntl
import logging
import os
import threading
import weakref
from collections.abc import Collection, MutableMapping

__all__ = ["READY_SENT_ENV", "ReadyFd", "ReadyFdError"]

log = logging.getLogger("fcgiserve")

READY_SENT_ENV = "FCGISERVE_READY_FD_SENT"  # "3": a previous image of this process wrote fd 3's newline


class ReadyFdError(Exception):
    """The fd given for readiness cannot take the newline; the message is one line."""


# Instances still to write their newline. A fork closes their fds in the child: a prefork child forked before
# the pool is ready must not hold the supervisor's pipe open. Weak, and emptied as newlines go out, so that a
# later fork never closes a number that belongs to something else by then.
_pending: weakref.WeakSet[ReadyFd] = weakref.WeakSet()
_hooked = False
_hook_lock = threading.Lock()


def _watch(ready: ReadyFd) -> None:
    global _hooked
    with _hook_lock:
        _pending.add(ready)
        if not _hooked:
            os.register_at_fork(after_in_child=_close_pending_in_child)
            _hooked = True


def _close_pending_in_child() -> None:
    for ready in list(_pending):
        ready._close_in_child()


class ReadyFd:
    """The readiness fd of this process (``fd`` None: there is none, every call does nothing)."""

    def __init__(self, fd: int | None, environ: MutableMapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        sent = env.pop(READY_SENT_ENV, None) if fd is not None else None
        self._fd = fd
        self._sent = fd is not None and sent == str(fd)
        self._lock = threading.Lock()
        if self.pending:
            _watch(self)

    @property
    def pending(self) -> bool:
        """True while the newline is still to be written."""
        return self._fd is not None and not self._sent

    def check(self, listening: Collection[int] = ()) -> None:
        """Refuse, before serving, an fd that is not open for writing or that is one of ``listening``."""
        fd = self._fd
        if fd is None or self._sent:
            return
        try:
            flags = fcntl.fcntl(fd, fcntl.F_GETFL)
        except OSError:
            raise ReadyFdError(
                f"--ready-fd {fd}: no such open file descriptor (s6 opens it when the service directory "
                "has a notification-fd file with this number)"
            ) from None
        if flags & os.O_ACCMODE == os.O_RDONLY:
            raise ReadyFdError(f"--ready-fd {fd}: the file descriptor is open for reading only")
        if fd in listening:
            raise ReadyFdError(f"--ready-fd {fd}: that file descriptor is a listening socket")

    def ready(self) -> bool:
        """Write the newline and close the fd, once; True when it was written now. A supervisor that is
        gone (EPIPE) is logged, never fatal."""
        with self._lock:
            if not self.pending:
                return False
            self._sent = True
            fd = self._fd
        _pending.discard(self)
        assert fd is not None
        try:
            os.write(fd, b"\n")
        except OSError as exc:
            log.warning("--ready-fd %d: could not write the readiness newline: %s", fd, exc.strerror)
            return False
        finally:
            try:
                os.close(fd)
            except OSError:
                pass
        return True

    def _close_in_child(self) -> None:
        fd = self._fd
        _pending.discard(self)
        if fd is not None and not self._sent:
            self._sent = True  # the child has nothing to announce
            try:
                os.close(fd)
            except OSError:
                pass

    def export_for_reexec(self) -> dict[str, str]:
        """What a re-executed image of this process needs: the marker once the newline went out, else the fd
        kept open across exec so that the new image can write it."""
        if self._fd is None:
            return {}
        if self._sent:
            return {READY_SENT_ENV: str(self._fd)}
        try:
            os.set_inheritable(self._fd, True)
        except OSError:
            pass
        return {}
