"""XFRM netlink messages (vpn_gw.dataplane.xfrm.netlink): struct layouts against the kernel's, and
encode/decode round trips of every message the backend sends or receives. No kernel needed."""
from __future__ import annotations

import shutil
import socket
import struct
import subprocess
from pathlib import Path

import pytest

from vpn_gw.dataplane.xfrm import netlink as nl

# sizeof() on x86_64 from linux/xfrm.h (linux-libc-dev 6.1), printed by the C program below
# (gcc + linux-libc-dev); test_sizes_match_the_compiled_headers re-checks them when gcc is there.
KERNEL_SIZES = {
    "xfrm_usersa_info": 224, "xfrm_userpolicy_info": 168, "xfrm_selector": 56, "xfrm_id": 24,
    "xfrm_lifetime_cfg": 64, "xfrm_lifetime_cur": 32, "xfrm_stats": 12, "xfrm_user_tmpl": 64,
    "xfrm_algo": 68, "xfrm_algo_auth": 72, "xfrm_algo_aead": 72, "xfrm_encap_tmpl": 24,
    "xfrm_replay_state": 12, "xfrm_replay_state_esn": 24, "xfrm_mark": 8, "xfrm_usersa_id": 24,
    "xfrm_userspi_info": 232, "xfrm_user_acquire": 280, "xfrm_user_expire": 232,
    "xfrm_userpolicy_id": 64, "xfrm_usersa_flush": 1, "xfrm_user_polexpire": 176,
    "xfrm_user_mapping": 64, "xfrm_user_migrate": 76, "xfrm_user_kmaddress": 40,
    "xfrm_userpolicy_type": 6, "xfrm_aevent_id": 48,
}
# offsetof() of the members whose placement depends on padding
KERNEL_OFFSETS = {
    "xfrm_usersa_info": {"sel": 0, "id": 56, "saddr": 80, "lft": 96, "curlft": 160, "stats": 192, "seq": 204,
                         "reqid": 208, "family": 212, "mode": 214, "replay_window": 215, "flags": 216},
    "xfrm_userpolicy_info": {"lft": 56, "curlft": 120, "priority": 152, "index": 156, "dir": 160,
                             "action": 161, "flags": 162, "share": 163},
    "xfrm_selector": {"family": 40, "ifindex": 48, "user": 52},
    "xfrm_user_tmpl": {"family": 24, "saddr": 28, "reqid": 44, "mode": 48, "share": 49, "optional": 50,
                       "aalgos": 52},
}
CONSTANTS = {"XFRMA_IF_ID": 31, "XFRMA_SET_MARK": 29, "XFRMA_MTIMER_THRESH": 32, "XFRM_MSG_MIGRATE": 0x21,
             "XFRM_MSG_MAPPING": 0x26, "IP_XFRM_POLICY": 17, "UDP_ENCAP": 100, "UDP_ENCAP_ESPINUDP": 2}


def test_struct_sizes():
    assert {name: nl.STRUCTS[name].size for name in KERNEL_SIZES} == KERNEL_SIZES
    for name, size in KERNEL_SIZES.items():
        assert len(nl.STRUCTS[name].pack({})) == size, name  # a zeroed struct packs to sizeof()


def test_struct_offsets():
    for name, want in KERNEL_OFFSETS.items():
        got = nl.STRUCTS[name].offsets()
        assert {k: got[k] for k in want} == want, name


C_PROGRAM = r"""
#include <stdio.h>
#include <stddef.h>
#include <linux/xfrm.h>
#include <linux/udp.h>
#include <linux/in.h>
#define S(t) printf("size %s %zu\n", #t, sizeof(struct t))
#define O(t, f) printf("offset %s %s %zu\n", #t, #f, offsetof(struct t, f))
int main(void) {
@SIZES@
@OFFSETS@
  printf("const XFRMA_IF_ID %d\nconst XFRMA_SET_MARK %d\nconst XFRMA_MTIMER_THRESH %d\n",
         XFRMA_IF_ID, XFRMA_SET_MARK, XFRMA_MTIMER_THRESH);
  printf("const XFRM_MSG_MIGRATE %d\nconst XFRM_MSG_MAPPING %d\n", XFRM_MSG_MIGRATE, XFRM_MSG_MAPPING);
  printf("const IP_XFRM_POLICY %d\nconst UDP_ENCAP %d\nconst UDP_ENCAP_ESPINUDP %d\n",
         IP_XFRM_POLICY, UDP_ENCAP, UDP_ENCAP_ESPINUDP);
  return 0;
}
"""


