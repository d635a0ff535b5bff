"""`acme`: TLS certificates from an ACME certificate authority (RFC 8555).

Any ACME CA works (Let's Encrypt, a company's own step-ca or Boulder, pebble in tests):
keyshift is the ACME client, through certbot's maintained `acme` library and `josepy`
(no hand-written JWS). Each new version is one order: the account is registered or
found again, the order is placed for `domains`, every authorization is proven by the
configured challenge, the order is finalized with a CSR of a fresh private key, and the
certificate with its chain is downloaded.

A version is then exactly what an `x509_ca` version is (`x509_ca.certificate_version`):
the private key is the sealed value; the certificate, its chain (the CA certificates the
server sent after the leaf), subject, SANs, issuer, serial, `not_after` and thumbprint
are public attributes, with the ACME directory, account and order URLs; the fingerprint
is `sha256:<thumbprint>`; `expires_at` is the `not_after`, and `renew_before` becomes the
credential's `rotate_before_expiry`, so renewal is due at `not_after - renew_before`.

Challenges:
- `http-01`: keyshift writes the key authorization to
  `<webroot>/.well-known/acme-challenge/<token>`, which the domain's web server must
  serve on port 80, and removes it when the order is done, however it ended.
- `dns-01`: keyshift runs the `hook` program (argv, no shell) as
  `<hook...> present <record name> <value>` to publish the TXT record, waits
  `propagation_wait`, and runs `<hook...> cleanup <record name> <value>` when the order is
  done. The hook speaks to the user's DNS; keyshift knows nothing of it.

The account: with `account_key_from` (an RSA or EC P-256/P-384 PEM key, read through a
reference each time), the same ACME account is used for every order: found again by its
key. Without it, each order registers a new account with a key made for that order and
forgotten after it (nothing to store, nothing to leak; a CA that limits new accounts per
address allows far more than one renewal in weeks needs).

Overlap and revocation: certificates are independent, so old and new are valid at once
(dual) until the old one's `not_after`. Retiring the old version erases its key in
keyshift; the certificate is revoked at the CA (`revokeCert`, reason `superseded`, signed
with the certificate's own key) only with `revoke_on_retire: true`, since a revoked
certificate a consumer still presents fails at once.

The acme library does blocking I/O: every call runs in a worker thread
(`asyncio.to_thread`) so the event loop goes on. A `badNonce` answer is retried at once, up
to `BAD_NONCE_TRIES` times for each request; a `rateLimited` one is waited out for its
`Retry-After`, up to `RATE_LIMIT_WAIT` in all, and then fails as a TransientError whose
`retry_after` the engine honours.

External account binding (a CA that registers accounts only for its customers) is
`eab_kid` with `eab_hmac_key_from`. Out of scope: tls-alpn-01, ACME Renewal Information.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Annotated, Any, ClassVar, Final, Literal, TypeVar
from urllib.parse import urlsplit

import requests
import structlog
from acme import errors, messages
from acme.client import ClientNetwork, ClientV2
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID
from josepy.errors import DeserializationError
from josepy.jwa import ES256, ES384, ES512, RS256, JWASignature
from josepy.jwk import JWK, JWKEC, JWKRSA
from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from keyshift import __version__
from keyshift.context import PluginContext
from keyshift.domain.durations import Duration, format_duration
from keyshift.errors import KeyshiftError, PermanentError, TransientError
from keyshift.process import inherited_env, run_program
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
from keyshift.providers.keys import (
    KeyType,
    Renewal,
    load_private_key,
    new_private_key,
    signature_hash,
)
from keyshift.providers.x509_ca import (
    cert_pem,
    certificate_version,
    imported_certificate_version,
    load_certs,
    san_names,
    valid_names,
    verify_certificate,
)
from keyshift.sources import SecretRef

log = structlog.get_logger("keyshift.providers.acme")

T = TypeVar("T")

BAD_NONCE_TRIES: Final = 10
"""Attempts of one request that the server answers `badNonce` (RFC 8555 §6.5: retry with
a fresh nonce). A CA rejecting one good nonce in five fails a request ten times in a row
about once in ten million requests."""
RATE_LIMIT_WAIT: Final = timedelta(minutes=2)
"""How long, in all, one order waits out `rateLimited` answers before giving up."""
DEFAULT_RETRY_AFTER: Final = 10.0
"""Seconds to wait after a `rateLimited` answer that names no Retry-After."""
SUPERSEDED: Final = 4
"""The CRL reason code (RFC 5280) of a certificate replaced by a newer one."""
USER_AGENT: Final = f"keyshift/{__version__} acme-python"
TRANSIENT_PROBLEMS: Final = frozenset({"badNonce", "serverInternal", "rateLimited"})
"""ACME problem types (`urn:ietf:params:acme:error:...`) that a later try may not get."""

_EMAIL = re.compile(r"[^@\s:,]+@[^@\s:,]+\.[^@\s:,]+")


class Http01(BaseModel):
    """Prove each domain by serving a file from the domain's web server (port 80)."""

    model_config = ConfigDict(use_attribute_docstrings=True, extra="forbid", frozen=True)

    type: Literal["http-01"]
    """`http-01`: the CA fetches `http://<domain>/.well-known/acme-challenge/<token>`."""
    webroot: Path
    """The directory the web server of every domain serves at `http://<domain>/`:
    keyshift writes `.well-known/acme-challenge/<token>` under it during an order and
    removes it afterwards."""

    @field_validator("webroot")
    @classmethod
    def _absolute(cls, webroot: Path) -> Path:
        if not webroot.is_absolute():
            raise ValueError("webroot must be an absolute path")
        return webroot

    def describe(self) -> str:
        return f"http-01 (webroot {self.webroot})"


