"""``manage.py runfcgi`` (fcgiserve.contrib.django) on the installed Django release, as a real process.

The issue's exact command line, the daemontools ``run`` script around it, the refusal of daemonize=true,
debug=false meaning off, a --help that lists every option of config.OPTIONS, and the application served:
``settings.WSGI_APPLICATION`` as runserver serves it, loaded in the process that serves it.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from fcgiserve.client import fcgi_get_values, fcgi_request
from fcgiserve.config import OPTIONS
from tests.contrib.djangoproject import environment, manage, start_manage, stop, write_project
from tests.helpers import ROOT, free_port, wait_for, wait_for_port

pytestmark = pytest.mark.integration

# The line of the issue, verbatim but for the port (a fixed 8080 could be taken on the test machine).
ISSUE_LINE = (
    "method=threaded host=127.0.0.1 port={port} pidfile=mysite.pid minspare=4 maxspare=30 daemonize=false"
)


@pytest.fixture
def site(tmp_path: Path) -> Path:
    return write_project(tmp_path)


def _serve(site: Path, words: str, log: Path, port: int) -> subprocess.Popen[bytes]:
    proc = start_manage(site, "runfcgi", *words.split(), log=log)
    try:
        wait_for_port(port, proc=proc, timeout=60)
    except Exception:
        stop(proc)
        raise AssertionError(f"runfcgi did not start: {log.read_text(errors='replace')}") from None
    return proc


def test_issue_command_line_serves_get_and_post_and_writes_pidfile(site: Path, tmp_path: Path) -> None:
    """The exact line of the issue: threaded, 4..30 spare threads, pidfile, foreground; exit 0 on TERM."""
    port = free_port()
    log = tmp_path / "runfcgi.log"
    proc = _serve(site, ISSUE_LINE.format(port=port), log, port)
    try:
        pidfile = site / "mysite.pid"
        assert wait_for(pidfile.exists, timeout=30)
        assert int(pidfile.read_text()) == proc.pid, "foreground: the pid we started is the server"
        got = fcgi_request(("127.0.0.1", port), {"HTTP_HOST": "127.0.0.1"}, path="/")
        assert (got.status, got.body) == (200, f"GET  pid={proc.pid}".encode())
        posted = fcgi_request(("127.0.0.1", port), {"HTTP_HOST": "x"}, b"a=1&b=2", method="POST")
        assert posted.body.startswith(b"POST a=1&b=2 ")
        assert fcgi_get_values(("127.0.0.1", port))["FCGI_MPXS_CONNS"] == "1", "threaded multiplexes"
    finally:
        status = stop(proc)
    assert status == 0, log.read_text(errors="replace")
    assert not (site / "mysite.pid").exists(), "the pidfile is removed on exit"
    assert "threaded pool started" in log.read_text() and "min_spare=4 max_spare=30" in log.read_text()


def test_daemonize_true_is_refused_with_the_reason_and_the_alternative(site: Path) -> None:
    done = manage(site, "runfcgi", "daemonize=true", f"port={free_port()}")
    assert done.returncode == 2
    message = done.stderr.strip()
    assert "daemonize=true is not supported" in message
    assert "supervisor" in message and "foreground" in message, "says what to use instead"


def test_unknown_word_and_bad_value_are_one_line_errors(site: Path) -> None:
    unknown = manage(site, "runfcgi", "bogus=1")
    assert unknown.returncode == 2 and "unknown runfcgi option bogus=" in unknown.stderr
    bad = manage(site, "runfcgi", "maxspare=many")
    assert bad.returncode == 2 and "maxspare" in bad.stderr and "Traceback" not in bad.stderr


@pytest.mark.parametrize(("word", "shown"), [("debug=false", False), ("debug=true", True)])
def test_debug_false_means_off(site: Path, tmp_path: Path, word: str, shown: bool) -> None:
    """The old runfcgi turned debug on for any value, "false" included; here false is off.

    debug is fcgiserve's (tracebacks of exceptions escaping the application), so the app here raises
    itself: Django's handler turns view errors into its own 500 page whatever debug= says.
    """
    (site / "boom.py").write_text(
        "def application(environ, start_response):\n    raise RuntimeError('secret-detail-in-traceback')\n"
    )
    port = free_port()
    proc = _serve(site, f"boom:application host=127.0.0.1 port={port} {word}", tmp_path / "log", port)
    try:
        got = fcgi_request(("127.0.0.1", port), path="/")
    finally:
        stop(proc)
    assert got.status == 500
    assert (b"secret-detail-in-traceback" in got.body) is shown


def test_prefork_method_alias(site: Path, tmp_path: Path) -> None:
    """method=fork (the old alias of prefork): children of the master serve, importing Django themselves."""
    port = free_port()
    log = tmp_path / "log"
    words = f"method=fork host=127.0.0.1 port={port} minspare=1 maxspare=2 maxchildren=3"
    proc = _serve(site, words, log, port)
    try:
        body = fcgi_request(("127.0.0.1", port), {"HTTP_HOST": "x"}).body
        assert body.startswith(b"GET  pid=") and not body.endswith(f"pid={proc.pid}".encode()), "a child"
        assert "prefork pool starting" in log.read_text()
        assert fcgi_get_values(("127.0.0.1", port))["FCGI_MPXS_CONNS"] == "0", "prefork does not multiplex"
    finally:
        assert stop(proc) == 0


def test_threaded_sighup_reexecutes_the_same_command_in_place(site: Path, tmp_path: Path) -> None:
    """reexec_argv is sys.orig_argv[1:]: after HUP the same pid runs manage.py runfcgi again."""
    port = free_port()
    log = tmp_path / "log"
    proc = _serve(site, f"host=127.0.0.1 port={port}", log, port)
    try:
        # The socket listens a moment before the pool installs its signal handlers: wait for the pool.
        assert wait_for(lambda: "threaded pool started" in log.read_text(), timeout=60), log.read_text()
        proc.send_signal(signal.SIGHUP)
        assert wait_for(lambda: log.read_text().count("threaded pool started") == 2, timeout=60), (
            log.read_text()
        )
        got = fcgi_request(("127.0.0.1", port), {"HTTP_HOST": "x"})
        assert got.body.endswith(f"pid={proc.pid}".encode()), "same pid after the re-exec"
        with open(f"/proc/{proc.pid}/cmdline", "rb") as f:
            assert b"manage.py\0runfcgi\0host=127.0.0.1" in f.read()
    finally:
        assert stop(proc) == 0


@pytest.mark.parametrize(
    ("words", "in_effect"),
    [("maxchildren=2", "--minspare 2 --maxspare 2 --maxchildren 2"),
     ("method=prefork maxchildren=1", "--minspare 1 --maxspare 1 --maxchildren 1")],
)  # fmt: skip
def test_maxchildren_word_alone_fits_the_default_spares(
    site: Path, tmp_path: Path, words: str, in_effect: str
) -> None:
    """The words go through the same Config as the flags: maxchildren= alone lowers the spares nobody set."""
    port = free_port()
    log = tmp_path / "log"
    proc = _serve(site, f"host=127.0.0.1 port={port} {words}", log, port)
    try:
        assert fcgi_request(("127.0.0.1", port), {"HTTP_HOST": "x"}).body.startswith(b"GET  pid=")
    finally:
        assert stop(proc) == 0
    assert f"in effect: {in_effect}" in log.read_text(), log.read_text()


# --- settings.WSGI_APPLICATION ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("words", "loaded_in"),
    [("method=threaded", "server"), ("method=prefork minspare=1 maxspare=1 maxchildren=2", "child"),
     ("method=prefork minspare=1 maxspare=1 maxchildren=2 --preload", "server")],
)  # fmt: skip
def test_wsgi_application_setting_is_served_with_its_wrapper(
    tmp_path: Path, words: str, loaded_in: str
) -> None:
    """A wsgi.py that wraps Django (WhiteNoise, Sentry, a middleware of its own) keeps its wrapper, as under
    runserver; prefork children import it themselves unless --preload imports it once in the master."""
    site = write_project(tmp_path, wsgi_application="mysite.wsgi.application")
    port = free_port()
    log = tmp_path / "log"
    proc = _serve(site, f"host=127.0.0.1 port={port} {words}", log, port)
    try:
        wrapped = fcgi_request(("127.0.0.1", port), {"HTTP_HOST": "x"}, path="/wrapped-only")
        django = fcgi_request(("127.0.0.1", port), {"HTTP_HOST": "x"}, path="/")
    finally:
        assert stop(proc) == 0, log.read_text()
    assert wrapped.status == 200, (wrapped.status, wrapped.body, log.read_text())
    assert django.status == 200 and django.body.startswith(b"GET  pid="), "the wrapper passes the rest on"
    loaded, serving = (int(w) for w in wrapped.body.split() if w.isdigit())
    if loaded_in == "server":
        assert loaded == proc.pid, "threaded, or prefork --preload: imported once, in the server process"
    else:
        assert loaded == serving != proc.pid, "prefork: each child imports the application after the fork"


def test_without_wsgi_application_django_handler_is_served(tmp_path: Path) -> None:
    """No WSGI_APPLICATION (Django's default is None): get_wsgi_application(), as runserver falls back to;
    the project's wsgi.py is not imported, so its wrapper's route is Django's 404."""
    site = write_project(tmp_path)
    port = free_port()
    proc = _serve(site, f"host=127.0.0.1 port={port}", tmp_path / "log", port)
    try:
        assert fcgi_request(("127.0.0.1", port), {"HTTP_HOST": "x"}, path="/wrapped-only").status == 404
        assert fcgi_request(("127.0.0.1", port), {"HTTP_HOST": "x"}, path="/").body.startswith(b"GET  pid=")
    finally:
        assert stop(proc) == 0


@pytest.mark.parametrize("method", ["threaded", "prefork"])
@pytest.mark.parametrize(
    ("setting", "reason"),
    [("mysite.nowhere.application", "No module named 'mysite.nowhere'"),
     ("mysite.wsgi.missing", 'does not define a "missing" attribute')],
)  # fmt: skip
def test_wsgi_application_that_does_not_import_is_one_line(
    tmp_path: Path, method: str, setting: str, reason: str
) -> None:
    """A WSGI_APPLICATION that cannot be imported stops the start with one line naming the setting and
    why, exit status 3, and no traceback (prefork checks the import in a throw-away child)."""
    site = write_project(tmp_path, wsgi_application=setting)
    done = manage(site, "runfcgi", f"method={method}", "host=127.0.0.1", f"port={free_port()}", timeout=60)
    assert done.returncode == 3, done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    errors = [line for line in done.stderr.splitlines() if " ERROR " in line]
    assert len(errors) == 1 and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert f"settings.WSGI_APPLICATION {setting!r}" in errors[0] and reason in errors[0], errors[0]


def test_help_lists_every_option_and_runfcgi_word(site: Path) -> None:
    """A test fails if the command misses an option of config.OPTIONS (flag, positional or runfcgi word)."""
    done = manage(site, "runfcgi", "--help")
    assert done.returncode == 0, done.stderr
    text = " ".join(done.stdout.split())
    missing = [o.display for o in OPTIONS if o.display not in text]
    missing += [f"{a}=" for o in OPTIONS for a in o.runfcgi if f"{a}=" not in text]
    assert not missing, f"manage.py runfcgi --help misses {missing}"
    assert "daemonize=false" in text and "--settings" in text
    assert done.stdout == manage(site, "help", "runfcgi").stdout


def test_flags_and_words_mix_and_app_override(site: Path, tmp_path: Path) -> None:
    """--flags of the fcgiserve command work too; an explicit MODULE:CALLABLE replaces Django's handler."""
    (site / "plain.py").write_text(
        "def application(environ, start_response):\n"
        "    start_response('200 OK', [('Content-Type', 'text/plain')])\n"
        "    return [b'plain app']\n"
    )
    sock = tmp_path / "app.sock"
    proc = start_manage(
        site, "runfcgi", "plain:application", f"socket={sock}", "--socket-mode", "0600", log=tmp_path / "log"
    )
    try:
        assert wait_for(sock.exists, timeout=60), (tmp_path / "log").read_text()
        assert fcgi_request(str(sock)).body == b"plain app"
        assert os.stat(sock).st_mode & 0o777 == 0o600  # checked once serving: the mode is set after bind()
    finally:
        assert stop(proc) == 0


RUN_SCRIPT = """#!/bin/sh
# The classic daemontools run script of the runfcgi era (with the runfcgi line of the issue).
cd {site}
PYTHONPATH={root}
export PYTHONPATH
exec 2>&1
exec envuidgid {user} {python} manage.py runfcgi {words}
"""


@pytest.mark.skipif(not shutil.which("supervise"), reason="daemontools is not installed")
def test_daemontools_run_script_with_envuidgid(site: Path, tmp_path: Path) -> None:
    """`exec envuidgid USER python manage.py runfcgi ...` under a real supervise; svc -d stops it cleanly."""
    port = free_port()
    service = tmp_path / "service"
    service.mkdir()
    run = service / "run"
    words = ISSUE_LINE.format(port=port)
    user = "root" if os.geteuid() == 0 else os.environ.get("USER", "nobody")
    run.write_text(RUN_SCRIPT.format(site=site, root=ROOT, user=user, python=sys.executable, words=words))
    run.chmod(0o755)
    supervise = subprocess.Popen(
        ["supervise", str(service)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=environment()
    )
    try:
        wait_for_port(port, timeout=60, proc=supervise)
        pid = int((site / "mysite.pid").read_text())
        with open(f"/proc/{pid}/environ", "rb") as f:
            env = dict(item.split(b"=", 1) for item in f.read().split(b"\0") if b"=" in item)
        assert b"UID" in env and b"GID" in env, "envuidgid exported the account's ids"
        assert fcgi_request(("127.0.0.1", port), {"HTTP_HOST": "x"}).body == f"GET  pid={pid}".encode()
        subprocess.run(["svc", "-d", str(service)], check=True, timeout=30)
        assert wait_for(lambda: not (site / "mysite.pid").exists(), timeout=60), "stopped, pidfile removed"
    finally:
        subprocess.run(["svc", "-dx", str(service)], timeout=30, check=False)
        try:
            supervise.wait(15)
        except subprocess.TimeoutExpired:
            supervise.kill()
            supervise.wait(5)


def test_call_command_takes_option_names(site: Path, tmp_path: Path) -> None:
    """From Python: call_command("runfcgi", port=..., method="prefork") serves like the command line."""
    port = free_port()
    code = (
        "import django\n"
        "from django.core.management import call_command\n"
        "django.setup()\n"
        f"call_command('runfcgi', host='127.0.0.1', port={port}, method='prefork',\n"
        "             maxchildren=2, minspare=1, maxspare=2)\n"
    )
    log = tmp_path / "call.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-c", code],
            cwd=site,
            env={**environment(), "DJANGO_SETTINGS_MODULE": "mysite.settings"},
            stdout=out,
            stderr=out,
        )
    try:
        wait_for_port(port, proc=proc, timeout=60)
        body = fcgi_request(("127.0.0.1", port), {"HTTP_HOST": "x"}).body
        assert body.startswith(b"GET  pid=") and body != f"GET  pid={proc.pid}".encode(), "a child serves"
    finally:
        assert stop(proc) == 0, log.read_text()
