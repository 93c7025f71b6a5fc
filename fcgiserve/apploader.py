"""Resolve "pkg.module:callable" into the WSGI application object.

Forms: ``pkg.mod`` (its ``application``, else its ``app``), ``pkg.mod:name``, ``pkg.mod:obj.attr`` and
``pkg.mod:factory()`` (called with no arguments; the result is the application).
"""

from __future__ import annotations

import importlib
import os
import re
import sys
from collections.abc import Callable
from typing import Any

__all__ = ["AppLoadError", "load_app"]

DEFAULT_NAMES = ("application", "app")  # Django's wsgi.py and WSGI convention, then Flask/Bottle habit
_SPEC = re.compile(
    r"(?P<module>[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*)"
    r"(?::(?P<attr>[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*)(?P<call>\(\))?)?"
)


class AppLoadError(Exception):
    """The application could not be loaded; the message is one line, the cause is chained.

    ``complete``: the message says all there is to know (a setting naming a module that is not there), so
    the server shows it without the traceback of the cause.
    """

    def __init__(self, message: str, *, complete: bool = False) -> None:
        super().__init__(message)
        self.complete = complete


def load_app(spec: str, chdir: str | None = None) -> Callable[..., Any]:
    """Import and return the application named by ``spec``. Raises AppLoadError.

    ``chdir``: change the process's working directory there first (runfcgi's ``workdir=``). The working
    directory is then put at the front of ``sys.path``, as ``python manage.py`` does, so a project module
    next to where the server was started is found before anything installed.
    """
    match = _SPEC.fullmatch(spec.strip())
    if match is None:
        raise AppLoadError(
            f"invalid application {spec!r}: expected MODULE[:CALLABLE], e.g. mysite.wsgi:application"
        )
    if chdir is not None:
        try:
            os.chdir(chdir)
        except OSError as exc:
            raise AppLoadError(f"cannot change directory to {chdir}: {exc.strerror or exc}") from exc
    cwd = os.getcwd()
    if sys.path[:1] != [cwd]:
        sys.path.insert(0, cwd)
    module_name = match["module"]
    module = _import(module_name)
    if match["attr"] is None:
        for name in DEFAULT_NAMES:
            if hasattr(module, name):
                return _check_callable(getattr(module, name), f"{module_name}:{name}")
        raise AppLoadError(
            f"module {module_name!r} defines neither 'application' nor 'app'; name it: {module_name}:NAME"
        )
    target: Any = module
    for part in match["attr"].split("."):
        try:
            target = getattr(target, part)
        except AttributeError as exc:
            raise AppLoadError(f"{spec}: {module_name!r} has no attribute {match['attr']!r}") from exc
    if match["call"]:
        try:
            target = target()
        except AppLoadError:
            raise  # a factory that explains its own failure (fcgiserve.contrib.django.wsgi)
        except Exception as exc:
            raise AppLoadError(f"{spec}: calling the factory raised {type(exc).__name__}: {exc}") from exc
    return _check_callable(target, spec)


def _import(module_name: str) -> Any:
    importlib.invalidate_caches()  # the server may run before the project files were written (tests, deploys)
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        # Only "the module we asked for (or its package) is missing" is a missing module. The module
        # failing to import something else is an error inside it, and is reported as such.
        missing = exc.name or ""
        if missing == module_name or module_name.startswith(missing + "."):
            raise AppLoadError(
                f"module {module_name!r} not found (searched {sys.path[0]!r} first; is the working "
                f"directory or --chdir right?)"
            ) from exc
        raise AppLoadError(f"importing {module_name!r} failed: {type(exc).__name__}: {exc}") from exc
    except (Exception, SystemExit) as exc:  # a module calling sys.exit() at import time failed to load too
        raise AppLoadError(f"importing {module_name!r} failed: {type(exc).__name__}: {exc}") from exc


def _check_callable(obj: object, where: str) -> Callable[..., Any]:
    if not callable(obj):
        raise AppLoadError(f"{where} is a {type(obj).__name__}, not a callable WSGI application")
    return obj
