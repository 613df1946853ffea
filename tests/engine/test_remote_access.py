"""Remote access in memory: configuration payload (virtual IP, DNS, split subnets) and pools."""
from __future__ import annotations

import ipaddress

from ikev2.cp import Assignment
from ikev2.events import ChildUp, VirtualIpAssigned, VirtualIpReceived
from ikev2.ike_sa import State
from tests.engine.harness import child, pair, psk_policy
from vpn_gw.pools import AddressPool, PoolSet


def ra_pair(pool):
    gw = psk_policy("rw", "vpn.example.org", "*@example.org", "192.0.2.1", "%any",
                    [child("rw", "10.1.0.0/16", "0.0.0.0/0")])

    def assign(identity, req):
        got = pool.acquire(["rw"], identity, 4)
        return Assignment(addresses=(got[1],), dns=("10.1.0.53",), subnets=("10.1.0.0/16",)) if got else None
    gw.address_assigner = assign
    cl = psk_policy("gw", "alice@example.org", "vpn.example.org", "198.51.100.7", "192.0.2.1",
                    [child("rw", "0.0.0.0/0", "10.1.0.0/16")])
    cl.vips = ["0.0.0.0"]
    return gw, cl


def test_client_gets_virtual_ip_dns_and_narrowed_selectors():
    pool = PoolSet([AddressPool("rw", "10.99.0.0/24")])
    gw, cl = ra_pair(pool)
    link = pair(cl, gw)
    sa = link.a.initiate("gw", 0.0)
    link.run(2.0)
    assert sa.state == State.ESTABLISHED
    rx = [e for e in link.events_a if isinstance(e, VirtualIpReceived)]
    assert rx and rx[0].addresses == ["10.99.0.1"] and rx[0].dns == ["10.1.0.53"]
    assert rx[0].subnets == ["10.1.0.0/16"]
    assigned = [e for e in link.events_b if isinstance(e, VirtualIpAssigned)]
    assert assigned[0].identity == "alice@example.org"
    # The client's Child SA is narrowed to its virtual IP on both sides.
    cu_a = [e for e in link.events_a if isinstance(e, ChildUp)][0]
    cu_b = [e for e in link.events_b if isinstance(e, ChildUp)][0]
    assert [str(t) for t in cu_a.local_ts] == ["10.99.0.1/32"]
    assert [str(t) for t in cu_b.remote_ts] == ["10.99.0.1/32"]


def test_same_identity_gets_same_address_again_and_distinct_clients_distinct():
    pool = PoolSet([AddressPool("rw", "10.99.0.0/24")])
    addrs = {}
    for who in ["alice", "bob", "carol", "alice"]:
        gw, cl = ra_pair(pool)
        from ikev2.identity import Identity
        cl.local_id = Identity.parse(f"{who}@example.org")
        link = pair(cl, gw, seed=who + str(len(addrs)))
        link.a.initiate("gw", 0.0)
        link.run(2.0)
        got = [e for e in link.events_a if isinstance(e, VirtualIpReceived)][0].addresses[0]
        if who in addrs:
            assert addrs[who] == got
        addrs[who] = got
        pool.release(f"{who}@example.org")
    assert len(set(addrs.values())) == 3
    assert all(ipaddress.ip_address(a) in ipaddress.ip_network("10.99.0.0/24") for a in addrs.values())


def test_pool_exhausted_gives_internal_address_failure():
    pool = PoolSet([AddressPool("rw", "10.99.0.5-10.99.0.5")])
    pool.acquire(["rw"], "someone-else", 4)
    gw, cl = ra_pair(pool)
    link = pair(cl, gw)
    sa = link.a.initiate("gw", 0.0)
    link.run(2.0)
    assert sa.state == State.DELETED


# ---------------------------------------------------------------------------- EAP in IKE_AUTH

import pytest  # noqa: E402

from ikev2.eap import EapClient, EapServer, TlsConfig, UserDB, nt_hash  # noqa: E402
from ikev2.events import AuthFailed  # noqa: E402
from ikev2.policy import AuthConfig  # noqa: E402
from tests.engine.certgen import chain  # noqa: E402
from tests.engine.harness import DetRandom  # noqa: E402

