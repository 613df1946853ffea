"""EAP authenticator (RFC 3748), sans-IO: EAP messages in, EAP messages out.

::

    srv = EapServer("mschapv2", users, random_bytes)
    first = srv.start()                 # EAP-Request/Identity
    step = srv.process(peer_response)   # -> EapStep(send=next request | Success | Failure, ...)

Behaviour (RFC 3748 section numbers):

* Identifiers: the first Request takes one random octet, each new Request the next value
  (mod 256).  A Response whose Identifier is not that of the outstanding Request is silently
  discarded (4.1): ``EapStep(send=None, done=False, reason=...)``.  Success/Failure carry the
  Identifier of the Response they answer (4.2).
* Identity: unless ``identity_request`` is False and ``start(identity=...)`` names it (e.g. the
  IKE IDi), the conversation opens with Request/Identity (5.1).
* Methods: ``method`` is one name or a comma-separated preference list ("tls,mschapv2").
  The first listed method the user may use (``UserDB`` ``methods``) is proposed.  A Nak
  (5.3.1), accepted only as the first Response of a method, switches to the first other
  listed method the peer asked for and the user may use; otherwise EAP-Failure.
* Unknown identities run the method to its end and fail like a wrong password (no user
  enumeration); the ``reason`` tells the truth.
* Malformed input, Requests/Success/Failure sent to the authenticator, a Response of another
  method: :class:`EapError`, with the state unchanged (the message is dropped).
* At most ``max_rounds`` Responses (default 50), then EAP-Failure.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from ikev2.constants import EapCode, EapType

from . import packet as pk
from .md5 import Md5ServerMethod
from .mschapv2 import MschapV2ServerMethod
from .packet import METHOD_TYPES, EapError, EapPacket, EapStep, method_name, parse_methods
from .users import User, UserDB

if TYPE_CHECKING:  # EAP-TLS (pyOpenSSL, cryptography.x509: ~30 ms of start-up) loads on first use
    from cryptography import x509

    from .tls import TlsConfig, TlsServerMethod

__all__ = ["EapServer"]

_PASSWORD_METHODS = {"mschapv2", "md5"}
if TYPE_CHECKING:
    _ServerMethod = MschapV2ServerMethod | Md5ServerMethod | TlsServerMethod


class EapServer:
    """EAP authenticator state machine for one conversation (see module docstring)."""

    def __init__(self, method: str, users: UserDB | None, random_bytes: Callable[[int], bytes], *,
                 tls_context: TlsConfig | None = None, identity_request: bool = True,
                 max_rounds: int = 50, server_name: str = "vpn-gw"):
        self.methods = parse_methods(method)
        if users is not None and not isinstance(users, UserDB):
            raise EapError("users must be an ikev2.eap.UserDB or None")
        if users is None and _PASSWORD_METHODS & set(self.methods):
            raise EapError(f"EAP-{'/'.join(m for m in self.methods if m in _PASSWORD_METHODS)} needs a users database")
        if "tls" in self.methods:
            from .tls import TlsConfig
            if not isinstance(tls_context, TlsConfig):
                raise EapError("EAP-TLS needs tls_context=TlsConfig(...)")
        if not callable(random_bytes):
            raise EapError("random_bytes must be a callable random_bytes(n) -> bytes")
        if max_rounds < 3:
            raise EapError("max_rounds must be at least 3")
        self.users = users
        self.random_bytes = random_bytes
        self.tls_context = tls_context
        self.identity_request = identity_request
        self.max_rounds = max_rounds
        self.server_name = server_name.encode("utf-8")
        self.identity: str | None = None
        self.state = "new"  # new -> identity -> method -> done
        self._id = 0
        self._rounds = 0
        self._method: _ServerMethod | None = None
        self._first_response = False  # the next Response is the method's first (Nak allowed)
        self._tried: list[str] = []
        self.result: EapStep | None = None
        self.peer_certificate: x509.Certificate | None = None  # EAP-TLS: the client's end-entity certificate

    # ------------------------------------------------------------------ helpers

    @property
    def done(self) -> bool:
        return self.state == "done"

    @property
    def failure_reason(self) -> str:
        """Why the running method is failing while it waits for the peer's last message (e.g.
        MS-CHAPv2 after its Failure Request); "" when it is not failing."""
        m = self._method
        if m is None or self.done or getattr(m, "state", "") != "failure_sent":
            return ""
        return getattr(m, "reason", "") or ""

    @property
    def method(self) -> str | None:
        return self._method.name if self._method is not None else None

    def _user(self) -> User | None:
        return self.users.lookup(self.identity) if self.users is not None else None

    def _candidates(self) -> list[str]:
        """Listed methods this identity may use (all of them for an unknown identity)."""
        user = self._user()
        if user is None:
            return list(self.methods)
        return [m for m in self.methods if user.allows(m)]

    def _step(self, send: bytes | None = None, reason: str = "") -> EapStep:
        return EapStep(send=send, identity=self.identity, reason=reason, method=self.method)

    def _finish(self, success: bool, reason: str, msk: bytes | None = None) -> EapStep:
        self.state = "done"
        send = pk.success(self._id) if success else pk.failure(self._id)
        self.result = EapStep(send=send, done=True, success=success, identity=self.identity,
                              msk=msk if success else None, reason=reason, method=self.method)
        return self.result

    def _begin(self, name: str) -> EapStep:
        user = self._user()
        known_user = user if user is not None and user.allows(name) else None
        known = known_user is not None
        m: _ServerMethod
        if name == "mschapv2":
            m = MschapV2ServerMethod(self.random_bytes, self.identity or "",
                                     known_user.password_hash if known_user else None, self.server_name)
        elif name == "md5":
            m = Md5ServerMethod(self.random_bytes, self.identity or "",
                                known_user.password if known_user else None, self.server_name)
        else:
            if self.tls_context is None:
                raise EapError("EAP-TLS needs tls_context=TlsConfig(...)")
            from .tls import TlsServerMethod
            m = TlsServerMethod(self.tls_context, self.identity, known_user=self.users is None or known)
        self._method = m
        self._tried.append(name)
        self._first_response = True
        self.state = "method"
        return self._step(pk.request(self._id, m.eap_type, m.start(self._id)))

    def _next_id(self) -> None:
        self._id = (self._id + 1) & 0xFF

    # ------------------------------------------------------------------ API

    def start(self, identity: str | None = None) -> bytes:
        """The first EAP Request: Identity, or (``identity_request=False`` and ``identity``
        given) the first Request of the method."""
        if self.state != "new":
            raise EapError("EapServer.start() called twice")
        first = self.random_bytes(1)
        if len(first) != 1:
            raise EapError("random_bytes returned the wrong number of octets")
        self._id = first[0]
        if self.identity_request or not identity:
            self.state = "identity"
            return pk.request(self._id, EapType.IDENTITY)
        self.identity = identity
        candidates = self._candidates()
        if not candidates:
            raise EapError(f"user {identity!r} may use none of the EAP methods {', '.join(self.methods)}")
        return self._begin(candidates[0]).send  # type: ignore[return-value]

    def process(self, msg: bytes) -> EapStep:
        """Handle one EAP Response from the peer."""
        if self.state == "new":
            raise EapError("EapServer.process() before start()")
        if self.state == "done":
            raise EapError("the EAP conversation is already finished")
        pkt = EapPacket.parse(msg)
        if pkt.code != EapCode.RESPONSE:
            raise EapError(f"the authenticator received an EAP {EapCode(pkt.code).name}, expected a Response")
        self._rounds += 1
        if self._rounds > self.max_rounds:
            return self._finish(False, f"too many EAP rounds (more than {self.max_rounds})")
        if pkt.identifier != self._id:
            return self._step(reason=f"discarded EAP Response with Identifier {pkt.identifier}, "
                                     f"the outstanding Request has {self._id} (RFC 3748 4.1)")
        if self.state == "identity":
            return self._identity(pkt)
        return self._method_response(pkt)

    def _identity(self, pkt: EapPacket) -> EapStep:
        if pkt.type != EapType.IDENTITY:
            raise EapError(f"expected an EAP Identity Response, got Type {method_name(pkt.type or 0)}")
        try:
            identity = pkt.data.decode("utf-8")
        except UnicodeDecodeError:
            raise EapError("EAP Identity is not UTF-8") from None
        self.identity = identity
        if not identity or "\x00" in identity:
            return self._finish(False, "empty or NUL-containing EAP identity")
        candidates = self._candidates()
        if not candidates:
            return self._finish(False, f"user {identity!r} may use none of the EAP methods "
                                       f"{', '.join(self.methods)}")
        self._next_id()
        return self._begin(candidates[0])

    def _current_method(self) -> _ServerMethod:
        if self._method is None:
            raise EapError("no EAP method is under way")
        return self._method

    def _method_response(self, pkt: EapPacket) -> EapStep:
        m = self._current_method()
        if pkt.type == EapType.NAK:
            return self._nak(pkt.data)
        if pkt.type != m.eap_type:
            raise EapError(f"expected an EAP-{m.name} Response, got Type {method_name(pkt.type or 0)}")
        res = m.process(pkt.identifier, pkt.data)
        self._first_response = False
        if m.name == "tls":
            from .tls import TlsServerMethod
            if isinstance(m, TlsServerMethod) and m.peer_certificate is not None:
                self.peer_certificate = m.peer_certificate
        if res.done:
            return self._finish(res.success, res.reason, res.msk)
        self._next_id()
        return self._step(pk.request(self._id, m.eap_type, res.request or b""))

    def _nak(self, data: bytes) -> EapStep:
        current = self._current_method().name
        if not self._first_response:
            return self._finish(False, f"peer sent a Nak in the middle of EAP-{current}")
        wanted = [t for t in data if t != 0]
        names = ", ".join(method_name(t) for t in wanted) or "none"
        for name in self._candidates():
            if name not in self._tried and METHOD_TYPES[name] in wanted:
                self._next_id()
                return self._begin(name)
        return self._finish(False, f"peer refused EAP-{current} (Nak, proposed: {names}) and no other "
                                   f"allowed method is acceptable to both")
