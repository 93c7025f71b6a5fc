"""A typical small view: read the query string, render a template with a list."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse  # type: ignore[import-untyped,unused-ignore]
from django.shortcuts import render  # type: ignore[import-untyped,unused-ignore]

ITEMS: list[dict[str, int | str]] = [
    {"id": n, "title": f"Article number {n}", "score": n * 7 % 100} for n in range(20)
]
SORT_KEYS = ("id", "title", "score")


def articles(request: HttpRequest) -> HttpResponse:
    """Render 20 articles sorted by the ``sort`` query parameter (id, title or score)."""
    key = request.GET.get("sort", "id")
    if key not in SORT_KEYS:
        key = "id"
    items = sorted(ITEMS, key=lambda item: str(item[key]).zfill(8))
    return render(request, "articles.html", {"items": items, "sort": key})
