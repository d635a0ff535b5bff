"""Trust first, identity second for a CA (`trust_bundle`): the steps its rotation adds to
the state machine, on top of those of `keyshift.engine.trust`, and nothing for any other
credential.

A CA rotation is one rotation of the trust_bundle credential, in three phases, each made
of journaled steps of that rotation:

1. Trust. The bundle files are trust actions (`file_format: pem_bundle`), so `Trust`
   publishes them first (old and new CA); `waiting:signers` journals `reload_within`;
   the reload actions reload the verifiers and the verify actions prove they hold the new
   CA; the issuer check and the cutover make the new CA current (what `credential:NAME`
   reads from then on).
2. Identity, at the start of grace. Every leaf, an `x509_ca` credential whose
   `ca_key_from` is `credential:<bundle>`, is re-issued by its own rotation: the step
   `reissuing:<leaf>` requests it (its reason names this rotation, so a step run again
   finds it instead of requesting a second one); `reissued:<leaf>` journals when it cut
   over to a certificate of the new CA. The bundle's run runs each leaf's rotation as far
   as it goes and otherwise rests in `grace` (a worker's later run goes on); a leaf's
   rotation runs its own publish, reload, verify, grace and revoke. A leaf whose rotation
   ends without its new certificate (rolled back, failed) stops the CA rotation
   `needs_attention`: the leaves were rolled back by their own rotations, and the bundles
   keep both CAs (trust added in phase 1 is never removed by a failure in phase 2).
   Such a CA rotation is not rolled back by hand either: leaves of the new CA may exist.
3. Withdrawal, after the grace period: `checking:leaves` proves that every leaf now
   presents a certificate of the new CA (else `needs_attention`, the old CA still
   trusted); then `Trust` withdraws the old CA from each bundle (`withdrawing:<action>`)
   and the old version is revoked (its key erased).

The leaves are those of the estate when phase 2 runs (a leaf added since the request is
re-issued too). A first version has no old CA and nothing signed by it: phase 2 is empty.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from sqlalchemy import select
from sqlalchemy.orm import Session

from keyshift.domain.states import RotationState, StepStatus, Trigger, VersionStatus
from keyshift.engine import rows
from keyshift.engine.journal import OpenStep
from keyshift.engine.requests import Requests
from keyshift.engine.run import Run
from keyshift.engine.steps import Steps
from keyshift.errors import LeaseHeld, PermanentError
from keyshift.providers import ProviderKind
from keyshift.store.models import CredentialRow, RotationRow, VersionRow
from keyshift.targets.base import StepResult

__all__ = [
    "CHECK_LEAVES_STEP",
    "REISSUED_PREFIX",
    "REISSUE_PREFIX",
    "Leaves",
    "Progress",
    "leaf_reference",
    "leaves_of",
    "reissue_started",
]

REISSUE_PREFIX = "reissuing:"
"""The step that requests a leaf's rotation (its detail names the rotation)."""
REISSUED_PREFIX = "reissued:"
"""The step that closes once the leaf cut over to a certificate of the new CA."""
CHECK_LEAVES_STEP = "checking:leaves"
"""The step, just before the old CA is withdrawn, proving every leaf left it."""

LEAF_PROVIDER = ProviderKind.X509_CA.value
CA_FIELDS = ("ca_key_from", "ca_cert_from")
"""The fields of a leaf's provider that name its CA."""


def leaf_reference(bundle: str) -> str:
    """What a leaf's `ca_key_from` (and `ca_cert_from`) say to be signed by `bundle`."""
    return f"credential:{bundle}"


def leaves_of(s: Session, bundle: str) -> list[str]:
    """The credentials the CA `bundle` signs: every x509_ca credential of the estate whose
    `ca_key_from` or `ca_cert_from` names it, by name."""
    return sorted(
        name
        for name, text in s.execute(
            select(CredentialRow.name, CredentialRow.provider_json).where(
                CredentialRow.removed_at.is_(None), CredentialRow.provider_type == LEAF_PROVIDER
            )
        )
        if signed_by(json.loads(text), bundle)
    )


def signed_by(provider: Mapping[str, Any], bundle: str) -> bool:
    """Whether a leaf's provider config names the CA `bundle` in one of CA_FIELDS."""
    return leaf_reference(bundle) in {provider.get(f) for f in CA_FIELDS}


def reissue_started(run: Run) -> bool:
    """Whether phase 2 of a CA rotation began: a leaf may present a certificate of the new
    CA, so the new CA must stay trusted (no rollback of the bundles)."""
    return any(name.startswith(REISSUE_PREFIX) for name in (*run.succeeded, *run.attempts))


class Progress(Enum):
    """Where phase 2 is: done (go on with the grace gate), resting, or stopped (the
    rotation was moved to needs_attention)."""

    DONE = "done"
    RESTING = "resting"
    STOPPED = "stopped"


