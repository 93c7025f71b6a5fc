"""--status-path and --ping-path: php-fpm's status and ping pages, answered without running the app."""

from __future__ import annotations

import json
import os
import re
import socket
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from fcgiserve.client import default_params, fcgi_request
from fcgiserve.config import Config
from fcgiserve.operations import SharedCounters
from fcgiserve.protocol.client import ClientConnection
from fcgiserve.protocol.events import EndRequest
from fcgiserve.status import POOL_FIELDS, render_status, status_format
from fcgiserve.status_sources import WORKER_THREAD_PREFIX, build_operations, thread_entries
from tests.helpers import ROOT, http_get, run_fcgiserve, run_nginx, wait_for

ARGS = ["--status-path", "/status", "--ping-path", "/ping"]
# A worker thread's block in ?json&full: php-fpm's per-process names, with the thread's id after the pid.
THREAD_JSON_FIELDS = [
    "pid",
    "thread id",
    "state",
    "start time",
    "start since",
    "requests",
    "request duration",
    "request method",
    "request uri",
    "content length",
    "user",
    "script",
    "last request cpu",
    "last request memory",
]
THREAD_TEXT_NAMES = {"request uri": "request URI"}  # php-fpm spells it so in the text form


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

        def full_json() -> dict[str, Any]:
            body = fcgi_request(address, path="/status", params={"QUERY_STRING": "json&full"}).body
            return dict(json.loads(body))

        # Every finished request is counted (the scoreboard; a thread's slot): 5 for the app, the ping and the
        # text status. A worker counts a request after its END_REQUEST left, so a page may be answered
        # before the previous one is counted: ask again until it is (each ask is one request more).
        data = full_json()
        for asked in range(1, 50):
            if sum(p["requests"] for p in data["processes"]) == 6 + asked:
                break
            data = full_json()
        assert sum(p["requests"] for p in data["processes"]) == 6 + asked, data
        assert list(data)[: len(POOL_FIELDS)] == list(POOL_FIELDS)
        assert data["accepted conn"] == 5 and isinstance(data["start time"], int)
        if method == "prefork":
            pids = {p["pid"] for p in data["processes"]}
            assert len(pids) == data["total processes"] and 0 not in pids, data
            assert all(p["state"] in ("Idle", "Running") for p in data["processes"])
            # The prefork listing is php-fpm's, unchanged: no thread id.
            process_fields = [name for name in THREAD_JSON_FIELDS if name != "thread id"]
            assert all(list(p) == process_fields for p in data["processes"]), data

        metrics = fcgi_request(address, path="/status", params={"QUERY_STRING": "openmetrics"})
        assert str(metrics.header("Content-Type")).startswith("application/openmetrics-text; version=1.0.0")
        lines = metrics.body.decode().splitlines()
        assert lines[-1] == "# EOF" and "phpfpm_up 1" in lines
        assert "phpfpm_accepted_connections_total 5" in lines
        if method == "prefork":  # with full, one sample per child, labelled with its pid
            full = fcgi_request(address, path="/status", params={"QUERY_STRING": "openmetrics&full"}).body
            assert {f'phpfpm_process_requests_total{{pid="{p["pid"]}"}}' for p in data["processes"]} <= {
                line.rpartition(" ")[0] for line in full.decode().splitlines()
            }
        prom = fcgi_request(address, path="/status", params={"QUERY_STRING": "prometheus"})
        assert "phpfpm_accepted_connections 5" in prom.body.decode().splitlines()
    assert "Traceback" not in server.log()


def _blocks(body: bytes) -> list[dict[str, str]]:
    """The per-worker blocks of a text ``?full`` page."""
    blocks = []
    for chunk in body.decode().split("************************\n")[1:]:
        block = {}
        for line in chunk.strip("\n").splitlines():
            name, _, value = line.partition(":")
            block[name] = value.strip()
        blocks.append(block)
    return blocks


def _documented_full_example() -> list[dict[str, str]]:
    """The threaded ``?full`` blocks that docs/operations.md shows."""
    text = (ROOT / "docs" / "operations.md").read_text()
    example = text.split("'/fpm-status?full'`", 1)[1].split("```\n", 2)[1]
    return _blocks(example.replace("...\n", "").encode())


