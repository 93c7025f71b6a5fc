"""The import-direction rules of ARCHITECTURE.md, checked by walking the AST of every module.

A violation names the module, the line and the rule it breaks, so the fix is obvious.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "fcgiserve"

# Stdlib modules that perform I/O or touch the process: the sans-IO core may import none of them.
IO_MODULES = {
    "socket",
    "os",
    "time",
    "threading",
    "select",
    "selectors",
    "logging",
    "io",
    "signal",
    "subprocess",
    "asyncio",
    "tempfile",
    "mmap",
    "sys",
    "shutil",
    "pathlib",
    "multiprocessing",
    "ctypes",
}
# What protocol/ may use: pure computation only.
PROTOCOL_STDLIB = {"struct", "enum", "dataclasses", "typing", "collections", "__future__", "itertools", "abc"}

# The modules that wire the parts together (server.py holds the wiring so that the package root can re-export
# serve() without importing cli; see docs/design.md).
WIRING = {"server", "cli", "contrib", "compat", "__main__", ""}

# fcgiserve module (dotted, relative to the package) -> fcgiserve modules it must not import.
_WSGI = {"wsgi", "wsgi_environ", "wsgi_input"}
FORBIDDEN: dict[str, set[str]] = {
    "protocol": {"*"},  # only itself
    "config": {"*"},
    # The command line, generated from config's table: config only.
    "cli_args": {
        "protocol",
        "handler",
        "pools",
        "listeners",
        "cli",
        "client",
        "contrib",
        "compat",
        "server",
        "operations",
        "status_sources",
        "scgi_handler",
        *_WSGI,
    },
    "wsgi_environ": {"*"},
    "wsgi_input": {"*"},
    "wsgi": {"protocol", "handler", "pools", "listeners", "cli", "client", "contrib", "compat", "server"},
    "handler": {"pools", "cli", "listeners", "contrib", "compat", "server"},
    "handler_request": {"pools", "cli", "listeners", "contrib", "compat", "server", "handler"},
    "pools": {"protocol", "handler", "cli", "client", "contrib", "compat", "server", *_WSGI},
    "listeners": {"protocol", "handler", "pools", "cli", "server", *_WSGI},
    "signals": {"protocol", "handler", "pools", "cli", "server", *_WSGI},
    "pidfile": {"protocol", "handler", "pools", "cli", "server", *_WSGI},
    "apploader": {"protocol", "handler", "pools", "cli", "server", *_WSGI},
    "logs": {"protocol", "handler", "pools", "cli", "server", *_WSGI},
    "client": {"handler", "pools", "cli", "server", *_WSGI},
    # Operations (docs/operations.md): systemd notification and status rendering are stdlib only; the
    # per-request features know the status renderer; the status sources read the pools, never a request.
    "sdnotify": {"*"},
    "readyfd": {"*"},  # s6's readiness fd: stdlib only, like sdnotify
    "status": {"*"},
    "operations": {"protocol", "handler", "pools", "listeners", "cli", "client", "server", *_WSGI},
    "status_sources": {"protocol", "handler", "cli", "client", "server", *_WSGI},
    # SCGI: a sans-IO parser like protocol/, and a connection class beside handler.py (same options).
    "scgi": {"*"},
    "roles": {"*"},  # a WSGI-level API: stdlib only
    "scgi_handler": {"protocol", "pools", "listeners", "cli", "client", "server"},
    # Socket-level limits and timeouts used by the handlers: stdlib only.
    "limits": {"*"},
    "memory": {"*"},  # process memory upkeep used by the pools: stdlib only
}


def _modules() -> Iterator[tuple[str, Path]]:
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE).with_suffix("")
        parts = [p for p in rel.parts if p != "__init__"]
        yield ".".join(parts), path


def _imports(path: Path, dotted: str) -> Iterator[tuple[str, int]]:
    tree = ast.parse(path.read_text(), str(path))
    package_parts = ["fcgiserve", *dotted.split(".")] if dotted else ["fcgiserve"]
    if path.name != "__init__.py":
        package_parts = package_parts[:-1]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package_parts[: len(package_parts) - node.level + 1]
                name = ".".join([*base, node.module] if node.module else base)
            else:
                name = node.module or ""
            yield name, node.lineno
            # "from fcgiserve import handler" imports the submodule handler.
            if name == "fcgiserve":
                for alias in node.names:
                    yield f"fcgiserve.{alias.name}", node.lineno


def _layer(dotted: str) -> str:
    return dotted.split(".", 1)[0]


def _violations() -> list[str]:
    found: list[str] = []
    for dotted, path in _modules():
        layer = _layer(dotted)
        for name, line in _imports(path, dotted):
            top = name.split(".", 1)[0]
            where = f"fcgiserve/{path.relative_to(PACKAGE)}:{line}"
            if layer == "protocol" and top != "fcgiserve":
                if top in IO_MODULES or top not in PROTOCOL_STDLIB:
                    found.append(f"{where}: protocol/ is sans-IO and may not import {name!r}")
                continue
            if top != "fcgiserve":
                continue
            parts = name.split(".")
            target = parts[1] if len(parts) > 1 else ""
            if target == "cli" and layer not in {"__main__", "contrib", "compat"}:
                found.append(f"{where}: nothing imports cli (imports {name!r})")
            rule = FORBIDDEN.get(layer, set())
            if target == layer or not target or (layer == "wsgi" and target in _WSGI):
                continue
            if "*" in rule or target in rule:
                found.append(f"{where}: layer {layer!r} may not import {name!r} (ARCHITECTURE.md)")
        if layer not in WIRING and {"pools", "handler"} <= _imported_layers(path, dotted):
            found.append(
                f"fcgiserve/{path.relative_to(PACKAGE)}: only the wiring imports pools and handler together"
            )
    return sorted(set(found))


def _imported_layers(path: Path, dotted: str) -> set[str]:
    layers = set()
    for name, _ in _imports(path, dotted):
        parts = name.split(".")
        if parts[0] == "fcgiserve" and len(parts) > 1:
            layers.add(parts[1])
    return layers


def test_package_is_not_empty() -> None:
    modules = dict(_modules())
    assert "protocol" in modules and "wsgi" in modules, sorted(modules)


def test_import_directions_follow_architecture() -> None:
    assert _violations() == []


@pytest.mark.parametrize(
    ("source", "module", "expected"),
    [
        ("import socket\n", "protocol/records.py", "protocol/ is sans-IO"),
        ("from time import monotonic\n", "protocol/state.py", "protocol/ is sans-IO"),
        ("from fcgiserve import handler\n", "pools/threaded.py", "may not import"),
        ("from ..protocol import records\n", "pools/threaded.py", "may not import"),
        ("from fcgiserve.wsgi import x\n", "config.py", "may not import"),
        ("from fcgiserve.cli import main\n", "handler.py", "nothing imports cli"),
    ],
)
def test_checker_catches_violations(tmp_path: Path, source: str, module: str, expected: str) -> None:
    """The checker itself must fail on known-bad imports, or the test above proves nothing."""
    global PACKAGE
    fake = tmp_path / "fcgiserve"
    target = fake / module
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(source)
    saved, PACKAGE = PACKAGE, fake
    try:
        problems = _violations()
    finally:
        PACKAGE = saved
    assert any(expected in p for p in problems), problems


def test_every_module_has_a_layer_rule() -> None:
    """A new module must be placed in the rules above, or it would escape the check."""
    layers = {_layer(dotted) for dotted, _ in _modules()}
    unplaced = layers - FORBIDDEN.keys() - WIRING - {"contrib", "compat"}
    assert unplaced == set(), f"add a rule for: {sorted(unplaced)}"
