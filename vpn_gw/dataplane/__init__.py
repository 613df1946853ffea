"""The data-plane interface the daemon programs: install/remove Child SAs, move them to new
addresses, read counters, and take ESP-in-UDP datagrams received on the NAT-T socket.

Implementations: the userspace ESP data plane over TUN (vpn_gw.dataplane.userspace.plane, the default) and the
Linux kernel XFRM backend. ``RecordingDataPlane`` keeps the SAs without moving packets: it is
what runs when no packet-carrying backend is configured (IKE only), and in tests.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from ikev2.events import Address, ChildUp


@dataclass
class ChildCounters:
    bytes_in: int = 0
    packets_in: int = 0
    bytes_out: int = 0
    packets_out: int = 0
    drops: dict[str, int] = field(default_factory=dict)


class InstallError(Exception):
    """The data plane cannot carry this Child SA (e.g. no TUN device): the daemon deletes it
    and reports why (log, status, ``vpn-gw up``)."""


class DataPlane:
    name = "abstract"

    async def start(self) -> None:
        pass

    async def close(self) -> None:
        pass

    def expiries(self, now: float) -> list[tuple[bytes, str]]:
        """Child SAs (by inbound SPI) that reached a volume or sequence-number limit since the
        last call: ``"soft"`` (rekey it) or ``"hard"`` (delete it). Each is reported once."""
        return []

    def stats(self) -> dict:
        """Data-plane counters that belong to no Child SA (for the control command `stats`)."""
        return {"name": self.name, "unmatched": dict(getattr(self, "unmatched", {}) or {})}

    def ensure_interface(self, name: str) -> None:
        """Create a route-based connection's interface at start-up, so routes can point to it
        before the tunnel is up (traffic to it is dropped and counted until then)."""

    def install_child(self, ev: ChildUp) -> None:
        """Carry traffic over this Child SA from now on; raises InstallError if it cannot."""
        raise NotImplementedError

    def add_virtual_ips(self, conn: str, addresses: list[str]) -> None:
        """Client: put the virtual IPs the gateway assigned on the connection's interface."""

    def remove_virtual_ips(self, conn: str) -> None:
        pass

    def remove_child(self, spi_in: bytes, spi_out: bytes) -> None:
        raise NotImplementedError

    def update_addresses(self, ike_id: int, local: Address, remote: Address, encap: bool | None = None) -> None:
        """The IKE SA moved (MOBIKE, address adoption, NAT mapping): move its Child SAs.
        ``encap``: ESP in UDP from now on (NAT on the new path), None = unchanged."""
        raise NotImplementedError

    def counters(self, spi_in: bytes) -> ChildCounters | None:
        raise NotImplementedError

    def esp_received(self, data: bytes, local: Address, remote: Address) -> None:
        """An ESP packet that arrived in UDP on the NAT-T port."""
        raise NotImplementedError

    def last_rx(self, spi_in: bytes) -> float | None:
        """Monotonic time of the last authenticated packet received on this Child SA."""
        return None

    def rx_batch_begin(self) -> None:
        """The daemon is about to hand over several datagrams (one socket wake-up); the data
        plane may hold what it delivers until ``rx_batch_end``."""

    def rx_batch_end(self) -> None:
        """End of the batch: deliver everything held."""


class RecordingDataPlane(DataPlane):
    """Keeps installed SAs (without key material) and counts ESP it is handed but cannot use."""
    name = "none"

    def __init__(self):
        self.children: dict[bytes, dict] = {}
        self.esp_dropped = 0

    def install_child(self, ev: ChildUp) -> None:
        self.children[ev.keys.spi_in] = {
            "ike_id": ev.ike_id, "spi_out": ev.keys.spi_out, "local": ev.local, "remote": ev.remote,
            "counters": ChildCounters(),
        }

    def remove_child(self, spi_in: bytes, spi_out: bytes) -> None:
        self.children.pop(spi_in, None)

    def update_addresses(self, ike_id: int, local: Address, remote: Address, encap: bool | None = None) -> None:
        for c in self.children.values():
            if c["ike_id"] == ike_id:
                c["local"], c["remote"] = local, remote

    def counters(self, spi_in: bytes) -> ChildCounters | None:
        c = self.children.get(spi_in)
        return c["counters"] if c else None

    def esp_received(self, data: bytes, local: Address, remote: Address) -> None:
        self.esp_dropped += 1