def test_sizes_match_the_compiled_headers(tmp_path: Path):
    """The numbers above, from the kernel headers themselves (gcc + linux-libc-dev)."""
    gcc = shutil.which("gcc")
    if gcc is None or not Path("/usr/include/linux/xfrm.h").exists():
        pytest.skip("gcc or linux/xfrm.h (linux-libc-dev) missing: checked against the recorded numbers only")
    src = C_PROGRAM.replace("@SIZES@", "\n".join(f"  S({n});" for n in KERNEL_SIZES)).replace(
        "@OFFSETS@", "\n".join(f"  O({t}, {f});" for t, fs in KERNEL_OFFSETS.items() for f in fs))
    (tmp_path / "sizes.c").write_text(src)
    subprocess.run([gcc, "-o", str(tmp_path / "sizes"), str(tmp_path / "sizes.c")], check=True,
                   capture_output=True, timeout=60)
    out = subprocess.run([str(tmp_path / "sizes")], check=True, capture_output=True, text=True).stdout
    sizes, offsets, consts = {}, {}, {}
    for line in out.splitlines():
        kind, *rest = line.split()
        if kind == "size":
            sizes[rest[0]] = int(rest[1])
        elif kind == "offset":
            offsets.setdefault(rest[0], {})[rest[1]] = int(rest[2])
        else:
            consts[rest[0]] = int(rest[1])
    assert sizes == KERNEL_SIZES
    assert offsets == KERNEL_OFFSETS
    assert consts == CONSTANTS
    assert {n: nl.STRUCTS[n].size for n in sizes} == sizes


def test_constants():
    from vpn_gw.dataplane.xfrm import sockets
    assert (nl._xfrm_attrs.nla_map[31][1], nl.XFRM_MSG_MIGRATE, nl.XFRM_MSG_MAPPING) == \
        ("XFRMA_IF_ID", CONSTANTS["XFRM_MSG_MIGRATE"], CONSTANTS["XFRM_MSG_MAPPING"])
    assert nl._xfrm_attrs.nla_map[29][1] == "XFRMA_SET_MARK" and nl._xfrm_attrs.nla_map[32][1] == "XFRMA_MTIMER_THRESH"
    assert (sockets.IP_XFRM_POLICY, sockets.UDP_ENCAP, nl.UDP_ENCAP_ESPINUDP) == (17, 100, 2)
    assert nl.group_mask(nl.XFRMNLGRP_ACQUIRE, nl.XFRMNLGRP_EXPIRE, nl.XFRMNLGRP_MAPPING) == 0b10000011


# --------------------------------------------------------------------------- round trips

def roundtrip(msg_type: int, fields: dict, attrs=(), classes=None):
    data = nl.encode(msg_type, fields, attrs, seq=77)
    length, mtype, flags, seq, _pid = struct.unpack_from("=IHHII", data)
    assert (mtype, seq) == (msg_type, 77) and len(data) == (length + 3) & ~3  # nlmsg_len excludes the tail pad
    (m,) = list(nl.decode(data, classes or nl.REQUEST_CLASSES))
    return data, m


SEL4 = {"saddr": "10.1.0.0", "daddr": "10.2.0.0", "prefixlen_s": 24, "prefixlen_d": 16, "sport": 1000,
        "sport_mask": 0xFFFF, "dport": 53, "dport_mask": 0xFFFF, "proto": 17, "family": socket.AF_INET,
        "ifindex": 3, "user": 0}


