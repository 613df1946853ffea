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


def test_test_target_shows_progress_per_file(tmp_path):
    """Run pytest with the exact options of `make test` on two small test files: each file gets
    its own progress line (the suite is not silent for minutes, issue 15 item 14)."""
    import shlex
    import sys
    cmd = next(ln for ln in _dry("test") if "-m pytest" in ln)
    opts = shlex.split(cmd.split("-m pytest", 1)[1])
    assert "-q" not in opts and "--quiet" not in opts
    (tmp_path / "test_one.py").write_text("def test_a():\n    pass\n\ndef test_b():\n    pass\n")
    (tmp_path / "test_two.py").write_text("def test_c():\n    pass\n")
    p = subprocess.run([sys.executable, "-m", "pytest", *opts, "-p", "no:cacheprovider", str(tmp_path)],
                       capture_output=True, text=True, timeout=60, cwd=str(tmp_path))
    assert p.returncode == 0, p.stdout + p.stderr
    lines = p.stdout.splitlines()
    assert any(ln.startswith("test_one.py ..") and ln.rstrip().endswith("[ 66%]") for ln in lines), p.stdout
    assert any(ln.startswith("test_two.py .") and ln.rstrip().endswith("[100%]") for ln in lines), p.stdout


def test_readme_says_what_the_tests_download():
    readme = (ROOT / "README.md").read_text()
    assert "/var/cache/vpn-gw-guest" in readme and "linux-image-amd64" in readme
