"""A local HTTPS double of Microsoft Graph v1.0 applications and of the Entra ID token
endpoint, driven through the real azure-identity credential and httpx.

Documented behaviours it follows (Microsoft Learn):

- Token endpoint (https://learn.microsoft.com/entra/identity-platform/v2-oauth2-client-creds-grant-flow):
  `POST /{tenant}/oauth2/v2.0/token` with `client_id`, `client_secret`,
  `grant_type=client_credentials`, `scope`; answers `token_type`, `expires_in`,
  `access_token`. A wrong secret is refused with `invalid_client` and
  `AADSTS7000215` in `error_codes`; the OpenID metadata is served at
  `GET /{tenant}/v2.0/.well-known/openid-configuration`.
- Access tokens (https://learn.microsoft.com/entra/identity-platform/access-token-claims-reference):
  JWTs whose `roles` claim lists the application permissions granted to the client
  and whose `aud` names the resource of the requested `<resource>/.default` scope.
  Graph refuses a token for another audience (401) and answers 403
  `Authorization_RequestDenied` when no role allows the request.
- Certificate credentials (https://learn.microsoft.com/entra/identity-platform/certificate-credentials):
  `client_assertion_type=urn:ietf:params:oauth:client-assertion-type:jwt-bearer` and a
  `client_assertion` JWT signed with the certificate's key (PS256 with `x5t#S256`, the
  certificate's SHA-256 thumbprint), `aud` = the token endpoint, `iss` = `sub` = client id.
  A bad assertion is refused with AADSTS700027.
- Workload identity federation
  (https://learn.microsoft.com/entra/workload-id/workload-identity-federation): the
  assertion is an external token whose `iss` and `sub` match a federated credential
  and whose `aud` holds `api://AzureADTokenExchange`.
- Managed identity on App Service
  (https://learn.microsoft.com/azure/app-service/overview-managed-identity#rest-endpoint-reference):
  `GET $IDENTITY_ENDPOINT?api-version=2019-08-01&resource=...` with the
  `X-IDENTITY-HEADER` secret; the answer holds `access_token` and `expires_on`.
- application: addPassword (https://learn.microsoft.com/graph/api/application-addpassword)
  and passwordCredential (https://learn.microsoft.com/graph/api/resources/passwordcredential):
  the answer holds `keyId` (GUID), `secretText` (16-64 characters, returned only
  here), `hint` (its first three characters), `displayName`, `startDateTime`
  (default now), `endDateTime` (default start + 2 years), `customKeyIdentifier`
  null. Reading the application shows `passwordCredentials` without secret text.
  The least-privileged application permission is `Application.ReadWrite.OwnedBy`.
- application: removePassword: `{"keyId": ...}` answers 204 No Content.
- Paging (https://learn.microsoft.com/graph/paging): `$top` sets the page size;
  when more results exist the answer carries `@odata.nextLink`, a full URL with an
  opaque `$skiptoken` and the original query options, to be followed as is.
- `$expand=owners` (https://learn.microsoft.com/graph/api/application-list-owners,
  https://learn.microsoft.com/graph/query-parameters): expands each application's owners
  (users and service principals, at most 20 per object), a nested `$select` choosing
  their properties; `$select` limits the application's properties.
- keyCredentials (https://learn.microsoft.com/graph/api/resources/keycredential):
  `customKeyIdentifier` holds the certificate's thumbprint; the key itself is not
  returned by a list.
- application: addKey (https://learn.microsoft.com/graph/api/application-addkey) and
  removeKey (https://learn.microsoft.com/graph/api/application-removekey): `POST
  /applications/{id}/addKey` with `keyCredential` (`type` `AsymmetricX509Cert`, `usage`
  `Verify`, `key` the base64 DER certificate, `displayName`), `passwordCredential` null and
  `proof`; answers 200 with the new keyCredential (`keyId`, `customKeyIdentifier` = the
  certificate's SHA-1 thumbprint in upper-case hex, `startDateTime`/`endDateTime` = the
  certificate's validity, `key` null). `POST .../removeKey` with `keyId` and `proof`
  answers 204; an unknown keyId 404 `Request_ResourceNotFound`. The proof
  (https://learn.microsoft.com/graph/application-rollkey-prooftoken) is a JWT signed
  (RS256) with the private key of one of the application's current certificates
  (`AsymmetricX509Cert`/`Verify`, not expired; `x5t` names it by SHA-1 thumbprint),
  `aud` `00000002-0000-0000-c000-000000000000`, `iss` the application's object id, and a
  lifetime (`exp - nbf`) of at most 10 minutes, valid now. Without a valid certificate,
  addKey cannot be used ("use Update application instead"). An invalid proof is answered
  401 `Authentication_MissingOrMalformed` ("Access Token missing or malformed."), as users
  report it (microsoftgraph/microsoft-graph-docs #10686, #22076; Microsoft does not
  document it); `invalid_proofs` counts them.
- Update application (https://learn.microsoft.com/graph/api/application-update):
  `PATCH /applications/{id}` with `keyCredentials` replaces the whole collection (what is
  left out is removed: msgraph-sdk-powershell #779) and answers 204; each entry needs its
  `key` (400 otherwise). keyCredential's `key` is returned only by `GET
  /applications/{id}?$select=keyCredentials` (one object, `$select` naming it), else null.
- Certificate sign-in: an application's own certificates sign client assertions too
  (`x5t#S256` names one); a new one signs in only `sign_in_delay` after it was added
  (AADSTS700027 until then, as a key Entra ID has not replicated) and a removed one for
  `removal_delay` after its removal, as for secrets.
- `$filter` (https://learn.microsoft.com/graph/filter-query-parameter): string
  literals are single-quoted and a quote inside is doubled.
- Errors (https://learn.microsoft.com/graph/errors): JSON body
  `{"error": {"code", "message", "innerError": {"request-id", "date"}}}`.
- Throttling (https://learn.microsoft.com/graph/throttling): 429 Too Many Requests
  with a `Retry-After` header in seconds; 503 may carry one too.
- Sign-in log, beta (https://learn.microsoft.com/graph/api/signin-list?view=graph-rest-beta,
  https://learn.microsoft.com/graph/api/resources/signin?view=graph-rest-beta):
  `GET /beta/auditLogs/signIns` lists sign-ins newest first (`createdDateTime`
  descending), `$top` at most and by default 1,000, further pages by `@odata.nextLink`
  with a `$skiptoken`. Without a `signInEventTypes/any(t: t eq '...')` filter only
  interactive user sign-ins are listed. `$filter` clauses joined by `and`: `appId eq`,
  `createdDateTime ge`/`le` (an unquoted UTC time), the event type. A service principal
  sign-in carries `appId`, `servicePrincipalCredentialKeyId` (the secret's or
  certificate's keyId), `servicePrincipalCredentialThumbprint`, `ipAddress`,
  `resourceDisplayName`, `status.errorCode`. Reading it needs the application
  permission `AuditLog.Read.All` (403 `Authorization_RequestDenied` without it).

App management policies (https://learn.microsoft.com/graph/api/resources/applicationauthenticationmethodpolicy):

- Tenant default (https://learn.microsoft.com/graph/api/tenantappmanagementpolicy-get,
  https://learn.microsoft.com/graph/api/resources/tenantappmanagementpolicy):
  `GET /v1.0/policies/defaultAppManagementPolicy` answers `id`, `displayName`,
  `description`, `isEnabled` and `applicationRestrictions` / `servicePrincipalRestrictions`
  (`{"passwordCredentials": [...], "keyCredentials": [...]}`); it always exists and, until
  a test sets one (`set_default_policy`), is the documented example: disabled, no
  restrictions. Least privileged application permission: `Policy.Read.All`; higher:
  Policy.Read.ApplicationConfiguration, Policy.ReadWrite.ApplicationConfiguration.
  Without one of them: 403 `Authorization_RequestDenied`.
- A policy assigned to an application (https://learn.microsoft.com/graph/api/resources/appmanagementpolicy,
  the `appManagementPolicies` relationship of
  https://learn.microsoft.com/graph/api/resources/application):
  `GET /v1.0/applications/{id}/appManagementPolicies` answers `{"value": [{"id",
  "displayName", "description", "isEnabled", "restrictions": {"passwordCredentials",
  "keyCredentials"}}]}`; one policy at most per object (`assign_policy` replaces). The
  permission for this relationship has no page of its own; the double asks for an
  application read permission and one of the policy read permissions, as the documented
  `GET /policies/appManagementPolicies/{id}/appliesTo` does (Application.Read.All and
  Policy.Read.All); 404 `Request_ResourceNotFound` for an unknown object id.
- Precedence: an assigned policy replaces the tenant default for that application ("the
  app management policy takes precedence and the assigned application or service principal
  doesn't inherit from the tenant default policy"); a disabled policy restricts nothing.
- passwordCredentialConfiguration (https://learn.microsoft.com/graph/api/resources/passwordcredentialconfiguration):
  `restrictionType`, `maxLifetime` (an ISO 8601 duration; the double reads days, hours,
  minutes and seconds, OData's Edm.Duration), `restrictForAppsCreatedAfterDateTime`
  (applications created on or after it are restricted; absent: all) and `state`
  (`disabled` turns it off; absent means enforced). Applications carry `createdDateTime`.
- addPassword under a policy: `passwordAddition` refuses every new secret and
  `passwordLifetime` one whose `endDateTime - startDateTime` (Graph's two-year default
  included) exceeds `maxLifetime`, with 400 and the codes `CredentialTypeNotAllowedAsPerAppPolicy`
  / `CredentialInvalidLifetimeAsPerAppPolicy`. These are not on Microsoft's addPassword
  page: the codes are those Microsoft's Teams Toolkit handles from addPassword
  (OfficeDev/teams-toolkit, `AadAppClient`), the messages ("Credential type not allowed as
  per assigned policy", "Credential lifetime exceeds the max value allowed as per assigned
  policy <id>") are as operators quote Azure CLI; the double's exact wording is its own.
  Not modelled: `excludeActors` exemptions, `servicePrincipalRestrictions`,
  `keyCredentials` restrictions, `customPasswordAddition` (it concerns caller-chosen
  secrets, which addPassword never takes) and the Workload Identities licence the
  policies need.

Propagation, as users report it (microsoftgraph/microsoft-graph-docs #17966,
hashicorp/vault-plugin-secrets-azure #187, jenkinsci/azure-vm-agents-plugin #539):
`sign_in_delay` seconds pass after addPassword before the new secret signs in (the token
endpoint answers AADSTS7000215 until then), and a removed secret keeps signing in for
`removal_delay` seconds. Both are 0 unless a test sets them. They are measured on
`monotonic` (real time unless a test points it at a fake clock, so that the engine's
waits on that clock and the double's delays pass together, without real waiting).

Load, as Graph documents it (https://learn.microsoft.com/graph/throttling-limits,
identity and access: 3,000 write requests per 150 s per app and tenant): `latency`
seconds pass before every Graph answer (each request in its own server thread, so slow
answers overlap as they do at Graph), and `limit_writes(per_second, burst)` answers
writes beyond a token bucket with 429 `TooManyRequests` and a whole-second `Retry-After`
(the time until the next token, rounded up), counted in `throttled_writes`; the writes
let through are counted in `accepted_writes` with their arrival times in `write_times`.

What it keeps: applications (with their assigned app management policies) and their
password credentials as SHA-256 hashes of the secret text, the tenant default policy, and
the sign-in records tests add (`add_sign_in`: a test adds a record late, with an earlier
time, to play the log's delay); nothing logs a secret text or a token. `requests` records
method, path and decoded query of every request (never headers or bodies);
`removed_key_ids` the keyId of every successful removePassword and removeKey, in order
(ids are not secrets); `proofs` every proof JWT addKey and removeKey received (public
to whoever sees the request, kept so tests can prove keyshift never shows one).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import math
import re
import secrets
import string
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from tests.doubles.tls import TlsFiles, TlsServer

GRAPH_SCOPE = "https://graph.microsoft.com/.default"
GRAPH_AUDIENCE = "https://graph.microsoft.com"
JWT_BEARER = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
FEDERATED_AUDIENCE = "api://AzureADTokenExchange"
PROOF_AUDIENCE = "00000002-0000-0000-c000-000000000000"
"""The `aud` of an addKey/removeKey proof (Azure AD Graph's application id, as documented)."""
PROOF_MAX_LIFETIME = 600
"""An addKey/removeKey proof may live at most 10 minutes (`exp - nbf`)."""
READ_ROLES = frozenset(
    {
        "Application.Read.All",
        "Application.ReadWrite.OwnedBy",
        "Application.ReadWrite.All",
        "Directory.Read.All",
    }
)
WRITE_ROLES = frozenset({"Application.ReadWrite.OwnedBy", "Application.ReadWrite.All"})
AUDIT_LOG_ROLES = frozenset({"AuditLog.Read.All"})
POLICY_READ_ROLES = frozenset(
    {
        "Policy.Read.All",
        "Policy.Read.ApplicationConfiguration",
        "Policy.ReadWrite.ApplicationConfiguration",
    }
)
DEFAULT_POLICY_ID = "00000000-0000-0000-0000-000000000000"
DEFAULT_POLICY_PATH = "/v1.0/policies/defaultAppManagementPolicy"
_EDM_DURATION = re.compile(r"^P(?:(\d+)D)?(?:T(?:(\d+)H)?(?:(\d+)M)?(?:(\d+(?:\.\d+)?)S)?)?$")
MAX_TOP = 999
MAX_SIGN_IN_TOP = 1000
SIGN_IN_EVENT_TYPES = frozenset(
    {"interactiveUser", "nonInteractiveUser", "servicePrincipal", "managedIdentity"}
)
MAX_EXPANDED = 20
"""Graph returns at most 20 objects of an expanded directory relationship."""
_EXPAND_OWNERS = re.compile(r"^owners(\(\$select=[A-Za-z,]+\))?$")
DEFAULT_TOP = 100
GRAPH_PREFIXES = ("/v1.0/", "/beta/")
SECRET_ALPHABET = string.ascii_letters + string.digits + "~._-"
_FILTER = re.compile(r"^\s*(appId|displayName) eq '((?:[^']|'')*)'\s*$")
_SIGN_IN_CLAUSE = re.compile(
    r"^(?:(appId) eq '((?:[^']|'')*)'"
    r"|(createdDateTime) (ge|le) (\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?Z)"
    r"|(signInEventTypes)/any\(t: t eq '([A-Za-z]+)'\))$"
)
_APP_PATH = re.compile(
    r"^/v1\.0/applications/([^/]+)"
    r"(?:/(addPassword|removePassword|addKey|removeKey|appManagementPolicies))?$"
)


@dataclass(frozen=True)
class LoggedRequest:
    """One request the double received: no headers, no body."""

    method: str
    path: str
    query: dict[str, list[str]]


@dataclass
class StoredPassword:
    key_id: str
    display_name: str | None
    hint: str
    secret_sha256: str
    start: datetime
    end: datetime
    added_at: float | None = None
    """The double's `monotonic()` when addPassword made it (None for seeded ones): with
    `sign_in_delay` set, it signs in only that long afterwards."""


@dataclass
class RemovedPassword:
    """A password removePassword took away, which keeps signing in for `removal_delay`."""

    app_id: str
    secret_sha256: str
    end: datetime
    removed_at: float


@dataclass
class StoredCertificate:
    key_id: str
    display_name: str | None
    thumbprint: str
    """`customKeyIdentifier`: the SHA-1 thumbprint, upper-case hex."""
    start: datetime
    end: datetime
    der: bytes | None = None
    """The certificate (public), when a test or addKey/PATCH gave one; seeded ones may
    have none."""
    added_at: float | None = None
    """The double's `monotonic()` when it was added through Graph (None: seeded)."""

    @property
    def certificate(self) -> x509.Certificate | None:
        return x509.load_der_x509_certificate(self.der) if self.der else None

    def as_json(self, *, with_key: bool = False) -> dict[str, Any]:
        return {
            "customKeyIdentifier": self.thumbprint,
            "displayName": self.display_name,
            "endDateTime": _iso(self.end),
            "keyId": self.key_id,
            "startDateTime": _iso(self.start),
            "type": "AsymmetricX509Cert",
            "usage": "Verify",
            "key": base64.b64encode(self.der).decode() if with_key and self.der else None,
        }


@dataclass
class RemovedCertificate:
    """A certificate removeKey or PATCH took away, which keeps signing in for `removal_delay`."""

    app_id: str
    der: bytes
    end: datetime
    removed_at: float


@dataclass(frozen=True)
class StoredOwner:
    id: str
    display_name: str
    user_principal_name: str | None

    def as_json(self) -> dict[str, Any]:
        kind = "user" if self.user_principal_name else "servicePrincipal"
        return {
            "@odata.type": f"#microsoft.graph.{kind}",
            "id": self.id,
            "displayName": self.display_name,
            "userPrincipalName": self.user_principal_name,
        }


@dataclass
class StoredApplication:
    id: str
    app_id: str
    display_name: str
    passwords: list[StoredPassword] = field(default_factory=list)
    certificates: list[StoredCertificate] = field(default_factory=list)
    owners: list[StoredOwner] = field(default_factory=list)
    created: datetime = field(default_factory=lambda: datetime.now(UTC).replace(microsecond=0))
    """`createdDateTime`, which policy restrictions are dated against."""
    management_policies: list[dict[str, Any]] = field(default_factory=list)
    """The app management policies assigned to it, as Graph answers them (one at most)."""

    def as_json(self, *, expand_owners: bool = False, with_keys: bool = False) -> dict[str, Any]:
        body = self._json(with_keys)
        if expand_owners:
            body["owners"] = [o.as_json() for o in self.owners[:MAX_EXPANDED]]
        return body

    def _json(self, with_keys: bool = False) -> dict[str, Any]:
        return {
            "id": self.id,
            "appId": self.app_id,
            "displayName": self.display_name,
            "createdDateTime": _iso(self.created),
            "keyCredentials": [c.as_json(with_key=with_keys) for c in self.certificates],
            "passwordCredentials": [
                {
                    "customKeyIdentifier": None,
                    "displayName": p.display_name,
                    "endDateTime": _iso(p.end),
                    "hint": p.hint,
                    "keyId": p.key_id,
                    "secretText": None,
                    "startDateTime": _iso(p.start),
                }
                for p in self.passwords
            ],
        }


@dataclass(frozen=True)
class StoredSignIn:
    """One sign-in log record: ids and times, never a secret."""

    id: str
    created: datetime
    app_id: str
    key_id: str | None
    event_type: str
    ip_address: str | None
    resource: str | None
    error_code: int

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "createdDateTime": _iso(self.created),
            "appId": self.app_id,
            "appDisplayName": None,
            "ipAddress": self.ip_address,
            "resourceDisplayName": self.resource,
            "servicePrincipalId": str(uuid.uuid5(uuid.NAMESPACE_URL, self.app_id)),
            "servicePrincipalCredentialKeyId": self.key_id,
            "servicePrincipalCredentialThumbprint": "",
            "signInEventTypes": [self.event_type],
            "isInteractive": self.event_type == "interactiveUser",
            "clientCredentialType": "clientSecret" if self.key_id else "none",
            "status": {"errorCode": self.error_code},
        }


