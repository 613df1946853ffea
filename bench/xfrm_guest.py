#!/usr/bin/env python3
"""Kernel ESP throughput in the QEMU guest: SAs installed by vpn_gw.dataplane.xfrm vs. hand-keyed `ip xfrm`.

    sudo .venv/bin/python bench/xfrm_guest.py                 # 5 s per run, 3 rounds
    sudo .venv/bin/python bench/xfrm_guest.py --seconds 10 --rounds 3 --cipher aes256gcm16

Boots the guest (tests/kernel_guest/runner.py; this machine's kernel has no ESP) and, in the
same guest run and the same namespace topology (tests/netns_e2e/topology.two_sites), measures
iperf3 TCP host-a -> host-b through a tunnel set up three ways, alternating:

* ``plain``: no IPsec (the router gets a route to the LANs) - the guest's ceiling;
* ``hand``: ``ip xfrm state/policy add`` with the same algorithm, tunnel mode;
* ``ours``: XfrmDataPlane.install_child with the same algorithm (policy-based);
* ``userspace``: two of our daemons (`vpn-gw run`, the default userspace data plane: ESP in
  UDP 4500 over TUN, in Python) negotiating the same algorithm over IKE, for comparison.

``hand`` and ``ours`` alternate (their order flips every round) so drift in the emulated
machine's speed does not favour either. Under TCG absolute numbers are meaningless
(software-emulated CPU); the ratio ours/hand in the same run is what to look at: both are the
kernel's ESP, so it should be ~1.0 (our policies and SAs are what the kernel runs, nothing of
ours is in the packet path). Not a test: it only prints.
"""
from __future__ import annotations

import argparse
import json
import secrets
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CIPHERS = {  # name: (IKE encr id, key bits, kernel name, icv bits)
    "aes256gcm16": (20, 256, "rfc4106(gcm(aes))", 128),
    "aes128gcm16": (20, 128, "rfc4106(gcm(aes))", 128),
}


