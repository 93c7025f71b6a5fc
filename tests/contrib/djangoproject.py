"""A minimal Django project written into a temp dir, with fcgiserve.contrib.django in INSTALLED_APPS.

Its ``mysite/wsgi.py`` wraps Django's handler in a WSGI middleware of its own (as WhiteNoise or Sentry do)
that answers ``/wrapped-only`` itself; ``settings.WSGI_APPLICATION`` names it only when asked.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from tests.helpers import ROOT

MANAGE = """\
import os
import sys

if __name__ == "__main__":
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "mysite.settings")
    from django.core.management import execute_from_command_line

    execute_from_command_line(sys.argv)
"""

SETTINGS = """\
SECRET_KEY = "test-only"
DEBUG = False
ALLOWED_HOSTS = ["*"]
INSTALLED_APPS = ["fcgiserve.contrib.django"]
ROOT_URLCONF = "mysite.urls"
DATABASES = {}
USE_TZ = True
"""

URLS = """\
import os

from django.http import HttpResponse
from django.urls import path
from django.views.decorators.csrf import csrf_exempt


@csrf_exempt
def echo(request):
    return HttpResponse(f"{request.method} {request.body.decode()} pid={os.getpid()}")


def boom(request):
    raise RuntimeError("secret-detail-in-traceback")


urlpatterns = [path("", echo), path("boom", boom)]
"""


WSGI = """\
import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "mysite.settings")
LOADED_IN = os.getpid()
django_application = get_wsgi_application()


def application(environ, start_response):
    if environ.get("PATH_INFO") == "/wrapped-only":
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [f"wrapper: loaded in {LOADED_IN} serving in {os.getpid()}".encode()]
    return django_application(environ, start_response)
"""


def write_project(root: Path, wsgi_application: str | None = None) -> Path:
    """The project directory (manage.py and the mysite package) under ``root``; ``wsgi_application``
    becomes ``settings.WSGI_APPLICATION`` (unset by default: Django's own default is None)."""
    site = root / "site"
    (site / "mysite").mkdir(parents=True)
    (site / "manage.py").write_text(MANAGE)
    (site / "mysite" / "__init__.py").write_text("")
    settings = (
        SETTINGS if wsgi_application is None else f"{SETTINGS}WSGI_APPLICATION = {wsgi_application!r}\n"
    )
    (site / "mysite" / "settings.py").write_text(settings)
    (site / "mysite" / "wsgi.py").write_text(WSGI)
    (site / "mysite" / "urls.py").write_text(URLS)
    return site


def environment() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}


def manage(site: Path, *args: str, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    """Run ``python manage.py ARGS`` to completion (for commands that exit by themselves)."""
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=site,
        env=environment(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def start_manage(site: Path, *args: str, log: Path) -> subprocess.Popen[bytes]:
    with open(log, "wb") as out:
        return subprocess.Popen(
            [sys.executable, "manage.py", *args], cwd=site, env=environment(), stdout=out, stderr=out
        )


def stop(proc: subprocess.Popen[bytes], timeout: float = 60.0) -> int:
    """SIGTERM by pid, then SIGKILL if it does not go; the exit status."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
    return proc.returncode
