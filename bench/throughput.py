#!/usr/bin/env python3
"""TCP throughput through the tunnel: our gateway vs. strongSwan (kernel-libipsec), same run.

    sudo .venv/bin/python bench/throughput.py                      # 10 s per measurement
    sudo .venv/bin/python bench/throughput.py --seconds 5 --streams 1,4 \
        --ciphers aes256gcm16,chacha20poly1305 --pairs ours-ours,sw-sw,ours-sw --repeat 1

Pairs (all on the same namespace topology, tests/interop/strongswan.py ``build_topology``:
host_a -- site -- router -- gw -- host_b; the router has no route to the protected networks):

* ``ours-ours``: our gateway (``vpn-gw run``, userspace ESP data plane) on both sides;
* ``sw-sw``: two charons (strongSwan with the kernel-libipsec userspace data plane);
* ``ours-sw``: our gateway on the site (initiator), charon on the gw (responder).

For each pair and ESP cipher the tunnel is set up once, then iperf3 TCP host_a -> host_b runs
for each stream count. Printed per row: receiver throughput (Mbit/s), TCP retransmits, CPU of
each gateway process (% of one core, from /proc/PID/stat over the run), and the ratio to the
sw-sw pair measured in the same run. Everything (iperf3, both gateways and the kernel's
forwarding) shares this machine's CPUs, so the numbers are "whole system" numbers.
Needs root, iperf3, and strongSwan for the sw pairs. Not a test: it only prints.
"""
from __future__ import annotations

import argparse
import json
import os
import secrets
import shlex
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
for p in (ROOT, ROOT / "tests", ROOT / "tests" / "interop"):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

import netns  # noqa: E402  (tests/netns.py, the module strongswan.py uses)
import strongswan as ss  # noqa: E402
from tests.gateway import OurGateway, connection  # noqa: E402
from tests.netns_e2e import tools  # noqa: E402

IKE = "aes256gcm16-prfsha256-x25519"
SITE_ID, GW_ID = "site.example.org", "gw.example.org"
NAMES = {"aes256gcm16": "AES-GCM-256", "chacha20poly1305": "ChaCha20-Poly1305"}


class Setup:
    """One tunnel between topo.site and topo.gw; ``pids`` are the two gateway processes."""

    def __init__(self, pair: str, cipher: str, workdir: Path):
        self.pair, self.cipher, self.dir = pair, cipher, workdir
        self.grp = netns.NetnsGroup("bth")
        self.ours: list[OurGateway] = []
        self.charons: list[ss.Charon] = []
        self.psk = "bench-" + secrets.token_hex(8)

    def __enter__(self) -> "Setup":
        try:
            self._start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _ours(self, ns, name: str, local: str, remote: str, lid: str, rid: str, lts: str, rts: str):
        conn = connection("s2s", local, remote, lid, rid, local_ts=lts, remote_ts=rts, psk=self.psk,
                          ike=IKE, esp=self.cipher, child="net")
        gw = OurGateway(ns, self.dir, name, [conn], listen=[local], log_level="info")
        self.ours.append(gw)
        return gw.start()

    def _charon(self, ns, name: str, conf: dict):
        ch = ss.Charon(ns, self.dir / name, name)
        ch.write_swanctl_conf(conf)
        self.charons.append(ch)
        ch.start()
        ch.load_all()
        return ch

    def _start(self) -> None:
        self.topo = t = ss.build_topology(self.grp)
        site_conf, gw_conf = ss.psk_site_to_site(t, self.psk, ike_proposals=IKE, esp_proposals=self.cipher,
                                                 site_id=SITE_ID, gw_id=GW_ID)
        if self.pair == "ours-ours":
            self._ours(t.gw, "gw", t.gw_ip, t.site_ip, GW_ID, SITE_ID, t.gw_net, t.site_net)
            site = self._ours(t.site, "site", t.site_ip, t.gw_ip, SITE_ID, GW_ID, t.site_net, t.gw_net)
            site.up("s2s")
        elif self.pair == "sw-sw":
            self._charon(t.gw, "gw", gw_conf)
            site = self._charon(t.site, "site", site_conf)
            site.initiate(child="net")
        elif self.pair == "ours-sw":
            self._charon(t.gw, "gw", gw_conf)
            site = self._ours(t.site, "site", t.site_ip, t.gw_ip, SITE_ID, GW_ID, t.site_net, t.gw_net)
            site.up("s2s")
        else:
            raise ValueError(self.pair)
        t.host_a.wait_ping(t.host_b_ip, timeout=10)
        # let TCP's path MTU settle (ours answers the first full-size DF packet with ICMP)
        t.host_a.run(["ping", "-c", "2", "-i", "0.2", "-M", "do", "-s", "1472", t.host_b_ip], check=False)

    @property
    def pids(self) -> dict[str, int]:
        out = {}
        for g in self.ours:
            out[f"ours/{g.name}"] = g.proc.pid
        for c in self.charons:
            out[f"charon/{c.name}"] = c.pid
        return out

    def close(self) -> None:
        for g in self.ours:
            try:
                g.stop()
            except Exception as e:  # noqa: BLE001
                print(f"warning: stopping {g.name}: {e}", file=sys.stderr)
        for c in self.charons:
            try:
                c.stop()
            except Exception as e:  # noqa: BLE001
                print(f"warning: stopping charon {c.name}: {e}", file=sys.stderr)
        self.grp.close()
        left = self.grp.leftovers()
        if left:
            print(f"warning: namespaces left: {left}", file=sys.stderr)


