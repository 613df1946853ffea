#!/usr/bin/env python3
"""TCP throughput and small-packet UDP rate through the tunnel: our gateway vs. strongSwan
(kernel-libipsec), measured fairly: all tunnels up at once, short runs interleaved, ratios
taken per round.

    sudo .venv/bin/python bench/throughput.py                     # 6 rounds x 5 s per cell
    sudo .venv/bin/python bench/throughput.py --seconds 5 --rounds 6 --streams 1,4 \
        --ciphers aes256gcm16,chacha20poly1305 --router pass,segment
    sudo .venv/bin/python bench/throughput.py --seconds 1 --rounds 1 --streams 1 \
        --ciphers aes256gcm16 --router pass                    # does it run? (seconds)
    sudo .venv/bin/python bench/throughput.py --tests udp --rounds 3 --ciphers aes256gcm16 \
        --router pass --pairs ours-ours,sw-sw-tuned          # small-packet UDP rate only

Pairs, each on its own copy of the namespace topology (tests/interop/strongswan.py
``build_topology``: host_a -- site -- router -- gw -- host_b; the router has no route to the
protected networks):

* ``ours-ours``: our gateway (``vpn-gw run``, userspace ESP data plane) on both sides;
* ``sw-sw``: two charons (strongSwan, kernel-libipsec) exactly as shipped: the UDP receive
  buffer is the host's ``net.core.rmem_default`` (charon never sets SO_RCVBUF), TUN
  txqueuelen 500;
* ``sw-sw-tuned``: the same charons as a competent operator runs them: ``net.core.rmem_default``
  4 MiB on the host while this pair's namespaces and charons are built (it is read when a socket
  is created; the old value is restored right after), txqueuelen 5000 on both TUN devices;
* ``ours-sw``: our gateway on the site (initiator), a tuned charon on the gw;
* ``ours-ours-notso`` (only when asked for in ``--pairs``): ``ours-ours`` with ``tun_tso = false``
  (the default, ``"auto"``, offers TSO when the compiled helpers are in use);
* ``ours-ours-tso`` (only when asked for): ``ours-ours`` with ``tun_tso = true``;
* ``ours-ours-py`` (only when asked for): ``ours-ours`` without the compiled code
  (``VPN_GW_PURE_PYTHON=1`` in both daemons' environment: neither the helpers of vpn_gw/accel
  nor the compiled ESP path of esp/compiled.py), to measure what they give in the same run;
* ``ours-ours-holdoff`` (only when asked for): ``ours-ours`` with ``holdoff_us = 200`` on both
  gateways (the wake-up holdoff, vpn_gw/holdoff.py; off by default).
* ``ours-ours-worker`` (only when asked for): ``ours-ours`` with ``outbound_worker = true`` on
  both gateways (the encrypting direction in a second process, outbound_worker.py; off by default).

Fairness rules:
* Interleaved: for each router variant and cipher every pair's tunnel is up at the same time;
  each round runs one short iperf3 per pair and stream count, the pair order reversed every
  round, so background load lands on all pairs alike. A ratio is computed per round (ours /
  the baseline pair in the same round) and the median of those ratios is reported.
* txqueuelen 5000 on the TUN devices of every pair but ``sw-sw`` (ours too: the same tuning).
* The same TCP MSS for every pair (``--mss``, default 1360 = strongSwan's fixed TUN MTU 1400 -
  40; ours would otherwise send 1398-byte segments through its 1438-byte tunnel MTU). ``--mss
  0`` lets each use its own and says so.
* Router variants (``--router``): ``pass`` = veth as is: the router forwards our UDP GSO bursts
  whole and the receiving socket gets them whole (no physical hop does that); ``segment`` =
  ``ethtool -K tx-udp-segmentation off`` on the router's two interfaces, so it cuts every burst
  into datagrams as it forwards them, like a real link; ``segment-gro`` = ``segment`` with GRO on
  the gateways' WAN veths (``ethtool -K wan0 gro on``) and TSO off on the router's ends (a veth
  hands a forwarded packet to its peer's GRO only when the sending end has no TSO): a physical
  NIC does GRO by default, a veth only when asked, so this is the realistic receive side for a
  socket with ``UDP_GRO`` (ours); strongSwan's sockets do not ask for it and get single
  datagrams either way. (Before stop 20 the router kept TSO and this variant measured
  ``segment`` again: docs/esp.md "ChaCha20-Poly1305 runs four packets at a time".)
* ``--gateway-nice N`` renices every thread of every gateway (ours and charon alike) once the
  tunnels are up. On a machine shared with other work a single-threaded gateway (ours) is
  starved sooner than a multi-threaded one (charon: its own threads for the socket and the
  TUN device): measured, ours-ours at 40 000 datagrams/s behind the segmenting router lost
  20-33 % at niceness 0 (socket and TUN queues overflowing while the daemon used 15-25 % of a
  core) and 0-2.6 % at -10, same tunnel, alternating. Report the niceness with the numbers.
* Drop diagnostics per run: the UDP RcvbufErrors of each gateway namespace and the drops of its
  TUN device (rx+tx), as deltas over the run.

Small-packet UDP (``--tests udp``): per round and pair, iperf3 ``-u -l SIZE`` (``--udp-size``,
default 160-byte payloads: 188-byte IP packets) at each offered rate of ``--udp-rates`` in turn
(packets/s, lowest first, ``--udp-seconds`` each; while the highest rate is still delivered with
< 1 % loss the ladder goes on, 25 % higher each time, at most ``--udp-extend`` more runs, so a
ladder written for a slower machine does not cap a pair below its limit: the ratio of two pairs
that both delivered everything offered says nothing); per run the packets iperf3 managed to send,
the packets delivered (received - lost, as the iperf3 server counts them) and the loss. Reported
per pair: the highest delivered rate over the ladder (its median over the rounds, and the median
of the per-round ratios to the baseline) and the highest offered rate still delivered with
< 1 % loss, and each gateway's CPU time per delivered datagram (steadier than rates on a
loaded machine; its system time, the kernel's share, in parentheses). Received = bytes
received / size (iperf3's loss count misses a dropped tail).
iperf3 runs with ``-w 4M`` (socket buffers of both ends, every pair alike), and
the receiving host's own UDP RcvbufErrors are reported with the gateways' drops.
After every UDP run the benchmark waits (at most 10 s) until the pair's gateways are quiet
(< 5 % of a core over 0.2 s), so work left from a backlog does not land in the next run; a wait
longer than 0.4 s is printed ("gateways busy N s after the run").

``--udp-load gso`` replaces iperf3 by a lighter load (stop 21): bench/udp_gso_load.py on host_a
sends bursts of 64 datagrams per ``sendmsg`` (UDP GSO, paced to the offered rate; 0.3-0.6 us
of CPU per datagram against iperf3's 2.4-2.9 us for client and server together), and the receiver is
a UDP socket on host_b that is never read, its buffer at the minimum: the kernel delivers each
datagram to it as to iperf3's socket (a GSO super-packet from a gateway's TUN write is cut into
datagrams first) and counts it as InDatagrams or RcvbufErrors; delivered = their sum over the
run plus 0.2 s. The datagrams reach each gateway's TUN device one by one (the kernel cuts the
burst before the device, which offers neither gateway UDP segmentation). On this 2-vCPU machine
iperf3 takes more CPU than both of our gateways together, so with iperf3 the ratio measures
iperf3's share of the machine as much as the gateways; the light load measures what the
tunnel sustains. In the output the "iperf3" columns are then the sender (server 0).
``--udp-load iperf3,gso`` runs both loads per pair and round (the light load's results are
labelled ``PAIR+gso``). Besides the ratio to the baseline under the same load, the UDP table
gives the ratio to the baseline's best rate of the round under any of the loads run: the strict
comparison, since charon overloaded by the light sender delivers less than under iperf3, whose
client (short of CPU itself) never overloads it (docs/esp.md "Small packets: a lighter load
generator").

Printed per run: Mbit/s, TCP retransmits, gateway CPU (% of one core, /proc/PID/stat), drops;
then a table of median throughput and median per-round ratios.

CPU budget (issue 18: is 2x physically possible on this machine?). Per run (TCP and UDP), over
the iperf3 client's run: the machine's busy share from /proc/stat deltas (user + nice + system +
irq + softirq + steal over all CPUs, 200 % = both cores busy), its softirq share and idle; the
CPU of kernel threads (ksoftirqd, kworkers) and of "other processes" (every process outside this
script's process tree: other people's work; utime + stime, so a process that ends mid-run is
missed); the CPU of the iperf3 client and server (reaped with wait4, all threads). Before each
round the same for 1 s with every tunnel up and no traffic. For UDP, CPU microseconds per
delivered datagram: gateways (both), iperf3 (both), other processes, rest (= busy - those: the
kernel's work not charged to any of them) and total (= busy). This kernel accounts CPU by ticks
without IRQ time accounting, so softirq work (forwarding through the veths and the router)
counts for the process it interrupts: a sender's system call that pushes a datagram through
the veth pair usually carries the receiving side's softirq with it, and that time is in the
sender's column, not in rest. At the end a budget table per pair at its best rate (per round the
ladder's run with the highest delivered rate, medians over rounds) and per pair the ceiling
``cores / (iperf3 + rest + gateways us)`` = the delivered rate at which the pair's cost per
datagram fills the machine (other processes left out); for ours-ours also the gateways' us per
datagram that 2x the baseline's best delivered rate would need with iperf3 and rest unchanged
(<= 0: impossible even with free gateways). The cost per delivered datagram at a lossy best
rate includes the work spent on datagrams dropped later (the iperf3 client and the kernel in
its system calls paid for them), so each is printed twice: as measured and with iperf3 "if
none were lost" (client CPU per datagram sent + server CPU per datagram delivered). Everything (iperf3, all
gateways, the kernel's forwarding) shares this machine's CPUs: the numbers are "whole system"
numbers, and only meaningful with nothing else running. Needs root, iperf3, ethtool (for
``segment``), strongSwan for the sw pairs. A benchmark, not a test.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
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


TUNED_RMEM = 4 * 1024 * 1024
HOLDOFF_US = 200  # ours-ours-holdoff: [gateway] holdoff_us of both daemons
UDP_EXTEND_STEP = 1.25  # --udp-extend: the next offered rate when the ladder's top was not saturated
UDP_SOCKBUF = "4M"  # iperf3 -w for the UDP runs (both ends): the receiving host is not the bottleneck
TXQUEUELEN = 5000
QUIET_SECONDS = 1.0  # machine share measured with every tunnel up and no traffic, before each round
RMEM_DEFAULT = Path("/proc/sys/net/core/rmem_default")


@contextlib.contextmanager
def host_rmem_default(value: int):
    """net.core.rmem_default (host-wide, not per namespace) set while the block runs."""
    old = RMEM_DEFAULT.read_text().strip()
    RMEM_DEFAULT.write_text(str(value))
    try:
        yield
    finally:
        RMEM_DEFAULT.write_text(old)


class Setup:
    """One tunnel between topo.site and topo.gw; ``pids`` are the two gateway processes."""

    def __init__(self, pair: str, cipher: str, workdir: Path, router: str = "pass"):
        self.pair, self.cipher, self.dir, self.router = pair, cipher, workdir, router
        self.grp = netns.NetnsGroup("bth")
        self.ours: list[OurGateway] = []
        self.charons: list[ss.Charon] = []
        self.psk = "bench-" + secrets.token_hex(8)
        self.tuned = pair != "sw-sw"
        self.sink: subprocess.Popen | None = None  # --udp-load gso: the counting socket on host_b

    def __enter__(self) -> Setup:
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
        extra = {"ours-ours-tso": {"tun_tso": True}, "ours-ours-notso": {"tun_tso": False},
                 "ours-ours-holdoff": {"holdoff_us": HOLDOFF_US},
                 "ours-ours-worker": {"outbound_worker": True}}.get(self.pair)
        wrapper = ["env", "VPN_GW_PURE_PYTHON=1"] if self.pair == "ours-ours-py" else None
        gw = OurGateway(ns, self.dir, name, [conn], listen=[local], log_level="info", gateway=extra,
                        wrapper=wrapper)
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
        if self.router in ("segment", "segment-gro"):  # the router cuts GSO bursts into datagrams
            for dev in ("r0", "r2"):
                t.router.run(["ethtool", "-K", dev, "tx-udp-segmentation", "off"])
        if self.router == "segment-gro":  # the gateways' WAN interfaces do GRO, as NICs do by default
            # A veth hands a forwarded packet to its peer's GRO (NAPI) only when the sending end
            # has no TSO (veth_skb_is_eligible_for_gro): without this the "gro on" below did
            # nothing for the router's packets. On a wire the receiving NIC's GRO does not care.
            for dev in ("r0", "r2"):
                t.router.run(["ethtool", "-K", dev, "tso", "off"])
            for ns in (t.site, t.gw):
                ns.run(["ethtool", "-K", "wan0", "gro", "on"])
        site_conf, gw_conf = ss.psk_site_to_site(t, self.psk, ike_proposals=IKE, esp_proposals=self.cipher,
                                                 site_id=SITE_ID, gw_id=GW_ID)
        charon_env = host_rmem_default(TUNED_RMEM) if self.tuned else contextlib.nullcontext()
        if self.pair in ("ours-ours", "ours-ours-tso", "ours-ours-notso", "ours-ours-py", "ours-ours-holdoff",
                         "ours-ours-worker"):
            self._ours(t.gw, "gw", t.gw_ip, t.site_ip, GW_ID, SITE_ID, t.gw_net, t.site_net)
            site = self._ours(t.site, "site", t.site_ip, t.gw_ip, SITE_ID, GW_ID, t.site_net, t.gw_net)
            site.up("s2s")
        elif self.pair in ("sw-sw", "sw-sw-tuned"):
            with charon_env:
                self._charon(t.gw, "gw", gw_conf)
                site = self._charon(t.site, "site", site_conf)
            site.initiate(child="net")
        elif self.pair == "ours-sw":
            with charon_env:
                self._charon(t.gw, "gw", gw_conf)
            site = self._ours(t.site, "site", t.site_ip, t.gw_ip, SITE_ID, GW_ID, t.site_net, t.gw_net)
            site.up("s2s")
        else:
            raise ValueError(self.pair)
        t.host_a.wait_ping(t.host_b_ip, timeout=10)
        if self.tuned:
            for ns, tun in self.tuns():
                ns.ip("link", "set", tun, "txqueuelen", str(TXQUEUELEN))
        # let TCP's path MTU settle (a full-size DF packet meets the tunnel MTU once)
        t.host_a.run(["ping", "-c", "2", "-i", "0.2", "-M", "do", "-s", "1472", t.host_b_ip], check=False)

    def tuns(self) -> list[tuple]:
        """(namespace, TUN device) of both gateways."""
        t = self.topo
        site = "vpngw0" if self.pair.startswith("ours") else "ipsec0"
        gw = "vpngw0" if self.pair.startswith("ours-ours") else "ipsec0"
        return [(t.site, site), (t.gw, gw)]

    def drop_counters(self) -> dict[str, int]:
        """UDP RcvbufErrors per gateway namespace and of the receiving host, and TUN drops
        (rx + tx) per TUN device."""
        out = {}
        if self.sink is None:  # with the sink, host_b's RcvbufErrors are its count, not drops
            out["host_b udp_rcvbuf"] = udp_snmp(self.topo.host_b)["RcvbufErrors"]
        for ns, tun in self.tuns():
            side = "site" if ns is self.topo.site else "gw"
            out[f"{side} udp_rcvbuf"] = udp_snmp(ns)["RcvbufErrors"]
            try:
                st = json.loads(ns.run(["ip", "-j", "-s", "link", "show", "dev", tun], check=False).stdout)[0]
                s64 = st.get("stats64", st.get("stats", {}))
                out[f"{side} tun_drop"] = int(s64["rx"]["dropped"]) + int(s64["tx"]["dropped"])
            except (ValueError, LookupError, TypeError):
                pass
        return out

    @property
    def pids(self) -> dict[str, int]:
        out = {}
        for g in self.ours:
            out[f"ours/{g.name}"] = g.proc.pid
            worker = g.control("stats")["dataplane"].get("outbound_worker") or {}
            if worker.get("pid"):  # outbound_worker = true: its second process
                out[f"ours/{g.name}-worker"] = worker["pid"]
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


def renice(pid: int, nice: int) -> None:
    """Every thread of ``pid`` to ``nice`` (niceness is per thread on Linux: charon has many)."""
    try:
        tids = [int(t) for t in os.listdir(f"/proc/{pid}/task")]
    except OSError:
        return
    for tid in tids:
        try:
            os.setpriority(os.PRIO_PROCESS, tid, nice)
        except OSError:
            pass  # the thread ended meanwhile


def measure(setup: Setup, seconds: float, streams: int, mss: int, bidir: bool = False) -> dict:
    """One iperf3 TCP run; with ``bidir`` the streams go both ways at once (iperf3 --bidir) and
    the rate is both directions' together."""
    t = setup.topo
    pids = setup.pids
    before = setup.drop_counters()
    extra = (["-M", str(mss)] if mss else []) + (["--bidir"] if bidir else [])
    res = tools.iperf3(t.host_a, t.host_b, t.host_b_ip, seconds=seconds, streams=streams,
                       cpu_of=list(pids.values()), extra=extra or None)
    after = setup.drop_counters()
    by_pid = res.get("_cpu", {})
    mbps = tools.mbps(res)
    retr = tools.retransmits(res)
    if bidir:
        end = res["end"]
        mbps += end["sum_received_bidir_reverse"]["bits_per_second"] / 1e6
        retr += int(end["sum_sent_bidir_reverse"].get("retransmits", 0))
    return {"mbps": mbps, "retransmits": retr,
            "cpu": {name: by_pid.get(pid) for name, pid in pids.items()},
            "iperf3_cpu": res["_iperf3_cpu"], "machine": res["_machine"],
            "drops": {k: after[k] - before.get(k, 0) for k in after}}


