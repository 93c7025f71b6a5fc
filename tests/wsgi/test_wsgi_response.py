"""run_application: start_response, write(), the body iterable, close(), errors (PEP 3333; checklist S-F9)."""

from __future__ import annotations

import io as stdio
import logging
import re
import sys
from collections.abc import Callable, Iterable, Iterator
from typing import Any
from wsgiref.validate import validator

import pytest

from fcgiserve.wsgi import (
    APP_STATUS_DISCONNECTED,
    APP_STATUS_ERROR,
    APP_STATUS_OK,
    ClientDisconnected,
    FileWrapper,
    RequestAborted,
    RequestBody,
    WSGIOptions,
)
from tests.wsgi.wsgi_support import NGINX_STOCK, RecordingIO, finished_body, parse_cgi, run

StartResponse = Callable[..., Callable[[bytes], None]]
Environ = dict[str, Any]


def hello(environ: Environ, start_response: StartResponse) -> list[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "13")])
    return [b"Hello, world!"]


class ClosingBody:
    """A response iterable that records close() and can fail while iterating or closing."""

    def __init__(
        self, chunks: Iterable[bytes], fail_after: int | None = None, close_fails: bool = False
    ) -> None:
        self.chunks = list(chunks)
        self.fail_after = fail_after
        self.close_fails = close_fails
        self.closed = 0
        self.yielded = 0

    def __iter__(self) -> Iterator[bytes]:
        for chunk in self.chunks:
            if self.fail_after is not None and self.yielded >= self.fail_after:
                raise RuntimeError("boom while iterating")
            self.yielded += 1
            yield chunk

    def close(self) -> None:
        self.closed += 1
        if self.close_fails:
            raise RuntimeError("boom in close")


def app_returning(result: Any, status: str = "200 OK", headers: list[tuple[str, str]] | None = None) -> Any:
    def app(environ: Environ, start_response: StartResponse) -> Any:
        start_response(status, headers if headers is not None else [("Content-Type", "text/plain")])
        return result

    return app


# -------------------------------------------------------------------------------------------- output format


def test_hello_world_is_one_write_of_headers_and_body() -> None:
    status, io = run(hello, NGINX_STOCK)
    assert status == APP_STATUS_OK
    assert io.writes == [
        b"Status: 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 13\r\n\r\nHello, world!"
    ]


def test_headers_go_out_with_the_first_non_empty_chunk() -> None:
    body = ClosingBody([b"", b"", b"first", b"", b"second"])
    status, io = run(app_returning(body))
    assert status == APP_STATUS_OK
    assert io.writes == [b"Status: 200 OK\r\nContent-Type: text/plain\r\n\r\nfirst", b"second"]
    assert body.closed == 1


@pytest.mark.parametrize("result", [[], [b""], (b"", b""), iter([])])
def test_empty_body_sends_the_headers_at_the_end(result: Iterable[bytes]) -> None:
    status, io = run(app_returning(result, "204 No Content", []))
    assert status == APP_STATUS_OK
    assert io.writes == [b"Status: 204 No Content\r\n\r\n"]


def test_tuple_and_generator_bodies() -> None:
    def gen() -> Iterator[bytes]:
        yield b"a"
        yield b"b"

    for result in ((b"a", b"b"), gen(), [b"a", b"b"]):
        _, io = run(app_returning(result))
        assert parse_cgi(io.output)[2] == b"ab"


def test_write_callable() -> None:
    """PEP 3333 write(): its bytes go out before the iterable's; the first one carries the headers."""

    def app(environ: Environ, start_response: StartResponse) -> list[bytes]:
        write = start_response("201 Created", [("Location", "/x")])
        write(b"")
        write(b"one ")
        write(b"two ")
        return [b"three"]

    status, io = run(app)
    assert status == APP_STATUS_OK
    assert io.writes == [b"Status: 201 Created\r\nLocation: /x\r\n\r\none ", b"two ", b"three"]