@dataclass(frozen=True)
class _Leaf:
    """Where a leaf's rotation is: its state and its new version (when it has one)."""

    rotation_id: str
    state: RotationState
    version_id: str | None = None
    current: bool = False
    """Whether the new version is the leaf's current one (the rotation cut over)."""
    fingerprint: str | None = None
    issuer: str | None = None
    """The thumbprint of the CA the new version's chain names."""


RunRotation = Callable[[str], Awaitable[RotationState]]


class Leaves:
    """Phase 2 and the check before phase 3 of a CA rotation."""

    def __init__(self, steps: Steps, requests: Requests, actor: str) -> None:
        self.steps = steps
        self.requests = requests
        self.actor = actor
        self.run_rotation: RunRotation | None = None
        """Runs another rotation as far as it goes (`Engine.run`), set by the engine."""

    @staticmethod
    def applies(run: Run) -> bool:
        return run.plan.provider_type == ProviderKind.TRUST_BUNDLE.value

    async def reissue(self, run: Run) -> Progress:
        """Phase 2: request each leaf's rotation, run it, and journal when it cut over.
        DONE at once for any other credential and for a first CA."""
        if not self.applies(run):
            return Progress.DONE
        new_ca, old_id = self._cas(run)
        if old_id is None:
            return Progress.DONE
        with self.steps.store.transaction() as s:
            leaves = leaves_of(s, run.credential)
        waiting = False
        for leaf in leaves:
            if REISSUED_PREFIX + leaf in run.succeeded:
                continue
            if REISSUE_PREFIX + leaf not in run.succeeded:
                if self._busy(run, leaf):
                    # Another rotation of the leaf is under way (a scheduled renewal, a
                    # person's): it finishes first, then this one is requested.
                    waiting = True
                    continue
                if not await self._request(run, leaf):
                    return Progress.STOPPED
            found = await self._advance(run, leaf)
            if found.current:
                if not await self._close(run, leaf, found, new_ca):
                    return Progress.STOPPED
            elif found.state.is_final:
                await self._fail(
                    run,
                    leaf,
                    f"its rotation {found.rotation_id} ended {found.state.value} without a "
                    "certificate of the new CA",
                )
                return Progress.STOPPED
            else:
                waiting = True
        return Progress.RESTING if waiting else Progress.DONE

    def _reason(self, run: Run) -> str:
        return f"re-issue under the new CA of {run.credential} (rotation {run.rotation_id})"

    def _cas(self, run: Run) -> tuple[str, str | None]:
        """The new CA's thumbprint and the old version's id (None for a first CA)."""
        with self.steps.store.transaction() as s:
            rot = rows.rotation(s, run.rotation_id)
            if rot.new_version_id is None:
                raise PermanentError(f"rotation {run.rotation_id} has no new CA")
            new = rows.version(s, rot.new_version_id)
            return str(new.attributes.get("thumbprint", "")), rot.old_version_id

    def _busy(self, run: Run, leaf: str) -> bool:
        """Whether the leaf has an unfinished rotation this one did not request."""
        with self.steps.store.transaction() as s:
            active = rows.credential(s, leaf).active_rotation_id
            return active is not None and rows.rotation(s, active).reason != self._reason(run)

    async def _request(self, run: Run, leaf: str) -> bool:
        """`reissuing:<leaf>`: the leaf's rotation, requested now or found (requested by
        an attempt that stopped before it closed). False when it could not be requested
        (the rotation then needs attention, both CAs trusted)."""
        reason = self._reason(run)

        async def request() -> StepResult:
            with self.steps.store.transaction() as s:
                found = s.execute(
                    select(RotationRow.id)
                    .join(CredentialRow, CredentialRow.id == RotationRow.credential_id)
                    .where(CredentialRow.name == leaf, RotationRow.reason == reason)
                ).scalar_one_or_none()
            if found is None:
                found = self.requests.request(
                    leaf, requested_by=self.actor, reason=reason, trigger=Trigger.SCHEDULE
                )
            return StepResult({"credential": leaf, "rotation_id": found})

        name = REISSUE_PREFIX + leaf
        opened, result, error = await self.steps.attempt(run, name, request)
        if error is not None:
            self._stop(
                run, opened, f"{name}: leaf {leaf}: its rotation could not be requested: {error}"
            )
            return False
        self.steps.end(run, opened, result, None)
        return True

    async def _advance(self, run: Run, leaf: str) -> _Leaf:
        """Run the leaf's rotation as far as it goes now (unless another worker runs it),
        then read where it is."""
        rotation_id = self._requested(run, leaf)
        with self.steps.store.transaction() as s:
            state = RotationState(rows.rotation(s, rotation_id).state)
        if not state.is_final and self.run_rotation is not None:
            # LeaseHeld: a worker runs it now; a later run of this rotation looks again.
            with contextlib.suppress(LeaseHeld):
                await self.run_rotation(rotation_id)
        with self.steps.store.transaction() as s:
            rot = rows.rotation(s, rotation_id)
            if rot.new_version_id is None:
                return _Leaf(rotation_id, RotationState(rot.state))
            new = rows.version(s, rot.new_version_id)
            return _Leaf(
                rotation_id,
                RotationState(rot.state),
                new.id,
                new.status == VersionStatus.CURRENT.value,
                new.fingerprint,
                _issuer_thumbprint(new),
            )

    def _requested(self, run: Run, leaf: str) -> str:
        for step in reversed(self.steps.journal(run.rotation_id)):
            if step.name == REISSUE_PREFIX + leaf and step.status == StepStatus.SUCCEEDED.value:
                return str((step.detail or {})["rotation_id"])
        raise PermanentError(f"rotation {run.rotation_id}: {REISSUE_PREFIX}{leaf} has no rotation")

    async def _close(self, run: Run, leaf: str, found: _Leaf, new_ca: str) -> bool:
        """`reissued:<leaf>`: the leaf's current certificate is of the new CA. False when
        it is not (the rotation then needs attention)."""

        async def closed() -> StepResult:
            if found.issuer != new_ca:
                raise PermanentError(
                    f"the new certificate of {leaf} (version {found.version_id}) is not signed by "
                    "the new CA: does its ca_key_from still name this credential?"
                )
            return StepResult(
                {
                    "credential": leaf,
                    "rotation_id": found.rotation_id,
                    "state": found.state.value,
                    "version_id": found.version_id,
                    "fingerprint": found.fingerprint,
                    "ca_thumbprint": new_ca,
                }
            )

        return await self._journal(run, REISSUED_PREFIX + leaf, leaf, closed)

    async def _fail(self, run: Run, leaf: str, why: str) -> None:
        """`reissued:<leaf>`, failed: the leaf's rotation ended without cutting over."""

        async def failed() -> StepResult:
            raise PermanentError(why)

        await self._journal(run, REISSUED_PREFIX + leaf, leaf, failed)

    async def _journal(
        self, run: Run, name: str, leaf: str, body: Callable[[], Awaitable[StepResult]]
    ) -> bool:
        opened, result, error = await self.steps.attempt(run, name, body)
        if error is not None:
            self._stop(run, opened, f"{name}: leaf {leaf}: {error}")
            return False
        self.steps.end(run, opened, result, None)
        return True

    def _stop(self, run: Run, opened: OpenStep, why: str) -> None:
        """Close the failed step and leave the rotation for a person, both CAs trusted."""
        self.steps.end(
            run,
            opened,
            None,
            why,
            next_state=RotationState.NEEDS_ATTENTION,
            rotation_error=f"{why}; the bundles keep the old and the new CA, and the old CA "
            "is neither withdrawn nor revoked",
        )

    async def left_old_ca(self, run: Run) -> bool:
        """`checking:leaves`, just before the old CA is withdrawn: every leaf's current
        certificate is of the new CA. True at once for any other credential; False when a
        leaf still presents one of the old CA (the rotation then needs attention)."""
        if not self.applies(run) or CHECK_LEAVES_STEP in run.succeeded:
            return True
        new_ca, old_id = self._cas(run)
        if old_id is None:
            return True

        async def check() -> StepResult:
            behind = []
            with self.steps.store.transaction() as s:
                leaves = leaves_of(s, run.credential)
                for leaf in leaves:
                    current = rows.current_version(s, rows.credential(s, leaf).id)
                    if current is None or _issuer_thumbprint(current) != new_ca:
                        behind.append(leaf)
            if behind:
                raise PermanentError(
                    f"{', '.join(behind)} still present a certificate that is not of the new "
                    "CA (rotate them, then resume)"
                )
            return StepResult({"leaves": leaves, "ca_thumbprint": new_ca})

        opened, result, error = await self.steps.attempt(run, CHECK_LEAVES_STEP, check)
        if error is not None:
            self._stop(run, opened, f"{CHECK_LEAVES_STEP}: {error}")
            return False
        self.steps.end(run, opened, result, None)
        return True


def _issuer_thumbprint(version: VersionRow) -> str | None:
    """The SHA-256 thumbprint of the CA certificate a leaf version carries (its chain)."""
    chain = str((version.attributes or {}).get("chain", ""))
    try:
        certs = x509.load_pem_x509_certificates(chain.encode("ascii")) if chain else []
    except ValueError:
        return None
    return certs[0].fingerprint(hashes.SHA256()).hex() if certs else None
