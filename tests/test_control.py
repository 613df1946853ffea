"""The control socket: a real ControlServer in a background event loop, the blocking client."""
from __future__ import annotations

import asyncio
import os
import shutil
import socket
import stat
import tempfile
import threading
import time
from pathlib import Path

import pytest

from vpn_gw.control import (
    CommandFailed,
    ControlError,
    ControlServer,
    DaemonNotRunning,
    Stream,
    control_request,
    control_stream,
    encode_message,
)


class LoopThread:
    """An asyncio loop in a thread, so blocking clients can talk to a server in the same test."""

    def __init__(self):
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro, timeout=5.0):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self):
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


@pytest.fixture
def sockdir():
    # short path: sockaddr_un paths are limited to 107 bytes
    d = tempfile.mkdtemp(prefix="vgc", dir="/tmp")
    yield Path(d)
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def loop():
    lt = LoopThread()
    yield lt
    lt.close()


calls: list = []


async def handler(cmd, args):
    calls.append((cmd, args))
    if cmd == "status":
        return [{"name": "branch1", "state": "ESTABLISHED"}]
    if cmd == "echo":
        return args
    if cmd == "up":
        if args.get("name") != "branch1":
            raise ControlError(f"no connection named {args.get('name')!r}")
        return "branch1: initiating"
    if cmd == "crash":
        raise RuntimeError("kaboom\nsecond line")
    if cmd == "slow":
        await asyncio.sleep(args.get("delay", 1.0))
        return "late"
    if cmd == "reload":
        from vpn_gw.config import parse_config
        parse_config("[gateway]\nike_port = 0\n", "/etc/vpn-gw/gw.toml")
    if cmd == "weird":
        return object()
    if cmd == "many":
        return Stream(({"n": i} for i in range(args.get("n", 0))), batch=args.get("batch", 200))
    if cmd == "yielding":
        # proves the server gives the event loop a turn between batches: a callback queued
        # now runs before the items of the second batch are produced
        seen: list[int] = []
        asyncio.get_running_loop().call_soon(seen.append, 1)

        def items():
            for i in range(args["n"]):
                yield {"n": i, "loop_ran": bool(seen)}
        return Stream(items(), batch=args["batch"])
    if cmd == "breaks":
        def items():
            yield {"n": 0}
            yield {"n": 1}
            raise ControlError("the SA list went away")
        return Stream(items(), batch=1)
    if cmd == "bug":
        def items():
            yield {"n": 0}
            raise KeyError("spi")
        return Stream(items())
    raise ControlError(f"unknown command {cmd!r}")


@pytest.fixture
def server(loop, sockdir):
    path = sockdir / "run" / "control.sock"
    srv = ControlServer(path, handler)
    loop.run(srv.start())
    yield srv
    loop.run(srv.stop())


def raw(path, data: bytes) -> list[bytes]:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(3)
    s.connect(str(path))
    s.sendall(data)
    s.shutdown(socket.SHUT_WR)
    buf = b""
    while True:
        chunk = s.recv(65536)
        if not chunk:
            break
        buf += chunk
    s.close()
    return buf.splitlines()


def test_socket_created_with_mode_0600_in_new_directory(server):
    st = os.stat(server.path)
    assert stat.S_ISSOCK(st.st_mode)
    assert stat.S_IMODE(st.st_mode) == 0o600
    assert stat.S_IMODE(os.stat(server.path.parent).st_mode) == 0o700


def test_request_response(server):
    assert control_request(server.path, "status") == [{"name": "branch1", "state": "ESTABLISHED"}]
    assert control_request(server.path, "echo", name="x", n=3) == {"name": "x", "n": 3}
    assert control_request(server.path, "up", name="branch1") == "branch1: initiating"


def test_handler_control_error_is_one_line_failure(server):
    with pytest.raises(CommandFailed) as ei:
        control_request(server.path, "up", name="nope")
    assert str(ei.value) == "no connection named 'nope'"
    with pytest.raises(CommandFailed, match="unknown command 'frobnicate'"):
        control_request(server.path, "frobnicate")


