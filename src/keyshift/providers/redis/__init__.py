"""`redis`: passwords of Redis 6+ ACL users, set through an admin connection.

Two strategies:

- `dual_password` (default): one ACL user holds several passwords at once. A rotation
  adds the new one (`ACL SETUSER user on #<sha256>`) and the old one stays valid;
  revocation removes the old one by its hash (`!<sha256>`). Consumers switch without
  a window, and the user's permissions are never touched.
- `alternating_users`: two ACL users with the same permissions take turns. A rotation
  gives the user not in use exactly one fresh password (`on resetpass #<sha256>`);
  revocation disables the old user (`off resetpass`), never deleting it.

keyshift never creates ACL users or changes their permissions: the users must exist.
The admin connection sends only SHA-256 hashes of passwords (`#` adds, `!` removes),
so no plain password crosses it, reaches `MONITOR` or is echoed in an ACL error.

Idempotency. Redis keeps only password hashes, so a value cannot be read back after
a crash. Next to each rotated user keyshift keeps the hash `keyshift:marker:<user>`
(`marker`, `sha256`, `created_at`, `expires_at`) in the admin connection's database,
written in the same `MULTI` as the `ACL SETUSER` that adds the password. A repeated
`create` for the same rotation (after a crash lost the value it returned) finds the
marker, removes that orphaned password by its hash and adds a fresh one in one
`ACL SETUSER`: the version (`provider_ref`) is the same, its value is new, and exactly
one password of the rotation remains at the issuer.

Limits an operator should know:

- Removing a password or disabling a user does not drop connections that already
  authenticated with it; residual use shows in `CLIENT LIST` (`user=`). With
  `alternating_users` each version is its own user, so `residual_use` counts those
  clients and a `residual_use` policy holds revocation until they are gone. With
  `dual_password` the old and new passwords belong to one user and `CLIENT LIST` cannot
  tell which password a client used, so that strategy reports no residual use.
- Passwords a `dual_password` user held before keyshift managed it stay valid unless
  `adopt_existing: retire`: then the first rotation takes them over as its old version,
  listing their hashes in the marker key (field `adopted`, on the server that already
  lists them in `ACL GETUSER`; nothing hash-derived leaves Redis), and removes exactly
  those (`!<sha256>`) when its grace period ends.
- ACL changes live in memory until saved: `persist_acl` saves them to the ACL file or
  redis.conf. ACL rules are not replicated: list the replicas (every node consumers
  authenticate to) under the integration's `nodes`, and keyshift applies, saves and
  proves each change on every node. A node that cannot be reached fails the step (the
  proof before cutover waits for it within `propagation_timeout`) and is named.

The package: `config` (which users, which strategy), `nodes` (the admin connections to
every node, error translation), `acl` (ACL users and the marker key on one node),
`adopt` (`adopt_existing: retire`) and `provider` (`RedisProvider`, the contract).
"""

from __future__ import annotations

from keyshift.providers.redis.acl import ADOPTED_FIELD, MARKER_KEY_PREFIX, password_hash
from keyshift.providers.redis.config import RedisConfig
from keyshift.providers.redis.nodes import RedisIntegration
from keyshift.providers.redis.provider import MAX_ADDRESSES, RedisProvider

__all__ = [
    "ADOPTED_FIELD",
    "MARKER_KEY_PREFIX",
    "MAX_ADDRESSES",
    "RedisConfig",
    "RedisIntegration",
    "RedisProvider",
    "password_hash",
]
