"""trigger events: the events inbound triggers took (de-duplication by event id, the
rate limit), and on each rotation the trigger and event that asked for it

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-08
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "trigger_events",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("trigger", sa.String(128), nullable=False),
        sa.Column("event_id", sa.String(200), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("outcome", sa.String(16), nullable=False),
        sa.Column("rotations", sa.JSON(), nullable=False),
        sa.UniqueConstraint("trigger", "event_id"),
    )
    op.create_index("ix_trigger_events_received", "trigger_events", ["trigger", "received_at"])
    with op.batch_alter_table("rotations") as batch:
        batch.add_column(sa.Column("event_trigger", sa.String(128), nullable=True))
        batch.add_column(sa.Column("event_id", sa.String(200), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("rotations") as batch:
        batch.drop_column("event_id")
        batch.drop_column("event_trigger")
    op.drop_index("ix_trigger_events_received", "trigger_events")
    op.drop_table("trigger_events")
