"""What providers that reach their issuer through an integration share.

`AdminConnection` is the shape of an admin connection: an address without a password,
plus where to read the password. The password of an admin connection is never written
in the estate: it comes from an environment variable, a file, or another keyshift
credential. `ConnectedProvider` is the base of the providers that use an integration
(an admin connection, a tenant): it holds the config and the context and finds the
integration by name when a step needs it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import ClassVar, Generic, Protocol, TypeVar
from urllib.parse import unquote, urlsplit

from pydantic import BaseModel, ConfigDict, field_validator

from keyshift.context import PluginContext
from keyshift.domain.durations import Duration
from keyshift.domain.secret import Secret
from keyshift.errors import PermanentError
from keyshift.providers.base import ImportRequest, IssuedVersion, VerifyRequest, VerifyResult
from keyshift.sources import SecretRef

__all__ = [
    "IMPORT_MARKER",
    "AdminConnection",
    "ConnectedProvider",
    "alternate_user",
    "imported_login",
    "login_version",
]

IMPORT_MARKER = "keyshift:imported"
"""The marker in an imported version's `provider_ref`: no rotation set its password."""


class AdminConnection(BaseModel):
    """An admin connection: `dsn` names host, port, user and database; the password
    comes from `password_from`."""

    schemes: ClassVar[tuple[str, ...]] = ()
    default_port: ClassVar[int] = 0
    """The port a URL without one means."""
    default_database: ClassVar[str] = ""
    """The database a URL without a path means."""

    model_config = ConfigDict(use_attribute_docstrings=True, extra="forbid", frozen=True)

    dsn: str
    """Connection URL without a password, e.g. `postgresql://keyshift_admin@db:5432/app`."""
    password_from: SecretRef
    """`env:NAME`, `file:/path` or `credential:NAME`; never the password itself."""
    connect_timeout: Duration = timedelta(seconds=10)
    """How long to wait for the server before the step fails (and is retried)."""

    @field_validator("dsn")
    @classmethod
    def _no_inline_password(cls, dsn: str) -> str:
        parts = urlsplit(dsn)
        if parts.scheme not in cls.schemes or not parts.hostname:
            example = f"{cls.schemes[0]}://user@host/..." if cls.schemes else "a URL"
            raise ValueError(f"must be a URL such as {example}")
        if parts.password is not None:
            raise ValueError("must not contain a password; use password_from")
        if not parts.username:
            raise ValueError("must name the admin user (scheme://user@host/...)")
        return dsn

    def endpoint(self, url: str | None = None) -> dict[str, str]:
        """Host, port and database of `url` (the `dsn` unless given): what a consumer
        connects to."""
        parts = urlsplit(url or self.dsn)
        return {
            "host": parts.hostname or "",
            "port": str(parts.port or self.default_port),
            "database": unquote(parts.path.lstrip("/")) or self.default_database,
        }

    def server(self) -> str:
        """`host:port/database` of the `dsn`: how plans and errors name the server."""
        end = self.endpoint()
        return f"{end['host']}:{end['port']}/{end['database']}"


class IntegrationConfig(Protocol):
    """A provider config that names the integration it connects through."""

    @property
    def integration(self) -> str: ...


ConfigT = TypeVar("ConfigT", bound=IntegrationConfig)
IntegrationT = TypeVar("IntegrationT", bound=BaseModel)


class ConnectedProvider(Generic[ConfigT, IntegrationT]):
    """Base of a provider that reaches its issuer through the integration its config
    names. The integration is looked up when a step needs it, not when the provider is
    built, so a missing or mistyped one fails that step with a ConfigError."""

    integration_type: ClassVar[str]
    """The `type` of the integration the config must name."""
    integration_model: type[IntegrationT]
    """The config model of that integration (set on the class)."""

    def __init__(self, config: ConfigT, context: PluginContext) -> None:
        self.config = config
        self.context = context

    @classmethod
    def declared(
        cls, config: ConfigT, integrations: Mapping[str, BaseModel]
    ) -> IntegrationT | None:
        """The integration `config` names among `integrations`, None unless it is one of
        this provider's type (for `describe`, which must not raise)."""
        found = integrations.get(config.integration)
        return found if isinstance(found, cls.integration_model) else None

    @property
    def _integration(self) -> IntegrationT:
        return self.context.integration(self.config.integration, self.integration_model)


def alternate_user(users: Sequence[str], current: IssuedVersion | None) -> str:
    """Of two users that take turns, the one not in use by `current`: it takes the new
    password. The first rotation takes the first."""
    in_use = current.attributes.get("username") if current else None
    return users[1] if in_use == users[0] else users[0]


def login_version(
    integration: AdminConnection,
    user: str,
    marker: str,
    password: Secret,
    expires: datetime | None,
) -> IssuedVersion:
    """The version a password set on `user` at the integration's server is: named
    `user:marker`, with what a consumer connects with (user, host, port, database)."""
    return IssuedVersion(
        provider_ref=f"{user}:{marker}",
        value=password,
        attributes={"username": user, **integration.endpoint()},
        expires_at=expires,
    )


async def imported_login(
    integration: AdminConnection,
    users: Sequence[str],
    request: ImportRequest,
    verify: Callable[[VerifyRequest], Awaitable[VerifyResult]],
) -> IssuedVersion:
    """The version an imported password is: of `request.username` (which must be one of
    `users`), or else of the first of `users` it signs in as. PermanentError naming each
    user tried and what the issuer answered when it signs in as none."""
    if request.username is not None and request.username not in users:
        raise PermanentError(
            f"user {request.username} is not rotated by this credential ({', '.join(users)})"
        )
    tried: list[str] = []
    for user in [request.username] if request.username else users:
        version = login_version(integration, user, IMPORT_MARKER, request.value, None)
        answer = await verify(VerifyRequest(request.credential, version))
        if answer.ok:
            return version
        tried.append(answer.detail or f"{user}: refused")
    raise PermanentError(
        f"the value does not authenticate at {integration.server()}: {'; '.join(tried)}"
    )
