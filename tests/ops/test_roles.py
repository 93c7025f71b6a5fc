"""Authorizer and Filter roles (fcgiserve.roles), the authorizer tested against Apache's mod_authnz_fcgi."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from fcgiserve.client import fcgi_request
from fcgiserve.protocol import Role
from fcgiserve.roles import Allow, Deny
from tests.helpers import ROOT, free_port, http_get, run_fcgiserve, stop_process, wait_for_port

APACHE = shutil.which("apache2") or "/usr/sbin/apache2"
MODULES = "/usr/lib/apache2/modules"


def _apache_guard_block(fcgi_port: int) -> str:
    """The Apache configuration of docs/operations.md, pointed at the test's fcgiserve."""
    text = (ROOT / "docs" / "operations.md").read_text()
    block = text.split("```apache\n# fcgiserve as authorizer\n", 1)[1].split("```", 1)[0]
    assert block.count("127.0.0.1:8080") == 2
    return block.replace("127.0.0.1:8080", f"127.0.0.1:{fcgi_port}")


APACHE_CONF = """
ServerRoot "{tmp}"
ServerName localhost
Listen 127.0.0.1:{port}
PidFile "{tmp}/httpd.pid"
DefaultRuntimeDir "{tmp}"
ErrorLog "{tmp}/error.log"
LogLevel warn authnz_fcgi:debug
DocumentRoot "{tmp}"
{user}
LoadModule mpm_prefork_module {modules}/mod_mpm_prefork.so
LoadModule authn_core_module {modules}/mod_authn_core.so
LoadModule authz_core_module {modules}/mod_authz_core.so
LoadModule authz_user_module {modules}/mod_authz_user.so
LoadModule authnz_fcgi_module {modules}/mod_authnz_fcgi.so
LoadModule proxy_module {modules}/mod_proxy.so
LoadModule proxy_fcgi_module {modules}/mod_proxy_fcgi.so
{guard}
"""


@contextlib.contextmanager
def run_apache(tmp_path: Path, fcgi_port: int) -> Iterator[str]:
    """``apache2 -X`` (one process, foreground) with our own configuration; yields its base URL."""
    if not Path(APACHE).exists():
        pytest.fail("apache2 is not installed; scripts/test installs it (apt-get install apache2)")
    tmp = tmp_path / "apache"
    tmp.mkdir()
    port = free_port()
    # Apache refuses to serve as root: it opens its files as root, then serves as nobody (it only proxies).
    user = "User nobody\nGroup nogroup" if os.geteuid() == 0 else ""
    conf = APACHE_CONF.format(
        tmp=tmp, port=port, modules=MODULES, user=user, guard=_apache_guard_block(fcgi_port)
    )
    (tmp / "httpd.conf").write_text(conf)
    env = {**os.environ, "APACHE_RUN_DIR": str(tmp), "APACHE_LOG_DIR": str(tmp)}
    proc = subprocess.Popen(
        [APACHE, "-X", "-f", str(tmp / "httpd.conf")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=env,
    )
    try:
        try:
            wait_for_port(port, proc=proc)
        except Exception:
            log = (tmp / "error.log").read_text() if (tmp / "error.log").exists() else ""
            stderr = proc.stderr.read().decode() if proc.stderr and proc.poll() is not None else ""
            raise RuntimeError(f"apache2 did not start: {stderr}{log}") from None
        yield f"http://127.0.0.1:{port}"
    finally:
        stop_process(proc)


def test_authorizer_behind_apache_mod_authnz_fcgi(tmp_path: Path) -> None:
    with (
        run_fcgiserve(["tests.ops.apps:guarded"], tmp_path) as server,
        run_apache(tmp_path, server.port) as url,
    ):
        status, _, body = http_get(url + "/protected/page", headers={"X-Token": "letmein"})
        # Allowed: Variable-REMOTE_USER became the user (UserExpr), Variable-AUTHZ_ROLE an environment
        # variable that Apache passed on to the protected application (a RESPONDER request).
        assert (status, body) == (200, b"user=alice role=admin fcgi_role=RESPONDER\n")
        status, headers, body = http_get(url + "/protected/page", headers={"X-Token": "wrong"})
        # Denied: the authorizer's status, headers and body reach the client.
        assert (status, body) == (401, b"who?\n")
        assert headers["WWW-Authenticate"] == 'Token realm="ops"' and headers["X-Why"] == "no token"
    assert "Traceback" not in server.log()


def test_authorizer_response_on_the_wire(tmp_path: Path) -> None:
    """S-G2: 200 with Variable-* headers and an empty body; any other status carries the web server's page."""
    with run_fcgiserve(["tests.ops.apps:guarded"], tmp_path) as server:
        address = ("127.0.0.1", server.port)
        allowed = fcgi_request(address, role=Role.AUTHORIZER, params={"HTTP_X_TOKEN": "letmein"})
        assert (allowed.status, allowed.body) == (200, b"")
        assert ("Variable-REMOTE_USER", "alice") in allowed.headers
        assert ("Variable-AUTHZ_ROLE", "admin") in allowed.headers
        denied = fcgi_request(address, role=Role.AUTHORIZER)
        assert (denied.status, denied.body, denied.header("Content-Length")) == (401, b"who?\n", "5")
        served = fcgi_request(address, role=Role.RESPONDER)
        assert served.body == b"user=None role=None fcgi_role=RESPONDER\n"


def test_filter_input_gives_the_data_stream_and_its_metadata(tmp_path: Path) -> None:
    with run_fcgiserve(["tests.ops.apps:upper_filter"], tmp_path) as server:
        data = b"some file contents\n" * 1000
        params = {"FCGI_DATA_LENGTH": str(len(data)), "FCGI_DATA_LAST_MOD": "1700000000"}
        response = fcgi_request(("127.0.0.1", server.port), params, role=Role.FILTER, data=data)
        assert response.status == 200 and response.body == data.upper()
        assert response.header("X-Length") == str(len(data))
        assert response.header("X-Mtime") == "2023-11-14T22:13:20+00:00"


def test_decisions_validate_themselves() -> None:
    with pytest.raises(ValueError, match="status other than 200"):
        Deny("200 OK")
    with pytest.raises(ValueError, match="status other than 200"):
        Deny("forbidden")
    with pytest.raises(ValueError, match="line break"):
        Allow({"X": "a\r\nInjected: 1"})
    with pytest.raises(ValueError, match="not a valid header name"):
        Allow({"bad name": "v"})
