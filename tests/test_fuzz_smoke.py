"""Short run of the atheris decoder fuzzer (the long run is bench/fuzz_decoder.py)."""
from __future__ import annotations

import pathlib
import re
import subprocess
import sys

from tests.fuzz.seeds import write_seeds

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_decoder_fuzz_smoke(tmp_path):
    corpus = tmp_path / "corpus"
    n = write_seeds(corpus, count=100)
    assert n >= 100
    proc = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "fuzz" / "fuzz_decoder.py"),
         "-atheris_runs=150000", "-max_total_time=40", "-rss_limit_mb=2048",
         f"-artifact_prefix={tmp_path}/", str(corpus)],
        cwd=ROOT, capture_output=True, text=True, timeout=180)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"fuzzer found a crash:\n{out[-4000:]}"
    runs = re.search(r"Done (\d+) (?:runs )?in", out)
    assert runs and int(runs.group(1)) >= 1000, out[-2000:]
    assert not list(tmp_path.glob("crash-*"))
