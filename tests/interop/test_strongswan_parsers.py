"""Unit tests of the harness's parsers and of the recorded vectors (no strongSwan needed)."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pcapfile
import pytest
import strongswan as ss

DATA = Path(__file__).resolve().parent.parent / "data" / "strongswan"


def dump(ts: str, thread: int, group: str, tag: str | None, label: str, data: bytes) -> str:
    """A multi-line hex dump exactly as charon's filelog writes it."""
    pfx = f"{ts} {thread:02d}[{group}] " + (f"<{tag}> " if tag else "")
    lines = [f"{pfx}{label} => {len(data)} bytes @ 0x7fec64036870"]
    for off in range(0, len(data), 16):
        chunk = data[off:off + 16]
        hx = " ".join(f"{b:02X}" for b in chunk)
        lines.append(f"{pfx}{off:4d}: {hx:<47}  {''.join(chr(b) if 32 <= b < 127 else '.' for b in chunk)}")
    return "\n".join(lines)


def line(ts: str, thread: int, group: str, tag: str | None, msg: str) -> str:
    return f"{ts} {thread:02d}[{group}] " + (f"<{tag}> " if tag else "") + msg


IKE_LABELS = ["shared Diffie Hellman secret", "SKEYSEED", "Sk_d secret", "Sk_ai secret",
              "Sk_ar secret", "Sk_ei secret", "Sk_er secret", "Sk_pi secret", "Sk_pr secret"]


def key_block(ts, thread, tag, seed: int) -> list[str]:
    return [dump(ts, thread, "IKE", tag, lab, bytes([seed + i]) * (20 + i))
            for i, lab in enumerate(IKE_LABELS)]


def test_parse_log_joins_hex_dumps():
    text = "\n".join([
        line("01:00:00.000", 3, "IKE", "s2s|1", "natd stuff"),
        dump("01:00:00.001", 3, "IKE", "s2s|1", "octets = message + nonce + prf(Sk_px, IDx')",
             bytes(range(40))),
        line("01:00:00.002", 4, "NET", None, "received packet: from 1.2.3.4[500] to 5.6.7.8[500]"),
        "garbage line",
    ])
    recs = ss.parse_log(text)
    assert [r.msg.split(" ")[0] for r in recs] == ["natd", "octets", "received"]
    assert recs[1].label == "octets = message + nonce + prf(Sk_px, IDx')"
    assert recs[1].data == bytes(range(40))
    assert recs[1].ike_uid == 1 and recs[1].conn == "s2s"
    assert recs[2].ike is None and recs[2].thread == 4


def test_parse_ike_keys_initial_and_rekey_as_responder():
    t = "01:00:00.000"
    text = "\n".join([
        line(t, 1, "ENC", "s2s|1", "generating IKE_SA_INIT request 0 [ SA KE No ]"),
        line(t, 1, "MGR", "s2s|1", "checkin IKEv2 SA s2s[1] with SPIs 1111111111111111_i 0000000000000000_r"),
        line(t, 2, "ENC", "s2s|1", "parsed IKE_SA_INIT response 0 [ SA KE No ]"),
        line(t, 2, "CFG", "s2s|1", "selected proposal: IKE:AES_GCM_16_256/PRF_HMAC_SHA2_256/CURVE_25519"),
        *key_block(t, 2, "s2s|1", 0x10),
        line(t, 2, "ENC", "s2s|1", "generating IKE_AUTH request 1 [ IDi AUTH ]"),
        line(t, 2, "MGR", "s2s|1", "checkin IKEv2 SA s2s[1] with SPIs 1111111111111111_i 2222222222222222_r"),
        # the peer rekeys the IKE_SA: keys are logged under the new SA's tag
        line(t, 5, "ENC", "s2s|1", "parsed CREATE_CHILD_SA request 2 [ SA No KE ]"),
        line(t, 5, "CFG", "s2s|1", "selected proposal: IKE:AES_GCM_16_256/PRF_HMAC_SHA2_256/CURVE_25519"),
        *key_block(t, 5, "s2s|2", 0x40),
        line(t, 5, "IKE", "s2s|1", "IKE_SA s2s[2] rekeyed between 192.0.2.10[a]...198.51.100.10[b]"),
        line(t, 5, "MGR", "s2s|1", "checkin IKEv2 SA s2s[2] with SPIs 3333333333333333_i 4444444444444444_r"),
        line(t, 5, "ENC", "s2s|1", "generating CREATE_CHILD_SA response 2 [ SA No KE ]"),
        line(t, 5, "MGR", "s2s|1", "checkin IKEv2 SA s2s[1] with SPIs 1111111111111111_i 2222222222222222_r"),
    ])
    keys = ss.parse_ike_keys(ss.parse_log(text))
    assert len(keys) == 2
    first, second = keys
    assert (first["spi_i"], first["spi_r"], first["unique_id"]) == ("1111111111111111", "2222222222222222", 1)
    assert first["exchange"] == "IKE_SA_INIT" and first["we_initiated"] is True
    assert first["ike_proposal"] == "AES_GCM_16_256/PRF_HMAC_SHA2_256/CURVE_25519"
    assert first["skeyseed"] == (bytes([0x11]) * 21).hex()
    assert first["sk_pr"] == (bytes([0x18]) * 28).hex()
    assert first["rekeyed_from"] is None
    assert (second["spi_i"], second["spi_r"], second["unique_id"]) == ("3333333333333333", "4444444444444444", 2)
    assert second["exchange"] == "CREATE_CHILD_SA" and second["we_initiated"] is False
    assert second["rekeyed_from"] == {"unique_id": 1, "spi_i": "1111111111111111", "spi_r": "2222222222222222"}
    assert second["shared_dh_secret"] == (bytes([0x40]) * 20).hex()


