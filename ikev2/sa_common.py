"""Types and constants shared by the IKE SA state machine and its exchange modules."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum

from . import payloads as P
from .child_sa import ChildSA
from .constants import NotifyType as N
from .crypto.kex import KeyExchange, KeyExchangeHalf
from .errors import IKEv2Error
from .identity import Identity, IdentityPattern
from .message import Message
from .policy import ChildPolicy, IkePolicy

RandomBytes = Callable[[int], bytes]
LogFn = Callable[..., None]


def log_wants(log: LogFn, level: str) -> bool:
    """Would the log callback keep a line at ``level``? (It says so with a ``wants(level)``
    method; a plain function keeps everything.) For lines whose fields cost work to build."""
    wants = getattr(log, "wants", None)
    return wants is None or bool(wants(level))
ResponseHandler = Callable[[Message], None]
# What a queued request builds when the window opens: (exchange type, payloads, response handler),
# or None when the request is no longer needed.
RequestBuilt = tuple[int, list[P.Payload], ResponseHandler] | None
RequestBuilder = Callable[[], RequestBuilt]

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
    on_response: ResponseHandler
    what: str
    sent_at: float
    next_retransmit: float
    tries: int = 0


@dataclass
class QueuedRequest:
    what: str
    build: RequestBuilder


@dataclass
class ChildRequest:
    """State of a CREATE_CHILD_SA / first Child SA we asked for."""
    policy: ChildPolicy
    spi_in: bytes
    proposals: list[P.Proposal]
    ts_i: list[P.TrafficSelector]
    ts_r: list[P.TrafficSelector]
    nonce: bytes = b""
    ke: KeyExchangeHalf | None = None
    rekey_of: ChildSA | None = None


# RFC 9370 IKE_FOLLOWUP_KE (ikev2.exchange_followup): what to do once a CREATE_CHILD_SA's
# additional key exchanges have run; called with their shared secrets SK(1)..SK(n) in order.
FollowupDone = Callable[[list[bytes]], None]
FollowupFailed = Callable[[str], None]


@dataclass
class PendingFollowup:
    """Responder: a CREATE_CHILD_SA answered with N(ADDITIONAL_KEY_EXCHANGE), waiting for the
    initiator's IKE_FOLLOWUP_KE exchanges."""
    methods: list[KeyExchange]  # the additional key exchange methods still to run, in order
    on_done: FollowupDone
    what: str
    secrets: list[bytes] = field(default_factory=list)


HANDLED_NOTIFIES = {
    N.NAT_DETECTION_SOURCE_IP, N.NAT_DETECTION_DESTINATION_IP, N.COOKIE, N.INVALID_KE_PAYLOAD,
    N.IKEV2_FRAGMENTATION_SUPPORTED, N.SIGNATURE_HASH_ALGORITHMS, N.MOBIKE_SUPPORTED, N.REKEY_SA,
    N.INITIAL_CONTACT, N.USE_PPK, N.PPK_IDENTITY, N.NO_PPK_AUTH, N.INTERMEDIATE_EXCHANGE_SUPPORTED,
    N.ADDITIONAL_KEY_EXCHANGE,
}


def notify_name(t: int) -> str:
    return N(t).name if t in N._value2member_map_ else str(t)


def local_id_ok(pol: IkePolicy, wanted: Identity) -> bool:
    return pol.local_id == wanted or IdentityPattern(str(pol.local_id)).matches(wanted)

