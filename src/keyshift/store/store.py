"""`Store`: the database, the keyring and the fingerprinter behind one handle.

Everything above the store layer reaches secret values only through
`seal` / `reveal`, so a value is encrypted the moment it is stored and
decrypted only where it is delivered.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, text
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from keyshift.domain.clock import utcnow
from keyshift.domain.secret import Secret
from keyshift.errors import Conflict, NotFound, StoreError
from keyshift.store import audit
from keyshift.store.crypto import (
    Fingerprinter,
    Keyring,
    Sealed,
    load_fingerprinter,
    load_keyring,
)
from keyshift.store.db import database_url, keyshift_home, migrate, open_engine, session_factory
from keyshift.store.models import AuditEntry, VersionRow


class Store:
    """The opened store. Use `transaction()` for every unit of work."""

    def __init__(
        self,
        engine: Engine,
        keyring: Keyring,
        fingerprinter: Fingerprinter,
        home: Path,
        env: Mapping[str, str],
    ) -> None:
        self.engine = engine
        self.keyring = keyring
        self.fingerprinter = fingerprinter
        self.home = home
        self.env = env
        self._sessions: sessionmaker[Session] = session_factory(engine)

    @classmethod
    def open(cls, env: Mapping[str, str]) -> Store:
        """Open (and migrate) the store named by the environment; create keys on first run."""
        home = keyshift_home(env)
        engine = open_engine(database_url(env, home))
        try:
            migrate(engine)
            return cls(engine, load_keyring(home, env), load_fingerprinter(home, env), home, env)
        except BaseException:
            engine.dispose()  # a refused key must not leave a pooled connection behind
            raise

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        """One committed unit of work; rolled back on any exception."""
        with self._sessions.begin() as session:
            yield session

    def close(self) -> None:
        self.engine.dispose()

    @contextmanager
    def single_worker(self) -> Iterator[None]:
        """Hold the embedded store's worker lock while the block runs. SQLite stays
        single-worker: a second `keyshift worker` on the same file is refused (Conflict,
        naming the holder's pid). Several workers share a PostgreSQL store: there each
        claims rows with `FOR UPDATE SKIP LOCKED`, so nothing is held here."""
        database = self.engine.url.database
        if self.engine.dialect.name != "sqlite" or database in (None, "", ":memory:"):
            yield
            return
        path = Path(f"{database}.worker.lock")
        with path.open("a+", encoding="utf-8") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                lock.seek(0)
                holder = lock.read().strip() or "unknown"
                raise Conflict(
                    f"another keyshift worker (pid {holder}) runs on the SQLite store "
                    f"{database}; SQLite stays single-worker: point KEYSHIFT_DATABASE_URL "
                    "at PostgreSQL to run several workers"
                ) from None
            try:
                lock.truncate(0)
                lock.write(str(os.getpid()))
                lock.flush()
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def ping(self) -> None:
        """Run one trivial query; raises StoreError when the database cannot be reached."""
        try:
            with self.engine.connect() as connection:
                connection.execute(text("SELECT 1"))
        except SQLAlchemyError as exc:
            raise StoreError(f"the store cannot be reached: {exc.__class__.__name__}") from exc

    # Secret values -----------------------------------------------------------------

    def fingerprint(self, value: Secret) -> str:
        return self.fingerprinter.fingerprint(value)

    def seal_into(self, row: VersionRow, value: Secret) -> None:
        """Encrypt `value` into the row, bound to its credential and version ids."""
        sealed = self.keyring.seal(value, row.credential_id, row.id)
        row.ciphertext = sealed.ciphertext
        row.wrapped_key = sealed.wrapped_key
        row.master_key_id = sealed.master_key_id

    def reveal(self, row: VersionRow) -> Secret:
        """Decrypt a version's value. Raises DecryptionError if the row was tampered with."""
        if row.ciphertext is None or row.wrapped_key is None or row.master_key_id is None:
            raise NotFound(f"version {row.id} holds no value (revoked {row.revoked_at})")
        sealed = Sealed(row.ciphertext, row.wrapped_key, row.master_key_id)
        return self.keyring.open(sealed, row.credential_id, row.id)

    # Audit --------------------------------------------------------------------------

    def audit_entries(self, *, page: int = 1000) -> Iterator[dict[str, Any]]:
        """Every audit entry, in order, as `audit.export` gives them, read `page` entries
        per short transaction: memory stays flat however long the trail is, and no
        transaction stays open while a slow reader (a SIEM, an HTTP client) consumes it.
        The trail is append-only, so paging by `seq` misses and repeats nothing."""
        after = 0
        while True:
            with self.transaction() as s:
                batch = list(audit.export(s, after_seq=after, limit=page))
            yield from batch
            if len(batch) < page:
                return
            after = batch[-1]["seq"]

    def audit(
        self,
        session: Session,
        *,
        actor: str,
        action: str,
        subject: str,
        details: Mapping[str, Any],
    ) -> AuditEntry:
        return audit.append(
            session, actor=actor, action=action, subject=subject, details=details, at=utcnow()
        )
