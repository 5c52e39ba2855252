"""Monitoring: custom statistics rules per service, replicas' request statistics.

Revision ID: 0002
Revises: 0001
Create Date: 2024-06-15
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from modelyard.store.types import UTCDateTime

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "metric_rules",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("service_id", sa.Integer(), nullable=False),
        sa.Column("endpoint", sa.String(260), nullable=False),
        sa.Column("log_freq", sa.Float(), nullable=False),
        sa.Column("variables", sa.JSON(), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["service_id"],
            ["services.id"],
            name="fk_metric_rules_service_id_services",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name="pk_metric_rules"),
        sa.UniqueConstraint("service_id", "endpoint", name="uq_metric_rules_service_id_endpoint"),
    )
    op.create_index("ix_metric_rules_service_id", "metric_rules", ["service_id"])
    op.create_table(
        "replica_stats",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("service", sa.String(128), nullable=False),
        sa.Column("replica_id", sa.String(256), nullable=False),
        sa.Column("current", sa.JSON(), nullable=False),
        sa.Column("previous", sa.JSON(), nullable=True),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_replica_stats"),
        sa.UniqueConstraint("service", "replica_id", name="uq_replica_stats_service_replica_id"),
    )
    op.create_index("ix_replica_stats_service", "replica_stats", ["service"])


def downgrade() -> None:
    op.drop_index("ix_replica_stats_service", table_name="replica_stats")
    op.drop_table("replica_stats")
    op.drop_index("ix_metric_rules_service_id", table_name="metric_rules")
    op.drop_table("metric_rules")
