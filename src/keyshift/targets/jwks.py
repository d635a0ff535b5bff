"""A JWKS document (RFC 7517 `{"keys": [...]}`) as the trust of a signing key: which
public keys verifiers accept.

A `jwks_signing_key` version carries its public JWK in its attributes (`jwk`, with its
`kid`); targets that serve verifiers keep each document holding the keys that must verify
now, and leave every other key in it (other credentials' keys) as it was:

- publish: the new key and the previous one (signers still sign with it);
- rollback: the previous key, without the failed new one;
- withdraw (just before the old version is revoked): the current key, without the old one.

Nothing here reads a private key: a JWK with a private member is refused.
"""

from __future__ import annotations

import json
from abc import abstractmethod
from collections.abc import Iterable
from typing import Any, Final, Literal

from pydantic import BaseModel

from keyshift.errors import PermanentError
from keyshift.targets import base
from keyshift.targets.base import Delivery, StepResult

__all__ = [
    "PRIVATE_MEMBERS",
    "Change",
    "JwksOutput",
    "document_of",
    "jwk_of",
    "kids",
    "parse",
    "render",
    "rewritten",
    "updated",
]

PRIVATE_MEMBERS: Final = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth", "k"})
"""JWK members that hold private or symmetric key material (RFC 7518 section 6)."""


def jwk_of(delivery: Delivery) -> dict[str, Any]:
    """The public JWK of a signing-key version; PermanentError naming the version when it
    has none (a `random` value, a certificate) or when it holds a private member."""
    text = delivery.attributes.get("jwk")
    try:
        jwk = json.loads(text) if text else None
    except ValueError:
        jwk = None
    if not isinstance(jwk, dict) or not isinstance(jwk.get("kid"), str):
        raise PermanentError(
            f"version {delivery.version_id} has no public JWK (is it a jwks_signing_key version?)"
        )
    if PRIVATE_MEMBERS & jwk.keys():
        raise PermanentError(f"version {delivery.version_id}: its JWK holds private members")
    return jwk


def parse(text: str | None, where: str) -> list[dict[str, Any]]:
    """The keys of a JWKS document (none for a missing or empty one); PermanentError naming
    `where` when it is not one (never quoting it)."""
    if text is None or not text.strip():
        return []
    try:
        document = json.loads(text)
    except ValueError:
        document = None
    keys = document.get("keys") if isinstance(document, dict) else None
    if not isinstance(keys, list) or not all(isinstance(k, dict) for k in keys):
        raise PermanentError(f'{where} does not parse as a JWKS document ({{"keys": [...]}})')
    return keys


def updated(
    keys: list[dict[str, Any]], add: Iterable[dict[str, Any]], remove: Iterable[str] = ()
) -> list[dict[str, Any]]:
    """`keys` with every JWK of `add` present (replacing one of the same kid, in place;
    appended otherwise) and every kid of `remove` gone. Other keys keep their order."""
    gone = set(remove)
    out = [k for k in keys if k.get("kid") not in gone]
    for jwk in add:
        at = next((i for i, k in enumerate(out) if k.get("kid") == jwk["kid"]), None)
        if at is None:
            out.append(jwk)
        else:
            out[at] = jwk
    return out


def render(keys: list[dict[str, Any]]) -> str:
    """The document as written: stable (sorted members, two-space indent), so that
    publishing the same keys again rewrites nothing."""
    return json.dumps({"keys": keys}, indent=2, sort_keys=True) + "\n"


def kids(keys: Iterable[dict[str, Any]]) -> list[str]:
    return [str(k.get("kid", "")) for k in keys]


def rewritten(
    text: str | None, add: Iterable[Delivery], remove: Iterable[Delivery], where: str
) -> tuple[str, list[dict[str, Any]]]:
    """The document `text` (at `where`, for errors) rendered again holding the public keys
    of `add` and none of `remove`, every other key kept in its order; and its keys. The
    one merge every JWKS output (a file, a ConfigMap key) makes."""
    keys = updated(parse(text, where), [jwk_of(d) for d in add], [jwk_of(d)["kid"] for d in remove])
    return render(keys), keys


def document_of(deliveries: Iterable[Delivery]) -> dict[str, Any]:
    """The JWKS document of these versions alone, in this order (public keys only): what a
    receiver that holds no document of its own (a webhook) is sent."""
    return {"keys": [jwk_of(d) for d in deliveries]}


Change = Literal["published", "rolled_back", "withdrawn"]
"""Why an output's keys change: the publish, the rollback, the withdrawal."""


class JwksOutput:
    """What every JWKS output but the file (which also writes secrets) does alike: it is a
    trust action holding `jwks`, and its publish, rollback and withdraw each make it hold
    `add` (exactly the keys that must verify now: this credential's new and previous key
    on publish, the previous alone on rollback, the current alone on withdrawal) and none
    of `remove`. Each output says how in `hold`, idempotently."""

    @classmethod
    def trust_only(cls, config: BaseModel) -> bool:
        """Always: the document serves verifiers, and holds no secret."""
        return True

    @classmethod
    def trust_format(cls, config: BaseModel) -> str:
        return "jwks"

    @abstractmethod
    async def hold(
        self, add: list[Delivery], remove: list[Delivery], change: Change, about: Delivery
    ) -> dict[str, Any]:
        """Make the output hold the keys of `add` and none of `remove`; `about` is the
        version whose rotation this is. Returns the step's detail. Idempotent."""

    async def publish(self, request: base.PublishRequest) -> StepResult:
        """Hold the new key and the previous one (the signers still sign with it)."""
        new, previous = request.delivery, request.previous
        done = await self.hold([new] if previous is None else [new, previous], [], "published", new)
        return StepResult({**done, "fingerprint": new.fingerprint})

    async def rollback(self, request: base.RollbackRequest) -> StepResult:
        """Hold the previous key alone again, without the failed one."""
        previous = request.previous
        add = [] if previous is None else [previous]
        done = await self.hold(add, [request.failed], "rolled_back", request.failed)
        fingerprint = previous.fingerprint if previous is not None else None
        return StepResult({**done, "fingerprint": fingerprint, "removed": previous is None})

    async def withdraw(self, request: base.WithdrawRequest) -> StepResult:
        """Hold the current key alone, the old one gone (just before it is revoked)."""
        current = request.current
        done = await self.hold([current], [request.withdrawn], "withdrawn", current)
        return StepResult({**done, "withdrawn": request.withdrawn.fingerprint})