def test_parse_child_keys_and_summaries():
    t = "01:00:00.000"
    text = "\n".join([
        line(t, 7, "ENC", "s2s|1", "parsed CREATE_CHILD_SA response 3 [ SA No KE TSi TSr ]"),
        line(t, 7, "CFG", "s2s|1", "selected proposal: ESP:AES_CBC_128/HMAC_SHA2_256_128/ECP_256/NO_EXT_SEQ"),
        dump(t, 7, "CHD", "s2s|1", "DH secret", b"\x01" * 32),
        dump(t, 7, "CHD", "s2s|1", "seed", b"\x02" * 96),
        dump(t, 7, "CHD", "s2s|1", "encryption initiator key", b"\x03" * 16),
        dump(t, 7, "CHD", "s2s|1", "integrity initiator key", b"\x04" * 32),
        dump(t, 7, "CHD", "s2s|1", "encryption responder key", b"\x05" * 16),
        dump(t, 7, "CHD", "s2s|1", "integrity responder key", b"\x06" * 32),
        line(t, 7, "IKE", "s2s|1", "inbound CHILD_SA net{2} established with SPIs c1a2b3c4_i 0badf00d_o "
                                   "and TS 10.10.0.0/24 === 10.20.0.0/24"),
        line(t, 7, "NET", "s2s|1", "sending packet: from 192.0.2.10[4500] to 198.51.100.10[4500] (80 bytes)"),
        line(t, 7, "MGR", "s2s|1", "checkin IKEv2 SA s2s[1] with SPIs 1111111111111111_i 2222222222222222_r"),
    ])
    recs = ss.parse_log(text)
    (c,) = ss.parse_child_keys(recs)
    assert (c["name"], c["unique_id"], c["spi_in"], c["spi_out"]) == ("net", 2, "c1a2b3c4", "0badf00d")
    assert c["encr_i"] == "03" * 16 and c["integ_r"] == "06" * 32 and c["dh_secret"] == "01" * 32
    assert c["proposal"] == "ESP:AES_CBC_128/HMAC_SHA2_256_128/ECP_256/NO_EXT_SEQ"
    assert c["exchange"] == "CREATE_CHILD_SA" and c["we_initiated"] is True
    (s,) = ss.parse_summaries(recs)
    assert s == {"time": t, "ike": "s2s|1", "dir": "in", "exchange": "CREATE_CHILD_SA",
                 "kind": "response", "mid": 3, "payloads": "SA No KE TSi TSr", "packets": []}


def test_parse_swanctl_pretty_and_render_conf():
    text = """list-sa event {
  s2s {
    uniqueid = 1
    local-id = C=XX, O=Test, CN=site
    initiator-spi = 9409f479a39f3e25
    child-sas {
      net-1 {
        name = net
        spi-in = a1dfd28d
        local-ts = [
          10.10.0.0/24
          10.11.0.0/24
        ]
      }
    }
  }
}
list-sas reply {
}
"""
    (sa,) = ss._normalize_sas(ss.parse_swanctl_pretty(text))
    assert sa["name"] == "s2s" and sa["local-id"] == "C=XX, O=Test, CN=site"
    assert sa["child-sas"] == [{"name": "net", "spi-in": "a1dfd28d", "key": "net-1",
                                "local-ts": ["10.10.0.0/24", "10.11.0.0/24"]}]
    conf = ss.render_conf({"connections": {"a": {"mobike": True, "local_addrs": None,
                                                 "proposals": ["aes128-sha256", "aes256-sha384"]}}})
    assert conf == ("connections {\n  a {\n    mobike = yes\n"
                    "    proposals = aes128-sha256, aes256-sha384\n  }\n}\n")
    with pytest.raises(ValueError):
        ss.quote('bad"secret')


