"""Proposals: strongSwan-style configuration strings, selection and suites.

Configuration syntax (as in strongSwan's ``proposals =`` / ``esp_proposals =``): algorithm
keywords joined with ``-``, several of one kind allowed, e.g.::

    aes256gcm16-prfsha256-x25519           IKE, AEAD: PRF must be given
    aes128-sha256-ecp256                   IKE: sha256 implies prfsha256
    aes256-aes128-sha256-sha384-ecp256-x25519
    aes256gcm16                            ESP (no DH = no PFS; no esn keyword = NO_ESN)
    aes128-sha256-modp2048                 ESP with PFS group modp2048
    aes256gcm16-esn / -noesn / -esn-noesn  ESP extended sequence numbers
    aes256gcm16-prfsha384-x25519-ke1_mlkem768      IKE, hybrid: x25519, then ML-KEM-768 in
                                           IKE_INTERMEDIATE (RFC 9370 Additional Key Exchange 1)
    aes256gcm16-prfsha384-mlkem768         IKE, ML-KEM-768 as the only key exchange
    ...-x25519-ke1_mlkem768-ke2_mlkem1024  several additional key exchanges (ke1_ .. ke7_)
    ...-ke1_mlkem768-ke1_none              ADDKE1 optional (NONE accepted, RFC 9370 2.2.1)
    aes256gcm16-x25519-ke1_mlkem768        ESP: PFS with x25519 + ML-KEM-768 (CREATE_CHILD_SA
                                           followed by IKE_FOLLOWUP_KE)

Weak algorithms (des, 3des, md5, modp768/1024/1536, ...) are refused with a ProposalError
that says so; sha1/prfsha1 are accepted for old peers.

Selection (``choose_proposal``) follows RFC 7296 2.7 / 3.3.6 as a responder: the first of
the peer's proposals (in the peer's order) that one of ours covers; for every transform type
the peer's most preferred algorithm that we also allow is picked.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

from ikev2.constants import DhId, EncrId, EsnId, IntegId, PrfId, ProtocolId, TransformType
from ikev2.errors import ProposalError
from ikev2.payloads import Proposal, Transform

from .dh import ALL_KE_METHODS, ke_by_id
from .kex import KeyExchange
from .transforms import (
    ENCR_ALGORITHMS,
    INTEG_ALGORITHMS,
    PRF_ALGORITHMS,
    EncrAlgorithm,
    IntegAlgorithm,
    PrfAlgorithm,
    encr_by_id,
    integ_by_id,
    prf_by_id,
)

__all__ = [
    "parse_proposal",
    "parse_proposals",
    "format_proposal",
    "proposal_keywords",
    "proposal_display",
    "choose_proposal",
    "IkeSuite",
    "ChildSuite",
    "ike_suite",
    "child_suite",
    "ADDKE_TYPES",
]

ENCR, PRF, INTEG, DH, ESN = (TransformType.ENCR, TransformType.PRF, TransformType.INTEG,
                             TransformType.DH, TransformType.ESN)
# RFC 9370 Additional Key Exchange 1..7 (transform types 6..12), keywords ke1_ .. ke7_.
ADDKE_TYPES: tuple[int, ...] = tuple(int(TransformType.ADDKE1) + i for i in range(7))
_ALL_TYPES = (ENCR, PRF, INTEG, DH) + ADDKE_TYPES + (ESN,)

# keyword -> (transform type, transform id, key length in bits or None)
_KEYWORDS: dict[str, tuple[int, int, int | None]] = {}
for _e in ENCR_ALGORITHMS:
    _KEYWORDS[_e.keyword] = (ENCR, _e.transform_id,
                             _e.key_bits if _e.key_length_attribute else None)
for _i in INTEG_ALGORITHMS:
    _KEYWORDS[_i.keyword] = (INTEG, _i.transform_id, None)
for _p in PRF_ALGORITHMS:
    _KEYWORDS[_p.keyword] = (PRF, _p.transform_id, None)
for _k in ALL_KE_METHODS:
    _KEYWORDS[_k.keyword] = (DH, _k.group, None)
_KEYWORDS["esn"] = (ESN, EsnId.ESN, None)
_KEYWORDS["noesn"] = (ESN, EsnId.NO_ESN, None)

_ALIASES = {
    "aes": "aes128",
    "aes128gcm128": "aes128gcm16", "aes192gcm128": "aes192gcm16", "aes256gcm128": "aes256gcm16",
    "aes128gcm": "aes128gcm16", "aes192gcm": "aes192gcm16", "aes256gcm": "aes256gcm16",
    "sha": "sha1", "sha1_96": "sha1",
    "sha2_256": "sha256", "sha2_384": "sha384", "sha2_512": "sha512",
    "sha256_128": "sha256", "sha384_192": "sha384", "sha512_256": "sha512",
    "prfsha": "prfsha1",
    "prfsha2_256": "prfsha256", "prfsha2_384": "prfsha384", "prfsha2_512": "prfsha512",
    "curve25519": "x25519", "curve448": "x448",
}

_WEAK = {
    "des": "DES", "3des": "3DES", "cast128": "CAST-128", "blowfish": "Blowfish",
    "blowfish128": "Blowfish", "blowfish192": "Blowfish", "blowfish256": "Blowfish",
    "idea": "IDEA", "rc5": "RC5", "null": "NULL encryption",
    "md5": "HMAC-MD5", "md5_128": "HMAC-MD5", "prfmd5": "PRF-HMAC-MD5",
    "modp768": "the 768-bit MODP group", "modp1024": "the 1024-bit MODP group",
    "modp1536": "the 1536-bit MODP group",
    "modp1024s160": "the RFC 5114 MODP group 22", "modp2048s224": "the RFC 5114 MODP group 23",
    "modp2048s256": "the RFC 5114 MODP group 24",
    "ecp192": "the 192-bit ECP group", "ecp224": "the 224-bit ECP group",
}

_UNSUPPORTED_PREFIXES = (
    "aes128ctr", "aes192ctr", "aes256ctr", "aes128ccm", "aes192ccm", "aes256ccm",
    "aes128gcm8", "aes192gcm8", "aes256gcm8", "aes128gcm12", "aes192gcm12", "aes256gcm12",
    "aes128gcm64", "aes192gcm64", "aes256gcm64", "aes128gcm96", "aes192gcm96", "aes256gcm96",
    "aes128gmac", "aes192gmac", "aes256gmac", "camellia", "serpent", "twofish",
    "aesxcbc", "aescmac", "prfaesxcbc", "prfaescmac", "prfcamelliaxcbc", "camelliaxcbc",
    "sha256_96", "sha1_160", "modp6144", "modp8192", "ecp224bp", "ecp256bp", "ecp384bp",
    "ecp512bp", "kyber", "frodo", "bike", "hqc", "sha3", "prfsha3", "chacha20poly1305ipsec",
)

_KIND: dict[int, str] = {ENCR: "encryption", PRF: "PRF", INTEG: "integrity", DH: "key exchange", ESN: "ESN"}
_KIND.update({t: f"additional key exchange {i}" for i, t in enumerate(ADDKE_TYPES, 1)})


def _lookup(token: str, text: str) -> tuple[int, int, int | None]:
    if len(token) > 4 and token[:2] == "ke" and token[2] in "1234567" and token[3] == "_":
        # RFC 9370: keN_<method> is Additional Key Exchange N; keN_none makes it optional.
        n, rest = int(token[2]), token[4:]
        if rest == "none":
            return (ADDKE_TYPES[n - 1], 0, None)
        ttype, tid, bits = _lookup(rest, text)
        if ttype != DH:
            raise ProposalError(f"{token!r} in proposal {text!r}: {rest!r} is not a key "
                                f"exchange method")
        return (ADDKE_TYPES[n - 1], tid, bits)
    word = _ALIASES.get(token, token)
    if word in _KEYWORDS:
        ttype, tid, bits = _KEYWORDS[word]
        method = ke_by_id(tid) if ttype == DH else None
        if method is not None and not method.available:
            raise ProposalError(f"algorithm {token!r} in proposal {text!r} cannot be used: "
                                f"{method.unavailable_reason}")
        return ttype, tid, bits
    if token in _WEAK:
        raise ProposalError(
            f"algorithm {token!r} ({_WEAK[token]}) is refused as weak in proposal {text!r}")
    if token.startswith(_UNSUPPORTED_PREFIXES):
        raise ProposalError(f"algorithm {token!r} is not supported in proposal {text!r}")
    raise ProposalError(f"unknown algorithm keyword {token!r} in proposal {text!r}")


def parse_proposal(text: str, protocol: ProtocolId) -> Proposal:
    """Parse one strongSwan-style proposal string into a Proposal (num 1, empty SPI)."""
    protocol = ProtocolId(protocol)
    if protocol not in (ProtocolId.IKE, ProtocolId.ESP):
        raise ProposalError(f"{protocol.name} proposals are not supported")
    if not isinstance(text, str) or not text.strip():
        raise ProposalError("empty proposal")
    raw = text.strip()
    chosen: dict[int, list[tuple[int, int | None]]] = {t: [] for t in _ALL_TYPES}
    for token in raw.lower().split("-"):
        token = token.strip()
        if not token:
            raise ProposalError(f"empty algorithm keyword in proposal {raw!r}")
        ttype, tid, bits = _lookup(token, raw)
        if (tid, bits) not in chosen[ttype]:
            chosen[ttype].append((tid, bits))

    encrs = [e for tid, bits in chosen[ENCR] if (e := encr_by_id(tid, bits)) is not None]  # _lookup checked
    if not encrs:
        raise ProposalError(f"proposal {raw!r} has no encryption algorithm")
    aead = [e for e in encrs if e.aead]
    plain = [e for e in encrs if not e.aead]
    if aead and plain:
        raise ProposalError(
            f"proposal {raw!r} mixes AEAD ({aead[0].keyword}) and non-AEAD "
            f"({plain[0].keyword}) encryption algorithms; use two proposals")
    if aead and chosen[INTEG]:
        integ = integ_by_id(chosen[INTEG][0][0])
        integ_name = integ.keyword if integ else str(chosen[INTEG][0][0])
        raise ProposalError(
            f"AEAD algorithm {aead[0].keyword!r} cannot be combined with integrity algorithm "
            f"{integ_name!r} in proposal {raw!r}")
    if plain and not chosen[INTEG]:
        raise ProposalError(
            f"proposal {raw!r}: encryption {plain[0].keyword!r} needs an integrity algorithm "
            f"(e.g. sha256)")

    if protocol == ProtocolId.IKE:
        if chosen[ESN]:
            raise ProposalError(f"proposal {raw!r}: esn/noesn are not allowed in IKE proposals")
        if not chosen[PRF]:
            # strongSwan: without an explicit PRF, use the ones matching the integrity algs.
            for tid, _ in chosen[INTEG]:
                prf = _PRF_FOR_INTEG[tid]
                if (prf, None) not in chosen[PRF]:
                    chosen[PRF].append((prf, None))
        if not chosen[PRF]:
            raise ProposalError(
                f"IKE proposal {raw!r} needs a PRF (e.g. prfsha256) with an AEAD algorithm")
        if not chosen[DH]:
            raise ProposalError(
                f"IKE proposal {raw!r} needs a key exchange method (e.g. x25519 or ecp256)")
        if (DhId.NONE, None) in chosen[DH]:
            raise ProposalError(f"IKE proposal {raw!r}: the first key exchange cannot be NONE")
    else:
        if chosen[PRF]:
            prf_alg = prf_by_id(chosen[PRF][0][0])
            prf_name = prf_alg.keyword if prf_alg else str(chosen[PRF][0][0])
            raise ProposalError(
                f"PRF {prf_name!r} is not allowed in an {protocol.name} proposal {raw!r}")
        if not chosen[ESN]:
            chosen[ESN].append((EsnId.NO_ESN, None))

    if any(chosen[t] for t in ADDKE_TYPES) and not chosen[DH]:
        raise ProposalError(f"proposal {raw!r}: additional key exchanges need a first one")
    transforms = [Transform(type=int(t), id=int(tid), key_length=bits)
                  for t in _ALL_TYPES for tid, bits in chosen[t]]
    return Proposal(num=1, protocol=int(protocol), spi=b"", transforms=transforms)


def parse_proposals(texts: str | Iterable[str], protocol: ProtocolId) -> list[Proposal]:
    """Several proposals (a list, or one comma-separated string), numbered from 1."""
    if isinstance(texts, str):
        texts = [t for t in texts.split(",") if t.strip()]
    out = []
    for n, text in enumerate(texts, 1):
        p = parse_proposal(text, protocol)
        p.num = n
        out.append(p)
    return out


_PRF_FOR_INTEG: dict[int, int] = {
    IntegId.HMAC_SHA1_96: PrfId.HMAC_SHA1,
    IntegId.HMAC_SHA2_256_128: PrfId.HMAC_SHA2_256,
    IntegId.HMAC_SHA2_384_192: PrfId.HMAC_SHA2_384,
    IntegId.HMAC_SHA2_512_256: PrfId.HMAC_SHA2_512,
}


# --- formatting ------------------------------------------------------------------------------

_DISPLAY_ORDER = (ENCR, INTEG, PRF, DH) + ADDKE_TYPES + (ESN,)  # strongSwan's %P order


def _enum_name(enum_cls: type[IntEnum], value: int) -> str:
    try:
        return str(enum_cls(value).name)
    except ValueError:
        return str(value)


def _transform_text(t: Transform, display: bool) -> str:
    ttype = t.type
    if ttype == ENCR:
        a = encr_by_id(t.id, t.key_length)
        if a is not None:
            return a.name if display else a.keyword
        base = _enum_name(EncrId, t.id)
        return f"{base}_{t.key_length}" if t.key_length else base
    if ttype == INTEG:
        ai = integ_by_id(t.id)
        if ai is not None:
            return ai.name if display else ai.keyword
        return "NONE" if t.id == 0 and display else _enum_name(IntegId, t.id)
    if ttype == PRF:
        ap = prf_by_id(t.id)
        if ap is not None:
            return ap.name if display else ap.keyword
        return "PRF_" + _enum_name(PrfId, t.id)
    if ttype == DH:
        ak = ke_by_id(t.id)
        if ak is not None:
            return ak.name if display else ak.keyword
        return "KE_NONE" if t.id == 0 else _enum_name(DhId, t.id)
    if ttype in ADDKE_TYPES:
        n = ttype - ADDKE_TYPES[0] + 1
        am = ke_by_id(t.id)
        if display:
            return f"KE{n}_" + ("NONE" if t.id == 0 else am.name if am is not None else str(t.id))
        return f"ke{n}_" + ("none" if t.id == 0 else am.keyword if am is not None else str(t.id))
    if ttype == ESN:
        if display:
            return "EXT_SEQ" if t.id == EsnId.ESN else "NO_EXT_SEQ"
        return "esn" if t.id == EsnId.ESN else "noesn"
    return f"{_enum_name(TransformType, ttype)}:{t.id}"


# --- memos ---------------------------------------------------------------------------------
# Every set-up chooses, names and resolves the same few proposals again and again (the peers of
# one gateway send the same offer), so the results are kept, keyed by what they depend on: the
# protocol and the transforms (type, id, key length, attributes), never the proposal number or
# SPI. Pure functions of their key, so the engine stays deterministic; each memo is bounded and
# simply cleared when full (a peer sending ever-new proposals costs a recomputation, no memory).

MEMO_MAX = 2048
_Signature = tuple[int, tuple[tuple[object, ...], ...]]


def _signature(p: Proposal) -> _Signature:
    return (p.protocol, tuple([(t.type, t.id, t.key_length, *t.attributes) for t in p.transforms]))


def _remember(memo: dict[Any, Any], key: object, value: object) -> None:
    if len(memo) >= MEMO_MAX:
        memo.clear()
    memo[key] = value


def _memoised(memo: dict[Any, Any], key: object, compute: Callable[[], Any]) -> Any:
    """``memo[key]``, computed and kept on first use (a ``compute`` that raises keeps nothing:
    errors name the proposal number)."""
    value = memo.get(key)
    if value is None:
        value = compute()
        _remember(memo, key, value)
    return value


_DISPLAY: dict[_Signature, str] = {}
# (our signatures, their signatures) -> (index of their proposal, chosen (type, id, key length)s)
_CHOICE: dict[tuple[tuple[_Signature, ...], tuple[_Signature, ...]],
              tuple[int, tuple[tuple[int, int, int | None], ...]] | None] = {}
_IKE_SUITE: dict[_Signature, IkeSuite] = {}
_CHILD_SUITE: dict[_Signature, ChildSuite] = {}


def _ordered(p: Proposal) -> list[Transform]:
    known = [t for ty in _DISPLAY_ORDER for t in p.transforms if t.type == ty]
    others = [t for t in p.transforms if t.type not in _DISPLAY_ORDER]
    return known + others


def proposal_keywords(p: Proposal) -> str:
    """Keyword form, e.g. "aes128-sha256-prfsha256-ecp256"; parses back to the same set."""
    out = []
    for t in _ordered(p):
        if t.type == INTEG and t.id == IntegId.NONE:
            continue
        if t.type == DH and t.id == DhId.NONE:
            continue
        out.append(_transform_text(t, display=False))
    return "-".join(out)


def proposal_display(p: Proposal, with_protocol: bool = False) -> str:
    """strongSwan's log/list-sas form, e.g. "AES_GCM_16_256/PRF_HMAC_SHA2_256/CURVE_25519"."""
    text: str = _memoised(_DISPLAY, _signature(p),
                          lambda: "/".join(_transform_text(t, display=True) for t in _ordered(p)))
    if with_protocol:
        return f"{_enum_name(ProtocolId, p.protocol)}:{text}"
    return text


