"""`webhook`: the event as signed JSON, the way the `webhook` action and alert webhooks
sign it (`X-Keyshift-Signature`, `X-Keyshift-Delivery` = the event's dedup key).

One attempt per call: the outbox retries, so the action's own retries are off.
"""

from __future__ import annotations

from datetime import timedelta
from typing import ClassVar

from pydantic import BaseModel, ConfigDict, model_validator

from keyshift.context import PluginContext
from keyshift.domain.durations import Duration
from keyshift.notify.base import Message, Sent
from keyshift.sources import SecretRef
from keyshift.targets.webhook import WebhookConfig, WebhookTarget


class WebhookChannelConfig(BaseModel):
    """A webhook receiver of events, signed as the `webhook` action signs. Events never
    carry a value, and the outbox retries (so there is no `include_value` or `retries`)."""

    model_config = ConfigDict(use_attribute_docstrings=True, extra="forbid", frozen=True)

    url: str
    """http:// or https:// URL. Kept out of errors and listings (it may carry a token)."""
    signing_secret_from: SecretRef | None = None
    """`env:NAME` or `file:/path` naming the HMAC key; no signature header without it."""
    timeout: Duration = timedelta(seconds=10)
    """How long one delivery attempt may take."""
    headers: dict[str, str] = {}
    """Extra, non-secret request headers."""

    @model_validator(mode="after")
    def _as_the_action_checks(self) -> WebhookChannelConfig:
        # The same URL, timeout and header rules as the webhook action (one validator).
        self.as_action()
        return self

    def as_action(self) -> WebhookConfig:
        return WebhookConfig.model_validate({**self.model_dump(), "retries": 0})


class WebhookChannel:
    """POSTs each event's payload, signed."""

    kind: ClassVar[str] = "webhook"
    Config: ClassVar[type[BaseModel]] = WebhookChannelConfig

    def __init__(self, config: WebhookChannelConfig, context: PluginContext) -> None:
        self.target = WebhookTarget(config.as_action(), context)

    async def send(self, message: Message, *, dedup_key: str, thread: str | None) -> Sent:
        result = await self.target.send_event(message.payload, delivery_id=dedup_key)
        return Sent(f"HTTP {result.detail.get('status')}")
