"""Generate docs/options.md from fcgiserve.config.OPTIONS, the one place options are declared.

python docs/gen_options.py            # rewrite docs/options.md
python docs/gen_options.py --check    # exit 1 if docs/options.md is stale (tests/config does this too)
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUTPUT = ROOT / "docs" / "options.md"
sys.path.insert(0, str(ROOT))

from fcgiserve.config import OPTIONS, Option  # noqa: E402 (needs the sys.path entry above)

INTRO = """\
# Options

<!-- Generated from fcgiserve/config.py by `python docs/gen_options.py`; do not edit by hand. -->

Every option is a command-line flag of `fcgiserve`. Options with a runfcgi name can also be given in the
old `manage.py runfcgi` style, as `key=value` words mixed freely with the flags:

    fcgiserve mysite.wsgi method=prefork port=8080 maxspare=10 --log-level debug

Booleans accept true/false, yes/no, on/off and 1/0; sizes accept K, M and G suffixes (powers of 1024);
modes and masks are octal. `daemonize=false` is accepted and ignored; `daemonize=true` is an error:
fcgiserve always runs in the foreground, to be started by a supervisor (systemd, runit, s6, daemontools).
A mistake is reported on one line naming the option, and the exit status is 2.

Options that bound each other fit together: the defaults you did not set give way to the values you did,
flags and runfcgi words alike. The pool sizes are ordered `--minspare` <= `--maxspare` <= `--maxchildren`:
`--maxchildren 2` alone runs with `--maxspare 2`, `--maxspare 1` alone with `--minspare 1`, and
`--minspare 10` alone with `--maxspare 10` (and an unset `--maxchildren` of at least 10). One INFO line at
start-up names the defaults that moved and the sizes in effect. Only values you gave that contradict each
other are an error (`--maxchildren 2 --maxspare 5`). An option that needs another is refused without it,
whether the other was left at its default or not: `--timeout`, `--threads` and `--preload` need
`--method prefork`, `--maxrequests-jitter` needs `--maxrequests`, `--socket-mode` needs `--socket`
(fcgiserve does not pick a process model, a recycling count or a socket for you).
"""


def _title(opt: Option) -> str:
    if not opt.flags:
        return f"`{opt.metavar}` (positional)"
    if opt.kind == "flag":
        return f"`{opt.flags[0]}` / `--no-{opt.flags[0][2:]}`"
    return f"`{opt.flags[0]} {opt.metavar}`"


def options_markdown() -> str:
    lines = [INTRO.rstrip("\n")]
    for group in dict.fromkeys(o.group for o in OPTIONS):
        lines += ["", f"## {group}"]
        for opt in (o for o in OPTIONS if o.group == group):
            facts = [f"default: {opt.describe_default()}"]
            if opt.runfcgi:
                facts.append("runfcgi: " + ", ".join(f"`{alias}=`" for alias in opt.runfcgi))
            lines += ["", f"### {_title(opt)}", "", f"*{'; '.join(facts)}*", "", opt.help]
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    text = options_markdown()
    if argv == ["--check"]:
        current = OUTPUT.read_text(encoding="utf-8") if OUTPUT.exists() else ""
        if current != text:
            print(f"{OUTPUT} is stale: run python docs/gen_options.py", file=sys.stderr)
            return 1
        return 0
    if argv:
        print("usage: python docs/gen_options.py [--check]", file=sys.stderr)
        return 2
    OUTPUT.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