def format_proposal(p: Proposal) -> str:
    """The keyword form of a proposal (see :func:`proposal_keywords`)."""
    return proposal_keywords(p)


# --- selection -------------------------------------------------------------------------------

def _acceptable(t: Transform) -> bool:
    # A transform with an attribute we do not understand cannot be selected (RFC 7296 3.3.6).
    return not t.attributes


def _offers(p: Proposal) -> dict[int, list[tuple[int, int | None]]]:
    """Per transform type present in the proposal: its selectable (id, key length) offers, in
    order (a type whose transforms all carry unknown attributes is present with no offer)."""
    out: dict[int, list[tuple[int, int | None]]] = {}
    for t in p.transforms:
        lst = out.get(t.type)
        if lst is None:
            lst = out[t.type] = []
        if _acceptable(t):
            lst.append((t.id, t.key_length))
    return out


# Transform types where "absent" means "only NONE (id 0)".
_NONE_IF_ABSENT = {INTEG, DH} | set(range(int(TransformType.ADDKE1), int(TransformType.ADDKE7) + 1))
_NONE: list[tuple[int, int | None]] = [(0, None)]
_NO_ESN: list[tuple[int, int | None]] = [(EsnId.NO_ESN, None)]


def _select(ours: Proposal, theirs: Proposal, our_offers: dict[int, list[tuple[int, int | None]]],
            their_offers: dict[int, list[tuple[int, int | None]]]) -> list[Transform] | None:
    if ours.protocol != theirs.protocol:
        return None
    picked: list[Transform] = []
    for ttype in sorted(their_offers.keys() | our_offers.keys()):
        their_present = ttype in their_offers
        their_offer = their_offers.get(ttype) or []
        our_offer = our_offers.get(ttype) or []
        if ttype in _NONE_IF_ABSENT:
            if not our_offer:
                our_offer = _NONE
            if not their_present:
                their_offer = _NONE
        elif ttype == ESN and theirs.protocol != ProtocolId.IKE:
            if not our_offer:
                our_offer = _NO_ESN
            if not their_present:
                their_offer = _NO_ESN
        if not their_offer and not our_offer and not their_present:
            continue
        choice = next((o for o in their_offer if o in our_offer), None)
        if choice is None:
            return None
        if not their_present:
            continue  # NONE / NO_ESN implied by omission on their side: nothing to echo back
        picked.append(Transform(type=ttype, id=choice[0], key_length=choice[1]))
    return picked


