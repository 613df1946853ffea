"""The Makefile's entry points (make's own dry run, nothing executed)."""
from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _dry(target: str) -> list[str]:
    p = subprocess.run(["make", "-n", "-C", str(ROOT), target], capture_output=True, text=True, timeout=30)
    assert p.returncode == 0, p.stderr
    return [ln for ln in p.stdout.splitlines() if not ln.startswith("make")]


@pytest.mark.parametrize("target", ["test", "test-fast", "demo"])
def test_targets_run_setup_first(target):
    """A fresh clone has no .venv: every target using it runs scripts/setup.sh first."""
    lines = _dry(target)
    assert lines[0] == "./scripts/setup.sh", lines
    assert any(".venv/bin/" in ln for ln in lines[1:]), lines
