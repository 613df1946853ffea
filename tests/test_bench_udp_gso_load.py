"""bench/udp_gso_load.py, the light load of ``bench/throughput.py --udp-load gso``: on loopback,
what it says it sent arrives as that many datagrams of the asked size, at the asked rate."""
from __future__ import annotations

import json
import select
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "bench" / "udp_gso_load.py"


def run_load(pps: int, size: int, seconds: float, burst: int) -> tuple[dict, list[bytes]]:
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        rx.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
        rx.bind(("127.0.0.1", 0))
        port = rx.getsockname()[1]
        proc = subprocess.Popen([sys.executable, str(SCRIPT), "127.0.0.1", str(port), str(pps), str(size),
                                 str(seconds), "--burst", str(burst)], stdout=subprocess.PIPE)
        got: list[bytes] = []
        deadline = time.monotonic() + seconds + 10
        quiet_until = None
        while time.monotonic() < deadline:
            if select.select([rx], [], [], 0.05)[0]:
                got.append(rx.recv(65535))
                continue
            if proc.poll() is not None:
                quiet_until = quiet_until or time.monotonic() + 0.3
                if time.monotonic() >= quiet_until:
                    break
        out, _ = proc.communicate(timeout=10)
        assert proc.returncode == 0
        return json.loads(out.decode().strip().splitlines()[-1]), got
    finally:
        rx.close()


@pytest.mark.parametrize("burst", [1, 16, 64])
def test_what_it_reports_arrives_as_datagrams_of_the_size(burst: int) -> None:
    pps, size, seconds = 4000, 160, 0.5
    info, got = run_load(pps, size, seconds, burst)
    assert info["failed"] == 0
    assert info["sent"] == len(got), "every datagram it counts arrives, and no more"
    assert {len(d) for d in got} == {size}, "the burst is cut into datagrams of SIZE bytes"
    pattern = (bytes(range(256)) * (size * burst // 256 + 1))[:size * burst]
    assert all(d == pattern[(i % burst) * size:(i % burst + 1) * size] for i, d in enumerate(got))
    # paced: never more than pps x seconds (+ the burst due at the start); less only by what a
    # stall of the test machine costs beyond the 10 ms the sender may catch up
    assert 0.8 * pps * seconds <= info["sent"] <= pps * seconds + burst
    assert seconds <= info["seconds"] < seconds + 0.5


def test_bad_arguments_are_refused() -> None:
    r = subprocess.run([sys.executable, str(SCRIPT), "127.0.0.1", "9", "1000", "160", "1", "--burst", "65"],
                       capture_output=True, timeout=10)
    assert r.returncode == 2 and b"burst 1-64" in r.stderr
