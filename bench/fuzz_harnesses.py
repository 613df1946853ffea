#!/usr/bin/env python3
"""Long fuzzing runs of the harnesses beyond the outer decoder (atheris/libFuzzer): the RFC 9329
TCP stream parser, ESP decapsulation after a valid ICV, authenticated payloads into the engine
in both roles, the compiled data plane helpers against their Python reference (``accel``) and the
compiled AEAD ESP path against the pure-Python one (``esp_compiled``); prints executions,
coverage and findings per harness.

Usage: .venv/bin/python bench/fuzz_harnesses.py [--seconds 600] [--workdir DIR] [--only NAME]
Crashes are saved as crash-* files under WORKDIR/NAME/ and listed at the end; a corpus is kept in
WORKDIR/NAME/corpus and reused by the next run with the same --workdir.
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
HARNESSES = {"tcp_stream": "fuzz_tcp_stream.py", "esp_decap": "fuzz_esp_decap.py", "engine": "fuzz_engine.py",
             "accel": "fuzz_accel.py", "esp_compiled": "fuzz_esp_compiled.py"}


def run(name: str, seconds: int, work: pathlib.Path) -> int:
    d = work / name
    corpus = d / "corpus"
    corpus.mkdir(parents=True, exist_ok=True)
    if name == "engine" and not any(corpus.iterdir()):  # seeds: real exchanges, decrypted
        subprocess.run([sys.executable, str(ROOT / "tests" / "fuzz" / HARNESSES[name]), "--write-seeds", str(corpus)],
                       cwd=ROOT, capture_output=True, check=True)
    t0 = time.monotonic()
    proc = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "fuzz" / HARNESSES[name]), f"-max_total_time={seconds}",
         "-rss_limit_mb=4096", f"-artifact_prefix={d}/", str(corpus)],
        cwd=ROOT, capture_output=True, text=True, check=False)
    out = proc.stdout + proc.stderr
    runs = re.search(r"Done (\d+) (?:runs )?in", out)
    cov = re.findall(r"cov: (\d+) ft: (\d+) corp: (\d+)", out)
    crashes = sorted(d.glob("crash-*")) + sorted(d.glob("timeout-*")) + sorted(d.glob("oom-*"))
    print(f"{name}: executions {runs.group(1) if runs else 'unknown'} in {time.monotonic() - t0:.0f} s"
          + (f", cov={cov[-1][0]} features={cov[-1][1]} corpus={cov[-1][2]}" if cov else "")
          + f", findings {len(crashes)}")
    for c in crashes:
        print(f"  {c}")
    if proc.returncode != 0 and not crashes:
        print(out[-3000:])
    return 1 if crashes or proc.returncode != 0 else 0


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=int, default=600, help="per harness")
    ap.add_argument("--workdir", type=pathlib.Path, default=None)
    ap.add_argument("--only", choices=sorted(HARNESSES), default=None)
    args = ap.parse_args()
    work = args.workdir or pathlib.Path(tempfile.mkdtemp(prefix="vpn-gw-fuzz-"))
    names = [args.only] if args.only else list(HARNESSES)
    return max(run(n, args.seconds, work) for n in names)


if __name__ == "__main__":
    sys.exit(main())
