"""`teams`: a Microsoft Teams Workflows (or incoming) webhook, one Adaptive Card per event.

Documented behaviour this follows: the webhook URL is the credential (given only as
`webhook_url_from`); the body is a `message` whose one attachment has content type
`application/vnd.microsoft.card.adaptive` and an Adaptive Card (version 1.4) as content;
a Workflows webhook answers 202 Accepted (an older connector 200); a malformed card is
400, a throttled sender gets 429 with Retry-After, and 5xx may be retried.
"""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import BaseModel

from keyshift.notify.base import ChatWebhook, Message, WebhookURLConfig

CARD_TYPE = "application/vnd.microsoft.card.adaptive"
CARD_SCHEMA = "http://adaptivecards.io/schemas/adaptive-card.json"


class TeamsConfig(WebhookURLConfig):
    """A Teams Workflows webhook."""


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


class TeamsChannel(ChatWebhook):
    """Posts each event to a Teams channel through its webhook."""

    kind: ClassVar[str] = "teams"
    Config: ClassVar[type[BaseModel]] = TeamsConfig
    what: ClassVar[str] = "Teams webhook"

    def body(self, message: Message) -> dict[str, Any]:
        return card_of(message)