def _sample_shapes(text: str) -> set[tuple[str, tuple[str, ...]]]:
    """(metric, label names) of each sample line."""
    shapes = set()
    for line in text.splitlines():
        match = re.fullmatch(r"(\w+)\{(.*)\} \S+", line)
        if match:
            shapes.add((match.group(1), tuple(re.findall(r'(\w+)="', match.group(2)))))
    return shapes


def _samples(body: bytes, name: str) -> dict[str, tuple[dict[str, str], float]]:
    """The samples of one metric, keyed by their thread_id label (labels, value)."""
    found = {}
    for line in body.decode().splitlines():
        match = re.fullmatch(name + r"\{(.*)\} (\S+)", line)
        if match:
            labels = dict(re.findall(r'(\w+)="([^"]*)"', match.group(1)))
            found[labels["thread_id"]] = (labels, float(match.group(2)))
    return found


def test_full_status_lists_every_worker_thread(tmp_path: Path) -> None:
    """Issue 14 item 5: threaded ``?full`` shows one block per worker thread, in every format."""
    args = ["tests.ops.apps:sleepy", "--method", "threaded", "--minspare", "3", "--maxspare", "10", *ARGS]
    with run_fcgiserve(args, tmp_path) as server:
        address = ("127.0.0.1", server.port)
        for _ in range(4):
            assert fcgi_request(address, path="/quick?seconds=0").status == 200
        slow = threading.Thread(target=fcgi_request, args=(address,), kwargs={"path": "/nap?seconds=5"})
        slow.start()
        finished = 4  # requests ended so far: each status page below adds one once it is answered

        def status(query: str) -> bytes:
            nonlocal finished
            body = fcgi_request(address, path="/status", params={"QUERY_STRING": query}).body
            finished += 1
            return body

        def settled(entries: list[dict[str, object]]) -> bool:
            # A page is answered before its thread counts it: wait until the earlier ones are counted.
            running = [e for e in entries if e["state"] == "Running"]
            served = sum(int(str(e["requests"])) for e in entries)
            return any(e.get("request uri") == "/nap?seconds=5" for e in running) and served == finished - 1

        try:
            for _ in range(100):
                data = json.loads(status("json&full"))
                if settled(data["processes"]):
                    break
                time.sleep(0.02)
            workers = data["processes"]
            assert settled(workers), workers
            assert all(list(w) == THREAD_JSON_FIELDS for w in workers), workers
            assert {w["pid"] for w in workers} == {server.pid}
            tids = [w["thread id"] for w in workers]
            assert len(set(tids)) == len(tids) and all(isinstance(t, int) and t > 0 for t in tids), tids
            assert all(t in os.listdir(f"/proc/{server.pid}/task") for t in map(str, tids))
            (nap,) = [w for w in workers if w["request uri"] == "/nap?seconds=5"]
            assert nap["state"] == "Running" and nap["request method"] == "GET"
            assert 0 < nap["request duration"] < 5_000_000
            (me,) = [w for w in workers if w["request uri"] == "/status"]  # the thread answering this page
            assert me["state"] == "Running"
            idle = [w for w in workers if w["state"] == "Idle"]
            assert len(idle) >= 2 and len(idle) + 2 == len(workers), (
                workers
            )  # --minspare 3, one took the page
            assert all(w["request method"] == "-" and w["request duration"] == 0 for w in idle)
            assert all(abs(w["start since"] - data["start since"]) <= 2 for w in workers)
            # The pool's counts are the listing's (exporters compare them).
            assert (data["idle processes"], data["active processes"]) == (len(idle), 2)
            assert data["total processes"] == len(workers)
            # Served counts add up to the pool's: the app's requests ended (accepted, less the one running)
            # and the status pages answered before this one.
            served = sum(w["requests"] for w in workers)
            assert served == data["accepted conn"] - 1 + (finished - 1 - 4)

            time.sleep(0.3)
            blocks = _blocks(status("full"))
            text_fields = [THREAD_TEXT_NAMES.get(name, name) for name in THREAD_JSON_FIELDS]
            assert all(list(b) == text_fields for b in blocks), blocks
            documented = _documented_full_example()
            assert [list(b) for b in documented] == [text_fields] * 2
            assert [b["state"] for b in documented] == ["Running", "Idle"]
            (nap_text,) = [b for b in blocks if b["request URI"] == "/nap?seconds=5"]
            assert nap_text["state"] == "Running" and nap_text["thread id"] == str(nap["thread id"])
            assert int(nap_text["request duration"]) >= nap["request duration"] + 250_000  # it grows
            # Each page on its own: the pool may start or retire a spare thread (with the requests it counts)
            # between two pages, so they are not compared with the JSON page's listing.
            assert [b["state"] for b in blocks].count("Running") == 2  # the nap and this page's thread
            assert sum(int(b["requests"]) for b in blocks) <= finished - 1

            metrics = status("openmetrics&full")
            assert metrics.decode().splitlines()[-1] == "# EOF"
            states = _samples(metrics, "phpfpm_process_state")
            durations = _samples(metrics, "phpfpm_process_request_duration")
            requests = _samples(metrics, "phpfpm_process_requests_total")
            key = str(nap["thread id"])
            assert states[key][0] == {"pid": str(server.pid), "thread_id": key, "state": "Running"}
            assert durations[key][1] > int(nap_text["request duration"])
            assert sorted(states) == sorted(requests)
            assert [labels["state"] for labels, _ in states.values()].count("Running") == 2
            assert sum(value for _, value in requests.values()) <= finished - 1
            assert "phpfpm_process_" not in status("openmetrics").decode()  # only with full
            documented = (
                (ROOT / "docs" / "operations.md").read_text().split("# TYPE phpfpm_process_requests", 1)[1]
            )
            assert _sample_shapes(documented.split("```", 1)[0]) <= _sample_shapes(metrics.decode())
        finally:
            slow.join(10)
    assert "Traceback" not in server.log()


