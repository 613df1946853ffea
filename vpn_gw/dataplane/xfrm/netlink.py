"""XFRM netlink messages (linux/xfrm.h) on pyroute2's message classes, and a small netlink
socket that speaks them.

pyroute2 covers links, addresses and routes (and XFRM *interfaces*, link kind ``xfrm``) but has
no XFRM SA/policy messages. They are defined here on ``pyroute2.netlink.nlmsg`` / ``nla``:
each kernel struct is a :class:`Struct` (usable as a pyroute2 field type, nested like in C),
each message is an ``nlmsg`` whose ``fields`` are the struct's members, and all messages share
the XFRMA_* attribute table. Sizes are checked against the kernel's (x86_64) in
tests/test_xfrm_netlink.py, which also compiles a C program printing ``sizeof()`` when gcc and
linux-libc-dev are there.

Addresses are strings ("192.0.2.1", "2001:db8::1") when encoding; decoding gives strings in the
family of the enclosing struct or message (XFRM structs carry 16-byte ``xfrm_address_t``).
Ports in selectors and encapsulation templates are host-order integers here (the kernel keeps
them big-endian).

The socket (:class:`XfrmSocket`) is a plain ``AF_NETLINK`` socket (NETLINK_XFRM, or
NETLINK_ROUTE for the XFRM interfaces), optionally opened inside a named network namespace, with
synchronous request/ack and dump helpers: it is safe to use from an asyncio program (the kernel
answers XFRM requests synchronously) and its event variant is a non-blocking file descriptor to
hand to ``loop.add_reader``.
"""
from __future__ import annotations

import errno
import ipaddress
import os
import socket
import struct
import threading
from collections.abc import Iterable, Iterator
from typing import Any

from pyroute2.netlink import NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST, nla, nlmsg

NETLINK_ROUTE = 0
NETLINK_XFRM = 6
NLMSG_NOOP, NLMSG_ERROR, NLMSG_DONE = 1, 2, 3
NLM_F_MULTI = 2
NLM_F_EXCL, NLM_F_CREATE = 0x200, 0x400  # for RTM_NEWLINK / RTM_NEWADDR requests

# --------------------------------------------------------------------------- constants

# message types (linux/xfrm.h, XFRM_MSG_BASE = 0x10)
XFRM_MSG_NEWSA = 0x10
XFRM_MSG_DELSA = 0x11
XFRM_MSG_GETSA = 0x12
XFRM_MSG_NEWPOLICY = 0x13
XFRM_MSG_DELPOLICY = 0x14
XFRM_MSG_GETPOLICY = 0x15
XFRM_MSG_ALLOCSPI = 0x16
XFRM_MSG_ACQUIRE = 0x17
XFRM_MSG_EXPIRE = 0x18
XFRM_MSG_UPDPOLICY = 0x19
XFRM_MSG_UPDSA = 0x1A
XFRM_MSG_POLEXPIRE = 0x1B
XFRM_MSG_FLUSHSA = 0x1C
XFRM_MSG_FLUSHPOLICY = 0x1D
XFRM_MSG_NEWAE = 0x1E
XFRM_MSG_GETAE = 0x1F
XFRM_MSG_REPORT = 0x20
XFRM_MSG_MIGRATE = 0x21
XFRM_MSG_MAPPING = 0x26

# multicast groups (enum xfrm_nlgroups); bind() takes the bit 1 << (group - 1)
XFRMNLGRP_ACQUIRE = 1
XFRMNLGRP_EXPIRE = 2
XFRMNLGRP_SA = 3
XFRMNLGRP_POLICY = 4
XFRMNLGRP_AEVENTS = 5
XFRMNLGRP_REPORT = 6
XFRMNLGRP_MIGRATE = 7
XFRMNLGRP_MAPPING = 8


def group_mask(*groups: int) -> int:
    m = 0
    for g in groups:
        m |= 1 << (g - 1)
    return m


# policy directions and actions
XFRM_POLICY_IN, XFRM_POLICY_OUT, XFRM_POLICY_FWD = 0, 1, 2
XFRM_POLICY_ALLOW, XFRM_POLICY_BLOCK = 0, 1
XFRM_POLICY_TYPE_MAIN, XFRM_POLICY_TYPE_SUB = 0, 1
XFRM_SHARE_ANY = 0
# modes
XFRM_MODE_TRANSPORT, XFRM_MODE_TUNNEL, XFRM_MODE_BEET = 0, 1, 4
# xfrm_usersa_info.flags
XFRM_STATE_NOECN = 1
XFRM_STATE_DECAP_DSCP = 2
XFRM_STATE_NOPMTUDISC = 4
XFRM_STATE_WILDRECV = 8
XFRM_STATE_ICMP = 16
XFRM_STATE_AF_UNSPEC = 32
XFRM_STATE_ALIGN4 = 64
XFRM_STATE_ESN = 128
# encapsulation (linux/udp.h)
UDP_ENCAP_ESPINUDP = 2
INF = 0xFFFFFFFFFFFFFFFF  # XFRM_INF: no lifetime limit

AF_INET, AF_INET6 = socket.AF_INET, socket.AF_INET6
IPPROTO_ESP = 50

# --------------------------------------------------------------------------- structs


class _RawAddr(bytes):
    """A decoded xfrm_address_t whose family is not known yet (resolved by the container)."""