def test_write_rejects_str() -> None:
    def app(environ: Environ, start_response: StartResponse) -> list[bytes]:
        start_response("200 OK", [])("text")  # type: ignore[arg-type]
        return []

    status, io = run(app)
    assert status == APP_STATUS_ERROR
    assert parse_cgi(io.output)[0] == "500 Internal Server Error"


def test_body_chunk_must_be_bytes() -> None:
    status, io = run(app_returning(["text"]))
    assert status == APP_STATUS_ERROR
    assert parse_cgi(io.output)[0] == "500 Internal Server Error"


def test_content_length_is_never_exceeded_and_iteration_stops() -> None:
    """PEP 3333: not more bytes than the application's Content-Length; stop iterating once it is reached."""
    body = ClosingBody([b"hel", b"lo world", b"never sent"])
    status, io = run(app_returning(body, headers=[("Content-Length", "5")]))
    assert status == APP_STATUS_OK
    assert parse_cgi(io.output)[2] == b"hello"
    assert body.yielded == 2 and body.closed == 1


def test_content_length_also_bounds_write(caplog: pytest.LogCaptureFixture) -> None:
    def app(environ: Environ, start_response: StartResponse) -> list[bytes]:
        write = start_response("200 OK", [("Content-Length", "3")])
        write(b"ab")
        write(b"cdef")
        write(b"more")
        return [b"and more"]

    status, io = run(app)
    assert status == APP_STATUS_OK
    assert io.writes == [b"Status: 200 OK\r\nContent-Length: 3\r\n\r\nab", b"c"]
    assert [r.getMessage() for r in caplog.records] == [
        "response body exceeds its Content-Length; extra bytes dropped"
    ]


def test_content_length_zero() -> None:
    status, io = run(app_returning(ClosingBody([b"x", b"y"]), headers=[("Content-Length", "0")]))
    assert status == APP_STATUS_OK
    assert io.writes == [b"Status: 200 OK\r\nContent-Length: 0\r\n\r\n"]


def test_header_values_may_hold_tabs_and_latin1() -> None:
    _, io = run(app_returning([b"x"], headers=[("X-Tab", "a\tb"), ("X-Latin", "caf\xe9")]))
    _, headers, _ = parse_cgi(io.output)
    assert headers == [("X-Tab", "a\tb"), ("X-Latin", "caf\xe9")]


# ------------------------------------------------------------------------------ start_response validation

