"""`servicenow`: one ServiceNow incident per rotation on the exception path, and a work
note on it for each later event of that rotation.

Documented behaviour of the ServiceNow Table API this follows:

- Authentication: basic (`username` + `password_from`) or an OAuth access token as a
  bearer token (`token_from`). Missing or refused credentials are 401 and a role that
  may not write the table 403, each with `{"error": {"message", "detail"}, "status":
  "failure"}`.
- `POST /api/now/table/{table}` (with `Accept: application/json`) creates a record:
  201 with `{"result": {"sys_id", "number", ...}}`. `short_description` holds 160
  characters; `urgency` and `impact` are 1 (high) to 3 (low). A refused record is 400
  with the same error body.
- `PATCH /api/now/table/{table}/{sys_id}` with `{"work_notes"}` adds a work note: 200;
  a record that does not exist (or that ACLs hide) is 404.
- `GET /api/now/table/{table}?sysparm_limit=1`: 200 if the account may read the table
  (what `keyshift notifications test` checks, so a test opens no incident).
- Throttling (rate limit rules) is 429 with Retry-After; outages 5xx.

The incident's `sys_id` is the delivery's `reference` (what later events patch);
`correlation_id` holds the rotation id, so the incident can be found from keyshift's
side too.
"""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Any, ClassVar
from urllib.parse import urlencode

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

SHORT_DESCRIPTION_MAX = 160
TEXT_MAX = 4000
"""The default length of an incident's description and journal fields."""
TABLE_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
SYS_ID = re.compile(r"^[0-9a-f]{32}$")
WHAT = "ServiceNow"


class ServiceNowConfig(BaseModel):
    """A ServiceNow instance and table that incidents are opened in."""

    model_config = ConfigDict(use_attribute_docstrings=True, extra="forbid", frozen=True)

    instance_url: str
    """The instance's base URL, e.g. `https://example.service-now.com` (https://;
    http:// only to this host)."""
    username: str | None = None
    """Basic authentication: the integration user, with `password_from`."""
    password_from: SecretRef | None = None
    """Basic authentication: `env:NAME` or `file:/path` holding its password."""
    token_from: SecretRef | None = None
    """OAuth: `env:NAME` or `file:/path` holding an access token (sent as a bearer)."""
    table: str = "incident"
    """The table records are created in."""
    assignment_group: str | None = None
    """The group incidents are assigned to (its sys_id or name)."""
    caller_id: str | None = None
    """The caller of the incidents (a user's sys_id or user name)."""
    urgency: int = Field(default=2, ge=1, le=3)
    """1 (high) to 3 (low)."""
    impact: int = Field(default=2, ge=1, le=3)
    """1 (high) to 3 (low)."""
    open_on: list[str] = Field(default_factory=lambda: list(tickets.EXCEPTION_PATH))
    """Event kinds that open an incident when their rotation has none yet (default:
    failed, rolled back, needs attention, stuck); every later event adds a work note."""
    timeout: Duration = timedelta(seconds=10)
    """How long one delivery attempt may take."""

    @field_validator("instance_url")
    @classmethod
    def _secure(cls, url: str) -> str:
        return tickets.secure_url(url)

    @field_validator("table")
    @classmethod
    def _table_name(cls, table: str) -> str:
        if not TABLE_NAME.match(table):
            raise ValueError("must be a table name: a lowercase letter, then a-z, 0-9 or _")
        return table

    @field_validator("open_on")
    @classmethod
    def _known(cls, open_on: list[str]) -> list[str]:
        return tickets.known_kinds(open_on)

    @field_validator("timeout")
    @classmethod
    def _positive_timeout(cls, timeout: timedelta) -> timedelta:
        return positive(timeout, "timeout")

    @model_validator(mode="after")
    def _one_way_in(self) -> ServiceNowConfig:
        if (self.username is None) != (self.password_from is None):
            raise ValueError("set username and password_from together")
        if (self.password_from is None) == (self.token_from is None):
            raise ValueError("set either username + password_from or token_from")
        return self


def incident_of(message: Message, config: ServiceNowConfig) -> dict[str, Any]:
    """The body that creates the incident of an event."""
    body: dict[str, Any] = {
        "short_description": tickets.one_line(message.title, SHORT_DESCRIPTION_MAX),
        "description": cut(plain_text(message, title=False), TEXT_MAX),
        "urgency": str(config.urgency),
        "impact": str(config.impact),
    }
    rotation_id = message.payload.get("rotation_id")
    if rotation_id:
        body["correlation_id"] = str(rotation_id)
        body["correlation_display"] = "keyshift"
    if config.assignment_group is not None:
        body["assignment_group"] = config.assignment_group
    if config.caller_id is not None:
        body["caller_id"] = config.caller_id
    return body


def work_note_of(message: Message) -> dict[str, Any]:
    """The body of the work note a later event adds."""
    return {"work_notes": cut(plain_text(message, title=True), TEXT_MAX)}


