"""Adoption: on a credential's first rotation, the issuer's versions that keyshift did not
create become the rotation's old version, so that the grace period, the residual-use and
approval gates and the revocation treat them as any old version.

An adopted version has no value (keyshift never held it): its fingerprint says so, and
rollback cannot publish it again.
"""

from __future__ import annotations

import uuid
from typing import Any, cast

import structlog

from keyshift.domain.states import Provenance, VersionStatus
from keyshift.engine import rows
from keyshift.engine.run import Run
from keyshift.engine.steps import Steps
from keyshift.providers.base import AdoptedVersion, AdoptRequest, Capability
from keyshift.store.models import VersionRow

__all__ = ["adopt"]

log = structlog.get_logger("keyshift.engine")


async def adopt(steps: Steps, run: Run) -> dict[str, Any]:
    """On a credential's first rotation, record the issuer's versions that keyshift did
    not create (if the provider adopts them) as the rotation's old version, so the
    grace period, residual-use and approval gates and the revocation treat them as
    they treat any old version. Returns facts for the create step's detail.

    The row and `old_version_id` are written in one transaction before the new version
    is issued: a create step run again after a crash finds `old_version_id` set and
    adopts nothing a second time (nor the new secret, which carries the marker).
    """
    if Capability.ADOPTS_EXISTING not in run.provider.capabilities:
        return {}
    finder = cast(Any, run.provider)
    found: AdoptedVersion | None = await finder.adopt_existing(AdoptRequest(run.credential))
    if found is None:
        return {"adopted": "nothing to adopt"}
    with steps.store.transaction() as s:
        rot = rows.rotation(s, run.rotation_id)
        serial = rows.next_serial(s, run.credential_id)
        row = VersionRow(
            id=str(uuid.uuid4()),
            credential_id=run.credential_id,
            rotation_id=None,  # not issued by a rotation; `create` looks rows up by it
            serial=serial,
            provider_ref=found.provider_ref,
            attributes=dict(found.attributes),
            # Current until the cutover makes it previous, as an issued version would be.
            status=VersionStatus.CURRENT.value,
            fingerprint=rows.ADOPTED_FINGERPRINT,
            ciphertext=None,
            wrapped_key=None,
            master_key_id=None,
            created_at=steps.context.now(),
            expires_at=found.expires_at,
            revoked_at=None,
            provenance=Provenance.ADOPTED.value,
        )
        s.add(row)
        s.flush()
        rot.old_version_id = row.id
        facts = {
            "adopted_version_id": row.id,
            "adopted_provider_ref": row.provider_ref,
            **{f"adopted_{k}": v for k, v in found.attributes.items()},
        }
        steps.audit(s, run.rotation_id, "version.adopted", {"credential": run.credential, **facts})
    log.info("versions adopted", rotation_id=run.rotation_id, version_id=row.id)
    return facts
