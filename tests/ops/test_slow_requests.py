"""--slow-request-time: a request running too long is logged once with its stack, not killed, and counted."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fcgiserve.client import fcgi_request
from tests.helpers import run_fcgiserve, wait_for


@pytest.mark.parametrize("method", ["threaded", "prefork"])
def test_slow_request_is_logged_once_with_its_stack(tmp_path: Path, method: str) -> None:
    args = ["tests.ops.apps:sleepy", "--method", method, "--slow-request-time", "0.3", "--status-path", "/st"]
    with run_fcgiserve(args, tmp_path) as server:
        address = ("127.0.0.1", server.port)
        response = fcgi_request(address, path="/nap?seconds=1.2", timeout=15)
        assert (response.status, response.body) == (200, b"slept\n")  # reported, not killed
        assert wait_for(lambda: "slow request:" in server.log(), timeout=5), server.log()
        log = server.log()
        assert log.count("slow request:") == 1, log
        report = log[log.index("slow request:") :]
        assert "GET /nap?seconds=1.2 running for 0." in report
        assert "(--slow-request-time 0.3s)" in report
        assert 'tests/ops/apps.py", line' in report and "in sleepy" in report and "time.sleep" in report

        fast = fcgi_request(address, path="/nap?seconds=0", timeout=15)
        assert fast.status == 200
        status = json.loads(fcgi_request(address, path="/st", params={"QUERY_STRING": "json"}).body)
        assert status["slow requests"] == 1
    assert server.log().count("slow request:") == 1
