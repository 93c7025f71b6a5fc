"""Logging set-up: one line per record on stderr (or a file), reopened on SIGUSR1.

The format suits what a supervisor collects: multilog and svlogd add their own timestamps in front of
ours, and journald gets neither a timestamp (it records one) nor a plain level: when stderr is the journal
(JOURNAL_STREAM names it) each line starts with a syslog priority prefix, "<3>" for errors, which journald
turns into the entry's priority (``journalctl -p err`` works).

Access log lines go to the ``fcgiserve.access`` logger; it is disabled unless an access log is configured,
so ``logger.isEnabledFor(logging.INFO)`` costs the request path nothing when it is off.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Mapping
from typing import TextIO

__all__ = [
    "ACCESS_LOGGER",
    "FORMAT",
    "JOURNAL_FORMAT",
    "ReopenableFileHandler",
    "logging_to_journal",
    "reopen",
    "setup_logging",
]

ACCESS_LOGGER = "fcgiserve.access"
FORMAT = "%(asctime)s [%(process)d] %(levelname)s %(name)s: %(message)s"
JOURNAL_FORMAT = "[%(process)d] %(levelname)s %(name)s: %(message)s"
_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}
# sd-daemon(3) priority prefixes
_SYSLOG_PRIORITY = {
    logging.DEBUG: 7,
    logging.INFO: 6,
    logging.WARNING: 4,
    logging.ERROR: 3,
    logging.CRITICAL: 2,
}

_installed: list[tuple[logging.Logger, logging.Handler]] = []  # what setup_logging added, for the next call


class ReopenableFileHandler(logging.FileHandler):
    """A FileHandler whose file can be reopened after logrotate moved it (SIGUSR1).

    Unlike WatchedFileHandler it does not stat the file on every record: reopening is explicit.
    """

    def reopen(self) -> None:
        self.acquire()
        try:
            old = self.stream
            self.stream = self._open()
            if old is not None:
                old.close()
        finally:
            self.release()


class _JournalFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        priority = _SYSLOG_PRIORITY.get(record.levelno, 6 if record.levelno < logging.WARNING else 3)
        # Every physical line gets the prefix: journald splits a traceback into one entry per line.
        return "\n".join(f"<{priority}>{line}" for line in super().format(record).split("\n"))


def logging_to_journal(stream: TextIO | None = None, environ: Mapping[str, str] | None = None) -> bool:
    """True when ``stream`` (default stderr) is connected to journald, per JOURNAL_STREAM ("dev:inode")."""
    stream = sys.stderr if stream is None else stream
    value = (os.environ if environ is None else environ).get("JOURNAL_STREAM", "")
    try:
        if stream.isatty():
            return False
        device, _, inode = value.partition(":")
        st = os.fstat(stream.fileno())
        return (st.st_dev, st.st_ino) == (int(device), int(inode))
    except (OSError, ValueError, AttributeError):
        return False  # no fileno (a captured stream), or JOURNAL_STREAM unset or malformed


def setup_logging(level: str, log_file: str | None = None, access_log: str | None = None) -> None:
    """Configure the root logger (and the access logger). Calling it again replaces what it installed.

    ``log_file``: append there instead of stderr. ``access_log``: a file, "-" for stderr, or None (off).
    Access records are written as their message alone to a file (the caller formats the whole line), and in
    the normal format on stderr.
    """
    if level not in _LEVELS:
        raise ValueError(f"log level must be one of {', '.join(_LEVELS)} (got {level!r})")
    for logger, old in _installed:
        logger.removeHandler(old)
        old.close()
    _installed.clear()

    root = logging.getLogger()
    root.setLevel(_LEVELS[level])
    root.addHandler(_main_handler(log_file))
    _installed.append((root, root.handlers[-1]))

    access = logging.getLogger(ACCESS_LOGGER)
    access.propagate = False  # access lines never reach the error log by accident
    access.disabled = access_log is None
    access.setLevel(logging.INFO)
    if access_log is not None:
        handler: logging.Handler
        if access_log == "-":
            handler = _main_handler(None)
        else:
            handler = ReopenableFileHandler(access_log, encoding="utf-8")
            handler.setFormatter(logging.Formatter("%(message)s"))
        access.addHandler(handler)
        _installed.append((access, handler))


def _main_handler(log_file: str | None) -> logging.Handler:
    handler: logging.Handler
    if log_file is not None:
        handler = ReopenableFileHandler(log_file, encoding="utf-8")
        handler.setFormatter(logging.Formatter(FORMAT))
    elif logging_to_journal():
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(_JournalFormatter(JOURNAL_FORMAT))
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(FORMAT))
    return handler


def reopen() -> None:
    """Reopen the log files setup_logging opened (call it from the main loop on SIGUSR1, not in a handler)."""
    for _, handler in _installed:
        if isinstance(handler, ReopenableFileHandler):
            handler.reopen()