class Dns01(BaseModel):
    """Prove each domain with a TXT record that a program of the user publishes."""

    model_config = ConfigDict(use_attribute_docstrings=True, extra="forbid", frozen=True)

    type: Literal["dns-01"]
    """`dns-01`: the CA looks up the TXT record `_acme-challenge.<domain>`."""
    hook: list[str] = Field(min_length=1)
    """The program and its first arguments, run without a shell:
    `<hook...> present <record name> <value>` publishes the TXT record,
    `<hook...> cleanup <record name> <value>` removes it. Exit code 0 is success."""
    hook_timeout: Duration = timedelta(seconds=60)
    """The hook is killed, with its process group, after this long."""
    propagation_wait: Duration = timedelta(0)
    """How long to wait after the last `present` before asking the CA to look, for DNS
    that serves a new record only after a while (0s when the hook waits itself)."""
    env: dict[str, str] = {}
    """Extra, non-secret environment variables for the hook. It inherits only PATH,
    HOME, USER, LOGNAME, LANG, LC_ALL, TZ and TMPDIR from keyshift's environment, so it
    reads its DNS credentials from its own configuration."""

    @field_validator("hook")
    @classmethod
    def _program_named(cls, hook: list[str]) -> list[str]:
        if not hook[0].strip():
            raise ValueError("hook[0] must name a program")
        return hook

    def describe(self) -> str:
        return f"dns-01 (hook {self.hook[0]})"


Challenge = Annotated[Http01 | Dns01, Field(discriminator="type")]