def addr_bytes(value: Any) -> bytes:
    """16-byte xfrm_address_t from an address string/object, raw bytes, or None/0 (zero)."""
    if value is None or value == 0 or value == "":
        return bytes(16)
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).ljust(16, b"\0")[:16]
    return ipaddress.ip_address(str(value)).packed.ljust(16, b"\0")


def addr_str(raw: bytes, family: int) -> str:
    if family == AF_INET6:
        return socket.inet_ntop(AF_INET6, bytes(raw[:16]))
    if family == AF_INET:
        return socket.inet_ntop(AF_INET, bytes(raw[:4]))
    # Unknown family (e.g. XFRM_MSG_MAPPING carries none): IPv4 if the rest is zero.
    return addr_str(raw, AF_INET if not any(raw[4:16]) else AF_INET6)


def resolve_addresses(obj: Any, family: int = 0) -> Any:
    """Turn the _RawAddr values in a decoded structure into strings; a nested dict with its own
    non-zero 'family' uses that, others inherit ``family``."""
    if isinstance(obj, dict):
        own = obj.get("family")
        fam: int = own if isinstance(own, int) and own else family
        for k, v in list(obj.items()):
            if isinstance(v, _RawAddr):
                dict.__setitem__(obj, k, addr_str(v, fam))
            elif isinstance(v, (dict, list)) and k != "attrs":
                resolve_addresses(v, fam)
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            if isinstance(v, _RawAddr):
                obj[i] = addr_str(v, family)
            else:
                resolve_addresses(v, family)
    return obj


ADDR = "xfrm_address_t"  # field kind: 16-byte address


def _fmt(kind: str) -> str:
    """A member's struct format without native alignment (the Struct lays members out itself)."""
    return kind if kind[0] in "<>=!@" else "=" + kind


class Struct:
    """A fixed-size C struct. ``fields`` = ((name, struct-format | ADDR | Struct subclass), ...);
    names starting with '_' are padding. Usable as a pyroute2 field type (encode_into /
    decode_from), so structs nest as in the kernel headers."""
    fields: tuple = ()
    size: int = 0

    def __init_subclass__(cls, **kw):
        super().__init_subclass__(**kw)
        cls.size = sum(cls._field_size(k) for _, k in cls.fields)

    @staticmethod
    def _field_size(kind) -> int:
        if kind == ADDR:
            return 16
        if isinstance(kind, type) and issubclass(kind, Struct):
            return kind.size
        return struct.calcsize(_fmt(kind))

    @classmethod
    def offsets(cls) -> dict[str, int]:
        """Byte offset of each member (compared with offsetof() in the tests)."""
        out, off = {}, 0
        for name, kind in cls.fields:
            out[name] = off
            off += cls._field_size(kind)
        return out

    @classmethod
    def pack(cls, value: dict | None) -> bytes:
        value = value or {}
        out = bytearray()
        for name, kind in cls.fields:
            v = value.get(name) if not name.startswith("_") else None
            if kind == ADDR:
                out += addr_bytes(v)
            elif isinstance(kind, type) and issubclass(kind, Struct):
                out += kind.pack(v if isinstance(v, dict) else None)
            elif kind.endswith("x"):
                out += bytes(struct.calcsize(kind))
            elif kind.endswith("s"):
                if isinstance(v, str):
                    v = v.encode()
                out += struct.pack(_fmt(kind), v or b"")
            else:
                out += struct.pack(_fmt(kind), v or 0)
        assert len(out) == cls.size, (cls.__name__, len(out), cls.size)
        return bytes(out)

    @classmethod
    def unpack(cls, data, offset: int = 0) -> dict:
        if len(data) - offset < cls.size:
            raise ValueError(f"{cls.__name__}: {len(data) - offset} bytes, need {cls.size}")
        out: dict = {}
        for name, kind in cls.fields:
            if kind == ADDR:
                v: Any = _RawAddr(bytes(data[offset:offset + 16]))
                offset += 16
            elif isinstance(kind, type) and issubclass(kind, Struct):
                v = kind.unpack(data, offset)
                offset += kind.size
            else:
                n = struct.calcsize(_fmt(kind))
                if kind.endswith("x"):
                    offset += n
                    continue
                v = struct.unpack_from(_fmt(kind), data, offset)[0]
                if kind.endswith("s"):
                    v = bytes(v)
                offset += n
            if not name.startswith("_"):
                out[name] = v
        if out.get("family"):
            resolve_addresses(out, out["family"])
        return out

    # pyroute2 field-type protocol (nlmsg_encoder_generic / nlmsg_decoder_generic)
    @classmethod
    def encode_into(cls, data: bytearray, offset: int, value) -> int:
        packed = cls.pack(value if isinstance(value, dict) else None)
        end = offset + len(packed)
        if len(data) < end:
            data.extend(bytes(end - len(data)))
        data[offset:end] = packed
        return end

    @classmethod
    def decode_from(cls, data, offset: int) -> tuple[dict, int]:
        return cls.unpack(data, offset), offset + cls.size


def _be16(v: int) -> int:
    return struct.unpack("=H", struct.pack(">H", v & 0xFFFF))[0]


class xfrm_selector(Struct):
    fields = (("daddr", ADDR), ("saddr", ADDR), ("dport", "H"), ("dport_mask", "H"),
              ("sport", "H"), ("sport_mask", "H"), ("family", "H"), ("prefixlen_d", "B"),
              ("prefixlen_s", "B"), ("proto", "B"), ("_pad", "3x"), ("ifindex", "i"), ("user", "I"))
    _PORTS = ("dport", "dport_mask", "sport", "sport_mask")

    @classmethod
    def pack(cls, value):  # ports are big-endian in the kernel
        value = dict(value or {})
        for k in cls._PORTS:
            value[k] = _be16(value.get(k) or 0)
        return super().pack(value)

    @classmethod
    def unpack(cls, data, offset=0):
        out = super().unpack(data, offset)
        for k in cls._PORTS:
            out[k] = _be16(out[k])
        return out


