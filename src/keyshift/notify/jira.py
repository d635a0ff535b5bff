"""`jira`: one Jira issue per rotation on the exception path, and a comment on it for
each later event of that rotation.

Documented behaviour of the Jira REST API (version 2, so text fields are plain text,
not the Atlassian Document Format) this follows:

- Authentication: Jira Cloud takes basic authentication with the account's email and
  an API token (`email` + `api_token_from`); Jira Data Center a personal access token
  as a bearer token (`token_from`). Missing or refused credentials are 401; an account
  that may not create issues in the project 403.
- `POST /rest/api/2/issue` with `{"fields": {"project": {"key"}, "summary",
  "description", "issuetype": {"name"}, "labels"}}` creates an issue: 201 with
  `{"id", "key", "self"}`. A summary is one line of at most 255 characters; labels
  hold no spaces. A bad field is 400 with `{"errorMessages": [...], "errors":
  {field: message}}`.
- `POST /rest/api/2/issue/{key}/comment` with `{"body"}` adds a comment: 201; an issue
  that does not exist (or that the account may not see) is 404.
- `GET /rest/api/2/project/{key}`: 200 if the project exists for the account (what
  `keyshift notifications test` checks, so a test opens no issue).
- Throttling is 429 with Retry-After; outages 5xx.

The issue key is the delivery's `reference`: `keyshift show` and the evidence bundle
name it.
"""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Any, ClassVar

import httpx
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from keyshift.context import PluginContext
from keyshift.domain import notifications as kinds
from keyshift.domain.durations import Duration
from keyshift.errors import PermanentError
from keyshift.notify import tickets
from keyshift.notify.base import Message, Sent, cut, plain_text, request_json, reveal_secret
from keyshift.sources import SecretRef
from keyshift.targets.base import positive

SUMMARY_MAX = 255
TEXT_MAX = 32_000
"""Jira's text fields hold 32,767 characters; a little is kept in hand."""
PROJECT_KEY = re.compile(r"^[A-Z][A-Z0-9_]*$")
ISSUE_KEY = re.compile(r"^[A-Z][A-Z0-9_]*-[0-9]+$")
WHAT = "Jira"


class JiraConfig(BaseModel):
    """A Jira project that issues are opened in (Jira Cloud or Data Center)."""

    model_config = ConfigDict(use_attribute_docstrings=True, extra="forbid", frozen=True)

    url: str
    """The site's base URL, e.g. `https://example.atlassian.net` (https://; http:// only
    to this host)."""
    project: str
    """The project key, e.g. `OPS`."""
    issue_type: str = "Task"
    """The issue type's name in that project."""
    email: str | None = None
    """Jira Cloud: the account's email, with `api_token_from`."""
    api_token_from: SecretRef | None = None
    """Jira Cloud: `env:NAME` or `file:/path` holding the account's API token."""
    token_from: SecretRef | None = None
    """Jira Data Center: `env:NAME` or `file:/path` holding a personal access token."""
    labels: list[str] = Field(default_factory=lambda: ["keyshift"])
    """Labels of every issue opened (no spaces)."""
    open_on: list[str] = Field(default_factory=lambda: list(tickets.EXCEPTION_PATH))
    """Event kinds that open an issue when their rotation has none yet (default: failed,
    rolled back, needs attention, stuck); every later event of the rotation comments."""
    timeout: Duration = timedelta(seconds=10)
    """How long one delivery attempt may take."""

    @field_validator("url")
    @classmethod
    def _secure(cls, url: str) -> str:
        return tickets.secure_url(url)

    @field_validator("project")
    @classmethod
    def _project_key(cls, project: str) -> str:
        if not PROJECT_KEY.match(project):
            raise ValueError("must be a project key: an uppercase letter, then A-Z, 0-9 or _")
        return project

    @field_validator("labels")
    @classmethod
    def _no_spaces(cls, labels: list[str]) -> list[str]:
        bad = [label for label in labels if not label or any(c.isspace() for c in label)]
        if bad:
            raise ValueError(f"labels hold no spaces: {', '.join(map(repr, bad))}")
        return labels

    @field_validator("open_on")
    @classmethod
    def _known(cls, open_on: list[str]) -> list[str]:
        return tickets.known_kinds(open_on)

    @field_validator("timeout")
    @classmethod
    def _positive_timeout(cls, timeout: timedelta) -> timedelta:
        return positive(timeout, "timeout")

    @model_validator(mode="after")
    def _one_way_in(self) -> JiraConfig:
        if (self.email is None) != (self.api_token_from is None):
            raise ValueError("set email and api_token_from together (Jira Cloud)")
        if (self.api_token_from is None) == (self.token_from is None):
            raise ValueError(
                "set either email + api_token_from (Jira Cloud) or token_from (Data Center)"
            )
        return self


