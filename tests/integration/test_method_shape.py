"""What a server tells the application and the web server about its shape, per method (issue 13, part 2).

Prefork runs one request at a time per child by default: ``wsgi.multithread`` False, and GET_VALUES says
FCGI_MAX_REQS = maxchildren x threads, FCGI_MPXS_CONNS 0 (S-D3 / FCGI_GET_VALUES, spec 4.1).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from fcgiserve.client import fcgi_get_values, fcgi_request
from tests.helpers import run_fcgiserve

pytestmark = pytest.mark.integration

APP = """
def application(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [repr((environ["wsgi.multithread"], environ["wsgi.multiprocess"])).encode()]
"""


@pytest.mark.parametrize(
    ("args", "shape", "max_reqs", "mpxs"),
    [
        (["--method", "prefork", "--maxchildren", "3"], (False, True), "3", "0"),
        (["--method", "prefork", "--maxchildren", "3", "--threads", "4"], (True, True), "12", "0"),
        (["--method", "threaded", "--maxchildren", "6"], (True, False), None, None),
    ],
    ids=["prefork-default", "prefork-threads-4", "threaded"],
)
def test_multithread_and_get_values_per_method(
    tmp_path: Path, args: list[str], shape: tuple[bool, bool], max_reqs: str | None, mpxs: str | None
) -> None:
    (tmp_path / "shapeapp.py").write_text(APP)
    with run_fcgiserve(["shapeapp", "--minspare", "1", "--maxspare", "2", *args], tmp_path) as server:
        address = ("127.0.0.1", server.port)
        assert fcgi_request(address).body == repr(shape).encode()
        values = fcgi_get_values(address)
        if max_reqs is not None:
            assert values["FCGI_MAX_REQS"] == max_reqs
        if mpxs is not None:
            assert values["FCGI_MPXS_CONNS"] == mpxs
