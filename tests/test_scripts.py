"""The README's commands install nothing into the interpreter: scripts/venv.sh makes the project's own venv.

Debian 12 and Ubuntu 23.04+ mark their python3 "externally managed" (PEP 668): `python3 -m pip install` is
refused there, which is how scripts/test and scripts/demo once failed on a stock machine. CI also runs them
for real under the system interpreter (.ci/run).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.helpers import ROOT

SCRIPTS = ROOT / "scripts"
# Debian's and Ubuntu's own interpreter, the one PEP 668 protects.
SYSTEM_PYTHON = "/usr/bin/python3"


def make_venv(directory: Path, python: str) -> str:
    """Run make_venv from scripts/venv.sh; return the interpreter it reports."""
    script = '. scripts/debs.sh; . scripts/venv.sh; make_venv "$1" "$2"; echo "$VENV_PYTHON"'
    result = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script, "make_venv", str(directory), python],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip().splitlines()[-1]


def base_of(python: str) -> tuple[str, str]:
    code = "import sys; print(sys.prefix); print(sys.base_prefix)"
    prefix, base = subprocess.run(
        [python, "-c", code], capture_output=True, text=True, check=True, timeout=30
    ).stdout.split()
    return prefix, base


def tiny_wheel(directory: Path) -> Path:
    """A one-module wheel, built by hand so that installing it needs no index."""
    wheel = directory / "tinydist-0.1-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr("tinydist.py", "ANSWER = 42\n")
        archive.writestr(
            "tinydist-0.1.dist-info/METADATA", "Metadata-Version: 2.1\nName: tinydist\nVersion: 0.1\n"
        )
        archive.writestr(
            "tinydist-0.1.dist-info/WHEEL",
            "Wheel-Version: 1.0\nGenerator: tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
        )
        archive.writestr(
            "tinydist-0.1.dist-info/RECORD",
            "tinydist.py,,\ntinydist-0.1.dist-info/METADATA,,\ntinydist-0.1.dist-info/WHEEL,,\n"
            "tinydist-0.1.dist-info/RECORD,,\n",
        )
    return wheel


def pip_install(python: str, wheel: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [python, "-m", "pip", "install", "--no-index", "--no-deps", str(wheel)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={k: v for k, v in os.environ.items() if k != "PIP_BREAK_SYSTEM_PACKAGES"},
    )


def test_scripts_pip_install_only_into_the_venv() -> None:
    for script in sorted(SCRIPTS.iterdir()):
        for line in script.read_text().splitlines():
            if re.search(r"-m pip install", line):
                assert '"$VENV_PYTHON" -m pip install' in line, f"{script.name}: {line.strip()}"


def test_make_venv_reuses_its_own_and_recreates_another_interpreters(tmp_path: Path) -> None:
    directory = tmp_path / "venv"
    python = make_venv(directory, sys.executable)
    assert python == f"{directory}/bin/python"
    assert base_of(python) == (str(directory), sys.base_prefix)
    marker = directory / "kept"
    marker.touch()

    make_venv(directory, sys.executable)
    assert marker.exists(), "a venv of the same interpreter is reused"

    # A venv left by another interpreter: its python reports another base. It must not be reused.
    fake = directory / "bin" / "python"
    fake.unlink()
    fake.write_text("#!/bin/sh\necho /elsewhere 3.0.0 cpython-30\n")
    fake.chmod(0o755)
    python = make_venv(directory, sys.executable)
    assert not marker.exists(), "a venv of another interpreter is recreated"
    assert base_of(python) == (str(directory), sys.base_prefix)


def externally_managed(python: str) -> bool:
    marker = "os.path.join(sysconfig.get_path('stdlib'), 'EXTERNALLY-MANAGED')"
    code = f"import os, sysconfig; print(os.path.exists({marker}))"
    result = subprocess.run([python, "-c", code], capture_output=True, text=True, timeout=30, check=False)
    return result.stdout.strip() == "True"


@pytest.mark.skipif(
    not (os.path.exists(SYSTEM_PYTHON) and externally_managed(SYSTEM_PYTHON)),
    reason=f"{SYSTEM_PYTHON} is not an externally managed (PEP 668) interpreter here",
)
def test_the_venv_accepts_what_the_externally_managed_system_python_refuses(tmp_path: Path) -> None:
    wheel = tiny_wheel(tmp_path)
    refused = pip_install(SYSTEM_PYTHON, wheel)
    if "No module named pip" not in refused.stderr:
        assert refused.returncode != 0
        assert "externally-managed-environment" in refused.stderr

    python = make_venv(tmp_path / "venv", SYSTEM_PYTHON)
    installed = pip_install(python, wheel)
    assert installed.returncode == 0, installed.stderr
    answer = subprocess.run(
        [python, "-c", "import tinydist; print(tinydist.ANSWER)"], capture_output=True, text=True, timeout=30
    )
    assert answer.stdout.strip() == "42"
