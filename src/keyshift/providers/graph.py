"""Microsoft Graph v1.0 client for Entra ID application secrets (addPassword/removePassword),
and the (beta) sign-in log that shows which client secret each sign-in used.

`GraphClient` speaks Graph over httpx with a bearer token from an async token
source (`azure_identity_token_source` wraps an `azure.identity.aio` credential).
What holds:

- Throttling and outages (429, 502, 503, 504, connection errors) are retried with
  exponential backoff and jitter, or exactly the numeric `Retry-After` Graph sends,
  within `max_retry_time` seconds of the context's clock; past it the call raises
  `TransientError(retry_after=...)` so the engine can schedule the step again.
  Sleeping goes through `PluginContext.sleep`, so tests never wait.
- `addPassword` is not idempotent: it is repeated only when Graph certainly did not
  run it (429, 503, a refused connection). An ambiguous failure (504, a dropped
  answer) raises TransientError; the engine's idempotency marker in the password's
  displayName is how a repeat is detected.
- Any other answer of 400 or more raises `GraphRequestFailed` (a PermanentError)
  carrying Graph's error code, message and request id: never a secret, never the
  token. A 403 `Authorization_RequestDenied` names the permission needed.
- `secretText` is wrapped in `Secret` as soon as it is parsed.
- `@odata.nextLink` is followed as is, but only to the configured Graph origin: the
  bearer token is never sent elsewhere.
- The sign-in log is read from `/beta` beside the configured `/v1.0` endpoint: only the
  beta `signIn` resource carries `servicePrincipalCredentialKeyId`. A 403 there names
  `AuditLog.Read.All` (and the P1/P2 licence the log needs), not the write permission.
- App management policies, which may forbid client secrets or cap their lifetime, are read
  from `GET /policies/defaultAppManagementPolicy` (the tenant default, always present,
  disabled unless an administrator enabled it) and `GET /applications/{id}/
  appManagementPolicies` (the one policy assigned to the application, if any, which then
  replaces the tenant default for it). Both need `Policy.Read.All` (or
  Policy.Read.ApplicationConfiguration / Policy.ReadWrite.ApplicationConfiguration); a 403
  there names Policy.Read.All, not the write permission.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import secrets
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import quote

import httpx
import structlog
from azure.core.exceptions import AzureError, ClientAuthenticationError

from keyshift.azure import DEFAULT_GRAPH_URL
from keyshift.context import PluginContext
from keyshift.domain.secret import Secret
from keyshift.errors import PermanentError, TransientError

if TYPE_CHECKING:
    from azure.core.credentials_async import AsyncTokenCredential

log = structlog.get_logger(__name__)

GRAPH_SCOPE: Final = "https://graph.microsoft.com/.default"
NEEDED_PERMISSION: Final = (
    "the Graph application permission Application.ReadWrite.OwnedBy (with the keyshift "
    "identity as an owner of the application) or Application.ReadWrite.All"
)
WRITE_ROLES: Final = ("Application.ReadWrite.OwnedBy", "Application.ReadWrite.All")
"""Application permissions that allow adding and removing client secrets."""
AUDIT_LOG_ROLE: Final = "AuditLog.Read.All"
"""The application permission that allows reading the sign-in log."""
SIGN_IN_PERMISSION: Final = (
    "the Graph application permission AuditLog.Read.All (and a Microsoft Entra ID P1 or P2 "
    "licence in the tenant) to read the sign-in log"
)
POLICY_PERMISSION: Final = (
    "the Graph application permission Policy.Read.All to read app management policies"
)
SIGN_IN_PAGE_SIZE: Final = 1000
"""The documented maximum (and default) page size of `auditLogs/signIns`."""
APPLICATION_FIELDS: Final = "id,appId,displayName,passwordCredentials,keyCredentials"
RETRYABLE_STATUSES: Final = frozenset({429, 502, 503, 504})
# Statuses that mean Graph refused the request before running it: safe to repeat a POST.
NOT_EXECUTED_STATUSES: Final = frozenset({429, 503})
BACKOFF_BASE: Final = 1.0
BACKOFF_CAP: Final = 60.0
_AADSTS = re.compile(r"AADSTS\d+")
_ISO_DURATION = re.compile(
    r"^P(?:(?P<years>\d+)Y)?(?:(?P<months>\d+)M)?(?:(?P<weeks>\d+)W)?(?:(?P<days>\d+)D)?"
    r"(?:T(?:(?P<hours>\d+)H)?(?:(?P<minutes>\d+)M)?(?:(?P<seconds>\d+(?:\.\d+)?)S)?)?$"
)
# A calendar year or month has no fixed length; the shortest is taken, so a lifetime
# computed from it never exceeds what the policy allows.
_SHORTEST_DAYS = {"years": 365, "months": 28, "weeks": 7, "days": 1}

TokenSource = Callable[[], Awaitable[str]]
"""Returns a bearer token for Graph; called before every attempt (the source caches)."""

_random = secrets.SystemRandom()


def odata_literal(value: str) -> str:
    """`value` as an OData string literal for `$filter`: single-quoted, quotes doubled.

    Raises ValueError for control characters or anything else not printable, which no
    application name or id holds and which could change how the filter is parsed.
    """
    if not value.isprintable():
        raise ValueError("a $filter literal must not contain control or unprintable characters")
    return "'" + value.replace("'", "''") + "'"


def parse_iso_duration(text: str) -> timedelta:
    """An ISO 8601 duration as Graph writes `maxLifetime` (`P90D`, `PT12H`, `P4DT12H30M5S`).

    Years count 365 days and months 28, the shortest they can be, so a lifetime derived
    from them stays within the policy. Raises ValueError for anything else (a negative
    or empty duration included).
    """
    found = _ISO_DURATION.match(text.strip())
    parts = {k: v for k, v in found.groupdict().items() if v is not None} if found else {}
    if not parts or text.strip().endswith("T"):
        raise ValueError(f"{text!r} is not an ISO 8601 duration")
    days = sum(int(parts.get(unit, 0)) * size for unit, size in _SHORTEST_DAYS.items())
    return timedelta(
        days=days,
        hours=int(parts.get("hours", 0)),
        minutes=int(parts.get("minutes", 0)),
        seconds=float(parts.get("seconds", 0)),
    )


def token_roles(token: str) -> list[str] | None:
    """The `roles` claim of a JWT access token (read, not verified: only to explain what
    the identity may do), or None if the token is not a readable JWT."""
    parts = token.split(".")
    if len(parts) != 3:
        return None
    payload = parts[1] + "=" * (-len(parts[1]) % 4)
    try:
        claims = json.loads(base64.urlsafe_b64decode(payload))
    except (binascii.Error, ValueError):
        return None
    roles = claims.get("roles") if isinstance(claims, dict) else None
    return [str(r) for r in roles] if isinstance(roles, list) else []


def azure_identity_token_source(
    credential: AsyncTokenCredential, scope: str = GRAPH_SCOPE
) -> TokenSource:
    """A token source from an `azure.identity.aio` credential. Entra ID refusing the
    credential raises `TokenRefused` (with the AADSTS code); an unreachable token
    endpoint raises TransientError."""

    async def token() -> str:
        try:
            access = await credential.get_token(scope)
        except ClientAuthenticationError as exc:
            found = _AADSTS.search(str(exc.message or ""))
            code = found.group(0) if found else "unknown"
            raise TokenRefused(
                f"Entra ID refused the client credential ({code}); check the client "
                "id, tenant and secret",
                code=code,
            ) from exc
        except AzureError as exc:
            raise TransientError(f"could not get a Graph token: {type(exc).__name__}") from exc
        return access.token

    return token


class TokenRefused(PermanentError):
    """Entra ID refused the client credential; `code` is the AADSTS code, e.g. AADSTS7000215."""

    def __init__(self, message: str, *, code: str) -> None:
        self.code = code
        super().__init__(message)


class GraphRequestFailed(PermanentError):
    """Graph answered with an error that retrying will not fix."""

    def __init__(
        self, message: str, *, status: int, code: str, graph_message: str, request_id: str | None
    ) -> None:
        self.status = status
        self.code = code
        self.graph_message = graph_message
        self.request_id = request_id
        super().__init__(message)


@dataclass(frozen=True)
class PasswordCredential:
    """A client secret of an application as Graph lists it: never its value."""

    key_id: str
    display_name: str | None
    hint: str | None
    start: datetime | None
    end: datetime | None

    @classmethod
    def from_graph(cls, data: Mapping[str, Any]) -> PasswordCredential:
        return cls(
            key_id=str(data["keyId"]),
            display_name=data.get("displayName"),
            hint=data.get("hint"),
            start=_parse_time(data.get("startDateTime")),
            end=_parse_time(data.get("endDateTime")),
        )


@dataclass(frozen=True)
class KeyCredential:
    """A certificate of an application: its thumbprint (`customKeyIdentifier`), not its key."""

    key_id: str
    display_name: str | None
    thumbprint: str | None
    usage: str | None
    start: datetime | None
    end: datetime | None

    @classmethod
    def from_graph(cls, data: Mapping[str, Any]) -> KeyCredential:
        return cls(
            key_id=str(data["keyId"]),
            display_name=data.get("displayName"),
            thumbprint=data.get("customKeyIdentifier"),
            usage=data.get("usage"),
            start=_parse_time(data.get("startDateTime")),
            end=_parse_time(data.get("endDateTime")),
        )


@dataclass(frozen=True)
class Owner:
    """An owner of an application (a user or a service principal)."""

    id: str
    display_name: str | None
    user_principal_name: str | None

    @classmethod
    def from_graph(cls, data: Mapping[str, Any]) -> Owner:
        return cls(
            id=str(data.get("id", "")),
            display_name=data.get("displayName"),
            user_principal_name=data.get("userPrincipalName"),
        )

    @property
    def label(self) -> str:
        return self.user_principal_name or self.display_name or self.id


@dataclass(frozen=True)
class AddedPassword:
    """The answer to addPassword: the new secret's id and its value, which Graph shows
    only this once."""

    key_id: str
    display_name: str | None
    hint: str | None
    start: datetime | None
    end: datetime | None
    secret: Secret


@dataclass(frozen=True)
class Application:
    """An application registration: `id` is the object id, `app_id` the client id."""

    id: str
    app_id: str
    display_name: str
    password_credentials: tuple[PasswordCredential, ...]
    key_credentials: tuple[KeyCredential, ...] = ()
    owners: tuple[Owner, ...] | None = None
    """None unless the listing expanded `owners` (Graph expands at most 20 per object)."""
    created: datetime | None = None
    """`createdDateTime`, which app management policy restrictions are dated against;
    None when Graph did not return it (a `$select` without it)."""

    @classmethod
    def from_graph(cls, data: Mapping[str, Any]) -> Application:
        owners = data.get("owners")
        return cls(
            id=str(data["id"]),
            app_id=str(data.get("appId", "")),
            display_name=str(data.get("displayName", "")),
            password_credentials=tuple(
                PasswordCredential.from_graph(p) for p in data.get("passwordCredentials") or ()
            ),
            key_credentials=tuple(
                KeyCredential.from_graph(k) for k in data.get("keyCredentials") or ()
            ),
            owners=(
                tuple(Owner.from_graph(o) for o in owners) if isinstance(owners, list) else None
            ),
            created=_parse_time(data.get("createdDateTime")),
        )


@dataclass(frozen=True)
class PasswordRestriction:
    """One restriction on client secrets in an app management policy (Graph's
    `passwordCredentialConfiguration`): `restriction_type` is e.g. `passwordAddition` or
    `passwordLifetime`; `max_lifetime` the ISO 8601 duration of a `passwordLifetime`."""

    restriction_type: str
    max_lifetime: str | None
    applies_from: datetime | None
    """`restrictForAppsCreatedAfterDateTime`: applications created on or after it are
    restricted; None restricts every application."""
    enabled: bool
    """False when `state` is `disabled`; an absent `state` is enforced."""
    exempts_actors: bool = False
    """The restriction exempts callers carrying certain custom security attributes
    (`excludeActors`), which keyshift's identity may or may not carry."""

    @classmethod
    def from_graph(cls, data: Mapping[str, Any]) -> PasswordRestriction:
        excluded = data.get("excludeActors") or data.get("excludedActors")
        attributes = (
            excluded.get("customSecurityAttributes") if isinstance(excluded, dict) else None
        )
        return cls(
            restriction_type=str(data.get("restrictionType") or ""),
            max_lifetime=str(data["maxLifetime"]) if data.get("maxLifetime") else None,
            applies_from=_parse_time(data.get("restrictForAppsCreatedAfterDateTime")),
            enabled=str(data.get("state") or "enabled").lower() != "disabled",
            exempts_actors=bool(attributes),
        )

    def applies_to(self, created: datetime | None) -> bool:
        """Whether it restricts an application created at `created` (unknown: it does)."""
        if not self.enabled:
            return False
        return self.applies_from is None or created is None or created >= self.applies_from


