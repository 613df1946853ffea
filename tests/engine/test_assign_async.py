"""An asynchronous address assigner (ikev2.assign_async): the last IKE_AUTH request waits for the
addresses (AddressNeeded event out, IkeManager.assignment_ready in); retransmissions meanwhile
emit nothing new; None refuses the client with INTERNAL_ADDRESS_FAILURE; works after EAP too."""
from __future__ import annotations

from ikev2.assign_async import AddressNeeded
from ikev2.cp import Assignment
from ikev2.eap_async import EapVerdictNeeded
from ikev2.events import AuthFailed, ChildUp, VirtualIpReceived
from ikev2.ike_sa import State
from tests.engine.harness import pair
from tests.engine.test_eap_async import async_pair
from tests.engine.test_remote_access import ra_pair
from vpn_gw.pools import AddressPool, PoolSet


class LaterAssigner:
    asynchronous = True

    def __call__(self, identity, req):  # never called by the engine
        raise AssertionError("the engine called an asynchronous assigner")


def _async_ra(seed="assign"):
    gw, cl = ra_pair(PoolSet([AddressPool("rw", "10.99.0.0/24")]))
    gw.address_assigner = LaterAssigner()
    return pair(cl, gw, seed=seed)


def _needed(link):
    return [e for e in link.events_b if isinstance(e, AddressNeeded)]


def test_psk_client_waits_for_its_address_then_gets_it():
    link = _async_ra()
    sa = link.a.initiate("gw", 0.0)
    link.run(6.0)  # the client retransmits IKE_AUTH meanwhile
    asked = _needed(link)
    assert len(asked) == 1 and asked[0].identity == "alice@example.org"
    assert asked[0].request.address_families == {4}
    assert sa.state == State.AUTH_SENT and link.b.sas[0].state == State.INIT_DONE  # still waiting
    assert link.b.assignment_ready(asked[0].ike_id, asked[0].ticket,
                                   Assignment(addresses=("10.99.0.42",), dns=("10.1.0.53",)), link.now)
    link.run(link.now + 2.0)
    assert sa.state == State.ESTABLISHED
    rx = [e for e in link.events_a if isinstance(e, VirtualIpReceived)]
    assert rx[0].addresses == ["10.99.0.42"] and rx[0].dns == ["10.1.0.53"]
    assert [str(t) for t in [e for e in link.events_a if isinstance(e, ChildUp)][0].local_ts] == ["10.99.0.42/32"]
    assert len(_needed(link)) == 1
    # a second delivery is stale
    assert not link.b.assignment_ready(asked[0].ike_id, asked[0].ticket, None, link.now)


def test_no_address_refuses_the_client():
    link = _async_ra("assign-none")
    sa = link.a.initiate("gw", 0.0)
    link.run(0.5)
    ev = _needed(link)[0]
    assert link.b.assignment_ready(ev.ike_id, ev.ticket, None, link.now)
    link.run(link.now + 2.0)
    assert sa.state == State.DELETED and not link.b.sas
    assert [e for e in link.events_a if isinstance(e, AuthFailed)]


def test_after_eap_verdicts():
    link = async_pair("alice-password")
    link.b.policies[0].address_assigner = LaterAssigner()
    sa = link.a.initiate("gw", 0.0)
    seen = 0
    for _ in range(10):
        link.run(link.now + 0.5)
        new = [e for e in link.events_b if isinstance(e, EapVerdictNeeded)][seen:]
        seen += len(new)
        for ev in new:
            link.b.eap_verdict(ev.ike_id, ev.ticket, ev.backend.inner.process(ev.message), link.now)
        if not new:
            break
    asked = _needed(link)
    assert len(asked) == 1 and asked[0].identity == "alice@example.org"
    link.b.assignment_ready(asked[0].ike_id, asked[0].ticket, Assignment(addresses=("10.99.0.7",)), link.now)
    link.run(link.now + 2.0)
    assert sa.state == State.ESTABLISHED
    assert [e for e in link.events_a if isinstance(e, VirtualIpReceived)][0].addresses == ["10.99.0.7"]
