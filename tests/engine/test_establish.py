from ikev2.events import ChildUp, IkeUp
from tests.engine.harness import pair, site_to_site


def test_psk_site_to_site_comes_up():
    hq, br = site_to_site()
    link = pair(br, hq)
    sa = link.a.initiate("hq", 0.0)
    link.run(1.0)
    ups_a = [e for e in link.events_a if isinstance(e, IkeUp)]
    ups_b = [e for e in link.events_b if isinstance(e, IkeUp)]
    assert len(ups_a) == 1 and len(ups_b) == 1
    assert ups_a[0].spi_i == ups_b[0].spi_i and ups_a[0].spi_r == ups_b[0].spi_r
    ca = [e for e in link.events_a if isinstance(e, ChildUp)]
    cb = [e for e in link.events_b if isinstance(e, ChildUp)]
    assert len(ca) == 1 and len(cb) == 1
    assert ca[0].keys.spi_in == cb[0].keys.spi_out and ca[0].keys.spi_out == cb[0].keys.spi_in
    assert ca[0].keys.encr_key_out == cb[0].keys.encr_key_in
    assert ca[0].keys.encr_key_in == cb[0].keys.encr_key_out
    assert [str(t) for t in ca[0].local_ts] == ["10.2.0.0/24"]
    assert [str(t) for t in cb[0].local_ts] == ["10.1.0.0/24"]
    # Floated to 4500 after IKE_SA_INIT (NAT-D exchanged).
    assert ups_a[0].remote == ("192.0.2.1", 4500)
    assert sa.state.value == "established"
