"""`entra_certificate`: certificates (`keyCredentials`) of an Entra ID app registration.

A rotation makes a new key pair and a certificate for it, self-signed by keyshift with
`cryptography` (RSA: Entra ID signs in applications with RSA certificates only), adds the
certificate's public part to the application while the old certificate stays valid,
proves that the application signs in with a client assertion made with the new key, and
after the grace period removes the old certificate. A version is one certificate: its
private key is the sealed value; the certificate is public and stored with the version
(`attributes`: `certificate`, `subject`, `not_after`, `thumbprint`, and `key_id`, the
application's keyCredential id). The fingerprint is the certificate's SHA-256 thumbprint
(`sha256:`); Entra ID names it by its SHA-1 thumbprint (`customKeyIdentifier`, kept as
`sha1_thumbprint`).

How the certificate is added and removed (`method`):

- `add_key` (the default): Graph's `addKey` and `removeKey`. Each call carries a proof
  of possession: a JWT signed (RS256) with the private key of a certificate the
  application holds now, `aud` `00000002-0000-0000-c000-000000000000`, `iss` the
  application's object id, valid for at most 10 minutes (keyshift makes it valid from
  now for 10 minutes, less a margin for clock skew). keyshift signs the proof for
  `addKey` with the current version's key, the certificate the previous rotation added,
  and the proof for `removeKey` with the key of the certificate being removed (still
  one the application holds). So `add_key` works from the second rotation on, while the
  current certificate has not expired: the first certificate of an application, one
  keyshift does not hold (added by hand), or an expired one cannot sign the proof.
  keyshift's identity needs Application.ReadWrite.OwnedBy (as an owner) or
  Application.ReadWrite.All.
- `patch`: an update of the application (`PATCH /applications/{id}`) that sends the whole
  `keyCredentials` collection, which it replaces: keyshift reads every certificate with
  its public key (`$select=keyCredentials`), adds or drops one, and sends them all back,
  so the others are kept. No proof is needed, so it adds an application's first
  certificate and works when keyshift holds no current key; the update needs
  Application.ReadWrite.All (or OwnedBy as an owner). Two writers that update
  `keyCredentials` at once can lose each other's change: Graph has no condition on it.

Idempotency. Each certificate a rotation adds carries the display name
`<display_name_prefix> <marker>`. A `create` repeated for the same rotation (a worker
died after Graph added the certificate and before keyshift stored the key) finds the
certificate of that name, whose private key was lost, removes it and adds a fresh one,
so exactly one certificate of the rotation remains.

Verification signs in as the application (the client credentials grant with
`client_assertion_type=urn:ietf:params:oauth:client-assertion-type:jwt-bearer`, through
azure-identity's CertificateCredential) with the new key: what a consumer does. Entra ID
may refuse a certificate just added with AADSTS700027 (the key is not found) while it
replicates: within the propagation timeout that is "not yet". Revoking cannot shorten the
life of access tokens already issued with the old certificate (up to 90 minutes).

Residual use: the sign-in log records the certificate's keyId
(`servicePrincipalCredentialKeyId`) for each sign-in with it, so with a `residual_use`
policy the old certificate's sign-ins are counted as for a client secret (see
`keyshift.providers.entra`: the beta log, AuditLog.Read.All, its delay).

Rollback: a new certificate that was never proven is removed at once; one that a rollback
left disabled is removed when its retention ends (`removeKey` signed with its own key, or
an update), as the engine does for every provider.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, ClassVar, Final, Literal

import structlog
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from joserfc import jwt
from joserfc.jwk import RSAKey
from pydantic import BaseModel, ConfigDict, Field, field_validator

from keyshift.domain.durations import Duration, format_duration
from keyshift.domain.preflight import Readiness
from keyshift.domain.secret import Secret
from keyshift.errors import KeyshiftError, PermanentError, TransientError
from keyshift.providers import base
from keyshift.providers.base import (
    Capability,
    IssuedVersion,
    PreflightResult,
    Propagation,
    RevokeResult,
    UsageReport,
    VerifyResult,
    VersionInfo,
)
from keyshift.providers.entra.application import GraphApplicationProvider
from keyshift.providers.entra.config import MAX_SIGN_IN_LOOKBACK, MIN_SIGN_IN_LOOKBACK
from keyshift.providers.entra.signins import sign_ins_with
from keyshift.providers.graph import (
    AUDIT_LOG_ROLE,
    NEEDED_PERMISSION,
    WRITE_ROLES,
    Application,
    GraphClient,
    GraphRequestFailed,
    KeyCredential,
    TokenRefused,
    azure_identity_token_source,
    token_roles,
)
from keyshift.providers.keys import Renewal, load_private_key, new_private_key, private_pem

if TYPE_CHECKING:
    pass

log = structlog.get_logger("keyshift.providers.entra")

PROOF_AUDIENCE: Final = "00000002-0000-0000-c000-000000000000"
"""The `aud` Graph requires of an addKey/removeKey proof."""
PROOF_LIFETIME: Final = timedelta(minutes=10)
"""The longest a proof may be valid (`exp - nbf`)."""
PROOF_SKEW: Final = timedelta(seconds=30)
"""A proof is dated this much before now, so Graph's clock running behind does not see
it as not yet valid; its lifetime stays within PROOF_LIFETIME."""
BACKDATE: Final = timedelta(minutes=5)
"""A new certificate is valid from this long before it was made (clock skew)."""
FINGERPRINT_PREFIX: Final = "sha256:"
CERTIFICATE_NOT_YET_CODES: Final = frozenset({"AADSTS700027"})
"""The refusal Entra ID gives a client assertion signed with a certificate it has not
replicated yet ("the key was not found"); within the propagation timeout, "not yet"."""
TOKENS_STAY_VALID: Final = (
    "access tokens issued with the removed certificate stay valid until they expire "
    "(up to 90 minutes)"
)
CertificateKeyType = Literal["rsa-2048", "rsa-3072"]


class EntraCertificateConfig(Renewal):
    """Which application's certificates rotate, how they are made, and how they are added."""

    model_config = ConfigDict(use_attribute_docstrings=True, extra="forbid", frozen=True)

    integration: str
    """The `entra` integration (tenant and keyshift's identity) to use; may be left out when
    the estate declares exactly one."""
    app_id: str = Field(min_length=1)
    """The application (client) id, `appId`, of the app registration whose certificates
    rotate."""
    method: Literal["add_key", "patch"] = "add_key"
    """`add_key`: Graph's addKey/removeKey, each proven with a JWT signed by the key of a
    certificate the application holds now that keyshift holds too (so from the second
    rotation on). `patch`: an update of the application's whole `keyCredentials`, keeping
    the others; needed for the first certificate and when keyshift holds no current key."""
    key_type: CertificateKeyType = "rsa-2048"
    """The new key of each version: `rsa-2048` or `rsa-3072` (Entra ID takes RSA)."""
    validity: Duration = timedelta(days=180)
    """How long each certificate is valid; its `not_after` is the version's expiry."""
    renew_before: Duration = timedelta(days=30)
    """Renewal is due this long before `not_after`: for this credential it takes the place
    of the policy's `rotate_before_expiry`. Shorter than `validity`."""
    common_name: str | None = Field(default=None, min_length=1, max_length=64)
    """The certificate's subject CN; default `keyshift <app_id>`."""
    display_name_prefix: str = Field(default="keyshift", min_length=1)
    """Start of the display name of each certificate keyshift adds; the rotation marker
    follows."""
    sign_in_lookback: Duration = timedelta(hours=2)
    """With a `residual_use` policy: how far back each check reads Entra ID's sign-in log
    for sign-ins with the old certificate (its keyId), on top of the policy's
    `check_every`. Between 5m and 7d; keyshift's identity needs AuditLog.Read.All."""

    @field_validator("sign_in_lookback")
    @classmethod
    def _lookback_in_range(cls, value: timedelta) -> timedelta:
        if not MIN_SIGN_IN_LOOKBACK <= value <= MAX_SIGN_IN_LOOKBACK:
            raise ValueError(
                f"must be between {format_duration(MIN_SIGN_IN_LOOKBACK)} (the sign-in log's "
                f"delay) and {format_duration(MAX_SIGN_IN_LOOKBACK)} (its shortest retention)"
            )
        return value


