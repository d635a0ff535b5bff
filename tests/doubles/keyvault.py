"""A local HTTPS double of the Azure Key Vault secrets and certificates REST APIs, driven
through the real `azure-keyvault-secrets` and `azure-keyvault-certificates` SDKs and
azure-identity tokens issued by the Graph double.

Documented behaviours it follows (Microsoft Learn):

- Set Secret (https://learn.microsoft.com/rest/api/keyvault/secrets/set-secret/set-secret):
  `PUT /secrets/{name}?api-version=...` with `value`, `contentType`,
  `attributes{enabled, nbf, exp}` and `tags`. Every PUT creates a new version; the
  answer is the secret bundle: `value`, `id` = `{vault}/secrets/{name}/{version}`,
  `contentType`, `tags`, `attributes` with Unix-second `created` and `updated` and a
  `recoveryLevel`.
- Get Secret (https://learn.microsoft.com/rest/api/keyvault/secrets/get-secret/get-secret):
  `GET /secrets/{name}/{version}`; an empty version (the SDK sends `/secrets/{name}/`)
  means the latest. A missing secret is 404 `SecretNotFound`; a disabled version is
  refused with 403 `Forbidden` ("Operation get is not allowed on a disabled secret",
  inner code `SecretDisabled`).
- Update Secret (https://learn.microsoft.com/rest/api/keyvault/secrets/update-secret/update-secret):
  `PATCH /secrets/{name}/{version}` changes `contentType`, `attributes` and `tags`
  (given tags replace the old ones), never the value; the answer carries no value.
- Get Secret Versions (https://learn.microsoft.com/rest/api/keyvault/secrets/get-secret-versions/get-secret-versions):
  `GET /secrets/{name}/versions?maxresults=1..25`, items without values, paged with
  `nextLink` (a full URL to follow as is). The service does not promise creation
  order; this double lists versions by id, so clients cannot rely on the order.
- Object names (https://learn.microsoft.com/azure/key-vault/general/about-keys-secrets-certificates):
  1-127 characters of `0-9`, `a-z`, `A-Z` and `-`; otherwise 400 `BadParameter`.
- Authentication (https://learn.microsoft.com/azure/key-vault/general/authentication,
  https://learn.microsoft.com/azure/key-vault/general/rest-error-codes): a request
  without a bearer token, or with a token for another audience, is answered 401 with
  `WWW-Authenticate: Bearer authorization="{authority}/{tenant}",
  resource="https://vault.azure.net"`. The SDK sends its first request without token
  and body, takes a token for `https://vault.azure.net/.default` and re-sends.
  The SDK checks that the challenge's resource is a parent domain of the vault's host
  (https://aka.ms/azsdk/blog/vault-uri); this double lives on 127.0.0.1, so clients
  of it are built with `verify_challenge_resource=False`, the SDK's documented switch
  for vaults reached through another host name. The double itself still sends the
  real resource, and tokens must carry `aud` `https://vault.azure.net`.
- Authorization (https://learn.microsoft.com/azure/key-vault/general/assign-access-policy,
  https://learn.microsoft.com/azure/key-vault/general/rbac-guide): secrets `get`,
  `set` and `list` per principal (the token's `appid`). A missing permission is 403
  `Forbidden` with inner code `ForbiddenByPolicy` (access policies: "... does not
  have secrets get permission on key vault ...") or `ForbiddenByRbac` (RBAC: "Caller
  is not authorized to perform action on resource ... Action:
  'Microsoft.KeyVault/vaults/secrets/getSecret/action'").
- Throttling (https://learn.microsoft.com/azure/key-vault/general/overview-throttling):
  429 Too Many Requests, with a `Retry-After` header in seconds.
- Import Certificate (https://learn.microsoft.com/rest/api/keyvault/certificates/import-certificate/import-certificate):
  `POST /certificates/{name}/import` with `value` (base64 of a PFX, or of / or plain a
  PEM text holding the private key and the certificates), `pwd` (the PFX password),
  `policy` (`secret_props.contentType` `application/x-pkcs12` (the default) or
  `application/x-pem-file`, `key_props.exportable`), `attributes` and `tags`. Each
  import is a new version; a value that does not parse as the content type, or holds
  no private key, is 400 `BadParameter`. The answer is the certificate bundle: `id`
  `{vault}/certificates/{name}/{version}`, `kid` (`/keys/...`), `sid`
  (`/secrets/...`), `x5t` (base64url SHA-1 thumbprint of the leaf), `cer` (base64 DER
  of the leaf), `attributes` (Unix-second `created`, `updated`, `nbf`, `exp` from the
  leaf), `policy` and `tags`.
- Get Certificate (https://learn.microsoft.com/rest/api/keyvault/certificates/get-certificate/get-certificate):
  `GET /certificates/{name}/{version}`, empty version for the latest; 404
  `CertificateNotFound` when missing. A disabled version is still answered, with
  `attributes.enabled` false (a certificate is public; it is its secret that refuses).
- Update Certificate (https://learn.microsoft.com/rest/api/keyvault/certificates/update-certificate/update-certificate):
  `PATCH /certificates/{name}/{version}` changes `attributes` and `tags`.
- Certificate permissions: certificates `get`, `import`, `update` (RBAC actions
  `certificates/read`, `certificates/import/action`, `certificates/update/action`), refused
  as for secrets ("... does not have certificates import permission ...").

Not covered: the key and secret Key Vault creates beside each imported certificate (the
double keeps the imported chain on the version, as `chain`, instead), issuance through
a CA, policies beyond the content type and exportability, and deleted-certificate recovery.

Fault switches: `fail_next(n, status, ...)` (429, 500, 403, ...) and `hang_next(n)`
(no answer until the client gives up). `requests` records method, path, the tags a
write carried, whether the request was authorized and the status answered; never a
header, a token or a value.
"""

