"""Waiting out an issuer's propagation: ask until it accepts a new version everywhere, or
refuses a revoked one everywhere, within a bound.

Real issuers are eventually consistent. Entra ID refuses a new client secret for seconds
to minutes after `addPassword` and keeps accepting a removed one for minutes; database
replicas and poolers lag. One loop serves the engine's proof before cutover, its
post-cutover check and its revocation proof, and the test kit's provider contract.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from keyshift.context import PluginContext
from keyshift.domain.durations import format_duration
from keyshift.errors import TransientError, scrub
from keyshift.providers.base import IssuedVersion, Provider, VerifyRequest, VerifyResult

__all__ = ["FIRST_BACKOFF", "MAX_BACKOFF", "IssuerWait", "wait_for_issuer"]

FIRST_BACKOFF = 1.0
"""Seconds before the second attempt; each further pause doubles it."""
MAX_BACKOFF = 15.0
"""The longest pause between two attempts."""


@dataclass(frozen=True)
class IssuerWait:
    """How a wait ended: `settled` when the issuer gave the answer waited for."""

    settled: bool
    attempts: int
    waited: timedelta
    timeout: timedelta
    detail: str
    """The issuer's last answer, in words (never a value)."""
    final: bool = False
    """Ended before the timeout by an answer that waiting cannot change."""

    @property
    def summary(self) -> str:
        took = f"{self.attempts} attempt(s), {format_duration(_whole_seconds(self.waited))}"
        if self.settled or self.final:
            return f"({took})"
        return f"within propagation_timeout {format_duration(self.timeout)} ({took})"

    def facts(self, verb: str) -> dict[str, Any]:
        """The attempts for a step's result, and the line `show` displays for it
        ("proved after 7 attempt(s), 41s")."""
        took = format_duration(_whole_seconds(self.waited))
        said = "" if self.settled else "not "
        return {
            "attempts": self.attempts,
            "waited_s": round(self.waited.total_seconds(), 3),
            "propagation_timeout_s": self.timeout.total_seconds(),
            "propagation": f"{said}{verb} after {self.attempts} attempt(s), {took}",
        }


async def wait_for_issuer(
    provider: Provider,
    credential: str,
    version: IssuedVersion,
    *,
    accepted: bool,
    within: timedelta,
    context: PluginContext,
    secrets: list[str] | None = None,
) -> IssuerWait:
    """Ask `provider.verify` until the issuer accepts `version` everywhere (`accepted`)
    or refuses it everywhere (not `accepted`), for at most `within` on the context's
    clock, pausing with exponential backoff and equal jitter between attempts.

    An answer that means "not yet" (`not_yet`, `partial`), or an issuer that cannot be
    reached for now (TransientError), is asked again. A refusal of a version waited on
    to be accepted that is neither ends the wait at once: the version is wrong, and
    waiting will not help. Error texts are scrubbed of `secrets`.
    """
    timeout = within
    started = context.now()
    backoff, attempts = FIRST_BACKOFF, 0
    while True:
        attempts += 1
        answer: VerifyResult | None = None
        try:
            answer = await provider.verify(VerifyRequest(credential, version))
            detail = answer.detail
        except TransientError as exc:
            detail = scrub(f"issuer not reachable: {exc}", secrets or [])
        waited = context.now() - started
        if answer is not None:
            settled = answer.ok if accepted else not (answer.ok or answer.partial)
            if settled:
                return IssuerWait(True, attempts, waited, timeout, detail)
            if accepted and not (answer.not_yet or answer.partial):
                return IssuerWait(False, attempts, waited, timeout, detail, final=True)
        remaining = (timeout - waited).total_seconds()
        if remaining <= 0:
            return IssuerWait(False, attempts, waited, timeout, detail)
        pause = backoff / 2 + random.uniform(0, backoff / 2)  # noqa: S311 (jitter, no secret)
        await context.sleep(min(remaining, pause))
        backoff = min(backoff * 2, MAX_BACKOFF)


def _whole_seconds(delta: timedelta) -> timedelta:
    return timedelta(seconds=round(delta.total_seconds()))
