"""fcgiserve.logs: the line format, journald detection, log files reopened after rotation, the access log."""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from fcgiserve import logs
from fcgiserve.logs import ACCESS_LOGGER, ReopenableFileHandler, logging_to_journal, reopen, setup_logging

ROOT = Path(__file__).resolve().parents[2]
LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} \[(\d+)\] (\w+) ([\w.]+): (.*)$")


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    access = logging.getLogger(ACCESS_LOGGER)
    saved = (root.level, access.disabled, access.propagate, access.level)
    yield
    for logger, handler in logs._installed:
        logger.removeHandler(handler)
        handler.close()
    logs._installed.clear()
    root.setLevel(saved[0])
    access.disabled, access.propagate = saved[1], saved[2]
    access.setLevel(saved[3])


def ours(logger: logging.Logger) -> list[logging.Handler]:
    """Handlers setup_logging installed (pytest adds its own capture handlers to the root logger)."""
    return [h for h in logger.handlers if any(h is installed for _, installed in logs._installed)]


def test_stderr_line_format_and_level(capsys: pytest.CaptureFixture[str]) -> None:
    setup_logging("warning")
    logging.getLogger("fcgiserve.test").info("hidden")
    logging.getLogger("fcgiserve.test").warning("shown %d", 1)
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1
    match = LINE.match(lines[0])
    assert match is not None, lines
    assert match.groups() == (str(os.getpid()), "WARNING", "fcgiserve.test", "shown 1")


def test_setting_up_again_replaces_instead_of_adding(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    setup_logging("info")
    setup_logging("info", access_log=str(tmp_path / "access.log"))
    setup_logging("debug")
    assert len(ours(logging.getLogger())) == 1 and ours(logging.getLogger(ACCESS_LOGGER)) == []
    logging.getLogger("fcgiserve.test").debug("once")
    assert capsys.readouterr().err.count("once") == 1


def test_log_file_is_reopened_after_rotation(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "server.log"
    setup_logging("info", str(path))
    log = logging.getLogger("fcgiserve.test")
    log.info("before rotation")
    path.rename(tmp_path / "server.log.1")  # what logrotate does before sending SIGUSR1
    log.info("still the old file")
    reopen()
    log.info("after rotation")
    assert "before rotation" in (tmp_path / "server.log.1").read_text()
    assert "still the old file" in (tmp_path / "server.log.1").read_text()
    new = path.read_text().splitlines()
    assert len(new) == 1 and LINE.match(new[0]) and new[0].endswith("fcgiserve.test: after rotation")
    assert capsys.readouterr().err == ""  # a log file replaces stderr


def test_access_log_is_off_and_free_by_default() -> None:
    setup_logging("debug")
    access = logging.getLogger(ACCESS_LOGGER)
    assert not access.isEnabledFor(logging.INFO)


def test_access_log_file_gets_bare_lines_and_is_reopened(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "access.log"
    setup_logging("error", access_log=str(path))  # the error log level does not silence the access log
    access = logging.getLogger(ACCESS_LOGGER)
    assert access.isEnabledFor(logging.INFO)
    access.info('127.0.0.1 "GET / HTTP/1.1" 200 5')
    path.rename(tmp_path / "access.log.1")
    reopen()
    access.info('127.0.0.1 "GET /b HTTP/1.1" 404 0')
    assert (tmp_path / "access.log.1").read_text() == '127.0.0.1 "GET / HTTP/1.1" 200 5\n'
    assert path.read_text() == '127.0.0.1 "GET /b HTTP/1.1" 404 0\n'
    assert capsys.readouterr().err == ""  # never propagated to the error log


def test_access_log_on_stderr(capsys: pytest.CaptureFixture[str]) -> None:
    setup_logging("warning", access_log="-")
    logging.getLogger(ACCESS_LOGGER).info("GET /")
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0].endswith(f"INFO {ACCESS_LOGGER}: GET /")


def test_invalid_level() -> None:
    with pytest.raises(ValueError, match="log level must be one of debug, info, warning, error"):
        setup_logging("verbose")


def test_reopenable_handler_survives_a_missing_file(tmp_path: Path) -> None:
    handler = ReopenableFileHandler(str(tmp_path / "a.log"), encoding="utf-8")
    try:
        os.unlink(tmp_path / "a.log")
        handler.reopen()
        assert (tmp_path / "a.log").exists()
    finally:
        handler.close()


def test_logging_to_journal_matches_the_stream_identity(tmp_path: Path) -> None:
    with open(tmp_path / "stream", "w") as stream, open(tmp_path / "other", "w") as other:
        st = os.fstat(stream.fileno())
        ident = f"{st.st_dev}:{st.st_ino}"
        assert logging_to_journal(stream, {"JOURNAL_STREAM": ident})
        assert not logging_to_journal(other, {"JOURNAL_STREAM": ident})
        assert not logging_to_journal(stream, {})
        assert not logging_to_journal(stream, {"JOURNAL_STREAM": "garbage"})


JOURNAL_CHILD = """
import logging
from fcgiserve.logs import setup_logging
setup_logging("info")
log = logging.getLogger("fcgiserve.child")
log.info("started")
try:
    1 / 0
except ZeroDivisionError:
    log.exception("failed")
"""


def run_logging_child(tmp_path: Path, journal: bool) -> list[str]:
    err = tmp_path / "stderr"
    with open(err, "w") as stream:
        st = os.fstat(stream.fileno())
        env = {k: v for k, v in os.environ.items() if k != "JOURNAL_STREAM"}
        if journal:
            env["JOURNAL_STREAM"] = f"{st.st_dev}:{st.st_ino}"
        subprocess.run(
            [sys.executable, "-c", JOURNAL_CHILD], cwd=ROOT, stderr=stream, env=env, timeout=30, check=True
        )
    return err.read_text().splitlines()


def test_journald_gets_priorities_and_no_timestamp(tmp_path: Path) -> None:
    lines = run_logging_child(tmp_path, journal=True)
    assert re.fullmatch(r"<6>\[\d+\] INFO fcgiserve\.child: started", lines[0]), lines
    assert re.fullmatch(r"<3>\[\d+\] ERROR fcgiserve\.child: failed", lines[1]), lines
    assert lines[2] == "<3>Traceback (most recent call last):"  # every traceback line keeps the priority
    assert all(line.startswith("<3>") for line in lines[1:])


def test_plain_stderr_keeps_the_timestamp(tmp_path: Path) -> None:
    lines = run_logging_child(tmp_path, journal=False)
    assert LINE.match(lines[0]) and lines[0].endswith("INFO fcgiserve.child: started")
    assert lines[2] == "Traceback (most recent call last):"
