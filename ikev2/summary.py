"""strongSwan-style one-line payload summaries, e.g. ``SA KE No N(NATD_S_IP) N(FRAG_SUP)``.

Used in logs (engineers know this notation from charon's log) and to compare our decoding with
what strongSwan logged for the same message.
"""
from __future__ import annotations

from collections.abc import Iterable

from .constants import CfgAttr, CfgType, EapCode, EapType
from .constants import NotifyType as N
from .constants import PayloadType as P
from .payloads import CPPayload, EAPPayload, NotifyPayload, Payload, SKFPayload

PAYLOAD_SHORT: dict[int, str] = {
    P.SA: "SA", P.KE: "KE", P.IDi: "IDi", P.IDr: "IDr", P.CERT: "CERT", P.CERTREQ: "CERTREQ",
    P.AUTH: "AUTH", P.NONCE: "No", P.NOTIFY: "N", P.DELETE: "D", P.VENDOR: "V", P.TSi: "TSi",
    P.TSr: "TSr", P.SK: "E", P.CP: "CP", P.EAP: "EAP", P.SKF: "EF",
}

NOTIFY_SHORT: dict[int, str] = {
    N.UNSUPPORTED_CRITICAL_PAYLOAD: "CRIT", N.INVALID_IKE_SPI: "INVAL_IKE_SPI",
    N.INVALID_MAJOR_VERSION: "INVAL_MAJOR", N.INVALID_SYNTAX: "INVAL_SYN",
    N.INVALID_MESSAGE_ID: "INVAL_MID", N.INVALID_SPI: "INVAL_SPI", N.NO_PROPOSAL_CHOSEN: "NO_PROP",
    N.INVALID_KE_PAYLOAD: "INVAL_KE", N.AUTHENTICATION_FAILED: "AUTH_FAILED",
    N.SINGLE_PAIR_REQUIRED: "SINGLE_PAIR", N.NO_ADDITIONAL_SAS: "NO_ADD_SAS",
    N.INTERNAL_ADDRESS_FAILURE: "INT_ADDR_FAIL", N.FAILED_CP_REQUIRED: "FAIL_CP_REQ",
    N.TS_UNACCEPTABLE: "TS_UNACCEPT", N.INVALID_SELECTORS: "INVAL_SEL",
    N.UNACCEPTABLE_ADDRESSES: "UNACCEPT_ADDR", N.UNEXPECTED_NAT_DETECTED: "UNEXPECT_NAT",
    N.USE_ASSIGNED_HoA: "ASSIGNED_HoA", N.TEMPORARY_FAILURE: "TEMP_FAIL",
    N.CHILD_SA_NOT_FOUND: "NO_CHILD_SA", N.INITIAL_CONTACT: "INIT_CONTACT",
    N.SET_WINDOW_SIZE: "SET_WINSIZE", N.ADDITIONAL_TS_POSSIBLE: "ADD_TS_POSS",
    N.IPCOMP_SUPPORTED: "IPCOMP_SUPP", N.NAT_DETECTION_SOURCE_IP: "NATD_S_IP",
    N.NAT_DETECTION_DESTINATION_IP: "NATD_D_IP", N.COOKIE: "COOKIE", N.USE_TRANSPORT_MODE: "USE_TRANSP",
    N.HTTP_CERT_LOOKUP_SUPPORTED: "HTTP_CERT_LOOK", N.REKEY_SA: "REKEY_SA",
    N.ESP_TFC_PADDING_NOT_SUPPORTED: "ESP_TFC_PAD_N", N.NON_FIRST_FRAGMENTS_ALSO: "NON_FIRST_FRAG",
    N.MOBIKE_SUPPORTED: "MOBIKE_SUP", N.ADDITIONAL_IP4_ADDRESS: "ADD_4_ADDR",
    N.ADDITIONAL_IP6_ADDRESS: "ADD_6_ADDR", N.NO_ADDITIONAL_ADDRESSES: "NO_ADD_ADDR",
    N.UPDATE_SA_ADDRESSES: "UPD_SA_ADDR", N.COOKIE2: "COOKIE2", N.NO_NATS_ALLOWED: "NO_NATS",
    N.AUTH_LIFETIME: "AUTH_LFT", N.MULTIPLE_AUTH_SUPPORTED: "MULT_AUTH",
    N.ANOTHER_AUTH_FOLLOWS: "AUTH_FOLLOWS", N.REDIRECT_SUPPORTED: "REDIR_SUP", N.REDIRECT: "REDIR",
    N.REDIRECTED_FROM: "REDIR_FROM", N.EAP_ONLY_AUTHENTICATION: "EAP_ONLY",
    N.CHILDLESS_IKEV2_SUPPORTED: "CHDLESS_SUP", N.QUICK_CRASH_DETECTION: "QUICK_CRASH_DET",
    N.IKEV2_MESSAGE_ID_SYNC_SUPPORTED: "MSG_ID_SYN_SUP", N.IKEV2_MESSAGE_ID_SYNC: "MSG_ID_SYN",
    N.IPSEC_REPLAY_COUNTER_SYNC_SUPPORTED: "RPL_CTR_SYN_SUP",
    N.IPSEC_REPLAY_COUNTER_SYNC: "RPL_CTR_SYN", N.IKEV2_FRAGMENTATION_SUPPORTED: "FRAG_SUP",
    N.SIGNATURE_HASH_ALGORITHMS: "HASH_ALG", N.USE_PPK: "USE_PPK", N.PPK_IDENTITY: "PPK_ID",
    N.NO_PPK_AUTH: "NO_PPK_AUTH", N.INTERMEDIATE_EXCHANGE_SUPPORTED: "IKE_INT_SUP",
}

