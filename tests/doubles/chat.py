"""Doubles of the chat webhooks keyshift posts to: a Slack incoming webhook and a Microsoft
Teams Workflows webhook. Real local HTTP servers, driven through keyshift's real client.

Documented behaviour covered:

- Slack: the URL path carries the token (`/services/T…/B…/…`); a message is JSON with
  `text` and/or `blocks`; at most 50 blocks, a `header` of plain text of at most 150
  characters, `section` text of at most 3,000, at most 10 `fields` each of at most 2,000;
  success is 200 with body `ok`; a malformed body is 400 `invalid_payload`; an archived
  channel 410 `channel_is_archived`; throttling 429 with `Retry-After`; outages 5xx.
- Teams: the body is `{"type": "message", "attachments": [...]}` with one attachment of
  content type `application/vnd.microsoft.card.adaptive` whose content is an
  `AdaptiveCard`; success is 202 Accepted; a malformed body is 400; throttling 429 with
  `Retry-After`; outages 5xx.

Failures are scripted: `fail(status, times, retry_after=...)` answers the next `times`
posts with `status`; `archived` makes a Slack channel archived for good.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import ThreadingHTTPServer
from typing import Any

import pytest

from tests.doubles.http import NoDelayHandler, serving


@dataclass
class _Failure:
    status: int
    times: int
    retry_after: str | None = None


@dataclass
class ChatWebhook:
    """One webhook: `kind` is `slack` or `teams`."""

    kind: str
    messages: list[dict[str, Any]] = field(default_factory=list)
    """Every body it accepted, in order."""
    attempts: int = 0
    archived: bool = False
    failures: list[_Failure] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    url: str = ""

    def fail(self, status: int, times: int = 1, *, retry_after: float | None = None) -> None:
        after = None if retry_after is None else str(int(retry_after))
        self.failures.append(_Failure(status, times, after))

    def texts(self) -> list[str]:
        """Each accepted message as one string, for looking for names and values."""
        return [json.dumps(m) for m in self.messages]

    def answer(self, body: bytes) -> tuple[int, dict[str, str], bytes]:
        with self.lock:
            self.attempts += 1
            if self.failures:
                failure = self.failures[0]
                failure.times -= 1
                if failure.times <= 0:
                    self.failures.pop(0)
                headers = {"Retry-After": failure.retry_after} if failure.retry_after else {}
                return failure.status, headers, b"rate_limited" if failure.status == 429 else b""
            if self.kind == "slack" and self.archived:
                return 410, {}, b"channel_is_archived"
            try:
                message = json.loads(body)
            except ValueError:
                return 400, {}, b"invalid_payload"
            problem = _slack_problem(message) if self.kind == "slack" else _teams_problem(message)
            if problem:
                return 400, {}, f"invalid_payload: {problem}".encode()
            self.messages.append(message)
        return (200, {}, b"ok") if self.kind == "slack" else (202, {}, b"")


def _slack_problem(message: Any) -> str | None:
    if not isinstance(message, dict) or not (message.get("text") or message.get("blocks")):
        return "no text or blocks"
    blocks = message.get("blocks") or []
    if len(blocks) > 50:
        return "more than 50 blocks"
    for block in blocks:
        kind = block.get("type")
        if kind == "header":
            text = block.get("text") or {}
            if text.get("type") != "plain_text" or len(text.get("text", "")) > 150:
                return "header must be plain_text of at most 150 characters"
        elif kind == "section":
            if len((block.get("text") or {}).get("text", "")) > 3000:
                return "section text longer than 3000"
            fields = block.get("fields") or []
            if len(fields) > 10 or any(len(f.get("text", "")) > 2000 for f in fields):
                return "more than 10 fields, or a field longer than 2000"
            if not block.get("text") and not fields:
                return "section without text or fields"
        elif kind not in ("context", "divider", "actions"):
            return f"unknown block type {kind}"
    return None


def _teams_problem(message: Any) -> str | None:
    if not isinstance(message, dict) or message.get("type") != "message":
        return "type must be message"
    attachments = message.get("attachments") or []
    if not attachments:
        return "no attachments"
    for attachment in attachments:
        if attachment.get("contentType") != "application/vnd.microsoft.card.adaptive":
            return "attachment is not an adaptive card"
        content = attachment.get("content") or {}
        if content.get("type") != "AdaptiveCard" or not content.get("body"):
            return "content is not an AdaptiveCard with a body"
    return None


def _serve(hook: ChatWebhook, path: str) -> Iterator[ChatWebhook]:
    class Handler(NoDelayHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            if self.path != path:
                status, headers, answer = 404, {}, b"no_service"
            else:
                status, headers, answer = hook.answer(body)
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        def log_message(self, format: str, *args: Any) -> None:
            pass  # keep test output quiet

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    hook.url = f"http://127.0.0.1:{server.server_address[1]}{path}"
    with serving(server):
        yield hook


SLACK_PATH = "/services/T0KEYSHIFT/B0KEYSHIFT/slacktokensecret123"
TEAMS_PATH = "/workflows/abc/triggers/manual/paths/invoke?sig=teamstokensecret456"


@pytest.fixture
def slack() -> Iterator[ChatWebhook]:
    yield from _serve(ChatWebhook("slack"), SLACK_PATH)


@pytest.fixture
def teams() -> Iterator[ChatWebhook]:
    yield from _serve(ChatWebhook("teams"), TEAMS_PATH)
