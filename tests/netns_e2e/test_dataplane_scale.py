"""The userspace data plane at scale (issue 13): installing, removing and polling Child SAs costs
the same work with 10,000 Child SAs held as with 100, counted in executed lines of our code (the
event loop's thread; sys.settrace), never in time. Real TUN device and real routes, in a network
namespace of the test's own; the work is measured by a helper process (this file run as a script
inside the namespace) that prints its counts as JSON."""
from __future__ import annotations

import asyncio
import ipaddress
import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.netns

ROOT = Path(__file__).resolve().parents[2]
LOCAL_NET = "203.0.113.128/25"


# ----------------------------------------------------------------------------- the helper (in the namespace)

def _child_up(k: int, remote_net: str):
    from ikev2.events import ChildSAKeys, ChildUp
    from ikev2.payloads import TrafficSelector
    keys = ChildSAKeys(spi_in=(0x10000000 + k).to_bytes(4, "big"), spi_out=(0x20000000 + k).to_bytes(4, "big"),
                       protocol=3, mode="tunnel", encr_id=20, encr_key_bits=128, integ_id=None, esn=False,
                       encr_key_in=bytes(20), integ_key_in=b"", encr_key_out=bytes(20), integ_key_out=b"")
    return ChildUp(child_name="c", keys=keys, local_ts=[TrafficSelector.from_network(LOCAL_NET)],
                   remote_ts=[TrafficSelector.from_network(remote_net)], local=("198.51.100.1", 4500),
                   remote=("198.51.100.10", 4500 + k % 1000), encap=True, proposal="aes128gcm16",
                   ike_name="scale", ike_id=k)


class _LineCounter:
    """Lines executed in our packages (vpn_gw/, esp/, ikev2/) while active, in this thread."""

    def __init__(self) -> None:
        self.lines = 0
        self._ours = tuple(str(ROOT / d) for d in ("vpn_gw", "esp", "ikev2"))

    def _trace(self, frame, event, arg):
        if not frame.f_code.co_filename.startswith(self._ours):
            return None
        if event == "line":
            self.lines += 1
        return self._trace

    def run(self, fn, *args) -> int:
        self.lines = 0
        sys.settrace(self._trace)
        try:
            fn(*args)
        finally:
            sys.settrace(None)
        return self.lines


def _routes() -> list[str]:
    out = subprocess.run(["ip", "-4", "route", "show", "dev", "vpngw0"], capture_output=True, text=True,
                         timeout=30).stdout
    return sorted(line.split()[0] for line in out.splitlines() if line.strip())


