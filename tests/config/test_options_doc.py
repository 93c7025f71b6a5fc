"""docs/options.md is generated from fcgiserve.config.OPTIONS and is current; every option is documented."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from collections import Counter
from pathlib import Path
from types import ModuleType

import pytest

from fcgiserve.config import OPTIONS, Option

ROOT = Path(__file__).resolve().parents[2]
GENERATOR = ROOT / "docs" / "gen_options.py"
DOC = ROOT / "docs" / "options.md"


@pytest.fixture(scope="module")
def gen_options() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gen_options", GENERATOR)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_options_page_is_current(gen_options: ModuleType) -> None:
    assert DOC.read_text(encoding="utf-8") == gen_options.options_markdown(), (
        "docs/options.md is stale: run python docs/gen_options.py"
    )


def test_check_mode_in_a_real_process() -> None:
    done = subprocess.run(
        [sys.executable, str(GENERATOR), "--check"], capture_output=True, text=True, timeout=30, check=False
    )
    assert done.returncode == 0, done.stderr


def test_check_mode_detects_a_stale_page(
    gen_options: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    stale = tmp_path / "options.md"
    stale.write_text(gen_options.options_markdown().replace("8080", "9090"))
    monkeypatch.setattr(gen_options, "OUTPUT", stale)
    assert gen_options.main(["--check"]) == 1
    assert gen_options.main([]) == 0 and gen_options.main(["--check"]) == 0


@pytest.mark.parametrize("opt", OPTIONS, ids=[o.name for o in OPTIONS])
def test_every_option_is_documented(opt: Option, gen_options: ModuleType) -> None:
    assert opt.help.strip() and opt.help.endswith(".") and "\n" not in opt.help, (
        "help text: one or more sentences"
    )
    assert opt.group and opt.describe_default()
    assert opt.kind == "flag" or opt.metavar, "value options need a metavar"
    page = DOC.read_text(encoding="utf-8")
    assert f"### {gen_options._title(opt)}\n" in page and opt.help in page
    for alias in opt.runfcgi:
        assert f"`{alias}=`" in page


def test_runfcgi_aliases_and_flags_are_unique() -> None:
    aliases = Counter(a for o in OPTIONS for a in o.runfcgi)
    flags = Counter(f for o in OPTIONS for f in o.flags)
    assert [a for a, n in aliases.items() if n > 1] == [] and [f for f, n in flags.items() if n > 1] == []
    assert len({o.name for o in OPTIONS}) == len(OPTIONS)