def choose_proposal(ours: list[Proposal], theirs: list[Proposal]) -> Proposal | None:
    """Responder selection: first of THEIR proposals that one of OURS covers.

    The result has exactly one transform per type the peer offered, the peer's proposal
    number and SPI.  None when nothing matches (NO_PROPOSAL_CHOSEN).
    """
    key = (tuple([_signature(p) for p in ours]), tuple([_signature(p) for p in theirs]))
    if key in _CHOICE:
        choice = _CHOICE[key]
    else:
        choice = _choose(ours, theirs)
        _remember(_CHOICE, key, choice)
    if choice is None:
        return None
    i, picked = choice
    their = theirs[i]
    return Proposal(num=their.num, protocol=their.protocol, spi=their.spi,
                    transforms=[Transform(type=t, id=tid, key_length=kl) for t, tid, kl in picked])


def _choose(ours: list[Proposal], theirs: list[Proposal]) -> tuple[int, tuple[tuple[int, int, int | None], ...]] | None:
    our_offers = [_offers(our) for our in ours]
    for i, their in enumerate(theirs):
        their_offers = _offers(their)
        for our, offers in zip(ours, our_offers, strict=True):
            picked = _select(our, their, offers, their_offers)
            if picked is None:
                continue
            return i, tuple((t.type, t.id, t.key_length) for t in picked)
    return None


