"""The interface every key exchange method offers the exchanges: Diffie-Hellman groups
(``dh.KeyExchangeMethod``) and KEMs (``mlkem.MlKemMethod``) alike.

The exchanges (IKE_SA_INIT, IKE_INTERMEDIATE, CREATE_CHILD_SA, IKE_FOLLOWUP_KE) only ever
``generate`` our half as initiator (its ``public_bytes`` go in the KE payload, its
``shared_secret`` takes the peer's KE data) or ``respond`` to the peer's KE data as responder,
so they need not know which kind of method they run (RFC 9370 treats both as "key exchange").
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

__all__ = ["KeyExchange", "KeyExchangeHalf", "RandomBytes"]

RandomBytes = Callable[[int], bytes]


class KeyExchangeHalf(Protocol):
    """Our half of one key exchange (a DH private value or an ML-KEM key pair)."""

    @property
    def method(self) -> KeyExchange: ...

    @property
    def public_bytes(self) -> bytes: ...

    def shared_secret(self, peer_public: bytes) -> bytes: ...


class KeyExchange(Protocol):
    """One key exchange method (Transform Type 4 / ADDKE1-7 id)."""

    @property
    def group(self) -> int: ...

    @property
    def name(self) -> str: ...

    @property
    def keyword(self) -> str: ...

    @property
    def public_len(self) -> int: ...

    @property
    def kind(self) -> str: ...

    @property
    def available(self) -> bool: ...

    @property
    def unavailable_reason(self) -> str: ...

    def generate(self, random_bytes: RandomBytes) -> KeyExchangeHalf: ...

    def respond(self, random_bytes: RandomBytes, peer_public: bytes) -> tuple[bytes, bytes]: ...
