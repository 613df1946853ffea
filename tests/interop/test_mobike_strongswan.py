"""MOBIKE (RFC 4555) between our gateway and strongSwan (charon 5.9, kernel-libipsec).

Topology: tests/netns_e2e/mobility_topology.py (a client with two uplinks behind two routers,
a hub across a small Internet, a host behind each).

* strongSwan roams, we are the hub: strongSwan (``mobike = yes``, no ``local_addrs``) loses its
  first uplink, sends UPDATE_SA_ADDRESSES from the second; our hub follows (status shows the new
  address, same IKE SPIs). kernel-libipsec cannot move SAs, so strongSwan then rekeys the
  CHILD_SA: both ends must agree on the new CHILD_SA and traffic must flow through it.
* we roam, strongSwan is the hub: our roaming client (no ``local_addrs``) moves and tells
  strongSwan with UPDATE_SA_ADDRESSES; strongSwan's list-sas shows our new address (and it then
  rekeys the CHILD_SA towards us).

A host behind the client pings a host behind the hub at 20 packets/s throughout; the outage of
the move is printed (``pytest -s``) and recorded as a test property.
"""
from __future__ import annotations

import contextlib
import secrets
import time
from pathlib import Path

import netns
import ours_helpers as H
import pytest
import strongswan as ss

from tests.gateway import OurGateway, connection
from tests.netns_e2e import mobility_topology as M

pytestmark = [pytest.mark.interop, pytest.mark.timeout(60)]

IKE, ESP = "aes256gcm16-prfsha256-x25519", "aes256gcm16"
HUB_ID, CLIENT_ID = "hub.example.org", "client.example.org"
CONN, CHILD = "hub", "net"


def _sw_conn(*, local_addrs: str | None, remote_addrs: str, local_id: str, remote_id: str,
             local_ts: str, remote_ts: str, psk: str) -> dict:
    c: dict = {"version": 2, "remote_addrs": remote_addrs, "proposals": IKE, "mobike": True, "encap": True,
               "local": {"auth": "psk", "id": local_id}, "remote": {"auth": "psk", "id": remote_id},
               "children": {CHILD: {"local_ts": local_ts, "remote_ts": remote_ts, "esp_proposals": ESP,
                                    "start_action": "none"}}}
    if local_addrs:
        c["local_addrs"] = local_addrs
    return {"connections": {CONN: c},
            "secrets": {"ike-1": {"id-1": local_id, "id-2": remote_id, "secret": ss.quote(psk)}}}


@contextlib.contextmanager
def _env(workdir: Path, prefix: str):
    """Mobility topology; yields (m, started) where started collects (stop, pid) of what the
    test starts. Everything is stopped by PID and the namespaces deleted; then asserts that
    nothing is left."""
    H.fail_unless_strongswan()
    grp = netns.NetnsGroup(prefix)
    started: list = []
    ok = False
    try:
        m = M.build(grp)
        yield m, started
        ok = True
    finally:
        errors = []
        for stop, _pid in reversed(started):
            try:
                stop()
            except Exception as exc:  # keep tearing down
                errors.append(exc)
        pids = [pid for _s, pid in started]
        try:
            grp.close()
        except Exception as exc:
            errors.append(exc)
        if ok:
            assert not errors, errors
            assert grp.leftovers() == [], "namespaces left behind"
            assert [p for p in pids if p and netns.pid_alive(p)] == [], "processes left behind"


def _our_sa(gw: OurGateway) -> tuple[dict, list[dict]]:
    sas = gw.control("status", timeout=5.0)
    assert len(sas) == 1 and sas[0]["state"] == "ESTABLISHED", sas
    return sas[0], [c for c in sas[0]["children"] if c["state"] == "INSTALLED"]


def _agree(gw: OurGateway, sw: ss.Charon, exclude: set[str] = frozenset()):
    """Exactly one installed CHILD_SA on each side, with crossed SPIs not in ``exclude``."""
    osa, ocs = _our_sa(gw)
    theirs = sw.children(CHILD)
    if len(ocs) != 1 or len(theirs) != 1:
        return None
    oc, (ssa, sc) = ocs[0], theirs[0]
    if oc["spi_in"] in exclude or oc["spi_out"] in exclude:
        return None
    if (oc["spi_in"], oc["spi_out"]) != (sc.get("spi-out"), sc.get("spi-in")):
        return None
    return osa, oc, ssa, sc


def _wait_agree(gw, sw, exclude=frozenset(), timeout: float = 10.0):
    try:
        return netns.wait_until(lambda: _agree(gw, sw, set(exclude)), timeout=timeout, interval=0.1,
                                what="both ends agree on one CHILD_SA")
    except TimeoutError:
        raise AssertionError(f"no agreement on one CHILD_SA after {timeout}s\nours: {_our_sa(gw)}\n"
                             f"strongSwan: {sw.children(CHILD, state=None)}\n--- our log ---\n"
                             f"{gw.log_tail(30)}\n--- charon ---\n{sw.log_tail(40)}") from None


