"""Types and helpers shared by the IKE SA state machine and its exchange mixins."""
from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Callable
from . import payloads as P
from .child_sa import ChildSA
from .constants import NotifyType as N
from .errors import IKEv2Error
from .identity import Identity
from .message import Message
from .policy import ChildPolicy, IkePolicy

RandomBytes = Callable[[int], bytes]
LogFn = Callable[..., None]

NONCE_LEN = 32
IP_UDP_OVERHEAD = {4: 28, 6: 48}
HALF_OPEN_TIMEOUT = 30.0
MAX_INIT_RETRIES = 5  # COOKIE / INVALID_KE_PAYLOAD round trips before giving up


class State(Enum):
    CREATED = "created"
    INIT_SENT = "init-sent"
    INIT_DONE = "init-done"  # responder: answered IKE_SA_INIT, waiting for IKE_AUTH
    AUTH_SENT = "auth-sent"
    ESTABLISHED = "established"
    REKEYED = "rekeyed"  # replaced by a new IKE SA, deleting
    DELETING = "deleting"
    DELETED = "deleted"


class ExchangeFailed(IKEv2Error):
    """A request could not be processed; ``notify`` is the error to answer with."""

    def __init__(self, notify: int, reason: str, data: bytes = b"", fatal: bool = False):
        self.notify, self.data, self.fatal = notify, data, fatal
        super().__init__(reason)


@dataclass
class Pending:
    """Our request in flight."""
    exchange: int
    message_id: int
    packets: list[bytes]
    on_response: Callable[[Message], None]
    what: str
    sent_at: float
    next_retransmit: float
    tries: int = 0


@dataclass
class QueuedRequest:
    what: str
    build: Callable[[], tuple[int, list[P.Payload], Callable[[Message], None]] | None]


@dataclass
class _ChildRequest:
    """State of a CREATE_CHILD_SA / first Child SA we asked for."""
    policy: ChildPolicy
    spi_in: bytes
    proposals: list[P.Proposal]
    ts_i: list[P.TrafficSelector]
    ts_r: list[P.TrafficSelector]
    nonce: bytes = b""
    ke: object | None = None
    rekey_of: ChildSA | None = None


_HANDLED_NOTIFIES = {
    N.NAT_DETECTION_SOURCE_IP, N.NAT_DETECTION_DESTINATION_IP, N.COOKIE, N.INVALID_KE_PAYLOAD,
    N.IKEV2_FRAGMENTATION_SUPPORTED, N.SIGNATURE_HASH_ALGORITHMS, N.MOBIKE_SUPPORTED, N.REKEY_SA,
    N.INITIAL_CONTACT, N.USE_PPK, N.PPK_IDENTITY, N.NO_PPK_AUTH, N.INTERMEDIATE_EXCHANGE_SUPPORTED,
    N.ADDITIONAL_KEY_EXCHANGE,
}


def _notify_name(t: int) -> str:
    return N(t).name if t in N._value2member_map_ else str(t)


def _local_id_ok(pol: IkePolicy, wanted: Identity) -> bool:
    from .identity import IdentityPattern
    return IdentityPattern(str(pol.local_id)).matches(wanted) or pol.local_id == wanted


def P_summary(payloads) -> str:
    from .summary import payload_summary
    return payload_summary(payloads)
