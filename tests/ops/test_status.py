"""--status-path and --ping-path: php-fpm's status and ping pages, answered without running the app."""

from __future__ import annotations

import json
import re
import threading
from pathlib import Path

import pytest

from fcgiserve.client import fcgi_request
from fcgiserve.config import Config
from fcgiserve.operations import SharedCounters
from fcgiserve.status import POOL_FIELDS, render_status, status_format
from fcgiserve.status_sources import build_operations
from tests.helpers import ROOT, http_get, run_fcgiserve, run_nginx

ARGS = ["--status-path", "/status", "--ping-path", "/ping"]


def _documented_nginx_location() -> str:
    """The nginx block of docs/operations.md, pointed at the test's upstream."""
    text = (ROOT / "docs" / "operations.md").read_text()
    block = text.split("```nginx\n# fcgiserve status and ping\n", 1)[1].split("```", 1)[0]
    assert "fastcgi_pass 127.0.0.1:8080;" in block
    block = block.replace("fastcgi_pass 127.0.0.1:8080;", "fastcgi_pass backend;")
    return block.replace("include fastcgi_params;", "include /etc/nginx/fastcgi_params;")


def _text_fields(body: bytes) -> dict[str, str]:
    fields = {}
    for line in body.decode().split("\n\n")[0].splitlines():
        name, _, value = line.partition(":")
        fields[name] = value.strip()
    return fields


@pytest.mark.parametrize("method", ["threaded", "prefork"])
def test_status_formats_and_ping(tmp_path: Path, method: str) -> None:
    with run_fcgiserve(["tests.ops.apps:hello", "--method", method, *ARGS], tmp_path) as server:
        address = ("127.0.0.1", server.port)
        for _ in range(5):
            assert fcgi_request(address, path="/app").status == 200

        ping = fcgi_request(address, path="/ping")
        assert (ping.status, ping.body) == (200, b"pong\n")
        assert ping.header("Content-Type") == "text/plain; charset=utf-8"

        text = fcgi_request(address, path="/status")
        assert text.status == 200 and text.header("Cache-Control") == "no-cache, no-store, must-revalidate"
        fields = _text_fields(text.body)
        assert list(fields) == list(POOL_FIELDS), fields
        assert fields["pool"] == "fcgiserve" and fields["process manager"] == "dynamic"
        assert int(fields["accepted conn"]) == 5  # counted across processes; status and ping are not
        assert re.fullmatch(r"\d\d/\w{3}/\d{4}:\d\d:\d\d:\d\d [+-]\d{4}", fields["start time"])
        assert int(fields["listen queue len"]) == 1024  # --backlog, read from the kernel (TCP_INFO)
        assert int(fields["total processes"]) >= 1
        assert int(fields["active processes"]) >= 1  # the worker answering this very request

        data = json.loads(fcgi_request(address, path="/status", params={"QUERY_STRING": "json&full"}).body)
        assert list(data)[: len(POOL_FIELDS)] == list(POOL_FIELDS)
        assert data["accepted conn"] == 5 and isinstance(data["start time"], int)
        if method == "prefork":
            pids = {p["pid"] for p in data["processes"]}
            assert len(pids) == data["total processes"] and 0 not in pids, data
            assert all(p["state"] in ("Idle", "Running") for p in data["processes"])
            # The scoreboard counts every finished request: 5 for the app, the ping and the text status.
            assert sum(p["requests"] for p in data["processes"]) == 7

        metrics = fcgi_request(address, path="/status", params={"QUERY_STRING": "openmetrics"})
        assert str(metrics.header("Content-Type")).startswith("application/openmetrics-text; version=1.0.0")
        lines = metrics.body.decode().splitlines()
        assert lines[-1] == "# EOF" and "phpfpm_up 1" in lines
        assert "phpfpm_accepted_connections_total 5" in lines
        prom = fcgi_request(address, path="/status", params={"QUERY_STRING": "prometheus"})
        assert "phpfpm_accepted_connections 5" in prom.body.decode().splitlines()
    assert "Traceback" not in server.log()