class xfrm_id(Struct):
    fields = (("daddr", ADDR), ("spi", ">I"), ("proto", "B"), ("_pad", "3x"))


class xfrm_lifetime_cfg(Struct):
    fields = (("soft_byte_limit", "Q"), ("hard_byte_limit", "Q"), ("soft_packet_limit", "Q"),
              ("hard_packet_limit", "Q"), ("soft_add_expires_seconds", "Q"),
              ("hard_add_expires_seconds", "Q"), ("soft_use_expires_seconds", "Q"),
              ("hard_use_expires_seconds", "Q"))

    @classmethod
    def pack(cls, value):  # unset limits are XFRM_INF, as `ip xfrm` sends them
        value = dict(value or {})
        for k in ("soft_byte_limit", "hard_byte_limit", "soft_packet_limit", "hard_packet_limit"):
            if value.get(k) is None:
                value[k] = INF
        return super().pack(value)


class xfrm_lifetime_cur(Struct):
    fields = (("bytes", "Q"), ("packets", "Q"), ("add_time", "Q"), ("use_time", "Q"))


class xfrm_stats(Struct):
    fields = (("replay_window", "I"), ("replay", "I"), ("integrity_failed", "I"))


class xfrm_usersa_info(Struct):
    fields = (("sel", xfrm_selector), ("id", xfrm_id), ("saddr", ADDR), ("lft", xfrm_lifetime_cfg),
              ("curlft", xfrm_lifetime_cur), ("stats", xfrm_stats), ("seq", "I"), ("reqid", "I"),
              ("family", "H"), ("mode", "B"), ("replay_window", "B"), ("flags", "B"), ("_pad", "7x"))


class xfrm_usersa_id(Struct):
    fields = (("daddr", ADDR), ("spi", ">I"), ("family", "H"), ("proto", "B"), ("_pad", "1x"))


class xfrm_userspi_info(Struct):
    fields = (("info", xfrm_usersa_info), ("min", "I"), ("max", "I"))


class xfrm_userpolicy_info(Struct):
    fields = (("sel", xfrm_selector), ("lft", xfrm_lifetime_cfg), ("curlft", xfrm_lifetime_cur),
              ("priority", "I"), ("index", "I"), ("dir", "B"), ("action", "B"), ("flags", "B"),
              ("share", "B"), ("_pad", "4x"))


class xfrm_userpolicy_id(Struct):
    fields = (("sel", xfrm_selector), ("index", "I"), ("dir", "B"), ("_pad", "3x"))


class xfrm_user_tmpl(Struct):
    fields = (("id", xfrm_id), ("family", "H"), ("_pad0", "2x"), ("saddr", ADDR), ("reqid", "I"),
              ("mode", "B"), ("share", "B"), ("optional", "B"), ("_pad1", "1x"), ("aalgos", "I"),
              ("ealgos", "I"), ("calgos", "I"))

    @classmethod
    def pack(cls, value):  # algorithm masks default to "any", as in `ip xfrm policy`
        value = dict(value or {})
        for k in ("aalgos", "ealgos", "calgos"):
            if value.get(k) is None:
                value[k] = 0xFFFFFFFF
        return super().pack(value)


class xfrm_encap_tmpl(Struct):
    fields = (("encap_type", "H"), ("encap_sport", ">H"), ("encap_dport", ">H"), ("_pad", "2x"),
              ("encap_oa", ADDR))


class xfrm_mark(Struct):
    fields = (("v", "I"), ("m", "I"))


class xfrm_replay_state(Struct):
    fields = (("oseq", "I"), ("seq", "I"), ("bitmap", "I"))


class xfrm_replay_state_esn(Struct):
    """Fixed part; ``bmp`` (bmp_len 32-bit words) follows."""
    fields = (("bmp_len", "I"), ("oseq", "I"), ("seq", "I"), ("oseq_hi", "I"), ("seq_hi", "I"),
              ("replay_window", "I"))


class xfrm_algo(Struct):
    """Fixed part; the key (alg_key_len bits) follows."""
    fields = (("alg_name", "64s"), ("alg_key_len", "I"))


class xfrm_algo_auth(Struct):
    fields = (("alg_name", "64s"), ("alg_key_len", "I"), ("alg_trunc_len", "I"))


class xfrm_algo_aead(Struct):
    fields = (("alg_name", "64s"), ("alg_key_len", "I"), ("alg_icv_len", "I"))


class xfrm_user_acquire(Struct):
    fields = (("id", xfrm_id), ("saddr", ADDR), ("sel", xfrm_selector), ("policy", xfrm_userpolicy_info),
              ("aalgos", "I"), ("ealgos", "I"), ("calgos", "I"), ("seq", "I"))


class xfrm_user_expire(Struct):
    fields = (("state", xfrm_usersa_info), ("hard", "B"), ("_pad", "7x"))


class xfrm_user_polexpire(Struct):
    fields = (("pol", xfrm_userpolicy_info), ("hard", "B"), ("_pad", "7x"))


class xfrm_usersa_flush(Struct):
    fields = (("proto", "B"),)


