"""The command line: ``--flags``, the positional app and the old ``manage.py runfcgi`` key=value words,
parsed into a ``Config``.

Generated from ``config.OPTIONS`` (flags, help, defaults, runfcgi aliases), so an option declared there is on
the command line with no code here. Used by ``cli.py`` and the Django ``runfcgi`` command; imports nothing of
ours but ``config`` (tests/test_layers.py).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import NoReturn

from fcgiserve.config import (
    BOOL_WORDS,
    BY_NAME,
    OPTIONS,
    RUNFCGI_ALIASES,
    RUNFCGI_SPECIAL,
    Config,
    ConfigError,
    coerce_option,
)

__all__ = ["build_argparser", "main_parse", "parse_args", "parse_known"]


# --- command line ----------------------------------------------------------------------------------------


class _OneLineParser(argparse.ArgumentParser):
    """argparse that raises ConfigError instead of printing usage and exiting: errors stay one line."""

    def error(self, message: str) -> NoReturn:
        raise ConfigError(message)


def build_argparser(prog: str = "fcgiserve") -> argparse.ArgumentParser:
    """The command line generated from OPTIONS. Unset options stay absent from the namespace (SUPPRESS),
    which is how ``Config.explicit`` knows what the user gave. ``error()`` raises ConfigError."""
    parser = _OneLineParser(
        prog=prog,
        description="Serve a WSGI application over FastCGI. The old 'manage.py runfcgi' key=value words "
        "(method=prefork port=8080 ...) are accepted too, mixed with the options below.",
        argument_default=argparse.SUPPRESS,
        allow_abbrev=False,  # --max-b could mean a different option once options are added
    )
    groups: dict[str, argparse._ArgumentGroup] = {}
    for opt in OPTIONS:
        group = groups.get(opt.group) or groups.setdefault(opt.group, parser.add_argument_group(opt.group))
        aliases = f" [runfcgi: {', '.join(a + '=' for a in opt.runfcgi)}]" if opt.runfcgi else ""
        text = f"{opt.help} (default: {opt.describe_default()}){aliases}".replace("%", "%%")
        if not opt.flags:
            group.add_argument(opt.name, nargs="?", metavar=opt.metavar, help=text)
        elif opt.kind == "flag":
            group.add_argument(*opt.flags, dest=opt.name, action=argparse.BooleanOptionalAction, help=text)
        else:
            action = "append" if opt.kind == "list" else "store"
            group.add_argument(*opt.flags, dest=opt.name, metavar=opt.metavar, action=action, help=text)
    return parser


def _split_runfcgi(
    argv: Sequence[str], parser: argparse.ArgumentParser
) -> tuple[list[str], list[tuple[str, str]]]:
    """Separate ``key=value`` words from the argparse arguments; a flag's value ("--log-file a=b") stays."""
    rest: list[str] = []
    words: list[tuple[str, str]] = []
    takes_value = {flag for a in parser._actions if a.nargs != 0 for flag in a.option_strings}
    for index, arg in enumerate(argv):
        if arg == "--":
            rest.extend(argv[index:])
            break
        key, eq, value = arg.partition("=")
        if eq and not arg.startswith("-") and not (rest and rest[-1] in takes_value):
            words.append((key.strip().lower(), value))
        else:
            rest.append(arg)
    return rest, words


def _runfcgi_values(words: Sequence[tuple[str, str]]) -> list[tuple[str, str, object]]:
    """(option name, how it was written, value) for each runfcgi word."""
    out: list[tuple[str, str, object]] = []
    for key, value in words:
        if key == "daemonize":
            if value.strip().lower() not in BOOL_WORDS:
                raise ConfigError(f"daemonize= must be true or false (got {value!r})")
            if BOOL_WORDS[value.strip().lower()]:
                raise ConfigError(
                    "daemonize=true is not supported: fcgiserve never daemonizes; run it in the foreground "
                    "under a supervisor (systemd, runit, daemontools) or drop daemonize="
                )
            continue
        if key not in RUNFCGI_ALIASES:
            known = ", ".join(sorted([*RUNFCGI_ALIASES, *RUNFCGI_SPECIAL]))
            raise ConfigError(f"unknown runfcgi option {key}= (known: {known})")
        out.append((RUNFCGI_ALIASES[key].name, f"{key}=", value))
    return out


def parse_known(
    argv: Sequence[str] | None = None, parser: argparse.ArgumentParser | None = None
) -> tuple[Config, argparse.Namespace]:
    """Parse --flags, the positional app and runfcgi words into a Config.

    ``parser`` may be ``build_argparser()`` with extra arguments added by the caller; the namespace is
    returned so the caller can read them. Raises ConfigError (one line) for every kind of mistake.
    """
    parser = parser or build_argparser()
    rest, words = _split_runfcgi(sys.argv[1:] if argv is None else argv, parser)
    namespace = parser.parse_args(rest)
    given: dict[str, tuple[str, object]] = {}
    sources = [(o.name, o.display, getattr(namespace, o.name)) for o in OPTIONS if hasattr(namespace, o.name)]
    for name, source, raw in sources + _runfcgi_values(words):
        value = coerce_option(BY_NAME[name], raw)
        if name in given and given[name][1] != value:
            first = given[name][0]
            raise ConfigError(f"{first} and {source} both set {BY_NAME[name].display} to different values")
        given.setdefault(name, (source, value))
    return Config.from_mapping({name: value for name, (_, value) in given.items()}), namespace


def parse_args(argv: Sequence[str] | None = None, parser: argparse.ArgumentParser | None = None) -> Config:
    """``parse_known()`` without the namespace. Raises ConfigError."""
    return parse_known(argv, parser)[0]


def main_parse(
    argv: Sequence[str] | None = None, prog: str = "fcgiserve", version: str | None = None
) -> Config:
    """``parse_args()`` for a ``main()``: a mistake prints ``prog: error: ...`` (one line) and exits 2.
    With ``version``, ``--version`` prints it and exits 0."""
    parser = build_argparser(prog)
    if version is not None:
        parser.add_argument("--version", action="version", version=version, help="Print the version, exit.")
    try:
        return parse_args(argv, parser)
    except ConfigError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
