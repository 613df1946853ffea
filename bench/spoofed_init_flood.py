#!/usr/bin/env python3
"""Spoofed IKE_SA_INIT flood against the real daemon (issue 14), in network namespaces created
and removed here. Not a test.

A flooder namespace sends IKE_SA_INIT requests from random spoofed sources (203.0.113.0/24,
raw socket, as fast as one Python process can) to our gateway for ``--seconds``; the gateway
routes its answers back to the flooder, which drops them. Meanwhile a client namespace running
our daemon connects and disconnects ``--connects`` times, and the control socket is asked for
``stats`` every 0.5 s. Prints: datagrams sent, COOKIEs the gateway sent, gateway CPU per
IKE_SA_INIT processed, legitimate connects that succeeded, control-socket answers.

    PYTHONPATH=. .venv/bin/python bench/spoofed_init_flood.py [--seconds 10] [--connects 5]
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.gateway import OurGateway, connection, wait_for  # noqa: E402
from tests.netns import NetnsGroup, require_root  # noqa: E402

GW, FLOODER = "198.51.100.1", "198.51.100.2"
GW2, CLIENT = "192.0.2.1", "192.0.2.7"

# Raw IPv4/UDP IKE_SA_INITs from random 203.0.113.x sources, random SPIi, for SECS seconds.
FLOOD = r"""
import os, random, socket, struct, sys, time
sys.path.insert(0, sys.argv[1])
from ikev2.manager import IkeManager
from tests.engine.harness import child, psk_policy
dst, secs = sys.argv[2], float(sys.argv[3])
pol = psk_policy("gw", "x.example.org", "gw.example.org", "203.0.113.9", dst,
                 [child("net", "10.9.0.0/24", "10.1.0.0/24")])
m = IkeManager([pol], os.urandom)
m.initiate("gw", 0.0)
(init, _s, _d), = m.pop_datagrams()
pkts = []
for i in range(1024):
    ike = os.urandom(8) + init[8:]
    src = socket.inet_aton(f"203.0.113.{random.randint(2, 254)}")
    udp = struct.pack("!HHHH", random.randint(1024, 65000), 500, 8 + len(ike), 0) + ike
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0, 64, 17, 0, src, socket.inet_aton(dst))
    pkts.append(ip + udp)
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
n = err = 0
end = time.monotonic() + secs
while time.monotonic() < end:
    for p in pkts:
        try:
            s.sendto(p, (dst, 0))
            n += 1
        except OSError:
            err += 1
print(n, err)
"""


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--connects", type=int, default=5)
    args = ap.parse_args()
    require_root()
    root = Path(__file__).resolve().parent.parent
    grp = NetnsGroup("flb")
    gws: list[OurGateway] = []
    flood = None
    try:
        tmp = Path(tempfile.mkdtemp(prefix="spoofed-flood-"))
        gw_ns, fl_ns, cl_ns = grp.add("gw"), grp.add("fl"), grp.add("cl")
        grp.veth(gw_ns, "wan0", fl_ns, "wan0", a_addrs=[f"{GW}/24"], b_addrs=[f"{FLOODER}/24"])
        grp.veth(gw_ns, "wan1", cl_ns, "wan0", a_addrs=[f"{GW2}/24"], b_addrs=[f"{CLIENT}/24"])
        for key in ("all", "default", "wan0"):
            gw_ns.sysctl(f"net.ipv4.conf.{key}.rp_filter", 0)
        gw_ns.ip("route", "add", "203.0.113.0/24", "via", FLOODER)  # answers go to the flooder
        fl_ns.ip("route", "add", "192.0.2.0/24", "via", GW)
        # A remote-access connection (any peer address), as on the gateways of issue 14: spoofed
        # INITs match it, so half-open SAs pile up to cookie_threshold, then COOKIEs are asked for.
        gw = OurGateway(gw_ns, tmp, "gw", [connection("c", GW2, "%any", "gw.example.org", "c.example.org",
                                                      local_ts="10.1.0.0/24", remote_ts="10.2.0.0/24")],
                        listen=[GW, GW2], gateway={"dataplane": "none"}, log_level="info")
        cl = OurGateway(cl_ns, tmp, "cl", [connection("gw", CLIENT, GW2, "c.example.org", "gw.example.org",
                                                      local_ts="10.2.0.0/24", remote_ts="10.1.0.0/24")],
                        listen=[CLIENT], gateway={"dataplane": "none"}, log_level="info")
        gws += [gw.start(), cl.start()]
        before = gw.control("stats")["ike"]
        cpu0, t0 = cpu_seconds(gw.proc.pid), time.monotonic()
        flood = fl_ns.popen([sys.executable, "-c", FLOOD, str(root), GW2, str(args.seconds)],
                            stdout=subprocess.PIPE, text=True)
        ok = tried = control_ok = control_tries = 0
        time.sleep(1.0)
        for _ in range(args.connects):
            control_tries += 1
            try:
                gw.control("stats", timeout=2.0)
                control_ok += 1
            except Exception:  # noqa: BLE001 - counted
                pass
            if time.monotonic() - t0 > args.seconds - 1:
                break
            tried += 1
            try:
                cl.up("gw")
                wait_for(lambda: cl.ike_sas("gw"), 5, "client IKE SA")
                ok += 1
                cl.down("gw")
                wait_for(lambda: not cl.ike_sas("gw", state=None), 5, "client IKE SA gone")
            except Exception as e:  # noqa: BLE001 - counted
                print("connect failed:", str(e).splitlines()[0][:200])
        out, _ = flood.communicate(timeout=args.seconds + 30)
        cpu, wall = cpu_seconds(gw.proc.pid) - cpu0, time.monotonic() - t0
        after = gw.control("stats")["ike"]
        sent, errors = map(int, out.split())
        cookies = after["cookies_sent"] - before["cookies_sent"]
        processed = cookies + after["inits_admitted"] - before["inits_admitted"]
        print(f"load {os.getloadavg()[0]:.1f}; flood {sent} datagrams in {args.seconds:g}s "
              f"({sent / args.seconds:,.0f}/s, {errors} send errors)")
        print(f"gateway dropped: {after['dropped']}")
        print(f"gateway: {processed} IKE_SA_INIT processed ({processed / wall:,.0f}/s), {cookies} COOKIEs, "
              f"half-open {after['half_open']}, CPU {cpu:.2f}s of {wall:.1f}s wall = "
              f"{cpu / max(processed, 1) * 1e6:.0f} us per INIT processed (incl. the connects)")
        print(f"legitimate connects: {ok}/{tried} tried during the flood; "
              f"control socket answered {control_ok}/{control_tries}")
    finally:
        if flood is not None and flood.poll() is None:
            flood.kill()
        for g in gws:
            g.stop()
        grp.close()


if __name__ == "__main__":
    main()
