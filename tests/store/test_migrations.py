"""Migrations on a store with history: a column a migration backfills holds what the
engine itself would have written there."""

from __future__ import annotations

import asyncio
import json
from datetime import timedelta
from pathlib import Path
from typing import Any

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext
from sqlalchemy import inspect, select, text

from keyshift.domain.states import RotationState
from keyshift.service import rotations
from keyshift.service.estate import apply_estate, load_estate, parse_estate
from keyshift.store.db import HEAD_REVISION, MIGRATIONS
from keyshift.store.models import Base, CredentialRow
from keyshift.store.store import Store
from keyshift.testing import FakeClock
from tests.helpers import write_estate


def _migrate(store: Store, revision: str, *, down: bool = False) -> None:
    with store.engine.begin() as connection:
        config = Config()
        config.set_main_option("script_location", str(MIGRATIONS))
        config.attributes["connection"] = connection
        (command.downgrade if down else command.upgrade)(config, revision)


def _listing(store: Store) -> list[dict[str, Any]]:
    with store.transaction() as s:
        rows = s.execute(select(CredentialRow).order_by(CredentialRow.name)).scalars()
        return [
            {
                "name": r.name,
                "policy": json.loads(r.policy_json),
                "provider": json.loads(r.provider_json),
                "last": (r.last_rotation_id, r.last_rotation_state, r.last_rotated_at),
            }
            for r in rows
        ]


def test_0013_backfills_the_listing_columns_as_the_engine_keeps_them(
    store: Store, tmp_path: Path
) -> None:
    clock = FakeClock()
    apply_estate(
        store,
        load_estate(write_estate(tmp_path, policy={"grace_period": "0s"})),
        actor="test",
    )
    done, state = asyncio.run(
        rotations.rotate(store, "api-key", actor="test", context=clock.context())
    )
    assert state == RotationState.COMPLETED
    clock.advance(timedelta(hours=1))
    blocked = {
        "type": "file",
        "order": 10,
        "on_failure": "abort",
        "config": {"path": str(tmp_path / "gone" / "a.json"), "key": "k", "file_format": "json"},
    }
    apply_estate(
        store,
        load_estate(write_estate(tmp_path, actions=[blocked], policy={"grace_period": "0s"})),
        actor="test",
    )
    failed, state = asyncio.run(
        rotations.rotate(store, "api-key", actor="test", context=clock.context())
    )
    assert state == RotationState.FAILED
    kept = _listing(store)
    [row] = kept
    assert row["last"][:2] == (failed, "failed")
    assert row["provider"]["type"] == "random"
    assert "grace_period" in row["policy"]

    _migrate(store, "0012", down=True)
    _migrate(store, "head")
    assert _listing(store) == kept
    assert done != failed


ENTRA_ESTATE = {
    "integrations": [
        {
            "name": "contoso",
            "type": "entra",
            "tenant_id": "00000000-0000-0000-0000-000000000001",
            "client_id": "00000000-0000-0000-0000-000000000002",
            "auth": {"method": "client_secret", "secret_from": "env:ENTRA_ADMIN_SECRET"},
        }
    ],
    "credentials": [
        {
            "name": "billing-entra",
            # No `integration`: the estate's only entra integration is meant.
            "provider": {"type": "entra_client_secret", "app_id": "11111111-2222-3333-4444-5555"},
        },
        {"name": "api-key", "provider": {"type": "random", "length": 24}, "actions": []},
    ],
}


def _issuers(store: Store) -> dict[str, tuple[str | None, str | None]]:
    with store.transaction() as s:
        query = select(
            CredentialRow.name, CredentialRow.issuer_integration, CredentialRow.issuer_app_id
        )
        return {name: (integration, app) for name, integration, app in s.execute(query)}


def test_0015_backfills_each_credentials_issuer_application_as_apply_writes_it(
    store: Store,
) -> None:
    apply_estate(store, parse_estate(ENTRA_ESTATE), actor="test")
    kept = _issuers(store)
    assert kept == {
        "billing-entra": ("contoso", "11111111-2222-3333-4444-5555"),
        "api-key": (None, None),
    }

    _migrate(store, "0014", down=True)
    _migrate(store, "head")

    assert _issuers(store) == kept


def _migrated_from_nothing(store: Store) -> None:
    """Empty the store, then run every migration from the first (a new store is built
    from the models instead, so this is the path a store made by an older keyshift took)."""
    with store.engine.begin() as connection:
        Base.metadata.drop_all(connection)
        connection.execute(text("DROP TABLE alembic_version"))
    _migrate(store, "head")


def _schema(store: Store) -> dict[str, Any]:
    """Every table's columns (name, nullability, server default; the type on PostgreSQL),
    primary key, indexes, unique constraints and foreign keys, as the database reports."""
    with store.engine.connect() as connection:
        found = inspect(connection)
        typed = connection.dialect.name != "sqlite"
        return {
            table: {
                "columns": sorted(
                    (
                        c["name"],
                        str(c["type"]) if typed else "",
                        c["nullable"],
                        str(c.get("default")),
                    )
                    for c in found.get_columns(table)
                ),
                "primary key": found.get_pk_constraint(table)["constrained_columns"],
                "indexes": sorted(
                    (i["name"], tuple(i["column_names"]), bool(i["unique"]))
                    for i in found.get_indexes(table)
                ),
                "unique": sorted(
                    tuple(u["column_names"]) for u in found.get_unique_constraints(table)
                ),
                "foreign keys": sorted(
                    (
                        tuple(f["constrained_columns"]),
                        f["referred_table"],
                        tuple(f["referred_columns"]),
                    )
                    for f in found.get_foreign_keys(table)
                ),
            }
            for table in sorted(found.get_table_names())
        }


def test_a_new_store_is_built_at_head_with_the_schema_the_migrations_build(
    store: Store,
) -> None:
    """A new store's schema comes from the models in one step; it must be the one that
    running every migration gives, or stores made before and after would differ."""
    with store.engine.connect() as connection:
        revisions = connection.execute(text("SELECT version_num FROM alembic_version"))
        assert list(revisions.scalars()) == [HEAD_REVISION]
    built = _schema(store)
    _migrated_from_nothing(store)
    assert _schema(store) == built
    assert {"credentials", "alembic_version"} <= built.keys()


def test_the_migrations_build_the_schema_the_models_declare(store: Store) -> None:
    """Tables, columns and indexes: what the models say is what the migrations made
    (column types on PostgreSQL only: SQLite keeps any value in any column, and a
    migration that only widens a VARCHAR leaves its table alone)."""
    _migrated_from_nothing(store)
    with store.engine.connect() as connection:
        compare_type = connection.dialect.name != "sqlite"
        context = MigrationContext.configure(connection, opts={"compare_type": compare_type})
        differences = compare_metadata(context, Base.metadata)
    assert differences == []
