"""Child SA records kept by an IKE SA (the keys themselves go to the data plane via ChildUp)."""
from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

from .events import ChildSAKeys
from .payloads import Proposal, TrafficSelector
from .policy import ChildPolicy


class ChildState(Enum):
    CREATING = "creating"
    INSTALLED = "installed"
    REKEYING = "rekeying"
    REKEYED = "rekeyed"  # replaced by a newer SA, waiting for its delete
    DELETING = "deleting"
    DELETED = "deleted"


@dataclass(slots=True)
class ChildSA:
    policy: ChildPolicy
    spi_in: bytes
    spi_out: bytes
    proposal: Proposal
    keys: ChildSAKeys = field(repr=False)
    local_ts: list[TrafficSelector]
    remote_ts: list[TrafficSelector]
    created: float
    rekey_at: float
    expire_at: float
    state: ChildState = ChildState.INSTALLED
    proposal_text: str = ""
    # Nonces of the exchange that created it (RFC 7296 2.8.1 collision resolution).
    nonces: tuple[bytes, bytes] = (b"", b"")
    replaces: ChildSA | None = field(default=None, repr=False)  # the SA a peer-initiated rekey replaces

    @property
    def name(self) -> str:
        return self.policy.name

    def wipe(self) -> None:
        """Drop key material: the data plane holds its own copy while the SA is installed."""
        self.keys = None  # type: ignore[assignment]