SINK_PORT = 5301  # not iperf3's 5201: both loads may run against the same host_b
# The sink of ``--udp-load gso``: a UDP socket on host_b that is never read, its receive buffer
# at the kernel's minimum. The kernel delivers every datagram to it as to any socket (a GSO
# super-packet from a gateway's TUN write is cut into datagrams first, as for iperf3's socket)
# and, the buffer being full after the first few, drops it as a receive-buffer error. Delivered
# = host_b's UDP InDatagrams + RcvbufErrors over the run: what reached the receiving socket.
SINK = """
import socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1)
s.bind((sys.argv[1], int(sys.argv[2])))
print("ready", flush=True)
time.sleep(float(sys.argv[3]))
"""
SINK_LIFETIME = 7200.0  # seconds; the namespace group kills it with the setup in any case
GSO_LOAD = ROOT / "bench" / "udp_gso_load.py"
DRAIN_SECONDS = 0.2  # after the sender ends, before the sink's counters are read: the queues empty


def udp_snmp(ns) -> dict[str, int]:
    """The ``Udp:`` counters of /proc/net/snmp in ``ns``."""
    rows = [line.split() for line in ns.run(["cat", "/proc/net/snmp"]).stdout.splitlines()
            if line.startswith("Udp:")]
    return dict(zip(rows[0][1:], (int(x) for x in rows[1][1:]), strict=True))


