"""freeze source and version provenance: where a freeze was declared (cli, api, estate)
and how keyshift came to hold a version (issued, adopted, imported)

Revision ID: 0011
Revises: 0009
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0009"
branch_labels = None
depends_on = None

ADOPTED_FINGERPRINT = "none: adopted, value never held"
"""`keyshift.engine.rows.ADOPTED_FINGERPRINT`, copied: a migration must not change when
the code does."""


def upgrade() -> None:
    with op.batch_alter_table("freezes") as batch:
        batch.add_column(sa.Column("source", sa.String(16), nullable=False, server_default="cli"))
    # Freezes so far were started by `keyshift freeze` on the store (actor `cli:...`) or
    # through the API (a principal's name).
    op.execute("UPDATE freezes SET source = 'api' WHERE created_by NOT LIKE 'cli:%'")
    with op.batch_alter_table("versions") as batch:
        batch.add_column(
            sa.Column("provenance", sa.String(16), nullable=False, server_default="issued")
        )
    versions = sa.table("versions", sa.column("fingerprint"), sa.column("provenance"))
    op.execute(
        versions.update()
        .where(versions.c.fingerprint == ADOPTED_FINGERPRINT)
        .values(provenance="adopted")
    )


def downgrade() -> None:
    with op.batch_alter_table("versions") as batch:
        batch.drop_column("provenance")
    with op.batch_alter_table("freezes") as batch:
        batch.drop_column("source")
