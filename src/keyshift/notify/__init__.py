"""Channels that tell operators of events: `CHANNELS` maps a channel `type` in the
estate's `notifications` to its class."""

from __future__ import annotations

from typing import Any

from keyshift.notify.base import Channel, Message, Sent, message_of
from keyshift.notify.email import EmailChannel
from keyshift.notify.jira import JiraChannel
from keyshift.notify.servicenow import ServiceNowChannel
from keyshift.notify.slack import SlackChannel
from keyshift.notify.teams import TeamsChannel
from keyshift.notify.webhook import WebhookChannel

CHANNELS: dict[str, Any] = {
    EmailChannel.kind: EmailChannel,
    JiraChannel.kind: JiraChannel,
    ServiceNowChannel.kind: ServiceNowChannel,
    SlackChannel.kind: SlackChannel,
    TeamsChannel.kind: TeamsChannel,
    WebhookChannel.kind: WebhookChannel,
}

__all__ = ["CHANNELS", "Channel", "Message", "Sent", "message_of"]
