"""A ServiceNow double: the Table API keyshift's `servicenow` channel uses, as a real local
HTTP server, driven through keyshift's real client.

Documented behaviour covered:

- Authentication: basic with an integration user's name and password, or an OAuth
  access token as a bearer. No or wrong credentials: 401 with `{"error": {"message":
  "User Not Authenticated", "detail": ...}, "status": "failure"}`.
- Answers are JSON only when asked for (`Accept: application/json`); otherwise 406.
- `POST /api/now/table/incident`: a JSON object of field values; `short_description` is
  mandatory (a data policy: 400 "Operation Failed"), `urgency` and `impact` are 1 to 3,
  an unknown table is 400 "Invalid table". Created: 201 with `{"result": {"sys_id",
  "number", ...}}`, numbers `INC0010001`, `INC0010002`, ... (This double refuses a
  short description over 160 characters, which an instance would cut.)
- `PATCH /api/now/table/incident/{sys_id}` with `work_notes`: 200 with the record; an
  unknown sys_id is 404 "No Record found".
- `GET /api/now/table/incident`: 200 with `{"result": [...]}`, filtered by an encoded
  `sysparm_query` of `field=value` terms joined by `^`, cut to `sysparm_limit`, and
  holding only `sysparm_fields` when given.
- A lost answer (`lose_next_answer`): the next create is carried out and answered 504,
  as when a gateway times out after the instance created the record.
- Scripted 429 with Retry-After and 5xx (`fail`), answered before the credentials are
  checked.
"""

from __future__ import annotations

import base64
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

import pytest

from tests.doubles.ticketing import Answer, Request, Scripted, serve

USERNAME = "keyshift.integration"
PASSWORD = "servicenow-password-secret-89ab"
TOKEN = "servicenow-oauth-token-secret-cdef"
TABLE = "incident"
FIELDS = (
    "short_description",
    "description",
    "urgency",
    "impact",
    "assignment_group",
    "caller_id",
    "correlation_id",
    "correlation_display",
)


@dataclass
class Incident:
    sys_id: str
    number: str
    fields: dict[str, Any]
    work_notes: list[str] = field(default_factory=list)

    def result(self) -> dict[str, Any]:
        return {**self.fields, "sys_id": self.sys_id, "number": self.number, "state": "1"}


@dataclass
class ServiceNowDouble(Scripted):
    """One instance with the `incident` table."""

    incidents: dict[str, Incident] = field(default_factory=dict)
    """Created incidents by sys_id, in order."""
    lose_next_answer: bool = False

    def channel(self, **overrides: Any) -> dict[str, Any]:
        """A `servicenow` channel of this instance with basic authentication (the password
        in `KS_TEST_SNOW_PASSWORD`)."""
        return {
            "name": "snow-ops",
            "type": "servicenow",
            "instance_url": self.url,
            "username": USERNAME,
            "password_from": "env:KS_TEST_SNOW_PASSWORD",
            "assignment_group": "Platform Operations",
            **overrides,
        }

    def numbers(self) -> list[str]:
        return [i.number for i in self.incidents.values()]

    def answer(self, request: Request) -> Answer:
        scripted = self.scripted()
        if scripted is not None:
            return scripted
        if not _authenticated(request.headers.get("authorization", "")):
            return 401, {}, _error("User Not Authenticated", "Required to provide Auth information")
        if "application/json" not in request.headers.get("accept", ""):
            return 406, {}, None
        parts = request.path.strip("/").split("/")
        if parts[:3] != ["api", "now", "table"] or len(parts) < 4:
            return 400, {}, _error("Requested URI does not represent any resource", None)
        if parts[3] != TABLE:
            return 400, {}, _error(f"Invalid table {parts[3]}", None)
        match request.method, parts[4:]:
            case "POST", []:
                created = self._create(request)
                if self.lose_next_answer and created[0] == 201:
                    self.lose_next_answer = False
                    return 504, {}, None
                return created
            case "PATCH", [sys_id]:
                return self._work_note(sys_id, request)
            case "GET", []:
                return 200, {}, {"result": self._query(request.query)}
        return 405, {}, _error("Method not Supported", None)

    def _query(self, query: str) -> list[dict[str, Any]]:
        params = dict(parse_qsl(query))
        terms = [t.split("=", 1) for t in params.get("sysparm_query", "").split("^") if t]
        found = [
            i.result()
            for i in self.incidents.values()
            if all(str(i.result().get(name)) == value for name, value in terms)
        ]
        found = found[: int(params.get("sysparm_limit", "10000"))]
        if "sysparm_fields" in params:
            keep = params["sysparm_fields"].split(",")
            found = [{k: v for k, v in r.items() if k in keep} for r in found]
        return found

    def _create(self, request: Request) -> Answer:
        try:
            fields = request.json()
        except ValueError:
            fields = None
        if not isinstance(fields, dict):
            return 400, {}, _error("Exception while reading request", "Not a JSON object")
        unknown = [name for name in fields if name not in FIELDS]
        if unknown:
            return 400, {}, _error("Invalid field", ", ".join(unknown))
        short = fields.get("short_description")
        if not isinstance(short, str) or not short.strip():
            detail = "Data Policy Exception: Short description is mandatory"
            return 400, {}, _error("Operation Failed", detail)
        if len(short) > 160:
            return 400, {}, _error("Operation Failed", "Short description is too long")
        for name in ("urgency", "impact"):
            if str(fields.get(name, "3")) not in ("1", "2", "3"):
                return 400, {}, _error("Operation Failed", f"Invalid choice for {name}")
        sys_id = uuid.uuid4().hex
        number = f"INC{10001 + len(self.incidents):07d}"
        self.incidents[sys_id] = Incident(sys_id, number, fields)
        return 201, {}, {"result": self.incidents[sys_id].result()}

    def _work_note(self, sys_id: str, request: Request) -> Answer:
        incident = self.incidents.get(sys_id)
        if incident is None:
            detail = "Record doesn't exist or ACL restricts the record retrieval"
            return 404, {}, _error("No Record found", detail)
        try:
            note = request.json().get("work_notes")
        except (ValueError, AttributeError):
            note = None
        if isinstance(note, str) and note.strip():
            incident.work_notes.append(note)
        return 200, {}, {"result": incident.result()}


def _authenticated(authorization: str) -> bool:
    basic = base64.b64encode(f"{USERNAME}:{PASSWORD}".encode()).decode()
    return authorization in (f"Basic {basic}", f"Bearer {TOKEN}")


def _error(message: str, detail: str | None) -> dict[str, Any]:
    return {"error": {"message": message, "detail": detail}, "status": "failure"}


@pytest.fixture
def servicenow() -> Iterator[ServiceNowDouble]:
    yield from serve(ServiceNowDouble())
