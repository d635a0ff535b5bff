"""approval_requests and approval_decisions (supervised mode)

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-24
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "approval_requests",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("rotation_id", sa.String(36), sa.ForeignKey("rotations.id"), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("plan_hash", sa.String(64), nullable=False),
        sa.Column("requested_by", sa.String(200), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("summary", sa.JSON(), nullable=False),
        sa.Column("decided_at", sa.DateTime(timezone=True), nullable=True),
    )
    op.create_index("ix_approval_requests_rotation", "approval_requests", ["rotation_id"])
    op.create_table(
        "approval_decisions",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column(
            "request_id", sa.String(36), sa.ForeignKey("approval_requests.id"), nullable=False
        ),
        sa.Column("approver", sa.String(200), nullable=False),
        sa.Column("approved", sa.Boolean(), nullable=False),
        sa.Column("comment", sa.Text(), nullable=False),
        sa.Column("plan_hash", sa.String(64), nullable=False),
        sa.Column("decided_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("request_id", "approver"),
    )


def downgrade() -> None:
    op.drop_table("approval_decisions")
    op.drop_index("ix_approval_requests_rotation", "approval_requests")
    op.drop_table("approval_requests")
