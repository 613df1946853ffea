#!/usr/bin/env python3
"""Spoofed IKE_SA_INIT flood (issue 14) against our daemon and, in the same run and the same
topology, against a strongSwan 5.9.8 responder with default settings. Network namespaces are
created and removed here. Not a test.

For each responder: a flooder namespace sends IKE_SA_INIT requests from random spoofed sources
(203.0.113.0/24, raw socket, ``--flooders`` processes each sending pre-built packets with
sendmmsg, as fast as they can) to the responder for ``--seconds``; the responder routes its
answers back to the flooder namespace, which drops them (they are counted on its interface).
Meanwhile a client namespace running our daemon connects and disconnects up to ``--connects``
times (one connect = IKE_SA_INIT, COOKIE retry, IKE_AUTH; success = established within
``--connect-timeout`` seconds, with the client's default retransmissions at 4 s, 11.2 s ...),
and for our daemon the control socket is asked for ``stats`` every 0.5 s (2 s timeout).

Printed per responder: load average, flood rate, replies the flooder received (INITs answered;
the same count for both), the responder's CPU per INIT answered, datagrams the responder's
kernel dropped (UDP receive-buffer errors), legitimate connects and their times, control
answers.

    PYTHONPATH=. .venv/bin/python bench/spoofed_init_flood.py [--seconds 10] [--connects 5] \\
        [--flooders 2] [--only ours|strongswan]
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "interop"))

from tests.gateway import OurGateway, connection  # noqa: E402
from tests.netns import NetnsGroup, require_root  # noqa: E402

GW, FLOODER = "198.51.100.1", "198.51.100.2"
GW2, CLIENT = "192.0.2.1", "192.0.2.7"
PSK = "bench-only-psk-0123456789"
IKE, ESP = "aes256gcm16-prfsha256-x25519", "aes256gcm16"

# Raw IPv4/UDP IKE_SA_INITs from random 203.0.113.x sources, random SPIi, for SECS seconds:
# 1024 pre-built packets sent over and over with sendmmsg (256 per call).
FLOOD = r"""
import ctypes, os, random, socket, struct, sys, time
sys.path.insert(0, sys.argv[1])
from ikev2.manager import IkeManager
from tests.engine.harness import child, psk_policy
dst, secs, prefix = sys.argv[2], float(sys.argv[3]), sys.argv[4]
pol = psk_policy("gw", "x.example.org", "gw.example.org", "203.0.113.9", dst,
                 [child("net", "10.9.0.0/24", "10.1.0.0/24")])
m = IkeManager([pol], os.urandom)
m.initiate("gw", 0.0)
(init, _s, _d), = m.pop_datagrams()
N, B = 1024, 256
pkts = []
for i in range(N):
    ike = os.urandom(8) + init[8:]
    src = socket.inet_aton(prefix + str(random.randint(129, 254)))
    udp = struct.pack("!HHHH", random.randint(1024, 65000), 500, 8 + len(ike), 0) + ike
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0, 64, 17, 0, src, socket.inet_aton(dst))
    pkts.append(ip + udp)
class Iov(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]
class Msg(ctypes.Structure):
    _fields_ = [("name", ctypes.c_void_p), ("namelen", ctypes.c_uint32), ("iov", ctypes.c_void_p),
                ("iovlen", ctypes.c_size_t), ("control", ctypes.c_void_p), ("controllen", ctypes.c_size_t),
                ("flags", ctypes.c_int)]
class Hdr(ctypes.Structure):  # struct mmsghdr
    _fields_ = [("m", Msg), ("msg_len", ctypes.c_uint)]
libc = ctypes.CDLL("libc.so.6", use_errno=True)
libc.sendmmsg.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int]
bufs = [ctypes.create_string_buffer(p, len(p)) for p in pkts]
name = ctypes.create_string_buffer(struct.pack("=HH4s8x", socket.AF_INET, 0, socket.inet_aton(dst)), 16)
iovs, hdrs = (Iov * N)(), (Hdr * N)()
for i, p in enumerate(pkts):
    iovs[i].base, iovs[i].len = ctypes.addressof(bufs[i]), len(p)
    hdrs[i].m.name, hdrs[i].m.namelen = ctypes.addressof(name), 16
    hdrs[i].m.iov, hdrs[i].m.iovlen = ctypes.addressof(iovs[i]), 1
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
fd, base, size = s.fileno(), ctypes.addressof(hdrs), ctypes.sizeof(Hdr)
n = err = 0
end = time.monotonic() + secs
while time.monotonic() < end:
    off = 0
    while off < N:
        k = libc.sendmmsg(fd, base + off * size, min(B, N - off), 0)
        if k <= 0:
            err += 1
            off += 1
        else:
            n += k
            off += k
