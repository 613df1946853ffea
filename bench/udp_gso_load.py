#!/usr/bin/env python3
"""A light small-datagram load for bench/throughput.py (``--udp-load gso``).

    python bench/udp_gso_load.py DST PORT PPS SIZE SECONDS [--burst 64]

Sends ``PPS`` UDP datagrams per second of ``SIZE`` payload bytes to DST:PORT for ``SECONDS``,
``--burst`` datagrams per system call (UDP GSO: one ``sendmsg`` with ``UDP_SEGMENT``), paced:
burst n leaves at n x burst / PPS seconds after the start; a sender that falls behind catches
up by at most 10 ms of datagrams, as a token bucket would. Prints one JSON line: datagrams
sent (counted per successful ``sendmsg``), seconds, failed calls.

Why it exists: iperf3 costs 2.4-2.9 us of CPU per small datagram (one ``sendto`` per datagram in
the client, one ``recv`` per datagram in the server), more than both our gateways together.
On a 2-vCPU machine that load generator takes more than half of the CPU the tunnel shares it
with, and the measured rate says as much about iperf3 as about the gateways. This sender
costs 0.3-0.6 us per datagram; the receiving side (bench/throughput.py) is a UDP socket that is
never read, whose kernel counters (InDatagrams + RcvbufErrors) count what arrived. The
datagrams still reach the encrypting gateway one at a time: the kernel cuts the GSO burst into
datagrams before the gateway's TUN device, which offers no UDP segmentation to either gateway
(docs/esp.md "Small packets: a lighter load generator").
"""
from __future__ import annotations

import argparse
import json
import socket
import struct
import sys
import time

SOL_UDP, UDP_SEGMENT = 17, 103
CATCH_UP = 0.010  # seconds of datagrams a late sender may send at once


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("dst")
    ap.add_argument("port", type=int)
    ap.add_argument("pps", type=int)
    ap.add_argument("size", type=int)
    ap.add_argument("seconds", type=float)
    ap.add_argument("--burst", type=int, default=64, help="datagrams per sendmsg (at most 64)")
    args = ap.parse_args(argv)
    if not (1 <= args.burst <= 64 and 8 <= args.size <= 1400 and args.pps > 0 and args.seconds > 0):
        ap.error("burst 1-64, size 8-1400, pps and seconds > 0")
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
    s.connect((args.dst, args.port))
    payload = bytes(range(256)) * (args.size * args.burst // 256 + 1)
    payload = payload[:args.size * args.burst]
    cmsg = [(SOL_UDP, UDP_SEGMENT, struct.pack("=H", args.size))]
    interval = args.burst / args.pps
    sent = failed = 0
    t0 = time.monotonic()
    end = t0 + args.seconds
    due = t0
    while True:
        now = time.monotonic()
        if now >= end:
            break
        if now < due:
            time.sleep(due - now)
            continue
        try:
            s.sendmsg([payload], cmsg)
            sent += args.burst
        except OSError:  # ENOBUFS, EAGAIN: counted, the datagrams are not
            failed += 1
        due = max(due + interval, now - CATCH_UP)
    print(json.dumps({"sent": sent, "seconds": time.monotonic() - t0, "failed": failed}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
