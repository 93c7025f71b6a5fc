"""``manage.py runfcgi``: the command Django removed in 1.9, back with its key=value words and their meanings.

The words and flags are those of the ``fcgiserve`` command (``config.OPTIONS`` is the single table): this
module only adds Django's own options to the parser, makes ``settings.WSGI_APPLICATION`` the default
application (as runserver serves it, see ``fcgiserve.contrib.django.wsgi``) and hands over to
``server.Server`` exactly as ``cli.main`` does.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from django.core.management.base import (  # type: ignore[import-untyped]  # Django ships no type hints
    BaseCommand,
    CommandParser,
    handle_default_options,
)

from fcgiserve.cli_args import build_argparser, parse_known
from fcgiserve.config import OPTIONS, Config, ConfigError
from fcgiserve.logs import setup_logging
from fcgiserve.server import Server

__all__ = ["DJANGO_APP", "Command"]

# settings.WSGI_APPLICATION (else Django's handler), as an apploader spec: the server calls it where it loads
# any application, after the pidfile check and --chdir, and in each prefork child unless --preload.
DJANGO_APP = "fcgiserve.contrib.django.wsgi:internal_wsgi_application()"

_HELP = (
    "Serve this Django project over FastCGI in the foreground. Accepts the old runfcgi key=value words "
    "(method=threaded host=127.0.0.1 port=8080 pidfile=... minspare=... daemonize=false ...) mixed with "
    "the fcgiserve options below. The application defaults to settings.WSGI_APPLICATION, as runserver "
    "serves it (Django's WSGI handler when that is not set)."
)


class Command(BaseCommand):  # type: ignore[misc]
    help = _HELP
    # The old runfcgi ran no checks either; a server must not refuse to start over a deployment warning.
    requires_system_checks: list[str] = []

    def create_parser(self, prog_name: str, subcommand: str, **kwargs: Any) -> CommandParser:
        # SUPPRESS keeps unset options out of the namespace: that is how Config.explicit learns what the
        # user gave. No abbreviations, as in the fcgiserve command.
        kwargs.setdefault("argument_default", argparse.SUPPRESS)
        kwargs.setdefault("allow_abbrev", False)
        return super().create_parser(prog_name, subcommand, **kwargs)

    def add_arguments(self, parser: CommandParser) -> None:
        """Every fcgiserve option, taken from the generated ``fcgiserve`` parser (same flags, same help)."""
        source = build_argparser()
        titles = {opt.group for opt in OPTIONS}
        for group in source._action_groups:
            if group.title not in titles:
                continue
            target = parser.add_argument_group(group.title)
            for action in group._group_actions:
                target._add_action(action)
        parser.epilog = "runfcgi words: " + " ".join(
            sorted({f"{alias}=" for opt in OPTIONS for alias in opt.runfcgi} | {"daemonize=false"})
        )

    def run_from_argv(self, argv: list[str]) -> None:
        """Parse with ``cli_args.parse_known`` (which understands key=value words), then serve."""
        self._called_from_command_line = True
        parser = self.create_parser(argv[0], argv[1])
        try:
            config, namespace = parse_known(argv[2:], parser)
        except ConfigError as exc:
            self.stderr.write(f"{parser.prog}: error: {exc}")
            sys.exit(2)
        # --settings / --pythonpath, as every Django command does (unset ones are absent: SUPPRESS).
        given = {name: getattr(namespace, name, None) for name in ("settings", "pythonpath")}
        handle_default_options(argparse.Namespace(**given))
        # A reload of the threaded pool re-executes exactly this command line (same pid, same sockets).
        status = self.serve(config, reexec_argv=list(sys.orig_argv[1:]))
        if status:
            sys.exit(status)

    def execute(self, *args: Any, **options: Any) -> Any:
        # SUPPRESS (above) also drops the defaults of Django's own flags, which execute() reads.
        for name in ("force_color", "no_color", "traceback"):
            options.setdefault(name, False)
        return super().execute(*args, **options)

    def handle(self, *args: Any, **options: Any) -> None:
        """``call_command("runfcgi", port=8080, method="prefork")``: option names as keyword arguments."""
        known = {opt.name: options[opt.name] for opt in OPTIONS if opt.name in options}
        status = self.serve(Config.from_mapping(known), reexec_argv=None)
        if status:
            sys.exit(status)

    def serve(self, config: Config, reexec_argv: list[str] | None) -> int:
        setup_logging(config.log_level, config.log_file, config.access_log)
        if config.app is None:
            # A spec, not the application itself: the server loads it after the pidfile check and --chdir,
            # and prefork without --preload loads it in each child, as for any other application.
            config = config.replace(app=DJANGO_APP)
        return Server(config=config).run(install_signals=True, reexec_argv=reexec_argv)
