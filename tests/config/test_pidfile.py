"""fcgiserve.pidfile: atomic creation, stale and live pids (real processes), removal only by the owner."""

from __future__ import annotations

import logging
import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from fcgiserve.pidfile import Pidfile, PidfileError


@pytest.fixture
def live_pid() -> Iterator[int]:
    """The pid of a running process that is not us."""
    proc = subprocess.Popen(["sleep", "60"])
    try:
        yield proc.pid
    finally:
        proc.kill()
        proc.wait(timeout=10)


@pytest.fixture
def dead_pid() -> int:
    """The pid of a process that has exited and been reaped."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait(timeout=30)
    return proc.pid


def leftovers(directory: Path, name: str) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name != name)


def test_create_writes_our_pid_readably(tmp_path: Path) -> None:
    path = tmp_path / "app.pid"
    pidfile = Pidfile(path)
    pidfile.create()
    assert path.read_text() == f"{os.getpid()}\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert pidfile.read() == os.getpid() and pidfile.pid == os.getpid()
    assert leftovers(tmp_path, "app.pid") == []  # the temporary file is gone


def test_stale_pid_is_replaced_with_an_info_log(
    tmp_path: Path, dead_pid: int, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "app.pid"
    path.write_text(f"{dead_pid}\n")
    with caplog.at_level(logging.INFO, logger="fcgiserve.pidfile"):
        Pidfile(path).create()
    assert path.read_text() == f"{os.getpid()}\n"
    assert f"process {dead_pid} is not running" in caplog.text
    assert leftovers(tmp_path, "app.pid") == []


@pytest.mark.parametrize("content", ["", "garbage\n", "-1\n", "0\n", "12 34\n", "\x00\xff"])
def test_unparsable_pidfile_is_replaced(
    tmp_path: Path, content: str, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "app.pid"
    path.write_text(content)
    with caplog.at_level(logging.INFO, logger="fcgiserve.pidfile"):
        Pidfile(path).create()
    assert path.read_text() == f"{os.getpid()}\n" and "holds no pid" in caplog.text


def test_live_pid_is_refused_and_the_file_kept(tmp_path: Path, live_pid: int) -> None:
    path = tmp_path / "app.pid"
    path.write_text(f"{live_pid}\n")
    with pytest.raises(PidfileError) as info:
        Pidfile(path).create()
    assert (
        str(info.value) == f"pidfile {path} names running process {live_pid}; is another fcgiserve running?"
    )
    assert path.read_text() == f"{live_pid}\n"
    assert leftovers(tmp_path, "app.pid") == []


def test_second_server_in_another_process_is_refused(tmp_path: Path) -> None:
    """A real competing server: a child process that wrote the pidfile and is still running."""
    path = tmp_path / "app.pid"
    code = (
        "import sys, time; from fcgiserve.pidfile import Pidfile; Pidfile(sys.argv[1]).create(); "
        "print(1, flush=True); time.sleep(60)"
    )
    root = Path(__file__).resolve().parents[2]
    proc = subprocess.Popen([sys.executable, "-c", code, str(path)], cwd=root, stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None and proc.stdout.readline() == b"1\n"
        with pytest.raises(PidfileError, match=f"names running process {proc.pid}"):
            Pidfile(path).create()
    finally:
        proc.kill()
        proc.wait(timeout=10)
        assert proc.stdout is not None
        proc.stdout.close()


def test_our_own_pid_is_rewritten(tmp_path: Path) -> None:
    """A threaded server re-executes in place with the same pid: its own pidfile is not "another server"."""
    path = tmp_path / "app.pid"
    path.write_text(f"{os.getpid()}")
    Pidfile(path).create()
    assert path.read_text() == f"{os.getpid()}\n"


def test_missing_directory_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(PidfileError, match=f"^cannot write pidfile {tmp_path}/nope/app.pid: "):
        Pidfile(tmp_path / "nope" / "app.pid").create()


def test_remove_deletes_our_file(tmp_path: Path) -> None:
    path = tmp_path / "app.pid"
    pidfile = Pidfile(path)
    pidfile.create()
    assert pidfile.remove() is True and not path.exists()
    assert pidfile.remove() is False  # nothing left to remove


def test_remove_leaves_a_file_rewritten_by_another_server(tmp_path: Path, live_pid: int) -> None:
    path = tmp_path / "app.pid"
    pidfile = Pidfile(path)
    pidfile.create()
    path.write_text(f"{live_pid}\n")
    assert pidfile.remove() is False and path.read_text() == f"{live_pid}\n"


def test_remove_in_a_forked_child_leaves_the_parents_file(tmp_path: Path) -> None:
    path = tmp_path / "app.pid"
    pidfile = Pidfile(path)
    pidfile.create()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        os._exit(0 if pidfile.remove() is False else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert path.read_text() == f"{os.getpid()}\n"
    assert pidfile.remove() is True


def test_remove_without_create_does_nothing(tmp_path: Path) -> None:
    path = tmp_path / "app.pid"
    path.write_text(f"{os.getpid()}\n")
    assert Pidfile(path).remove() is False and path.exists()