class AcmeConfig(Renewal):
    """A certificate for `domains` from the ACME CA whose directory is `directory_url`."""

    model_config = ConfigDict(use_attribute_docstrings=True, extra="forbid", frozen=True)

    directory_url: str
    """The CA's ACME directory, e.g. `https://acme-v02.api.letsencrypt.org/directory`."""
    challenge: Challenge
    """How each domain is proven: `http-01` with a `webroot`, or `dns-01` with a `hook`."""
    domains: list[str] = Field(min_length=1)
    """The names the certificate is for (its SANs); the first is also its CN. A wildcard
    (`*.example.com`) needs dns-01."""
    contact: list[str] = Field(default_factory=list)
    """Email addresses the CA may write to about the account (expiry, incidents)."""
    agree_to_terms: bool = False
    """Accept the CA's terms of service (its directory names them) when keyshift
    registers an account. A CA that has terms refuses to register without it."""
    account_key_from: SecretRef | None = None
    """The ACME account's key (unencrypted PEM, RSA or EC P-256/P-384): `env:NAME`,
    `file:/path` or `credential:NAME`; the same account is used for every order. Unset:
    each order registers an account with a key made for it and then forgotten."""
    eab_kid: str | None = None
    """External account binding: the key id the CA gave you, for a CA that registers
    accounts only for its customers (its directory says `externalAccountRequired`)."""
    eab_hmac_key_from: SecretRef | None = Field(default=None, validate_default=True)
    """External account binding: the HMAC key (base64url, as the CA gives it) that goes
    with `eab_kid`, through a reference. Read when an account is registered; never
    stored."""
    key_type: KeyType = "ec-p256"
    """The new key of each version: `rsa-2048`, `rsa-3072` or `ec-p256` (ACME CAs do not
    issue for Ed25519 keys)."""
    renew_before: Duration = timedelta(days=30)
    """Renewal is due this long before `not_after` (the CA chooses the validity): for this
    credential it takes the place of the policy's `rotate_before_expiry`."""
    ca_bundle: Path | None = None
    """A PEM file of the CA certificates that the ACME server's TLS certificate chains to,
    when it is not one the system trusts (a private CA, pebble)."""
    revoke_on_retire: bool = False
    """Also revoke the old certificate at the CA when keyshift retires it after grace.
    Off: the old certificate stays valid until its `not_after`, its key erased."""
    order_timeout: Duration = timedelta(minutes=2)
    """How long the CA may take to validate the challenges and issue the certificate."""

    @field_validator("directory_url")
    @classmethod
    def _https(cls, url: str) -> str:
        parts = urlsplit(url)
        if parts.scheme != "https" or not parts.hostname:
            raise ValueError("directory_url must be an https:// URL (the CA's ACME directory)")
        return url

    @field_validator("domains")
    @classmethod
    def _domains(cls, domains: list[str], info: ValidationInfo) -> list[str]:
        challenge = info.data.get("challenge")
        if isinstance(challenge, Http01):
            wild = [d for d in domains if d.startswith("*.")]
            if wild:
                raise ValueError(f"{wild[0]} is a wildcard, which needs dns-01")
        return valid_names(domains)

    @field_validator("contact")
    @classmethod
    def _emails(cls, contact: list[str]) -> list[str]:
        for address in contact:
            if not _EMAIL.fullmatch(address):
                raise ValueError(f"'{address}' is not an email address")
        return contact

    @field_validator("eab_hmac_key_from")
    @classmethod
    def _eab_pair(cls, ref: str | None, info: ValidationInfo) -> str | None:
        if (ref is None) != (info.data.get("eab_kid") is None):
            raise ValueError("eab_kid and eab_hmac_key_from go together: set both or neither")
        return ref

    @field_validator("key_type")
    @classmethod
    def _issuable(cls, key_type: str) -> str:
        if key_type == "ed25519":
            raise ValueError("ACME CAs do not issue for ed25519 keys: use ec-p256 or rsa-*")
        return key_type

    def san_entries(self) -> list[x509.GeneralName]:
        return san_names(self.domains)


@dataclass(frozen=True)
class _Account:
    client: ClientV2
    network: _Network
    key: JWK | None
    uri: str


class _Network(ClientNetwork):
    """The acme library's signed-request transport, holding against a flaky CA:
    `badNonce` retried up to `BAD_NONCE_TRIES` times (the library tries twice), the last
    Retry-After kept for the caller, TLS verified against `ca_bundle` when given."""

    def __init__(self, key: JWK, alg: JWASignature, ca_bundle: Path | None) -> None:
        super().__init__(key=key, alg=alg, user_agent=USER_AGENT)
        if ca_bundle is not None:
            # requests takes a CA bundle's path wherever it takes `verify`.
            self.verify_ssl = str(ca_bundle)  # type: ignore[assignment]
        self.retry_after: str | None = None

    def _send_request(self, method: str, url: str, *args: Any, **kwargs: Any) -> requests.Response:
        response = super()._send_request(method, url, *args, **kwargs)
        self.retry_after = response.headers.get("Retry-After")
        return response

    def post(self, *args: Any, **kwargs: Any) -> requests.Response:
        for attempt in range(1, BAD_NONCE_TRIES + 1):
            try:
                return self._post_once(*args, **kwargs)
            except messages.Error as error:
                # The server took a fresh nonce as stale: the next try fetches another.
                if error.code != "badNonce" or attempt == BAD_NONCE_TRIES:
                    raise
                log.debug("acme bad nonce, retrying", attempt=attempt)
        raise AssertionError("unreachable")  # pragma: no cover

    def close(self) -> None:
        self.session.close()