class GraphError(Exception):
    """Raised inside a handler to answer with a Graph error body."""

    def __init__(
        self, status: int, code: str, message: str, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _parse_time(value: object, name: str) -> datetime:
    if not isinstance(value, str):
        raise GraphError(400, "Request_BadRequest", f"Invalid value for '{name}'.")
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise GraphError(400, "Request_BadRequest", f"Invalid value for '{name}'.") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def parse_filter(expression: str) -> tuple[str, str]:
    """(property, value) of `appId eq '...'` or `displayName eq '...'`, with doubled
    quotes undone. Anything else is refused as Graph refuses an unsupported query."""
    found = _FILTER.match(expression)
    if not found:
        raise GraphError(400, "BadRequest", "Invalid filter clause")
    return found.group(1), found.group(2).replace("''", "'")


def password_restriction(
    restriction_type: str,
    *,
    max_lifetime: str | None = None,
    created_after: str | None = "2019-01-01T00:00:00Z",
    state: str | None = None,
) -> dict[str, Any]:
    """A `passwordCredentialConfiguration` as Graph lists it; `state` None leaves it out
    (enforced), `created_after` None restricts every application."""
    restriction: dict[str, Any] = {
        "restrictionType": restriction_type,
        "maxLifetime": max_lifetime,
        "restrictForAppsCreatedAfterDateTime": created_after,
    }
    if state is not None:
        restriction["state"] = state
    return restriction


def default_app_management_policy(
    password_credentials: list[dict[str, Any]] | None = None, *, enabled: bool = False
) -> dict[str, Any]:
    """The tenant default policy as Graph answers it; with no arguments, the documented
    example of a tenant that never set it (disabled, no restrictions)."""
    return {
        "id": DEFAULT_POLICY_ID,
        "displayName": "Default app management tenant policy",
        "description": "Default tenant policy that enforces app management restrictions on "
        "applications and service principals.",
        "isEnabled": enabled,
        "applicationRestrictions": {
            "passwordCredentials": list(password_credentials or ()),
            "keyCredentials": [],
        },
        "servicePrincipalRestrictions": {"passwordCredentials": [], "keyCredentials": []},
    }


def parse_edm_duration(text: str) -> timedelta:
    """`P90D`, `PT12H`, `P4DT12H30M5S`: OData's Edm.Duration (days and time, no years or
    months). A test that writes another form gets a ValueError, not a silent guess."""
    found = _EDM_DURATION.match(text)
    if not found or not any(found.groups()):
        raise ValueError(f"the Graph double reads maxLifetime as days and time, not {text!r}")
    days, hours, minutes, seconds = (float(g) if g else 0.0 for g in found.groups())
    return timedelta(days=days, hours=hours, minutes=minutes, seconds=seconds)


class GraphDouble:
    """Entra ID token endpoint and Graph `/v1.0/applications` over TLS on 127.0.0.1.

    Use as a context manager. `authority` is what azure-identity takes, `graph_url`
    what a Graph client takes. Fault switches: `throttle(n, ...)`, `limit_writes`,
    `latency`, `deny_writes`, `sign_in_delay`, `removal_delay` (secrets and certificates
    alike); `now` and `monotonic` point its clocks at a test's. App management policies:
    `set_default_policy`, `assign_policy`. Certificates: `seed_certificate(certificate=...)`
    adds one by hand; `proofs`, `invalid_proofs` and `patches` count what addKey, removeKey
    and updates of keyCredentials received.
    """

    def __init__(
        self,
        tls: TlsFiles,
        *,
        tenant_id: str = "00000000-0000-4000-8000-00000000aaaa",
        client_id: str = "00000000-0000-4000-8000-00000000cccc",
        client_secret: str = "double-client-secret-value",  # noqa: S107 (a test double)
    ) -> None:
        self.tls = tls
        self.tenant_id = tenant_id
        self.client_id = client_id
        self._client_secret_sha256 = _sha256(client_secret)
        self.applications: dict[str, StoredApplication] = {}
        self.requests: list[LoggedRequest] = []
        self.tokens_issued = 0
        self.removed_key_ids: list[str] = []
        """keyIds removed by removePassword, in order: counts removals per keyId."""
        self.roles: set[str] = {"Application.ReadWrite.All"}
        """Application permissions granted to keyshift's client: they go into the `roles`
        claim of its tokens, and Graph requests need one that allows them."""
        self.scopes: set[str] = {GRAPH_SCOPE}
        self.certificates: dict[str, x509.Certificate] = {}
        """client id -> the certificate whose key signs its client assertions."""
        self.federated: dict[str, tuple[str, str]] = {}
        """client id -> (issuer, subject) of the external tokens it trusts (workload identity)."""
        self.identity_header: str | None = None
        """When set, `/msi/token` answers managed identity requests carrying it in
        `X-IDENTITY-HEADER`, for `client_id`."""
        """Scopes the token endpoint issues tokens for (`<resource>/.default`)."""
        self.deny_writes = False
        """When true, addPassword and removePassword answer 403 Authorization_RequestDenied."""
        self.sign_ins: list[StoredSignIn] = []
        """The sign-in log, as tests fill it (`add_sign_in`)."""
        self.sign_in_delay = 0.0
        """Seconds after addPassword before the new secret signs in; until then the token
        endpoint refuses it with AADSTS7000215, as Entra ID does while it replicates."""
        self.removal_delay = 0.0
        """Seconds after removePassword during which the removed secret still signs in,
        as Entra ID's replicas keep accepting it for minutes."""
        self.default_app_management_policy: dict[str, Any] = default_app_management_policy()
        """The tenant default policy, as `GET /policies/defaultAppManagementPolicy` answers it."""
        self.monotonic: Callable[[], float] = time.monotonic
        """The clock the delays are measured on, in seconds."""
        self.now: Callable[[], datetime] = lambda: datetime.now(UTC)
        """The time certificates' validity and proofs' `nbf`/`exp` are judged at (real time
        unless a test points it at a fake clock, on which keyshift then dates them)."""
        self._removed: list[RemovedPassword] = []
        self._removed_certificates: list[RemovedCertificate] = []
        self.proofs: list[str] = []
        """Every proof addKey and removeKey received, in order."""
        self.invalid_proofs = 0
        """addKey/removeKey calls refused for their proof."""
        self.patches = 0
        """PATCH /applications/{id} calls that changed keyCredentials."""
        self._tokens: dict[str, dict[str, Any]] = {}
        self._skiptokens: dict[str, int] = {}
        self._throttle: list[tuple[int, int | None]] = []
        self.latency = 0.0
        """Seconds every Graph request waits before it is answered (real time)."""
        self._write_limit: tuple[float, int] | None = None
        self._write_tokens = 0.0
        self._write_stamp = 0.0
        self.accepted_writes = 0
        self.throttled_writes = 0
        self.write_times: list[float] = []
        """`time.monotonic()` of each write let through, in order of arrival."""
        self._lock = threading.Lock()
        self._http = TlsServer(tls, "Graph")

    # --- lifecycle ---------------------------------------------------------------------

    def __enter__(self) -> GraphDouble:
        self._http.start(self.handle)
        return self

    def __exit__(self, *exc: object) -> None:
        self._http.stop()

    @property
    def port(self) -> int:
        return self._http.port

    @property
    def authority(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    @property
    def graph_url(self) -> str:
        return f"https://127.0.0.1:{self.port}/v1.0"

    def integration(self, secret_env: str) -> dict[str, Any]:
        """An `entra` integration's settings that reach this double, keyshift's secret read
        from the environment variable `secret_env`."""
        return {
            "tenant_id": self.tenant_id,
            "client_id": self.client_id,
            "auth": {"method": "client_secret", "secret_from": f"env:{secret_env}"},
            "authority": self.authority,
            "graph_url": self.graph_url,
            "ca_bundle": str(self.tls.ca_path),
        }

    # --- test controls -------------------------------------------------------------------

    def add_application(
        self,
        display_name: str,
        *,
        app_id: str | None = None,
        owners: list[StoredOwner] | None = None,
    ) -> StoredApplication:
        app = StoredApplication(
            id=str(uuid.uuid4()),
            app_id=app_id or str(uuid.uuid4()),
            display_name=display_name,
            owners=list(owners or ()),
        )
        with self._lock:
            self.applications[app.id] = app
        return app

    def set_default_policy(
        self, password_credentials: list[dict[str, Any]], *, enabled: bool = True
    ) -> dict[str, Any]:
        """Make the tenant default policy restrict client secrets (see `password_restriction`)."""
        policy = default_app_management_policy(password_credentials, enabled=enabled)
        with self._lock:
            self.default_app_management_policy = policy
        return policy

    def assign_policy(
        self,
        app: StoredApplication,
        password_credentials: list[dict[str, Any]],
        *,
        enabled: bool = True,
        display_name: str = "payments exemption",
    ) -> dict[str, Any]:
        """Assign an app management policy to `app`, replacing any before (Graph allows
        one); it then replaces the tenant default for `app`."""
        policy = {
            "id": str(uuid.uuid4()),
            "displayName": display_name,
            "description": "assigned by a test",
            "isEnabled": enabled,
            "restrictions": {
                "passwordCredentials": list(password_credentials),
                "keyCredentials": [],
            },
        }
        with self._lock:
            app.management_policies = [policy]
        return policy

    def delete_application(self, object_id: str) -> None:
        with self._lock:
            del self.applications[object_id]

    def seed_password(
        self,
        app: StoredApplication,
        display_name: str | None,
        *,
        start: datetime,
        end: datetime,
        secret_text: str | None = None,
    ) -> StoredPassword:
        """A secret added the way a person in the portal would: not through keyshift."""
        text = secret_text or secrets.token_urlsafe(30)
        stored = StoredPassword(
            key_id=str(uuid.uuid4()),
            display_name=display_name,
            hint=text[:3],
            secret_sha256=_sha256(text),
            start=start,
            end=end,
            added_at=self.monotonic(),
        )
        with self._lock:
            app.passwords.append(stored)
        return stored

    def seed_certificate(
        self,
        app: StoredApplication,
        display_name: str | None,
        *,
        start: datetime | None = None,
        end: datetime | None = None,
        certificate: x509.Certificate | None = None,
    ) -> StoredCertificate:
        """A certificate added by hand (the portal): with `certificate`, its public part
        (thumbprint and validity from it), so its key signs proofs and client assertions."""
        if certificate is not None:
            stored = _stored_certificate(
                certificate.public_bytes(serialization.Encoding.DER), display_name, None
            )
        else:
            if start is None or end is None:
                raise ValueError("start and end are needed without a certificate")
            stored = StoredCertificate(
                key_id=str(uuid.uuid4()),
                display_name=display_name,
                thumbprint=secrets.token_hex(20).upper(),
                start=start,
                end=end,
            )
        with self._lock:
            app.certificates.append(stored)
        return stored

    def add_sign_in(
        self,
        app: StoredApplication,
        key_id: str | None,
        *,
        at: datetime,
        ip_address: str | None = "10.1.2.3",
        resource: str | None = "Microsoft Graph",
        event_type: str = "servicePrincipal",
        error_code: int = 0,
    ) -> StoredSignIn:
        """A sign-in of `app` with its secret `key_id` at `at`, now visible in the log."""
        record = StoredSignIn(
            id=str(uuid.uuid4()),
            created=at.astimezone(UTC).replace(microsecond=0),
            app_id=app.app_id,
            key_id=key_id,
            event_type=event_type,
            ip_address=ip_address,
            resource=resource,
            error_code=error_code,
        )
        with self._lock:
            self.sign_ins.append(record)
        return record

    def sign_in_requests(self) -> list[LoggedRequest]:
        with self._lock:
            return [r for r in self.requests if r.path == "/beta/auditLogs/signIns"]

    def throttle(self, n: int, retry_after: int | None = 2, status: int = 429) -> None:
        """Answer the next `n` Graph requests with `status` and, unless None, a
        `Retry-After: retry_after` header."""
        with self._lock:
            self._throttle.extend([(status, retry_after)] * n)

    def limit_writes(self, per_second: float, burst: int) -> None:
        """Let writes (any method but GET) through a token bucket of `per_second` refilled
        up to `burst`; beyond it, answer 429 with Retry-After, as Graph's throttling does."""
        with self._lock:
            self._write_limit = (per_second, burst)
            self._write_tokens = float(burst)
            self._write_stamp = time.monotonic()

    def _admit_write(self) -> int | None:
        """None when the write may go on; else the Retry-After to answer, in seconds."""
        with self._lock:
            now = time.monotonic()
            if self._write_limit is None:
                self.accepted_writes += 1
                self.write_times.append(now)
                return None
            rate, burst = self._write_limit
            self._write_tokens = min(
                float(burst), self._write_tokens + (now - self._write_stamp) * rate
            )
            self._write_stamp = now
            if self._write_tokens >= 1:
                self._write_tokens -= 1
                self.accepted_writes += 1
                self.write_times.append(now)
                return None
            self.throttled_writes += 1
            return max(1, math.ceil((1 - self._write_tokens) / rate))

    @contextmanager
    def writes_denied(self) -> Iterator[None]:
        self.deny_writes = True
        try:
            yield
        finally:
            self.deny_writes = False

    def graph_requests(self, method: str | None = None) -> list[LoggedRequest]:
        with self._lock:
            return [
                r
                for r in self.requests
                if r.path.startswith(GRAPH_PREFIXES) and (method is None or r.method == method)
            ]

    # --- the service -------------------------------------------------------------------

    def handle(
        self, method: str, raw_path: str, headers: dict[str, str], body: bytes
    ) -> tuple[int, dict[str, str], bytes]:
        parts = urlsplit(raw_path)
        query = parse_qs(parts.query, keep_blank_values=True)
        with self._lock:
            self.requests.append(LoggedRequest(method, parts.path, query))
        try:
            if parts.path.startswith(GRAPH_PREFIXES):
                return self._graph(method, parts.path, query, headers, body)
            return self._login(method, parts.path, body, query, headers)
        except GraphError as exc:
            if parts.path.startswith(GRAPH_PREFIXES):
                return _json(exc.status, self._error_body(exc), exc.headers)
            return _json(exc.status, {"error": exc.code, "error_description": exc.message})

    def _error_body(self, exc: GraphError) -> dict[str, Any]:
        return {
            "error": {
                "code": exc.code,
                "message": exc.message,
                "innerError": {"request-id": str(uuid.uuid4()), "date": _iso(datetime.now(UTC))},
            }
        }

    def _login(
        self,
        method: str,
        path: str,
        body: bytes,
        query: dict[str, list[str]],
        headers: dict[str, str],
    ) -> tuple[int, dict[str, str], bytes]:
        base = f"{self.authority}/{self.tenant_id}"
        if method == "GET" and path == f"/{self.tenant_id}/v2.0/.well-known/openid-configuration":
            return _json(
                200,
                {
                    "token_endpoint": f"{base}/oauth2/v2.0/token",
                    "authorization_endpoint": f"{base}/oauth2/v2.0/authorize",
                    "issuer": f"{base}/v2.0",
                    "jwks_uri": f"{base}/discovery/v2.0/keys",
                    "response_types_supported": ["code", "id_token", "token"],
                    "token_endpoint_auth_methods_supported": ["client_secret_post"],
                },
            )
        if method == "POST" and path == f"/{self.tenant_id}/oauth2/v2.0/token":
            return self._token(parse_qs(body.decode()))
        if method == "GET" and path == "/msi/token":
            return self._managed_identity(query, headers)
        return _json(404, {"error": "not_found", "error_description": "no such endpoint"})

    def _token(self, form: dict[str, list[str]]) -> tuple[int, dict[str, str], bytes]:
        def one(name: str) -> str:
            values = form.get(name, [])
            return values[0] if len(values) == 1 else ""

        client_id, secret = one("client_id"), one("client_secret")
        if one("grant_type") != "client_credentials":
            return _aad_error(400, "unsupported_grant_type", 70003, "Unsupported grant type.")
        scope = one("scope")
        if scope not in self.scopes:
            return _aad_error(400, "invalid_scope", 1002012, "The provided scope is invalid.")
        if one("client_assertion_type") == JWT_BEARER:
            if not self._assertion_accepted(client_id, one("client_assertion")):
                return _aad_error(
                    401,
                    "invalid_client",
                    700027,
                    "Client assertion failed signature validation or does not match a "
                    f"credential of app '{client_id}'.",
                )
            return self._issue(client_id, scope)
        if not self._client_accepts(client_id, secret):
            # The real description names the app, never the secret that was sent.
            return _aad_error(
                401,
                "invalid_client",
                7000215,
                "Invalid client secret provided. Ensure the secret being sent in the request "
                f"is the client secret value, not the client secret ID, for a secret added "
                f"to app '{client_id}'.",
            )
        return self._issue(client_id, scope)

    def _issue(self, client_id: str, scope: str) -> tuple[int, dict[str, str], bytes]:
        token, _ = self._mint(client_id, scope)
        return _json(
            200,
            {
                "token_type": "Bearer",
                "expires_in": 3599,
                "ext_expires_in": 3599,
                "access_token": token,
            },
        )

    def _mint(self, client_id: str, scope: str) -> tuple[str, dict[str, Any]]:
        claims = {
            "aud": scope.removesuffix("/.default"),
            "tid": self.tenant_id,
            "appid": client_id,
            "roles": sorted(self.roles) if client_id == self.client_id else [],
            "exp": int(datetime.now(UTC).timestamp()) + 3599,
            "uti": secrets.token_urlsafe(12),
        }
        token = _unsigned_jwt(claims)
        with self._lock:
            self._tokens[token] = claims
            self.tokens_issued += 1
        return token, claims

    def _assertion_accepted(self, client_id: str, assertion: str) -> bool:
        """A client assertion signed (PS256) by the client's registered certificate, or an
        external token matching one of its federated credentials."""
        parts = assertion.split(".")
        if len(parts) != 3:
            return False
        try:
            header = json.loads(_b64decode(parts[0]))
            claims = json.loads(_b64decode(parts[1]))
            signature = _b64decode(parts[2])
        except ValueError:
            return False
        now = datetime.now(UTC).timestamp()
        if not isinstance(claims, dict) or claims.get("exp", 0) <= now:
            return False
        if "x5t#S256" in header:
            named = str(header["x5t#S256"]).rstrip("=")
            candidates = self._signing_certificates(client_id)
            found = [c for c in candidates if _b64url(c.fingerprint(hashes.SHA256())) == named]
            if not found:
                return False
            key = found[0].public_key()
            if not isinstance(key, rsa.RSAPublicKey):
                return False
            try:
                key.verify(
                    signature,
                    f"{parts[0]}.{parts[1]}".encode(),
                    padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32),
                    hashes.SHA256(),
                )
            except InvalidSignature:
                return False
            token_url = f"{self.authority}/{self.tenant_id}/oauth2/v2.0/token"
            return (
                claims.get("iss") == client_id == claims.get("sub")
                and claims.get("aud") == token_url
            )
        trusted = self.federated.get(client_id)
        audience = claims.get("aud")
        audiences = audience if isinstance(audience, list) else [audience]
        return (
            trusted is not None
            and (claims.get("iss"), claims.get("sub")) == trusted
            and FEDERATED_AUDIENCE in audiences
        )

    def _signing_certificates(self, client_id: str) -> list[x509.Certificate]:
        """The certificates whose keys sign `client_id`'s assertions now: keyshift's own
        (`certificates`), and the live ones of the application with this appId once
        `sign_in_delay` has passed since they were added, and removed ones until
        `removal_delay` has passed since their removal."""
        now, tick = self.now(), self.monotonic()
        found: list[x509.Certificate] = []
        own = self.certificates.get(client_id)
        if own is not None:
            found.append(own)
        with self._lock:
            ders = [
                c.der
                for app in self.applications.values()
                if app.app_id == client_id
                for c in app.certificates
                if c.der
                and c.start <= now < c.end
                and (c.added_at is None or tick - c.added_at >= self.sign_in_delay)
            ]
            ders += [
                r.der
                for r in self._removed_certificates
                if r.app_id == client_id
                and now < r.end
                and tick - r.removed_at < self.removal_delay
            ]
        found.extend(x509.load_der_x509_certificate(d) for d in ders)
        return found

    def _managed_identity(
        self, query: dict[str, list[str]], headers: dict[str, str]
    ) -> tuple[int, dict[str, str], bytes]:
        """App Service's identity endpoint: GET with `api-version`, `resource`, optional
        `client_id`, and the `X-IDENTITY-HEADER` secret."""
        if self.identity_header is None or not hmac.compare_digest(
            headers.get("x-identity-header", ""), self.identity_header
        ):
            return _json(401, {"error": "unauthorized", "error_description": "bad header"})
        resource = query.get("resource", [""])[0]
        client_id = query.get("client_id", [self.client_id])[0]
        if f"{resource}/.default" not in self.scopes:
            return _json(400, {"error": "invalid_resource", "error_description": resource})
        token, claims = self._mint(client_id, f"{resource}/.default")
        return _json(
            200,
            {
                "access_token": token,
                "expires_on": str(claims["exp"]),
                "resource": resource,
                "token_type": "Bearer",
                "client_id": client_id,
            },
        )

    def tokens_of(self, client_id: str) -> int:
        """How many tokens the double holds as issued to `client_id`."""
        with self._lock:
            return sum(1 for claims in self._tokens.values() if claims["appid"] == client_id)

    def revoke_tokens(self, client_id: str) -> None:
        """Forget every token issued to `client_id`: Graph answers them 401 from now on,
        as after a revocation of the app's sessions."""
        with self._lock:
            self._tokens = {t: c for t, c in self._tokens.items() if c["appid"] != client_id}

    def token_claims(self, authorization: str) -> dict[str, Any] | None:
        """The claims of a bearer token this double issued, or None."""
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer":
            return None
        with self._lock:
            return self._tokens.get(token)

    def _client_accepts(self, client_id: str, secret: str) -> bool:
        """The configured client's secret, or a live password of an application with
        this appId (so a secret minted through addPassword can sign in): once
        `sign_in_delay` has passed since it was added, and until `removal_delay` has
        passed since it was removed."""
        hashed = _sha256(secret)
        if client_id == self.client_id and hmac.compare_digest(hashed, self._client_secret_sha256):
            return True
        now, tick = datetime.now(UTC), self.monotonic()
        with self._lock:
            live = any(
                hmac.compare_digest(hashed, p.secret_sha256)
                and p.start <= now < p.end
                and (p.added_at is None or tick - p.added_at >= self.sign_in_delay)
                for app in self.applications.values()
                if app.app_id == client_id
                for p in app.passwords
            )
            lingering = any(
                r.app_id == client_id
                and hmac.compare_digest(hashed, r.secret_sha256)
                and now < r.end
                and tick - r.removed_at < self.removal_delay
                for r in self._removed
            )
        return live or lingering

    def _read_only(self, method: str, context: str, body: dict[str, Any]) -> Any:
        """A GET-only resource's answer (`@odata.context` and `body`); 405 for any other
        method."""
        if method != "GET":
            raise GraphError(405, "Request_BadRequest", "Method not allowed.")
        return _json(200, {"@odata.context": f"{self.graph_url}/$metadata#{context}", **body})

    def _graph(
        self,
        method: str,
        path: str,
        query: dict[str, list[str]],
        headers: dict[str, str],
        body: bytes,
    ) -> tuple[int, dict[str, str], bytes]:
        if self.latency:
            time.sleep(self.latency)
        with self._lock:
            fault = self._throttle.pop(0) if self._throttle else None
        if fault is None and method != "GET":
            wait = self._admit_write()
            if wait is not None:
                fault = (429, wait)
        if fault is not None:
            status, retry_after = fault
            code = "TooManyRequests" if status == 429 else "ServiceUnavailable"
            extra = {} if retry_after is None else {"Retry-After": str(retry_after)}
            raise GraphError(status, code, "The request has been throttled", extra)

        claims = self.token_claims(headers.get("authorization", ""))
        if claims is None or claims["aud"] != GRAPH_AUDIENCE:
            raise GraphError(401, "InvalidAuthenticationToken", "Access token is empty or invalid.")
        sign_ins = path == "/beta/auditLogs/signIns" and method == "GET"
        found = _APP_PATH.match(path)
        action = found.group(2) if found else None
        # Each set must share a role with the token: a policy read needs a policy role,
        # an application's policies also a role that reads the application.
        needed: list[frozenset[str]]
        if sign_ins:
            needed = [AUDIT_LOG_ROLES]
        elif path == DEFAULT_POLICY_PATH:
            needed = [POLICY_READ_ROLES]
        elif action == "appManagementPolicies":
            needed = [READ_ROLES, POLICY_READ_ROLES]
        else:
            needed = [READ_ROLES if method == "GET" else WRITE_ROLES]
        roles = set(claims["roles"])
        if not all(n & roles for n in needed):
            raise GraphError(
                403,
                "Authorization_RequestDenied",
                "Insufficient privileges to complete the operation.",
            )

        if sign_ins:
            return self._sign_ins(query)
        if path == "/v1.0/applications" and method == "GET":
            return self._list(query)
        if path == DEFAULT_POLICY_PATH:
            with self._lock:
                policy = json.loads(json.dumps(self.default_app_management_policy))
            return self._read_only(method, "policies/defaultAppManagementPolicy/$entity", policy)
        if not found:
            raise GraphError(400, "BadRequest", "Resource not found for the segment.")
        app_id = found.group(1)
        with self._lock:
            app = self.applications.get(app_id)
        if app is None:
            raise GraphError(
                404,
                "Request_ResourceNotFound",
                f"Resource '{app_id}' does not exist or one of its queried reference-property "
                "objects are not present.",
            )
        if action is None and method == "GET":
            selected = [f for f in query.get("$select", [""])[0].split(",") if f]
            body = app.as_json(with_keys="keyCredentials" in selected)
            if selected:
                body = {k: v for k, v in body.items() if k in {*selected, "id"}}
            return _json(200, body)
        if action == "appManagementPolicies":
            with self._lock:
                policies = json.loads(json.dumps(app.management_policies))
            return self._read_only(method, "policies/appManagementPolicies", {"value": policies})
        if (method, action) != ("PATCH", None) and (method != "POST" or action is None):
            raise GraphError(405, "Request_BadRequest", "Method not allowed.")
        if self.deny_writes:
            raise GraphError(
                403,
                "Authorization_RequestDenied",
                "Insufficient privileges to complete the operation.",
            )
        try:
            payload = json.loads(body or b"{}")
        except ValueError:
            raise GraphError(400, "BadRequest", "Unable to read JSON request payload.") from None
        if not isinstance(payload, dict):
            raise GraphError(400, "BadRequest", "Unable to read JSON request payload.")
        if action is None:
            return self._patch_application(app, payload)
        if action == "addPassword":
            return self._add_password(app, payload)
        if action == "addKey":
            return self._add_key(app, payload)
        if action == "removeKey":
            return self._remove_key(app, payload)
        return self._remove_password(app, payload)

    def _list(self, query: dict[str, list[str]]) -> tuple[int, dict[str, str], bytes]:
        top = DEFAULT_TOP
        if "$top" in query:
            try:
                top = int(query["$top"][0])
            except ValueError:
                raise GraphError(400, "BadRequest", "Invalid page size specified.") from None
            if not 1 <= top <= MAX_TOP:
                raise GraphError(400, "BadRequest", "Invalid page size specified.")
        with self._lock:
            apps = sorted(self.applications.values(), key=lambda a: a.id)
            offset = 0
            if "$skiptoken" in query:
                found = self._skiptokens.get(query["$skiptoken"][0])
                if found is None:
                    raise GraphError(
                        400, "Directory_ExpiredPageToken", "The page token is invalid."
                    )
                offset = found
        if "$filter" in query:
            prop, value = parse_filter(query["$filter"][0])
            key = "app_id" if prop == "appId" else "display_name"
            apps = [a for a in apps if getattr(a, key) == value]
        expand = query.get("$expand", [""])[0]
        if expand and not _EXPAND_OWNERS.match(expand):
            raise GraphError(400, "BadRequest", f"Parsing OData Select and Expand failed: {expand}")
        selected = [f for f in query.get("$select", [""])[0].split(",") if f]
        page = apps[offset : offset + top]
        items = [a.as_json(expand_owners=bool(expand)) for a in page]
        if selected:
            keep = {*selected, "owners"}
            items = [{k: v for k, v in item.items() if k in keep} for item in items]
        answer: dict[str, Any] = {
            "@odata.context": f"{self.graph_url}/$metadata#applications",
            "value": items,
        }
        if offset + top < len(apps):
            skiptoken = secrets.token_urlsafe(24)
            with self._lock:
                self._skiptokens[skiptoken] = offset + top
            options = {k: v[0] for k, v in query.items() if k != "$skiptoken"}
            options["$top"] = str(top)
            options["$skiptoken"] = skiptoken
            encoded = "&".join(f"{k}={quote(v, safe='')}" for k, v in options.items())
            answer["@odata.nextLink"] = f"{self.graph_url}/applications?{encoded}"
        return _json(200, answer)

    def _sign_ins(self, query: dict[str, list[str]]) -> tuple[int, dict[str, str], bytes]:
        top = MAX_SIGN_IN_TOP
        if "$top" in query:
            try:
                top = int(query["$top"][0])
            except ValueError:
                raise GraphError(400, "BadRequest", "Invalid page size specified.") from None
            if not 1 <= top <= MAX_SIGN_IN_TOP:
                raise GraphError(400, "BadRequest", "Invalid page size specified.")
        keep = _sign_in_filter(query.get("$filter", [""])[0])
        with self._lock:
            found = sorted(
                (r for r in self.sign_ins if keep(r)), key=lambda r: r.created, reverse=True
            )
            offset = 0
            if "$skiptoken" in query:
                offset_found = self._skiptokens.get(query["$skiptoken"][0])
                if offset_found is None:
                    raise GraphError(400, "BadRequest", "The page token is invalid.")
                offset = offset_found
        answer: dict[str, Any] = {
            "@odata.context": f"{self.authority}/beta/$metadata#auditLogs/signIns",
            "value": [r.as_json() for r in found[offset : offset + top]],
        }
        if offset + top < len(found):
            skiptoken = secrets.token_hex(32)
            with self._lock:
                self._skiptokens[skiptoken] = offset + top
            options = {k: v[0] for k, v in query.items() if k != "$skiptoken"}
            options["$top"] = str(top)
            options["$skiptoken"] = skiptoken
            encoded = "&".join(f"{k}={quote(v, safe='')}" for k, v in options.items())
            answer["@odata.nextLink"] = f"{self.authority}/beta/auditLogs/signIns?{encoded}"
        return _json(200, answer)

    def _add_password(
        self, app: StoredApplication, payload: dict[str, Any]
    ) -> tuple[int, dict[str, str], bytes]:
        spec = payload.get("passwordCredential") or {}
        if not isinstance(spec, dict):
            raise GraphError(400, "BadRequest", "Invalid passwordCredential.")
        start = (
            _parse_time(spec["startDateTime"], "startDateTime")
            if spec.get("startDateTime")
            else datetime.now(UTC).replace(microsecond=0)
        )
        end = (
            _parse_time(spec["endDateTime"], "endDateTime")
            if spec.get("endDateTime")
            else start.replace(year=start.year + 2)
            if not (start.month == 2 and start.day == 29)
            else start + timedelta(days=731)
        )
        if end <= start:
            raise GraphError(400, "BadRequest", "Credential end date must be after start date.")
        self._enforce_policy(app, end - start)
        display_name = spec.get("displayName")
        secret_text = "".join(secrets.choice(SECRET_ALPHABET) for _ in range(40))
        stored = StoredPassword(
            key_id=str(uuid.uuid4()),
            display_name=display_name if isinstance(display_name, str) else None,
            hint=secret_text[:3],
            secret_sha256=_sha256(secret_text),
            start=start,
            end=end,
            added_at=self.monotonic(),
        )
        with self._lock:
            app.passwords.append(stored)
        return _json(
            200,
            {
                "@odata.context": f"{self.graph_url}/$metadata#microsoft.graph.passwordCredential",
                "customKeyIdentifier": None,
                "displayName": stored.display_name,
                "endDateTime": _iso(stored.end),
                "hint": stored.hint,
                "keyId": stored.key_id,
                "secretText": secret_text,
                "startDateTime": _iso(stored.start),
            },
        )

    def _enforce_policy(self, app: StoredApplication, lifetime: timedelta) -> None:
        """Refuse a new secret of `lifetime` as the app management policy in force for `app`
        would: its assigned policy, else the tenant default; a disabled one allows all."""
        with self._lock:
            assigned = list(app.management_policies)
            policy = assigned[0] if assigned else self.default_app_management_policy
        if not policy.get("isEnabled"):
            return
        holder = policy.get("restrictions" if assigned else "applicationRestrictions") or {}
        for restriction in holder.get("passwordCredentials") or ():
            if restriction.get("state") == "disabled":
                continue
            after = restriction.get("restrictForAppsCreatedAfterDateTime")
            if after and app.created < _parse_time(after, "restrictForAppsCreatedAfterDateTime"):
                continue
            kind = restriction.get("restrictionType")
            if kind == "passwordAddition":
                raise GraphError(
                    400,
                    "CredentialTypeNotAllowedAsPerAppPolicy",
                    f"Credential type not allowed as per assigned policy '{policy['id']}'.",
                )
            if kind == "passwordLifetime" and lifetime > parse_edm_duration(
                str(restriction.get("maxLifetime"))
            ):
                raise GraphError(
                    400,
                    "CredentialInvalidLifetimeAsPerAppPolicy",
                    "Credential lifetime exceeds the max value allowed as per assigned policy "
                    f"'{policy['id']}'.",
                )

    def _remove_password(
        self, app: StoredApplication, payload: dict[str, Any]
    ) -> tuple[int, dict[str, str], bytes]:
        key_id = payload.get("keyId")
        with self._lock:
            kept = [p for p in app.passwords if p.key_id != key_id]
            self._removed.extend(
                RemovedPassword(app.app_id, p.secret_sha256, p.end, self.monotonic())
                for p in app.passwords
                if p.key_id == key_id
            )
            if len(kept) == len(app.passwords):
                raise GraphError(
                    400,
                    "Request_BadRequest",
                    f"No password credential found with keyId '{key_id}'.",
                )
            app.passwords = kept
            self.removed_key_ids.append(str(key_id))
        return 204, {}, b""

    # --- certificates (keyCredentials) ------------------------------------------------

    def _check_proof(self, app: StoredApplication, proof: object) -> None:
        """Accept `proof` only as documented: a JWT signed RS256 by the key of one of the
        application's current certificates, `aud` PROOF_AUDIENCE, `iss` its object id, at
        most 10 minutes between `nbf` and `exp`, valid now."""
        with self._lock:
            self.proofs.append(str(proof))
        reason = self._proof_problem(app, proof)
        if reason is not None:
            with self._lock:
                self.invalid_proofs += 1
            # As users see it: Graph says only that the token is malformed.
            raise GraphError(
                401, "Authentication_MissingOrMalformed", "Access Token missing or malformed."
            )

    def _proof_problem(self, app: StoredApplication, proof: object) -> str | None:
        if not isinstance(proof, str) or proof.count(".") != 2:
            return "not a JWT"
        head, body, sig = proof.split(".")
        try:
            header = json.loads(_b64decode(head))
            claims = json.loads(_b64decode(body))
            signature = _b64decode(sig)
        except ValueError:
            return "not a JWT"
        if not isinstance(header, dict) or not isinstance(claims, dict):
            return "not a JWT"
        if header.get("alg") != "RS256":
            return "not RS256"
        now = self.now()
        current = [c for c in app.certificates if c.der is not None and c.start <= now < c.end]
        named = header.get("x5t")
        if named is not None:
            current = [
                c for c in current if _b64url(bytes.fromhex(c.thumbprint)) == str(named).rstrip("=")
            ]
        signed = f"{head}.{body}".encode()
        verified = False
        for stored in current:
            cert = stored.certificate
            key = cert.public_key() if cert is not None else None
            if not isinstance(key, rsa.RSAPublicKey):
                continue
            try:
                key.verify(signature, signed, padding.PKCS1v15(), hashes.SHA256())
            except InvalidSignature:
                continue
            verified = True
            break
        if not verified:
            return "not signed by a current certificate"
        nbf, exp = claims.get("nbf"), claims.get("exp")
        if claims.get("aud") != PROOF_AUDIENCE or claims.get("iss") != app.id:
            return "aud or iss"
        if not isinstance(nbf, int | float) or not isinstance(exp, int | float):
            return "no lifetime"
        stamp = now.timestamp()
        if exp - nbf > PROOF_MAX_LIFETIME or not nbf - 60 <= stamp < exp:
            return "lifetime"
        return None

    def _key_credential(
        self, spec: object, *, existing: dict[str, StoredCertificate] | None = None
    ) -> StoredCertificate:
        """A keyCredential of a request as stored: an `AsymmetricX509Cert` with `Verify`
        usage whose `key` is a base64 DER certificate (an existing keyId keeps its
        stored certificate when the key is the same)."""
        if not isinstance(spec, dict):
            raise GraphError(400, "BadRequest", "Invalid keyCredential.")
        if spec.get("type") != "AsymmetricX509Cert" or spec.get("usage") != "Verify":
            raise GraphError(
                400, "BadRequest", "Only AsymmetricX509Cert keys with Verify usage are modelled."
            )
        key = spec.get("key")
        if not isinstance(key, str) or not key:
            raise GraphError(400, "BadRequest", "Key credential key is missing.")
        try:
            der = base64.b64decode(key, validate=True)
            x509.load_der_x509_certificate(der)
        except (ValueError, binascii.Error):
            raise GraphError(
                400, "BadRequest", "Key credential key is not a valid certificate."
            ) from None
        name = spec.get("displayName")
        key_id = spec.get("keyId")
        held = (existing or {}).get(str(key_id)) if key_id else None
        if held is not None and held.der == der:
            return held
        return _stored_certificate(der, name if isinstance(name, str) else None, self.monotonic())

    def _add_key(
        self, app: StoredApplication, payload: dict[str, Any]
    ) -> tuple[int, dict[str, str], bytes]:
        self._check_proof(app, payload.get("proof"))
        if payload.get("passwordCredential") is not None:
            raise GraphError(
                400, "BadRequest", "passwordCredential is only for X509CertAndPassword keys."
            )
        stored = self._key_credential(payload.get("keyCredential"))
        with self._lock:
            if any(c.thumbprint == stored.thumbprint for c in app.certificates):
                raise GraphError(
                    400, "Request_BadRequest", "The key credential is already on the application."
                )
            app.certificates.append(stored)
        return _json(
            200,
            {
                "@odata.context": f"{self.graph_url}/$metadata#microsoft.graph.keyCredential",
                **stored.as_json(),
            },
        )

    def _remove_key(
        self, app: StoredApplication, payload: dict[str, Any]
    ) -> tuple[int, dict[str, str], bytes]:
        self._check_proof(app, payload.get("proof"))
        key_id = payload.get("keyId")
        with self._lock:
            gone = [c for c in app.certificates if c.key_id == key_id]
            if not gone:
                raise GraphError(
                    404,
                    "Request_ResourceNotFound",
                    f"No key credential found with keyId '{key_id}'.",
                )
            app.certificates = [c for c in app.certificates if c.key_id != key_id]
            self._forget(app, gone)
            self.removed_key_ids.append(str(key_id))
        return 204, {}, b""

    def _forget(self, app: StoredApplication, gone: list[StoredCertificate]) -> None:
        """Keep removed certificates signing in for `removal_delay` (lock held)."""
        self._removed_certificates.extend(
            RemovedCertificate(app.app_id, c.der, c.end, self.monotonic())
            for c in gone
            if c.der is not None
        )

    def _patch_application(
        self, app: StoredApplication, payload: dict[str, Any]
    ) -> tuple[int, dict[str, str], bytes]:
        """Update application: only `keyCredentials` is modelled; it replaces them all."""
        unknown = set(payload) - {"keyCredentials"}
        if unknown:
            raise GraphError(
                400, "BadRequest", f"The double models no update of {', '.join(sorted(unknown))}."
            )
        listed = payload.get("keyCredentials")
        if not isinstance(listed, list):
            raise GraphError(400, "BadRequest", "keyCredentials must be a collection.")
        with self._lock:
            existing = {c.key_id: c for c in app.certificates}
        replaced = [self._key_credential(spec, existing=existing) for spec in listed]
        with self._lock:
            kept = {c.key_id for c in replaced}
            gone = [c for c in app.certificates if c.key_id not in kept]
            app.certificates = replaced
            self._forget(app, gone)
            self.removed_key_ids.extend(c.key_id for c in gone)
            self.patches += 1
        return 204, {}, b""


def _stored_certificate(
    der: bytes, display_name: str | None, added_at: float | None
) -> StoredCertificate:
    cert = x509.load_der_x509_certificate(der)
    return StoredCertificate(
        key_id=str(uuid.uuid4()),
        display_name=display_name,
        thumbprint=hashlib.sha1(der).hexdigest().upper(),  # noqa: S324 (Graph's thumbprint)
        start=cert.not_valid_before_utc.replace(microsecond=0),
        end=cert.not_valid_after_utc.replace(microsecond=0),
        der=der,
        added_at=added_at,
    )


def _sign_in_filter(expression: str) -> Callable[[StoredSignIn], bool]:
    """A predicate on StoredSignIn for a sign-in `$filter`: `and`-joined clauses on
    appId, createdDateTime and the event type; anything else is refused. Without an
    event type clause only interactive user sign-ins match, as Graph lists them."""
    tests: list[Callable[[StoredSignIn], bool]] = []
    event_type = "interactiveUser"
    for clause in (c.strip() for c in expression.split(" and ")) if expression else ():
        found = _SIGN_IN_CLAUSE.match(clause)
        if not found:
            raise GraphError(400, "BadRequest", f"Invalid filter clause: {clause}")
        if found.group(1):
            app_id = found.group(2).replace("''", "'")
            tests.append(lambda r, a=app_id: r.app_id == a)
        elif found.group(3):
            moment = _parse_time(found.group(5), "createdDateTime")
            if found.group(4) == "ge":
                tests.append(lambda r, m=moment: r.created >= m)
            else:
                tests.append(lambda r, m=moment: r.created <= m)
        else:
            event_type = found.group(7)
            if event_type not in SIGN_IN_EVENT_TYPES:
                raise GraphError(400, "BadRequest", f"Invalid filter clause: {clause}")
    tests.append(lambda r, t=event_type: r.event_type == t)
    return lambda r: all(test(r) for test in tests)


def _json(
    status: int, body: object, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    return (
        status,
        {"Content-Type": "application/json", **(headers or {})},
        json.dumps(body).encode(),
    )


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _b64decode(text: str) -> bytes:
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError) as exc:
        raise ValueError("not base64url") from exc


def _unsigned_jwt(claims: dict[str, Any]) -> str:
    """A JWT-shaped access token: clients may read its claims (e.g. `roles`), and only
    this double checks it, by lookup, so it carries a random signature."""
    header = _b64url(json.dumps({"typ": "JWT", "alg": "RS256"}).encode())
    payload = _b64url(json.dumps(claims).encode())
    return f"{header}.{payload}.{_b64url(secrets.token_bytes(32))}"


def _aad_error(
    status: int, error: str, code: int, description: str
) -> tuple[int, dict[str, str], bytes]:
    now = datetime.now(UTC)
    trace = str(uuid.uuid4())
    return _json(
        status,
        {
            "error": error,
            "error_description": f"AADSTS{code}: {description} Trace ID: {trace} "
            f"Timestamp: {now:%Y-%m-%d %H:%M:%SZ}",
            "error_codes": [code],
            "timestamp": f"{now:%Y-%m-%d %H:%M:%SZ}",
            "trace_id": trace,
            "correlation_id": str(uuid.uuid4()),
        },
    )