@dataclass(frozen=True)
class AppManagementPolicy:
    """The password restrictions of an app management policy: the tenant default
    (`tenant_default`) or the policy assigned to one application."""

    id: str
    display_name: str | None
    is_enabled: bool
    password_restrictions: tuple[PasswordRestriction, ...]
    tenant_default: bool

    @classmethod
    def from_graph(cls, data: Mapping[str, Any], *, tenant_default: bool) -> AppManagementPolicy:
        holder = data.get("applicationRestrictions" if tenant_default else "restrictions")
        listed = holder.get("passwordCredentials") if isinstance(holder, dict) else None
        return cls(
            id=str(data.get("id", "")),
            display_name=data.get("displayName"),
            is_enabled=data.get("isEnabled") is True,
            password_restrictions=tuple(
                PasswordRestriction.from_graph(r) for r in listed or () if isinstance(r, dict)
            ),
            tenant_default=tenant_default,
        )

    @property
    def label(self) -> str:
        """How an operator finds it: the tenant default, or the assigned policy's name and id."""
        if self.tenant_default:
            return "the tenant's default app management policy"
        name = f"'{self.display_name}' " if self.display_name else ""
        return f"the app management policy {name}({self.id}) assigned to the application"


@dataclass(frozen=True)
class SignIn:
    """One service principal sign-in as the sign-in log records it: when, as which
    application, with which of its credentials (`key_id`, the password or certificate
    keyId), from where and to which resource. Never a secret."""

    id: str
    created: datetime
    app_id: str
    key_id: str | None
    thumbprint: str | None
    ip_address: str | None
    resource: str | None
    error_code: int
    """`status.errorCode`: 0 for a successful sign-in."""

    @classmethod
    def from_graph(cls, data: Mapping[str, Any]) -> SignIn:
        created = _parse_time(data.get("createdDateTime"))
        if created is None:
            raise PermanentError("Graph listed a sign-in without createdDateTime")
        status = data.get("status") if isinstance(data.get("status"), dict) else {}
        code = status.get("errorCode") if isinstance(status, dict) else None
        return cls(
            id=str(data.get("id", "")),
            created=created,
            app_id=str(data.get("appId", "")),
            key_id=data.get("servicePrincipalCredentialKeyId") or None,
            thumbprint=data.get("servicePrincipalCredentialThumbprint") or None,
            ip_address=data.get("ipAddress") or None,
            resource=data.get("resourceDisplayName") or None,
            error_code=code if isinstance(code, int) else 0,
        )