def test_handler_crash_is_internal_error_one_line(server):
    with pytest.raises(CommandFailed) as ei:
        control_request(server.path, "crash")
    msg = str(ei.value)
    assert msg == "internal error in 'crash': RuntimeError: kaboom second line"
    # the server keeps serving
    assert control_request(server.path, "status")[0]["name"] == "branch1"


def test_config_error_is_a_user_error(server):
    with pytest.raises(CommandFailed) as ei:
        control_request(server.path, "reload")
    assert str(ei.value) == "/etc/vpn-gw/gw.toml:2: gateway.ike_port: must be between 1 and 65535, got 0"


def test_unserialisable_result(server):
    with pytest.raises(CommandFailed, match="not serialisable"):
        control_request(server.path, "weird")


def test_protocol_details(server):
    lines = raw(server.path, b'{"cmd": "status", "id": 7}\n\n{"cmd": "echo", "args": {"a": 1}}\n'
                             b'not json\n[1]\n{"cmd": 5}\n{"cmd": "echo", "args": []}\n')
    import json
    resp = [json.loads(x) for x in lines]
    assert resp[0] == {"ok": True, "result": [{"name": "branch1", "state": "ESTABLISHED"}],
                       "id": 7}
    assert resp[1] == {"ok": True, "result": {"a": 1}}
    assert resp[2]["ok"] is False and resp[2]["error"].startswith("malformed request")
    assert resp[3] == {"ok": False, "error": "malformed request: expected a JSON object"}
    assert "'cmd' must be a non-empty string" in resp[4]["error"]
    assert "'args' must be an object" in resp[5]["error"]
    assert len(resp) == 6


def test_client_timeout(server):
    t0 = time.monotonic()
    with pytest.raises(ControlError, match=r"no answer from vpn-gw within 0.3s"):
        control_request(server.path, "slow", delay=2.0, timeout=0.3)
    assert time.monotonic() - t0 < 1.5


def test_not_running_messages(sockdir):
    missing = sockdir / "nope.sock"
    with pytest.raises(DaemonNotRunning) as ei:
        control_request(missing, "status")
    assert str(ei.value) == f"vpn-gw is not running (no control socket at {missing})"
    # a socket file nobody listens on
    stale = sockdir / "stale.sock"
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(str(stale))
    s.close()
    with pytest.raises(DaemonNotRunning, match="stale control socket"):
        control_request(stale, "status")


def test_stale_socket_removed_on_start_and_socket_removed_on_stop(loop, sockdir):
    path = sockdir / "c.sock"
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(str(path))
    s.close()
    srv = ControlServer(path, handler)
    loop.run(srv.start())
    assert control_request(path, "status")
    loop.run(srv.stop())
    assert not path.exists()
    loop.run(srv.stop())  # idempotent


def test_refuses_to_start_when_another_daemon_listens(loop, server):
    other = ControlServer(server.path, handler)
    with pytest.raises(ControlError, match="another vpn-gw is already running"):
        loop.run(other.start())
    # the live socket is untouched
    assert control_request(server.path, "status")


def test_refuses_to_replace_non_socket(loop, sockdir):
    path = sockdir / "file"
    path.write_text("x")
    with pytest.raises(ControlError, match="is not a socket"):
        loop.run(ControlServer(path, handler).start())
    assert path.read_text() == "x"


def test_path_too_long(loop, sockdir):
    path = sockdir / ("x" * 120) / "c.sock"
    with pytest.raises(ControlError, match="too long"):
        loop.run(ControlServer(path, handler).start())


def test_stop_closes_idle_connections(loop, sockdir):
    path = sockdir / "c.sock"
    srv = ControlServer(path, handler)
    loop.run(srv.start())
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(3)
    s.connect(str(path))
    s.sendall(b'{"cmd":"status"}\n')
    assert b'"ok":true' in s.recv(65536)
    loop.run(srv.stop())
    assert s.recv(10) == b""  # server closed our connection
    s.close()


