"""The optional compiled helpers of the userspace data plane (``_accel.c``).

Five per-packet jobs cost far more in Python than the rest of a packet's handling: the
Internet checksum over whole segments (the decrypt side verifies every run it coalesces,
dataplane/userspace/gro.py), cutting a TSO super-packet into wire segments (the encrypt side
with ``tun_tso``, dataplane/userspace/tso.py), one ``recvmsg`` per ESP datagram on the NAT-T
socket (transport/udp.py: ``recv_burst`` takes up to 64 with one ``recvmmsg``; ``recv_runs``
also cuts UDP GRO messages and groups the ESP datagrams of one SA in a row into runs) and one
``os.read`` per packet from a TUN device plus the handling of its virtio-net header
(``read_burst``: the reads of a burst in one call, headers stripped, TSO super-packets cut,
checksums left to us filled in; ``read_runs`` also groups the packets in a row with the same
IPv4 addresses, the encrypt side's flow key), plus building the coalesced TUN write of a run of small UDP
datagrams on the decrypt side (``udp_coalesce``, gro.py) and cutting the encrypt side's
datagrams into UDP GSO sends (``gso_ends``, transport/udp.py). The C module does these; the pure-Python code stays the
reference and the fallback, and tests/test_accel.py checks that both give the same answers and
bytes.

``COMPILED`` says which is in use (``vpn-gw stats``, the daemon's start-up log). The module is
not used when it is missing (built without a C compiler), when its ``ABI`` differs from the one
this file expects (a stale build next to newer sources), or when the environment variable
``VPN_GW_PURE_PYTHON`` is set to a non-empty value (for comparisons; read once, at import).
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from types import ModuleType

from esp.compiled import load_optional

ABI = 7  # must equal ACCEL_ABI in _accel.c

_module: ModuleType | None
_module, WHY_NOT = load_optional("vpn_gw.accel._accel", ABI)  # the same rule as esp/compiled.py

COMPILED = _module is not None

csum_words: Callable[[Sequence[bytes | bytearray | memoryview]], int] | None = \
    _module.csum_words if _module is not None else None
tso_segment: Callable[[bytes, bytes, int], list[bytes] | None] | None = \
    _module.tso_segment if _module is not None else None
recv_burst: Callable[[int, bytearray, int, int], list[tuple[bytes, int, bytes, bytes]]] | None = \
    _module.recv_burst if _module is not None else None
udp_coalesce: Callable[[list[bytes], int, int], tuple[bytes, int] | None] | None = \
    _module.udp_coalesce if _module is not None else None
read_burst: Callable[[int, bytearray, int, bool, int], tuple[list[bytes], int, int, int, int]] | None = \
    _module.read_burst if _module is not None else None
# read_burst / recv_burst with the packets grouped in C the way the encrypt side's lane and the
# NAT-T socket's runs group them (one Python step per run instead of per packet)
read_runs: Callable[[int, bytearray, int, bool, int],
                    tuple[list[tuple[bytes | None, list[bytes], int]], int, int, int, int, int]] | None = \
    _module.read_runs if _module is not None else None
recv_runs: Callable[[int, bytearray, int, int],
                    tuple[list[tuple[bool, list[bytes], bytes, bytes]], int, int, int]] | None = \
    _module.recv_runs if _module is not None else None
# where send_many cuts a list of datagrams into UDP GSO sends (a step per datagram in Python)
gso_ends: Callable[[list[bytes], int, int], list[int]] | None = \
    _module.gso_ends if _module is not None else None


def describe() -> str:
    """What the data plane's checksums, TSO segmentation and ESP receive run on, for logs and
    stats."""
    return "compiled (_accel)" if COMPILED else f"pure Python: {WHY_NOT}"
