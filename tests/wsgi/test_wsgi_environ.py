"""build_environ and the SCRIPT_NAME / PATH_INFO rule (PEP 3333, CGI/1.1; checklist S-C4, S-G2, S-G3)."""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import quote

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fcgiserve.protocol import decode_params, encode_pairs
from fcgiserve.wsgi import (
    WSGIOptions,
    body_length,
    build_environ,
    request_path,
    resolve_script_path,
)
from tests.wsgi.wsgi_support import NGINX_STOCK, environ_for

# ----------------------------------------------------------------------------------- the path rule, a table
# (SCRIPT_NAME sent, PATH_INFO sent, REQUEST_URI sent, options.script_name) -> (SCRIPT_NAME, PATH_INFO)
PATH_CASES = [
    # nginx, stock fastcgi_params: SCRIPT_NAME=$fastcgi_script_name (= the decoded path), no PATH_INFO.
    ("nginx-stock", "/app/view", None, "/app/view?x=1", None, ("", "/app/view")),
    ("nginx-stock-root", "/", None, "/", None, ("", "/")),
    ("nginx-stock-percent", "/caf\xc3\xa9", None, "/caf%C3%A9", None, ("", "/caf\xc3\xa9")),
    ("nginx-stock-slash-2f", "/a/b", None, "/a%2Fb", None, ("", "/a/b")),
    # nginx normalises $uri ("//" merged, ".." resolved); the client's path (REQUEST_URI) is what routes.
    ("nginx-stock-merged-slashes", "/a/b", None, "/a//b", None, ("", "/a//b")),
    # fastcgi_index appends index.php to a path ending in "/": SCRIPT_NAME is not the path any more.
    ("nginx-fastcgi-index", "/dir/index.php", None, "/dir/", None, ("", "/dir/")),
    # nginx fastcgi_split_path_info without passing PATH_INFO: SCRIPT_NAME is a real prefix.
    ("nginx-split-no-path-info", "/index.php", None, "/index.php/a/b", None, ("/index.php", "/a/b")),
    # The classic recipe: fastcgi_param PATH_INFO $fastcgi_script_name; fastcgi_param SCRIPT_NAME "".
    ("nginx-classic-recipe", "", "/app/view", "/app/view?x=1", None, ("", "/app/view")),
    ("nginx-classic-recipe-root", "", "/", "/", None, ("", "/")),
    # Both stock SCRIPT_NAME and the recipe's PATH_INFO: SCRIPT_NAME+PATH_INFO is not the path.
    ("nginx-stock-plus-path-info", "/app/view", "/app/view", "/app/view", None, ("", "/app/view")),
    # Apache mod_proxy_fcgi (ProxyPass / fcgi://...): SCRIPT_NAME = the path, no PATH_INFO.
    ("apache-proxy-fcgi", "/app/view", None, "/app/view?x", None, ("", "/app/view")),
    ("apache-proxy-fcgi-pathinfo", "/app/view", "/app/view", "/app/view", None, ("", "/app/view")),
    # Apache mod_fcgid: SCRIPT_NAME=/index.fcgi PATH_INFO=/rest.
    (
        "apache-fcgid",
        "/index.fcgi",
        "/rest/of/it",
        "/index.fcgi/rest/of/it",
        None,
        ("/index.fcgi", "/rest/of/it"),
    ),
    # mod_fcgid behind mod_rewrite (/x -> /index.fcgi/x): the prefix the client used is "".
    ("apache-fcgid-rewrite", "/index.fcgi", "/x", "/x", None, ("", "/x")),
    # lighttpd at "/": SCRIPT_NAME "/" or the whole path, PATH_INFO empty or missing.
    ("lighttpd-root-slash", "/", "", "/a/b", None, ("", "/a/b")),
    ("lighttpd-root-full-path", "/a/b", None, "/a/b", None, ("", "/a/b")),
    ("lighttpd-fix-root-scriptname", "", "/a/b", "/a/b", None, ("", "/a/b")),
    # lighttpd mounted at /app: SCRIPT_NAME=/app PATH_INFO=/rest.
    ("lighttpd-prefix", "/app", "/rest", "/app/rest", None, ("/app", "/rest")),
    # Mounted under a prefix by configuration (options.script_name).
    ("prefix-nginx-stock", "/blog/2024/post", None, "/blog/2024/post?p=1", "/blog", ("/blog", "/2024/post")),
    ("prefix-exact", "/blog", None, "/blog", "/blog", ("/blog", "")),
    ("prefix-trailing-slash", "/blog/", None, "/blog/", "/blog", ("/blog", "/")),
    ("prefix-not-a-segment", "/blogger", None, "/blogger", "/blog", ("/blog", "/blogger")),
    ("prefix-proxy-stripped", "/post", None, "/post", "/blog", ("/blog", "/post")),
    ("prefix-percent", "/blog/caf\xc3\xa9", None, "/blog/caf%c3%a9", "/blog", ("/blog", "/caf\xc3\xa9")),
    ("prefix-no-request-uri", "", "/blog/x", None, "/blog", ("/blog", "/x")),
    ("prefix-root", "/a", None, "/a", "", ("", "/a")),
    ("prefix-root-nothing", None, None, None, "", ("", "/")),
    # Without REQUEST_URI nothing can be compared: keep what was sent (CGI semantics).
    ("no-request-uri", "/index.fcgi", "/x", None, None, ("/index.fcgi", "/x")),
    ("no-request-uri-slash", "/", None, None, None, ("", "/")),
    ("no-request-uri-trailing-slash", "/app/", "x", None, None, ("/app", "/x")),
    ("no-request-uri-double-slash", "/app/", "/x", None, None, ("/app", "/x")),
    ("nothing-at-all", None, None, None, None, ("", "/")),
    # OPTIONS * and absolute-form targets.
    ("options-star", "", "", "*", None, ("", "/")),
    ("absolute-form", "/p", None, "http://example.com/p?q", None, ("", "/p")),
    ("absolute-form-no-path", "", None, "http://example.com", None, ("", "/")),
    # A server whose PATH_INFO matches nothing we can see: trust it.
    ("path-info-unrelated", "/s", "/p", "/elsewhere", None, ("/s", "/p")),
]