# --- suites ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class IkeSuite:
    encr: EncrAlgorithm
    prf: PrfAlgorithm
    integ: IntegAlgorithm | None
    ke: KeyExchange
    # RFC 9370: the negotiated Additional Key Exchanges in order (ADDKE1..7, NONE left out),
    # each run in its own IKE_INTERMEDIATE (or IKE_FOLLOWUP_KE) exchange.
    additional: tuple[KeyExchange, ...] = ()

    @property
    def all_ke(self) -> tuple[KeyExchange, ...]:
        return (self.ke,) + self.additional


@dataclass(frozen=True)
class ChildSuite:
    encr: EncrAlgorithm
    integ: IntegAlgorithm | None
    ke: KeyExchange | None
    esn: bool
    additional: tuple[KeyExchange, ...] = ()


def _additional(p: Proposal) -> tuple[KeyExchange, ...]:
    """The Additional Key Exchange methods of a chosen proposal, in ADDKE1..7 order."""
    out = []
    for ttype in ADDKE_TYPES:
        t = _single(p, ttype, f"additional key exchange {ttype - ADDKE_TYPES[0] + 1}", False)
        if t is None or t.id == 0:
            continue
        m = ke_by_id(t.id)
        if m is None or not m.available:
            raise ProposalError(f"unsupported additional key exchange method {t.id}")
        out.append(m)
    return tuple(out)