async def _measure(count: int, per_client: bool) -> dict:
    import structlog
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(open(os.devnull, "w")))  # noqa: SIM115
    from vpn_gw.dataplane.iproute import wait_idle
    from vpn_gw.dataplane.userspace.plane import UserspaceDataPlane
    plane = UserspaceDataPlane(lambda *a: None, lambda name: None, keepalive_interval=0)
    await plane.start()
    base = int(ipaddress.IPv4Address("10.64.0.0"))

    def remote(k: int) -> str:  # a client's virtual IP, or the one network all SAs share
        return f"{ipaddress.IPv4Address(base + k)}/32" if per_client else "203.0.113.0/25"

    events = [_child_up(k, remote(k)) for k in range(count)]
    counter = _LineCounter()
    install, poll = [], []
    for k, ev in enumerate(events):
        lines = counter.run(plane.install_child, ev)
        if k % 500 == 0 or k == count - 1:
            install.append((k, lines))
            poll.append((k, counter.run(plane.expiries, 0.0)))
        if k % 64 == 0:
            await asyncio.sleep(0)  # the netlink thread's answers (_routes_ready) run in the loop
    await asyncio.get_running_loop().run_in_executor(None, wait_idle)
    await asyncio.sleep(0.1)
    routes_after_install = _routes()
    # outbound: which Child SA a clear packet from the local network takes, and how many Child
    # SAs the SPD index looked at for it
    tun, spd = plane.tuns["vpngw0"], plane.spd["vpngw0"]
    lookups = []
    for k in (0, count // 2, count - 1):
        dst = str(ipaddress.IPv4Address(base + k)) if per_client else "203.0.113.7"
        pkt = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20, 0, 0, 64, 17, 0,
                          ipaddress.IPv4Address("203.0.113.130").packed, ipaddress.IPv4Address(dst).packed)
        want = events[k] if per_client else events[-1]
        spd.flows.clear()  # the index itself, not the flow cache in front of it
        before = spd.visits
        got = plane._select(tun, pkt)
        lookups.append([spd.visits - before, got is not None and got.spi_in == want.keys.spi_in])
        before = spd.visits
        assert plane._select(tun, pkt) is got and spd.visits == before  # the same flow again: the cache
    remove = []
    for k, ev in enumerate(events[:-1]):
        lines = counter.run(plane.remove_child, ev.keys.spi_in, ev.keys.spi_out)
        if k % 500 == 0 or k == count - 2:
            remove.append((count - k, lines))
    await asyncio.get_running_loop().run_in_executor(None, wait_idle)
    routes_with_one = _routes()
    plane.remove_child(events[-1].keys.spi_in, events[-1].keys.spi_out)
    await asyncio.get_running_loop().run_in_executor(None, wait_idle)
    routes_with_none = _routes()
    await plane.close()
    return {"lookups": lookups, "install": install, "poll": poll, "remove": remove,
            "routes_after_install": len(routes_after_install), "routes_with_one": routes_with_one,
            "routes_with_none": routes_with_none}


def _inside(count: int, per_client: bool) -> None:
    print(json.dumps(asyncio.run(_measure(count, per_client))))


# ----------------------------------------------------------------------------- the tests

def _run(count: int, per_client: bool) -> dict:
    sys.path.insert(0, str(ROOT / "tests"))
    from netns import NetnsGroup
    env = dict(os.environ, PYTHONPATH=os.environ.get("PYTHONPATH") or str(ROOT))
    grp = NetnsGroup("dps")
    try:
        ns = grp.add("gw")
        p = ns.run([sys.executable, __file__, str(count), "1" if per_client else "0"], env=env, timeout=600,
                   check=False)
    finally:
        grp.close()
    assert p.returncode == 0, p.stderr[-2000:]
    return json.loads(p.stdout.strip().splitlines()[-1])


def _flat(points: list[list[int]], slack: int = 0) -> None:
    """The work at the largest count is no more than at the smallest (+ slack lines)."""
    first, last = points[0][1], points[-1][1]
    assert last <= first + slack, points


def test_10k_child_sas_with_the_same_selectors_cost_the_same_per_install():
    """bench/ike_scale.py's case: every Child SA has the same selectors (one route for all)."""
    r = _run(10_000, per_client=False)
    _flat(r["install"])
    _flat(r["poll"])
    _flat(r["remove"])
    assert r["lookups"] == [[1, True]] * 3  # the newest Child SA, found at once
    assert r["routes_after_install"] == 1
    assert r["routes_with_one"] == ["203.0.113.0/25"]  # still wanted by the last Child SA
    assert r["routes_with_none"] == []


def test_10k_remote_access_clients_cost_the_same_per_install():
    """A remote-access gateway: one /32 (the client's virtual IP) per Child SA, one route each."""
    r = _run(10_000, per_client=True)
    _flat(r["install"])
    _flat(r["poll"])
    _flat(r["remove"])
    assert r["lookups"] == [[1, True]] * 3  # each client's own Child SA, one visit
    assert r["routes_after_install"] == 10_000
    assert r["routes_with_one"] == ["10.64.39.15"]  # 10.64.0.0 + 9999, a host route
    assert r["routes_with_none"] == []


if __name__ == "__main__":
    _inside(int(sys.argv[1]), sys.argv[2] == "1")