def issue_of(message: Message, config: JiraConfig) -> dict[str, Any]:
    """The body that creates the issue of an event."""
    return {
        "fields": {
            "project": {"key": config.project},
            "summary": tickets.one_line(message.title, SUMMARY_MAX),
            "description": cut(plain_text(message, title=False), TEXT_MAX),
            "issuetype": {"name": config.issue_type},
            "labels": list(config.labels),
        }
    }


def comment_of(message: Message) -> dict[str, Any]:
    """The body of the comment a later event adds."""
    return {"body": cut(plain_text(message, title=True), TEXT_MAX)}


def _named_fields(body: Any) -> str | None:
    """What a 400 may quote: the names of the fields Jira refused (its messages may echo
    what was sent), and how many general messages it gave."""
    if not isinstance(body, dict):
        return None
    errors = body.get("errors")
    fields = sorted(str(name)[:40] for name in errors) if isinstance(errors, dict) else []
    general = body.get("errorMessages")
    count = len(general) if isinstance(general, list) else 0
    said = []
    if fields:
        said.append(f"refused field(s) {', '.join(fields[:10])}")
    if count:
        said.append(f"{count} error message(s)")
    return "; ".join(said) or None


class JiraChannel:
    """Opens a Jira issue for a rotation on the exception path and comments on it."""

    kind: ClassVar[str] = "jira"
    Config: ClassVar[type[BaseModel]] = JiraConfig

    def __init__(self, config: JiraConfig, context: PluginContext) -> None:
        self.config = config
        self.context = context

    async def send(self, message: Message, *, dedup_key: str, thread: str | None) -> Sent:
        """Comments on `thread` (an issue key) when the rotation has an issue; else opens
        one if the event's kind is in `open_on`, or sends nothing. Not idempotent at
        Jira: an attempt whose answer is lost may have opened an issue that a retry
        opens again."""
        if message.kind == kinds.NOTIFICATION_TEST:
            return await self._check()
        if thread is not None:
            return await self._comment(thread, message)
        if message.kind not in self.config.open_on:
            return Sent(f"no issue: {message.kind} does not open one (open_on)")
        return await self._create(message)

    async def _create(self, message: Message) -> Sent:
        response = await self._request("POST", "/rest/api/2/issue", issue_of(message, self.config))
        key = tickets.json_object(response).get("key")
        if not isinstance(key, str) or not ISSUE_KEY.match(key):
            # Created, most likely: a retry would open a second issue, so this is final.
            raise PermanentError(
                f"{WHAT} answered HTTP {response.status_code} without an issue key"
            )
        return Sent(f"issue {key} opened", reference=key)

    async def _comment(self, key: str, message: Message) -> Sent:
        if not ISSUE_KEY.match(key):
            raise PermanentError(f"{WHAT}: {key!r} is not an issue key; no comment added")
        path = f"/rest/api/2/issue/{key}/comment"
        await self._request("POST", path, comment_of(message), record=f"issue {key}")
        return Sent(f"comment added to {key}", reference=key)

    async def _check(self) -> Sent:
        project = self.config.project
        path = f"/rest/api/2/project/{project}"
        await self._request("GET", path, None, record=f"project {project}")
        return Sent(f"credentials accepted; project {project} found (no issue opened)")

    async def _request(
        self, method: str, path: str, body: dict[str, Any] | None, *, record: str | None = None
    ) -> httpx.Response:
        return await request_json(
            WHAT,
            method,
            self.config.url + path,
            body,
            within=self.config.timeout,
            headers={"Authorization": self._authorization(), "Accept": "application/json"},
            refusal=tickets.refusal(WHAT, record=record, said=_named_fields),
        )

    def _authorization(self) -> str:
        if self.config.token_from is not None:
            return f"Bearer {reveal_secret(self.context, 'token_from', self.config.token_from)}"
        # The config's validator holds that email and api_token_from are set together.
        token = reveal_secret(self.context, "api_token_from", str(self.config.api_token_from))
        return tickets.basic_auth(str(self.config.email), token)
