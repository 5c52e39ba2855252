"""Traffic management: canary / A-B routing endpoints and auto-deploy rules.

Revision ID: 0003_traffic
Revises: 0002
Create Date: 2024-06-20
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from modelyard.store.types import UTCDateTime

revision = "0003_traffic"
down_revision = "0002"
branch_labels = None
depends_on = None


def _service_fk(table: str) -> sa.ForeignKeyConstraint:
    return sa.ForeignKeyConstraint(
        ["service_id"], ["services.id"], name=f"fk_{table}_service_id_services", ondelete="CASCADE"
    )


def upgrade() -> None:
    op.create_table(
        "canaries",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("service_id", sa.Integer(), nullable=False),
        sa.Column("endpoint", sa.String(128), nullable=False),
        sa.Column("config", sa.JSON(), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        _service_fk("canaries"),
        sa.PrimaryKeyConstraint("id", name="pk_canaries"),
        sa.UniqueConstraint("service_id", "endpoint", name="uq_canaries_service_id_endpoint"),
    )
    op.create_index("ix_canaries_service_id", "canaries", ["service_id"])
    op.create_table(
        "auto_deploy_rules",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("service_id", sa.Integer(), nullable=False),
        sa.Column("endpoint", sa.String(128), nullable=False),
        sa.Column("spec", sa.JSON(), nullable=False),
        sa.Column("next_version", sa.Integer(), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        _service_fk("auto_deploy_rules"),
        sa.PrimaryKeyConstraint("id", name="pk_auto_deploy_rules"),
        sa.UniqueConstraint("service_id", "endpoint", name="uq_auto_deploy_rules_service_id_endpoint"),
    )
    op.create_index("ix_auto_deploy_rules_service_id", "auto_deploy_rules", ["service_id"])


def downgrade() -> None:
    op.drop_index("ix_auto_deploy_rules_service_id", table_name="auto_deploy_rules")
    op.drop_table("auto_deploy_rules")
    op.drop_index("ix_canaries_service_id", table_name="canaries")
    op.drop_table("canaries")
