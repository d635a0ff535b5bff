"""`webhook`: POST a signed JSON event when a version is published or rolled back.

The event names the credential, rotation and versions by id and fingerprint; the
value is in it only with `include_value: true`. With a signing secret, each request
carries `X-Keyshift-Signature: sha256=<hex>`, the HMAC-SHA256 of
`"{X-Keyshift-Timestamp}.{body}"`, so receivers can check origin and freshness
(GitHub and Stripe sign the same way). `X-Keyshift-Delivery` stays the same across
retries and repeated publishes of one event, so receivers can drop duplicates.

Connection errors, timeouts, 429 and 5xx are retried with exponential backoff and
jitter; other answers outside 2xx fail at once.

`jwks_webhook` POSTs, signed and retried the same way, the JWKS document of a
`jwks_signing_key` credential (public keys only, never a private key) to a receiver that
serves it to verifiers: a trust action, so it runs before the signers get a new key
(`jwks.published`: the new key and the old one), again just before the old key is revoked
(`jwks.withdrawn`: the current key alone) and on rollback (`jwks.rolled_back`: the old key
alone). A receiver that does not take it (after the retries) fails the step.

`thumbprints_webhook` POSTs a certificate credential's accepted-thumbprint list
(`thumbprints.accepted`) to a verifier that pins thumbprints, as a trust action: before
the signer gets the new certificate, and again when the old one is withdrawn.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from datetime import timedelta
from typing import Any, ClassVar, Final, Literal

import httpx
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from keyshift.domain.durations import Duration
from keyshift.domain.location import http_url
from keyshift.domain.secret import Secret
from keyshift.domain.states import Phase
from keyshift.errors import ConfigError, PermanentError, TransientError
from keyshift.sources import SecretRef
from keyshift.targets import base, jwks
from keyshift.targets.base import Delivery, PreflightResult, Readiness, StepResult, positive
from keyshift.targets.thumbprints import ThumbprintSpec, accepted
from keyshift.targets.web import (
    MAX_WAIT,
    Outcome,
    UrlTarget,
    attempt,
    backoff_wait,
    is_loopback,
)

EVENT_PUBLISHED: Final = "rotation.published"
EVENT_ROLLED_BACK: Final = "rotation.rolled_back"
SIGNATURE_HEADER: Final = "X-Keyshift-Signature"
TIMESTAMP_HEADER: Final = "X-Keyshift-Timestamp"
EVENT_HEADER: Final = "X-Keyshift-Event"
DELIVERY_HEADER: Final = "X-Keyshift-Delivery"

_OWN_HEADERS = frozenset(
    {"content-type", SIGNATURE_HEADER.lower(), TIMESTAMP_HEADER.lower(), EVENT_HEADER.lower()}
    | {DELIVERY_HEADER.lower()}
)


class WebhookConfig(BaseModel):
    """Where to POST events and how to sign and retry them."""

    model_config = ConfigDict(use_attribute_docstrings=True, extra="forbid", frozen=True)

    url: str
    """http:// or https:// URL. Kept out of errors and step details (it may carry a token)."""
    signing_secret_from: SecretRef | None = None
    """`env:NAME` or `file:/path` naming the HMAC key; no signature header without it."""
    include_value: bool = False
    """Put the value in the event. Only over https (or to this host)."""
    timeout: Duration = timedelta(seconds=10)
    retries: int = Field(default=4, ge=0, le=10)
    """Retries after the first attempt, for connection errors, timeouts, 429 and 5xx."""
    backoff: Duration = timedelta(seconds=1)
    """Wait before the first retry; doubles for each further one (plus jitter)."""
    headers: dict[str, str] = {}
    """Extra, non-secret request headers."""

    @field_validator("url")
    @classmethod
    def _http_url(cls, url: str) -> str:
        return http_url(
            url, credentials_message="url must not carry credentials; use signing_secret_from"
        )

    @field_validator("timeout")
    @classmethod
    def _positive_timeout(cls, timeout: timedelta) -> timedelta:
        return positive(timeout, "timeout")

    @field_validator("headers")
    @classmethod
    def _headers_not_ours(cls, headers: dict[str, str]) -> dict[str, str]:
        for name in headers:
            if name.lower() in _OWN_HEADERS:
                raise ValueError(f"header {name} is set by keyshift")
        return headers

    @model_validator(mode="after")
    def _value_only_encrypted(self) -> WebhookConfig:
        url = httpx.URL(self.url)
        if self.include_value and url.scheme != "https" and not is_loopback(url.host):
            raise ValueError("include_value needs an https:// url (or one on this host)")
        return self