@pytest.mark.parametrize(
    ("script_name", "path_info", "request_uri", "mount", "expected"),
    [case[1:] for case in PATH_CASES],
    ids=[case[0] for case in PATH_CASES],
)
def test_resolve_script_path_table(
    script_name: str | None,
    path_info: str | None,
    request_uri: str | None,
    mount: str | None,
    expected: tuple[str, str],
) -> None:
    result = resolve_script_path(script_name, path_info, request_uri, mount)
    assert result == expected
    script, path = result
    # PEP 3333 / wsgiref.validate invariants.
    assert script == "" or (script.startswith("/") and not script.endswith("/"))
    assert path == "" or path.startswith("/")
    assert script or path


@pytest.mark.parametrize(
    ("uri", "path"),
    [
        ("/a/b?c=d", "/a/b"),
        ("/%41%2f?x", "/A/"),
        ("/caf%C3%A9", "/caf\xc3\xa9"),  # the decoded bytes, read as latin-1 (PEP 3333)
        ("/raw\xe9", "/raw\xe9"),  # a raw latin-1 byte stays that byte
        ("/bad%zz", "/bad%zz"),
        ("https://h:8443/x/y?z", "/x/y"),
        ("*", None),
        ("", None),
    ],
)
def test_request_path(uri: str, path: str | None) -> None:
    assert request_path(uri) == path


# -------------------------------------------------------------------------------------------- the environ


def test_nginx_stock_environ() -> None:
    environ = environ_for(NGINX_STOCK, WSGIOptions(), "RESPONDER", request_id=7)
    assert environ["SCRIPT_NAME"] == ""
    assert environ["PATH_INFO"] == "/app/caf\xc3\xa9"
    assert environ["PATH_INFO"].encode("latin-1").decode("utf-8") == "/app/café"
    assert environ["QUERY_STRING"] == "q=1"
    assert environ["REQUEST_METHOD"] == "GET"
    assert environ["SERVER_NAME"] == "localhost" and environ["SERVER_PORT"] == "8080"
    assert environ["CONTENT_LENGTH"] == "" and environ["CONTENT_TYPE"] == ""
    assert environ["wsgi.version"] == (1, 0)
    assert environ["wsgi.url_scheme"] == "http"
    assert environ["wsgi.multithread"] is True and environ["wsgi.multiprocess"] is False
    assert environ["wsgi.run_once"] is False
    assert environ["wsgi.input_terminated"] is True
    assert environ["FCGI_ROLE"] == "RESPONDER"
    assert environ["fcgiserve.request_id"] == 7
    assert "wsgi.input" not in environ and "wsgi.errors" not in environ
    for key, value in environ.items():
        if "." not in key:
            assert type(value) is str, key


def test_nginx_stock_table_matches_this_machines_fastcgi_params() -> None:
    """The NGINX_STOCK table carries exactly the params of Debian's /etc/nginx/fastcgi_params, in order."""
    source = Path("/etc/nginx/fastcgi_params")
    if not source.exists():
        pytest.skip("no /etc/nginx/fastcgi_params on this machine")
    names = re.findall(r"^\s*fastcgi_param\s+(\S+)", source.read_text(), re.MULTILINE)
    ours = [name for name, _ in NGINX_STOCK]
    assert [n for n in ours if n in names] == [n for n in names if n in ours]
    missing = set(names) - set(ours)
    assert missing <= {"HTTPS"}, missing  # HTTPS is `if_not_empty`: absent on plain http


