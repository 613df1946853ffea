"""The grouping that vpn_gw.accel's ``read_runs`` and ``recv_runs`` do in C, written out in
Python from the per-packet loops they replaced (UserspaceDataPlane._drain_bursts before runs,
UdpService._readable_burst before runs): the reference the tests compare them with."""
from __future__ import annotations

NON_ESP_MARKER = bytes(4)


def tun_runs(pkts: list[bytes]) -> list[tuple[bytes | None, list[bytes], int]]:
    """IPv4 packets (>= 20 bytes) in a row with the same addresses (bytes 12-20) form a run
    keyed by them; other packets in a row a run keyed None. Per run: (key, packets, longest)."""
    runs: list[tuple[bytes | None, list[bytes], int]] = []
    for p in pkts:
        key = p[12:20] if len(p) >= 20 and p[0] >> 4 == 4 else None
        if runs and runs[-1][0] == key:
            k, held, longest = runs[-1]
            held.append(p)
            runs[-1] = (k, held, max(longest, len(p)))
        else:
            runs.append((key, [p], len(p)))
    return runs


def socket_runs(msgs: list[tuple[bytes, int, bytes, bytes]]) -> list[tuple[bool, list[bytes], bytes, bytes]]:
    """recv_burst's messages cut (UDP GRO) and grouped: ESP datagrams in a row with the same
    SPI, source and local address form one run; any other datagram is an item of its own."""
    items: list[tuple[bool, list[bytes], bytes, bytes]] = []
    open_run = False
    for data, seg, name, dst in msgs:
        for d in ([data[off:off + seg] for off in range(0, len(data), seg)] if seg else [data]):
            esp = len(d) >= 8 and d[:4] != NON_ESP_MARKER
            if esp and open_run:
                _esp, run, run_name, run_dst = items[-1]
                if run[0][:4] == d[:4] and run_name == name and run_dst == dst:
                    run.append(d)
                    continue
            items.append((esp, [d], name, dst))
            open_run = esp
    return items
