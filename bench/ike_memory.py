#!/usr/bin/env python3
"""Memory the engine keeps per established IKE SA (with one Child SA), responder side, measured
with tracemalloc: N clients set up tunnels to one gateway manager in memory, the clients are
dropped, and the gateway's growth is divided by N. Not a test.

    .venv/bin/python bench/ike_memory.py [--tunnels 300]
"""
from __future__ import annotations

import argparse
import gc
import os
import sys
import tracemalloc
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ikev2.ike_sa import State  # noqa: E402
from ikev2.manager import IkeManager  # noqa: E402
from tests.engine.harness import Link, child, psk_policy  # noqa: E402

GW = "192.0.2.1"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tunnels", type=int, default=300)
    args = ap.parse_args()
    gw_pol = psk_policy("rw", "gw.example.org", "%any", GW, "%any", [child("net", "10.1.0.0/24", "0.0.0.0/0")])
    gw_pol.remote_addrs = []
    gw = IkeManager([gw_pol], os.urandom, half_open_limit=10**9, cookie_threshold=10**9)
    gc.collect()
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    for i in range(args.tunnels):
        addr = f"198.51.{100 + i // 250}.{i % 250 + 1}"
        cl_pol = psk_policy("gw", f"c{i}.example.org", "gw.example.org", addr, GW,
                            [child("net", "0.0.0.0/0", "10.1.0.0/24")])
        client = IkeManager([cl_pol], os.urandom)
        link = Link(client, gw, addr, GW)
        sa = client.initiate("gw", 0.0)
        link.run(1.0)
        assert sa.state == State.ESTABLISHED
        link.trace.clear()
        del client, link, sa
    gc.collect()
    held = tracemalloc.get_traced_memory()[0] - base
    tracemalloc.stop()
    n = len([sa for sa in gw.sas if sa.state == State.ESTABLISHED])
    print(f"{n} established IKE SAs (1 Child SA each) held: {held / n / 1024:.1f} KiB per IKE SA")


if __name__ == "__main__":
    main()
