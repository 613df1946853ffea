"""The daemon <-> outbound worker protocol (vpn_gw/dataplane/userspace/worker_protocol.py): plain
messages over a real SOCK_SEQPACKET socketpair, descriptors beside them, counters in real shared
memory seen from two mappings."""
from __future__ import annotations

import os
import socket

import pytest

from vpn_gw.dataplane.userspace import worker_protocol as P


def test_messages_round_trip_and_only_plain_values_encode():
    msg = (P.ADD, b"\x01\x02\x03\x04", 7, "to-b", [(4, 1, 2, 0, 0, 65535)], ("192.0.2.1", 4500), None, 1.5, True)
    assert P.decode(P.encode(msg)) == msg
    with pytest.raises(P.WorkerProtocolError, match="not encodable"):
        P.encode((P.ADD, object()))
    with pytest.raises(P.WorkerProtocolError, match="too large"):
        P.encode((P.PACKETS, "vpngw0", [b"x" * P.MAX_MESSAGE]))


@pytest.mark.parametrize("data", [b"", b"\xff\x00garbage", b"\xe9\x03\x00\x00\x00abc"])
def test_garbage_is_one_typed_error(data):
    with pytest.raises(P.WorkerProtocolError):
        P.decode(data)


@pytest.mark.parametrize("value", [[P.ADD], ("",)[:0], (3, "x"), "add"])
def test_a_message_is_a_tuple_led_by_its_kind(value):
    import marshal
    with pytest.raises(P.WorkerProtocolError, match="kind"):
        P.decode(marshal.dumps(value))


def test_receive_with_descriptors_end_of_stream_and_truncation():
    a, b = P.socketpair()
    r, w = os.pipe()
    try:
        socket.send_fds(a, [P.encode((P.TUN, "vpngw0"))], [r])
        msg, fds = P.receive(b)
        assert msg == (P.TUN, "vpngw0") and len(fds) == 1
        os.write(w, b"ok")
        assert os.read(fds[0], 2) == b"ok"  # the same pipe, received as a new descriptor
        os.close(fds[0])
        a.send(b"\0" * (P.MAX_MESSAGE + 100))  # longer than a message may be: cut by the kernel
        with pytest.raises(P.WorkerProtocolError, match="truncated"):
            P.receive(b)
        b.setblocking(False)
        with pytest.raises(BlockingIOError):
            P.receive(b)
        a.close()
        assert P.receive(b) is None  # the other side is gone
    finally:
        for s in (a, b):
            s.close()
        os.close(r)
        os.close(w)


def test_counter_slots_are_shared_between_two_mappings():
    daemon, worker = P.Segments(), P.Segments()
    try:
        slots = []
        new_fds = []
        for _ in range(P.SEGMENT_SLOTS + 1):
            slot, fd = daemon.allocate()
            slots.append(slot)
            if fd is not None:
                new_fds.append((len(daemon.maps) - 1, fd))
        assert [i for i, _fd in new_fds] == [0, 1] and slots[-1] == P.SEGMENT_SLOTS  # a second segment
        for index, fd in new_fds:  # what the worker gets: a copy of each descriptor (SCM_RIGHTS)
            worker.attach(index, os.dup(fd))
        last = slots[-1]
        worker.write(last, (9, 1000, 10, 1, 2, 3, 4, 5))
        worker.write(0, (1, 2, 3, 0, 0, 0, 0, 0))
        assert daemon.read(last) == (9, 1000, 10, 1, 2, 3, 4, 5)
        assert daemon.read(0) == (1, 2, 3, 0, 0, 0, 0, 0)
        assert daemon.in_use() == P.SEGMENT_SLOTS + 1
        daemon.release(0)
        slot, fd = daemon.allocate()
        assert (slot, fd) == (0, None) and daemon.read(0) == (0,) * 8  # reused, zeroed for its new SA
    finally:
        daemon.close()
        worker.close()