def test_full_status_lists_multiplexed_requests_threaded(tmp_path: Path) -> None:
    """Two requests of one multiplexed connection run at once, each in a thread: two Running blocks."""
    with run_fcgiserve(["tests.ops.apps:sleepy", "--method", "threaded", *ARGS], tmp_path) as server:
        address = ("127.0.0.1", server.port)
        client = ClientConnection()
        packet = b"".join(
            client.begin_request(rid, keep_conn=True)
            + client.send_params(rid, [(k.encode(), v.encode()) for k, v in default_params(path).items()])
            + client.send_stdin(rid, b"")
            for rid, path in ((1, "/nap?seconds=2.0"), (2, "/nap?seconds=2.5"))
        )

        def naps() -> list[dict[str, Any]]:
            data = json.loads(
                fcgi_request(address, path="/status", params={"QUERY_STRING": "json&full"}).body
            )
            assert data["active processes"] == sum(p["state"] == "Running" for p in data["processes"])
            return [p for p in data["processes"] if str(p["request uri"]).startswith("/nap")]

        with socket.create_connection(address, timeout=10) as sock:
            sock.sendall(packet)
            assert wait_for(lambda: len(naps()) == 2, timeout=5)
            running = naps()
            assert {p["request uri"] for p in running} == {"/nap?seconds=2.0", "/nap?seconds=2.5"}
            assert all(p["state"] == "Running" and p["pid"] == server.pid for p in running)
            assert len({p["thread id"] for p in running}) == 2
            ended: set[int] = set()
            while len(ended) < 2:
                ended |= {
                    e.request_id for e in client.receive_data(sock.recv(65536)) if isinstance(e, EndRequest)
                }
        # The requests' own threads end with them; the worker that held the connection is Idle again.
        assert wait_for(lambda: not naps(), timeout=5)
    assert "Traceback" not in server.log()