def _parse_time(value: object) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _graph_time(moment: datetime) -> str:
    if moment.tzinfo is None:
        raise ValueError("Graph times must be timezone-aware")
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _retry_after(response: httpx.Response) -> float | None:
    """The numeric `Retry-After` in seconds; an HTTP date or garbage counts as absent."""
    raw = response.headers.get("Retry-After", "").strip()
    try:
        seconds = float(raw)
    except ValueError:
        return None
    return seconds if seconds >= 0 else None


def _error_fields(response: httpx.Response) -> tuple[str, str, str | None]:
    """(code, message, request id) of a Graph error body; tolerant of other bodies."""
    try:
        body = response.json()
    except ValueError:
        body = None
    error = body.get("error") if isinstance(body, dict) else None
    if not isinstance(error, dict):
        return f"HTTP{response.status_code}", response.reason_phrase, None
    inner = error.get("innerError") if isinstance(error.get("innerError"), dict) else {}
    request_id = inner.get("request-id") if isinstance(inner, dict) else None
    return (
        str(error.get("code") or f"HTTP{response.status_code}"),
        str(error.get("message") or ""),
        str(request_id) if request_id else None,
    )


def _encode_query(params: Mapping[str, str | int] | None) -> str:
    """Query options keep their `$`; values are percent-encoded (spaces as %20)."""
    if not params:
        return ""
    return "?" + "&".join(
        f"{quote(k, safe='$')}={quote(str(v), safe='')}" for k, v in params.items()
    )


