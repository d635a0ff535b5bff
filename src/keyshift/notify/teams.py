"""`teams`: a Microsoft Teams Workflows (or incoming) webhook, one Adaptive Card per event.

Documented behaviour this follows: the webhook URL is the credential (given only as
`webhook_url_from`); the body is a `message` whose one attachment has content type
`application/vnd.microsoft.card.adaptive` and an Adaptive Card (version 1.4) as content;
a Workflows webhook answers 202 Accepted (an older connector 200); a malformed card is
400, a throttled sender gets 429 with Retry-After, and 5xx may be retried.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict

from keyshift.context import PluginContext
from keyshift.domain.durations import Duration
from keyshift.notify.base import Message, Sent, post_json, reveal_url
from keyshift.sources import SecretRef

CARD_TYPE = "application/vnd.microsoft.card.adaptive"
CARD_SCHEMA = "http://adaptivecards.io/schemas/adaptive-card.json"


class TeamsConfig(BaseModel):
    """A Teams Workflows webhook."""

    model_config = ConfigDict(use_attribute_docstrings=True, extra="forbid", frozen=True)

    webhook_url_from: SecretRef
    """`env:NAME` or `file:/path` holding the webhook URL (it is the credential)."""
    timeout: Duration = timedelta(seconds=10)
    """How long one delivery attempt may take."""


def card_of(message: Message) -> dict[str, Any]:
    """The Teams message body: one Adaptive Card."""
    body: list[dict[str, Any]] = [
        {"type": "TextBlock", "text": message.title, "weight": "Bolder", "size": "Medium"},
        *({"type": "TextBlock", "text": line, "wrap": True} for line in message.lines),
        {
            "type": "FactSet",
            "facts": [{"title": label, "value": value} for label, value in message.facts],
        },
    ]
    card = {"$schema": CARD_SCHEMA, "type": "AdaptiveCard", "version": "1.4", "body": body}
    return {
        "type": "message",
        "attachments": [{"contentType": CARD_TYPE, "contentUrl": None, "content": card}],
    }


class TeamsChannel:
    """Posts each event to a Teams channel through its webhook."""

    kind: ClassVar[str] = "teams"
    Config: ClassVar[type[BaseModel]] = TeamsConfig

    def __init__(self, config: TeamsConfig, context: PluginContext) -> None:
        self.config = config
        self.context = context

    async def send(self, message: Message, *, dedup_key: str, thread: str | None) -> Sent:
        url = reveal_url(self.context, "webhook_url_from", self.config.webhook_url_from)
        response = await post_json(
            "Teams webhook", url, card_of(message), within=self.config.timeout
        )
        return Sent(f"HTTP {response.status_code}")
