"""rotations: an index by credential that covers the status views' reads

The latest rotation of each credential and its latest completed one are read for every
status page; rotation rows are wide (each holds its plan), so without an index holding
these columns every read scans the whole table.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-07
"""

from __future__ import annotations

from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

COLUMNS = ["credential_id", "requested_at", "finished_at", "id", "state"]


def upgrade() -> None:
    op.create_index("ix_rotations_credential", "rotations", COLUMNS)


def downgrade() -> None:
    op.drop_index("ix_rotations_credential", table_name="rotations")
