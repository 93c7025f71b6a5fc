"""--protocol scgi: the same applications over SCGI (nginx scgi_pass), and the sans-IO header parser."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fcgiserve import Server
from fcgiserve.scgi import SCGIError, SCGILimits, SCGIRequestParser
from tests.helpers import ROOT, http_get, run_fcgiserve, run_nginx, streaming_echo


def _documented_scgi_location(port: int) -> str:
    """The nginx block of docs/operations.md, mounted at /scgi/ and pointed at the test's server."""
    text = (ROOT / "docs" / "operations.md").read_text()
    block = text.split("```nginx\n# fcgiserve over SCGI\n", 1)[1].split("```", 1)[0]
    assert "location / {" in block and "scgi_pass 127.0.0.1:4000;" in block
    block = block.replace("location / {", "location /scgi/ {").replace("127.0.0.1:4000", f"127.0.0.1:{port}")
    return block.replace("include scgi_params;", "include /etc/nginx/scgi_params;")


def netstring_request(headers: list[tuple[bytes, bytes]], body: bytes = b"") -> bytes:
    block = b"".join(name + b"\0" + value + b"\0" for name, value in headers)
    return str(len(block)).encode() + b":" + block + b"," + body


def scgi_request(port: int, raw: bytes, timeout: float = 10) -> bytes:
    """Send raw bytes (then half-close), read the response until the server closes the connection."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(raw)
        sock.shutdown(socket.SHUT_WR)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def _headers(body: bytes = b"", **extra: str) -> list[tuple[bytes, bytes]]:
    base = {"SCGI": "1", "REQUEST_METHOD": "POST" if body else "GET", "REQUEST_URI": "/x", "SERVER_NAME": "h"}
    base |= {"SERVER_PORT": "80", "SERVER_PROTOCOL": "HTTP/1.1", **extra}
    return [(b"CONTENT_LENGTH", str(len(body)).encode())] + [
        (k.encode(), v.encode()) for k, v in base.items()
    ]


@pytest.mark.parametrize("method", ["threaded", "prefork"])
def test_scgi_through_nginx(tmp_path: Path, method: str) -> None:
    args = ["tests.ops.apps:echo", "--protocol", "scgi", "--method", method, "--status-path", "/scgi/status"]
    with run_fcgiserve(args, tmp_path) as server:
        extra = _documented_scgi_location(server.port)
        with run_nginx(tmp_path, f"127.0.0.1:{server.port}", extra=extra) as nginx:
            status, _, body = http_get(nginx.url + "/scgi/get?a=1")
            assert (status, body) == (200, b"GET a=1 0\n")
            payload = os.urandom(300_000)  # several reads, spooled past nothing: bigger than one recv
            status, _, body = http_get(nginx.url + "/scgi/post", data=payload)
            assert (status, body) == (200, b"POST  300000\n" + payload)
            status, headers, body = http_get(nginx.url + "/scgi/status?json")
            assert status == 200 and headers["Content-Type"] == "application/json", body
            assert b'"accepted conn": 2' in body
    assert "Traceback" not in server.log()


def test_scgi_limits_and_bad_requests(tmp_path: Path) -> None:
    args = ["tests.ops.apps:echo", "--protocol", "scgi", "--max-body-size", "1K"]
    with run_fcgiserve(args, tmp_path) as server:
        ok = scgi_request(server.port, netstring_request(_headers(b"hello"), b"hello"))
        assert ok.startswith(b"Status: 200 OK\r\n") and ok.endswith(b"\r\n\r\nPOST  5\nhello")
        too_large = scgi_request(server.port, netstring_request(_headers(b"x" * 2000), b"x" * 2000))
        assert too_large.startswith(b"Status: 413 ")
        no_scgi = [(n, v) for n, v in _headers() if n != b"SCGI"]
        assert scgi_request(server.port, netstring_request(no_scgi)).startswith(b"Status: 400 ")
        assert scgi_request(server.port, b"GET / HTTP/1.0\r\n\r\n").startswith(b"Status: 400 ")
        assert scgi_request(server.port, b"") == b""  # a probe gets nothing and costs no warning
        # The server still serves after all that.
        assert scgi_request(server.port, netstring_request(_headers())).endswith(b"GET  0\n")
    log = server.log()
    assert "Traceback" not in log and log.count("bad SCGI request") == 2


# -- the parser (sans-IO) -------------------------------------------------------------------------------


def test_parser_whole_byte_by_byte_and_with_body() -> None:
    raw = netstring_request(_headers(b"body!"), b"body!")
    whole = SCGIRequestParser().receive_data(raw)
    assert whole is not None and whole.content_length == 5 and whole.body_start == b"body!"
    assert next(iter(whole.params.items())) == ("CONTENT_LENGTH", "5") and whole.params["REQUEST_URI"] == "/x"
    parser = SCGIRequestParser()
    results = [parser.receive_data(raw[i : i + 1]) for i in range(len(raw) - 5)]
    assert results[:-1] == [None] * (len(results) - 1)
    assert results[-1] is not None and results[-1].params == whole.params and results[-1].body_start == b""


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"x:", "bad netstring length"),
        (b"GET / HTTP/1.0", "does not start with a netstring length"),
        (b"01:", "bad netstring length"),
        (b"5:abcd\0;", "does not end with ','"),
        (
            netstring_request([(b"SCGI", b"1"), (b"CONTENT_LENGTH", b"0")]),
            "first header must be CONTENT_LENGTH",
        ),
        (netstring_request([(b"CONTENT_LENGTH", b"x"), (b"SCGI", b"1")]), "is not a number"),
        (netstring_request([(b"CONTENT_LENGTH", b"0")]), "SCGI header"),
        (netstring_request([(b"CONTENT_LENGTH", b"0"), (b"SCGI", b"1"), (b"SCGI", b"1")]), "duplicate"),
        (netstring_request([(b"CONTENT_LENGTH", b"0"), (b"", b"1")]), "empty header name"),
        (b"9:CONTENT_L,", "does not end with NUL"),
        (b"5:a\0b\0c,", "does not end with NUL"),
        (b"2:a\0,", "has no value"),
        (b"2000000:", "exceeds the limit"),
    ],
)
def test_parser_rejects(raw: bytes, message: str) -> None:
    parser = SCGIRequestParser()
    with pytest.raises(SCGIError, match=message):
        parser.receive_data(raw)
    with pytest.raises(SCGIError, match=message):  # poisoned: the same error again
        parser.receive_data(b"more")


def test_parser_limits_and_eof() -> None:
    many = _headers(**{f"H{i}": "v" for i in range(10)})
    with pytest.raises(SCGIError, match="more than 5 headers"):
        SCGIRequestParser(SCGILimits(max_headers=5)).receive_data(netstring_request(many))
    parser = SCGIRequestParser()
    assert parser.receive_data(b"10:CONT") is None
    with pytest.raises(SCGIError, match="connection closed after 4 byte"):
        parser.receive_data(b"")


@given(st.binary(max_size=64), st.integers(min_value=1, max_value=7))
def test_parser_never_fails_otherwise_on_garbage(data: bytes, step: int) -> None:
    """Any input either parses, asks for more, or raises SCGIError: never another exception."""
    parser = SCGIRequestParser(SCGILimits(max_header_bytes=100))
    try:
        for i in range(0, len(data), step):
            if parser.receive_data(data[i : i + step]) is not None:
                break
    except SCGIError:
        pass


def test_output_streamed_while_the_body_arrives_waits_for_the_whole_body() -> None:
    """A peer that reads nothing before it has sent its whole request (nginx, which also sends no more of
    the body once the response began) and an application that echoes its body as it reads it: the server
    takes the rest of the body before the first output, so a body far larger than the socket buffers
    comes back whole instead of both sides waiting on each other."""
    server = Server(streaming_echo, protocol="scgi", host="127.0.0.1", port=0, graceful_timeout=5).start()
    try:
        body = os.urandom(24 << 20)
        response = scgi_request(server.addresses[0][1], netstring_request(_headers(body), body), timeout=60)
        assert response.startswith(b"Status: 200 OK\r\n")
        assert response.partition(b"\r\n\r\n")[2] == body
    finally:
        server.stop(graceful=False, timeout=10)
