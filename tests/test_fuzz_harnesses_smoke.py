"""Short runs of the atheris harnesses beyond the outer decoder (issue 14): the RFC 9329 TCP
stream parser, ESP decapsulation after a valid ICV, authenticated payloads into the engine in
both roles, the compiled data plane helpers and the compiled AEAD ESP path against their Python
reference. The long runs are bench/fuzz_harnesses.py."""
from __future__ import annotations

import pathlib
import re
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("harness", ["fuzz_tcp_stream.py", "fuzz_esp_decap.py", "fuzz_engine.py", "fuzz_accel.py",
                                     "fuzz_esp_compiled.py"])
def test_harness_smoke(tmp_path, harness):
    corpus = []
    if harness == "fuzz_engine.py":  # seeds from real exchanges, so the short run gets past the decoder
        seeds = subprocess.run([sys.executable, str(ROOT / "tests" / "fuzz" / harness), "--write-seeds",
                                str(tmp_path / "seeds")], cwd=ROOT, capture_output=True, text=True, timeout=60,
                               check=False)
        assert seeds.returncode == 0 and len(list((tmp_path / "seeds").iterdir())) >= 8, seeds.stderr[-2000:]
        corpus = [str(tmp_path / "seeds")]
    proc = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "fuzz" / harness),
         "-atheris_runs=40000", "-max_total_time=15", "-rss_limit_mb=2048", f"-artifact_prefix={tmp_path}/",
         *corpus],
        cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"{harness} found a crash:\n{out[-4000:]}"
    runs = re.search(r"Done (\d+) (?:runs )?in", out)
    assert runs and int(runs.group(1)) >= 500, out[-2000:]
    assert not list(tmp_path.glob("crash-*"))