def proof_of_possession(
    key: rsa.RSAPrivateKey, certificate: x509.Certificate, app_object_id: str, now: datetime
) -> Secret:
    """The JWT Graph's addKey and removeKey take as proof that the caller holds the key of
    `certificate`, one of the application's: RS256, `x5t` its SHA-1 thumbprint, `aud`
    PROOF_AUDIENCE, `iss` the application's object id, valid from `now` (less PROOF_SKEW)
    for PROOF_LIFETIME. A Secret: whoever holds it may change the application's keys."""
    sha1 = certificate.fingerprint(hashes.SHA1())  # noqa: S303 (Graph names certificates so)
    header = {
        "alg": "RS256",
        "typ": "JWT",
        "x5t": base64.urlsafe_b64encode(sha1).rstrip(b"=").decode("ascii"),
    }
    start = int((now - PROOF_SKEW).timestamp())
    claims = {
        "aud": PROOF_AUDIENCE,
        "iss": app_object_id,
        "nbf": start,
        "exp": start + int(PROOF_LIFETIME.total_seconds()),
    }
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return Secret(jwt.encode(header, claims, RSAKey.import_key(pem), algorithms=["RS256"]))


def _pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode("ascii")


def _der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


def _certificates(text: str) -> list[x509.Certificate]:
    try:
        return x509.load_pem_x509_certificates(text.encode("utf-8")) if text else []
    except ValueError:
        return []


