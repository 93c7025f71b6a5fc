"""``python -m fcgiserve``: the same entry point as the ``fcgiserve`` script."""

from fcgiserve.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