class xfrm_user_mapping(Struct):
    fields = (("id", xfrm_id), ("reqid", "I"), ("old_saddr", ADDR), ("new_saddr", ADDR),
              ("old_sport", ">H"), ("new_sport", ">H"))


class xfrm_user_migrate(Struct):
    fields = (("old_daddr", ADDR), ("old_saddr", ADDR), ("new_daddr", ADDR), ("new_saddr", ADDR),
              ("proto", "B"), ("mode", "B"), ("_pad", "2x"), ("reqid", "I"), ("old_family", "H"),
              ("new_family", "H"))

    @classmethod
    def unpack(cls, data, offset=0):
        out = super().unpack(data, offset)
        for k, fam in (("old_daddr", "old_family"), ("old_saddr", "old_family"),
                       ("new_daddr", "new_family"), ("new_saddr", "new_family")):
            out[k] = addr_str(out[k], out[fam])
        return out


class xfrm_user_kmaddress(Struct):
    fields = (("local", ADDR), ("remote", ADDR), ("reserved", "I"), ("family", "H"), ("_pad", "2x"))


class xfrm_userpolicy_type(Struct):
    fields = (("type", "B"), ("_pad1", "1x"), ("_pad2", "2x"), ("_pad3", "2x"))


class xfrm_aevent_id(Struct):
    fields = (("sa_id", xfrm_usersa_id), ("saddr", ADDR), ("flags", "I"), ("reqid", "I"))


STRUCTS = {c.__name__: c for c in (
    xfrm_selector, xfrm_id, xfrm_lifetime_cfg, xfrm_lifetime_cur, xfrm_stats, xfrm_usersa_info,
    xfrm_usersa_id, xfrm_userspi_info, xfrm_userpolicy_info, xfrm_userpolicy_id, xfrm_user_tmpl,
    xfrm_encap_tmpl, xfrm_mark, xfrm_replay_state, xfrm_replay_state_esn, xfrm_algo, xfrm_algo_auth,
    xfrm_algo_aead, xfrm_user_acquire, xfrm_user_expire, xfrm_user_polexpire, xfrm_usersa_flush,
    xfrm_user_mapping, xfrm_user_migrate, xfrm_user_kmaddress, xfrm_userpolicy_type, xfrm_aevent_id)}


# --------------------------------------------------------------------------- attributes

def _parent_family(nl) -> int:
    p = getattr(nl, "parent", None)
    while p is not None:
        try:
            fam = p.get("family")
        except ReferenceError:
            return 0
        if isinstance(fam, int) and fam:
            return fam
        p = getattr(p, "parent", None)
    return 0


class _struct_nla(nla):
    """An attribute whose payload is one Struct (``struct_cls``)."""
    __slots__ = ()
    struct_cls: type[Struct] = Struct

    def __init_subclass__(cls, **kw):
        super().__init_subclass__(**kw)
        cls.fields = (("_s", cls.struct_cls),)

    def encode(self):
        self["_s"] = {k: v for k, v in self.items() if k not in ("header", "attrs", "value", "_s")}
        nla.encode(self)

    def decode(self):
        nla.decode(self)
        s = self.pop("_s", {})
        self.update(s)
        resolve_addresses(self, self.get("family") or _parent_family(self))


class _var_algo_nla(nla):
    """xfrm_algo* with the key after the fixed part (alg_key_len bits)."""
    __slots__ = ()
    struct_cls: type[Struct] = xfrm_algo

    def encode(self):
        key = self.get("alg_key", b"") or b""
        if self.get("alg_key_len") is None:
            self["alg_key_len"] = len(key) * 8
        name = self.get("alg_name", "")
        fixed = dict(self)
        fixed["alg_name"] = name.encode() if isinstance(name, str) else name
        self["_raw"] = self.struct_cls.pack(fixed) + bytes(key)
        nla.encode(self)

    fields = (("_raw", "s"),)

    def decode(self):
        nla.decode(self)
        raw = bytes(self.data[self.offset + 4:self.offset + self.length])
        fixed = self.struct_cls.unpack(raw)
        fixed["alg_name"] = fixed["alg_name"].rstrip(b"\0").decode(errors="replace")
        n = (fixed["alg_key_len"] + 7) // 8
        fixed["alg_key"] = raw[self.struct_cls.size:self.struct_cls.size + n]
        self.pop("_raw", None)
        self.update(fixed)

    def ft_decode(self, offset):  # the generic decoder cannot size a variable tail
        self.pop("attrs", None)


class _array_nla(nla):
    """An attribute holding back-to-back structs (XFRMA_TMPL, XFRMA_MIGRATE): value is a list."""
    __slots__ = ()
    struct_cls: type[Struct] = Struct
    fields = (("_raw", "s"),)

    def encode(self):
        items = self.value if isinstance(self.value, (list, tuple)) else self.get("value") or []
        self["_raw"] = b"".join(self.struct_cls.pack(i) for i in items)
        nla.encode(self)

    def decode(self):
        nla.decode(self)
        raw = bytes(self.data[self.offset + 4:self.offset + self.length])
        n = self.struct_cls.size
        fam = _parent_family(self)
        self.value = [resolve_addresses(self.struct_cls.unpack(raw, i), fam)
                      for i in range(0, len(raw) - n + 1, n)]

    def ft_decode(self, offset):
        self.pop("attrs", None)