BAD_START_RESPONSE = [
    ("status-bytes", b"200 OK", [], TypeError, "status must be str"),
    ("status-no-reason", "200", [], ValueError, "invalid status"),
    ("status-empty-reason", "200 ", [], ValueError, "invalid status"),
    ("status-no-space", "200OK", [], ValueError, "invalid status"),
    ("status-two-digits", "20 OK", [], ValueError, "invalid status"),
    ("status-below-100", "099 Odd", [], ValueError, "invalid status"),
    ("status-600", "600 Odd", [], ValueError, "invalid status"),
    ("status-crlf", "200 OK\r\nX-Injected: 1", [], ValueError, "invalid status"),
    ("status-not-latin1", "200 \u2713", [], ValueError, "latin-1"),
    ("headers-tuple", "200 OK", (("A", "b"),), TypeError, "must be a list"),
    ("header-not-tuple", "200 OK", [["A", "b"]], TypeError, "tuple"),
    ("header-three-items", "200 OK", [("A", "b", "c")], TypeError, "tuple"),
    ("header-name-bytes", "200 OK", [(b"A", "b")], TypeError, "must be str"),
    ("header-value-bytes", "200 OK", [("X-A", b"b")], TypeError, "must be str"),
    ("header-value-int", "200 OK", [("Content-Length", 5)], TypeError, "must be str"),
    ("header-name-space", "200 OK", [("Bad Name", "v")], ValueError, "'Bad Name'"),
    ("header-name-colon", "200 OK", [("X:Y", "v")], ValueError, "'X:Y'"),
    ("header-name-empty", "200 OK", [("", "v")], ValueError, "invalid header name"),
    ("header-name-not-latin1", "200 OK", [("X-\xe9", "v")], ValueError, "invalid header name"),
    ("header-value-cr", "200 OK", [("X-A", "a\rb")], ValueError, "'X-A'"),
    ("header-value-lf", "200 OK", [("X-A", "a\nSet-Cookie: x")], ValueError, "'X-A'"),
    ("header-value-nul", "200 OK", [("X-A", "a\0b")], ValueError, "'X-A'"),
    ("header-value-ctl", "200 OK", [("X-A", "a\x01b")], ValueError, "'X-A'"),
    ("header-value-not-latin1", "200 OK", [("X-Check", "\u2713")], ValueError, "'X-Check'.*latin-1"),
    ("header-status", "200 OK", [("Status", "404 Not Found")], ValueError, "'Status'"),
    ("content-length-bad", "200 OK", [("Content-Length", "-1")], ValueError, "Content-Length"),
    ("content-length-2", "200 OK", [("Content-Length", "1")] * 2, ValueError, "repeated"),
] + [
    (f"hop-by-hop-{name.lower()}", "200 OK", [(name, "x")], ValueError, f"'{name}'.*hop-by-hop")
    for name in (
        "Connection", "Keep-Alive", "Proxy-Authenticate", "Proxy-Authorization", "TE", "Trailers",
        "Transfer-Encoding", "Upgrade", "connection",
    )
]  # fmt: skip


@pytest.mark.parametrize(
    ("status", "headers", "error", "message"),
    [case[1:] for case in BAD_START_RESPONSE],
    ids=[case[0] for case in BAD_START_RESPONSE],
)
def test_start_response_rejects(status: Any, headers: Any, error: type[Exception], message: str) -> None:
    seen: list[BaseException] = []

    def app(environ: Environ, start_response: StartResponse) -> list[bytes]:
        try:
            start_response(status, headers)
        except Exception as exc:
            seen.append(exc)
            raise
        return [b"unreachable"]

    appstatus, io = run(app)
    assert len(seen) == 1 and type(seen[0]) is error
    assert re.search(message, str(seen[0])), seen[0]
    # The application did not catch it: the client gets a plain 500.
    assert appstatus == APP_STATUS_ERROR
    assert parse_cgi(io.output)[0] == "500 Internal Server Error"


def test_a_content_length_validated_before_is_still_one_per_response() -> None:
    """Content-Length headers seen before skip validation (cached with their value), not the repeat check."""
    for _ in range(2):  # the second round finds both headers cached
        status, io = run(app_returning([b"abc"], headers=[("Content-Length", "3")]))
        assert status == APP_STATUS_OK and parse_cgi(io.output)[2] == b"abc"
        status, io = run(app_returning([b"abcd"], headers=[("Content-Length", "4")]))
        assert status == APP_STATUS_OK and parse_cgi(io.output)[2] == b"abcd"
    for repeated in ([("Content-Length", "3")] * 2, [("Content-Length", "3"), ("Content-Length", "4")]):
        status, io = run(app_returning([b"abc"], headers=repeated))
        assert status == APP_STATUS_ERROR and parse_cgi(io.output)[0] == "500 Internal Server Error"


def test_second_start_response_without_exc_info_is_an_error() -> None:
    def app(environ: Environ, start_response: StartResponse) -> list[bytes]:
        start_response("200 OK", [])
        start_response("404 Not Found", [])
        return []

    status, io = run(app)
    assert status == APP_STATUS_ERROR
    assert parse_cgi(io.output)[0] == "500 Internal Server Error"