CFG_SHORT: dict[int, str] = {
    CfgAttr.INTERNAL_IP4_ADDRESS: "ADDR", CfgAttr.INTERNAL_IP4_NETMASK: "MASK",
    CfgAttr.INTERNAL_IP4_DNS: "DNS", CfgAttr.INTERNAL_IP4_NBNS: "NBNS",
    CfgAttr.INTERNAL_IP4_DHCP: "DHCP", CfgAttr.APPLICATION_VERSION: "VER",
    CfgAttr.INTERNAL_IP6_ADDRESS: "ADDR6", CfgAttr.INTERNAL_IP6_DNS: "DNS6",
    CfgAttr.INTERNAL_IP6_DHCP: "DHCP6", CfgAttr.INTERNAL_IP4_SUBNET: "SUBNET",
    CfgAttr.SUPPORTED_ATTRIBUTES: "SUPATTR", CfgAttr.INTERNAL_IP6_SUBNET: "SUBNET6",
}
CFG_TYPE_SHORT: dict[int, str] = {CfgType.CFG_REQUEST: "CPRQ", CfgType.CFG_REPLY: "CPRP", CfgType.CFG_SET: "CPS",
                  CfgType.CFG_ACK: "CPA"}
EAP_CODE_SHORT: dict[int, str] = {EapCode.REQUEST: "REQ", EapCode.RESPONSE: "RES", EapCode.SUCCESS: "SUCC",
                  EapCode.FAILURE: "FAIL"}
EAP_TYPE_SHORT: dict[int, str] = {EapType.IDENTITY: "ID", EapType.NOTIFICATION: "NTF", EapType.NAK: "NAK",
                  EapType.MD5_CHALLENGE: "MD5", EapType.GTC: "GTC", EapType.TLS: "TLS",
                  EapType.TTLS: "TTLS", EapType.PEAP: "PEAP", EapType.MSCHAPV2: "MSCHAPV2",
                  EapType.SIM: "SIM", EapType.AKA: "AKA"}


def _one(p: Payload) -> str:
    if isinstance(p, NotifyPayload):
        return f"N({NOTIFY_SHORT.get(p.notify_type, str(p.notify_type))})"
    if isinstance(p, CPPayload):
        names = " ".join(CFG_SHORT.get(a.type, str(a.type)) for a in p.attributes)
        return f"{CFG_TYPE_SHORT.get(p.cfg_type, 'CP')}({names})"
    if isinstance(p, EAPPayload):
        code = EAP_CODE_SHORT.get(p.code, str(p.code))
        if p.eap_type is None:
            return f"EAP/{code}"
        return f"EAP/{code}/{EAP_TYPE_SHORT.get(p.eap_type, str(p.eap_type))}"
    if isinstance(p, SKFPayload):
        return f"EF({p.fragment_number}/{p.total_fragments})"
    return PAYLOAD_SHORT.get(p.type, str(p.type))


def payload_summary(payloads: Iterable[Payload]) -> str:
    return " ".join(_one(p) for p in payloads)
