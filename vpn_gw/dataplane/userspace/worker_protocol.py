"""What the daemon and its outbound worker process (``[gateway] outbound_worker``) exchange:
messages over a ``SOCK_SEQPACKET`` socketpair, and the Child SAs' outbound counters in shared
memory.

Messages are tuples of plain values (str, int, bytes, float, bool, None, tuples and lists of
them) encoded with ``marshal``: no objects are built from them, so a malformed message is a
``WorkerProtocolError``, never code. Each message is one datagram of the socketpair, so no
framing is needed; file descriptors (TUN devices, NAT-T sockets, counter segments) travel
beside their message as ``SCM_RIGHTS``.

Counters: each Child SA has a slot of ``SLOT_FIELDS`` unsigned 64-bit numbers in a shared
memory segment (``memfd_create``): the worker writes the outbound sequence number, bytes,
packets and drops after every sealed batch; the daemon reads them whenever it needs a Child
SA's counters (status, metrics, RADIUS accounting, a deletion's final numbers). Each slot has
exactly one writer (the worker) and is freed by the daemon only after the Child SA is gone
from the worker (the messages are delivered in order), so the numbers are exact up to the
batch being sealed at that moment. Segments hold ``SEGMENT_SLOTS`` slots each and are added
as SAs come (the daemon sends each new segment's descriptor before the first SA that uses it).
"""
from __future__ import annotations

import marshal
import mmap
import os
import socket
import struct

# Slot layout (little-endian u64): what the worker knows of one Child SA's outbound direction
SLOT = struct.Struct("<8Q")
SLOT_FIELDS = ("seq", "bytes", "packets", "too_big", "malformed", "seq_exhausted", "lifetime_expired", "sa_dead")
SEGMENT_SLOTS = 4096
SEGMENT_BYTES = SEGMENT_SLOTS * SLOT.size
MAX_MESSAGE = 1 << 17  # a message's largest size (a clear packet up to 64 KiB plus its header)
MAX_FDS = 4
SOCKET_BUFFER = 4 << 20

# message kinds, daemon -> worker
TUN, SOCKETS, SEGMENT, ADD, DELETE, MOVE, TRAPS, PACKETS, STOP = (
    "tun", "sockets", "segment", "add", "del", "move", "traps", "packets", "stop")
# worker -> daemon
READY, EXPIRY, UNMATCHED, VIA_DAEMON, STATS = "ready", "expiry", "unmatched", "via_daemon", "stats"


class WorkerProtocolError(Exception):
    """A message that does not decode or has the wrong shape."""


def encode(msg: tuple) -> bytes:
    try:
        data = marshal.dumps(msg)
    except ValueError as e:  # an object that is not a plain value (a bug in the caller)
        raise WorkerProtocolError(f"message not encodable: {e}") from None
    if len(data) > MAX_MESSAGE:
        raise WorkerProtocolError(f"message too large ({len(data)} bytes)")
    return data


def decode(data: bytes) -> tuple:
    try:
        msg = marshal.loads(data)
    except (EOFError, ValueError, TypeError) as e:
        raise WorkerProtocolError(f"undecodable message: {e}") from None
    if not isinstance(msg, tuple) or not msg or not isinstance(msg[0], str):
        raise WorkerProtocolError("a message is a tuple starting with its kind")
    return msg


def socketpair() -> tuple[socket.socket, socket.socket]:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    for s in (a, b):
        for opt in (socket.SO_SNDBUF, socket.SO_RCVBUF):
            try:
                s.setsockopt(socket.SOL_SOCKET, opt, SOCKET_BUFFER)
            except OSError:
                pass
    return a, b


def receive(sock: socket.socket) -> tuple[tuple, list[int]] | None:
    """One message and the descriptors that came with it; None at end of stream (the peer is
    gone). Raises BlockingIOError when nothing is queued, WorkerProtocolError if malformed (the
    descriptors of a malformed message are closed)."""
    data, fds, flags, _addr = socket.recv_fds(sock, MAX_MESSAGE, MAX_FDS)
    if not data and not fds:
        return None
    if flags & (socket.MSG_TRUNC | socket.MSG_CTRUNC):
        for fd in fds:
            os.close(fd)
        raise WorkerProtocolError("truncated message")
    try:
        return decode(data), fds
    except WorkerProtocolError:
        for fd in fds:
            os.close(fd)
        raise


class Segments:
    """The counter slots, seen from either side: the daemon allocates and reads, the worker
    writes. ``slot`` numbers are global (segment * SEGMENT_SLOTS + index)."""

    def __init__(self) -> None:
        self.maps: list[mmap.mmap] = []
        self.fds: list[int] = []  # the daemon keeps them, to hand them to a restarted worker
        self._free: list[int] = []
        self._next = 0

    # -- daemon side
    def create(self) -> int:
        """A new zeroed segment; returns its descriptor (to send to the worker)."""
        fd = os.memfd_create(f"vpn-gw-counters-{len(self.maps)}", os.MFD_CLOEXEC)
        os.ftruncate(fd, SEGMENT_BYTES)
        self.maps.append(mmap.mmap(fd, SEGMENT_BYTES))
        self.fds.append(fd)
        return fd

    def allocate(self) -> tuple[int, int | None]:
        """(slot, descriptor of a new segment the worker must map first, or None)."""
        new_fd = None
        if self._free:
            slot = self._free.pop()
        else:
            slot = self._next
            if slot // SEGMENT_SLOTS >= len(self.maps):
                new_fd = self.create()
            self._next += 1
        SLOT.pack_into(self.maps[slot // SEGMENT_SLOTS], (slot % SEGMENT_SLOTS) * SLOT.size, *([0] * len(SLOT_FIELDS)))
        return slot, new_fd

    def release(self, slot: int) -> None:
        self._free.append(slot)

    def read(self, slot: int) -> tuple[int, ...]:
        return SLOT.unpack_from(self.maps[slot // SEGMENT_SLOTS], (slot % SEGMENT_SLOTS) * SLOT.size)

    def in_use(self) -> int:
        return self._next - len(self._free)

    # -- worker side
    def attach(self, index: int, fd: int) -> None:
        """Map the daemon's segment ``index`` (the descriptor is closed after mapping)."""
        try:
            m = mmap.mmap(fd, SEGMENT_BYTES)
        finally:
            os.close(fd)
        while len(self.maps) <= index:
            self.maps.append(m)
        self.maps[index] = m

    def write(self, slot: int, values: tuple[int, ...]) -> None:
        SLOT.pack_into(self.maps[slot // SEGMENT_SLOTS], (slot % SEGMENT_SLOTS) * SLOT.size, *values)

    def close(self) -> None:
        for m in self.maps:
            m.close()
        for fd in self.fds:
            os.close(fd)
        self.maps.clear()
        self.fds.clear()
