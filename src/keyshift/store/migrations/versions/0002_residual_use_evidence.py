"""rotations.residual: residual-use evidence gathered during the grace period

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-24
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("rotations") as batch:
        batch.add_column(sa.Column("residual", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("rotations") as batch:
        batch.drop_column("residual")