from __future__ import annotations

import base64
import binascii
import itertools
import json
import re
import secrets
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, TypeVar
from urllib.parse import parse_qs, urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.serialization import pkcs12

from tests.doubles.graph import GraphDouble
from tests.doubles.tls import TlsFiles, TlsServer

VAULT_RESOURCE = "https://vault.azure.net"
VAULT_SCOPE = f"{VAULT_RESOURCE}/.default"
ALL_PERMISSIONS = frozenset(
    {"get", "set", "list", "certificates/get", "certificates/import", "certificates/update"}
)
_PEM_KEY = re.compile(
    r"-----BEGIN ([A-Z ]*)PRIVATE KEY-----.+?-----END \1PRIVATE KEY-----", re.DOTALL
)
PKCS12 = "application/x-pkcs12"
PEM = "application/x-pem-file"
MAX_RESULTS = 25
_NAME = re.compile(r"^[0-9a-zA-Z-]{1,127}$")
_PATH = re.compile(r"^/(secrets|certificates)/([^/]+)(?:/([^/]*))?/?$")
_RBAC_ACTION = {
    "get": "Microsoft.KeyVault/vaults/secrets/getSecret/action",
    "set": "Microsoft.KeyVault/vaults/secrets/setSecret/action",
    "list": "Microsoft.KeyVault/vaults/secrets/readMetadata/action",
    "certificates/get": "Microsoft.KeyVault/vaults/certificates/read",
    "certificates/import": "Microsoft.KeyVault/vaults/certificates/import/action",
    "certificates/update": "Microsoft.KeyVault/vaults/certificates/update/action",
}
_SEQUENCE = itertools.count()
"""Shared by every double in the process, so tests can order requests across vaults."""

Answer = tuple[int, dict[str, str], bytes]


