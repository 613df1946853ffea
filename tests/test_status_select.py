"""vpn_gw/daemon/status.py on a real engine: one responder IkeManager that really negotiated
with several initiators at their own addresses (IPv4 and IPv6), one left half-open."""
from __future__ import annotations

import dataclasses

import pytest

from ikev2.manager import IkeManager
from tests.engine.harness import DetRandom, Link, child, psk_policy
from vpn_gw.daemon import status as st

GW4, GW6 = "192.0.2.1", "2001:db8::1"


def _responder() -> IkeManager:
    ra = psk_policy("ra", "gw.example.org", "*.ra.example.org", GW4, "%any",
                    [child("net", "10.1.0.0/24", "10.9.0.0/16")])
    site = psk_policy("site", "gw.example.org", "s.example.org", GW4, "%any",
                      [child("net", "10.1.0.0/24", "10.2.0.0/24")])
    return IkeManager([dataclasses.replace(p, local_addrs=[], remote_addrs=[]) for p in (ra, site)],
                      DetRandom("gw"))


def _connect(gw: IkeManager, name: str, ident: str, addr: str, ts: str, *, half_open=False) -> None:
    gw_addr = GW6 if ":" in addr else GW4
    pol = psk_policy(name, ident, "gw.example.org", addr, gw_addr, [child("net", ts, "10.1.0.0/24")])
    ini = IkeManager([pol], DetRandom(ident))
    # half_open: IKE_AUTH (exchange type 35) never reaches the gateway
    link = Link(ini, gw, addr, gw_addr,
                drop_filter=(lambda d, src, dst: dst[0] == gw_addr and d[18] == 35) if half_open else None)
    ini.initiate(name, 0.0)
    link.settle()


@pytest.fixture(scope="module")
def gw() -> IkeManager:
    gw = _responder()
    _connect(gw, "c1", "c1.ra.example.org", "198.51.100.2", "10.9.1.0/24")
    _connect(gw, "c2", "c2.ra.example.org", "198.51.100.2", "10.9.2.0/24")
    _connect(gw, "c3", "c3.ra.example.org", "2001:db8:0:1::3", "10.9.3.0/24")
    _connect(gw, "s", "s.example.org", "198.51.100.2", "10.2.0.0/24")
    _connect(gw, "c4", "c4.ra.example.org", "203.0.113.9", "10.9.4.0/24", half_open=True)
    return gw


def _ids(sas) -> list[str]:
    return sorted(str(sa.peer_id) if sa.peer_id else f"half-open@{sa.remote[0]}" for sa in sas)


def test_the_gateway_holds_what_the_test_set_up(gw):
    assert _ids(st.select_sas(gw)) == ["c1.ra.example.org", "c2.ra.example.org", "c3.ra.example.org",
                                       "half-open@203.0.113.9", "s.example.org"]


def test_filters(gw):
    assert _ids(st.select_sas(gw, name="site")) == ["s.example.org"]
    assert _ids(st.select_sas(gw, peer="198.51.100.2")) == ["c1.ra.example.org", "c2.ra.example.org",
                                                            "s.example.org"]
    assert _ids(st.select_sas(gw, peer=st.parse_peer("[2001:DB8:0:1:0::3]"))) == ["c3.ra.example.org"]
    assert _ids(st.select_sas(gw, name="site", peer="198.51.100.2")) == ["s.example.org"]
    assert st.select_sas(gw, name="site", peer=st.parse_peer("2001:db8:0:1::3")) == []
    c3 = st.select_sas(gw, peer="2001:db8:0:1::3")[0]
    assert st.select_sas(gw, ike_id=c3.ike_id) == [c3]
    assert st.select_sas(gw, ike_id=c3.ike_id, name="site") == []
    assert st.select_sas(gw, ike_id=99_999) == []


def test_bad_filter_values_are_one_sentence():
    with pytest.raises(ValueError, match=r"^--peer: 'gw\.example\.org' is not an IP address$"):
        st.parse_peer("gw.example.org")
    with pytest.raises(ValueError, match=r"^--id: 'x1' is not an IKE SA number$"):
        st.parse_ike_id("x1")
    with pytest.raises(ValueError, match=r"^--id: -3 is not an IKE SA number$"):
        st.parse_ike_id(-3)


def test_summary_counts_states_and_connections(gw):
    # the half-open IKE SA belongs to the first connection whose addresses match (ra) until
    # IKE_AUTH names its identity
    assert st.summarise(gw) == {
        "ike_sas": 5, "child_sas": 4,
        "by_state": {"ESTABLISHED": 4, "INIT_DONE": 1},
        "by_connection": {"ra": {"total": 4, "ESTABLISHED": 3, "INIT_DONE": 1},
                          "site": {"total": 1, "ESTABLISHED": 1}},
    }
