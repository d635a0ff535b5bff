"""The host agent: file writes and reloads performed by `keyshift agent run` on a managed host.

keyshift pushes each step to the agent over HTTPS: `agent_secret_sync` writes the value
at keys of a JSON, YAML, env or ini file there (the `file` target's writer, run by the
agent), `iis_recycle` recycles an IIS application pool and `systemd_reload` reloads or
restarts a systemd unit. An action names its agent by `agent_id`, which must be the
`agent_id` (or the name) of an `agent` integration: the agent's URL, the CA that signed
its certificate and where the shared signing key is read.

Every request is signed with HMAC-SHA256 over the method, the path, a timestamp, a
one-time nonce and the body's SHA-256 (`string_to_sign`); the agent refuses a bad
signature, a timestamp more than five minutes off and a nonce it has seen. The agent
checks every path, pool and unit against its own allow-list, so a compromised server
cannot make it write anywhere else. Values travel in request bodies over TLS only;
answers, errors and step details carry paths, keys and names.

Older tools name an agent by `config.agent_url` instead, and estates written for them may
name an `agent_id` that no agent integration declares yet. Such an action is accepted, with
a warning at `plan`/`apply`, but never sent a value: it is manual review at preflight, and
at rotation time its step is recorded as not delivered (the run ends needs_attention and
the old version stays).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import secrets
import ssl
import uuid
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, ClassVar, Final, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, field_validator

from keyshift.context import PluginContext
from keyshift.domain.durations import Duration
from keyshift.domain.location import http_url, url_origin
from keyshift.domain.secret import Secret
from keyshift.domain.states import Phase
from keyshift.errors import (
    ConfigError,
    KeyshiftError,
    NotDelivered,
    PermanentError,
    TransientError,
)
from keyshift.sources import SecretRef
from keyshift.targets import base
from keyshift.targets.base import BaseTarget, PreflightResult, Readiness, StepResult, positive
from keyshift.targets.file import FileConfig, FileFormat, field_values
from keyshift.targets.web import attempt

if TYPE_CHECKING:
    import httpx

SIGNATURE_HEADER: Final = "X-Keyshift-Signature"
TIMESTAMP_HEADER: Final = "X-Keyshift-Timestamp"
NONCE_HEADER: Final = "X-Keyshift-Nonce"
MAX_CLOCK_SKEW: Final = timedelta(minutes=5)
"""A request whose timestamp is further than this from the agent's clock is refused."""
MIN_KEY_LENGTH: Final = 32
"""Characters the shared signing key must have at least (`openssl rand -hex 32` gives 64)."""
PREFLIGHT_TIMEOUT: Final = timedelta(seconds=10)
AGENT_TYPES: Final = ("agent_secret_sync", "iis_recycle", "systemd_reload")
"""The action types that run through a host agent and take `agent_id`."""

