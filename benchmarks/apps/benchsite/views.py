"""A typical small view: read the query string, render a template with a list."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse
from django.shortcuts import render

ITEMS = [{"id": n, "title": f"Article number {n}", "score": n * 7 % 100} for n in range(20)]


def articles(request: HttpRequest) -> HttpResponse:
    """Render 20 articles sorted by the ``sort`` query parameter."""
    key = request.GET.get("sort", "id")
    items = sorted(ITEMS, key=lambda item: item.get(key, item["id"]))
    return render(request, "articles.html", {"items": items, "sort": key})
