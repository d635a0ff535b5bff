"""Channels that tell operators of events: `CHANNELS` maps a channel `type` in the
estate's `notifications` to its class.

`CHANNELS` is a `keyshift.registry.Registry`: a channel's module (and the HTTP client or
mail library it sends with) is imported when its type is first looked up, and so are the
names this package re-exports, when first named; reading a rotation's tickets
(`keyshift status`, `show`) loads none of them.
"""

from __future__ import annotations

from enum import StrEnum
from typing import TYPE_CHECKING, Any

from keyshift.registry import Registry, lazy_exports

if TYPE_CHECKING:
    from keyshift.notify.base import Channel, Message, Sent, message_of


class ChannelKind(StrEnum):
    EMAIL = "email"
    JIRA = "jira"
    SERVICENOW = "servicenow"
    SLACK = "slack"
    TEAMS = "teams"
    WEBHOOK = "webhook"


CHANNELS: Registry[Any] = Registry(
    {
        ChannelKind.EMAIL: "keyshift.notify.email:EmailChannel",
        ChannelKind.JIRA: "keyshift.notify.jira:JiraChannel",
        ChannelKind.SERVICENOW: "keyshift.notify.servicenow:ServiceNowChannel",
        ChannelKind.SLACK: "keyshift.notify.slack:SlackChannel",
        ChannelKind.TEAMS: "keyshift.notify.teams:TeamsChannel",
        ChannelKind.WEBHOOK: "keyshift.notify.webhook:WebhookChannel",
    }
)

__getattr__ = lazy_exports(
    __name__,
    {
        "Channel": "keyshift.notify.base:Channel",
        "Message": "keyshift.notify.base:Message",
        "Sent": "keyshift.notify.base:Sent",
        "message_of": "keyshift.notify.base:message_of",
    },
)

__all__ = ["CHANNELS", "Channel", "ChannelKind", "Message", "Sent", "message_of"]