_UNIT = re.compile(r"^[A-Za-z0-9_@:.\\][A-Za-z0-9_@:.\\-]{0,255}$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


# --- signing -------------------------------------------------------------------------------


def signing_key(secret: Secret, path: str = "key_from") -> bytes:
    """The HMAC key from the shared secret; ConfigError naming `path` when it is too short."""
    text = secret.reveal()
    if len(text) < MIN_KEY_LENGTH:
        raise ConfigError(
            path,
            f"the agent signing key must have at least {MIN_KEY_LENGTH} characters "
            "(e.g. `openssl rand -hex 32`)",
        )
    return text.encode("utf-8")


def string_to_sign(method: str, path: str, timestamp: str, nonce: str, body: bytes) -> bytes:
    """What the signature covers: method, path, timestamp, nonce and the body's SHA-256,
    one per line."""
    digest = hashlib.sha256(body).hexdigest()
    return "\n".join([method.upper(), path, timestamp, nonce, digest]).encode("utf-8")


def signature(
    key: bytes, method: str, path: str, *, timestamp: str, nonce: str, body: bytes
) -> str:
    """The hex HMAC-SHA256 of `string_to_sign` under `key`."""
    message = string_to_sign(method, path, timestamp, nonce, body)
    return hmac.new(key, message, hashlib.sha256).hexdigest()


def signed_headers(
    key: bytes, method: str, path: str, body: bytes, now: datetime
) -> dict[str, str]:
    """Headers that authenticate one request: timestamp (Unix seconds), a fresh nonce and
    the signature."""
    timestamp = str(int(now.timestamp()))
    nonce = secrets.token_hex(16)
    return {
        TIMESTAMP_HEADER: timestamp,
        NONCE_HEADER: nonce,
        SIGNATURE_HEADER: signature(key, method, path, timestamp=timestamp, nonce=nonce, body=body),
    }


# --- the integration -----------------------------------------------------------------------


def agent_uuid(agent_id: str) -> str:
    """An agent id in its canonical form (lowercase UUID); the agent's own agent.yaml and
    the estate's `agent` integration both validate with it."""
    try:
        return str(uuid.UUID(agent_id))
    except ValueError:
        raise ValueError(
            "agent_id must be a UUID, e.g. 11111111-1111-1111-1111-111111111111"
        ) from None


class AgentIntegration(BaseModel):
    """A host agent (`keyshift agent run`) keyshift pushes file writes and reloads to:
    its id, its HTTPS address, the CA to trust for its certificate and where the shared
    request-signing key is read."""

    model_config = ConfigDict(use_attribute_docstrings=True, extra="forbid", frozen=True)

    agent_id: str
    """The agent's id, a UUID; actions name it in their `agent_id` (or name the integration).
    Must equal `agent_id` in the agent's own agent.yaml."""
    url: str
    """The agent's address, `https://host:port`."""
    key_from: SecretRef
    """`env:NAME` or `file:/path` naming the shared signing key (at least 32 characters),
    the same the agent reads."""
    ca_bundle: str | None = None
    """PEM file of the CA (or the self-signed certificate) to trust for the agent's TLS
    certificate, instead of the system store."""
    timeout: Duration = timedelta(seconds=60)
    """How long one request to the agent may take (a recycle or restart included)."""
    max_parallel: int | None = Field(default=None, ge=1, le=256)
    """At most this many steps (file writes, reloads, restarts) on this host at once,
    across every rotation a worker runs; the others wait their turn. Unset: no bound
    but the worker's concurrency."""

    _uuid = field_validator("agent_id")(agent_uuid)

    @field_validator("url")
    @classmethod
    def _https(cls, url: str) -> str:
        http_url(url, credentials_message="url must not carry credentials; use key_from")
        if not url.startswith("https://"):
            raise ValueError("url must be https://: values travel to the agent in requests")
        import httpx  # noqa: PLC0415 (the host agent itself never loads httpx)

        parsed = httpx.URL(url)
        if parsed.path not in ("", "/") or parsed.query or parsed.fragment:
            # Requests are signed over their path, which the agent sees from its root.
            raise ValueError("url must be https://host:port, without a path or query")
        return url.rstrip("/")

    @field_validator("timeout")
    @classmethod
    def _positive(cls, value: timedelta) -> timedelta:
        return positive(value, "timeout")

    def ssl_verify(self) -> ssl.SSLContext | bool:
        """What httpx should verify the agent with: the CA bundle, or the system store."""
        return ssl.create_default_context(cafile=self.ca_bundle) if self.ca_bundle else True

    def names(self, agent_id: str) -> bool:
        """Whether an action's `agent_id` means this agent (its UUID, in any case)."""
        return agent_id.lower() == self.agent_id


def find_agent(context: PluginContext, agent_id: str) -> tuple[str, AgentIntegration]:
    """The agent integration an action's `agent_id` names: by its agent_id or its name."""
    named = context.integrations.get(agent_id)
    if isinstance(named, AgentIntegration):
        return agent_id, named
    for name, integration in context.integrations.items():
        if isinstance(integration, AgentIntegration) and integration.names(agent_id):
            return name, integration
    raise ConfigError("agent_id", f"no agent integration with agent_id or name {agent_id}")


class AgentClient:
    """Signed JSON requests to one agent. Errors name the agent and its host, never a value."""

    def __init__(self, name: str, integration: AgentIntegration, context: PluginContext) -> None:
        self.name = name
        self.integration = integration
        self.context = context
        self.host = url_origin(integration.url)
        self._who = f"agent {name} ({self.host})"

    async def post(
        self, path: str, body: dict[str, Any], *, what: str, limit: timedelta | None = None
    ) -> dict[str, Any]:
        """POST `body` to `path`, signed; the agent's JSON answer. TransientError when it
        cannot be reached, times out or answers 429/5xx; PermanentError for any other
        refusal."""
        content = json.dumps(body, separators=(",", ":")).encode("utf-8")
        bound = self.integration.max_parallel
        if bound is None:
            return await self._request("POST", path, content, what=what, limit=limit, signed=True)
        async with self.context.pacing.slots(f"agent:{self.name}", bound).hold():
            return await self._request("POST", path, content, what=what, limit=limit, signed=True)

    async def health(self, *, signed: bool) -> dict[str, Any]:
        """`GET /v1/health`: the agent's id and version. Signed, the agent also checks the
        signature (and answers 401 to a wrong key or clock)."""
        return await self._request(
            "GET", "/v1/health", b"", what="health", limit=PREFLIGHT_TIMEOUT, signed=signed
        )

    async def _request(
        self,
        method: str,
        path: str,
        content: bytes,
        *,
        what: str,
        limit: timedelta | None,
        signed: bool,
    ) -> dict[str, Any]:
        headers = {"Content-Type": "application/json"} if content else {}
        if signed:
            key = signing_key(self.context.secret("key_from", self.integration.key_from))
            headers.update(signed_headers(key, method, path, content, self.context.now()))
        seconds = (limit or self.integration.timeout).total_seconds()
        import httpx  # noqa: PLC0415 (the host agent itself never loads httpx)

        async with httpx.AsyncClient(
            verify=self.integration.ssl_verify(), timeout=seconds, follow_redirects=False
        ) as client:
            outcome = await attempt(
                client.request(
                    method, self.integration.url + path, content=content, headers=headers
                ),
                f"{self._who} {what}",
                lambda response: self._refusal(response, what),
            )
        if outcome.status is None:
            raise TransientError(f"{self._who} is unreachable for {what}: {outcome.failure}")
        if outcome.failure is not None:
            raise TransientError(
                f"{self._who} answered {what} with HTTP {outcome.status}{_error(outcome.response)}",
                retry_after=outcome.retry_after,
            )
        answer = _json(outcome.response)
        if answer is None:
            raise PermanentError(f"{self._who} answered {what} with no JSON")
        return answer

    def _refusal(self, response: httpx.Response, what: str) -> str:
        status = response.status_code
        if status == 401:
            return (
                f"{self._who} refused keyshift's signature (HTTP 401): "
                "key_from must hold the agent's key and both clocks must be right"
            )
        return f"{self._who} refused {what} (HTTP {status}){_error(response)}"


def _json(response: httpx.Response | None) -> dict[str, Any] | None:
    if response is None:
        return None
    try:
        body = response.json()
    except ValueError:
        return None
    return body if isinstance(body, dict) else None


def _error(response: httpx.Response | None) -> str:
    """The agent's own error text (it names paths, pools and units, never values)."""
    body = _json(response)
    error = body.get("error") if body else None
    return f": {str(error)[:500]}" if isinstance(error, str) and error else ""


# --- configs -------------------------------------------------------------------------------


def _legacy_url(url: str | None) -> str | None:
    if url is not None:
        http_url(url, credentials_message="agent_url must not carry credentials")
    return url


AGENT_URL_DOC: Final = (
    "Legacy, as older tools write it: the agent's URL instead of `agent_id`. An action with "
    "it and no `agent_id` is manual review: keyshift never sends a value to an unenrolled, "
    "unauthenticated agent, so the step is recorded as not delivered and the rotation ends "
    "needs_attention with the old version kept."
)


class AgentSecretSyncConfig(FileConfig):
    """A file on the agent's host and the key (or keys) in it: the `file` action's fields,
    written by the agent. The path must be under one of the agent's `allowed_paths`."""

    agent_url: str | None = Field(default=None, description=AGENT_URL_DOC)

    _agent_url = field_validator("agent_url")(_legacy_url)

    @field_validator("file_format")
    @classmethod
    def _keys_only(cls, file_format: str) -> str:
        # The agent writes keys of a file; whole files (certificates, a JWKS, a CA bundle,
        # a thumbprint list) are written by the `file` target on the keyshift host.
        if file_format not in get_args(FileFormat):
            raise ValueError(
                f"agent_secret_sync writes keys of json, yaml, env or ini files; "
                f"file_format {file_format} is for a file action on the keyshift host"
            )
        return file_format


class IisRecycleConfig(BaseModel):
    """The IIS application pool the agent recycles (`appcmd recycle apppool`). It must be
    in the agent's `iis.app_pools`. A legacy `site_name` is read as `app_pool`."""

    model_config = ConfigDict(use_attribute_docstrings=True, extra="forbid", frozen=True)

    app_pool: str = Field(min_length=1, max_length=64)
    """The application pool's name, e.g. `BillingAppPool`."""
    agent_url: str | None = Field(default=None, description=AGENT_URL_DOC)

    _agent_url = field_validator("agent_url")(_legacy_url)

    @field_validator("app_pool")
    @classmethod
    def _printable(cls, app_pool: str) -> str:
        if _CONTROL.search(app_pool) or app_pool != app_pool.strip():
            raise ValueError("app_pool must be printable, without surrounding spaces")
        return app_pool


class SystemdReloadConfig(BaseModel):
    """The systemd unit the agent reloads or restarts (`systemctl reload|restart UNIT`). It
    must be in the agent's `systemd.units`."""

    model_config = ConfigDict(use_attribute_docstrings=True, extra="forbid", frozen=True)

    unit: str
    """The unit, e.g. `billing.service`."""
    mode: Literal["reload", "restart"] = "reload"
    """`reload` (the service re-reads its files) or `restart`."""
    agent_url: str | None = Field(default=None, description=AGENT_URL_DOC)

    _agent_url = field_validator("agent_url")(_legacy_url)

    @field_validator("unit")
    @classmethod
    def _unit_name(cls, unit: str) -> str:
        if not _UNIT.fullmatch(unit):
            raise ValueError(
                "unit must be a systemd unit name (letters, digits, '_@:.-\\', not starting "
                "with '-'), e.g. billing.service"
            )
        return unit


# --- targets -------------------------------------------------------------------------------


class _AgentTarget(BaseTarget[Any]):
    """What the three agent targets share: finding the agent, preflight, legacy URLs."""

    runs_on_agent: ClassVar[bool] = True
    """Performed by a host agent: the action takes `agent_id`."""

    def _client(self) -> AgentClient:
        if self.context.agent_id is None:
            raise ConfigError("agent_id", f"{self.kind} needs the agent_id of an agent integration")
        name, integration = find_agent(self.context, self.context.agent_id)
        return AgentClient(name, integration, self.context)

    def _unenrolled(self) -> str | None:
        """What names the agent when it is not enrolled: a legacy `agent_url` (its origin)
        on an action without `agent_id`, or an `agent_id` no agent integration declares."""
        if self.context.agent_id is None:
            url: str | None = self.config.agent_url
            return f"agent_url {url_origin(url)}" if url is not None else None
        try:
            find_agent(self.context, self.context.agent_id)
        except ConfigError:
            return f"agent_id {self.context.agent_id}"
        return None

    def _check(self) -> dict[str, Any]:
        """The preflight check the agent runs for this step."""
        raise NotImplementedError

    async def preflight(self, request: base.PreflightRequest) -> PreflightResult:
        """Ask the agent whether the step could run: path, pool or unit on its allow-list,
        file writable and parseable, command present. Changes nothing.

        Manual review for a legacy `agent_url`; blocked (transient) when the agent cannot
        be reached.
        """
        legacy = self._unenrolled()
        if legacy is not None:
            return PreflightResult(
                Readiness.MANUAL_REVIEW,
                f"{legacy} is not an enrolled agent: keyshift will not send it the value; "
                "deliver by hand, or enrol the agent (an agent integration) and name it in "
                "agent_id",
            )
        try:
            answer = await self._client().post(
                "/v1/preflight", self._check(), what="preflight", limit=PREFLIGHT_TIMEOUT
            )
        except TransientError as exc:
            return PreflightResult(Readiness.BLOCKED, str(exc), transient=True)
        except KeyshiftError as exc:
            return PreflightResult(Readiness.BLOCKED, str(exc))
        if answer.get("ready") is True:
            return PreflightResult(Readiness.READY)
        return PreflightResult(Readiness.BLOCKED, str(answer.get("reason") or "not ready"))

    def _refuse_unenrolled(self) -> None:
        legacy = self._unenrolled()
        if legacy is not None:
            raise NotDelivered(
                f"not delivered: {self.kind} names {legacy}, which is not an enrolled agent, "
                "and keyshift does not send values to unauthenticated agents; deliver by "
                "hand, or enrol the agent and name it in agent_id"
            )


class AgentSecretSyncTarget(_AgentTarget):
    """Has the agent write the value at keys of a file on its host; rollback restores the
    previous value or removes the keys publish added."""

    kind: ClassVar[str] = "agent_secret_sync"
    phase: ClassVar[Phase] = Phase.PUBLISH
    Config: ClassVar[type[BaseModel]] = AgentSecretSyncConfig
    config: AgentSecretSyncConfig

    @classmethod
    def describe(cls, config: AgentSecretSyncConfig) -> dict[str, str]:
        """Where it writes on the agent's host: the file, its format and the keys."""
        where = {
            "path": config.path,
            "format": config.file_format,
            "keys": ", ".join(config.entries()),
        }
        return _with_agent_url(where, config.agent_url)

    def _file(self) -> dict[str, Any]:
        return {
            "path": self.config.path,
            "format": self.config.file_format,
            "create": self.config.create,
        }

    def _check(self) -> dict[str, Any]:
        return {"kind": "file", **self._file(), "keys": list(self.config.entries())}

    async def publish(self, request: base.PublishRequest) -> StepResult:
        """Send the value to the agent, which writes it. Idempotent: an unchanged value is
        not rewritten."""
        self._refuse_unenrolled()
        client = self._client()
        values = field_values(self.config.entries(), request.delivery)
        answer = await client.post(
            "/v1/files/write", {**self._file(), "values": values}, what="the file write"
        )
        return StepResult(
            {
                "agent": client.name,
                "path": self.config.path,
                "key": ", ".join(self.config.entries()),
                "fingerprint": request.delivery.fingerprint,
                "changed": bool(answer.get("changed")),
                "created": bool(answer.get("created")),
            }
        )

    async def rollback(self, request: base.RollbackRequest) -> StepResult:
        """Have the agent write `previous` back, or remove the keys when there was none.
        Idempotent."""
        self._refuse_unenrolled()
        client = self._client()
        previous = request.previous
        values = field_values(self.config.entries(), previous)
        answer = await client.post(
            "/v1/files/restore", {**self._file(), "values": values}, what="the file restore"
        )
        return StepResult(
            {
                "agent": client.name,
                "path": self.config.path,
                "key": ", ".join(self.config.entries()),
                "fingerprint": previous.fingerprint if previous is not None else None,
                "removed": previous is None,
                "changed": bool(answer.get("changed")),
            }
        )


class _ReloadTarget(_AgentTarget):
    """A reload on the agent's host: publish runs it, rollback runs it again (by then the
    files hold the restored value, so the consumer reloads that)."""

    phase: ClassVar[Phase] = Phase.RELOAD
    endpoint: ClassVar[str]
    check_kind: ClassVar[str]
    """The `kind` of the agent's preflight check for this reload."""

    @classmethod
    def _fields(cls, config: Any) -> dict[str, str]:
        """What names the reload: sent to the agent, recorded, and shown by `describe`."""
        raise NotImplementedError

    @classmethod
    def describe(cls, config: Any) -> dict[str, str]:
        """What it reloads on the agent's host (and a legacy agent_url's origin)."""
        return _with_agent_url(cls._fields(config), config.agent_url)

    def _request(self) -> dict[str, Any]:
        return self._fields(self.config)

    def _check(self) -> dict[str, Any]:
        return {"kind": self.check_kind, **self._request()}

    async def _reload(self, when: str) -> StepResult:
        self._refuse_unenrolled()
        client = self._client()
        answer = await client.post(self.endpoint, self._request(), what=f"the {self.kind} {when}")
        return StepResult(
            {"agent": client.name, **self._request(), "exit_code": answer.get("exit_code")}
        )

    async def publish(self, request: base.PublishRequest) -> StepResult:
        """Run the reload. Repeatable: a second run reloads the same files."""
        return await self._reload("after publishing")

    async def rollback(self, request: base.RollbackRequest) -> StepResult:
        """Run the reload again after the files were restored. Repeatable."""
        return await self._reload("after rollback")


class IisRecycleTarget(_ReloadTarget):
    """Has the agent recycle an IIS application pool, so the site reads the new value."""

    kind: ClassVar[str] = "iis_recycle"
    Config: ClassVar[type[BaseModel]] = IisRecycleConfig
    endpoint: ClassVar[str] = "/v1/iis/recycle"
    check_kind: ClassVar[str] = "iis"

    @classmethod
    def _fields(cls, config: IisRecycleConfig) -> dict[str, str]:
        return {"app_pool": config.app_pool}


class SystemdReloadTarget(_ReloadTarget):
    """Has the agent reload or restart a systemd unit, so the service reads the new value."""

    kind: ClassVar[str] = "systemd_reload"
    Config: ClassVar[type[BaseModel]] = SystemdReloadConfig
    endpoint: ClassVar[str] = "/v1/systemd/reload"
    check_kind: ClassVar[str] = "systemd"

    @classmethod
    def _fields(cls, config: SystemdReloadConfig) -> dict[str, str]:
        return {"unit": config.unit, "mode": config.mode}


def _with_agent_url(where: dict[str, str], agent_url: str | None) -> dict[str, str]:
    """`where`, plus the origin of a legacy `agent_url` when the action names one."""
    if agent_url is not None:
        where["agent_url"] = url_origin(agent_url)
    return where
