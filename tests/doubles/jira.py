"""A Jira double: the REST API (version 2) keyshift's `jira` channel uses, as a real local
HTTP server, driven through keyshift's real client.

Documented behaviour covered:

- Authentication: basic with an account's email and API token (Jira Cloud), or a
  personal access token as a bearer (Data Center). No or wrong credentials: 401 with
  `{"errorMessages": [...], "errors": {}}`.
- `POST /rest/api/2/issue` with `{"fields": {...}}`: `project.key` must name a project,
  `summary` is required, one line of at most 255 characters, `issuetype.name` must be a
  type of the project, `labels` hold no spaces, and a field the create screen does not
  have is refused. A refusal is 400 with an `errors` map of field name to message; a
  created issue is 201 with `{"id", "key", "self"}`, keys numbered per project
  (`KS-1`, `KS-2`, ...).
- `POST /rest/api/2/issue/{key}/comment` with a non-empty `body`: 201 with the comment;
  an unknown issue is 404 ("Issue does not exist or you do not have permission to see
  it.").
- `GET /rest/api/2/project/{key}`: 200 with the project, 404 for an unknown key.
- Scripted 429 with Retry-After and 5xx (`fail`), answered before the credentials are
  checked.
"""

from __future__ import annotations

import base64
import itertools
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from tests.doubles.ticketing import Answer, Request, Scripted, serve

EMAIL = "keyshift-bot@example.test"
API_TOKEN = "jira-api-token-secret-0123"
PAT = "jira-data-center-pat-secret-4567"
PROJECT = "KS"
ISSUE_TYPES = ("Task", "Bug")
FIELDS = ("project", "summary", "description", "issuetype", "labels")
"""The fields of the double's create screen."""


@dataclass
class Issue:
    key: str
    fields: dict[str, Any]
    comments: list[str] = field(default_factory=list)


@dataclass
class JiraDouble(Scripted):
    """One Jira site with project `KS`."""

    issues: dict[str, Issue] = field(default_factory=dict)
    """Created issues by key, in order."""
    _ids: Iterator[int] = field(default_factory=lambda: itertools.count(10001))

    def channel(self, **overrides: Any) -> dict[str, Any]:
        """A `jira` channel of this site with Cloud credentials (`KS_TEST_JIRA_TOKEN`)."""
        return {
            "name": "jira-ops",
            "type": "jira",
            "url": self.url,
            "project": PROJECT,
            "email": EMAIL,
            "api_token_from": "env:KS_TEST_JIRA_TOKEN",
            **overrides,
        }

    def answer(self, request: Request) -> Answer:
        scripted = self.scripted()
        if scripted is not None:
            return scripted
        if not _authenticated(request.headers.get("authorization", "")):
            return 401, {}, _errors(["You are not authenticated. Authentication required."])
        parts = request.path.strip("/").split("/")
        if parts[:3] != ["rest", "api", "2"]:
            return 404, {}, None
        match request.method, parts[3:]:
            case "POST", ["issue"]:
                return self._create(request)
            case "POST", ["issue", key, "comment"]:
                return self._comment(key, request)
            case "GET", ["project", key]:
                if key != PROJECT:
                    return 404, {}, _errors([f"No project could be found with key '{key}'."])
                return 200, {}, {"id": "10000", "key": PROJECT, "name": "keyshift tests"}
        return 404, {}, _errors(["Not found."])

    def _create(self, request: Request) -> Answer:
        try:
            fields = request.json()["fields"]
        except (ValueError, KeyError, TypeError):
            return 400, {}, _errors(["Can not deserialize the issue."])
        errors: dict[str, str] = {}
        for name in fields:
            if name not in FIELDS:
                errors[name] = f"Field '{name}' cannot be set. It is not on the appropriate screen."
        if (fields.get("project") or {}).get("key") != PROJECT:
            errors["project"] = "Specify a valid project ID or key"
        summary = fields.get("summary")
        if not isinstance(summary, str) or not summary.strip():
            errors["summary"] = "You must specify a summary of the issue."
        elif len(summary) > 255:
            errors["summary"] = "Summary must be less than 255 characters."
        elif "\n" in summary or "\r" in summary:
            errors["summary"] = "The summary is invalid because it contains newline characters."
        if (fields.get("issuetype") or {}).get("name") not in ISSUE_TYPES:
            errors["issuetype"] = "Specify a valid issue type"
        labels = fields.get("labels", [])
        if not isinstance(labels, list) or any(" " in str(label) for label in labels):
            errors["labels"] = "The label contains spaces which is invalid."
        if not isinstance(fields.get("description", ""), str):
            errors["description"] = "Operation value must be a string"
        if errors:
            return 400, {}, {"errorMessages": [], "errors": errors}
        issue_id = next(self._ids)
        key = f"{PROJECT}-{len(self.issues) + 1}"
        self.issues[key] = Issue(key, fields)
        return 201, {}, {"id": str(issue_id), "key": key, "self": f"{self.url}/issue/{issue_id}"}

    def _comment(self, key: str, request: Request) -> Answer:
        issue = self.issues.get(key)
        if issue is None:
            message = "Issue does not exist or you do not have permission to see it."
            return 404, {}, _errors([message])
        try:
            body = request.json()["body"]
        except (ValueError, KeyError, TypeError):
            body = None
        if not isinstance(body, str) or not body.strip():
            return (
                400,
                {},
                {"errorMessages": [], "errors": {"comment": "Comment body can not be empty!"}},
            )
        issue.comments.append(body)
        return 201, {}, {"id": str(10000 + len(issue.comments)), "body": body}


def _authenticated(authorization: str) -> bool:
    basic = base64.b64encode(f"{EMAIL}:{API_TOKEN}".encode()).decode()
    return authorization in (f"Basic {basic}", f"Bearer {PAT}")


def _errors(messages: list[str]) -> dict[str, Any]:
    return {"errorMessages": messages, "errors": {}}


@pytest.fixture
def jira() -> Iterator[JiraDouble]:
    yield from serve(JiraDouble())