class GraphClient:
    """An async Microsoft Graph client for application password credentials.

    `base_url` defaults to the global cloud; national clouds and tests pass theirs.
    `transport` and `verify` are handed to httpx (tests pass an SSLContext that
    trusts their CA). Close with `aclose()` or use `async with`.
    """

    def __init__(
        self,
        token_source: TokenSource,
        context: PluginContext,
        *,
        base_url: str = DEFAULT_GRAPH_URL,
        transport: httpx.AsyncBaseTransport | None = None,
        verify: ssl.SSLContext | bool = True,
        max_retry_time: float = 120.0,
        timeout: float = 30.0,
        page_size: int = 100,
    ) -> None:
        if not 1 <= page_size <= 999:
            raise ValueError("page_size must be between 1 and 999")
        self._token_source = token_source
        self._context = context
        self._base = httpx.URL(base_url.rstrip("/") + "/")
        # The beta endpoint sits beside v1.0 in every cloud (graph.microsoft.us/beta, ...).
        path = self._base.path
        self._beta = (
            self._base.copy_with(path=path.removesuffix("v1.0/") + "beta/")
            if path.endswith("/v1.0/")
            else None
        )
        self._max_retry_time = max_retry_time
        self._page_size = page_size
        self._http = httpx.AsyncClient(
            transport=transport, verify=verify, timeout=timeout, follow_redirects=False
        )

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> GraphClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def token(self) -> str:
        """A bearer token from the token source, as the next request would send it (to
        read its claims, e.g. `token_roles`; never to log)."""
        return await self._token_source()

    # --- generic requests --------------------------------------------------------------

    async def get(self, path: str, params: Mapping[str, str | int] | None = None) -> dict[str, Any]:
        """GET `path` (relative to the base URL) and return the JSON object."""
        response = await self._request("GET", self._url(path) + _encode_query(params))
        return _json_object(response)

    async def post(
        self, path: str, json: Mapping[str, Any] | None = None, *, idempotent: bool = False
    ) -> dict[str, Any] | None:
        """POST `json` to `path`; the JSON object answered, or None for 204.

        Unless `idempotent`, the request is repeated only when Graph did not run it.
        """
        response = await self._request("POST", self._url(path), json=json, idempotent=idempotent)
        if response.status_code == 204 or not response.content:
            return None
        return _json_object(response)

    async def paged(
        self, path: str, params: Mapping[str, str | int] | None = None
    ) -> AsyncIterator[dict[str, Any]]:
        """Every item of a collection, following `@odata.nextLink` until it is absent."""
        async for item in self._paged(self._url(path) + _encode_query(params)):
            yield item

    async def _paged(self, first: str) -> AsyncIterator[dict[str, Any]]:
        url: str | None = first
        while url is not None:
            body = _json_object(await self._request("GET", url))
            for item in body.get("value") or ():
                yield item
            next_link = body.get("@odata.nextLink")
            url = self._same_origin(next_link) if next_link else None

    # --- applications ------------------------------------------------------------------

    async def list_applications(
        self, filter: str | None = None, *, with_owners: bool = False
    ) -> AsyncIterator[Application]:
        """Applications matching the `$filter` expression (build literals with
        `odata_literal`), all pages, `page_size` per request; `with_owners` expands
        each application's owners in the same requests."""
        params: dict[str, str | int] = {"$top": self._page_size}
        if filter is not None:
            params["$filter"] = filter
        if with_owners:
            params["$select"] = APPLICATION_FIELDS
            params["$expand"] = "owners($select=id,displayName,userPrincipalName)"
        async for item in self.paged("applications", params):
            yield Application.from_graph(item)

    async def get_application(self, app_object_id: str) -> Application:
        """The application with this object id; GraphRequestFailed (404) if none."""
        return Application.from_graph(await self.get(f"applications/{_segment(app_object_id)}"))

    async def add_password(
        self, app_object_id: str, display_name: str, end: datetime | None
    ) -> AddedPassword:
        """Add a client secret valid from now until `end` (None: Graph's default, two years).
        Not idempotent: each call that succeeds mints a new secret; look for
        `display_name` before calling again."""
        credential: dict[str, str] = {"displayName": display_name}
        if end is not None:
            credential["endDateTime"] = _graph_time(end)
        body = {"passwordCredential": credential}
        answer = await self.post(f"applications/{_segment(app_object_id)}/addPassword", body)
        if answer is None:
            raise PermanentError(f"Graph addPassword on {app_object_id} answered no body")
        secret_text = answer.pop("secretText", None)
        if not isinstance(secret_text, str) or not secret_text:
            raise PermanentError(f"Graph addPassword on {app_object_id} answered no secretText")
        secret = Secret(secret_text)
        listed = PasswordCredential.from_graph(answer)
        log.info(
            "graph.password_added",
            app_object_id=app_object_id,
            key_id=listed.key_id,
            end=listed.end.isoformat() if listed.end else None,
        )
        return AddedPassword(
            key_id=listed.key_id,
            display_name=listed.display_name,
            hint=listed.hint,
            start=listed.start,
            end=listed.end,
            secret=secret,
        )

    async def remove_password(self, app_object_id: str, key_id: str) -> None:
        """Remove the client secret `key_id`. Graph answers 400 for a keyId it does not
        hold; that is raised as GraphRequestFailed for the caller to judge."""
        await self.post(
            f"applications/{_segment(app_object_id)}/removePassword",
            {"keyId": key_id},
            idempotent=True,
        )
        log.info("graph.password_removed", app_object_id=app_object_id, key_id=key_id)

    # --- app management policies ------------------------------------------------------

    async def get_default_app_management_policy(self) -> AppManagementPolicy:
        """The tenant's default app management policy (it always exists; disabled unless an
        administrator enabled it). A 403 raises GraphRequestFailed naming Policy.Read.All."""
        where = "policies/defaultAppManagementPolicy"
        try:
            body = await self.get(where)
        except GraphRequestFailed as exc:
            if exc.status != 403:
                raise
            raise self._needing(exc, where, POLICY_PERMISSION) from exc
        return AppManagementPolicy.from_graph(body, tenant_default=True)

    async def list_app_management_policies(self, app_object_id: str) -> list[AppManagementPolicy]:
        """The app management policies assigned to the application (Graph allows one),
        which replace the tenant default for it. A 403 raises GraphRequestFailed naming
        Policy.Read.All."""
        where = f"applications/{_segment(app_object_id)}/appManagementPolicies"
        try:
            return [
                AppManagementPolicy.from_graph(item, tenant_default=False)
                async for item in self.paged(where)
            ]
        except GraphRequestFailed as exc:
            if exc.status != 403:
                raise
            raise self._needing(exc, where, POLICY_PERMISSION) from exc

    # --- the sign-in log ---------------------------------------------------------------

    async def list_service_principal_sign_ins(
        self, app_id: str, since: datetime, *, page_size: int = SIGN_IN_PAGE_SIZE
    ) -> AsyncIterator[SignIn]:
        """Sign-ins of the application `app_id` as itself (client credentials: the event
        type `servicePrincipal`) created at or after `since`, newest first, every page.

        Read from `GET /beta/auditLogs/signIns`: v1.0 lists neither service principal
        sign-ins' credential keyId nor, without this filter, any but interactive user
        sign-ins. The keyId cannot be filtered on by Graph, so callers pick it out.
        A 403 raises GraphRequestFailed naming AuditLog.Read.All.
        """
        if self._beta is None:
            raise PermanentError(
                f"the Graph endpoint {self._base} does not end in /v1.0, so the beta sign-in "
                "log beside it cannot be found"
            )
        if not 1 <= page_size <= SIGN_IN_PAGE_SIZE:
            raise ValueError(f"page_size must be between 1 and {SIGN_IN_PAGE_SIZE}")
        params: dict[str, str | int] = {
            "$filter": f"appId eq {odata_literal(app_id)} and "
            "signInEventTypes/any(t: t eq 'servicePrincipal') and "
            f"createdDateTime ge {_graph_time(since)}",
            "$top": page_size,
        }
        url = str(self._beta.join("auditLogs/signIns")) + _encode_query(params)
        try:
            async for item in self._paged(url):
                yield SignIn.from_graph(item)
        except GraphRequestFailed as exc:
            if exc.status != 403:
                raise
            raise _needing(exc, "/beta/auditLogs/signIns", SIGN_IN_PERMISSION) from exc

    # --- the retry loop ----------------------------------------------------------------

    def _url(self, path: str) -> str:
        return str(self._base.join(path.lstrip("/")))

    def _needing(self, exc: GraphRequestFailed, path: str, permission: str) -> GraphRequestFailed:
        return _needing(exc, httpx.URL(self._url(path)).path, permission)

    def _same_origin(self, link: object) -> str:
        if not isinstance(link, str):
            raise PermanentError("Graph answered an @odata.nextLink that is not a string")
        url = httpx.URL(link)
        if (url.scheme, url.host, url.port) != (
            self._base.scheme,
            self._base.host,
            self._base.port,
        ):
            raise PermanentError(
                f"Graph answered an @odata.nextLink to another origin ({url.host}); not followed"
            )
        return link

    def _backoff(self, attempt: int) -> float:
        """Exponential backoff with equal jitter: half fixed, half random."""
        ceiling = min(BACKOFF_CAP, BACKOFF_BASE * 2.0 ** (attempt - 1))
        return ceiling / 2 + _random.uniform(0, ceiling / 2)

    async def _request(
        self,
        method: str,
        url: str,
        *,
        json: Mapping[str, Any] | None = None,
        idempotent: bool = True,
    ) -> httpx.Response:
        where = httpx.URL(url).path
        started = self._context.now()
        attempt = 0
        while True:
            attempt += 1
            token = await self._token_source()
            retry_after: float | None = None
            try:
                response = await self._http.request(
                    method, url, json=json, headers={"Authorization": f"Bearer {token}"}
                )
            except httpx.TransportError as exc:
                # A refused connection never reached Graph; anything later may have.
                repeatable = idempotent or isinstance(exc, httpx.ConnectError)
                reason = type(exc).__name__
                if not repeatable:
                    raise TransientError(
                        f"Graph {method} {where}: {reason}; not repeated since Graph may "
                        "have run it"
                    ) from exc
            else:
                status = response.status_code
                if status < 400:
                    return response
                code, message, request_id = _error_fields(response)
                if status not in RETRYABLE_STATUSES:
                    if status >= 500:
                        raise TransientError(f"Graph {method} {where}: {status} {code}")
                    raise _permanent(
                        method, where, status, code=code, message=message, request_id=request_id
                    )
                reason = f"{status} {code}"
                retry_after = _retry_after(response)
                if not idempotent and status not in NOT_EXECUTED_STATUSES:
                    raise TransientError(
                        f"Graph {method} {where}: {reason}; not repeated since Graph may "
                        "have run it",
                        retry_after=retry_after,
                    )
            delay = retry_after if retry_after is not None else self._backoff(attempt)
            elapsed = (self._context.now() - started).total_seconds()
            if elapsed + delay > self._max_retry_time:
                raise TransientError(
                    f"Graph {method} {where}: {reason} after {attempt} attempts in "
                    f"{elapsed:.0f}s; giving up for now",
                    retry_after=delay,
                )
            log.warning(
                "graph.retry",
                method=method,
                path=where,
                reason=reason,
                attempt=attempt,
                delay=round(delay, 3),
            )
            await self._context.sleep(delay)