def test_every_value_is_a_latin1_native_string() -> None:
    params = [(b"HTTP_X_RAW", bytes(range(128, 256))), (b"REQUEST_URI", b"/")]
    decoded, pairs = decode_params(encode_pairs(params))  # the protocol's ParamsComplete, then the environ
    environ = build_environ(decoded, WSGIOptions(), pairs=pairs)
    assert environ["HTTP_X_RAW"].encode("latin-1") == bytes(range(128, 256))


@pytest.mark.parametrize(
    ("pairs", "scheme"),
    [
        ([("HTTPS", "on")], "https"),
        ([("HTTPS", "ON"), ("REQUEST_SCHEME", "http")], "https"),
        ([("HTTPS", "1")], "https"),
        ([("HTTPS", "off"), ("REQUEST_SCHEME", "http")], "http"),
        ([("HTTPS", ""), ("REQUEST_SCHEME", "https")], "https"),
        ([("REQUEST_SCHEME", "HTTPS")], "https"),
        ([("REQUEST_SCHEME", "gopher")], "http"),
        ([], "http"),
    ],
)
def test_url_scheme(pairs: list[tuple[str, str]], scheme: str) -> None:
    assert environ_for(pairs, WSGIOptions())["wsgi.url_scheme"] == scheme


def test_url_scheme_default_option() -> None:
    assert build_environ({}, WSGIOptions(url_scheme_default="https"))["wsgi.url_scheme"] == "https"


@pytest.mark.parametrize(("multithread", "multiprocess"), [(True, False), (False, True), (True, True)])
def test_multithread_multiprocess_follow_the_options(multithread: bool, multiprocess: bool) -> None:
    environ = build_environ({}, WSGIOptions(multithread=multithread, multiprocess=multiprocess))
    assert environ["wsgi.multithread"] is multithread and environ["wsgi.multiprocess"] is multiprocess


def test_missing_required_variables_get_defaults() -> None:
    environ = build_environ({}, WSGIOptions())
    assert environ["REQUEST_METHOD"] == "GET"
    assert environ["SERVER_PROTOCOL"] == "HTTP/1.0"
    assert environ["SERVER_NAME"] == "localhost"
    assert environ["SERVER_PORT"] == "80"
    assert environ["QUERY_STRING"] == ""
    assert (environ["SCRIPT_NAME"], environ["PATH_INFO"]) == ("", "/")


@pytest.mark.parametrize(
    ("pairs", "name", "port"),
    [
        ([("HTTP_HOST", "example.org:8443")], "example.org", "8443"),
        ([("HTTP_HOST", "example.org"), ("HTTPS", "on")], "example.org", "443"),
        ([("HTTP_HOST", "[::1]:81")], "[::1]", "81"),
        ([("HTTP_HOST", "[::1]")], "[::1]", "80"),
        ([("HTTP_HOST", "h:"), ("SERVER_NAME", "")], "h:", "80"),
        ([("SERVER_NAME", "named"), ("SERVER_PORT", "")], "named", "80"),
    ],
)
def test_server_name_and_port_defaults_come_from_host(
    pairs: list[tuple[str, str]], name: str, port: str
) -> None:
    environ = environ_for(pairs, WSGIOptions())
    assert (environ["SERVER_NAME"], environ["SERVER_PORT"]) == (name, port)


def test_duplicate_headers_are_merged_as_http_requires() -> None:
    """S-C4: repeated HTTP_* names are one comma list; cookies join with "; "; CGI variables: last wins."""
    pairs = [
        ("HTTP_ACCEPT", "text/html"),
        ("HTTP_COOKIE", "a=1"),
        ("HTTP_X_FORWARDED_FOR", "10.0.0.1"),
        ("HTTP_ACCEPT", "application/json"),
        ("HTTP_COOKIE", "b=2"),
        ("HTTP_X_FORWARDED_FOR", "10.0.0.2"),
        ("HTTP_X_FORWARDED_FOR", ""),
        ("HTTP_X_EMPTY_FIRST", ""),
        ("HTTP_X_EMPTY_FIRST", "v"),
        ("HTTP_HOST", "configured.example"),
        ("HTTP_HOST", "client-sent.example"),
        ("SERVER_NAME", "first"),
        ("SERVER_NAME", "second"),
    ]
    environ = environ_for(pairs, WSGIOptions())
    assert environ["HTTP_ACCEPT"] == "text/html, application/json"
    assert environ["HTTP_COOKIE"] == "a=1; b=2"
    assert environ["HTTP_X_FORWARDED_FOR"] == "10.0.0.1, 10.0.0.2"
    assert environ["HTTP_X_EMPTY_FIRST"] == "v"
    assert environ["HTTP_HOST"] == "configured.example"
    assert environ["SERVER_NAME"] == "second"