def in_guest(args) -> int:
    import subprocess

    from ikev2.events import ChildSAKeys, ChildUp
    from ikev2.payloads import TrafficSelector
    from tests.netns import NetnsGroup
    from tests.netns_e2e.tools import iperf3
    from tests.netns_e2e.topology import two_sites
    from vpn_gw.dataplane.xfrm.backend import XfrmDataPlane

    subprocess.run(["modprobe", "-a", "esp4", "xfrm_user", "aesni_intel", "gcm", "tun"], check=False)
    encr, bits, kname, icv = CIPHERS[args.cipher]
    results: dict[str, list[float]] = {"plain": [], "hand": [], "ours": [], "userspace": []}
    with NetnsGroup("bx") as grp:
        router, a, b = two_sites(grp)
        sides = ((a, b), (b, a))

        def run(kind: str) -> float:
            out = iperf3(a.host, b.host, b.host_ip, seconds=args.seconds)
            return out["end"]["sum_received"]["bits_per_second"] / 1e6

        def plain() -> None:
            router.ip("route", "add", a.lan, "via", a.wan)
            router.ip("route", "add", b.lan, "via", b.wan)
            results["plain"].append(run("plain"))
            router.ip("route", "del", a.lan)
            router.ip("route", "del", b.lan)

        def hand() -> None:
            k_ab, k_ba = secrets.token_hex(bits // 8 + 4), secrets.token_hex(bits // 8 + 4)
            for (me, peer), (k_out, k_in), (s_out, s_in) in zip(sides, ((k_ab, k_ba), (k_ba, k_ab)),
                                                                (("0x1001", "0x1002"), ("0x1002", "0x1001")),
                                                                strict=True):
                me.gw.ip("xfrm", "state", "add", "src", me.wan, "dst", peer.wan, "proto", "esp", "spi", s_out,
                         "reqid", "1", "mode", "tunnel", "aead", kname, "0x" + k_out, str(icv))
                me.gw.ip("xfrm", "state", "add", "src", peer.wan, "dst", me.wan, "proto", "esp", "spi", s_in,
                         "reqid", "1", "mode", "tunnel", "aead", kname, "0x" + k_in, str(icv))
                for d, src, dst, ts, td in (("out", me.wan, peer.wan, me.lan, peer.lan),
                                            ("in", peer.wan, me.wan, peer.lan, me.lan),
                                            ("fwd", peer.wan, me.wan, peer.lan, me.lan)):
                    me.gw.ip("xfrm", "policy", "add", "src", ts, "dst", td, "dir", d, "tmpl", "src", src,
                             "dst", dst, "proto", "esp", "reqid", "1", "mode", "tunnel")
            results["hand"].append(run("hand"))
            for me, _ in sides:
                me.gw.ip("xfrm", "state", "flush")
                me.gw.ip("xfrm", "policy", "flush")

        def ours() -> None:
            klen = bits // 8 + 4
            k1, k2 = secrets.token_bytes(klen), secrets.token_bytes(klen)
            s1, s2 = secrets.token_bytes(4), secrets.token_bytes(4)
            dps = []
            for (me, peer), (sin, sout, kin, kout) in zip(sides, ((s1, s2, k2, k1), (s2, s1, k1, k2)), strict=True):
                keys = ChildSAKeys(sin, sout, 3, "tunnel", encr, bits, None, False, kin, b"", kout, b"")
                dp = XfrmDataPlane(netns=me.gw.name)
                dp.open(events=False)
                dp.install_child(ChildUp("bench", keys, [TrafficSelector.from_network(me.lan)],
                                         [TrafficSelector.from_network(peer.lan)], (me.wan, 500), (peer.wan, 500),
                                         False, "bench", ike_name="bench", ike_id=1))
                dps.append(dp)
            results["ours"].append(run("ours"))
            for dp in dps:
                dp.shutdown()

        for i in range(args.rounds):
            plain()
            for step in ((hand, ours) if i % 2 == 0 else (ours, hand)):
                step()
        if args.userspace:
            try:
                results["userspace"] = userspace_runs(a, b, run, args.rounds, args.cipher)
            except Exception as e:  # noqa: BLE001 - keep the kernel numbers; say why this one is missing
                print(f"userspace data plane: not measured: {e}", file=sys.stderr)
    out = {k: [round(v, 1) for v in vs] for k, vs in results.items()}
    Path(args.out).write_text(json.dumps(out))
    return 0


def userspace_runs(a, b, run, rounds: int, cipher: str) -> list[float]:
    """Two of our daemons with the userspace data plane, negotiating ``cipher`` over IKE."""
    import tempfile
    import time

    from tests.gateway import OurGateway, connection

    work = Path(tempfile.mkdtemp(prefix="bench-us-"))
    gws = []
    try:
        for me, peer, tag, ptag in ((a, b, "a", "b"), (b, a, "b", "a")):
            conn = connection("bench", me.wan, peer.wan, f"{tag}.bench.example", f"{ptag}.bench.example",
                              local_ts=me.lan, remote_ts=peer.lan, esp=cipher)
            gws.append(OurGateway(me.gw, work, tag, [conn], listen=[me.wan]))
        for g in gws:
            g.start(timeout=90)
        gws[0].control("up", name="bench", timeout=60)
        deadline = time.monotonic() + 30
        while not a.host.ping(b.host_ip, count=1, wait=1):
            if time.monotonic() > deadline:
                raise RuntimeError("the userspace tunnel does not pass traffic\n" + gws[0].log_tail(30))
            time.sleep(0.2)
        return [run("userspace") for _ in range(rounds)]
    finally:
        for g in gws:
            g.stop()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--cipher", choices=sorted(CIPHERS), default="aes256gcm16")
    ap.add_argument("--no-userspace", dest="userspace", action="store_false",
                    help="skip the userspace data plane comparison")
    ap.add_argument("--in-guest", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--out", default="/results/bench.json", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.in_guest:
        return in_guest(args)
    from tests.kernel_guest.runner import GuestError, run_guest
    budget = 90 + args.rounds * 4 * (args.seconds + 8) + (60 if args.userspace else 0)
    cmd = (f".venv/bin/python bench/xfrm_guest.py --in-guest --seconds {args.seconds:g} "
           f"--rounds {args.rounds} --cipher {args.cipher}" + ("" if args.userspace else " --no-userspace"))
    try:
        res = run_guest(cmd, timeout=budget)
    except GuestError as e:
        print(f"xfrm_guest: the guest cannot start: {e}", file=sys.stderr)
        return 2
    bench = res.results_dir / "bench.json"
    if res.rc != 0 or not bench.exists():
        print(res.describe(), file=sys.stderr)
        return 1
    r = json.loads(bench.read_text())
    med = {k: statistics.median(v) for k, v in r.items() if v}
    print(f"kernel ESP in the guest (TCG), {args.cipher}, iperf3 TCP {args.seconds:g} s x {args.rounds} "
          f"(guest run {res.elapsed:.0f} s)")
    for k in ("plain", "hand", "ours", "userspace"):
        if r.get(k):
            print(f"  {k:9s} {med[k]:8.1f} Mbit/s   runs: {r[k]}")
    # Runs of the same round are next to each other in time: their ratio cancels the emulated
    # machine's drift, so the median of the per-round ratios is the headline number.
    paired = sorted(o / h for o, h in zip(r["ours"], r["hand"], strict=True) if h)
    print(f"  ratio ours/hand: median of per-round ratios = {statistics.median(paired):.2f} "
          f"(per round: {', '.join(f'{x:.2f}' for x in paired)}); ratio of medians = "
          f"{med['ours'] / med['hand']:.2f}   (hand/plain = {med['hand'] / med['plain']:.2f})")
    if r.get("userspace"):
        print(f"  userspace data plane / kernel (ours) = {med['userspace'] / med['ours']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
