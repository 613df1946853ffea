"""The base of asynchronous EAP authenticators (used through ikev2.eap_async; here, apart, so that
ikev2.policy and ikev2.sa_core can name it without importing the IKE SA machinery)."""
from __future__ import annotations

from .packet import EapError, EapStep


class AsyncEapServer:
    """Base of asynchronous EAP authenticators. Subclasses implement :meth:`start` (the first
    EAP Request, made locally, e.g. Request/Identity) and whatever the daemon calls to decide
    (not the engine's business). The engine calls :meth:`process` only once the verdict for
    that message has been delivered."""

    asynchronous = True

    def __init__(self) -> None:
        self._verdict: EapStep | None = None
        # What the verdicts said so far: logged when the client gives up (ikev2.exchange_info).
        self.identity: str | None = None
        self.failure_reason = ""

    def start(self) -> bytes:
        raise NotImplementedError

    def process(self, message: bytes) -> EapStep:
        step, self._verdict = self._verdict, None
        if step is None:
            raise EapError("no verdict delivered for this EAP message")
        if step.identity:
            self.identity = step.identity
        if step.reason:
            self.failure_reason = step.reason
        return step
