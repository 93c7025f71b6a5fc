"""Chunked uploads through real nginx with ``fastcgi_request_buffering off``: the body reaches fcgiserve as it
arrives, with CONTENT_LENGTH empty, and the application reads it until STDIN ends (``wsgi.input_terminated``).

nginx is started by tests/helpers.run_nginx with its stock fastcgi_params; fcgiserve runs as a process of its
own with small limits (--spool-threshold 64K, --max-body-size 1M). Everything started is stopped by pid.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import Nginx, run_fcgiserve, run_nginx

pytestmark = pytest.mark.integration

APP = """
import hashlib

def application(environ, start_response):
    body = environ["wsgi.input"]
    digest, total = hashlib.sha256(), 0
    while piece := body.read(50_000):
        digest.update(piece)
        total += len(piece)
    start_response("200 OK", [("Content-Type", "text/plain")])
    length = environ.get("CONTENT_LENGTH")
    return [f"{total} {digest.hexdigest()} CONTENT_LENGTH={length!r}".encode()]
"""

UNBUFFERED = "fastcgi_request_buffering off;"
LIMIT = 1024 * 1024


@pytest.fixture(scope="module")
def nginx(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Nginx]:
    tmp = tmp_path_factory.mktemp("chunked")
    (tmp / "digestapp.py").write_text(APP)
    args = ["digestapp", "--spool-threshold", "64K", "--max-body-size", "1M"]
    with (
        run_fcgiserve(args, tmp) as server,
        run_nginx(tmp, f"127.0.0.1:{server.port}", location_extra=UNBUFFERED) as web,
    ):
        yield web


def _curl_chunked(nginx: Nginx, path: Path) -> tuple[int, bytes]:
    curl = shutil.which("curl")
    if curl is None:
        pytest.fail("curl is not installed; scripts/test installs it (apt-get install curl)")
    result = subprocess.run(
        [curl, "-sS", "-o", "-", "-w", "\n%{http_code}", "-H", "Transfer-Encoding: chunked",
         "-H", "Expect:", "--data-binary", f"@{path}", f"{nginx.url}/upload"],
        capture_output=True,
        timeout=60,
        check=False,
    )  # fmt: skip
    body, _, code = result.stdout.rpartition(b"\n")
    assert code.isdigit(), (result.returncode, result.stderr, nginx.error_log()[-2000:])
    return int(code), body


def test_curl_chunked_upload_is_read_whole(nginx: Nginx, tmp_path: Path) -> None:
    data = os.urandom(900 * 1024)  # spooled (over 64K), under --max-body-size
    upload = tmp_path / "upload.bin"
    upload.write_bytes(data)
    status, body = _curl_chunked(nginx, upload)
    assert status == 200, body
    assert body == f"{len(data)} {hashlib.sha256(data).hexdigest()} CONTENT_LENGTH=''".encode()


def test_streamed_chunks_from_http_client_are_read_whole(nginx: Nginx) -> None:
    """Chunks sent one by one as the client produces them (http.client, encode_chunked)."""
    pieces = [os.urandom(size) for size in (1, 65536, 7, 200_000, 3000, 100_000)]
    data = b"".join(pieces)
    conn = http.client.HTTPConnection("127.0.0.1", nginx.port, timeout=30)
    try:
        conn.request("POST", "/upload", body=iter(pieces), encode_chunked=True)
        response = conn.getresponse()
        assert response.status == 200
        assert response.read() == f"{len(data)} {hashlib.sha256(data).hexdigest()} CONTENT_LENGTH=''".encode()
    finally:
        conn.close()


def test_chunked_upload_over_max_body_size_gets_413(nginx: Nginx, tmp_path: Path) -> None:
    upload = tmp_path / "too-big.bin"
    upload.write_bytes(os.urandom(4 * LIMIT))
    status, body = _curl_chunked(nginx, upload)
    assert status == 413, body
    assert body == b"Request body too large\n"
    # The server serves on.
    small = tmp_path / "small.bin"
    small.write_bytes(b"still fine")
    assert _curl_chunked(nginx, small)[0] == 200
