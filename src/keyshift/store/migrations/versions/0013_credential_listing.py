"""credential listing: the parts of each credential a status page reads, as columns
(policy and provider as JSON text, the latest finished rotation and when one last
completed), an index of rotations by credential, and one of versions by status that
holds all a listing reads of a current version (SQLite then leaves the sealed values
unread)

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-07
"""

from __future__ import annotations

import json

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("credentials") as batch:
        batch.add_column(sa.Column("policy_json", sa.Text(), nullable=False, server_default="{}"))
        batch.add_column(sa.Column("provider_json", sa.Text(), nullable=False, server_default="{}"))
        batch.add_column(sa.Column("last_rotation_id", sa.String(36), nullable=True))
        batch.add_column(sa.Column("last_rotation_state", sa.String(32), nullable=True))
        batch.add_column(sa.Column("last_rotated_at", sa.DateTime(timezone=True), nullable=True))
    op.create_index("ix_rotations_credential", "rotations", ["credential_id", "requested_at"])
    op.create_index(
        "ix_versions_status",
        "versions",
        ["status", "credential_id", "id", "fingerprint", "expires_at"],
    )
    bind = op.get_bind()
    credentials = sa.table(
        "credentials",
        sa.column("id", sa.String()),
        sa.column("spec", sa.JSON()),
        sa.column("policy_json", sa.Text()),
        sa.column("provider_json", sa.Text()),
    )
    # The JSON text as `keyshift.service.estate` writes it (copied: a migration must not
    # change when the code does).
    for cred_id, spec in bind.execute(sa.select(credentials.c.id, credentials.c.spec)).all():
        bind.execute(
            credentials.update()
            .where(credentials.c.id == cred_id)
            .values(
                policy_json=json.dumps(spec["policy"], sort_keys=True),
                provider_json=json.dumps(spec["credential"]["provider"], sort_keys=True),
            )
        )
    # The latest requested of each credential's finished rotations (of two requested at
    # one instant, the one that finished last), and when the latest completed one finished.
    op.execute(
        "UPDATE credentials SET last_rotation_id = (SELECT r.id FROM rotations r"
        " WHERE r.credential_id = credentials.id AND r.finished_at IS NOT NULL"
        " ORDER BY r.requested_at DESC, r.finished_at DESC, r.id DESC LIMIT 1)"
    )
    op.execute(
        "UPDATE credentials SET"
        " last_rotation_state = (SELECT r.state FROM rotations r"
        " WHERE r.id = credentials.last_rotation_id),"
        " last_rotated_at = (SELECT max(r.finished_at) FROM rotations r"
        " WHERE r.credential_id = credentials.id AND r.state = 'completed')"
    )


def downgrade() -> None:
    op.drop_index("ix_versions_status", "versions")
    op.drop_index("ix_rotations_credential", "rotations")
    # Not in batch mode: on SQLite that copies the table, and other tables' foreign keys
    # refuse the drop of the old one. Both SQLite (3.35 and later) and PostgreSQL drop a
    # column in place.
    for column in (
        "last_rotated_at",
        "last_rotation_state",
        "last_rotation_id",
        "provider_json",
        "policy_json",
    ):
        op.execute(sa.text(f"ALTER TABLE credentials DROP COLUMN {column}"))
