"""certificate fingerprints: a version's fingerprint may be a certificate's full SHA-256
thumbprint (`sha256:` and 64 hex digits, 71 characters), longer than the 64 the column
held for keyshift's HMAC fingerprints (`hmac-sha256:` and 32 hex digits)

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # SQLite does not enforce a VARCHAR's length, so only PostgreSQL needs the change
    # (a batch rebuild of `versions` on SQLite would change nothing it checks).
    if op.get_bind().dialect.name == "postgresql":
        op.alter_column("versions", "fingerprint", type_=sa.String(80), existing_type=sa.String(64))


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.alter_column("versions", "fingerprint", type_=sa.String(64), existing_type=sa.String(80))
