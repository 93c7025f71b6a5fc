"""One route: the page the ``/django/`` workload asks for."""

from __future__ import annotations

from django.urls import path

from benchsite.views import articles

urlpatterns = [path("django/", articles)]
