"""EAP-TLS (RFC 5216; TLS 1.3 per RFC 9190), both roles, over in-memory TLS.

TLS engine
    pyOpenSSL (``OpenSSL.SSL.Connection`` with memory BIOs: ``bio_write``/``bio_read``).
    The standard library's ``ssl`` module runs TLS over ``MemoryBIO`` too, but Python 3.11
    exposes neither the TLS 1.2 master secret nor ``SSL_export_keying_material``, and the MSK
    cannot be computed without one of them.  pyOpenSSL has ``Connection.export_keying_material``
    (RFC 5705 / RFC 8446 7.5 exporters), which gives exactly the RFC 5216 / RFC 9190 key
    material:

    * TLS 1.2 (RFC 5216 2.3): ``Key_Material = TLS-PRF-128(master_secret, "client EAP
      encryption", client.random || server.random)`` = the RFC 5705 exporter with that label
      and no context; ``MSK = Key_Material[0:64]``.
    * TLS 1.3 (RFC 9190 2.3): ``Key_Material = TLS-Exporter("EXPORTER_EAP_TLS_Key_Material",
      0x0D, 128)``; ``MSK = Key_Material[0:64]``.

    strongSwan (libtls, used by its eap-tls plugin) derives the same values; its
    ``libtls.version_max`` defaults to 1.2.  TLS randomness comes from OpenSSL, not from the
    injected ``random_bytes`` (the only non-deterministic part of the EAP code).

Framing (RFC 5216 3.1/3.2)
    Type-Data = Flags [TLS Message Length (4 octets) if L] [TLS data].  Flags: L (0x80) the
    length is present, M (0x40) more fragments follow, S (0x20) EAP-TLS Start.  An outgoing
    TLS flight longer than ``fragment_size`` octets of TLS data is cut into fragments; the
    first carries L (like strongSwan we also set L on unfragmented messages; RFC 5216 allows
    it), all but the last carry M; the receiver acknowledges each fragment with an empty
    EAP-TLS message (Flags 0, no data).  Incoming fragments are reassembled up to
    ``max_message`` octets.

Conversation (server = EAP authenticator = TLS server)
    S: Start -> P: ClientHello -> S: server flight -> P: client flight (Certificate,
    CertificateVerify, Finished) -> S: TLS 1.2: ChangeCipherSpec+Finished; TLS 1.3: the
    "protected success indication", one application-data octet 0x00 (RFC 9190 2.5) ->
    P: ACK -> S: EAP-Success.  A TLS failure is reported with the TLS alert in an EAP-TLS
    message when OpenSSL produced one, then EAP-Failure.  The peer accepts EAP-Success only
    after its own handshake completed (and, for TLS 1.3, after the 0x00 indication).

Identity checks
    The server requires a client certificate chaining to ``ca``; with ``check_peer_identity``
    (default) the end-entity certificate must also name the EAP identity (subjectAltName
    rfc822Name / dNSName / URI, or the subject CN, case-insensitively; or the whole subject DN
    string).  The client verifies the server's chain against ``ca`` and, if ``server_name``
    is set, that the server certificate names it (subjectAltName dNSName or subject CN).
"""
from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID

from .packet import EapError, MethodResult, PeerResult

try:  # pyOpenSSL is needed for EAP-TLS only
    from OpenSSL import SSL, crypto
except ImportError:  # pragma: no cover - exercised only where pyOpenSSL is missing
    SSL = None  # type: ignore[assignment]
    crypto = None  # type: ignore[assignment]

__all__ = ["TlsConfig", "TlsServerMethod", "TlsPeerMethod", "FLAG_L", "FLAG_M", "FLAG_S",
           "EAP_TLS_LABEL", "EAP_TLS13_LABEL", "tls_available"]

FLAG_L = 0x80
FLAG_M = 0x40
FLAG_S = 0x20
EAP_TLS_LABEL = b"client EAP encryption"           # RFC 5216 2.3
EAP_TLS13_LABEL = b"EXPORTER_EAP_TLS_Key_Material"  # RFC 9190 2.3
EAP_TLS_TYPE_CODE = b"\x0d"                         # RFC 9190 2.3: context = EAP Type-Code 13
ACK = bytes([0])                                    # empty EAP-TLS message (Flags 0)
_INDICATION = b"\x00"                               # RFC 9190 2.5 protected success indication
_VERSIONS = {"1.2": "TLS1_2_VERSION", "1.3": "TLS1_3_VERSION"}


def tls_available() -> bool:
    """Whether pyOpenSSL (needed for EAP-TLS) is importable."""
    return SSL is not None