def sink_packets(ns) -> int:
    """Datagrams that reached a UDP socket in ``ns`` so far (queued or dropped for a full buffer)."""
    c = udp_snmp(ns)
    return c["InDatagrams"] + c["RcvbufErrors"]


def start_sink(setup: Setup) -> None:
    """The counting sink on host_b (once per setup)."""
    t = setup.topo
    proc = t.host_b.popen([sys.executable, "-c", SINK, t.host_b_ip, str(SINK_PORT), str(SINK_LIFETIME)],
                          stdout=subprocess.PIPE)
    line = proc.stdout.readline() if proc.stdout else b""
    if line.strip() != b"ready":
        raise RuntimeError("the UDP sink on host_b did not start")
    setup.sink = proc


def gso_load(setup: Setup, seconds: float, pps: int, size: int, burst: int = 64) -> dict:
    """One run of bench/udp_gso_load.py from host_a to a counting sink on host_b (``--udp-load
    gso``), in the shape of :func:`tools.iperf3`'s UDP result: ``end`` with the datagrams sent
    and the bytes delivered, ``_cpu``/``_cpu_system`` of the gateways, ``_iperf3_cpu`` with the
    sender as "client" and the sink as "server" (0: the sink never runs; the kernel's delivery
    to its socket runs in the decrypting gateway's system calls, as it did for iperf3's),
    ``_machine``."""
    t = setup.topo
    if setup.sink is None:
        start_sink(setup)
    pids = list(setup.pids.values())
    n0 = sink_packets(t.host_b)
    with tempfile.TemporaryFile() as out_f:
        before = tools.cpu_sample(pids)
        cli = t.host_a.popen([sys.executable, str(GSO_LOAD), t.host_b_ip, str(SINK_PORT), str(pps), str(size),
                              f"{seconds:g}", "--burst", str(burst)], stdout=out_f)
        cli_cpu = tools._wait_cpu(cli, timeout=seconds + 20)
        window = tools.cpu_over(before, tools.cpu_sample(pids))
        if cli_cpu is None:
            netns.kill_pid(cli.pid, timeout=2.0)
            raise RuntimeError(f"udp_gso_load still running after {seconds + 20:g} s")
        time.sleep(DRAIN_SECONDS)
        delivered = sink_packets(t.host_b) - n0
        out_f.seek(0)
        try:
            info = json.loads(out_f.read().decode(errors="replace").strip().splitlines()[-1])
        except (ValueError, IndexError):
            raise RuntimeError(f"udp_gso_load gave no result (rc {cli.returncode})") from None
    return {"end": {"sum_sent": {"packets": info["sent"], "seconds": info["seconds"]},
                    "sum_received": {"bytes": delivered * size}},
            "_cpu": window["cpu"], "_cpu_system": window["cpu_system"],
            "_iperf3_cpu": {"client": round(100.0 * cli_cpu / window["elapsed"], 1), "server": 0.0},
            "_machine": window["machine"]}


