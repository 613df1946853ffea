#!/usr/bin/env python3
"""Long fuzzing run of the IKEv2 decoder (atheris/libFuzzer); prints executions and findings.

Usage: .venv/bin/python bench/fuzz_decoder.py [--seconds 600] [--workdir DIR]
Crashes (inputs that raise anything but ParseError, or break decode/encode symmetry) are saved
as crash-* files in the work directory and listed at the end.
"""
from __future__ import annotations

import argparse
import pathlib
import re
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.fuzz.seeds import write_seeds  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=int, default=600)
    ap.add_argument("--workdir", type=pathlib.Path, default=None)
    args = ap.parse_args()
    work = args.workdir or pathlib.Path(tempfile.mkdtemp(prefix="ikev2-fuzz-"))
    corpus = work / "corpus"
    seeds = write_seeds(corpus, count=300)
    t0 = time.monotonic()
    proc = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "fuzz" / "fuzz_decoder.py"),
         f"-max_total_time={args.seconds}", "-rss_limit_mb=4096", f"-artifact_prefix={work}/",
         str(corpus)], cwd=ROOT, capture_output=True, text=True)
    elapsed = time.monotonic() - t0
    out = proc.stdout + proc.stderr
    runs = re.search(r"Done (\d+) (?:runs )?in", out)
    cov = re.findall(r"cov: (\d+) ft: (\d+) corp: (\d+)", out)
    crashes = sorted(work.glob("crash-*")) + sorted(work.glob("timeout-*")) + sorted(work.glob("oom-*"))
    print(f"seeds: {seeds}")
    print(f"executions: {runs.group(1) if runs else 'unknown'} in {elapsed:.0f} s")
    if cov:
        print(f"coverage: cov={cov[-1][0]} features={cov[-1][1]} corpus={cov[-1][2]}")
    print(f"findings: {len(crashes)}")
    for c in crashes:
        print(f"  {c}")
    if proc.returncode != 0 and not crashes:
        print(out[-3000:])
    return 1 if crashes or proc.returncode != 0 else 0


if __name__ == "__main__":
    sys.exit(main())
