"""Importing: a value the issuer holds now, brought under management without rotating
(`keyshift import`). It is stored as the credential's current version with `imported`
provenance, a fingerprint and an expiry, so the first rotation afterwards has a real
previous version: it is handed to the provider as the version in use, delivered back to
the consumers by a rollback, and revoked when the grace period ends.

Nothing at the issuer or at a consumer changes: the provider only proves that the value
authenticates (`Capability.IMPORTS`). Only a credential without a current version and
without a rotation under way takes an import; the checks run again in the transaction
that stores it, so a rotation requested meanwhile wins and the import is refused.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import structlog
from sqlalchemy.orm import Session

from keyshift.context import PluginContext
from keyshift.domain.estate import Policy, disabled_integrations
from keyshift.domain.secret import Secret
from keyshift.domain.states import Provenance, VersionStatus
from keyshift.engine import rows
from keyshift.engine.plan import stored_plan
from keyshift.engine.plugins import build_provider
from keyshift.errors import Conflict, KeyshiftError, PermanentError, PluginError, scrub
from keyshift.governance import integration_disabled
from keyshift.providers.base import Capability, ImportRequest, IssuedVersion
from keyshift.store.models import CredentialRow, VersionRow
from keyshift.store.store import Store

__all__ = ["Imported", "import_current"]

log = structlog.get_logger("keyshift.engine")


@dataclass(frozen=True)
class Imported:
    """The version an import stored: ids, fingerprint and dates, never the value."""

    credential: str
    version_id: str
    serial: int
    fingerprint: str
    provider_ref: str
    provenance: str
    expires_at: datetime | None
    created_at: datetime
    proof: str
    """What was proven before storing: `authenticated at the issuer`, or why nothing
    could be (keyshift itself issues `random` values)."""


def _importable(s: Session, credential: str) -> CredentialRow:
    """The credential, if it may take an import now; Conflict saying why not."""
    cred = rows.credential(s, credential)
    if cred.active_rotation_id is not None:
        raise Conflict(
            f"credential {credential} has rotation {cred.active_rotation_id} under way; "
            "import only brings a credential without versions under management"
        )
    current = rows.current_version(s, cred.id)
    if current is not None:
        raise Conflict(
            f"credential {credential} already has a current version ({current.id}, "
            f"{current.provenance}); import is for a credential keyshift holds no value of: "
            "rotate it instead"
        )
    return cred


async def import_current(
    store: Store,
    context_for: Callable[[dict[str, dict[str, Any]], list[str]], PluginContext],
    credential: str,
    value: Secret,
    *,
    actor: str,
    username: str | None = None,
    kid: str | None = None,
    expires_at: datetime | None = None,
) -> Imported:
    """Prove `value` with the credential's provider and store it as its current version;
    audited `version.imported`. Refused, storing nothing: Conflict (a current version, a
    rotation under way, a disabled integration), PermanentError (the provider cannot
    import, or the value does not authenticate), ConfigError (an empty value). Errors
    are scrubbed of the value and of anything read to reach the issuer."""
    if not value.reveal():
        raise PermanentError("the value to import is empty")
    with store.transaction() as s:
        cred = _importable(s, credential)
        plan = stored_plan(cred.spec)
        disabled = disabled_integrations(cred.spec.get("integrations", {}))
    if disabled:
        raise Conflict("; ".join(integration_disabled(n, credential) for n in disabled))
    policy = Policy.model_validate(plan.policy)
    secrets = [value.reveal()]
    context = context_for(plan.integrations, secrets)
    version, proof = await _prove(
        build_provider(plan.provider_type, plan.provider_config, context),
        ImportRequest(credential, value, username, kid),
        secrets,
    )
    now = context.now()
    if expires_at is None:
        # The issuer's own expiry when it has one; else as if issued now under the policy,
        # so the worker rotates it within max_lifetime (its real age is unknown).
        expires_at = version.expires_at or (
            now + policy.max_lifetime if policy.max_lifetime is not None else None
        )
    with store.transaction() as s:
        cred = _importable(s, credential)
        row = VersionRow(
            id=str(uuid.uuid4()),
            credential_id=cred.id,
            rotation_id=None,
            serial=rows.next_serial(s, cred.id),
            provider_ref=version.provider_ref,
            attributes=dict(version.attributes),
            status=VersionStatus.CURRENT.value,
            fingerprint=version.fingerprint or store.fingerprint(version.value),
            created_at=now,
            expires_at=expires_at,
            revoked_at=None,
            provenance=Provenance.IMPORTED.value,
        )
        # What the provider made of the value: the value itself, or (a key with its
        # certificate) the part a version seals, the rest being public attributes.
        store.seal_into(row, version.value)
        s.add(row)
        s.flush()
        imported = Imported(
            credential=credential,
            version_id=row.id,
            serial=row.serial,
            fingerprint=row.fingerprint,
            provider_ref=row.provider_ref,
            provenance=row.provenance,
            expires_at=expires_at,
            created_at=now,
            proof=proof,
        )
        store.audit(
            s,
            actor=actor,
            action="version.imported",
            subject=f"credential:{credential}",
            details={
                "credential": credential,
                "version_id": row.id,
                "serial": row.serial,
                "fingerprint": row.fingerprint,
                "provider_ref": row.provider_ref,
                "provenance": row.provenance,
                "expires_at": expires_at.isoformat() if expires_at else None,
                "attributes": dict(row.attributes),
                "proof": proof,
            },
        )
    log.info("version imported", credential=credential, version_id=imported.version_id)
    return imported


async def _prove(
    provider: Any, request: ImportRequest, secrets: list[str]
) -> tuple[IssuedVersion, str]:
    """The version the provider says the value is, and what it proved; the provider is
    closed afterwards. Errors are scrubbed of `secrets` (the value and what was read to
    reach the issuer)."""
    try:
        if Capability.IMPORTS not in provider.capabilities:
            raise PermanentError(
                f"provider {provider.kind} cannot import a value: it issues versions that "
                "only it can name (a first rotation adopts what the issuer holds, where "
                "the provider supports adopt_existing)"
            )
        try:
            version: IssuedVersion = await provider.import_version(request)
        finally:
            await provider.aclose()
    except (PluginError, KeyshiftError) as exc:
        raise PermanentError(scrub(str(exc), secrets)) from None
    if request.kid is not None and version.attributes.get("kid") != request.kid:
        raise PermanentError(f"--kid: provider {provider.kind} names no version by a kid")
    if Capability.AUTHENTICATES in provider.capabilities:
        return version, "authenticated at the issuer"
    return version, "not applicable: keyshift cannot sign in to this issuer"