def _retry_after(header: str | None, now: datetime) -> float | None:
    """Seconds a Retry-After header asks for (delta-seconds or an HTTP date)."""
    if not header:
        return None
    if header.strip().isdigit():
        return float(header.strip())
    try:
        when = parsedate_to_datetime(header)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - now).total_seconds())


def _problem(error: messages.Error) -> str:
    """An ACME problem as one line: its type and the CA's detail (never a key)."""
    text = f"{error.code or error.typ}: {error.detail or error.title or 'no detail'}"
    subproblems = getattr(error, "subproblems", None) or ()
    for sub in subproblems:
        identifier = getattr(sub.identifier, "value", "") if sub.identifier else ""
        text += f"; {identifier}: {sub.detail or sub.typ}"
    return text


def _jwk(key: Any, where: str) -> tuple[JWK, JWASignature]:
    """The JWK and JWS algorithm of an account (or certificate) private key."""
    if isinstance(key, rsa.RSAPrivateKey):
        return JWKRSA(key=key), RS256
    if isinstance(key, ec.EllipticCurvePrivateKey):
        algorithms = {"secp256r1": ES256, "secp384r1": ES384, "secp521r1": ES512}
        if key.curve.name in algorithms:
            return JWKEC(key=key), algorithms[key.curve.name]
    raise PermanentError(f"{where}: an ACME key must be RSA or EC (P-256, P-384 or P-521)")