def _load_certs(value: Any, what: str) -> list[x509.Certificate]:
    if value is None:
        return []
    if isinstance(value, x509.Certificate):
        return [value]
    if isinstance(value, (bytes, str)):
        data = value.encode() if isinstance(value, str) else value
        try:
            if b"-----BEGIN" in data:
                return list(x509.load_pem_x509_certificates(data))
            return [x509.load_der_x509_certificate(data)]
        except ValueError as e:
            raise EapError(f"EAP-TLS {what}: cannot read certificate: {e}") from None
    out: list[x509.Certificate] = []
    for v in value:
        out.extend(_load_certs(v, what))
    return out


def _load_key(value: Any) -> Any:
    if value is None or not isinstance(value, (bytes, str)):
        return value
    data = value.encode() if isinstance(value, str) else value
    try:
        if b"-----BEGIN" in data:
            return serialization.load_pem_private_key(data, password=None)
        return serialization.load_der_private_key(data, password=None)
    except (ValueError, TypeError) as e:
        raise EapError(f"EAP-TLS private key: cannot read it: {e}") from None


@dataclass
class TlsConfig:
    """Certificates and policy for one EAP-TLS role.

    ``certificate``: our end-entity certificate (PEM/DER bytes or a cryptography
    certificate; PEM may hold the whole chain, end-entity first); ``private_key``: its key
    (PEM/DER, unencrypted, or a cryptography key); ``chain``: intermediates to send;
    ``ca``: trust anchors for the peer's certificate (PEM bundle, DER, certificates).
    ``fragment_size``: most TLS octets per EAP-TLS packet (strongSwan: 1024 per packet).
    """

    certificate: Any = None
    private_key: Any = None
    ca: Any = None
    chain: Any = None
    min_version: str = "1.2"
    max_version: str = "1.3"
    fragment_size: int = 1000
    max_message: int = 65536
    server_name: str | None = None
    check_peer_identity: bool = True
    _contexts: dict[bool, Any] = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        for v in (self.min_version, self.max_version):
            if v not in _VERSIONS:
                raise EapError(f"EAP-TLS version {v!r} not supported (use '1.2' or '1.3')")
        if float(self.min_version) > float(self.max_version):
            raise EapError("EAP-TLS min_version is above max_version")
        if not 64 <= self.fragment_size <= 16384:
            raise EapError(f"EAP-TLS fragment_size {self.fragment_size} outside 64..16384")
        if self.max_message < 16384:
            raise EapError("EAP-TLS max_message must be at least 16384")
        certs = _load_certs(self.certificate, "certificate")
        self._cert = certs[0] if certs else None
        self._chain = certs[1:] + _load_certs(self.chain, "chain")
        self._key = _load_key(self.private_key)
        self._ca = _load_certs(self.ca, "ca")
        if (self._cert is None) != (self._key is None):
            raise EapError("EAP-TLS needs both a certificate and its private key (or neither)")
        if not self._ca:
            raise EapError("EAP-TLS needs trust anchors (ca) to verify the peer's certificate")

    @classmethod
    def from_files(cls, certs: list[str] | None, private_key: str | None, cacerts: list[str],
                   **kw: Any) -> TlsConfig:
        """From PEM files as docs/config.md names them: ``certs`` (ours first, then
        intermediates), ``private_key`` (unencrypted), ``cacerts`` (trust anchors)."""
        def read(path: str) -> bytes:
            try:
                with open(path, "rb") as f:
                    return f.read()
            except OSError as e:
                raise EapError(f"EAP-TLS: cannot read {path}: {e.strerror or e}") from None

        cert_pems = b"".join(read(p) for p in certs or [])
        return cls(certificate=cert_pems or None, private_key=read(private_key) if private_key else None,
                   ca=b"".join(read(p) for p in cacerts), **kw)

    def context(self, server_side: bool) -> Any:
        """The pyOpenSSL context of one role, built once (contexts are frozen after first use)."""
        if SSL is None:
            raise EapError("EAP-TLS needs pyOpenSSL (pip install pyopenssl)")
        ctx = self._contexts.get(server_side)
        if ctx is not None:
            return ctx
        if server_side and self._cert is None:
            raise EapError("an EAP-TLS server needs a certificate and private key")
        try:
            ctx = SSL.Context(SSL.TLS_METHOD)
            ctx.set_min_proto_version(getattr(SSL, _VERSIONS[self.min_version]))
            ctx.set_max_proto_version(getattr(SSL, _VERSIONS[self.max_version]))
            ctx.set_options(SSL.OP_NO_TICKET | SSL.OP_NO_RENEGOTIATION)
            if not server_side:
                # strongSwan's TLS stack sends no renegotiation_info (RFC 5746); OpenSSL 3 refuses
                # such servers by default. Renegotiation is off anyway, so accepting them is safe.
                ctx.set_options(getattr(SSL, "OP_LEGACY_SERVER_CONNECT", 0x4))
            ctx.set_session_cache_mode(SSL.SESS_CACHE_OFF)
            if self._cert is not None:
                ctx.use_certificate(self._cert)
                ctx.use_privatekey(self._key)
                ctx.check_privatekey()
                for c in self._chain:
                    ctx.add_extra_chain_cert(c)
            store = ctx.get_cert_store()
            if store is None:
                raise EapError("EAP-TLS: OpenSSL context without a certificate store")
            for c in self._ca:
                store.add_cert(crypto.X509.from_cryptography(c))
            mode = SSL.VERIFY_PEER | (SSL.VERIFY_FAIL_IF_NO_PEER_CERT if server_side else 0)
            ctx.set_verify(mode, _verify_callback)
        except SSL.Error as e:
            raise EapError(f"EAP-TLS configuration: {_ssl_error(e)}") from None
        self._contexts[server_side] = ctx
        return ctx


