"""The pidfile: written atomically, refused while it names a live process, removed only by its owner.

A reader never sees a partial file: the pid goes to a temporary file in the same directory, which is then
linked (first start: fails if another server won the race) or renamed (replacing a stale file) into place.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile

__all__ = ["Pidfile", "PidfileError"]

log = logging.getLogger(__name__)


class PidfileError(Exception):
    """The pidfile cannot be written, or it names a running process; the message is one line."""


class Pidfile:
    __slots__ = ("path", "pid")

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        self.pid: int | None = None  # what create() wrote

    def create(self, pid: int | None = None) -> None:
        """Write ``pid`` (default: this process). Raises PidfileError if the file names another live process.

        A file naming a dead process, or holding no pid at all, is stale and replaced (logged at info).
        A file naming ``pid`` itself is rewritten: a server re-executing in place keeps its pid.
        """
        pid = os.getpid() if pid is None else pid
        temp = self._write_temp(pid)
        try:
            try:
                os.link(
                    temp, self.path
                )  # atomic create-if-absent: two servers starting at once cannot both win
            except FileExistsError:
                self._check_existing(pid)
                os.replace(temp, self.path)
            except OSError:
                # a filesystem without hard links: check, then rename (the check-to-rename race is accepted)
                if os.path.lexists(self.path):
                    self._check_existing(pid)
                os.replace(temp, self.path)
        except OSError as exc:
            raise PidfileError(f"cannot write pidfile {self.path}: {exc.strerror or exc}") from None
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temp)  # after link() both names exist; after replace() it is already gone
        self.pid = pid

    def remove(self) -> bool:
        """Remove the file if it still names the pid we wrote and we are that process. True if removed.

        A forked child holding a copy of this object, or a file rewritten by a newer server, is left alone.
        """
        if self.pid is None or self.pid != os.getpid() or self.read() != self.pid:
            return False
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
        self.pid = None
        return True

    def read(self) -> int | None:
        """The pid in the file, or None if it is missing, unreadable or holds no positive integer."""
        try:
            with open(self.path, encoding="ascii", errors="replace") as f:
                text = f.read(64).strip()
        except OSError:
            return None
        return int(text) if text.isdigit() and int(text) > 0 else None

    def _write_temp(self, pid: int) -> str:
        directory = os.path.dirname(os.path.abspath(self.path))
        try:
            fd, temp = tempfile.mkstemp(prefix=f".{os.path.basename(self.path)}.", dir=directory)
        except OSError as exc:
            raise PidfileError(f"cannot write pidfile {self.path}: {exc.strerror or exc}") from None
        try:
            os.write(fd, f"{pid}\n".encode("ascii"))
            os.fchmod(fd, 0o644)  # mkstemp makes it 0600; monitoring tools running as others read pidfiles
        except OSError as exc:
            os.unlink(temp)
            raise PidfileError(f"cannot write pidfile {self.path}: {exc.strerror or exc}") from None
        finally:
            os.close(fd)
        return temp

    def _check_existing(self, pid: int) -> None:
        existing = self.read()
        if existing is None:
            log.info("replacing pidfile %s: it holds no pid", self.path)
        elif existing == pid:
            pass
        elif _is_alive(existing):
            raise PidfileError(
                f"pidfile {self.path} names running process {existing}; is another fcgiserve running?"
            )
        else:
            log.info("replacing stale pidfile %s: process %d is not running", self.path, existing)


def _is_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by another user
    return True
