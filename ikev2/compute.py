"""The expensive computations of a handshake as small picklable jobs (pure functions of bytes).

The engine (ikev2.compute_async) may hand a job to its user instead of computing it on the
spot: a :class:`ComputeNeeded` event carries a ``token`` and the ``job``; the user runs
``run(job)`` wherever it likes (a worker process of the daemon, or inline) and feeds the result
back with ``IkeManager.compute_done(token, result, now)``. A job holds everything it needs as
bytes and small numbers, never an IKE SA, so it pickles in well under a kilobyte (a certificate
chain and the gateway's private key in DER make an IKE_AUTH job a few kilobytes).

Jobs (see docs/engine.md, "Handshake crypto off the event loop", for which ones are worth the
round trip to a worker and the measurements behind that):

- :class:`InitKeysJob` — responder IKE_SA_INIT: our key share from the job's seed, the shared
  secret with the peer's (DH/ECDH, or ML-KEM encapsulation), SKEYSEED and the seven SK_* keys.
- :class:`AuthJob` — responder IKE_AUTH with certificates: the peer's certificate chain against
  the trust anchors, its identity against the certificate, its AUTH signature, and our signature.

Randomness: a job never draws from the engine's random source; it carries a ``seed`` drawn by
the engine, expanded with SHAKE-256 (``SeededRandom``), so the same job gives the same result
wherever it runs (signatures excepted: OpenSSL draws the ECDSA/PSS randomness, as it does inline).
"""
from __future__ import annotations

import datetime
import hashlib
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from .crypto.keys import IkeKeys, derive_ike_keys
from .crypto.transforms import encr_by_id, integ_by_id, prf_by_id
from .errors import IKEv2Error
from .events import Event

__all__ = ["AuthJob", "AuthResult", "ComputeNeeded", "InitKeysJob", "InitKeysResult", "InlineExecutor",
           "Job", "OffloadPolicy", "Result", "SeededRandom", "estimated_cost_us", "run", "run_batch"]


class SeededRandom:
    """A deterministic random stream from a seed (SHAKE-256), for a job's key share."""

    def __init__(self, seed: bytes):
        self._seed = seed
        self._used = 0

    def __call__(self, n: int) -> bytes:
        out = hashlib.shake_256(self._seed).digest(self._used + n)[self._used:]
        self._used += n
        return out


@dataclass(frozen=True)
class InitKeysJob:
    """Responder IKE_SA_INIT: our KE data, shared secret and the IKE SA keys (RFC 7296 2.14)."""
    group: int
    peer_ke: bytes = field(repr=False)
    seed: bytes = field(repr=False)
    prf: int
    encr: int
    encr_bits: int | None
    integ: int | None
    ni: bytes = field(repr=False)
    nr: bytes = field(repr=False)
    spi_i: bytes
    spi_r: bytes


@dataclass(frozen=True)
class InitKeysResult:
    """``error``: the peer's KE data was rejected (then no keys)."""
    ke_data: bytes = field(repr=False, default=b"")
    keys: IkeKeys | None = None
    error: str = ""


@dataclass(frozen=True)
class AuthJob:
    """Responder IKE_AUTH with certificates: check the peer, sign for us.

    ``certs``: the peer's CERT payloads (end entity first, DER); ``cacerts``: our trust anchors
    (DER); ``when``: the wall-clock time to check validity at; ``peer_octets``: what the peer's
    AUTH signs; ``our_key``: our private key (PKCS#8 DER); ``our_octets``: what ours signs."""
    ident_type: int
    ident_data: bytes
    ident_text: str
    certs: tuple[bytes, ...] = field(repr=False)
    cacerts: tuple[bytes, ...] = field(repr=False)
    when: float
    auth_method: int
    auth_data: bytes = field(repr=False)
    peer_octets: bytes = field(repr=False)
    our_key: bytes = field(repr=False)
    our_octets: bytes = field(repr=False)
    hash_alg: int | None
    sign_cost_us: float = 40.0  # our signature's cost (RSA-3072: ~700 us; ECDSA/EdDSA: ~40 us)


