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
- Certificates: `addKey` is not idempotent either (same rule; its displayName carries the
  marker); `removeKey` and an update of `keyCredentials` (PATCH, which replaces the whole
  collection) are repeated freely. The proof of possession both actions take travels as a
  `Secret` and is revealed only into the request body.
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

The package: `http` (`GraphHttp`: token, retries, paging, errors), `models` (what Graph
answers) and `client` (`GraphClient`: the endpoints).
"""

from __future__ import annotations

from keyshift.providers.graph.client import (
    APPLICATION_FIELDS,
    AUDIT_LOG_ROLE,
    POLICY_PERMISSION,
    SIGN_IN_PAGE_SIZE,
    SIGN_IN_PERMISSION,
    WRITE_ROLES,
    GraphClient,
    odata_literal,
)
from keyshift.providers.graph.http import (
    BACKOFF_BASE,
    BACKOFF_CAP,
    GRAPH_SCOPE,
    NEEDED_PERMISSION,
    NOT_EXECUTED_STATUSES,
    RETRYABLE_STATUSES,
    GraphHttp,
    GraphRequestFailed,
    SharedTokenSource,
    TokenRefused,
    TokenSource,
    azure_identity_token_source,
    token_roles,
)
from keyshift.providers.graph.models import (
    AddedPassword,
    Application,
    AppManagementPolicy,
    KeyCredential,
    Owner,
    PasswordCredential,
    PasswordRestriction,
    SignIn,
    parse_iso_duration,
)

__all__ = [
    "APPLICATION_FIELDS",
    "AUDIT_LOG_ROLE",
    "BACKOFF_BASE",
    "BACKOFF_CAP",
    "GRAPH_SCOPE",
    "NEEDED_PERMISSION",
    "NOT_EXECUTED_STATUSES",
    "POLICY_PERMISSION",
    "RETRYABLE_STATUSES",
    "SIGN_IN_PAGE_SIZE",
    "SIGN_IN_PERMISSION",
    "WRITE_ROLES",
    "AddedPassword",
    "AppManagementPolicy",
    "Application",
    "GraphClient",
    "GraphHttp",
    "GraphRequestFailed",
    "KeyCredential",
    "Owner",
    "PasswordCredential",
    "PasswordRestriction",
    "SharedTokenSource",
    "SignIn",
    "TokenRefused",
    "TokenSource",
    "azure_identity_token_source",
    "odata_literal",
    "parse_iso_duration",
    "token_roles",
]
