"""The demo application: a plain WSGI app with a page, a form POST and a streamed response."""

from __future__ import annotations

import html
import os
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any
from urllib.parse import parse_qs

PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>fcgiserve demo</title></head>
<body>
<h1>Served by fcgiserve behind nginx</h1>
<p>Process {pid}, request path <code>{path}</code>, {n} requests so far in this process.</p>
<form method="post" action="{script}/echo"><input name="text" placeholder="say something">
<button>POST it</button></form>
<p><a href="{script}/stream">a streamed response</a> &middot;
<a href="{script}/environ">the WSGI environ</a></p>
</body></html>
"""

_count = 0


def application(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    global _count
    _count += 1
    path = environ.get("PATH_INFO", "/")
    script = environ.get("SCRIPT_NAME", "")
    if path == "/echo" and environ["REQUEST_METHOD"] == "POST":
        length = int(environ.get("CONTENT_LENGTH") or 0)
        form = parse_qs(environ["wsgi.input"].read(length).decode("utf-8", "replace"))
        text = html.escape(form.get("text", [""])[0])
        body = f"<!doctype html><p>You said: <b>{text}</b></p><p><a href='{script}/'>back</a></p>".encode()
        start_response("200 OK", [("Content-Type", "text/html; charset=utf-8")])
        return [body]
    if path == "/stream":
        start_response("200 OK", [("Content-Type", "text/plain; charset=utf-8")])
        return _stream()
    if path == "/environ":
        lines = "".join(f"{k} = {v!r}\n" for k, v in sorted(environ.items()))
        start_response("200 OK", [("Content-Type", "text/plain; charset=utf-8")])
        return [lines.encode("utf-8", "replace")]
    if path != "/":
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [b"not found\n"]
    page = PAGE.format(pid=os.getpid(), path=html.escape(path), n=_count, script=html.escape(script))
    start_response("200 OK", [("Content-Type", "text/html; charset=utf-8")])
    return [page.encode()]


def _stream() -> Iterator[bytes]:
    for i in range(5):
        yield f"line {i} at {time.strftime('%H:%M:%S')}\n".encode()
        time.sleep(0.2)
