"""What every channel shares: the message an event becomes, and one HTTP POST judged the
way the outbox needs (delivered, try again later, or never).

A channel sends one attempt per call; the outbox (`service.notifications`) owns retries,
backoff and dead letters, so nothing here sleeps. Channel URLs often carry their token
(a Slack webhook URL is the credential), so no message here quotes a URL or a library's
error text.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, ClassVar, Protocol

import httpx
from pydantic import BaseModel, ConfigDict

from keyshift.context import PluginContext
from keyshift.domain import notifications as kinds
from keyshift.domain.durations import Duration
from keyshift.errors import ConfigError, PermanentError, TransientError
from keyshift.sources import SecretRef
from keyshift.targets.web import attempt

__all__ = [
    "Channel",
    "Message",
    "Sent",
    "message_of",
    "post_json",
    "request_json",
    "reveal_secret",
]

_TITLES = {
    kinds.ROTATION_FAILED: "Rotation of {credential} failed",
    kinds.ROTATION_ROLLED_BACK: "Rotation of {credential} rolled back",
    kinds.ROTATION_NEEDS_ATTENTION: "Rotation of {credential} needs attention",
    kinds.ROTATION_COMPLETED: "Rotation of {credential} completed",
    kinds.APPROVAL_REQUESTED: "Approval requested: rotation of {credential}",
    kinds.APPROVAL_DECIDED: "Approval decided: rotation of {credential}",
    kinds.ROTATION_STUCK: "Rotation of {credential} is stuck in {state}",
    kinds.ROTATION_REFUSED: "Scheduled rotation of {credential} refused",
    kinds.REVOKED_IN_USE: "Old version of {credential} revoked while still in use",
    kinds.CHANGED_OUTSIDE: "{credential}{app} was changed outside keyshift",
    kinds.CREDENTIAL_EXPIRING: "{credential}{app} expires in {days_left} days",
    kinds.LIFETIME_EXCEEDED: "Secret of {app} lives longer than the policy allows",
    kinds.NOTIFICATION_TEST: "keyshift test message for channel {channel}",
}
_FACTS = (
    ("Credential", "credential"),
    ("Owner", "owner"),
    ("Environment", "environment"),
    ("Rotation", "rotation_id"),
    ("State", "state"),
    ("Failed step", "failed_step"),
    ("Old version", "old_version_id"),
    ("Old fingerprint", "old_fingerprint"),
    ("New version", "new_version_id"),
    ("New fingerprint", "new_fingerprint"),
    ("Approval request", "request_id"),
    ("Expires", "expires_at"),
    ("Threshold", "threshold"),
    ("Application", "app"),
    ("App id", "app_id"),
    ("Secret key id", "key_id"),
    ("Since", "since"),
    ("Approvers", "approvers"),
    ("Plan hash", "plan_hash"),
)


@dataclass(frozen=True)
class Message:
    """An event in words: a title, lines of text and labelled facts (never a value)."""

    kind: str
    title: str
    lines: list[str]
    facts: list[tuple[str, str]]
    payload: dict[str, Any] = field(repr=False)


@dataclass(frozen=True)
class Sent:
    """A delivered message; `reference` names it where the channel answers with a name
    (a ticket key), for later events of the same rotation."""

    detail: str
    reference: str | None = None


def message_of(payload: dict[str, Any]) -> Message:
    """The message an event's payload becomes in every channel."""
    kind = str(payload.get("event", ""))
    title = _TITLES.get(kind, kind).format_map(_Blank(payload))
    lines: list[str] = []
    if payload.get("failed_step"):
        lines.append(f"Step {payload['failed_step']} failed: {payload.get('failed_step_error')}")
    for label, key in (
        ("Error", "error"),
        ("Needs attention", "attention"),
        ("Finding", "finding"),
    ):
        if payload.get(key):
            lines.append(f"{label}: {payload[key]}")
    if kind == kinds.APPROVAL_DECIDED:
        lines.append(f"Request {payload.get('request_id')}: {payload.get('request_status')}")
    for label, key in (("What changes", "steps"), ("Rollback plan", "rollback")):
        if payload.get(key):
            lines.append(f"{label}:\n" + "\n".join(f"- {step}" for step in payload[key]))
    if payload.get("reasons"):
        lines.append("Refused: " + "; ".join(map(str, payload["reasons"])))
    if payload.get("decide"):
        lines.append(f"To decide: {payload['decide']}")
    facts = [
        (label, ", ".join(map(str, value)) if isinstance(value, list) else str(value))
        for label, key in _FACTS
        if (value := payload.get(key)) not in (None, "", [])
    ]
    return Message(kind, title, lines, facts, payload)


