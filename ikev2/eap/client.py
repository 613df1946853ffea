"""EAP peer (RFC 3748), sans-IO: EAP Requests/Success/Failure in, Responses out.

::

    cli = EapClient("alice@example.org", password="...", allowed={"mschapv2"}, random_bytes=os.urandom)
    step = cli.process(request)   # -> EapStep(send=response, done=..., success=..., msk=...)

* Identity (5.1) is answered with ``identity``; Notification (5.2) with an empty
  Notification Response (its text goes to ``reason``).
* A method Request the peer does not allow, or has no credentials for (mschapv2/md5 need
  ``password``, tls needs ``tls_context``), is answered with a Nak (5.3.1) listing the methods
  it can do (preference tls, mschapv2, md5), or 0 when there are none.
* Once a method is under way the authenticator may not switch to another (2.1): a Request of
  another Type raises :class:`EapError`.
* A Request identical to the previous one (same Identifier and content) is a retransmission:
  the previous Response is sent again without reprocessing (4.1).
* EAP-Success is accepted only once the method has completed on our side (MS-CHAPv2: the
  server's authenticator response verified; TLS: handshake done, and for TLS 1.3 the
  protected success indication received; MD5: our response sent) -- an early Success is a
  failure (cf. CVE-2021-45079).  Success/Failure whose Identifier is not that of our last
  Response are discarded.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from ikev2.constants import EapCode, EapType

from . import packet as pk
from .md5 import Md5PeerMethod
from .mschapv2 import MschapV2PeerMethod
from .packet import METHOD_TYPES, METHODS, EapError, EapPacket, EapStep, method_name, parse_methods

if TYPE_CHECKING:  # EAP-TLS (pyOpenSSL, cryptography.x509: ~30 ms of start-up) loads on first use
    from .tls import TlsConfig, TlsPeerMethod

if TYPE_CHECKING:
    _PeerMethod = MschapV2PeerMethod | Md5PeerMethod | TlsPeerMethod

__all__ = ["EapClient"]


class EapClient:
    """EAP peer state machine for one conversation (see module docstring)."""

    def __init__(self, identity: str, *, password: str | None = None, tls_context: TlsConfig | None = None,
                 allowed: set[str], random_bytes: Callable[[int], bytes]):
        if not isinstance(identity, str) or not identity:
            raise EapError("the EAP identity must be a non-empty string")
        self.identity = identity
        self.password = password
        self.tls_context = tls_context
        self.random_bytes = random_bytes
        self.allowed = set(parse_methods(sorted(allowed) if isinstance(allowed, (set, frozenset)) else allowed))
        if tls_context is not None:
            from .tls import TlsConfig
            if not isinstance(tls_context, TlsConfig):
                raise EapError("tls_context must be an ikev2.eap.TlsConfig")
        usable = []
        for m in METHODS:
            if m not in self.allowed:
                continue
            if m in ("mschapv2", "md5") and password is None:
                continue
            if m == "tls" and tls_context is None:
                continue
            usable.append(m)
        if not usable:
            raise EapError(f"no usable EAP method: allowed {sorted(self.allowed)}, but "
                           f"{'no password' if password is None else 'no tls_context'} given")
        self.usable = tuple(usable)  # preference order
        self._method: _PeerMethod | None = None
        self._failure: str | None = None
        self._last_request: bytes | None = None
        self._last_response: bytes | None = None
        self._last_response_id: int | None = None
        self.state = "running"
        self.result: EapStep | None = None
        self.notifications: list[str] = []

    @property
    def done(self) -> bool:
        return self.state == "done"

    @property
    def method(self) -> str | None:
        return self._method.name if self._method is not None else None

    def _step(self, send: bytes | None = None, reason: str = "") -> EapStep:
        return EapStep(send=send, identity=self.identity, reason=reason, method=self.method)

    def _finish(self, success: bool, reason: str, msk: bytes | None = None) -> EapStep:
        self.state = "done"
        self.result = EapStep(send=None, done=True, success=success, identity=self.identity,
                              msk=msk if success else None, reason=reason, method=self.method)
        return self.result

    def _make_method(self, name: str) -> _PeerMethod:
        if name == "mschapv2":
            return MschapV2PeerMethod(self.random_bytes, self.identity, self.password or "")
        if name == "md5":
            return Md5PeerMethod(self.identity, self.password or "")
        if self.tls_context is None:
            raise EapError("EAP-TLS needs a tls_context")
        from .tls import TlsPeerMethod
        return TlsPeerMethod(self.tls_context)

    def process(self, msg: bytes) -> EapStep:
        """Handle one EAP Request, Success or Failure from the authenticator."""
        if self.state == "done":
            raise EapError("the EAP conversation is already finished")
        pkt = EapPacket.parse(msg)
        if pkt.code == EapCode.RESPONSE:
            raise EapError("the EAP peer received a Response")
        if pkt.code == EapCode.REQUEST:
            raw = bytes(msg)[:4 + 1 + len(pkt.data)]
            if raw == self._last_request and self._last_response is not None:
                return self._step(self._last_response, "duplicate Request: previous Response sent again")
            step = self._request(pkt)
            if step.send is not None:
                self._last_request, self._last_response = raw, step.send
                self._last_response_id = pkt.identifier
            return step
        # Success / Failure
        if self._last_response_id is not None and pkt.identifier != self._last_response_id:
            return self._step(reason=f"discarded EAP {EapCode(pkt.code).name} with Identifier "
                                     f"{pkt.identifier}, our last Response had {self._last_response_id}")
        if pkt.code == EapCode.FAILURE:
            return self._finish(False, self._failure or "the server sent EAP-Failure")
        m = self._method
        if m is None or self._failure is not None or not m.may_succeed:
            why = self._failure or (f"EAP-{m.name} has not completed" if m else "no method was run")
            return self._finish(False, f"premature EAP-Success rejected: {why}")
        return self._finish(True, f"EAP-{m.name} succeeded", getattr(m, "msk", None))

    def _request(self, pkt: EapPacket) -> EapStep:
        t = pkt.type
        if t == EapType.IDENTITY:
            return self._step(pk.response(pkt.identifier, EapType.IDENTITY, self.identity.encode("utf-8")))
        if t == EapType.NOTIFICATION:
            text = pkt.data.decode("utf-8", errors="replace")
            self.notifications.append(text)
            return self._step(pk.response(pkt.identifier, EapType.NOTIFICATION), f"notification: {text}")
        if t == EapType.NAK:
            raise EapError("EAP Nak is only valid in a Response")
        if self._method is not None:
            if t != self._method.eap_type:
                raise EapError(f"the server switched from EAP-{self._method.name} to "
                               f"{method_name(t or 0)} in the middle of the method")
            return self._run(pkt)
        name = method_name(t or 0)
        if name not in self.usable:
            offer = bytes(METHOD_TYPES[m] for m in self.usable)
            return self._step(pk.response(pkt.identifier, EapType.NAK, offer),
                              f"refused EAP {name} with a Nak (offering {', '.join(self.usable)})")
        self._method = self._make_method(name)
        return self._run(pkt)

    def _run(self, pkt: EapPacket) -> EapStep:
        m = self._method
        if m is None:
            raise EapError("no EAP method is under way")
        res = m.process(pkt.identifier, pkt.data)
        if res.failed:
            self._failure = res.reason
            if res.response is None:
                return self._finish(False, res.reason)
        if res.response is None:
            return self._step(reason=res.reason)
        return self._step(pk.response(pkt.identifier, m.eap_type, res.response), res.reason)