def _single(p: Proposal, ttype: int, what: str, required: bool) -> Transform | None:
    ts = [t for t in p.transforms if t.type == ttype]
    if len(ts) > 1:
        raise ProposalError(f"proposal {p.num} has {len(ts)} {what} transforms; choose one first")
    if not ts:
        if required:
            raise ProposalError(f"proposal {p.num} has no {what} transform")
        return None
    return ts[0]


def _required(p: Proposal, ttype: int, what: str) -> Transform:
    t = _single(p, ttype, what, True)
    assert t is not None  # _single raised otherwise
    return t


def _encr_integ(p: Proposal) -> tuple[EncrAlgorithm, IntegAlgorithm | None]:
    te = _required(p, ENCR, "encryption")
    encr = encr_by_id(te.id, te.key_length)
    if encr is None:
        raise ProposalError(f"unsupported encryption transform {te.id} "
                            f"(key length {te.key_length})")
    ti = _single(p, INTEG, "integrity", False)
    integ = None
    if ti is not None and ti.id != IntegId.NONE:
        integ = integ_by_id(ti.id)
        if integ is None:
            raise ProposalError(f"unsupported integrity transform {ti.id}")
    if encr.aead and integ is not None:
        raise ProposalError(f"AEAD {encr.name} cannot be combined with {integ.name}")
    if not encr.aead and integ is None:
        raise ProposalError(f"{encr.name} needs an integrity transform")
    return encr, integ


