"""A token signer and a JWKS verifier as consumers of a `jwks_signing_key` run them, for
tests that prove a rollover loses no token.

- `FileSigner` signs each token with whatever key its signer file holds now (the JSON
  file a `file` action writes with `keys: {key: private_key, kid: kid, alg: alg}`).
- `CachingVerifier` verifies tokens against a JWKS document (a file, or any fetch: a
  ConfigMap key, a URL) the way a library does
  (jwks-rsa, PyJWT's `PyJWKClient`, Spring's `NimbusJwtDecoder`): it serves the document
  it fetched for `cache_ttl`, and on a token whose kid it does not know it fetches again
  at once, but at most once per `refetch_after` (a verifier that refetched on every
  unknown kid could be flooded with made-up kids). Its time is the test's clock.

Neither is part of keyshift's path.
"""

from __future__ import annotations

import base64
import json
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from joserfc import jwt
from joserfc.errors import JoseError, SecurityWarning
from joserfc.jwk import ECKey, KeySet, OKPKey, RSAKey

__all__ = ["ALGORITHMS", "CachingVerifier", "FileSigner", "Verdict"]

ALGORITHMS = ["RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "EdDSA", "Ed25519"]
"""Every algorithm a `jwks_signing_key` version may sign with."""


def _quietly(call: Callable[[], Any]) -> Any:
    with warnings.catch_warnings():
        # joserfc warns that RFC 9864 deprecates the name EdDSA; verifiers still use it.
        warnings.simplefilter("ignore", SecurityWarning)
        return call()


@dataclass
class FileSigner:
    """Signs tokens with the key in a signer file, read again for every token."""

    path: Path
    now: Callable[[], datetime]
    lifetime: timedelta

    def sign(self, subject: str) -> tuple[str, datetime]:
        """A token for `subject` and the time it expires."""
        held = json.loads(self.path.read_text(encoding="utf-8"))
        alg = str(held["alg"])
        pem = held["key"].encode("utf-8")
        key: RSAKey | ECKey | OKPKey
        if alg[:2] in ("RS", "PS"):
            key = RSAKey.import_key(pem)
        elif alg.startswith("ES"):
            key = ECKey.import_key(pem)
        else:
            key = OKPKey.import_key(pem)
        issued = self.now()
        expires = issued + self.lifetime
        claims = {"sub": subject, "iat": int(issued.timestamp()), "exp": int(expires.timestamp())}
        header = {"alg": held["alg"], "kid": held["kid"]}
        token: str = _quietly(lambda: jwt.encode(header, claims, key, algorithms=ALGORITHMS))
        return token, expires


@dataclass(frozen=True)
class Verdict:
    ok: bool
    kid: str
    why: str = ""


@dataclass
class CachingVerifier:
    """Verifies tokens with the keys of a JWKS document it caches (see the module
    docstring); `path` is the file, or a function that fetches the document's text."""

    path: Path | Callable[[], str]
    now: Callable[[], datetime]
    cache_ttl: timedelta
    refetch_after: timedelta = timedelta(minutes=5)
    fetches: int = 0
    _keys: KeySet | None = None
    _fetched_at: datetime | None = None
    _kids: set[str] = field(default_factory=set)

    def _fetch(self) -> None:
        source = self.path
        text = source.read_text(encoding="utf-8") if isinstance(source, Path) else source()
        document = json.loads(text)
        self._keys = _quietly(lambda: KeySet.import_key_set(document))
        self._kids = {str(k.get("kid")) for k in document["keys"]}
        self._fetched_at = self.now()
        self.fetches += 1

    def verify(self, token: str) -> Verdict:
        """Whether `token` verifies now (signature, and `exp` not passed)."""
        header = json.loads(_b64(token.split(".", maxsplit=1)[0]))
        kid = str(header.get("kid"))
        now = self.now()
        stale = self._fetched_at is None or now - self._fetched_at >= self.cache_ttl
        unknown = kid not in self._kids
        may_refetch = self._fetched_at is None or now - self._fetched_at >= self.refetch_after
        if stale or (unknown and may_refetch):
            self._fetch()
        if kid not in self._kids or self._keys is None:
            return Verdict(False, kid, "unknown kid")
        keys = self._keys
        try:
            decoded = _quietly(lambda: jwt.decode(token, keys, algorithms=ALGORITHMS))
        except JoseError as exc:
            return Verdict(False, kid, exc.error)
        if int(decoded.claims["exp"]) < int(now.timestamp()):
            return Verdict(False, kid, "expired")
        return Verdict(True, kid)


def _b64(part: str) -> bytes:
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))