def test_newsa_roundtrip_all_attributes():
    info = {"sel": {"family": 0}, "id": {"daddr": "2001:db8::2", "spi": 0xC0FFEE01, "proto": 50},
            "saddr": "2001:db8::1", "family": socket.AF_INET6, "mode": nl.XFRM_MODE_TUNNEL, "reqid": 0x56470003,
            "flags": nl.XFRM_STATE_AF_UNSPEC | nl.XFRM_STATE_ESN, "replay_window": 0,
            "lft": {"soft_add_expires_seconds": 3000, "hard_add_expires_seconds": 3600}}
    key = bytes(range(36))
    attrs = [("XFRMA_ALG_AEAD", {"alg_name": "rfc4106(gcm(aes))", "alg_key_len": 288, "alg_icv_len": 128,
                                 "alg_key": key}),
             ("XFRMA_ENCAP", {"encap_type": 2, "encap_sport": 4500, "encap_dport": 61234, "encap_oa": None}),
             ("XFRMA_REPLAY_ESN_VAL", {"bmp_len": 32, "replay_window": 1024, "oseq": 5, "seq": 9, "oseq_hi": 1,
                                       "seq_hi": 0}),
             ("XFRMA_MARK", {"v": 0x42, "m": 0xFF}), ("XFRMA_IF_ID", 41)]
    data, m = roundtrip(nl.XFRM_MSG_NEWSA, info, attrs)
    assert len(data) >= 16 + 224
    assert m["id"] == {"daddr": "2001:db8::2", "spi": 0xC0FFEE01, "proto": 50}
    assert m["saddr"] == "2001:db8::1" and m["family"] == socket.AF_INET6 and m["reqid"] == 0x56470003
    assert m["lft"]["hard_add_expires_seconds"] == 3600 and m["lft"]["soft_byte_limit"] == nl.INF
    a = nl.attrs_dict(m)
    aead = a["XFRMA_ALG_AEAD"]
    assert (aead["alg_name"], aead["alg_key_len"], aead["alg_icv_len"], aead["alg_key"]) == \
        ("rfc4106(gcm(aes))", 288, 128, key)
    enc = a["XFRMA_ENCAP"]
    assert (enc["encap_type"], enc["encap_sport"], enc["encap_dport"], enc["encap_oa"]) == (2, 4500, 61234, "::")
    esn = a["XFRMA_REPLAY_ESN_VAL"]
    assert (esn["bmp_len"], esn["replay_window"], esn["oseq"], esn["seq"], esn["oseq_hi"], len(esn["bmp"])) == \
        (32, 1024, 5, 9, 1, 32)
    assert (a["XFRMA_MARK"]["v"], a["XFRMA_MARK"]["m"]) == (0x42, 0xFF) and a["XFRMA_IF_ID"] == 41
    # The SPI and the encap ports are big-endian on the wire.
    assert data[16 + 56 + 16:16 + 56 + 20] == bytes.fromhex("c0ffee01")


def test_cipher_and_auth_roundtrip_ipv4():
    info = {"id": {"daddr": "198.51.100.1", "spi": 0x1001, "proto": 50}, "saddr": "192.0.2.1",
            "family": socket.AF_INET, "mode": 1, "reqid": 9, "replay_window": 32}
    attrs = [("XFRMA_ALG_CRYPT", {"alg_name": "cbc(aes)", "alg_key": b"k" * 32}),
             ("XFRMA_ALG_AUTH_TRUNC", {"alg_name": "hmac(sha256)", "alg_key": b"a" * 32, "alg_trunc_len": 128})]
    _, m = roundtrip(nl.XFRM_MSG_UPDSA, info, attrs)
    a = nl.attrs_dict(m)
    assert (a["XFRMA_ALG_CRYPT"]["alg_name"], a["XFRMA_ALG_CRYPT"]["alg_key_len"], a["XFRMA_ALG_CRYPT"]["alg_key"]) \
        == ("cbc(aes)", 256, b"k" * 32)
    auth = a["XFRMA_ALG_AUTH_TRUNC"]
    assert (auth["alg_name"], auth["alg_key_len"], auth["alg_trunc_len"]) == ("hmac(sha256)", 256, 128)
    assert m["id"]["daddr"] == "198.51.100.1" and m["saddr"] == "192.0.2.1" and m["replay_window"] == 32


def test_delsa_getsa_allocspi_flush():
    _, m = roundtrip(nl.XFRM_MSG_DELSA, {"daddr": "192.0.2.9", "spi": 0xABCDEF12, "family": 2, "proto": 50},
                     [("XFRMA_IF_ID", 7)])
    assert (m["daddr"], m["spi"], m["family"], m["proto"]) == ("192.0.2.9", 0xABCDEF12, 2, 50)
    assert nl.get_attr(m, "XFRMA_IF_ID") == 7
    data, m = roundtrip(nl.XFRM_MSG_GETSA, {"daddr": "2001:db8::9", "spi": 1, "family": 10, "proto": 50})
    assert len(data) == 16 + 24 and m["daddr"] == "2001:db8::9"
    _, m = roundtrip(nl.XFRM_MSG_ALLOCSPI, {"info": {"id": {"daddr": "192.0.2.2", "proto": 50}, "saddr": "192.0.2.1",
                                                     "family": 2, "reqid": 5}, "min": 0x100, "max": 0xFFFF})
    assert (m["info"]["id"]["daddr"], m["info"]["saddr"], m["min"], m["max"]) == \
        ("192.0.2.2", "192.0.2.1", 0x100, 0xFFFF)
    data, m = roundtrip(nl.XFRM_MSG_FLUSHSA, {"proto": 50})
    assert m["proto"] == 50 and struct.unpack_from("=I", data)[0] == 17  # NLMSG_LENGTH(sizeof 1-byte struct)
    data, m = roundtrip(nl.XFRM_MSG_FLUSHPOLICY, {})
    assert len(data) == 16