@dataclass(frozen=True)
class AuthResult:
    """``error``: why the peer is refused (then no signature); else our AUTH method and data."""
    error: str = ""
    method: int = 0
    data: bytes = field(repr=False, default=b"")


Job = InitKeysJob | AuthJob
Result = InitKeysResult | AuthResult


@dataclass
class ComputeNeeded(Event):
    """Gateway: run ``ikev2.compute.run(job)`` (in a worker or inline) and call
    ``IkeManager.compute_done(token, result, now)``. ``token`` is set by the manager."""
    job: Job = field(repr=False)
    token: int = 0
    ticket: int = 0


# ---------------------------------------------------------------- cost model

# Measured single-core costs in microseconds on the development machine (bench numbers in
# docs/engine.md); the IPC round trip to a worker costs the event loop about 60-100 us.
_KE_COST_US = {"x25519": 90, "x448": 260, "mlkem": 150}
_ECP_COST_US = {64: 120, 96: 600, 132: 1400}  # by KE data length: P-256, P-384, P-521
_AUTH_BASE_US = 350  # parse + chain check + peer signature (ECDSA P-256 / RSA-2048 class)


def estimated_cost_us(job: Job) -> float:
    """Roughly what running ``job`` costs the CPU, in microseconds."""
    if isinstance(job, InitKeysJob):
        from .crypto.dh import ke_by_id
        ke = ke_by_id(job.group)
        kind = getattr(ke, "kind", "")
        size = int(getattr(ke, "public_len", 0))
        if kind == "modp":
            return float(850.0 * (size / 256) ** 2.5)
        if kind == "ecp":
            return float(_ECP_COST_US.get(size, 600))
        return float(_KE_COST_US.get(kind, 150)) + 20.0
    return _AUTH_BASE_US + job.sign_cost_us


def signature_cost_us(private_key: object) -> float:
    """Roughly what one signature with ``private_key`` costs (RSA grows with the cube of the size)."""
    bits = getattr(private_key, "key_size", 0)
    from cryptography.hazmat.primitives.asymmetric import rsa
    if isinstance(private_key, rsa.RSAPrivateKey) and bits:
        return 700.0 * (bits / 3072) ** 3
    return 40.0


@dataclass(frozen=True)
class OffloadPolicy:
    """Which jobs the engine hands out: those estimated to cost at least ``min_cost_us``
    (0 = every job; tests use it). None on the manager = compute everything inline."""
    min_cost_us: float = 200.0

    def wants(self, job: Job) -> bool:
        return estimated_cost_us(job) >= self.min_cost_us


_KEY_CACHE_SIZE = 16
_DER: dict[int, tuple[object, bytes]] = {}  # id(private key) -> (the key, its PKCS#8 DER)


