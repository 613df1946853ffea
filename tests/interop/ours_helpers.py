"""Our gateway (``vpn-gw run``) against strongSwan (charon, kernel-libipsec) in namespaces.

Topology (tests/interop/strongswan.py ``build_topology``)::

    host_a 10.10.0.2 -- 10.10.0.1 site [OURS] 192.0.2.10 -- router --
                           198.51.100.10 gw [charon] 10.20.0.1 -- host_b 10.20.0.2

Our gateway runs in ``topo.site``, strongSwan in ``topo.gw``; the router has no route to
10/8, so host_a <-> host_b only works through the tunnel. :func:`ours_vs_strongswan` builds
everything, yields an :class:`Env`, and always tears down (processes by PID, namespaces),
then asserts that nothing is left (a failure of the test, not an error of a fixture).
With ``INTEROP_KEEP_LOGS=DIR`` the logs of a failed test are copied to DIR.

Helpers compare both ends: :func:`assert_same_sa` checks IKE SPIs, Child SPIs (crossed),
algorithms (strongSwan's names against ours) and selectors.
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

_HERE = Path(__file__).resolve().parent
for _p in (_HERE, _HERE.parent, _HERE.parent.parent):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

import netns  # noqa: E402
import strongswan as ss  # noqa: E402

from tests.gateway import OurGateway, connection  # noqa: E402

OURS_ID = "site.example.org"
SW_ID = "gw.example.org"
CONN = "s2s"      # connection name on both sides
CHILD = "net"     # child name on both sides

# (IKE proposal, ESP proposal) pairs of the brief.
SUITES = [
    ("aes256gcm16-prfsha256-x25519", "aes256gcm16"),
    ("aes128-sha256-ecp256", "aes128-sha256"),
    ("aes256-sha384-modp3072", "aes256-sha384"),
]

# Fast failure detection on our side (keys exist in [gateway], see vpn_gw/config/).
FAST_RETRANSMIT = {"retransmit_timeout": 1.0, "retransmit_base": 1.4, "retransmit_tries": 3}


def fail_unless_strongswan() -> None:
    """strongSwan missing must make the test FAIL (never skip), with the reason."""
    try:
        ss.require_strongswan()
    except ss.StrongSwanMissing as exc:
        reason = str(exc)
    else:
        return
    pytest.fail(reason, pytrace=False)


# --------------------------------------------------------------------------- configs


def sw_conf(topo: ss.Topology, *, ike: str, esp: str, psk: str | None = None,
            auth: str = "psk", cert: str | None = None, remote_cert_id: str | None = None,
            conn: Mapping[str, Any] | None = None, child: Mapping[str, Any] | None = None,
            local_id: str = SW_ID, remote_id: str = OURS_ID) -> dict:
    """swanctl.conf for strongSwan in ``topo.gw``: a site-to-site tunnel to our gateway.

    ``remote_addrs`` is our address, so strongSwan can initiate (``--initiate``) as well as
    respond. ``auth="pubkey"``: ``cert`` is the file name in swanctl/x509.
    """
    local: dict[str, Any] = {"auth": auth, "id": local_id}
    remote: dict[str, Any] = {"auth": auth, "id": remote_id}
    if auth == "pubkey":
        local["certs"] = cert
    c: dict[str, Any] = {
        "version": 2, "local_addrs": topo.gw_ip, "remote_addrs": topo.site_ip,
        "proposals": ike, "encap": True, "mobike": True,
        "local": local, "remote": remote,
        "children": {CHILD: {"local_ts": topo.gw_net, "remote_ts": topo.site_net,
                             "esp_proposals": esp, "start_action": "none",
                             **(child or {})}},
    }
    ss._deep_update(c, conn or {})
    out: dict[str, Any] = {"connections": {CONN: c}}
    if auth == "psk":
        out["secrets"] = {"ike-ours": {"id-1": local_id, "id-2": remote_id, "secret": ss.quote(psk)}}
    return out


def ours_conn(topo: ss.Topology, *, ike: str, esp: str, psk: str | None = None,
              **extra) -> dict:
    """Our [[connection]] (tests/gateway.py ``connection``) towards strongSwan."""
    kw: dict[str, Any] = dict(local_ts=topo.site_net, remote_ts=topo.gw_net, ike=ike, esp=esp,
                              child=CHILD)
    if psk is not None:
        kw["psk"] = psk
    local_id = extra.pop("local_id", OURS_ID)
    remote_id = extra.pop("remote_id", SW_ID)
    kw.update(extra)
    return connection(CONN, topo.site_ip, topo.gw_ip, local_id, remote_id, **kw)


# --------------------------------------------------------------------------- environment


@dataclasses.dataclass
class Env:
    topo: ss.Topology
    ours: OurGateway
    sw: ss.Charon
    workdir: Path

    # ---- convenience
    def ping_both_ways(self, count: int = 3, timeout: float = 10.0) -> None:
        """host_a -> host_b and host_b -> host_a through the tunnel (bounded)."""
        t = self.topo
        t.host_a.wait_ping(t.host_b_ip, timeout=timeout)
        assert t.host_a.ping(t.host_b_ip, count=count, interval=0.2), "ping host_a -> host_b failed"
        t.host_b.wait_ping(t.host_a_ip, timeout=timeout)
        assert t.host_b.ping(t.host_a_ip, count=count, interval=0.2), "ping host_b -> host_a failed"

    def no_ping(self) -> bool:
        return not self.topo.host_a.ping(self.topo.host_b_ip, count=1, wait=0.5)

    def wait_both_child(self, timeout: float = 15.0, exclude_spis=()) -> tuple[dict, dict, dict, dict]:
        """Both sides show exactly one INSTALLED child with the same SPIs (excluding old ones).

        Returns (our_sa, our_child, sw_sa, sw_child)."""
        excl = set(exclude_spis)
        last: list = []
        final = {"cli": False}

        def ok():
            status = self.ours.status() if final["cli"] else self.status()
            ours = [(sa, c) for sa in status for c in sa["children"]
                    if c["state"] == "INSTALLED" and sa["state"] == "ESTABLISHED"]
            theirs = self.sw.children(CHILD)
            last[:] = [ours, theirs]
            if len(ours) != 1 or len(theirs) != 1:
                return None
            (osa, oc), (ssa, sc) = ours[0], theirs[0]
            if oc["spi_in"] in excl or oc["spi_out"] in excl:
                return None
            if oc["spi_in"] != sc.get("spi-out") or oc["spi_out"] != sc.get("spi-in"):
                return None
            return osa, oc, ssa, sc
        try:
            netns.wait_until(ok, timeout=timeout, interval=0.1, what="both sides agree on one CHILD_SA")
            final["cli"] = True  # the result comes from `vpn-gw status --json`, as a user sees it
            got = ok()
            assert got, "`vpn-gw status --json` disagrees with the control socket"
            return got
        except TimeoutError:
            raise AssertionError(f"no agreement on one CHILD_SA after {timeout}s:\n"
                                 f"ours: {_short(last[0] if last else None)}\n"
                                 f"strongSwan: {_short(last[1] if len(last) > 1 else None)}") from None

    def status(self) -> list[dict]:
        """Our status straight from the control socket (no CLI process: fast for polling)."""
        return self.ours.control("status", timeout=5.0)

    def wait_ours_empty(self, timeout: float = 10.0) -> None:
        netns.wait_until(lambda: self.status() == [], timeout=timeout, interval=0.1,
                         what="our status to be empty")
        assert self.ours.status() == []  # and `vpn-gw status --json` agrees

    def dump(self) -> str:
        return (f"--- our log tail ({self.ours.log}, without pyroute2 debug) ---\n{our_log_tail(self.ours)}\n"
                f"--- charon log tail ({self.sw.log_path}) ---\n{self.sw.log_tail(60)}")


def our_log_tail(gw: OurGateway, n: int = 60) -> str:
    try:
        lines = gw.log.read_text(errors="replace").splitlines()
    except OSError:
        return "(no log)"
    return "\n".join([ln for ln in lines if '"logger": "pyroute2' not in ln][-n:])


def _short(x) -> str:
    return repr(x)[:1500]


@contextlib.contextmanager
def ours_vs_strongswan(
    workdir: Path,
    *,
    prefix: str,
    sw_config: Callable[[ss.Topology], Mapping[str, Any]],
    ours_connections: Callable[[ss.Topology], list[dict]],
    gateway: Mapping[str, Any] | None = None,
    charon_kwargs: Mapping[str, Any] | None = None,
    setup: Callable[[ss.Topology, ss.Charon, Path], None] | None = None,
    hosts: bool = True,
) -> Iterator[Env]:
    """Namespaces + strongSwan (topo.gw) + our gateway (topo.site), torn down on exit.

    Afterwards asserts that no namespace of the group and none of the processes started
    (charon, vpn-gw) is left. ``setup(topo, charon, workdir)`` runs before charon starts
    (install certificates). On an exception the tails of both logs are printed (pytest
    shows them with the failure).
    """
    fail_unless_strongswan()
    workdir = Path(workdir)
    group = netns.NetnsGroup(prefix)
    sw = ours = None
    pids: list[int] = []
    env = None
    failed = False
    try:
        topo = ss.build_topology(group, hosts=hosts)
        kw = {"log_levels": ss.DEFAULT_LOG_LEVELS, **(charon_kwargs or {})}
        sw = ss.Charon(topo.gw, workdir / "sw", "sw", **kw)
        if setup is not None:
            setup(topo, sw, workdir)
        sw.write_swanctl_conf(sw_config(topo))
        ours = OurGateway(topo.site, workdir, "ours", ours_connections(topo), listen=[topo.site_ip],
                          gateway=dict(gateway or {}))
        sw.start()
        pids.append(sw.pid)
        sw.load_all()
        ours.start()
        pids.append(ours.proc.pid)
        env = Env(topo, ours, sw, workdir)
        yield env
    except BaseException:
        failed = True
        if env is not None:
            print(env.dump())
        elif ours is not None or sw is not None:
            print((our_log_tail(ours) if ours else "") + "\n" + (sw.log_tail(60) if sw else ""))
        raise
    finally:
        teardown(ours, sw, group, pids, failed, keep_logs=lambda: _keep_logs(prefix, ours, sw))


def teardown(ours, sw, group, pids: list[int], failed: bool, keep_logs=None) -> None:
    """Stop both gateways (by PID, bounded), remove the namespaces, and, unless the test already
    failed, assert that nothing is left behind (errors, namespaces, processes)."""
    errors = []
    for stop in ((ours.stop if ours else None), (sw.stop if sw else None)):
        if stop is None:
            continue
        try:
            stop()
        except Exception as exc:  # keep tearing down
            errors.append(exc)
    if failed and keep_logs is not None:
        keep_logs()  # after the stops: complete logs
    try:
        group.close()
    except Exception as exc:
        errors.append(exc)
    left_ns = group.leftovers()
    left_pids = [p for p in pids if netns.pid_alive(p)]
    if not failed:
        assert not errors, f"teardown errors: {errors}"
        assert left_ns == [], f"namespaces left behind: {left_ns}"
        assert left_pids == [], f"processes left behind: {left_pids}"


def _keep_logs(prefix: str, ours: OurGateway | None, sw: ss.Charon | None) -> None:
    """With INTEROP_KEEP_LOGS=DIR, copy both logs of a failed test there (for diagnosis)."""
    dest = os.environ.get("INTEROP_KEEP_LOGS")
    if not dest:
        return
    d = Path(dest) / f"{prefix}-{time.strftime('%H%M%S')}-{os.getpid()}"
    d.mkdir(parents=True, exist_ok=True)
    for src, name in ((ours.log if ours else None, "vpn-gw.log"), (sw.log_path if sw else None, "charon.log")):
        if src is not None and Path(src).exists():
            shutil.copyfile(src, d / name)
    print(f"logs kept in {d}")


# --------------------------------------------------------------------------- rekeying


def rekey_child(env: Env, by: str) -> None:
    if by == "ours":
        res = env.ours.rekey(CONN, child=CHILD)
        assert res["rekeying"] == 1, res
    else:
        env.sw.rekey(child=CHILD)


def wait_child_rekeyed(env: Env, old: dict, timeout: float = 10.0) -> tuple[dict, dict, dict, dict]:
    """New CHILD_SA on both sides, old SPIs gone everywhere."""
    old_spis = {old["spi_in"], old["spi_out"]}
    osa, oc, ssa, sc = env.wait_both_child(timeout=timeout, exclude_spis=old_spis)
    assert {oc["spi_in"], oc["spi_out"]}.isdisjoint(old_spis)

    def old_gone():
        ours = {s for sa in env.status() for c in sa["children"] for s in (c["spi_in"], c["spi_out"])}
        # strongSwan keeps a rekeyed CHILD_SA's inbound half for charon.delete_rekeyed_delay
        # (5 s) in state DELETED, for packets still in flight; its outbound SA is gone.
        theirs = {s for sa in env.sw.list_sas() for c in sa["child-sas"] if c.get("state") != "DELETED"
                  for s in (c.get("spi-in"), c.get("spi-out"))}
        return not (ours | theirs) & old_spis
    netns.wait_until(old_gone, timeout=timeout, interval=0.1, what="old CHILD_SA SPIs to disappear on both sides")
    return osa, oc, ssa, sc


def ike_spis(sa: dict) -> tuple[str, str]:
    return sa["spi_i"], sa["spi_r"]


def wait_ike_rekeyed(env: Env, old: tuple[str, str], timeout: float = 10.0,
                     allow_lingering: bool = False) -> tuple[dict, dict]:
    """One IKE SA on each side, same new SPIs, old SPIs gone from both.

    ``allow_lingering``: tolerate an old IKE SA in state REKEYED/DELETING without children on
    either side (under packet loss the response to a DELETE may be lost after the other side
    already removed the SA; the deleting side then retransmits the DELETE until it gives up)."""
    last: list = []

    def ok():
        ours = env.status()
        if allow_lingering:
            ours = [sa for sa in ours if not (sa["state"] in ("REKEYED", "DELETING") and not sa["children"])]
        theirs = env.sw.list_sas()
        if allow_lingering:
            theirs = [sa for sa in theirs if not (sa.get("state") in ("REKEYED", "DELETING")
                                                  and not sa["child-sas"])]
        last[:] = [ours, theirs]
        if len(ours) != 1 or len(theirs) != 1:
            return None
        o, s = ours[0], theirs[0]
        if o["state"] != "ESTABLISHED" or s.get("state") != "ESTABLISHED":
            return None
        if ike_spis(o) == old or (s["initiator-spi"], s["responder-spi"]) != ike_spis(o):
            return None
        return o, s
    try:
        return netns.wait_until(ok, timeout=timeout, interval=0.1, what="IKE rekey to complete on both sides")
    except TimeoutError:
        raise AssertionError(f"IKE rekey did not converge; ours={last[0] if last else None!r:.1500}\n"
                             f"strongSwan={last[1] if len(last) > 1 else None!r:.1500}") from None


# --------------------------------------------------------------------------- comparisons


def split_ours_algorithms(text: str) -> dict:
    """Our ``algorithms`` string -> {encr, keysize, integ, prf, dh} with strongSwan's names.

    Ours: ``AES_CBC_128/HMAC_SHA2_256_128/PRF_HMAC_SHA2_256/ECP_256`` (IKE) or
    ``AES_GCM_16_256/NO_EXT_SEQ`` (ESP); also accepts ``AES_GCM_16-256``.
    """
    parts = text.split("/")
    out: dict[str, Any] = {"encr": None, "keysize": None, "integ": None, "prf": None, "dh": None,
                           "esn": None}
    first = parts[0]
    sep = "-" if "-" in first else "_"
    name, _, size = first.rpartition(sep)
    if size.isdigit():
        out["encr"], out["keysize"] = name, size
    else:
        out["encr"] = first
    for p in parts[1:]:
        if p.startswith("PRF_"):
            out["prf"] = p
        elif p.startswith(("HMAC_", "AES_XCBC", "AES_CMAC")):
            out["integ"] = p
        elif p in ("NO_EXT_SEQ", "EXT_SEQ"):
            out["esn"] = p
        else:
            out["dh"] = p
    return out


def assert_same_sa(osa: dict, oc: dict, ssa: dict, sc: dict, topo: ss.Topology, *,
                   we_initiated: bool, ike: str, esp: str) -> None:
    """Our status (osa/oc) and strongSwan's list-sas (ssa/sc) describe the same SAs."""
    # IKE SPIs and roles
    assert (osa["spi_i"], osa["spi_r"]) == (ssa["initiator-spi"], ssa["responder-spi"]), \
        (f"IKE SPIs differ: ours {osa['spi_i']}_i {osa['spi_r']}_r, "
         f"strongSwan {ssa['initiator-spi']}_i {ssa['responder-spi']}_r")
    assert osa["initiator"] is we_initiated
    assert (ssa.get("initiator") == "yes") is (not we_initiated)
    assert osa["state"] == ssa["state"] == "ESTABLISHED"
    # identities and addresses
    assert osa["local_id"] == ssa["remote-id"] and osa["remote_id"] == ssa["local-id"], (osa, ssa)
    assert osa["local_addr"] == ssa["remote-host"] == topo.site_ip
    assert osa["remote_addr"] == ssa["local-host"] == topo.gw_ip
    assert int(osa["local_port"]) == int(ssa["remote-port"]) == 4500
    assert int(osa["remote_port"]) == int(ssa["local-port"]) == 4500
    # IKE algorithms: strongSwan's names vs ours
    oa = split_ours_algorithms(osa["algorithms"])
    expect_ike = split_ours_algorithms(_expected_display(ike, "ike"))
    got_sw = {"encr": ssa.get("encr-alg"), "keysize": ssa.get("encr-keysize"),
              "integ": ssa.get("integ-alg"), "prf": ssa.get("prf-alg"), "dh": ssa.get("dh-group")}
    for k in ("encr", "keysize", "integ", "prf", "dh"):
        assert oa[k] == got_sw[k] == expect_ike[k], \
            f"IKE {k}: ours {oa[k]!r}, strongSwan {got_sw[k]!r}, configured {expect_ike[k]!r}"
    # Child SPIs (crossed), algorithms, selectors, encapsulation
    assert oc["spi_in"] == sc["spi-out"] and oc["spi_out"] == sc["spi-in"], (oc, sc)
    assert oc["state"] == sc["state"] == "INSTALLED"
    assert sc.get("protocol") == "ESP" and sc.get("mode") == "TUNNEL"
    assert sc.get("encap") == "yes" and oc["encap"] is True
    oca = split_ours_algorithms(oc["algorithms"])
    expect_esp = split_ours_algorithms(_expected_display(esp, "esp"))
    got_swc = {"encr": sc.get("encr-alg"), "keysize": sc.get("encr-keysize"), "integ": sc.get("integ-alg"),
               "dh": sc.get("dh-group")}
    for k in ("encr", "keysize", "integ", "dh"):
        assert oca[k] == got_swc[k] == expect_esp[k], \
            f"ESP {k}: ours {oca[k]!r}, strongSwan {got_swc[k]!r}, configured {expect_esp[k]!r}"
    assert (sc.get("esn") == "1") is (oca["esn"] == "EXT_SEQ")
    assert oc["local_ts"] == sc["remote-ts"] == [topo.site_net], (oc["local_ts"], sc["remote-ts"])
    assert oc["remote_ts"] == sc["local-ts"] == [topo.gw_net], (oc["remote_ts"], sc["local-ts"])


def _expected_display(text: str, kind: str) -> str:
    from ikev2.constants import ProtocolId
    from ikev2.crypto.proposals import parse_proposal, proposal_display
    return proposal_display(parse_proposal(text, ProtocolId.IKE if kind == "ike" else ProtocolId.ESP))


def counters(child: dict) -> tuple[int, int]:
    return int(child["packets_in"]), int(child["packets_out"])


def ours_events(gw: OurGateway, event: str) -> list[dict]:
    return [r for r in gw.log_lines() if r.get("event") == event]


def wait_log_event(gw: OurGateway, event: str, timeout: float, n: int = 1, **match) -> list[dict]:
    def ok():
        got = [r for r in ours_events(gw, event) if all(r.get(k) == v for k, v in match.items())]
        return got if len(got) >= n else None
    return netns.wait_until(ok, timeout=timeout, interval=0.2, what=f"{n}x {event!r} in our log")


def sw_summaries(sw: ss.Charon) -> list[dict]:
    return ss.parse_summaries(ss.parse_log(sw.log_text()))