@dataclass(frozen=True)
class LoggedRequest:
    """One request the vault received: no headers, no token, no value."""

    seq: int
    method: str
    path: str
    tags: dict[str, str] | None
    """The tags a PUT or PATCH carried (None for reads and for writes without tags)."""
    authorized: bool
    """Whether it carried a valid token for the vault (False for the SDK's first try)."""
    status: int


@dataclass
class StoredVersion:
    version: str
    value: str
    content_type: str | None
    tags: dict[str, str]
    enabled: bool
    not_before: int | None
    expires: int | None
    created: int
    updated: int


@dataclass
class StoredCertificate:
    version: str
    certificates: list[x509.Certificate]
    """The leaf first, then the chain, as imported."""
    content_type: str
    exportable: bool
    key_type: str | None
    tags: dict[str, str]
    enabled: bool
    created: int
    updated: int

    @property
    def thumbprint(self) -> str:
        """The leaf's SHA-1 thumbprint in hex, as Key Vault's `x5t` holds it."""
        return self.certificates[0].fingerprint(hashes.SHA1()).hex()  # noqa: S303

    @property
    def chain(self) -> list[x509.Certificate]:
        return self.certificates[1:]


@dataclass
class _Fault:
    status: int | None
    """None: hang instead of answering."""
    retry_after: int | None = None
    methods: frozenset[str] | None = None


@dataclass
class _Paging:
    name: str
    offset: int
    size: int


@dataclass
class VaultError(Exception):
    status: int
    code: str
    message: str
    inner: str | None = None
    headers: dict[str, str] = field(default_factory=dict)


