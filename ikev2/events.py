"""Events the IKE engine reports to its user (the daemon, or a test)."""
from __future__ import annotations

from dataclasses import dataclass, field

from .payloads import TrafficSelector

Address = tuple[str, int]  # (IP literal, UDP port)


@dataclass(frozen=True)
class ChildSAKeys:
    """What a data plane needs to install one Child SA (both directions)."""
    spi_in: bytes
    spi_out: bytes
    protocol: int  # ProtocolId.ESP
    mode: str  # "tunnel" | "transport"
    encr_id: int
    encr_key_bits: int | None
    integ_id: int | None
    esn: bool
    encr_key_in: bytes = field(repr=False)
    integ_key_in: bytes = field(repr=False)
    encr_key_out: bytes = field(repr=False)
    integ_key_out: bytes = field(repr=False)


@dataclass
class Event:
    ike_name: str = field(default="", kw_only=True)  # connection name
    ike_id: int = field(default=0, kw_only=True)  # unique number of the IKE SA within the manager


@dataclass
class IkeUp(Event):
    local: Address
    remote: Address
    local_id: str
    remote_id: str
    spi_i: bytes
    spi_r: bytes
    proposal: str
    initial_contact: bool = False  # the peer sent INITIAL_CONTACT: older SAs with it are stale


@dataclass
class IkeDown(Event):
    reason: str


@dataclass
class IkeRekeyed(Event):
    old_spis: tuple[bytes, bytes]
    new_spis: tuple[bytes, bytes]


@dataclass
class ChildUp(Event):
    child_name: str
    keys: ChildSAKeys
    local_ts: list[TrafficSelector]
    remote_ts: list[TrafficSelector]
    local: Address
    remote: Address
    encap: bool
    proposal: str
    rekey_of: bytes | None = None  # spi_in of the Child SA this one replaces
    replay_window: int = 1024  # packets; 0 = anti-replay off (the child's replay_window)
    # Volume limits for the data plane (0 = none): soft (rekey) and hard (delete) per SA.
    rekey_bytes: int = 0
    life_bytes: int = 0
    rekey_packets: int = 0
    life_packets: int = 0


@dataclass
class ChildDown(Event):
    child_name: str
    spi_in: bytes
    spi_out: bytes
    reason: str


@dataclass
class ChildFailed(Event):
    """A new Child SA we asked for was not created: the peer refused it (error notify, e.g.
    TS_UNACCEPTABLE, NO_PROPOSAL_CHOSEN) or its answer was unacceptable. Not for rekeys."""
    child_name: str
    reason: str


@dataclass
class PeerAddressChanged(Event):
    old: Address
    new: Address


@dataclass
class LocalAddressChanged(Event):
    old: Address
    new: Address


@dataclass
class VirtualIpAssigned(Event):
    """Gateway: a remote-access client got these addresses from a pool."""
    identity: str
    addresses: list[str]


@dataclass
class VirtualIpReceived(Event):
    """Client: the gateway assigned us these addresses (configuration payload)."""
    addresses: list[str]
    dns: list[str]
    subnets: list[str]


@dataclass
class AuthFailed(Event):
    reason: str


@dataclass
class ExchangeDone(Event):
    """One event per completed exchange (for logs): who, what, outcome."""
    exchange: str
    role: str  # "initiator" | "responder"
    message_id: int
    outcome: str
    peer: Address | None = None
    spi_i: bytes = b""
    spi_r: bytes = b""
