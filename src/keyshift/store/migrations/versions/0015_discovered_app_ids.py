"""issuer applications: each credential's Entra ID application (integration and appId)
as columns, indexed, and discovered applications indexed by appId, so that the
overview and `entra summary` count the discovered inventory in SQL, joined to the
credentials that manage it, instead of reading it row by row

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-07
"""

from __future__ import annotations

import json

import sqlalchemy as sa
from alembic import op

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("credentials") as batch:
        batch.add_column(sa.Column("issuer_integration", sa.String(128), nullable=True))
        batch.add_column(sa.Column("issuer_app_id", sa.String(64), nullable=True))
    op.create_index("ix_credentials_issuer_app", "credentials", ["issuer_app_id"])
    op.create_index("ix_discovered_apps_app_id", "discovered_apps", ["app_id"])
    bind = op.get_bind()
    credentials = sa.table(
        "credentials",
        sa.column("id", sa.String()),
        sa.column("provider_json", sa.Text()),
        sa.column("issuer_integration", sa.String()),
        sa.column("issuer_app_id", sa.String()),
    )
    # As `keyshift.service.estate.issuer_app` decides (copied: a migration must not
    # change when the code does).
    rows = bind.execute(sa.select(credentials.c.id, credentials.c.provider_json)).all()
    for cred_id, text in rows:
        provider = json.loads(text or "{}")
        if provider.get("app_id"):
            bind.execute(
                credentials.update()
                .where(credentials.c.id == cred_id)
                .values(
                    issuer_integration=str(provider.get("integration") or ""),
                    issuer_app_id=str(provider["app_id"]),
                )
            )


def downgrade() -> None:
    op.drop_index("ix_discovered_apps_app_id", table_name="discovered_apps")
    op.drop_index("ix_credentials_issuer_app", table_name="credentials")
    # In place, as 0013's downgrade explains.
    for column in ("issuer_app_id", "issuer_integration"):
        op.drop_column("credentials", column)