def _pcap(frames: list[bytes]) -> bytes:
    out = struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)
    for i, f in enumerate(frames):
        out += struct.pack("<IIII", 1000 + i, 0, len(f), len(f)) + f
    return out


def _ipv4_udp(src: str, dst: str, sport: int, dport: int, payload: bytes,
              ident: int = 1, frag_off: int = 0, more: bool = False, udp: bytes | None = None) -> bytes:
    body = udp if udp is not None else struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload
    flags = (0x2000 if more else 0) | (frag_off // 8)
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(body), ident, flags, 64, 17, 0,
                     bytes(map(int, src.split("."))), bytes(map(int, dst.split("."))))
    return b"\x02" * 6 + b"\x04" * 6 + b"\x08\x00" + ip + body


def test_pcapfile_classifies_ike_esp_keepalive_and_reassembles(tmp_path):
    ike = bytes(range(8)) + bytes(8) + b"\x21\x20\x22\x08" + bytes(4) + struct.pack("!I", 28)
    big = ike + bytes(range(256)) * 8
    udp_big = struct.pack("!HHHH", 4500, 4500, 8 + 4 + len(big), 0) + b"\x00" * 4 + big
    frames = [
        _ipv4_udp("192.0.2.10", "198.51.100.10", 500, 500, ike),
        _ipv4_udp("192.0.2.10", "198.51.100.10", 4500, 4500, b"\x00" * 4 + ike),
        _ipv4_udp("192.0.2.10", "198.51.100.10", 4500, 4500, b"\xc1\xa2\xb3\xc4" + bytes(40)),
        _ipv4_udp("192.0.2.10", "198.51.100.10", 4500, 4500, b"\xff"),
        _ipv4_udp("192.0.2.10", "198.51.100.10", 0, 0, b"", ident=7, more=True, udp=udp_big[:1480]),
        _ipv4_udp("192.0.2.10", "198.51.100.10", 0, 0, b"", ident=7, frag_off=1480, udp=udp_big[1480:]),
        _ipv4_udp("192.0.2.10", "198.51.100.10", 53, 53, b"dns"),
    ]
    p = tmp_path / "x.pcap"
    p.write_bytes(_pcap(frames))
    res = pcapfile.classify_ike(p)
    assert res["esp_packets"] == 1 and res["keepalives"] == 1 and res["other_udp"] == 1
    msgs = res["messages"]
    assert [(m["sport"], m["non_esp_marker"]) for m in msgs] == [(500, False), (4500, True), (4500, True)]
    assert msgs[0]["hex"] == msgs[1]["hex"] == ike.hex()
    assert msgs[2]["hex"] == big.hex()
    assert msgs[0]["header"]["exchange"] == "IKE_SA_INIT" and msgs[0]["header"]["initiator"]


# --------------------------------------------------------------------------- recorded data

FILES = sorted(DATA.glob("*.json"))


def test_recorded_vectors_present():
    names = {f.stem for f in FILES}
    assert {"psk-gcm-x25519", "psk-cbc-ecp256", "psk-cbc-modp3072", "ecdsa-certs",
            "rsa-chain-fragmented", "eap-mschapv2-cp", "mobike"} <= names


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.stem)
def test_recorded_vector_is_consistent(path):
    import record_strongswan as rec

    d = json.loads(path.read_text())
    for key in ("scenario", "description", "strongswan_version", "messages", "ike_sas",
                "child_sas", "summaries", "responder_summaries", "esp_packets", "keepalives"):
        assert key in d, key
    assert d["scenario"] == path.stem
    assert "psk" in d or "certs" in d
    for m in d["messages"]:
        msg = bytes.fromhex(m["hex"])
        assert struct.unpack("!I", msg[24:28])[0] == len(msg)  # IKE length = datagram
        assert m["non_esp_marker"] == (m["sport"] == 4500 or m["dport"] == 4500)
    first = d["ike_sas"][0]
    assert first["exchange"] == "IKE_SA_INIT"
    assert rec.verify_initial_keys(d["messages"], first) is True
    spis = {(m["hex"][:16], m["hex"][16:32]) for m in d["messages"]}
    for k in d["ike_sas"]:
        assert (k["spi_i"], k["spi_r"]) in spis
        if k["rekeyed_from"]:
            old = [o for o in d["ike_sas"] if (o["spi_i"], o["spi_r"]) ==
                   (k["rekeyed_from"]["spi_i"], k["rekeyed_from"]["spi_r"])]
            assert old and old[0]["sk_d"]
    outs = [s for s in d["summaries"] if s["dir"] == "out"]
    assert outs[0]["exchange"] == "IKE_SA_INIT" and outs[0]["kind"] == "request"
