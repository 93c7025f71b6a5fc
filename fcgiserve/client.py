"""A blocking FastCGI client on the sans-IO core: what people use ``cgi-fcgi`` for, and what our tests use.

    python -m fcgiserve.client 127.0.0.1:8080 /path?query       # print the response
    python -m fcgiserve.client /run/site.sock / --status        # only the status; exit 1 on >= 400
    python -m fcgiserve.client 127.0.0.1:8080 /upload -X POST --data @file.bin -p HTTP_HOST=example.org
    python -m fcgiserve.client 127.0.0.1:8080 --get-values      # FCGI_MAX_CONNS, FCGI_MAX_REQS, ...

Exit status: 0 success, 1 the application answered with an error status (>= 400, with --status) or a non-zero
appStatus, 2 usage error, 3 connection or protocol failure.
"""

from __future__ import annotations

import argparse
import socket
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from fcgiserve.protocol import (
    ClientConnection,
    EndRequest,
    GetValuesResult,
    ProtocolStatus,
    RemoteProtocolError,
    Role,
    Stderr,
    Stdout,
)

__all__ = ["FastCGIError", "Response", "fcgi_get_values", "fcgi_request", "main", "parse_address"]

Address = tuple[str, int] | str

DEFAULT_NAMES = ("FCGI_MAX_CONNS", "FCGI_MAX_REQS", "FCGI_MPXS_CONNS")


class FastCGIError(Exception):
    """The connection failed or the application broke the protocol."""


@dataclass
class Response:
    """One FastCGI response, the CGI header block parsed off STDOUT."""

    status: int
    reason: str
    headers: list[tuple[str, str]]
    body: bytes
    stderr: bytes = b""
    app_status: int = 0
    protocol_status: ProtocolStatus = ProtocolStatus.REQUEST_COMPLETE
    raw: bytes = field(default=b"", repr=False)

    def header(self, name: str) -> str | None:
        lowered = name.lower()
        return next((v for k, v in self.headers if k.lower() == lowered), None)


def parse_address(text: str) -> Address:
    """``host:port``, ``[v6]:port``, or a unix socket path (anything containing a slash)."""
    if "/" in text:
        return text
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"{text!r} is neither HOST:PORT nor a unix socket path")
    return host.strip("[]") or "127.0.0.1", int(port)


def _connect(address: Address, timeout: float) -> socket.socket:
    try:
        if isinstance(address, str):
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(timeout)
            sock.connect(address)
            return sock
        sock = socket.create_connection(address, timeout=timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock
    except OSError as exc:
        raise FastCGIError(f"cannot connect to {address}: {exc}") from exc


def default_params(path: str = "/", method: str = "GET", body_length: int = 0) -> dict[str, str]:
    """The CGI variables a web server would send for ``method path`` (nginx's stock set, trimmed)."""
    parts = urlsplit(path)
    params = {
        "GATEWAY_INTERFACE": "CGI/1.1",
        "SERVER_SOFTWARE": "fcgiserve-client",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "SERVER_NAME": "localhost",
        "SERVER_PORT": "80",
        "REMOTE_ADDR": "127.0.0.1",
        "REMOTE_PORT": "0",
        "REQUEST_METHOD": method,
        "REQUEST_URI": path,
        "DOCUMENT_URI": parts.path or "/",
        "SCRIPT_NAME": parts.path or "/",
        "QUERY_STRING": parts.query,
        "HTTP_HOST": "localhost",
    }
    if body_length or method in ("POST", "PUT", "PATCH"):
        params["CONTENT_LENGTH"] = str(body_length)
    return params


def fcgi_request(
    address: Address,
    params: Mapping[str, str] | Iterable[tuple[str, str]] | None = None,
    body: bytes = b"",
    *,
    path: str = "/",
    method: str = "GET",
    role: Role = Role.RESPONDER,
    data: bytes | None = None,
    timeout: float = 30.0,
) -> Response:
    """Send one request on a new connection and return the whole response. Raises FastCGIError.

    ``params`` are added to (and override) ``default_params(path, method, len(body))``.
    """
    merged = default_params(path, method, len(body))
    extra = params.items() if isinstance(params, Mapping) else (params or ())
    merged.update(extra)
    pairs = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in merged.items()]
    client = ClientConnection()
    out = client.begin_request(1, role) + client.send_params(1, pairs)
    if body:
        out += client.send_stdin(1, body)
    out += client.send_stdin(1, b"")
    if data is not None:
        if data:
            out += client.send_data(1, data)
        out += client.send_data(1, b"")
    stdout, stderr = bytearray(), bytearray()
    with _connect(address, timeout) as sock:
        try:
            sock.sendall(out)
            while True:
                chunk = sock.recv(256 * 1024)
                for event in client.receive_data(chunk):
                    if isinstance(event, Stdout):
                        stdout += event.data
                    elif isinstance(event, Stderr):
                        stderr += event.data
                    elif isinstance(event, EndRequest):
                        return _parse_response(bytes(stdout), bytes(stderr), event)
                if not chunk:
                    raise FastCGIError("the server closed the connection before END_REQUEST")
        except OSError as exc:
            raise FastCGIError(f"connection to {address} failed: {exc}") from exc
        except RemoteProtocolError as exc:
            raise FastCGIError(f"protocol error from {address}: {exc}") from exc


