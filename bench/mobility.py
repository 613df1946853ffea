#!/usr/bin/env python3
"""Outage per move of a roaming client: address adoption and MOBIKE (ours) vs. strongSwan MOBIKE.

    sudo .venv/bin/python bench/mobility.py                       # 4 moves per mode, 100 pings/s
    sudo .venv/bin/python bench/mobility.py --moves 6 --pps 20 --modes adoption,mobike,sw-sw --json out.json

Topology: tests/netns_e2e/mobility_topology.py (a client with two uplinks behind two routers, a
hub across a small Internet, a host behind each; no NAT). A host behind the client pings a host
behind the hub at ``--pps`` packets/s (default 100: ``ping -D -i 0.01``) the whole time. Each
move brings the standby uplink up (with a worse default route), waits, then takes the active
uplink down: the kernel now reaches the hub over the other uplink, and the client must move its
IKE SA and CHILD_SA there.
Moves alternate between the uplinks; the wait before each is 1.5-2.5 s (random), so the moves
fall at random points of our daemon's 1 s local address check.

Modes (same topology, same pings, same moves):

* ``adoption``: our roaming client (no ``local_addrs``, ``mobike = false``) and our hub
  (``remote_addrs = %any``, so ``address_adoption = "auto"`` is on): the client tells the hub with
  an authenticated liveness check from the new address, the hub adopts it (or the first
  authenticated ESP packet newer than all before);
* ``mobike``: the same with ``mobike = true`` on both and ``address_adoption = false`` on the hub
  (UPDATE_SA_ADDRESSES only);
* ``sw-sw``: strongSwan (charon, kernel-libipsec) on both ends, ``mobike = yes``.

Per move, from the ping output and a capture on the hub's link:

* ``outage``: last reply before the move -> first reply after it (ms; includes one ping
  interval, 10 ms at 100 pings/s, which any two replies are apart anyway);
* ``detect``: move -> first packet from the new address at the hub (the client noticing);
* ``hub``: that packet -> the hub's first packet to the new address (the hub's reaction);
* ``resume``: that packet -> the first reply at the pinging host.

The project target is ``resume`` <= one round trip + 20 ms (+ up to one ping interval). Needs
root and, for ``sw-sw``, strongSwan. Not a test: it only prints.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import re
import secrets
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
for p in (ROOT, ROOT / "tests", ROOT / "tests" / "interop"):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

import netns  # noqa: E402  (tests/netns.py, as strongswan.py uses it)
import strongswan as ss  # noqa: E402

from tests.gateway import OurGateway, connection  # noqa: E402
from tests.netns_e2e import mobility_topology as M  # noqa: E402
from tests.netns_e2e import tools  # noqa: E402

IKE, ESP = "aes256gcm16-prfsha256-x25519", "aes256gcm16"
HUB_ID, CLIENT_ID = "hub.example.org", "client.example.org"
MODES = ("adoption", "mobike", "sw-sw")
FAST = {"retransmit_timeout": 1.0, "retransmit_base": 1.4, "retransmit_tries": 3}


def _sw_conf(psk: str, *, hub: bool) -> dict:
    c = {"version": 2, "proposals": IKE, "mobike": True, "encap": True,
         "local": {"auth": "psk", "id": HUB_ID if hub else CLIENT_ID},
         "remote": {"auth": "psk", "id": CLIENT_ID if hub else HUB_ID},
         "children": {"net": {"local_ts": M.HUB_LAN if hub else M.CLIENT_LAN,
                              "remote_ts": M.CLIENT_LAN if hub else M.HUB_LAN,
                              "esp_proposals": ESP, "start_action": "none"}}}
    if hub:
        c.update(local_addrs=M.HUB_IP, remote_addrs="%any")
    else:
        c["remote_addrs"] = M.HUB_IP
    return {"connections": {"hub": c},
            "secrets": {"ike-1": {"id-1": HUB_ID, "id-2": CLIENT_ID, "secret": ss.quote(psk)}}}


class Run:
    """One mode: topology, both ends, a ping at ``pps`` per second and a capture; torn down by close()."""

    def __init__(self, mode: str, workdir: Path, pps: float = 100.0):
        self.mode = mode
        self.pps = pps
        self.dir = workdir / mode
        self.dir.mkdir(parents=True)
        self.grp = netns.NetnsGroup("bmob")
        self.stops: list = []
        self.pinger = self.cap = None

    def setup(self) -> Run:
        mode = self.mode
        self.m = M.build(self.grp)
        psk = "bench-" + secrets.token_hex(12)
        if mode == "sw-sw":
            hub = ss.Charon(self.m.hub, self.dir / "hub", "hub")
            hub.write_swanctl_conf(_sw_conf(psk, hub=True))
            cl = ss.Charon(self.m.client, self.dir / "cl", "cl")
            cl.write_swanctl_conf(_sw_conf(psk, hub=False))
            for c in (hub, cl):
                c.start()
                self.stops.append(c.stop)
                c.load_all()
            cl.initiate(child="net", timeout=15)
            self.hub_sw = hub
        else:
            mobike = mode == "mobike"
            hub = OurGateway(self.m.hub, self.dir, "hub", [connection(
                "client", M.HUB_IP, "%any", HUB_ID, CLIENT_ID, local_ts=M.HUB_LAN, remote_ts=M.CLIENT_LAN,
                psk=psk, mobike=mobike, address_adoption="auto" if not mobike else False)],
                listen=[M.HUB_IP], gateway=FAST, log_level="info")
            cl = OurGateway(self.m.client, self.dir, "client", [M.ours_roaming(
                "hub", M.HUB_IP, CLIENT_ID, HUB_ID, local_ts=M.CLIENT_LAN, remote_ts=M.HUB_LAN, psk=psk,
                mobike=mobike)], gateway=FAST, log_level="info")
            for g in (hub, cl):
                g.start()
                self.stops.append(g.stop)
            cl.up("hub")
            hub.wait_children(1)
            self.hub_ours = hub
        self.m.hc.wait_ping(M.HUB_HOST, timeout=10)
        self.cap = tools.Capture(self.m.inet, self.m.hub_iface, self.dir / "hub-link.pcap", "udp").start()
        self.pinger = M.Pinger(self.m.hc, M.HUB_HOST, self.dir / "ping.txt", interval=1.0 / self.pps).start()
        netns.wait_until(lambda: len(self.pinger.replies()) >= 20, timeout=5, what="pings")
        return self

    def hub_sees(self) -> str | None:
        if self.mode == "sw-sw":
            sas = self.hub_sw.list_sas()
            return sas[0]["remote-host"] if sas else None
        sas = self.hub_ours.control("status", timeout=5.0)
        return sas[0]["remote_addr"] if sas else None

    def move(self) -> float:
        self.m.prepare_standby()
        # let the standby uplink settle (strongSwan re-checks paths on link up); the random part
        # spreads the moves over the phase of our daemon's 1 s local address check
        time.sleep(1.5 + random.random())
        new = self.m.standby.addr
        t = self.m.move()
        netns.wait_until(lambda: self.hub_sees() == new, timeout=10, interval=0.05,
                         what=f"{self.mode}: hub to follow to {new}")
        netns.wait_until(lambda: self.pinger.replies_after(t) >= 20, timeout=10,
                         what=f"{self.mode}: replies after the move")
        return t

    def results(self) -> list[dict]:
        self.pinger.stop()
        self.cap.stop()
        pkts = tools.ipv4_packets(self.cap.path)
        rtts = sorted(float(x) for x in re.findall(r"time=([\d.]+) ms", self.pinger.out.read_text()))
        out = []
        for i, t in enumerate(self.m.moves):
            new = self.m.uplinks[(i + 1) % 2].addr
            gap = self.pinger.gap(t)
            first = next((p.time for p in pkts if p.time > t and p.src == new), None)
            back = next((p.time for p in pkts if first and p.time >= first and p.dst == new), None)
            reply = self.pinger.first_reply_after(first) if first else None
            out.append({
                "t_move": t,
                "outage_ms": gap[0] if gap else None,
                "detect_ms": (first - t) * 1000 if first else None,
                "hub_ms": (back - first) * 1000 if back and first else None,
                "resume_ms": (reply - first) * 1000 if reply and first else None,
                "rtt_ms": rtts[len(rtts) // 2] if rtts else None,
            })
        return out

    def close(self) -> None:
        for obj in (self.pinger, self.cap):
            if obj is not None:
                try:
                    obj.stop()
                except Exception as e:  # noqa: BLE001 - keep tearing down
                    print(f"warning: {e}", file=sys.stderr)
        for stop in reversed(self.stops):
            try:
                stop()
            except Exception as e:  # noqa: BLE001
                print(f"warning: stopping: {e}", file=sys.stderr)
        self.grp.close()
        left = self.grp.leftovers()
        if left:
            print(f"warning: namespaces left: {left}", file=sys.stderr)


def _fmt(vals: list, nd: int = 0) -> str:
    v = [x for x in vals if x is not None]
    return " / ".join(f"{x:.{nd}f}" for x in v) if v else "-"


def _med(vals: list) -> str:
    v = [x for x in vals if x is not None]
    return f"{statistics.median(v):.0f}" if v else "-"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--moves", type=int, default=4, help="moves per mode (default 4)")
    ap.add_argument("--modes", default=",".join(MODES), help=f"comma-separated subset of {','.join(MODES)}")
    ap.add_argument("--pps", type=float, default=100.0,
                    help="pings per second from the host behind the client (default 100)")
    ap.add_argument("--json", help="also write the raw results to this file")
    ap.add_argument("--keep", help="keep logs, captures and ping output in this (new) directory")
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("needs root (network namespaces)", file=sys.stderr)
        return 2
    modes = [x for x in args.modes.split(",") if x]
    if any(x not in MODES for x in modes):
        ap.error(f"unknown mode in {args.modes!r}")
    if "sw-sw" in modes and ss.missing_strongswan_parts():
        print(f"strongSwan missing ({', '.join(ss.missing_strongswan_parts())}): skipping sw-sw", file=sys.stderr)
        modes.remove("sw-sw")
    netns.cleanup_stale("bmob")
    print("command:", shlex.join([sys.executable, *sys.argv]))
    print(f"machine: {os.cpu_count()} CPUs, kernel {os.uname().release}"
          + (f", strongSwan {ss.strongswan_version()}" if "sw-sw" in modes else ""))
    results: dict[str, list[dict]] = {}
    if args.keep:
        Path(args.keep).mkdir(parents=True)
    with (contextlib.nullcontext(args.keep) if args.keep else tempfile.TemporaryDirectory(prefix="bmob-")) as tmp:
        for mode in modes:
            run = Run(mode, Path(tmp), args.pps)
            try:
                run.setup()
                for k in range(args.moves):
                    run.move()
                    print(f"  {mode}: move {k + 1}/{args.moves} done", flush=True)
                results[mode] = run.results()
            finally:
                run.close()
    print()
    print("| mode | outage per move (ms) | median | detect (ms) | hub reaction (ms) | resume (ms) | RTT (ms) |")
    print("|---|---|---|---|---|---|---|")
    for mode, rows in results.items():
        col = {k: [r[k] for r in rows] for k in rows[0]}
        print(f"| {mode} | {_fmt(col['outage_ms'])} | {_med(col['outage_ms'])} | {_fmt(col['detect_ms'])} | "
              f"{_fmt(col['hub_ms'], 1)} | {_fmt(col['resume_ms'])} | {_fmt(col['rtt_ms'][:1], 2)} |")
    print(f"\noutage: last reply before -> first after ({args.pps:g} pings/s, includes one {1000 / args.pps:g} ms"
          " interval); detect: move ->"
          " first packet from the new address at the hub; hub reaction: -> the hub's first packet to the new"
          " address; resume: first packet from the new address -> first reply at the pinging host.")
    if args.json:
        Path(args.json).write_text(json.dumps({"command": sys.argv, "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