class KeyVaultDouble:
    """Key Vault secrets over TLS on 127.0.0.1; tokens are checked with `tokens`.

    Use as a context manager. `vault_url` is what `SecretClient` takes. `permissions`
    maps a principal (client id) to its secrets permissions; keyshift's client from
    the Graph double starts with get, set and list.
    """

    def __init__(
        self,
        tls: TlsFiles,
        tokens: GraphDouble,
        *,
        name: str = "kv-primary",
        permission_model: Literal["access_policy", "rbac"] = "access_policy",
    ) -> None:
        self.tls = tls
        self.tokens = tokens
        self.name = name
        self.permission_model = permission_model
        self.secrets: dict[str, list[StoredVersion]] = {}
        self.certificates: dict[str, list[StoredCertificate]] = {}
        self.permissions: dict[str, set[str]] = {tokens.client_id: set(ALL_PERMISSIONS)}
        self.requests: list[LoggedRequest] = []
        self._faults: list[_Fault] = []
        self._pages: dict[str, _Paging] = {}
        self._lock = threading.Lock()
        self._release = threading.Event()
        self._http = TlsServer(tls, "Key Vault")

    # --- lifecycle ---------------------------------------------------------------------

    def __enter__(self) -> KeyVaultDouble:
        self._http.start(self._answer)
        return self

    def __exit__(self, *exc: object) -> None:
        self._release.set()  # let hanging handlers go
        self._http.stop()

    @property
    def port(self) -> int:
        return self._http.port

    def _answer(
        self, method: str, path: str, headers: dict[str, str], body: bytes
    ) -> tuple[int, dict[str, str], bytes] | None:
        status, extra, payload = self.handle(method, path, headers, body)
        # A hang that was released: drop the connection without an answer.
        return None if status == 0 else (status, extra, payload)

    @property
    def vault_url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    # --- test controls -------------------------------------------------------------------

    def fail_next(
        self,
        n: int,
        status: int,
        *,
        retry_after: int | None = None,
        methods: tuple[str, ...] | None = None,
    ) -> None:
        """Answer the next `n` authorized requests (of `methods`, if given) with `status`
        and, unless None, a `Retry-After` header."""
        fault = _Fault(status, retry_after, frozenset(methods) if methods else None)
        with self._lock:
            self._faults.extend([fault] * n)

    def hang_next(self, n: int = 1) -> None:
        """Do not answer the next `n` authorized requests until the double stops."""
        with self._lock:
            self._faults.extend([_Fault(None)] * n)

    def revoke(self, principal: str, *permissions: str) -> None:
        with self._lock:
            self.permissions.setdefault(principal, set()).difference_update(permissions)

    def put(self, name: str, value: str, **tags: str) -> StoredVersion:
        """Write a version directly, as another writer would."""
        with self._lock:
            return self._new_version(name, value, None, dict(tags), True, None, None)

    def versions(self, name: str) -> list[StoredVersion]:
        """The versions of `name`, oldest first."""
        with self._lock:
            return list(self.secrets.get(name, []))

    def certificate_versions(self, name: str) -> list[StoredCertificate]:
        """The versions of certificate `name`, oldest first."""
        with self._lock:
            return list(self.certificates.get(name, []))

    def current_certificate(self, name: str) -> StoredCertificate | None:
        found = self.certificate_versions(name)
        return found[-1] if found else None

    def latest(self, name: str) -> StoredVersion | None:
        found = self.versions(name)
        return found[-1] if found else None

    def logged(self, method: str | None = None, *, authorized: bool = True) -> list[LoggedRequest]:
        """Requests that carried a valid token (or all, with authorized=False)."""
        with self._lock:
            return [
                r
                for r in self.requests
                if (method is None or r.method == method) and (r.authorized or not authorized)
            ]

    # --- the service -------------------------------------------------------------------

    def handle(self, method: str, raw_path: str, headers: dict[str, str], body: bytes) -> Answer:
        parts = urlsplit(raw_path)
        query = parse_qs(parts.query, keep_blank_values=True)
        tags = _tags_of(body) if method in ("PUT", "PATCH", "POST") else None
        principal: str | None = None
        try:
            if not query.get("api-version"):
                raise VaultError(400, "BadParameter", "The api-version parameter is missing.")
            principal = self._principal(headers)
            fault = self._next_fault(method)
            if fault is not None:
                if fault.status is None:
                    self._log(method, parts.path, tags, True, 0)
                    self._release.wait(timeout=60)
                    return 0, {}, b""
                raise _fault_error(fault)
            status, extra, payload = self._route(method, parts.path, query, principal, body)
        except VaultError as exc:
            status, extra, payload = _json(exc.status, _error_body(exc), exc.headers)
        self._log(method, parts.path, tags, principal is not None, status)
        return status, extra, payload

    def _log(
        self, method: str, path: str, tags: dict[str, str] | None, authorized: bool, status: int
    ) -> None:
        with self._lock:
            self.requests.append(
                LoggedRequest(next(_SEQUENCE), method, path, tags, authorized, status)
            )

    def _next_fault(self, method: str) -> _Fault | None:
        with self._lock:
            for i, fault in enumerate(self._faults):
                if fault.methods is None or method in fault.methods:
                    return self._faults.pop(i)
        return None

    def _challenge(self) -> dict[str, str]:
        authority = f"{self.tokens.authority}/{self.tokens.tenant_id}"
        return {
            "WWW-Authenticate": f'Bearer authorization="{authority}", resource="{VAULT_RESOURCE}"'
        }

    def _principal(self, headers: dict[str, str]) -> str:
        """The client id of a valid token for the vault, else the 401 challenge."""
        authorization = headers.get("authorization")
        if not authorization:
            raise VaultError(
                401,
                "Unauthorized",
                "AKV10000: Request is missing a Bearer or PoP token.",
                headers=self._challenge(),
            )
        claims = self.tokens.token_claims(authorization)
        if claims is None:
            raise VaultError(
                401, "Unauthorized", "AKV10032: Invalid issuer.", headers=self._challenge()
            )
        if claims.get("aud") != VAULT_RESOURCE:
            raise VaultError(
                401,
                "Unauthorized",
                f"AKV10022: Invalid audience. Expected {VAULT_RESOURCE}, "
                f"found: {claims.get('aud')}.",
                headers=self._challenge(),
            )
        return str(claims["appid"])

    def _require(self, principal: str, permission: str) -> None:
        with self._lock:
            granted = permission in self.permissions.get(principal, set())
        if granted:
            return
        if self.permission_model == "rbac":
            raise VaultError(
                403,
                "Forbidden",
                "Caller is not authorized to perform action on resource.\r\nIf role "
                "assignments, deny assignments or role definitions were changed recently, "
                f"please observe propagation time.\r\nCaller: appid={principal}\r\n"
                f"Action: '{_RBAC_ACTION[permission]}'\r\n"
                f"Resource: '/subscriptions/0/resourcegroups/rg/providers/microsoft.keyvault/"
                f"vaults/{self.name}'",
                "ForbiddenByRbac",
            )
        kind, _, operation = permission.rpartition("/")
        raise VaultError(
            403,
            "Forbidden",
            f"The user, group or application 'appid={principal};iss=https://sts.windows.net/"
            f"{self.tokens.tenant_id}/' does not have {kind or 'secrets'} {operation} "
            "permission on key "
            f"vault '{self.name};location=westeurope'. For help resolving this issue, please "
            "see https://go.microsoft.com/fwlink/?linkid=2125287",
            "ForbiddenByPolicy",
        )

    def _route(
        self, method: str, path: str, query: dict[str, list[str]], principal: str, body: bytes
    ) -> Answer:
        found = _PATH.match(path)
        if not found:
            raise VaultError(404, "NotFound", "The requested resource was not found.")
        collection, name, rest = found.group(1), found.group(2), found.group(3) or ""
        if not _NAME.match(name):
            raise VaultError(
                400,
                "BadParameter",
                "The request URI contains an invalid name: "
                f"{name}. Follow this link for more information on Key Vault naming "
                "rules: https://aka.ms/KeyVaultNaming",
            )
        if collection == "certificates":
            return self._route_certificate(method, name, rest, principal, body)
        if method == "PUT" and rest == "":
            self._require(principal, "set")
            return self._set(name, _payload(body))
        if method == "GET" and rest == "versions":
            self._require(principal, "list")
            return self._versions(name, query)
        if method == "GET":
            self._require(principal, "get")
            stored = self._find(name, rest)
            if not stored.enabled:
                raise VaultError(
                    403,
                    "Forbidden",
                    "Operation get is not allowed on a disabled secret.",
                    "SecretDisabled",
                )
            return _json(200, self._bundle(name, stored, with_value=True))
        if method == "PATCH" and rest:
            self._require(principal, "set")
            return self._update(name, rest, _payload(body))
        raise VaultError(405, "MethodNotAllowed", "The requested method is not allowed.")

    # --- certificates ------------------------------------------------------------------

    def _route_certificate(
        self, method: str, name: str, rest: str, principal: str, body: bytes
    ) -> Answer:
        if method == "POST" and rest == "import":
            self._require(principal, "certificates/import")
            return self._import(name, _payload(body))
        if method == "GET":
            self._require(principal, "certificates/get")
            return _json(200, self._certificate_bundle(name, self._find_certificate(name, rest)))
        if method == "PATCH" and rest:
            self._require(principal, "certificates/update")
            stored = self._find_certificate(name, rest)
            payload = _payload(body)
            attributes = payload.get("attributes") or {}
            with self._lock:
                if "enabled" in attributes:
                    stored.enabled = bool(attributes["enabled"])
                if payload.get("tags") is not None:
                    stored.tags = {str(k): str(v) for k, v in payload["tags"].items()}
                stored.updated = int(time.time())
            return _json(200, self._certificate_bundle(name, stored))
        raise VaultError(405, "MethodNotAllowed", "The requested method is not allowed.")

    def _find_certificate(self, name: str, version: str) -> StoredCertificate:
        with self._lock:
            return _version_of(self.certificates.get(name, []), name, version, "certificate")

    def _import(self, name: str, payload: dict[str, Any]) -> Answer:
        value = payload.get("value")
        if not isinstance(value, str) or not value:
            raise VaultError(400, "BadParameter", "Property 'value' is required.")
        policy = payload.get("policy") or {}
        secret_props = policy.get("secret_props") or {}
        key_props = policy.get("key_props") or {}
        content_type = secret_props.get("contentType") or PKCS12
        tags = payload.get("tags") or {}
        attributes = payload.get("attributes") or {}
        if len(tags) > 15:
            raise VaultError(400, "BadParameter", "The number of tags exceeds the maximum of 15.")
        password = payload.get("pwd")
        if content_type == PEM:
            certificates = _pem_certificates(value)
        elif content_type == PKCS12:
            certificates = _pfx_certificates(value, password)
        else:
            raise VaultError(
                400, "BadParameter", f"The content type '{content_type}' is not supported."
            )
        now = int(time.time())
        stored = StoredCertificate(
            version=uuid.uuid4().hex,
            certificates=certificates,
            content_type=content_type,
            exportable=key_props.get("exportable", True) is not False,
            key_type=key_props.get("kty"),
            tags={str(k): str(v) for k, v in tags.items()},
            enabled=attributes.get("enabled", True) is not False,
            created=now,
            updated=now,
        )
        with self._lock:
            self.certificates.setdefault(name, []).append(stored)
        return _json(200, self._certificate_bundle(name, stored))

    def _certificate_bundle(self, name: str, stored: StoredCertificate) -> dict[str, Any]:
        leaf = stored.certificates[0]
        der = leaf.public_bytes(serialization.Encoding.DER)
        sha1 = leaf.fingerprint(hashes.SHA1())  # noqa: S303 - Key Vault's x5t is SHA-1
        attributes = {
            "enabled": stored.enabled,
            "nbf": int(leaf.not_valid_before_utc.timestamp()),
            "exp": int(leaf.not_valid_after_utc.timestamp()),
            "created": stored.created,
            "updated": stored.updated,
            "recoveryLevel": "Recoverable+Purgeable",
            "recoverableDays": 90,
        }
        base = f"{self.vault_url}/%s/{name}/{stored.version}"
        bundle: dict[str, Any] = {
            "id": base % "certificates",
            "kid": base % "keys",
            "sid": base % "secrets",
            "x5t": base64.urlsafe_b64encode(sha1).decode().rstrip("="),
            "cer": base64.b64encode(der).decode(),
            "attributes": attributes,
            "policy": {
                "id": f"{self.vault_url}/certificates/{name}/policy",
                "key_props": {
                    "exportable": stored.exportable,
                    "kty": stored.key_type,
                    "reuse_key": False,
                },
                "secret_props": {"contentType": stored.content_type},
                "x509_props": {"subject": leaf.subject.rfc4514_string()},
                "issuer": {"name": "Unknown"},
                "attributes": {"enabled": True, "created": stored.created},
            },
        }
        if stored.tags:
            bundle["tags"] = dict(stored.tags)
        return bundle

    def _find(self, name: str, version: str) -> StoredVersion:
        with self._lock:
            return _version_of(self.secrets.get(name, []), name, version, "secret")

    def _set(self, name: str, payload: dict[str, Any]) -> Answer:
        value = payload.get("value")
        if not isinstance(value, str):
            raise VaultError(400, "BadParameter", "Property 'value' is required.")
        attributes = payload.get("attributes") or {}
        tags = payload.get("tags") or {}
        if not isinstance(attributes, dict) or not isinstance(tags, dict):
            raise VaultError(400, "BadParameter", "The request body is malformed.")
        if len(tags) > 15:
            raise VaultError(400, "BadParameter", "The number of tags exceeds the maximum of 15.")
        with self._lock:
            stored = self._new_version(
                name,
                value,
                payload.get("contentType"),
                {str(k): str(v) for k, v in tags.items()},
                attributes.get("enabled", True) is not False,
                attributes.get("nbf"),
                attributes.get("exp"),
            )
        return _json(200, self._bundle(name, stored, with_value=True))

    def _new_version(
        self,
        name: str,
        value: str,
        content_type: str | None,
        tags: dict[str, str],
        enabled: bool,
        not_before: int | None,
        expires: int | None,
    ) -> StoredVersion:
        now = int(time.time())
        stored = StoredVersion(
            version=uuid.uuid4().hex,
            value=value,
            content_type=content_type,
            tags=tags,
            enabled=enabled,
            not_before=not_before,
            expires=expires,
            created=now,
            updated=now,
        )
        self.secrets.setdefault(name, []).append(stored)
        return stored

    def _update(self, name: str, version: str, payload: dict[str, Any]) -> Answer:
        stored = self._find(name, version)
        attributes = payload.get("attributes") or {}
        with self._lock:
            if "enabled" in attributes:
                stored.enabled = bool(attributes["enabled"])
            if "exp" in attributes:
                stored.expires = attributes["exp"]
            if "nbf" in attributes:
                stored.not_before = attributes["nbf"]
            if "contentType" in payload:
                stored.content_type = payload["contentType"]
            if payload.get("tags") is not None:
                stored.tags = {str(k): str(v) for k, v in payload["tags"].items()}
            stored.updated = int(time.time())
        return _json(200, self._bundle(name, stored, with_value=False))

    def _versions(self, name: str, query: dict[str, list[str]]) -> Answer:
        token = query.get("$skiptoken", [""])[0]
        if token:
            with self._lock:
                paging = self._pages.get(token)
            if paging is None or paging.name != name:
                raise VaultError(400, "BadParameter", "The skip token is invalid.")
            offset, size = paging.offset, paging.size
        else:
            offset = 0
            try:
                size = int(query.get("maxresults", [str(MAX_RESULTS)])[0])
            except ValueError:
                raise VaultError(400, "BadParameter", "maxresults is invalid.") from None
            if not 1 <= size <= MAX_RESULTS:
                raise VaultError(400, "BadParameter", "maxresults must be between 1 and 25.")
        ordered = sorted(self.versions(name), key=lambda v: v.version)
        page = ordered[offset : offset + size]
        answer: dict[str, Any] = {
            "value": [self._bundle(name, v, with_value=False) for v in page],
            "nextLink": None,
        }
        if offset + size < len(ordered):
            skip = secrets.token_urlsafe(16)
            with self._lock:
                self._pages[skip] = _Paging(name, offset + size, size)
            api_version = query["api-version"][0]
            answer["nextLink"] = (
                f"{self.vault_url}/secrets/{name}/versions?api-version={api_version}"
                f"&$skiptoken={skip}&maxresults={size}"
            )
        return _json(200, answer)

    def _bundle(self, name: str, stored: StoredVersion, *, with_value: bool) -> dict[str, Any]:
        attributes: dict[str, Any] = {
            "enabled": stored.enabled,
            "created": stored.created,
            "updated": stored.updated,
            "recoveryLevel": "Recoverable+Purgeable",
            "recoverableDays": 90,
        }
        if stored.not_before is not None:
            attributes["nbf"] = stored.not_before
        if stored.expires is not None:
            attributes["exp"] = stored.expires
        bundle: dict[str, Any] = {
            "id": f"{self.vault_url}/secrets/{name}/{stored.version}",
            "attributes": attributes,
        }
        if with_value:
            bundle["value"] = stored.value
        if stored.content_type is not None:
            bundle["contentType"] = stored.content_type
        if stored.tags:
            bundle["tags"] = dict(stored.tags)
        return bundle