class WebhookTarget(UrlTarget[WebhookConfig]):
    """Notifies a receiver that a version was published or rolled back."""

    kind: ClassVar[str] = "webhook"
    phase: ClassVar[Phase] = Phase.NOTIFY
    Config: ClassVar[type[BaseModel]] = WebhookConfig

    async def preflight(self, request: base.PreflightRequest) -> PreflightResult:
        """Ready when the signing secret (if any) resolves. Sends nothing."""
        try:
            self._signing_key()
        except PermanentError as exc:
            return PreflightResult(Readiness.BLOCKED, str(exc))
        return PreflightResult(Readiness.READY)

    async def publish(self, request: base.PublishRequest) -> StepResult:
        """POST `rotation.published`.

        Idempotent for receivers: a repeat carries the same `X-Keyshift-Delivery`, which
        they use to drop the duplicate.
        """
        delivery, previous = request.delivery, request.previous
        event: dict[str, Any] = {
            "event": EVENT_PUBLISHED,
            "credential": delivery.credential,
            "rotation_id": delivery.rotation_id,
            "version_id": delivery.version_id,
            "fingerprint": delivery.fingerprint,
            "previous_version_id": previous.version_id if previous else None,
            "previous_fingerprint": previous.fingerprint if previous else None,
            "attributes": dict(delivery.attributes),
            "sent_at": self.context.now().isoformat(),
        }
        return await self._send(event, delivery)

    async def send_event(self, event: dict[str, Any], delivery_id: str) -> StepResult:
        """POST any event (an alert, say) with the same signing and retries. It never
        carries a value; `delivery_id` is the `X-Keyshift-Delivery` receivers dedupe on."""
        return await self._send(dict(event), None, delivery_id=delivery_id, with_value=False)

    async def rollback(self, request: base.RollbackRequest) -> StepResult:
        """POST `rotation.rolled_back`.

        `version_id` is the restored version (None if there was none) and
        `rolled_back_version_id` the one undone. Repeatable like publish.
        """
        failed, previous = request.failed, request.previous
        event: dict[str, Any] = {
            "event": EVENT_ROLLED_BACK,
            "credential": failed.credential,
            "rotation_id": failed.rotation_id,
            "version_id": previous.version_id if previous else None,
            "fingerprint": previous.fingerprint if previous else None,
            "rolled_back_version_id": failed.version_id,
            "rolled_back_fingerprint": failed.fingerprint,
            "attributes": dict(previous.attributes) if previous else {},
            "sent_at": self.context.now().isoformat(),
        }
        return await self._send(event, previous)

    def _signing_key(self) -> Secret | None:
        ref = self.config.signing_secret_from
        if ref is None:
            return None
        try:
            return self.context.secret("signing_secret_from", ref)
        except ConfigError as exc:
            raise PermanentError(f"webhook signing secret: {exc}") from None

    async def _send(
        self,
        event: dict[str, Any],
        carried: Delivery | None,
        *,
        delivery_id: str | None = None,
        with_value: bool = True,
    ) -> StepResult:
        """POST the event with retries. `carried` is the version whose value may ride along."""
        if with_value and self.config.include_value:
            event["value"] = carried.value.reveal() if carried is not None else None
        delivery_id = delivery_id or f"{event['rotation_id']}.{event['event']}"
        body = json.dumps(event, separators=(",", ":")).encode("utf-8")
        key = self._signing_key()
        timeout = self.config.timeout.total_seconds()
        async with httpx.AsyncClient(timeout=timeout, follow_redirects=False) as client:
            attempt = 0
            while True:
                attempt += 1
                outcome = await self._attempt(client, event, body, key, delivery_id)
                if outcome.failure is None:
                    detail = {"status": outcome.status, "attempts": attempt, "host": self._host}
                    return StepResult(detail)
                if attempt > self.config.retries:
                    raise TransientError(
                        f"webhook to {self._host} failed after {attempt} attempts: "
                        f"{outcome.failure}",
                        retry_after=outcome.retry_after,
                    )
                wait = backoff_wait(self.config.backoff, attempt - 1, outcome.retry_after)
                if wait > MAX_WAIT:
                    # Sleeping this long inside one step would hold the rotation's lease idle.
                    raise TransientError(
                        f"webhook to {self._host}: {outcome.failure}; "
                        f"asked to retry after {wait:.0f}s",
                        retry_after=wait,
                    )
                await self.context.sleep(wait)

    async def _attempt(
        self,
        client: httpx.AsyncClient,
        event: dict[str, Any],
        body: bytes,
        key: Secret | None,
        delivery_id: str,
    ) -> Outcome:
        """One POST. Raises PermanentError for answers that retrying will not change."""
        timestamp = str(int(self.context.now().timestamp()))
        headers = {
            **self.config.headers,
            "Content-Type": "application/json",
            EVENT_HEADER: event["event"],
            DELIVERY_HEADER: delivery_id,
            TIMESTAMP_HEADER: timestamp,
        }
        if key is not None:
            signed = timestamp.encode("utf-8") + b"." + body
            digest = hmac.new(key.reveal().encode("utf-8"), signed, hashlib.sha256).hexdigest()
            headers[SIGNATURE_HEADER] = f"sha256={digest}"
        return await attempt(
            client.post(self.config.url, content=body, headers=headers), f"webhook to {self._host}"
        )