def test_exc_info_before_headers_replaces_the_status() -> None:
    """PEP 3333: an error page may replace the status while nothing was sent yet."""

    def app(environ: Environ, start_response: StartResponse) -> list[bytes]:
        start_response("200 OK", [("X-Was", "ok")])
        try:
            raise KeyError("inner")
        except KeyError:
            start_response("503 Service Unavailable", [("Retry-After", "5")], sys.exc_info())
        return [b"try later"]

    status, io = run(app)
    assert status == APP_STATUS_OK
    assert io.writes == [b"Status: 503 Service Unavailable\r\nRetry-After: 5\r\n\r\ntry later"]


def test_exc_info_after_headers_reraises(caplog: pytest.LogCaptureFixture) -> None:
    """PEP 3333: once the headers went out, start_response(..., exc_info) re-raises; the request fails."""
    reraised: list[BaseException] = []

    def app(environ: Environ, start_response: StartResponse) -> Iterator[bytes]:
        start_response("200 OK", [])
        yield b"partial"
        try:
            raise KeyError("inner")
        except KeyError:
            try:
                start_response("500 Oops", [], sys.exc_info())
            except KeyError as exc:
                reraised.append(exc)
                raise

    status, io = run(app)
    assert status == APP_STATUS_ERROR
    assert len(reraised) == 1
    assert io.writes == [b"Status: 200 OK\r\n\r\npartial"]  # nothing appended after the headers went out
    assert "KeyError" in caplog.text


def test_app_returning_without_start_response_is_a_500() -> None:
    status, io = run(lambda environ, start_response: [b"x"])
    assert status == APP_STATUS_ERROR
    assert parse_cgi(io.output)[0] == "500 Internal Server Error"

    status, io = run(lambda environ, start_response: [])
    assert parse_cgi(io.output)[0] == "500 Internal Server Error"


# ------------------------------------------------------------------------------------------------- errors


def failing_app(environ: Environ, start_response: StartResponse) -> list[bytes]:
    start_response("200 OK", [("X-Never", "sent")])
    raise ZeroDivisionError("the application failed")


def test_exception_before_headers_is_a_500_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR, logger="fcgiserve.wsgi")
    status, io = run(failing_app, NGINX_STOCK)
    assert status == APP_STATUS_ERROR
    code, headers, body = parse_cgi(io.output)
    assert code == "500 Internal Server Error"
    assert ("Content-Type", "text/plain; charset=utf-8") in headers
    assert ("Content-Length", str(len(body))) in headers
    assert body == b"Internal Server Error\n"  # debug is off by default: no traceback for the client
    assert len(io.writes) == 1
    [record] = [r for r in caplog.records if r.name == "fcgiserve.wsgi"]
    assert record.levelno == logging.ERROR and record.exc_info is not None
    assert "GET /app/caf%C3%A9?q=1" in record.getMessage()
    assert "ZeroDivisionError" in caplog.text


def test_debug_puts_the_traceback_in_the_500_body() -> None:
    _, io = run(failing_app, options=WSGIOptions(debug=True))
    body = parse_cgi(io.output)[2].decode()
    assert body.startswith("Traceback (most recent call last):")
    assert "ZeroDivisionError: the application failed" in body
    assert "<html" not in body


def test_exception_after_headers_ends_with_an_error_status(caplog: pytest.LogCaptureFixture) -> None:
    body = ClosingBody([b"one", b"two", b"three"], fail_after=2)
    status, io = run(app_returning(body))
    assert status == APP_STATUS_ERROR
    assert io.writes == [b"Status: 200 OK\r\nContent-Type: text/plain\r\n\r\none", b"two"]
    assert body.closed == 1
    assert "boom while iterating" in caplog.text


def test_close_is_called_and_its_failure_logged(caplog: pytest.LogCaptureFixture) -> None:
    body = ClosingBody([b"ok"], close_fails=True)
    status, io = run(app_returning(body))
    assert body.closed == 1
    assert status == APP_STATUS_ERROR
    assert parse_cgi(io.output)[2] == b"ok"
    assert "boom in close" in caplog.text