def _ours(m: M.Mobility, workdir: Path, ns, name: str, conn: dict, listen) -> OurGateway:
    return OurGateway(ns, workdir, name, [conn], listen=listen, gateway=dict(H.FAST_RETRANSMIT))


def _roam_and_measure(m: M.Mobility, workdir: Path, done) -> tuple[float, float, M.Pinger]:
    """20 pings/s from the client's host; move; ``done()`` must become true within 10 s; returns
    (t_move, gap ms, pinger) once 20 replies came after the move."""
    m.hc.wait_ping(M.HUB_HOST, timeout=5)
    pinger = M.Pinger(m.hc, M.HUB_HOST, workdir / "ping.txt").start()
    try:
        netns.wait_until(lambda: len(pinger.replies()) >= 20, timeout=5, what="20 replies before the move")
        t_move = m.move()
        netns.wait_until(done, timeout=10.0, interval=0.1, what="the peer to follow the move")
        netns.wait_until(lambda: pinger.replies_after(t_move + 0.001) >= 20, timeout=10.0,
                         what="20 replies after the move")
    finally:
        pinger.stop()
    gap = pinger.gap(t_move)
    assert gap is not None
    return t_move, gap[0], pinger


@pytest.mark.parametrize("hub_adoption", [
    "auto",  # the default; remote_addrs %any turns adoption on: the path probe itself moves the SA
    False,
])
def test_strongswan_roams_our_hub_follows(sswan_workdir, record_property, hub_adoption):
    t0 = time.monotonic()
    psk = "mobike-" + secrets.token_hex(12)
    with _env(sswan_workdir, "mobsw") as (m, started):
        hub = _ours(m, sswan_workdir, m.hub, "hub", connection(
            CONN, M.HUB_IP, "%any", HUB_ID, CLIENT_ID, local_ts=M.HUB_LAN, remote_ts=M.CLIENT_LAN, psk=psk,
            child=CHILD, address_adoption=hub_adoption), [M.HUB_IP])
        sw = ss.Charon(m.client, sswan_workdir / "sw", "sw", log_levels=ss.DEFAULT_LOG_LEVELS)
        sw.write_swanctl_conf(_sw_conn(local_addrs=None, remote_addrs=M.HUB_IP, local_id=CLIENT_ID,
                                       remote_id=HUB_ID, local_ts=M.CLIENT_LAN, remote_ts=M.HUB_LAN, psk=psk))
        hub.start()
        started.append((hub.stop, hub.proc.pid))
        sw.start()
        started.append((sw.stop, sw.pid))
        try:
            sw.load_all()
            sw.initiate(child=CHILD, timeout=15)
            osa, oc, ssa, sc = _wait_agree(hub, sw)
            assert osa["remote_addr"] == M.CLIENT_IP1 and ssa["local-host"] == M.CLIENT_IP1
            old_spis = {oc["spi_in"], oc["spi_out"]}

            def followed():
                return _our_sa(hub)[0]["remote_addr"] == M.CLIENT_IP2 and \
                    any(s["local-host"] == M.CLIENT_IP2 for s in sw.list_sas())
            t_move, gap, _p = _roam_and_measure(m, sswan_workdir, followed)
            record_property("gap_ms", round(gap, 1))
            print(f"\nstrongSwan roams, our hub follows: outage {gap:.0f} ms")

            # the IKE SA moved (same SPIs); strongSwan rekeyed the CHILD_SA (kernel-libipsec)
            osa2, oc2, ssa2, sc2 = _wait_agree(hub, sw, exclude=old_spis)
            assert (osa2["spi_i"], osa2["spi_r"]) == (osa["spi_i"], osa["spi_r"])
            assert (ssa2["initiator-spi"], ssa2["responder-spi"]) == (ssa["initiator-spi"], ssa["responder-spi"])
            assert (osa2["remote_addr"], osa2["remote_port"]) == (M.CLIENT_IP2, 4500)
            assert ssa2["local-host"] == M.CLIENT_IP2 and ssa2["remote-host"] == M.HUB_IP
            moved = [e["reason"] for e in H.ours_events(hub, "peer address changed")
                     if e["new"].startswith(M.CLIENT_IP2)]
            # adoption on: strongSwan's path probe (an authenticated request) already moved it.
            # strongSwan may probe from more than one local address (old and new) while it roams:
            # each authenticated new request is followed, so the hub can move more than once,
            # always for this reason, and ends on the new address (checked above).
            want = "MOBIKE UPDATE_SA_ADDRESSES" if hub_adoption is False else "authenticated IKE request"
            assert moved and set(moved) == {want}, moved
            summ = H.sw_summaries(sw)
            upd = [s for s in summ if s["exchange"] == "INFORMATIONAL" and s["dir"] == "out"
                   and "UPD_SA_ADDR" in s["payloads"]]
            assert len(upd) == 1, f"strongSwan sent no (or several) UPDATE_SA_ADDRESSES: {upd}"
            answer = [s for s in summ if s["exchange"] == "INFORMATIONAL" and s["dir"] == "in"
                      and s["kind"] == "response" and s["mid"] == upd[0]["mid"]]
            assert answer and "COOKIE2" in answer[0]["payloads"] and "NATD_D_IP" in answer[0]["payloads"], answer
            assert any(s["exchange"] == "CREATE_CHILD_SA" and "REKEY_SA" in s["payloads"] for s in summ)
            assert not [s for s in summ if s["exchange"] == "IKE_SA_INIT" and s["dir"] == "out"][1:], \
                "strongSwan started a second IKE SA"
            # traffic flows through the rekeyed CHILD_SA, both ways
            before = int(oc2["packets_in"]), int(oc2["packets_out"])
            assert m.hc.ping(M.HUB_HOST, count=5, interval=0.1)
            assert m.hh.ping(M.CLIENT_HOST, count=3, interval=0.1)
            oc3 = _our_sa(hub)[1][0]
            assert oc3["spi_in"] == oc2["spi_in"]
            assert int(oc3["packets_in"]) >= before[0] + 8 and int(oc3["packets_out"]) >= before[1] + 8
        except BaseException:
            print(f"--- our hub ---\n{hub.log_tail(60)}\n--- charon ---\n{sw.log_tail(80)}")
            raise
    assert time.monotonic() - t0 < 40


