"""AddressWatcher pieces that need no netlink: address selection and message decoding.

The watcher itself (real netlink events in a namespace) is tested in
tests/netns_e2e/test_ddns_netns.py.
"""
from __future__ import annotations

import pytest
from pyroute2.netlink.rtnl.ifaddrmsg import ifaddrmsg

from vpn_gw.ddns import AddressWatcher, IfAddr, select_addresses
from vpn_gw.ddns.addrwatch import IFA_F_DADFAILED, IFA_F_DEPRECATED, IFA_F_TEMPORARY, IFA_F_TENTATIVE, RT_SCOPE_LINK


def A(addr, scope=0, flags=0, plen=24):
    return IfAddr(6 if ":" in addr else 4, addr, plen, scope, flags)


def test_select_publishable_addresses():
    addrs = [
        A("2001:db8::5", plen=64),
        A("203.0.113.5"),
        A("192.0.2.9"),
        A("fe80::1", scope=RT_SCOPE_LINK, plen=64),
        A("2001:db8::aa", flags=IFA_F_TENTATIVE, plen=64),
        A("2001:db8::bb", flags=IFA_F_DADFAILED, plen=64),
        A("2001:db8::cc", flags=IFA_F_DEPRECATED, plen=64),
        A("2001:db8::dd", flags=IFA_F_TEMPORARY, plen=64),
        A("127.0.0.1", scope=254, plen=8),      # host scope
        A("198.51.100.1", flags=IFA_F_TEMPORARY),  # IPv4: the bit means "secondary"
    ]
    assert select_addresses(addrs) == ["192.0.2.9", "198.51.100.1", "203.0.113.5", "2001:db8::5"]
    assert select_addresses(addrs, (4,)) == ["192.0.2.9", "198.51.100.1", "203.0.113.5"]
    assert select_addresses(addrs, (6,)) == ["2001:db8::5"]
    assert select_addresses(addrs, (6,), include_link_local=True, include_deprecated=True,
                            include_temporary=True) == \
        ["2001:db8::5", "2001:db8::cc", "2001:db8::dd", "fe80::1"]


def test_ifaddr_from_netlink_message():
    msg = ifaddrmsg()
    msg["family"] = 2
    msg["prefixlen"] = 24
    msg["scope"] = 0
    msg["flags"] = 0x80                      # IFA_F_PERMANENT (8-bit field)
    msg["index"] = 3
    msg["attrs"] = [("IFA_ADDRESS", "203.0.113.5"), ("IFA_LOCAL", "203.0.113.5"),
                    ("IFA_FLAGS", 0x80 | IFA_F_TENTATIVE)]
    a = IfAddr.from_msg(msg)
    assert a == IfAddr(4, "203.0.113.5", 24, 0, 0x80 | IFA_F_TENTATIVE) and a.tentative
    # point-to-point: IFA_LOCAL is our address, IFA_ADDRESS the peer's
    ptp = {"prefixlen": 32, "scope": 0, "flags": 0,
           "IFA_ADDRESS": "198.51.100.1", "IFA_LOCAL": "203.0.113.9"}
    assert IfAddr.from_msg(ptp).address == "203.0.113.9"
    v6 = {"prefixlen": 64, "scope": 0, "flags": IFA_F_TEMPORARY, "IFA_ADDRESS": "2001:DB8::1"}
    assert IfAddr.from_msg(v6) == IfAddr(6, "2001:db8::1", 64, 0, IFA_F_TEMPORARY)
    assert IfAddr.from_msg({"prefixlen": 0}) is None


def test_relevant_events():
    w = AddressWatcher("wan0")
    w.ifindex = 3
    assert w._relevant({"event": "RTM_NEWADDR", "index": 3})
    assert w._relevant({"event": "RTM_DELADDR", "index": 3})
    assert not w._relevant({"event": "RTM_NEWADDR", "index": 4})
    assert w._relevant({"event": "RTM_NEWLINK", "index": 7, "IFLA_IFNAME": "wan0"})
    assert w._relevant({"event": "RTM_DELLINK", "index": 3, "IFLA_IFNAME": "old"})
    assert not w._relevant({"event": "RTM_NEWLINK", "index": 7, "IFLA_IFNAME": "lan0"})
    assert not w._relevant({"event": "RTM_NEWROUTE"})
    w.ifindex = None                          # interface not there yet: any address event
    assert w._relevant({"event": "RTM_NEWADDR", "index": 9})


def test_bad_interface_name():
    with pytest.raises(ValueError):
        AddressWatcher("x" * 16)
    with pytest.raises(ValueError):
        AddressWatcher("")
