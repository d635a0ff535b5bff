"""discovered_apps, discovered_credentials (entra sync) and alerts (raised once each)

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-24
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "discovered_apps",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("integration", sa.String(128), nullable=False),
        sa.Column("object_id", sa.String(64), nullable=False),
        sa.Column("app_id", sa.String(64), nullable=False),
        sa.Column("display_name", sa.String(256), nullable=False),
        sa.Column("owners", sa.JSON(), nullable=False),
        sa.Column("first_seen", sa.DateTime(timezone=True), nullable=False),
        sa.Column("changed_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("removed_at", sa.DateTime(timezone=True), nullable=True),
        sa.UniqueConstraint("integration", "object_id"),
    )
    op.create_table(
        "discovered_credentials",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("app_row_id", sa.String(36), sa.ForeignKey("discovered_apps.id"), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("key_id", sa.String(64), nullable=False),
        sa.Column("display_name", sa.String(256), nullable=True),
        sa.Column("hint", sa.String(16), nullable=True),
        sa.Column("thumbprint", sa.String(128), nullable=True),
        sa.Column("start_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("end_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("first_seen", sa.DateTime(timezone=True), nullable=False),
        sa.Column("removed_at", sa.DateTime(timezone=True), nullable=True),
        sa.UniqueConstraint("app_row_id", "kind", "key_id"),
    )
    op.create_index("ix_discovered_credentials_end", "discovered_credentials", ["end_at"])
    op.create_table(
        "alerts",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("subject", sa.String(200), nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("threshold", sa.String(32), nullable=False),
        sa.Column("raised_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("detail", sa.JSON(), nullable=False),
        sa.Column("delivered", sa.Boolean(), nullable=False),
        sa.UniqueConstraint("subject", "kind", "threshold"),
    )


def downgrade() -> None:
    op.drop_table("alerts")
    op.drop_index("ix_discovered_credentials_end", "discovered_credentials")
    op.drop_table("discovered_credentials")
    op.drop_table("discovered_apps")
