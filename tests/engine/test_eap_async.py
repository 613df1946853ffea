"""An asynchronous EAP authenticator (ikev2.eap_async): the engine hands each EAP-Response out
as an EapVerdictNeeded event and answers the IKE_AUTH request only when the verdict is fed back
(here a local EapServer decides "later", as a RADIUS server would). Retransmissions of the
waiting request are dropped, stale verdicts ignored, failures end the IKE SA cleanly."""
from __future__ import annotations

from ikev2.eap import EapClient, EapServer
from ikev2.eap.packet import EapStep
from ikev2.eap_async import AsyncEapServer, EapVerdictNeeded
from ikev2.events import AuthFailed, ChildUp, VirtualIpReceived
from ikev2.identity import Identity
from ikev2.ike_sa import State
from ikev2.policy import AuthConfig
from tests.engine.harness import DetRandom, pair
from tests.engine.test_remote_access import USERS, ra_pair
from vpn_gw.pools import AddressPool, PoolSet


class LaterEap(AsyncEapServer):
    """Decides with a local EapServer, but only when the test says so."""

    def __init__(self):
        super().__init__()
        self.inner = EapServer("mschapv2", USERS, DetRandom("eap-s"))

    def start(self) -> bytes:
        return self.inner.start()


def async_pair(password: str):
    pool = PoolSet([AddressPool("rw", "10.99.0.0/24")])
    gw, cl = ra_pair(pool)
    who = "alice@example.org"
    cl.local_id = Identity.parse(who)
    gw.remote_auth = AuthConfig("eap-radius", eap_server=LaterEap)
    cl.local_auth = AuthConfig("eap-mschapv2", eap_client=lambda: EapClient(
        who, password=password, allowed={"mschapv2"}, random_bytes=DetRandom("eap-c")))
    return pair(cl, gw, seed="async")


def drive(link, *, wait: float = 0.0, max_rounds: int = 20) -> list[EapVerdictNeeded]:
    """Run the link; answer every EapVerdictNeeded after ``wait`` seconds of link time."""
    asked: list[EapVerdictNeeded] = []
    seen = 0
    for _ in range(max_rounds):
        link.run(link.now + 0.5)
        new = [e for e in link.events_b if isinstance(e, EapVerdictNeeded)][seen:]
        if not new:
            break
        seen += len(new)
        for ev in new:
            asked.append(ev)
            link.run(link.now + wait)  # the client retransmits meanwhile
            step = ev.backend.inner.process(ev.message)
            assert link.b.eap_verdict(ev.ike_id, ev.ticket, step, link.now)
    link.run(link.now + 2.0)
    return asked


def test_async_eap_establishes_with_virtual_ip():
    link = async_pair("alice-password")
    sa = link.a.initiate("gw", 0.0)
    asked = drive(link)
    fails = [e.reason for e in link.events_a + link.events_b if isinstance(e, AuthFailed)]
    assert sa.state == State.ESTABLISHED, fails
    # Identity, MS-CHAPv2 Response, Success-Response: three verdicts, tickets 1..3
    assert [e.ticket for e in asked] == [1, 2, 3]
    assert link.b.sas[0].eap_identity == "alice@example.org"
    assert [e for e in link.events_a if isinstance(e, VirtualIpReceived)][0].addresses == ["10.99.0.1"]
    assert [e for e in link.events_a if isinstance(e, ChildUp)]


def test_retransmissions_while_waiting_are_not_relayed_twice():
    link = async_pair("alice-password")
    sa = link.a.initiate("gw", 0.0)
    n_before = len(link.trace)
    asked = drive(link, wait=5.0)  # longer than the client's first retransmission timeout
    assert sa.state == State.ESTABLISHED
    assert [e.ticket for e in asked] == [1, 2, 3]
    # the client did retransmit while we waited (so the drop path really ran)
    assert len(link.trace) - n_before > 10


def test_wrong_password_fails_cleanly():
    link = async_pair("not-the-password")
    sa = link.a.initiate("gw", 0.0)
    drive(link)
    assert sa.state == State.DELETED and not link.b.sas
    reasons = [e.reason for e in link.events_b if isinstance(e, AuthFailed)]
    assert reasons and "EAP authentication of 'alice@example.org' failed" in reasons[0]


def test_backend_failure_verdict_refuses_the_client():
    link = async_pair("alice-password")
    sa = link.a.initiate("gw", 0.0)
    link.run(0.5)
    ev = [e for e in link.events_b if isinstance(e, EapVerdictNeeded)][0]
    assert link.b.eap_verdict(ev.ike_id, ev.ticket, EapStep(
        done=True, success=False, reason="no answer from RADIUS server 192.0.2.10"), link.now)
    link.run(link.now + 2.0)
    assert sa.state == State.DELETED and not link.b.sas
    reasons = [e.reason for e in link.events_b if isinstance(e, AuthFailed)]
    assert reasons and "no answer from RADIUS server" in reasons[0]


def test_stale_verdict_is_ignored():
    link = async_pair("alice-password")
    link.a.initiate("gw", 0.0)
    link.run(0.5)
    ev = [e for e in link.events_b if isinstance(e, EapVerdictNeeded)][0]
    assert not link.b.eap_verdict(ev.ike_id, ev.ticket + 7, EapStep(done=True, success=True), link.now)
    assert not link.b.eap_verdict(999, ev.ticket, EapStep(done=True, success=True), link.now)
    step = ev.backend.inner.process(ev.message)
    assert link.b.eap_verdict(ev.ike_id, ev.ticket, step, link.now)
    assert not link.b.eap_verdict(ev.ike_id, ev.ticket, step, link.now)  # delivered once only


def test_async_server_remembers_identity_and_failure_reason():
    """What the gateway logs when a client gives up with AUTHENTICATION_FAILED (exchange_info)
    comes from the verdicts: the identity once known, the last failure reason."""
    srv = LaterEap()
    assert srv.identity is None and srv.failure_reason == ""
    srv._verdict = EapStep(send=b"\x01\x02\x00\x04", identity="alice@example.org")
    srv.process(b"\x02\x01\x00\x05\x01")
    srv._verdict = EapStep(send=b"\x04\x03\x00\x04", done=True, success=False, reason="wrong password")
    srv.process(b"\x02\x02\x00\x04")
    assert (srv.identity, srv.failure_reason) == ("alice@example.org", "wrong password")
