"""The issuer's steps: create (and adopt), prove, verify after cutover, revoke and
prove the revocation.

Each talks to the rotation's provider and records what it did in the store; `Steps`
journals it. Creating looks before it mints (a version stored for this rotation is
reused after a crash), and a version keyshift could not store is revoked at once, so
no credential nobody knows of stays valid.
"""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

import structlog
from sqlalchemy import select

from keyshift.domain.estate import Policy
from keyshift.domain.states import RotationState, VersionStatus
from keyshift.engine import rows
from keyshift.engine.adoption import adopt
from keyshift.engine.faults import crash_point
from keyshift.engine.propagation import IssuerWait, wait_for_issuer
from keyshift.engine.run import PROVE_STEP, RETAIN_DISABLED, Run, issued, old_issued, revoked
from keyshift.engine.steps import Steps
from keyshift.errors import KeyshiftError, PermanentError, PluginError, scrub
from keyshift.providers.base import (
    Capability,
    CreateRequest,
    IssuedVersion,
    RevokeRequest,
    holds_no_value,
    propagation_of,
)
from keyshift.store.models import VersionRow
from keyshift.targets.base import StepResult

__all__ = ["Issuer"]

log = structlog.get_logger("keyshift.engine")


class Issuer:
    """The steps that create, prove and revoke versions at the rotation's issuer."""

    def __init__(self, steps: Steps) -> None:
        self.steps = steps
        self.store = steps.store
        self.context = steps.context

    # Creating --------------------------------------------------------------------------

    async def create(self, run: Run) -> StepResult:
        # Look before creating: a version stored for this rotation before a crash is
        # the one this rotation issued; creating again would mint a second one.
        with self.store.transaction() as s:
            existing = s.execute(
                select(VersionRow).where(VersionRow.rotation_id == run.rotation_id)
            ).scalar_one_or_none()
            if existing is not None:
                rows.rotation(s, run.rotation_id).new_version_id = existing.id
                return StepResult(
                    {
                        "version_id": existing.id,
                        "fingerprint": existing.fingerprint,
                        "reused": True,
                        **self._no_proof(run),
                    }
                )
            current = rows.current_version(s, run.credential_id)
            # An adopted current version has no value to hand to the provider.
            current_issued = (
                issued(self.store, current) if current and not rows.adopted(current) else None
            )
            first = current is None and rows.rotation(s, run.rotation_id).old_version_id is None
        adopted = await adopt(self.steps, run) if first else {}
        version = await self._issue(run, current_issued)
        # A crash here leaves a version at the issuer that keyshift has not stored;
        # the provider's create is idempotent for this rotation's marker.
        crash_point("creating:issuer")
        try:
            with self.store.transaction() as s:
                serial = rows.next_serial(s, run.credential_id)
                row = VersionRow(
                    id=str(uuid.uuid4()),
                    credential_id=run.credential_id,
                    rotation_id=run.rotation_id,
                    serial=serial,
                    provider_ref=version.provider_ref,
                    attributes=dict(version.attributes),
                    status=VersionStatus.PENDING.value,
                    # A certificate's thumbprint is its public identity; a secret's
                    # fingerprint is keyshift's HMAC of the value.
                    fingerprint=version.fingerprint or self.store.fingerprint(version.value),
                    created_at=self.context.now(),
                    expires_at=version.expires_at,
                    revoked_at=None,
                )
                self.store.seal_into(row, version.value)
                s.add(row)
                s.flush()
                rows.rotation(s, run.rotation_id).new_version_id = row.id
                detail = {
                    "version_id": row.id,
                    "fingerprint": row.fingerprint,
                    "provider_ref": row.provider_ref,
                    "serial": serial,
                    **adopted,
                    **self._no_proof(run),
                }
        except Exception as exc:
            # The issuer holds a version keyshift could not store: revoke it so no
            # unknown credential stays valid, and name it if that fails too.
            try:
                await run.provider.revoke(RevokeRequest(run.credential, run.rotation_id, version))
            except Exception as cleanup:
                raise PermanentError(
                    f"storing the new version failed ({exc.__class__.__name__}) and revoking it "
                    f"failed too ({cleanup.__class__.__name__}): orphaned version "
                    f"{version.provider_ref} at the issuer"
                ) from exc
            raise PermanentError(
                f"storing the new version failed ({exc.__class__.__name__}); the issued "
                f"version {version.provider_ref} was revoked"
            ) from exc
        return StepResult(detail)

    async def _issue(self, run: Run, current: IssuedVersion | None) -> IssuedVersion:
        policy = Policy.model_validate(run.plan.policy)
        version = await run.provider.create(
            CreateRequest(
                credential=run.credential,
                rotation_id=run.rotation_id,
                marker=f"keyshift:{run.rotation_id}",
                policy=policy,
                current=current,
            )
        )
        run.secrets.append(version.value.reveal())
        return version

    def _no_proof(self, run: Run) -> dict[str, str]:
        if Capability.AUTHENTICATES in run.provider.capabilities:
            return {}
        return {"proof": "not applicable: keyshift cannot sign in to this issuer"}

    # Proving -----------------------------------------------------------------------------

    async def prove(self, run: Run) -> None:
        """Sign in with the new version at the issuer before any consumer gets it.

        Proven: the rotation moves on to publishing. Not proven within the propagation
        timeout (or refused outright): nothing was published, so the new version is
        revoked at the issuer and the rotation ends `failed` with the reason. A worker
        that stops mid-proof is resumed into the same proof of the same stored version.
        """
        opened, result, error = await self.steps.attempt(
            run,
            PROVE_STEP,
            lambda: self._accepted(run, "proved", "was not accepted by the issuer"),
        )
        if error is None:
            self.steps.end(run, opened, result, None, next_state=RotationState.PUBLISHING)
            return
        withdrawn = await self._withdraw_unproven(run)
        self.steps.end(run, opened, None, f"{error}; {withdrawn}", next_state=RotationState.FAILED)

    async def verify(self, run: Run) -> StepResult:
        """Post-cutover test at the issuer, waiting out propagation like the proof."""
        return await self._accepted(run, "verified", "does not authenticate")

    async def _accepted(self, run: Run, verb: str, refused: str) -> StepResult:
        """Sign in with the new version until the issuer accepts it, within the propagation
        timeout; the attempts for the step's result, or PermanentError saying `refused`."""
        row, version = self._new_version(run)
        wait = await self._until_issuer(run, version, accepted=True)
        if not wait.settled:
            raise PermanentError(
                f"the new version {row.id} {refused} {wait.summary}: {wait.detail}"
            )
        return StepResult(
            {
                "version_id": row.id,
                "fingerprint": row.fingerprint,
                "detail": wait.detail,
                **wait.facts(verb),
            }
        )

    def _new_version(self, run: Run) -> tuple[VersionRow, IssuedVersion]:
        """The rotation's new version, as stored, and as the provider receives it."""
        with self.store.transaction() as s:
            rot = rows.rotation(s, run.rotation_id)
            if rot.new_version_id is None:
                raise PermanentError(f"rotation {rot.id} has no new version")
            row = rows.version(s, rot.new_version_id)
            if row.status == VersionStatus.REVOKED.value:
                raise PermanentError(f"the new version {row.id} was revoked")
            version = issued(self.store, row)
        run.secrets.append(version.value.reveal())
        return row, version

    async def _withdraw_unproven(self, run: Run) -> str:
        """Revoke a new version that was never proven (and never published), so that no
        credential nobody uses stays valid; the outcome, for the rotation's error."""
        with self.store.transaction() as s:
            rot = rows.rotation(s, run.rotation_id)
            row = rows.version(s, rot.new_version_id) if rot.new_version_id else None
            if row is None or row.status == VersionStatus.REVOKED.value:
                return "nothing was published"
            version = issued(self.store, row)
        try:
            await self.steps.retrying(
                lambda: run.provider.revoke(RevokeRequest(run.credential, run.rotation_id, version))
            )
        except (PluginError, KeyshiftError) as exc:
            with self.store.transaction() as s:
                held = rows.version(s, row.id)
                held.status = VersionStatus.DISABLED.value
                held.expires_at = self.context.now() + RETAIN_DISABLED
            return scrub(
                f"nothing was published; revoking the new version failed too ({exc}): "
                f"version {version.provider_ref} is still valid at the issuer",
                run.secrets,
            )
        with self.store.transaction() as s:
            revoked(rows.version(s, row.id), self.context.now())
        if Capability.IN_PLACE in run.provider.capabilities:
            return (
                "nothing was published; the issuer replaced the value in place, so "
                "consumers keep the previous value, which it may no longer accept"
            )
        return f"nothing was published; the new version {row.id} was revoked at the issuer"

    def _propagation_timeout(self, run: Run) -> timedelta:
        declared = Policy.model_validate(run.plan.policy).propagation_timeout
        return declared if declared is not None else propagation_of(run.provider).timeout

    async def _until_issuer(
        self, run: Run, version: IssuedVersion, *, accepted: bool
    ) -> IssuerWait:
        return await wait_for_issuer(
            run.provider,
            run.credential,
            version,
            accepted=accepted,
            within=self._propagation_timeout(run),
            context=self.context,
            secrets=run.secrets,
        )

    # Revoking ----------------------------------------------------------------------------

    async def revoke(self, run: Run) -> StepResult:
        with self.store.transaction() as s:
            rot = rows.rotation(s, run.rotation_id)
            if rot.old_version_id is None:
                return StepResult({"revoked": None, "reason": "no previous version"})
            old = rows.version(s, rot.old_version_id)
            if old.status == VersionStatus.REVOKED.value:
                # Revoked before a restart; the issuer call succeeded then.
                return StepResult(
                    {"version_id": old.id, "fingerprint": old.fingerprint, "already_revoked": True}
                )
            adopted = rows.adopted(old)
            if adopted and Capability.ADOPTS_EXISTING not in run.provider.capabilities:
                # The estate stopped retiring adopted versions (e.g. `adopt_existing: keep`)
                # after this one was adopted: what was made by hand stays valid.
                return StepResult(
                    {
                        "version_id": old.id,
                        "revoked": None,
                        "reason": "adopted version kept: the provider no longer retires them",
                    }
                )
            version = old_issued(self.store, old)
        result = await run.provider.revoke(RevokeRequest(run.credential, run.rotation_id, version))
        crash_point("revoking:issuer")
        proof = (
            {
                "revocation_proof": "not possible by sign-in: keyshift never held the "
                "adopted version's value; the issuer's answer is the evidence"
            }
            # An adopted version's value was never held, so a sign-in cannot be tried;
            # unless the issuer's versions hold none at all (a KMS key is tried by id).
            if adopted and not holds_no_value(run.provider)
            else await self._revocation_proof(run, version)
        )
        with self.store.transaction() as s:
            old = rows.version(s, version_id := rot.old_version_id)
            revoked(old, self.context.now())
        return StepResult(
            {
                "version_id": version_id,
                "fingerprint": old.fingerprint,
                "provider_ref": old.provider_ref,
                "already_gone": result.already_gone,
                **proof,
                "residual_use": run.residual or "not checked",
                **dict(result.detail),
            }
        )

    async def _revocation_proof(self, run: Run, old: IssuedVersion) -> dict[str, Any]:
        """Sign in with the revoked version, as a consumer would, until the issuer refuses
        it everywhere, within the propagation timeout (Entra ID keeps accepting a removed
        secret for minutes). Still accepted at the timeout: the run ends needs_attention
        with "old version still accepted by the issuer", never completed.

        Only issuers whose `verify` really logs in can prove this; for the others
        (keyshift itself is the issuer of `random`) the proof is not applicable.
        """
        if Capability.AUTHENTICATES not in run.provider.capabilities:
            return {"revocation_proof": "not applicable"}
        wait = await self._until_issuer(run, old, accepted=False)
        facts = wait.facts("refused")
        if wait.settled:
            return {"revocation_proof": f"refused: {wait.detail}", **facts}
        why = (
            f"old version still accepted by the issuer {wait.summary} after its revocation "
            f"({wait.detail}); check again, and revoke it at the issuer by hand if it stays"
        )
        self.steps.note_attention(run, why)
        return {"revocation_proof": f"still accepted: {wait.detail}", **facts}