def ike_suite(p: Proposal) -> IkeSuite:
    """The algorithms of a chosen IKE proposal; ProposalError if incomplete or ambiguous."""
    suite: IkeSuite = _memoised(_IKE_SUITE, _signature(p), lambda: _ike_suite(p))
    return suite


def _ike_suite(p: Proposal) -> IkeSuite:
    if p.protocol != ProtocolId.IKE:
        raise ProposalError(f"proposal {p.num} is not an IKE proposal")
    encr, integ = _encr_integ(p)
    tp = _required(p, PRF, "PRF")
    prf = prf_by_id(tp.id)
    if prf is None:
        raise ProposalError(f"unsupported PRF transform {tp.id}")
    td = _required(p, DH, "key exchange")
    ke = ke_by_id(td.id)
    if ke is None or not ke.available:
        raise ProposalError(f"unsupported key exchange method {td.id}")
    return IkeSuite(encr=encr, prf=prf, integ=integ, ke=ke, additional=_additional(p))


def child_suite(p: Proposal) -> ChildSuite:
    """The algorithms of a chosen ESP proposal; ProposalError if incomplete or ambiguous."""
    suite: ChildSuite = _memoised(_CHILD_SUITE, _signature(p), lambda: _child_suite(p))
    return suite


def _child_suite(p: Proposal) -> ChildSuite:
    if p.protocol != ProtocolId.ESP:
        raise ProposalError(f"proposal {p.num} is not an ESP proposal")
    encr, integ = _encr_integ(p)
    if _single(p, PRF, "PRF", False) is not None:
        raise ProposalError(f"proposal {p.num}: a PRF transform is not allowed in ESP")
    td = _single(p, DH, "key exchange", False)
    ke = None
    if td is not None and td.id != DhId.NONE:
        ke = ke_by_id(td.id)
        if ke is None or not ke.available:
            raise ProposalError(f"unsupported key exchange method {td.id}")
    tn = _single(p, ESN, "ESN", False)
    if tn is not None and tn.id not in (EsnId.ESN, EsnId.NO_ESN):
        raise ProposalError(f"unknown ESN transform {tn.id}")
    return ChildSuite(encr=encr, integ=integ, ke=ke, esn=tn is not None and tn.id == EsnId.ESN,
                      additional=_additional(p))