SETTLE_LIMIT = 10.0  # seconds: at most this long after a UDP run for the gateways to go quiet
SETTLE_BUSY = 5.0  # % of one core, all gateways of the pair together over SETTLE_STEP: quiet
SETTLE_STEP = 0.2


def settle(setup: Setup) -> float:
    """Wait (at most SETTLE_LIMIT) until the pair's gateways are quiet after a run; returns the
    seconds waited. A gateway behind on a backlog when its sender stopped goes on working (charon
    queues datagrams inside libipsec: measured, 1-2 s at 200 % of the machine after an 800k/s
    run): without the wait that work would land in the next run, another pair's or its own."""
    pids = list(setup.pids.values())
    hz = os.sysconf("SC_CLK_TCK")
    t0 = time.monotonic()
    while time.monotonic() - t0 < SETTLE_LIMIT:
        c0 = {pid: tools._cpu_split(pid) for pid in pids}
        time.sleep(SETTLE_STEP)
        c1 = {pid: tools._cpu_split(pid) for pid in pids}
        ticks = sum(sum(c1[p]) - sum(c0[p]) for p in pids if c0[p] and c1[p])  # type: ignore[arg-type]
        if 100.0 * ticks / hz / SETTLE_STEP < SETTLE_BUSY:
            break
    return time.monotonic() - t0