def test_http_prefixed_body_headers_become_cgi_variables() -> None:
    pairs = [("HTTP_CONTENT_TYPE", "text/plain"), ("HTTP_CONTENT_LENGTH", "5"), ("CONTENT_TYPE", "a/b")]
    environ = environ_for(pairs, WSGIOptions())
    assert "HTTP_CONTENT_TYPE" not in environ and "HTTP_CONTENT_LENGTH" not in environ
    assert environ["CONTENT_TYPE"] == "a/b"  # the CGI variable wins
    assert environ["CONTENT_LENGTH"] == "5"


def test_authorizer_role_has_no_content_length_and_routes_on_the_request_uri() -> None:
    """S-G2: the authorizer gets no body and no CONTENT_LENGTH; PATH_INFO still names what is authorized."""
    pairs = [("REQUEST_URI", "/private/doc?x"), ("CONTENT_LENGTH", "12"), ("REQUEST_METHOD", "POST")]
    environ = environ_for(pairs, WSGIOptions(), "AUTHORIZER")
    assert environ["FCGI_ROLE"] == "AUTHORIZER"
    assert "CONTENT_LENGTH" not in environ
    assert (environ["SCRIPT_NAME"], environ["PATH_INFO"]) == ("", "/private/doc")


def test_filter_role_passes_the_data_variables() -> None:
    """S-G3: FCGI_DATA_LAST_MOD and FCGI_DATA_LENGTH reach the application."""
    pairs = [("FCGI_DATA_LAST_MOD", "1700000000"), ("FCGI_DATA_LENGTH", "42"), ("REQUEST_URI", "/f.html")]
    environ = environ_for(pairs, WSGIOptions(), "FILTER")
    assert environ["FCGI_ROLE"] == "FILTER"
    assert environ["FCGI_DATA_LAST_MOD"] == "1700000000"
    assert body_length(environ, "FCGI_DATA_LENGTH") == 42


def test_unknown_role_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown FastCGI role"):
        build_environ({}, WSGIOptions(), "1")


def test_mount_option_is_applied() -> None:
    environ = environ_for(NGINX_STOCK, WSGIOptions(script_name="/app/"))
    assert (environ["SCRIPT_NAME"], environ["PATH_INFO"]) == ("/app", "/caf\xc3\xa9")


@pytest.mark.parametrize(
    ("value", "length"),
    [
        ("12", 12),
        (" 12 ", 12),
        ("0", 0),
        ("", None),
        ("-1", None),
        ("1e3", None),
        ("\u0661", None),
        (None, None),
    ],
)
def test_body_length(value: str | None, length: int | None) -> None:
    environ = {} if value is None else {"CONTENT_LENGTH": value}
    assert body_length(environ) == length


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"script_name": "blog"}, "script_name"),
        ({"spool_threshold": -1}, "spool_threshold"),
        ({"url_scheme_default": "ftp"}, "url_scheme_default"),
    ],
)
def test_options_are_validated(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        WSGIOptions(**kwargs)  # type: ignore[arg-type]


def test_options_normalise_script_name() -> None:
    assert WSGIOptions(script_name="/blog/").script_name == "/blog"
    assert WSGIOptions(script_name="/").script_name == ""
    assert WSGIOptions().script_name is None


# -------------------------------------------------------------------- property: consistent servers round-trip

SEGMENT = st.text(alphabet="abz09-._~%?#;é\xff/ ", min_size=1, max_size=8).filter(lambda s: "/" not in s)
PATHS = st.lists(SEGMENT, min_size=1, max_size=5).map(lambda parts: "/" + "/".join(parts))


def as_request_uri(path: str, query: str) -> str:
    """What a client sends for a decoded latin-1 path: percent-encoded bytes, then the query."""
    return quote(path.encode("latin-1"), safe="/") + (f"?{query}" if query else "")


@settings(max_examples=300, deadline=None)
@given(path=PATHS, split=st.integers(0, 10), query=st.sampled_from(["", "a=1", "x=/y?z"]))
def test_consistent_split_is_kept_and_nginx_stock_is_mounted_at_root(
    path: str, split: int, query: str
) -> None:
    """Any path: a consistent split is kept; nginx stock (SCRIPT_NAME = the path) gets ("", path)."""
    uri = as_request_uri(path, query)
    assert request_path(uri) == path
    boundaries = [i for i, char in enumerate(path) if char == "/"]
    cut = boundaries[split % len(boundaries)]
    script, path_info = path[:cut], path[cut:]
    assert resolve_script_path(script, path_info, uri) == (script, path_info)
    assert resolve_script_path(path, None, uri) == ("", path)
    assert resolve_script_path("", path, uri) == ("", path)
    if script:
        assert resolve_script_path(None, None, uri, script) == (script, path_info)
