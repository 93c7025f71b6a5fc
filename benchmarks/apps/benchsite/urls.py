"""One route: the page the ``/django/`` workload asks for."""

from __future__ import annotations

from django.urls import path  # type: ignore[import-untyped,unused-ignore]

from benchsite.views import articles

urlpatterns = [path("django/", articles)]