def test_close_is_called_when_start_response_fails_in_the_iterable() -> None:
    """An iterable that calls start_response on its first step (PEP 3333 allows it) and gets it wrong."""
    body = ClosingBody([b"x"])

    class Deferred:
        def __init__(self, start_response: StartResponse) -> None:
            self.start_response = start_response

        def __iter__(self) -> Iterator[bytes]:
            self.start_response("OK", [])
            return iter(body)

        def close(self) -> None:
            body.close()

    status, io = run(lambda environ, start_response: Deferred(start_response))
    assert body.closed == 1 and status == APP_STATUS_ERROR
    assert parse_cgi(io.output)[0] == "500 Internal Server Error"


def test_base_exceptions_propagate_after_close() -> None:
    body = ClosingBody([b"a", b"b"])

    def interrupting() -> Iterator[bytes]:
        yield from body
        raise KeyboardInterrupt

    class Wrapped:
        def __iter__(self) -> Iterator[bytes]:
            return interrupting()

        def close(self) -> None:
            body.close()

    with pytest.raises(KeyboardInterrupt):
        run(app_returning(Wrapped()))
    assert body.closed == 1


# -------------------------------------------------------------------------------------- the client went away


@pytest.mark.parametrize("fail_at", [1, 2])
def test_client_disconnected_stops_iteration_closes_and_logs_one_debug_line(
    fail_at: int, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="fcgiserve.wsgi")
    body = ClosingBody([b"one", b"two", b"three", b"four"])
    status, _ = run(app_returning(body), io=RecordingIO(fail_at=fail_at))
    assert status == APP_STATUS_DISCONNECTED
    assert body.closed == 1
    assert body.yielded == fail_at  # iteration stopped at the failed write
    records = [r for r in caplog.records if r.name == "fcgiserve.wsgi"]
    assert len(records) == 1
    assert records[0].levelno == logging.DEBUG and records[0].exc_info is None
    assert "client went away" in records[0].getMessage()


def test_client_gone_before_the_500_is_sent(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="fcgiserve.wsgi")
    status, _ = run(failing_app, io=RecordingIO(fail_at=1))
    assert status == APP_STATUS_DISCONNECTED


def test_aborted_request_reaches_the_application() -> None:
    """S-F7: after ABORT_REQUEST, body reads raise RequestAborted and fcgiserve.aborted() is True."""
    seen: dict[str, Any] = {}
    body = RequestBody(10, 1024)
    body.feed(b"abc")

    def app(environ: Environ, start_response: StartResponse) -> list[bytes]:
        seen["before"] = environ["fcgiserve.aborted"]()
        body.abort()  # what the handler does when ABORT_REQUEST arrives
        seen["after"] = environ["fcgiserve.aborted"]()
        environ["wsgi.input"].read(10)
        return []

    status, io = run(app, body=body)
    assert seen == {"before": False, "after": True}
    assert status == APP_STATUS_DISCONNECTED
    assert io.writes == []


def test_body_incomplete_is_an_application_error() -> None:
    """S-G1: a short body surfaces as BodyIncomplete; uncaught, it is a 500 like any other error."""
    body = RequestBody(10, 1024)
    body.feed(b"abc")
    body.finish()

    def app(environ: Environ, start_response: StartResponse) -> list[bytes]:
        environ["wsgi.input"].read()
        return []

    status, io = run(app, body=body)
    assert status == APP_STATUS_ERROR
    assert parse_cgi(io.output)[0] == "500 Internal Server Error"


# ---------------------------------------------------------------------------------------------- wsgi.errors


def test_wsgi_errors_go_to_stderr() -> None:
    def app(environ: Environ, start_response: StartResponse) -> list[bytes]:
        errors = environ["wsgi.errors"]
        assert errors.write("caf\xe9 ") == 5
        errors.writelines(["a\n", "b\n"])
        errors.write("")
        errors.flush()
        start_response("200 OK", [])
        return []

    status, io = run(app)
    assert status == APP_STATUS_OK
    assert io.errors == ["café ".encode(), b"a\n", b"b\n"]