class JwksWebhookConfig(WebhookConfig):
    """Where to POST a signing key's JWKS document, and how to sign and retry it."""

    include_value: Literal[False] = False
    """Always false: the document holds public keys, never the private key."""


class JwksWebhookTarget(jwks.JwksOutput, WebhookTarget):
    """POSTs the JWKS document that verifiers must trust now to a receiver that serves it."""

    kind: ClassVar[str] = "jwks_webhook"
    phase: ClassVar[Phase] = Phase.PUBLISH
    Config: ClassVar[type[BaseModel]] = JwksWebhookConfig

    async def hold(
        self, add: list[Delivery], remove: list[Delivery], change: jwks.Change, about: Delivery
    ) -> dict[str, Any]:
        """POST `jwks.<change>` with the document of `add` alone (the receiver holds no
        document to merge into). A repeat carries the same `X-Keyshift-Delivery`."""
        document = jwks.document_of(add)
        event: dict[str, Any] = {
            "event": f"jwks.{change}",
            "credential": about.credential,
            "rotation_id": about.rotation_id,
            "kids": jwks.kids(document["keys"]),
            "jwks": document,
            "sent_at": self.context.now().isoformat(),
        }
        sent = await self._send(event, None, with_value=False)
        return {**sent.detail, "format": "jwks", "kids": event["kids"]}


EVENT_THUMBPRINTS: Final = "thumbprints.accepted"


class ThumbprintsWebhookConfig(WebhookConfig, ThumbprintSpec):
    """Where to POST a certificate credential's accepted-thumbprint list, how to sign and
    retry, and how each thumbprint is computed (`algorithm`) and written (`encoding`)."""

    @model_validator(mode="after")
    def _no_value(self) -> ThumbprintsWebhookConfig:
        if self.include_value:
            raise ValueError("include_value: a thumbprint list is public and carries no key")
        return self


class ThumbprintsWebhookTarget(WebhookTarget):
    """Sends a verifier that pins thumbprints (a relay) the list it must accept now: the
    new and the previous certificate's during the grace period, the current one's alone
    once the old version is withdrawn, the previous one's again on a rollback. A trust
    action: it runs before the actions that hand the signer the new certificate. The
    event never carries a value (`keyshift.targets.thumbprints`)."""

    kind: ClassVar[str] = "thumbprints_webhook"
    phase: ClassVar[Phase] = Phase.PUBLISH
    Config: ClassVar[type[BaseModel]] = ThumbprintsWebhookConfig
    config: ThumbprintsWebhookConfig

    @classmethod
    def trust_only(cls, config: BaseModel) -> bool:
        """It serves verifiers only, always."""
        return True

    @classmethod
    def trust_format(cls, config: BaseModel) -> str:
        """What it holds for the estate's checks: a certificate credential's thumbprints."""
        return "thumbprints"

    async def publish(self, request: base.PublishRequest) -> StepResult:
        """POST the list holding the new thumbprint and the previous one. Repeatable: a
        repeat carries the same `X-Keyshift-Delivery`."""
        delivery = request.delivery
        listed = [delivery] if request.previous is None else [delivery, request.previous]
        return await self._accepted(delivery, listed, "published")

    async def rollback(self, request: base.RollbackRequest) -> StepResult:
        """POST the list holding the previous thumbprint alone (empty when there was no
        version before). Repeatable like publish."""
        listed = [] if request.previous is None else [request.previous]
        return await self._accepted(request.failed, listed, "rolled_back")

    async def withdraw(self, request: base.WithdrawRequest) -> StepResult:
        """POST the list holding the current thumbprint alone, just before the old version
        is revoked. Repeatable like publish."""
        result = await self._accepted(request.current, [request.current], "withdrawn")
        return StepResult({**result.detail, "withdrawn": request.withdrawn.fingerprint})

    async def _accepted(self, about: Delivery, listed: list[Delivery], why: str) -> StepResult:
        spec = self.config
        thumbprints = accepted([], listed, [], spec)
        event: dict[str, Any] = {
            "event": EVENT_THUMBPRINTS,
            "reason": why,
            "credential": about.credential,
            "rotation_id": about.rotation_id,
            "algorithm": spec.algorithm,
            "encoding": spec.encoding,
            "thumbprints": thumbprints,
            "versions": [d.version_id for d in listed],
            "sent_at": self.context.now().isoformat(),
        }
        delivery_id = f"{about.rotation_id}.{EVENT_THUMBPRINTS}.{why}"
        sent = await self._send(event, None, delivery_id=delivery_id, with_value=False)
        return StepResult({**sent.detail, "thumbprints": thumbprints})
