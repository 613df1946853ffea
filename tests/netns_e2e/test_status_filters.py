"""`vpn-gw status` that scales (issue 13), against a real daemon holding real IKE SAs:
filters by connection, peer address and IKE SA number, the summary, and the streamed
one-IKE-SA-per-line JSON, over the real control socket and through the real CLI.

The responder holds 4 IKE SAs from one initiator daemon that uses two source addresses:
  ra:   c1, c2 (from .2) and c3 (from .3), identities c<N>.ra.example.org
  site: s (from .2), identity s.example.org
"""
from __future__ import annotations

import json

import pytest

from tests.gateway import connection, wait_for
from vpn_gw.control import CommandFailed, control_request, control_stream

pytestmark = pytest.mark.netns

R, I1, I2 = "198.51.100.1", "198.51.100.2", "198.51.100.3"
NONE = {"dataplane": "none"}


def stable(sa: dict) -> str:
    """An entry without its established time (which moves between two requests)."""
    return json.dumps({k: v for k, v in sa.items() if k != "established"}, sort_keys=True)


def _conn(name, local, remote, local_id, remote_id, ts_local, ts_remote):
    return connection(name, local, remote, local_id, remote_id, local_ts=ts_local,
                      remote_ts=ts_remote)


@pytest.fixture
def held(e2e):
    r = e2e.grp.add("r")
    i = e2e.grp.add("i")
    e2e.grp.veth(r, "wan0", i, "wan0", a_addrs=[f"{R}/24"], b_addrs=[f"{I1}/24", f"{I2}/24"])
    gr = e2e.gateway(r, "r", [
        _conn("ra", R, "%any", "gw.example.org", "*.ra.example.org", "10.1.0.0/24", "10.9.0.0/16"),
        _conn("site", R, I1, "gw.example.org", "s.example.org", "10.1.0.0/24", "10.2.0.0/24"),
    ], [R], NONE)
    conns = [_conn(f"c{n}", src, R, f"c{n}.ra.example.org", "gw.example.org", f"10.9.{n}.0/24",
                   "10.1.0.0/24") for n, src in ((1, I1), (2, I1), (3, I2))]
    conns.append(_conn("s", I1, R, "s.example.org", "gw.example.org", "10.2.0.0/24", "10.1.0.0/24"))
    gi = e2e.gateway(i, "i", conns, [I1, I2], NONE)
    for c in ("c1", "c2", "c3", "s"):
        gi.up(c)
    wait_for(lambda: len(gr.ike_sas()) == 4, 10, "the responder to hold 4 IKE SAs")
    return gr


def test_filters_select_exactly_the_matching_sas(held):
    gr = held
    every = gr.status()
    assert sorted(sa["remote_id"] for sa in every) == ["c1.ra.example.org", "c2.ra.example.org",
                                                       "c3.ra.example.org", "s.example.org"]
    by_name = control_request(gr.socket, "status", name="ra")
    assert sorted(sa["remote_id"] for sa in by_name) == ["c1.ra.example.org", "c2.ra.example.org",
                                                         "c3.ra.example.org"]
    by_peer = control_request(gr.socket, "status", peer=I2)
    assert [sa["remote_id"] for sa in by_peer] == ["c3.ra.example.org"]
    both = control_request(gr.socket, "status", name="site", peer=I1)
    assert [sa["remote_id"] for sa in both] == ["s.example.org"]
    assert control_request(gr.socket, "status", name="site", peer=I2) == []
    uid = by_peer[0]["uid"]
    by_id = control_request(gr.socket, "status", id=uid)
    assert [sa["uid"] for sa in by_id] == [uid] and by_id[0]["remote_id"] == "c3.ra.example.org"
    assert control_request(gr.socket, "status", id=10_000) == []
    # the filtered entries are the very entries of the unfiltered status (same schema)
    assert set(map(stable, by_name)) <= set(map(stable, control_request(gr.socket, "status")))
    with pytest.raises(CommandFailed, match="no connection named 'nope'"):
        control_request(gr.socket, "status", name="nope")
    with pytest.raises(CommandFailed, match="--peer: 'not-an-ip' is not an IP address"):
        control_request(gr.socket, "status", peer="not-an-ip")
    # through the CLI, human form
    out = gr.cli("status", "ra", "--peer", I2, "-s", str(gr.socket)).stdout
    assert out.startswith(f"ra: #{uid}, ESTABLISHED, responder") and "c3.ra.example.org" in out
    assert "c1.ra.example.org" not in out
    bad = gr.cli("status", "nope", "-s", str(gr.socket), check=False)
    assert bad.returncode == 1 and bad.stderr.strip() == "vpn-gw: no connection named 'nope'"


def test_summary_counts_by_state_and_connection(held):
    gr = held
    s = control_request(gr.socket, "status", summary=True)
    assert s == {"ike_sas": 4, "child_sas": 4, "by_state": {"ESTABLISHED": 4},
                 "by_connection": {"ra": {"total": 3, "ESTABLISHED": 3},
                                   "site": {"total": 1, "ESTABLISHED": 1}}}
    out = gr.cli("status", "--summary", "-s", str(gr.socket)).stdout
    assert out.splitlines() == ["4 IKE SAs, 4 CHILD_SAs (4 ESTABLISHED)",
                                "  ra: 3 (3 ESTABLISHED)", "  site: 1 (1 ESTABLISHED)"]
    bad = gr.cli("status", "--summary", "ra", "-s", str(gr.socket), check=False)
    assert bad.returncode == 2 and "--summary counts every IKE SA" in bad.stderr


def test_json_lines_stream_one_sa_per_line(held):
    gr = held
    full = sorted(map(stable, gr.status()))
    # the protocol: items line by line, then the final answer with the count
    stream = control_stream(gr.socket, "status")
    items = []
    while True:
        try:
            items.append(next(stream))
        except StopIteration as stop:
            final = stop.value
            break
    assert final == {"count": 4} and len(items) == 4
    assert sorted(map(stable, items)) == full
    # the CLI prints exactly one parseable JSON object per line
    out = gr.cli("status", "--json-lines", "-s", str(gr.socket)).stdout
    lines = out.splitlines()
    assert len(lines) == 4 and all(isinstance(json.loads(line), dict) for line in lines)
    assert sorted(stable(json.loads(line)) for line in lines) == sorted(map(stable, items))
    out = gr.cli("status", "--json-lines", "--peer", I2, "-s", str(gr.socket)).stdout
    assert [json.loads(line)["remote_id"] for line in out.splitlines()] == ["c3.ra.example.org"]
    # `status --json` (one list) still works and carries the same SAs
    assert sorted(map(stable, gr.status())) == sorted(map(stable, items))