print(n, err)
"""


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rx_packets(ns, ifname: str = "wan0") -> int:
    return int(ns.run(["cat", f"/sys/class/net/{ifname}/statistics/rx_packets"]).stdout)


def udp_drops(ns) -> int:
    """UDP datagrams the namespace's kernel dropped for a full receive buffer (RcvbufErrors)."""
    lines = [ln.split() for ln in ns.run(["cat", "/proc/net/snmp"]).stdout.splitlines() if ln.startswith("Udp:")]
    return int(lines[1][lines[0].index("RcvbufErrors")])


def loadavg() -> str:
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


class Ours:
    name = "ours"

    def __init__(self, ns, tmp: Path):
        self.gw = OurGateway(ns, tmp, "gw", [connection("c", GW2, "%any", "gw.example.org", "c.example.org",
                                                        local_ts="10.1.0.0/24", remote_ts="10.2.0.0/24",
                                                        psk=PSK, ike=IKE, esp=ESP)],
                             listen=[GW, GW2], gateway={"dataplane": "none"},
                             log_level=os.environ.get("FLOOD_LOG", "info"))

    def start(self) -> int:
        self.gw.start()
        assert self.gw.proc is not None
        return self.gw.proc.pid

    def control(self) -> None:
        self.gw.control("stats", timeout=2.0)

    def summary(self) -> str:
        ike = self.gw.control("stats")["ike"]
        return (f"engine: {ike['cookies_sent']} COOKIEs sent, {ike['inits_admitted']} INITs admitted "
                f"({ike['inits_admitted_with_cookie']} with a COOKIE), half-open {ike['half_open']}, "
                f"dropped {ike['dropped']}")

    def stop(self) -> None:
        self.gw.stop()


class StrongSwan:
    name = "strongswan"

    def __init__(self, ns, tmp: Path):
        import strongswan as ss
        self.charon = ss.Charon(ns, tmp / "sw", "sw", log_levels={"default": 1})  # defaults (dos_protection on)
        self.charon.write_swanctl_conf({
            "connections": {"c": {
                "version": 2, "local_addrs": GW2, "remote_addrs": "%any", "proposals": IKE,
                "local": {"auth": "psk", "id": "gw.example.org"}, "remote": {"auth": "psk", "id": "c.example.org"},
                "children": {"net": {"local_ts": "10.1.0.0/24", "remote_ts": "10.2.0.0/24", "esp_proposals": ESP}}}},
            "secrets": {"ike-c": {"id": "c.example.org", "secret": PSK}}})

    def start(self) -> int:
        self.charon.start(timeout=20)
        self.charon.load_all()
        pid = self.charon.pid
        assert pid is not None
        return pid

    def control(self) -> None:
        self.charon.swanctl("stats", timeout=2.0)

    def summary(self) -> str:
        out = self.charon.swanctl("stats", check=False, timeout=10).stdout
        m = re.search(r"IKE_SAs:\s+(\d+) total, (\d+) half-open", out)
        return f"charon: IKE_SAs {m.group(1)} total, {m.group(2)} half-open" if m else "charon: stats unavailable"

    def stop(self) -> None:
        self.charon.stop(timeout=10)


