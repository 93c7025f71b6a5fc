"""Django's registration of the app: it has no models, only the ``runfcgi`` management command."""

from __future__ import annotations

from django.apps import AppConfig  # type: ignore[import-untyped]  # Django ships no type hints

__all__ = ["FcgiserveConfig"]


class FcgiserveConfig(AppConfig):  # type: ignore[misc]
    name = "fcgiserve.contrib.django"
    # The default label would be "django": unambiguous to Django, but confusing to a reader of migrations
    # and admin URLs. This app has neither, and "fcgiserve" says what it is.
    label = "fcgiserve"
    verbose_name = "fcgiserve (FastCGI server)"