class AcmeProvider:
    """Orders certificates from an ACME CA; the CA is the issuer, keyshift the client."""

    kind: ClassVar[str] = "acme"
    Config: ClassVar[type[BaseModel]] = AcmeConfig
    capability_fields: ClassVar[tuple[str, ...]] = ()
    capabilities: ClassVar[frozenset[Capability]] = frozenset(
        {Capability.DUAL_ACTIVE, Capability.IMPORTS}
    )

    @classmethod
    def describe(cls, config: AcmeConfig, integrations: Mapping[str, BaseModel]) -> dict[str, str]:
        """Which CA, for which names, proven how (the account key by reference only)."""
        return {
            "issuer": f"ACME {config.directory_url}",
            "subject": f"CN={config.domains[0]}",
            "sans": ", ".join(config.domains),
            "key_type": config.key_type,
            "challenge": config.challenge.describe(),
            "account": config.account_key_from or "a new account per order",
        }

    @classmethod
    def rotate_before_expiry(cls, config: BaseModel) -> timedelta | None:
        """Renewal is due `renew_before` the certificate's `not_after` (as for `x509_ca`)."""
        return config.renew_before if isinstance(config, AcmeConfig) else None

    def __init__(self, config: AcmeConfig, context: PluginContext) -> None:
        self.config = config
        self.context = context

    # Talking to the CA -----------------------------------------------------------------

    @contextmanager
    def _translated(self, what: str) -> Iterator[None]:
        """The acme library's and requests' errors as keyshift's, naming the step and the
        CA's problem (which never holds a key), re-raised `from` the original."""
        host = urlsplit(self.config.directory_url).netloc
        try:
            yield
        except KeyshiftError:
            raise
        except messages.Error as exc:
            cls = TransientError if exc.code in TRANSIENT_PROBLEMS else PermanentError
            raise cls(f"{what}: the ACME server answered {_problem(exc)}") from exc
        except errors.ValidationError as exc:
            failures = []
            for authz in exc.failed_authzrs:
                name = authz.body.identifier.value
                for chall in authz.body.challenges:
                    if chall.error is not None:
                        failures.append(f"{name} ({chall.chall.typ}): {_problem(chall.error)}")
            raise PermanentError(
                f"{what}: the CA could not validate " + "; ".join(failures or ["a domain"])
            ) from exc
        except errors.IssuanceError as exc:
            raise PermanentError(f"{what}: the CA refused to issue: {_problem(exc.error)}") from exc
        except errors.TimeoutError as exc:
            raise TransientError(
                f"{what}: the order was not done within "
                f"{format_duration(self.config.order_timeout)} (order_timeout)"
            ) from exc
        except requests.exceptions.SSLError as exc:
            raise PermanentError(
                f"{what}: the TLS certificate of {host} is not trusted "
                "(provider.ca_bundle names the CAs to trust)"
            ) from exc
        except (requests.exceptions.ConnectionError, requests.exceptions.Timeout) as exc:
            raise TransientError(f"{what}: cannot reach the ACME server {host}") from exc
        except (errors.Error, DeserializationError, requests.RequestException) as exc:
            raise PermanentError(f"{what}: {type(exc).__name__} from {host}") from exc

    async def _call(self, what: str, network: _Network, fn: Callable[..., T], *args: Any) -> T:
        """One blocking call of the acme library in a worker thread. A `rateLimited` answer
        is waited out (its Retry-After) while the waits add up to at most
        `RATE_LIMIT_WAIT`; then it fails as a TransientError the engine retries later."""
        waited = 0.0
        while True:
            try:
                with self._translated(what):
                    return await asyncio.to_thread(fn, *args)
            except TransientError as exc:
                cause = exc.__cause__
                if not (isinstance(cause, messages.Error) and cause.code == "rateLimited"):
                    raise
                wait = _retry_after(network.retry_after, datetime.now(UTC))
                wait = DEFAULT_RETRY_AFTER if wait is None else wait
                if waited + wait > RATE_LIMIT_WAIT.total_seconds():
                    raise TransientError(
                        f"{what}: the ACME server is rate limiting keyshift "
                        f"({_problem(cause)}); retry after {round(wait)}s",
                        retry_after=wait,
                    ) from cause
                log.info("acme rate limited", step=what, wait_seconds=wait)
                await self.context.sleep(wait)
                waited += wait

    def _network(self, key: Any, where: str) -> _Network:
        jwk, alg = _jwk(key, where)
        if self.config.ca_bundle is not None and not self.config.ca_bundle.is_file():
            raise PermanentError(f"provider.ca_bundle: {self.config.ca_bundle} is not a file")
        return _Network(jwk, alg, self.config.ca_bundle)

    def _account_key(self) -> Any:
        """The configured account key, or a new one for this order."""
        if self.config.account_key_from is None:
            return ec.generate_private_key(ec.SECP256R1())
        text = self.context.secret("provider.account_key_from", self.config.account_key_from)
        key = load_private_key(text)
        if key is None:
            raise PermanentError(
                "provider.account_key_from: not an unencrypted PEM private key (RSA or EC)"
            )
        return key

    async def _directory(self, network: _Network) -> ClientV2:
        directory = await self._call(
            "reading the ACME directory",
            network,
            ClientV2.get_directory,
            self.config.directory_url,
            network,
        )
        return ClientV2(directory, network)

    async def _account(self) -> _Account:
        """The ACME account, registered when new and found again by its key otherwise."""
        network = self._network(self._account_key(), "provider.account_key_from")
        try:
            client = await self._directory(network)
            meta = client.directory.meta
            if meta.terms_of_service and not self.config.agree_to_terms:
                raise PermanentError(
                    f"provider.agree_to_terms: the CA asks to agree to its terms of service "
                    f"({meta.terms_of_service}) before it registers an account"
                )
            registration = messages.NewRegistration.from_data(
                email=",".join(self.config.contact) or None,
                terms_of_service_agreed=self.config.agree_to_terms or None,
                external_account_binding=self._binding(client, network),
            )
            try:
                regr = await self._call(
                    "registering the ACME account", network, client.new_account, registration
                )
            except PermanentError as exc:
                if not isinstance(exc.__cause__, errors.ConflictError):
                    raise
                # RFC 8555 §7.3.1: the key already has an account, at this URL.
                regr = messages.RegistrationResource(
                    uri=exc.__cause__.location, body=messages.Registration()
                )
                network.account = regr
        except BaseException:
            network.close()
            raise
        return _Account(client, network, network.key, regr.uri or "")

    def _binding(self, client: ClientV2, network: _Network) -> dict[str, Any] | None:
        """The external account binding of a new account (RFC 8555 §7.3.4): the account's
        public key signed with the CA's HMAC key; None when none is configured."""
        kid, ref = self.config.eab_kid, self.config.eab_hmac_key_from
        if kid is None or ref is None:
            if client.external_account_required():
                raise PermanentError(
                    "provider.eab_kid: the CA registers accounts only with an external "
                    "account binding (eab_kid and eab_hmac_key_from)"
                )
            return None
        hmac_key = self.context.secret("provider.eab_hmac_key_from", ref)
        if network.key is None:  # pragma: no cover (a _Network always has its key)
            raise TypeError("an account network without a key")
        try:
            binding: dict[str, Any] = messages.ExternalAccountBinding.from_data(
                account_public_key=network.key.public_key(),
                kid=kid,
                hmac_key=hmac_key.reveal(),
                directory=client.directory,
            )
        except (ValueError, TypeError, DeserializationError):
            # The decoder's message could quote the key: it is dropped.
            raise PermanentError("provider.eab_hmac_key_from: not a base64url HMAC key") from None
        return binding

    def _csr(self, key: Any) -> bytes:
        """A CSR for `domains`, signed by the new key; CN the first domain when it fits."""
        first = self.config.domains[0]
        subject = [x509.NameAttribute(NameOID.COMMON_NAME, first)] if len(first) <= 64 else []
        csr = (
            x509.CertificateSigningRequestBuilder()
            .subject_name(x509.Name(subject))
            .add_extension(x509.SubjectAlternativeName(self.config.san_entries()), critical=False)
            .sign(key, signature_hash(key))
        )
        return csr.public_bytes(serialization.Encoding.PEM)

    # Challenges ------------------------------------------------------------------------

    async def _present(self, domain: str, challb: Any, validation: str) -> None:
        challenge = self.config.challenge
        if isinstance(challenge, Http01):
            path = challenge.webroot / challb.chall.path.lstrip("/")
            try:
                await asyncio.to_thread(_write_public, path, validation)
            except OSError as exc:
                raise PermanentError(
                    f"provider.challenge.webroot: cannot write {path} "
                    f"({exc.strerror or type(exc).__name__})"
                ) from exc
        else:
            name = challb.chall.validation_domain_name(domain)
            await self._hook("present", name, validation)

    async def _clean(self, domain: str, challb: Any, validation: str) -> None:
        """Remove what `_present` left; a failure is logged (names only), not raised: the
        order's outcome stands, and a leftover answer proves nothing to anyone else."""
        challenge = self.config.challenge
        try:
            if isinstance(challenge, Http01):
                path = challenge.webroot / challb.chall.path.lstrip("/")
                await asyncio.to_thread(path.unlink, missing_ok=True)
            else:
                name = challb.chall.validation_domain_name(domain)
                await self._hook("cleanup", name, validation)
        except (OSError, KeyshiftError) as exc:
            log.warning("acme challenge cleanup failed", domain=domain, error=str(exc))

    async def _hook(self, action: str, name: str, value: str) -> None:
        challenge = self.config.challenge
        if not isinstance(challenge, Dns01):  # pragma: no cover (only dns-01 runs a hook)
            raise TypeError("a hook runs for dns-01 only")
        run = await run_program(
            [*challenge.hook, action, name, value],
            env={**inherited_env(self.context.env), **challenge.env},
            cwd=None,
            limit=challenge.hook_timeout,
        )
        if run.exit_code != 0:
            # Its output is not quoted: a DNS hook may print its own credentials.
            raise PermanentError(
                f"provider.challenge.hook: {challenge.hook[0]} {action} {name} failed ({run.how})"
            )

    async def _order(self, account: _Account, csr: bytes) -> tuple[str, str]:
        """Place the order, prove every pending authorization, finalize it and download
        the certificate: (full chain PEM, order URL). Every answer presented is removed
        however the order ends."""
        client, network = account.client, account.network
        kind = self.config.challenge.type
        order = await self._call("creating the order", network, client.new_order, csr)
        presented: list[tuple[str, Any, str]] = []
        answers: list[tuple[Any, Any]] = []
        try:
            for authz in order.authorizations:
                if authz.body.status == messages.STATUS_VALID:
                    continue  # the CA reused an authorization it validated before
                domain = authz.body.identifier.value
                challb = next((c for c in authz.body.challenges if c.chall.typ == kind), None)
                if challb is None:
                    offered = ", ".join(c.chall.typ for c in authz.body.challenges) or "none"
                    raise PermanentError(
                        f"provider.challenge: the CA offers no {kind} challenge for {domain} "
                        f"(it offers: {offered})"
                    )
                response, validation = challb.response_and_validation(account.key)
                presented.append((domain, challb, validation))
                await self._present(domain, challb, validation)
                answers.append((challb, response))
            challenge = self.config.challenge
            if isinstance(challenge, Dns01) and answers and challenge.propagation_wait:
                await self.context.sleep(challenge.propagation_wait.total_seconds())
            for challb, response in answers:
                await self._call(
                    "answering the challenge", network, client.answer_challenge, challb, response
                )
            deadline = datetime.now() + self.config.order_timeout  # the library's clock is naive
            done = await self._call(
                "finalizing the order", network, client.poll_and_finalize, order, deadline
            )
        finally:
            for domain, challb, validation in presented:
                await self._clean(domain, challb, validation)
        return done.fullchain_pem, order.uri or ""

    # The contract ----------------------------------------------------------------------

    async def preflight(self, request: base.PreflightRequest) -> PreflightResult:
        """Ready when the account key can be read, the challenge can be presented (the
        webroot is a writable directory; the hook program exists) and the CA's directory
        answers without asking for what keyshift cannot give. Changes nothing: no
        account is registered."""
        challenge = self.config.challenge
        if isinstance(challenge, Http01):
            webroot = challenge.webroot
            if not webroot.is_dir() or not os.access(webroot, os.W_OK | os.X_OK):
                return PreflightResult(
                    Readiness.BLOCKED,
                    f"provider.challenge.webroot: {webroot} is not a directory keyshift may write",
                )
        elif shutil.which(challenge.hook[0], path=self.context.env.get("PATH")) is None:
            return PreflightResult(
                Readiness.BLOCKED,
                f"provider.challenge.hook: {challenge.hook[0]} is not an executable program",
            )
        try:
            network = self._network(self._account_key(), "provider.account_key_from")
            try:
                client = await self._directory(network)
            finally:
                network.close()
        except TransientError as exc:
            return PreflightResult(Readiness.BLOCKED, str(exc), transient=True)
        except KeyshiftError as exc:
            return PreflightResult(Readiness.BLOCKED, str(exc))
        meta = client.directory.meta
        if meta.terms_of_service and not self.config.agree_to_terms:
            return PreflightResult(
                Readiness.BLOCKED,
                f"provider.agree_to_terms: the CA asks to agree to its terms of service "
                f"({meta.terms_of_service})",
            )
        if client.external_account_required() and self.config.eab_kid is None:
            return PreflightResult(
                Readiness.BLOCKED,
                "provider.eab_kid: the CA registers accounts only with an external account "
                "binding (eab_kid and eab_hmac_key_from)",
            )
        return PreflightResult(
            Readiness.READY,
            f"may order from {self.config.directory_url} by {challenge.describe()}",
        )

    async def create(self, request: base.CreateRequest) -> IssuedVersion:
        """Order a certificate for a fresh key and return it as a version.

        The CA issues the certificate before keyshift stores it: a crash in between
        leaves a certificate at the CA whose key nobody holds (harmless, and counted by
        the CA's rate limits). The engine looks for a stored version of this rotation
        before calling, so a resumed rotation never orders a second one once the first
        was stored."""
        key = new_private_key(self.config.key_type)
        csr = self._csr(key)
        account = await self._account()
        try:
            fullchain, order_uri = await self._order(account, csr)
        finally:
            account.network.close()
        certs = load_certs(fullchain)
        if not certs:
            raise PermanentError("the CA's answer to the order holds no PEM certificate")
        leaf, chain = certs[0], certs[1:]
        if leaf.public_key() != key.public_key():
            raise PermanentError("the CA issued a certificate for another key than the CSR's")
        due = leaf.not_valid_after_utc - self.config.renew_before
        if due <= self.context.now():
            raise PermanentError(
                f"provider.renew_before: the CA issued a certificate valid until "
                f"{leaf.not_valid_after_utc.isoformat()}, so renewal "
                f"{format_duration(self.config.renew_before)} before it is due at once; "
                "shorten renew_before"
            )
        return certificate_version(
            "acme",
            key,
            leaf,
            chain_pem="".join(cert_pem(c) for c in chain),
            sans=self.config.domains,
            key_type=self.config.key_type,
            extra={
                "acme_directory": self.config.directory_url,
                "acme_account": account.uri,
                "acme_order": order_uri,
            },
        )

    async def import_version(self, request: base.ImportRequest) -> IssuedVersion:
        """The certificate in use now (its key, the certificate and the CA's chain, PEM in
        any order), as the version `create` would have made of it; it has no order or
        account of keyshift's, so `revoke_on_retire` revokes it with its own key.
        PermanentError naming the value when the certificate does not belong to the key,
        is expired or comes without the chain `verify` checks it by. Calls nothing."""
        return imported_certificate_version(
            "acme",
            request.value,
            self.context.now(),
            chain_required=True,
            extra={"acme_directory": self.config.directory_url},
        )

    async def verify(self, request: base.VerifyRequest) -> VerifyResult:
        """The version's certificate was signed by the first certificate of its chain (the
        CA's issuing certificate), is valid now and holds the version key's public key.
        Changes nothing; the CA is not asked."""
        chain = load_certs(request.version.attributes.get("chain", ""))
        if not chain:
            return VerifyResult(ok=False, detail="the version holds no issuing CA certificate")
        return verify_certificate(request.version, chain[0], self.context.now())

    async def revoke(self, request: base.RevokeRequest) -> RevokeResult:
        """Retire the old certificate: keyshift erases its key (the engine does); with
        `revoke_on_retire` the CA revokes it too (reason superseded, the request signed
        with the certificate's own key, so no account is needed). Succeeds when the CA
        says it is already revoked."""
        attributes = request.version.attributes
        detail = {
            "issuer": f"ACME {self.config.directory_url}",
            "serial_number": str(attributes.get("serial_number", "")),
        }
        not_after = attributes.get("not_after", "unknown")
        if not self.config.revoke_on_retire:
            detail["revocation"] = (
                "recorded by keyshift only (revoke_on_retire is off): the certificate stays "
                f"valid until its not_after ({not_after})"
            )
            return RevokeResult(detail=detail)
        certs = load_certs(attributes.get("certificate", ""))
        key = load_private_key(request.version.value)
        if not certs or key is None:
            raise PermanentError(
                "cannot revoke at the CA: the version no longer holds its certificate and key"
            )
        network = self._network(key, "the version's key")
        try:
            client = await self._directory(network)
            with self._translated("revoking the certificate"):
                try:
                    await asyncio.to_thread(client.revoke, certs[0], SUPERSEDED)
                except messages.Error as exc:
                    if exc.code != "alreadyRevoked":
                        raise
                    detail["revocation"] = "already revoked at the CA"
                    return RevokeResult(already_gone=True, detail=detail)
        finally:
            network.close()
        detail["revocation"] = "revoked at the CA (reason superseded)"
        return RevokeResult(detail=detail)

    async def list_versions(self, request: base.ListRequest) -> list[VersionInfo]:
        """ACME lists no account's certificates: keyshift's store is the record."""
        return []

    async def aclose(self) -> None:
        return None


def _write_public(path: Path, text: str) -> None:
    """Write an http-01 answer (public: the CA fetches it over plain HTTP), readable by
    the web server."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
    path.write_text(text, encoding="ascii")
    path.chmod(0o644)
