"""`entra_client_secret`: client secrets of an Entra ID app registration, through Microsoft Graph.

A rotation adds a password credential to the application (`addPassword`) while the
old one stays valid, so consumers switch without a window; revocation removes the
old one (`removePassword`). keyshift signs in to Graph with its own identity (the
`entra` integration), which needs `Application.ReadWrite.OwnedBy` (as an owner of the
application) or `Application.ReadWrite.All`.

Idempotency. Graph shows a secret's value only in the answer to `addPassword`, so a
value lost in a crash cannot be read again. Each secret a rotation adds carries the
display name `<display_name_prefix> <marker>`: a repeated `create` of the same
rotation finds the secret of that name, removes it and adds a fresh one, so exactly
one secret of the rotation remains on the application. The version's `provider_ref`
is `<appId>:<marker>`, the same across such repeats; the secret's current `keyId`
is in the version's attributes (`key_id`).

Adoption. An application keyshift starts to manage may already hold client secrets
made by hand. With `adopt_existing: retire` the first rotation takes them over as its
old version (keyIds only: their values were never known to keyshift) and removes them
with `removePassword` when the grace period ends, as it would remove a previous
keyshift secret. With `keep` (the default) they stay valid until someone removes them.

App management policies. A tenant may forbid client secrets or cap their lifetime with
an app management policy (Microsoft Graph's `tenantAppManagementPolicy` and
`appManagementPolicy`). The policy in force for the application is the one assigned to it
(`GET /applications/{id}/appManagementPolicies`, at most one), which replaces the tenant
default, else the tenant default (`GET /policies/defaultAppManagementPolicy`); a disabled
policy (`isEnabled: false`) restricts nothing. A password restriction in it applies unless
its `state` is `disabled` or the application was created before its
`restrictForAppsCreatedAfterDateTime`. Then:

- `passwordAddition` makes Entra ID refuse `addPassword` (400
  `CredentialTypeNotAllowedAsPerAppPolicy`): preflight is blocked, naming the policy;
  manual review instead when the restriction exempts callers by custom security
  attribute, which keyshift cannot check for its own identity.
- `passwordLifetime` makes Entra ID refuse a secret that lives longer than `maxLifetime`
  (400 `CredentialInvalidLifetimeAsPerAppPolicy`), Graph's two-year default included:
  `create` caps the secret's `endDateTime` at `maxLifetime` from now (less a margin for
  clock skew) and records the cap in the version's attributes (`lifetime_cap`, the
  `maxLifetime`, and `lifetime_cap_policy`); preflight says so. A year in `maxLifetime`
  counts 365 days and a month 28, so the cap never exceeds the policy.
- `customPasswordAddition` forbids secrets the caller chooses; `addPassword` lets Entra
  ID generate the secret, so it does not concern keyshift.

Reading the policies needs `Policy.Read.All`, which keyshift's identity may lack. Without
it preflight stays ready and says a restriction would only show at `creating`, where a
refusal fails the rotation before anything is published, with an error naming the
policy's rule.

`verify` signs in as the application itself with the version's secret (the client
credentials grant): the proof a consumer would get. Entra ID may take a short while
to accept a secret just added; a refusal then makes the step fail and be retried.

Residual use. Entra ID keeps no sessions, but its sign-in log records each time a
consumer gets a token with a client secret, and which secret (keyId) it used.
`residual_use` counts the application's sign-ins with the old version's keyId (each
adopted keyId, for an adopted version) over a look-back window. What this relies on,
from Microsoft's Graph documentation:

- `GET /beta/auditLogs/signIns` lists sign-ins newest first (`createdDateTime`
  descending), pages of at most 1,000 linked by `@odata.nextLink`. Without a
  `signInEventTypes` filter it lists only interactive user sign-ins; an application
  signing in as itself is `signInEventTypes/any(t: t eq 'servicePrincipal')`.
  `appId` filters with `eq`, `createdDateTime` with `ge`/`le`.
- The credential used is `servicePrincipalCredentialKeyId` (a secret's or a
  certificate's keyId; `servicePrincipalCredentialThumbprint` for certificates). Only
  the beta `signIn` resource has it, and it cannot be filtered on, so keyshift reads the
  application's sign-ins in the window and picks the keyIds out itself.
- Reading the log needs the application permission `AuditLog.Read.All` and a Microsoft
  Entra ID P1 or P2 licence; logs are kept for the licence's retention (30 days).
- Throttling is 429 with `Retry-After`, absorbed by the Graph client's retries.
- Sign-ins reach the log late: Microsoft gave 2 minutes (95th percentile) and 5 minutes
  (99th) for sign-in logs; operators report longer for non-interactive sign-ins.
- `GET /beta/reports/appCredentialSignInActivities` (keyId and last sign-in per
  credential) was considered and not used: it is a preview report, served in the global
  cloud only, with one last sign-in time per credential and no count, addresses or
  resources, and it has been reported to return nothing for long periods.

The window is `sign_in_lookback` plus the policy's `residual_use.check_every`, so a
sign-in that reaches the log up to `sign_in_lookback` late is still seen by some check.
A consumer caches its token (about an hour) and signs in again only when it expires,
so the 2-hour default covers a consumer still on the old secret that signs in once an
hour; the engine then revokes once no check has seen a sign-in for `quiet_for`, at the
earliest about `sign_in_lookback + check_every + quiet_for` after the last one. A
sign-in that reaches the log later than `sign_in_lookback` is missed.

The package: `config` (`EntraSecretConfig`), `policy` (app management policies and the
preflight), `signins` (residual use from the sign-in log) and `provider`
(`EntraSecretProvider`, the contract); `certificate` holds the `entra_certificate`
provider (`EntraCertificateProvider`: the application's certificates, see its module).
"""

from __future__ import annotations

from keyshift.providers.entra.certificate import (
    CERTIFICATE_NOT_YET_CODES,
    PROOF_AUDIENCE,
    PROOF_LIFETIME,
    EntraCertificateConfig,
    EntraCertificateProvider,
    proof_of_possession,
)
from keyshift.providers.entra.config import (
    MAX_SIGN_IN_LOOKBACK,
    MIN_SIGN_IN_LOOKBACK,
    EntraSecretConfig,
)
from keyshift.providers.entra.policy import (
    CAP_MARGIN,
    GRAPH_DEFAULT_LIFETIME,
    POLICY_REFUSALS,
    SecretRules,
)
from keyshift.providers.entra.provider import (
    NOT_YET_CODES,
    TOKENS_STAY_VALID,
    EntraSecretProvider,
)
from keyshift.providers.entra.signins import LISTED_AT_MOST

__all__ = [
    "CAP_MARGIN",
    "CERTIFICATE_NOT_YET_CODES",
    "GRAPH_DEFAULT_LIFETIME",
    "LISTED_AT_MOST",
    "MAX_SIGN_IN_LOOKBACK",
    "MIN_SIGN_IN_LOOKBACK",
    "NOT_YET_CODES",
    "POLICY_REFUSALS",
    "PROOF_AUDIENCE",
    "PROOF_LIFETIME",
    "TOKENS_STAY_VALID",
    "EntraCertificateConfig",
    "EntraCertificateProvider",
    "EntraSecretConfig",
    "EntraSecretProvider",
    "SecretRules",
    "proof_of_possession",
]
