"""`http_check`: GET a consumer's URL until it answers healthy: the post-cutover test.

Healthy means the expected status (any 2xx unless `expect_status` is set) and, with
`expect_body`, a body that contains that text. The check keeps trying every
`interval` until `timeout` has passed, so a consumer that restarts after a reload
has time to come back. It sends no credential and never sees the value.

The URL may carry a token in its path or query, so errors and step details name
only its host, never the URL, and never quote a library's error text (which may).
Redirects are not followed: a 3xx is not healthy unless `expect_status` names it.
"""

from __future__ import annotations

from datetime import timedelta
from typing import ClassVar, Final

import httpx
from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from keyshift.domain.durations import Duration, format_duration
from keyshift.domain.location import http_url
from keyshift.domain.states import Phase
from keyshift.errors import PermanentError
from keyshift.targets import base
from keyshift.targets.base import PreflightResult, Readiness, StepResult, positive
from keyshift.targets.web import Outcome, UrlTarget

MAX_BODY: Final = 1024 * 1024
"""Bytes of the answer searched for `expect_body`; the rest is not read."""
PREFLIGHT_TIMEOUT: Final = timedelta(seconds=5)
"""Longest wait for preflight's single request (shorter if `request_timeout` is)."""


class HttpCheckConfig(BaseModel):
    """The URL to GET and what a healthy answer looks like."""

    model_config = ConfigDict(use_attribute_docstrings=True, extra="forbid", frozen=True)

    url: str
    """http:// or https:// URL, without user:password. Kept out of errors and step details."""
    expect_status: int | None = Field(default=None, ge=100, le=599)
    """The status (100-599) a healthy answer has; any 2xx when unset."""
    expect_body: str | None = Field(default=None, min_length=1)
    """Text a healthy answer's body contains (searched in its first MiB)."""
    timeout: Duration = timedelta(seconds=60)
    """How long to keep trying before the step fails."""
    interval: Duration = timedelta(seconds=2)
    """Wait between tries."""
    request_timeout: Duration = timedelta(seconds=10)
    """How long one request may take; a slower answer counts as a failed try."""
    headers: dict[str, str] = {}
    """Extra, non-secret request headers (e.g. `Accept` or a `Host` override)."""
    verify_tls: bool = True
    """Check the server's TLS certificate. Turn off only for a consumer on a private CA."""

    @field_validator("url")
    @classmethod
    def _http_url(cls, url: str) -> str:
        return http_url(url, credentials_message="url must not carry user:password credentials")

    @field_validator("timeout", "interval", "request_timeout")
    @classmethod
    def _positive(cls, value: timedelta, info: ValidationInfo) -> timedelta:
        return positive(value, str(info.field_name))


class HttpCheckTarget(UrlTarget[HttpCheckConfig]):
    """Checks after the cutover that a consumer answers healthy on its URL."""

    kind: ClassVar[str] = "http_check"
    phase: ClassVar[Phase] = Phase.VERIFY
    Config: ClassVar[type[BaseModel]] = HttpCheckConfig

    async def preflight(self, request: base.PreflightRequest) -> PreflightResult:
        """One GET with a short timeout. Ready if the consumer answers healthy now.

        Otherwise manual review, not blocked: a consumer that is down at this moment
        may be what the rotation is meant to repair, so an operator decides.
        """
        timeout = min(self.config.request_timeout, PREFLIGHT_TIMEOUT)
        async with self._client(timeout) as client:
            answer = await self._try(client)
        if answer.failure is None:
            return PreflightResult(Readiness.READY)
        return PreflightResult(
            Readiness.MANUAL_REVIEW, f"{self._host} is not healthy now: {answer.failure}"
        )

    async def publish(self, request: base.PublishRequest) -> StepResult:
        """Try until the consumer answers healthy or `timeout` passes. Changes nothing,
        so it can run any number of times."""
        return await self._until_healthy("after publishing")

    async def rollback(self, request: base.RollbackRequest) -> StepResult:
        """Check the same way that the consumer is healthy on the restored version.

        Raises like publish when it is not, so the rollback is recorded as incomplete.
        """
        return await self._until_healthy("after rollback")

    def _client(self, timeout: timedelta) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            timeout=timeout.total_seconds(),
            follow_redirects=False,
            verify=self.config.verify_tls,
        )

    async def _until_healthy(self, when: str) -> StepResult:
        """GET every `interval` until healthy; PermanentError once `timeout` has passed.

        Permanent, not transient: this loop is the retry, and a consumer still
        unhealthy after it will not be fixed by running the step again.
        """
        deadline = self.context.now() + self.config.timeout
        attempts = 0
        async with self._client(self.config.request_timeout) as client:
            while True:
                attempts += 1
                answer = await self._try(client)
                if answer.failure is None:
                    return StepResult(
                        {"status": answer.status, "attempts": attempts, "host": self._host}
                    )
                remaining = deadline - self.context.now()
                if remaining <= timedelta(0):
                    raise PermanentError(
                        f"{self._host} was not healthy {when} within "
                        f"{format_duration(self.config.timeout)} ({attempts} attempts); "
                        f"last: {answer.failure}"
                    )
                await self.context.sleep(min(self.config.interval, remaining).total_seconds())

    async def _try(self, client: httpx.AsyncClient) -> Outcome:
        """One GET, judged. Never raises for what the consumer or the network does."""
        try:
            async with client.stream("GET", self.config.url, headers=self.config.headers) as r:
                body = await _head_of(r) if self.config.expect_body is not None else b""
                encoding = r.encoding or "utf-8"
        except httpx.HTTPError as exc:
            # Only the class name: library texts may quote the URL, which can carry a token.
            return Outcome(None, type(exc).__name__)
        return self._judge(r.status_code, body.decode(encoding, errors="replace"))

    def _judge(self, status: int, text: str) -> Outcome:
        expected = self.config.expect_status
        if expected is None and not 200 <= status < 300:
            return Outcome(status, f"HTTP {status}, not 2xx")
        if expected is not None and status != expected:
            return Outcome(status, f"HTTP {status}, not {expected}")
        if self.config.expect_body is not None and self.config.expect_body not in text:
            return Outcome(status, f"HTTP {status} without the expected body text")
        return Outcome(status)


async def _head_of(response: httpx.Response) -> bytes:
    """The first `MAX_BODY` bytes of the (decompressed) body."""
    head = bytearray()
    async for chunk in response.aiter_bytes():
        head += chunk
        if len(head) >= MAX_BODY:
            break
    return bytes(head[:MAX_BODY])
