"""`jwks_signing_key`: a key that signs tokens (JWTs), whose public part verifiers read
from a JWKS document.

keyshift generates each version's key pair itself with `cryptography`. The private key
(PKCS#8 PEM) is the sealed secret value; the public key as a JWK (RFC 7517, exported with
`joserfc`), its `kid` (the RFC 7638 thumbprint) and its `alg` are the version's public
attributes. The fingerprint is `kid:` and the kid, which is what a token's header names.

Overlap: a new key does not invalidate the old one; what makes a token verify is the
verifiers' JWKS. So the rotation is trust first (`TrustFirst`): the JWKS gets the new key
while the signers still sign with the old one; keyshift waits `cache_ttl` (the verifiers'
refresh interval) before the signers get the new key; the old key stays in the JWKS for
`max_token_lifetime` after the switch (the grace period is never shorter), and is then
withdrawn from the JWKS just before it is revoked. See docs/jwks.md.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Mapping
from datetime import timedelta
from typing import Any, ClassVar, Final, Literal

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from joserfc import jws
from joserfc.errors import JoseError, SecurityWarning
from joserfc.jwk import ECKey, OKPKey, RSAKey
from pydantic import BaseModel, ConfigDict, ValidationInfo, field_validator

from keyshift.context import PluginContext
from keyshift.domain.durations import Duration, format_duration
from keyshift.errors import PermanentError
from keyshift.providers import base
from keyshift.providers.base import (
    Capability,
    IssuedVersion,
    PreflightResult,
    Readiness,
    RevokeResult,
    TrustFirst,
    VerifyResult,
    VersionInfo,
)
from keyshift.providers.keys import (
    KeyType,
    imported_key,
    load_private_key,
    new_private_key,
    private_pem,
)

__all__ = [
    "FINGERPRINT_PREFIX",
    "JwksSigningKeyConfig",
    "JwksSigningKeyProvider",
    "SigningAlg",
    "public_jwk",
    "signing_key_version",
]

SigningAlg = Literal[
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "EdDSA", "Ed25519"
]
"""The JWS algorithms a version may sign with (RFC 7518; EdDSA of RFC 8037, which RFC 9864
names Ed25519 for this key type)."""

DEFAULT_ALG: Final[dict[str, str]] = {
    "rsa-2048": "RS256",
    "rsa-3072": "RS256",
    "ec-p256": "ES256",
    "ed25519": "EdDSA",
}
"""The algorithm of each key type when the config names none."""

FINGERPRINT_PREFIX: Final = "kid:"

_ALGS_OF_KEY: Final[dict[str, frozenset[str]]] = {
    "rsa-2048": frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"}),
    "rsa-3072": frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"}),
    "ec-p256": frozenset({"ES256"}),
    "ed25519": frozenset({"EdDSA", "Ed25519"}),
}


class JwksSigningKeyConfig(BaseModel):
    """A signing key of `key_type`, rolled over trust first: verifiers get the new public
    key `cache_ttl` before the signers get the key, and keep the old one for
    `max_token_lifetime` after."""

    model_config = ConfigDict(use_attribute_docstrings=True, extra="forbid", frozen=True)

    key_type: KeyType = "ec-p256"
    """The new key of each version: `rsa-2048`, `rsa-3072`, `ec-p256` or `ed25519`."""
    alg: SigningAlg | None = None
    """The JWS algorithm (the JWK's `alg`): RS256 (default for RSA), RS384, RS512, PS256,
    PS384 or PS512 for RSA; ES256 for ec-p256; EdDSA (default: what most verifiers
    know) or Ed25519 (RFC 9864) for ed25519."""
    cache_ttl: Duration = timedelta(minutes=15)
    """How long verifiers serve a JWKS they fetched before fetching it again (their cache
    TTL or refresh interval; the longest of them). The signers get a new key at least this
    long after every JWKS holds it."""
    max_token_lifetime: Duration = timedelta(hours=1)
    """The longest a token signed with the old key stays in use (its `exp` minus `iat`).
    The old key stays in the JWKS at least this long after the signers switched: the
    grace period is the longer of this and the policy's."""

    @field_validator("alg")
    @classmethod
    def _alg_fits_key(cls, alg: str | None, info: ValidationInfo) -> str | None:
        key_type = info.data.get("key_type")
        if alg is None or not isinstance(key_type, str):
            return alg
        allowed = _ALGS_OF_KEY.get(key_type, frozenset())
        if alg not in allowed:
            raise ValueError(
                f"alg {alg} does not fit key_type {key_type}; use {', '.join(sorted(allowed))}"
            )
        return alg

    @field_validator("cache_ttl", "max_token_lifetime")
    @classmethod
    def _positive(cls, value: timedelta, info: ValidationInfo) -> timedelta:
        if value <= timedelta(0):
            raise ValueError(f"{info.field_name} must be longer than 0s")
        return value

    @property
    def signing_alg(self) -> str:
        return self.alg or DEFAULT_ALG[self.key_type]


def public_jwk(key: Any, alg: str) -> dict[str, str]:
    """The public JWK of a private key: its key members, `kid` (the RFC 7638 thumbprint),
    `alg` and `use: sig`. Never a private member."""
    jwk = _jwk_of(key)
    members = {k: str(v) for k, v in jwk.as_dict(private=False).items()}
    return {**members, "kid": jwk.thumbprint(), "alg": alg, "use": "sig"}


def signing_key_version(
    key: Any, key_type: str, alg: str, *, kid: str | None = None
) -> IssuedVersion:
    """A signing-key version: the private key (PKCS#8 PEM) sealed; the public JWK, its kid
    (`kid`, else the RFC 7638 thumbprint), alg, key type and public key PEM public;
    fingerprinted `kid:<kid>`, which is what a token's header names."""
    jwk = public_jwk(key, alg)
    if kid is not None:
        jwk["kid"] = kid
    return IssuedVersion(
        provider_ref=f"jwk:{jwk['kid']}",
        value=private_pem(key),
        attributes={
            "kid": jwk["kid"],
            "alg": jwk["alg"],
            "key_type": key_type,
            "jwk": json.dumps(jwk, sort_keys=True),
            "public_key": key.public_key()
            .public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
            .decode("ascii"),
        },
        fingerprint=FINGERPRINT_PREFIX + jwk["kid"],
    )


def _jwk_of(key: Any) -> RSAKey | ECKey | OKPKey:
    """The private key as a joserfc key (which signs, and exports the JWK)."""
    pem = private_pem(key).reveal().encode("ascii")
    if isinstance(key, rsa.RSAPrivateKey):
        return RSAKey.import_key(pem)
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return ECKey.import_key(pem)
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return OKPKey.import_key(pem)
    raise PermanentError(f"no JWK for a {type(key).__name__}")


class JwksSigningKeyProvider:
    """Generates signing keys; keyshift is the system of record, the JWKS the trust."""

    kind: ClassVar[str] = "jwks_signing_key"
    Config: ClassVar[type[BaseModel]] = JwksSigningKeyConfig
    capability_fields: ClassVar[tuple[str, ...]] = ()
    capabilities: ClassVar[frozenset[Capability]] = frozenset(
        {Capability.DUAL_ACTIVE, Capability.IMPORTS}
    )

    @classmethod
    def describe(
        cls, config: JwksSigningKeyConfig, integrations: Mapping[str, BaseModel]
    ) -> dict[str, str]:
        """What it generates and how it rolls over."""
        return {
            "issuer": "keyshift (generated signing key)",
            "key_type": config.key_type,
            "alg": config.signing_alg,
            "cache_ttl": format_duration(config.cache_ttl),
            "max_token_lifetime": format_duration(config.max_token_lifetime),
        }

    def __init__(self, config: JwksSigningKeyConfig, context: PluginContext) -> None:
        self.config = config
        self.context = context
        self.trust_first = TrustFirst(
            signers_after=config.cache_ttl, keep_old_for=config.max_token_lifetime
        )

    async def preflight(self, request: base.PreflightRequest) -> PreflightResult:
        """Always ready: keyshift generates the key itself and calls nothing."""
        return PreflightResult(
            Readiness.READY,
            f"generates {self.config.key_type} keys signing {self.config.signing_alg}",
        )

    async def create(self, request: base.CreateRequest) -> IssuedVersion:
        """Generate a key pair. Nothing leaves the process until the engine stores it, and
        the engine looks for a stored version of this rotation before calling, so a resumed
        rotation never makes a second one."""
        key = new_private_key(self.config.key_type)
        return signing_key_version(key, self.config.key_type, self.config.signing_alg)

    async def import_version(self, request: base.ImportRequest) -> IssuedVersion:
        """The signing key in use now (an unencrypted PEM private key) as the version
        `create` would have made of it, named by `request.kid` when the verifiers know it
        by another kid than its thumbprint. Its alg is the config's when it fits the key,
        else the key type's default. PermanentError naming the value when it holds no
        usable key. Calls nothing."""
        key, key_type = imported_key(request.value, "value")
        alg = self.config.signing_alg
        if alg not in _ALGS_OF_KEY[key_type]:
            alg = DEFAULT_ALG[key_type]
        if request.kid is not None and not request.kid.strip():
            raise PermanentError("--kid: an empty kid names no key")
        return signing_key_version(key, key_type, alg, kid=request.kid)

    async def verify(self, request: base.VerifyRequest) -> VerifyResult:
        """The version's private key is the one its JWK describes, and a token it signs
        verifies with that JWK, as a verifier would check it. Changes nothing."""
        version = request.version
        key = load_private_key(version.value)
        if key is None:
            return VerifyResult(ok=False, detail="the version holds no private key")
        try:
            published = json.loads(version.attributes.get("jwk", ""))
        except ValueError:
            return VerifyResult(ok=False, detail="the version holds no JWK")
        alg = str(version.attributes.get("alg", self.config.signing_alg))
        # The kid is the version's own (an imported key keeps the one verifiers know).
        if {**public_jwk(key, alg), "kid": published.get("kid")} != published:
            return VerifyResult(ok=False, detail="the private key does not match the JWK")
        signer = _jwk_of(key)
        verifier = type(signer).import_key(published)
        header = {"alg": alg, "kid": published["kid"]}
        try:
            with warnings.catch_warnings():
                # joserfc warns that RFC 9864 deprecates the name EdDSA; verifiers still use it.
                warnings.simplefilter("ignore", SecurityWarning)
                token = jws.serialize_compact(header, b"keyshift probe", signer, algorithms=[alg])
                jws.deserialize_compact(token, verifier, algorithms=[alg])
        except JoseError as exc:
            return VerifyResult(
                ok=False, detail=f"a probe signed {alg} does not verify ({exc.error})"
            )
        return VerifyResult(
            ok=True, detail=f"kid {published['kid']} signs {alg} and verifies with its JWK"
        )

    async def revoke(self, request: base.RevokeRequest) -> RevokeResult:
        """Nothing to call: the engine erases the private key and marks the version
        revoked, after the trust actions withdrew its JWK. Succeeds when already revoked."""
        attributes = request.version.attributes
        return RevokeResult(
            detail={
                "issuer": "keyshift (generated signing key)",
                "kid": str(attributes.get("kid", "")),
                "revocation": "the private key is erased; the JWKS no longer lists the kid",
            }
        )

    async def list_versions(self, request: base.ListRequest) -> list[VersionInfo]:
        """keyshift's store is the only record of the keys it generated."""
        return []

    async def aclose(self) -> None:
        return None