def _payload(body: bytes) -> dict[str, Any]:
    try:
        payload = json.loads(body or b"{}")
    except ValueError:
        raise VaultError(400, "BadParameter", "The request body is not valid JSON.") from None
    if not isinstance(payload, dict):
        raise VaultError(400, "BadParameter", "The request body is malformed.")
    return payload


def _bad_certificate(kind: str) -> VaultError:
    return VaultError(
        400,
        "BadParameter",
        f"The specified {kind} X.509 certificate content is in an unexpected format. Please "
        f"check if certificate is in valid {kind} format.",
    )


def _pem_certificates(value: str) -> list[x509.Certificate]:
    """The certificates of a PEM import (base64 of the PEM text, or the text itself),
    which must also hold a private key."""
    text = value
    if "-----BEGIN" not in value:
        try:
            text = base64.b64decode(value, validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            raise _bad_certificate("PEM") from None
    key = _PEM_KEY.search(text)
    if key is None:
        raise VaultError(
            400,
            "BadParameter",
            "Private key is not specified in the specified X.509 PEM certificate content. "
            "Please specify private key in the X.509 PEM certificate content.",
        )
    try:
        serialization.load_pem_private_key(key.group(0).encode(), password=None)
        certificates = x509.load_pem_x509_certificates(text.encode())
    except ValueError:
        raise _bad_certificate("PEM") from None
    return certificates


def _pfx_certificates(value: str, password: object) -> list[x509.Certificate]:
    try:
        data = base64.b64decode(value, validate=True)
        key, leaf, chain = pkcs12.load_key_and_certificates(
            data, str(password).encode() if password else None
        )
    except (binascii.Error, ValueError):
        raise _bad_certificate("PKCS#12") from None
    if key is None or leaf is None:
        raise VaultError(400, "BadParameter", "The PKCS#12 content holds no private key.")
    return [leaf, *chain]


def _tags_of(body: bytes) -> dict[str, str] | None:
    """The tags of a write, for the log; the value is never read here."""
    try:
        payload = json.loads(body or b"{}")
    except ValueError:
        return None
    tags = payload.get("tags") if isinstance(payload, dict) else None
    return {str(k): str(v) for k, v in tags.items()} if isinstance(tags, dict) else None


def _fault_error(fault: _Fault) -> VaultError:
    headers = {} if fault.retry_after is None else {"Retry-After": str(fault.retry_after)}
    if fault.status == 429:
        return VaultError(
            429,
            "Throttled",
            "Request was not processed because too many requests were received. "
            "Reason: A generic throttling rule was applied.",
            headers=headers,
        )
    if fault.status == 403:
        return VaultError(
            403,
            "Forbidden",
            "Operation is not allowed by vault policy.",
            "ForbiddenByPolicy",
            headers,
        )
    status = fault.status or 500
    return VaultError(status, "InternalServerError", "The service is unavailable.", None, headers)


def _error_body(exc: VaultError) -> dict[str, Any]:
    error: dict[str, Any] = {"code": exc.code, "message": exc.message}
    if exc.inner:
        error["innererror"] = {"code": exc.inner}
    return {"error": error}


class _Versioned(Protocol):
    version: str


_V = TypeVar("_V", bound=_Versioned)


def _version_of(stored: list[_V], name: str, version: str, kind: str) -> _V:
    """`version` of the object `name` (its latest for ""), or Key Vault's 404 for a
    `kind` (secret, certificate) it does not hold."""
    if version == "" and stored:
        return stored[-1]
    for candidate in stored:
        if candidate.version == version:
            return candidate
    shown = f"{name}/{version}" if version else name
    raise VaultError(
        404,
        f"{kind.capitalize()}NotFound",
        f"A {kind} with (name/id) {shown} was not found in this key vault. If you recently "
        f"deleted this {kind} you may be able to recover it using the correct recovery "
        "command. For help resolving this issue, please see "
        "https://go.microsoft.com/fwlink/?linkid=2125182",
    )


def _json(status: int, body: object, headers: dict[str, str] | None = None) -> Answer:
    return (
        status,
        {"Content-Type": "application/json; charset=utf-8", **(headers or {})},
        json.dumps(body).encode(),
    )