def _ssl_error(e: Exception) -> str:
    args = getattr(e, "args", ())
    if args and isinstance(args[0], list) and args[0]:
        parts = []
        for item in args[0]:
            if isinstance(item, tuple) and item:
                parts.append(str(item[-1]))
            else:
                parts.append(str(item))
        return "; ".join(p for p in parts if p) or e.__class__.__name__
    return str(e) or e.__class__.__name__


def cert_names(cert: x509.Certificate) -> list[str]:
    """Names a certificate carries: SAN rfc822Name, dNSName, URI, then subject CNs."""
    names: list[str] = []
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        for cls in (x509.RFC822Name, x509.DNSName, x509.UniformResourceIdentifier):
            names.extend(san.get_values_for_type(cls))
    except x509.ExtensionNotFound:
        pass
    for attr in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME):
        if isinstance(attr.value, str):
            names.append(attr.value)
    return names


def _names_match(cert: x509.Certificate, wanted: str) -> bool:
    w = wanted.casefold()
    if any(n.casefold() == w for n in cert_names(cert)):
        return True
    return cert.subject.rfc4514_string() == wanted


# OpenSSL X509_V_ERR_* codes seen in practice (x509_vfy.h), for readable reasons.
_X509_ERRORS = {
    2: "unable to get issuer certificate", 7: "certificate signature failure",
    9: "certificate is not yet valid", 10: "certificate has expired",
    18: "self-signed certificate", 19: "self-signed certificate in chain",
    20: "unable to get local issuer certificate (untrusted CA)", 21: "unable to verify the first certificate",
    23: "certificate revoked", 24: "invalid CA certificate", 26: "unsupported certificate purpose",
}


def _verify_callback(conn: Any, cert: Any, errnum: int, depth: int, ok: int) -> bool:
    """OpenSSL's chain verdict, plus the name check of the end-entity certificate.
    Never raises (pyOpenSSL would re-raise the exception out of do_handshake)."""
    engine = conn.get_app_data()
    try:
        if not ok:
            if engine is not None and not engine.detail:
                what = _X509_ERRORS.get(errnum, f"X509 error {errnum}")
                engine.detail = f"peer certificate rejected: {what} (depth {depth})"
            return False
        if depth != 0 or engine is None or engine.expected_name is None:
            return True
        ee = cert.to_cryptography()
        if _names_match(ee, engine.expected_name):
            return True
        engine.detail = (f"peer certificate {ee.subject.rfc4514_string()!r} does not name "
                         f"{engine.expected_name!r}")
        return False
    except Exception as e:  # noqa: BLE001 - a certificate we cannot inspect is rejected
        if engine is not None:
            engine.detail = f"peer certificate could not be checked: {e}"
        return False


