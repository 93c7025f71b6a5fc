"""--ready-fd: s6's readiness notification (a newline on an inherited fd once the server serves).

The unit tests drive ``ReadyFd`` on pipes; the process tests run the CLI with the write end of a pipe passed
on, as s6-supervise does for a service with a ``notification-fd``, in both methods and through a reload (for
threaded, a re-exec in place). tests/integration/test_supervisors.py runs it under real s6.
"""

from __future__ import annotations

import logging
import os
import select
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from fcgiserve.client import fcgi_request
from fcgiserve.readyfd import READY_SENT_ENV, ReadyFd, ReadyFdError
from tests.helpers import ROOT, free_port, wait_for


@pytest.fixture
def pipe() -> Iterator[tuple[int, int]]:
    read_end, write_end = os.pipe()
    yield read_end, write_end
    for fd in (read_end, write_end):
        try:
            os.close(fd)
        except OSError:
            pass


def _is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


def test_ready_writes_one_newline_and_closes_the_fd(pipe: tuple[int, int]) -> None:
    read_end, write_end = pipe
    ready = ReadyFd(write_end, environ={})
    ready.check()
    assert ready.pending
    assert ready.ready() is True
    assert not ready.pending and not _is_open(write_end)
    assert ready.ready() is False  # once
    assert os.read(read_end, 16) == b"\n"
    assert os.read(read_end, 16) == b"", "the write end is closed: the supervisor sees EOF after the newline"


def test_without_an_fd_nothing_happens() -> None:
    ready = ReadyFd(None, environ={})
    ready.check()
    assert not ready.pending and ready.ready() is False and ready.export_for_reexec() == {}


def test_check_refuses_what_cannot_take_the_newline(pipe: tuple[int, int], tmp_path: Path) -> None:
    read_end, write_end = pipe
    os.close(write_end)
    with pytest.raises(ReadyFdError, match="no such open file descriptor"):
        ReadyFd(write_end, environ={}).check()
    with pytest.raises(ReadyFdError, match="reading only"):
        ReadyFd(read_end, environ={}).check()
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        with pytest.raises(ReadyFdError, match="listening socket"):
            ReadyFd(listener.fileno(), environ={}).check({listener.fileno()})


def test_a_gone_supervisor_is_logged_not_fatal(
    pipe: tuple[int, int], caplog: pytest.LogCaptureFixture
) -> None:
    read_end, write_end = pipe
    os.close(read_end)  # nobody reads: EPIPE (Python ignores SIGPIPE)
    ready = ReadyFd(write_end, environ={})
    with caplog.at_level(logging.WARNING, logger="fcgiserve"):
        assert ready.ready() is False
    assert "could not write the readiness newline" in caplog.text
    assert not _is_open(write_end)


def test_a_reexecuted_image_knows_the_newline_went_out(pipe: tuple[int, int]) -> None:
    _read_end, write_end = pipe
    before = ReadyFd(write_end, environ={})
    assert before.export_for_reexec() == {}  # not sent yet: the fd itself crosses exec
    assert os.get_inheritable(write_end)
    before.ready()
    env = before.export_for_reexec()
    assert env == {READY_SENT_ENV: str(write_end)}
    after = ReadyFd(write_end, environ=env)
    assert env == {}, "the marker is consumed, so the application never sees it"
    assert not after.pending and after.ready() is False
    after.check()  # the fd is closed by now, and that is no error
    assert ReadyFd(write_end + 1, environ={READY_SENT_ENV: str(write_end)}).pending  # another fd: pending


def test_a_child_forked_before_ready_does_not_hold_the_pipe(pipe: tuple[int, int]) -> None:
    read_end, write_end = pipe
    ready = ReadyFd(write_end, environ={})
    pid = os.fork()
    if pid == 0:  # the child: its copy was closed at fork
        os._exit(0 if not _is_open(write_end) else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert ready.ready() is True
    assert os.read(read_end, 16) == b"\n" and os.read(read_end, 16) == b""


def test_a_later_fork_leaves_a_dropped_instances_number_alone(pipe: tuple[int, int]) -> None:
    """Only a live, pending instance closes its fd at fork: once dropped (a server that is gone), its number
    may belong to something else."""
    _read_end, write_end = pipe
    ReadyFd(write_end, environ={})  # never ready, dropped at once
    pid = os.fork()
    if pid == 0:
        os._exit(0 if _is_open(write_end) else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


# --- the CLI, as s6-supervise runs it --------------------------------------------------------------------


@contextmanager
def _server(tmp_path: Path, *args: str) -> Iterator[tuple[subprocess.Popen[bytes], int, int, Path]]:
    """fcgiserve with a pipe's write end passed on (its number as --ready-fd, as s6 passes the number of its
    service's notification-fd); yields (process, read end, port, log)."""
    read_end, write_end = os.pipe()
    port = free_port()
    log = tmp_path / "fcgiserve.log"
    argv = [sys.executable, "-m", "fcgiserve", "tests.ops.apps:hello", "--port", str(port), *args]
    argv += ["--ready-fd", str(write_end), "--graceful-timeout", "5"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    try:
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                argv, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=ROOT, pass_fds=(write_end,)
            )
    finally:
        os.close(write_end)
    try:
        yield proc, read_end, port, log
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        os.close(read_end)


def _read_within(fd: int, seconds: float) -> bytes | None:
    """What the pipe gives within ``seconds`` (b"" at EOF), or None if nothing came."""
    readable, _, _ = select.select([fd], [], [], seconds)
    return os.read(fd, 64) if readable else None


def _answers(port: int) -> bool:
    return fcgi_request(("127.0.0.1", port), path="/", timeout=10).status == 200


@pytest.mark.parametrize("method", ["threaded", "prefork"])
def test_the_newline_comes_once_the_server_serves(tmp_path: Path, method: str) -> None:
    with _server(tmp_path, "--method", method) as (proc, read_end, port, log):
        assert _read_within(read_end, 30) == b"\n", log.read_text()
        assert _answers(port), "ready means serving: the first request needs no retry"
        # Then EOF: the master closed its end, and no prefork child holds a copy.
        assert _read_within(read_end, 10) == b"", "the supervisor's pipe is still held open"
        proc.send_signal(signal.SIGHUP)  # threaded: a re-exec in place; prefork: a new generation
        assert wait_for(lambda: "reload" in log.read_text(), timeout=10)
        assert wait_for(lambda: _answers(port), timeout=15)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0, log.read_text()
    text = log.read_text()
    assert "Traceback" not in text and "ERROR" not in text and "WARNING" not in text, text


def test_a_ready_fd_that_is_not_open_stops_the_start(tmp_path: Path) -> None:
    argv = [sys.executable, "-m", "fcgiserve", "tests.ops.apps:hello", "--port", str(free_port())]
    done = subprocess.run(
        [*argv, "--ready-fd", "9"],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        cwd=ROOT,
        timeout=60,
    )
    assert done.returncode == 4, done.stderr
    assert "--ready-fd 9: no such open file descriptor" in done.stderr