def run_side(kind: str, args, root: Path) -> None:
    grp = NetnsGroup("flb" + kind[:2])
    floods: list[subprocess.Popen] = []
    resp = cl = None
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f"spoofed-flood-{kind}-"))
        gw_ns, fl_ns, cl_ns = grp.add("gw"), grp.add("fl"), grp.add("cl")
        grp.veth(gw_ns, "wan0", fl_ns, "wan0", a_addrs=[f"{GW}/24"], b_addrs=[f"{FLOODER}/24"])
        grp.veth(gw_ns, "wan1", cl_ns, "wan0", a_addrs=[f"{GW2}/24"], b_addrs=[f"{CLIENT}/24"])
        for key in ("all", "default", "wan0"):
            gw_ns.sysctl(f"net.ipv4.conf.{key}.rp_filter", 0)
        gw_ns.ip("route", "add", "203.0.113.0/24", "via", FLOODER)  # answers go to the flooder
        gw_ns.ip("route", "add", "192.0.2.128/25", "via", FLOODER)  # (also from the client's /24)
        fl_ns.ip("route", "add", "192.0.2.0/24", "via", GW)
        # strongSwan (kernel-libipsec) installs a Child SA only with one of its addresses in the local TS
        gw_ns.add_addr("lo", "10.1.0.1/32")
        resp = Ours(gw_ns, tmp) if kind == "ours" else StrongSwan(gw_ns, tmp)
        pid = resp.start()
        # the client: our daemon with default retransmission timers (4 s, x1.8)
        cl = OurGateway(cl_ns, tmp, "cl", [connection("gw", CLIENT, GW2, "c.example.org", "gw.example.org",
                                                      local_ts="10.2.0.0/24", remote_ts="10.1.0.0/24",
                                                      psk=PSK, ike=IKE, esp=ESP)],
                        listen=[CLIENT], gateway={"dataplane": "none"}, log_level="info")
        cl.start()
        time.sleep(0.5)
        load_before = loadavg()
        rx0, drops0 = rx_packets(fl_ns), udp_drops(gw_ns)
        cpu0, t0 = cpu_seconds(pid), time.monotonic()
        prefix = "192.0.2." if args.sources == "client-prefix" else "203.0.113."
        floods = [fl_ns.popen([sys.executable, "-c", FLOOD, str(root), GW2, str(args.seconds), prefix],
                              stdout=subprocess.PIPE, text=True) for _ in range(args.flooders)]
        control = {"ok": 0, "tries": 0, "worst": 0.0}
        stop = threading.Event()

        def ask_control() -> None:
            while not stop.wait(0.5):
                control["tries"] += 1
                t = time.monotonic()
                try:
                    resp.control()
                    control["ok"] += 1
                    control["worst"] = max(control["worst"], time.monotonic() - t)
                except Exception:  # noqa: BLE001 - counted
                    pass

        asker = threading.Thread(target=ask_control, daemon=True)
        asker.start()
        time.sleep(1.5)  # the flood is on (flooders start in ~1 s)
        ok, times, failed = 0, [], []
        for _ in range(args.connects):
            left = t0 + args.seconds - time.monotonic()
            if left < 3:
                break
            t = time.monotonic()
            try:
                cl.control("up", name="gw", timeout=min(args.connect_timeout, left))
                ok += 1
                times.append(time.monotonic() - t)
            except Exception as e:  # noqa: BLE001 - counted
                failed.append(f"{time.monotonic() - t:.1f}s: {str(e).splitlines()[0][:120]}")
            try:
                cl.control("down", name="gw", timeout=10)
            except Exception:  # noqa: BLE001 - nothing up
                pass
            time.sleep(0.3)
        outs = [f.communicate(timeout=args.seconds + 60)[0] for f in floods]
        cpu, wall = cpu_seconds(pid) - cpu0, time.monotonic() - t0
        stop.set()
        asker.join(5)
        time.sleep(0.5)
        answered, drops = rx_packets(fl_ns) - rx0, udp_drops(gw_ns) - drops0
        sent = sum(int(o.split()[0]) for o in outs)
        errors = sum(int(o.split()[1]) for o in outs)
        tried = ok + len(failed)
        print(f"== {kind}: load before {load_before}, after {loadavg()}")
        print(f"  flood: {sent:,} datagrams in {args.seconds:g} s = {sent / args.seconds:,.0f}/s "
              f"({args.flooders} flooder processes, {errors} failed sendmmsg calls), spoofed sources "
              f"{prefix}129-254")
        print(f"  answered: {answered:,} INITs ({answered / wall:,.0f}/s, {100 * answered / max(sent, 1):.1f} % "
              f"of the flood); kernel dropped {drops:,} datagrams (UDP receive buffers)")
        print(f"  CPU: {cpu:.2f} s of {wall:.1f} s wall = {cpu / max(answered, 1) * 1e6:.1f} us per INIT answered")
        print(f"  legitimate connects: {ok}/{tried} within {args.connect_timeout:g} s; times "
              f"{', '.join(f'{x:.2f}' for x in times)}" + (f"; failed: {failed}" if failed else ""))
        print(f"  control ({'stats' if kind == 'ours' else 'swanctl --stats'}, 2 s timeout): answered "
              f"{control['ok']}/{control['tries']}, slowest {control['worst']:.2f} s")
        print(f"  {resp.summary()}")
        sys.stdout.flush()
    finally:
        for f in floods:
            if f.poll() is None:
                f.kill()
        if cl is not None:
            cl.stop()
        if resp is not None:
            resp.stop()
        grp.close()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--connects", type=int, default=5)
    ap.add_argument("--connect-timeout", type=float, default=12.0)
    ap.add_argument("--flooders", type=int, default=2)
    ap.add_argument("--only", choices=("ours", "strongswan"))
    ap.add_argument("--sources", choices=("other-prefix", "client-prefix"), default="other-prefix",
                    help="spoof sources in 203.0.113.0/24 or in the legitimate client's own 192.0.2.0/24 "
                         "(the worst case for the per-prefix INIT sockets)")
    args = ap.parse_args()
    require_root()
    root = Path(__file__).resolve().parent.parent
    for kind in ("ours", "strongswan"):
        if args.only in (None, kind):
            run_side(kind, args, root)


if __name__ == "__main__":
    main()
