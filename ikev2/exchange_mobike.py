"""MOBIKE (RFC 4555): address updates in INFORMATIONAL exchanges, both roles.

The initiator decides: after its own address changes it sends UPDATE_SA_ADDRESSES (with fresh
NAT detection payloads and a COOKIE2) from the new address; the responder moves the IKE SA and
all Child SAs to the addresses that request came from and answers with its NAT detection
payloads and the COOKIE2. Addresses a peer announces (ADDITIONAL_IP4/6_ADDRESS) are kept as
candidates only and never used before a check answers.
"""
from __future__ import annotations

import hmac
import ipaddress

from . import payloads as P
from .constants import ExchangeType as X
from .constants import NotifyType as N
from .message import Message
from .natd import natd_hash
from .sa_common import RequestBuilt
from .sa_core import IkeSACore

COOKIE2_LEN = 16


class Mobike(IkeSACore):
    """Mixin of IkeSA (ikev2.ike_sa): works on the state declared in ``IkeSACore``.
    Provides the hooks ``_mobike_request``.
    """

    __slots__ = ()

    def _natd_now(self) -> list[P.Payload]:
        src = natd_hash(self.spi_i, self.spi_r, self.local[0], self.local[1])
        if self.policy.forced_encap:
            src = self.rng(20)
        dst = natd_hash(self.spi_i, self.spi_r, self.remote[0], self.remote[1])
        return [P.NotifyPayload(notify_type=N.NAT_DETECTION_SOURCE_IP, data=src),
                P.NotifyPayload(notify_type=N.NAT_DETECTION_DESTINATION_IP, data=dst)]

    def _build_update_sa_addresses(self) -> RequestBuilt:
        """Initiator: UPDATE_SA_ADDRESSES from the current (new) local address."""
        cookie2 = self.rng(COOKIE2_LEN)
        payloads = [P.NotifyPayload(notify_type=N.UPDATE_SA_ADDRESSES)] + self._natd_now() + \
            [P.NotifyPayload(notify_type=N.COOKIE2, data=cookie2)]

        def on_response(msg: Message) -> None:
            got = msg.notify(N.COOKIE2)
            if got is None or not hmac.compare_digest(got.data, cookie2):
                self.log("warning", "MOBIKE update answered without our COOKIE2: ignored")
                return
            self._read_natd(msg)
            self.log("info", "MOBIKE address update confirmed", local=f"{self.local[0]}:{self.local[1]}",
                     remote=f"{self.remote[0]}:{self.remote[1]}", nat_local=self.nat_local)
        return X.INFORMATIONAL, payloads, on_response

    def _read_natd(self, msg: Message) -> None:
        src = msg.notifies(N.NAT_DETECTION_SOURCE_IP)
        dst = msg.notifies(N.NAT_DETECTION_DESTINATION_IP)
        if src and dst:
            self.nat_local = all(d.data != natd_hash(self.spi_i, self.spi_r, self.local[0], self.local[1])
                                 for d in dst) or bool(self.policy.forced_encap)
            self.nat_remote = all(s.data != natd_hash(self.spi_i, self.spi_r, self.remote[0], self.remote[1])
                                  for s in src)

    def _mobike_request(self, req: Message, now: float) -> bool:
        """Handle MOBIKE notifies of an INFORMATIONAL request; returns True if it answered."""
        adds = req.notifies(N.ADDITIONAL_IP4_ADDRESS) + req.notifies(N.ADDITIONAL_IP6_ADDRESS)
        if adds or req.notify(N.NO_ADDITIONAL_ADDRESSES) is not None:
            self.peer_addresses = [str(ipaddress.ip_address(n.data)) for n in adds]
            self.log("debug", "peer announced additional addresses (candidates only)",
                     addresses=self.peer_addresses)
        if req.notify(N.UPDATE_SA_ADDRESSES) is None:
            if adds or req.notify(N.NO_ADDITIONAL_ADDRESSES) is not None:
                self._respond(req, [])
                return True
            return False
        if not (self.peer_mobike and self.policy.mobike) or self.initiator:
            # RFC 4555 3.5: only the original initiator updates addresses, and only with MOBIKE.
            self._respond(req, [])
            return True
        local, remote = self._last_src
        self.adopt(local, remote, now, "MOBIKE UPDATE_SA_ADDRESSES")
        self._read_natd(req)
        out: list[P.Payload] = self._natd_now()
        cookie2 = req.notify(N.COOKIE2)
        if cookie2 is not None:
            out.append(P.NotifyPayload(notify_type=N.COOKIE2, data=cookie2.data))
        self._respond(req, out)
        return True