def _error_message(body: Any) -> str | None:
    """What a refusal may quote: ServiceNow's error message (a fixed phrase such as
    "Mandatory field missing"), never its `detail` (which may echo what was sent)."""
    error = body.get("error") if isinstance(body, dict) else None
    message = error.get("message") if isinstance(error, dict) else None
    return tickets.one_line(message, 80) if isinstance(message, str) and message.strip() else None


class ServiceNowChannel:
    """Opens a ServiceNow incident for a rotation on the exception path and adds work
    notes to it."""

    kind: ClassVar[str] = "servicenow"
    Config: ClassVar[type[BaseModel]] = ServiceNowConfig

    def __init__(self, config: ServiceNowConfig, context: PluginContext) -> None:
        self.config = config
        self.context = context

    async def send(self, message: Message, *, dedup_key: str, thread: str | None) -> Sent:
        """Adds a work note to `thread` (a sys_id) when the rotation has an incident;
        else opens one if the event's kind is in `open_on`, or sends nothing. Before
        opening, it looks for an incident whose `correlation_id` is the rotation: an
        earlier attempt whose answer was lost may have opened it, and a retry must not
        open a second."""
        if message.kind == kinds.NOTIFICATION_TEST:
            return await self._check()
        if thread is not None:
            return await self._work_note(thread, message)
        if message.kind not in self.config.open_on:
            return Sent(f"no incident: {message.kind} does not open one (open_on)")
        return await self._create(message)

    @property
    def _table(self) -> str:
        return f"/api/now/table/{self.config.table}"

    async def _create(self, message: Message) -> Sent:
        rotation_id = message.payload.get("rotation_id")
        if rotation_id:
            found = await self._opened_for(str(rotation_id))
            if found is not None:
                return Sent(f"{self.config.table} {found[1]} already open", reference=found[0])
        response = await self._request("POST", self._table, incident_of(message, self.config))
        result = tickets.json_object(response).get("result")
        sys_id = result.get("sys_id") if isinstance(result, dict) else None
        if not isinstance(sys_id, str) or not SYS_ID.match(sys_id):
            # Created, most likely: the next event of the rotation finds it by its
            # correlation_id, but this answer names nothing to comment on; final.
            raise PermanentError(f"{WHAT} answered HTTP {response.status_code} without a sys_id")
        number = result.get("number") if isinstance(result, dict) else None
        return Sent(f"{self.config.table} {number or sys_id} opened", reference=sys_id)

    async def _opened_for(self, rotation_id: str) -> tuple[str, str] | None:
        """(sys_id, number) of the incident an earlier attempt opened for the rotation."""
        query = urlencode(
            {
                "sysparm_query": f"correlation_id={rotation_id}",
                "sysparm_fields": "sys_id,number",
                "sysparm_limit": "1",
            }
        )
        response = await self._request("GET", f"{self._table}?{query}", None)
        rows = tickets.json_object(response).get("result")
        if not isinstance(rows, list) or not rows or not isinstance(rows[0], dict):
            return None
        sys_id = rows[0].get("sys_id")
        if not isinstance(sys_id, str) or not SYS_ID.match(sys_id):
            return None
        return sys_id, str(rows[0].get("number") or sys_id)

    async def _work_note(self, sys_id: str, message: Message) -> Sent:
        if not SYS_ID.match(sys_id):
            raise PermanentError(f"{WHAT}: {sys_id!r} is not a sys_id; no work note added")
        path = f"{self._table}/{sys_id}"
        record = f"{self.config.table} {sys_id}"
        response = await self._request("PATCH", path, work_note_of(message), record=record)
        result = tickets.json_object(response).get("result")
        number = result.get("number") if isinstance(result, dict) else None
        return Sent(f"work note added to {number or sys_id}", reference=sys_id)

    async def _check(self) -> Sent:
        path = f"{self._table}?sysparm_limit=1&sysparm_fields=sys_id"
        await self._request("GET", path, None, record=f"table {self.config.table}")
        return Sent(f"credentials accepted; table {self.config.table} readable (nothing opened)")

    async def _request(
        self, method: str, path: str, body: dict[str, Any] | None, *, record: str | None = None
    ) -> httpx.Response:
        return await request_json(
            WHAT,
            method,
            self.config.instance_url + path,
            body,
            within=self.config.timeout,
            headers={"Authorization": self._authorization(), "Accept": "application/json"},
            refusal=tickets.refusal(WHAT, record=record, said=_error_message),
        )

    def _authorization(self) -> str:
        if self.config.token_from is not None:
            return f"Bearer {reveal_secret(self.context, 'token_from', self.config.token_from)}"
        # The config's validator holds that username and password_from are set together.
        password = reveal_secret(self.context, "password_from", str(self.config.password_from))
        return tickets.basic_auth(str(self.config.username), password)