class _Engine:
    """One TLS connection over memory BIOs."""

    def __init__(self, config: TlsConfig, server_side: bool, expected_name: str | None):
        self.server_side = server_side
        self.expected_name = expected_name
        self.detail = ""  # set by the verify callback
        self.complete = False
        self.error: str | None = None
        self.indication = False  # TLS 1.3 0x00 sent (server) / received (peer)
        ctx = config.context(server_side)
        self.conn = SSL.Connection(ctx, None)
        self.conn.set_app_data(self)
        if server_side:
            self.conn.set_accept_state()
        else:
            self.conn.set_connect_state()

    @property
    def version(self) -> str:
        return self.conn.get_protocol_version_name()

    @property
    def tls13(self) -> bool:
        return self.version == "TLSv1.3"

    def _fail(self, e: Exception) -> None:
        msg = _ssl_error(e)
        self.error = f"TLS: {self.detail}" if self.detail else f"TLS: {msg}"

    def advance(self, data: bytes = b"") -> bytes:
        """Feed received TLS octets, run the handshake, return what TLS wants to send."""
        if data:
            self.conn.bio_write(data)
        if self.error is None:
            try:
                if not self.complete:
                    self.conn.do_handshake()
                    self.complete = True
                    if self.server_side and self.tls13:
                        self.conn.send(_INDICATION)
                        self.indication = True
                if self.complete and not self.server_side:
                    self._read_application_data()
            except SSL.WantReadError:
                pass
            except SSL.Error as e:
                self._fail(e)
        return self._drain()

    def _read_application_data(self) -> None:
        while True:
            try:
                got = self.conn.recv(16384)
            except SSL.WantReadError:
                return
            except SSL.ZeroReturnError:
                self.error = "TLS: the server closed the TLS connection"
                return
            if not self.tls13 or got.strip(_INDICATION):
                self.error = f"TLS: unexpected application data from the server ({len(got)} octets)"
                return
            self.indication = True

    def _drain(self) -> bytes:
        out = bytearray()
        while True:
            try:
                chunk = self.conn.bio_read(65536)
            except SSL.WantReadError:
                break
            if not chunk:
                break
            out += chunk
        return bytes(out)

    def msk(self) -> bytes:
        if self.tls13:
            km = self.conn.export_keying_material(EAP_TLS13_LABEL, 128, EAP_TLS_TYPE_CODE)
        else:
            km = self.conn.export_keying_material(EAP_TLS_LABEL, 128)
        return km[:64]

    def peer_certificate(self) -> x509.Certificate | None:
        return self.conn.get_peer_certificate(as_cryptography=True)


class _Framing:
    """EAP-TLS fragmentation and reassembly (RFC 5216 3.1/3.2)."""

    def __init__(self, fragment_size: int, max_message: int):
        self.fragment_size = fragment_size
        self.max_message = max_message
        self.out = b""
        self.out_pos = 0
        self.inbuf = bytearray()
        self.in_total: int | None = None

    @staticmethod
    def parse(type_data: bytes) -> tuple[int, int | None, bytes]:
        if not type_data:
            raise EapError("EAP-TLS message without its Flags octet")
        flags = type_data[0]
        if flags & 0x1F:
            raise EapError(f"EAP-TLS reserved flag bits set (0x{flags:02x})")
        if flags & FLAG_L:
            if len(type_data) < 5:
                raise EapError("EAP-TLS L flag set without the 4-octet TLS Message Length")
            return flags, struct.unpack("!I", type_data[1:5])[0], type_data[5:]
        return flags, None, type_data[1:]

    @property
    def sending(self) -> bool:
        return self.out_pos < len(self.out)

    def queue(self, data: bytes) -> None:
        self.out, self.out_pos = data, 0

    def next_fragment(self) -> bytes:
        chunk = self.out[self.out_pos:self.out_pos + self.fragment_size]
        first = self.out_pos == 0
        self.out_pos += len(chunk)
        flags = FLAG_M if self.sending else 0
        if first:
            flags |= FLAG_L
            return struct.pack("!BI", flags, len(self.out)) + chunk
        return bytes([flags]) + chunk

    def receive(self, flags: int, total: int | None, data: bytes) -> bytes | None:
        """Add one fragment; the whole TLS message once the last arrived, else None.
        Checks everything before changing state, so an EapError leaves it as it was."""
        new_total = self.in_total
        if total is not None:
            if total > self.max_message:
                raise EapError(f"EAP-TLS message of {total} octets exceeds the limit of {self.max_message}")
            if self.in_total is None and not self.inbuf:
                new_total = total
            elif self.in_total != total:
                raise EapError(f"EAP-TLS TLS Message Length changed from {self.in_total} to {total}")
        if not data and flags & FLAG_M:
            raise EapError("EAP-TLS fragment with the M flag but no data")
        size = len(self.inbuf) + len(data)
        limit = new_total if new_total is not None else self.max_message
        if size > limit:
            raise EapError(f"EAP-TLS fragments exceed the {'announced ' if new_total else 'limit of '}{limit} octets")
        last = not flags & FLAG_M
        if last and new_total is not None and size != new_total:
            raise EapError(f"EAP-TLS message of {size} octets, {new_total} announced")
        self.inbuf += data
        self.in_total = new_total
        if not last:
            return None
        whole = bytes(self.inbuf)
        self.inbuf.clear()
        self.in_total = None
        return whole


