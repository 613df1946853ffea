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

Run: .venv/bin/python tests/fuzz/fuzz_engine.py [libFuzzer flags] [CORPUS_DIR ...]
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
    from ikev2.constants import ExchangeType, PayloadType
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
EXCHANGES = [ExchangeType.CREATE_CHILD_SA, ExchangeType.INFORMATIONAL, ExchangeType.IKE_AUTH]
FLAG_I, FLAG_R = 0x08, 0x20


def test_one_input(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    link = copy.deepcopy(TEMPLATE)
    to_initiator = fdp.ConsumeBool()
    receiver, sender = (link.a, link.b) if to_initiator else (link.b, link.a)
    sa_r, = [s for s in receiver.sas if s.state == State.ESTABLISHED]
    sa_s, = [s for s in sender.sas if s.state == State.ESTABLISHED]
    pick = fdp.ConsumeIntInRange(0, len(EXCHANGES))
    exchange = EXCHANGES[pick] if pick < len(EXCHANGES) else fdp.ConsumeIntInRange(0, 255)
    response = fdp.ConsumeIntInRange(0, 3) == 0
    mid = fdp.ConsumeIntInRange(0, 3) if fdp.ConsumeBool() else fdp.ConsumeIntInRange(0, 0xFFFFFFFF)
    first = fdp.ConsumeIntInRange(PayloadType.SA, PayloadType.SA + 20) if fdp.ConsumeBool() \
        else fdp.ConsumeIntInRange(0, 255)
    inner = fdp.ConsumeBytes(fdp.remaining_bytes())
    keys = sa_s.sk_out
    flags = (FLAG_I if sa_s.initiator else 0) | (FLAG_R if response else 0)
    length = 28 + 4 + len(inner) + keys.overhead(len(inner))
    head = encode_header(sa_s.spi_i, sa_s.spi_r, PayloadType.SK, exchange, flags, mid, length) + \
        struct.pack("!BBH", first, 0, length - 28)
    datagram = head + _protect(keys, head, inner, DetRandom("iv"))
    INTERNAL.clear()
    receiver.receive(datagram, sa_r.local, sa_r.remote, link.now + 0.1)
    link.now += 0.1
    link.run(link.now + 1.0)  # answers go to the other engine; timers fire
    if INTERNAL:
        raise AssertionError("; ".join(INTERNAL))


def main() -> None:
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
