"""Two Gateway objects of the daemon in one event loop over loopback (127.0.0.1 client,
127.0.0.2 hub; no namespaces, no root): IKE over TCP end to end through the daemon's hooks,
a broken connection continued on a new one with the same SPIs, failures reported to `up`."""
from __future__ import annotations

import asyncio
import socket

from ikev2.sa_common import State
from vpn_gw.config import parse_config
from vpn_gw.daemon import Gateway

PSK = "0x00112233445566778899aabbccddeeff"


def _free_ports(ip: str, n: int) -> list[int]:
    socks, ports = [], []
    for _ in range(n):
        for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
            s = socket.socket(socket.AF_INET, kind)
            s.bind((ip, 0 if kind == socket.SOCK_DGRAM else ports[-1]))
            if kind == socket.SOCK_DGRAM:
                ports.append(s.getsockname()[1])
            socks.append(s)
    for s in socks:
        s.close()
    return ports


def _config(tmp_path, me: str, peer: str, ports: list[int], name: str, extra: str = "", gw_extra: str = ""):
    ike, natt, tcp = ports
    text = f"""
[gateway]
listen = ["{me}"]
ike_port = {ike}
natt_port = {natt}
tcp_port = {tcp}
dataplane = "none"
control_socket = "{tmp_path}/{name}.sock"
{gw_extra}

[[connection]]
name = "{name}"
local_addrs = ["{me}"]
remote_addrs = ["{peer}"]
local_id = "{name}.example.org"
remote_id = "%any"
psk = "{PSK}"
ike_proposals = ["aes256gcm16-prfsha256-x25519"]
{extra}

  [[connection.child]]
  name = "net"
  local_ts = ["10.{1 if name == 'client' else 2}.0.0/24"]
  remote_ts = ["10.{2 if name == 'client' else 1}.0.0/24"]
  esp_proposals = ["aes256gcm16"]
"""
    return parse_config(text, f"{name}.toml")


async def _start(gw: Gateway) -> None:
    await gw.dataplane.start()
    gw.open_sockets()
    await gw.tcp.start()


async def _stop(gw: Gateway) -> None:
    await gw.tcp.close()
    gw.udp.close()
    gw.scheduler.close()


async def _until(pred, timeout=10.0, what="condition"):
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not pred():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


def _established(gw: Gateway):
    return [sa for sa in gw.manager.sas if sa.state == State.ESTABLISHED and sa.children]


def test_ike_over_tcp_through_the_daemon_and_reconnect(tmp_path):
    async def main():
        hub_ports = _free_ports("127.0.0.2", 1) + _free_ports("127.0.0.2", 1) + _free_ports("127.0.0.2", 1)
        cli_ports = _free_ports("127.0.0.1", 1) + _free_ports("127.0.0.1", 1) + [0]
        hub = Gateway(_config(tmp_path, "127.0.0.2", "127.0.0.1", hub_ports, "hub"))
        client = Gateway(_config(tmp_path, "127.0.0.1", "127.0.0.2", cli_ports, "client",
                                 extra=f'transport = "tcp"\ntcp_port = {hub_ports[2]}'))
        await _start(hub)
        await _start(client)
        try:
            assert client.initiate("client") is None  # asynchronous: connect first
            await _until(lambda: _established(client) and _established(hub), what="the IKE SA")
            (csa,), (hsa,) = _established(client), _established(hub)
            assert csa.remote == ("127.0.0.2", hub_ports[2]) and hsa.local == ("127.0.0.2", hub_ports[2])
            assert hsa.remote == csa.local and csa.local[1] not in cli_ports  # an ephemeral TCP port
            assert [e["transport"] for e in client.status() + hub.status()] == ["tcp", "tcp"]
            assert hub.tcp.counters()["ike_in"] == 2  # IKE_SA_INIT and IKE_AUTH, nothing in UDP
            spis = (csa.spi_i, csa.spi_r, [(c.spi_in, c.spi_out) for c in csa.children])

            # break the connection (as a reset would): the client reconnects and continues
            old = csa.local
            client.tcp.conns[(csa.local, csa.remote)].abort()
            await _until(lambda: _established(hub) and _established(hub)[0].remote != old
                         and _established(client)[0].local != old, what="the move to a new connection")
            (csa2,), (hsa2,) = _established(client), _established(hub)
            assert csa2 is csa and hsa2 is hsa
            assert (csa.spi_i, csa.spi_r, [(c.spi_in, c.spi_out) for c in csa.children]) == spis
            assert hsa.remote == csa.local and client.tcp.counters()["reconnected"] == 1
            # the hub forgets the old connection's path once nothing uses it
            await _until(lambda: (hsa.local, old) not in hub.tcp.conns, what="the old connection to close")
            hub.tcp.sweep()
            assert not hub.tcp.is_tcp(hsa.local, old)

            # an IKE SA deleted by the client: its connection closes (after the grace period)
            client.manager.terminate("client", __import__("time").monotonic())
            client.flush()
            await _until(lambda: not hub.manager.sas and not client.manager.sas, what="the delete")
        finally:
            await _stop(client)
            await _stop(hub)
    asyncio.run(asyncio.wait_for(main(), 60))


def test_connect_failure_is_reported_to_up(tmp_path):
    async def main():
        cli_ports = _free_ports("127.0.0.1", 1) + _free_ports("127.0.0.1", 1) + [0]
        closed_port = _free_ports("127.0.0.2", 1)[0]  # nothing listens there
        client = Gateway(_config(tmp_path, "127.0.0.1", "127.0.0.2", cli_ports, "client",
                                 extra=f'transport = "tcp"\ntcp_port = {closed_port}'))
        await _start(client)
        try:
            res = await client.control.handle("up", {"name": "client", "timeout": 10})
            raise AssertionError(f"up succeeded: {res}")
        except Exception as e:  # noqa: BLE001
            assert "TCP connection to 127.0.0.2" in str(e) and "failed" in str(e), e
        finally:
            await _stop(client)
        assert client.tcp.counters()["connect_failed"] == 1 and not client.manager.sas
    asyncio.run(asyncio.wait_for(main(), 60))
