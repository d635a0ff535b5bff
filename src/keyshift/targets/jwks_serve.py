"""`jwks_serve`: `keyshift serve` itself serves a `jwks_signing_key` credential's JWKS
document, without authentication (public keys, as an OIDC provider's JWKS), at
`GET /.well-known/jwks/<credential>.json`.

There is nothing to call: what the document holds is what this action's steps record.
Its publish records that the document holds the new key and the previous one, its
withdraw (just before the old key is revoked) the current key alone, its rollback the
previous key alone. Each is journaled like any step, so the served document changes at
the step of the rotation where a JWKS file would change (trust first, then the
`cache_ttl` wait), and the server builds it from the store: the `served_kids` of the
newest succeeded such step, each kid's public JWK from its version.
"""

from __future__ import annotations

from typing import Any, ClassVar, Final

from pydantic import BaseModel, ConfigDict

from keyshift.domain.states import Phase
from keyshift.targets import base, jwks
from keyshift.targets.base import BaseTarget, Delivery, PreflightResult, Readiness

SERVED_KIDS: Final = "served_kids"
"""The step detail naming the kids the served document holds from that step on."""
SERVED_PATH: Final = "/.well-known/jwks/{credential}.json"
"""Where `keyshift serve` serves the document."""


class JwksServeConfig(BaseModel):
    """Nothing to configure: the URL is `/.well-known/jwks/<credential>.json` of every
    `keyshift serve` process on the store."""

    model_config = ConfigDict(use_attribute_docstrings=True, extra="forbid", frozen=True)


class JwksServeTarget(jwks.JwksOutput, BaseTarget[JwksServeConfig]):
    """Records which public keys `keyshift serve` serves for this credential."""

    kind: ClassVar[str] = "jwks_serve"
    phase: ClassVar[Phase] = Phase.PUBLISH
    Config: ClassVar[type[BaseModel]] = JwksServeConfig

    @classmethod
    def describe(cls, config: JwksServeConfig) -> dict[str, str]:
        """Where the document is served."""
        return {"url": SERVED_PATH, "format": "jwks"}

    async def preflight(self, request: base.PreflightRequest) -> PreflightResult:
        """Always ready: the server reads the store, which the rotation writes."""
        return PreflightResult(Readiness.READY, f"served at {SERVED_PATH}")

    async def hold(
        self, add: list[Delivery], remove: list[Delivery], change: jwks.Change, about: Delivery
    ) -> dict[str, Any]:
        """Record that the served document holds the keys of `add` alone from this step
        on. `jwk_of` refuses a version without a public JWK (or with a private member)
        here, at the step, rather than when the document is served."""
        kids = jwks.kids(jwks.jwk_of(d) for d in add)
        return {"url": SERVED_PATH, "format": "jwks", SERVED_KIDS: kids}
