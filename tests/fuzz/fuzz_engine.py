"""atheris harness: decrypted, authenticated payloads into the IKEv2 engine, in both roles.

Two engines (tests/engine/harness.py: site-to-site PSK, fixed randomness) establish an IKE SA
once; every input starts from a copy of that state. The fuzzer chooses who receives (the
original initiator or the responder), the exchange (CREATE_CHILD_SA, INFORMATIONAL, IKE_AUTH,
or any number), request or response, the message ID (the expected one or any), the first
payload type and the raw inner payload chain. The harness encrypts that chain with the sender's
real SK keys, so it passes the ICV and reaches the exchange code: CREATE_CHILD_SA (Child and IKE
rekeys), INFORMATIONAL (DELETE, notifies, MOBIKE updates), EAP/CP payloads in late IKE_AUTHs,
unexpected responses. Properties: ``receive`` and a following ``tick`` never raise, and the
engine never reaches its last line of defence ("internal error, deleting IKE SA"): every
malformed or unexpected input is a typed error, an error notify or a logged drop.

Input: control byte (bit 0 to the initiator, bit 1 a response, bit 2 the receiver's expected
message ID), exchange type, message ID (4 octets), first inner payload type, inner chain.

Run: .venv/bin/python tests/fuzz/fuzz_engine.py [libFuzzer flags] [CORPUS_DIR ...]
Seeds (real exchanges, decrypted): .venv/bin/python tests/fuzz/fuzz_engine.py --write-seeds DIR
(bench/fuzz_harnesses.py runs it for longer.)
"""
from __future__ import annotations

import copy
import pathlib
import struct
import sys
import threading

import atheris

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))

with atheris.instrument_imports():
    from ikev2.constants import PayloadType
    from ikev2.manager import IkeManager
    from ikev2.message import encode_header
    from ikev2.sa_common import State
    from ikev2.sk import _protect

from tests.engine.harness import DetRandom, Link, site_to_site

INTERNAL: list[str] = []


def _log(level: str, event: str, **fields: object) -> None:
    if event.startswith("internal error"):
        INTERNAL.append(f"{event}: {fields.get('error')}")


def _established() -> Link:
    hq, br = site_to_site()
    a = IkeManager([br], DetRandom("fuzz-a"), log=_log)  # the initiator ("hq" connection)
    b = IkeManager([hq], DetRandom("fuzz-b"), log=_log)
    link = Link(a, b, br.local_addrs[0], hq.local_addrs[0])
    a.initiate("hq", 0.0)
    link.run(2.0)
    sa_a, = [s for s in a.sas if s.state == State.ESTABLISHED]
    sa_b, = [s for s in b.sas if s.state == State.ESTABLISHED]
    assert sa_a.children and sa_b.children
    return link


def _share_stateless_crypto() -> None:
    """deepcopy shares cryptography's key objects and the transforms' keyed-cipher cache and its
    lock (they cannot be pickled, and nothing in them is per-SA state) instead of failing."""
    from cryptography.hazmat.bindings._rust import openssl as rust_openssl
    from cryptography.hazmat.primitives.ciphers import aead

    from ikev2.crypto.transforms import KeyedCipher
    classes = {aead.AESGCM, aead.ChaCha20Poly1305, aead.AESCCM, KeyedCipher, type(threading.Lock())}
    for mod in (rust_openssl.x25519, rust_openssl.ec, rust_openssl.ed25519):
        classes |= {v for v in vars(mod).values() if isinstance(v, type)}
    for cls in classes:
        copy._deepcopy_dispatch[cls] = lambda x, memo: x  # type: ignore[attr-defined]


_share_stateless_crypto()
TEMPLATE = _established()
FLAG_I, FLAG_R = 0x08, 0x20
HEADER = struct.Struct("!BBIB")  # control, exchange, message ID, first inner payload type
TO_INITIATOR, RESPONSE, EXPECTED_MID = 0x01, 0x02, 0x04  # control bits


def input_for(to_initiator: bool, response: bool, exchange: int, message_id: int | None, first: int,
              inner: bytes) -> bytes:
    """A fuzzer input (the seeds are made with it): message_id None = the receiver's next one."""
    control = (TO_INITIATOR if to_initiator else 0) | (RESPONSE if response else 0) | \
        (EXPECTED_MID if message_id is None else 0)
    return HEADER.pack(control, exchange, message_id or 0, first) + inner


def test_one_input(data: bytes) -> None:
    if len(data) < HEADER.size:
        return
    control, exchange, mid, first = HEADER.unpack_from(data)
    inner = data[HEADER.size:]
    link = copy.deepcopy(TEMPLATE)
    receiver, sender = (link.a, link.b) if control & TO_INITIATOR else (link.b, link.a)
    sa_r, = [s for s in receiver.sas if s.state == State.ESTABLISHED]
    sa_s, = [s for s in sender.sas if s.state == State.ESTABLISHED]
    response = bool(control & RESPONSE)
    if control & EXPECTED_MID:
        mid = sa_r.next_mid - 1 if response else sa_r.peer_next_mid
    keys = sa_s.sk_out
    flags = (FLAG_I if sa_s.initiator else 0) | (FLAG_R if response else 0)
    length = 28 + 4 + len(inner) + keys.overhead(len(inner))
    head = encode_header(sa_s.spi_i, sa_s.spi_r, PayloadType.SK, exchange, flags, mid & 0xFFFFFFFF, length) + \
        struct.pack("!BBH", first, 0, length - 28)
    datagram = head + _protect(keys, head, inner, DetRandom("iv"))
    INTERNAL.clear()
    receiver.receive(datagram, sa_r.local, sa_r.remote, link.now + 0.1)
    link.now += 0.1
    link.run(link.now + 1.0)  # answers go to the other engine; timers fire
    if INTERNAL:
        raise AssertionError("; ".join(INTERNAL))


def write_seeds(out: pathlib.Path) -> int:
    """Seeds from real exchanges between the two engines (Child rekey, IKE rekey, liveness check,
    Child delete, both directions): each decrypted inner chain, as an input for this harness."""
    from ikev2.message import decode_message
    from ikev2.sk import decrypt_fragment
    out.mkdir(parents=True, exist_ok=True)
    link = copy.deepcopy(TEMPLATE)
    n = 0

    def harvest(start: int) -> None:  # before the next step can rekey the keys away
        nonlocal n
        for _t, src, _dst, raw in link.trace[start:]:
            msg = decode_message(raw)
            sender = link.a if src[0] == link.addr_a else link.b
            sa = next((s for s in sender.sas if s.spi_i == msg.spi_i and s.spi_r == msg.spi_r), None)
            if sa is None or sa.sk_out is None or msg.encrypted is None:
                continue
            inner = decrypt_fragment(raw, msg, sa.sk_out)
            seed = input_for(sender is link.b, msg.is_response, msg.exchange, None, msg.encrypted.first_inner, inner)
            (out / f"seed-{n:03d}").write_bytes(seed)
            n += 1

    steps = [lambda sa: sa.rekey_child(sa.children[0].spi_in, link.now), lambda sa: sa.liveness(link.now, True),
             lambda sa: sa.rekey_ike(link.now)]
    for step in steps:
        for mgr in (link.a, link.b):
            sa, = [s for s in mgr.sas if s.state == State.ESTABLISHED]
            start = len(link.trace)
            step(sa)
            link.run(link.now + 1.0)
            harvest(start)
    return n


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--write-seeds":
        print(write_seeds(pathlib.Path(sys.argv[2])), "seeds")
        return
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
