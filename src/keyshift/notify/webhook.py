"""`webhook`: the event as signed JSON, the way the `webhook` action and alert webhooks
sign it (`X-Keyshift-Signature`, `X-Keyshift-Delivery` = the event's dedup key).

One attempt per call: the outbox retries, so the action's own retries are off.
"""

from __future__ import annotations

from typing import ClassVar

from pydantic import BaseModel

from keyshift.context import PluginContext
from keyshift.notify.base import Message, Sent
from keyshift.targets.webhook import WebhookConfig, WebhookTarget


class WebhookChannelConfig(WebhookConfig):
    """A webhook receiver: `url`, `signing_secret_from`, `headers`, `timeout`."""


class WebhookChannel:
    """POSTs each event's payload, signed."""

    kind: ClassVar[str] = "webhook"
    Config: ClassVar[type[BaseModel]] = WebhookChannelConfig

    def __init__(self, config: WebhookChannelConfig, context: PluginContext) -> None:
        once = config.model_copy(update={"retries": 0, "include_value": False})
        self.target = WebhookTarget(once, context)

    async def send(self, message: Message, *, dedup_key: str) -> Sent:
        result = await self.target.send_event(message.payload, delivery_id=dedup_key)
        return Sent(f"HTTP {result.detail.get('status')}")