class TlsServerMethod:
    """EAP-TLS authenticator side."""

    name = "tls"
    eap_type = 13

    def __init__(self, config: TlsConfig, identity: str | None, known_user: bool = True):
        if not isinstance(config, TlsConfig):
            raise EapError("tls_context must be an ikev2.eap.TlsConfig")
        self.config = config
        self.identity = identity
        self.known_user = known_user
        expected = identity if (config.check_peer_identity and identity) else None
        self.engine = _Engine(config, server_side=True, expected_name=expected)
        self.framing = _Framing(config.fragment_size, config.max_message)
        self.failed = False
        self.peer_certificate: x509.Certificate | None = None

    def start(self, identifier: int) -> bytes:
        return bytes([FLAG_S])

    def _send(self, data: bytes) -> MethodResult:
        self.framing.queue(data)
        return MethodResult(request=self.framing.next_fragment())

    def process(self, identifier: int, type_data: bytes) -> MethodResult:
        flags, total, data = self.framing.parse(type_data)
        if flags & FLAG_S:
            raise EapError("EAP-TLS Start flag in a response")
        is_ack = not data and not flags & (FLAG_L | FLAG_M)
        if self.framing.sending:
            if not is_ack:
                raise EapError("EAP-TLS: expected an acknowledgement of our fragment")
            return MethodResult(request=self.framing.next_fragment())
        if is_ack:
            return self._finish()
        whole = self.framing.receive(flags, total, data)
        if whole is None:
            return MethodResult(request=ACK)
        out = self.engine.advance(whole)
        if self.engine.error is not None:
            self.failed = True
            if out:
                return self._send(out)  # the alert; EAP-Failure follows the peer's ACK
            return MethodResult(done=True, reason=self.engine.error)
        if out:
            return self._send(out)
        return MethodResult(request=ACK)

    def _finish(self) -> MethodResult:
        if self.failed:
            return MethodResult(done=True, reason=self.engine.error or "TLS failed")
        if not self.engine.complete:
            return MethodResult(done=True, reason="EAP-TLS: peer acknowledged before the TLS handshake finished")
        self.peer_certificate = self.engine.peer_certificate()
        if not self.known_user:
            return MethodResult(done=True, reason=f"unknown user {self.identity!r} (certificate was valid)")
        return MethodResult(done=True, success=True, msk=self.engine.msk(),
                            reason=f"EAP-TLS ({self.engine.version}) succeeded")


class TlsPeerMethod:
    """EAP-TLS peer side."""

    name = "tls"
    eap_type = 13

    def __init__(self, config: TlsConfig):
        if not isinstance(config, TlsConfig):
            raise EapError("tls_context must be an ikev2.eap.TlsConfig")
        self.config = config
        self.engine: _Engine | None = None
        self.framing = _Framing(config.fragment_size, config.max_message)
        self.msk: bytes | None = None

    @property
    def may_succeed(self) -> bool:
        e = self.engine
        return (e is not None and e.complete and e.error is None
                and not self.framing.sending and (e.indication or not e.tls13))

    def _send(self, data: bytes) -> PeerResult:
        self.framing.queue(data)
        return PeerResult(response=self.framing.next_fragment())

    def process(self, identifier: int, type_data: bytes) -> PeerResult:
        flags, total, data = self.framing.parse(type_data)
        if flags & FLAG_S:
            if self.engine is not None:
                raise EapError("EAP-TLS Start in the middle of the conversation")
            if data or total is not None:
                raise EapError("EAP-TLS Start carrying data")
            self.engine = _Engine(self.config, server_side=False, expected_name=self.config.server_name)
            return self._send(self.engine.advance())
        if self.engine is None:
            raise EapError("EAP-TLS request before the Start")
        is_ack = not data and not flags & (FLAG_L | FLAG_M)
        if self.framing.sending:
            if not is_ack:
                raise EapError("EAP-TLS: expected an acknowledgement of our fragment")
            return PeerResult(response=self.framing.next_fragment())
        if is_ack:
            raise EapError("EAP-TLS: unexpected acknowledgement (nothing was sent)")
        whole = self.framing.receive(flags, total, data)
        if whole is None:
            return PeerResult(response=ACK)
        out = self.engine.advance(whole)
        if self.engine.error is not None:
            return PeerResult(response=self._send(out).response if out else ACK, failed=True,
                              reason=self.engine.error)
        if self.engine.complete and self.msk is None:
            self.msk = self.engine.msk()
        if out:
            return self._send(out)
        return PeerResult(response=ACK)
