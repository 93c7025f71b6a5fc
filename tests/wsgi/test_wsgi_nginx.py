"""The environ a real nginx produces, through the WSGI adapter alone (no handler.py).

nginx on loopback with Debian's stock /etc/nginx/fastcgi_params talks to a minimal FastCGI responder written
here from the spec (tiny record helpers that do not use fcgiserve.protocol); the responder hands the PARAMS to
build_environ and the application to run_application. This pins the SCRIPT_NAME / PATH_INFO rule against what
nginx really sends, including the duplicate SCRIPT_NAME of the classic recipe.
"""

from __future__ import annotations

import json
import socket
import struct
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from fcgiserve.wsgi import RequestBody, WSGIOptions, body_length, build_environ, run_application
from tests.helpers import free_port, http_get, nginx_available, run_nginx

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not nginx_available(), reason="nginx is not installed"),
]

HEADER = struct.Struct("!BBHHBx")  # version, type, request id, content length, padding length (spec 3.3)
BEGIN_REQUEST, END_REQUEST, PARAMS, STDIN, STDOUT = 1, 3, 4, 5, 6


def read_exact(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        more = sock.recv(size - len(data))
        if not more:
            raise ConnectionError("peer closed mid-record")
        data += more
    return data


def read_record(sock: socket.socket) -> tuple[int, int, bytes]:
    _, kind, request_id, length, padding = HEADER.unpack(read_exact(sock, HEADER.size))
    content = read_exact(sock, length + padding)[:length]
    return kind, request_id, content


def encode_record(kind: int, request_id: int, content: bytes) -> bytes:
    out = b""
    for start in range(0, max(len(content), 1), 65535):
        piece = content[start : start + 65535]
        padding = -len(piece) & 7
        out += HEADER.pack(1, kind, request_id, len(piece), padding) + piece + b"\0" * padding
    return out


def decode_pairs(data: bytes) -> list[tuple[bytes, bytes]]:
    pairs = []
    position = 0

    def length() -> int:
        nonlocal position
        if data[position] < 128:
            position += 1
            return data[position - 1]
        position += 4
        return int.from_bytes(data[position - 4 : position], "big") & 0x7FFFFFFF

    while position < len(data):
        name_length, value_length = length(), length()
        name = data[position : position + name_length]
        position += name_length
        pairs.append((name, data[position : position + value_length]))
        position += value_length
    return pairs


class _CollectingIO:
    def __init__(self) -> None:
        self.out: list[bytes] = []

    def write(self, data: bytes, last: bool = False) -> None:
        self.out.append(data)

    def write_errors(self, data: bytes) -> None:
        pass


def serve_one(
    conn: socket.socket, app: Any, options: WSGIOptions, seen: list[list[tuple[bytes, bytes]]]
) -> None:
    with conn:
        conn.settimeout(10)
        params = b""
        stdin = b""
        request_id = 0
        while True:
            kind, request_id, content = read_record(conn)
            if kind == PARAMS:
                params += content
            elif kind == STDIN:
                if not content:
                    break
                stdin += content
        pairs = decode_pairs(params)
        seen.append(pairs)
        text = [(name.decode("latin-1"), value.decode("latin-1")) for name, value in pairs]
        params = dict(text)  # what ParamsComplete carries: the pairs only when a name repeats
        repeated = text if len(params) != len(text) else None
        environ = build_environ(params, options, "RESPONDER", request_id, repeated)
        with RequestBody(body_length(environ), options.spool_threshold) as body:
            body.feed(stdin)
            body.finish()
            io = _CollectingIO()
            status = run_application(app, environ, body, io, options)
        end = struct.pack("!IB3x", status, 0)
        conn.sendall(
            encode_record(STDOUT, request_id, b"".join(io.out))
            + encode_record(STDOUT, request_id, b"")
            + encode_record(END_REQUEST, request_id, end)
        )


@pytest.fixture
def responder() -> Iterator[Callable[[WSGIOptions], tuple[str, list[list[tuple[bytes, bytes]]]]]]:
    """Start the responder thread for given options; returns its address and the params it saw."""
    listeners: list[socket.socket] = []
    threads: list[threading.Thread] = []

    def start(options: WSGIOptions) -> tuple[str, list[list[tuple[bytes, bytes]]]]:
        listener = socket.create_server(("127.0.0.1", free_port()))
        listener.settimeout(0.2)
        listeners.append(listener)
        seen: list[list[tuple[bytes, bytes]]] = []

        def loop() -> None:
            for _ in range(300):  # bounded: 60 s at most
                try:
                    conn, _ = listener.accept()
                except TimeoutError:
                    continue
                except OSError:
                    return  # closed by the fixture
                serve_one(conn, environ_app, options, seen)

        thread = threading.Thread(target=loop, daemon=True)
        thread.start()
        threads.append(thread)
        host, port = listener.getsockname()[:2]
        return f"{host}:{port}", seen

    yield start
    for listener in listeners:
        listener.close()
    for thread in threads:
        thread.join(timeout=5)


def environ_app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
    body = environ["wsgi.input"].read()
    keys = ("SCRIPT_NAME", "PATH_INFO", "QUERY_STRING", "REQUEST_METHOD", "wsgi.url_scheme", "HTTP_HOST")
    answer = {key: environ[key] for key in keys} | {"body": body.decode("latin-1")}
    payload = json.dumps(answer).encode()
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(payload)))])
    return [payload]