def test_policy_roundtrip_with_templates():
    tmpls = [{"id": {"daddr": "198.51.100.1", "proto": 50}, "saddr": "192.0.2.1", "family": 2, "reqid": 0x56470001,
              "mode": 1},
             {"id": {"daddr": "2001:db8::2", "proto": 50}, "saddr": "2001:db8::1", "family": 10, "reqid": 2,
              "mode": 1, "optional": 1}]
    info = {"sel": SEL4, "priority": 0x2FF00, "dir": nl.XFRM_POLICY_FWD, "action": 0, "index": 0}
    data, m = roundtrip(nl.XFRM_MSG_NEWPOLICY, info, [("XFRMA_TMPL", tmpls), ("XFRMA_IF_ID", 9),
                                                      ("XFRMA_POLICY_TYPE", {"type": 0})])
    assert len(data) == 16 + 168 + 4 + 2 * 64 + 8 + 4 + 6 + 2
    assert m["sel"] == SEL4
    assert (m["priority"], m["dir"]) == (0x2FF00, nl.XFRM_POLICY_FWD)
    got = nl.get_attr(m, "XFRMA_TMPL")
    assert [(t["id"]["daddr"], t["saddr"], t["reqid"], t["optional"], t["aalgos"]) for t in got] == [
        ("198.51.100.1", "192.0.2.1", 0x56470001, 0, 0xFFFFFFFF), ("2001:db8::2", "2001:db8::1", 2, 1, 0xFFFFFFFF)]
    # selector ports are big-endian in the kernel struct
    assert data[16 + 32:16 + 34] == struct.pack(">H", 53)
    _, m = roundtrip(nl.XFRM_MSG_DELPOLICY, {"sel": SEL4, "dir": 1}, [("XFRMA_IF_ID", 9)])
    assert m["sel"] == SEL4 and m["dir"] == 1


def test_migrate_roundtrip():
    migrations = [{"old_daddr": "198.51.100.1", "old_saddr": "192.0.2.1", "new_daddr": "203.0.113.5",
                   "new_saddr": "192.0.2.1", "proto": 50, "mode": 1, "reqid": 0x56470001, "old_family": 2,
                   "new_family": 2}]
    _, m = roundtrip(nl.XFRM_MSG_MIGRATE, {"sel": SEL4, "dir": 1},
                     [("XFRMA_MIGRATE", migrations), ("XFRMA_KMADDRESS", {"local": "192.0.2.1",
                                                                          "remote": "203.0.113.5", "family": 2}),
                      ("XFRMA_ENCAP", {"encap_type": 2, "encap_sport": 4500, "encap_dport": 4500})])
    got = nl.get_attr(m, "XFRMA_MIGRATE")
    assert got == [dict(migrations[0])]
    km = nl.get_attr(m, "XFRMA_KMADDRESS")
    assert (km["local"], km["remote"], km["family"]) == ("192.0.2.1", "203.0.113.5", 2)


def _kernel_message(msg_type: int, struct_cls, value: dict, attrs: bytes = b"") -> bytes:
    body = struct_cls.pack(value)
    body += bytes(-len(body) % 4) + attrs
    return struct.pack("=IHHII", 16 + len(body), msg_type, 0, 0, 0) + body


def _nla(t: int, payload: bytes) -> bytes:
    return struct.pack("=HH", 4 + len(payload), t) + payload + bytes(-len(payload) % 4)


