"""A real Django project behind a real nginx (Debian's package, stock fastcgi_params), served by fcgiserve.

Both with a new backend connection per request and with `fastcgi_keep_conn on` + an upstream keepalive pool.
"""

from __future__ import annotations

import hashlib
import http.cookiejar
import json
import os
import re
import urllib.parse
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.helpers import Nginx, Server, http_get, run_fcgiserve, run_nginx

pytestmark = pytest.mark.integration

SITE = Path(__file__).resolve().parent / "djangosite"


@pytest.fixture(scope="module", params=["threaded", "prefork"])
def backend(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp(f"django-{request.param}")
    args = [
        "mysite.wsgi:application",
        "--chdir",
        str(SITE),
        "--method",
        request.param,
        "--log-level",
        "debug",
    ]
    if request.param == "prefork":
        args += ["--minspare", "1", "--maxspare", "2", "--maxchildren", "4"]
    with run_fcgiserve(args, tmp, env={"TMPDIR": str(tmp)}) as server:
        yield server


@pytest.fixture(scope="module", params=[False, True], ids=["new-conn", "keep-conn"])
def nginx(
    request: pytest.FixtureRequest, backend: Server, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Nginx]:
    tmp = tmp_path_factory.mktemp("nginx")
    static = f"location /static/ {{ alias {SITE}/static/; }}"
    with run_nginx(tmp, f"127.0.0.1:{backend.port}", keep_conn=request.param, extra=static) as web:
        yield web


def test_page_through_stock_fastcgi_params(nginx: Nginx) -> None:
    """P4: nginx's stock params send SCRIPT_NAME = the URI and no PATH_INFO; Django must still route."""
    status, headers, body = http_get(f"{nginx.url}/page/about/?x=1&y=%C3%A9")
    assert status == 200, body
    data = json.loads(body)
    assert data == {"page": "about", "path": "/page/about/", "query": {"x": "1", "y": "é"}}
    assert headers["Content-Type"] == "application/json"


def test_home_page_and_404(nginx: Nginx) -> None:
    status, _, body = http_get(nginx.url + "/")
    assert status == 200
    assert body.startswith(b"home path=/ script=''")
    status, _, _ = http_get(nginx.url + "/no/such/page/")
    assert status == 404


def test_form_post_with_csrf(nginx: Nginx) -> None:
    jar = http.cookiejar.CookieJar()
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
    with opener.open(nginx.url + "/form/", timeout=10) as response:
        page = response.read().decode()
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page)
    assert token, page
    assert any(c.name == "csrftoken" for c in jar)
    form = urllib.parse.urlencode({"csrfmiddlewaretoken": token.group(1), "name": "nginx"}).encode()
    request = urllib.request.Request(
        nginx.url + "/form/", data=form, headers={"Referer": nginx.url + "/form/"}
    )
    with opener.open(request, timeout=10) as response:
        assert response.status == 200
        assert response.read() == b"hello nginx"
    # Without the token Django refuses: proves the CSRF machinery really ran.
    status, _, _ = http_get(nginx.url + "/form/", data=b"name=x")
    assert status == 403


def test_multi_megabyte_upload(nginx: Nginx) -> None:
    payload = os.urandom(5 * 1024 * 1024 + 17)
    boundary = "----fcgiserve-test-boundary"
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="blob.bin"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n"
        ).encode()
        + payload
        + f"\r\n--{boundary}--\r\n".encode()
    )
    status, _, answer = http_get(
        nginx.url + "/upload/",
        data=body,
        headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
        timeout=30,
    )
    assert status == 200, answer[:500]
    assert json.loads(answer) == {
        "name": "blob.bin",
        "size": len(payload),
        "sha256": hashlib.sha256(payload).hexdigest(),
    }


def test_streaming_response(nginx: Nginx) -> None:
    status, _, body = http_get(nginx.url + "/stream/?n=50")
    assert status == 200
    assert body == b"".join(f"chunk {i}\n".encode() for i in range(50))


def test_static_files_served_by_nginx_itself(nginx: Nginx) -> None:
    status, _, body = http_get(nginx.url + "/static/site.css")
    assert status == 200
    assert body == (SITE / "static" / "site.css").read_bytes()


def test_concurrent_requests_all_succeed(nginx: Nginx) -> None:
    def fetch(i: int) -> int:
        return http_get(f"{nginx.url}/page/p{i}/")[0]

    with ThreadPoolExecutor(8) as pool:
        statuses = list(pool.map(fetch, range(200)))
    assert statuses == [200] * 200
    errors = [line for line in nginx.error_log().splitlines() if "[error]" in line or "[crit]" in line]
    assert errors == []