def test_async_context_manager(sockdir):
    async def main():
        async with ControlServer(sockdir / "a.sock", handler) as srv:
            assert srv.serving and srv.path.exists()
            r, w = await asyncio.open_unix_connection(str(srv.path))
            w.write(b'{"cmd": "echo", "args": {"k": "v"}}\n')
            line = await r.readline()
            w.close()
        assert not (sockdir / "a.sock").exists()
        return line
    assert asyncio.run(main()) == b'{"ok":true,"result":{"k":"v"}}\n'


def test_encode_message_converts_common_types():
    import ipaddress

    from vpn_gw.config import Secret
    line = encode_message({"a": ipaddress.ip_address("192.0.2.1"), "n": ipaddress.ip_network("10.0.0.0/8"),
                           "b": b"\x01\xff", "s": Secret(b"hunter22"), "t": (1, 2)})
    assert line == b'{"a":"192.0.2.1","n":"10.0.0.0/8","b":"01ff","s":"***","t":[1,2]}\n'


def _drain(gen):
    items = []
    while True:
        try:
            items.append(next(gen))
        except StopIteration as stop:
            return items, stop.value


def test_stream_sends_one_item_per_line_then_the_count(server):
    items, final = _drain(control_stream(server.path, "many", n=1000, batch=64))
    assert items == [{"n": i} for i in range(1000)] and final == {"count": 1000}
    assert calls[-1] == ("many", {"n": 1000, "batch": 64, "stream": True})
    lines = raw(server.path, encode_message({"cmd": "many", "args": {"n": 3}, "id": 9}))
    assert lines == [b'{"item":{"n":0}}', b'{"item":{"n":1}}', b'{"item":{"n":2}}',
                     b'{"ok":true,"result":{"count":3},"id":9}']
    assert _drain(control_stream(server.path, "many", n=0)) == ([], {"count": 0})


def test_stream_yields_to_the_event_loop_between_batches(server):
    items, final = _drain(control_stream(server.path, "yielding", n=30, batch=10))
    assert final == {"count": 30}
    assert [it["loop_ran"] for it in items] == [False] * 10 + [True] * 20


def test_stream_error_ends_with_one_line_failure(server):
    gen = control_stream(server.path, "breaks")
    assert next(gen) == {"n": 0} and next(gen) == {"n": 1}
    with pytest.raises(CommandFailed, match="^stream stopped after 2 items: the SA list went away$"):
        next(gen)
    gen = control_stream(server.path, "bug")
    assert next(gen) == {"n": 0}
    with pytest.raises(CommandFailed, match="^internal error after 1 items: KeyError: 'spi'$"):
        next(gen)
    # the server still answers afterwards
    assert control_request(server.path, "echo", x=1) == {"x": 1}


def test_stream_client_accepts_a_plain_answer(server):
    # a command (or an older daemon) that does not stream: no items, the result is returned
    assert _drain(control_stream(server.path, "status")) == \
        ([], [{"name": "branch1", "state": "ESTABLISHED"}])
    with pytest.raises(CommandFailed, match="no connection named 'nope'"):
        next(control_stream(server.path, "up", name="nope"))


def test_socket_appears_only_once_it_accepts(loop, sockdir):
    """A client that connects as soon as the path exists is never refused: the socket is bound
    under a temporary name, listening, and only then renamed into place."""
    path = sockdir / "run" / "control.sock"
    refused: list[str] = []
    connected = threading.Event()
    stop = threading.Event()

    def knock() -> None:
        deadline = time.monotonic() + 10
        while not stop.is_set() and time.monotonic() < deadline:
            if not path.exists():
                continue
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                s.connect(str(path))
                connected.set()
                return
            except ConnectionRefusedError as e:
                refused.append(str(e))
                return
            except FileNotFoundError:
                continue
            finally:
                s.close()

    for _ in range(20):  # the window between bind() and listen() was a few microseconds
        t = threading.Thread(target=knock)
        t.start()
        srv = ControlServer(path, handler)
        loop.run(srv.start())
        t.join(10)
        loop.run(srv.stop())
        assert not refused, refused
        assert connected.is_set()
        connected.clear()
    stop.set()
    assert not list(path.parent.glob(".vpn-gw-*"))  # no temporary name left behind