def test_decode_acquire_expire_mapping_polexpire():
    tmpl = nl.xfrm_user_tmpl.pack({"id": {"daddr": "198.51.100.1", "proto": 50}, "saddr": "192.0.2.1",
                                   "family": 2, "reqid": 0x56470002, "mode": 1})
    acq = _kernel_message(nl.XFRM_MSG_ACQUIRE, nl.xfrm_user_acquire, {
        "id": {"daddr": "198.51.100.1", "proto": 50}, "saddr": "192.0.2.1", "sel": SEL4,
        "policy": {"sel": SEL4, "dir": 1, "priority": 5}, "aalgos": 1, "ealgos": 2, "calgos": 3, "seq": 99},
        _nla(5, tmpl))
    exp = _kernel_message(nl.XFRM_MSG_EXPIRE, nl.xfrm_user_expire, {
        "state": {"id": {"daddr": "192.0.2.1", "spi": 0x11223344, "proto": 50}, "saddr": "198.51.100.1",
                  "family": 2, "reqid": 0x56470002}, "hard": 1})
    mapping = _kernel_message(nl.XFRM_MSG_MAPPING, nl.xfrm_user_mapping, {
        "id": {"daddr": "192.0.2.1", "spi": 0x55667788, "proto": 50}, "reqid": 4,
        "old_saddr": "198.51.100.1", "new_saddr": "198.51.100.7", "old_sport": 4500, "new_sport": 33000})
    polexp = _kernel_message(nl.XFRM_MSG_POLEXPIRE, nl.xfrm_user_polexpire, {"pol": {"sel": SEL4, "dir": 2},
                                                                             "hard": 0})
    a, e, mp, pe = list(nl.decode(acq + exp + mapping + polexp))
    assert a["header"]["type"] == nl.XFRM_MSG_ACQUIRE and a["seq"] == 99 and a["sel"] == SEL4
    assert a["id"]["daddr"] == "198.51.100.1" and a["saddr"] == "192.0.2.1" and a["policy"]["priority"] == 5
    assert nl.get_attr(a, "XFRMA_TMPL")[0]["reqid"] == 0x56470002
    assert e["hard"] == 1 and e["state"]["id"]["spi"] == 0x11223344 and e["state"]["saddr"] == "198.51.100.1"
    assert (mp["reqid"], mp["old_saddr"], mp["new_saddr"], mp["old_sport"], mp["new_sport"]) == \
        (4, "198.51.100.1", "198.51.100.7", 4500, 33000)
    assert mp["id"]["spi"] == 0x55667788
    assert pe["pol"]["sel"] == SEL4 and pe["hard"] == 0


def test_error_and_done_messages():
    err = struct.pack("=IHHIIi", 36, nl.NLMSG_ERROR, 0, 5, 0, -17) + bytes(16)
    done = struct.pack("=IHHIIi", 20, nl.NLMSG_DONE, 2, 5, 0, 0)
    e, d = list(nl.decode(err + done))
    assert e["error"] == -17 and d["header"]["type"] == nl.NLMSG_DONE


def test_bypass_policy_struct():
    from vpn_gw.dataplane.xfrm.sockets import bypass_policy
    raw = bypass_policy(socket.AF_INET6, nl.XFRM_POLICY_OUT)
    assert len(raw) == 168
    d = nl.xfrm_userpolicy_info.unpack(raw)
    assert (d["sel"]["family"], d["dir"], d["action"]) == (socket.AF_INET6, nl.XFRM_POLICY_OUT, nl.XFRM_POLICY_ALLOW)
    assert d["lft"]["hard_byte_limit"] == nl.INF


def test_backend_helpers():
    import ipaddress

    from ikev2.payloads import TrafficSelector
    from vpn_gw.dataplane.xfrm.backend import XfrmError, _port_blocks, algorithm_attrs, overhead_for, selector_blocks
    assert _port_blocks(0, 65535) == [(0, 0)]
    assert _port_blocks(53, 53) == [(53, 0xFFFF)]
    blocks = _port_blocks(1000, 1003)
    assert blocks == [(1000, 0xFFFC)]
    covered = {p for port, mask in _port_blocks(10, 20) for p in range(65536) if p & mask == port}
    assert covered == set(range(10, 21))
    ts = TrafficSelector(7, 6, 80, 81, ipaddress.ip_address("10.0.0.1"), ipaddress.ip_address("10.0.0.6"))
    nets = {str(n) for n, *_ in selector_blocks(ts)}
    assert nets == {"10.0.0.1/32", "10.0.0.2/31", "10.0.0.4/31", "10.0.0.6/32"}
    assert {(p, m) for _, _, p, m in selector_blocks(ts)} == {(80, 0xFFFE)}
    assert overhead_for(20, None).icv_len == 16 and overhead_for(12, 12).align == 16
    (name, aead), = algorithm_attrs(20, 128, None, bytes(20), b"")
    assert name == "XFRMA_ALG_AEAD" and aead["alg_name"] == "rfc4106(gcm(aes))" and aead["alg_key_len"] == 160
    crypt, auth = algorithm_attrs(12, 256, 14, bytes(32), bytes(64))
    assert crypt[1]["alg_name"] == "cbc(aes)"
    assert auth[1]["alg_name"] == "hmac(sha512)" and auth[1]["alg_trunc_len"] == 256
    with pytest.raises(XfrmError, match="without integrity"):
        algorithm_attrs(12, 128, None, bytes(16), b"")  # no encryption without integrity
