"""The ``fcgiserve`` command: parse the command line (flags and runfcgi key=value words), set up logging,
hand over to ``server.Server``. No server logic lives here.
"""

from __future__ import annotations

import logging
import platform
import sys
from collections.abc import Sequence

from fcgiserve import __version__
from fcgiserve.cli_args import main_parse
from fcgiserve.config import ConfigError
from fcgiserve.logs import setup_logging
from fcgiserve.server import Server

__all__ = ["main"]

PROG = "fcgiserve"


def main(argv: Sequence[str] | None = None) -> int:
    """Run the server in the foreground until it is stopped; return the process exit status."""
    args = list(sys.argv[1:] if argv is None else argv)
    version = f"{PROG} {__version__} (Python {platform.python_version()})"
    config = main_parse(args, PROG, version)  # bad options: one line on stderr, exit 2
    if config.app is None:
        print(
            f"{PROG}: error: the application is required: fcgiserve MODULE[:CALLABLE] [options]",
            file=sys.stderr,
        )
        return 2
    setup_logging(config.log_level, config.log_file, config.access_log)
    try:
        server = Server(config=config)
    except ConfigError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    # A reload of the threaded pool re-executes exactly the command that started us (python -m fcgiserve,
    # the fcgiserve script, or manage.py runfcgi), from the directory it was started in.
    reexec = list(sys.orig_argv[1:]) if argv is None else [*_python_m_prefix(), *args]
    logging.getLogger("fcgiserve").debug("configuration: %s", config)
    return server.run(install_signals=True, reexec_argv=reexec)


def _python_m_prefix() -> list[str]:
    return ["-m", "fcgiserve"]


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