def test_multiplexed_request_threads_are_listed_while_they_run() -> None:
    """A request running in a thread of its own (FastCGI multiplexing) has a block until it ends."""
    ops = build_operations(Config(status_path="/status"), SharedCounters())
    assert ops is not None
    release, started = threading.Event(), threading.Event()

    def serve(path: str, hold: bool) -> None:
        record = ops.begin({"REQUEST_METHOD": "POST", "REQUEST_URI": path, "CONTENT_LENGTH": "3"}, "")
        started.set()
        if hold:
            release.wait(10)
        ops.finish(record)

    worker = threading.Thread(target=serve, args=("/one", False), name=f"{WORKER_THREAD_PREFIX}91")
    worker.start()
    worker.join()
    request = threading.Thread(target=serve, args=("/mux", True), name="fcgiserve-request-7")
    request.start()
    try:
        assert started.wait(10)
        entries = {e["thread id"]: e for e in thread_entries(ops.thread_slots(), 0.0)}
        assert worker.native_id not in entries  # a worker that has ended is gone
        mux = entries[request.native_id]
        assert (mux["state"], mux["request method"], mux["request URI"]) == ("busy", "POST", "/mux")
        assert mux["content length"] == 3 and mux["requests"] == 0
    finally:
        release.set()
        request.join(10)
    assert request.native_id not in {e["thread id"] for e in thread_entries(ops.thread_slots(), 0.0)}
    assert ops.in_flight() == []


@pytest.mark.parametrize("length", ["", "lots", "-1"])
def test_a_request_in_flight_with_a_content_length_that_is_no_number_is_listed(length: str) -> None:
    """CONTENT_LENGTH reaches the environ as the web server sent it: ``?full`` shows 0, never fails on it."""
    ops = build_operations(Config(status_path="/status"), SharedCounters())
    assert ops is not None
    release, started = threading.Event(), threading.Event()

    def serve() -> None:
        record = ops.begin({"REQUEST_METHOD": "POST", "REQUEST_URI": "/up", "CONTENT_LENGTH": length}, "")
        started.set()
        release.wait(10)
        ops.finish(record)

    thread = threading.Thread(target=serve, name=f"{WORKER_THREAD_PREFIX}92")
    thread.start()
    try:
        assert started.wait(10)
        entries = {e["thread id"]: e for e in thread_entries(ops.thread_slots(), 0.0)}
        assert entries[thread.native_id]["content length"] == 0
    finally:
        release.set()
        thread.join(10)


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


def test_rendering_of_thread_blocks_and_worker_metrics() -> None:
    thread = {"pid": 7, "thread id": 9, "state": "busy", "start time": 1_700_000_000, "requests": 3}
    process = {"pid": 8, "state": "idle", "start time": 1_700_000_000, "requests": 4}
    stats = {"pool": "p", "start time": 1_700_000_000, "processes": [thread, process]}
    body = render_status(stats, "full", now=1_700_000_010).split(b"\r\n\r\n", 1)[1].decode()
    thread_block, process_block = body.split("************************\n")[1:]
    assert thread_block.startswith(
        "pid:                  7\nthread id:            9\nstate:                Running\n"
    )
    assert process_block.startswith("pid:                  8\nstate:                Idle\n")
    data = json.loads(render_status(stats, "json&full").split(b"\r\n\r\n", 1)[1])
    assert list(data["processes"][0]) == THREAD_JSON_FIELDS
    assert "thread id" not in data["processes"][1]

    metrics = render_status(stats, "openmetrics&full").split(b"\r\n\r\n", 1)[1].decode().splitlines()
    assert metrics[-1] == "# EOF"
    assert 'phpfpm_process_requests_total{pid="7",thread_id="9"} 3' in metrics
    assert 'phpfpm_process_requests_total{pid="8"} 4' in metrics
    assert 'phpfpm_process_state{pid="7",thread_id="9",state="Running"} 1' in metrics
    assert 'phpfpm_process_state{pid="8",state="Idle"} 1' in metrics
    assert "# TYPE phpfpm_process_request_duration gauge" in metrics
    # A metric family's samples follow its TYPE line, and no family appears twice.
    families = [line.split()[2] for line in metrics if line.startswith("# TYPE ")]
    assert len(families) == len(set(families))
    prom = render_status(stats, "prometheus&full").split(b"\r\n\r\n", 1)[1].decode().splitlines()
    assert 'phpfpm_process_requests{pid="8"} 4' in prom and "# EOF" not in prom
    plain = render_status(stats, "openmetrics").split(b"\r\n\r\n", 1)[1].decode()
    assert "phpfpm_process_" not in plain  # per-worker samples only with full