def _sha1_thumbprint(cert: x509.Certificate) -> str:
    """How Graph lists a certificate (`customKeyIdentifier`): SHA-1, upper-case hex."""
    return hashlib.sha1(_der(cert)).hexdigest().upper()  # noqa: S324 (Graph's identifier)


def _lists(credential: KeyCredential, cert: x509.Certificate) -> bool:
    """Whether the application's `credential` is `cert`: by its public key when Graph
    returned it (`$select=keyCredentials`), else by the SHA-1 thumbprint Graph lists as
    `customKeyIdentifier`, in hex or as the base64 of its bytes."""
    if credential.key:
        try:
            return base64.b64decode(credential.key) == _der(cert)
        except ValueError:
            return False
    listed = credential.thumbprint or ""
    sha1 = hashlib.sha1(_der(cert)).digest()  # noqa: S324 (Graph's identifier)
    return listed.upper() == sha1.hex().upper() or listed == base64.b64encode(sha1).decode()


class EntraCertificateProvider(GraphApplicationProvider[EntraCertificateConfig]):
    """Adds, verifies and removes certificates of an Entra ID application."""

    kind: ClassVar[str] = "entra_certificate"
    Config: ClassVar[type[BaseModel]] = EntraCertificateConfig
    capability_fields: ClassVar[tuple[str, ...]] = ()
    capabilities: ClassVar[frozenset[Capability]] = frozenset(
        {Capability.DUAL_ACTIVE, Capability.AUTHENTICATES, Capability.RESIDUAL_USE}
    )
    propagation: ClassVar[Propagation] = Propagation(
        timedelta(minutes=5),
        "Entra ID replicates a new certificate before it signs in (AADSTS700027 until then), "
        "as it does a new client secret; a removed one keeps signing in for minutes, and "
        "tokens issued with it stay valid up to 90 min",
    )
    integration_type: ClassVar[str] = "entra"

    @classmethod
    def describe(
        cls, config: EntraCertificateConfig, integrations: Mapping[str, BaseModel]
    ) -> dict[str, str]:
        """What it changes: the certificates of one application in one tenant."""
        integration = cls.declared(config, integrations)
        tenant = integration.tenant_id if integration is not None else "(integration not declared)"
        how = (
            "addKey/removeKey, proven with the current certificate's key"
            if config.method == "add_key"
            else "an update of the whole keyCredentials collection, keeping the others"
        )
        return {
            "integration": config.integration,
            "tenant": tenant,
            "app_id": config.app_id,
            "changes": f"certificates (keyCredentials) of the application, by {how}",
            "key_type": config.key_type,
            "validity": format_duration(config.validity),
        }

    @classmethod
    def rotate_before_expiry(cls, config: BaseModel) -> timedelta | None:
        """Renewal is due `renew_before` the certificate's `not_after` (as for `x509_ca`)."""
        return config.renew_before if isinstance(config, EntraCertificateConfig) else None

    # --- names -------------------------------------------------------------------------

    def _display_name(self, marker: str) -> str:
        return f"{self.config.display_name_prefix} {marker}"

    def _marker_of(self, display_name: str | None) -> str | None:
        head = self.config.display_name_prefix + " "
        if display_name and display_name.startswith(head) and len(display_name) > len(head):
            return display_name[len(head) :]
        return None

    def _ref(self, marker: str) -> str:
        return f"{self.config.app_id}:{marker}"

    # --- certificates and proofs -----------------------------------------------------------

    def _new_certificate(self) -> tuple[rsa.RSAPrivateKey, x509.Certificate]:
        key = new_private_key(self.config.key_type)
        if not isinstance(key, rsa.RSAPrivateKey):  # KeyType is RSA only here
            raise PermanentError(f"provider.key_type: {self.config.key_type} is not RSA")
        now = self.context.now()
        name = x509.Name(
            [
                x509.NameAttribute(
                    NameOID.COMMON_NAME, self.config.common_name or f"keyshift {self.config.app_id}"
                )
            ]
        )
        public = key.public_key()
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(public)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - BACKDATE)
            .not_valid_after(now + self.config.validity)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=True,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=False,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
            .sign(key, hashes.SHA256())
        )
        return key, cert

    def _signer(
        self, version: IssuedVersion | None, held: list[KeyCredential], purpose: str
    ) -> tuple[rsa.RSAPrivateKey, x509.Certificate]:
        """The key and certificate of `version` to sign a proof with, checked to be one the
        application holds now and not expired; PermanentError saying `method: patch` is
        needed otherwise."""
        hint = (
            f"{purpose} with addKey/removeKey needs a proof signed by a current certificate "
            f"of application {self.config.app_id} whose key keyshift holds"
        )
        fix = (
            "; use `method: patch` (an update of the application's keyCredentials) for this "
            "rotation"
        )
        if version is None or not version.value.reveal():
            raise PermanentError(f"{hint}: keyshift holds none (a first certificate?){fix}")
        key = load_private_key(version.value)
        certs = _certificates(version.attributes.get("certificate", ""))
        if not isinstance(key, rsa.RSAPrivateKey) or not certs:
            raise PermanentError(
                f"{hint}: version {version.provider_ref} holds no RSA key and certificate{fix}"
            )
        cert = certs[0]
        if not any(_lists(k, cert) for k in held):
            raise PermanentError(
                f"{hint}: the application no longer holds version {version.provider_ref}'s "
                f"certificate{fix}"
            )
        if cert.not_valid_after_utc <= self.context.now():
            raise PermanentError(
                f"{hint}: version {version.provider_ref}'s certificate expired "
                f"{cert.not_valid_after_utc.isoformat()}{fix}"
            )
        return key, cert

    def _proof(
        self, signer: tuple[rsa.RSAPrivateKey, x509.Certificate], app: Application
    ) -> Secret:
        return proof_of_possession(signer[0], signer[1], app.id, self.context.now())

    async def _drop(
        self,
        graph: GraphClient,
        app: Application,
        held: list[KeyCredential],
        key_id: str,
        signed_by: IssuedVersion | None,
    ) -> bool:
        """Remove the certificate `key_id`; False if the application no longer holds it."""
        if key_id not in {k.key_id for k in held}:
            return False
        if self.config.method == "patch":
            await graph.set_key_credentials(
                app.id, [k.as_graph() for k in held if k.key_id != key_id]
            )
            return True
        proof = self._proof(self._signer(signed_by, held, "removing a certificate"), app)
        try:
            await graph.remove_key(app.id, key_id, proof)
        except GraphRequestFailed as exc:
            if exc.status == 404:
                return False
            raise
        return True

    # --- the contract --------------------------------------------------------------------

    async def create(self, request: base.CreateRequest) -> IssuedVersion:
        """Make a key and a self-signed certificate and add the certificate to the
        application as `<prefix> <marker>`; the old certificates stay valid.

        A repeat for the same rotation removes the certificate of that name (its key was
        lost) and adds a fresh one: one certificate per rotation."""
        graph = self._client()
        app = await self._application(graph)
        held = await graph.list_key_credentials(app.id)
        display_name = self._display_name(request.marker)
        orphans = [k for k in held if k.display_name == display_name]
        key, cert = self._new_certificate()
        if self.config.method == "patch":
            kept = [k.as_graph() for k in held if k.display_name != display_name]
            new = {
                "type": "AsymmetricX509Cert",
                "usage": "Verify",
                "key": base64.b64encode(_der(cert)).decode("ascii"),
                "displayName": display_name,
            }
            await graph.set_key_credentials(app.id, [*kept, new])
            for orphan in orphans:
                log.info("entra.orphan_removed", app_id=self.config.app_id, key_id=orphan.key_id)
            added = self._find(await graph.list_key_credentials(app.id), cert)
        else:
            signer = self._signer(request.current, held, "adding a certificate")
            for orphan in orphans:
                # Its key was lost with the crashed attempt: the current key proves.
                if await self._drop(graph, app, held, orphan.key_id, request.current):
                    log.info(
                        "entra.orphan_removed", app_id=self.config.app_id, key_id=orphan.key_id
                    )
            added = await graph.add_key(app.id, _der(cert), display_name, self._proof(signer, app))
        print_ = cert.fingerprint(hashes.SHA256()).hex()
        return IssuedVersion(
            provider_ref=self._ref(request.marker),
            value=private_pem(key),
            attributes={
                "certificate": _pem(cert),
                "subject": cert.subject.rfc4514_string(),
                "issuer": f"{cert.issuer.rfc4514_string()} (self-signed by keyshift)",
                "sans": "",
                "not_before": cert.not_valid_before_utc.isoformat(),
                "not_after": cert.not_valid_after_utc.isoformat(),
                "serial_number": format(cert.serial_number, "x"),
                "key_type": self.config.key_type,
                "thumbprint": print_,
                "sha1_thumbprint": _sha1_thumbprint(cert),
                "key_id": added.key_id,
                "app_id": self.config.app_id,
                "tenant_id": self._integration.tenant_id,
                "method": self.config.method,
            },
            expires_at=cert.not_valid_after_utc,
            fingerprint=FINGERPRINT_PREFIX + print_,
        )

    def _find(self, held: list[KeyCredential], cert: x509.Certificate) -> KeyCredential:
        for credential in held:
            if _lists(credential, cert):
                return credential
        # A repeat of `create` finds this certificate by its display name and replaces it.
        raise TransientError(
            f"application {self.config.app_id} does not list the certificate "
            f"{_sha1_thumbprint(cert)} just added to it yet"
        )

    async def verify(self, request: base.VerifyRequest) -> VerifyResult:
        """Sign in as the application with a client assertion signed by the version's key
        (client credentials). A refusal is `ok=False` with the AADSTS code, and `not_yet`
        for AADSTS700027, which Entra ID gives a certificate still replicating; an
        unreachable endpoint raises TransientError."""
        app_id = request.version.attributes.get("app_id") or self.config.app_id
        key_id = request.version.attributes.get("key_id", "")
        certificate = request.version.attributes.get("certificate", "")
        if not request.version.value.reveal() or not certificate:
            return VerifyResult(ok=False, detail="the version holds no key and certificate")
        pem = Secret(request.version.value.reveal() + certificate)
        as_app = self._integration.credential(self.context, client_id=app_id, certificate=pem)
        async with as_app as credential:
            try:
                await azure_identity_token_source(credential)()
            except TokenRefused as exc:
                return VerifyResult(
                    ok=False,
                    detail=f"sign-in as {app_id} with certificate {key_id} refused ({exc.code})",
                    not_yet=exc.code in CERTIFICATE_NOT_YET_CODES,
                )
        return VerifyResult(ok=True, detail=f"signed in as {app_id} with certificate {key_id}")

    async def revoke(self, request: base.RevokeRequest) -> RevokeResult:
        """Remove the version's certificate from the application (`removeKey` proven with
        the version's own key, or an update without it). Succeeds with `already_gone=True`
        if the application no longer holds it. Access tokens already issued with it stay
        valid until they expire; the detail's `tokens` says so."""
        graph = self._client()
        app = await self._application(graph)
        held = await graph.list_key_credentials(app.id)
        key_id = request.version.attributes.get("key_id", "")
        detail = {"key_id": key_id, "thumbprint": request.version.attributes.get("thumbprint", "")}
        if not key_id or not await self._drop(graph, app, held, key_id, request.version):
            return RevokeResult(already_gone=True, detail=detail)
        log.info("entra.certificate_revoked", app_id=self.config.app_id, key_id=key_id)
        return RevokeResult(
            detail={**detail, "remaining": str(len(held) - 1), "tokens": TOKENS_STAY_VALID}
        )

    async def residual_use(self, request: base.UsageRequest) -> UsageReport:
        """Sign-ins of the application with the version's certificate (its keyId, which
        the sign-in log records as `servicePrincipalCredentialKeyId`) over the last
        `sign_in_lookback` plus the policy's `check_every`; failed attempts count too.
        Changes nothing; a 403 (no AuditLog.Read.All, or no P1/P2 licence) raises
        GraphRequestFailed naming the permission."""
        attributes = request.version.attributes
        key_id = attributes.get("key_id", "")
        if not key_id:
            raise PermanentError(
                f"version {request.version.provider_ref} names no keyId, so its sign-ins "
                "cannot be told from the application's others"
            )
        gate = request.policy.residual_use if request.policy is not None else None
        window = self.config.sign_in_lookback + (gate.check_every if gate else timedelta(0))
        app_id = attributes.get("app_id") or self.config.app_id
        since = self.context.now() - window
        return await sign_ins_with(self._client(), app_id, [key_id], window, since)

    async def list_versions(self, request: base.ListRequest) -> list[VersionInfo]:
        """Every certificate of the application. Those keyshift added carry the rotation's
        marker; others are listed by keyId."""
        app = await self._application(self._client())
        out: list[VersionInfo] = []
        for k in app.key_credentials:
            marker = self._marker_of(k.display_name)
            out.append(
                VersionInfo(
                    provider_ref=self._ref(marker) if marker else k.key_id,
                    marker=marker,
                    created_at=k.start,
                    expires_at=k.end,
                )
            )
        return out

    async def preflight(self, request: base.PreflightRequest) -> PreflightResult:
        """Sign in to Graph, read the token's `roles`, find the application by its appId.
        Changes nothing. Blocked when Entra ID refuses keyshift, the token holds no
        permission to change applications, the policy has `residual_use` and the token
        lacks AuditLog.Read.All, or no application has the appId; manual review when the
        token's roles cannot be read. With `add_key` it says that the first certificate
        needs `patch`."""
        tenant = self._integration.tenant_id
        reads_log = request.policy is not None and request.policy.residual_use is not None
        try:
            graph = self._client()
            roles = token_roles(await graph.token())
            if roles is not None and not any(r in WRITE_ROLES for r in roles):
                return PreflightResult(
                    Readiness.BLOCKED,
                    f"keyshift's identity in tenant {tenant} lacks {NEEDED_PERMISSION}, needed "
                    f"to add and remove certificates (granted: {', '.join(roles) or 'none'})",
                )
            if reads_log and roles is not None and AUDIT_LOG_ROLE not in roles:
                return PreflightResult(
                    Readiness.BLOCKED,
                    f"keyshift's identity in tenant {tenant} lacks the Graph application "
                    f"permission {AUDIT_LOG_ROLE}, needed to read the sign-in log for the "
                    f"policy's residual_use (granted: {', '.join(roles)})",
                )
            app = await self._application(graph)
        except TransientError as exc:
            return PreflightResult(Readiness.BLOCKED, str(exc), transient=True)
        except KeyshiftError as exc:
            return PreflightResult(Readiness.BLOCKED, str(exc))
        found = (
            f"application {app.display_name} ({app.app_id}) holds "
            f"{len(app.key_credentials)} certificate(s)"
        )
        how = (
            "certificates are added with addKey, proven with the current version's key: the "
            "first rotation needs `method: patch`"
            if self.config.method == "add_key"
            else "certificates are added by updating keyCredentials, keeping the others"
        )
        if roles is None:
            return PreflightResult(
                Readiness.MANUAL_REVIEW,
                f"{found}; the token's roles claim is not readable, so the permission to "
                f"change the application is unproven; {how}",
            )
        held = [r for r in roles if r in WRITE_ROLES]
        return PreflightResult(
            Readiness.READY,
            f"signed in to tenant {tenant}; granted {', '.join(held)}; {found}; {how}",
        )
