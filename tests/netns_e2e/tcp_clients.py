"""Many idle RFC 9329 TCP clients, run inside a namespace by the netns tests (python -m).

    python -m tests.netns_e2e.tcp_clients HOST PORT COUNT HOLD_SECONDS KEEPALIVE_INTERVAL

Opens COUNT connections (each sends the IKETCP prefix), prints one JSON line
{"connected": n, "refused": m} once all were tried, then sends a NAT-keepalive frame on every
open connection each KEEPALIVE_INTERVAL seconds (0: never) for HOLD_SECONDS, noting when the
server closed each one; finally prints {"closed_after": [seconds, ...], "open": k} and exits.
Every loop is bounded by COUNT and HOLD_SECONDS.
"""
from __future__ import annotations

import json
import select
import socket
import sys
import time

PREFIX = b"IKETCP"
KEEPALIVE_FRAME = b"\x00\x03\xff"


def main(host: str, port: int, count: int, hold: float, interval: float) -> None:
    socks: list[socket.socket] = []
    refused = 0
    for _ in range(count):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.settimeout(2.0)
        try:
            s.connect((host, port))
            s.sendall(PREFIX)
        except OSError:
            refused += 1
            s.close()
            continue
        s.setblocking(False)
        socks.append(s)
    start = time.monotonic()
    print(json.dumps({"connected": len(socks), "refused": refused}), flush=True)
    closed_after: list[float] = []
    open_socks = set(socks)
    next_ka = start + interval if interval else float("inf")
    poller = select.poll()
    by_fd = {s.fileno(): s for s in socks}
    for fd in by_fd:
        poller.register(fd, select.POLLIN)
    while open_socks and time.monotonic() - start < hold:
        for fd, _ev in poller.poll(100):
            s = by_fd[fd]
            if s not in open_socks:
                continue
            try:
                data = s.recv(4096)
            except OSError:
                data = b""
            if not data:
                closed_after.append(round(time.monotonic() - start, 2))
                open_socks.discard(s)
                poller.unregister(fd)
        if time.monotonic() >= next_ka:
            next_ka += interval
            for s in list(open_socks):
                try:
                    s.send(KEEPALIVE_FRAME)
                except OSError:
                    pass
    print(json.dumps({"closed_after": closed_after, "open": len(open_socks)}), flush=True)
    for s in socks:
        s.close()


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]), float(sys.argv[5]))
