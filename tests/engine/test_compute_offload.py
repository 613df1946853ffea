"""Handshake computations handed out by the engine (ikev2.compute, ikev2.compute_async): results
completed later and out of order (virtual time), retransmissions absorbed while a job is pending,
an SA that dies while its job runs, and results identical to the inline computation."""
from __future__ import annotations

import pytest

from ikev2.compute import (
    AuthJob,
    ComputeNeeded,
    InitKeysJob,
    InlineExecutor,
    OffloadPolicy,
    estimated_cost_us,
    run,
)
from ikev2.constants import ExchangeType
from ikev2.events import IkeUp
from ikev2.ike_sa import State
from ikev2.manager import IkeManager
from ikev2.message import decode_header
from ikev2.policy import AuthConfig
from tests.engine.certgen import NOW
from tests.engine.harness import DetRandom, child, psk_policy

GW = "192.0.2.1"
EVERYTHING = OffloadPolicy(min_cost_us=0)


def gateway_policy(auth: str, ike=("aes256gcm16-prfsha256-x25519",)):
    pol = psk_policy("ra", "gw.example.org", "%any", GW, "%any", [child("net", "10.1.0.0/24", "0.0.0.0/0")],
                     ike=ike)
    pol.remote_addrs = []
    return pol


def client_policy(i: int, ike=("aes256gcm16-prfsha256-x25519",)):
    return psk_policy("gw", f"client{i}.example.org", "gw.example.org", f"198.51.100.{i}", GW,
                      [child("net", f"10.2.{i}.0/24", "10.1.0.0/24")], ike=ike)


class Net:
    """A gateway and clients in memory; ComputeNeeded events of the gateway are held until the
    test completes them (in any order, at any virtual time)."""

    def __init__(self, gw: IkeManager, clients: dict[str, IkeManager]):
        self.gw, self.clients, self.now = gw, clients, 0.0
        self.held: list[ComputeNeeded] = []
        self.gw_events: list = []
        self.sent_by_gw: list[tuple[float, bytes]] = []

    def deliver(self) -> None:
        for _ in range(200):
            moved = False
            for data, src, dst in self.gw.pop_datagrams():
                self.sent_by_gw.append((self.now, data))
                self.clients[dst[0]].receive(data, dst, src, self.now)
                moved = True
            for mgr in self.clients.values():
                for data, src, dst in mgr.pop_datagrams():
                    assert dst[0] == GW
                    self.gw.receive(data, dst, src, self.now)
                    moved = True
                mgr.pop_events()
            for ev in self.gw.pop_events():
                (self.held if isinstance(ev, ComputeNeeded) else self.gw_events).append(ev)
            if not moved:
                return
        raise AssertionError("no quiescence")

    def advance(self, until: float) -> None:
        self.deliver()
        while self.now < until:
            ds = [d for m in [self.gw, *self.clients.values()] if (d := m.next_deadline()) is not None]
            self.now = max(self.now + 1e-3, min(ds + [until]))
            for m in [self.gw, *self.clients.values()]:
                m.tick(self.now)
            self.deliver()

    def complete(self, index: int) -> bool:
        ev = self.held.pop(index)
        done = self.gw.compute_done(ev.token, run(ev.job), self.now)
        self.deliver()
        return done


def make_net(n_clients: int, certs: bool = False, ike=("aes256gcm16-prfsha256-x25519",),
             offload: OffloadPolicy = EVERYTHING):
    gw_pol = gateway_policy("psk", ike)
    clients = {}
    cpols = [client_policy(i, ike) for i in range(1, n_clients + 1)]
    if certs:
        from tests.engine.certgen import issue, new_key
        ca_key = new_key("ecdsa")
        ca = issue("Test Root CA", ca_key, ca=True)
        gw_key = new_key("ecdsa")
        gw_pol.local_auth = AuthConfig("pubkey", certs=[issue("gw", gw_key, ca, ca_key, sans=["gw.example.org"])],
                                       private_key=gw_key)
        gw_pol.remote_auth = AuthConfig("pubkey", cacerts=[ca])
        for i, cp in enumerate(cpols, 1):
            k = new_key("ecdsa")
            cp.local_auth = AuthConfig("pubkey", certs=[issue(f"c{i}", k, ca, ca_key,
                                                              sans=[f"client{i}.example.org"])], private_key=k)
            cp.remote_auth = AuthConfig("pubkey", cacerts=[ca])
    gw = IkeManager([gw_pol], DetRandom("gw"), offload=offload, wall_offset=NOW.timestamp())
    for i, cp in enumerate(cpols, 1):
        clients[f"198.51.100.{i}"] = IkeManager([cp], DetRandom(f"c{i}"), wall_offset=NOW.timestamp())
    return Net(gw, clients)


def start(net: Net, i: int):
    return net.clients[f"198.51.100.{i}"].initiate("gw", net.now)


def kinds(held):
    return [type(ev.job).__name__ for ev in held]