class _xfrm_attrs:
    """The XFRMA_* table shared by every XFRM message."""
    prefix = "XFRMA_"
    nla_map = (
        (0, "XFRMA_UNSPEC", "none"),
        (1, "XFRMA_ALG_AUTH", "algo"),
        (2, "XFRMA_ALG_CRYPT", "algo"),
        (3, "XFRMA_ALG_COMP", "algo"),
        (4, "XFRMA_ENCAP", "encap_tmpl"),
        (5, "XFRMA_TMPL", "tmpl_array"),
        (6, "XFRMA_SA", "usersa_info"),
        (7, "XFRMA_POLICY", "userpolicy_info"),
        (8, "XFRMA_SEC_CTX", "cdata"),
        (9, "XFRMA_LTIME_VAL", "lifetime_cur"),
        (10, "XFRMA_REPLAY_VAL", "replay_state"),
        (11, "XFRMA_REPLAY_THRESH", "uint32"),
        (12, "XFRMA_ETIMER_THRESH", "uint32"),
        (13, "XFRMA_SRCADDR", "address"),
        (14, "XFRMA_COADDR", "address"),
        (15, "XFRMA_LASTUSED", "uint64"),
        (16, "XFRMA_POLICY_TYPE", "userpolicy_type"),
        (17, "XFRMA_MIGRATE", "migrate_array"),
        (18, "XFRMA_ALG_AEAD", "algo_aead"),
        (19, "XFRMA_KMADDRESS", "kmaddress"),
        (20, "XFRMA_ALG_AUTH_TRUNC", "algo_auth"),
        (21, "XFRMA_MARK", "mark"),
        (22, "XFRMA_TFCPAD", "uint32"),
        (23, "XFRMA_REPLAY_ESN_VAL", "replay_esn"),
        (24, "XFRMA_SA_EXTRA_FLAGS", "uint32"),
        (25, "XFRMA_PROTO", "uint8"),
        (26, "XFRMA_ADDRESS_FILTER", "cdata"),
        (27, "XFRMA_PAD", "none"),
        (28, "XFRMA_OFFLOAD_DEV", "cdata"),
        (29, "XFRMA_SET_MARK", "uint32"),
        (30, "XFRMA_SET_MARK_MASK", "uint32"),
        (31, "XFRMA_IF_ID", "uint32"),
        (32, "XFRMA_MTIMER_THRESH", "uint32"),
    )

    class algo(_var_algo_nla):
        __slots__ = ()
        struct_cls = xfrm_algo

    class algo_auth(_var_algo_nla):
        __slots__ = ()
        struct_cls = xfrm_algo_auth

    class algo_aead(_var_algo_nla):
        __slots__ = ()
        struct_cls = xfrm_algo_aead

    class encap_tmpl(_struct_nla):
        __slots__ = ()
        struct_cls = xfrm_encap_tmpl

    class tmpl_array(_array_nla):
        __slots__ = ()
        struct_cls = xfrm_user_tmpl

    class migrate_array(_array_nla):
        __slots__ = ()
        struct_cls = xfrm_user_migrate

    class usersa_info(_struct_nla):
        __slots__ = ()
        struct_cls = xfrm_usersa_info

    class userpolicy_info(_struct_nla):
        __slots__ = ()
        struct_cls = xfrm_userpolicy_info

    class lifetime_cur(_struct_nla):
        __slots__ = ()
        struct_cls = xfrm_lifetime_cur

    class replay_state(_struct_nla):
        __slots__ = ()
        struct_cls = xfrm_replay_state

    class userpolicy_type(_struct_nla):
        __slots__ = ()
        struct_cls = xfrm_userpolicy_type

    class kmaddress(_struct_nla):
        __slots__ = ()
        struct_cls = xfrm_user_kmaddress

    class mark(_struct_nla):
        __slots__ = ()
        struct_cls = xfrm_mark

    class address(nla):
        __slots__ = ()
        fields = (("value", "16s"),)

        def encode(self):
            self["value"] = addr_bytes(self.value if self.value is not None else self.get("value"))
            nla.encode(self)

        def decode(self):
            nla.decode(self)
            self.value = addr_str(self["value"], _parent_family(self))

    class replay_esn(nla):
        """xfrm_replay_state_esn + bmp[bmp_len] (u32 words)."""
        __slots__ = ()
        fields = (("_raw", "s"),)

        def encode(self):
            window = int(self.get("replay_window") or 0)
            bmp = list(self.get("bmp") or [])
            if self.get("bmp_len") is None:
                self["bmp_len"] = (window + 31) // 32
            bmp = (bmp + [0] * self["bmp_len"])[:self["bmp_len"]]
            self["_raw"] = xfrm_replay_state_esn.pack(dict(self)) + struct.pack(f"={len(bmp)}I", *bmp)
            nla.encode(self)

        def decode(self):
            nla.decode(self)
            raw = bytes(self.data[self.offset + 4:self.offset + self.length])
            fixed = xfrm_replay_state_esn.unpack(raw)
            n = min(fixed["bmp_len"], (len(raw) - xfrm_replay_state_esn.size) // 4)
            fixed["bmp"] = list(struct.unpack_from(f"={n}I", raw, xfrm_replay_state_esn.size))
            self.pop("_raw", None)
            self.update(fixed)

        def ft_decode(self, offset):
            if "attrs" in self:
                del self["attrs"]


# --------------------------------------------------------------------------- messages

class xfrm_msg(_xfrm_attrs, nlmsg):
    """Base of the XFRM messages: ``fields`` come from ``struct_cls``; nested structs decode to
    dicts, addresses to strings in the message's family."""
    __slots__ = ()
    struct_cls: type[Struct] | None = None

    @classmethod
    def get_size(cls):
        return cls.struct_cls.size if cls.struct_cls else 0

    def encode(self):
        if self.struct_cls is not None:
            # Struct-typed members are encoded by the Struct (its own defaults: XFRM_INF, masks).
            for name, kind in self.fields:
                if isinstance(kind, type) and issubclass(kind, Struct) and self.get(name) is None:
                    self[name] = {}
                elif kind == ADDR:
                    self[name] = addr_bytes(self.get(name))
        nlmsg.encode(self)

    def decode(self):
        nlmsg.decode(self)
        for name, _ in self.fields:
            if name.startswith("_"):
                self.pop(name, None)
        resolve_addresses(self, self.family_hint())

    def family_hint(self) -> int:
        fam = self.get("family")
        if isinstance(fam, int) and fam:
            return fam
        for k in ("sel", "info", "state", "pol", "policy", "sa_id"):
            sub = dict.get(self, k)
            if isinstance(sub, dict):
                f = sub.get("family") or (sub.get("sel") or {}).get("family") or (sub.get("info") or {}).get("family")
                if f:
                    return f
        return 0


# The ADDR field kind is not a struct format: let pyroute2 encode/decode it as 16 raw bytes.
class _AddrField:
    @staticmethod
    def encode_into(data, offset, value):
        raw = addr_bytes(value)
        end = offset + 16
        if len(data) < end:
            data.extend(bytes(end - len(data)))
        data[offset:end] = raw
        return end

    @staticmethod
    def decode_from(data, offset):
        return _RawAddr(bytes(data[offset:offset + 16])), offset + 16


def _msg_fields(s: type[Struct]) -> tuple:
    """pyroute2 field list for a Struct: formats get native size/alignment off ('='), addresses
    and nested structs are field types."""
    out: list[tuple[str, Any]] = []
    for name, kind in s.fields:
        if kind == ADDR:
            out.append((name, _AddrField))
        elif isinstance(kind, type):
            out.append((name, kind))
        else:
            out.append(("__pad" if kind.endswith("x") else name, _fmt(kind)))
    return tuple(out)


def _message(name: str, s: type[Struct] | None) -> type:
    fields = _msg_fields(s) if s is not None else ()
    return type(name, (xfrm_msg,), {"__slots__": (), "struct_cls": s, "fields": fields})


# _AddrField is a type: pyroute2 treats it as a field codec (isinstance(fmt, type)).
xfrm_usersa_info_msg = _message("xfrm_usersa_info_msg", xfrm_usersa_info)
xfrm_usersa_id_msg = _message("xfrm_usersa_id_msg", xfrm_usersa_id)
xfrm_userspi_info_msg = _message("xfrm_userspi_info_msg", xfrm_userspi_info)
xfrm_userpolicy_info_msg = _message("xfrm_userpolicy_info_msg", xfrm_userpolicy_info)
xfrm_userpolicy_id_msg = _message("xfrm_userpolicy_id_msg", xfrm_userpolicy_id)
xfrm_user_acquire_msg = _message("xfrm_user_acquire_msg", xfrm_user_acquire)
xfrm_user_expire_msg = _message("xfrm_user_expire_msg", xfrm_user_expire)
xfrm_user_polexpire_msg = _message("xfrm_user_polexpire_msg", xfrm_user_polexpire)
xfrm_usersa_flush_msg = _message("xfrm_usersa_flush_msg", xfrm_usersa_flush)
xfrm_user_mapping_msg = _message("xfrm_user_mapping_msg", xfrm_user_mapping)
xfrm_aevent_id_msg = _message("xfrm_aevent_id_msg", xfrm_aevent_id)
xfrm_empty_msg = _message("xfrm_empty_msg", None)  # FLUSHPOLICY

# What the kernel sends for each message type (requests of the same type use the same layout,
# except where REQUEST_CLASSES differs).
MESSAGE_CLASSES: dict[int, type] = {
    XFRM_MSG_NEWSA: xfrm_usersa_info_msg,
    XFRM_MSG_UPDSA: xfrm_usersa_info_msg,
    XFRM_MSG_DELSA: xfrm_usersa_id_msg,
    XFRM_MSG_GETSA: xfrm_usersa_info_msg,
    XFRM_MSG_NEWPOLICY: xfrm_userpolicy_info_msg,
    XFRM_MSG_UPDPOLICY: xfrm_userpolicy_info_msg,
    XFRM_MSG_DELPOLICY: xfrm_userpolicy_id_msg,
    XFRM_MSG_GETPOLICY: xfrm_userpolicy_info_msg,
    XFRM_MSG_ALLOCSPI: xfrm_userspi_info_msg,
    XFRM_MSG_ACQUIRE: xfrm_user_acquire_msg,
    XFRM_MSG_EXPIRE: xfrm_user_expire_msg,
    XFRM_MSG_POLEXPIRE: xfrm_user_polexpire_msg,
    XFRM_MSG_FLUSHSA: xfrm_usersa_flush_msg,
    XFRM_MSG_FLUSHPOLICY: xfrm_empty_msg,
    XFRM_MSG_NEWAE: xfrm_aevent_id_msg,
    XFRM_MSG_GETAE: xfrm_aevent_id_msg,
    XFRM_MSG_MIGRATE: xfrm_userpolicy_id_msg,
    XFRM_MSG_MAPPING: xfrm_user_mapping_msg,
}
REQUEST_CLASSES: dict[int, type] = dict(MESSAGE_CLASSES)
REQUEST_CLASSES[XFRM_MSG_GETSA] = xfrm_usersa_id_msg
REQUEST_CLASSES[XFRM_MSG_GETPOLICY] = xfrm_userpolicy_id_msg


def encode(msg_type: int, fields: dict, attrs: Iterable = (), flags: int = NLM_F_REQUEST | NLM_F_ACK,
           seq: int = 0, cls: type | None = None) -> bytes:
    """One XFRM request as bytes (netlink header included)."""
    cls = cls or REQUEST_CLASSES[msg_type]
    m = cls()
    for k, v in fields.items():
        m[k] = v
    m["attrs"] = [list(a) for a in attrs]
    m["header"]["type"] = msg_type
    m["header"]["flags"] = flags
    m["header"]["sequence_number"] = seq
    m.encode()
    return bytes(m.data)


def decode(data: bytes, classes: dict[int, type] | None = None) -> Iterator[nlmsg]:
    """The messages in one netlink datagram (NLMSG_ERROR / DONE included, as nlmsg objects
    with header only or an 'error' field)."""
    classes = MESSAGE_CLASSES if classes is None else classes
    off = 0
    while off + 16 <= len(data):
        length, mtype, flags, seq, pid = struct.unpack_from("=IHHII", data, off)
        if length < 16 or off + length > len(data):
            break
        chunk = bytes(data[off:off + length])
        if mtype == NLMSG_ERROR:
            m = _nlmsgerr(chunk)
        elif mtype in classes:
            m = classes[mtype](chunk)
        else:
            m = nlmsg(chunk)
            m.fields = ()
        try:
            m.decode()
        except Exception:  # noqa: BLE001 - an undecodable message is returned raw
            m = nlmsg(chunk)
            m["header"] = {"length": length, "type": mtype, "flags": flags, "sequence_number": seq,
                           "pid": pid}
        m["header"]["type"] = mtype
        yield m
        off += (length + 3) & ~3


class _nlmsgerr(nlmsg):
    __slots__ = ()
    fields = (("error", "i"),)


# --------------------------------------------------------------------------- socket

class NetlinkError(OSError):
    """The kernel refused a request (errno and the request that failed)."""

    def __init__(self, code: int, what: str = ""):
        super().__init__(code, f"{what}: {os.strerror(code)}" if what else os.strerror(code))
        self.code = code


def _open_in_netns(netns: str | None, opener):
    """Run ``opener()`` in the network namespace ``netns`` (a name under /run/netns or a path).

    setns(2) applies to the calling thread only, so a short-lived thread enters the namespace
    and creates the socket there; the socket stays in that namespace for its lifetime."""
    if not netns:
        return opener()
    path = netns if "/" in netns else f"/run/netns/{netns}"
    result: dict = {}

    def job():
        try:
            import ctypes
            libc = ctypes.CDLL(None, use_errno=True)
            fd = os.open(path, os.O_RDONLY)
            try:
                if libc.setns(fd, socket.CLONE_NEWNET if hasattr(socket, "CLONE_NEWNET") else 0x40000000) != 0:
                    e = ctypes.get_errno()
                    raise OSError(e, f"setns({path}): {os.strerror(e)}")
            finally:
                os.close(fd)
            result["v"] = opener()
        except BaseException as e:  # noqa: BLE001 - re-raised in the caller
            result["e"] = e
    t = threading.Thread(target=job, name="netns-open")
    t.start()
    t.join()
    if "e" in result:
        raise result["e"]
    return result["v"]


class XfrmSocket:
    """A netlink socket for XFRM (or NETLINK_ROUTE) requests, or for events (``groups``)."""

    def __init__(self, protocol: int = NETLINK_XFRM, groups: int = 0, netns: str | None = None,
                 rcvbuf: int = 1 << 20):
        def opener():
            s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, protocol)
            try:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
                s.bind((0, groups))
            except OSError:
                s.close()
                raise
            return s
        self.protocol = protocol
        self.sock: socket.socket = _open_in_netns(netns, opener)
        self.netns = netns
        self._seq = 0
        self.classes = MESSAGE_CLASSES if protocol == NETLINK_XFRM else {}

    def fileno(self) -> int:
        return self.sock.fileno()

    def close(self) -> None:
        self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # ---- raw request/response
    def _next_seq(self) -> int:
        self._seq = (self._seq + 1) & 0xFFFFFFFF or 1
        return self._seq

    def transact(self, data: bytes, seq: int, what: str, dump: bool = False,
                 classes: dict[int, type] | None = None) -> list:
        """Send one encoded request and collect the answers up to the ACK / NLMSG_DONE."""
        self.sock.send(data)
        out: list[Any] = []
        classes = self.classes if classes is None else classes
        while True:
            buf = self.sock.recv(1 << 20)
            for m in decode(buf, classes):
                if m["header"]["sequence_number"] != seq:
                    continue  # a stale answer to an earlier, abandoned request
                t = m["header"]["type"]
                if t == NLMSG_ERROR:
                    code = -m["error"]
                    if code:
                        raise NetlinkError(code, what)
                    return out
                if t == NLMSG_DONE:
                    return out
                out.append(m)
                if not dump and not (m["header"]["flags"] & NLM_F_MULTI):
                    return out

    def request(self, msg_type: int, fields: dict, attrs: Iterable = (), *, flags: int = 0,
                dump: bool = False, ack: bool = True, what: str = "") -> list:
        seq = self._next_seq()
        f = NLM_F_REQUEST | flags | (NLM_F_DUMP if dump else 0) | (NLM_F_ACK if ack and not dump else 0)
        data = encode(msg_type, fields, attrs, flags=f, seq=seq)
        return self.transact(data, seq, what or f"XFRM message {msg_type:#x}", dump=dump)

    # ---- SAs
    def add_sa(self, info: dict, attrs: Iterable = (), update: bool = False) -> None:
        """XFRM_MSG_NEWSA (refuses an existing SA) or XFRM_MSG_UPDSA (update=True)."""
        self.request(XFRM_MSG_UPDSA if update else XFRM_MSG_NEWSA, info, attrs,
                     what="update SA" if update else "add SA")

    def del_sa(self, daddr: str, spi: int, proto: int = IPPROTO_ESP, attrs: Iterable = ()) -> None:
        self.request(XFRM_MSG_DELSA, {"daddr": daddr, "spi": spi, "family": _family(daddr), "proto": proto},
                     attrs, what=f"delete SA {spi:08x}")

    def get_sa(self, daddr: str, spi: int, proto: int = IPPROTO_ESP, attrs: Iterable = ()):
        got = self.request(XFRM_MSG_GETSA, {"daddr": daddr, "spi": spi, "family": _family(daddr),
                                            "proto": proto}, attrs, ack=False, what=f"get SA {spi:08x}")
        return got[0] if got else None

    def dump_sa(self) -> list:
        return self.request(XFRM_MSG_GETSA, {}, dump=True, what="dump SAs")

    def alloc_spi(self, src: str, dst: str, proto: int = IPPROTO_ESP, reqid: int = 0, mode: int = XFRM_MODE_TUNNEL,
                  lo: int = 0x100, hi: int = 0xFFFFFFFF, attrs: Iterable = ()) -> int:
        """XFRM_MSG_ALLOCSPI: a larval SA with a fresh SPI (the answer is the new SA)."""
        info = {"id": {"daddr": dst, "proto": proto}, "saddr": src, "family": _family(dst), "reqid": reqid,
                "mode": mode, "sel": {"family": _family(dst)}}
        got = self.request(XFRM_MSG_ALLOCSPI, {"info": info, "min": lo, "max": hi}, attrs, ack=False,
                           what="allocate SPI")
        return got[0]["id"]["spi"]

    def flush_sa(self, proto: int = 0) -> None:
        """Every SA of the namespace (proto 0 = IPsec protocols). The daemon never calls it: it
        deletes its own SAs one by one."""
        self.request(XFRM_MSG_FLUSHSA, {"proto": proto}, what="flush SAs")

    # ---- policies
    def add_policy(self, info: dict, attrs: Iterable = (), update: bool = False) -> None:
        self.request(XFRM_MSG_UPDPOLICY if update else XFRM_MSG_NEWPOLICY, info, attrs,
                     what="update policy" if update else "add policy")

    def del_policy(self, sel: dict, dir: int, attrs: Iterable = (), index: int = 0) -> None:
        self.request(XFRM_MSG_DELPOLICY, {"sel": sel, "dir": dir, "index": index}, attrs, what="delete policy")

    def get_policy(self, sel: dict, dir: int, attrs: Iterable = (), index: int = 0):
        got = self.request(XFRM_MSG_GETPOLICY, {"sel": sel, "dir": dir, "index": index}, attrs, ack=False,
                           what="get policy")
        return got[0] if got else None

    def dump_policy(self) -> list:
        return self.request(XFRM_MSG_GETPOLICY, {}, dump=True, what="dump policies")

    def flush_policy(self) -> None:
        self.request(XFRM_MSG_FLUSHPOLICY, {}, what="flush policies")

    # ---- migration
    def migrate(self, sel: dict, dir: int, migrations: list[dict], encap: dict | None = None,
                kmaddress: dict | None = None, attrs: Iterable = ()) -> None:
        """XFRM_MSG_MIGRATE: move the policy's templates and matching SAs to new addresses."""
        a = [("XFRMA_MIGRATE", migrations)] + list(attrs)
        if kmaddress:
            a.append(("XFRMA_KMADDRESS", kmaddress))
        if encap:
            a.append(("XFRMA_ENCAP", encap))
        self.request(XFRM_MSG_MIGRATE, {"sel": sel, "dir": dir}, a, what="migrate")

    # ---- events
    def set_nonblocking(self) -> XfrmSocket:
        self.sock.setblocking(False)
        return self

    def read_events(self, max_datagrams: int = 64) -> list:
        """Decoded multicast messages queued on an event socket (non-blocking)."""
        out = []
        for _ in range(max_datagrams):
            try:
                buf = self.sock.recv(1 << 20, socket.MSG_DONTWAIT)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as e:
                if e.errno == errno.ENOBUFS:  # overrun: events were lost, keep going
                    out.append({"header": {"type": -1}, "error": "ENOBUFS"})
                    continue
                raise
            out.extend(decode(buf, self.classes))
        return out


def _family(addr: str) -> int:
    return AF_INET6 if ":" in str(addr) else AF_INET


def attrs_dict(msg) -> dict[str, Any]:
    """{XFRMA_NAME: decoded value} of a decoded message (first occurrence of each)."""
    out: dict[str, Any] = {}
    for item in msg.get("attrs", []) or []:
        name, value = item[0], item[1]
        if name not in out:
            out[name] = value
    return out


def get_attr(msg, name: str, default=None):
    return attrs_dict(msg).get(name, default)