def _segment(value: str) -> str:
    """An id as one path segment, so a crafted id cannot reach another route."""
    if not value:
        raise ValueError("an object id must not be empty")
    return quote(value, safe="")


def _json_object(response: httpx.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError as exc:
        raise PermanentError(
            f"Graph {response.request.method} {response.request.url.path} answered "
            f"{response.status_code} without JSON"
        ) from exc
    if not isinstance(body, dict):
        raise PermanentError(
            f"Graph {response.request.method} {response.request.url.path} answered "
            "JSON that is not an object"
        )
    return body


def _needing(exc: GraphRequestFailed, where: str, permission: str) -> GraphRequestFailed:
    """A 403 of a read (GET `where`) that names the permission this read needs instead of
    the write permission; the same status, code and request id."""
    text = f"Graph GET {where}: 403 {exc.code}: {exc.graph_message} keyshift needs {permission}."
    if exc.request_id:
        text += f" (request-id {exc.request_id})"
    return GraphRequestFailed(
        text,
        status=exc.status,
        code=exc.code,
        graph_message=exc.graph_message,
        request_id=exc.request_id,
    )


def _permanent(
    method: str, where: str, status: int, *, code: str, message: str, request_id: str | None
) -> GraphRequestFailed:
    text = f"Graph {method} {where}: {status} {code}: {message}"
    if status == 403 and code == "Authorization_RequestDenied":
        text += f" keyshift needs {NEEDED_PERMISSION}."
    if request_id:
        text += f" (request-id {request_id})"
    return GraphRequestFailed(
        text, status=status, code=code, graph_message=message, request_id=request_id
    )
