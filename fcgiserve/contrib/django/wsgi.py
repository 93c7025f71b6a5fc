"""The application ``manage.py runfcgi`` serves unless told otherwise: ``settings.WSGI_APPLICATION``.

Django's ``runserver`` (and the old ``runfcgi``) serve that setting through
``django.core.servers.basehttp.get_internal_wsgi_application``, so a project whose ``wsgi.py`` wraps Django
(WhiteNoise, Sentry, a middleware of its own) keeps its wrapper; without the setting, Django's own handler
(``get_wsgi_application()``) is served. The command names ``internal_wsgi_application()`` as its
application spec, so the server loads it where it loads any application: in the serving process
(threaded, prefork with ``--preload``) or in each prefork child after the fork.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fcgiserve.apploader import AppLoadError

__all__ = ["internal_wsgi_application"]


def internal_wsgi_application() -> Callable[..., Any]:
    """``settings.WSGI_APPLICATION``, or Django's WSGI handler when it is None (Django's default).

    Raises AppLoadError, one line naming the setting and the import error, when the setting names a
    module or an attribute that does not import: that message needs no traceback.
    """
    from django.conf import settings  # type: ignore[import-untyped]  # Django ships no type hints
    from django.core.exceptions import ImproperlyConfigured  # type: ignore[import-untyped]
    from django.core.servers.basehttp import get_internal_wsgi_application  # type: ignore[import-untyped]

    try:
        application: Callable[..., Any] = get_internal_wsgi_application()
    except ImproperlyConfigured as exc:
        cause = exc.__cause__
        if not isinstance(cause, ImportError):
            raise  # not the import of the setting: the server shows the traceback
        raise AppLoadError(
            f"settings.WSGI_APPLICATION {settings.WSGI_APPLICATION!r} could not be imported: {cause}",
            complete=True,
        ) from exc
    return application