def private_key_der(key: object) -> bytes:
    """Our private key as unencrypted PKCS#8 DER, for an AuthJob (serialised once per key)."""
    got = _DER.get(id(key))
    if got is not None and got[0] is key:
        return got[1]
    from cryptography.hazmat.primitives import serialization
    der = key.private_bytes(serialization.Encoding.DER,  # type: ignore[attr-defined]
                            serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    if len(_DER) >= _KEY_CACHE_SIZE:
        _DER.clear()  # keys replaced by reloads: start over
    _DER[id(key)] = (key, der)
    return bytes(der)


# ---------------------------------------------------------------- running a job

_KEYS: OrderedDict[bytes, Any] = OrderedDict()  # DER digest -> loaded private key (per process)
_ANCHORS: OrderedDict[bytes, Any] = OrderedDict()  # trust anchor DER -> parsed certificate


def _private_key(der: bytes) -> Any:
    """Load (once per process) our long-term private key."""
    from cryptography.hazmat.primitives.serialization import load_der_private_key
    digest = hashlib.sha256(der).digest()
    key = _KEYS.get(digest)
    if key is None:
        # The key comes from the daemon, which checked it when it loaded the configuration;
        # checking an RSA key again costs ~0.1 s (RSA-3072) per worker.
        key = load_der_private_key(der, None, unsafe_skip_rsa_key_validation=True)
        _KEYS[digest] = key
        while len(_KEYS) > _KEY_CACHE_SIZE:
            _KEYS.popitem(last=False)
    else:
        _KEYS.move_to_end(digest)
    return key


def _anchor(der: bytes) -> Any:
    from .certs import parse_cert_payload
    cert = _ANCHORS.get(der)
    if cert is None:
        cert = _ANCHORS[der] = parse_cert_payload(der)
        while len(_ANCHORS) > 64:
            _ANCHORS.popitem(last=False)
    return cert


def _run_init(job: InitKeysJob) -> InitKeysResult:
    from .crypto.dh import ke_by_id
    ke = ke_by_id(job.group)
    prf, encr = prf_by_id(job.prf), encr_by_id(job.encr, job.encr_bits)
    integ = integ_by_id(job.integ) if job.integ is not None else None
    if ke is None or prf is None or encr is None or (job.integ is not None and integ is None):
        raise ValueError("InitKeysJob names an unknown transform")
    try:
        ke_data, shared = ke.respond(SeededRandom(job.seed), job.peer_ke)
    except IKEv2Error as e:  # InvalidKeyExchange
        return InitKeysResult(error=str(e))
    _skeyseed, keys = derive_ike_keys(prf, encr, integ, shared, job.ni, job.nr, job.spi_i, job.spi_r)
    return InitKeysResult(ke_data=ke_data, keys=keys)


def _run_auth(job: AuthJob) -> AuthResult:
    from .certs import CertificateError, identity_matches_cert, parse_cert_payload, verify_chain
    from .constants import HashAlgorithm
    from .crypto import auth as cauth
    from .identity import Identity
    try:
        ee = parse_cert_payload(job.certs[0])
        inter = [parse_cert_payload(c) for c in job.certs[1:]]
        anchors = [_anchor(c) for c in job.cacerts]
        verify_chain(ee, inter, anchors, datetime.datetime.fromtimestamp(job.when, datetime.UTC))
    except CertificateError as e:
        return AuthResult(error=f"certificate of '{job.ident_text}' rejected: {e}")
    if not identity_matches_cert(Identity(job.ident_type, job.ident_data), ee):
        return AuthResult(error=f"identity '{job.ident_text}' is not confirmed by its certificate")
    if not cauth.verify(ee.public_key(), job.auth_method, job.auth_data, job.peer_octets):
        return AuthResult(error=f"signature of '{job.ident_text}' does not verify")
    h = HashAlgorithm(job.hash_alg) if job.hash_alg is not None else None
    method, data = cauth.sign(_private_key(job.our_key), job.our_octets, h)
    return AuthResult(method=method, data=data)


def run(job: Job) -> Result:
    """Run one job (in a worker process or inline); a pure function of the job's bytes."""
    if isinstance(job, InitKeysJob):
        return _run_init(job)
    if isinstance(job, AuthJob):
        return _run_auth(job)
    raise TypeError(f"not a compute job: {type(job).__name__}")


def run_batch(jobs: list[Job]) -> list[tuple[Result | None, str]]:
    """Several jobs in one call (one round trip to a worker): (result, "") or (None, the error)
    for each, in order; one job's failure does not fail the others."""
    out: list[tuple[Result | None, str]] = []
    for job in jobs:
        try:
            out.append((run(job), ""))
        except Exception as e:  # noqa: BLE001 - reported for this job only
            out.append((None, f"{type(e).__name__}: {e}"))
    return out


class InlineExecutor:
    """Runs the jobs a manager asks for synchronously, in this process (tests, crypto_workers = 0
    with offloading forced). ``complete(manager, events, now)`` answers every ComputeNeeded in
    ``events`` and returns the other events."""

    def __init__(self) -> None:
        self.jobs_run = 0

    def complete(self, manager: Any, events: list[Event], now: float) -> list[Event]:
        rest: list[Event] = []
        for ev in events:
            if isinstance(ev, ComputeNeeded):
                self.jobs_run += 1
                manager.compute_done(ev.token, run(ev.job), now)
            else:
                rest.append(ev)
        return rest
