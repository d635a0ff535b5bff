"""`spring_refresh`: make a Spring application reload its configuration through
Spring Cloud's actuator `refresh` endpoint, after the new value was published to
the store it reads (Config Server, Vault, Key Vault, a Kubernetes Secret, ...).

`POST {url}` answers 200 with the JSON array of property keys that changed; the
step records those key names (never values) as `changed_keys`. The endpoint is
exposed only with `management.endpoints.web.exposure.include=refresh`; otherwise
the application answers 404. Calls may authenticate with HTTP Basic (Spring
Security's usual setup) or a bearer token.

Connection errors, timeouts, 429 and 5xx are retried with exponential backoff
and jitter until `timeout` has passed. Errors and details name the host only:
the URL may carry a token in its query.
"""

from __future__ import annotations

import base64
import json
from datetime import timedelta
from typing import Any, ClassVar, Final

import httpx
from pydantic import BaseModel, ConfigDict, ValidationInfo, field_validator, model_validator

from keyshift.context import PluginContext
from keyshift.domain.durations import Duration, format_duration
from keyshift.domain.location import http_url
from keyshift.domain.states import Phase
from keyshift.errors import ConfigError, PermanentError, TransientError
from keyshift.sources import SecretRef
from keyshift.targets import base
from keyshift.targets.base import PreflightResult, Readiness, StepResult, positive
from keyshift.targets.web import (
    MAX_WAIT,
    UrlTarget,
    attempt,
    backoff_wait,
)

ACCEPT: Final = "application/vnd.spring-boot.actuator.v3+json, application/json"
EXPOSURE_HINT: Final = "management.endpoints.web.exposure.include=refresh"
MAX_KEYS: Final = 1000
"""Changed keys kept in the step detail; a longer list is cut to this many."""
PREFLIGHT_TIMEOUT: Final = timedelta(seconds=5)


class SpringRefreshConfig(BaseModel):
    """The refresh endpoint to call and how to authenticate and retry."""

    model_config = ConfigDict(use_attribute_docstrings=True, extra="forbid", frozen=True)

    url: str
    """Full URL of the refresh endpoint, e.g. `https://app:8080/actuator/refresh`. Its
    parent (`.../actuator`) is the discovery page preflight reads."""
    username: str | None = None
    """User for HTTP Basic authentication; needs `password_from`."""
    password_from: SecretRef | None = None
    """`env:NAME`, `file:/path` or `credential:NAME` naming the Basic password."""
    token_from: SecretRef | None = None
    """Reference naming a bearer token, instead of Basic authentication."""
    timeout: Duration = timedelta(seconds=60)
    """How long to keep retrying before the step fails as transient."""
    request_timeout: Duration = timedelta(seconds=10)
    """How long one request may take; a slower answer counts as a failed try."""
    backoff: Duration = timedelta(seconds=1)
    """Wait before the first retry; doubles for each further one (plus jitter)."""
    verify_tls: bool = True
    """Check the server's TLS certificate. Turn off only for an application on a private CA."""

    @field_validator("url")
    @classmethod
    def _refresh_url(cls, url: str) -> str:
        http_url(url, credentials_message="url must not carry credentials; use username")
        if not httpx.URL(url).path.rstrip("/").rpartition("/")[2]:
            raise ValueError("url must name the refresh endpoint, e.g. .../actuator/refresh")
        return url

    @field_validator("timeout", "request_timeout", "backoff")
    @classmethod
    def _positive(cls, value: timedelta, info: ValidationInfo) -> timedelta:
        return positive(value, str(info.field_name))

    @model_validator(mode="after")
    def _one_way_to_authenticate(self) -> SpringRefreshConfig:
        if (self.username is None) != (self.password_from is None):
            raise ValueError("set username and password_from together")
        if self.token_from is not None and self.username is not None:
            raise ValueError("use either username/password_from or token_from, not both")
        return self


