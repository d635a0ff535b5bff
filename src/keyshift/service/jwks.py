"""The JWKS document `keyshift serve` serves for a `jwks_signing_key` credential with a
`jwks_serve` action (`keyshift.targets.jwks_serve`), built from the store: the kids the
newest succeeded `jwks_serve` step recorded (publish: the new and the old key; withdraw:
the current one; rollback: the old one), each as the public JWK its version holds.

Public key material only: the version's `jwk` attribute, which never holds a private
member (checked again here before it is served).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import select

from keyshift.errors import NotFound
from keyshift.providers.jwks_signing_key import JwksSigningKeyConfig
from keyshift.store.models import CredentialRow, RotationRow, StepRow, VersionRow
from keyshift.store.store import Store
from keyshift.targets.jwks import PRIVATE_MEMBERS, render
from keyshift.targets.jwks_serve import SERVED_KIDS

__all__ = ["ServedJwks", "served_jwks"]

KIND = "jwks_signing_key"


@dataclass(frozen=True)
class ServedJwks:
    """The document, how long verifiers may cache it, and its entity tag."""

    body: str
    cache_ttl: timedelta
    etag: str


def served_jwks(store: Store, name: str) -> ServedJwks:
    """The document served for credential `name`; NotFound when it is not a
    jwks_signing_key credential of the estate with a `jwks_serve` action. Before its
    first version is published the document holds no key."""
    with store.transaction() as s:
        cred = s.execute(
            select(CredentialRow).where(
                CredentialRow.name == name, CredentialRow.removed_at.is_(None)
            )
        ).scalar_one_or_none()
        actions = (cred.spec.get("credential") or {}).get("actions", []) if cred else []
        if (
            cred is None
            or cred.provider_type != KIND
            or not any(a.get("type") == "jwks_serve" for a in actions)
        ):
            raise NotFound(f"no JWKS is served for {name}")
        # The stored provider config also names `type` and `integration`.
        fields = JwksSigningKeyConfig.model_fields
        provider = {k: v for k, v in json.loads(cred.provider_json or "{}").items() if k in fields}
        cache_ttl = JwksSigningKeyConfig.model_validate(provider).cache_ttl
        served = s.execute(
            select(StepRow.detail)
            .join(RotationRow, RotationRow.id == StepRow.rotation_id)
            .where(RotationRow.credential_id == cred.id, StepRow.status == "succeeded")
            .order_by(StepRow.id.desc())
        ).scalars()
        kids = next((list(d[SERVED_KIDS]) for d in served if SERVED_KIDS in (d or {})), [])
        held = {
            str(v.attributes.get("kid")): v.attributes.get("jwk")
            for v in s.execute(
                select(VersionRow).where(VersionRow.credential_id == cred.id)
            ).scalars()
        }
    keys = [_public(held.get(kid)) for kid in kids]
    body = render([k for k in keys if k is not None])
    etag = '"' + hashlib.sha256(body.encode("utf-8")).hexdigest()[:32] + '"'
    return ServedJwks(body=body, cache_ttl=cache_ttl, etag=etag)


def _public(text: Any) -> dict[str, Any] | None:
    try:
        jwk = json.loads(text) if isinstance(text, str) else None
    except ValueError:
        return None
    if not isinstance(jwk, dict) or PRIVATE_MEMBERS & jwk.keys():
        return None
    return jwk
