#!/usr/bin/env python3
"""Event-loop time per Child SA install/remove in the userspace data plane (policy-based: one
route per Child SA into the shared TUN), measured inside a private network namespace. Not a
test, but it checks what it measures: after the netlink thread is idle every route is there,
after the removals every route is gone (exit status 1 otherwise).

    .venv/bin/python bench/child_install.py [--count 200]

Run as root. The SAs use documentation/private selectors (10.128.0.0/9 split into /24s) and the
TUN device lives in the namespace, which is deleted at the end.
"""
from __future__ import annotations

import argparse
import asyncio
import ipaddress
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if not os.environ.get("PYTHONPATH"):  # else: the code under PYTHONPATH (e.g. another checkout)
    sys.path.insert(0, str(ROOT))

LOCAL_NET = "10.1.0.0/16"


def child_up(k: int):
    from ikev2.events import ChildSAKeys, ChildUp
    from ikev2.payloads import TrafficSelector
    keys = ChildSAKeys(spi_in=(0x1000 + k).to_bytes(4, "big"), spi_out=(0x2000 + k).to_bytes(4, "big"),
                       protocol=3, mode="tunnel", encr_id=20, encr_key_bits=128, integ_id=None, esn=False,
                       encr_key_in=bytes(20), integ_key_in=b"", encr_key_out=bytes(20), integ_key_out=b"")
    remote = ipaddress.ip_network("10.128.0.0/9").network_address + (k << 8)
    return ChildUp(child_name="c", keys=keys, local_ts=[TrafficSelector.from_network(LOCAL_NET)],
                   remote_ts=[TrafficSelector.from_network(f"{remote}/24")], local=("192.0.2.1", 4500),
                   remote=("198.51.100.1", 4500), encap=True, proposal="aes128gcm16",
                   ike_name="bench", ike_id=1)


def tun_routes() -> set[str]:
    out = subprocess.run(["ip", "-4", "route", "show", "dev", "vpngw0"], capture_output=True, text=True,
                         timeout=10).stdout
    return {line.split()[0] for line in out.splitlines() if line.strip()}


async def measure(count: int) -> int:
    import structlog
    # the daemon's log lines are formatted as usual (their cost is part of an install), not shown
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(open(os.devnull, "w")))  # noqa: SIM115
    from vpn_gw.dataplane import iproute
    from vpn_gw.dataplane.userspace.plane import UserspaceDataPlane
    plane = UserspaceDataPlane(lambda *a: None, lambda name: None, keepalive_interval=0)
    await plane.start()
    events = [child_up(k) for k in range(count + 1)]
    plane.install_child(events[0])  # creates the TUN device: once per gateway, not per SA
    idle = getattr(iproute, "wait_idle", lambda: None)
    idle()
    installs, removals = [], []
    for ev in events[1:]:
        t = time.perf_counter()
        plane.install_child(ev)
        installs.append(time.perf_counter() - t)
        await asyncio.sleep(0)  # let the loop run, as the daemon would between events
    t = time.perf_counter()
    idle()
    drain = time.perf_counter() - t
    want = {str(ev.remote_ts[0].start_addr) + "/24" for ev in events}
    have = tun_routes()
    ok = want <= have
    for ev in events[1:]:
        t = time.perf_counter()
        plane.remove_child(ev.keys.spi_in, ev.keys.spi_out)
        removals.append(time.perf_counter() - t)
        await asyncio.sleep(0)
    idle()
    left = tun_routes() & (want - {str(events[0].remote_ts[0].start_addr) + "/24"})
    ok = ok and not left
    await plane.close()

    def ms(xs):
        xs = sorted(xs)
        return (f"median {statistics.median(xs) * 1e3:.3f} ms, p95 {xs[int(len(xs) * 0.95)] * 1e3:.3f} ms, "
                f"max {xs[-1] * 1e3:.3f} ms")
    print(f"event-loop time per install ({count} Child SAs): {ms(installs)}")
    print(f"event-loop time per removal: {ms(removals)}")
    print(f"netlink thread still busy after the last install: {drain * 1e3:.1f} ms")
    print(f"routes after installs: {len(want & have)}/{len(want)}; left after removals: {len(left)}")
    return 0 if ok else 1


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--count", type=int, default=200)
    ap.add_argument("--inside", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.inside:
        subprocess.run(["ip", "link", "set", "lo", "up"], check=True, timeout=10)
        subprocess.run(["ip", "link", "add", "bench0", "type", "veth", "peer", "name", "bench1"],
                       check=True, timeout=10)
        subprocess.run(["ip", "addr", "add", "10.1.0.1/16", "dev", "bench0"], check=True, timeout=10)
        subprocess.run(["ip", "link", "set", "bench0", "up"], check=True, timeout=10)
        return asyncio.run(measure(args.count))
    ns = f"vgbench-{os.getpid()}"
    subprocess.run(["ip", "netns", "add", ns], check=True, timeout=10)
    try:
        env = dict(os.environ, PYTHONPATH=os.environ.get("PYTHONPATH", str(ROOT)))
        return subprocess.run(["ip", "netns", "exec", ns, sys.executable, __file__, "--inside",
                               "--count", str(args.count)], env=env, timeout=600).returncode
    finally:
        for pid in subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True,
                                  timeout=10).stdout.split():
            os.kill(int(pid), 9)
        subprocess.run(["ip", "netns", "delete", ns], timeout=10)


if __name__ == "__main__":
    sys.exit(main())