def test_wsgi_errors_takes_only_str() -> None:
    def app(environ: Environ, start_response: StartResponse) -> list[bytes]:
        environ["wsgi.errors"].write(b"bytes")
        return []

    status, _ = run(app)
    assert status == APP_STATUS_ERROR


def test_wsgi_errors_mirrored_to_the_log(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="fcgiserve.wsgi")

    def app(environ: Environ, start_response: StartResponse) -> list[bytes]:
        environ["wsgi.errors"].write("line one\nline ")
        environ["wsgi.errors"].write("two\npartial")
        start_response("200 OK", [])
        return []

    run(app, options=WSGIOptions(errors_to_log=True))
    messages = [r.getMessage() for r in caplog.records if r.name == "fcgiserve.wsgi"]
    assert messages == ["wsgi.errors: line one", "wsgi.errors: line two", "wsgi.errors: partial"]


def test_wsgi_errors_survive_a_gone_client() -> None:
    def app(environ: Environ, start_response: StartResponse) -> list[bytes]:
        environ["wsgi.errors"].write("still fine\n")
        start_response("200 OK", [])
        return [b"ok"]

    status, io = run(app, io=RecordingIO(errors_fail=True))
    assert status == APP_STATUS_OK and io.errors == []


# ------------------------------------------------------------------------------------------ wsgi.file_wrapper


def test_file_wrapper_iterates_blocks_and_closes() -> None:
    data = bytes(range(256)) * 100
    source = stdio.BytesIO(data)
    captured: list[FileWrapper] = []

    def app(environ: Environ, start_response: StartResponse) -> Any:
        start_response("200 OK", [("Content-Length", str(len(data)))])
        wrapper = environ["wsgi.file_wrapper"](source, 4096)
        captured.append(wrapper)
        return wrapper

    status, io = run(app)
    assert status == APP_STATUS_OK
    assert parse_cgi(io.output)[2] == data
    assert [len(w) for w in io.writes[1:]] == [4096] * 5 + [len(data) - 6 * 4096]
    assert captured[0].filelike is source and captured[0].blksize == 4096
    assert source.closed


def test_file_wrapper_defaults_and_objects_without_close() -> None:
    class Reader:
        def __init__(self) -> None:
            self.parts = [b"x" * 10, b""]

        def read(self, size: int) -> bytes:
            return self.parts.pop(0)

    wrapper = FileWrapper(Reader())  # type: ignore[arg-type]
    assert wrapper.blksize == FileWrapper.DEFAULT_BLOCK_SIZE and wrapper.blksize % 8 == 0
    assert list(wrapper) == [b"x" * 10]
    wrapper.close()


# ----------------------------------------------------------------------------------------------- roles


def test_filter_role_reads_stdin_then_data() -> None:
    """S-G3: the filter's file arrives as environ["fcgi.data"], a second RequestBody."""
    data = finished_body(b"<p>file</p>")

    def app(environ: Environ, start_response: StartResponse) -> list[bytes]:
        assert environ["FCGI_ROLE"] == "FILTER"
        request_body = environ["wsgi.input"].read()
        page = environ["fcgi.data"].read()
        start_response("200 OK", [("Content-Type", "text/html")])
        return [request_body + page.upper()]

    pairs = [("FCGI_DATA_LENGTH", "11"), ("FCGI_DATA_LAST_MOD", "0"), ("REQUEST_URI", "/f")]
    status, io = run(app, pairs, body=finished_body(b"in:"), role="FILTER", data=data)
    assert status == APP_STATUS_OK
    assert parse_cgi(io.output)[2] == b"in:<P>FILE</P>"


