"""A throw-away store for a bench: SQLite in a temporary KEYSHIFT_HOME, or the
PostgreSQL database `--postgres` names; closed and its home removed afterwards."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from keyshift.store.store import Store


@contextmanager
def scratch_store(postgres: str | None = None) -> Iterator[Store]:
    home = Path(tempfile.mkdtemp(prefix="keyshift-bench-"))
    env = {"KEYSHIFT_HOME": str(home)}
    if postgres:
        env["KEYSHIFT_DATABASE_URL"] = postgres
    store = Store.open(env)
    try:
        yield store
    finally:
        store.close()
        shutil.rmtree(home, ignore_errors=True)