def measure(setup: Setup, seconds: float, streams: int) -> dict:
    t = setup.topo
    pids = setup.pids
    res = tools.iperf3(t.host_a, t.host_b, t.host_b_ip, seconds=seconds, streams=streams,
                       cpu_of=list(pids.values()))
    by_pid = res.get("_cpu", {})
    return {"mbps": tools.mbps(res), "retransmits": tools.retransmits(res),
            "cpu": {name: by_pid.get(pid) for name, pid in pids.items()}}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=10.0, help="iperf3 duration per measurement")
    ap.add_argument("--streams", default="1,4", help="comma-separated parallel stream counts")
    ap.add_argument("--ciphers", default="aes256gcm16,chacha20poly1305")
    ap.add_argument("--pairs", default="sw-sw,ours-ours,ours-sw")
    ap.add_argument("--repeat", type=int, default=1, help="runs per cell (the median is printed)")
    ap.add_argument("--json", metavar="FILE", help="also write all results as JSON")
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("needs root (network namespaces)", file=sys.stderr)
        return 2
    streams = [int(s) for s in args.streams.split(",")]
    ciphers = args.ciphers.split(",")
    pairs = args.pairs.split(",")
    if any(p.startswith("sw") or p.endswith("sw") for p in pairs):
        missing = ss.missing_strongswan_parts()
        if missing:
            print(f"strongSwan missing ({', '.join(missing)}): only ours-ours", file=sys.stderr)
            pairs = [p for p in pairs if p == "ours-ours"]
    print("command:", shlex.join([sys.executable, *sys.argv]))
    print(f"machine: {os.cpu_count()} CPUs, kernel {os.uname().release}, "
          f"strongSwan {ss.strongswan_version() if 'sw-sw' in pairs or 'ours-sw' in pairs else '-'}")
    results: dict[tuple, list[dict]] = {}
    work = Path(tempfile.mkdtemp(prefix="bth-"))
    try:
        for rep in range(args.repeat):
            for cipher in ciphers:
                for pair in pairs:
                    d = work / f"{pair}-{cipher}-{rep}"
                    with Setup(pair, cipher, d) as s:
                        for n in streams:
                            r = measure(s, args.seconds, n)
                            results.setdefault((pair, cipher, n), []).append(r)
                            cpu = ", ".join(f"{k} {v:.0f}%" for k, v in r["cpu"].items() if v is not None)
                            print(f"  [{rep + 1}/{args.repeat}] {pair:9} {NAMES.get(cipher, cipher):18} "
                                  f"{n} stream(s): {r['mbps']:7.1f} Mbit/s, {r['retransmits']} retr, {cpu}",
                                  flush=True)
    finally:
        import shutil
        shutil.rmtree(work, ignore_errors=True)

    def med(pair, cipher, n, key="mbps"):
        rs = results.get((pair, cipher, n))
        return statistics.median(r[key] for r in rs) if rs else None

    print()
    hdr = "| pair | cipher | streams | Mbit/s | ratio to sw-sw | retransmits | gateway CPU (% of a core) |"
    print(hdr)
    print("|" + "---|" * 7)
    for cipher in ciphers:
        for n in streams:
            base = med("sw-sw", cipher, n)
            for pair in pairs:
                v = med(pair, cipher, n)
                if v is None:
                    continue
                ratio = f"{v / base:.2f}x" if base else "-"
                rs = results[(pair, cipher, n)]
                cpu = rs[len(rs) // 2]["cpu"]
                cpu_s = ", ".join(f"{k} {c:.0f}" for k, c in cpu.items() if c is not None)
                print(f"| {pair} | {NAMES.get(cipher, cipher)} | {n} | {v:.0f} | {ratio} | "
                      f"{int(med(pair, cipher, n, 'retransmits'))} | {cpu_s} |")
    if args.json:
        Path(args.json).write_text(json.dumps(
            [{"pair": p, "cipher": c, "streams": n, "runs": rs} for (p, c, n), rs in results.items()], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