class _Blank(dict[str, Any]):
    """Fills a title from the payload: what is missing is left out."""

    def __missing__(self, key: str) -> str:
        return ""


def cut(text: str, limit: int) -> str:
    """`text` in at most `limit` characters (an ellipsis marks a cut)."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def plain_text(message: Message, *, title: bool) -> str:
    """The message as plain text (a mail, a ticket): its title (for a comment), its lines,
    its facts, and the event kind last."""
    width = max((len(label) for label, _ in message.facts), default=0)
    facts = "\n".join(f"{(label + ':').ljust(width + 1)} {value}" for label, value in message.facts)
    parts = [message.title if title else "", "\n\n".join(message.lines), facts]
    parts.append(f"keyshift · {message.kind}")
    return "\n\n".join(p for p in parts if p)


class Channel(Protocol):
    """A place messages go. `Config` validates its settings; `send` makes one attempt and
    raises TransientError (try again, maybe after `retry_after`) or PermanentError.

    `thread` is the `reference` an earlier message about the same rotation got from this
    channel (a ticket key): a channel that keeps threads adds to it instead of starting
    a new one. A rotation's events reach one channel in order: a later one waits while
    an earlier one is pending."""

    kind: ClassVar[str]
    Config: ClassVar[type[BaseModel]]

    async def send(self, message: Message, *, dedup_key: str, thread: str | None) -> Sent: ...


def reveal_secret(context: PluginContext, field: str, ref: str) -> str:
    """The secret a channel setting names (a token, a password); PermanentError naming
    the field when it cannot be read."""
    try:
        return context.secret(field, ref).reveal()
    except ConfigError as exc:
        raise PermanentError(f"{field}: {exc}") from None


async def post_json(
    what: str,
    url: str,
    body: dict[str, Any],
    *,
    within: timedelta,
    headers: dict[str, str] | None = None,
) -> httpx.Response:
    """One POST of `body`, judged as the HTTP targets judge it (`targets.web.attempt`): a
    2xx answer is returned; no answer, 429 and 5xx raise TransientError (with the
    server's Retry-After); anything else raises PermanentError quoting the short error
    word the channel answered. Errors name `what` and the status, never the URL."""

    def refusal(response: httpx.Response) -> str:
        said = response.text.strip()[:80] if len(response.content) < 2000 else ""
        detail = f" ({said})" if said else ""
        return f"{what} answered HTTP {response.status_code}{detail}; not retried"

    return await request_json(
        what, "POST", url, body, within=within, headers=headers, refusal=refusal
    )


async def request_json(
    what: str,
    method: str,
    url: str,
    body: dict[str, Any] | None,
    *,
    within: timedelta,
    headers: dict[str, str] | None = None,
    refusal: Callable[[httpx.Response], str | None] | None = None,
) -> httpx.Response:
    """One request (`body` as JSON, if any), judged as `post_json` judges it; `refusal`
    words the PermanentError of an answer retrying cannot change (default: `what` and
    the status). Errors never quote the URL or the request's headers."""
    async with httpx.AsyncClient(timeout=within.total_seconds(), follow_redirects=False) as client:
        request = client.request(method, url, json=body, headers=headers or {})
        outcome = await attempt(request, what, refusal)
    if outcome.failure is not None or outcome.response is None:
        raise TransientError(f"{what}: {outcome.failure}", retry_after=outcome.retry_after)
    return outcome.response


class WebhookURLConfig(BaseModel):
    """A chat webhook whose URL is the credential."""

    model_config = ConfigDict(use_attribute_docstrings=True, extra="forbid", frozen=True)

    webhook_url_from: SecretRef
    """`env:NAME` or `file:/path` holding the webhook URL (it is the credential)."""
    timeout: Duration = timedelta(seconds=10)
    """How long one delivery attempt may take."""


class ChatWebhook:
    """A channel that POSTs one JSON body per event to a webhook URL given by reference:
    a subclass names `kind`, `Config`, `what` (for errors) and builds the `body`."""

    kind: ClassVar[str]
    Config: ClassVar[type[BaseModel]]
    what: ClassVar[str]

    def __init__(self, config: WebhookURLConfig, context: PluginContext) -> None:
        self.config = config
        self.context = context

    def body(self, message: Message) -> dict[str, Any]:
        raise NotImplementedError

    async def send(self, message: Message, *, dedup_key: str, thread: str | None) -> Sent:
        # The URL carries the webhook's token.
        url = reveal_secret(self.context, "webhook_url_from", self.config.webhook_url_from)
        response = await post_json(self.what, url, self.body(message), within=self.config.timeout)
        return Sent(f"HTTP {response.status_code}")