USERS = UserDB.from_toml(f'''
[[user]]
name = "alice@example.org"
nt_hash = "{nt_hash("alice-password")}"
methods = ["mschapv2"]
[[user]]
name = "bob@example.org"
password = "bob-password"
methods = ["md5"]
[[user]]
name = "dave@example.org"
password = "unused"
methods = ["tls"]
''')


def eap_pair(method, who, password, gw_auth="psk"):
    pool = PoolSet([AddressPool("rw", "10.99.0.0/24")])
    gw, cl = ra_pair(pool)
    from ikev2.identity import Identity
    cl.local_id = Identity.parse(who)
    tls_srv = tls_cli = None
    if method == "tls":
        ca, srv_chain, srv_key = chain("ecdsa", "vpn.example.org")
        _ca2, cli_chain, cli_key = chain("ecdsa", "dave@example.org")
        tls_srv = TlsConfig(certificate=srv_chain[0], private_key=srv_key, ca=[_ca2])
        tls_cli = TlsConfig(certificate=cli_chain[0], private_key=cli_key, ca=[ca])
    gw.remote_auth = AuthConfig(f"eap-{method}", eap_server=lambda: EapServer(method, USERS, DetRandom("eap-s"),
                                                                                tls_context=tls_srv))
    cl.local_auth = AuthConfig(f"eap-{method}", eap_client=lambda: EapClient(
        who, password=password, tls_context=tls_cli, allowed={method}, random_bytes=DetRandom("eap-c")))
    return pair(cl, gw, seed=method + who)


@pytest.mark.parametrize("method,who,password", [
    ("mschapv2", "alice@example.org", "alice-password"),
    ("md5", "bob@example.org", "bob-password"),
    ("tls", "dave@example.org", None),
])
def test_eap_methods_establish_with_virtual_ip(method, who, password):
    link = eap_pair(method, who, password)
    sa = link.a.initiate("gw", 0.0)
    link.run(3.0)
    fails = [e.reason for e in link.events_a + link.events_b if isinstance(e, AuthFailed)]
    assert sa.state == State.ESTABLISHED, fails
    assert link.b.sas[0].eap_identity == who
    assert [e for e in link.events_a if isinstance(e, VirtualIpReceived)][0].addresses == ["10.99.0.1"]
    assert [e for e in link.events_a if isinstance(e, ChildUp)]


def test_eap_wrong_password_fails_cleanly():
    link = eap_pair("mschapv2", "alice@example.org", "not-the-password")
    sa = link.a.initiate("gw", 0.0)
    link.run(3.0)
    assert sa.state == State.DELETED and not link.b.sas
    reasons = [e.reason for e in link.events_b if isinstance(e, AuthFailed)]
    assert reasons and "EAP authentication of 'alice@example.org' failed" in reasons[0]
    assert [e for e in link.events_a if isinstance(e, AuthFailed)]


import dataclasses  # noqa: E402


class _WrongIdentifierOnce(EapClient):
    """An EAP peer whose first Response carries a wrong Identifier (the authenticator discards it,
    RFC 3748 4.1); every later Response is correct."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.corrupted = 0

    def process(self, msg):
        step = super().process(msg)
        if self.corrupted == 0 and step.send:
            self.corrupted += 1
            step = dataclasses.replace(step, send=step.send[:1] + bytes([step.send[1] ^ 0x55]) + step.send[2:])
        return step


def test_eap_response_discarded_by_server_is_answered_with_the_outstanding_request():
    """Issue 14 item 7: a discarded EAP Response made the gateway wrap None into an EAP payload
    (TypeError, IKE SA deleted as an internal error). It repeats the outstanding Request."""
    link = eap_pair("mschapv2", "alice@example.org", "alice-password")
    clients = []

    def make_client():
        clients.append(_WrongIdentifierOnce("alice@example.org", password="alice-password",
                                            allowed={"mschapv2"}, random_bytes=DetRandom("eap-c")))
        return clients[-1]

    link.a.policies[0].local_auth = AuthConfig("eap-mschapv2", eap_client=make_client)
    errors = []
    link.a.log = link.b.log = lambda level, event, **kw: errors.append((event, kw)) if level == "error" else None
    sa = link.a.initiate("gw", 0.0)
    link.run(3.0)
    assert clients and clients[0].corrupted == 1
    assert not errors
    assert sa.state == State.ESTABLISHED
    assert link.b.sas[0].eap_identity == "alice@example.org"