def fcgi_get_values(
    address: Address, names: Sequence[str] = DEFAULT_NAMES, timeout: float = 10.0
) -> dict[str, str]:
    """Ask the server FCGI_GET_VALUES (spec 4.1) and return what it answered."""
    client = ClientConnection()
    with _connect(address, timeout) as sock:
        try:
            sock.sendall(client.get_values(names))
            while True:
                chunk = sock.recv(65536)
                for event in client.receive_data(chunk):
                    if isinstance(event, GetValuesResult):
                        return dict(event.values)
                if not chunk:
                    raise FastCGIError("the server closed the connection without GET_VALUES_RESULT")
        except OSError as exc:
            raise FastCGIError(f"connection to {address} failed: {exc}") from exc
        except RemoteProtocolError as exc:
            raise FastCGIError(f"protocol error from {address}: {exc}") from exc


def _parse_response(stdout: bytes, stderr: bytes, end: EndRequest) -> Response:
    head, sep, body = stdout.partition(b"\r\n\r\n")
    if not sep:
        head, sep, body = stdout.partition(b"\n\n")
    status, reason, headers = 200, "OK", []
    if sep:
        for line in head.decode("latin-1").splitlines():
            name, colon, value = line.partition(":")
            if not colon:
                continue
            if name.strip().lower() == "status":
                code, _, reason = value.strip().partition(" ")
                status = int(code) if code.isdigit() else 500
            else:
                headers.append((name.strip(), value.strip()))
        has_status = any(line.lower().startswith(b"status:") for line in head.splitlines())
        if not has_status and any(name.lower() == "location" for name, _ in headers):
            status, reason = 302, "Found"  # CGI: a Location header alone means a redirect
    else:
        body = stdout
    return Response(status, reason, headers, body, stderr, end.app_status, end.protocol_status, stdout)


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fcgiserve-client", description="Send one request to a FastCGI server and print the answer."
    )
    parser.add_argument("address", help="HOST:PORT, [V6]:PORT or a unix socket path")
    parser.add_argument("path", nargs="?", default="/", help="request path and query (default /)")
    parser.add_argument(
        "-X", "--method", default=None, help="request method (default GET, or POST with --data)"
    )
    parser.add_argument(
        "-p",
        "--param",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="add or override a CGI parameter (repeatable)",
    )
    parser.add_argument(
        "-H",
        "--header",
        action="append",
        default=[],
        metavar="NAME: VALUE",
        help="add an HTTP header, sent as HTTP_NAME (repeatable)",
    )
    parser.add_argument(
        "-d",
        "--data",
        metavar="@FILE|-|TEXT",
        help="request body: @FILE reads a file, - standard input, else the text",
    )
    parser.add_argument("--status", action="store_true", help="print only the status; exit 1 on >= 400")
    parser.add_argument("-i", "--include", action="store_true", help="print the response headers too")
    parser.add_argument("--get-values", action="store_true", help="print the FCGI_GET_VALUES answer and exit")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds (default 30)")
    return parser


def _read_body(spec: str | None) -> bytes:
    if spec is None:
        return b""
    if spec == "-":
        return sys.stdin.buffer.read()
    if spec.startswith("@"):
        with open(spec[1:], "rb") as f:
            return f.read()
    return spec.encode()


def main(argv: Sequence[str] | None = None) -> int:
    args = _build_parser().parse_args(argv)
    try:
        address = parse_address(args.address)
        params: dict[str, str] = {}
        for item in args.param:
            name, eq, value = item.partition("=")
            if not eq:
                raise ValueError(f"--param {item!r} is not NAME=VALUE")
            params[name] = value
        for item in args.header:
            name, colon, value = item.partition(":")
            if not colon:
                raise ValueError(f"--header {item!r} is not 'Name: value'")
            params["HTTP_" + name.strip().upper().replace("-", "_")] = value.strip()
        body = _read_body(args.data)
    except (ValueError, OSError) as exc:
        print(f"fcgiserve-client: error: {exc}", file=sys.stderr)
        return 2
    try:
        if args.get_values:
            for name, value in fcgi_get_values(address, timeout=args.timeout).items():
                print(f"{name}={value}")
            return 0
        method = args.method or ("POST" if args.data is not None else "GET")
        response = fcgi_request(address, params, body, path=args.path, method=method, timeout=args.timeout)
    except FastCGIError as exc:
        print(f"fcgiserve-client: {exc}", file=sys.stderr)
        return 3
    if response.stderr:
        sys.stderr.buffer.write(response.stderr)
    if args.status:
        print(f"{response.status} {response.reason}")
    else:
        if args.include:
            lines = [f"Status: {response.status} {response.reason}"] + [
                f"{k}: {v}" for k, v in response.headers
            ]
            sys.stdout.write("\r\n".join(lines) + "\r\n\r\n")
            sys.stdout.flush()
        sys.stdout.buffer.write(response.body)
        sys.stdout.flush()
    failed = response.app_status != 0 or response.protocol_status != ProtocolStatus.REQUEST_COMPLETE
    return 1 if failed or (args.status and response.status >= 400) else 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
