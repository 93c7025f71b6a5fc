"""The README's first command: the bundled demo, served by fcgiserve behind a real nginx."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.helpers import ROOT, free_port

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("method", ["threaded", "prefork"])
def test_demo_serves_through_nginx(method: str) -> None:
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "demo" / "run.py"),
            "--check",
            "--port",
            str(free_port()),
            "--method",
            method,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "served by fcgiserve" in result.stdout
