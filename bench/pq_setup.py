#!/usr/bin/env python3
"""IKE set-up cost with and without ML-KEM-768 (x25519 vs x25519 + ke1_mlkem768): ours vs strongSwan 6.

    sudo .venv/bin/python bench/pq_setup.py                 # N = 200 set-ups per run
    sudo .venv/bin/python bench/pq_setup.py -n 400 --json out.json

Same run, same machine, four responders in turn: our gateway and charon-6 (the strongSwan 6.0.6
build of ../shared/peers, see ../shared/peers/strongswan6.md), each with the classic and the
hybrid IKE proposal.  The initiator is always charon-6's load-tester (``fake_kernel``, 2
threads, ``init_limit`` 8, ``delete_after_established``), in namespace ``site``; the
responder runs in ``gw`` (tests/interop/strongswan.py topology).  PSK, ESP aes256gcm16, one
Child SA per IKE SA, distinct IDi per SA.

Measured per run: the responder's CPU time (utime + stime of its process from
/proc/PID/stat, threads included) divided by the number of IKE SAs established, and the
wall-clock rate.  CPU per set-up is the robust figure on a shared machine; the report gives
hybrid/classic ratios for both implementations, which is what docs compare ("the hybrid must
not cost us more, relative to classic, than it costs strongSwan").  Our gateway runs at log
level "warning" (debug logging costs CPU).  Needs root and ../shared/peers.  Not a test.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
for p in (ROOT, ROOT / "tests", ROOT / "tests" / "interop"):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

import netns  # noqa: E402
import strongswan as ss  # noqa: E402
import strongswan6 as s6  # noqa: E402

from tests.gateway import OurGateway  # noqa: E402

CLASSIC = "aes256gcm16-prfsha384-x25519"
HYBRID = "aes256gcm16-prfsha384-x25519-ke1_mlkem768"
ESP = "aes256gcm16"
GW_ID = "gw.example.org"
TS_I, TS_R = "10.10.0.0/24", "10.20.0.0/24"
LT_PLUGINS = ("random nonce sha3 openssl ml pem pkcs1 pkcs8 x509 pubkey kdf load-tester "
              "kernel-netlink socket-default vici counters")


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads), in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def load_tester(topo, workdir: Path, n: int, ike: str, psk: str) -> ss.Charon:
    threads = 2
    settings = {
        "reuse_ikesa": False, "threads": 16, "install_virtual_ip": True,
        "plugins": {"load-tester": {
            "enable": True, "initiators": threads, "iterations": n // threads, "delay": 1,
            "init_limit": 8, "fake_kernel": True, "version": 2,
            "initiator": topo.site_ip, "responder": topo.gw_ip,
            "proposal": ike, "esp": ESP, "initiator_auth": "psk", "responder_auth": "psk",
            "preshared_key": psk, "initiator_id": "c%d-r%d.lt.example.org",
            "responder_id": GW_ID, "initiator_tsi": TS_I, "initiator_tsr": TS_R,
            "child_rekey": 0, "ike_rekey": 0, "dpd_delay": 0,
            "delete_after_established": True, "shutdown_when_complete": False,
        }},
    }
    return ss.Charon(topo.site, workdir / "lt", "lt", **s6.charon6_kwargs(
        plugins=LT_PLUGINS, charon_settings=settings, retransmit_timeout=2.0, retransmit_tries=3,
        log_levels={"default": 0, "ike": 1}))


def sw6_responder(topo, workdir: Path, ike: str, psk: str) -> ss.Charon:
    c = ss.Charon(topo.gw, workdir / "sw6", "sw6", **s6.charon6_kwargs(
        charon_settings={"dos_protection": False, "install_routes": False},
        log_levels={"default": 0}))
    c.write_swanctl_conf({
        "connections": {"lt": {
            "version": 2, "local_addrs": topo.gw_ip, "remote_addrs": "%any", "proposals": ike,
            "local": {"auth": "psk", "id": GW_ID}, "remote": {"auth": "psk", "id": "%any"},
            "children": {"lt": {"local_ts": TS_R, "remote_ts": TS_I, "esp_proposals": ESP}},
        }},
        "secrets": {"ike-lt": {"secret": ss.quote(psk)}},
    })
    return c


def our_responder(topo, workdir: Path, ike: str, psk: str) -> OurGateway:
    conn = {"name": "lt", "local_addrs": [topo.gw_ip], "remote_addrs": ["%any"], "local_id": GW_ID,
            "remote_id": "%any", "auth": "psk", "psk": psk, "ike_proposals": [ike],
            "start_action": "none",
            "children": [{"name": "lt", "local_ts": [TS_R], "remote_ts": [TS_I],
                          "esp_proposals": [ESP]}]}
    return OurGateway(topo.gw, workdir, "ours", [conn], listen=[topo.gw_ip], log_level="warning",
                      gateway={"half_open_limit": 1000, "cookie_threshold": 999})


def run_one(responder: str, ike: str, n: int, timeout: float) -> dict:
    psk = "bench-only-" + secrets.token_hex(12)
    work = Path(tempfile.mkdtemp(prefix="pqb-"))
    group = netns.NetnsGroup("pqb")
    resp = lt = None
    try:
        topo = ss.build_topology(group, hosts=False)
        if responder == "ours":
            resp = our_responder(topo, work, ike, psk).start()
            pid = resp.proc.pid
        else:
            resp = sw6_responder(topo, work, ike, psk).start()
            resp.load_all()
            pid = resp.pid
        time.sleep(0.3)
        cpu0 = cpu_seconds(pid)
        lt = load_tester(topo, work, n, ike, psk)
        t0 = time.monotonic()
        lt.start()
        established = 0
        deadline = t0 + timeout
        while time.monotonic() < deadline:
            text = lt.log_text()
            established = len(re.findall(r"IKE_SA load-test\[\d+\] established", text))
            if established >= n:
                break
            time.sleep(0.2)
        wall = time.monotonic() - t0
        time.sleep(0.5)  # the DELETEs of the last SAs
        cpu = cpu_seconds(pid) - cpu0
        lt_cpu = cpu_seconds(lt.pid)
        text = lt.log_text()
        return {
            "responder": responder, "proposal": ike, "n": n, "established": established,
            "failed": len(re.findall(r"establishing IKE_SA failed|giving up after", text)),
            "retransmits": len(re.findall(r"retransmit \d+ of request", text)),
            "wall_s": round(wall, 2), "rate_per_s": round(established / wall, 1) if wall else None,
            "responder_cpu_ms_per_setup": round(1000 * cpu / max(established, 1), 3),
            "initiator_cpu_ms_per_setup": round(1000 * lt_cpu / max(established, 1), 3),
        }
    finally:
        for x in (lt, resp):
            if x is not None:
                try:
                    x.stop()
                except Exception as exc:  # keep tearing down
                    print(f"stop failed: {exc}", file=sys.stderr)
        group.close()
        shutil.rmtree(work, ignore_errors=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-n", type=int, default=200, help="IKE set-ups per run (default 200)")
    ap.add_argument("--timeout", type=float, default=120.0, help="seconds per run at most")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    s6.PEERS_DIR.is_dir() or sys.exit(f"{s6.PEERS_DIR} is absent: no strongSwan 6")
    if not Path(s6.CHARON6).exists():
        os.system(f"tar -C /opt -xJf {s6.TARBALL}")
    load = os.getloadavg()
    results = []
    for responder in ("ours", "sw6"):
        for ike in (CLASSIC, HYBRID):
            r = run_one(responder, ike, args.n, args.timeout)
            results.append(r)
            print(f"{responder:5} {ike:45} {r['established']:4}/{r['n']} up, "
                  f"{r['responder_cpu_ms_per_setup']:7.3f} ms CPU/set-up (responder), "
                  f"{r['rate_per_s']}/s, {r['retransmits']} retransmits, {r['failed']} failed",
                  flush=True)
    by = {(r["responder"], r["proposal"]): r["responder_cpu_ms_per_setup"] for r in results}
    ratios = {who: round(by[(who, HYBRID)] / by[(who, CLASSIC)], 2) for who in ("ours", "sw6")}
    print(f"hybrid/classic responder CPU: ours {ratios['ours']}x, strongSwan 6 {ratios['sw6']}x "
          f"(load average before: {load[0]:.1f})")
    if args.json:
        args.json.write_text(json.dumps({"results": results, "ratios": ratios,
                                         "loadavg": load}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