def measure_udp(setup: Setup, seconds: float, pps: int, size: int, load: str = "iperf3",
                burst: int = 64) -> dict:
    """One UDP run offering ``pps`` datagrams/s of ``size`` payload bytes: iperf3, or with
    ``load="gso"`` the light sender and the counting sink (:func:`gso_load`)."""
    t = setup.topo
    pids = setup.pids
    before = setup.drop_counters()
    if load == "gso":
        res = gso_load(setup, seconds, pps, size, burst)
    else:
        res = tools.iperf3(t.host_a, t.host_b, t.host_b_ip, seconds=seconds, cpu_of=list(pids.values()),
                           extra=["-u", "-b", str(pps * size * 8), "-l", str(size), "-w", UDP_SOCKBUF])
    after = setup.drop_counters()
    settled = settle(setup)
    end = res["end"]
    sent, rcvd = end.get("sum_sent", end.get("sum", {})), end.get("sum_received", end.get("sum", {}))
    secs = float(sent.get("seconds") or seconds)
    n_sent = int(sent.get("packets", 0))
    # received = bytes / size: iperf3's own loss count misses datagrams lost after the last one
    # it received (a tail dropped in a full queue)
    n_rcvd = int(rcvd.get("bytes", 0)) // size
    by_pid = res.get("_cpu", {})
    cpu = {name: by_pid.get(pid) for name, pid in pids.items()}
    rate = n_rcvd / secs
    return {"offered_pps": pps, "sent_pps": n_sent / secs, "delivered_pps": rate, "settle_s": settled,
            "loss_pct": 100.0 * max(0, n_sent - n_rcvd) / n_sent if n_sent else 0.0,
            "cpu": cpu,
            # CPU time per delivered datagram (us): steadier than the rate on a loaded machine
            "cpu_us": {name: c * 1e4 / rate for name, c in cpu.items() if c is not None and n_rcvd},
            # of which system time (the kernel: system calls and the forwarding charged to them)
            "cpu_sys_us": {name: res["_cpu_system"][pid] * 1e4 / rate for name, pid in pids.items()
                           if pid in res.get("_cpu_system", {}) and n_rcvd},
            "iperf3_cpu": res["_iperf3_cpu"], "machine": res["_machine"],
            "budget_us": budget_us(cpu, res["_iperf3_cpu"], res["_machine"], rate, n_sent / secs),
            "drops": {k: after[k] - before.get(k, 0) for k in after}}


def budget_us(gateways: dict[str, float | None], iperf3: dict[str, float], machine: dict[str, float],
              rate: float, sent_rate: float) -> dict[str, float]:
    """The machine's busy CPU time per delivered datagram (us), split: both ``gateways``, both
    ``iperf3`` processes, ``others`` (processes outside this benchmark: other work on the
    machine), the ``rest`` (busy time charged to none of them: softirqs in ksoftirqd or on an
    idle CPU, i.e. the kernel's forwarding through the veths and the router, kworkers, the idle
    daemons of the other pairs, this script) and the ``total``; ``iperf3_lossless`` = the
    iperf3 client per datagram it sent + the server per datagram delivered: what iperf3 would
    cost per delivered datagram if none were dropped on the way (a dropped one cost the client
    and the kernel in its system call as much as a delivered one). Inputs in % of one core over
    the run; empty without a delivered datagram or a gateway's CPU."""
    if rate <= 0 or any(c is None for c in gateways.values()) or "server" not in iperf3:
        return {}
    us = {"gateways": sum(c for c in gateways.values() if c is not None) * 1e4 / rate,
          "iperf3": (iperf3["client"] + iperf3["server"]) * 1e4 / rate,
          "others": machine["others"] * 1e4 / rate,
          "total": machine["busy"] * 1e4 / rate,
          "iperf3_lossless": iperf3["client"] * 1e4 / max(sent_rate, rate) + iperf3["server"] * 1e4 / rate}
    us["rest"] = us["total"] - us["gateways"] - us["iperf3"] - us["others"]
    return us


def machine_text(r: dict) -> str:
    """Per-run text: the machine's busy/softirq/idle share and both iperf3 processes' CPU."""
    m, ip = r["machine"], r["iperf3_cpu"]
    steal = f", steal {m['steal']:.0f}" if m["steal"] >= 0.5 else ""
    return (f"machine busy {m['busy']:.0f}% of {100 * (os.cpu_count() or 1)} (softirq {m['softirq']:.0f}{steal}, "
            f"kthreads {m['kthreads']:.0f}, other processes {m['others']:.0f}), idle {m['idle']:.0f}%; iperf3 "
            + ", ".join(f"{k} {v:.0f}%" for k, v in ip.items()))


def udp_summary(runs: list[dict]) -> tuple[float, int]:
    """(highest delivered pps, highest offered pps with < 1 % loss) of one round's ladder."""
    best = max((r["delivered_pps"] for r in runs), default=0.0)
    clean = max((r["offered_pps"] for r in runs if r["loss_pct"] < 1.0), default=0)
    return best, clean


def quiet_machine(seconds: float) -> dict[str, float]:
    """The machine's CPU share over ``seconds`` with every tunnel up and no traffic: what the
    rest of the machine (other work, the idle daemons) costs before a datagram is sent."""
    m0, o0, t0 = tools.machine_ticks(), tools.outside_ticks(), time.monotonic()
    time.sleep(seconds)
    m1, o1 = tools.machine_ticks(), tools.outside_ticks()
    return tools.machine_share(m0, m1) | tools.outside_share(o0, o1, time.monotonic() - t0)


def best_runs(ladders: list[list[dict]]) -> list[dict]:
    """Per round, the run of the ladder that delivered the most datagrams/s."""
    return [max(ld, key=lambda r: r["delivered_pps"]) for ld in ladders]


BUDGET_PARTS = ("total", "gateways", "iperf3", "rest", "others", "iperf3_lossless")


def udp_label(pair: str, load: str) -> str:
    """The name a pair's UDP results go under: the pair for iperf3, ``pair+gso`` for the light load."""
    return pair if load == "iperf3" else f"{pair}+{load}"


def udp_load_of(label: str) -> str:
    return label.partition("+")[2] or "iperf3"


