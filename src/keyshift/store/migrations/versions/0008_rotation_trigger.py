"""rotations.trigger: how each rotation was asked for (schedule, cli, api, web)

Rows made before it are read from their reason: `scheduled` was the worker's, `api` the
API's default; the rest came from the CLI.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("rotations") as batch:
        batch.add_column(sa.Column("trigger", sa.String(16), nullable=False, server_default="cli"))
    op.execute("UPDATE rotations SET trigger = 'schedule' WHERE reason = 'scheduled'")
    op.execute("UPDATE rotations SET trigger = 'api' WHERE reason = 'api'")


def downgrade() -> None:
    with op.batch_alter_table("rotations") as batch:
        batch.drop_column("trigger")