def test_full_status_lists_a_request_in_progress_threaded(tmp_path: Path) -> None:
    with run_fcgiserve(["tests.ops.apps:sleepy", *ARGS], tmp_path) as server:
        address = ("127.0.0.1", server.port)
        slow = threading.Thread(target=fcgi_request, args=(address,), kwargs={"path": "/nap?seconds=1.5"})
        slow.start()
        try:
            for _ in range(50):
                data = json.loads(
                    fcgi_request(address, path="/status", params={"QUERY_STRING": "json&full"}).body
                )
                if data["processes"]:
                    break
                threading.Event().wait(0.05)
            (entry,) = data["processes"]
            assert entry["state"] == "Running" and entry["request method"] == "GET"
            assert entry["request uri"] == "/nap?seconds=1.5" and entry["pid"] == server.pid
            assert data["active processes"] == 2  # the sleeper and this status request
        finally:
            slow.join(10)


def test_status_through_nginx(tmp_path: Path) -> None:
    args = ["tests.ops.apps:hello", "--status-path", "/fpm-status", "--ping-path", "/fpm-ping"]
    with (
        run_fcgiserve(args, tmp_path) as server,
        run_nginx(tmp_path, f"127.0.0.1:{server.port}", extra=_documented_nginx_location()) as nginx,
    ):
        status, headers, body = http_get(nginx.url + "/fpm-status?json&full")
        assert status == 200 and headers["Content-Type"] == "application/json"
        assert json.loads(body)["pool"] == "fcgiserve"
        assert http_get(nginx.url + "/fpm-ping")[2] == b"pong\n"
        assert http_get(nginx.url + "/fpm-status/x")[2].startswith(b"hello from")  # not the exact path


def test_status_for_an_exporter_that_sends_only_script_name() -> None:
    """php-fpm exporters speaking FastCGI send SCRIPT_NAME / SCRIPT_FILENAME and no REQUEST_URI."""
    ops = build_operations(Config(status_path="/status"), SharedCounters())
    assert ops is not None
    env = {"SCRIPT_NAME": "/status", "SCRIPT_FILENAME": "/status", "QUERY_STRING": "json&full"}
    answer = ops.begin(env, ("127.0.0.1", 5)).answer
    assert answer is not None
    data = json.loads(answer.split(b"\r\n\r\n", 1)[1])
    assert data["processes"] == [] and data["accepted conn"] == 0


def test_status_refused_to_a_remote_peer_without_allow_list() -> None:
    ops = build_operations(Config(status_path="/status", ping_path="/ping"), SharedCounters())
    assert ops is not None
    env = {"REQUEST_URI": "/status", "QUERY_STRING": ""}
    refused = ops.begin(dict(env), ("192.0.2.7", 40000)).answer
    assert refused is not None and refused.startswith(b"Status: 403 ")
    for local in (("127.0.0.1", 40000), ("::1", 40000, 0, 0), ""):  # "" is a unix-socket peer
        answer = ops.begin(dict(env), local).answer
        assert answer is not None and answer.startswith(b"Status: 200 "), local
    behind_list = build_operations(Config(status_path="/status", allow_from="192.0.2.0/24"), SharedCounters())
    assert behind_list is not None
    answer = behind_list.begin(dict(env), ("192.0.2.7", 40000)).answer
    assert answer is not None and answer.startswith(b"Status: 200 ")
    # Other paths are the application's; a prefix of the status path is not the status path.
    assert ops.begin({"REQUEST_URI": "/status/x"}, ("127.0.0.1", 1)).answer is None


def test_nothing_enabled_means_no_operations_object() -> None:
    assert build_operations(Config(), SharedCounters()) is None


def test_status_format_words() -> None:
    assert status_format("") == ("text", False)
    assert status_format("full") == ("text", True)
    assert status_format("json&full") == ("json", True)
    assert status_format("openmetrics") == ("openmetrics", False)
    assert status_format("prometheus&full=1") == ("prometheus", True)


def test_text_rendering_of_processes() -> None:
    stats = {
        "pool": "p",
        "start time": 1_700_000_000,
        "processes": [{"pid": 7, "state": "busy", "start time": 1_700_000_000, "request duration": 12}],
    }
    body = render_status(stats, "full", now=1_700_000_010).split(b"\r\n\r\n", 1)[1].decode()
    assert "start since:          10\n" in body
    block = body.split("************************\n")[1]
    assert block.startswith("pid:                  7\nstate:                Running\n")
    assert "request URI:          -\n" in block and "last request cpu:     0.00\n" in block
