"""`random`: a generated secret for which keyshift itself is the system of record.

Used for API keys, shared secrets and signing keys that no external issuer
mints. Versions live only in keyshift's encrypted store: the previous version
stays there (and valid for consumers that still hold it) until revocation
erases it.
"""

from __future__ import annotations

import base64
import secrets
import string
import uuid
from collections.abc import Mapping
from typing import Annotated, ClassVar, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from keyshift.context import PluginContext
from keyshift.domain.secret import Secret
from keyshift.errors import PermanentError
from keyshift.providers import base
from keyshift.providers.base import (
    Capability,
    IssuedVersion,
    PreflightResult,
    Readiness,
    RevokeResult,
    VerifyResult,
    VersionInfo,
)

DEFAULT_ALPHABET = string.ascii_letters + string.digits


def _strong_alphabet(alphabet: str) -> str:
    if len(set(alphabet)) < 10:
        raise ValueError("must hold at least 10 distinct characters")
    return alphabet


Alphabet = Annotated[str, AfterValidator(_strong_alphabet)]
"""Characters a generated secret is drawn from; at least 10 distinct ones."""


def draw(alphabet: str, length: int) -> str:
    """`length` characters drawn uniformly with `secrets` from the distinct characters of
    `alphabet` (repeats in the alphabet would otherwise bias the draw)."""
    distinct = "".join(dict.fromkeys(alphabet))
    return "".join(secrets.choice(distinct) for _ in range(length))


class RandomConfig(BaseModel):
    """`format: alphabet` draws `length` characters from `alphabet`; `base64` / `hex` encode
    `length` random bytes."""

    model_config = ConfigDict(use_attribute_docstrings=True, extra="forbid", frozen=True)

    format: Literal["alphabet", "base64", "hex"] = "alphabet"
    length: int = Field(default=40, ge=16, le=4096)
    alphabet: Alphabet = DEFAULT_ALPHABET


class RandomProvider:
    """Generates values with `secrets`; revocation is keyshift erasing its copy."""

    kind: ClassVar[str] = "random"
    Config: ClassVar[type[BaseModel]] = RandomConfig
    capability_fields: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def describe(
        cls, config: RandomConfig, integrations: Mapping[str, BaseModel]
    ) -> dict[str, str]:
        """Nothing outside keyshift: the value is generated here, consumers take it from the
        actions."""
        return {"issuer": "keyshift (generated locally)", "format": config.format}

    capabilities: ClassVar[frozenset[Capability]] = frozenset(
        {Capability.DUAL_ACTIVE, Capability.IMPORTS}
    )

    def __init__(self, config: RandomConfig, context: PluginContext) -> None:
        self.config = config
        self.context = context

    def _generate(self) -> str:
        cfg = self.config
        if cfg.format == "base64":
            return base64.urlsafe_b64encode(secrets.token_bytes(cfg.length)).decode().rstrip("=")
        if cfg.format == "hex":
            return secrets.token_hex(cfg.length)
        return draw(cfg.alphabet, cfg.length)

    async def preflight(self, request: base.PreflightRequest) -> PreflightResult:
        """Always ready: keyshift itself issues the values, so there is nothing to reach."""
        return PreflightResult(Readiness.READY, "keyshift generates the values; nothing to reach")

    async def create(self, request: base.CreateRequest) -> IssuedVersion:
        """Generate a new value. Nothing leaves the process until the engine stores it, so
        a crash before storing loses nothing and a second call simply draws again; the
        engine looks for a stored version of this rotation before calling."""
        expires = (
            self.context.now() + request.policy.max_lifetime
            if request.policy.max_lifetime is not None
            else None
        )
        return IssuedVersion(
            provider_ref=f"random:{uuid.uuid4()}",
            value=Secret(self._generate()),
            attributes={"format": self.config.format},
            expires_at=expires,
        )

    async def import_version(self, request: base.ImportRequest) -> IssuedVersion:
        """A value generated elsewhere, taken as keyshift's: there is no issuer to ask,
        so nothing is proven beyond the value not being empty."""
        if not request.value.reveal():
            raise PermanentError("an imported value may not be empty")
        return IssuedVersion(
            provider_ref=f"random:imported:{uuid.uuid4()}",
            value=request.value,
            attributes={"format": self.config.format},
        )

    async def verify(self, request: base.VerifyRequest) -> VerifyResult:
        """keyshift is the issuer: a version is valid when it holds a well-formed value."""
        value = request.version.value.reveal()
        if self.config.format == "alphabet" and len(value) != self.config.length:
            return VerifyResult(ok=False, detail="value length does not match the config")
        return VerifyResult(ok=bool(value), detail="issued by keyshift")

    async def revoke(self, request: base.RevokeRequest) -> RevokeResult:
        """Nothing to call: the engine erases the stored value. Succeeds when already gone."""
        return RevokeResult(detail={"issuer": "keyshift"})

    async def list_versions(self, request: base.ListRequest) -> list[VersionInfo]:
        """keyshift's store is the only record of this issuer, so there is nothing else to list."""
        return []

    async def aclose(self) -> None:
        return None