def test_authorizer_role_without_body() -> None:
    """S-G2: the authorizer's answer (200 + Variable-* headers, or a denial) is written like any response."""

    def app(environ: Environ, start_response: StartResponse) -> list[bytes]:
        assert environ["FCGI_ROLE"] == "AUTHORIZER" and "CONTENT_LENGTH" not in environ
        assert environ["wsgi.input"].read() == b""
        start_response("200 OK", [("Variable-USER", "alice")])
        return []

    pairs = [("REQUEST_URI", "/x"), ("CONTENT_LENGTH", "5")]
    status, io = run(app, pairs, body=RequestBody(0, 1024), role="AUTHORIZER")
    assert status == APP_STATUS_OK
    assert io.writes == [b"Status: 200 OK\r\nVariable-USER: alice\r\n\r\n"]


# ------------------------------------------------------------------------------ conformance: wsgiref.validate


def echo_app(environ: Environ, start_response: StartResponse) -> list[bytes]:
    stream = environ["wsgi.input"]
    first = stream.readline()
    rest = stream.read(int(environ.get("CONTENT_LENGTH") or 0) - len(first))
    start_response("200 OK", [("Content-Type", "application/octet-stream")])
    return [first, rest]


def lines_app(environ: Environ, start_response: Any) -> Iterator[bytes]:
    lines = environ["wsgi.input"].readlines()
    more = list(environ["wsgi.input"])
    environ["wsgi.errors"].write("lines app\n")
    environ["wsgi.errors"].writelines(["x\n"])
    environ["wsgi.errors"].flush()
    write = start_response("200 OK", [("Content-Type", "text/plain")])
    write(b"%d lines;" % len(lines + more))
    yield b"".join(lines)


def file_app(environ: Environ, start_response: StartResponse) -> Any:
    start_response("200 OK", [("Content-Type", "text/plain")])
    return environ["wsgi.file_wrapper"](stdio.BytesIO(b"from a file"), 4)


def error_page_app(environ: Environ, start_response: StartResponse) -> list[bytes]:
    try:
        raise ValueError("handled by the application")
    except ValueError:
        start_response("500 Internal Server Error", [("Content-Type", "text/plain")], sys.exc_info())
    return [b"sorry"]


@pytest.mark.parametrize(
    ("app", "payload", "expected"),
    [
        (hello, b"", b"Hello, world!"),
        (echo_app, b"line\nrest of it", b"line\nrest of it"),
        (lines_app, b"a\nb\nc", b"3 lines;a\nb\nc"),
        (file_app, b"", b"from a file"),
        (error_page_app, b"", b"sorry"),
    ],
)
@pytest.mark.parametrize("pairs", [NGINX_STOCK, ()], ids=["nginx", "no-params"])
def test_wsgiref_validator_accepts_our_environ_and_calls(
    app: Any, payload: bytes, expected: bytes, pairs: tuple[tuple[str, str], ...]
) -> None:
    """wsgiref.validate checks the environ, streams, start_response and close(); its warnings are errors."""
    pairs = (*(p for p in pairs if p[0] not in ("CONTENT_LENGTH", "REQUEST_METHOD")),)
    pairs += (("CONTENT_LENGTH", str(len(payload))), ("REQUEST_METHOD", "POST" if payload else "GET"))
    status, io = run(validator(app), pairs, body=finished_body(payload))
    assert status == APP_STATUS_OK
    assert parse_cgi(io.output)[2] == expected


def test_validator_sees_close_even_when_the_client_is_gone() -> None:
    """wsgiref.validate fails if the iterable is garbage-collected without close(); warnings are errors."""
    status, _ = run(validator(lines_app), [("CONTENT_LENGTH", "2")], body=finished_body(b"a\n"),
                    io=RecordingIO(fail_at=1))  # fmt: skip
    assert status == APP_STATUS_DISCONNECTED


def test_client_disconnected_is_an_oserror() -> None:
    assert issubclass(ClientDisconnected, OSError) and issubclass(RequestAborted, ClientDisconnected)