class SpringRefreshTarget(UrlTarget[SpringRefreshConfig]):
    """Asks a Spring application to reload its configuration after a publish."""

    kind: ClassVar[str] = "spring_refresh"
    phase: ClassVar[Phase] = Phase.RELOAD
    Config: ClassVar[type[BaseModel]] = SpringRefreshConfig

    def __init__(self, config: SpringRefreshConfig, context: PluginContext) -> None:
        super().__init__(config, context)
        url = httpx.URL(config.url)
        path = url.path.rstrip("/")
        parent, _, self._endpoint = path.rpartition("/")
        self._discovery_url = url.copy_with(path=parent or "/", query=None)

    async def preflight(self, request: base.PreflightRequest) -> PreflightResult:
        """GET the actuator discovery page (the URL's parent) and look for the endpoint's
        link. Never POSTs, so nothing is reloaded.

        Blocked when the endpoint is not listed or the page is missing (404: not exposed,
        or discovery turned off), when the credentials are refused, when the application
        cannot be reached or answers an error.
        """
        try:
            headers = self._auth_headers()
        except PermanentError as exc:
            return PreflightResult(Readiness.BLOCKED, str(exc))
        timeout = min(self.config.request_timeout, PREFLIGHT_TIMEOUT)
        try:
            async with self._client(timeout) as client:
                response = await client.get(self._discovery_url, headers=headers)
        except httpx.HTTPError as exc:
            # Only the class name: library texts may quote the URL.
            return PreflightResult(
                Readiness.BLOCKED, f"{self._host} is unreachable: {type(exc).__name__}"
            )
        status = response.status_code
        if status == 404:
            return PreflightResult(
                Readiness.BLOCKED,
                f"{self._host} has no actuator discovery page (HTTP 404): the "
                f"{self._endpoint} endpoint is not exposed ({EXPOSURE_HINT}) or discovery is off",
            )
        if status in (401, 403):
            return PreflightResult(Readiness.BLOCKED, self._refused(status))
        if not 200 <= status < 300:
            return PreflightResult(
                Readiness.BLOCKED, f"{self._host} actuator answered HTTP {status}"
            )
        if self._endpoint not in _links(response):
            return PreflightResult(
                Readiness.BLOCKED,
                f"{self._host} does not expose the {self._endpoint} endpoint; "
                f"add it to {EXPOSURE_HINT.partition('=')[0]}",
            )
        return PreflightResult(Readiness.READY)

    async def publish(self, request: base.PublishRequest) -> StepResult:
        """POST the refresh. Repeatable: a second refresh reloads the same values and
        reports no changed keys."""
        return await self._refresh("after publishing")

    async def rollback(self, request: base.RollbackRequest) -> StepResult:
        """POST the refresh again: by now the store holds the restored value, so the
        application reloads it. Repeatable like publish."""
        return await self._refresh("after rollback")

    def _client(self, timeout: timedelta) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            timeout=timeout.total_seconds(),
            follow_redirects=False,
            verify=self.config.verify_tls,
        )

    def _auth_headers(self) -> dict[str, str]:
        """Accept plus Authorization. Values are read here and go into headers only."""
        headers = {"Accept": ACCEPT}
        try:
            if self.config.token_from is not None:
                token = self.context.secret("token_from", self.config.token_from)
                headers["Authorization"] = f"Bearer {token.reveal()}"
            elif self.config.username is not None and self.config.password_from is not None:
                password = self.context.secret("password_from", self.config.password_from)
                pair = f"{self.config.username}:{password.reveal()}".encode()
                headers["Authorization"] = f"Basic {base64.b64encode(pair).decode('ascii')}"
        except ConfigError as exc:
            raise PermanentError(f"spring_refresh credentials for {self._host}: {exc}") from None
        return headers

    async def _refresh(self, when: str) -> StepResult:
        """POST until a 2xx, a failure retrying cannot fix, or `timeout` has passed."""
        headers = self._auth_headers()
        deadline = self.context.now() + self.config.timeout
        attempts = 0
        async with self._client(self.config.request_timeout) as client:
            while True:
                attempts += 1
                outcome = await attempt(
                    client.post(self.config.url, headers=headers),
                    f"refresh of {self._host}",
                    self._refusal,
                )
                if outcome.failure is None:
                    detail: dict[str, Any] = {
                        "status": outcome.status,
                        "attempts": attempts,
                        "host": self._host,
                        "changed_keys": _changed_keys(outcome.response),
                    }
                    return StepResult(detail)
                remaining = (deadline - self.context.now()).total_seconds()
                asked = outcome.retry_after or 0.0
                if remaining <= 0 or asked > min(remaining, MAX_WAIT):
                    # Out of time, or the application asks for a pause longer than is left:
                    # the engine retries the step later, on its own schedule.
                    raise TransientError(
                        f"refresh of {self._host} {when} failed after {attempts} attempts "
                        f"within {format_duration(self.config.timeout)}: {outcome.failure}",
                        retry_after=outcome.retry_after,
                    )
                wait = backoff_wait(self.config.backoff, attempts - 1, outcome.retry_after)
                await self.context.sleep(min(wait, remaining))

    def _refusal(self, response: httpx.Response) -> str | None:
        """Why an answer that retrying will not change was refused, for the statuses a
        misconfigured endpoint or credential gives."""
        status = response.status_code
        if status == 404:
            return (
                f"{self._host} answered HTTP 404: the {self._endpoint} endpoint is not exposed; "
                f"set {EXPOSURE_HINT}"
            )
        if status in (401, 403):
            return self._refused(status)
        return None

    def _refused(self, status: int) -> str:
        if status == 401:
            given = "no credentials are configured" if not self._has_auth() else "check them"
            return f"{self._host} refused the credentials (HTTP 401): {given}"
        return (
            f"{self._host} accepted the credentials but denies the {self._endpoint} endpoint "
            "(HTTP 403): the user lacks the actuator role"
        )

    def _has_auth(self) -> bool:
        return self.config.token_from is not None or self.config.username is not None


def _changed_keys(response: httpx.Response | None) -> list[str] | None:
    """The property keys of a refresh answer; None when the body is not a list of names
    (an empty body, or something other than Spring Cloud's refresh endpoint)."""
    if response is None:
        return None
    try:
        body = json.loads(response.content) if response.content else None
    except ValueError:
        return None
    if not isinstance(body, list) or not all(isinstance(key, str) for key in body):
        return None
    return body[:MAX_KEYS]


def _links(response: httpx.Response) -> set[str]:
    """The endpoint ids listed under `_links` of a discovery page; empty if it has none."""
    try:
        body = response.json()
    except ValueError:
        return set()
    links = body.get("_links") if isinstance(body, dict) else None
    return set(links) if isinstance(links, dict) else set()
