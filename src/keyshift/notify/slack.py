"""`slack`: a Slack incoming webhook, one Block Kit message per event.

Documented behaviour this follows: the webhook URL is the credential (given only as
`webhook_url_from`); a message is a JSON body with fallback `text` and `blocks` (a
header of at most 150 characters, sections of at most 3,000, at most 10 fields of 2,000
each); success is HTTP 200 with body `ok`; errors are 400 `invalid_payload`, 403
`action_prohibited`, 404 `channel_not_found`, 410 `channel_is_archived` (never worth
retrying), 429 with Retry-After (about one message per second per webhook) and 5xx.
"""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import BaseModel

from keyshift.notify.base import ChatWebhook, Message, WebhookURLConfig, cut

HEADER_MAX = 150
TEXT_MAX = 3000
FIELDS_MAX = 10
FIELD_MAX = 2000


class SlackConfig(WebhookURLConfig):
    """A Slack incoming webhook."""


def blocks_of(message: Message) -> dict[str, Any]:
    """The Block Kit body of a message."""
    blocks: list[dict[str, Any]] = [
        {"type": "header", "text": {"type": "plain_text", "text": cut(message.title, HEADER_MAX)}}
    ]
    if message.lines:
        text = "\n".join(message.lines)
        blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": cut(text, TEXT_MAX)}})
    fields = [
        {"type": "mrkdwn", "text": cut(f"*{label}*\n{value}", FIELD_MAX)}
        for label, value in message.facts
    ]
    for start in range(0, len(fields), FIELDS_MAX):
        blocks.append({"type": "section", "fields": fields[start : start + FIELDS_MAX]})
    blocks.append(
        {"type": "context", "elements": [{"type": "mrkdwn", "text": f"keyshift · {message.kind}"}]}
    )
    return {"text": message.title, "blocks": blocks}


class SlackChannel(ChatWebhook):
    """Posts each event to a Slack channel through its incoming webhook."""

    kind: ClassVar[str] = "slack"
    Config: ClassVar[type[BaseModel]] = SlackConfig
    what: ClassVar[str] = "Slack webhook"

    def body(self, message: Message) -> dict[str, Any]:
        return blocks_of(message)