def test_we_roam_strongswan_follows(sswan_workdir, record_property):
    t0 = time.monotonic()
    psk = "mobike-" + secrets.token_hex(12)
    with _env(sswan_workdir, "mobour") as (m, started):
        sw = ss.Charon(m.hub, sswan_workdir / "sw", "sw", log_levels=ss.DEFAULT_LOG_LEVELS)
        sw.write_swanctl_conf(_sw_conn(local_addrs=M.HUB_IP, remote_addrs="%any", local_id=HUB_ID,
                                       remote_id=CLIENT_ID, local_ts=M.HUB_LAN, remote_ts=M.CLIENT_LAN, psk=psk))
        client = _ours(m, sswan_workdir, m.client, "client", M.ours_roaming(
            CONN, M.HUB_IP, CLIENT_ID, HUB_ID, local_ts=M.CLIENT_LAN, remote_ts=M.HUB_LAN, psk=psk,
            ike=IKE, esp=ESP, child=CHILD), None)
        sw.start()
        started.append((sw.stop, sw.pid))
        client.start()
        started.append((client.stop, client.proc.pid))
        try:
            sw.load_all()
            client.up(CONN)
            osa, oc, ssa, sc = _wait_agree(client, sw)
            assert osa["local_addr"] == M.CLIENT_IP1 and ssa["remote-host"] == M.CLIENT_IP1
            old_spis = {oc["spi_in"], oc["spi_out"]}

            def followed():
                return any(s["remote-host"] == M.CLIENT_IP2 for s in sw.list_sas())
            t_move, gap, _p = _roam_and_measure(m, sswan_workdir, followed)
            record_property("gap_ms", round(gap, 1))
            print(f"\nwe roam, strongSwan follows: outage {gap:.0f} ms")
            ssa2 = sw.list_sas()[0]
            assert (ssa2["initiator-spi"], ssa2["responder-spi"]) == (ssa["initiator-spi"], ssa["responder-spi"])
            assert ssa2["remote-host"] == M.CLIENT_IP2 and ssa2["remote-port"] == "4500"
            assert H.ours_events(client, "MOBIKE address update confirmed")
            summ = H.sw_summaries(sw)
            assert any(s["dir"] == "in" and s["exchange"] == "INFORMATIONAL" and "UPD_SA_ADDR" in s["payloads"]
                       for s in summ), "strongSwan saw no UPDATE_SA_ADDRESSES"
            # strongSwan (kernel-libipsec) rekeys the CHILD_SA after the update; we follow
            osa2, oc2, ssa3, sc2 = _wait_agree(client, sw, exclude=old_spis)
            assert (osa2["spi_i"], osa2["spi_r"]) == (osa["spi_i"], osa["spi_r"])
            assert (osa2["local_addr"], osa2["local_port"]) == (M.CLIENT_IP2, 4500)
            assert ssa3["remote-host"] == M.CLIENT_IP2
            assert m.hc.ping(M.HUB_HOST, count=5, interval=0.1)
            assert m.hh.ping(M.CLIENT_HOST, count=3, interval=0.1)
        except BaseException:
            print(f"--- our client ---\n{client.log_tail(60)}\n--- charon ---\n{sw.log_tail(80)}")
            raise
    assert time.monotonic() - t0 < 40