@pytest.mark.parametrize("certs", [False, True])
def test_jobs_completed_later_and_out_of_order(certs):
    net = make_net(2, certs)
    a, b = start(net, 1), start(net, 2)
    net.deliver()
    assert kinds(net.held) == ["InitKeysJob", "InitKeysJob"]
    assert net.sent_by_gw == []  # nothing answered before the keys exist
    assert net.gw.counters()["computations_pending"] == 2
    net.advance(1.5)  # virtual time passes; then the second job finishes first
    assert net.complete(1) and net.complete(0)
    if certs:
        assert kinds(net.held) == ["AuthJob", "AuthJob"]
        net.advance(2.0)
        assert net.complete(1) and net.complete(0)
    net.advance(3.0)
    assert a.state == State.ESTABLISHED and b.state == State.ESTABLISHED
    assert sum(isinstance(e, IkeUp) for e in net.gw_events) == 2
    assert net.gw.counters()["computations_pending"] == 0


def _exchanges_answered(net: Net) -> list[int]:
    return [decode_header(d).exchange for _t, d in net.sent_by_gw]


def test_init_retransmission_absorbed_while_pending():
    net = make_net(1)
    sa = start(net, 1)
    net.deliver()
    assert len(net.held) == 1 and len(net.gw.sas) == 1
    net.advance(10.0)  # the client retransmitted IKE_SA_INIT (4 s, then 7.2 s more)
    assert len(net.held) == 1, "a retransmission must not start a second computation"
    assert len(net.gw.sas) == 1, "nor a second IKE SA"
    assert net.sent_by_gw == []
    assert net.gw.half_open_count() == 1  # counted by admission while computing
    assert net.complete(0)
    # one IKE_SA_INIT answer (not one per retransmission), then IKE_AUTH
    assert _exchanges_answered(net) == [ExchangeType.IKE_SA_INIT, ExchangeType.IKE_AUTH]
    net.advance(12.0)
    assert sa.state == State.ESTABLISHED


def test_auth_retransmission_absorbed_while_pending():
    net = make_net(1, certs=True)
    sa = start(net, 1)
    net.deliver()
    assert net.complete(0)
    assert kinds(net.held) == ["AuthJob"]
    sent = len(net.sent_by_gw)
    net.advance(10.0)  # IKE_AUTH retransmitted twice meanwhile
    assert kinds(net.held) == ["AuthJob"]
    assert len(net.sent_by_gw) == sent  # no answer, no error
    assert net.complete(0)
    net.advance(12.0)
    assert sa.state == State.ESTABLISHED


@pytest.mark.parametrize("stage", ["init", "auth"])
def test_sa_dies_while_job_pending_result_dropped(stage):
    net = make_net(1, certs=True)
    start(net, 1)
    net.deliver()
    if stage == "auth":
        assert net.complete(0)
    assert len(net.held) == 1
    net.advance(31.0)  # half-open expiry (30 s) fires while the job is out
    gw_sas = [s for s in net.gw.sas if s.state != State.DELETED]
    assert gw_sas == []
    assert net.gw.counters()["computations_pending"] == 0
    sent = len(net.sent_by_gw)
    assert not net.complete(0)  # the late result is dropped
    assert len(net.sent_by_gw) == sent


def test_compute_failed_deletes_the_sa():
    net = make_net(1)
    start(net, 1)
    net.deliver()
    ev = net.held.pop()
    assert net.gw.compute_failed(ev.token, "worker died", net.now)
    assert [s for s in net.gw.sas if s.state != State.DELETED] == []
    assert not net.gw.compute_done(ev.token, run(ev.job), net.now)


def _gateway_bytes(offload: OffloadPolicy, executor: InlineExecutor | None) -> list[bytes]:
    net = make_net(1, offload=offload)
    sa = start(net, 1)
    for t in (0.5, 1.0, 1.5, 2.0, 3.0):
        net.advance(t)
        if executor is not None:
            rest = executor.complete(net.gw, list(net.held), net.now)
            assert rest == []
            net.held.clear()
            net.deliver()
    assert sa.state == State.ESTABLISHED
    return [d for _t, d in net.sent_by_gw]


def test_offloaded_results_identical_to_inline():
    # The same job gives the same bytes wherever it runs: run by the engine itself (a policy that
    # hands nothing out) and by an executor after a ComputeNeeded event.
    ex = InlineExecutor()
    handed_out = _gateway_bytes(EVERYTHING, ex)
    kept = _gateway_bytes(OffloadPolicy(min_cost_us=1e9), None)
    assert ex.jobs_run == 1
    assert handed_out == kept and len(kept) == 2  # IKE_SA_INIT and IKE_AUTH responses


def test_cost_model_decides_what_is_handed_out():
    from ikev2.compute import signature_cost_us
    from tests.engine.certgen import new_key
    base = dict(peer_ke=b"", seed=b"", prf=5, encr=20, encr_bits=256, integ=None, ni=b"", nr=b"",
                spi_i=b"", spi_r=b"")
    default = OffloadPolicy()
    assert not default.wants(InitKeysJob(group=31, **base))  # x25519: cheaper than the round trip
    assert default.wants(InitKeysJob(group=14, **base))  # MODP-2048
    auth = dict(ident_type=2, ident_data=b"", ident_text="", certs=(), cacerts=(), when=0.0, auth_method=14,
                auth_data=b"", peer_octets=b"", our_key=b"", our_octets=b"", hash_alg=2)
    assert default.wants(AuthJob(**auth, sign_cost_us=signature_cost_us(new_key("ecdsa"))))
    rsa = AuthJob(**auth, sign_cost_us=signature_cost_us(new_key("rsa3072")))
    assert estimated_cost_us(rsa) > 900
