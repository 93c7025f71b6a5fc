"""The access log (--access-log) and its logrotate-style reopening on SIGUSR1."""

from __future__ import annotations

import re
import signal
from pathlib import Path

import pytest

from fcgiserve.client import fcgi_request
from fcgiserve.operations import OperationsOptions, RequestOperations, RequestRecord, access_line
from tests.helpers import run_fcgiserve, wait_for

# remote - user [time] "METHOD URI PROTOCOL" status bytes seconds request-id
LINE = re.compile(
    r'^(?P<remote>\S+) - (?P<user>\S+) \[(?P<time>[^\]]+)\] "(?P<method>\S+) (?P<uri>\S+) (?P<proto>\S+)" '
    r"(?P<status>\d{3}|-) (?P<bytes>\d+) (?P<seconds>\d+\.\d{6}) (?P<rid>\S+)$"
)


def _lines(path: Path) -> list[re.Match[str]]:
    if not path.exists():
        return []
    matches = [LINE.match(line) for line in path.read_text().splitlines()]
    assert all(matches), path.read_text()
    return [m for m in matches if m]


@pytest.mark.parametrize("method", ["threaded", "prefork"])
def test_access_log_lines_and_usr1_reopen(tmp_path: Path, method: str) -> None:
    log = tmp_path / "access.log"
    args = ["tests.ops.apps:hello", "--method", method, "--access-log", str(log)]
    with run_fcgiserve(args, tmp_path) as server:
        address = ("127.0.0.1", server.port)
        response = fcgi_request(
            address, path="/first?a=1", params={"HTTP_X_REQUEST_ID": "req-42", "REMOTE_USER": "alice"}
        )
        assert response.status == 200
        assert wait_for(lambda: len(_lines(log)) == 1, timeout=5), server.log()
        (first,) = _lines(log)
        assert first["remote"] == "127.0.0.1" and first["user"] == "alice"
        assert (first["method"], first["uri"], first["proto"]) == ("GET", "/first?a=1", "HTTP/1.1")
        assert first["status"] == "200" and int(first["bytes"]) == len(response.body)
        assert float(first["seconds"]) < 5 and first["rid"] == "req-42"

        # logrotate: move the file away, then tell the server to reopen (its postrotate script).
        rotated = tmp_path / "access.log.1"
        log.rename(rotated)
        server.proc.send_signal(signal.SIGUSR1)
        # The reopen is asynchronous (and forwarded to prefork children): poll until a request lands in the
        # new file. Every request before that went to the rotated one; none is lost.
        sent = 1
        for _ in range(100):
            assert fcgi_request(address, path=f"/after/{sent}").status == 200
            sent += 1
            if wait_for(lambda: log.exists() and _lines(log), timeout=0.1):
                break
        assert wait_for(lambda: len(_lines(log)) + len(_lines(rotated)) == sent, timeout=5), server.log()
        assert _lines(log), "no request reached the reopened file"
        # Every prefork child reopens on its own: wait until ten requests in a row land in the new file.
        streak = 0
        for n in range(200):
            if streak == 10:
                break
            assert fcgi_request(address, path=f"/settle/{n}").status == 200
            in_new = wait_for(lambda n=n: any(m["uri"] == f"/settle/{n}" for m in _lines(log)), timeout=1)
            streak = streak + 1 if in_new else 0
        assert streak == 10, "a process kept writing to the rotated file"
        assert fcgi_request(address, path="/last").status == 200
        assert wait_for(lambda: _lines(log)[-1]["uri"] == "/last", timeout=5)
        assert all(m["uri"] != "/last" for m in _lines(rotated))
    assert "Traceback" not in server.log()


def test_access_line_format_is_one_line_whatever_the_uri() -> None:
    record = RequestRecord(
        {"REQUEST_METHOD": "GET", "REQUEST_URI": '/a"b\nc', "SERVER_PROTOCOL": "HTTP/1.0"}, answer=None
    )
    line = access_line(record, record.started + 0.25)
    assert "\n" not in line and '"GET /a\\x22b\\x0ac HTTP/1.0" - 0 0.250000 -' in line
    assert line.startswith("- - - [")


def test_metering_reads_status_and_body_size_split_across_writes() -> None:
    class Sink:
        def __init__(self) -> None:
            self.out = b""

        def write(self, data: bytes, last: bool = False) -> None:
            self.out += data

        def write_errors(self, data: bytes) -> None:
            pass

    record = RequestRecord({}, answer=None)
    sink = Sink()
    io = record.wrap(sink)
    io.write(b"Status: 404 Not Fou")
    io.write(b"nd\r\nContent-Type: text/plain\r\n\r\nab")
    io.write(b"cde", last=True)
    assert (record.status, record.body_bytes) == (404, 5)
    assert sink.out.endswith(b"\r\n\r\nabcde")


@pytest.mark.parametrize("access_log", [False, True])
def test_only_the_access_log_puts_a_meter_between_the_application_and_the_connection(
    access_log: bool,
) -> None:
    ops = RequestOperations(OperationsOptions(status_path="/status", access_log=access_log))
    sink = object()
    record = ops.begin({"REQUEST_URI": "/app", "REQUEST_METHOD": "GET"}, ("127.0.0.1", 1))
    try:
        assert record.answer is None
        assert (record.wrap(sink) is record) is access_log
    finally:
        ops.finish(record)