STOCK_CASES = [
    ("/", ("", "/")),
    ("/app/view?x=1", ("", "/app/view")),
    ("/caf%C3%A9/", ("", "/caf\xc3\xa9/")),
    ("/a//b", ("", "/a//b")),
    ("/a%2Fb", ("", "/a/b")),
]


@pytest.mark.parametrize(("target", "expected"), STOCK_CASES)
def test_nginx_stock_fastcgi_params(
    tmp_path: Path, responder: Callable[..., Any], target: str, expected: tuple[str, str]
) -> None:
    upstream, seen = responder(WSGIOptions())
    with run_nginx(tmp_path, upstream) as nginx:
        status, _, body = http_get(nginx.url + target)
    assert status == 200, nginx.error_log()
    answer = json.loads(body)
    assert (answer["SCRIPT_NAME"], answer["PATH_INFO"]) == expected
    sent = dict(seen[0])
    assert b"PATH_INFO" not in sent  # what makes the stock params hard: no PATH_INFO at all
    assert sent[b"REQUEST_URI"] == target.encode()


def test_nginx_classic_recipe_with_duplicate_script_name(
    tmp_path: Path, responder: Callable[..., Any]
) -> None:
    """`include fastcgi_params; fastcgi_param SCRIPT_NAME ""; fastcgi_param PATH_INFO $fastcgi_script_name;`:
    nginx sends SCRIPT_NAME twice; the last CGI value wins."""
    upstream, seen = responder(WSGIOptions())
    recipe = 'fastcgi_param PATH_INFO $fastcgi_script_name; fastcgi_param SCRIPT_NAME "";'
    with run_nginx(tmp_path, upstream, location_extra=recipe) as nginx:
        status, _, body = http_get(nginx.url + "/app/view?x=1")
    assert status == 200, nginx.error_log()
    assert [value for name, value in seen[0] if name == b"SCRIPT_NAME"] == [b"/app/view", b""]
    answer = json.loads(body)
    assert (answer["SCRIPT_NAME"], answer["PATH_INFO"]) == ("", "/app/view")
    assert answer["QUERY_STRING"] == "x=1"


def test_nginx_site_under_a_prefix(tmp_path: Path, responder: Callable[..., Any]) -> None:
    upstream, _ = responder(WSGIOptions(script_name="/blog"))
    with run_nginx(tmp_path, upstream) as nginx:
        results = [
            json.loads(http_get(nginx.url + path)[2]) for path in ("/blog/2024/post?p=2", "/blog", "/blog/")
        ]
    assert [(r["SCRIPT_NAME"], r["PATH_INFO"]) for r in results] == [
        ("/blog", "/2024/post"),
        ("/blog", ""),
        ("/blog", "/"),
    ]


def test_nginx_post_body_reaches_wsgi_input(tmp_path: Path, responder: Callable[..., Any]) -> None:
    upstream, _ = responder(WSGIOptions(spool_threshold=1024))
    payload = bytes(range(256)) * 64  # over the spool threshold
    with run_nginx(tmp_path, upstream) as nginx:
        status, _, body = http_get(nginx.url + "/upload", data=payload)
    assert status == 200, nginx.error_log()
    answer = json.loads(body)
    assert answer["REQUEST_METHOD"] == "POST"
    assert answer["body"].encode("latin-1") == payload