def print_budget(udp: dict[tuple, list[list[dict]]], quiet: dict[tuple, list[dict]], baseline: str,
                 size: int) -> None:
    """The CPU budget of each pair at its best rate (per round the ladder's run with the
    highest delivered rate; medians over the rounds, so the parts need not add up exactly
    beyond two rounds), then per pair the ceiling: the delivered rate at which its measured cost
    per datagram (other processes left out) fills every core, as measured and with iperf3 at its
    lossless cost (:func:`budget_us`); for ours-ours also the gateway cost per datagram that 2x
    the baseline's best delivered rate would need with iperf3 and rest unchanged."""
    cores = os.cpu_count() or 1
    print()
    print(f"CPU budget at each pair's best rate (UDP {size} B; medians over rounds; us = CPU microseconds per "
          f"delivered datagram; machine = {cores} CPUs = {100 * cores} %):")
    print("| router | pair | cipher | delivered pps (loss %) | machine busy % (softirq) | no traffic: busy % "
          "(other processes) | total us | gateways us | iperf3 us | rest us (kernel forwarding, softirq) "
          "| other processes us | iperf3 us if none were lost |")
    print("|" + "---|" * 12)
    budget: dict[tuple, dict[str, float]] = {}
    for (router, cipher, pair), ladders in udp.items():
        tops = [r for r in best_runs(ladders) if r["budget_us"]]
        if not tops:
            continue
        med = {k: statistics.median(r["budget_us"][k] for r in tops) for k in BUDGET_PARTS}
        med["pps"] = statistics.median(r["delivered_pps"] for r in tops)
        budget[(router, cipher, pair)] = med
        busy = statistics.median(r["machine"]["busy"] for r in tops)
        soft = statistics.median(r["machine"]["softirq"] for r in tops)
        loss = statistics.median(r["loss_pct"] for r in tops)
        qs = quiet.get((router, cipher))
        q_s = (f"{statistics.median(x['busy'] for x in qs):.0f} ({statistics.median(x['others'] for x in qs):.0f})"
               if qs else "-")
        print(f"| {router} | {pair} | {NAMES.get(cipher, cipher)} | {med['pps']:.0f} ({loss:.0f}) | "
              f"{busy:.0f} ({soft:.0f}) | {q_s} | " + " | ".join(f"{med[k]:.1f}" for k in BUDGET_PARTS) + " |")
    for (router, cipher, pair), b in budget.items():
        gw = b["gateways"]
        non_gw = b["iperf3"] + b["rest"]  # other processes left out: the machine to ourselves
        lossless = b["iperf3_lossless"] + b["rest"]
        line = (f"ceiling {router} {NAMES.get(cipher, cipher)} {pair}: {cores} cores / ({non_gw:.1f} us iperf3 + rest "
                f"+ {gw:.1f} us gateways) = {cores * 1e6 / (non_gw + gw):.0f} pps; iperf3 lossless: "
                f"{cores} cores / ({lossless:.1f} + {gw:.1f} us) = {cores * 1e6 / (lossless + gw):.0f} pps")
        base = budget.get((router, cipher, udp_label(baseline, udp_load_of(pair))))
        if pair.startswith("ours-ours") and base:
            baseline_s = udp_label(baseline, udp_load_of(pair))
            target = 2 * base["pps"]
            need = cores * 1e6 / target - non_gw
            line += (f"; 2x {baseline_s} ({base['pps']:.0f} pps) = {target:.0f} pps needs both gateways together "
                     f"at {need:.1f} us/datagram (iperf3 lossless: {cores * 1e6 / target - lossless:.1f})")
            if need <= 0:
                line += " (<= 0: impossible even with free gateways)"
        print(line)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=5.0, help="iperf3 duration per run")
    ap.add_argument("--rounds", type=int, default=6, help="interleaved rounds per cipher and router variant")
    ap.add_argument("--streams", default="1,4", help="comma-separated parallel stream counts")
    ap.add_argument("--ciphers", default="aes256gcm16,chacha20poly1305")
    ap.add_argument("--pairs", default="ours-ours,sw-sw-tuned,sw-sw,ours-sw")
    ap.add_argument("--bidir", action="store_true",
                    help="TCP: the streams in both directions at once (iperf3 --bidir); Mbit/s is the sum")
    ap.add_argument("--router", default="pass,segment", help="router variants: pass, segment, segment-gro (see above)")
    ap.add_argument("--baseline", default="sw-sw-tuned", help="the pair ratios are taken against")
    ap.add_argument("--mss", type=int, default=1360, help="TCP MSS for every pair (0: each its own)")
    ap.add_argument("--tests", default="tcp,udp", help="tcp (iperf3 TCP), udp (small-packet UDP rate), or both")
    ap.add_argument("--udp-rates", default="20000,40000,80000,160000",
                    help="offered UDP packets/s, comma-separated, run lowest first")
    ap.add_argument("--udp-extend", type=int, default=6,
                    help="while the highest offered rate is still delivered with < 1 %% loss, raise it by 25 %% "
                         "(at most this many more runs per ladder)")
    ap.add_argument("--udp-size", type=int, default=160, help="UDP payload bytes (64-200 is the small-packet case)")
    ap.add_argument("--udp-seconds", type=float, default=2.0, help="iperf3 duration per offered UDP rate")
    ap.add_argument("--udp-load", default="iperf3",
                    help="small-packet UDP loads, comma-separated, each run per pair and round: iperf3 (client "
                         "and server), gso: bench/udp_gso_load.py "
                         "(UDP GSO bursts, 0.3-0.6 us/datagram) into a UDP socket on host_b that is never read")
    ap.add_argument("--udp-burst", type=int, default=64, help="--udp-load gso: datagrams per sendmsg (1-64)")
    ap.add_argument("--gateway-nice", type=int, default=0,
                    help="niceness of every gateway thread (ours and charon alike), e.g. -10 on a machine "
                         "shared with other work: keeps the comparison about the gateways, not the scheduler")
    ap.add_argument("--json", metavar="FILE", help="also write all results as JSON")
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("needs root (network namespaces)", file=sys.stderr)
        return 2
    tests = [x for x in args.tests.split(",") if x]
    if any(x not in ("tcp", "udp") for x in tests):
        ap.error(f"unknown test in {args.tests!r}")
    streams = [int(x) for x in args.streams.split(",")] if "tcp" in tests else []
    udp_rates = sorted(int(x) for x in args.udp_rates.split(",")) if "udp" in tests else []
    loads = [x for x in args.udp_load.split(",") if x] if "udp" in tests else []
    if any(x not in ("iperf3", "gso") for x in loads):
        ap.error(f"unknown UDP load in {args.udp_load!r}")
    if not 1 <= args.udp_burst <= 64:
        ap.error("--udp-burst must be 1-64 (datagrams per sendmsg of bench/udp_gso_load.py)")
    ciphers = args.ciphers.split(",")
    pairs = args.pairs.split(",")
    routers = args.router.split(",")
    if any("sw" in p for p in pairs):
        missing = ss.missing_strongswan_parts()
        if missing:
            print(f"strongSwan missing ({', '.join(missing)}): only ours-ours", file=sys.stderr)
            pairs = [p for p in pairs if p == "ours-ours"]
    if any(r.startswith("segment") for r in routers) and shutil.which("ethtool") is None:
        print("ethtool missing: router variants 'segment*' left out", file=sys.stderr)
        routers = [r for r in routers if not r.startswith("segment")]
    print("command:", shlex.join([sys.executable, *sys.argv]))
    print(f"machine: {os.cpu_count()} CPUs, kernel {os.uname().release}, load average "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}, strongSwan "
          f"{ss.strongswan_version() if any('sw' in p for p in pairs) else '-'}")
    print(f"gateway niceness: {args.gateway_nice} (every thread, both pairs)")
    print(f"TCP MSS: {args.mss if args.mss else 'each its own (ours 1398, strongSwan 1360)'}; "
          f"tuned = rmem_default {TUNED_RMEM} while charon starts, TUN txqueuelen {TXQUEUELEN}")
    if "iperf3" in loads:
        print("UDP load iperf3: iperf3 -u (client and server; the iperf3 columns are both)")
    if "gso" in loads:
        print(f"UDP load gso (pairs labelled +gso): bench/udp_gso_load.py, bursts of {args.udp_burst} datagrams per "
              "sendmsg, into a "
              "UDP socket on host_b that is never read (InDatagrams + RcvbufErrors; the iperf3 columns are that "
              "sender, server 0)")
    if args.bidir:
        print("TCP: --bidir (each stream count in both directions at once; Mbit/s = both directions)")
    runs: dict[tuple, list[dict]] = {}  # (router, cipher, pair, streams) -> one run per round
    udp: dict[tuple, list[list[dict]]] = {}  # (router, cipher, pair) -> per round, the ladder's runs
    quiet: dict[tuple, list[dict]] = {}  # (router, cipher) -> per round, the machine with no traffic
    work = Path(tempfile.mkdtemp(prefix="bth-"))
    try:
        for router in routers:
            for cipher in ciphers:
                with contextlib.ExitStack() as stack:
                    setups = {}
                    for pair in pairs:  # all tunnels up at once
                        setups[pair] = stack.enter_context(Setup(pair, cipher, work / f"{router}-{cipher}-{pair}",
                                                                 router))
                    if args.gateway_nice:
                        for st in setups.values():
                            for pid in st.pids.values():
                                renice(pid, args.gateway_nice)
                    for rnd in range(args.rounds):
                        q = quiet_machine(QUIET_SECONDS)
                        quiet.setdefault((router, cipher), []).append(q)
                        print(f"  [{router} r{rnd + 1}/{args.rounds}] {NAMES.get(cipher, cipher)}: all tunnels up, "
                              f"no traffic for {QUIET_SECONDS:g} s: machine busy {q['busy']:.0f}% (other processes "
                              f"{q['others']:.0f})", flush=True)
                        order = pairs if rnd % 2 == 0 else pairs[::-1]
                        for pair in order:
                            for n in streams:
                                r = measure(setups[pair], args.seconds, n, args.mss, args.bidir)
                                r["round"] = rnd
                                runs.setdefault((router, cipher, pair, n), []).append(r)
                                cpu = ", ".join(f"{k} {v:.0f}%" for k, v in r["cpu"].items() if v is not None)
                                drops = ", ".join(f"{k} {v}" for k, v in r["drops"].items() if v)
                                print(f"  [{router} r{rnd + 1}/{args.rounds}] {pair:11} "
                                      f"{NAMES.get(cipher, cipher):18} {n} stream(s): {r['mbps']:7.1f} Mbit/s, "
                                      f"{r['retransmits']} retr, {cpu}; drops: {drops or 'none'}; "
                                      f"{machine_text(r)}", flush=True)
                            for load in loads:
                                label = udp_label(pair, load)
                                ladder = []
                                rates = list(udp_rates)
                                while rates:
                                    pps = rates.pop(0)
                                    u = measure_udp(setups[pair], args.udp_seconds, pps, args.udp_size, load,
                                                    args.udp_burst)
                                    ladder.append(u)
                                    more = len(ladder) < len(udp_rates) + args.udp_extend
                                    if not rates and u["loss_pct"] < 1.0 and more:
                                        rates.append(int(pps * UDP_EXTEND_STEP))  # not saturated yet: go on
                                    cpu = ", ".join(f"{k} {v:.0f}%" for k, v in u["cpu"].items() if v is not None)
                                    drops = ", ".join(f"{k} {v}" for k, v in u["drops"].items() if v)
                                    print(f"  [{router} r{rnd + 1}/{args.rounds}] {label:11} "
                                          f"{NAMES.get(cipher, cipher):18} UDP {args.udp_size} B offered {pps:>7} pps: "
                                          f"sent {u['sent_pps']:8.0f}, delivered {u['delivered_pps']:8.0f} pps, "
                                          f"loss {u['loss_pct']:.1f} %, {cpu}; CPU us/datagram "
                                          + ", ".join(f"{k} {v:.1f}" + (f" (system {u['cpu_sys_us'][k]:.1f})"
                                                                        if k in u["cpu_sys_us"] else "")
                                                      for k, v in u["cpu_us"].items())
                                          + f"; drops: {drops or 'none'}; {machine_text(u)}"
                                          + (f"; gateways busy {u['settle_s']:.1f} s after the run"
                                             if u["settle_s"] > 2 * SETTLE_STEP else "")
                                          + ("; us/datagram: " + ", ".join(f"{k} {v:.1f}" for k, v in
                                                                           u["budget_us"].items())
                                             if u["budget_us"] else ""), flush=True)
                                if ladder:
                                    udp.setdefault((router, cipher, label), []).append(ladder)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    def ratios(router, cipher, pair, n, base):
        mine = {r["round"]: r["mbps"] for r in runs.get((router, cipher, pair, n), [])}
        ref = {r["round"]: r["mbps"] for r in runs.get((router, cipher, base, n), [])}
        return [mine[k] / ref[k] for k in mine if ref.get(k)]

    if runs:
        print()
        print(f"| router | pair | cipher | streams | Mbit/s (median) | ratio to {args.baseline} (median of "
              "per-round ratios, min-max) | ratio to sw-sw | retransmits | drops (sum) | gateway CPU (% of a core) |")
        print("|" + "---|" * 10)
        for router in routers:
            for cipher in ciphers:
                for n in streams:
                    for pair in pairs:
                        rs = runs.get((router, cipher, pair, n))
                        if not rs:
                            continue
                        rb = ratios(router, cipher, pair, n, args.baseline)
                        rs_ = ratios(router, cipher, pair, n, "sw-sw")
                        rb_s = f"{statistics.median(rb):.2f}x ({min(rb):.2f}-{max(rb):.2f})" if rb else "-"
                        rs_s = f"{statistics.median(rs_):.2f}x" if rs_ else "-"
                        drops: dict[str, int] = {}
                        for r in rs:
                            for k, v in r["drops"].items():
                                drops[k] = drops.get(k, 0) + v
                        mid = sorted(rs, key=lambda r: r["mbps"])[len(rs) // 2]
                        cpu_s = ", ".join(f"{k} {c:.0f}" for k, c in mid["cpu"].items() if c is not None)
                        drop_s = ", ".join(f"{k} {v}" for k, v in drops.items() if v) or "none"
                        print(f"| {router} | {pair} | {NAMES.get(cipher, cipher)} | {n} | "
                              f"{statistics.median(r['mbps'] for r in rs):.0f} | {rb_s} | {rs_s} | "
                              f"{int(statistics.median(r['retransmits'] for r in rs))} | {drop_s} | {cpu_s} |")
    if udp:
        print()
        print(f"| router | pair | cipher | UDP payload | delivered pps, best of the ladder (median over rounds) | "
              f"ratio to {args.baseline} (median of per-round ratios, min-max) | ratio to {args.baseline}'s best "
              "under any load of the round (median, min-max) | highest offered pps with < 1 % "
              "loss (median) | gateway CPU at the best rate (% of a core) | gateway CPU us per datagram "
              "(median over all runs; of which system time) |")
        print("|" + "---|" * 10)
        for (router, cipher, pair), ladders in udp.items():
            base = udp.get((router, cipher, udp_label(args.baseline, udp_load_of(pair))), [])
            best = [udp_summary(ld)[0] for ld in ladders]
            rat = [udp_summary(ld)[0] / udp_summary(b)[0] for ld, b in zip(ladders, base, strict=False)
                   if udp_summary(b)[0]]
            # the strictest comparison: the baseline's best rate of the round under whichever load
            # served it better (charon delivers less under the light load than under iperf3)
            bases = [udp.get((router, cipher, udp_label(args.baseline, ld_)), []) for ld_ in loads]
            any_best = [max((udp_summary(b[i])[0] for b in bases if i < len(b)), default=0.0)
                        for i in range(len(ladders))]
            rat_any = [udp_summary(ld)[0] / b for ld, b in zip(ladders, any_best, strict=True) if b]
            rat_any_s = (f"{statistics.median(rat_any):.2f}x ({min(rat_any):.2f}-{max(rat_any):.2f})"
                         if rat_any else "-")
            clean = [udp_summary(ld)[1] for ld in ladders]
            top = max(ladders[len(ladders) // 2], key=lambda r: r["delivered_pps"])
            cpu_s = ", ".join(f"{k} {c:.0f}" for k, c in top["cpu"].items() if c is not None)
            rat_s = f"{statistics.median(rat):.2f}x ({min(rat):.2f}-{max(rat):.2f})" if rat else "-"
            us: dict[str, list[float]] = {}
            sys_us: dict[str, list[float]] = {}
            for ld in ladders:
                for r in ld:
                    for k, v in r["cpu_us"].items():
                        us.setdefault(k, []).append(v)
                    for k, v in r.get("cpu_sys_us", {}).items():
                        sys_us.setdefault(k, []).append(v)
            us_s = ", ".join(f"{k} {statistics.median(v):.1f}"
                             + (f" (system {statistics.median(sys_us[k]):.1f})" if sys_us.get(k) else "")
                             for k, v in us.items())
            print(f"| {router} | {pair} | {NAMES.get(cipher, cipher)} | {args.udp_size} B | "
                  f"{statistics.median(best):.0f} | {rat_s} | {rat_any_s} | {statistics.median(clean):.0f} | {cpu_s} | "
                  f"{us_s} |")
    if udp:
        print_budget(udp, quiet, args.baseline, args.udp_size)
    if args.json:
        Path(args.json).write_text(json.dumps(
            [{"router": ro, "cipher": c, "pair": p, "streams": n, "runs": rs}
             for (ro, c, p, n), rs in runs.items()]
            + [{"router": ro, "cipher": c, "pair": p, "udp_size": args.udp_size, "udp_ladders": lds}
               for (ro, c, p), lds in udp.items()]
            + [{"router": ro, "cipher": c, "quiet_machine": qs} for (ro, c), qs in quiet.items()], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
